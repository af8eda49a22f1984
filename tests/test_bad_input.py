"""Bad input and degenerate input, for every cell of both families.

Every bad argument -- to a constructor, to forward, to backward, or a cell.params the user edited
into a bad state -- gets a ValueError whose message names the argument, and the failed call
leaves the cell, the cache and every array passed in bit for bit as they were. Valid calls never
modify what they are given either, return arrays that share no memory with it, and compute from
copies (editing x or cell.params after forward does not change what backward returns).

The degenerate cases the docs define -- a sequence of length 0 inside a batch, a per-step BN step
with one valid row or none, batch size 1 where the cell allows it -- are not errors: their
results are finite and the values the docs say.
"""
import copy
import dataclasses
import math

import numpy as np
import pytest

import refnorm
from refnorm import relative_error

from helpers import (ALL_CELLS, BN_CELLS, BN_SEQ_CELLS, BN_STEP_CELLS, GRU_CELLS, LN_CELLS,
                     LSTM_CELLS, NORM_CELLS, RNN_CELLS, TOL, backward, cell_backends, forward,
                     initial_states, make_cell, ragged_mask, random_data, run, upstream_names)

T, B, D, H = 4, 3, 3, 3            # make_cell's default D = H = 3
DTYPES = ("float64", "float32")
CELL_TYPES = tuple(refnorm.CELLS.values())


def other_float(dtype):
    return np.float32 if np.dtype(dtype) == np.float64 else np.float64


def word(name):
    """Regex for `name` as a whole word in the error message."""
    return rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])"


def uses(name, arg):
    """Whether cell `name` takes the state argument `arg` (h0, dhT: all; c0, dcT: LSTMs)."""
    return not arg.startswith(("c0", "dcT")) or name in LSTM_CELLS


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
@pytest.mark.parametrize("name", ALL_CELLS)
def test_constructor_rejects_bad_size(name, arg, value):
    sizes = {"input_size": 3, "hidden_size": 3, arg: value}
    with pytest.raises(ValueError, match=word(arg)):
        refnorm.CELLS[name](sizes["input_size"], sizes["hidden_size"])


INF, NAN = float("inf"), float("nan")
BAD_CHOICES = ["", None, True, 1]          # not a string, or the empty one
# argument -> (cells that take it, bad values)
BAD_OPTIONS = {
    "backend": (ALL_CELLS, ["cuda9", "", "Numpy", None]),
    "dtype": (ALL_CELLS, ["float16", "int32", "complex128", np.float16, np.int64, None]),
    "seed": (ALL_CELLS, [-1, np.int64(-3), 1.5, "0", True]),
    # eps = 0 is allowed (BN 15), (LN 11); below 0, NaN and inf are not
    "eps": (NORM_CELLS, [-1e-5, -5e-324, -1, NAN, INF, -INF, True, "1e-5", None]),
    "momentum": (BN_CELLS, [0, 0.0, -0.1, 1.0000001, 1.5, NAN, INF, True]),
    "max_steps": (BN_STEP_CELLS, [0, -1, 2.5, True, "4"]),
    "past_max_steps": (BN_STEP_CELLS, ["Clamp", "clip", "", None, True, 1]),
    "unbiased_var": (BN_CELLS, [0, 1, "yes", None]),
    "pad_stats": (BN_CELLS, ["zeros", "Exclude"] + BAD_CHOICES),
    "per_gate": (("ln_lstm",), [0, 1, "yes", None]),
    "gamma_init": (NORM_CELLS, [NAN, INF, -INF, 0, -0.5, "1", True, None]),
    "terms": (("bn_rnn", "ln_lstm", "ln_rnn"), ["sum", "Summed", "joint"] + BAD_CHOICES),
    "nonlinearity": (RNN_CELLS, ["sigmoid", "Tanh", "relu6"] + BAD_CHOICES),
    "Wh": (RNN_CELLS, ["eye", "Identity", "uniform", "", True, 1]),
    "reset": (("gru",), ["After", "before_", "linear_before_reset"] + BAD_CHOICES),
    # a NumPy NaN or bool is as bad as Python's; None means "as drawn" for forget_bias_init only
    "forget_bias": (LSTM_CELLS, [NAN, INF, -INF, "1", True, None, np.float64(NAN),
                                 np.float32(INF), np.bool_(True), np.array([1.0])]),
    "forget_bias_init": (LSTM_CELLS, [NAN, INF, -INF, "1", True, np.float64(NAN),
                                      np.float32(-INF), np.bool_(True), np.array([1.0])]),
}
OPTION_CASES = [pytest.param(name, arg, value, id=f"{name}-{arg}={value!r}")
                for arg, (names, values) in BAD_OPTIONS.items()
                for name in names for value in values]


@pytest.mark.parametrize("name, arg, value", OPTION_CASES)
def test_constructor_rejects_bad_option(name, arg, value):
    with pytest.raises(ValueError, match=word(arg)):
        refnorm.CELLS[name](3, 3, **{arg: value})


# options of the other families that the GRU family does not have (no nonlinearity, no Wh
# initialiser, one term form, no forget gate); reset is the plain GRU's alone (the normalised
# GRUs are reset after, derivations/bn_gru.md, seq_bn_gru.md, ln_gru.md)
FOREIGN_GRU_OPTIONS = [pytest.param(name, arg, value, id=f"{name}-{arg}")
                       for name in GRU_CELLS
                       for arg, value in [("nonlinearity", "tanh"), ("Wh", "identity"),
                                          ("terms", "summed"), ("per_gate", True),
                                          ("forget_bias", 1.0)]
                       + ([("reset", "after")] if name != "gru" else [])]


@pytest.mark.parametrize("name, arg, value", FOREIGN_GRU_OPTIONS)
def test_gru_family_rejects_options_it_does_not_have(name, arg, value):
    with pytest.raises(TypeError, match=arg):
        refnorm.CELLS[name](3, 3, **{arg: value})


@pytest.mark.parametrize("name", ALL_CELLS)
def test_constructor_accepts_edge_values(name):
    """The rejections above are not over-broad: NumPy integers and bools, the closed end of the
    momentum interval, dtype objects and seed 0 are fine, and so is the smallest hidden size of
    each cell (1, but 2 for LNRNN)."""
    H_min = 2 if name == "ln_rnn" else 1
    options = {"seed": np.int64(0), "dtype": np.dtype("float32"), "backend": "numpy"}
    if name in BN_CELLS:
        options.update(momentum=1.0, eps=0, unbiased_var=np.True_)
    if name in BN_STEP_CELLS:
        options.update(max_steps=np.int64(1), past_max_steps="clamp")
    if name in LN_CELLS:
        options.update(eps=-0.0)
    if name == "ln_lstm":
        options.update(per_gate=np.True_)
    if name in LSTM_CELLS:
        options.update(forget_bias=np.float32(0.5), forget_bias_init=np.int64(-2))
    if name in RNN_CELLS:
        options.update(nonlinearity="relu", Wh="identity")
    if name == "gru":
        options.update(reset="before")
    cell = refnorm.CELLS[name](np.int64(2), np.int32(H_min), **options)
    assert (cell.input_size, cell.hidden_size, cell.dtype) == (2, H_min, np.float32)
    assert all(p.dtype == np.float32 for p in cell.params.values())
    if name in LSTM_CELLS:
        assert type(cell.forget_bias) is float and cell.forget_bias == 0.5
        assert cell.params["b"][1] == -2                   # the forget block of b (H = 1)
    elif name in RNN_CELLS:
        assert cell.nonlinearity == "relu"
        assert np.array_equal(cell.params["Wh"], np.eye(H_min, dtype=np.float32))
    elif name == "gru":
        assert cell.reset == "before" and "b_hn" not in cell.params       # (GRU 4): no b_hn
    if name in NORM_CELLS:                                 # eps = 0 (and -0.0) is 0.0
        assert type(cell.eps) is float and cell.eps == 0 and math.copysign(1, cell.eps) == 1


def test_ln_rnn_rejects_hidden_size_1():
    """A layer norm over one feature is 0 whatever its input: LNRNN(D, 1) is a ValueError naming
    hidden_size (either term form), where LNLSTM normalises 4H >= 4 features and takes H = 1."""
    for terms in ("summed", "separate"):
        with pytest.raises(ValueError, match=word("hidden_size")):
            refnorm.LNRNN(3, 1, terms=terms)
    refnorm.LNRNN(3, 2)
    refnorm.LNLSTM(3, 1)


# The parameters and statistics each option combination of the RNN family has; the gains start
# at gamma_init and b at 0 in every normalised cell.
RNN_PARAMETERS = [
    ("rnn", {}, (), ()),
    ("bn_rnn", {}, ("gamma_x", "gamma_h"), ("mean_x", "var_x", "mean_h", "var_h")),
    ("bn_rnn", {"terms": "separate"}, ("gamma_x", "gamma_h"),
     ("mean_x", "var_x", "mean_h", "var_h")),
    ("bn_rnn", {"terms": "summed"}, ("gamma_z",), ("mean_z", "var_z")),
    ("seq_bn_rnn", {}, ("gamma_x",), ("mean_x", "var_x")),
    ("ln_rnn", {}, ("gamma_z",), ()),
    ("ln_rnn", {"terms": "summed"}, ("gamma_z",), ()),
    ("ln_rnn", {"terms": "separate"}, ("gamma_x", "gamma_h"), ()),
]


@pytest.mark.parametrize("name, options, gains, stats", RNN_PARAMETERS,
                         ids=[f"{n}-{'-'.join(o.values()) or 'default'}"
                              for n, o, _, _ in RNN_PARAMETERS])
def test_rnn_cells_have_the_parameters_and_statistics_of_their_options(name, options, gains,
                                                                        stats):
    """Wx (D, H), Wh (H, H), b (H) and the gains of the term form, each (H,) at gamma_init;
    the BN cells' statistics of that form, (max_steps, H) per step or (H,) sequence-wise, at
    mean 0 and variance 1; the Wh option: identity, orthogonal (Wh Whᵀ = I), or as the cell
    draws it (orthogonal for BNRNN, uniform otherwise)."""
    D_, H_, K = 2, 5, 3
    extra = {"gamma_init": 0.7} if gains else {}
    if name == "bn_rnn":
        extra["max_steps"] = K
    cell = refnorm.CELLS[name](D_, H_, seed=4, **options, **extra)
    shapes = {"Wx": (D_, H_), "Wh": (H_, H_), "b": (H_,), **{g: (H_,) for g in gains}}
    assert {k: v.shape for k, v in cell.params.items()} == shapes
    for g in gains:
        assert np.all(cell.params[g] == 0.7), g
    if gains:
        assert np.all(cell.params["b"] == 0)
    assert set(getattr(cell, "stats", {})) == set(stats)
    for key in stats:
        assert cell.stats[key].shape == ((K, H_) if name == "bn_rnn" else (H_,)), key
        assert np.all(cell.stats[key] == (0 if key.startswith("mean") else 1)), key
    # the Wh option, and the default nonlinearity
    assert cell.nonlinearity == "tanh"
    drawn = cell.params["Wh"]                 # BNRNN draws it orthogonal, the others uniform
    assert np.allclose(drawn @ drawn.T, np.eye(H_), atol=1e-12) == (name == "bn_rnn")
    eye = refnorm.CELLS[name](D_, H_, seed=4, Wh="identity", **options, **extra)
    assert np.array_equal(eye.params["Wh"], np.eye(H_))
    orth = refnorm.CELLS[name](D_, H_, seed=4, Wh="orthogonal", **options, **extra)
    assert np.allclose(orth.params["Wh"] @ orth.params["Wh"].T, np.eye(H_), atol=1e-12)
    assert not np.allclose(orth.params["Wh"], drawn)


@pytest.mark.parametrize("name", [n for n in ALL_CELLS if n in LSTM_CELLS or n in NORM_CELLS])
def test_constructor_rejects_numbers_beyond_the_float_range(name):
    """A finite Python int too large for a float (np.isfinite raises TypeError on it, float()
    OverflowError) gets a ValueError naming the argument, like inf itself; so does a forget bias
    that is finite in float64 but inf in the cell's float32 (the LSTM family)."""
    floats = ((("forget_bias", "forget_bias_init") * (name in LSTM_CELLS))
              + (("eps", "gamma_init") * (name in NORM_CELLS)))
    for arg in floats:
        with pytest.raises(ValueError, match=word(arg)):
            refnorm.CELLS[name](3, 3, **{arg: 10 ** 400})
    if name not in LSTM_CELLS:
        return
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


# case id -> (function(cell, data) -> forward kwargs overriding x, h0 (c0); regex for the
# message). The c0 cases apply to the LSTM family only (uses()).
FORWARD_CASES = {
    "x-2d": (lambda c, d: {"x": d["x"][0]}, word("x")),
    "x-4d": (lambda c, d: {"x": d["x"][None]}, word("x")),
    "x-feature-size": (lambda c, d: {"x": np.ones((T, B, D + 1), c.dtype)}, word("x")),
    "x-empty-sequence": (lambda c, d: {"x": d["x"][:0]}, word("x")),
    "x-empty-batch": (lambda c, d: {"x": d["x"][:, :0], **dict.fromkeys(initial_states(c, d))},
                      word("x")),
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, case", [pytest.param(n, c, id=f"{n}-{c}") for n in ALL_CELLS
                                        for c in FORWARD_CASES if uses(n, c)])
def test_forward_rejects_bad_argument(name, case, dtype):
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=B)
    build, match = FORWARD_CASES[case]
    kwargs = {"x": data["x"], **initial_states(cell, data), **build(cell, data)}
    assert_forward_rejects(cell, match, **kwargs)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_inference_rejects_update_stats(name):
    """forward(training=False, update_stats=True) is a ValueError naming update_stats and
    training, for every cell (population statistics come from training passes only), and changes
    nothing; the same cell runs inference without update_stats (the per-step BN cells have 6
    random slots)."""
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], **initial_states(cell, data)}
    assert_forward_rejects(cell, rf"(?s){word('update_stats')}.*{word('training')}",
                           training=False, update_stats=True, **args)
    assert_forward_rejects(cell, word("update_stats"), training=np.False_,
                           update_stats=np.True_, **args)
    hs, _, _ = cell.forward(training=False, **args)
    assert_all_finite(hs)


@pytest.mark.parametrize("update_stats", [True, False])
@pytest.mark.parametrize("name", BN_STEP_CELLS)
def test_bn_step_training_rejects_batch_of_one(name, update_stats):
    cell = make_cell(name)
    data = random_data(cell, T=T, B=1)
    args = {"x": data["x"], **initial_states(cell, data)}
    assert_forward_rejects(cell, word("training"), training=True, update_stats=update_stats,
                           **args)
    hs, _, _ = cell.forward(training=False, **args)       # inference has no batch statistics
    assert_all_finite(hs)


@pytest.mark.parametrize("name", BN_STEP_CELLS)
def test_bn_step_inference_without_statistics_is_rejected(name):
    """max_steps=None and never trained: no population statistics. The argument at fault is
    training=False; the message must say so."""
    cell = make_cell(name, max_steps=None)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], **initial_states(cell, data)}
    assert_forward_rejects(cell, word("training"), training=False, **args)
    cell.forward(training=True, **args)                      # creates slots 0 .. T-1
    hs, _, _ = cell.forward(training=False, **args)
    assert_all_finite(hs)


@pytest.mark.parametrize("steps, t0", [(5, 0), (2, 3), (1, 4)], ids=["T>max", "t0+T>max",
                                                                     "t0=max"])
@pytest.mark.parametrize("name", BN_STEP_CELLS)
def test_bn_step_training_past_max_steps_is_rejected(name, steps, t0):
    cell = make_cell(name, max_steps=4)
    data = random_data(cell, T=steps, B=B)
    args = {"x": data["x"], **initial_states(cell, data), "t0": t0}
    assert_forward_rejects(cell, word("max_steps"), training=True, **args)   # stats untouched
    # documented non-errors past max_steps: no update, or inference (last slot reused)
    for kwargs in ({"training": True, "update_stats": False}, {"training": False}):
        before = copy.deepcopy(cell.stats)
        hs, _, _ = cell.forward(**args, **kwargs)
        assert_all_finite(hs)
        assert_unchanged(before, cell.stats, "stats")


# == parameters edited into a bad state =========================================================

PARAM_KEYS = {name: list(make_cell(name, D=1, H=2).params) for name in ALL_CELLS}
PARAM_EDITS = {
    "drop-last": lambda p, dt: p[..., :-1].copy(),
    "extra-dim": lambda p, dt: p[None].copy(),
    "nan": lambda p, dt: _with(p, (0,) * p.ndim, np.nan),
    "inf": lambda p, dt: _with(p, (-1,) * p.ndim, -np.inf),
    "other-float-dtype": lambda p, dt: p.astype(other_float(dt)),
    "int": lambda p, dt: np.ones(p.shape, dtype=int),
}
PARAM_CASES = [pytest.param(name, key, edit, id=f"{name}-{key}-{edit}")
               for name in ALL_CELLS for key in PARAM_KEYS[name] for edit in PARAM_EDITS]


@pytest.mark.parametrize("name, key, edit", PARAM_CASES)
def test_forward_rejects_bad_param(name, key, edit):
    cell = make_cell(name)
    twin = copy.deepcopy(cell)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], **initial_states(cell, data)}
    good = cell.params[key]
    cell.params[key] = PARAM_EDITS[edit](good, cell.dtype)
    assert_forward_rejects(cell, rf"(?s)params.*{word(key)}", **args)
    cell.params[key] = good                     # repaired, the cell computes as if never broken
    assert_unchanged(twin.forward(**args)[0], cell.forward(**args)[0], "hs")


@pytest.mark.parametrize("name", ALL_CELLS)
def test_forward_rejects_missing_or_extra_param_key(name):
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B)
    args = {"x": data["x"], **initial_states(cell, data)}
    full = dict(cell.params)
    for key in full:
        cell.params = {k: v for k, v in full.items() if k != key}
        assert_forward_rejects(cell, rf"(?s)params.*{word(key)}", **args)
    cell.params = {**full, "Wy": full["Wx"].copy()}
    assert_forward_rejects(cell, rf"(?s)params.*{word('Wy')}", **args)


@pytest.mark.parametrize("replacement", ["list", "None"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_forward_rejects_params_that_are_not_a_dict(name, replacement):
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B)
    cell.params = list(cell.params.values()) if replacement == "list" else None
    assert_forward_rejects(cell, word("params"), x=data["x"], **initial_states(cell, data))


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
BACKWARD_CASES.update({
    "state_grads-int-1": (lambda c, d: {"state_grads": 1}, word("state_grads")),
    "state_grads-str": (lambda c, d: {"state_grads": "yes"}, word("state_grads")),
    "state_grads-none": (lambda c, d: {"state_grads": None}, word("state_grads")),
})


def _forward_for_backward(name, dtype="float64", **options):
    cell = make_cell(name, dtype=dtype, **options)
    data = random_data(cell, T=T, B=B)
    *_, cache = forward(cell, data, lengths=np.array([4, 2, 3]))
    return cell, data, cache


def assert_backward_rejects(cell, data, good_cache, match, **override):
    """backward with `override` replacing some of (good_cache, data's dhs, dhT (dcT)) is
    rejected, nothing changes, and good_cache still gives the gradients it gave before."""
    grads = {key: data[key] for key in ("dhs",) + upstream_names(cell)}
    expected = cell.backward(cache=good_cache, **grads)
    kwargs = {"cache": good_cache, **grads, **override}
    assert_rejects(match, lambda: cell.backward(**kwargs), cell=cell, arguments=kwargs,
                   good_cache=good_cache)
    assert_unchanged(expected, cell.backward(cache=good_cache, **grads), "grads")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, case", [pytest.param(n, c, id=f"{n}-{c}") for n in ALL_CELLS
                                        for c in BACKWARD_CASES if uses(n, c)])
def test_backward_rejects_bad_upstream_gradient(name, case, dtype):
    cell, data, cache = _forward_for_backward(name, dtype)
    build, match = BACKWARD_CASES[case]
    assert_backward_rejects(cell, data, cache, match, **build(cell, data))


CELL_PAIRS = [(a, b) for a in ALL_CELLS for b in ALL_CELLS if a != b]


@pytest.mark.parametrize("name, other", CELL_PAIRS, ids=[f"{a}<-{b}" for a, b in CELL_PAIRS])
def test_backward_rejects_cache_of_another_cell_type(name, other):
    cell, data, cache = _forward_for_backward(name)
    *_, foreign = _forward_for_backward(other)
    assert_backward_rejects(cell, data, cache, word("cache"), cache=foreign)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_backward_rejects_non_cache(name):
    cell, data, cache = _forward_for_backward(name)
    for foreign in (None, {"x": data["x"]}, dataclasses.asdict(cache), (data["dhs"], cache)):
        assert_backward_rejects(cell, data, cache, word("cache"), cache=foreign)


@pytest.mark.parametrize("variant", ["hidden_size", "dtype"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_backward_rejects_cache_of_an_incompatible_cell_of_the_same_type(name, variant):
    """A cache made by a cell of the same class but another hidden size or dtype does not
    belong to this cell: backward must say `cache`, not fail inside NumPy or mix dtypes."""
    cell, data, cache = _forward_for_backward(name)
    if variant == "hidden_size":
        other = make_cell(name, D=D, H=H + 1)
    else:
        other = make_cell(name, dtype="float32")
    *_, foreign = forward(other, random_data(other, T=T, B=B))
    assert_backward_rejects(cell, data, cache, word("cache"), cache=foreign)


# (cell, options of this cell, options of the cell that made the cache): the same class, sizes
# and dtype, but other parameters (another term form has other gains)
OTHER_PARAMETERS = [("bn_rnn", {"terms": "summed"}, {"terms": "separate"}),
                    ("bn_rnn", {"terms": "separate"}, {"terms": "summed"}),
                    ("ln_rnn", {"terms": "summed"}, {"terms": "separate"}),
                    ("ln_rnn", {"terms": "separate"}, {"terms": "summed"}),
                    ("ln_lstm", {"terms": "separate"}, {"terms": "summed"})]


@pytest.mark.parametrize("name, mine, theirs", OTHER_PARAMETERS,
                         ids=[f"{n}-{a['terms']}<-{b['terms']}" for n, a, b in OTHER_PARAMETERS])
def test_backward_rejects_cache_of_a_cell_with_other_parameters(name, mine, theirs):
    """The gradients backward returns are those of this cell's parameters: a cache whose
    parameters are another set (a cell of the other term form) is rejected, naming cache,
    instead of giving gradients of gains this cell does not have."""
    cell, data, cache = _forward_for_backward(name, **mine)
    *_, foreign = _forward_for_backward(name, **theirs)
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
@pytest.mark.parametrize("name", ALL_CELLS)
def test_forward_backward_modify_nothing_and_return_fresh_arrays(name, training, dtype, kind):
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=B, seed=1)
    masking = _masking(kind)
    watched = {**data, **masking, "params": cell.params}
    if not training:
        watched["stats"] = getattr(cell, "stats", {})   # training updates them, by design
    before = copy.deepcopy(watched)
    hs, finals, cache, grads = run(cell, data, training=training, **masking)
    assert_unchanged(before, watched, "inputs")
    assert_unchanged(before["params"], cell.params, "cell.params")
    if not training:
        assert_unchanged(before["stats"], getattr(cell, "stats", {}), "cell.stats")

    outputs = {"hs": hs, **finals, **{f"grads[{k!r}]": g for k, g in grads.items()}}
    inputs = {**data, **masking, **{f"params[{k!r}]": p for k, p in cell.params.items()},
              **{f"stats[{k!r}]": s for k, s in getattr(cell, "stats", {}).items()}}
    for oname, out in outputs.items():
        assert out.dtype == cell.dtype, (oname, out.dtype)
        for iname, inp in inputs.items():
            assert not np.shares_memory(out, inp), f"{oname} is a view of {iname}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_backward_uses_copies_made_by_forward(name, training):
    """Editing x, the initial states, mask, cell.params (in place and by replacement),
    cell.stats and the returned hs and final states between forward and backward does not
    change the gradients."""
    cell = make_cell(name)
    twin = copy.deepcopy(cell)
    data = random_data(cell, T=T, B=B, seed=2)
    mask = ragged_mask(T, B, [4, 2, 4])
    expected = run(twin, copy.deepcopy(data), mask=mask.copy(), training=training)[3]

    hs, finals, cache = forward(cell, data, mask=mask, training=training)
    rng = np.random.default_rng(7)
    for a in (data["x"], *initial_states(cell, data).values(), hs, *finals.values()):
        a += rng.standard_normal(a.shape).astype(a.dtype)
    mask[...] = 1.0
    for key, value in cell.params.items():
        value *= 1.5
    cell.params["Wh"] = rng.standard_normal(cell.params["Wh"].shape)
    for value in getattr(cell, "stats", {}).values():
        value += 0.25
    grads = backward(cell, data, cache)
    assert_unchanged(expected, grads, "grads")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_cache_shares_no_memory_with_inputs_or_cell(name, training):
    """Every array in the cache is forward's own: none is a view of x, the initial states,
    mask, a parameter or a population statistic (which a later training forward updates in
    place)."""
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B, seed=9)
    mask = ragged_mask(T, B, [4, 2, 4])
    *_, cache = forward(cell, data, mask=mask, training=training)
    held = {"x": data["x"], **initial_states(cell, data), "mask": mask,
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
    expected = run(twin, data, training=False)[3]
    *_, cache = forward(cell, data, training=False)
    cell.forward(random_data(cell, T=T, B=B, seed=11)["x"], training=True)
    grads = backward(cell, data, cache)
    assert_unchanged(expected, grads, "grads")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_read_only_inputs_work(name, training):
    """Arrays the caller cannot write (x.setflags(write=False), likewise the initial states,
    mask, lengths, dhs, the final-state gradients and the params) give the results of writable
    ones."""
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
            if k != 2:                            # the cache is compared through the grads
                assert_unchanged(e, g, f"result {k}")


# == documented degenerate cases: not errors, finite and defined ================================

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_sequence_of_length_zero_in_a_batch(name, training, dtype):
    """lengths (4, 0, 4, 4): sequence 1 never starts. Its final states are its initial states,
    its outputs are 0, and the gradients reaching h0 (c0) are dhT (dcT) exactly (no step
    touched it). (Three valid rows per step: a per-step BN over two rows is ±γ whatever its
    input, which would leave the gradients upstream of it all rounding.)"""
    cell = make_cell(name, dtype=dtype)
    data = random_data(cell, T=T, B=4, seed=4)
    lengths = np.array([4, 0, 4, 4])
    hs, finals, _, grads = run(cell, data, training=training, lengths=lengths)
    assert_all_finite(hs, finals, grads)
    for s in cell.STATES:
        assert np.array_equal(finals[s + "T"][1], data[s + "0"][1]), s
        assert np.array_equal(grads[s + "0"][1], data[f"d{s}T"][1]), s
    assert np.array_equal(hs[:, 1], np.zeros((T, H)))
    assert np.array_equal(grads["x"][:, 1], np.zeros((T, D)))
    assert np.all(hs[:, [0, 2, 3]] != 0)                  # the other rows did run
    if dtype == "float64":
        assert_gradcheck(cell, x=data["x"], **initial_states(cell, data), lengths=lengths,
                         training=training, T=T, B=4, seed=4)


def _normalised_fields(cache):
    """The normalised values the cache holds (u_hat, a_hat, c_hat, s_hat: whichever exist)."""
    return [f.name for f in dataclasses.fields(cache)
            if f.name.endswith("_hat") and getattr(cache, f.name) is not None]


# per-step BN cells and their options: BNLSTM, BNRNN of both term forms and nonlinearities, BNGRU
BN_STEP_CASES = [("bn_lstm", {}), ("bn_rnn", {"terms": "separate"}),
                 ("bn_rnn", {"terms": "summed", "nonlinearity": "relu"}), ("bn_gru", {})]
BN_STEP_IDS = ["bn_lstm", "bn_rnn-separate", "bn_rnn-summed-relu", "bn_gru"]


def one_row_output(cell, h_prev):
    """What a row alone in its step's batch statistics outputs in training: every normalised
    value is 0, so BNLSTM's gates are act(b) and h = σ(b_o) tanh(β_c); BNRNN's is φ(b)
    (BN-RNN 9); BNGRU's gates are r = σ(b_r), z = σ(b_z), n = tanh(b_n + r ⊙ b_hn) and its
    state still mixes in the row's previous one, h = (1 − z) ⊙ n + z ⊙ h_prev (it leaks rather
    than resets: derivations/bn_gru.md)."""
    p = cell.params
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    if cell.stem == "bn_lstm":
        return sigmoid(p["b"][3 * H:]) * np.tanh(p["beta_c"])
    if cell.stem == "bn_gru":
        r, z = sigmoid(p["b"][:H]), sigmoid(p["b"][H:2 * H])
        n = np.tanh(p["b"][2 * H:] + r * p["b_hn"])
        return (1 - z) * n + z * h_prev
    return np.tanh(p["b"]) if cell.nonlinearity == "tanh" else np.maximum(p["b"], 0.0)


@pytest.mark.parametrize("name, options", BN_STEP_CASES, ids=BN_STEP_IDS)
def test_bn_step_training_step_with_one_valid_row(name, options):
    """lengths (4, 3, 3, 1) of a batch of 4: step 3 has one valid row (row 0). Its batch
    variances are 0, every normalised value of that step is 0 (one_row_output), outputs and
    gradients are finite and right, and the population slot of that step is not updated (one
    row carries no spread)."""
    cell = make_cell(name, **options)
    stats = copy.deepcopy(cell.stats)
    data = random_data(cell, T=T, B=4, seed=5)
    lengths = np.array([4, 3, 3, 1])
    hs, finals, cache, grads = run(cell, data, training=True, lengths=lengths)
    assert_all_finite(hs, finals, grads)
    assert cache.count[3] == 1
    for key in _normalised_fields(cache):
        assert np.array_equal(getattr(cache, key)[3], np.zeros_like(getattr(cache, key)[3])), key
    for key in (k for k in cell.stats if k.startswith("var")):
        assert np.array_equal(getattr(cache, key)[3], np.zeros_like(getattr(cache, key)[3])), key
    assert relative_error(hs[3, 0], one_row_output(cell, cache.h[3, 0])) < TOL["float64_reorder"]
    assert np.array_equal(hs[3, 1:], np.zeros((3, H)))
    for key in cell.stats:
        assert np.array_equal(cell.stats[key][3], stats[key][3]), key      # skipped slot
        assert not np.array_equal(cell.stats[key][:3], stats[key][:3]), key
    assert_gradcheck(cell, x=data["x"], **initial_states(cell, data), lengths=lengths,
                     training=True, T=T, B=4, seed=5)


@pytest.mark.parametrize("name, options", BN_STEP_CASES, ids=BN_STEP_IDS)
def test_bn_step_training_step_with_no_valid_row(name, options):
    """Step 1 masked for every row: the states are carried through it unchanged, its outputs
    and the gradient reaching x_1 are 0, everything is finite, and its population slot is
    kept."""
    cell = make_cell(name, **options)
    stats = copy.deepcopy(cell.stats)
    data = random_data(cell, T=T, B=4, seed=6)
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 1]], dtype=float)
    hs, finals, cache, grads = run(cell, data, training=True, mask=mask)
    assert_all_finite(hs, finals, grads)
    assert cache.count[1] == 0
    assert np.array_equal(hs[1], np.zeros((4, H)))
    for s in cell.STATES:
        assert np.array_equal(getattr(cache, s)[2], getattr(cache, s)[1]), s
        assert np.array_equal(finals[s + "T"][1], getattr(cache, s)[3][1]), s
    assert np.array_equal(grads["x"][1], np.zeros((4, D)))
    for key in cell.stats:
        assert np.array_equal(cell.stats[key][1], stats[key][1]), key
        assert not np.array_equal(cell.stats[key][[0, 2, 3]], stats[key][[0, 2, 3]]), key
    assert_gradcheck(cell, x=data["x"], **initial_states(cell, data), mask=mask,
                     training=True, T=T, B=4, seed=6)


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
        hs, finals, cache = forward(cell, data, h0=h0, training=training, update_stats=False)
        out[eps] = hs, finals, cache, backward(cell, data, cache)
    return out


# the cells with a normalised recurrent term h Wh of its own (the summed forms normalise
# x Wx + h Wh together, whose variance h0 = 0 does not make 0)
RECURRENT_TERM = [("bn_lstm", {}), ("ln_lstm", {}), ("bn_rnn", {"terms": "separate"}),
                  ("ln_rnn", {"terms": "separate"})]


@pytest.mark.parametrize("backend, name, options",
                         [pytest.param(b, n, o, id="-".join([b, n, *o.values()]))
                          for b, n in cell_backends([n for n, _ in RECURRENT_TERM])
                          for n2, o in RECURRENT_TERM if n2 == n])
def test_eps_zero_zero_variance_gives_zero_and_no_gradient(backend, name, options):
    """h0 = 0 makes the recurrent term of step 0 exactly 0: a zero variance over the batch (BN)
    and over the features (LN). With eps = 0 its normalised value is 0 (fastrnns' eps-free
    LayerNorm returns 0/0 = NaN), everything is finite, the outputs are those of eps = 1e-300
    bit for bit, and no gradient passes: dh0, which reaches h0 only through that term, is
    exactly 0 -- where eps = 1e-300 sends one of order 1/√eps = 1e150."""
    data = random_data(make_cell(name, **options), T=T, B=B, seed=7)
    runs = _eps_runs(name, backend, data, np.zeros((B, H)), **options)
    hs, finals, cache, grads = runs[0.0]
    assert_all_finite(hs, finals, grads)
    assert np.array_equal(cache.a_hat[0], np.zeros_like(cache.a_hat[0]))
    assert np.array_equal(grads["h0"], np.zeros((B, H)))
    assert np.array_equal(hs, runs[1e-300][0])
    assert_unchanged(finals, runs[1e-300][1], "final states")
    assert np.max(np.abs(runs[1e-300][3]["h0"])) > 1e100


@pytest.mark.parametrize("backend, name", cell_backends(["bn_gru", "ln_gru"]))
def test_eps_zero_zero_variance_of_the_gru_recurrent_term(backend, name):
    """The same for BNGRU and LNGRU, whose h0 also reaches h̃_0 directly through z ⊙ h0 (GRU 5):
    with eps = 0 the normalised recurrent term of step 0 is 0 and passes no gradient, so dh0 is
    that carry path alone, z_0 ⊙ dL/dh̃_0, where eps = 1e-300 adds one of order 1e150."""
    data = random_data(make_cell(name), T=T, B=B, seed=7)
    runs = _eps_runs(name, backend, data, np.zeros((B, H)))
    hs, finals, cache, grads = runs[0.0]
    assert_all_finite(hs, finals, grads)
    assert np.array_equal(cache.a_hat[0], np.zeros_like(cache.a_hat[0]))
    assert np.array_equal(hs, runs[1e-300][0])
    cell = make_cell(name, eps=0.0, backend=backend)
    dh = backward(cell, data, cache, state_grads=True)["dh"]
    carry = cache.gates[0][:, H:2 * H] * dh[0]                      # z_0 ⊙ dL/dh̃_0
    assert relative_error(grads["h0"], carry) < TOL["float64_reorder"]
    assert np.max(np.abs(runs[1e-300][3]["h0"])) > 1e100


@pytest.mark.parametrize("backend, name, options",
                         [pytest.param(b, n, o, id="-".join([b, n, *o.values()]))
                          for b, n in cell_backends(BN_STEP_CELLS)
                          for n2, o in BN_STEP_CASES if n2 == n])
def test_eps_zero_zero_population_variance(backend, name, options):
    """Inference with eps = 0 and slot 0's population variances 0 (means not: z - μ ≠ 0, s = 0):
    the same rule, s read as ∞, so every normalised value of step 0 is 0 (a convention here:
    the limit eps -> 0 would be ±∞), all finite, and dh0 = 0 -- BNGRU's dh0 is its carry path
    z_0 ⊙ dL/dh̃_0 alone (GRU 5)."""
    data = random_data(make_cell(name, **options), T=T, B=B, seed=7)
    hs, finals, cache, grads = _eps_runs(name, backend, data, data["h0"], training=False,
                                         epsilons=(0.0,), **options)[0.0]
    assert_all_finite(hs, finals, grads)
    for key in _normalised_fields(cache):
        assert np.array_equal(getattr(cache, key)[0], np.zeros_like(getattr(cache, key)[0]))
    if name != "bn_gru":
        assert np.array_equal(grads["h0"], np.zeros((B, H)))
        return
    cell = make_cell(name, eps=0.0, backend=backend, **options)
    dh = backward(cell, data, cache, state_grads=True)["dh"]
    assert relative_error(grads["h0"], cache.gates[0][:, H:2 * H] * dh[0]) \
        < TOL["float64_reorder"]


@pytest.mark.parametrize("backend, name", cell_backends(BN_SEQ_CELLS))
def test_eps_zero_constant_input_to_sequence_wise_bn(backend, name):
    """Every frame the same x, and x, Wx dyadic so that x Wx, its sum over the 12 frames and the
    mean are exact: a variance of exactly 0 over batch × time. With eps = 0, û = 0, and dx, dWx
    (which reach x, Wx only through that BN) are exactly 0. (Equal rows whose mean rounds give a
    variance of order ulp² instead, and with eps = 0 a û of order 1: derivations/batch_norm.md.)"""
    data = random_data(make_cell(name), T=T, B=B, seed=8)
    rng = np.random.default_rng(9)
    data["x"] = np.broadcast_to(rng.integers(-4, 5, D) / 4, (T, B, D)).copy()
    Wx = rng.integers(-8, 9, make_cell(name).params["Wx"].shape) / 8
    runs = {}
    for eps in (0.0, 1e-300):
        cell = make_cell(name, eps=eps, backend=backend)
        cell.params["Wx"][...] = Wx
        hs, finals, cache = forward(cell, data)
        runs[eps] = hs, finals, cache, backward(cell, data, cache)
    hs, finals, cache, grads = runs[0.0]
    assert_all_finite(hs, finals, grads)
    assert np.array_equal(cache.var_x, np.zeros_like(cache.var_x))
    assert np.array_equal(cache.u_hat, np.zeros_like(cache.u_hat))
    assert np.array_equal(grads["x"], np.zeros((T, B, D)))
    assert np.array_equal(grads["Wx"], np.zeros_like(grads["Wx"]))
    assert np.array_equal(hs, runs[1e-300][0])
    assert np.max(np.abs(runs[1e-300][3]["x"])) > 1e100


# (cell, training) pairs in which batch size 1 is allowed: all but the per-step BN cells in
# training
BATCH_OF_ONE = [(name, training) for name in ALL_CELLS for training in (True, False)
                if not (training and name in BN_STEP_CELLS)]


@pytest.mark.parametrize("name, training", BATCH_OF_ONE,
                         ids=[f"{n}-{'train' if t else 'eval'}" for n, t in BATCH_OF_ONE])
def test_batch_of_one_works(name, training):
    """Finite results, gradients that pass the finite-difference check and, where rows are
    independent (everything but sequence-wise BN training), the result of that row in a batch
    of 3."""
    cell = make_cell(name)
    data = random_data(cell, T=T, B=B, seed=8)
    one = {k: (v[:, :1] if v.ndim == 3 else v[:1]) for k, v in data.items()}
    stats = copy.deepcopy(getattr(cell, "stats", {}))
    hs, finals, _, grads = run(cell, one, training=training)
    assert_all_finite(hs, finals, grads)
    assert hs.shape == (T, 1, H)
    if name in BN_SEQ_CELLS and training:
        for key in cell.stats:                   # T frames of one row are a batch of T
            assert not np.array_equal(cell.stats[key], stats[key]), key
    else:
        full = make_cell(name)
        hs3, finals3, _, _ = run(full, data, training=training)
        assert relative_error(hs, hs3[:, :1]) < TOL["float64_reorder"]
        for key, value in finals.items():
            assert relative_error(value, finals3[key][:1]) < TOL["float64_reorder"], key
    assert_gradcheck(cell, x=one["x"], **initial_states(cell, one), training=training, T=T, B=1,
                     seed=8)
