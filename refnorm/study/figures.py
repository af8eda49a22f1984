"""Figures of the papers, reproduced with refnorm's own forward and backward passes.

    refnorm study --figure cooijmans-1 [--out DIR]

Cooijmans et al. 2016, *Recurrent Batch Normalization*, Figure 1, in the authors' set-up, plus
the question the paper did not ask.

(a) Gradient flow at initialisation through a batch-normalised tanh RNN, for each initial gain γ:
    the mean over the examples of a batch of ‖dL/dh̃_t‖₂ against t (log scale).

        (FIG 1)  h_0 = m̄ 1ᵀ                              m̄ (B, 1): each example's mean pixel
        (FIG 2)  h̃_t = tanh(BN_t(x_t Wx + h_{t-1} Wh; γ, 0))   BNRNN, terms="summed", Wh = I
        (FIG 3)  p = softmax(h̃_{T-1} Wy + by),  L = −(1/B) Σ_b log p[b, y_b]
        (FIG 4)  n_t = (1/B) Σ_b ‖dL/dh̃_t[b]‖₂              dL/dh̃_t: BNRNN.backward's "dh"

(b) The expected derivative of tanh for a centred Gaussian input, with its interquartile range,
    against the input's standard deviation σ: a batch-normalised pre-activation with gain γ and
    no shift has standard deviation ≈ γ, so this is the average local gain of one step.

        (FIG 5)  E[tanh'(x)], x ~ N(0, σ²), tanh'(x) = 1 − tanh²(x)
        (FIG 6)  IQR: tanh' falls with |x|, so its quartiles are tanh'(σ z₀.₈₇₅) (the 25th
                 percentile) and tanh'(σ z₀.₆₂₅) (the 75th), z_p = Φ⁻¹(p) (|x|/σ is half-normal)

The extension: does the small-γ advice hold when each term is normalised apart (the form
BN-LSTM uses, z_t = BN(x_t Wx; γ) + BN(h_{t-1} Wh; γ)) and with an orthogonal Wh? (a) is
measured for the four variants {summed, separate} × {identity, orthogonal} and summarised by
the survival ratio n_0 / n_{T-1}: how much of the gradient at the last step reaches the first.

What the authors' code does (sequential_mnist.py, construct_rnn; the plot scripts
results/iclr/rnn_hidden_norms/plot_rnn_gradnorm.py and paper/figures/plot_tanh_grad.py):
    - H = 100, MNIST read one pixel per step (T = 784, scanline order), pixels in [0, 1].
    - Wh = I, Wx = an orthogonal (1, H) row (a random unit vector), β = 0, no other bias.
    - h0 = a zero parameter plus, with --summarize, each example's mean pixel broadcast to all H
      units: h_prime = x.mean(axis=[0, 2])[:, None].
    - h_t = tanh(BN(h_{t-1} Wh + x_t Wx)): one batch norm of the sum, statistics of the batch at
      that step, biased variance, eps = 1e-5 inside the square root.
    - Loss: the mean over the batch of the cross-entropy of softmax(h_T Wy + by), Wy an
      orthogonal (H, 10) matrix (orthonormal columns), by = 0.
    - The dump: before the first epoch, on one training batch of 100 examples, the gradient of
      that batch-mean loss with respect to every step's h (a dummy added to h_t). The plot takes
      the 2-norm over units per example, then the mean over the 100 examples, for γ = 0.1, 0.2,
      ..., 1.0, each run with the same seed (so the same batch, Wx and Wy for every γ).
    - (b) samples: 1000 draws per σ on 1000 values of σ in [0, 1]; the mean and the 25th and
      75th percentiles of the sampled tanh'(x).

Where refnorm's set-up differs, and why:
    - Data: the 1797 8x8 digits shipped with scikit-learn stand in for MNIST (nothing is
      downloaded). A batch of `batch` (100) of them, drawn at random with `seed`, is scaled to
      [0, 1] (pixel / 16) and upsampled bilinearly to 28x28 (pixel centres aligned, as
      torch's interpolate(align_corners=False), edges clamped). The digits fill their frame
      where MNIST's sit in a 20x20 box with a 4-pixel margin, so their mean pixel (the priming
      value) is larger (≈ 0.3 against ≈ 0.13).
    - Draws: Wx, Wy (and the orthogonal Wh of the extension) come from NumPy's Generator by QR of
      a Gaussian matrix (refnorm's orthogonal_init), the authors' from an SVD: the same
      distribution, other numbers. Wx, Wh and Wy are the same for every γ, as in the authors'
      runs.
    - Precision: float64 throughout (the authors ran Theano in float32).
    - (b) is computed, not sampled: the mean by quadrature (the trapezoid rule in z = x/σ, to
      about 1e-16), the quartiles exactly by (FIG 6). These are the curves the authors'
      sampling estimates.

Reading the numbers: n_0/n_{T-1} < 1 is a vanishing gradient, > 1 an exploding one. Where it
explodes (orthogonal Wh, large γ), the forward pass is chaotic as well: a rounding difference at
an early step grows by the same factor, so backends that round differently (numba, NumPy, torch)
agree on that ratio to its order of magnitude only (within a factor 1.6 at γ = 1 for the full
size), and the verdicts rest on orders of magnitude.
"""
import csv
import json
import os
import time
from statistics import NormalDist

import numpy as np

from ..cells import BNRNN
from ..cells.base import orthogonal_init
from ..config import DEFAULT_EPS
from .readout import readout_backward, readout_forward, softmax_cross_entropy

FIGURES = ("cooijmans-1",)
FIGURE_1_GAMMAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)   # plot_rnn_gradnorm.py
# (terms, Wh): the paper's RNN first, then the extension
VARIANTS = (("summed", "identity"), ("summed", "orthogonal"),
            ("separate", "identity"), ("separate", "orthogonal"))
N_CLASSES = 10
TRAPEZOID_STEP, TRAPEZOID_HALF_WIDTH = 0.02, 1900      # z in [-38, 38]: φ(38) ~ 1e-314


def variant_name(terms, Wh):
    return f"{terms}/{Wh}"


# -- the data ---------------------------------------------------------------------------------
def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) linear interpolation weights, pixel centres aligned: output pixel i samples
    the input at (i + 0.5) n_in / n_out − 0.5, clamped to [0, n_in − 1]."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    A = np.zeros((n_out, n_in))
    A[np.arange(n_out), lo] += 1.0 - frac
    A[np.arange(n_out), hi] += frac
    return A


def upsample_bilinear(images, size):
    """images (N, h, w) -> (N, size, size), separable bilinear interpolation."""
    _, h, w = images.shape
    return bilinear_matrix(h, size) @ images @ bilinear_matrix(w, size).T


def digit_pixels(batch, T, rng):
    """`batch` random digits as pixel sequences in scanline order: x (T, B, 1) in [0, 1], labels
    (B,). T must be a square (the image side is √T; 784 gives MNIST's 28x28)."""
    side = int(round(np.sqrt(T)))
    if side * side != T:
        raise ValueError(f"T must be a square (one pixel per step of a side x side image), got {T}")
    from sklearn.datasets import load_digits       # ships its data: nothing is downloaded
    digits = load_digits()
    pick = rng.choice(len(digits.target), size=batch, replace=False)
    images = upsample_bilinear(digits.images[pick] / 16.0, side)               # (B, side, side)
    x = images.reshape(batch, T).T[:, :, None]                                 # (T, B, 1)
    return np.ascontiguousarray(x), digits.target[pick].astype(np.int64)


# -- (a): gradient norms at initialisation ----------------------------------------------------
def classifier(H, rng):
    """Wy (H, 10) with orthonormal columns and by = 0, as the authors' Wy, by."""
    return orthogonal_init(rng, (H, N_CLASSES)), np.zeros(N_CLASSES)


def gradient_norms(x, y, Wy, by, *, gamma, terms="summed", Wh="identity", H=100, seed=0,
                   backend="numba", eps=DEFAULT_EPS):
    """Per-example ‖dL/dh̃_t‖₂ (T, B) at initialisation, (FIG 1)-(FIG 4), and the loss.

    The cell is BNRNN(1, H) drawn with `seed` (Wx an orthogonal row, b = 0, every gain γ), Wh as
    given; h0 is each example's mean pixel on every unit; training-mode batch statistics."""
    T, B, _ = x.shape
    cell = BNRNN(1, H, terms=terms, Wh=Wh, gamma_init=gamma, eps=eps, seed=seed,
                 backend=backend)
    h0 = np.repeat(x.mean(axis=(0, 2))[:, None], H, axis=1)                    # (FIG 1) (B, H)
    _, hT, cache = cell.forward(x, h0, training=True, update_stats=False)       # (FIG 2)
    scores = readout_forward(hT, Wy, by)                                        # (FIG 3)
    loss, dscores = softmax_cross_entropy(scores, y)
    _, _, dhT = readout_backward(dscores, hT, Wy)                               # (B, H)
    dh = cell.backward(None, cache, dhT, state_grads=True)["dh"]               # (T, B, H)
    return np.sqrt(np.einsum("tbh,tbh->tb", dh, dh)), loss                      # (FIG 4) (T, B)


# -- (b): the derivative of tanh ----------------------------------------------------------------
def dtanh(x):
    return 1.0 - np.tanh(x) ** 2


def tanh_derivative_stats(sigmas):
    """(FIG 5), (FIG 6): E[tanh'(x)] and its 25th and 75th percentiles for x ~ N(0, σ²), each
    (len(sigmas),). The mean is ∫ tanh'(σz) φ(z) dz by the trapezoid rule on a fine z grid,
    which converges geometrically for an analytic integrand that decays this fast: the error
    is about exp(−π² / (σ h)) (tanh' has poles at z = ±iπ/(2σ)), below 1e-16 for σ <= 10."""
    sigmas = np.asarray(sigmas, dtype=float)
    z = np.arange(-TRAPEZOID_HALF_WIDTH, TRAPEZOID_HALF_WIDTH + 1) * TRAPEZOID_STEP
    w = TRAPEZOID_STEP * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)     # φ(z) dz, Σ w = 1
    mean = dtanh(sigmas[:, None] * z[None, :]) @ w
    q25 = dtanh(sigmas * NormalDist().inv_cdf(0.875))
    q75 = dtanh(sigmas * NormalDist().inv_cdf(0.625))
    return mean, q25, q75


# -- the whole figure ---------------------------------------------------------------------------
def survival(mean_norms):
    """n_0 / n_{T-1}: the share of the last step's gradient norm that reaches the first step."""
    last = mean_norms[-1]
    return float(mean_norms[0] / last) if last > 0 else float("nan")


def measure_figure_1(*, gammas=FIGURE_1_GAMMAS, variants=VARIANTS, batch=100, T=784, H=100,
                     seed=0, backend="numba", n_sigmas=201):
    """Every number of the figure, no plotting: a JSON-ready dict."""
    rng = np.random.default_rng(seed)
    x, y = digit_pixels(batch, T, rng)
    Wy, by = classifier(H, rng)
    start = time.perf_counter()
    out = {"setup": {"batch": batch, "T": T, "H": H, "seed": seed, "backend": backend,
                     "eps": DEFAULT_EPS, "gammas": list(gammas),
                     "mean_pixel": float(x.mean())},
           "variants": {}}
    for terms, Wh in variants:
        entry = {"terms": terms, "Wh": Wh, "mean_norms": {}, "survival": {}, "loss": {}}
        for gamma in gammas:
            norms, loss = gradient_norms(x, y, Wy, by, gamma=gamma, terms=terms, Wh=Wh, H=H,
                                         seed=seed, backend=backend)
            mean_norms = norms.mean(axis=1)                                     # (T,)
            key = f"{gamma:g}"
            entry["mean_norms"][key] = mean_norms.tolist()
            entry["survival"][key] = survival(mean_norms)
            entry["loss"][key] = loss
        out["variants"][variant_name(terms, Wh)] = entry
    out["seconds_measuring"] = time.perf_counter() - start
    sigmas = np.linspace(0.0, 1.0, n_sigmas)
    mean, q25, q75 = tanh_derivative_stats(sigmas)
    out["tanh"] = {"sigma": sigmas.tolist(), "mean": mean.tolist(), "q25": q25.tolist(),
                   "q75": q75.tolist()}
    out["finding"] = finding(out)
    return out


def finding(results):
    """One sentence per variant, from the survival ratios r = n_0 / n_{T-1}: r < 1 is vanishing,
    r > 1 exploding, and the best γ is the one with r nearest 1 (smallest |log r|). The paper's
    advice holds for a variant when γ = min(gammas) has r nearer 1 than γ = max(gammas)."""
    gammas = results["setup"]["gammas"]
    small, large = f"{min(gammas):g}", f"{max(gammas):g}"
    lines = []
    for name, entry in results["variants"].items():
        ratio = entry["survival"]

        def distance(g):
            r = ratio[g]
            return np.inf if not (np.isfinite(r) and r > 0) else abs(np.log10(r))

        def trend(g):
            return "vanishes" if ratio[g] < 1 else "explodes"

        best = min(ratio, key=distance)
        holds = distance(small) < distance(large)
        lines.append(f"{name}: n_0/n_T-1 is nearest 1 at gamma = {best} ({ratio[best]:.2g}); "
                     f"at gamma = {small} it is {ratio[small]:.2g} (the gradient "
                     f"{trend(small)}), at gamma = {large} {ratio[large]:.2g} ({trend(large)}): "
                     f"the small-gamma advice {'holds' if holds else 'does not hold'}")
    return lines


def survival_table(results):
    """Markdown table: one row per variant, one column per γ, cells n_0 / n_{T-1}."""
    gammas = [f"{g:g}" for g in results["setup"]["gammas"]]
    rows = ["| terms/Wh | " + " | ".join(f"γ={g}" for g in gammas) + " |",
            "|---|" + "---|" * len(gammas)]
    for name, entry in results["variants"].items():
        rows.append(f"| {name} | " + " | ".join(f"{entry['survival'][g]:.2g}" for g in gammas)
                    + " |")
    return "\n".join(rows)


def write_numbers(results, out_dir):
    """cooijmans_1.json (everything), gradient_norms.csv (t, one column per variant and γ),
    tanh_derivative.csv (σ, mean, q25, q75). Returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in
             ("cooijmans_1.json", "gradient_norms.csv", "tanh_derivative.csv")]
    with open(paths[0], "w") as f:
        json.dump(results, f, indent=1)
    columns = [(name, g) for name, entry in results["variants"].items()
               for g in entry["mean_norms"]]
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t"] + [f"{name} gamma={g}" for name, g in columns])
        series = [results["variants"][name]["mean_norms"][g] for name, g in columns]
        for t in range(results["setup"]["T"]):
            writer.writerow([t] + [f"{s[t]:.6e}" for s in series])
    tanh = results["tanh"]
    with open(paths[2], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sigma", "mean", "q25", "q75"])
        for row in zip(tanh["sigma"], tanh["mean"], tanh["q25"], tanh["q75"]):
            writer.writerow([f"{v:.10g}" for v in row])
    return paths


# -- plots ---------------------------------------------------------------------------------------
def _plot_norms(ax, entry, title):
    import matplotlib
    keys = list(entry["mean_norms"])
    colors = matplotlib.colormaps["viridis"](np.linspace(0.1, 0.9, len(keys)))
    for key, color in zip(keys, colors):
        norms = np.asarray(entry["mean_norms"][key])
        ax.plot(np.where(norms > 0, norms, np.nan), color=color, linewidth=2,
                label=f"gamma={float(key):.2f}")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("t")
    ax.set_ylabel("||dloss/dh_t||_2 (mean over examples)")


def plot_figure_1(results, out_dir):
    """cooijmans_1a.png (the paper's RNN), cooijmans_1b.png (tanh'), cooijmans_1a_variants.png
    (the extension, one panel per variant). Returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in
             ("cooijmans_1a.png", "cooijmans_1b.png", "cooijmans_1a_variants.png")]
    s = results["setup"]
    first = variant_name(*VARIANTS[0])
    fig, ax = plt.subplots(figsize=(8, 6))
    _plot_norms(ax, results["variants"][first],
                f"RNN gradient propagation (BN of the sum, Wh = I, H = {s['H']}, B = {s['batch']})")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    tanh = results["tanh"]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(tanh["sigma"], tanh["mean"], color="#CC4F1B")
    ax.fill_between(tanh["sigma"], tanh["q25"], tanh["q75"], facecolor="#FF9848", linewidth=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("input standard deviation")
    ax.set_ylabel("expected derivative (and IQR range)")
    ax.set_title("derivative through tanh of centered input")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    names = list(results["variants"])
    cols = 2 if len(names) > 1 else 1
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 5 * rows), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes.flat, names):
        _plot_norms(ax, results["variants"][name], f"terms={name.replace('/', ', Wh=')}")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths


def cooijmans_figure_1(out_dir, *, gammas=FIGURE_1_GAMMAS, variants=VARIANTS, batch=100, T=784,
                       H=100, seed=0, backend="numba", plots=True):
    """Measure, write the numbers and (plots=True) the PNGs into out_dir; returns the results
    dict with "files" (the paths written) added."""
    results = measure_figure_1(gammas=gammas, variants=variants, batch=batch, T=T, H=H,
                               seed=seed, backend=backend)
    files = write_numbers(results, out_dir)
    if plots:
        files += plot_figure_1(results, out_dir)
    results["files"] = files
    return results
