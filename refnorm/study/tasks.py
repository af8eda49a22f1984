"""The study's tasks: data as time-major arrays, made on the spot (no download).

    adding_problem(n, T, rng)            a synthetic long-range task, length T configurable
    digits_task(rng, mode)               scikit-learn's 8x8 handwritten digits as sequences
    digits_pixels_task(rng)              the same digits pixel by pixel, T = 64 ("digits_pixels")

A Dataset holds x (T, N, D), lengths (N,) and targets y: (N,) integer labels for a
classification task, (N, 1) floats for a regression task. The model reads the sequence and
predicts y from its last valid hidden state h_T.

The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): each step carries two
inputs, a value ~ U(0, 1) and a marker in {0, 1}. Exactly two steps are marked, one in the first
half of the sequence and one in the second half; the target is the sum of the two marked values.
Predicting the mean (1.0) gives MSE = Var(y) = 1/6 ≈ 0.167: the level of a model that has learnt
nothing. The marker of the first half may sit anywhere from step 0, so the gradient must cross up
to T steps. With variable lengths, each sequence's markers follow the same rule inside its own
length L and steps L..T-1 are padding (zeros).

Digits, row by row: each 8x8 image is read one row per step, T = 8, D = 8 pixels scaled to [0, 1]
(mode="row"); mode="pixel" reads it pixel by pixel, T = 64, D = 1. The study uses rows by
default: it is a real data set with an 8-step recurrence, so the whole sweep of cells x inits x
seeds fits the time budget, while the long-range question is asked by the adding problem, whose
length is configurable. Pixel mode (64 steps) is there for whoever has the time: as the study's
task "digits_pixels" (digits_pixels_task: the same images, split and scaling, one pixel per step
in scanline order, t = 8·row + column), which `refnorm study --preset paper` runs.
"""
from dataclasses import dataclass, replace

import numpy as np

# Var(U(0,1) + U(0,1)) = 2/12: the MSE of the best constant prediction (1.0) for the adding problem
ADDING_BASELINE_MSE = 1.0 / 6.0


@dataclass
class Dataset:
    x: np.ndarray          # (T, N, D)  inputs, padding steps are 0
    lengths: np.ndarray    # (N,)       valid steps of each sequence, 1..T
    y: np.ndarray          # (N,) int labels, or (N, 1) float targets

    def __len__(self):
        return self.x.shape[1]

    @property
    def T(self):
        return self.x.shape[0]

    def take(self, index):
        """The sequences `index` (an int array), as a new Dataset."""
        return Dataset(self.x[:, index], self.lengths[index], self.y[index])


@dataclass
class Task:
    name: str              # "adding", "digits" or "digits_pixels"
    kind: str              # "regression" (MSE) or "classification" (softmax cross-entropy)
    n_outputs: int         # 1 for the adding problem, 10 classes for digits
    train: Dataset
    test: Dataset

    @property
    def input_size(self):
        return self.train.x.shape[2]

    @property
    def T(self):
        return self.train.T


def adding_problem(n, T, rng, *, min_length=None):
    """n sequences of the adding problem, x (T, n, 2), lengths (n,), y (n, 1).

    min_length=None: every sequence has length T. Otherwise lengths ~ U{min_length..T}."""
    if T < 2:
        raise ValueError(f"T must be at least 2 for two markers in two halves, got {T}")
    if min_length is None:
        lengths = np.full(n, T)
    else:
        if not 2 <= min_length <= T:
            raise ValueError(f"min_length must lie in 2..T={T}, got {min_length}")
        lengths = rng.integers(min_length, T + 1, size=n)
    values = rng.uniform(0.0, 1.0, size=(T, n))
    half = lengths // 2
    first = np.floor(rng.uniform(0, 1, n) * half).astype(int)             # in 0 .. L/2 - 1
    second = half + np.floor(rng.uniform(0, 1, n) * (lengths - half)).astype(int)  # L/2 .. L-1
    markers = np.zeros((T, n))
    rows = np.arange(n)
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    valid = np.arange(T)[:, None] < lengths[None, :]                        # (T, n)
    x = np.stack([values * valid, markers], axis=2)                         # (T, n, 2)
    y = (values[first, rows] + values[second, rows])[:, None]               # (n, 1)
    return Dataset(x, lengths.astype(np.int64), y)


def adding_task(T, rng, *, n_train=2048, n_test=512, min_length=None):
    """Train and test sets of the adding problem of length T (fixed, or U{min_length..T})."""
    return Task("adding", "regression", 1,
                adding_problem(n_train, T, rng, min_length=min_length),
                adding_problem(n_test, T, rng, min_length=min_length))


def digits_sequences(mode="row"):
    """All 1797 scikit-learn digits as sequences: x (T, N, D) in [0, 1], labels y (N,).
    mode "row": T = 8 steps of D = 8 pixels; "pixel": T = 64 steps of D = 1."""
    from sklearn.datasets import load_digits      # ships its data: nothing is downloaded
    digits = load_digits()
    images = digits.images / 16.0                                           # (N, 8, 8)
    N = images.shape[0]
    if mode == "row":
        x = images.transpose(1, 0, 2)                                       # (8, N, 8)
    elif mode == "pixel":
        x = images.reshape(N, 64).T[:, :, None]                             # (64, N, 1)
    else:
        raise ValueError(f"digits mode must be 'row' or 'pixel', got {mode!r}")
    return np.ascontiguousarray(x), digits.target.astype(np.int64)


def digits_task(rng, *, mode="row", test_fraction=0.2, n_train=None):
    """A random train/test split of the digits (drawn from rng); n_train keeps only the first
    n_train training images (for quick runs)."""
    x, y = digits_sequences(mode)
    N = x.shape[1]
    order = rng.permutation(N)
    n_test = int(round(test_fraction * N))
    test, train = order[:n_test], order[n_test:]
    if n_train is not None:
        train = train[:n_train]
    full = Dataset(x, np.full(N, x.shape[0], dtype=np.int64), y)
    return Task("digits", "classification", 10, full.take(train), full.take(test))


def digits_pixels_task(rng, *, test_fraction=0.2, n_train=None):
    """The task "digits_pixels": digits_task's images read one pixel per step in scanline order
    (T = 64, D = 1). The same rng gives the same split as digits_task."""
    return replace(digits_task(rng, mode="pixel", test_fraction=test_fraction, n_train=n_train),
                   name="digits_pixels")


def minibatches(data, batch_size, rng=None):
    """Index arrays of the minibatches of one epoch: shuffled when rng is given, in order
    otherwise. Every batch has exactly batch_size rows except that an incomplete last batch is
    dropped when shuffling (a training batch of one row has no batch statistics)."""
    N = len(data)
    order = np.arange(N) if rng is None else rng.permutation(N)
    stop = N - N % batch_size if rng is not None else N
    return [order[k:k + batch_size] for k in range(0, stop, batch_size)]
