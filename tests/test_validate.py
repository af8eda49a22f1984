"""refnorm.validate and `refnorm validate`: correct peers pass, broken ones are caught tensor by
tensor, and the command's exit status says which.

Tolerances are validate's own (refnorm.validate.TOLERANCE, chosen by the target's dtype): 1e-10
for float64 peers (rounding only), 1e-4 for float32. Every weight is random and non-zero (the
targets are filled from refnorm.randomize'd cells through the converters), lengths are ragged.
"""
import os
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")         # before any import of keras

import refnorm  # noqa: E402
from refnorm import interop, presets  # noqa: E402
from refnorm.cli import main  # noqa: E402
from refnorm.gradcheck import randomize  # noqa: E402
from refnorm.validation import TOLERANCE, validate  # noqa: E402
from test_interop import HASTE_INSTALL, need, need_keras  # noqa: E402
from test_presets import tfa_layer_norm_lstm  # noqa: E402

D, H = 3, 4
EVERY_TENSOR = {"hs", "hT", "cT", "dWx", "dWh", "db", "dx", "dh0", "dc0"}


def random_lstm(seed=0):
    return randomize(refnorm.LSTM(D, H, seed=seed), seed=seed + 1)


def torch_lstm(dtype=torch.float64, cls=torch.nn.LSTM, seed=0):
    return interop.to_torch(random_lstm(seed), cls(D, H, dtype=dtype))


def test_torch_lstm_float64_passes_on_every_tensor():
    report = validate(torch_lstm(), lengths=[6, 2, 5, 1])
    assert report.ok, report
    assert set(report.errors) == EVERY_TENSOR
    assert max(report.errors.values()) <= TOLERANCE["float64"]
    assert "PASS" in str(report)


def test_float32_is_held_to_the_float32_tolerance():
    report = validate(torch_lstm(torch.float32))
    assert report.ok and report.dtype == "float32" and report.tol == TOLERANCE["float32"]
    # the table measures something: float32 is far from float64 truth, yet within its bound
    assert max(report.errors.values()) > 1e3 * TOLERANCE["float64"]


def stacked_torch_lstm(seed=0, cls=torch.nn.LSTM):
    """2 layers, bidirectional, every layer and direction random and non-zero."""
    net = cls(D, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    for k in range(4):
        cell = randomize(interop.from_torch(net, k // 2, bool(k % 2)), seed=seed + k)
        interop.to_torch(cell, net, k // 2, bool(k % 2))
    return net


def test_stacked_bidirectional_torch_lstm_passes_on_every_layer_and_direction():
    report = validate(stacked_torch_lstm(), lengths=[6, 3, 5, 1])
    assert report.ok, report
    names = {f"d{w}_l{layer}{rev}" for w in ("Wx", "Wh", "b") for layer in (0, 1)
             for rev in ("", "_reverse")}
    assert names | {"hs", "hT", "cT", "dx", "dh0", "dc0"} == set(report.errors)
    assert max(report.errors.values()) <= TOLERANCE["float64"]


class ReverseLayerOffByOne(torch.nn.LSTM):
    """A stacked 'framework' whose layer-1 reverse direction reads its input one step shifted:
    the kind of bug a reversal within lengths invites."""

    def forward(self, x, state):
        with torch.no_grad():
            self.bias_ih_l1_reverse[:H] += 0.3
        try:
            return super().forward(x, state)
        finally:
            with torch.no_grad():
                self.bias_ih_l1_reverse[:H] -= 0.3


def test_a_broken_direction_of_a_stack_is_caught():
    report = validate(stacked_torch_lstm(cls=ReverseLayerOffByOne), lengths=[6, 3, 5, 1])
    assert not report.ok
    bad = {name for name, err in report.errors.items() if err > report.tol}
    assert {"hs", "dWx_l1_reverse"} <= bad


def test_torch_lstm_cell_passes():
    assert validate(torch_lstm(cls=torch.nn.LSTMCell)).ok


class OffByAForgetBias(torch.nn.LSTM):
    """A 'framework' with a classic bug: the forget bias applied twice. Only the forget block of
    the bias is shifted, so the outputs and some gradients differ, others not by much."""

    def forward(self, x, state):
        with torch.no_grad():
            self.bias_hh_l0[H:2 * H] += 0.5
        try:
            return super().forward(x, state)
        finally:
            with torch.no_grad():
                self.bias_hh_l0[H:2 * H] -= 0.5


def broken_torch_lstm(input_size, hidden_size):
    """A factory for the command's MODULE:ATTR form."""
    net = OffByAForgetBias(input_size, hidden_size, dtype=torch.float64)
    return interop.to_torch(randomize(refnorm.LSTM(input_size, hidden_size, seed=3), 4), net)


def test_a_broken_module_is_caught_tensor_by_tensor():
    report = validate(broken_torch_lstm(D, H))
    assert not report.ok
    bad = {name for name, err in report.errors.items() if err > report.tol}
    assert {"hs", "hT", "cT", "dWx", "dWh"} <= bad
    assert "MISMATCH" in str(report) and "FAIL" in str(report)


# haste's final-state gather indexes with a list (torch warns; the result is right, checked here)
@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence for multidimensional indexing")
def test_haste_lstm_and_layer_norm_lstm_pass():
    haste = need("haste_pytorch", HASTE_INSTALL)
    lstm = interop.to_haste(random_lstm(5), haste.LSTM(D, H).double())
    ln = interop.to_haste(randomize(refnorm.LNLSTM(D, H, seed=6), 7),
                          haste.LayerNormLSTM(D, H).double())
    for module in (lstm, ln):
        report = validate(module, lengths=[6, 3, 6, 1])
        assert report.ok, report
    assert {"dgamma_x", "dgamma_h", "dgamma_c", "dbeta_c"} <= set(report.errors)


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras_lstm_full_length_passes_and_its_masked_loop_is_not_float64():
    keras = need_keras()
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, dtype="float64")
    layer.build((None, 6, D))
    interop.to_keras(random_lstm(8), layer)
    full = validate(layer, lengths=[6, 6, 6, 6])
    assert full.ok, full
    # With a mask Keras 3.15 runs its generic loop, whose matmuls compute float64 in float32:
    # validate reports it as a float64 mismatch at the float32 level.
    masked = validate(layer, lengths=[6, 2, 5, 3])
    assert not masked.ok
    assert 1e-9 < max(masked.errors.values()) < TOLERANCE["float32"]


def tfa_callable(carry_normalized=True):
    """A callable target: the TF Addons transcription of test_presets, fed refnorm-layout params
    (with the TFA names), its gradients from torch autograd, returned in refnorm layout."""
    def run(inputs):
        p = inputs["params"]
        names = {"kernel": "Wx", "recurrent_kernel": "Wh", "bias": "b",
                 "kernel_norm/gamma": "gamma_x", "kernel_norm/beta": "beta_x",
                 "recurrent_norm/gamma": "gamma_h", "recurrent_norm/beta": "beta_h",
                 "state_norm/gamma": "gamma_c", "state_norm/beta": "beta_c"}
        leaves = {ours: torch.tensor(p[ours], requires_grad=True) for ours in names.values()}
        for k in ("x", "h0", "c0"):
            leaves[k] = torch.tensor(inputs[k], requires_grad=True)
        peer = {theirs: leaves[ours] for theirs, ours in names.items()}
        mask = torch.tensor(inputs["mask"])
        if carry_normalized:
            hs, hT, cT = tfa_layer_norm_lstm(leaves["x"], leaves["h0"], leaves["c0"], mask, peer)
        else:       # a port that forgot TFA carries the normalised cell
            hs, hT, cT = refnorm_raw_carry(leaves, mask, peer)
        loss = ((torch.tensor(inputs["dhs"]) * hs).sum() + (torch.tensor(inputs["dhT"]) * hT).sum()
                + (torch.tensor(inputs["dcT"]) * cT).sum())
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return {"hs": hs.detach().numpy(), "hT": hT.detach().numpy(), "cT": cT.detach().numpy(),
                "grads": {k: g.numpy() for k, g in zip(leaves, grads)}}
    return run


TFA_TARGET, TFA_RAW_CARRY = tfa_callable(), tfa_callable(carry_normalized=False)


def refnorm_raw_carry(leaves, mask, peer):
    import torch_reference
    params = {k: leaves[k] for k in ("Wx", "Wh", "b", "gamma_x", "beta_x", "gamma_h", "beta_h",
                                     "gamma_c", "beta_c")}
    return torch_reference.ln_lstm(leaves["x"], leaves["h0"], leaves["c0"], mask, params,
                                   eps=1e-3, per_gate=False, carry="raw")


def test_a_callable_against_a_preset():
    cell = randomize(presets.tfa_layer_norm_lstm(D, H, seed=9), seed=10)
    report = validate(tfa_callable(), cell=cell)
    assert report.ok, report
    assert {"dbeta_x", "dbeta_h", "dgamma_c"} <= set(report.errors)
    wrong = validate(tfa_callable(carry_normalized=False), cell=cell)
    assert not wrong.ok
    assert wrong.errors["cT"] > 1e-3


def test_refused_targets():
    with pytest.raises(ValueError, match="cell="):
        validate(tfa_callable())
    with pytest.raises(ValueError, match="batch_first"):
        validate(torch.nn.LSTM(D, H, num_layers=2, batch_first=True, dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths"):
        validate(torch_lstm(), T=4, B=2, lengths=[5, 1])
    with pytest.raises(ValueError, match="cannot validate"):
        validate(np.zeros(3))


def test_validate_command_exit_status(capsys):
    assert main(["validate", "torch.nn.LSTM", "--input-size", "2", "--hidden-size", "3"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["validate", "torch.nn.LSTMCell", "--dtype", "float32"]) == 0
    assert main(["validate", "torch.nn.LSTM", "--layers", "2", "--bidirectional"]) == 0
    assert main(["validate", "test_validate:broken_torch_lstm"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "FAIL" in out
    assert main(["validate", "test_validate:TFA_TARGET", "--preset", "tfa_layer_norm_lstm"]) == 0
    assert main(["validate", "test_validate:TFA_RAW_CARRY", "--preset",
                 "tfa_layer_norm_lstm"]) == 1
    assert main(["validate", "test_validate:tfa_callable", "--preset",
                 "tfa_layer_norm_lstm"]) == 2      # a factory, not f(inputs): a usage error
    assert main(["validate", "no-such-target"]) == 2


# -- a PASS means every tensor was compared (issue 20) ----------------------------------------
def refnorm_callable(cell, change=None, with_stats=True):
    """A callable target that computes the right answer with refnorm itself (a copy of `cell`
    holding the params, and the population statistics, it is handed); change(result) may
    break or rename what it returns."""
    import copy

    def run(inputs):
        twin = copy.deepcopy(cell)
        for k, v in inputs["params"].items():
            twin.params[k][...] = v
        if with_stats:
            for k, v in inputs["stats"].items():
                twin.stats[k][...] = v
        else:                       # a port that forgot the population statistics
            for k, v in twin.stats.items():
                v[...] = 0.0 if k.startswith("mean") else 1.0
        hs, (hT, cT), cache = twin.forward(inputs["x"], inputs["h0"], inputs["c0"],
                                           inputs["mask"], training=inputs["training"],
                                           update_stats=False)
        grads = twin.backward(inputs["dhs"], cache, inputs["dhT"], inputs["dcT"])
        result = {"hs": hs, "hT": hT, "cT": cT, "grads": dict(grads)}
        return change(result) if change else result
    return run


def rename(old, new):
    def change(result):
        result["grads"][new] = result["grads"].pop(old)
        return result
    return change


def doubled(name, under=None):
    def change(result):
        result["grads"][under or name] = 2 * result["grads"].pop(name)
        return result
    return change


def test_a_gradient_under_a_key_refnorm_does_not_know_is_refused():
    cell = random_lstm()
    # dWh doubled and filed under "W_h": a PASS today, with dWh never compared
    with pytest.raises(ValueError, match=r"'W_h'.*'Wh'.*accepted.*Wx, Wh, b, x, h0, c0"):
        validate(refnorm_callable(cell, doubled("Wh", under="W_h")), cell=cell)
    with pytest.raises(ValueError, match=r"'dWx'.*'Wx'"):
        validate(refnorm_callable(cell, rename("Wx", "dWx")), cell=cell)
    with pytest.raises(ValueError, match=r"'dWh'.*grads\['Wh'\]"):       # outside grads
        validate(refnorm_callable(cell, lambda r: dict(r, dWh=r["grads"].pop("Wh"))),
                 cell=cell)


def test_every_tensor_gets_a_row_and_one_not_returned_fails():
    cell = random_lstm()
    right = validate(refnorm_callable(cell), cell=cell)
    assert right.ok and set(right.errors) == EVERY_TENSOR, right
    wrong = validate(refnorm_callable(cell, doubled("Wh")), cell=cell)
    assert not wrong.ok and wrong.errors["dWh"] > 0.1
    bare = validate(refnorm_callable(cell, lambda r: {k: r[k] for k in ("hs", "hT", "cT")}),
                    cell=cell)
    assert not bare.ok and set(bare.errors) == EVERY_TENSOR, bare
    assert {n for n, e in bare.errors.items() if e > bare.tol} == EVERY_TENSOR - {"hs", "hT",
                                                                                  "cT"}
    assert str(bare).count("MISMATCH: not returned") == 6
    assert str(bare).splitlines()[-1] == "FAIL: 6 tensors not returned (dWx, dWh, db, dx, dh0, dc0)"
    # what the caller leaves out is said, in the header
    outputs = validate(refnorm_callable(cell, lambda r: {k: r[k] for k in ("hs", "hT", "cT")}),
                       cell=cell, outputs_only=True)
    assert outputs.ok and set(outputs.errors) == {"hs", "hT", "cT"}
    assert "not compared (outputs_only=True): dWx, dWh, db, dx, dh0, dc0" in str(outputs)
    no_dc0 = validate(refnorm_callable(cell, lambda r: (r["grads"].pop("c0"), r)[1]),
                      cell=cell, skip=("dc0",))
    assert no_dc0.ok and "dc0" not in no_dc0.errors
    assert "not compared (skip): dc0" in str(no_dc0)
    with pytest.raises(ValueError, match=r"'dc_0'.*'dc0'"):
        validate(refnorm_callable(cell), cell=cell, skip=("dc_0",))


def test_a_float32_pass_says_it_is_not_a_float64_check():
    cell = random_lstm()
    as32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    float32 = refnorm_callable(cell, lambda r: {"hs": as32(r["hs"]), "hT": as32(r["hT"]),
                                                "cT": as32(r["cT"]),
                                                "grads": {k: as32(v)
                                                          for k, v in r["grads"].items()}})
    report = validate(float32, cell=cell)
    assert report.ok and report.dtype == "float32" and not report.float64
    assert "PASS at float32 tolerance: not a float64 check" in str(report)
    strict = validate(float32, cell=cell, require_float64=True)
    assert not strict.ok and "float64 was required" in str(strict)
    # the least precise array sets the precision: float64 outputs, float32 gradients
    mixed = validate(refnorm_callable(cell, lambda r: dict(r, grads={
        k: as32(v) for k, v in r["grads"].items()})), cell=cell)
    assert mixed.dtype == "float32"
    full = validate(refnorm_callable(cell), cell=cell, require_float64=True)
    assert full.ok and full.float64 and str(full).splitlines()[-1] == "PASS"
    loose = validate(refnorm_callable(cell), cell=cell, tol=1e-3)
    assert loose.ok and not loose.float64 and "not a float64 check" in str(loose)


def test_validate_command_float64_flag(capsys):
    assert main(["validate", "torch.nn.LSTMCell", "--dtype", "float32"]) == 0
    assert "PASS at float32 tolerance: not a float64 check" in capsys.readouterr().out
    assert main(["validate", "torch.nn.LSTMCell", "--dtype", "float32", "--float64"]) == 1
    assert main(["validate", "torch.nn.LSTMCell", "--float64"]) == 0


def fastrnns_target(inputs):
    """The PyTorch fastrnns LayerNormLSTMCell transcription of test_presets, fed refnorm-layout
    params; it has no bias (the preset holds b at zero) and no masking (full lengths only)."""
    from test_presets import fastrnns_layer_norm_lstm
    p = inputs["params"]
    names = {"weight_ih": "Wx", "weight_hh": "Wh", "ln_i.weight": "gamma_x",
             "ln_i.bias": "beta_x", "ln_h.weight": "gamma_h", "ln_h.bias": "beta_h",
             "ln_c.weight": "gamma_c", "ln_c.bias": "beta_c"}
    flip = {"weight_ih", "weight_hh"}
    leaves = {k: torch.tensor(p[ours].T if k in flip else p[ours], requires_grad=True)
              for k, ours in names.items()}
    state = {k: torch.tensor(inputs[k], requires_grad=True) for k in ("x", "h0", "c0")}
    hs, hT, cT = fastrnns_layer_norm_lstm(state["x"], state["h0"], state["c0"],
                                          torch.tensor(inputs["mask"]), leaves)
    loss = ((torch.tensor(inputs["dhs"]) * hs).sum() + (torch.tensor(inputs["dhT"]) * hT).sum()
            + (torch.tensor(inputs["dcT"]) * cT).sum())
    g = torch.autograd.grad(loss, list(leaves.values()) + list(state.values()))
    grads = {names[k]: (v.T if k in flip else v).numpy() for k, v in zip(leaves, g)}
    grads.update({k: v.numpy() for k, v in zip(state, g[len(leaves):])})
    return {"hs": hs.detach().numpy(), "hT": hT.detach().numpy(), "cT": cT.detach().numpy(),
            "grads": grads}


def test_validate_command_honours_the_preset_like_golden(capsys):
    from refnorm import golden
    from refnorm.cli import _random_cell
    args = ["validate", "test_validate:fastrnns_target", "--preset",
            "torch_fastrnns_layer_norm_lstm", "--lengths", "6", "6", "6", "6"]
    assert main(args) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "PASS" in out and "not compared (held at zero by the preset" in out
    # one code path: the command's cell is golden's
    preset = presets.PRESETS["torch_fastrnns_layer_norm_lstm"]
    ns = type("Args", (), {"input_size": D, "hidden_size": H, "seed": 5})()
    ours, theirs = _random_cell(preset, ns), golden.random_cell(preset, D, H, seed=5)
    assert not np.any(ours.params["b"])
    for k in theirs.params:
        np.testing.assert_array_equal(ours.params[k], theirs.params[k])


def test_a_callable_sees_the_population_statistics():
    cell = randomize(refnorm.BNLSTM(D, H, seed=0, max_steps=4), seed=1)
    report = validate(refnorm_callable(cell), cell=cell, training=False)
    assert report.ok, report
    blind = validate(refnorm_callable(cell, with_stats=False), cell=cell, training=False)
    assert not blind.ok


@pytest.mark.parametrize("target, module, install", [
    ("haste.LayerNormLSTM", "haste_pytorch",
     "pip install --no-build-isolation haste-pytorch-cpu==0.5.5"),
    ("haste.LSTM", "haste_pytorch", "nvcc off the PATH"),
    ("keras.LSTM", "keras", "pip install keras"),
    ("torch.nn.LSTM", "torch", "pip install torch")])
def test_a_missing_peer_says_what_to_install(target, module, install, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)          # import raises ImportError
    assert main(["validate", target]) == 2
    err = capsys.readouterr().err
    assert install in err and target in err, err


# Which Keras backend the command runs on, and what it says when that backend's package is
# missing: tests/test_keras_backends.py (one process per backend).
