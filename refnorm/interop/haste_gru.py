"""haste (haste_pytorch) GRU and LayerNormGRU <-> refnorm.GRU and refnorm.LNGRU (from_haste and
to_haste hand these here).

haste stores kernel (D, 3H), recurrent_kernel (H, 3H), bias (3H) and recurrent_bias (3H) with
gate blocks z, r, h (haste_pytorch/gru.py, GRUScript: z, r, g = chunk(v, 3);
g = tanh(vx_g + r ⊙ vh_g); h' = z ⊙ h + (1 − z) ⊙ g): refnorm.GRU, reset "after". LayerNormGRU
(layer_norm_gru.py) layer-normalises x kernel and h recurrent_kernel over 3H without shift
(gamma (2, 3H)) before adding the biases, eps 1e-5: refnorm.LNGRU, derivations/ln_gru.md:

    Wx = kernel[:, (r, z, h)], Wh = recurrent_kernel[:, (r, z, h)],
    b = bias + [recurrent_bias_r | recurrent_bias_z | 0], b_hn = recurrent_bias_h,
    gamma_x = gamma[0][(r, z, h)], gamma_h = gamma[1][(r, z, h)].

Back: bias = b, recurrent_bias = [0 | 0 | b_hn] (in haste's order). Outputs at padded steps are
not masked by haste; its final state is taken at `lengths`. Zoneout is refused; DropConnect
dropout acts in training only and is ignored.
"""
import numpy as np

from .. import presets
from ..cells import LNGRU
from ._common import build_cell, fold_gru_biases, gru_arrays, gru_blocks, split_gru_biases
from .haste_lstm import _to_numpy

HASTE_GRU_ORDER = "zrn"          # haste's z, r, h blocks, named with refnorm's letters


def is_haste_gru(module):
    import haste_pytorch
    return isinstance(module, (haste_pytorch.GRU, haste_pytorch.LayerNormGRU))


def _check(module):
    import haste_pytorch
    if not is_haste_gru(module):
        raise ValueError(f"expected a haste_pytorch.GRU or LayerNormGRU, got "
                         f"{type(module).__name__}")
    if module.zoneout:
        raise ValueError(f"zoneout={module.zoneout} is not supported (it changes the recurrence, "
                         "in inference too)")
    return isinstance(module, haste_pytorch.LayerNormGRU)


def from_haste_gru(module, dtype="float64", backend="numpy"):
    """refnorm.GRU (haste_pytorch.GRU) or refnorm.LNGRU (LayerNormGRU, presets.
    haste_layer_norm_gru) holding copies of the module's parameters."""
    ln = _check(module)
    D, H = module.input_size, module.hidden_size
    canon = lambda a: gru_blocks(a, HASTE_GRU_ORDER)  # noqa: E731
    b, b_hn = fold_gru_biases(canon(_to_numpy(module, "bias", (3 * H,))),
                              canon(_to_numpy(module, "recurrent_bias", (3 * H,))))
    params = {"Wx": canon(_to_numpy(module, "kernel", (D, 3 * H))),
              "Wh": canon(_to_numpy(module, "recurrent_kernel", (H, 3 * H))),
              "b": b, "b_hn": b_hn}
    if not ln:
        return build_cell(presets.haste_gru, D, H, params, dtype=dtype, backend=backend)
    gamma = _to_numpy(module, "gamma", (2, 3 * H))
    params.update(gamma_x=canon(gamma[0]), gamma_h=canon(gamma[1]))
    return build_cell(presets.haste_layer_norm_gru, D, H, params, dtype=dtype, backend=backend)


def to_haste_gru(cell, module=None):
    """Copy a refnorm.GRU (reset="after") into a haste_pytorch.GRU, or a refnorm.LNGRU (eps
    1e-5) into a haste_pytorch.LayerNormGRU. module=None builds one of the cell's dtype; a given
    module is overwritten in place (under torch.no_grad, cast to its dtype) and returned."""
    import haste_pytorch
    import torch

    ln = isinstance(cell, LNGRU)
    p = gru_arrays(cell, "to_haste", LNGRU if ln else type(cell))
    cls = haste_pytorch.LayerNormGRU if ln else haste_pytorch.GRU
    D, H = cell.input_size, cell.hidden_size
    if module is None:
        module = cls(D, H)
        module.to(torch.float64 if cell.dtype == np.float64 else torch.float32)
    elif type(module) is not cls:
        raise ValueError(f"a refnorm.{type(cell).__name__} goes into a haste_pytorch."
                         f"{cls.__name__}, got {type(module).__name__}")
    _check(module)
    if (module.input_size, module.hidden_size) != (D, H):
        raise ValueError(f"the module has input size {module.input_size} and hidden size "
                         f"{module.hidden_size}, the cell has {D} and {H}")
    back = lambda a: gru_blocks(a, HASTE_GRU_ORDER, to_refnorm=False)  # noqa: E731
    bias, recurrent_bias = split_gru_biases(p["b"], p["b_hn"])
    values = {"kernel": back(p["Wx"]), "recurrent_kernel": back(p["Wh"]), "bias": back(bias),
              "recurrent_bias": back(recurrent_bias)}
    if ln:
        values["gamma"] = np.stack([back(p["gamma_x"]), back(p["gamma_h"])])
    with torch.no_grad():
        for name, value in values.items():
            getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module
