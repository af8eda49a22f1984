"""Vanilla LSTM, the reference ("the book"). Derivation: derivations/lstm.md, derivations/bptt.md.

    (LSTM 1)  z_t = x_t Wx + h_{t-1} Wh + b                     z_t (B, 4H), blocks i, f, g, o
    (LSTM 2)  i = σ(z^i), f = σ(z^f), g = tanh(z^g), o = σ(z^o)
    (LSTM 3)  c̃_t = f ⊙ c_{t-1} + i ⊙ g
    (LSTM 4)  h̃_t = o ⊙ tanh(c̃_t)
    (BPTT 2)  h_t = m_t ⊙ h̃_t + (1 - m_t) ⊙ h_{t-1},  c_t likewise     (padded steps carry)
    (BPTT 3)  y_t = m_t ⊙ h̃_t                                            (padded outputs are 0)

The input part x_t Wx + b of (LSTM 1) is computed for all steps at once, U = X Wx + b (BPTT 8);
the step functions receive its row u_t.
"""
from dataclasses import dataclass

import numpy as np

from .common import (carry, gates_backward, gates_forward, input_projection_backward,
                     scan_backward, scan_forward, split_gates, with_state_grads)


@dataclass
class LSTMCache:
    x: np.ndarray        # (T, B, D)   input, as given to forward
    mask: np.ndarray     # (T, B)      1 = valid step, 0 = padding
    params: dict         # Wx (D, 4H), Wh (H, 4H), b (4H): copies of what forward used
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    c: np.ndarray        # (T+1, B, H) states c_0 .. c_T after the masked carry
    gates: np.ndarray    # (T, B, 4H)  activated gates i, f, g, o
    tanh_c: np.ndarray   # (T, B, H)   tanh(c̃_t)


def lstm_step_forward(u_t, h_prev, c_prev, m_t, p):
    """One step. u_t (B, 4H) = x_t Wx + b, h_prev, c_prev (B, H), m_t (B,), p the params."""
    z = u_t + h_prev @ p["Wh"]                      # (LSTM 1)                       (B, 4H)
    gates = gates_forward(z)                        # (LSTM 2)                       (B, 4H)
    i, f, g, o = split_gates(gates)
    c_new = f * c_prev + i * g                      # (LSTM 3)                       (B, H)
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c                              # (LSTM 4)                       (B, H)
    y = m_t[:, None] * h_new                        # (BPTT 3)
    h, c = carry(m_t, h_new, h_prev), carry(m_t, c_new, c_prev)   # (BPTT 2)
    return y, h, c, {"gates": gates, "tanh_c": tanh_c}


def lstm_step_backward(dy, dH, dC, t, cache):
    """Backward of step t. dy (B, H) upstream on y_t; dH, dC (B, H) gradients reaching the states
    h_t, c_t from later steps. Returns du_t = dz_t (B, 4H), dH_{t-1}, dC_{t-1}, {"Wh": dWh_t} and
    (dh̃_t, dc̃_t).
    The cache needs mask, h, c, gates, tanh_c and params["Wh"] (SeqBN-LSTM reuses this step)."""
    m_t, h_prev, c_prev, tanh_c = cache.mask[t], cache.h[t], cache.c[t], cache.tanh_c[t]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                      # (BPTT 4)
    dc_new = valid * dC                             # (BPTT 5)
    i, f, g, o = split_gates(cache.gates[t])
    do = dh_new * tanh_c                            # (LSTM 5)
    dc_new = dc_new + dh_new * o * (1 - tanh_c ** 2)  # (LSTM 6)
    di, df, dg = dc_new * g, dc_new * c_prev, dc_new * i   # (LSTM 7)
    dz = gates_backward(di, df, dg, do, cache.gates[t])   # (LSTM 8)                 (B, 4H)
    dh_prev = (1 - valid) * dH + dz @ cache.params["Wh"].T   # (BPTT 6), (LSTM 9)
    dc_prev = (1 - valid) * dC + dc_new * f         # (BPTT 6)
    return dz, dh_prev, dc_prev, {"Wh": h_prev.T @ dz}, (dh_new, dc_new)   # (LSTM 9)


def lstm_forward(x, h0, c0, mask, params):
    """x (T, B, D), h0, c0 (B, H), mask (T, B). Returns hs (T, B, H), hT, cT (B, H), cache."""
    U = x @ params["Wx"] + params["b"]              # (LSTM 1), (BPTT 8)             (T, B, 4H)

    def step(t, u_t, h_prev, c_prev, m_t):
        return lstm_step_forward(u_t, h_prev, c_prev, m_t, params)

    hs, h, c, steps = scan_forward(step, U, h0, c0, mask)
    cache = LSTMCache(x=x, mask=mask, params=params, h=h, c=c, **steps)
    return hs, h[-1], c[-1], cache


def lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, c0, as a dict; with state_grads
    also "dh", "dc" (T, B, H): the gradients w.r.t. h̃_t and c̃_t, the values step t computed."""
    def step_backward(t, dy, dH, dC):
        return lstm_step_backward(dy, dH, dC, t, cache)

    dU, dh0, dc0, acc, states = scan_backward(step_backward, dhs, dhT, dcT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (LSTM 10), (BPTT 8)
    db = dU.sum(axis=(0, 1))                                # (LSTM 9), (BPTT 7)
    grads = {"Wx": dWx, "Wh": acc["Wh"], "b": db, "x": dx, "h0": dh0, "c0": dc0}
    return with_state_grads(grads, states, state_grads)
