"""ONNX LSTM operator <-> refnorm.LSTM (each function also takes the ONNX RNN and GRU operators'
arrays or nodes, or a refnorm.RNN or GRU, and hands them to interop.onnx_rnn and onnx_gru).

ONNX computes z = X Wᵀ + H Rᵀ + Wb + Rb with W [dirs, 4H, D], R [dirs, 4H, H], B [dirs, 8H] =
[Wb, Rb] and gate blocks i, o, f, c (layout "onnx"). Peepholes P [dirs, 3H] (i, o, f) have no
refnorm counterpart: non-zero P is refused. Direction 1 of a bidirectional node runs over the
reversed sequence. With sequence_lens, ONNX (and onnxruntime) carries the state and writes 0 to
Y past each sequence's length, as refnorm does; onnx's own reference evaluator (onnx 1.23,
onnx/reference/ops/op_lstm.py) ignores sequence_lens and runs every step.

to_onnx and from_onnx need only NumPy; to_onnx_model and from_onnx_model need the onnx package.
"""
import numbers

import numpy as np

from .. import presets
from ..cells import BNGRU, GRU, LNGRU, SeqBNGRU
from ._common import (build_cell, expect_shape, fold_forget_bias, hidden_size_of, lstm_arrays,
                      nonneg_int, source_array)
from .layouts import from_canonical, to_canonical

# opset of the LSTM node to_onnx_model writes (the LSTM schema's latest version in onnx 1.23)
ONNX_OPSET = 22
# what refnorm computes: ONNX's default activations f, g, h of the LSTM node
ONNX_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")
# the cells to_onnx and to_onnx_model hand to interop.onnx_gru (which converts refnorm.GRU only)
GRU_FAMILY = (GRU, BNGRU, SeqBNGRU, LNGRU)


def _family(R):
    """"RNN" for R [dirs, H, H], "GRU" for R [dirs, 3H, H] (H > 0), else "LSTM" (whose shape
    checks name what is wrong)."""
    shape = np.shape(R)
    if len(shape) == 3 and shape[1] == shape[2]:
        return "RNN"
    if len(shape) == 3 and shape[2] > 0 and shape[1] == 3 * shape[2]:
        return "GRU"
    return "LSTM"


def from_onnx(W, R, B=None, P=None, direction=0, dtype="float64", backend="numpy", *,
              nonlinearity=None, linear_before_reset=None):
    """refnorm.LSTM holding a copy of one direction of an ONNX LSTM's W [dirs, 4H, D],
    R [dirs, 4H, H] and B [dirs, 8H] (None: zeros): Wx = Wᵀ, Wh = Rᵀ, b = Wb + Rb, reordered from
    i, o, f, c. P (peepholes): None or all zeros, else ValueError.

    An ONNX RNN's arrays (R square, [dirs, H, H]; B [dirs, 2H]; no P) give a refnorm.RNN instead,
    with nonlinearity "tanh" (default) or "relu" (interop.onnx_rnn.from_onnx_rnn). An ONNX GRU's
    (R [dirs, 3H, H]; B [dirs, 6H]; no P) give a refnorm.GRU, linear_before_reset (required: 1
    is reset "after", 0 "before") stating the node's attribute (interop.onnx_gru.from_onnx_gru)."""
    family = _family(R)
    if P is not None and family != "LSTM":
        raise ValueError(f"an ONNX {family} has no peepholes: P must be None")
    these = {"LSTM": "an LSTM's", "RNN": "an RNN's", "GRU": "a GRU's"}[family]
    if nonlinearity is not None and family != "RNN":
        raise ValueError(f"nonlinearity is an ONNX RNN's (R [dirs, H, H]); these are {these} "
                         "arrays")
    if linear_before_reset is not None and family != "GRU":
        raise ValueError(f"linear_before_reset is an ONNX GRU's (R [dirs, 3H, H]); these are "
                         f"{these} arrays")
    if family == "RNN":
        from .onnx_rnn import from_onnx_rnn
        return from_onnx_rnn(W, R, B, direction, nonlinearity or "tanh", dtype, backend)
    if family == "GRU":
        from .onnx_gru import from_onnx_gru
        return from_onnx_gru(W, R, B, direction, linear_before_reset, dtype, backend)
    W, R = source_array(W, "W", 3), source_array(R, "R", 3)
    dirs = W.shape[0]
    H = hidden_size_of(W.shape[1], "W [dirs, 4H, D]")
    D = W.shape[2]
    expect_shape(R, (dirs, 4 * H, H), "R [dirs, 4H, H]")
    direction = nonneg_int(direction, "direction")
    if direction >= dirs:
        raise ValueError(f"direction={direction} is out of range: W holds {dirs} direction(s)")
    if B is None:
        b = np.zeros(4 * H)
    else:
        B = expect_shape(source_array(B, "B", 2), (dirs, 8 * H), "B [dirs, 8H]")
        b = B[direction, :4 * H] + B[direction, 4 * H:]                      # Wb + Rb
    if P is not None:
        P = expect_shape(source_array(P, "P", 2), (dirs, 3 * H), "P [dirs, 3H]")
        if np.any(P[direction] != 0):
            raise ValueError("peepholes are not supported: P must be None or zero")
    params = {"Wx": to_canonical(W[direction], "onnx", axis=0).T,
              "Wh": to_canonical(R[direction], "onnx", axis=0).T,
              "b": to_canonical(b, "onnx")}
    return build_cell(presets.onnx_lstm, D, H, params, dtype=dtype, backend=backend)


def to_onnx(cell):
    """A refnorm.LSTM as ONNX LSTM inputs, one direction: {"W": [1, 4H, D], "R": [1, 4H, H],
    "B": [1, 8H]} (NumPy copies, the cell's dtype). One bias -> two: Wb = b and Rb = 0; a run-time
    forget_bias is folded into Wb. A refnorm.RNN gives an RNN node's {"W": [1, H, D],
    "R": [1, H, H], "B": [1, 2H]} (interop.onnx_rnn.to_onnx_rnn), a refnorm.GRU a GRU node's
    {"W": [1, 3H, D], "R": [1, 3H, H], "B": [1, 6H]} (interop.onnx_gru.to_onnx_gru)."""
    from ..cells import RNN
    if isinstance(cell, RNN):
        from .onnx_rnn import to_onnx_rnn
        return to_onnx_rnn(cell)
    if isinstance(cell, GRU_FAMILY):            # a normalised GRU: refused there, by name
        from .onnx_gru import to_onnx_gru
        return to_onnx_gru(cell)
    p = lstm_arrays(cell, "to_onnx", rnn_too=True)
    b = from_canonical(fold_forget_bias(p["b"], cell.forget_bias), "onnx")
    return {"W": from_canonical(p["Wx"].T, "onnx", axis=0)[None],
            "R": from_canonical(p["Wh"].T, "onnx", axis=0)[None],
            "B": np.concatenate([b, np.zeros_like(b)])[None]}


def _dim(value, symbol):
    if value is None:
        return symbol
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{symbol} must be a positive integer or None (symbolic), got {value!r}")
    return int(value)


def to_onnx_model(cell, seq_len, batch, with_sequence_lens=True, opset=ONNX_OPSET):
    """An onnx ModelProto with one LSTM node holding the cell's weights as initializers.

    Inputs X (T, B, D), sequence_lens (B,) int32 (with_sequence_lens=True), initial_h and
    initial_c (1, B, H); outputs Y (T, 1, B, H), Y_h and Y_c (1, B, H); element type double for a
    float64 cell, float for float32. seq_len or batch None makes that dimension symbolic ("T",
    "B"). The model passes onnx.checker.check_model. A refnorm.RNN gives one RNN node instead
    (interop.onnx_rnn.to_onnx_rnn_model: no initial_c, no Y_c), a refnorm.GRU one GRU node
    with linear_before_reset 1 (reset "after") or 0 ("before") (interop.onnx_gru.
    to_onnx_gru_model: no initial_c, no Y_c)."""
    from ..cells import RNN
    if isinstance(cell, RNN):
        from .onnx_rnn import to_onnx_rnn_model
        return to_onnx_rnn_model(cell, seq_len, batch, with_sequence_lens, opset)
    if isinstance(cell, GRU_FAMILY):
        from .onnx_gru import to_onnx_gru_model
        return to_onnx_gru_model(cell, seq_len, batch, with_sequence_lens, opset)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    T, B = _dim(seq_len, "T"), _dim(batch, "B")
    D, H = cell.input_size, cell.hidden_size
    arrays = to_onnx(cell)
    elem = TensorProto.DOUBLE if cell.dtype == np.float64 else TensorProto.FLOAT
    value = helper.make_tensor_value_info
    inputs = [value("X", elem, [T, B, D])]
    if with_sequence_lens:
        inputs.append(value("sequence_lens", TensorProto.INT32, [B]))
    inputs += [value("initial_h", elem, [1, B, H]), value("initial_c", elem, [1, B, H])]
    outputs = [value("Y", elem, [T, 1, B, H]), value("Y_h", elem, [1, B, H]),
               value("Y_c", elem, [1, B, H])]
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B", "sequence_lens" if with_sequence_lens else "",
                 "initial_h", "initial_c"], ["Y", "Y_h", "Y_c"],
        name="lstm", hidden_size=H, direction="forward")
    initializers = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    graph = helper.make_graph([node], "refnorm_lstm", inputs, outputs, initializer=initializers)
    model = helper.make_model_gen_version(graph, producer_name="refnorm",
                                          opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def from_onnx_model(model, node=0, direction=0, dtype="float64", backend="numpy"):
    """refnorm.LSTM from the node-th LSTM node of an onnx ModelProto or GraphProto whose W, R
    (and B, P) are initializers. ValueError for activations other than Sigmoid, Tanh, Tanh, for
    clip or input_forget, and for weights that are computed or fed at run time (pass arrays to
    from_onnx instead).

    The nodes counted are the graph's LSTM, RNN and GRU nodes, in graph order: an RNN node gives
    a refnorm.RNN whose nonlinearity is its activation for that direction (Tanh or Relu;
    interop.onnx_rnn), a GRU node a refnorm.GRU whose reset is its linear_before_reset (1:
    "after", 0: "before"; activations Sigmoid, Tanh only; interop.onnx_gru)."""
    from onnx import helper, numpy_helper

    graph = getattr(model, "graph", model)
    if not hasattr(graph, "node") or not hasattr(graph, "initializer"):
        raise ValueError(f"expected an onnx ModelProto or GraphProto, got {type(model).__name__}")
    nodes = [n for n in graph.node if n.op_type in ("LSTM", "RNN", "GRU")
             and n.domain in ("", "ai.onnx")]
    node = nonneg_int(node, "node")
    if node >= len(nodes):
        raise ValueError(f"node={node} is out of range: the graph has {len(nodes)} LSTM or RNN "
                         "or GRU node(s)")
    n = nodes[node]
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    if n.op_type == "RNN":
        from .onnx_rnn import node_nonlinearity
        nonlinearity = node_nonlinearity(attrs, nonneg_int(direction, "direction"))
    elif n.op_type == "GRU":
        from .onnx_gru import node_linear_before_reset
        linear_before_reset = node_linear_before_reset(attrs, nonneg_int(direction, "direction"))
    elif "activations" in attrs:
        names = tuple(a.decode() if isinstance(a, bytes) else a for a in attrs["activations"])
        if any(names[k:k + 3] != ONNX_ACTIVATIONS for k in range(0, len(names), 3)):
            raise ValueError(f"activations {names} are not supported: refnorm computes "
                             f"{ONNX_ACTIVATIONS}")
    if "clip" in attrs:
        raise ValueError(f"clip={attrs['clip']} is not supported")
    if attrs.get("input_forget", 0):
        raise ValueError("input_forget=1 (coupled input and forget gates) is not supported")
    initializers = {t.name: t for t in graph.initializer}

    def initializer(position, label):
        name = n.input[position] if len(n.input) > position else ""
        if not name:
            return None
        if name not in initializers:
            raise ValueError(f"the {n.op_type}'s {label} ({name!r}) is not an initializer of the "
                             "graph (computed or fed at run time): pass the arrays to from_onnx")
        return numpy_helper.to_array(initializers[name])

    W, R = initializer(1, "W"), initializer(2, "R")
    if W is None or R is None:
        raise ValueError(f"the {n.op_type} node has no W or R input")
    if n.op_type == "RNN":
        from .onnx_rnn import from_onnx_rnn
        return from_onnx_rnn(W, R, initializer(3, "B"), direction, nonlinearity, dtype, backend)
    if n.op_type == "GRU":
        from .onnx_gru import from_onnx_gru
        return from_onnx_gru(W, R, initializer(3, "B"), direction, linear_before_reset, dtype,
                             backend)
    return from_onnx(W, R, initializer(3, "B"), initializer(7, "P"), direction=direction,
                     dtype=dtype, backend=backend)
