"""Scalar helpers of the Numba CPU backend, mirror of refnorm/numpy_ref/common.py.

Numeric knobs for every njit function live in JIT below: error_model="numpy" lets loops with a
division vectorise (no ZeroDivisionError branch), fastmath stays off so results agree with the
NumPy reference to rounding (two exceptions, one flag each: the gate functions may fuse a·b + c
into an FMA, GATE_JIT, and layer norm's row sums may be reordered, norms.REDUCE), and cache=True
keeps compiled code on disk between processes (all jitted functions are module-level: closures
are never cached).

The gate nonlinearities need exp of a non-positive number only (σ(z) from e^{-|z|}, tanh(z) from
e^{-2|z|}). libm's exp and tanh are calls LLVM cannot vectorise (~10-25 ns each here), and five
of them per hidden unit and step cost more than the step's matrix product, so exp_nonpos below
is written out: Cody-Waite reduction y = k·ln2 + r with |r| <= ln2/2, the Taylor polynomial of
e^r to degree 13 (truncation < 1e-17), and 2^k built from its bits. Relative error <= 2.3e-16 on
[-708, 0] (tests/test_numba_backend.py). Every step of it is a plain SIMD instruction, so loops
over it vectorise with AVX2: k is rounded by the 1.5·2^52 shifter (no float -> int64
conversion, which AVX2 lacks) and 2^k is the bit pattern (k + 1023) << 52 (no table lookup,
which would be a gather). Measured in a loop (Zen 3, 2.45 GHz): σ 7 ns with a table lookup,
3.4 ns with the bits, 1.7 ns once the polynomial's multiply-adds became FMAs (float32: 0.7 ns).
In float64 the polynomial's tail goes by Estrin's scheme (5 dependent steps instead of 11, same
accuracy) and σ takes one division, not two: the gate pass 0.89x its time before (same process).
"""
import math
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..numpy_ref.common import with_state_grads
from .threads import matmul

JIT = {"cache": True, "error_model": "numpy", "fastmath": False, "nogil": True}
# The gate functions may fuse a * b + c into one FMA (fastmath's `contract`, nothing else): their
# polynomials become one rounding per term instead of two, and half the instructions.
GATE_JIT = dict(JIT, fastmath={"contract"})

LOG2E = 1.4426950408889634                 # 1 / ln 2
LN2_HI = 6.93147180369123816490e-01        # ln 2 split in two (fdlibm): k·LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10
SHIFTER = 6755399441055744.0               # 1.5·2^52: v + SHIFTER holds round(v) in its low bits
C0, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13 = (
    1.0 / math.factorial(k) for k in range(14))


# the float32 versions' constants, float32 so that no arithmetic leaves float32
F32_LOG2E = np.float32(LOG2E)
F32_LN2_HI = np.float32(0.693359375)                # ln 2 = LN2_HI + LN2_LO, LN2_HI 8 bits wide
F32_LN2_LO = np.float32(-2.12194440e-4)
F32_SHIFTER = np.float32(12582912.0)                # 1.5·2^23
F32_MIN_EXP = np.float32(-87.0)
F32_C = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))
F32_ONE, F32_ZERO, F32_MINUS_TWO = np.float32(1.0), np.float32(0.0), np.float32(-2.0)


def _bitcast(source, target, doc):
    """An intrinsic reinterpreting the bits of a `source` scalar as a `target` scalar of the
    same width (an LLVM bitcast: free, and vectorisable)."""
    @intrinsic
    def cast(typingctx, value):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(target))
        return target(source), codegen
    cast.__doc__ = doc
    return cast


float64_bits = _bitcast(types.float64, types.int64, "The IEEE-754 bits of a float64, as int64.")
bits_float64 = _bitcast(types.int64, types.float64, "The float64 with the IEEE-754 bits n.")
float32_bits = _bitcast(types.float32, types.int32, "The IEEE-754 bits of a float32, as int32.")
bits_float32 = _bitcast(types.int32, types.float32, "The float32 with the IEEE-754 bits n.")


def _exp_nonpos64(z):
    """e^z for z <= 0 in float64 (z below -708 gives e^-708 ≈ 3e-308, i.e. 0 to any sum it
    enters). Relative error <= 2.3e-16."""
    z = max(z, -708.0)
    t = z * LOG2E + SHIFTER                                # k = round(z / ln2), exactly:
    k = t - SHIFTER                                        #   z = k ln2 + r, |r| <= ln2 / 2
    r = (z - k * LN2_HI) - k * LN2_LO
    r2 = r * r                      # e^r = Σ r^n / n! = 1 + r (1 + r s), with the tail
    r4 = r2 * r2                    # s = Σ_{n>=2} r^{n-2} / n! by Estrin's scheme (pairs
    r8 = r4 * r4                    # c_n + c_{n+1} r joined by r², r⁴, r⁸: 5 dependent steps,
    s = (((C2 + C3 * r) + r2 * (C4 + C5 * r))           # not Horner's 11) and the last two
         + r4 * ((C6 + C7 * r) + r2 * (C8 + C9 * r))    # steps by Horner, whose roundings
         + r8 * ((C10 + C11 * r) + r2 * (C12 + C13 * r)))   # decide the accuracy
    p = C0 + r * (C1 + r * s)
    two_k = bits_float64((float64_bits(t) + 1023) << 52)   # 2^k: exponent field k + 1023
    return p * two_k                                       # e^z = e^r · 2^k


def _exp_nonpos32(z):
    """The same in float32 arithmetic, twice the SIMD width: Taylor to degree 7 (truncation
    < 5e-9 on |r| <= ln2/2), 2^k from the float32 exponent field, z clamped at -87 (e^-87 is
    the smallest normal float32 magnitude). Relative error 7.6e-8, under float32 eps. Horner:
    the float64 version's Estrin tail measured no faster in float32 loops."""
    z = max(z, F32_MIN_EXP)
    t = z * F32_LOG2E + F32_SHIFTER                        # k = round(z / ln2)
    k = t - F32_SHIFTER
    r = (z - k * F32_LN2_HI) - k * F32_LN2_LO
    p = F32_C[6] + r * F32_C[7]
    p = F32_C[5] + r * p
    p = F32_C[4] + r * p
    p = F32_C[3] + r * p
    p = F32_C[2] + r * p
    p = F32_C[1] + r * p
    p = F32_C[0] + r * p
    two_k = bits_float32(np.int32((float32_bits(t) + np.int32(127)) << np.int32(23)))
    return p * two_k


def _sigmoid64(z):
    # e = np.exp(-np.abs(z)); np.where(z >= 0, 1 / (1 + e), e / (1 + e)), with e / (1 + e)
    # as e · (1 / (1 + e)): one division per element, not two (both sides of the select run)
    e = exp_nonpos(-abs(z))
    q = 1.0 / (1.0 + e)
    return q if z >= 0 else e * q


def _sigmoid32(z):
    e = exp_nonpos(-abs(z))
    q = F32_ONE / (F32_ONE + e)
    return q if z >= F32_ZERO else e * q


def _tanh64(z):
    # np.tanh(z) = sign(z) (1 - e^{-2|z|}) / (1 + e^{-2|z|}), absolute error ~1e-16
    e = exp_nonpos(-2.0 * abs(z))
    t = (1.0 - e) / (1.0 + e)
    return t if z >= 0 else -t


def _tanh32(z):
    e = exp_nonpos(F32_MINUS_TWO * abs(z))
    t = (F32_ONE - e) / (F32_ONE + e)
    return t if z >= F32_ZERO else -t


def _by_precision(f64, f32):
    """A numba overload that compiles f32 for a float32 argument and f64 for anything else:
    float32 data stays in float32 registers (a float64 literal would promote it)."""
    def typer(z):
        return f32 if z == types.float32 else f64
    return typer


def exp_nonpos(z):
    """e^z for z <= 0, in the precision of z: float64 (rel. error <= 2.3e-16) or float32
    (7.6e-8, under float32 eps). Compiled only (an overload below); no libm call, so loops
    over it vectorise."""
    raise TypeError("exp_nonpos is for compiled code")


def sigmoid(z):
    """σ(z) = 1 / (1 + e^-z) without ever exponentiating a positive number, in z's precision."""
    raise TypeError("sigmoid is for compiled code")


def tanh(z):
    """tanh(z) = sign(z) (1 - e^{-2|z|}) / (1 + e^{-2|z|}), in z's precision."""
    raise TypeError("tanh is for compiled code")


# Not cached on their own (cache=False): Numba makes an overload's dispatcher when a caller is
# first compiled, after refnorm.numba_cpu has put its cache folder back to the user's, so a cache
# of theirs would land beside this file (see refnorm/numba_cpu/__init__.py). They are inlined
# into the cached loops that call them, and a cache hit of a loop never compiles them.
for _stub, _f64, _f32 in ((exp_nonpos, _exp_nonpos64, _exp_nonpos32),
                          (sigmoid, _sigmoid64, _sigmoid32), (tanh, _tanh64, _tanh32)):
    overload(_stub, jit_options=dict(GATE_JIT, cache=False))(_by_precision(_f64, _f32))


# -- indexing the gate blocks ------------------------------------------------------------------
# The loops index a (..., 4H) array through its (..., 4, H) reshape, gates4[t, r, G_, j], never
# at an offset like gates[t, r, 2 * H + j]: that is an index LLVM cannot prove non-negative, so
# Numba's negative-index wraparound puts a select on every element, the loads become gathers and
# the loop stays scalar (a (32, 512) layer norm ran 6x slower). Nor through a view per row
# (gates[t, r, 2 * H:3 * H]): each view costs two atomic reference-count calls, which at H = 64
# made a step's elementwise work 2-6x slower.
# And each loop writes one array: LLVM cannot prove that two arrays do not overlap, so it checks
# every written array against every other array the loop touches before it runs the vector
# version, and past 8 such checks it keeps the loop scalar.
I, F, G_, O = 0, 1, 2, 3   # the gate blocks of z and of the gates, in refnorm's order i, f, g, o


# -- the LSTM part that BN-LSTM and LN-LSTM share, one step at a time, on (B, ·) arrays ---------
@njit(**JIT)
def normalized_gates_forward(a_hat, u_hat, gamma_h, gamma_x, b, c_prev, gates, c_new):
    """z = γ_h ⊙ â + γ_x ⊙ û + b, gates (LSTM 2), c_new = f ⊙ c_prev + i ⊙ g (LSTM 3)."""
    B, G = gates.shape
    for r in range(B):
        for k in range(G):   # z = a_n + u_n + p["b"]  (BN-LSTM 2), (LN-LSTM 2), into gates
            gates[r, k] = gamma_h[k] * a_hat[r, k] + gamma_x[k] * u_hat[r, k] + b[k]
    gates_cell_forward(gates, c_prev, c_new)


@njit(**JIT)
def gates_cell_forward(gates, c_prev, c_new):
    """gates (B, 4H) holds z on entry and the gates on exit, gates = gates_forward(z)
    (LSTM 2); c_new = f ⊙ c_prev + i ⊙ g (LSTM 3)."""
    B, H = c_new.shape
    g4 = gates.reshape((B, 4, H))
    for r in range(B):
        for j in range(H):
            g4[r, I, j] = sigmoid(g4[r, I, j])             # i = σ(z^i)
        for j in range(H):
            g4[r, F, j] = sigmoid(g4[r, F, j])             # f = σ(z^f)
        for j in range(H):
            g4[r, G_, j] = tanh(g4[r, G_, j])              # g = tanh(z^g)
        for j in range(H):
            g4[r, O, j] = sigmoid(g4[r, O, j])             # o = σ(z^o)
        for j in range(H):                                 # c_new = f * c_prev + i * g
            c_new[r, j] = g4[r, F, j] * c_prev[r, j] + g4[r, I, j] * g4[r, G_, j]


@njit(**JIT)
def normalized_output_forward(c_hat, gamma_c, beta_c, gates, c_new, m, h_prev, c_prev,
                              h_next, c_next, y, tanh_c):
    """h_new = o ⊙ tanh(γ_c ⊙ ĉ + β_c) (BN-LSTM 4), (LN-LSTM 4); the masked carry (BPTT 2)
    into h_next, c_next and the output y = m ⊙ h_new (BPTT 3)."""
    B, H = c_hat.shape
    g4 = gates.reshape((B, 4, H))
    for r in range(B):
        for j in range(H):
            tanh_c[r, j] = tanh(gamma_c[j] * c_hat[r, j] + beta_c[j])   # tanh_c = np.tanh(c_norm)
        for j in range(H):
            c_next[r, j] = c_new[r, j]
        for j in range(H):
            h_next[r, j] = g4[r, O, j] * tanh_c[r, j]      # h_new = o * tanh_c
        for j in range(H):
            y[r, j] = h_next[r, j]
        if m[r] == 0:                                      # carry(m_t, new, old)
            for j in range(H):
                y[r, j] = 0.0
                h_next[r, j] = h_prev[r, j]
                c_next[r, j] = c_prev[r, j]


@njit(**JIT)
def normalized_cell_forward(c_hat, gamma_c, beta_c, c_norm):
    """c_norm = γ_c ⊙ ĉ + β_c, the normalised cell that carry="normalized" carries (VAR 3)."""
    B, H = c_hat.shape
    for r in range(B):
        for j in range(H):
            c_norm[r, j] = gamma_c[j] * c_hat[r, j] + beta_c[j]   # c_state = c_bn / c_ln (VAR 3)


@njit(**JIT)
def cell_output_forward(c_hat, gamma_c, beta_c, gates, c_new, c_norm, normalized_carry, m,
                        h_prev, c_prev, h_next, c_next, y, tanh_c):
    """normalized_output_forward with the carried cell chosen by the carry option: c̃_t (raw)
    or ĉ_t = γ_c ⊙ ĉ + β_c written into c_norm (VAR 3)."""
    carried = c_new
    if normalized_carry:   # c_state = c_norm if carry == "normalized" else c_new
        normalized_cell_forward(c_hat, gamma_c, beta_c, c_norm)                 # (VAR 3)
        carried = c_norm
    normalized_output_forward(c_hat, gamma_c, beta_c, gates, carried, m, h_prev, c_prev, h_next,
                              c_next, y, tanh_c)


@njit(**JIT)
def normalized_output_backward(dy, dH, m, gates, tanh_c, dh, dz, dc_norm_in):
    """dh̃ = m ⊙ (dy + dH) (BPTT 4); do into dz's o block (BN-LSTM 6), (LN-LSTM 5), (LSTM 8);
    the gradient reaching the normalised cell, dc_norm_in = dh̃ ⊙ o ⊙ (1 − tanh²)."""
    one = dh.dtype.type(1)  # a literal 1 would turn float32 into float64
    B, H = dh.shape
    g4, dz4 = gates.reshape((B, 4, H)), dz.reshape((B, 4, H))
    for r in range(B):
        for j in range(H):
            dh[r, j] = m[r] * (dy[r, j] + dH[r, j])        # dh_new = valid * (dy + dH)
        for j in range(H):
            o = g4[r, O, j]                                # do = dh_new * tanh_c; (LSTM 8)
            dz4[r, O, j] = dh[r, j] * tanh_c[r, j] * o * (one - o)
        for j in range(H):
            th = tanh_c[r, j]                              # dh_new * o * (1 - tanh_c**2)
            dc_norm_in[r, j] = dh[r, j] * g4[r, O, j] * (one - th * th)


@njit(**JIT)
def normalized_carry_backward(dC, m, dc_norm_in, dc_state):
    """carry="normalized": the carry gradient joins the output path before the normalisation
    backward, dĉ = dc_norm_in + m ⊙ dC (BPTT 5), (VAR 4); dc_state = dĉ is "dc"."""
    B, H = dC.shape
    for r in range(B):
        for j in range(H):                   # dc_bn = dc_bn + valid * dC; dc_state = dc_bn
            dc_state[r, j] = dc_norm_in[r, j] + m[r] * dC[r, j]


@njit(**JIT)
def normalized_gates_backward(dC, dc_norm, m, gates, c_prev, normalized_carry, dc, dz, db):
    """dc̃ = m ⊙ dC + (norm backward) (BPTT 5), or the norm backward alone when dC already
    entered it (normalized_carry, (VAR 4)); di, df, dg (LSTM 7) into dz (LSTM 8); the carry of
    dC to step t−1 (BPTT 6); db += Σ_b dz (BN-LSTM 8), (LN-LSTM 7), unless db is empty."""
    one = dz.dtype.type(1)  # a literal 1 would turn float32 into float64
    B, G = dz.shape
    H = G // 4
    g4, dz4 = gates.reshape((B, 4, H)), dz.reshape((B, 4, H))
    for r in range(B):
        valid = m[r]
        if normalized_carry:
            for j in range(H):
                dc[r, j] = dc_norm[r, j]                   # dc_new = Nback(dc_bn)  (VAR 4)
        else:
            for j in range(H):
                dc[r, j] = valid * dC[r, j] + dc_norm[r, j]   # dc_new = valid * dC + dc_norm
        for j in range(H):
            i = g4[r, I, j]
            dz4[r, I, j] = dc[r, j] * g4[r, G_, j] * i * (one - i)   # di = dc_new * g
        for j in range(H):
            f = g4[r, F, j]
            dz4[r, F, j] = dc[r, j] * c_prev[r, j] * f * (one - f)   # df = dc_new * c_prev
        for j in range(H):
            g = g4[r, G_, j]
            dz4[r, G_, j] = dc[r, j] * g4[r, I, j] * (one - g * g)   # dg = dc_new * i
        for j in range(H):   # dc_prev = (1 - valid) * dC + dc_new * f
            dC[r, j] = (one - valid) * dC[r, j] + dc[r, j] * g4[r, F, j]
        if db.size:                                        # (BN-LSTM sums its columns apart)
            for k in range(G):
                db[k] += dz[r, k]                          # dz.sum(axis=0)


@njit(**JIT)
def recurrent_state_backward(dH, m, dh_rec):
    """dh_prev = (1 − m) ⊙ dH + da Whᵀ (BPTT 6), with dh_rec = da Whᵀ already computed."""
    one = dH.dtype.type(1)  # a literal 1 would turn float32 into float64
    B, H = dH.shape
    for r in range(B):
        for j in range(H):
            dH[r, j] = (one - m[r]) * dH[r, j] + dh_rec[r, j]   # dh_prev = (1-valid)*dH + da@Wh.T


def input_projection(x, Wx):
    """U = X Wx for all T·B frames as one GEMM on (T·B, D) (BPTT 8); NumPy's x @ Wx on the
    (T, B, D) stack runs T small GEMMs, 15-30 % slower at the benchmark's small shapes."""
    T, B, D = x.shape
    return matmul(x.reshape(T * B, D), Wx).reshape(T, B, Wx.shape[1])


# -- the step product: a micro-kernel over Wh packed once per sequence ----------------------------
# The one product per step, h_{t-1} Wh forward and dz_t Whᵀ backward, multiplies a small (B, K)
# block by the same weight at every step. A BLAS call repacks that weight into its own panel
# layout at every call, and at the benchmark's small shapes the call and the packing cost as
# much as the arithmetic.
# So the weight is packed once per sequence (pack_panels), and each step runs the GotoBLAS/BLIS
# scheme on it (packed_matmul): C is cut into MR × NR tiles; for each tile, micro_tile keeps its
# MR × NR sums in MR·NV vector registers and adds, for p = 0 .. kc-1, row p of a kc × NR weight
# panel (NV vector loads) times MR broadcast entries of A. The panel, kc·NR values (24 KiB at
# KC = 256), stays in L1 while every row block of A passes over it; A, packed per step into
# MR-row blocks, stays in L2. In the benchmark's product table (Zen 3, one thread) the 2T step
# products ran at 20-31 GFLOP/s in OpenBLAS and 25-38 in this kernel at (16, 64) and (32, 128)
# in float64 (float32 28-53 and 37-58), and at the same rate, 80-100 % of the best product
# rate, from (64, 256) up; the LSTM's forward+backward took 0.81-0.95x the time it took with
# OpenBLAS step products, (16, 64) to (64, 256), measured in one process together with the
# float64 gate change above (an A/B of the two versions; benchmarks/RESULTS.md has the product
# tables of the latest runs).
# Why an intrinsic: written as Numba loops, the tile's sums were 32 scalar FMAs per p that LLVM
# neither kept in registers nor vectorised (3.6 GFLOP/s). The micro-kernel spells out the LLVM
# vector type, <4 x double> or <8 x float> (an AVX2 register; micro_tile_32) or twice as wide (an
# AVX-512 register; micro_tile_64), and the fused multiply-add llvm.fma on it; LLVM lowers both
# for the machine it compiles for (narrower registers where the CPU has no such width). Tiles of
# 4 × 3 registers ran as fast as 6 × 2 or up to 8 % faster in the loops (AVX2), and split the
# benchmark's batch sizes (multiples of 4) into whole tiles. Which width runs is measured per
# machine, dtype and weight shape (planner.vector_bytes); on the Zen 4 machine (AVX-512 executed
# as two 256-bit halves) the 64-byte kernel ran 0.84-1.06x the 32-byte one's time on the LSTM's
# step products from (32, 64·4) to (32, 512·4), and 1.23x on a (256, 64) weight in float32,
# whose 48-column panels are a third padding.
# Each step product runs on the thread of its loop; threads.py runs the loops of several row
# blocks side by side.
NV = 3          # vector registers per tile row: NR = NV·(vector bytes / itemsize) columns
MR = 4          # rows per tile: MR·NV = 12 sums + NV panel vectors + 1 broadcast = 16 registers
KC = 256        # depth per pass at most: the kc × NR panel stays in L1 (PANEL_BYTES)
PANEL_BYTES = 24 << 10      # 256 rows of 96 bytes (3 AVX2 registers), 128 of 192 (3 AVX-512)
# The vector width of the kernel: 32 bytes (AVX2's registers) or 64 (AVX-512's). Which one runs
# is the planner's choice per dtype and weight shape on each machine (planner.vector_bytes):
# an AVX-512 register doubles the columns per tile and halves the instructions per multiply-
# add, which pays where the CPU executes 512-bit FMAs at full width; elsewhere LLVM splits each
# into two 256-bit halves and the tile's 24 sums no longer fit the 16 registers.
VECTOR_BYTES = (32, 64)


def panel_width(dtype, vector_bytes=32):
    """NR: NV vector registers of the dtype (32 bytes: 12 float64, 24 float32; 64: twice)."""
    return NV * vector_bytes // np.dtype(dtype).itemsize


def _micro_tile(vector_bytes):
    """The micro-kernel on registers of vector_bytes bytes (micro_tile_32, micro_tile_64)."""
    @intrinsic
    def micro_tile(typingctx, kc, Ap, a0, Wp, w0, C, row, col, first):
        """C[row:row+MR, col:col+NR] = Σ_p A_p ⊗ W_p over p < kc, or += that sum when not
        first, with A_p = Ap[a0 + p·MR : a0 + p·MR + MR] (MR rows of A, packed by
        packed_matmul) and W_p = Wp[w0 + p·NR : w0 + p·NR + NR] (a row of a panel,
        pack_panels). C's rows have unit stride. The sums live in MR·NV vector registers: each
        p is NV vector loads, MR broadcasts and MR·NV vector FMAs."""
        return _micro_tile_code(vector_bytes, Ap, Wp, C)
    return micro_tile


def _micro_tile_code(vector_bytes, Ap, Wp, C):
    dtype = Ap.dtype
    if dtype not in (types.float64, types.float32) or Wp.dtype != dtype or C.dtype != dtype:
        return None
    width = vector_bytes // (8 if dtype == types.float64 else 4)   # lanes of a register
    sig = types.void(types.intp, Ap, types.intp, Wp, types.intp, C, types.intp, types.intp,
                     types.boolean)

    def codegen(context, builder, signature, args):
        kc, Ap_, a0, Wp_, w0, C_, row, col, first = args
        scalar = context.get_value_type(dtype)
        vec = ir.VectorType(scalar, width)
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def const(n):
            return ir.Constant(i64, n)

        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3),
            f"llvm.fma.v{width}{'f64' if dtype == types.float64 else 'f32'}")
        a = context.make_array(signature.args[1])(context, builder, Ap_).data
        w = context.make_array(signature.args[3])(context, builder, Wp_).data
        c = context.make_array(signature.args[5])(context, builder, C_)
        ldc = builder.sdiv(builder.extract_value(c.strides, 0), const(dtype.bitwidth // 8))
        zero = ir.Constant(vec, [0.0] * width)
        sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(NV)] for _ in range(MR)]
        with cgutils.for_range(builder, kc) as loop:                 # for p in range(kc):
            p = loop.index
            w_p = builder.gep(w, [builder.add(w0, builder.mul(p, const(NV * width)))])
            panel = [builder.load(builder.bitcast(builder.gep(w_p, [const(v * width)]),
                                                  vec.as_pointer()), align=dtype.bitwidth // 8)
                     for v in range(NV)]                             # W_p, NV registers
            a_p = builder.add(a0, builder.mul(p, const(MR)))
            for i in range(MR):                                      # sums[i] += A_p[i] * W_p
                entry = builder.load(builder.gep(a, [builder.add(a_p, const(i))]))
                lanes = builder.insert_element(ir.Constant(vec, ir.Undefined), entry,
                                               ir.Constant(i32, 0))
                broadcast = builder.shuffle_vector(lanes, ir.Constant(vec, ir.Undefined),
                                                   ir.Constant(ir.VectorType(i32, width),
                                                               [0] * width))
                for v in range(NV):
                    builder.store(builder.call(fma, [broadcast, panel[v],
                                                     builder.load(sums[i][v])]), sums[i][v])
        for i in range(MR):                                          # C tile = (or +=) sums
            c_row = builder.gep(c.data, [builder.mul(builder.add(row, const(i)), ldc)])
            for v in range(NV):
                target = builder.bitcast(builder.gep(c_row, [builder.add(col, const(v * width))]),
                                         vec.as_pointer())
                total = builder.load(sums[i][v])
                old = builder.load(target, align=dtype.bitwidth // 8)
                builder.store(builder.select(first, total, builder.fadd(old, total)), target,
                              align=dtype.bitwidth // 8)
        return context.get_dummy_value()
    return sig, codegen


micro_tile_32 = _micro_tile(32)
micro_tile_64 = _micro_tile(64)


@njit(**JIT)
def pack_panels_into(W, Wp):
    """Wp[q, p, j] = W[p, q·NR + j], zero past W's last column: W (K, N) cut into column panels
    NR wide, each stored row after row (micro_tile reads one panel row as NV vectors)."""
    K, N = W.shape
    P, _, NR = Wp.shape
    for q in range(P):
        for p in range(K):
            for j in range(NR):
                col = q * NR + j                         # Wp[q] = W[:, q*NR:(q+1)*NR], padded
                Wp[q, p, j] = W[p, col] if col < N else 0.0


def pack_panels(W, vector_bytes=None):
    """W (K, N) packed for packed_matmul: (ceil(N / NR), K, NR), NR = panel_width(W.dtype,
    vector_bytes), vector_bytes by default the planner's choice for this dtype and shape.
    Once per sequence: Wh forward, Whᵀ backward (a view; the packing reads any strides)."""
    K, N = W.shape
    if vector_bytes is None:
        from .planner import vector_bytes as planned
        vector_bytes = planned(W.dtype, K, N)
    NR = panel_width(W.dtype, vector_bytes)
    Wp = np.empty((-(-N // NR), K, NR), W.dtype)
    pack_panels_into(W, Wp)
    return Wp


@njit(**JIT)
def product_workspace(M, K, Wp):
    """packed_matmul's working memory for an (M, K) A: its packed row blocks and one tile."""
    NR = Wp.shape[2]                             # = np.empty(packed A blocks + one tile)
    return np.empty(-(-M // MR) * MR * min(K, depth_per_pass(Wp)) + MR * NR, Wp.dtype)


@njit(**JIT)
def depth_per_pass(Wp):
    """kc at most: KC, or fewer where a kc × NR panel would pass PANEL_BYTES."""
    return min(KC, PANEL_BYTES // (Wp.shape[2] * Wp.itemsize))   # = KC, or 128 for 64-byte


@njit(**JIT)
def packed_matmul(A, Wp, C, work):
    """C = A·W, with W given as Wp = pack_panels(W) (np.dot(A, W, out=C)). A (M, K) any strides,
    C (M, N) rows of unit stride, work = product_workspace(M, K, Wp). The panels keep no record
    of W's exact width: C's width N is checked only to end within Wp's last panel.

    For each depth block of depth_per_pass(Wp): pack A's rows in blocks of MR (zero rows past
    M), then run the micro-kernel over every (row block, column panel) tile; the first block
    writes C, the later ones add to it. Tiles that run past C's last row or column are computed
    into a tile of their own and copied. The panel width says which micro-kernel: NV registers
    of 64 bytes (micro_tile_64) or of 32 (micro_tile_32)."""
    M, K = A.shape
    N = C.shape[1]
    P, K_w, NR = Wp.shape
    if K_w != K or C.shape[0] != M or not (P - 1) * NR < N <= P * NR:
        raise ValueError("packed_matmul: the shapes do not match")
    if N > 1 and C.strides[1] != C.itemsize:
        raise ValueError("packed_matmul needs C's rows of unit stride")
    blocks = -(-M // MR)
    W_flat = Wp.reshape(-1)
    most = depth_per_pass(Wp)
    wide = NR * Wp.itemsize == NV * 64
    depth = min(K, most)
    Ap = work[:blocks * MR * depth]
    tile = work[blocks * MR * depth:blocks * MR * depth + MR * NR].reshape((MR, NR))
    for pc in range(0, K, most):
        kc = min(most, K - pc)
        for b in range(blocks):                  # Ap[(b·kc + p)·MR + i] = A[b·MR + i, pc + p]
            for p in range(kc):
                for i in range(MR):
                    r = b * MR + i
                    Ap[(b * kc + p) * MR + i] = A[r, pc + p] if r < M else 0.0
        for q in range(P):
            for b in range(blocks):
                r0, c0 = b * MR, q * NR
                w0 = (q * K + pc) * NR           # row pc of panel q
                if r0 + MR <= M and c0 + NR <= N:
                    if wide:
                        micro_tile_64(kc, Ap, b * kc * MR, W_flat, w0, C, r0, c0, pc == 0)
                    else:
                        micro_tile_32(kc, Ap, b * kc * MR, W_flat, w0, C, r0, c0, pc == 0)
                else:
                    if wide:
                        micro_tile_64(kc, Ap, b * kc * MR, W_flat, w0, tile, 0, 0, True)
                    else:
                        micro_tile_32(kc, Ap, b * kc * MR, W_flat, w0, tile, 0, 0, True)
                    for i in range(min(MR, M - r0)):
                        for j in range(min(NR, N - c0)):
                            if pc == 0:
                                C[r0 + i, c0 + j] = tile[i, j]
                            else:
                                C[r0 + i, c0 + j] += tile[i, j]


# -- the Python side of the backward passes (buffers in, gradients out) --------------------------
SCRATCH_MAX_BYTES = 64 << 20
_scratch = threading.local()


def scratch(dtype, *shapes):
    """Arrays of these shapes for a backward pass's own working values, which it never returns
    (dz_t, da_t, the dh, dc rows): views of one buffer per thread, kept from call to call, as
    oneDNN's scratchpad is. Their contents on entry are whatever the last call left.

    Why: a fresh (T, B, 4H) array is fresh memory whenever the allocator has handed the last
    call's memory back to the system (glibc trims the top of its heap once the free memory
    there passes a threshold, which calls of a few MB each keep crossing), and every first
    write to a 4 KiB page of it then faults, ~3.7 µs each on our virtual machine: 800 faults,
    ~3 ms, for the LSTM's dU at (16, 64) in float64, a fifth of its forward+backward. Measured
    in one process against the fresh arrays: BN- and LN-LSTM at (16, 64) in float64 11-18 %
    faster where those faults had landed, no change where none did.
    One call per backward pass: a second call hands out the same memory.
    Thread-local, so backward passes running at once in several threads (the loops release the
    GIL) never share it. Past SCRATCH_MAX_BYTES in all the arrays are plain np.empty: NumPy
    gives arrays of 4 MiB and more 2 MiB pages, whose few faults cost little next to the
    products at such shapes, and the buffer would hold that memory after the call."""
    dtype = np.dtype(dtype)
    sizes = [math.prod(shape) * dtype.itemsize for shape in shapes]
    starts = [64 * sum(-(-n // 64) for n in sizes[:i]) for i in range(len(sizes))]  # 64 B aligned
    need = starts[-1] + sizes[-1]
    if need > SCRATCH_MAX_BYTES:
        return [np.empty(shape, dtype) for shape in shapes]
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < need + 64:
        buffer = _scratch.buffer = np.empty(need + 64, np.uint8)
    base = -buffer.ctypes.data % 64
    return [buffer[base + start:base + start + n].view(dtype).reshape(shape)
            for start, n, shape in zip(starts, sizes, shapes)]


def release_scratch():
    """Free the calling thread's scratch buffer (the next backward pass allocates it anew)."""
    _scratch.buffer = None


def backward_buffers(dhs, G, n_gate_grads, state_grads, steps=None):
    """What a backward loop works in. From scratch(): n_gate_grads arrays (steps, B, G) for dz_t
    (or da_t, du_t) of `steps` steps (default all T). And dh, dc for dL/dh̃_t, dL/dc̃_t: (T, B,
    H) arrays of their own when the caller asked for them (state_grads), else one (1, B, H) row
    each from scratch, which every step reuses -- the loops pick the row by dh.shape[0].
    Returns the list of gate gradients, dh, dc."""
    T, B, H = dhs.shape
    rows = [] if state_grads else [(1, B, H)] * 2
    arrays = scratch(dhs.dtype, *[(steps or T, B, G)] * n_gate_grads, *rows)
    if state_grads:
        dh, dc = np.empty(dhs.shape, dhs.dtype), np.empty(dhs.shape, dhs.dtype)
    else:
        dh, dc = arrays[n_gate_grads:]
    return arrays[:n_gate_grads], dh, dc


# -- BPTT in chunks of steps ----------------------------------------------------------------------
# The gate gradients dz_t of every step (da_t, du_t in the normalised cells) feed three
# whole-sequence products: dWh = Σ_t h_{t-1}ᵀ da_t (BPTT 7), dWx = Σ_t x_tᵀ du_t and
# dx_t = du_t Wxᵀ (BPTT 8). The sums split over any partition of the steps, so the backward
# runs its loop over a chunk of steps (the last chunk first: BPTT goes backwards), adds the
# chunk's share of the products, and reuses the chunk's gate gradients for the next chunk.
# The backward then never holds more than a chunk of them, in the scratch buffer: (T, B, 4H)
# arrays of 210 MB each at T = 100, (B, H) = (128, 512) in float64, were fresh memory at every
# call; in one process, each version right after a torch.nn.LSTM call, the LSTM's
# forward+backward there took 0.90x the time of the whole-sequence version (float32 0.88x; an
# A/B of the two versions). Where the whole sequence fits the buffer there is one chunk, and
# the products are one GEMM each over all T·B rows, as without chunks; with several, dWx and
# dWh are sums of per-chunk products, which differ from the one product by roundings (the
# reference itself sums dWh step by step). SeqBN-LSTM cannot split:
# its du_t need the dV of every step (seq_bn_lstm_backward).
def chunk_bounds(T, bytes_per_step):
    """The steps t0 < t1 < ... < T that cut 0 .. T into chunks: as few as hold at most the
    steps that fit SCRATCH_MAX_BYTES (at least 1), their lengths equal to within one step."""
    fit = max(1, SCRATCH_MAX_BYTES // max(1, bytes_per_step))
    chunks = -(-T // fit)
    return [T * i // chunks for i in range(chunks + 1)]


def backward_in_chunks(dhs, dhT, dcT, cache, n_gate_grads, state_grads, loop, added):
    """Runs a cell's BPTT loop over the steps in chunks (above) and adds the whole-sequence
    products chunk by chunk. loop(t0, t1, gate_grads, dH, dC, dh, dc) runs steps t1-1 .. t0:
    it starts from dH, dC = dL/dh_{t1}, dL/dc_{t1} (B, H) and leaves dL/dh_{t0}, dL/dc_{t0} in
    them, and writes the gate gradients of step t into row t - t0 of each array of
    gate_grads: n_gate_grads arrays (t1 - t0, B, 4H), da_t first and du_t last (one array
    when they are one, as dz_t in the LSTM). `added` holds the gradients the loop adds to (b
    and the gains). Returns the cell's gradient dict, in the reference's order, with "dh",
    "dc" when state_grads."""
    x, h, Wx = cache.x, cache.h, cache.params["Wx"]
    T, B, H = dhs.shape
    D, G = Wx.shape
    dt = dhs.dtype
    bounds = chunk_bounds(T, n_gate_grads * B * G * dt.itemsize)
    steps = max(t1 - t0 for t0, t1 in zip(bounds, bounds[1:]))
    buffers, dh, dc = backward_buffers(dhs, G, n_gate_grads, state_grads, steps)
    dH, dC = dhT.copy(), dcT.copy()
    dWx, dWh, dx = np.zeros((D, G), dt), np.zeros((H, G), dt), np.empty(x.shape, dt)
    for t0, t1 in reversed(list(zip(bounds, bounds[1:]))):      # the last chunk first
        gate_grads = [a[:t1 - t0] for a in buffers]
        loop(t0, t1, gate_grads, dH, dC, dh, dc)
        add_weight_grads(x, h, Wx, t0, t1, gate_grads[0], gate_grads[-1], dWx, dWh, dx)
    grads = {"Wx": dWx, "Wh": dWh, **added, "x": dx, "h0": dH, "c0": dC}
    return with_state_grads(grads, (dh, dc), state_grads)


def add_weight_grads(x, h, Wx, t0, t1, dA, dU, dWx, dWh, dx):
    """Steps t0 .. t1-1's share of the whole-sequence products, one GEMM each over their
    (t1 - t0)·B rows: dWh += Σ_t h_{t-1}ᵀ da_t (BPTT 7), dWx += Σ_t x_tᵀ du_t and
    dx_t = du_t Wxᵀ (BPTT 8), with dA, dU (t1 - t0, B, 4H) holding da_t, du_t."""
    add_recurrent_weight_grad(h, t0, t1, dA, dWh)
    add_input_grads(x, Wx, t0, t1, dU, dWx, dx)


def add_recurrent_weight_grad(h, t0, t1, dA, dWh):
    """dWh += Σ_t h_{t-1}ᵀ da_t over steps t0 .. t1-1 (BPTT 7), one GEMM over their rows: the
    reference's per-step dWh terms, summed by the product."""
    H, G = h.shape[-1], dA.shape[-1]
    dWh += matmul(h[t0:t1].reshape(-1, H).T, dA.reshape(-1, G))  # Σ_t h_prev.T @ dz (LSTM 9),
    #                                                                                  (BPTT 7)


def add_input_grads(x, Wx, t0, t1, dU, dWx, dx):
    """dWx += Σ_t x_tᵀ du_t and dx_t = du_t Wxᵀ over steps t0 .. t1-1 (BPTT 8), dU (t1 - t0, B,
    4H): mirror of numpy_ref.common.input_projection_backward, one GEMM each."""
    D, G = Wx.shape
    dU = dU.reshape(-1, G)
    dWx += matmul(x[t0:t1].reshape(-1, D).T, dU)  # x.reshape(-1, D).T @ dU.reshape(-1, G)
    matmul(dU, Wx.T, out=dx[t0:t1].reshape(-1, D))    # dx = dU @ Wx.T        (BPTT 8)


def normalized_gain_grads(cache):
    """The zeroed gain and bias gradients the BN-LSTM / LN-LSTM backward loops add to. With
    LN-LSTM's terms="summed" the one gain of the gate terms is gamma_z (VAR 6)."""
    dt, (H, G) = cache.params["Wh"].dtype, cache.params["Wh"].shape
    gains = ("gamma_z",) if summed_terms(cache) else ("gamma_h", "gamma_x")
    return {"b": np.zeros(G, dt), **{name: np.zeros(G, dt) for name in gains},
            "gamma_c": np.zeros(H, dt), "beta_c": np.zeros(H, dt)}


def summed_terms(cache):
    """LN-LSTM's terms="summed": da_t = du_t = ds_t (VAR 6), one gate-gradient array."""
    return getattr(cache, "terms", "separate") == "summed"


# -- the one-state versions for the RNN family (mirror of numpy_ref.common.scan_backward_h) ----
def backward_buffers_h(dhs, G, n_gate_grads, state_grads, steps=None):
    """backward_buffers for the cells with one state h: n_gate_grads arrays (steps, B, G) from
    scratch() for dz_t (or da_t, du_t), and dh for dL/dh̃_t: a (T, B, H) array of its own when
    the caller asked for it (state_grads), else one (1, B, H) row from scratch that every step
    reuses (the loops pick the row by dh.shape[0]). Returns the list of gate gradients, dh."""
    T, B, H = dhs.shape
    rows = [] if state_grads else [(1, B, H)]
    arrays = scratch(dhs.dtype, *[(steps or T, B, G)] * n_gate_grads, *rows)
    dh = np.empty(dhs.shape, dhs.dtype) if state_grads else arrays[n_gate_grads]
    return arrays[:n_gate_grads], dh


def backward_in_chunks_h(dhs, dhT, cache, n_gate_grads, state_grads, loop, added):
    """backward_in_chunks for the cells with one state h (the RNN family): the same chunks of
    steps (chunk_bounds), the same whole-sequence products added chunk by chunk
    (add_weight_grads), without c. loop(t0, t1, gate_grads, dH, dh) runs steps t1-1 .. t0: it
    starts from dH = dL/dh_{t1} (B, H), leaves dL/dh_{t0} in it, and writes the gate gradients
    of step t into row t - t0 of each of the n_gate_grads arrays (t1 - t0, B, H) of gate_grads,
    da_t first and du_t last (one array when they are one: dz_t of the RNN, ds_t of the summed
    forms). `added` holds the gradients the loop adds to (b and the gains). Returns the cell's
    gradient dict, in the reference's order, with "dh" when state_grads."""
    x, h, Wx = cache.x, cache.h, cache.params["Wx"]
    T, B, H = dhs.shape
    D, G = Wx.shape
    dt = dhs.dtype
    bounds = chunk_bounds(T, n_gate_grads * B * G * dt.itemsize)
    steps = max(t1 - t0 for t0, t1 in zip(bounds, bounds[1:]))
    buffers, dh = backward_buffers_h(dhs, G, n_gate_grads, state_grads, steps)
    dH = dhT.copy()
    dWx, dWh, dx = np.zeros((D, G), dt), np.zeros((H, G), dt), np.empty(x.shape, dt)
    for t0, t1 in reversed(list(zip(bounds, bounds[1:]))):      # the last chunk first
        gate_grads = [a[:t1 - t0] for a in buffers]
        loop(t0, t1, gate_grads, dH, dh)
        add_weight_grads(x, h, Wx, t0, t1, gate_grads[0], gate_grads[-1], dWx, dWh, dx)
    grads = {"Wx": dWx, "Wh": dWh, **added, "x": dx, "h0": dH}
    if state_grads:
        grads["dh"] = dh
    return grads
