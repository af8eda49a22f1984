"""Vanilla (Elman) RNN on the Numba CPU backend, mirror of refnorm/numpy_ref/rnn.py.

Same signatures and the same RNNCache as the reference. The whole-sequence products (input
projection, dWx, dWh, dx) are BLAS calls from NumPy, the backward's one per chunk of steps
(common.backward_in_chunks_h); the step loop runs compiled, with one (B, H)·(H, H) product per
step (common.packed_matmul on Wh packed once per sequence) and the rest of the step in short
vectorised loops over each row, each writing one array (the note above common.I).

The step pieces come first: they are the RNN family's, which BN-RNN, SeqBN-RNN and LN-RNN share:
φ in place (RNN 2), the masked carry and output (BPTT 2), (BPTT 3), the normalised cells' z_t of
either term form, and φ's backward with the bias gradient (BPTT 4), (RNN 3), (RNN 4), (RNN 5).
The other modules compile them into their own loops (refnorm_cache_dir() is keyed to every file
of this package, so an edit here compiles those afresh too; a NUMBA_CACHE_DIR of the user's is
not: empty it after an edit).

The nonlinearity is a flag of the loops, relu (True) or tanh (False), tested outside the
loops over a row's H units, so each runs branch-free.
"""
import numpy as np
from numba import njit

from ..numpy_ref.rnn import NONLINEARITIES, RNNCache
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace, recurrent_state_backward, tanh)
from .threads import loop_blocks, run_rows, run_rows_summing


@njit(**JIT)
def activation_forward(h_new, relu):
    """h_new (B, H) holds z_t on entry and h̃_t = φ(z_t) on exit (RNN 2)."""
    zero = h_new.dtype.type(0)  # a literal 0.0 would turn float32 into float64
    B, H = h_new.shape
    for r in range(B):
        if relu:
            for j in range(H):
                h_new[r, j] = max(h_new[r, j], zero)       # np.maximum(z, 0.0)  (RNN 2)
        else:
            for j in range(H):
                h_new[r, j] = tanh(h_new[r, j])            # np.tanh(z)          (RNN 2)


@njit(**JIT)
def state_output_forward(h_new, m, h_prev, h_next, y):
    """The masked carry h_next = m ⊙ h̃ + (1 − m) ⊙ h_prev (BPTT 2), as a selection (padded rows
    keep h_prev bit for bit), and the output y = m ⊙ h̃ (BPTT 3)."""
    B, H = h_new.shape
    for r in range(B):
        if m[r] > 0:                                       # carry(m_t, h_new, h_prev)  (BPTT 2)
            for j in range(H):
                h_next[r, j] = h_new[r, j]
        else:
            for j in range(H):
                h_next[r, j] = h_prev[r, j]
        for j in range(H):
            y[r, j] = m[r] * h_new[r, j]                   # y = m_t[:, None] * h_new  (BPTT 3)


@njit(**JIT)
def separate_terms_forward(u_hat, a_hat, gamma_x, gamma_h, b, relu, h_new):
    """z = γ_x ⊙ û + γ_h ⊙ â + b (BN-RNN 2), (LN-RNN 3) into h_new (B, H), then h̃ = φ(z)
    (RNN 2) in place."""
    B, H = h_new.shape
    for r in range(B):
        for j in range(H):                                 # z = u_bn + a_bn + p["b"]
            h_new[r, j] = gamma_x[j] * u_hat[r, j] + gamma_h[j] * a_hat[r, j] + b[j]
    activation_forward(h_new, relu)                        # (RNN 2)


@njit(**JIT)
def summed_terms_forward(s_hat, gamma_z, b, relu, h_new):
    """z = γ_z ⊙ ŝ + b (BN-RNN 3), (LN-RNN 2) into h_new (B, H), then h̃ = φ(z) (RNN 2)."""
    B, H = h_new.shape
    for r in range(B):
        for j in range(H):                                 # z = s_bn + p["b"]
            h_new[r, j] = gamma_z[j] * s_hat[r, j] + b[j]
    activation_forward(h_new, relu)                        # (RNN 2)


@njit(**JIT)
def add_terms(u, a):
    """a = u_t + a_t in place: the sum s_t of (BN-RNN 3), (LN-RNN 2)."""
    B, H = a.shape
    for r in range(B):
        for j in range(H):
            a[r, j] = u[r, j] + a[r, j]                    # u_t + a   (BN-RNN 3)


@njit(**JIT)
def activation_backward(dy, dH, m, h_new, relu, dh, dz, db):
    """dh̃ = m ⊙ (dy + dH) (BPTT 4) into dh; dz = dh̃ ⊙ φ'(z) (RNN 4), with φ' read from
    h̃ (RNN 3), into dz; db += Σ_b dz (RNN 5), (BN-RNN 4), (LN-RNN 4), unless db is empty.
    All (B, H)."""
    one, zero = dh.dtype.type(1), dh.dtype.type(0)  # literals would turn float32 into float64
    B, H = dh.shape
    for r in range(B):
        valid = m[r]
        for j in range(H):
            dh[r, j] = valid * (dy[r, j] + dH[r, j])       # dh_new = valid * (dy + dH)  (BPTT 4)
        if relu:
            for j in range(H):                             # dz = dh_new * (h_new > 0)  (RNN 3)
                dz[r, j] = dh[r, j] * (one if h_new[r, j] > zero else zero)
        else:
            for j in range(H):                             # dz = dh_new * (1 - h_new ** 2)
                dz[r, j] = dh[r, j] * (one - h_new[r, j] * h_new[r, j])   # (RNN 3), (RNN 4)
        if db.size:                                        # (BN-RNN sums its columns apart)
            for j in range(H):
                db[j] += dz[r, j]                          # db = dz.sum(axis=0)  (RNN 5)


@njit(**JIT)
def rnn_forward_loop(mask, Whp, b, relu, h, hs, h_tilde, r0, r1):
    """h_tilde (T, B, H) arrives holding the input term (x Wx, or SeqBN-RNN's γ_x ⊙ û) and
    leaves holding h̃_t; fills h (T+1, B, H) (h[0] given) and hs. The bias joins here, u_t =
    x_t Wx + b, added in the reference's order (x_t Wx + b) + h_{t-1} Wh. Whp is
    common.pack_panels(Wh). Rows r0 .. r1-1 only (threads.run_rows)."""
    T, B, H = h_tilde.shape
    a = np.empty((r1 - r0, H), h_tilde.dtype)
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp, a, work)           # h_prev @ p["Wh"]   (RNN 1)
        for r in range(r0, r1):
            ar = r - r0                                    # row r's row of a
            for j in range(H):                             # z = u_t + h_prev @ p["Wh"]  (RNN 1)
                h_tilde[t, r, j] = h_tilde[t, r, j] + b[j] + a[ar, j]
        activation_forward(h_tilde[t, r0:r1], relu)        # (RNN 2)
        state_output_forward(h_tilde[t, r0:r1], mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def rnn_backward_loop(t0, t1, dhs, mask, h_tilde, relu, WhTp, dZ, db, dH, dh, r0, r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h): dH (B, H) arrives holding
    dL/dh_{t1} and leaves holding dL/dh_{t0}; fills dZ[t - t0] = dz_t (dZ is (t1 - t0, B, H),
    dU_t = dz_t (RNN 5)), adds Σ_b dz_t to db (H), fills dh = dL/dh̃_t (see
    common.backward_buffers_h). WhTp is common.pack_panels(Wh.T). Rows r0 .. r1-1 only
    (threads.run_rows; db: the sum over those rows)."""
    T, B, H = dhs.shape
    dh_rec = np.empty((r1 - r0, H), dhs.dtype)
    work = product_workspace(r1 - r0, H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0                  # step t's row of dh, or the one row
        s = t - t0                                        # step t's row of dZ
        activation_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], h_tilde[t, r0:r1], relu,
                            dh[k, r0:r1], dZ[s, r0:r1],
                            db)                           # (BPTT 4), (RNN 3), (RNN 4), (RNN 5)
        packed_matmul(dZ[s, r0:r1], WhTp, dh_rec, work)   # dz @ cache.params["Wh"].T  (RNN 5)
        recurrent_state_backward(dH[r0:r1], mask[t, r0:r1], dh_rec)     # (BPTT 6)


def check_nonlinearity(nonlinearity):
    """The reference's refusal of an unknown nonlinearity; True for relu (the loops' flag)."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, not {nonlinearity!r}")
    return nonlinearity == "relu"


def state(h0, T):
    """h (T+1, B, H) with h[0] = h0, for the loops to fill."""
    h = np.empty((T + 1,) + h0.shape, h0.dtype)
    h[0] = h0
    return h


def rnn_forward(x, h0, mask, params, *, nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.rnn.rnn_forward."""
    relu = check_nonlinearity(nonlinearity)
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    T, B, _ = x.shape
    H = p["Wh"].shape[1]
    h = state(h0, T)
    hs = np.empty((T, B, H), x.dtype)
    h_tilde = input_projection(x, p["Wx"])   # x Wx (RNN 1), (BPTT 8): the loop adds b and
    forward_rows("rnn", mask, pack_panels(p["Wh"]), p["b"], relu, h, hs, h_tilde)   # h Wh, φ
    cache = RNNCache(x=x, mask=mask, params=p, nonlinearity=nonlinearity, h=h, h_tilde=h_tilde)
    return hs, h[-1], cache


def rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.rnn.rnn_backward."""
    p = cache.params
    db = np.zeros(p["Wh"].shape[1], dhs.dtype)
    WhTp = pack_panels(p["Wh"].T)

    blocks = loop_blocks("rnn", dhs.dtype, *dhs.shape[1:])     # before any scratch() (planner)

    def loop(t0, t1, gate_grads, dH, dh):
        backward_rows(blocks, t0, t1, dhs, cache, WhTp, gate_grads[0], db, dH, dh)

    # dWx, dx (RNN 6), (BPTT 8) and dWh (RNN 5), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 1, state_grads, loop, {"b": db})


def forward_rows(cell, mask, Whp, b, relu, h, hs, h_tilde):
    """rnn_forward_loop over all rows, in the row blocks the planner chose for `cell` (the RNN,
    or SeqBN-RNN, whose recurrence is the RNN's), each block on a thread (threads.py)."""
    T, B, H = hs.shape
    run_rows(lambda r0, r1: rnn_forward_loop(mask, Whp, b, relu, h, hs, h_tilde, r0, r1),
             loop_blocks(cell, hs.dtype, B, H))


def backward_rows(blocks, t0, t1, dhs, cache, WhTp, dZ, db, dH, dh):
    """rnn_backward_loop over steps t1-1 .. t0 in the row blocks given (loop_blocks), each
    block adding Σ_b dz_t over its rows to a db of its own, added to db at the end."""
    relu = cache.nonlinearity == "relu"
    run_rows_summing(lambda r0, r1, own: rnn_backward_loop(
        t0, t1, dhs, cache.mask, cache.h_tilde, relu, WhTp, dZ, own["b"], dH, dh, r0, r1),
        blocks, {"b": db})
