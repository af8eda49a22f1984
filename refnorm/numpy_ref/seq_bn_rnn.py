"""SeqBN-RNN, sequence-wise batch norm of the input term (Laurent et al. 2016) of the vanilla RNN,
the reference. Derivation: derivations/seq_bn_rnn.md, derivations/rnn.md,
derivations/batch_norm.md.

    (SEQBN-RNN 1)  U = X Wx,  Û = BN_S(U; γ_x, 0),  S = every valid frame (t, b)      (T, B, H)
    (SEQBN-RNN 2)  z_t = û_t + h_{t-1} Wh + b,  h̃_t = φ(z_t),  then (BPTT 2), (BPTT 3)

The recurrence is the vanilla RNN's, fed with û_t + b instead of x_t Wx + b, so this module
reuses rnn_step_forward / rnn_step_backward.
"""
from dataclasses import dataclass

import numpy as np

from .common import input_projection_backward, scan_backward_h, scan_forward_h
from .norms import batchnorm_backward, batchnorm_forward
from .rnn import NONLINEARITIES, rnn_step_backward, rnn_step_forward


@dataclass
class SeqBNRNNCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid frame
    stat_mask: np.ndarray  # (T, B)    1 = frame enters the batch statistics
    params: dict         # Wx, Wh, b, gamma_x: copies used by forward
    training: bool       # batch statistics (True) or population statistics (False)
    eps: float
    nonlinearity: str    # "tanh" or "relu"
    count: float         # n, frames in the batch statistics (BN 1)
    u_hat: np.ndarray    # (T, B, H)   normalised input term Ū (0 at frames outside them)
    mean_x: np.ndarray   # (H,)        statistics used for U
    var_x: np.ndarray    # (H,)
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T after the masked carry
    h_tilde: np.ndarray  # (T, B, H)   h̃_t = φ(z_t), before the carry


def seq_bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                       nonlinearity="tanh"):
    """x (T, B, D), h0 (B, H), mask (T, B); params Wx (D, H), Wh (H, H), b, gamma_x (H);
    pop = None (training) or a dict with the population statistics mean_x, var_x (H,).
    pad_stats="include" lets padded frames into the statistics. Returns hs (T, B, H),
    hT (B, H), cache."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, not {nonlinearity!r}")
    p = {name: value.copy() for name, value in params.items()}
    T, B, D = x.shape
    H = p["Wx"].shape[1]
    U = x.reshape(T * B, D) @ p["Wx"]                                       # (SEQBN-RNN 1)
    stats = None if training else (pop["mean_x"], pop["var_x"])
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    U_bn, u_hat, mean_x, var_x = batchnorm_forward(U, stat_mask.reshape(T * B), p["gamma_x"],
                                                   None, eps, stats)        # (SEQBN-RNN 1)
    V = U_bn.reshape(T, B, H) + p["b"]                                      # (SEQBN-RNN 2)

    def step(t, v_t, h_prev, m_t):
        return rnn_step_forward(v_t, h_prev, m_t, p, nonlinearity)

    hs, h, steps = scan_forward_h(step, V, h0, mask)
    cache = SeqBNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                          eps=eps, nonlinearity=nonlinearity, count=stat_mask.sum(),
                          u_hat=u_hat.reshape(T, B, H), mean_x=mean_x, var_x=var_x,
                          h=h, **steps)
    return hs, h[-1], cache


def seq_bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, as a dict (with state_grads also
    "dh", as in rnn_backward)."""
    def step_backward(t, dy, dH):
        return rnn_step_backward(dy, dH, t, cache)

    dV, dh0, acc, dh = scan_backward_h(step_backward, dhs, dhT)             # (SEQBN-RNN 3)
    T, B, H = dV.shape
    dU, dgamma_x, _ = batchnorm_backward(dV.reshape(T * B, H), cache.u_hat.reshape(T * B, H),
                                         cache.var_x, cache.stat_mask.reshape(T * B),
                                         cache.params["gamma_x"], cache.eps,
                                         cache.training)                    # (SEQBN-RNN 4)
    dWx, dx = input_projection_backward(cache.x, dU.reshape(T, B, H),
                                        cache.params["Wx"])                 # (SEQBN-RNN 5)
    grads = {"Wx": dWx, "Wh": acc["Wh"], "b": dV.sum(axis=(0, 1)),         # (RNN 5)
             "gamma_x": dgamma_x, "x": dx, "h0": dh0}
    if state_grads:
        grads["dh"] = dh
    return grads
