"""Keras's GRU <-> refnorm.GRU (interop.keras_gru): reset_after=True (refnorm reset "after",
bias (2, 3H)) and reset_after=False (reset "before", bias (3H)), gate blocks z, r, h.

* the converters on weight lists, in this process (no Keras import: Keras fixes its backend at
  import): exact round trips, the (2, 3H) bias folded, shapes and forms refused;
* on each Keras backend in its own process: the round trip through a layer, validate masked and
  unmasked, and a planted bug (r and z read swapped) that fails at 1e-4, which the clean layer
  passes. Float64 passes on TensorFlow (and unmasked on torch) at 1e-10; torch with a mask and JAX compute a
  float64 GRU in float32 (validation.KERAS_FLOAT32_GRU, _BEFORE) and fail with the note
  that says why.
A peer that is not installed is skipped with its install line, and fails in CI (CI=true).
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import refnorm
from refnorm import interop
from refnorm.gradcheck import randomize
from refnorm.interop import keras_gru
from refnorm.validation import INSTALL, KERAS_BACKENDS, KERAS_FLOAT32_BY
from helpers import TOL
from test_interop_rnn import keras_driver_runs

ROOT = Path(__file__).resolve().parents[1]
D, H = 3, 4
LENGTHS = {"ragged": [6, 3, 5, 1], "full": [6, 6, 6, 6]}
RESETS = ("after", "before")


def gru(reset, seed=1):
    return randomize(refnorm.GRU(D, H, reset=reset, seed=seed), seed=seed + 1)


# -- the converters on weight lists ------------------------------------------------------------
@pytest.mark.parametrize("reset", RESETS)
def test_keras_gru_lists_round_trip_exactly(reset):
    cell = gru(reset)
    weights = interop.to_keras(cell)
    assert [w.shape for w in weights] == [(D, 3 * H), (H, 3 * H),
                                          (2, 3 * H) if reset == "after" else (3 * H,)]
    back = interop.from_keras(weights)
    assert type(back) is refnorm.GRU and back.reset == reset
    assert set(back.params) == set(cell.params)
    for name, value in cell.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    # Keras's blocks are z, r, h: its first kernel block is refnorm's z (the second)
    np.testing.assert_array_equal(weights[0][:, :H], cell.params["Wx"][:, H:2 * H])
    np.testing.assert_array_equal(weights[1][:, H:2 * H], cell.params["Wh"][:, :H])
    if reset == "after":                           # bias[1] = [0 | 0 | b_hn]
        np.testing.assert_array_equal(weights[2][1, :2 * H], 0)
        np.testing.assert_array_equal(weights[2][1, 2 * H:], cell.params["b_hn"])


def test_keras_gru_two_biases_fold_into_b():
    rng = np.random.default_rng(0)
    kernel, rec, bias = rng.normal(size=(D, 3 * H)), rng.normal(size=(H, 3 * H)), \
        rng.normal(size=(2, 3 * H))
    cell = interop.from_keras([kernel, rec, bias])
    z, r, h = np.split(bias[0] + np.concatenate([bias[1][:2 * H], np.zeros(H)]), 3)
    np.testing.assert_array_equal(cell.params["b"], np.concatenate([r, z, h]))
    np.testing.assert_array_equal(cell.params["b_hn"], bias[1][2 * H:])


def test_keras_gru_forms_and_shapes_refused():
    rng = np.random.default_rng(0)
    kernel, rec = rng.normal(size=(D, 3 * H)), rng.normal(size=(H, 3 * H))
    assert interop.from_keras([kernel, rec]).reset == "after"
    assert interop.from_keras([kernel, rec], reset_after=False).reset == "before"
    with pytest.raises(ValueError, match="reset_after"):
        interop.from_keras([kernel, rec, np.zeros(3 * H)], reset_after=True)
    with pytest.raises(ValueError, match="kernel"):
        interop.from_keras([rng.normal(size=(D, 3 * H + 3)), rec])
    with pytest.raises(ValueError, match="reset_after is a GRU's option"):
        interop.from_keras(interop.to_keras(refnorm.LSTM(D, H, seed=0)), reset_after=True)
    with pytest.raises(ValueError, match="LNGRU"):
        interop.to_keras(refnorm.LNGRU(D, H, seed=0))


# -- on each Keras backend, in its own process --------------------------------------------------
DRIVER = r"""
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
import keras
if keras.backend.backend() == "jax":
    import jax
    jax.config.update("jax_enable_x64", True)
from refnorm import GRU, interop, validate
from refnorm.gradcheck import randomize
from refnorm.interop import keras_gru

def run(layer, **kw):
    try:
        r = validate(layer, **kw)
    except ValueError as err:
        return {"error": str(err)}
    return {"verdict": r.verdict(), "ok": r.ok, "errors": r.errors, "remarks": r.remarks,
            "failing": [row[0] for row in r.rows if not row[-1]]}

out = {}
for reset in ("after", "before"):
    layer = keras.layers.GRU(4, reset_after=reset == "after", return_sequences=True,
                             return_state=True, dtype="float64")
    layer.build((None, 6, 3))
    cell = randomize(GRU(3, 4, reset=reset, seed=5), seed=6)
    interop.to_keras(cell, layer)
    back = interop.from_keras(layer)
    res = out[reset] = {"round trip": back.reset == reset and all(
        np.array_equal(back.params[k], v) for k, v in cell.params.items())}
    for label, lengths in args["lengths"].items():
        res[label] = run(layer, lengths=lengths)
    res["clean at tol"] = run(layer, lengths=args["lengths"]["ragged"], tol=args["tol"])
    keras_gru.KERAS_ORDER = "rzn"                  # planted: r and z read swapped
    try:
        res["r/z swapped"] = run(layer, lengths=args["lengths"]["ragged"], tol=args["tol"])
    finally:
        keras_gru.KERAS_ORDER = "zrn"
print(json.dumps(out))
"""


def need_spec(module):
    """Skip (fail in CI) when `module` is not installed, without importing it."""
    if importlib.util.find_spec(module) is None:
        why = f"{module} is not installed: {INSTALL[module]}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def keras_runs(tmp_path_factory):
    """result(backend): the GRU DRIVER's output, one process per installed backend."""
    yield from keras_driver_runs(tmp_path_factory, DRIVER, LENGTHS)


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_keras_gru_on_each_backend(keras_runs, backend, reset):
    res = keras_runs(backend)[reset]
    assert res["round trip"]
    tensors = {"hs", "hT", "dWx", "dWh", "db", "dx", "dh0"} | (
        {"db_hn"} if reset == "after" else set())
    for label in LENGTHS:
        run = res[label]
        assert set(run["errors"]) == tensors, run
        worst = max(run["errors"].values())
        print(f"keras.GRU {backend} reset {reset} {label}: {worst:.1e} {run['verdict']}")
        known = KERAS_FLOAT32_BY["GRU" + (" reset before" if reset == "before" else "")
                                 ].get(backend)
        if known and (known[0] == "always" or label == "ragged"):
            assert not run["ok"] and 1e-9 < worst <= TOL["float32"], run
            assert len(run["remarks"]) == 1 and known[1] in \
                run["remarks"][0]
        else:
            assert run["ok"] and worst <= TOL["autodiff"] and run["remarks"] == [], run


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_keras_gru_planted_bug_fails_on_each_backend(keras_runs, backend):
    """r and z read swapped in the converter: the outputs fail at 1e-4, which the clean layer
    passes, with no note to excuse them."""
    for reset in RESETS:
        res = keras_runs(backend)[reset]
        assert res["clean at tol"]["ok"], res["clean at tol"]
        run = res["r/z swapped"]
        assert not run["ok"] and {"hs", "hT"} <= set(run["failing"]), run
        assert run["remarks"] == []
