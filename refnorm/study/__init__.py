"""`refnorm study`: does batch norm reduce an LSTM's reliance on good initialisation, as it does
in feed-forward nets? The experiment, end to end with refnorm's own forward and backward passes.

    tasks.py       the adding problem (length configurable) and scikit-learn's 8x8 digits
    readout.py     linear readout on h_T, softmax cross-entropy / MSE, hand-written gradients
    inits.py       Gaussian and uniform inits with a scale, orthogonal, identity-recurrent
    train.py       the training loop (refnorm.optim.Adam), evaluation, gradient flow per step
    experiment.py  which runs, and what is measured on each trained model
    claims.py      tables and verdicts, each computed by a stated rule from the runs' numbers
    report.py      report.md, results.json, CSV files, PNG plots
    progress.py    the progress bar

    from refnorm.study import StudyConfig, run_study
    analysis = run_study(StudyConfig(), "refnorm-study")
"""
import platform
import sys
import time

import numpy as np

from .experiment import StudyConfig, quick_config, run_all
from .progress import Progress
from .report import write_report


def run_study(cfg, out, *, plots=True, stream=None, progress=True):
    """Run every training of `cfg`, write the report folder `out`; returns the analysis."""
    cfg.validate()
    stream = stream or sys.stderr
    start = time.perf_counter()
    results = run_all(cfg, Progress(stream) if progress else None)
    elapsed = time.perf_counter() - start
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "platform": platform.platform()}
    try:
        import numba
        versions["numba"] = numba.__version__
    except ImportError:
        pass
    return write_report(results, cfg, out, elapsed, plots=plots, versions=versions)


__all__ = ["StudyConfig", "quick_config", "run_study"]
