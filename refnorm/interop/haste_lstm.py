"""haste (haste_pytorch) LSTM and LayerNormLSTM <-> refnorm.LSTM and refnorm.LNLSTM.

haste stores kernel (D, 4H), recurrent_kernel (H, 4H) and one bias (4H) with gate blocks
i, g, f, o (layout "haste"); its forget_bias argument only initialises bias[2H:3H], so it is part
of the stored bias. LayerNormLSTM (haste_pytorch/layer_norm_lstm.py, LayerNormLSTMScript):

    z = LN(x kernel; gamma[0]) + LN(h recurrent_kernel; gamma[1]) + bias    LN over 4H, no shift
    c = σ(f) c_prev + σ(i) tanh(g);  h = σ(o) tanh(LN(c; gamma_h, beta_h))  raw c carried

with F.layer_norm's eps 1e-5: refnorm.presets.haste_layer_norm_lstm, an LNLSTM(per_gate=False,
eps=1e-5), with gamma_x = gamma[0], gamma_h = gamma[1] (both reordered), gamma_c = gamma_h,
beta_c = beta_h. Outputs at padded
steps are not masked by haste, and its final state is taken at `lengths`.
"""
import numpy as np

from .. import presets
from ..cells import GRU, LNGRU, LNLSTM
from ._common import build_cell, expect_shape, fold_forget_bias, ln_lstm_arrays, lstm_arrays
from .layouts import from_canonical, to_canonical


def _kind(module):
    """'ln_lstm' or 'lstm' for a haste module, else ValueError."""
    import haste_pytorch

    if isinstance(module, haste_pytorch.LayerNormLSTM):
        kind = "ln_lstm"
    elif isinstance(module, haste_pytorch.LSTM):
        kind = "lstm"
    else:
        raise ValueError(f"expected a haste_pytorch.LSTM or LayerNormLSTM, got "
                         f"{type(module).__name__}")
    if module.zoneout:
        raise ValueError(f"zoneout={module.zoneout} is not supported (it changes the recurrence, "
                         "in inference too)")
    return kind


def _to_numpy(module, name, shape):
    import torch

    a = getattr(module, name).detach().to(device="cpu", dtype=torch.float64).numpy()
    return expect_shape(np.array(a), shape, f"{type(module).__name__}.{name}")


def from_haste(module, dtype="float64", backend="numpy"):
    """refnorm.LSTM (from haste_pytorch.LSTM) or refnorm.LNLSTM(per_gate=False, eps=1e-5) (from
    haste_pytorch.LayerNormLSTM) holding copies of the module's parameters, gate blocks reordered
    from i, g, f, o. DropConnect dropout acts in training only and is ignored; zoneout is
    refused."""
    from .haste_gru import from_haste_gru, is_haste_gru
    if is_haste_gru(module):
        return from_haste_gru(module, dtype=dtype, backend=backend)
    kind = _kind(module)
    D, H = module.input_size, module.hidden_size
    params = {"Wx": to_canonical(_to_numpy(module, "kernel", (D, 4 * H)), "haste"),
              "Wh": to_canonical(_to_numpy(module, "recurrent_kernel", (H, 4 * H)), "haste"),
              "b": to_canonical(_to_numpy(module, "bias", (4 * H,)), "haste")}
    if kind == "lstm":
        return build_cell(presets.haste_lstm, D, H, params, dtype=dtype, backend=backend)
    gamma = _to_numpy(module, "gamma", (2, 4 * H))
    params.update(gamma_x=to_canonical(gamma[0], "haste"), gamma_h=to_canonical(gamma[1], "haste"),
                  gamma_c=_to_numpy(module, "gamma_h", (H,)),
                  beta_c=_to_numpy(module, "beta_h", (H,)))
    return build_cell(presets.haste_layer_norm_lstm, D, H, params, dtype=dtype, backend=backend)


def to_haste(cell, module=None):
    """Copy a refnorm.LSTM into a haste_pytorch.LSTM, or a refnorm.LNLSTM of haste's form
    (per_gate=False, eps=1e-5, carry="raw", terms="separate") into a haste_pytorch.LayerNormLSTM.
    module=None builds one of the cell's dtype; a given module is overwritten in place (under
    torch.no_grad, cast to its dtype) and returned. A run-time forget_bias is folded into bias;
    with term_beta=True the shifts beta_x + beta_h are folded into bias too (haste's gate-term
    layer norms have no shift, and the shifts only add to b)."""
    import haste_pytorch
    import torch

    if isinstance(cell, (GRU, LNGRU)):
        from .haste_gru import to_haste_gru
        return to_haste_gru(cell, module)
    if isinstance(cell, LNLSTM):
        p = ln_lstm_arrays(cell, "to_haste", presets.haste_layer_norm_lstm)
        cls = haste_pytorch.LayerNormLSTM
    else:
        p = lstm_arrays(cell, "to_haste")
        cls = haste_pytorch.LSTM
    b = fold_forget_bias(p["b"], cell.forget_bias)
    if "beta_x" in p:
        b = b + p["beta_x"] + p["beta_h"]
    D, H = cell.input_size, cell.hidden_size
    if module is None:
        module = cls(D, H, forget_bias=0.0)
        module.to(torch.float64 if cell.dtype == np.float64 else torch.float32)
    elif type(module) is not cls:
        raise ValueError(f"a refnorm.{type(cell).__name__} goes into a haste_pytorch."
                         f"{cls.__name__}, got {type(module).__name__}")
    _kind(module)
    if (module.input_size, module.hidden_size) != (D, H):
        raise ValueError(f"the module has input size {module.input_size} and hidden size "
                         f"{module.hidden_size}, the cell has {D} and {H}")
    values = {"kernel": from_canonical(p["Wx"], "haste"),
              "recurrent_kernel": from_canonical(p["Wh"], "haste"),
              "bias": from_canonical(b, "haste")}
    if cls is haste_pytorch.LayerNormLSTM:
        values.update(gamma=np.stack([from_canonical(p["gamma_x"], "haste"),
                                      from_canonical(p["gamma_h"], "haste")]),
                      gamma_h=p["gamma_c"], beta_h=p["beta_c"])
    with torch.no_grad():
        for name, value in values.items():
            getattr(module, name).copy_(torch.from_numpy(value))              # copy_: no alias
    return module
