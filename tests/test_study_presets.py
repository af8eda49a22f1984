"""refnorm study's presets and its pixel-by-pixel digits: the task "digits_pixels" (the row-by-row
digits' images, split and labels, one pixel per step in scanline order), `--preset paper` (the
configuration it builds, the runs and CPU-hours it prints before it starts, the options it
combines with and --quick, which it refuses) and the cost model behind the estimate."""
import numpy as np
import pytest

import refnorm
from refnorm.cli import main
from refnorm.study.experiment import (COST_MODEL, DEFAULT_STUDY_MINUTES, MODEL_COST,
                                      STEP_OVERHEAD_H, TASKS, RunSpec, StudyConfig,
                                      estimated_cpu_hours, make_task, preset_config, quick_config,
                                      run_one, run_specs)


# -- the task -----------------------------------------------------------------------------------
def test_digits_pixels_are_the_row_by_row_digits_in_scanline_order():
    cfg = quick_config(digits_train=None)
    rows, pixels = make_task(cfg, "digits", 3), make_task(cfg, "digits_pixels", 3)
    assert "digits_pixels" in TASKS and pixels.name == "digits_pixels"
    assert pixels.T == 64 and pixels.input_size == 1
    assert pixels.train.x.shape == (64, 1438, 1) and pixels.test.x.shape == (64, 359, 1)
    assert pixels.train.take(np.arange(16)).x.shape == (64, 16, 1)
    # the same split, labels and readout as the row-by-row task, for the same seed
    assert np.array_equal(pixels.train.y, rows.train.y)
    assert np.array_equal(pixels.test.y, rows.test.y)
    assert (pixels.kind, pixels.n_outputs) == (rows.kind, rows.n_outputs) == ("classification", 10)
    assert np.all(pixels.train.lengths == 64)
    # pixel t = 8·row + column of the same image (rows.x is (row, N, column))
    for data_p, data_r in ((pixels.train, rows.train), (pixels.test, rows.test)):
        N = len(data_r)
        assert np.array_equal(data_p.x[:, :, 0], data_r.x.transpose(0, 2, 1).reshape(64, N))
    assert pixels.train.x[8 * 2 + 5, 7, 0] == rows.train.x[2, 7, 5]
    column_order = rows.train.x.transpose(2, 0, 1).reshape(64, -1)     # t = 8·column + row
    assert not np.array_equal(pixels.train.x[:, :, 0], column_order)
    assert pixels.train.x.min() == 0 and pixels.train.x.max() == 1


def test_the_default_study():
    """Ten seeds on the adding problem and the digits read row by row and pixel by pixel: the
    sweep (4 cells × 6 inits × 3 tasks × 10 seeds), a twin of every (task, cell, init) and the
    claim (c) runs (2 cells × 2 pad modes × 10 seeds)."""
    d = StudyConfig()
    assert d.tasks == ("adding", "digits", "digits_pixels") and d.seeds == tuple(range(10))
    assert len(run_specs(d)) == 720 + 72 + 40 == 832
    assert sum(s.twin for s in run_specs(d)) == 72
    assert preset_config("default") == d


def test_preset_thread_trains_the_rest_of_the_thread():
    t = preset_config("thread")
    assert set(t.cells) == {"rnn", "bn_rnn", "seq_bn_rnn", "ln_rnn", "gru", "bn_gru",
                            "seq_bn_gru", "ln_gru", "lstm2", "lstm2_seq_bn", "lstm2_ln"}
    assert (t.seeds, t.tasks, t.inits) == (StudyConfig().seeds, StudyConfig().tasks,
                                           StudyConfig().inits)
    assert not any(s.variable_length for s in run_specs(t))   # claim (c) is the LSTM's


def test_a_digits_pixels_run_end_to_end():
    cfg = quick_config(backend="numpy", tasks=("digits_pixels",), epochs=1, digits_train=64,
                       hidden_size=4, stat_batches=2, probe_size=16)
    result = run_one(RunSpec("digits_pixels", "bn_lstm", "orthogonal", 0), cfg)
    assert not result["diverged"] and 0 <= result["final_metric"] <= 1
    assert result["norm_error"] == pytest.approx(1 - result["final_metric"])
    assert np.isfinite(result["final_loss"]) and np.isfinite(result["shared_stats_loss"])
    assert "long" not in result and result["checks"]["batch1_training"] == "raises ValueError"
    assert len(result["grad_flow"][0]["g_h"]) == 64          # one gradient norm per pixel step


# -- the cost model -----------------------------------------------------------------------------
def test_cpu_hours_grow_with_seeds_and_scale_as_the_cost_model_says():
    d = StudyConfig()
    default_hours = estimated_cpu_hours(d)
    assert default_hours == pytest.approx(tuple(DEFAULT_STUDY_MINUTES[k] * 2 / 60
                                                for k in ("idle", "busy")))
    twice = StudyConfig(seeds=tuple(range(20)), twins=False)
    assert estimated_cpu_hours(twice)[0] == pytest.approx(
        2 * estimated_cpu_hours(StudyConfig(twins=False))[0])
    # the model's measured cost: a GRU-only study against an LSTM-only one
    assert estimated_cpu_hours(StudyConfig(cells=("gru",)))[0] == pytest.approx(
        MODEL_COST["gru"] * estimated_cpu_hours(StudyConfig(cells=("lstm",)))[0])
    # cost ∝ epochs × batches × T × (H² + 30²): one task at a time
    adding = StudyConfig(tasks=("adding",), pad_claim=False)
    assert estimated_cpu_hours(StudyConfig(tasks=("adding",), pad_claim=False,
                                           adding_length=200))[0] == pytest.approx(
        4 * estimated_cpu_hours(adding)[0])
    digits = StudyConfig(tasks=("digits",))
    wide = StudyConfig(tasks=("digits",), hidden_size=100)
    assert estimated_cpu_hours(wide)[0] / estimated_cpu_hours(digits)[0] == pytest.approx(
        (100 ** 2 + STEP_OVERHEAD_H ** 2) / (16 ** 2 + STEP_OVERHEAD_H ** 2))
    pixels = StudyConfig(tasks=("digits_pixels",))
    assert estimated_cpu_hours(pixels)[0] == pytest.approx(8 * estimated_cpu_hours(digits)[0])
    paper = preset_config("paper")
    assert estimated_cpu_hours(paper)[0] > 10 * default_hours[0]


# -- the command --------------------------------------------------------------------------------
def _fake_run_study(calls, capsys):
    """Stands in for run_study: records its arguments and what had been printed, runs nothing."""
    def run_study(cfg, out, plots=True, **options):
        calls.append((cfg, out, options, capsys.readouterr().out))
        return {"question": {"tasks": {}}, "claims": []}
    return run_study


def test_preset_paper_builds_its_config_and_prints_runs_and_cpu_hours_first(monkeypatch,
                                                                            capsys):
    calls = []
    monkeypatch.setattr(refnorm.study, "run_study", _fake_run_study(calls, capsys))
    assert main(["study", "--preset", "paper", "--backend", "numpy", "--jobs", "2"]) == 0
    (cfg, out, options, printed), = calls
    assert cfg == preset_config("paper", backend="numpy", jobs=2) and not cfg.quick
    assert cfg.seeds == tuple(range(20)) and cfg.adding_length == 200
    assert cfg.hidden_size == 100 and cfg.epochs == 20 and cfg.n_train == 4096
    assert cfg.tasks == ("adding", "digits", "digits_pixels")
    assert out == "refnorm-study-paper" and options == {}
    idle, busy = estimated_cpu_hours(cfg)
    first = printed.splitlines()[0]
    assert f"--preset paper: {len(run_specs(cfg))} runs, expected {idle:.0f} CPU-hours on idle " \
           f"cores, {busy:.0f} on busy ones" in first
    assert len(run_specs(cfg)) == 1592 and COST_MODEL in first and "--scheduler" in first


def test_preset_paper_combines_with_scheduler_resume_out_and_options(monkeypatch, capsys,
                                                                     tmp_path):
    pytest.importorskip("distributed")
    calls = []
    monkeypatch.setattr(refnorm.study, "run_study", _fake_run_study(calls, capsys))
    assert main(["study", "--preset", "paper", "--scheduler", "tcp://10.0.0.5:8786", "--resume",
                 "--out", str(tmp_path / "p"), "--seeds", "0", "1", "--backend", "numpy"]) == 0
    (cfg, out, options, printed), = calls
    assert options == {"resume": True, "scheduler": "tcp://10.0.0.5:8786"}
    assert out == str(tmp_path / "p") and cfg.seeds == (0, 1) and cfg.hidden_size == 100
    assert f"{len(run_specs(cfg))} runs, expected" in printed.splitlines()[0]


def test_quick_with_preset_paper_is_refused(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(refnorm.study, "run_study", _fake_run_study(calls, capsys))
    assert main(["study", "--quick", "--preset", "paper", "--backend", "numpy"]) == 2
    assert calls == [] and "--quick and --preset paper do not combine" in capsys.readouterr().err


def test_the_readme_states_the_printed_estimate():
    import pathlib
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = " ".join(readme.split())
    paper = preset_config("paper")
    idle, busy = estimated_cpu_hours(paper)
    assert f"`refnorm study --preset paper` is the study at a cluster's size, meant for " \
           f"`--scheduler`: {len(run_specs(paper))} runs" in text
    assert f"expected CPU-hours ({idle:.0f} on idle cores, {busy:.0f} on busy ones" in text
    assert f"T × (H² + {STEP_OVERHEAD_H}²)" in text


def test_the_report_names_the_pixel_task():
    from refnorm.study.experiment import StudyConfig
    from refnorm.study.report import task_title
    cfg = StudyConfig()
    assert task_title("digits_pixels", cfg) == "digits (pixel by pixel, T = 64)"
    assert task_title("digits", cfg) == "digits (row by row, T = 8)"
