"""Flax (JAX) LSTM cells <-> refnorm.LSTM: flax.linen.LSTMCell, flax.linen.OptimizedLSTMCell,
flax.nnx.LSTMCell and flax.nnx.OptimizedLSTMCell (from_flax and to_flax also take a SimpleCell
and a refnorm.RNN, handed to interop.flax_rnn, and a GRUCell and a refnorm.GRU, handed to
interop.flax_gru).

Flax computes, per gate k in i, f, g, o (flax/linen/recurrent.py LSTMCell.__call__):

    z^k = x W_ik + h W_hk + b_hk      one kernel per gate on each side, the bias on h's side only
    i, f, o = gate_fn(z^·) (sigmoid),  g = activation_fn(z^g) (tanh)
    c' = f * c + i * g,  h' = o * activation_fn(c')

which is (LSTM 1)-(LSTM 4) with Wx = [W_ii | W_if | W_ig | W_io] (D, 4H), Wh = [W_hi | ... | W_ho]
(H, 4H), b = [b_hi | ... | b_ho] (4H): refnorm's gate order, no permutation (FLAX_LAYOUT). The
bias init is zeros and nothing is added at run time: there is no forget bias to fold. Other
activation functions are refused. The params, by cell:

    linen LSTMCell, linen OptimizedLSTMCell   {ii, if, ig, io: {kernel (D, H)},
                                               hi, hf, hg, ho: {kernel (H, H), bias (H)}}
    nnx LSTMCell                               the same, with if_ for if (a Python keyword)
    nnx OptimizedLSTMCell                      {dense_i: {kernel (D, 4H)},
                                                dense_h: {kernel (H, 4H), bias (4H)}}, i, f, g, o

linen's OptimizedLSTMCell keeps linen LSTMCell's per-gate params (DenseParams with the same names)
and concatenates them at every call; only nnx's OptimizedLSTMCell stores fused kernels.

The carry is (c, h), in that order (FLAX_CARRY): `c, h = carry` in every cell's __call__. Flax is
batch-major by default, (B, T, D); refnorm is time-major (T, B, D). flax.linen.RNN /
flax.nnx.RNN take seq_lengths and then return each sequence's last valid carry, but leave the
outputs at padded steps unmasked (refnorm writes 0 there).

Precision: JAX computes in float32 unless its x64 mode is on, and then silently turns float64
arrays into float32. refnorm never switches the mode (it is process-wide): a float64 array asked
of JAX with x64 off is a ValueError naming jax.config.update("jax_enable_x64", True)
(require_x64). Reading params (from_flax) needs no JAX at all for plain arrays.
"""
from collections.abc import Mapping

import numpy as np

from ..cells import LSTM
from ._common import (build_cell, expect_shape, fold_forget_bias, hidden_size_of, lstm_arrays,
                      source_array)
from .layouts import GateLayout, from_canonical, to_canonical

FLAX_LAYOUT = GateLayout(("i", "f", "g", "o"), (0, 1, 2, 3),
                         "flax/linen/recurrent.py LSTMCell.__call__ (ii+hi, if+hf, ig+hg, io+ho); "
                         "flax/nnx/nn/recurrent.py OptimizedLSTMCell (jnp.split(y, 4): i, f, g, o)")
FLAX_CARRY = ("c", "h")           # `c, h = carry` in each cell's __call__

# The per-gate param names, in Flax's (= refnorm's) gate order.
GATE_KEYS = {"linen": {"x": ("ii", "if", "ig", "io"), "h": ("hi", "hf", "hg", "ho")},
             "nnx": {"x": ("ii", "if_", "ig", "io"), "h": ("hi", "hf", "hg", "ho")}}
FUSED_KEYS = ("dense_i", "dense_h")            # nnx OptimizedLSTMCell

# The cells converted, by API, and the activations refnorm's LSTM computes (Flax's defaults).
CELL_NAMES = ("LSTMCell", "OptimizedLSTMCell")
ACTIVATIONS = {"gate_fn": "sigmoid", "activation_fn": "tanh"}

X64_FIX = ('call jax.config.update("jax_enable_x64", True) at startup, before any JAX array is '
           'made')


# -- the carry and the precision ----------------------------------------------------------------
def to_carry(h, c):
    """Flax's carry from refnorm's states h, c: (c, h) (FLAX_CARRY)."""
    states = {"h": h, "c": c}
    return tuple(states[name] for name in FLAX_CARRY)


def from_carry(carry):
    """refnorm's (h, c) from a Flax carry."""
    states = dict(zip(FLAX_CARRY, carry))
    return states["h"], states["c"]


def require_x64(dtype, what):
    """ValueError if `dtype` is 64-bit while JAX's x64 mode is off: JAX would make it float32."""
    import jax

    if np.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(f"{what} is {np.dtype(dtype).name}, but JAX's x64 mode is off and JAX "
                         f"would compute in float32: {X64_FIX} (a float32 cell or module "
                         "converts and validates without it, at float32 tolerance)")


# -- modules --------------------------------------------------------------------------------------
def module_api(obj):
    """"linen" or "nnx" for a Flax LSTMCell / OptimizedLSTMCell, SimpleCell (flax_rnn) or
    GRUCell (flax_gru), or a subclass; None for an object that is not a Flax module (params, an
    nnx.State); ValueError for any other Flax module (MGUCell, ConvLSTMCell, ...)."""
    mods = [cls.__module__ or "" for cls in type(obj).__mro__]
    api = next((a for a in ("linen", "nnx") for m in mods if m.startswith(f"flax.{a}")), None)
    if api is None:
        return None
    import importlib

    flax_api = importlib.import_module(f"flax.{api}")
    if not isinstance(obj, flax_api.Module):
        return None
    cells = CELL_NAMES + ("SimpleCell", "GRUCell")        # SimpleCell: flax_rnn; GRUCell: flax_gru
    if not isinstance(obj, tuple(getattr(flax_api, name) for name in cells)):
        raise ValueError(f"expected a flax.{api}.LSTMCell or OptimizedLSTMCell (refnorm.LSTM), "
                         f"a SimpleCell (refnorm.RNN) or a GRUCell (refnorm.GRU), got "
                         f"{type(obj).__name__} (other Flax cells are not refnorm's)")
    return api


def cell_api(obj, name):
    """"linen" or "nnx" for a Flax module of class `name` (flax.linen.<name> or
    flax.nnx.<name>, or a subclass), else None."""
    api = module_api(obj)
    if api is None:
        return None
    import importlib
    return api if isinstance(obj, getattr(importlib.import_module(f"flax.{api}"), name)) else None


def check_sizes(module, api, D, H):
    """ValueError unless a module of `api` has a cell's sizes: linen's features is H, nnx's
    in_features and hidden_features are D and H."""
    if api == "linen" and module.features != H:
        raise ValueError(f"the module has features={module.features}, the cell H={H}")
    if api == "nnx" and (module.in_features, module.hidden_features) != (D, H):
        raise ValueError(f"the module has in_features={module.in_features}, hidden_features="
                         f"{module.hidden_features}; the cell D={D}, H={H}")


def check_activations(module, family="LSTM"):
    """ValueError unless the module's gate_fn is sigmoid and activation_fn tanh (Flax's
    defaults, the functions refnorm's LSTM and GRU (`family`) compute)."""
    import jax
    import jax.numpy as jnp

    allowed = {"gate_fn": (jax.nn.sigmoid,), "activation_fn": (jnp.tanh, jax.nn.tanh)}
    for attr, name in ACTIVATIONS.items():
        fn = getattr(module, attr)
        if not any(fn is ok for ok in allowed[attr]):
            shown = getattr(fn, "__name__", repr(fn))
            raise ValueError(f"the Flax cell has {attr}={shown}, which refnorm refuses: its "
                             f"{family} computes {attr}={name} (Flax's default)")


def module_params(module, api, family="LSTM"):
    """A Flax cell's params as a pure dict (copies nothing), after check_activations(module,
    family). A linen cell must be bound."""
    check_activations(module, family)
    if api == "nnx":
        from flax import nnx

        return _pure_dict(nnx.state(module, nnx.Param))
    if module.scope is None:
        raise ValueError("a linen module holds no params until bound: pass "
                         "cell.bind({'params': params}) (from_flax also takes the params dict)")
    return module.variables["params"]


# -- param trees ----------------------------------------------------------------------------------
def _pure_dict(state):
    """An nnx.State as a nested dict of arrays (nnx.to_pure_dict; State.to_pure_dict before)."""
    from flax import nnx

    return nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()


def _maybe_pure(tree):
    is_state = type(tree).__module__.startswith("flax.nnx") and hasattr(tree, "to_pure_dict")
    return _pure_dict(tree) if is_state else tree


def _pure(tree):
    """A plain Mapping of a params tree: an nnx.State to its pure dict, {'params': p} to p."""
    tree = _maybe_pure(tree)
    if not isinstance(tree, Mapping):
        raise ValueError(f"expected a Flax LSTM cell or its params (a dict or nnx.State), got "
                         f"{type(tree).__name__}")
    if set(tree) == {"params"}:
        tree = tree["params"]
    return tree


def tree_layout(tree):
    """"linen", "nnx" (per-gate kernels) or "fused" (nnx OptimizedLSTMCell) from the keys."""
    keys = set(tree)
    for layout, gate_keys in GATE_KEYS.items():
        if keys == set(gate_keys["x"] + gate_keys["h"]):
            return layout
    if keys == set(FUSED_KEYS):
        return "fused"
    accepted = "; ".join([", ".join(k["x"] + k["h"]) for k in GATE_KEYS.values()]
                         + [", ".join(FUSED_KEYS)])
    raise ValueError(f"the params have keys {sorted(keys)}, not a Flax LSTM cell's; accepted: "
                     f"{accepted}")


def _leaf(tree, key, field, ndim):
    if not isinstance(tree[key], Mapping) or field not in tree[key]:
        raise ValueError(f"{key}/{field} is missing")
    return source_array(tree[key][field], f"{key}/{field}", ndim)


def _source_arrays(tree):
    """Wx (D, 4H), Wh (H, 4H), b (4H) in Flax's gate order (float64 copies), and the layout."""
    layout = tree_layout(tree)
    if layout == "fused":
        wx = _leaf(tree, "dense_i", "kernel", 2)
        wh = _leaf(tree, "dense_h", "kernel", 2)
        b = _leaf(tree, "dense_h", "bias", 1)
    else:
        keys = GATE_KEYS[layout]
        wx = np.concatenate([_leaf(tree, k, "kernel", 2) for k in keys["x"]], axis=1)
        wh = np.concatenate([_leaf(tree, k, "kernel", 2) for k in keys["h"]], axis=1)
        b = np.concatenate([_leaf(tree, k, "bias", 1) for k in keys["h"]])
    H = hidden_size_of(wh.shape[1], "recurrent kernels")
    expect_shape(wh, (H, 4 * H), "recurrent kernels (H, 4H) together")
    expect_shape(wx, (wx.shape[0], 4 * H), "input kernels (D, 4H) together")
    expect_shape(b, (4 * H,), "biases (4H) together")
    return wx, wh, b, layout


def _tree_of(wx, wh, b, layout, cast):
    """A new params dict in `layout` from Flax-order arrays; cast(array, path) makes each leaf."""
    if layout == "fused":
        return {"dense_i": {"kernel": cast(wx, "dense_i/kernel")},
                "dense_h": {"kernel": cast(wh, "dense_h/kernel"), "bias": cast(b, "dense_h/bias")}}
    keys, split = GATE_KEYS[layout], lambda a: np.split(a, 4, axis=-1)  # noqa: E731
    tree = {k: {"kernel": cast(w, f"{k}/kernel")} for k, w in zip(keys["x"], split(wx))}
    for k, w, bk in zip(keys["h"], split(wh), split(b)):
        tree[k] = {"kernel": cast(w, f"{k}/kernel"), "bias": cast(bk, f"{k}/bias")}
    return tree


def _cast_to(dtype_of):
    """cast(array, path): a new JAX array (a copy, always) in dtype_of(path); ValueError for a
    64-bit dtype while JAX's x64 mode is off (require_x64)."""
    import jax.numpy as jnp

    def cast(a, path):
        require_x64(dtype_of(path), f"to_flax: {path}")
        return jnp.array(a, dtype=dtype_of(path))
    return cast


def _leaf_dtypes(tree):
    """{"key/field": dtype} of a params tree's leaves (what each new leaf is cast to)."""
    return {f"{k}/{f}": np.asarray(v).dtype for k, sub in tree.items() for f, v in sub.items()}


def _deliver(tree, target, api):
    """The new params `tree` in the form of `target`: for params (api None) the tree, wrapped as
    {'params': tree} where the target was; for an nnx module, its Params overwritten in place
    (nnx.update) and the module."""
    if api is None:
        return {"params": tree} if set(_maybe_pure(target)) == {"params"} else tree
    from flax import nnx

    state = nnx.state(target, nnx.Param)
    if hasattr(nnx, "replace_by_pure_dict"):
        nnx.replace_by_pure_dict(state, tree)
    else:
        state.replace_by_pure_dict(tree)
    nnx.update(target, state)
    return target


# -- the converters -------------------------------------------------------------------------------
def from_flax(source, dtype="float64", backend="numpy", *, nonlinearity=None):
    """refnorm.LSTM holding a copy of a Flax LSTM cell's params. source: a bound linen LSTMCell or
    OptimizedLSTMCell (cell.bind({'params': params})), an nnx LSTMCell or OptimizedLSTMCell, or
    the params alone: linen's params dict (or the variables {'params': ...}), an nnx.State or its
    pure dict. Wx = [ii | if | ig | io] kernels, Wh = [hi | hf | hg | ho] kernels, b = their
    biases (nnx OptimizedLSTMCell: dense_i/kernel, dense_h/kernel, dense_h/bias as they are).

    ValueError for an unbound linen module, gate_fn or activation_fn other than sigmoid and
    tanh, other Flax cells (MGUCell, ...), other keys or shapes.

    A SimpleCell, or its params, gives a refnorm.RNN instead (interop.flax_rnn; nonlinearity,
    "tanh" or "relu", states the activation of params given alone); a GRUCell, or its params, a
    refnorm.GRU (interop.flax_gru)."""
    from .flax_gru import from_flax_gru, is_gru
    from .flax_rnn import from_flax_simple_cell, is_simple_cell
    if is_simple_cell(source):
        return from_flax_simple_cell(source, dtype, backend, nonlinearity=nonlinearity)
    gru = is_gru(source)
    if nonlinearity is not None:
        raise ValueError("nonlinearity is a SimpleCell's; these are "
                         f"{'a GRUCell' if gru else 'an LSTM cell'}'s params")
    if gru:
        return from_flax_gru(source, dtype, backend)
    api = module_api(source)
    tree = _pure(module_params(source, api) if api else source)
    wx, wh, b, _ = _source_arrays(tree)
    if api == "linen" and source.features != wh.shape[0]:
        raise ValueError(f"the module has features={source.features}, its params H={wh.shape[0]}")
    params = {"Wx": to_canonical(wx, FLAX_LAYOUT), "Wh": to_canonical(wh, FLAX_LAYOUT),
              "b": to_canonical(b, FLAX_LAYOUT)}
    return build_cell(LSTM, wx.shape[0], wh.shape[0], params, dtype=dtype, backend=backend)


def to_flax(cell, target=None):
    """A refnorm.LSTM's weights for Flax. target:

    * None: a new linen params dict {ii: {kernel}, ..., hi: {kernel, bias}, ...} of JAX arrays in
      the cell's dtype (for linen LSTMCell and OptimizedLSTMCell: cell.apply({'params': p}, ...));
    * a linen LSTMCell / OptimizedLSTMCell, bound or not: the same, in its param_dtype (linen is
      functional: the module is not changed; bind the result yourself);
    * a params dict (any layout from_flax reads, or {'params': ...}): a new dict of that layout
      and structure, each leaf in the dtype of the leaf it replaces;
    * an nnx LSTMCell / OptimizedLSTMCell: its Params overwritten in place (nnx.update), each in
      its dtype, and the module returned.

    A run-time forget_bias is folded into the forget block of the bias (Flax has none). A 64-bit
    result needs JAX's x64 mode: ValueError naming the fix otherwise (require_x64). A
    refnorm.RNN goes to a SimpleCell instead (interop.flax_rnn.to_flax_simple_cell), a
    refnorm.GRU to a GRUCell (interop.flax_gru.to_flax_gru)."""
    from ..cells import BNGRU, GRU, LNGRU, RNN, SeqBNGRU
    from .flax_gru import is_gru, to_flax_gru
    from .flax_rnn import is_simple_cell, to_flax_simple_cell
    if isinstance(cell, RNN):
        return to_flax_simple_cell(cell, target)
    if isinstance(cell, (GRU, BNGRU, SeqBNGRU, LNGRU)):     # the normalised ones refused there
        return to_flax_gru(cell, target)
    p = lstm_arrays(cell, "to_flax", rnn_too=True)
    b = fold_forget_bias(p["b"], cell.forget_bias)
    wx, wh, b = (from_canonical(a, FLAX_LAYOUT) for a in (p["Wx"], p["Wh"], b))
    D, H = cell.input_size, cell.hidden_size
    api = module_api(target) if target is not None else None
    if api and (is_simple_cell(target) or is_gru(target)):
        raise ValueError("a refnorm.LSTM goes into a Flax LSTMCell or OptimizedLSTMCell, got "
                         f"{type(target).__name__}")
    if api:
        check_sizes(target, api, D, H)
    if target is None or api == "linen":
        if api:
            check_activations(target)
        dtype = cell.dtype if target is None else target.param_dtype
        return _tree_of(wx, wh, b, "linen", _cast_to(lambda path: dtype))
    old = _pure(module_params(target, api) if api else target)
    old_wx, old_wh, _, layout = _source_arrays(old)
    if (old_wx.shape, old_wh.shape) != (wx.shape, wh.shape):
        raise ValueError(f"the target's kernels are (D, 4H) {old_wx.shape} and (H, 4H) "
                         f"{old_wh.shape}; the cell's {wx.shape} and {wh.shape}")
    return _deliver(_tree_of(wx, wh, b, layout, _cast_to(_leaf_dtypes(old).__getitem__)),
                    target, api)
