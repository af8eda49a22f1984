"""refnorm.interop: the gate-layout table, exact round trips, refused inputs, and live peers.

Tolerances, each with its reason:
* round trips are compared bit for bit (assert_array_equal): a converter only copies, transposes
  and permutes gate blocks; its one arithmetic step, adding the zero second bias that the export
  wrote, is exact.
* live peers in float64 (torch.nn.LSTM, Keras, the ONNX reference evaluator, haste, the TF1
  transcriptions): TOL["autodiff"] = 1e-10, the same equations evaluated in another order, so
  only rounding differs.
* float32 peers, TOL["float32"] = 1e-4 (eps32 ≈ 1.2e-7 amplified through T steps):
  onnxruntime, whose LSTM runs in float32 only ("LSTM operator does not support double yet"),
  and Keras with a mask, whose generic RNN loop computes float64 matmuls in float32.
Every parameter, state and upstream gradient is random and non-zero: in the peers' modules
weights, biases and shifts N(0, 0.5²) and gains 1 ± 0.3; refnorm cells by refnorm.randomize.

Peers that are not installed are skipped with the reason (pytest -ra lists it) outside CI and
fail in CI (CI=true), where .ci/run installs them all.
"""
import importlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import refnorm
from refnorm import interop
from refnorm.interop.layouts import LAYOUTS, canonical_names, from_canonical, reorder_gates, \
    to_canonical
from helpers import TOL, make_cell, ragged_mask, random_data
from test_presets import TF1_SCOPES, tf1_layer_norm_basic_lstm

T, B, D, H = 5, 4, 3, 4
LENGTHS = (5, 3, 1, 4)          # for peers that need every length >= 1 (packed sequences, ORT)
LENGTHS_WITH_EMPTY = (5, 3, 0, 2)
HASTE_INSTALL = ("after torch, with nvcc off the PATH: env PATH=<venv>/bin:/usr/bin:/bin "
                 "pip install --no-build-isolation haste-pytorch-cpu==0.5.5")


# -- helpers -----------------------------------------------------------------------------------
def need(module, install):
    """Import a peer, or skip (fail in CI, which installs every peer)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI: {install}")
        pytest.skip(f"{module} is not installed: {install}")


def need_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")       # torch is here already
    return need("keras", "pip install keras")


def close(label, ours, theirs, tol=TOL["autodiff"]):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    err = refnorm.relative_error(ours, theirs)
    print(f"{label}: {err:.2e}")
    assert err <= tol, f"{label}: relative error {err:.3e} > {tol:g}"


def assert_same_cell(a, b):
    """Bit for bit the same parameters, dtype and options; b's arrays are its own."""
    assert type(a) is type(b) and a.dtype == b.dtype
    assert (a.input_size, a.hidden_size) == (b.input_size, b.hidden_size)
    assert a.forget_bias == b.forget_bias
    for option in ("eps", "per_gate", "carry", "terms", "term_beta"):
        assert getattr(a, option, None) == getattr(b, option, None), option
    assert set(a.params) == set(b.params)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        assert b.params[name].dtype == b.dtype and b.params[name].flags.c_contiguous
        assert not np.shares_memory(a.params[name], b.params[name])


def blocks(a, order, to="ifgo"):
    """The test's own gate permutation (independent of refnorm.interop.layouts): the four H-wide
    blocks of the last axis from `order` (e.g. haste's "igfo") to `to`."""
    h = a.shape[-1] // 4
    parts = {g: a[..., k * h:(k + 1) * h] for k, g in enumerate(order)}
    return np.concatenate([parts[g] for g in to], -1)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def randomize_module(module, seed):
    """Every parameter of a torch module redrawn: gains ("gamma*") 1 ± 0.3, the rest N(0, 0.5²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("gamma"):
                p.copy_(1 + 0.3 * (2 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 1))
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def reverse_within(a, lengths):
    """a (T, B, ...) with each sequence's first lengths[b] steps reversed, padding left in
    place: the input of a reverse direction."""
    out = np.array(a)
    for b, n in enumerate(lengths):
        out[:n, b] = a[:n, b][::-1]
    return out


# -- the layout table and the reorder helper ---------------------------------------------------
def test_every_layout_maps_its_gates_to_refnorms_order():
    # the table's index maps agree with the gate names written next to them
    for name in LAYOUTS:
        assert canonical_names(name) == refnorm.config.GATE_ORDER, name
    # and with the reference table (shared/reference §2), written out here once more
    expected = {"canonical": (0, 1, 2, 3), "torch": (0, 1, 2, 3), "keras": (0, 1, 2, 3),
                "cudnn": (0, 1, 2, 3), "onnx": (0, 2, 3, 1), "haste": (0, 2, 1, 3),
                "tf1": (0, 2, 1, 3)}
    assert {name: layout.idx for name, layout in LAYOUTS.items()} == expected


def test_reorder_on_a_known_permutation():
    h = 2
    onnx_row = np.repeat(np.array(["i", "o", "f", "c"]), h)              # ONNX blocks i, o, f, c
    np.testing.assert_array_equal(to_canonical(onnx_row, "onnx"),
                                  np.repeat(np.array(["i", "f", "c", "o"]), h))
    haste_row = np.repeat(np.array(["i", "g", "f", "o"]), h)
    np.testing.assert_array_equal(to_canonical(haste_row, "haste"),
                                  np.repeat(np.array(["i", "f", "g", "o"]), h))
    # canonical_block[k] = source_block[idx[k]] on numbers, along either axis of a 2-D array
    a = np.arange(3 * 4 * h, dtype=float).reshape(3, 4 * h)
    np.testing.assert_array_equal(reorder_gates(a, (0, 2, 3, 1)),
                                  np.concatenate([a[:, 0:2], a[:, 4:6], a[:, 6:8], a[:, 2:4]], 1))
    np.testing.assert_array_equal(reorder_gates(a.T, (0, 2, 3, 1), axis=0),
                                  reorder_gates(a, (0, 2, 3, 1)).T)
    for name in LAYOUTS:
        back = from_canonical(to_canonical(a, name), name)
        np.testing.assert_array_equal(back, a)
        assert not np.shares_memory(back, a) and back.flags.c_contiguous
    with pytest.raises(ValueError, match="divisible by 4"):
        reorder_gates(np.zeros(6), (0, 1, 2, 3))
    with pytest.raises(ValueError, match="permutation"):
        reorder_gates(np.zeros(8), (0, 1, 1, 3))
    with pytest.raises(ValueError, match="layout must be one of"):
        to_canonical(np.zeros(8), "cuda")


# -- exact round trips -------------------------------------------------------------------------
def lstm_cell(dtype="float64", seed=0, **options):
    return make_cell("lstm", D, H, seed=seed, dtype=dtype, **options)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trips_from_refnorm_are_exact(dtype):
    cell = lstm_cell(dtype)
    assert_same_cell(cell, interop.from_torch(interop.to_torch(cell), dtype=dtype))
    assert_same_cell(cell, interop.from_keras(interop.to_keras(cell), dtype=dtype))
    assert_same_cell(cell, interop.from_onnx(**interop.to_onnx(cell), dtype=dtype))
    need("onnx", "pip install onnx")
    assert_same_cell(cell, interop.from_onnx_model(interop.to_onnx_model(cell, T, B),
                                                   dtype=dtype))
    tf1 = lstm_cell(dtype, forget_bias=0.75)
    assert_same_cell(tf1, interop.from_tf1(*interop.to_tf1(tf1), D, forget_bias=0.75,
                                           dtype=dtype))
    ln_tf1 = make_cell("ln_lstm", D, H, dtype=dtype, terms="summed", per_gate=True,
                       carry="normalized", eps=1e-12, forget_bias=0.5)
    assert_same_cell(ln_tf1, interop.from_tf1_layer_norm(*interop.to_tf1_layer_norm(ln_tf1), D,
                                                         forget_bias=0.5, dtype=dtype))
    need("haste_pytorch", HASTE_INSTALL)
    assert_same_cell(cell, interop.from_haste(interop.to_haste(cell), dtype=dtype))
    ln = make_cell("ln_lstm", D, H, dtype=dtype)
    assert_same_cell(ln, interop.from_haste(interop.to_haste(ln), dtype=dtype))


def test_torch_round_trip_into_layer_1_reverse():
    net = randomize_module(torch.nn.LSTM(D, H, num_layers=2, bidirectional=True,
                                         dtype=torch.float64), seed=1)
    cell = interop.from_torch(net, layer=1, reverse=True)
    assert cell.input_size == 2 * H
    other = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert interop.to_torch(cell, other, layer=1, reverse=True) is other
    for name, value in other.state_dict().items():
        if not name.endswith("_l1_reverse"):
            assert torch.equal(value, before[name]), name          # nothing else was touched
    for key in ("weight_ih", "weight_hh"):
        assert torch.equal(getattr(other, key + "_l1_reverse"), getattr(net, key + "_l1_reverse"))
    # two biases -> one -> two: their sum in bias_ih, zeros in bias_hh
    assert torch.equal(other.bias_ih_l1_reverse, net.bias_ih_l1_reverse + net.bias_hh_l1_reverse)
    assert not other.bias_hh_l1_reverse.any()
    # copies: editing either side afterwards leaves the other alone
    saved = cell.params["Wx"].copy()
    with torch.no_grad():
        net.weight_ih_l1_reverse.add_(1.0)
    np.testing.assert_array_equal(cell.params["Wx"], saved)
    cell.params["Wh"] += 1.0
    assert torch.equal(other.weight_hh_l1_reverse, net.weight_hh_l1_reverse)


def test_round_trips_from_peer_arrays_are_exact():
    rng = np.random.default_rng(2)
    draw = lambda *shape: 0.5 * rng.standard_normal(shape)          # noqa: E731
    # Keras: [kernel, recurrent_kernel, bias], and use_bias=False
    weights = [draw(D, 4 * H), draw(H, 4 * H), draw(4 * H)]
    for got, want in zip(interop.to_keras(interop.from_keras(weights)), weights):
        np.testing.assert_array_equal(got, want)
    no_bias = interop.from_keras(weights[:2])
    assert not no_bias.params["b"].any()
    # ONNX, direction 1 of a bidirectional node with Rb = 0 (what to_onnx writes)
    W, R, Wb = draw(2, 4 * H, D), draw(2, 4 * H, H), draw(2, 4 * H)
    Bias = np.concatenate([Wb, np.zeros_like(Wb)], 1)
    back = interop.to_onnx(interop.from_onnx(W, R, Bias, np.zeros((2, 3 * H)), direction=1))
    for key, want in (("W", W[1:]), ("R", R[1:]), ("B", Bias[1:])):
        np.testing.assert_array_equal(back[key], want)
    # TF1 BasicLSTMCell and LayerNormBasicLSTMCell
    kernel, bias = draw(D + H, 4 * H), draw(4 * H)
    for got, want in zip(interop.to_tf1(interop.from_tf1(kernel, bias, D)), (kernel, bias)):
        np.testing.assert_array_equal(got, want)
    scopes = TF1_SCOPES + ("state",)
    gammas = {s: 1 + 0.3 * rng.uniform(-1, 1, H) for s in scopes}
    betas = {s: draw(H) for s in scopes}
    k2, g2, b2 = interop.to_tf1_layer_norm(interop.from_tf1_layer_norm(kernel, gammas, betas, D))
    np.testing.assert_array_equal(k2, kernel)
    for s in scopes:
        np.testing.assert_array_equal(g2[s], gammas[s])
        np.testing.assert_array_equal(b2[s], betas[s])
    # the sources were copied, not aliased
    cell, saved = interop.from_keras(weights), weights[0].copy()
    weights[0] += 1.0
    np.testing.assert_array_equal(cell.params["Wx"], saved)


def test_haste_round_trip_from_modules_is_exact():
    haste = need("haste_pytorch", HASTE_INSTALL)
    for cls in (haste.LSTM, haste.LayerNormLSTM):
        module = randomize_module(cls(D, H).double(), seed=3)
        back = interop.to_haste(interop.from_haste(module))
        assert type(back) is cls
        for name, value in module.state_dict().items():
            assert torch.equal(back.state_dict()[name], value), name


def test_forget_bias_translation_keeps_the_function():
    """TF1 runs with forget_bias 1.0: exporting a forget_bias=0 cell for it moves -1 into the
    bias's forget block, and the cell read back computes the same (up to rounding)."""
    cell = lstm_cell()
    kernel, bias = interop.to_tf1(cell, forget_bias=1.0)
    back = interop.from_tf1(kernel, bias, D, forget_bias=1.0)
    np.testing.assert_array_equal(blocks(bias, "igfo")[:H], cell.params["b"][:H])
    np.testing.assert_allclose(blocks(bias, "igfo")[H:2 * H], cell.params["b"][H:2 * H] - 1.0,
                               rtol=0, atol=1e-15)
    d = random_data(cell, T, B, seed=4)
    close("tf1 forget_bias 0 -> 1: hs", back.forward(d["x"], d["h0"], d["c0"])[0],
          cell.forward(d["x"], d["h0"], d["c0"])[0], TOL["float64_reorder"])


# -- refused inputs ----------------------------------------------------------------------------
def test_torch_refusals():
    with pytest.raises(ValueError, match="proj_size=2"):
        interop.from_torch(torch.nn.LSTM(D, H, proj_size=2))
    with pytest.raises(ValueError, match="got Linear"):
        interop.from_torch(torch.nn.Linear(D, 4 * H))
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        interop.from_torch(torch.nn.LSTM(D, H, num_layers=2), layer=2)
    with pytest.raises(ValueError, match="reverse=True needs a bidirectional module"):
        interop.from_torch(torch.nn.LSTM(D, H), reverse=True)
    with pytest.raises(ValueError, match="LSTMCell has one layer and one direction"):
        interop.from_torch(torch.nn.LSTMCell(D, H), layer=1)
    with pytest.raises(ValueError, match="layer must be a non-negative integer"):
        interop.from_torch(torch.nn.LSTM(D, H), layer=-1)
    cell = lstm_cell()
    with pytest.raises(ValueError, match="takes input size 5"):
        interop.to_torch(cell, torch.nn.LSTM(5, H))
    with pytest.raises(ValueError, match="takes input size 8"):      # layer 1 reads 2H
        interop.to_torch(cell, torch.nn.LSTM(D, H, num_layers=2, bidirectional=True), layer=1)
    with pytest.raises(ValueError, match="bias=False"):
        interop.to_torch(cell, torch.nn.LSTM(D, H, bias=False))
    with pytest.raises(ValueError, match="builds a one-layer unidirectional"):
        interop.to_torch(cell, reverse=True)
    with pytest.raises(ValueError, match="converts a refnorm.LSTM, got BNLSTM"):
        interop.to_torch(make_cell("bn_lstm", D, H))
    # bias=False: b = 0 read, and a zero-bias cell written
    plain = interop.from_torch(torch.nn.LSTM(D, H, bias=False, dtype=torch.float64))
    assert not plain.params["b"].any()
    interop.to_torch(plain, torch.nn.LSTM(D, H, bias=False))


def test_array_refusals():
    rng = np.random.default_rng(5)
    W, R = rng.standard_normal((1, 4 * H, D)), rng.standard_normal((1, 4 * H, H))
    with pytest.raises(ValueError, match="peepholes are not supported"):
        interop.from_onnx(W, R, P=rng.standard_normal((1, 3 * H)))
    with pytest.raises(ValueError, match="direction=1 is out of range"):
        interop.from_onnx(W, R, direction=1)
    with pytest.raises(ValueError, match=r"R \[dirs, 4H, H\] must have shape"):
        interop.from_onnx(W, R[:, :, :2])
    with pytest.raises(ValueError, match="W must have 3 dimensions"):
        interop.from_onnx(W[0], R)
    five_blocks = [rng.standard_normal((D, 5 * H)), rng.standard_normal((H, 5 * H))]
    with pytest.raises(ValueError, match="recurrent_kernel"):      # neither 4H, 3H nor H wide
        interop.from_keras(five_blocks)
    with pytest.raises(ValueError, match="Bidirectional"):
        interop.from_keras([rng.standard_normal((D, 4 * H))] * 6)
    with pytest.raises(ValueError, match="with input_size D=2"):
        interop.from_tf1(rng.standard_normal((D + H, 4 * H)), np.zeros(4 * H), 2)
    scopes = TF1_SCOPES + ("state",)
    ones = {s: np.ones(H) for s in scopes}
    with pytest.raises(ValueError, match="exactly the keys"):
        interop.from_tf1_layer_norm(rng.standard_normal((D + H, 4 * H)),
                                    {s: ones[s] for s in TF1_SCOPES}, ones, D)
    with pytest.raises(ValueError, match="contains NaN"):
        interop.from_keras([np.full((D, 4 * H), np.nan), np.zeros((H, 4 * H))])
    # a cell of another form than the target computes
    with pytest.raises(ValueError, match="converts a refnorm.LSTM, got LNLSTM"):
        interop.to_tf1(make_cell("ln_lstm", D, H))
    with pytest.raises(ValueError, match="this cell has per_gate=False, eps=1e-05, "
                                         "carry='raw', terms='separate'"):
        interop.to_tf1_layer_norm(make_cell("ln_lstm", D, H))
    with pytest.raises(ValueError, match="this cell has eps=1e-05$"):
        interop.to_tf1_layer_norm(make_cell("ln_lstm", D, H, terms="summed", per_gate=True,
                                            carry="normalized"))


def test_onnx_model_refusals():
    onnx = need("onnx", "pip install onnx")
    model = interop.to_onnx_model(lstm_cell(), T, B)
    for attr, value, match in (("activations", ["Sigmoid", "Relu", "Tanh"], "activations"),
                               ("clip", 3.0, "clip=3.0"), ("input_forget", 1, "input_forget")):
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        bad.graph.node[0].attribute.append(onnx.helper.make_attribute(attr, value))
        with pytest.raises(ValueError, match=match):
            interop.from_onnx_model(bad)
    with pytest.raises(ValueError, match="node=1 is out of range"):
        interop.from_onnx_model(model, node=1)
    fed = onnx.ModelProto()
    fed.CopyFrom(model)
    del fed.graph.initializer[:]
    with pytest.raises(ValueError, match="not an initializer"):
        interop.from_onnx_model(fed)


def test_haste_refusals():
    haste = need("haste_pytorch", HASTE_INSTALL)
    with pytest.raises(ValueError, match="zoneout=0.1 is not supported"):
        interop.from_haste(haste.LSTM(D, H, zoneout=0.1))
    with pytest.raises(ValueError, match="expected a haste_pytorch.LSTM or LayerNormLSTM"):
        interop.from_haste(torch.nn.LSTM(D, H))
    with pytest.raises(ValueError, match="this cell has per_gate=True$"):
        interop.to_haste(make_cell("ln_lstm", D, H, per_gate=True))
    with pytest.raises(ValueError, match="this cell has carry='normalized'$"):
        interop.to_haste(make_cell("ln_lstm", D, H, carry="normalized"))
    with pytest.raises(ValueError, match="goes into a haste_pytorch.LSTM, got LayerNormLSTM"):
        interop.to_haste(lstm_cell(), haste.LayerNormLSTM(D, H))


def test_keras_refusals():
    keras = need_keras()
    relu = keras.layers.LSTM(H, activation="relu")
    relu.build((None, T, D))
    with pytest.raises(ValueError, match="activation='relu'"):
        interop.from_keras(relu)
    with pytest.raises(ValueError, match="no weights yet"):
        interop.to_keras(lstm_cell(), keras.layers.LSTM(H))


def test_interop_imports_and_converts_arrays_without_any_framework():
    code = """
import sys
for name in ("torch", "onnx", "keras", "haste_pytorch", "tensorflow"):
    sys.modules[name] = None                      # any import of these now fails
import numpy as np, refnorm, refnorm.interop as interop
cell = refnorm.randomize(refnorm.LSTM(3, 4, seed=0))
for back in (interop.from_onnx(**interop.to_onnx(cell)), interop.from_keras(interop.to_keras(cell)),
             interop.from_tf1(*interop.to_tf1(cell), 3, forget_bias=0.0)):
    assert all(np.array_equal(back.params[k], cell.params[k]) for k in cell.params)
try:
    interop.to_torch(cell)
except ImportError:
    print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- live peers --------------------------------------------------------------------------------
def refnorm_stack(cells, x, h0, c0, lengths, dout, dhn, dcn):
    """A stacked bidirectional LSTM run with refnorm cells cells[layer][direction], forward and
    backward, the way torch.nn.LSTM composes them: each layer reads the concatenated outputs
    [forward | reverse] of the one below, a reverse direction reads its input reversed within each
    length. h0, c0, dhn, dcn are (2 layers, B, H) indexed 2 * layer + direction like torch's."""
    inputs, caches, hn, cn = [x], {}, [], []
    for layer, pair in enumerate(cells):
        outs = []
        for direction, cell in enumerate(pair):
            k = 2 * layer + direction
            xin = reverse_within(inputs[-1], lengths) if direction else inputs[-1]
            hs, (hT, cT), caches[k] = cell.forward(xin, h0[k], c0[k], lengths=lengths)
            outs.append(reverse_within(hs, lengths) if direction else hs)
            hn.append(hT)
            cn.append(cT)
        inputs.append(np.concatenate(outs, -1))
    grads, d_above = {}, dout
    for layer in reversed(range(len(cells))):
        dx = 0
        for direction, cell in enumerate(cells[layer]):
            k = 2 * layer + direction
            dhs = d_above[..., direction * H:(direction + 1) * H]
            dhs = reverse_within(dhs, lengths) if direction else np.ascontiguousarray(dhs)
            grads[k] = cell.backward(dhs, caches[k], dhn[k], dcn[k])
            dx = dx + (reverse_within(grads[k]["x"], lengths) if direction else grads[k]["x"])
        d_above = dx
    return inputs[-1], np.stack(hn), np.stack(cn), grads, d_above


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["equal", "packed"])
def test_torch_stacked_bidirectional_lstm_is_four_refnorm_cells(lengths):
    """torch.nn.LSTM(num_layers=2, bidirectional=True) against the four cells from_torch reads
    out of it (layer 1 reverse included), packed for variable lengths: outputs, h_n, c_n, dx,
    dh0, dc0 and the gradient of every weight and both biases of every layer and direction."""
    net = randomize_module(torch.nn.LSTM(D, H, num_layers=2, bidirectional=True,
                                         dtype=torch.float64), seed=6)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, D))
    h0, c0 = 0.5 * rng.standard_normal((2, 4, B, H))
    dout, (dhn, dcn) = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((2, 4, B, H))
    n = np.full(B, T) if lengths is None else np.array(lengths)
    if lengths is not None:
        dout = dout * ragged_mask(T, B, lengths)[..., None]

    x_t, h0_t, c0_t = t64(x, True), t64(h0, True), t64(c0, True)
    if lengths is None:
        out_t, (hn_t, cn_t) = net(x_t, (h0_t, c0_t))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out_p, (hn_t, cn_t) = net(packed, (h0_t, c0_t))
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, total_length=T)
    loss = (t64(dout) * out_t).sum() + (t64(dhn) * hn_t).sum() + (t64(dcn) * cn_t).sum()
    loss.backward()

    cells = [[interop.from_torch(net, layer, reverse) for reverse in (False, True)]
             for layer in range(2)]
    out, hn, cn, grads, dx = refnorm_stack(cells, x, h0, c0, n, dout, dhn, dcn)
    close("out", out, out_t)
    close("h_n", hn, hn_t)
    close("c_n", cn, cn_t)
    close("dx", dx, x_t.grad)
    close("dh0", np.stack([grads[k]["h0"] for k in range(4)]), h0_t.grad)
    close("dc0", np.stack([grads[k]["c0"] for k in range(4)]), c0_t.grad)
    for k in range(4):
        suffix = f"_l{k // 2}" + ("_reverse" if k % 2 else "")
        close("dWx" + suffix, grads[k]["Wx"], getattr(net, "weight_ih" + suffix).grad.T)
        close("dWh" + suffix, grads[k]["Wh"], getattr(net, "weight_hh" + suffix).grad.T)
        close("db (bias_ih)" + suffix, grads[k]["b"], getattr(net, "bias_ih" + suffix).grad)
        close("db (bias_hh)" + suffix, grads[k]["b"], getattr(net, "bias_hh" + suffix).grad)


@pytest.mark.parametrize("bias", [True, False])
def test_torch_lstm_cell_step(bias):
    module = randomize_module(torch.nn.LSTMCell(D, H, bias=bias, dtype=torch.float64), seed=8)
    cell = interop.from_torch(module)
    d = random_data(cell, 1, B, seed=9)
    h1, c1 = module(t64(d["x"][0]), (t64(d["h0"]), t64(d["c0"])))
    hs, (hT, cT), _ = cell.forward(d["x"], d["h0"], d["c0"])
    close("LSTMCell h", hs[0], h1)
    close("LSTMCell c", cT, c1)


def test_exported_forget_bias_and_term_shifts_are_folded():
    """Cells with a run-time forget bias (and, for haste, term shifts) exported to peers that
    store one bias compute the same function there."""
    cell = lstm_cell(forget_bias=0.6)
    d = random_data(cell, T, B, seed=10)
    hs = cell.forward(d["x"], d["h0"], d["c0"])[0]
    out, _ = interop.to_torch(cell)(t64(d["x"]), (t64(d["h0"][None]), t64(d["c0"][None])))
    close("torch, folded forget_bias: hs", hs, out)
    haste = need("haste_pytorch", HASTE_INSTALL)
    ln = make_cell("ln_lstm", D, H, forget_bias=-0.4, term_beta=True)
    assert isinstance(interop.to_haste(ln), haste.LayerNormLSTM)
    hs = ln.forward(d["x"], d["h0"], d["c0"])[0]
    out, _ = interop.to_haste(ln)(t64(d["x"]), (t64(d["h0"][None]), t64(d["c0"][None])))
    close("haste, folded forget_bias and beta_x + beta_h: hs", hs, out)


# Keras reads its torch variables through np.array(...), which NumPy 2 warns about
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras_lstm_matches_refnorm_with_and_without_a_mask():
    """keras.layers.LSTM (torch backend, float64 weights and data). Without a mask Keras runs its
    fused loop (torch.matmul in float64): TOL["autodiff"]. With a mask it runs the generic loop,
    where keras.ops.matmul computes float64 products in float32 (Keras 3.15 maps 64-bit result
    types to 32-bit, keras/src/backend/common/dtypes.py BIT64_TO_BIT32_DTYPE): TOL["float32"].
    The mask has a masked first step, two holes and padded tails: Keras carries the state at masked
    steps like refnorm but repeats the previous output there, so outputs are compared at valid
    steps; the final states everywhere."""
    keras = need_keras()
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, dtype="float64")
    layer.build((None, T, D))
    rng = np.random.default_rng(11)
    layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    cell = interop.from_keras(layer)
    d = random_data(cell, T, B, seed=12)
    mask = ragged_mask(T, B, (5, 3, 4, 5))
    mask[0, 0] = mask[1, 2] = mask[3, 3] = 0                # a masked first step and two holes
    for m, tol in ((None, TOL["autodiff"]), (mask, TOL["float32"])):
        kw = {} if m is None else {"mask": m.T.astype(bool)}
        seq, h_k, c_k = layer(d["x"].transpose(1, 0, 2), initial_state=[d["h0"], d["c0"]], **kw)
        seq, h_k, c_k = (keras.ops.convert_to_numpy(v) for v in (seq, h_k, c_k))
        hs, (hT, cT), _ = cell.forward(d["x"], d["h0"], d["c0"], mask=m)
        valid = np.ones((T, B), bool) if m is None else m.astype(bool)
        label = "keras" if m is None else "keras masked"
        close(f"{label} outputs (valid steps)", hs[valid], seq.transpose(1, 0, 2)[valid], tol)
        close(f"{label} h", hT, h_k, tol)
        close(f"{label} c", cT, c_k, tol)
    # and back into a fresh layer, bit for bit
    other = keras.layers.LSTM(H, dtype="float64")
    other.build((None, T, D))
    interop.to_keras(cell, other)
    for got, want in zip(other.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "sequence_lens"])
def test_onnx_reference_evaluator_matches_refnorm(with_lengths):
    """onnx.reference.ReferenceEvaluator, float64, on to_onnx_model's model of a refnorm cell and
    on a peer's model (the same with both biases Wb, Rb random) read by from_onnx_model. onnx
    1.23's evaluator ignores sequence_lens (it runs every step): with lengths, outputs are compared
    at valid steps (padding is at the end, so they do not depend on it) and Y_h, Y_c for the
    full-length rows; onnxruntime's test below checks the padded semantics."""
    onnx = need("onnx", "pip install onnx")
    from onnx.reference import ReferenceEvaluator

    ours = lstm_cell(seed=13)
    d = random_data(ours, T, B, seed=14)
    lengths = np.array(LENGTHS_WITH_EMPTY if with_lengths else (T,) * B)
    feeds = {"X": d["x"], "initial_h": d["h0"][None], "initial_c": d["c0"][None]}
    if with_lengths:
        feeds["sequence_lens"] = lengths.astype(np.int32)
    model = interop.to_onnx_model(ours, T, B, with_sequence_lens=with_lengths)
    peer = onnx.ModelProto()
    peer.CopyFrom(model)
    (bias,) = [t for t in peer.graph.initializer if t.name == "B"]
    bias.CopyFrom(onnx.numpy_helper.from_array(
        0.5 * np.random.default_rng(15).standard_normal((1, 8 * H)), "B"))
    valid = ragged_mask(T, B, lengths).astype(bool)
    full = lengths == T
    for label, m, cell in (("to_onnx_model", model, ours),
                           ("from_onnx_model", peer, interop.from_onnx_model(peer))):
        Y, Y_h, Y_c = ReferenceEvaluator(m).run(None, feeds)
        assert Y.dtype == np.float64
        hs, (hT, cT), _ = cell.forward(d["x"], d["h0"], d["c0"], lengths=lengths)
        close(f"onnx {label} Y (valid steps)", hs[valid], Y[:, 0][valid])
        close(f"onnx {label} Y_h (full rows)", hT[full], Y_h[0][full])
        close(f"onnx {label} Y_c (full rows)", cT[full], Y_c[0][full])
    symbolic = interop.to_onnx_model(ours, None, None).graph.input[0].type.tensor_type.shape
    assert [dim.dim_param or dim.dim_value for dim in symbolic.dim] == ["T", "B", D]


def test_onnxruntime_float32_with_sequence_lens_matches_refnorm():
    """onnxruntime's LSTM kernel (float32 only) applies sequence_lens: Y is 0 past each length
    and Y_h, Y_c are each sequence's last valid state, as refnorm's outputs and hT, cT."""
    ort = need("onnxruntime", "pip install onnxruntime")
    cell = lstm_cell("float32", seed=15)
    d = random_data(cell, T, B, seed=16)
    session = ort.InferenceSession(interop.to_onnx_model(cell, T, B).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    Y, Y_h, Y_c = session.run(None, {"X": d["x"], "sequence_lens": np.array(LENGTHS, np.int32),
                                     "initial_h": d["h0"][None], "initial_c": d["c0"][None]})
    hs, (hT, cT), _ = cell.forward(d["x"], d["h0"], d["c0"], lengths=np.array(LENGTHS))
    close("onnxruntime Y (zeros past lengths)", hs, Y[:, 0], TOL["float32"])
    close("onnxruntime Y_h", hT, Y_h[0], TOL["float32"])
    close("onnxruntime Y_c", cT, Y_c[0], TOL["float32"])


@pytest.mark.parametrize("kind", ["LSTM", "LayerNormLSTM"])
def test_haste_matches_refnorm_forward_and_backward(kind):
    """haste's CPU (pure torch) path in float64 with every parameter random, random states and
    ragged lengths (one empty). haste does not mask its outputs past `lengths` (compared at valid
    steps; the upstream gradient there is 0) and takes the final state at `lengths`."""
    haste = need("haste_pytorch", HASTE_INSTALL)
    module = randomize_module(getattr(haste, kind)(D, H).double(), seed=17)
    cell = interop.from_haste(module)
    assert type(cell) is (refnorm.LSTM if kind == "LSTM" else refnorm.LNLSTM)
    d = random_data(cell, T, B, seed=18)
    mask = ragged_mask(T, B, LENGTHS_WITH_EMPTY)
    dhs = d["dhs"] * mask[..., None]
    x, h0, c0 = t64(d["x"], True), t64(d["h0"], True), t64(d["c0"], True)
    with warnings.catch_warnings():
        # haste indexes its final state with a list (base_rnn.py); torch 2.13 warns, same result
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
        y, (hn, cn) = module(x, (h0[None], c0[None]), lengths=torch.tensor(LENGTHS_WITH_EMPTY))
    loss = (t64(dhs) * y).sum() + (t64(d["dhT"]) * hn[0]).sum() + (t64(d["dcT"]) * cn[0]).sum()
    loss.backward()

    hs, (hT, cT), cache = cell.forward(d["x"], d["h0"], d["c0"],
                                       lengths=np.array(LENGTHS_WITH_EMPTY))
    grads = cell.backward(dhs, cache, d["dhT"], d["dcT"])
    valid = mask.astype(bool)
    close(f"haste {kind} outputs (valid steps)", hs[valid], y.detach().numpy()[valid])
    close(f"haste {kind} h_n", hT, hn[0])
    close(f"haste {kind} c_n", cT, cn[0])
    for name, leaf in (("x", x), ("h0", h0), ("c0", c0)):
        close(f"haste {kind} d{name}", grads[name], leaf.grad)
    g = {name: p.grad.numpy() for name, p in module.named_parameters()}
    close(f"haste {kind} dWx", grads["Wx"], blocks(g["kernel"], "igfo"))
    close(f"haste {kind} dWh", grads["Wh"], blocks(g["recurrent_kernel"], "igfo"))
    close(f"haste {kind} db", grads["b"], blocks(g["bias"], "igfo"))
    if kind == "LayerNormLSTM":
        close("haste dgamma_x (gamma[0])", grads["gamma_x"], blocks(g["gamma"][0], "igfo"))
        close("haste dgamma_h (gamma[1])", grads["gamma_h"], blocks(g["gamma"][1], "igfo"))
        close("haste dgamma_c (gamma_h)", grads["gamma_c"], g["gamma_h"])
        close("haste dbeta_c (beta_h)", grads["beta_c"], g["beta_h"])


def tf1_basic_lstm(x, h0, c0, mask, p, forget_bias):
    """tensorflow/python/ops/rnn_cell_impl.py BasicLSTMCell.call, transcribed in torch: one
    kernel on concat[x, h] plus bias, split i, j, f, o, forget_bias added at run time; under
    tf.nn.dynamic_rnn with sequence_length the state is copied through padded steps and the
    outputs are zeros there."""
    c, h, outputs = c0, h0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        gate_inputs = torch.cat([x_t, h], 1) @ p["kernel"] + p["bias"]
        i, j, f, o = gate_inputs.chunk(4, 1)
        new_c = c * torch.sigmoid(f + forget_bias) + torch.sigmoid(i) * torch.tanh(j)
        new_h = torch.tanh(new_c) * torch.sigmoid(o)
        keep = m_t[:, None] > 0
        outputs.append(m_t[:, None] * new_h)
        c, h = torch.where(keep, new_c, c), torch.where(keep, new_h, h)
    return torch.stack(outputs), h, c


@pytest.mark.parametrize("layer_norm", [False, True], ids=["BasicLSTMCell",
                                                           "LayerNormBasicLSTMCell"])
def test_tf1_cells_match_refnorm_forward_and_backward(layer_norm):
    """from_tf1 / from_tf1_layer_norm on random TF1 arrays against a torch transcription of the
    TF1 cell (LayerNormBasicLSTMCell's is tests/test_presets.py's), with forget_bias 0.8:
    outputs, final states and every gradient, mapped to refnorm's layout by the test's own
    block permutation."""
    rng = np.random.default_rng(19)
    forget_bias = 0.8
    p = {"kernel": 0.5 * rng.standard_normal((D + H, 4 * H))}
    if layer_norm:
        for s in TF1_SCOPES + ("state",):
            p[s + "/gamma"] = 1 + 0.3 * rng.uniform(-1, 1, H)
            p[s + "/beta"] = 0.5 * rng.standard_normal(H)
        gammas = {s: p[s + "/gamma"] for s in TF1_SCOPES + ("state",)}
        betas = {s: p[s + "/beta"] for s in TF1_SCOPES + ("state",)}
        cell = interop.from_tf1_layer_norm(p["kernel"], gammas, betas, D, forget_bias)
        run = lambda *a: tf1_layer_norm_basic_lstm(*a, forget_bias=forget_bias)  # noqa: E731
    else:
        p["bias"] = 0.5 * rng.standard_normal(4 * H)
        cell = interop.from_tf1(p["kernel"], p["bias"], D, forget_bias)
        run = lambda *a: tf1_basic_lstm(*a, forget_bias=forget_bias)           # noqa: E731
    d = random_data(cell, T, B, seed=20)
    mask = ragged_mask(T, B, LENGTHS_WITH_EMPTY)
    leaves = {k: t64(v, True) for k, v in p.items()}
    leaves.update({k: t64(d[k], True) for k in ("x", "h0", "c0")})
    y, hT_t, cT_t = run(leaves["x"], leaves["h0"], leaves["c0"], t64(mask),
                        {k: leaves[k] for k in p})
    loss = (t64(d["dhs"]) * y).sum() + (t64(d["dhT"]) * hT_t).sum() + (t64(d["dcT"]) * cT_t).sum()
    g = dict(zip(leaves, (t.numpy() for t in torch.autograd.grad(loss, list(leaves.values())))))

    hs, (hT, cT), cache = cell.forward(d["x"], d["h0"], d["c0"], mask=mask)
    grads = cell.backward(d["dhs"], cache, d["dhT"], d["dcT"])
    name = "tf1 LN" if layer_norm else "tf1"
    close(f"{name} outputs", hs, y)
    close(f"{name} h", hT, hT_t)
    close(f"{name} c", cT, cT_t)
    for key in ("x", "h0", "c0"):
        close(f"{name} d{key}", grads[key], g[key])
    close(f"{name} dWx", grads["Wx"], blocks(g["kernel"][:D], "igfo"))
    close(f"{name} dWh", grads["Wh"], blocks(g["kernel"][D:], "igfo"))
    if layer_norm:
        cat = lambda key: np.concatenate([g[s + key] for s in TF1_SCOPES])      # noqa: E731
        close(f"{name} db (betas)", grads["b"], blocks(cat("/beta"), "igfo"))
        close(f"{name} dgamma_z (gammas)", grads["gamma_z"], blocks(cat("/gamma"), "igfo"))
        close(f"{name} dgamma_c", grads["gamma_c"], g["state/gamma"])
        close(f"{name} dbeta_c", grads["beta_c"], g["state/beta"])
    else:
        close(f"{name} db", grads["b"], blocks(g["bias"], "igfo"))
