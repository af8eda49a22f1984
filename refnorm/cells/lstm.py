"""The LSTM family: LSTM, BNLSTM, SeqBNLSTM, LNLSTM (two states, h and c). The machinery they
share with every cell (checks, dispatch, population statistics) is in base.py; the math lives
in the backends (refnorm.numpy_ref/<stem>.py, the book, by default).

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
import numpy as np

from .. import _checks
from ..config import BN_GAMMA_INIT, BN_LSTM_MOMENTUM, DEFAULT_EPS, LN_GAMMA_INIT
from ..numpy_ref.bn_lstm import BNLSTMCache
from ..numpy_ref.common import fold_into_bias, unfold_bias_grads
from ..numpy_ref.ln_lstm import LNLSTMCache
from ..numpy_ref.lstm import LSTMCache
from ..numpy_ref.seq_bn_lstm import SeqBNLSTMCache
from .base import (_Cell, _PerStepBatchNormCell, _SequenceBatchNormCell, orthogonal_init,
                   uniform_init)


class _LSTMCell(_Cell):
    """The LSTM family's forward and backward (two states), and the options every LSTM takes
    for reproducing peers: forget_bias (run time, VAR 1) and forget_bias_init (stored)."""

    STATES = ("h", "c")

    def __init__(self, input_size, hidden_size, *, forget_bias=0.0, forget_bias_init=None,
                 dtype="float64", **kw):
        dt = _checks.dtype(dtype)            # first: the forget biases must be finite in it
        self.forget_bias = _checks.finite_float(forget_bias, "forget_bias", dt)
        if forget_bias_init is not None:
            forget_bias_init = _checks.finite_float(forget_bias_init, "forget_bias_init", dt)
        super().__init__(input_size, hidden_size, dtype=dtype, **kw)
        if forget_bias_init is not None:
            H = self.hidden_size
            self.params["b"][H:2 * H] = forget_bias_init

    def _param_shapes(self):
        D, H = self.input_size, self.hidden_size
        return {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)}

    def _run_params(self):
        return fold_into_bias(self.params, self.forget_bias)      # copies; (VAR 1), (VAR 2)

    def _unfold_grads(self, grads):
        return unfold_bias_grads(grads, getattr(self, "term_beta", False))      # (VAR 2)

    def _run_param_names(self):
        return set(self._param_shapes()) - {"beta_x", "beta_h"}     # folded into b (VAR 2)

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
        hs, (hT, cT), cache = self._run_forward(x, (h0, c0), mask, training, lengths, t0,
                                                update_stats)
        return hs, (hT, cT), cache

    def backward(self, dhs, cache, dhT=None, dcT=None, *, state_grads=False):
        """Gradients of L = Σ dhs⊙hs + Σ dhT⊙hT + Σ dcT⊙cT (BPTT 1) for the forward that made
        `cache`: a dict with every parameter name and "x", "h0", "c0". None means zeros.

        state_grads=True adds "dh" and "dc" (T, B, H): dL/dh̃_t and dL/dc̃_t, the gradients
        with respect to the hidden and cell values computed at every step t (0 on padded steps),
        as the backward pass meets them -- the quantities of gradient-flow studies."""
        return self._run_backward(dhs, cache, (dhT, dcT), state_grads)


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


class LSTM(_LSTMCell):
    """The canonical LSTM, (LSTM 1)-(LSTM 4). Params Wx (D, 4H), Wh (H, 4H), b (4H), all drawn
    from U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.LSTM. `training` has no effect."""

    stem = "lstm"
    cache_class = LSTMCache

    def _init_params(self, rng):
        return {name: uniform_init(rng, shape, self.hidden_size)
                for name, shape in self._param_shapes().items()}


class BNLSTM(_PerStepBatchNormCell, _LSTMCell):
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
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, eps=eps, momentum=momentum,
                         unbiased_var=unbiased_var, pad_stats=pad_stats, max_steps=max_steps,
                         past_max_steps=past_max_steps, **kw)

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

    def _options(self):
        return {"carry": self.carry}


class SeqBNLSTM(_SequenceBatchNormCell, _LSTMCell):
    """Sequence-wise batch norm of the input term (Laurent et al. 2016): (SEQBN-LSTM 1)-(3).

    Params: Wx, Wh, b as LSTM (U(-1/sqrt(H), 1/sqrt(H))), gamma_x (4H) = gamma_init (1.0).
    One set of statistics over every valid (t, b) frame of the batch (every frame with
    pad_stats="include"), so batch size 1 works in training; inference uses the running
    statistics `cell.stats` = {mean_x, var_x} (4H,), updated with PyTorch's momentum convention
    (momentum 0.1).
    """

    stem = "seq_bn_lstm"
    cache_class = SeqBNLSTMCache

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


class LNLSTM(_LSTMCell):
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

    def _options(self):
        return {"eps": self.eps, "per_gate": self.per_gate, "carry": self.carry,
                "terms": self.terms}
