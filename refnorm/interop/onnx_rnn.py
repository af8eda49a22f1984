"""ONNX RNN operator <-> refnorm.RNN (interop.from_onnx, to_onnx, to_onnx_model and
from_onnx_model hand RNNs here).

ONNX computes H_t = f(X_t Wᵀ + H_{t-1} Rᵀ + Wb + Rb) with W [dirs, H, D], R [dirs, H, H],
B [dirs, 2H] = [Wb, Rb] (onnx/defs/rnn/defs.cc; onnx/reference/ops/op_rnn.py), f the node's
`activations` entry for that direction, Tanh by default. Tanh and Relu are refnorm's
nonlinearities; any other activation, and clip, are refused. Direction 1 of a bidirectional
node runs over the reversed sequence. With sequence_lens onnxruntime (float32 only: it has no
double RNN kernel) carries the state and writes 0 to Y past each length, as refnorm does.
onnx 1.23's reference evaluator ignores sequence_lens and knows only Tanh and Affine: a Relu
node is a RuntimeError there ("Unknown activation function 'Relu'").

from_onnx_rnn and to_onnx_rnn need only NumPy; to_onnx_rnn_model needs the onnx package.
"""
import numpy as np

from .. import presets
from ._common import build_cell, expect_shape, nonlinearity_of, nonneg_int, rnn_arrays, \
    source_array

# refnorm's nonlinearity -> the ONNX activation name
ONNX_RNN_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}


def from_onnx_rnn(W, R, B=None, direction=0, nonlinearity="tanh", dtype="float64",
                  backend="numpy"):
    """refnorm.RNN(nonlinearity) holding a copy of one direction of an ONNX RNN's W [dirs, H, D],
    R [dirs, H, H] and B [dirs, 2H] (None: zeros): Wx = Wᵀ, Wh = Rᵀ, b = Wb + Rb. The arrays do
    not carry the activation: nonlinearity "tanh" (ONNX's default) or "relu" states it
    (from_onnx_model reads it from the node)."""
    W, R = source_array(W, "W", 3), source_array(R, "R", 3)
    dirs, H, D = W.shape
    if H == 0:
        raise ValueError("W [dirs, H, D] has H = 0")
    expect_shape(R, (dirs, H, H), "R [dirs, H, H]")
    direction = nonneg_int(direction, "direction")
    if direction >= dirs:
        raise ValueError(f"direction={direction} is out of range: W holds {dirs} direction(s)")
    if B is None:
        b = np.zeros(H)
    else:
        B = expect_shape(source_array(B, "B", 2), (dirs, 2 * H), "B [dirs, 2H]")
        b = B[direction, :H] + B[direction, H:]                               # Wb + Rb
    params = {"Wx": W[direction].T, "Wh": R[direction].T, "b": b}
    return build_cell(presets.onnx_rnn, D, H, params, dtype=dtype, backend=backend,
                      nonlinearity=nonlinearity_of(nonlinearity, "from_onnx", "nonlinearity"))


def to_onnx_rnn(cell):
    """A refnorm.RNN as ONNX RNN inputs, one direction: {"W": [1, H, D], "R": [1, H, H],
    "B": [1, 2H]} (NumPy copies, the cell's dtype). One bias -> two: Wb = b and Rb = 0. The
    activation is the node's attribute: ONNX_RNN_ACTIVATIONS[cell.nonlinearity]."""
    p = rnn_arrays(cell, "to_onnx")
    return {"W": np.ascontiguousarray(p["Wx"].T)[None], "R": np.ascontiguousarray(p["Wh"].T)[None],
            "B": np.concatenate([p["b"], np.zeros_like(p["b"])])[None]}


def one_state_model(op_type, arrays, cell, seq_len, batch, with_sequence_lens, opset,
                    **attributes):
    """An onnx ModelProto with one `op_type` node (RNN or GRU: one state) holding `arrays`
    (W, R, B) as initializers, forward, hidden_size H, plus `attributes`. Inputs X (T, B, D),
    sequence_lens (B,) int32 (with_sequence_lens=True), initial_h (1, B, H); outputs
    Y (T, 1, B, H), Y_h (1, B, H); double for a float64 cell, float for float32; seq_len or
    batch None: symbolic ("T", "B"). The model passes onnx.checker.check_model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .onnx_lstm import ONNX_OPSET, _dim

    opset = ONNX_OPSET if opset is None else opset
    T, B = _dim(seq_len, "T"), _dim(batch, "B")
    D, H = cell.input_size, cell.hidden_size
    elem = TensorProto.DOUBLE if cell.dtype == np.float64 else TensorProto.FLOAT
    value = helper.make_tensor_value_info
    inputs = [value("X", elem, [T, B, D])]
    if with_sequence_lens:
        inputs.append(value("sequence_lens", TensorProto.INT32, [B]))
    inputs.append(value("initial_h", elem, [1, B, H]))
    outputs = [value("Y", elem, [T, 1, B, H]), value("Y_h", elem, [1, B, H])]
    node = helper.make_node(
        op_type, ["X", "W", "R", "B", "sequence_lens" if with_sequence_lens else "",
                  "initial_h"], ["Y", "Y_h"], name=op_type.lower(), hidden_size=H,
        direction="forward", **attributes)
    initializers = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    graph = helper.make_graph([node], f"refnorm_{op_type.lower()}", inputs, outputs,
                              initializer=initializers)
    model = helper.make_model_gen_version(graph, producer_name="refnorm",
                                          opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def to_onnx_rnn_model(cell, seq_len, batch, with_sequence_lens=True, opset=None):
    """An onnx ModelProto with one RNN node (activations [Tanh] or [Relu]) holding the cell's
    weights as initializers; inputs and outputs as one_state_model's. opset None:
    onnx_lstm.ONNX_OPSET."""
    return one_state_model("RNN", to_onnx_rnn(cell), cell, seq_len, batch, with_sequence_lens,
                           opset, activations=[ONNX_RNN_ACTIVATIONS[cell.nonlinearity]])


def node_nonlinearity(attrs, direction):
    """refnorm's nonlinearity of an RNN node's direction, from its attributes (a dict);
    ValueError for clip and for activations other than Tanh and Relu."""
    if "clip" in attrs:
        raise ValueError(f"clip={attrs['clip']} is not supported")
    names = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    name = (names[direction] if len(names) > direction else names[0]) if names else "Tanh"
    return nonlinearity_of(name, "from_onnx_model", "activation")
