"""Population statistics of the BN cells: the EMA rule (BN 13), the exact estimator (BN 14),
per-step slots and the T_max rule (BN-LSTM 5), and the degenerate batches."""
import numpy as np
import pytest

import refnorm

from helpers import TOL, make_cell, ragged_mask


def rng_x(T, B, D, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, D))


@pytest.mark.parametrize("unbiased", [False, True])
def test_bn_lstm_ema_update_per_slot(unbiased):
    cell = make_cell("bn_lstm", momentum=0.3, unbiased_var=unbiased)      # 6 random slots
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


def test_bn_lstm_skips_slots_with_fewer_than_two_rows():
    cell = make_cell("bn_lstm")
    before = {k: v.copy() for k, v in cell.stats.items()}
    cell.forward(rng_x(3, 3, 3), lengths=np.array([3, 1, 0]))    # steps 1, 2: one valid row
    for key, old in before.items():
        assert not np.array_equal(cell.stats[key][0], old[0])
        assert np.array_equal(cell.stats[key][1:], old[1:])


def test_update_stats_false_and_inference_leave_stats_alone():
    cell = make_cell("bn_lstm")
    before = {k: v.copy() for k, v in cell.stats.items()}
    cell.forward(rng_x(3, 3, 3), update_stats=False)
    cell.forward(rng_x(3, 3, 3), training=False)
    for key, old in before.items():
        assert np.array_equal(cell.stats[key], old)


def test_bn_lstm_slots_grow_without_max_steps_and_are_bounded_with_it():
    cell = refnorm.BNLSTM(3, 2, seed=0)
    assert cell.stats["mean_x"].shape == (0, 8)
    with pytest.raises(ValueError, match="population statistics"):
        cell.forward(rng_x(2, 3, 3), training=False)
    cell.forward(rng_x(4, 3, 3))
    assert cell.stats["mean_x"].shape == (4, 8) and cell.stats["var_c"].shape == (4, 2)
    cell.forward(rng_x(2, 3, 3), t0=5)                  # slot 4 is new and untouched: 0 / 1
    assert cell.stats["mean_x"].shape == (7, 8)
    assert np.all(cell.stats["mean_h"][4] == 0) and np.all(cell.stats["var_h"][4] == 1)

    bounded = refnorm.BNLSTM(3, 2, seed=0, max_steps=3)
    before = {k: v.copy() for k, v in bounded.stats.items()}
    with pytest.raises(ValueError, match="max_steps"):
        bounded.forward(rng_x(4, 3, 3))
    for key, old in before.items():                      # the failed call changed nothing
        assert np.array_equal(bounded.stats[key], old)
    bounded.forward(rng_x(4, 3, 3), update_stats=False)  # fine: statistics are not touched


def test_steps_past_t_max_use_the_last_slot():
    """(BN-LSTM 5): with 3 slots, a 6-step inference pass equals one with 6 slots whose slots
    3, 4, 5 are copies of slot 2."""
    short = make_cell("bn_lstm", max_steps=3)
    long = make_cell("bn_lstm", max_steps=6)
    long.params = {k: v.copy() for k, v in short.params.items()}
    for key, value in short.stats.items():
        long.stats[key][:3] = value
        long.stats[key][3:] = value[2]
    x = rng_x(6, 2, 3)
    hs_short, (hT_s, cT_s), _ = short.forward(x, training=False)
    hs_long, (hT_l, cT_l), _ = long.forward(x, training=False)
    assert np.array_equal(hs_short, hs_long) and np.array_equal(cT_s, cT_l)
    # and the slots really differ: using slot 0 for every step changes the result
    flat = make_cell("bn_lstm", max_steps=1)
    flat.params = short.params
    for key, value in short.stats.items():
        flat.stats[key][0] = value[0]
    hs_flat, _, _ = flat.forward(x, training=False)
    assert refnorm.relative_error(hs_flat[1:], hs_short[1:]) > 1e-3


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("stem", ["bn_lstm", "seq_bn_lstm"])
def test_exact_estimator_is_the_plain_average_of_batch_statistics(stem, unbiased):
    """(BN 14) with random weights and ragged batches: each slot's mean is the average of the
    batch means, its variance the average of the batch variances, each times n/(n-1) (n that
    batch's valid rows in the slot, which differs between batches and steps here) when
    unbiased_var=True; batches with n < 2 in a slot do not count there."""
    cell = make_cell(stem, max_steps=None, unbiased_var=unbiased) if stem == "bn_lstm" \
        else make_cell(stem, unbiased_var=unbiased)
    batches = [{"x": rng_x(4, 3, 3, seed=1)},
               {"x": rng_x(3, 4, 3, seed=2), "lengths": np.array([3, 2, 2, 1])},
               rng_x(2, 2, 3, seed=3)]
    expected = {}
    for item in batches:
        kwargs = item if isinstance(item, dict) else {"x": item}
        *_, cache = cell.forward(update_stats=False, **kwargs)
        counts = np.atleast_1d(cache.count)
        for key in cell.stats:
            values = np.atleast_2d(getattr(cache, key)) if stem == "seq_bn_lstm" \
                else getattr(cache, key)
            for t, n in enumerate(counts):
                if n >= 2:
                    factor = n / (n - 1) if unbiased and key.startswith("var") else 1.0
                    expected.setdefault((key, t), []).append(values[t] * factor)
    per_slot = cell.estimate_stats(batches)
    if stem == "bn_lstm":
        # batch 2 has one row at step 2, batch 3 is 2 steps long
        assert per_slot.tolist() == [3, 3, 1, 1]
        assert cell.stats["mean_x"].shape[0] == 4
    for (key, t), values in expected.items():
        got = cell.stats[key][t] if stem == "bn_lstm" else cell.stats[key]
        # the same float64 sums in another order: a few ulp
        assert np.allclose(got, np.mean(values, axis=0), rtol=1e-14, atol=1e-15), (key, t)


def test_seq_bn_lstm_ema_and_batch_of_one():
    cell = make_cell("seq_bn_lstm", momentum=0.25)
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


def test_bn_lstm_batch_of_one_is_an_error_in_training_only():
    cell = make_cell("bn_lstm")
    with pytest.raises(ValueError, match="batch size 1"):
        cell.forward(rng_x(3, 1, 3))
    hs, _, _ = cell.forward(rng_x(3, 1, 3), training=False)
    assert np.all(np.isfinite(hs))


def test_reset_stats():
    for stem in ("bn_lstm", "seq_bn_lstm"):
        cell = make_cell(stem)
        cell.reset_stats()
        for key, value in cell.stats.items():
            assert np.all(value == (0 if key.startswith("mean") else 1))


def test_per_step_statistics_couple_rows_of_one_step_only():
    """A-BN-2: perturbing row 0 at step t changes the other rows' normalised recurrent input at
    t (through the step-t statistics) in training, and not at all in inference."""
    cell = make_cell("bn_lstm")
    x = rng_x(3, 3, 3)
    y = x.copy()
    y[2, 0] += 0.5                                       # only step 2, row 0
    for training, changes in ((True, True), (False, False)):
        *_, a = cell.forward(x, training=training, update_stats=False)
        *_, b = cell.forward(y, training=training, update_stats=False)
        assert np.array_equal(a.u_hat[:2], b.u_hat[:2])  # earlier steps untouched
        assert (not np.array_equal(a.u_hat[2, 1:], b.u_hat[2, 1:])) == changes


@pytest.mark.parametrize("stem", ["bn_lstm", "seq_bn_lstm"])
def test_pad_stats_include_takes_padded_rows_into_the_statistics(stem):
    """pad_stats="include" (what most ports do): the statistics are those of every row, padded or
    not. The input term's statistics do not depend on the state, so they equal those of an
    unmasked run over the same x, while "exclude" gives those of the valid rows only."""
    x = rng_x(4, 3, 3)
    lengths = np.array([4, 2, 1])
    inc = make_cell(stem, pad_stats="include")
    exc = make_cell(stem)
    full = make_cell(stem)
    *_, c_inc = inc.forward(x, lengths=lengths, update_stats=False)
    *_, c_exc = exc.forward(x, lengths=lengths, update_stats=False)
    *_, c_full = full.forward(x, update_stats=False)
    assert np.all(np.atleast_1d(c_inc.count) == np.atleast_1d(c_full.count))
    assert refnorm.relative_error(c_inc.mean_x, c_full.mean_x) < TOL["float64_reorder"]
    assert refnorm.relative_error(c_inc.var_x, c_full.var_x) < TOL["float64_reorder"]
    assert refnorm.relative_error(c_exc.mean_x, c_full.mean_x) > 1e-3
    if stem == "seq_bn_lstm":
        U = (x.reshape(-1, 3) @ exc.params["Wx"])[ragged_mask(4, 3, lengths).reshape(-1) > 0]
        assert refnorm.relative_error(c_exc.mean_x, U.mean(0)) < TOL["float64_reorder"]


def test_pad_stats_is_validated():
    for cls in (refnorm.BNLSTM, refnorm.SeqBNLSTM):
        with pytest.raises(ValueError, match="pad_stats"):
            cls(2, 2, pad_stats="zeros")
