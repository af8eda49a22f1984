"""Keras 3 keras.layers.SimpleRNN / SimpleRNNCell <-> refnorm.RNN (interop.from_keras and
to_keras hand these here).

Keras computes h' = activation(x kernel + bias + h recurrent_kernel)
(keras/src/layers/rnn/simple_rnn.py, SimpleRNNCell.call): kernel (D, H) = Wx, recurrent_kernel
(H, H) = Wh, bias (H) = b, copied as they are; activation "tanh" (default) or "relu" is refnorm's
nonlinearity, any other is refused. The state is [h]; at masked steps Keras carries it and
repeats the previous output (zero_output_for_mask=False), where refnorm outputs 0: compare
valid steps. Keras is batch-major (B, T, D).

A list of arrays says nothing about the activation: from_keras(weights, nonlinearity="relu")
states it (default "tanh", Keras's). A list is a SimpleRNN's when its recurrent kernel is square
(H, H); an LSTM's is (H, 4H).

Precision of a float64 SimpleRNN in Keras 3.15.1, by backend (measured, tests/test_interop_rnn.py;
the converters copy exactly on all of them):
* TensorFlow: float64 throughout, ~1e-16, masked or not.
* torch: ~1e-7 masked or not: SimpleRNNCell.call's keras.ops.matmul casts float64 to Keras's
  result type, float32 (keras/src/backend/torch/numpy.py matmul; BIT64_TO_BIT32_DTYPE), and
  unlike the LSTM there is no fused torch loop that avoids it.
* JAX (jax_enable_x64 on): relu is float64 throughout (~1e-17); tanh does not run at all:
  keras.ops.tanh returns float32 for a float64 input (keras/src/backend/jax/numpy.py tanh), so
  the step's new state is float32 against a float64 carry and jax.lax.scan raises a TypeError
  ("carry input and carry output must have equal types"). refnorm.validate names it
  (validation.KERAS_SIMPLE_RNN_JAX_TANH); a float32 layer runs.
"""
import numpy as np

from .. import presets
from ._common import build_cell, expect_shape, nonlinearity_of, rnn_arrays, source_array

CLASS_NAMES = ("SimpleRNN", "SimpleRNNCell")


def is_simple_rnn(obj):
    """A Keras SimpleRNN / SimpleRNNCell (or a subclass), or a weights list whose recurrent
    kernel is square: what from_keras hands to this module."""
    for cls in type(obj).__mro__:
        if (cls.__module__ or "").startswith("keras") and cls.__name__ in CLASS_NAMES:
            return True
    if isinstance(obj, (list, tuple)) and len(obj) in (2, 3):
        shape = np.shape(obj[1])
        return len(shape) == 2 and shape[0] == shape[1] and shape[0] > 0
    return False


def _layer_nonlinearity(layer):
    config = layer.get_config() if hasattr(layer, "get_config") else {}
    return nonlinearity_of(config.get("activation", "tanh"), "the Keras SimpleRNN",
                           "activation")


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


def from_keras_simple_rnn(layer_or_weights, dtype="float64", backend="numpy", *,
                          nonlinearity=None):
    """refnorm.RNN holding a copy of a Keras 3 SimpleRNN or SimpleRNNCell's weights (its
    activation, tanh or relu, is the cell's nonlinearity; a nonlinearity given must agree), or
    of the list [kernel (D, H), recurrent_kernel (H, H), bias (H)] (use_bias=False: the first
    two, b = 0) with nonlinearity (default "tanh"). ValueError for other activations and
    shapes."""
    if hasattr(layer_or_weights, "get_weights"):
        own = _layer_nonlinearity(layer_or_weights)
        if nonlinearity is not None and nonlinearity != own:
            raise ValueError(f"nonlinearity={nonlinearity!r}, but the layer's activation is "
                             f"{own!r}")
        nonlinearity = own
    weights = _weights(layer_or_weights)
    recurrent = source_array(weights[1], "recurrent_kernel", 2)
    H = recurrent.shape[0]
    expect_shape(recurrent, (H, H), "recurrent_kernel (H, H)")
    kernel = source_array(weights[0], "kernel", 2)
    D = kernel.shape[0]
    expect_shape(kernel, (D, H), "kernel (D, H)")
    bias = np.zeros(H) if len(weights) == 2 else \
        expect_shape(source_array(weights[2], "bias", 1), (H,), "bias (H)")
    return build_cell(presets.keras_simple_rnn, D, H, {"Wx": kernel, "Wh": recurrent, "b": bias},
                      dtype=dtype, backend=backend,
                      nonlinearity=nonlinearity_of(nonlinearity or "tanh", "from_keras",
                                                   "nonlinearity"))


def to_keras_simple_rnn(cell, layer=None):
    """A refnorm.RNN's weights for Keras: with layer=None the list [kernel, recurrent_kernel,
    bias] (copies, the cell's dtype); with a built Keras SimpleRNN / SimpleRNNCell whose
    activation is the cell's nonlinearity, layer.set_weights(...) (cast to the layer's dtype)
    and the layer is returned. A layer with use_bias=False accepts only a zero bias."""
    p = rnn_arrays(cell, "to_keras")
    weights = [p["Wx"], p["Wh"], p["b"]]
    if layer is None:
        return weights
    if not is_simple_rnn(layer):
        raise ValueError(f"a refnorm.RNN goes into a Keras SimpleRNN or SimpleRNNCell, got "
                         f"{type(layer).__name__}")
    if _layer_nonlinearity(layer) != cell.nonlinearity:
        raise ValueError(f"the Keras layer's activation is {_layer_nonlinearity(layer)!r}, the "
                         f"cell's nonlinearity {cell.nonlinearity!r}")
    current = _weights(layer)
    if len(current) == 2:
        if np.any(p["b"] != 0):
            raise ValueError("the Keras layer has use_bias=False but the cell's bias is not zero")
        weights = weights[:2]
    for name, new, old in zip(("kernel", "recurrent_kernel", "bias"), weights, current):
        if tuple(np.shape(old)) != new.shape:
            raise ValueError(f"the Keras layer's {name} has shape {tuple(np.shape(old))}, the "
                             f"cell's has {new.shape}")
    layer.set_weights(weights)
    return layer
