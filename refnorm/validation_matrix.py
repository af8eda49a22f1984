"""`refnorm validate --all`: every adapter whose framework is installed, one matrix.

    refnorm validate --all            # the matrix; exit status 0 when every row that ran passed
    refnorm validate --all --json     # the same as JSON, each row with its full report

Each row of ROWS is one `refnorm validate` command line (Row.argv), run through the same code
(cli.validation_report, hence refnorm.validate) with the same fixed seed: random non-zero
weights, inputs, states and upstream gradients, and ragged lengths (validate's defaults). Keras
fixes its backend once per process, so each Keras row runs `refnorm validate keras.LSTM --json`
in its own process with KERAS_BACKEND set; the three start first and run while this process
runs the others, and their JSON reports come back (ValidationReport.from_dict). Flax rows need
JAX's x64 mode, which this process switches on as `refnorm validate flax.*` does.

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
  gradients: outputs only.
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
          note=f"its own process, KERAS_BACKEND={backend}; gradients by {autodiff}")
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
)


# -- ONNX targets (callables for `refnorm validate MODULE:ATTR --preset onnx_lstm`) ------------
def _onnx_cell(params, dtype):
    from . import presets
    from .interop._common import build_cell
    D, H = params["Wx"].shape[0], params["Wh"].shape[0]
    return build_cell(presets.onnx_lstm, D, H, params, dtype=dtype, backend="numpy")


def onnx_reference(inputs):
    """The LSTM node of interop.to_onnx_model(cell) run by onnx.reference.ReferenceEvaluator in
    float64. It ignores sequence_lens (onnx 1.23, onnx/reference/ops/op_lstm.py), so the
    sequences of each length run on their valid steps alone: its Y_h, Y_c are then their last
    valid states. Outputs only (ONNX has no gradients)."""
    from onnx.reference import ReferenceEvaluator

    from .interop import to_onnx_model
    cell = _onnx_cell(inputs["params"], "float64")
    evaluator = ReferenceEvaluator(to_onnx_model(cell, None, None, with_sequence_lens=False))
    x, lengths = inputs["x"], np.asarray(inputs["lengths"])
    T, B, _ = x.shape
    hs, hT, cT = np.zeros((T, B, cell.hidden_size)), inputs["h0"].copy(), inputs["c0"].copy()
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        Y, Y_h, Y_c = evaluator.run(None, {"X": x[:n, rows], "initial_h": inputs["h0"][None, rows],
                                           "initial_c": inputs["c0"][None, rows]})
        hs[:n, rows], hT[rows], cT[rows] = Y[:, 0], Y_h[0], Y_c[0]
    return {"hs": hs, "hT": hT, "cT": cT}


def onnx_runtime(inputs):
    """The LSTM node of interop.to_onnx_model(cell) (float32: onnxruntime's LSTM has no double
    kernel) run by onnxruntime with sequence_lens. Outputs only, float32 arrays."""
    import onnxruntime

    from .interop import to_onnx_model
    cell = _onnx_cell(inputs["params"], "float32")
    session = onnxruntime.InferenceSession(
        to_onnx_model(cell, None, None).SerializeToString(),
        providers=["CPUExecutionProvider"])
    f32 = lambda a: np.asarray(a, dtype=np.float32)                        # noqa: E731
    Y, Y_h, Y_c = session.run(None, {"X": f32(inputs["x"]),
                                     "sequence_lens": np.asarray(inputs["lengths"], np.int32),
                                     "initial_h": f32(inputs["h0"])[None],
                                     "initial_c": f32(inputs["c0"])[None]})
    return {"hs": Y[:, 0], "hT": Y_h[0], "cT": Y_c[0]}


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


def _start(row, seed):
    """A Keras row's process: `refnorm validate ARGV --json` with the row's environment, the
    same refnorm imported (ROOT first on its path); stdout and stderr to temporary files."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from refnorm.cli import main; "
            f"sys.exit(main(['validate', *{list(row.argv)!r}, '--json', '--seed', "
            f"'{seed}']))")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err,
                            env={**os.environ, **dict(row.env)})
    return proc, out, err


def _finish(started, timeout):
    """(report dict, None) from a row's process, or (None, what went wrong)."""
    proc, out, err = started
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, f"no report within {timeout} s"
    out.seek(0)
    err.seek(0)
    text, errors = out.read(), err.read()
    out.close()
    err.close()
    start = text.find("{")
    try:
        data = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else None
    except ValueError:
        data = None
    if not data:
        last = [line for line in errors.splitlines() if line.strip()][-1:] or ["no output"]
        return None, f"exit status {proc.returncode}: {last[0]}"
    if "error" in data:
        return None, data["error"]
    return data, None


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
    started = {k: _start(row, seed) for k, row in enumerate(rows)
               if row.env and absent[k] is None}
    results = {}
    for k, row in enumerate(rows):
        if absent[k] is None and k not in started:
            results[k] = _run_here(row, seed)
    for k, proc in started.items():
        results[k] = _finish(proc, timeout)
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
    lines = [f"refnorm validate --all: each framework's LSTM vs refnorm's float64 truth, "
             f"seed {result['seed']}, random non-zero weights, inputs, states and upstream "
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
