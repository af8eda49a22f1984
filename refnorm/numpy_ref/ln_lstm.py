"""LN-LSTM, layer-normalised LSTM (Ba et al. 2016, supplementary eqs. 20-22), the reference.
Derivation: derivations/ln_lstm.md, derivations/layer_norm.md, derivations/bptt.md.

    (LN-LSTM 1)  a_t = h_{t-1} Wh,   u_t = x_t Wx                              (B, 4H) each
    (LN-LSTM 2)  z_t = LN(a_t; γ_h, 0) + LN(u_t; γ_x, 0) + b     over the 4H vector, or per gate
    (LN-LSTM 3)  i, f, g, o by (LSTM 2);   c̃_t = f ⊙ c_{t-1} + i ⊙ g            raw c̃_t is carried
    (LN-LSTM 4)  ĉ_t = LN(c̃_t; γ_c, β_c),   h̃_t = o ⊙ tanh(ĉ_t)
    (BPTT 2), (BPTT 3) masked carry and zero outputs at padded steps.

Every statistic belongs to one row: no batch coupling, training and inference are identical.
`groups` is 1 for LN over the joint 4H vector and 4 for per-gate LN (LN 9); ĉ_t is always
normalised over its H features.

The variants peers implement (derivations/variants.md):
    carry="normalized"  (VAR 3)  ĉ_t, not c̃_t, is the state carried to t+1 and returned as cT
                                 (PyTorch fastrnns, TF Addons, TF1 contrib)
    terms="summed"      (VAR 5)  z_t = LN(a_t + u_t; γ_z, 0) + b: one LN of the summed projection
                                 (TF1 contrib LayerNormBasicLSTMCell, per gate)
The term shifts β_x, β_h and a run-time forget bias are folded into b by the caller (VAR 1),
(VAR 2), so they need nothing here.
"""
from dataclasses import dataclass

import numpy as np

from .common import (carry, gates_backward, gates_forward, normalized_lstm_backward,
                     scan_forward, split_gates)
from .norms import layernorm_backward, layernorm_forward


@dataclass
class LNLSTMCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid step
    params: dict         # Wx, Wh, b, gamma_x, gamma_h (gamma_z if summed), gamma_c, beta_c:
                         # copies of what the equations ran with
    eps: float
    groups: int          # 1: LN over 4H (joint), 4: LN per gate block
    carry: str           # "raw": c̃_t carried, "normalized": ĉ_t carried (VAR 3)
    terms: str           # "separate": LN(a) + LN(u), "summed": LN(a + u) (VAR 5)
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T
    c: np.ndarray        # (T+1, B, H) carried cell states c_0 .. c_T (raw c̃ or ĉ, per carry)
    gates: np.ndarray    # (T, B, 4H)  activated gates i, f, g, o
    c_hat: np.ndarray    # (T, B, H)   normalised cell (before γ_c, β_c)
    tanh_c: np.ndarray   # (T, B, H)   tanh(LN(c̃_t))
    mean_c: np.ndarray   # (T, B, 1)   row statistics of c̃_t
    var_c: np.ndarray    # (T, B, 1)
    # terms="separate" (None when summed)
    a_hat: np.ndarray = None   # (T, B, 4H)  normalised recurrent term â_t
    u_hat: np.ndarray = None   # (T, B, 4H)  normalised input term û_t
    mean_h: np.ndarray = None  # (T, B, groups) row statistics of a_t
    var_h: np.ndarray = None   # (T, B, groups)
    mean_x: np.ndarray = None  # (T, B, groups) row statistics of u_t
    var_x: np.ndarray = None   # (T, B, groups)
    # terms="summed" (None when separate)
    s_hat: np.ndarray = None   # (T, B, 4H)  normalised sum ŝ_t of s_t = a_t + u_t
    mean_s: np.ndarray = None  # (T, B, groups) row statistics of s_t
    var_s: np.ndarray = None   # (T, B, groups)


def ln_lstm_step_forward(u_t, h_prev, c_prev, m_t, p, eps, groups, carry_mode, terms):
    """One step. u_t = x_t Wx (B, 4H), h_prev, c_prev (B, H), m_t (B,)."""
    a = h_prev @ p["Wh"]                                                        # (LN-LSTM 1)
    if terms == "separate":
        a_ln, a_hat, mean_h, var_h = layernorm_forward(a, p["gamma_h"], None, eps, groups)
        u_ln, u_hat, mean_x, var_x = layernorm_forward(u_t, p["gamma_x"], None, eps, groups)
        z = a_ln + u_ln + p["b"]                                                # (LN-LSTM 2)
        stats = {"a_hat": a_hat, "u_hat": u_hat, "mean_h": mean_h, "var_h": var_h,
                 "mean_x": mean_x, "var_x": var_x}
    else:
        s_ln, s_hat, mean_s, var_s = layernorm_forward(a + u_t, p["gamma_z"], None, eps, groups)
        z = s_ln + p["b"]                                                       # (VAR 5)
        stats = {"s_hat": s_hat, "mean_s": mean_s, "var_s": var_s}
    gates = gates_forward(z)                                                    # (LSTM 2)
    i, f, g, o = split_gates(gates)
    c_new = f * c_prev + i * g                                                  # (LN-LSTM 3)
    c_ln, c_hat, mean_c, var_c = layernorm_forward(c_new, p["gamma_c"], p["beta_c"], eps)
    tanh_c = np.tanh(c_ln)
    h_new = o * tanh_c                                                          # (LN-LSTM 4)
    c_state = c_ln if carry_mode == "normalized" else c_new                     # (VAR 3)
    y = m_t[:, None] * h_new                                                    # (BPTT 3)
    h, c = carry(m_t, h_new, h_prev), carry(m_t, c_state, c_prev)               # (BPTT 2)
    return y, h, c, {**stats, "gates": gates, "c_hat": c_hat, "tanh_c": tanh_c,
                     "mean_c": mean_c, "var_c": var_c}


def ln_lstm_step_backward(dy, dH, dC, t, cache):
    """Backward of step t. Returns du_t (B, 4H), dH_{t-1}, dC_{t-1} (B, H), parameter parts and
    (dh̃_t, dc̃_t)."""
    p, eps, groups = cache.params, cache.eps, cache.groups
    m_t, c_prev, h_prev = cache.mask[t], cache.c[t], cache.h[t]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                                  # (BPTT 4)
    i, f, g, o = split_gates(cache.gates[t])
    tanh_c = cache.tanh_c[t]
    do = dh_new * tanh_c                                                        # (LN-LSTM 5)
    dc_ln = dh_new * o * (1 - tanh_c ** 2)                                      # (LN-LSTM 5)
    if cache.carry == "normalized":
        dc_ln = dc_ln + valid * dC                                  # (BPTT 5), (VAR 4)
        dc_state = dc_ln
        dc_new, dgamma_c, dbeta_c = layernorm_backward(dc_ln, cache.c_hat[t], cache.var_c[t],
                                                       p["gamma_c"], eps)       # (VAR 4)
    else:
        dc_norm, dgamma_c, dbeta_c = layernorm_backward(dc_ln, cache.c_hat[t], cache.var_c[t],
                                                        p["gamma_c"], eps)
        dc_new = valid * dC + dc_norm                               # (BPTT 5), (LN-LSTM 6)
        dc_state = dc_new
    di, df, dg = dc_new * g, dc_new * c_prev, dc_new * i                        # (LSTM 7)
    dz = gates_backward(di, df, dg, do, cache.gates[t])                         # (LSTM 8)
    if cache.terms == "separate":
        da, dgamma_h, _ = layernorm_backward(dz, cache.a_hat[t], cache.var_h[t],
                                             p["gamma_h"], eps, groups)         # (LN-LSTM 8)
        du, dgamma_x, _ = layernorm_backward(dz, cache.u_hat[t], cache.var_x[t],
                                             p["gamma_x"], eps, groups)         # (LN-LSTM 8)
        dgains = {"gamma_h": dgamma_h, "gamma_x": dgamma_x}
    else:
        ds, dgamma_z, _ = layernorm_backward(dz, cache.s_hat[t], cache.var_s[t],
                                             p["gamma_z"], eps, groups)         # (VAR 6)
        da, du = ds, ds                                                         # (VAR 6)
        dgains = {"gamma_z": dgamma_z}
    dh_prev = (1 - valid) * dH + da @ p["Wh"].T                     # (BPTT 6), (LN-LSTM 9)
    dc_prev = (1 - valid) * dC + dc_new * f                                     # (BPTT 6)
    return du, dh_prev, dc_prev, {"Wh": h_prev.T @ da,                         # (LN-LSTM 9)
                                  "b": dz.sum(axis=0),                          # (LN-LSTM 7)
                                  **dgains, "gamma_c": dgamma_c, "beta_c": dbeta_c}, \
        (dh_new, dc_state)


def ln_lstm_forward(x, h0, c0, mask, params, *, eps, per_gate=False, carry="raw",
                    terms="separate"):
    """x (T, B, D), h0, c0 (B, H), mask (T, B). Returns hs (T, B, H), hT, cT (B, H), cache.
    c0 and cT are the carried cell state: raw c̃ (carry="raw") or ĉ (carry="normalized")."""
    groups = 4 if per_gate else 1
    U = x @ params["Wx"]                                        # (LN-LSTM 1), (BPTT 8) (T, B, 4H)

    def step(t, u_t, h_prev, c_prev, m_t):
        return ln_lstm_step_forward(u_t, h_prev, c_prev, m_t, params, eps, groups, carry, terms)

    hs, h, c, steps = scan_forward(step, U, h0, c0, mask)
    cache = LNLSTMCache(x=x, mask=mask, params=params, eps=eps, groups=groups, carry=carry,
                        terms=terms, h=h, c=c, **steps)
    return hs, h[-1], c[-1], cache


def ln_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, c0, as a dict (with state_grads
    also "dh", "dc", as in lstm_backward)."""
    return normalized_lstm_backward(ln_lstm_step_backward, dhs, dhT, dcT, cache, state_grads)
