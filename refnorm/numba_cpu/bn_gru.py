"""BN-GRU on the Numba CPU backend, mirror of refnorm/numpy_ref/bn_gru.py.

Same signatures and BNGRUCache as the reference. Per step: one (B, H)·(H, 3H) product, the batch
statistics of both sides by fused column reductions over the rows of s_t (norms.py), the
normalised sides v_t = γ_x ⊙ û_t + b and w_t = γ_h ⊙ â_t, then the reset-after gate algebra of
.gru and the masked carry. In inference the statistics arrays arrive holding the population
statistics chosen for each step and are only read. eps may be 0: norms' loops read a zero
s = √(v + eps) as ∞, so ẑ = 0 and dz = 0 there (BN 15). A step with one row in its statistics
gives û_t = â_t = 0 exactly on that row, constant gates and du_t = da_t = 0 (BN-GRU 8), as in
the reference.

Both loops run on the row blocks of threads.loop_blocks, one thread each (threads.run_meeting),
and meet once a step (barrier.meet; the forward in training only), where the blocks' sums over
the batch are joined. The blocks' sums live in two sets of arrays, one for the even steps and
one for the odd: a thread writes its sums of step t + 2 only after the meeting of step t + 1,
which no thread reaches before it has read the sums of step t, so one meeting a step is
enough.
"""
import numpy as np
from numba import njit

from ..numpy_ref.bn_gru import STAT_NAMES, BNGRUCache
from .barrier import add_columns, column_block, meet
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace)
from .gru import (gru_gates_backward, gru_gates_forward, interpolated_state_backward,
                  normalized_sides_forward)
from .norms import (batchnorm_backward_rows, batchnorm_block_grad_sums, batchnorm_block_stats,
                    batchnorm_join_grad_sums, batchnorm_join_stats, batchnorm_normalize)
from .rnn import state, state_output_forward
from .threads import loop_blocks, run_meeting, touch_pages


@njit(**JIT)
def bn_gru_forward_loop(U, mask, stat_mask, Whp, b, b_hn, gamma_x, gamma_h, eps, training, h,
                        hs, gates, hn, u_hat, a_hat, mean_x, var_x, mean_h, var_h, counts,
                        parts_x, parts_h, sync, k, n, r0, r1):
    """Fills h (T+1, B, H) (h[0] given), hs, gates (T, B, 3H), hn (T, B, H), the normalised
    sides û_t, â_t (T, B, 3H) and their statistics (T, 3H); in inference the statistics arrive
    holding the population statistics and are read. gates may be U itself (bn_gru_forward
    passes it so): step t reads U[t] only before it writes gates[t], and a thread reads and
    writes its own rows only; keep it that way. Whp is common.pack_panels(Wh).

    Thread k of n (threads.run_meeting) runs rows r0 .. r1-1 of every step: their product and
    every pass over them. Each step's batch statistics in training come in two halves: each
    thread sums its own rows of u_t and a_t into its parts (norms.batchnorm_block_stats into
    parts_x[t % 2, k], parts_h[t % 2, k], its count in counts[t % 2, k]), the threads meet
    (barrier.meet), and each joins the n blocks' parts (norms.batchnorm_join_stats; the arrays
    may hold more, run_meeting runs one block where it cannot meet) into the statistics;
    thread 0 into the cache's, the others into arrays of their own. One meeting a
    step (the parts of step t are written again at step t + 2, after the meeting of step t + 1,
    see the module's note), and no thread reads another's rows. With n = 1 (one thread, the
    whole batch, no meeting) the statistics are the two-pass sums to the bit; with more blocks
    they differ by roundings. In inference the statistics are given and no thread meets."""
    T, B, G = U.shape
    H = G // 3
    a = np.empty((r1 - r0, G), U.dtype)
    h_new = np.empty((r1 - r0, H), U.dtype)
    own_x, own_h = np.empty((2, G), U.dtype), np.empty((2, G), U.dtype)  # threads k > 0's
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        m = stat_mask[t, r0:r1]                            # rows of step t's statistics, s_t
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ p["Wh"]  (BN-GRU 1)
        mx, vx, mh, vh = mean_x[t], var_x[t], mean_h[t], var_h[t]
        if training:                                       # batchnorm_forward(u_t, s_t, ...)
            if k > 0:
                mx, vx, mh, vh = own_x[0], own_x[1], own_h[0], own_h[1]
            slot = t % 2                                   # this step's set of parts
            counts[slot, k] = batchnorm_block_stats(U[t, r0:r1], m, parts_x[slot, k])
            batchnorm_block_stats(a, m, parts_h[slot, k])
            meet(sync, n)                                  # every block's sums of u_t and a_t
            batchnorm_join_stats(counts[slot, :n], parts_x[slot, :n], mx, vx)
            batchnorm_join_stats(counts[slot, :n], parts_h[slot, :n], mh, vh)
        batchnorm_normalize(U[t, r0:r1], m, mx, vx, eps, u_hat[t, r0:r1])
        batchnorm_normalize(a, m, mh, vh, eps, a_hat[t, r0:r1])
        normalized_sides_forward(u_hat[t, r0:r1], a_hat[t, r0:r1], gamma_x, gamma_h, b,
                                 gates[t, r0:r1], a)       # v_t into gates, w_t into a  (BN-GRU 2)
        gru_gates_forward(gates[t, r0:r1], a, h[t, r0:r1], b_hn, hn[t, r0:r1],
                          h_new)                           # (BN-GRU 3)
        state_output_forward(h_new, mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def bn_gru_backward_loop(t0, t1, dhs, mask, stat_mask, h, gates, hn, u_hat, a_hat, var_x, var_h,
                         gamma_x, gamma_h, WhTp, eps, training, dA, dU, db, db_hn, dgamma_x,
                         dgamma_h, dH, dh, counts, parts_v, parts_w, sync, k, n, r0, r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h), dH (B, H) carried in place from
    dL/dh_{t1} to dL/dh_{t0}: fills dA[t - t0] = da_t and dU[t - t0] = du_t (t1 - t0, B, 3H),
    adds to db, db_hn and the gains' gradients, fills dh = dL/dh̃_t
    (common.backward_buffers_h). WhTp is common.pack_panels(Wh.T).

    Threads as in the forward loop: rows r0 .. r1-1 each, and the sums over the batch of both
    batch norm backwards in two halves (norms.batchnorm_block_grad_sums of dv_t and dw_t into
    parts_v[t % 2, k], parts_w[t % 2, k], meet, norms.batchnorm_join_grad_sums), one meeting
    a step. The bias sums come from the joined sums: Σ_b dv_t is the Σ dy of the BN backward
    on dv_t, Σ_b dw_t^n the n block of the Σ dy of the one on dw_t; thread k adds its share of
    the columns (barrier.column_block) of these and of the gains' sums to db, db_hn, dγ_x,
    dγ_h."""
    T, B, H = dhs.shape
    G = 3 * H
    R = r1 - r0
    g0, g1 = column_block(G, k, n)                 # this thread's columns of db, dγ_x, dγ_h
    j0, j1 = column_block(H, k, n)                 # and of db_hn
    dv = np.empty((R, G), dhs.dtype)
    dw = np.empty((R, G), dhs.dtype)
    dh_rec = np.empty((R, H), dhs.dtype)
    terms_v, terms_w = np.empty((5, G), dhs.dtype), np.empty((5, G), dhs.dtype)
    no_sum = np.empty(0, dhs.dtype)                # gru_gates_backward adds no bias sums
    work = product_workspace(R, G, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        kt = t if dh.shape[0] == T else 0  # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        slot = t % 2                       # this step's set of parts
        s = stat_mask[t, r0:r1]
        gru_gates_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], gates[t, r0:r1],
                           hn[t, r0:r1], h[t, r0:r1], dh[kt, r0:r1], dv, dw, no_sum,
                           no_sum)                         # (BPTT 4), (BN-GRU 4)
        counts[slot, k] = batchnorm_block_grad_sums(dv, u_hat[t, r0:r1], s, parts_v[slot, k])
        batchnorm_block_grad_sums(dw, a_hat[t, r0:r1], s, parts_w[slot, k])
        meet(sync, n)                              # every block's sums for both BN backwards
        batchnorm_join_grad_sums(counts[slot, :n], parts_v[slot, :n], var_x[t], gamma_x, eps,
                                 training, terms_v)        # du = BNback(dv; γ_x)  (BN-GRU 5)
        batchnorm_join_grad_sums(counts[slot, :n], parts_w[slot, :n], var_h[t], gamma_h, eps,
                                 training, terms_w)        # da = BNback(dw; γ_h)  (BN-GRU 5)
        add_columns(db, terms_v[4], g0, g1)                # dv.sum(axis=0)  (BN-GRU 4)
        add_columns(db_hn, terms_w[4, 2 * H:], j0, j1)     # dw[:, 2H:].sum(axis=0)  (BN-GRU 4)
        add_columns(dgamma_x, terms_v[3], g0, g1)          # (dv * u_hat).sum(axis=0)  (BN-GRU 5)
        add_columns(dgamma_h, terms_w[3], g0, g1)          # (dw * a_hat).sum(axis=0)  (BN-GRU 5)
        batchnorm_backward_rows(dv, u_hat[t, r0:r1], s, gamma_x, terms_v, dU[q, r0:r1])
        batchnorm_backward_rows(dw, a_hat[t, r0:r1], s, gamma_h, terms_w, dA[q, r0:r1])
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)   # da @ p["Wh"].T  (BN-GRU 6)
        interpolated_state_backward(dH[r0:r1], mask[t, r0:r1], dh[kt, r0:r1], gates[t, r0:r1],
                                    dh_rec)                # (BPTT 6), (BN-GRU 6)


def bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.bn_gru.bn_gru_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    T, B, _ = x.shape
    G = p["Wx"].shape[1]
    H = G // 3
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (BN-GRU 1), (BPTT 8)
    h = state(h0, T)
    # the statistics used: (T, 3H) arrays the loop fills in training, copies of pop's in inference
    stats = {name: (np.empty((T, G), dt) if training else np.array(pop[name][:T], dtype=dt))
             for name in STAT_NAMES}
    u_hat, a_hat = np.empty((T, B, G), dt), np.empty((T, B, G), dt)
    hs, hn = np.empty((T, B, H), dt), np.empty((T, B, H), dt)
    Whp = pack_panels(p["Wh"])
    blocks = loop_blocks("bn_gru", dt, B, H)
    n = len(blocks)                      # each block's sums for the statistics, even and odd steps
    counts, parts_x, parts_h = (np.empty((2, n)), np.empty((2, n, 3, G), dt),
                                np.empty((2, n, 3, G), dt))
    if n > 1:                            # the arrays the loop writes first (not h[0], U)
        touch_pages(h[1:], hs, hn, u_hat, a_hat)
    # gates: U -- the loop has read u_t when it writes step t's gates: one (T, B, 3H) array less
    run_meeting(lambda sync, k, n, r0, r1: bn_gru_forward_loop(
        U, mask, stat_mask, Whp, p["b"], p["b_hn"], p["gamma_x"], p["gamma_h"], dt.type(eps),
        training, h, hs, U, hn, u_hat, a_hat, stats["mean_x"], stats["var_x"], stats["mean_h"],
        stats["var_h"], counts, parts_x, parts_h, sync, k, n, r0, r1), blocks)
    cache = BNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training, eps=eps,
                       h=h, gates=U, hn=hn, count=stat_mask.sum(axis=1),   # count: s_t.sum()
                       u_hat=u_hat, a_hat=a_hat, **stats)
    return hs, h[-1], cache


def bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_gru.bn_gru_backward."""
    p = cache.params
    B, H = dhs.shape[1:]
    G = 3 * H
    dt = dhs.dtype
    added = {"b": np.zeros(G, dt), "b_hn": np.zeros(H, dt), "gamma_x": np.zeros(G, dt),
             "gamma_h": np.zeros(G, dt)}
    WhTp = pack_panels(p["Wh"].T)
    blocks = loop_blocks("bn_gru", dt, B, H)                  # before any scratch() (planner)
    n = len(blocks)                      # each block's sums for the batch norms, even and odd steps
    counts, parts_v, parts_w = (np.empty((2, n)), np.empty((2, n, 3, G), dt),
                                np.empty((2, n, 3, G), dt))

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads
        run_meeting(lambda sync, k, n, r0, r1: bn_gru_backward_loop(
            t0, t1, dhs, cache.mask, cache.stat_mask, cache.h, cache.gates, cache.hn,
            cache.u_hat, cache.a_hat, cache.var_x, cache.var_h, p["gamma_x"], p["gamma_h"], WhTp,
            dt.type(cache.eps), cache.training, dA, dU, added["b"], added["b_hn"],
            added["gamma_x"], added["gamma_h"], dH, dh, counts, parts_v, parts_w, sync, k, n, r0,
            r1), blocks)

    # dWx, dx (BN-GRU 7) and dWh = Σ_t h_{t-1}ᵀ da_t (BN-GRU 6), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 2, state_grads, loop, added)
