"""The vanilla (Elman) RNN family: RNN, BNRNN, SeqBNRNN, LNRNN (one state, h). The machinery
they share with every cell is in base.py; the math lives in the backends
(refnorm.numpy_ref/<stem>.py, the book, by default; derivations/<stem>.md).

    hs, hT, cache = cell.forward(x, h0=None, mask=None, training=True)
    grads = cell.backward(dhs, cache, dhT=None)           # every parameter and x, h0

Shapes are time-major: x (T, B, D), hs (T, B, H), h0/hT (B, H), mask (T, B). Parameters
Wx (D, H), Wh (H, H), b (H) (torch.nn.RNN's two biases fold into b), gains (H,). Masked steps
carry h and output 0, as in the LSTM family.

Options of the whole family:
    nonlinearity   "tanh" (default) or "relu": φ of (RNN 2)
    Wh             None (the cell's default init), "identity" (Le et al. 2015; the
                   recurrence of Cooijmans et al.'s Figure-1 RNN) or "orthogonal"
"""
import numpy as np

from .. import _checks
from ..config import BN_GAMMA_INIT, BN_LSTM_MOMENTUM, DEFAULT_EPS, LN_GAMMA_INIT
from ..numpy_ref.bn_rnn import STAT_NAMES, BNRNNCache
from ..numpy_ref.ln_rnn import LNRNNCache
from ..numpy_ref.rnn import NONLINEARITIES, RNNCache
from ..numpy_ref.seq_bn_rnn import SeqBNRNNCache
from .base import (_OneStateCell, _PerStepBatchNormCell, _SequenceBatchNormCell,
                   orthogonal_init, uniform_init)

WH_INITS = ("identity", "orthogonal")
TERMS = ("separate", "summed")


class _RNNCell(_OneStateCell):
    """What the family shares: the nonlinearity, the Wh init option, the plain parameters
    (Wx, Wh, b) and the gains a normalised cell adds (`_gains`)."""

    default_init = "uniform"          # how Wx and Wh are drawn unless Wh= says otherwise

    def __init__(self, input_size, hidden_size, *, nonlinearity="tanh", Wh=None, **kw):
        self.nonlinearity = _checks.choice(nonlinearity, "nonlinearity", NONLINEARITIES)
        self.Wh_init = None if Wh is None else _checks.choice(Wh, "Wh", WH_INITS)
        super().__init__(input_size, hidden_size, **kw)

    def _gains(self):
        """{gain name: its init value} of the normalised cells (none for RNN)."""
        return {}

    def _param_shapes(self):
        D, H = self.input_size, self.hidden_size
        return {"Wx": (D, H), "Wh": (H, H), "b": (H,), **{g: (H,) for g in self._gains()}}

    def _init_params(self, rng):
        """Wx, Wh by default_init (uniform: U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.RNN; or
        orthogonal), Wh replaced per the Wh option; b zeros for the normalised cells (the
        normalisation centres the terms), uniform for RNN; gains at their init value."""
        shapes, H = self._param_shapes(), self.hidden_size
        draw = ((lambda shape: orthogonal_init(rng, shape)) if self.default_init == "orthogonal"
                else (lambda shape: uniform_init(rng, shape, H)))
        params = {"Wx": draw(shapes["Wx"]), "Wh": draw(shapes["Wh"])}
        if self.Wh_init == "identity":
            params["Wh"] = np.eye(H)
        elif self.Wh_init == "orthogonal":
            params["Wh"] = orthogonal_init(rng, (H, H))
        params["b"] = np.zeros(H) if self._gains() else uniform_init(rng, (H,), H)
        params.update({g: np.full(H, value) for g, value in self._gains().items()})
        return params

    def _options(self):
        return {"nonlinearity": self.nonlinearity}


class RNN(_RNNCell):
    """The Elman RNN, (RNN 1)-(RNN 2): h̃_t = φ(x_t Wx + h_{t-1} Wh + b), φ = tanh or relu.
    Params drawn from U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.RNN. `training` has no effect."""

    stem = "rnn"
    cache_class = RNNCache


class BNRNN(_PerStepBatchNormCell, _RNNCell):
    """Recurrent batch normalization of the vanilla RNN (Cooijmans et al. 2016): (BN-RNN 1)-(3).

    terms="separate" (default): z_t = BN_t(x_t Wx; γ_x) + BN_t(h_{t-1} Wh; γ_h) + b, the form
    BN-LSTM uses; terms="summed": z_t = BN_t(x_t Wx + h_{t-1} Wh; γ_z) + b, one batch norm of
    the summed pre-activation: the tanh RNN of the authors' own code (sequential_mnist.py), the
    one their Figure 1 (gradient flow against γ) was measured on.

    Params: Wx (D, H) and Wh (H, H) orthogonal, b (H) zeros, the gains gamma_init (0.1, paper).
    Statistics per time step over the valid rows, population statistics per step with the
    clamp past T_max, every option of BNLSTM (max_steps, past_max_steps, momentum 0.05 as in the
    authors' code, unbiased_var, pad_stats, eps >= 0); see base._PerStepBatchNormCell. In
    training a step with exactly one valid row outputs φ(b) on it and passes no gradient
    through its batch norms (BN-RNN 9); batch size 1 is an error.
    """

    stem = "bn_rnn"
    cache_class = BNRNNCache
    default_init = "orthogonal"

    def __init__(self, input_size, hidden_size, *, terms="separate", eps=DEFAULT_EPS,
                 momentum=BN_LSTM_MOMENTUM, max_steps=None, unbiased_var=False,
                 gamma_init=BN_GAMMA_INIT, pad_stats="exclude", past_max_steps="raise", **kw):
        self.terms = _checks.choice(terms, "terms", TERMS)
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, eps=eps, momentum=momentum,
                         unbiased_var=unbiased_var, pad_stats=pad_stats, max_steps=max_steps,
                         past_max_steps=past_max_steps, **kw)

    def _gains(self):
        names = ("gamma_x", "gamma_h") if self.terms == "separate" else ("gamma_z",)
        return {name: self.gamma_init for name in names}

    def _stat_widths(self):
        return {key: self.hidden_size for key in STAT_NAMES[self.terms]}

    def _options(self):
        return {"terms": self.terms, "nonlinearity": self.nonlinearity}


class SeqBNRNN(_SequenceBatchNormCell, _RNNCell):
    """Sequence-wise batch norm of the input term (Laurent et al. 2016): (SEQBN-RNN 1)-(2),
    z_t = BN(x_t Wx; γ_x) + h_{t-1} Wh + b, statistics over every valid (t, b) frame; the
    recurrence is plain. Params: Wx, Wh as RNN (uniform), b zeros, gamma_x (H) = gamma_init
    (1.0). Batch size 1 works in training; inference uses `cell.stats` = {mean_x, var_x} (H,),
    momentum 0.1 (PyTorch's convention)."""

    stem = "seq_bn_rnn"
    cache_class = SeqBNRNNCache

    def _gains(self):
        return {"gamma_x": self.gamma_init}

    def _stat_widths(self):
        return {"mean_x": self.hidden_size, "var_x": self.hidden_size}


class LNRNN(_RNNCell):
    """Layer-normalised RNN, Ba et al. 2016 eq. 4: (LN-RNN 1)-(3).

    terms="summed" (default, as the paper writes it): z_t = LN(x_t Wx + h_{t-1} Wh; γ_z) + b,
    one layer norm over the H summed inputs of each row; terms="separate": LN(x_t Wx; γ_x) +
    LN(h_{t-1} Wh; γ_h) + b, like LNLSTM. Params: Wx, Wh uniform, b zeros, gains gamma_init
    (1.0). Identical in training and inference; each row independent of the batch. H = 1 is an
    error: a layer norm over one feature is 0 whatever its input. eps >= 0 as every normalised
    cell (LN 11).
    """

    stem = "ln_rnn"
    cache_class = LNRNNCache

    def __init__(self, input_size, hidden_size, *, terms="summed", eps=DEFAULT_EPS,
                 gamma_init=LN_GAMMA_INIT, **kw):
        self.terms = _checks.choice(terms, "terms", TERMS)
        self.eps = _checks.nonnegative_float(eps, "eps")     # 0 allowed: (LN 11)
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        if _checks.positive_int(hidden_size, "hidden_size") == 1:
            raise ValueError("LNRNN needs hidden_size >= 2: a layer norm over one feature is 0 "
                             "whatever its input, so the cell would ignore x and h")
        super().__init__(input_size, hidden_size, **kw)

    def _gains(self):
        names = ("gamma_z",) if self.terms == "summed" else ("gamma_x", "gamma_h")
        return {name: self.gamma_init for name in names}

    def _options(self):
        return {"eps": self.eps, "terms": self.terms, "nonlinearity": self.nonlinearity}
