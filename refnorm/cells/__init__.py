"""The user-facing cells: parameters, argument checks, population statistics, and dispatch to a
backend (refnorm.numpy_ref by default). One module per family, on the machinery of base.py:

    base.py   what every cell shares: checks, dispatch, the BN cells' population statistics
    lstm.py   LSTM, BNLSTM, SeqBNLSTM, LNLSTM      states (h, c)
    rnn.py    RNN, BNRNN, SeqBNRNN, LNRNN          state h
    gru.py    GRU, BNGRU, SeqBNGRU, LNGRU          state h

A cell's stem names everything of it: its class's `stem`, the backend functions
<stem>_forward / <stem>_backward in refnorm/numpy_ref/<stem>.py (and numba_cpu/, numba_cuda/),
derivations/<stem>.md. "The BNRNN backward" is refnorm/numpy_ref/bn_rnn.py: bn_rnn_backward.
"""
from .base import orthogonal_init, uniform_init
from .gru import BNGRU, GRU, LNGRU, SeqBNGRU
from .lstm import BNLSTM, LNLSTM, LSTM, SeqBNLSTM
from .rnn import BNRNN, LNRNN, RNN, SeqBNRNN

__all__ = ["LSTM", "BNLSTM", "SeqBNLSTM", "LNLSTM", "RNN", "BNRNN", "SeqBNRNN", "LNRNN",
           "GRU", "BNGRU", "SeqBNGRU", "LNGRU", "uniform_init", "orthogonal_init"]
