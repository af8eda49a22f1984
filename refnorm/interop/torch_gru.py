"""PyTorch torch.nn.GRU and torch.nn.GRUCell <-> refnorm.GRU (interop.from_torch and to_torch
hand these here; the names below are the same functions for the GRU alone).

torch computes r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr), z = σ(... b_iz ... b_hz),
n = tanh(x W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h, gate blocks r, z, n:
refnorm.GRU with reset="after" (presets.torch_gru). Wx = weight_ihᵀ (D, 3H), Wh = weight_hhᵀ
(H, 3H), b = bias_ih + [b_hr | b_hz | 0], b_hn = bias_hh's n block. One way back: bias_ih = b,
bias_hh = [0 | 0 | b_hn]. Layers and directions as nn.LSTM's (torch_lstm._locate).
"""
import numpy as np

from .. import presets
from ._common import build_cell, fold_gru_biases, gru_arrays, split_gru_biases
from .torch_lstm import _locate, _to_numpy


def from_torch_gru(module, layer=0, reverse=False, dtype="float64", backend="numpy"):
    """refnorm.GRU (reset="after") holding a copy of one layer and direction of a torch.nn.GRU,
    or of a torch.nn.GRUCell. ValueError for a layer or direction the module does not have."""
    names, D, H = _locate(module, layer, reverse, family="GRU")
    w_ih = _to_numpy(getattr(module, names["weight_ih"]), names["weight_ih"], (3 * H, D))
    w_hh = _to_numpy(getattr(module, names["weight_hh"]), names["weight_hh"], (3 * H, H))
    biases = [getattr(module, names[k], None) for k in ("bias_ih", "bias_hh")]
    biases = [np.zeros(3 * H) if t is None else _to_numpy(t, names[k], (3 * H,))
              for t, k in zip(biases, ("bias_ih", "bias_hh"))]
    b, b_hn = fold_gru_biases(*biases)
    params = {"Wx": np.ascontiguousarray(w_ih.T), "Wh": np.ascontiguousarray(w_hh.T), "b": b,
              "b_hn": b_hn}
    return build_cell(presets.torch_gru, D, H, params, dtype=dtype, backend=backend)


def to_torch_gru(cell, module=None, layer=0, reverse=False):
    """Copy a refnorm.GRU (reset="after") into torch. module=None builds a one-layer
    torch.nn.GRU of the cell's dtype; otherwise the given torch.nn.GRU (that layer and
    direction) or GRUCell is overwritten in place, under torch.no_grad, and returned. A module
    built with bias=False accepts only a cell whose b and b_hn are zero."""
    import torch

    p = gru_arrays(cell, "to_torch")
    D, H = cell.input_size, cell.hidden_size
    if module is None:
        if layer != 0 or reverse:
            raise ValueError("with module=None to_torch builds a one-layer unidirectional "
                             "torch.nn.GRU: layer must be 0 and reverse False (pass the module "
                             "to fill another layer or direction)")
        torch_dtype = torch.float64 if cell.dtype == np.float64 else torch.float32
        module = torch.nn.GRU(D, H, dtype=torch_dtype)
    names, module_D, module_H = _locate(module, layer, reverse, family="GRU")
    if (module_D, module_H) != (D, H):
        raise ValueError(f"{names['weight_ih']} takes input size {module_D} and hidden size "
                         f"{module_H}, the cell has {D} and {H}")
    has_bias = getattr(module, names["bias_ih"], None) is not None
    if not has_bias and (np.any(p["b"] != 0) or np.any(p["b_hn"] != 0)):
        raise ValueError("the module was built with bias=False but the cell's b or b_hn is "
                         "not zero")
    bias_ih, bias_hh = split_gru_biases(p["b"], p["b_hn"])
    values = {"weight_ih": p["Wx"].T, "weight_hh": p["Wh"].T, "bias_ih": bias_ih,
              "bias_hh": bias_hh}
    with torch.no_grad():
        for key, value in values.items():
            if key.startswith("bias") and not has_bias:
                continue
            getattr(module, names[key]).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module
