"""The Numba CPU backend against the NumPy reference: outputs, every gradient and every cache
field, over Hypothesis-drawn shapes, masks, modes and options. The finite-difference and
autodiff proofs also run on this backend (tests/test_gradcheck.py, tests/test_autodiff.py)."""
import dataclasses
import pathlib
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import refnorm
import refnorm.numba_cpu
import refnorm.numpy_ref
from helpers import TOL, make_cell

# A tensor passes when  max|a − b| <= rtol·max|a| + atol·G,  G = the largest gradient entry of
# the run (llm.c's "tol + |ref|·eps" check).
# rtol: both backends evaluate the same formulas; only the order of sums (BLAS blocking, loop
#   order) and libm vs NumPy transcendentals differ, ~1e-16 (float64) / ~1e-7 (float32) per
#   operation, through T <= 6 steps.
# atol·G: a gradient made of terms of size ~G that cancel (LN over 1 or 2 features, BN over 2
#   rows) can be far smaller than G while its rounding error stays ~eps·G whatever the order of
#   summation: ~50 eps of the run's gradient scale.
PARITY = {"float64": (1e-12, 1e-14), "float32": (1e-4, 1e-5)}


def parity_ok(a, b, rtol, atol_abs):
    diff = np.max(np.abs(np.asarray(a, np.float64) - b), initial=0.0)
    return diff <= rtol * np.max(np.abs(a), initial=0.0) + atol_abs


@st.composite
def cases(draw):
    stem = draw(st.sampled_from(["lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"]))
    training = draw(st.booleans())
    T = draw(st.integers(1, 6))
    B = draw(st.integers(2 if stem == "bn_lstm" and training else 1, 4))
    D, H = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B).filter(any))
    options = {}
    if stem == "ln_lstm":
        options["per_gate"] = draw(st.booleans())
    if stem in ("bn_lstm", "seq_bn_lstm"):
        options["eps"] = draw(st.sampled_from([1e-5, 1e-3]))
    t0 = draw(st.integers(0, 8)) if stem == "bn_lstm" else 0
    return stem, training, T, B, D, H, np.array(lengths), options, t0, draw(st.integers(0, 99))


def run(cell, T, B, lengths, training, t0, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.input_size)).astype(dtype)
    h0 = 0.5 * rng.standard_normal((B, cell.hidden_size)).astype(dtype)
    c0 = 0.5 * rng.standard_normal((B, cell.hidden_size)).astype(dtype)
    dhs = rng.standard_normal((T, B, cell.hidden_size)).astype(dtype)
    dhT = rng.standard_normal((B, cell.hidden_size)).astype(dtype)
    hs, (hT, cT), cache = cell.forward(x, h0, c0, lengths=lengths, training=training, t0=t0,
                                       update_stats=False)
    return hs, hT, cT, cache, cell.backward(dhs, cache, dhT, 0.5 * dhT[::-1].copy())


def compare(stem, training, T, B, D, H, lengths, options, t0, seed, dtype):
    tol, atol = PARITY[dtype]
    ref_cell = make_cell(stem, D, H, seed=seed, dtype=dtype, **options)
    fast_cell = make_cell(stem, D, H, seed=seed, dtype=dtype, backend="numba", **options)
    ref = run(ref_cell, T, B, lengths, training, t0, seed, dtype)
    fast = run(fast_cell, T, B, lengths, training, t0, seed, dtype)
    for name, a, b in zip(("hs", "hT", "cT"), ref[:3], fast[:3]):
        assert b.dtype == np.dtype(dtype), name
        assert refnorm.relative_error(a, b) <= tol, name
    assert set(ref[4]) == set(fast[4])
    G = max(np.max(np.abs(g)) for g in ref[4].values())
    for name in ref[4]:
        assert fast[4][name].dtype == np.dtype(dtype), name
        assert parity_ok(ref[4][name], fast[4][name], tol, atol * G), name
    assert type(ref[3]) is type(fast[3])
    for field in dataclasses.fields(ref[3]):
        a, b = getattr(ref[3], field.name), getattr(fast[3], field.name)
        if isinstance(a, np.ndarray):
            assert a.shape == b.shape, field.name
            assert parity_ok(a, b, tol, atol * max(1.0, np.max(np.abs(a), initial=0))), \
                field.name
        elif field.name != "params":
            assert a == b, field.name


@settings(max_examples=60, deadline=None)
@given(cases())
def test_numba_matches_numpy_float64(case):
    compare(*case, "float64")


@settings(max_examples=25, deadline=None)
@given(cases())
def test_numba_matches_numpy_float32(case):
    compare(*case, "float32")


def test_numba_float32_matches_float64_reference():
    """float32 on numba against the float64 reference, to float32 rounding."""
    for stem in ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"):
        ref = run(make_cell(stem, 3, 4, seed=2), 5, 3, np.array([5, 2, 4]), True, 0, 2,
                  "float64")
        cell32 = make_cell(stem, 3, 4, seed=2, dtype="float32", backend="numba")
        fast = run(cell32, 5, 3, np.array([5, 2, 4]), True, 0, 2, "float32")
        for a, b in zip(ref[:3], fast[:3]):
            assert refnorm.relative_error(a, b) <= TOL["float32"], stem
        for name in ref[4]:
            assert refnorm.relative_error(ref[4][name], fast[4][name]) <= TOL["float32"], \
                (stem, name)


def test_backends_mirror_each_other_file_for_file():
    root = pathlib.Path(refnorm.__file__).parent
    files = lambda pkg: sorted(p.name for p in (root / pkg).glob("*.py"))  # noqa: E731
    assert files("numpy_ref") == files("numba_cpu")
    assert refnorm.numpy_ref.__all__ == refnorm.numba_cpu.__all__


def test_every_compiled_function_cites_the_reference():
    """Each compiled function carries, as comments, the equation tags or NumPy lines of the
    reference it implements: at least one comment per loop nest."""
    import inspect
    import re
    from numba.core.registry import CPUDispatcher
    tag = re.compile(r"\((BPTT|BN|LN|LSTM|BN-LSTM|SEQBN-LSTM|LN-LSTM) \d+[a-z]?\)")
    for module in ("common", "norms", "lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"):
        mod = getattr(refnorm.numba_cpu, module)
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mod.__name__:
                source = inspect.getsource(obj.py_func)
                comments = [line for line in source.splitlines() if "#" in line]
                assert comments, (module, name)
                assert any(tag.search(c) or "np." in c or "=" in c.split("#", 1)[1]
                           for c in comments), (module, name)


def test_numba_is_not_slower_than_the_book():
    """An order-of-magnitude guard only (timings belong in benchmarks/): the compiled backend
    must not be slower than the NumPy reference at a moderate shape."""
    x = np.random.default_rng(0).standard_normal((50, 16, 32))
    times = {}
    for backend in ("numpy", "numba"):
        cell = make_cell("ln_lstm", 32, 32, backend=backend)
        hs, _, cache = cell.forward(x)
        cell.backward(hs, cache)                     # compile / warm up
        start = time.perf_counter()
        for _ in range(3):
            hs, _, cache = cell.forward(x)
            cell.backward(hs, cache)
        times[backend] = time.perf_counter() - start
    assert times["numba"] < times["numpy"], times
