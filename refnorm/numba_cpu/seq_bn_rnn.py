"""SeqBN-RNN on the Numba CPU backend, mirror of refnorm/numpy_ref/seq_bn_rnn.py.

The batch × time normalisation of the input term runs once over all T·B frames with the
compiled batch-norm loops; the recurrence is the compiled vanilla RNN loop of .rnn, fed with
γ_x ⊙ û_t (the loop adds b), as the reference feeds rnn_step_forward.
"""
import numpy as np

from ..numpy_ref.seq_bn_rnn import SeqBNRNNCache
from .common import (add_input_grads, add_recurrent_weight_grad, backward_buffers_h,
                     input_projection, pack_panels)
from .norms import batchnorm_backward, batchnorm_normalize, batchnorm_stats
from .rnn import backward_rows, check_nonlinearity, forward_rows, state
from .threads import loop_blocks


def seq_bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                       nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.seq_bn_rnn.seq_bn_rnn_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    relu = check_nonlinearity(nonlinearity)
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    T, B, _ = x.shape
    H = p["Wx"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"]).reshape(T * B, H)                      # (SEQBN-RNN 1)
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    m = np.ascontiguousarray(stat_mask.reshape(T * B))
    if training:
        mean_x, var_x = np.empty(H, dt), np.empty(H, dt)
        batchnorm_stats(U, m, mean_x, var_x)                                # (BN 2), (BN 3)
    else:
        mean_x, var_x = np.array(pop["mean_x"], dtype=dt), np.array(pop["var_x"], dtype=dt)
    u_hat = np.empty((T * B, H), dt)
    batchnorm_normalize(U, m, mean_x, var_x, dt.type(eps), u_hat)           # (SEQBN-RNN 1)
    # V = γ_x ⊙ û + b (SEQBN-RNN 2): γ_x ⊙ û goes into U, which is not needed once û is
    # computed, and the loop adds b and h_{t-1} Wh and turns each row into h̃_t, in place
    h_tilde = np.multiply(p["gamma_x"], u_hat, out=U).reshape(T, B, H)
    h = state(h0, T)
    hs = np.empty((T, B, H), dt)
    forward_rows("seq_bn_rnn", mask, pack_panels(p["Wh"]), p["b"], relu, h, hs, h_tilde)
    cache = SeqBNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                          eps=eps, nonlinearity=nonlinearity, count=stat_mask.sum(),
                          u_hat=u_hat.reshape(T, B, H), mean_x=mean_x, var_x=var_x,
                          h=h, h_tilde=h_tilde)
    return hs, h[-1], cache


def seq_bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.seq_bn_rnn.seq_bn_rnn_backward.

    One chunk of all T steps (not common.backward_in_chunks_h): the batch × time statistics make
    every du_t depend on the dV of every step (SEQBN-RNN 4). One (T, B, H) array of gradients,
    not two: dWh takes dV first, then the batch-norm backward turns dV into dU in place."""
    p = cache.params
    x, h, Wx = cache.x, cache.h, p["Wx"]
    T, B, H = cache.h_tilde.shape
    D, dt = Wx.shape[0], dhs.dtype
    blocks = loop_blocks("seq_bn_rnn", dt, B, H)            # before scratch() (the planner)
    (dV,), dh = backward_buffers_h(dhs, H, 1, state_grads)
    db = np.zeros(H, dt)
    dH = dhT.copy()
    backward_rows(blocks, 0, T, dhs, cache, pack_panels(p["Wh"].T), dV, db, dH,
                  dh)                                                       # (SEQBN-RNN 3)
    dWx, dWh, dx = np.zeros((D, H), dt), np.zeros((H, H), dt), np.empty(x.shape, dt)
    add_recurrent_weight_grad(h, 0, T, dV, dWh)                 # (RNN 5), (BPTT 7)
    dgamma_x = np.zeros(H, dt)
    dU = dV.reshape(T * B, H)                     # dV becomes dU, in place
    batchnorm_backward(dU, cache.u_hat.reshape(T * B, H), cache.var_x,
                       np.ascontiguousarray(cache.stat_mask.reshape(T * B)), p["gamma_x"],
                       dt.type(cache.eps), cache.training, dU, dgamma_x,
                       np.empty(0, dt))                                     # (SEQBN-RNN 4)
    add_input_grads(x, Wx, 0, T, dU, dWx, dx)                              # (SEQBN-RNN 5)
    grads = {"Wx": dWx, "Wh": dWh, "b": db, "gamma_x": dgamma_x, "x": dx, "h0": dH}
    if state_grads:
        grads["dh"] = dh
    return grads
