"""Golden test vectors: refnorm's float64 truth on disk, for frameworks in any language.

    refnorm golden --out golden/            (or refnorm.golden.write("golden/"))

writes one .npz per case -- every cell with its defaults and every preset, BN cells in training
and in inference -- and manifest.json, which says what each array is. A framework needs only an
.npz reader (NumPy, cnpy for C++, npyz for Rust, ...) and the manifest: load the parameters
(converted to its own layout, see the manifest's "conventions"), run the inputs, and compare its
outputs and gradients with the stored ones.

Each .npz holds (float64 unless noted; shapes time-major):
    x (T, B, D), h0, c0 (B, H), mask (T, B) of 0/1, lengths (B,) int64
    dhs (T, B, H), dhT, dcT (B, H)     the upstream gradients: L = Σ dhs⊙hs + Σ dhT⊙hT + Σ dcT⊙cT
    hs (T, B, H), hT, cT (B, H)        the forward outputs (hs is 0 at padded steps)
    param.NAME                         every parameter, refnorm layout
    grad.NAME                          dL/d(every parameter), and grad.x, grad.h0, grad.c0
    stat.NAME                          BN cells: the population statistics before the call
The manifest lists, per case, the cell, its options, the mode, the shape and the SHA-256 of each
array's little-endian float64 (or int64) bytes, so a reader can check what it loaded.
"""
import hashlib
import json
import pathlib

import numpy as np

from . import CELLS, __version__, presets
from .gradcheck import final_states, randomize

T, B, D, H = 6, 4, 3, 4
LENGTHS = (6, 5, 3, 6)       # every step keeps at least two valid rows: BN statistics defined
BN_SLOTS = 4                 # BN-LSTM inference: steps 4 and 5 reuse slot 3 (BN-LSTM 5)

CONVENTIONS = {
    "layout": "z = x @ Wx + h @ Wh + b, Wx (D, 4H), Wh (H, 4H), b (4H); gate blocks of the 4H "
              "axis in the order i, f, g, o (g = candidate, 'c' in Keras/ONNX, 'j' in TF1)",
    "rnn_layout": "the RNN family (cells RNN, BNRNN, SeqBNRNN, LNRNN): z = x @ Wx + h @ Wh + b, "
                  "Wx (D, H), Wh (H, H), b (H), h~ = tanh(z) or relu(z) (options.nonlinearity); "
                  "one state: no c0, dcT, cT, grad.c0",
    "gru_layout": "the GRU family (cells GRU, BNGRU, SeqBNGRU, LNGRU): u = x @ Wx + b, a = h @ Wh, "
                  "Wx (D, 3H), Wh (H, 3H), b (3H), gate blocks r, z, n; reset 'after': "
                  "n = tanh(u_n + r * (a_n + b_hn)), b_hn (H); 'before': n = tanh(u_n + "
                  "(r * h) @ Wh_n); h~ = (1 - z) * n + z * h; one state",
    "time_major": "x (T, B, D), hs (T, B, H); states (B, H)",
    "mask": "mask[t, b] = 1 where t < lengths[b]; padded steps carry h and c unchanged and "
            "output 0 in hs; hT, cT are each sequence's last valid state",
    "loss": "L = sum(dhs * hs) + sum(dhT * hT) + sum(dcT * cT); grad.* = dL/d*",
    "normalization": "eps inside the square root, biased variance, two-pass; BN training uses "
                     "each step's valid rows (pad_stats='exclude') unless the options say "
                     "pad_stats='include'",
    "bn_inference": "step t uses population slot min(t0 + t, slots - 1), t0 = 0 here",
    "forget_bias": "a run-time constant added to the forget pre-activation (not in param.b)",
    "term_beta": "beta_x, beta_h are shifts of the input- and recurrent-term normalisations",
    "carry": "'raw': c~ is the carried state and cT; 'normalized': N(c~; gamma_c, beta_c) is",
    "terms": "'summed': z = LN(x Wx + h Wh; gamma_z) + b (TF1 contrib); 'separate': two LNs",
    "dtype": "float64 throughout",
}


def cases():
    """(case name, cell factory, options, preset name or None, training) for every vector."""
    for stem, cls in CELLS.items():
        variants = [({}, stem)]
        if stem == "ln_lstm":
            variants.append(({"per_gate": True}, "ln_lstm-per_gate"))
        if stem == "rnn":
            variants.append(({"nonlinearity": "relu"}, "rnn-relu"))
        if stem == "bn_rnn":
            variants.append(({"terms": "summed"}, "bn_rnn-summed"))
        if stem == "ln_rnn":
            variants.append(({"terms": "separate"}, "ln_rnn-separate"))
        if stem == "gru":
            variants.append(({"reset": "before"}, "gru-reset_before"))
        for options, name in variants:
            yield from _modes(name, cls, options, None)
    for name, make in presets.PRESETS.items():
        yield from _modes("preset-" + name, make, {}, name)


def _modes(name, factory, options, preset):
    cls = getattr(factory, "cls", factory)
    batch_norm = hasattr(cls, "_stat_widths")
    for training in ((True, False) if batch_norm else (True,)):
        suffix = ("-train" if training else "-eval") if batch_norm else ""
        yield name + suffix, factory, options, preset, training


def build(factory, options, preset, seed):
    """The cell of one case with random non-zero parameters and statistics."""
    kw = dict(options)
    per_step_bn = (CELLS["bn_lstm"], CELLS["bn_rnn"], CELLS["bn_gru"])
    if getattr(factory, "cls", factory) in per_step_bn and \
            "max_steps" not in getattr(factory, "options", {}):
        kw["max_steps"] = BN_SLOTS          # a preset's own max_steps (batchnorm-lstm: 1) stays
    return random_cell(factory, D, H, seed=seed, **kw)


def random_cell(factory, input_size, hidden_size, seed, **options):
    """factory(input_size, hidden_size, seed=seed, **options) -- a cell class or a
    refnorm.presets entry -- with random non-zero parameters and statistics (refnorm.randomize,
    seed + 1), except the params the preset holds at zero (its hold_zero: the peer has no such
    parameter). `refnorm golden` and `refnorm validate --preset` both draw their cells here."""
    cell = randomize(factory(input_size, hidden_size, seed=seed, **options), seed=seed + 1)
    for name in getattr(factory, "hold_zero", ()):
        cell.params[name][...] = 0.0
    return cell


def compute(cell, training, seed):
    """Inputs, outputs and gradients of one case, as the arrays written to the .npz."""
    rng = np.random.default_rng(seed)
    lengths = np.array(LENGTHS, dtype=np.int64)
    mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float64)
    drawn = {"x": rng.standard_normal((T, B, D)), "h0": 0.5 * rng.standard_normal((B, H)),
             "c0": 0.5 * rng.standard_normal((B, H)), "mask": mask, "lengths": lengths,
             "dhs": rng.standard_normal((T, B, H)) * mask[..., None],
             "dhT": rng.standard_normal((B, H)), "dcT": rng.standard_normal((B, H))}
    states = cell.STATES                        # ("h", "c") or ("h",): no c0, dcT, cT for RNNs
    arrays = {k: v for k, v in drawn.items() if "c" in states or k not in ("c0", "dcT")}
    arrays.update({"param." + k: v.copy() for k, v in cell.params.items()})
    arrays.update({"stat." + k: v.copy() for k, v in getattr(cell, "stats", {}).items()})
    out = cell.forward(arrays["x"], *(arrays[s + "0"] for s in states), mask,
                       training=training, update_stats=False)
    grads = cell.backward(arrays["dhs"], out[-1], *(arrays[f"d{s}T"] for s in states))
    arrays.update(zip([s + "T" for s in states], final_states(cell, out)), hs=out[0])
    arrays.update({"grad." + k: v for k, v in grads.items()})
    return arrays


def checksum(a):
    a = np.ascontiguousarray(a)
    dt = "<i8" if a.dtype.kind in "iu" else "<f8"
    return hashlib.sha256(a.astype(dt).tobytes()).hexdigest()


def write(out, seed=0):
    """Write every case's .npz and manifest.json into the folder `out`; returns the manifest."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"generator": f"refnorm {__version__}", "seed": seed,
                "sizes": {"T": T, "B": B, "D": D, "H": H}, "conventions": CONVENTIONS,
                "cases": {}}
    for k, (name, factory, options, preset, training) in enumerate(cases()):
        cell = build(factory, options, preset, seed=seed + 10 * k)
        arrays = compute(cell, training, seed=seed + 10 * k + 5)
        np.savez(out / f"{name}.npz", **arrays)
        manifest["cases"][name] = {
            "file": f"{name}.npz", "cell": type(cell).__name__, "preset": preset,
            "options": describe(cell), "training": training,
            "arrays": {key: {"shape": list(np.shape(v)), "sha256": checksum(v)}
                       for key, v in arrays.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


OPTION_NAMES = ("eps", "per_gate", "carry", "term_beta", "terms", "forget_bias", "pad_stats",
                "momentum", "unbiased_var", "past_max_steps", "nonlinearity", "reset")


def describe(cell):
    """The options that change the function a cell computes, as plain JSON values."""
    found = {name: getattr(cell, name) for name in OPTION_NAMES if name in vars(cell)}
    if getattr(cell, "max_steps", "absent") != "absent":        # the per-step BN cells
        found["population_slots"] = int(next(iter(cell.stats.values())).shape[0])
    return found


def load(folder, name):
    """Read one case back: (manifest entry, {array name: array}), checksums verified."""
    folder = pathlib.Path(folder)
    entry = json.loads((folder / "manifest.json").read_text())["cases"][name]
    with np.load(folder / entry["file"]) as f:
        arrays = {key: f[key] for key in f.files}
    for key, meta in entry["arrays"].items():
        if checksum(arrays[key]) != meta["sha256"]:
            raise ValueError(f"{entry['file']}: {key} does not match its checksum")
    return entry, arrays
