"""BN-LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/bn_lstm.py.

Same signatures and BNLSTMCache as the reference. Per step: one (B, H)·(H, 4H) product, the
batch statistics of a_t, u_t and c̃_t by fused column reductions over the valid rows, and the
gates fused into one pass. In inference the statistics arrays arrive holding the population
statistics chosen for each step and are only read.

carry="normalized" (VAR 3), (VAR 4) is a flag of the two loops: the forward carries
γ_c ⊙ ĉ_t + β_c in place of c̃_t, the backward adds the carry gradient before the cell's BN
backward. The term shifts and a run-time forget bias arrive folded into b (VAR 1), (VAR 2).
eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so ẑ = 0 and dz = 0 there (BN 15).
"""

import numpy as np
from numba import njit

from ..numpy_ref.bn_lstm import STAT_NAMES, BNLSTMCache
from .common import (
    JIT,
    pack_panels,
    packed_matmul,
    product_workspace,
    input_projection,
    cell_output_forward,
    backward_in_chunks,
    normalized_gain_grads,
    normalized_carry_backward,
    normalized_gates_backward,
    normalized_gates_forward,
    normalized_output_backward,
    recurrent_state_backward,
)
from .barrier import add_columns, column_block, meet
from .lstm import states
from .norms import (batchnorm_backward_rows, batchnorm_block_grad_sums, batchnorm_block_stats,
                    batchnorm_join_grad_sums, batchnorm_join_stats, batchnorm_normalize)
from .threads import loop_blocks, run_meeting, touch_pages


@njit(**JIT)
def bn_lstm_forward_loop(U, mask, stat_mask, Whp, b, gamma_x, gamma_h, gamma_c, beta_c, eps,
                         training, normalized_carry, h, c, hs, count, a_hat, u_hat, gates, c_hat,
                         tanh_c, mean_h, var_h, mean_x, var_x, mean_c, var_c, counts, parts_h,
                         parts_x, parts_c, sync, k, n, r0, r1):
    """gates may be U itself (bn_lstm_forward passes it so): step t reads U[t] only before it
    writes gates[t]; keep it that way. Whp is common.pack_panels(Wh).

    Thread k of n (threads.run_meeting) runs rows r0 .. r1-1 of every step: their product and
    every pass over them. Each step's batch statistics come in two halves: each thread sums
    its own rows into its part (norms.batchnorm_block_stats into parts_h[k], parts_x[k],
    parts_c[k], its counts in counts[:, k]), the threads meet (barrier.meet), and each joins
    the n parts (norms.batchnorm_join_stats) into the statistics; thread 0 into the cache's.
    The arrays may hold more blocks than n (run_meeting runs one block where it cannot meet).
    Two meetings a step, and no thread reads another's rows. With n = 1 (one thread, the whole
    batch, no meeting) the statistics are the two-pass sums to the bit; with more blocks they
    differ by roundings. In inference the statistics are given and no thread meets."""
    T, B, G = U.shape
    H = G // 4
    a = np.empty((r1 - r0, G), U.dtype)
    c_new = np.empty((r1 - r0, H), U.dtype)
    c_norm = np.empty((r1 - r0, H), U.dtype)
    own_h, own_x, own_c = (np.empty((2, G), U.dtype), np.empty((2, G), U.dtype),
                           np.empty((2, H), U.dtype))   # the statistics of threads k > 0
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        m = stat_mask[t, r0:r1]                            # rows of step t's statistics, s_t
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ p["Wh"]  (BN-LSTM 1)
        mh, vh, mx, vx, mc, vc = mean_h[t], var_h[t], mean_x[t], var_x[t], mean_c[t], var_c[t]
        if training:                                       # batchnorm_forward(a, s_t, ...)
            if k > 0:
                mh, vh, mx, vx, mc, vc = own_h[0], own_h[1], own_x[0], own_x[1], own_c[0], own_c[1]
            counts[0, k] = batchnorm_block_stats(a, m, parts_h[k])
            batchnorm_block_stats(U[t, r0:r1], m, parts_x[k])
            meet(sync, n)                                  # every block's sums of a_t and u_t
            n_t = batchnorm_join_stats(counts[0, :n], parts_h[:n], mh, vh)
            batchnorm_join_stats(counts[0, :n], parts_x[:n], mx, vx)
        else:
            n_t = stat_mask[t].sum()
        if k == 0:
            count[t] = n_t
        batchnorm_normalize(a, m, mh, vh, eps, a_hat[t, r0:r1])
        batchnorm_normalize(U[t, r0:r1], m, mx, vx, eps, u_hat[t, r0:r1])
        normalized_gates_forward(a_hat[t, r0:r1], u_hat[t, r0:r1], gamma_h, gamma_x, b,
                                 c[t, r0:r1], gates[t, r0:r1],
                                 c_new)                            # (BN-LSTM 2), (BN-LSTM 3)
        if training:
            counts[1, k] = batchnorm_block_stats(c_new, m, parts_c[k])
            meet(sync, n)                                  # every block's sums of c̃_t
            batchnorm_join_stats(counts[1, :n], parts_c[:n], mc, vc)
        batchnorm_normalize(c_new, m, mc, vc, eps, c_hat[t, r0:r1])        # (BN-LSTM 4)
        cell_output_forward(c_hat[t, r0:r1], gamma_c, beta_c, gates[t, r0:r1], c_new, c_norm,
                            normalized_carry, mask[t, r0:r1], h[t, r0:r1], c[t, r0:r1],
                            h[t + 1, r0:r1], c[t + 1, r0:r1], hs[t, r0:r1],
                            tanh_c[t, r0:r1])                      # (BN-LSTM 4), (VAR 3)


@njit(**JIT)
def bn_lstm_backward_loop(t0, t1, dhs, mask, stat_mask, c, a_hat, u_hat, gates, c_hat,
                          tanh_c, var_h, var_x, var_c, gamma_x, gamma_h, gamma_c, WhTp, eps, training,
                          normalized_carry, dA, dU, db, dgamma_x, dgamma_h, dgamma_c, dbeta_c,
                          dH, dC, dh, dc, counts, parts_c, parts_h, parts_x, sync, k, n, r0, r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks), dH, dC (B, H) carried in place
    from dL/dh_{t1}, dL/dc_{t1} to dL/dh_{t0}, dL/dc_{t0}: fills dA[t - t0] = da_t and
    dU[t - t0] = du_t, adds to the gain and bias gradients; fills dh, dc
    (common.backward_buffers) with dL/dh̃_t and the gradient of the carried cell (dc̃_t, or
    dĉ_t with normalized_carry). WhTp is common.pack_panels(Wh.T).

    Threads as in the forward loop: rows r0 .. r1-1 each, and each batch norm backward's sums
    over the batch in two halves (norms.batchnorm_block_grad_sums into the parts, meet,
    norms.batchnorm_join_grad_sums); thread k adds its share of the columns
    (barrier.column_block) of the joined sums to the gains', β_c's and b's gradients."""
    T, B, H = dhs.shape
    G = 4 * H
    R = r1 - r0
    g0, g1 = column_block(G, k, n)                 # this thread's columns of db, dγ_h, dγ_x
    j0, j1 = column_block(H, k, n)                 # and of dγ_c, dβ_c
    dz = np.empty((R, G), dhs.dtype)
    dc_bn, dc_norm, dc_new, dh_rec = (np.empty((R, H), dhs.dtype), np.empty((R, H), dhs.dtype),
                                      np.empty((R, H), dhs.dtype), np.empty((R, H), dhs.dtype))
    terms_c, terms_h, terms_x = (np.empty((5, H), dhs.dtype), np.empty((5, G), dhs.dtype),
                                 np.empty((5, G), dhs.dtype))
    work = product_workspace(R, G, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        kt = t if dh.shape[0] == T else 0  # step t's row of dh, dc, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        m = mask[t, r0:r1]
        s = stat_mask[t, r0:r1]
        normalized_output_backward(dhs[t, r0:r1], dH[r0:r1], m, gates[t, r0:r1],
                                   tanh_c[t, r0:r1], dh[kt, r0:r1], dz,
                                   dc_bn)                          # (BPTT 4), (BN-LSTM 6)
        dy_c = dc_bn                               # what the cell's batch norm backward reads
        if normalized_carry:
            normalized_carry_backward(dC[r0:r1], m, dc_bn, dc[kt, r0:r1])          # (VAR 4)
            dy_c = dc[kt, r0:r1]
        counts[0, k] = batchnorm_block_grad_sums(dy_c, c_hat[t, r0:r1], s, parts_c[k])
        meet(sync, n)                              # every block's sums for the cell's BN
        batchnorm_join_grad_sums(counts[0, :n], parts_c[:n], var_c[t], gamma_c, eps, training,
                                 terms_c)                          # (BN-LSTM 7), (VAR 4)
        add_columns(dgamma_c, terms_c[3], j0, j1)                  # (dy * zhat).sum(axis=0)
        add_columns(dbeta_c, terms_c[4], j0, j1)                   # dy.sum(axis=0)
        batchnorm_backward_rows(dy_c, c_hat[t, r0:r1], s, gamma_c, terms_c, dc_norm)
        if normalized_carry:
            normalized_gates_backward(dC[r0:r1], dc_norm, m, gates[t, r0:r1], c[t, r0:r1],
                                      True, dc_new, dz, terms_c[0, :0])   # (VAR 4), (BN-LSTM 8)
        else:
            normalized_gates_backward(dC[r0:r1], dc_norm, m, gates[t, r0:r1], c[t, r0:r1],
                                      False, dc[kt, r0:r1], dz,
                                      terms_c[0, :0])              # (BN-LSTM 7), (BN-LSTM 8)
        counts[1, k] = batchnorm_block_grad_sums(dz, a_hat[t, r0:r1], s, parts_h[k])
        batchnorm_block_grad_sums(dz, u_hat[t, r0:r1], s, parts_x[k])
        meet(sync, n)                              # every block's sums for a_t's and u_t's BN
        batchnorm_join_grad_sums(counts[1, :n], parts_h[:n], var_h[t], gamma_h, eps, training,
                                 terms_h)                          # (BN-LSTM 9)
        batchnorm_join_grad_sums(counts[1, :n], parts_x[:n], var_x[t], gamma_x, eps, training,
                                 terms_x)                          # (BN-LSTM 9)
        add_columns(db, terms_h[4], g0, g1)                        # dz.sum(axis=0) (BN-LSTM 8)
        add_columns(dgamma_h, terms_h[3], g0, g1)                  # (dz * a_hat).sum(axis=0)
        add_columns(dgamma_x, terms_x[3], g0, g1)                  # (dz * u_hat).sum(axis=0)
        batchnorm_backward_rows(dz, a_hat[t, r0:r1], s, gamma_h, terms_h, dA[q, r0:r1])
        batchnorm_backward_rows(dz, u_hat[t, r0:r1], s, gamma_x, terms_x, dU[q, r0:r1])
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)            # da @ p["Wh"].T
        recurrent_state_backward(dH[r0:r1], m, dh_rec)             # (BN-LSTM 10)


def bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                    carry="raw"):
    """Same contract as refnorm.numpy_ref.bn_lstm.bn_lstm_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    p = params
    T, B, _ = x.shape
    G = p["Wh"].shape[1]
    H = G // 4
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (BN-LSTM 1), (BPTT 8)
    h, c = states(h0, c0, T)
    width = {"mean_x": G, "var_x": G, "mean_h": G, "var_h": G, "mean_c": H, "var_c": H}
    stats = {k: (np.empty((T, width[k]), dt) if training
                 else np.ascontiguousarray(pop[k], dtype=dt)) for k in STAT_NAMES}
    # "gates": U -- the loop has read u_t when it writes step t's gates: one (T, B, 4H) array less
    out = {"hs": np.empty((T, B, H), dt), "count": np.empty(T, dt),
           "a_hat": np.empty((T, B, G), dt), "u_hat": np.empty((T, B, G), dt),
           "gates": U, "c_hat": np.empty((T, B, H), dt),
           "tanh_c": np.empty((T, B, H), dt)}
    Whp = pack_panels(p["Wh"])
    blocks = loop_blocks("bn_lstm", dt, B, H)
    n = len(blocks)                                    # each block's sums for the statistics
    counts, parts_h, parts_x, parts_c = (np.empty((2, n)), np.empty((n, 3, G), dt),
                                         np.empty((n, 3, G), dt), np.empty((n, 3, H), dt))
    if n > 1:                           # the arrays the loop writes first (not h[0], c[0], U)
        touch_pages(h[1:], c[1:], *(out[k] for k in ("hs", "a_hat", "u_hat", "c_hat", "tanh_c")))
    run_meeting(lambda sync, k, n, r0, r1: bn_lstm_forward_loop(
        U, mask, stat_mask, Whp, p["b"], p["gamma_x"], p["gamma_h"], p["gamma_c"], p["beta_c"],
        dt.type(eps), training, carry == "normalized", h, c, out["hs"], out["count"],
        out["a_hat"], out["u_hat"], out["gates"], out["c_hat"], out["tanh_c"], stats["mean_h"],
        stats["var_h"], stats["mean_x"], stats["var_x"], stats["mean_c"], stats["var_c"],
        counts, parts_h, parts_x, parts_c, sync, k, n, r0, r1), blocks)
    hs = out.pop("hs")
    cache = BNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params, training=training,
                        eps=eps, carry=carry, h=h, c=c, **out, **stats)
    return hs, h[-1], c[-1], cache


def bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_lstm.bn_lstm_backward."""
    p = cache.params
    g = normalized_gain_grads(cache)
    WhTp = pack_panels(p["Wh"].T)
    B, H = dhs.shape[1:]
    dt = dhs.dtype
    blocks = loop_blocks("bn_lstm", dt, B, H)                 # before any scratch() (planner)
    n = len(blocks)                                # each block's sums for the batch norms
    counts, parts_c, parts_h, parts_x = (np.empty((2, n)), np.empty((n, 3, H), dt),
                                         np.empty((n, 3, 4 * H), dt), np.empty((n, 3, 4 * H), dt))

    def loop(t0, t1, gate_grads, dH, dC, dh, dc):
        dA, dU = gate_grads
        run_meeting(lambda sync, k, n, r0, r1: bn_lstm_backward_loop(
            t0, t1, dhs, cache.mask, cache.stat_mask, cache.c, cache.a_hat, cache.u_hat,
            cache.gates, cache.c_hat, cache.tanh_c, cache.var_h, cache.var_x, cache.var_c,
            p["gamma_x"], p["gamma_h"], p["gamma_c"], WhTp, dt.type(cache.eps),
            cache.training, cache.carry == "normalized", dA, dU, g["b"], g["gamma_x"],
            g["gamma_h"], g["gamma_c"], g["beta_c"], dH, dC, dh, dc, counts, parts_c, parts_h,
            parts_x, sync, k, n, r0, r1), blocks)

    # dWx, dx (BN-LSTM 11) and dWh = Σ_t h_{t-1}ᵀ da_t (BN-LSTM 10), chunk by chunk
    return backward_in_chunks(dhs, dhT, dcT, cache, 2, state_grads, loop, g)
