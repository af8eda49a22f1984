"""The NumPy reference backend ("the book"): explicit forward and BPTT backward of every cell.

Never optimised: speed lives in the compiled backends, which are tested against this one.
Every backend package exports the same eight functions, `<stem>_forward` and `<stem>_backward`
for the stems lstm, bn_lstm, seq_bn_lstm, ln_lstm.
"""
from .bn_lstm import bn_lstm_backward, bn_lstm_forward
from .ln_lstm import ln_lstm_backward, ln_lstm_forward
from .lstm import lstm_backward, lstm_forward
from .seq_bn_lstm import seq_bn_lstm_backward, seq_bn_lstm_forward

__all__ = ["lstm_forward", "lstm_backward", "bn_lstm_forward", "bn_lstm_backward",
           "seq_bn_lstm_forward", "seq_bn_lstm_backward", "ln_lstm_forward", "ln_lstm_backward"]
