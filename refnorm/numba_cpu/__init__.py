"""The Numba CPU backend: the reference's math with the step loops compiled by Numba.

Mirror of refnorm.numpy_ref file for file (common, norms, lstm, bn_lstm, seq_bn_lstm,
ln_lstm); the same eight functions with the same signatures, returning the same cache classes,
so every test of the reference runs on it unchanged. Whole-sequence products stay NumPy BLAS
calls; the step loops run their one product per step in a kernel of their own on a weight
packed once per sequence (common.packed_matmul).
"""
from .bn_lstm import bn_lstm_backward, bn_lstm_forward
from .ln_lstm import ln_lstm_backward, ln_lstm_forward
from .lstm import lstm_backward, lstm_forward
from .seq_bn_lstm import seq_bn_lstm_backward, seq_bn_lstm_forward

__all__ = ["lstm_forward", "lstm_backward", "bn_lstm_forward", "bn_lstm_backward",
           "seq_bn_lstm_forward", "seq_bn_lstm_backward", "ln_lstm_forward", "ln_lstm_backward"]
