"""backward(..., state_grads=True): dL/dh̃_t (and, for the LSTM family, dL/dc̃_t) of every
step, for gradient-flow studies, against PyTorch autograd (retain_grad on the same values) and
between backends, for every cell."""
import numpy as np
import pytest
import torch

import refnorm
from helpers import (ALL_CELLS, BN_CELLS, BN_STEP_CELLS, RNN_CELLS, TOL, backends_for,
                     cell_backends, forward, make_cell, ragged_mask, random_data)
from test_autodiff import tensor, torch_forward


def torch_lstm_state_grads(cell, d, mask):
    """A plain LSTM in torch float64 keeping h̃_t, c̃_t with retain_grad."""
    p = {k: torch.tensor(v, requires_grad=True) for k, v in cell.params.items()}
    H = cell.hidden_size
    h, c = torch.tensor(d["h0"]), torch.tensor(d["c0"])
    hs, h_new_all, c_new_all = [], [], []
    for t, x_t in enumerate(torch.tensor(d["x"]).unbind(0)):
        z = x_t @ p["Wx"] + h @ p["Wh"] + p["b"]
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c_new.retain_grad()
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        h_new.retain_grad()
        m = torch.tensor(mask[t])[:, None]
        hs.append(m * h_new)
        h, c = torch.where(m > 0, h_new, h), torch.where(m > 0, c_new, c)
        h_new_all.append(h_new)
        c_new_all.append(c_new)
    loss = ((torch.stack(hs) * torch.tensor(d["dhs"])).sum() + (h * torch.tensor(d["dhT"])).sum()
            + (c * torch.tensor(d["dcT"])).sum())
    loss.backward()
    m = torch.tensor(mask)[..., None]
    return (m * torch.stack([v.grad for v in h_new_all])).numpy(), \
        (m * torch.stack([v.grad for v in c_new_all])).numpy()


@pytest.mark.parametrize("backend", backends_for("lstm"))
def test_lstm_state_grads_match_autograd(backend):
    cell = make_cell("lstm", backend=backend)
    d = random_data(cell, T=5, B=4)
    mask = ragged_mask(5, 4, [5, 3, 0, 2])
    hs, _, cache = cell.forward(d["x"], d["h0"], d["c0"], mask=mask)
    grads = cell.backward(d["dhs"], cache, d["dhT"], d["dcT"], state_grads=True)
    dh, dc = torch_lstm_state_grads(cell, d, mask)
    assert refnorm.relative_error(grads["dh"], dh) <= TOL["autodiff"]
    assert refnorm.relative_error(grads["dc"], dc) <= TOL["autodiff"]


# the RNN family with both nonlinearities and term forms; the BN cells in training (batch
# statistics, gradients through them) and in inference
RNN_CASES = [("rnn", {"nonlinearity": "tanh"}, True), ("rnn", {"nonlinearity": "relu"}, True),
             ("bn_rnn", {"terms": "separate"}, True),
             ("bn_rnn", {"terms": "summed", "nonlinearity": "relu"}, True),
             ("bn_rnn", {"terms": "summed"}, False),
             ("seq_bn_rnn", {}, True), ("seq_bn_rnn", {"nonlinearity": "relu"}, False),
             ("ln_rnn", {"terms": "summed"}, True),
             ("ln_rnn", {"terms": "separate", "nonlinearity": "relu"}, True)]
RNN_PARAMS = [pytest.param(backend, name, options, training,
                           id="-".join([backend, name, *options.values(),
                                        "train" if training else "eval"]))
              for backend, name2 in cell_backends(RNN_CELLS)
              for name, options, training in RNN_CASES if name == name2]


@pytest.mark.parametrize("backend, name, options, training", RNN_PARAMS)
def test_rnn_state_grads_match_autograd(backend, name, options, training):
    """"dh" of the RNN family == the gradient autograd gives h̃_t in tests/torch_reference.py,
    masked to the valid steps; lengths (5, 4, 0, 3): three valid rows early, one at the end."""
    cell = make_cell(name, backend=backend, **options)
    d = random_data(cell, T=5, B=4)
    mask = ragged_mask(5, 4, [5, 4, 0, 3])
    t0 = 3 if (name in BN_STEP_CELLS and not training) else 0
    _, finals, cache = forward(cell, d, mask=mask, training=training, t0=t0, update_stats=False)
    grads = cell.backward(d["dhs"], cache, d["dhT"], state_grads=True)

    params = {k: tensor(v, grad=True) for k, v in cell.params.items()}
    keep = []
    hs, hT = torch_forward(name, cell, tensor(d["x"]), [tensor(d["h0"])], tensor(mask), params,
                           training, t0, {}, keep=keep)
    ((hs * tensor(d["dhs"])).sum() + (hT * tensor(d["dhT"])).sum()).backward()
    dh = (tensor(mask)[..., None] * torch.stack([v.grad for v in keep])).numpy()
    assert grads["dh"].shape == (5, 4, cell.hidden_size)
    assert refnorm.relative_error(grads["dh"], dh) <= TOL["autodiff"]
    assert np.all(grads["dh"][:, 2] == 0)                  # the empty sequence: nothing computed


@pytest.mark.parametrize("backend, stem", cell_backends(ALL_CELLS))
def test_state_grads_chain_across_a_split_sequence(backend, stem):
    """Split T steps into two calls: the first call's dL/dh̃ at its last step equals the output
    gradient there plus the second call's dh0 (BPTT 4), and the other gradients are unchanged
    by asking for the state gradients."""
    cell = make_cell(stem, backend=backend)
    d = random_data(cell, T=5, B=3)
    kw = {"training": False} if stem in BN_CELLS else {}
    first = {k: v[:3] if k in ("x", "dhs") else v for k, v in d.items()}
    hs1, finals1, cache1 = forward(cell, first, **kw)
    second = {"x": d["x"][3:], **{s + "0": finals1[s + "T"] for s in cell.STATES}}
    hs2, _, cache2 = forward(cell, second, t0=3, **kw)
    g2 = cell.backward(d["dhs"][3:], cache2, **{f"d{s}T": d[f"d{s}T"] for s in cell.STATES},
                       state_grads=True)
    upstream = {f"d{s}T": g2[s + "0"] for s in cell.STATES}
    g1 = cell.backward(d["dhs"][:3], cache1, **upstream, state_grads=True)
    plain = cell.backward(d["dhs"][:3], cache1, **upstream)
    assert refnorm.relative_error(g1["dh"][-1], d["dhs"][2] + g2["h0"]) <= TOL["float64_reorder"]
    assert set(g1) == set(plain) | {"d" + s for s in cell.STATES}
    for name in plain:
        assert np.array_equal(g1[name], plain[name])
    for s in cell.STATES:
        assert g1["d" + s].shape == (3, 3, cell.hidden_size)


@pytest.mark.parametrize("stem", [s for s in ALL_CELLS if len(backends_for(s)) > 1])
def test_state_grads_agree_between_backends(stem):
    out = {}
    for backend in backends_for(stem):
        cell = make_cell(stem, backend=backend)
        d = random_data(cell, T=5, B=4)
        kw = {"update_stats": False} if stem in BN_CELLS else {}
        _, _, cache = forward(cell, d, mask=ragged_mask(5, 4, [5, 3, 0, 2]), **kw)
        out[backend] = cell.backward(d["dhs"], cache, **{f"d{s}T": d[f"d{s}T"]
                                                         for s in cell.STATES},
                                     state_grads=True)
    for name in ("d" + s for s in cell.STATES):
        assert refnorm.relative_error(out["numpy"][name], out["numba"][name]) <= 1e-12
        assert np.all(out["numpy"][name][3:, 1] == 0)      # padded steps: nothing computed
