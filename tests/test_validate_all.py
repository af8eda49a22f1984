"""`refnorm validate --all` (refnorm.validation_matrix) and `refnorm validate --json`.

The whole command runs once (module fixture), in its own process: it switches JAX's x64 mode
on for the Flax rows, which must not leak into this one, and its Keras rows start their own
processes. tests/conftest.py prints its matrix at the end of the pytest run, so CI's log shows
what refnorm has validated. Checked on that run: every row of ROWS is in the matrix; every row
whose framework is installed ran (and under CI=true every framework is installed); a row's
verdict is its report's own (a mismatch explained by an adapter note stays FAIL); the exit
status; the JSON describes the text the command prints. Its runtime is not asserted (tests read
no clock); the command's matrix states its own wall time.

The exit status rule on planted rows, in this process: a callable that computes the torch_lstm
preset with its forget bias added twice fails the matrix (exit 1) next to a correct one; a
failure with an adapter note is explained (exit 0), one without is not; a framework that is not
installed is a row with its install line, exit 0 locally and 1 under CI=true.
"""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refnorm import presets, validation_matrix as vm
from refnorm.cli import main
from refnorm.validation import INSTALL, ValidationReport
from test_interop import need

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = []            # the matrix text, for tests/conftest.py's terminal summary


def flat(text):
    """text with its wrapped lines (the notes and summary under the table) joined."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def matrix():
    """(exit status, the --json result, the matrix text) of one whole run."""
    proc = subprocess.run([sys.executable, "-m", "refnorm", "validate", "--all", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    text = vm.format_matrix(result)
    SUMMARY.append(text)
    return proc.returncode, result, text


def test_the_matrix_has_every_row(matrix):
    _, result, text = matrix
    rows = result["rows"]
    assert [(r["target"], r["mode"]) for r in rows] == [(row.target, row.mode)
                                                         for row in vm.ROWS]
    lines = text.splitlines()
    for entry in rows:
        assert any(entry["framework"] in line and entry["target"] in line
                   and entry["mode"] in line for line in lines), entry["target"]
    targets = {r["target"] for r in rows}
    assert {"torch.nn.LSTM", "torch.nn.LSTM --layers 2 --bidirectional",
            "torch.nn.LSTM --dtype float32", "torch.nn.LSTMCell", "haste.LSTM",
            "haste.LayerNormLSTM", "keras.LSTM", "flax.linen.LSTMCell",
            "flax.linen.OptimizedLSTMCell", "flax.nnx.LSTMCell", "flax.nnx.OptimizedLSTMCell",
            vm.BN_LSTM, "refnorm.validation_matrix:onnx_reference",
            "refnorm.validation_matrix:onnx_runtime",
            # the vanilla RNN family
            "torch.nn.RNN", "torch.nn.RNN --nonlinearity relu",
            "torch.nn.RNN --layers 2 --bidirectional", "torch.nn.RNNCell", "keras.SimpleRNN",
            "flax.linen.SimpleCell", "flax.nnx.SimpleCell",
            "refnorm.validation_matrix:onnx_rnn_reference",
            "refnorm.validation_matrix:onnx_rnn_runtime",
            # the GRU family
            "torch.nn.GRU", "torch.nn.GRU --layers 2 --bidirectional", "torch.nn.GRUCell",
            "haste.GRU", "haste.LayerNormGRU", "keras.GRU", "keras.GRU --reset-after false",
            "flax.linen.GRUCell", "flax.nnx.GRUCell",
            "refnorm.validation_matrix:onnx_gru_reference",
            "refnorm.validation_matrix:onnx_gru_runtime",
            "refnorm.validation_matrix:onnx_gru_reset_before_reference",
            "refnorm.validation_matrix:onnx_gru_reset_before_runtime",
            # stacks
            "refnorm.interop.keras_stack:bidirectional_lstm",
            "refnorm.interop.keras_stack:batch_norm_lstm_stack",
            "refnorm.interop.keras_stack:bidirectional_gru_batch_norm_stack",
            } == targets
    # keras.LSTM, keras.SimpleRNN and keras.GRU (reset_after True, False) on each backend, in
    # one process per backend
    assert sorted((dict(r["env"]).get("KERAS_BACKEND"), r["target"]) for r in rows
                  if r["env"]) == [(b, t) for b in ("jax", "tensorflow", "torch")
                                   for t in ("keras.GRU", "keras.GRU --reset-after false",
                                             "keras.LSTM", "keras.SimpleRNN",
                                             "refnorm.interop.keras_stack:batch_norm_lstm_stack",
                                             "refnorm.interop.keras_stack:bidirectional_gru_"
                                             "batch_norm_stack",
                                             "refnorm.interop.keras_stack:bidirectional_lstm")]
    assert [r["mode"] for r in rows if r["target"] == vm.BN_LSTM] == ["training", "inference"]


def test_every_installed_framework_ran(matrix):
    _, result, _ = matrix
    for row, entry in zip(vm.ROWS, result["rows"]):
        if vm.missing(row) is None:
            assert entry["report"] is not None, (entry["target"], entry["error"])
            assert entry["status"] in ("pass", "explained"), entry["report"]["verdict"]
        else:
            assert entry["status"] == "not installed" and entry["install"]
            assert not vm.in_ci(), f"{entry['missing']} is missing in CI: {entry['install']}"


def test_each_row_shows_its_reports_verdict(matrix):
    """PASS only where the report passed; float32 rows say so; outputs-only rows say so; a
    failure an adapter note explains stays FAIL with the note under the table."""
    _, result, text = matrix
    for entry in result["rows"]:
        report = entry["report"]
        if report is None:
            continue
        line = next(line for line in text.splitlines()
                    if entry["framework"] in line and entry["target"] in line
                    and entry["mode"] in line)
        worst = report["worst_relative_error"]
        assert report["verdict"] in line and f"{worst:.1e}" in line
        assert line.rstrip().endswith(report["verdict"]) or "[note " in line
        if report["ok"]:
            assert report["verdict"].startswith("PASS")
        else:
            assert report["verdict"].startswith("FAIL") and entry["status"] == "explained"
            assert all(flat(note) in flat(text) for note in report["notes"])
        if report["dtype"] == "float32":
            assert report["verdict"] == "PASS at float32 tolerance: not a float64 check"
        if "--outputs-only" in entry["argv"]:           # hs, hT, cT; the RNN's hs, hT
            assert f"{len(report['tensors'])}/" in line and "outputs only" in line
            assert {t["tensor"] for t in report["tensors"]} <= {"hs", "hT", "cT"}
        elif entry["target"] == "flax.nnx.GRUCell":     # its candidate has no b_hn at all
            assert set(report["skipped"]) == {"db_hn"}
            assert "db_hn" in text
        else:
            assert not report["skipped"]
    float32 = {r["target"] for r in result["rows"]
               if r["report"] and r["report"]["dtype"] == "float32"}
    if vm.missing(vm.ROWS[2]) is None:
        assert "torch.nn.LSTM --dtype float32" in float32


def test_the_rnn_rows_compare_every_tensor_of_one_state(matrix):
    """A vanilla RNN has one state: its rows compare hs, hT, dWx, dWh, db, dx, dh0 (per layer and
    direction for the stacked torch.nn.RNN), never a cT or dc0."""
    _, result, _ = matrix
    one_state = {"hs", "hT", "dWx", "dWh", "db", "dx", "dh0"}
    rnn = [e for e in result["rows"] if e["cell"].startswith(("torch_rnn", "keras_simple_rnn",
                                                               "RNN()", "onnx_rnn"))]
    assert len(rnn) == 11
    for entry in rnn:
        if entry["report"] is None:
            continue
        names = {t["tensor"] for t in entry["report"]["tensors"]}
        if "--layers" in entry["argv"]:
            names = {n.split("_l")[0] for n in names}
        expected = {"hs", "hT"} if "--outputs-only" in entry["argv"] else one_state
        assert names == expected, (entry["target"], names)


def test_the_gru_rows_compare_every_tensor_of_one_state(matrix):
    """A GRU has one state and b_hn: its rows compare hs, hT, dWx, dWh, db, db_hn (per layer and
    direction for the stacked torch.nn.GRU; dgamma_x, dgamma_h for LayerNormGRU), dx, dh0."""
    _, result, _ = matrix
    one_state = {"hs", "hT", "dWx", "dWh", "db", "db_hn", "dx", "dh0"}
    gru = [e for e in result["rows"] if e["cell"].startswith(("torch_gru", "haste_gru",
                                                               "haste_layer_norm_gru"))]
    assert len(gru) == 11                   # + keras.GRU, reset_after True and False, x 3
    for entry in gru:
        if entry["report"] is None:
            continue
        names = {t["tensor"] for t in entry["report"]["tensors"]}
        if "reset before" in entry["cell"]:                     # no b_hn
            names |= {"db_hn"}
        if "--layers" in entry["argv"]:
            names = {n.split("_l")[0] for n in names}
        extra = {"dgamma_x", "dgamma_h"} if entry["cell"] == "haste_layer_norm_gru" else set()
        assert names == one_state | extra, (entry["target"], names)


def test_exit_status(matrix):
    rc, result, text = matrix
    assert rc == result["exit_status"] == (1 if result["failed"] else 0)
    assert text.splitlines()[-1] == f"exit status {rc}"
    assert rc == 0, text


def test_json_round_trip(matrix, capsys):
    """--json describes the report the text prints: from_dict(to_dict) prints the same table,
    on one target in this process and on every row of the matrix."""
    assert main(["validate", "torch.nn.LSTM", "--layers", "2", "--bidirectional"]) == 0
    printed = capsys.readouterr().out
    assert main(["validate", "torch.nn.LSTM", "--layers", "2", "--bidirectional",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"target", "framework", "dtype", "tolerance", "verdict", "ok",
                         "worst_relative_error", "tensors", "notes", "skipped", "lengths"}
    assert data["framework"].startswith("PyTorch ") and data["ok"] and data["verdict"] == "PASS"
    assert len(data["tensors"]) == 18
    assert str(ValidationReport.from_dict(data)) + "\n" == printed
    for entry in matrix[1]["rows"]:
        if entry["report"]:
            assert ValidationReport.from_dict(entry["report"]).to_dict() == entry["report"]


def test_json_error(capsys):
    assert main(["validate", "refnorm_no_such_module:f", "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and "refnorm_no_such_module" in data["error"]


# -- the exit status rule on planted rows, in this process -------------------------------------
def lstm(inputs, forget_bias=0.0):
    """A correct 'framework' for the torch_lstm preset: refnorm's LSTM, run from inputs."""
    params = inputs["params"]
    cell = presets.torch_lstm(params["Wx"].shape[0], params["Wh"].shape[0],
                              forget_bias=forget_bias)
    cell.params.update({k: v.copy() for k, v in params.items()})
    hs, (hT, cT), cache = cell.forward(inputs["x"], inputs["h0"], inputs["c0"], inputs["mask"])
    grads = cell.backward(inputs["dhs"], cache, inputs["dhT"], inputs["dcT"])
    return {"hs": hs, "hT": hT, "cT": cT, "grads": grads}


def forget_bias_twice(inputs):
    """A broken one: its forget gate gets 0.5 more bias."""
    return lstm(inputs, forget_bias=0.5)


def planted(attr, **kw):
    return vm.Row("planted", (f"test_validate_all:{attr}", "--preset", "torch_lstm"),
                  "torch_lstm", vm.NO_STATISTICS, (), **kw)


def run(rows):
    out = io.StringIO()
    return vm.main(rows=rows, out=out), out.getvalue()


def test_a_planted_failing_adapter_fails_the_matrix(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert run((planted("lstm"),))[0] == 0
    rc, text = run((planted("lstm"), planted("forget_bias_twice")))
    assert rc == 1
    bad = next(line for line in text.splitlines() if "forget_bias_twice" in line)
    assert "FAIL: 9 tensors differ" in bad
    assert "failed: planted test_validate_all:forget_bias_twice" in flat(text)
    assert text.splitlines()[-1] == "exit status 1"


@pytest.mark.parametrize("noted", [True, False])
def test_only_an_adapter_note_explains_a_failure(monkeypatch, noted):
    """A failing report with an adapter note (report.remarks, e.g. Keras's float32) keeps its
    FAIL in the matrix but leaves the exit status 0, with the row named; without one, 1."""
    monkeypatch.delenv("CI", raising=False)
    here = vm._run_here

    def failing(row, seed):
        report, error = here(planted("forget_bias_twice"), seed)
        report["notes"] = ["a known peer finding"] if noted else []
        return report, error

    monkeypatch.setattr(vm, "_run_here", failing)
    rc, text = run((planted("lstm"),))
    assert rc == (0 if noted else 1)
    line = next(line for line in text.splitlines() if line.startswith("planted"))
    assert "FAIL: 9 tensors differ" in line
    assert ("[note 1]" in line and "note 1: a known peer finding" in text) is noted
    assert ("explained by an adapter note (known peer findings, not a pass): planted" in
            flat(text)) is noted


def test_a_missing_framework_is_its_install_line(monkeypatch):
    monkeypatch.setitem(INSTALL, "refnorm_absent_peer", "pip install refnorm-absent-peer==1.0")
    rows = (planted("lstm"), vm.Row("Absent", ("absent.LSTM",), "torch_lstm",
                                    vm.NO_STATISTICS, ("refnorm_absent_peer",)))
    monkeypatch.delenv("CI", raising=False)
    rc, text = run(rows)
    assert rc == 0
    line = next(line for line in text.splitlines() if line.startswith("Absent"))
    assert "NOT INSTALLED: pip install refnorm-absent-peer==1.0" in line
    assert "not a failure here (under CI=true it is)" in flat(text)
    monkeypatch.setenv("CI", "true")
    rc, text = run(rows)
    assert rc == 1
    assert ("not installed (under CI every framework of the matrix must be installed): "
            "refnorm_absent_peer (pip install refnorm-absent-peer==1.0)") in flat(text)


def test_all_takes_no_target_and_no_other_option(capsys):
    assert main(["validate", "--all", "torch.nn.LSTM"]) == 2
    assert main(["validate", "--all", "--layers", "2"]) == 2
    assert "--layers" in capsys.readouterr().err
    assert main(["validate"]) == 2
    assert "give a TARGET, or --all" in capsys.readouterr().err


def test_onnx_reference_target_runs_ragged_sequences_on_their_own():
    """The ONNX reference evaluator ignores sequence_lens: onnx_reference runs each length's
    sequences alone, so a row whose sequence ended early has its last valid state as Y_h."""
    need("onnx", "pip install onnx")
    from refnorm.golden import random_cell
    from refnorm.validation import validate
    cell = random_cell(presets.onnx_lstm, 3, 4, seed=0)
    report = validate(vm.onnx_reference, cell=cell, lengths=[6, 1, 3, 5], outputs_only=True)
    assert report.ok and report.float64 and report.worst < 1e-13, report
    assert np.isfinite(report.worst)
