"""BN-LSTM on the CUDA backend, mirror of refnorm/numpy_ref/bn_lstm.py.

Same signatures and BNLSTMCache as the reference. Per step: the product a_t = h_{t-1} Wh, then
one fused kernel with one block per hidden unit j and the block's threads over the batch rows:
the batch statistics of the four gate columns of a_t and u_t and of column j of c̃_t are block
reductions over the rows of the statistics mask s_t, so the whole step -- normalisation, gates,
cell, its normalisation, the masked carry -- needs no other launch. In inference the statistics
arrays arrive holding the population statistics chosen for each step and are only read.
Backward mirrors it; the gain and bias gradients are column sums over all T·B rows afterwards.

carry="normalized" (VAR 3) reaches the kernels as the integer carry_mode = 1 (0: "raw"): the
step carries ĉ_t = BN_t(c̃_t; γ_c, β_c) instead of c̃_t, and backward adds the carry gradient
before the normalisation's backward instead of after it (VAR 4).
"""
import math

import numpy as np
from numba import cuda, float64

from ..numpy_ref.bn_lstm import STAT_NAMES, BNLSTMCache
from . import common
from .common import (CARRY_MODES, MAX_THREADS, kernel_mode, normalized_cell_backward,
                     normalized_gates)
from .norms import column_backward, column_count, column_normalize, column_stats


@cuda.jit
def bn_lstm_step_forward_kernel(t, U, A, mask, stat_mask, b, gamma_x, gamma_h, gamma_c, beta_c,
                                eps, training, carry_mode, h, c, hs, count, a_hat, u_hat, gates,
                                c_new, c_hat, tanh_c, mean_h, var_h, mean_x, var_x, mean_c,
                                var_c):
    """Step t for hidden unit j = blockIdx.x over all rows. U (T, B, 4H) = x Wx, A (B, 4H) =
    h_{t-1} Wh, c_new (B, H) scratch for c̃_t; carry_mode 0 carries c̃_t, 1 carries ĉ_t."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    j = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, G = A.shape
    H = G // 4
    s = stat_mask[t]                                       # rows of step t's statistics, s_t
    n_rows = column_count(s, buf)                          # "count": s_t.sum()        (BN 1)
    n = max(n_rows, 1.0)
    if j == 0 and tid == 0:
        count[t] = n_rows
    for q in range(4):                                     # batchnorm_forward(a | u_t, s_t, ...)
        k = q * H + j
        if training:
            mu_h, v_h = column_stats(A, s, k, n, buf)      # (BN 2), (BN 3)
            mu_x, v_x = column_stats(U[t], s, k, n, buf)
            if tid == 0:
                mean_h[t, k] = mu_h
                var_h[t, k] = v_h
                mean_x[t, k] = mu_x
                var_x[t, k] = v_x
        else:
            mu_h, v_h = mean_h[t, k], var_h[t, k]          # pop_t                      (BN 7)
            mu_x, v_x = mean_x[t, k], var_x[t, k]
        column_normalize(A, s, k, mu_h, v_h, eps, a_hat[t])       # (BN 5)
        column_normalize(U[t], s, k, mu_x, v_x, eps, u_hat[t])
    for r in range(tid, B, nt):
        normalized_gates(t, r, j, a_hat, u_hat, gamma_h, gamma_x, b, 0, c, gates,
                         c_new)                           # (BN-LSTM 2), (BN-LSTM 3)
    if training:
        mu_c, v_c = column_stats(c_new, s, j, n, buf)      # batchnorm_forward(c_new, s_t, ...)
        if tid == 0:
            mean_c[t, j] = mu_c
            var_c[t, j] = v_c
    else:
        mu_c, v_c = mean_c[t, j], var_c[t, j]
    column_normalize(c_new, s, j, mu_c, v_c, eps, c_hat[t])       # (BN-LSTM 4)
    for r in range(tid, B, nt):
        c_bn = gamma_c[j] * c_hat[t, r, j] + beta_c[j]     # gamma * zhat + beta    (BN 6)
        th = math.tanh(c_bn)                               # np.tanh(c_bn)
        tanh_c[t, r, j] = th
        h_new = gates[t, r, 3 * H + j] * th                # h_new = o * tanh_c     (BN-LSTM 4)
        if mask[t, r] > 0:                                 # carry(...)             (BPTT 2)
            hs[t, r, j] = h_new                            # y = m_t * h_new        (BPTT 3)
            h[t + 1, r, j] = h_new
            c[t + 1, r, j] = c_bn if carry_mode == 1 else c_new[r, j]   # c_state  (VAR 3)
        else:
            hs[t, r, j] = 0.0
            h[t + 1, r, j] = h[t, r, j]
            c[t + 1, r, j] = c[t, r, j]


@cuda.jit
def bn_lstm_step_backward_kernel(t, dhs, dH, dC, mask, stat_mask, c, a_hat, u_hat, gates, c_hat,
                                 tanh_c, var_h, var_x, var_c, gamma_x, gamma_h, gamma_c, eps,
                                 training, carry_mode, dZ, dc_bn, dA, dU, dh, dc):
    """Backward of step t for hidden unit j = blockIdx.x over all rows: writes dZ[t] = dz_t,
    dc_bn[t] = dL/d BN_t(c̃_t) (with carry_mode 1 the carry gradient included: dĉ_t), dA[t] =
    da_t, dU[t] = du_t, dh[t], dc[t] (the carried state's gradient); dC <- dC_{t-1}."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    j = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, H = dH.shape
    m = mask[t]
    s = stat_mask[t]
    n = max(column_count(s, buf), 1.0)                     # n = max(m.sum(), 1)        (BN 1)
    for r in range(tid, B, nt):
        o = gates[t, r, 3 * H + j]
        th = tanh_c[t, r, j]
        dh_new = m[r] * (dhs[t, r, j] + dH[r, j])          # (BPTT 4)
        dh[t, r, j] = dh_new
        dZ[t, r, 3 * H + j] = dh_new * th * o * (1 - o)    # do (BN-LSTM 6), (LSTM 8)
        dcb = dh_new * o * (1 - th * th)                   # (BN-LSTM 6)
        if carry_mode == 1:
            dcb = dcb + m[r] * dC[r, j]                    # dc_bn + valid * dC  (BPTT 5), (VAR 4)
        dc_bn[t, r, j] = dcb
    column_backward(dc_bn[t], c_hat[t], var_c[t, j], s, gamma_c[j], j, n, eps, training, dc[t],
                    buf)                                   # batchnorm_backward(dc_bn, ...)
    for r in range(tid, B, nt):
        valid = m[r]
        normalized_cell_backward(t, r, j, valid, carry_mode, dc_bn, gates, c, dC, dc,
                                 dZ)                       # (BN-LSTM 7), (VAR 4), (BPTT 6)
    for q in range(4):                                     # (BN-LSTM 9): da, du from dz
        k = q * H + j
        column_backward(dZ[t], a_hat[t], var_h[t, k], s, gamma_h[k], k, n, eps, training, dA[t],
                        buf)
        column_backward(dZ[t], u_hat[t], var_x[t, k], s, gamma_x[k], k, n, eps, training, dU[t],
                        buf)


def bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                    carry="raw"):
    """Same contract as refnorm.numpy_ref.bn_lstm.bn_lstm_forward."""
    carry_mode = kernel_mode(CARRY_MODES, carry, "carry")
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
    U = common.input_projection(xd, p["Wx"])               # U = x @ p["Wx"]  (BN-LSTM 1), (BPTT 8)
    h, c = common.states(h0, c0, T)
    width = {"mean_x": G, "var_x": G, "mean_h": G, "var_h": G, "mean_c": H, "var_c": H}
    stats = {k: (common.empty((T, width[k]), dt) if training
                 else common.device_copy(pop[k] if common.is_device_array(pop[k])
                                         else np.asarray(pop[k], dtype=dt)))
             for k in STAT_NAMES}
    out = {"hs": common.empty((T, B, H), dt), "count": common.empty(T, dt),
           "a_hat": common.empty((T, B, G), dt), "u_hat": common.empty((T, B, G), dt),
           "gates": common.empty((T, B, G), dt), "c_hat": common.empty((T, B, H), dt),
           "tanh_c": common.empty((T, B, H), dt)}
    md, sd = common.to_device(mask), common.to_device(stat_mask)
    A = common.empty((B, G), dt)
    c_new = common.empty((B, H), dt)
    product = common.step_product(h, p["Wh"], A)
    for t in range(T):
        product(t)                                         # a = h_prev @ p["Wh"]  (BN-LSTM 1)
        bn_lstm_step_forward_kernel[H, common.THREADS](
            t, U, A, md, sd, p["b"], p["gamma_x"], p["gamma_h"], p["gamma_c"], p["beta_c"],
            eps, training, carry_mode, h, c, out["hs"], out["count"], out["a_hat"], out["u_hat"],
            out["gates"], c_new, out["c_hat"], out["tanh_c"], stats["mean_h"], stats["var_h"],
            stats["mean_x"], stats["var_x"], stats["mean_c"], stats["var_c"])
    out = common.finish(on_device, {**out, **stats, "h": h, "c": c})
    hs = out.pop("hs")
    cache = BNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params, training=training,
                        eps=eps, carry=carry, **out)
    return hs, out["h"][-1], out["c"][-1], cache


def bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_lstm.bn_lstm_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    carry_mode = kernel_mode(CARRY_MODES, cache.carry, "carry")
    dev = common.to_device
    T, B, H = dhs_d.shape
    G = 4 * H
    dt = dhs_d.dtype
    p = {k: dev(v) for k, v in cache.params.items()}
    a_hat, u_hat, c_hat = dev(cache.a_hat), dev(cache.u_hat), dev(cache.c_hat)
    md, sd = dev(cache.mask), dev(cache.stat_mask)
    c, gates, tanh_c = dev(cache.c), dev(cache.gates), dev(cache.tanh_c)
    var_h, var_x, var_c = dev(cache.var_h), dev(cache.var_x), dev(cache.var_c)
    dZ, dA, dU = (common.empty((T, B, G), dt) for _ in range(3))
    dc_bn, dh, dc = (common.empty((T, B, H), dt) for _ in range(3))
    dH, dC = common.device_copy(dhT), common.device_copy(dcT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, p["Wh"], dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        bn_lstm_step_backward_kernel[H, common.THREADS](
            t, dhs_d, dH, dC, md, sd, c, a_hat, u_hat, gates, c_hat, tanh_c, var_h, var_x, var_c,
            p["gamma_x"], p["gamma_h"], p["gamma_c"], cache.eps, cache.training,
            carry_mode, dZ, dc_bn, dA, dU, dh, dc)
        product(t)                                            # da @ p["Wh"].T   (BN-LSTM 10)
        common.carry_grad(t, dH, dh_rec, md)                  # (BPTT 6)
    grads = common.normalized_backward_grads(cache, dZ, dA, dU, dc_bn,
                                             {"gamma_h": a_hat, "gamma_x": u_hat}, c_hat,
                                             p["Wx"], dH, dC)              # (BN-LSTM 11)
    return common.end_backward(on_device, grads, dh, dc, state_grads)
