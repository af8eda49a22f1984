"""refnorm study beyond the LSTM cells: every cell of refnorm.CELLS (the vanilla-RNN and GRU
families beside the LSTM's) and the 2-layer LSTM stacks "lstm2", "lstm2_seq_bn", "lstm2_ln"
train through run_one and come back with the record the claims read; their population
statistics are re-estimated before every evaluation; the init schemes reach every cell.

Sizes are tiny (H = 4, one epoch, 64 training sequences) and the backend is NumPy (no
compilation): these tests prove the plumbing, not what the models learn."""
import math

import numpy as np
import pytest

import refnorm
from refnorm.study.experiment import RunSpec, StudyConfig, quick_config, run_one
from refnorm.study.inits import init_weights
from refnorm.study.tasks import adding_task
from refnorm.study.train import (BN_CELL_STEMS, BN_STEMS, MODEL_STEMS, PER_STEP_BN_STEMS,
                                 STACKS, build_model, estimate_between_stats, train)
from helpers import BN_CELLS, BN_STEP_CELLS, LSTM_CELLS, TOL

NEW_STEMS = tuple(s for s in MODEL_STEMS if s not in LSTM_CELLS)
TINY = dict(backend="numpy", epochs=1, hidden_size=4, batch_size=16, n_train=64, n_test=32,
            digits_train=64, stat_batches=2, probe_size=16, long_factors=(2,))
T_OF = {"adding": quick_config().adding_length, "digits": 8}       # digits row by row


def tiny_config(**overrides):
    return quick_config(**{**TINY, **overrides})


def has_cell_state(stem):
    """The LSTM family's cells and the stacks (of LSTM cells) carry c; the others do not."""
    return stem in LSTM_CELLS or stem in STACKS


# -- the stems -----------------------------------------------------------------------------------
def test_every_cell_and_the_stacks_are_stems_of_the_study():
    assert set(MODEL_STEMS) == set(refnorm.CELLS) | {"lstm2", "lstm2_seq_bn", "lstm2_ln"}
    # the BN lists agree with the cells' classes, so no BN cell misses its statistics
    assert set(BN_CELL_STEMS) == set(BN_CELLS) and set(PER_STEP_BN_STEMS) == set(BN_STEP_CELLS)
    assert set(BN_STEMS) == set(BN_CELLS) | {"lstm2_seq_bn"}
    StudyConfig(cells=("gru", "bn_rnn", "lstm2_ln")).validate()
    with pytest.raises(ValueError, match="cells"):
        StudyConfig(cells=("lstm3",)).validate()


# -- a run of every new stem, end to end -----------------------------------------------------
@pytest.mark.parametrize("task", ["adding", "digits"])
@pytest.mark.parametrize("stem", NEW_STEMS)
def test_a_run_trains_and_records_every_field(stem, task):
    cfg = tiny_config()
    r = run_one(RunSpec(task, stem, "orthogonal", 0), cfg)
    T = T_OF[task]
    assert not r["diverged"]
    for key in ("final_loss", "final_metric", "norm_error"):
        assert math.isfinite(r[key]), key
    assert len(r["grad_flow"]) == cfg.epochs + 1              # at init and after every epoch
    for flow in r["grad_flow"]:
        assert len(flow["g_x"]) == T and np.all(np.isfinite(flow["g_x"]))
        assert np.all(np.asarray(flow["g_x"]) > 0)             # fixed length: every step
        if stem in STACKS:                                     # a stack has no state_grads
            assert flow["g_h"] is None and flow["g_c"] is None
        else:
            assert len(flow["g_h"]) == T and np.all(np.isfinite(flow["g_h"]))
            assert (flow["g_c"] is None) == (not has_cell_state(stem))
        stats = flow["stats"]
        assert ("c_var" in stats) == has_cell_state(stem)
        for name, values in stats.items():
            assert len(values) == T and all(v is not None and math.isfinite(v)
                                            for v in values), name
        assert "h_var" in stats
    # what each kind of model is measured on
    assert ("trainmode_loss" in r) == (stem in BN_STEMS)
    assert ("shared_stats_loss" in r) == (stem in PER_STEP_BN_STEMS)
    for key in ("trainmode_loss", "shared_stats_loss"):
        assert key not in r or math.isfinite(r[key])
    checks = r["checks"]
    assert checks["batch1_training"] == ("raises ValueError" if stem in PER_STEP_BN_STEMS
                                         else "ok")
    assert math.isfinite(checks["train_eval_difference"])
    assert (checks["train_eval_difference"] == 0) == (stem not in BN_STEMS)
    if task == "adding":
        long = r["long"]["2"]
        assert long["length"] == 2 * T and math.isfinite(long["loss"])
        assert ("reestimated_loss" in long) == (stem in PER_STEP_BN_STEMS)
    else:
        assert "long" not in r


@pytest.mark.parametrize("stem", ["bn_gru", "seq_bn_rnn", "lstm2_seq_bn", "gru"])
def test_variable_length_runs_measure_the_padding_of_the_bn_cells_only(stem):
    r = run_one(RunSpec("adding", stem, "orthogonal", 0, "include", True), tiny_config())
    assert math.isfinite(r["final_loss"]) and math.isfinite(r["full_length_loss"])
    if stem in BN_CELL_STEMS:
        terms = {"bn_gru": ("x", "h"), "seq_bn_rnn": ("x",)}[stem]
        d = r["distortion"]
        assert {f"shift_{k}" for k in terms} | {f"var_ratio_{k}" for k in terms} \
            | {"padded_fraction"} == set(d)
    else:
        assert "distortion" not in r


# -- the stacks ---------------------------------------------------------------------------------
def tiny_adding(T=6, n_train=64):
    return adding_task(T, np.random.default_rng(3), n_train=n_train, n_test=32)


@pytest.mark.parametrize("stem", list(STACKS))
def test_a_stack_is_two_lstm_layers_and_the_readout_reads_the_top_one(stem):
    """build_model's stack: 2 unidirectional LSTM layers, no dropout, the stem's normalisation
    between them; h_T is the top layer's last output. Its backward, fed dL/dh_T, gives dL/dx
    of L = Σ dhT ⊙ h_T, checked against central differences."""
    task = tiny_adding(T=4)
    model = build_model(stem, task, 3, "orthogonal", np.random.default_rng(0),
                        np.random.default_rng(1))
    net = model.net
    assert (net.num_layers, net.bidirectional, net.dropout) == (2, False, 0.0)
    assert net.between == STACKS[stem] and net.cell_class is refnorm.LSTM
    x = task.train.x[:, :5]                                                 # (T, B, D)
    lengths = task.train.lengths[:5]
    hT, cache = model.forward(x, lengths, training=True)
    ys, _, _ = net.forward(x, lengths=lengths, training=True, update_stats=False)
    assert np.array_equal(hT, ys[-1])                    # fixed length: the last step's output
    dhT = np.random.default_rng(2).standard_normal(hT.shape)
    grads = model.backward(cache, dhT)

    def loss(v):
        return float(np.sum(dhT * model.forward(v, lengths, training=True)[0]))

    numeric = refnorm.numerical_gradient(loss, x)
    assert refnorm.relative_error(grads["x"], numeric) <= TOL["gradcheck"]


def test_seq_bn_stack_statistics_are_the_average_of_the_batch_statistics():
    """(BN 14) between the layers: after estimate_between_stats over two full-length batches,
    the norm's population mean and variance are the averages of the mean and biased variance
    of layer 0's output h_t over each batch's (t, b) frames."""
    task = tiny_adding()
    model = build_model("lstm2_seq_bn", task, 3, "orthogonal", np.random.default_rng(0),
                        np.random.default_rng(1))
    net = model.net
    batches = [{"x": task.train.x[:, k:k + 8], "lengths": task.train.lengths[k:k + 8]}
               for k in (0, 8)]
    estimate_between_stats(net, batches)
    means, variances = [], []
    for batch in batches:
        *_, cache = net.forward(batch["x"], lengths=batch["lengths"], training=True,
                                update_stats=False)
        frames = cache.cells[0][0].h[1:].reshape(-1, 3)              # layer 0's (T·B, H)
        means.append(frames.mean(axis=0))
        variances.append(frames.var(axis=0))
    tol = TOL["float64_reorder"]
    assert np.allclose(net.stats["l0.norm.mean"], np.mean(means, axis=0), rtol=0, atol=tol)
    assert np.allclose(net.stats["l0.norm.var"], np.mean(variances, axis=0), rtol=0, atol=tol)


# -- population statistics --------------------------------------------------------------------
@pytest.mark.parametrize("stem", BN_STEMS)
def test_population_statistics_are_reestimated_before_evaluation(stem):
    """Training never updates them (update_stats=False); the estimate before each evaluation
    replaces the fresh ones (means 0, variances 1) by what the batches show."""
    task = tiny_adding()
    model = build_model(stem, task, 4, "orthogonal", np.random.default_rng(0),
                        np.random.default_rng(1))
    fresh = {k: v.copy() for k, v in model.net.stats.items()}
    assert fresh
    probe = task.test.take(np.arange(16))
    train(model, task, epochs=1, batch_size=16, lr=1e-2, clip=1.0,
          rng=np.random.default_rng(2), probe=probe, stat_batches=2)
    for name, value in model.net.stats.items():
        assert value.shape == fresh[name].shape, name
        assert not np.allclose(value, fresh[name]), name


# -- init schemes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stem, blocks", [("rnn", 1), ("gru", 3), ("bn_gru", 3),
                                          ("lstm2", 4), ("lstm2_ln", 4)])
def test_identity_init_reaches_every_cell(stem, blocks):
    """identity: every cell's Wh is [I | ... | I] over its gate blocks and its biases (b, the
    GRU's b_hn) are 0 -- in each layer of a stack, in the arrays the stack reads."""
    model = build_model(stem, tiny_adding(), 4, "identity", np.random.default_rng(0),
                        np.random.default_rng(1))
    net = model.net
    cells = [c for row in net.cells for c in row] if stem in STACKS else [net]
    for cell in cells:
        assert np.array_equal(cell.params["Wh"], np.tile(np.eye(4), (1, blocks)))
        assert all(np.all(cell.params[b] == 0) for b in ("b", "b_hn") if b in cell.params)
    if stem in STACKS:
        assert all(np.array_equal(net.params[f"l{layer}.fwd.Wh"], np.tile(np.eye(4), (1, 4)))
                   for layer in (0, 1))
        # the layers' Wx are drawn in turn from one generator: never the same draws
        assert not np.allclose(net.params["l0.fwd.Wx"][:, :4], net.params["l1.fwd.Wx"][:2, :4])


def test_a_scale_scales_every_layer_of_a_stack():
    """gauss:5 against gauss:0.2 from the same generator: every layer's Wh is 25 times larger."""
    def stack():
        return refnorm.Stack("lstm", 2, 3, num_layers=2, between="ln", seed=0)

    small = init_weights(stack(), "gauss:0.2", np.random.default_rng(5))
    large = init_weights(stack(), "gauss:5", np.random.default_rng(5))
    for layer in (0, 1):
        name = f"l{layer}.fwd.Wh"
        assert np.allclose(large.params[name], 25 * small.params[name], rtol=1e-14, atol=0)
        assert np.all(small.params[f"l{layer}.fwd.b"] == 0)
    assert np.all(small.params["l0.norm.gamma"] == 1)       # the between norm is left alone
