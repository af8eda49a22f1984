"""refnorm's hand-written forward and BPTT against PyTorch float64 autograd.

Two independent references:
* tests/torch_reference.py, the twelve cells written again from the equations, differentiated by
  autograd: outputs, every gradient of L = Σ dhs⊙hs + Σ dhT⊙hT (+ Σ dcT⊙cT), and the BN
  statistics in the cache, for every cell and option that changes the equations, training and
  inference, with and without a ragged mask;
* torch.nn.LSTM, torch.nn.RNN (tanh and relu) and torch.nn.GRU (reset after) for the plain cells, with equal lengths and with
  packed variable lengths.
"""
import numpy as np
import pytest
import torch

import refnorm
from helpers import (BACKENDS, BN_CELLS, BN_STEP_CELLS, TOL, backends_for, final_names,
                     initial_names, make_cell, ragged_mask, random_data, upstream_names)
import torch_reference

T, B, D, H = 5, 4, 3, 3
# a full-length sequence, an empty one and two in between: steps 3 and 4 have a single valid row
LENGTHS = (5, 0, 3, 2)
# the per-step BN cells' inference starts at absolute step 3 of make_cell's 6 slots, so the
# local steps use slots 3, 4, 5, 5, 5: steps past the last slot are clamped to it (BN-LSTM 5)
BN_T0 = 3

# (cell name, constructor options): the papers' cells, LN both over the joint 4H row and per
# gate, every variant of derivations/variants.md (each with a run-time forget bias too), and the
# RNN family with both nonlinearities, both term forms and padded rows in the BN statistics, and
# the GRU family with both reset placements and padded rows in the BN statistics
CASES = [("lstm", {}), ("bn_lstm", {}), ("seq_bn_lstm", {}),
         ("ln_lstm", {"per_gate": False}), ("ln_lstm", {"per_gate": True}),
         ("lstm", {"forget_bias": 1.0}),
         ("bn_lstm", {"carry": "normalized", "term_beta": True, "forget_bias": 0.6}),
         ("bn_lstm", {"pad_stats": "include", "term_beta": True}),
         ("ln_lstm", {"carry": "normalized", "term_beta": True}),
         ("ln_lstm", {"terms": "summed", "per_gate": True, "carry": "normalized",
                      "forget_bias": 1.0}),
         ("ln_lstm", {"terms": "summed", "forget_bias": -0.4}),
         ("rnn", {}), ("rnn", {"nonlinearity": "relu"}),
         ("bn_rnn", {}), ("bn_rnn", {"terms": "summed", "nonlinearity": "relu"}),
         ("bn_rnn", {"terms": "summed", "pad_stats": "include"}),
         ("bn_rnn", {"nonlinearity": "relu", "pad_stats": "include", "eps": 1e-3}),
         ("seq_bn_rnn", {}), ("seq_bn_rnn", {"nonlinearity": "relu", "pad_stats": "include"}),
         ("ln_rnn", {}), ("ln_rnn", {"terms": "separate", "nonlinearity": "relu"}),
         ("ln_rnn", {"terms": "separate", "eps": 1e-3}),
         ("gru", {"reset": "after"}), ("gru", {"reset": "before"}),
         ("bn_gru", {}), ("bn_gru", {"pad_stats": "include", "eps": 1e-3}),
         ("seq_bn_gru", {}), ("seq_bn_gru", {"pad_stats": "include"}),
         ("ln_gru", {}), ("ln_gru", {"eps": 1e-3})]
CASE_IDS = ["lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm-joint", "ln_lstm-per_gate",
            "lstm-forget_bias", "bn_lstm-carry_norm-term_beta", "bn_lstm-pad_include-term_beta",
            "ln_lstm-carry_norm-term_beta", "ln_lstm-tf1_contrib", "ln_lstm-summed-joint",
            "rnn", "rnn-relu", "bn_rnn", "bn_rnn-summed-relu", "bn_rnn-summed-pad_include",
            "bn_rnn-relu-pad_include-eps", "seq_bn_rnn", "seq_bn_rnn-relu-pad_include",
            "ln_rnn", "ln_rnn-separate-relu", "ln_rnn-separate-eps",
            "gru-after", "gru-before", "bn_gru", "bn_gru-pad_include-eps", "seq_bn_gru",
            "seq_bn_gru-pad_include", "ln_gru", "ln_gru-eps"]
AUTODIFF_PARAMS = [pytest.param(backend, name, options, id=f"{backend}-{case_id}")
                   for backend in BACKENDS for (name, options), case_id in zip(CASES, CASE_IDS)
                   if backend in backends_for(name)]


def tensor(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def assert_close(name, ours, theirs):
    err = refnorm.relative_error(ours, theirs.detach().numpy())
    assert err <= TOL["autodiff"], f"{name}: relative error {err:.3e}"


def torch_forward(name, cell, x, states, mask, params, training, t0, record, **rnn_only):
    """The torch reference of `cell`, with the population statistics refnorm would use: hs and
    the final states. states: the initial states, (h0, c0) or (h0,). rnn_only: keyword
    arguments of the one-state families' functions only (keep)."""
    stat_mask = torch.ones_like(mask) if getattr(cell, "pad_stats", None) == "include" else mask
    if name in BN_STEP_CELLS:
        slots = next(iter(cell.stats.values())).shape[0]
        idx = np.minimum(np.arange(t0, t0 + x.shape[0]), slots - 1)
        pop = {key: tensor(value[idx]) for key, value in cell.stats.items()}
    elif name in BN_CELLS:
        pop = {key: tensor(value) for key, value in cell.stats.items()}
    if name == "lstm":
        return torch_reference.lstm(x, *states, mask, params, forget_bias=cell.forget_bias)
    if name == "ln_lstm":
        return torch_reference.ln_lstm(x, *states, mask, params, eps=cell.eps,
                                       per_gate=cell.per_gate, forget_bias=cell.forget_bias,
                                       carry=cell.carry, terms=cell.terms)
    if name == "bn_lstm":
        return torch_reference.bn_lstm(x, *states, mask, params, training=training, eps=cell.eps,
                                       pop=pop, record=record, stat_mask=stat_mask,
                                       forget_bias=cell.forget_bias, carry=cell.carry)
    if name == "seq_bn_lstm":
        return torch_reference.seq_bn_lstm(x, *states, mask, params, training=training,
                                           eps=cell.eps, pop=pop, record=record)
    if name == "rnn":
        return torch_reference.rnn(x, *states, mask, params, nonlinearity=cell.nonlinearity,
                                   **rnn_only)
    if name == "bn_rnn":
        return torch_reference.bn_rnn(x, *states, mask, params, training=training, eps=cell.eps,
                                      terms=cell.terms, nonlinearity=cell.nonlinearity, pop=pop,
                                      record=record, stat_mask=stat_mask, **rnn_only)
    if name == "seq_bn_rnn":
        return torch_reference.seq_bn_rnn(x, *states, mask, params, training=training,
                                          eps=cell.eps, nonlinearity=cell.nonlinearity, pop=pop,
                                          record=record, stat_mask=stat_mask, **rnn_only)
    if name == "ln_rnn":
        return torch_reference.ln_rnn(x, *states, mask, params, eps=cell.eps, terms=cell.terms,
                                      nonlinearity=cell.nonlinearity, **rnn_only)
    if name == "gru":
        return torch_reference.gru(x, *states, mask, params, reset=cell.reset, **rnn_only)
    if name == "bn_gru":
        return torch_reference.bn_gru(x, *states, mask, params, training=training, eps=cell.eps,
                                      pop=pop, record=record, stat_mask=stat_mask, **rnn_only)
    if name == "seq_bn_gru":
        return torch_reference.seq_bn_gru(x, *states, mask, params, training=training,
                                          eps=cell.eps, pop=pop, record=record,
                                          stat_mask=stat_mask, **rnn_only)
    assert name == "ln_gru"
    return torch_reference.ln_gru(x, *states, mask, params, eps=cell.eps, **rnn_only)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend, name, options", AUTODIFF_PARAMS)
def test_cell_matches_torch_autograd(backend, name, options, training, masked):
    cell = make_cell(name, D, H, seed=3, backend=backend, **options)
    data = random_data(cell, T, B, seed=4)
    mask = ragged_mask(T, B, LENGTHS) if masked else None
    t0 = BN_T0 if (name in BN_STEP_CELLS and not training) else 0
    pop_before = {key: value.copy() for key, value in getattr(cell, "stats", {}).items()}

    out = cell.forward(data["x"], **{k: data[k] for k in initial_names(cell)}, mask=mask,
                       training=training, t0=t0, update_stats=False)
    hs, cache = out[0], out[-1]
    finals = dict(zip(final_names(cell), out[1] if len(cell.STATES) > 1 else (out[1],)))
    grads = cell.backward(data["dhs"], cache, **{k: data[k] for k in upstream_names(cell)})

    leaves = {key: tensor(value, grad=True) for key, value in cell.params.items()}
    leaves.update({key: tensor(data[key], grad=True) for key in ("x",) + initial_names(cell)})
    params = {key: leaves[key] for key in cell.params}
    m = tensor(mask if masked else np.ones((T, B)))
    record = {}
    hs_t, *finals_t = torch_forward(name, cell, leaves["x"],
                                    [leaves[k] for k in initial_names(cell)], m, params,
                                    training, t0, record)
    finals_t = dict(zip(final_names(cell), finals_t))
    loss = (tensor(data["dhs"]) * hs_t).sum() + sum(
        (tensor(data["d" + key]) * value).sum() for key, value in finals_t.items())
    torch_grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    assert_close("hs", hs, hs_t)
    for key in finals:
        assert_close(key, finals[key], finals_t[key])
    assert set(grads) == set(leaves)
    for key in leaves:
        assert_close(f"d{key}", grads[key], torch_grads[key])

    if name in BN_CELLS:
        assert set(record) == set(cell.stats)
        for key, value in record.items():
            assert_close(f"cache.{key}", getattr(cache, key), value)
        if training:
            rows = np.ones((T, B)) if cell.pad_stats == "include" else m.numpy()
            valid = rows.sum(1)
            np.testing.assert_array_equal(cache.count,
                                          valid if name in BN_STEP_CELLS else valid.sum())
        for key, value in pop_before.items():        # update_stats=False left them alone
            np.testing.assert_array_equal(cell.stats[key], value)


def torch_net(cell, rng):
    """torch.nn.LSTM, torch.nn.GRU (reset after), or torch.nn.RNN with the cell's nonlinearity, holding refnorm's weights, b
    split at random into bias_ih + bias_hh so that a bias counted twice (or once too few)
    shows."""
    p = cell.params
    if cell.stem == "lstm":
        net = torch.nn.LSTM(cell.input_size, cell.hidden_size, dtype=torch.float64)
    elif cell.stem == "gru":
        net = torch.nn.GRU(cell.input_size, cell.hidden_size, dtype=torch.float64)
    else:
        net = torch.nn.RNN(cell.input_size, cell.hidden_size, nonlinearity=cell.nonlinearity,
                           dtype=torch.float64)
    r = 0.5 * rng.standard_normal(p["b"].shape)
    bias_hh = r
    if cell.stem == "gru":
        # torch's GRU: b = [b_ir + b_hr | b_iz + b_hz | b_in], b_hn = b_hh's n block apart
        # (derivations/gru.md); only the r and z blocks of b are split
        rz = 2 * cell.hidden_size
        r[rz:] = 0.0
        bias_hh = np.concatenate([r[:rz], p["b_hn"]])
    with torch.no_grad():
        net.weight_ih_l0.copy_(tensor(p["Wx"].T))
        net.weight_hh_l0.copy_(tensor(p["Wh"].T))
        net.bias_ih_l0.copy_(tensor(p["b"] - r))
        net.bias_hh_l0.copy_(tensor(bias_hh))
    return net


# the plain cells and torch's module of the same equations: nn.LSTM, nn.RNN (tanh and relu)
PLAIN = [("lstm", {}), ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"}),
         ("gru", {"reset": "after"})]
PLAIN_PARAMS = [pytest.param(backend, name, options,
                             id="-".join([backend, name, *options.values()]))
                for backend in BACKENDS for name, options in PLAIN
                if backend in backends_for(name)]


@pytest.mark.parametrize("lengths", [None, (5, 2, 3, 1)], ids=["equal", "packed"])
@pytest.mark.parametrize("backend, name, options", PLAIN_PARAMS)
def test_plain_cell_matches_torch_nn(backend, name, options, lengths):
    # pack_padded_sequence rejects length 0, so the empty sequence is covered by the test above
    cell = make_cell(name, D, H, seed=5, backend=backend, **options)
    data = random_data(cell, T, B, seed=6)
    net = torch_net(cell, np.random.default_rng(7))
    x = tensor(data["x"], grad=True)
    states = {key: tensor(data[key], grad=True) for key in initial_names(cell)}
    initial = tuple(v[None] for v in states.values())
    initial = initial if len(initial) > 1 else initial[0]

    if lengths is None:
        hs_t, finals_t = net(x, initial)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out, finals_t = net(packed, initial)
        hs_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    finals_t = dict(zip(final_names(cell), (finals_t if isinstance(finals_t, tuple)
                                            else (finals_t,))))
    finals_t = {key: value[0] for key, value in finals_t.items()}
    loss = (tensor(data["dhs"]) * hs_t).sum() + sum(
        (tensor(data["d" + key]) * value).sum() for key, value in finals_t.items())
    loss.backward()

    out = cell.forward(data["x"], **{k: data[k] for k in initial_names(cell)},
                       lengths=None if lengths is None else np.array(lengths))
    finals = dict(zip(final_names(cell), out[1] if len(cell.STATES) > 1 else (out[1],)))
    grads = cell.backward(data["dhs"], out[-1], **{k: data[k] for k in upstream_names(cell)})

    assert_close("hs", out[0], hs_t)
    for key in finals:
        assert_close(key, finals[key], finals_t[key])
    assert_close("dx", grads["x"], x.grad)
    for key, leaf in states.items():
        assert_close(f"d{key}", grads[key], leaf.grad)
    assert_close("dWx", grads["Wx"], net.weight_ih_l0.grad.T)
    assert_close("dWh", grads["Wh"], net.weight_hh_l0.grad.T)
    # z = ... + bias_ih + bias_hh, so each of torch's biases gets the whole dL/db; the GRU's n
    # block of bias_hh is b_hn, inside r ⊙ (·)
    assert_close("db (bias_ih)", grads["b"], net.bias_ih_l0.grad)
    if name == "gru":
        rz = 2 * cell.hidden_size
        assert_close("db (bias_hh r, z)", grads["b"][:rz], net.bias_hh_l0.grad[:rz])
        assert_close("db_hn (bias_hh n)", grads["b_hn"], net.bias_hh_l0.grad[rz:])
    else:
        assert_close("db (bias_hh)", grads["b"], net.bias_hh_l0.grad)

    # the hand-written torch reference agrees with torch's module too
    m = tensor(np.ones((T, B)) if lengths is None else ragged_mask(T, B, lengths))
    params = {key: tensor(value) for key, value in cell.params.items()}
    ref = torch_forward(name, cell, tensor(data["x"]),
                        [tensor(data[k]) for k in initial_names(cell)], m, params, True, 0, {})
    for label, ours, theirs in zip(("hs",) + final_names(cell), ref,
                                   (hs_t, *finals_t.values())):
        assert_close(f"torch_reference {label}", ours.detach().numpy(), theirs)
