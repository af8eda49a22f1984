"""The CUDA backend's RNN family against the book: refnorm/numba_cuda/rnn.py, bn_rnn.py,
seq_bn_rnn.py, ln_rnn.py called directly, beside refnorm/numpy_ref's, with random parameters
(no cell classes).

Where they run: as tests/test_cuda_backend.py says -- numba-cuda's simulator (tests/conftest.py)
or a real GPU; tests marked `gpu` need the real device. Its autouse fixture small_launches is
imported here: 2 threads per block and 3×3 matmul tiles, so that B = H = 3 cross block
boundaries (rows for BN, features for LN, (row, unit) pairs for the elementwise kernels) and
T·B = 9 crosses tiles, plus the race-free simulated shared memory.

Every problem is random and non-zero: weights and biases ~ N(0, 0.5²), gains ~ U(0.5, 1.5),
x ~ N(0, 1), h0 ~ N(0, 0.5²), upstream dhs, dhT ~ N(0, 1), population means ~ N(0, 0.5²) and
variances ~ U(0.5, 1.5). The mask has lengths (3, 1, 0): step 0 has two valid rows, steps 1 and
2 exactly one (per-step BN then resets it to φ(b), (BN-RNN 9)), and one sequence has no valid
step at all.
"""
import dataclasses
import inspect
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda

import refnorm.numba_cuda
import refnorm.numpy_ref
from helpers import TOL, ragged_mask
from refnorm.config import DEFAULT_EPS
from refnorm.gradcheck import relative_error
from refnorm.numba_cuda import common
from refnorm.numba_cuda.rnn import activation, activation_grad
from test_cuda_backend import ATOL, needs_cuda, needs_gpu, parity_ok
from test_cuda_backend import small_launches  # noqa: F401  (autouse: small THREADS and TILE)

STEMS = ("rnn", "bn_rnn", "seq_bn_rnn", "ln_rnn")
T, B, D, H = 3, 3, 2, 3
LENGTHS = (3, 1, 0)


def terms_of(stem, options):
    return options.get("terms", {"bn_rnn": "separate", "ln_rnn": "summed"}.get(stem))


def problem(stem, options, T=T, B=B, D=D, H=H, lengths=LENGTHS, seed=0, dtype="float64"):
    """(args, kwargs) of <stem>_forward and the upstream gradients (dhs, dhT), all random."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(dtype)  # noqa
    params = {"Wx": normal(D, H, scale=0.5), "Wh": normal(H, H, scale=0.5),
              "b": normal(H, scale=0.5)}
    terms = terms_of(stem, options)
    gains = {"rnn": (), "seq_bn_rnn": ("gamma_x",)}.get(
        stem, ("gamma_x", "gamma_h") if terms == "separate" else ("gamma_z",))
    params.update({g: rng.uniform(0.5, 1.5, H).astype(dtype) for g in gains})
    kwargs = dict(options)
    if stem != "rnn":
        kwargs.setdefault("eps", DEFAULT_EPS)
    if stem in ("bn_rnn", "seq_bn_rnn") and not options["training"]:
        keys = (refnorm.numpy_ref.bn_rnn.STAT_NAMES[terms] if stem == "bn_rnn"
                else ("mean_x", "var_x"))
        shape = (T, H) if stem == "bn_rnn" else (H,)
        kwargs["pop"] = {k: (normal(*shape, scale=0.5) if k.startswith("mean")
                             else rng.uniform(0.5, 1.5, shape).astype(dtype)) for k in keys}
    args = (normal(T, B, D), normal(B, H, scale=0.5), ragged_mask(T, B, lengths), params)
    return args, kwargs, (normal(T, B, H), normal(B, H))


def run(impl, stem, args, kwargs, upstream, state_grads=True):
    hs, hT, cache = getattr(impl, stem + "_forward")(*args, **kwargs)
    grads = getattr(impl, stem + "_backward")(*upstream, cache, state_grads)
    return hs, hT, cache, grads


def assert_parity(ref, got, tol=TOL["float64_reorder"]):
    """Outputs, every gradient and every cache field within tol of the book's, relative to the
    array's largest entry, with the book's types, shapes and dtypes. Gradients may also differ by
    ATOL·G, G the run's largest gradient entry (test_cuda_backend's criterion): a gradient made
    of cancelling terms of size ~G keeps a rounding error ~eps·G however small it ends up (seen:
    dWx = ±3.6e-5 through an LN over H = 2 features, 1.5e-12 relative, 5e-17 absolute)."""
    for name, a, b in (("hs", ref[0], got[0]), ("hT", ref[1], got[1])):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, name
        assert relative_error(a, b) <= tol, name
    assert set(ref[3]) == set(got[3])
    G = max(np.max(np.abs(g), initial=0.0) for g in ref[3].values())
    for name, g in ref[3].items():
        assert got[3][name].shape == g.shape and got[3][name].dtype == g.dtype, name
        assert parity_ok(g, got[3][name], tol, ATOL * G), name
    assert type(ref[2]) is type(got[2])
    for field in dataclasses.fields(ref[2]):
        a, b = getattr(ref[2], field.name), getattr(got[2], field.name)
        if a is None:                                      # the other terms= form's fields
            assert b is None, field.name
        elif field.name == "params":                       # copies of what forward ran with
            assert set(a) == set(b)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        elif isinstance(a, (np.ndarray, np.generic)) and field.name not in ("x", "mask"):
            assert np.shape(a) == np.shape(b) and np.asarray(a).dtype == np.asarray(b).dtype, \
                field.name
            assert relative_error(a, b) <= tol, field.name
        elif isinstance(a, np.ndarray):                    # inputs, handed back as given
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert a == b, field.name


# Every cell; tanh and relu; both term forms; training and inference; pad_stats exclude and
# include; a larger eps once. Each row costs ~2-3 s on the simulator.
CASES = [
    ("rnn", {"nonlinearity": "tanh"}),
    ("rnn", {"nonlinearity": "relu"}),
    ("bn_rnn", {"training": True, "terms": "separate", "nonlinearity": "tanh"}),
    ("bn_rnn", {"training": True, "terms": "summed", "nonlinearity": "relu",
                "pad_stats": "include"}),
    ("bn_rnn", {"training": False, "terms": "separate", "nonlinearity": "relu",
                "pad_stats": "include"}),
    ("bn_rnn", {"training": False, "terms": "summed", "nonlinearity": "tanh"}),
    ("seq_bn_rnn", {"training": True, "nonlinearity": "tanh"}),
    ("seq_bn_rnn", {"training": True, "nonlinearity": "relu", "pad_stats": "include",
                    "eps": 1e-3}),
    ("seq_bn_rnn", {"training": False, "nonlinearity": "tanh", "pad_stats": "include"}),
    ("ln_rnn", {"terms": "summed", "nonlinearity": "relu"}),
    ("ln_rnn", {"terms": "separate", "nonlinearity": "tanh"}),
]


def case_id(case):
    stem, options = case
    words = [("train" if v else "infer") if k == "training" else f"{k}={v}" if k == "eps"
             else str(v) for k, v in options.items()]
    return "-".join([stem] + words)


@needs_cuda
@pytest.mark.parametrize("stem, options", CASES, ids=[case_id(c) for c in CASES])
def test_cuda_rnn_matches_the_book_float64(stem, options):
    args, kwargs, upstream = problem(stem, options, seed=len(case_id((stem, options))))
    ref = run(refnorm.numpy_ref, stem, args, kwargs, upstream)
    got = run(refnorm.numba_cuda, stem, args, kwargs, upstream)
    assert_parity(ref, got)


@st.composite
def drawn_cases(draw):
    """Shapes, masks and options beyond CASES: T, B, H down to 1 (BN over one row, LN over one
    feature: ẑ = 0), any lengths with at least one valid step."""
    stem = draw(st.sampled_from(STEMS))
    options = {"nonlinearity": draw(st.sampled_from(["tanh", "relu"]))}
    if stem in ("bn_rnn", "seq_bn_rnn"):
        options["training"] = draw(st.booleans())
        options["pad_stats"] = draw(st.sampled_from(["exclude", "include"]))
    if stem in ("bn_rnn", "ln_rnn"):
        options["terms"] = draw(st.sampled_from(["separate", "summed"]))
    T, B = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B).filter(any))
    return (stem, options, T, B, draw(st.integers(1, 3)), draw(st.integers(1, 4)), lengths,
            draw(st.integers(0, 99)))


@needs_cuda
@settings(max_examples=12, deadline=None)
@given(drawn_cases())
def test_cuda_rnn_matches_the_book_on_drawn_cases(case):
    stem, options, T, B, D, H, lengths, seed = case
    args, kwargs, upstream = problem(stem, options, T, B, D, H, lengths, seed)
    assert_parity(run(refnorm.numpy_ref, stem, args, kwargs, upstream),
                  run(refnorm.numba_cuda, stem, args, kwargs, upstream))


@needs_cuda
def test_cuda_rnn_without_state_grads_returns_the_books_keys():
    args, kwargs, upstream = problem("rnn", {}, T=1, B=2, lengths=(1, 0))
    got = run(refnorm.numba_cuda, "rnn", args, kwargs, upstream, state_grads=False)[3]
    assert set(got) == set(run(refnorm.numpy_ref, "rnn", args, kwargs, upstream, False)[3])
    assert "dh" not in got


@needs_cuda
@pytest.mark.parametrize("stem, options", [("rnn", {"nonlinearity": "tanh"}),
                                           ("ln_rnn", {"terms": "summed"})])
def test_cuda_rnn_float32_stays_float32(stem, options):
    """float32 in, float32 out, within TOL["float32"] of the float64 book on the same
    (float32-exact) numbers."""
    args, kwargs, upstream = problem(stem, options, T=2, seed=7, dtype="float32")
    got = run(refnorm.numba_cuda, stem, args, kwargs, upstream)
    to64 = lambda a: {k: v.astype(np.float64) for k, v in a.items()} if isinstance(a, dict) \
        else a.astype(np.float64)                                              # noqa: E731
    ref = run(refnorm.numpy_ref, stem, tuple(map(to64, args)), kwargs, tuple(map(to64, upstream)))
    assert got[0].dtype == np.float32 and got[2].h.dtype == np.float32
    assert relative_error(ref[0], got[0]) <= TOL["float32"]
    for name, g in ref[3].items():
        assert got[3][name].dtype == np.float32, name
        assert relative_error(g, got[3][name]) <= TOL["float32"], name


@needs_cuda
def test_cuda_rnn_device_arrays_in_give_device_arrays_out():
    """Device inputs stay on the device: outputs, cache fields (also the statistics mask made
    for pad_stats="include") and gradients are device arrays equal to the NumPy path's."""
    options = {"training": True, "terms": "summed", "pad_stats": "include"}
    (x, h0, mask, params), kwargs, (dhs, dhT) = problem("bn_rnn", options, T=2, seed=3)
    impl = refnorm.numba_cuda
    host = impl.bn_rnn_forward(x, h0, mask, params, **kwargs)
    dev = impl.bn_rnn_forward(*(cuda.to_device(a) for a in (x, h0, mask)), params, **kwargs)
    assert common.is_device_array(dev[0]) and common.is_device_array(dev[2].s_hat)
    assert common.is_device_array(dev[2].stat_mask)
    np.testing.assert_array_equal(dev[0].copy_to_host(), host[0])
    g_host = impl.bn_rnn_backward(dhs, dhT, host[2], True)
    g_dev = impl.bn_rnn_backward(cuda.to_device(dhs), cuda.to_device(dhT), dev[2], True)
    assert set(g_dev) == set(g_host)
    for name, g in g_host.items():
        assert common.is_device_array(g_dev[name]), name
        np.testing.assert_array_equal(g_dev[name].copy_to_host(), g, err_msg=name)


@pytest.mark.parametrize("stem, options, match", [
    ("rnn", {"nonlinearity": "sigmoid"}, "nonlinearity"),
    ("bn_rnn", {"training": True, "terms": "sum"}, "terms"),
    ("bn_rnn", {"training": False}, "pop"),
    ("seq_bn_rnn", {"training": True, "nonlinearity": "Tanh"}, "nonlinearity"),
    ("seq_bn_rnn", {"training": False}, "pop"),
    ("ln_rnn", {"terms": "separated"}, "terms")])
def test_cuda_rnn_bad_option_is_a_value_error_before_any_launch(stem, options, match):
    (x, h0, mask, params), kwargs, _ = problem("rnn", {})
    if stem != "rnn":
        kwargs["eps"] = DEFAULT_EPS
    with pytest.raises(ValueError, match=match):
        getattr(refnorm.numba_cuda, stem + "_forward")(x, h0, mask, params, **kwargs, **options)


# -- the device functions through a tiny caller kernel --------------------------------------
@cuda.jit
def activation_caller(z, relu, phi, dphi):
    i = cuda.grid(1)
    if i < z.shape[0]:
        phi[i] = activation(z[i], relu)
        dphi[i] = activation_grad(phi[i], relu)


@needs_cuda
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_activation_device_functions(nonlinearity):
    z = np.array([-30.0, -1.5, -1e-300, 0.0, 1e-300, 0.3, 2.0, 30.0])
    phi, dphi = np.empty_like(z), np.empty_like(z)
    activation_caller[common.grid(z.size), common.THREADS](z, int(nonlinearity == "relu"), phi,
                                                           dphi)
    want = np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0.0)      # (RNN 2)
    want_d = 1 - want ** 2 if nonlinearity == "tanh" else (want > 0) * 1.0   # (RNN 3)
    # libm's tanh vs NumPy's: at most 1 ulp apart, and 1 - φ² inherits it
    assert relative_error(want, phi) <= 2e-16 and relative_error(want_d, dphi) <= 5e-16


# -- structure ------------------------------------------------------------------------------
def test_every_rnn_kernel_cites_the_book():
    """Each kernel and device function of the four modules carries, as comments, the equation
    tags or NumPy lines of the book it implements."""
    tag = re.compile(r"\((BPTT|BN|LN|RNN|BN-RNN|SEQBN-RNN|LN-RNN) \d+[a-z]?\)")
    found = 0
    for stem in STEMS:
        mod = getattr(refnorm.numba_cuda, stem)
        for name, obj in vars(mod).items():
            fn = getattr(obj, "py_func", None) or getattr(obj, "fn", None)   # GPU / simulator
            if fn is None or getattr(fn, "__module__", None) != mod.__name__:
                continue
            found += 1
            comments = [line.split("#", 1)[1] for line in inspect.getsource(fn).splitlines()
                        if "#" in line]
            assert any(tag.search(c) for c in comments), (stem, name)
    assert found == 8                   # activation, activation_grad and 2 step kernels × 3


# -- a real device --------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("stem, options", [
    ("rnn", {"nonlinearity": "relu"}),
    ("bn_rnn", {"training": True, "terms": "summed"}),
    ("bn_rnn", {"training": False, "terms": "separate", "pad_stats": "include"}),
    ("seq_bn_rnn", {"training": True, "pad_stats": "include"}),
    ("ln_rnn", {"terms": "separate", "nonlinearity": "relu"}),
    ("ln_rnn", {"terms": "summed"})])
def test_gpu_rnn_parity_at_default_launches(monkeypatch, stem, options):
    """The shipped THREADS and TILE (not the patched ones), a batch wider than a warp and a
    hidden size that is not a tile multiple, both matmul paths."""
    monkeypatch.setattr(common, "THREADS", 128)
    monkeypatch.setattr(common, "TILE", 16)
    lengths = np.random.default_rng(5).integers(0, 7, 70)
    lengths[:2] = (6, 1)
    args, kwargs, upstream = problem(stem, options, T=6, B=70, D=19, H=37, lengths=lengths,
                                     seed=5)
    ref = run(refnorm.numpy_ref, stem, args, kwargs, upstream)
    for cublas in (False, True):
        monkeypatch.setattr(common, "USE_CUBLAS", cublas)
        assert_parity(ref, run(refnorm.numba_cuda, stem, args, kwargs, upstream))
