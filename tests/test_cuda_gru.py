"""The CUDA backend's GRU family against the book: refnorm/numba_cuda/gru.py, bn_gru.py,
seq_bn_gru.py, ln_gru.py called directly, beside refnorm/numpy_ref's, with random parameters
(no cell classes). The twin of tests/test_cuda_rnn.py, whose parity check it uses.

Where they run: as tests/test_cuda_backend.py says -- numba-cuda's simulator (tests/conftest.py)
or a real GPU; tests marked `gpu` need the real device. Its autouse fixture small_launches is
imported here: 2 threads per block and 3×3 matmul tiles, so that B = H = 3 cross block
boundaries (rows for BN-GRU, features of the 3H = 9 for LN-GRU, (row, unit) pairs for the
elementwise kernels) and T·B = 9, 3H = 9 and 2H = 6 cross tiles, plus the race-free simulated
shared memory.

Every problem is random and non-zero: weights and biases (b_hn included) ~ N(0, 0.5²), gains ~
U(0.5, 1.5), x ~ N(0, 1), h0 ~ N(0, 0.5²), upstream dhs, dhT ~ N(0, 1), population means ~
N(0, 0.5²) and variances ~ U(0.5, 1.5). The mask has lengths (3, 1, 0): step 0 has two valid
rows, steps 1 and 2 exactly one (per-step BN then runs that row with constant gates,
(BN-GRU 8)), and one sequence has no valid step at all.
"""
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
from refnorm.numba_cuda.gru import gru_gates_backward, gru_gates_forward
from refnorm.numpy_ref import gru as ref_gru
from test_cuda_backend import needs_cuda, needs_gpu
from test_cuda_backend import small_launches  # noqa: F401  (autouse: small THREADS and TILE)
from test_cuda_rnn import assert_parity, case_id, run

STEMS = ("gru", "bn_gru", "seq_bn_gru", "ln_gru")
T, B, D, H = 3, 3, 2, 3
LENGTHS = (3, 1, 0)


def problem(stem, options, T=T, B=B, D=D, H=H, lengths=LENGTHS, seed=0, dtype="float64"):
    """(args, kwargs) of <stem>_forward and the upstream gradients (dhs, dhT), all random."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(dtype)  # noqa
    G = 3 * H
    params = {"Wx": normal(D, G, scale=0.5), "Wh": normal(H, G, scale=0.5),
              "b": normal(G, scale=0.5)}
    if options.get("reset", "after") == "after":
        params["b_hn"] = normal(H, scale=0.5)
    gains = {"gru": (), "seq_bn_gru": ("gamma_x",)}.get(stem, ("gamma_x", "gamma_h"))
    params.update({g: rng.uniform(0.5, 1.5, G).astype(dtype) for g in gains})
    kwargs = dict(options)
    if stem != "gru":
        kwargs.setdefault("eps", DEFAULT_EPS)
    if stem in ("bn_gru", "seq_bn_gru") and not options["training"]:
        keys = (refnorm.numpy_ref.bn_gru.STAT_NAMES if stem == "bn_gru" else ("mean_x", "var_x"))
        shape = (T, G) if stem == "bn_gru" else (G,)
        kwargs["pop"] = {k: (normal(*shape, scale=0.5) if k.startswith("mean")
                             else rng.uniform(0.5, 1.5, shape).astype(dtype)) for k in keys}
    args = (normal(T, B, D), normal(B, H, scale=0.5), ragged_mask(T, B, lengths), params)
    return args, kwargs, (normal(T, B, H), normal(B, H))


# Every cell; both reset forms; training and inference; pad_stats exclude and include; a larger
# eps once. Each row costs ~1 s on the simulator.
CASES = [
    ("gru", {"reset": "after"}),
    ("gru", {"reset": "before"}),
    ("bn_gru", {"training": True}),
    ("bn_gru", {"training": True, "pad_stats": "include"}),
    ("bn_gru", {"training": False}),
    ("bn_gru", {"training": False, "pad_stats": "include"}),
    ("seq_bn_gru", {"training": True}),
    ("seq_bn_gru", {"training": True, "pad_stats": "include", "eps": 1e-3}),
    ("seq_bn_gru", {"training": False}),
    ("seq_bn_gru", {"training": False, "pad_stats": "include"}),
    ("ln_gru", {}),
    ("ln_gru", {"eps": 1e-3}),
]


@needs_cuda
@pytest.mark.parametrize("stem, options", CASES, ids=[case_id(c) for c in CASES])
def test_cuda_gru_matches_the_book_float64(stem, options):
    args, kwargs, upstream = problem(stem, options, seed=len(case_id((stem, options))))
    ref = run(refnorm.numpy_ref, stem, args, kwargs, upstream)
    got = run(refnorm.numba_cuda, stem, args, kwargs, upstream)
    assert_parity(ref, got)


@st.composite
def drawn_cases(draw):
    """Shapes, masks and options beyond CASES: T, B, H down to 1 (BN over one row: û = 0), any
    lengths with at least one valid step."""
    stem = draw(st.sampled_from(STEMS))
    options = {}
    if stem == "gru":
        options["reset"] = draw(st.sampled_from(ref_gru.RESETS))
    if stem in ("bn_gru", "seq_bn_gru"):
        options["training"] = draw(st.booleans())
        options["pad_stats"] = draw(st.sampled_from(["exclude", "include"]))
    T, B = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B).filter(any))
    return (stem, options, T, B, draw(st.integers(1, 3)), draw(st.integers(1, 4)), lengths,
            draw(st.integers(0, 99)))


@needs_cuda
@settings(max_examples=12, deadline=None)
@given(drawn_cases())
def test_cuda_gru_matches_the_book_on_drawn_cases(case):
    stem, options, T, B, D, H, lengths, seed = case
    args, kwargs, upstream = problem(stem, options, T, B, D, H, lengths, seed)
    assert_parity(run(refnorm.numpy_ref, stem, args, kwargs, upstream),
                  run(refnorm.numba_cuda, stem, args, kwargs, upstream))


@needs_cuda
@pytest.mark.parametrize("reset", ref_gru.RESETS)
def test_cuda_gru_without_state_grads_returns_the_books_keys(reset):
    args, kwargs, upstream = problem("gru", {"reset": reset}, T=1, B=2, lengths=(1, 0))
    got = run(refnorm.numba_cuda, "gru", args, kwargs, upstream, state_grads=False)[3]
    assert set(got) == set(run(refnorm.numpy_ref, "gru", args, kwargs, upstream, False)[3])
    assert "dh" not in got


@needs_cuda
@pytest.mark.parametrize("stem, options", [("gru", {"reset": "after"}),
                                           ("gru", {"reset": "before"}),
                                           ("ln_gru", {})])
def test_cuda_gru_float32_stays_float32(stem, options):
    """float32 in, float32 out, within TOL["float32"] of the float64 book on the same
    (float32-exact) numbers."""
    args, kwargs, upstream = problem(stem, options, T=2, seed=7, dtype="float32")
    got = run(refnorm.numba_cuda, stem, args, kwargs, upstream)
    to64 = lambda a: {k: v.astype(np.float64) for k, v in a.items()} if isinstance(a, dict) \
        else a.astype(np.float64)                                              # noqa: E731
    ref = run(refnorm.numpy_ref, stem, tuple(map(to64, args)), kwargs, tuple(map(to64, upstream)))
    assert got[0].dtype == np.float32 and got[2].h.dtype == np.float32
    assert got[2].gates.dtype == np.float32
    assert relative_error(ref[0], got[0]) <= TOL["float32"]
    for name, g in ref[3].items():
        assert got[3][name].dtype == np.float32, name
        assert relative_error(g, got[3][name]) <= TOL["float32"], name


@needs_cuda
@pytest.mark.parametrize("stem, options, field", [
    ("bn_gru", {"training": True, "pad_stats": "include"}, "a_hat"),
    ("gru", {"reset": "before"}, "rh")])
def test_cuda_gru_device_arrays_in_give_device_arrays_out(stem, options, field):
    """Device inputs stay on the device: outputs, cache fields (also the statistics mask made
    for pad_stats="include") and gradients are device arrays equal to the NumPy path's; reset
    "before" runs its column views of Wh and dU on device arrays."""
    (x, h0, mask, params), kwargs, (dhs, dhT) = problem(stem, options, T=2, seed=3)
    forward = getattr(refnorm.numba_cuda, stem + "_forward")
    backward = getattr(refnorm.numba_cuda, stem + "_backward")
    host = forward(x, h0, mask, params, **kwargs)
    dev = forward(*(cuda.to_device(a) for a in (x, h0, mask)),
                  {k: cuda.to_device(v) for k, v in params.items()}, **kwargs)
    assert common.is_device_array(dev[0]) and common.is_device_array(getattr(dev[2], field))
    if stem == "bn_gru":
        assert common.is_device_array(dev[2].stat_mask)
    np.testing.assert_array_equal(dev[0].copy_to_host(), host[0])
    g_host = backward(dhs, dhT, host[2], True)
    g_dev = backward(cuda.to_device(dhs), cuda.to_device(dhT), dev[2], True)
    assert set(g_dev) == set(g_host)
    for name, g in g_host.items():
        assert common.is_device_array(g_dev[name]), name
        np.testing.assert_array_equal(g_dev[name].copy_to_host(), g, err_msg=name)


@pytest.mark.parametrize("stem, options, match", [
    ("gru", {"reset": "middle"}, "reset"),
    ("gru", {"reset": "before"}, "b_hn"),                  # b_hn given with reset="before"
    ("bn_gru", {"training": False}, "pop"),
    ("seq_bn_gru", {"training": False}, "pop")])
def test_cuda_gru_bad_option_is_a_value_error_before_any_launch(stem, options, match):
    (x, h0, mask, params), kwargs, _ = problem("gru", {})   # params with b_hn
    if stem != "gru":
        kwargs["eps"] = DEFAULT_EPS
    with pytest.raises(ValueError, match=match):
        getattr(refnorm.numba_cuda, stem + "_forward")(x, h0, mask, params, **kwargs, **options)
    with pytest.raises(ValueError, match=match):           # the book says the same
        getattr(refnorm.numpy_ref, stem + "_forward")(x, h0, mask, params, **kwargs, **options)


# -- the device functions through a tiny caller kernel --------------------------------------
@cuda.jit
def gates_caller(v, w, b_hn, h_prev, dh_new, gates, q, h_new, dv, dw):
    i = cuda.grid(1)
    Bc, Hc = h_prev.shape
    if i < Bc * Hc:
        row, j = i // Hc, i % Hc
        r, z, n, qq, hh = gru_gates_forward(v[row, j], v[row, Hc + j], v[row, 2 * Hc + j],
                                            w[row, j], w[row, Hc + j], w[row, 2 * Hc + j],
                                            b_hn[j], h_prev[row, j])
        gates[row, j] = r
        gates[row, Hc + j] = z
        gates[row, 2 * Hc + j] = n
        q[row, j] = qq
        h_new[row, j] = hh
        dv_r, dv_z, dv_n, dq = gru_gates_backward(dh_new[row, j], r, z, n, qq, h_prev[row, j])
        dv[row, j] = dv_r
        dv[row, Hc + j] = dv_z
        dv[row, 2 * Hc + j] = dv_n
        dw[row, j] = dv_r
        dw[row, Hc + j] = dv_z
        dw[row, 2 * Hc + j] = dq


@needs_cuda
def test_gru_gate_device_functions_are_the_books_gate_algebra():
    """gru_gates_forward / gru_gates_backward on scalars equal the book's whole-array functions,
    including saturated gates (|v| = 40: σ rounds to 0 or 1 and z = 1 makes the step the
    identity, derivations/gru.md)."""
    rng = np.random.default_rng(11)
    Bc, Hc = 2, 3
    v, w = rng.standard_normal((Bc, 3 * Hc)), rng.standard_normal((Bc, 3 * Hc))
    v[0, :] = 40.0
    v[1, :Hc] = -40.0
    b_hn, h_prev, dh_new = rng.standard_normal(Hc), rng.standard_normal((Bc, Hc)), \
        rng.standard_normal((Bc, Hc))
    got = [np.empty((Bc, 3 * Hc)), np.empty((Bc, Hc)), np.empty((Bc, Hc)),
           np.empty((Bc, 3 * Hc)), np.empty((Bc, 3 * Hc))]
    gates_caller[common.grid(Bc * Hc), common.THREADS](v, w, b_hn, h_prev, dh_new, *got)
    gates, q, h_new = ref_gru.gru_gates_forward(v, w, h_prev, b_hn)
    dv, dw, _ = ref_gru.gru_gates_backward(dh_new, gates, q, h_prev)
    # libm's tanh vs NumPy's: at most 1 ulp apart, carried through a few products
    for name, want, have in zip(("gates", "q", "h_new", "dv", "dw"),
                                (gates, q, h_new, dv, dw), got):
        assert relative_error(want, have) <= 1e-15, name
    np.testing.assert_array_equal(got[2][0], h_prev[0])    # z = 1: h̃ = h_{t-1} bit for bit


# -- structure ------------------------------------------------------------------------------
def test_every_gru_kernel_cites_the_book():
    """Each kernel and device function of the four modules carries, as comments, the equation
    tags of the book it implements."""
    tag = re.compile(r"\((BPTT|BN|LN|GRU|BN-GRU|SEQBN-GRU|LN-GRU) \d+[a-z]?\)")
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
    assert found == 16      # gru.py: 4 device functions, 8 kernels; bn_gru, ln_gru: 2 kernels each


# -- a real device --------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("stem, options", [
    ("gru", {"reset": "after"}),
    ("gru", {"reset": "before"}),
    ("bn_gru", {"training": True}),
    ("bn_gru", {"training": False, "pad_stats": "include"}),
    ("seq_bn_gru", {"training": True, "pad_stats": "include"}),
    ("ln_gru", {})])
def test_gpu_gru_parity_at_default_launches(monkeypatch, stem, options):
    """The shipped THREADS and TILE (not the patched ones), a batch wider than a warp and a
    hidden size that is not a tile multiple, both matmul paths (cuBLAS also on reset="before"'s
    column views of Wh and dU)."""
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
