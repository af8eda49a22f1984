"""backward(..., state_grads=True): dL/dh̃_t and dL/dc̃_t of every step, for gradient-flow
studies, against PyTorch autograd (retain_grad on the same values) and between backends."""
import numpy as np
import pytest
import torch

import refnorm
from helpers import BACKENDS, CELL_NAMES, TOL, make_cell, ragged_mask, random_data


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_state_grads_match_autograd(backend):
    cell = make_cell("lstm", backend=backend)
    d = random_data(cell, T=5, B=4)
    mask = ragged_mask(5, 4, [5, 3, 0, 2])
    hs, _, cache = cell.forward(d["x"], d["h0"], d["c0"], mask=mask)
    grads = cell.backward(d["dhs"], cache, d["dhT"], d["dcT"], state_grads=True)
    dh, dc = torch_lstm_state_grads(cell, d, mask)
    assert refnorm.relative_error(grads["dh"], dh) <= TOL["autodiff"]
    assert refnorm.relative_error(grads["dc"], dc) <= TOL["autodiff"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem", CELL_NAMES)
def test_state_grads_chain_across_a_split_sequence(backend, stem):
    """Split T steps into two calls: the first call's dL/dh̃ at its last step equals the output
    gradient there plus the second call's dh0 (BPTT 4), and the other gradients are unchanged
    by asking for the state gradients."""
    cell = make_cell(stem, backend=backend)
    d = random_data(cell, T=5, B=3)
    kw = {"training": False} if stem in ("bn_lstm", "seq_bn_lstm") else {}
    hs1, (h1, c1), cache1 = cell.forward(d["x"][:3], d["h0"], d["c0"], **kw)
    hs2, _, cache2 = cell.forward(d["x"][3:], h1, c1, t0=3, **kw)
    g2 = cell.backward(d["dhs"][3:], cache2, d["dhT"], d["dcT"], state_grads=True)
    g1 = cell.backward(d["dhs"][:3], cache1, g2["h0"], g2["c0"], state_grads=True)
    plain = cell.backward(d["dhs"][:3], cache1, g2["h0"], g2["c0"])
    assert refnorm.relative_error(g1["dh"][-1], d["dhs"][2] + g2["h0"]) <= TOL["float64_reorder"]
    assert set(g1) == set(plain) | {"dh", "dc"}
    for name in plain:
        assert np.array_equal(g1[name], plain[name])
    assert g1["dh"].shape == g1["dc"].shape == (3, 3, cell.hidden_size)


@pytest.mark.parametrize("stem", CELL_NAMES)
def test_state_grads_agree_between_backends(stem):
    out = {}
    for backend in BACKENDS:
        cell = make_cell(stem, backend=backend)
        d = random_data(cell, T=5, B=4)
        _, _, cache = cell.forward(d["x"], d["h0"], d["c0"], mask=ragged_mask(5, 4, [5, 3, 0, 2]),
                                   update_stats=False) if stem in ("bn_lstm", "seq_bn_lstm") \
            else cell.forward(d["x"], d["h0"], d["c0"], mask=ragged_mask(5, 4, [5, 3, 0, 2]))
        out[backend] = cell.backward(d["dhs"], cache, d["dhT"], d["dcT"], state_grads=True)
    for name in ("dh", "dc"):
        assert refnorm.relative_error(out["numpy"][name], out["numba"][name]) <= 1e-12
        assert np.all(out["numpy"][name][3:, 1] == 0)      # padded steps: nothing computed
