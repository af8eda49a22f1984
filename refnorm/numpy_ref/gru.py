"""GRU, the reference ("the book"), in both reset forms. Derivation: derivations/gru.md,
derivations/bptt.md.

Gate blocks of the 3H axis in the order r, z, n (PyTorch's); z is the update gate.

    (GRU 1)   u_t = x_t Wx + b,   a_t = h_{t-1} Wh                           (B, 3H) each
    (GRU 2)   r = σ(u^r + a^r),   z = σ(u^z + a^z)
    (GRU 3)   q_t = a^n + b_hn,   n = tanh(u^n + r ⊙ q_t)         reset="after" (default, PyTorch)
    (GRU 4)   ρ_t = r ⊙ h_{t-1},  n = tanh(u^n + ρ_t Wh^n)        reset="before" (Keras, ONNX)
    (GRU 5)   h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    (BPTT 2)  h_t = m_t ⊙ h̃_t + (1 - m_t) ⊙ h_{t-1}                  (padded steps carry)
    (BPTT 3)  y_t = m_t ⊙ h̃_t                                         (padded outputs are 0)

With reset="before" only the r, z blocks of a_t are computed from h_{t-1} and there is no b_hn.
The input side U = X Wx + b is computed for all steps at once (BPTT 8). The reset-after gate
algebra, gru_gates_forward / gru_gates_backward, takes the input side and the recurrent side as
arguments, so BN-GRU and LN-GRU call it with their normalised terms; SeqBN-GRU reuses the steps.
"""
from dataclasses import dataclass

import numpy as np

from .common import carry, input_projection_backward, scan_backward_h, scan_forward_h, sigmoid

RESETS = ("after", "before")


@dataclass
class GRUCache:
    x: np.ndarray        # (T, B, D)   input, as given to forward
    mask: np.ndarray     # (T, B)      1 = valid step, 0 = padding
    params: dict         # Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H) (after): copies used
    reset: str           # "after" or "before"
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    gates: np.ndarray    # (T, B, 3H)  activated gates r, z, n
    hn: np.ndarray = None  # (T, B, H) reset="after":  q_t = a^n + b_hn  (None when before)
    rh: np.ndarray = None  # (T, B, H) reset="before": ρ_t = r ⊙ h_{t-1} (None when after)


def gru_gates_forward(v, w, h_prev, b_hn):
    """The reset-after gate algebra. v (B, 3H) the input side (x_t Wx + b, or its normalised
    form), w (B, 3H) the recurrent side (h_{t-1} Wh, or its normalised form), h_prev (B, H),
    b_hn (H). Returns gates [r | z | n] (B, 3H), q = w^n + b_hn (B, H) and h̃ (B, H)."""
    H = h_prev.shape[-1]
    r = sigmoid(v[:, :H] + w[:, :H])                                    # (GRU 2)   (B, H)
    z = sigmoid(v[:, H:2 * H] + w[:, H:2 * H])                          # (GRU 2)   (B, H)
    q = w[:, 2 * H:] + b_hn                                             # (GRU 3)   (B, H)
    n = np.tanh(v[:, 2 * H:] + r * q)                                   # (GRU 3)   (B, H)
    h_new = (1 - z) * n + z * h_prev                                    # (GRU 5)   (B, H)
    return np.concatenate([r, z, n], axis=-1), q, h_new


def gru_gates_backward(dh_new, gates, q, h_prev):
    """Backward of gru_gates_forward. dh_new (B, H) = dh̃_t. Returns dv (B, 3H) -- the gradient
    of the input side --, dw (B, 3H) -- of the recurrent side, whose n block is dq -- and the
    interpolation path dh_{t-1}^z = z ⊙ dh̃_t (B, H)."""
    H = h_prev.shape[-1]
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    dn = dh_new * (1 - z)                                               # (GRU 6)
    dz = dh_new * (h_prev - n)                                          # (GRU 6)
    dh_z = dh_new * z                                                   # (GRU 6)
    dv_n = dn * (1 - n * n)                                             # (GRU 7)
    dr = dv_n * q                                                       # (GRU 8)
    dq = dv_n * r                                                       # (GRU 8)
    dv_r = dr * r * (1 - r)                                             # (GRU 10)
    dv_z = dz * z * (1 - z)                                             # (GRU 10)
    dv = np.concatenate([dv_r, dv_z, dv_n], axis=-1)                    # (B, 3H)
    dw = np.concatenate([dv_r, dv_z, dq], axis=-1)                      # (GRU 10), (GRU 8)
    return dv, dw, dh_z


def gru_step_forward(u_t, h_prev, m_t, p, reset):
    """One step. u_t (B, 3H) = x_t Wx + b, h_prev (B, H), m_t (B,), p the params."""
    H = h_prev.shape[-1]
    Wh = p["Wh"]
    if reset == "after":
        a = h_prev @ Wh                                                 # (GRU 1)   (B, 3H)
        gates, q, h_new = gru_gates_forward(u_t, a, h_prev, p["b_hn"])  # (GRU 2), (GRU 3)
        saved = {"gates": gates, "hn": q}
    else:
        a_rz = h_prev @ Wh[:, :2 * H]                                   # (GRU 1)   (B, 2H)
        r = sigmoid(u_t[:, :H] + a_rz[:, :H])                           # (GRU 2)
        z = sigmoid(u_t[:, H:2 * H] + a_rz[:, H:])                      # (GRU 2)
        rh = r * h_prev                                                 # (GRU 4)   (B, H)
        n = np.tanh(u_t[:, 2 * H:] + rh @ Wh[:, 2 * H:])                # (GRU 4)
        h_new = (1 - z) * n + z * h_prev                                # (GRU 5)
        saved = {"gates": np.concatenate([r, z, n], axis=-1), "rh": rh}
    y = m_t[:, None] * h_new                                            # (BPTT 3)
    h = carry(m_t, h_new, h_prev)                                       # (BPTT 2)
    return y, h, saved


def gru_step_backward(dy, dH, t, cache, reset):
    """Backward of step t. dy (B, H) upstream on y_t; dH (B, H) the gradient reaching h_t from
    later steps. Returns du_t (B, 3H), dH_{t-1}, the step's parameter parts and dh̃_t.
    The cache needs mask, h, gates, hn (after) or rh (before), params Wh (and b_hn); SeqBN-GRU
    reuses this with reset="after"."""
    m_t, h_prev, gates = cache.mask[t], cache.h[t], cache.gates[t]
    Wh = cache.params["Wh"]
    H = h_prev.shape[-1]
    valid = m_t[:, None]
    dh_new = valid * (dy + dH)                                          # (BPTT 4)
    if reset == "after":
        du, da, dh_z = gru_gates_backward(dh_new, gates, cache.hn[t], h_prev)  # (GRU 6)-(GRU 10)
        dh_prev = (1 - valid) * dH + dh_z + da @ Wh.T       # (BPTT 6), (GRU 11), (GRU 12)
        return du, dh_prev, {"Wh": h_prev.T @ da,                       # (GRU 11)
                             "b_hn": da[:, 2 * H:].sum(axis=0)}, dh_new  # (GRU 8)
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    rh = cache.rh[t]
    dn = dh_new * (1 - z)                                               # (GRU 6)
    dz = dh_new * (h_prev - n)                                          # (GRU 6)
    dh_z = dh_new * z                                                   # (GRU 6)
    du_n = dn * (1 - n * n)                                             # (GRU 7)
    drh = du_n @ Wh[:, 2 * H:].T                                        # (GRU 9)   (B, H)
    dr = drh * h_prev                                                   # (GRU 9)
    dh_rho = drh * r                                                    # (GRU 9)
    du_r = dr * r * (1 - r)                                             # (GRU 10)
    du_z = dz * z * (1 - z)                                             # (GRU 10)
    da_rz = np.concatenate([du_r, du_z], axis=-1)                       # (GRU 10)  (B, 2H)
    dh_a = da_rz @ Wh[:, :2 * H].T                                      # (GRU 11)
    dh_prev = (1 - valid) * dH + dh_z + dh_a + dh_rho                   # (BPTT 6), (GRU 12)
    dWh = np.concatenate([h_prev.T @ da_rz, rh.T @ du_n], axis=-1)      # (GRU 11), (GRU 9)
    return np.concatenate([du_r, du_z, du_n], axis=-1), dh_prev, {"Wh": dWh}, dh_new


def gru_forward(x, h0, mask, params, *, reset="after"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, 3H), Wh (H, 3H), b (3H) and, for
    reset="after", b_hn (H). Returns hs (T, B, H), hT (B, H), cache."""
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, not {reset!r}")
    if reset == "before" and "b_hn" in params:
        raise ValueError("reset='before' has no b_hn: a recurrent bias of the n block sits "
                         "outside r there and belongs in b's n block")
    p = {name: value.copy() for name, value in params.items()}
    U = x @ p["Wx"] + p["b"]                              # (GRU 1), (BPTT 8)      (T, B, 3H)

    def step(t, u_t, h_prev, m_t):
        return gru_step_forward(u_t, h_prev, m_t, p, reset)

    hs, h, steps = scan_forward_h(step, U, h0, mask)
    cache = GRUCache(x=x, mask=mask, params=p, reset=reset, h=h, **steps)
    return hs, h[-1], cache


def gru_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. Wx, Wh, b (b_hn) and x, h0, as a dict; with state_grads also
    "dh" (T, B, H): the gradient w.r.t. h̃_t, the value step t computed."""
    def step_backward(t, dy, dH):
        return gru_step_backward(dy, dH, t, cache, cache.reset)

    dU, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])   # (GRU 13), (BPTT 8)
    db = dU.sum(axis=(0, 1))                                            # (GRU 13), (BPTT 7)
    grads = {"Wx": dWx, "Wh": acc["Wh"], "b": db}
    if cache.reset == "after":
        grads["b_hn"] = acc["b_hn"]                                     # (GRU 8), (BPTT 7)
    grads.update(x=dx, h0=dh0)
    if state_grads:
        grads["dh"] = dh
    return grads
