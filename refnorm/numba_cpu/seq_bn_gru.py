"""SeqBN-GRU on the Numba CPU backend, mirror of refnorm/numpy_ref/seq_bn_gru.py.

The batch × time normalisation of the input term runs once over all T·B frames with the
compiled batch-norm loops; the recurrence is the compiled reset-after GRU loop of .gru, fed
with v_t = γ_x ⊙ û_t + b in place of x_t Wx + b, as the reference feeds gru_step_forward.
"""
import numpy as np

from ..numpy_ref.seq_bn_gru import SeqBNGRUCache
from .common import (add_input_grads, add_recurrent_weight_grad, backward_buffers_h,
                     input_projection, pack_panels)
from .gru import backward_rows, forward_rows
from .norms import batchnorm_backward, batchnorm_normalize, batchnorm_stats
from .rnn import state
from .threads import loop_blocks


def seq_bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.seq_bn_gru.seq_bn_gru_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    T, B, _ = x.shape
    G = p["Wx"].shape[1]                                                    # 3H
    dt = x.dtype
    U = input_projection(x, p["Wx"]).reshape(T * B, G)                      # (SEQBN-GRU 1)
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    m = np.ascontiguousarray(stat_mask.reshape(T * B))
    if training:
        mean_x, var_x = np.empty(G, dt), np.empty(G, dt)
        batchnorm_stats(U, m, mean_x, var_x)                                # (BN 2), (BN 3)
    else:
        mean_x, var_x = np.array(pop["mean_x"], dtype=dt), np.array(pop["var_x"], dtype=dt)
    u_hat = np.empty((T * B, G), dt)
    batchnorm_normalize(U, m, mean_x, var_x, dt.type(eps), u_hat)           # (SEQBN-GRU 1)
    # V = γ_x ⊙ û + b (SEQBN-GRU 2) goes into U, which is not needed once û is computed, and
    # the loop turns each step of it into the gates, in place
    gates = np.multiply(p["gamma_x"], u_hat, out=U)
    gates += p["b"]                                          # V = U_bn + p["b"]
    gates = gates.reshape(T, B, G)
    h = state(h0, T)
    hs, hn = np.empty((T, B, G // 3), dt), np.empty((T, B, G // 3), dt)
    forward_rows("seq_bn_gru", mask, pack_panels(p["Wh"]), p["b_hn"], h, hs, gates, hn)
    cache = SeqBNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                          eps=eps, count=stat_mask.sum(), u_hat=u_hat.reshape(T, B, G),
                          mean_x=mean_x, var_x=var_x, h=h, gates=gates, hn=hn)
    return hs, h[-1], cache


def seq_bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.seq_bn_gru.seq_bn_gru_backward.

    One chunk of all T steps (not common.backward_in_chunks_h): the batch × time statistics make
    every du_t depend on the dV of every step (SEQBN-GRU 4). dWh takes the da_t of every step;
    then the batch-norm backward turns dV into dU in place."""
    p = cache.params
    x, h, Wx = cache.x, cache.h, p["Wx"]
    T, B, G = cache.gates.shape
    D, dt = Wx.shape[0], dhs.dtype
    blocks = loop_blocks("seq_bn_gru", dt, B, G // 3)       # before scratch() (the planner)
    (dV, dA), dh = backward_buffers_h(dhs, G, 2, state_grads)
    db, db_hn = np.zeros(G, dt), np.zeros(G // 3, dt)
    dH = dhT.copy()
    backward_rows(blocks, 0, T, dhs, cache, pack_panels(p["Wh"].T), dV, dA, db, db_hn, dH,
                  dh)                                                       # (SEQBN-GRU 3)
    dWx, dWh, dx = np.zeros((D, G), dt), np.zeros((G // 3, G), dt), np.empty(x.shape, dt)
    add_recurrent_weight_grad(h, 0, T, dA, dWh)                             # (GRU 11), (BPTT 7)
    dgamma_x = np.zeros(G, dt)
    dU = dV.reshape(T * B, G)                     # dV becomes dU, in place
    batchnorm_backward(dU, cache.u_hat.reshape(T * B, G), cache.var_x,
                       np.ascontiguousarray(cache.stat_mask.reshape(T * B)), p["gamma_x"],
                       dt.type(cache.eps), cache.training, dU, dgamma_x,
                       np.empty(0, dt))                                     # (SEQBN-GRU 4)
    add_input_grads(x, Wx, 0, T, dU, dWx, dx)                              # (SEQBN-GRU 5)
    grads = {"Wx": dWx, "Wh": dWh, "b": db, "b_hn": db_hn, "gamma_x": dgamma_x, "x": dx,
             "h0": dH}
    if state_grads:
        grads["dh"] = dh
    return grads
