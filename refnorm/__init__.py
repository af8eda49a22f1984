"""refnorm: the ground-truth implementation of LSTM cells with batch and layer normalization.

    cell = refnorm.LNLSTM(input_size, hidden_size, seed=0)
    hs, (hT, cT), cache = cell.forward(x)          # x (T, B, D), time-major
    grads = cell.backward(dhs, cache)              # every parameter and x, h0, c0

Cells: LSTM, BNLSTM (Cooijmans et al. 2016), SeqBNLSTM (Laurent et al. 2016), LNLSTM (Ba et al.
2016). Equations and their derivations: derivations/ in the source tree.

For checking another framework: refnorm.presets (the cell each peer computes), refnorm.interop
(weight converters), refnorm.validate(module) (a per-tensor comparison report; the module
refnorm.validation) and refnorm.golden (test vectors on disk).
"""
from .backends import available as available_backends
from .cells import BNLSTM, LNLSTM, LSTM, SeqBNLSTM
from .gradcheck import gradcheck, numerical_gradient, randomize, relative_error
from . import presets  # noqa: E402  (after the cells it builds)
from .validation import validate

__version__ = "0.1.0"

CELLS = {"lstm": LSTM, "bn_lstm": BNLSTM, "seq_bn_lstm": SeqBNLSTM, "ln_lstm": LNLSTM}


__all__ = ["validate", "presets", "LSTM", "BNLSTM", "SeqBNLSTM", "LNLSTM", "CELLS", "gradcheck",
           "numerical_gradient", "relative_error", "randomize", "available_backends",
           "__version__"]
