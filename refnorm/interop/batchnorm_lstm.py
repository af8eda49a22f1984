"""batchnorm-lstm 0.0.1 (PyPI; import batchnormlstm), run live against
refnorm.presets.batchnorm_lstm: its layout, its own sequence functions, and a target for
refnorm.validate.

    refnorm validate refnorm.interop.batchnorm_lstm:validate_target --preset batchnorm_lstm
    refnorm validate refnorm.interop.batchnorm_lstm:validate_target --preset batchnorm_lstm \\
        --inference --outputs-only

batchnorm-lstm is a NumPy BN-LSTM with its own hand-written backward: layer_utils.py
batchnorm_lstm_forward / batchnorm_lstm_backward over the steps batchnorm_lstm_forward_unit /
batchnorm_lstm_backward_unit, with layers.py batchnorm_forward / batchnorm_backward_alt. Its
layout: xs (N, T, D) batch-major, w (D, 4H), u (H, 4H), b (4H), gate blocks g, i, f, o (LAYOUT);
shifts on both term BNs; ONE running-statistics dict per BN site (SITES: x, h, c) shared by every
time step, each step updating it in turn with momentum 0.9 (running = 0.9 running + 0.1 batch:
refnorm's momentum 0.1). The preset is BNLSTM(term_beta=True, momentum=0.1, eps=1e-5,
gamma_init=1.0, max_steps=1, past_max_steps="clamp") (VAR 7).

It has no masking. validate_target runs ragged batches by stepping the peer's own step functions
on each step's valid rows (run_stepped): its BN then takes the statistics of the valid rows,
which is refnorm's pad_stats="exclude", and a finished sequence keeps its state, refnorm's masked
carry. With every sequence full, run_stepped is its batchnorm_lstm_forward / _backward
(run_sequence) step for step (tests/test_batchnorm_lstm_peer.py).

Its BN keeps no cache in test mode, so it has no backward there: in inference
(training=False) validate_target returns the outputs alone (validate's outputs_only=True).
"""
import numpy as np

from .layouts import GateLayout, from_canonical, to_canonical

INSTALL = "pip install batchnorm-lstm==0.0.1"

# canonical_block[k] = source_block[idx[k]]: i is its block 1, f 2, g ("a") 0, o 3
LAYOUT = GateLayout(("g", "i", "f", "o"), (1, 2, 0, 3),
                    "batchnormlstm/layer_utils.py batchnorm_lstm_forward_unit (a, i, f, o = "
                    "mid[:, :M], mid[:, M:2M], ...)")
SITES = ("x", "h", "c")                       # the order of its bn_params list
# refnorm name -> its name; the 4H ones (all but the c site's) are in gate blocks
NAMES = {"Wx": "w", "Wh": "u", "b": "b", "gamma_x": "gamma_x", "beta_x": "beta_x",
         "gamma_h": "gamma_h", "beta_h": "beta_h", "gamma_c": "gamma_c", "beta_c": "beta_c"}
FOUR_H = ("Wx", "Wh", "b", "gamma_x", "beta_x", "gamma_h", "beta_h")


def layer_utils():
    """batchnormlstm.layer_utils, or an ImportError with the install line."""
    try:
        from batchnormlstm import layer_utils as utils
    except ImportError as err:
        raise ImportError(f"batchnorm-lstm does not import ({err}): {INSTALL}") from err
    return utils


def to_peer(params, layout=LAYOUT):
    """refnorm's params {Wx, Wh, b, gamma_*, beta_*} in its names and gate order (copies)."""
    return {NAMES[k]: (from_canonical(v, layout) if k in FOUR_H else np.array(v))
            for k, v in params.items()}


def from_peer(p, layout=LAYOUT):
    """Its params (w, u, b, gamma_*, beta_*) or gradients in refnorm's names and gate order;
    `layout` is the gate order the copy assumes (a wrong one is tests' planted bug)."""
    back = {v: k for k, v in NAMES.items()}
    return {back[k]: (to_canonical(v, layout) if back[k] in FOUR_H else np.array(v))
            for k, v in p.items()}


def stats_to_peer(stats, layout=LAYOUT):
    """{site: (running_mean, running_var)} from refnorm's one-slot population statistics."""
    out = {}
    for site in SITES:
        mean, var = stats["mean_" + site], stats["var_" + site]
        if mean.shape[0] != 1:
            raise ValueError(f"batchnorm-lstm keeps one statistics set per site; the cell has "
                             f"{mean.shape[0]} slots (use presets.batchnorm_lstm, max_steps=1)")
        width = (lambda a: from_canonical(a, layout)) if site != "c" else np.array
        out[site] = (width(mean[0]), width(var[0]))
    return out


def bn_params(stats, mode):
    """Its bn_params list (x, h, c) in mode "train" or "test", holding copies of `stats`."""
    return [{"mode": mode, "running_mean": stats[s][0].copy(),
             "running_var": stats[s][1].copy()} for s in SITES]


def _args(p):
    return (p["w"], p["u"], p["b"], (p["gamma_x"], p["gamma_h"], p["gamma_c"]),
            (p["beta_x"], p["beta_h"], p["beta_c"]))


def run_sequence(p, stats, d, mode, utils=None):
    """Its own sequence functions on full-length sequences: batchnorm_lstm_forward and (in
    training) batchnorm_lstm_backward, on p (its layout), stats {site: (mean, var)}, and d with
    x (T, B, D), h0, c0, dhs (T, B, H), dhT, dcT. Returns hs (T, B, H), hT, cT, gradients by
    refnorm name in its layout (None in test mode) and its bn_params after the pass."""
    utils = utils or layer_utils()
    params = bn_params(stats, mode)
    xs = d["x"].transpose(1, 0, 2).copy()                          # (N, T, D)
    outs, caches = utils.batchnorm_lstm_forward(xs, *_args(p), params, h_n1=d["h0"],
                                                c_n1=d["c0"])
    hs = outs.transpose(1, 0, 2)
    if mode == "test":                   # its BN keeps no cache at test time: no backward
        return hs, None, None, None, params
    T, B = hs.shape[:2]
    cT = caches[-1][1][8][5]             # the c_bn cache's input: c_T, the carried raw cell
    douts = d["dhs"].transpose(1, 0, 2).copy()
    dxs, dw, du, db, dgammas, dbetas = utils.batchnorm_lstm_backward(
        douts, caches, dh_Tm1=d["dhT"], dc_T=d["dcT"], f_T=np.ones_like(d["dcT"]))
    # batchnorm_lstm_backward drops the initial state's gradients; its step backward returns
    # them at t = 0 (dh_prev, and dc with the f that multiplies it on the way to c_{-1})
    dh, dc_next, f_next = d["dhT"], d["dcT"], np.ones_like(d["dcT"])
    for t in reversed(range(T)):
        *_, dh, dc_next, f_next = utils.batchnorm_lstm_backward_unit(
            douts[:, t], caches[t], dh, dc_next, f_next)
    grads = {"x": dxs.transpose(1, 0, 2), "h0": dh, "c0": dc_next * f_next,
             "Wx": dw, "Wh": du, "b": db, "gamma_x": dgammas[0], "gamma_h": dgammas[1],
             "gamma_c": dgammas[2], "beta_x": dbetas[0], "beta_h": dbetas[1],
             "beta_c": dbetas[2]}
    return hs, outs[:, -1], cT, grads, params


def run_stepped(p, stats, d, lengths, mode, utils=None):
    """Its step functions over ragged sequences: at step t, batchnorm_lstm_forward_unit on the
    rows with t < lengths[b] (their state carried, the others' kept); backward in reverse with
    batchnorm_lstm_backward_unit on the same rows. Arguments and result as run_sequence's; hs
    is 0 at padded steps, hT, cT each sequence's last valid state."""
    utils = utils or layer_utils()
    params = bn_params(stats, mode)
    lengths = np.asarray(lengths)
    T, B, _ = d["x"].shape
    H = p["u"].shape[0]
    h, c = d["h0"].copy(), d["c0"].copy()                          # (B, H) carried
    hs, caches, rows = np.zeros((T, B, H)), [], []
    for t in range(T):
        valid = np.flatnonzero(t < lengths)                         # (b,) rows still running
        rows.append(valid)
        if not len(valid):
            caches.append(None)
            continue
        h_t, c_t, cache = utils.batchnorm_lstm_forward_unit(d["x"][t, valid], *_args(p), params,
                                                            h[valid], c[valid])
        hs[t, valid], h[valid], c[valid] = h_t, h_t, c_t
        caches.append(cache)
    if mode == "test":                   # its BN keeps no cache at test time: no backward
        return hs, h, c, None, params
    keys = ("Wx", "Wh", "b", "gammas", "betas")
    dx, sums = np.zeros_like(d["x"]), None
    dh, dc = d["dhT"].copy(), d["dcT"].copy()    # dL/d the carried h, c (B, H), step by step
    for t in reversed(range(T)):
        valid = rows[t]
        if not len(valid):
            continue
        dx_t, dw, du, db, dgammas, dbetas, dh_prev, dc_t, f = utils.batchnorm_lstm_backward_unit(
            d["dhs"][t, valid], caches[t], dh[valid], dc[valid], np.ones((len(valid), H)))
        dx[t, valid], dh[valid], dc[valid] = dx_t, dh_prev, dc_t * f
        step = dict(zip(keys, (dw, du, db, dgammas, dbetas)))
        sums = step if sums is None else {k: _add(sums[k], v) for k, v in step.items()}
    grads = {"x": dx, "h0": dh, "c0": dc, "Wx": sums["Wx"], "Wh": sums["Wh"], "b": sums["b"]}
    for k, site in enumerate(SITES):
        grads["gamma_" + site] = sums["gammas"][k]
        grads["beta_" + site] = sums["betas"][k]
    return hs, h, c, grads, params


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b)) if isinstance(a, tuple) else a + b


def validate_target(inputs):
    """batchnorm-lstm on refnorm.validate's inputs (refnorm layout in and out), for the preset
    batchnorm_lstm: run_stepped on the ragged batch, in training with its backward (every
    gradient), in inference with the population statistics (inputs["stats"], one slot) and
    the outputs alone (validate's outputs_only=True: it has no test-mode backward)."""
    training = inputs["training"]
    p, stats = to_peer(inputs["params"]), stats_to_peer(inputs["stats"])
    hs, hT, cT, grads, _ = run_stepped(p, stats, inputs, inputs["lengths"],
                                       "train" if training else "test")
    out = {"hs": hs, "hT": hT, "cT": cT}
    if grads is not None:
        moved = from_peer({NAMES[k]: grads[k] for k in NAMES})
        out["grads"] = {**moved, "x": grads["x"], "h0": grads["h0"], "c0": grads["c0"]}
    return out
