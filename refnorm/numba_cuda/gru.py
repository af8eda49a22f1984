"""GRU on the CUDA backend, both reset forms, mirror of refnorm/numpy_ref/gru.py.

Same signatures and the same GRUCache as the reference. The whole sequence stays on the device:
U = X Wx + b, dWx, dx and dWh are whole-sequence products. Gate blocks r, z, n of the 3H axis.

    reset="after"   per step one (B, H)·(H, 3H) product a_t = h_{t-1} Wh and one kernel for the
                    gates, q_t, h̃_t and the masked carry (one thread per (row, hidden unit));
                    backward one kernel for du_t, da_t, one product da·Whᵀ and the carry of dH.
    reset="before"  per step the product h_{t-1} Wh^{rz}, a kernel for r, z, ρ_t = r ⊙ h_{t-1},
                    the product ρ_t Wh^n and a kernel for n, h̃_t and the carry; backward the
                    mirror image: du^z, du^n; dρ_t = du^n Wh^nᵀ; du^r; da^{rz} Wh^{rz}ᵀ; carry.

Wh^{rz} = Wh[:, :2H] and Wh^n = Wh[:, 2H:] enter the products as column views (no copies).
The device functions gru_gates_forward / gru_gates_backward are the book's reset-after gate
algebra for one (row, hidden unit) on scalars; BN-GRU and LN-GRU call them with their normalised
sides, SeqBN-GRU reuses the step loops (gru_forward_steps, gru_recurrence_backward). The
backward's carry kernel (carry_grad) adds the interpolation path z ⊙ dh̃_t, which goes through
no weight, and is shared by the family.
"""
import math

from numba import cuda

from ..numpy_ref.gru import RESETS, GRUCache
from . import common
from .common import sigmoid
from .rnn import copy_params, states_h, with_dh


def check_reset(reset, params):
    """The book's ValueErrors for reset= and for a b_hn given with reset="before"."""
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, not {reset!r}")
    if reset == "before" and "b_hn" in params:
        raise ValueError("reset='before' has no b_hn: a recurrent bias of the n block sits "
                         "outside r there and belongs in b's n block")


# -- device functions shared by the family ----------------------------------------------------
@cuda.jit(device=True)
def gru_gates_forward(vr, vz, vn, wr, wz, wn, b_hn, h_prev):
    """The book's gru_gates_forward for one (row, hidden unit): v the input side, w the recurrent
    side of the r, z, n blocks, b_hn the unit's bias. Returns r, z, n, q and h̃."""
    r = sigmoid(vr + wr)                                   # sigmoid(v[:, :H] + w[:, :H]) (GRU 2)
    z = sigmoid(vz + wz)                                   # (GRU 2)
    q = wn + b_hn                                          # q = w[:, 2H:] + b_hn        (GRU 3)
    n = math.tanh(vn + r * q)                              # np.tanh(v[:, 2H:] + r * q)  (GRU 3)
    h_new = (1 - z) * n + z * h_prev                       # (GRU 5)
    return r, z, n, q, h_new


@cuda.jit(device=True)
def gru_gates_backward(dh_new, r, z, n, q, h_prev):
    """The book's gru_gates_backward for one (row, hidden unit): returns dv^r, dv^z, dv^n (the
    input side's gradient) and dq (the n block of the recurrent side's; its r, z blocks equal
    dv^r, dv^z). The interpolation path z ⊙ dh̃_t is added by carry_grad."""
    dn = dh_new * (1 - z)                                  # (GRU 6)
    dz = dh_new * (h_prev - n)                             # (GRU 6)
    dv_n = dn * (1 - n * n)                                # (GRU 7)
    dr = dv_n * q                                          # (GRU 8)
    dq = dv_n * r                                          # (GRU 8)
    dv_r = dr * r * (1 - r)                                # (GRU 10)
    dv_z = dz * z * (1 - z)                                # (GRU 10)
    return dv_r, dv_z, dv_n, dq


@cuda.jit(device=True)
def carry(t, row, j, valid, h_new, h, hs):
    """(BPTT 2), (BPTT 3) for one (row, hidden unit) of step t: h_t and y_t."""
    if valid:                                              # carry(m_t, h_new, h_prev)  (BPTT 2)
        hs[t, row, j] = h_new                              # y = m_t[:, None] * h_new   (BPTT 3)
        h[t + 1, row, j] = h_new
    else:
        hs[t, row, j] = 0.0
        h[t + 1, row, j] = h[t, row, j]


@cuda.jit(device=True)
def normalized_gates_step(t, row, j, H, u_hat, a_hat, gamma_x, gamma_h, b, b_hn, mask, h, hs,
                          gates, hn):
    """One (row, hidden unit) of a BN- or LN-GRU step from its normalised terms û, â: the
    gains, the biases, the gate algebra and the carry (BN-GRU 2), (BN-GRU 3), (LN-GRU 2),
    (LN-GRU 3) -- the two cells differ only in the statistics that made û, â."""
    # v = gamma_x * u_hat + p["b"]; w = gamma_h * a_hat
    # gates, q, h_new = gru_gates_forward(v, w, h_prev, p["b_hn"])
    r, z, n, q, h_new = gru_gates_forward(
        gamma_x[j] * u_hat[t, row, j] + b[j],
        gamma_x[H + j] * u_hat[t, row, H + j] + b[H + j],
        gamma_x[2 * H + j] * u_hat[t, row, 2 * H + j] + b[2 * H + j],
        gamma_h[j] * a_hat[t, row, j], gamma_h[H + j] * a_hat[t, row, H + j],
        gamma_h[2 * H + j] * a_hat[t, row, 2 * H + j], b_hn[j], h[t, row, j])
    gates[t, row, j] = r
    gates[t, row, H + j] = z
    gates[t, row, 2 * H + j] = n
    hn[t, row, j] = q
    carry(t, row, j, mask[t, row] > 0, h_new, h, hs)      # (BPTT 2), (BPTT 3)


# -- reset="after" ----------------------------------------------------------------------------
@cuda.jit
def gru_step_forward_kernel(t, V, A, b_hn, mask, h, hs, gates, hn):
    """Step t for one (row, hidden unit j): V (T, B, 3H) = x Wx + b, A (B, 3H) = h_{t-1} Wh."""
    i = cuda.grid(1)
    B, H = h.shape[1], h.shape[2]
    if i >= B * H:
        return
    row, j = i // H, i % H
    # gates, q, h_new = gru_gates_forward(u_t, a, h_prev, p["b_hn"])   (GRU 2), (GRU 3), (GRU 5)
    r, z, n, q, h_new = gru_gates_forward(V[t, row, j], V[t, row, H + j], V[t, row, 2 * H + j],
                                          A[row, j], A[row, H + j], A[row, 2 * H + j], b_hn[j],
                                          h[t, row, j])
    gates[t, row, j] = r
    gates[t, row, H + j] = z
    gates[t, row, 2 * H + j] = n
    hn[t, row, j] = q
    carry(t, row, j, mask[t, row] > 0, h_new, h, hs)      # (BPTT 2), (BPTT 3)


@cuda.jit
def gru_step_backward_kernel(t, dhs, dH, mask, h, gates, hn, dU, dA, dh):
    """Backward of step t for one (row, hidden unit j): writes dU[t] = du_t, dA[t] = da_t (n
    block dq_t) and dh[t] = dh̃_t; dH is finished by carry_grad after the product da Whᵀ."""
    i = cuda.grid(1)
    B, H = dH.shape
    if i >= B * H:
        return
    row, j = i // H, i % H
    dh_new = mask[t, row] * (dhs[t, row, j] + dH[row, j])  # valid * (dy + dH)      (BPTT 4)
    dh[t, row, j] = dh_new
    # du, da, dh_z = gru_gates_backward(dh_new, gates, cache.hn[t], h_prev)   (GRU 6)-(GRU 10)
    dv_r, dv_z, dv_n, dq = gru_gates_backward(dh_new, gates[t, row, j], gates[t, row, H + j],
                                              gates[t, row, 2 * H + j], hn[t, row, j],
                                              h[t, row, j])
    dU[t, row, j] = dv_r
    dU[t, row, H + j] = dv_z
    dU[t, row, 2 * H + j] = dv_n
    dA[t, row, j] = dv_r                                   # da = [du_r | du_z | dq]   (GRU 10)
    dA[t, row, H + j] = dv_z
    dA[t, row, 2 * H + j] = dq                             # (GRU 8)


# -- reset="before" ---------------------------------------------------------------------------
@cuda.jit
def gru_before_reset_kernel(t, V, A, h, gates, rh):
    """Step t, first half, for one (row, hidden unit j): A (B, 2H) = h_{t-1} Wh^{rz}; writes r,
    z and ρ_t = r ⊙ h_{t-1}."""
    i = cuda.grid(1)
    B, H = h.shape[1], h.shape[2]
    if i >= B * H:
        return
    row, j = i // H, i % H
    r = sigmoid(V[t, row, j] + A[row, j])          # sigmoid(u_t[:, :H] + a_rz[:, :H])  (GRU 2)
    gates[t, row, j] = r
    gates[t, row, H + j] = sigmoid(V[t, row, H + j] + A[row, H + j])      # (GRU 2)
    rh[t, row, j] = r * h[t, row, j]                       # rh = r * h_prev            (GRU 4)


@cuda.jit
def gru_before_update_kernel(t, V, N, mask, h, hs, gates):
    """Step t, second half, for one (row, hidden unit j): N (B, H) = ρ_t Wh^n; writes n, h̃_t
    and the masked carry."""
    i = cuda.grid(1)
    B, H = h.shape[1], h.shape[2]
    if i >= B * H:
        return
    row, j = i // H, i % H
    z = gates[t, row, H + j]
    n = math.tanh(V[t, row, 2 * H + j] + N[row, j])  # np.tanh(u_t[:, 2H:] + rh @ Wh^n)  (GRU 4)
    gates[t, row, 2 * H + j] = n
    h_new = (1 - z) * n + z * h[t, row, j]                 # (GRU 5)
    carry(t, row, j, mask[t, row] > 0, h_new, h, hs)      # (BPTT 2), (BPTT 3)


@cuda.jit
def gru_before_step_backward_kernel(t, dhs, dH, mask, h, gates, dU, dh):
    """Backward of step t, first half, for one (row, hidden unit j): dh[t] = dh̃_t and the z, n
    blocks of dU[t]."""
    i = cuda.grid(1)
    B, H = dH.shape
    if i >= B * H:
        return
    row, j = i // H, i % H
    z = gates[t, row, H + j]
    n = gates[t, row, 2 * H + j]
    dh_new = mask[t, row] * (dhs[t, row, j] + dH[row, j])  # valid * (dy + dH)      (BPTT 4)
    dh[t, row, j] = dh_new
    dn = dh_new * (1 - z)                                  # (GRU 6)
    dz = dh_new * (h[t, row, j] - n)                       # (GRU 6)
    dU[t, row, 2 * H + j] = dn * (1 - n * n)               # du_n = dn * (1 - n * n)  (GRU 7)
    dU[t, row, H + j] = dz * z * (1 - z)                   # du_z = dz * z * (1 - z)  (GRU 10)


@cuda.jit
def gru_before_reset_backward_kernel(t, dRH, h, gates, dU):
    """Backward of step t, second half, for one (row, hidden unit j), after the product dRH =
    dρ_t = du^n Wh^nᵀ: the r block of dU[t]."""
    i = cuda.grid(1)
    B, H = dRH.shape
    if i >= B * H:
        return
    row, j = i // H, i % H
    r = gates[t, row, j]
    dr = dRH[row, j] * h[t, row, j]                        # dr = drh * h_prev          (GRU 9)
    dU[t, row, j] = dr * r * (1 - r)                       # du_r = dr * r * (1 - r)    (GRU 10)


# -- shared by both forms and the family ------------------------------------------------------
@cuda.jit
def carry_grad_kernel(t, dH, dh_rec, mask, dh, gates, dRH, before):
    """dH <- dH_{t-1} for one (row, hidden unit j), after the product dh_rec = da Whᵀ (with
    before = 1: da^{rz} Wh^{rz}ᵀ, plus the ρ path from dRH = dρ_t)."""
    i = cuda.grid(1)
    B, H = dH.shape
    if i >= B * H:
        return
    row, j = i // H, i % H
    dh_z = dh[t, row, j] * gates[t, row, H + j]            # dh_z = dh_new * z          (GRU 6)
    # dh_prev = (1 - valid) * dH + dh_z + da @ Wh.T (+ dh_rho)   (BPTT 6), (GRU 11), (GRU 12)
    acc = (1 - mask[t, row]) * dH[row, j] + dh_z + dh_rec[row, j]
    if before:
        acc += dRH[row, j] * gates[t, row, j]              # dh_rho = drh * r           (GRU 9)
    dH[row, j] = acc


@cuda.jit
def join_columns_kernel(P, Q, out):
    # out = np.concatenate([P, Q], axis=-1), P (N, F1), Q (N, F2): reset="before"'s
    # dWh = np.concatenate([h_prev.T @ da_rz, rh.T @ du_n], axis=-1)      (GRU 11), (GRU 9)
    i = cuda.grid(1)
    N, F = out.shape
    F1 = P.shape[1]
    if i < N * F:
        r, k = i // F, i % F
        out[r, k] = P[r, k] if k < F1 else Q[r, k - F1]


def carry_grad(t, dH, dh_rec, mask, dh, gates, dRH=None):
    """dH <- (1 - m_t) dH + z ⊙ dh̃_t + dh_rec (+ r ⊙ dρ_t) in place (BPTT 6), (GRU 12)."""
    B, H = dH.shape
    carry_grad_kernel[common.grid(B * H), common.THREADS](
        t, dH, dh_rec, mask, dh, gates, dh_rec if dRH is None else dRH, dRH is not None)


def join_columns(P, Q):
    out = common.empty((P.shape[0], P.shape[1] + Q.shape[1]), P.dtype)
    join_columns_kernel[common.grid(out.shape[0] * out.shape[1]), common.THREADS](P, Q, out)
    return out


def gru_forward_steps(V, mask, Wh, b_hn, h, hs, gates, hn):
    """The reset-after recurrence over t = 0 .. T-1 on device arrays (SeqBN-GRU reuses it with
    V = γ_x ⊙ Û + b)."""
    T, B, G = V.shape
    H = G // 3
    A = common.empty((B, G), V.dtype)
    product = common.step_product(h, Wh, A)
    for t in range(T):
        product(t)                                         # a = h_prev @ Wh            (GRU 1)
        gru_step_forward_kernel[common.grid(B * H), common.THREADS](
            t, V, A, b_hn, mask, h, hs, gates, hn)


def gru_before_forward_steps(V, mask, Wh, h, hs, gates, rh):
    """The reset-before recurrence over t = 0 .. T-1 on device arrays."""
    T, B, G = V.shape
    H = G // 3
    A = common.empty((B, 2 * H), V.dtype)
    N = common.empty((B, H), V.dtype)
    product_rz = common.step_product(h, Wh[:, :2 * H], A)
    product_n = common.step_product(rh, Wh[:, 2 * H:], N)
    launch = (common.grid(B * H), common.THREADS)
    for t in range(T):
        product_rz(t)                                      # a_rz = h_prev @ Wh[:, :2H] (GRU 1)
        gru_before_reset_kernel[launch](t, V, A, h, gates, rh)
        product_n(t)                                       # rh @ Wh[:, 2H:]            (GRU 4)
        gru_before_update_kernel[launch](t, V, N, mask, h, hs, gates)


def gru_forward(x, h0, mask, params, *, reset="after"):
    """Same contract as refnorm.numpy_ref.gru.gru_forward."""
    check_reset(reset, params)
    common.require_device()
    on_device = common.is_device_array(x)
    p_run = copy_params(params)
    T, B, _ = x.shape
    H = params["Wh"].shape[0]
    xd = common.to_device(x)
    dt = xd.dtype
    p = {k: common.to_device(v) for k, v in p_run.items()}
    V = common.input_projection(xd, p["Wx"], p["b"])       # U = x @ Wx + b  (GRU 1), (BPTT 8)
    h = states_h(h0, T)
    md = common.to_device(mask)
    out = {"hs": common.empty((T, B, H), dt), "gates": common.empty((T, B, 3 * H), dt)}
    if reset == "after":
        out["hn"] = common.empty((T, B, H), dt)
        gru_forward_steps(V, md, p["Wh"], p["b_hn"], h, out["hs"], out["gates"], out["hn"])
    else:
        out["rh"] = common.empty((T, B, H), dt)
        gru_before_forward_steps(V, md, p["Wh"], h, out["hs"], out["gates"], out["rh"])
    out = common.finish(on_device, {**out, "h": h})
    hs = out.pop("hs")
    cache = GRUCache(x=x, mask=mask, params=p_run, reset=reset, **out)
    return hs, out["h"][-1], cache


def gru_recurrence_backward(dhs_d, dhT, cache, Wh):
    """BPTT of the reset-after recurrence (GRU 6)-(GRU 12), shared with SeqBN-GRU: returns dU =
    du_t (T, B, 3H), dA = da_t (T, B, 3H), dh = dL/dh̃_t (T, B, H) and dh0."""
    dev = common.to_device
    T, B, H = dhs_d.shape
    dt = dhs_d.dtype
    md, h, gates, hn = dev(cache.mask), dev(cache.h), dev(cache.gates), dev(cache.hn)
    dU, dA = common.empty((T, B, 3 * H), dt), common.empty((T, B, 3 * H), dt)
    dh = common.empty((T, B, H), dt)
    dH = common.device_copy(dhT)
    dh_rec = common.empty((B, H), dt)
    product = common.step_product(dA, Wh, dh_rec, trans_b=True)
    for t in range(T - 1, -1, -1):
        gru_step_backward_kernel[common.grid(B * H), common.THREADS](
            t, dhs_d, dH, md, h, gates, hn, dU, dA, dh)
        product(t)                                         # da @ Wh.T                 (GRU 11)
        carry_grad(t, dH, dh_rec, md, dh, gates)           # (BPTT 6), (GRU 12)
    return dU, dA, dh, dH


def gru_before_recurrence_backward(dhs_d, dhT, cache, Wh):
    """BPTT of the reset-before recurrence (GRU 6), (GRU 7), (GRU 9)-(GRU 12): returns dU = du_t
    (T, B, 3H), dh = dL/dh̃_t (T, B, H) and dh0. da^{rz} is dU's r, z blocks."""
    dev = common.to_device
    T, B, H = dhs_d.shape
    dt = dhs_d.dtype
    md, h, gates = dev(cache.mask), dev(cache.h), dev(cache.gates)
    dU, dh = common.empty((T, B, 3 * H), dt), common.empty((T, B, H), dt)
    dH = common.device_copy(dhT)
    dRH, dh_rec = common.empty((B, H), dt), common.empty((B, H), dt)
    product_n = common.step_product(dU[:, :, 2 * H:], Wh[:, 2 * H:], dRH, trans_b=True)
    product_rz = common.step_product(dU[:, :, :2 * H], Wh[:, :2 * H], dh_rec, trans_b=True)
    launch = (common.grid(B * H), common.THREADS)
    for t in range(T - 1, -1, -1):
        gru_before_step_backward_kernel[launch](t, dhs_d, dH, md, h, gates, dU, dh)
        product_n(t)                                       # drh = du_n @ Wh[:, 2H:].T  (GRU 9)
        gru_before_reset_backward_kernel[launch](t, dRH, h, gates, dU)
        product_rz(t)                                      # da_rz @ Wh[:, :2H].T      (GRU 11)
        carry_grad(t, dH, dh_rec, md, dh, gates, dRH)      # (BPTT 6), (GRU 12)
    return dU, dh, dH


def gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.gru.gru_backward."""
    on_device, dhs_d = common.start_backward(dhs)
    dev = common.to_device
    T, B, H = dhs_d.shape
    Wx, Wh = dev(cache.params["Wx"]), dev(cache.params["Wh"])
    flat = common.flat
    if cache.reset == "after":
        dU, dA, dh, dh0 = gru_recurrence_backward(dhs_d, dhT, cache, Wh)
        dWh = common.recurrent_weight_grad(dev(cache.h), dA)             # (GRU 11)
    else:
        dU, dh, dh0 = gru_before_recurrence_backward(dhs_d, dhT, cache, Wh)
        h_prev = dev(cache.h)[:-1].reshape(T * B, H)
        dWh_rz = common.empty((H, 2 * H), dhs_d.dtype)
        common.matmul(h_prev, flat(dU)[:, :2 * H], dWh_rz, trans_a=True)     # h_prev.T @ da_rz
        dWh_n = common.empty((H, H), dhs_d.dtype)
        common.matmul(flat(dev(cache.rh)), flat(dU)[:, 2 * H:], dWh_n, trans_a=True)  # rh.T @ du_n
        dWh = join_columns(dWh_rz, dWh_n)                  # (GRU 11), (GRU 9)
    dWx, dx = common.input_projection_backward(dev(cache.x), dU, Wx)     # (GRU 13), (BPTT 8)
    grads = {"Wx": dWx, "Wh": dWh, "b": common.column_sums(flat(dU))}   # dU.sum(axis=(0, 1))
    if cache.reset == "after":
        grads["b_hn"] = common.column_sums(flat(dA)[:, 2 * H:])        # da[:, 2H:].sum  (GRU 8)
    grads.update(x=dx, h0=dh0)
    return common.finish(on_device, with_dh(grads, dh, state_grads))
