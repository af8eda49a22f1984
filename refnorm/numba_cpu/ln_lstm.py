"""LN-LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/ln_lstm.py.

Same signatures and LNLSTMCache as the reference. Per step: one (B, H)·(H, 4H) product, the row
statistics of a_t, u_t and c̃_t, and the gates fused into one pass over the batch.
"""

import numpy as np
from numba import njit

from ..numpy_ref.common import input_projection_backward, with_state_grads
from ..numpy_ref.ln_lstm import LNLSTMCache
from .common import JIT, sigmoid, tanh
from .lstm import recurrent_weight_grad, states
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
        for r in range(B):
            # z = a_n + u_n + p["b"]; gates = gates_forward(z)           (LN-LSTM 2), (LSTM 2)
            for k in range(2 * H):                         # i, f = σ(z^i), σ(z^f)
                gates[t, r, k] = sigmoid(gamma_h[k] * a_hat[t, r, k]
                                         + gamma_x[k] * u_hat[t, r, k] + b[k])
            for k in range(2 * H, 3 * H):                  # g = tanh(z^g)
                gates[t, r, k] = tanh(gamma_h[k] * a_hat[t, r, k]
                                      + gamma_x[k] * u_hat[t, r, k] + b[k])
            for k in range(3 * H, G):                      # o = σ(z^o)
                gates[t, r, k] = sigmoid(gamma_h[k] * a_hat[t, r, k]
                                         + gamma_x[k] * u_hat[t, r, k] + b[k])
            for j in range(H):                             # c_new = f * c_prev + i * g (LN-LSTM 3)
                c_new[r, j] = (gates[t, r, H + j] * c[t, r, j]
                               + gates[t, r, j] * gates[t, r, 2 * H + j])
        layernorm_forward(c_new, eps, 1, c_hat[t], mean_c[t], var_c[t])        # (LN-LSTM 4)
        for r in range(B):
            for j in range(H):
                th = tanh(gamma_c[j] * c_hat[t, r, j] + beta_c[j])   # np.tanh(c_ln)
                tanh_c[t, r, j] = th
                c[t + 1, r, j] = c_new[r, j]
                h[t + 1, r, j] = gates[t, r, 3 * H + j] * th         # h_new = o * tanh_c (LN-LSTM 4)
                hs[t, r, j] = h[t + 1, r, j]               # y = m_t * h_new        (BPTT 3)
            if mask[t, r] == 0:                            # carry(...)             (BPTT 2)
                for j in range(H):
                    hs[t, r, j] = 0.0
                    h[t + 1, r, j] = h[t, r, j]
                    c[t + 1, r, j] = c[t, r, j]


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
        for r in range(B):
            valid = mask[t, r]
            for j in range(H):
                o = gates[t, r, 3 * H + j]
                th = tanh_c[t, r, j]
                dh_new = valid * (dhs[t, r, j] + dH[r, j])           # (BPTT 4)
                dh[t, r, j] = dh_new
                dz[r, 3 * H + j] = dh_new * th * o * (1 - o)         # do (LN-LSTM 5), (LSTM 8)
                dc_ln[r, j] = dh_new * o * (1 - th * th)             # (LN-LSTM 5)
        layernorm_backward(dc_ln, c_hat[t], var_c[t], gamma_c, eps, 1, dc_norm,
                           dgamma_c, dbeta_c)                        # (LN-LSTM 6)
        for r in range(B):
            valid = mask[t, r]
            for j in range(H):
                dc[t, r, j] = valid * dC[r, j] + dc_norm[r, j]       # (BPTT 5), (LN-LSTM 6)
            for j in range(H):                # dz = gates_backward(di, df, dg, do)  (LSTM 8)
                i = gates[t, r, j]                                   # di = dc_new * g (LSTM 7)
                dz[r, j] = dc[t, r, j] * gates[t, r, 2 * H + j] * i * (1 - i)
            for j in range(H):
                f = gates[t, r, H + j]                               # df = dc_new * c_prev
                dz[r, H + j] = dc[t, r, j] * c[t, r, j] * f * (1 - f)
            for j in range(H):
                g = gates[t, r, 2 * H + j]                           # dg = dc_new * i
                dz[r, 2 * H + j] = dc[t, r, j] * gates[t, r, j] * (1 - g * g)
            for j in range(H):
                dC[r, j] = (1 - valid) * dC[r, j] + dc[t, r, j] * gates[t, r, H + j]  # (BPTT 6)
        for r in range(B):
            for k in range(G):
                db[k] += dz[r, k]                                    # dz.sum(axis=0) (LN-LSTM 7)
        layernorm_backward(dz, a_hat[t], var_h[t], gamma_h, eps, groups, dA[t], dgamma_h,
                           no_beta)                                  # (LN-LSTM 8)
        layernorm_backward(dz, u_hat[t], var_x[t], gamma_x, eps, groups, dU[t], dgamma_x,
                           no_beta)                                  # (LN-LSTM 8)
        np.dot(dA[t], WhT, dh_rec)                                   # da @ p["Wh"].T
        for r in range(B):
            valid = mask[t, r]
            for j in range(H):
                dH[r, j] = (1 - valid) * dH[r, j] + dh_rec[r, j]     # (BPTT 6), (LN-LSTM 9)
    return dH, dC


def ln_lstm_forward(x, h0, c0, mask, params, *, eps, per_gate=False):
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
    cache = LNLSTMCache(x=x, mask=mask, params=params, eps=eps, groups=groups, h=h, c=c, **out)
    return hs, h[-1], c[-1], cache


def ln_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_backward."""
    p = cache.params
    dt = dhs.dtype
    G, H = p["Wh"].shape[1], p["Wh"].shape[0]
    dA = np.empty(cache.gates.shape, dt)
    dh, dc = np.empty_like(dhs), np.empty_like(dhs)
    dU = np.empty(cache.gates.shape, dt)
    g = {"b": np.zeros(G, dt), "gamma_h": np.zeros(G, dt), "gamma_x": np.zeros(G, dt),
         "gamma_c": np.zeros(H, dt), "beta_c": np.zeros(H, dt)}
    dh0, dc0 = ln_lstm_backward_loop(
        dhs, dhT, dcT, cache.mask, cache.c, cache.a_hat, cache.u_hat, cache.gates, cache.c_hat,
        cache.tanh_c, cache.var_h, cache.var_x, cache.var_c, p["gamma_x"], p["gamma_h"],
        p["gamma_c"], np.ascontiguousarray(p["Wh"].T), dt.type(cache.eps), cache.groups,
        dA, dU, g["b"], g["gamma_x"], g["gamma_h"], g["gamma_c"], g["beta_c"], dh, dc)
    dWx, dx = input_projection_backward(cache.x, dU, p["Wx"])    # (LN-LSTM 10)
    grads = {"Wx": dWx, "Wh": recurrent_weight_grad(cache.h, dA),  # (LN-LSTM 9)
            **g, "x": dx, "h0": dh0, "c0": dc0}
    return with_state_grads(grads, (dh, dc), state_grads)
