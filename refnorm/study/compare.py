"""`refnorm study --compare DIR DIR ...`: do the verdicts of several reports agree?

The check behind "verdicts that survive a rerun": run the study with another seed set
(`--seeds 10 11 ...`) or on the other backend (`--backend numpy`), then compare the reports.
Every verdict of every report is one cell of a table, one row per verdict:

    agree        the same verdict in every report
    weaker       definite in some reports, inconclusive in others (a rerun did not reverse it,
                 but did not confirm it either)
    CONTRADICTS  different definite verdicts (supported / not supported, yes / no, ...): a
                 verdict that did not survive; the command exits 1

"mixed" and "nothing to reduce" count as definite verdicts of their own.
"""
import json
import os

from .claims import CELL_LABELS

UNDECIDED = ("inconclusive", "undetermined", "–")      # "–": a report without that verdict


def load(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def verdicts(report):
    """{row label: verdict} of one report's results.json."""
    out = {}
    for task, entry in report["question"]["tasks"].items():
        out[f"question, {task}"] = entry["verdict"]
        for cell, c in entry["cells"].items():
            if "reduces" in c:
                out[f"question, {task}: {CELL_LABELS.get(cell, cell)} reduces S"] = c["reduces"]
    for claim in report["claims"]:
        out[f"claim ({claim['id']})"] = claim["verdict"]
        for row in claim["rows"]:
            if "verdict" in row:
                subject = row.get("task") or CELL_LABELS.get(row.get("cell"), row.get("cell"))
                out[f"claim ({claim['id']}), {subject}"] = row["verdict"]
    return out


def agreement(values):
    definite = {v for v in values if v not in UNDECIDED}
    if len(set(values)) == 1:
        return "agree"
    return "CONTRADICTS" if len(definite) > 1 else "weaker"


def describe(report):
    cfg = report["config"]
    seeds = cfg["seeds"]
    span = (f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 2
            and seeds == list(range(seeds[0], seeds[-1] + 1)) else " ".join(map(str, seeds)))
    return f"seed{'s' * (len(seeds) > 1)} {span}, {cfg['backend']}"


RERUN_SETTINGS = ("seeds", "backend", "jobs")     # what a rerun may change


def other_settings(reports):
    """The settings, besides RERUN_SETTINGS, in which the reports differ."""
    configs = [r["config"] for r in reports]
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if k not in RERUN_SETTINGS
            and len({json.dumps(c.get(k)) for c in configs}) > 1]


def compare(folders):
    """(table text, number of contradictions) for the reports in `folders`."""
    reports = [load(f) for f in folders]
    per_report = [verdicts(r) for r in reports]
    rows = list(dict.fromkeys(k for v in per_report for k in v))
    header = ["verdict"] + [f"{os.path.basename(os.path.normpath(f))} ({describe(r)})"
                            for f, r in zip(folders, reports)] + ["rerun"]
    differ = other_settings(reports)
    lines = ([f"Note: these reports also differ in {', '.join(differ)}: not reruns of one study."]
             if differ else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    contradictions = 0
    for row in rows:
        values = [v.get(row, "–") for v in per_report]
        status = agreement(values)
        contradictions += status == "CONTRADICTS"
        lines.append("| " + " | ".join([row] + values + [status]) + " |")
    return "\n".join(lines), contradictions
