"""Masked batch norm and layer norm as fused loops, mirror of refnorm/numpy_ref/norms.py.

Row-major loops (rows outer, features inner) with per-feature accumulators, so the inner loops
run over contiguous memory. Each loop carries the NumPy line of the reference it implements.
Inner loops hold no branch and no division (1/s is taken once per feature or row and
multiplied), so they vectorise; the result differs from the reference's x / s by a rounding.
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


@njit(**JIT)
def batchnorm_stats(z, m, mean, var):
    """(BN 1)-(BN 3) over the rows of z (N, F) with m = 1, into mean, var (F,). Returns n."""
    N, F = z.shape
    n = 0.0
    for r in range(N):
        n += m[r]                                          # n = m.sum()
    nn = max(n, 1.0)
    mean[:] = 0.0
    for r in range(N):
        if m[r] > 0:
            for k in range(F):
                mean[k] += z[r, k]
    for k in range(F):
        mean[k] /= nn                                      # mean = (w * z).sum(axis=0) / n
    var[:] = 0.0
    for r in range(N):
        if m[r] > 0:
            for k in range(F):
                d = z[r, k] - mean[k]
                var[k] += d * d
    for k in range(F):
        var[k] /= nn                                       # var = (w * (z - mean) ** 2).sum(0) / n
    return n


@njit(**JIT)
def batchnorm_normalize(z, m, mean, var, eps, zhat):
    """(BN 4), (BN 5) / (BN 7): zhat = w * (z - mean) / np.sqrt(var + eps)."""
    N, F = z.shape
    inv_s = 1 / np.sqrt(var + eps)
    for r in range(N):
        w = m[r]
        for k in range(F):
            zhat[r, k] = w * (z[r, k] - mean[k]) * inv_s[k]   # w * (z - mean) / s  (BN 5)


@njit(**JIT)
def batchnorm_backward(dy, zhat, var, m, gamma, eps, training, dz, dgamma, dbeta):
    """(BN 8)-(BN 11). Writes dz (N, F); adds to dgamma, dbeta (F,) (dbeta may be size 0).
    Each loop adds into one accumulator (see the note above common.I)."""
    N, F = dy.shape
    inv_s = 1 / np.sqrt(var + eps)
    n = 0.0
    for r in range(N):
        n += m[r]
    nn = max(n, 1.0)
    mean_dzhat = np.zeros(F, dy.dtype)
    mean_dzhat_zhat = np.zeros(F, dy.dtype)
    for r in range(N):
        w = m[r]
        for k in range(F):
            dgamma[k] += dy[r, k] * zhat[r, k]             # dgamma = (dy * zhat).sum(axis=0)
        if training:                                       # dzhat = dy * gamma
            for k in range(F):
                mean_dzhat[k] += w * dy[r, k] * gamma[k]   # (w * dzhat).sum(axis=0)
            for k in range(F):                             # (w * dzhat * zhat).sum(axis=0)
                mean_dzhat_zhat[k] += w * dy[r, k] * gamma[k] * zhat[r, k]
        if dbeta.size:
            for k in range(F):
                dbeta[k] += dy[r, k]                       # dbeta = dy.sum(axis=0)
    for k in range(F):   # zero in inference, where dz = w * dzhat / s
        mean_dzhat[k] /= nn
        mean_dzhat_zhat[k] /= nn
    for r in range(N):
        w = m[r]
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
            inv_s = 1 / math.sqrt(v + eps)
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
            inv_s = 1 / math.sqrt(var[r, q] + eps)
            for k in range(w):                             # (dzhat - m1 - zh * m2) / s
                dz3[r, q, k] = (dy3[r, q, k] * gamma2[q, k] - m1 - zhat3[r, q, k] * m2) * inv_s
    if dbeta.size:
        for r in range(N):
            for k in range(F):
                dbeta[k] += dy[r, k]                       # dbeta = dy.sum(axis=0)
