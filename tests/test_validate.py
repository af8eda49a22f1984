"""refnorm.validate and `refnorm validate`: correct peers pass, broken ones are caught tensor by
tensor, and the command's exit status says which.

Tolerances are validate's own (refnorm.validate.TOLERANCE, chosen by the target's dtype): 1e-10
for float64 peers (rounding only), 1e-4 for float32. Every weight is random and non-zero (the
targets are filled from refnorm.randomize'd cells through the converters), lengths are ragged.
"""
import os

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
