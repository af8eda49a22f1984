"""How sure the study is: every number of the report with a bootstrap interval over seeds, every
verdict a rule on intervals.

A seed fixes everything random in its runs (the task's data, the initial weights, the batch
order), and every cell and init of one seed shares them. Seeds are therefore the independent
units: the bootstrap resamples seeds with replacement, and it uses the same resamples for every
statistic, so a difference between two cells is resampled seed by seed (paired).

    estimate   {"value", "lo", "hi", "seeds"}: the statistic on the runs as they are, and the
               central LEVEL of its values over RESAMPLES resamples of the seeds (percentile
               bootstrap); no interval when the statistic is undefined (no run to take it
               from) in more than half of the resamples. "seeds" counts the seeds that have a
               value (a statistic of the runs that learned may rest on a few)
    verdict    "supported" when the whole interval lies on the claim's side of its threshold,
               "not supported" when it lies wholly on the other side, "inconclusive" when it
               straddles the threshold, and "inconclusive" when it rests on fewer than
               MIN_SEEDS seeds whatever the interval (a bootstrap over 3 seeds has 10 distinct
               resamples; over one, a zero-width interval)

    B = Bootstrap(cfg.seeds)
    t = B.table(runs, lambda r: r["norm_error"])         # (seeds, runs per seed), NaN-padded
    s = B.estimate(median, t)                            # {"value", "lo", "hi", "seeds"}
    above(s, 1.1)                                        # "supported" if lo > 1.1
"""
import warnings

import numpy as np

RESAMPLES = 2000      # resamples of the seeds (fixed generator: the same resamples every time)
LEVEL = 0.90          # central 90 %: each end of the interval leaves out 5 % of the resamples
MIN_SEEDS = 5         # below this no verdict is definite
VERDICTS = ("supported", "not supported", "inconclusive")


class Bootstrap:
    """The seeds of a study and one fixed set of resamples of them (the same for every
    statistic, and the same for the same seeds: the report is reproducible)."""

    def __init__(self, seeds):
        self.seeds = sorted(set(seeds))
        self.index = {s: k for k, s in enumerate(self.seeds)}
        n = len(self.seeds)
        self.draws = np.random.default_rng(20161004).integers(0, n, (RESAMPLES, n))

    @property
    def n(self):
        return len(self.seeds)

    def table(self, runs, value):
        """(seeds, m) array of value(run), row k holding the runs of the k-th seed, NaN where a
        seed has fewer runs or value is None or not finite."""
        rows = [[] for _ in self.seeds]
        for r in runs:
            v = value(r)
            rows[self.index[r["seed"]]].append(np.nan if v is None else float(v))
        m = max((len(row) for row in rows), default=0)
        out = np.full((self.n, max(m, 1)), np.nan)
        for k, row in enumerate(rows):
            out[k, :len(row)] = row
        return out

    def estimate(self, statistic, *tables):
        """statistic(*arrays) -> (K,) values, each array (K, N) (one row per resample, the runs
        of the resampled seeds side by side), on the tables as they are (K = 1) and on every
        resample (K = RESAMPLES). Returns the estimate dict."""
        whole = [t.reshape(1, -1) for t in tables]
        drawn = [t[self.draws].reshape(RESAMPLES, -1) for t in tables]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            value = float(np.asarray(statistic(*whole), dtype=float)[0])
            samples = np.asarray(statistic(*drawn), dtype=float)
        value = value if np.isfinite(value) else None
        # the seeds the statistic rests on: those with a value in every table
        seeds = min(int(np.isfinite(t).any(axis=1).sum()) for t in tables)
        finite = samples[np.isfinite(samples)]
        if len(finite) < RESAMPLES / 2 or value is None:
            return {"value": value, "lo": None, "hi": None, "seeds": seeds}
        tail = 100 * (1 - LEVEL) / 2
        lo, hi = np.percentile(finite, [tail, 100 - tail])
        return {"value": value, "lo": float(lo), "hi": float(hi), "seeds": seeds}


# -- statistics of (K, N) arrays, NaN meaning "no run" -------------------------------------------
def median(a):
    return np.nanmedian(a, axis=1)


def mean(a):
    return np.nanmean(a, axis=1)


def spread(*per_init):
    """S: max − min over inits of the median over seeds (one array per init)."""
    medians = np.stack([median(a) for a in per_init])
    return np.nanmax(medians, axis=0) - np.nanmin(medians, axis=0)


# -- verdicts on intervals --------------------------------------------------------------------------
def _definite(est):
    return est is not None and est["lo"] is not None and est["seeds"] >= MIN_SEEDS


def above(est, threshold):
    """The claim is "the statistic exceeds threshold"."""
    if not _definite(est):
        return "inconclusive"
    return ("supported" if est["lo"] > threshold else
            "not supported" if est["hi"] <= threshold else "inconclusive")


def below(est, threshold):
    """The claim is "the statistic is below threshold"."""
    if not _definite(est):
        return "inconclusive"
    return ("supported" if est["hi"] < threshold else
            "not supported" if est["lo"] >= threshold else "inconclusive")


def at_most(est, threshold):
    """The claim is "the statistic is no larger than threshold" (equality holds: an interval
    [0, 0] at threshold 0 supports it)."""
    if not _definite(est):
        return "inconclusive"
    return ("supported" if est["hi"] <= threshold else
            "not supported" if est["lo"] > threshold else "inconclusive")


def all_of(verdicts):
    """A claim made of parts that must all hold: supported if every part is, not supported if
    any part is not, else inconclusive."""
    verdicts = list(verdicts)
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "not supported" if "not supported" in verdicts else "inconclusive"


def combine(verdicts):
    """One verdict from the same rule applied to several subjects (tasks, cells): theirs when
    they agree, "mixed" when definite verdicts differ, else inconclusive."""
    verdicts = list(verdicts)
    if not verdicts:
        return "undetermined"
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return "inconclusive" if "inconclusive" in verdicts else "mixed"


def interval_text(est, fmt):
    """'0.91 [0.85–0.95]', '0.91' without an interval, '–' without a value."""
    if est is None or est["value"] is None:
        return "–"
    if est["lo"] is None:
        return fmt(est["value"])
    return f"{fmt(est['value'])} [{fmt(est['lo'])}–{fmt(est['hi'])}]"
