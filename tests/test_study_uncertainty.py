"""The study's uncertainty: bootstrap intervals over seeds, verdicts stated on intervals, and the
twin runs that say which numbers are chaotic (refnorm/study/uncertainty.py, claims.py).

The verdicts are checked on synthetic results whose answer is known by construction: a clear
effect over enough seeds is supported, no effect or too few seeds is inconclusive, the opposite
effect is not supported."""
import numpy as np
import pytest

from refnorm.study import claims as C
from refnorm.study.experiment import TWIN_PERTURBATION, RunSpec, quick_config, run_one
from refnorm.study.uncertainty import (LEVEL, MIN_SEEDS, Bootstrap, above, all_of, at_most,
                                       below, combine, mean, median, spread)

INITS = ("gauss:0.2", "gauss:1", "orthogonal")


def run(task, cell, init, seed, e, **extra):
    return {"task": task, "cell": cell, "init": init, "seed": seed, "variable_length": False,
            "twin": False, "norm_error": e, **extra}


def synthetic(seeds, lstm_by_init, bn_by_init, noise=0.05, rng=0):
    """LSTM and BNLSTM runs of one task: e = the init's level + noise, clipped to [0, 1]."""
    g = np.random.default_rng(rng)
    out = []
    for cell, levels in (("lstm", lstm_by_init), ("bn_lstm", bn_by_init)):
        for init, level in zip(INITS, levels):
            for seed in seeds:
                out.append(run("adding", cell, init, seed,
                               float(np.clip(level + noise * g.standard_normal(), 0, 1))))
    return out


def config(seeds):
    return quick_config(seeds=tuple(seeds), inits=INITS, tasks=("adding",),
                        cells=("lstm", "bn_lstm"))


# -- the bootstrap ----------------------------------------------------------------------------------
def test_table_groups_runs_by_seed_and_pads_with_nan():
    boot = Bootstrap([3, 1, 2])
    t = boot.table([{"seed": 1, "v": 1.0}, {"seed": 3, "v": 3.0}, {"seed": 3, "v": None},
                    {"seed": 1, "v": 1.5}], lambda r: r["v"])
    assert t.shape == (3, 2)
    np.testing.assert_array_equal(t[0], [1.0, 1.5])                 # seed 1, the smallest
    assert np.isnan(t[1]).all()                                     # seed 2 has no run
    assert t[2, 0] == 3.0 and np.isnan(t[2, 1])                     # None is no value


def test_interval_of_a_mean_has_the_normal_width():
    """The mean of 40 seeds of N(0, 1): the percentile interval at LEVEL = 0.9 is about
    ±1.645 / sqrt(40) wide around the sample mean (the bootstrap's standard error is the sample
    standard deviation / sqrt(n)). Another level or resampling the runs instead of the seeds
    would miss it."""
    x = np.random.default_rng(1).standard_normal(40)
    boot = Bootstrap(range(40))
    est = boot.estimate(mean, boot.table([{"seed": k, "v": v} for k, v in enumerate(x)],
                                         lambda r: r["v"]))
    assert est["value"] == pytest.approx(x.mean())
    half = (est["hi"] - est["lo"]) / 2
    assert LEVEL == 0.9
    assert half == pytest.approx(1.645 * x.std() / np.sqrt(40), rel=0.15)
    assert est["lo"] < est["value"] < est["hi"]


def test_resamples_are_paired_and_fixed():
    """The same resamples for every statistic: a cell compared with itself differs by exactly
    0 in every resample, and a second Bootstrap of the same seeds gives the same interval."""
    runs = synthetic(range(8), (0.9, 0.1, 0.5), (0.9, 0.1, 0.5))
    cfg = config(range(8))
    boot = Bootstrap(cfg.seeds)
    t = [boot.table([r for r in runs if (r["cell"], r["init"]) == ("lstm", i)],
                    lambda r: r["norm_error"]) for i in INITS]
    diff = boot.estimate(lambda *a: spread(*a[:3]) - spread(*a[3:]), *t, *t)
    assert diff == {"value": 0.0, "lo": 0.0, "hi": 0.0, "seeds": 8}
    again = Bootstrap(cfg.seeds).estimate(spread, *t)
    assert again == boot.estimate(spread, *t)


def test_a_statistic_resting_on_few_seeds_is_never_definite():
    """One seed of twelve has a run (say, the only run that learned): the statistic is defined
    in about 63 % of the resamples, always with the same value, a zero-width interval. It
    counts one seed, so no verdict rests on it."""
    boot = Bootstrap(range(12))
    t = boot.table([{"seed": 0, "v": 1.0}], lambda r: r["v"])
    est = boot.estimate(median, t)
    assert est["value"] == est["lo"] == est["hi"] == 1.0 and est["seeds"] == 1
    assert above(est, 0.5) == "inconclusive"
    # no run in most resamples: no interval at all
    t = boot.table([], lambda r: r["v"])
    assert boot.estimate(median, t) == {"value": None, "lo": None, "hi": None, "seeds": 0}


# -- verdicts on intervals --------------------------------------------------------------------------
def est(lo, hi, seeds=10):
    return {"value": (lo + hi) / 2, "lo": lo, "hi": hi, "seeds": seeds}


@pytest.mark.parametrize("rule, interval, threshold, expected", [
    (above, (1.2, 1.5), 1.1, "supported"), (above, (0.9, 1.1), 1.1, "not supported"),
    (above, (1.0, 1.2), 1.1, "inconclusive"),
    (below, (-0.3, -0.1), 0.0, "supported"), (below, (0.0, 0.2), 0.0, "not supported"),
    (below, (-0.1, 0.1), 0.0, "inconclusive"),
    (at_most, (0.0, 0.0), 0.0, "supported"), (at_most, (0.01, 0.2), 0.0, "not supported"),
    (at_most, (-0.1, 0.1), 0.0, "inconclusive")])
def test_three_way_rules(rule, interval, threshold, expected):
    assert rule(est(*interval), threshold) == expected
    # too few seeds: nothing is definite, whatever the interval
    assert rule(est(*interval, seeds=MIN_SEEDS - 1), threshold) == "inconclusive"


def test_combining_verdicts():
    assert all_of(["supported"] * 3) == "supported"
    assert all_of(["supported", "inconclusive", "not supported"]) == "not supported"
    assert all_of(["supported", "inconclusive"]) == "inconclusive"
    assert combine(["supported", "supported"]) == "supported"
    assert combine(["supported", "not supported"]) == "mixed"
    assert combine(["supported", "inconclusive"]) == "inconclusive"
    assert combine([]) == "undetermined"


# -- the question's verdict ---------------------------------------------------------------------
def answer(seeds, lstm, bn, noise=0.05, rng=0):
    cfg = config(seeds)
    q = C.question(synthetic(seeds, lstm, bn, noise, rng), cfg)
    return q["tasks"]["adding"]


def test_a_clear_reduction_over_enough_seeds_is_a_yes():
    a = answer(range(10), lstm=(0.9, 0.1, 0.6), bn=(0.1, 0.1, 0.12))
    assert a["verdict"] == "yes"
    s = a["cells"]["lstm"]["S"]
    assert s["lo"] < 0.8 < s["hi"]                       # the interval covers the true S
    assert a["cells"]["bn_lstm"]["vs_plain"]["hi"] < 0


def test_the_same_effect_on_three_seeds_is_inconclusive():
    assert answer(range(3), lstm=(0.9, 0.1, 0.6), bn=(0.1, 0.1, 0.12))["verdict"] \
        == "inconclusive"


def test_no_difference_is_inconclusive_and_the_opposite_is_a_no():
    """Equal sensitivities straddle 0 on either seed set; a BNLSTM that depends on its init
    more than the LSTM is a 'no' on both."""
    for seeds in (range(10), range(10, 20)):
        same = answer(seeds, lstm=(0.8, 0.1, 0.5), bn=(0.8, 0.1, 0.5), rng=seeds[0] + 1)
        assert same["verdict"] == "inconclusive"
        worse = answer(seeds, lstm=(0.3, 0.2, 0.25), bn=(0.9, 0.1, 0.5), rng=seeds[0])
        assert worse["verdict"] == "no"


def test_nothing_to_reduce():
    a = answer(range(10), lstm=(0.05, 0.06, 0.05), bn=(0.05, 0.05, 0.06), noise=0.002)
    assert a["verdict"] == "nothing to reduce"


# -- claims on intervals ------------------------------------------------------------------------
def test_claim_a_on_intervals():
    """The shared-statistics loss ratio: clearly above 1.1 is supported, around 1.1 is
    inconclusive, clearly at 1 is not supported."""
    cfg = config(range(8))
    g = np.random.default_rng(3)

    def claim(level):
        runs = [run("adding", "bn_lstm", i, s, 0.05, final_loss=0.01,
                    shared_stats_loss=0.01 * (level + 0.02 * g.standard_normal()))
                for i in INITS for s in range(8)]
        return C.claim_a(runs, cfg)

    assert claim(2.0)["verdict"] == "supported"
    assert claim(1.0)["verdict"] == "not supported"
    assert claim(1.1)["verdict"] == "inconclusive"


# -- chaos: the twin runs -------------------------------------------------------------------------
def test_twins_mark_chaotic_numbers():
    cfg = config([0, 1])
    flow = [{"g_h": [1e-3, 1.0]}, {"g_h": [0.5, 1.0]}]
    runs = []
    for init, de in zip(INITS, (0.4, 1e-9, 0.0)):
        runs.append(run("adding", "lstm", init, 0, 0.5, grad_flow=flow))
        runs.append({**run("adding", "lstm", init, 0, 0.5 + de, grad_flow=flow), "twin": True})
    ch = C.chaos(runs, cfg)
    assert ch["chaotic"] == [("adding", "lstm", "gauss:0.2")]
    row = ch["rows"][0]
    assert row["chaotic_inits"] == 1 and row["max_e_change"] == pytest.approx(0.4)
    assert row["r_init_change"] == 0.0
    # twins are not part of the sweep: the question sees the originals only
    assert len(C.sweep(runs)) == 3


def test_a_twin_run_starts_from_weights_moved_by_rounding():
    """At initialisation the twin's gradient norms differ from its original's, by about the
    relative perturbation and not more: the perturbation is applied, and it is rounding-sized."""
    cfg = quick_config(backend="numpy", epochs=1, long_factors=())
    a = run_one(RunSpec("digits", "lstm", "orthogonal", 0), cfg)
    b = run_one(RunSpec("digits", "lstm", "orthogonal", 0, twin=True), cfg)
    g_a, g_b = (np.array(r["grad_flow"][0]["g_h"]) for r in (a, b))
    change = np.abs(g_a - g_b) / g_a
    assert change.max() > 0
    assert change.max() < 1e2 * TWIN_PERTURBATION
    assert b["twin"] is True and "twin" in RunSpec("digits", "lstm", "orthogonal", 0,
                                                   twin=True).label


# -- refnorm study --compare --------------------------------------------------------------------
def _report(folder, seeds, backend, question, claim_a, hidden=16):
    import json
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({
        "config": {"seeds": list(seeds), "backend": backend, "jobs": 2, "hidden_size": hidden},
        "question": {"tasks": {"adding": {"verdict": question, "cells": {
            "bn_lstm": {"reduces": question}}}}},
        "claims": [{"id": "a", "verdict": claim_a,
                    "rows": [{"task": "adding", "verdict": claim_a}]}]}))
    return str(folder)


def test_compare_reports_agreement_and_exits_1_on_a_contradiction(tmp_path, capsys):
    from refnorm.cli import main
    from refnorm.study.compare import agreement
    assert agreement(["yes", "yes"]) == "agree"
    assert agreement(["yes", "inconclusive"]) == "weaker"
    assert agreement(["supported", "not supported", "supported"]) == "CONTRADICTS"
    assert agreement(["supported", "mixed"]) == "CONTRADICTS"
    a = _report(tmp_path / "a", range(10), "numba", "yes", "supported")
    b = _report(tmp_path / "b", range(10, 20), "numba", "yes", "inconclusive")
    c = _report(tmp_path / "c", range(10), "numpy", "no", "supported")
    assert main(["study", "--compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "| question, adding | yes | yes | agree |" in out
    assert "| claim (a) | supported | inconclusive | weaker |" in out
    assert "a (seeds 0–9, numba)" in out and "b (seeds 10–19, numba)" in out
    assert main(["study", "--compare", a, b, c]) == 1
    out = capsys.readouterr().out
    assert "| question, adding | yes | yes | no | CONTRADICTS |" in out
    assert "2 verdict(s) contradicted" in out
    d = _report(tmp_path / "d", range(10), "numba", "yes", "supported", hidden=32)
    assert main(["study", "--compare", a, d]) == 0
    assert "also differ in hidden_size" in capsys.readouterr().out
    assert main(["study", "--compare", a, str(tmp_path / "none")]) == 2


# -- the rest of the thread: claims (g) and (h) on synthetic runs ----------------------------------
def _paired(cells_levels, seeds=range(10), task="adding", rng=5):
    g = np.random.default_rng(rng)
    return [run(task, cell, init, seed, float(np.clip(level + 0.03 * g.standard_normal(), 0, 1)))
            for cell, level in cells_levels.items() for init in INITS for seed in seeds]


def test_claim_g_vanilla_rnn():
    """BNRNN clearly worse than the RNN: supported; clearly better: not supported; too few
    seeds: inconclusive; without the RNN cells: undetermined."""
    cfg = quick_config(seeds=tuple(range(10)), inits=INITS, tasks=("adding",),
                       cells=("rnn", "bn_rnn", "ln_rnn"))
    worse = C.claim_g(_paired({"rnn": 0.2, "bn_rnn": 0.6, "ln_rnn": 0.2}), cfg)
    assert worse["verdict"] == "supported"
    assert {r["cell"] for r in worse["rows"]} == {"bn_rnn", "ln_rnn"}
    assert C.claim_g(_paired({"rnn": 0.6, "bn_rnn": 0.2, "ln_rnn": 0.2}), cfg)["verdict"] \
        == "not supported"
    few = quick_config(seeds=(0, 1, 2), inits=INITS, tasks=("adding",), cells=("rnn", "bn_rnn"))
    assert C.claim_g(_paired({"rnn": 0.2, "bn_rnn": 0.6}, seeds=range(3)), few)["verdict"] \
        == "inconclusive"
    assert C.claim_g([], config(range(10)))["verdict"] == "undetermined"


def test_claim_h_norm_between_layers():
    cfg = quick_config(seeds=tuple(range(10)), inits=INITS, tasks=("adding",),
                       cells=("lstm2", "lstm2_seq_bn", "lstm2_ln"))
    helps = C.claim_h(_paired({"lstm2": 0.5, "lstm2_seq_bn": 0.2, "lstm2_ln": 0.1}), cfg)
    assert helps["verdict"] == "supported" and len(helps["rows"]) == 2
    split = C.claim_h(_paired({"lstm2": 0.5, "lstm2_seq_bn": 0.2, "lstm2_ln": 0.8}), cfg)
    assert split["verdict"] == "mixed"
    assert [r["verdict"] for r in split["rows"]] == ["supported", "not supported"]
    # the question pairs each normalised model with its plain one across families
    assert C.plain_of("lstm2_ln") == "lstm2" and C.plain_of("bn_gru") == "gru"
    assert C.plain_of("seq_bn_rnn") == "rnn" and C.plain_of("gru") is None


# -- claim (f), Laurent et al. 2016, on synthetic runs ----------------------------------------------
def _laurent_runs(seq_early, seq_final, bn_e, seeds=range(10), rng=7):
    """LSTM, SeqBNLSTM and BNLSTM runs: 4 epochs of 8 steps; SeqBNLSTM's first-epoch training
    loss is seq_early × the LSTM's, its final test loss seq_final × the LSTM's (both learned);
    BNLSTM's error is bn_e against SeqBNLSTM's 0.05."""
    g = np.random.default_rng(rng)
    out = []
    for init in INITS:
        for seed in seeds:
            noise = lambda: 1 + 0.02 * g.standard_normal()              # noqa: E731
            lstm_loss = 1.0 * noise()
            for cell, early, final, e in (("lstm", 1.0, 0.010, 0.05),
                                          ("seq_bn_lstm", seq_early, 0.010 * seq_final, 0.05),
                                          ("bn_lstm", 1.0, 0.010, bn_e)):
                out.append(run("adding", cell, init, seed, e * noise(),
                               step_loss=[early * lstm_loss] * 8 + [0.1] * 24,
                               test_loss=[0.5, 0.2, 0.1, final], final_loss=final * noise()))
    return out


def test_claim_f_laurent():
    """Faster first epoch, no better test loss, no gain from the hidden term: supported. Each
    part reversed makes it not supported: no speed-up, a clearly better test loss, or a
    BNLSTM clearly better than SeqBNLSTM."""
    cfg = quick_config(seeds=tuple(range(10)), inits=INITS, tasks=("adding",),
                       cells=("lstm", "bn_lstm", "seq_bn_lstm"))
    holds = C.claim_f(_laurent_runs(seq_early=0.5, seq_final=1.0, bn_e=0.05), cfg)
    assert holds["verdict"] == "supported"
    row = holds["rows"][0]
    assert row["early_loss_ratio"]["value"] == pytest.approx(0.5, rel=0.05)
    for kwargs, part in (({"seq_early": 1.0}, "speeds_up"),
                         ({"seq_final": 0.5}, "no_better_generalisation"),
                         ({"bn_e": 0.01}, "hidden_does_not_help")):
        args = {"seq_early": 0.5, "seq_final": 1.0, "bn_e": 0.05, **kwargs}
        broken = C.claim_f(_laurent_runs(**args), cfg)
        assert broken["rows"][0][part] == "not supported", part
        assert broken["verdict"] == "not supported", part
