"""BN-RNN on the Numba CPU backend, mirror of refnorm/numpy_ref/bn_rnn.py.

Same signatures and BNRNNCache as the reference. Per step: one (B, H)·(H, H) product, the batch
statistics of the terms by fused column reductions over the rows of s_t (norms.py), z_t and
φ(z_t) in two passes over each row, the masked carry. In inference the statistics arrays arrive
holding the population statistics chosen for each step and are only read.

The term form is a flag of the two loops: summed (BN-RNN 3), (BN-RNN 6) normalises s_t = u_t + a_t
once with the gain γ_z and hands the one BN backward to both terms; separate (BN-RNN 2),
(BN-RNN 5) normalises each term. The arrays of the form not in use are empty stand-ins the loops
never touch. eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so ẑ = 0 and dz = 0
there (BN 15). A step with one row in its statistics gives ẑ = 0 exactly, hence φ(b) on that
row and du_t = da_t = 0 (BN-RNN 9), as in the reference.
"""
import numpy as np
from numba import njit

from ..numpy_ref.bn_rnn import STAT_NAMES, BNRNNCache
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace, recurrent_state_backward)
from .barrier import add_columns, column_block, meet
from .norms import (batchnorm_backward_rows, batchnorm_block_grad_sums, batchnorm_block_stats,
                    batchnorm_join_grad_sums, batchnorm_join_stats, batchnorm_normalize)
from .rnn import (activation_backward, add_terms, check_nonlinearity, separate_terms_forward,
                  state, state_output_forward, summed_terms_forward)
from .threads import loop_blocks, run_meeting, touch_pages


@njit(**JIT)
def bn_rnn_forward_loop(U, mask, stat_mask, Whp, b, gamma_x, gamma_h, gamma_z, eps, training,
                        summed, relu, h, hs, h_tilde, u_hat, a_hat, mean_x, var_x, mean_h,
                        var_h, s_hat, mean_z, var_z, counts, parts_x, parts_h, parts_z, sync, k,
                        n, r0, r1):
    """Fills h (T+1, B, H) (h[0] given), hs, h_tilde and the cache's normalised terms and
    statistics (T, ·) of the term form in use; in inference the statistics arrive holding the
    population statistics and are read. h_tilde may be U itself (bn_rnn_forward passes it so):
    step t reads U[t] only before it writes h_tilde[t], each thread on its own rows; keep it
    that way. Whp is common.pack_panels(Wh).

    Thread k of n (threads.run_meeting) runs rows r0 .. r1-1 of every step: their product and
    every pass over them. Each step's batch statistics come in two halves: each thread sums
    its own rows into its part (norms.batchnorm_block_stats into parts_x[ps, k], parts_h[ps, k]
    or parts_z[ps, k], its count in counts[ps, k]), the threads meet (barrier.meet), and each
    joins all the parts (norms.batchnorm_join_stats) into the statistics; thread 0 into the
    cache's. One meeting a step, so the parts come in two sets, ps = t % 2: a thread writes
    set ps again at step t + 2, after the meeting of step t + 1, which every thread reaches only
    once it has joined step t's. The joins read the first n blocks' sums only (run_meeting runs
    the loop as one block when another call holds the pool for its meetings). No thread reads
    another's rows. With n = 1 (one thread, the whole batch, no meeting) the statistics are the
    two-pass sums to the bit; with more blocks they differ by roundings. In inference the
    statistics are given and no thread meets."""
    T, B, H = U.shape
    a = np.empty((r1 - r0, H), U.dtype)
    own_x, own_h, own_z = (np.empty((2, H), U.dtype), np.empty((2, H), U.dtype),
                           np.empty((2, H), U.dtype))   # the statistics of threads k > 0
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        m = stat_mask[t, r0:r1]                            # rows of step t's statistics, s_t
        ps = t % 2                                         # step t's set of counts and parts
        u = U[t, r0:r1]
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ p["Wh"]  (BN-RNN 1)
        if summed:
            add_terms(u, a)                                # u_t + a  (BN-RNN 3)
            mz, vz = mean_z[t], var_z[t]
            if training:                                   # batchnorm_forward(u_t + a, s_t, ...)
                if k > 0:
                    mz, vz = own_z[0], own_z[1]
                counts[ps, k] = batchnorm_block_stats(a, m, parts_z[ps, k])
                meet(sync, n)                              # every block's sums of u_t + a_t
                batchnorm_join_stats(counts[ps, :n], parts_z[ps, :n], mz, vz)
            batchnorm_normalize(a, m, mz, vz, eps, s_hat[t, r0:r1])
            summed_terms_forward(s_hat[t, r0:r1], gamma_z, b, relu,
                                 h_tilde[t, r0:r1])        # (BN-RNN 3), (RNN 2)
        else:
            mx, vx, mh, vh = mean_x[t], var_x[t], mean_h[t], var_h[t]
            if training:                                   # batchnorm_forward(u_t, s_t, ...)
                if k > 0:
                    mx, vx, mh, vh = own_x[0], own_x[1], own_h[0], own_h[1]
                counts[ps, k] = batchnorm_block_stats(u, m, parts_x[ps, k])
                batchnorm_block_stats(a, m, parts_h[ps, k])
                meet(sync, n)                              # every block's sums of u_t and a_t
                batchnorm_join_stats(counts[ps, :n], parts_x[ps, :n], mx, vx)
                batchnorm_join_stats(counts[ps, :n], parts_h[ps, :n], mh, vh)
            batchnorm_normalize(u, m, mx, vx, eps, u_hat[t, r0:r1])
            batchnorm_normalize(a, m, mh, vh, eps, a_hat[t, r0:r1])
            separate_terms_forward(u_hat[t, r0:r1], a_hat[t, r0:r1], gamma_x, gamma_h, b, relu,
                                   h_tilde[t, r0:r1])      # (BN-RNN 2), (RNN 2)
        state_output_forward(h_tilde[t, r0:r1], mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def bn_rnn_backward_loop(t0, t1, dhs, mask, stat_mask, h_tilde, relu, summed, u_hat, a_hat,
                         var_x, var_h, s_hat, var_z, gamma_x, gamma_h, gamma_z, WhTp, eps,
                         training, dA, dU, db, dgamma_x, dgamma_h, dgamma_z, dH, dh, counts,
                         parts_x, parts_h, parts_z, sync, k, n, r0, r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h), dH (B, H) carried in place from
    dL/dh_{t1} to dL/dh_{t0}: fills dA[t - t0] = da_t and dU[t - t0] = du_t (summed: dU is dA,
    and only dA is written), adds to db and the gains' gradients, fills dh = dL/dh̃_t
    (common.backward_buffers_h). The arrays of the term form not in use are stand-ins, as in
    the forward loop. WhTp is common.pack_panels(Wh.T).

    Threads as in the forward loop: rows r0 .. r1-1 each, and each batch norm backward's sums
    over the batch in two halves (norms.batchnorm_block_grad_sums into the parts of set
    ps = t % 2, meet, norms.batchnorm_join_grad_sums), one meeting a step; thread k adds its
    share of the columns (barrier.column_block) of the joined sums to the gains' and b's
    gradients. db = Σ dz is the joined Σ dy of a batch norm backward whose dy is dz (terms[4]):
    activation_backward gets an empty db and adds nothing."""
    T, B, H = dhs.shape
    R = r1 - r0
    j0, j1 = column_block(H, k, n)                 # this thread's columns of db and the gains'
    dz = np.empty((R, H), dhs.dtype)
    dh_rec = np.empty((R, H), dhs.dtype)
    terms_x, terms_h, terms_z = (np.empty((5, H), dhs.dtype), np.empty((5, H), dhs.dtype),
                                 np.empty((5, H), dhs.dtype))
    no_db = np.empty(0, dhs.dtype)                 # db's sums come from the batch norms' sums
    work = product_workspace(R, H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        kt = t if dh.shape[0] == T else 0  # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        ps = t % 2                         # step t's set of counts and parts
        s = stat_mask[t, r0:r1]
        activation_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], h_tilde[t, r0:r1], relu,
                            dh[kt, r0:r1], dz, no_db)      # (BPTT 4), (RNN 3), (BN-RNN 4)
        if summed:   # ds = BNback(dz; γ_z); du, da = ds, ds: dU is dA
            counts[ps, k] = batchnorm_block_grad_sums(dz, s_hat[t, r0:r1], s, parts_z[ps, k])
            meet(sync, n)                          # every block's sums for s_t's BN
            batchnorm_join_grad_sums(counts[ps, :n], parts_z[ps, :n], var_z[t], gamma_z, eps,
                                     training, terms_z)            # (BN-RNN 6)
            add_columns(db, terms_z[4], j0, j1)                # dz.sum(axis=0)  (BN-RNN 4)
            add_columns(dgamma_z, terms_z[3], j0, j1)          # (dz * s_hat).sum(axis=0)
            batchnorm_backward_rows(dz, s_hat[t, r0:r1], s, gamma_z, terms_z,
                                    dA[q, r0:r1])                  # (BN-RNN 6)
        else:
            counts[ps, k] = batchnorm_block_grad_sums(dz, u_hat[t, r0:r1], s, parts_x[ps, k])
            batchnorm_block_grad_sums(dz, a_hat[t, r0:r1], s, parts_h[ps, k])
            meet(sync, n)                          # every block's sums for u_t's and a_t's BN
            batchnorm_join_grad_sums(counts[ps, :n], parts_x[ps, :n], var_x[t], gamma_x, eps,
                                     training, terms_x)            # (BN-RNN 5)
            batchnorm_join_grad_sums(counts[ps, :n], parts_h[ps, :n], var_h[t], gamma_h, eps,
                                     training, terms_h)            # (BN-RNN 5)
            add_columns(db, terms_x[4], j0, j1)                # dz.sum(axis=0)  (BN-RNN 4)
            add_columns(dgamma_x, terms_x[3], j0, j1)          # (dz * u_hat).sum(axis=0)
            add_columns(dgamma_h, terms_h[3], j0, j1)          # (dz * a_hat).sum(axis=0)
            batchnorm_backward_rows(dz, u_hat[t, r0:r1], s, gamma_x, terms_x,
                                    dU[q, r0:r1])                  # (BN-RNN 5)
            batchnorm_backward_rows(dz, a_hat[t, r0:r1], s, gamma_h, terms_h,
                                    dA[q, r0:r1])                  # (BN-RNN 5)
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)            # da @ p["Wh"].T  (BN-RNN 7)
        recurrent_state_backward(dH[r0:r1], mask[t, r0:r1], dh_rec)   # (BPTT 6), (BN-RNN 7)


# The cache fields of each term form (those of the other form are None) and the gains of both.
TERM_FIELDS = {"separate": ("u_hat", "a_hat", "mean_x", "var_x", "mean_h", "var_h"),
               "summed": ("s_hat", "mean_z", "var_z")}
TERM_GAINS = ("gamma_x", "gamma_h", "gamma_z")
GAINS = {"separate": ("gamma_x", "gamma_h"), "summed": ("gamma_z",)}


def stand_ins(dt):
    """Empty (·, ·, ·), (·, ·) and (·) arrays the loops receive, and never touch, in place of
    the normalised terms, statistics and gains of the term form not in use."""
    return np.empty((0, 0, 0), dt), np.empty((0, 0), dt), np.empty(0, dt)


def term_arrays(fields, dt):
    """The loops' arguments for the normalised terms and statistics of both forms: the given
    arrays (the form in use), stand-ins for the rest."""
    terms, stats, _ = stand_ins(dt)
    return {name: fields.get(name, terms if name.endswith("_hat") else stats)
            for name in TERM_FIELDS["separate"] + TERM_FIELDS["summed"]}


PARTS = {"separate": ("parts_x", "parts_h"), "summed": ("parts_z",)}


def block_sums(terms, n, H, dt):
    """The arrays the n blocks of a loop share for the batch statistics: counts (2, n) float64
    and parts_x, parts_h, parts_z (2, n, 3, H), two sets (the loops use set t % 2 at step t),
    for the batch norms of the term form in use; empty stand-ins, never touched, for the
    other form's."""
    parts = {name: np.empty((2, n, 3, H) if name in PARTS[terms] else (0, 0, 0, 0), dt)
             for name in PARTS["separate"] + PARTS["summed"]}
    return np.empty((2, n)), parts


def bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                   terms="separate", nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.bn_rnn.bn_rnn_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    if terms not in STAT_NAMES:
        raise ValueError(f"terms must be 'separate' or 'summed', not {terms!r}")
    relu = check_nonlinearity(nonlinearity)
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    T, B, _ = x.shape
    H = p["Wh"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (BN-RNN 1), (BPTT 8)
    h = state(h0, T)
    # the statistics used: (T, H) arrays the loop fills in training, copies of pop's in inference
    fields = {name: (np.empty((T, H), dt) if training else np.array(pop[name][:T], dtype=dt))
              for name in STAT_NAMES[terms]}
    fields.update({name: np.empty((T, B, H), dt)
                   for name in TERM_FIELDS[terms] if name.endswith("_hat")})
    a = term_arrays(fields, dt)
    _, _, no_gain = stand_ins(dt)
    g = {name: p.get(name, no_gain) for name in TERM_GAINS}
    hs = np.empty((T, B, H), dt)
    Whp = pack_panels(p["Wh"])
    blocks = loop_blocks("bn_rnn", dt, B, H)
    n = len(blocks)                                    # each block's sums for the statistics
    counts, parts = block_sums(terms, n, H, dt)
    if n > 1:            # the arrays the loop writes first (not h[0], U, the stand-ins)
        touch_pages(h[1:], hs, *(fields[name] for name in TERM_FIELDS[terms]
                                 if name.endswith("_hat")))
    # h_tilde: U -- the loop has read u_t when it writes step t's h̃: one (T, B, H) array less
    run_meeting(lambda sync, k, n, r0, r1: bn_rnn_forward_loop(
        U, mask, stat_mask, Whp, p["b"], g["gamma_x"], g["gamma_h"], g["gamma_z"],
        dt.type(eps), training, terms == "summed", relu, h, hs, U, a["u_hat"], a["a_hat"],
        a["mean_x"], a["var_x"], a["mean_h"], a["var_h"], a["s_hat"], a["mean_z"], a["var_z"],
        counts, parts["parts_x"], parts["parts_h"], parts["parts_z"], sync, k, n, r0, r1),
        blocks)
    cache = BNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                       eps=eps, terms=terms, nonlinearity=nonlinearity, h=h, h_tilde=U,
                       count=stat_mask.sum(axis=1), **fields)   # count: s_t.sum() per step
    return hs, h[-1], cache


def bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_rnn.bn_rnn_backward."""
    p = cache.params
    dt = dhs.dtype
    H = p["Wh"].shape[1]
    summed = cache.terms == "summed"
    _, _, no_gain = stand_ins(dt)
    added = {"b": np.zeros(H, dt), **{name: np.zeros(H, dt) for name in GAINS[cache.terms]}}
    a = term_arrays({name: getattr(cache, name) for name in TERM_FIELDS[cache.terms]}, dt)
    gain = {name: p.get(name, no_gain) for name in TERM_GAINS}
    d = {name: added.get(name, no_gain) for name in TERM_GAINS}
    WhTp = pack_panels(p["Wh"].T)
    blocks = loop_blocks("bn_rnn", dt, dhs.shape[1], H)       # before any scratch() (planner)
    counts, parts = block_sums(cache.terms, len(blocks), H, dt)   # for the batch norms

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads * 2 if summed else gate_grads            # summed: du_t = da_t
        run_meeting(lambda sync, k, n, r0, r1: bn_rnn_backward_loop(
            t0, t1, dhs, cache.mask, cache.stat_mask, cache.h_tilde,
            cache.nonlinearity == "relu", summed, a["u_hat"], a["a_hat"], a["var_x"],
            a["var_h"], a["s_hat"], a["var_z"], gain["gamma_x"], gain["gamma_h"],
            gain["gamma_z"], WhTp, dt.type(cache.eps), cache.training, dA, dU, added["b"],
            d["gamma_x"], d["gamma_h"], d["gamma_z"], dH, dh, counts, parts["parts_x"],
            parts["parts_h"], parts["parts_z"], sync, k, n, r0, r1), blocks)

    # dWx, dx (BN-RNN 8) and dWh = Σ_t h_{t-1}ᵀ da_t (BN-RNN 7), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 1 if summed else 2, state_grads, loop, added)
