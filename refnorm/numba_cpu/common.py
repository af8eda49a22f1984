"""Scalar helpers of the Numba CPU backend, mirror of refnorm/numpy_ref/common.py.

Numeric knobs for every njit function live in JIT below: error_model="numpy" lets loops with a
division vectorise (no ZeroDivisionError branch), fastmath stays off so results agree with the
NumPy reference to rounding, and cache=True keeps compiled code on disk between processes (all
jitted functions are module-level: closures are never cached).
"""
import math

from numba import njit

JIT = {"cache": True, "error_model": "numpy", "fastmath": False, "nogil": True}
INLINE = {**JIT, "inline": "always"}


@njit(**INLINE)
def sigmoid(z):
    # e = np.exp(-np.abs(z)); np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    e = math.exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
