"""SeqBN-LSTM, sequence-wise batch norm of the input term (Laurent et al. 2016), the reference.
Derivation: derivations/seq_bn_lstm.md, derivations/batch_norm.md, derivations/lstm.md.

    (SEQBN-LSTM 1)  U = X Wx                                   all T·B frames at once  (T, B, 4H)
    (SEQBN-LSTM 2)  Û = BN_S(U; γ_x, 0),  S = every valid frame (t, b): one set of statistics
    (SEQBN-LSTM 3)  z_t = û_t + h_{t-1} Wh + b,  then (LSTM 2)-(LSTM 4), (BPTT 2), (BPTT 3)

The recurrence is the vanilla LSTM's, fed with û_t + b instead of x_t Wx + b, so this module
reuses lstm_step_forward / lstm_step_backward.
"""
from dataclasses import dataclass

import numpy as np

from .common import input_projection_backward, scan_backward, scan_forward, with_state_grads
from .lstm import lstm_step_backward, lstm_step_forward
from .norms import batchnorm_backward, batchnorm_forward


@dataclass
class SeqBNLSTMCache:
    x: np.ndarray        # (T, B, D)   input
    mask: np.ndarray     # (T, B)      1 = valid frame
    stat_mask: np.ndarray  # (T, B)    1 = frame enters the batch statistics
    params: dict         # Wx, Wh, b, gamma_x: copies used by forward
    training: bool       # batch statistics (True) or population statistics (False)
    eps: float
    count: float         # n, frames in the batch statistics (BN 1)
    u_hat: np.ndarray    # (T, B, 4H)  normalised input term (0 at frames outside them)
    mean_x: np.ndarray   # (4H,)       statistics used for U
    var_x: np.ndarray    # (4H,)
    h: np.ndarray        # (T+1, B, H) states h_0 .. h_T
    c: np.ndarray        # (T+1, B, H) states c_0 .. c_T
    gates: np.ndarray    # (T, B, 4H)  activated gates i, f, g, o
    tanh_c: np.ndarray   # (T, B, H)   tanh(c̃_t)


def seq_bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None,
                        pad_stats="exclude"):
    """x (T, B, D), h0, c0 (B, H), mask (T, B); pop = None (training) or a dict with the
    population statistics mean_x, var_x (4H,). pad_stats="include" lets padded frames into
    the statistics. Returns hs (T, B, H), hT, cT (B, H), cache."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    T, B, D = x.shape
    G = params["Wx"].shape[1]
    U = x.reshape(T * B, D) @ params["Wx"]                                  # (SEQBN-LSTM 1)
    stats = None if training else (pop["mean_x"], pop["var_x"])
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    U_bn, u_hat, mean_x, var_x = batchnorm_forward(U, stat_mask.reshape(T * B),
                                                   params["gamma_x"], None, eps,
                                                   stats)                   # (SEQBN-LSTM 2)
    V = U_bn.reshape(T, B, G) + params["b"]                                 # (SEQBN-LSTM 3)

    def step(t, v_t, h_prev, c_prev, m_t):
        return lstm_step_forward(v_t, h_prev, c_prev, m_t, params)

    hs, h, c, steps = scan_forward(step, V, h0, c0, mask)
    cache = SeqBNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params,
                           training=training, eps=eps, count=stat_mask.sum(),
                           u_hat=u_hat.reshape(T, B, G), mean_x=mean_x, var_x=var_x,
                           h=h, c=c, **steps)
    return hs, h[-1], c[-1], cache


def seq_bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Gradients of (BPTT 1) w.r.t. every parameter and x, h0, c0, as a dict (with state_grads
    also "dh", "dc", as in lstm_backward)."""
    def step_backward(t, dy, dH, dC):
        return lstm_step_backward(dy, dH, dC, t, cache)

    dV, dh0, dc0, acc, states = scan_backward(step_backward, dhs, dhT, dcT)  # (SEQBN-LSTM 4)
    T, B, G = dV.shape
    dU, dgamma_x, _ = batchnorm_backward(dV.reshape(T * B, G), cache.u_hat.reshape(T * B, G),
                                         cache.var_x, cache.stat_mask.reshape(T * B),
                                         cache.params["gamma_x"], cache.eps,
                                         cache.training)                    # (SEQBN-LSTM 5)
    dWx, dx = input_projection_backward(cache.x, dU.reshape(T, B, G),
                                        cache.params["Wx"])                 # (SEQBN-LSTM 6)
    grads = {"Wx": dWx, "Wh": acc["Wh"], "b": dV.sum(axis=(0, 1)),      # (LSTM 9)
             "gamma_x": dgamma_x, "x": dx, "h0": dh0, "c0": dc0}
    return with_state_grads(grads, states, state_grads)
