"""LN-LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/ln_lstm.py.

Same signatures and LNLSTMCache as the reference. Per step: one (B, H)·(H, 4H) product, the row
statistics of a_t, u_t and c̃_t, and the gates fused into one pass over the batch.
"""

import numpy as np
from numba import njit

from ..numpy_ref.ln_lstm import LNLSTMCache
from .common import (
    JIT,
    normalized_backward_buffers,
    normalized_backward_grads,
    normalized_gates_backward,
    normalized_gates_forward,
    normalized_output_backward,
    normalized_output_forward,
    recurrent_state_backward,
)
from .lstm import states
from .norms import layernorm_backward, layernorm_forward


@njit(**JIT)
def ln_lstm_forward_loop(U, mask, Wh, b, gamma_x, gamma_h, gamma_c, beta_c, eps, groups,
                         h, c, hs, a_hat, u_hat, gates, c_hat, tanh_c,
                         mean_h, var_h, mean_x, var_x, mean_c, var_c):
    T, B, G = U.shape
    H = G // 4
    a = np.empty((B, G), U.dtype)
    c_new = np.empty((B, H), U.dtype)
    for t in range(T):
        np.dot(h[t], Wh, a)                                # a = h_prev @ p["Wh"]  (LN-LSTM 1)
        layernorm_forward(a, eps, groups, a_hat[t], mean_h[t], var_h[t])
        layernorm_forward(U[t], eps, groups, u_hat[t], mean_x[t], var_x[t])
        normalized_gates_forward(a_hat[t], u_hat[t], gamma_h, gamma_x, b, c[t], gates[t],
                                 c_new)                            # (LN-LSTM 2), (LN-LSTM 3)
        layernorm_forward(c_new, eps, 1, c_hat[t], mean_c[t], var_c[t])        # (LN-LSTM 4)
        normalized_output_forward(c_hat[t], gamma_c, beta_c, gates[t], c_new, mask[t], h[t],
                                  c[t], h[t + 1], c[t + 1], hs[t], tanh_c[t])   # (LN-LSTM 4)


@njit(**JIT)
def ln_lstm_backward_loop(dhs, dhT, dcT, mask, c, a_hat, u_hat, gates, c_hat, tanh_c,
                          var_h, var_x, var_c, gamma_x, gamma_h, gamma_c, WhT, eps, groups,
                          dA, dU, db, dgamma_x, dgamma_h, dgamma_c, dbeta_c, dh, dc):
    """BPTT over t = T-1 .. 0: fills dA = da_t and dU = du_t (T, B, 4H), adds to the gain and
    bias gradients; fills dh, dc (T, B, H) = dL/dh̃_t, dL/dc̃_t; returns dh0, dc0."""
    T, B, G = dU.shape
    H = G // 4
    dH = dhT.copy()
    dC = dcT.copy()
    dz = np.empty((B, G), dhs.dtype)
    dc_ln = np.empty((B, H), dhs.dtype)
    dc_norm = np.empty((B, H), dhs.dtype)
    dh_rec = np.empty((B, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    for t in range(T - 1, -1, -1):
        normalized_output_backward(dhs[t], dH, mask[t], gates[t], tanh_c[t], dh[t], dz,
                                   dc_ln)                          # (BPTT 4), (LN-LSTM 5)
        layernorm_backward(dc_ln, c_hat[t], var_c[t], gamma_c, eps, 1, dc_norm,
                           dgamma_c, dbeta_c)                        # (LN-LSTM 6)
        normalized_gates_backward(dC, dc_norm, mask[t], gates[t], c[t], dc[t], dz,
                                  db)                              # (LN-LSTM 6), (LN-LSTM 7)
        layernorm_backward(dz, a_hat[t], var_h[t], gamma_h, eps, groups, dA[t], dgamma_h,
                           no_beta)                                  # (LN-LSTM 8)
        layernorm_backward(dz, u_hat[t], var_x[t], gamma_x, eps, groups, dU[t], dgamma_x,
                           no_beta)                                  # (LN-LSTM 8)
        np.dot(dA[t], WhT, dh_rec)                                   # da @ p["Wh"].T
        recurrent_state_backward(dH, mask[t], dh_rec)               # (LN-LSTM 9)
    return dH, dC


def ln_lstm_forward(x, h0, c0, mask, params, *, eps, per_gate=False, carry="raw",
                    terms="separate"):
    if carry != "raw" or terms != "separate":
        raise NotImplementedError("LNLSTM variants are not on this backend yet")
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_forward."""
    p = params
    groups = 4 if per_gate else 1
    T, B, _ = x.shape
    G = p["Wh"].shape[1]
    H = G // 4
    dt = x.dtype
    U = np.ascontiguousarray(x @ p["Wx"])                        # (LN-LSTM 1), (BPTT 8)
    h, c = states(h0, c0, T)
    out = {"hs": np.empty((T, B, H), dt), "a_hat": np.empty((T, B, G), dt),
           "u_hat": np.empty((T, B, G), dt), "gates": np.empty((T, B, G), dt),
           "c_hat": np.empty((T, B, H), dt), "tanh_c": np.empty((T, B, H), dt),
           "mean_h": np.empty((T, B, groups), dt), "var_h": np.empty((T, B, groups), dt),
           "mean_x": np.empty((T, B, groups), dt), "var_x": np.empty((T, B, groups), dt),
           "mean_c": np.empty((T, B, 1), dt), "var_c": np.empty((T, B, 1), dt)}
    ln_lstm_forward_loop(U, mask, p["Wh"], p["b"], p["gamma_x"], p["gamma_h"], p["gamma_c"],
                         p["beta_c"], dt.type(eps), groups, h, c, out["hs"], out["a_hat"],
                         out["u_hat"], out["gates"], out["c_hat"], out["tanh_c"],
                         out["mean_h"], out["var_h"], out["mean_x"], out["var_x"],
                         out["mean_c"], out["var_c"])
    hs = out.pop("hs")
    cache = LNLSTMCache(x=x, mask=mask, params=params, eps=eps, groups=groups, carry=carry, terms=terms, h=h, c=c, **out)
    return hs, h[-1], c[-1], cache


def ln_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_backward."""
    p = cache.params
    dA, dU, dh, dc, g = normalized_backward_buffers(dhs, cache)
    dh0, dc0 = ln_lstm_backward_loop(
        dhs, dhT, dcT, cache.mask, cache.c, cache.a_hat, cache.u_hat, cache.gates, cache.c_hat,
        cache.tanh_c, cache.var_h, cache.var_x, cache.var_c, p["gamma_x"], p["gamma_h"],
        p["gamma_c"], np.ascontiguousarray(p["Wh"].T), dhs.dtype.type(cache.eps), cache.groups,
        dA, dU, g["b"], g["gamma_x"], g["gamma_h"], g["gamma_c"], g["beta_c"], dh, dc)
    return normalized_backward_grads(cache, dA, dU, g, dh0, dc0, dh, dc, state_grads)
