"""Population statistics of the BN cells (BNLSTM, SeqBNLSTM, BNRNN with both term forms,
SeqBNRNN, BNGRU, SeqBNGRU): the EMA rule (BN 13), the exact estimator (BN 14), per-step slots and the T_max rule
(BN-LSTM 5), past_max_steps="clamp" (VAR 7), (VAR 8), and the degenerate batches."""
import numpy as np
import pytest

import refnorm

from helpers import (BACKENDS, BN_CELLS, BN_SEQ_CELLS, BN_STEP_CELLS, TOL, backends_for,
                     finals_of, make_cell, ragged_mask)

# the per-step BN cells and their options: BNLSTM, BNRNN with each term form (other statistics),
# BNGRU
STEP_CASES = [("bn_lstm", {}), ("bn_rnn", {"terms": "separate"}),
              ("bn_rnn", {"terms": "summed", "nonlinearity": "relu"}), ("bn_gru", {})]
STEP_IDS = ["bn_lstm", "bn_rnn-separate", "bn_rnn-summed-relu", "bn_gru"]
# and every BN cell: the sequence-wise ones too
BN_CASES = STEP_CASES + [(name, {}) for name in BN_SEQ_CELLS]
BN_IDS = STEP_IDS + list(BN_SEQ_CELLS)
# the cases whose input term x Wx is normalised on its own (statistics mean_x, var_x)
INPUT_TERM_CASES = [(n, o) for n, o in BN_CASES if o.get("terms") != "summed"]
INPUT_TERM_IDS = [i for i, (n, o) in zip(BN_IDS, BN_CASES) if o.get("terms") != "summed"]


def expected_widths(name, options, H):
    """{statistic: width F} each BN cell must keep, written out from the papers' equations: the
    LSTMs normalise the 4H gate terms (and BNLSTM the H-wide cell), the RNNs H-wide terms, the
    GRUs the 3H gate terms x Wx and h Wh (BN-GRU 2), (SEQBN-GRU 1)."""
    if name == "bn_lstm":
        return {"mean_x": 4 * H, "var_x": 4 * H, "mean_h": 4 * H, "var_h": 4 * H,
                "mean_c": H, "var_c": H}
    if name == "seq_bn_lstm":
        return {"mean_x": 4 * H, "var_x": 4 * H}
    if name == "bn_rnn" and options.get("terms", "separate") == "summed":
        return {"mean_z": H, "var_z": H}
    if name == "bn_rnn":
        return {"mean_x": H, "var_x": H, "mean_h": H, "var_h": H}
    if name == "bn_gru":
        return {"mean_x": 3 * H, "var_x": 3 * H, "mean_h": 3 * H, "var_h": 3 * H}
    if name == "seq_bn_gru":
        return {"mean_x": 3 * H, "var_x": 3 * H}
    assert name == "seq_bn_rnn"
    return {"mean_x": H, "var_x": H}


def rng_x(T, B, D, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, D))


def input_hat(cache):
    """The normalised input term of a per-step BN cache: û (BNLSTM, BNRNN separate) or ŝ of
    x Wx + h Wh (BNRNN summed)."""
    return cache.u_hat if getattr(cache, "u_hat", None) is not None else cache.s_hat


@pytest.mark.parametrize("name, options", BN_CASES, ids=BN_IDS)
def test_statistics_have_the_widths_of_the_equations(name, options):
    """cell.stats has exactly the statistics of the cell's normalisations, each of its width, and
    a training cache holds the same names with that width per step (per-step cells) or once."""
    H = 2
    cell = make_cell(name, 3, H, **options)
    widths = expected_widths(name, options, H)
    assert set(cell.stats) == set(widths)
    *_, cache = cell.forward(rng_x(4, 3, 3), update_stats=False)
    for key, F in widths.items():
        want = (6, F) if name in BN_STEP_CELLS else (F,)
        assert cell.stats[key].shape == want, key
        assert getattr(cache, key).shape == ((4, F) if name in BN_STEP_CELLS else (F,)), key


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_bn_step_ema_update_per_slot(name, options, unbiased):
    cell = make_cell(name, momentum=0.3, unbiased_var=unbiased, **options)   # 6 random slots
    before = {k: v.copy() for k, v in cell.stats.items()}
    # lengths 4, 4, 1: steps 0 and 1 of this batch (t0 = 2: slots 2, 3) have 3 rows, steps 2, 3
    # (slots 4, 5) have 2 rows; with lengths (4, 1, 1) step 1.. would have 1 row and be skipped
    mask = ragged_mask(4, 3, [4, 4, 1])
    mask[2:, 1] = 1
    *_, cache = cell.forward(rng_x(4, 3, 3), mask=mask, t0=2)
    for key, old in before.items():
        for slot in range(6):
            if slot < 2:
                assert np.array_equal(cell.stats[key][slot], old[slot])   # not in this batch
                continue
            t, n = slot - 2, cache.count[slot - 2]
            batch = getattr(cache, key)[t]
            if key.startswith("var") and unbiased:
                batch = batch * n / (n - 1)
            expect = 0.7 * old[slot] + 0.3 * batch
            assert np.allclose(cell.stats[key][slot], expect, rtol=1e-14, atol=0), (key, slot)


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_bn_step_skips_slots_with_fewer_than_two_rows(name, options):
    cell = make_cell(name, **options)
    before = {k: v.copy() for k, v in cell.stats.items()}
    cell.forward(rng_x(3, 3, 3), lengths=np.array([3, 1, 0]))    # steps 1, 2: one valid row
    for key, old in before.items():
        assert not np.array_equal(cell.stats[key][0], old[0])
        assert np.array_equal(cell.stats[key][1:], old[1:])


@pytest.mark.parametrize("name, options", BN_CASES, ids=BN_IDS)
def test_update_stats_false_and_inference_leave_stats_alone(name, options):
    cell = make_cell(name, **options)
    before = {k: v.copy() for k, v in cell.stats.items()}
    cell.forward(rng_x(3, 3, 3), update_stats=False)
    cell.forward(rng_x(3, 3, 3), training=False)
    for key, old in before.items():
        assert np.array_equal(cell.stats[key], old)


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_bn_step_slots_grow_without_max_steps_and_are_bounded_with_it(name, options):
    widths = expected_widths(name, options, 2)
    cell = refnorm.CELLS[name](3, 2, seed=0, **options)
    assert {k: v.shape for k, v in cell.stats.items()} == {k: (0, F) for k, F in widths.items()}
    with pytest.raises(ValueError, match="population statistics"):
        cell.forward(rng_x(2, 3, 3), training=False)
    cell.forward(rng_x(4, 3, 3))
    assert {k: v.shape for k, v in cell.stats.items()} == {k: (4, F) for k, F in widths.items()}
    cell.forward(rng_x(2, 3, 3), t0=5)                  # slot 4 is new and untouched: 0 / 1
    assert {k: v.shape for k, v in cell.stats.items()} == {k: (7, F) for k, F in widths.items()}
    for key in cell.stats:
        assert np.all(cell.stats[key][4] == (0 if key.startswith("mean") else 1)), key

    bounded = refnorm.CELLS[name](3, 2, seed=0, max_steps=3, **options)
    before = {k: v.copy() for k, v in bounded.stats.items()}
    with pytest.raises(ValueError, match="max_steps"):
        bounded.forward(rng_x(4, 3, 3))
    for key, old in before.items():                      # the failed call changed nothing
        assert np.array_equal(bounded.stats[key], old)
    bounded.forward(rng_x(4, 3, 3), update_stats=False)  # fine: statistics are not touched


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_steps_past_t_max_use_the_last_slot(name, options):
    """(BN-LSTM 5): with 3 slots, a 6-step inference pass equals one with 6 slots whose slots
    3, 4, 5 are copies of slot 2."""
    short = make_cell(name, max_steps=3, **options)
    long = make_cell(name, max_steps=6, **options)
    long.params = {k: v.copy() for k, v in short.params.items()}
    for key, value in short.stats.items():
        long.stats[key][:3] = value
        long.stats[key][3:] = value[2]
    x = rng_x(6, 2, 3)
    out_short = short.forward(x, training=False)
    out_long = long.forward(x, training=False)
    assert np.array_equal(out_short[0], out_long[0])
    for key, value in finals_of(short, out_short).items():
        assert np.array_equal(value, finals_of(long, out_long)[key]), key
    # and the slots really differ: using slot 0 for every step changes the result
    flat = make_cell(name, max_steps=1, **options)
    flat.params = short.params
    for key, value in short.stats.items():
        flat.stats[key][0] = value[0]
    hs_flat, _, _ = flat.forward(x, training=False)
    assert refnorm.relative_error(hs_flat[1:], out_short[0][1:]) > 1e-3


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("name, options", BN_CASES, ids=BN_IDS)
def test_exact_estimator_is_the_plain_average_of_batch_statistics(name, options, unbiased):
    """(BN 14) with random weights and ragged batches: each slot's mean is the average of the
    batch means, its variance the average of the batch variances, each times n/(n-1) (n that
    batch's valid rows in the slot, which differs between batches and steps here) when
    unbiased_var=True; batches with n < 2 in a slot do not count there."""
    per_step = name in BN_STEP_CELLS
    cell = make_cell(name, unbiased_var=unbiased, **options,
                     **({"max_steps": None} if per_step else {}))
    batches = [{"x": rng_x(4, 3, 3, seed=1)},
               {"x": rng_x(3, 4, 3, seed=2), "lengths": np.array([3, 2, 2, 1])},
               rng_x(2, 2, 3, seed=3)]
    expected = {}
    for item in batches:
        kwargs = item if isinstance(item, dict) else {"x": item}
        *_, cache = cell.forward(update_stats=False, **kwargs)
        counts = np.atleast_1d(cache.count)
        for key in cell.stats:
            values = getattr(cache, key) if per_step else np.atleast_2d(getattr(cache, key))
            for t, n in enumerate(counts):
                if n >= 2:
                    factor = n / (n - 1) if unbiased and key.startswith("var") else 1.0
                    expected.setdefault((key, t), []).append(values[t] * factor)
    per_slot = cell.estimate_stats(batches)
    if per_step:
        # batch 2 has one row at step 2, batch 3 is 2 steps long
        assert per_slot.tolist() == [3, 3, 1, 1]
        assert all(v.shape[0] == 4 for v in cell.stats.values())
    assert {key for key, _ in expected} == set(cell.stats)
    for (key, t), values in expected.items():
        got = cell.stats[key][t] if per_step else cell.stats[key]
        # the same float64 sums in another order: a few ulp
        assert np.allclose(got, np.mean(values, axis=0), rtol=1e-14, atol=1e-15), (key, t)


@pytest.mark.parametrize("name", BN_SEQ_CELLS)
def test_seq_bn_ema_and_batch_of_one(name):
    cell = make_cell(name, momentum=0.25)
    old = {k: v.copy() for k, v in cell.stats.items()}
    *_, cache = cell.forward(rng_x(5, 1, 3))                   # B = 1 is fine: stats span time
    assert cache.count == 5
    assert np.allclose(cell.stats["mean_x"], 0.75 * old["mean_x"] + 0.25 * cache.mean_x,
                       rtol=1e-14)
    assert np.allclose(cell.stats["var_x"], 0.75 * old["var_x"] + 0.25 * cache.var_x, rtol=1e-14)
    # the statistics are those of all valid frames at once
    U = rng_x(5, 1, 3).reshape(5, 3) @ cache.params["Wx"]
    assert refnorm.relative_error(cache.mean_x, U.mean(0)) < TOL["float64_reorder"]
    assert refnorm.relative_error(cache.var_x, U.var(0)) < TOL["float64_reorder"]


@pytest.mark.parametrize("name", BN_STEP_CELLS)
def test_bn_step_batch_of_one_is_an_error_in_training_only(name):
    cell = make_cell(name)
    with pytest.raises(ValueError, match="batch size 1"):
        cell.forward(rng_x(3, 1, 3))
    hs, _, _ = cell.forward(rng_x(3, 1, 3), training=False)
    assert np.all(np.isfinite(hs))


@pytest.mark.parametrize("name, options", BN_CASES, ids=BN_IDS)
def test_reset_stats(name, options):
    cell = make_cell(name, **options)
    cell.reset_stats()
    for key, value in cell.stats.items():
        assert np.all(value == (0 if key.startswith("mean") else 1))


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_per_step_statistics_couple_rows_of_one_step_only(name, options):
    """A-BN-2: perturbing row 0 at step t changes the other rows' normalised input at t (through
    the step-t statistics) in training, and not at all in inference."""
    cell = make_cell(name, **options)
    x = rng_x(3, 3, 3)
    y = x.copy()
    y[2, 0] += 0.5                                       # only step 2, row 0
    for training, changes in ((True, True), (False, False)):
        *_, a = cell.forward(x, training=training, update_stats=False)
        *_, b = cell.forward(y, training=training, update_stats=False)
        assert np.array_equal(input_hat(a)[:2], input_hat(b)[:2])  # earlier steps untouched
        assert (not np.array_equal(input_hat(a)[2, 1:], input_hat(b)[2, 1:])) == changes


@pytest.mark.parametrize("name, options", INPUT_TERM_CASES, ids=INPUT_TERM_IDS)
def test_pad_stats_include_takes_padded_rows_into_the_statistics(name, options):
    """pad_stats="include" (what most ports do): the statistics are those of every row, padded or
    not. The input term's statistics do not depend on the state, so they equal those of an
    unmasked run over the same x, while "exclude" gives those of the valid rows only."""
    x = rng_x(4, 3, 3)
    lengths = np.array([4, 2, 1])
    inc = make_cell(name, pad_stats="include", **options)
    exc = make_cell(name, **options)
    full = make_cell(name, **options)
    *_, c_inc = inc.forward(x, lengths=lengths, update_stats=False)
    *_, c_exc = exc.forward(x, lengths=lengths, update_stats=False)
    *_, c_full = full.forward(x, update_stats=False)
    assert np.all(np.atleast_1d(c_inc.count) == np.atleast_1d(c_full.count))
    assert refnorm.relative_error(c_inc.mean_x, c_full.mean_x) < TOL["float64_reorder"]
    assert refnorm.relative_error(c_inc.var_x, c_full.var_x) < TOL["float64_reorder"]
    assert refnorm.relative_error(c_exc.mean_x, c_full.mean_x) > 1e-3
    if name in BN_SEQ_CELLS:
        U = (x.reshape(-1, 3) @ exc.params["Wx"])[ragged_mask(4, 3, lengths).reshape(-1) > 0]
        assert refnorm.relative_error(c_exc.mean_x, U.mean(0)) < TOL["float64_reorder"]


@pytest.mark.parametrize("name", BN_CELLS)
def test_pad_stats_is_validated(name):
    with pytest.raises(ValueError, match="pad_stats"):
        refnorm.CELLS[name](2, 2, pad_stats="zeros")


# -- training past max_steps: past_max_steps="clamp" (VAR 7), (VAR 8) ---------------------------
CLAMP_PARAMS = [pytest.param(backend, name, options, id=f"{backend}-{case_id}")
                for backend in BACKENDS for (name, options), case_id in zip(STEP_CASES, STEP_IDS)
                if backend in backends_for(name)]


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("backend, name, options", CLAMP_PARAMS)
def test_clamp_updates_the_last_slot_once_per_step_in_time_order(backend, name, options,
                                                                 unbiased):
    """(VAR 7): 3 slots, a 6-step pass from t0 = 1 (absolute steps 1..6). Slot 1 takes step 1's
    statistics; slot 2 takes those of steps 2, 3, 5, 6 one after the other (step 4 has one valid
    row and is skipped, (BN 13)); slot 0 is untouched. Written out as the closed form
    (1-a)^r pop + sum_j a (1-a)^(r-j) batch_j, so the order of the updates matters: the same
    updates in another order, or one update with their mean, give other numbers."""
    a = 0.3
    cell = make_cell(name, max_steps=3, past_max_steps="clamp", momentum=a,
                     unbiased_var=unbiased, backend=backend, **options)
    before = {k: v.copy() for k, v in cell.stats.items()}
    mask = np.ones((6, 3))
    mask[3, 1:] = 0                                # local step 3 (absolute 4): one valid row
    *_, cache = cell.forward(rng_x(6, 3, 3), mask=mask, t0=1)
    assert cache.count.tolist() == [3, 3, 3, 1, 3, 3]
    for key, old in before.items():
        batch = getattr(cache, key)                                # (6, F), local steps
        if key.startswith("var") and unbiased:
            n = cache.count[:, None]
            batch = batch * np.where(n > 1, n / np.maximum(n - 1, 1), 1.0)
        assert np.array_equal(cell.stats[key][0], old[0]), key
        np.testing.assert_allclose(cell.stats[key][1], (1 - a) * old[1] + a * batch[0],
                                   rtol=1e-14, atol=0, err_msg=key)
        steps = [k for k in range(1, 6) if cache.count[k] >= 2]   # local steps into slot 2
        r = len(steps)
        expect = (1 - a) ** r * old[2] + sum(a * (1 - a) ** (r - 1 - j) * batch[k]
                                             for j, k in enumerate(steps))
        np.testing.assert_allclose(cell.stats[key][2], expect, rtol=1e-13, atol=0, err_msg=key)
        reversed_order = (1 - a) ** r * old[2] + sum(a * (1 - a) ** j * batch[k]
                                                     for j, k in enumerate(steps))
        assert refnorm.relative_error(cell.stats[key][2], reversed_order) > 1e-6, key


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_clamp_changes_only_the_statistics_update(name, options):
    """Training outputs and gradients do not depend on past_max_steps (each step still uses its
    own batch statistics): a clamped 5-step pass equals the same pass of a cell with 5 slots."""
    clamped = make_cell(name, max_steps=2, past_max_steps="clamp", **options)
    roomy = make_cell(name, max_steps=5, **options)
    roomy.params = {k: v.copy() for k, v in clamped.params.items()}
    x, dhs = rng_x(5, 3, 3), rng_x(5, 3, 3, seed=1)              # D = H = 3
    hs_c, _, cache_c = clamped.forward(x)
    hs_r, _, cache_r = roomy.forward(x)
    assert np.array_equal(hs_c, hs_r)
    g_c, g_r = clamped.backward(dhs, cache_c), roomy.backward(dhs, cache_r)
    assert all(np.array_equal(g_c[k], g_r[k]) for k in g_r)
    for key in clamped.stats:                       # and the raise default still raises
        assert clamped.stats[key].shape[0] == 2
    with pytest.raises(ValueError, match="past_max_steps"):
        make_cell(name, max_steps=2, **options).forward(x)


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_clamp_with_max_steps_1_is_one_set_of_statistics_for_every_step(name, options):
    """batchnorm-lstm's convention: max_steps=1, every step updates the one slot in turn, and
    inference uses it at every step."""
    a = 0.1
    cell = make_cell(name, max_steps=1, past_max_steps="clamp", momentum=a, **options)
    pop = {k: v[0].copy() for k, v in cell.stats.items()}
    *_, cache = cell.forward(rng_x(4, 3, 3))
    for key in pop:
        for t in range(4):
            pop[key] = (1 - a) * pop[key] + a * getattr(cache, key)[t]
        np.testing.assert_allclose(cell.stats[key][0], pop[key], rtol=1e-14, atol=0,
                                   err_msg=key)


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_clamp_without_max_steps_grows_the_slots(name, options):
    cell = refnorm.CELLS[name](3, 2, seed=0, past_max_steps="clamp", **options)
    cell.forward(rng_x(4, 3, 3))
    widths = expected_widths(name, options, 2)
    assert {k: v.shape for k, v in cell.stats.items()} == {k: (4, F) for k, F in widths.items()}


@pytest.mark.parametrize("name, options", STEP_CASES, ids=STEP_IDS)
def test_exact_estimator_with_clamp_averages_every_step_in_the_last_slot(name, options):
    """(VAR 8): with 2 slots, slot 1 is the plain average over every (batch, step >= 1) pair
    with at least two valid rows."""
    cell = make_cell(name, max_steps=2, past_max_steps="clamp", **options)
    batches = [{"x": rng_x(4, 3, 3, seed=1)},
               {"x": rng_x(3, 3, 3, seed=2), "lengths": np.array([3, 2, 1])}]
    samples = {key: ([], []) for key in cell.stats}
    for item in batches:
        *_, cache = cell.forward(update_stats=False, **item)
        for key in cell.stats:
            for t, n in enumerate(cache.count):
                if n >= 2:
                    samples[key][min(t, 1)].append(getattr(cache, key)[t])
    per_slot = cell.estimate_stats(batches)
    assert per_slot.tolist() == [2, 3 + 1]          # batch 2: step 2 has one valid row
    for key, (slot0, slot1) in samples.items():
        np.testing.assert_allclose(cell.stats[key][0], np.mean(slot0, axis=0), rtol=1e-14,
                                   atol=1e-15, err_msg=key)
        np.testing.assert_allclose(cell.stats[key][1], np.mean(slot1, axis=0), rtol=1e-14,
                                   atol=1e-15, err_msg=key)
