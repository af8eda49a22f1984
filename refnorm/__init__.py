"""refnorm: the ground-truth implementation of recurrent cells with batch and layer normalization.

    cell = refnorm.LNLSTM(input_size, hidden_size, seed=0)
    hs, (hT, cT), cache = cell.forward(x)          # x (T, B, D), time-major
    grads = cell.backward(dhs, cache)              # every parameter and x, h0, c0

    cell = refnorm.BNRNN(input_size, hidden_size, seed=0)      # one state: hs, hT, cache
    hs, hT, cache = cell.forward(x)

Families (FAMILIES): the LSTM (LSTM, BNLSTM (Cooijmans et al. 2016), SeqBNLSTM (Laurent et al.
2016), LNLSTM (Ba et al. 2016)), the vanilla RNN (RNN, BNRNN, SeqBNRNN, LNRNN) and the GRU (GRU,
BNGRU, SeqBNGRU, LNGRU (haste's LayerNormGRU)), each cell plain, with per-step batch norm,
sequence-wise batch norm and layer norm. Stack composes any of them into stacked and
bidirectional networks with normalisation between the layers:

    net = refnorm.Stack("lstm", D, H, num_layers=2, bidirectional=True, between="ln")
    ys, (hT, cT), cache = net.forward(x, lengths=lengths)

Equations and their derivations: derivations/ in the source tree.

For checking another framework: refnorm.presets (the cell each peer computes), refnorm.interop
(weight converters), refnorm.validate(module) (a per-tensor comparison report; the module
refnorm.validation) and refnorm.golden (test vectors on disk).
"""
from .backends import available as available_backends
from .cells import (BNGRU, BNLSTM, BNRNN, GRU, LNGRU, LNLSTM, LNRNN, LSTM, RNN, SeqBNGRU,
                    SeqBNLSTM, SeqBNRNN)
from .gradcheck import gradcheck, numerical_gradient, randomize, relative_error
from . import presets  # noqa: E402  (after the cells it builds)
from .stack import Stack
from .validation import validate

__version__ = "0.1.0"

# every cell by its stem, and the stems of each family (plain, per-step BN, sequence-wise BN, LN)
FAMILIES = {"lstm": ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"),
            "rnn": ("rnn", "bn_rnn", "seq_bn_rnn", "ln_rnn"),
            "gru": ("gru", "bn_gru", "seq_bn_gru", "ln_gru")}
CELLS = {"lstm": LSTM, "bn_lstm": BNLSTM, "seq_bn_lstm": SeqBNLSTM, "ln_lstm": LNLSTM,
         "rnn": RNN, "bn_rnn": BNRNN, "seq_bn_rnn": SeqBNRNN, "ln_rnn": LNRNN,
         "gru": GRU, "bn_gru": BNGRU, "seq_bn_gru": SeqBNGRU, "ln_gru": LNGRU}


__all__ = ["validate", "presets", "Stack", "LSTM", "BNLSTM", "SeqBNLSTM", "LNLSTM", "RNN", "BNRNN",
           "SeqBNRNN", "LNRNN", "GRU", "BNGRU", "SeqBNGRU", "LNGRU", "CELLS", "FAMILIES", "gradcheck",
           "numerical_gradient", "relative_error", "randomize", "available_backends",
           "__version__"]
