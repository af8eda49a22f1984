"""The GRU family's converters and live peers: torch.nn.GRU / GRUCell and haste GRU /
LayerNormGRU <-> refnorm.GRU / LNGRU (refnorm.interop.torch_gru, haste_gru).

* round trips refnorm -> peer -> refnorm are exact, bit for bit;
* each live peer passes on every tensor in float64, with ragged and with full lengths;
* planted bugs (the r and z blocks swapped in a converter) fail, at 1e-4 even: O(1) errors;
* a missing peer skips with its install line (fails under CI=true: test_interop.need).
"""
import numpy as np
import pytest
import torch

from refnorm import GRU, LNGRU, interop, presets
from refnorm.cli import main
from refnorm.golden import random_cell
from refnorm.interop import _common, haste_gru, torch_gru
from refnorm.validation import INSTALL, validate
from test_interop import need

T, B, D, H = 6, 4, 3, 4
LENGTHS = {"ragged": [6, 2, 5, 1], "full": [6, 6, 6, 6]}


def gru_cell(preset=presets.torch_gru, seed=0):
    return random_cell(preset, D, H, seed)


def assert_same(a, b):
    assert type(a) is type(b) and a.dtype == b.dtype and a.reset == b.reset
    assert set(a.params) == set(b.params)
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
        assert not np.shares_memory(a.params[name], b.params[name])


def haste():
    return need("haste_pytorch", INSTALL["haste_pytorch"])


def swap_rz(cell):
    """The planted bug: the r and z blocks of every 3H-wide param swapped."""
    for name, value in cell.params.items():
        if value.shape[-1] == 3 * cell.hidden_size:
            r, z, n = np.split(value, 3, axis=-1)
            cell.params[name] = np.ascontiguousarray(np.concatenate([z, r, n], axis=-1))
    return cell


# -- round trips -------------------------------------------------------------------------------
def test_torch_round_trips_are_exact():
    cell = gru_cell()
    assert_same(cell, interop.from_torch(interop.to_torch(cell)))
    cell_mod = interop.to_torch(cell, torch.nn.GRUCell(D, H, dtype=torch.float64))
    assert_same(cell, interop.from_torch(cell_mod))
    stack = torch.nn.GRU(D, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    upper = random_cell(presets.torch_gru, 2 * H, H, 1)
    interop.to_torch(upper, stack, layer=1, reverse=True)
    assert_same(upper, interop.from_torch(stack, layer=1, reverse=True))


def test_torch_reads_the_biases_as_documented():
    m = torch.nn.GRU(D, H, dtype=torch.float64)
    cell = interop.from_torch(m)
    b_ih, b_hh = m.bias_ih_l0.detach().numpy(), m.bias_hh_l0.detach().numpy()
    assert np.array_equal(cell.params["b"][:2 * H], b_ih[:2 * H] + b_hh[:2 * H])
    assert np.array_equal(cell.params["b"][2 * H:], b_ih[2 * H:])
    assert np.array_equal(cell.params["b_hn"], b_hh[2 * H:])
    assert np.array_equal(cell.params["Wx"], m.weight_ih_l0.detach().numpy().T)
    back = interop.to_torch(cell)
    assert np.array_equal(back.bias_hh_l0.detach().numpy()[:2 * H], np.zeros(2 * H))


def test_haste_round_trips_are_exact():
    haste()
    for preset in (presets.haste_gru, presets.haste_layer_norm_gru):
        cell = gru_cell(preset)
        assert_same(cell, interop.from_haste(interop.to_haste(cell)))


def test_refusals():
    with pytest.raises(ValueError, match="reset"):
        interop.to_torch(GRU(D, H, reset="before"))
    with pytest.raises(ValueError, match="out of range"):
        interop.from_torch(torch.nn.GRU(D, H), layer=1)
    with pytest.raises(ValueError, match="bias=False"):
        interop.to_torch(gru_cell(), torch.nn.GRU(D, H, bias=False, dtype=torch.float64))
    with pytest.raises(ValueError, match="torch.nn.LSTM"):
        interop.to_torch(gru_cell(), torch.nn.LSTM(D, H))
    with pytest.raises(ValueError, match="eps"):
        _common.gru_arrays(LNGRU(D, H, eps=1e-3), "to_haste", LNGRU)


# -- live peers --------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths", sorted(LENGTHS))
@pytest.mark.parametrize("kind", ["GRU", "GRUCell", "stack"])
def test_torch_passes_on_every_tensor(kind, lengths):
    if kind == "stack":
        m = torch.nn.GRU(D, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    else:
        m = getattr(torch.nn, kind)(D, H, dtype=torch.float64)
    report = validate(m, T=T, B=B, lengths=LENGTHS[lengths], require_float64=True)
    assert report.ok, str(report)
    names = {row[0] for row in report.rows}
    assert "db_hn" in names or "db_hn_l1_reverse" in names
    assert not {"cT", "dc0"} & names


@pytest.mark.parametrize("lengths", sorted(LENGTHS))
@pytest.mark.parametrize("name", ["GRU", "LayerNormGRU"])
def test_haste_passes_on_every_tensor(name, lengths):
    hp = haste()
    m = getattr(hp, name)(D, H).double()
    cell = gru_cell(presets.haste_layer_norm_gru if name == "LayerNormGRU" else presets.haste_gru)
    interop.to_haste(cell, m)
    report = validate(m, T=T, B=B, lengths=LENGTHS[lengths], require_float64=True)
    assert report.ok, str(report)
    assert isinstance(report.cell, LNGRU if name == "LayerNormGRU" else GRU)


@pytest.mark.parametrize("target", ["torch.nn.GRU", "torch.nn.GRUCell", "haste.GRU",
                                    "haste.LayerNormGRU"])
def test_cli_targets_pass(target, capsys):
    if target.startswith("haste"):
        haste()
    assert main(["validate", target]) == 0
    assert main(["validate", "torch.nn.GRU", "--layers", "2", "--bidirectional"]) == 0
    capsys.readouterr()


# -- planted bugs --------------------------------------------------------------------------------
def test_r_and_z_swapped_in_the_torch_converter_fails(monkeypatch):
    real = torch_gru.from_torch_gru
    monkeypatch.setattr(torch_gru, "from_torch_gru", lambda *a, **k: swap_rz(real(*a, **k)))
    for m in (torch.nn.GRU(D, H, dtype=torch.float64), torch.nn.GRUCell(D, H, dtype=torch.float64)):
        report = validate(m, T=T, B=B, tol=1e-4)
        assert not report.ok and "FAIL" in report.verdict()
    assert main(["validate", "torch.nn.GRU"]) == 1


def test_r_and_z_swapped_in_the_haste_converter_fails(monkeypatch):
    hp = haste()
    real = haste_gru.from_haste_gru
    monkeypatch.setattr(haste_gru, "from_haste_gru", lambda *a, **k: swap_rz(real(*a, **k)))
    for name in ("GRU", "LayerNormGRU"):
        m = getattr(hp, name)(D, H).double()
        report = validate(m, T=T, B=B, tol=1e-4)
        assert not report.ok, name
