"""Flax (JAX) GRUCell <-> refnorm.GRU: flax.linen.GRUCell and flax.nnx.GRUCell (interop.from_flax
and to_flax hand these here).

Flax computes (flax/linen/recurrent.py and flax/nnx/nn/recurrent.py, GRUCell.__call__)

    r = gate_fn(x W_ir + b_ir + h W_hr)                      gate_fn sigmoid (default)
    z = gate_fn(x W_iz + b_iz + h W_hz)
    n = activation_fn(x W_in + b_in + r * (h W_hn + b_hn))   activation_fn tanh (default)
    h' = (1 - z) * n + z * h

which is refnorm.GRU with reset="after", (GRU 1)-(GRU 5): Wx = [W_ir | W_iz | W_in] (D, 3H),
Wh = [W_hr | W_hz | W_hn] (H, 3H), b = [b_ir | b_iz | b_in] (3H) and b_hn (H), gate blocks
r, z, n: refnorm's order (FLAX_ORDER), no permutation. The params, by API:

    linen GRUCell   {ir, iz, in: {kernel (D, H), bias (H)}, hr, hz: {kernel (H, H)},
                     hn: {kernel (H, H), bias (H)}}
    nnx GRUCell     {dense_i: {kernel (D, 3H), bias (3H)}, dense_h: {kernel (H, 3H)}}, r, z, n

nnx's recurrent layer has no bias (dense_h, use_bias=False): its candidate is
activation_fn(x W_in + b_in + r * h W_hn), the GRU with b_hn = 0. from_flax gives b_hn = 0;
to_flax refuses a cell whose b_hn is not zero (inside r ⊙ (...) it cannot fold into b_in);
refnorm.validate leaves db_hn out for an nnx GRUCell, and its report's header says why
(NNX_NO_B_HN).

nnx's keys are those of nnx.SimpleCell (dense_h (H, H)) and nnx.OptimizedLSTMCell (dense_h
(H, 4H) with the bias): the recurrent kernel's width, 3H, and the bias on the input side tell
the GRUCell apart.

Refused: gate_fn other than sigmoid, activation_fn other than tanh (flax_lstm.check_activations),
and a refnorm.GRU with reset="before" (Flax computes the reset after). The carry is h itself.
Precision and x64 mode as for the LSTM cells (flax_lstm.require_x64).
"""
from collections.abc import Mapping

import numpy as np

from ..cells import GRU
from ._common import build_cell, expect_shape, gru_arrays, gru_blocks
from .flax_lstm import (_cast_to, _deliver, _leaf, _leaf_dtypes, _pure, cell_api,
                        check_activations, check_sizes, module_api, module_params)

FLAX_ORDER = "rzn"          # linen ir/hr, iz/hz, in/hn; nnx: jnp.split(..., 3): r, z, n

# linen's per-gate params, in Flax's block order; nnx's fused ones (the bias on the input side)
LINEN_KEYS = {"x": ("ir", "iz", "in"), "h": ("hr", "hz", "hn")}
NNX_KEYS = ("dense_i", "dense_h")

NNX_NO_B_HN = ("flax.nnx.GRUCell has no b_hn: its recurrent layer has no bias (n = tanh(x W_in "
               "+ b_in + r ⊙ h W_hn))")


def gru_cell_api(obj):
    """"linen" or "nnx" for a Flax GRUCell module (or a subclass), else None."""
    return cell_api(obj, "GRUCell")


def tree_api(tree):
    """"linen" or "nnx" when `tree` (a params dict, {'params': ...} or an nnx.State) is a
    GRUCell's: linen's six keys, or nnx's dense_i, dense_h with a recurrent kernel (H, 3H) and
    no recurrent bias; else None."""
    try:
        tree = _pure(tree)
    except ValueError:
        return None
    if set(tree) == set(LINEN_KEYS["x"] + LINEN_KEYS["h"]):
        return "linen"
    if set(tree) != set(NNX_KEYS) or not all(isinstance(tree[k], Mapping) for k in NNX_KEYS):
        return None
    shape = np.shape(tree["dense_h"].get("kernel"))
    wide = len(shape) == 2 and shape[0] > 0 and shape[1] == 3 * shape[0]
    return "nnx" if wide and "bias" not in tree["dense_h"] else None


def is_gru(source):
    """A Flax GRUCell, or a GRUCell's params: what from_flax hands to this module."""
    return gru_cell_api(source) is not None or (module_api(source) is None
                                                and tree_api(source) is not None)


def cell_params(module, api):
    """A GRUCell's params as a pure dict (copies nothing), after checking its gate_fn and
    activation_fn. A linen cell must be bound."""
    return module_params(module, api, family="GRU")


def absent_grads(module):
    """{gradient: why} of the parameters refnorm.GRU has and the module has not: db_hn for an nnx
    GRUCell (NNX_NO_B_HN), nothing for a linen one. refnorm.validate leaves these out."""
    why = f"{NNX_NO_B_HN}; refnorm's b_hn is held at zero"
    return {"db_hn": why} if gru_cell_api(module) == "nnx" else {}


def _source_arrays(tree):
    """Wx (D, 3H), Wh (H, 3H), b (3H) in Flax's block order, b_hn (H) (zeros for nnx), float64
    copies, and the API of a GRUCell's params."""
    api = tree_api(tree)
    if api is None:
        raise ValueError(f"the params have keys {sorted(_pure(tree))}, not a Flax GRUCell's "
                         "({ir, iz, in: {kernel, bias}, hr, hz: {kernel}, hn: {kernel, bias}} "
                         "or {dense_i: {kernel, bias}, dense_h: {kernel}} with dense_h/kernel "
                         "(H, 3H))")
    tree = _pure(tree)
    if api == "nnx":
        wx, wh = _leaf(tree, "dense_i", "kernel", 2), _leaf(tree, "dense_h", "kernel", 2)
        b, H = _leaf(tree, "dense_i", "bias", 1), wh.shape[0]
        expect_shape(wx, (wx.shape[0], 3 * H), "dense_i/kernel (D, 3H)")
        expect_shape(b, (3 * H,), "dense_i/bias (3H)")
        return wx, wh, b, np.zeros(H), api
    kx, kh = ([_leaf(tree, k, "kernel", 2) for k in LINEN_KEYS[side]] for side in "xh")
    bx = [_leaf(tree, k, "bias", 1) for k in LINEN_KEYS["x"]]
    D, H = kx[0].shape[0], kh[0].shape[0]
    for key, kernel, bias in zip(LINEN_KEYS["x"], kx, bx):
        expect_shape(kernel, (D, H), f"{key}/kernel (D, H)")
        expect_shape(bias, (H,), f"{key}/bias (H)")
    for key, kernel in zip(LINEN_KEYS["h"], kh):
        expect_shape(kernel, (H, H), f"{key}/kernel (H, H)")
    b_hn = expect_shape(_leaf(tree, "hn", "bias", 1), (H,), "hn/bias (H)")
    return np.concatenate(kx, axis=1), np.concatenate(kh, axis=1), np.concatenate(bx), b_hn, api


def _tree_of(wx, wh, b, b_hn, api, cast):
    """A new params dict of `api`'s layout from Flax-order arrays; cast(array, path) makes each
    leaf. nnx's has no b_hn (the caller has refused a non-zero one)."""
    if api == "nnx":
        return {"dense_i": {"kernel": cast(wx, "dense_i/kernel"), "bias": cast(b, "dense_i/bias")},
                "dense_h": {"kernel": cast(wh, "dense_h/kernel")}}
    split = lambda a: np.split(a, 3, axis=-1)                                  # noqa: E731
    tree = {k: {"kernel": cast(w, f"{k}/kernel"), "bias": cast(bk, f"{k}/bias")}
            for k, w, bk in zip(LINEN_KEYS["x"], split(wx), split(b))}
    tree.update({k: {"kernel": cast(w, f"{k}/kernel")}
                 for k, w in zip(LINEN_KEYS["h"], split(wh))})
    tree["hn"]["bias"] = cast(b_hn, "hn/bias")
    return tree


def from_flax_gru(source, dtype="float64", backend="numpy"):
    """refnorm.GRU (reset="after") holding a copy of a Flax GRUCell's params: a bound linen
    GRUCell, an nnx GRUCell, or the params alone (linen's dict, {'params': ...}, an nnx.State or
    its pure dict). Wx, Wh = the input and recurrent kernels, b = the input biases, b_hn = linen's
    hn/bias (0 for nnx, which has none). ValueError for an unbound linen module, gate_fn or
    activation_fn other than sigmoid and tanh, other keys or shapes."""
    api = gru_cell_api(source)
    wx, wh, b, b_hn, _ = _source_arrays(cell_params(source, api) if api else source)
    D, H = wx.shape[0], wh.shape[0]
    if api == "linen" and source.features != H:
        raise ValueError(f"the module has features={source.features}, its params H={H}")
    params = {"Wx": gru_blocks(wx, FLAX_ORDER), "Wh": gru_blocks(wh, FLAX_ORDER),
              "b": gru_blocks(b, FLAX_ORDER), "b_hn": b_hn}
    return build_cell(GRU, D, H, params, dtype=dtype, backend=backend, reset="after")


def to_flax_gru(cell, target=None):
    """A refnorm.GRU's weights (reset="after") for Flax. target:

    * None: a new linen params dict {ir, iz, in: {kernel, bias}, hr, hz: {kernel},
      hn: {kernel, bias}} of JAX arrays in the cell's dtype (cell.apply({'params': p}, ...) of a
      linen GRUCell);
    * a linen GRUCell, bound or not: the same in its param_dtype (the module is not changed);
    * a GRUCell's params dict (linen's or nnx's layout, or {'params': ...}): a new dict of that
      layout, each leaf in the dtype of the leaf it replaces;
    * an nnx GRUCell: its Params overwritten in place (nnx.update) and the module returned.

    nnx's layout takes only a cell whose b_hn is zero (NNX_NO_B_HN). A module's gate_fn and
    activation_fn must be sigmoid and tanh. A 64-bit result needs JAX's x64 mode
    (flax_lstm.require_x64)."""
    p = gru_arrays(cell, "to_flax")
    wx, wh, b = (gru_blocks(p[k], FLAX_ORDER, to_refnorm=False) for k in ("Wx", "Wh", "b"))
    D, H = cell.input_size, cell.hidden_size
    api = gru_cell_api(target) if target is not None else None
    if target is not None and module_api(target) is not None and api is None:
        raise ValueError(f"a refnorm.GRU goes into a Flax GRUCell, got {type(target).__name__}")
    if api:
        check_sizes(target, api, D, H)
    if target is None or api == "linen":
        if api:
            check_activations(target, "GRU")
        dtype = cell.dtype if target is None else target.param_dtype
        return _tree_of(wx, wh, b, p["b_hn"], "linen", _cast_to(lambda path: dtype))
    old = _pure(cell_params(target, api) if api else target)
    old_wx, old_wh, _, _, layout = _source_arrays(old)
    if (old_wx.shape, old_wh.shape) != (wx.shape, wh.shape):
        raise ValueError(f"the target's kernels are (D, 3H) {old_wx.shape} and (H, 3H) "
                         f"{old_wh.shape}; the cell's {wx.shape} and {wh.shape}")
    if layout == "nnx" and np.any(p["b_hn"] != 0):
        raise ValueError(f"to_flax: the cell's b_hn is not zero, and {NNX_NO_B_HN}: inside "
                         "r ⊙ (...) it cannot fold into b_in (a linen GRUCell holds it: hn/bias)")
    tree = _tree_of(wx, wh, b, p["b_hn"], layout, _cast_to(_leaf_dtypes(old).__getitem__))
    return _deliver(tree, target, api)
