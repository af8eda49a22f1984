"""Vanilla (Elman) RNN on the CUDA backend, mirror of refnorm/numpy_ref/rnn.py.

Same signatures and the same RNNCache as the reference. The whole sequence stays on the device:
U = X Wx + b, dWx, dx and dWh are single whole-sequence products; per step, one (B, H)·(H, H)
product and one kernel for φ and the masked carry (one thread per (row, hidden unit)), and
backward the mirror image: one kernel for dz_t, one product dz·Whᵀ and the masked carry of dH.
SeqBN-RNN reuses the step loops (rnn_forward_steps, rnn_recurrence_backward); BN-RNN and LN-RNN
reuse the device functions activation and activation_grad.

The nonlinearity reaches the kernels as an integer (NONLINEARITY_MODES): 0 tanh, 1 relu.
"""
import math

import numpy as np
from numba import cuda

from ..numpy_ref.rnn import RNNCache
from . import common
from .common import kernel_mode

NONLINEARITY_MODES = {"tanh": 0, "relu": 1}


def copy_params(params):
    """The book's p = {name: value.copy()}: the cache keeps what forward ran with, on the side
    (host or device) each parameter lives on."""
    return {k: common.device_copy(v) if common.is_device_array(v) else np.array(v)
            for k, v in params.items()}


def states_h(h0, T):
    """h (T+1, B, H) device array with h[0] = h0, for the steps to fill (common.states, one
    state)."""
    h0 = common.to_device(h0)
    h = common.empty((T + 1,) + tuple(h0.shape), h0.dtype)
    h[0].copy_to_device(h0)
    return h


def with_dh(grads, dh, state_grads):
    """grads, plus "dh" (T, B, H) = dL/dh̃_t when state_grads (the book's rnn_backward)."""
    return {**grads, "dh": dh} if state_grads else grads


def normalized_terms(cache, p, dev, terms_mode):
    """What the BN- and LN-RNN backward kernels read of the two normalised terms, on the device:
    (â, û, their variances v_h, v_x, gains γ_h, γ_x), or with one normalisation of the summed
    terms (terms_mode 1) ŝ, v_z and γ_z in both places (BN-RNN 6), (LN-RNN 5)."""
    if terms_mode == 0:
        return (dev(cache.a_hat), dev(cache.u_hat), dev(cache.var_h), dev(cache.var_x),
                p["gamma_h"], p["gamma_x"])
    s_hat, var_z = dev(cache.s_hat), dev(cache.var_z)
    return s_hat, s_hat, var_z, var_z, p["gamma_z"], p["gamma_z"]


@cuda.jit(device=True)
def activation(z, relu):
    """h̃ = φ(z) (RNN 2): np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0.0)."""
    if relu:
        return 0.0 if z < 0 else z                         # np.maximum(z, 0.0)  (RNN 2)
    return math.tanh(z)                                    # np.tanh(z)          (RNN 2)


@cuda.jit(device=True)
def activation_grad(h, relu):
    """φ'(z) read from the forward output h̃ = φ(z) (RNN 3)."""
    if relu:
        return 1.0 if h > 0 else 0.0                       # h_new > 0           (RNN 3)
    return 1 - h * h                                       # 1 - h_new ** 2      (RNN 3)


@cuda.jit
def rnn_step_forward_kernel(t, V, A, mask, relu, h, hs, h_tilde):
    """Step t for one (row r, hidden unit j): V (T, B, H) = x Wx + b, A (B, H) = h_{t-1} Wh."""
    i = cuda.grid(1)
    B, H = A.shape
    if i >= B * H:
        return
    r, j = i // H, i % H
    h_new = activation(V[t, r, j] + A[r, j], relu)         # z = u_t + h_prev @ p["Wh"] (RNN 1), (2)
    h_tilde[t, r, j] = h_new
    if mask[t, r] > 0:                                     # carry(m_t, h_new, h_prev)  (BPTT 2)
        hs[t, r, j] = h_new                                # y = m_t[:, None] * h_new   (BPTT 3)
        h[t + 1, r, j] = h_new
    else:
        hs[t, r, j] = 0.0
        h[t + 1, r, j] = h[t, r, j]


@cuda.jit
def rnn_step_backward_kernel(t, dhs, dH, mask, h_tilde, relu, dZ, dh):
    """Backward of step t for one (row r, hidden unit j): writes dZ[t] = dz_t and dh[t] = dh̃_t;
    dH is finished by common.carry_grad after the product dz Whᵀ."""
    i = cuda.grid(1)
    B, H = dH.shape
    if i >= B * H:
        return
    r, j = i // H, i % H
    dh_new = mask[t, r] * (dhs[t, r, j] + dH[r, j])       # valid * (dy + dH)          (BPTT 4)
    dh[t, r, j] = dh_new
    dZ[t, r, j] = dh_new * activation_grad(h_tilde[t, r, j], relu)   # dh_new * dphi  (RNN 4)


def rnn_forward_steps(V, mask, Wh, relu, h, hs, h_tilde):
    """The recurrence over t = 0 .. T-1 on device arrays (SeqBN-RNN reuses it with V = Ū + b)."""
    T, B, H = V.shape
    A = common.empty((B, H), V.dtype)
    product = common.step_product(h, Wh, A)
    for t in range(T):
        product(t)                                         # h_prev @ p["Wh"]           (RNN 1)
        rnn_step_forward_kernel[common.grid(B * H), common.THREADS](
            t, V, A, mask, relu, h, hs, h_tilde)


def rnn_forward(x, h0, mask, params, *, nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.rnn.rnn_forward."""
    relu = kernel_mode(NONLINEARITY_MODES, nonlinearity, "nonlinearity")
    common.require_device()
    on_device = common.is_device_array(x)
    p_run = copy_params(params)
    T, B, _ = x.shape
    H = params["Wh"].shape[0]
    xd = common.to_device(x)
    p = {k: common.to_device(v) for k, v in p_run.items()}
    V = common.input_projection(xd, p["Wx"], p["b"])       # U = x @ Wx + b  (RNN 1), (BPTT 8)
    h = states_h(h0, T)
    out = {"hs": common.empty((T, B, H), xd.dtype), "h_tilde": common.empty((T, B, H), xd.dtype)}
    rnn_forward_steps(V, common.to_device(mask), p["Wh"], relu, h, out["hs"], out["h_tilde"])
    out = common.finish(on_device, {**out, "h": h})
    hs = out.pop("hs")
    cache = RNNCache(x=x, mask=mask, params=p_run, nonlinearity=nonlinearity, **out)
    return hs, out["h"][-1], cache


def rnn_recurrence_backward(dhs_d, dhT, cache, Wh):
    """BPTT of the RNN recurrence (RNN 4), (RNN 5), shared with SeqBN-RNN: returns dZ = dz_t
    (T, B, H), dh = dL/dh̃_t (T, B, H) and dh0."""
    dev = common.to_device
    T, B, H = dhs_d.shape
    relu = kernel_mode(NONLINEARITY_MODES, cache.nonlinearity, "nonlinearity")
    mask, h_tilde = dev(cache.mask), dev(cache.h_tilde)
    dZ, dh = common.empty((T, B, H), dhs_d.dtype), common.empty((T, B, H), dhs_d.dtype)
    dH = common.device_copy(dhT)
    dh_rec = common.empty((B, H), dhs_d.dtype)
    product = common.step_product(dZ, Wh, dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        rnn_step_backward_kernel[common.grid(B * H), common.THREADS](
            t, dhs_d, dH, mask, h_tilde, relu, dZ, dh)
        product(t)                                         # dz @ p["Wh"].T             (RNN 5)
        common.carry_grad(t, dH, dh_rec, mask)             # (BPTT 6)
    return dZ, dh, dH


def rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.rnn.rnn_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    Wx, Wh = dev(cache.params["Wx"]), dev(cache.params["Wh"])
    dZ, dh, dh0 = rnn_recurrence_backward(dhs_d, dhT, cache, Wh)
    dWx, dx = common.input_projection_backward(dev(cache.x), dZ, Wx)     # (RNN 6), (BPTT 8)
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dZ),   # (RNN 5)
             "b": common.column_sums(common.flat(dZ)),                   # dU.sum(axis=(0, 1))
             "x": dx, "h0": dh0}
    return common.finish(on_device, with_dh(grads, dh, state_grads))
