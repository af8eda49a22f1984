"""LN-GRU on the Numba CPU backend, mirror of refnorm/numpy_ref/ln_gru.py.

Same signatures and LNGRUCache as the reference. Per step: one (B, H)·(H, 3H) product, the row
statistics of both sides over their 3H features (norms.layernorm_forward, one group), the
normalised sides v_t = γ_x ⊙ û_t + b and w_t = γ_h ⊙ â_t, then the reset-after gate algebra of
.gru and the masked carry. eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so
ẑ = 0 and dz = 0 there (LN 11).
"""
import numpy as np
from numba import njit

from ..numpy_ref.ln_gru import LNGRUCache
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace)
from .gru import (gru_gates_backward, gru_gates_forward, interpolated_state_backward,
                  normalized_sides_forward)
from .norms import layernorm_backward, layernorm_forward
from .rnn import state, state_output_forward
from .threads import loop_blocks, run_rows, run_rows_summing


@njit(**JIT)
def ln_gru_forward_loop(U, mask, Whp, b, b_hn, gamma_x, gamma_h, eps, h, hs, gates, hn, u_hat,
                        a_hat, mean_x, var_x, mean_h, var_h, r0, r1):
    """Fills h (T+1, B, H) (h[0] given), hs, gates (T, B, 3H), hn (T, B, H), the normalised
    sides û_t, â_t (T, B, 3H) and their row statistics (T, B, 1). gates may be U itself
    (ln_gru_forward passes it so): step t reads U[t] only before it writes gates[t]; keep it
    that way. Whp is common.pack_panels(Wh). Rows r0 .. r1-1 only (threads.run_rows)."""
    T, B, G = U.shape
    H = G // 3
    a = np.empty((r1 - r0, G), U.dtype)
    h_new = np.empty((r1 - r0, H), U.dtype)
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ p["Wh"]  (LN-GRU 1)
        layernorm_forward(U[t, r0:r1], eps, 1, u_hat[t, r0:r1], mean_x[t, r0:r1],
                          var_x[t, r0:r1])                 # (LN-GRU 2)
        layernorm_forward(a, eps, 1, a_hat[t, r0:r1], mean_h[t, r0:r1],
                          var_h[t, r0:r1])                 # (LN-GRU 2)
        normalized_sides_forward(u_hat[t, r0:r1], a_hat[t, r0:r1], gamma_x, gamma_h, b,
                                 gates[t, r0:r1], a)       # v_t into gates, w_t into a  (LN-GRU 2)
        gru_gates_forward(gates[t, r0:r1], a, h[t, r0:r1], b_hn, hn[t, r0:r1],
                          h_new)                           # (LN-GRU 3)
        state_output_forward(h_new, mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def ln_gru_backward_loop(t0, t1, dhs, mask, h, gates, hn, u_hat, a_hat, var_x, var_h, gamma_x,
                         gamma_h, WhTp, eps, dA, dU, db, db_hn, dgamma_x, dgamma_h, dH, dh, r0,
                         r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h), dH (B, H) carried in place from
    dL/dh_{t1} to dL/dh_{t0}: fills dA[t - t0] = da_t and dU[t - t0] = du_t (t1 - t0, B, 3H),
    adds to db, db_hn and the gains' gradients, fills dh = dL/dh̃_t
    (common.backward_buffers_h). WhTp is common.pack_panels(Wh.T). Rows r0 .. r1-1 only
    (threads.run_rows; db, db_hn and the gains' gradients: the sums over those rows)."""
    T, B, H = dhs.shape
    dv = np.empty((r1 - r0, 3 * H), dhs.dtype)
    dw = np.empty((r1 - r0, 3 * H), dhs.dtype)
    dh_rec = np.empty((r1 - r0, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    work = product_workspace(r1 - r0, 3 * H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        gru_gates_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], gates[t, r0:r1],
                           hn[t, r0:r1], h[t, r0:r1], dh[k, r0:r1], dv, dw, db,
                           db_hn)                          # (BPTT 4), (LN-GRU 4)
        layernorm_backward(dv, u_hat[t, r0:r1], var_x[t, r0:r1], gamma_x, eps, 1, dU[q, r0:r1],
                           dgamma_x, no_beta)              # du = LNback(dv; γ_x)  (LN-GRU 5)
        layernorm_backward(dw, a_hat[t, r0:r1], var_h[t, r0:r1], gamma_h, eps, 1, dA[q, r0:r1],
                           dgamma_h, no_beta)              # da = LNback(dw; γ_h)  (LN-GRU 5)
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)    # da @ p["Wh"].T  (LN-GRU 6)
        interpolated_state_backward(dH[r0:r1], mask[t, r0:r1], dh[k, r0:r1], gates[t, r0:r1],
                                    dh_rec)                # (BPTT 6), (LN-GRU 6)


def ln_gru_forward(x, h0, mask, params, *, eps):
    """Same contract as refnorm.numpy_ref.ln_gru.ln_gru_forward."""
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    T, B, _ = x.shape
    G = p["Wx"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (LN-GRU 1), (BPTT 8)
    h = state(h0, T)
    u_hat, a_hat = np.empty((T, B, G), dt), np.empty((T, B, G), dt)
    stats = {name: np.empty((T, B, 1), dt) for name in ("mean_x", "var_x", "mean_h", "var_h")}
    hs, hn = np.empty((T, B, G // 3), dt), np.empty((T, B, G // 3), dt)
    Whp = pack_panels(p["Wh"])
    # gates: U -- the loop has read u_t when it writes step t's gates: one (T, B, 3H) array less
    run_rows(lambda r0, r1: ln_gru_forward_loop(
        U, mask, Whp, p["b"], p["b_hn"], p["gamma_x"], p["gamma_h"], dt.type(eps), h, hs, U, hn,
        u_hat, a_hat, stats["mean_x"], stats["var_x"], stats["mean_h"], stats["var_h"], r0, r1),
        loop_blocks("ln_gru", dt, B, G // 3))
    cache = LNGRUCache(x=x, mask=mask, params=p, eps=eps, h=h, gates=U, hn=hn, u_hat=u_hat,
                       a_hat=a_hat, **stats)
    return hs, h[-1], cache


def ln_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_gru.ln_gru_backward."""
    p = cache.params
    dt = dhs.dtype
    G = p["Wh"].shape[1]
    added = {"b": np.zeros(G, dt), "b_hn": np.zeros(G // 3, dt), "gamma_x": np.zeros(G, dt),
             "gamma_h": np.zeros(G, dt)}
    WhTp = pack_panels(p["Wh"].T)

    blocks = loop_blocks("ln_gru", dt, *dhs.shape[1:])     # before any scratch() (the planner)

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads
        def rows(r0, r1, own):      # own: this block's db, db_hn and gains' gradients
            ln_gru_backward_loop(t0, t1, dhs, cache.mask, cache.h, cache.gates, cache.hn,
                                 cache.u_hat, cache.a_hat, cache.var_x, cache.var_h,
                                 p["gamma_x"], p["gamma_h"], WhTp, dt.type(cache.eps), dA, dU,
                                 own["b"], own["b_hn"], own["gamma_x"], own["gamma_h"], dH, dh,
                                 r0, r1)

        run_rows_summing(rows, blocks, added)

    # dWx, dx (LN-GRU 7) and dWh = Σ_t h_{t-1}ᵀ da_t (LN-GRU 6), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 2, state_grads, loop, added)
