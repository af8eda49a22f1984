"""LN-RNN on the CUDA backend, mirror of refnorm/numpy_ref/ln_rnn.py.

Same signatures and LNRNNCache as the reference. Per step: the product a_t = h_{t-1} Wh, then
one fused kernel with one block per batch row and the block's threads over the H features: the
row statistics of s_t = u_t + a_t (terms="summed") or of a_t and u_t (terms="separate") are block
reductions, followed by φ and the masked carry. Backward mirrors it; the gain and bias gradients
are column sums over all T·B rows afterwards.

terms reaches the kernels as the integer terms_mode (common.TERMS_MODES; 1 is "summed", the
default here): the kernels then take ŝ_t, its statistics and γ_z in the slots of â_t, mean_h,
var_h and γ_h, and leave the û_t slots alone (as LN-LSTM does for (VAR 5)).
"""
from numba import cuda, float64

from ..numpy_ref.ln_rnn import LNRNNCache
from . import common
from .common import MAX_THREADS, TERMS_MODES, kernel_mode, normalized_preactivation
from .norms import row_backward, row_normalize, row_stats
from .rnn import (NONLINEARITY_MODES, activation, activation_grad, copy_params,
                  normalized_terms, states_h, with_dh)


@cuda.jit
def ln_rnn_step_forward_kernel(t, U, A, mask, b, gamma_x, gamma_h, eps, terms_mode, relu, h, hs,
                               a_hat, u_hat, h_tilde, mean_h, var_h, mean_x, var_x):
    """Step t for batch row r = blockIdx.x. U (T, B, H) = x Wx, A (B, H) = h_{t-1} Wh.
    terms_mode 1: A[r] becomes s_t = u_t + a_t, normalised into a_hat with statistics mean_h,
    var_h and gain gamma_h (= ŝ, mean_z, var_z, γ_z); u_hat, mean_x, var_x are not touched."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    r = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    H = A.shape[1]
    if terms_mode == 1:
        for k in range(tid, H, nt):
            A[r, k] = U[t, r, k] + A[r, k]                 # u_t + a                (LN-RNN 2)
        cuda.syncthreads()                                 # the whole row of s_t is written
    mu, v = row_stats(A, r, 0, H, buf)                     # (LN 1), (LN 2)
    row_normalize(A, r, 0, H, mu, v, eps, a_hat[t])        # (LN 3), (LN 4)
    if tid == 0:
        mean_h[t, r, 0] = mu
        var_h[t, r, 0] = v
    if terms_mode == 0:                                    # layernorm_forward(u_t, ...)
        mu_x, v_x = row_stats(U[t], r, 0, H, buf)
        row_normalize(U[t], r, 0, H, mu_x, v_x, eps, u_hat[t])
        if tid == 0:
            mean_x[t, r, 0] = mu_x
            var_x[t, r, 0] = v_x
    valid = mask[t, r] > 0
    for j in range(tid, H, nt):                            # this thread's features of â, û, ŝ
        # z = s_ln + p["b"] (LN-RNN 2), or u_ln + a_ln + p["b"] (LN-RNN 3); h_new = φ(z)
        z = normalized_preactivation(t, r, j, a_hat, u_hat, gamma_h, gamma_x, b, terms_mode)
        h_new = activation(z, relu)                        # (RNN 2)
        h_tilde[t, r, j] = h_new
        if valid:                                          # carry(m_t, h_new, h_prev)  (BPTT 2)
            hs[t, r, j] = h_new                            # y = m_t[:, None] * h_new   (BPTT 3)
            h[t + 1, r, j] = h_new
        else:
            hs[t, r, j] = 0.0
            h[t + 1, r, j] = h[t, r, j]


@cuda.jit
def ln_rnn_step_backward_kernel(t, dhs, dH, mask, a_hat, u_hat, h_tilde, var_h, var_x, gamma_x,
                                gamma_h, eps, terms_mode, relu, dZ, dA, dU, dh):
    """Backward of step t for batch row r = blockIdx.x: writes dZ[t] = dz_t, dA[t] = da_t,
    dU[t] = du_t, dh[t] = dh̃_t; dH is finished by common.carry_grad after the product da Whᵀ.
    terms_mode 1: a_hat, var_h, gamma_h hold ŝ, var_z, γ_z, dA[t] gets ds_t (= da_t = du_t) and
    dU is not written."""
    buf = cuda.shared.array(MAX_THREADS, float64)
    r = cuda.blockIdx.x
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    H = dH.shape[1]
    valid = mask[t, r]
    for j in range(tid, H, nt):                            # the features row_backward reads back
        dh_new = valid * (dhs[t, r, j] + dH[r, j])         # valid * (dy + dH)          (BPTT 4)
        dh[t, r, j] = dh_new
        dZ[t, r, j] = dh_new * activation_grad(h_tilde[t, r, j], relu)   # (RNN 3), (LN-RNN 4)
    # ds = layernorm_backward(dz, s_hat, ..., gamma_z) (LN-RNN 5), or da (LN-RNN 6)
    row_backward(dZ[t], a_hat[t], var_h[t, r, 0], gamma_h, r, 0, H, eps, dA[t], buf)
    if terms_mode == 0:                                    # du                     (LN-RNN 6)
        row_backward(dZ[t], u_hat[t], var_x[t, r, 0], gamma_x, r, 0, H, eps, dU[t], buf)


def ln_rnn_forward(x, h0, mask, params, *, eps, terms="summed", nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.ln_rnn.ln_rnn_forward."""
    terms_mode = kernel_mode(TERMS_MODES, terms, "terms")
    relu = kernel_mode(NONLINEARITY_MODES, nonlinearity, "nonlinearity")
    common.require_device()
    on_device = common.is_device_array(x)
    p_run = copy_params(params)
    T, B, _ = x.shape
    H = params["Wh"].shape[0]
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in p_run.items()}
    U = common.input_projection(xd, p["Wx"])               # U = x @ p["Wx"]  (LN-RNN 1), (BPTT 8)
    h = states_h(h0, T)
    e = common.empty
    out = {"hs": e((T, B, H), dt), "h_tilde": e((T, B, H), dt)}
    if terms_mode == 0:
        out.update({"u_hat": e((T, B, H), dt), "a_hat": e((T, B, H), dt),
                    "mean_x": e((T, B, 1), dt), "var_x": e((T, B, 1), dt),
                    "mean_h": e((T, B, 1), dt), "var_h": e((T, B, 1), dt)})
        terms_in = (p["gamma_x"], p["gamma_h"], out["a_hat"], out["u_hat"], out["mean_h"],
                    out["var_h"], out["mean_x"], out["var_x"])
    else:                                                  # ŝ, mean_z, var_z, γ_z  (LN-RNN 2)
        out.update({"s_hat": e((T, B, H), dt), "mean_z": e((T, B, 1), dt),
                    "var_z": e((T, B, 1), dt)})
        terms_in = (p["gamma_z"], p["gamma_z"], out["s_hat"], out["s_hat"], out["mean_z"],
                    out["var_z"], out["mean_z"], out["var_z"])
    gamma_x, gamma_h, a_hat, u_hat, mean_h, var_h, mean_x, var_x = terms_in
    md = common.to_device(mask)
    A = e((B, H), dt)
    product = common.step_product(h, p["Wh"], A)
    for t in range(T):
        product(t)                                         # a = h_prev @ p["Wh"]  (LN-RNN 1)
        ln_rnn_step_forward_kernel[B, common.THREADS](
            t, U, A, md, p["b"], gamma_x, gamma_h, eps, terms_mode, relu, h, out["hs"], a_hat,
            u_hat, out["h_tilde"], mean_h, var_h, mean_x, var_x)
    out = common.finish(on_device, {**out, "h": h})
    hs = out.pop("hs")
    cache = LNRNNCache(x=x, mask=mask, params=p_run, eps=eps, terms=terms,
                       nonlinearity=nonlinearity, **out)
    return hs, out["h"][-1], cache


def ln_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_rnn.ln_rnn_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    terms_mode = kernel_mode(TERMS_MODES, cache.terms, "terms")
    relu = kernel_mode(NONLINEARITY_MODES, cache.nonlinearity, "nonlinearity")
    dev = common.to_device
    T, B, H = dhs_d.shape
    dt = dhs_d.dtype
    p = {k: dev(v) for k, v in cache.params.items()}
    a_hat, u_hat, var_h, var_x, gamma_h, gamma_x = normalized_terms(cache, p, dev, terms_mode)
    md, h_tilde = dev(cache.mask), dev(cache.h_tilde)
    dZ, dA, dh = (common.empty((T, B, H), dt) for _ in range(3))
    dU = common.empty((T, B, H), dt) if terms_mode == 0 else dA    # du, da = ds, ds (LN-RNN 5)
    dH = common.device_copy(dhT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, p["Wh"], dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        ln_rnn_step_backward_kernel[B, common.THREADS](
            t, dhs_d, dH, md, a_hat, u_hat, h_tilde, var_h, var_x, gamma_x, gamma_h, cache.eps,
            terms_mode, relu, dZ, dA, dU, dh)
        product(t)                                            # da @ p["Wh"].T   (LN-RNN 7)
        common.carry_grad(t, dH, dh_rec, md)                  # (BPTT 6)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, p["Wx"])   # (LN-RNN 8)
    flat = common.flat
    gains = ({"gamma_x": u_hat, "gamma_h": a_hat} if terms_mode == 0 else {"gamma_z": a_hat})
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dA),   # (LN-RNN 7)
             "b": common.column_sums(flat(dZ)),                   # dz.sum(axis=0)  (LN-RNN 4)
             **{name: common.column_sums(flat(dZ), flat(zhat))    # (dy * zhat).sum  (LN 6)
                for name, zhat in gains.items()},
             "x": dx, "h0": dH}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
