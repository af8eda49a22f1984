"""BN-GRU on the Numba CPU backend, mirror of refnorm/numpy_ref/bn_gru.py.

Same signatures and BNGRUCache as the reference. Per step: one (B, H)·(H, 3H) product, the batch
statistics of both sides by fused column reductions over the rows of s_t (norms.py), the
normalised sides v_t = γ_x ⊙ û_t + b and w_t = γ_h ⊙ â_t, then the reset-after gate algebra of
.gru and the masked carry. In inference the statistics arrays arrive holding the population
statistics chosen for each step and are only read. eps may be 0: norms' loops read a zero
s = √(v + eps) as ∞, so ẑ = 0 and dz = 0 there (BN 15). A step with one row in its statistics
gives û_t = â_t = 0 exactly on that row, constant gates and du_t = da_t = 0 (BN-GRU 8), as in
the reference.
"""
import numpy as np
from numba import njit

from ..numpy_ref.bn_gru import STAT_NAMES, BNGRUCache
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace)
from .gru import (gru_gates_backward, gru_gates_forward, interpolated_state_backward,
                  normalized_sides_forward)
from .norms import batchnorm_backward, batchnorm_normalize, batchnorm_stats
from .rnn import state, state_output_forward


@njit(**JIT)
def bn_gru_forward_loop(U, mask, stat_mask, Whp, b, b_hn, gamma_x, gamma_h, eps, training, h,
                        hs, gates, hn, u_hat, a_hat, mean_x, var_x, mean_h, var_h):
    """Fills h (T+1, B, H) (h[0] given), hs, gates (T, B, 3H), hn (T, B, H), the normalised
    sides û_t, â_t (T, B, 3H) and their statistics (T, 3H); in inference the statistics arrive
    holding the population statistics and are read. gates may be U itself (bn_gru_forward
    passes it so): step t reads U[t] only before it writes gates[t]; keep it that way. Whp is
    common.pack_panels(Wh)."""
    T, B, G = U.shape
    H = G // 3
    a = np.empty((B, G), U.dtype)
    h_new = np.empty((B, H), U.dtype)
    work = product_workspace(B, H, Whp)
    for t in range(T):
        m = stat_mask[t]                                   # rows of step t's statistics, s_t
        packed_matmul(h[t], Whp, a, work)                  # a = h_prev @ p["Wh"]  (BN-GRU 1)
        if training:                                       # batchnorm_forward(u_t, s_t, ...)
            batchnorm_stats(U[t], m, mean_x[t], var_x[t])
            batchnorm_stats(a, m, mean_h[t], var_h[t])
        batchnorm_normalize(U[t], m, mean_x[t], var_x[t], eps, u_hat[t])
        batchnorm_normalize(a, m, mean_h[t], var_h[t], eps, a_hat[t])
        normalized_sides_forward(u_hat[t], a_hat[t], gamma_x, gamma_h, b, gates[t],
                                 a)                        # v_t into gates, w_t into a  (BN-GRU 2)
        gru_gates_forward(gates[t], a, h[t], b_hn, hn[t], h_new)   # (BN-GRU 3)
        state_output_forward(h_new, mask[t], h[t], h[t + 1], hs[t])   # (BPTT 2), (BPTT 3)


@njit(**JIT)
def bn_gru_backward_loop(t0, t1, dhs, mask, stat_mask, h, gates, hn, u_hat, a_hat, var_x, var_h,
                         gamma_x, gamma_h, WhTp, eps, training, dA, dU, db, db_hn, dgamma_x,
                         dgamma_h, dH, dh):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h), dH (B, H) carried in place from
    dL/dh_{t1} to dL/dh_{t0}: fills dA[t - t0] = da_t and dU[t - t0] = du_t (t1 - t0, B, 3H),
    adds to db, db_hn and the gains' gradients, fills dh = dL/dh̃_t
    (common.backward_buffers_h). WhTp is common.pack_panels(Wh.T)."""
    T, B, H = dhs.shape
    dv = np.empty((B, 3 * H), dhs.dtype)
    dw = np.empty((B, 3 * H), dhs.dtype)
    dh_rec = np.empty((B, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    work = product_workspace(B, 3 * H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        s = stat_mask[t]
        gru_gates_backward(dhs[t], dH, mask[t], gates[t], hn[t], h[t], dh[k], dv, dw, db,
                           db_hn)                          # (BPTT 4), (BN-GRU 4)
        batchnorm_backward(dv, u_hat[t], var_x[t], s, gamma_x, eps, training, dU[q], dgamma_x,
                           no_beta)                        # du = BNback(dv; γ_x)  (BN-GRU 5)
        batchnorm_backward(dw, a_hat[t], var_h[t], s, gamma_h, eps, training, dA[q], dgamma_h,
                           no_beta)                        # da = BNback(dw; γ_h)  (BN-GRU 5)
        packed_matmul(dA[q], WhTp, dh_rec, work)           # da @ p["Wh"].T  (BN-GRU 6)
        interpolated_state_backward(dH, mask[t], dh[k], gates[t], dh_rec)   # (BPTT 6), (BN-GRU 6)


def bn_gru_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude"):
    """Same contract as refnorm.numpy_ref.bn_gru.bn_gru_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    T, B, _ = x.shape
    G = p["Wx"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (BN-GRU 1), (BPTT 8)
    h = state(h0, T)
    # the statistics used: (T, 3H) arrays the loop fills in training, copies of pop's in inference
    stats = {name: (np.empty((T, G), dt) if training else np.array(pop[name][:T], dtype=dt))
             for name in STAT_NAMES}
    u_hat, a_hat = np.empty((T, B, G), dt), np.empty((T, B, G), dt)
    hs, hn = np.empty((T, B, G // 3), dt), np.empty((T, B, G // 3), dt)
    # gates: U -- the loop has read u_t when it writes step t's gates: one (T, B, 3H) array less
    bn_gru_forward_loop(U, mask, stat_mask, pack_panels(p["Wh"]), p["b"], p["b_hn"],
                        p["gamma_x"], p["gamma_h"], dt.type(eps), training, h, hs, U, hn, u_hat,
                        a_hat, stats["mean_x"], stats["var_x"], stats["mean_h"], stats["var_h"])
    cache = BNGRUCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training, eps=eps,
                       h=h, gates=U, hn=hn, count=stat_mask.sum(axis=1),   # count: s_t.sum()
                       u_hat=u_hat, a_hat=a_hat, **stats)
    return hs, h[-1], cache


def bn_gru_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_gru.bn_gru_backward."""
    p = cache.params
    dt = dhs.dtype
    G = p["Wh"].shape[1]
    added = {"b": np.zeros(G, dt), "b_hn": np.zeros(G // 3, dt), "gamma_x": np.zeros(G, dt),
             "gamma_h": np.zeros(G, dt)}
    WhTp = pack_panels(p["Wh"].T)

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads
        bn_gru_backward_loop(t0, t1, dhs, cache.mask, cache.stat_mask, cache.h, cache.gates,
                             cache.hn, cache.u_hat, cache.a_hat, cache.var_x, cache.var_h,
                             p["gamma_x"], p["gamma_h"], WhTp, dt.type(cache.eps),
                             cache.training, dA, dU, added["b"], added["b_hn"],
                             added["gamma_x"], added["gamma_h"], dH, dh)

    # dWx, dx (BN-GRU 7) and dWh = Σ_t h_{t-1}ᵀ da_t (BN-GRU 6), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 2, state_grads, loop, added)
