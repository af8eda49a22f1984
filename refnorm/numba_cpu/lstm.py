"""Vanilla LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/lstm.py.

Same signatures and the same LSTMCache as the reference. The whole-sequence products (input
projection, dWx, dWh, dx) are single BLAS calls from NumPy; the step loop runs compiled, with
one (B, H)·(H, 4H) product per step and the rest of the step fused into one pass over (B, H).
"""

import numpy as np
from numba import njit

from ..numpy_ref.common import with_state_grads
from ..numpy_ref.lstm import LSTMCache
from .common import (JIT, input_projection, input_projection_backward, recurrent_weight_grad,
                     sigmoid, split_gates, tanh)


@njit(**JIT)
def lstm_forward_loop(U, mask, Wh, h, c, hs, gates, tanh_c):
    """U (T, B, 4H) = x Wx + b; fills h, c (T+1, B, H) (h[0], c[0] given), hs, gates, tanh_c.

    Per row, short loops over views that start at 0, each writing one array, so they vectorise
    (see common.split_gates)."""
    T, B, G = U.shape
    H = G // 4
    z = np.empty((B, G), U.dtype)
    for t in range(T):
        np.dot(h[t], Wh, z)                                # h_prev @ Wh        (LSTM 1)
        for r in range(B):
            zr, u = z[r], U[t, r]
            for k in range(G):
                zr[k] += u[k]                              # z = u_t + h_prev @ Wh (LSTM 1)
            zi, zf, zg, zo = split_gates(zr)
            i, f, g, o = split_gates(gates[t, r])          # gates = gates_forward(z)  (LSTM 2)
            for j in range(H):
                i[j] = sigmoid(zi[j])
            for j in range(H):
                f[j] = sigmoid(zf[j])
            for j in range(H):
                g[j] = tanh(zg[j])
            for j in range(H):
                o[j] = sigmoid(zo[j])
            c_prev, c_next, h_next = c[t, r], c[t + 1, r], h[t + 1, r]
            th, y = tanh_c[t, r], hs[t, r]
            for j in range(H):
                c_next[j] = f[j] * c_prev[j] + i[j] * g[j]  # c_new = f * c_prev + i * g (LSTM 3)
            for j in range(H):
                th[j] = tanh(c_next[j])                    # tanh_c = np.tanh(c_new)
            for j in range(H):
                h_next[j] = o[j] * th[j]                   # h_new = o * tanh_c         (LSTM 4)
            for j in range(H):
                y[j] = h_next[j]                           # y = m_t[:, None] * h_new   (BPTT 3)
            if mask[t, r] == 0:                            # carry(m_t, new, old)       (BPTT 2)
                h_prev = h[t, r]
                for j in range(H):
                    y[j] = 0.0
                    h_next[j] = h_prev[j]
                    c_next[j] = c_prev[j]


@njit(**JIT)
def lstm_backward_loop(dhs, dhT, dcT, mask, c, gates, tanh_c, WhT, dU, dh, dc):
    """BPTT over t = T-1 .. 0: fills dU (T, B, 4H) = dz_t and dh, dc (T, B, H) = dL/dh̃_t,
    dL/dc̃_t; returns dh0, dc0 (B, H)."""
    one = dhs.dtype.type(1)  # a literal 1 would turn float32 into float64
    T, B, G = dU.shape
    H = G // 4
    dH = dhT.copy()
    dC = dcT.copy()
    dh_rec = np.empty((B, H), dhs.dtype)
    for t in range(T - 1, -1, -1):
        for r in range(B):
            valid = mask[t, r]
            i, f, g, o = split_gates(gates[t, r])
            di, df, dg, do = split_gates(dU[t, r])
            th, c_prev, dy = tanh_c[t, r], c[t, r], dhs[t, r]
            dh_new, dc_new, dHr, dCr = dh[t, r], dc[t, r], dH[r], dC[r]
            for j in range(H):
                dh_new[j] = valid * (dy[j] + dHr[j])                   # (BPTT 4)
            for j in range(H):
                dc_new[j] = (valid * dCr[j]                            # (BPTT 5)
                             + dh_new[j] * o[j] * (one - th[j] * th[j]))   # (LSTM 6)
            # dz = gates_backward(di, df, dg, do)                          (LSTM 7), (LSTM 8)
            for j in range(H):
                di[j] = dc_new[j] * g[j] * i[j] * (one - i[j])         # di = dc_new * g
            for j in range(H):
                df[j] = dc_new[j] * c_prev[j] * f[j] * (one - f[j])    # df = dc_new * c_prev
            for j in range(H):
                dg[j] = dc_new[j] * i[j] * (one - g[j] * g[j])         # dg = dc_new * i
            for j in range(H):
                do[j] = dh_new[j] * th[j] * o[j] * (one - o[j])        # do = dh_new * tanh_c (LSTM 5)
            for j in range(H):
                dCr[j] = (one - valid) * dCr[j] + dc_new[j] * f[j]     # (BPTT 6)
        np.dot(dU[t], WhT, dh_rec)                                     # dz @ Wh.T  (LSTM 9)
        for r in range(B):
            valid = mask[t, r]
            dHr, rec = dH[r], dh_rec[r]
            for j in range(H):
                dHr[j] = (one - valid) * dHr[j] + rec[j]               # (BPTT 6)
    return dH, dC


def states(h0, c0, T):
    """h, c (T+1, B, H) with h[0] = h0, c[0] = c0, for the loops to fill."""
    h = np.empty((T + 1,) + h0.shape, h0.dtype)
    c = np.empty_like(h)
    h[0], c[0] = h0, c0
    return h, c


def lstm_forward(x, h0, c0, mask, params):
    """Same contract as refnorm.numpy_ref.lstm.lstm_forward."""
    T, B, _ = x.shape
    G = params["Wh"].shape[1]
    U = input_projection(x, params["Wx"])                       # (LSTM 1), (BPTT 8)
    U += params["b"]
    h, c = states(h0, c0, T)
    hs = np.empty((T, B, G // 4), x.dtype)
    gates = np.empty((T, B, G), x.dtype)
    tanh_c = np.empty((T, B, G // 4), x.dtype)
    lstm_forward_loop(U, mask, params["Wh"], h, c, hs, gates, tanh_c)
    cache = LSTMCache(x=x, mask=mask, params=params, h=h, c=c, gates=gates, tanh_c=tanh_c)
    return hs, h[-1], c[-1], cache


def lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.lstm.lstm_backward."""
    p = cache.params
    dU = np.empty(cache.gates.shape, dhs.dtype)
    dh, dc = np.empty_like(dhs), np.empty_like(dhs)
    WhT = np.ascontiguousarray(p["Wh"].T)
    dh0, dc0 = lstm_backward_loop(dhs, dhT, dcT, cache.mask, cache.c, cache.gates, cache.tanh_c,
                                  WhT, dU, dh, dc)
    dWx, dx = input_projection_backward(cache.x, dU, p["Wx"])   # (LSTM 10), (BPTT 8)
    grads = {"Wx": dWx, "Wh": recurrent_weight_grad(cache.h, dU), "b": dU.sum(axis=(0, 1)),
             "x": dx, "h0": dh0, "c0": dc0}
    return with_state_grads(grads, (dh, dc), state_grads)
