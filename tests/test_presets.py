"""Each preset against a transcription of its peer's source, in the peer's own layout.

The peers that cannot be installed here (PyTorch fastrnns is a benchmark script, TF Addons and
TF1 contrib need TensorFlow builds that no longer exist, the jihunchoi port and the Cooijmans
Theano code are research repositories) are transcribed below line by line from their source
files, in PyTorch float64, with the peer's parameter names, shapes and gate order; autograd gives
their gradients. The weights are mapped to refnorm's layout by a block permutation written here,
independently of refnorm.interop. The peers that do install (torch.nn.LSTM, haste, ONNX) are
checked live in tests/test_interop.py.

Every comparison is float64: outputs, final states and every gradient within TOL["autodiff"]
(the same equations in another order; rounding only).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import refnorm
from refnorm import presets
from helpers import TOL, ragged_mask

T, B, D, H = 5, 4, 3, 4
LENGTHS = (5, 3, 5, 2)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def blocks(a, order, to="ifgo"):
    """Reorder the four H-wide gate blocks of the last axis from `order` to `to`, e.g. a peer's
    "fiog" to refnorm's "ifgo". Works on numpy arrays and tensors."""
    Hh = a.shape[-1] // 4
    parts = {g: a[..., k * Hh:(k + 1) * Hh] for k, g in enumerate(order)}
    cat = torch.cat if isinstance(a, torch.Tensor) else np.concatenate
    return cat([parts[g] for g in to], -1)


def rng_params(shapes, seed):
    """Random non-zero peer parameters: weights and shifts N(0, 0.5²), gains U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    return {name: (rng.uniform(0.5, 1.5, shape) if kind == "gain"
                   else 0.5 * rng.standard_normal(shape))
            for name, (shape, kind) in shapes.items()}


def data(seed, lengths=None):
    rng = np.random.default_rng(seed)
    d = {"x": rng.standard_normal((T, B, D)), "h0": 0.5 * rng.standard_normal((B, H)),
         "c0": 0.5 * rng.standard_normal((B, H)), "dhs": rng.standard_normal((T, B, H)),
         "dhT": rng.standard_normal((B, H)), "dcT": rng.standard_normal((B, H))}
    d["mask"] = ragged_mask(T, B, lengths) if lengths else np.ones((T, B))
    d["dhs"] = d["dhs"] * d["mask"][..., None]       # valid outputs only: peers differ on padding
    return d


def peer_grads(run, peer_params, d):
    """Run a transcription `run(x, h0, c0, mask, params) -> hs, hT, cT` under autograd with the
    loss of (BPTT 1) on valid outputs; returns outputs and the gradients by name."""
    leaves = {k: t64(v, grad=True) for k, v in peer_params.items()}
    leaves.update({k: t64(d[k], grad=True) for k in ("x", "h0", "c0")})
    hs, hT, cT = run(leaves["x"], leaves["h0"], leaves["c0"], t64(d["mask"]),
                     {k: leaves[k] for k in peer_params})
    loss = ((t64(d["dhs"]) * hs).sum() + (t64(d["dhT"]) * hT).sum()
            + (t64(d["dcT"]) * cT).sum())
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return hs, hT, cT, {k: g.numpy() for k, g in grads.items()}


def ours(cell, d, **kw):
    hs, (hT, cT), cache = cell.forward(d["x"], d["h0"], d["c0"], d["mask"], **kw)
    grads = cell.backward(d["dhs"], cache, d["dhT"], d["dcT"])
    return hs, hT, cT, grads


def close(name, a, b):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    err = refnorm.relative_error(a, b)
    assert err <= TOL["autodiff"], f"{name}: relative error {err:.2e}"


def compare(cell, d, peer, mapping, mask_outputs=True, **kw):
    """mapping: refnorm param name -> the same tensor's gradient in refnorm layout computed from
    the peer's gradients."""
    hs, hT, cT, grads = ours(cell, d, **kw)
    hs_p, hT_p, cT_p, g_p = peer
    m = t64(d["mask"])[..., None]
    close("hs", hs, hs_p * m if mask_outputs else hs_p)
    close("hT", hT, hT_p)
    close("cT", cT, cT_p)
    for name in ("x", "h0", "c0"):
        close("d" + name, grads[name], g_p[name])
    for name, theirs in mapping(g_p).items():
        close("d" + name, grads[name], theirs)


def layer_norm(z, gamma, beta, eps):
    """nn.LayerNorm / Keras LayerNormalization / tf.contrib.layers.layer_norm over the last axis:
    biased variance, eps inside the root."""
    return F.layer_norm(z, (z.shape[-1],), gamma, beta, eps)


# -- PyTorch fastrnns LayerNormLSTMCell ---------------------------------------------------------
def fastrnns_decomposed_layer_norm(z, weight, bias):
    """custom_lstms.py's own LayerNorm (decompose_layernorm=True): compute_layernorm_stats gives
    mu = input.mean(-1), sigma = input.std(-1, unbiased=False); forward returns
    (input - mu) / sigma * weight + bias. No eps (NaN on a zero-variance row)."""
    mu = z.mean(-1, keepdim=True)
    sigma = z.std(-1, keepdim=True, unbiased=False)
    return (z - mu) / sigma * weight + bias


def fastrnns_layer_norm_lstm(x, h0, c0, mask, p, decompose_layernorm=False):
    """benchmarks/fastrnns/custom_lstms.py: LayerNormLSTMCell (nn.LayerNorm, eps 1e-5, or with
    decompose_layernorm=True its own LayerNorm, no eps) run by LSTMLayer over the time axis (no
    masking there: full-length batches only)."""
    ln = fastrnns_decomposed_layer_norm if decompose_layernorm else \
        (lambda z, weight, bias: layer_norm(z, weight, bias, 1e-5))
    hx, cx, outputs = h0, c0, []
    for x_t in x.unbind(0):
        igates = ln(x_t @ p["weight_ih"].t(), p["ln_i.weight"], p["ln_i.bias"])
        hgates = ln(hx @ p["weight_hh"].t(), p["ln_h.weight"], p["ln_h.bias"])
        ingate, forgetgate, cellgate, outgate = (igates + hgates).chunk(4, 1)
        cy = ln(torch.sigmoid(forgetgate) * cx + torch.sigmoid(ingate) * torch.tanh(cellgate),
                p["ln_c.weight"], p["ln_c.bias"])
        hy = torch.sigmoid(outgate) * torch.tanh(cy)
        hx, cx = hy, cy
        outputs.append(hy)
    return torch.stack(outputs), hx, cx


@pytest.mark.parametrize("decompose_layernorm", [False, True],
                         ids=["nn.LayerNorm-eps1e-5", "decomposed-eps0"])
def test_torch_fastrnns_layer_norm_lstm(decompose_layernorm):
    """The preset, and with decompose_layernorm=True (fastrnns' own LayerNorm, no eps) the
    preset with eps=0 (LN 11). Random h0: no row has zero variance, where the peer gives NaN."""
    p = rng_params({"weight_ih": ((4 * H, D), "w"), "weight_hh": ((4 * H, H), "w"),
                    "ln_i.weight": ((4 * H,), "gain"), "ln_i.bias": ((4 * H,), "w"),
                    "ln_h.weight": ((4 * H,), "gain"), "ln_h.bias": ((4 * H,), "w"),
                    "ln_c.weight": ((H,), "gain"), "ln_c.bias": ((H,), "w")}, seed=1)
    options = {"eps": 0.0} if decompose_layernorm else {}
    cell = presets.torch_fastrnns_layer_norm_lstm(D, H, **options)
    cell.params.update(Wx=p["weight_ih"].T.copy(), Wh=p["weight_hh"].T.copy(),
                       b=np.zeros(4 * H), gamma_x=p["ln_i.weight"], beta_x=p["ln_i.bias"],
                       gamma_h=p["ln_h.weight"], beta_h=p["ln_h.bias"],
                       gamma_c=p["ln_c.weight"], beta_c=p["ln_c.bias"])
    d = data(2)
    peer = peer_grads(lambda *a: fastrnns_layer_norm_lstm(
        *a, decompose_layernorm=decompose_layernorm), p, d)
    compare(cell, d, peer, lambda g: {
        "Wx": g["weight_ih"].T, "Wh": g["weight_hh"].T, "gamma_x": g["ln_i.weight"],
        "beta_x": g["ln_i.bias"], "gamma_h": g["ln_h.weight"], "beta_h": g["ln_h.bias"],
        "gamma_c": g["ln_c.weight"], "beta_c": g["ln_c.bias"]})


# -- TF Addons LayerNormLSTMCell --------------------------------------------------------------
def tfa_layer_norm_lstm(x, h0, c0, mask, p):
    """tensorflow_addons/rnn/layer_norm_lstm_cell.py LayerNormLSTMCell.call (norm_epsilon 1e-3),
    run by keras RNN with a mask: masked steps keep the states and repeat the last output."""
    h_tm1, c_tm1, outputs = h0, c0, []
    K = p["kernel"]
    Hh = K.shape[1] // 4
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        z = layer_norm(x_t @ K, p["kernel_norm/gamma"], p["kernel_norm/beta"], 1e-3)
        z = z + layer_norm(h_tm1 @ p["recurrent_kernel"], p["recurrent_norm/gamma"],
                           p["recurrent_norm/beta"], 1e-3)
        z = z + p["bias"]
        z0, z1, z2, z3 = (z[:, k * Hh:(k + 1) * Hh] for k in range(4))     # i, f, c, o
        c = torch.sigmoid(z1) * c_tm1 + torch.sigmoid(z0) * torch.tanh(z2)
        o = torch.sigmoid(z3)
        c = layer_norm(c, p["state_norm/gamma"], p["state_norm/beta"], 1e-3)
        h = o * torch.tanh(c)
        keep = m_t[:, None] > 0
        h_tm1, c_tm1 = torch.where(keep, h, h_tm1), torch.where(keep, c, c_tm1)
        outputs.append(h_tm1)
    return torch.stack(outputs), h_tm1, c_tm1


def test_tfa_layer_norm_lstm():
    G = 4 * H
    p = rng_params({"kernel": ((D, G), "w"), "recurrent_kernel": ((H, G), "w"),
                    "bias": ((G,), "w"),
                    "kernel_norm/gamma": ((G,), "gain"), "kernel_norm/beta": ((G,), "w"),
                    "recurrent_norm/gamma": ((G,), "gain"), "recurrent_norm/beta": ((G,), "w"),
                    "state_norm/gamma": ((H,), "gain"), "state_norm/beta": ((H,), "w")}, seed=3)
    cell = presets.tfa_layer_norm_lstm(D, H)
    assert cell.params["b"][H:2 * H].tolist() == [1.0] * H      # unit_forget_bias
    cell.params.update(Wx=p["kernel"], Wh=p["recurrent_kernel"], b=p["bias"],
                       gamma_x=p["kernel_norm/gamma"], beta_x=p["kernel_norm/beta"],
                       gamma_h=p["recurrent_norm/gamma"], beta_h=p["recurrent_norm/beta"],
                       gamma_c=p["state_norm/gamma"], beta_c=p["state_norm/beta"])
    d = data(4, LENGTHS)
    peer = peer_grads(tfa_layer_norm_lstm, p, d)
    compare(cell, d, peer, lambda g: {
        "Wx": g["kernel"], "Wh": g["recurrent_kernel"], "b": g["bias"],
        "gamma_x": g["kernel_norm/gamma"], "beta_x": g["kernel_norm/beta"],
        "gamma_h": g["recurrent_norm/gamma"], "beta_h": g["recurrent_norm/beta"],
        "gamma_c": g["state_norm/gamma"], "beta_c": g["state_norm/beta"]})


# -- TF1 contrib LayerNormBasicLSTMCell -------------------------------------------------------
TF1_SCOPES = ("input", "transform", "forget", "output")       # i, j, f, o


def tf1_layer_norm_basic_lstm(x, h0, c0, mask, p, forget_bias=1.0):
    """tensorflow/contrib/rnn/python/ops/rnn_cell.py LayerNormBasicLSTMCell.call with
    layer_norm=True, keep_prob=1: one kernel on concat[x, h], no bias, per-gate
    tf.contrib.layers.layer_norm (eps 1e-12), forget_bias added after the LN, the normalised
    new_c carried; tf.nn.dynamic_rnn with sequence_length copies the state through padded steps
    and outputs zeros there."""
    c, h, outputs = c0, h0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        concat = torch.cat([x_t, h], 1) @ p["kernel"]
        i, j, f, o = concat.chunk(4, 1)
        i, j, f, o = (layer_norm(v, p[s + "/gamma"], p[s + "/beta"], 1e-12)
                      for v, s in zip((i, j, f, o), TF1_SCOPES))
        g = torch.tanh(j)
        new_c = c * torch.sigmoid(f + forget_bias) + torch.sigmoid(i) * g
        new_c = layer_norm(new_c, p["state/gamma"], p["state/beta"], 1e-12)
        new_h = torch.tanh(new_c) * torch.sigmoid(o)
        keep = m_t[:, None] > 0
        outputs.append(m_t[:, None] * new_h)
        c, h = torch.where(keep, new_c, c), torch.where(keep, new_h, h)
    return torch.stack(outputs), h, c


def test_tf1_layer_norm_basic_lstm():
    shapes = {"kernel": ((D + H, 4 * H), "w"), "state/gamma": ((H,), "gain"),
              "state/beta": ((H,), "w")}
    for s in TF1_SCOPES:
        shapes.update({s + "/gamma": ((H,), "gain"), s + "/beta": ((H,), "w")})
    p = rng_params(shapes, seed=5)
    order = "igfo"                                  # TF1 blocks i, j(=g), f, o
    cat = lambda key: np.concatenate([p[s + key] for s in TF1_SCOPES])  # noqa: E731
    cell = presets.tf1_layer_norm_basic_lstm(D, H)
    cell.params.update(Wx=blocks(p["kernel"][:D], order), Wh=blocks(p["kernel"][D:], order),
                       b=blocks(cat("/beta"), order), gamma_z=blocks(cat("/gamma"), order),
                       gamma_c=p["state/gamma"], beta_c=p["state/beta"])
    d = data(6, LENGTHS)
    peer = peer_grads(tf1_layer_norm_basic_lstm, p, d)

    def mapping(g):
        dk = blocks(g["kernel"], order)
        cat_g = lambda key: blocks(np.concatenate([g[s + key] for s in TF1_SCOPES]),  # noqa
                                   order)
        return {"Wx": dk[:D], "Wh": dk[D:], "b": cat_g("/beta"), "gamma_z": cat_g("/gamma"),
                "gamma_c": g["state/gamma"], "beta_c": g["state/beta"]}
    compare(cell, d, peer, mapping)


# -- jihunchoi/recurrent-batch-normalization-pytorch -------------------------------------------
def jihunchoi_bn_lstm(x, h0, c0, mask, p, running=None, training=True, max_length=None):
    """bnlstm.py: BNLSTMCell.forward with SeparatedBatchNorm1d (F.batch_norm per time step on
    the whole padded batch, momentum 0.1, eps 1e-5) and LSTM._forward_rnn's masking
    (h_next = h_next*mask + hx*(1 - mask), output = h_next). `running` holds the running
    statistics {site: (mean (slots, F), var (slots, F))} that F.batch_norm updates in place."""
    hx, cx, outputs = h0, c0, []
    Hh = h0.shape[1]

    def bn(z, site, t):
        mean, var = running[site]
        t = min(t, max_length - 1)
        return F.batch_norm(z, mean[t], var[t], p[f"bn_{site}.weight"], p[f"bn_{site}.bias"],
                            training=training, momentum=0.1, eps=1e-5)

    for time, (x_t, m_t) in enumerate(zip(x.unbind(0), mask.unbind(0))):
        wh = hx @ p["weight_hh"]
        wi = x_t @ p["weight_ih"]
        f, i, o, g = torch.split(bn(wh, "hh", time) + bn(wi, "ih", time) + p["bias"], Hh, 1)
        c_1 = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
        h_1 = torch.sigmoid(o) * torch.tanh(bn(c_1, "c", time))
        m = m_t[:, None]
        hx, cx = h_1 * m + hx * (1 - m), c_1 * m + cx * (1 - m)
        outputs.append(hx)
    return torch.stack(outputs), hx, cx


def jihunchoi_params(seed):
    G = 4 * H
    return rng_params({"weight_ih": ((D, G), "w"), "weight_hh": ((H, G), "w"),
                       "bias": ((G,), "w"),
                       "bn_ih.weight": ((G,), "gain"), "bn_ih.bias": ((G,), "w"),
                       "bn_hh.weight": ((G,), "gain"), "bn_hh.bias": ((G,), "w"),
                       "bn_c.weight": ((H,), "gain"), "bn_c.bias": ((H,), "w")}, seed)


def jihunchoi_cell(p, **options):
    """The preset holding the port's parameters p (gate order f, i, o, g) in refnorm's layout."""
    order = "fiog"
    cell = presets.jihunchoi_bn_lstm(D, H, **options)
    cell.params.update(Wx=blocks(p["weight_ih"], order), Wh=blocks(p["weight_hh"], order),
                       b=blocks(p["bias"], order),
                       gamma_x=blocks(p["bn_ih.weight"], order),
                       beta_x=blocks(p["bn_ih.bias"], order),
                       gamma_h=blocks(p["bn_hh.weight"], order),
                       beta_h=blocks(p["bn_hh.bias"], order),
                       gamma_c=p["bn_c.weight"], beta_c=p["bn_c.bias"])
    return cell


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_jihunchoi_bn_lstm(training):
    order = "fiog"
    p = jihunchoi_params(7)
    slots = 3                                   # T = 5 > max_length: steps 3, 4 reuse slot 2
    rng = np.random.default_rng(8)
    stats = {site: (0.5 * rng.standard_normal((slots, F_)), rng.uniform(0.5, 1.5, (slots, F_)))
             for site, F_ in (("ih", 4 * H), ("hh", 4 * H), ("c", H))}
    cell = jihunchoi_cell(p, max_steps=slots)
    for ours_site, site in (("x", "ih"), ("h", "hh"), ("c", "c")):
        mean, var = stats[site]
        width = (lambda a: blocks(a, order)) if site != "c" else (lambda a: a)
        cell.stats["mean_" + ours_site][...] = width(mean)
        cell.stats["var_" + ours_site][...] = width(var)
    running = {site: (torch.tensor(m.copy()), torch.tensor(v.copy()))
               for site, (m, v) in stats.items()}
    d = data(9, LENGTHS)
    peer = peer_grads(lambda *a: jihunchoi_bn_lstm(*a, running=running, training=training,
                                                   max_length=slots), p, d)
    compare(cell, d, peer, lambda g: {
        "Wx": blocks(g["weight_ih"], order), "Wh": blocks(g["weight_hh"], order),
        "b": blocks(g["bias"], order), "gamma_x": blocks(g["bn_ih.weight"], order),
        "beta_x": blocks(g["bn_ih.bias"], order), "gamma_h": blocks(g["bn_hh.weight"], order),
        "beta_h": blocks(g["bn_hh.bias"], order), "gamma_c": g["bn_c.weight"],
        "beta_c": g["bn_c.bias"]}, training=training, update_stats=False)


@pytest.mark.parametrize("max_length", [T, 2], ids=["max_length=T", "max_length<T"])
def test_jihunchoi_running_statistics_follow_torch_batch_norm(max_length):
    """One training pass updates the per-step running statistics as F.batch_norm does: momentum
    0.1, unbiased variance, padded rows included. With max_length 2 < T = 5 the port clamps time
    in training too: steps 1, 2, 3, 4 update the last buffer one after the other (VAR 7), which
    the preset's past_max_steps="clamp" reproduces (random non-zero starting buffers)."""
    order = "fiog"
    p = jihunchoi_params(10)
    cell = jihunchoi_cell(p, max_steps=max_length)
    rng = np.random.default_rng(15)
    running = {site: (torch.tensor(0.5 * rng.standard_normal((max_length, F_))),
                      torch.tensor(rng.uniform(0.5, 1.5, (max_length, F_))))
               for site, F_ in (("ih", 4 * H), ("hh", 4 * H), ("c", H))}
    for ours_site, site in (("x", "ih"), ("h", "hh"), ("c", "c")):
        width = (lambda a: blocks(a, order)) if site != "c" else (lambda a: a)
        cell.stats["mean_" + ours_site][...] = width(running[site][0].numpy())
        cell.stats["var_" + ours_site][...] = width(running[site][1].numpy())
    d = data(11, LENGTHS)
    with torch.no_grad():
        jihunchoi_bn_lstm(*(t64(d[k]) for k in ("x", "h0", "c0", "mask")),
                          {k: t64(v) for k, v in p.items()}, running=running,
                          max_length=max_length)
    cell.forward(d["x"], d["h0"], d["c0"], d["mask"])              # update_stats=True
    for ours_site, site in (("x", "ih"), ("h", "hh"), ("c", "c")):
        width = (lambda a: blocks(a, order)) if site != "c" else (lambda a: a)
        close("mean_" + ours_site, cell.stats["mean_" + ours_site], width(running[site][0]))
        close("var_" + ours_site, cell.stats["var_" + ours_site], width(running[site][1]))


# -- Cooijmans et al. 2016, the authors' Theano code ------------------------------------------
def cooijmans_bn_lstm(x, h0, c0, mask, p, popstats=None, record=None, normalize_cell=False):
    """penntreebank.py: LSTM.construct_graph_popstats's stepfn and bn(): xtilde = x W_x for all
    steps; atilde = h W_h; a_normal = bn(atilde; a_gammas, ab_betas), b_normal = bn(btilde;
    b_gammas, 0); g, f, i, o from a_normal + b_normal (code order g, f, i, o); c_n = f c + i g;
    h_n = o tanh(bn(c_n; c_gammas, c_betas)); with --normalize-cell the normalised c_n is the
    state carried to the next step. bn(): batch mean and biased x.var(axis=0), or the population
    statistic of the step; std = sqrt(var + epsilon), epsilon 1e-5. Fixed-length sequences (no
    mask)."""
    h, c, outputs = h0, c0, []
    Hh = h0.shape[1]

    def bn(z, gamma, beta, site, t):
        if popstats is None:
            mean, var = z.mean(0), z.var(0, unbiased=False)
            record.setdefault(site, []).append((mean.detach(), var.detach()))
        else:
            mean, var = popstats[site][0][t], popstats[site][1][t]
        return (z - mean) / torch.sqrt(var + 1e-5) * gamma + beta

    xtilde = x @ p["W_x"]
    for t in range(x.shape[0]):
        a_normal = bn(h @ p["W_h"], p["a_gammas"], p["ab_betas"], "a", t)
        b_normal = bn(xtilde[t], p["b_gammas"], 0.0, "b", t)
        ab = a_normal + b_normal
        g, f, i, o = [fn(ab[:, j * Hh:(j + 1) * Hh])
                      for j, fn in enumerate([torch.tanh] + 3 * [torch.sigmoid])]
        c = f * c + i * g
        c_normal = bn(c, p["c_gammas"], p["c_betas"], "c", t)
        if normalize_cell:
            c = c_normal
        h = o * torch.tanh(c_normal)
        outputs.append(h)
    return torch.stack(outputs), h, c


@pytest.mark.parametrize("normalize_cell", [False, True], ids=["raw-c", "normalize-cell"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cooijmans_bn_lstm(training, normalize_cell):
    """The preset, and with the code's --normalize-cell option, carry="normalized" (VAR 3)."""
    order = "gfio"
    G = 4 * H
    p = rng_params({"W_x": ((D, G), "w"), "W_h": ((H, G), "w"), "ab_betas": ((G,), "w"),
                    "a_gammas": ((G,), "gain"), "b_gammas": ((G,), "gain"),
                    "c_gammas": ((H,), "gain"), "c_betas": ((H,), "w")}, seed=12)
    cell = presets.cooijmans_bn_lstm(D, H, max_steps=T,
                                     carry="normalized" if normalize_cell else "raw")
    assert cell.params["b"][H:2 * H].tolist() == [1.0] * H          # pffft[H:2H] = 1
    cell.params.update(Wx=blocks(p["W_x"], order), Wh=blocks(p["W_h"], order),
                       b=blocks(p["ab_betas"], order), gamma_h=blocks(p["a_gammas"], order),
                       gamma_x=blocks(p["b_gammas"], order), gamma_c=p["c_gammas"],
                       beta_c=p["c_betas"])
    rng = np.random.default_rng(13)
    popstats = {site: (0.5 * rng.standard_normal((T, F_)), rng.uniform(0.5, 1.5, (T, F_)))
                for site, F_ in (("a", G), ("b", G), ("c", H))}
    for ours_site, site in (("h", "a"), ("x", "b"), ("c", "c")):
        width = (lambda a: blocks(a, order)) if site != "c" else (lambda a: a)
        cell.stats["mean_" + ours_site][...] = width(popstats[site][0])
        cell.stats["var_" + ours_site][...] = width(popstats[site][1])
    d = data(14)
    record = {}
    pop_t = None if training else {k: (t64(m), t64(v)) for k, (m, v) in popstats.items()}
    peer = peer_grads(lambda *a: cooijmans_bn_lstm(*a, popstats=pop_t, record=record,
                                                   normalize_cell=normalize_cell), p, d)
    compare(cell, d, peer, lambda g: {
        "Wx": blocks(g["W_x"], order), "Wh": blocks(g["W_h"], order),
        "b": blocks(g["ab_betas"], order), "gamma_h": blocks(g["a_gammas"], order),
        "gamma_x": blocks(g["b_gammas"], order), "gamma_c": g["c_gammas"],
        "beta_c": g["c_betas"]}, training=training, update_stats=False)
    if training:
        # the code's EMA: pop <- alpha * batch + (1 - alpha) * pop, alpha 0.05, biased variance
        cell.forward(d["x"], d["h0"], d["c0"])
        for ours_site, site in (("h", "a"), ("x", "b"), ("c", "c")):
            width = (lambda a: blocks(a, order)) if site != "c" else (lambda a: a)
            for k, key in enumerate(("mean_", "var_")):
                batch = np.stack([r[k].numpy() for r in record[site]])
                expect = 0.05 * batch + 0.95 * popstats[site][k]
                close(key + ours_site, cell.stats[key + ours_site], width(expect))


def test_every_preset_builds_and_names_its_source():
    named = {"haste_layer_norm_lstm", "tfa_layer_norm_lstm", "torch_fastrnns_layer_norm_lstm",
             "cooijmans_bn_lstm", "jihunchoi_bn_lstm", "batchnorm_lstm",
             "tf1_layer_norm_basic_lstm", "tf1_basic_lstm", "keras_lstm", "haste_lstm",
             "torch_lstm", "onnx_lstm"}
    assert named <= set(presets.PRESETS)
    for name, make in presets.PRESETS.items():
        cell = make(3, 2, seed=0)
        assert isinstance(cell, make.cls)
        for option, value in make.options.items():
            if option == "forget_bias_init":          # stored in b, not kept as an attribute
                np.testing.assert_array_equal(cell.params["b"][2:4], value)
            else:
                assert getattr(cell, option) == value, (name, option)
        assert make.__name__ == name and getattr(presets, name) is make
        assert ".py" in make.__doc__ or "arXiv" in make.__doc__, name
    # overrides win over the preset's options
    assert presets.tfa_layer_norm_lstm(3, 2, eps=1e-5).eps == 1e-5
