"""refnorm.Stack (derivations/stack.md), proven the way every cell is.

1. Finite differences: every gradient (each parameter, x, h0 (c0)) against the central
   difference of L along a random direction, in training (with dropout) and in inference, for
   bidirectional and one-direction stacks, ragged, unmasked and with a non-prefix mask.
2. Torch autograd: the stack written again in torch float64 from the equations
   (tests/torch_reference.stack, composing the cells' torch functions): outputs, final states,
   every gradient and the between norms' batch statistics, for every family and every between
   kind, in training and in inference.
3. Properties: a one-layer stack is its cell; R R = I; a bidirectional stack on reversed
   sequences swaps its two directions; torch.nn's two-layer bidirectional LSTM, GRU and RNN on
   packed sequences; dropout from the seed, kept in the cache; population statistics; nothing
   at a padded position reaches anything; the names of params and gradients.
4. Bad input: a ValueError that says what is wrong, and nothing changed (the caller's arrays,
   net.params, net.stats, the dropout generator).
5. Backends: numba against the book, cuda on the simulator, float32 against float64.

Every problem is random and non-zero (random_stack, problem). Sizes are tiny (T = 4, B = 3,
D = 3, H = 4) so the module runs in about a minute on two busy cores.
"""
import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import refnorm
import torch_reference
from helpers import TOL, backends_for, finals_of, ragged_mask
from refnorm.gradcheck import numerical_gradient, relative_error
from refnorm.stack import reverse_within
from test_autodiff import assert_close, tensor, torch_forward
from test_bad_input import assert_unchanged
from test_cuda_backend import ATOL, RTOL, needs_cuda, parity_ok
from test_cuda_backend import small_launches  # noqa: F401  (autouse: small THREADS and TILE)
from test_numba_rnn import within

D, H, T, B = 3, 4, 4, 3
LENGTHS = np.array([4, 2, 3])                   # step 3 has a single valid row
# A one-direction stack takes any mask: sequences 0 and 1 have a hole, step 2 one valid row.
HOLES = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=np.float64)
RAGGED = {"lengths": LENGTHS}
EXAMPLES = settings(deadline=None, max_examples=20)


def random_stack(cell, *, num_layers=2, bidirectional=True, between=None, dropout=0.0, seed=0,
                 **options):
    """A Stack whose every parameter (norm gains and shifts included) is redrawn away from its
    init, so no gradient can hide behind a zero or a one."""
    net = refnorm.Stack(cell, D, H, num_layers=num_layers, bidirectional=bidirectional,
                        between=between, dropout=dropout, seed=seed, **options)
    rng = np.random.default_rng(seed + 100)
    for name, value in net.params.items():
        net.params[name] = (value + 0.3 * rng.standard_normal(value.shape)).astype(value.dtype)
    return net


def problem(net, seed=1):
    """x, initial states, upstream gradients (random, non-zero) for net."""
    rng = np.random.default_rng(seed)
    rows = net.num_layers * len(net.directions)
    states = {s + "0": rng.standard_normal((rows, B, H)) for s in net.STATES}
    upstream = {"d" + s + "T": rng.standard_normal((rows, B, H)) for s in net.STATES}
    return (rng.standard_normal((T, B, D)), states,
            rng.standard_normal((T, B, net.output_size)), upstream)


def mask_of(where):
    """The (T, B) 0/1 mask that forward's keyword arguments `where` describe."""
    if "mask" in where:
        return where["mask"]
    return ragged_mask(T, B, where["lengths"]) if "lengths" in where else np.ones((T, B))


def fill_stats(net, where, seed=2):
    """Population statistics for inference: a training pass over the first T - 1 steps (so that
    step T - 1 reads the last slot, (BN-LSTM 5)), then every statistic redrawn as
    refnorm.gradcheck.randomize does for a cell (means ~ N(0, 0.5²), variances ~ U(0.5, 1.5)):
    statistics near 0 and 1 could hide a norm that ignores them."""
    rng = np.random.default_rng(seed)
    cut = {key: np.minimum(value, T - 1) if key == "lengths" else value[:T - 1]
           for key, value in where.items()}
    net.forward(rng.standard_normal((T - 1, B, D)).astype(net.dtype), **cut)
    for key, value in net.stats.items():
        value[...] = (rng.uniform(0.5, 1.5, value.shape) if key.split(".")[-1].startswith("var")
                      else 0.5 * rng.standard_normal(value.shape))


def loss_and_grads(net, training=True, where=RAGGED):
    """L = Σ dys⊙ys + Σ dhT⊙hT (+ Σ dcT⊙cT) (BPTT 1) as a function of each tensor, and the
    stack's backward. The dropout generator is rewound before every forward, so every
    evaluation uses the same dropout mask."""
    x, states, dys, upstream = problem(net)
    rng = copy.deepcopy(net._dropout_rng)

    def loss(x=x, **states):
        net._dropout_rng = copy.deepcopy(rng)
        ys, finals, _ = net.forward(x, training=training, update_stats=False, **where, **states)
        return float((dys * ys).sum() + sum((upstream["d" + s + "T"] * f).sum()
                                            for s, f in zip(net.STATES, finals)))

    net._dropout_rng = copy.deepcopy(rng)
    *_, cache = net.forward(x, training=training, update_stats=False, **where, **states)
    grads = net.backward(dys, cache, **upstream)
    return loss, x, states, grads


# -- 1. finite differences -----------------------------------------------------------------------
def directional_error(f, value, grad, rng):
    """The central difference of f at value along one random unit direction v (the step of
    refnorm.gradcheck), as torch.autograd.gradcheck's fast mode checks: every entry of grad
    counts, at two evaluations of f per tensor instead of two per entry. The error
    |grad·v − difference| is relative to ‖grad‖₂, the largest |grad·v| over unit v, so no
    unlucky v makes a right gradient look wrong."""
    v = rng.standard_normal(np.shape(value))
    v /= np.linalg.norm(v)
    numeric = float(numerical_gradient(lambda s: f(value + s * v), 0.0))
    analytic = float(np.sum(grad * v))
    if analytic == numeric:
        return 0.0
    return abs(analytic - numeric) / max(float(np.linalg.norm(grad)), abs(numeric))


def assert_matches_finite_differences(net, training=True, where=RAGGED):
    loss, x, states, grads = loss_and_grads(net, training, where)
    assert set(grads) == set(net.params) | {"x"} | set(states)
    rng = np.random.default_rng(7)
    errors = {"x": directional_error(lambda a: loss(x=a, **states), x, grads["x"], rng)}
    for name, value in states.items():
        errors[name] = directional_error(lambda a, name=name: loss(**{**states, name: a}), value,
                                         grads[name], rng)
    for name in net.params:
        original = net.params[name]

        def f(a, name=name):
            net.params[name] = a
            return loss(**states)
        errors[name] = directional_error(f, original, grads[name], rng)
        net.params[name] = original
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["gradcheck"], (worst, errors[worst])


CASES = [("lstm", None), ("gru", "bn"), ("bn_rnn", "seq_bn"), ("ln_lstm", "ln"),
         ("seq_bn_gru", "bn"), ("bn_lstm", "ln")]


@pytest.mark.parametrize("cell, between", CASES)
def test_every_gradient_matches_finite_differences(cell, between):
    net = random_stack(cell, between=between, dropout=0.3, num_layers=3 if between else 2)
    assert_matches_finite_differences(net)


# (cell, its options, between, the stack's shape, training, forward's mask): inference with
# population statistics (per-step BN cells, "bn" and "seq_bn" between), a one-direction stack,
# no mask, and a non-prefix mask whose padded frames enter the BN statistics of the cells
# (pad_stats="include"), so that a gradient reaches the padded positions of every layer's input
# and only the m of (STACK 16) stops it at the norm below.
MORE_CASES = [
    pytest.param("bn_gru", {}, "bn", {}, False, RAGGED, id="inference-bn_gru-bn"),
    pytest.param("bn_lstm", {}, "seq_bn", {}, False, RAGGED, id="inference-bn_lstm-seq_bn"),
    pytest.param("ln_rnn", {}, "ln", {"num_layers": 3, "bidirectional": False}, True, RAGGED,
                 id="one_direction-ln_rnn-ln"),
    pytest.param("gru", {"reset": "before"}, "bn", {}, True, {}, id="unmasked-gru-bn"),
    pytest.param("bn_rnn", {"pad_stats": "include"}, "seq_bn", {"bidirectional": False}, True,
                 {"mask": HOLES}, id="holes-bn_rnn_pad_include-seq_bn"),
]


@pytest.mark.parametrize("cell, options, between, shape, training, where", MORE_CASES)
def test_more_gradients_match_finite_differences(cell, options, between, shape, training,
                                                 where):
    net = random_stack(cell, between=between, dropout=0.3, **shape, **options)
    if not training:
        fill_stats(net, where)
    assert_matches_finite_differences(net, training, where)


# -- 2. torch autograd ---------------------------------------------------------------------------
# Each family with each between kind, every cell once (some with a non-default option); the
# pad_stats="include" cell lets a gradient reach the padded positions of each layer's input.
PAIRS = [("lstm", {}, None), ("bn_lstm", {}, "seq_bn"), ("seq_bn_lstm", {}, "ln"),
         ("ln_lstm", {"per_gate": True}, "bn"),
         ("rnn", {"nonlinearity": "relu"}, "bn"), ("bn_rnn", {"terms": "summed"}, None),
         ("seq_bn_rnn", {}, "ln"), ("ln_rnn", {}, "seq_bn"),
         ("gru", {"reset": "before"}, "ln"), ("bn_gru", {}, "bn"),
         ("seq_bn_gru", {"pad_stats": "include"}, "seq_bn"), ("ln_gru", {}, None)]
PAIR_PARAMS = [pytest.param(name, options, between, id=f"{name}-{between}")
               for name, options, between in PAIRS]
TORCH_CASES = [pytest.param(name, options, between, {}, RAGGED, id=f"{name}-{between}")
               for name, options, between in PAIRS] + [
    pytest.param("lstm", {}, "bn", {"num_layers": 3, "bidirectional": False}, {"mask": HOLES},
                 id="one_direction-holes-lstm-bn"),
    pytest.param("seq_bn_gru", {}, "seq_bn", {"num_layers": 3}, {}, id="unmasked-seq_bn_gru")]


def torch_cells(net, training):
    """cell(layer, direction, x, states, mask, p) for torch_reference.stack: the torch function of
    net.cells[layer][direction] with its options, batch statistics in training and the cell's
    population statistics in inference, as tests/test_autodiff.py calls it."""
    def cell(layer, direction, x, states, mask, p):
        c = net.cells[layer][net.directions.index(direction)]
        return torch_forward(c.stem, c, x, states, mask, p, training, 0, {})
    return cell


def torch_pop(net):
    """The between norms' population statistics in torch, slot min(t, slots − 1) at step t for
    "bn" (BN-LSTM 5); None for the norms that keep none."""
    pops = []
    for layer in range(net.num_layers - 1):
        if net.between not in ("bn", "seq_bn"):
            pops.append(None)
            continue
        mean, var = net.stats[f"l{layer}.norm.mean"], net.stats[f"l{layer}.norm.var"]
        if net.between == "bn":
            idx = np.minimum(np.arange(T), mean.shape[0] - 1)
            mean, var = mean[idx], var[idx]
        pops.append((tensor(mean), tensor(var)))
    return pops


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, options, between, shape, where", TORCH_CASES)
def test_stack_matches_torch_autograd(name, options, between, shape, where, training):
    net = random_stack(name, between=between, dropout=0.25, **shape, **options)
    fill_stats(net, where)          # training reads none, but torch_forward looks them up
    x, states, dys, upstream = problem(net)
    ys, finals, cache = net.forward(x, training=training, update_stats=False, **where, **states)
    grads = net.backward(dys, cache, **upstream)
    assert all((keep is not None) == training for keep in cache.dropout)

    leaves = {key: tensor(value, grad=True)
              for key, value in {**net.params, "x": x, **states}.items()}
    record = []
    ys_t, finals_t = torch_reference.stack(
        leaves["x"], [leaves[key] for key in states], tensor(mask_of(where)),
        {key: leaves[key] for key in net.params}, torch_cells(net, training),
        num_layers=net.num_layers, directions=net.directions, between=between,
        eps=net.norm_eps, pop=None if training else torch_pop(net),
        dropout=[None if keep is None else tensor(keep) for keep in cache.dropout],
        record=record)
    loss = (tensor(dys) * ys_t).sum() + sum((tensor(upstream["d" + s + "T"]) * f).sum()
                                            for s, f in zip(net.STATES, finals_t))
    torch_grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    assert_close("ys", ys, ys_t)
    for s, ours, theirs in zip(net.STATES, finals, finals_t):
        assert_close(s + "T", ours, theirs)
    assert set(grads) == set(leaves)
    for key in leaves:
        assert_close("d" + key, grads[key], torch_grads[key])
    if training and between in ("bn", "seq_bn"):       # the statistics (BN 13) blends in
        assert len(record) == net.num_layers - 1
        for layer, (mean, var) in enumerate(record):
            assert_close(f"cache.norms[{layer}] mean", cache.norms[layer]["mean"], mean)
            assert_close(f"cache.norms[{layer}] var", cache.norms[layer]["var"], var)


# -- 3. properties -------------------------------------------------------------------------------
ONE_LAYER = [("ln_gru", {}), ("lstm", {}), ("bn_lstm", {}),
             ("seq_bn_rnn", {"nonlinearity": "relu"}), ("gru", {"reset": "before"}),
             ("bn_gru", {"pad_stats": "include"})]


@pytest.mark.parametrize("name, options", ONE_LAYER, ids=[n for n, _ in ONE_LAYER])
def test_a_one_layer_forward_stack_is_its_cell(name, options):
    """The same outputs, final states, gradients and population statistics, bit for bit."""
    net = random_stack(name, num_layers=1, bidirectional=False, **options)
    cell = refnorm.CELLS[name](D, H, **options)
    cell.params = {key[len("l0.fwd."):]: value.copy() for key, value in net.params.items()}
    x, states, dys, upstream = problem(net)
    ys, finals, cache = net.forward(x, lengths=LENGTHS, **states)
    out = cell.forward(x, **{key: value[0] for key, value in states.items()}, lengths=LENGTHS)
    np.testing.assert_array_equal(ys, out[0])
    for s, value in zip(net.STATES, finals):
        np.testing.assert_array_equal(value[0], finals_of(cell, out)[s + "T"])
    grads = net.backward(dys, cache, **upstream)
    cell_grads = cell.backward(dys, out[-1], **{key: value[0] for key, value in upstream.items()})
    assert set(grads) == {"l0.fwd." + key for key in cell.params} | {"x"} | set(states)
    for key, value in cell_grads.items():
        mine = grads[key] if key == "x" else grads[key][0] if key in states \
            else grads["l0.fwd." + key]
        np.testing.assert_array_equal(mine, value)
    assert_unchanged({"l0.fwd." + key: value for key, value in getattr(cell, "stats", {}).items()},
                     net.stats, "stats")


def test_reversing_twice_within_lengths_is_the_identity():
    a = np.random.default_rng(0).standard_normal((5, 3, 2))
    n = np.array([5, 0, 3])
    once = reverse_within(a, n)
    np.testing.assert_array_equal(once[:3, 2], a[2::-1, 2])     # the valid prefix reversed
    np.testing.assert_array_equal(once[3:, 2], a[3:, 2])        # the padded tail in place
    np.testing.assert_array_equal(reverse_within(once, n), a)


@EXAMPLES
@given(data=st.data())
def test_reverse_within_is_its_own_inverse_and_its_own_transpose(data):
    T_, B_ = data.draw(st.integers(1, 6), label="T"), data.draw(st.integers(1, 4), label="B")
    n = np.array(data.draw(st.lists(st.integers(0, T_), min_size=B_, max_size=B_),
                           label="lengths"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    a, c = rng.standard_normal((T_, B_, 2)), rng.standard_normal((T_, B_, 2))
    before = a.copy()
    once = reverse_within(a, n)
    assert not np.shares_memory(once, a)
    np.testing.assert_array_equal(a, before)
    for b, length in enumerate(n):
        np.testing.assert_array_equal(once[:length, b], a[:length, b][::-1])
        np.testing.assert_array_equal(once[length:, b], a[length:, b])
    np.testing.assert_array_equal(reverse_within(once, n), a)                   # R R = I
    assert np.isclose(np.sum(once * c), np.sum(a * reverse_within(c, n)),       # Rᵀ = R
                      rtol=TOL["float64_reorder"], atol=0)


@pytest.mark.parametrize("name, options", [("lstm", {}), ("bn_gru", {}), ("seq_bn_rnn", {}),
                                           ("ln_lstm", {"per_gate": True})],
                         ids=["lstm", "bn_gru", "seq_bn_rnn", "ln_lstm"])
@EXAMPLES
@given(data=st.data())
def test_a_bidirectional_stack_on_reversed_sequences_swaps_its_directions(name, options, data):
    """With both directions' cells holding the same parameters, the forward cell on R x is the
    backward cell's run on the original, and the other way round: (STACK 2), (STACK 3) give
    ys'[fwd] = R ys[bwd], ys'[bwd] = R ys[fwd], and the final states swap (the initial ones
    swapped too). Batch statistics included: each direction's cell sees the same batch."""
    n = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B).filter(any),
                           label="lengths"))
    net = random_stack(name, num_layers=1, seed=data.draw(st.integers(0, 2 ** 16)), **options)
    for key in net.params:
        if key.startswith("l0.bwd."):
            net.params[key] = net.params["l0.fwd." + key[len("l0.bwd."):]].copy()
    x, states, _, _ = problem(net, seed=data.draw(st.integers(0, 2 ** 16)))
    ys, finals, _ = net.forward(x, lengths=n, update_stats=False, **states)
    swapped = {key: value[::-1].copy() for key, value in states.items()}
    ys_r, finals_r, _ = net.forward(reverse_within(x, n), lengths=n, update_stats=False,
                                    **swapped)
    np.testing.assert_array_equal(ys_r[..., :H], reverse_within(ys[..., H:], n))
    np.testing.assert_array_equal(ys_r[..., H:], reverse_within(ys[..., :H], n))
    for value, value_r in zip(finals, finals_r):
        np.testing.assert_array_equal(value_r, value[::-1])


def from_torch_module(module, name):
    """A two-layer bidirectional Stack holding torch.nn.<LSTM|GRU|RNN>'s weights: Wx, Wh the
    transposed weight_ih, weight_hh of layer l (suffix _reverse for bwd), b = bias_ih + bias_hh
    (the GRU's n block of bias_hh apart, as b_hn); gate orders are the same."""
    net = refnorm.Stack(name, D, H, num_layers=2, bidirectional=True)
    loaded = set()
    for layer in range(2):
        for d, suffix in zip(net.directions, ("", "_reverse")):
            w = lambda kind: getattr(module, f"{kind}_l{layer}{suffix}").detach().numpy()  # noqa
            p = {"Wx": w("weight_ih").T, "Wh": w("weight_hh").T, "b": w("bias_ih") + w("bias_hh")}
            if name == "gru":
                p["b"] = w("bias_ih") + np.concatenate([w("bias_hh")[:2 * H], np.zeros(H)])
                p["b_hn"] = w("bias_hh")[2 * H:]
            for key, value in p.items():
                net.params[f"l{layer}.{d}.{key}"] = np.ascontiguousarray(value)
                loaded.add(f"l{layer}.{d}.{key}")
    assert loaded == set(net.params)
    return net


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_torch_nn_two_layer_bidirectional_stacks_on_packed_sequences(name):
    """torch.nn.LSTM (GRU, RNN)(num_layers=2, bidirectional=True) with random weights, on packed
    sequences: the same outputs and h_n (c_n) to TOL["float64_reorder"] -- which pins the
    reverse direction's final state, its state after each sequence's first step -- and the
    same dL/dx, dL/dh0 (dL/dc0) to TOL["autodiff"]."""
    module = getattr(torch.nn, name.upper())(D, H, num_layers=2, bidirectional=True,
                                             dtype=torch.float64)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for value in module.parameters():
            value.copy_(tensor(rng.uniform(-0.5, 0.5, tuple(value.shape))))
    net = from_torch_module(module, name)
    x, states, dys, upstream = problem(net)
    ys, finals, cache = net.forward(x, lengths=LENGTHS, **states)
    grads = net.backward(dys, cache, **upstream)

    x_t = tensor(x, grad=True)
    initial = tuple(tensor(value, grad=True) for value in states.values())
    packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(LENGTHS),
                                                     enforce_sorted=False)
    out, finals_t = module(packed, initial if len(initial) > 1 else initial[0])
    ys_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    finals_t = finals_t if isinstance(finals_t, tuple) else (finals_t,)
    assert relative_error(ys, ys_t.detach().numpy()) <= TOL["float64_reorder"]
    for s, ours, theirs in zip(net.STATES, finals, finals_t):
        assert relative_error(ours, theirs.detach().numpy()) <= TOL["float64_reorder"], s
    loss = (tensor(dys) * ys_t).sum() + sum((tensor(upstream["d" + s + "T"]) * f).sum()
                                            for s, f in zip(net.STATES, finals_t))
    torch_grads = torch.autograd.grad(loss, [x_t, *initial])
    for key, theirs in zip(["x", *states], torch_grads):
        assert_close("d" + key, grads[key], theirs)


def test_dropout_is_drawn_from_the_seed_and_kept_in_the_cache():
    p = 0.4
    nets = [random_stack("gru", between="ln", dropout=p, num_layers=3) for _ in range(2)]
    plain = random_stack("gru", between="ln", dropout=0.0, num_layers=3)   # the same weights
    x, states, _, _ = problem(plain)
    caches = [net.forward(x, lengths=LENGTHS, **states)[2] for net in nets]
    normed = plain.forward(x, lengths=LENGTHS, **states)[2]
    assert len(caches[0].dropout) == 2 and normed.dropout == [None, None]
    for layer, (keep, twin) in enumerate(zip(*(c.dropout for c in caches))):
        np.testing.assert_array_equal(keep, twin)                     # same seed, same mask
        assert keep.shape == (T, B, 2 * H) and keep.dtype == np.float64
        np.testing.assert_array_equal(np.unique(keep), [0.0, 1 / (1 - p)])
        assert np.all(caches[0].cells[layer + 1][0].x[keep == 0] == 0)
    # layer 1's cells read layer 0's normed output times that factor (STACK 9)
    v, keep = normed.cells[1][0].x, caches[0].dropout[0]
    np.testing.assert_array_equal(caches[0].cells[1][0].x, v * keep)
    np.testing.assert_array_equal(caches[0].cells[1][1].x, reverse_within(v * keep, LENGTHS))
    again = nets[0].forward(x, lengths=LENGTHS, **states)[2]          # the next draw
    assert not any(np.array_equal(a, b) for a, b in zip(again.dropout, caches[0].dropout))
    other = random_stack("gru", between="ln", dropout=p, num_layers=3, seed=5)
    assert not np.array_equal(other.forward(x, lengths=LENGTHS, **states)[2].dropout[0],
                              caches[0].dropout[0])
    ys, _, cache = nets[0].forward(x, lengths=LENGTHS, training=False, **states)
    assert cache.dropout == [None, None]                              # none in inference
    np.testing.assert_array_equal(ys, plain.forward(x, lengths=LENGTHS, training=False,
                                                    **states)[0])


def test_dropout_keeps_about_one_minus_p_of_the_entries():
    p = 0.3
    net = refnorm.Stack("rnn", 1, H, num_layers=2, bidirectional=True, dropout=p, seed=0)
    _, _, cache = net.forward(np.random.default_rng(0).standard_normal((T, 3000, 1)))
    kept = cache.dropout[0] > 0                            # 4 × 3000 × 8 = 96 000 draws
    # five standard deviations of the kept fraction, sqrt(p (1 − p) / N) ≈ 0.0015
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / kept.size)


def test_a_training_pass_updates_statistics_only_where_a_step_had_two_valid_rows():
    """(BN 13) with the stack's momentum, for the between norms and the BN cells alike: steps 0
    and 1 have 3 and 2 valid rows, steps 2 and 3 one, and their slots keep mean 0, var 1."""
    lengths = np.array([4, 2, 1])
    net = random_stack("bn_gru", between="bn", num_layers=3)
    x, states, _, _ = problem(net)
    a = net.norm_momentum
    first = net.forward(x, lengths=lengths, **states)[2]
    for key, value in net.stats.items():
        assert value.shape[0] == T, key
        fresh = 1.0 if key.split(".")[-1].startswith("var") else 0.0
        assert np.all(value[2:] == fresh) and np.all(value[:2] != fresh), key
    for layer in range(2):
        batch = first.norms[layer]
        np.testing.assert_array_equal(net.stats[f"l{layer}.norm.mean"][:2],
                                      (1 - a) * 0.0 + a * batch["mean"][:2])
        np.testing.assert_array_equal(net.stats[f"l{layer}.norm.var"][:2],
                                      (1 - a) * 1.0 + a * batch["var"][:2])
    before = copy.deepcopy(net.stats)
    second = net.forward(x[::-1].copy(), lengths=lengths, **states)[2]
    for layer in range(2):
        for kind in ("mean", "var"):
            key = f"l{layer}.norm.{kind}"
            np.testing.assert_allclose(net.stats[key], np.concatenate(
                [(1 - a) * before[key][:2] + a * second.norms[layer][kind][:2], before[key][2:]]),
                rtol=TOL["float64_reorder"], atol=0)
    before = copy.deepcopy(net.stats)
    net.forward(x, lengths=lengths, update_stats=False, **states)
    net.forward(x, lengths=lengths, training=False, **states)
    assert_unchanged(before, net.stats, "stats")


def test_sequence_statistics_need_two_valid_frames():
    net = random_stack("lstm", between="seq_bn")
    x, states, _, _ = problem(net)
    before = copy.deepcopy(net.stats)
    net.forward(x, lengths=np.array([1, 0, 0]), **states)              # one valid frame
    assert_unchanged(before, net.stats, "stats")
    cache = net.forward(x, lengths=LENGTHS, **states)[2]
    a = net.norm_momentum
    np.testing.assert_array_equal(net.stats["l0.norm.mean"], a * cache.norms[0]["mean"])
    np.testing.assert_array_equal(net.stats["l0.norm.var"], (1 - a) + a * cache.norms[0]["var"])


def test_inference_needs_population_statistics():
    """training=False before any training pass: a ValueError where a per-step batch norm has no
    slot yet (between="bn", or a per-step BN cell); "seq_bn" starts from mean 0, var 1."""
    for net, match in [(random_stack("gru", between="bn"), "between-layer batch norms"),
                       (random_stack("bn_lstm", between="ln"), "population statistics")]:
        x, states, _, _ = problem(net)
        assert_stack_rejects(net, match, net.forward, x=x, training=False, **states)
        net.forward(x, **states)
        assert np.all(np.isfinite(net.forward(x, training=False, **states)[0]))
    net = random_stack("gru", between="seq_bn")
    assert np.all(np.isfinite(net.forward(problem(net)[0], training=False)[0]))


@pytest.mark.parametrize("between", [None, "bn", "seq_bn", "ln"])
def test_nothing_at_a_padded_position_reaches_anything(between):
    """x and dys at padded positions changed at random: the same outputs (0 at padded
    positions), final states, gradients, dx = 0 at padded positions, the same batch statistics;
    each layer's input is 0 at padded positions (the norm's output there, (STACK 5)-(STACK 7))."""
    net = random_stack("seq_bn_gru", between=between, dropout=0.3, num_layers=3)
    x, states, dys, upstream = problem(net)
    pad = ragged_mask(T, B, LENGTHS) == 0
    rng = np.random.default_rng(9)
    x2, dys2 = x.copy(), dys.copy()
    x2[pad] = 100 * rng.standard_normal(x2[pad].shape)
    dys2[pad] = rng.standard_normal(dys2[pad].shape)
    dropout_rng = copy.deepcopy(net._dropout_rng)
    runs = []
    for inputs, upstream_ys in ((x, dys), (x2, dys2)):
        net._dropout_rng = copy.deepcopy(dropout_rng)
        ys, finals, cache = net.forward(inputs, lengths=LENGTHS, update_stats=False, **states)
        runs.append((ys, finals, cache, net.backward(upstream_ys, cache, **upstream)))
    (ys, finals, cache, grads), (ys2, finals2, cache2, grads2) = runs
    np.testing.assert_array_equal(ys, ys2)
    assert np.all(ys[pad] == 0)
    np.testing.assert_array_equal(finals, finals2)
    for key in grads:
        np.testing.assert_array_equal(grads[key], grads2[key], err_msg=key)
    assert np.all(grads["x"][pad] == 0)
    for layer in range(1, net.num_layers):
        for cell_cache in cache.cells[layer]:
            assert np.all(cell_cache.x[pad] == 0)
    for norm, norm2 in zip(cache.norms, cache2.norms):
        assert_unchanged(norm, norm2, "the between norm's cache")


@pytest.mark.parametrize("name, bidirectional, between",
                         [("lstm", True, "ln"), ("bn_gru", False, "bn"), ("ln_rnn", True, None)])
def test_params_and_gradients_are_named_by_place_and_the_cells_own_names(name, bidirectional,
                                                                       between):
    net = refnorm.Stack(name, D, H, num_layers=3, bidirectional=bidirectional, between=between)
    cell = refnorm.CELLS[name](D, H)
    dirs = ("fwd", "bwd") if bidirectional else ("fwd",)
    F = len(dirs) * H
    names = {f"l{layer}.{d}.{key}" for layer in range(3) for d in dirs for key in cell.params}
    if between is not None:
        names |= {f"l{layer}.norm.{key}" for layer in range(2) for key in ("gamma", "beta")}
    assert isinstance(net.params, dict) and set(net.params) == names
    for key, value in net.params.items():
        layer, d, own = key.split(".")
        want = (F,) if d == "norm" else cell.params[own].shape
        if own == "Wx" and layer != "l0":
            want = (F, want[1])
        assert value.shape == want, key
    x, states, dys, upstream = problem(net)
    ys, finals, cache = net.forward(x, lengths=LENGTHS, **states)
    assert ys.shape == (T, B, F) and all(f.shape == (3 * len(dirs), B, H) for f in finals)
    grads = net.backward(dys, cache, **upstream)
    assert set(grads) == names | {"x"} | set(states)
    for key, value in grads.items():
        want = x if key == "x" else states[key] if key in states else net.params[key]
        assert value.shape == want.shape and value.dtype == want.dtype, key
    stat_names = {f"l{layer}.{d}.{key}" for layer in range(3) for d in dirs
                  for key in getattr(cell, "stats", {})}
    if between == "bn":
        stat_names |= {f"l{layer}.norm.{key}" for layer in range(2) for key in ("mean", "var")}
    assert set(net.stats) == stat_names


# -- 4. bad input --------------------------------------------------------------------------------
def stack_state(net):
    """What a refused call must leave as it was: the parameters, every population statistic and
    the dropout generator (a refused call must not change the next mask)."""
    return {"params": net.params, "stats": net.stats,
            "dropout generator": net._dropout_rng.bit_generator.state}


def assert_stack_rejects(net, match, call, **arguments):
    """call(**arguments) raises a ValueError matching `match`; net and the arguments are left
    bit for bit as they were."""
    before = copy.deepcopy({"stack": stack_state(net), "arguments": arguments})
    with pytest.raises(ValueError, match=match):
        call(**arguments)
    assert_unchanged(before, {"stack": stack_state(net), "arguments": arguments})


def trained(name="bn_lstm", between="bn", **kwargs):
    """A stack with population statistics everywhere (one training pass) and dropout."""
    net = random_stack(name, between=between, dropout=0.2, **kwargs)
    x, states, _, _ = problem(net)
    net.forward(x, lengths=LENGTHS, **states)
    return net


def with_nan(a):
    a = a.copy()
    a[1, 1, 1] = np.nan
    return a


BAD_FORWARD = [
    ("x-width", lambda a: {**a, "x": a["x"][..., :2]}, r"x must have shape"),
    ("x-2d", lambda a: {**a, "x": a["x"][:, 0]}, r"x must have 3 dimensions"),
    ("x-int", lambda a: {**a, "x": a["x"].astype(int)}, r"x must be a floating array"),
    ("x-float32", lambda a: {**a, "x": a["x"].astype(np.float32)}, r"x has dtype float32"),
    ("x-nan", lambda a: {**a, "x": with_nan(a["x"])}, r"x contains NaN"),
    ("h0-2d", lambda a: {**a, "h0": a["h0"][0]}, r"h0 must have 3 dimensions"),
    ("h0-rows", lambda a: {**a, "h0": a["h0"][1:]}, r"h0 must have shape"),
    ("c0-batch", lambda a: {**a, "c0": a["c0"][:, :2]}, r"c0 must have shape"),
    ("mask-hole", lambda a: {**a, "lengths": None, "mask": HOLES}, r"prefix"),
    ("no-valid-step", lambda a: {**a, "lengths": np.zeros(B, dtype=int)}, r"no valid step"),
    ("mask-and-lengths", lambda a: {**a, "mask": np.ones((T, B))}, r"either mask or lengths"),
    ("training", lambda a: {**a, "training": "yes"}, r"training must be True or False"),
    ("update_stats", lambda a: {**a, "training": False, "update_stats": True},
     r"update_stats=True needs training=True"),
]


@pytest.mark.parametrize("bad, match", [pytest.param(f, m, id=i) for i, f, m in BAD_FORWARD])
def test_bad_forward_arguments_are_refused_and_change_nothing(bad, match):
    net = trained()
    x, states, _, _ = problem(net)
    assert_stack_rejects(net, match, net.forward, **bad({"x": x, **states, "lengths": LENGTHS}))


def test_a_batch_of_one_row_needs_a_norm_that_takes_it():
    """Training with batch size 1: refused by a per-step batch norm between the layers or in
    the cells (and the refusal grows no statistics slot); "seq_bn" and "ln" between take it, and
    so does inference."""
    for net, match in [(trained("gru", "bn"), "between='bn' in training"),
                       (random_stack("bn_lstm", between="ln"), "at least 2 rows")]:
        x, states, _, _ = problem(net)
        one = {"x": x[:, :1], **{key: value[:, :1] for key, value in states.items()}}
        assert_stack_rejects(net, match, net.forward, **one)
    x, states, dys, upstream = problem(random_stack("gru"))
    net = trained("gru", "bn")
    assert np.all(np.isfinite(net.forward(x[:, :1], states["h0"][:, :1], training=False)[0]))
    for between in ("seq_bn", "ln", None):
        net = random_stack("gru", between=between)
        ys, _, cache = net.forward(x[:, :1], states["h0"][:, :1])
        grads = net.backward(dys[:, :1], cache, upstream["dhT"][:, :1])
        assert all(np.all(np.isfinite(g)) for g in grads.values()) and np.all(np.isfinite(ys))
    # a one-layer stack has no norm between layers: between="bn" asks nothing of the batch
    net = random_stack("gru", num_layers=1, bidirectional=False, between="bn")
    assert np.all(np.isfinite(net.forward(x[:, :1], states["h0"][:1, :1])[0]))


def test_initial_and_final_cell_states_of_a_one_state_stack_are_refused():
    net = trained("gru", "seq_bn")
    x, states, dys, upstream = problem(net)
    assert_stack_rejects(net, r"c0 is given but a GRU has no cell state", net.forward, x=x,
                         c0=states["h0"], **states)
    cache = net.forward(x, **states)[2]
    assert_stack_rejects(net, r"dcT is given but a GRU has no cell state", net.backward,
                         dys=dys, cache=cache, dcT=upstream["dhT"], **upstream)


@pytest.mark.parametrize("kwargs, match", [
    ({"cell": "lstmm"}, r"cell must be one of"),
    ({"cell": torch.nn.LSTM}, r"cell must be a refnorm cell class"),
    ({"between": "None"}, r"the string 'None'"),
    ({"between": "batch"}, r"between must be None, 'bn', 'seq_bn' or 'ln'"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"dropout": True}, r"dropout must be in \[0, 1\)"),
    ({"hidden_size": 1, "bidirectional": False, "between": "ln"}, r"layer norm over one"),
    ({"backend": "tpu"}, r"backend must be one of"),
], ids=["cell-name", "cell-class", "between-None-string", "between-unknown", "dropout-1",
        "dropout-negative", "dropout-bool", "ln-one-feature", "backend"])
def test_bad_constructor_arguments_are_refused(kwargs, match):
    args = {"cell": "lstm", "input_size": D, "hidden_size": H, "num_layers": 2,
            "bidirectional": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        refnorm.Stack(**args)


@pytest.mark.parametrize("edit, match", [
    (lambda p: p.pop("l1.bwd.Wh"), r"missing \['l1\.bwd\.Wh'\]"),
    (lambda p: p.update({"l0.fwd.Wq": np.ones((D, 4 * H))}), r"unknown \['l0\.fwd\.Wq'\]"),
    (lambda p: p.update({"l0.norm.gamma": np.ones(H)}), r"params\['l0\.norm\.gamma'\] must have "
                                                        r"shape"),
    (lambda p: p.update({"l1.fwd.Wx": p["l1.fwd.Wx"].astype(np.float32)}),
     r"params\['l1\.fwd\.Wx'\] has dtype float32"),
    (lambda p: p.update({"l0.bwd.b": np.full(4 * H, np.nan)}),
     r"params\['l0\.bwd\.b'\] contains NaN"),
], ids=["missing", "extra", "shape", "dtype", "nan"])
def test_bad_params_are_refused_by_name(edit, match):
    net = trained()
    x, states, _, _ = problem(net)
    edit(net.params)
    assert_stack_rejects(net, match, net.forward, x=x, **states)


def test_a_cache_from_another_stack_is_refused():
    net = trained("gru", "ln")
    x, states, dys, upstream = problem(net)
    for other in [random_stack("gru", between=None), random_stack("gru", between="bn"),
                  random_stack("gru", between="ln", num_layers=3),
                  random_stack("gru", between="ln", bidirectional=False),
                  random_stack("lstm", between="ln")]:
        x_other, states_other, _, _ = problem(other)
        cache = other.forward(x_other, lengths=LENGTHS, **states_other)[2]
        assert_stack_rejects(net, r"cache", net.backward, dys=dys, cache=cache, **upstream)
    assert_stack_rejects(net, r"cache must be the cache returned by this Stack's forward",
                         net.backward, dys=dys, cache={}, **upstream)


def test_bad_backward_arguments_are_refused_and_change_nothing():
    net = trained()
    x, states, dys, upstream = problem(net)
    cache = net.forward(x, lengths=LENGTHS, **states)[2]
    for bad, match in [({"dys": dys[..., :H]}, r"dys must have shape"),
                       ({"dys": dys[0]}, r"dys must have 3 dimensions"),
                       ({"dys": dys.astype(np.float32)}, r"dys has dtype float32"),
                       ({"dys": with_nan(dys)}, r"dys contains NaN"),
                       ({"dhT": upstream["dhT"][1:]}, r"dhT must have shape"),
                       ({"dcT": upstream["dcT"][..., :2]}, r"dcT must have shape")]:
        assert_stack_rejects(net, match, net.backward,
                             **{"dys": dys, "cache": cache, **upstream, **bad})


def test_a_float32_stack_refuses_float64_input():
    net = refnorm.Stack("lstm", D, H, num_layers=2, dtype="float32")
    x = problem(net)[0]
    assert_stack_rejects(net, r"x has dtype float64", net.forward, x=x)
    ys = net.forward(x.astype(np.float32))[0]
    assert ys.dtype == np.float32


def test_valid_calls_change_nothing_they_are_given_and_compute_from_copies():
    """forward and backward leave x, the states, the mask, dys and the upstream gradients as
    they were; backward reads the cache's copies, not net.params or the caller's x."""
    net = random_stack("ln_lstm", between="ln", dropout=0.3)
    x, states, dys, upstream = problem(net)
    arguments = {"x": x, **states, "mask": ragged_mask(T, B, LENGTHS)}
    before = copy.deepcopy(arguments)
    *_, cache = net.forward(**arguments)
    grads = net.backward(dys, cache, **upstream)
    assert_unchanged(before, arguments)
    x[...] = 0.0
    for value in net.params.values():
        value += 1.0
    again = net.backward(dys, cache, **upstream)
    assert_unchanged(grads, again, "gradients")
    before = copy.deepcopy({"dys": dys, **upstream})
    net.backward(dys, cache, **upstream)
    assert_unchanged(before, {"dys": dys, **upstream})


# -- 5. backends ---------------------------------------------------------------------------------
def run(net, training, where=RAGGED):
    """forward and backward of net on problem(net): ys, finals, grads."""
    x, states, dys, upstream = problem(net)
    x, dys = x.astype(net.dtype), dys.astype(net.dtype)
    states = {key: value.astype(net.dtype) for key, value in states.items()}
    upstream = {key: value.astype(net.dtype) for key, value in upstream.items()}
    ys, finals, cache = net.forward(x, training=training, update_stats=False, **where, **states)
    return ys, finals, net.backward(dys, cache, **upstream)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, options, between", PAIR_PARAMS)
def test_numba_stack_matches_the_book(name, options, between, training):
    """The same stack on backend="numba": outputs to TOL["float64_reorder"], gradients within
    it of their size plus test_numba_rnn's floor for cancelling terms (tests/test_numba_rnn.py);
    the dropout masks are the same draws (the same seed)."""
    if "numba" not in backends_for(name):
        pytest.skip(f"the numba backend has no {name} yet")
    results = []
    for backend in ("numpy", "numba"):
        net = random_stack(name, between=between, dropout=0.25, backend=backend, **options)
        if not training:
            fill_stats(net, RAGGED)
        results.append(run(net, training))
    (ys, finals, grads), (ys2, finals2, grads2) = results
    assert relative_error(ys, ys2) <= TOL["float64_reorder"]
    for value, value2 in zip(finals, finals2):
        assert relative_error(value, value2) <= TOL["float64_reorder"]
    G = max(np.max(np.abs(g)) for g in grads.values())
    assert set(grads) == set(grads2)
    for key in grads:
        assert within(grads[key], grads2[key], G), key


@needs_cuda
def test_cuda_stack_matches_the_book():
    """One small stack on backend="cuda" (the simulator in CI, tests/conftest.py), with the
    parity criterion of tests/test_cuda_backend.py."""
    results = [run(random_stack("gru", between="bn", dropout=0.25, backend=backend), True)
               for backend in ("numpy", "cuda")]
    (ys, finals, grads), (ys2, finals2, grads2) = results
    assert relative_error(ys, ys2) <= RTOL
    for value, value2 in zip(finals, finals2):
        assert relative_error(value, value2) <= RTOL
    G = max(np.max(np.abs(g)) for g in grads.values())
    assert set(grads) == set(grads2)
    for key in grads:
        assert parity_ok(grads[key], grads2[key], RTOL, ATOL * G), key


@pytest.mark.parametrize("name, options, between, training", [
    ("lstm", {}, "ln", True), ("bn_gru", {}, "bn", False), ("seq_bn_rnn", {}, "seq_bn", True),
    ("gru", {"reset": "before"}, None, True), ("ln_lstm", {}, "seq_bn", False)],
    ids=["lstm-ln-train", "bn_gru-bn-eval", "seq_bn_rnn-seq_bn-train", "gru-None-train",
         "ln_lstm-seq_bn-eval"])
def test_float32_stack_agrees_with_float64(name, options, between, training):
    """The same stack in float32 (parameters and statistics cast): outputs and final states
    within TOL["float32"] of float64, and everything it returns float32."""
    nets = [random_stack(name, between=between, dropout=0.25, dtype=dtype, **options)
            for dtype in ("float64", "float32")]
    nets[1].params = {key: value.astype(np.float32) for key, value in nets[0].params.items()}
    if not training:
        for net in nets:
            fill_stats(net, RAGGED)
        for key, value in nets[1].stats.items():
            value[...] = nets[0].stats[key]
    (ys, finals, _), (ys32, finals32, grads32) = (run(net, training) for net in nets)
    assert ys32.dtype == np.float32 and relative_error(ys32, ys) <= TOL["float32"]
    for value32, value in zip(finals32, finals):
        assert value32.dtype == np.float32 and relative_error(value32, value) <= TOL["float32"]
    assert all(g.dtype == np.float32 for g in grads32.values())
