"""LN-GRU, haste's LayerNormGRU exactly, the reference. Derivation: derivations/ln_gru.md,
derivations/gru.md, derivations/layer_norm.md.

    (LN-GRU 1)  u_t = x_t Wx,   a_t = h_{t-1} Wh                                 (B, 3H) each
    (LN-GRU 2)  v_t = LN(u_t; γ_x, 0) + b,   w_t = LN(a_t; γ_h, 0)      each LN over all 3H
    (LN-GRU 3)  r = σ(v^r + w^r),  z = σ(v^z + w^z),  n = tanh(v^n + r ⊙ (w^n + b_hn)),
                h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}                              (GRU 5), reset after
    (BPTT 2), (BPTT 3) masked carry and zero outputs at padded steps.

haste's recurrent_bias splits: its r and z parts fold into b, its n part is b_hn. Every
statistic belongs to one row, over its 3H features: no batch coupling, training and inference
are identical. No Zoneout, no DropConnect (haste's regularisers, not part of the cell).
"""
from dataclasses import dataclass

import numpy as np

from .common import carry, input_projection_backward, scan_backward_h, scan_forward_h
from .gru import gru_gates_backward, gru_gates_forward
from .norms import layernorm_backward, layernorm_forward


@dataclass
class LNGRUCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid step
    params: dict         # Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H), gamma_x, gamma_h (3H): copies
    eps: float
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    gates: np.ndarray    # (T, B, 3H)  activated gates r, z, n
    hn: np.ndarray       # (T, B, H)   q_t = w^n + b_hn, what r multiplies
    u_hat: np.ndarray    # (T, B, 3H)  normalised input term û_t
    a_hat: np.ndarray    # (T, B, 3H)  normalised recurrent term â_t
    mean_x: np.ndarray   # (T, B, 1)   row statistics of u_t
    var_x: np.ndarray    # (T, B, 1)
    mean_h: np.ndarray   # (T, B, 1)   row statistics of a_t
    var_h: np.ndarray    # (T, B, 1)


def ln_gru_step_forward(u_t, h_prev, m_t, p, eps):
    """One step. u_t = x_t Wx (B, 3H), h_prev (B, H), m_t (B,)."""
    a = h_prev @ p["Wh"]                                                        # (LN-GRU 1)
    u_ln, u_hat, mean_x, var_x = layernorm_forward(u_t, p["gamma_x"], None, eps)  # (LN-GRU 2)
    w, a_hat, mean_h, var_h = layernorm_forward(a, p["gamma_h"], None, eps)     # (LN-GRU 2)
    v = u_ln + p["b"]                                                           # (LN-GRU 2)
    gates, q, h_new = gru_gates_forward(v, w, h_prev, p["b_hn"])               # (LN-GRU 3)
    y = m_t[:, None] * h_new                                                    # (BPTT 3)
    h = carry(m_t, h_new, h_prev)                                               # (BPTT 2)
    return y, h, {"gates": gates, "hn": q, "u_hat": u_hat, "a_hat": a_hat,
                  "mean_x": mean_x, "var_x": var_x, "mean_h": mean_h, "var_h": var_h}


def ln_gru_step_backward(dy, dH, t, cache):
    """Backward of step t. Returns du_t (B, 3H), dH_{t-1} (B, H), parameter parts and dh̃_t."""
    p, eps = cache.params, cache.eps
    m_t, h_prev = cache.mask[t], cache.h[t]
    H = h_prev.shape[-1]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                                  # (BPTT 4)
    dv, dw, dh_z = gru_gates_backward(dh_new, cache.gates[t], cache.hn[t], h_prev)  # (LN-GRU 4)
    du, dgamma_x, _ = layernorm_backward(dv, cache.u_hat[t], cache.var_x[t],
                                         p["gamma_x"], eps)                     # (LN-GRU 5)
    da, dgamma_h, _ = layernorm_backward(dw, cache.a_hat[t], cache.var_h[t],
                                         p["gamma_h"], eps)                     # (LN-GRU 5)
    dh_prev = (1 - valid) * dH + dh_z + da @ p["Wh"].T              # (BPTT 6), (LN-GRU 6)
    return du, dh_prev, {"Wh": h_prev.T @ da,                                  # (LN-GRU 6)
                         "b": dv.sum(axis=0),                                   # (LN-GRU 4)
                         "b_hn": dw[:, 2 * H:].sum(axis=0),                     # (LN-GRU 4)
                         "gamma_x": dgamma_x, "gamma_h": dgamma_h}, dh_new


def ln_gru_forward(x, h0, mask, params, *, eps):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H),
    gamma_x, gamma_h (3H). Returns hs (T, B, H), hT (B, H), cache."""
    p = {name: value.copy() for name, value in params.items()}
    U = x @ p["Wx"]                                             # (LN-GRU 1), (BPTT 8)  (T, B, 3H)

    def step(t, u_t, h_prev, m_t):
        return ln_gru_step_forward(u_t, h_prev, m_t, p, eps)

    hs, h, steps = scan_forward_h(step, U, h0, mask)
    cache = LNGRUCache(x=x, mask=mask, params=p, eps=eps, h=h, **steps)
    return hs, h[-1], cache


def ln_gru_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, as a dict (with state_grads also
    "dh", as in gru_backward)."""
    def step_backward(t, dy, dH):
        return ln_gru_step_backward(dy, dH, t, cache)

    dU, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (LN-GRU 7)
    grads = {"Wx": dWx, **acc, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
