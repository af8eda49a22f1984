"""refnorm.interop.torch_stack: a torch.nn.LSTM, GRU or RNN with several layers or two
directions <-> refnorm.Stack. Round trips, the Stack against torch on packed sequences
(outputs, final states, every gradient), what from_torch and to_torch hand where, refusals.

Tolerances, each with its reason:
* round trips are compared bit for bit (assert_array_equal): the converters only copy and
  transpose; their one arithmetic step, bias_ih + bias_hh, is checked against the same sum.
* the Stack's outputs and final states against torch's: TOL["float64_reorder"] = 1e-12, the
  same float64 equations in another order (measured ~1e-16).
* gradients against torch autograd: TOL["autodiff"] = 1e-10, rounding amplified through T steps
  and the layers.
Every weight and both biases (bias_ih and bias_hh, so that a wrong fold of the two fails) of
every layer and direction are random and non-zero, as are x, h0, c0 and the upstream gradients;
the lengths are ragged and unsorted (pack_padded_sequence with enforce_sorted=False).
"""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import refnorm
from refnorm import interop
from refnorm.interop.torch_stack import from_torch_stack, to_torch_stack
from helpers import TOL
from test_interop import close, randomize_module, t64

T, B, D, H = 5, 4, 3, 4
LENGTHS = (5, 2, 1, 4)
KINDS = {"LSTM": ("LSTM", {}), "GRU": ("GRU", {}), "RNN-tanh": ("RNN", {"nonlinearity": "tanh"}),
         "RNN-relu": ("RNN", {"nonlinearity": "relu"})}
KINDS_CELL = {"LSTM": refnorm.LSTM, "GRU": refnorm.GRU, "RNN": refnorm.RNN}
SHAPES = [(layers, bidirectional) for layers in (1, 2, 3) for bidirectional in (False, True)]
SHAPE_IDS = [f"L{layers}{'-bi' if bi else ''}" for layers, bi in SHAPES]


def torch_module(kind, layers, bidirectional, seed=0, **options):
    """A float64 torch.nn.<kind> with every parameter N(0, 0.5²): both biases non-zero."""
    family, extra = KINDS[kind]
    module = getattr(torch.nn, family)(D, H, num_layers=layers, bidirectional=bidirectional,
                                       dtype=torch.float64, **extra, **options)
    return randomize_module(module, seed)


def suffixes(module):
    """(torch's suffix, the Stack's prefix) of every layer and direction, in torch's order."""
    dirs = ("fwd", "bwd")[:2 if module.bidirectional else 1]
    return [(f"_l{k}" + ("_reverse" if d == "bwd" else ""), f"l{k}.{d}.")
            for k in range(module.num_layers) for d in dirs]


def param(module, name):
    return getattr(module, name).detach().numpy()


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layers, bidirectional", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_torch_stack_torch_is_exact(kind, layers, bidirectional):
    """torch -> Stack -> torch: the same weights bit for bit, the two biases summed into bias_ih
    (a GRU's bias_hh keeps its n block, b_hn); the module's layers, directions, dropout,
    nonlinearity and dtype. Then Stack -> torch -> Stack gives the same params bit for bit."""
    module = torch_module(kind, layers, bidirectional, seed=3)
    net = from_torch_stack(module)
    assert isinstance(net, refnorm.Stack) and net.between is None and net.dtype == np.float64
    assert (net.num_layers, net.bidirectional) == (layers, bidirectional)
    back = interop.to_torch(net)
    assert type(back) is type(module) and back.weight_ih_l0.dtype == torch.float64
    assert (back.num_layers, back.bidirectional, back.dropout) == (layers, bidirectional, 0.0)
    assert getattr(back, "nonlinearity", None) == getattr(module, "nonlinearity", None)
    assert {n for n, _ in back.named_parameters()} == {n for n, _ in module.named_parameters()}
    for suffix, _ in suffixes(module):
        for w in ("weight_ih", "weight_hh"):
            np.testing.assert_array_equal(param(back, w + suffix), param(module, w + suffix))
        b_ih, b_hh = param(module, "bias_ih" + suffix), param(module, "bias_hh" + suffix)
        summed, kept = b_ih + b_hh, np.zeros_like(b_hh)
        if kind == "GRU":                       # n blocks: b_in in bias_ih, b_hn in bias_hh
            summed[2 * H:], kept[2 * H:] = b_ih[2 * H:], b_hh[2 * H:]
        np.testing.assert_array_equal(param(back, "bias_ih" + suffix), summed)
        np.testing.assert_array_equal(param(back, "bias_hh" + suffix), kept)
    again = interop.from_torch(back) if net.num_layers > 1 or bidirectional else \
        from_torch_stack(back)
    assert list(again.params) == list(net.params)
    for name, value in net.params.items():
        np.testing.assert_array_equal(again.params[name], value, err_msg=name)
        assert not np.shares_memory(again.params[name], value)


def test_float32_stack_makes_a_float32_module():
    module = torch_module("GRU", 2, True, seed=4).float()
    net = interop.from_torch(module, dtype="float32")
    assert net.dtype == np.float32 and all(v.dtype == np.float32 for v in net.params.values())
    back = interop.to_torch(net)
    assert back.weight_ih_l1_reverse.dtype == torch.float32
    assert torch.equal(back.weight_hh_l1_reverse, module.weight_hh_l1_reverse)


# -- the Stack against torch, packed ------------------------------------------------------------
@pytest.mark.parametrize("layers, bidirectional", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_stack_equals_torch_on_packed_sequences(kind, layers, bidirectional):
    """Outputs, h_n (c_n) to 1e-12 and the gradients of every weight and both biases of every
    layer and direction, of x, h0 (c0) to 1e-10, against torch autograd on a PackedSequence
    (unsorted lengths, enforce_sorted=False) for L = Σ dout⊙out + Σ dh_n⊙h_n (+ Σ dc_n⊙c_n)."""
    module = torch_module(kind, layers, bidirectional, seed=5)
    net = from_torch_stack(module)
    rows, F = layers * len(net.directions), net.output_size
    rng = np.random.default_rng(6)
    mask = (np.arange(T)[:, None] < np.array(LENGTHS)[None, :]).astype(float)
    x = rng.standard_normal((T, B, D))
    states = {s + "0": 0.5 * rng.standard_normal((rows, B, H)) for s in net.STATES}
    dout = rng.standard_normal((T, B, F)) * mask[..., None]
    upstream = {s: rng.standard_normal((rows, B, H)) for s in net.STATES}

    leaves = {"x": t64(x, True), **{k: t64(v, True) for k, v in states.items()}}
    initial = tuple(leaves[s + "0"] for s in net.STATES)
    packed = pack_padded_sequence(leaves["x"], torch.tensor(LENGTHS), enforce_sorted=False)
    out_p, finals_t = module(packed, initial if len(initial) > 1 else initial[0])
    out_t, _ = pad_packed_sequence(out_p, total_length=T)
    finals_t = finals_t if len(initial) > 1 else (finals_t,)
    loss = (t64(dout) * out_t).sum() + sum((t64(upstream[s]) * f).sum()
                                           for s, f in zip(net.STATES, finals_t))
    loss.backward()

    ys, finals, cache = net.forward(x, *states.values(), lengths=LENGTHS)
    grads = net.backward(dout, cache, *upstream.values())
    close("out", ys, out_t, TOL["float64_reorder"])
    for s, ours, theirs in zip(net.STATES, finals, finals_t):
        close(s + "_n", ours, theirs, TOL["float64_reorder"])
    for name, leaf in leaves.items():
        close("d" + name, grads[name], leaf.grad)
    for suffix, prefix in suffixes(module):
        close("dWx" + suffix, grads[prefix + "Wx"], getattr(module, "weight_ih" + suffix).grad.T)
        close("dWh" + suffix, grads[prefix + "Wh"], getattr(module, "weight_hh" + suffix).grad.T)
        d_ih = getattr(module, "bias_ih" + suffix).grad
        d_hh = getattr(module, "bias_hh" + suffix).grad
        close("db (bias_ih)" + suffix, grads[prefix + "b"], d_ih)
        if kind == "GRU":               # bias_hh's r, z blocks sum into b, its n block is b_hn
            close("db (bias_hh r, z)" + suffix, grads[prefix + "b"][:2 * H], d_hh[:2 * H])
            close("db_hn" + suffix, grads[prefix + "b_hn"], d_hh[2 * H:])
        else:
            close("db (bias_hh)" + suffix, grads[prefix + "b"], d_hh)
    assert set(grads) == set(net.params) | {"x"} | set(states)


def test_dropout_is_carried_and_inference_matches_eval():
    """torch's dropout between layers is the stack's dropout, and back; with dropout off
    (training=False, module.eval()) the two compute the same."""
    module = torch_module("LSTM", 3, True, seed=7, dropout=0.3)
    net = interop.from_torch(module)
    assert net.dropout == 0.3
    assert interop.to_torch(net).dropout == 0.3
    x = np.random.default_rng(8).standard_normal((T, B, D))
    ys, _, _ = net.forward(x, lengths=LENGTHS, training=False)
    module.eval()
    out, _ = module(pack_padded_sequence(t64(x), torch.tensor(LENGTHS), enforce_sorted=False))
    close("out (eval)", ys, pad_packed_sequence(out, total_length=T)[0], TOL["float64_reorder"])


# -- what from_torch and to_torch hand where ----------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_from_torch_gives_a_stack_without_layer_and_reverse(kind):
    """A stacked or bidirectional module read whole is a Stack whose every cell is the one
    from_torch(module, layer=k, reverse=...) gives; layer= or reverse= give that one cell; a
    one-layer unidirectional module gives its cell."""
    module = torch_module(kind, 2, True, seed=9)
    net = interop.from_torch(module)
    assert isinstance(net, refnorm.Stack) and net.cell_class is KINDS_CELL[KINDS[kind][0]]
    for k in range(2):
        for reverse, d in ((False, "fwd"), (True, "bwd")):
            cell = interop.from_torch(module, layer=k, reverse=reverse)
            assert type(cell) is net.cell_class
            for name, value in cell.params.items():
                np.testing.assert_array_equal(net.params[f"l{k}.{d}.{name}"], value)
    upper = interop.from_torch(module, layer=1)
    np.testing.assert_array_equal(upper.params["Wx"], net.params["l1.fwd.Wx"])
    reverse = interop.from_torch(module, reverse=True)
    np.testing.assert_array_equal(reverse.params["Wh"], net.params["l0.bwd.Wh"])
    if kind.startswith("RNN"):
        assert all(c.nonlinearity == module.nonlinearity for row in net.cells for c in row)
    single = torch_module(kind, 1, False, seed=10)
    assert type(interop.from_torch(single)) is net.cell_class
    assert isinstance(interop.from_torch(torch_module(kind, 1, True, seed=11)), refnorm.Stack)


def test_batch_first_is_a_data_layout_only():
    a = torch_module("LSTM", 2, True, seed=12)
    b = torch_module("LSTM", 2, True, seed=12, batch_first=True)
    one, other = interop.from_torch(a), interop.from_torch(b)
    for name, value in one.params.items():
        np.testing.assert_array_equal(other.params[name], value)


def test_to_torch_fills_a_given_module_in_place():
    net = from_torch_stack(torch_module("GRU", 2, True, seed=13))
    target = torch.nn.GRU(D, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    assert interop.to_torch(net, target) is target
    again = interop.from_torch(target)
    for name, value in net.params.items():
        np.testing.assert_array_equal(again.params[name], value)


def test_a_run_time_forget_bias_is_folded_into_bias_ih():
    """Stack("lstm", forget_bias=1): torch has no forget_bias, so each cell's is added to
    bias_ih's forget block (as to_torch does for one cell), and the module computes the same."""
    net = refnorm.Stack("lstm", D, H, num_layers=2, bidirectional=True, seed=14,
                        forget_bias=1.0)
    module = to_torch_stack(net)
    offset = np.zeros(4 * H)
    offset[H:2 * H] = 1.0
    for suffix, prefix in suffixes(module):
        np.testing.assert_array_equal(param(module, "bias_ih" + suffix),
                                      net.params[prefix + "b"] + offset)
    x = np.random.default_rng(15).standard_normal((T, B, D))
    ys, _, _ = net.forward(x, lengths=LENGTHS)
    out, _ = module(pack_padded_sequence(t64(x), torch.tensor(LENGTHS), enforce_sorted=False))
    close("out", ys, pad_packed_sequence(out, total_length=T)[0], TOL["float64_reorder"])


# -- refusals -----------------------------------------------------------------------------------
def test_refusals():
    with pytest.raises(ValueError, match="no normalisation between the layers"):
        interop.to_torch(refnorm.Stack("lstm", D, H, num_layers=2, between="ln"))
    for cell in ("bn_lstm", "ln_gru", "seq_bn_rnn"):
        with pytest.raises(ValueError, match="torch has no"):
            interop.to_torch(refnorm.Stack(cell, D, H, num_layers=2))
    with pytest.raises(ValueError, match="reset"):
        interop.to_torch(refnorm.Stack("gru", D, H, num_layers=2, reset="before"))
    with pytest.raises(ValueError, match="proj_size"):
        interop.from_torch(torch.nn.LSTM(D, H, num_layers=2, proj_size=2))
    with pytest.raises(ValueError, match="LSTMCell"):
        from_torch_stack(torch.nn.LSTMCell(D, H))
    net = refnorm.Stack("lstm", D, H, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="no layer= or reverse="):
        interop.to_torch(net, layer=1)
    with pytest.raises(ValueError, match="the stack needs a torch.nn.LSTM"):
        interop.to_torch(net, torch.nn.LSTM(D, H, num_layers=2))
    with pytest.raises(ValueError, match="the stack needs a torch.nn.LSTM"):
        interop.to_torch(net, torch.nn.GRU(D, H, num_layers=2, bidirectional=True))
    with pytest.raises(ValueError, match="converts a refnorm.Stack"):
        to_torch_stack(refnorm.LSTM(D, H))
