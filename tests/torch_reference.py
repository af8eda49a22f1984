"""The twelve cells written again from the equations in PyTorch float64, so that autograd gives a
backward pass independent of refnorm's hand-written BPTT, and `stack`, refnorm.Stack's composition
of them (at the end of the file). Nothing here calls or copies refnorm.

Shapes are time-major: x (T, B, D), mask (T, B) of 0/1, h0, c0 (B, H); params is a dict of
tensors with the names of refnorm's cell.params. Each LSTM function returns hs (T, B, H), hT,
cT; each RNN function (one state, no c) hs, hT.

    (LSTM 1)       z_t = x_t Wx + h_{t-1} Wh + b                 blocks i, f, g, o
    (LSTM 2)       i = σ(z^i), f = σ(z^f), g = tanh(z^g), o = σ(z^o)
    (LSTM 3)       c̃_t = f ⊙ c_{t-1} + i ⊙ g
    (LSTM 4)       h̃_t = o ⊙ tanh(c̃_t)
    (BPTT 2)       h_t = h̃_t where m_t = 1, else h_{t-1};  c_t likewise
    (BPTT 3)       hs_t = m_t ⊙ h̃_t
    (BN-LSTM 2)    z_t = BN_t(h_{t-1} Wh; γ_h, 0) + BN_t(x_t Wx; γ_x, 0) + b      Cooijmans eq. 6
    (BN-LSTM 3)    c̃_t by (LSTM 3), raw c̃_t carried                              Cooijmans eq. 7
    (BN-LSTM 4)    h̃_t = o ⊙ tanh(BN_t(c̃_t; γ_c, β_c))                           Cooijmans eq. 8
    (SEQBN-LSTM)   z_t = BN_S(x_t Wx; γ_x, 0) + h_{t-1} Wh + b, one set of statistics over every
                   valid (t, b) frame                                   Laurent et al. 2016
    (LN-LSTM 2-4)  as BN-LSTM with LN over each row (the 4H vector, or each H-wide gate block)
                   in place of BN_t                                     Ba et al. 2016, eqs. 20-22

The variants (derivations/variants.md), written here the way the peers write them -- the shifts
as shifts of the normalisations, the forget bias added to z^f -- not folded into b as refnorm
does:
    forget_bias    z^f += φ at run time                                         TF1
    beta_x/beta_h  N(u; γ_x, β_x) + N(a; γ_h, β_h) + b                           fastrnns, TFA, jihunchoi
    carry          "normalized": N(c̃_t; γ_c, β_c) is the carried state          fastrnns, TFA, TF1
    terms          "summed": LN(x_t Wx + h_{t-1} Wh; γ_z, 0) + b                TF1 contrib

The vanilla RNN family (Elman 1990; refnorm's derivations/rnn.md and the files after it), with
φ = tanh or relu and no gates:
    (RNN 1-2)      h̃_t = φ(x_t Wx + h_{t-1} Wh + b)                               torch.nn.RNN
    (BN-RNN 2)     h̃_t = φ(BN_t(x_t Wx; γ_x, 0) + BN_t(h_{t-1} Wh; γ_h, 0) + b)  terms="separate"
    (BN-RNN 3)     h̃_t = φ(BN_t(x_t Wx + h_{t-1} Wh; γ_z, 0) + b)                terms="summed"
                   (the tanh RNN of Cooijmans et al.'s own code, their Figure 1)
    (SEQBN-RNN)    h̃_t = φ(BN_S(x_t Wx; γ_x, 0) + h_{t-1} Wh + b)                Laurent et al.
    (LN-RNN 2)     h̃_t = φ(LN(x_t Wx + h_{t-1} Wh; γ_z, 0) + b)                  Ba et al. eq. 4
    (LN-RNN 3)     h̃_t = φ(LN(x_t Wx; γ_x, 0) + LN(h_{t-1} Wh; γ_h, 0) + b)      terms="separate"
with the same masked carry and zero outputs at padded steps.

Batch norm in training: over the valid rows r (m_r = 1), n = Σ m_r,
    μ = Σ m_r z_r / n,   v = Σ m_r (z_r − μ)² / n,   ẑ_r = m_r (z_r − μ) / sqrt(v + eps)
(padded rows get ẑ = 0; their outputs are discarded by the carry anyway). In inference μ, v are
the given population statistics.
"""
import torch


def masked_stats(z, m):
    """Mean and biased two-pass variance of the rows of z (N, F) with weight m (N,) in {0, 1}."""
    w = m[:, None]
    n = m.sum()
    mean = (w * z).sum(0) / n
    var = (w * (z - mean) ** 2).sum(0) / n
    return mean, var


def batch_norm(z, m, gamma, beta, eps, stats=None):
    """γ ⊙ ẑ + β with ẑ from the batch (stats None, gradients through them) or from stats.
    Returns the output and the (mean, var) used."""
    mean, var = masked_stats(z, m) if stats is None else stats
    z_hat = (z - mean) / torch.sqrt(var + eps)
    if stats is None:
        z_hat = m[:, None] * z_hat
    return gamma * z_hat + beta, (mean, var)


def layer_norm(z, gamma, beta, eps, groups=1):
    """Per row of z (B, F): normalise each of `groups` equal blocks over its own features."""
    B, F = z.shape
    zg = z.reshape(B, groups, F // groups)
    mean = zg.mean(-1, keepdim=True)
    var = ((zg - mean) ** 2).mean(-1, keepdim=True)
    z_hat = ((zg - mean) / torch.sqrt(var + eps)).reshape(B, F)
    return gamma * z_hat + beta


def cell_update(z, c_prev, H, forget_bias=0.0):
    """(LSTM 2), (LSTM 3): the activated gate o and the new raw cell c̃."""
    i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
    c_new = torch.sigmoid(f + forget_bias) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o), c_new


def masked_carry(m_t, h_new, c_new, h, c, out):
    """(BPTT 2), (BPTT 3): keep the old state where m_t = 0, output m_t ⊙ h̃_t."""
    keep = m_t[:, None] > 0
    out.append(m_t[:, None] * h_new)
    return torch.where(keep, h_new, h), torch.where(keep, c_new, c)


def lstm(x, h0, c0, mask, params, *, forget_bias=0.0):
    """(LSTM 1)-(LSTM 4) with the masked carry."""
    H = h0.shape[1]
    h, c, out = h0, c0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        z = x_t @ params["Wx"] + h @ params["Wh"] + params["b"]
        o, c_new = cell_update(z, c, H, forget_bias)
        h, c = masked_carry(m_t, o * torch.tanh(c_new), c_new, h, c, out)
    return torch.stack(out), h, c


def bn_lstm(x, h0, c0, mask, params, *, training, eps, pop=None, record=None, stat_mask=None,
            forget_bias=0.0, carry="raw"):
    """(BN-LSTM 1)-(BN-LSTM 4). Training: per-step statistics over the valid rows of step t.
    Inference: pop[name][t] (names mean_x, var_x, mean_h, var_h, mean_c, var_c), the slot already
    chosen for local step t. A dict `record` receives the statistics used, {name: (T, F)}.
    stat_mask (T, B): the rows that enter the statistics (default: the valid rows)."""
    p, H = params, h0.shape[1]
    stat_mask = mask if stat_mask is None else stat_mask
    beta_x, beta_h = p.get("beta_x", 0.0), p.get("beta_h", 0.0)
    h, c, out = h0, c0, []
    used = {key: [] for key in ("mean_x", "var_x", "mean_h", "var_h", "mean_c", "var_c")}

    def bn(z, m_t, t, site, gamma, beta):
        stats = None if training else (pop["mean_" + site][t], pop["var_" + site][t])
        y, (mean, var) = batch_norm(z, m_t, gamma, beta, eps, stats)
        used["mean_" + site].append(mean)
        used["var_" + site].append(var)
        return y

    for t, (x_t, m_t, s_t) in enumerate(zip(x.unbind(0), mask.unbind(0), stat_mask.unbind(0))):
        z = (bn(h @ p["Wh"], s_t, t, "h", p["gamma_h"], beta_h)
             + bn(x_t @ p["Wx"], s_t, t, "x", p["gamma_x"], beta_x) + p["b"])
        o, c_new = cell_update(z, c, H, forget_bias)
        c_bn = bn(c_new, s_t, t, "c", p["gamma_c"], p["beta_c"])
        h_new = o * torch.tanh(c_bn)
        h, c = masked_carry(m_t, h_new, c_bn if carry_mode(carry) else c_new, h, c, out)
    if record is not None:
        record.update({key: torch.stack(v) for key, v in used.items()})
    return torch.stack(out), h, c


def seq_bn_lstm(x, h0, c0, mask, params, *, training, eps, pop=None, record=None):
    """(SEQBN-LSTM 1)-(3): BN_S of x_t Wx over every valid frame, then the LSTM recurrence.
    Inference: pop = {"mean_x", "var_x"} (4H,). A dict `record` receives the statistics used."""
    T, B, D = x.shape
    H = h0.shape[1]
    stats = None if training else (pop["mean_x"], pop["var_x"])
    u, (mean, var) = batch_norm(x.reshape(T * B, D) @ params["Wx"], mask.reshape(T * B),
                         params["gamma_x"], 0.0, eps, stats)
    h, c, out = h0, c0, []
    for u_t, m_t in zip(u.reshape(T, B, 4 * H).unbind(0), mask.unbind(0)):
        o, c_new = cell_update(u_t + h @ params["Wh"] + params["b"], c, H)
        h, c = masked_carry(m_t, o * torch.tanh(c_new), c_new, h, c, out)
    if record is not None:
        record.update(mean_x=mean, var_x=var)
    return torch.stack(out), h, c


def carry_mode(name):
    """True when the normalised cell is the carried state."""
    assert name in ("raw", "normalized")
    return name == "normalized"


def ln_lstm(x, h0, c0, mask, params, *, eps, per_gate, forget_bias=0.0, carry="raw",
            terms="separate"):
    """(LN-LSTM 1)-(LN-LSTM 4): LN over the joint 4H row, or over each gate block (per_gate)."""
    p, H = params, h0.shape[1]
    groups = 4 if per_gate else 1
    beta_x, beta_h = p.get("beta_x", 0.0), p.get("beta_h", 0.0)
    h, c, out = h0, c0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        if terms == "separate":
            z = (layer_norm(h @ p["Wh"], p["gamma_h"], beta_h, eps, groups)
                 + layer_norm(x_t @ p["Wx"], p["gamma_x"], beta_x, eps, groups) + p["b"])
        else:
            z = layer_norm(x_t @ p["Wx"] + h @ p["Wh"], p["gamma_z"], p["b"], eps, groups)
        o, c_new = cell_update(z, c, H, forget_bias)
        c_ln = layer_norm(c_new, p["gamma_c"], p["beta_c"], eps)
        h_new = o * torch.tanh(c_ln)
        h, c = masked_carry(m_t, h_new, c_ln if carry_mode(carry) else c_new, h, c, out)
    return torch.stack(out), h, c


# -- the vanilla RNN family ----------------------------------------------------------------------
def phi(z, nonlinearity):
    """(RNN 2): the RNN's activation."""
    assert nonlinearity in ("tanh", "relu")
    return torch.tanh(z) if nonlinearity == "tanh" else torch.relu(z)


def carry_h(m_t, h_new, h, out, keep=None):
    """(BPTT 2), (BPTT 3) for one state: keep h where m_t = 0, output m_t ⊙ h̃_t. A list `keep`
    receives h̃_t with retain_grad, so that autograd gives dL/dh̃_t (the cells' state_grads)."""
    if keep is not None:
        h_new.retain_grad()
        keep.append(h_new)
    out.append(m_t[:, None] * h_new)
    return torch.where(m_t[:, None] > 0, h_new, h)


def rnn(x, h0, mask, params, *, nonlinearity="tanh", keep=None):
    """(RNN 1)-(RNN 2) with the masked carry. keep: see carry_h (every RNN function takes it)."""
    p, h, out = params, h0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        h = carry_h(m_t, phi(x_t @ p["Wx"] + h @ p["Wh"] + p["b"], nonlinearity), h, out, keep)
    return torch.stack(out), h


def bn_rnn(x, h0, mask, params, *, training, eps, terms="separate", nonlinearity="tanh",
           pop=None, record=None, stat_mask=None, keep=None):
    """(BN-RNN 2) or (BN-RNN 3), per-step statistics over the rows of stat_mask (default: the
    valid rows) in training, pop[name][t] in inference (mean_x, var_x, mean_h, var_h, or
    mean_z, var_z: the slot already chosen for local step t). A dict `record` receives the
    statistics used, {name: (T, H)}."""
    p = params
    stat_mask = mask if stat_mask is None else stat_mask
    sites = ("x", "h") if terms == "separate" else ("z",)
    used = {f"{kind}_{site}": [] for site in sites for kind in ("mean", "var")}
    h, out = h0, []

    def bn(z, s_t, t, site):
        stats = None if training else (pop["mean_" + site][t], pop["var_" + site][t])
        y, (mean, var) = batch_norm(z, s_t, p["gamma_" + site], 0.0, eps, stats)
        used["mean_" + site].append(mean)
        used["var_" + site].append(var)
        return y

    for t, (x_t, m_t, s_t) in enumerate(zip(x.unbind(0), mask.unbind(0), stat_mask.unbind(0))):
        if terms == "separate":
            z = bn(x_t @ p["Wx"], s_t, t, "x") + bn(h @ p["Wh"], s_t, t, "h") + p["b"]
        else:
            assert terms == "summed"
            z = bn(x_t @ p["Wx"] + h @ p["Wh"], s_t, t, "z") + p["b"]
        h = carry_h(m_t, phi(z, nonlinearity), h, out, keep)
    if record is not None:
        record.update({key: torch.stack(v) for key, v in used.items()})
    return torch.stack(out), h


def seq_bn_rnn(x, h0, mask, params, *, training, eps, nonlinearity="tanh", pop=None,
               record=None, stat_mask=None, keep=None):
    """(SEQBN-RNN 1)-(2): BN_S of x_t Wx over every frame of stat_mask (default: the valid
    ones), then the plain recurrence. Inference: pop = {"mean_x", "var_x"} (H,)."""
    T, B, D = x.shape
    H = h0.shape[1]
    stat_mask = mask if stat_mask is None else stat_mask
    stats = None if training else (pop["mean_x"], pop["var_x"])
    u, (mean, var) = batch_norm(x.reshape(T * B, D) @ params["Wx"], stat_mask.reshape(T * B),
                                params["gamma_x"], 0.0, eps, stats)
    h, out = h0, []
    for u_t, m_t in zip(u.reshape(T, B, H).unbind(0), mask.unbind(0)):
        h = carry_h(m_t, phi(u_t + h @ params["Wh"] + params["b"], nonlinearity), h, out, keep)
    if record is not None:
        record.update(mean_x=mean, var_x=var)
    return torch.stack(out), h


def ln_rnn(x, h0, mask, params, *, eps, terms="summed", nonlinearity="tanh", keep=None):
    """(LN-RNN 2) or (LN-RNN 3): LN over the H features of each row; b is the only shift."""
    p, h, out = params, h0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        if terms == "summed":
            z = layer_norm(x_t @ p["Wx"] + h @ p["Wh"], p["gamma_z"], 0.0, eps) + p["b"]
        else:
            assert terms == "separate"
            z = (layer_norm(x_t @ p["Wx"], p["gamma_x"], 0.0, eps)
                 + layer_norm(h @ p["Wh"], p["gamma_h"], 0.0, eps) + p["b"])
        h = carry_h(m_t, phi(z, nonlinearity), h, out, keep)
    return torch.stack(out), h


# -- the GRU family ------------------------------------------------------------------------------
# (derivations/gru.md and the files after it; gate blocks r, z, n, z the update gate)
#     (GRU 1-5)      r = σ(u^r + a^r), z = σ(u^z + a^z) with u = x Wx + b, a = h_{t-1} Wh
#                    reset="after":  n = tanh(u^n + r ⊙ (a^n + b_hn))               torch.nn.GRU
#                    reset="before": n = tanh(u^n + (r ⊙ h_{t-1}) Wh^n), no b_hn      Keras/TF1
#                    h̃_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
#     (BN-GRU 1-3)   v = BN_t(x Wx; γ_x, 0) + b, w = BN_t(h_{t-1} Wh; γ_h, 0), then reset after
#                    with v for u, w for a
#     (SEQBN-GRU)    v = BN_S(x Wx; γ_x, 0) + b over every frame, a = h_{t-1} Wh, reset after
#     (LN-GRU 1-3)   as BN-GRU with LN over the 3H features of each row (haste LayerNormGRU)
def gru_step(v, a, h, H, b_hn=None, Wh_n=None):
    """One GRU step from the input side v (B, 3H) and the recurrent side a (B, 3H, or 2H for
    reset before, where the n block is (r ⊙ h) Wh_n instead)."""
    r = torch.sigmoid(v[:, :H] + a[:, :H])
    z = torch.sigmoid(v[:, H:2 * H] + a[:, H:2 * H])
    if Wh_n is None:                                              # reset after (GRU 3)
        n = torch.tanh(v[:, 2 * H:] + r * (a[:, 2 * H:] + b_hn))
    else:                                                         # reset before (GRU 4)
        n = torch.tanh(v[:, 2 * H:] + (r * h) @ Wh_n)
    return (1 - z) * n + z * h


def gru(x, h0, mask, params, *, reset="after", keep=None):
    """(GRU 1)-(GRU 5) with the masked carry."""
    assert reset in ("after", "before")
    p, H, h, out = params, h0.shape[1], h0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        v = x_t @ p["Wx"] + p["b"]
        if reset == "after":
            h_new = gru_step(v, h @ p["Wh"], h, H, b_hn=p["b_hn"])
        else:
            h_new = gru_step(v, h @ p["Wh"][:, :2 * H], h, H, Wh_n=p["Wh"][:, 2 * H:])
        h = carry_h(m_t, h_new, h, out, keep)
    return torch.stack(out), h


def bn_gru(x, h0, mask, params, *, training, eps, pop=None, record=None, stat_mask=None,
           keep=None):
    """(BN-GRU 1)-(BN-GRU 3): per-step statistics over the rows of stat_mask (default: the valid
    rows) in training, pop[name][t] in inference (mean_x, var_x, mean_h, var_h: the slot already
    chosen for local step t). A dict `record` receives the statistics used, {name: (T, 3H)}."""
    p, H = params, h0.shape[1]
    stat_mask = mask if stat_mask is None else stat_mask
    used = {key: [] for key in ("mean_x", "var_x", "mean_h", "var_h")}
    h, out = h0, []

    def bn(z, s_t, t, site):
        stats = None if training else (pop["mean_" + site][t], pop["var_" + site][t])
        y, (mean, var) = batch_norm(z, s_t, p["gamma_" + site], 0.0, eps, stats)
        used["mean_" + site].append(mean)
        used["var_" + site].append(var)
        return y

    for t, (x_t, m_t, s_t) in enumerate(zip(x.unbind(0), mask.unbind(0), stat_mask.unbind(0))):
        v = bn(x_t @ p["Wx"], s_t, t, "x") + p["b"]
        w = bn(h @ p["Wh"], s_t, t, "h")
        h = carry_h(m_t, gru_step(v, w, h, H, b_hn=p["b_hn"]), h, out, keep)
    if record is not None:
        record.update({key: torch.stack(v) for key, v in used.items()})
    return torch.stack(out), h


def seq_bn_gru(x, h0, mask, params, *, training, eps, pop=None, record=None, stat_mask=None,
               keep=None):
    """(SEQBN-GRU 1)-(2): BN_S of x_t Wx over every frame of stat_mask (default: the valid
    ones), + b, then the reset-after recurrence. Inference: pop = {"mean_x", "var_x"} (3H,)."""
    T, B, D = x.shape
    H = h0.shape[1]
    stat_mask = mask if stat_mask is None else stat_mask
    stats = None if training else (pop["mean_x"], pop["var_x"])
    u, (mean, var) = batch_norm(x.reshape(T * B, D) @ params["Wx"], stat_mask.reshape(T * B),
                                params["gamma_x"], 0.0, eps, stats)
    h, out = h0, []
    for u_t, m_t in zip(u.reshape(T, B, 3 * H).unbind(0), mask.unbind(0)):
        h_new = gru_step(u_t + params["b"], h @ params["Wh"], h, H, b_hn=params["b_hn"])
        h = carry_h(m_t, h_new, h, out, keep)
    if record is not None:
        record.update(mean_x=mean, var_x=var)
    return torch.stack(out), h


def ln_gru(x, h0, mask, params, *, eps, keep=None):
    """(LN-GRU 1)-(LN-GRU 3): LN over the 3H features of x Wx and of h Wh, no shifts but b and
    b_hn (haste's LayerNormGRU)."""
    p, H, h, out = params, h0.shape[1], h0, []
    for x_t, m_t in zip(x.unbind(0), mask.unbind(0)):
        v = layer_norm(x_t @ p["Wx"], p["gamma_x"], 0.0, eps) + p["b"]
        w = layer_norm(h @ p["Wh"], p["gamma_h"], 0.0, eps)
        h = carry_h(m_t, gru_step(v, w, h, H, b_hn=p["b_hn"]), h, out, keep)
    return torch.stack(out), h


# -- stacks of cells (derivations/stack.md) ------------------------------------------------------
#     (STACK 1)      (R u)_{t,b} = u_{ℓ_b − 1 − t, b} for t < ℓ_b, u_{t,b} for t ≥ ℓ_b
#     (STACK 2-4)    o = [ cell_fwd(u) | R cell_bwd(R u) ], the final states of both
#     (STACK 5-8)    v = m ⊙ N(o): "bn" per step over its valid rows, "seq_bn" over every valid
#                    (t, b) frame, "ln" per frame over its F features; None: v = o
#     (STACK 9)      the next layer's input: v ⊙ ξ / (1 − p), the dropout factor given
#     (STACK 10)     ys = o of the last layer
def reverse_within(a, lengths):
    """(STACK 1) on a (T, B, ...) tensor: each sequence's first lengths[b] steps reversed, its
    padded tail in place."""
    T, B = a.shape[:2]
    t = torch.arange(T)[:, None]
    n = lengths[None, :]
    return a[torch.where(t < n, n - 1 - t, t), torch.arange(B)[None, :]]


def between_norm(o, mask, gamma, beta, eps, kind, stats=None, record=None):
    """(STACK 5)-(STACK 8): m ⊙ N(o) for o (T, B, F). stats None: batch statistics (training);
    else the population (mean, var), (T, F) each for "bn" (the slot already chosen per step),
    (F,) for "seq_bn". A list `record` receives the (mean, var) used: (T, F) each for "bn" (0
    at a step without a valid row, which takes no statistics), (F,) for "seq_bn"."""
    if kind is None:
        return o                                                              # (STACK 8)
    T, B, F = o.shape
    if kind == "ln":                                                          # (STACK 7)
        y = layer_norm(o.reshape(T * B, F), gamma, beta, eps).reshape(T, B, F)
    elif kind == "seq_bn":                                                    # (STACK 6)
        y, used = batch_norm(o.reshape(T * B, F), mask.reshape(T * B), gamma, beta, eps, stats)
        y = y.reshape(T, B, F)
    else:                                                                     # (STACK 5)
        assert kind == "bn"
        steps, means, variances = [], [], []
        for t in range(T):
            if stats is None and not mask[t].any():
                y_t, used = torch.zeros_like(o[t]), (torch.zeros(F, dtype=o.dtype),) * 2
            else:
                y_t, used = batch_norm(o[t], mask[t], gamma, beta, eps,
                                       None if stats is None else (stats[0][t], stats[1][t]))
            steps.append(y_t)
            means.append(used[0])
            variances.append(used[1])
        y, used = torch.stack(steps), (torch.stack(means), torch.stack(variances))
    if record is not None and kind != "ln":
        record.append(used)
    return mask[..., None] * y


def stack(x, initial, mask, params, cell, *, num_layers, directions, between, eps, pop=None,
          dropout=None, record=None):
    """(STACK 1)-(STACK 10): the stack's forward, composed from the cell functions above.

    initial: the initial states (h0,) or (h0, c0), each (L·dirs, B, H), row l·dirs + d.
    params: the flat dict of refnorm.Stack's names ("l0.fwd.Wx", "l0.norm.gamma", ...).
    cell(layer, direction, x, states, mask, p): one of the cell functions of this module with its
    options and statistics mode bound, p its own parameters by the cell's names; returns hs and
    the final states. directions: ("fwd",) or ("fwd", "bwd"). pop[l]: the population statistics
    of the norm after layer l (see between_norm), None for batch statistics. dropout[l]: the
    factor ξ / (1 − p) (T, B, F) after layer l, or None. record: a list that receives the
    between norms' statistics, layer by layer. Returns ys (T, B, dirs·H) and the final states,
    each (L·dirs, B, H)."""
    n = mask.sum(0).long()
    u, finals = x, [[] for _ in initial]
    for layer in range(num_layers):
        outs = []
        for k, d in enumerate(directions):
            prefix = f"l{layer}.{d}."
            p = {name[len(prefix):]: value for name, value in params.items()
                 if name.startswith(prefix)}
            start = [s[layer * len(directions) + k] for s in initial]
            inp = u if d == "fwd" else reverse_within(u, n)                   # (STACK 3)
            hs, *fin = cell(layer, d, inp, start, mask, p)                     # (STACK 2)
            outs.append(hs if d == "fwd" else reverse_within(hs, n))
            for s, value in enumerate(fin):
                finals[s].append(value)
        o = torch.cat(outs, dim=-1)                                            # (STACK 4)
        if layer == num_layers - 1:
            break                                                              # (STACK 10)
        u = between_norm(o, mask, params.get(f"l{layer}.norm.gamma"),
                         params.get(f"l{layer}.norm.beta"), eps, between,
                         None if pop is None else pop[layer], record)
        if dropout is not None and dropout[layer] is not None:
            u = u * dropout[layer]                                             # (STACK 9)
    return o, tuple(torch.stack(f) for f in finals)
