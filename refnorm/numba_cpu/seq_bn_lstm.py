"""SeqBN-LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/seq_bn_lstm.py.

The batch × time normalisation of the input term runs once over all T·B frames with the
compiled batch-norm loops; the recurrence is the compiled vanilla LSTM loop of .lstm.
"""
import numpy as np

from ..numpy_ref.common import with_state_grads
from ..numpy_ref.seq_bn_lstm import SeqBNLSTMCache
from .common import (add_input_grads, add_recurrent_weight_grad, backward_buffers,
                     input_projection, pack_panels)
from .lstm import backward_rows, forward_rows, states
from .threads import loop_blocks
from .norms import batchnorm_backward, batchnorm_normalize, batchnorm_stats


def seq_bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None,
                        pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.seq_bn_lstm.seq_bn_lstm_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    p = params
    T, B, _ = x.shape
    G = p["Wx"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"]).reshape(T * B, G)                      # (SEQBN-LSTM 1)
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    m = np.ascontiguousarray(stat_mask.reshape(T * B))
    if training:
        mean_x, var_x = np.empty(G, dt), np.empty(G, dt)
        batchnorm_stats(U, m, mean_x, var_x)
    else:
        mean_x, var_x = (np.ascontiguousarray(pop["mean_x"], dtype=dt),
                         np.ascontiguousarray(pop["var_x"], dtype=dt))
    u_hat = np.empty((T * B, G), dt)
    batchnorm_normalize(U, m, mean_x, var_x, dt.type(eps), u_hat)          # (SEQBN-LSTM 2)
    # V = γ_x ⊙ û + b (SEQBN-LSTM 3): γ_x ⊙ û goes into U, which is not needed once û is
    # computed, and the loop adds b and turns each row into its gates, in place
    gates = np.multiply(p["gamma_x"], u_hat, out=U).reshape(T, B, G)
    h, c = states(h0, c0, T)
    hs = np.empty((T, B, G // 4), dt)
    tanh_c = np.empty((T, B, G // 4), dt)
    forward_rows("seq_bn_lstm", mask, pack_panels(p["Wh"]), p["b"], h, c, hs, gates, tanh_c)
    cache = SeqBNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params,
                           training=training, eps=eps, count=stat_mask.sum(),
                           u_hat=u_hat.reshape(T, B, G), mean_x=mean_x,
                           var_x=var_x, h=h, c=c, gates=gates, tanh_c=tanh_c)
    return hs, h[-1], c[-1], cache


def seq_bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.seq_bn_lstm.seq_bn_lstm_backward.

    One chunk of all T steps (not common.backward_in_chunks): the batch × time statistics make
    every du_t depend on the dV of every step (SEQBN-LSTM 5). One (T, B, 4H) array of gate
    gradients, not two: dWh takes dV first, then the batch-norm backward turns dV into dU in
    place (dV is not needed after it), which halves the working memory that grows with T."""
    p = cache.params
    x, h, Wx = cache.x, cache.h, p["Wx"]
    T, B, G = cache.gates.shape
    (D, _), H, dt = Wx.shape, G // 4, dhs.dtype
    blocks = loop_blocks("seq_bn_lstm", dt, B, H)           # before scratch() (the planner)
    (dV,), dh, dc = backward_buffers(dhs, G, 1, state_grads)
    db = np.zeros(G, dt)
    dH, dC = dhT.copy(), dcT.copy()
    backward_rows(blocks, 0, T, dhs, cache, pack_panels(p["Wh"].T), dV, db, dH, dC, dh,
                  dc)                                                       # (SEQBN-LSTM 4)
    dWx, dWh, dx = np.zeros((D, G), dt), np.zeros((H, G), dt), np.empty(x.shape, dt)
    add_recurrent_weight_grad(h, 0, T, dV, dWh)                 # (LSTM 9), (BPTT 7)
    dgamma_x = np.zeros(G, dt)
    dU = dV.reshape(T * B, G)                     # dV becomes dU, in place
    batchnorm_backward(dU, cache.u_hat.reshape(T * B, G), cache.var_x,
                       np.ascontiguousarray(cache.stat_mask.reshape(T * B)), p["gamma_x"],
                       dt.type(cache.eps), cache.training, dU, dgamma_x,
                       np.empty(0, dt))                                     # (SEQBN-LSTM 5)
    add_input_grads(x, Wx, 0, T, dU, dWx, dx)                              # (SEQBN-LSTM 6)
    grads = {"Wx": dWx, "Wh": dWh, "b": db, "gamma_x": dgamma_x, "x": dx, "h0": dH, "c0": dC}
    return with_state_grads(grads, (dh, dc), state_grads)
