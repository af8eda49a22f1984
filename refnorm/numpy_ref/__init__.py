"""The NumPy reference backend ("the book"): explicit forward and BPTT backward of every cell.

Never optimised: speed lives in the compiled backends, which are tested against this one.
Every backend package exports `<stem>_forward` and `<stem>_backward` for the LSTM family's stems
lstm, bn_lstm, seq_bn_lstm, ln_lstm. The book also has the RNN family's stems rnn, bn_rnn,
seq_bn_rnn, ln_rnn (one state h; the compiled mirrors are to follow, file for file), and the GRU
family's stems gru, bn_gru, seq_bn_gru, ln_gru (one state h, gate blocks r, z, n).
"""
from .bn_lstm import bn_lstm_backward, bn_lstm_forward
from .bn_rnn import bn_rnn_backward, bn_rnn_forward
from .ln_lstm import ln_lstm_backward, ln_lstm_forward
from .ln_rnn import ln_rnn_backward, ln_rnn_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward
from .seq_bn_lstm import seq_bn_lstm_backward, seq_bn_lstm_forward
from .seq_bn_rnn import seq_bn_rnn_backward, seq_bn_rnn_forward
from .gru import gru_backward, gru_forward
from .bn_gru import bn_gru_backward, bn_gru_forward
from .seq_bn_gru import seq_bn_gru_backward, seq_bn_gru_forward
from .ln_gru import ln_gru_backward, ln_gru_forward

__all__ = ["lstm_forward", "lstm_backward", "bn_lstm_forward", "bn_lstm_backward",
           "seq_bn_lstm_forward", "seq_bn_lstm_backward", "ln_lstm_forward", "ln_lstm_backward",
           "rnn_forward", "rnn_backward", "bn_rnn_forward", "bn_rnn_backward",
           "seq_bn_rnn_forward", "seq_bn_rnn_backward", "ln_rnn_forward", "ln_rnn_backward",
           "gru_forward", "gru_backward", "bn_gru_forward", "bn_gru_backward",
           "seq_bn_gru_forward", "seq_bn_gru_backward", "ln_gru_forward", "ln_gru_backward"]
