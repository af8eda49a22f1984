"""SeqBN-GRU, sequence-wise batch norm of the input term (Laurent et al. 2016) of the GRU, the
reference. Derivation: derivations/seq_bn_gru.md, derivations/gru.md, derivations/batch_norm.md.

    (SEQBN-GRU 1)  U = X Wx,  Û = BN_S(U; γ_x, 0),  S = every valid frame (t, b)     (T, B, 3H)
    (SEQBN-GRU 2)  v_t = û_t + b, then the reset-after GRU step (GRU 1)-(GRU 5) with v_t in
                   place of x_t Wx + b, (BPTT 2), (BPTT 3)

The recurrence is the GRU's, fed with û_t + b instead of x_t Wx + b, so this module reuses
gru_step_forward / gru_step_backward with reset="after".
"""
from dataclasses import dataclass

import numpy as np

from .common import input_projection_backward, scan_backward_h, scan_forward_h
from .gru import gru_step_backward, gru_step_forward
from .norms import batchnorm_backward, batchnorm_forward


@dataclass
class SeqBNGRUCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid frame
    stat_mask: np.ndarray  # (T, B)    1 = frame enters the batch statistics
    params: dict         # Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H), gamma_x (3H): copies used
    training: bool       # batch statistics (True) or population statistics (False)
    eps: float
    count: float         # n, frames in the batch statistics (BN 1)
    u_hat: np.ndarray    # (T, B, 3H)  normalised input term Ū (0 at frames outside them)
    mean_x: np.ndarray   # (3H,)       statistics used for U
    var_x: np.ndarray    # (3H,)
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    gates: np.ndarray    # (T, B, 3H)  activated gates r, z, n
    hn: np.ndarray       # (T, B, H)   q_t = h_{t-1} Wh^n + b_hn, what r multiplies


def seq_bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, 3H), Wh (H, 3H), b (3H), b_hn (H),
    gamma_x (3H); pop = None (training) or a dict with the population statistics mean_x, var_x
    (3H,). pad_stats="include" lets padded frames into the statistics. Returns hs (T, B, H),
    hT (B, H), cache."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    p = {name: value.copy() for name, value in params.items()}
    T, B, D = x.shape
    G = p["Wx"].shape[1]                                                    # 3H
    U = x.reshape(T * B, D) @ p["Wx"]                                       # (SEQBN-GRU 1)
    stats = None if training else (pop["mean_x"], pop["var_x"])
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    U_bn, u_hat, mean_x, var_x = batchnorm_forward(U, stat_mask.reshape(T * B), p["gamma_x"],
                                                   None, eps, stats)        # (SEQBN-GRU 1)
    V = U_bn.reshape(T, B, G) + p["b"]                                      # (SEQBN-GRU 2)

    def step(t, v_t, h_prev, m_t):
        return gru_step_forward(v_t, h_prev, m_t, p, "after")

    hs, h, steps = scan_forward_h(step, V, h0, mask)
    cache = SeqBNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                          eps=eps, count=stat_mask.sum(), u_hat=u_hat.reshape(T, B, G),
                          mean_x=mean_x, var_x=var_x, h=h, **steps)
    return hs, h[-1], cache


def seq_bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, as a dict (with state_grads also
    "dh", as in gru_backward)."""
    def step_backward(t, dy, dH):
        return gru_step_backward(dy, dH, t, cache, "after")

    dV, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)             # (SEQBN-GRU 3)
    T, B, G = dV.shape
    dU, dgamma_x, _ = batchnorm_backward(dV.reshape(T * B, G), cache.u_hat.reshape(T * B, G),
                                         cache.var_x, cache.stat_mask.reshape(T * B),
                                         cache.params["gamma_x"], cache.eps,
                                         cache.training)                    # (SEQBN-GRU 4)
    dWx, dx = input_projection_backward(cache.x, dU.reshape(T, B, G),
                                        cache.params["Wx"])                 # (SEQBN-GRU 5)
    grads = {"Wx": dWx, "Wh": acc["Wh"], "b": dV.sum(axis=(0, 1)),         # (SEQBN-GRU 3)
             "b_hn": acc["b_hn"], "gamma_x": dgamma_x, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
