"""ONNX GRU operator <-> refnorm.GRU (interop.from_onnx, to_onnx, to_onnx_model and
from_onnx_model hand GRUs here).

ONNX computes (onnx/defs/rnn/defs.cc, GRU opset 22; onnx/reference/ops/op_gru.py), gate
blocks z, r, h, f = Sigmoid and g = Tanh by default:

    z = f(X Wzᵀ + H Rzᵀ + Wbz + Rbz),  r = f(X Wrᵀ + H Rrᵀ + Wbr + Rbr),  H' = (1 − z) ⊙ h + z ⊙ H
    linear_before_reset=0 (default):  h = g(X Whᵀ + (r ⊙ H) Rhᵀ + Rbh + Wbh)
    linear_before_reset≠0:            h = g(X Whᵀ + r ⊙ (H Rhᵀ + Rbh) + Wbh)

with W [dirs, 3H, D], R [dirs, 3H, H], B [dirs, 6H] = [Wb, Rb]. Wx = Wᵀ and Wh = Rᵀ with the
blocks reordered z, r, h -> r, z, n. linear_before_reset=1 is refnorm.GRU reset="after"
(presets.onnx_gru): b = Wb + [Rbz | Rbr | 0] (reordered), b_hn = Rbh; one way back: Wb = b,
Rb = [0 | 0 | b_hn]. linear_before_reset=0 is reset="before" (presets.onnx_gru_reset_before):
b = Wb + Rb; back: Wb = b, Rb = 0. Activations other than (Sigmoid, Tanh) and clip are refused.
Direction 1 of a bidirectional node runs over the reversed sequence.

With sequence_lens onnxruntime (float32 only: it has no double GRU kernel) carries the state and
writes 0 to Y past each length, as refnorm does. onnx 1.23's reference evaluator ignores
sequence_lens, and its activations and clip too: it always computes Sigmoid and Tanh.

from_onnx_gru and to_onnx_gru need only NumPy; to_onnx_gru_model needs the onnx package.
"""
import numbers

import numpy as np

from .. import presets
from ._common import (build_cell, expect_shape, fold_gru_biases, gru_arrays, gru_blocks,
                      nonneg_int, source_array, split_gru_biases)
from .onnx_rnn import one_state_model

ONNX_GRU_ORDER = "zrn"           # ONNX's z, r, h blocks, named with refnorm's letters
# what refnorm computes: ONNX's default activations f, g of the GRU node, per direction
ONNX_GRU_ACTIVATIONS = ("Sigmoid", "Tanh")
# refnorm's reset -> the ONNX attribute linear_before_reset
ONNX_LINEAR_BEFORE_RESET = {"after": 1, "before": 0}


def reset_of(linear_before_reset, who):
    """refnorm's reset for an ONNX linear_before_reset: "before" for 0, "after" for any other
    integer (the schema's "linear_before_reset != 0"). None is a ValueError: the arrays do not
    carry the attribute, so the caller states it."""
    if linear_before_reset is None:
        raise ValueError(f"{who}: an ONNX GRU's arrays do not carry linear_before_reset: pass "
                         "linear_before_reset=0 (the node's default; refnorm reset=\"before\") "
                         "or 1 (torch.onnx's export; reset=\"after\")")
    if not isinstance(linear_before_reset, numbers.Integral):
        raise ValueError(f"{who}: linear_before_reset must be an integer (0 or 1), got "
                         f"{linear_before_reset!r}")
    return "after" if linear_before_reset != 0 else "before"


def from_onnx_gru(W, R, B=None, direction=0, linear_before_reset=None, dtype="float64",
                  backend="numpy"):
    """refnorm.GRU holding a copy of one direction of an ONNX GRU's W [dirs, 3H, D],
    R [dirs, 3H, H] and B [dirs, 6H] (None: zeros). The arrays do not carry the node's
    linear_before_reset: state it (1: reset "after", presets.onnx_gru; 0: reset "before",
    presets.onnx_gru_reset_before); from_onnx_model reads it from the node."""
    reset = reset_of(linear_before_reset, "from_onnx")
    W, R = source_array(W, "W", 3), source_array(R, "R", 3)
    dirs, three_h, D = W.shape
    if three_h == 0 or three_h % 3:
        raise ValueError(f"W [dirs, 3H, D]: the gate axis must have length 3H (a positive "
                         f"multiple of 3), got {three_h}")
    H = three_h // 3
    expect_shape(R, (dirs, 3 * H, H), "R [dirs, 3H, H]")
    direction = nonneg_int(direction, "direction")
    if direction >= dirs:
        raise ValueError(f"direction={direction} is out of range: W holds {dirs} direction(s)")
    B = np.zeros((dirs, 6 * H)) if B is None else \
        expect_shape(source_array(B, "B", 2), (dirs, 6 * H), "B [dirs, 6H]")
    canon = lambda a: gru_blocks(a, ONNX_GRU_ORDER)  # noqa: E731
    Wb, Rb = canon(B[direction, :3 * H]), canon(B[direction, 3 * H:])
    params = {"Wx": canon(W[direction].T), "Wh": canon(R[direction].T)}
    if reset == "after":
        params["b"], params["b_hn"] = fold_gru_biases(Wb, Rb)
        preset = presets.onnx_gru
    else:
        params["b"] = Wb + Rb
        preset = presets.onnx_gru_reset_before
    return build_cell(preset, D, H, params, dtype=dtype, backend=backend)


def to_onnx_gru(cell):
    """A refnorm.GRU as ONNX GRU inputs, one direction: {"W": [1, 3H, D], "R": [1, 3H, H],
    "B": [1, 6H]} (NumPy copies, the cell's dtype; blocks z, r, h). Wb = b, Rb = [0 | 0 | b_hn]
    (reset "after") or 0 (reset "before"). linear_before_reset is the node's attribute:
    ONNX_LINEAR_BEFORE_RESET[cell.reset]."""
    p = gru_arrays(cell, "to_onnx", resets=("after", "before"))
    back = lambda a: gru_blocks(a, ONNX_GRU_ORDER, to_refnorm=False)  # noqa: E731
    Wb, Rb = split_gru_biases(p["b"], p["b_hn"]) if cell.reset == "after" else \
        (p["b"], np.zeros_like(p["b"]))
    return {"W": back(p["Wx"]).T.copy()[None], "R": back(p["Wh"]).T.copy()[None],
            "B": np.concatenate([back(Wb), back(Rb)])[None]}


def to_onnx_gru_model(cell, seq_len, batch, with_sequence_lens=True, opset=None):
    """An onnx ModelProto with one GRU node (linear_before_reset 1 for reset "after", 0 for
    "before"; default activations) holding the cell's weights as initializers; inputs and
    outputs as onnx_rnn.one_state_model's. opset None: onnx_lstm.ONNX_OPSET."""
    arrays = to_onnx_gru(cell)
    return one_state_model("GRU", arrays, cell, seq_len, batch, with_sequence_lens, opset,
                           linear_before_reset=ONNX_LINEAR_BEFORE_RESET[cell.reset])


def node_linear_before_reset(attrs, direction):
    """A GRU node's linear_before_reset, from its attributes (a dict), after checking the
    activations of that direction; ValueError for clip and for activations other than
    ONNX_GRU_ACTIVATIONS."""
    if "clip" in attrs:
        raise ValueError(f"clip={attrs['clip']} is not supported")
    names = tuple(a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", []))
    pairs = [names[k:k + 2] for k in range(0, len(names), 2)]
    if pairs:
        pair = pairs[direction] if len(pairs) > direction else pairs[0]
        if pair != ONNX_GRU_ACTIVATIONS:
            raise ValueError(f"activations {pair} (direction {direction}) are not supported: "
                             f"refnorm's GRU computes {ONNX_GRU_ACTIVATIONS}")
    return attrs.get("linear_before_reset", 0)
