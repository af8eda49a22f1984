"""BN-RNN on the Numba CPU backend, mirror of refnorm/numpy_ref/bn_rnn.py.

Same signatures and BNRNNCache as the reference. Per step: one (B, H)·(H, H) product, the batch
statistics of the terms by fused column reductions over the rows of s_t (norms.py), z_t and
φ(z_t) in two passes over each row, the masked carry. In inference the statistics arrays arrive
holding the population statistics chosen for each step and are only read.

The term form is a flag of the two loops: summed (BN-RNN 3), (BN-RNN 6) normalises s_t = u_t + a_t
once with the gain γ_z and hands the one BN backward to both terms; separate (BN-RNN 2),
(BN-RNN 5) normalises each term. The arrays of the form not in use are empty stand-ins the loops
never touch. eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so ẑ = 0 and dz = 0
there (BN 15). A step with one row in its statistics gives ẑ = 0 exactly, hence φ(b) on that
row and du_t = da_t = 0 (BN-RNN 9), as in the reference.
"""
import numpy as np
from numba import njit

from ..numpy_ref.bn_rnn import STAT_NAMES, BNRNNCache
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace, recurrent_state_backward)
from .norms import batchnorm_backward, batchnorm_normalize, batchnorm_stats
from .rnn import (activation_backward, add_terms, check_nonlinearity, separate_terms_forward,
                  state, state_output_forward, summed_terms_forward)


@njit(**JIT)
def bn_rnn_forward_loop(U, mask, stat_mask, Whp, b, gamma_x, gamma_h, gamma_z, eps, training,
                        summed, relu, h, hs, h_tilde, u_hat, a_hat, mean_x, var_x, mean_h,
                        var_h, s_hat, mean_z, var_z):
    """Fills h (T+1, B, H) (h[0] given), hs, h_tilde and the cache's normalised terms and
    statistics (T, ·) of the term form in use; in inference the statistics arrive holding the
    population statistics and are read. h_tilde may be U itself (bn_rnn_forward passes it so):
    step t reads U[t] only before it writes h_tilde[t]; keep it that way. Whp is
    common.pack_panels(Wh)."""
    T, B, H = U.shape
    a = np.empty((B, H), U.dtype)
    work = product_workspace(B, H, Whp)
    for t in range(T):
        m = stat_mask[t]                                   # rows of step t's statistics, s_t
        packed_matmul(h[t], Whp, a, work)                  # a = h_prev @ p["Wh"]  (BN-RNN 1)
        if summed:
            add_terms(U[t], a)                             # u_t + a  (BN-RNN 3)
            if training:                                   # batchnorm_forward(u_t + a, s_t, ...)
                batchnorm_stats(a, m, mean_z[t], var_z[t])
            batchnorm_normalize(a, m, mean_z[t], var_z[t], eps, s_hat[t])
            summed_terms_forward(s_hat[t], gamma_z, b, relu, h_tilde[t])   # (BN-RNN 3), (RNN 2)
        else:
            if training:                                   # batchnorm_forward(u_t, s_t, ...)
                batchnorm_stats(U[t], m, mean_x[t], var_x[t])
                batchnorm_stats(a, m, mean_h[t], var_h[t])
            batchnorm_normalize(U[t], m, mean_x[t], var_x[t], eps, u_hat[t])
            batchnorm_normalize(a, m, mean_h[t], var_h[t], eps, a_hat[t])
            separate_terms_forward(u_hat[t], a_hat[t], gamma_x, gamma_h, b, relu,
                                   h_tilde[t])             # (BN-RNN 2), (RNN 2)
        state_output_forward(h_tilde[t], mask[t], h[t], h[t + 1], hs[t])   # (BPTT 2), (BPTT 3)


@njit(**JIT)
def bn_rnn_backward_loop(t0, t1, dhs, mask, stat_mask, h_tilde, relu, summed, u_hat, a_hat,
                         var_x, var_h, s_hat, var_z, gamma_x, gamma_h, gamma_z, WhTp, eps,
                         training, dA, dU, db, dgamma_x, dgamma_h, dgamma_z, dH, dh):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h), dH (B, H) carried in place from
    dL/dh_{t1} to dL/dh_{t0}: fills dA[t - t0] = da_t and dU[t - t0] = du_t (summed: dU is dA,
    and only dA is written), adds to db and the gains' gradients, fills dh = dL/dh̃_t
    (common.backward_buffers_h). The arrays of the term form not in use are stand-ins, as in
    the forward loop. WhTp is common.pack_panels(Wh.T)."""
    T, B, H = dhs.shape
    dz = np.empty((B, H), dhs.dtype)
    dh_rec = np.empty((B, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    work = product_workspace(B, H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        s = stat_mask[t]
        activation_backward(dhs[t], dH, mask[t], h_tilde[t], relu, dh[k], dz,
                            db)                            # (BPTT 4), (RNN 3), (BN-RNN 4)
        if summed:   # ds = BNback(dz; γ_z); du, da = ds, ds: dU is dA
            batchnorm_backward(dz, s_hat[t], var_z[t], s, gamma_z, eps, training, dA[q],
                               dgamma_z, no_beta)            # (BN-RNN 6)
        else:
            batchnorm_backward(dz, u_hat[t], var_x[t], s, gamma_x, eps, training, dU[q],
                               dgamma_x, no_beta)            # (BN-RNN 5)
            batchnorm_backward(dz, a_hat[t], var_h[t], s, gamma_h, eps, training, dA[q],
                               dgamma_h, no_beta)            # (BN-RNN 5)
        packed_matmul(dA[q], WhTp, dh_rec, work)           # da @ p["Wh"].T  (BN-RNN 7)
        recurrent_state_backward(dH, mask[t], dh_rec)      # (BPTT 6), (BN-RNN 7)


# The cache fields of each term form (those of the other form are None) and the gains of both.
TERM_FIELDS = {"separate": ("u_hat", "a_hat", "mean_x", "var_x", "mean_h", "var_h"),
               "summed": ("s_hat", "mean_z", "var_z")}
TERM_GAINS = ("gamma_x", "gamma_h", "gamma_z")
GAINS = {"separate": ("gamma_x", "gamma_h"), "summed": ("gamma_z",)}


def stand_ins(dt):
    """Empty (·, ·, ·), (·, ·) and (·) arrays the loops receive, and never touch, in place of
    the normalised terms, statistics and gains of the term form not in use."""
    return np.empty((0, 0, 0), dt), np.empty((0, 0), dt), np.empty(0, dt)


def term_arrays(fields, dt):
    """The loops' arguments for the normalised terms and statistics of both forms: the given
    arrays (the form in use), stand-ins for the rest."""
    terms, stats, _ = stand_ins(dt)
    return {name: fields.get(name, terms if name.endswith("_hat") else stats)
            for name in TERM_FIELDS["separate"] + TERM_FIELDS["summed"]}


def bn_rnn_forward(x, h0, mask, params, *, training, eps, pop=None, pad_stats="exclude",
                   terms="separate", nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.bn_rnn.bn_rnn_forward."""
    if not training and pop is None:
        raise ValueError("inference needs population statistics (pop)")
    if terms not in STAT_NAMES:
        raise ValueError(f"terms must be 'separate' or 'summed', not {terms!r}")
    relu = check_nonlinearity(nonlinearity)
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    stat_mask = mask if pad_stats == "exclude" else np.ones_like(mask)
    T, B, _ = x.shape
    H = p["Wh"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (BN-RNN 1), (BPTT 8)
    h = state(h0, T)
    # the statistics used: (T, H) arrays the loop fills in training, copies of pop's in inference
    fields = {name: (np.empty((T, H), dt) if training else np.array(pop[name][:T], dtype=dt))
              for name in STAT_NAMES[terms]}
    fields.update({name: np.empty((T, B, H), dt)
                   for name in TERM_FIELDS[terms] if name.endswith("_hat")})
    a = term_arrays(fields, dt)
    _, _, no_gain = stand_ins(dt)
    g = {name: p.get(name, no_gain) for name in TERM_GAINS}
    hs = np.empty((T, B, H), dt)
    # h_tilde: U -- the loop has read u_t when it writes step t's h̃: one (T, B, H) array less
    bn_rnn_forward_loop(U, mask, stat_mask, pack_panels(p["Wh"]), p["b"], g["gamma_x"],
                        g["gamma_h"], g["gamma_z"], dt.type(eps), training, terms == "summed",
                        relu, h, hs, U, a["u_hat"], a["a_hat"], a["mean_x"], a["var_x"],
                        a["mean_h"], a["var_h"], a["s_hat"], a["mean_z"], a["var_z"])
    cache = BNRNNCache(x=x, mask=mask, stat_mask=stat_mask, params=p, training=training,
                       eps=eps, terms=terms, nonlinearity=nonlinearity, h=h, h_tilde=U,
                       count=stat_mask.sum(axis=1), **fields)   # count: s_t.sum() per step
    return hs, h[-1], cache


def bn_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.bn_rnn.bn_rnn_backward."""
    p = cache.params
    dt = dhs.dtype
    H = p["Wh"].shape[1]
    summed = cache.terms == "summed"
    _, _, no_gain = stand_ins(dt)
    added = {"b": np.zeros(H, dt), **{name: np.zeros(H, dt) for name in GAINS[cache.terms]}}
    a = term_arrays({name: getattr(cache, name) for name in TERM_FIELDS[cache.terms]}, dt)
    gain = {name: p.get(name, no_gain) for name in TERM_GAINS}
    d = {name: added.get(name, no_gain) for name in TERM_GAINS}
    WhTp = pack_panels(p["Wh"].T)

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads * 2 if summed else gate_grads            # summed: du_t = da_t
        bn_rnn_backward_loop(
            t0, t1, dhs, cache.mask, cache.stat_mask, cache.h_tilde,
            cache.nonlinearity == "relu", summed, a["u_hat"], a["a_hat"], a["var_x"],
            a["var_h"], a["s_hat"], a["var_z"], gain["gamma_x"], gain["gamma_h"],
            gain["gamma_z"], WhTp, dt.type(cache.eps), cache.training, dA, dU, added["b"],
            d["gamma_x"], d["gamma_h"], d["gamma_z"], dH, dh)

    # dWx, dx (BN-RNN 8) and dWh = Σ_t h_{t-1}ᵀ da_t (BN-RNN 7), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 1 if summed else 2, state_grads, loop, added)
