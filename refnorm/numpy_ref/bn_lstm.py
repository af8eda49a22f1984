"""BN-LSTM, recurrent batch normalization (Cooijmans et al. 2016, eqs. 6-8), the reference.
Derivation: derivations/bn_lstm.md, derivations/batch_norm.md, derivations/bptt.md.

    (BN-LSTM 1)  a_t = h_{t-1} Wh,   u_t = x_t Wx                              (B, 4H) each
    (BN-LSTM 2)  z_t = BN_t(a_t; γ_h, 0) + BN_t(u_t; γ_x, 0) + b
    (BN-LSTM 3)  i, f, g, o by (LSTM 2);   c̃_t = f ⊙ c_{t-1} + i ⊙ g            raw c̃_t is carried
    (BN-LSTM 4)  ĉ_t = BN_t(c̃_t; γ_c, β_c),   h̃_t = o ⊙ tanh(ĉ_t)
    (BPTT 2), (BPTT 3) masked carry and zero outputs at padded steps.

BN_t takes its statistics over the rows of step t selected by the statistics mask s_t in training
(gradients flow through them) and from the population statistics of step t in inference; the
caller hands in the population slots already chosen for each step by (BN-LSTM 5). s_t is the
validity mask m_t (pad_stats="exclude", the default: padding never enters the statistics) or all
ones (pad_stats="include", as most ports do, for reproducing them).

carry="normalized" (VAR 3) carries ĉ_t instead of c̃_t and returns it as cT (the authors' code
option --normalize-cell). The term shifts β_x, β_h of ports like jihunchoi's and a run-time
forget bias are folded into b by the caller (VAR 1), (VAR 2).
"""
from dataclasses import dataclass

import numpy as np

from .common import (carry, gates_backward, gates_forward, normalized_lstm_backward,
                     scan_forward, split_gates)
from .norms import batchnorm_backward, batchnorm_forward

STAT_NAMES = ("mean_x", "var_x", "mean_h", "var_h", "mean_c", "var_c")


@dataclass
class BNLSTMCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid step
    stat_mask: np.ndarray  # (T, B)    1 = row enters step t's batch statistics
    params: dict         # Wx, Wh, b, gamma_x, gamma_h, gamma_c, beta_c: copies of what the
                         # equations ran with
    training: bool       # batch statistics (True) or population statistics (False)
    eps: float
    carry: str           # "raw": c̃_t carried, "normalized": ĉ_t carried (VAR 3)
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T
    c: np.ndarray        # (T+1, B, H) carried cell states c_0 .. c_T (raw c̃ or ĉ, per carry)
    count: np.ndarray    # (T,)        rows in each step's statistics, n_t (BN 1)
    a_hat: np.ndarray    # (T, B, 4H)  normalised recurrent term â_t
    u_hat: np.ndarray    # (T, B, 4H)  normalised input term û_t
    gates: np.ndarray    # (T, B, 4H)  activated gates i, f, g, o
    c_hat: np.ndarray    # (T, B, H)   normalised cell (before γ_c, β_c)
    tanh_c: np.ndarray   # (T, B, H)   tanh(BN_t(c̃_t))
    mean_h: np.ndarray   # (T, 4H)     statistics used for a_t
    var_h: np.ndarray    # (T, 4H)
    mean_x: np.ndarray   # (T, 4H)     statistics used for u_t
    var_x: np.ndarray    # (T, 4H)
    mean_c: np.ndarray   # (T, H)      statistics used for c̃_t
    var_c: np.ndarray    # (T, H)


def bn_lstm_step_forward(u_t, h_prev, c_prev, m_t, s_t, p, eps, pop_t, carry_mode):
    """One step. u_t = x_t Wx (B, 4H); m_t (B,) valid rows, s_t (B,) rows in the statistics;
    pop_t None (training) or a dict of this step's population statistics mean_x, var_x, mean_h,
    var_h (4H,), mean_c, var_c (H,)."""
    def stats(key):
        return None if pop_t is None else (pop_t["mean_" + key], pop_t["var_" + key])

    a = h_prev @ p["Wh"]                                                        # (BN-LSTM 1)
    a_bn, a_hat, mean_h, var_h = batchnorm_forward(a, s_t, p["gamma_h"], None, eps, stats("h"))
    u_bn, u_hat, mean_x, var_x = batchnorm_forward(u_t, s_t, p["gamma_x"], None, eps, stats("x"))
    z = a_bn + u_bn + p["b"]                                                    # (BN-LSTM 2)
    gates = gates_forward(z)                                                    # (LSTM 2)
    i, f, g, o = split_gates(gates)
    c_new = f * c_prev + i * g                                                  # (BN-LSTM 3)
    c_bn, c_hat, mean_c, var_c = batchnorm_forward(c_new, s_t, p["gamma_c"], p["beta_c"], eps,
                                                   stats("c"))                  # (BN-LSTM 4)
    tanh_c = np.tanh(c_bn)
    h_new = o * tanh_c                                                          # (BN-LSTM 4)
    c_state = c_bn if carry_mode == "normalized" else c_new                     # (VAR 3)
    y = m_t[:, None] * h_new                                                    # (BPTT 3)
    h, c = carry(m_t, h_new, h_prev), carry(m_t, c_state, c_prev)               # (BPTT 2)
    return y, h, c, {"count": s_t.sum(), "a_hat": a_hat, "u_hat": u_hat, "gates": gates,
                     "c_hat": c_hat, "tanh_c": tanh_c, "mean_h": mean_h, "var_h": var_h,
                     "mean_x": mean_x, "var_x": var_x, "mean_c": mean_c, "var_c": var_c}


def bn_lstm_step_backward(dy, dH, dC, t, cache):
    """Backward of step t. Returns du_t (B, 4H), dH_{t-1}, dC_{t-1} (B, H), parameter parts and
    (dh̃_t, dc̃_t)."""
    p, eps, training = cache.params, cache.eps, cache.training
    m_t, s_t, c_prev, h_prev = cache.mask[t], cache.stat_mask[t], cache.c[t], cache.h[t]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                                  # (BPTT 4)
    i, f, g, o = split_gates(cache.gates[t])
    tanh_c = cache.tanh_c[t]
    do = dh_new * tanh_c                                                        # (BN-LSTM 6)
    dc_bn = dh_new * o * (1 - tanh_c ** 2)                                      # (BN-LSTM 6)
    if cache.carry == "normalized":
        dc_bn = dc_bn + valid * dC                                  # (BPTT 5), (VAR 4)
        dc_state = dc_bn
        dc_new, dgamma_c, dbeta_c = batchnorm_backward(dc_bn, cache.c_hat[t], cache.var_c[t],
                                                       s_t, p["gamma_c"], eps, training)
    else:
        dc_norm, dgamma_c, dbeta_c = batchnorm_backward(dc_bn, cache.c_hat[t], cache.var_c[t],
                                                        s_t, p["gamma_c"], eps, training)
        dc_new = valid * dC + dc_norm                               # (BPTT 5), (BN-LSTM 7)
        dc_state = dc_new
    di, df, dg = dc_new * g, dc_new * c_prev, dc_new * i                        # (LSTM 7)
    dz = gates_backward(di, df, dg, do, cache.gates[t])                         # (LSTM 8)
    da, dgamma_h, _ = batchnorm_backward(dz, cache.a_hat[t], cache.var_h[t], s_t,
                                         p["gamma_h"], eps, training)           # (BN-LSTM 9)
    du, dgamma_x, _ = batchnorm_backward(dz, cache.u_hat[t], cache.var_x[t], s_t,
                                         p["gamma_x"], eps, training)           # (BN-LSTM 9)
    dh_prev = (1 - valid) * dH + da @ p["Wh"].T                     # (BPTT 6), (BN-LSTM 10)
    dc_prev = (1 - valid) * dC + dc_new * f                                     # (BPTT 6)
    return du, dh_prev, dc_prev, {"Wh": h_prev.T @ da,                         # (BN-LSTM 10)
                                  "b": dz.sum(axis=0),                          # (BN-LSTM 8)
                                  "gamma_h": dgamma_h, "gamma_x": dgamma_x,
                                  "gamma_c": dgamma_c, "beta_c": dbeta_c}, (dh_new, dc_state)


def bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                    carry="raw"):
    """x (T, B, D), h0, c0 (B, H), mask (T, B). In inference, pop holds the population
    statistics chosen for each of the T steps: mean_x, var_x, mean_h, var_h (T, 4H), mean_c,
    var_c (T, H). Returns hs (T, B, H), hT, cT (B, H), cache (with the statistics used).
    c0 and cT are the carried cell state: raw c̃ (carry="raw") or ĉ (carry="normalized")."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    U = x @ params["Wx"]                                        # (BN-LSTM 1), (BPTT 8) (T, B, 4H)

    def step(t, u_t, h_prev, c_prev, m_t):
        pop_t = None if training else {k: pop[k][t] for k in STAT_NAMES}
        return bn_lstm_step_forward(u_t, h_prev, c_prev, m_t, stat_mask[t], params, eps, pop_t,
                                    carry)

    hs, h, c, steps = scan_forward(step, U, h0, c0, mask)
    cache = BNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params, training=training,
                        eps=eps, carry=carry, h=h, c=c, **steps)
    return hs, h[-1], c[-1], cache


def bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, c0, as a dict (with state_grads
    also "dh", "dc", as in lstm_backward)."""
    return normalized_lstm_backward(bn_lstm_step_backward, dhs, dhT, dcT, cache, state_grads)
