"""GRU on the Numba CPU backend, in both reset forms, mirror of refnorm/numpy_ref/gru.py.

Same signatures and the same GRUCache as the reference. The whole-sequence products (input
projection, dWx, dWh, dx) are BLAS calls from NumPy, the backward's one per chunk of steps
(common.backward_in_chunks_h); the step loop runs compiled, with the step's products on weights
packed once per sequence (common.packed_matmul) and the rest of the step in short vectorised
loops over each row, each writing one array (the note above common.I). The gate blocks of the
3H axis are indexed through a (B, 3, H) reshape, g3[row, N, j], never at an offset.

    reset="after"   one product per step each way: a_t = h_{t-1} Wh (B, 3H) forward,
                    dh_{t-1}^a = da_t Whᵀ backward;
    reset="before"  two: a_t^{rz} = h_{t-1} Wh^{rz} (B, 2H), then ρ_t Wh^n (B, H), which has to
                    wait for r, forward; dρ_t = du_t^n (Wh^n)ᵀ and du_t^{rz} (Wh^{rz})ᵀ backward.

The step pieces come first: they are the GRU family's, which BN-GRU, SeqBN-GRU and LN-GRU share:
the reset-after gate algebra (the book's gru_gates_forward, gru_gates_backward, on the input side
v_t and the recurrent side w_t), its state backward (GRU 12), and the normalised cells' v_t, w_t.
The other modules compile them into their own loops (refnorm_cache_dir() is keyed to every file
of this package, so an edit here compiles those afresh too; a NUMBA_CACHE_DIR of the user's is
not: empty it after an edit). The input side arrives with the bias in it, U = X Wx + b, added
by NumPy before the loop as the book adds it (GRU 1), so the gate algebra is the same function
for the plain and the normalised cells.
"""
import numpy as np
from numba import njit

from ..numpy_ref.gru import RESETS, GRUCache
from .common import (JIT, add_input_grads, backward_buffers_h, backward_in_chunks_h,
                     chunk_bounds, input_projection, pack_panels, packed_matmul,
                     product_workspace, sigmoid, tanh)
from .rnn import state, state_output_forward
from .threads import loop_blocks, matmul, run_rows, run_rows_summing

R, Z, N = 0, 1, 2   # the gate blocks of the 3H axis and of the gates, in the book's order r, z, n


# -- the step pieces, on (B, ·) arrays of one step -----------------------------------------------
@njit(**JIT)
def reset_update_forward(gates, w):
    """gates (B, 3H) holds the input side v_t on entry; its r and z blocks leave holding
    r = σ(v^r + w^r), z = σ(v^z + w^z) (GRU 2). w (B, 2H) or (B, 3H) is the recurrent side, of
    which the r and z blocks are read."""
    B, G = gates.shape
    H = G // 3
    g3 = gates.reshape((B, 3, H))
    w3 = w.reshape((B, w.shape[1] // H, H))
    for row in range(B):
        for j in range(H):                                 # r = sigmoid(v[:, :H] + w[:, :H])
            g3[row, R, j] = sigmoid(g3[row, R, j] + w3[row, R, j])
        for j in range(H):                                 # z = sigmoid(v[:, H:2H] + w[:, H:2H])
            g3[row, Z, j] = sigmoid(g3[row, Z, j] + w3[row, Z, j])


@njit(**JIT)
def candidate_forward(gates, w, b_hn, hn):
    """Reset after (GRU 3): hn = q_t = w^n + b_hn (B, H), then n = tanh(v^n + r ⊙ q_t) into the
    n block of gates, which holds v^n on entry."""
    B, H = hn.shape
    g3 = gates.reshape((B, 3, H))
    w3 = w.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):
            hn[row, j] = w3[row, N, j] + b_hn[j]           # q = w[:, 2 * H:] + b_hn  (GRU 3)
        for j in range(H):                                 # n = np.tanh(v[:, 2 * H:] + r * q)
            g3[row, N, j] = tanh(g3[row, N, j] + g3[row, R, j] * hn[row, j])


@njit(**JIT)
def interpolate_forward(gates, h_prev, h_new):
    """h̃_t = (1 − z) ⊙ n + z ⊙ h_{t−1} (GRU 5) into h_new (B, H)."""
    one = h_new.dtype.type(1)  # a literal 1 would turn float32 into float64
    B, H = h_new.shape
    g3 = gates.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):                                 # h_new = (1 - z) * n + z * h_prev
            z = g3[row, Z, j]
            h_new[row, j] = (one - z) * g3[row, N, j] + z * h_prev[row, j]


@njit(**JIT)
def gru_gates_forward(gates, w, h_prev, b_hn, hn, h_new):
    """The reset-after gate algebra, the book's gru_gates_forward: gates (B, 3H) holds the input
    side v_t on entry and the gates [r | z | n] on exit, w (B, 3H) the recurrent side; fills
    hn = q_t (B, H) and h_new = h̃_t (B, H). (GRU 2), (GRU 3), (GRU 5); with v_t, w_t normalised,
    (BN-GRU 3), (LN-GRU 3)."""
    reset_update_forward(gates, w)                         # r, z  (GRU 2)
    candidate_forward(gates, w, b_hn, hn)                  # q, n  (GRU 3)
    interpolate_forward(gates, h_prev, h_new)              # h_new = (1 - z) * n + z * h_prev


@njit(**JIT)
def reset_state_forward(gates, h_prev, rh):
    """Reset before: ρ_t = r ⊙ h_{t−1} (GRU 4) into rh (B, H)."""
    B, H = rh.shape
    g3 = gates.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):
            rh[row, j] = g3[row, R, j] * h_prev[row, j]    # rh = r * h_prev  (GRU 4)


@njit(**JIT)
def candidate_before_forward(gates, an):
    """Reset before: n = tanh(v^n + ρ_t Wh^n) (GRU 4) into the n block of gates (v^n on entry),
    an = ρ_t Wh^n (B, H) given."""
    B, H = an.shape
    g3 = gates.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):                                 # n = np.tanh(v[:, 2H:] + rh @ Wh^n)
            g3[row, N, j] = tanh(g3[row, N, j] + an[row, j])


@njit(**JIT)
def normalized_sides_forward(u_hat, a_hat, gamma_x, gamma_h, b, v, w):
    """The normalised sides v = γ_x ⊙ û + b into v and w = γ_h ⊙ â into w, all (B, 3H):
    (BN-GRU 2), (LN-GRU 2). w may be the array â was normalised from."""
    B, G = v.shape
    for row in range(B):
        for k in range(G):                                 # v = u_bn + p["b"]  (BN-GRU 2)
            v[row, k] = gamma_x[k] * u_hat[row, k] + b[k]
    for row in range(B):
        for k in range(G):                                 # w = gamma_h * a_hat  (BN-GRU 2)
            w[row, k] = gamma_h[k] * a_hat[row, k]


@njit(**JIT)
def update_backward(dy, dH, m, gates, h_prev, dh, dv):
    """dh̃ = m ⊙ (dy + dH) (BPTT 4) into dh (B, H); the n and z blocks of dv (B, 3H), the gradient
    of the input side: du^n = dh̃ ⊙ (1 − z) ⊙ (1 − n²) (GRU 6), (GRU 7) and
    du^z = dh̃ ⊙ (h_{t−1} − n) ⊙ z (1 − z) (GRU 6), (GRU 10). Both reset forms."""
    one = dh.dtype.type(1)  # a literal 1 would turn float32 into float64
    B, H = dh.shape
    g3 = gates.reshape((B, 3, H))
    dv3 = dv.reshape((B, 3, H))
    for row in range(B):
        valid = m[row]
        for j in range(H):
            dh[row, j] = valid * (dy[row, j] + dH[row, j])   # dh_new = valid * (dy + dH)
        for j in range(H):          # dv_n = dn * (1 - n * n), dn = dh_new * (1 - z)  (GRU 7)
            n = g3[row, N, j]
            dv3[row, N, j] = dh[row, j] * (one - g3[row, Z, j]) * (one - n * n)
        for j in range(H):          # dv_z = dz * z * (1 - z), dz = dh_new * (h_prev - n)
            z = g3[row, Z, j]
            dv3[row, Z, j] = dh[row, j] * (h_prev[row, j] - g3[row, N, j]) * z * (one - z)


@njit(**JIT)
def reset_after_backward(gates, hn, dv, dw, db_hn):
    """Reset after, dv's n and z blocks given: dr = du^n ⊙ q_t, du^r = dr ⊙ r (1 − r) into dv's
    r block (GRU 8), (GRU 10); dw = [du^r | du^z | dq_t], dq_t = du^n ⊙ r, the gradient of the
    recurrent side (GRU 10), (GRU 8); db_hn += Σ_b dq_t (GRU 8), unless db_hn is empty."""
    one = dv.dtype.type(1)
    B, H = hn.shape
    g3 = gates.reshape((B, 3, H))
    dv3, dw3 = dv.reshape((B, 3, H)), dw.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):          # dv_r = dr * r * (1 - r), dr = dv_n * q  (GRU 8), (GRU 10)
            r = g3[row, R, j]
            dv3[row, R, j] = dv3[row, N, j] * hn[row, j] * r * (one - r)
        for k in range(2 * H):
            dw[row, k] = dv[row, k]                        # dw[:, :2H] = [dv_r, dv_z]  (GRU 10)
        for j in range(H):
            dw3[row, N, j] = dv3[row, N, j] * g3[row, R, j]   # dq = dv_n * r  (GRU 8)
    if db_hn.size:                                         # (BN-GRU sums its columns apart)
        for row in range(B):
            for j in range(H):
                db_hn[j] += dw3[row, N, j]                 # db_hn = dw[:, 2H:].sum(axis=0)


@njit(**JIT)
def add_bias_grad(dv, db):
    """db += Σ_b dv, the input side's bias (GRU 13), (BN-GRU 4), (LN-GRU 4), (SEQBN-GRU 3),
    unless db is empty."""
    B, G = dv.shape
    if db.size:                                            # (BN-GRU sums its columns apart)
        for row in range(B):
            for k in range(G):
                db[k] += dv[row, k]                        # db = dv.sum(axis=0)


@njit(**JIT)
def gru_gates_backward(dy, dH, m, gates, hn, h_prev, dh, dv, dw, db, db_hn):
    """(BPTT 4) into dh, then the book's gru_gates_backward: dv, dw (B, 3H), the gradients of the
    input and the recurrent side (GRU 6)-(GRU 10), (BN-GRU 4), (LN-GRU 4); with the bias sums
    db += Σ_b dv, db_hn += Σ_b dw^n (each skipped when its array is empty)."""
    update_backward(dy, dH, m, gates, h_prev, dh, dv)      # dh_new; dv_n, dv_z  (GRU 6), (GRU 7)
    reset_after_backward(gates, hn, dv, dw, db_hn)         # dv_r, dw = [dv_r, dv_z, dq]  (GRU 8)
    add_bias_grad(dv, db)                                  # db = dv.sum(axis=0)


@njit(**JIT)
def interpolated_state_backward(dH, m, dh, gates, dh_rec):
    """dH_{t−1} = (1 − m) ⊙ dH + z ⊙ dh̃ + da Whᵀ (GRU 12), (BPTT 6), (BN-GRU 6), (LN-GRU 6),
    with dh_rec = da Whᵀ already computed, in place of dH (B, H)."""
    one = dH.dtype.type(1)
    B, H = dH.shape
    g3 = gates.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):          # dh_prev = (1 - valid) * dH + dh_z + da @ Wh.T, dh_z = dh * z
            dH[row, j] = (one - m[row]) * dH[row, j] + dh[row, j] * g3[row, Z, j] + dh_rec[row, j]


@njit(**JIT)
def reset_before_backward(gates, h_prev, drh, dv):
    """Reset before, drh = dρ_t = du^n (Wh^n)ᵀ (B, H) given: dr = dρ_t ⊙ h_{t−1} (GRU 9),
    du^r = dr ⊙ r (1 − r) (GRU 10) into dv's r block."""
    one = dv.dtype.type(1)
    B, H = drh.shape
    g3 = gates.reshape((B, 3, H))
    dv3 = dv.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):          # du_r = dr * r * (1 - r), dr = drh * h_prev  (GRU 9), (GRU 10)
            r = g3[row, R, j]
            dv3[row, R, j] = drh[row, j] * h_prev[row, j] * r * (one - r)


@njit(**JIT)
def reset_before_state_backward(dH, m, dh, gates, dh_a, drh):
    """Reset before: dH_{t−1} = (1 − m) ⊙ dH + z ⊙ dh̃ + du^{rz} (Wh^{rz})ᵀ + r ⊙ dρ_t (GRU 12),
    (BPTT 6), with dh_a = du^{rz} (Wh^{rz})ᵀ and drh = dρ_t given, in place of dH (B, H)."""
    one = dH.dtype.type(1)
    B, H = dH.shape
    g3 = gates.reshape((B, 3, H))
    for row in range(B):
        for j in range(H):          # dh_prev = (1 - valid) * dH + dh_z + dh_a + dh_rho
            dH[row, j] = ((one - m[row]) * dH[row, j] + dh[row, j] * g3[row, Z, j] + dh_a[row, j]
                          + drh[row, j] * g3[row, R, j])


# -- the step loops -------------------------------------------------------------------------------
@njit(**JIT)
def gru_forward_loop(mask, Whp, b_hn, h, hs, gates, hn, r0, r1):
    """Reset after. gates (T, B, 3H) arrives holding the input side v_t (x_t Wx + b, or
    SeqBN-GRU's γ_x ⊙ û_t + b) and leaves holding the gates [r | z | n]; fills h (T+1, B, H)
    (h[0] given), hs and hn = q_t (T, B, H). Whp is common.pack_panels(Wh). Rows r0 .. r1-1
    only (threads.run_rows)."""
    T, B, G = gates.shape
    H = G // 3
    a = np.empty((r1 - r0, G), gates.dtype)
    h_new = np.empty((r1 - r0, H), gates.dtype)
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ Wh  (GRU 1)
        gru_gates_forward(gates[t, r0:r1], a, h[t, r0:r1], b_hn, hn[t, r0:r1],
                          h_new)                           # (GRU 2), (GRU 3), (GRU 5)
        state_output_forward(h_new, mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def gru_backward_loop(t0, t1, dhs, mask, h, gates, hn, WhTp, dV, dA, db, db_hn, dH, dh, r0,
                      r1):
    """Reset after, BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h): dH (B, H) arrives
    holding dL/dh_{t1} and leaves holding dL/dh_{t0}; fills dV[t - t0] = dv_t, the gradient of
    the input side (dU_t, or SeqBN-GRU's dV_t), and dA[t - t0] = da_t (both (t1 - t0, B, 3H)),
    adds to db (3H) and db_hn (H), fills dh = dL/dh̃_t (common.backward_buffers_h). WhTp is
    common.pack_panels(Wh.T). Rows r0 .. r1-1 only (threads.run_rows; db, db_hn: the sums over
    those rows)."""
    T, B, H = dhs.shape
    dh_rec = np.empty((r1 - r0, H), dhs.dtype)
    work = product_workspace(r1 - r0, 3 * H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dV, dA
        gru_gates_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], gates[t, r0:r1],
                           hn[t, r0:r1], h[t, r0:r1], dh[k, r0:r1], dV[q, r0:r1], dA[q, r0:r1],
                           db, db_hn)                      # (BPTT 4), (GRU 6)-(GRU 10)
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)    # da @ Wh.T  (GRU 11)
        interpolated_state_backward(dH[r0:r1], mask[t, r0:r1], dh[k, r0:r1], gates[t, r0:r1],
                                    dh_rec)                # (GRU 12), (BPTT 6)


@njit(**JIT)
def gru_reset_before_forward_loop(mask, Whp_rz, Whp_n, h, hs, gates, rh, r0, r1):
    """Reset before. gates (T, B, 3H) arrives holding x_t Wx + b and leaves holding the gates;
    fills h (T+1, B, H) (h[0] given), hs and rh = ρ_t (T, B, H). Whp_rz, Whp_n are
    common.pack_panels of Wh[:, :2H] and Wh[:, 2H:]. Rows r0 .. r1-1 only (threads.run_rows)."""
    T, B, G = gates.shape
    H = G // 3
    a_rz = np.empty((r1 - r0, 2 * H), gates.dtype)
    an = np.empty((r1 - r0, H), gates.dtype)
    h_new = np.empty((r1 - r0, H), gates.dtype)
    work = product_workspace(r1 - r0, H, Whp_rz)
    work_n = product_workspace(r1 - r0, H, Whp_n)          # its panels may be another width
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp_rz, a_rz, work)     # a_rz = h_prev @ Wh[:, :2 * H]  (GRU 1)
        reset_update_forward(gates[t, r0:r1], a_rz)        # r, z  (GRU 2)
        reset_state_forward(gates[t, r0:r1], h[t, r0:r1], rh[t, r0:r1])  # rh = r * h_prev  (GRU 4)
        packed_matmul(rh[t, r0:r1], Whp_n, an, work_n)       # rh @ Wh[:, 2 * H:]  (GRU 4)
        candidate_before_forward(gates[t, r0:r1], an)      # n  (GRU 4)
        interpolate_forward(gates[t, r0:r1], h[t, r0:r1], h_new)         # (GRU 5)
        state_output_forward(h_new, mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def gru_reset_before_backward_loop(t0, t1, dhs, mask, h, gates, WhTp_rz, WhTp_n, dU, db, dH,
                                   dh, r0, r1):
    """Reset before, BPTT over t = t1-1 .. t0 (backward_in_chunks_reset_before): dH (B, H)
    carried in place from dL/dh_{t1} to dL/dh_{t0}; fills dU[t - t0] = du_t (t1 - t0, B, 3H), adds
    to db (3H), fills dh = dL/dh̃_t. WhTp_rz, WhTp_n are common.pack_panels of Wh[:, :2H].T and
    Wh[:, 2H:].T. Rows r0 .. r1-1 only (threads.run_rows; db: the sum over those rows)."""
    T, B, H = dhs.shape
    drh = np.empty((r1 - r0, H), dhs.dtype)
    dh_a = np.empty((r1 - r0, H), dhs.dtype)
    work_n = product_workspace(r1 - r0, H, WhTp_n)
    work_rz = product_workspace(r1 - r0, 2 * H, WhTp_rz)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, or the one reused row
        du = dU[t - t0, r0:r1]
        update_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], gates[t, r0:r1], h[t, r0:r1],
                        dh[k, r0:r1], du)                  # (BPTT 4), (GRU 6)
        packed_matmul(du[:, 2 * H:], WhTp_n, drh, work_n)  # drh = du_n @ Wh[:, 2H:].T  (GRU 9)
        reset_before_backward(gates[t, r0:r1], h[t, r0:r1], drh, du)   # du_r  (GRU 9), (GRU 10)
        add_bias_grad(du, db)                              # (GRU 13)
        packed_matmul(du[:, :2 * H], WhTp_rz, dh_a, work_rz)   # da_rz @ Wh[:, :2H].T  (GRU 11)
        reset_before_state_backward(dH[r0:r1], mask[t, r0:r1], dh[k, r0:r1], gates[t, r0:r1],
                                    dh_a, drh)             # (GRU 12)


# -- the Python side ------------------------------------------------------------------------------
def gru_forward(x, h0, mask, params, *, reset="after"):
    """Same contract as refnorm.numpy_ref.gru.gru_forward."""
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, not {reset!r}")
    if reset == "before" and "b_hn" in params:
        raise ValueError("reset='before' has no b_hn: a recurrent bias of the n block sits "
                         "outside r there and belongs in b's n block")
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    T, B, _ = x.shape
    H = p["Wh"].shape[0]
    gates = input_projection(x, p["Wx"])       # U = x @ p["Wx"] + p["b"]  (GRU 1), (BPTT 8);
    gates += p["b"]                            # the loops turn it into the gates, in place
    h = state(h0, T)
    hs = np.empty((T, B, H), x.dtype)
    if reset == "after":
        hn = np.empty((T, B, H), x.dtype)
        forward_rows("gru", mask, pack_panels(p["Wh"]), p["b_hn"], h, hs, gates, hn)
        cache = GRUCache(x=x, mask=mask, params=p, reset=reset, h=h, gates=gates, hn=hn)
    else:
        rh = np.empty((T, B, H), x.dtype)
        Whp_rz, Whp_n = pack_panels(p["Wh"][:, :2 * H]), pack_panels(p["Wh"][:, 2 * H:])
        run_rows(lambda r0, r1: gru_reset_before_forward_loop(mask, Whp_rz, Whp_n, h, hs, gates,
                                                              rh, r0, r1),
                 loop_blocks("gru", x.dtype, B, H))
        cache = GRUCache(x=x, mask=mask, params=p, reset=reset, h=h, gates=gates, rh=rh)
    return hs, h[-1], cache


def gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.gru.gru_backward."""
    if cache.reset == "before":
        return backward_in_chunks_reset_before(dhs, dhT, cache, state_grads)
    p = cache.params
    H = p["Wh"].shape[0]
    db, db_hn = np.zeros(3 * H, dhs.dtype), np.zeros(H, dhs.dtype)
    WhTp = pack_panels(p["Wh"].T)

    blocks = loop_blocks("gru", dhs.dtype, *dhs.shape[1:])     # before any scratch() (planner)

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads
        backward_rows(blocks, t0, t1, dhs, cache, WhTp, dU, dA, db, db_hn, dH, dh)

    # dWx, dx (GRU 13), (BPTT 8) and dWh = Σ_t h_{t-1}ᵀ da_t (GRU 11), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 2, state_grads, loop, {"b": db, "b_hn": db_hn})


def backward_in_chunks_reset_before(dhs, dhT, cache, state_grads):
    """gru_backward with reset="before": common.backward_in_chunks_h's chunks of steps, with one
    array of gate gradients, du_t, and dWh from two left factors: its r, z blocks are
    Σ_t h_{t-1}ᵀ du_t^{rz} (GRU 11), its n block Σ_t ρ_tᵀ du_t^n (GRU 9), one GEMM each per chunk
    on column views of du_t."""
    p = cache.params
    x, h, rh, Wx, Wh = cache.x, cache.h, cache.rh, p["Wx"], p["Wh"]
    T, B, H = dhs.shape
    D, G = Wx.shape
    dt = dhs.dtype
    blocks = loop_blocks("gru", dt, B, H)                  # before scratch() (the planner)
    bounds = chunk_bounds(T, B * G * dt.itemsize)
    steps = max(t1 - t0 for t0, t1 in zip(bounds, bounds[1:]))
    (buffer,), dh = backward_buffers_h(dhs, G, 1, state_grads, steps)
    dH = dhT.copy()
    dWx, dWh, db, dx = (np.zeros((D, G), dt), np.zeros((H, G), dt), np.zeros(G, dt),
                        np.empty(x.shape, dt))
    WhTp_rz, WhTp_n = pack_panels(Wh[:, :2 * H].T), pack_panels(Wh[:, 2 * H:].T)
    for t0, t1 in reversed(list(zip(bounds, bounds[1:]))):      # the last chunk first
        dU = buffer[:t1 - t0]
        reset_before_backward_rows(blocks, t0, t1, dhs, cache, WhTp_rz, WhTp_n, dU, db, dH, dh)
        dU_rows = dU.reshape(-1, G)
        dWh[:, :2 * H] += matmul(h[t0:t1].reshape(-1, H).T, dU_rows[:, :2 * H])  # h_prev.T @ da_rz
        dWh[:, 2 * H:] += matmul(rh[t0:t1].reshape(-1, H).T, dU_rows[:, 2 * H:])  # rh.T @ du_n
        #                                                                          (GRU 9)
        add_input_grads(x, Wx, t0, t1, dU, dWx, dx)                        # (GRU 13), (BPTT 8)
    grads = {"Wx": dWx, "Wh": dWh, "b": db, "x": dx, "h0": dH}
    if state_grads:
        grads["dh"] = dh
    return grads


def forward_rows(cell, mask, Whp, b_hn, h, hs, gates, hn):
    """gru_forward_loop (reset after) over all rows, in the row blocks the planner chose for
    `cell` (the GRU, or SeqBN-GRU, whose recurrence is the GRU's), each block on a thread
    (threads.py)."""
    T, B, H = hs.shape
    run_rows(lambda r0, r1: gru_forward_loop(mask, Whp, b_hn, h, hs, gates, hn, r0, r1),
             loop_blocks(cell, hs.dtype, B, H))


def backward_rows(blocks, t0, t1, dhs, cache, WhTp, dV, dA, db, db_hn, dH, dh):
    """gru_backward_loop (reset after) over steps t1-1 .. t0 in the row blocks given
    (loop_blocks), each block adding Σ_b dv_t and Σ_b dq_t over its rows to a db and a db_hn of
    its own, added to db and db_hn at the end."""
    run_rows_summing(lambda r0, r1, own: gru_backward_loop(
        t0, t1, dhs, cache.mask, cache.h, cache.gates, cache.hn, WhTp, dV, dA, own["b"],
        own["b_hn"], dH, dh, r0, r1), blocks, {"b": db, "b_hn": db_hn})


def reset_before_backward_rows(blocks, t0, t1, dhs, cache, WhTp_rz, WhTp_n, dU, db, dH, dh):
    """gru_reset_before_backward_loop over steps t1-1 .. t0 in the row blocks given, each block
    adding Σ_b du_t over its rows to a db of its own, added to db at the end."""
    run_rows_summing(lambda r0, r1, own: gru_reset_before_backward_loop(
        t0, t1, dhs, cache.mask, cache.h, cache.gates, WhTp_rz, WhTp_n, dU, own["b"], dH, dh, r0,
        r1), blocks, {"b": db})
