"""Flax (JAX) SimpleCell <-> refnorm.RNN: flax.linen.SimpleCell and flax.nnx.SimpleCell
(interop.from_flax and to_flax hand these here).

Flax computes (flax/linen/recurrent.py and flax/nnx/nn/recurrent.py, SimpleCell.__call__)

    h' = activation_fn(x W_i + b_i + h W_h)       "input and recurrent layers are summed so
                                                     only one needs a bias": the input side's

which is (RNN 2) with Wx = W_i (D, H), Wh = W_h (H, H), b = b_i (H). The params, by API:

    linen SimpleCell   {i: {kernel (D, H), bias (H)}, h: {kernel (H, H)}}
    nnx SimpleCell     {dense_i: {kernel (D, H), bias (H)}, dense_h: {kernel (H, H)}}

(nnx's keys are those of nnx.OptimizedLSTMCell, with the bias on the other side, and of
nnx.GRUCell, whose recurrent kernel is (H, 3H): from_flax tells them apart by where the bias is
and by the recurrent kernel's width). activation_fn tanh (default) or jax.nn.relu is refnorm's
nonlinearity; any other, and residual=True (h' = φ(... + h): Wh + I, which a round trip could
not give back exactly), are refused. The carry is h itself. nnx.SimpleCell computes in its
`dtype`, float32 by default whatever its param_dtype: build it with dtype=jnp.float64 for a
float64 check. Precision and x64 mode as for the LSTM cells (flax_lstm.require_x64).
"""
from collections.abc import Mapping

from ..cells import RNN
from ._common import build_cell, expect_shape, nonlinearity_of, rnn_arrays
from .flax_gru import tree_api as gru_tree_api
from .flax_lstm import (_cast_to, _deliver, _leaf, _leaf_dtypes, _pure, _pure_dict, cell_api,
                        check_sizes, module_api)

# The param keys of a SimpleCell, by API: (input side, recurrent side); the bias is the input's.
SIMPLE_KEYS = {"linen": ("i", "h"), "nnx": ("dense_i", "dense_h")}


def simple_cell_api(obj):
    """"linen" or "nnx" for a Flax SimpleCell module (or a subclass), else None."""
    return cell_api(obj, "SimpleCell")


def tree_api(tree):
    """"linen" or "nnx" when `tree` (a params dict, {'params': ...} or an nnx.State) is a
    SimpleCell's: its keys, with the bias on the input side only, and not an nnx GRUCell's
    (the same keys, a recurrent kernel (H, 3H)); else None."""
    try:
        tree = _pure(tree)
    except ValueError:
        return None
    if gru_tree_api(tree) is not None:
        return None
    for api, (inp, rec) in SIMPLE_KEYS.items():
        if set(tree) == {inp, rec} and all(isinstance(tree[k], Mapping) for k in (inp, rec)) \
                and "bias" in tree[inp] and "bias" not in tree[rec]:
            return api
    return None


def is_simple_cell(source):
    """A Flax SimpleCell, or a SimpleCell's params: what from_flax hands to this module."""
    return simple_cell_api(source) is not None or (module_api(source) is None
                                                   and tree_api(source) is not None)


def cell_nonlinearity(module):
    """refnorm's nonlinearity of a SimpleCell module; ValueError for residual=True and for an
    activation_fn other than tanh and relu."""
    import jax
    import jax.numpy as jnp

    if getattr(module, "residual", False):
        raise ValueError("the Flax SimpleCell has residual=True (h' = φ(x W_i + b + h W_h + h)), "
                         "which refnorm refuses: its RNN has no residual term")
    fn = module.activation_fn
    for name, allowed in (("tanh", (jnp.tanh, jax.nn.tanh)), ("relu", (jax.nn.relu,))):
        if any(fn is ok for ok in allowed):
            return name
    shown = getattr(fn, "__name__", repr(fn))
    raise ValueError(f"the Flax SimpleCell has activation_fn={shown}, which refnorm refuses: its "
                     "RNN computes tanh or relu (jax.nn.relu)")


def cell_params(module, api):
    """A SimpleCell's params as a pure dict (copies nothing). A linen cell must be bound."""
    if api == "nnx":
        from flax import nnx
        return _pure_dict(nnx.state(module, nnx.Param))
    if module.scope is None:
        raise ValueError("a linen module holds no params until bound: pass "
                         "cell.bind({'params': params}) (from_flax also takes the params dict)")
    return module.variables["params"]


def _source_arrays(tree):
    """Wx (D, H), Wh (H, H), b (H) (float64 copies) and the API of a SimpleCell's params."""
    api = tree_api(tree)
    if api is None:
        raise ValueError(f"the params have keys {sorted(_pure(tree))}, not a Flax SimpleCell's "
                         "({i: {kernel, bias}, h: {kernel}} or {dense_i: {kernel, bias}, "
                         "dense_h: {kernel}})")
    tree = _pure(tree)
    inp, rec = SIMPLE_KEYS[api]
    wx, wh = _leaf(tree, inp, "kernel", 2), _leaf(tree, rec, "kernel", 2)
    b = _leaf(tree, inp, "bias", 1)
    H = wh.shape[0]
    expect_shape(wh, (H, H), f"{rec}/kernel (H, H)")
    expect_shape(wx, (wx.shape[0], H), f"{inp}/kernel (D, H)")
    expect_shape(b, (H,), f"{inp}/bias (H)")
    return wx, wh, b, api


def from_flax_simple_cell(source, dtype="float64", backend="numpy", *, nonlinearity=None):
    """refnorm.RNN holding a copy of a Flax SimpleCell's params: a bound linen SimpleCell, an nnx
    SimpleCell (their activation_fn is the nonlinearity; one given must agree), or the params
    alone (linen's dict, {'params': ...}, an nnx.State or its pure dict) with nonlinearity
    (default "tanh", Flax's). Wx = input kernel, Wh = recurrent kernel, b = the input's bias."""
    api = simple_cell_api(source)
    if api:
        own = cell_nonlinearity(source)
        if nonlinearity is not None and nonlinearity != own:
            raise ValueError(f"nonlinearity={nonlinearity!r}, but the module's activation_fn is "
                             f"{own!r}")
        nonlinearity, tree = own, cell_params(source, api)
    else:
        tree = source
    wx, wh, b, _ = _source_arrays(tree)
    if api == "linen" and source.features != wh.shape[0]:
        raise ValueError(f"the module has features={source.features}, its params H={wh.shape[0]}")
    return build_cell(RNN, wx.shape[0], wh.shape[0], {"Wx": wx, "Wh": wh, "b": b}, dtype=dtype,
                      backend=backend,
                      nonlinearity=nonlinearity_of(nonlinearity or "tanh", "from_flax",
                                                   "nonlinearity"))


def _tree_of(wx, wh, b, api, cast):
    inp, rec = SIMPLE_KEYS[api]
    return {inp: {"kernel": cast(wx, f"{inp}/kernel"), "bias": cast(b, f"{inp}/bias")},
            rec: {"kernel": cast(wh, f"{rec}/kernel")}}


def to_flax_simple_cell(cell, target=None):
    """A refnorm.RNN's weights for Flax. target:

    * None: a new linen params dict {i: {kernel, bias}, h: {kernel}} of JAX arrays in the cell's
      dtype (cell.apply({'params': p}, ...) of a linen SimpleCell);
    * a linen SimpleCell, bound or not: the same in its param_dtype (the module is not changed);
    * a SimpleCell's params dict (linen's or nnx's layout, or {'params': ...}): a new dict of
      that layout, each leaf in the dtype of the leaf it replaces;
    * an nnx SimpleCell: its Params overwritten in place (nnx.update) and the module returned.

    A module's activation_fn must be the cell's nonlinearity. A 64-bit result needs JAX's x64
    mode (flax_lstm.require_x64)."""
    p = rnn_arrays(cell, "to_flax")
    D, H = cell.input_size, cell.hidden_size
    api = simple_cell_api(target) if target is not None else None
    if target is not None and module_api(target) is not None and api is None:
        raise ValueError(f"a refnorm.RNN goes into a Flax SimpleCell, got "
                         f"{type(target).__name__}")
    if api and cell_nonlinearity(target) != cell.nonlinearity:
        raise ValueError(f"the module's activation_fn is {cell_nonlinearity(target)!r}, the "
                         f"cell's nonlinearity {cell.nonlinearity!r}")
    if api:
        check_sizes(target, api, D, H)
    if target is None or api == "linen":
        dtype = cell.dtype if target is None else target.param_dtype
        return _tree_of(p["Wx"], p["Wh"], p["b"], "linen", _cast_to(lambda path: dtype))
    old = _pure(cell_params(target, api) if api else target)
    old_wx, old_wh, _, layout = _source_arrays(old)
    if (old_wx.shape, old_wh.shape) != (p["Wx"].shape, p["Wh"].shape):
        raise ValueError(f"the target's kernels are (D, H) {old_wx.shape} and (H, H) "
                         f"{old_wh.shape}; the cell's {p['Wx'].shape} and {p['Wh'].shape}")
    tree = _tree_of(p["Wx"], p["Wh"], p["b"], layout, _cast_to(_leaf_dtypes(old).__getitem__))
    return _deliver(tree, target, api)
