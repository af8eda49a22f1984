"""LN-LSTM on the CUDA backend, mirror of refnorm/numpy_ref/ln_lstm.py.

Same signatures and LNLSTMCache as the reference. Per step: the product a_t = h_{t-1} Wh, then
one fused kernel with one block per batch row and the block's threads over the features: the row
statistics of a_t and u_t (over 4H, or per gate block) and of c̃_t (over H) are block
reductions, followed by the gates, the cell, its normalisation and the masked carry. Backward
mirrors it; the gain and bias gradients are column sums over all T·B rows afterwards.

The variants reach the kernels as integers (common.CARRY_MODES, common.TERMS_MODES; 0 is the
papers' cell): carry_mode 1 carries ĉ_t = LN(c̃_t; γ_c, β_c) and adds the carry gradient before
the normalisation's backward (VAR 3), (VAR 4); terms_mode 1 normalises s_t = a_t + u_t once
(VAR 5), (VAR 6). The kernels then take ŝ_t, its statistics and γ_z in the slots of â_t,
mean_h, var_h and γ_h, and leave the û_t slots alone.
"""
import math

from numba import cuda, float64

from ..numpy_ref.ln_lstm import LNLSTMCache
from . import common
from .common import (CARRY_MODES, MAX_THREADS, TERMS_MODES, kernel_mode,
                     normalized_cell_backward, normalized_gates)
from .norms import row_backward, row_normalize, row_stats


@cuda.jit
def ln_lstm_step_forward_kernel(t, U, A, mask, b, gamma_x, gamma_h, gamma_c, beta_c, eps, groups,
                                carry_mode, terms_mode, h, c, hs, a_hat, u_hat, gates, c_new,
                                c_hat, tanh_c, mean_h, var_h, mean_x, var_x, mean_c, var_c):
    """Step t for batch row r = blockIdx.x. U (T, B, 4H) = x Wx, A (B, 4H) = h_{t-1} Wh,
    c_new (B, H) scratch for c̃_t. carry_mode 0 carries c̃_t, 1 carries ĉ_t. terms_mode 1:
    A[r] becomes s_t = a_t + u_t, normalised into a_hat with statistics mean_h, var_h and gain
    gamma_h (= ŝ, mean_s, var_s, γ_z); u_hat, mean_x, var_x, gamma_x are not touched."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    r = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    G = A.shape[1]
    H = G // 4
    w = G // groups
    if terms_mode == 1:
        for k in range(tid, G, nt):
            A[r, k] = A[r, k] + U[t, r, k]                 # a + u_t                    (VAR 5)
        cuda.syncthreads()                                 # the whole row of s_t is written
    for q in range(groups):                                # layernorm_forward(a | u_t, ..., groups)
        lo = q * w
        mu, v = row_stats(A, r, lo, w, buf)                # (LN 1), (LN 2)
        row_normalize(A, r, lo, w, mu, v, eps, a_hat[t])   # (LN 3), (LN 4)
        if tid == 0:
            mean_h[t, r, q] = mu
            var_h[t, r, q] = v
        if terms_mode == 0:
            mu_x, v_x = row_stats(U[t], r, lo, w, buf)
            row_normalize(U[t], r, lo, w, mu_x, v_x, eps, u_hat[t])
            if tid == 0:
                mean_x[t, r, q] = mu_x
                var_x[t, r, q] = v_x
    cuda.syncthreads()                                     # the whole row of â, û is written
    for j in range(tid, H, nt):
        normalized_gates(t, r, j, a_hat, u_hat, gamma_h, gamma_x, b, terms_mode, c, gates,
                         c_new)                           # (LN-LSTM 2), (VAR 5), (LN-LSTM 3)
    mu_c, v_c = row_stats(c_new, r, 0, H, buf)             # layernorm_forward(c_new..) (LN-LSTM 4)
    row_normalize(c_new, r, 0, H, mu_c, v_c, eps, c_hat[t])
    if tid == 0:
        mean_c[t, r, 0] = mu_c
        var_c[t, r, 0] = v_c
    valid = mask[t, r] > 0
    for j in range(tid, H, nt):
        c_ln = gamma_c[j] * c_hat[t, r, j] + beta_c[j]     # gamma * zhat + beta    (LN 5)
        th = math.tanh(c_ln)                               # np.tanh(c_ln)
        tanh_c[t, r, j] = th
        h_new = gates[t, r, 3 * H + j] * th                # h_new = o * tanh_c     (LN-LSTM 4)
        if valid:                                          # carry(...)             (BPTT 2)
            hs[t, r, j] = h_new                            # y = m_t * h_new        (BPTT 3)
            h[t + 1, r, j] = h_new
            c[t + 1, r, j] = c_ln if carry_mode == 1 else c_new[r, j]   # c_state  (VAR 3)
        else:
            hs[t, r, j] = 0.0
            h[t + 1, r, j] = h[t, r, j]
            c[t + 1, r, j] = c[t, r, j]


@cuda.jit
def ln_lstm_step_backward_kernel(t, dhs, dH, dC, mask, c, a_hat, u_hat, gates, c_hat, tanh_c,
                                 var_h, var_x, var_c, gamma_x, gamma_h, gamma_c, eps, groups,
                                 carry_mode, terms_mode, dZ, dc_ln, dA, dU, dh, dc):
    """Backward of step t for batch row r = blockIdx.x: writes dZ[t] = dz_t, dc_ln[t] =
    dL/d LN(c̃_t) (with carry_mode 1 the carry gradient included: dĉ_t), dA[t] = da_t, dU[t] =
    du_t, dh[t], dc[t] (the carried state's gradient); dC <- dC_{t-1}. terms_mode 1: a_hat,
    var_h, gamma_h hold ŝ, var_s, γ_z, dA[t] gets ds_t (= da_t = du_t) and dU is not written."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    r = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    H = dH.shape[1]
    w = 4 * H // groups
    valid = mask[t, r]
    for j in range(tid, H, nt):
        o = gates[t, r, 3 * H + j]
        th = tanh_c[t, r, j]
        dh_new = valid * (dhs[t, r, j] + dH[r, j])         # (BPTT 4)
        dh[t, r, j] = dh_new
        dZ[t, r, 3 * H + j] = dh_new * th * o * (1 - o)    # do (LN-LSTM 5), (LSTM 8)
        dcl = dh_new * o * (1 - th * th)                   # (LN-LSTM 5)
        if carry_mode == 1:
            dcl = dcl + valid * dC[r, j]                   # dc_ln + valid * dC  (BPTT 5), (VAR 4)
        dc_ln[t, r, j] = dcl
    row_backward(dc_ln[t], c_hat[t], var_c[t, r, 0], gamma_c, r, 0, H, eps, dc[t],
                 buf)                                      # layernorm_backward(dc_ln, ...)
    for j in range(tid, H, nt):
        normalized_cell_backward(t, r, j, valid, carry_mode, dc_ln, gates, c, dC, dc,
                                 dZ)                       # (LN-LSTM 6), (VAR 4), (BPTT 6)
    cuda.syncthreads()                                     # the whole row of dz is written
    for q in range(groups):                                # (LN-LSTM 8): da, du from dz
        lo = q * w
        # da (LN-LSTM 8), or ds = layernorm_backward(dz, s_hat, ..., gamma_z) (VAR 6)
        row_backward(dZ[t], a_hat[t], var_h[t, r, q], gamma_h, r, lo, w, eps, dA[t], buf)
        if terms_mode == 0:
            row_backward(dZ[t], u_hat[t], var_x[t, r, q], gamma_x, r, lo, w, eps, dU[t], buf)


def ln_lstm_forward(x, h0, c0, mask, params, *, eps, per_gate=False, carry="raw",
                    terms="separate"):
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_forward."""
    carry_mode = kernel_mode(CARRY_MODES, carry, "carry")
    terms_mode = kernel_mode(TERMS_MODES, terms, "terms")
    common.require_device()
    on_device = common.is_device_array(x)
    groups = 4 if per_gate else 1
    T, B, _ = x.shape
    H, G = params["Wh"].shape
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in params.items()}
    U = common.input_projection(xd, p["Wx"])               # U = x @ p["Wx"]  (LN-LSTM 1), (BPTT 8)
    h, c = common.states(h0, c0, T)
    e = common.empty
    out = {"hs": e((T, B, H), dt), "gates": e((T, B, G), dt), "c_hat": e((T, B, H), dt),
           "tanh_c": e((T, B, H), dt), "mean_c": e((T, B, 1), dt), "var_c": e((T, B, 1), dt)}
    if terms_mode == 0:
        out.update({"a_hat": e((T, B, G), dt), "u_hat": e((T, B, G), dt),
                    "mean_h": e((T, B, groups), dt), "var_h": e((T, B, groups), dt),
                    "mean_x": e((T, B, groups), dt), "var_x": e((T, B, groups), dt)})
        terms_in = (p["gamma_x"], p["gamma_h"], out["a_hat"], out["u_hat"], out["mean_h"],
                    out["var_h"], out["mean_x"], out["var_x"])
    else:                                                  # ŝ, mean_s, var_s, γ_z  (VAR 5)
        out.update({"s_hat": e((T, B, G), dt), "mean_s": e((T, B, groups), dt),
                    "var_s": e((T, B, groups), dt)})
        terms_in = (p["gamma_z"], p["gamma_z"], out["s_hat"], out["s_hat"], out["mean_s"],
                    out["var_s"], out["mean_s"], out["var_s"])
    gamma_x, gamma_h, a_hat, u_hat, mean_h, var_h, mean_x, var_x = terms_in
    md = common.to_device(mask)
    A = e((B, G), dt)
    c_new = e((B, H), dt)
    product = common.step_product(h, p["Wh"], A)
    for t in range(T):
        product(t)                                         # a = h_prev @ p["Wh"]  (LN-LSTM 1)
        ln_lstm_step_forward_kernel[B, common.THREADS](
            t, U, A, md, p["b"], gamma_x, gamma_h, p["gamma_c"], p["beta_c"], eps, groups,
            carry_mode, terms_mode, h, c, out["hs"], a_hat, u_hat, out["gates"], c_new,
            out["c_hat"], out["tanh_c"], mean_h, var_h, mean_x, var_x, out["mean_c"],
            out["var_c"])
    out = common.finish(on_device, {**out, "h": h, "c": c})
    hs = out.pop("hs")
    cache = LNLSTMCache(x=x, mask=mask, params=params, eps=eps, groups=groups, carry=carry,
                        terms=terms, **out)
    return hs, out["h"][-1], out["c"][-1], cache


def ln_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    carry_mode = kernel_mode(CARRY_MODES, cache.carry, "carry")
    terms_mode = kernel_mode(TERMS_MODES, cache.terms, "terms")
    dev = common.to_device
    T, B, H = dhs_d.shape
    G = 4 * H
    dt = dhs_d.dtype
    p = {k: dev(v) for k, v in cache.params.items()}
    if terms_mode == 0:
        a_hat, u_hat = dev(cache.a_hat), dev(cache.u_hat)
        var_h, var_x = dev(cache.var_h), dev(cache.var_x)
        gamma_h, gamma_x = p["gamma_h"], p["gamma_x"]
    else:                                                  # ŝ, var_s, γ_z          (VAR 6)
        a_hat = u_hat = dev(cache.s_hat)
        var_h = var_x = dev(cache.var_s)
        gamma_h = gamma_x = p["gamma_z"]
    c_hat, md = dev(cache.c_hat), dev(cache.mask)
    c, gates, tanh_c, var_c = dev(cache.c), dev(cache.gates), dev(cache.tanh_c), dev(cache.var_c)
    dZ, dA = common.empty((T, B, G), dt), common.empty((T, B, G), dt)
    dU = common.empty((T, B, G), dt) if terms_mode == 0 else dA    # da, du = ds, ds  (VAR 6)
    dc_ln, dh, dc = (common.empty((T, B, H), dt) for _ in range(3))
    dH, dC = common.device_copy(dhT), common.device_copy(dcT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, p["Wh"], dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        ln_lstm_step_backward_kernel[B, common.THREADS](
            t, dhs_d, dH, dC, md, c, a_hat, u_hat, gates, c_hat, tanh_c, var_h, var_x, var_c,
            gamma_x, gamma_h, p["gamma_c"], cache.eps, cache.groups, carry_mode, terms_mode,
            dZ, dc_ln, dA, dU, dh, dc)
        product(t)                                            # da @ p["Wh"].T   (LN-LSTM 9)
        common.carry_grad(t, dH, dh_rec, md)                  # (BPTT 6)
    gains = {"gamma_h": a_hat, "gamma_x": u_hat} if terms_mode == 0 else {"gamma_z": a_hat}
    grads = common.normalized_backward_grads(cache, dZ, dA, dU, dc_ln, gains, c_hat,
                                             p["Wx"], dH, dC)              # (LN-LSTM 10)
    return common.end_backward(on_device, grads, dh, dc, state_grads)
