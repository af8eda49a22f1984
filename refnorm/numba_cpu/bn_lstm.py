"""BN-LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/bn_lstm.py.

Same signatures and BNLSTMCache as the reference. Per step: one (B, H)·(H, 4H) product, the
batch statistics of a_t, u_t and c̃_t by fused column reductions over the valid rows, and the
gates fused into one pass. In inference the statistics arrays arrive holding the population
statistics chosen for each step and are only read.

carry="normalized" (VAR 3), (VAR 4) is a flag of the two loops: the forward carries
γ_c ⊙ ĉ_t + β_c in place of c̃_t, the backward adds the carry gradient before the cell's BN
backward. The term shifts and a run-time forget bias arrive folded into b (VAR 1), (VAR 2).
eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so ẑ = 0 and dz = 0 there (BN 15).
"""

import numpy as np
from numba import njit

from ..numpy_ref.bn_lstm import STAT_NAMES, BNLSTMCache
from .common import (
    JIT,
    pack_panels,
    packed_matmul,
    product_workspace,
    input_projection,
    cell_output_forward,
    backward_in_chunks,
    normalized_gain_grads,
    normalized_carry_backward,
    normalized_gates_backward,
    normalized_gates_forward,
    normalized_output_backward,
    recurrent_state_backward,
)
from .lstm import states
from .norms import batchnorm_backward, batchnorm_normalize, batchnorm_stats


@njit(**JIT)
def bn_lstm_forward_loop(U, mask, stat_mask, Whp, b, gamma_x, gamma_h, gamma_c, beta_c, eps,
                         training, normalized_carry, h, c, hs, count, a_hat, u_hat, gates, c_hat,
                         tanh_c, mean_h, var_h, mean_x, var_x, mean_c, var_c):
    """gates may be U itself (bn_lstm_forward passes it so): step t reads U[t] only before it
    writes gates[t]; keep it that way. Whp is common.pack_panels(Wh)."""
    T, B, G = U.shape
    H = G // 4
    a = np.empty((B, G), U.dtype)
    c_new = np.empty((B, H), U.dtype)
    c_norm = np.empty((B, H), U.dtype)
    work = product_workspace(B, H, Whp)
    for t in range(T):
        m = stat_mask[t]                                   # rows of step t's statistics, s_t
        packed_matmul(h[t], Whp, a, work)                  # a = h_prev @ p["Wh"]  (BN-LSTM 1)
        if training:                                       # batchnorm_forward(a, s_t, ...)
            count[t] = batchnorm_stats(a, m, mean_h[t], var_h[t])
            batchnorm_stats(U[t], m, mean_x[t], var_x[t])
        else:
            count[t] = m.sum()
        batchnorm_normalize(a, m, mean_h[t], var_h[t], eps, a_hat[t])
        batchnorm_normalize(U[t], m, mean_x[t], var_x[t], eps, u_hat[t])
        normalized_gates_forward(a_hat[t], u_hat[t], gamma_h, gamma_x, b, c[t], gates[t],
                                 c_new)                            # (BN-LSTM 2), (BN-LSTM 3)
        if training:
            batchnorm_stats(c_new, m, mean_c[t], var_c[t])
        batchnorm_normalize(c_new, m, mean_c[t], var_c[t], eps, c_hat[t])       # (BN-LSTM 4)
        cell_output_forward(c_hat[t], gamma_c, beta_c, gates[t], c_new, c_norm, normalized_carry,
                            mask[t], h[t], c[t], h[t + 1], c[t + 1], hs[t],
                            tanh_c[t])                          # (BN-LSTM 4), (VAR 3)


@njit(**JIT)
def bn_lstm_backward_loop(t0, t1, dhs, mask, stat_mask, c, a_hat, u_hat, gates, c_hat,
                          tanh_c, var_h, var_x, var_c, gamma_x, gamma_h, gamma_c, WhTp, eps, training,
                          normalized_carry, dA, dU, db, dgamma_x, dgamma_h, dgamma_c, dbeta_c,
                          dH, dC, dh, dc):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks), dH, dC (B, H) carried in place
    from dL/dh_{t1}, dL/dc_{t1} to dL/dh_{t0}, dL/dc_{t0}: fills dA[t - t0] = da_t and
    dU[t - t0] = du_t, adds to the gain and bias gradients; fills dh, dc
    (common.backward_buffers) with dL/dh̃_t and the gradient of the carried cell (dc̃_t, or
    dĉ_t with normalized_carry). WhTp is common.pack_panels(Wh.T)."""
    T, B, H = dhs.shape
    G = 4 * H
    dz = np.empty((B, G), dhs.dtype)
    dc_bn = np.empty((B, H), dhs.dtype)
    dc_norm = np.empty((B, H), dhs.dtype)
    dc_new = np.empty((B, H), dhs.dtype)
    dh_rec = np.empty((B, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    work = product_workspace(B, G, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, dc, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        m = mask[t]
        s = stat_mask[t]
        normalized_output_backward(dhs[t], dH, m, gates[t], tanh_c[t], dh[k], dz,
                                   dc_bn)                          # (BPTT 4), (BN-LSTM 6)
        if normalized_carry:
            normalized_carry_backward(dC, m, dc_bn, dc[k])         # (BPTT 5), (VAR 4)
            batchnorm_backward(dc[k], c_hat[t], var_c[t], s, gamma_c, eps, training, dc_norm,
                               dgamma_c, dbeta_c)                    # (VAR 4)
            normalized_gates_backward(dC, dc_norm, m, gates[t], c[t], True, dc_new, dz,
                                      db)                          # (VAR 4), (BN-LSTM 8)
        else:
            batchnorm_backward(dc_bn, c_hat[t], var_c[t], s, gamma_c, eps, training, dc_norm,
                               dgamma_c, dbeta_c)                    # (BN-LSTM 7)
            normalized_gates_backward(dC, dc_norm, m, gates[t], c[t], False, dc[k], dz,
                                      db)                          # (BN-LSTM 7), (BN-LSTM 8)
        batchnorm_backward(dz, a_hat[t], var_h[t], s, gamma_h, eps, training, dA[q],
                           dgamma_h, no_beta)                        # (BN-LSTM 9)
        batchnorm_backward(dz, u_hat[t], var_x[t], s, gamma_x, eps, training, dU[q],
                           dgamma_x, no_beta)                        # (BN-LSTM 9)
        packed_matmul(dA[q], WhTp, dh_rec, work)                     # da @ p["Wh"].T
        recurrent_state_backward(dH, m, dh_rec)                     # (BN-LSTM 10)


def bn_lstm_forward(x, h0, c0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                    carry="raw"):
    """Same contract as refnorm.numpy_ref.bn_lstm.bn_lstm_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    p = params
    T, B, _ = x.shape
    G = p["Wh"].shape[1]
    H = G // 4
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (BN-LSTM 1), (BPTT 8)
    h, c = states(h0, c0, T)
    width = {"mean_x": G, "var_x": G, "mean_h": G, "var_h": G, "mean_c": H, "var_c": H}
    stats = {k: (np.empty((T, width[k]), dt) if training
                 else np.ascontiguousarray(pop[k], dtype=dt)) for k in STAT_NAMES}
    # "gates": U -- the loop has read u_t when it writes step t's gates: one (T, B, 4H) array less
    out = {"hs": np.empty((T, B, H), dt), "count": np.empty(T, dt),
           "a_hat": np.empty((T, B, G), dt), "u_hat": np.empty((T, B, G), dt),
           "gates": U, "c_hat": np.empty((T, B, H), dt),
           "tanh_c": np.empty((T, B, H), dt)}
    bn_lstm_forward_loop(U, mask, stat_mask, pack_panels(p["Wh"]), p["b"],
                         p["gamma_x"], p["gamma_h"], p["gamma_c"], p["beta_c"], dt.type(eps),
                         training, carry == "normalized", h, c, out["hs"], out["count"],
                         out["a_hat"], out["u_hat"], out["gates"], out["c_hat"], out["tanh_c"],
                         stats["mean_h"], stats["var_h"], stats["mean_x"], stats["var_x"],
                         stats["mean_c"], stats["var_c"])
    hs = out.pop("hs")
    cache = BNLSTMCache(x=x, mask=mask, stat_mask=stat_mask, params=params, training=training,
                        eps=eps, carry=carry, h=h, c=c, **out, **stats)
    return hs, h[-1], c[-1], cache


def bn_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_lstm.bn_lstm_backward."""
    p = cache.params
    g = normalized_gain_grads(cache)
    WhTp = pack_panels(p["Wh"].T)

    def loop(t0, t1, gate_grads, dH, dC, dh, dc):
        dA, dU = gate_grads
        bn_lstm_backward_loop(
            t0, t1, dhs, cache.mask, cache.stat_mask, cache.c, cache.a_hat, cache.u_hat,
            cache.gates, cache.c_hat, cache.tanh_c, cache.var_h, cache.var_x, cache.var_c,
            p["gamma_x"], p["gamma_h"], p["gamma_c"], WhTp, dhs.dtype.type(cache.eps),
            cache.training, cache.carry == "normalized", dA, dU, g["b"], g["gamma_x"],
            g["gamma_h"], g["gamma_c"], g["beta_c"], dH, dC, dh, dc)

    # dWx, dx (BN-LSTM 11) and dWh = Σ_t h_{t-1}ᵀ da_t (BN-LSTM 10), chunk by chunk
    return backward_in_chunks(dhs, dhT, dcT, cache, 2, state_grads, loop, g)
