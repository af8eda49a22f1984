"""SeqBN-RNN on the CUDA backend, mirror of refnorm/numpy_ref/seq_bn_rnn.py.

The batch × time normalisation of the input term runs once over all T·B frames (one block per
feature column, block reductions over the frames: norms.batchnorm_forward, as for SeqBN-LSTM);
the recurrence is the vanilla RNN's step loop of .rnn fed with V = γ_x ⊙ Û + b.
"""
import numpy as np

from ..numpy_ref.seq_bn_rnn import SeqBNRNNCache
from . import common
from .common import kernel_mode
from .norms import batchnorm_backward, batchnorm_forward
from .rnn import (NONLINEARITY_MODES, copy_params, rnn_forward_steps, rnn_recurrence_backward,
                  states_h, with_dh)


def seq_bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                       nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.seq_bn_rnn.seq_bn_rnn_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    relu = kernel_mode(NONLINEARITY_MODES, nonlinearity, "nonlinearity")
    common.require_device()
    on_device = common.is_device_array(x)
    p_run = copy_params(params)
    stat_mask = common.stat_mask(mask, pad_stats)        # mask, or np.ones_like(mask)
    T, B, _ = x.shape
    H = params["Wh"].shape[0]
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in p_run.items()}
    U = common.input_projection(xd, p["Wx"])               # U = X Wx            (SEQBN-RNN 1)
    if training:
        mean_x, var_x = common.empty(H, dt), common.empty(H, dt)
    else:
        mean_x, var_x = (common.device_copy(v if common.is_device_array(v)
                                            else np.asarray(v, dtype=dt))
                         for v in (pop["mean_x"], pop["var_x"]))
    sd = common.to_device(stat_mask)
    u_hat, V = common.empty((T, B, H), dt), common.empty((T, B, H), dt)
    # Ū = BN_S(U; γ_x, 0) (SEQBN-RNN 1); V = U_bn + p["b"] (SEQBN-RNN 2): b takes β's slot
    batchnorm_forward(common.flat(U), sd.reshape(T * B), p["gamma_x"], p["b"], eps, training,
                      mean_x, var_x, common.flat(u_hat), common.flat(V))
    h = states_h(h0, T)
    out = {"hs": common.empty((T, B, H), dt), "h_tilde": common.empty((T, B, H), dt)}
    rnn_forward_steps(V, common.to_device(mask), p["Wh"], relu, h, out["hs"],
                      out["h_tilde"])                      # (SEQBN-RNN 2)
    out = common.finish(on_device, {**out, "u_hat": u_hat, "mean_x": mean_x, "var_x": var_x,
                                    "h": h})
    hs = out.pop("hs")
    count = common.host(stat_mask).sum()                   # n = stat_mask.sum()   (BN 1)
    cache = SeqBNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p_run, training=training,
                          eps=eps, nonlinearity=nonlinearity, count=count, **out)
    return hs, out["h"][-1], cache


def seq_bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.seq_bn_rnn.seq_bn_rnn_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    T, B, H = dhs_d.shape
    p = {k: dev(v) for k, v in cache.params.items()}
    dV, dh, dh0 = rnn_recurrence_backward(dhs_d, dhT, cache, p["Wh"])     # (SEQBN-RNN 3)
    u_hat = common.flat(dev(cache.u_hat))
    dU = common.empty((T, B, H), dhs_d.dtype)
    batchnorm_backward(common.flat(dV), u_hat, dev(cache.var_x),
                       dev(cache.stat_mask).reshape(T * B),
                       p["gamma_x"], cache.eps, cache.training,
                       common.flat(dU))                                     # (SEQBN-RNN 4)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])  # (SEQBN-RNN 5)
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dV),   # (RNN 5)
             "b": common.column_sums(common.flat(dV)),                      # dV.sum(axis=(0, 1))
             "gamma_x": common.column_sums(common.flat(dV), u_hat),        # (dy * zhat).sum (BN 8)
             "x": dx, "h0": dh0}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
