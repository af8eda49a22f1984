"""LN-RNN on the Numba CPU backend, mirror of refnorm/numpy_ref/ln_rnn.py.

Same signatures and LNRNNCache as the reference. Per step: one (B, H)·(H, H) product, the row
statistics of the terms (norms.layernorm_forward, one group), z_t and φ(z_t) in two passes over
each row, the masked carry.

The term form is a flag of the two loops: summed (LN-RNN 2), (LN-RNN 5), the default, normalises
s_t = u_t + a_t once with the gain γ_z and hands the one LN backward to both terms; separate
(LN-RNN 3), (LN-RNN 6) normalises each term. The arrays of the form not in use are empty
stand-ins the loops never touch. eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so
ẑ = 0 and dz = 0 there (LN 11).
"""
import numpy as np
from numba import njit

from ..numpy_ref.ln_rnn import LNRNNCache
from .common import (JIT, backward_in_chunks_h, input_projection, pack_panels, packed_matmul,
                     product_workspace, recurrent_state_backward)
from .norms import layernorm_backward, layernorm_forward
from .rnn import (activation_backward, add_terms, check_nonlinearity, separate_terms_forward,
                  state, state_output_forward, summed_terms_forward)
from .threads import loop_blocks, run_rows, run_rows_summing


@njit(**JIT)
def ln_rnn_forward_loop(U, mask, Whp, b, gamma_x, gamma_h, gamma_z, eps, summed, relu, h, hs,
                        h_tilde, s_hat, mean_z, var_z, u_hat, a_hat, mean_x, var_x, mean_h,
                        var_h, r0, r1):
    """Fills h (T+1, B, H) (h[0] given), hs, h_tilde and the cache's normalised terms (T, B, H)
    and row statistics (T, B, 1) of the term form in use. h_tilde may be U itself
    (ln_rnn_forward passes it so): step t reads U[t] only before it writes h_tilde[t]; keep it
    that way. Whp is common.pack_panels(Wh). Rows r0 .. r1-1 only (threads.run_rows)."""
    T, B, H = U.shape
    a = np.empty((r1 - r0, H), U.dtype)
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ p["Wh"]  (LN-RNN 1)
        if summed:
            add_terms(U[t, r0:r1], a)                      # u_t + a  (LN-RNN 2)
            layernorm_forward(a, eps, 1, s_hat[t, r0:r1], mean_z[t, r0:r1],
                              var_z[t, r0:r1])             # (LN-RNN 2)
            summed_terms_forward(s_hat[t, r0:r1], gamma_z, b, relu,
                                 h_tilde[t, r0:r1])        # (LN-RNN 2), (RNN 2)
        else:
            layernorm_forward(U[t, r0:r1], eps, 1, u_hat[t, r0:r1], mean_x[t, r0:r1],
                              var_x[t, r0:r1])             # (LN-RNN 3)
            layernorm_forward(a, eps, 1, a_hat[t, r0:r1], mean_h[t, r0:r1],
                              var_h[t, r0:r1])             # (LN-RNN 3)
            separate_terms_forward(u_hat[t, r0:r1], a_hat[t, r0:r1], gamma_x, gamma_h, b, relu,
                                   h_tilde[t, r0:r1])      # (LN-RNN 3), (RNN 2)
        state_output_forward(h_tilde[t, r0:r1], mask[t, r0:r1], h[t, r0:r1], h[t + 1, r0:r1],
                             hs[t, r0:r1])                 # (BPTT 2), (BPTT 3)


@njit(**JIT)
def ln_rnn_backward_loop(t0, t1, dhs, mask, h_tilde, relu, summed, s_hat, var_z, u_hat, a_hat,
                         var_x, var_h, gamma_x, gamma_h, gamma_z, WhTp, eps, dA, dU, db,
                         dgamma_x, dgamma_h, dgamma_z, dH, dh, r0, r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks_h), dH (B, H) carried in place from
    dL/dh_{t1} to dL/dh_{t0}: fills dA[t - t0] = da_t and dU[t - t0] = du_t (summed: dU is dA,
    and only dA is written), adds to db and the gains' gradients, fills dh = dL/dh̃_t
    (common.backward_buffers_h). The arrays of the term form not in use are stand-ins, as in
    the forward loop. WhTp is common.pack_panels(Wh.T). Rows r0 .. r1-1 only
    (threads.run_rows; db and the gains' gradients: the sums over those rows)."""
    T, B, H = dhs.shape
    dz = np.empty((r1 - r0, H), dhs.dtype)
    dh_rec = np.empty((r1 - r0, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    work = product_workspace(r1 - r0, H, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        activation_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], h_tilde[t, r0:r1], relu,
                            dh[k, r0:r1], dz, db)          # (BPTT 4), (RNN 3), (LN-RNN 4)
        if summed:   # ds = LNback(dz; γ_z); du, da = ds, ds: dU is dA
            layernorm_backward(dz, s_hat[t, r0:r1], var_z[t, r0:r1], gamma_z, eps, 1,
                               dA[q, r0:r1], dgamma_z, no_beta)      # (LN-RNN 5)
        else:
            layernorm_backward(dz, u_hat[t, r0:r1], var_x[t, r0:r1], gamma_x, eps, 1,
                               dU[q, r0:r1], dgamma_x, no_beta)      # (LN-RNN 6)
            layernorm_backward(dz, a_hat[t, r0:r1], var_h[t, r0:r1], gamma_h, eps, 1,
                               dA[q, r0:r1], dgamma_h, no_beta)      # (LN-RNN 6)
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)    # da @ p["Wh"].T  (LN-RNN 7)
        recurrent_state_backward(dH[r0:r1], mask[t, r0:r1], dh_rec)   # (BPTT 6), (LN-RNN 7)


# The cache fields of each term form (those of the other form are None) and the gains of both.
TERM_FIELDS = {"summed": ("s_hat", "mean_z", "var_z"),
               "separate": ("u_hat", "a_hat", "mean_x", "var_x", "mean_h", "var_h")}
TERM_GAINS = ("gamma_x", "gamma_h", "gamma_z")
GAINS = {"summed": ("gamma_z",), "separate": ("gamma_x", "gamma_h")}


def stand_ins(dt):
    """Empty (·, ·, ·) and (·) arrays the loops receive, and never touch, in place of the
    normalised terms, statistics and gains of the term form not in use."""
    return np.empty((0, 0, 0), dt), np.empty(0, dt)


def term_arrays(fields, dt):
    """The loops' arguments for the normalised terms and row statistics of both forms: the given
    arrays (the form in use), stand-ins for the rest."""
    unused, _ = stand_ins(dt)
    return {name: fields.get(name, unused)
            for name in TERM_FIELDS["summed"] + TERM_FIELDS["separate"]}


def ln_rnn_forward(x, h0, mask, params, *, eps, terms="summed", nonlinearity="tanh"):
    """Same contract as refnorm.numpy_ref.ln_rnn.ln_rnn_forward."""
    if terms not in TERM_FIELDS:
        raise ValueError(f"terms must be 'summed' or 'separate', not {terms!r}")
    relu = check_nonlinearity(nonlinearity)
    p = {name: value.copy() for name, value in params.items()}   # the cache's own copies
    T, B, _ = x.shape
    H = p["Wh"].shape[1]
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (LN-RNN 1), (BPTT 8)
    h = state(h0, T)
    fields = {name: np.empty((T, B, H if name.endswith("_hat") else 1), dt)
              for name in TERM_FIELDS[terms]}
    a = term_arrays(fields, dt)
    _, no_gain = stand_ins(dt)
    g = {name: p.get(name, no_gain) for name in TERM_GAINS}
    hs = np.empty((T, B, H), dt)
    Whp = pack_panels(p["Wh"])
    # h_tilde: U -- the loop has read u_t when it writes step t's h̃: one (T, B, H) array less
    run_rows(lambda r0, r1: ln_rnn_forward_loop(
        U, mask, Whp, p["b"], g["gamma_x"], g["gamma_h"], g["gamma_z"], dt.type(eps),
        terms == "summed", relu, h, hs, U, a["s_hat"], a["mean_z"], a["var_z"], a["u_hat"],
        a["a_hat"], a["mean_x"], a["var_x"], a["mean_h"], a["var_h"], r0, r1),
        loop_blocks("ln_rnn", dt, B, H))
    cache = LNRNNCache(x=x, mask=mask, params=p, eps=eps, terms=terms,
                       nonlinearity=nonlinearity, h=h, h_tilde=U, **fields)
    return hs, h[-1], cache


def ln_rnn_backward(dhs, dhT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_rnn.ln_rnn_backward."""
    p = cache.params
    dt = dhs.dtype
    H = p["Wh"].shape[1]
    summed = cache.terms == "summed"
    _, no_gain = stand_ins(dt)
    added = {"b": np.zeros(H, dt), **{name: np.zeros(H, dt) for name in GAINS[cache.terms]}}
    a = term_arrays({name: getattr(cache, name) for name in TERM_FIELDS[cache.terms]}, dt)
    gain = {name: p.get(name, no_gain) for name in TERM_GAINS}
    WhTp = pack_panels(p["Wh"].T)

    blocks = loop_blocks("ln_rnn", dt, *dhs.shape[1:])     # before any scratch() (the planner)

    def loop(t0, t1, gate_grads, dH, dh):
        dA, dU = gate_grads * 2 if summed else gate_grads            # summed: du_t = da_t
        def rows(r0, r1, own):      # own: this block's db and gains' gradients
            d = {name: own.get(name, no_gain) for name in TERM_GAINS}
            ln_rnn_backward_loop(
                t0, t1, dhs, cache.mask, cache.h_tilde, cache.nonlinearity == "relu", summed,
                a["s_hat"], a["var_z"], a["u_hat"], a["a_hat"], a["var_x"], a["var_h"],
                gain["gamma_x"], gain["gamma_h"], gain["gamma_z"], WhTp, dt.type(cache.eps),
                dA, dU, own["b"], d["gamma_x"], d["gamma_h"], d["gamma_z"], dH, dh, r0, r1)

        run_rows_summing(rows, blocks, added)

    # dWx, dx (LN-RNN 8) and dWh = Σ_t h_{t-1}ᵀ da_t (LN-RNN 7), chunk by chunk
    return backward_in_chunks_h(dhs, dhT, cache, 1 if summed else 2, state_grads, loop, added)
