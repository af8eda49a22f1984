"""refnorm.Stack (derivations/stack.md): the composed backward against finite differences, and the
properties that tie a stack to its cells."""
import copy

import numpy as np
import pytest

import refnorm
from refnorm.gradcheck import numerical_gradient, relative_error
from refnorm.stack import reverse_within

from helpers import TOL

D, H, T, B = 3, 4, 4, 3
LENGTHS = np.array([4, 2, 3])


def random_stack(cell, *, num_layers=2, bidirectional=True, between=None, dropout=0.0, seed=0,
                 **options):
    """A Stack whose every parameter (norm gains and shifts included) is redrawn away from its
    init, so no gradient can hide behind a zero or a one."""
    net = refnorm.Stack(cell, D, H, num_layers=num_layers, bidirectional=bidirectional,
                        between=between, dropout=dropout, seed=seed, **options)
    rng = np.random.default_rng(seed + 100)
    for name, value in net.params.items():
        net.params[name] = value + 0.3 * rng.standard_normal(value.shape)
    return net


def problem(net, seed=1):
    """x, initial states, upstream gradients (random, non-zero) for net."""
    rng = np.random.default_rng(seed)
    rows = net.num_layers * len(net.directions)
    states = {s + "0": rng.standard_normal((rows, B, H)) for s in net.STATES}
    upstream = {"d" + s + "T": rng.standard_normal((rows, B, H)) for s in net.STATES}
    return (rng.standard_normal((T, B, D)), states,
            rng.standard_normal((T, B, net.output_size)), upstream)


def loss_and_grads(net, training=True):
    """L = Σ dys⊙ys + Σ dhT⊙hT (+ Σ dcT⊙cT) (BPTT 1) as a function of each tensor, and the
    stack's backward. The dropout generator is rewound before every forward, so every
    evaluation uses the same dropout mask."""
    x, states, dys, upstream = problem(net)
    rng = copy.deepcopy(net._dropout_rng)

    def loss(x=x, **states):
        net._dropout_rng = copy.deepcopy(rng)
        ys, finals, _ = net.forward(x, lengths=LENGTHS, training=training, update_stats=False,
                                    **states)
        return float((dys * ys).sum() + sum((upstream["d" + s + "T"] * f).sum()
                                            for s, f in zip(net.STATES, finals)))

    net._dropout_rng = copy.deepcopy(rng)
    *_, cache = net.forward(x, lengths=LENGTHS, training=training, update_stats=False, **states)
    grads = net.backward(dys, cache, **upstream)
    return loss, x, states, grads


CASES = [("lstm", None), ("gru", "bn"), ("bn_rnn", "seq_bn"), ("ln_lstm", "ln"),
         ("seq_bn_gru", "bn"), ("bn_lstm", "ln")]


@pytest.mark.parametrize("cell, between", CASES)
def test_every_gradient_matches_finite_differences(cell, between):
    net = random_stack(cell, between=between, dropout=0.3, num_layers=3 if between else 2)
    loss, x, states, grads = loss_and_grads(net)
    assert set(grads) == set(net.params) | {"x"} | set(states)
    errors = {"x": relative_error(grads["x"], numerical_gradient(lambda a: loss(x=a, **states), x))}
    for name, value in states.items():
        errors[name] = relative_error(grads[name], numerical_gradient(
            lambda a, name=name: loss(**{**states, name: a}), value))
    for name in net.params:
        original = net.params[name]

        def f(a, name=name):
            net.params[name] = a
            return loss(**states)
        errors[name] = relative_error(grads[name], numerical_gradient(f, original))
        net.params[name] = original
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["gradcheck"], (worst, errors[worst])


def test_a_one_layer_forward_stack_is_its_cell():
    net = random_stack("ln_gru", num_layers=1, bidirectional=False)
    cell = refnorm.LNGRU(D, H)
    cell.params = {name[len("l0.fwd."):]: value for name, value in net.params.items()}
    x, states, dys, upstream = problem(net)
    ys, (hT,), cache = net.forward(x, states["h0"], lengths=LENGTHS)
    hs, hT_cell, cell_cache = cell.forward(x, states["h0"][0], lengths=LENGTHS)
    np.testing.assert_array_equal(ys, hs)
    np.testing.assert_array_equal(hT[0], hT_cell)
    grads = net.backward(dys, cache, dhT=upstream["dhT"])
    cell_grads = cell.backward(dys, cell_cache, dhT=upstream["dhT"][0])
    for name, value in cell_grads.items():
        mine = grads[name] if name == "x" else grads["h0"][0] if name == "h0" \
            else grads["l0.fwd." + name]
        np.testing.assert_array_equal(mine, value)


def test_reversing_twice_within_lengths_is_the_identity():
    a = np.random.default_rng(0).standard_normal((5, 3, 2))
    n = np.array([5, 0, 3])
    once = reverse_within(a, n)
    np.testing.assert_array_equal(once[:3, 2], a[2::-1, 2])     # the valid prefix reversed
    np.testing.assert_array_equal(once[3:, 2], a[3:, 2])        # the padded tail in place
    np.testing.assert_array_equal(reverse_within(once, n), a)
