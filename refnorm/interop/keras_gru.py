"""Keras 3 keras.layers.GRU / GRUCell <-> refnorm.GRU (interop.from_keras and to_keras hand
these here; the names below are the same functions for the GRU alone).

Keras computes (keras/src/layers/rnn/gru.py, GRUCell.call) gate blocks z, r, h:
z = σ(x k_z + b_z + h rk_z (+ rb_z)), r = σ(...), h' = z ⊙ h + (1 − z) ⊙ hh, with
* reset_after=True (default): hh = tanh(x k_h + b_h + r ⊙ (h rk_h + rb_h)), bias (2, 3H) =
  [input bias; recurrent bias]: refnorm.GRU reset="after", b = input bias + [rb_z | rb_r | 0]
  (reordered to r, z, n), b_hn = rb_h. One way back: bias[0] = b, bias[1] = [0 | 0 | b_hn].
* reset_after=False: hh = tanh(x k_h + b_h + (r ⊙ h) rk_h), bias (3H): refnorm.GRU
  reset="before" (no b_hn).
kernel (D, 3H) = Wx and recurrent_kernel (H, 3H) = Wh with their blocks reordered z, r, h -> r,
z, n. The cell is built with presets.torch_gru (reset overridden for reset_after=False): the GRU
computes the same function; no separate Keras preset exists. Masking, batch-major data and the
float64 precision per backend are as for the Keras LSTM (interop.keras_lstm).

A list of arrays: [kernel (D, 3H), recurrent_kernel (H, 3H)(, bias)]; a (2, 3H) bias is
reset_after=True, a (3H) bias reset_after=False; without a bias pass reset_after (default
True).
"""
import numpy as np

from .. import presets
from ._common import (build_cell, expect_shape, fold_gru_biases, gru_arrays, gru_blocks,
                      source_array, split_gru_biases)

CLASS_NAMES = ("GRU", "GRUCell")
KERAS_ORDER = "zrn"
KERAS_ACTIVATIONS = {"activation": "tanh", "recurrent_activation": "sigmoid"}


def _is_keras_class(obj):
    return any((cls.__module__ or "").startswith("keras") and cls.__name__ in CLASS_NAMES
               for cls in type(obj).__mro__)


def is_gru(obj):
    """A Keras GRU / GRUCell (or a subclass), or a weights list whose recurrent kernel is
    (H, 3H): what from_keras hands to this module."""
    if _is_keras_class(obj):
        return True
    if isinstance(obj, (list, tuple)) and len(obj) in (2, 3):
        shape = np.shape(obj[1])
        return len(shape) == 2 and shape[0] > 0 and shape[1] == 3 * shape[0]
    return False


def _config(layer):
    config = layer.get_config() if hasattr(layer, "get_config") else {}
    for key, want in KERAS_ACTIVATIONS.items():
        got = config.get(key, want)
        if got != want:
            raise ValueError(f"the Keras GRU has {key}={got!r}; refnorm's GRU uses {want!r}")
    return config


def _weights(layer_or_weights):
    if hasattr(layer_or_weights, "get_weights"):
        weights = layer_or_weights.get_weights()
        if not weights:
            raise ValueError("the Keras layer has no weights yet: build it first (call it once, "
                             "or layer.build((None, None, input_size)))")
    else:
        weights = list(layer_or_weights)
    if len(weights) not in (2, 3):
        raise ValueError(f"expected [kernel, recurrent_kernel, bias] (or the first two for "
                         f"use_bias=False), got {len(weights)} arrays")
    return weights


def _reset_of(layer_or_weights, reset_after):
    """"after" or "before" from the layer's config, a list's bias, or reset_after."""
    if hasattr(layer_or_weights, "get_config"):
        own = bool(_config(layer_or_weights).get("reset_after", True))
        if reset_after is not None and bool(reset_after) != own:
            raise ValueError(f"reset_after={reset_after!r}, but the layer has reset_after={own}")
        return "after" if own else "before"
    weights = list(layer_or_weights)
    if len(weights) == 3:
        own = np.ndim(weights[2]) == 2
        if reset_after is not None and bool(reset_after) != own:
            raise ValueError(f"reset_after={reset_after!r}, but the bias has shape "
                             f"{np.shape(weights[2])} (reset_after=True: (2, 3H))")
        return "after" if own else "before"
    return "before" if reset_after is False else "after"


def from_keras_gru(layer_or_weights, dtype="float64", backend="numpy", *, reset_after=None):
    """refnorm.GRU holding a copy of a Keras 3 GRU or GRUCell's weights (reset_after=True: reset
    "after", False: "before"), or of the list [kernel (D, 3H), recurrent_kernel (H, 3H)(, bias
    (2, 3H) or (3H))]. ValueError for other activations and shapes."""
    reset = _reset_of(layer_or_weights, reset_after)
    weights = _weights(layer_or_weights)
    recurrent = source_array(weights[1], "recurrent_kernel", 2)
    H = recurrent.shape[0]
    expect_shape(recurrent, (H, 3 * H), "recurrent_kernel (H, 3H)")
    kernel = source_array(weights[0], "kernel", 2)
    D = kernel.shape[0]
    expect_shape(kernel, (D, 3 * H), "kernel (D, 3H)")
    params = {"Wx": gru_blocks(kernel, KERAS_ORDER), "Wh": gru_blocks(recurrent, KERAS_ORDER)}
    if reset == "after":
        bias = np.zeros((2, 3 * H)) if len(weights) == 2 else \
            expect_shape(source_array(weights[2], "bias", 2), (2, 3 * H), "bias (2, 3H)")
        params["b"], params["b_hn"] = fold_gru_biases(gru_blocks(bias[0], KERAS_ORDER),
                                                      gru_blocks(bias[1], KERAS_ORDER))
    else:
        bias = np.zeros(3 * H) if len(weights) == 2 else \
            expect_shape(source_array(weights[2], "bias", 1), (3 * H,), "bias (3H)")
        params["b"] = gru_blocks(bias, KERAS_ORDER)
    return build_cell(presets.torch_gru, D, H, params, dtype=dtype, backend=backend,
                      reset=reset)


def to_keras_gru(cell, layer=None):
    """A refnorm.GRU's weights for Keras: with layer=None the list [kernel, recurrent_kernel,
    bias] (copies, the cell's dtype; bias (2, 3H) for reset="after", (3H) for "before"); with a
    built Keras GRU / GRUCell whose reset_after matches the cell's reset, layer.set_weights(...)
    and the layer is returned. A layer with use_bias=False accepts only zero biases."""
    p = gru_arrays(cell, "to_keras", resets=("after", "before"))
    if cell.reset == "after":
        b_in, b_rec = split_gru_biases(p["b"], p["b_hn"])
        bias = np.stack([gru_blocks(b_in, KERAS_ORDER, False),
                         gru_blocks(b_rec, KERAS_ORDER, False)])
    else:
        bias = gru_blocks(p["b"], KERAS_ORDER, False)
    weights = [gru_blocks(p["Wx"], KERAS_ORDER, False), gru_blocks(p["Wh"], KERAS_ORDER, False),
               bias]
    if layer is None:
        return weights
    if not _is_keras_class(layer):
        raise ValueError(f"a refnorm.GRU goes into a Keras GRU or GRUCell, got "
                         f"{type(layer).__name__}")
    own = "after" if _config(layer).get("reset_after", True) else "before"
    if own != cell.reset:
        raise ValueError(f"the Keras layer has reset_after={own == 'after'}, the cell "
                         f"reset={cell.reset!r}")
    current = _weights(layer)
    if len(current) == 2:
        if np.any(bias != 0):
            raise ValueError("the Keras layer has use_bias=False but the cell's bias is not zero")
        weights = weights[:2]
    for name, new, old in zip(("kernel", "recurrent_kernel", "bias"), weights, current):
        if tuple(np.shape(old)) != new.shape:
            raise ValueError(f"the Keras layer's {name} has shape {tuple(np.shape(old))}, the "
                             f"cell's has {new.shape}")
    layer.set_weights(weights)
    return layer
