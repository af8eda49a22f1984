"""refnorm study's results file, --resume and --scheduler: results are written as each run
finishes, a killed study loses only the runs in flight and resumes to the report an
uninterrupted study writes, a study on a Dask cluster (a LocalCluster of 2 worker processes on
the loopback) gives the local numbers, and each fault says what happened and loses nothing."""
import functools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from refnorm.cli import main
from refnorm.study import StudyRunsFailed, run_study
from refnorm.study.experiment import quick_config, run_one, run_specs
from refnorm.study.runlog import RunLog, StudyFolderError

# a tiny study: 4 runs of an LSTM and a BNLSTM on the adding problem, NumPy backend
TINY = ["--quick", "--backend", "numpy", "--cells", "lstm", "bn_lstm", "--tasks", "adding",
        "--inits", "gauss:1", "--epochs", "1", "--jobs", "1", "--no-plots", "--no-twins"]


def tiny_config(**overrides):
    """Two cells, one task, one init, one seed; no twins (the runs are counted by cell below)."""
    return quick_config(**{"backend": "numpy", "cells": ("lstm", "bn_lstm"), "tasks": ("adding",),
                           "inits": ("gauss:1",), "epochs": 1, "jobs": 1, "twins": False,
                           **overrides})


def need(module, install):
    """Import a module, or skip (fail in CI, whose test extra installs it)."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI: {install}")
        pytest.skip(f"{module} is not installed: {install}")


def lines(out):
    return (out / "runs.jsonl").read_bytes().splitlines(keepends=True)


def without_times(out):
    """The report folder's numbers and text, less what measures wall time (per-run seconds,
    the elapsed minutes, the software versions)."""
    data = json.loads((out / "results.json").read_text())
    for key in ("elapsed_seconds", "versions"):
        data.pop(key)
    for run in data["runs"]:
        run.pop("seconds")
    report = re.sub(r"^\d+ training runs .*?\. Cells", "RUNS, how and where. Cells",
                    (out / "report.md").read_text(), flags=re.M)
    csv = {}
    for path in sorted(out.glob("*.csv")):
        rows = [row.split(",") for row in path.read_text().splitlines()]
        if "seconds" in rows[0]:
            k = rows[0].index("seconds")
            rows = [row[:k] + row[k + 1:] for row in rows]
        csv[path.name] = rows
    return data, report, csv


def results_of(out):
    """label -> result (less its seconds) of every finished run in runs.jsonl."""
    out_ = {}
    for line in lines(out):
        record = json.loads(line)
        if "result" in record:
            record["result"].pop("seconds")
            out_[record["run"]] = record["result"]
    return out_


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The tiny study, uninterrupted, on one local process: the reference."""
    out = tmp_path_factory.mktemp("local")
    assert main(["study", *TINY, "--out", str(out)]) == 0
    return out


# -- results file and --resume ---------------------------------------------------------------------
def test_each_run_is_one_line_and_resume_after_a_cut_line_redoes_only_what_is_missing(
        local_study, tmp_path):
    """runs.jsonl holds one line per run; a copy cut in the middle of its third line (a kill
    while writing) resumes by dropping the cut line and running only that run and the ones
    after it, and ends with the file and the report of the uninterrupted study."""
    cfg = tiny_config()
    specs = run_specs(cfg)
    full = lines(local_study)
    assert [json.loads(line)["run"] for line in full] == [s.label for s in specs]
    out = tmp_path / "cut"
    out.mkdir()
    shutil.copy(local_study / "settings.json", out)
    (out / "runs.jsonl").write_bytes(full[0] + full[1] + full[2][:len(full[2]) // 2])
    ran = []

    def counting(spec, cfg):
        ran.append(spec.label)
        return run_one(spec, cfg)

    run_study(cfg, str(out), plots=False, progress=False, resume=True, run=counting)
    assert ran == [s.label for s in specs[2:]]
    now = lines(out)
    assert now[:2] == full[:2] and len(now) == len(full)
    assert results_of(out) == results_of(local_study)
    assert without_times(out) == without_times(local_study)
    assert f"{len(specs)} training runs (2 read back from an interrupted study's runs.jsonl " \
           "by --resume;" in (out / "report.md").read_text()


# The killed study: its second run announces itself and waits to be killed, so exactly one
# result is on disk and one run is in flight when SIGKILL arrives (no race with the clock).
KILLED = """
import pathlib, signal, sys
from refnorm.study import run_study
from refnorm.study.experiment import quick_config, run_one
out, marker = sys.argv[1], pathlib.Path(sys.argv[2])
cfg = quick_config(backend="numpy", cells=("lstm", "bn_lstm"), tasks=("adding",),
                   inits=("gauss:1",), epochs=4, jobs=1, twins=False)
def run(spec, cfg, calls=[]):
    calls.append(spec.label)
    if len(calls) == 2:
        marker.write_text(spec.label)
        signal.pause()
    return run_one(spec, cfg)
run_study(cfg, out, plots=False, progress=False, run=run)
"""


def test_a_killed_study_loses_only_the_runs_in_flight(local_study, tmp_path):
    """A study killed (SIGKILL) while its second run is in flight; --resume runs only the runs
    not on disk and writes the uninterrupted study's report."""
    out, marker = tmp_path / "killed", tmp_path / "in-flight"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(out), str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.01)                          # waits; no time is measured
    assert proc.poll() is None, "the study ended before its second run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = lines(out)
    total = len(run_specs(tiny_config(epochs=4)))
    assert len(kept) == 1 and total > 2
    assert main(["study", *TINY, "--epochs", "4", "--out", str(out), "--resume"]) == 0
    now = lines(out)
    assert now[:len(kept)] == kept and len(now) == total    # nothing redone, nothing lost
    reference = tmp_path / "uninterrupted"
    assert main(["study", *TINY, "--epochs", "4", "--out", str(reference)]) == 0
    assert without_times(out) == without_times(reference)


def test_resume_refuses_other_settings_and_a_new_study_refuses_a_used_folder(
        local_study, tmp_path, capsys):
    out = tmp_path / "study"
    shutil.copytree(local_study, out)
    before = (out / "runs.jsonl").read_bytes()
    assert main(["study", *TINY, "--out", str(out), "--resume", "--epochs", "2",
                 "--length", "12"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "epochs: 1 there, 2 here" in err
    assert "adding_length: 10 there, 12 here" in err and "seeds" not in err
    # a full (not --quick) study never starts over a folder holding results
    full = tmp_path / "full"
    full.mkdir()
    cfg = tiny_config(quick=False)
    RunLog(str(full), cfg).open()
    (full / "runs.jsonl").write_bytes(before)
    with pytest.raises(StudyFolderError, match="pass --resume to continue it"):
        run_study(cfg, str(full), plots=False, progress=False)
    assert (full / "runs.jsonl").read_bytes() == before
    # the number of processes is not a setting of the results: resuming with others is fine
    assert main(["study", *TINY, "--out", str(out), "--resume", "--jobs", "2"]) == 0
    assert (out / "runs.jsonl").read_bytes() == before


def test_a_damaged_line_before_the_last_is_refused(local_study, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(local_study, out)
    full = lines(out)
    (out / "runs.jsonl").write_bytes(full[0] + b"{not json\n" + b"".join(full[2:]))
    with pytest.raises(StudyFolderError, match="line 2 is not a results line"):
        RunLog(str(out), tiny_config()).open(resume=True)


# -- the Dask cluster --------------------------------------------------------------------------------
def test_a_scheduler_that_does_not_answer_fails_in_seconds_naming_it(tmp_path, capsys,
                                                                   monkeypatch):
    """Dask is told to give up after CONNECT_TIMEOUT seconds (a few), and the refusal names the
    address and leaves no results file."""
    distributed = need("distributed", "pip install 'refnorm[cluster]'")
    from refnorm.study import cluster as cluster_module
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # free once closed: nothing listens there
    address = f"tcp://127.0.0.1:{port}"
    asked = []
    real = distributed.Client

    def client(*args, **kwargs):          # the bound the study gives Dask; no clock is read here
        asked.append(kwargs.get("timeout"))
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "Client", client)
    assert main(["study", *TINY, "--out", str(tmp_path / "r"), "--scheduler", address]) == 2
    assert asked == [cluster_module.CONNECT_TIMEOUT] and 0 < cluster_module.CONNECT_TIMEOUT <= 10
    err = capsys.readouterr().err
    assert f"no Dask scheduler answers at {address}" in err
    assert not (tmp_path / "r" / "runs.jsonl").exists()


@pytest.fixture(scope="module")
def cluster():
    distributed = need("distributed", "pip install 'refnorm[cluster]'")
    import cloudpickle
    # the tests' run functions travel by value: the workers cannot import this file
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield c
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_study_on_the_cluster_gives_the_local_numbers(cluster, local_study, tmp_path):
    out = tmp_path / "cluster"
    assert main(["study", *TINY, "--out", str(out), "--scheduler",
                 cluster.scheduler_address]) == 0
    assert results_of(out) == results_of(local_study)
    assert without_times(out) == without_times(local_study)
    assert f"the Dask scheduler at {cluster.scheduler_address}" in (out / "report.md").read_text()


def die_once(markers, spec, cfg):
    """run_one, except that the worker running the BNLSTM run dies the first time."""
    marker = pathlib.Path(markers) / "died"
    if spec.cell == "bn_lstm" and not spec.variable_length and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return run_one(spec, cfg)


def test_a_run_whose_worker_dies_is_run_again(cluster, local_study, tmp_path):
    out = tmp_path / "death"
    run_study(tiny_config(), str(out), plots=False, progress=False,
              scheduler=cluster.scheduler_address, run=functools.partial(die_once, tmp_path))
    assert (tmp_path / "died").exists()
    assert results_of(out) == results_of(local_study)


def fail_always(markers, spec, cfg):
    """run_one, except that the LSTM run raises, and leaves one file per attempt."""
    if spec.cell == "lstm":
        attempt = len(list(pathlib.Path(markers).glob("attempt-*")))
        (pathlib.Path(markers) / f"attempt-{attempt}").touch()
        raise RuntimeError("this run cannot finish")
    return run_one(spec, cfg)


def test_a_run_that_fails_twice_is_recorded_and_resume_redoes_it(cluster, local_study,
                                                                  tmp_path):
    out = tmp_path / "failed"
    markers = tmp_path / "attempts"
    markers.mkdir()
    cfg = tiny_config()
    with pytest.raises(StudyRunsFailed, match="adding lstm gauss:1 seed 0: RuntimeError: this "
                                              "run cannot finish"):
        run_study(cfg, str(out), plots=False, progress=False,
                  scheduler=cluster.scheduler_address, run=functools.partial(fail_always,
                                                                             markers))
    assert len(list(markers.glob("attempt-*"))) == 2          # submitted with retries=1
    records = [json.loads(line) for line in lines(out)]
    assert len(records) == len(run_specs(cfg))                # every run is on record
    assert [r["run"] for r in records if "failed" in r] == ["adding lstm gauss:1 seed 0"]
    assert not (out / "report.md").exists()
    run_study(cfg, str(out), plots=False, progress=False, resume=True)
    assert results_of(out) == results_of(local_study)
