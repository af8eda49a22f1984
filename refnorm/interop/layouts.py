"""Gate layouts of every framework refnorm converts to and from, and the one helper that reorders
gate blocks. Every converter in refnorm.interop goes through `to_canonical` / `from_canonical`.

A 4H axis holds four H-wide gate blocks. refnorm's (canonical) order is i, f, g, o
(refnorm.config.GATE_ORDER). For a source layout with index map idx:

    canonical_block[k] = source_block[idx[k]]          k = 0..3 for i, f, g, o

so to_canonical picks the source blocks idx[0], idx[1], idx[2], idx[3], and from_canonical applies
the inverse permutation (source_block[j] = canonical_block[k] where idx[k] = j).
"""
from dataclasses import dataclass

import numpy as np

from ..config import N_GATES


@dataclass(frozen=True)
class GateLayout:
    gates: tuple    # the source's gate names, in the source's block order
    idx: tuple      # canonical_block[k] = source_block[idx[k]]
    source: str     # where the order is read


LAYOUTS = {
    "canonical": GateLayout(("i", "f", "g", "o"), (0, 1, 2, 3), "refnorm/config.py GATE_ORDER"),
    "torch": GateLayout(("i", "f", "g", "o"), (0, 1, 2, 3),
                        "torch/nn/modules/rnn.py, LSTM docstring (W_ii|W_if|W_ig|W_io)"),
    "cudnn": GateLayout(("i", "f", "c", "o"), (0, 1, 2, 3),
                        "cudnnGetRNNLinLayerMatrixParams: linLayerID 0-3 = input, forget, "
                        "new memory, output"),
    "keras": GateLayout(("i", "f", "c", "o"), (0, 1, 2, 3),
                        "keras/src/layers/rnn/lstm.py, LSTMCell.call (x_i, x_f, x_c, x_o)"),
    "onnx": GateLayout(("i", "o", "f", "c"), (0, 2, 3, 1),
                       "onnx/defs/rnn/defs.cc (W[iofc]), onnx/reference/ops/op_lstm.py"),
    "haste": GateLayout(("i", "g", "f", "o"), (0, 2, 1, 3),
                        "haste_pytorch/lstm.py, LSTMScript (i, g, f, o = chunk(v, 4))"),
    "tf1": GateLayout(("i", "j", "f", "o"), (0, 2, 1, 3),
                      "tensorflow/python/ops/rnn_cell_impl.py, BasicLSTMCell.call (i, j, f, o)"),
}

# The names a source gives the candidate ("cell input") block; every other name is refnorm's.
CANDIDATE_NAMES = ("g", "c", "j")


def _layout(layout):
    if isinstance(layout, GateLayout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout]


def inverse(idx):
    """The inverse permutation: inverse(idx)[idx[k]] = k."""
    inv = [0] * len(idx)
    for k, j in enumerate(idx):
        inv[j] = k
    return tuple(inv)


def reorder_gates(a, idx, axis=-1):
    """A new C-contiguous array whose gate block k along `axis` is block idx[k] of `a`.

    The axis must have length 4H; `a` itself is never returned or modified."""
    a = np.asarray(a)
    if sorted(idx) != list(range(N_GATES)):
        raise ValueError(f"idx must be a permutation of 0..{N_GATES - 1}, got {idx!r}")
    if a.ndim == 0 or a.shape[axis] % N_GATES or a.shape[axis] == 0:
        raise ValueError(f"the gate axis must have a positive length divisible by {N_GATES} "
                         f"(4H), got shape {a.shape} and axis {axis}")
    blocks = np.split(a, N_GATES, axis=axis)
    return np.ascontiguousarray(np.concatenate([blocks[j] for j in idx], axis=axis))


def to_canonical(a, layout, axis=-1):
    """Gate blocks along `axis` from `layout`'s order into refnorm's i, f, g, o (a copy)."""
    return reorder_gates(a, _layout(layout).idx, axis)


def from_canonical(a, layout, axis=-1):
    """Gate blocks along `axis` from refnorm's i, f, g, o into `layout`'s order (a copy)."""
    return reorder_gates(a, inverse(_layout(layout).idx), axis)


def canonical_names(layout):
    """The source's gate names in refnorm's order (candidate names shown as 'g'): always
    ('i', 'f', 'g', 'o') for a consistent layout, which tests/test_interop.py checks."""
    lay = _layout(layout)
    names = tuple("g" if n in CANDIDATE_NAMES else n for n in lay.gates)
    return tuple(names[j] for j in lay.idx)

