"""Vanilla LSTM on the CUDA backend, mirror of refnorm/numpy_ref/lstm.py.

Same signatures and the same LSTMCache as the reference. The whole sequence stays on the device:
U = X Wx + b, dWx, dx and dWh are single whole-sequence products; per step, one (B, H)·(H, 4H)
product and one kernel for the gates and the state update (one thread per (row, hidden unit)),
and backward the mirror image: one kernel for the step's gradients, one product dz·Whᵀ and the
masked carry of dH.
"""
import math

from numba import cuda

from ..numpy_ref.lstm import LSTMCache
from . import common
from .common import sigmoid


@cuda.jit
def lstm_step_forward_kernel(t, V, A, mask, h, c, hs, gates, tanh_c):
    """Step t for one (row r, hidden unit j): V (T, B, 4H) = x Wx + b, A (B, 4H) = h_{t-1} Wh."""
    i_ = cuda.grid(1)
    B, G = A.shape
    H = G // 4
    if i_ >= B * H:
        return
    r, j = i_ // H, i_ % H
    # z = u_t + h_prev @ p["Wh"]; gates = gates_forward(z)               (LSTM 1), (LSTM 2)
    i = sigmoid(V[t, r, j] + A[r, j])
    f = sigmoid(V[t, r, H + j] + A[r, H + j])
    g = math.tanh(V[t, r, 2 * H + j] + A[r, 2 * H + j])
    o = sigmoid(V[t, r, 3 * H + j] + A[r, 3 * H + j])
    gates[t, r, j] = i
    gates[t, r, H + j] = f
    gates[t, r, 2 * H + j] = g
    gates[t, r, 3 * H + j] = o
    c_new = f * c[t, r, j] + i * g                         # c_new = f * c_prev + i * g (LSTM 3)
    th = math.tanh(c_new)
    tanh_c[t, r, j] = th
    h_new = o * th                                         # h_new = o * tanh_c         (LSTM 4)
    if mask[t, r] > 0:                                     # carry(m_t, new, old)       (BPTT 2)
        hs[t, r, j] = h_new                                # y = m_t[:, None] * h_new   (BPTT 3)
        h[t + 1, r, j] = h_new
        c[t + 1, r, j] = c_new
    else:
        hs[t, r, j] = 0.0
        h[t + 1, r, j] = h[t, r, j]
        c[t + 1, r, j] = c[t, r, j]


@cuda.jit
def lstm_step_backward_kernel(t, dhs, dH, dC, mask, c, gates, tanh_c, dZ, dh, dc):
    """Backward of step t for one (row r, hidden unit j): writes dZ[t] = dz_t, dh[t], dc[t] and
    dC <- dC_{t-1}; dH is finished by common.carry_grad after the product dz Whᵀ."""
    i_ = cuda.grid(1)
    B, H = dH.shape
    if i_ >= B * H:
        return
    r, j = i_ // H, i_ % H
    valid = mask[t, r]
    i = gates[t, r, j]
    f = gates[t, r, H + j]
    g = gates[t, r, 2 * H + j]
    o = gates[t, r, 3 * H + j]
    th = tanh_c[t, r, j]
    dh_new = valid * (dhs[t, r, j] + dH[r, j])             # (BPTT 4)
    dc_new = valid * dC[r, j]                              # (BPTT 5)
    do = dh_new * th                                       # (LSTM 5)
    dc_new = dc_new + dh_new * o * (1 - th * th)           # (LSTM 6)
    dh[t, r, j] = dh_new
    dc[t, r, j] = dc_new
    di = dc_new * g                                        # (LSTM 7)
    df = dc_new * c[t, r, j]
    dg = dc_new * i
    dZ[t, r, j] = di * i * (1 - i)                         # (LSTM 8)
    dZ[t, r, H + j] = df * f * (1 - f)
    dZ[t, r, 2 * H + j] = dg * (1 - g * g)
    dZ[t, r, 3 * H + j] = do * o * (1 - o)
    dC[r, j] = (1 - valid) * dC[r, j] + dc_new * f         # (BPTT 6)


def lstm_forward_steps(V, mask, Wh, h, c, hs, gates, tanh_c):
    """The recurrence over t = 0 .. T-1 on device arrays (SeqBN-LSTM reuses it with V = û + b)."""
    T, B, G = V.shape
    A = common.empty((B, G), V.dtype)
    product = common.step_product(h, Wh, A)
    for t in range(T):
        product(t)                                         # h_prev @ p["Wh"]           (LSTM 1)
        lstm_step_forward_kernel[common.grid(B * G // 4), common.THREADS](
            t, V, A, mask, h, c, hs, gates, tanh_c)


def lstm_backward_steps(dhs, dhT, dcT, mask, c, gates, tanh_c, Wh, dZ, dh, dc):
    """BPTT over t = T-1 .. 0: fills dZ (T, B, 4H), dh, dc (T, B, H); returns dh0, dc0."""
    T, B, H = dhs.shape
    dH, dC = common.device_copy(dhT), common.device_copy(dcT)
    dh_rec = common.empty((B, H), dhs.dtype)
    product = common.step_product(dZ, Wh, dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        lstm_step_backward_kernel[common.grid(B * H), common.THREADS](
            t, dhs, dH, dC, mask, c, gates, tanh_c, dZ, dh, dc)
        product(t)                                         # dz @ p["Wh"].T             (LSTM 9)
        common.carry_grad(t, dH, dh_rec, mask)             # (BPTT 6)
    return dH, dC


def lstm_forward(x, h0, c0, mask, params):
    """Same contract as refnorm.numpy_ref.lstm.lstm_forward."""
    common.require_device()
    on_device = common.is_device_array(x)
    T, B, _ = x.shape
    H, G = params["Wh"].shape
    xd, md = common.to_device(x), common.to_device(mask)
    p = {k: common.to_device(v) for k, v in params.items()}
    V = common.input_projection(xd, p["Wx"], p["b"])       # U = x @ Wx + b  (LSTM 1), (BPTT 8)
    h, c = common.states(h0, c0, T)
    out = {"hs": common.empty((T, B, H), xd.dtype), "gates": common.empty((T, B, G), xd.dtype),
           "tanh_c": common.empty((T, B, H), xd.dtype)}
    lstm_forward_steps(V, md, p["Wh"], h, c, out["hs"], out["gates"], out["tanh_c"])
    out = common.finish(on_device, {**out, "h": h, "c": c})
    hs = out.pop("hs")
    cache = LSTMCache(x=x, mask=mask, params=params, **out)
    return hs, out["h"][-1], out["c"][-1], cache


def lstm_recurrence_backward(dhs_d, dhT, dcT, cache, Wh):
    """BPTT of the LSTM recurrence (LSTM 5)-(LSTM 9), shared with SeqBN-LSTM: returns dZ = dz_t
    (T, B, 4H), dh, dc (T, B, H) = dL/dh̃_t, dL/dc̃_t, and dh0, dc0."""
    dev = common.to_device
    T, B, H = dhs_d.shape
    dZ = common.empty((T, B, 4 * H), dhs_d.dtype)
    dh, dc = common.empty((T, B, H), dhs_d.dtype), common.empty((T, B, H), dhs_d.dtype)
    dh0, dc0 = lstm_backward_steps(dhs_d, dhT, dcT, dev(cache.mask), dev(cache.c),
                                   dev(cache.gates), dev(cache.tanh_c), Wh, dZ, dh, dc)
    return dZ, dh, dc, dh0, dc0


def lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.lstm.lstm_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    Wx, Wh = dev(cache.params["Wx"]), dev(cache.params["Wh"])
    dZ, dh, dc, dh0, dc0 = lstm_recurrence_backward(dhs_d, dhT, dcT, cache, Wh)
    dWx, dx = common.input_projection_backward(dev(cache.x), dZ, Wx)     # (LSTM 10), (BPTT 8)
    grads = {"Wx": dWx, "Wh": common.recurrent_weight_grad(dev(cache.h), dZ),   # (LSTM 9)
             "b": common.column_sums(common.flat(dZ)),                   # dU.sum(axis=(0, 1))
             "x": dx, "h0": dh0, "c0": dc0}
    return common.end_backward(on_device, grads, dh, dc, state_grads)
