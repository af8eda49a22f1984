"""Finite-difference gradient checks in float64.

The checked scalar is (BPTT 1) with random upstream gradients (never all ones):
    L = Σ dhs ⊙ hs + Σ dhT ⊙ hT + Σ dcT ⊙ cT          (no cT term for the one-state cells)
Every element of every parameter and of x, h0 (c0) is perturbed by ±step and the central
difference (L(θ+step) − L(θ−step)) / (2·step) is compared with cell.backward.

Error per tensor:  max_k |a_k − n_k| / max(max_k |a_k|, max_k |n_k|)
(0 when both are exactly zero). It is normalised by the tensor's largest entry, not entry by
entry, because the central difference has an absolute error ~ eps_mach·|L|/step ≈ 1e-10·|L|
that would swamp the relative error of entries near zero. Truncation error is ~step² ≈ 1e-12.
"""
import copy

import numpy as np

from .config import GRADCHECK_STEP


def numerical_gradient(f, x, step=GRADCHECK_STEP):
    """Central differences of the scalar function f at x, one element at a time.

    f is called with a fresh perturbed copy of x each time (x itself is never touched)."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    for k in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[k] += step
        minus[k] -= step
        grad[k] = (f(plus) - f(minus)) / (2 * step)
    return grad


def relative_error(a, b):
    """max|a − b| / max(max|a|, max|b|); 0 when both are exactly zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
    diff = np.max(np.abs(a - b), initial=0.0)
    return 0.0 if diff == 0 else float(diff / scale)


def randomize(cell, seed=0):
    """Redraw every parameter of `cell` in place so that no bug can hide behind a zero or a one:
    weights, biases and shifts ~ N(0, 0.5²), gains ~ U(0.5, 1.5); population statistics (BN
    cells) means ~ N(0, 0.5²) and variances ~ U(0.5, 1.5). Returns the cell."""
    rng = np.random.default_rng(seed)
    for name, value in cell.params.items():
        value[...] = (rng.uniform(0.5, 1.5, value.shape) if name.startswith("gamma")
                      else 0.5 * rng.standard_normal(value.shape))
    for name, value in getattr(cell, "stats", {}).items():
        value[...] = (rng.uniform(0.5, 1.5, value.shape) if name.startswith("var")
                      else 0.5 * rng.standard_normal(value.shape))
    return cell


def random_inputs(cell, T=4, B=3, seed=0):
    """x (T, B, D) ~ N(0, 1) and every initial state h0 (and c0) (B, H) ~ N(0, 0.5²): random and
    non-zero, as a dict of forward's keyword arguments."""
    rng = np.random.default_rng(seed)
    D, H = cell.input_size, cell.hidden_size
    inputs = {"x": rng.standard_normal((T, B, D))}
    for name in ("h", "c"):                 # drawn in this order whatever the cell, so an LSTM's
        state = 0.5 * rng.standard_normal((B, H))      # h0 is the same for every family
        if name in cell.STATES:
            inputs[name + "0"] = state
    return inputs


def final_states(cell, out):
    """The final states of a forward's result (hs, finals, cache) as a tuple: (hT, cT) for the
    LSTM family, (hT,) for the one-state cells."""
    return tuple(out[1]) if len(cell.STATES) > 1 else (out[1],)


def gradcheck(cell, x=None, h0=None, c0=None, mask=None, *, lengths=None, training=True, t0=0,
              T=4, B=3, seed=0, step=GRADCHECK_STEP, wrt=None):
    """Compare cell.backward with central differences; returns {tensor name: relative error}.

    Missing x, h0 (and c0, for the LSTM family) are drawn at random (shape T, B); upstream
    gradients are always random. `wrt` restricts the check to some names (default: every
    parameter, x and the initial states). The cell must be float64. Neither the cell (params or
    population statistics) nor the arrays passed in are modified.
    """
    if cell.dtype != np.float64:
        raise ValueError("gradcheck needs a float64 cell: finite differences in float32 "
                         "cannot resolve a 1e-6 relative error")
    if c0 is not None and "c" not in cell.STATES:
        raise ValueError(f"c0 given, but {type(cell).__name__} has no cell state")
    rng = np.random.default_rng(seed + 1)
    inputs = random_inputs(cell, T, B, seed)
    for name, given in (("x", x), ("h0", h0), ("c0", c0)):
        if given is not None:
            inputs[name] = given
    work = copy.deepcopy(cell)
    base = {name: value.copy() for name, value in work.params.items()}
    fwd = dict(mask=mask, lengths=lengths, training=training, t0=t0, update_stats=False)

    out = work.forward(**inputs, **fwd)
    dhs = rng.standard_normal(out[0].shape)
    dfinal = [rng.standard_normal(state.shape) for state in final_states(work, out)]
    analytic = work.backward(dhs, out[-1], *dfinal)

    def loss(name, value):
        work.params = {**base, name: value} if name in base else base
        args = {**inputs, name: value} if name in inputs else inputs
        out = work.forward(**args, **fwd)
        return np.sum(dhs * out[0]) + sum(np.sum(d * s)
                                          for d, s in zip(dfinal, final_states(work, out)))

    names = list(base) + list(inputs) if wrt is None else list(wrt)
    errors = {}
    for name in names:
        start = base[name] if name in base else inputs[name]
        numeric = numerical_gradient(lambda v, name=name: loss(name, v), start, step)
        errors[name] = relative_error(analytic[name], numeric)
    return errors
