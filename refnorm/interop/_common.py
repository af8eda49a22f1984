"""What every converter shares: argument checks, building a cell from copied arrays, reading a
cell's arrays for export, and folding a run-time forget bias into a stored bias.

A converter builds its cell with the peer's preset (refnorm.presets), so the function the cell
computes (per_gate, eps, carry, terms, forget_bias) is defined in one place; the converter only
copies the weights over the preset's initial values.
"""
import numbers

import numpy as np

from ..cells import GRU, LNGRU, LNLSTM, LSTM, RNN

# The LNLSTM options that decide the function it computes (forget_bias and term_beta are folded
# into the exported bias instead: both only add constants to z).
LN_FORM_OPTIONS = ("per_gate", "eps", "carry", "terms")


def real(value, name):
    """A finite Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def nonneg_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def source_array(value, name, ndim):
    """A float64 copy of a framework's array (NumPy array, Keras weight, ONNX tensor as array) with
    `ndim` dimensions. float16/32 values widen exactly."""
    if value is None:
        raise ValueError(f"{name} is missing")
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.array(a, dtype=np.float64)


def hidden_size_of(four_h, name):
    """H from the length 4H of a gate axis."""
    if four_h == 0 or four_h % 4:
        raise ValueError(f"{name}: the gate axis must have length 4H (a positive multiple of 4), "
                         f"got {four_h}")
    return four_h // 4


def expect_shape(a, shape, name):
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def build_cell(preset, input_size, hidden_size, params, *, dtype, backend, **overrides):
    """preset(input_size, hidden_size, dtype=, backend=, **overrides) (a refnorm.presets function)
    holding C-contiguous copies of `params`, cast to the cell's dtype and checked."""
    cell = preset(input_size, hidden_size, seed=0, dtype=dtype, backend=backend, **overrides)
    if set(params) != set(cell.params):
        raise ValueError(f"{cell!r} has params {sorted(cell.params)}, but the source provides "
                         f"{sorted(params)}")
    for name, value in params.items():
        expect_shape(np.asarray(value), cell.params[name].shape, f"{name} (converted)")
        cell.params[name] = np.array(value, dtype=cell.dtype, order="C")       # a copy, always
    cell._check_params()               # NaN/inf in the source: a ValueError now, not at forward
    return cell


def lstm_arrays(cell, who, rnn_too=False):
    """Copies of a refnorm.LSTM's Wx, Wh, b (checked), for export by `who` (rnn_too: `who`
    also converts a refnorm.RNN, which the message then names)."""
    if not isinstance(cell, LSTM):
        also = " (or a refnorm.RNN)" if rnn_too else ""
        raise ValueError(f"{who} converts a refnorm.LSTM, got {type(cell).__name__}{also}")
    cell._check_params()
    return {name: value.copy() for name, value in cell.params.items()}


def rnn_arrays(cell, who):
    """Copies of a refnorm.RNN's Wx (D, H), Wh (H, H), b (H) (checked), for export by `who`."""
    if not isinstance(cell, RNN):
        raise ValueError(f"{who} converts a refnorm.RNN (or a refnorm.LSTM), got "
                         f"{type(cell).__name__}")
    cell._check_params()
    return {name: value.copy() for name, value in cell.params.items()}


def nonlinearity_of(name, who, source):
    """refnorm's nonlinearity ("tanh", "relu") for a peer's activation `name` (its spelling:
    "tanh", "Relu", jax.nn.relu.__name__, ...); ValueError naming `source` for any other."""
    key = str(name).lower()
    if key not in ("tanh", "relu"):
        raise ValueError(f"{who}: {source} {name!r} is not supported: refnorm's RNN computes "
                         "tanh or relu")
    return key


def ln_lstm_arrays(cell, who, preset):
    """Copies of a refnorm.LNLSTM's params (checked), for export by `who`, after checking that
    the cell has the form of `preset` (LN_FORM_OPTIONS): the target computes only that form."""
    if not isinstance(cell, LNLSTM):
        raise ValueError(f"{who} converts a refnorm.LNLSTM, got {type(cell).__name__}")
    form = preset(1, 1)
    wrong = [name for name in LN_FORM_OPTIONS if getattr(cell, name) != getattr(form, name)]
    if wrong:
        want = ", ".join(f"{name}={getattr(form, name)!r}" for name in LN_FORM_OPTIONS)
        got = ", ".join(f"{name}={getattr(cell, name)!r}" for name in wrong)
        raise ValueError(f"{who}: the target computes only LNLSTM({want}) (refnorm.presets."
                         f"{preset.__name__}); this cell has {got}")
    cell._check_params()
    return {name: value.copy() for name, value in cell.params.items()}


def fold_forget_bias(b, offset):
    """b (4H, canonical order) with `offset` added to the forget block f = b[H:2H] (a copy; the
    values unchanged when offset is 0). Used to store a run-time forget bias in a target that has
    none, and to re-express it for a target that runs with another one (VAR 1)."""
    b = np.array(b)
    if offset != 0:
        H = b.shape[0] // 4
        b[H:2 * H] += offset
    return b


# -- the GRU family: gate blocks r, z, n (refnorm's, PyTorch's); a peer's in its own order ------
def gru_arrays(cell, who, cls=GRU, resets=("after",)):
    """Copies of a refnorm GRU's (or, with cls=LNGRU, an LNGRU's) params (checked), for export by
    `who`: reset="after" only (b_hn inside r ⊙ (...)) unless `resets` names "before" too (Keras
    reset_after=False, ONNX linear_before_reset=0)."""
    if type(cell) is not cls:
        raise ValueError(f"{who} converts a refnorm.{cls.__name__}, got {type(cell).__name__}")
    if cell.reset not in resets:
        raise ValueError(f"{who}: the target computes the GRU with the reset after the recurrent "
                         f"product (reset=\"after\"); this cell has reset={cell.reset!r}")
    if cls is LNGRU and cell.eps != LNGRU(1, 1).eps:
        raise ValueError(f"{who}: the target's layer norm has eps={LNGRU(1, 1).eps}; this cell "
                         f"has eps={cell.eps}")
    cell._check_params()
    return {name: value.copy() for name, value in cell.params.items()}


def gru_blocks(a, order, to_refnorm=True, axis=-1):
    """a's three gate blocks along `axis` reordered from a peer's `order` (a permutation of
    "rzn", e.g. "zrn" for haste and Keras) into refnorm's r, z, n (to_refnorm) or back (a
    C-contiguous copy)."""
    a = np.asarray(a)
    if a.shape[axis] % 3 or a.shape[axis] == 0:
        raise ValueError(f"the gate axis must have length 3H, got shape {a.shape}")
    blocks = np.split(a, 3, axis=axis)
    src, dst = (order, "rzn") if to_refnorm else ("rzn", order)
    return np.ascontiguousarray(np.concatenate([blocks[src.index(g)] for g in dst], axis=axis))


def fold_gru_biases(b_in, b_rec):
    """(b, b_hn) of refnorm from a peer's input and recurrent biases in r, z, n order: the r, z
    blocks sum into b, the recurrent n block is b_hn (inside r ⊙ (...))."""
    H = b_in.shape[0] // 3
    b = np.array(b_in, dtype=np.float64)
    b[:2 * H] += b_rec[:2 * H]
    return b, np.array(b_rec[2 * H:], dtype=np.float64)


def split_gru_biases(b, b_hn):
    """A peer's (input bias, recurrent bias) in r, z, n order from refnorm's b, b_hn: the input
    bias gets b, the recurrent bias zeros in r, z and b_hn in n (their sum is what the peer
    adds)."""
    H = b_hn.shape[0]
    return np.array(b), np.concatenate([np.zeros(2 * H, dtype=b.dtype), b_hn])
