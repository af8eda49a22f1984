"""Pieces shared by every cell of the CUDA backend, mirror of refnorm/numpy_ref/common.py.

The one place for the backend's launch knobs (tests patch them small so that tiny inputs cross
block and tile boundaries on the simulator; they are read at every launch):

    THREADS   threads per block of the 1-D kernels: elementwise kernels, and the block
              reductions of the fused step kernels (one block per hidden unit for BN, over the
              batch; one block per row for LN, over the features)
    TILE      edge of the square shared-memory tiles of the refnorm matmul kernel
    USE_CUBLAS  use cuBLAS (through CuPy, else a CUDA build of PyTorch) for the products on a
              real GPU when one of them imports; False, the simulator, or neither: the refnorm
              tiled kernel (read once per sequence by step_product, at every call by matmul)

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

# The variants (derivations/variants.md) reach the kernels as integers; 0 is the papers' cell.
CARRY_MODES = {"raw": 0, "normalized": 1}           # carry= of BN-LSTM, LN-LSTM  (VAR 3)
TERMS_MODES = {"separate": 0, "summed": 1}          # terms= of LN-LSTM           (VAR 5)


# -- the device and its arrays -------------------------------------------------------------
def stat_mask(mask, pad_stats):
    """The rows that enter the BN statistics: the validity mask (pad_stats="exclude") or all
    ones (pad_stats="include"), on the side (host or device) the mask lives on."""
    if pad_stats == "exclude":
        return mask
    if is_device_array(mask):
        return to_device(np.ones(tuple(mask.shape), to_device(mask).dtype))
    return np.ones_like(mask)


def require_device():
    """RuntimeError naming what is missing when neither a GPU nor the simulator is there."""
    if not 1 <= THREADS <= MAX_THREADS or not 1 <= TILE <= 32:     # TILE² threads per block
        raise RuntimeError(f"refnorm.numba_cuda.common: THREADS must be in 1..{MAX_THREADS} and "
                           f"TILE in 1..32, got THREADS={THREADS}, TILE={TILE}")
    if numba.config.ENABLE_CUDASIM:
        return
    if not cuda.is_available():
        raise RuntimeError("backend='cuda' needs an NVIDIA GPU with a working driver and "
                           "numba-cuda's CUDA libraries (pip install 'numba-cuda[cu12]'), or the "
                           "CUDA simulator (set NUMBA_ENABLE_CUDASIM=1 before numba is imported); "
                           "numba.cuda.is_available() is False here")


def kernel_mode(modes, value, name):
    """The kernels' integer for an option's value (ValueError for a value not in modes)."""
    if value not in modes:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, modes))}, got {value!r}")
    return modes[value]


def usable():
    """True where backend='cuda' runs on a real GPU. refnorm.available_backends() lists the
    backend only then: the simulator runs it ~10^4 times slower (tests opt in to it), and
    without either the first call raises (require_device)."""
    return not numba.config.ENABLE_CUDASIM and cuda.is_available()


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
def normalized_preactivation(t, r, k, a_hat, u_hat, gamma_h, gamma_x, b, summed):
    """z_k of row r of step t: γ_h ⊙ â + γ_x ⊙ û + b (BN-LSTM 2), (LN-LSTM 2); with summed = 1
    (terms="summed", LN-LSTM only) γ_z ⊙ ŝ + b (VAR 5), ŝ and γ_z passed as a_hat, gamma_h
    (u_hat, gamma_x are not read)."""
    if summed:
        return gamma_h[k] * a_hat[t, r, k] + b[k]          # z = s_ln + p["b"]         (VAR 5)
    # z = a_ln + u_ln + p["b"]                               (BN-LSTM 2), (LN-LSTM 2)
    return gamma_h[k] * a_hat[t, r, k] + gamma_x[k] * u_hat[t, r, k] + b[k]


@cuda.jit(device=True)
def normalized_gates(t, r, j, a_hat, u_hat, gamma_h, gamma_x, b, summed, c, gates,
                     c_new):
    """For one (row r, hidden unit j) of step t of BN-LSTM / LN-LSTM:
    z by normalized_preactivation (BN-LSTM 2), (LN-LSTM 2), (VAR 5); gates (LSTM 2);
    c_new = f ⊙ c_prev + i ⊙ g (BN-LSTM 3), (LN-LSTM 3)."""
    H = c_new.shape[1]
    # z = a_ln + u_ln + p["b"] (or s_ln + p["b"]); gates = gates_forward(z)
    zi = normalized_preactivation(t, r, j, a_hat, u_hat, gamma_h, gamma_x, b, summed)
    zf = normalized_preactivation(t, r, H + j, a_hat, u_hat, gamma_h, gamma_x, b, summed)
    zg = normalized_preactivation(t, r, 2 * H + j, a_hat, u_hat, gamma_h, gamma_x, b, summed)
    zo = normalized_preactivation(t, r, 3 * H + j, a_hat, u_hat, gamma_h, gamma_x, b, summed)
    i = sigmoid(zi)
    f = sigmoid(zf)
    g = math.tanh(zg)
    gates[t, r, j] = i
    gates[t, r, H + j] = f
    gates[t, r, 2 * H + j] = g
    gates[t, r, 3 * H + j] = sigmoid(zo)
    c_new[r, j] = f * c[t, r, j] + i * g                   # c_new = f * c_prev + i * g


@cuda.jit(device=True)
def normalized_cell_backward(t, r, j, valid, carry_mode, dc_norm, gates, c, dC, dc, dZ):
    """For one (row r, hidden unit j) of step t of BN-LSTM / LN-LSTM, after the cell
    normalisation's backward wrote its result into dc[t]: the complete dc̃_t, the i, f, g blocks
    of dZ (LSTM 7), (LSTM 8), dc[t] = the carried state's gradient and dC <- dC_{t-1} (BPTT 6).
    dc_norm[t] holds the gradient that reached the normalised cell (with carry_mode 1 the carry
    part already in it, (VAR 4))."""
    H = dc.shape[2]
    i = gates[t, r, j]
    f = gates[t, r, H + j]
    g = gates[t, r, 2 * H + j]
    if carry_mode == 1:
        dc_new = dc[t, r, j]                           # dc_new = Nback(dc_norm)       (VAR 4)
        dc[t, r, j] = dc_norm[t, r, j]                 # dc_state = dc_norm            (VAR 4)
    else:
        dc_new = valid * dC[r, j] + dc[t, r, j]        # (BPTT 5), (BN-LSTM 7), (LN-LSTM 6)
        dc[t, r, j] = dc_new                           # dc_state = dc_new
    dZ[t, r, j] = dc_new * g * i * (1 - i)             # (LSTM 7), (LSTM 8)
    dZ[t, r, H + j] = dc_new * c[t, r, j] * f * (1 - f)
    dZ[t, r, 2 * H + j] = dc_new * i * (1 - g * g)
    dC[r, j] = (1 - valid) * dC[r, j] + dc_new * f     # (BPTT 6)


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
    total = buf[0]                                         # total = np.sum(v over the threads)
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


@functools.lru_cache(maxsize=None)
def cublas_provider():
    """The first importable library that brings cuBLAS for device arrays: CuPy, then a CUDA
    build of PyTorch; None on the simulator (its arrays have no __cuda_array_interface__)."""
    if numba.config.ENABLE_CUDASIM:
        return None
    try:
        import cupy  # noqa: F401
        return "cupy"
    except ImportError:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    return None


def cublas_available():
    return USE_CUBLAS and cublas_provider() is not None


def cublas_view(a):
    """The cuBLAS library's own array on a device array's memory (no copy)."""
    if cublas_provider() == "cupy":
        import cupy
        return cupy.asarray(a)
    import torch
    return torch.as_tensor(a, device="cuda")


def cublas_matmul(a, b, out):
    """out = a @ b on the library's arrays (views from cublas_view, transposes allowed)."""
    if cublas_provider() == "cupy":
        import cupy
        return cupy.matmul(a, b, out=out)
    import torch
    return torch.matmul(a, b, out=out)


def matmul(A, B, C, trans_a=False, trans_b=False):
    """C (M, N) = op(A) @ op(B) on 2-D device arrays, by cuBLAS when cublas_available() (an
    optional fast path on a real GPU, no copies: the libraries view numba's arrays through
    __cuda_array_interface__, on the same legacy default stream), else by the refnorm tiled
    kernel."""
    if cublas_available():
        a, b, c = (cublas_view(v) for v in (A, B, C))
        cublas_matmul(a.T if trans_a else a, b.T if trans_b else b, c)
        return C
    M, N = C.shape
    blocks = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
    matmul_kernel(TILE, C.dtype)[blocks, (TILE, TILE)](A, B, C, trans_a, trans_b)
    return C


def step_product(A, W, C, trans_b=False):
    """The product of every step of a recurrence, as a function of t: C = A[t] @ op(W), A (T, B,
    K) a whole-sequence device array (LSTM 1), (LSTM 9). On the cuBLAS path A, W and C are
    viewed by the library once per sequence, not once per step: wrapping a numba array costs
    more than the product itself at these sizes (on an H200, benchmarks/RESULTS.md)."""
    if cublas_available():
        a, w, c = (cublas_view(v) for v in (A, W, C))
        w = w.T if trans_b else w
        return lambda t: cublas_matmul(a[t], w, c)
    return lambda t: matmul(A[t], W, C, trans_b=trans_b)


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
def carry_grad_kernel(t, dH, dh_rec, mask):
    # dh_prev = (1 - valid) * dH + da @ p["Wh"].T                       (BPTT 6)
    i = cuda.grid(1)
    B, H = dH.shape
    if i < B * H:
        r, j = i // H, i % H
        dH[r, j] = (1 - mask[t, r]) * dH[r, j] + dh_rec[r, j]


@cuda.jit
def column_sums_kernel(P, Q, with_q, out):
    # out = (P * Q).sum(axis=0) if with_q else P.sum(axis=0): dgamma, db        (BPTT 7)
    k = cuda.grid(1)
    N, F = P.shape
    if k < F:
        acc = 0.0
        for r in range(N):
            acc += P[r, k] * Q[r, k] if with_q else P[r, k]
        out[k] = acc


def column_sums(P, Q=None):
    """(P ⊙ Q).sum over the rows of (N, F) device arrays (Q None: P.sum): a (F,) device array."""
    out = empty(P.shape[1], P.dtype)
    column_sums_kernel[grid(P.shape[1]), THREADS](P, P if Q is None else Q, Q is not None, out)
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


def carry_grad(t, dH, dh_rec, mask):
    """dH <- (1 - m_t) dH + dh_rec in place (BPTT 6)."""
    carry_grad_kernel[grid(dH.shape[0] * dH.shape[1]), THREADS](t, dH, dh_rec, mask)


def device_copy(a):
    """A new device array equal to a (host or device): callers' arrays are never written."""
    if not is_device_array(a):
        return cuda.to_device(np.array(a))
    a = to_device(a)
    out = cuda.device_array(a.shape, a.dtype)
    out.copy_to_device(a)
    return out


def states(h0, c0, T):
    """h, c (T+1, B, H) device arrays with h[0] = h0, c[0] = c0, for the steps to fill."""
    h0, c0 = to_device(h0), to_device(c0)
    h = empty((T + 1,) + tuple(h0.shape), h0.dtype)
    c = empty((T + 1,) + tuple(c0.shape), c0.dtype)
    h[0].copy_to_device(h0)
    c[0].copy_to_device(c0)
    return h, c


def host(a):
    """a as a NumPy array (a copy from the device when it lives there)."""
    return to_device(a).copy_to_host() if is_device_array(a) else np.asarray(a)


def start_backward(dhs):
    """Every backward begins alike: a device is required, the caller's kind of array (NumPy or
    device) decides what comes back, and dhs moves to the device."""
    require_device()
    return is_device_array(dhs), to_device(dhs)


def end_backward(on_device, grads, dh, dc, state_grads):
    """with_state_grads(grads, (dh, dc), state_grads), returned as the caller's kind of array."""
    if state_grads:
        grads["dh"], grads["dc"] = dh, dc
    return finish(on_device, grads)


def normalized_backward_grads(cache, dZ, dA, dU, dc_norm_in, gains, c_hat, Wx, dH, dC):
    """After the BN-LSTM / LN-LSTM loop: the whole-sequence products dWx, dx (BN-LSTM 11),
    (LN-LSTM 10) and dWh (BN-LSTM 10), (LN-LSTM 9); the gains, shifts and bias as column sums
    over all T·B rows: db = Σ dz, dγ = Σ dy ⊙ ẑ, dβ = Σ dy (BN 8), (LN 6). gains maps each
    gate-term gain to its normalised term: {"gamma_h": â, "gamma_x": û}, or {"gamma_z": ŝ}
    (VAR 6); dc_norm_in is the gradient entering the cell normalisation's output (BN-LSTM 6),
    (LN-LSTM 5), or dĉ_t with the carry gradient in it (VAR 4)."""
    dWx, dx = input_projection_backward(to_device(cache.x), dU, Wx)
    return {"Wx": dWx, "Wh": recurrent_weight_grad(to_device(cache.h), dA),
            "b": column_sums(flat(dZ)),                                     # dz.sum(axis=0)
            **{name: column_sums(flat(dZ), flat(zhat))                      # (dy * zhat).sum
               for name, zhat in gains.items()},
            "gamma_c": column_sums(flat(dc_norm_in), flat(c_hat)),
            "beta_c": column_sums(flat(dc_norm_in)),                        # dy.sum(axis=0)
            "x": dx, "h0": dH, "c0": dC}
