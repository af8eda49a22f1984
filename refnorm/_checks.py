"""Argument checks shared by every cell and backend: bad input gets a ValueError that names the
argument, and nothing the caller passed is modified."""
import math
import numbers

import numpy as np

from .config import DTYPES


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _as_float(value):
    """float(value) for a real number that is not a bool (Python's or NumPy's), else None. An
    int or Fraction beyond the float range gives inf (float() would raise OverflowError, and
    np.isfinite a TypeError, on such values)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def positive_float(value, name):
    v = _as_float(value)
    if v is None or not math.isfinite(v) or not v > 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def nonnegative_float(value, name):
    """A finite number >= 0 as a Python float (-0.0 becomes 0.0): eps, where 0 is allowed."""
    v = _as_float(value)
    if v is None or not math.isfinite(v) or not v >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v + 0.0


def finite_float(value, name, dt=None):
    """value as a Python float; a ValueError naming `name` unless it is a real number (not a
    bool, not a string) that is finite, and finite in dtype dt when given (1e39 is inf in
    float32)."""
    v = _as_float(value)
    if v is None or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if dt is not None and abs(v) > float(np.finfo(dt).max):     # compared in float64
        raise ValueError(f"{name} = {value!r} overflows {np.dtype(dt).name} (largest finite "
                         f"value {float(np.finfo(dt).max):.4g})")
    return v


def choice(value, name, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def unit_interval(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def dtype(value):
    name = np.dtype(value).name if isinstance(value, (type, np.dtype)) else value
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}")
    return np.dtype(name)


def float_array(value, name, shape, dt):
    """A finite floating array of exactly `shape` (None = any size, must be >= 1) and dtype dt.

    Returns the caller's array itself (never written to) or a fresh array from a sequence."""
    a = value if isinstance(value, np.ndarray) else np.asarray(value)
    if a.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating array of dtype {dt.name}, got dtype {a.dtype}")
    if a.dtype != dt:
        raise ValueError(f"{name} has dtype {a.dtype} but the cell computes in {dt.name}; "
                         f"convert it explicitly (e.g. {name}.astype('{dt.name}'))")
    if a.ndim != len(shape):
        raise ValueError(f"{name} must have {len(shape)} dimensions {_fmt(shape)}, "
                         f"got shape {a.shape}")
    for got, want in zip(a.shape, shape):
        if (want is None and got < 1) or (want is not None and got != want):
            raise ValueError(f"{name} must have shape {_fmt(shape)}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def mask_array(mask, lengths, T, B, dt):
    """The (T, B) validity mask as 0.0/1.0 of dtype dt, from `mask` or from `lengths` (B,).

    None for both means every step is valid. A batch with no valid step is rejected."""
    if mask is not None and lengths is not None:
        raise ValueError("pass either mask or lengths, not both")
    if lengths is not None:
        n = np.asarray(lengths)
        if n.shape != (B,) or n.dtype.kind not in "iu":
            raise ValueError(f"lengths must be {B} integers (one per sequence), got {lengths!r}")
        if np.any(n < 0) or np.any(n > T):
            raise ValueError(f"lengths must lie in [0, T={T}], got {n.tolist()}")
        m = (np.arange(T)[:, None] < n[None, :]).astype(dt)
        name = "lengths"
    elif mask is not None:
        a = np.asarray(mask)
        if a.shape != (T, B):
            raise ValueError(f"mask must have shape (T, B) = ({T}, {B}), got {a.shape}")
        if a.dtype.kind not in "biuf" or not np.all((a == 0) | (a == 1)):
            raise ValueError("mask must hold only 0/1 or False/True values")
        m = a.astype(dt)
        name = "mask"
    else:
        return np.ones((T, B), dtype=dt)
    if not m.any():
        raise ValueError(f"{name} leaves no valid step in the batch")
    return m


def _fmt(shape):
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
