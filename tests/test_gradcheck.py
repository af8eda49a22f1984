"""Finite-difference proof of every backward pass, and proof that the checker itself works."""
import numpy as np
import pytest

import refnorm
import refnorm.numpy_ref.bn_lstm
from refnorm import cli
from refnorm.gradcheck import numerical_gradient, relative_error

from helpers import (ALL_CELLS, BACKENDS, BN_STEP_CELLS, LSTM_CELLS, TOL, cell_backends,
                     initial_names, make_cell, ragged_mask)


# -- the checker on functions with known derivatives -------------------------------------------
def test_numerical_gradient_of_known_function():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4))
    x = rng.standard_normal((3, 4))

    def f(v):
        return np.sum(w * np.sin(v)) + 0.5 * np.sum(v ** 3)

    exact = w * np.cos(x) + 1.5 * x ** 2
    # central differences: truncation step²·f'''/6 ≈ 1e-12, round-off ≈ 1e-16·|f|/step ≈ 1e-10
    assert relative_error(numerical_gradient(f, x), exact) < 1e-8


def test_numerical_gradient_leaves_its_argument_alone():
    x = np.arange(6.0).reshape(2, 3) + 0.5
    before = x.copy()
    seen = []
    numerical_gradient(lambda v: seen.append(v is x) or np.sum(v ** 2), x)
    assert np.array_equal(x, before)
    assert not any(seen), "f must get fresh copies, never the caller's array"


def test_relative_error():
    a = np.array([1.0, -2.0, 4.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, a + np.array([0, 0, 4e-6])) == pytest.approx(1e-6, rel=1e-5)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(3), np.array([0, 1e-9, 0])) == 1.0


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    """Drop the mean-of-gradient term of (BN 10), a classic BN backward bug: the check must fail
    for the parameters upstream of the batch statistics, and pass again once restored."""
    original = refnorm.numpy_ref.bn_lstm.batchnorm_backward

    def without_mean_term(dy, zhat, var, m, gamma, eps, training):
        dz, dgamma, dbeta = original(dy, zhat, var, m, gamma, eps, training)
        dzhat = dy * gamma
        w = m[:, None]
        return dz + w * (w * dzhat).sum(0) / max(m.sum(), 1) / np.sqrt(var + eps), dgamma, dbeta

    cell = make_cell("bn_lstm")
    monkeypatch.setattr(refnorm.numpy_ref.bn_lstm, "batchnorm_backward", without_mean_term)
    broken = refnorm.gradcheck(cell, training=True, wrt=["Wx", "Wh"])
    assert min(broken.values()) > 1e-3
    monkeypatch.undo()
    assert max(refnorm.gradcheck(cell, training=True, wrt=["Wx", "Wh"]).values()) < TOL["gradcheck"]


def test_gradcheck_catches_a_wrong_sign_in_one_lstm_gate(monkeypatch):
    """Flip the sign of the forget-gate derivative in (LSTM 8): caught in every LSTM cell."""
    import refnorm.numpy_ref.common as common
    original = common.gates_backward

    def wrong(di, df, dg, do, gates):
        return original(di, -df, dg, do, gates)

    for module in ("lstm", "bn_lstm", "ln_lstm"):     # seq_bn_lstm reuses lstm's step
        monkeypatch.setattr(f"refnorm.numpy_ref.{module}.gates_backward", wrong)
    for stem in LSTM_CELLS:
        errors = refnorm.gradcheck(make_cell(stem), training=True, wrt=["b"])
        assert errors["b"] > 1e-3, stem


# -- every cell, every mode -------------------------------------------------------------------
# Lengths (5, 4, 0, 3) in a batch of 4: an empty sequence, three valid rows in steps 0-2, two in
# step 3 and one in step 4 (a per-step BN step with a single row). At least three rows early on:
# a per-step BN over two rows is ±γ whatever its input, so with two rows at most BNRNN's dWh
# would come from step 0 alone and be small against the finite differences' round-off (the
# comment at refnorm/cli.py CHECK_LENGTHS).
MASKS = {"no mask": None, "ragged": [5, 4, 0, 3]}

# (cell, constructor options): every cell with its defaults, then the options that change the
# equations: LN per gate, padded rows in the BN statistics, the variants of derivations/
# variants.md, the RNN family's relu and other term form, and eps = 0 (BN 15), (LN 11): random
# data has no zero variance, but the ragged BN steps with one valid row have v = 0 exactly
GRADCHECK_CASES = ([(s, {}) for s in ALL_CELLS]
                   + [("ln_lstm", {"per_gate": True}),
                      ("bn_lstm", {"pad_stats": "include"}),
                      ("seq_bn_lstm", {"pad_stats": "include"}),
                      ("lstm", {"forget_bias": 1.0}),
                      ("bn_lstm", {"carry": "normalized", "term_beta": True,
                                   "forget_bias": 0.6}),
                      ("ln_lstm", {"carry": "normalized", "term_beta": True}),
                      ("ln_lstm", {"terms": "summed", "per_gate": True,
                                   "carry": "normalized", "forget_bias": 1.0}),
                      ("bn_lstm", {"eps": 0.0, "term_beta": True}),
                      ("seq_bn_lstm", {"eps": 0.0}),
                      ("ln_lstm", {"eps": 0.0, "carry": "normalized", "term_beta": True}),
                      ("rnn", {"nonlinearity": "relu"}),
                      ("bn_rnn", {"terms": "summed", "nonlinearity": "relu"}),
                      ("bn_rnn", {"pad_stats": "include", "eps": 0.0}),
                      ("seq_bn_rnn", {"pad_stats": "include", "nonlinearity": "relu"}),
                      ("seq_bn_rnn", {"eps": 0.0}),
                      ("ln_rnn", {"terms": "separate", "nonlinearity": "relu"}),
                      ("ln_rnn", {"eps": 0.0})])
GRADCHECK_PARAMS = [pytest.param(backend, stem, options, id=f"{backend}-{stem}-{k}")
                    for backend, stem in cell_backends(ALL_CELLS)
                    for k, (s, options) in enumerate(GRADCHECK_CASES) if s == stem]


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
@pytest.mark.parametrize("backend, stem, options", GRADCHECK_PARAMS)
def test_every_gradient_matches_finite_differences(backend, stem, options, training, mask):
    cell = make_cell(stem, backend=backend, **options)
    lengths = MASKS[mask]
    kwargs = {"T": 5, "B": 4, "seed": 3}
    if lengths is not None:
        kwargs["mask"] = ragged_mask(5, 4, lengths)
    if stem in BN_STEP_CELLS and not training:
        kwargs["t0"] = 3             # slots 3, 4, 5, 5, 5 of max_steps = 6: clamping exercised
    errors = refnorm.gradcheck(cell, training=training, **kwargs)
    assert set(errors) == set(cell.params) | {"x"} | set(initial_names(cell))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["gradcheck"], (worst, errors)


@pytest.mark.parametrize("stem", BN_STEP_CELLS)
def test_gradcheck_leaves_the_cell_alone(stem):
    cell = make_cell(stem, max_steps=None)
    cell.forward(np.random.default_rng(0).standard_normal((4, 3, 3)))   # grows 4 slots
    params = {k: v.copy() for k, v in cell.params.items()}
    stats = {k: v.copy() for k, v in cell.stats.items()}
    refnorm.gradcheck(cell, training=True)
    refnorm.gradcheck(cell, training=False)
    for k in params:
        assert np.array_equal(cell.params[k], params[k])
    for k in stats:
        assert np.array_equal(cell.stats[k], stats[k])


@pytest.mark.parametrize("stem", ALL_CELLS)
def test_gradcheck_rejects_float32(stem):
    with pytest.raises(ValueError, match="float64"):
        refnorm.gradcheck(refnorm.CELLS[stem](2, 2, dtype="float32"))


# -- the command ------------------------------------------------------------------------------
def test_refnorm_check_command_passes(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out.splitlines()[-1]
    for label in ALL_CELLS + ("ln_lstm per_gate",):
        assert f" {label} " in out
    for backend in BACKENDS:
        assert out.count(f"\n{backend} ") >= 80, backend
    assert out.count(" ok") >= 80


def test_refnorm_check_command_fails_on_a_wrong_backward(monkeypatch, capsys):
    import refnorm.numpy_ref.lstm as lstm
    original = lstm.lstm_step_backward

    def leaky(dy, dH, dC, t, cache):       # forgets the carry of dC through masked steps
        dz, dh_prev, dc_prev, parts, states = original(dy, dH, dC, t, cache)
        return dz, dh_prev, dc_prev * 0.999, parts, states

    monkeypatch.setattr(lstm, "lstm_step_backward", leaky)
    assert cli.main(["check", "--backend", "numpy"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert "FAIL" in last


def test_entry_points():
    """`python -m refnorm` and the installed `refnorm` console script reach the same CLI."""
    import shutil
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "refnorm", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "check" in out
    script = shutil.which("refnorm")
    assert script is not None, "the refnorm console script is not installed"
    assert "check" in subprocess.run([script, "--help"], capture_output=True, text=True,
                                     check=True).stdout
