"""Vanilla LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/lstm.py.

Same signatures and the same LSTMCache as the reference. The whole-sequence products (input
projection, dWx, dWh, dx) are BLAS calls from NumPy, the backward's one per chunk of steps
(common.backward_in_chunks); the step loop runs compiled, with
one (B, H)·(H, 4H) product per step and the rest of the step in short vectorised loops over
each row (the note above common.I says what keeps them vectorised).
"""

import numpy as np
from numba import njit

from ..numpy_ref.lstm import LSTMCache
from .common import (JIT, input_projection, backward_in_chunks, pack_panels, packed_matmul,
                     product_workspace, sigmoid, tanh, I, F, G_, O)
from .threads import loop_blocks, run_rows, run_rows_summing


@njit(**JIT)
def lstm_forward_loop(mask, Whp, b, h, c, hs, gates, tanh_c, r0, r1):
    """gates (T, B, 4H) arrives holding x Wx and leaves holding the gates, row by row; fills
    h, c (T+1, B, H) (h[0], c[0] given), hs, tanh_c. Rows r0 .. r1-1 only (threads.run_rows
    runs blocks of rows side by side; no row reads another).

    The bias joins here, u_t = x_t Wx + b, added in the reference's order (x_t Wx + b) + h Wh:
    adding it to the whole (T, B, 4H) projection first would be one more pass over it. The gate
    blocks are indexed by gate, gates4[t, r, F, j] (see common.I), and every short loop writes
    one array (two at most), so each vectorises. Whp is common.pack_panels(Wh): the step's
    product is common.packed_matmul on it, as in every step loop of this backend."""
    T, B, G = gates.shape
    H = G // 4
    z = np.empty((r1 - r0, G), gates.dtype)
    work = product_workspace(r1 - r0, H, Whp)
    z4, gates4, b4 = z.reshape((r1 - r0, 4, H)), gates.reshape((T, B, 4, H)), b.reshape((4, H))
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp, z, work)           # h_prev @ Wh        (LSTM 1)
        for r in range(r0, r1):
            zr = r - r0                                    # row r's row of z
            # z = u_t + h_prev @ Wh (LSTM 1); gates = gates_forward(z) (LSTM 2), in place:
            # i = σ(z^i), f = σ(z^f), g = tanh(z^g), o = σ(z^o)
            for j in range(H):
                gates4[t, r, I, j] = sigmoid(gates4[t, r, I, j] + b4[I, j] + z4[zr, I, j])    # i
            for j in range(H):
                gates4[t, r, F, j] = sigmoid(gates4[t, r, F, j] + b4[F, j] + z4[zr, F, j])    # f
            for j in range(H):
                gates4[t, r, G_, j] = tanh(gates4[t, r, G_, j] + b4[G_, j] + z4[zr, G_, j])   # g
            for j in range(H):
                gates4[t, r, O, j] = sigmoid(gates4[t, r, O, j] + b4[O, j] + z4[zr, O, j])    # o
            for j in range(H):                             # c_new = f * c_prev + i * g (LSTM 3)
                c[t + 1, r, j] = (gates4[t, r, F, j] * c[t, r, j]
                                  + gates4[t, r, I, j] * gates4[t, r, G_, j])
            for j in range(H):
                tanh_c[t, r, j] = tanh(c[t + 1, r, j])     # tanh_c = np.tanh(c_new)
            for j in range(H):                             # h_new = o * tanh_c         (LSTM 4)
                h[t + 1, r, j] = gates4[t, r, O, j] * tanh_c[t, r, j]
                hs[t, r, j] = h[t + 1, r, j]               # y = m_t[:, None] * h_new   (BPTT 3)
            if mask[t, r] == 0:                            # carry(m_t, new, old)       (BPTT 2)
                for j in range(H):
                    hs[t, r, j] = 0.0
                    h[t + 1, r, j] = h[t, r, j]
                    c[t + 1, r, j] = c[t, r, j]


@njit(**JIT)
def lstm_backward_loop(t0, t1, dhs, mask, c, gates, tanh_c, WhTp, dU, db, dH, dC, dh, dc, r0,
                       r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks): dH, dC (B, H) arrive holding
    dL/dh_{t1}, dL/dc_{t1} and leave holding dL/dh_{t0}, dL/dc_{t0}; fills dU[t - t0] = dz_t
    (dU is (t1 - t0, B, 4H)), adds Σ_b dz_t to db (4H), fills dh, dc = dL/dh̃_t, dL/dc̃_t
    (see common.backward_buffers). WhTp is common.pack_panels(Wh.T). Rows r0 .. r1-1 only,
    as the forward loop (db: the sum over those rows)."""
    one = dhs.dtype.type(1)  # a literal 1 would turn float32 into float64
    T, B, H = dhs.shape
    G = 4 * H
    gates4, dU4 = gates.reshape((T, B, 4, H)), dU.reshape((t1 - t0, B, 4, H))
    dh_rec = np.empty((r1 - r0, H), dhs.dtype)
    work = product_workspace(r1 - r0, G, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0                  # step t's row of dh, dc, or the one row
        s = t - t0                                        # step t's row of dU
        for r in range(r0, r1):
            valid = mask[t, r]
            for j in range(H):
                dh[k, r, j] = valid * (dhs[t, r, j] + dH[r, j])          # (BPTT 4)
            for j in range(H):                                           # (BPTT 5), (LSTM 6)
                o, th = gates4[t, r, O, j], tanh_c[t, r, j]
                dc[k, r, j] = valid * dC[r, j] + dh[k, r, j] * o * (one - th * th)
            # dz = gates_backward(di, df, dg, do)                          (LSTM 7), (LSTM 8)
            for j in range(H):
                i, g = gates4[t, r, I, j], gates4[t, r, G_, j]
                dU4[s, r, I, j] = dc[k, r, j] * g * i * (one - i)       # di = dc_new * g
            for j in range(H):
                f = gates4[t, r, F, j]
                dU4[s, r, F, j] = dc[k, r, j] * c[t, r, j] * f * (one - f)   # df = dc_new * c_prev
            for j in range(H):
                i, g = gates4[t, r, I, j], gates4[t, r, G_, j]
                dU4[s, r, G_, j] = dc[k, r, j] * i * (one - g * g)      # dg = dc_new * i
            for j in range(H):
                o = gates4[t, r, O, j]                                  # do = dh_new * tanh_c
                dU4[s, r, O, j] = dh[k, r, j] * tanh_c[t, r, j] * o * (one - o)   # (LSTM 5)
            for j in range(H):
                dC[r, j] = (one - valid) * dC[r, j] + dc[k, r, j] * gates4[t, r, F, j]  # (BPTT 6)
            for q in range(G):
                db[q] += dU[s, r, q]                     # db = dU.sum(axis=(0, 1)) (LSTM 9)
        packed_matmul(dU[s, r0:r1], WhTp, dh_rec, work)                # dz @ Wh.T  (LSTM 9)
        for r in range(r0, r1):
            valid = mask[t, r]
            for j in range(H):
                dH[r, j] = (one - valid) * dH[r, j] + dh_rec[r - r0, j]  # (BPTT 6)


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
    h, c = states(h0, c0, T)
    hs = np.empty((T, B, G // 4), x.dtype)
    gates = input_projection(x, params["Wx"])   # x Wx (LSTM 1), (BPTT 8): the loop adds b and
    tanh_c = np.empty((T, B, G // 4), x.dtype)  # turns each row into its gates, in place
    forward_rows("lstm", mask, pack_panels(params["Wh"]), params["b"], h, c, hs, gates, tanh_c)
    cache = LSTMCache(x=x, mask=mask, params=params, h=h, c=c, gates=gates, tanh_c=tanh_c)
    return hs, h[-1], c[-1], cache


def lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.lstm.lstm_backward."""
    p = cache.params
    db = np.zeros(p["Wh"].shape[1], dhs.dtype)
    WhTp = pack_panels(p["Wh"].T)

    blocks = loop_blocks("lstm", dhs.dtype, *dhs.shape[1:])    # before any scratch() (planner)

    def loop(t0, t1, gate_grads, dH, dC, dh, dc):
        backward_rows(blocks, t0, t1, dhs, cache, WhTp, gate_grads[0], db, dH, dC, dh, dc)

    # dWx, dx (LSTM 10), (BPTT 8) and dWh (LSTM 9), chunk by chunk
    return backward_in_chunks(dhs, dhT, dcT, cache, 1, state_grads, loop, {"b": db})


def forward_rows(cell, mask, Whp, b, h, c, hs, gates, tanh_c):
    """lstm_forward_loop over all rows, in the row blocks the planner chose for `cell` (the
    LSTM, or SeqBN-LSTM, whose recurrence is the LSTM's), each block on a thread (threads.py)."""
    T, B, H = hs.shape
    run_rows(lambda r0, r1: lstm_forward_loop(mask, Whp, b, h, c, hs, gates, tanh_c, r0, r1),
             loop_blocks(cell, hs.dtype, B, H))


def backward_rows(blocks, t0, t1, dhs, cache, WhTp, dU, db, dH, dC, dh, dc):
    """lstm_backward_loop over steps t1-1 .. t0 in the row blocks given (loop_blocks), each
    block adding Σ_b dz_t over its rows to a db of its own, added to db at the end."""
    run_rows_summing(lambda r0, r1, own: lstm_backward_loop(
        t0, t1, dhs, cache.mask, cache.c, cache.gates, cache.tanh_c, WhTp, dU, own["b"], dH, dC,
        dh, dc, r0, r1), blocks, {"b": db})
