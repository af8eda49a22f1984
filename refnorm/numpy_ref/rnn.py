"""Vanilla (Elman) RNN, the reference ("the book"). Derivation: derivations/rnn.md,
derivations/bptt.md.

    (RNN 1)   z_t = x_t Wx + h_{t-1} Wh + b                       z_t (B, H)
    (RNN 2)   h̃_t = φ(z_t),   φ = tanh or relu
    (RNN 3)   φ'(z_t) = 1 - h̃_t² (tanh),  [h̃_t > 0] (relu)         read from the forward output
    (BPTT 2)  h_t = m_t ⊙ h̃_t + (1 - m_t) ⊙ h_{t-1}                  (padded steps carry)
    (BPTT 3)  y_t = m_t ⊙ h̃_t                                         (padded outputs are 0)

One state, no c. The input part x_t Wx + b of (RNN 1) is computed for all steps at once,
U = X Wx + b (BPTT 8); the step functions receive its row u_t. SeqBN-RNN reuses both steps.
"""
from dataclasses import dataclass

import numpy as np

from .common import carry, input_projection_backward, scan_backward_h, scan_forward_h

NONLINEARITIES = ("tanh", "relu")


@dataclass
class RNNCache:
    x: np.ndarray        # (T, B, D)   input, as given to forward
    mask: np.ndarray     # (T, B)      1 = valid step, 0 = padding
    params: dict         # Wx (D, H), Wh (H, H), b (H): copies of what forward used
    nonlinearity: str    # "tanh" or "relu"
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    h_tilde: np.ndarray  # (T, B, H)   h̃_t = φ(z_t), before the carry (φ' is read from it)


def rnn_step_forward(u_t, h_prev, m_t, p, nonlinearity):
    """One step. u_t (B, H) = x_t Wx + b, h_prev (B, H), m_t (B,), p the params."""
    z = u_t + h_prev @ p["Wh"]                                  # (RNN 1)                 (B, H)
    h_new = np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0.0)   # (RNN 2)    (B, H)
    y = m_t[:, None] * h_new                                    # (BPTT 3)
    h = carry(m_t, h_new, h_prev)                               # (BPTT 2)
    return y, h, {"h_tilde": h_new}


def rnn_step_backward(dy, dH, t, cache):
    """Backward of step t. dy (B, H) upstream on y_t; dH (B, H) the gradient reaching the state
    h_t from later steps. Returns du_t = dz_t (B, H), dH_{t-1}, {"Wh": dWh_t} and dh̃_t.
    The cache needs mask, h, h_tilde, nonlinearity and params["Wh"] (SeqBN-RNN reuses this)."""
    m_t, h_prev, h_new = cache.mask[t], cache.h[t], cache.h_tilde[t]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                  # (BPTT 4)
    dphi = 1 - h_new ** 2 if cache.nonlinearity == "tanh" else h_new > 0   # (RNN 3)
    dz = dh_new * dphi                                          # (RNN 4)                 (B, H)
    dh_prev = (1 - valid) * dH + dz @ cache.params["Wh"].T      # (BPTT 6), (RNN 5)
    return dz, dh_prev, {"Wh": h_prev.T @ dz}, dh_new           # (RNN 5)


def rnn_forward(x, h0, mask, params, *, nonlinearity="tanh"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, H), Wh (H, H), b (H).
    Returns hs (T, B, H), hT (B, H), cache."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, not {nonlinearity!r}")
    p = {name: value.copy() for name, value in params.items()}
    U = x @ p["Wx"] + p["b"]                                    # (RNN 1), (BPTT 8)       (T, B, H)

    def step(t, u_t, h_prev, m_t):
        return rnn_step_forward(u_t, h_prev, m_t, p, nonlinearity)

    hs, h, steps = scan_forward_h(step, U, h0, mask)
    cache = RNNCache(x=x, mask=mask, params=p, nonlinearity=nonlinearity, h=h, **steps)
    return hs, h[-1], cache


def rnn_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. Wx, Wh, b and x, h0, as a dict; with state_grads also "dh"
    (T, B, H): the gradient w.r.t. h̃_t, the value step t computed."""
    def step_backward(t, dy, dH):
        return rnn_step_backward(dy, dH, t, cache)

    dU, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (RNN 6), (BPTT 8)
    db = dU.sum(axis=(0, 1))                                    # (RNN 5), (BPTT 7)
    grads = {"Wx": dWx, "Wh": acc["Wh"], "b": db, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
