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
    """(BN 8)-(BN 11). Writes dz (N, F); adds to dgamma, dbeta (F,) (dbeta may be size 0)."""
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
            d = dy[r, k]
            dgamma[k] += d * zhat[r, k]                    # dgamma = (dy * zhat).sum(axis=0)
            dzh = d * gamma[k]                             # dzhat = dy * gamma
            mean_dzhat[k] += w * dzh                       # (w * dzhat).sum(axis=0)
            mean_dzhat_zhat[k] += w * dzh * zhat[r, k]     # (w * dzhat * zhat).sum(axis=0)
    if dbeta.size:
        for r in range(N):
            for k in range(F):
                dbeta[k] += dy[r, k]                       # dbeta = dy.sum(axis=0)
    for k in range(F):
        mean_dzhat[k] /= nn
        mean_dzhat_zhat[k] /= nn
    if not training:                                       # dz = w * dzhat / s
        mean_dzhat[:] = 0
        mean_dzhat_zhat[:] = 0
    for r in range(N):
        w = m[r]
        for k in range(F):   # dz = w / s * (dzhat - mean_dzhat - zhat * mean_dzhat_zhat)
            dz[r, k] = w * inv_s[k] * (dy[r, k] * gamma[k] - mean_dzhat[k]
                                       - zhat[r, k] * mean_dzhat_zhat[k])


@njit(**JIT)
def layernorm_forward(z, eps, groups, zhat, mean, var):
    """(LN 1)-(LN 4) per row of z (N, F) over each of `groups` blocks: zhat (N, F), mean and
    var (N, groups)."""
    N, F = z.shape
    w = F // groups
    for r in range(N):
        for q in range(groups):
            lo = q * w
            mu = 0.0
            for k in range(lo, lo + w):
                mu += z[r, k]
            mu /= w                                        # mean = zg.mean(axis=-1)
            v = 0.0
            for k in range(lo, lo + w):
                d = z[r, k] - mu
                v += d * d
            v /= w                                         # var = ((zg - mean) ** 2).mean(-1)
            inv_s = 1 / math.sqrt(v + eps)
            for k in range(lo, lo + w):
                zhat[r, k] = (z[r, k] - mu) * inv_s        # zhat = (zg - mean) / sqrt(var + eps)
            mean[r, q] = mu
            var[r, q] = v


@njit(**JIT)
def layernorm_backward(dy, zhat, var, gamma, eps, groups, dz, dgamma, dbeta):
    """(LN 6)-(LN 8). Writes dz (N, F); adds to dgamma, dbeta (F,) (dbeta may be size 0)."""
    N, F = dy.shape
    w = F // groups
    for r in range(N):
        for q in range(groups):
            lo = q * w
            m1 = 0.0
            m2 = 0.0
            for k in range(lo, lo + w):
                d = dy[r, k]
                dgamma[k] += d * zhat[r, k]                # dgamma = (dy * zhat).sum(axis=0)
                dzh = d * gamma[k]                         # dzhat = dy * gamma
                m1 += dzh
                m2 += dzh * zhat[r, k]
            m1 /= w                                        # dzhat.mean(-1)
            m2 /= w                                        # (dzhat * zh).mean(-1)
            inv_s = 1 / math.sqrt(var[r, q] + eps)
            for k in range(lo, lo + w):                    # (dzhat - m1 - zh * m2) / s
                dz[r, k] = (dy[r, k] * gamma[k] - m1 - zhat[r, k] * m2) * inv_s
    if dbeta.size:
        for r in range(N):
            for k in range(F):
                dbeta[k] += dy[r, k]                       # dbeta = dy.sum(axis=0)
