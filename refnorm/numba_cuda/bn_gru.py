"""BN-GRU on the CUDA backend, mirror of refnorm/numpy_ref/bn_gru.py.

Same signatures and BNGRUCache as the reference. Per step: the product a_t = h_{t-1} Wh, then
one fused kernel with one block per hidden unit j and the block's threads over the batch rows:
the batch statistics of the three gate columns j, H + j, 2H + j of u_t and of a_t are block
reductions over the rows of the statistics mask s_t, followed by the reset-after gate algebra
(gru.gru_gates_forward) and the masked carry, with no other launch. In inference the statistics
arrays arrive holding the population statistics chosen for each step and are only read.
Backward mirrors it (gru.gru_gates_backward, then the six columns' BN backward), then the
product da·Whᵀ and the family's carry of dH (gru.carry_grad); the gain and bias gradients are
column sums over all T·B rows afterwards.
"""
import numpy as np
from numba import cuda, float64

from ..numpy_ref.bn_gru import STAT_NAMES, BNGRUCache
from . import common
from .common import MAX_THREADS
from .gru import carry_grad, gru_gates_backward, normalized_gates_step
from .norms import column_backward, column_count, column_normalize, column_stats
from .rnn import copy_params, states_h, with_dh


@cuda.jit
def bn_gru_step_forward_kernel(t, U, A, mask, stat_mask, b, b_hn, gamma_x, gamma_h, eps,
                               training, h, hs, count, gates, hn, u_hat, a_hat, mean_x, var_x,
                               mean_h, var_h):
    """Step t for hidden unit j = blockIdx.x over all rows. U (T, B, 3H) = x Wx, A (B, 3H) =
    h_{t-1} Wh."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    j = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, G = A.shape
    H = G // 3
    s = stat_mask[t]                                       # rows of step t's statistics, s_t
    n_rows = column_count(s, buf)                          # "count": s_t.sum()        (BN 1)
    ns = max(n_rows, 1.0)
    if j == 0 and tid == 0:
        count[t] = n_rows
    for g in range(3):                                     # batchnorm_forward(u_t | a, s_t, ...)
        k = g * H + j
        if training:
            mu_x, v_x = column_stats(U[t], s, k, ns, buf)  # (BN 2), (BN 3)
            mu_h, v_h = column_stats(A, s, k, ns, buf)
            if tid == 0:
                mean_x[t, k] = mu_x
                var_x[t, k] = v_x
                mean_h[t, k] = mu_h
                var_h[t, k] = v_h
        else:
            mu_x, v_x = mean_x[t, k], var_x[t, k]          # pop_t                      (BN 7)
            mu_h, v_h = mean_h[t, k], var_h[t, k]
        column_normalize(U[t], s, k, mu_x, v_x, eps, u_hat[t])    # (BN 4), (BN 5)
        column_normalize(A, s, k, mu_h, v_h, eps, a_hat[t])
    for row in range(tid, B, nt):                          # this thread's rows of û, â
        # gains, biases, gates and carry from û, â (BN-GRU 2), (BN-GRU 3), (BPTT 2)
        normalized_gates_step(t, row, j, H, u_hat, a_hat, gamma_x, gamma_h, b, b_hn, mask, h, hs,
                              gates, hn)


@cuda.jit
def bn_gru_step_backward_kernel(t, dhs, dH, mask, stat_mask, h, gates, hn, u_hat, a_hat, var_x,
                                var_h, gamma_x, gamma_h, eps, training, dV, dW, dU, dA, dh):
    """Backward of step t for hidden unit j = blockIdx.x over all rows: writes dV[t] = dv_t,
    dW[t] = dw_t, dU[t] = du_t, dA[t] = da_t, dh[t] = dh̃_t; dH is finished by gru.carry_grad
    after the product da Whᵀ."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    j = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, H = dH.shape
    s = stat_mask[t]
    ns = max(column_count(s, buf), 1.0)                    # n = max(m.sum(), 1)        (BN 1)
    for row in range(tid, B, nt):                          # the rows column_backward reads back
        dh_new = mask[t, row] * (dhs[t, row, j] + dH[row, j])   # valid * (dy + dH)    (BPTT 4)
        dh[t, row, j] = dh_new
        # dv, dw, dh_z = gru_gates_backward(dh_new, gates, hn, h_prev)                (BN-GRU 4)
        dv_r, dv_z, dv_n, dq = gru_gates_backward(dh_new, gates[t, row, j],
                                                  gates[t, row, H + j], gates[t, row, 2 * H + j],
                                                  hn[t, row, j], h[t, row, j])
        dV[t, row, j] = dv_r
        dV[t, row, H + j] = dv_z
        dV[t, row, 2 * H + j] = dv_n
        dW[t, row, j] = dv_r                               # dw = [dv_r | dv_z | dq]  (GRU 10)
        dW[t, row, H + j] = dv_z
        dW[t, row, 2 * H + j] = dq                         # (GRU 8)
    for g in range(3):                                     # du, da = BNback_t(dv), BNback_t(dw)
        k = g * H + j
        column_backward(dV[t], u_hat[t], var_x[t, k], s, gamma_x[k], k, ns, eps, training, dU[t],
                        buf)                               # (BN-GRU 5), (BN 10) / (BN 11)
        column_backward(dW[t], a_hat[t], var_h[t, k], s, gamma_h[k], k, ns, eps, training, dA[t],
                        buf)


def bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.bn_gru.bn_gru_forward."""
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
    U = common.input_projection(xd, p["Wx"])               # U = x @ p["Wx"]  (BN-GRU 1), (BPTT 8)
    h = states_h(h0, T)
    stats = {k: (common.empty((T, G), dt) if training
                 else common.device_copy(pop[k] if common.is_device_array(pop[k])
                                         else np.asarray(pop[k], dtype=dt)))
             for k in STAT_NAMES}
    sd = common.to_device(stat_mask)
    e = common.empty
    out = {"hs": e((T, B, H), dt), "gates": e((T, B, G), dt), "hn": e((T, B, H), dt),
           "count": e(T, sd.dtype),                        # np.stack of s_t.sum(): the mask's type
           "u_hat": e((T, B, G), dt), "a_hat": e((T, B, G), dt)}
    md = common.to_device(mask)
    A = e((B, G), dt)
    product = common.step_product(h, p["Wh"], A)
    for t in range(T):
        product(t)                                         # a = h_prev @ p["Wh"]  (BN-GRU 1)
        bn_gru_step_forward_kernel[H, common.THREADS](
            t, U, A, md, sd, p["b"], p["b_hn"], p["gamma_x"], p["gamma_h"], eps, training, h,
            out["hs"], out["count"], out["gates"], out["hn"], out["u_hat"], out["a_hat"],
            stats["mean_x"], stats["var_x"], stats["mean_h"], stats["var_h"])
    out = common.finish(on_device, {**out, **stats, "h": h})
    hs = out.pop("hs")
    cache = BNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p_run, training=training,
                       eps=eps, **out)
    return hs, out["h"][-1], cache


def bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_gru.bn_gru_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    T, B, H = dhs_d.shape
    G = 3 * H
    dt = dhs_d.dtype
    p = {k: dev(v) for k, v in cache.params.items()}
    md, sd, h = dev(cache.mask), dev(cache.stat_mask), dev(cache.h)
    gates, hn = dev(cache.gates), dev(cache.hn)
    u_hat, a_hat = dev(cache.u_hat), dev(cache.a_hat)
    var_x, var_h = dev(cache.var_x), dev(cache.var_h)
    dV, dW, dU, dA = (common.empty((T, B, G), dt) for _ in range(4))
    dh = common.empty((T, B, H), dt)
    dH = common.device_copy(dhT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, p["Wh"], dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        bn_gru_step_backward_kernel[H, common.THREADS](
            t, dhs_d, dH, md, sd, h, gates, hn, u_hat, a_hat, var_x, var_h, p["gamma_x"],
            p["gamma_h"], cache.eps, cache.training, dV, dW, dU, dA, dh)
        product(t)                                            # da @ p["Wh"].T   (BN-GRU 6)
        carry_grad(t, dH, dh_rec, md, dh, gates)              # (BPTT 6), (BN-GRU 6)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])   # (BN-GRU 7)
    flat = common.flat
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(h, dA),         # (BN-GRU 6)
             "b": common.column_sums(flat(dV)),                   # dv.sum(axis=0)  (BN-GRU 4)
             "b_hn": common.column_sums(flat(dW)[:, 2 * H:]),     # dw[:, 2H:].sum  (BN-GRU 4)
             "gamma_x": common.column_sums(flat(dV), flat(u_hat)),   # (dy * zhat).sum  (BN 8)
             "gamma_h": common.column_sums(flat(dW), flat(a_hat)),   # (BN-GRU 5)
             "x": dx, "h0": dH}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
