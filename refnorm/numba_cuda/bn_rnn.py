"""BN-RNN on the CUDA backend, mirror of refnorm/numpy_ref/bn_rnn.py.

Same signatures and BNRNNCache as the reference. Per step: the product a_t = h_{t-1} Wh, then
one fused kernel with one block per hidden unit j and the block's threads over the batch rows:
the batch statistics of column j of a_t and u_t (terms="separate") or of s_t = u_t + a_t
(terms="summed") are block reductions over the rows of the statistics mask s_t, followed by φ and
the masked carry, with no other launch. In inference the statistics arrays arrive holding the
population statistics chosen for each step and are only read. Backward mirrors it; the gain and
bias gradients are column sums over all T·B rows afterwards.

terms reaches the kernels as the integer terms_mode (common.TERMS_MODES): 1 ("summed") writes
s_t into A's column, and ŝ_t, its statistics and γ_z take the slots of â_t, mean_h, var_h and
γ_h, leaving the û_t slots alone (as LN-LSTM does for (VAR 5)).
"""
import numpy as np
from numba import cuda, float64

from ..numpy_ref.bn_rnn import STAT_NAMES, BNRNNCache
from . import common
from .common import MAX_THREADS, TERMS_MODES, kernel_mode, normalized_preactivation
from .norms import column_backward, column_count, column_normalize, column_stats
from .rnn import (NONLINEARITY_MODES, activation, activation_grad, copy_params,
                  normalized_terms, states_h, with_dh)


@cuda.jit
def bn_rnn_step_forward_kernel(t, U, A, mask, stat_mask, b, gamma_x, gamma_h, eps, training,
                               terms_mode, relu, h, hs, count, a_hat, u_hat, h_tilde, mean_h,
                               var_h, mean_x, var_x):
    """Step t for hidden unit j = blockIdx.x over all rows. U (T, B, H) = x Wx, A (B, H) =
    h_{t-1} Wh. terms_mode 1: A[:, j] becomes s_t = u_t + a_t, normalised into a_hat with
    statistics mean_h, var_h and gain gamma_h (= ŝ, mean_z, var_z, γ_z)."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    j = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B = A.shape[0]
    s = stat_mask[t]                                       # rows of step t's statistics, s_t
    n_rows = column_count(s, buf)                          # "count": s_t.sum()        (BN 1)
    n = max(n_rows, 1.0)
    if j == 0 and tid == 0:
        count[t] = n_rows
    if terms_mode == 1:
        for r in range(tid, B, nt):
            A[r, j] = U[t, r, j] + A[r, j]                 # u_t + a               (BN-RNN 3)
        cuda.syncthreads()                                 # the whole column of s_t is written
    if training:
        mu_h, v_h = column_stats(A, s, j, n, buf)          # (BN 2), (BN 3)
        if tid == 0:
            mean_h[t, j] = mu_h
            var_h[t, j] = v_h
    else:
        mu_h, v_h = mean_h[t, j], var_h[t, j]              # pop_t                      (BN 7)
    column_normalize(A, s, j, mu_h, v_h, eps, a_hat[t])    # (BN 4), (BN 5)
    if terms_mode == 0:                                    # batchnorm_forward(u_t, s_t, ...)
        if training:
            mu_x, v_x = column_stats(U[t], s, j, n, buf)
            if tid == 0:
                mean_x[t, j] = mu_x
                var_x[t, j] = v_x
        else:
            mu_x, v_x = mean_x[t, j], var_x[t, j]
        column_normalize(U[t], s, j, mu_x, v_x, eps, u_hat[t])
    for r in range(tid, B, nt):                            # this thread's rows of â, û, ŝ
        # z = u_bn + a_bn + p["b"] (BN-RNN 2), or s_bn + p["b"] (BN-RNN 3); h_new = φ(z)
        z = normalized_preactivation(t, r, j, a_hat, u_hat, gamma_h, gamma_x, b, terms_mode)
        h_new = activation(z, relu)                        # (RNN 2)
        h_tilde[t, r, j] = h_new
        if mask[t, r] > 0:                                 # carry(m_t, h_new, h_prev)  (BPTT 2)
            hs[t, r, j] = h_new                            # y = m_t[:, None] * h_new   (BPTT 3)
            h[t + 1, r, j] = h_new
        else:
            hs[t, r, j] = 0.0
            h[t + 1, r, j] = h[t, r, j]


@cuda.jit
def bn_rnn_step_backward_kernel(t, dhs, dH, mask, stat_mask, a_hat, u_hat, h_tilde, var_h, var_x,
                                gamma_x, gamma_h, eps, training, terms_mode, relu, dZ, dA, dU,
                                dh):
    """Backward of step t for hidden unit j = blockIdx.x over all rows: writes dZ[t] = dz_t,
    dA[t] = da_t, dU[t] = du_t, dh[t] = dh̃_t; dH is finished by common.carry_grad after the
    product da Whᵀ. terms_mode 1: a_hat, var_h, gamma_h hold ŝ, var_z, γ_z, dA[t] gets ds_t
    (= da_t = du_t) and dU is not written."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    j = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B = dH.shape[0]
    s = stat_mask[t]
    n = max(column_count(s, buf), 1.0)                     # n = max(m.sum(), 1)        (BN 1)
    for r in range(tid, B, nt):                            # the rows column_backward reads back
        dh_new = mask[t, r] * (dhs[t, r, j] + dH[r, j])    # valid * (dy + dH)          (BPTT 4)
        dh[t, r, j] = dh_new
        dZ[t, r, j] = dh_new * activation_grad(h_tilde[t, r, j], relu)   # (RNN 3), (BN-RNN 4)
    # da (BN-RNN 5), or ds = batchnorm_backward(dz, s_hat, ..., gamma_z) (BN-RNN 6)
    column_backward(dZ[t], a_hat[t], var_h[t, j], s, gamma_h[j], j, n, eps, training, dA[t],
                    buf)
    if terms_mode == 0:                                    # du                     (BN-RNN 5)
        column_backward(dZ[t], u_hat[t], var_x[t, j], s, gamma_x[j], j, n, eps, training, dU[t],
                        buf)


def bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                   terms="separate", nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.bn_rnn.bn_rnn_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    terms_mode = kernel_mode(TERMS_MODES, terms, "terms")
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
    U = common.input_projection(xd, p["Wx"])               # U = x @ p["Wx"]  (BN-RNN 1), (BPTT 8)
    h = states_h(h0, T)
    stats = {k: (common.empty((T, H), dt) if training
                 else common.device_copy(pop[k] if common.is_device_array(pop[k])
                                         else np.asarray(pop[k], dtype=dt)))
             for k in STAT_NAMES[terms]}
    sd = common.to_device(stat_mask)
    e = common.empty
    out = {"hs": e((T, B, H), dt), "h_tilde": e((T, B, H), dt),
           "count": e(T, sd.dtype)}                        # np.stack of s_t.sum(): the mask's type
    if terms_mode == 0:
        out.update({"u_hat": e((T, B, H), dt), "a_hat": e((T, B, H), dt)})
        terms_in = (p["gamma_x"], p["gamma_h"], out["a_hat"], out["u_hat"], stats["mean_h"],
                    stats["var_h"], stats["mean_x"], stats["var_x"])
    else:                                                  # ŝ, mean_z, var_z, γ_z  (BN-RNN 3)
        out["s_hat"] = e((T, B, H), dt)
        terms_in = (p["gamma_z"], p["gamma_z"], out["s_hat"], out["s_hat"], stats["mean_z"],
                    stats["var_z"], stats["mean_z"], stats["var_z"])
    gamma_x, gamma_h, a_hat, u_hat, mean_h, var_h, mean_x, var_x = terms_in
    md = common.to_device(mask)
    A = e((B, H), dt)
    product = common.step_product(h, p["Wh"], A)
    for t in range(T):
        product(t)                                         # a = h_prev @ p["Wh"]  (BN-RNN 1)
        bn_rnn_step_forward_kernel[H, common.THREADS](
            t, U, A, md, sd, p["b"], gamma_x, gamma_h, eps, training, terms_mode, relu, h,
            out["hs"], out["count"], a_hat, u_hat, out["h_tilde"], mean_h, var_h, mean_x, var_x)
    out = common.finish(on_device, {**out, **stats, "h": h})
    hs = out.pop("hs")
    cache = BNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p_run, training=training,
                       eps=eps, terms=terms, nonlinearity=nonlinearity, **out)
    return hs, out["h"][-1], cache


def bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_rnn.bn_rnn_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    terms_mode = kernel_mode(TERMS_MODES, cache.terms, "terms")
    relu = kernel_mode(NONLINEARITY_MODES, cache.nonlinearity, "nonlinearity")
    dev = common.to_device
    T, B, H = dhs_d.shape
    dt = dhs_d.dtype
    p = {k: dev(v) for k, v in cache.params.items()}
    a_hat, u_hat, var_h, var_x, gamma_h, gamma_x = normalized_terms(cache, p, dev, terms_mode)
    md, sd, h_tilde = dev(cache.mask), dev(cache.stat_mask), dev(cache.h_tilde)
    dZ, dA, dh = (common.empty((T, B, H), dt) for _ in range(3))
    dU = common.empty((T, B, H), dt) if terms_mode == 0 else dA    # du, da = ds, ds (BN-RNN 6)
    dH = common.device_copy(dhT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, p["Wh"], dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        bn_rnn_step_backward_kernel[H, common.THREADS](
            t, dhs_d, dH, md, sd, a_hat, u_hat, h_tilde, var_h, var_x, gamma_x, gamma_h,
            cache.eps, cache.training, terms_mode, relu, dZ, dA, dU, dh)
        product(t)                                            # da @ p["Wh"].T   (BN-RNN 7)
        common.carry_grad(t, dH, dh_rec, md)                  # (BPTT 6)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])   # (BN-RNN 8)
    flat = common.flat
    gains = ({"gamma_x": u_hat, "gamma_h": a_hat} if terms_mode == 0 else {"gamma_z": a_hat})
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dA),   # (BN-RNN 7)
             "b": common.column_sums(flat(dZ)),                   # dz.sum(axis=0)  (BN-RNN 4)
             **{name: common.column_sums(flat(dZ), flat(zhat))    # (dy * zhat).sum  (BN 8)
                for name, zhat in gains.items()},
             "x": dx, "h0": dH}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
