"""Pieces shared by every cell of the NumPy reference: the gate nonlinearities and the masked
carry of the state. Equation tags refer to derivations/lstm.md and derivations/bptt.md."""
import numpy as np


def sigmoid(z):
    """Numerically stable logistic function: never exponentiates a positive number."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def split_gates(a):
    """(..., 4H) -> four (..., H) views in the order i, f, g, o."""
    H = a.shape[-1] // 4
    return a[..., 0:H], a[..., H:2 * H], a[..., 2 * H:3 * H], a[..., 3 * H:4 * H]


def gates_forward(z):
    """(LSTM 2) i = σ(z^i), f = σ(z^f), g = tanh(z^g), o = σ(z^o). Returns (B, 4H) in i,f,g,o."""
    zi, zf, zg, zo = split_gates(z)
    return np.concatenate([sigmoid(zi), sigmoid(zf), np.tanh(zg), sigmoid(zo)], axis=-1)


def gates_backward(di, df, dg, do, gates):
    """(LSTM 8) dz from the gradients of the activated gates: σ' = σ(1-σ), tanh' = 1 - tanh²."""
    i, f, g, o = split_gates(gates)
    return np.concatenate([di * i * (1 - i),
                           df * f * (1 - f),
                           dg * (1 - g * g),
                           do * o * (1 - o)], axis=-1)


def carry(m, new, old):
    """(BPTT 2) state_t = m ⊙ new + (1 - m) ⊙ old, with m (B,) of 0/1 broadcast over H.

    Written as a selection, not a blend, so padded rows keep old bit for bit."""
    return np.where(m[:, None] > 0, new, old)


def fold_into_bias(params, forget_bias):
    """The parameters the equations run with. A run-time forget bias φ (TF1) and the shifts
    β_x, β_h of the two gate-term normalisations (term_beta) are constants added to z_t, so
    they fold exactly into b:

        b_run = b + φ e_f          (VAR 1)        b_run = b + β_x + β_h          (VAR 2)

    Returns copies in a new dict without beta_x, beta_h (the cache keeps them, so later edits of
    params cannot reach a backward); params is left alone."""
    run = {name: value.copy() for name, value in params.items()
           if name not in ("beta_x", "beta_h", "b")}
    b = params["b"].copy()
    H = b.shape[0] // 4
    b[H:2 * H] += forget_bias                                                   # (VAR 1)
    if "beta_x" in params:
        b += params["beta_x"] + params["beta_h"]                                # (VAR 2)
    run["b"] = b
    return run


def unfold_bias_grads(grads, term_beta):
    """Backward of fold_into_bias: ∂b_run/∂b = ∂b_run/∂β_x = ∂b_run/∂β_h = I, so each gets db
    (VAR 2); φ is a constant and has no gradient (VAR 1)."""
    if term_beta:
        grads["beta_x"] = grads["b"].copy()
        grads["beta_h"] = grads["b"].copy()
    return grads


def scan_forward(step, U, h0, c0, mask):
    """Run `step` over t = 0 .. T-1, threading the state (h, c) through it.

    step(t, u_t, h_prev, c_prev, m_t) -> (y_t, h_t, c_t, cache_t) where cache_t is a dict of
    per-step arrays. Returns hs (T, B, H), h (T+1, B, H), c (T+1, B, H) -- the states h_0 .. h_T
    after the masked carry (BPTT 2) -- and the step caches stacked along a leading time axis.
    """
    hs, h, c, caches = [], [h0], [c0], []
    for t in range(U.shape[0]):
        y_t, h_t, c_t, cache_t = step(t, U[t], h[t], c[t], mask[t])
        hs.append(y_t)
        h.append(h_t)
        c.append(c_t)
        caches.append(cache_t)
    stacked = {k: np.stack([ct[k] for ct in caches]) for k in caches[0]}
    return np.stack(hs), np.stack(h), np.stack(c), stacked


def scan_backward(step_backward, dhs, dhT, dcT):
    """Backpropagation through time: visit t = T-1 .. 0 carrying dH_t and dC_t.

    step_backward(t, dy_t, dH_t, dC_t) -> (du_t, dH_{t-1}, dC_{t-1}, dparams_t, states_t) where
    du_t is the gradient w.r.t. the step's input term u_t, dparams_t a dict of per-step
    contributions and states_t = (dh̃_t, dc̃_t), the total gradients w.r.t. the hidden and cell
    values computed at step t (0 on padded rows). dH_T = dhT and dC_T = dcT start the recursion;
    what is left at the end is dh_0, dc_0 (BPTT 9). Returns dU (T, ...), dh_0, dc_0, the summed
    parameter gradients, and dh̃, dc̃ stacked (T, B, H).
    """
    T = dhs.shape[0]
    dH, dC = dhT, dcT
    dU, dh, dc, dparams = [None] * T, [None] * T, [None] * T, {}
    for t in reversed(range(T)):
        dU[t], dH, dC, dparams_t, (dh[t], dc[t]) = step_backward(t, dhs[t], dH, dC)
        for name, g in dparams_t.items():
            dparams[name] = dparams.get(name, 0) + g                    # (BPTT 7)
    return np.stack(dU), dH, dC, dparams, (np.stack(dh), np.stack(dc))


def with_state_grads(grads, states, wanted):
    """Add "dh", "dc" (T, B, H) -- dL/dh̃_t and dL/dc̃_t of every step -- to grads if wanted."""
    if wanted:
        grads["dh"], grads["dc"] = states
    return grads


def input_projection_backward(x, dU, Wx):
    """(BPTT 8) U = X Wx over all T·B frames: dWx = X_flatᵀ dU_flat, dX = dU Wxᵀ."""
    D, G = Wx.shape
    dWx = x.reshape(-1, D).T @ dU.reshape(-1, G)     # (D, 4H)
    dx = dU @ Wx.T                                   # (T, B, D)
    return dWx, dx


def normalized_lstm_backward(step_backward, dhs, dhT, dcT, cache, state_grads):
    """The sequence backward shared by BN-LSTM and LN-LSTM, whose steps return the gradient of
    the input term u_t = x_t Wx and their own parameter parts: BPTT over the steps, then the
    input projection (BPTT 8), (BN-LSTM 11), (LN-LSTM 10)."""
    dU, dh0, dc0, grads, states = scan_backward(
        lambda t, dy, dH, dC: step_backward(dy, dH, dC, t, cache), dhs, dhT, dcT)
    dWx, dx = input_projection_backward(cache.x, dU, cache.params["Wx"])
    grads = {"Wx": dWx, **grads, "x": dx, "h0": dh0, "c0": dc0}
    return with_state_grads(grads, states, state_grads)


def scan_forward_h(step, U, h0, mask):
    """scan_forward for the cells with one state h (the RNN family): run `step` over
    t = 0 .. T-1, threading h through it.

    step(t, u_t, h_prev, m_t) -> (y_t, h_t, cache_t) where cache_t is a dict of per-step arrays.
    Returns hs (T, B, H), h (T+1, B, H) -- the states h_0 .. h_T after the masked carry
    (BPTT 2) -- and the step caches stacked along a leading time axis.
    """
    hs, h, caches = [], [h0], []
    for t in range(U.shape[0]):
        y_t, h_t, cache_t = step(t, U[t], h[t], mask[t])
        hs.append(y_t)
        h.append(h_t)
        caches.append(cache_t)
    stacked = {k: np.stack([ct[k] for ct in caches]) for k in caches[0]}
    return np.stack(hs), np.stack(h), stacked


def scan_backward_h(step_backward, dhs, dhT):
    """scan_backward for the cells with one state h: visit t = T-1 .. 0 carrying dH_t.

    step_backward(t, dy_t, dH_t) -> (du_t, dH_{t-1}, dparams_t, dh̃_t) where du_t is the gradient
    w.r.t. the step's input term u_t, dparams_t a dict of per-step contributions (BPTT 7) and dh̃_t
    the total gradient w.r.t. the value h̃_t computed at step t (0 on padded rows, (BPTT 4)).
    dH_T = dhT starts the recursion; what is left at the end is dh_0 (BPTT 9). Returns dU (T, ...),
    dh_0, the summed parameter gradients, and dh̃ stacked (T, B, H).
    """
    T = dhs.shape[0]
    dH = dhT
    dU, dh, dparams = [None] * T, [None] * T, {}
    for t in reversed(range(T)):
        dU[t], dH, dparams_t, dh[t] = step_backward(t, dhs[t], dH)
        for name, g in dparams_t.items():
            dparams[name] = dparams.get(name, 0) + g                    # (BPTT 7)
    return np.stack(dU), dH, dparams, np.stack(dh)
