"""LN-GRU on the CUDA backend, mirror of refnorm/numpy_ref/ln_gru.py.

Same signatures and LNGRUCache as the reference. Per step: the product a_t = h_{t-1} Wh, then
one fused kernel with one block per batch row and the block's threads over the features: the
row statistics of u_t and of a_t over all 3H features are block reductions, followed by the
reset-after gate algebra (gru.gru_gates_forward) and the masked carry. Each thread's hidden units
j read features j, H + j, 2H + j that other threads normalised, so a barrier separates the two
(and, backward, the gate gradients from the LN backward). Backward mirrors it, then the product
da·Whᵀ and the family's carry of dH (gru.carry_grad); the gain and bias gradients are column
sums over all T·B rows afterwards.
"""
from numba import cuda, float64

from ..numpy_ref.ln_gru import LNGRUCache
from . import common
from .common import MAX_THREADS
from .gru import carry_grad, gru_gates_backward, normalized_gates_step
from .norms import row_backward, row_normalize, row_stats
from .rnn import copy_params, states_h, with_dh


@cuda.jit
def ln_gru_step_forward_kernel(t, U, A, mask, b, b_hn, gamma_x, gamma_h, eps, h, hs, gates, hn,
                               u_hat, a_hat, mean_x, var_x, mean_h, var_h):
    """Step t for batch row = blockIdx.x. U (T, B, 3H) = x Wx, A (B, 3H) = h_{t-1} Wh."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    row = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    G = A.shape[1]
    H = G // 3
    mu_x, v_x = row_stats(U[t], row, 0, G, buf)            # (LN 1), (LN 2) over all 3H
    row_normalize(U[t], row, 0, G, mu_x, v_x, eps, u_hat[t])      # (LN 3), (LN 4)
    mu_h, v_h = row_stats(A, row, 0, G, buf)
    row_normalize(A, row, 0, G, mu_h, v_h, eps, a_hat[t])
    if tid == 0:
        mean_x[t, row, 0] = mu_x
        var_x[t, row, 0] = v_x
        mean_h[t, row, 0] = mu_h
        var_h[t, row, 0] = v_h
    cuda.syncthreads()                                     # the whole row of û, â is written
    for j in range(tid, H, nt):                            # this thread's hidden units
        # gains, biases, gates and carry from û, â (LN-GRU 2), (LN-GRU 3), (BPTT 2)
        normalized_gates_step(t, row, j, H, u_hat, a_hat, gamma_x, gamma_h, b, b_hn, mask, h, hs,
                              gates, hn)


@cuda.jit
def ln_gru_step_backward_kernel(t, dhs, dH, mask, h, gates, hn, u_hat, a_hat, var_x, var_h,
                                gamma_x, gamma_h, eps, dV, dW, dU, dA, dh):
    """Backward of step t for batch row = blockIdx.x: writes dV[t] = dv_t, dW[t] = dw_t, dU[t] =
    du_t, dA[t] = da_t, dh[t] = dh̃_t; dH is finished by gru.carry_grad after the product
    da Whᵀ."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    row = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    H = dH.shape[1]
    G = 3 * H
    valid = mask[t, row]
    for j in range(tid, H, nt):
        dh_new = valid * (dhs[t, row, j] + dH[row, j])     # valid * (dy + dH)          (BPTT 4)
        dh[t, row, j] = dh_new
        # dv, dw, dh_z = gru_gates_backward(dh_new, gates, hn, h_prev)                (LN-GRU 4)
        dv_r, dv_z, dv_n, dq = gru_gates_backward(dh_new, gates[t, row, j],
                                                  gates[t, row, H + j], gates[t, row, 2 * H + j],
                                                  hn[t, row, j], h[t, row, j])
        dV[t, row, j] = dv_r
        dV[t, row, H + j] = dv_z
        dV[t, row, 2 * H + j] = dv_n
        dW[t, row, j] = dv_r                               # dw = [dv_r | dv_z | dq]  (GRU 10)
        dW[t, row, H + j] = dv_z
        dW[t, row, 2 * H + j] = dq                         # (GRU 8)
    cuda.syncthreads()                                     # the whole row of dv, dw is written
    # du = layernorm_backward(dv, u_hat, var_x, gamma_x), da likewise             (LN-GRU 5)
    row_backward(dV[t], u_hat[t], var_x[t, row, 0], gamma_x, row, 0, G, eps, dU[t], buf)
    row_backward(dW[t], a_hat[t], var_h[t, row, 0], gamma_h, row, 0, G, eps, dA[t], buf)


def ln_gru_forward(x, h0, mask, params, *, eps):
    """Same contract as refnorm.numpy_ref.ln_gru.ln_gru_forward."""
    common.require_device()
    on_device = common.is_device_array(x)
    p_run = copy_params(params)
    T, B, _ = x.shape
    H = params["Wh"].shape[0]
    G = 3 * H
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in p_run.items()}
    U = common.input_projection(xd, p["Wx"])               # U = x @ p["Wx"]  (LN-GRU 1), (BPTT 8)
    h = states_h(h0, T)
    e = common.empty
    out = {"hs": e((T, B, H), dt), "gates": e((T, B, G), dt), "hn": e((T, B, H), dt),
           "u_hat": e((T, B, G), dt), "a_hat": e((T, B, G), dt),
           "mean_x": e((T, B, 1), dt), "var_x": e((T, B, 1), dt),
           "mean_h": e((T, B, 1), dt), "var_h": e((T, B, 1), dt)}
    md = common.to_device(mask)
    A = e((B, G), dt)
    product = common.step_product(h, p["Wh"], A)
    for t in range(T):
        product(t)                                         # a = h_prev @ p["Wh"]  (LN-GRU 1)
        ln_gru_step_forward_kernel[B, common.THREADS](
            t, U, A, md, p["b"], p["b_hn"], p["gamma_x"], p["gamma_h"], eps, h, out["hs"],
            out["gates"], out["hn"], out["u_hat"], out["a_hat"], out["mean_x"], out["var_x"],
            out["mean_h"], out["var_h"])
    out = common.finish(on_device, {**out, "h": h})
    hs = out.pop("hs")
    cache = LNGRUCache(x=x, mask=mask, params=p_run, eps=eps, **out)
    return hs, out["h"][-1], cache


def ln_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_gru.ln_gru_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    T, B, H = dhs_d.shape
    G = 3 * H
    dt = dhs_d.dtype
    p = {k: dev(v) for k, v in cache.params.items()}
    md, h, gates, hn = dev(cache.mask), dev(cache.h), dev(cache.gates), dev(cache.hn)
    u_hat, a_hat = dev(cache.u_hat), dev(cache.a_hat)
    var_x, var_h = dev(cache.var_x), dev(cache.var_h)
    dV, dW, dU, dA = (common.empty((T, B, G), dt) for _ in range(4))
    dh = common.empty((T, B, H), dt)
    dH = common.device_copy(dhT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, p["Wh"], dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        ln_gru_step_backward_kernel[B, common.THREADS](
            t, dhs_d, dH, md, h, gates, hn, u_hat, a_hat, var_x, var_h, p["gamma_x"],
            p["gamma_h"], cache.eps, dV, dW, dU, dA, dh)
        product(t)                                            # da @ p["Wh"].T   (LN-GRU 6)
        carry_grad(t, dH, dh_rec, md, dh, gates)              # (BPTT 6), (LN-GRU 6)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])   # (LN-GRU 7)
    flat = common.flat
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(h, dA),         # (LN-GRU 6)
             "b": common.column_sums(flat(dV)),                   # dv.sum(axis=0)  (LN-GRU 4)
             "b_hn": common.column_sums(flat(dW)[:, 2 * H:]),     # dw[:, 2H:].sum  (LN-GRU 4)
             "gamma_x": common.column_sums(flat(dV), flat(u_hat)),   # (dy * zhat).sum  (LN 6)
             "gamma_h": common.column_sums(flat(dW), flat(a_hat)),   # (LN-GRU 5)
             "x": dx, "h0": dH}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
