"""The Numba CPU backend's RNN family (refnorm/numba_cpu/rnn.py, bn_rnn.py, seq_bn_rnn.py,
ln_rnn.py) against the book (refnorm/numpy_ref/), function against function, no cell classes.

1. float64 parity: outputs, every gradient (with the state gradients dh̃_t) and every cache field
   within TOL["float64_reorder"] of the book, over Hypothesis-drawn shapes (T 1..6, B 1..4, at
   least 2 for BN-RNN in training, D, H 1..5), ragged masks, both nonlinearities, both term
   forms, training and inference, pad_stats, eps > 0; on the book tests' fixed mask, lengths
   (5, 3, 0, 2): steps with exactly one valid row (BN-RNN's reset to φ(b), (BN-RNN 9)) and a
   sequence with no valid step, for every option combination; and with eps = 0.
2. the backward in chunks of steps (common.backward_in_chunks_h) at several chunk sizes;
3. float32 stays float32 and is within TOL["float32"] of the float64 truth;
4. the hot loops vectorise (scalar_loops of tests/test_numba_backend.py);
5. every compiled function cites the reference; no gradient lives in the scratch buffer.

Every problem is random and non-zero: weights and biases ~ N(0, 0.5²), gains ~ U(0.5, 1.5),
x ~ N(0, 1), h0 ~ N(0, 0.5²), upstream dhs, dhT ~ N(0, 1); BN population means ~ N(0, 0.5²),
variances ~ U(0.5, 1.5).
"""
import dataclasses
import inspect
import re

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.registry import CPUDispatcher

import refnorm.numba_cpu
import refnorm.numpy_ref
from helpers import TOL, ragged_mask
from refnorm.gradcheck import relative_error
from test_numba_backend import _compiled_afresh, _demangled, scalar_loops

STEMS = ("rnn", "bn_rnn", "seq_bn_rnn", "ln_rnn")
LENGTHS = (5, 3, 0, 2)          # steps 3, 4: one valid row; sequence 2: no valid step
# The floor of a comparison: a gradient made of terms of size ~G that cancel (BN over 2 rows, LN
# over 2 features) can be far below G while its rounding error stays ~eps·G: 50 eps of G.
FLOOR = 1e-14


def gains(stem, opts):
    if stem == "rnn":
        return ()
    if stem == "seq_bn_rnn":
        return ("gamma_x",)
    return ("gamma_x", "gamma_h") if opts["terms"] == "separate" else ("gamma_z",)


def stat_names(stem, opts):
    if stem == "seq_bn_rnn":
        return ("mean_x", "var_x")
    return (("mean_x", "var_x", "mean_h", "var_h") if opts["terms"] == "separate"
            else ("mean_z", "var_z"))


def problem(stem, opts, T, B, D, H, lengths, seed):
    """params, pop (BN inference), x, h0, mask, dhs, dhT, float64."""
    rng = np.random.default_rng(seed)
    p = {"Wx": 0.5 * rng.standard_normal((D, H)), "Wh": 0.5 * rng.standard_normal((H, H)),
         "b": 0.5 * rng.standard_normal(H)}
    for name in gains(stem, opts):
        p[name] = rng.uniform(0.5, 1.5, H)
    pop = None
    if stem in ("bn_rnn", "seq_bn_rnn") and not opts["training"]:
        shape = (T, H) if stem == "bn_rnn" else (H,)
        pop = {k: (rng.uniform(0.5, 1.5, shape) if k.startswith("var")
                   else 0.5 * rng.standard_normal(shape)) for k in stat_names(stem, opts)}
    return {"params": p, "pop": pop, "x": rng.standard_normal((T, B, D)),
            "h0": 0.5 * rng.standard_normal((B, H)), "mask": ragged_mask(T, B, lengths),
            "dhs": rng.standard_normal((T, B, H)), "dhT": rng.standard_normal((B, H))}


def cast(prob, dtype):
    """The problem in dtype (pop, params and data; the mask too, so nothing promotes)."""
    c = lambda a: np.asarray(a).astype(dtype)  # noqa: E731
    return {"params": {k: c(v) for k, v in prob["params"].items()},
            "pop": None if prob["pop"] is None else {k: c(v) for k, v in prob["pop"].items()},
            **{k: c(prob[k]) for k in ("x", "h0", "mask", "dhs", "dhT")}}


def run(backend, stem, opts, prob, state_grads=True):
    """Forward and backward of `stem` on `backend` (refnorm.numpy_ref or refnorm.numba_cpu):
    hs, hT, cache, grads."""
    kw = {"nonlinearity": opts["nonlinearity"]}
    if stem in ("bn_rnn", "seq_bn_rnn"):
        kw.update(training=opts["training"], eps=opts["eps"], pop=prob["pop"],
                  pad_stats=opts["pad_stats"])
    if stem in ("bn_rnn", "ln_rnn"):
        kw["terms"] = opts["terms"]
    if stem == "ln_rnn":
        kw["eps"] = opts["eps"]
    hs, hT, cache = getattr(backend, stem + "_forward")(prob["x"], prob["h0"], prob["mask"],
                                                        prob["params"], **kw)
    grads = getattr(backend, stem + "_backward")(prob["dhs"], prob["dhT"], cache,
                                                 state_grads=state_grads)
    return hs, hT, cache, grads


def within(a, b, floor):
    """max|a − b| <= TOL["float64_reorder"]·max|a| + FLOOR·floor."""
    diff = np.max(np.abs(np.asarray(a, np.float64) - b), initial=0.0)
    return diff <= TOL["float64_reorder"] * np.max(np.abs(a), initial=0.0) + FLOOR * floor


# Neither bound holds for every draw: BN over 2 rows and LN over 2 features with a variance near
# or below ε amplify rounding-sized differences by 1/s (measured: 1 array outside the bound in
# 24000 Hypothesis draws, two runs of 3000 per cell). Such a draw is told apart by measurement,
# as in tests/test_numba_backend.py: an array outside the bound still passes when the backends
# differ by at most ROUNDING_PATHS times the change that one rounding of every input (ULP_NOISE)
# makes in the book's own result. A wrong formula differs by far more.
ULP_NOISE = 2.0 ** -52
ROUNDING_PATHS = 100


def results(out):
    """Every compared array of a run, by name: outputs, gradients ("d" + name), and the array
    fields of the cache ("cache." + name)."""
    hs, hT, cache, grads = out
    arrays = {"hs": hs, "hT": hT, **{"d" + name: g for name, g in grads.items()}}
    for field in dataclasses.fields(cache):
        value = getattr(cache, field.name)
        if isinstance(value, np.ndarray):
            arrays["cache." + field.name] = value
    return arrays


def book_sensitivity(stem, opts, prob, draws=2):
    """Per array of results(), the largest absolute change of the book's result when every
    parameter, population statistic, input and upstream gradient is multiplied by
    (1 + ULP_NOISE·r), r ~ U(-1, 1): what one rounding of each input moves it by."""
    base = results(run(refnorm.numpy_ref, stem, opts, prob))
    rng = np.random.default_rng(0)
    jitter = lambda v: v * (1 + ULP_NOISE * rng.uniform(-1, 1, np.shape(v)))  # noqa: E731
    sens = dict.fromkeys(base, 0.0)
    for _ in range(draws):
        moved = {"params": {k: jitter(v) for k, v in prob["params"].items()},
                 "pop": None if prob["pop"] is None else {k: jitter(v)
                                                          for k, v in prob["pop"].items()},
                 "mask": prob["mask"], **{k: jitter(prob[k]) for k in ("x", "h0", "dhs", "dhT")}}
        for name, value in results(run(refnorm.numpy_ref, stem, opts, moved)).items():
            sens[name] = max(sens[name], np.max(np.abs(value - base[name]), initial=0.0))
    return sens


def compare(stem, opts, prob):
    """The numba run against the book's in float64: outputs, every gradient ("dh" included),
    every cache field (None in both, or arrays of the same shape and dtype within the bound;
    the parameters identical copies; the other fields equal). An array outside the bound passes
    if the draw is that ill-conditioned (book_sensitivity)."""
    ref = run(refnorm.numpy_ref, stem, opts, prob)
    got = run(refnorm.numba_cpu, stem, opts, prob)
    outside = []
    for name, a, b in zip(("hs", "hT"), ref[:2], got[:2]):
        assert a.shape == b.shape and b.dtype == a.dtype, name
        if relative_error(a, b) > TOL["float64_reorder"]:
            outside.append(name)
    assert list(ref[3]) == list(got[3])
    G = max(np.max(np.abs(g)) for name, g in ref[3].items() if name != "dh")
    for name, a in ref[3].items():
        b = got[3][name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if not within(a, b, G):
            outside.append("d" + name)
    assert type(ref[2]) is type(got[2])
    for field in dataclasses.fields(ref[2]):
        a, b = getattr(ref[2], field.name), getattr(got[2], field.name)
        if a is None or b is None:
            assert a is None and b is None, field.name
        elif isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray), field.name
            assert a.shape == b.shape and a.dtype == b.dtype, field.name
            if not within(a, b, max(1.0, np.max(np.abs(a), initial=0.0))):
                outside.append("cache." + field.name)
        elif field.name == "params":
            assert list(a) == list(b), field.name
            assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
            assert all(b[k] is not prob["params"][k] for k in b)     # copies, as the book's
        else:
            assert type(a) is type(b) and a == b, field.name
    if outside:
        sens = book_sensitivity(stem, opts, prob)
        want, have = results(ref), results(got)
        for name in outside:
            diff = np.max(np.abs(have[name] - want[name]))
            assert diff <= ROUNDING_PATHS * sens[name], (name, diff, sens[name])
    return outside


@st.composite
def cases(draw, stem):
    opts = {"nonlinearity": draw(st.sampled_from(["tanh", "relu"]))}
    if stem in ("bn_rnn", "seq_bn_rnn"):
        opts["training"] = draw(st.booleans())
        opts["eps"] = draw(st.sampled_from([1e-5, 1e-3]))      # eps = 0: see the eps = 0 test
        opts["pad_stats"] = draw(st.sampled_from(["exclude", "include"]))
    if stem in ("bn_rnn", "ln_rnn"):
        opts["terms"] = draw(st.sampled_from(["separate", "summed"]))
    if stem == "ln_rnn":
        opts["eps"] = draw(st.sampled_from([1e-5, 1e-3]))
    T = draw(st.integers(1, 6))
    B = draw(st.integers(2 if stem == "bn_rnn" and opts["training"] else 1, 4))
    D, H = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return stem, opts, problem(stem, opts, T, B, D, H, lengths, draw(st.integers(0, 10**6)))


@pytest.mark.parametrize("stem", STEMS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_numba_rnn_matches_the_book_float64(stem, data):
    compare(*data.draw(cases(stem), label="case"))


def option_grid(stem):
    """Every option combination of `stem` (eps = 1e-5)."""
    grid = [{"nonlinearity": nl} for nl in ("tanh", "relu")]
    if stem in ("bn_rnn", "seq_bn_rnn"):
        grid = [dict(o, training=tr, eps=1e-5, pad_stats=ps) for o in grid
                for tr in (True, False) for ps in ("exclude", "include")]
    if stem in ("bn_rnn", "ln_rnn"):
        grid = [dict(o, terms=terms) for o in grid for terms in ("separate", "summed")]
    if stem == "ln_rnn":
        grid = [dict(o, eps=1e-5) for o in grid]
    return grid


GRID = [(stem, opts) for stem in STEMS for opts in option_grid(stem)]
GRID_IDS = ["-".join([stem] + [str(v) for v in opts.values()]) for stem, opts in GRID]


@pytest.mark.parametrize("stem, opts", GRID, ids=GRID_IDS)
def test_numba_rnn_matches_the_book_on_a_ragged_mask(stem, opts):
    """Lengths (5, 3, 0, 2): steps with one valid row (in BN-RNN training, û = â = ŝ = 0 there and
    the row restarts from φ(b), (BN-RNN 9); padded rows enter the statistics with
    pad_stats="include") and a sequence with no valid step (h_T = h_0, outputs 0, and, unless
    its padded frames enter batch statistics, dh_0 = δh_T and dx = 0)."""
    prob = problem(stem, opts, 5, 4, 3, 5, LENGTHS, seed=7)
    compare(stem, opts, prob)
    hs, hT, _, grads = run(refnorm.numba_cpu, stem, opts, prob)
    assert np.array_equal(hT[2], prob["h0"][2]) and not hs[:, 2].any()
    if not (opts.get("training") and opts.get("pad_stats") == "include"):
        # else the padded frames' terms enter the batch statistics, and the gradient reaches them
        assert np.array_equal(grads["h0"][2], prob["dhT"][2]) and not grads["x"][:, 2].any()


EPS0 = ([("bn_rnn", {"nonlinearity": nl, "training": True, "eps": 0.0, "pad_stats": "exclude",
                     "terms": terms}, (5, 4, 4, 1), 5)
         for nl in ("tanh", "relu") for terms in ("separate", "summed")]
        + [("seq_bn_rnn", {"nonlinearity": nl, "training": True, "eps": 0.0,
                           "pad_stats": "exclude"}, LENGTHS, 5) for nl in ("tanh", "relu")]
        + [("ln_rnn", {"nonlinearity": nl, "terms": terms, "eps": 0.0}, LENGTHS, H)
           for nl in ("tanh", "relu") for terms in ("separate", "summed") for H in (1, 5)])


@pytest.mark.parametrize("stem, opts, lengths, H", EPS0,
                         ids=["-".join([c[0], *map(str, c[1].values()), f"H{c[3]}"])
                              for c in EPS0])
def test_numba_rnn_matches_the_book_with_eps_0(stem, opts, lengths, H):
    """eps = 0, where a zero variance reads as s = ∞, ẑ = 0, dz = 0 (BN 15), (LN 11): BN-RNN's
    step of one valid row (lengths (5, 4, 4, 1), step 4) and LN over H = 1 feature, whose
    variance is exactly 0, match the book within the strict bound, no fallback.
    Not drawn by Hypothesis: with eps = 0, BN over 2 rows and LN over 2 features give ẑ = ±1
    whatever the input, so rows of later steps can coincide mathematically (relu's zeros, the
    reset to φ(b)); one backend's rounding then leaves a variance of exactly 0 (ẑ = 0) and the
    other's 1e-33 (ẑ = ±1): 16 of 6000 random BN-RNN draws with B = 2 in training fell outside
    the bound, some O(1) apart. That jump is the eps = 0 rule itself, not an error of either
    backend."""
    prob = problem(stem, opts, 5, 4, 3, H, lengths, seed=9)
    assert compare(stem, opts, prob) == []
    _, _, cache, _ = run(refnorm.numba_cpu, stem, opts, prob)
    if stem == "bn_rnn":                  # step 4, one row: var = 0, ẑ = 0, h̃ = φ(b) (BN-RNN 9)
        var = cache.var_z if opts["terms"] == "summed" else cache.var_x
        b = prob["params"]["b"]
        phi_b = np.tanh(b) if opts["nonlinearity"] == "tanh" else np.maximum(b, 0)
        assert not var[4].any()
        assert np.allclose(cache.h_tilde[4, 0], phi_b, rtol=0, atol=1e-15)
    if stem == "ln_rnn" and H == 1:
        hats = (cache.s_hat,) if opts["terms"] == "summed" else (cache.u_hat, cache.a_hat)
        assert not any(h.any() for h in hats)


# -- 2. the backward in chunks of steps ----------------------------------------------------------
CHUNKED = [("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"}),
           ("bn_rnn", {"nonlinearity": "tanh", "training": True, "eps": 1e-5,
                       "pad_stats": "exclude", "terms": "separate"}),
           ("bn_rnn", {"nonlinearity": "relu", "training": False, "eps": 1e-5,
                       "pad_stats": "include", "terms": "summed"}),
           ("ln_rnn", {"nonlinearity": "tanh", "terms": "summed", "eps": 1e-5}),
           ("ln_rnn", {"nonlinearity": "relu", "terms": "separate", "eps": 1e-5})]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("stem, opts", CHUNKED, ids=[s + "-" + "-".join(map(str, o.values()))
                                                     for s, o in CHUNKED])
def test_numba_rnn_in_chunks_of_steps_matches_the_book(monkeypatch, stem, opts, steps):
    """A scratch limit that holds the gate gradients of `steps` steps cuts the 5 steps into
    ceil(5 / steps) chunks of equal length (±1), the last first, with the products added once
    per chunk (a spy on common.add_weight_grads); the result stays within the float64 parity of
    the book, with and without the state gradients."""
    from refnorm.numba_cpu import common
    T, B, H = 5, 4, 5
    n_gate_grads = 2 if opts.get("terms") == "separate" else 1
    chunks = []
    add = common.add_weight_grads

    def spy(x, h, Wx, t0, t1, *rest):
        chunks.append((t0, t1))
        return add(x, h, Wx, t0, t1, *rest)

    monkeypatch.setattr(common, "add_weight_grads", spy)
    monkeypatch.setattr(common, "SCRATCH_MAX_BYTES", steps * n_gate_grads * B * H * 8)
    prob = problem(stem, opts, T, B, 3, H, LENGTHS, seed=3)
    compare(stem, opts, prob)
    want = [(T * i // -(-T // steps), T * (i + 1) // -(-T // steps))
            for i in reversed(range(-(-T // steps)))]
    assert chunks == want
    ref = run(refnorm.numpy_ref, stem, opts, prob, state_grads=False)[3]
    got = run(refnorm.numba_cpu, stem, opts, prob, state_grads=False)[3]
    G = max(np.max(np.abs(g)) for g in ref.values())
    assert list(ref) == list(got) and all(within(ref[k], got[k], G) for k in ref)


# -- 3. float32 ----------------------------------------------------------------------------------
F32 = [(case, name) for case, name in zip(GRID, GRID_IDS) if case[1].get("pad_stats") != "include"]


@pytest.mark.parametrize("stem, opts", [case for case, _ in F32], ids=[name for _, name in F32])
def test_numba_rnn_float32_is_float32_near_the_float64_truth(stem, opts):
    """Numba in float32 against the book in float64 on the same float32-exact problem: every
    output, gradient and cache array stays float32, outputs within TOL["float32"] of the truth
    relative to their max, gradients relative to their max plus 1e-5 of the run's gradient
    scale (a gradient whose terms cancel keeps an absolute rounding error of that scale)."""
    prob = cast(problem(stem, opts, 5, 4, 3, 5, LENGTHS, seed=5), np.float32)
    truth = run(refnorm.numpy_ref, stem, opts, cast(prob, np.float64))
    hs, hT, cache, grads = run(refnorm.numba_cpu, stem, opts, prob)
    assert hs.dtype == hT.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    for field in dataclasses.fields(cache):
        value = getattr(cache, field.name)
        if isinstance(value, np.ndarray) and field.name not in ("x", "mask", "stat_mask"):
            assert value.dtype == np.float32, field.name
    assert all(v.dtype == np.float32 for v in cache.params.values())
    G = max(np.max(np.abs(g)) for g in truth[3].values())
    assert relative_error(truth[0], hs) <= TOL["float32"]
    assert relative_error(truth[1], hT) <= TOL["float32"]
    for k, g in truth[3].items():
        err = np.max(np.abs(g - grads[k])) / (np.max(np.abs(g)) + 1e-5 * G)
        assert err <= TOL["float32"], (k, err)


# -- 4. the hot loops vectorise --------------------------------------------------------------------
def _step_calls(dtype, B=4, H=16):
    """Per elementwise step piece of refnorm/numba_cpu/rnn.py, the arguments of one call on (B, H)
    arrays in `dtype`; a bool is the nonlinearity flag relu."""
    rng = np.random.default_rng(0)
    a = lambda *shape: rng.standard_normal(shape).astype(dtype)        # noqa: E731
    m = np.ones(B, dtype)
    return {"add_terms": (a(B, H), a(B, H)),
            "state_output_forward": (a(B, H), m, a(B, H), a(B, H), a(B, H)),
            "activation_forward": (a(B, H), True),
            "separate_terms_forward": (a(B, H), a(B, H), a(H), a(H), a(H), True, a(B, H)),
            "summed_terms_forward": (a(B, H), a(H), a(H), True, a(B, H)),
            "activation_backward": (a(B, H), a(B, H), m, a(B, H), True, a(B, H), a(B, H), a(H))}


def vector_loops(dispatcher, dtype):
    """How many loops LLVM's loop vectoriser made vector loops of, in the function's own
    optimised IR (its `vector.body` blocks; an unswitched loop counts once per copy)."""
    ty = numba.from_dtype(np.dtype(dtype))
    sig = next(s for s in dispatcher.signatures if any(getattr(a, "dtype", None) == ty for a in s))
    name = dispatcher.py_func.__name__                  # mangled: ..._ZN7refnorm...<len><name>
    own = re.search(r'^define [^\n]*?@"?_ZN7refnorm[^"(]*?' + f"{len(name)}{name}"
                    + r'[^"(]*"?\((.*?)^}', dispatcher.inspect_llvm(sig), re.M | re.S)
    return len(re.findall(r"^vector\.body\d*:", own.group(1), re.M))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(_step_calls(np.float64)))
def test_rnn_step_pieces_vectorise(name, dtype):
    """Each step piece the RNN family's loops share, compiled afresh and read in its optimised
    LLVM IR, computes on SIMD vectors of the dtype (scalar_loops), and each of its loops over a
    row's H units became a vector loop (as many `vector.body` blocks as the source has such
    loops, at least). A piece with the flag relu is compiled once per value of it, as a
    constant, so that Numba prunes the other branch: the tanh loop cannot stand in for the relu
    loop. relu's max(z, 0) is a compare and a select, no arithmetic: with relu, φ's own loop
    (activation_forward, a callee of the z_t pieces) is held to vector loads and stores only."""
    from numba import types
    from refnorm.numba_cpu import rnn
    args = _step_calls(dtype)[name]
    source = inspect.getsource(getattr(rnn, name).py_func)
    loops = source.count("for j in range(H)") - ("if relu:" in source)   # one branch pruned
    for relu in ((False, True) if any(isinstance(v, bool) for v in args) else (None,)):
        fn = _compiled_afresh(getattr(rnn, name))
        fn.compile(tuple(types.literal(relu) if isinstance(v, bool) else numba.typeof(v)
                         for v in args))
        problems = scalar_loops(fn, dtype)
        if relu:
            problems = [p for p in problems
                        if p != "refnorm.numba_cpu.rnn.activation_forward: no arithmetic on vectors"]
        assert problems == [], relu
        assert vector_loops(fn, dtype) >= loops > 0, relu


LOOPS = {"rnn": ("rnn_forward_loop", "rnn_backward_loop"),
         "bn_rnn": ("bn_rnn_forward_loop", "bn_rnn_backward_loop"),
         "ln_rnn": ("ln_rnn_forward_loop", "ln_rnn_backward_loop")}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stem", sorted(LOOPS))
def test_rnn_step_loops_vectorise(monkeypatch, stem, dtype):
    """The step loops, compiled afresh and patched in for a forward and backward: every function
    of their optimised IR computes on SIMD vectors, the step product (common.packed_matmul,
    whose packing of A reads it down columns by design) left out. A loop with no elementwise
    loop of its own (every pass over a row a call: norms.py, the step pieces of rnn.py; all but
    rnn_forward_loop) has its own body left out too, and its callees are checked."""
    module = getattr(refnorm.numba_cpu, stem)
    loops = {attr: _compiled_afresh(getattr(module, attr)) for attr in LOOPS[stem]}
    for attr, fn in loops.items():
        monkeypatch.setattr(module, attr, fn)
    opts = {"nonlinearity": "tanh", "terms": "separate", "training": True, "eps": 1e-5,
            "pad_stats": "exclude"}
    prob = cast(problem(stem, opts, 3, 4, 16, 16, (3, 3, 3, 3), seed=0), dtype)
    run(refnorm.numba_cpu, stem, opts, prob)
    for attr, fn in loops.items():
        leave_out = ["refnorm.numba_cpu.common.packed_matmul"]
        if not re.search(r"for [jk] in range", inspect.getsource(fn.py_func)):
            leave_out.append(f"{module.__name__}.{attr}")        # only calls: its callees count
        assert scalar_loops(fn, dtype, leave_out=leave_out) == [], attr
        defined = {_demangled(symbol) for symbol in re.findall(
            r'^define [^\n]*?@"?(_ZN[^"(]+)"?\(', fn.inspect_llvm(fn.signatures[-1]), re.M)}
        checked = {name for name in defined if name.startswith("refnorm.")} - set(leave_out)
        assert len(checked) >= 2, (attr, checked)          # the callees, each checked apart


# -- 5. the rules of the backend -----------------------------------------------------------------
def test_every_compiled_function_of_the_rnn_family_cites_the_reference():
    """Each compiled function of the four modules carries, as comments, the equation tags or
    NumPy lines of the reference it implements."""
    tag = re.compile(r"\((BPTT|BN|LN|RNN|BN-RNN|SEQBN-RNN|LN-RNN) \d+[a-z]?\)")
    found = 0
    for module in STEMS:
        mod = getattr(refnorm.numba_cpu, module)
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mod.__name__:
                found += 1
                source = inspect.getsource(obj.py_func)
                comments = [line for line in source.splitlines() if "#" in line]
                assert comments, (module, name)
                assert any(tag.search(c) or "np." in c or "=" in c.split("#", 1)[1]
                           for c in comments), (module, name)
    assert found >= 10


@pytest.mark.parametrize("state_grads", [False, True])
@pytest.mark.parametrize("stem, opts", [GRID[0], GRID[2], GRID[3], GRID[-1]],
                         ids=[GRID_IDS[0], GRID_IDS[2], GRID_IDS[3], GRID_IDS[-1]])
def test_rnn_backward_returns_nothing_of_its_scratch(stem, opts, state_grads):
    """The scratch buffer is reused by the next backward pass: a second backward leaves the
    first one's gradients as they were, and none shares memory with the buffer."""
    from refnorm.numba_cpu import common
    first = run(refnorm.numba_cpu, stem, opts, problem(stem, opts, 5, 4, 3, 5, LENGTHS, 1),
                state_grads)[3]
    kept = {k: v.copy() for k, v in first.items()}
    run(refnorm.numba_cpu, stem, opts, problem(stem, opts, 4, 3, 3, 5, (4, 2, 1), 2),
        state_grads)
    for k, v in first.items():
        assert np.array_equal(v, kept[k]), k
        assert not np.shares_memory(v, common._scratch.buffer), k
