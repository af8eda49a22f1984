"""What every cell shares: argument checks, parameter initialisation, dispatch to a backend, and
the population statistics of the batch-normalised cells. The families' modules (lstm.py,
rnn.py) hold the cells themselves; the math lives in the backends (refnorm.numpy_ref, the
book, by default).

A cell is described by four class attributes and two methods:
    stem          the backend functions <stem>_forward / <stem>_backward, and the
                  derivations/<stem>.md it implements
    cache_class   the cache dataclass of refnorm.numpy_ref.<stem>, returned by every backend
    STATES        the recurrent states, ("h",) or ("h", "c"): forward takes h0 (c0), returns
                  hT ((hT, cT)); backward takes dhT (dcT) and returns "h0" ("c0")
    _param_shapes, _init_params   the parameters, names and shapes
    _options      the keyword options its backend functions take (nonlinearity, eps, ...)

The backend functions all read
    <stem>_forward(x, *initial_states, mask, params, **options) -> (hs, *final_states, cache)
    <stem>_backward(dhs, *final_state_grads, cache, state_grads) -> grads
"""
import numbers

import numpy as np

from .. import _checks, backends
from ..config import DEFAULT_EPS, SEQ_BN_GAMMA_INIT, SEQ_BN_LSTM_MOMENTUM


def uniform_init(rng, shape, hidden_size):
    """PyTorch's default recurrent-layer init: U(-1/sqrt(H), 1/sqrt(H))."""
    k = 1.0 / np.sqrt(hidden_size)
    return rng.uniform(-k, k, size=shape)


def orthogonal_init(rng, shape):
    """A (rows, cols) matrix with orthonormal columns (rows >= cols) or rows (rows < cols),
    from the QR decomposition of a Gaussian matrix (sign-corrected so it is uniformly drawn)."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


class _Cell:
    """Shared machinery. The families' base classes (lstm._LSTMCell, _OneStateCell below) write
    forward and backward with their own arguments and call _run_forward / _run_backward."""

    stem = None
    cache_class = None
    STATES = ("h",)

    def __init__(self, input_size, hidden_size, *, seed=None, dtype="float64", backend="numpy"):
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.hidden_size = _checks.positive_int(hidden_size, "hidden_size")
        self.dtype = _checks.dtype(dtype)
        backends.get(backend)                    # ValueError now for an unknown name
        self.backend = backend
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(seed)
        self.params = {name: np.ascontiguousarray(value, dtype=self.dtype)
                       for name, value in self._init_params(rng).items()}

    @property
    def _impl(self):
        """The backend module (looked up by name, so cells stay picklable and copyable)."""
        return backends.get(self.backend)

    # -- parameters -------------------------------------------------------------------------
    def _param_shapes(self):
        raise NotImplementedError

    def _init_params(self, rng):
        raise NotImplementedError

    def _check_params(self):
        """cell.params may be edited by the user: check names, shapes, dtype and values."""
        shapes = self._param_shapes()
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a dict of arrays, got {type(self.params).__name__}")
        if set(self.params) != set(shapes):
            raise ValueError(f"params must have exactly the keys {sorted(shapes)}, "
                             f"got {sorted(self.params)}")
        for name, shape in shapes.items():
            _checks.float_array(self.params[name], f"params[{name!r}]", shape, self.dtype)

    def _run_params(self):
        """The parameters the equations run with: copies (the cache keeps them)."""
        return {name: value.copy() for name, value in self.params.items()}

    def _unfold_grads(self, grads):
        """Backward of _run_params (the identity unless a family folds parameters)."""
        return grads

    def _run_param_names(self):
        """The names of the parameters the equations run with: the keys of a cache's params
        (all of cell.params unless a family folds some into others)."""
        return set(self._param_shapes())

    def _options(self):
        """Keyword options of the backend functions <stem>_forward."""
        return {}

    # -- forward / backward -----------------------------------------------------------------
    def _run_forward(self, x, initial, mask, training, lengths, t0, update_stats):
        """The checks and the dispatch of every family's forward. initial: one array or None
        per state of STATES. Returns hs, [final states], cache. Nothing passed in is modified."""
        self._check_params()
        x = _checks.float_array(x, "x", (None, None, self.input_size), self.dtype)
        T, B, _ = x.shape
        states = [self._state(value, name + "0", B) for name, value in zip(self.STATES, initial)]
        m = _checks.mask_array(mask, lengths, T, B, self.dtype)
        if not isinstance(training, (bool, np.bool_)):
            raise ValueError(f"training must be True or False, got {training!r}")
        if isinstance(t0, bool) or not isinstance(t0, numbers.Integral) or t0 < 0:
            raise ValueError(f"t0 must be a non-negative integer, got {t0!r}")
        if update_stats is None:
            update_stats = training
        if not isinstance(update_stats, (bool, np.bool_)):
            raise ValueError(f"update_stats must be None, True or False, got {update_stats!r}")
        if update_stats and not training:
            raise ValueError("update_stats=True needs training=True: population statistics "
                             "are only estimated from training passes")
        out = self._forward(x.copy(), states, m, self._run_params(), bool(training), int(t0),
                            bool(update_stats))
        return out[0], list(out[1:-1]), out[-1]

    def _forward(self, x, states, m, params, training, t0, update_stats):
        """(hs, *final states, cache) from the backend; the BN cells add their statistics."""
        return getattr(self._impl, self.stem + "_forward")(x, *states, m, params,
                                                           **self._options())

    def _run_backward(self, dhs, cache, final_grads, state_grads):
        """The checks and the dispatch of every family's backward. final_grads: one array or
        None per state of STATES (dL/dhT, dL/dcT)."""
        if not isinstance(cache, self.cache_class):
            raise ValueError(f"cache must be the cache returned by this {type(self).__name__}'s "
                             f"forward, got {type(cache).__name__}")
        if cache.x.dtype != self.dtype or cache.x.shape[2] != self.input_size \
                or cache.h.shape[2] != self.hidden_size:
            raise ValueError(f"cache was made by a cell of another size or dtype (x "
                             f"{cache.x.shape} {cache.x.dtype}, H={cache.h.shape[2]}), not by "
                             f"this {self!r}")
        if set(cache.params) != self._run_param_names():    # e.g. a cell of another term form
            raise ValueError(f"cache was made by a cell with other parameters "
                             f"({sorted(cache.params)}), not by this {self!r} "
                             f"({sorted(self._run_param_names())})")
        T, B, _ = cache.x.shape
        H = self.hidden_size
        dhs = self._grad(dhs, "dhs", (T, B, H))
        finals = [self._grad(value, f"d{name}T", (B, H))
                  for name, value in zip(self.STATES, final_grads)]
        if not isinstance(state_grads, (bool, np.bool_)):
            raise ValueError(f"state_grads must be True or False, got {state_grads!r}")
        grads = getattr(self._impl, self.stem + "_backward")(dhs, *finals, cache,
                                                             bool(state_grads))
        return self._unfold_grads(grads)

    def _state(self, value, name, B):
        if value is None:
            return np.zeros((B, self.hidden_size), dtype=self.dtype)
        return _checks.float_array(value, name, (B, self.hidden_size), self.dtype)

    def _grad(self, value, name, shape):
        if value is None:
            return np.zeros(shape, dtype=self.dtype)
        return _checks.float_array(value, name, shape, self.dtype)

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"dtype={self.dtype.name!r}, backend={self.backend!r})")


class _OneStateCell(_Cell):
    """The cells with one recurrent state h (the vanilla RNN and GRU families)."""

    STATES = ("h",)

    def forward(self, x, h0=None, mask=None, training=True, *, lengths=None, t0=0,
                update_stats=None):
        """Run the cell over a sequence.

        x (T, B, D); h0 (B, H) or None for zeros; mask (T, B) of 0/1 (or bool), or lengths
        (B,) of ints, or neither (all valid). Masked steps carry the state unchanged and output
        0, so hT is each sequence's last valid state. training selects batch (True) or
        population (False) statistics in the BN cells; t0 is the absolute time index of x[0]
        (it picks the population slots of the per-step BN cells); update_stats (default: equal
        to training) lets a training pass update the running population statistics.

        Returns hs (T, B, H), hT (B, H), cache. Nothing passed in is modified.
        """
        hs, (hT,), cache = self._run_forward(x, (h0,), mask, training, lengths, t0,
                                             update_stats)
        return hs, hT, cache

    def backward(self, dhs, cache, dhT=None, *, state_grads=False):
        """Gradients of L = Σ dhs⊙hs + Σ dhT⊙hT (BPTT 1) for the forward that made `cache`: a
        dict with every parameter name and "x", "h0". None means zeros.

        state_grads=True adds "dh" (T, B, H): dL/dh̃_t, the gradient with respect to the hidden
        value computed at every step t (0 on padded steps) -- the quantity of gradient-flow
        studies."""
        return self._run_backward(dhs, cache, (dhT,), state_grads)


# -- batch-normalised cells: population statistics ----------------------------------------------
class _BatchNormCell(_Cell):
    """Population statistics shared by every batch-normalised cell.

    `cell.stats` maps names to arrays of shape (slots, F) for the per-step cells and (F,) for
    the sequence-wise ones. They are state, not trained parameters. A training forward
    (update_stats=True) blends the statistics of every slot whose batch had at least two valid
    rows into them (BN 13):
        pop <- (1 - momentum) * pop + momentum * batch
    with the variance stored biased (default, as in Cooijmans' code and Keras) or multiplied by
    n/(n-1) (unbiased_var=True, as PyTorch stores it). eps is added once, at use.
    estimate_stats replaces them by the exact average over a pass of batches (BN 14).
    """

    def __init__(self, input_size, hidden_size, *, eps, momentum, unbiased_var, pad_stats,
                 **kw):
        if pad_stats not in ("exclude", "include"):
            raise ValueError(f"pad_stats must be 'exclude' or 'include', got {pad_stats!r}")
        self.pad_stats = pad_stats
        self.eps = _checks.nonnegative_float(eps, "eps")     # 0 allowed: (BN 15)
        self.momentum = _checks.unit_interval(momentum, "momentum")
        if not isinstance(unbiased_var, (bool, np.bool_)):
            raise ValueError(f"unbiased_var must be True or False, got {unbiased_var!r}")
        self.unbiased_var = bool(unbiased_var)
        super().__init__(input_size, hidden_size, **kw)

    def _stat_widths(self):
        """{statistic name: width F}: the names are the cache's fields and the pop keys."""
        raise NotImplementedError

    def _batch_stats(self, cache, t0):
        """(slots (K,), counts (K,), {name: (K, F)}) of a training cache."""
        raise NotImplementedError

    def _stored_var(self, var, n):
        return var * (n / (n - 1)) if self.unbiased_var else var

    def _record(self, cache, t0):
        slots, counts, batch = self._batch_stats(cache, t0)
        counts = np.asarray(counts)
        keep = counts >= 2       # one row carries no spread, none carries nothing: keep the slot
        if not keep.any():
            return
        slots, n = np.asarray(slots)[keep], counts[keep]
        a = self.momentum
        for key in self._stat_widths():
            new = batch[key][keep]                                              # (K, F)
            if key.startswith("var"):
                new = self._stored_var(new, n[:, None])
            pop = self._slot_view(key)
            for k, slot in enumerate(slots):   # in time order: steps sharing a slot (VAR 7)
                pop[slot] = (1 - a) * pop[slot] + a * new[k]                    # (BN 13)

    def estimate_stats(self, batches):
        """The exact population estimator (BN 14): run a training forward over every batch with
        the weights frozen and set each slot's statistics to the plain average of the batch
        statistics of the batches that had at least two valid rows there. Slots that no batch
        reached keep their value. `batches` yields arrays x or dicts of forward's keyword
        arguments (x, h0, c0, mask, lengths, t0). Returns the number of batch statistics
        averaged per slot: one per batch, except in the last slot of a per-step cell with
        past_max_steps="clamp", which averages every step of every batch mapped to it (VAR 8).
        """
        sums, totals = None, None
        for item in batches:
            kwargs = dict(item) if isinstance(item, dict) else {"x": item}
            t0 = kwargs.get("t0", 0)
            *_, cache = self.forward(training=True, update_stats=False, **kwargs)
            slots, counts, batch = self._batch_stats(cache, t0)
            if sums is None:
                sums = {key: {} for key in self._stat_widths()}
                totals = {}
            for k, (slot, n) in enumerate(zip(slots, counts)):
                if n < 2:
                    continue
                totals[slot] = totals.get(slot, 0) + 1
                for key in self._stat_widths():
                    new = batch[key][k]
                    if key.startswith("var"):
                        new = self._stored_var(new, n)
                    sums[key][slot] = sums[key].get(slot, 0) + new
        if not totals:
            raise ValueError("batches gave no step with at least two valid rows to average")
        self._ensure_slots(max(totals) + 1)
        for key in self._stat_widths():
            pop = self._slot_view(key)
            for slot, count in totals.items():
                pop[slot] = sums[key][slot] / count                             # (BN 14)
        per_slot = np.zeros(self._n_slots(), dtype=int)
        for slot, count in totals.items():
            per_slot[slot] = count
        return per_slot

    def reset_stats(self):
        """Population means to 0 and variances to 1."""
        for key in self._stat_widths():
            self.stats[key][...] = 0.0 if key.startswith("mean") else 1.0

    def _fresh_stats(self, slots):
        shape = (lambda F: (slots, F)) if slots is not None else (lambda F: (F,))
        return {key: (np.zeros if key.startswith("mean") else np.ones)(shape(F), dtype=self.dtype)
                for key, F in self._stat_widths().items()}


class _PerStepBatchNormCell(_BatchNormCell):
    """Statistics per time step (Cooijmans et al. 2016): BNLSTM, BNRNN.

    Training normalises each step over the valid rows of that step (batch size 1 is an error:
    there is no batch to take statistics over). Inference uses one population slot per time
    step: absolute step t = t0 + local index reads slot min(t, slots - 1) (BN-LSTM 5), so steps
    at or past T_max use the last slot. With max_steps=None the slots grow to the longest
    training sequence seen (new slots start at mean 0, var 1); with max_steps = K there are
    exactly K slots and past_max_steps says what a training pass that updates statistics does
    at steps t >= K: "raise" (default), a ValueError before anything is computed or updated;
    "clamp" (VAR 7), step t's statistics update slot min(t, K - 1), one EMA update per step in
    increasing t (estimate_stats averages them, (VAR 8)). Training still normalises every step
    with its own batch statistics.
    """

    def __init__(self, input_size, hidden_size, *, max_steps, past_max_steps, **kw):
        self.max_steps = None if max_steps is None else _checks.positive_int(max_steps,
                                                                             "max_steps")
        self.past_max_steps = _checks.choice(past_max_steps, "past_max_steps",
                                             ("raise", "clamp"))                # (VAR 7)
        super().__init__(input_size, hidden_size, **kw)
        self.stats = self._fresh_stats(self.max_steps or 0)

    def _n_slots(self):
        return next(iter(self.stats.values())).shape[0]

    def _slot_view(self, key):
        return self.stats[key]

    def _slots_of(self, t):
        """The population slot each absolute training step t (array) updates: t itself, or
        min(t, K - 1) with max_steps = K and past_max_steps="clamp" (VAR 7)."""
        if self.max_steps is not None and self.past_max_steps == "clamp":
            return np.minimum(t, self.max_steps - 1)                            # (VAR 7)
        return t

    def _ensure_slots(self, slots):
        if slots <= self._n_slots():
            return
        if self.max_steps is not None:
            raise ValueError(f"training reaches time step {slots - 1} but max_steps="
                             f"{self.max_steps}: population statistics exist for steps "
                             f"0..{self.max_steps - 1} only (raise max_steps, use t0, or "
                             f"past_max_steps='clamp')")
        grown = self._fresh_stats(slots)
        for key, old in self.stats.items():
            grown[key][:old.shape[0]] = old
        self.stats = grown

    def _batch_stats(self, cache, t0):
        T = cache.count.shape[0]
        return (self._slots_of(np.arange(t0, t0 + T)), cache.count,
                {key: getattr(cache, key) for key in self._stat_widths()})

    def _forward(self, x, states, m, params, training, t0, update_stats):
        T, B, _ = x.shape
        run = getattr(self._impl, self.stem + "_forward")
        options = dict(self._options(), eps=self.eps, pad_stats=self.pad_stats)
        name = type(self).__name__
        if training:
            if B == 1:
                raise ValueError(f"{name} in training needs a batch of at least 2 rows: batch "
                                 "statistics of batch size 1 are meaningless (use "
                                 "training=False, or a sequence-wise or layer-normalised cell)")
            if update_stats:                      # before the pass: errors leave nothing half done
                self._ensure_slots(int(self._slots_of(t0 + T - 1)) + 1)
            out = run(x, *states, m, params, training=True, **options)
            if update_stats:
                self._record(out[-1], t0)
            return out
        slots = self._n_slots()
        if slots == 0:
            raise ValueError(f"training=False needs population statistics, but this {name} "
                             "has none yet: train it, call estimate_stats, or construct it with "
                             "max_steps")
        idx = np.minimum(np.arange(t0, t0 + T), slots - 1)                     # (BN-LSTM 5)
        pop = {key: self.stats[key][idx] for key in self._stat_widths()}
        return run(x, *states, m, params, training=False, pop=pop, **options)


class _SequenceBatchNormCell(_BatchNormCell):
    """Statistics over batch x time (Laurent et al. 2016): SeqBNLSTM, SeqBNRNN. One set of
    statistics over every valid (t, b) frame of the batch (every frame with
    pad_stats="include"), so batch size 1 works in training; inference uses the running
    statistics `cell.stats` (F,). Every family's sequence-wise cell takes these options: eps,
    momentum (0.1, PyTorch's convention), unbiased_var, gamma_init (1.0), pad_stats."""

    def __init__(self, input_size, hidden_size, *, eps=DEFAULT_EPS,
                 momentum=SEQ_BN_LSTM_MOMENTUM, unbiased_var=False,
                 gamma_init=SEQ_BN_GAMMA_INIT, pad_stats="exclude", **kw):
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, eps=eps, momentum=momentum,
                         unbiased_var=unbiased_var, pad_stats=pad_stats, **kw)
        self.stats = self._fresh_stats(None)

    def _n_slots(self):
        return 1

    def _slot_view(self, key):
        return self.stats[key].reshape(1, -1)      # a view: writes go to self.stats[key]

    def _ensure_slots(self, slots):
        pass

    def _batch_stats(self, cache, t0):
        return ([0], [cache.count],
                {key: getattr(cache, key)[None] for key in self._stat_widths()})

    def _forward(self, x, states, m, params, training, t0, update_stats):
        run = getattr(self._impl, self.stem + "_forward")
        options = dict(self._options(), eps=self.eps, pad_stats=self.pad_stats)
        if training:
            out = run(x, *states, m, params, training=True, **options)
            if update_stats:
                self._record(out[-1], t0)
            return out
        pop = {key: value.copy() for key, value in self.stats.items()}  # the cache keeps these
        return run(x, *states, m, params, training=False, pop=pop, **options)
