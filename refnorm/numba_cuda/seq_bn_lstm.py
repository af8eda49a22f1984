"""SeqBN-LSTM on the CUDA backend, mirror of refnorm/numpy_ref/seq_bn_lstm.py.

The batch × time normalisation of the input term runs once over all T·B frames (one block per
feature column, block reductions over the frames); the recurrence is the vanilla LSTM's step
loop of .lstm fed with V = γ_x ⊙ Û + b.
"""
import numpy as np

from ..numpy_ref.seq_bn_lstm import SeqBNLSTMCache
from . import common
from .lstm import lstm_forward_steps, lstm_recurrence_backward
from .norms import batchnorm_backward, batchnorm_forward


def seq_bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None,
                        pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.seq_bn_lstm.seq_bn_lstm_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    common.require_device()
    on_device = common.is_device_array(x)
    stat_mask = common.stat_mask(mask, pad_stats)        # mask, or np.ones_like(mask)
    T, B, _ = x.shape
    H, G = params["Wh"].shape
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in params.items()}
    U = common.input_projection(xd, p["Wx"])               # U = x @ Wx        (SEQBN-LSTM 1)
    if training:
        mean_x, var_x = common.empty(G, dt), common.empty(G, dt)
    else:
        mean_x, var_x = (common.device_copy(v if common.is_device_array(v)
                                            else np.asarray(v, dtype=dt))
                         for v in (pop["mean_x"], pop["var_x"]))
    sd = common.to_device(stat_mask)
    u_hat, V = common.empty((T, B, G), dt), common.empty((T, B, G), dt)
    batchnorm_forward(common.flat(U), sd.reshape(T * B), p["gamma_x"], p["b"], eps, training,
                      mean_x, var_x, common.flat(u_hat), common.flat(V))   # (SEQBN-LSTM 2), (3)
    h, c = common.states(h0, c0, T)
    out = {"hs": common.empty((T, B, H), dt), "gates": common.empty((T, B, G), dt),
           "tanh_c": common.empty((T, B, H), dt)}
    lstm_forward_steps(V, common.to_device(mask), p["Wh"], h, c, out["hs"], out["gates"],
                       out["tanh_c"])
    out = common.finish(on_device, {**out, "u_hat": u_hat, "mean_x": mean_x, "var_x": var_x,
                                    "h": h, "c": c})
    hs = out.pop("hs")
    count = common.host(stat_mask).sum()                   # n = stat_mask.sum()   (BN 1)
    cache = SeqBNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params,
                           training=training, eps=eps, count=count, **out)
    return hs, out["h"][-1], out["c"][-1], cache


def seq_bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.seq_bn_lstm.seq_bn_lstm_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    T, B, H = dhs_d.shape
    p = {k: dev(v) for k, v in cache.params.items()}
    dV, dh, dc, dh0, dc0 = lstm_recurrence_backward(dhs_d, dhT, dcT, cache,
                                                     p["Wh"])               # (SEQBN-LSTM 4)
    u_hat = common.flat(dev(cache.u_hat))
    dU = common.empty((T, B, 4 * H), dhs_d.dtype)
    batchnorm_backward(common.flat(dV), u_hat, dev(cache.var_x),
                       dev(cache.stat_mask).reshape(T * B),
                       p["gamma_x"], cache.eps, cache.training,
                       common.flat(dU))                                     # (SEQBN-LSTM 5)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])  # (SEQBN-LSTM 6)
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dV),
             "b": common.column_sums(common.flat(dV)),                      # (LSTM 9)
             "gamma_x": common.column_sums(common.flat(dV), u_hat),        # (dy * zhat).sum (BN 8)
             "x": dx, "h0": dh0, "c0": dc0}
    return common.end_backward(on_device, grads, dh, dc, state_grads)
