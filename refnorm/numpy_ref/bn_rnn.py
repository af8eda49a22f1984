"""BN-RNN, recurrent batch normalization (Cooijmans et al. 2016) of the vanilla RNN, the
reference. Derivation: derivations/bn_rnn.md, derivations/rnn.md, derivations/batch_norm.md.

    (BN-RNN 1)  u_t = x_t Wx,   a_t = h_{t-1} Wh                                  (B, H) each
    (BN-RNN 2)  z_t = BN_t(u_t; γ_x, 0) + BN_t(a_t; γ_h, 0) + b        terms="separate" (default)
    (BN-RNN 3)  z_t = BN_t(u_t + a_t; γ_z, 0) + b                       terms="summed" (Figure 1)
    (RNN 2)     h̃_t = φ(z_t),   φ = tanh or relu
    (BPTT 2), (BPTT 3) masked carry and zero outputs at padded steps.

BN_t takes its statistics over the rows of step t selected by the statistics mask s_t in training
(gradients flow through them) and from the population statistics of step t in inference; the
caller hands in the population slots already chosen for each step by (BN-LSTM 5). s_t is the
validity mask m_t (pad_stats="exclude", the default) or all ones (pad_stats="include").
A step with one row in its statistics outputs φ(b) on that row in training (BN-RNN 9).
"""
from dataclasses import dataclass

import numpy as np

from .common import carry, input_projection_backward, scan_backward_h, scan_forward_h
from .norms import batchnorm_backward, batchnorm_forward
from .rnn import NONLINEARITIES

# The statistics each term form uses: the keys of `pop` and the cache fields that hold them.
STAT_NAMES = {"separate": ("mean_x", "var_x", "mean_h", "var_h"),
              "summed": ("mean_z", "var_z")}


@dataclass
class BNRNNCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid step
    stat_mask: np.ndarray  # (T, B)    1 = row enters step t's batch statistics
    params: dict         # Wx, Wh, b and gamma_x, gamma_h (separate) or gamma_z (summed): copies
    training: bool       # batch statistics (True) or population statistics (False)
    eps: float
    terms: str           # "separate": BN(u) + BN(a), "summed": BN(u + a)
    nonlinearity: str    # "tanh" or "relu"
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    h_tilde: np.ndarray  # (T, B, H)   h̃_t = φ(z_t), before the carry
    count: np.ndarray    # (T,)        rows in each step's statistics, n_t (BN 1)
    # terms="separate" (None when summed)
    u_hat: np.ndarray = None   # (T, B, H)  normalised input term û_t
    a_hat: np.ndarray = None   # (T, B, H)  normalised recurrent term â_t
    mean_x: np.ndarray = None  # (T, H)     statistics used for u_t
    var_x: np.ndarray = None   # (T, H)
    mean_h: np.ndarray = None  # (T, H)     statistics used for a_t
    var_h: np.ndarray = None   # (T, H)
    # terms="summed" (None when separate)
    s_hat: np.ndarray = None   # (T, B, H)  normalised sum ŝ_t of s_t = u_t + a_t
    mean_z: np.ndarray = None  # (T, H)     statistics used for s_t
    var_z: np.ndarray = None   # (T, H)


def bn_rnn_step_forward(u_t, h_prev, m_t, s_t, p, eps, pop_t, terms, nonlinearity):
    """One step. u_t = x_t Wx (B, H); m_t (B,) valid rows, s_t (B,) rows in the statistics;
    pop_t None (training) or a dict of this step's population statistics (H,) named as in
    STAT_NAMES[terms]."""
    def stats(key):
        return None if pop_t is None else (pop_t["mean_" + key], pop_t["var_" + key])

    a = h_prev @ p["Wh"]                                                        # (BN-RNN 1)
    if terms == "separate":
        u_bn, u_hat, mean_x, var_x = batchnorm_forward(u_t, s_t, p["gamma_x"], None, eps,
                                                       stats("x"))
        a_bn, a_hat, mean_h, var_h = batchnorm_forward(a, s_t, p["gamma_h"], None, eps,
                                                       stats("h"))
        z = u_bn + a_bn + p["b"]                                                # (BN-RNN 2)
        norm = {"u_hat": u_hat, "a_hat": a_hat, "mean_x": mean_x, "var_x": var_x,
                "mean_h": mean_h, "var_h": var_h}
    else:
        s_bn, s_hat, mean_z, var_z = batchnorm_forward(u_t + a, s_t, p["gamma_z"], None, eps,
                                                       stats("z"))
        z = s_bn + p["b"]                                                       # (BN-RNN 3)
        norm = {"s_hat": s_hat, "mean_z": mean_z, "var_z": var_z}
    h_new = np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0.0)       # (RNN 2)
    y = m_t[:, None] * h_new                                                    # (BPTT 3)
    h = carry(m_t, h_new, h_prev)                                               # (BPTT 2)
    return y, h, {"count": s_t.sum(), **norm, "h_tilde": h_new}


def bn_rnn_step_backward(dy, dH, t, cache):
    """Backward of step t. Returns du_t (B, H), dH_{t-1} (B, H), parameter parts and dh̃_t."""
    p, eps, training = cache.params, cache.eps, cache.training
    m_t, s_t, h_prev, h_new = cache.mask[t], cache.stat_mask[t], cache.h[t], cache.h_tilde[t]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                                  # (BPTT 4)
    dphi = 1 - h_new ** 2 if cache.nonlinearity == "tanh" else h_new > 0       # (RNN 3)
    dz = dh_new * dphi                                                          # (BN-RNN 4)
    if cache.terms == "separate":
        du, dgamma_x, _ = batchnorm_backward(dz, cache.u_hat[t], cache.var_x[t], s_t,
                                             p["gamma_x"], eps, training)       # (BN-RNN 5)
        da, dgamma_h, _ = batchnorm_backward(dz, cache.a_hat[t], cache.var_h[t], s_t,
                                             p["gamma_h"], eps, training)       # (BN-RNN 5)
        dgains = {"gamma_x": dgamma_x, "gamma_h": dgamma_h}
    else:
        ds, dgamma_z, _ = batchnorm_backward(dz, cache.s_hat[t], cache.var_z[t], s_t,
                                             p["gamma_z"], eps, training)       # (BN-RNN 6)
        du, da = ds, ds                                                         # (BN-RNN 6)
        dgains = {"gamma_z": dgamma_z}
    dh_prev = (1 - valid) * dH + da @ p["Wh"].T                     # (BPTT 6), (BN-RNN 7)
    return du, dh_prev, {"Wh": h_prev.T @ da,                                  # (BN-RNN 7)
                         "b": dz.sum(axis=0),                                   # (BN-RNN 4)
                         **dgains}, dh_new


def bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                   terms="separate", nonlinearity="tanh"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, H), Wh (H, H), b (H) and gamma_x,
    gamma_h (H) (terms="separate") or gamma_z (H) (terms="summed"). In inference, pop holds the
    population statistics chosen for each of the T steps, (T, H) arrays named as in
    STAT_NAMES[terms]: mean_x, var_x, mean_h, var_h, or mean_z, var_z.
    Returns hs (T, B, H), hT (B, H), cache (with the statistics used and the counts n_t)."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    if terms not in STAT_NAMES:
        raise ValueError(f"terms must be 'separate' or 'summed', not {terms!r}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, not {nonlinearity!r}")
    p = {name: value.copy() for name, value in params.items()}
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    U = x @ p["Wx"]                                             # (BN-RNN 1), (BPTT 8)   (T, B, H)

    def step(t, u_t, h_prev, m_t):
        pop_t = None if training else {k: pop[k][t] for k in STAT_NAMES[terms]}
        return bn_rnn_step_forward(u_t, h_prev, m_t, stat_mask[t], p, eps, pop_t, terms,
                                   nonlinearity)

    hs, h, steps = scan_forward_h(step, U, h0, mask)
    cache = BNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                       eps=eps, terms=terms, nonlinearity=nonlinearity, h=h, **steps)
    return hs, h[-1], cache


def bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, as a dict (with state_grads also
    "dh", as in rnn_backward)."""
    def step_backward(t, dy, dH):
        return bn_rnn_step_backward(dy, dH, t, cache)

    dU, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (BN-RNN 8)
    grads = {"Wx": dWx, **acc, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
