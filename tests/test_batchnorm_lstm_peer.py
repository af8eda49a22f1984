"""batchnorm-lstm 0.0.1 (PyPI; import batchnormlstm), run live against
refnorm.presets.batchnorm_lstm, through its adapter refnorm.interop.batchnorm_lstm (its layout,
its own sequence functions, and the target `refnorm validate --all` runs).

batchnorm-lstm is a NumPy BN-LSTM with its own hand-written backward: layer_utils.py
batchnorm_lstm_forward / batchnorm_lstm_backward (and their _unit steps) over layers.py
batchnorm_forward / batchnorm_backward_alt. Its layout: xs (N, T, D) batch-major, w (D, 4H),
u (H, 4H), b (4H), gate blocks g, i, f, o; shifts on both term BNs; ONE running-statistics dict
per BN site (x, h, c) shared by every time step, each step updating it in turn with momentum 0.9
(its convention: running = 0.9 running + 0.1 batch). The preset is BNLSTM(term_beta=True,
momentum=0.1, eps=1e-5, gamma_init=1.0, max_steps=1, past_max_steps="clamp") (VAR 7).

Every parameter, running statistic, state and upstream gradient is random and non-zero; the
peer's weights are copied into refnorm by the block permutation of the adapter (its LAYOUT).
It has no masking: the adapter steps its step functions on each step's valid rows for ragged
batches, checked here to be its sequence functions step for step on full ones. Compared in float64:
outputs hs, hT, cT, every gradient (x, h0, c0 and all nine parameters) and the running
statistics after one training pass, within TOL["autodiff"] = 1e-10: both sides evaluate the
same equations in float64 in a different order (its BN backward is the simplified "alt" form
s⁻¹(dx̂ − mean(dx̂) − (x − μ) mean(dx̂ (x − μ)) / s²), refnorm's (BN 10) is written in x̂), so only
rounding differs, amplified through T steps and the 1/s of three BNs per step.

Skipped, with the install line, where batchnorm-lstm is missing; a failure under CI=true (CI
installs the test extra, which pins it).
"""
import importlib
import os

import numpy as np
import pytest

import refnorm
from refnorm import presets
from refnorm.golden import random_cell
from refnorm.interop import batchnorm_lstm as peer
from refnorm.interop.batchnorm_lstm import INSTALL, LAYOUT, SITES
from refnorm.interop.layouts import GateLayout, to_canonical
from refnorm.validation import validate
from helpers import TOL

T, B, D, H = 5, 4, 3, 4
# the planted bug: its i and f blocks swapped, as if its order were g, f, i, o
SWAPPED = GateLayout(("g", "f", "i", "o"), (2, 1, 0, 3), "planted: i and f swapped")


def need(module):
    """Import the peer, or skip (fail in CI, which installs it with the test extra)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI: {INSTALL}")
        pytest.skip(f"{module} is not installed: {INSTALL}")


def peer_params(seed):
    """Random non-zero parameters in the peer's names and layout: weights and shifts
    N(0, 0.5²), gains U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: 0.5 * rng.standard_normal(shape)            # noqa: E731
    g = lambda *shape: rng.uniform(0.5, 1.5, shape)                # noqa: E731
    G = 4 * H
    return {"w": w(D, G), "u": w(H, G), "b": w(G), "gamma_x": g(G), "beta_x": w(G),
            "gamma_h": g(G), "beta_h": w(G), "gamma_c": g(H), "beta_c": w(H)}


def peer_stats(seed):
    """Random running statistics per site: means N(0, 0.5²), variances U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    return {site: (0.5 * rng.standard_normal(F), rng.uniform(0.5, 1.5, F))
            for site, F in (("x", 4 * H), ("h", 4 * H), ("c", H))}


def data(seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((T, B, D)), "h0": 0.5 * rng.standard_normal((B, H)),
            "c0": 0.5 * rng.standard_normal((B, H)), "dhs": rng.standard_normal((T, B, H)),
            "dhT": rng.standard_normal((B, H)), "dcT": rng.standard_normal((B, H))}


def gate(a, layout=LAYOUT):
    """A 4H array from its gate order into refnorm's."""
    return to_canonical(a, layout)


def preset_cell(p, stats, layout=LAYOUT, backend="numpy"):
    """refnorm's preset holding the peer's parameters and running statistics, copied by the
    adapter's from_peer; `layout` is the gate order the copy assumes (SWAPPED: the planted
    bug)."""
    cell = presets.batchnorm_lstm(D, H, backend=backend)
    cell.params.update(peer.from_peer(p, layout))
    for site, (mean, var) in stats.items():
        width = (lambda a: gate(a, layout)) if site != "c" else (lambda a: a.copy())
        cell.stats["mean_" + site][0] = width(mean)
        cell.stats["var_" + site][0] = width(var)
    return cell


def run_peer(utils, p, stats, d, mode):
    """The peer's forward (and in training its own backward), batchnormlstm.layer_utils
    `utils`, on the same numbers: the adapter's run_sequence. Returns hs (T, B, H), hT, cT,
    gradients by refnorm name (peer layout), and its bn_params."""
    return peer.run_sequence(p, stats, d, mode, utils)


def errors(cell, peer, d, training):
    """Relative error (refnorm.relative_error) of every compared tensor, by name."""
    hs_p, hT_p, cT_p, g_p, bn_params = peer
    hs, (hT, cT), cache = cell.forward(d["x"], d["h0"], d["c0"], training=training)
    err = {"hs": refnorm.relative_error(hs, hs_p)}
    if not training:
        return err
    err.update(hT=refnorm.relative_error(hT, hT_p), cT=refnorm.relative_error(cT, cT_p))
    grads = cell.backward(d["dhs"], cache, d["dhT"], d["dcT"])
    for name, theirs in g_p.items():
        four_h = name in ("Wx", "Wh", "b", "gamma_x", "gamma_h", "beta_x", "beta_h")
        err["d" + name] = refnorm.relative_error(grads[name], gate(theirs) if four_h else theirs)
    for site, bn_param in zip(SITES, bn_params):       # one slot: every step updated it
        width = gate if site != "c" else (lambda a: a)
        err["mean_" + site] = refnorm.relative_error(cell.stats["mean_" + site][0],
                                                     width(bn_param["running_mean"]))
        err["var_" + site] = refnorm.relative_error(cell.stats["var_" + site][0],
                                                    width(bn_param["running_var"]))
    return err


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_preset_matches_batchnorm_lstm(training, backend):
    """Training: outputs, every gradient and the running statistics after the pass (T = 5
    sequential EMA updates of the one slot); test mode: outputs with the running statistics."""
    utils = need("batchnormlstm.layer_utils")
    p, stats, d = peer_params(1), peer_stats(2), data(3)
    peer_run = run_peer(utils, p, stats, d, "train" if training else "test")
    err = errors(preset_cell(p, stats, backend=backend), peer_run, d, training)
    expected = {"hs"} | ({"hT", "cT", "dx", "dh0", "dc0", "dWx", "dWh", "db", "dgamma_x",
                          "dgamma_h", "dgamma_c", "dbeta_x", "dbeta_h", "dbeta_c", "mean_x",
                          "var_x", "mean_h", "var_h", "mean_c", "var_c"} if training else set())
    assert set(err) == expected
    worst = max(err, key=err.get)
    assert err[worst] <= TOL["autodiff"], (worst, err)


def test_a_planted_gate_swap_fails():
    """The comparison can fail: copying the weights with the i and f blocks swapped (as if the
    peer's order were g, f, i, o) puts every output and gradient far outside the tolerance."""
    utils = need("batchnormlstm.layer_utils")
    p, stats, d = peer_params(1), peer_stats(2), data(3)
    peer_run = run_peer(utils, p, stats, d, "train")
    err = errors(preset_cell(p, stats, layout=SWAPPED), peer_run, d, True)
    assert err["hs"] > 1e-3 and err["dWx"] > 1e-3 and err["mean_c"] > 1e-3, err


def test_its_model_test_pass_uses_batch_statistics():
    """AdvancedLSTM.loss(X) without targets sets bn_param["test"], not bn_param["mode"]: its
    "test" prediction is a training-mode pass (batch statistics, running ones updated), which
    is refnorm's training=True on zero initial states; a fresh model's running variances
    start at 0, not at refnorm's 1."""
    need("batchnormlstm.classifiers.lstm")
    from batchnormlstm.classifiers.lstm import AdvancedLSTM
    model = AdvancedLSTM([H], input_dim=D, output_dim=2, use_batchnorm=True, dtype=np.float64)
    p, d = peer_params(4), data(5)
    rng = np.random.default_rng(6)
    head = {"W2": 0.5 * rng.standard_normal((H, 2)), "b2": 0.5 * rng.standard_normal(2)}
    model.params.update({k + "1": v for k, v in p.items() if k not in ("w", "u", "b")},
                        W1=p["w"], U1=p["u"], b1=p["b"], **head)
    out = model.loss(d["x"].transpose(1, 0, 2).copy())              # "test" mode
    zero = {site: (np.zeros(F), np.zeros(F)) for site, F in (("x", 4 * H), ("h", 4 * H),
                                                              ("c", H))}
    cell = preset_cell(p, zero)
    hs, _, _ = cell.forward(d["x"], training=True)
    assert refnorm.relative_error(hs[-1] @ head["W2"] + head["b2"], out) <= TOL["autodiff"]
    assert all(bn_param["mode"] == "train" for bn_param in model.bn_params[0])
    for site, bn_param in zip(SITES, model.bn_params[0]):
        width = gate if site != "c" else (lambda a: a)
        for key in ("mean", "var"):
            assert refnorm.relative_error(cell.stats[f"{key}_{site}"][0],
                                          width(bn_param[f"running_{key}"])) <= TOL["autodiff"]


@pytest.mark.parametrize("mode", ["train", "test"])
def test_stepped_is_its_sequence_functions_on_full_batches(mode):
    """The adapter's run_stepped (its step functions on each step's valid rows, for ragged
    batches) is its own batchnorm_lstm_forward / _backward where every sequence is full: the
    same numbers, bit for bit, and the same running statistics after the pass."""
    utils = need("batchnormlstm.layer_utils")
    p, stats, d = peer_params(1), peer_stats(2), data(3)
    hs, hT, cT, grads, bn_params = peer.run_sequence(p, stats, d, mode, utils)
    hs_s, hT_s, cT_s, grads_s, bn_params_s = peer.run_stepped(p, stats, d, [T] * B, mode, utils)
    np.testing.assert_array_equal(hs, hs_s)
    if mode == "train":
        np.testing.assert_array_equal(hT, hT_s)
        np.testing.assert_array_equal(cT, cT_s)
        assert set(grads) == set(grads_s)
        for name in grads:
            np.testing.assert_array_equal(grads[name], grads_s[name], err_msg=name)
    for ours, theirs in zip(bn_params, bn_params_s):
        for key in ("running_mean", "running_var"):
            np.testing.assert_array_equal(ours[key], theirs[key])


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_validate_target_passes_on_ragged_batches(training):
    """refnorm.validate on the adapter's target (a row of `refnorm validate --all`): ragged
    lengths with a last step of one valid row, random non-zero weights and statistics
    (golden.random_cell, as `--preset batchnorm_lstm` draws them). Training compares every
    tensor; inference the outputs (its BN has no test-mode backward)."""
    need("batchnormlstm.layer_utils")
    cell = random_cell(presets.batchnorm_lstm, D, H, seed=0)
    report = validate(peer.validate_target, cell=cell, T=T, B=B, lengths=[5, 1, 3, 4],
                      training=training, outputs_only=not training)
    assert report.ok and report.float64, report
    assert len(report.rows) == (15 if training else 3)
    assert report.worst <= TOL["autodiff"]


def test_validate_target_with_swapped_gates_fails(monkeypatch):
    """The target can fail: its weights copied with the i and f blocks swapped."""
    need("batchnormlstm.layer_utils")
    to_peer = peer.to_peer
    monkeypatch.setattr(peer, "to_peer", lambda params: to_peer(params, SWAPPED))
    cell = random_cell(presets.batchnorm_lstm, D, H, seed=0)
    report = validate(peer.validate_target, cell=cell, T=T, B=B)
    assert not report.ok and report.errors["hs"] > 1e-3, report
