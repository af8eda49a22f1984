"""`refnorm golden`: the vectors it writes reproduce from the manifest alone, and checksums catch
a changed array."""
import json

import numpy as np
import pytest

import refnorm
from refnorm import golden
from refnorm.cli import main
from refnorm.gradcheck import final_states
from helpers import TOL


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    assert main(["golden", "--out", str(out), "--seed", "3"]) == 0
    return out


def test_every_cell_and_preset_has_vectors(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    names = set(manifest["cases"])
    for stem in refnorm.CELLS:
        assert any(n == stem or n.startswith(stem + "-") for n in names), stem
    for preset in refnorm.presets.PRESETS:
        assert any(n.startswith("preset-" + preset) for n in names), preset
    assert {"bn_lstm-train", "bn_lstm-eval", "preset-jihunchoi_bn_lstm-eval"} <= names
    for entry in manifest["cases"].values():
        assert (folder / entry["file"]).is_file()


def rebuild(entry, arrays):
    """A cell made from the manifest's description alone, holding the stored parameters."""
    options = dict(entry["options"])
    slots = options.pop("population_slots", None)
    if slots:
        options["max_steps"] = slots
    cls = {c.__name__: c for c in refnorm.CELLS.values()}[entry["cell"]]
    cell = cls(arrays["x"].shape[2], arrays["h0"].shape[1], **options)
    for key, value in arrays.items():
        kind, _, name = key.partition(".")
        if kind == "param":
            cell.params[name] = value.copy()
        elif kind == "stat":
            cell.stats[name] = value.copy()
    return cell


def test_vectors_reproduce_from_the_manifest(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["cases"]:
        entry, a = golden.load(folder, name)
        cell = rebuild(entry, a)
        states = cell.STATES                         # ("h", "c"), or ("h",) for the RNNs
        out = cell.forward(a["x"], *(a[s + "0"] for s in states), a["mask"],
                           training=entry["training"], update_stats=False)
        grads = cell.backward(a["dhs"], out[-1], *(a[f"d{s}T"] for s in states))
        finals = list(zip([s + "T" for s in states], final_states(cell, out)))
        # the same float64 code on the same inputs: only BLAS threading may reorder sums
        for key, ours in [("hs", out[0])] + finals + [
                ("grad." + k, v) for k, v in grads.items()]:
            err = refnorm.relative_error(ours, a[key])
            assert err <= TOL["float64_reorder"], (name, key, err)
        assert {k[5:] for k in a if k.startswith("grad.")} == (
            set(cell.params) | {"x"} | {s + "0" for s in states})
        assert ("c0" in a) == ("c" in states)
        np.testing.assert_array_equal(a["hs"][a["mask"] == 0], 0.0)


def test_the_fastrnns_preset_holds_b_at_zero(folder):
    _, a = golden.load(folder, "preset-torch_fastrnns_layer_norm_lstm")
    np.testing.assert_array_equal(a["param.b"], 0.0)
    assert np.abs(a["param.beta_x"]).min() > 0


def test_a_changed_array_fails_its_checksum(folder, tmp_path):
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    _, a = golden.load(tmp_path, "ln_lstm")
    a["grad.Wx"][0, 0] += 1e-15 * max(1.0, abs(a["grad.Wx"][0, 0]))
    np.savez(tmp_path / "ln_lstm.npz", **a)
    with pytest.raises(ValueError, match="grad.Wx"):
        golden.load(tmp_path, "ln_lstm")


def test_golden_help_and_folder_name(tmp_path, monkeypatch, capsys):
    """`refnorm golden --help` says what the command writes, and a folder given with a trailing
    slash is printed once, as given ("golden/", never "golden//")."""
    with pytest.raises(SystemExit):
        main(["golden", "--help"])
    usage, _, options = capsys.readouterr().out.partition("options:")
    assert "manifest.json" in usage and "any language" in usage
    monkeypatch.setattr(golden, "write", lambda out, seed: {"cases": {"a": {}, "b": {}}})
    assert main(["golden", "--out", "golden/"]) == 0
    out = capsys.readouterr().out
    assert "2 cases in golden/ " in out and "//" not in out
