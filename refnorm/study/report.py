"""The report folder of `refnorm study`:

    report.md             the answer, one short section per claim with its verdict and rule
    results.json          every number: configuration, every run (curves, gradient norms per
                          step, statistics per step, evaluations), the tables and verdicts
    runs.csv              one row per run: final numbers
    curves.csv            one row per training step: loss, gradient norm
    epochs.csv            one row per epoch: test loss and metric
    gradient_flow.csv     one row per (run, epoch, step t): g_h, g_c and the step statistics
    headline.csv          the question's table: median, min, max of e per task, cell and init
    claims.csv            every claim's table, one row per (claim, row, field)
    *.png                 loss curves, cell × init heatmap, gradient norm vs t, statistics per
                          step, loss past T_max (matplotlib, Agg backend)
"""
import csv
import json
import math
import os

import numpy as np

from . import claims as C
from .claims import CELL_LABELS
from .uncertainty import Bootstrap, interval_text

PLOTS = ("heatmap.png", "loss_curves.png", "gradient_norms.png", "statistics.png",
         "long_sequences.png")


def fmt(value, digits=3):
    """A number for a table: 3 significant digits, scientific when small or large."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, dict):                   # an estimate: value [interval]
        return interval_text(value, lambda v: fmt(v, digits))
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value):
    """NaN and inf are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# -- tables and text ---------------------------------------------------------------------------
def analyse(results, cfg):
    boot = Bootstrap(cfg.seeds)          # one set of resamples of the seeds for every number
    return {"question": C.question(results, cfg, boot),
            "gradient_flow": C.gradient_flow(results, cfg, boot),
            "statistics": C.statistics_growth(results, cfg, boot),
            "claims": C.all_claims(results, cfg, boot), "chaos": C.chaos(results, cfg)}


def task_title(task, cfg):
    if task == "adding":
        return f"adding problem, T = {cfg.adding_length}"
    if task == "digits_pixels":
        return "digits (pixel by pixel, T = 64)"
    T = 8 if cfg.digits_mode == "row" else 64
    return f"digits ({cfg.digits_mode} by {cfg.digits_mode}, T = {T})"


def headline_rows(analysis, cfg, task):
    """Rows of the question's table: per cell, the median e over seeds per init with its
    interval, marked ~ where the twin run found it chaotic; S and the fraction that learned."""
    cells = analysis["question"]["tasks"][task]["cells"]
    chaotic = {tuple(k) for k in analysis["chaos"]["chaotic"]}
    rows = []
    for cell in cfg.cells:
        c = cells[cell]
        entries = [("~" if (task, cell, init) in chaotic else "")
                   + fmt(c["per_init"][init], 2) for init in cfg.inits]
        rows.append([CELL_LABELS[cell]] + entries + [fmt(c["S"], 2), _percent(c["success_rate"])])
    return ["cell"] + list(cfg.inits) + ["S (max − min)", "learned"], rows


def _percent(est):
    return interval_text(est, lambda v: f"{v:.0%}")


def reduction_rows(analysis, cfg, task):
    """Per normalised cell: S, S − S(plain cell) and the verdict."""
    cells = analysis["question"]["tasks"][task]["cells"]
    return (["cell", "compared with", "S", "S − S(plain)", "reduces the reliance on init?"],
            [[CELL_LABELS[c], CELL_LABELS[C.plain_of(c)], cells[c]["S"], cells[c]["vs_plain"],
              cells[c]["reduces"]] for c in cfg.cells if "vs_plain" in cells[c]])


def answer_sentences(analysis, cfg):
    out = []
    for task, entry in analysis["question"]["tasks"].items():
        bn = entry["answered_by"]
        if bn is None:
            continue
        cells, plain = entry["cells"], C.plain_of(bn)
        parts = ", ".join(f"{CELL_LABELS[c]} {fmt(cells[c]['S'])}" for c in cfg.cells)
        out.append(f"- **{task_title(task, cfg)}: {entry['verdict']}.** Across the "
                   f"{len(cfg.inits)} inits the median normalised error of {CELL_LABELS[bn]} "
                   f"spans {fmt(cells[bn]['best'])}–{fmt(cells[bn]['worst'])}, the "
                   f"{CELL_LABELS[plain]}'s {fmt(cells[plain]['best'])}–"
                   f"{fmt(cells[plain]['worst'])} (init sensitivity S with its 90 % interval: "
                   f"{parts}); runs that learned: "
                   + ", ".join(f"{CELL_LABELS[c]} {_percent(cells[c]['success_rate'])}"
                               for c in cfg.cells) + ".")
    return out


def claim_section(claim, cfg):
    lines = [f"## Claim ({claim['id']}): {claim['title']}", "",
             f"**Verdict: {claim['verdict']}.** Rule: {claim['rule']}.", ""]
    rows = claim["rows"]
    if not rows:
        lines.append("No run measured this claim in this configuration.")
        return "\n".join(lines)
    header = list(rows[0])
    if claim["id"] in ("b", "d"):
        header = list(dict.fromkeys(k for r in rows for k in r))
    table = [[CELL_LABELS.get(r.get(k), r.get(k)) if k in ("cell", "compared_with")
              else r.get(k) for k in header] for r in rows]
    lines.append(md_table(header, table))
    if claim["id"] == "b" and claim.get("tests"):
        names = {"success_rate": "learns at least as often (rate difference BN − SeqBN)",
                 "train_eval_gap": "train/eval gap no larger (SeqBN − BN)",
                 "long_ratio": "loses no more past T_max (SeqBN − BN)"}
        lines += ["", "SeqBNLSTM against BNLSTM: " + "; ".join(
            f"{names[t['test']]}: {fmt(t['difference'])}, {t['verdict']}"
            for t in claim["tests"]) + "."]
    if claim["id"] == "d" and claim.get("clamp_cost") is not None:
        lines += ["", f"Clamped / re-estimated loss of BNLSTM at the longest length: "
                      f"{fmt(claim['clamp_cost'])}."]
    if claim["id"] == "c":
        bn = next((r for r in rows if r["cell"] == "bn_lstm"), None)
        if bn:
            lines += ["", f"With padding excluded, BNLSTM's per-step statistics at the last step "
                          f"rest on the valid rows of that step alone: "
                          f"{fmt(bn['valid_rows_last_step'], 2)} of a batch of "
                          f"{cfg.batch_size} on average (a step with a single valid row "
                          f"normalises to β, hiding its input). SeqBNLSTM pools every valid "
                          f"frame of the batch and never runs short."]
    if claim["id"] == "a":
        lines += ["", "This is an inference-time ablation of models trained with per-step "
                      "statistics (no cell change); training with shared statistics would let "
                      "the weights adapt to them."]
    return "\n".join(lines)


SETTLED = 1e-6     # a relative change below this, from a 1e-14 perturbation, is not chaos


def chaos_section(analysis, cfg):
    ch = analysis["chaos"]
    lines = ["## What a rerun changes", "",
             f"Every number above that comes from training carries a 90 % interval over "
             f"resamples of the {len(cfg.seeds)} seeds, and every verdict is stated on "
             f"intervals, so that a rerun with other seeds should not reverse it. Another "
             f"machine or backend (the Numba loops' fused multiply-adds against the NumPy book, "
             f"another CPU's BLAS) changes only rounding, but where training is chaotic a "
             f"change of rounding grows into a different result: those runs differ across "
             f"machines and backends about as much as across seeds. Which ones: {ch['rule']}.",
             ""]
    if not ch["rows"]:
        return "\n".join(lines + ["No twin runs in this study (twins off)."])
    rows = [[task_title(r["task"], cfg), CELL_LABELS[r["cell"]],
             f"{r['chaotic_inits']} of {r['inits']}", r["max_e_change"], r["r_init_change"],
             r["r_final_change"]] for r in ch["rows"]]
    worst = {k: max((r[k] for r in ch["rows"] if r[k] is not None), default=None)
             for k in ("r_init_change", "r_final_change")}
    chaotic = sum(r["chaotic_inits"] for r in ch["rows"])
    lines += [md_table(["task", "cell", "chaotic inits", "largest |Δe|",
                        "r at init: largest relative change", "r trained"], rows), "",
              (f"Not chaotic: the gradient ratios at initialisation (the twins move them by "
               f"{fmt(worst['r_init_change'])} at most, relative: no training yet), "
               if (worst["r_init_change"] or 0) < SETTLED else
               f"The gradient ratios at initialisation move by up to "
               f"{fmt(worst['r_init_change'])} (relative; see the table): for those (task, cell) "
               f"the untrained forward pass itself amplifies rounding over the sequence. Not "
               f"chaotic: ")
              + f"claim (e)'s "
              f"exact checks, every forward and backward pass (they agree with the float64 book "
              f"to rounding). Chaotic: the errors of the {chaotic} (task, cell, init) marked ~ "
              f"in the tables above, and the trained gradient ratios everywhere (the twins move "
              f"them by up to {fmt(worst['r_final_change'])}×, relative). A rerun elsewhere "
              f"moves these numbers about as another seed would: within about their intervals, "
              f"which is why the verdicts are stated on intervals."]
    return "\n".join(lines)


def markdown(results, analysis, cfg, elapsed, plots, where=None, resumed=0):
    q = analysis["question"]
    n_runs = len(results)
    lines = ["# refnorm study: does batch norm help a recurrent network?", ""]
    if cfg.quick:
        lines += ["> **Smoke test (`--quick`).** Tiny sizes, to show that the pipeline runs: "
                  "the numbers and verdicts below mean nothing. Run `refnorm study` without "
                  "--quick for the answer.", ""]
    done = (f"{n_runs} training runs ({resumed} read back from an interrupted study's "
            f"runs.jsonl by --resume; the rest in {elapsed / 60:.1f} min)" if resumed
            else f"{n_runs} training runs in {elapsed / 60:.1f} min")
    lines += [f"{done} (backend `{cfg.backend}`, {where or f'{cfg.jobs} process(es)'}"
             f"{', --quick' if cfg.quick else ''}). Cells "
             f"{', '.join(CELL_LABELS[c] for c in cfg.cells)}; hidden size {cfg.hidden_size}; "
             f"inits {', '.join(cfg.inits)}; seeds {', '.join(map(str, cfg.seeds))}; "
             f"{cfg.epochs} epochs of Adam (lr {cfg.lr:g}, batch {cfg.batch_size}, gradient "
             f"norm clipped at {cfg.clip:g}); refnorm's own forward and backward passes. "
             "Every number below comes from this run (`results.json`, `*.csv`).", "",
             "## The question: does batch norm reduce the reliance on good initialisation?", ""]
    lines += answer_sentences(analysis, cfg)
    lines += ["", f"Rule: {q['rule']}", ""]
    for task in cfg.tasks:
        header, rows = headline_rows(analysis, cfg, task)
        lines += [f"Normalised test error e, median over seeds [90 % interval], "
                  f"{task_title(task, cfg)} (~: chaotic, see 'What a rerun changes'):", "",
                  md_table(header, rows), ""]
        header, rows = reduction_rows(analysis, cfg, task)
        if rows:
            lines += [md_table(header, rows), ""]
    if plots:
        lines += ["![cell × init heatmap](heatmap.png)", ""]
    lines += ["## Training", "", "Loss curves (training loss per step, smoothed, median over "
              "seeds): `loss_curves.png`.", ""]
    if plots:
        lines += ["![loss curves](loss_curves.png)", ""]
    gf = analysis["gradient_flow"]
    lines += ["## Gradient flow", "", f"Rule: {gf['rule']}.", ""]
    for task in cfg.tasks:
        rows = [[CELL_LABELS[r["cell"]], r["init"], r["ratio_init"], r["verdict_init"],
                 r["ratio_final"], r["verdict_final"]] for r in gf["tasks"][task]]
        lines += [f"{task_title(task, cfg)}:", "",
                  md_table(["cell", "init", "r at init", "verdict", "r trained", "verdict"],
                           rows), ""]
    if plots:
        lines += ["![gradient norm per step](gradient_norms.png)", ""]
    st = analysis["statistics"]
    lines += ["## Statistics per step", "",
              "How the statistics a normaliser would need change with t: the batch variance of "
              "the hidden state h_t, of the raw cell c̃_t (LSTM cells) and, for BNLSTM, of the "
              "recurrent term h_{t−1}Wh (from step 2: "
              f"h_0 = 0). {st['rule']}.", ""]
    for task in cfg.tasks:
        rows = [[CELL_LABELS[r["cell"]], r["h_var_growth_init"], r["h_var_growth_final"],
                 r["c_var_growth_init"], r["c_var_growth_final"],
                 r.get("var_h_growth_init"), r.get("var_h_growth_final")]
                for r in st["tasks"][task]]
        lines += [f"{task_title(task, cfg)}:", "",
                  md_table(["cell", "var h: last/first, init", "trained",
                            "var c̃: last/first, init", "trained",
                            "BN var(hWh): last/second, init", "trained"], rows), ""]
    if plots:
        lines += ["![statistics per step](statistics.png)", ""]
    for claim in analysis["claims"]:
        lines += [claim_section(claim, cfg), ""]
        if claim["id"] == "d" and "long_sequences.png" in plots:
            lines += ["![loss past T_max](long_sequences.png)", ""]
    lines += [chaos_section(analysis, cfg), ""]
    lines += ["## Files", "", "`results.json` (everything), `runs.csv`, `curves.csv`, "
              "`epochs.csv`, `gradient_flow.csv`, `headline.csv`, `claims.csv`"
              + "".join(f", `{p}`" for p in plots) + "."]
    return "\n".join(lines) + "\n"


# -- CSV ------------------------------------------------------------------------------------------
def _at(values, t):
    return None if values is None else values[t]


RUN_KEYS = ("task", "cell", "init", "seed", "pad_stats", "variable_length", "twin")


def _write_csv(out, name, header, rows):
    with open(os.path.join(out, name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_csvs(results, analysis, cfg, out):
    factors = [str(f) for f in cfg.long_factors]

    def run_row(r):
        checks, long = r.get("checks") or {}, r.get("long") or {}
        return ([r.get(k) for k in RUN_KEYS] + [
            r["diverged"], r["final_loss"], r["final_metric"], r["norm_error"],
            r.get("trainmode_loss"), r.get("shared_stats_loss"), r.get("full_length_loss"),
            C.gradient_ratio(r["grad_flow"][0]), C.gradient_ratio(r["grad_flow"][-1]),
            checks.get("train_eval_difference"), checks.get("batch_dependence"),
            checks.get("batch1_training"), r["seconds"]]
            + [long.get(k, {}).get("loss") for k in factors]
            + [long.get(k, {}).get("reestimated_loss") for k in factors])

    _write_csv(out, "runs.csv", list(RUN_KEYS) + [
        "diverged", "final_loss", "final_metric", "norm_error", "trainmode_loss",
        "shared_stats_loss", "full_length_loss", "ratio_init", "ratio_final",
        "train_eval_difference", "batch_dependence", "batch1_training", "seconds"]
        + [f"loss_{k}T" for k in factors] + [f"reestimated_{k}T" for k in factors],
        (run_row(r) for r in results))
    _write_csv(out, "curves.csv", list(RUN_KEYS) + ["step", "loss", "grad_norm"],
               ([r.get(k) for k in RUN_KEYS] + [step, loss, norm] for r in results
                for step, (loss, norm) in enumerate(zip(r["step_loss"], r["grad_norm"]))))
    _write_csv(out, "epochs.csv", list(RUN_KEYS) + ["epoch", "test_loss", "test_metric"],
               ([r.get(k) for k in RUN_KEYS] + [epoch, loss, metric] for r in results
                for epoch, (loss, metric) in enumerate(zip(r["test_loss"], r["test_metric"]),
                                                       1)))

    def flow_rows(r):
        for flow in r["grad_flow"]:
            s = flow["stats"]
            for t in range(len(flow["g_x"] if flow.get("g_x") is not None else flow["g_h"])):
                yield [r.get(k) for k in RUN_KEYS] + [
                    flow["epoch"], t + 1, _at(flow["g_h"], t), _at(flow["g_c"], t),
                    _at(flow.get("g_x"), t), _at(s.get("h_var"), t), _at(s.get("c_var"), t),
                    s["norm_var_c"][t] if "norm_var_c" in s else None,
                    s["norm_var_h"][t] if "norm_var_h" in s else None]

    _write_csv(out, "gradient_flow.csv", list(RUN_KEYS) + [
        "epoch", "t", "g_h", "g_c", "g_x", "h_var", "c_var", "norm_var_c", "norm_var_h"],
        (row for r in results for row in flow_rows(r)))
    _write_csv(out, "headline.csv", ["task", "cell", "init", "median_e", "lo_90", "hi_90",
                                     "min_e", "max_e", "seeds"],
               ([task, cell, init, v["value"], v["lo"], v["hi"], v["min"], v["max"], v["n"]]
                for task, entry in analysis["question"]["tasks"].items()
                for cell, c in entry["cells"].items() for init, v in c["per_init"].items()))

    def value_lo_hi(value):
        if isinstance(value, dict):
            return [value["value"], value["lo"], value["hi"]]
        return [value, None, None]

    _write_csv(out, "claims.csv", ["claim", "verdict", "row", "field", "value", "lo_90", "hi_90"],
               ([claim["id"], claim["verdict"], k, field] + value_lo_hi(value)
                for claim in analysis["claims"] for k, row in enumerate(claim["rows"])
                for field, value in row.items()))


# -- plots ----------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _init_colors(cfg):
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {init: cmap(k % 10) for k, init in enumerate(cfg.inits)}


def _log_y(ax):
    """Log y axis with plain tick labels (0.1, 2, ...) instead of 2×10⁰."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _smooth(values, window):
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_heatmap(analysis, cfg, path):
    plt = _pyplot()
    tasks = cfg.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.3 * len(cfg.inits) * len(tasks) + 2, 3.4),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        cells = analysis["question"]["tasks"][task]["cells"]
        data = np.array([[np.nan if cells[c]["per_init"][i]["value"] is None
                          else cells[c]["per_init"][i]["value"] for i in cfg.inits]
                         for c in cfg.cells])
        im = ax.imshow(data, cmap="viridis_r", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(cfg.inits)), cfg.inits, rotation=30, ha="right")
        ax.set_yticks(range(len(cfg.cells)),
                      [CELL_LABELS[c] for c in cfg.cells] if ax is axes[0][0] else [])
        for (y, x), v in np.ndenumerate(data):
            ax.text(x, y, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if not np.isnan(v) and v > 0.5 else "black", fontsize=9)
        ax.set_title(f"{task_title(task, cfg)}\nmedian normalised test error")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="e (0 = perfect, 1 = chance)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _task_cell_grid(cfg):
    """A figure with one panel per (task, cell): (fig, axes, [(col, task, cell, axis), ...])."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(cfg.tasks), len(cfg.cells), figsize=(3.2 * len(cfg.cells),
                             2.8 * len(cfg.tasks)), squeeze=False, sharey="row")
    panels = [(col, task, cell, axes[row][col]) for row, task in enumerate(cfg.tasks)
              for col, cell in enumerate(cfg.cells)]
    return fig, axes, panels


def _label_panel(ax, cell, task, col, xlabel, ylabel):
    ax.set_title(f"{CELL_LABELS[cell]} — {task}", fontsize=10)
    ax.set_xlabel(xlabel)
    if col == 0:
        ax.set_ylabel(ylabel)


def _finish_grid(fig, axes, path, legend_loc):
    axes[0][-1].legend(fontsize=7, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_loss_curves(results, cfg, path):
    colors = _init_colors(cfg)
    fig, axes, panels = _task_cell_grid(cfg)
    for col, task, cell, ax in panels:
        for init in cfg.inits:
            runs = [r["step_loss"] for r in C.sweep(results)
                    if (r["task"], r["cell"], r["init"]) == (task, cell, init)]
            n = min(map(len, runs), default=0)
            if n == 0:
                continue
            curve = np.median([r[:n] for r in runs], axis=0)
            smooth = _smooth(curve, max(n // 25, 1))
            ax.plot(np.arange(len(smooth)) + (n - len(smooth)), smooth, color=colors[init],
                    label=init, lw=1.2)
        _log_y(ax)
        _label_panel(ax, cell, task, col, "training step", "training loss")
    _finish_grid(fig, axes, path, "upper right")


def plot_gradient_norms(results, cfg, path):
    colors = _init_colors(cfg)
    fig, axes, panels = _task_cell_grid(cfg)
    for col, task, cell, ax in panels:
        for init in cfg.inits:
            runs = [r for r in C.sweep(results)
                    if (r["task"], r["cell"], r["init"]) == (task, cell, init)]
            if not runs or runs[0]["grad_flow"][0]["g_h"] is None:
                continue
            for k, style, lw in ((0, "-", 1.4), (-1, "--", 0.9)):
                g = np.median([r["grad_flow"][k]["g_h"] for r in runs], axis=0)
                t = np.arange(1, len(g) + 1)
                ax.plot(t, np.where(g > 0, g, np.nan), style, color=colors[init], lw=lw,
                        label=init if k == 0 else None)
        ax.set_yscale("log")
        _label_panel(ax, cell, task, col, "time step t", "‖dL/dh̃_t‖  (— init, -- trained)")
    _finish_grid(fig, axes, path, "lower right")


def plot_statistics(results, cfg, path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(4.5 * len(cfg.tasks), 3.2),
                             squeeze=False)
    for ax, task in zip(axes[0], cfg.tasks):
        for k, cell in enumerate(cfg.cells):
            runs = [r for r in C.sweep(results) if (r["task"], r["cell"]) == (task, cell)]
            if not runs or "c_var" not in runs[0]["grad_flow"][0]["stats"]:
                continue
            color = f"C{k}"
            for idx, style in ((0, "-"), (-1, "--")):
                v = np.median([r["grad_flow"][idx]["stats"]["c_var"] for r in runs], axis=0)
                ax.plot(np.arange(1, len(v) + 1), v, style, color=color,
                        label=CELL_LABELS[cell] if idx == 0 else None)
        _log_y(ax)
        ax.set_xlabel("time step t")
        ax.set_ylabel("batch variance of c̃_t  (— init, -- trained)")
        ax.set_title(task_title(task, cfg), fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_long_sequences(analysis, cfg, path):
    plt = _pyplot()
    claim = next(c for c in analysis["claims"] if c["id"] == "d")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    lengths = [cfg.adding_length] + [f * cfg.adding_length for f in cfg.long_factors]
    for k, row in enumerate(claim["rows"]):
        if row["runs"] == 0:
            continue
        row = {key: v["value"] if isinstance(v, dict) else v for key, v in row.items()}
        ys = [row["loss_T"]] + [row[f"loss_{f}T"] for f in cfg.long_factors]
        ax.plot(lengths, ys, "o-", color=f"C{k}",
                label=f"{CELL_LABELS[row['cell']]}" + (" (slots clamped)"
                                                       if row["cell"] == "bn_lstm" else ""))
        if row["cell"] == "bn_lstm":
            ys = [row["loss_T"]] + [row[f"reestimated_{f}T"] for f in cfg.long_factors]
            ax.plot(lengths, ys, "o--", color=f"C{k}", label="BNLSTM (re-estimated)")
    ax.axhline(1 / 6, color="gray", lw=0.8, ls=":", label="predict the mean")
    ax.axvline(cfg.adding_length, color="gray", lw=0.8)
    _log_y(ax)
    ax.set_xlabel(f"sequence length (trained on T = {cfg.adding_length})")
    ax.set_ylabel("test MSE (runs that learned)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results, analysis, cfg, out):
    """Draw every plot; returns the names of the files written."""
    plot_heatmap(analysis, cfg, os.path.join(out, "heatmap.png"))
    plot_loss_curves(results, cfg, os.path.join(out, "loss_curves.png"))
    plot_gradient_norms(results, cfg, os.path.join(out, "gradient_norms.png"))
    plot_statistics(results, cfg, os.path.join(out, "statistics.png"))
    if "adding" not in cfg.tasks or not cfg.long_factors:
        return list(PLOTS[:4])
    plot_long_sequences(analysis, cfg, os.path.join(out, "long_sequences.png"))
    return list(PLOTS)


# -- everything -----------------------------------------------------------------------------------
def write_report(results, cfg, out, elapsed, *, plots=True, versions=None, where=None,
                 resumed=0):
    """Write the report folder; returns the analysis (tables and verdicts). where: how the
    runs ran (default: cfg.jobs local processes); resumed: how many came from runs.jsonl."""
    os.makedirs(out, exist_ok=True)
    analysis = analyse(results, cfg)
    payload = _clean({"config": cfg.to_dict(), "elapsed_seconds": elapsed,
                      "versions": versions or {}, **analysis, "runs": results})
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, default=_json_default, indent=1, allow_nan=False)
    write_csvs(results, analysis, cfg, out)
    drawn = write_plots(results, analysis, cfg, out) if plots else []
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(results, analysis, cfg, elapsed, drawn, where, resumed))
    return analysis
