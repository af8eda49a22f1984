"""`refnorm study --figure cooijmans-1` (refnorm.study.figures): the per-step gradient norms
against a torch float64 autograd re-implementation and finite differences, E[tanh'(x)] and its
quartiles against quadrature and sampling, the upsampler against torch, the verdict rule, and
the CLI option (the default study run is untouched). Tiny sizes, NumPy backend: seconds."""
import functools
import json
import math

import numpy as np
import pytest

from refnorm import cli
from refnorm.cli import main
from refnorm.study import figures
from refnorm.study.figures import (bilinear_matrix, classifier, finding, gradient_norms,
                                   survival_table, tanh_derivative_stats, upsample_bilinear)
from refnorm.study.readout import readout_forward, softmax_cross_entropy

T, B, H = 16, 8, 8


def tiny_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (T, B, 1))
    x[:3] = 0.0                        # an all-zero start, as a digit's top-left border
    y = rng.integers(0, 10, B)
    Wy, by = classifier(H, rng)
    return x, y, Wy, by


def torch_norms(x, y, Wy, by, cell_params, terms, eps=1e-5):
    """Per-example ‖dL/dh_t‖ (T, B) by torch autograd, written from the paper's equations:
    h0 = mean pixel on every unit, BN over the batch with biased variance, mean cross-entropy."""
    torch = pytest.importorskip("torch")
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in cell_params.items()}
    X = torch.tensor(x, dtype=torch.float64)

    def bn(v, gain):
        mu = v.mean(dim=0)
        var = ((v - mu) ** 2).mean(dim=0)
        return gain * (v - mu) / torch.sqrt(var + eps)

    h = X.mean(dim=(0, 2))[:, None].expand(-1, H)
    states = []
    for t in range(x.shape[0]):
        u, a = X[t] @ P["Wx"], h @ P["Wh"]
        if terms == "summed":
            z = bn(u + a, P["gamma_z"]) + P["b"]
        else:
            z = bn(u, P["gamma_x"]) + bn(a, P["gamma_h"]) + P["b"]
        h = torch.tanh(z)
        h.retain_grad()
        states.append(h)
    scores = h @ torch.tensor(Wy) + torch.tensor(by)
    torch.nn.functional.cross_entropy(scores, torch.tensor(y)).backward()
    return np.stack([s.grad.norm(dim=1).numpy() for s in states])


@pytest.mark.parametrize("terms", ["summed", "separate"])
@pytest.mark.parametrize("Wh", ["identity", "orthogonal"])
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_gradient_norms_equal_torch_autograd(terms, Wh, gamma):
    import refnorm
    x, y, Wy, by = tiny_problem()
    norms, loss = gradient_norms(x, y, Wy, by, gamma=gamma, terms=terms, Wh=Wh, H=H, seed=3,
                                 backend="numpy")
    cell = refnorm.BNRNN(1, H, terms=terms, Wh=Wh, gamma_init=gamma, seed=3)  # the same draw
    expected = torch_norms(x, y, Wy, by, cell.params, terms)
    assert norms.shape == (T, B)
    np.testing.assert_allclose(norms, expected, rtol=1e-10, atol=0)
    assert np.all(norms > 0)


def test_last_step_norm_is_the_classifier_gradient_by_finite_differences():
    x, y, Wy, by = tiny_problem(1)
    norms, loss = gradient_norms(x, y, Wy, by, gamma=0.5, H=H, backend="numpy")
    import refnorm
    cell = refnorm.BNRNN(1, H, terms="summed", Wh="identity", gamma_init=0.5, seed=0)
    h0 = np.repeat(x.mean(axis=(0, 2))[:, None], H, axis=1)
    _, hT, _ = cell.forward(x, h0, training=True, update_stats=False)

    def L(h):
        return softmax_cross_entropy(readout_forward(h, Wy, by), y)[0]

    assert loss == pytest.approx(L(hT), rel=1e-14)
    step, fd = 1e-6, np.zeros_like(hT)
    for index in np.ndindex(*hT.shape):
        e = np.zeros_like(hT)
        e[index] = step
        fd[index] = (L(hT + e) - L(hT - e)) / (2 * step)
    np.testing.assert_allclose(norms[-1], np.linalg.norm(fd, axis=1), rtol=1e-7)


def test_expected_tanh_derivative_tends_to_one_and_matches_quadrature():
    quad = pytest.importorskip("scipy.integrate").quad
    mean, q25, q75 = tanh_derivative_stats([0.0, 1e-3])
    assert mean[0] == pytest.approx(1.0, abs=1e-15) and q25[0] == 1.0 and q75[0] == 1.0
    s = 1e-3                                 # E[1 − x² + 2x⁴/3 − ...] = 1 − σ² + 2σ⁴ − ...
    assert mean[1] == pytest.approx(1 - s ** 2 + 2 * s ** 4, abs=1e-14)
    sigmas = [0.05, 0.3, 1.0, 3.0]
    mean, _, _ = tanh_derivative_stats(sigmas)
    for sigma, m in zip(sigmas, mean):
        exact, _ = quad(lambda v: (1 - math.tanh(v) ** 2) * math.exp(-v * v / (2 * sigma ** 2))
                        / (sigma * math.sqrt(2 * math.pi)), -math.inf, math.inf,
                        epsabs=1e-14, epsrel=1e-13)
        assert m == pytest.approx(exact, abs=1e-11)


def test_tanh_derivative_quartiles_match_sampling():
    rng = np.random.default_rng(0)
    sigmas = np.array([0.3, 0.7, 1.0])
    _, q25, q75 = tanh_derivative_stats(sigmas)
    d = 1 - np.tanh(rng.standard_normal((400_000, 1)) * sigmas) ** 2
    np.testing.assert_allclose(q25, np.percentile(d, 25, axis=0), atol=2e-3)
    np.testing.assert_allclose(q75, np.percentile(d, 75, axis=0), atol=2e-3)
    assert np.all(q25 < q75)


def test_upsampler_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).uniform(0, 1, (3, 8, 8))
    ours = upsample_bilinear(images, 28)
    theirs = torch.nn.functional.interpolate(torch.tensor(images)[:, None], size=(28, 28),
                                             mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(bilinear_matrix(8, 28).sum(axis=1), 1.0, atol=1e-15)


def test_digit_pixels_are_scanline_sequences():
    pytest.importorskip("sklearn")
    x, y = figures.digit_pixels(5, 784, np.random.default_rng(0))
    assert x.shape == (784, 5, 1) and y.shape == (5,)
    assert x.min() >= 0.0 and x.max() <= 1.0
    from sklearn.datasets import load_digits
    digits = load_digits()
    pick = np.random.default_rng(0).choice(len(digits.target), size=5, replace=False)
    first = upsample_bilinear(digits.images[pick[:1]] / 16.0, 28)[0]
    np.testing.assert_array_equal(x[:, 0, 0], first.reshape(-1))    # row after row
    assert y[0] == digits.target[pick[0]]
    with pytest.raises(ValueError, match="square"):
        figures.digit_pixels(5, 50, np.random.default_rng(0))


def fake_results(survival):
    return {"setup": {"gammas": [0.1, 1.0]},
            "variants": {name: {"survival": {"0.1": r01, "1": r1}}
                         for name, (r01, r1) in survival.items()}}


def test_verdict_rule_picks_the_ratio_nearest_one():
    lines = finding(fake_results({"a/b": (1e-5, 0.5), "c/d": (2.0, 1e20), "e/f": (1e-3, 1e3)}))
    assert "nearest 1 at gamma = 1 " in lines[0] and "does not hold" in lines[0]
    assert "nearest 1 at gamma = 0.1 " in lines[1] and "advice holds" in lines[1]
    assert "explodes" in lines[1] and "vanishes" in lines[0]
    assert "does not hold" in lines[2]                # a tie is no win for the advice
    table = survival_table(fake_results({"a/b": (1e-5, 0.5)}))
    assert "| a/b | 1e-05 | 0.5 |" in table


def test_cli_figure_writes_pngs_json_csv(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    tiny = functools.partial(figures.cooijmans_figure_1, gammas=(0.1, 1.0), batch=B, T=T, H=H)
    monkeypatch.setattr(figures, "cooijmans_figure_1", tiny)
    out = tmp_path / "fig"
    assert main(["study", "--figure", "cooijmans-1", "--out", str(out),
                 "--backend", "numpy"]) == 0
    for name in ("cooijmans_1a.png", "cooijmans_1b.png", "cooijmans_1a_variants.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "cooijmans_1.json").read_text())
    assert set(results["variants"]) == {"summed/identity", "summed/orthogonal",
                                        "separate/identity", "separate/orthogonal"}
    for entry in results["variants"].values():
        assert len(entry["mean_norms"]["0.1"]) == T and set(entry["survival"]) == {"0.1", "1"}
    assert len(results["finding"]) == 4
    rows = (out / "gradient_norms.csv").read_text().splitlines()
    assert len(rows) == T + 1 and len(rows[0].split(",")) == 1 + 4 * 2
    text = capsys.readouterr().out
    assert "| summed/identity |" in text and "advice" in text


def test_default_study_run_is_unchanged(monkeypatch):
    """Without --figure, `refnorm study` builds its config as before and never draws a figure."""
    import refnorm.study
    from refnorm.study import StudyConfig
    seen = {}

    def fake_run_study(cfg, out, plots=True):
        seen.update(cfg=cfg, out=out)
        return {"question": {"tasks": {}}, "claims": []}

    def no_figure(*args, **kw):
        raise AssertionError("the default study drew a figure")

    monkeypatch.setattr(refnorm.study, "run_study", fake_run_study)
    monkeypatch.setattr(figures, "cooijmans_figure_1", no_figure)
    assert main(["study", "--backend", "numpy", "--jobs", "1"]) == 0
    assert seen["out"] == cli.STUDY_OUT
    from dataclasses import replace
    assert seen["cfg"] == replace(StudyConfig(), backend="numpy", jobs=1)
    assert cli.FIGURES == figures.FIGURES
