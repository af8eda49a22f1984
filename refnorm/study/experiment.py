"""The experiment behind `refnorm study`: which runs, and what is measured on each.

A run trains one cell from one init on one task with one seed (train.py) and then measures,
on the trained model, what the claims need:

    every run          final test loss and metric (population statistics), the same in
                       training mode (batch statistics), gradient flow and per-step statistics
                       at init and after every epoch
    bn_lstm            (a) the test loss with the per-step population statistics replaced by
                       statistics shared by all steps (pooled over steps: one slot)
    adding, fixed T    (d) the test loss on sequences 2T, 4T, ... long; BNLSTM both with its
                       slots clamped to T_max (the Cooijmans rule) and with statistics
                       re-estimated on long sequences (what it would need to know)
    every cell         (e) training with batch size 1 (runs or raises), batch independence
                       (one sequence alone vs inside its batch), train = eval (max difference)
    "pad" runs         (c) BNLSTM and SeqBNLSTM on variable-length adding sequences, trained
                       with padded rows excluded from / included in the batch statistics, and
                       how far including them moves the statistics of a batch

Randomness: each (seed, purpose) pair has its own generator (rng_for), so a run does not depend
on which runs came before it or on how many processes share the work; every cell of a given
seed and init scheme starts from the same weights, and every scale of one scheme from the same
draws, scaled.
"""
import copy
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np

from .. import BNLSTM
from .tasks import (ADDING_BASELINE_MSE, Dataset, adding_problem, adding_task,
                    digits_pixels_task, digits_task)
from .train import BN_STEMS, build_model, evaluate, probe_batch, train

CELL_STEMS = ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm")
TASKS = ("adding", "digits", "digits_pixels")     # every task a study may run
DEFAULT_TASKS = ("adding", "digits")               # the default study's
DIGITS_TASKS = ("digits", "digits_pixels")         # classification of the 8x8 digits


@dataclass
class StudyConfig:
    cells: tuple = CELL_STEMS
    inits: tuple = ("gauss:0.2", "gauss:1", "gauss:5", "uniform:1", "orthogonal", "identity")
    tasks: tuple = DEFAULT_TASKS
    seeds: tuple = (0, 1, 2)
    adding_length: int = 50           # T of the adding problem's training sequences
    long_factors: tuple = (2, 4)      # evaluated past T_max on lengths factor * T
    digits_mode: str = "row"          # "row": T = 8, D = 8; "pixel": T = 64, D = 1
    hidden_size: int = 16
    batch_size: int = 32
    epochs: int = 8
    lr: float = 1e-2
    clip: float = 1.0                 # joint gradient-norm clip (0: none)
    n_train: int = 2048               # adding problem: training sequences
    n_test: int = 512                 # adding problem: test sequences (also each long length)
    digits_train: int = None          # keep only this many training digits (None: all 1437)
    stat_batches: int = 16            # batches per population-statistics estimate
    probe_size: int = 64              # sequences of the gradient-flow probe batch
    claim_init: str = "orthogonal"    # init of the runs that only the claims need (pad runs)
    pad_claim: bool = True            # run claim (c): variable-length runs, include vs exclude
    backend: str = "numba"
    jobs: int = 1                     # worker processes (the command uses min(2, cores))
    quick: bool = False

    def validate(self):
        """ValueError naming the first option out of range (before any run starts)."""
        from .inits import parse_init
        checks = [("cells", self.cells, self.cells and set(self.cells) <= set(CELL_STEMS)),
                  ("tasks", self.tasks, self.tasks and set(self.tasks) <= set(TASKS)),
                  ("seeds", self.seeds, self.seeds and all(s >= 0 for s in self.seeds)),
                  ("length", self.adding_length, self.adding_length >= 4),
                  ("long_factors", self.long_factors, all(f >= 2 for f in self.long_factors)),
                  ("digits_mode", self.digits_mode, self.digits_mode in ("row", "pixel")),
                  ("hidden", self.hidden_size, self.hidden_size >= 1),
                  ("batch_size", self.batch_size, self.batch_size >= 2),
                  ("epochs", self.epochs, self.epochs >= 1), ("lr", self.lr, self.lr > 0),
                  ("clip", self.clip, self.clip >= 0), ("jobs", self.jobs, self.jobs >= 1),
                  ("inits", self.inits, bool(self.inits)),
                  ("n_train", self.n_train, self.n_train >= self.batch_size),
                  ("stat_batches", self.stat_batches, self.stat_batches >= 1)]
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"study option {name} is out of range: {value!r}")
        for spec in self.inits:
            parse_init(spec)
        return self

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


QUICK = {"inits": ("gauss:0.2", "gauss:1", "orthogonal"), "seeds": (0,), "adding_length": 10,
         "long_factors": (2,), "hidden_size": 8, "batch_size": 16, "epochs": 4, "n_train": 256,
         "n_test": 128, "digits_train": 256, "stat_batches": 4, "probe_size": 32}


def quick_config(**overrides):
    """The --quick configuration: the whole study on tiny sizes (seconds, not minutes)."""
    return replace(StudyConfig(quick=True), **{**QUICK, **overrides})


# `refnorm study --preset paper`: the study at a size for a cluster (--scheduler). Every other
# setting (cells, inits, lr, batch size, long factors, claim runs) is the default's.
PAPER = {
    # 10 seeds: a median and a min-max over seeds that one outlying seed does not move
    "seeds": tuple(range(10)),
    # T = 200: 4x the default's 50, among the lengths of Le et al. 2015's adding problem (150-400)
    "adding_length": 200,
    # H = 100: Le et al. 2015's width for the adding problem; 6x the default's 16
    "hidden_size": 100,
    # pixel-by-pixel digits (T = 64) next to the row-by-row ones (T = 8, cheap): a second long task
    "tasks": ("adding", "digits", "digits_pixels"),
    # 20 epochs of 4096 sequences: 2560 updates on the adding problem, 5x the default's 512,
    # since longer sequences take more updates to learn
    "epochs": 20,
    "n_train": 4096,
}
PRESETS = ("default", "paper")


def preset_config(name, **overrides):
    """The StudyConfig of preset `name` (PRESETS), with `overrides` on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown study preset {name!r}: choose from {', '.join(PRESETS)}")
    return replace(StudyConfig(), **{**(PAPER if name == "paper" else {}), **overrides})


@dataclass(frozen=True)
class RunSpec:
    task: str
    cell: str
    init: str
    seed: int
    pad_stats: str = "exclude"
    variable_length: bool = False     # the adding problem with lengths U{T/2..T} (claim (c))

    @property
    def label(self):
        extra = f" pad_stats={self.pad_stats} variable-length" if self.variable_length else ""
        return f"{self.task} {self.cell} {self.init} seed {self.seed}{extra}"


def run_specs(cfg):
    """Every run of the study, in a fixed order: the sweep, then the claim (c) runs."""
    specs = [RunSpec(task, cell, init, seed) for task in cfg.tasks for cell in cfg.cells
             for init in cfg.inits for seed in cfg.seeds]
    if cfg.pad_claim and "adding" in cfg.tasks:
        specs += [RunSpec("adding", cell, cfg.claim_init, seed, pad_stats, True)
                  for cell in ("bn_lstm", "seq_bn_lstm") if cell in cfg.cells
                  for pad_stats in ("exclude", "include") for seed in cfg.seeds]
    return specs


def task_length(task, cfg):
    """T of the task's training sequences."""
    if task == "adding":
        return cfg.adding_length
    return 64 if task == "digits_pixels" or cfg.digits_mode == "pixel" else 8


# A step's time grows as H² + STEP_OVERHEAD_H²: the matrix work, plus a fixed per-step overhead
# (calls, element-wise loops) as large as the work at H = 30. Fitted to one epoch of LSTM,
# BNLSTM and LNLSTM training on the adding problem, numba backend, H = 16, 32, 64, 100 (measured
# times within 25 % of the model's, within 17 % at H = 100); time per step did not depend on T.
STEP_OVERHEAD_H = 30


def step_cost(cfg):
    """Relative cost of one time step of one batch at cfg's hidden size (1 at H = 16)."""
    return (cfg.hidden_size ** 2 + STEP_OVERHEAD_H ** 2) / (16 ** 2 + STEP_OVERHEAD_H ** 2)


COST_MODEL = f"cost ∝ epochs × batches × T × (H² + {STEP_OVERHEAD_H}²)"


def run_cost(spec, cfg):
    """Relative cost of a run (COST_MODEL), for the progress bar and the time estimates."""
    n = cfg.n_train if spec.task == "adding" else (cfg.digits_train or 1437)
    return cfg.epochs * max(n // cfg.batch_size, 1) * task_length(spec.task, cfg) * step_cost(cfg)


# The default study, timed: `refnorm study` with no options, numba backend, 2 worker processes,
# on this project's 2-core machine kind, idle and busy. The one statement of how long it takes:
# the README, `refnorm study --help` and the estimate the command prints before it starts all
# come from these numbers (tests/test_study.py holds the README to time_statement()).
DEFAULT_STUDY_MINUTES = {"idle": 1.0, "busy": 3.7}
DEFAULT_STUDY_MACHINE = None


def time_statement():
    """How long the default study takes, as every place states it."""
    idle, busy = DEFAULT_STUDY_MINUTES["idle"], DEFAULT_STUDY_MINUTES["busy"]
    return f"about {idle:g} minute{'s' * (idle != 1)} on 2 idle cores, {busy:g} on busy ones"


def total_cost(cfg):
    return sum(run_cost(spec, cfg) for spec in run_specs(cfg))


def estimated_minutes(cfg):
    """(idle, busy) minutes for `cfg`: the default study's measured times scaled by the work
    (run_cost: epochs x batches x steps x step_cost(H), summed over runs) and by the worker
    processes (two on the machine measured). Other cells' mixes and the NumPy backend (slower)
    move the real time; the estimate says so."""
    scale = total_cost(cfg) / total_cost(StudyConfig()) * 2 / min(cfg.jobs, 2)
    return tuple(DEFAULT_STUDY_MINUTES[k] * scale for k in ("idle", "busy"))


def estimated_cpu_hours(cfg):
    """(idle, busy) CPU-hours for `cfg`, whatever runs it: the default study's measured minutes
    times the two processes that ran it, scaled by the work as estimated_minutes does. One
    run holds one core (one BLAS thread per process)."""
    scale = total_cost(cfg) / total_cost(StudyConfig())
    return tuple(DEFAULT_STUDY_MINUTES[k] * 2 * scale / 60 for k in ("idle", "busy"))


def rng_for(seed, *purpose):
    """A generator owned by (seed, purpose...): the same numbers whatever ran before."""
    return np.random.default_rng([seed] + [zlib.crc32(str(p).encode()) for p in purpose])


_TASK_CACHE = {}


def make_task(cfg, name, seed, variable_length=False):
    """The task's train and test sets for this seed (cached per process)."""
    key = (name, seed, variable_length, cfg.adding_length, cfg.n_train, cfg.n_test,
           cfg.digits_mode, cfg.digits_train)
    if key not in _TASK_CACHE:
        rng = rng_for(seed, "data", name, variable_length)
        if name == "adding":
            min_length = cfg.adding_length // 2 if variable_length else None
            task = adding_task(cfg.adding_length, rng, n_train=cfg.n_train, n_test=cfg.n_test,
                               min_length=min_length)
        elif name == "digits":
            task = digits_task(rng, mode=cfg.digits_mode, n_train=cfg.digits_train)
        elif name == "digits_pixels":      # the digits' generator: the same split, per seed
            task = digits_pixels_task(rng_for(seed, "data", "digits", variable_length),
                                      n_train=cfg.digits_train)
        else:
            raise ValueError(f"unknown task {name!r}: choose from {TASKS}")
        _TASK_CACHE[key] = task
    return _TASK_CACHE[key]


def normalized_error(task_name, metric):
    """0 = perfect, 1 = has learnt nothing: 1 − accuracy for digits, MSE / Var(y) = 6·MSE for
    the adding problem (Var(y) = 1/6 is the MSE of the best constant guess)."""
    return 1.0 - metric if task_name in DIGITS_TASKS else metric / ADDING_BASELINE_MSE


# -- measurements on a trained model ---------------------------------------------------------
def shared_statistics_eval(model, data):
    """Claim (a): the test loss of a trained BNLSTM whose per-step population statistics are
    replaced by one set shared by all steps, pooled as a batch-norm over batch x time would see
    them: mean = avg_t mean_t, var = avg_t (var_t + mean_t²) − mean² (total variance)."""
    shared = copy.deepcopy(model)
    stats = shared.cell.stats
    pooled = {}
    for kind in ("x", "h", "c"):
        mean_t, var_t = stats["mean_" + kind], stats["var_" + kind]            # (slots, F)
        mean = mean_t.mean(axis=0, keepdims=True)                              # (1, F)
        pooled["mean_" + kind] = mean
        pooled["var_" + kind] = (var_t + mean_t ** 2).mean(axis=0, keepdims=True) - mean ** 2
    shared.cell.stats = pooled                     # one slot: every step uses it (BN-LSTM 5)
    return evaluate(shared, data)


def long_sequence_evals(model, cfg, seed):
    """Claim (d): {factor: {"loss", "metric", and for BNLSTM "reestimated_loss"}} on adding
    sequences factor·T long. "loss" uses the model as it is (BNLSTM: slot min(t, T−1));
    "reestimated_loss" copies the weights into a BNLSTM with factor·T slots whose statistics
    are estimated on long training sequences: what the model would need past T_max."""
    T, out = cfg.adding_length, {}
    for factor in cfg.long_factors:
        long_T = factor * T
        test = adding_problem(cfg.n_test, long_T, rng_for(seed, "long test", long_T))
        result = evaluate(model, test)
        entry = {"length": long_T, "loss": result["loss"], "metric": result["metric"]}
        if model.stem == "bn_lstm":
            cell = model.cell
            oracle = copy.deepcopy(model)
            oracle.cell = BNLSTM(cell.input_size, cell.hidden_size, max_steps=long_T,
                                 backend=cell.backend, pad_stats=cell.pad_stats,
                                 gamma_init=cell.gamma_init)
            oracle.cell.params = {k: v.copy() for k, v in cell.params.items()}
            train_long = adding_problem(cfg.stat_batches * cfg.batch_size, long_T,
                                        rng_for(seed, "long train", long_T))
            oracle.cell.estimate_stats([train_long.x[:, k:k + cfg.batch_size]
                                        for k in range(0, len(train_long), cfg.batch_size)])
            entry["reestimated_loss"] = evaluate(oracle, test)["loss"]
        out[str(factor)] = entry
    return out


def batch_checks(model, data):
    """Claims (e) and (b), for every cell, on a batch of 8 test sequences:
    batch1_training        "ok" if a training forward + backward with batch size 1 runs, else
                           "raises ValueError" (the message in batch1_error)
    batch_dependence       max |h_T(sequence alone) − h_T(in its batch)|, training mode
    train_eval_difference  max |h_T(training) − h_T(inference)| over the batch (0: the cell
                           needs no statistics at inference)"""
    cell = model.cell
    batch = Dataset(data.x[:, :8], data.lengths[:8], data.y[:8])
    _, (hT_batch, _), _ = cell.forward(batch.x, lengths=batch.lengths, training=True,
                                       update_stats=False)
    _, (hT_eval, _), _ = cell.forward(batch.x, lengths=batch.lengths, training=False)
    out = {"train_eval_difference": float(np.max(np.abs(hT_batch - hT_eval)))}
    try:
        _, (hT_one, _), cache = cell.forward(batch.x[:, :1], lengths=batch.lengths[:1],
                                             training=True, update_stats=False)
        dhT = np.random.default_rng(0).standard_normal(hT_one.shape)
        grads = cell.backward(None, cache, dhT)
        finite = all(np.all(np.isfinite(g)) for g in grads.values())
        out["batch1_training"] = "ok" if finite else "non-finite gradients"
        out["batch_dependence"] = float(np.max(np.abs(hT_one[0] - hT_batch[0])))
    except ValueError as err:
        out["batch1_training"] = "raises ValueError"
        out["batch1_error"] = str(err)
        out["batch_dependence"] = None
    return out


def padding_distortion(model, data):
    """Claim (c): on a variable-length batch, how far the batch statistics move when padded
    rows are included. Per normalised term k (BNLSTM: x, h, c per step; SeqBNLSTM: x over all
    frames) and step t: shift_t = mean over features of |mean_incl − mean_excl| / sqrt(var_excl
    + eps), and var_ratio_t = mean over features of var_incl / (var_excl + eps). Returned as
    per-step lists (one entry for SeqBNLSTM) with the padded fraction of each step."""
    cell = model.cell
    index = np.argsort(data.lengths)[:: max(len(data) // 64, 1)][:64]     # every length range
    batch = data.take(index)
    caches = {}
    for mode in ("exclude", "include"):
        probe = copy.deepcopy(cell)
        probe.pad_stats = mode
        *_, caches[mode] = probe.forward(batch.x, lengths=batch.lengths, training=True,
                                         update_stats=False)
    exc, inc = caches["exclude"], caches["include"]
    kinds = ("x", "h", "c") if model.stem == "bn_lstm" else ("x",)
    out = {"padded_fraction": (1.0 - exc.mask.mean(axis=1)).tolist()}
    for k in kinds:
        m_e, v_e = getattr(exc, "mean_" + k), getattr(exc, "var_" + k)
        m_i, v_i = getattr(inc, "mean_" + k), getattr(inc, "var_" + k)
        shift = np.abs(m_i - m_e) / np.sqrt(v_e + cell.eps)
        ratio = v_i / (v_e + cell.eps)
        out["shift_" + k] = np.atleast_1d(shift.mean(axis=-1)).tolist()
        out["var_ratio_" + k] = np.atleast_1d(ratio.mean(axis=-1)).tolist()
    return out


# -- one run ------------------------------------------------------------------------------------
def run_one(spec, cfg):
    """Train the run `spec` and measure it; returns a dict of plain numbers and lists."""
    start = time.perf_counter()
    _limit_threads()
    task = make_task(cfg, spec.task, spec.seed, spec.variable_length)
    # the weights depend on (seed, task, scheme), never on the cell or the scale
    scheme = spec.init.partition(":")[0]
    model = build_model(spec.cell, task, cfg.hidden_size, spec.init,
                        rng_for(spec.seed, "weights", spec.task, scheme),
                        rng_for(spec.seed, "readout", spec.task), backend=cfg.backend,
                        pad_stats=spec.pad_stats)
    probe = probe_batch(task.test, cfg.probe_size)
    history = train(model, task, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                    clip=cfg.clip, rng=rng_for(spec.seed, "batches", spec.task),
                    probe=probe, stat_batches=cfg.stat_batches)
    result = {**asdict(spec), "diverged": history["diverged"],
              "step_loss": history["step_loss"], "grad_norm": history["grad_norm"],
              "test_loss": history["test_loss"], "test_metric": history["test_metric"],
              "grad_flow": [_flow_record(epoch, flow)
                            for epoch, flow in enumerate(history["grad_flow"])]}
    if history["diverged"] or not history["test_loss"]:
        result.update(final_loss=None, final_metric=None, norm_error=None,
                      seconds=time.perf_counter() - start)
        return result
    result["final_loss"] = history["test_loss"][-1]
    result["final_metric"] = history["test_metric"][-1]
    result["norm_error"] = normalized_error(spec.task, result["final_metric"])
    if spec.cell in BN_STEMS:
        result["trainmode_loss"] = evaluate(model, task.test, training=True)["loss"]
    if spec.cell == "bn_lstm" and not spec.variable_length:
        result["shared_stats_loss"] = shared_statistics_eval(model, task.test)["loss"]
    if spec.task == "adding" and not spec.variable_length:
        result["long"] = long_sequence_evals(model, cfg, spec.seed)
    if not spec.variable_length:
        result["checks"] = batch_checks(model, task.test)
    else:
        result["distortion"] = padding_distortion(model, task.test)
        fixed = make_task(cfg, "adding", spec.seed)
        result["full_length_loss"] = evaluate(model, fixed.test)["loss"]
    result["seconds"] = time.perf_counter() - start
    return result


def _flow_record(epoch, flow):
    return {"epoch": epoch, "loss": flow["loss"], "g_h": flow["g_h"].tolist(),
            "g_c": flow["g_c"].tolist(),
            "stats": {k: v.tolist() for k, v in flow["stats"].items()}}


# -- all runs ------------------------------------------------------------------------------------
def _worker(args):
    run, spec, cfg = args
    return run(spec, cfg)


def _limit_threads():
    """One BLAS thread per process: the matrices here are tiny, and BLAS threads that share two
    cores with another process spend more time waiting for each other than working (10x
    slower on 2 busy cores). Called per run: it limits the BLAS libraries loaded so far."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:            # optional: only speed depends on it
        return
    threadpool_limits(1)


def run_all(cfg, progress=None, *, log=None, scheduler=None, run=run_one):
    """Every run of run_specs(cfg), in order: on `jobs` local processes when jobs > 1, or on
    the Dask scheduler at `scheduler` (cluster.py). With `log` (an opened runlog.RunLog) the
    runs it holds are not run again and each new one is recorded as it finishes; a run that
    failed on the cluster comes back as {spec fields, "failed": message}. `run` is what runs
    one spec (run_one; tests give another)."""
    specs = run_specs(cfg)
    done = dict(log.finished()) if log else {}
    todo = [s for s in specs if s.label not in done]
    costs = {s.label: run_cost(s, cfg) for s in todo}
    if progress:
        progress.start(sum(costs.values()), runs=len(todo))

    def record(spec, result=None, failed=None):
        if failed is not None:
            result = {**asdict(spec), "failed": failed}
            if log:
                log.append(spec.label, failed=failed)
        elif log:
            result = log.append(spec.label, result)
        done[spec.label] = result
        if progress:
            progress.update(costs[spec.label], spec.label)

    if scheduler:
        from .cluster import run_on_cluster
        run_on_cluster(scheduler, todo, cfg, run, record)
    elif cfg.jobs <= 1:
        for spec in todo:
            record(spec, run(spec, cfg))
    else:
        import multiprocessing as mp
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(cfg.jobs) as pool:
            for spec, result in zip(todo, pool.imap(_worker, [(run, s, cfg) for s in todo])):
                record(spec, result)
    if progress:
        progress.close()
    return [done[s.label] for s in specs]


def default_jobs():
    return max(1, min(2, os.cpu_count() or 1))


__all__ = ["StudyConfig", "quick_config", "preset_config", "PRESETS", "RunSpec", "run_specs",
           "run_one", "run_all", "normalized_error", "rng_for", "default_jobs", "time_statement",
           "estimated_minutes", "estimated_cpu_hours"]
