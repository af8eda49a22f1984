"""`refnorm validate keras.LSTM` on each Keras backend, TensorFlow, torch and JAX, with each
backend's own autodiff (tf.GradientTape, torch.autograd, jax.vjp with x64), with and without a
mask, and with planted bugs that must fail.

Keras fixes its backend at import, once per process, so each backend runs in one subprocess
(DRIVER): the command twice (ragged lengths, so a mask; all lengths T, so none), refnorm.validate
on the same layer, and two planted bugs, each monkeypatched into the adapter for one call:
* carry swapped: the adapter hands Keras its initial state as [c0, h0] (Keras's order is [h, c]);
* one gradient doubled: the backend's autodiff returns twice dL/d recurrent_kernel.

Tolerances, each with its reason:
* float64 agreement, TOLERANCE["float64"] = 1e-10: the same equations in another order, so only
  rounding differs (measured ~1e-15). It holds on TensorFlow, masked or not, and on torch
  without a mask.
* Keras 3.15.1 computes part of a float64 LSTM in float32 on torch with a mask and on JAX always
  (refnorm.validation.KERAS_FLOAT32, measured ~1e-7; float64 once the cast is patched out): the
  report must fail at float64, say why in a note, and stay within TOLERANCE["float32"] = 1e-4
  (eps32 ≈ 1.2e-7 amplified through T steps). The lower bound 1e-9 says the float32 rounding
  is still there: a Keras that fixes it fails this test, and the note and README must go.
* planted bugs are judged at 1e-4, the loosest tolerance the clean layer passes on every
  backend: they must fail even there (their errors are O(1)).
Weights (refnorm.randomize through to_keras), inputs, states and upstream gradients are random
and non-zero. A backend whose package is missing is skipped with its install line, and fails
in CI (CI=true), whose test extra installs them all.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refnorm.cli import main
from refnorm.validation import INSTALL, KERAS_BACKENDS, KERAS_FLOAT32, TOLERANCE, keras_backend

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = {"masked": [6, 2, 5, 3], "unmasked": [6, 6, 6, 6]}     # T = 6, B = 4 (the defaults)
PLANTED_TOL = TOLERANCE["float32"]
EVERY_TENSOR = {"hs", "hT", "cT", "dWx", "dWh", "db", "dx", "dh0", "dc0"}

# One backend's checks in a fresh process; argv[1] is JSON {"lengths": {...}, "tol": float}.
DRIVER = r"""
import contextlib, io, json, sys
args = json.loads(sys.argv[1])
from refnorm import LSTM, cli, interop, validate, validation as V
from refnorm.gradcheck import randomize

out = {"cli": {}, "api": {}}
for label, lengths in args["lengths"].items():      # the command first: it imports keras
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = cli.main(["validate", "keras.LSTM", "--lengths", *map(str, lengths)])
    out["cli"][label] = {"rc": rc, "report": text.getvalue()}

import keras
backend = keras.backend.backend()
layer = keras.layers.LSTM(4, return_sequences=True, return_state=True, dtype="float64")
layer.build((None, 6, 3))
interop.to_keras(randomize(LSTM(3, 4, seed=5), seed=6), layer)
A = V._KerasAdapter
call, autodiff = A.call, getattr(A, "_autodiff_" + backend)

def swapped_carry(layer, t, mask):                   # Keras given [c0, h0]
    return call(layer, dict(t, h0=t["c0"], c0=t["h0"]), mask)

def doubled_gradient(self, *a):                      # 2 dL/d recurrent_kernel
    outs, grads = autodiff(self, *a)
    names = [w.path.rsplit("/", 1)[-1] for w in self.layer.trainable_weights]
    grads = list(grads)
    grads[3 + names.index("recurrent_kernel")] = 2 * grads[3 + names.index("recurrent_kernel")]
    return outs, grads

def summary(report):
    return {"verdict": report.verdict(), "ok": report.ok, "errors": report.errors,
            "failing": [row[0] for row in report.rows if not row[-1]],
            "remarks": report.remarks, "header": str(report).splitlines()[0]}

for label, lengths in args["lengths"].items():
    runs = out["api"][label] = {"clean": summary(validate(layer, lengths=lengths)),
                                "clean at tol": summary(validate(layer, lengths=lengths,
                                                                 tol=args["tol"]))}
    for bug, where, fake in (("carry swapped", "call", staticmethod(swapped_carry)),
                             ("gradient doubled", "_autodiff_" + backend, doubled_gradient)):
        saved = A.__dict__[where]
        setattr(A, where, fake)
        try:
            runs[bug] = summary(validate(layer, lengths=lengths, tol=args["tol"]))
        finally:
            setattr(A, where, saved)
print(json.dumps(out))
"""


def need_backend(backend):
    """Skip (fail in CI) when keras or the backend's package is missing, with the install line."""
    for module in ("keras", KERAS_BACKENDS[backend][0]):
        if importlib.util.find_spec(module) is None:
            why = f"{module} is not installed: {INSTALL[module]}"
            if os.environ.get("CI"):
                pytest.fail(f"{why} (CI installs every Keras backend: pip install -e '.[test]')")
            pytest.skip(why)


def start(backend, home):
    """The backend's DRIVER in a fresh process: Keras on `backend`, an empty KERAS_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_", "JAX_"))}
    env.update(KERAS_BACKEND=backend, KERAS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONWARNINGS="ignore")
    arg = json.dumps({"lengths": LENGTHS, "tol": PLANTED_TOL})
    return subprocess.Popen([sys.executable, "-c", DRIVER, arg], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """result(backend): the DRIVER's output. Every installed backend's process starts here, so
    they overlap (each spends seconds importing TensorFlow, which keras imports when present)."""
    home, results = tmp_path_factory.mktemp("keras_home"), {}
    procs = {b: start(b, home) for b, (package, _) in KERAS_BACKENDS.items()
             if all(importlib.util.find_spec(m) is not None for m in ("keras", package))}

    def result(backend):
        need_backend(backend)
        if backend not in results:
            stdout, stderr = procs[backend].communicate(timeout=300)
            assert stdout.strip(), f"the {backend} driver printed nothing:\n{stderr[-3000:]}"
            results[backend] = json.loads(stdout.strip().splitlines()[-1])
        return results[backend]
    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def float32_on(backend, label):
    """Keras computes this (backend, mask) case partly in float32 (KERAS_FLOAT32)."""
    known = KERAS_FLOAT32.get(backend)
    return known is not None and (known[0] == "always" or label == "masked")


@pytest.mark.parametrize("label", LENGTHS)
@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_the_command_runs_keras_on_its_backend_with_its_autodiff(runs, backend, label):
    """The command runs on the backend Keras was imported with (today only torch is accepted:
    KERAS_BACKEND=tensorflow is refused), the header names it, its version and its autodiff,
    and every tensor is compared. Float64 passes where Keras computes in float64; where it
    does not, the report fails at the float32 level and its note says why."""
    cli, api = runs(backend)["cli"][label], runs(backend)["api"][label]["clean"]
    header = cli["report"].splitlines()[0]
    assert f"{backend} " in header and "backend, gradients by" in header, header
    assert KERAS_BACKENDS[backend][1] in header and "Keras 3." in header, header
    assert set(api["errors"]) == EVERY_TENSOR
    worst = max(api["errors"].values())
    print(f"keras on {backend}, {label}, float64: worst relative error {worst:.1e}")
    if float32_on(backend, label):
        assert cli["rc"] == 1 and not api["ok"], cli["report"]
        assert 1e-9 < worst <= TOLERANCE["float32"], api
        assert len(api["remarks"]) == 1 and KERAS_FLOAT32[backend][1] in api["remarks"][0]
        assert "note: Keras 3." in cli["report"] and "BIT64_TO_BIT32_DTYPE" in cli["report"]
    else:
        assert cli["rc"] == 0 and cli["report"].rstrip().endswith("PASS"), cli["report"]
        assert api["ok"] and worst <= TOLERANCE["float64"], api
        assert api["remarks"] == [] and "note:" not in cli["report"]


@pytest.mark.parametrize("label", LENGTHS)
@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_planted_bugs_fail_on_every_backend(runs, backend, label):
    """At 1e-4, which the clean layer passes on every backend, a carry handed over as [c, h]
    fails on the outputs and states, and a doubled recurrent-kernel gradient fails on dWh
    alone (the other tensors still agree: the bug is named, not smeared)."""
    api = runs(backend)["api"][label]
    assert api["clean at tol"]["ok"], api["clean at tol"]
    swapped, doubled = api["carry swapped"], api["gradient doubled"]
    print(f"keras on {backend}, {label}: carry swapped: {swapped['verdict']}; "
          f"gradient doubled: {doubled['verdict']}")
    assert not swapped["ok"] and swapped["verdict"].startswith("FAIL")
    assert {"hs", "hT", "cT"} <= set(swapped["failing"]), swapped
    assert not doubled["ok"] and doubled["failing"] == ["dWh"], doubled
    assert doubled["remarks"] == [] and swapped["remarks"] == []   # no excuse for a real bug


# -- choosing the backend, and what to install: in this process, keras never imported ----------
@pytest.fixture
def no_keras(monkeypatch, tmp_path):
    """As in a new process: keras not imported, KERAS_BACKEND unset, an empty KERAS_HOME."""
    for name in [n for n in sys.modules if n == "keras" or n.startswith("keras.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def test_the_backend_is_the_one_keras_will_choose(no_keras, monkeypatch):
    assert keras_backend()[0] == "tensorflow"                    # Keras's default
    (no_keras / "keras.json").write_text(json.dumps({"backend": "jax", "floatx": "float32"}))
    assert keras_backend() == ("jax", str(no_keras / "keras.json"))
    monkeypatch.setenv("KERAS_BACKEND", "torch")                 # the variable wins
    assert keras_backend() == ("torch", "KERAS_BACKEND")


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_a_missing_backend_package_says_what_to_install(backend, no_keras, monkeypatch, capsys):
    """Today KERAS_BACKEND=tensorflow is refused whatever is installed; now a missing package
    is named with its install line and the backends that are installed."""
    package = KERAS_BACKENDS[backend][0]
    monkeypatch.setenv("KERAS_BACKEND", backend)
    monkeypatch.setitem(sys.modules, package, None)              # find_spec and import fail
    assert main(["validate", "keras.LSTM"]) == 2
    err = capsys.readouterr().err
    assert f"Keras's {backend} backend" in err and INSTALL[package] in err, err
    if backend == "tensorflow":
        assert "pip install tensorflow-cpu" in err and "KERAS_BACKEND=" in err, err
    assert "keras" not in sys.modules or sys.modules["keras"] is None


def test_the_default_backend_without_tensorflow_says_what_to_do(no_keras, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    assert main(["validate", "keras.LSTM"]) == 2
    err = capsys.readouterr().err
    assert "tensorflow backend (from Keras's default" in err, err
    assert "pip install tensorflow-cpu" in err, err


def test_a_backend_without_autodiff_is_refused(no_keras, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "numpy")
    assert main(["validate", "keras.LSTM"]) == 2
    err = capsys.readouterr().err
    assert "numpy backend" in err and "no autodiff" in err and "tensorflow, torch, jax" in err
