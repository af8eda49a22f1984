"""Masked batch norm and layer norm on the GPU, mirror of refnorm/numpy_ref/norms.py.

Device functions work on one column (BN: statistics over the rows of a batch) or one row (LN:
statistics over the features) and are called by every thread of a block, each thread taking the
rows (BN) or features (LN) tid, tid + blockDim, ...; sums go through common.block_sum. The fused
step kernels of bn_lstm.py and ln_lstm.py call them; the kernels below run them over whole
(N, F) arrays, one block per column, for sequence-wise BN.
"""
import math

from numba import cuda, float64

from . import common
from .common import MAX_THREADS, block_sum


@cuda.jit(device=True)
def root(var, eps):
    """s = √(var + eps) (BN 4), (LN 3), with s = 0 (only eps = 0 and var = 0) read as s = ∞, so
    that z / s = 0 there: ẑ = 0 and dz = 0 (BN 15), (LN 11)."""
    s = math.sqrt(var + eps)
    return s if s > 0 else math.inf                        # np.where(s > 0, s, np.inf)


# -- batch norm: one column k of Z (N, F), the block's threads over the rows ----------------
@cuda.jit(device=True)
def column_count(m, buf):
    """n = m.sum() (BN 1), the rows in the statistics."""
    part = 0.0
    for r in range(cuda.threadIdx.x, m.shape[0], cuda.blockDim.x):
        part += m[r]
    return block_sum(part, buf)                            # n = m.sum()             (BN 1)


@cuda.jit(device=True)
def column_stats(Z, m, k, n, buf):
    """(BN 2), (BN 3) of column k over the rows with m = 1; n = max(m.sum(), 1)."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    part = 0.0
    for r in range(tid, Z.shape[0], nt):
        part += m[r] * Z[r, k]
    mean = block_sum(part, buf) / n                        # mean = (w * z).sum(axis=0) / n
    part = 0.0
    for r in range(tid, Z.shape[0], nt):
        d = Z[r, k] - mean
        part += m[r] * d * d
    var = block_sum(part, buf) / n                         # var = (w * (z - mean) ** 2).sum(0) / n
    return mean, var


@cuda.jit(device=True)
def column_normalize(Z, m, k, mean, var, eps, zhat):
    """(BN 4), (BN 5) / (BN 7) for column k: zhat = w * (z - mean) / root(var, eps)."""
    s = root(var, eps)                                     # (BN 15)
    for r in range(cuda.threadIdx.x, Z.shape[0], cuda.blockDim.x):
        zhat[r, k] = m[r] * (Z[r, k] - mean) / s           # w * (z - mean) / s       (BN 5)


@cuda.jit(device=True)
def column_backward(dy, zhat, var, m, gamma, k, n, eps, training, dz, buf):
    """(BN 9)-(BN 11) for column k: writes dz[:, k]. var, gamma are the column's scalars."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    s = root(var, eps)                                     # (BN 15): s = ∞ gives dz = 0
    if training:
        p1 = 0.0
        p2 = 0.0
        for r in range(tid, dy.shape[0], nt):
            dzh = dy[r, k] * gamma                         # dzhat = dy * gamma      (BN 9)
            p1 += m[r] * dzh
            p2 += m[r] * dzh * zhat[r, k]
        mean_dzhat = block_sum(p1, buf) / n                # (w * dzhat).sum(axis=0) / n
        mean_dzhat_zhat = block_sum(p2, buf) / n           # (w * dzhat * zhat).sum(axis=0) / n
        # dz = w / s * (dzhat - mean_dzhat - zhat * mean_dzhat_zhat)            (BN 10)
        for r in range(tid, dy.shape[0], nt):
            dzh = dy[r, k] * gamma
            dz[r, k] = m[r] / s * (dzh - mean_dzhat - zhat[r, k] * mean_dzhat_zhat)
    else:
        for r in range(tid, dy.shape[0], nt):
            dz[r, k] = m[r] * (dy[r, k] * gamma) / s       # dz = w * dzhat / s      (BN 11)


# -- layer norm: features lo .. lo+w-1 of row r of Z (N, F), the block's threads over them --
@cuda.jit(device=True)
def row_stats(Z, r, lo, w, buf):
    """(LN 1), (LN 2) of Z[r, lo:lo+w]."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    part = 0.0
    for k in range(lo + tid, lo + w, nt):
        part += Z[r, k]
    mean = block_sum(part, buf) / w                        # mean = zg.mean(axis=-1)
    part = 0.0
    for k in range(lo + tid, lo + w, nt):
        d = Z[r, k] - mean
        part += d * d
    var = block_sum(part, buf) / w                         # var = ((zg - mean) ** 2).mean(-1)
    return mean, var


@cuda.jit(device=True)
def row_normalize(Z, r, lo, w, mean, var, eps, zhat):
    """(LN 3), (LN 4): zhat = (zg - mean) / root(var, eps) on Z[r, lo:lo+w]."""
    s = root(var, eps)                                     # (LN 11)
    for k in range(lo + cuda.threadIdx.x, lo + w, cuda.blockDim.x):
        zhat[r, k] = (Z[r, k] - mean) / s                  # (zg - mean) / s         (LN 4)


@cuda.jit(device=True)
def row_backward(dy, zhat, var, gamma, r, lo, w, eps, dz, buf):
    """(LN 7), (LN 8) on features lo .. lo+w-1 of row r: writes dz[r, lo:lo+w]."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    p1 = 0.0
    p2 = 0.0
    for k in range(lo + tid, lo + w, nt):
        dzh = dy[r, k] * gamma[k]                          # dzhat = dy * gamma      (LN 7)
        p1 += dzh
        p2 += dzh * zhat[r, k]
    m1 = block_sum(p1, buf) / w                            # dzhat.mean(axis=-1)
    m2 = block_sum(p2, buf) / w                            # (dzhat * zh).mean(axis=-1)
    s = root(var, eps)                                     # (LN 11): s = ∞ gives dz = 0
    for k in range(lo + tid, lo + w, nt):                  # (dzhat - m1 - zh * m2) / s  (LN 8)
        dz[r, k] = (dy[r, k] * gamma[k] - m1 - zhat[r, k] * m2) / s


# -- whole-array batch norm, one block per column (sequence-wise BN) -------------------------
@cuda.jit
def batchnorm_forward_kernel(Z, m, gamma, beta, eps, training, mean, var, zhat, y):
    """batchnorm_forward over the N rows of Z (N, F): training writes mean, var (F,),
    inference reads them; writes zhat and y = gamma * zhat + beta."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    k = cuda.blockIdx.x
    if training:
        n = max(column_count(m, buf), 1.0)                 # n = max(m.sum(), 1)     (BN 1)
        mu, v = column_stats(Z, m, k, n, buf)              # (BN 2), (BN 3)
        if cuda.threadIdx.x == 0:
            mean[k] = mu
            var[k] = v
    else:
        mu, v = mean[k], var[k]                            # pop = (mean, var)        (BN 7)
    column_normalize(Z, m, k, mu, v, eps, zhat)            # (BN 4), (BN 5)
    for r in range(cuda.threadIdx.x, Z.shape[0], cuda.blockDim.x):
        y[r, k] = gamma[k] * zhat[r, k] + beta[k]          # y = gamma * zhat + beta  (BN 6)


@cuda.jit
def batchnorm_backward_kernel(dy, zhat, var, m, gamma, eps, training, dz):
    """batchnorm_backward's dz over the N rows (dgamma, dbeta: common.column_sums)."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    k = cuda.blockIdx.x
    n = max(column_count(m, buf), 1.0)                     # n = max(m.sum(), 1)
    column_backward(dy, zhat, var[k], m, gamma[k], k, n, eps, training, dz, buf)  # (BN 10), (11)


def batchnorm_forward(Z, m, gamma, beta, eps, training, mean, var, zhat, y):
    batchnorm_forward_kernel[Z.shape[1], common.THREADS](Z, m, gamma, beta, eps, training,
                                                         mean, var, zhat, y)


def batchnorm_backward(dy, zhat, var, m, gamma, eps, training, dz):
    batchnorm_backward_kernel[dy.shape[1], common.THREADS](dy, zhat, var, m, gamma, eps,
                                                           training, dz)
