"""The CUDA backend against the NumPy reference: outputs, every gradient and every cache field for
every cell and option; the device helpers through tiny caller kernels; the matmul kernel alone.

Where they run: on numba-cuda's simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless
the variable is already set; CI has no GPU) or on a real GPU (NUMBA_ENABLE_CUDASIM=0, see
benchmarks/bench_gpu.py). The simulator checks the kernels' logic -- indexing, reductions,
synchronisation, masks -- not the hardware (numba issue #6055): tests marked `gpu` need a real
device. Launches are patched small (THREADS, TILE) so that the tiny shapes the simulator can
afford (~120 µs per simulated thread) still cross block and tile boundaries.
"""
import dataclasses
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import config, cuda, float64

import refnorm
import refnorm.numba_cuda
import refnorm.numpy_ref
from helpers import TOL, make_cell, random_data, ragged_mask
from refnorm.numba_cuda import common, norms
# A name, not common.MAX_THREADS: shared arrays need a compile-time size, and on a real GPU
# numba-cuda 0.30 types the module attribute as a plain int64 (TypingError); the simulator takes
# either, so only a run on a real GPU catches it.
from refnorm.numba_cuda.common import MAX_THREADS
from refnorm.numpy_ref import common as ref_common
from refnorm.numpy_ref import norms as ref_norms

SIMULATOR = bool(config.ENABLE_CUDASIM)
GPU = not SIMULATOR and cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not (SIMULATOR or GPU),
    reason="no CUDA GPU here and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM="
           f"{os.environ.get('NUMBA_ENABLE_CUDASIM')!r}): set NUMBA_ENABLE_CUDASIM=1 before "
           "numba is imported to run these tests on the simulator")
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a real CUDA GPU (this run: "
                               + ("the simulator" if SIMULATOR else "no GPU") + ")")

# Same criterion as tests/test_numba_backend.py: max|a − b| <= rtol·max|a| + atol·G, G the
# largest gradient entry of the run. rtol: the same formulas, only the order of sums differs
# (tiled matmul, tree reductions vs NumPy's pairwise sums, libm vs NumPy transcendentals),
# ~1e-16 per operation through T <= 3 steps. atol·G: gradients made of cancelling terms of size
# ~G (BN over 1-3 rows, LN over few features) keep a rounding error ~eps·G.
RTOL, ATOL = 1e-12, 1e-14


def parity_ok(a, b, rtol, atol_abs):
    diff = np.max(np.abs(np.asarray(a, np.float64) - b), initial=0.0)
    return diff <= rtol * np.max(np.abs(a), initial=0.0) + atol_abs


def shared_array_without_race(self, shape, dtype, alignment=None):
    """numba-cuda's simulator FakeCUDAShared.array with its check-then-create made atomic.

    The simulator (numba-cuda 0.30) finds a block's shared array by the caller's file and line
    with `get`, then creates and stores it if missing; two threads switched between those steps
    each get their own array, and the block silently computes garbage (seen here: 1 to 7 of the
    14 float64 parity tests failing in about half the runs with a 1e-5 s GIL switch interval;
    possible, if rarer, at the default 5 ms). Same lookup, under a lock; the caller is this
    function's caller, as in the original."""
    if alignment is not None:
        raise RuntimeError("Array alignment is not supported in cudasim")
    if shape == 0:                                        # dynamic shared memory: unchanged
        return SIM_SHARED_ARRAY(self, shape, dtype)
    caller = (sys._getframe(1).f_code.co_filename, sys._getframe(1).f_lineno)
    with SIM_SHARED_LOCK:
        res = self._allocations.get(caller)
        if res is None:
            if isinstance(dtype, kernelapi.types.Type):
                dtype = kernelapi.numpy_support.as_dtype(dtype)
            res = np.empty(shape, dtype)
            self._allocations[caller] = res
    return res


if SIMULATOR:
    from numba.cuda.simulator import kernelapi
    SIM_SHARED_ARRAY = kernelapi.FakeCUDAShared.array
    SIM_SHARED_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """2 threads per block and 3×3 matmul tiles: B, H = 3 cross blocks, 4H = 12 and T·B = 9
    cross tiles. On the simulator also a short GIL switch interval (it busy-waits on its
    threads, and the default 5 ms interval makes every syncthreads cost milliseconds) and the
    race-free shared-array lookup above."""
    monkeypatch.setattr(common, "THREADS", 2)
    monkeypatch.setattr(common, "TILE", 3)
    interval = sys.getswitchinterval()
    if SIMULATOR:
        monkeypatch.setattr(kernelapi.FakeCUDAShared, "array", shared_array_without_race)
        sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def run(cell, T, B, lengths, training, t0, seed, state_grads=True):
    data = random_data(cell, T, B, seed=seed)
    hs, (hT, cT), cache = cell.forward(data["x"], data["h0"], data["c0"], lengths=lengths,
                                       training=training, t0=t0, update_stats=False)
    grads = cell.backward(data["dhs"], cache, data["dhT"], data["dcT"], state_grads=state_grads)
    return hs, hT, cT, cache, grads


def assert_parity(ref, got):
    for name, a, b in zip(("hs", "hT", "cT"), ref[:3], got[:3]):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype, name
        assert refnorm.relative_error(a, b) <= RTOL, name
    assert set(ref[4]) == set(got[4])
    G = max(np.max(np.abs(g)) for g in ref[4].values())
    for name in ref[4]:
        assert got[4][name].shape == ref[4][name].shape, name
        assert parity_ok(ref[4][name], got[4][name], RTOL, ATOL * G), name
    assert type(ref[3]) is type(got[3])
    for field in dataclasses.fields(ref[3]):
        a, b = getattr(ref[3], field.name), getattr(got[3], field.name)
        if a is None:                      # the fields of the other terms= variant
            assert b is None, field.name
        elif isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray), field.name
            assert a.shape == b.shape and a.dtype == b.dtype, field.name
            assert parity_ok(a, b, RTOL, ATOL * max(1.0, np.max(np.abs(a), initial=0))), \
                field.name
        elif field.name == "params":       # what the equations ran with: b with φ, β folded in
            assert set(a) == set(b), field.name
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            assert a == b, field.name


# (stem, options, training, T, B, lengths, t0): every cell, training and inference, both
# pad_stats, per-gate LN, ragged masks with an empty row (BN statistics of 1 row at later steps);
# then the variants of derivations/variants.md: the run-time forget bias and the term shifts
# folded into b (VAR 1), (VAR 2), the normalised carry (VAR 3), (VAR 4), and LN of the summed
# terms (VAR 5), (VAR 6), joint and per gate, alone and together (TF1's LayerNormBasicLSTMCell).
CASES = [
    ("lstm", {}, True, 3, 3, [3, 1, 2], 0),
    ("bn_lstm", {}, True, 3, 3, [3, 1, 0], 0),
    ("bn_lstm", {"pad_stats": "include", "eps": 1e-3}, True, 3, 3, [2, 3, 1], 0),
    ("bn_lstm", {}, False, 2, 3, [2, 1, 2], 5),
    ("bn_lstm", {"pad_stats": "include"}, False, 3, 2, [1, 3], 0),
    ("seq_bn_lstm", {}, True, 3, 3, [3, 1, 0], 0),
    ("seq_bn_lstm", {"pad_stats": "include", "eps": 1e-3}, True, 3, 2, [2, 3], 0),
    ("seq_bn_lstm", {}, False, 2, 3, [2, 1, 2], 0),
    ("ln_lstm", {}, True, 3, 3, [3, 1, 2], 0),
    ("ln_lstm", {"per_gate": True}, True, 3, 2, [1, 3], 0),
    ("lstm", {"forget_bias": 1.0}, True, 3, 2, [3, 1], 0),
    ("bn_lstm", {"carry": "normalized"}, True, 3, 3, [3, 1, 0], 0),
    ("bn_lstm", {"carry": "normalized", "term_beta": True}, True, 3, 3, [2, 3, 1], 0),
    ("bn_lstm", {"carry": "normalized", "term_beta": True, "forget_bias": 1.0}, False, 3, 3,
     [3, 1, 2], 4),
    ("ln_lstm", {"carry": "normalized", "term_beta": True}, True, 3, 3, [3, 1, 2], 0),
    ("ln_lstm", {"terms": "summed"}, True, 3, 2, [1, 3], 0),
    ("ln_lstm", {"terms": "summed", "per_gate": True, "carry": "normalized", "forget_bias": 1.0,
                 "eps": 1e-3}, True, 3, 3, [3, 2, 0], 0),
    # eps = 0 (BN 15), (LN 11): steps 1, 2 have one valid row (v = 0 exactly)
    ("bn_lstm", {"eps": 0.0}, True, 3, 3, [3, 1, 0], 0),
    ("seq_bn_lstm", {"eps": 0.0}, True, 3, 3, [3, 1, 0], 0),
    ("ln_lstm", {"eps": 0.0, "carry": "normalized", "term_beta": True}, True, 3, 3, [3, 1, 2], 0),
]


@needs_cuda
@pytest.mark.parametrize("stem, options, training, T, B, lengths, t0", CASES,
                         ids=[f"{c[0]}-{'train' if c[2] else 'eval'}-{i}"
                              for i, c in enumerate(CASES)])
def test_cuda_matches_numpy_float64(stem, options, training, T, B, lengths, t0):
    D, H = 2, 3
    ref = run(make_cell(stem, D, H, seed=T + B, **options), T, B, np.array(lengths), training,
              t0, seed=B)
    got = run(make_cell(stem, D, H, seed=T + B, backend="cuda", **options), T, B,
              np.array(lengths), training, t0, seed=B)
    assert_parity(ref, got)


@st.composite
def cases(draw):
    """Random shapes, masks and options beyond the fixed CASES (few examples: ~1 s each on
    the simulator)."""
    stem = draw(st.sampled_from(["lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"]))
    training = draw(st.booleans())
    T = draw(st.integers(1, 3))
    B = draw(st.integers(2 if stem == "bn_lstm" and training else 1, 3))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B).filter(any))
    options = {"forget_bias": draw(st.sampled_from([0.0, 1.0]))}
    if stem == "ln_lstm":
        options["per_gate"] = draw(st.booleans())
        options["terms"] = draw(st.sampled_from(["separate", "summed"]))
    if stem in ("bn_lstm", "seq_bn_lstm"):
        options["pad_stats"] = draw(st.sampled_from(["exclude", "include"]))
    if stem in ("bn_lstm", "ln_lstm"):
        options["carry"] = draw(st.sampled_from(["raw", "normalized"]))
        options["term_beta"] = options.get("terms") != "summed" and draw(st.booleans())
    t0 = draw(st.integers(0, 8)) if stem == "bn_lstm" else 0
    return (stem, options, training, T, B, lengths, t0, draw(st.integers(1, 3)),
            draw(st.integers(1, 4)), draw(st.integers(0, 99)))


@needs_cuda
@settings(max_examples=8, deadline=None)
@given(cases())
def test_cuda_matches_numpy_on_drawn_cases(case):
    stem, options, training, T, B, lengths, t0, D, H, seed = case
    ref = run(make_cell(stem, D, H, seed=seed, **options), T, B, np.array(lengths), training,
              t0, seed)
    got = run(make_cell(stem, D, H, seed=seed, backend="cuda", **options), T, B,
              np.array(lengths), training, t0, seed)
    assert_parity(ref, got)


@needs_cuda
def test_state_grads_false_returns_the_reference_keys():
    cell = make_cell("ln_lstm", 2, 2, backend="cuda")
    ref = make_cell("ln_lstm", 2, 2)
    got_keys = set(run(cell, 2, 2, np.array([2, 1]), True, 0, 0, state_grads=False)[4])
    assert got_keys == set(run(ref, 2, 2, np.array([2, 1]), True, 0, 0, state_grads=False)[4])
    assert "dh" not in got_keys


@needs_cuda
def test_float32_lstm_is_float32_exact():
    """No normalisation, no ill-conditioning: float32 on the device is within TOL["float32"]
    of the float64 reference on the same (float32-exact) numbers, and stays float32."""
    c32 = make_cell("lstm", 2, 3, dtype="float32", backend="cuda")
    c64 = make_cell("lstm", 2, 3)
    for name in c64.params:
        c64.params[name][...] = c32.params[name]
    d32 = random_data(c32, 3, 2, seed=4)
    d64 = {k: v.astype(np.float64) for k, v in d32.items()}
    out = []
    for cell, d in ((c64, d64), (c32, d32)):
        hs, _, cache = cell.forward(d["x"], d["h0"], d["c0"], lengths=np.array([3, 2]))
        out.append((hs, cell.backward(d["dhs"], cache, d["dhT"], d["dcT"])))
    assert out[1][0].dtype == np.float32
    assert all(g.dtype == np.float32 for g in out[1][1].values())
    assert refnorm.relative_error(out[0][0], out[1][0]) <= TOL["float32"]
    for name, g in out[0][1].items():
        assert refnorm.relative_error(g, out[1][1][name]) <= TOL["float32"], name


@needs_cuda
def test_device_arrays_in_give_device_arrays_out():
    """Device inputs stay on the device (no copies back): the outputs and cache fields (also
    the statistics mask made for pad_stats="include") are device arrays, and backward from that
    cache equals the NumPy path."""
    cell = make_cell("bn_lstm", 2, 3, seed=3)
    d = random_data(cell, 2, 3, seed=3)
    mask = ragged_mask(2, 3, [2, 1, 2])
    params = {k: v.copy() for k, v in cell.params.items()}
    impl = refnorm.numba_cuda
    options = {"training": True, "eps": 1e-5, "pad_stats": "include"}
    host = impl.bn_lstm_forward(d["x"], d["h0"], d["c0"], mask, params, **options)
    dev = impl.bn_lstm_forward(*(cuda.to_device(a) for a in (d["x"], d["h0"], d["c0"], mask)),
                               params, **options)
    assert common.is_device_array(dev[0]) and common.is_device_array(dev[3].a_hat)
    assert common.is_device_array(dev[3].stat_mask)
    np.testing.assert_array_equal(dev[0].copy_to_host(), host[0])
    g_host = impl.bn_lstm_backward(d["dhs"], d["dhT"], d["dcT"], host[3], True)
    g_dev = impl.bn_lstm_backward(*(cuda.to_device(d[k]) for k in ("dhs", "dhT", "dcT")),
                                  dev[3], True)
    assert set(g_dev) == set(g_host)
    for name, g in g_host.items():
        assert common.is_device_array(g_dev[name]), name
        np.testing.assert_array_equal(g_dev[name].copy_to_host(), g, err_msg=name)


@needs_cuda
@pytest.mark.parametrize("stem", ["bn_lstm", "seq_bn_lstm"])
def test_training_pass_updates_population_statistics_like_the_reference(stem):
    """The cells update cell.stats from the cache's statistics: same result on both backends."""
    cells = [make_cell(stem, 2, 2, seed=8, backend=b) for b in ("numpy", "cuda")]
    d = random_data(cells[0], 2, 3, seed=8)
    for cell in cells:
        cell.forward(d["x"], d["h0"], d["c0"], lengths=np.array([2, 1, 2]), training=True)
    for name, value in cells[0].stats.items():
        assert refnorm.relative_error(value, cells[1].stats[name]) <= RTOL, name


@needs_cuda
def test_inference_without_population_statistics_raises():
    cell = make_cell("bn_lstm", 2, 2)
    d = random_data(cell, 2, 2)
    with pytest.raises(ValueError, match="pop"):
        refnorm.numba_cuda.bn_lstm_forward(d["x"], d["h0"], d["c0"], np.ones((2, 2)),
                                           cell.params, training=False, eps=1e-5)


@pytest.mark.parametrize("stem, option", [("bn_lstm", {"carry": "normal"}),
                                           ("ln_lstm", {"carry": "Normalized"}),
                                           ("ln_lstm", {"terms": "sum"})])
def test_unknown_variant_is_a_value_error_before_any_launch(stem, option):
    cell = make_cell(stem, 2, 2)
    d = random_data(cell, 1, 2)
    extra = {"training": True} if stem == "bn_lstm" else {}
    with pytest.raises(ValueError, match=next(iter(option))):
        getattr(refnorm.numba_cuda, stem + "_forward")(d["x"], d["h0"], d["c0"], np.ones((1, 2)),
                                                       cell.params, eps=1e-5, **extra, **option)


# -- the matmul kernel alone ----------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matmul_kernel_on_shapes_that_are_not_tile_multiples(trans_a, trans_b, dtype):
    """M, K, N = 5, 7, 4 with TILE = 3: partial tiles on every edge, three steps along K."""
    rng = np.random.default_rng(1)
    M, K, N = 5, 7, 4
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    C = cuda.device_array((M, N), dtype)
    common.matmul(cuda.to_device(A), cuda.to_device(B), C, trans_a, trans_b)
    want = (A.T if trans_a else A) @ (B.T if trans_b else B)
    # float64: sums of 7 products in another order; float32: the same in float32 arithmetic
    tol = {"float64": 1e-15, "float32": 1e-6}[dtype]
    assert refnorm.relative_error(want, C.copy_to_host()) <= tol


# -- device helpers through tiny caller kernels ---------------------------------------------
@cuda.jit
def sigmoid_caller(z, out):
    i = cuda.grid(1)
    if i < z.shape[0]:
        out[i] = common.sigmoid(z[i])


@cuda.jit
def block_sum_caller(v, out):
    buf = cuda.shared.array(MAX_THREADS, float64)
    part = 0.0
    for r in range(cuda.threadIdx.x, v.shape[0], cuda.blockDim.x):
        part += v[r]
    total = common.block_sum(part, buf)
    out[cuda.blockIdx.x, cuda.threadIdx.x] = total        # every thread must see the total


@cuda.jit
def row_stats_caller(Z, groups, eps, zhat, mean, var):
    buf = cuda.shared.array(MAX_THREADS, float64)
    r = cuda.blockIdx.x
    w = Z.shape[1] // groups
    for q in range(groups):
        mu, v = norms.row_stats(Z, r, q * w, w, buf)
        norms.row_normalize(Z, r, q * w, w, mu, v, eps, zhat)
        if cuda.threadIdx.x == 0:
            mean[r, q] = mu
            var[r, q] = v


@cuda.jit
def row_backward_caller(dy, zhat, var, gamma, groups, eps, dz):
    buf = cuda.shared.array(MAX_THREADS, float64)
    r = cuda.blockIdx.x
    w = dy.shape[1] // groups
    for q in range(groups):
        norms.row_backward(dy, zhat, var[r, q], gamma, r, q * w, w, eps, dz, buf)


@needs_cuda
def test_sigmoid_device_function():
    z = np.array([-800.0, -40.0, -3.5, -1e-3, 0.0, 2e-3, 0.7, 36.0, 750.0])
    out = np.empty_like(z)
    sigmoid_caller[common.grid(z.size), common.THREADS](z, out)
    # the same stable formula; exp may differ by 1 ulp (CUDA's exp on a GPU), plus 2 roundings
    assert np.all(np.abs(out - ref_common.sigmoid(z)) <= 5e-16 * np.abs(ref_common.sigmoid(z)))
    assert np.all(np.isfinite(out))


@needs_cuda
@pytest.mark.parametrize("threads", [1, 3, 4])
def test_block_sum_device_function(threads):
    """Trees over 1, 3 (not a power of two) and 4 threads; 7 values so threads take 2-7 each."""
    v = np.random.default_rng(2).standard_normal(7)
    out = np.zeros((2, threads))
    block_sum_caller[2, threads](v, out)
    assert np.all(np.abs(out - v.sum()) <= 1e-15 * np.abs(v).sum())


@needs_cuda
@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("groups", [1, 4])
def test_layer_norm_row_device_functions(groups, eps):
    """Row 1 is constant: with eps = 0 its s is 0, read as ∞ (LN 11)."""
    rng = np.random.default_rng(3)
    N, F = 3, 12
    Z, dy, gamma = rng.standard_normal((N, F)), rng.standard_normal((N, F)), rng.uniform(0.5, 2, F)
    Z[1] = 0.75
    zhat, mean, var = np.empty((N, F)), np.empty((N, groups)), np.empty((N, groups))
    row_stats_caller[N, common.THREADS](Z, groups, eps, zhat, mean, var)
    _, zhat_ref, mean_ref, var_ref = ref_norms.layernorm_forward(Z, gamma, None, eps, groups)
    dz = np.empty((N, F))
    row_backward_caller[N, common.THREADS](dy, zhat_ref, var_ref, gamma, groups, eps, dz)
    dz_ref = ref_norms.layernorm_backward(dy, zhat_ref, var_ref, gamma, eps, groups)[0]
    for a, b in ((zhat_ref, zhat), (mean_ref, mean), (var_ref, var), (dz_ref, dz)):
        assert refnorm.relative_error(a, b) <= RTOL


@needs_cuda
@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_column_kernels(training, eps):
    """Masked BN over 5 rows (2 masked) by the column kernels, forward and backward. Column 1
    has zero variance (constant valid rows; a population variance of 0): with eps = 0 its s is
    0, read as ∞ (BN 15)."""
    rng = np.random.default_rng(4)
    N, F = 5, 3
    Z, dy = rng.standard_normal((N, F)), rng.standard_normal((N, F))
    Z[:, 1] = 0.75
    gamma, beta = rng.uniform(0.5, 2, F), rng.standard_normal(F)
    m = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    pop = None if training else (rng.standard_normal(F), rng.uniform(0.5, 2, F))
    if pop is not None:
        pop[1][1] = 0.0
    y_ref, zhat_ref, mean_ref, var_ref = ref_norms.batchnorm_forward(Z, m, gamma, beta, eps, pop)
    mean, var = (np.empty(F), np.empty(F)) if training else (pop[0].copy(), pop[1].copy())
    zhat, y = np.empty((N, F)), np.empty((N, F))
    mean_d, var_d = cuda.to_device(mean), cuda.to_device(var)
    norms.batchnorm_forward(Z, m, gamma, beta, eps, training, mean_d, var_d, zhat, y)
    dz = np.empty((N, F))
    norms.batchnorm_backward(dy, zhat_ref, var_ref, m, gamma, eps, training, dz)
    dz_ref = ref_norms.batchnorm_backward(dy, zhat_ref, var_ref, m, gamma, eps, training)[0]
    for a, b in ((y_ref, y), (zhat_ref, zhat), (mean_ref, mean_d.copy_to_host()),
                 (var_ref, var_d.copy_to_host()), (dz_ref, dz)):
        assert refnorm.relative_error(a, b) <= RTOL


# -- structure and errors -------------------------------------------------------------------
def test_backends_mirror_each_other_file_for_file():
    root = pathlib.Path(refnorm.__file__).parent
    files = lambda pkg: sorted(p.name for p in (root / pkg).glob("*.py"))  # noqa: E731
    assert files("numpy_ref") == files("numba_cuda")
    assert refnorm.numpy_ref.__all__ == refnorm.numba_cuda.__all__
    assert "cuda" in refnorm.backends.BACKENDS


def test_every_kernel_cites_the_reference():
    """Each kernel and device function carries, as comments, the equation tags or NumPy lines
    of the reference it implements."""
    import inspect
    import re
    tag = re.compile(r"\((BPTT|BN|LN|LSTM|BN-LSTM|SEQBN-LSTM|LN-LSTM|VAR) \d+[a-z]?\)")
    found = 0
    for module in ("common", "norms", "lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"):
        mod = getattr(refnorm.numba_cuda, module)
        for name, obj in vars(mod).items():
            fn = getattr(obj, "py_func", None) or getattr(obj, "fn", None)   # GPU / simulator
            if fn is None or getattr(fn, "__module__", None) != mod.__name__:
                continue
            found += 1
            comments = [line.split("#", 1)[1] for line in inspect.getsource(fn).splitlines()
                        if "#" in line]
            assert any(tag.search(c) or "np." in c or "=" in c for c in comments), \
                (module, name)
    assert found >= 20


@pytest.mark.skipif(GPU, reason="a GPU is present: the missing-device error cannot occur")
def test_without_gpu_or_simulator_import_works_and_first_use_says_why():
    code = ("import numpy as np, refnorm\n"
            "cell = refnorm.LSTM(2, 2, backend='cuda')\n"
            "try:\n"
            "    cell.forward(np.ones((1, 1, 2)))\n"
            "except RuntimeError as e:\n"
            "    print('ERROR', e)\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERROR backend='cuda' needs an NVIDIA GPU" in out.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in out.stdout


# -- a real device --------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("stem, options", [("lstm", {}), ("bn_lstm", {}),
                                           ("seq_bn_lstm", {"pad_stats": "include"}),
                                           ("ln_lstm", {"per_gate": True})])
def test_gpu_parity_at_default_launches(monkeypatch, stem, options):
    """The shipped THREADS and TILE (not the patched ones), a batch wider than a warp and
    hidden sizes that are not tile multiples, both matmul paths."""
    monkeypatch.setattr(common, "THREADS", 128)
    monkeypatch.setattr(common, "TILE", 16)
    lengths = np.random.default_rng(5).integers(1, 7, 70)
    ref = run(make_cell(stem, 19, 37, seed=5, **options), 6, 70, lengths, True, 0, seed=5)
    for cublas in (False, True):
        monkeypatch.setattr(common, "USE_CUBLAS", cublas)
        got = run(make_cell(stem, 19, 37, seed=5, backend="cuda", **options), 6, 70, lengths,
                  True, 0, seed=5)
        assert_parity(ref, got)


@pytest.mark.gpu
@needs_gpu
def test_gpu_accepts_torch_cuda_tensors_without_copies():
    """__cuda_array_interface__ inputs (PyTorch CUDA tensors) give device outputs equal to the
    NumPy path's."""
    import torch
    cell = make_cell("ln_lstm", 3, 4, seed=9)
    d = random_data(cell, 3, 2, seed=9)
    mask = ragged_mask(3, 2, [3, 2])
    impl = refnorm.numba_cuda
    host = impl.ln_lstm_forward(d["x"], d["h0"], d["c0"], mask, cell.params, eps=1e-5)
    on_gpu = [torch.as_tensor(a, device="cuda") for a in (d["x"], d["h0"], d["c0"], mask)]
    dev = impl.ln_lstm_forward(*on_gpu, cell.params, eps=1e-5)
    assert common.is_device_array(dev[0])
    np.testing.assert_array_equal(dev[0].copy_to_host(), host[0])
    g_host = impl.ln_lstm_backward(d["dhs"], d["dhT"], d["dcT"], host[3])
    g_dev = impl.ln_lstm_backward(*(torch.as_tensor(d[k], device="cuda")
                                    for k in ("dhs", "dhT", "dcT")), dev[3])
    for name, g in g_host.items():
        np.testing.assert_array_equal(g_dev[name].copy_to_host(), g, err_msg=name)


@pytest.mark.gpu
@needs_gpu
def test_gpu_cublas_path_agrees_with_the_tiled_kernel(monkeypatch):
    """Both matmul paths on every transpose combination (CuPy or PyTorch brings cuBLAS; the GPU
    machines have PyTorch)."""
    assert common.cublas_provider() is not None, "neither CuPy nor a CUDA PyTorch imports"
    rng = np.random.default_rng(6)
    for trans_a, trans_b in ((False, False), (True, False), (False, True)):
        A = rng.standard_normal((37, 70) if trans_a else (70, 37))
        B = rng.standard_normal((148, 37) if trans_b else (37, 148))
        out = {}
        for cublas in (False, True):
            monkeypatch.setattr(common, "USE_CUBLAS", cublas)
            C = cuda.device_array((70, 148))
            common.matmul(cuda.to_device(A), cuda.to_device(B), C, trans_a, trans_b)
            out[cublas] = C.copy_to_host()
        # two summation orders of 37 float64 products
        assert refnorm.relative_error(out[False], out[True]) <= 1e-14
