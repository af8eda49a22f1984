"""Function-level proofs of the RNN family's book: refnorm/numpy_ref/rnn.py, bn_rnn.py,
seq_bn_rnn.py, ln_rnn.py, called directly with random parameters (no cell classes).

1. central finite differences in float64 of L = Σ dhs⊙hs + Σ dhT⊙hT (BPTT 1) w.r.t. every
   parameter, x and h0, for every cell × {tanh, relu} × term form × training/inference (BN);
2. PyTorch float64 autograd of the same equations written again below (nothing here calls
   refnorm to build them): outputs, every gradient, dL/dh̃_t and the cache's statistics; and the
   plain RNN against torch.nn.RNN, full length and packed ragged lengths;
3. properties: LN-RNN (summed) invariant to scaling Wx and Wh together; BN-RNN in training
   invariant to scaling any column of Wx or Wh; a tanh RNN with Wh = 0 is a per-step
   feed-forward map; sequential equals batched; padding invariance;
4. a backward with a term dropped is caught.

Every problem is random and non-zero: weights and biases ~ N(0, 0.5²), gains ~ U(0.5, 1.5),
x ~ N(0, 1), h0 ~ N(0, 0.5²), upstream dhs, dhT ~ N(0, 1); BN population statistics means
~ N(0, 0.5²), variances ~ U(0.5, 1.5). The ragged mask has lengths (5, 3, 0, 2): steps 3 and 4
have a single valid row (per-step BN resets that row to φ(b), (BN-RNN 9)) and one sequence has no
valid step at all. relu is not differentiable at 0, so relu problems are redrawn until every
valid pre-activation has |z| > 1e-4: a finite-difference step of 1e-6 then never crosses the kink.
"""
import numpy as np
import pytest
import torch

from refnorm.config import DEFAULT_EPS
from refnorm.gradcheck import numerical_gradient, relative_error
from refnorm.numpy_ref import (bn_rnn_backward, bn_rnn_forward, ln_rnn_backward, ln_rnn_forward,
                               rnn_backward, rnn_forward, seq_bn_rnn_backward,
                               seq_bn_rnn_forward)
import refnorm.numpy_ref.bn_rnn
import refnorm.numpy_ref.ln_rnn

from helpers import TOL, ragged_mask

T, B, D, H = 5, 4, 3, 3
LENGTHS = (5, 3, 0, 2)
FORWARD = {"rnn": rnn_forward, "bn_rnn": bn_rnn_forward, "seq_bn_rnn": seq_bn_rnn_forward,
           "ln_rnn": ln_rnn_forward}
BACKWARD = {"rnn": rnn_backward, "bn_rnn": bn_rnn_backward, "seq_bn_rnn": seq_bn_rnn_backward,
            "ln_rnn": ln_rnn_backward}


def case(stem, nonlinearity="tanh", **opts):
    return stem, {"nonlinearity": nonlinearity, **opts}


CASES = ([case("rnn", nl) for nl in ("tanh", "relu")]
         + [case("bn_rnn", nl, terms=terms, training=training)
            for nl in ("tanh", "relu") for terms in ("separate", "summed")
            for training in (True, False)]
         + [case("bn_rnn", terms=terms, training=True, pad_stats="include")
            for terms in ("separate", "summed")]
         + [case("seq_bn_rnn", nl, training=training)
            for nl in ("tanh", "relu") for training in (True, False)]
         + [case("seq_bn_rnn", training=True, pad_stats="include")]
         + [case("ln_rnn", nl, terms=terms)
            for nl in ("tanh", "relu") for terms in ("summed", "separate")])


def case_id(c):
    stem, opts = c
    return "-".join([stem] + [str(v) if not isinstance(v, bool) else ("train" if v else "infer")
                              for v in opts.values()])


CASE_IDS = [case_id(c) for c in CASES]


# -- problems ---------------------------------------------------------------------------------
def terms_of(stem, opts):
    return opts.get("terms", "summed" if stem == "ln_rnn" else "separate")


def gain_names(stem, opts):
    if stem == "rnn":
        return ()
    if stem == "seq_bn_rnn":
        return ("gamma_x",)
    return ("gamma_x", "gamma_h") if terms_of(stem, opts) == "separate" else ("gamma_z",)


def stat_names(stem, opts):
    """The keys of pop and of the cache's statistics."""
    if stem == "seq_bn_rnn":
        return ("mean_x", "var_x")
    if stem in ("bn_rnn", "ln_rnn"):
        return (("mean_x", "var_x", "mean_h", "var_h") if terms_of(stem, opts) == "separate"
                else ("mean_z", "var_z"))
    return ()


def draw(stem, opts, seed, T=T, lengths=LENGTHS):
    """A random problem: params, pop (BN inference), x, h0, mask, dhs, dhT, as NumPy float64."""
    rng = np.random.default_rng(seed)
    p = {"Wx": 0.5 * rng.standard_normal((D, H)), "Wh": 0.5 * rng.standard_normal((H, H)),
         "b": 0.5 * rng.standard_normal(H)}
    for name in gain_names(stem, opts):
        p[name] = rng.uniform(0.5, 1.5, H)
    pop = None
    if stem in ("bn_rnn", "seq_bn_rnn") and not opts["training"]:
        shape = (T, H) if stem == "bn_rnn" else (H,)
        pop = {k: (rng.uniform(0.5, 1.5, shape) if k.startswith("var")
                   else 0.5 * rng.standard_normal(shape)) for k in stat_names(stem, opts)}
    return {"params": p, "pop": pop, "x": rng.standard_normal((T, B, D)),
            "h0": 0.5 * rng.standard_normal((B, H)), "mask": ragged_mask(T, B, lengths),
            "dhs": rng.standard_normal((T, B, H)), "dhT": rng.standard_normal((B, H))}


def forward(stem, opts, prob, eps=DEFAULT_EPS, **override):
    """The book's forward of `stem` on a problem; override replaces params, x, h0, mask, pop."""
    a = {**prob, **override}
    kw = {"nonlinearity": opts["nonlinearity"]}
    if stem in ("bn_rnn", "seq_bn_rnn"):
        kw.update(training=opts["training"], eps=eps, pop=a["pop"],
                  pad_stats=opts.get("pad_stats", "exclude"))
    if stem in ("bn_rnn", "ln_rnn"):
        kw["terms"] = terms_of(stem, opts)
    if stem == "ln_rnn":
        kw["eps"] = eps
    return FORWARD[stem](a["x"], a["h0"], a["mask"], a["params"], **kw)


def loss(hs, hT, prob):
    """(BPTT 1) with the problem's upstream gradients."""
    return np.sum(prob["dhs"] * hs) + np.sum(prob["dhT"] * hT)


# -- the same equations, written again in torch ----------------------------------------------
def t_batch_norm(z, m, gamma, eps, stats):
    """Masked BN without shift over the rows with m = 1 (statistics of the batch when stats is
    None, gradients through them), else with the given (mean, var). Returns γ⊙ẑ, mean, var."""
    w = m[:, None]
    if stats is None:
        n = m.sum()
        if n == 0:                                  # nothing to normalise: ẑ = 0, μ = v = 0
            mean = var = torch.zeros_like(z[0])
        else:
            mean = (w * z).sum(0) / n
            var = (w * (z - mean) ** 2).sum(0) / n
    else:
        mean, var = stats
    return gamma * (w * (z - mean) / torch.sqrt(var + eps)), mean, var


def t_layer_norm(z, gamma, eps):
    """LN without shift of each row over its features. Returns γ⊙ẑ, mean, var (B, 1)."""
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return gamma * (z - mean) / torch.sqrt(var + eps), mean, var


def torch_cell(stem, opts, x, h0, mask, p, pop, eps=DEFAULT_EPS):
    """hs, hT, the pre-activations z_t, the values h̃_t and the statistics, from the equations:
        rnn          z_t = x_t Wx + h_{t-1} Wh + b
        bn_rnn       z_t = BN_t(x_t Wx; γ_x) + BN_t(h_{t-1} Wh; γ_h) + b     (separate)
                     z_t = BN_t(x_t Wx + h_{t-1} Wh; γ_z) + b                  (summed)
        seq_bn_rnn   z_t = BN_S(X Wx; γ_x)_t + h_{t-1} Wh + b,  S all valid frames
        ln_rnn       z_t = LN(x_t Wx + h_{t-1} Wh; γ_z) + b                    (summed, Ba eq. 4)
                     z_t = LN(x_t Wx; γ_x) + LN(h_{t-1} Wh; γ_h) + b          (separate)
        h̃_t = φ(z_t); h_t = h̃_t where m_t = 1, else h_{t-1}; output m_t ⊙ h̃_t."""
    phi = torch.tanh if opts["nonlinearity"] == "tanh" else torch.relu
    terms = terms_of(stem, opts)
    s = mask if opts.get("pad_stats", "exclude") == "exclude" else torch.ones_like(mask)
    stats = {k: [] for k in stat_names(stem, opts)}

    def keep(**found):
        for k, v in found.items():
            stats[k].append(v)

    if stem == "seq_bn_rnn":
        st = None if pop is None else (pop["mean_x"], pop["var_x"])
        Ubn, mean, var = t_batch_norm((x @ p["Wx"]).reshape(-1, H), s.reshape(-1), p["gamma_x"],
                                      eps, st)
        V = Ubn.reshape(x.shape[0], -1, H)
        keep(mean_x=mean, var_x=var)
    h, hs, zs, h_tildes = h0, [], [], []
    for t in range(x.shape[0]):
        u, a = x[t] @ p["Wx"], h @ p["Wh"]
        pt = None if pop is None or stem != "bn_rnn" else {k: v[t] for k, v in pop.items()}
        if stem == "rnn":
            z = u + a + p["b"]
        elif stem == "seq_bn_rnn":
            z = V[t] + a + p["b"]
        elif stem == "bn_rnn" and terms == "separate":
            nu, mx, vx = t_batch_norm(u, s[t], p["gamma_x"], eps,
                                      pt and (pt["mean_x"], pt["var_x"]))
            na, mh, vh = t_batch_norm(a, s[t], p["gamma_h"], eps,
                                      pt and (pt["mean_h"], pt["var_h"]))
            z = nu + na + p["b"]
            keep(mean_x=mx, var_x=vx, mean_h=mh, var_h=vh)
        elif stem == "bn_rnn":
            ns, mz, vz = t_batch_norm(u + a, s[t], p["gamma_z"], eps,
                                      pt and (pt["mean_z"], pt["var_z"]))
            z = ns + p["b"]
            keep(mean_z=mz, var_z=vz)
        elif terms == "summed":
            ns, mz, vz = t_layer_norm(u + a, p["gamma_z"], eps)
            z = ns + p["b"]
            keep(mean_z=mz, var_z=vz)
        else:
            nu, mx, vx = t_layer_norm(u, p["gamma_x"], eps)
            na, mh, vh = t_layer_norm(a, p["gamma_h"], eps)
            z = nu + na + p["b"]
            keep(mean_x=mx, var_x=vx, mean_h=mh, var_h=vh)
        h_tilde = phi(z)
        if h_tilde.requires_grad:
            h_tilde.retain_grad()
        m = mask[t][:, None]
        hs.append(m * h_tilde)
        h = torch.where(m > 0, h_tilde, h)
        zs.append(z)
        h_tildes.append(h_tilde)
    stats = {k: torch.stack(v) if stem != "seq_bn_rnn" else v[0] for k, v in stats.items()}
    return torch.stack(hs), h, torch.stack(zs), h_tildes, stats


def tensors(prob, grad=True):
    as_t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=grad)  # noqa: E731
    p = {k: as_t(v) for k, v in prob["params"].items()}
    pop = None if prob["pop"] is None else {k: torch.tensor(v) for k, v in prob["pop"].items()}
    return p, pop, as_t(prob["x"]), as_t(prob["h0"]), torch.tensor(prob["mask"])


def relu_safe(stem, opts, prob):
    """Smallest |z| over the valid frames (inf for tanh: nothing to avoid)."""
    if opts["nonlinearity"] != "relu":
        return np.inf
    p, pop, x, h0, mask = tensors(prob, grad=False)
    z = torch_cell(stem, opts, x, h0, mask, p, pop)[2].numpy()
    return np.abs(z[prob["mask"] > 0]).min()


def draw_safe(stem, opts, seed, **kw):
    """draw(), redrawn (seed + 1000 k) until relu has no valid pre-activation within 1e-4 of 0."""
    for k in range(50):
        prob = draw(stem, opts, seed + 1000 * k, **kw)
        if relu_safe(stem, opts, prob) > 1e-4:
            return prob
    raise AssertionError("no relu-safe draw")


# -- 1. finite differences ----------------------------------------------------------------------
@pytest.mark.parametrize("stem,opts", CASES, ids=CASE_IDS)
def test_backward_matches_central_differences(stem, opts):
    prob = draw_safe(stem, opts, seed=11)
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
def test_forward_backward_and_statistics_match_torch_autograd(stem, opts):
    prob = draw_safe(stem, opts, seed=23)
    hs, hT, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache, state_grads=True)

    p, pop, x, h0, mask = tensors(prob)
    ths, thT, _, h_tildes, stats = torch_cell(stem, opts, x, h0, mask, p, pop)
    L = (torch.tensor(prob["dhs"]) * ths).sum() + (torch.tensor(prob["dhT"]) * thT).sum()
    L.backward()
    want = {**{k: v.grad for k, v in p.items()}, "x": x.grad, "h0": h0.grad,
            "dh": torch.stack([ht.grad for ht in h_tildes])}
    assert relative_error(hs, ths.detach().numpy()) <= TOL["autodiff"]
    assert relative_error(hT, thT.detach().numpy()) <= TOL["autodiff"]
    assert sorted(grads) == sorted(want)
    for name, g in want.items():
        assert relative_error(grads[name], g.numpy()) <= TOL["autodiff"], name
    # the cache holds the statistics the forward used (what population bookkeeping reads)
    for name, v in stats.items():
        assert relative_error(getattr(cache, name), v.detach().numpy()) <= TOL["autodiff"], name
    if stem == "bn_rnn":
        s = prob["mask"] if opts.get("pad_stats", "exclude") == "exclude" else np.ones((T, B))
        np.testing.assert_array_equal(cache.count, s.sum(axis=1))
    if stem == "seq_bn_rnn":
        s = prob["mask"] if opts.get("pad_stats", "exclude") == "exclude" else np.ones((T, B))
        assert cache.count == s.sum()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", [(T,) * B, (5, 3, 1, 2)], ids=["full", "packed"])
def test_rnn_matches_torch_nn_rnn(nonlinearity, lengths):
    """torch.nn.RNN with its two biases drawn apart (b = b_ih + b_hh): full length, and packed
    ragged lengths, whose semantics (state carried, outputs 0 past the end) the mask reproduces."""
    opts = {"nonlinearity": nonlinearity}
    prob = draw_safe("rnn", opts, seed=5, lengths=lengths)
    torch.manual_seed(0)
    net = torch.nn.RNN(D, H, nonlinearity=nonlinearity).double()
    rng = np.random.default_rng(6)
    b_ih, b_hh = 0.5 * rng.standard_normal(H), 0.5 * rng.standard_normal(H)
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.tensor(prob["params"]["Wx"].T))
        net.weight_hh_l0.copy_(torch.tensor(prob["params"]["Wh"].T))
        net.bias_ih_l0.copy_(torch.tensor(b_ih))
        net.bias_hh_l0.copy_(torch.tensor(b_hh))
    prob["params"]["b"] = b_ih + b_hh
    hs, hT, cache = forward("rnn", opts, prob)
    grads = rnn_backward(prob["dhs"], prob["dhT"], cache)

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
    want = {"Wx": net.weight_ih_l0.grad.T, "Wh": net.weight_hh_l0.grad.T,
            "b": net.bias_ih_l0.grad, "x": x.grad, "h0": h0.grad}
    assert relative_error(net.bias_ih_l0.grad, net.bias_hh_l0.grad) <= TOL["float64_reorder"]
    for name, g in want.items():
        assert relative_error(grads[name], g.numpy()) <= TOL["autodiff"], name


# -- 3. properties ----------------------------------------------------------------------------
# The invariances below hold exactly for ε = 0 and to O(ε/v) otherwise ((LN 10); for BN the same
# algebra per feature): a scale c turns √(v + ε) into c √(v + ε/c²). With ε = 1e-18 and the
# variances asserted ≥ 1e-4, |1 − c⁻²| ε/(2v) < 1e-13 for the c ∈ [0.3, 3] used, so what
# TOL["float64_reorder"] bounds is the rounding of two evaluations in a different order.
TINY_EPS = 1e-18


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_ln_rnn_summed_is_invariant_to_scaling_and_recentring_both_weights(nonlinearity):
    """(LN 10) on s_t = x_t Wx + h_{t-1} Wh: (c Wx, c Wh) scales s_t by c > 0, and adding k 1ᵀ to
    Wx and l 1ᵀ to Wh shifts each row of s_t by a scalar; LN(s_t) changes by O(ε/v) only. Scaling
    Wh alone is not an invariance (a control that the check can fail)."""
    opts = {"nonlinearity": nonlinearity, "terms": "summed"}
    prob = draw_safe("ln_rnn", opts, seed=31)
    p = prob["params"]
    hs, hT, cache = forward("ln_rnn", opts, prob, eps=TINY_EPS)
    assert cache.var_z.min() > 1e-4
    rng = np.random.default_rng(32)
    k, l = rng.standard_normal((D, 1)), rng.standard_normal((H, 1))
    for c in (3.0, 0.3):
        moved = {**p, "Wx": c * p["Wx"] + k, "Wh": c * p["Wh"] + l}
        hs2, hT2, _ = forward("ln_rnn", opts, prob, eps=TINY_EPS, params=moved)
        assert relative_error(hs, hs2) <= TOL["float64_reorder"]
        assert relative_error(hT, hT2) <= TOL["float64_reorder"]
    hs3, _, _ = forward("ln_rnn", opts, prob, eps=TINY_EPS, params={**p, "Wh": 3.0 * p["Wh"]})
    assert relative_error(hs, hs3) > 1e-3


def test_ln_rnn_separate_is_invariant_to_scaling_each_weight():
    opts = {"nonlinearity": "tanh", "terms": "separate"}
    prob = draw("ln_rnn", opts, seed=33)
    p = prob["params"]
    hs, _, cache = forward("ln_rnn", opts, prob, eps=TINY_EPS)
    assert min(cache.var_x.min(), cache.var_h.min()) > 1e-4
    hs2, _, _ = forward("ln_rnn", opts, prob, eps=TINY_EPS,
                        params={**p, "Wx": 2.7 * p["Wx"], "Wh": 0.45 * p["Wh"]})
    assert relative_error(hs, hs2) <= TOL["float64_reorder"]


@pytest.mark.parametrize("terms", ["separate", "summed"])
def test_bn_rnn_training_is_invariant_to_scaling_columns(terms):
    """Per-step BN normalises each of the H features over the batch, so in training scaling
    column j of a normalised term by c_j > 0 changes nothing (to O(ε/v)): any column of Wx or of
    Wh apart with separate terms; the same column of both with summed terms. Scaling a column of
    Wx alone in the summed form is not an invariance (the control)."""
    opts = {"nonlinearity": "tanh", "terms": terms, "training": True}
    prob = draw("bn_rnn", opts, seed=41)
    p = prob["params"]
    hs, hT, cache = forward("bn_rnn", opts, prob, eps=TINY_EPS)
    many = cache.count >= 2           # steps with one valid row have v = 0 and ẑ = 0 exactly
    names = ("var_x", "var_h") if terms == "separate" else ("var_z",)
    assert min(getattr(cache, n)[many].min() for n in names) > 1e-4
    rng = np.random.default_rng(42)
    cx, ch = rng.uniform(0.3, 3.0, H), rng.uniform(0.3, 3.0, H)
    if terms == "summed":
        ch = cx
    hs2, hT2, _ = forward("bn_rnn", opts, prob, eps=TINY_EPS,
                          params={**p, "Wx": p["Wx"] * cx, "Wh": p["Wh"] * ch})
    assert relative_error(hs, hs2) <= TOL["float64_reorder"]
    assert relative_error(hT, hT2) <= TOL["float64_reorder"]
    if terms == "summed":
        hs3, _, _ = forward("bn_rnn", opts, prob, eps=TINY_EPS, params={**p, "Wx": p["Wx"] * cx})
        assert relative_error(hs, hs3) > 1e-3


def test_tanh_rnn_with_zero_recurrence_is_feed_forward():
    """Wh = 0: every valid step is h̃_t = tanh(x_t Wx + b) on its own; h_T is the last valid
    step's (h_0 for the empty sequence). Backward: dx_t = [m_t (δy_t + [t last] δh_T) ⊙
    (1 − h̃_t²)] Wxᵀ, and dh_0 = δh_T on the empty sequence, 0 elsewhere."""
    opts = {"nonlinearity": "tanh"}
    prob = draw("rnn", opts, seed=51)
    p = {**prob["params"], "Wh": np.zeros((H, H))}
    hs, hT, cache = forward("rnn", opts, prob, params=p)
    grads = rnn_backward(prob["dhs"], prob["dhT"], cache)
    m = prob["mask"][..., None]
    step = np.stack([np.tanh(prob["x"][t] @ p["Wx"] + p["b"]) for t in range(T)])
    assert relative_error(hs, m * step) <= TOL["float64_reorder"]
    last = np.array([n - 1 for n in LENGTHS])
    want_hT = np.stack([step[n, b] if n >= 0 else prob["h0"][b] for b, n in enumerate(last)])
    assert relative_error(hT, want_hT) <= TOL["float64_reorder"]
    dy = prob["dhs"].copy()
    for b, n in enumerate(last):
        if n >= 0:
            dy[n, b] += prob["dhT"][b]
    dx = (m * dy * (1 - step ** 2)) @ p["Wx"].T
    assert relative_error(grads["x"], dx) <= TOL["float64_reorder"]
    dh0 = np.where(last[:, None] < 0, prob["dhT"], 0.0)
    assert relative_error(grads["h0"], dh0) <= TOL["float64_reorder"]


@pytest.mark.parametrize("terms", ["separate", "summed"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_bn_rnn_step_with_one_valid_row_resets_it_to_phi_b(terms, nonlinearity):
    """(BN-RNN 9): in training, steps 3 and 4 have one valid row (sequence 0), whose normalised
    terms are exactly 0: h̃ = φ(b) there, and nothing of x_t or h_{t-1} gets a gradient through
    that step (dx = 0 on those frames)."""
    opts = {"nonlinearity": nonlinearity, "terms": terms, "training": True}
    prob = draw("bn_rnn", opts, seed=45)
    hs, _, cache = forward("bn_rnn", opts, prob)
    grads = bn_rnn_backward(prob["dhs"], prob["dhT"], cache)
    phi_b = np.tanh(prob["params"]["b"]) if nonlinearity == "tanh" else \
        np.maximum(prob["params"]["b"], 0)
    np.testing.assert_array_equal(cache.count[3:], [1, 1])
    for t in (3, 4):
        np.testing.assert_array_equal(hs[t, 0], phi_b)
        assert not grads["x"][t].any()


# SeqBN-RNN in training normalises over all steps at once, so one step at a time is a different
# computation there: it runs in inference only.
SEQUENTIAL_CASES = [c for c in CASES if not (c[0] == "seq_bn_rnn" and c[1]["training"])]


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
        if pop is not None and stem == "bn_rnn":
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
    if pop is not None and stem == "bn_rnn":
        pop = {k: np.concatenate([v, rng.uniform(0.5, 1.5, (P, H))]) for k, v in pop.items()}
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


# -- 4. the checks can fail ---------------------------------------------------------------------
def _fd_error(stem, opts, name, seed=11):
    prob = draw(stem, opts, seed)
    _, _, cache = forward(stem, opts, prob)
    grads = BACKWARD[stem](prob["dhs"], prob["dhT"], cache)

    def L(v):
        return loss(*forward(stem, opts, prob, params={**prob["params"], name: v})[:2], prob)

    return relative_error(grads[name], numerical_gradient(L, prob["params"][name]))


def test_finite_differences_catch_a_dropped_bn_mean_term(monkeypatch):
    """Drop the mean-of-gradient term of (BN 10) inside BN-RNN (summed form): caught on Wh."""
    original = refnorm.numpy_ref.bn_rnn.batchnorm_backward

    def without_mean_term(dy, zhat, var, m, gamma, eps, training):
        dz, dgamma, dbeta = original(dy, zhat, var, m, gamma, eps, training)
        w = m[:, None]
        return dz + w * (w * dy * gamma).sum(0) / max(m.sum(), 1) / np.sqrt(var + eps), \
            dgamma, dbeta

    opts = {"nonlinearity": "tanh", "terms": "summed", "training": True}
    monkeypatch.setattr(refnorm.numpy_ref.bn_rnn, "batchnorm_backward", without_mean_term)
    assert _fd_error("bn_rnn", opts, "Wh") > 1e-3
    monkeypatch.undo()
    assert _fd_error("bn_rnn", opts, "Wh") <= TOL["gradcheck"]


def test_finite_differences_catch_a_dropped_ln_projection_term(monkeypatch):
    """Drop the ẑ ⊙ mean(dẑ ⊙ ẑ) term of (LN 8) inside LN-RNN (summed form): caught on Wx."""
    original = refnorm.numpy_ref.ln_rnn.layernorm_backward

    def without_projection(dy, zhat, var, gamma, eps, groups=1):
        dz, dgamma, dbeta = original(dy, zhat, var, gamma, eps, groups)
        return dz + zhat * (dy * gamma * zhat).mean(-1, keepdims=True) / np.sqrt(var + eps), \
            dgamma, dbeta

    opts = {"nonlinearity": "tanh", "terms": "summed"}
    monkeypatch.setattr(refnorm.numpy_ref.ln_rnn, "layernorm_backward", without_projection)
    assert _fd_error("ln_rnn", opts, "Wx") > 1e-3
    monkeypatch.undo()
    assert _fd_error("ln_rnn", opts, "Wx") <= TOL["gradcheck"]
