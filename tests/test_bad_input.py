"""Bad input and degenerate input.

Every bad argument -- to a constructor, to forward, to backward, or a cell.params the user edited
into a bad state -- gets a ValueError whose message names the argument, and the failed call
leaves the cell, the cache and every array passed in bit for bit as they were. Valid calls never
modify what they are given either, return arrays that share no memory with it, and compute from
copies (editing x or cell.params after forward does not change what backward returns).

The degenerate cases the docs define -- a sequence of length 0 inside a batch, a BN-LSTM step with
one valid row or none, batch size 1 where the cell allows it -- are not errors: their results are
finite and the values the docs say.
"""
import copy
import dataclasses
import math

import numpy as np
import pytest

import refnorm
from refnorm import relative_error

from helpers import CELL_NAMES, TOL, make_cell, ragged_mask, random_data

T, B, D, H = 4, 3, 3, 3            # make_cell's default D = H = 3
DTYPES = ("float64", "float32")
BN_CELLS = ("bn_lstm", "seq_bn_lstm")
NORM_CELLS = ("bn_lstm", "seq_bn_lstm", "ln_lstm")
CELL_TYPES = tuple(refnorm.CELLS.values())


def other_float(dtype):
    return np.float32 if np.dtype(dtype) == np.float64 else np.float64


def word(name):
    """Regex for `name` as a whole word in the error message."""
    return rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])"


# -- "nothing is corrupted": bitwise snapshots --------------------------------------------------

def state(obj):
    """What must not change: a cell's attributes (params, stats, options), else the object."""
    return vars(obj) if isinstance(obj, CELL_TYPES) else obj


def assert_unchanged(before, after, where="value"):
    """after equals before bit for bit: arrays by dtype, shape and bytes; containers recursively."""
    if isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray), f"{where} is no longer an array"
        assert after.dtype == before.dtype, f"{where}: dtype {before.dtype} -> {after.dtype}"
        assert after.shape == before.shape, f"{where}: shape {before.shape} -> {after.shape}"
        assert after.tobytes() == before.tobytes(), f"{where} changed"
    elif isinstance(before, dict):
        assert set(after) == set(before), f"{where}: keys {sorted(before)} -> {sorted(after)}"
        for key in before:
            assert_unchanged(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert type(after) is type(before) and len(after) == len(before), f"{where} changed"
        for k, (b, a) in enumerate(zip(before, after)):
            assert_unchanged(b, a, f"{where}[{k}]")
    elif dataclasses.is_dataclass(before):
        assert type(after) is type(before), f"{where} changed type"
        for field in dataclasses.fields(before):
            assert_unchanged(getattr(before, field.name), getattr(after, field.name),
                             f"{where}.{field.name}")
    elif isinstance(before, float) and math.isnan(before):
        assert isinstance(after, float) and math.isnan(after), f"{where} changed"
    else:
        assert type(after) is type(before) and after == before, f"{where}: {before!r} -> {after!r}"


def assert_rejects(match, call, **watched):
    """call() raises ValueError matching `match`, and every watched object is left as it was."""
    before = {name: copy.deepcopy(state(obj)) for name, obj in watched.items()}
    with pytest.raises(ValueError, match=match):
        call()
    for name, obj in watched.items():
        assert_unchanged(before[name], state(obj), name)


def assert_forward_rejects(cell, match, **kwargs):
    assert_rejects(match, lambda: cell.forward(**kwargs), cell=cell, arguments=kwargs)


def run(cell, data, **kwargs):
    """forward then backward with the random upstream gradients of `data`."""
    hs, (hT, cT), cache = cell.forward(data["x"], data["h0"], data["c0"], **kwargs)
    grads = cell.backward(data["dhs"], cache, data["dhT"], data["dcT"])
    return hs, hT, cT, cache, grads


def assert_all_finite(*arrays):
    for a in arrays:
        for value in (a.values() if isinstance(a, dict) else [a]):
            assert np.all(np.isfinite(value))


def assert_gradcheck(cell, **kwargs):
    errors = refnorm.gradcheck(cell, **kwargs)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL["gradcheck"], (worst, errors[worst])


# == constructor ================================================================================

BAD_SIZES = [0, -1, 2.0, 2.5, np.float64(3.0), "3", None, True, False]


@pytest.mark.parametrize("value", BAD_SIZES, ids=repr)
@pytest.mark.parametrize("arg", ["input_size", "hidden_size"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_constructor_rejects_bad_size(name, arg, value):
    sizes = {"input_size": 3, "hidden_size": 3, arg: value}
    with pytest.raises(ValueError, match=word(arg)):
        refnorm.CELLS[name](sizes["input_size"], sizes["hidden_size"])


INF, NAN = float("inf"), float("nan")
# argument -> (cells that take it, bad values)
BAD_OPTIONS = {
    "backend": (CELL_NAMES, ["cuda9", "", "Numpy", None]),
    "dtype": (CELL_NAMES, ["float16", "int32", "complex128", np.float16, np.int64, None]),
    "seed": (CELL_NAMES, [-1, np.int64(-3), 1.5, "0", True]),
    # eps = 0 is allowed (BN 15), (LN 11); below 0, NaN and inf are not
    "eps": (NORM_CELLS, [-1e-5, -5e-324, -1, NAN, INF, -INF, True, "1e-5", None]),
    "momentum": (BN_CELLS, [0, 0.0, -0.1, 1.0000001, 1.5, NAN, INF, True]),
    "max_steps": (("bn_lstm",), [0, -1, 2.5, True, "4"]),
    "past_max_steps": (("bn_lstm",), ["Clamp", "clip", "", None, True, 1]),
    "unbiased_var": (BN_CELLS, [0, 1, "yes", None]),
    "per_gate": (("ln_lstm",), [0, 1, "yes", None]),
    "gamma_init": (NORM_CELLS, [NAN, INF, -INF]),
    # a NumPy NaN or bool is as bad as Python's; None means "as drawn" for forget_bias_init only
    "forget_bias": (CELL_NAMES, [NAN, INF, -INF, "1", True, None, np.float64(NAN),
                                           np.float32(INF), np.bool_(True), np.array([1.0])]),
    "forget_bias_init": (CELL_NAMES, [NAN, INF, -INF, "1", True, np.float64(NAN),
                                                np.float32(-INF), np.bool_(True),
                                                np.array([1.0])]),
}
OPTION_CASES = [pytest.param(name, arg, value, id=f"{name}-{arg}={value!r}")
                for arg, (names, values) in BAD_OPTIONS.items()
                for name in names for value in values]


@pytest.mark.parametrize("name, arg, value", OPTION_CASES)
def test_constructor_rejects_bad_option(name, arg, value):
    with pytest.raises(ValueError, match=word(arg)):
        refnorm.CELLS[name](3, 3, **{arg: value})


@pytest.mark.parametrize("name", CELL_NAMES)
def test_constructor_accepts_edge_values(name):
    """The rejections above are not over-broad: NumPy integers and bools, the closed end of the
    momentum interval, dtype objects and seed 0 are fine."""
    options = {"seed": np.int64(0), "dtype": np.dtype("float32"), "backend": "numpy"}
    if name in BN_CELLS:
        options.update(momentum=1.0, eps=0, unbiased_var=np.True_)
    if name == "bn_lstm":
        options.update(max_steps=np.int64(1), past_max_steps="clamp")
    if name == "ln_lstm":
        options.update(per_gate=np.True_, eps=-0.0)
    cell = refnorm.CELLS[name](np.int64(2), np.int32(1), forget_bias=np.float32(0.5),
                               forget_bias_init=np.int64(-2), **options)
    assert (cell.input_size, cell.hidden_size, cell.dtype) == (2, 1, np.float32)
    assert all(p.dtype == np.float32 for p in cell.params.values())
    assert type(cell.forget_bias) is float and cell.forget_bias == 0.5
    assert cell.params["b"][1] == -2                       # the forget block of b (H = 1)
    if name in NORM_CELLS:                                 # eps = 0 (and -0.0) is 0.0
        assert type(cell.eps) is float and cell.eps == 0 and math.copysign(1, cell.eps) == 1


@pytest.mark.parametrize("name", CELL_NAMES)
def test_constructor_rejects_numbers_beyond_the_float_range(name):
    """A finite Python int too large for a float (np.isfinite raises TypeError on it, float()
    OverflowError) and a forget bias that is finite in float64 but inf in the cell's float32 get
    a ValueError naming the argument, like inf itself."""
    floats = ("forget_bias", "forget_bias_init") + (("eps", "gamma_init") * (name in NORM_CELLS))
    for arg in floats:
        with pytest.raises(ValueError, match=word(arg)):
            refnorm.CELLS[name](3, 3, **{arg: 10 ** 400})
    for arg in ("forget_bias", "forget_bias_init"):
        with pytest.raises(ValueError, match=rf"(?s){word(arg)}.*float32"):
            refnorm.CELLS[name](3, 3, dtype="float32", **{arg: 1e39})
        refnorm.CELLS[name](3, 3, dtype="float64", **{arg: 1e39})   # finite in float64


# == forward ====================================================================================

def _with(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def _ones_mask():
    return np.ones((T, B))


# case id -> (function(cell, data) -> forward kwargs overriding x, h0, c0; regex for the message)
FORWARD_CASES = {
    "x-2d": (lambda c, d: {"x": d["x"][0]}, word("x")),
    "x-4d": (lambda c, d: {"x": d["x"][None]}, word("x")),
    "x-feature-size": (lambda c, d: {"x": np.ones((T, B, D + 1), c.dtype)}, word("x")),
    "x-empty-sequence": (lambda c, d: {"x": d["x"][:0]}, word("x")),
    "x-empty-batch": (lambda c, d: {"x": d["x"][:, :0], "h0": None, "c0": None}, word("x")),
    "x-other-float-dtype": (lambda c, d: {"x": d["x"].astype(other_float(c.dtype))}, word("x")),
    "x-float16": (lambda c, d: {"x": d["x"].astype(np.float16)}, word("x")),
    "x-int": (lambda c, d: {"x": np.arange(T * B * D).reshape(T, B, D)}, word("x")),
    "x-bool": (lambda c, d: {"x": d["x"] > 0}, word("x")),
    "x-nan": (lambda c, d: {"x": _with(d["x"], (2, 1, 0), np.nan)}, word("x")),
    "x-inf": (lambda c, d: {"x": _with(d["x"], (0, 2, 1), np.inf)}, word("x")),
    "x-neg-inf": (lambda c, d: {"x": _with(d["x"], (3, 0, 2), -np.inf)}, word("x")),
}
for _s in ("h0", "c0"):
    FORWARD_CASES.update({
        f"{_s}-nan": (lambda c, d, s=_s: {s: _with(d[s], (1, 2), np.nan)}, word(_s)),
        f"{_s}-inf": (lambda c, d, s=_s: {s: _with(d[s], (0, 0), np.inf)}, word(_s)),
        f"{_s}-other-float-dtype": (lambda c, d, s=_s: {s: d[s].astype(other_float(c.dtype))},
                                    word(_s)),
        f"{_s}-int": (lambda c, d, s=_s: {s: np.ones((B, H), dtype=int)}, word(_s)),
        f"{_s}-shape-B+1": (lambda c, d, s=_s: {s: np.ones((B + 1, H), c.dtype)}, word(_s)),
        f"{_s}-shape-H+1": (lambda c, d, s=_s: {s: np.ones((B, H + 1), c.dtype)}, word(_s)),
        f"{_s}-shape-1d": (lambda c, d, s=_s: {s: np.ones((H,), c.dtype)}, word(_s)),
        f"{_s}-shape-3d": (lambda c, d, s=_s: {s: np.ones((1, B, H), c.dtype)}, word(_s)),
    })
FORWARD_CASES.update({
    "mask-shape-B+1": (lambda c, d: {"mask": np.ones((T, B + 1))}, word("mask")),
    "mask-shape-T+1": (lambda c, d: {"mask": np.ones((T + 1, B))}, word("mask")),
    "mask-shape-BT": (lambda c, d: {"mask": np.ones((B, T))}, word("mask")),
    "mask-shape-1d": (lambda c, d: {"mask": np.ones(T)}, word("mask")),
    "mask-shape-3d": (lambda c, d: {"mask": np.ones((T, B, 1))}, word("mask")),
    "mask-value-2": (lambda c, d: {"mask": _with(_ones_mask(), (1, 1), 2)}, word("mask")),
    "mask-value-0.5": (lambda c, d: {"mask": _with(_ones_mask(), (3, 0), 0.5)}, word("mask")),
    "mask-value--1": (lambda c, d: {"mask": _with(_ones_mask(), (0, 2), -1)}, word("mask")),
    "mask-value-nan": (lambda c, d: {"mask": _with(_ones_mask(), (2, 2), np.nan)}, word("mask")),
    "mask-int-value-2": (lambda c, d: {"mask": np.full((T, B), 2)}, word("mask")),
    "mask-all-zero": (lambda c, d: {"mask": np.zeros((T, B))}, word("mask")),
    "mask-all-false": (lambda c, d: {"mask": np.zeros((T, B), dtype=bool)}, word("mask")),
    "lengths-all-zero": (lambda c, d: {"lengths": np.zeros(B, dtype=int)}, word("lengths")),
    "lengths-too-short": (lambda c, d: {"lengths": np.array([4, 2])}, word("lengths")),
    "lengths-too-long": (lambda c, d: {"lengths": np.array([4, 2, 3, 1])}, word("lengths")),
    "lengths-2d": (lambda c, d: {"lengths": np.array([[4], [2], [3]])}, word("lengths")),
    "lengths-scalar": (lambda c, d: {"lengths": 3}, word("lengths")),
    "lengths-negative": (lambda c, d: {"lengths": np.array([4, -1, 3])}, word("lengths")),
    "lengths-past-T": (lambda c, d: {"lengths": np.array([4, T + 1, 3])}, word("lengths")),
    "lengths-fractional": (lambda c, d: {"lengths": np.array([4, 1.5, 3])}, word("lengths")),
    "lengths-bool": (lambda c, d: {"lengths": np.array([True, True, False])}, word("lengths")),
    "mask-and-lengths": (lambda c, d: {"mask": _ones_mask(), "lengths": np.array([4, 4, 4])},
                         rf"(?s){word('mask')}.*{word('lengths')}"),          # names both
    "training-int-1": (lambda c, d: {"training": 1}, word("training")),
    "training-int-0": (lambda c, d: {"training": 0}, word("training")),
    "training-str": (lambda c, d: {"training": "yes"}, word("training")),
    "training-none": (lambda c, d: {"training": None}, word("training")),
    "t0-negative": (lambda c, d: {"t0": -1}, word("t0")),
    "t0-float": (lambda c, d: {"t0": 1.5}, word("t0")),
    "t0-str": (lambda c, d: {"t0": "0"}, word("t0")),
    "update_stats-str": (lambda c, d: {"update_stats": "no"}, word("update_stats")),
    "update_stats-int": (lambda c, d: {"update_stats": 1}, word("update_stats")),
})


@pytest.mark.parametrize("case", FORWARD_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CELL_NAMES)
def test_forward_rejects_bad_argument(name, dtype, case):
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=B)
    build, match = FORWARD_CASES[case]
    kwargs = {"x": data["x"], "h0": data["h0"], "c0": data["c0"], **build(cell, data)}
    assert_forward_rejects(cell, match, **kwargs)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_inference_rejects_update_stats(name):
    """forward(training=False, update_stats=True) is a ValueError naming update_stats and
    training, for every cell (population statistics come from training passes only), and changes
    nothing; the same cell runs inference without update_stats (BN-LSTM has 6 random slots)."""
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], "h0": data["h0"], "c0": data["c0"]}
    assert_forward_rejects(cell, rf"(?s){word('update_stats')}.*{word('training')}",
                           training=False, update_stats=True, **args)
    assert_forward_rejects(cell, word("update_stats"), training=np.False_,
                           update_stats=np.True_, **args)
    hs, _, _ = cell.forward(training=False, **args)
    assert_all_finite(hs)


@pytest.mark.parametrize("update_stats", [True, False])
def test_bn_lstm_training_rejects_batch_of_one(update_stats):
    cell = make_cell("bn_lstm")
    data = random_data(cell, T=T, B=1)
    args = {"x": data["x"], "h0": data["h0"], "c0": data["c0"]}
    assert_forward_rejects(cell, word("training"), training=True, update_stats=update_stats,
                           **args)
    hs, _, _ = cell.forward(training=False, **args)       # inference has no batch statistics
    assert_all_finite(hs)


def test_bn_lstm_inference_without_statistics_is_rejected():
    """max_steps=None and never trained: no population statistics. The argument at fault is
    training=False; the message must say so."""
    cell = make_cell("bn_lstm", max_steps=None)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], "h0": data["h0"], "c0": data["c0"]}
    assert_forward_rejects(cell, word("training"), training=False, **args)
    cell.forward(training=True, **args)                      # creates slots 0 .. T-1
    hs, _, _ = cell.forward(training=False, **args)
    assert_all_finite(hs)


@pytest.mark.parametrize("steps, t0", [(5, 0), (2, 3), (1, 4)], ids=["T>max", "t0+T>max",
                                                                     "t0=max"])
def test_bn_lstm_training_past_max_steps_is_rejected(steps, t0):
    cell = make_cell("bn_lstm", max_steps=4)
    data = random_data(cell, T=steps, B=B)
    args = {"x": data["x"], "h0": data["h0"], "c0": data["c0"], "t0": t0}
    assert_forward_rejects(cell, word("max_steps"), training=True, **args)   # stats untouched
    # documented non-errors past max_steps: no update, or inference (last slot reused)
    for kwargs in ({"training": True, "update_stats": False}, {"training": False}):
        before = copy.deepcopy(cell.stats)
        hs, _, _ = cell.forward(**args, **kwargs)
        assert_all_finite(hs)
        assert_unchanged(before, cell.stats, "stats")


# == parameters edited into a bad state =========================================================

PARAM_KEYS = {name: list(make_cell(name, D=1, H=1).params) for name in CELL_NAMES}
PARAM_EDITS = {
    "drop-last": lambda p, dt: p[..., :-1].copy(),
    "extra-dim": lambda p, dt: p[None].copy(),
    "nan": lambda p, dt: _with(p, (0,) * p.ndim, np.nan),
    "inf": lambda p, dt: _with(p, (-1,) * p.ndim, -np.inf),
    "other-float-dtype": lambda p, dt: p.astype(other_float(dt)),
    "int": lambda p, dt: np.ones(p.shape, dtype=int),
}
PARAM_CASES = [pytest.param(name, key, edit, id=f"{name}-{key}-{edit}")
               for name in CELL_NAMES for key in PARAM_KEYS[name] for edit in PARAM_EDITS]


@pytest.mark.parametrize("name, key, edit", PARAM_CASES)
def test_forward_rejects_bad_param(name, key, edit):
    cell = make_cell(name)
    twin = copy.deepcopy(cell)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], "h0": data["h0"], "c0": data["c0"]}
    good = cell.params[key]
    cell.params[key] = PARAM_EDITS[edit](good, cell.dtype)
    assert_forward_rejects(cell, rf"(?s)params.*{word(key)}", **args)
    cell.params[key] = good                     # repaired, the cell computes as if never broken
    assert_unchanged(twin.forward(**args)[0], cell.forward(**args)[0], "hs")


@pytest.mark.parametrize("name", CELL_NAMES)
def test_forward_rejects_missing_or_extra_param_key(name):
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], "h0": data["h0"], "c0": data["c0"]}
    full = dict(cell.params)
    for key in full:
        cell.params = {k: v for k, v in full.items() if k != key}
        assert_forward_rejects(cell, rf"(?s)params.*{word(key)}", **args)
    cell.params = {**full, "Wy": full["Wx"].copy()}
    assert_forward_rejects(cell, rf"(?s)params.*{word('Wy')}", **args)


@pytest.mark.parametrize("replacement", ["list", "None"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_forward_rejects_params_that_are_not_a_dict(name, replacement):
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B)
    cell.params = list(cell.params.values()) if replacement == "list" else None
    assert_forward_rejects(cell, word("params"), x=data["x"], h0=data["h0"], c0=data["c0"])


# == backward ===================================================================================

BACKWARD_CASES = {
    "dhs-shape-H+1": (lambda c, d: {"dhs": np.ones((T, B, H + 1), c.dtype)}, word("dhs")),
    "dhs-shape-T+1": (lambda c, d: {"dhs": np.ones((T + 1, B, H), c.dtype)}, word("dhs")),
    "dhs-shape-B-1": (lambda c, d: {"dhs": np.ones((T, B - 1, H), c.dtype)}, word("dhs")),
    "dhs-shape-2d": (lambda c, d: {"dhs": d["dhs"][0]}, word("dhs")),
    "dhs-other-float-dtype": (lambda c, d: {"dhs": d["dhs"].astype(other_float(c.dtype))},
                              word("dhs")),
    "dhs-int": (lambda c, d: {"dhs": np.ones((T, B, H), dtype=int)}, word("dhs")),
    "dhs-nan": (lambda c, d: {"dhs": _with(d["dhs"], (1, 1, 1), np.nan)}, word("dhs")),
}
for _s in ("dhT", "dcT"):
    BACKWARD_CASES.update({
        f"{_s}-shape-H+1": (lambda c, d, s=_s: {s: np.ones((B, H + 1), c.dtype)}, word(_s)),
        f"{_s}-shape-B+1": (lambda c, d, s=_s: {s: np.ones((B + 1, H), c.dtype)}, word(_s)),
        f"{_s}-shape-1d": (lambda c, d, s=_s: {s: np.ones(H, c.dtype)}, word(_s)),
        f"{_s}-other-float-dtype": (lambda c, d, s=_s: {s: d[s].astype(other_float(c.dtype))},
                                    word(_s)),
        f"{_s}-int": (lambda c, d, s=_s: {s: np.ones((B, H), dtype=int)}, word(_s)),
        f"{_s}-inf": (lambda c, d, s=_s: {s: _with(d[s], (2, 0), np.inf)}, word(_s)),
    })


def _forward_for_backward(name, dtype="float64"):
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=B)
    *_, cache = cell.forward(data["x"], data["h0"], data["c0"], lengths=np.array([4, 2, 3]))
    return cell, data, cache


def assert_backward_rejects(cell, data, good_cache, match, **override):
    """backward with `override` replacing some of (good_cache, data's dhs, dhT, dcT) is
    rejected, nothing changes, and good_cache still gives the gradients it gave before."""
    grads = {"dhs": data["dhs"], "dhT": data["dhT"], "dcT": data["dcT"]}
    expected = cell.backward(cache=good_cache, **grads)
    kwargs = {"cache": good_cache, **grads, **override}
    assert_rejects(match, lambda: cell.backward(**kwargs), cell=cell, arguments=kwargs,
                   good_cache=good_cache)
    assert_unchanged(expected, cell.backward(cache=good_cache, **grads), "grads")


@pytest.mark.parametrize("case", BACKWARD_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CELL_NAMES)
def test_backward_rejects_bad_upstream_gradient(name, dtype, case):
    cell, data, cache = _forward_for_backward(name, dtype)
    build, match = BACKWARD_CASES[case]
    assert_backward_rejects(cell, data, cache, match, **build(cell, data))


CELL_PAIRS = [(a, b) for a in CELL_NAMES for b in CELL_NAMES if a != b]


@pytest.mark.parametrize("name, other", CELL_PAIRS, ids=[f"{a}<-{b}" for a, b in CELL_PAIRS])
def test_backward_rejects_cache_of_another_cell_type(name, other):
    cell, data, cache = _forward_for_backward(name)
    *_, foreign = _forward_for_backward(other)
    assert_backward_rejects(cell, data, cache, word("cache"), cache=foreign)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_backward_rejects_non_cache(name):
    cell, data, cache = _forward_for_backward(name)
    for foreign in (None, {"x": data["x"]}, dataclasses.asdict(cache), (data["dhs"], cache)):
        assert_backward_rejects(cell, data, cache, word("cache"), cache=foreign)


@pytest.mark.parametrize("variant", ["hidden_size", "dtype"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_backward_rejects_cache_of_an_incompatible_cell_of_the_same_type(name, variant):
    """A cache made by a cell of the same class but another hidden size or dtype does not
    belong to this cell: backward must say `cache`, not fail inside NumPy or mix dtypes."""
    cell, data, cache = _forward_for_backward(name)
    if variant == "hidden_size":
        other = make_cell(name, D=D, H=H + 1)
    else:
        other = make_cell(name, dtype="float32")
    odata = random_data(other, T=T, B=B)
    *_, foreign = other.forward(odata["x"], odata["h0"], odata["c0"])
    assert_backward_rejects(cell, data, cache, word("cache"), cache=foreign)


# == valid calls modify nothing and return fresh arrays =========================================

def _masking(kind):
    """Forward kwargs for a ragged batch (lengths 4, 2, 4: every step has >= 2 valid rows)."""
    lengths = np.array([4, 2, 4])
    return {"float": {"mask": ragged_mask(T, B, lengths)},
            "bool": {"mask": ragged_mask(T, B, lengths).astype(bool)},
            "int": {"mask": ragged_mask(T, B, lengths).astype(np.int64)},
            "lengths": {"lengths": lengths}}[kind]


@pytest.mark.parametrize("kind", ["float", "bool", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_forward_backward_modify_nothing_and_return_fresh_arrays(name, training, dtype, kind):
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=B, seed=1)
    masking = _masking(kind)
    watched = {**data, **masking, "params": cell.params}
    if not training:
        watched["stats"] = getattr(cell, "stats", {})   # training updates them, by design
    before = copy.deepcopy(watched)
    hs, hT, cT, cache, grads = run(cell, data, training=training, **masking)
    assert_unchanged(before, watched, "inputs")
    assert_unchanged(before["params"], cell.params, "cell.params")
    if not training:
        assert_unchanged(before["stats"], getattr(cell, "stats", {}), "cell.stats")

    outputs = {"hs": hs, "hT": hT, "cT": cT, **{f"grads[{k!r}]": g for k, g in grads.items()}}
    inputs = {**data, **masking, **{f"params[{k!r}]": p for k, p in cell.params.items()},
              **{f"stats[{k!r}]": s for k, s in getattr(cell, "stats", {}).items()}}
    for oname, out in outputs.items():
        assert out.dtype == cell.dtype, (oname, out.dtype)
        for iname, inp in inputs.items():
            assert not np.shares_memory(out, inp), f"{oname} is a view of {iname}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_backward_uses_copies_made_by_forward(name, training):
    """Editing x, h0, c0, mask, cell.params (in place and by replacement), cell.stats and the
    returned hs, hT, cT between forward and backward does not change the gradients."""
    cell = make_cell(name)
    twin = copy.deepcopy(cell)
    data = random_data(cell, T=T, B=B, seed=2)
    mask = ragged_mask(T, B, [4, 2, 4])
    expected = run(twin, copy.deepcopy(data), mask=mask.copy(), training=training)[4]

    hs, (hT, cT), cache = cell.forward(data["x"], data["h0"], data["c0"], mask,
                                       training=training)
    rng = np.random.default_rng(7)
    for a in (data["x"], data["h0"], data["c0"], hs, hT, cT):
        a += rng.standard_normal(a.shape).astype(a.dtype)
    mask[...] = 1.0
    for key, value in cell.params.items():
        value *= 1.5
    cell.params["Wh"] = rng.standard_normal(cell.params["Wh"].shape)
    for value in getattr(cell, "stats", {}).values():
        value += 0.25
    grads = cell.backward(data["dhs"], cache, data["dhT"], data["dcT"])
    assert_unchanged(expected, grads, "grads")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_cache_shares_no_memory_with_inputs_or_cell(name, training):
    """Every array in the cache is forward's own: none is a view of x, h0, c0, mask, a
    parameter or a population statistic (which a later training forward updates in place)."""
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B, seed=9)
    mask = ragged_mask(T, B, [4, 2, 4])
    *_, cache = cell.forward(data["x"], data["h0"], data["c0"], mask, training=training)
    held = {"x": data["x"], "h0": data["h0"], "c0": data["c0"], "mask": mask,
            **{f"params[{k!r}]": p for k, p in cell.params.items()},
            **{f"stats[{k!r}]": s for k, s in getattr(cell, "stats", {}).items()}}
    for field in dataclasses.fields(cache):
        value = getattr(cache, field.name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, array in items:
            if not isinstance(array, np.ndarray):
                continue
            where = f"cache.{field.name}" + ("" if key is None else f"[{key!r}]")
            for hname, h in held.items():
                assert not np.shares_memory(array, h), f"{where} is a view of {hname}"


@pytest.mark.parametrize("name", BN_CELLS)
def test_inference_cache_survives_a_later_training_update(name):
    """forward(training=False), then a training forward (which updates cell.stats), then
    backward of the first cache: the gradients are those of the first forward."""
    cell = make_cell(name)
    twin = copy.deepcopy(cell)
    data = random_data(cell, T=T, B=B, seed=10)
    expected = run(twin, data, training=False)[4]
    *_, cache = cell.forward(data["x"], data["h0"], data["c0"], training=False)
    cell.forward(random_data(cell, T=T, B=B, seed=11)["x"], training=True)
    grads = cell.backward(data["dhs"], cache, data["dhT"], data["dcT"])
    assert_unchanged(expected, grads, "grads")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_read_only_inputs_work(name, training):
    """Arrays the caller cannot write (x.setflags(write=False), likewise h0, c0, mask, lengths,
    dhs, dhT, dcT and the params) give the results of writable ones."""
    cell = make_cell(name)
    twin = copy.deepcopy(cell)
    data = random_data(cell, T=T, B=B, seed=3)
    for masking in (_masking("float"), _masking("lengths")):
        expected = run(twin, data, training=training, **masking)
        frozen = copy.deepcopy({**data, **masking})
        for value in list(frozen.values()) + list(cell.params.values()):
            value.setflags(write=False)
        got = run(cell, frozen, training=training, **masking)
        for k, (e, g) in enumerate(zip(expected, got)):
            if k != 3:                            # the cache is compared through the grads
                assert_unchanged(e, g, f"result {k}")


# == documented degenerate cases: not errors, finite and defined ================================

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_sequence_of_length_zero_in_a_batch(name, training, dtype):
    """lengths (4, 0, 4): sequence 1 never starts. Its final state is its initial state, its
    outputs are 0, and the gradients reaching h0, c0 are dhT, dcT exactly (no step touched)."""
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=B, seed=4)
    lengths = np.array([4, 0, 4])
    hs, hT, cT, _, grads = run(cell, data, training=training, lengths=lengths)
    assert_all_finite(hs, hT, cT, grads)
    assert np.array_equal(hT[1], data["h0"][1])
    assert np.array_equal(cT[1], data["c0"][1])
    assert np.array_equal(hs[:, 1], np.zeros((T, H)))
    assert np.array_equal(grads["h0"][1], data["dhT"][1])
    assert np.array_equal(grads["c0"][1], data["dcT"][1])
    assert np.array_equal(grads["x"][:, 1], np.zeros((T, D)))
    assert np.all(hs[:, [0, 2]] != 0)                     # the other rows did run
    if dtype == "float64":
        assert_gradcheck(cell, x=data["x"], h0=data["h0"], c0=data["c0"], lengths=lengths,
                         training=training, T=T, B=B, seed=4)


def test_bn_lstm_training_step_with_one_valid_row():
    """lengths (4, 2, 3): step 3 has one valid row (row 0). Its batch variance is 0, every
    normalised value of that step is 0 (so its gates are act(b) and h = σ(b_o) tanh(β_c)),
    outputs and gradients are finite and right, and the population slot of that step is not
    updated (one row carries no spread)."""
    cell = make_cell("bn_lstm")
    stats = copy.deepcopy(cell.stats)
    data = random_data(cell, T=T, B=B, seed=5)
    lengths = np.array([4, 2, 3])
    hs, hT, cT, cache, grads = run(cell, data, training=True, lengths=lengths)
    assert_all_finite(hs, hT, cT, grads)
    assert cache.count[3] == 1
    for key in ("a_hat", "u_hat", "c_hat"):
        assert np.array_equal(getattr(cache, key)[3], np.zeros_like(getattr(cache, key)[3])), key
    for key in ("var_x", "var_h", "var_c"):
        assert np.array_equal(getattr(cache, key)[3], np.zeros_like(getattr(cache, key)[3])), key
    p = cell.params
    sigmoid_bo = 1.0 / (1.0 + np.exp(-p["b"][3 * H:]))
    assert relative_error(hs[3, 0], sigmoid_bo * np.tanh(p["beta_c"])) < TOL["float64_reorder"]
    assert np.array_equal(hs[3, 1:], np.zeros((B - 1, H)))
    for key in cell.stats:
        assert np.array_equal(cell.stats[key][3], stats[key][3]), key      # skipped slot
        assert not np.array_equal(cell.stats[key][:3], stats[key][:3]), key
    assert_gradcheck(cell, x=data["x"], h0=data["h0"], c0=data["c0"], lengths=lengths,
                     training=True, T=T, B=B, seed=5)


def test_bn_lstm_training_step_with_no_valid_row():
    """Step 1 masked for every row: the state is carried through it unchanged, its outputs and
    the gradient reaching x_1 are 0, everything is finite, and its population slot is kept."""
    cell = make_cell("bn_lstm")
    stats = copy.deepcopy(cell.stats)
    data = random_data(cell, T=T, B=B, seed=6)
    mask = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 0, 1]], dtype=float)
    hs, hT, cT, cache, grads = run(cell, data, training=True, mask=mask)
    assert_all_finite(hs, hT, cT, grads)
    assert cache.count[1] == 0
    assert np.array_equal(hs[1], np.zeros((B, H)))
    assert np.array_equal(cache.h[2], cache.h[1])
    assert np.array_equal(cache.c[2], cache.c[1])
    assert np.array_equal(grads["x"][1], np.zeros((B, D)))
    assert np.array_equal(hT[1], cache.h[3][1]) and np.array_equal(cT[1], cache.c[3][1])
    for key in cell.stats:
        assert np.array_equal(cell.stats[key][1], stats[key][1]), key
        assert not np.array_equal(cell.stats[key][[0, 2, 3]], stats[key][[0, 2, 3]]), key
    assert_gradcheck(cell, x=data["x"], h0=data["h0"], c0=data["c0"], mask=mask,
                     training=True, T=T, B=B, seed=6)


# -- eps = 0: a zero variance normalises to 0 and passes no gradient (BN 15), (LN 11) ----------
def _eps_runs(name, backend, data, h0, training=True, epsilons=(0.0, 1e-300), **options):
    """The same forward and backward for each eps (1e-300 leaves every non-zero variance's
    s unchanged to the last bit); in inference slot 0's population variances are all 0."""
    out = {}
    for eps in epsilons:
        cell = make_cell(name, eps=eps, backend=backend, **options)
        if not training:
            for key in cell.stats:
                if key.startswith("var"):
                    cell.stats[key][0] = 0.0
        hs, (hT, cT), cache = cell.forward(data["x"], h0, data["c0"], training=training,
                                           update_stats=False)
        out[eps] = hs, hT, cT, cache, cell.backward(data["dhs"], cache, data["dhT"],
                                                    data["dcT"])
    return out


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", ["bn_lstm", "ln_lstm"])
def test_eps_zero_zero_variance_gives_zero_and_no_gradient(name, backend):
    """h0 = 0 makes the recurrent term of step 0 exactly 0: a zero variance over the batch (BN)
    and over the features (LN). With eps = 0 its normalised value is 0 (fastrnns' eps-free
    LayerNorm returns 0/0 = NaN), everything is finite, the outputs are those of eps = 1e-300
    bit for bit, and no gradient passes: dh0, which reaches h0 only through that term, is
    exactly 0 -- where eps = 1e-300 sends one of order 1/√eps = 1e150."""
    data = random_data(make_cell(name), T=T, B=B, seed=7)
    runs = _eps_runs(name, backend, data, np.zeros((B, H)))
    hs, hT, cT, cache, grads = runs[0.0]
    assert_all_finite(hs, hT, cT, grads)
    assert np.array_equal(cache.a_hat[0], np.zeros_like(cache.a_hat[0]))
    assert np.array_equal(grads["h0"], np.zeros((B, H)))
    assert np.array_equal(hs, runs[1e-300][0]) and np.array_equal(cT, runs[1e-300][2])
    assert np.max(np.abs(runs[1e-300][4]["h0"])) > 1e100


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_eps_zero_zero_population_variance(backend):
    """Inference with eps = 0 and slot 0's population variances 0 (means not: z - μ ≠ 0, s = 0):
    the same rule, s read as ∞, so every normalised value of step 0 is 0 (a convention here:
    the limit eps -> 0 would be ±∞), all finite, and dh0 = 0."""
    data = random_data(make_cell("bn_lstm"), T=T, B=B, seed=7)
    hs, hT, cT, cache, grads = _eps_runs("bn_lstm", backend, data, data["h0"], training=False,
                                         epsilons=(0.0,))[0.0]
    assert_all_finite(hs, hT, cT, grads)
    for key in ("a_hat", "u_hat", "c_hat"):
        assert np.array_equal(getattr(cache, key)[0], np.zeros_like(getattr(cache, key)[0]))
    assert np.array_equal(grads["h0"], np.zeros((B, H)))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_eps_zero_constant_input_to_sequence_wise_bn(backend):
    """Every frame the same x, and x, Wx dyadic so that x Wx, its sum over the 12 frames and the
    mean are exact: a variance of exactly 0 over batch × time. With eps = 0, û = 0, and dx, dWx
    (which reach x, Wx only through that BN) are exactly 0. (Equal rows whose mean rounds give a
    variance of order ulp² instead, and with eps = 0 a û of order 1: derivations/batch_norm.md.)"""
    data = random_data(make_cell("seq_bn_lstm"), T=T, B=B, seed=8)
    rng = np.random.default_rng(9)
    data["x"] = np.broadcast_to(rng.integers(-4, 5, D) / 4, (T, B, D)).copy()
    Wx = rng.integers(-8, 9, (D, 4 * H)) / 8
    runs = {}
    for eps in (0.0, 1e-300):
        cell = make_cell("seq_bn_lstm", eps=eps, backend=backend)
        cell.params["Wx"][...] = Wx
        hs, (hT, cT), cache = cell.forward(data["x"], data["h0"], data["c0"])
        runs[eps] = hs, hT, cT, cache, cell.backward(data["dhs"], cache, data["dhT"],
                                                     data["dcT"])
    hs, hT, cT, cache, grads = runs[0.0]
    assert_all_finite(hs, hT, cT, grads)
    assert np.array_equal(cache.var_x, np.zeros_like(cache.var_x))
    assert np.array_equal(cache.u_hat, np.zeros_like(cache.u_hat))
    assert np.array_equal(grads["x"], np.zeros((T, B, D)))
    assert np.array_equal(grads["Wx"], np.zeros_like(grads["Wx"]))
    assert np.array_equal(hs, runs[1e-300][0])
    assert np.max(np.abs(runs[1e-300][4]["x"])) > 1e100


# (cell, training) pairs in which batch size 1 is allowed: all but BN-LSTM training
BATCH_OF_ONE = [("seq_bn_lstm", True), ("seq_bn_lstm", False), ("ln_lstm", True),
                ("ln_lstm", False), ("lstm", True), ("bn_lstm", False)]


@pytest.mark.parametrize("name, training", BATCH_OF_ONE,
                         ids=[f"{n}-{'train' if t else 'eval'}" for n, t in BATCH_OF_ONE])
def test_batch_of_one_works(name, training):
    """Finite results, gradients that pass the finite-difference check and, where rows are
    independent (everything but SeqBN-LSTM training), the result of that row in a batch of 3."""
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B, seed=8)
    one = {k: (v[:, :1] if v.ndim == 3 else v[:1]) for k, v in data.items()}
    stats = copy.deepcopy(getattr(cell, "stats", {}))
    hs, hT, cT, _, grads = run(cell, one, training=training)
    assert_all_finite(hs, hT, cT, grads)
    assert hs.shape == (T, 1, H)
    if name == "seq_bn_lstm" and training:
        for key in cell.stats:                   # T frames of one row are a batch of T
            assert not np.array_equal(cell.stats[key], stats[key]), key
    else:
        full = make_cell(name)
        hs3, hT3, cT3, _, _ = run(full, data, training=training)
        for a, b in ((hs, hs3[:, :1]), (hT, hT3[:1]), (cT, cT3[:1])):
            assert relative_error(a, b) < TOL["float64_reorder"]
    assert_gradcheck(cell, x=one["x"], h0=one["h0"], c0=one["c0"], training=training, T=T, B=1,
                     seed=8)
