"""The GRU family: GRU, BNGRU, SeqBNGRU, LNGRU (one state, h). The machinery they share with
every cell is in base.py; the math lives in the backends (refnorm.numpy_ref/<stem>.py, the
book, by default; derivations/<stem>.md).

    hs, hT, cache = cell.forward(x, h0=None, mask=None, training=True)
    grads = cell.backward(dhs, cache, dhT=None)           # every parameter and x, h0

Layout: Wx (D, 3H), Wh (H, 3H), b (3H) with gate blocks r, z, n (PyTorch's order), and b_hn (H),
the recurrent bias of the candidate, which sits inside r ⊙ (...) and cannot fold into b
(reset="after", the PyTorch/cuDNN form and every normalised GRU here). torch.nn.GRU's b_ir +
b_hr and b_iz + b_hz fold into b's r and z blocks; its b_in is b's n block.
"""
import numpy as np

from .. import _checks
from ..config import BN_GAMMA_INIT, BN_LSTM_MOMENTUM, DEFAULT_EPS, LN_GAMMA_INIT
from ..numpy_ref.bn_gru import BNGRUCache
from ..numpy_ref.gru import GRUCache
from ..numpy_ref.ln_gru import LNGRUCache
from ..numpy_ref.seq_bn_gru import SeqBNGRUCache
from .base import (_OneStateCell, _PerStepBatchNormCell, _SequenceBatchNormCell,
                   orthogonal_init, uniform_init)

RESETS = ("after", "before")


class _GRUCell(_OneStateCell):
    """What the family shares: the parameters (Wx, Wh, b, and b_hn where the reset comes after
    the recurrent product) and the gains a normalised cell adds (`_gains`, each 3H wide)."""

    default_init = "uniform"          # how Wx and Wh are drawn
    reset = "after"

    def _gains(self):
        """{gain name: its init value} of the normalised cells (none for GRU)."""
        return {}

    def _param_shapes(self):
        D, H = self.input_size, self.hidden_size
        shapes = {"Wx": (D, 3 * H), "Wh": (H, 3 * H), "b": (3 * H,)}
        if self.reset == "after":
            shapes["b_hn"] = (H,)
        return {**shapes, **{g: (3 * H,) for g in self._gains()}}

    def _init_params(self, rng):
        """GRU: every parameter U(-1/sqrt(H), 1/sqrt(H)), as torch.nn.GRU. The normalised cells:
        Wx, Wh by default_init, b and b_hn zeros (the normalisation centres the terms), gains
        at their init value."""
        shapes, H = self._param_shapes(), self.hidden_size
        if not self._gains():
            return {name: uniform_init(rng, shape, H) for name, shape in shapes.items()}
        draw = ((lambda shape: orthogonal_init(rng, shape)) if self.default_init == "orthogonal"
                else (lambda shape: uniform_init(rng, shape, H)))
        params = {"Wx": draw(shapes["Wx"]), "Wh": draw(shapes["Wh"])}
        for name, shape in shapes.items():
            if name not in params:
                params[name] = np.full(shape, self._gains().get(name, 0.0))
        return params


class GRU(_GRUCell):
    """The GRU, (GRU 1)-(GRU 5): r = σ(u_r + a_r), z = σ(u_z + a_z), h̃ = (1 − z) ⊙ n + z ⊙ h_{t−1}
    with u = x Wx + b, a = h_{t−1} Wh and
        reset="after" (default; PyTorch/cuDNN, Cho et al. 2014 v1):  n = tanh(u_n + r ⊙ (a_n + b_hn))
        reset="before" (Keras reset_after=False, TF1 GRUCell, ONNX linear_before_reset=0):
                                                                 n = tanh(u_n + (r ⊙ h_{t−1}) Wh_n)
    (no b_hn). Params drawn from U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.GRU. `training` has no
    effect."""

    stem = "gru"
    cache_class = GRUCache

    def __init__(self, input_size, hidden_size, *, reset="after", **kw):
        self.reset = _checks.choice(reset, "reset", RESETS)
        super().__init__(input_size, hidden_size, **kw)

    def _options(self):
        return {"reset": self.reset}


class BNGRU(_PerStepBatchNormCell, _GRUCell):
    """The GRU with recurrent batch normalization by analogy with BN-LSTM (no canonical paper
    form): batch norm without shift, per time step, of the input term x Wx and of the recurrent
    term h Wh, in the places haste's LayerNormGRU puts its layer norms, reset after.

    Params: Wx (D, 3H) and Wh (H, 3H) orthogonal, b (3H) and b_hn (H) zeros, gains gamma_x,
    gamma_h (3H) = gamma_init (0.1, as BN-LSTM). Statistics per time step over the valid rows,
    population statistics per step with the clamp past T_max, every option of BNLSTM
    (max_steps, past_max_steps, momentum 0.05, unbiased_var, pad_stats, eps >= 0); see
    base._PerStepBatchNormCell. Batch size 1 is an error in training.
    """

    stem = "bn_gru"
    cache_class = BNGRUCache
    default_init = "orthogonal"

    def __init__(self, input_size, hidden_size, *, eps=DEFAULT_EPS, momentum=BN_LSTM_MOMENTUM,
                 max_steps=None, unbiased_var=False, gamma_init=BN_GAMMA_INIT,
                 pad_stats="exclude", past_max_steps="raise", **kw):
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, eps=eps, momentum=momentum,
                         unbiased_var=unbiased_var, pad_stats=pad_stats, max_steps=max_steps,
                         past_max_steps=past_max_steps, **kw)

    def _gains(self):
        return {"gamma_x": self.gamma_init, "gamma_h": self.gamma_init}

    def _stat_widths(self):
        G = 3 * self.hidden_size
        return {"mean_x": G, "var_x": G, "mean_h": G, "var_h": G}


class SeqBNGRU(_SequenceBatchNormCell, _GRUCell):
    """Sequence-wise batch norm of the input term (Laurent et al. 2016) in a GRU: x Wx
    normalised over every valid (t, b) frame with gain gamma_x (3H) = gamma_init (1.0), the rest
    as GRU with reset after. Params Wx, Wh uniform, b and b_hn zeros. Batch size 1 works in
    training; inference uses `cell.stats` = {mean_x, var_x} (3H,), momentum 0.1."""

    stem = "seq_bn_gru"
    cache_class = SeqBNGRUCache

    def _gains(self):
        return {"gamma_x": self.gamma_init}

    def _stat_widths(self):
        return {"mean_x": 3 * self.hidden_size, "var_x": 3 * self.hidden_size}


class LNGRU(_GRUCell):
    """haste's LayerNormGRU exactly: layer norm without shift of x Wx and of h Wh over their 3H
    features (gains gamma_x, gamma_h (3H) = gamma_init, 1.0), then the input bias b and the
    recurrent bias, whose r and z parts fold into b and whose n part is b_hn inside r ⊙ (...):
    reset after. Params Wx, Wh uniform, b and b_hn zeros. Identical in training and inference;
    each row independent of the batch. eps >= 0 (haste: 1e-5)."""

    stem = "ln_gru"
    cache_class = LNGRUCache

    def __init__(self, input_size, hidden_size, *, eps=DEFAULT_EPS, gamma_init=LN_GAMMA_INIT,
                 **kw):
        self.eps = _checks.nonnegative_float(eps, "eps")     # 0 allowed: (LN 11)
        self.gamma_init = _checks.positive_float(gamma_init, "gamma_init")
        super().__init__(input_size, hidden_size, **kw)

    def _gains(self):
        return {"gamma_x": self.gamma_init, "gamma_h": self.gamma_init}

    def _options(self):
        return {"eps": self.eps}
