"""The experiment behind `refnorm study`: which runs, and what is measured on each.

A run trains one cell from one init on one task with one seed (train.py) and then measures,
on the trained model, what the claims need:

    every run          final test loss and metric (population statistics), the same in
                       training mode (batch statistics), gradient flow and per-step statistics
                       at init and after every epoch
    per-step BN cells  (a) the test loss with the per-step population statistics replaced by
                       statistics shared by all steps (pooled over steps: one slot)
    adding, fixed T    (d) the test loss on sequences 2T, 4T, ... long; the per-step BN cells
                       both with their slots clamped to T_max (the Cooijmans rule) and with
                       statistics re-estimated on long sequences (what they would need to know)
    every cell         (e) training with batch size 1 (runs or raises), batch independence
                       (one sequence alone vs inside its batch), train = eval (max difference)
    "pad" runs         (c) BNLSTM and SeqBNLSTM on variable-length adding sequences, trained
                       with padded rows excluded from / included in the batch statistics, and
                       how far including them moves the statistics of a batch

Randomness: each (seed, purpose) pair has its own generator (rng_for), so a run does not depend
on which runs came before it or on how many processes share the work; every cell of one family
(LSTM, RNN, GRU) with a given seed and init scheme starts from the same weights, and every scale
of one scheme from the same draws, scaled. A twin run (RunSpec.twin) starts from its original's
weights moved by TWIN_PERTURBATION: the study's measure of which numbers are chaotic.
"""
import copy
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np

from .. import CELLS
from .tasks import (ADDING_BASELINE_MSE, Dataset, adding_problem, adding_task,
                    digits_pixels_task, digits_task)
from .train import (BN_CELL_STEMS, BN_STEMS, MODEL_STEMS, PER_STEP_BN_STEMS, build_model,
                    evaluate, probe_batch, train)

CELL_STEMS = ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm")   # the default study's: the LSTMs
# MODEL_STEMS (train.py): every stem a study may train, each cell of refnorm.CELLS and the
# 2-layer LSTM stacks "lstm2", "lstm2_seq_bn", "lstm2_ln"
TASKS = ("adding", "digits", "digits_pixels")     # every task a study may run
# the default study's: the digits row by row (T = 8) are easy for every cell; pixel by pixel
# (T = 64) they are a second long task next to the adding problem, one that can tell cells apart
DEFAULT_TASKS = ("adding", "digits", "digits_pixels")
DIGITS_TASKS = ("digits", "digits_pixels")         # classification of the 8x8 digits


@dataclass
class StudyConfig:
    cells: tuple = CELL_STEMS
    inits: tuple = ("gauss:0.2", "gauss:1", "gauss:5", "uniform:1", "orthogonal", "identity")
    tasks: tuple = DEFAULT_TASKS
    seeds: tuple = tuple(range(10))   # enough for intervals that hold across seed sets
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
    twins: bool = True                # a twin of every (task, cell, init): which numbers are chaotic
    backend: str = "numba"
    jobs: int = 1                     # worker processes (the command uses min(2, cores))
    quick: bool = False

    def validate(self):
        """ValueError naming the first option out of range (before any run starts)."""
        from .inits import parse_init
        checks = [("cells", self.cells, self.cells and set(self.cells) <= set(MODEL_STEMS)),
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
         "tasks": ("adding", "digits"),
         "long_factors": (2,), "hidden_size": 8, "batch_size": 16, "epochs": 4, "n_train": 256,
         "n_test": 128, "digits_train": 256, "stat_batches": 4, "probe_size": 32}


def quick_config(**overrides):
    """The --quick configuration: the whole study on tiny sizes (seconds, not minutes)."""
    return replace(StudyConfig(quick=True), **{**QUICK, **overrides})


# `refnorm study --preset paper`: the study at a size for a cluster (--scheduler). Every other
# setting (cells, inits, lr, batch size, long factors, claim runs) is the default's.
PAPER = {
    # 20 seeds: twice the default's, narrower intervals (about 1/sqrt(2) as wide)
    "seeds": tuple(range(20)),
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
# `refnorm study --preset thread`: the rest of the forum thread at the default's sizes, seeds and
# tasks: the vanilla RNN and GRU families (claim (g), the question per family) and 2-layer LSTM
# stacks without and with a norm between the layers (claim (h)). The LSTM family is the
# default's; its claims are undetermined here.
THREAD = {"cells": ("rnn", "bn_rnn", "seq_bn_rnn", "ln_rnn", "gru", "bn_gru", "seq_bn_gru",
                    "ln_gru", "lstm2", "lstm2_seq_bn", "lstm2_ln")}
PRESETS = ("default", "paper", "thread")


def preset_config(name, **overrides):
    """The StudyConfig of preset `name` (PRESETS), with `overrides` on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown study preset {name!r}: choose from {', '.join(PRESETS)}")
    preset = {"paper": PAPER, "thread": THREAD}.get(name, {})
    return replace(StudyConfig(), **{**preset, **overrides})


@dataclass(frozen=True)
class RunSpec:
    task: str
    cell: str
    init: str
    seed: int
    pad_stats: str = "exclude"
    variable_length: bool = False     # the adding problem with lengths U{T/2..T} (claim (c))
    twin: bool = False                # initial weights moved by TWIN_PERTURBATION (chaos check)

    @property
    def label(self):
        extra = f" pad_stats={self.pad_stats} variable-length" if self.variable_length else ""
        return f"{self.task} {self.cell} {self.init} seed {self.seed}{extra}" + \
            " twin" * self.twin


def run_specs(cfg):
    """Every run of the study, in a fixed order: the sweep, its twins (the first seed again,
    weights perturbed by rounding: claims.chaos), then the claim (c) runs."""
    specs = [RunSpec(task, cell, init, seed) for task in cfg.tasks for cell in cfg.cells
             for init in cfg.inits for seed in cfg.seeds]
    if cfg.twins:
        specs += [RunSpec(task, cell, init, cfg.seeds[0], twin=True) for task in cfg.tasks
                  for cell in cfg.cells for init in cfg.inits]
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


# A model's time relative to the LSTM's: one whole run (training, evaluations, the claims'
# measurements) of each on the adding problem at the default sizes, numba backend, one process,
# median of 3 on a 2-core Zen 4 machine (LSTM: 0.74 s).
MODEL_COST = {"lstm": 1.0, "bn_lstm": 3.2, "seq_bn_lstm": 1.6, "ln_lstm": 2.1,
              "rnn": 0.5, "bn_rnn": 1.0, "seq_bn_rnn": 0.6, "ln_rnn": 0.6,
              "gru": 1.2, "bn_gru": 2.2, "seq_bn_gru": 1.5, "ln_gru": 1.8,
              "lstm2": 2.9, "lstm2_seq_bn": 4.0, "lstm2_ln": 4.1}

COST_MODEL = (f"cost ∝ model × epochs × batches × T × (H² + {STEP_OVERHEAD_H}²), model: each "
              f"cell's measured time relative to the LSTM's")


def run_cost(spec, cfg):
    """Relative cost of a run (COST_MODEL), for the progress bar and the time estimates."""
    n = cfg.n_train if spec.task == "adding" else (cfg.digits_train or 1437)
    return (MODEL_COST[spec.cell] * cfg.epochs * max(n // cfg.batch_size, 1)
            * task_length(spec.task, cfg) * step_cost(cfg))


# The default study, timed: `refnorm study` with no options, numba backend, 2 worker processes,
# on this project's 2-core machine kind (AMD EPYC Zen 4): idle (a clean clone's CI run, 362 s),
# and busy (the 2 cores shared with another study's two processes; seeds 10-19, the same work). The one statement of how long
# it takes: the README, `refnorm study --help` and the estimate the command prints before it
# starts all come from these numbers (tests/test_study.py holds the README to time_statement()).
DEFAULT_STUDY_MINUTES = {"idle": 6.0, "busy": 17}
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
def normalised_terms(cell):
    """The terms k a BN cell normalises, those with population statistics mean_k, var_k in
    cell.stats: x, h, c for BNLSTM; x, h for BNRNN (terms="separate") and BNGRU; x for the
    sequence-wise cells."""
    return [k for k in ("x", "h", "c", "z") if "mean_" + k in cell.stats]


def shared_statistics_eval(model, data):
    """Claim (a): the test loss of a trained per-step BN cell (BNLSTM, BNRNN, BNGRU) whose
    per-step population statistics are replaced by one set shared by all steps, pooled as a
    batch-norm over batch x time would see them: mean = avg_t mean_t, var = avg_t (var_t +
    mean_t²) − mean² (total variance)."""
    shared = copy.deepcopy(model)
    stats = shared.net.stats
    pooled = {}
    for kind in normalised_terms(shared.net):
        mean_t, var_t = stats["mean_" + kind], stats["var_" + kind]            # (slots, F)
        mean = mean_t.mean(axis=0, keepdims=True)                              # (1, F)
        pooled["mean_" + kind] = mean
        pooled["var_" + kind] = (var_t + mean_t ** 2).mean(axis=0, keepdims=True) - mean ** 2
    shared.net.stats = pooled                      # one slot: every step uses it (BN-LSTM 5)
    return evaluate(shared, data)


def long_sequence_evals(model, cfg, seed):
    """Claim (d): {factor: {"loss", "metric", and for the per-step BN cells (BNLSTM, BNRNN,
    BNGRU) "reestimated_loss"}} on adding sequences factor·T long. "loss" uses the model as it
    is (a per-step BN cell: slot min(t, T−1)); "reestimated_loss" copies the weights into a cell
    of the same kind and options (build_model's) with factor·T slots whose statistics are
    estimated on long training sequences: what the model would need past T_max."""
    T, out = cfg.adding_length, {}
    for factor in cfg.long_factors:
        long_T = factor * T
        test = adding_problem(cfg.n_test, long_T, rng_for(seed, "long test", long_T))
        result = evaluate(model, test)
        entry = {"length": long_T, "loss": result["loss"], "metric": result["metric"]}
        if model.stem in PER_STEP_BN_STEMS:
            net = model.net
            oracle = copy.deepcopy(model)
            oracle.net = CELLS[model.stem](net.input_size, net.hidden_size, max_steps=long_T,
                                           backend=net.backend, pad_stats=net.pad_stats,
                                           gamma_init=net.gamma_init)
            oracle.net.params = {k: v.copy() for k, v in net.params.items()}
            train_long = adding_problem(cfg.stat_batches * cfg.batch_size, long_T,
                                        rng_for(seed, "long train", long_T))
            oracle.net.estimate_stats([train_long.x[:, k:k + cfg.batch_size]
                                       for k in range(0, len(train_long), cfg.batch_size)])
            entry["reestimated_loss"] = evaluate(oracle, test)["loss"]
        out[str(factor)] = entry
    return out


def batch_checks(model, data):
    """Claims (e) and (b), for every model, on a batch of 8 test sequences (h_T: the one the
    readout reads, a stack's top layer's):
    batch1_training        "ok" if a training forward + backward with batch size 1 runs, else
                           "raises ValueError" (the message in batch1_error)
    batch_dependence       max |h_T(sequence alone) − h_T(in its batch)|, training mode
    train_eval_difference  max |h_T(training) − h_T(inference)| over the batch (0: the model
                           needs no statistics at inference)"""
    batch = Dataset(data.x[:, :8], data.lengths[:8], data.y[:8])
    hT_batch, _ = model.forward(batch.x, batch.lengths, training=True)
    hT_eval, _ = model.forward(batch.x, batch.lengths, training=False)
    out = {"train_eval_difference": float(np.max(np.abs(hT_batch - hT_eval)))}
    try:
        hT_one, cache = model.forward(batch.x[:, :1], batch.lengths[:1], training=True)
        dhT = np.random.default_rng(0).standard_normal(hT_one.shape)
        grads = model.backward(cache, dhT)
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
    rows are included; for the BN cells (BN_CELL_STEMS), the ones with a pad_stats option. Per
    normalised term k (normalised_terms: BNLSTM x, h, c per step; BNRNN, BNGRU x, h per step;
    the sequence-wise cells x over all frames) and step t: shift_t = mean over features of
    |mean_incl − mean_excl| / sqrt(var_excl + eps), and var_ratio_t = mean over features of
    var_incl / (var_excl + eps). Returned as per-step lists (one entry for a sequence-wise
    cell) with the padded fraction of each step."""
    cell = model.net
    index = np.argsort(data.lengths)[:: max(len(data) // 64, 1)][:64]     # every length range
    batch = data.take(index)
    caches = {}
    for mode in ("exclude", "include"):
        probe = copy.deepcopy(cell)
        probe.pad_stats = mode
        *_, caches[mode] = probe.forward(batch.x, lengths=batch.lengths, training=True,
                                         update_stats=False)
    exc, inc = caches["exclude"], caches["include"]
    out = {"padded_fraction": (1.0 - exc.mask.mean(axis=1)).tolist()}
    for k in normalised_terms(cell):
        m_e, v_e = getattr(exc, "mean_" + k), getattr(exc, "var_" + k)
        m_i, v_i = getattr(inc, "mean_" + k), getattr(inc, "var_" + k)
        shift = np.abs(m_i - m_e) / np.sqrt(v_e + cell.eps)
        ratio = v_i / (v_e + cell.eps)
        out["shift_" + k] = np.atleast_1d(shift.mean(axis=-1)).tolist()
        out["var_ratio_" + k] = np.atleast_1d(ratio.mean(axis=-1)).tolist()
    return out


# -- one run ------------------------------------------------------------------------------------
# A twin run's initial weights are w·(1 + δ·N(0, 1)) with δ = TWIN_PERTURBATION: a hundred float64
# units of roundoff, the size of the differences that another backend's or machine's rounding
# (fused multiply-adds, BLAS summation order) leaves after the first steps. Where training is
# chaotic such a difference grows to a different result; where it is not, the twin ends equal
# to many digits (claims.chaos).
TWIN_PERTURBATION = 1e-14


def perturb(model, rng):
    """Move every weight of `model` in place by a relative TWIN_PERTURBATION."""
    for name in sorted(model.params):
        w = model.params[name]
        w *= 1.0 + TWIN_PERTURBATION * rng.standard_normal(w.shape)


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
    if spec.twin:
        perturb(model, rng_for(spec.seed, "twin", spec.task, spec.cell, spec.init))
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
    if spec.cell in BN_STEMS:                # the models with batch statistics
        result["trainmode_loss"] = evaluate(model, task.test, training=True)["loss"]
    if spec.cell in PER_STEP_BN_STEMS and not spec.variable_length:
        result["shared_stats_loss"] = shared_statistics_eval(model, task.test)["loss"]
    if spec.task == "adding" and not spec.variable_length:
        result["long"] = long_sequence_evals(model, cfg, spec.seed)
    if not spec.variable_length:
        result["checks"] = batch_checks(model, task.test)
    else:
        if spec.cell in BN_CELL_STEMS:       # only a BN cell has pad_stats to compare
            result["distortion"] = padding_distortion(model, task.test)
        fixed = make_task(cfg, "adding", spec.seed)
        result["full_length_loss"] = evaluate(model, fixed.test)["loss"]
    result["seconds"] = time.perf_counter() - start
    return result


def _flow_record(epoch, flow):
    """One gradient-flow checkpoint as plain lists; g_h, g_c None where train.py says."""
    def listed(v):
        return None if v is None else v.tolist()
    return {"epoch": epoch, "loss": flow["loss"], "g_h": listed(flow["g_h"]),
            "g_c": listed(flow["g_c"]), "g_x": listed(flow["g_x"]),
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
