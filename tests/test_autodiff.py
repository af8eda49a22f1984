"""refnorm's hand-written forward and BPTT against PyTorch float64 autograd.

Two independent references:
* tests/torch_reference.py, the four cells written again from the equations, differentiated by
  autograd: outputs, every gradient of L = Σ dhs⊙hs + Σ dhT⊙hT + Σ dcT⊙cT, and the BN statistics
  in the cache, for every cell, training and inference, with and without a ragged mask;
* torch.nn.LSTM for the vanilla cell, with equal lengths and with packed variable lengths.
"""
import numpy as np
import pytest
import torch

import refnorm
from helpers import BACKENDS, TOL, make_cell, ragged_mask, random_data
import torch_reference

T, B, D, H = 5, 4, 3, 3
# a full-length sequence, an empty one and two in between: steps 3 and 4 have a single valid row
LENGTHS = (5, 0, 3, 2)
# BNLSTM inference starts at absolute step 3 of make_cell's 6 slots, so the local steps use
# slots 3, 4, 5, 5, 5: steps past the last slot are clamped to it (BN-LSTM 5)
BN_T0 = 3

# (cell name, constructor options): the papers' cells, LN both over the joint 4H row and per
# gate, and every variant of derivations/variants.md (each with a run-time forget bias too)
CASES = [("lstm", {}), ("bn_lstm", {}), ("seq_bn_lstm", {}),
         ("ln_lstm", {"per_gate": False}), ("ln_lstm", {"per_gate": True}),
         ("lstm", {"forget_bias": 1.0}),
         ("bn_lstm", {"carry": "normalized", "term_beta": True, "forget_bias": 0.6}),
         ("bn_lstm", {"pad_stats": "include", "term_beta": True}),
         ("ln_lstm", {"carry": "normalized", "term_beta": True}),
         ("ln_lstm", {"terms": "summed", "per_gate": True, "carry": "normalized",
                      "forget_bias": 1.0}),
         ("ln_lstm", {"terms": "summed", "forget_bias": -0.4})]
CASE_IDS = ["lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm-joint", "ln_lstm-per_gate",
            "lstm-forget_bias", "bn_lstm-carry_norm-term_beta", "bn_lstm-pad_include-term_beta",
            "ln_lstm-carry_norm-term_beta", "ln_lstm-tf1_contrib", "ln_lstm-summed-joint"]


def tensor(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def assert_close(name, ours, theirs):
    err = refnorm.relative_error(ours, theirs.detach().numpy())
    assert err <= TOL["autodiff"], f"{name}: relative error {err:.3e}"


def torch_forward(name, cell, x, h0, c0, mask, params, training, t0, record):
    """The torch reference of `cell`, with the population statistics refnorm would use."""
    if name == "lstm":
        return torch_reference.lstm(x, h0, c0, mask, params, forget_bias=cell.forget_bias)
    if name == "ln_lstm":
        return torch_reference.ln_lstm(x, h0, c0, mask, params, eps=cell.eps,
                                       per_gate=cell.per_gate, forget_bias=cell.forget_bias,
                                       carry=cell.carry, terms=cell.terms)
    if name == "bn_lstm":
        slots = cell.stats["mean_x"].shape[0]
        idx = np.minimum(np.arange(t0, t0 + x.shape[0]), slots - 1)
        pop = {key: tensor(value[idx]) for key, value in cell.stats.items()}
        stat_mask = torch.ones_like(mask) if cell.pad_stats == "include" else mask
        return torch_reference.bn_lstm(x, h0, c0, mask, params, training=training, eps=cell.eps,
                                       pop=pop, record=record, stat_mask=stat_mask,
                                       forget_bias=cell.forget_bias, carry=cell.carry)
    pop = {key: tensor(value) for key, value in cell.stats.items()}
    return torch_reference.seq_bn_lstm(x, h0, c0, mask, params, training=training, eps=cell.eps,
                                       pop=pop, record=record)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, options", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_matches_torch_autograd(backend, name, options, training, masked):
    cell = make_cell(name, D, H, seed=3, backend=backend, **options)
    data = random_data(cell, T, B, seed=4)
    mask = ragged_mask(T, B, LENGTHS) if masked else None
    t0 = BN_T0 if (name == "bn_lstm" and not training) else 0
    pop_before = {key: value.copy() for key, value in getattr(cell, "stats", {}).items()}

    hs, (hT, cT), cache = cell.forward(data["x"], data["h0"], data["c0"], mask, training, t0=t0,
                                       update_stats=False)
    grads = cell.backward(data["dhs"], cache, data["dhT"], data["dcT"])

    leaves = {key: tensor(value, grad=True) for key, value in cell.params.items()}
    leaves.update({key: tensor(data[key], grad=True) for key in ("x", "h0", "c0")})
    params = {key: leaves[key] for key in cell.params}
    m = tensor(mask if masked else np.ones((T, B)))
    record = {}
    hs_t, hT_t, cT_t = torch_forward(name, cell, leaves["x"], leaves["h0"], leaves["c0"], m,
                                     params, training, t0, record)
    loss = ((tensor(data["dhs"]) * hs_t).sum() + (tensor(data["dhT"]) * hT_t).sum()
            + (tensor(data["dcT"]) * cT_t).sum())
    torch_grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    assert_close("hs", hs, hs_t)
    assert_close("hT", hT, hT_t)
    assert_close("cT", cT, cT_t)
    assert set(grads) == set(leaves)
    for key in leaves:
        assert_close(f"d{key}", grads[key], torch_grads[key])

    if name in ("bn_lstm", "seq_bn_lstm"):
        assert set(record) == set(cell.stats)
        for key, value in record.items():
            assert_close(f"cache.{key}", getattr(cache, key), value)
        if training:
            rows = np.ones((T, B)) if cell.pad_stats == "include" else m.numpy()
            valid = rows.sum(1)
            np.testing.assert_array_equal(cache.count,
                                          valid if name == "bn_lstm" else valid.sum())
        for key, value in pop_before.items():        # update_stats=False left them alone
            np.testing.assert_array_equal(cell.stats[key], value)


def torch_lstm(cell, rng):
    """torch.nn.LSTM holding refnorm's weights, b split at random into bias_ih + bias_hh so that
    a bias counted twice (or once too few) shows."""
    p = cell.params
    net = torch.nn.LSTM(cell.input_size, cell.hidden_size, dtype=torch.float64)
    r = 0.5 * rng.standard_normal(p["b"].shape)
    with torch.no_grad():
        net.weight_ih_l0.copy_(tensor(p["Wx"].T))
        net.weight_hh_l0.copy_(tensor(p["Wh"].T))
        net.bias_ih_l0.copy_(tensor(p["b"] - r))
        net.bias_hh_l0.copy_(tensor(r))
    return net


@pytest.mark.parametrize("lengths", [None, (5, 2, 3, 1)], ids=["equal", "packed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_matches_torch_nn_lstm(backend, lengths):
    # pack_padded_sequence rejects length 0, so the empty sequence is covered by the test above
    cell = make_cell("lstm", D, H, seed=5, backend=backend)
    data = random_data(cell, T, B, seed=6)
    net = torch_lstm(cell, np.random.default_rng(7))
    x, h0, c0 = (tensor(data[key], grad=True) for key in ("x", "h0", "c0"))

    if lengths is None:
        hs_t, (hT_t, cT_t) = net(x, (h0[None], c0[None]))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out, (hT_t, cT_t) = net(packed, (h0[None], c0[None]))
        hs_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    hT_t, cT_t = hT_t[0], cT_t[0]
    loss = ((tensor(data["dhs"]) * hs_t).sum() + (tensor(data["dhT"]) * hT_t).sum()
            + (tensor(data["dcT"]) * cT_t).sum())
    loss.backward()

    hs, (hT, cT), cache = cell.forward(data["x"], data["h0"], data["c0"],
                                       lengths=None if lengths is None else np.array(lengths))
    grads = cell.backward(data["dhs"], cache, data["dhT"], data["dcT"])

    assert_close("hs", hs, hs_t)
    assert_close("hT", hT, hT_t)
    assert_close("cT", cT, cT_t)
    for key, leaf in (("x", x), ("h0", h0), ("c0", c0)):
        assert_close(f"d{key}", grads[key], leaf.grad)
    assert_close("dWx", grads["Wx"], net.weight_ih_l0.grad.T)
    assert_close("dWh", grads["Wh"], net.weight_hh_l0.grad.T)
    # z = ... + bias_ih + bias_hh, so each of torch's biases gets the whole dL/db
    assert_close("db (bias_ih)", grads["b"], net.bias_ih_l0.grad)
    assert_close("db (bias_hh)", grads["b"], net.bias_hh_l0.grad)

    # the hand-written torch reference agrees with torch.nn.LSTM too
    m = tensor(np.ones((T, B)) if lengths is None else ragged_mask(T, B, lengths))
    params = {key: tensor(value) for key, value in cell.params.items()}
    ref = torch_reference.lstm(tensor(data["x"]), tensor(data["h0"]), tensor(data["c0"]), m,
                               params)
    for label, ours, theirs in zip(("hs", "hT", "cT"), ref, (hs_t, hT_t, cT_t)):
        assert_close(f"torch_reference {label}", ours.detach().numpy(), theirs)
