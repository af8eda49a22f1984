"""Masked batch norm and layer norm as fused loops, mirror of refnorm/numpy_ref/norms.py.

Row-major loops (rows outer, features inner) with per-feature accumulators, so the inner loops
run over contiguous memory. Each loop carries the NumPy line of the reference it implements.
Inner loops hold no branch and no division (1/s is taken once per feature or row and
multiplied), so they vectorise; the result differs from the reference's x / s by a rounding.
1/s comes from inverse_root, which reads s = 0 (eps = 0, zero variance) as ∞: 1/s = 0
(BN 15), (LN 11).

The step loops of bn_lstm.py and ln_lstm.py compile these functions into themselves, and Numba
checks a cached loop against its own file only: refnorm's cache folder is keyed to every file
of this package (refnorm.numba_cpu.refnorm_cache_dir), so a change here recompiles them.
"""
import math

import numpy as np
from numba import njit

from .common import JIT

# The row sums of layer norm may be reordered: with fastmath's `reassoc` (and nothing else) LLVM
# splits them over SIMD lanes instead of waiting on one accumulator per add. Only these sums
# carry the flag; the reordering changes a sum by a rounding, as NumPy's own pairwise sum does.
REDUCE = dict(JIT, fastmath={"reassoc"})


@njit(**REDUCE)
def mean_var(z3, r, q):
    """Mean and biased variance of the block z3[r, q, :], two passes, accumulated in float64."""
    w = z3.shape[2]
    mu = 0.0
    for k in range(w):
        mu += z3[r, q, k]
    mu /= w                                                # mean = zg.mean(axis=-1)
    v = 0.0
    for k in range(w):
        d = z3[r, q, k] - mu
        v += d * d
    return mu, v / w                                       # var = ((zg - mean) ** 2).mean(-1)


@njit(**REDUCE)
def mean_dzhat(dy3, gamma2, zhat3, r, q):
    """The two block means of the LN backward with dzhat = dy * gamma, over block q of row r:
    (dzhat.mean(), (dzhat * zhat).mean()), accumulated in float64."""
    w = dy3.shape[2]
    m1 = 0.0
    m2 = 0.0
    for k in range(w):
        dzh = dy3[r, q, k] * gamma2[q, k]                  # dzhat = dy * gamma
        m1 += dzh
        m2 += dzh * zhat3[r, q, k]
    return m1 / w, m2 / w                                  # dzhat.mean(-1), (dzhat * zh).mean(-1)


@njit(inline="always", **JIT)
def inverse_root(v, eps):
    """1 / s with s = √(v + eps) (BN 4), (LN 3), and s = 0 (only eps = 0 and v = 0) read as
    s = ∞, so 1 / s = 0: ẑ = 0 and dz = 0 there (BN 15), (LN 11)."""
    s = math.sqrt(v + eps)
    return 1 / (s if s > 0 else math.inf)                  # 1 / s, s = root(var, eps)  (BN 15)


@njit(**JIT)
def batchnorm_stats(z, m, mean, var):
    """(BN 1)-(BN 3) over the rows of z (N, F) with m = 1, into mean, var (F,). Returns n."""
    counts = np.empty(1)
    parts = np.empty((1, 3, z.shape[1]), z.dtype)
    counts[0] = batchnorm_block_stats(z, m, parts[0])       # all rows, one block   (BN 16)
    batchnorm_join_stats(counts, parts, mean, var)          # mean, var             (BN 2), (BN 3)
    return counts[0]


@njit(**JIT)
def batchnorm_block_stats(z, m, part):
    """One block of rows' share of (BN 1)-(BN 3) (all the rows, or one thread's: barrier.py):
    part[0] = Σ z and part[2] = Σ (z − part[1])² over its rows with m = 1, part[1] = part[0] / n_b
    its own mean, two passes. Returns n_b = Σ m over its rows."""
    N, F = z.shape
    n = 0.0
    for r in range(N):
        n += m[r]                                          # n = m.sum()
    nn = max(n, 1.0)
    total, mean, m2 = part[0], part[1], part[2]
    total[:] = 0.0
    for r in range(N):
        if m[r] > 0:
            for k in range(F):
                total[k] += z[r, k]                        # (w * z).sum(axis=0)
    for k in range(F):
        mean[k] = total[k] / nn                            # mean = (w * z).sum(axis=0) / n
    m2[:] = 0.0
    for r in range(N):
        if m[r] > 0:
            for k in range(F):
                d = z[r, k] - mean[k]
                m2[k] += d * d                             # (w * (z - mean) ** 2).sum(0)
    return n


@njit(**JIT)
def batchnorm_join_stats(counts, parts, mean, var):
    """mean, var (BN 2), (BN 3) of all the blocks' rows from each block's count and part
    (batchnorm_block_stats), in block order (BN 16): mean = Σ_b Σz_b / n, var = Σ_b (M2_b +
    n_b (z̄_b − mean)²) / n. With one block z̄_b is mean itself, and mean, var are
    batchnorm_block_stats' two passes to the bit."""
    n = 0.0
    for b in range(counts.shape[0]):
        n += counts[b]
    nn = max(n, 1.0)
    F = mean.shape[0]
    mean[:] = 0.0
    for b in range(counts.shape[0]):
        for k in range(F):
            mean[k] += parts[b, 0, k]
    for k in range(F):
        mean[k] /= nn                                      # mean = (w * z).sum(axis=0) / n
    var[:] = 0.0
    for b in range(counts.shape[0]):
        for k in range(F):
            d = parts[b, 1, k] - mean[k]
            var[k] += parts[b, 2, k] + counts[b] * d * d
    for k in range(F):
        var[k] /= nn                                       # var = (w * (z - mean) ** 2).sum(0) / n
    return n


@njit(**JIT)
def batchnorm_normalize(z, m, mean, var, eps, zhat):
    """(BN 4), (BN 5) / (BN 7), (BN 15): zhat = w * (z - mean) / root(var, eps)."""
    N, F = z.shape
    inv_s = np.empty_like(var)
    for k in range(F):
        inv_s[k] = inverse_root(var[k], eps)               # 1 / root(var, eps)
    for r in range(N):
        w = m[r]
        for k in range(F):
            zhat[r, k] = w * (z[r, k] - mean[k]) * inv_s[k]   # w * (z - mean) / s  (BN 5)


@njit(**JIT)
def batchnorm_backward(dy, zhat, var, m, gamma, eps, training, dz, dgamma, dbeta):
    """(BN 8)-(BN 11). Writes dz (N, F); adds to dgamma, dbeta (F,) (dbeta may be size 0).

    γ is one number per feature, so the two means of (BN 10) are γ ⊙ mean(m dy) and
    γ ⊙ mean(m dy ⊙ ẑ); and m_r ẑ_r = ẑ_r, as the forward left ẑ = 0 on the rows outside the
    statistics (BN 5), so Σ m dy ⊙ ẑ is dgamma's own sum. One pass over the rows accumulates
    the sums (batchnorm_block_grad_sums), a second writes dz (batchnorm_backward_rows).

    dz may be dy itself (seq_bn_lstm_backward turns dV into dU in place), or must not overlap
    it."""
    F = dy.shape[1]
    counts = np.empty(1)
    parts = np.empty((1, 3, F), dy.dtype)
    terms = np.empty((5, F), dy.dtype)
    counts[0] = batchnorm_block_grad_sums(dy, zhat, m, parts[0])
    batchnorm_join_grad_sums(counts, parts, var, gamma, eps, training, terms)
    for k in range(F):
        dgamma[k] += terms[3, k]                           # dgamma = (dy * zhat).sum(axis=0)
    if dbeta.size:
        for k in range(F):
            dbeta[k] += terms[4, k]                        # dbeta = dy.sum(axis=0)
    batchnorm_backward_rows(dy, zhat, m, gamma, terms, dz)


@njit(**JIT)
def batchnorm_block_grad_sums(dy, zhat, m, part):
    """One block of rows' sums for (BN 9)-(BN 11) (all the rows, or one thread's): part[0] =
    Σ m dy, part[1] = Σ dy ⊙ ẑ, part[2] = Σ dy over its rows. Returns n_b = Σ m."""
    N, F = dy.shape
    n = 0.0
    for r in range(N):
        n += m[r]
    sum_dy, sum_dy_zhat, sum_all = part[0], part[1], part[2]
    part[:] = 0.0
    for r in range(N):
        w = m[r]
        for k in range(F):
            sum_dy[k] += w * dy[r, k]                      # (w * dy).sum(axis=0)
            sum_dy_zhat[k] += dy[r, k] * zhat[r, k]        # (dy * zhat).sum(axis=0)
    for r in range(N):
        for k in range(F):
            sum_all[k] += dy[r, k]                         # dy.sum(axis=0)
    return n


@njit(**JIT)
def batchnorm_join_grad_sums(counts, parts, var, gamma, eps, training, terms):
    """From the blocks' counts and sums (batchnorm_block_grad_sums), added in block order (BN 16):
    terms[0] = 1 / s, terms[1] = mean(m dẑ) and terms[2] = mean(m dẑ ⊙ ẑ) (both 0 in
    inference), which batchnorm_backward_rows reads; terms[3] = Σ dy ⊙ ẑ (dgamma's sum) and
    terms[4] = Σ dy (dbeta's)."""
    n = 0.0
    for b in range(counts.shape[0]):
        n += counts[b]
    nn = max(n, 1.0)
    F = var.shape[0]
    inv_s, mean_dzhat, mean_dzhat_zhat = terms[0], terms[1], terms[2]
    sum_dy_zhat, sum_all = terms[3], terms[4]
    sum_dy = np.zeros(F, terms.dtype)
    sum_dy_zhat[:] = 0.0
    sum_all[:] = 0.0
    for b in range(counts.shape[0]):
        for k in range(F):
            sum_dy[k] += parts[b, 0, k]
        for k in range(F):
            sum_dy_zhat[k] += parts[b, 1, k]
        for k in range(F):
            sum_all[k] += parts[b, 2, k]
    for k in range(F):
        inv_s[k] = inverse_root(var[k], eps)               # s = root(var, eps)  (BN 15)
        mean_dzhat[k] = 0.0                                # stay 0 in inference: dz = w * dzhat / s
        mean_dzhat_zhat[k] = 0.0
    if training:
        for k in range(F):
            mean_dzhat[k] = gamma[k] * sum_dy[k] / nn      # (w * dzhat).sum(axis=0) / n
            mean_dzhat_zhat[k] = gamma[k] * sum_dy_zhat[k] / nn  # (w * dzhat * zhat).sum(0) / n


@njit(**JIT)
def batchnorm_backward_rows(dy, zhat, m, gamma, terms, dz):
    """dz = m / s ⊙ (dẑ − mean(dẑ) − ẑ ⊙ mean(dẑ ⊙ ẑ)) (BN 10) on the rows given (all, or one
    thread's block: views of dy, zhat, m, dz), from batchnorm_join_grad_sums' terms.

    In place (dz is dy), each row of dy is copied before that row of dz is written: a loop
    writing the array it reads fails LLVM's run-time overlap check and runs scalar (on (1600,
    256) the naive in-place pass took 1.5x its time in float64, 3.6x in float32)."""
    N, F = dy.shape
    inv_s, mean_dzhat, mean_dzhat_zhat = terms[0], terms[1], terms[2]
    in_place = dz.ctypes.data == dy.ctypes.data
    row = np.empty(F if in_place else 0, dy.dtype)
    for r in range(N):
        w = m[r]
        if in_place:
            for k in range(F):
                row[k] = dy[r, k]                          # = dy[r].copy()
            for k in range(F):   # dz = w / s * (dzhat - mean_dzhat - zhat * mean_dzhat_zhat)
                dz[r, k] = w * inv_s[k] * (row[k] * gamma[k] - mean_dzhat[k]
                                           - zhat[r, k] * mean_dzhat_zhat[k])
        else:
            for k in range(F):   # dz = w / s * (dzhat - mean_dzhat - zhat * mean_dzhat_zhat)
                dz[r, k] = w * inv_s[k] * (dy[r, k] * gamma[k] - mean_dzhat[k]
                                           - zhat[r, k] * mean_dzhat_zhat[k])


@njit(**JIT)
def layernorm_forward(z, eps, groups, zhat, mean, var):
    """(LN 1)-(LN 4) per row of z (N, F) over each of `groups` blocks: zhat (N, F), mean and
    var (N, groups). Block q of row r is z3[r, q, :] of the (N, groups, F / groups) reshape
    (see the note above common.I)."""
    N, F = z.shape
    w = F // groups
    z3, zhat3 = z.reshape((N, groups, w)), zhat.reshape((N, groups, w))
    for r in range(N):
        for q in range(groups):
            mu, v = mean_var(z3, r, q)                     # (LN 1), (LN 2)
            inv_s = inverse_root(v, eps)                   # 1 / root(var, eps)  (LN 11)
            for k in range(w):                             # zhat = (zg - mean) / sqrt(var + eps)
                zhat3[r, q, k] = (z3[r, q, k] - mu) * inv_s
            mean[r, q] = mu
            var[r, q] = v


@njit(**JIT)
def layernorm_backward(dy, zhat, var, gamma, eps, groups, dz, dgamma, dbeta):
    """(LN 6)-(LN 8). Writes dz (N, F); adds to dgamma, dbeta (F,) (dbeta may be size 0)."""
    N, F = dy.shape
    w = F // groups
    dy3, zhat3 = dy.reshape((N, groups, w)), zhat.reshape((N, groups, w))
    dz3 = dz.reshape((N, groups, w))
    gamma2 = gamma.reshape((groups, w))
    for r in range(N):
        for k in range(F):
            dgamma[k] += dy[r, k] * zhat[r, k]             # dgamma = (dy * zhat).sum(axis=0)
        for q in range(groups):
            m1, m2 = mean_dzhat(dy3, gamma2, zhat3, r, q)  # dzhat = dy * gamma; its two means
            inv_s = inverse_root(var[r, q], eps)           # s = root(var, eps)  (LN 11)
            for k in range(w):                             # (dzhat - m1 - zh * m2) / s
                dz3[r, q, k] = (dy3[r, q, k] * gamma2[q, k] - m1 - zhat3[r, q, k] * m2) * inv_s
    if dbeta.size:
        for r in range(N):
            for k in range(F):
                dbeta[k] += dy[r, k]                       # dbeta = dy.sum(axis=0)
