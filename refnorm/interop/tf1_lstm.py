"""TensorFlow 1 BasicLSTMCell and contrib LayerNormBasicLSTMCell <-> refnorm.LSTM and LNLSTM.

Arrays only (TensorFlow is not imported): pass the variables' values, e.g. from
tf.train.load_checkpoint or session.run.

BasicLSTMCell (tensorflow/python/ops/rnn_cell_impl.py, BasicLSTMCell.call):

    i, j, f, o = split(concat[x, h] kernel + bias)          kernel ((D+H), 4H), layout "tf1"
    c = c_prev σ(f + forget_bias) + σ(i) tanh(j);  h = tanh(c) σ(o)

forget_bias (1.0 by default) is added at run time, not stored: refnorm.LSTM(forget_bias=...).

LayerNormBasicLSTMCell(layer_norm=True) (tensorflow/contrib/rnn/python/ops/rnn_cell.py):

    i, j, f, o = split(concat[x, h] kernel)                  no bias variable
    each block normalised on its own: LN(·; "<scope>/gamma", "<scope>/beta") for the scopes
    input (i), transform (j), forget (f), output (o); eps 1e-12 (tf.contrib.layers.layer_norm)
    new_c = LN(c_prev σ(f + forget_bias) + σ(i) tanh(j); "state/gamma", "state/beta")
    h = tanh(new_c) σ(o);  new_c (normalised) is carried

which is refnorm.LNLSTM(terms="summed", per_gate=True, carry="normalized", eps=1e-12,
forget_bias=...) with gamma_z and b the per-gate gammas and betas in refnorm's order, and
gamma_c, beta_c those of "state". Dropout (keep_prob) acts in training only.
"""
from collections.abc import Mapping

import numpy as np

from .. import presets
from .._checks import positive_int
from ._common import (build_cell, expect_shape, fold_forget_bias, hidden_size_of, ln_lstm_arrays,
                      lstm_arrays, real, source_array)
from .layouts import from_canonical, to_canonical

# LayerNormBasicLSTMCell's variable scopes of the gate layer norms, in its block order i, j, f, o
TF1_LN_SCOPES = ("input", "transform", "forget", "output")
TF1_LN_STATE_SCOPE = "state"


def _kernel(kernel, input_size):
    """The split kernel (Wx (D, 4H), Wh (H, 4H)) in refnorm's order, D and H."""
    D = positive_int(input_size, "input_size")
    kernel = source_array(kernel, "kernel", 2)
    H = hidden_size_of(kernel.shape[1], "kernel ((D+H), 4H)")
    expect_shape(kernel, (D + H, 4 * H), f"kernel ((D+H), 4H) with input_size D={D}")
    return to_canonical(kernel[:D], "tf1"), to_canonical(kernel[D:], "tf1"), D, H


def _join_kernel(p):
    return np.concatenate([from_canonical(p["Wx"], "tf1"), from_canonical(p["Wh"], "tf1")],
                          axis=0)


def _forget_offset(cell, forget_bias):
    """What to add to the exported forget block so that a TF1 cell running with forget_bias
    computes what `cell` computes with its own (0 for forget_bias None: the cell's own)."""
    if forget_bias is None:
        return 0.0
    return cell.forget_bias - real(forget_bias, "forget_bias")


def from_tf1(kernel, bias, input_size, forget_bias=1.0, dtype="float64", backend="numpy"):
    """refnorm.LSTM(forget_bias=forget_bias) from a BasicLSTMCell's kernel ((D+H), 4H) and bias
    (4H): Wx = kernel[:D], Wh = kernel[D:], b = bias, reordered from i, j, f, o. forget_bias must be
    the one the TF1 cell was built with (TF1's default 1.0)."""
    Wx, Wh, D, H = _kernel(kernel, input_size)
    bias = expect_shape(source_array(bias, "bias", 1), (4 * H,), "bias (4H)")
    params = {"Wx": Wx, "Wh": Wh, "b": to_canonical(bias, "tf1")}
    return build_cell(presets.tf1_basic_lstm, D, H, params, dtype=dtype, backend=backend,
                      forget_bias=real(forget_bias, "forget_bias"))


def to_tf1(cell, forget_bias=None):
    """(kernel ((D+H), 4H), bias (4H)) of a BasicLSTMCell computing the refnorm.LSTM `cell`, when
    that TF1 cell runs with `forget_bias`; None means the cell's own (cell.forget_bias), so the
    bias is copied unchanged. Another value is compensated in the exported bias's forget block."""
    p = lstm_arrays(cell, "to_tf1")
    offset = _forget_offset(cell, forget_bias)
    return _join_kernel(p), from_canonical(fold_forget_bias(p["b"], offset), "tf1")


def _per_gate(values, name, H):
    """TF1's per-gate vectors {scope: (H,)} as (gate vector (4H) in refnorm's order, state (H))."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must be a dict keyed by scope, got {type(values).__name__}")
    scopes = set(TF1_LN_SCOPES) | {TF1_LN_STATE_SCOPE}
    if set(values) != scopes:
        raise ValueError(f"{name} must have exactly the keys {sorted(scopes)}, got "
                         f"{sorted(values)}")
    arrays = {s: expect_shape(source_array(values[s], f"{name}[{s!r}]", 1), (H,),
                              f"{name}[{s!r}] (H)") for s in scopes}
    gates = np.concatenate([arrays[s] for s in TF1_LN_SCOPES])               # i, j, f, o
    return to_canonical(gates, "tf1"), arrays[TF1_LN_STATE_SCOPE]


def from_tf1_layer_norm(kernel, gammas, betas, input_size, forget_bias=1.0, dtype="float64",
                        backend="numpy"):
    """refnorm.LNLSTM(terms="summed", per_gate=True, carry="normalized", eps=1e-12,
    forget_bias=forget_bias) from a LayerNormBasicLSTMCell(layer_norm=True): its kernel
    ((D+H), 4H) and the dicts gammas, betas {"input", "transform", "forget", "output", "state":
    (H,)} of its layer-norm variables <scope>/gamma and <scope>/beta."""
    Wx, Wh, D, H = _kernel(kernel, input_size)
    gamma_z, gamma_c = _per_gate(gammas, "gammas", H)
    b, beta_c = _per_gate(betas, "betas", H)
    params = {"Wx": Wx, "Wh": Wh, "b": b, "gamma_z": gamma_z, "gamma_c": gamma_c,
              "beta_c": beta_c}
    return build_cell(presets.tf1_layer_norm_basic_lstm, D, H, params, dtype=dtype,
                      backend=backend, forget_bias=real(forget_bias, "forget_bias"))


def to_tf1_layer_norm(cell, forget_bias=None):
    """(kernel, gammas, betas) of a LayerNormBasicLSTMCell(layer_norm=True) computing the
    refnorm.LNLSTM `cell`, which must have TF1's form (terms="summed", per_gate=True,
    carry="normalized", eps=1e-12, term_beta=False). forget_bias as in to_tf1."""
    p = ln_lstm_arrays(cell, "to_tf1_layer_norm", presets.tf1_layer_norm_basic_lstm)
    offset = _forget_offset(cell, forget_bias)
    gammas = np.split(from_canonical(p["gamma_z"], "tf1"), 4)
    betas = np.split(from_canonical(fold_forget_bias(p["b"], offset), "tf1"), 4)
    gammas = {s: g.copy() for s, g in zip(TF1_LN_SCOPES, gammas)}
    betas = {s: g.copy() for s, g in zip(TF1_LN_SCOPES, betas)}
    gammas[TF1_LN_STATE_SCOPE], betas[TF1_LN_STATE_SCOPE] = p["gamma_c"], p["beta_c"]
    return _join_kernel(p), gammas, betas
