"""PyTorch torch.nn.RNN and torch.nn.RNNCell <-> refnorm.RNN (interop.from_torch and to_torch
hand these here; the names below are the same functions for the RNN alone).

torch computes h' = φ(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh) with φ = tanh or relu (the module's
`nonlinearity`, refnorm's option of the same name), so Wx = weight_ihᵀ (D, H), Wh = weight_hhᵀ
(H, H), b = bias_ih + bias_hh: one H-wide block, no gate order to permute. The parameter names,
the layers and directions are nn.LSTM's (torch_lstm._locate reads both): layer k > 0 reads the
previous layer's output, H or 2H wide; a reverse direction is a cell run over each sequence
reversed within its length. One bias -> two, as for the LSTM: bias_ih = b, bias_hh = 0.
"""
import numpy as np

from .. import presets
from ._common import build_cell, rnn_arrays
from .torch_lstm import _locate, _to_numpy


def from_torch_rnn(module, layer=0, reverse=False, dtype="float64", backend="numpy"):
    """refnorm.RNN(nonlinearity=module.nonlinearity) holding a copy of one layer and direction of
    a torch.nn.RNN, or of a torch.nn.RNNCell: Wx = weight_ihᵀ, Wh = weight_hhᵀ, b = bias_ih +
    bias_hh (zeros for bias=False). ValueError for a layer or direction the module does not have
    and for any other module."""
    names, D, H = _locate(module, layer, reverse, family="RNN")
    w_ih = _to_numpy(getattr(module, names["weight_ih"]), names["weight_ih"], (H, D))
    w_hh = _to_numpy(getattr(module, names["weight_hh"]), names["weight_hh"], (H, H))
    b = np.zeros(H)
    for key in ("bias_ih", "bias_hh"):
        tensor = getattr(module, names[key], None)
        if tensor is not None:
            b = b + _to_numpy(tensor, names[key], (H,))                  # 2 biases -> 1: their sum
    params = {"Wx": np.ascontiguousarray(w_ih.T), "Wh": np.ascontiguousarray(w_hh.T), "b": b}
    return build_cell(presets.torch_rnn, D, H, params, dtype=dtype, backend=backend,
                      nonlinearity=module.nonlinearity)


def to_torch_rnn(cell, module=None, layer=0, reverse=False):
    """Copy a refnorm.RNN into torch. module=None builds a one-layer torch.nn.RNN with the cell's
    nonlinearity and dtype (layer 0, reverse False); otherwise the given torch.nn.RNN (that layer
    and direction) or torch.nn.RNNCell is overwritten in place, under torch.no_grad, and
    returned. Its nonlinearity must be the cell's (ValueError otherwise: a module's nonlinearity
    is fixed at construction). bias_ih gets b and bias_hh zeros; a module built with bias=False
    accepts only a cell whose bias is zero. The values are cast to the module's dtype."""
    import torch

    p = rnn_arrays(cell, "to_torch")
    D, H = cell.input_size, cell.hidden_size
    if module is None:
        if layer != 0 or reverse:
            raise ValueError("with module=None to_torch builds a one-layer unidirectional "
                             "torch.nn.RNN: layer must be 0 and reverse False (pass the module "
                             "to fill another layer or direction)")
        torch_dtype = torch.float64 if cell.dtype == np.float64 else torch.float32
        module = torch.nn.RNN(D, H, nonlinearity=cell.nonlinearity, dtype=torch_dtype)
    names, module_D, module_H = _locate(module, layer, reverse, family="RNN")
    if (module_D, module_H) != (D, H):
        raise ValueError(f"{names['weight_ih']} takes input size {module_D} and hidden size "
                         f"{module_H}, the cell has {D} and {H}")
    if module.nonlinearity != cell.nonlinearity:
        raise ValueError(f"the module has nonlinearity={module.nonlinearity!r}, the cell "
                         f"{cell.nonlinearity!r}")
    has_bias = getattr(module, names["bias_ih"], None) is not None
    if not has_bias and np.any(p["b"] != 0):
        raise ValueError("the module was built with bias=False but the cell's bias is not zero")
    values = {"weight_ih": p["Wx"].T, "weight_hh": p["Wh"].T, "bias_ih": p["b"],
              "bias_hh": np.zeros(H, dtype=p["b"].dtype)}
    with torch.no_grad():
        for key, value in values.items():
            if key.startswith("bias") and not has_bias:
                continue
            getattr(module, names[key]).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module
