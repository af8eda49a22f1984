"""The study's results file: one JSON line per finished run, so that a study can be resumed.

    OUT/settings.json   the configuration and refnorm's version, written when a study starts
    OUT/runs.jsonl      {"run": label, "result": {...}} or {"run": label, "failed": message},
                        appended and fsynced by the driver as each run finishes

A study killed at any moment loses only the runs in flight: every line before the last one is
complete, and a last line cut short by the kill is dropped (the file is truncated back to the
last complete line) and its run redone. A run recorded as failed is redone on --resume; a label
recorded twice keeps its last record.

Every result the report reads has been through this file's JSON (json.dumps, then json.loads),
whether it was computed now or read back, so a resumed study and an uninterrupted one hand the
report the same numbers: Python's float repr round-trips every float64 exactly, NaN included.
"""
import json
import os

from .. import __version__

SETTINGS, RUNS = "settings.json", "runs.jsonl"
# settings a run's numbers do not depend on: a study may resume with other values of these
IGNORED_SETTINGS = ("jobs",)


class StudyFolderError(ValueError):
    """The output folder cannot take this study (as it stands, without --resume or with it)."""


def settings_of(cfg):
    return {"config": cfg.to_dict(), "refnorm": __version__}


def _differences(saved, current):
    """'name: saved there, current here' for each setting that differs."""
    out = []
    if saved.get("refnorm") != current["refnorm"]:
        out.append(f"refnorm version: {saved.get('refnorm')} there, {current['refnorm']} here")
    there, here = saved.get("config", {}), json.loads(json.dumps(current["config"]))
    for key in sorted(set(there) | set(here)):
        if key not in IGNORED_SETTINGS and there.get(key) != here.get(key):
            out.append(f"{key}: {there.get(key)!r} there, {here.get(key)!r} here")
    return out


class RunLog:
    """The results file of the study `cfg` in folder `out`; open() reads or starts it."""

    def __init__(self, out, cfg):
        self.out, self.cfg = out, cfg
        self.path = os.path.join(out, RUNS)
        self.settings_path = os.path.join(out, SETTINGS)
        self.records = {}              # label -> the record's last line, parsed

    def open(self, resume=False):
        """Check the folder against this study, read what it holds, start it if new. Without
        `resume` a folder holding results is refused, unless both it and this study are
        --quick smoke tests (then it starts over); with `resume`, one written with other
        settings is refused, naming them. Returns the number of finished runs read."""
        saved = self._saved_settings()
        has_runs = os.path.exists(self.path)
        if saved is not None and resume:
            diff = _differences(saved, settings_of(self.cfg))
            if diff:
                raise StudyFolderError(f"--resume: {self.out} was written with other settings ("
                                       + "; ".join(diff) + "): give the same options, or "
                                       "another --out for a new study")
        elif has_runs and not resume:
            if not (self.cfg.quick and saved and saved.get("config", {}).get("quick")):
                raise StudyFolderError(f"{self.out} holds the results of a study ({RUNS}): pass "
                                       "--resume to continue it, or give another --out")
            os.remove(self.path)
            has_runs = False
        os.makedirs(self.out, exist_ok=True)
        if saved is None or not resume:
            self._write_settings()
        if has_runs:
            self._read()
        return len(self.finished())

    def _saved_settings(self):
        try:
            with open(self.settings_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise StudyFolderError(f"{self.settings_path} is not readable JSON ({err}): give "
                                   "another --out") from None

    def _write_settings(self):
        with open(self.settings_path, "w") as f:
            json.dump(settings_of(self.cfg), f, indent=1)
            f.write("\n")

    def _read(self):
        """Every complete line; a last line cut short is cut off the file."""
        with open(self.path, "rb") as f:
            blob = f.read()
        good, lines = 0, blob.split(b"\n")
        for k, line in enumerate(lines):
            last = k == len(lines) - 1
            if last and not line:
                break                            # the file ends with a newline: all complete
            try:
                if last:
                    raise ValueError("no newline at the end")
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("run"), str):
                    raise ValueError("no run label")
            except ValueError as err:
                if last or all(not rest.strip() for rest in lines[k + 1:]):
                    break                        # a half-written last line: redo its run
                raise StudyFolderError(f"{self.path}: line {k + 1} is not a results line "
                                       f"({err}); it was not written by a killed study: "
                                       "give another --out") from None
            self.records[record["run"]] = record
            good += len(line) + 1
        if good < len(blob):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def finished(self):
        """label -> result of every run recorded as finished (not failed)."""
        return {label: r["result"] for label, r in self.records.items() if "result" in r}

    def failed(self):
        """label -> message of every run whose last record is a failure."""
        return {label: r["failed"] for label, r in self.records.items() if "failed" in r}

    def append(self, label, result=None, failed=None):
        """Record one run (its result, or why it failed), on disk before this returns; returns
        the result as read back from the line (what the report gets)."""
        record = {"run": label, "failed": failed} if failed is not None else \
            {"run": label, "result": result}
        line = json.dumps(record)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[label] = json.loads(line)
        return self.records[label].get("result")
