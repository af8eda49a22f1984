"""Stacked and bidirectional networks of any refnorm cell, with normalisation between the layers
(derivations/stack.md, tags STACK 1-16).

    net = refnorm.Stack("ln_gru", D, H, num_layers=2, bidirectional=True, between="seq_bn")
    ys, states, cache = net.forward(x, lengths=lengths)    # ys (T, B, 2H); states (hT,) or (hT, cT)
    grads = net.backward(dys, cache)                         # every net.params name, "x", "h0" (, "c0")

Layer l, direction d (fwd, bwd) is a refnorm cell, `net.cells[l][d]`, running on the stack's
backend; its parameters are net.params["l{l}.{d}.<name>"] (the cell's own names), the flat dict
the stack reads at every forward. The reverse direction reads each sequence backwards within its
length (STACK 1), as PyTorch's packed sequences do, so a bidirectional stack needs each
sequence's valid steps to be a prefix (lengths, or a mask of that form). Between layer l and l + 1
(never after the last) an optional normalisation with gain and shift "l{l}.norm.gamma",
"l{l}.norm.beta" (dirs·H,):

    between="bn"       batch norm with statistics per time step over the valid rows   (STACK 5)
    between="seq_bn"   batch norm over every valid (t, b) frame: Keras's BatchNormalization
                       on a masked sequence output                                   (STACK 6)
    between="ln"       layer norm of each (t, b) over its features                    (STACK 7)
    between=None       nothing                                                         (STACK 8)

then inverted dropout with probability `dropout` in training (STACK 9), its mask drawn from the
stack's own generator (from `seed`) and kept in the cache. Padded positions leave a norm as 0.
Population statistics of the between-layer batch norms are `net.stats["l{l}.norm.mean" | ".var"]`
(per step for "bn", (slots, F), step t reading slot min(t, slots - 1); (F,) for "seq_bn"), the
biased variance, updated by (BN 13) with `norm_momentum`; a BN cell's own statistics appear
there as "l{l}.{d}.mean_x", ... (they live in the cell).

The cells run on `backend`; the reversal, the between-layer norms (the book's primitives,
refnorm.numpy_ref.norms) and dropout run in NumPy on every backend: O(T·B·H) work beside the
cells' O(T·B·H²).
"""
import dataclasses
import numbers

import numpy as np

from . import _checks, backends
from .cells.base import _PerStepBatchNormCell
from .config import DEFAULT_EPS, STACK_NORM_MOMENTUM
from .numpy_ref.norms import (batchnorm_backward, batchnorm_forward, layernorm_backward,
                              layernorm_forward)

BETWEEN = (None, "bn", "seq_bn", "ln")
DIRECTIONS = ("fwd", "bwd")


def prefix_lengths(m):
    """Each sequence's length ℓ_b from a (T, B) 0/1 mask whose valid steps are a prefix;
    ValueError for a mask with a hole (a valid step after a padded one)."""
    if np.any(m[1:] > m[:-1]):
        raise ValueError("a bidirectional Stack needs each sequence's valid steps to be a "
                         "prefix (pass lengths, or a mask of that form): the reverse direction "
                         "reads each sequence backwards within its length")
    return m.sum(axis=0).astype(np.int64)


def reverse_within(a, lengths):
    """(STACK 1): a (T, B, ...) with each sequence b's first lengths[b] steps in reverse order and
    its padded tail in place; a new array. Its own inverse and its own transpose."""
    T, B = a.shape[:2]
    t = np.arange(T)[:, None]
    n = np.asarray(lengths)[None, :]
    idx = np.where(t < n, n - 1 - t, t)                                       # (T, B)
    return a[idx, np.arange(B)[None, :]]


@dataclasses.dataclass
class StackCache:
    x: np.ndarray           # (T, B, D) the input
    mask: np.ndarray        # (T, B) 0/1
    lengths: object         # (B,) for a bidirectional stack, else None
    cells: list             # [layer][direction]: each cell's cache
    norms: list             # [layer < L-1]: the between-layer norm's cache (dict) or None
    dropout: list           # [layer < L-1]: (T, B, F) the factor ξ / (1 - p), or None
    params: dict            # copies of the norm parameters the forward used
    training: bool
    between: object         # the between kind (a cache of another kind is refused)
    eps: float              # the norms' eps the forward used


class Stack:
    """num_layers layers of `cell` (a refnorm cell class or its name, "lstm", "ln_gru", ...), one
    or two directions, with an optional normalisation `between` the layers and dropout. See the
    module docstring; cell_options go to every cell (e.g. reset="before", nonlinearity="relu",
    eps=...). norm_eps and norm_momentum are the between-layer norms'."""

    def __init__(self, cell, input_size, hidden_size, *, num_layers=1, bidirectional=False,
                 between=None, dropout=0.0, seed=None, dtype="float64", backend="numpy",
                 norm_eps=DEFAULT_EPS, norm_momentum=STACK_NORM_MOMENTUM, **cell_options):
        from . import CELLS
        if isinstance(cell, str):
            if cell not in CELLS:
                raise ValueError(f"cell must be one of {sorted(CELLS)} or their classes, "
                                 f"got {cell!r}")
            cls = CELLS[cell]
        elif isinstance(cell, type) and cell in CELLS.values():
            cls = cell
        else:
            raise ValueError(f"cell must be a refnorm cell class or one of {sorted(CELLS)}, "
                             f"got {cell!r}")
        self.cell_class = cls
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.hidden_size = _checks.positive_int(hidden_size, "hidden_size")
        self.num_layers = _checks.positive_int(num_layers, "num_layers")
        self.bidirectional = _checks.flag(bidirectional, "bidirectional")
        if between == "None":
            raise ValueError("between must be None (the object), 'bn', 'seq_bn' or 'ln', got "
                             "the string 'None'")
        if between not in BETWEEN:
            raise ValueError(f"between must be None, 'bn', 'seq_bn' or 'ln', got {between!r}")
        self.between = between
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.norm_eps = _checks.nonnegative_float(norm_eps, "norm_eps")
        self.norm_momentum = _checks.unit_interval(norm_momentum, "norm_momentum")
        self.dtype = _checks.dtype(dtype)
        backends.get(backend)
        self.backend = backend
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
        self.directions = DIRECTIONS[:2 if self.bidirectional else 1]
        if self.between == "ln" and self.num_layers > 1 \
                and self.hidden_size * len(self.directions) == 1:
            raise ValueError("between='ln' needs a layer output of at least 2 features (hidden_"
                             "size >= 2, or bidirectional): a layer norm over one feature is 0 "
                             "whatever its input")
        streams = np.random.SeedSequence(seed).spawn(self.num_layers * len(self.directions) + 1)
        self._dropout_rng = np.random.default_rng(streams[-1])
        H, F = self.hidden_size, self.hidden_size * len(self.directions)
        self.cells = []
        for layer in range(self.num_layers):
            seeds = streams[layer * len(self.directions):(layer + 1) * len(self.directions)]
            self.cells.append([cls(self.input_size if layer == 0 else F, H,
                                   seed=int(s.generate_state(1, np.uint32)[0]), dtype=dtype,
                                   backend=backend, **cell_options) for s in seeds])
        self.params = {}
        for layer, d, c in self._each_cell():
            self.params.update({f"l{layer}.{d}.{name}": value for name, value in c.params.items()})
        self._norm_stats = {}
        if self.between is not None:
            for layer in range(self.num_layers - 1):
                self.params[f"l{layer}.norm.gamma"] = np.ones(F, dtype=self.dtype)
                self.params[f"l{layer}.norm.beta"] = np.zeros(F, dtype=self.dtype)
                if self.between in ("bn", "seq_bn"):
                    shape = (0, F) if self.between == "bn" else (F,)
                    self._norm_stats[layer] = {"mean": np.zeros(shape, dtype=self.dtype),
                                               "var": np.ones(shape, dtype=self.dtype)}

    # -- names, parameters, statistics --------------------------------------------------------
    @property
    def STATES(self):
        return self.cell_class.STATES

    @property
    def output_size(self):
        return self.hidden_size * len(self.directions)

    def _each_cell(self):
        for layer, row in enumerate(self.cells):
            for d, c in zip(self.directions, row):
                yield layer, d, c

    def _param_shapes(self):
        shapes = {f"l{layer}.{d}.{name}": shape for layer, d, c in self._each_cell()
                  for name, shape in c._param_shapes().items()}
        if self.between is not None:
            for layer in range(self.num_layers - 1):
                for name in ("gamma", "beta"):
                    shapes[f"l{layer}.norm.{name}"] = (self.output_size,)
        return shapes

    def load_params(self):
        """Check net.params (names, shapes, dtype, finite) and hand each cell its own arrays
        (net.cells[l][d].params); forward does this first, so edits of net.params take effect."""
        shapes = self._param_shapes()
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a dict of arrays, got {type(self.params).__name__}")
        if set(self.params) != set(shapes):
            extra, lacking = sorted(set(self.params) - set(shapes)), sorted(set(shapes)
                                                                              - set(self.params))
            raise ValueError(f"params must have exactly the stack's names: unknown {extra}, "
                             f"missing {lacking}")
        for name, shape in shapes.items():
            _checks.float_array(self.params[name], f"params[{name!r}]", shape, self.dtype)
        for layer, d, c in self._each_cell():
            c.params = {name: self.params[f"l{layer}.{d}.{name}"] for name in c._param_shapes()}

    @property
    def stats(self):
        """Population statistics by name: the between-layer batch norms' ("l0.norm.mean", ...)
        and the BN cells' own ("l0.fwd.mean_x", ...). The arrays are the ones used: write into
        them to change them."""
        out = {}
        for layer, d, c in self._each_cell():
            out.update({f"l{layer}.{d}.{k}": v for k, v in getattr(c, "stats", {}).items()})
        for layer, s in self._norm_stats.items():
            out.update({f"l{layer}.norm.{k}": v for k, v in s.items()})
        return out

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x, h0=None, c0=None, mask=None, training=True, *, lengths=None,
                update_stats=None):
        """Run the stack over a sequence: x (T, B, D); h0 (and c0 for LSTM cells) (L·dirs, B, H)
        or None for zeros, row l·dirs + d for layer l, direction d; mask (T, B) or lengths (B,)
        as for a cell. training and update_stats as for the cells, for the BN cells and the
        between-layer batch norms alike; dropout acts in training only. A batch of one row is
        refused in training where a per-step batch norm would take its statistics from it
        (between="bn" with two layers or more, or a per-step BN cell).

        Returns ys (T, B, dirs·H), states: (hT,) or (hT, cT) each (L·dirs, B, H), cache. Nothing
        passed in is modified; an error leaves the stack's statistics as they were."""
        self.load_params()
        D, H, L, dirs = self.input_size, self.hidden_size, self.num_layers, len(self.directions)
        x = _checks.float_array(x, "x", (None, None, D), self.dtype)
        T, B, _ = x.shape
        if c0 is not None and "c" not in self.STATES:
            raise ValueError(f"c0 is given but a {self.cell_class.__name__} has no cell state")
        initial = [None if v is None else
                   _checks.float_array(v, f"{s}0", (L * dirs, B, H), self.dtype)
                   for s, v in zip(self.STATES, (h0, c0))]
        m = _checks.mask_array(mask, lengths, T, B, self.dtype)
        n = prefix_lengths(m) if self.bidirectional else None
        if not isinstance(training, (bool, np.bool_)):
            raise ValueError(f"training must be True or False, got {training!r}")
        training = bool(training)
        update_stats = training if update_stats is None else update_stats
        if not isinstance(update_stats, (bool, np.bool_)):
            raise ValueError(f"update_stats must be None, True or False, got {update_stats!r}")
        if update_stats and not training:
            raise ValueError("update_stats=True needs training=True: population statistics "
                             "are only estimated from training passes")
        if training and B == 1 and self.between == "bn" and L > 1:
            raise ValueError("between='bn' in training needs a batch of at least 2 rows: batch "
                             "statistics of batch size 1 are meaningless (use training=False, "
                             "or between='seq_bn' or 'ln')")
        if training and B == 1 and issubclass(self.cell_class, _PerStepBatchNormCell):
            raise ValueError(f"{self.cell_class.__name__} in training needs a batch of at least "
                             "2 rows: batch statistics of batch size 1 are meaningless (use "
                             "training=False, or a sequence-wise or layer-normalised cell)")
        if self.between == "bn" and not training and self._norm_stats \
                and self._norm_stats[0]["mean"].shape[0] == 0:
            raise ValueError("training=False needs population statistics of the between-layer "
                             "batch norms, but this Stack has none yet: train it first")
        if update_stats:            # before any work: a refusal leaves nothing half updated
            for _, _, c in self._each_cell():
                if hasattr(c, "_slots_of"):
                    c._ensure_slots(int(c._slots_of(T - 1)) + 1)

        u, finals = x, [np.zeros((L * dirs, B, H), dtype=self.dtype) for _ in self.STATES]
        cell_caches, norm_caches, drops = [], [], []
        norm_params = {k: v.copy() for k, v in self.params.items() if ".norm." in k}
        for layer in range(L):
            outs, caches = [], []
            for k, (d, c) in enumerate(zip(self.directions, self.cells[layer])):
                start = [None if v is None else v[layer * dirs + k] for v in initial]
                inp = u if d == "fwd" else reverse_within(u, n)                 # (STACK 3)
                y, fin, cache = c._run_forward(inp, start, m, training, None, 0, False)
                outs.append(y if d == "fwd" else reverse_within(y, n))         # (STACK 2), (STACK 3)
                caches.append(cache)
                for s, value in enumerate(fin):
                    finals[s][layer * dirs + k] = value
            cell_caches.append(caches)
            o = np.concatenate(outs, axis=-1)                                   # (STACK 4)
            if layer == L - 1:
                break                                   # ys = o of the last layer (STACK 10)
            v, ncache = self._norm_forward(layer, o, m, norm_params, training)
            norm_caches.append(ncache)
            keep = None
            if training and self.dropout > 0:                                   # (STACK 9)
                xi = self._dropout_rng.random(v.shape) >= self.dropout
                keep = (xi / (1.0 - self.dropout)).astype(self.dtype)
                v = v * keep
            drops.append(keep)
            u = v
        if update_stats:
            for layer, row in enumerate(self.cells):
                for c, cache in zip(row, cell_caches[layer]):
                    if hasattr(c, "_record"):
                        c._record(cache, 0)
            for layer, ncache in enumerate(norm_caches):
                self._record(layer, ncache)
        cache = StackCache(x=x.copy(), mask=m, lengths=n, cells=cell_caches, norms=norm_caches,
                           dropout=drops, params=norm_params, training=training,
                           between=self.between, eps=self.norm_eps)
        return o, tuple(finals), cache

    def _norm_forward(self, layer, o, m, params, training):
        """(STACK 5)-(STACK 8): v (T, B, F) and what the backward needs."""
        if self.between is None:
            return o, None                                                      # (STACK 8)
        T, B, F = o.shape
        gamma, beta = params[f"l{layer}.norm.gamma"], params[f"l{layer}.norm.beta"]
        eps = self.norm_eps
        if self.between == "ln":                                                # (STACK 7)
            y, zhat, _, var = layernorm_forward(o.reshape(T * B, F), gamma, beta, eps)
            return (m[..., None] * y.reshape(T, B, F),
                    {"zhat": zhat, "var": var})
        if self.between == "seq_bn":                                            # (STACK 6)
            pop = None
            if not training:
                s = self._norm_stats[layer]
                pop = (s["mean"].copy(), s["var"].copy())
            y, zhat, mean, var = batchnorm_forward(o.reshape(T * B, F), m.reshape(-1), gamma,
                                                   beta, eps, pop)
            return (m[..., None] * y.reshape(T, B, F),
                    {"zhat": zhat, "var": var, "mean": mean, "count": m.sum()})
        y, zhat = np.empty_like(o), np.empty_like(o)                            # (STACK 5)
        mean, var = np.empty((T, F), dtype=o.dtype), np.empty((T, F), dtype=o.dtype)
        s = self._norm_stats[layer]
        for t in range(T):
            pop = None
            if not training:
                slot = min(t, s["mean"].shape[0] - 1)                           # (BN-LSTM 5)
                pop = (s["mean"][slot].copy(), s["var"][slot].copy())
            y[t], zhat[t], mean[t], var[t] = batchnorm_forward(o[t], m[t], gamma, beta, eps, pop)
        return m[..., None] * y, {"zhat": zhat, "var": var, "mean": mean,
                                  "count": m.sum(axis=1)}

    def _record(self, layer, ncache):
        """(BN 13) for the between-layer batch norms, from slots with at least two valid rows."""
        if self.between not in ("bn", "seq_bn"):
            return
        a, s = self.norm_momentum, self._norm_stats[layer]
        if self.between == "seq_bn":
            if ncache["count"] >= 2:
                s["mean"][...] = (1 - a) * s["mean"] + a * ncache["mean"]
                s["var"][...] = (1 - a) * s["var"] + a * ncache["var"]
            return
        T = ncache["count"].shape[0]
        if s["mean"].shape[0] < T:                               # new slots: mean 0, var 1
            grown = {"mean": np.zeros((T, self.output_size), dtype=self.dtype),
                     "var": np.ones((T, self.output_size), dtype=self.dtype)}
            for key in grown:
                grown[key][:s[key].shape[0]] = s[key]
                s[key] = grown[key]
        for t in np.flatnonzero(ncache["count"] >= 2):
            s["mean"][t] = (1 - a) * s["mean"][t] + a * ncache["mean"][t]
            s["var"][t] = (1 - a) * s["var"][t] + a * ncache["var"][t]

    # -- backward -------------------------------------------------------------------------------
    def backward(self, dys, cache, dhT=None, dcT=None):
        """Gradients of L = Σ dys⊙ys + Σ dhT⊙hT (+ Σ dcT⊙cT) for the forward that made `cache`
        (STACK 11)-(STACK 16): a dict with every name of net.params, "x" and "h0" (and "c0").
        dhT, dcT (L·dirs, B, H) or None for zeros."""
        if not isinstance(cache, StackCache):
            raise ValueError(f"cache must be the cache returned by this Stack's forward, got "
                             f"{type(cache).__name__}")
        H, L, dirs = self.hidden_size, self.num_layers, len(self.directions)
        if len(cache.cells) != L or len(cache.cells[0]) != dirs or cache.x.dtype != self.dtype \
                or cache.x.shape[2] != self.input_size or cache.cells[0][0].h.shape[2] != H \
                or not isinstance(cache.cells[0][0], self.cell_class.cache_class):
            raise ValueError(f"cache was made by a Stack of another shape, cell or dtype, not by "
                             f"this {self!r}")
        if cache.between != self.between:
            raise ValueError(f"cache was made by a Stack with between={cache.between!r}, not by "
                             f"this one (between={self.between!r})")
        T, B, _ = cache.x.shape
        dys = _checks.float_array(dys, "dys", (T, B, dirs * H), self.dtype)
        if dcT is not None and "c" not in self.STATES:
            raise ValueError(f"dcT is given but a {self.cell_class.__name__} has no cell state")
        upstream = [None if g is None else
                    _checks.float_array(g, f"d{s}T", (L * dirs, B, H), self.dtype)
                    for s, g in zip(self.STATES, (dhT, dcT))]
        n = cache.lengths
        grads = {}
        initial = [np.zeros((L * dirs, B, H), dtype=self.dtype) for _ in self.STATES]
        do = dys
        for layer in reversed(range(L)):
            du = 0
            for k, (d, c) in enumerate(zip(self.directions, self.cells[layer])):
                dy = do[..., k * H:(k + 1) * H]                                 # (STACK 11)
                if d == "bwd":
                    dy = reverse_within(dy, n)                                  # (STACK 13)
                finals = [None if g is None else g[layer * dirs + k] for g in upstream]
                g = c._run_backward(np.ascontiguousarray(dy), cache.cells[layer][k], finals,
                                    False)                                      # (STACK 12)
                dx = g.pop("x")
                du = du + (dx if d == "fwd" else reverse_within(dx, n))         # (STACK 13), (STACK 14)
                for s, name in enumerate(self.STATES):
                    initial[s][layer * dirs + k] = g.pop(name + "0")
                grads.update({f"l{layer}.{d}.{name}": value for name, value in g.items()})
            if layer == 0:
                grads["x"] = du
                break
            keep = cache.dropout[layer - 1]
            dv = du if keep is None else du * keep                              # (STACK 15)
            do = self._norm_backward(layer - 1, dv, cache, grads)
        for s, name in enumerate(self.STATES):
            grads[name + "0"] = initial[s]
        return grads

    def _norm_backward(self, layer, dv, cache, grads):
        """(STACK 16): do of the layer below, and the gain and shift gradients into grads."""
        if self.between is None:
            return dv
        T, B, F = dv.shape
        m, nc = cache.mask, cache.norms[layer]
        gamma = cache.params[f"l{layer}.norm.gamma"]
        dy = m[..., None] * dv
        if self.between == "ln":
            dz, dgamma, dbeta = layernorm_backward(dy.reshape(T * B, F), nc["zhat"], nc["var"],
                                                   gamma, cache.eps)
            dz = dz.reshape(T, B, F)
        elif self.between == "seq_bn":
            dz, dgamma, dbeta = batchnorm_backward(dy.reshape(T * B, F), nc["zhat"], nc["var"],
                                                   m.reshape(-1), gamma, cache.eps,
                                                   cache.training)
            dz = dz.reshape(T, B, F)
        else:
            dz, dgamma, dbeta = np.empty_like(dv), 0, 0
            for t in range(T):
                dz[t], dg, db = batchnorm_backward(dy[t], nc["zhat"][t], nc["var"][t], m[t],
                                                   gamma, cache.eps, cache.training)
                dgamma, dbeta = dgamma + dg, dbeta + db
        grads[f"l{layer}.norm.gamma"] = dgamma
        grads[f"l{layer}.norm.beta"] = dbeta
        return dz

    def __repr__(self):
        return (f"Stack({self.cell_class.stem!r}, {self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"between={self.between!r}, dropout={self.dropout}, dtype={self.dtype.name!r}, "
                f"backend={self.backend!r})")
