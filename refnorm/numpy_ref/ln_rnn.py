"""LN-RNN, layer-normalised vanilla RNN (Ba et al. 2016, eq. 4), the reference.
Derivation: derivations/ln_rnn.md, derivations/rnn.md, derivations/layer_norm.md.

    (LN-RNN 1)  u_t = x_t Wx,   a_t = h_{t-1} Wh                                  (B, H) each
    (LN-RNN 2)  z_t = LN(u_t + a_t; γ_z, 0) + b                 terms="summed" (default, eq. 4)
    (LN-RNN 3)  z_t = LN(u_t; γ_x, 0) + LN(a_t; γ_h, 0) + b      terms="separate"
    (RNN 2)     h̃_t = φ(z_t),   φ = tanh or relu
    (BPTT 2), (BPTT 3) masked carry and zero outputs at padded steps.

Every statistic belongs to one row, over its H features: no batch coupling, training and
inference are identical. The LN has no shift of its own; b is the shift.
"""
from dataclasses import dataclass

import numpy as np

from .common import carry, input_projection_backward, scan_backward_h, scan_forward_h
from .norms import layernorm_backward, layernorm_forward
from .rnn import NONLINEARITIES


@dataclass
class LNRNNCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid step
    params: dict         # Wx, Wh, b and gamma_z (summed) or gamma_x, gamma_h (separate): copies
    eps: float
    terms: str           # "summed": LN(u + a), "separate": LN(u) + LN(a)
    nonlinearity: str    # "tanh" or "relu"
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    h_tilde: np.ndarray  # (T, B, H)   h̃_t = φ(z_t), before the carry
    # terms="summed" (None when separate)
    s_hat: np.ndarray = None   # (T, B, H)  normalised sum ŝ_t of s_t = u_t + a_t
    mean_z: np.ndarray = None  # (T, B, 1)  row statistics of s_t
    var_z: np.ndarray = None   # (T, B, 1)
    # terms="separate" (None when summed)
    u_hat: np.ndarray = None   # (T, B, H)  normalised input term û_t
    a_hat: np.ndarray = None   # (T, B, H)  normalised recurrent term â_t
    mean_x: np.ndarray = None  # (T, B, 1)  row statistics of u_t
    var_x: np.ndarray = None   # (T, B, 1)
    mean_h: np.ndarray = None  # (T, B, 1)  row statistics of a_t
    var_h: np.ndarray = None   # (T, B, 1)


def ln_rnn_step_forward(u_t, h_prev, m_t, p, eps, terms, nonlinearity):
    """One step. u_t = x_t Wx (B, H), h_prev (B, H), m_t (B,)."""
    a = h_prev @ p["Wh"]                                                        # (LN-RNN 1)
    if terms == "summed":
        s_ln, s_hat, mean_z, var_z = layernorm_forward(u_t + a, p["gamma_z"], None, eps)
        z = s_ln + p["b"]                                                       # (LN-RNN 2)
        norm = {"s_hat": s_hat, "mean_z": mean_z, "var_z": var_z}
    else:
        u_ln, u_hat, mean_x, var_x = layernorm_forward(u_t, p["gamma_x"], None, eps)
        a_ln, a_hat, mean_h, var_h = layernorm_forward(a, p["gamma_h"], None, eps)
        z = u_ln + a_ln + p["b"]                                                # (LN-RNN 3)
        norm = {"u_hat": u_hat, "a_hat": a_hat, "mean_x": mean_x, "var_x": var_x,
                "mean_h": mean_h, "var_h": var_h}
    h_new = np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0.0)       # (RNN 2)
    y = m_t[:, None] * h_new                                                    # (BPTT 3)
    h = carry(m_t, h_new, h_prev)                                               # (BPTT 2)
    return y, h, {**norm, "h_tilde": h_new}


def ln_rnn_step_backward(dy, dH, t, cache):
    """Backward of step t. Returns du_t (B, H), dH_{t-1} (B, H), parameter parts and dh̃_t."""
    p, eps = cache.params, cache.eps
    m_t, h_prev, h_new = cache.mask[t], cache.h[t], cache.h_tilde[t]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                                  # (BPTT 4)
    dphi = 1 - h_new ** 2 if cache.nonlinearity == "tanh" else h_new > 0       # (RNN 3)
    dz = dh_new * dphi                                                          # (LN-RNN 4)
    if cache.terms == "summed":
        ds, dgamma_z, _ = layernorm_backward(dz, cache.s_hat[t], cache.var_z[t],
                                             p["gamma_z"], eps)                 # (LN-RNN 5)
        du, da = ds, ds                                                         # (LN-RNN 5)
        dgains = {"gamma_z": dgamma_z}
    else:
        du, dgamma_x, _ = layernorm_backward(dz, cache.u_hat[t], cache.var_x[t],
                                             p["gamma_x"], eps)                 # (LN-RNN 6)
        da, dgamma_h, _ = layernorm_backward(dz, cache.a_hat[t], cache.var_h[t],
                                             p["gamma_h"], eps)                 # (LN-RNN 6)
        dgains = {"gamma_x": dgamma_x, "gamma_h": dgamma_h}
    dh_prev = (1 - valid) * dH + da @ p["Wh"].T                     # (BPTT 6), (LN-RNN 7)
    return du, dh_prev, {"Wh": h_prev.T @ da,                                  # (LN-RNN 7)
                         "b": dz.sum(axis=0),                                   # (LN-RNN 4)
                         **dgains}, dh_new


def ln_rnn_forward(x, h0, mask, params, *, eps, terms="summed", nonlinearity="tanh"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, H), Wh (H, H), b (H) and gamma_z (H)
    (terms="summed") or gamma_x, gamma_h (H) (terms="separate").
    Returns hs (T, B, H), hT (B, H), cache."""
    if terms not in ("summed", "separate"):
        raise ValueError(f"terms must be 'summed' or 'separate', not {terms!r}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, not {nonlinearity!r}")
    p = {name: value.copy() for name, value in params.items()}
    U = x @ p["Wx"]                                             # (LN-RNN 1), (BPTT 8)   (T, B, H)

    def step(t, u_t, h_prev, m_t):
        return ln_rnn_step_forward(u_t, h_prev, m_t, p, eps, terms, nonlinearity)

    hs, h, steps = scan_forward_h(step, U, h0, mask)
    cache = LNRNNCache(x=x, mask=mask, params=p, eps=eps, terms=terms,
                       nonlinearity=nonlinearity, h=h, **steps)
    return hs, h[-1], cache


def ln_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, as a dict (with state_grads also
    "dh", as in rnn_backward)."""
    def step_backward(t, dy, dH):
        return ln_rnn_step_backward(dy, dH, t, cache)

    dU, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (LN-RNN 8)
    grads = {"Wx": dWx, **acc, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
