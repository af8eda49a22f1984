"""Pieces shared by every cell of the CUDA backend, mirror of refnorm/numpy_ref/common.py.

The one place for the backend's launch knobs (tests patch them small so that tiny inputs cross
block and tile boundaries on the simulator; they are read at every launch):

    THREADS   threads per block of the 1-D kernels: elementwise kernels, and the block
              reductions of the fused step kernels (one block per hidden unit for BN, over the
              batch; one block per row for LN, over the features)
    TILE      edge of the square shared-memory tiles of the refnorm matmul kernel
    USE_CUBLAS  use CuPy's matmul (cuBLAS) for the products when CuPy imports and a real GPU is
              in use; False, or the simulator, or no CuPy: the refnorm tiled kernel

Arrays: every backend function accepts NumPy arrays (copied to the device and results copied
back: NumPy in, NumPy out, caches of NumPy arrays) or device arrays (numba device arrays or
anything with __cuda_array_interface__: CuPy arrays, PyTorch CUDA tensors; then outputs and cache
fields stay numba device arrays, no copies). The module imports on any machine; the first launch
raises a RuntimeError that says what is missing.

Block reductions accumulate in float64 shared memory whatever the data type (float32 statistics
are then at least as accurate as the reference's); the matmul accumulates in the data type.
"""
import functools
import math

import numba
import numpy as np
from numba import cuda

THREADS = 128
TILE = 16
USE_CUBLAS = True
MAX_THREADS = 1024        # size of the shared reduction buffers: THREADS must not exceed it


# -- the device and its arrays -------------------------------------------------------------
def require_device():
    """RuntimeError naming what is missing when neither a GPU nor the simulator is there."""
    if not 1 <= THREADS <= MAX_THREADS or TILE < 1:
        raise RuntimeError(f"refnorm.numba_cuda.common: THREADS must be in 1..{MAX_THREADS} and "
                           f"TILE >= 1, got THREADS={THREADS}, TILE={TILE}")
    if numba.config.ENABLE_CUDASIM:
        return
    if not cuda.is_available():
        raise RuntimeError("backend='cuda' needs an NVIDIA GPU with a working driver and "
                           "numba-cuda's CUDA libraries (pip install 'numba-cuda[cu12]'), or the "
                           "CUDA simulator (set NUMBA_ENABLE_CUDASIM=1 before numba is imported); "
                           "numba.cuda.is_available() is False here")


def is_device_array(a):
    """True for numba device arrays (also the simulator's) and __cuda_array_interface__ objects."""
    if isinstance(a, np.ndarray):
        return False
    if numba.config.ENABLE_CUDASIM:
        return type(a).__name__ == "FakeCUDAArray"
    return cuda.is_cuda_array(a)


def to_device(a):
    """A numba device array holding a: no copy for device arrays, a copy for host arrays."""
    if is_device_array(a):
        return a if numba.config.ENABLE_CUDASIM or cuda.devicearray.is_cuda_ndarray(a) \
            else cuda.as_cuda_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    return cuda.device_array(shape, dtype)


def zeros(shape, dtype):
    return cuda.to_device(np.zeros(shape, dtype))


def finish(on_device, arrays):
    """Copy a dict of device arrays back to the host unless the caller works on the device."""
    if on_device:
        return arrays
    return {k: (v.copy_to_host() if is_device_array(v) else v) for k, v in arrays.items()}


def grid(n):
    """Blocks for n threads of THREADS each."""
    return max(1, (n + THREADS - 1) // THREADS)


# -- device helpers -----------------------------------------------------------------------
@cuda.jit(device=True)
def sigmoid(z):
    # e = np.exp(-np.abs(z)); np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    e = math.exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


@cuda.jit(device=True)
def block_sum(v, buf):
    """Σ of v over the threads of the block (pairwise tree in buf, float64 shared (MAX_THREADS,));
    every thread gets the total. Every thread of the block must call it."""
    tid = cuda.threadIdx.x
    n = cuda.blockDim.x
    buf[tid] = v
    cuda.syncthreads()
    stride = 1
    while stride < n:
        if tid % (2 * stride) == 0 and tid + stride < n:
            buf[tid] += buf[tid + stride]
        stride *= 2
        cuda.syncthreads()
    total = buf[0]
    cuda.syncthreads()                                     # buf is free again for the next sum
    return total


# -- matrix products ----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def matmul_kernel(tile, dtype):
    """The tiled shared-memory kernel C = op(A) @ op(B) for one tile edge and dtype (shared
    arrays need both at compile time). Block (tile, tile) per tile of C; grid over C."""
    nbtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def matmul(A, B, C, trans_a, trans_b):
        # C = (A.T if trans_a else A) @ (B.T if trans_b else B)
        sa = cuda.shared.array((tile, tile), nbtype)
        sb = cuda.shared.array((tile, tile), nbtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * tile + ty
        col = cuda.blockIdx.x * tile + tx
        M, N = C.shape
        K = A.shape[0] if trans_a else A.shape[1]
        zero = nbtype(0)
        acc = nbtype(0)
        for k0 in range(0, K, tile):
            ka = k0 + tx                                   # this thread loads A[row, ka]
            if row < M and ka < K:
                sa[ty, tx] = A[ka, row] if trans_a else A[row, ka]
            else:
                sa[ty, tx] = zero
            kb = k0 + ty                                   # and B[kb, col]
            if kb < K and col < N:
                sb[ty, tx] = B[col, kb] if trans_b else B[kb, col]
            else:
                sb[ty, tx] = zero
            cuda.syncthreads()
            for kk in range(tile):
                acc += sa[ty, kk] * sb[kk, tx]             # Σ_k A[row, k] B[k, col]
            cuda.syncthreads()
        if row < M and col < N:
            C[row, col] = acc

    return matmul


def cublas_available():
    """CuPy on a real GPU (never on the simulator, whose arrays CuPy cannot see)."""
    if not USE_CUBLAS or numba.config.ENABLE_CUDASIM:
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def matmul(A, B, C, trans_a=False, trans_b=False):
    """C (M, N) = op(A) @ op(B) on 2-D device arrays, by cuBLAS when cublas_available(), else
    by the refnorm tiled kernel."""
    if cublas_available():                                 # optional fast path (real GPU + CuPy)
        import cupy
        a, b = cupy.asarray(A), cupy.asarray(B)
        cupy.matmul(a.T if trans_a else a, b.T if trans_b else b, out=cupy.asarray(C))
        return C
    M, N = C.shape
    blocks = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
    matmul_kernel(TILE, C.dtype)[blocks, (TILE, TILE)](A, B, C, trans_a, trans_b)
    return C


def flat(a):
    """(T, B, F) device array as (T·B, F), no copy."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2])


# -- small kernels shared by the cells ------------------------------------------------------
@cuda.jit
def add_row_kernel(Z, v, out):
    # out = Z + v   (Z (N, F), v (F,)): U = x @ params["Wx"] + params["b"]
    i = cuda.grid(1)
    N, F = Z.shape
    if i < N * F:
        r, k = i // F, i % F
        out[r, k] = Z[r, k] + v[k]


@cuda.jit
def carry_grad_kernel(dH, dh_rec, m):
    # dh_prev = (1 - valid) * dH + da @ p["Wh"].T                       (BPTT 6)
    i = cuda.grid(1)
    B, H = dH.shape
    if i < B * H:
        r, j = i // H, i % H
        dH[r, j] = (1 - m[r]) * dH[r, j] + dh_rec[r, j]


@cuda.jit
def column_sums_kernel(P, Q, out):
    # out = (P * Q).sum(axis=0), or P.sum(axis=0) when Q has no rows: dgamma, db  (BPTT 7)
    k = cuda.grid(1)
    N, F = P.shape
    if k < F:
        acc = 0.0
        if Q.shape[0] == 0:
            for r in range(N):
                acc += P[r, k]
        else:
            for r in range(N):
                acc += P[r, k] * Q[r, k]
        out[k] = acc


def column_sums(P, Q=None):
    """(P ⊙ Q).sum over the rows of (N, F) device arrays (Q None: P.sum), as a (F,) device array."""
    out = empty(P.shape[1], P.dtype)
    if Q is None:
        Q = empty((0, P.shape[1]), P.dtype)
    column_sums_kernel[grid(P.shape[1]), THREADS](P, Q, out)
    return out


def add_row(Z, v):
    out = empty(Z.shape, Z.dtype)
    add_row_kernel[grid(Z.shape[0] * Z.shape[1]), THREADS](Z, v, out)
    return out


def input_projection(x, Wx, b=None):
    """U = x @ Wx (+ b) over all T·B frames (BPTT 8): (T, B, 4H) device array."""
    T, B, _ = x.shape
    G = Wx.shape[1]
    U = empty((T, B, G), x.dtype)
    matmul(flat(x), Wx, flat(U))
    if b is not None:
        U = add_row(flat(U), b).reshape(T, B, G)
    return U


def input_projection_backward(x, dU, Wx):
    """(BPTT 8) dWx = X_flatᵀ dU_flat, dX = dU Wxᵀ, on the device."""
    T, B, D = x.shape
    G = Wx.shape[1]
    dWx = empty((D, G), x.dtype)
    matmul(flat(x), flat(dU), dWx, trans_a=True)          # x.reshape(-1, D).T @ dU.reshape(-1, G)
    dx = empty((T, B, D), x.dtype)
    matmul(flat(dU), Wx, flat(dx), trans_b=True)           # dU @ Wx.T
    return dWx, dx


def recurrent_weight_grad(h, dZ):
    """dWh = Σ_t h_{t-1}ᵀ dz_t as one product over all T·B rows (LSTM 9), (BPTT 7)."""
    T1, B, H = h.shape
    G = dZ.shape[2]
    dWh = empty((H, G), dZ.dtype)
    matmul(h[:-1].reshape((T1 - 1) * B, H), flat(dZ), dWh, trans_a=True)
    return dWh


def carry_grad(dH, dh_rec, m):
    carry_grad_kernel[grid(dH.size), THREADS](dH, dh_rec, m)
