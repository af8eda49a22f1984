"""refnorm study: the readout's hand-written gradient, the task generators, the init schemes,
and `refnorm study --quick` end to end (files, well-formed numbers, a verdict per claim, and
training that actually reduced the loss)."""
import csv
import json
import math
import pathlib
import re

import numpy as np
import pytest

import refnorm
from refnorm.cli import main
from refnorm.study.experiment import RunSpec, quick_config, run_one
from refnorm.study.inits import init_weights, parse_init
from refnorm.study.readout import (Readout, mean_squared_error, readout_backward,
                                   readout_forward, softmax_cross_entropy)
from refnorm.study.tasks import (ADDING_BASELINE_MSE, adding_problem, digits_sequences,
                                 digits_task, minibatches)
from helpers import TOL


# -- readout ------------------------------------------------------------------------------------
def readout_data(kind, B=5, H=4, K=3, seed=0):
    rng = np.random.default_rng(seed)
    hT, W, c = rng.standard_normal((B, H)), rng.standard_normal((H, K)), rng.standard_normal(K)
    y = rng.integers(0, K, B) if kind == "classification" else rng.standard_normal((B, K))
    return hT, W, c, y


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_readout_gradient_matches_finite_differences(kind):
    """(READ 3), (READ 4) against central differences of (READ 1), (READ 2) in float64."""
    hT, W, c, y = readout_data(kind)
    loss_fn = softmax_cross_entropy if kind == "classification" else mean_squared_error

    def loss(hT, W, c):
        return loss_fn(readout_forward(hT, W, c), y)[0]

    _, dscores = loss_fn(readout_forward(hT, W, c), y)
    dW, dc, dhT = readout_backward(dscores, hT, W)
    numeric = {"W": refnorm.numerical_gradient(lambda v: loss(hT, v, c), W),
               "c": refnorm.numerical_gradient(lambda v: loss(hT, W, v), c),
               "hT": refnorm.numerical_gradient(lambda v: loss(v, W, c), hT)}
    for name, analytic in (("W", dW), ("c", dc), ("hT", dhT)):
        assert refnorm.relative_error(analytic, numeric[name]) <= TOL["gradcheck"], name


def test_readout_class_matches_the_functions_and_leaves_inputs_alone():
    hT, _, _, y = readout_data("classification", K=10)
    readout = Readout(4, 10, "classification", np.random.default_rng(1))
    saved = hT.copy()
    loss, scores, grads, dhT = readout.loss_and_grads(hT, y)
    assert np.array_equal(hT, saved)
    ref_loss, dscores = softmax_cross_entropy(hT @ readout.params["W"] + readout.params["c"], y)
    assert loss == ref_loss
    dW, dc, ref_dhT = readout_backward(dscores, hT, readout.params["W"])
    assert np.array_equal(grads["W"], dW) and np.array_equal(grads["c"], dc)
    assert np.array_equal(dhT, ref_dhT)
    assert readout.metric(scores, y) == np.sum(np.argmax(scores, axis=1) == y)


def test_cross_entropy_by_hand_and_without_overflow():
    """Scores (0, ln 3) and label 1: p = (1/4, 3/4), loss = −ln(3/4); shifting every score by
    1000 changes nothing (the row maximum is subtracted first)."""
    scores = np.array([[0.0, np.log(3.0)]])
    loss, d = softmax_cross_entropy(scores, np.array([1]))
    assert abs(loss + np.log(0.75)) <= TOL["float64_reorder"]
    assert np.allclose(d, [[0.25, -0.25]], rtol=0, atol=TOL["float64_reorder"])
    loss2, d2 = softmax_cross_entropy(scores + 1000.0, np.array([1]))
    assert abs(loss2 - loss) <= TOL["float64_reorder"]
    assert np.allclose(d2, d, rtol=0, atol=TOL["float64_reorder"])


# -- tasks --------------------------------------------------------------------------------------
def test_adding_problem_shapes_markers_and_targets():
    data = adding_problem(200, 12, np.random.default_rng(0))
    assert data.x.shape == (12, 200, 2) and data.y.shape == (200, 1)
    assert np.all(data.lengths == 12)
    values, markers = data.x[..., 0], data.x[..., 1]
    assert np.all(markers.sum(axis=0) == 2)
    assert np.all(markers[:6].sum(axis=0) == 1) and np.all(markers[6:].sum(axis=0) == 1)
    assert np.allclose(data.y[:, 0], (values * markers).sum(axis=0), rtol=0,
                       atol=TOL["float64_reorder"])
    assert values.min() >= 0 and values.max() < 1
    # the best constant guess has MSE Var(y) = 1/6; 200 samples estimate it within ~20 %
    assert abs(data.y.var() - ADDING_BASELINE_MSE) < 0.2 * ADDING_BASELINE_MSE


def test_adding_problem_variable_lengths_pad_with_zeros():
    data = adding_problem(300, 10, np.random.default_rng(1), min_length=4)
    assert data.lengths.min() >= 4 and data.lengths.max() <= 10
    assert len(set(data.lengths.tolist())) > 3
    valid = np.arange(10)[:, None] < data.lengths[None, :]
    assert np.all(data.x[~valid] == 0)
    markers = data.x[..., 1]
    for b in range(300):
        L, half = data.lengths[b], data.lengths[b] // 2
        assert markers[:half, b].sum() == 1 and markers[half:L, b].sum() == 1


def test_generators_are_deterministic_given_the_generator():
    a = adding_problem(50, 8, np.random.default_rng(7), min_length=3)
    b = adding_problem(50, 8, np.random.default_rng(7), min_length=3)
    c = adding_problem(50, 8, np.random.default_rng(8), min_length=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    d1, d2 = digits_task(np.random.default_rng(3)), digits_task(np.random.default_rng(3))
    assert np.array_equal(d1.train.x, d2.train.x) and np.array_equal(d1.test.y, d2.test.y)


def test_digits_as_sequences():
    rows, labels = digits_sequences("row")
    pixels, _ = digits_sequences("pixel")
    assert rows.shape == (8, 1797, 8) and pixels.shape == (64, 1797, 1)
    assert rows.min() == 0 and rows.max() == 1 and set(labels.tolist()) == set(range(10))
    # pixel t = 8·row + column: both modes read the same image in the same order
    assert np.array_equal(pixels[:, :, 0], rows.transpose(0, 2, 1).reshape(64, 1797))
    task = digits_task(np.random.default_rng(0))
    assert len(task.train) + len(task.test) == 1797 and len(task.test) == 359
    assert task.input_size == 8 and task.T == 8 and task.n_outputs == 10
    with pytest.raises(ValueError, match="mode"):
        digits_sequences("column")


def test_minibatches_cover_the_data_and_drop_a_ragged_training_batch():
    data = adding_problem(10, 4, np.random.default_rng(0))
    shuffled = minibatches(data, 4, np.random.default_rng(0))
    assert [len(i) for i in shuffled] == [4, 4]
    assert len(set(np.concatenate(shuffled).tolist())) == 8
    ordered = minibatches(data, 4)
    assert np.array_equal(np.concatenate(ordered), np.arange(10))


# -- inits --------------------------------------------------------------------------------------
def test_init_schemes():
    assert parse_init("gauss:0.5") == ("gauss", 0.5) and parse_init("orthogonal") == (
        "orthogonal", 1.0)
    for bad in ("xavier", "gauss:-1", "gauss:big", "default:2"):
        with pytest.raises(ValueError):
            parse_init(bad)
    small = init_weights(refnorm.LSTM(3, 4, seed=0), "gauss:0.2", np.random.default_rng(5))
    large = init_weights(refnorm.LSTM(3, 4, seed=0), "gauss:5", np.random.default_rng(5))
    assert np.allclose(large.params["Wh"], 25 * small.params["Wh"], rtol=1e-14, atol=0)
    assert np.all(small.params["b"] == 0)
    ident = init_weights(refnorm.LSTM(3, 4, seed=0), "identity", np.random.default_rng(5))
    assert np.array_equal(ident.params["Wh"], np.tile(np.eye(4), (1, 4)))
    orth = init_weights(refnorm.LSTM(3, 4, seed=0), "orthogonal", np.random.default_rng(5))
    Wh = orth.params["Wh"]
    assert np.allclose(Wh @ Wh.T, np.eye(4), rtol=0, atol=TOL["float64_reorder"])


# -- end to end ----------------------------------------------------------------------------------
CLAIM_VERDICTS = {"supported", "not supported", "inconclusive", "mixed", "undetermined"}
QUESTION_VERDICTS = {"yes", "no", "inconclusive", "nothing to reduce"}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """`refnorm study --quick` on two worker processes. The NumPy backend: it needs no
    compilation (a cold Numba cache costs more than the whole quick run) and the study must
    work on it too; the Numba backend is proven equal to it by test_numba_backend.py."""
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "--quick", "--out", str(out), "--jobs", "2", "--backend", "numpy"]) == 0
    return out


def _no_nan(token):
    raise ValueError(f"non-standard JSON constant {token}")


def test_quick_report_files_are_well_formed(quick_report):
    out = quick_report
    data = json.loads((out / "results.json").read_text(), parse_constant=_no_nan)
    assert {"config", "runs", "question", "gradient_flow", "statistics", "claims"} <= set(data)
    cfg = quick_config()
    assert data["config"]["quick"] is True
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["runs"])
    assert {"task", "cell", "init", "seed", "final_loss", "norm_error", "ratio_init",
            "ratio_final"} <= set(rows[0])
    expected = {"curves.csv": ["step", "loss", "grad_norm"],
                "epochs.csv": ["epoch", "test_loss", "test_metric"],
                "gradient_flow.csv": ["epoch", "t", "g_h", "g_c", "c_var"],
                "headline.csv": ["task", "cell", "init", "median_e"],
                "claims.csv": ["claim", "verdict", "field", "value"]}
    for name, columns in expected.items():
        with open(out / name) as f:
            header = next(csv.reader(f))
        assert set(columns) <= set(header), name
    with open(out / "gradient_flow.csv") as f:
        flow = list(csv.DictReader(f))
    # one row per (run, checkpoint, step t); checkpoints: at init and after every epoch
    assert all(len(r["grad_flow"]) == cfg.epochs + 1 for r in data["runs"])
    assert len(flow) == sum(len(r["grad_flow"]) * len(r["grad_flow"][0]["g_h"])
                            for r in data["runs"])
    for name in ("heatmap.png", "loss_curves.png", "gradient_norms.png", "statistics.png",
                 "long_sequences.png"):
        blob = (out / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000, name
        width, height = int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
        assert width > 200 and height > 200, name


def test_quick_report_has_every_claim_with_a_verdict(quick_report):
    text = (quick_report / "report.md").read_text()
    for claim in "abcdefgh":
        m = re.search(rf"^## Claim \({claim}\).*?\n\n\*\*Verdict: ([a-z ]+)\.\*\* Rule: ",
                      text, re.MULTILINE)
        assert m and m.group(1) in CLAIM_VERDICTS, claim
    answers = re.findall(r"^- \*\*(adding problem|digits)[^:]*: ([a-z ]+)\.\*\*", text,
                         re.MULTILINE)
    assert {a[0] for a in answers} == {"adding problem", "digits"}
    assert all(a[1] in QUESTION_VERDICTS for a in answers)
    data = json.loads((quick_report / "results.json").read_text())
    assert [c["id"] for c in data["claims"]] == list("abcdefgh")
    assert all(c["verdict"] in CLAIM_VERDICTS and c["rule"] for c in data["claims"])


def test_quick_numbers_are_finite_and_training_reduced_the_loss(quick_report):
    data = json.loads((quick_report / "results.json").read_text())
    for run in data["runs"]:
        assert not run["diverged"]
        for key in ("final_loss", "final_metric", "norm_error"):
            assert math.isfinite(run[key]), (key, run["cell"])
        losses = np.array(run["step_loss"])
        assert np.all(np.isfinite(losses)) and np.all(np.isfinite(run["grad_norm"]))
        for flow in run["grad_flow"]:
            assert np.all(np.isfinite(flow["g_h"])) and np.all(np.isfinite(flow["g_c"]))
            assert np.all(np.asarray(flow["g_h"]) > 0)        # fixed-length probe: every step
        # the last quarter of training steps averages well below the first quarter, and the
        # probe batch's loss fell from initialisation to the end
        q = len(losses) // 4
        assert losses[-q:].mean() < 0.9 * losses[:q].mean(), (run["task"], run["cell"],
                                                               run["init"])
        assert run["grad_flow"][-1]["loss"] < run["grad_flow"][0]["loss"]


def test_a_run_is_deterministic_given_its_seed():
    cfg = quick_config(backend="numpy", epochs=1, long_factors=())
    spec = RunSpec("adding", "bn_lstm", "gauss:1", 0)
    a, b = run_one(spec, cfg), run_one(spec, cfg)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    other = run_one(RunSpec("adding", "bn_lstm", "gauss:1", 1), cfg)
    assert other["step_loss"] != a["step_loss"]


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--length", "2"], ["--inits", "xavier"],
                                 ["--batch-size", "1"], ["--seeds", "-1"]])
def test_bad_study_options_exit_2_before_any_run(bad, tmp_path, capsys):
    assert main(["study", "--quick", "--out", str(tmp_path / "r"), *bad]) == 2
    assert "refnorm study:" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# -- what the command says: its time, and that --quick is a smoke test ---------------------------
def _fake_run_study(calls):
    """Stands in for run_study: records where the report would go, runs nothing."""
    def run_study(cfg, out, plots=True):
        calls.append((cfg, out))
        return {"question": {"tasks": {"adding": {"verdict": "yes"}}},
                "claims": [{"id": "a", "title": "shared statistics", "verdict": "supported"}]}
    return run_study


def test_quick_is_a_smoke_test_in_its_own_folder(monkeypatch, capsys):
    """--quick writes to refnorm-study-quick/ by default and says, before and after, that its
    numbers mean nothing; each verdict line is tagged."""
    calls = []
    monkeypatch.setattr(refnorm.study, "run_study", _fake_run_study(calls))
    assert main(["study", "--quick", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert calls[0][1] == "refnorm-study-quick"
    first, *middle, last = out.strip().splitlines()
    assert "SMOKE TEST" in first and "mean nothing" in first and "SMOKE TEST" in last
    verdicts = [line for line in middle if ": yes" in line or ": supported" in line]
    assert len(verdicts) == 2 and all("smoke test" in line for line in verdicts)
    assert main(["study", "--backend", "numpy"]) == 0
    assert calls[1][1] == "refnorm-study" and not calls[1][0].quick
    assert "SMOKE" not in capsys.readouterr().out


def test_quick_never_overwrites_a_full_report(tmp_path, monkeypatch, capsys):
    """A folder holding a full report is refused by --quick (exit 2, nothing touched); a quick
    report may be overwritten by either."""
    calls = []
    monkeypatch.setattr(refnorm.study, "run_study", _fake_run_study(calls))
    full = tmp_path / "full"
    full.mkdir()
    text = json.dumps({"config": {"quick": False}, "runs": [{}] * 156,
                       "elapsed_seconds": 90.0})
    (full / "results.json").write_text(text)
    assert main(["study", "--quick", "--out", str(full)]) == 2
    assert "holds a full report (156 runs" in capsys.readouterr().err
    assert calls == [] and (full / "results.json").read_text() == text
    (full / "results.json").write_text(json.dumps({"config": {"quick": True}, "runs": []}))
    assert main(["study", "--quick", "--out", str(full), "--backend", "numpy"]) == 0
    assert calls[0][1] == str(full)


def test_quick_report_says_it_is_a_smoke_test(quick_report):
    text = (quick_report / "report.md").read_text()
    assert "**Smoke test (`--quick`).**" in text.split("## The question")[0]


def test_one_statement_of_the_study_time(monkeypatch, capsys):
    """The default study's measured time is stated once (experiment.time_statement) and quoted
    by the README, by `refnorm study --help` and by the estimate the command prints before it
    starts; the estimate for the defaults is the measured time itself, and scales with the
    work."""
    from refnorm.study.experiment import (DEFAULT_STUDY_MINUTES, StudyConfig, estimated_minutes,
                                          time_statement)
    statement = time_statement()
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert statement in readme
    assert not re.search(r"\d+(\.\d+)? (to \d+ )?min(ute)?s? (on|wall)", readme.replace(
        statement, "")), "another statement of the study's time in the README"
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert statement in " ".join(capsys.readouterr().out.split())
    d = StudyConfig(jobs=2)
    assert estimated_minutes(d) == pytest.approx((DEFAULT_STUDY_MINUTES["idle"],
                                                  DEFAULT_STUDY_MINUTES["busy"]))
    assert estimated_minutes(StudyConfig(jobs=2, epochs=16))[0] == pytest.approx(
        2 * DEFAULT_STUDY_MINUTES["idle"])
    calls = []
    monkeypatch.setattr(refnorm.study, "run_study", _fake_run_study(calls))
    assert main(["study", "--jobs", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"estimated {DEFAULT_STUDY_MINUTES['idle']:.1f} min" in first and statement in first
