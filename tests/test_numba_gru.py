"""The Numba CPU backend's GRU family (refnorm/numba_cpu/gru.py, bn_gru.py, seq_bn_gru.py,
ln_gru.py) against the book (refnorm/numpy_ref/), function against function, no cell classes.

1. float64 parity: outputs, every gradient (with the state gradients dh̃_t) and every cache field
   within TOL["float64_reorder"] of the book, over Hypothesis-drawn shapes (T 1..5, B 1..4, at
   least 2 for BN-GRU in training, D, H 1..4), ragged masks, both reset forms, training and
   inference, pad_stats, eps > 0; on the fixed mask of lengths (5, 3, 0, 2): steps with exactly
   one valid row (BN-GRU's constant gates, (BN-GRU 8)) and a sequence with no valid step, for
   every option combination; and with eps = 0.
2. the backward in chunks of steps at several chunk sizes (common.backward_in_chunks_h, and
   gru.backward_in_chunks_reset_before for reset="before");
3. float32 stays float32 and is within TOL["float32"] of the float64 truth;
4. the hot loops vectorise (scalar_loops of tests/test_numba_backend.py), in both dtypes;
5. every compiled function cites the reference; no gradient lives in the scratch buffer; the
   reference's refusals.

Every problem is random and non-zero: weights and biases (b_hn included) ~ N(0, 0.5²), gains
~ U(0.5, 1.5), x ~ N(0, 1), h0 ~ N(0, 0.5²), upstream dhs, dhT ~ N(0, 1); BN population means
~ N(0, 0.5²), variances ~ U(0.5, 1.5). The comparison helpers are the RNN family's
(tests/test_numba_rnn.py); what differs is the GRU's problem, call and option grid.
"""
import dataclasses
import importlib
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
from test_numba_rnn import ROUNDING_PATHS, ULP_NOISE, cast, results, vector_loops, within

STEMS = ("gru", "bn_gru", "seq_bn_gru", "ln_gru")
LENGTHS = (5, 3, 0, 2)          # steps 3, 4: one valid row; sequence 2: no valid step
BN = ("bn_gru", "seq_bn_gru")


def gains(stem):
    return {"gru": (), "seq_bn_gru": ("gamma_x",)}.get(stem, ("gamma_x", "gamma_h"))


def stat_names(stem):
    return ("mean_x", "var_x") if stem == "seq_bn_gru" else ("mean_x", "var_x", "mean_h", "var_h")


def problem(stem, opts, T, B, D, H, lengths, seed):
    """params, pop (BN inference), x, h0, mask, dhs, dhT, float64."""
    rng = np.random.default_rng(seed)
    G = 3 * H
    p = {"Wx": 0.5 * rng.standard_normal((D, G)), "Wh": 0.5 * rng.standard_normal((H, G)),
         "b": 0.5 * rng.standard_normal(G)}
    if opts.get("reset", "after") == "after":
        p["b_hn"] = 0.5 * rng.standard_normal(H)
    for name in gains(stem):
        p[name] = rng.uniform(0.5, 1.5, G)
    pop = None
    if stem in BN and not opts["training"]:
        shape = (T, G) if stem == "bn_gru" else (G,)
        pop = {k: (rng.uniform(0.5, 1.5, shape) if k.startswith("var")
                   else 0.5 * rng.standard_normal(shape)) for k in stat_names(stem)}
    return {"params": p, "pop": pop, "x": rng.standard_normal((T, B, D)),
            "h0": 0.5 * rng.standard_normal((B, H)), "mask": ragged_mask(T, B, lengths),
            "dhs": rng.standard_normal((T, B, H)), "dhT": rng.standard_normal((B, H))}


def run(backend, stem, opts, prob, state_grads=True):
    """Forward and backward of `stem` on `backend` (refnorm.numpy_ref or refnorm.numba_cpu):
    hs, hT, cache, grads."""
    if stem == "gru":
        kw = {"reset": opts["reset"]}
    elif stem == "ln_gru":
        kw = {"eps": opts["eps"]}
    else:
        kw = {"training": opts["training"], "eps": opts["eps"], "pop": prob["pop"],
              "pad_stats": opts["pad_stats"]}
    hs, hT, cache = getattr(backend, stem + "_forward")(prob["x"], prob["h0"], prob["mask"],
                                                        prob["params"], **kw)
    grads = getattr(backend, stem + "_backward")(prob["dhs"], prob["dhT"], cache,
                                                 state_grads=state_grads)
    return hs, hT, cache, grads


def book_sensitivity(stem, opts, prob, draws=2):
    """Per array of results(), the largest absolute change of the book's result when every
    parameter, population statistic, input and upstream gradient is multiplied by
    (1 + ULP_NOISE·r), r ~ U(-1, 1): what one rounding of each input moves it by (as in
    tests/test_numba_rnn.py)."""
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
    """The numba run against the book's in float64, as tests/test_numba_rnn.py's compare:
    outputs, every gradient ("dh" included, same names in the same order), every cache field
    (None in both -- hn or rh by the reset form --, or arrays of the same shape and dtype
    within the bound; the parameters identical copies; the other fields equal). An array
    outside the bound passes if the draw is that ill-conditioned (book_sensitivity). Returns
    the names of the arrays that needed that."""
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


# -- 1. float64 parity -----------------------------------------------------------------------------
@st.composite
def cases(draw, stem):
    opts = {}
    if stem == "gru":
        opts["reset"] = draw(st.sampled_from(["after", "before"]))
    if stem in BN:
        opts["training"] = draw(st.booleans())
        opts["pad_stats"] = draw(st.sampled_from(["exclude", "include"]))
    if stem != "gru":
        opts["eps"] = draw(st.sampled_from([1e-5, 1e-3]))      # eps = 0: see the eps = 0 test
    T = draw(st.integers(1, 5))
    B = draw(st.integers(2 if stem == "bn_gru" and opts["training"] else 1, 4))
    D, H = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return stem, opts, problem(stem, opts, T, B, D, H, lengths, draw(st.integers(0, 10**6)))


@pytest.mark.parametrize("stem", STEMS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_numba_gru_matches_the_book_float64(stem, data):
    compare(*data.draw(cases(stem), label="case"))


def option_grid(stem):
    """Every option combination of `stem` (eps = 1e-5)."""
    if stem == "gru":
        return [{"reset": reset} for reset in ("after", "before")]
    if stem == "ln_gru":
        return [{"eps": 1e-5}]
    return [{"training": tr, "pad_stats": ps, "eps": 1e-5}
            for tr in (True, False) for ps in ("exclude", "include")]


GRID = [(stem, opts) for stem in STEMS for opts in option_grid(stem)]
GRID_IDS = ["-".join([stem] + [str(v) for v in opts.values()]) for stem, opts in GRID]


@pytest.mark.parametrize("stem, opts", GRID, ids=GRID_IDS)
def test_numba_gru_matches_the_book_on_a_ragged_mask(stem, opts):
    """Lengths (5, 3, 0, 2): steps with one valid row (in BN-GRU training, û = â = 0 there and
    the gates are constants of the biases, (BN-GRU 8); padded rows enter the statistics with
    pad_stats="include") and a sequence with no valid step (h_T = h_0, outputs 0, and, unless
    its padded frames enter batch statistics, dh_0 = δh_T and dx = 0)."""
    prob = problem(stem, opts, 5, 4, 3, 5, LENGTHS, seed=7)
    compare(stem, opts, prob)
    hs, hT, _, grads = run(refnorm.numba_cpu, stem, opts, prob)
    assert np.array_equal(hT[2], prob["h0"][2]) and not hs[:, 2].any()
    if not (opts.get("training") and opts.get("pad_stats") == "include"):
        # else the padded frames' terms enter the batch statistics, and the gradient reaches them
        assert np.array_equal(grads["h0"][2], prob["dhT"][2]) and not grads["x"][:, 2].any()


EPS0 = [("bn_gru", {"training": True, "pad_stats": "exclude", "eps": 0.0}, (5, 4, 4, 1)),
        ("seq_bn_gru", {"training": True, "pad_stats": "exclude", "eps": 0.0}, LENGTHS),
        ("ln_gru", {"eps": 0.0}, LENGTHS)]


@pytest.mark.parametrize("stem, opts, lengths", EPS0, ids=[c[0] for c in EPS0])
def test_numba_gru_matches_the_book_with_eps_0(stem, opts, lengths):
    """eps = 0, where a zero variance reads as s = ∞, ẑ = 0, dz = 0 (BN 15), (LN 11), matches
    the book within the strict bound, no fallback: BN-GRU's step 4 of one valid row (û = â = 0,
    the gates σ(b^r), σ(b^z), tanh(b^n + σ(b^r) ⊙ b_hn), (BN-GRU 8)); LN over the 3H features
    of a row that is exactly 0 (x_t = 0 in sequence 1 for every step, h_0 = 0 there, so u_t
    and a_1 of that row are 0). Not drawn, for the reason tests/test_numba_rnn.py gives."""
    prob = problem(stem, opts, 5, 4, 3, 5, lengths, seed=9)
    if stem == "ln_gru":
        prob["x"][:, 1] = 0.0
        prob["h0"][1] = 0.0
    assert compare(stem, opts, prob) == []
    _, _, cache, _ = run(refnorm.numba_cpu, stem, opts, prob)
    if stem == "bn_gru":
        b, b_hn = prob["params"]["b"], prob["params"]["b_hn"]
        sig = lambda v: 1 / (1 + np.exp(-v))                    # noqa: E731
        H = b_hn.size
        r, z = sig(b[:H]), sig(b[H:2 * H])
        assert not cache.u_hat[4].any() and not cache.a_hat[4].any()
        want = np.concatenate([r, z, np.tanh(b[2 * H:] + r * b_hn)])
        assert np.allclose(cache.gates[4, 0], want, rtol=0, atol=1e-15)
    if stem == "ln_gru":
        assert not cache.u_hat[:, 1].any() and not cache.a_hat[0, 1].any()


# -- 2. the backward in chunks of steps ----------------------------------------------------------
CHUNKED = [("gru", {"reset": "after"}, "gru_backward_loop"),
           ("gru", {"reset": "before"}, "gru_reset_before_backward_loop"),
           ("bn_gru", {"training": True, "pad_stats": "exclude", "eps": 1e-5},
            "bn_gru_backward_loop"),
           ("bn_gru", {"training": False, "pad_stats": "include", "eps": 1e-5},
            "bn_gru_backward_loop"),
           ("ln_gru", {"eps": 1e-5}, "ln_gru_backward_loop")]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("stem, opts, loop", CHUNKED,
                         ids=[s + "-" + "-".join(map(str, o.values())) for s, o, _ in CHUNKED])
def test_numba_gru_in_chunks_of_steps_matches_the_book(monkeypatch, stem, opts, loop, steps):
    """A scratch limit that holds the gate gradients of `steps` steps (two arrays of (B, 3H) a
    step; one, du_t, with reset="before") cuts the 5 steps into ceil(5 / steps) chunks of equal
    length (±1), the last first (a spy on the compiled loop's calls); the result stays within
    the float64 parity of the book, with and without the state gradients."""
    from refnorm.numba_cpu import common
    module = getattr(refnorm.numba_cpu, stem)
    T, B, H = 5, 4, 5
    n_gate_grads = 1 if opts.get("reset") == "before" else 2
    chunks = []
    compiled = getattr(module, loop)

    def spy(t0, t1, *rest):
        chunks.append((t0, t1))
        return compiled(t0, t1, *rest)

    monkeypatch.setattr(module, loop, spy)
    monkeypatch.setattr(common, "SCRATCH_MAX_BYTES", steps * n_gate_grads * B * 3 * H * 8)
    prob = problem(stem, opts, T, B, 3, H, LENGTHS, seed=3)
    compare(stem, opts, prob)
    n = -(-T // steps)
    want = [(T * i // n, T * (i + 1) // n) for i in reversed(range(n))]
    assert chunks == want                          # the numba run of compare
    chunks.clear()
    ref = run(refnorm.numpy_ref, stem, opts, prob, state_grads=False)[3]
    got = run(refnorm.numba_cpu, stem, opts, prob, state_grads=False)[3]
    assert chunks == want
    G = max(np.max(np.abs(g)) for g in ref.values())
    assert list(ref) == list(got) and all(within(ref[k], got[k], G) for k in ref)


# -- 3. float32 ----------------------------------------------------------------------------------
F32 = [(case, name) for case, name in zip(GRID, GRID_IDS) if case[1].get("pad_stats") != "include"]


@pytest.mark.parametrize("stem, opts", [case for case, _ in F32], ids=[name for _, name in F32])
def test_numba_gru_float32_is_float32_near_the_float64_truth(stem, opts):
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
        if isinstance(value, np.ndarray):
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
    """Per elementwise step piece of refnorm/numba_cpu/gru.py, the arguments of one call on
    (B, 3H) gate arrays and (B, H) state arrays in `dtype`."""
    rng = np.random.default_rng(0)
    a = lambda *shape: rng.standard_normal(shape).astype(dtype)        # noqa: E731
    G, m = 3 * H, np.ones(B, dtype)
    return {"reset_update_forward": (a(B, G), a(B, G)),
            "candidate_forward": (a(B, G), a(B, G), a(H), a(B, H)),
            "interpolate_forward": (a(B, G), a(B, H), a(B, H)),
            "reset_state_forward": (a(B, G), a(B, H), a(B, H)),
            "candidate_before_forward": (a(B, G), a(B, H)),
            "normalized_sides_forward": (a(B, G), a(B, G), a(G), a(G), a(G), a(B, G), a(B, G)),
            "update_backward": (a(B, H), a(B, H), m, a(B, G), a(B, H), a(B, H), a(B, G)),
            "reset_after_backward": (a(B, G), a(B, H), a(B, G), a(B, G), a(H)),
            "add_bias_grad": (a(B, G), a(G)),
            "interpolated_state_backward": (a(B, H), m, a(B, H), a(B, G), a(B, H)),
            "reset_before_backward": (a(B, G), a(B, H), a(B, H), a(B, G)),
            "reset_before_state_backward": (a(B, H), m, a(B, H), a(B, G), a(B, H), a(B, H))}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(_step_calls(np.float64)))
def test_gru_step_pieces_vectorise(name, dtype):
    """Each step piece the GRU family's loops share, compiled afresh and read in its optimised
    LLVM IR, computes on SIMD vectors of the dtype (scalar_loops), and each of its loops over a
    row's units became a vector loop (as many `vector.body` blocks as the source has such loops,
    at least): the gate blocks indexed through the (B, 3, H) reshape, not at an offset."""
    from refnorm.numba_cpu import gru
    fn = _compiled_afresh(getattr(gru, name))
    fn.compile(tuple(numba.typeof(v) for v in _step_calls(dtype)[name]))
    loops = len(re.findall(r"for [jk] in range\(", inspect.getsource(fn.py_func)))
    assert scalar_loops(fn, dtype) == []
    assert vector_loops(fn, dtype) >= loops > 0


def _only_calls(name):
    """Whether the compiled function of refnorm named `name` has no elementwise loop of its own
    (a step loop; gru_gates_forward, gru_gates_backward): every pass over a row is a call."""
    module, attr = name.rsplit(".", 1)
    py_func = getattr(importlib.import_module(module), attr).py_func
    return not re.search(r"for [jk] in range", inspect.getsource(py_func))


LOOPS = {("gru", "after"): ("gru_forward_loop", "gru_backward_loop"),
         ("gru", "before"): ("gru_reset_before_forward_loop", "gru_reset_before_backward_loop"),
         ("bn_gru", "after"): ("bn_gru_forward_loop", "bn_gru_backward_loop"),
         ("ln_gru", "after"): ("ln_gru_forward_loop", "ln_gru_backward_loop")}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stem, reset", sorted(LOOPS), ids=["-".join(k) for k in sorted(LOOPS)])
def test_gru_step_loops_vectorise(monkeypatch, stem, reset, dtype):
    """The step loops, compiled afresh and patched in for a forward and backward: every function
    of their optimised IR computes on SIMD vectors, the step product (common.packed_matmul,
    whose packing of A reads it down columns by design) and the functions with no elementwise
    loop of their own (the step loop itself, gru_gates_forward, gru_gates_backward: every pass
    over a row is a call to a step piece or a norms.py function) left out: their callees are
    checked, at least two of them."""
    module = getattr(refnorm.numba_cpu, stem)
    loops = {attr: _compiled_afresh(getattr(module, attr)) for attr in LOOPS[stem, reset]}
    for attr, fn in loops.items():
        monkeypatch.setattr(module, attr, fn)
    opts = {"reset": reset, "training": True, "eps": 1e-5, "pad_stats": "exclude"}
    prob = cast(problem(stem, opts, 3, 4, 16, 16, (3, 3, 3, 3), seed=0), dtype)
    run(refnorm.numba_cpu, stem, opts, prob)
    for attr, fn in loops.items():
        defined = {_demangled(symbol) for symbol in re.findall(
            r'^define [^\n]*?@"?(_ZN[^"(]+)"?\(', fn.inspect_llvm(fn.signatures[-1]), re.M)}
        own = {name for name in defined if name.startswith("refnorm.")}
        leave_out = ["refnorm.numba_cpu.common.packed_matmul", f"{module.__name__}.{attr}",
                     *(name for name in own if _only_calls(name))]
        assert f"{module.__name__}.{attr}" in leave_out[2:], attr
        assert scalar_loops(fn, dtype, leave_out=leave_out) == [], attr
        checked = own - set(leave_out)
        assert len(checked) >= 2, (attr, checked)          # the callees, each checked apart


# -- 5. the rules of the backend -----------------------------------------------------------------
def test_every_compiled_function_of_the_gru_family_cites_the_reference():
    """Each compiled function of the four modules carries, as comments, the equation tags or
    NumPy lines of the reference it implements."""
    tag = re.compile(r"\((BPTT|BN|LN|GRU|BN-GRU|SEQBN-GRU|LN-GRU) \d+[a-z]?\)")
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
    assert found >= 18


@pytest.mark.parametrize("state_grads", [False, True])
@pytest.mark.parametrize("stem, opts", [GRID[0], GRID[1], GRID[2], GRID[6], GRID[-1]],
                         ids=[GRID_IDS[0], GRID_IDS[1], GRID_IDS[2], GRID_IDS[6], GRID_IDS[-1]])
def test_gru_backward_returns_nothing_of_its_scratch(stem, opts, state_grads):
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


@pytest.mark.parametrize("reset, with_b_hn", [("before", True), ("sideways", False)])
def test_numba_gru_refuses_what_the_book_refuses(reset, with_b_hn):
    """reset="before" with a b_hn, and an unknown reset form: the book's ValueError, word for
    word."""
    prob = problem("gru", {"reset": "after" if with_b_hn else "before"}, 2, 2, 2, 2, (2, 1), 0)
    messages = []
    for backend in (refnorm.numpy_ref, refnorm.numba_cpu):
        with pytest.raises(ValueError) as error:
            backend.gru_forward(prob["x"], prob["h0"], prob["mask"], prob["params"], reset=reset)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
