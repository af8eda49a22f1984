"""refnorm.validate: validate another framework's LSTM or RNN against refnorm's float64 truth,
tensor by tensor.

    report = refnorm.validate(torch.nn.LSTM(3, 4))          # or a haste module, or a callable
    print(report)                                             # the per-tensor table
    assert report.ok

What it does: copy the module's weights into the matching refnorm cell (refnorm.interop), draw
random inputs, initial states, sequence lengths and upstream gradients, run the module (with its
own autograd) and the refnorm cell (float64, hand-written BPTT) on them, and compare the outputs
at valid steps, the final states and the gradients of L = Σ dhs⊙hs + Σ dhT⊙hT + Σ dcT⊙cT with
respect to the input, the initial states and every weight (in refnorm's layout; the framework's
gradients go through the same converter as its weights). Each tensor gets the relative error
max|a - b| / max(|a| + |b|) and a verdict against a tolerance chosen by the framework's dtype.
The states are the cell's (cell.STATES): h and c for the LSTM family; h alone for a vanilla RNN
(refnorm.RNN) and the GRU family (refnorm.GRU, LNGRU), whose report has no cT, dc0 and whose
data has no c0, dcT.

Targets:
* torch.nn.LSTM and torch.nn.RNN (tanh or relu) (variable lengths through a PackedSequence;
  several layers and two directions are the refnorm.Stack interop.from_torch reads out of the
  module, one cell per layer and direction composed as torch composes them),
  torch.nn.LSTMCell and RNNCell (stepped here, with refnorm's masked carry);
* torch.nn.GRU (as torch.nn.RNN, layers and directions included) and torch.nn.GRUCell (stepped),
  against refnorm.GRU (reset="after"; the gradient of bias_hh's n block is db_hn);
* haste_pytorch.GRU and LayerNormGRU (refnorm.GRU, LNGRU: presets.haste_gru,
  haste_layer_norm_gru), as haste's LSTMs below;
* haste_pytorch.LSTM and LayerNormLSTM (lengths passed to the module; it leaves outputs at padded
  steps unmasked, so only valid steps are compared);
* keras.layers.LSTM (Keras 3 on the backend it was imported with, KERAS_BACKEND or
  ~/.keras/keras.json, TensorFlow by default; the gradients come from that backend's autodiff,
  KERAS_BACKENDS: tf.GradientTape, torch.autograd, or jax.vjp with jax_enable_x64 on, and the
  header names the backend and its version. The mask is passed to the layer when some step is
  padded, and Keras repeats the previous output at masked steps, so only valid steps are
  compared. Keras 3.15 computes part of a float64 LSTM in float32 on two backends
  (KERAS_FLOAT32): on torch where a mask is used (its masked loop's keras.ops.matmul), on JAX
  always (keras.ops.tanh); such a layer fails at ~1e-7 and the report says why in a note.
  TensorFlow agrees to ~1e-15, masked or not. Measured with Keras 3.15.1,
  tests/test_keras_backends.py); keras.layers.SimpleRNN (tanh or relu) the same way, where
  Keras 3.15 computes a float64 layer in float32 on torch always (the cell's keras.ops.matmul)
  and on JAX with tanh where a mask is used (KERAS_FLOAT32_SIMPLE_RNN), and a float64 tanh
  layer without a mask does not run on JAX at all (a ValueError says why: KERAS_JAX_CARRY);
  TensorFlow, and JAX with relu, agree to ~1e-16 (tests/test_interop_rnn.py);
* a Keras stack (interop.keras_stack): keras.layers.Bidirectional(LSTM | GRU | SimpleRNN,
  merge_mode="concat"), or a keras.Sequential or list of recurrent layers (or Bidirectionals)
  with a BatchNormalization between each two, against the refnorm.Stack from_keras_stack makes
  of it (between="seq_bn"). Keras runs it layer by layer with every layer's initial states,
  returning every layer's final states, in training (BN with batch statistics) unless
  training=False; rows hs, hT (, cT) (L·dirs, B, H), the gradient of every weight by its Stack
  name (dl0.fwd.Wx, dl0.bwd.b, dl0.norm.gamma, ...), dx, dh0 (, dc0), and in training the norms'
  moving statistics after the step (l0.norm.mean, .var); the model is left as it was. Besides
  its recurrent layers' KERAS_FLOAT32_BY, Keras 3.15 computes a float64 BatchNormalization in
  float32 on torch and JAX (KERAS_FLOAT32_BATCH_NORM) and divides masked moments by n +
  keras.config.epsilon() (KERAS_MASKED_MOMENTS, ~1e-8); the note names what applies. On
  TensorFlow the Bidirectional, and the batch-norm stacks without a mask (or with the fuzz
  factor set to 0), agree to ~1e-15 (tests/test_keras_stack.py). `refnorm validate
  refnorm.interop.keras_stack:bidirectional_lstm` (or batch_norm_lstm_stack,
  bidirectional_gru_batch_norm_stack) builds one with random non-zero weights;
* flax.linen.LSTMCell and OptimizedLSTMCell, bound to their params (cell.bind({'params': p})),
  and flax.nnx.LSTMCell and OptimizedLSTMCell: run by Flax's own RNN (flax.linen.RNN /
  flax.nnx.RNN, batch-major, with seq_lengths: it returns each sequence's last valid carry and
  leaves padded outputs unmasked, so only valid steps are compared); gradients by jax.vjp of the
  same loss, the initial carry (c, h) included. The module runs in its own dtype (its dtype,
  else its params'): a float32 module passes at float32 tolerance; a float64 one needs JAX's x64
  mode, which validate never switches on (it is process-wide): a ValueError names the fix;
  flax.linen.SimpleCell (bound) and flax.nnx.SimpleCell (tanh or relu; carry h) the same way
  (nnx's computes in its dtype, float32 unless built with dtype=jnp.float64);
  flax.linen.GRUCell (bound) and flax.nnx.GRUCell (carry h) the same way, against refnorm.GRU
  (reset="after"). nnx's GRUCell has no b_hn (its recurrent layer has no bias): the refnorm
  cell holds b_hn = 0 and db_hn, a gradient the module has no tensor for, is left out, named in
  the report's header with the reason (interop.flax_gru.NNX_NO_B_HN);
* any callable f(inputs) -> outputs, given `cell=` (a refnorm cell, e.g. from refnorm.presets,
  with the weights to use). Use it for a framework refnorm has no converter for: convert the
  params yourself inside f. inputs is a dict:
      x (T, B, D), h0, c0, mask (T, B) of 0/1, lengths (B,), dhs, dhT, dcT   NumPy float64
                 (no c0, dcT for a one-state cell: a vanilla RNN)
      params     {name: array}, refnorm layout (a copy of cell.params)
      stats      {name: array}, a copy of cell.stats: BN cells' population statistics, which
                 inference (training False) uses, step t reading slot min(t, slots - 1);
                 {} for cells without
      training   bool, the mode to run a BN cell in (validate's training=)
  f returns a dict with hs, hT, cT and grads {name: array} in refnorm layout: every param name
  of the cell and x, h0, c0 (dL/dx, ...; no "d" prefix); for a one-state cell hs, hT and grads
  of the params, x, h0. Any other key is a ValueError naming the accepted ones.

A PASS means every tensor was compared. Every tensor refnorm computes (hs, hT, cT, the
gradient of every parameter, dx, dh0, dc0) gets a row; one the target did not return is a
failing row "not returned", unless the caller leaves it out (outputs_only=True: the outputs
alone; skip=names or {name: reason}) or the target has no such tensor (the adapter's
`absent`: flax.nnx.GRUCell's db_hn), and the report's header names what was left out. The
verdict says which precision was proven: "PASS" only for a float64 target at the float64
tolerance; a float32 one (the least precise array the target returned decides) passes as "PASS
at float32 tolerance: not a float64 check", and require_float64=True makes that a FAIL.

The command `refnorm validate` runs the same with random weights (see `refnorm validate -h`);
--outputs-only, --skip, --float64 and --inference are the keywords above. With --preset the
callable's cell is refnorm.golden.random_cell's, the one `refnorm golden` writes: a param the
preset holds at zero stays zero and its gradient is skipped. A missing peer package is an
ImportError that names what to install (INSTALL). --json prints report.to_dict() (target,
framework and version, dtype, tolerance, verdict, ok, worst relative error, a row per tensor,
notes); ValidationReport.from_dict reads it back. `refnorm validate --all` runs every adapter
whose framework is installed and prints one matrix (refnorm.validation_matrix).
"""
import difflib

import numpy as np

from .gradcheck import final_states, relative_error

# Relative-error tolerance by the dtype the framework computed in. float64: rounding only,
# amplified through T steps (tests/helpers.py TOL["autodiff"]); float32: eps32 ≈ 1.2e-7
# amplified through T steps and the normalisations' 1/s; half precisions: eps ≈ 1e-3.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}

DEFAULT_T, DEFAULT_B = 6, 4

# What to install when a peer's package does not import (tests/test_interop.py skips with the
# same lines). haste's CPU wheel builds against the torch present, so torch comes first.
INSTALL = {
    "torch": "pip install torch==2.13.0 (the CPU build refnorm is tested with; an unpinned "
             "torch resolves to a multi-GB CUDA build)",
    "haste_pytorch": "after torch, with nvcc off the PATH: env PATH=<venv>/bin:/usr/bin:/bin "
                     "pip install --no-build-isolation haste-pytorch-cpu==0.5.5",
    "keras": "pip install keras (Keras 3) and its backend's package: tensorflow-cpu, torch or "
             "jax (KERAS_BACKEND picks one)",
    "tensorflow": "pip install tensorflow-cpu",
    "jax": "pip install jax",
    "flax": "pip install jax flax (CPU wheels; refnorm is tested with jax 0.10.2, flax 0.12.8)",
    "onnx": "pip install onnx",
    "onnxruntime": "pip install onnxruntime",
    "batchnormlstm": "pip install batchnorm-lstm==0.0.1",
}

# The Keras backends validate runs a Keras layer on: {backend: (its package, the autodiff that
# gives the gradients)}. Keras's numpy and openvino backends have no autodiff.
KERAS_BACKENDS = {"tensorflow": ("tensorflow", "tf.GradientTape"),
                  "torch": ("torch", "torch.autograd"),
                  "jax": ("jax", "jax.vjp")}

# Where Keras 3.15 computes a float64 LSTM in float32 (measured with Keras 3.15.1, and float64
# once the cast is patched out: tests/test_keras_backends.py): {backend: (when, why)}. Its
# result_type maps float64 to float32 on every backend but TensorFlow ("to be aligned with JAX's
# default", keras/src/backend/common/dtypes.py BIT64_TO_BIT32_DTYPE). TensorFlow is float64.
KERAS_FLOAT32 = {
    "torch": ("masked", "where a mask is used (its masked RNN loop's keras.ops.matmul casts to "
                        "Keras's result type; unmasked, a fused torch loop keeps float64)"),
    "jax": ("always", "masked or not (the cell's activation keras.ops.tanh casts its input to "
                      "Keras's result type: keras/src/backend/jax/numpy.py tanh)"),
}


# The same for a float64 keras.layers.SimpleRNN (measured with Keras 3.15.1,
# tests/test_interop_rnn.py). torch: its cell's keras.ops.matmul casts at every step (there is
# no fused loop as for the LSTM). JAX: keras.ops.tanh returns float32; with a mask the loop's
# jnp.where merges it into the float64 carry (keras/src/backend/jax/rnn.py), without one the
# layer does not run (KERAS_JAX_CARRY); relu is float64 throughout. TensorFlow is float64.
KERAS_FLOAT32_SIMPLE_RNN = {
    "torch": ("always", "masked or not (SimpleRNNCell.call's keras.ops.matmul casts to Keras's "
                        "result type at every step: keras/src/backend/torch/numpy.py matmul)"),
    "jax": ("masked", "with activation tanh where a mask is used (keras.ops.tanh returns "
                      "float32, keras/src/backend/jax/numpy.py tanh, which the masked loop's "
                      "jnp.where merges into the float64 carry; without a mask the layer does "
                      "not run at all)"),
}
# The same for a float64 keras.layers.GRU (measured with Keras 3.15.1,
# tests/test_interop_gru_peers.py): as the LSTM on torch (unmasked, a fused torch loop keeps
# float64), keras.ops.tanh / sigmoid cast on JAX. TensorFlow is float64.
KERAS_FLOAT32_GRU = {
    "torch": ("masked", "where a mask is used (its masked RNN loop's GRUCell.call's "
                        "keras.ops.matmul casts to Keras's result type; unmasked, a fused torch "
                        "loop keeps float64)"),
    "jax": ("always", "masked or not (the cell's activations keras.ops.tanh / sigmoid cast to "
                      "Keras's result type: keras/src/backend/jax/numpy.py)"),
}
# reset_after=False has no fused torch loop: its cell's keras.ops.matmul casts masked or not
KERAS_FLOAT32_GRU_BEFORE = {**KERAS_FLOAT32_GRU, "torch": (
    "always", "masked or not (GRUCell.call's keras.ops.matmul casts to Keras's result type at "
              "every step: keras/src/backend/torch/numpy.py matmul; reset_after=False has no "
              "fused torch loop)")}
KERAS_FLOAT32_BY = {"LSTM": KERAS_FLOAT32, "SimpleRNN": KERAS_FLOAT32_SIMPLE_RNN,
                    "GRU": KERAS_FLOAT32_GRU, "GRU reset before": KERAS_FLOAT32_GRU_BEFORE}

# Why a float64 tanh SimpleRNN without a mask cannot run on Keras's JAX backend (a ValueError)
KERAS_JAX_CARRY = (
    "Keras {keras} on JAX cannot run a float64 {layer} with activation tanh without a mask: "
    "keras.ops.tanh returns float32 for a float64 input (keras/src/backend/jax/numpy.py tanh "
    "casts to Keras's result type, BIT64_TO_BIT32_DTYPE), so the step's new state is float32 "
    "against a float64 carry and jax.lax.scan raises a TypeError. A float32 layer (--dtype "
    "float32), activation relu, or KERAS_BACKEND=tensorflow runs")


# Where a float64 keras.layers.BatchNormalization computes in float32 (measured with Keras
# 3.15.1, tests/test_keras_stack.py): its call casts its input to backend.result_type(dtype,
# "float32"), float32 wherever BIT64_TO_BIT32_DTYPE applies. TensorFlow is float64.
KERAS_FLOAT32_BATCH_NORM = {
    backend: ("always", "masked or not (BatchNormalization.call casts its input to "
                        "backend.result_type(dtype, 'float32'), float32 on this backend, and its "
                        "output back: keras/src/layers/normalization/batch_normalization.py)")
    for backend in ("torch", "jax")}
# What Keras's masked batch moments compute where refnorm's "seq_bn" divides by the n valid frames
KERAS_MASKED_MOMENTS = (
    "divides a BatchNormalization's masked mean and variance by n + keras.config.epsilon() "
    "({epsilon:g}, the fuzz factor) where refnorm divides by the n valid frames (BatchNormalization"
    "._moments): a relative {epsilon:g}/n on the statistics; keras.config.set_epsilon(0.0) "
    "removes it")


def _keras_version():
    import keras
    return keras.__version__


def keras_backend():
    """(backend, where it comes from): the backend of the keras already imported, else the one
    Keras will choose at import, read without importing it: KERAS_BACKEND when set, else
    "backend" in keras.json (in KERAS_HOME, else ~/.keras, or /tmp/.keras when ~ is not
    writable: keras/src/backend/config.py), else TensorFlow."""
    import json
    import os
    import sys

    if sys.modules.get("keras") is not None:
        return sys.modules["keras"].backend.backend(), "the keras already imported"
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    home = os.environ["KERAS_HOME"] if "KERAS_HOME" in os.environ else os.path.join(
        os.path.expanduser("~") if os.access(os.path.expanduser("~"), os.W_OK) else "/tmp",
        ".keras")
    path = os.path.join(home, "keras.json")
    try:
        with open(path) as f:
            return json.load(f).get("backend", "tensorflow"), path
    except (OSError, ValueError):
        return "tensorflow", "Keras's default (KERAS_BACKEND unset, no keras.json)"


def import_peer(module, target):
    """Import a peer's package for `target` (e.g. "haste.LSTM"), or raise an ImportError that
    names what to install. For keras, the backend it will run on (keras_backend()) must be one
    of KERAS_BACKENDS and its package must be installed, else the error names the package to
    install and the backends that are; on JAX, float64 needs jax_enable_x64, turned on here."""
    import importlib
    import importlib.util

    if module == "keras":
        backend, source = keras_backend()
        if backend not in KERAS_BACKENDS:
            raise ImportError(f"{target}: Keras's {backend} backend (from {source}) has no "
                              "autodiff to give the gradients: set KERAS_BACKEND to one of "
                              f"{', '.join(KERAS_BACKENDS)}")
        package = KERAS_BACKENDS[backend][0]
        if importlib.util.find_spec(package) is None:
            others = [b for b, (p, _) in KERAS_BACKENDS.items()
                      if b != backend and importlib.util.find_spec(p) is not None]
            instead = f", or set KERAS_BACKEND={' or '.join(others)}" if others else ""
            raise ImportError(f"{target} runs on Keras's {backend} backend (from {source}), "
                              f"but {package} is not installed: {INSTALL[package]}{instead}")
        if backend == "jax":
            import jax
            jax.config.update("jax_enable_x64", True)      # else float64 arrays are float32
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{target} needs {module}, which does not import ({err}): "
                          f"{INSTALL[module]}") from err


class ValidationReport:
    """rows: (tensor, shape, max abs error, relative error, tolerance, ok), one per tensor
    compared; notes: {tensor: why its row failed without a number, e.g. "not returned"};
    skipped: {tensor: why it was not compared}; float64: the check proved float64 agreement
    (float64 target, tolerance no looser than float64's); ok: every row ok, and float64 when
    require_float64; remarks: lines the adapter adds to explain a result, printed as "note:";
    framework: the peer and its version where the adapter knows them (None for a callable).
    to_dict() / from_dict(): the report as JSON values (`refnorm validate --json`) and back."""

    def __init__(self, target, cell, dtype, tol, rows, lengths, reference=None, *, notes=None,
                 skipped=None, require_float64=False, remarks=(), framework=None):
        self.target, self.cell, self.dtype, self.tol = target, cell, dtype, tol
        self.rows, self.lengths = rows, lengths
        self.reference = reference or repr(cell)
        self.notes, self.skipped = dict(notes or {}), dict(skipped or {})
        self.require_float64 = require_float64
        self.remarks = list(remarks)
        self.framework = framework

    @property
    def float64(self):
        return self.dtype == "float64" and self.tol <= TOLERANCE["float64"]

    @property
    def ok(self):
        return all(row[-1] for row in self.rows) and (self.float64 or not self.require_float64)

    @property
    def errors(self):
        return {row[0]: row[3] for row in self.rows}

    @property
    def worst(self):
        """The largest relative error of the rows (inf where a tensor was not returned)."""
        return max((row[3] for row in self.rows), default=0.0)

    def to_dict(self):
        """The report as JSON values: what `refnorm validate --json` prints. A row without a
        number (its tensor not returned, or of another shape) has errors None and its note."""
        number = lambda v: float(v) if np.isfinite(v) else None             # noqa: E731
        return {"target": self.target, "framework": self.framework,
                "reference": self.reference, "dtype": self.dtype, "tolerance": self.tol,
                "verdict": self.verdict(), "ok": self.ok, "float64": self.float64,
                "require_float64": self.require_float64,
                "worst_relative_error": number(self.worst),
                "lengths": [int(n) for n in self.lengths],
                "tensors": [{"tensor": name, "shape": [int(n) for n in shape],
                             "max_abs_error": number(abs_err), "relative_error": number(rel),
                             "tolerance": tol, "ok": ok, "note": self.notes.get(name)}
                            for name, shape, abs_err, rel, tol, ok in self.rows],
                "skipped": dict(self.skipped), "notes": list(self.remarks)}

    @classmethod
    def from_dict(cls, d):
        """The report that to_dict() described (cell None: the reference names it)."""
        value = lambda v: np.inf if v is None else v                      # noqa: E731
        rows = [(r["tensor"], tuple(r["shape"]), value(r["max_abs_error"]),
                 value(r["relative_error"]), r["tolerance"], r["ok"]) for r in d["tensors"]]
        notes = {r["tensor"]: r["note"] for r in d["tensors"] if r.get("note")}
        return cls(d["target"], None, d["dtype"], d["tolerance"], rows, d["lengths"],
                   d["reference"], notes=notes, skipped=d["skipped"],
                   require_float64=d["require_float64"], remarks=d["notes"],
                   framework=d.get("framework"))

    def verdict(self):
        """The last line: PASS, PASS at a looser precision (not a float64 check), or FAIL."""
        if self.dtype != "float64":
            short = f"the target computed in {self.dtype}"
            loose = f"PASS at {self.dtype} tolerance: not a float64 check"
        else:
            short = f"tolerance {self.tol:g} is looser than float64's {TOLERANCE['float64']:g}"
            loose = f"PASS at tolerance {self.tol:g}: not a float64 check"
        bad = [row[0] for row in self.rows if not row[-1]]
        missing = [n for n in bad if self.notes.get(n) == "not returned"]
        differ = [n for n in bad if n not in missing]
        fails = [f"{len(names)} tensors {what} ({', '.join(names)})"
                 for names, what in ((differ, "differ"), (missing, "not returned")) if names]
        if self.require_float64 and not self.float64:
            fails.append(f"float64 was required, but {short}")
        if fails:
            return "FAIL: " + "; ".join(fails)
        return "PASS" if self.float64 else loose

    def __str__(self):
        lines = [f"refnorm validate: {self.target} vs {self.reference} (float64 truth)",
                 f"framework dtype {self.dtype}, tolerance {self.tol:g} (relative), lengths "
                 f"{[int(n) for n in self.lengths]}, random inputs, states and upstream gradients"]
        for reason in dict.fromkeys(self.skipped.values()):
            names = [n for n, r in self.skipped.items() if r == reason]
            lines.append(f"not compared ({reason}): {', '.join(names)}")
        header = f"{'tensor':16} {'shape':>14} {'max abs err':>12} {'rel. error':>11}  verdict"
        lines += [header, "-" * len(header)]
        for name, shape, abs_err, rel_err, tol, ok in self.rows:
            if name in self.notes:
                lines.append(f"{name:16} {str(tuple(shape)):>14} {'-':>12} {'-':>11}  "
                             f"MISMATCH: {self.notes[name]}")
                continue
            lines.append(f"{name:16} {str(tuple(shape)):>14} {abs_err:12.2e} {rel_err:11.2e}  "
                         f"{'ok' if ok else 'MISMATCH'}")
        lines += [f"note: {remark}" for remark in self.remarks]
        lines.append(self.verdict())
        return "\n".join(lines)


def validate(target, *, cell=None, T=DEFAULT_T, B=DEFAULT_B, lengths=None, seed=0, tol=None,
             training=True, outputs_only=False, skip=(), require_float64=False):
    """Compare `target` with refnorm; returns a ValidationReport (print it for the table).

    lengths: (B,) sequence lengths, default a ragged draw with the first sequence full. tol:
    overrides the dtype's tolerance. cell: required for a callable target (a refnorm cell),
    ignored otherwise. training: the mode of BN cells behind a callable (inference reads
    inputs["stats"]). outputs_only: compare hs, hT, cT alone. skip: tensors not to compare,
    named as in the table (e.g. "dc0", "db"), or {name: reason}; the header lists them. Any
    other tensor the target does not return is a failing row. require_float64: a target that
    computed in a lower precision (or a tolerance looser than float64's) fails."""
    rng = np.random.default_rng(seed)
    if lengths is None:
        lengths = np.concatenate([[T], rng.integers(1, T + 1, B - 1)]) if B > 1 else [T]
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"lengths must be B={B} integers in 1..T={T}, got {lengths.tolist()}")
    adapter = _adapter(target, cell)
    D, H, stack, width = adapter.sizes()
    state = (B, H) if stack is None else (stack, B, H)
    mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float64)
    draw = rng.standard_normal
    data = {"x": draw((T, B, D)), "h0": 0.5 * draw(state), "c0": 0.5 * draw(state),
            "mask": mask, "lengths": lengths,
            "dhs": draw((T, B, width)) * mask[..., None], "dhT": draw(state),
            "dcT": draw(state)}
    if "c" not in adapter.cell.STATES:      # one state (the RNN family): no c0, dcT. Drawn all
        del data["c0"], data["dcT"]         # the same, so the other draws do not depend on it
    truth = adapter.truth(data, training)
    skipped = {**adapter.absent, **_left_out(truth, outputs_only, skip)}
    theirs = adapter.run({k: (v.copy() if isinstance(v, np.ndarray) else v)
                          for k, v in data.items()}, training)
    unknown = sorted(set(theirs) - set(truth))
    if unknown:
        raise ValueError(f"{adapter.name} returned {', '.join(unknown)}, which refnorm does not "
                         f"compute; it computes {', '.join(truth)}")
    if "hs" in theirs and np.shape(theirs["hs"]) == truth["hs"].shape:
        theirs["hs"] = np.asarray(theirs["hs"], dtype=np.float64) * mask[..., None]
    dtype = adapter.dtype
    tol = TOLERANCE.get(dtype, 1e-4) if tol is None else float(tol)
    rows, notes = [], {}
    for name, ours in truth.items():
        if name in skipped:
            continue
        if name not in theirs:
            notes[name] = "not returned"
        elif np.shape(theirs[name]) != ours.shape:
            notes[name] = f"shape {tuple(np.shape(theirs[name]))}"
        if name in notes:
            rows.append((name, ours.shape, np.inf, np.inf, tol, False))
            continue
        other = np.asarray(theirs[name], dtype=np.float64)
        abs_err = float(np.max(np.abs(ours - other))) if ours.size else 0.0
        rel = relative_error(ours, other) if ours.size else 0.0
        rows.append((name, ours.shape, abs_err, rel, tol, bool(rel <= tol)))
    return ValidationReport(adapter.name, adapter.cell, dtype, tol, rows, lengths,
                            getattr(adapter, "reference", None), notes=notes, skipped=skipped,
                            require_float64=require_float64,
                            remarks=adapter.remarks(data, rows), framework=adapter.framework)


def _left_out(truth, outputs_only, skip):
    """{tensor: reason} of the tensors the caller leaves out, each checked against `truth`."""
    left = {}
    if outputs_only:
        left.update({name: "outputs_only=True" for name in truth
                     if name not in ("hs", "hT", "cT")})
    reasons = skip if isinstance(skip, dict) else {name: "skip" for name in skip}
    for name, reason in reasons.items():
        if name not in truth:
            raise ValueError(_unknown_key(name, "skip", list(truth)))
        left.setdefault(name, reason)
    return left


def _unknown_key(key, where, accepted, hint=None):
    """The message for a key refnorm does not know: the closest accepted one and all of them."""
    close = hint or next(iter(difflib.get_close_matches(key, accepted, n=1)), None)
    maybe = f" (did you mean {close if hint else repr(close)}?)" if close else ""
    return (f"{where} names {key!r}, which refnorm does not know{maybe}; accepted: "
            f"{', '.join(accepted)}")


def _least_precise(dtypes):
    """The name of the least precise of the floating dtypes (float64 when there are none)."""
    rank = lambda dt: TOLERANCE.get(dt.name, {8: 1e-10, 4: 1e-4}.get(dt.itemsize, 2e-2))  # noqa
    return max(dtypes, key=rank).name if dtypes else "float64"


# -- adapters: a refnorm cell holding the target's weights, and how to run the target -----------
class _Adapter:
    """cell: the refnorm cell holding the target's weights; run(data, training): the target's
    outputs and gradients by name; sizes() and truth() describe and compute refnorm's side."""

    name = cell = dtype = framework = None
    absent = {}       # {tensor: why}: what refnorm computes and the target has no tensor for

    def sizes(self):
        """(input size D, hidden size H, number of stacked states or None for one cell, output
        width) of the data to draw."""
        return self.cell.input_size, self.cell.hidden_size, None, self.cell.hidden_size

    @property
    def states(self):
        """The recurrent states, ("h", "c") for the LSTM family, ("h",) for the RNN's."""
        return self.cell.STATES

    def truth(self, data, training):
        """refnorm's outputs and gradients (d + name) on `data`: the float64 truth."""
        out = self.cell.forward(data["x"], *(data[s + "0"] for s in self.states), data["mask"],
                                training=training, update_stats=False)
        grads = self.cell.backward(data["dhs"], out[-1], *(data[f"d{s}T"] for s in self.states))
        finals = dict(zip([s + "T" for s in self.states], final_states(self.cell, out)))
        return {"hs": out[0], **finals, **{"d" + k: v for k, v in grads.items()}}

    def run(self, data, training):
        raise NotImplementedError

    def remarks(self, data, rows):
        """Lines that explain a result this target is known for (the report's notes)."""
        return []


def _adapter(target, cell):
    kind = _framework_kind(target)
    if kind == "torch":
        import torch
        if isinstance(target, (torch.nn.LSTM, torch.nn.RNN, torch.nn.GRU)) and (
                target.num_layers > 1
                or target.bidirectional):
            return _TorchStackAdapter(target)
        return _TorchAdapter(target)
    if kind == "haste":
        return _HasteAdapter(target)
    if kind == "keras" or isinstance(target, (list, tuple)):
        from .interop.keras_stack import is_keras_stack
        if is_keras_stack(target):              # Bidirectional, Sequential, a list of layers
            return _KerasStackAdapter(target)
    if kind == "keras":
        return _KerasAdapter(target)
    if kind == "flax":
        return _FlaxAdapter(target)
    if callable(target):
        return _CallableAdapter(target, cell)
    raise ValueError(f"cannot validate a {type(target).__name__}: pass a torch.nn.LSTM, "
                     "torch.nn.LSTMCell, torch.nn.RNN, torch.nn.RNNCell, torch.nn.GRU, "
                     "torch.nn.GRUCell, haste LSTM / LayerNormLSTM / GRU / LayerNormGRU, keras.layers.LSTM or SimpleRNN, a Flax LSTMCell / "
                     "OptimizedLSTMCell / SimpleCell / GRUCell (linen bound, or nnx), or a "
                     "callable with cell=")


def _framework_kind(target):
    """The framework a target's class (or a base class: a user's subclass counts) comes from."""
    for cls in type(target).__mro__:
        module = cls.__module__ or ""
        for prefix, kind in (("haste_pytorch", "haste"), ("keras", "keras"),
                             ("torch.nn.modules.rnn", "torch"), ("flax.", "flax")):
            if module.startswith(prefix):
                return kind
    return None


def _torch_grads_as_module(module, grads, kept_block=False):
    """A copy of `module` whose parameters hold `grads` (same names). The converters are linear
    maps (transposes, gate permutations, a sum of two biases), so converting the gradients with
    them gives the gradients in refnorm's layout -- except the sum of two biases, whose gradient
    is each bias's gradient: the second bias of each pair (bias_hh, haste's recurrent_bias) is
    zeroed so the sum counts it once. kept_block: a GRU's, whose second bias keeps its last
    (candidate) block apart as b_hn: that block keeps its gradient, its r, z blocks are
    zeroed."""
    import copy

    import torch

    twin = copy.deepcopy(module)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            g = grads.get(name)
            second = name.startswith("bias_hh") or name == "recurrent_bias"
            if g is None:
                g = torch.zeros_like(param)
            elif second and kept_block:
                g = torch.cat([torch.zeros_like(g[:2 * g.shape[0] // 3]),
                               g[2 * g.shape[0] // 3:]])
            elif second:
                g = torch.zeros_like(param)
            param.copy_(g)
    return twin


class _ModuleAdapter(_Adapter):
    """A torch.nn.Module target (torch or haste): its forward under torch autograd, the loss of
    refnorm's (BPTT 1), and its parameter gradients through the converter that read its
    weights. Subclasses set `convert` (refnorm.interop.from_*) and define `forward`."""

    family = convert = None

    def __init__(self, module):
        if getattr(module, "batch_first", False):
            raise ValueError("build the module with batch_first=False for validation (the "
                             "weights do not depend on it)")
        import torch

        self.module = module
        self.cell = type(self).convert(module)
        self.dtype = str(next(module.parameters()).dtype).replace("torch.", "")
        self.name = f"{self.family}.{type(module).__name__}"
        self.framework = f"PyTorch {torch.__version__}"

    def forward(self, t, data):
        """hs (T, B, H) masked at padded steps and the final states of self.states (hT, and cT
        for the LSTM family) from tensors t = x and the initial states (h0, c0)."""
        raise NotImplementedError

    def run(self, data, training):
        import torch

        m = self.module
        p0 = next(m.parameters())
        inputs = ["x"] + [s + "0" for s in self.states]            # x, h0 (, c0)
        finals = [s + "T" for s in self.states]                     # hT (, cT)
        t = {k: torch.tensor(data[k], dtype=p0.dtype, device=p0.device, requires_grad=True)
             for k in inputs}
        t["mask"] = torch.tensor(data["mask"], dtype=p0.dtype, device=p0.device)
        up = {k: torch.tensor(data[k], dtype=p0.dtype, device=p0.device)
              for k in ["dhs"] + ["d" + k for k in finals]}
        was_training = m.training
        m.eval()                      # no dropout, DropConnect or zoneout while validating
        try:
            hs, *states = self.forward(t, data)
        finally:
            m.train(was_training)
        outs = dict(zip(["hs"] + finals, [hs, *states]))
        loss = sum((up["d" + k] * v).sum() for k, v in outs.items())
        names = [n for n, _ in m.named_parameters()]
        leaves = [t[k] for k in inputs] + [p for _, p in m.named_parameters()]
        grads = torch.autograd.grad(loss, leaves)
        numpy = lambda v: v.detach().double().cpu().numpy()  # noqa: E731
        out = {k: numpy(v) for k, v in outs.items()}
        out.update({"d" + k: numpy(g) for k, g in zip(inputs, grads)})
        params = dict(zip(names, grads[len(inputs):]))
        # the GRU's candidate recurrent bias (a Stack's are "l0.fwd.b_hn", ...)
        kept = any(name.split(".")[-1] == "b_hn" for name in self.cell.params)
        out.update(self.param_grads(_torch_grads_as_module(m, params, kept)))
        return out

    def param_grads(self, twin):
        """The parameter gradients in refnorm's layout, from a twin module holding them."""
        return {"d" + k: v for k, v in type(self).convert(twin).params.items()}


def _from_torch(module):
    from .interop import from_torch
    return from_torch(module)


def _from_haste(module):
    from .interop import from_haste
    return from_haste(module)


class _TorchAdapter(_ModuleAdapter):
    family, convert = "torch.nn", staticmethod(_from_torch)

    def forward(self, t, data):
        import torch

        m = self.module
        states = [t[s + "0"] for s in self.states]               # [h] or [h, c]
        if isinstance(m, (torch.nn.LSTMCell, torch.nn.RNNCell, torch.nn.GRUCell)):  # stepped
            outs = []
            for x_t, m_t in zip(t["x"].unbind(0), t["mask"].unbind(0)):
                new = m(x_t, tuple(states) if len(states) > 1 else states[0])
                new = list(new) if len(states) > 1 else [new]
                keep = m_t[:, None] > 0
                states = [torch.where(keep, n, s) for n, s in zip(new, states)]
                outs.append(m_t[:, None] * new[0])
            return (torch.stack(outs), *states)
        hs, *finals = self.packed(t["x"], [s[None] for s in states], data)
        return (hs, *(f[0] for f in finals))

    def packed(self, x, states, data):
        """The module on a PackedSequence of x with data's lengths and initial states
        [h0 (, c0)], each (layers * directions, B, H); returns the outputs padded back to
        (T, B, ·) with zeros, then h_n (, c_n)."""
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, torch.as_tensor(data["lengths"]), enforce_sorted=False)
        out, finals = self.module(packed, tuple(states) if len(states) > 1 else states[0])
        hs, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return (hs, *(finals if len(states) > 1 else (finals,)))


class _TorchStackAdapter(_TorchAdapter):
    """A torch.nn.LSTM, GRU or RNN with several layers or two directions, against the
    refnorm.Stack that refnorm.interop.from_torch reads out of it (between=None,
    derivations/stack.md): its forward and backward give hs, hT (and cT) (layers * directions,
    B, H) in torch's order, dx, dh0 (, dc0) and every parameter gradient. A gradient's row is
    named by the cell's parameter and torch's suffix: the stack's "l1.bwd.Wx" is dWx_l1_reverse."""

    def __init__(self, module):
        super().__init__(module)                      # self.cell: the refnorm.Stack
        net, dirs = self.cell, len(self.cell.directions)
        self.name = (f"torch.nn.{type(module).__name__}(num_layers={module.num_layers}, "
                     f"bidirectional={module.bidirectional})")
        self.reference = (f"{net.num_layers * dirs} refnorm.{net.cell_class.__name__} "
                          f"cells ({net.num_layers} layers x {dirs} directions)")

    def sizes(self):
        net = self.cell
        return (net.input_size, net.hidden_size, net.num_layers * len(net.directions),
                net.output_size)

    @staticmethod
    def torch_names(params):
        """{"dWx_l1_reverse": value, ...} from a Stack's {"l1.bwd.Wx": value, ...}, in order."""
        out = {}
        for key, value in params.items():
            layer, d, name = key.split(".")
            out[f"d{name}_{layer}" + ("_reverse" if d == "bwd" else "")] = value
        return out

    def truth(self, data, training):
        net, states = self.cell, self.states
        ys, finals, cache = net.forward(data["x"], *(data[s + "0"] for s in states),
                                        lengths=data["lengths"], training=False)  # as m.eval()
        grads = net.backward(data["dhs"], cache, *(data[f"d{s}T"] for s in states))
        return {"hs": ys, **{s + "T": v for s, v in zip(states, finals)}, "dx": grads["x"],
                **{f"d{s}0": grads[s + "0"] for s in states},
                **self.torch_names({k: grads[k] for k in net.params})}

    def forward(self, t, data):
        return self.packed(t["x"], [t[s + "0"] for s in self.states], data)

    def param_grads(self, twin):
        return self.torch_names(type(self).convert(twin).params)       # a Stack, as self.cell


class _HasteAdapter(_ModuleAdapter):
    family, convert = "haste_pytorch", staticmethod(_from_haste)

    def __init__(self, module):
        import haste_pytorch

        super().__init__(module)
        self.framework = f"haste {haste_pytorch.__version__} ({self.framework})"

    def forward(self, t, data):
        import torch

        states = tuple(t[s + "0"][None] for s in self.states)     # (h0, c0), or h0 (GRU)
        hs, finals = self.module(t["x"], states if len(states) > 1 else states[0],
                                 lengths=torch.as_tensor(data["lengths"]))
        finals = finals if len(states) > 1 else (finals,)
        return (hs * t["mask"][..., None],                 # haste leaves padded steps unmasked
                *(f[0] for f in finals))


def _keras_backend():
    """The backend of the keras imported; ValueError where it has no autodiff."""
    import keras

    backend = keras.backend.backend()
    if backend not in KERAS_BACKENDS:
        raise ValueError(f"Keras's {backend} backend has no autodiff to give the gradients: "
                         f"set KERAS_BACKEND to one of {', '.join(KERAS_BACKENDS)} before "
                         "importing keras")
    return backend


def _keras_kind(cell):
    """(kind, KERAS_FLOAT32_BY key) of the refnorm cell from_keras made of a Keras layer."""
    from .cells import GRU
    kind = ("LSTM" if "c" in cell.STATES else "GRU" if isinstance(cell, GRU) else "SimpleRNN")
    return kind, kind + (" reset before" if getattr(cell, "reset", None) == "before" else "")


def _keras_numpy(v):
    """A float64 NumPy copy of a tensor of any Keras backend."""
    return np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64)


def _keras_weight_grads(cell, by_name):
    """The gradients {kernel, recurrent_kernel(, bias)} of one Keras recurrent layer's weights
    in refnorm's layout, through from_keras as its weights (cell: the refnorm cell from_keras
    made of the layer)."""
    from .cells import GRU
    from .interop import from_keras

    order = ["kernel", "recurrent_kernel"] + (["bias"] if "bias" in by_name else [])
    grads = [by_name[n] for n in order]
    options = {}
    if isinstance(cell, GRU):
        options["reset_after"] = cell.reset == "after"
        if len(grads) == 3 and grads[2].ndim == 2:
            # bias (2, 3H): the converter sums the recurrent bias's z, r blocks into b, whose
            # gradient is each one's: zero them so the sum counts it once; its h block is
            # b_hn, kept (as _torch_grads_as_module's kept_block)
            H = grads[2].shape[1] // 3
            grads[2] = grads[2].copy()
            grads[2][1, :2 * H] = 0
    return from_keras(grads, **options).params


class _KerasAdapter(_Adapter):
    """A keras.layers.LSTM or SimpleRNN on the backend Keras was imported with
    (KERAS_BACKENDS): the layer called on that backend's tensors, batch-major, with the initial
    state and the mask; the gradients of (BPTT 1) by that backend's autodiff
    (_autodiff_<backend>: x, the initial states h0 (, c0), then the layer's trainable weights);
    the weights' gradients through from_keras, as the weights."""

    def __init__(self, layer):
        from .interop import from_keras

        self.backend = _keras_backend()
        if not layer.built:
            raise ValueError("build the Keras layer first (layer.build((None, T, D)))")
        config = layer.get_config()
        if not (config.get("return_sequences") and config.get("return_state")):
            raise ValueError(f"build the Keras {type(layer).__name__} with return_sequences=True "
                             "and return_state=True for validation")
        self.layer = layer
        self.cell = from_keras(layer)
        self.kind, self.float32_key = _keras_kind(self.cell)
        self.dtype = layer.dtype_policy.compute_dtype
        self.describe(f"keras.layers.{type(layer).__name__}")

    def describe(self, what):
        """name and framework of the target `what` on self.backend; a float64 target on JAX
        needs jax_enable_x64 (a ValueError says so)."""
        import importlib

        import keras

        package, autodiff = KERAS_BACKENDS[self.backend]
        if self.backend == "jax" and self.dtype == "float64":
            import jax
            if not jax.config.read("jax_enable_x64"):
                raise ValueError("a float64 Keras layer on JAX needs jax_enable_x64 (else its "
                                 "arrays are float32): jax.config.update('jax_enable_x64', "
                                 "True), or JAX_ENABLE_X64=1, before building the layer")
        version = importlib.import_module(package).__version__
        self.name = (f"{what} (Keras {keras.__version__}, {self.backend} {version} backend, "
                     f"gradients by {autodiff})")
        self.framework = f"Keras {keras.__version__} ({self.backend} {version})"

    @staticmethod
    def call(layer, t, mask):
        """(seq (B, T, H), hT (, cT)) from the layer (or its stateless twin) on t = x (B, T, D),
        h0 (, c0): Keras's LSTM state is [h, c], given and returned in that order; a
        SimpleRNN's is [h]."""
        states = [t[k] for k in ("h0", "c0") if k in t]
        return tuple(layer(t["x"], initial_state=states, mask=mask, training=False))

    def run(self, data, training):
        valid = data["mask"][..., None]                                    # (T, B, 1)
        args = {"x": data["x"].transpose(1, 0, 2)}
        args.update({s + "0": data[s + "0"] for s in self.states})          # h0 (, c0)
        up = ((data["dhs"] * valid).transpose(1, 0, 2), *(data[f"d{s}T"] for s in self.states))
        mask = data["mask"].T > 0 if data["mask"].min() == 0 else None    # (B, T), or unmasked
        outs, grads = self.differentiate(args, mask, up)
        numpy = _keras_numpy
        seq, *finals = (numpy(v) for v in outs)
        n = 1 + len(self.states)                                 # x, then the initial states
        out = {"hs": seq.transpose(1, 0, 2) * valid,
               **{s + "T": v for s, v in zip(self.states, finals)},
               "dx": numpy(grads[0]).transpose(1, 0, 2),
               **{f"d{s}0": numpy(g) for s, g in zip(self.states, grads[1:n])}}
        names = [w.path.rsplit("/", 1)[-1] for w in self.layer.trainable_weights]
        by_name = dict(zip(names, (numpy(g) for g in grads[n:])))
        out.update({"d" + k: v for k, v in _keras_weight_grads(self.cell, by_name).items()})
        return out

    def differentiate(self, args, mask, up):
        """_autodiff_<backend>(args, mask, up), with KERAS_JAX_CARRY's error where it applies."""
        try:
            return getattr(self, "_autodiff_" + self.backend)(args, mask, up)
        except TypeError as err:            # Keras 3.15, JAX, float64 tanh SimpleRNN
            if "carry input and carry output must have equal types" in str(err):
                raise ValueError(KERAS_JAX_CARRY.format(keras=_keras_version(),
                                                        layer=self.kind)) from err
            raise

    # Each _autodiff_<backend>(args, mask, up): the outputs (seq, hT (, cT)) and the gradients of
    # L = Σ up⊙outputs with respect to x, h0 (, c0) and layer.trainable_weights, in that order.
    def _autodiff_torch(self, args, mask, up):
        import torch

        dt = getattr(torch, self.dtype)
        t = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in args.items()}
        outs = self.call(self.layer, t, None if mask is None else torch.tensor(mask))
        loss = sum((torch.tensor(u, dtype=dt) * o).sum() for u, o in zip(up, outs))
        weights = [w.value for w in self.layer.trainable_weights]
        return outs, torch.autograd.grad(loss, list(t.values()) + weights)

    def _autodiff_tensorflow(self, args, mask, up):
        import tensorflow as tf

        t = {k: tf.constant(v, dtype=self.dtype) for k, v in args.items()}
        weights = [w.value for w in self.layer.trainable_weights]
        with tf.GradientTape() as tape:
            tape.watch(list(t.values()))
            outs = self.call(self.layer, t, None if mask is None else tf.constant(mask))
            loss = tf.add_n([tf.reduce_sum(tf.constant(u, dtype=self.dtype) * o)
                             for u, o in zip(up, outs)])
        return outs, tape.gradient(loss, list(t.values()) + weights)

    def _autodiff_jax(self, args, mask, up):
        import jax
        import jax.numpy as jnp

        layer = self.layer
        weights = [w.value for w in layer.trainable_variables]
        fixed = [w.value for w in layer.non_trainable_variables]
        m = None if mask is None else jnp.asarray(mask)

        names = list(args)                                      # x, h0 (, c0)

        def outputs(*a):
            *inputs, weights = a
            stateless = lambda *a, **k: layer.stateless_call(weights, fixed, *a, **k)[0]  # noqa
            return tuple(self.call(stateless, dict(zip(names, inputs)), m))

        primals = [jnp.asarray(args[k], dtype=self.dtype) for k in names]
        outs, vjp = jax.vjp(outputs, *primals, weights)
        *d_inputs, dweights = vjp(tuple(jnp.asarray(u, dtype=self.dtype) for u in up))
        return outs, [*d_inputs, *dweights]

    def remarks(self, data, rows):
        """Where Keras computes a float64 layer in float32 (KERAS_FLOAT32_BY), and the mismatch
        is of that size: say why, and how to check the layer at float32 level."""
        bad = [row[3] for row in rows if not row[-1]]
        known = KERAS_FLOAT32_BY[self.float32_key].get(self.backend)
        if (known is None or self.dtype != "float64" or not bad
                or max(bad) > TOLERANCE["float32"]
                or (known[0] == "masked" and data["mask"].min() > 0)):
            return []
        import keras
        return [f"Keras {keras.__version__} on {self.backend} computes a float64 {self.kind} in "
                f"float32 {known[1]}; its result type maps float64 to float32 on all backends "
                "but TensorFlow (keras/src/backend/common/dtypes.py BIT64_TO_BIT32_DTYPE). The "
                f"worst relative error {max(bad):.1e} is that rounding, not a wrong cell; "
                "--tol 1e-4 (tol=1e-4) checks the layer at float32 level"]


class _KerasStackAdapter(_KerasAdapter):
    """A Keras stack (interop.keras_stack: a Bidirectional, or recurrent layers with a
    BatchNormalization between each two, as a keras.Sequential or a list) against the
    refnorm.Stack that from_keras_stack makes of it. Keras runs it one layer at a time
    (keras_stack.call_keras_stack), batch-major, with the initial states of every layer and
    direction, the mask and training; every layer returns its final states for the call
    (keras_stack.returning_states). The gradients of (BPTT 1) with respect to x, h0 (, c0) and
    every trainable weight (each direction's kernel, recurrent_kernel, bias; each norm's gamma,
    beta) come from the backend's autodiff (_autodiff_<backend>), the recurrent ones through
    from_keras as the weights. In training the norms' moving statistics after the step are
    compared too (rows l{l}.norm.mean, .var), and the layers' statistics are restored after
    the run: validation leaves the model as it was."""

    def __init__(self, target):
        from .interop import keras_stack

        self.backend = _keras_backend()
        self.units, self.norms = keras_stack.stack_layers(target)
        recurrent = [(f"l{l}.{d}", layer) for l, unit in enumerate(self.units)
                     for d, layer in keras_stack.directions(unit)]
        every = self.units + [layer for _, layer in recurrent] + self.norms
        if not all(layer.built for layer in every):
            raise ValueError("build the Keras stack first (model.build((None, T, D)), or call "
                             "it once)")
        if not recurrent[-1][1].return_sequences:
            raise ValueError("build the last recurrent layer with return_sequences=True for "
                             "validation (every step's output is compared)")
        self.cell = self.net = keras_stack.from_keras_stack(target)
        self.kind, self.float32_key = _keras_kind(self.net.cells[0][0])
        self.dtype = _least_precise([np.dtype(layer.dtype_policy.compute_dtype)
                                     for layer in every])
        self.weights, self.owners = [], []          # every trainable weight, its refnorm name
        for prefix, layer in recurrent + [(f"l{l}.norm", bn) for l, bn in enumerate(self.norms)]:
            for w in layer.trainable_weights:
                self.weights.append(w)
                self.owners.append((prefix, w.path.rsplit("/", 1)[-1]))
        names = [type(u).__name__ + (f"({type(u.forward_layer).__name__})"
                                     if hasattr(u, "forward_layer") else "")
                 for u in self.units]
        joint = ", BatchNormalization, " if self.norms else ", "
        shown = (f"keras.layers.{names[0]}" if keras_stack.keras_class(target) == "Bidirectional"
                 else "Keras [" + joint.join(names) + "]")
        self.describe(shown)
        self.reference = repr(self.net)

    def sizes(self):
        net = self.net
        return (net.input_size, net.hidden_size, net.num_layers * len(net.directions),
                net.output_size)

    def truth(self, data, training):
        """refnorm.Stack's outputs, final states and gradients; in training also the norms'
        population statistics after the step (on a copy: the stack keeps its own)."""
        import copy

        net, states = self.net, self.net.STATES
        inputs = dict(mask=data["mask"], training=training,
                      **{s + "0": data[s + "0"] for s in states})
        ys, finals, cache = net.forward(data["x"], update_stats=False, **inputs)
        grads = net.backward(data["dhs"], cache, **{f"d{s}T": data[f"d{s}T"] for s in states})
        out = {"hs": ys, **{s + "T": f for s, f in zip(states, finals)},
               **{"d" + k: grads[k] for k in [*net.params, "x", *(s + "0" for s in states)]}}
        if training and self.norms:
            twin = copy.deepcopy(net)
            twin.forward(data["x"], update_stats=True, **inputs)
            out.update({k: v for k, v in twin.stats.items() if ".norm." in k})
        return out

    def run(self, data, training):
        import keras

        from .interop.keras_stack import returning_states

        states, rows = self.states, self.sizes()[2]
        valid = data["mask"][..., None]                                    # (T, B, 1)
        args = {"x": data["x"].transpose(1, 0, 2), **{s + "0": data[s + "0"] for s in states}}
        up = [(data["dhs"] * valid).transpose(1, 0, 2),
              *(data[f"d{s}T"][r] for s in states for r in range(rows))]
        mask = data["mask"].T > 0 if data["mask"].min() == 0 else None    # (B, T), or unmasked
        statistics = [v for bn in self.norms for v in bn.non_trainable_variables]
        saved = [keras.ops.convert_to_numpy(v.value) for v in statistics]
        self.training, self.moved = training, {}
        try:
            with returning_states(self.units):
                outs, grads = self.differentiate(args, mask, up)
        finally:
            for v, value in zip(statistics, saved):       # a training call moved them
                v.assign(value)
        seq, *finals = (_keras_numpy(v) for v in outs)
        out = {"hs": seq.transpose(1, 0, 2) * valid,
               **{s + "T": np.stack(finals[k * rows:(k + 1) * rows])
                  for k, s in enumerate(states)},
               "dx": _keras_numpy(grads[0]).transpose(1, 0, 2),
               **{f"d{s}0": _keras_numpy(g) for s, g in zip(states, grads[1:])}}
        by_owner = {}
        for (prefix, leaf), g in zip(self.owners, grads[1 + len(states):]):
            by_owner.setdefault(prefix, {})[leaf] = _keras_numpy(g)
        for prefix, by_name in by_owner.items():
            if prefix.endswith(".norm"):                     # gamma, beta: refnorm's names
                out.update({f"d{prefix}.{leaf}": g for leaf, g in by_name.items()})
                continue
            l, d = prefix[1:].split(".")
            cell = self.net.cells[int(l)][self.net.directions.index(d)]
            out.update({f"d{prefix}.{k}": v
                        for k, v in _keras_weight_grads(cell, by_name).items()})
        if training:
            for l in range(len(self.norms)):
                out[f"l{l}.norm.mean"] = _keras_numpy(self.moved[l]["moving_mean"])
                out[f"l{l}.norm.var"] = _keras_numpy(self.moved[l]["moving_variance"])
        return out

    def forward(self, t, mask, call=None):
        """[seq, the final h of every row (, then every c)] from tensors t = x, h0 (, c0)."""
        from .interop.keras_stack import call_keras_stack

        seq, finals = call_keras_stack(self.units, self.norms, t["x"],
                                       [t[s + "0"] for s in self.states], mask, self.training,
                                       call)
        return [seq] + [f for per_state in finals for f in per_state]

    def read_moved(self):
        """self.moved: copies of the norms' moving statistics after a (stateful) call."""
        import keras

        for l, bn in enumerate(self.norms):
            self.moved[l] = {v.path.rsplit("/", 1)[-1]: keras.ops.convert_to_numpy(v.value)
                             for v in bn.non_trainable_variables}

    # _autodiff_<backend>(args, mask, up): the outputs (forward's) and the gradients of
    # L = Σ up⊙outputs with respect to x, h0 (, c0) and self.weights, in that order.
    def _autodiff_torch(self, args, mask, up):
        import torch

        dt = getattr(torch, self.dtype)
        t = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in args.items()}
        outs = self.forward(t, None if mask is None else torch.tensor(mask))
        self.read_moved()
        loss = sum((torch.tensor(u, dtype=dt) * o).sum() for u, o in zip(up, outs))
        return outs, torch.autograd.grad(loss, list(t.values())
                                         + [w.value for w in self.weights])

    def _autodiff_tensorflow(self, args, mask, up):
        import tensorflow as tf

        t = {k: tf.constant(v, dtype=self.dtype) for k, v in args.items()}
        with tf.GradientTape() as tape:
            tape.watch(list(t.values()))
            outs = self.forward(t, None if mask is None else tf.constant(mask))
            loss = tf.add_n([tf.reduce_sum(tf.constant(u, dtype=self.dtype) * o)
                             for u, o in zip(up, outs)])
        self.read_moved()
        return outs, tape.gradient(loss, list(t.values()) + [w.value for w in self.weights])

    def _autodiff_jax(self, args, mask, up):
        import jax
        import jax.numpy as jnp

        index = {id(w): k for k, w in enumerate(self.weights)}
        m = None if mask is None else jnp.asarray(mask)
        names, norms = list(args), self.norms

        def outputs(*a):
            *inputs, weights = a
            moved = {}

            def call(layer, u, **kwargs):
                trainable = [weights[index[id(v)]] for v in layer.trainable_variables]
                fixed = [v.value for v in layer.non_trainable_variables]
                out, fixed = layer.stateless_call(trainable, fixed, u, **kwargs)
                for l, bn in enumerate(norms):
                    if layer is bn:
                        moved[l] = {v.path.rsplit("/", 1)[-1]: new for v, new
                                    in zip(layer.non_trainable_variables, fixed)}
                return out
            return tuple(self.forward(dict(zip(names, inputs)), m, call)), moved

        primals = [jnp.asarray(args[k], dtype=self.dtype) for k in names]
        outs, vjp, self.moved = jax.vjp(outputs, *primals, [w.value for w in self.weights],
                                        has_aux=True)
        *d_inputs, d_weights = vjp(tuple(jnp.asarray(u, dtype=self.dtype) for u in up))
        return outs, [*d_inputs, *d_weights]

    def remarks(self, data, rows):
        """Where Keras computes part of a float64 stack in float32 (its recurrent layers,
        KERAS_FLOAT32_BY; its BatchNormalization, KERAS_FLOAT32_BATCH_NORM) or divides masked
        moments by n + keras.config.epsilon() (KERAS_MASKED_MOMENTS), and the mismatch is of
        that size: say which of these apply."""
        import keras

        bad = [row[3] for row in rows if not row[-1]]
        if not bad or max(bad) > TOLERANCE["float32"]:
            return []
        masked = data["mask"].min() == 0
        causes = []
        if self.dtype == "float64":
            for what, known in ((self.kind, KERAS_FLOAT32_BY[self.float32_key]),
                                ("BatchNormalization", KERAS_FLOAT32_BATCH_NORM if self.norms
                                 else {})):
                when = known.get(self.backend)
                if when and (when[0] == "always" or masked):
                    causes.append(f"computes its float64 {what} in float32 {when[1]}")
        fuzz = keras.config.epsilon()
        if self.norms and masked and self.training and fuzz > 0:
            causes.append(KERAS_MASKED_MOMENTS.format(epsilon=fuzz))
        if not causes:
            return []
        return [f"Keras {keras.__version__} on {self.backend} " + "; and ".join(causes)
                + f". The worst relative error {max(bad):.1e} is that, not a wrong stack; "
                "--tol 1e-4 (tol=1e-4) checks the stack at float32 level"]


class _FlaxAdapter(_Adapter):
    """A Flax LSTM cell, SimpleCell or GRUCell (linen bound to its params, or nnx) over the
    sequence by Flax's own RNN with seq_lengths, batch-major; the outputs, the last valid carry
    and every gradient (params, x, the initial carry) by jax.vjp of (BPTT 1). An LSTM cell's
    carry is (c, h): flax_lstm.to_carry / from_carry translate, in one place; a SimpleCell's and
    a GRUCell's is h. nnx's GRUCell has no b_hn: db_hn is absent (flax_gru.absent_grads)."""

    def __init__(self, module):
        from .interop import flax_gru, flax_lstm, flax_rnn

        self.api = flax_lstm.module_api(module)
        if self.api is None:
            raise ValueError(f"validate needs the Flax cell itself (a bound linen LSTMCell, "
                             f"SimpleCell or GRUCell, or an nnx one), not its params "
                             f"({type(module).__name__})")
        self.cell = flax_lstm.from_flax(module)      # refuses other activations, unbound linen
        params = (flax_rnn.cell_params if flax_rnn.is_simple_cell(module)
                  else flax_gru.cell_params if flax_gru.is_gru(module)
                  else flax_lstm.module_params)(module, self.api)
        self.absent = flax_gru.absent_grads(module)
        leaves = [np.asarray(v).dtype for sub in params.values() for v in sub.values()]
        self.dtype = np.dtype(module.dtype or np.result_type(*leaves)).name   # what it runs in
        flax_lstm.require_x64(self.dtype, f"the {type(module).__name__}'s compute dtype")
        import flax
        import jax

        self.module = module
        self.name = f"flax.{self.api}.{type(module).__name__}"
        self.framework = f"Flax {flax.__version__} (JAX {jax.__version__})"

    def sequence(self, lengths):
        """(f, params): f(params, x (B, T, D), carry) = (last valid carry, ys (B, T, H)) by
        Flax's RNN with seq_lengths=lengths; params the module's, as a pytree."""
        if self.api == "linen":
            import flax.linen as nn

            cell, variables = self.module.unbind()
            rnn = nn.RNN(cell, return_carry=True)
            return (lambda p, x, carry: rnn.apply({"params": {"cell": p}}, x,  # noqa: E731
                                                  initial_carry=carry, seq_lengths=lengths),
                    variables["params"])
        from flax import nnx

        graph, params, rest = nnx.split(self.module, nnx.Param, ...)

        def f(p, x, carry):                   # a new module from the state: the user's is kept
            rnn = nnx.RNN(nnx.merge(graph, p, rest), return_carry=True, rngs=False)
            return rnn(x, initial_carry=carry, seq_lengths=lengths)
        return f, params

    def run(self, data, training):
        import jax
        import jax.numpy as jnp

        from .interop.flax_lstm import from_carry, to_carry

        lstm = "c" in self.states                   # else a SimpleCell or GRUCell: carry h
        carry_of = (lambda h, c: to_carry(h, c)) if lstm else (lambda h: h)       # noqa: E731
        states_of = from_carry if lstm else (lambda carry: (carry,))              # noqa: E731
        dt = jnp.dtype(self.dtype)
        jx = lambda k: jnp.asarray(data[k], dtype=dt)                              # noqa: E731
        batch_major = lambda k: jnp.asarray(np.swapaxes(data[k], 0, 1), dtype=dt)  # noqa: E731
        f, params = self.sequence(jnp.asarray(data["lengths"]))
        carry0 = carry_of(*(jx(s + "0") for s in self.states))
        (carry, ys), pullback = jax.vjp(f, params, batch_major("x"), carry0)
        d_params, dx, d_carry = pullback((carry_of(*(jx(f"d{s}T") for s in self.states)),
                                          batch_major("dhs")))
        out = {"hs": np.swapaxes(np.asarray(ys), 0, 1),
               **{s + "T": np.asarray(v) for s, v in zip(self.states, states_of(carry))},
               "dx": np.swapaxes(np.asarray(dx), 0, 1),
               **{f"d{s}0": np.asarray(v) for s, v in zip(self.states, states_of(d_carry))}}
        self.dtype = _least_precise([a.dtype for a in out.values()])
        out.update(self.param_grads(d_params))
        return out

    def param_grads(self, d_params):
        """The parameter gradients in refnorm's layout. from_flax only concatenates the per-gate
        blocks (copies a SimpleCell's), a linear map, so it carries gradients as it carries
        weights. A parameter the module has not (nnx GRUCell's b_hn, which from_flax fills with
        zeros) has no gradient here."""
        from .interop.flax_lstm import from_flax
        return {"d" + k: v for k, v in from_flax(d_params).params.items()
                if "d" + k not in self.absent}


class _CallableAdapter(_Adapter):
    def __init__(self, fn, cell):
        if not hasattr(cell, "params") or not hasattr(cell, "backward"):
            raise ValueError("a callable target needs cell=: the refnorm cell whose function it "
                             "should compute, e.g. refnorm.presets.tfa_layer_norm_lstm(D, H, "
                             f"seed=0); got {cell!r}")
        self.fn, self.cell = fn, cell
        self.dtype = "float64"
        self.name = getattr(fn, "__qualname__", type(fn).__name__)
        self.OUTPUTS = ("hs",) + tuple(s + "T" for s in cell.STATES)      # hs, hT (, cT)

    def run(self, data, training):
        cell = self.cell
        inputs = dict(data, params={k: v.copy() for k, v in cell.params.items()},
                      stats={k: v.copy() for k, v in getattr(cell, "stats", {}).items()},
                      training=training)
        result = self.fn(inputs)
        if not isinstance(result, dict):
            raise ValueError(f"the callable must return a dict with {', '.join(self.OUTPUTS)} "
                             f"and grads {{name: array}}, got a {type(result).__name__}")
        names = list(cell.params) + ["x"] + [s + "0" for s in cell.STATES]
        for key in result:
            if key not in self.OUTPUTS + ("grads",):
                hint = (f"grads[{key[1:]!r}]" if isinstance(key, str) and key[1:] in names
                        else None)
                raise ValueError(_unknown_key(key, "the callable's result",
                                              list(self.OUTPUTS) + ["grads"], hint))
        grads = dict(result.get("grads") or {})
        for key in grads:
            if key not in names:
                hint = repr(key[1:]) if isinstance(key, str) and key[1:] in names else None
                raise ValueError(_unknown_key(key, "the callable's grads", names, hint))
        out = {k: np.asarray(result[k]) for k in self.OUTPUTS if k in result}
        out.update({"d" + k: np.asarray(v) for k, v in grads.items()})
        self.dtype = _least_precise([a.dtype for a in out.values()
                                     if a.dtype.kind == "f" or a.dtype.name in TOLERANCE])
        return out
