"""refnorm.optim: Adam and SGD against steps worked out by hand, convergence on a quadratic,
in-place updates that leave the gradients alone."""
import numpy as np
import pytest

from refnorm.optim import SGD, Adam, clip_grad_norm, global_norm
from helpers import TOL


def test_adam_first_two_steps_by_hand():
    """Scalar θ0 = 1, lr 0.1, β = (0.9, 0.999), ε = 1e-8, gradients 0.5 then -2.

    k=1: m = 0.05, v = 0.00025; m̂ = 0.5, v̂ = 0.25 -> θ = 1 − 0.1·0.5/(0.5 + ε)
    k=2: m = 0.9·0.05 − 0.2 = −0.155, v = 0.999·0.00025 + 0.001·4 = 0.00424975
         m̂ = −0.155/0.19, v̂ = 0.00424975/0.001999 -> θ −= 0.1·m̂/(sqrt(v̂) + ε)."""
    theta = np.array([1.0])
    opt = Adam({"w": theta}, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    opt.step({"w": np.array([0.5])})
    expected = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8)
    assert abs(theta[0] - expected) <= TOL["float64_reorder"]
    opt.step({"w": np.array([-2.0])})
    m_hat, v_hat = -0.155 / (1 - 0.9 ** 2), 0.00424975 / (1 - 0.999 ** 2)
    expected -= 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    assert abs(theta[0] - expected) <= TOL["float64_reorder"]
    assert opt.t == 2


def test_adam_bias_correction_makes_the_first_step_lr_sized():
    """Without bias correction the first step would be lr·(1−β1)/sqrt(1−β2) ≈ 3.2·lr; with it,
    every coordinate moves by lr·sign(g) (up to ε), whatever the gradient's size."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((3, 4))
    before = theta.copy()
    signs = rng.choice([-1.0, 1.0], size=(3, 4))
    g = signs * rng.uniform(0.5, 1.5, (3, 4)) * np.array([1e-3, 1.0, 1e3])[:, None]
    Adam({"W": theta}, lr=0.01).step({"W": g})
    # each move is lr·|g|/(|g| + ε): relative deviation ε/|g| ≤ 1e-8/5e-4 = 2e-5
    assert np.allclose(before - theta, 0.01 * signs, rtol=1e-4, atol=0)


def test_adam_updates_in_place_and_leaves_grads_alone():
    rng = np.random.default_rng(1)
    params = {"a": rng.standard_normal(5), "b": rng.standard_normal((2, 3))}
    views = dict(params)
    grads = {"a": rng.standard_normal(5), "b": rng.standard_normal((2, 3)),
             "x": rng.standard_normal(7)}                                    # extra key: ignored
    saved = {k: v.copy() for k, v in grads.items()}
    Adam(params, lr=0.05).step(grads)
    for name in params:
        assert params[name] is views[name]                                  # same arrays
        assert not np.array_equal(params[name], saved[name])
    for name, value in grads.items():
        assert np.array_equal(value, saved[name])
    assert set(grads) == set(saved)


def test_weight_decay_is_off_by_default():
    """With a zero gradient and no weight decay nothing moves; with λ > 0 the step is the
    Adam step of the gradient λθ, i.e. lr·sign(θ) on the first step."""
    theta = np.array([2.0, -3.0])
    Adam({"w": theta}, lr=0.1).step({"w": np.zeros(2)})
    assert np.array_equal(theta, [2.0, -3.0])
    Adam({"w": theta}, lr=0.1, weight_decay=0.5).step({"w": np.zeros(2)})
    assert np.allclose(theta, [1.9, -2.9], rtol=0, atol=1e-8)               # ε/(λ|θ|) ≤ 1e-8
    sgd_theta = np.array([2.0])
    SGD({"w": sgd_theta}, lr=0.1).step({"w": np.zeros(1)})
    assert sgd_theta[0] == 2.0


def test_sgd_step_by_hand():
    theta = np.array([1.0, -1.0])
    SGD({"w": theta}, lr=0.1, weight_decay=0.2).step({"w": np.array([0.5, 0.25])})
    assert np.allclose(theta, [1.0 - 0.1 * (0.5 + 0.2), -1.0 - 0.1 * (0.25 - 0.2)],
                       rtol=0, atol=TOL["float64_reorder"])


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=0.05), lambda p: SGD(p, lr=0.05)])
def test_converges_on_an_ill_conditioned_quadratic(make):
    """f(θ) = ½ Σ a_k (θ_k − c_k)², curvatures a from 0.5 to 5: both reach the minimum."""
    rng = np.random.default_rng(2)
    a, c = np.linspace(0.5, 5.0, 6), rng.standard_normal(6)
    theta = rng.standard_normal(6) * 3
    opt = make({"w": theta})
    for _ in range(2000):
        opt.step({"w": a * (theta - c)})
    assert np.max(np.abs(theta - c)) < 1e-4                   # a converged iterate, far below 3


def test_missing_or_misshaped_gradient_is_a_value_error():
    opt = Adam({"w": np.zeros(3)})
    with pytest.raises(ValueError, match="'w'"):
        opt.step({})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros(4)})


def test_clip_grad_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]]), "x": np.array([100.0])}
    clipped, norm = clip_grad_norm(grads, ["a", "b"], max_norm=1.0)
    assert norm == 5.0
    assert np.allclose(clipped["a"], [0.6, 0.0]) and np.allclose(clipped["b"], [[0.8]])
    assert clipped["x"] is grads["x"] and grads["a"][0] == 3.0            # input untouched
    assert abs(global_norm(clipped, ["a", "b"]) - 1.0) <= TOL["float64_reorder"]
    same, _ = clip_grad_norm(grads, ["a"], max_norm=10.0)
    assert np.array_equal(same["a"], grads["a"])
