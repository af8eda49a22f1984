"""LN-LSTM on the Numba CPU backend, mirror of refnorm/numpy_ref/ln_lstm.py.

Same signatures and LNLSTMCache as the reference. Per step: one (B, H)·(H, 4H) product, the row
statistics of a_t, u_t and c̃_t, and the gates fused into one pass over the batch.

The variants are flags of the two loops (derivations/variants.md): normalized_carry (VAR 3),
(VAR 4) carries γ_c ⊙ ĉ_t + β_c in place of c̃_t and adds the carry gradient before the cell's
LN backward; summed (VAR 5), (VAR 6) normalises s_t = a_t + u_t once with the gain γ_z and
hands the one LN backward to both terms. The term shifts and a run-time forget bias arrive
folded into b (VAR 1), (VAR 2). eps may be 0: norms' loops read a zero s = √(v + eps) as ∞, so
ẑ = 0 and dz = 0 there (LN 11).
"""

import numpy as np
from numba import njit

from ..numpy_ref.ln_lstm import LNLSTMCache
from .common import (
    JIT,
    pack_panels,
    packed_matmul,
    product_workspace,
    input_projection,
    cell_output_forward,
    gates_cell_forward,
    backward_in_chunks,
    normalized_gain_grads,
    summed_terms,
    normalized_carry_backward,
    normalized_gates_backward,
    normalized_gates_forward,
    normalized_output_backward,
    recurrent_state_backward,
)
from .lstm import states
from .norms import layernorm_backward, layernorm_forward
from .threads import loop_blocks, run_rows, run_rows_summing


@njit(**JIT)
def summed_gates_forward(s_hat, gamma_z, b, c_prev, gates, c_new):
    """z = γ_z ⊙ ŝ + b (VAR 5), gates (LSTM 2), c_new = f ⊙ c_prev + i ⊙ g (LSTM 3)."""
    B, G = gates.shape
    for r in range(B):
        for k in range(G):                                 # z = s_ln + p["b"]  (VAR 5)
            gates[r, k] = gamma_z[k] * s_hat[r, k] + b[k]
    gates_cell_forward(gates, c_prev, c_new)               # (LSTM 2), (LSTM 3)


@njit(**JIT)
def ln_lstm_forward_loop(U, mask, Whp, b, gamma_x, gamma_h, gamma_z, gamma_c, beta_c, eps,
                         groups, summed, normalized_carry, h, c, hs, gates, c_hat, tanh_c,
                         mean_c, var_c, a_hat, u_hat, mean_h, var_h, mean_x, var_x,
                         s_hat, mean_s, var_s, r0, r1):
    """The arrays of the terms mode not in use (a_hat .. var_x when summed, s_hat .. var_s
    when separate) and its gains are placeholders the loop never touches. gates may be U itself
    (ln_lstm_forward passes it so): step t reads U[t] only before it writes gates[t]; keep it
    that way. Whp is common.pack_panels(Wh). Rows r0 .. r1-1 only (threads.run_rows)."""
    T, B, G = U.shape
    H = G // 4
    a = np.empty((r1 - r0, G), U.dtype)
    c_new = np.empty((r1 - r0, H), U.dtype)
    c_norm = np.empty((r1 - r0, H), U.dtype)
    work = product_workspace(r1 - r0, H, Whp)
    for t in range(T):
        packed_matmul(h[t, r0:r1], Whp, a, work)           # a = h_prev @ p["Wh"]  (LN-LSTM 1)
        if summed:
            a += U[t, r0:r1]                               # s = a + u_t  (VAR 5)
            layernorm_forward(a, eps, groups, s_hat[t, r0:r1], mean_s[t, r0:r1],
                              var_s[t, r0:r1])                               # (VAR 5)
            summed_gates_forward(s_hat[t, r0:r1], gamma_z, b, c[t, r0:r1], gates[t, r0:r1],
                                 c_new)                                      # (LN-LSTM 3)
        else:
            layernorm_forward(a, eps, groups, a_hat[t, r0:r1], mean_h[t, r0:r1], var_h[t, r0:r1])
            layernorm_forward(U[t, r0:r1], eps, groups, u_hat[t, r0:r1], mean_x[t, r0:r1],
                              var_x[t, r0:r1])
            normalized_gates_forward(a_hat[t, r0:r1], u_hat[t, r0:r1], gamma_h, gamma_x, b,
                                     c[t, r0:r1], gates[t, r0:r1],
                                     c_new)                        # (LN-LSTM 2), (LN-LSTM 3)
        layernorm_forward(c_new, eps, 1, c_hat[t, r0:r1], mean_c[t, r0:r1],
                          var_c[t, r0:r1])                                   # (LN-LSTM 4)
        cell_output_forward(c_hat[t, r0:r1], gamma_c, beta_c, gates[t, r0:r1], c_new, c_norm,
                            normalized_carry, mask[t, r0:r1], h[t, r0:r1], c[t, r0:r1],
                            h[t + 1, r0:r1], c[t + 1, r0:r1], hs[t, r0:r1],
                            tanh_c[t, r0:r1])                   # (LN-LSTM 4), (VAR 3)


@njit(**JIT)
def ln_lstm_backward_loop(t0, t1, dhs, mask, c, gates, c_hat, tanh_c, var_c, gamma_c,
                          WhTp, eps, groups, summed, normalized_carry, a_hat, u_hat, var_h, var_x,
                          gamma_x, gamma_h, s_hat, var_s, gamma_z, dA, dU, db, dgamma_x,
                          dgamma_h, dgamma_z, dgamma_c, dbeta_c, dH, dC, dh, dc, r0, r1):
    """BPTT over t = t1-1 .. t0 (common.backward_in_chunks), dH, dC (B, H) carried in place
    from dL/dh_{t1}, dL/dc_{t1} to dL/dh_{t0}, dL/dc_{t0}: fills dA[t - t0] = da_t and
    dU[t - t0] = du_t (summed: dU is dA, and only dA is written), adds to the gain and bias
    gradients; fills dh, dc (common.backward_buffers) with dL/dh̃_t and the gradient of the
    carried cell (dc̃_t, or dĉ_t with normalized_carry). The arrays of the terms mode not in
    use are placeholders, as in the forward loop. WhTp is common.pack_panels(Wh.T). Rows
    r0 .. r1-1 only (threads.run_rows; the gain and bias gradients: the sums over those rows)."""
    T, B, H = dhs.shape
    G = 4 * H
    dz = np.empty((r1 - r0, G), dhs.dtype)
    dc_ln = np.empty((r1 - r0, H), dhs.dtype)
    dc_norm = np.empty((r1 - r0, H), dhs.dtype)
    dc_new = np.empty((r1 - r0, H), dhs.dtype)
    dh_rec = np.empty((r1 - r0, H), dhs.dtype)
    no_beta = np.empty(0, dhs.dtype)
    work = product_workspace(r1 - r0, G, WhTp)
    for t in range(t1 - 1, t0 - 1, -1):
        k = t if dh.shape[0] == T else 0   # step t's row of dh, dc, or the one reused row
        q = t - t0                         # step t's row of dA, dU
        normalized_output_backward(dhs[t, r0:r1], dH[r0:r1], mask[t, r0:r1], gates[t, r0:r1],
                                   tanh_c[t, r0:r1], dh[k, r0:r1], dz,
                                   dc_ln)                          # (BPTT 4), (LN-LSTM 5)
        if normalized_carry:
            normalized_carry_backward(dC[r0:r1], mask[t, r0:r1], dc_ln,
                                      dc[k, r0:r1])                # (BPTT 5), (VAR 4)
            layernorm_backward(dc[k, r0:r1], c_hat[t, r0:r1], var_c[t, r0:r1], gamma_c, eps, 1,
                               dc_norm, dgamma_c, dbeta_c)           # (VAR 4)
            normalized_gates_backward(dC[r0:r1], dc_norm, mask[t, r0:r1], gates[t, r0:r1],
                                      c[t, r0:r1], True, dc_new, dz,
                                      db)                          # (VAR 4), (LN-LSTM 7)
        else:
            layernorm_backward(dc_ln, c_hat[t, r0:r1], var_c[t, r0:r1], gamma_c, eps, 1, dc_norm,
                               dgamma_c, dbeta_c)                    # (LN-LSTM 6)
            normalized_gates_backward(dC[r0:r1], dc_norm, mask[t, r0:r1], gates[t, r0:r1],
                                      c[t, r0:r1], False, dc[k, r0:r1], dz,
                                      db)                          # (LN-LSTM 6), (LN-LSTM 7)
        if summed:   # ds = LNback(dz; γ_z); da, du = ds, ds: dU is dA
            layernorm_backward(dz, s_hat[t, r0:r1], var_s[t, r0:r1], gamma_z, eps, groups,
                               dA[q, r0:r1], dgamma_z, no_beta)      # (VAR 6)
        else:
            layernorm_backward(dz, a_hat[t, r0:r1], var_h[t, r0:r1], gamma_h, eps, groups,
                               dA[q, r0:r1], dgamma_h, no_beta)      # (LN-LSTM 8)
            layernorm_backward(dz, u_hat[t, r0:r1], var_x[t, r0:r1], gamma_x, eps, groups,
                               dU[q, r0:r1], dgamma_x, no_beta)      # (LN-LSTM 8)
        packed_matmul(dA[q, r0:r1], WhTp, dh_rec, work)              # da @ p["Wh"].T
        recurrent_state_backward(dH[r0:r1], mask[t, r0:r1], dh_rec)   # (LN-LSTM 9)


# The cache fields of each terms mode (those of the other mode are None) and the gate-term gains
# of both (gamma_x, gamma_h when separate, gamma_z when summed).
TERM_FIELDS = {"separate": ("a_hat", "u_hat", "mean_h", "var_h", "mean_x", "var_x"),
               "summed": ("s_hat", "mean_s", "var_s")}
TERM_GAINS = ("gamma_x", "gamma_h", "gamma_z")


def stand_ins(dt):
    """Empty (·, ·, ·) and (·) arrays the loops receive, and never touch, in place of the arrays
    and gains of the terms mode not in use."""
    return np.empty((0, 0, 0), dt), np.empty(0, dt)


def ln_lstm_forward(x, h0, c0, mask, params, *, eps, per_gate=False, carry="raw",
                    terms="separate"):
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_forward."""
    p = params
    groups = 4 if per_gate else 1
    summed = terms == "summed"
    T, B, _ = x.shape
    G = p["Wh"].shape[1]
    H = G // 4
    dt = x.dtype
    U = input_projection(x, p["Wx"])                             # (LN-LSTM 1), (BPTT 8)
    h, c = states(h0, c0, T)
    # "gates": U -- the loop has read u_t when it writes step t's gates: one (T, B, 4H) array less
    out = {"hs": np.empty((T, B, H), dt), "gates": U,
           "c_hat": np.empty((T, B, H), dt), "tanh_c": np.empty((T, B, H), dt),
           "mean_c": np.empty((T, B, 1), dt), "var_c": np.empty((T, B, 1), dt)}
    terms_out = {name: np.empty((T, B, G if name.endswith("_hat") else groups), dt)
                 for name in TERM_FIELDS[terms]}
    unused, no_gain = stand_ins(dt)
    a = {name: terms_out.get(name, unused)
         for name in TERM_FIELDS["separate"] + TERM_FIELDS["summed"]}
    a.update({name: p.get(name, no_gain) for name in TERM_GAINS})
    Whp = pack_panels(p["Wh"])
    run_rows(lambda r0, r1: ln_lstm_forward_loop(
        U, mask, Whp, p["b"], a["gamma_x"], a["gamma_h"], a["gamma_z"], p["gamma_c"],
        p["beta_c"], dt.type(eps), groups, summed, carry == "normalized", h, c, out["hs"],
        out["gates"], out["c_hat"], out["tanh_c"], out["mean_c"], out["var_c"], a["a_hat"],
        a["u_hat"], a["mean_h"], a["var_h"], a["mean_x"], a["var_x"], a["s_hat"], a["mean_s"],
        a["var_s"], r0, r1), loop_blocks("ln_lstm", dt, B, H))
    hs = out.pop("hs")
    cache = LNLSTMCache(x=x, mask=mask, params=params, eps=eps, groups=groups, carry=carry,
                        terms=terms, h=h, c=c, **out, **terms_out)
    return hs, h[-1], c[-1], cache


def ln_lstm_backward(dhs, dhT, dcT, cache, state_grads=False):
    """Same contract as refnorm.numpy_ref.ln_lstm.ln_lstm_backward."""
    p = cache.params
    g = normalized_gain_grads(cache)
    dt = dhs.dtype
    summed = summed_terms(cache)
    unused, no_gain = stand_ins(dt)
    a = {name: unused if getattr(cache, name) is None else getattr(cache, name)
         for name in ("a_hat", "u_hat", "var_h", "var_x", "s_hat", "var_s")}
    a.update({name: p.get(name, no_gain) for name in TERM_GAINS})
    WhTp = pack_panels(p["Wh"].T)

    blocks = loop_blocks("ln_lstm", dt, *dhs.shape[1:])    # before any scratch() (the planner)

    def loop(t0, t1, gate_grads, dH, dC, dh, dc):
        dA, dU = gate_grads * 2 if summed else gate_grads            # summed: du_t = da_t (VAR 6)
        def rows(r0, r1, own):      # own: this block's gain and bias gradients
            d = {name: own.get(name, no_gain) for name in TERM_GAINS}
            ln_lstm_backward_loop(
                t0, t1, dhs, cache.mask, cache.c, cache.gates, cache.c_hat, cache.tanh_c,
                cache.var_c, p["gamma_c"], WhTp, dt.type(cache.eps), cache.groups, summed,
                cache.carry == "normalized", a["a_hat"], a["u_hat"], a["var_h"], a["var_x"],
                a["gamma_x"], a["gamma_h"], a["s_hat"], a["var_s"], a["gamma_z"], dA, dU,
                own["b"], d["gamma_x"], d["gamma_h"], d["gamma_z"], own["gamma_c"],
                own["beta_c"], dH, dC, dh, dc, r0, r1)

        run_rows_summing(rows, blocks, g)

    # dWx, dx (LN-LSTM 10) and dWh = Σ_t h_{t-1}ᵀ da_t (LN-LSTM 9), chunk by chunk
    return backward_in_chunks(dhs, dhT, dcT, cache, 1 if summed else 2, state_grads, loop, g)
