"""BN-GRU, recurrent batch normalization (Cooijmans et al. 2016) transplanted to the GRU, the
reference. Derivation: derivations/bn_gru.md, derivations/gru.md, derivations/batch_norm.md.

    (BN-GRU 1)  u_t = x_t Wx,   a_t = h_{t-1} Wh                                 (B, 3H) each
    (BN-GRU 2)  v_t = BN_t(u_t; γ_x, 0) + b,   w_t = BN_t(a_t; γ_h, 0)
    (BN-GRU 3)  r = σ(v^r + w^r),  z = σ(v^z + w^z),  n = tanh(v^n + r ⊙ (w^n + b_hn)),
                h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}                              (GRU 5), reset after
    (BPTT 2), (BPTT 3) masked carry and zero outputs at padded steps.

BN_t takes its statistics over the rows of step t selected by the statistics mask s_t in training
(gradients flow through them) and from the population statistics of step t in inference; the
caller hands in the population slots already chosen for each step by (BN-LSTM 5). s_t is the
validity mask m_t (pad_stats="exclude", the default) or all ones (pad_stats="include"). A step
with one row in its statistics runs that row with constant gates in training (BN-GRU 8): a leak,
not a reset.
"""
from dataclasses import dataclass

import numpy as np

from .common import carry, input_projection_backward, scan_backward_h, scan_forward_h
from .gru import gru_gates_backward, gru_gates_forward
from .norms import batchnorm_backward, batchnorm_forward

# The keys of `pop` and the cache fields that hold the statistics used.
STAT_NAMES = ("mean_x", "var_x", "mean_h", "var_h")


@dataclass
class BNGRUCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid step
    stat_mask: np.ndarray  # (T, B)    1 = row enters step t's batch statistics
    params: dict         # Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H), gamma_x, gamma_h (3H): copies
    training: bool       # batch statistics (True) or population statistics (False)
    eps: float
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    gates: np.ndarray    # (T, B, 3H)  activated gates r, z, n
    hn: np.ndarray       # (T, B, H)   q_t = w^n + b_hn, what r multiplies
    count: np.ndarray    # (T,)        rows in each step's statistics, n_t (BN 1)
    u_hat: np.ndarray    # (T, B, 3H)  normalised input term û_t
    a_hat: np.ndarray    # (T, B, 3H)  normalised recurrent term â_t
    mean_x: np.ndarray   # (T, 3H)     statistics used for u_t
    var_x: np.ndarray    # (T, 3H)
    mean_h: np.ndarray   # (T, 3H)     statistics used for a_t
    var_h: np.ndarray    # (T, 3H)


def bn_gru_step_forward(u_t, h_prev, m_t, s_t, p, eps, pop_t):
    """One step. u_t = x_t Wx (B, 3H); m_t (B,) valid rows, s_t (B,) rows in the statistics;
    pop_t None (training) or a dict of this step's population statistics (3H,) named as in
    STAT_NAMES."""
    def stats(key):
        return None if pop_t is None else (pop_t["mean_" + key], pop_t["var_" + key])

    a = h_prev @ p["Wh"]                                                        # (BN-GRU 1)
    u_bn, u_hat, mean_x, var_x = batchnorm_forward(u_t, s_t, p["gamma_x"], None, eps,
                                                   stats("x"))                  # (BN-GRU 2)
    w, a_hat, mean_h, var_h = batchnorm_forward(a, s_t, p["gamma_h"], None, eps,
                                                stats("h"))                     # (BN-GRU 2)
    v = u_bn + p["b"]                                                           # (BN-GRU 2)
    gates, q, h_new = gru_gates_forward(v, w, h_prev, p["b_hn"])               # (BN-GRU 3)
    y = m_t[:, None] * h_new                                                    # (BPTT 3)
    h = carry(m_t, h_new, h_prev)                                               # (BPTT 2)
    return y, h, {"gates": gates, "hn": q, "count": s_t.sum(), "u_hat": u_hat,
                  "a_hat": a_hat, "mean_x": mean_x, "var_x": var_x, "mean_h": mean_h,
                  "var_h": var_h}


def bn_gru_step_backward(dy, dH, t, cache):
    """Backward of step t. Returns du_t (B, 3H), dH_{t-1} (B, H), parameter parts and dh̃_t."""
    p, eps, training = cache.params, cache.eps, cache.training
    m_t, s_t, h_prev = cache.mask[t], cache.stat_mask[t], cache.h[t]
    H = h_prev.shape[-1]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                                  # (BPTT 4)
    dv, dw, dh_z = gru_gates_backward(dh_new, cache.gates[t], cache.hn[t], h_prev)  # (BN-GRU 4)
    du, dgamma_x, _ = batchnorm_backward(dv, cache.u_hat[t], cache.var_x[t], s_t,
                                         p["gamma_x"], eps, training)           # (BN-GRU 5)
    da, dgamma_h, _ = batchnorm_backward(dw, cache.a_hat[t], cache.var_h[t], s_t,
                                         p["gamma_h"], eps, training)           # (BN-GRU 5)
    dh_prev = (1 - valid) * dH + dh_z + da @ p["Wh"].T              # (BPTT 6), (BN-GRU 6)
    return du, dh_prev, {"Wh": h_prev.T @ da,                                  # (BN-GRU 6)
                         "b": dv.sum(axis=0),                                   # (BN-GRU 4)
                         "b_hn": dw[:, 2 * H:].sum(axis=0),                     # (BN-GRU 4)
                         "gamma_x": dgamma_x, "gamma_h": dgamma_h}, dh_new


def bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H),
    gamma_x, gamma_h (3H). In inference, pop holds the population statistics chosen for each of
    the T steps: mean_x, var_x, mean_h, var_h, each (T, 3H).
    Returns hs (T, B, H), hT (B, H), cache (with the statistics used and the counts n_t)."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    p = {name: value.copy() for name, value in params.items()}
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    U = x @ p["Wx"]                                             # (BN-GRU 1), (BPTT 8)  (T, B, 3H)

    def step(t, u_t, h_prev, m_t):
        pop_t = None if training else {k: pop[k][t] for k in STAT_NAMES}
        return bn_gru_step_forward(u_t, h_prev, m_t, stat_mask[t], p, eps, pop_t)

    hs, h, steps = scan_forward_h(step, U, h0, mask)
    cache = BNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                       eps=eps, h=h, **steps)
    return hs, h[-1], cache


def bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, as a dict (with state_grads also
    "dh", as in gru_backward)."""
    def step_backward(t, dy, dH):
        return bn_gru_step_backward(dy, dH, t, cache)

    dU, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (BN-GRU 7)
    grads = {"Wx": dWx, **acc, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
