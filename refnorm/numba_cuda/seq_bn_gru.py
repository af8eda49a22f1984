"""SeqBN-GRU on the CUDA backend, mirror of refnorm/numpy_ref/seq_bn_gru.py.

The batch × time normalisation of the input term runs once over all T·B frames (one block per
feature column of the 3H, block reductions over the frames: norms.batchnorm_forward, as for
SeqBN-LSTM and SeqBN-RNN); the recurrence is the reset-after GRU's step loop of .gru fed with
V = γ_x ⊙ Û + b.
"""
import numpy as np

from ..numpy_ref.seq_bn_gru import SeqBNGRUCache
from . import common
from .gru import gru_forward_steps, gru_recurrence_backward
from .norms import batchnorm_backward, batchnorm_forward
from .rnn import copy_params, states_h, with_dh


def seq_bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.seq_bn_gru.seq_bn_gru_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    common.require_device()
    on_device = common.is_device_array(x)
    p_run = copy_params(params)
    stat_mask = common.stat_mask(mask, pad_stats)        # mask, or np.ones_like(mask)
    T, B, _ = x.shape
    H = params["Wh"].shape[0]
    G = 3 * H
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in p_run.items()}
    U = common.input_projection(xd, p["Wx"])               # U = X Wx            (SEQBN-GRU 1)
    if training:
        mean_x, var_x = common.empty(G, dt), common.empty(G, dt)
    else:
        mean_x, var_x = (common.device_copy(v if common.is_device_array(v)
                                            else np.asarray(v, dtype=dt))
                         for v in (pop["mean_x"], pop["var_x"]))
    sd = common.to_device(stat_mask)
    u_hat, V = common.empty((T, B, G), dt), common.empty((T, B, G), dt)
    # Û = BN_S(U; γ_x, 0) (SEQBN-GRU 1); V = U_bn + p["b"] (SEQBN-GRU 2): b takes β's slot
    batchnorm_forward(common.flat(U), sd.reshape(T * B), p["gamma_x"], p["b"], eps, training,
                      mean_x, var_x, common.flat(u_hat), common.flat(V))
    h = states_h(h0, T)
    out = {"hs": common.empty((T, B, H), dt), "gates": common.empty((T, B, G), dt),
           "hn": common.empty((T, B, H), dt)}
    gru_forward_steps(V, common.to_device(mask), p["Wh"], p["b_hn"], h, out["hs"],
                      out["gates"], out["hn"])             # (SEQBN-GRU 2)
    out = common.finish(on_device, {**out, "u_hat": u_hat, "mean_x": mean_x, "var_x": var_x,
                                    "h": h})
    hs = out.pop("hs")
    count = common.host(stat_mask).sum()                   # n = stat_mask.sum()   (BN 1)
    cache = SeqBNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p_run, training=training,
                          eps=eps, count=count, **out)
    return hs, out["h"][-1], cache


def seq_bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.seq_bn_gru.seq_bn_gru_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    T, B, H = dhs_d.shape
    G = 3 * H
    p = {k: dev(v) for k, v in cache.params.items()}
    dV, dA, dh, dh0 = gru_recurrence_backward(dhs_d, dhT, cache, p["Wh"])  # (SEQBN-GRU 3)
    u_hat = common.flat(dev(cache.u_hat))
    dU = common.empty((T, B, G), dhs_d.dtype)
    batchnorm_backward(common.flat(dV), u_hat, dev(cache.var_x),
                       dev(cache.stat_mask).reshape(T * B),
                       p["gamma_x"], cache.eps, cache.training,
                       common.flat(dU))                                     # (SEQBN-GRU 4)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])  # (SEQBN-GRU 5)
    flat = common.flat
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dA),   # (GRU 11)
             "b": common.column_sums(flat(dV)),                             # dV.sum(axis=(0, 1))
             "b_hn": common.column_sums(flat(dA)[:, 2 * H:]),               # (GRU 8)
             "gamma_x": common.column_sums(flat(dV), u_hat),               # (dy * zhat).sum (BN 8)
             "x": dx, "h0": dh0}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
