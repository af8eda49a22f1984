"""PyTorch torch.nn.LSTM, GRU and RNN with several layers or two directions <-> refnorm.Stack
(interop.from_torch and to_torch hand these here; the names below are the same functions for
stacks alone).

A stacked or bidirectional torch module is the composition derivations/stack.md writes down with
between=None: layer k reads [forward | reverse] outputs of layer k - 1, a reverse direction reads
each sequence reversed within its length, h_n (and c_n) are (num_layers·dirs, B, H) with row
k·dirs + d. So it is a refnorm.Stack of the torch cell (presets.torch_lstm, torch_gru,
torch_rnn with the module's nonlinearity), one cell per layer and direction:
weight_ih_l{k}[_reverse], ... <-> net.params["l{k}.fwd.<name>"] ("l{k}.bwd.<name>" for
_reverse), each converted by the one-cell converter of its family (torch_lstm, torch_gru,
torch_rnn: the same arrays, the same two-biases-into-one rule). torch's dropout between layers
is the stack's `dropout` (the same inverted dropout after every layer but the last; its masks
are the stack's own draws, so only dropout = 0 or inference compare number for number).
batch_first changes only how the module reads its input, not its weights: refnorm is
time-major, so transpose x (B, T, D) -> (T, B, D) yourself.

Refused (ValueError): proj_size > 0 (as for one layer), a Stack with `between` set (torch has no
normalisation between layers), a Stack of a cell torch has not (the normalised cells; a GRU with
reset="before"). A cell's run-time forget_bias is folded into bias_ih as to_torch does for one
cell.
"""
import numpy as np

from .. import presets
from ..stack import DIRECTIONS, Stack

# torch.nn.<family> and the preset of the refnorm cell each layer and direction is
TORCH_PRESETS = {"LSTM": presets.torch_lstm, "GRU": presets.torch_gru, "RNN": presets.torch_rnn}


def is_stacked(module):
    """A torch.nn.LSTM, GRU or RNN with num_layers > 1 or bidirectional=True."""
    import torch
    return (isinstance(module, (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN))
            and (module.num_layers > 1 or module.bidirectional))


def _module_family(module):
    """"LSTM", "GRU" or "RNN" for a torch.nn.LSTM, GRU or RNN (a Cell is refused)."""
    import torch
    for family in TORCH_PRESETS:
        if isinstance(module, getattr(torch.nn, family)):
            return family
    raise ValueError(f"expected a torch.nn.LSTM, GRU or RNN, got {type(module).__name__} (a "
                     "torch.nn.LSTMCell, GRUCell or RNNCell is one cell: interop.from_torch)")


def from_torch_stack(module, dtype="float64", backend="numpy"):
    """refnorm.Stack holding a copy of every layer and direction of a torch.nn.LSTM, GRU or RNN:
    num_layers, bidirectional, dropout and (RNN) nonlinearity are the module's, between=None;
    layer k, direction d is interop.from_torch(module, layer=k, reverse=d == "bwd")'s cell.
    ValueError for proj_size > 0 and any other module."""
    from .torch_lstm import from_torch

    family = _module_family(module)
    options = {"nonlinearity": module.nonlinearity} if family == "RNN" else {}
    preset = TORCH_PRESETS[family]
    dirs = DIRECTIONS[:2 if module.bidirectional else 1]
    cells = [[from_torch(module, layer, d == "bwd", dtype=dtype, backend=backend) for d in dirs]
             for layer in range(module.num_layers)]
    net = Stack(preset.cls, module.input_size, module.hidden_size,
                num_layers=module.num_layers, bidirectional=module.bidirectional, between=None,
                dropout=module.dropout, seed=0, dtype=dtype, backend=backend,
                **preset.options, **options)
    for layer, row in enumerate(cells):
        for d, cell in zip(dirs, row):
            net.params.update({f"l{layer}.{d}.{name}": value
                               for name, value in cell.params.items()})
    net.load_params()                  # checked, and each of net.cells holds its own arrays
    return net


def to_torch_stack(net, module=None):
    """Copy a refnorm.Stack into torch. module=None builds a new torch.nn.LSTM, GRU or RNN
    (the stack's cell) with its num_layers, bidirectional, dropout, nonlinearity (RNN) and dtype
    (float64, or float32); otherwise the given module of that kind, layers and directions is
    overwritten in place (its dropout left as it is) and returned. Each layer and direction goes
    through interop.to_torch (bias_ih gets b, bias_hh zeros; a GRU's bias_hh keeps b_hn)."""
    import torch

    from .torch_lstm import to_torch

    if not isinstance(net, Stack):
        raise ValueError(f"to_torch_stack converts a refnorm.Stack, got {type(net).__name__}")
    if net.between is not None:
        raise ValueError(f"torch has no normalisation between the layers of an RNN: a Stack "
                         f"with between={net.between!r} has no torch module (between=None "
                         "only)")
    family = next((f for f, p in TORCH_PRESETS.items() if p.cls is net.cell_class), None)
    if family is None:
        raise ValueError(f"torch has no {net.cell_class.__name__} cell: a Stack converts to "
                         "torch.nn.LSTM, GRU or RNN only if its cell is refnorm.LSTM, GRU "
                         "(reset=\"after\") or RNN")
    net.load_params()                  # checked, and each of net.cells holds its own arrays
    first = net.cells[0][0]
    if module is None:
        options = {"nonlinearity": first.nonlinearity} if family == "RNN" else {}
        module = getattr(torch.nn, family)(
            net.input_size, net.hidden_size, num_layers=net.num_layers,
            bidirectional=net.bidirectional, dropout=net.dropout,
            dtype=torch.float64 if net.dtype == np.float64 else torch.float32, **options)
    elif _module_family(module) != family or (module.num_layers, module.bidirectional) != (
            net.num_layers, net.bidirectional):
        raise ValueError(f"the module is a torch.nn.{type(module).__name__}(num_layers="
                         f"{getattr(module, 'num_layers', None)}, bidirectional="
                         f"{getattr(module, 'bidirectional', None)}), the stack needs a "
                         f"torch.nn.{family}(num_layers={net.num_layers}, "
                         f"bidirectional={net.bidirectional})")
    for layer, row in enumerate(net.cells):
        for d, cell in zip(net.directions, row):
            to_torch(cell, module, layer, d == "bwd")
    return module
