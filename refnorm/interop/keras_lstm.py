"""Keras 3 keras.layers.LSTM / LSTMCell <-> refnorm.LSTM (from_keras and to_keras also take a
SimpleRNN and a refnorm.RNN: they hand those to interop.keras_rnn).

Keras computes z = x kernel + h recurrent_kernel + bias with gate blocks i, f, c, o (refnorm's
order: c is the candidate g), so the arrays are copied as they are. unit_forget_bias=True only
initialises bias[H:2H] to 1: it is part of the stored bias and is copied with it. Keras is
batch-major (B, T, D) and, at masked steps, carries the state and repeats the previous output
(zero_output_for_mask=False, its default); refnorm outputs 0 there. A Bidirectional wrapper holds
two LSTMs: convert .forward_layer and .backward_layer (go_backwards=True: it reads x reversed).

Precision of a float64 Keras LSTM, by backend (the converters copy exactly on all of them; Keras
3.15's result_type maps float64 to float32 on every backend but TensorFlow, following JAX's
32-bit default, keras/src/backend/common/dtypes.py BIT64_TO_BIT32_DTYPE):
* TensorFlow: float64 throughout, ~1e-15 from refnorm with or without a mask.
* torch: without a mask a fused loop in the weights' dtype, ~1e-16; with a mask the generic RNN
  loop, whose keras.ops.matmul casts to that result type: ~1e-7.
* JAX (jax_enable_x64 on): ~1e-7 with or without a mask, as the activation keras.ops.tanh casts
  its input to that result type (keras/src/backend/jax/numpy.py tanh).
Measured with Keras 3.15.1 (tests/test_keras_backends.py, tests/test_interop.py on torch);
refnorm.validate names the cause in its report (refnorm.validation.KERAS_FLOAT32).
"""
import numpy as np

from .. import presets
from ._common import (build_cell, expect_shape, fold_forget_bias, hidden_size_of, lstm_arrays,
                      source_array)
from .layouts import from_canonical, to_canonical

# refnorm's LSTM uses these activations; a Keras layer configured otherwise is refused.
KERAS_ACTIVATIONS = {"activation": "tanh", "recurrent_activation": "sigmoid"}


def _check_config(layer):
    config = layer.get_config() if hasattr(layer, "get_config") else {}
    for key, want in KERAS_ACTIVATIONS.items():
        got = config.get(key, want)
        if got != want:
            raise ValueError(f"the Keras layer has {key}={got!r}; refnorm's LSTM uses {want!r}")


def _weights(layer_or_weights):
    if hasattr(layer_or_weights, "get_weights"):
        _check_config(layer_or_weights)
        weights = layer_or_weights.get_weights()
        if not weights:
            raise ValueError("the Keras layer has no weights yet: build it first (call it once, "
                             "or layer.build((None, None, input_size)))")
    elif isinstance(layer_or_weights, (list, tuple)):
        weights = list(layer_or_weights)
    else:
        raise ValueError("expected a Keras LSTM/LSTMCell (anything with get_weights()) or a list "
                         "[kernel, recurrent_kernel(, bias)], got "
                         f"{type(layer_or_weights).__name__}")
    if len(weights) not in (2, 3):
        raise ValueError(f"expected [kernel, recurrent_kernel, bias] (or the first two for "
                         f"use_bias=False), got {len(weights)} arrays (a Bidirectional LSTM holds "
                         f"6: convert its forward_layer and backward_layer)")
    return weights


def from_keras(layer_or_weights, dtype="float64", backend="numpy", *, nonlinearity=None,
               reset_after=None):
    """refnorm.LSTM holding a copy of a Keras 3 LSTM or LSTMCell's weights, or of the list
    [kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H)] (use_bias=False: the first two; b = 0).
    ValueError for other activations, other shapes (e.g. a GRU's 3H) and other lists.

    A SimpleRNN or SimpleRNNCell, or a list whose recurrent kernel is square (H, H), gives a
    refnorm.RNN instead (interop.keras_rnn.from_keras_simple_rnn; nonlinearity, "tanh" or
    "relu", states a list's activation). A Keras GRU or GRUCell, or a list whose recurrent
    kernel is (H, 3H), gives a refnorm.GRU (interop.keras_gru.from_keras_gru; reset_after states
    a bias-less list's form). A Keras Bidirectional, a Sequential or a list of Keras layers (a
    stack with an optional BatchNormalization between the layers) gives a refnorm.Stack
    (interop.keras_stack.from_keras_stack)."""
    from .keras_gru import from_keras_gru, is_gru
    from .keras_rnn import from_keras_simple_rnn, is_simple_rnn
    from .keras_stack import from_keras_stack, is_keras_stack
    if is_keras_stack(layer_or_weights):
        if nonlinearity is not None or reset_after is not None:
            raise ValueError("nonlinearity= and reset_after= state a weights list's form; a "
                             "Keras stack's layers carry their own")
        return from_keras_stack(layer_or_weights, dtype, backend)
    if is_gru(layer_or_weights):
        if nonlinearity is not None:
            raise ValueError("nonlinearity is a SimpleRNN's option; these are a GRU's weights")
        return from_keras_gru(layer_or_weights, dtype, backend, reset_after=reset_after)
    if reset_after is not None:
        raise ValueError("reset_after is a GRU's option (recurrent kernel (H, 3H))")
    if is_simple_rnn(layer_or_weights):
        return from_keras_simple_rnn(layer_or_weights, dtype, backend, nonlinearity=nonlinearity)
    if nonlinearity is not None:
        raise ValueError("nonlinearity is a SimpleRNN's option (a square recurrent kernel); "
                         "these are an LSTM's weights")
    weights = _weights(layer_or_weights)
    recurrent = source_array(weights[1], "recurrent_kernel", 2)
    H = hidden_size_of(recurrent.shape[1], "recurrent_kernel")
    expect_shape(recurrent, (H, 4 * H), "recurrent_kernel (H, 4H)")
    kernel = source_array(weights[0], "kernel", 2)
    D = kernel.shape[0]
    expect_shape(kernel, (D, 4 * H), "kernel (D, 4H)")
    bias = np.zeros(4 * H) if len(weights) == 2 else \
        expect_shape(source_array(weights[2], "bias", 1), (4 * H,), "bias (4H)")
    params = {"Wx": to_canonical(kernel, "keras"), "Wh": to_canonical(recurrent, "keras"),
              "b": to_canonical(bias, "keras")}
    return build_cell(presets.keras_lstm, D, H, params, dtype=dtype, backend=backend)


def to_keras(cell, layer=None):
    """A refnorm.LSTM's weights for Keras: with layer=None the list [kernel, recurrent_kernel,
    bias] (copies, the cell's dtype); with a built Keras LSTM/LSTMCell, layer.set_weights(...)
    (cast to the layer's dtype) and the layer is returned. A run-time forget_bias is folded into
    bias[H:2H]. A layer with use_bias=False accepts only a cell whose bias is zero. A refnorm.RNN
    goes to a SimpleRNN instead (interop.keras_rnn.to_keras_simple_rnn), a refnorm.GRU to a GRU,
    and a refnorm.Stack into a built Keras stack of its shape (interop.keras_stack.
    to_keras_stack; layer is that stack, required)."""
    from ..cells import GRU, RNN
    from ..stack import Stack
    if isinstance(cell, Stack):
        if layer is None:
            raise ValueError("to_keras(stack, obj) writes into a built Keras stack of the "
                             "stack's shape: pass it as obj")
        from .keras_stack import to_keras_stack
        return to_keras_stack(cell, layer)
    if isinstance(cell, GRU):
        from .keras_gru import to_keras_gru
        return to_keras_gru(cell, layer)
    if isinstance(cell, RNN):
        from .keras_rnn import to_keras_simple_rnn
        return to_keras_simple_rnn(cell, layer)
    p = lstm_arrays(cell, "to_keras", rnn_too=True)
    b = fold_forget_bias(p["b"], cell.forget_bias)
    weights = [from_canonical(p["Wx"], "keras"), from_canonical(p["Wh"], "keras"),
               from_canonical(b, "keras")]
    if layer is None:
        return weights
    current = _weights(layer)
    if len(current) == 2:
        if np.any(b != 0):
            raise ValueError("the Keras layer has use_bias=False but the cell's bias (with its "
                             "forget_bias) is not zero")
        weights = weights[:2]
    for name, new, old in zip(("kernel", "recurrent_kernel", "bias"), weights, current):
        if tuple(np.shape(old)) != new.shape:
            raise ValueError(f"the Keras layer's {name} has shape {tuple(np.shape(old))}, the "
                             f"cell's has {new.shape}")
    layer.set_weights(weights)
    return layer
