"""Shared test helpers: random cells and data that can expose bugs (no zeros, no ones), for
every cell of both families.

The cells by family and by kind (stems, as in refnorm.CELLS):
    ALL_CELLS       every cell of the families in TESTED_FAMILIES: the LSTM, the RNN, the GRU family
    LSTM_CELLS      lstm, bn_lstm, seq_bn_lstm, ln_lstm          states (h, c)
    RNN_CELLS       rnn, bn_rnn, seq_bn_rnn, ln_rnn              state h
    GRU_CELLS       gru, bn_gru, seq_bn_gru, ln_gru              state h
    BN_STEP_CELLS   per-step batch norm (bn_lstm, bn_rnn, bn_gru)
    BN_SEQ_CELLS    sequence-wise batch norm (seq_bn_lstm, seq_bn_rnn, seq_bn_gru)
    BN_CELLS        both; LN_CELLS the layer-normalised ones; NORM_CELLS all normalised ones
The kinds are read from the classes, so a new cell lands in the right groups by itself once its
family is in TESTED_FAMILIES (which needs its equations in tests/torch_reference.py and its rules
in the modules' per-cell tables: test_properties.noisy_grads, the option lists).

One calling convention for every family (a cell's STATES is ("h",) or ("h", "c")):
    data = random_data(cell, T, B)            x, h0 (c0), dhs, dhT (dcT)
    hs, finals, cache = forward(cell, data, mask=..., training=...)    finals {"hT": , "cT": }
    grads = backward(cell, data, cache)       data's upstream gradients
    hs, finals, cache, grads = run(cell, data, **forward_kwargs)
"""
import numpy as np

import refnorm
from refnorm.cells.base import _PerStepBatchNormCell, _SequenceBatchNormCell
from refnorm.gradcheck import randomize

# Tolerances, each with its reason.
TOL = {
    # central differences in float64: truncation ~step² and round-off ~1e-10·|L|, well below
    "gradcheck": 1e-6,
    # the same equations evaluated by another float64 implementation: only rounding differs,
    # amplified by at most a few orders of magnitude through T steps of products and 1/s factors
    "autodiff": 1e-10,
    # two float64 evaluations of the same math in a different order (e.g. one step at a time)
    "float64_reorder": 1e-12,
    # float32 vs float64 of the same math: eps32 ≈ 1.2e-7, amplified through T steps
    "float32": 1e-4,
}

TESTED_FAMILIES = ("lstm", "rnn", "gru")
ALL_CELLS = tuple(name for family in TESTED_FAMILIES for name in refnorm.FAMILIES[family])
LSTM_CELLS = tuple(refnorm.FAMILIES["lstm"])
RNN_CELLS = tuple(refnorm.FAMILIES["rnn"])
GRU_CELLS = tuple(refnorm.FAMILIES["gru"])
BN_STEP_CELLS = tuple(n for n in ALL_CELLS if issubclass(refnorm.CELLS[n], _PerStepBatchNormCell))
BN_SEQ_CELLS = tuple(n for n in ALL_CELLS
                     if issubclass(refnorm.CELLS[n], _SequenceBatchNormCell))
BN_CELLS = BN_STEP_CELLS + BN_SEQ_CELLS
LN_CELLS = tuple(n for n in ALL_CELLS if n.startswith("ln_"))
NORM_CELLS = BN_CELLS + LN_CELLS

# The LSTM family under its old name, for the modules that have not been generalised yet
# (test_numba_backend.py); new code says LSTM_CELLS or ALL_CELLS.
CELL_NAMES = LSTM_CELLS

# The CPU backends every proof runs on (the CUDA backend has its own simulator/GPU tests).
BACKENDS = ("numpy", "numba")


def numba_has(name):
    """Whether the Numba CPU backend has cell `name` yet (its mirror of a new family may come
    after the book's)."""
    import refnorm.numba_cpu
    return all(hasattr(refnorm.numba_cpu, f"{name}_{way}") for way in ("forward", "backward"))


def backends_for(name):
    """The CPU backends `name` runs on: both, but numpy alone while numba lacks the cell. The
    LSTM family always runs on both (a missing mirror there is a failure, not a skip)."""
    return BACKENDS if (name in LSTM_CELLS or numba_has(name)) else ("numpy",)


def cell_backends(names):
    """(backend, name) pairs for pytest.mark.parametrize("backend, name", ...)."""
    return [(backend, name) for backend in BACKENDS for name in names
            if backend in backends_for(name)]


def make_cell(name, D=3, H=3, *, seed=0, dtype="float64", **options):
    """A cell with every parameter (and BN population statistic) redrawn at random and non-zero
    by refnorm.gradcheck.randomize; the per-step BN cells (BNLSTM, BNRNN, BNGRU) get max_steps=6
    unless told otherwise."""
    if name in BN_STEP_CELLS:
        options.setdefault("max_steps", 6)
    cell = refnorm.CELLS[name](D, H, seed=seed, dtype=dtype, **options)
    return randomize(cell, seed=1000 + seed)


def initial_names(cell):
    """The initial-state arguments of forward: ("h0",) or ("h0", "c0")."""
    return tuple(s + "0" for s in cell.STATES)


def final_names(cell):
    """The final states forward returns, by name: ("hT",) or ("hT", "cT")."""
    return tuple(s + "T" for s in cell.STATES)


def upstream_names(cell):
    """The upstream-gradient arguments of backward but dhs: ("dhT",) or ("dhT", "dcT")."""
    return tuple(f"d{s}T" for s in cell.STATES)


def random_data(cell, T=4, B=3, *, seed=0, dtype=None):
    """x (T, B, D) ~ N(0, 1), the initial states h0 (c0) (B, H) ~ N(0, 0.5²), upstream dhs and
    dhT (dcT) ~ N(0, 1): the states of cell.STATES only. Drawn in one order whatever the cell,
    so an RNN's x, h0, dhs, dhT are those of an LSTM of the same sizes and seed."""
    rng = np.random.default_rng(seed)
    dt = dtype or cell.dtype
    D, H = cell.input_size, cell.hidden_size
    draw = lambda *shape: rng.standard_normal(shape).astype(dt)  # noqa: E731
    every = {"x": draw(T, B, D), "h0": 0.5 * draw(B, H), "c0": 0.5 * draw(B, H),
             "dhs": draw(T, B, H), "dhT": draw(B, H), "dcT": draw(B, H)}
    keep = ("x", "dhs") + initial_names(cell) + upstream_names(cell)
    return {key: value for key, value in every.items() if key in keep}


def initial_states(cell, data):
    """{"h0": , ("c0": )} from data, as forward's keyword arguments."""
    return {key: data[key] for key in initial_names(cell)}


def forward(cell, data, **kwargs):
    """cell.forward on data's x and initial states (any of them may be overridden in kwargs).
    Returns hs, {"hT": , ("cT": )}, cache."""
    args = {"x": data["x"], **initial_states(cell, data), **kwargs}
    out = cell.forward(**args)
    return out[0], finals_of(cell, out), out[-1]


def finals_of(cell, out):
    """The final states of a forward's result (hs, final(s), cache), by name."""
    values = tuple(out[1]) if len(cell.STATES) > 1 else (out[1],)
    return dict(zip(final_names(cell), values))


def backward(cell, data, cache, **kwargs):
    """cell.backward of `cache` with data's upstream gradients dhs, dhT (dcT); kwargs may
    replace them or add state_grads."""
    args = {"dhs": data["dhs"], **{k: data[k] for k in upstream_names(cell)}, **kwargs}
    return cell.backward(args.pop("dhs"), cache, **args)


def run(cell, data, **kwargs):
    """forward then backward with data's random upstream gradients: hs, finals, cache, grads."""
    hs, finals, cache = forward(cell, data, **kwargs)
    return hs, finals, cache, backward(cell, data, cache)


def ragged_mask(T, B, lengths):
    """(T, B) 0/1 mask of sequences with the given lengths."""
    return (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).astype(np.float64)
