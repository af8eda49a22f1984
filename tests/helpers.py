"""Shared test helpers: random cells and data that can expose bugs (no zeros, no ones)."""
import numpy as np

import refnorm
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

CELL_NAMES = ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm")

# The CPU backends every proof runs on (the CUDA backend has its own simulator/GPU tests).
BACKENDS = ("numpy", "numba")


def make_cell(name, D=3, H=3, *, seed=0, dtype="float64", **options):
    """A cell with every parameter (and BN population statistic) redrawn at random and non-zero
    by refnorm.gradcheck.randomize; BNLSTM gets max_steps=6 unless told otherwise."""
    if name == "bn_lstm":
        options.setdefault("max_steps", 6)
    cell = refnorm.CELLS[name](D, H, seed=seed, dtype=dtype, **options)
    return randomize(cell, seed=1000 + seed)


def random_data(cell, T=4, B=3, *, seed=0, dtype=None):
    """x (T, B, D) ~ N(0, 1), h0, c0 (B, H) ~ N(0, 0.5²), upstream dhs, dhT, dcT ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    dt = dtype or cell.dtype
    D, H = cell.input_size, cell.hidden_size
    draw = lambda *shape: rng.standard_normal(shape).astype(dt)  # noqa: E731
    return {"x": draw(T, B, D), "h0": 0.5 * draw(B, H), "c0": 0.5 * draw(B, H),
            "dhs": draw(T, B, H), "dhT": draw(B, H), "dcT": draw(B, H)}


def ragged_mask(T, B, lengths):
    """(T, B) 0/1 mask of sequences with the given lengths."""
    return (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).astype(np.float64)
