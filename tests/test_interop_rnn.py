"""The vanilla RNN's peers: torch.nn.RNN and RNNCell, Keras SimpleRNN (each backend), the ONNX RNN
node (reference evaluator and onnxruntime), flax linen and nnx SimpleCell. Converters
(refnorm.interop: from_/to_torch, _keras, _onnx, _onnx_model, _flax hand a refnorm.RNN and these
modules to torch_rnn, keras_rnn, onnx_rnn, flax_rnn), refnorm.validate on every live peer, the
`refnorm validate` targets, and planted bugs that must fail.

Tolerances, each with its reason:
* round trips are compared bit for bit (assert_array_equal): a converter only copies and
  transposes; its one arithmetic step, adding the zero second bias the export wrote, is exact.
* live float64 peers: TOL["autodiff"] = 1e-10 (validate's own float64 tolerance is the same):
  the same equations evaluated in another order, so only rounding differs (measured ~1e-16).
* float32 peers: TOL["float32"] = 1e-4, eps32 ≈ 1.2e-7 amplified through T steps: onnxruntime
  (no double RNN kernel), and Keras 3.15.1 where it computes a float64 SimpleRNN in float32: on
  torch always (SimpleRNNCell.call's keras.ops.matmul), on JAX with tanh and a mask
  (keras.ops.tanh; without a mask the layer does not run at all). Those reports must fail at
  float64 with the adapter's note and stay within 1e-4; the lower bound 1e-9 says the float32
  rounding is still there (a Keras that fixes it fails this test, and the notes must go).
* planted bugs are judged at 1e-4 and must fail even there: their errors are O(1).
Every weight, bias, initial state and upstream gradient is random and non-zero (refnorm.randomize
through the converters, validate's own draw for the data); ragged lengths include a length-1
sequence and one sequence cut short by several steps.

A peer that is not installed is skipped with its install line, and fails in CI (CI=true).
"""
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import refnorm
from refnorm import interop, presets, validation_matrix as vm
from refnorm.cli import main
from refnorm.golden import random_cell
from refnorm.gradcheck import randomize
from refnorm.interop import flax_rnn, onnx_rnn, torch_rnn
from refnorm.validation import INSTALL, KERAS_BACKENDS, KERAS_FLOAT32_SIMPLE_RNN, validate
from helpers import TOL
from test_interop import need, reverse_within

ROOT = Path(__file__).resolve().parents[1]
T, B, D, H = 6, 4, 3, 4
RAGGED, FULL = [6, 2, 5, 1], [6, 6, 6, 6]
LENGTHS = {"ragged": RAGGED, "full": FULL}
NONLINEARITIES = ("tanh", "relu")
ONE_STATE = {"hs", "hT", "dWx", "dWh", "db", "dx", "dh0"}


def rnn_cell(nonlinearity="tanh", dtype="float64", seed=0):
    """A refnorm.RNN with every parameter random and non-zero."""
    return randomize(refnorm.RNN(D, H, seed=seed, nonlinearity=nonlinearity, dtype=dtype),
                     seed=seed + 1)


def assert_same_rnn(a, b):
    """Bit for bit the same parameters, dtype and nonlinearity; b's arrays are its own."""
    assert type(a) is type(b) is refnorm.RNN and a.dtype == b.dtype
    assert (a.input_size, a.hidden_size, a.nonlinearity) == \
        (b.input_size, b.hidden_size, b.nonlinearity)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        assert b.params[name].dtype == b.dtype and b.params[name].flags.c_contiguous
        assert not np.shares_memory(a.params[name], b.params[name])


def failing(report):
    return {row[0] for row in report.rows if not row[-1]}


def other(nonlinearity):
    return {"tanh": "relu", "relu": "tanh"}[nonlinearity]


@pytest.fixture
def x64():
    """Flax tests: JAX's x64 mode on for the test, restored after it (it is process-wide)."""
    need("flax", INSTALL["flax"])
    import jax
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


# -- the layouts, read from the installed sources ------------------------------------------------
def test_the_layouts_are_the_installed_peers():
    """What the converters assume, read from each peer's code: torch's parameter shapes and
    nonlinearity; Keras's kernel, recurrent_kernel, bias and its activation; flax's dense_i
    (with bias) + dense_h (without); ONNX's Wb + Rb."""
    rnn = torch.nn.RNN(D, H, num_layers=2, bidirectional=True, nonlinearity="relu")
    shapes = {n: tuple(p.shape) for n, p in rnn.named_parameters()}
    assert shapes["weight_ih_l0"] == (H, D) and shapes["weight_hh_l0_reverse"] == (H, H)
    assert shapes["weight_ih_l1"] == (H, 2 * H) and shapes["bias_hh_l1_reverse"] == (H,)
    assert rnn.nonlinearity == "relu" and torch.nn.RNNCell(D, H).nonlinearity == "tanh"
    keras = importlib.util.find_spec("keras")         # read, not imported: no backend is fixed
    if keras is not None:
        folder = Path(keras.submodule_search_locations[0])
        text = (folder / "src" / "layers" / "rnn" / "simple_rnn.py").read_text()
        for line in ("shape=(input_shape[-1], self.units),", "shape=(self.units, self.units),",
                     "h = ops.matmul(sequence, self.kernel)", "h = ops.add(h, self.bias)",
                     "output = h + ops.matmul(prev_output, self.recurrent_kernel)",
                     "output = self.activation(output)", 'activation="tanh",'):
            assert line in text, line
    if importlib.util.find_spec("flax") is not None:
        from flax import linen as nn
        from flax import nnx
        linen = inspect.getsource(nn.SimpleCell.__call__)
        assert "new_carry = dense_i(name='i')(inputs) + dense_h(name='h')(carry)" in linen
        assert linen.index("use_bias=False") < linen.index("use_bias=True")   # dense_h, dense_i
        assert "return new_carry, new_carry" in linen
        source = inspect.getsource(nnx.SimpleCell)
        assert "new_carry = self.dense_i(inputs) + self.dense_h(carry)" in source
        assert source.index("self.dense_h = Linear(") < source.index("use_bias=False") < \
            source.index("self.dense_i = Linear(") < source.index("use_bias=True")
    if importlib.util.find_spec("onnx") is not None:
        from onnx.reference.ops import op_rnn
        text = inspect.getsource(op_rnn.CommonRNN._run_forward)
        assert "np.dot(x, np.transpose(W))" in text and "np.dot(H_t, np.transpose(R))" in text
        assert "np.add(*np.split(B, 2))" in text


# -- exact round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_round_trips_from_refnorm_are_exact(nonlinearity, dtype):
    cell = rnn_cell(nonlinearity, dtype)
    module = interop.to_torch(cell)
    assert type(module) is torch.nn.RNN and module.nonlinearity == nonlinearity
    assert_same_rnn(cell, interop.from_torch(module, dtype=dtype))
    assert_same_rnn(cell, interop.from_keras(interop.to_keras(cell), dtype=dtype,
                                             nonlinearity=nonlinearity))
    assert_same_rnn(cell, interop.from_onnx(**interop.to_onnx(cell), dtype=dtype,
                                            nonlinearity=nonlinearity))
    need("onnx", INSTALL["onnx"])
    model = interop.to_onnx_model(cell, T, B)
    assert [n.op_type for n in model.graph.node] == ["RNN"]
    assert_same_rnn(cell, interop.from_onnx_model(model, dtype=dtype))   # the node's activation


def test_torch_round_trips_through_every_module_kind():
    """RNNCell, and layer 1 reverse of a stacked bidirectional nn.RNN: only that layer and
    direction is written; two biases -> one -> two: their sum in bias_ih, zeros in bias_hh."""
    cell = rnn_cell("relu")
    single = interop.to_torch(cell, torch.nn.RNNCell(D, H, nonlinearity="relu",
                                                     dtype=torch.float64))
    assert_same_rnn(cell, interop.from_torch(single))
    net = torch.nn.RNN(D, H, num_layers=2, bidirectional=True, nonlinearity="relu",
                       dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    read = interop.from_torch(net, layer=1, reverse=True)
    assert read.input_size == 2 * H and read.nonlinearity == "relu"
    # the test's own reading of torch's layout, not the converter's
    np.testing.assert_array_equal(read.params["Wx"], net.weight_ih_l1_reverse.detach().numpy().T)
    np.testing.assert_array_equal(read.params["Wh"], net.weight_hh_l1_reverse.detach().numpy().T)
    np.testing.assert_array_equal(read.params["b"], (net.bias_ih_l1_reverse
                                                     + net.bias_hh_l1_reverse).detach().numpy())
    target = torch.nn.RNN(D, H, num_layers=2, bidirectional=True, nonlinearity="relu",
                          dtype=torch.float64)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert interop.to_torch(read, target, layer=1, reverse=True) is target
    for name, value in target.state_dict().items():
        if not name.endswith("_l1_reverse"):
            assert torch.equal(value, before[name]), name          # nothing else was touched
    assert torch.equal(target.weight_hh_l1_reverse, net.weight_hh_l1_reverse)
    assert torch.equal(target.bias_ih_l1_reverse, net.bias_ih_l1_reverse + net.bias_hh_l1_reverse)
    assert not target.bias_hh_l1_reverse.any()
    # copies: editing the module afterwards leaves the cell alone
    saved = read.params["Wh"].copy()
    with torch.no_grad():
        net.weight_hh_l1_reverse.add_(1.0)
    np.testing.assert_array_equal(read.params["Wh"], saved)


def test_peer_arrays_round_trip_exactly():
    """Keras's [kernel, recurrent_kernel, bias] and use_bias=False; ONNX's direction 1 of a
    bidirectional node with Rb = 0 (what to_onnx writes); the sources copied, not aliased."""
    rng = np.random.default_rng(2)
    draw = lambda *shape: 0.5 * rng.standard_normal(shape)          # noqa: E731
    weights = [draw(D, H), draw(H, H), draw(H)]
    cell = interop.from_keras(weights, nonlinearity="relu")
    assert type(cell) is refnorm.RNN and cell.nonlinearity == "relu"
    for got, want in zip(interop.to_keras(cell), weights):
        np.testing.assert_array_equal(got, want)
    assert not interop.from_keras(weights[:2]).params["b"].any()
    W, R, Wb = draw(2, H, D), draw(2, H, H), draw(2, H)
    bias = np.concatenate([Wb, np.zeros_like(Wb)], 1)
    back = interop.to_onnx(interop.from_onnx(W, R, bias, direction=1))
    for key, want in (("W", W[1:]), ("R", R[1:]), ("B", bias[1:])):
        np.testing.assert_array_equal(back[key], want)
    both = np.concatenate([Wb, draw(2, H)], 1)                        # Wb and Rb non-zero
    np.testing.assert_array_equal(interop.from_onnx(W, R, both).params["b"],
                                  both[0, :H] + both[0, H:])
    saved = weights[1].copy()
    weights[1] += 1.0
    np.testing.assert_array_equal(cell.params["Wh"], saved)


def test_flax_round_trips_are_exact_for_every_layout(x64):
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from flax import nnx

    for nonlinearity in NONLINEARITIES:
        cell, fn = rnn_cell(nonlinearity), getattr(jax.nn, nonlinearity)
        plain = interop.to_flax(cell)                          # linen's params dict
        assert set(plain) == {"i", "h"} and set(plain["h"]) == {"kernel"}
        assert plain["i"]["kernel"].dtype == jnp.float64
        assert_same_rnn(cell, interop.from_flax(plain, nonlinearity=nonlinearity))
        linen = nn.SimpleCell(H, activation_fn=fn, param_dtype=jnp.float64)
        assert_same_rnn(cell, interop.from_flax(linen.bind({"params":
                                                            interop.to_flax(cell, linen)})))
        module = nnx.SimpleCell(D, H, activation_fn=fn, param_dtype=jnp.float64,
                                rngs=nnx.Rngs(0))
        assert interop.to_flax(cell, module) is module                # nnx: in place
        assert_same_rnn(cell, interop.from_flax(module))
        # Flax's own params (every leaf redrawn non-zero, so the bias too) -> refnorm -> Flax
        rng = np.random.default_rng(4)
        tree = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype),
                            nnx.to_pure_dict(nnx.state(module, nnx.Param)))
        assert set(tree) == {"dense_i", "dense_h"} and set(tree["dense_h"]) == {"kernel"}
        again = interop.to_flax(interop.from_flax(tree), tree)
        for key in tree:
            for field in tree[key]:
                np.testing.assert_array_equal(again[key][field], tree[key][field])
    float32 = interop.to_flax(rnn_cell(), nn.SimpleCell(H, param_dtype=jnp.float32))
    assert {a.dtype for a in jax.tree.leaves(float32)} == {jnp.dtype("float32")}


# -- refused inputs ------------------------------------------------------------------------------
def test_refusals_name_what_is_refused():
    cell = rnn_cell("relu")
    with pytest.raises(ValueError, match="nonlinearity='tanh', the cell 'relu'"):
        interop.to_torch(cell, torch.nn.RNN(D, H))
    with pytest.raises(ValueError, match="expected a torch.nn.RNN or torch.nn.RNNCell, got LSTM"):
        interop.to_torch(cell, torch.nn.LSTM(D, H))
    with pytest.raises(ValueError, match="expected a torch.nn.LSTM or torch.nn.LSTMCell, got RNN"):
        interop.to_torch(refnorm.LSTM(D, H, seed=0), torch.nn.RNN(D, H))
    with pytest.raises(ValueError, match="converts a refnorm.LSTM, got BNRNN .or a refnorm.RNN"):
        interop.to_torch(refnorm.BNRNN(D, H, seed=0))
    with pytest.raises(ValueError, match="RNNCell has one layer and one direction"):
        interop.from_torch(torch.nn.RNNCell(D, H), layer=1)
    with pytest.raises(ValueError, match="bias=False"):
        interop.to_torch(cell, torch.nn.RNN(D, H, bias=False, nonlinearity="relu"))
    with pytest.raises(ValueError, match="'sigmoid' is not supported"):
        interop.from_keras([np.ones((D, H)), np.ones((H, H))], nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity is a SimpleRNN's option"):
        interop.from_keras([np.ones((D, 4 * H)), np.ones((H, 4 * H))], nonlinearity="relu")
    with pytest.raises(ValueError, match=r"B \[dirs, 2H\] must have shape"):
        interop.from_onnx(np.ones((1, H, D)), np.ones((1, H, H)), np.ones((1, 8 * H)))
    with pytest.raises(ValueError, match="no peepholes"):
        interop.from_onnx(np.ones((1, H, D)), np.ones((1, H, H)), P=np.zeros((1, 3 * H)))


def test_peer_module_refusals():
    onnx = need("onnx", INSTALL["onnx"])
    model = interop.to_onnx_model(rnn_cell(), T, B)
    for attr, value, match in ((("activations", ["Sigmoid"], "'Sigmoid' is not supported")),
                               ("clip", 3.0, "clip=3.0")):
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        node = bad.graph.node[0]
        kept = [a for a in node.attribute if a.name != attr]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute(attr, value)])
        with pytest.raises(ValueError, match=match):
            interop.from_onnx_model(bad)
    with pytest.raises(ValueError, match="node=1 is out of range: the graph has 1 LSTM or RNN"):
        interop.from_onnx_model(model, node=1)


def test_flax_refusals(x64):
    import jax
    from flax import linen as nn
    from flax import nnx

    cell = rnn_cell()
    for bad, match in ((dict(activation_fn=jax.nn.gelu), "activation_fn=gelu.*refuses"),
                       (dict(residual=True), "residual=True")):
        for module in (nn.SimpleCell(H, **bad).bind({"params": interop.to_flax(cell)}),
                       nnx.SimpleCell(D, H, rngs=nnx.Rngs(0), **bad)):
            for call in (interop.from_flax, validate, lambda m: interop.to_flax(cell, m)):
                with pytest.raises(ValueError, match=match):
                    call(module)
    relu = nnx.SimpleCell(D, H, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation_fn is 'relu', the cell's nonlinearity"):
        interop.to_flax(cell, relu)
    with pytest.raises(ValueError, match="a refnorm.RNN goes into a Flax SimpleCell, got LSTMCell"):
        interop.to_flax(cell, nnx.LSTMCell(D, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="a refnorm.LSTM goes into a Flax LSTMCell"):
        interop.to_flax(refnorm.LSTM(D, H, seed=0), relu)
    mgu = nn.MGUCell(H)                                          # a cell refnorm has not
    with pytest.raises(ValueError, match="MGUCell"):
        interop.from_flax(mgu.bind(mgu.init(jax.random.PRNGKey(0), np.zeros((1, H)),
                                            np.zeros((1, D)))))


# -- live peers, float64: every tensor, ragged and full lengths ----------------------------------
def torch_module(kind, nonlinearity, **options):
    """A float64 torch.nn.RNN / RNNCell, every layer and direction random and non-zero."""
    module = getattr(torch.nn, kind)(D, H, nonlinearity=nonlinearity, dtype=torch.float64,
                                     **options)
    layers, dirs = getattr(module, "num_layers", 1), 2 if options.get("bidirectional") else 1
    for k in range(layers * dirs):
        where = (k // dirs, bool(k % dirs))
        interop.to_torch(randomize(interop.from_torch(module, *where), seed=20 + k), module,
                         *where)
    return module


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
def test_torch_passes_on_every_tensor(kind, nonlinearity, lengths):
    """nn.RNN on a PackedSequence, nn.RNNCell stepped by the adapter; the module unchanged."""
    module = torch_module(kind, nonlinearity)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    report = validate(module, lengths=LENGTHS[lengths])
    print(f"torch.nn.{kind} {nonlinearity} {lengths}: {report.worst:.1e}")
    assert report.ok and report.verdict() == "PASS", report
    assert set(report.errors) == ONE_STATE and report.worst <= TOL["autodiff"]
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_stacked_bidirectional_torch_rnn_passes(nonlinearity):
    """2 layers x 2 directions, ragged: one refnorm.RNN per layer and direction, composed as
    torch composes them (the reverse direction within each length), a row per weight."""
    module = torch_module("RNN", nonlinearity, num_layers=2, bidirectional=True)
    report = validate(module, lengths=RAGGED)
    print(f"torch.nn.RNN 2x2 {nonlinearity}: {report.worst:.1e}")
    assert report.ok and report.verdict() == "PASS", report
    suffixes = ("_l0", "_l0_reverse", "_l1", "_l1_reverse")
    assert set(report.errors) == {"hs", "hT", "dx", "dh0"} | {
        f"d{p}{s}" for p in ("Wx", "Wh", "b") for s in suffixes}
    assert report.reference == "4 refnorm.RNN cells (2 layers x 2 directions)"


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_flax_simple_cell_passes_on_every_tensor(x64, api, nonlinearity, lengths):
    """Flax's own RNN with seq_lengths and jax.vjp; nnx built with dtype float64 (its compute
    dtype is float32 by default, whatever param_dtype says)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from flax import nnx

    cell, fn = rnn_cell(nonlinearity, seed=30), getattr(jax.nn, nonlinearity)
    if api == "linen":
        module = nn.SimpleCell(H, activation_fn=fn, param_dtype=jnp.float64)
        module = module.bind({"params": interop.to_flax(cell, module)})
    else:
        module = interop.to_flax(cell, nnx.SimpleCell(D, H, activation_fn=fn, dtype=jnp.float64,
                                                      param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    report = validate(module, lengths=LENGTHS[lengths])
    print(f"flax.{api}.SimpleCell {nonlinearity} {lengths}: {report.worst:.1e}")
    assert report.ok and report.verdict() == "PASS", report
    assert set(report.errors) == ONE_STATE and report.target == f"flax.{api}.SimpleCell"
    assert_same_rnn(cell, interop.from_flax(module))                 # the module unchanged


def test_nnx_simple_cell_computes_in_float32_by_default(x64):
    """nnx.SimpleCell's dtype is float32 unless given: float64 params still run in float32,
    which the report says (not a float64 check)."""
    import jax.numpy as jnp
    from flax import nnx

    module = interop.to_flax(rnn_cell(), nnx.SimpleCell(D, H, param_dtype=jnp.float64,
                                                        rngs=nnx.Rngs(0)))
    report = validate(module, lengths=RAGGED)
    assert report.ok and report.dtype == "float32", report
    assert report.verdict() == "PASS at float32 tolerance: not a float64 check"


@pytest.mark.parametrize("lengths", LENGTHS)
def test_onnx_reference_evaluator_passes(lengths):
    """The RNN node of to_onnx_model on onnx's reference evaluator, float64 (tanh: it has no
    Relu), each length's sequences on their own (it ignores sequence_lens). Outputs only."""
    need("onnx", INSTALL["onnx"])
    cell = random_cell(presets.onnx_rnn, D, H, seed=0)
    report = validate(vm.onnx_rnn_reference, cell=cell, lengths=LENGTHS[lengths],
                      outputs_only=True)
    assert report.ok and report.float64 and report.worst <= TOL["autodiff"], report
    assert set(report.errors) == {"hs", "hT"}


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_onnxruntime_float32_with_sequence_lens_and_a_peer_model(nonlinearity):
    """onnxruntime (float32 only) on a peer's bidirectional RNN node with both biases Wb, Rb
    random and a different activation per direction: from_onnx_model reads each direction's
    weights and activation, and refnorm reproduces Y (zeros past each length) and Y_h (each
    sequence's last valid state; the reverse direction's is its first step's)."""
    onnx, ort = need("onnx", INSTALL["onnx"]), need("onnxruntime", INSTALL["onnxruntime"])
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(40)
    draw = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    acts = ["Relu", "Tanh"] if nonlinearity == "relu" else ["Tanh", "Relu"]
    v = helper.make_tensor_value_info
    node = helper.make_node("RNN", ["X", "W", "R", "B", "sequence_lens", "initial_h"],
                            ["Y", "Y_h"], hidden_size=H, direction="bidirectional",
                            activations=acts)
    arrays = {"W": draw(2, H, D), "R": draw(2, H, H), "B": draw(2, 2 * H)}
    graph = helper.make_graph(
        [node], "peer", [v("X", TensorProto.FLOAT, [T, B, D]),
                         v("sequence_lens", TensorProto.INT32, [B]),
                         v("initial_h", TensorProto.FLOAT, [2, B, H])],
        [v("Y", TensorProto.FLOAT, [T, 2, B, H]), v("Y_h", TensorProto.FLOAT, [2, B, H])],
        initializer=[numpy_helper.from_array(a, k) for k, a in arrays.items()])
    model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 22)])
    onnx.checker.check_model(model)
    x, h0 = draw(T, B, D), draw(2, B, H)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h = session.run(None, {"X": x, "sequence_lens": np.array(RAGGED, np.int32),
                                "initial_h": h0})
    for d in (0, 1):
        cell = interop.from_onnx_model(model, direction=d)
        assert cell.nonlinearity == acts[d].lower()
        xin = reverse_within(x, RAGGED) if d else x
        hs, hT, _ = cell.forward(xin.astype(np.float64), h0[d].astype(np.float64),
                                 lengths=np.array(RAGGED))
        hs = reverse_within(hs, RAGGED) if d else hs
        for label, ours, theirs in (("Y", hs, Y[:, d]), ("Y_h", hT, Y_h[d])):
            err = refnorm.relative_error(ours, theirs)
            print(f"onnxruntime direction {d} {acts[d]} {label}: {err:.1e}")
            assert err <= TOL["float32"], (d, label, err)
    # and refnorm's own model of each nonlinearity, through validate's float32 callable path
    report = validate(vm.onnx_rnn_runtime, cell=random_cell(presets.onnx_rnn, D, H, seed=1),
                      lengths=RAGGED, outputs_only=True)
    assert report.ok and report.dtype == "float32", report


# -- Keras, on each backend in its own process ---------------------------------------------------
# One backend's checks in a fresh process (Keras fixes its backend at import); argv[1] is JSON
# {"lengths": {...}, "tol": float}. For tanh and relu: the round trip through a layer, validate
# masked and unmasked, and two planted bugs (masked, at tol): the activation read swapped, and
# Wh transposed in the converter.
DRIVER = r"""
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
import keras
backend = keras.backend.backend()
if backend == "jax":
    import jax
    jax.config.update("jax_enable_x64", True)
from refnorm import RNN, interop, validate
from refnorm.gradcheck import randomize
from refnorm.interop import keras_rnn

def summary(report):
    return {"verdict": report.verdict(), "ok": report.ok, "errors": report.errors,
            "failing": [row[0] for row in report.rows if not row[-1]],
            "remarks": report.remarks, "dtype": report.dtype}

def run(layer, **kw):
    try:
        return summary(validate(layer, **kw))
    except ValueError as err:
        return {"error": str(err)}

out = {}
swap = {"tanh": "relu", "relu": "tanh"}
for act in ("tanh", "relu"):
    layer = keras.layers.SimpleRNN(4, activation=act, return_sequences=True, return_state=True,
                                   dtype="float64")
    layer.build((None, 6, 3))
    interop.to_keras(randomize(RNN(3, 4, seed=5, nonlinearity=act), seed=6), layer)
    fresh = keras.layers.SimpleRNN(4, activation=act, dtype="float64")
    fresh.build((None, 6, 3))
    interop.to_keras(interop.from_keras(layer), fresh)
    res = out[act] = {"round trip": all(np.array_equal(a, b) for a, b in
                                        zip(fresh.get_weights(), layer.get_weights())),
                      "read": interop.from_keras(layer).nonlinearity}
    for label, lengths in args["lengths"].items():
        res[label] = run(layer, lengths=lengths)
    masked = args["lengths"]["ragged"]
    res["clean at tol"] = run(layer, lengths=masked, tol=args["tol"])
    read = keras_rnn._layer_nonlinearity
    keras_rnn._layer_nonlinearity = lambda layer: swap[read(layer)]
    try:
        res["activation swapped"] = run(layer, lengths=masked, tol=args["tol"])
    finally:
        keras_rnn._layer_nonlinearity = read
    convert = keras_rnn.from_keras_simple_rnn
    def transposed(*a, **k):
        cell = convert(*a, **k)
        cell.params["Wh"] = np.ascontiguousarray(cell.params["Wh"].T)
        return cell
    keras_rnn.from_keras_simple_rnn = transposed
    try:
        res["Wh transposed"] = run(layer, lengths=masked, tol=args["tol"])
    finally:
        keras_rnn.from_keras_simple_rnn = convert
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def keras_runs(tmp_path_factory):
    """result(backend): the DRIVER's output; every installed backend's process starts here, so
    they overlap."""
    yield from keras_driver_runs(tmp_path_factory, DRIVER, LENGTHS)


def keras_driver_runs(tmp_path_factory, driver, lengths):
    """Start `driver` (a Python source taking one JSON argument) in one process per installed
    Keras backend (KERAS_BACKEND set, an empty KERAS_HOME); yields result(backend), the JSON its
    last line printed (a missing backend package skips, or fails under CI), and kills what is
    left at the end. tests/test_interop_gru_peers.py runs its GRU driver through it too."""
    home, results = tmp_path_factory.mktemp("keras_home"), {}
    arg = json.dumps({"lengths": lengths, "tol": TOL["float32"]})
    procs = {}
    for backend, (package, _) in KERAS_BACKENDS.items():
        if all(importlib.util.find_spec(m) is not None for m in ("keras", package)):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_", "JAX_"))}
            env.update(KERAS_BACKEND=backend, KERAS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3",
                       PYTHONWARNINGS="ignore")
            procs[backend] = subprocess.Popen([sys.executable, "-c", driver, arg], cwd=ROOT,
                                              env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)

    def result(backend):
        for module in ("keras", KERAS_BACKENDS[backend][0]):
            need_spec(module)
        if backend not in results:
            stdout, stderr = procs[backend].communicate(timeout=300)
            assert stdout.strip(), f"the {backend} driver printed nothing:\n{stderr[-3000:]}"
            results[backend] = json.loads(stdout.strip().splitlines()[-1])
        return results[backend]
    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def float32_on(backend, nonlinearity, label):
    """Keras 3.15.1 computes this float64 case partly in float32 (KERAS_FLOAT32_SIMPLE_RNN)."""
    if backend == "jax":
        return nonlinearity == "tanh" and label == "ragged"
    return backend in KERAS_FLOAT32_SIMPLE_RNN


def need_spec(module):
    """Skip (fail in CI) when `module` is not installed, without importing it (importing keras
    here would fix this process's backend)."""
    if importlib.util.find_spec(module) is None:
        why = f"{module} is not installed: {INSTALL[module]}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_keras_simple_rnn_on_each_backend(keras_runs, backend, nonlinearity):
    """Exact round trip through a layer; every tensor compared, ragged (a mask) and full (none).
    Float64 passes where Keras computes in float64 (TensorFlow; JAX with relu); where it does
    not, the report fails at float32 level with the note that says why; JAX's float64 tanh layer
    without a mask does not run, and validate says why."""
    res = keras_runs(backend)[nonlinearity]
    assert res["round trip"] and res["read"] == nonlinearity
    for label in LENGTHS:
        run = res[label]
        if backend == "jax" and nonlinearity == "tanh" and label == "full":
            assert "cannot run a float64 SimpleRNN with activation tanh without a mask" in \
                run["error"] and "lax.scan" in run["error"], run
            continue
        assert set(run["errors"]) == ONE_STATE, run
        worst = max(run["errors"].values())
        print(f"keras {backend} {nonlinearity} {label}: {worst:.1e} {run['verdict']}")
        if float32_on(backend, nonlinearity, label):
            assert not run["ok"] and 1e-9 < worst <= TOL["float32"], run
            assert len(run["remarks"]) == 1, run
            assert KERAS_FLOAT32_SIMPLE_RNN[backend][1] in run["remarks"][0]
        else:
            assert run["ok"] and run["verdict"] == "PASS" and worst <= TOL["autodiff"], run
            assert run["remarks"] == []


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_keras_planted_bugs_fail_on_each_backend(keras_runs, backend):
    """At 1e-4, which the clean layer passes on every backend, the activation read swapped
    (tanh <-> relu) and Wh transposed in the converter fail on the outputs, with no note to
    excuse them."""
    for nonlinearity in NONLINEARITIES:
        res = keras_runs(backend)[nonlinearity]
        assert res["clean at tol"]["ok"], res["clean at tol"]
        for bug in ("activation swapped", "Wh transposed"):
            run = res[bug]
            print(f"keras {backend} {nonlinearity}, {bug}: {run['verdict']}")
            assert not run["ok"] and {"hs", "hT"} <= set(run["failing"]), run
            assert run["remarks"] == []


# -- planted bugs in the converters, in this process ---------------------------------------------
def test_wh_transposed_in_the_torch_converter_fails(monkeypatch):
    """from_torch reading weight_hh without its transpose: every layer's cell is wrong. The
    round trip cannot see it when to_torch has the same bug; validate does."""
    convert = torch_rnn.from_torch_rnn

    def transposed(*a, **k):
        cell = convert(*a, **k)
        cell.params["Wh"] = np.ascontiguousarray(cell.params["Wh"].T)
        return cell
    modules = (torch_module("RNN", "tanh"),
               torch_module("RNN", "relu", num_layers=2, bidirectional=True))
    monkeypatch.setattr(torch_rnn, "from_torch_rnn", transposed)
    for module in modules:
        report = validate(module, lengths=RAGGED, tol=TOL["float32"])
        print(f"Wh transposed, {report.target}: {report.verdict()}")
        assert not report.ok and {"hs", "hT", "dx", "dh0"} <= failing(report), report


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_relu_tanh_swapped_fails(monkeypatch, nonlinearity):
    """The converter building the cell with the other nonlinearity, for torch and (with x64)
    Flax; and the ONNX node writing the other activation, run by onnxruntime."""
    convert = torch_rnn.from_torch_rnn

    def swapped(*a, **k):
        cell = convert(*a, **k)
        cell.nonlinearity = other(cell.nonlinearity)
        return cell
    module = torch_module("RNNCell", nonlinearity)
    monkeypatch.setattr(torch_rnn, "from_torch_rnn", swapped)
    report = validate(module, lengths=RAGGED, tol=TOL["float32"])
    print(f"{nonlinearity} read as {other(nonlinearity)}, torch: {report.verdict()}")
    assert not report.ok and {"hs", "hT", "dWx", "dWh", "db", "dx", "dh0"} <= failing(report)
    need("onnx", INSTALL["onnx"])
    ort = need("onnxruntime", INSTALL["onnxruntime"])
    monkeypatch.setattr(onnx_rnn, "ONNX_RNN_ACTIVATIONS", {"tanh": "Relu", "relu": "Tanh"})
    cell = rnn_cell(nonlinearity, "float32")
    session = ort.InferenceSession(interop.to_onnx_model(cell, T, B).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((T, B, D)).astype(np.float32)
    h0 = np.random.default_rng(6).standard_normal((1, B, H)).astype(np.float32)
    Y, _ = session.run(None, {"X": x, "sequence_lens": np.array(RAGGED, np.int32),
                              "initial_h": h0})
    hs = cell.forward(x, h0[0], lengths=np.array(RAGGED))[0]
    err = refnorm.relative_error(hs, Y[:, 0])
    print(f"ONNX node with the other activation: {err:.1e}")
    assert err > 1e-2


def test_relu_tanh_swapped_in_the_flax_converter_fails(x64, monkeypatch):
    import jax
    from flax import nnx

    module = interop.to_flax(rnn_cell("relu"), nnx.SimpleCell(
        D, H, activation_fn=jax.nn.relu, dtype=jax.numpy.float64,
        param_dtype=jax.numpy.float64, rngs=nnx.Rngs(0)))
    read = flax_rnn.cell_nonlinearity
    monkeypatch.setattr(flax_rnn, "cell_nonlinearity", lambda m: other(read(m)))
    report = validate(module, lengths=RAGGED, tol=TOL["float32"])
    print(f"flax relu read as tanh: {report.verdict()}")
    assert not report.ok and {"hs", "hT"} <= failing(report), report


# -- the command, the callable path, the presets -------------------------------------------------
def rnn_callable(inputs):
    """A correct 'framework' for the torch_rnn preset: refnorm's RNN, run from inputs (no c0,
    dcT in them: one state)."""
    assert "c0" not in inputs and "dcT" not in inputs
    params = inputs["params"]
    cell = presets.torch_rnn(params["Wx"].shape[0], params["Wh"].shape[0])
    cell.params.update({k: v.copy() for k, v in params.items()})
    hs, hT, cache = cell.forward(inputs["x"], inputs["h0"], inputs["mask"])
    return {"hs": hs, "hT": hT, "grads": cell.backward(inputs["dhs"], cache, inputs["dhT"])}


def with_ct(inputs):
    return dict(rnn_callable(inputs), cT=np.zeros((B, H)))


def test_the_command_and_the_callable_path(capsys):
    for argv in (["torch.nn.RNN"], ["torch.nn.RNN", "--nonlinearity", "relu", "--layers", "2",
                                    "--bidirectional", "--lengths", "6", "2", "5", "1"],
                 ["torch.nn.RNNCell", "--nonlinearity", "relu"],
                 ["test_interop_rnn:rnn_callable", "--preset", "torch_rnn"]):
        assert main(["validate", *argv]) == 0, argv
        out = capsys.readouterr().out
        assert out.rstrip().endswith("PASS") and "cT" not in out and "dc0" not in out, out
    assert main(["validate", "torch.nn.RNN", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS at float32 tolerance: "
                                                     "not a float64 check")
    assert main(["validate", "torch.nn.LSTM", "--nonlinearity", "relu"]) == 2
    assert "--nonlinearity is an option of the RNN targets" in capsys.readouterr().err
    with pytest.raises(ValueError, match="accepted: hs, hT, grads"):
        validate(with_ct, cell=random_cell(presets.torch_rnn, D, H, seed=0))


def test_flax_targets_of_the_command(x64, capsys):
    for argv in (["flax.linen.SimpleCell"], ["flax.nnx.SimpleCell", "--nonlinearity", "relu"]):
        assert main(["validate", *argv]) == 0, argv
        assert capsys.readouterr().out.rstrip().endswith("PASS")


def test_the_presets_are_the_plain_rnn_in_each_layout():
    """No peer ships a normalised vanilla RNN: the RNN presets are refnorm.RNN for the
    converters, the nonlinearity an override."""
    for name in ("torch_rnn", "keras_simple_rnn", "onnx_rnn"):
        make = presets.PRESETS[name]
        assert make.cls is refnorm.RNN and make.options == {}
        assert make(D, H, nonlinearity="relu").nonlinearity == "relu"
