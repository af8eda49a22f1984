"""The CUDA backend: the reference's math as Numba-CUDA kernels, whole sequences on the device.

Mirror of refnorm.numpy_ref file for file (common, norms, lstm, bn_lstm, seq_bn_lstm, ln_lstm,
rnn, bn_rnn, seq_bn_rnn, ln_rnn, gru, bn_gru, seq_bn_gru, ln_gru); the same twenty-four functions
with the same signatures, returning the same cache classes (holding NumPy arrays for NumPy
inputs, device arrays for device inputs).
Per step: the recurrent product and one fused kernel for gates (or φ) and normalisation; input
projections and weight gradients are whole-sequence products. Launch knobs (threads per block,
matmul tile, cuBLAS) live in refnorm.numba_cuda.common. Importing needs numba-cuda only; the
first call needs a GPU or the CUDA simulator (NUMBA_ENABLE_CUDASIM=1 set before numba is
imported) and says so otherwise.
"""
from .bn_gru import bn_gru_backward, bn_gru_forward
from .bn_lstm import bn_lstm_backward, bn_lstm_forward
from .bn_rnn import bn_rnn_backward, bn_rnn_forward
from .common import usable  # noqa: F401  (refnorm.backends.available asks it)
from .gru import gru_backward, gru_forward
from .ln_gru import ln_gru_backward, ln_gru_forward
from .ln_lstm import ln_lstm_backward, ln_lstm_forward
from .ln_rnn import ln_rnn_backward, ln_rnn_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward
from .seq_bn_gru import seq_bn_gru_backward, seq_bn_gru_forward
from .seq_bn_lstm import seq_bn_lstm_backward, seq_bn_lstm_forward
from .seq_bn_rnn import seq_bn_rnn_backward, seq_bn_rnn_forward

__all__ = ["lstm_forward", "lstm_backward", "bn_lstm_forward", "bn_lstm_backward",
           "seq_bn_lstm_forward", "seq_bn_lstm_backward", "ln_lstm_forward", "ln_lstm_backward",
           "rnn_forward", "rnn_backward", "bn_rnn_forward", "bn_rnn_backward",
           "seq_bn_rnn_forward", "seq_bn_rnn_backward", "ln_rnn_forward", "ln_rnn_backward",
           "gru_forward", "gru_backward", "bn_gru_forward", "bn_gru_backward",
           "seq_bn_gru_forward", "seq_bn_gru_backward", "ln_gru_forward", "ln_gru_backward"]
