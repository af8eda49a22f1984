"""Scalar helpers of the Numba CPU backend, mirror of refnorm/numpy_ref/common.py.

Numeric knobs for every njit function live in JIT below: error_model="numpy" lets loops with a
division vectorise (no ZeroDivisionError branch), fastmath stays off so results agree with the
NumPy reference to rounding, and cache=True keeps compiled code on disk between processes (all
jitted functions are module-level: closures are never cached).

The gate nonlinearities need exp of a non-positive number only (σ(z) from e^{-|z|}, tanh(z) from
e^{-2|z|}). libm's exp and tanh are calls LLVM cannot vectorise (~10-25 ns each here), and five
of them per hidden unit and step cost more than the step's matrix product, so exp_nonpos below
is written out: Cody-Waite reduction y = k·ln2 + r with |r| <= ln2/2, the Taylor polynomial of
e^r to degree 13 (truncation < 1e-17), and 2^k from a table. Relative error <= 2.3e-16 on
[-708, 0] (tests/test_numba_backend.py); it vectorises.
"""
import math

import numpy as np
from numba import njit

JIT = {"cache": True, "error_model": "numpy", "fastmath": False, "nogil": True}
INLINE = {**JIT, "inline": "always"}

LOG2E = 1.4426950408889634                 # 1 / ln 2
LN2_HI = 6.93147180369123816490e-01        # ln 2 split in two (fdlibm): k·LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10
POW2_NEG = np.ldexp(1.0, -np.arange(1023))  # 2^-k for k = 0 .. 1022
C0, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13 = (
    1.0 / math.factorial(k) for k in range(14))


@njit(**INLINE)
def exp_nonpos(y):
    """e^y for y <= 0 (y below -708 gives e^-708 ≈ 3e-308, i.e. 0 to any sum it enters)."""
    y = max(y, -708.0)
    k = math.floor(y * LOG2E + 0.5)                        # y = k ln2 + r
    r = (y - k * LN2_HI) - k * LN2_LO
    p = C12 + r * C13                                      # e^r = Σ r^n / n!, Horner
    p = C11 + r * p
    p = C10 + r * p
    p = C9 + r * p
    p = C8 + r * p
    p = C7 + r * p
    p = C6 + r * p
    p = C5 + r * p
    p = C4 + r * p
    p = C3 + r * p
    p = C2 + r * p
    p = C1 + r * p
    p = C0 + r * p
    return p * POW2_NEG[int(-k)]                           # e^y = e^r · 2^k


@njit(**INLINE)
def sigmoid(z):
    # e = np.exp(-np.abs(z)); np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    e = exp_nonpos(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


@njit(**INLINE)
def tanh(z):
    # np.tanh(z) = sign(z) (1 - e^{-2|z|}) / (1 + e^{-2|z|}), absolute error ~1e-16
    e = exp_nonpos(-2.0 * abs(z))
    t = (1.0 - e) / (1.0 + e)
    return t if z >= 0 else -t
