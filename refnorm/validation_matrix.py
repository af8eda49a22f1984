"""`refnorm validate --all`: every adapter whose framework is installed, one matrix.

    refnorm validate --all            # the matrix; exit status 0 when every row that ran passed
    refnorm validate --all --json     # the same as JSON, each row with its full report

Each row of ROWS is one `refnorm validate` command line (Row.argv), run through the same code
(cli.validation_report, hence refnorm.validate) with the same fixed seed: random non-zero
weights, inputs, states and upstream gradients, and ragged lengths (validate's defaults). Keras
fixes its backend once per process, so the Keras rows of one backend (keras.LSTM,
keras.SimpleRNN, keras.GRU) run `refnorm validate ... --json` one after the other in that
backend's own process with KERAS_BACKEND set; the three processes start first and run while this process runs
the others, and their JSON reports come back (ValidationReport.from_dict). Flax rows need JAX's
x64 mode, which this process switches on as `refnorm validate flax.*` does.

The matrix never turns a mismatch into a pass: a row's verdict is its report's own verdict
line. The exit status is 0 when every row that ran passed (PASS, or PASS at float32 tolerance
for a float32 target) or failed with an adapter's note that explains the failure (Keras's
float64 computed partly in float32: validation.KERAS_FLOAT32), and 1 otherwise: a failure
without such a note, or a row that could not run. A framework that is not installed is a row
with its install line (validation.INSTALL): not a failure, except under CI=true, where every
framework of the matrix must be installed.

Rows that are callables with a preset (run by `refnorm validate MODULE:ATTR --preset P`):
* refnorm.interop.batchnorm_lstm:validate_target, batchnorm-lstm 0.0.1's own NumPy code,
  stepped on each step's valid rows (it has no masking), in training and inference (outputs
  only: its BN keeps no test-mode cache, so it has no backward there);
* onnx_reference and onnx_runtime below: the ONNX LSTM node of interop.to_onnx_model run by
  onnx's reference evaluator (float64) and by onnxruntime (float32 only). ONNX has no
  gradients: outputs only. onnx_rnn_reference and onnx_rnn_runtime: the same for the ONNX RNN
  node, tanh (the reference evaluator has no Relu; the callables build the default activation).
  onnx_gru_reference and onnx_gru_runtime: the ONNX GRU node with linear_before_reset=1
  (presets.onnx_gru, reset "after"); onnx_gru_reset_before_reference and _runtime: with
  linear_before_reset=0 (presets.onnx_gru_reset_before).

The RNN family's rows follow the LSTM's: torch.nn.RNN (tanh, relu, 2 layers x 2 directions),
torch.nn.RNNCell, keras.SimpleRNN on each backend, flax SimpleCell (linen, nnx) and the ONNX RNN
node. No peer ships a normalised vanilla RNN, so there is none to validate.

The GRU family's rows: torch.nn.GRU (one layer; 2 layers x 2 directions), torch.nn.GRUCell,
haste GRU and LayerNormGRU (refnorm.LNGRU, presets.haste_layer_norm_gru), keras.GRU with
reset_after True and False (refnorm.GRU reset "after" / "before") on each backend, in the
keras.LSTM row's process, and the ONNX GRU node with linear_before_reset 1 and 0 (reset "after" /
"before"), by the reference evaluator and by onnxruntime, and flax GRUCell (linen; nnx, whose
candidate has no recurrent bias b_hn).
"""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

import numpy as np

from .validation import INSTALL, KERAS_BACKENDS

# the folder that holds this refnorm package: a Keras row's process imports the same one
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_TIMEOUT = 300        # seconds a Keras row may take (about 10 measured, 2 cores)
NO_STATISTICS = "no statistics"
WRAP = 100                      # the notes under the table are wrapped to this width


@dataclass(frozen=True)
class Row:
    """framework: the peer as the matrix names it where the report does not (a callable's,
    with dists' versions; a missing one's). argv: the `refnorm validate` arguments. cell: the
    refnorm cell or preset it is compared with. mode: training, inference, or "no statistics"
    (a cell without population statistics, run once). needs: the modules that must import
    (INSTALL has their lines). dists: the distributions whose versions name a callable's
    framework. env: (name, value) pairs of a row run in its own process. note: a fact about the
    row printed under the table (never a reason to pass)."""

    framework: str
    argv: tuple
    cell: str
    mode: str
    needs: tuple
    dists: tuple = ()
    env: tuple = ()
    note: str = ""

    @property
    def target(self):
        """The target with the options no other column shows."""
        shown = ("--preset", "--inference", "--outputs-only")
        out, skip = [], False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg in shown:
                skip = arg == "--preset"
            else:
                out.append(arg)
        return " ".join(out)


BN_LSTM = "refnorm.interop.batchnorm_lstm:validate_target"
ONNX_NOTE = ("ONNX has no gradients; the model is interop.to_onnx_model's, of the weights "
             "validate draws")
ROWS = (
    Row("PyTorch", ("torch.nn.LSTM",), "torch_lstm", NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.LSTM", "--layers", "2", "--bidirectional"),
        "torch_lstm x 4 (2 layers, 2 directions)", NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.LSTM", "--dtype", "float32"), "torch_lstm", NO_STATISTICS,
        ("torch",)),
    Row("PyTorch", ("torch.nn.LSTMCell",), "torch_lstm", NO_STATISTICS, ("torch",),
        note="stepped by the adapter with refnorm's masked carry"),
    Row("haste", ("haste.LSTM",), "haste_lstm", NO_STATISTICS, ("torch", "haste_pytorch")),
    Row("haste", ("haste.LayerNormLSTM",), "haste_layer_norm_lstm", NO_STATISTICS,
        ("torch", "haste_pytorch")),
    *(Row(f"Keras ({backend})", ("keras.LSTM",), "keras_lstm", NO_STATISTICS,
          ("keras", package), env=(("KERAS_BACKEND", backend),),
          note=f"its own process (with keras.SimpleRNN), KERAS_BACKEND={backend}; gradients "
               f"by {autodiff}")
      for backend, (package, autodiff) in KERAS_BACKENDS.items()),
    *(Row("Flax", (f"flax.{api}.{name}",), "LSTM()", NO_STATISTICS, ("flax",))
      for api in ("linen", "nnx") for name in ("LSTMCell", "OptimizedLSTMCell")),
    Row("batchnorm-lstm", (BN_LSTM, "--preset", "batchnorm_lstm"), "batchnorm_lstm",
        "training", ("batchnormlstm",), dists=("batchnorm-lstm",),
        note="its step functions on each step's valid rows (it has no masking)"),
    Row("batchnorm-lstm", (BN_LSTM, "--preset", "batchnorm_lstm", "--inference",
                           "--outputs-only"), "batchnorm_lstm", "inference",
        ("batchnormlstm",), dists=("batchnorm-lstm",),
        note="outputs only: its batch norm keeps no test-mode cache, so it has no backward"),
    Row("ONNX", ("refnorm.validation_matrix:onnx_reference", "--preset", "onnx_lstm",
                 "--outputs-only"), "onnx_lstm", NO_STATISTICS, ("onnx",),
        dists=("onnx",), note=ONNX_NOTE + "; the reference evaluator ignores sequence_lens, "
                                          "so each length's sequences run on their own"),
    Row("onnxruntime", ("refnorm.validation_matrix:onnx_runtime", "--preset", "onnx_lstm",
                        "--outputs-only"), "onnx_lstm", NO_STATISTICS, ("onnx", "onnxruntime"),
        dists=("onnxruntime",), note=ONNX_NOTE + "; onnxruntime's LSTM runs in float32 only"),
    # -- the vanilla RNN family (refnorm.RNN; no peer ships a normalised RNN) --
    Row("PyTorch", ("torch.nn.RNN",), "torch_rnn", NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.RNN", "--nonlinearity", "relu"), "torch_rnn (relu)",
        NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.RNN", "--layers", "2", "--bidirectional"),
        "torch_rnn x 4 (2 layers, 2 directions)", NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.RNNCell",), "torch_rnn", NO_STATISTICS, ("torch",),
        note="stepped by the adapter with refnorm's masked carry"),
    *(Row(f"Keras ({backend})", ("keras.SimpleRNN",), "keras_simple_rnn", NO_STATISTICS,
          ("keras", package), env=(("KERAS_BACKEND", backend),),
          note=f"in the keras.LSTM row's process, KERAS_BACKEND={backend}; gradients by "
               f"{autodiff}")
      for backend, (package, autodiff) in KERAS_BACKENDS.items()),
    *(Row("Flax", (f"flax.{api}.SimpleCell",), "RNN()", NO_STATISTICS, ("flax",))
      for api in ("linen", "nnx")),
    Row("ONNX", ("refnorm.validation_matrix:onnx_rnn_reference", "--preset", "onnx_rnn",
                 "--outputs-only"), "onnx_rnn", NO_STATISTICS, ("onnx",),
        dists=("onnx",), note=ONNX_NOTE + "; the reference evaluator ignores sequence_lens "
                                          "(each length's sequences run on their own) and "
                                          "knows no Relu, so tanh only"),
    Row("onnxruntime", ("refnorm.validation_matrix:onnx_rnn_runtime", "--preset", "onnx_rnn",
                        "--outputs-only"), "onnx_rnn", NO_STATISTICS, ("onnx", "onnxruntime"),
        dists=("onnxruntime",), note=ONNX_NOTE + "; onnxruntime's RNN runs in float32 only"),
    # -- the GRU family (refnorm.GRU, reset after; LNGRU = haste's LayerNormGRU) --
    Row("PyTorch", ("torch.nn.GRU",), "torch_gru", NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.GRU", "--layers", "2", "--bidirectional"),
        "torch_gru x 4 (2 layers, 2 directions)", NO_STATISTICS, ("torch",)),
    Row("PyTorch", ("torch.nn.GRUCell",), "torch_gru", NO_STATISTICS, ("torch",),
        note="stepped by the adapter with refnorm's masked carry"),
    Row("haste", ("haste.GRU",), "haste_gru", NO_STATISTICS, ("torch", "haste_pytorch")),
    Row("haste", ("haste.LayerNormGRU",), "haste_layer_norm_gru", NO_STATISTICS,
        ("torch", "haste_pytorch")),
    *(Row(f"Keras ({backend})", ("keras.GRU", *flag), f"torch_gru ({form})", NO_STATISTICS,
          ("keras", package), env=(("KERAS_BACKEND", backend),),
          note=f"in the keras.LSTM row's process, KERAS_BACKEND={backend}; gradients by "
               f"{autodiff}")
      for backend, (package, autodiff) in KERAS_BACKENDS.items()
      for flag, form in (((), "reset_after=True: reset after"),
                         (("--reset-after", "false"), "reset_after=False: reset before"))),
    *(Row("Flax", (f"flax.{api}.GRUCell",), cell, NO_STATISTICS, ("flax",), note=note)
      for api, cell, note in (("linen", "GRU()", ""),
                              ("nnx", "GRU() with b_hn = 0",
                               "flax.nnx.GRUCell has no b_hn (no recurrent bias): db_hn is not "
                               "compared"))),
    *(row for preset, attribute in (("onnx_gru", "linear_before_reset=1"),
                                    ("onnx_gru_reset_before", "linear_before_reset=0"))
      for row in (
          Row("ONNX", (f"refnorm.validation_matrix:{preset}_reference", "--preset", preset,
                       "--outputs-only"), preset, NO_STATISTICS, ("onnx",), dists=("onnx",),
              note=f"{ONNX_NOTE}; the GRU node has {attribute}; the reference evaluator "
                   "ignores sequence_lens (each length's sequences run on their own)"),
          Row("onnxruntime", (f"refnorm.validation_matrix:{preset}_runtime", "--preset",
                              preset, "--outputs-only"), preset, NO_STATISTICS,
              ("onnx", "onnxruntime"), dists=("onnxruntime",),
              note=f"{ONNX_NOTE}; the GRU node has {attribute}; onnxruntime's GRU runs in "
                   "float32 only"))),
    # -- stacks (refnorm.Stack): Keras Bidirectional, and BatchNormalization between layers --
    *(Row(f"Keras ({backend})", (f"refnorm.interop.keras_stack:{factory}",), cell, mode,
          ("keras", package), env=(("KERAS_BACKEND", backend),),
          note=f"in the keras.LSTM row's process, KERAS_BACKEND={backend}; gradients by "
               f"{autodiff}; {what}")
      for backend, (package, autodiff) in KERAS_BACKENDS.items()
      for factory, cell, mode, what in (
          ("bidirectional_lstm", "Stack(lstm, bidirectional)", NO_STATISTICS,
           "Bidirectional(LSTM), merge_mode concat"),
          ("batch_norm_lstm_stack", "Stack(lstm x 2, between seq_bn)", "training",
           "Sequential [LSTM, BatchNormalization, LSTM]: the norm's batch statistics over the "
           "valid frames, its moving statistics compared"),
          ("bidirectional_gru_batch_norm_stack",
           "Stack(gru x 2 x 2 directions, between seq_bn)", "training",
           "Sequential [Bidirectional(GRU), BatchNormalization, Bidirectional(GRU)]"))),
)


# -- ONNX targets (callables for `refnorm validate MODULE:ATTR --preset onnx_lstm | onnx_rnn |
# onnx_gru | onnx_gru_reset_before`) --
def _onnx_cell(params, dtype):
    """The cell of the ONNX preset whose params these are: onnx_rnn (tanh; Wh (H, H)), onnx_gru
    (Wh (H, 3H) and b_hn), onnx_gru_reset_before (Wh (H, 3H), no b_hn) or onnx_lstm (4H)."""
    from . import presets
    from .interop._common import build_cell
    D, H = params["Wx"].shape[0], params["Wh"].shape[0]
    width = params["Wh"].shape[1]
    if width == H:
        preset = presets.onnx_rnn
    elif width == 3 * H:
        preset = presets.onnx_gru if "b_hn" in params else presets.onnx_gru_reset_before
    else:
        preset = presets.onnx_lstm
    return build_cell(preset, D, H, params, dtype=dtype, backend="numpy")


def _gru_form(inputs, reset, who):
    """inputs, after checking that their params are the GRU of that reset (b_hn: "after")."""
    params = inputs["params"]
    form = "after" if "b_hn" in params else "before"
    H = params["Wh"].shape[0]
    if params["Wh"].shape != (H, 3 * H) or form != reset:
        preset = "onnx_gru" if reset == "after" else "onnx_gru_reset_before"
        raise ValueError(f"{who} runs refnorm.GRU reset={reset!r}: give it --preset {preset}")
    return inputs


def _onnx_reference(inputs):
    """The node of interop.to_onnx_model(cell) (LSTM, RNN or GRU, by the params' shapes) run by
    onnx.reference.ReferenceEvaluator in float64. It ignores sequence_lens (onnx 1.23,
    onnx/reference/ops/op_lstm.py, op_rnn.py, op_gru.py), so the sequences of each length run
    on their valid steps alone: its Y_h (Y_c) are then their last valid states."""
    from onnx.reference import ReferenceEvaluator

    from .interop import to_onnx_model
    cell = _onnx_cell(inputs["params"], "float64")
    evaluator = ReferenceEvaluator(to_onnx_model(cell, None, None, with_sequence_lens=False))
    states = cell.STATES                                            # ("h", "c") or ("h",)
    x, lengths = inputs["x"], np.asarray(inputs["lengths"])
    T, B, _ = x.shape
    out = {"hs": np.zeros((T, B, cell.hidden_size)),
           **{s + "T": inputs[s + "0"].copy() for s in states}}
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        feeds = {"X": x[:n, rows], **{f"initial_{s}": inputs[s + "0"][None, rows]
                                      for s in states}}
        Y, *finals = evaluator.run(None, feeds)
        out["hs"][:n, rows] = Y[:, 0]
        for s, final in zip(states, finals):
            out[s + "T"][rows] = final[0]
    return out


def _onnx_runtime(inputs):
    """The node of interop.to_onnx_model(cell) (LSTM, RNN or GRU) in float32 (onnxruntime has no
    double kernel for any of them) run by onnxruntime with sequence_lens. Float32 arrays."""
    import onnxruntime

    from .interop import to_onnx_model
    cell = _onnx_cell(inputs["params"], "float32")
    session = onnxruntime.InferenceSession(
        to_onnx_model(cell, None, None).SerializeToString(),
        providers=["CPUExecutionProvider"])
    f32 = lambda a: np.asarray(a, dtype=np.float32)                        # noqa: E731
    feeds = {"X": f32(inputs["x"]), "sequence_lens": np.asarray(inputs["lengths"], np.int32),
             **{f"initial_{s}": f32(inputs[s + "0"])[None] for s in cell.STATES}}
    Y, *finals = session.run(None, feeds)
    return {"hs": Y[:, 0], **{s + "T": f[0] for s, f in zip(cell.STATES, finals)}}


def onnx_reference(inputs):
    """The LSTM node of interop.to_onnx_model(cell) run by onnx.reference.ReferenceEvaluator in
    float64. It ignores sequence_lens (onnx 1.23, onnx/reference/ops/op_lstm.py), so the
    sequences of each length run on their valid steps alone: its Y_h, Y_c are then their last
    valid states. Outputs only (ONNX has no gradients)."""
    return _onnx_reference(inputs)


def onnx_runtime(inputs):
    """The LSTM node of interop.to_onnx_model(cell) (float32: onnxruntime's LSTM has no double
    kernel) run by onnxruntime with sequence_lens. Outputs only, float32 arrays."""
    return _onnx_runtime(inputs)


def onnx_rnn_reference(inputs):
    """The RNN node (activations [Tanh]) of interop.to_onnx_model(cell) run by onnx's reference
    evaluator in float64, each length's sequences on their own (it ignores sequence_lens and
    knows no Relu: onnx 1.23 onnx/reference/ops/op_rnn.py). Outputs only."""
    return _onnx_reference(inputs)


def onnx_rnn_runtime(inputs):
    """The RNN node (activations [Tanh]) of interop.to_onnx_model(cell) run by onnxruntime with
    sequence_lens, float32 (its RNN has no double kernel). Outputs only, float32 arrays."""
    return _onnx_runtime(inputs)


def onnx_gru_reference(inputs):
    """The GRU node (linear_before_reset=1: reset "after", presets.onnx_gru) of
    interop.to_onnx_model(cell) run by onnx's reference evaluator in float64, each length's
    sequences on their own (it ignores sequence_lens: onnx 1.23 onnx/reference/ops/op_gru.py).
    Outputs only."""
    return _onnx_reference(_gru_form(inputs, "after", "onnx_gru_reference"))


def onnx_gru_runtime(inputs):
    """The GRU node (linear_before_reset=1) of interop.to_onnx_model(cell) run by onnxruntime
    with sequence_lens, float32 (its GRU has no double kernel). Outputs only, float32 arrays."""
    return _onnx_runtime(_gru_form(inputs, "after", "onnx_gru_runtime"))


def onnx_gru_reset_before_reference(inputs):
    """onnx_gru_reference for linear_before_reset=0 (reset "before",
    presets.onnx_gru_reset_before)."""
    return _onnx_reference(_gru_form(inputs, "before", "onnx_gru_reset_before_reference"))


def onnx_gru_reset_before_runtime(inputs):
    """onnx_gru_runtime for linear_before_reset=0 (reset "before",
    presets.onnx_gru_reset_before)."""
    return _onnx_runtime(_gru_form(inputs, "before", "onnx_gru_reset_before_runtime"))


# -- running the rows ---------------------------------------------------------------------------
def in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(row):
    """The first module the row needs that is not installed, or None."""
    for module in row.needs:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def _framework(row, report):
    if report and report.get("framework"):
        return report["framework"]
    versions = []
    for dist in row.dists:
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(dist)
    return ", ".join(versions) or row.framework


MARK = "refnorm-matrix-reports: "      # the line of a Keras process that holds its reports


def _start(rows, seed):
    """One process for Keras rows that share an environment (a backend): `refnorm validate ARGV
    --json` for each row in turn, the same refnorm imported (ROOT first on its path); it prints
    MARK and the JSON list of their outputs. stdout and stderr to temporary files."""
    argvs = [list(row.argv) for row in rows]
    code = "\n".join([
        "import contextlib, io, json, sys",
        f"sys.path.insert(0, {ROOT!r})",
        "from refnorm.cli import main",
        "texts = []",
        f"for argv in {argvs!r}:",
        "    out = io.StringIO()",
        "    try:",
        "        with contextlib.redirect_stdout(out):",
        f"            main(['validate', *argv, '--json', '--seed', '{seed}'])",
        "        texts.append(out.getvalue())",
        "    except Exception as err:             # one row's crash must not hide the others",
        "        texts.append(json.dumps({'error': f'{type(err).__name__}: {err}'}))",
        f"print({MARK!r} + json.dumps(texts))"])
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err,
                            env={**os.environ, **dict(rows[0].env)})
    return proc, out, err, len(rows)


def _report(text):
    """(report dict, None) from one `refnorm validate --json` output, or (None, its error)."""
    start = text.find("{")
    try:
        data = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else None
    except ValueError:
        data = None
    if not data:
        return None, "no report"
    if "error" in data:
        return None, data["error"]
    return data, None


def _finish(started, timeout):
    """[(report dict, None) or (None, what went wrong)] for each row of a process."""
    proc, out, err, n = started
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return [(None, f"no report within {timeout} s")] * n
    out.seek(0)
    err.seek(0)
    text, errors = out.read(), err.read()
    out.close()
    err.close()
    line = next((line for line in text.splitlines() if line.startswith(MARK)), None)
    if line is None:
        last = [line for line in errors.splitlines() if line.strip()][-1:] or ["no output"]
        return [(None, f"exit status {proc.returncode}: {last[0]}")] * n
    return [_report(t) for t in json.loads(line[len(MARK):])]


def _run_here(row, seed):
    """(report dict, None) of a row run in this process, or (None, the error)."""
    from .cli import validate_args, validation_report
    try:
        return validation_report(validate_args([*row.argv, "--seed", str(seed)])).to_dict(), None
    except Exception as err:                # one broken adapter must not hide the others
        return None, f"{type(err).__name__}: {err}"


def run(rows=ROWS, seed=0, timeout=SUBPROCESS_TIMEOUT):
    """Run every row whose framework is installed; returns the matrix as JSON values: rows
    (each with its report or its install line or error), the rows whose failure an adapter
    note explains, the failing and missing ones, and the exit status."""
    begin = time.perf_counter()
    absent = {k: missing(row) for k, row in enumerate(rows)}
    groups = {}                         # the rows of one environment share one process
    for k, row in enumerate(rows):
        if row.env and absent[k] is None:
            groups.setdefault(row.env, []).append(k)
    started = {env: _start([rows[k] for k in ks], seed) for env, ks in groups.items()}
    results = {}
    for k, row in enumerate(rows):
        if absent[k] is None and not row.env:
            results[k] = _run_here(row, seed)
    for env, proc in started.items():
        results.update(zip(groups[env], _finish(proc, timeout)))
    out = []
    for k, row in enumerate(rows):
        report, error = results.get(k, (None, None))
        entry = {"framework": _framework(row, report), "target": row.target,
                 "argv": list(row.argv), "env": dict(row.env), "cell": row.cell,
                 "mode": row.mode, "note": row.note, "report": report, "error": error,
                 "missing": absent[k],
                 "install": INSTALL.get(absent[k], f"pip install {absent[k]}")
                 if absent[k] else None}
        entry["status"] = ("not installed" if absent[k] else "error" if error
                           else "pass" if report["ok"]
                           else "explained" if report["notes"] else "fail")
        out.append(entry)
    explained = [e for e in out if e["status"] == "explained"]
    failed = [e for e in out if e["status"] in ("fail", "error")]
    absent_rows = [e for e in out if e["status"] == "not installed"]
    ci = in_ci()
    status = 1 if failed or (ci and absent_rows) else 0
    return {"seed": seed, "ci": ci, "rows": out, "exit_status": status,
            "seconds": round(time.perf_counter() - begin, 1),
            "explained": [_label(e) for e in explained], "failed": [_label(e) for e in failed],
            "missing": sorted({f"{e['missing']} ({e['install']})" for e in absent_rows})}


def _label(entry):
    mode = "" if entry["mode"] == NO_STATISTICS else f" ({entry['mode']})"
    return f"{entry['framework']} {entry['target']}{mode}"


# -- the matrix as text -------------------------------------------------------------------------
COLUMNS = ("framework", "target", "cell / preset", "mode", "tensors", "worst rel.", "verdict")


def _tensors(report):
    n, skipped = len(report["tensors"]), report["skipped"]
    if not skipped:
        return f"{n}/{n}"
    if set(skipped.values()) == {"outputs_only=True"}:
        return f"{n}/{n + len(skipped)} outputs only"
    return f"{n}/{n + len(skipped)} ({len(skipped)} skipped)"


def format_matrix(result):
    """The text `refnorm validate --all` prints, from run()'s result (or its JSON)."""
    notes, cells = [], []
    for entry in result["rows"]:
        report = entry["report"]
        if report is None:
            verdict = (f"NOT INSTALLED: {entry['install']}" if entry["missing"]
                       else f"ERROR: {entry['error']}")
            cells.append((entry["framework"], entry["target"], entry["cell"], entry["mode"],
                          "-", "-", verdict))
            continue
        verdict = report["verdict"]
        for remark in report["notes"]:
            if remark not in notes:
                notes.append(remark)
            verdict += f" [note {notes.index(remark) + 1}]"
        worst = report["worst_relative_error"]
        cells.append((entry["framework"], entry["target"], entry["cell"], entry["mode"],
                      _tensors(report), "not returned" if worst is None else f"{worst:.1e}",
                      verdict))
    widths = [max(len(c[k]) for c in cells + [COLUMNS]) for k in range(len(COLUMNS) - 1)]
    line = lambda c: "  ".join(v.ljust(w) for v, w in zip(c, widths)) + "  " + c[-1]  # noqa
    lengths = {tuple(e["report"]["lengths"]) for e in result["rows"] if e["report"]}
    lines = [f"refnorm validate --all: each framework's recurrent layer vs refnorm's float64 "
             f"truth, seed {result['seed']}, random non-zero weights, inputs, states and upstream "
             f"gradients, lengths "
             + (str(list(lengths.pop())) if len(lengths) == 1 else "ragged (see --json)"),
             line(COLUMNS).rstrip(), "-" * len(line(COLUMNS).rstrip())]
    lines += [line(c) for c in cells]
    lines += [_wrap(f"note {k}: {remark}") for k, remark in enumerate(notes, 1)]
    row_notes = [e for e in result["rows"] if e["note"]]
    if row_notes:
        lines.append("rows:")
        lines += [_wrap(f"  {_label(e)}: {e['note']}") for e in row_notes]
    lines += [_wrap(line) for line in _summary(result)]
    return "\n".join(lines)


def _wrap(text):
    return textwrap.fill(text, WRAP, subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


def _summary(result):
    rows = result["rows"]
    count = lambda *s: sum(e["status"] in s for e in rows)                # noqa: E731
    ran = len(rows) - count("not installed")
    lines = [f"{ran} of {len(rows)} rows ran in {result['seconds']:.1f} s: {count('pass')} "
             f"PASS, {count('explained')} FAIL explained by an adapter note, {count('fail')} "
             f"FAIL, {count('error')} ERROR, {count('not installed')} not installed"]
    if result["explained"]:
        lines.append("explained by an adapter note (known peer findings, not a pass): "
                     + "; ".join(result["explained"]))
    if result["failed"]:
        lines.append("failed: " + "; ".join(result["failed"]))
    if result["missing"]:
        where = ("under CI every framework of the matrix must be installed" if result["ci"]
                 else "not a failure here (under CI=true it is)")
        lines.append(f"not installed ({where}): " + "; ".join(result["missing"]))
    lines.append(f"exit status {result['exit_status']}")
    return lines


def main(seed=0, as_json=False, rows=ROWS, out=None):
    """`refnorm validate --all [--json]`: print the matrix (or its JSON); the exit status."""
    out = out or sys.stdout
    result = run(rows, seed=seed)
    print(json.dumps(result, indent=1) if as_json else format_matrix(result), file=out)
    return result["exit_status"]
