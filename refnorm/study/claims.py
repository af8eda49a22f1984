"""From the runs' numbers to tables and verdicts. Pure functions of the results: every verdict is
computed here by the rule written next to it, and the rule is printed in the report.

Shared definitions:
    e        normalised test error, 0 = perfect, 1 = learnt nothing (experiment.normalized_error)
    learned  a run whose e <= SUCCESS_ERROR
    r        gradient ratio g_h[first step] / g_h[last step] (train.py: g_h[t] = ‖dL/dh̃_t‖)
"""
import numpy as np

from .. import CELLS
from .experiment import TWIN_PERTURBATION
from .uncertainty import (MIN_SEEDS, Bootstrap, above, all_of, at_most, below, combine,
                          mean, median, spread)

SUCCESS_ERROR = 0.1          # learned: 90 % accuracy on digits, MSE below 10 % of Var(y) (adding)
VANISHING = 1e-3             # r below: vanishing gradient
EXPLODING = 1e3              # r above: exploding gradient
NOTHING_TO_REDUCE = 0.05     # question: S(plain cell) below this leaves nothing to reduce
LOSS_RATIO = 1.1             # claims (a), (c), (f): a loss ratio above this is a real change (10 %)
SHIFT = 0.1                  # claim (c): statistics moved by more than 0.1 standard deviation
CLAMP_RATIO = 1.2            # claim (d): clamped statistics cost more than 20 % of the loss
EXACT = 1e-12                # claim (e): float64 rounding; "identical" below this
CHAOS = 0.01                 # a twin run (weights moved by TWIN_PERTURBATION) that ends with e
                             # more than this away from its original makes the number chaotic

STACK_LABELS = {"lstm2": "2-layer LSTM", "lstm2_seq_bn": "2-layer LSTM, SeqBN between",
                "lstm2_ln": "2-layer LSTM, LN between"}
CELL_LABELS = {**{stem: cls.__name__ for stem, cls in CELLS.items()}, **STACK_LABELS}
NORMS = ("bn_", "seq_bn_", "ln_")
ANSWERING = ("bn_lstm", "bn_gru", "bn_rnn")     # whose verdict answers the question, in order


def combined(subjects):
    """The sentence of every rule whose claim combines the verdicts of several subjects."""
    return (f"the claim: the {subjects}' verdict when they agree, mixed when definite verdicts "
            f"differ, else inconclusive")


def plain_of(stem):
    """The unnormalised model a normalised one is compared with ("bn_gru" -> "gru",
    "lstm2_ln" -> "lstm2"); None for a plain one."""
    for prefix in NORMS:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    if stem.startswith("lstm2_"):
        return "lstm2"
    return None


def _median(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def sweep(results):
    """The runs of the init sweep (fixed-length data; twins and claim (c)'s runs left out)."""
    return [r for r in results if not r["variable_length"] and not r.get("twin")]


def twins(results):
    return [r for r in results if r.get("twin")]


def learned(r):
    return r["norm_error"] is not None and r["norm_error"] <= SUCCESS_ERROR


def error(r):
    """e of a run; a run that diverged has learnt nothing (1)."""
    return r["norm_error"] if r["norm_error"] is not None else 1.0


def gradient_ratio(flow):
    g = flow["g_h"]
    if g is None:                                # a stack has no per-step hidden gradient
        return None
    return g[0] / g[-1] if g[-1] > 0 else None


def flow_verdict(est):
    """vanishing / exploding / ok when the interval of r lies wholly in that range."""
    if est is None or est["value"] is None:
        return "n/a"
    if est["lo"] is None or est["seeds"] < MIN_SEEDS:
        return "inconclusive"
    lo, hi = est["lo"], est["hi"]
    return ("vanishing" if hi < VANISHING else "exploding" if lo > EXPLODING
            else "ok" if VANISHING <= lo and hi <= EXPLODING else "inconclusive")


def _runs(results, **where):
    return [r for r in sweep(results) if all(r[k] == v for k, v in where.items())]


# -- the question ---------------------------------------------------------------------------------
def question(results, cfg, boot=None):
    """Does BN reduce the reliance on good initialisation? Per task and cell: the median e over
    seeds of every init, the init sensitivity S = max − min over inits of those medians, the
    fraction of (init, seed) runs that learned, each with its bootstrap interval over seeds;
    per normalised cell, the paired difference S(cell) − S(its plain cell) and its verdict."""
    boot = boot or Bootstrap(cfg.seeds)
    per_task = {}
    for task in cfg.tasks:
        tables = {c: [boot.table(_runs(results, task=task, cell=c, init=i), error)
                      for i in cfg.inits] for c in cfg.cells}
        cells = {}
        for cell in cfg.cells:
            per_init = {}
            for init, t in zip(cfg.inits, tables[cell]):
                finite = t[np.isfinite(t)]
                per_init[init] = {**boot.estimate(median, t),
                                  "min": float(finite.min()) if finite.size else None,
                                  "max": float(finite.max()) if finite.size else None,
                                  "n": int(finite.size)}
            learnt = boot.table(_runs(results, task=task, cell=cell),
                                lambda r: float(learned(r)))
            medians = [v["value"] for v in per_init.values() if v["value"] is not None]
            cells[cell] = {"per_init": per_init,
                           "S": boot.estimate(spread, *tables[cell]),
                           "best": min(medians) if medians else None,
                           "worst": max(medians) if medians else None,
                           "success_rate": boot.estimate(mean, learnt)}
            plain = plain_of(cell)
            if plain in tables:
                k = len(cfg.inits)
                diff = boot.estimate(lambda *a: spread(*a[:k]) - spread(*a[k:]),
                                     *tables[cell], *tables[plain])
                cells[cell]["vs_plain"] = diff
                cells[cell]["reduces"] = reduces(diff, cells[plain]["S"])
        # the task's answer: per-step BN against its plain cell, the LSTM's first
        primary = next((c for c in ANSWERING if c in cells and "vs_plain" in cells[c]), None)
        per_task[task] = {"cells": cells, "answered_by": primary,
                          "verdict": cells[primary]["reduces"] if primary else "undetermined"}
    return {"rule": (f"e = normalised test error (0 perfect, 1 nothing learnt; a diverged run "
                     f"counts 1); S = max − min over inits of the median e over seeds; "
                     f"intervals: central 90 % over resamples of the seeds. A normalised cell "
                     f"reduces the reliance on init ('yes') if the interval of S(cell) − "
                     f"S(its plain cell) lies below 0, 'no' if it lies at or above 0, "
                     f"'inconclusive' if it straddles 0 or there are fewer than {MIN_SEEDS} "
                     f"seeds; 'nothing to reduce' if the plain cell's S lies wholly below "
                     f"{NOTHING_TO_REDUCE}. The task's answer is BNLSTM's (without it, BNGRU's, "
                     f"then BNRNN's). A run 'learned' "
                     f"if e <= {SUCCESS_ERROR}."),
            "tasks": per_task}


def reduces(diff, s_plain):
    if below(s_plain, NOTHING_TO_REDUCE) == "supported":
        return "nothing to reduce"
    return {"supported": "yes", "not supported": "no"}.get(below(diff, 0.0), "inconclusive")


# -- gradient flow and statistics -----------------------------------------------------------------
def gradient_flow(results, cfg, boot=None):
    """Per task, cell and init: the median r over seeds at initialisation and after training,
    with intervals and verdicts."""
    boot = boot or Bootstrap(cfg.seeds)
    out = {}
    for task in cfg.tasks:
        rows = []
        for cell in cfg.cells:
            for init in cfg.inits:
                runs = _runs(results, task=task, cell=cell, init=init)
                if not runs or runs[0]["grad_flow"][0]["g_h"] is None:
                    continue
                r0 = boot.estimate(median, boot.table(
                    runs, lambda r: gradient_ratio(r["grad_flow"][0])))
                r1 = boot.estimate(median, boot.table(
                    runs, lambda r: gradient_ratio(r["grad_flow"][-1])))
                rows.append({"cell": cell, "init": init, "ratio_init": r0,
                             "verdict_init": flow_verdict(r0), "ratio_final": r1,
                             "verdict_final": flow_verdict(r1)})
        out[task] = rows
    return {"rule": (f"r = ‖dL/dh̃_1‖ / ‖dL/dh̃_T‖ on the probe batch (median over seeds, "
                     f"90 % interval): vanishing if the interval lies below {VANISHING:g}, "
                     f"exploding if above {EXPLODING:g}, ok if within, else inconclusive"),
            "tasks": out}


def statistics_growth(results, cfg, boot=None):
    """Per task and cell, median over inits and seeds of the growth of the per-step statistics
    from the first to the last step, at initialisation and after training:
    c_var[T]/c_var[1] (batch variance of the raw cell c̃_t; LSTM cells), h_var[T]/h_var[1]
    (batch variance of h_t, where recorded), and for BNLSTM the variance its recurrent
    normaliser divides by, norm_var_h[T]/norm_var_h[2] (step 1 has h_0 = 0)."""
    boot = boot or Bootstrap(cfg.seeds)

    def growth(key, first=0):
        def value(stats):
            v = stats.get(key)
            return v[-1] / v[first] if v is not None and len(v) > first and v[first] > 0 \
                else None
        return value

    out = {}
    for task in cfg.tasks:
        rows = []
        for cell in cfg.cells:
            runs = _runs(results, task=task, cell=cell)
            row = {"cell": cell}
            for when, k in (("init", 0), ("final", -1)):
                for name, fn in (("h_var", growth("h_var")), ("c_var", growth("c_var")),
                                 ("var_h", growth("norm_var_h", 1))):
                    if name == "var_h" and cell != "bn_lstm":
                        continue
                    est = boot.estimate(median, boot.table(
                        runs, lambda r: fn(r["grad_flow"][k]["stats"])))
                    row[f"{name}_growth_{when}"] = est if est["value"] is not None else None
            rows.append(row)
        out[task] = rows
    return {"rule": "growth = statistic at the last step / at the first step (median over runs, "
                    "90 % interval over seeds)",
            "tasks": out}


# -- the claims -----------------------------------------------------------------------------------
def claim_a(results, cfg, boot=None):
    """(a) Statistics shared by all time steps do not suit the recurrence."""
    boot = boot or Bootstrap(cfg.seeds)
    rows = []
    for task in cfg.tasks:
        runs = [r for r in _runs(results, task=task, cell="bn_lstm")
                if r.get("shared_stats_loss") is not None]
        only_learned = any(map(learned, runs))
        good = [r for r in runs if learned(r)] if only_learned else runs
        if not good:
            continue
        ratio = boot.estimate(median, boot.table(
            good, lambda r: r["shared_stats_loss"] / r["final_loss"]))
        rows.append({"task": task, "runs": len(good), "only_runs_that_learned": only_learned,
                     "per_step_loss": boot.estimate(median, boot.table(
                         good, lambda r: r["final_loss"])),
                     "shared_loss": boot.estimate(median, boot.table(
                         good, lambda r: r["shared_stats_loss"])),
                     "ratio": ratio, "verdict": above(ratio, LOSS_RATIO)})
    return {"id": "a", "title": "plain BN with statistics shared by all time steps does not "
                                "suit the recurrence",
            "rule": (f"trained BNLSTMs (the runs that learned, else all) evaluated with their "
                     f"per-step population statistics and with one set pooled over steps; per "
                     f"task, supported if the interval of the median loss ratio shared/per-step "
                     f"lies above {LOSS_RATIO}, not supported if at or below it; "
                     + combined("tasks")),
            "verdict": combine(r["verdict"] for r in rows), "rows": rows}


def claim_b(results, cfg, boot=None):
    """(b) Normalising only the input term with batch x time statistics is the safe form."""
    boot = boot or Bootstrap(cfg.seeds)
    cells = [c for c in ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm") if c in cfg.cells]
    tables = {}
    for cell in cells:
        runs = _runs(results, cell=cell)
        tables[cell] = {
            "success_rate": boot.table(runs, lambda r: float(learned(r))),
            "train_eval_gap": boot.table(runs, lambda r: abs(r["trainmode_loss"] - r["final_loss"])
                                         / r["final_loss"] if r.get("trainmode_loss") is not None
                                         else None),
            "long_ratio": _long_ratio_table(results, cell, cfg, boot)}
    stats = {"success_rate": mean, "train_eval_gap": median, "long_ratio": median}
    rows = []
    for cell in cells:
        row = {"cell": cell}
        for key, stat in stats.items():
            est = boot.estimate(stat, tables[cell][key])
            row[key] = est if est["value"] is not None else None
        row["batch1_training"] = _first_check(_runs(results, cell=cell), "batch1_training")
        rows.append(row)
    tests = []
    if "seq_bn_lstm" in tables and "bn_lstm" in tables:
        s, b = tables["seq_bn_lstm"], tables["bn_lstm"]
        for key, stat, sign in (("success_rate", mean, -1), ("train_eval_gap", median, 1),
                                ("long_ratio", median, 1)):
            # sign · (SeqBN − BN) <= 0: learns at least as often / gap and loss no larger
            diff = boot.estimate(lambda x, y, f=stat, k=sign: k * (f(x) - f(y)), s[key], b[key])
            tests.append({"test": key, "difference": diff,
                          "verdict": at_most(diff, 0.0) if diff["value"] is not None
                          else "inconclusive"})
    return {"id": "b", "title": "normalising only the input term with batch × time statistics "
                                "(SeqBNLSTM) is the safe form",
            "rule": ("safe = (1) learns from at least as many (init, seed) runs as BNLSTM, "
                     "(2) its inference (population statistics) is at least as close to its "
                     "training mode (relative test-loss gap, median), (3) it loses no more past "
                     "T_max (median loss ratio at the longest length / at T, runs that "
                     "learned). Each on the interval of the paired difference SeqBNLSTM − "
                     "BNLSTM (signed so that <= 0 is safe): holds if the interval lies at or "
                     "below 0, fails if above. Supported if all three hold, not supported if "
                     "one fails, else inconclusive"),
            "verdict": all_of(t["verdict"] for t in tests) if tests else "undetermined",
            "tests": tests, "rows": rows}


def _first_check(runs, key):
    for r in runs:
        if r.get("checks"):
            return r["checks"][key]
    return None


def _long_ratio_table(results, cell, cfg, boot, key="loss"):
    """Per seed, loss(longest length) / loss(T) of the adding runs that learned at T."""
    if not cfg.long_factors or "adding" not in cfg.tasks:
        return boot.table([], lambda r: None)
    longest = str(max(cfg.long_factors))
    runs = [r for r in _runs(results, task="adding", cell=cell) if learned(r) and r.get("long")]
    return boot.table(runs, lambda r: r["long"][longest][key] / r["final_loss"]
                      if r["long"][longest].get(key) is not None else None)


def claim_c(results, cfg, boot=None):
    """(c) Padding inside the statistics distorts them."""
    boot = boot or Bootstrap(cfg.seeds)
    pad = [r for r in results if r["variable_length"] and r["final_loss"] is not None]
    rows = []
    for cell in ("bn_lstm", "seq_bn_lstm"):
        runs = {m: [r for r in pad if r["cell"] == cell and r["pad_stats"] == m]
                for m in ("exclude", "include")}
        if not runs["exclude"] or not runs["include"]:
            continue
        shift = boot.table(runs["exclude"], lambda r: max(
            max(v) for k, v in r["distortion"].items() if k.startswith("shift_")))
        loss = {m: boot.table(runs[m], lambda r: r["final_loss"]) for m in runs}
        full = {m: boot.table(runs[m], lambda r: r["full_length_loss"]) for m in runs}

        def worse(li, le, fi, fe):          # the larger of the two loss ratios include/exclude
            return np.maximum(median(li) / median(le), median(fi) / median(fe))

        row = {"cell": cell,
               # the probe batch spans the length distribution: its valid fraction at the last
               # step, times the batch size, is what a training batch's statistics see there
               "valid_rows_last_step": _median(
                   [cfg.batch_size * (1 - r["distortion"]["padded_fraction"][-1])
                    for r in runs["exclude"]]),
               "max_shift": boot.estimate(median, shift),
               "loss_exclude": boot.estimate(median, loss["exclude"]),
               "loss_include": boot.estimate(median, loss["include"]),
               "ratio": boot.estimate(lambda a, b: median(a) / median(b), loss["include"],
                                      loss["exclude"]),
               "full_length_ratio": boot.estimate(lambda a, b: median(a) / median(b),
                                                  full["include"], full["exclude"]),
               "worse_ratio": boot.estimate(worse, loss["include"], loss["exclude"],
                                            full["include"], full["exclude"])}
        row["verdict"] = all_of([above(row["max_shift"], SHIFT),
                                 above(row["worse_ratio"], LOSS_RATIO)])
        rows.append(row)
    return {"id": "c", "title": "padding inside the statistics distorts them",
            "rule": (f"variable-length adding data (lengths U{{T/2..T}}), the BN cells trained "
                     f"with padded rows excluded from / included in the batch statistics. "
                     f"Distortion: on a padded batch, the largest (over steps and terms) mean "
                     f"shift |mean_incl − mean_excl| / std_excl of the exclude-trained models. "
                     f"Per cell: supported if the intervals of the median shift lie above "
                     f"{SHIFT} and of the larger test-loss ratio include/exclude "
                     f"(variable-length or full-length test set) above {LOSS_RATIO}; not "
                     f"supported if either lies at or below; else inconclusive; "
                     + combined("cells") + f". valid_rows_last_step: the valid rows a training "
                     f"batch of "
                     f"{cfg.batch_size} has, on average, at the last step"),
            "verdict": combine(r["verdict"] for r in rows), "rows": rows}


def claim_d(results, cfg, boot=None):
    """(d) Nothing is known past T_max."""
    boot = boot or Bootstrap(cfg.seeds)
    rows, clamp_cost = [], None
    if "adding" in cfg.tasks and cfg.long_factors:
        f = str(max(cfg.long_factors))
        for cell in cfg.cells:
            runs = [r for r in _runs(results, task="adding", cell=cell)
                    if learned(r) and r.get("long")]
            row = {"cell": cell, "runs": len(runs),
                   "loss_T": boot.estimate(median, boot.table(runs, lambda r: r["final_loss"]))}
            for factor in cfg.long_factors:
                key = str(factor)
                row[f"loss_{factor}T"] = boot.estimate(median, boot.table(
                    runs, lambda r: r["long"][key]["loss"]))
                if cell == "bn_lstm":
                    row[f"reestimated_{factor}T"] = boot.estimate(median, boot.table(
                        runs, lambda r: r["long"][key]["reestimated_loss"]))
            if cell == "bn_lstm" and runs:
                clamp_cost = boot.estimate(
                    lambda a, b: median(a) / median(b),
                    boot.table(runs, lambda r: r["long"][f]["loss"]),
                    boot.table(runs, lambda r: r["long"][f]["reestimated_loss"]))
            rows.append(row)
    verdict = above(clamp_cost, CLAMP_RATIO) if clamp_cost else "undetermined"
    return {"id": "d", "title": "nothing is known past T_max",
            "rule": (f"adding runs that learned at T = T_max, evaluated on longer sequences. "
                     f"BNLSTM uses slot min(t, T_max − 1) (the Cooijmans rule); its "
                     f"'re-estimated' column copies the weights into a BNLSTM whose statistics "
                     f"are estimated on long sequences. Supported if, at the longest length, "
                     f"the interval of clamped loss / re-estimated loss (ratio of medians) lies "
                     f"above {CLAMP_RATIO} (the statistics of T_max do not describe later "
                     f"steps), not supported if at or below, else inconclusive"),
            "verdict": verdict, "clamp_cost": clamp_cost, "rows": rows}


def claim_e(results, cfg, boot=None):
    """(e) LN needs no per-step statistics. An exact check on every trained model: the numbers
    are rounding errors, not draws, so they carry no interval."""
    rows = []
    for cell in cfg.cells:
        runs = [r for r in _runs(results, cell=cell) if r.get("checks")]
        if not runs:
            continue
        deps = [r["checks"]["batch_dependence"] for r in runs]
        rows.append({"cell": cell,
                     "train_eval_difference": max(r["checks"]["train_eval_difference"]
                                                  for r in runs),
                     "batch1_training": runs[0]["checks"]["batch1_training"],
                     "batch_dependence": None if None in deps else max(deps)})
    ln = next((r for r in rows if r["cell"] == "ln_lstm"), None)
    verdict = "undetermined"
    if ln:
        ok = (ln["train_eval_difference"] <= EXACT and ln["batch1_training"] == "ok"
              and ln["batch_dependence"] is not None and ln["batch_dependence"] <= EXACT)
        verdict = "supported" if ok else "not supported"
    return {"id": "e", "title": "LN needs no per-step statistics (train = eval, batch size 1 "
                                "works)",
            "rule": (f"on every trained model, 8 test sequences: max |h_T(training) − "
                     f"h_T(inference)|, a training forward + backward with batch size 1, and "
                     f"max |h_T(sequence alone) − h_T(in its batch)|. Supported if, for LNLSTM, "
                     f"both differences are <= {EXACT:g} (float64 rounding) and batch size 1 "
                     f"trains. An exact check, not a draw: no interval"),
            "verdict": verdict, "rows": rows}


def early_loss(r):
    """Mean training loss over the first epoch's updates (how fast training starts)."""
    n = max(len(r["step_loss"]) // max(len(r["test_loss"]), 1), 1)
    return float(np.mean(r["step_loss"][:n])) if r["step_loss"] else None


def claim_f(results, cfg, boot=None):
    """(f) Laurent et al. 2016: batch norm on the input-to-hidden transition speeds up training
    but does not improve generalisation; on the hidden-to-hidden transition it does not help."""
    boot = boot or Bootstrap(cfg.seeds)
    rows = []
    for task in cfg.tasks:
        t = {c: _runs(results, task=task, cell=c) for c in ("lstm", "seq_bn_lstm", "bn_lstm")}
        if not all(t.values()):
            continue
        key = {c: {(r["init"], r["seed"]): r for r in runs} for c, runs in t.items()}

        def paired(a, b, value):
            """One value per (init, seed) run of cell a, from it and its twin run of cell b."""
            runs = [r for r in t[a] if (r["init"], r["seed"]) in key[b]]
            return boot.table(runs, lambda r: value(r, key[b][(r["init"], r["seed"])]))

        speed = boot.estimate(median, paired(
            "seq_bn_lstm", "lstm", lambda s, p: early_loss(s) / early_loss(p)))
        # generalisation, apart from optimisation: runs where both cells learned
        general = boot.estimate(median, paired(
            "seq_bn_lstm", "lstm", lambda s, p: s["final_loss"] / p["final_loss"]
            if learned(s) and learned(p) else None))
        hidden = boot.estimate(median, paired(
            "bn_lstm", "seq_bn_lstm", lambda b, s: error(b) - error(s)))
        rows.append({"task": task, "early_loss_ratio": speed, "test_loss_ratio_learned": general,
                     "e_difference_hidden": hidden,
                     "speeds_up": below(speed, 1 / LOSS_RATIO),
                     "no_better_generalisation": above(general, 1 / LOSS_RATIO),
                     "hidden_does_not_help": above(hidden, -CHAOS)})
        rows[-1]["verdict"] = all_of([rows[-1]["speeds_up"], rows[-1]["no_better_generalisation"],
                                      rows[-1]["hidden_does_not_help"]])
    return {"id": "f", "title": "Laurent et al. 2016: BN of the input-to-hidden term speeds up "
                                "training but does not improve generalisation; BN of the "
                                "hidden-to-hidden term does not help",
            "rule": (f"per task, paired over (init, seed): (1) speeds up: the interval of the "
                     f"median ratio SeqBNLSTM / LSTM of the mean training loss over the first "
                     f"epoch lies below 1/{LOSS_RATIO}; (2) no better generalisation: over the "
                     f"runs where both learned, the interval of the median test-loss ratio "
                     f"SeqBNLSTM / LSTM lies above 1/{LOSS_RATIO} (it is not 10 % better); "
                     f"(3) the hidden-to-hidden term's BN does not help: the interval of the "
                     f"median e difference BNLSTM (both terms, per step) − SeqBNLSTM (input "
                     f"term only) lies above −{CHAOS}. Each part is supported, not supported "
                     f"(interval wholly on the other side) or inconclusive; per task supported "
                     f"if all three are, not supported if one is not; " + combined("tasks")),
            "verdict": combine(r["verdict"] for r in rows), "rows": rows}


def paired_error_difference(results, task, cell, other, boot):
    """The median over (init, seed) of e(cell) − e(other), the two runs of one init and seed
    paired (the same data and batch order; within a family, the same initial weights)."""
    key = {(r["init"], r["seed"]): r for r in _runs(results, task=task, cell=other)}
    runs = [r for r in _runs(results, task=task, cell=cell) if (r["init"], r["seed"]) in key]
    return boot.estimate(median, boot.table(
        runs, lambda r: error(r) - error(key[(r["init"], r["seed"])])))


def _versus(results, cfg, boot, plain, rivals, rule):
    """Rows of paired e differences rival − plain per task, each with rule(difference)."""
    rows = []
    for task in cfg.tasks:
        for rival in rivals:
            if plain in cfg.cells and rival in cfg.cells:
                diff = paired_error_difference(results, task, rival, plain, boot)
                rows.append({"task": task, "cell": rival, "compared_with": plain,
                             "e_difference": diff, "verdict": rule(diff)})
    return rows


def claim_g(results, cfg, boot=None):
    """(g) "You cannot use batch norm with vanilla recurrent networks"."""
    boot = boot or Bootstrap(cfg.seeds)
    rows = _versus(results, cfg, boot, "rnn", ("bn_rnn", "seq_bn_rnn", "ln_rnn"),
                   lambda d: above(d, CHAOS))
    per_step = [r["verdict"] for r in rows if r["cell"] == "bn_rnn"]
    return {"id": "g", "title": "batch norm cannot be used with vanilla (tanh) recurrent "
                                "networks",
            "rule": (f"per task, paired over (init, seed): the median e difference BNRNN − RNN "
                     f"(per-step batch norm of both terms against none). Supported if its "
                     f"interval lies above {CHAOS} (batch norm makes the RNN learn worse), not "
                     f"supported if at or below, else inconclusive; " + combined("tasks")
                     + " (BNRNN's rows). SeqBNRNN and LNRNN rows by the same rule, for "
                     "comparison. Undetermined unless the study trains rnn and bn_rnn "
                     "(--preset thread)"),
            "verdict": combine(per_step), "rows": rows}


def claim_h(results, cfg, boot=None):
    """(h) Normalisation between stacked layers helps."""
    boot = boot or Bootstrap(cfg.seeds)
    rows = _versus(results, cfg, boot, "lstm2", ("lstm2_seq_bn", "lstm2_ln"),
                   lambda d: below(d, -CHAOS))
    return {"id": "h", "title": "normalisation between stacked layers helps (a 2-layer LSTM)",
            "rule": (f"per task and between-layer norm (sequence-wise batch norm, layer norm), "
                     f"paired over (init, seed): the median e difference 2-layer LSTM with the "
                     f"norm − without. Supported if its interval lies below −{CHAOS} (lower "
                     f"error with the norm), not supported if at or above, else inconclusive; "
                     + combined("(task, norm) pairs") + ". Undetermined unless the study "
                     "trains lstm2 and a normalised stack (--preset thread)"),
            "verdict": combine(r["verdict"] for r in rows), "rows": rows}


def all_claims(results, cfg, boot=None):
    boot = boot or Bootstrap(cfg.seeds)
    return [claim(results, cfg, boot)
            for claim in (claim_a, claim_b, claim_c, claim_d, claim_e, claim_f, claim_g,
                          claim_h)]


# -- what a rerun changes ---------------------------------------------------------------------------
def chaos(results, cfg):
    """Which numbers are chaotic. Every (task, cell, init) of the sweep has a twin run: its
    first seed again, with every initial weight moved by a relative TWIN_PERTURBATION, the size
    of the rounding differences between backends and machines (experiment.py). A number that
    the twin moves by more than CHAOS is set by rounding: it differs across machines and
    backends, by about as much as across seeds. Per (task, cell): how many inits are chaotic,
    the largest |Δe|, and the largest relative change of the gradient ratio r at
    initialisation (not trained yet: never chaotic) and after training."""
    original = {(r["task"], r["cell"], r["init"], r["seed"]): r for r in sweep(results)}
    rows, chaotic = [], []
    for task in cfg.tasks:
        for cell in cfg.cells:
            pairs = [(original[k], tw) for tw in twins(results)
                     if (k := (tw["task"], tw["cell"], tw["init"], tw["seed"])) in original
                     and tw["task"] == task and tw["cell"] == cell]
            if not pairs:
                continue
            de = [abs(error(a) - error(b)) for a, b in pairs]
            chaotic += [(task, cell, a["init"]) for (a, _), d in zip(pairs, de) if d > CHAOS]

            def rel(k):
                out = [abs(ra - rb) / abs(ra) for a, b in pairs
                       if (ra := gradient_ratio(a["grad_flow"][k])) is not None
                       and (rb := gradient_ratio(b["grad_flow"][k])) is not None and ra != 0]
                return max(out) if out else None

            rows.append({"task": task, "cell": cell, "inits": len(pairs),
                         "chaotic_inits": sum(d > CHAOS for d in de), "max_e_change": max(de),
                         "r_init_change": rel(0), "r_final_change": rel(-1)})
    return {"rule": (f"a twin of every (task, cell, init): the first seed again with its "
                     f"initial weights multiplied by 1 + δ·N(0, 1), δ = {TWIN_PERTURBATION:g} "
                     f"(rounding-sized); chaotic if its e ends more "
                     f"than {CHAOS} away from the original's. The first seed only: a number "
                     f"whose other seeds sit at the edge of learning can be chaotic unmarked"),
            "rows": rows, "chaotic": chaotic}
