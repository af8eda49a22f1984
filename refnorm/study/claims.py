"""From the runs' numbers to tables and verdicts. Pure functions of the results: every verdict is
computed here by the rule written next to it, and the rule is printed in the report.

Shared definitions:
    e        normalised test error, 0 = perfect, 1 = learnt nothing (experiment.normalized_error)
    learned  a run whose e <= SUCCESS_ERROR
    r        gradient ratio g_h[first step] / g_h[last step] (train.py: g_h[t] = ‖dL/dh̃_t‖)
"""
import numpy as np

SUCCESS_ERROR = 0.1          # learned: 90 % accuracy on digits, MSE below 10 % of Var(y) (adding)
VANISHING = 1e-3             # r below: vanishing gradient
EXPLODING = 1e3              # r above: exploding gradient
HALVES = 0.5                 # question: "yes" when BN's init sensitivity <= half of the LSTM's
NOTHING_TO_REDUCE = 0.05     # question: S(LSTM) below this leaves nothing to reduce
LOSS_RATIO = 1.1             # claims (a), (c): a loss ratio above this is a real change (10 %)
SHIFT = 0.1                  # claim (c): statistics moved by more than 0.1 standard deviation
CLAMP_RATIO = 1.2            # claim (d): clamped statistics cost more than 20 % of the loss
EXACT = 1e-12                # claim (e): float64 rounding; "identical" below this

CELL_LABELS = {"lstm": "LSTM", "bn_lstm": "BNLSTM", "seq_bn_lstm": "SeqBNLSTM",
               "ln_lstm": "LNLSTM"}


def _median(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def sweep(results):
    """The runs of the init sweep (fixed-length data)."""
    return [r for r in results if not r["variable_length"]]


def learned(r):
    return r["norm_error"] is not None and r["norm_error"] <= SUCCESS_ERROR


def gradient_ratio(flow):
    g = flow["g_h"]
    return g[0] / g[-1] if g[-1] > 0 else None


def flow_verdict(r):
    if r is None:
        return "n/a"
    return "vanishing" if r < VANISHING else "exploding" if r > EXPLODING else "ok"


def grid(results, task, cells, inits, value):
    """{(cell, init): [value(run) for each seed]} for one task."""
    out = {}
    for r in sweep(results):
        if r["task"] == task:
            out.setdefault((r["cell"], r["init"]), []).append(value(r))
    return {(c, i): out.get((c, i), []) for c in cells for i in inits}


# -- the question ---------------------------------------------------------------------------------
def question(results, cfg):
    """Does BN reduce the reliance on good initialisation? Per task and cell: the median e over
    seeds of every init, its range over seeds, the init sensitivity S = max − min over inits of
    the median e, and the fraction of (init, seed) runs that learned."""
    per_task = {}
    for task in cfg.tasks:
        cells = {}
        errors = grid(results, task, cfg.cells, cfg.inits, lambda r: r["norm_error"])
        for cell in cfg.cells:
            per_init = {}
            for init in cfg.inits:
                vals = [v if v is not None else 1.0 for v in errors[(cell, init)]]  # diverged = 1
                per_init[init] = {"median": _median(vals), "min": min(vals) if vals else None,
                                  "max": max(vals) if vals else None, "n": len(vals)}
            medians = [v["median"] for v in per_init.values() if v["median"] is not None]
            runs = [r for r in sweep(results) if r["task"] == task and r["cell"] == cell]
            cells[cell] = {"per_init": per_init,
                           "sensitivity": max(medians) - min(medians) if medians else None,
                           "best": min(medians) if medians else None,
                           "worst": max(medians) if medians else None,
                           "success_rate": (sum(learned(r) for r in runs) / len(runs)
                                            if runs else None)}
        verdict = "undetermined"                       # needs both LSTM and BNLSTM
        if "lstm" in cells and "bn_lstm" in cells:
            s_lstm, s_bn = cells["lstm"]["sensitivity"], cells["bn_lstm"]["sensitivity"]
            if s_lstm < NOTHING_TO_REDUCE:
                verdict = "nothing to reduce"
            elif s_bn <= HALVES * s_lstm:
                verdict = "yes"
            elif s_bn < s_lstm:
                verdict = "partly"
            else:
                verdict = "no"
        per_task[task] = {"cells": cells, "verdict": verdict}
    return {"rule": (f"e = normalised test error (0 perfect, 1 nothing learnt); S = max − min "
                     f"over inits of the median e over seeds. Per task: 'yes' if S(BNLSTM) <= "
                     f"{HALVES} × S(LSTM), 'partly' if S(BNLSTM) < S(LSTM), 'no' otherwise; "
                     f"'nothing to reduce' if S(LSTM) < {NOTHING_TO_REDUCE}. A run 'learned' "
                     f"if e <= {SUCCESS_ERROR}."),
            "tasks": per_task}


# -- gradient flow and statistics -----------------------------------------------------------------
def gradient_flow(results, cfg):
    """Per task, cell and init: the median r over seeds at initialisation and after training,
    with verdicts; per cell, how many inits vanish at initialisation."""
    out = {}
    for task in cfg.tasks:
        rows = []
        for cell in cfg.cells:
            for init in cfg.inits:
                runs = [r for r in sweep(results)
                        if (r["task"], r["cell"], r["init"]) == (task, cell, init)]
                r0 = _median([gradient_ratio(r["grad_flow"][0]) for r in runs])
                r1 = _median([gradient_ratio(r["grad_flow"][-1]) for r in runs])
                rows.append({"cell": cell, "init": init, "ratio_init": r0,
                             "verdict_init": flow_verdict(r0), "ratio_final": r1,
                             "verdict_final": flow_verdict(r1)})
        out[task] = rows
    return {"rule": (f"r = ‖dL/dh̃_1‖ / ‖dL/dh̃_T‖ on the probe batch (median over seeds): "
                     f"vanishing if r < {VANISHING:g}, exploding if r > {EXPLODING:g}, else ok"),
            "tasks": out}


def statistics_growth(results, cfg):
    """Per task and cell, median over inits and seeds of the growth of the per-step statistics
    from the first to the last step, at initialisation and after training:
    c_var[T]/c_var[1] (batch variance of the raw cell c̃_t), and for BNLSTM the variance its
    recurrent normaliser divides by, norm_var_h[T]/norm_var_h[2] (step 1 has h_0 = 0)."""
    out = {}
    for task in cfg.tasks:
        rows = []
        for cell in cfg.cells:
            runs = [r for r in sweep(results) if r["task"] == task and r["cell"] == cell]
            row = {"cell": cell}
            for when, k in (("init", 0), ("final", -1)):
                stats = [r["grad_flow"][k]["stats"] for r in runs]
                row[f"c_var_growth_{when}"] = _median(
                    [s["c_var"][-1] / s["c_var"][0] for s in stats if s["c_var"][0] > 0])
                if cell == "bn_lstm":
                    row[f"var_h_growth_{when}"] = _median(
                        [s["norm_var_h"][-1] / s["norm_var_h"][1] for s in stats
                         if len(s["norm_var_h"]) > 1 and s["norm_var_h"][1] > 0])
            rows.append(row)
        out[task] = rows
    return {"rule": "growth = statistic at the last step / at the first step (median over runs)",
            "tasks": out}


# -- the claims -----------------------------------------------------------------------------------
def claim_a(results, cfg):
    """(a) Statistics shared by all time steps do not suit the recurrence."""
    rows, ratios = [], {}
    for task in cfg.tasks:
        runs = [r for r in sweep(results) if r["task"] == task and r["cell"] == "bn_lstm"
                and r.get("shared_stats_loss") is not None]
        good = [r for r in runs if learned(r)] or runs
        ratio = _median([r["shared_stats_loss"] / r["final_loss"] for r in good])
        ratios[task] = ratio
        rows.append({"task": task, "runs": len(good),
                     "only_runs_that_learned": any(map(learned, runs)),
                     "per_step_loss": _median([r["final_loss"] for r in good]),
                     "shared_loss": _median([r["shared_stats_loss"] for r in good]),
                     "ratio": ratio})
    vals = [v for v in ratios.values() if v is not None]
    verdict = ("undetermined" if not vals else "supported" if all(v > LOSS_RATIO for v in vals)
               else "not supported" if all(v <= LOSS_RATIO for v in vals) else "mixed")
    return {"id": "a", "title": "plain BN with statistics shared by all time steps does not "
                                "suit the recurrence",
            "rule": (f"trained BNLSTMs (the runs that learned, else all) evaluated with their "
                     f"per-step population statistics and with one set pooled over steps; "
                     f"supported if the median loss ratio shared/per-step > {LOSS_RATIO} on "
                     f"every task, not supported if <= {LOSS_RATIO} on every task, else mixed"),
            "verdict": verdict, "rows": rows}


def claim_b(results, cfg):
    """(b) Normalising only the input term with batch x time statistics is the safe form."""
    cells = [c for c in ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm") if c in cfg.cells]
    rows = {}
    for cell in cells:
        runs = [r for r in sweep(results) if r["cell"] == cell]
        gaps = [abs(r["trainmode_loss"] - r["final_loss"]) / r["final_loss"]
                for r in runs if r.get("trainmode_loss") is not None]
        rows[cell] = {"cell": cell,
                      "success_rate": sum(map(learned, runs)) / len(runs) if runs else None,
                      "train_eval_gap": _median(gaps),
                      "long_ratio": _long_ratio(results, cell, cfg),
                      "batch1_training": _first_check(runs, "batch1_training")}
    verdict, tests = "undetermined", []
    if "seq_bn_lstm" in rows and "bn_lstm" in rows:
        s, b = rows["seq_bn_lstm"], rows["bn_lstm"]
        tests = [_le(s["success_rate"], b["success_rate"], reverse=True),
                 _le(s["train_eval_gap"], b["train_eval_gap"]),
                 _le(s["long_ratio"], b["long_ratio"])]
        known = [t for t in tests if t is not None]
        if known:
            verdict = ("supported" if all(known) else "not supported" if not any(known)
                       else "mixed")
    return {"id": "b", "title": "normalising only the input term with batch × time statistics "
                                "(SeqBNLSTM) is the safe form",
            "rule": ("safe = (1) learns from at least as many (init, seed) runs as BNLSTM, "
                     "(2) its inference (population statistics) is at least as close to its "
                     "training mode (relative test-loss gap, median), (3) it loses no more past "
                     "T_max (median loss ratio at the longest length / at T, runs that learned); "
                     "supported if all three hold, not supported if none, else mixed"),
            "verdict": verdict, "tests": tests, "rows": list(rows.values())}


def _le(a, b, reverse=False):
    if a is None or b is None:
        return None
    return a >= b if reverse else a <= b


def _first_check(runs, key):
    for r in runs:
        if r.get("checks"):
            return r["checks"][key]
    return None


def _long_ratio(results, cell, cfg, key="loss"):
    """Median over adding runs that learned at T of loss(longest length) / loss(T)."""
    if not cfg.long_factors:
        return None
    longest = str(max(cfg.long_factors))
    runs = [r for r in sweep(results) if r["task"] == "adding" and r["cell"] == cell
            and learned(r) and r.get("long")]
    return _median([r["long"][longest][key] / r["final_loss"] for r in runs
                    if r["long"][longest].get(key) is not None])


def claim_c(results, cfg):
    """(c) Padding inside the statistics distorts them."""
    pad = [r for r in results if r["variable_length"] and r["final_loss"] is not None]
    rows, verdicts = [], []
    for cell in ("bn_lstm", "seq_bn_lstm"):
        runs = {m: [r for r in pad if r["cell"] == cell and r["pad_stats"] == m]
                for m in ("exclude", "include")}
        if not runs["exclude"] or not runs["include"]:
            continue
        shifts = []
        for r in runs["exclude"]:
            d = r["distortion"]
            shifts.append(max(max(d[k]) for k in d if k.startswith("shift_")))
        loss = {m: _median([r["final_loss"] for r in runs[m]]) for m in runs}
        full = {m: _median([r["full_length_loss"] for r in runs[m]]) for m in runs}
        shift, ratio = _median(shifts), loss["include"] / loss["exclude"]
        # the probe batch spans the length distribution: its valid fraction at the last step,
        # times the batch size, is what per-step statistics of a training batch see there
        rows_last = _median([cfg.batch_size * (1 - r["distortion"]["padded_fraction"][-1])
                             for r in runs["exclude"]])
        rows.append({"cell": cell, "valid_rows_last_step": rows_last, "max_shift": shift,
                     "loss_exclude": loss["exclude"],
                     "loss_include": loss["include"], "ratio": ratio,
                     "full_length_exclude": full["exclude"],
                     "full_length_include": full["include"],
                     "full_length_ratio": full["include"] / full["exclude"]})
        verdicts.append("supported" if shift > SHIFT and max(ratio, rows[-1]["full_length_ratio"])
                        > LOSS_RATIO else "partly" if shift > SHIFT else "not supported")
    verdict = ("undetermined" if not verdicts else verdicts[0] if len(set(verdicts)) == 1
               else "mixed")
    return {"id": "c", "title": "padding inside the statistics distorts them",
            "rule": (f"variable-length adding data (lengths U{{T/2..T}}), the BN cells trained "
                     f"with padded rows excluded from / included in the batch statistics. "
                     f"Distortion: on a padded batch, the largest (over steps and terms) mean "
                     f"shift |mean_incl − mean_excl| / std_excl of the exclude-trained models. "
                     f"Per cell: supported if the shift > {SHIFT} and including padding raises "
                     f"the median test loss (variable-length or full-length test set) by more "
                     f"than {LOSS_RATIO}×; 'partly' if only the statistics move; "
                     f"else not supported. valid_rows_last_step: the valid rows a training "
                     f"batch of {cfg.batch_size} has, on average, at the last step"),
            "verdict": verdict, "rows": rows}


def claim_d(results, cfg):
    """(d) Nothing is known past T_max."""
    rows = []
    for cell in cfg.cells:
        if "adding" not in cfg.tasks:
            break
        runs = [r for r in sweep(results) if r["task"] == "adding" and r["cell"] == cell
                and learned(r) and r.get("long")]
        row = {"cell": cell, "runs": len(runs), "loss_T": _median([r["final_loss"] for r in runs])}
        for factor in cfg.long_factors:
            key = str(factor)
            row[f"loss_{factor}T"] = _median([r["long"][key]["loss"] for r in runs])
            if cell == "bn_lstm":
                row[f"reestimated_{factor}T"] = _median(
                    [r["long"][key]["reestimated_loss"] for r in runs])
        rows.append(row)
    verdict, clamp_cost = "undetermined", None
    bn = next((r for r in rows if r["cell"] == "bn_lstm"), None)
    if bn and bn["runs"] and cfg.long_factors:
        f = max(cfg.long_factors)
        clamp_cost = bn[f"loss_{f}T"] / bn[f"reestimated_{f}T"]
        verdict = "supported" if clamp_cost > CLAMP_RATIO else "not supported"
    return {"id": "d", "title": "nothing is known past T_max",
            "rule": (f"adding runs that learned at T = T_max, evaluated on longer sequences. "
                     f"BNLSTM uses slot min(t, T_max − 1) (the Cooijmans rule); its "
                     f"'re-estimated' column copies the weights into a BNLSTM whose statistics "
                     f"are estimated on long sequences. Supported if, at the longest length, "
                     f"clamped loss / re-estimated loss > {CLAMP_RATIO} (the statistics of "
                     f"T_max do not describe later steps), else not supported"),
            "verdict": verdict, "clamp_cost": clamp_cost, "rows": rows}


def claim_e(results, cfg):
    """(e) LN needs no per-step statistics."""
    rows = []
    for cell in cfg.cells:
        runs = [r for r in sweep(results) if r["cell"] == cell and r.get("checks")]
        if not runs:
            continue
        deps = [r["checks"]["batch_dependence"] for r in runs]
        rows.append({"cell": cell,
                     "train_eval_difference": max(r["checks"]["train_eval_difference"]
                                                  for r in runs),
                     "batch1_training": runs[0]["checks"]["batch1_training"],
                     "batch_dependence": None if None in deps else max(deps),
                     "long_ratio": _long_ratio(results, cell, cfg)})
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
                     f"trains"),
            "verdict": verdict, "rows": rows}


def all_claims(results, cfg):
    return [claim_a(results, cfg), claim_b(results, cfg), claim_c(results, cfg),
            claim_d(results, cfg), claim_e(results, cfg)]
