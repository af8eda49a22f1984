"""Function-level proofs of the GRU family's book: refnorm/numpy_ref/gru.py, bn_gru.py,
seq_bn_gru.py, ln_gru.py, called directly with random parameters (no cell classes).

1. central finite differences in float64 of L = Σ dhs⊙hs + Σ dhT⊙hT (BPTT 1) w.r.t. every
   parameter, x and h0, for every cell × reset form (GRU) × training/inference (BN);
2. PyTorch float64 autograd of the same equations written again below (nothing here calls
   refnorm to build them): outputs, every gradient, dL/dh̃_t, the cached gates and statistics;
   and the reset-after GRU against torch.nn.GRU, full length and packed ragged lengths, with
   torch's two biases drawn apart and folded;
3. properties: LN-GRU invariant to scaling Wx and Wh apart; BN-GRU in training invariant to
   scaling any column of Wx or Wh; z = 1 keeps h_0, forward and backward; a one-valid-row BN
   step leaks with constant gates (BN-GRU 8); sequential equals batched; padding invariance;
4. a backward with a path of dh_{t-1} dropped is caught.

Every problem is random and non-zero: weights and biases (b_hn included) ~ N(0, 0.5²), gains
~ U(0.5, 1.5), x ~ N(0, 1), h0 ~ N(0, 0.5²), upstream dhs, dhT ~ N(0, 1); BN population
statistics means ~ N(0, 0.5²), variances ~ U(0.5, 1.5). The ragged mask has lengths
(6, 4, 0, 3, 1): per-step BN sees 4, 3, 3 valid rows in the first steps (a 2-row BN step maps
every column to ±γ and passes almost no gradient, which would leave dWh small against the
round-off of the differences), then 2, then a single valid row at steps 4 and 5, and one
sequence has no valid step at all.
"""
import numpy as np
import pytest
import torch

import refnorm.numpy_ref.gru
import refnorm.numpy_ref.ln_gru
from refnorm.config import DEFAULT_EPS
from refnorm.gradcheck import numerical_gradient, relative_error
from refnorm.numpy_ref import (bn_gru_backward, bn_gru_forward, gru_backward, gru_forward,
                               ln_gru_backward, ln_gru_forward, seq_bn_gru_backward,
                               seq_bn_gru_forward)

from helpers import TOL, ragged_mask
from test_rnn_book import TINY_EPS, loss, t_batch_norm, t_layer_norm

T, B, D, H = 6, 5, 3, 3
G = 3 * H
LENGTHS = (6, 4, 0, 3, 1)
FORWARD = {"gru": gru_forward, "bn_gru": bn_gru_forward, "seq_bn_gru": seq_bn_gru_forward,
           "ln_gru": ln_gru_forward}
BACKWARD = {"gru": gru_backward, "bn_gru": bn_gru_backward, "seq_bn_gru": seq_bn_gru_backward,
            "ln_gru": ln_gru_backward}


CASES = ([("gru", {"reset": reset}) for reset in ("after", "before")]
         + [(stem, {"training": training}) for stem in ("bn_gru", "seq_bn_gru")
            for training in (True, False)]
         + [(stem, {"training": True, "pad_stats": "include"}) for stem in ("bn_gru", "seq_bn_gru")]
         + [("ln_gru", {})])


def case_id(c):
    stem, opts = c
    return "-".join([stem] + [str(v) if not isinstance(v, bool) else ("train" if v else "infer")
                              for v in opts.values()])


CASE_IDS = [case_id(c) for c in CASES]


# -- problems ---------------------------------------------------------------------------------
def reset_of(stem, opts):
    return opts.get("reset", "after")


def gain_names(stem):
    return {"gru": (), "seq_bn_gru": ("gamma_x",)}.get(stem, ("gamma_x", "gamma_h"))


def stat_names(stem):
    """The keys of pop and of the cache's statistics."""
    return {"gru": (), "seq_bn_gru": ("mean_x", "var_x")}.get(
        stem, ("mean_x", "var_x", "mean_h", "var_h"))


def draw(stem, opts, seed, T=T, lengths=LENGTHS):
    """A random problem: params, pop (BN inference), x, h0, mask, dhs, dhT, as NumPy float64."""
    rng = np.random.default_rng(seed)
    p = {"Wx": 0.5 * rng.standard_normal((D, G)), "Wh": 0.5 * rng.standard_normal((H, G)),
         "b": 0.5 * rng.standard_normal(G)}
    if reset_of(stem, opts) == "after":
        p["b_hn"] = 0.5 * rng.standard_normal(H)
    for name in gain_names(stem):
        p[name] = rng.uniform(0.5, 1.5, G)
    pop = None
    if stem in ("bn_gru", "seq_bn_gru") and not opts["training"]:
        shape = (T, G) if stem == "bn_gru" else (G,)
        pop = {k: (rng.uniform(0.5, 1.5, shape) if k.startswith("var")
                   else 0.5 * rng.standard_normal(shape)) for k in stat_names(stem)}
    return {"params": p, "pop": pop, "x": rng.standard_normal((T, B, D)),
            "h0": 0.5 * rng.standard_normal((B, H)), "mask": ragged_mask(T, B, lengths),
            "dhs": rng.standard_normal((T, B, H)), "dhT": rng.standard_normal((B, H))}


def forward(stem, opts, prob, eps=DEFAULT_EPS, **override):
    """The book's forward of `stem` on a problem; override replaces params, x, h0, mask, pop."""
    a = {**prob, **override}
    if stem == "gru":
        kw = {"reset": opts["reset"]}
    elif stem == "ln_gru":
        kw = {"eps": eps}
    else:
        kw = {"training": opts["training"], "eps": eps, "pop": a["pop"],
              "pad_stats": opts.get("pad_stats", "exclude")}
    return FORWARD[stem](a["x"], a["h0"], a["mask"], a["params"], **kw)


# -- the same equations, written again in torch ----------------------------------------------
def torch_cell(stem, opts, x, h0, mask, p, pop, eps=DEFAULT_EPS):
    """hs, hT, the values h̃_t and what the cache should hold (gates, hn or rh, statistics),
    from the equations (blocks r, z, n of the 3H axis):
        gru          v_t = x_t Wx + b,                 w_t = h_{t-1} Wh
        bn_gru       v_t = BN_t(x_t Wx; γ_x) + b,      w_t = BN_t(h_{t-1} Wh; γ_h)
        seq_bn_gru   v_t = BN_S(X Wx; γ_x)_t + b,      w_t = h_{t-1} Wh,  S all valid frames
        ln_gru       v_t = LN(x_t Wx; γ_x) + b,        w_t = LN(h_{t-1} Wh; γ_h)   (over 3H)
        r = σ(v^r + w^r), z = σ(v^z + w^z),
        n = tanh(v^n + r ⊙ (w^n + b_hn))   (reset after)
        n = tanh(v^n + (r ⊙ h_{t-1}) Wh^n)  (reset before; w has only the r, z blocks)
        h̃_t = (1 − z) ⊙ n + z ⊙ h_{t-1}; h_t = h̃_t where m_t = 1, else h_{t-1};
        output m_t ⊙ h̃_t."""
    reset = reset_of(stem, opts)
    s = mask if opts.get("pad_stats", "exclude") == "exclude" else torch.ones_like(mask)
    saved = {k: [] for k in ("gates", "hn" if reset == "after" else "rh", *stat_names(stem))}

    def keep(**found):
        for k, v in found.items():
            saved[k].append(v)

    if stem == "seq_bn_gru":
        st = None if pop is None else (pop["mean_x"], pop["var_x"])
        Ubn, mean, var = t_batch_norm((x @ p["Wx"]).reshape(-1, G), s.reshape(-1), p["gamma_x"],
                                      eps, st)
        V = Ubn.reshape(x.shape[0], -1, G) + p["b"]
        keep(mean_x=mean, var_x=var)
    h, hs, h_tildes = h0, [], []
    for t in range(x.shape[0]):
        u = x[t] @ p["Wx"]
        if stem == "gru" and reset == "before":
            v, w = u + p["b"], h @ p["Wh"][:, :2 * H]
        elif stem == "gru":
            v, w = u + p["b"], h @ p["Wh"]
        elif stem == "seq_bn_gru":
            v, w = V[t], h @ p["Wh"]
        elif stem == "bn_gru":
            pt = None if pop is None else {k: val[t] for k, val in pop.items()}
            nu, mx, vx = t_batch_norm(u, s[t], p["gamma_x"], eps,
                                      pt and (pt["mean_x"], pt["var_x"]))
            w, mh, vh = t_batch_norm(h @ p["Wh"], s[t], p["gamma_h"], eps,
                                     pt and (pt["mean_h"], pt["var_h"]))
            v = nu + p["b"]
            keep(mean_x=mx, var_x=vx, mean_h=mh, var_h=vh)
        else:
            nu, mx, vx = t_layer_norm(u, p["gamma_x"], eps)
            w, mh, vh = t_layer_norm(h @ p["Wh"], p["gamma_h"], eps)
            v = nu + p["b"]
            keep(mean_x=mx, var_x=vx, mean_h=mh, var_h=vh)
        r = torch.sigmoid(v[:, :H] + w[:, :H])
        z = torch.sigmoid(v[:, H:2 * H] + w[:, H:2 * H])
        if reset == "after":
            hn = w[:, 2 * H:] + p["b_hn"]
            n = torch.tanh(v[:, 2 * H:] + r * hn)
            keep(hn=hn)
        else:
            rh = r * h
            n = torch.tanh(v[:, 2 * H:] + rh @ p["Wh"][:, 2 * H:])
            keep(rh=rh)
        keep(gates=torch.cat([r, z, n], dim=-1))
        h_tilde = (1 - z) * n + z * h
        if h_tilde.requires_grad:
            h_tilde.retain_grad()
        m = mask[t][:, None]
        hs.append(m * h_tilde)
        h = torch.where(m > 0, h_tilde, h)
        h_tildes.append(h_tilde)
    saved = {k: torch.stack(v) if not (stem == "seq_bn_gru" and k in stat_names(stem)) else v[0]
             for k, v in saved.items()}
    return torch.stack(hs), h, h_tildes, saved


def tensors(prob, grad=True):
    as_t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=grad)  # noqa: E731
    p = {k: as_t(v) for k, v in prob["params"].items()}
    pop = None if prob["pop"] is None else {k: torch.tensor(v) for k, v in prob["pop"].items()}
    return p, pop, as_t(prob["x"]), as_t(prob["h0"]), torch.tensor(prob["mask"])


# -- 1. finite differences ----------------------------------------------------------------------
@pytest.mark.parametrize("stem,opts", CASES, ids=CASE_IDS)
def test_backward_matches_central_differences(stem, opts):
    prob = draw(stem, opts, seed=11)
    hs, hT, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache)
    names = list(prob["params"]) + ["x", "h0"]
    assert sorted(grads) == sorted(names)

    def L(name, value):
        if name in prob["params"]:
            return loss(*forward(stem, opts, prob, params={**prob["params"], name: value})[:2],
                        prob)
        return loss(*forward(stem, opts, prob, **{name: value})[:2], prob)

    start = {**prob["params"], "x": prob["x"], "h0": prob["h0"]}
    errors = {name: relative_error(grads[name],
                                   numerical_gradient(lambda v, n=name: L(n, v), start[name]))
              for name in names}
    assert max(errors.values()) <= TOL["gradcheck"], errors


# -- 2. autodiff ------------------------------------------------------------------------------
@pytest.mark.parametrize("stem,opts", CASES, ids=CASE_IDS)
def test_forward_backward_and_cache_match_torch_autograd(stem, opts):
    prob = draw(stem, opts, seed=23)
    hs, hT, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache, state_grads=True)

    p, pop, x, h0, mask = tensors(prob)
    ths, thT, h_tildes, saved = torch_cell(stem, opts, x, h0, mask, p, pop)
    L = (torch.tensor(prob["dhs"]) * ths).sum() + (torch.tensor(prob["dhT"]) * thT).sum()
    L.backward()
    want = {**{k: v.grad for k, v in p.items()}, "x": x.grad, "h0": h0.grad,
            "dh": torch.stack([ht.grad for ht in h_tildes])}
    assert relative_error(hs, ths.detach().numpy()) <= TOL["autodiff"]
    assert relative_error(hT, thT.detach().numpy()) <= TOL["autodiff"]
    assert sorted(grads) == sorted(want)
    for name, g in want.items():
        assert relative_error(grads[name], g.numpy()) <= TOL["autodiff"], name
    # the cache holds the gates, q_t or ρ_t and the statistics the forward used (what the
    # compiled mirrors and the population bookkeeping read, by these names)
    for name, v in saved.items():
        assert relative_error(getattr(cache, name), v.detach().numpy()) <= TOL["autodiff"], name
    if stem == "gru":
        assert (cache.rh if opts["reset"] == "after" else cache.hn) is None
    s = prob["mask"] if opts.get("pad_stats", "exclude") == "exclude" else np.ones((T, B))
    if stem == "bn_gru":
        np.testing.assert_array_equal(cache.count, s.sum(axis=1))
    if stem == "seq_bn_gru":
        assert cache.count == s.sum()


@pytest.mark.parametrize("lengths", [(T,) * B, (6, 4, 1, 3, 2)], ids=["full", "packed"])
def test_gru_matches_torch_nn_gru(lengths):
    """torch.nn.GRU with its two biases drawn apart: b = [b_ir + b_hr | b_iz + b_hz | b_in],
    b_hn = b_hh's n block. Full length, and packed ragged lengths, whose semantics (state carried,
    outputs 0 past the end) the mask reproduces. Every torch gradient, both biases' included."""
    opts = {"reset": "after"}
    prob = draw("gru", opts, seed=5, lengths=lengths)
    torch.manual_seed(0)
    net = torch.nn.GRU(D, H).double()
    rng = np.random.default_rng(6)
    b_ih, b_hh = 0.5 * rng.standard_normal(G), 0.5 * rng.standard_normal(G)
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.tensor(prob["params"]["Wx"].T))
        net.weight_hh_l0.copy_(torch.tensor(prob["params"]["Wh"].T))
        net.bias_ih_l0.copy_(torch.tensor(b_ih))
        net.bias_hh_l0.copy_(torch.tensor(b_hh))
    prob["params"]["b"] = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
    prob["params"]["b_hn"] = b_hh[2 * H:].copy()
    hs, hT, cache = forward("gru", opts, prob)
    grads = gru_backward(prob["dhs"], prob["dhT"], cache)

    x = torch.tensor(prob["x"], requires_grad=True)
    h0 = torch.tensor(prob["h0"], requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                     enforce_sorted=False)
    out, hn = net(packed, h0[None])
    ths, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    L = (torch.tensor(prob["dhs"]) * ths).sum() + (torch.tensor(prob["dhT"]) * hn[0]).sum()
    L.backward()
    assert relative_error(hs, ths.detach().numpy()) <= TOL["autodiff"]
    assert relative_error(hT, hn[0].detach().numpy()) <= TOL["autodiff"]
    db_hh = np.concatenate([grads["b"][:2 * H], grads["b_hn"]])
    want = {"Wx": (grads["Wx"], net.weight_ih_l0.grad.T),
            "Wh": (grads["Wh"], net.weight_hh_l0.grad.T),
            "b_ih": (grads["b"], net.bias_ih_l0.grad), "b_hh": (db_hh, net.bias_hh_l0.grad),
            "x": (grads["x"], x.grad), "h0": (grads["h0"], h0.grad)}
    for name, (mine, theirs) in want.items():
        assert relative_error(mine, theirs.numpy()) <= TOL["autodiff"], name


# -- 3. properties ----------------------------------------------------------------------------
# The invariances hold exactly for ε = 0 and to O(ε/v) otherwise ((LN 10); for BN the same
# algebra per feature); with ε = TINY_EPS and the variances asserted ≥ 1e-4 what
# TOL["float64_reorder"] bounds is the rounding of two evaluations (see test_rnn_book.py).


def test_ln_gru_is_invariant_to_scaling_each_weight_apart():
    """(LN 10) on each joint LN: Wx → c Wx + k 1ᵀ and Wh → c' Wh + l 1ᵀ (c, c' > 0) change
    LN(x_t Wx) and LN(h_{t-1} Wh) by O(ε/v) only. Scaling one gate block of Wx alone is not an
    invariance, the LN being joint over 3H (the control that the check can fail)."""
    prob = draw("ln_gru", {}, seed=31)
    p = prob["params"]
    hs, hT, cache = forward("ln_gru", {}, prob, eps=TINY_EPS)
    assert min(cache.var_x.min(), cache.var_h.min()) > 1e-4
    rng = np.random.default_rng(32)
    k, l = rng.standard_normal((D, 1)), rng.standard_normal((H, 1))
    for c, c_h in ((2.7, 0.45), (0.3, 3.0)):
        moved = {**p, "Wx": c * p["Wx"] + k, "Wh": c_h * p["Wh"] + l}
        hs2, hT2, _ = forward("ln_gru", {}, prob, eps=TINY_EPS, params=moved)
        assert relative_error(hs, hs2) <= TOL["float64_reorder"]
        assert relative_error(hT, hT2) <= TOL["float64_reorder"]
    Wx = p["Wx"].copy()
    Wx[:, :H] *= 3.0
    hs3, _, _ = forward("ln_gru", {}, prob, eps=TINY_EPS, params={**p, "Wx": Wx})
    assert relative_error(hs, hs3) > 1e-3


def test_bn_gru_training_is_invariant_to_scaling_columns():
    """Per-step BN normalises each of the 3H columns over the batch, so in training scaling any
    column of Wx or of Wh by its own c_j > 0 changes nothing (to O(ε/v)). In inference the
    population statistics are fixed and the same scaling changes the output (the control)."""
    opts = {"training": True}
    prob = draw("bn_gru", opts, seed=41)
    p = prob["params"]
    hs, hT, cache = forward("bn_gru", opts, prob, eps=TINY_EPS)
    many = cache.count >= 2           # steps with one valid row have v = 0 and ẑ = 0 exactly
    assert min(cache.var_x[many].min(), cache.var_h[many].min()) > 1e-4
    rng = np.random.default_rng(42)
    scaled = {**p, "Wx": p["Wx"] * rng.uniform(0.3, 3.0, G),
              "Wh": p["Wh"] * rng.uniform(0.3, 3.0, G)}
    hs2, hT2, _ = forward("bn_gru", opts, prob, eps=TINY_EPS, params=scaled)
    assert relative_error(hs, hs2) <= TOL["float64_reorder"]
    assert relative_error(hT, hT2) <= TOL["float64_reorder"]
    # inference with this batch's statistics as the population reproduces training (BN 13's
    # remark), and then does not forgive the scaling
    infer = {"training": False}
    pop = {k: getattr(cache, k) for k in ("mean_x", "var_x", "mean_h", "var_h")}
    hs_i, _, _ = forward("bn_gru", infer, prob, eps=TINY_EPS, pop=pop)
    assert relative_error(hs, hs_i) <= TOL["float64_reorder"]
    hs_i2, _, _ = forward("bn_gru", infer, prob, eps=TINY_EPS, pop=pop, params=scaled)
    assert relative_error(hs_i, hs_i2) > 1e-3


@pytest.mark.parametrize("stem,opts", CASES, ids=CASE_IDS)
def test_update_gate_at_one_keeps_the_state(stem, opts):
    """b^z = 50 makes z = σ(> 37) = 1 in float64 on every row (GRU 5): h̃_t = h_{t-1} bit for
    bit, so outputs are m_t ⊙ h_0 and h_T = h_0; backward, every gate gradient is exactly 0
    (1 − z = 0), no parameter or x gets any, and dh_0 = δh_T + Σ_t m_t ⊙ δy_t."""
    prob = draw(stem, opts, seed=81)
    p = {**prob["params"], "b": prob["params"]["b"].copy()}
    p["b"][H:2 * H] = 50.0
    hs, hT, cache = forward(stem, opts, prob, params=p)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache)
    m = prob["mask"][..., None]
    assert (cache.gates[..., H:2 * H] == 1.0).all()
    np.testing.assert_array_equal(hs, m * prob["h0"])
    np.testing.assert_array_equal(hT, prob["h0"])
    for name in list(p) + ["x"]:
        assert not grads[name].any(), name
    want = prob["dhT"] + (m * prob["dhs"]).sum(axis=0)
    assert relative_error(grads["h0"], want) <= TOL["float64_reorder"]


def test_bn_gru_step_with_one_valid_row_leaks_with_constant_gates():
    """(BN-GRU 8): in training, steps 4 and 5 have one valid row (sequence 0), whose normalised
    terms are exactly 0: the gates are constants of the biases and h̃ = (1 − σ(b^z)) ⊙
    tanh(b^n + σ(b^r) ⊙ b_hn) + σ(b^z) ⊙ h_{t-1}, not a reset; x_t gets no gradient there, while
    h_{t-1} still does, through z."""
    opts = {"training": True}
    prob = draw("bn_gru", opts, seed=45)
    hs, _, cache = forward("bn_gru", opts, prob)
    grads = bn_gru_backward(prob["dhs"], prob["dhT"], cache, state_grads=True)
    b, b_hn = prob["params"]["b"], prob["params"]["b_hn"]
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    r, z = sig(b[:H]), sig(b[H:2 * H])
    n = np.tanh(b[2 * H:] + r * b_hn)
    np.testing.assert_array_equal(cache.count[4:], [1, 1])
    for t in (4, 5):
        want = (1 - z) * n + z * cache.h[t, 0]
        assert relative_error(hs[t, 0], want) <= TOL["float64_reorder"]
        assert not grads["x"][t].any()
    # on that row dH_3 = σ(b^z) ⊙ dh̃_4 exactly: the z path alone, da_4 = 0 (BN 12)
    assert relative_error(grads["dh"][3, 0], prob["dhs"][3, 0] + z * grads["dh"][4, 0]) \
        <= TOL["float64_reorder"]


# SeqBN-GRU in training normalises over all steps at once, so one step at a time is a different
# computation there: it runs in inference only.
SEQUENTIAL_CASES = [c for c in CASES if not (c[0] == "seq_bn_gru" and c[1]["training"])]


@pytest.mark.parametrize("stem,opts", SEQUENTIAL_CASES,
                         ids=[case_id(c) for c in SEQUENTIAL_CASES])
def test_sequential_equals_batched(stem, opts):
    """T one-step calls chained through h forward and through dH backward equal one T-step
    call: outputs, h_T and every gradient."""
    prob = draw(stem, opts, seed=61)
    hs, hT, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache)

    def one(t, h):
        pop = prob["pop"]
        if pop is not None and stem == "bn_gru":
            pop = {k: v[t:t + 1] for k, v in pop.items()}
        return forward(stem, opts, prob, x=prob["x"][t:t + 1], h0=h,
                       mask=prob["mask"][t:t + 1], pop=pop)

    h, outs, caches = prob["h0"], [], []
    for t in range(T):
        y, h, c = one(t, h)
        outs.append(y)
        caches.append(c)
    assert relative_error(hs, np.concatenate(outs)) <= TOL["float64_reorder"]
    assert relative_error(hT, h) <= TOL["float64_reorder"]
    dH, acc, dx = prob["dhT"], {}, [None] * T
    for t in reversed(range(T)):
        g = BACKWARD[stem](prob["dhs"][t:t + 1], dH, caches[t])
        dH, dx[t] = g.pop("h0"), g.pop("x")
        for name, v in g.items():
            acc[name] = acc.get(name, 0) + v
    assert relative_error(grads["h0"], dH) <= TOL["float64_reorder"]
    assert relative_error(grads["x"], np.concatenate(dx)) <= TOL["float64_reorder"]
    for name in prob["params"]:
        assert relative_error(grads[name], acc[name]) <= TOL["float64_reorder"], name


PADDING_CASES = [c for c in CASES if c[1].get("pad_stats", "exclude") == "exclude"]


@pytest.mark.parametrize("stem,opts", PADDING_CASES, ids=[case_id(c) for c in PADDING_CASES])
def test_padding_changes_nothing_valid(stem, opts):
    """Two padded steps appended (steps with no valid row at all) and new random values at every
    padded position change no valid output, h_T, parameter gradient, dh_0 or valid dx; padded
    outputs and padded dx are 0."""
    P = 2
    prob = draw(stem, opts, seed=71)
    hs, hT, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache)

    rng = np.random.default_rng(72)
    pad = prob["mask"] == 0
    x = prob["x"].copy()
    x[pad] = 10 * rng.standard_normal(x[pad].shape)
    longer = {"x": np.concatenate([x, 10 * rng.standard_normal((P, B, D))]),
              "mask": np.concatenate([prob["mask"], np.zeros((P, B))])}
    pop = prob["pop"]
    if pop is not None and stem == "bn_gru":
        pop = {k: np.concatenate([v, rng.uniform(0.5, 1.5, (P, G))]) for k, v in pop.items()}
    hs2, hT2, cache2 = forward(stem, opts, prob, pop=pop, **longer)
    dhs2 = np.concatenate([prob["dhs"], rng.standard_normal((P, B, H))])
    grads2 = BACKWARD[stem](dhs2, prob["dhT"], cache2)

    assert relative_error(hs, hs2[:T]) <= TOL["float64_reorder"]
    assert relative_error(hT, hT2) <= TOL["float64_reorder"]
    assert not hs2[:T][pad].any() and not hs2[T:].any()
    for name in list(prob["params"]) + ["h0"]:
        assert relative_error(grads[name], grads2[name]) <= TOL["float64_reorder"], name
    assert relative_error(grads["x"], grads2["x"][:T]) <= TOL["float64_reorder"]
    assert not grads2["x"][:T][pad].any() and not grads2["x"][T:].any()


def test_reset_before_refuses_b_hn_and_unknown_reset():
    prob = draw("gru", {"reset": "after"}, seed=1)
    with pytest.raises(ValueError, match="b_hn"):
        forward("gru", {"reset": "before"}, prob)
    with pytest.raises(ValueError, match="reset"):
        forward("gru", {"reset": "sideways"}, prob)


# -- 4. the checks can fail ---------------------------------------------------------------------
def _fd_error(stem, opts, name, seed=11):
    prob = draw(stem, opts, seed)
    _, _, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache)
    start = {**prob["params"], "x": prob["x"], "h0": prob["h0"]}

    def L(v):
        if name in prob["params"]:
            return loss(*forward(stem, opts, prob, params={**prob["params"], name: v})[:2], prob)
        return loss(*forward(stem, opts, prob, **{name: v})[:2], prob)

    return relative_error(grads[name], numerical_gradient(L, start[name]))


@pytest.mark.parametrize("module,stem", [(refnorm.numpy_ref.gru, "gru"),
                                         (refnorm.numpy_ref.ln_gru, "ln_gru")])
def test_finite_differences_catch_a_dropped_interpolation_path(monkeypatch, module, stem):
    """Drop dh_{t-1}^z = z ⊙ dh̃_t of (GRU 6), one of the three paths of (GRU 12): caught on h0."""
    original = module.gru_gates_backward

    def without_z_path(dh_new, gates, q, h_prev):
        dv, dw, dh_z = original(dh_new, gates, q, h_prev)
        return dv, dw, 0 * dh_z

    opts = {"reset": "after"} if stem == "gru" else {}
    monkeypatch.setattr(module, "gru_gates_backward", without_z_path)
    assert _fd_error(stem, opts, "h0") > 1e-2
    monkeypatch.undo()
    assert _fd_error(stem, opts, "h0") <= TOL["gradcheck"]
