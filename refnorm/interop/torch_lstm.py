"""PyTorch torch.nn.LSTM and torch.nn.LSTMCell <-> refnorm.LSTM (from_torch and to_torch also
take torch.nn.RNN / RNNCell and refnorm.RNN: they hand those to interop.torch_rnn; GRU / GRUCell
and refnorm.GRU to interop.torch_gru; a module with several layers or two directions, read
whole, and refnorm.Stack to interop.torch_stack).

torch computes z = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh with gate blocks i, f, g, o (refnorm's order),
so Wx = weight_ihᵀ, Wh = weight_hhᵀ, b = bias_ih + bias_hh. Layer k of a stacked nn.LSTM reads
the previous layer's output: its input size is H, or 2H when bidirectional (forward output then
reverse output along the feature axis). batch_first changes only how the module reads its input,
not its weights: refnorm is time-major, so transpose x (B, T, D) -> (T, B, D) yourself.
"""
import numpy as np

from .. import presets
from ._common import build_cell, expect_shape, flag, fold_forget_bias, lstm_arrays, nonneg_int
from .layouts import from_canonical, to_canonical


def _locate(module, layer, reverse, family="LSTM"):
    """The parameter names of one layer and direction of `module` (a torch.nn.<family> or
    <family>Cell: family "LSTM", "RNN" or "GRU"), its input size and H."""
    import torch

    layer, reverse = nonneg_int(layer, "layer"), flag(reverse, "reverse")
    sequence, single = getattr(torch.nn, family), getattr(torch.nn, family + "Cell")
    if isinstance(module, single):
        if layer != 0 or reverse:
            raise ValueError(f"torch.nn.{family}Cell has one layer and one direction: layer "
                             f"must be 0 and reverse False, got layer={layer}, reverse={reverse}")
        suffix, input_size = "", module.input_size
    elif isinstance(module, sequence):
        if getattr(module, "proj_size", 0):
            raise ValueError(f"torch.nn.LSTM with proj_size={module.proj_size} (LSTMP: h is "
                             "projected by weight_hr) is not supported")
        if layer >= module.num_layers:
            raise ValueError(f"layer={layer} is out of range: the module has "
                             f"num_layers={module.num_layers}")
        if reverse and not module.bidirectional:
            raise ValueError("reverse=True needs a bidirectional module")
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        input_size = module.input_size if layer == 0 else \
            module.hidden_size * (2 if module.bidirectional else 1)
    else:
        other = "; ".join(f"a torch.nn.{f} or {f}Cell converts to a refnorm.{f}"
                          for f in ("LSTM", "RNN", "GRU") if f != family)
        raise ValueError(f"expected a torch.nn.{family} or torch.nn.{family}Cell, got "
                         f"{type(module).__name__} ({other})")
    names = {key: key + suffix for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return names, input_size, module.hidden_size


def _family(module):
    """"RNN" for a torch.nn.RNN or RNNCell (interop.torch_rnn), "GRU" for a torch.nn.GRU or
    GRUCell (interop.torch_gru), else None (the LSTM converters here)."""
    import torch
    for family in ("RNN", "GRU"):
        if isinstance(module, (getattr(torch.nn, family), getattr(torch.nn, family + "Cell"))):
            return family
    return None


def _is_rnn(module):
    """A torch.nn.RNN or RNNCell (the refnorm.RNN converters, interop.torch_rnn)."""
    return _family(module) == "RNN"


def _to_numpy(tensor, name, shape):
    """A float64 NumPy copy of a parameter (any device, any float dtype)."""
    import torch

    a = tensor.detach().to(device="cpu", dtype=torch.float64).numpy()
    return expect_shape(np.array(a), shape, name)


def from_torch(module, layer=None, reverse=None, dtype="float64", backend="numpy"):
    """refnorm.LSTM holding a copy of one layer and direction of a torch.nn.LSTM, or of a
    torch.nn.LSTMCell (layer 0, reverse False): Wx = weight_ihᵀ, Wh = weight_hhᵀ,
    b = bias_ih + bias_hh (zeros for bias=False). The reverse direction runs over the time-reversed
    sequence: feed the cell x[::-1] (each sequence reversed within its length when padded).

    A torch.nn.RNN or RNNCell gives a refnorm.RNN instead (refnorm.interop.torch_rnn), a
    torch.nn.GRU or GRUCell a refnorm.GRU (refnorm.interop.torch_gru).
    Without layer= and reverse=, a torch.nn.LSTM, GRU or RNN with num_layers > 1 or
    bidirectional=True gives the whole module as a refnorm.Stack (interop.torch_stack); with
    either given, the one cell of that layer and direction (layer 0, reverse False where left
    out). A one-layer unidirectional module gives its cell.
    ValueError for proj_size > 0, a layer or direction the module does not have, and any other
    module."""
    from .torch_stack import from_torch_stack, is_stacked
    if layer is None and reverse is None and is_stacked(module):
        return from_torch_stack(module, dtype=dtype, backend=backend)
    layer = 0 if layer is None else layer
    reverse = False if reverse is None else reverse
    if _is_rnn(module):
        from .torch_rnn import from_torch_rnn
        return from_torch_rnn(module, layer, reverse, dtype=dtype, backend=backend)
    if _family(module) == "GRU":
        from .torch_gru import from_torch_gru
        return from_torch_gru(module, layer, reverse, dtype=dtype, backend=backend)
    names, D, H = _locate(module, layer, reverse)
    w_ih = _to_numpy(getattr(module, names["weight_ih"]), names["weight_ih"], (4 * H, D))
    w_hh = _to_numpy(getattr(module, names["weight_hh"]), names["weight_hh"], (4 * H, H))
    b = np.zeros(4 * H)
    for key in ("bias_ih", "bias_hh"):
        tensor = getattr(module, names[key], None)
        if tensor is not None:
            b = b + _to_numpy(tensor, names[key], (4 * H,))          # 2 biases -> 1: their sum
    params = {"Wx": to_canonical(w_ih, "torch", axis=0).T,
              "Wh": to_canonical(w_hh, "torch", axis=0).T, "b": to_canonical(b, "torch")}
    return build_cell(presets.torch_lstm, D, H, params, dtype=dtype, backend=backend)


def to_torch(cell, module=None, layer=0, reverse=False):
    """Copy a refnorm.LSTM into torch. module=None builds a one-layer torch.nn.LSTM of the cell's
    dtype (layer must be 0, reverse False); otherwise the given torch.nn.LSTM (that layer and
    direction) or torch.nn.LSTMCell is overwritten in place, under torch.no_grad, and returned.

    One bias -> two: bias_ih gets b and bias_hh gets zeros (their sum is what torch adds). A
    cell's run-time forget_bias is folded into bias_ih's forget block (torch has none). A module
    built with bias=False accepts only a cell whose bias is zero. The values are cast to the
    module's dtype. A refnorm.RNN goes into a torch.nn.RNN or RNNCell instead
    (refnorm.interop.torch_rnn), a refnorm.GRU into a torch.nn.GRU or GRUCell
    (refnorm.interop.torch_gru), a refnorm.Stack into a torch.nn.LSTM, GRU or RNN with its
    layers and directions (refnorm.interop.torch_stack; layer and reverse must be left out)."""
    import torch

    from ..cells import GRU, RNN
    from ..stack import Stack
    if isinstance(cell, Stack):
        if layer != 0 or reverse:
            raise ValueError("a refnorm.Stack holds every layer and direction: to_torch(stack) "
                             "takes no layer= or reverse=")
        from .torch_stack import to_torch_stack
        return to_torch_stack(cell, module)
    if isinstance(cell, RNN):
        from .torch_rnn import to_torch_rnn
        return to_torch_rnn(cell, module, layer, reverse)
    if isinstance(cell, GRU):
        from .torch_gru import to_torch_gru
        return to_torch_gru(cell, module, layer, reverse)
    p = lstm_arrays(cell, "to_torch", rnn_too=True)
    b = fold_forget_bias(p["b"], cell.forget_bias)
    D, H = cell.input_size, cell.hidden_size
    if module is None:
        if layer != 0 or reverse:
            raise ValueError("with module=None to_torch builds a one-layer unidirectional "
                             "torch.nn.LSTM: layer must be 0 and reverse False (pass the "
                             "module to fill another layer or direction)")
        torch_dtype = torch.float64 if cell.dtype == np.float64 else torch.float32
        module = torch.nn.LSTM(D, H, dtype=torch_dtype)
    names, module_D, module_H = _locate(module, layer, reverse)
    if (module_D, module_H) != (D, H):
        raise ValueError(f"{names['weight_ih']} takes input size {module_D} and hidden size "
                         f"{module_H}, the cell has {D} and {H}")
    has_bias = getattr(module, names["bias_ih"], None) is not None
    if not has_bias and np.any(b != 0):
        raise ValueError("the module was built with bias=False but the cell's bias (with its "
                         "forget_bias) is not zero")
    values = {"weight_ih": from_canonical(p["Wx"].T, "torch", axis=0),
              "weight_hh": from_canonical(p["Wh"].T, "torch", axis=0),
              "bias_ih": from_canonical(b, "torch"), "bias_hh": np.zeros(4 * H, dtype=b.dtype)}
    with torch.no_grad():
        for key, value in values.items():
            if key.startswith("bias") and not has_bias:
                continue
            getattr(module, names[key]).copy_(torch.from_numpy(value))        # copy_: no alias
    return module
