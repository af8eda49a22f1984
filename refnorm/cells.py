"""The user-facing cells: parameters, argument checks, population statistics, and dispatch to a
backend (refnorm.numpy_ref by default). The math lives in the backends.

    hs, (hT, cT), cache = cell.forward(x, h0=None, c0=None, mask=None, training=True)
    grads = cell.backward(dhs, cache, dhT=None, dcT=None)

Shapes are time-major: x (T, B, D), hs (T, B, H), h0/c0/hT/cT (B, H), mask (T, B). Parameters use
the canonical layout z = x Wx + h Wh + b with Wx (D, 4H), Wh (H, 4H), b (4H) and gate blocks
i, f, g, o. forward copies the parameters and x into the cache, so backward computes the
gradient of the forward that made the cache even if cell.params is edited in between.

Options every cell takes, for reproducing peers (derivations/variants.md):
    forget_bias       a constant added to the forget-gate pre-activation at run time, not stored
                      in b (TF1 BasicLSTMCell, LayerNormBasicLSTMCell; default 0)  (VAR 1)
    forget_bias_init  a value written into the forget block of b at construction (Keras
                      unit_forget_bias, haste forget_bias, Cooijmans' code; default None: b as
                      drawn)
BNLSTM and LNLSTM also take carry="raw"|"normalized" (VAR 3) and term_beta (VAR 2); LNLSTM also
terms="separate"|"summed" (VAR 5); BNLSTM also past_max_steps="raise"|"clamp" (VAR 7). The
normalised cells take eps >= 0: with eps = 0 a zero variance normalises to 0 and passes no
gradient (BN 15), (LN 11). refnorm.presets sets them all for a named peer.
"""
import numbers

import numpy as np

from . import _checks, backends
from .numpy_ref.bn_lstm import BNLSTMCache
from .numpy_ref.common import fold_into_bias, unfold_bias_grads
from .numpy_ref.ln_lstm import LNLSTMCache
from .numpy_ref.lstm import LSTMCache
from .numpy_ref.seq_bn_lstm import SeqBNLSTMCache
from .config import (BN_GAMMA_INIT, BN_LSTM_MOMENTUM, DEFAULT_EPS, LN_GAMMA_INIT,
                     SEQ_BN_GAMMA_INIT, SEQ_BN_LSTM_MOMENTUM)


def uniform_init(rng, shape, hidden_size):
    """PyTorch's default LSTM init: U(-1/sqrt(H), 1/sqrt(H))."""
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
    """Shared machinery. Subclasses set `stem` (the backend function prefix) and define
    `_param_shapes`, `_init_params` and `_forward`."""

    stem = None
    cache_class = None

    def __init__(self, input_size, hidden_size, *, seed=None, dtype="float64", backend="numpy",
                 forget_bias=0.0, forget_bias_init=None):
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.hidden_size = _checks.positive_int(hidden_size, "hidden_size")
        self.dtype = _checks.dtype(dtype)     # first: the forget biases must be finite in it
        self.forget_bias = _checks.finite_float(forget_bias, "forget_bias", self.dtype)
        if forget_bias_init is not None:
            forget_bias_init = _checks.finite_float(forget_bias_init, "forget_bias_init",
                                                    self.dtype)
        backends.get(backend)                    # ValueError now for an unknown name
        self.backend = backend
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(seed)
        self.params = {name: np.ascontiguousarray(value, dtype=self.dtype)
                       for name, value in self._init_params(rng).items()}
        if forget_bias_init is not None:
            H = self.hidden_size
            self.params["b"][H:2 * H] = forget_bias_init

    @property
    def _impl(self):
        """The backend module (looked up by name, so cells stay picklable and copyable)."""
        return backends.get(self.backend)

    # -- parameters -------------------------------------------------------------------------
    def _param_shapes(self):
        D, H = self.input_size, self.hidden_size
        return {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)}

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

    # -- forward / backward -----------------------------------------------------------------
    def forward(self, x, h0=None, c0=None, mask=None, training=True, *, lengths=None, t0=0,
                update_stats=None):
        """Run the cell over a sequence.

        x (T, B, D); h0, c0 (B, H) or None for zeros; mask (T, B) of 0/1 (or bool), or
        lengths (B,) of ints, or neither (all valid). Masked steps carry the state unchanged and
        output 0, so hT, cT are each sequence's last valid state. training selects batch (True)
        or population (False) statistics in the BN cells. t0 is the absolute time index of
        x[0]: it picks the population-statistics slots of BNLSTM. update_stats (default: equal
        to training) lets a training pass update the running population statistics.

        Returns hs (T, B, H), (hT, cT), cache. Nothing passed in is modified.
        """
        self._check_params()
        x = _checks.float_array(x, "x", (None, None, self.input_size), self.dtype)
        T, B, _ = x.shape
        h0 = self._state(h0, "h0", B)
        c0 = self._state(c0, "c0", B)
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
        params = fold_into_bias(self.params, self.forget_bias)   # copies; (VAR 1), (VAR 2)
        hs, hT, cT, cache = self._forward(x.copy(), h0, c0, m, params, bool(training), int(t0),
                                          bool(update_stats))
        return hs, (hT, cT), cache

    def backward(self, dhs, cache, dhT=None, dcT=None, *, state_grads=False):
        """Gradients of L = Σ dhs⊙hs + Σ dhT⊙hT + Σ dcT⊙cT (BPTT 1) for the forward that made
        `cache`: a dict with every parameter name and "x", "h0", "c0". None means zeros.

        state_grads=True adds "dh" and "dc" (T, B, H): dL/dh̃_t and dL/dc̃_t, the gradients
        with respect to the hidden and cell values computed at every step t (0 on padded steps),
        as the backward pass meets them -- the quantities of gradient-flow studies."""
        if not isinstance(cache, self.cache_class):
            raise ValueError(f"cache must be the cache returned by this {type(self).__name__}'s "
                             f"forward, got {type(cache).__name__}")
        if cache.x.dtype != self.dtype or cache.x.shape[2] != self.input_size \
                or cache.h.shape[2] != self.hidden_size:
            raise ValueError(f"cache was made by a cell of another size or dtype (x "
                             f"{cache.x.shape} {cache.x.dtype}, H={cache.h.shape[2]}), not by "
                             f"this {self!r}")
        T, B, _ = cache.x.shape
        H = self.hidden_size
        dhs = self._grad(dhs, "dhs", (T, B, H))
        dhT = self._grad(dhT, "dhT", (B, H))
        dcT = self._grad(dcT, "dcT", (B, H))
        if not isinstance(state_grads, (bool, np.bool_)):
            raise ValueError(f"state_grads must be True or False, got {state_grads!r}")
        grads = getattr(self._impl, self.stem + "_backward")(dhs, dhT, dcT, cache,
                                                             bool(state_grads))
        return unfold_bias_grads(grads, getattr(self, "term_beta", False))      # (VAR 2)

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


def _normalized_param_shapes(D, H, term_beta=False, terms="separate"):
    """Params of BNLSTM and LNLSTM: the LSTM's plus the gains of both gate terms (one gain
    gamma_z of their sum with terms="summed"), their shifts with term_beta, and the gain and
    shift of the cell normalisation."""
    gains = ({"gamma_x": (4 * H,), "gamma_h": (4 * H,)} if terms == "separate"
             else {"gamma_z": (4 * H,)})
    shifts = {"beta_x": (4 * H,), "beta_h": (4 * H,)} if term_beta else {}
    return {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,), **gains, **shifts,
            "gamma_c": (H,), "beta_c": (H,)}


def _normalized_init(shapes, W, gamma_init):
    """b, the term shifts and beta_c zeros; every gain gamma_init; Wx, Wh as given."""
    params = {"Wx": W[0], "Wh": W[1]}
    for name, shape in shapes.items():
        if name not in params:
            params[name] = (np.full(shape, gamma_init) if name.startswith("gamma")
                            else np.zeros(shape))
    return params


def _variant_options(carry, term_beta):
    return (_checks.choice(carry, "carry", ("raw", "normalized")),
            _checks.flag(term_beta, "term_beta"))


class LSTM(_Cell):
    """The canonical LSTM, (LSTM 1)-(LSTM 4). Params Wx (D, 4H), Wh (H, 4H), b (4H), all drawn
    from U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.LSTM. `training` has no effect."""

    stem = "lstm"
    cache_class = LSTMCache

    def _init_params(self, rng):
        return {name: uniform_init(rng, shape, self.hidden_size)
                for name, shape in self._param_shapes().items()}

    def _forward(self, x, h0, c0, m, params, training, t0, update_stats):
        return self._impl.lstm_forward(x, h0, c0, m, params)


class _BatchNormCell(_Cell):
    """Population statistics shared by BNLSTM and SeqBNLSTM.

    `cell.stats` maps names to arrays of shape (slots, F) for BNLSTM and (F,) for SeqBNLSTM.
    They are state, not trained parameters. A training forward (update_stats=True) blends the
    statistics of every slot whose batch had at least two valid rows into them (BN 13):
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
        averaged per slot: one per batch, except in the last slot of a BNLSTM with
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


class BNLSTM(_BatchNormCell):
    """Recurrent batch normalization, Cooijmans et al. 2016 eqs. 6-8: (BN-LSTM 1)-(BN-LSTM 4).

    Params: Wx (D, 4H) and Wh (H, 4H) orthogonal, b (4H) zeros (paper sec. 4), gamma_x, gamma_h
    (4H) and gamma_c (H) = gamma_init (0.1, paper), beta_c (H) zeros. β_x = β_h = 0: b plays
    their role. The raw cell c̃_t is carried; BN(c̃_t) feeds only the output tanh.

    Training: statistics per time step over the valid rows of that step (biased variance),
    gradients flow through them. pad_stats="include" lets padded rows into the statistics
    instead (what most ports do; for reproducing them and for studying the damage). A step
    with one valid row normalises to ẑ = 0 (its BN output is β; gradients through that BN are
    0); a step with no valid row carries the state. Batch size 1 is an error in training (no
    batch to take statistics over), as in PyTorch. eps >= 0: with eps = 0 a feature of zero
    variance normalises to 0 and passes no gradient (BN 15) (with eps > 0 it normalises to 0
    too, up to the rounding of the mean, and passes a gradient amplified by 1/√eps).

    Variants (derivations/variants.md): carry="normalized" carries BN_t(c̃_t) instead of c̃_t
    (the authors' --normalize-cell), term_beta=True adds trainable shifts beta_x, beta_h (4H) to
    the two gate-term BNs (the jihunchoi port), forget_bias / forget_bias_init as every cell
    (the authors' code stores 1.0 in the forget block of b).

    Inference (training=False): population statistics, one slot per time step (`cell.stats`,
    arrays (slots, F) named mean_x, var_x, mean_h, var_h (F = 4H), mean_c, var_c (F = H)).
    Absolute step t = t0 + local index uses slot min(t, slots - 1) (BN-LSTM 5): steps at or past
    T_max use the last slot. With max_steps=None the slots grow to the longest training sequence
    seen (new slots start at mean 0, var 1); with max_steps = K set there are exactly K slots,
    and past_max_steps says what a training pass that updates statistics (update_stats) does at
    steps t >= K:
      "raise" (default)  ValueError before anything is computed or updated;
      "clamp"            (VAR 7) as at inference, step t's statistics go to slot min(t, K - 1).
                         Training still normalises every step with its own batch statistics;
                         only the population update is clamped. Slot K - 1 then takes one EMA
                         update (BN 13) per step t = K - 1, K, ... (each with >= 2 rows in its
                         statistics), one after the other in increasing t:
                         pop <- (1 - momentum) pop + momentum batch_t -- the order in which
                         torch's F.batch_norm updates the jihunchoi port's last buffer, and the
                         one statistics set of batchnorm-lstm (max_steps=1). estimate_stats
                         (BN 14) averages slot K - 1 over every (batch, step) mapped to it
                         (VAR 8).
    past_max_steps has no effect with max_steps=None (the slots grow instead).
    """

    stem = "bn_lstm"
    cache_class = BNLSTMCache

    def __init__(self, input_size, hidden_size, *, eps=DEFAULT_EPS, momentum=BN_LSTM_MOMENTUM,
                 max_steps=None, unbiased_var=False, gamma_init=BN_GAMMA_INIT,
                 pad_stats="exclude", carry="raw", term_beta=False, past_max_steps="raise",
                 **kw):
        self.carry, self.term_beta = _variant_options(carry, term_beta)
        self.max_steps = None if max_steps is None else _checks.positive_int(max_steps,
                                                                             "max_steps")
        self.past_max_steps = _checks.choice(past_max_steps, "past_max_steps",
                                             ("raise", "clamp"))                # (VAR 7)
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, eps=eps, momentum=momentum,
                         unbiased_var=unbiased_var, pad_stats=pad_stats, **kw)
        self.stats = self._fresh_stats(self.max_steps or 0)

    def _param_shapes(self):
        return _normalized_param_shapes(self.input_size, self.hidden_size, self.term_beta)

    def _init_params(self, rng):
        shapes = self._param_shapes()
        return _normalized_init(shapes, (orthogonal_init(rng, shapes["Wx"]),
                                         orthogonal_init(rng, shapes["Wh"])), self.gamma_init)

    def _stat_widths(self):
        H = self.hidden_size
        return {"mean_x": 4 * H, "var_x": 4 * H, "mean_h": 4 * H, "var_h": 4 * H,
                "mean_c": H, "var_c": H}

    def _n_slots(self):
        return self.stats["mean_x"].shape[0]

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

    def _forward(self, x, h0, c0, m, params, training, t0, update_stats):
        T, B, _ = x.shape
        if training:
            if B == 1:
                raise ValueError("BNLSTM in training needs a batch of at least 2 rows: batch "
                                 "statistics of batch size 1 are meaningless (use "
                                 "training=False, SeqBNLSTM or LNLSTM)")
            if update_stats:                      # before the pass: errors leave nothing half done
                self._ensure_slots(int(self._slots_of(t0 + T - 1)) + 1)
            out = self._impl.bn_lstm_forward(x, h0, c0, m, params, training=True, eps=self.eps,
                                             pad_stats=self.pad_stats, carry=self.carry)
            if update_stats:
                self._record(out[3], t0)
            return out
        slots = self._n_slots()
        if slots == 0:
            raise ValueError("training=False needs population statistics, but this BNLSTM "
                             "has none yet: train it, call estimate_stats, or construct it with "
                             "max_steps")
        idx = np.minimum(np.arange(t0, t0 + T), slots - 1)                     # (BN-LSTM 5)
        pop = {key: self.stats[key][idx] for key in self._stat_widths()}
        return self._impl.bn_lstm_forward(x, h0, c0, m, params, training=False, eps=self.eps,
                                          pop=pop, pad_stats=self.pad_stats, carry=self.carry)


class SeqBNLSTM(_BatchNormCell):
    """Sequence-wise batch norm of the input term (Laurent et al. 2016): (SEQBN-LSTM 1)-(3).

    Params: Wx, Wh, b as LSTM (U(-1/sqrt(H), 1/sqrt(H))), gamma_x (4H) = gamma_init (1.0).
    One set of statistics over every valid (t, b) frame of the batch (every frame with
    pad_stats="include"), so batch size 1 works in training; inference uses the running
    statistics `cell.stats` = {mean_x, var_x} (4H,), updated with PyTorch's momentum convention
    (momentum 0.1).
    """

    stem = "seq_bn_lstm"
    cache_class = SeqBNLSTMCache

    def __init__(self, input_size, hidden_size, *, eps=DEFAULT_EPS,
                 momentum=SEQ_BN_LSTM_MOMENTUM, unbiased_var=False,
                 gamma_init=SEQ_BN_GAMMA_INIT, pad_stats="exclude", **kw):
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, eps=eps, momentum=momentum,
                         unbiased_var=unbiased_var, pad_stats=pad_stats, **kw)
        self.stats = self._fresh_stats(None)

    def _param_shapes(self):
        return {**super()._param_shapes(), "gamma_x": (4 * self.hidden_size,)}

    def _init_params(self, rng):
        shapes = self._param_shapes()
        params = {name: uniform_init(rng, shapes[name], self.hidden_size)
                  for name in ("Wx", "Wh", "b")}
        params["gamma_x"] = np.full(shapes["gamma_x"], self.gamma_init)
        return params

    def _stat_widths(self):
        return {"mean_x": 4 * self.hidden_size, "var_x": 4 * self.hidden_size}

    def _n_slots(self):
        return 1

    def _slot_view(self, key):
        return self.stats[key].reshape(1, -1)      # a view: writes go to self.stats[key]

    def _ensure_slots(self, slots):
        pass

    def _batch_stats(self, cache, t0):
        return ([0], [cache.count],
                {key: getattr(cache, key)[None] for key in self._stat_widths()})

    def _forward(self, x, h0, c0, m, params, training, t0, update_stats):
        if training:
            out = self._impl.seq_bn_lstm_forward(x, h0, c0, m, params, training=True,
                                                 eps=self.eps, pad_stats=self.pad_stats)
            if update_stats:
                self._record(out[3], t0)
            return out
        pop = {key: value.copy() for key, value in self.stats.items()}  # the cache keeps these
        return self._impl.seq_bn_lstm_forward(x, h0, c0, m, params, training=False,
                                              eps=self.eps, pop=pop, pad_stats=self.pad_stats)


class LNLSTM(_Cell):
    """Layer-normalised LSTM, Ba et al. 2016 supplementary eqs. 20-22: (LN-LSTM 1)-(LN-LSTM 4).

    Params as BNLSTM: Wx, Wh (U(-1/sqrt(H), 1/sqrt(H))), b zeros, gamma_x, gamma_h (4H),
    gamma_c (H) = gamma_init (1.0, paper sec. 6), beta_c (H) zeros. LN over the joint 4H vector
    of each term, or over each H-wide gate block with per_gate=True. Identical in training and
    inference, and each row is independent of the rest of the batch.

    Variants (derivations/variants.md), for reproducing peers (see refnorm.presets):
    carry="normalized" carries LN(c̃_t) as the cell state (PyTorch fastrnns, TF Addons, TF1);
    term_beta=True adds shifts beta_x, beta_h (4H) to the two gate-term LNs (fastrnns, TF
    Addons); terms="summed" normalises the sum x_t Wx + h_{t-1} Wh once, with one gain gamma_z
    (4H) in place of gamma_x, gamma_h (TF1 LayerNormBasicLSTMCell, there per gate); eps as the
    peer (1e-5 haste and PyTorch, 1e-3 TF Addons, 1e-12 TF1, 0 the decomposed LayerNorm of
    PyTorch fastrnns). With eps = 0 a row of zero variance (e.g. h_0 = 0) normalises to ẑ = 0,
    as it does for eps > 0, and no gradient passes through that LN (LN 11): the map has no
    derivative there, where with eps > 0 it has one of size 1/√eps.
    """

    stem = "ln_lstm"
    cache_class = LNLSTMCache

    def __init__(self, input_size, hidden_size, *, eps=DEFAULT_EPS, per_gate=False,
                 gamma_init=LN_GAMMA_INIT, carry="raw", term_beta=False, terms="separate",
                 **kw):
        self.eps = _checks.nonnegative_float(eps, "eps")     # 0 allowed: (LN 11)
        self.per_gate = _checks.flag(per_gate, "per_gate")
        self.carry, self.term_beta = _variant_options(carry, term_beta)
        self.terms = _checks.choice(terms, "terms", ("separate", "summed"))
        if self.terms == "summed" and self.term_beta:
            raise ValueError("term_beta=True needs terms='separate': with one LN of the summed "
                             "terms there is one shift, and b is it")
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, **kw)

    def _param_shapes(self):
        return _normalized_param_shapes(self.input_size, self.hidden_size, self.term_beta,
                                        self.terms)

    def _init_params(self, rng):
        shapes = self._param_shapes()
        return _normalized_init(shapes, (uniform_init(rng, shapes["Wx"], self.hidden_size),
                                         uniform_init(rng, shapes["Wh"], self.hidden_size)),
                                self.gamma_init)

    def _forward(self, x, h0, c0, m, params, training, t0, update_stats):
        return self._impl.ln_lstm_forward(x, h0, c0, m, params, eps=self.eps,
                                          per_gate=self.per_gate, carry=self.carry,
                                          terms=self.terms)
