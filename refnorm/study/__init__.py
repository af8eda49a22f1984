"""`refnorm study`: does batch norm reduce an LSTM's reliance on good initialisation, as it does
in feed-forward nets, and what of the rest of the thread (vanilla RNNs, GRUs, norms between
stacked layers)? The experiment, end to end with refnorm's own forward and backward passes.

    tasks.py       the adding problem (length configurable) and scikit-learn's 8x8 digits
    readout.py     linear readout on h_T, softmax cross-entropy / MSE, hand-written gradients
    inits.py       Gaussian and uniform inits with a scale, orthogonal, identity-recurrent
    train.py       the training loop (refnorm.optim.Adam), evaluation, gradient flow per step
    experiment.py  which runs, and what is measured on each trained model
    claims.py      tables and verdicts, each computed by a stated rule from the runs' numbers
    uncertainty.py bootstrap intervals over seeds; supported / not supported / inconclusive
    compare.py     --compare: do the verdicts of several reports (reruns) agree?
    report.py      report.md, results.json, CSV files, PNG plots
    runlog.py      runs.jsonl: each run's result as it finishes, for --resume
    cluster.py     the runs on a Dask cluster (--scheduler)
    progress.py    the progress bar

    from refnorm.study import StudyConfig, run_study
    analysis = run_study(StudyConfig(), "refnorm-study")
"""
import os
import platform
import sys
import time

import numpy as np

from .experiment import StudyConfig, quick_config, run_all, run_one
from .progress import Progress
from .report import write_report
from .runlog import RUNS, RunLog, StudyFolderError


class StudyRunsFailed(RuntimeError):
    """Runs failed on the cluster: they are recorded in runs.jsonl, no report is written."""

    def __init__(self, out, failed):
        self.failed = failed
        super().__init__(f"{len(failed)} run(s) failed, recorded in "
                         f"{os.path.join(out, RUNS)} (--resume runs them again); no report "
                         "is written without them:\n" + "\n".join(
                             f"  {label}: {message}" for label, message in failed.items()))


def run_study(cfg, out, *, plots=True, stream=None, progress=True, resume=False,
              scheduler=None, run=run_one):
    """Run every training of `cfg`, recording each in `out`/runs.jsonl as it finishes
    (runlog.py; `resume` continues a study from there), on local processes or on the Dask
    scheduler at `scheduler`; then write the report folder `out`. Returns the analysis.
    StudyFolderError when `out` cannot take this study, ConnectionError when no scheduler
    answers, StudyRunsFailed when runs failed on the cluster."""
    cfg.validate()
    stream = stream or sys.stderr
    log = RunLog(out, cfg)
    log.open(resume=resume)
    resumed = len(log.finished())
    start = time.perf_counter()
    results = run_all(cfg, Progress(stream) if progress else None, log=log,
                      scheduler=scheduler, run=run)
    elapsed = time.perf_counter() - start
    if any("failed" in r for r in results):
        raise StudyRunsFailed(out, log.failed())
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "platform": platform.platform()}
    try:
        import numba
        versions["numba"] = numba.__version__
    except ImportError:
        pass
    where = f"the Dask scheduler at {scheduler}" if scheduler else None
    return write_report(results, cfg, out, elapsed, plots=plots, versions=versions, where=where,
                        resumed=resumed)


__all__ = ["StudyConfig", "quick_config", "run_study", "StudyFolderError", "StudyRunsFailed"]
