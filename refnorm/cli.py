"""The `refnorm` command (also `python -m refnorm`).

    refnorm check    every cell and variant, every backend present, training and inference,
                     with a ragged mask: backward vs central differences in float64, one row
                     per tensor.
    refnorm study    does batch norm reduce an LSTM's reliance on good initialisation? Trains
                     the four cells over an init sweep on the adding problem and the digits,
                     measures gradient flow and tests the common claims about BN in RNNs;
                     writes a report folder (Markdown, JSON, CSV, PNG). --quick: seconds.
    refnorm validate run another framework's LSTM, RNN or GRU (torch, haste, Keras, Flax, your
                     own module) and refnorm on the same random data; one row per output and
                     gradient, exit status 1 on a mismatch. --all: every installed
                     framework, one matrix; --json: the report as JSON.
    refnorm golden   write float64 test vectors (.npz + manifest.json) of every cell and preset,
                     for testing a framework in any language against refnorm.
"""
import argparse
import os
import sys
import time

import numpy as np

from . import CELLS, FAMILIES, available_backends
from .config import GRADCHECK_STEP, GRADCHECK_TOL
from .gradcheck import gradcheck, randomize

# Lengths (5, 4, 3, 1) in a batch of 4 over T = 5: steps with four, three, two, then one valid
# row, so the masked carry, the BN statistics of a partly padded step and a step with one row
# are all used. (Three rows at most would not do for the RNN family: the batch norm of a step
# with two rows is ±γ whatever its input, so dWh would come from the first step alone and be
# small against the finite differences' round-off, 1.4e-6 relative in BNRNN.)
CHECK_T, CHECK_LENGTHS = 5, np.array([5, 4, 3, 1])
CHECK_D, CHECK_H = 3, 3


def check_cases(backends):
    """(backend, label, mode, cell, forward kwargs) for every case `refnorm check` runs."""
    for backend in backends:
        for stem, cls in CELLS.items():
            variants = [({}, stem)]
            if stem == "lstm":
                variants.append(({"forget_bias": 1.0}, "lstm forget_bias"))
            if stem == "ln_lstm":
                variants += [({"per_gate": True}, "ln_lstm per_gate"),
                             ({"carry": "normalized", "term_beta": True}, "ln_lstm norm-carry"),
                             ({"terms": "summed", "per_gate": True, "carry": "normalized",
                               "forget_bias": 1.0}, "ln_lstm summed")]
            if stem == "bn_lstm":
                # 3 population slots for 5 steps from t0 = 1: steps 2.. all use slot 2
                variants = [({"max_steps": 3}, stem),
                            ({"max_steps": 3, "carry": "normalized", "term_beta": True,
                              "forget_bias": 0.5}, "bn_lstm norm-carry")]
            if stem == "rnn":
                variants.append(({"nonlinearity": "relu"}, "rnn relu"))
            if stem == "bn_rnn":
                variants = [({"max_steps": 3}, stem),
                            ({"max_steps": 3, "terms": "summed", "nonlinearity": "relu"},
                             "bn_rnn summed relu")]
            if stem == "ln_rnn":
                variants.append(({"terms": "separate"}, "ln_rnn separate"))
            if stem == "gru":
                variants.append(({"reset": "before"}, "gru reset-before"))
            if stem == "bn_gru":
                variants = [({"max_steps": 3}, stem)]
            for options, label in variants:
                for training in (True, False):
                    cell = randomize(cls(CHECK_D, CHECK_H, seed=0, backend=backend, **options),
                                     seed=1)
                    kwargs = {"lengths": CHECK_LENGTHS, "training": training, "T": CHECK_T,
                              "B": len(CHECK_LENGTHS), "seed": 2}
                    if stem in ("bn_lstm", "bn_rnn", "bn_gru") and not training:
                        kwargs["t0"] = 1
                    yield backend, label, "training" if training else "inference", cell, kwargs


def check(backends=None, tol=GRADCHECK_TOL, out=None):
    """Run every case, print the table, return True when every error is <= tol."""
    out = out or sys.stdout
    backends = backends or available_backends()
    print(f"refnorm check: backward vs central differences (float64, step {GRADCHECK_STEP:g}), "
          f"random parameters, inputs and upstream gradients, lengths {CHECK_LENGTHS.tolist()}, "
          f"T={CHECK_T}, D={CHECK_D}, H={CHECK_H}", file=out)
    header = f"{'backend':8} {'cell':18} {'mode':9} {'tensor':8} {'rel. error':>10}  verdict"
    print(header, file=out)
    print("-" * len(header), file=out)
    worst, failures, start = 0.0, 0, time.perf_counter()
    for backend, label, mode, cell, kwargs in check_cases(backends):
        for name, err in gradcheck(cell, **kwargs).items():
            ok = err <= tol
            worst, failures = max(worst, err), failures + (not ok)
            print(f"{backend:8} {label:18} {mode:9} {name:8} {err:10.1e}  "
                  f"{'ok' if ok else 'FAIL'}", file=out)
    verdict = "PASS" if failures == 0 else f"FAIL ({failures} tensors)"
    print(f"worst relative error {worst:.1e} (tolerance {tol:g}), "
          f"{time.perf_counter() - start:.1f} s: {verdict}", file=out)
    return failures == 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="refnorm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="finite-difference check of every cell and backend")
    p_check.add_argument("--backend", action="append", choices=sorted(available_backends()),
                         help="check only this backend (repeatable); default: all present")
    p_check.add_argument("--tol", type=float, default=GRADCHECK_TOL,
                         help=f"pass threshold on the relative error (default {GRADCHECK_TOL:g})")
    add_study_parser(sub)
    add_validate_parser(sub)
    p_golden = sub.add_parser("golden", help="write float64 test vectors of every cell and "
                                             "preset (.npz + manifest.json)", description=(
        "Write float64 test vectors of every cell and preset, for testing a framework in any "
        "language against refnorm: per case an .npz with the parameters, inputs, lengths, "
        "upstream gradients, outputs and every gradient, in training and inference, and a "
        "manifest.json that names each array and the cell options that made it."))
    p_golden.add_argument("--out", default="refnorm-golden", help="folder (default %(default)s)")
    p_golden.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return 0 if check(args.backend, args.tol) else 1
    if args.command == "study":
        return study(args)
    if args.command == "validate":
        return validate_command(args)
    if args.command == "golden":
        from .golden import write
        manifest = write(args.out, seed=args.seed)
        print(f"refnorm golden: {len(manifest['cases'])} cases in "
              f"{os.path.join(os.path.normpath(args.out), '')} "
              f"(manifest.json describes every array)")
        return 0
    return 2


BUILTIN_TARGETS = ("torch.nn.LSTM", "torch.nn.LSTMCell", "haste.LSTM", "haste.LayerNormLSTM",
                   "keras.LSTM", "flax.linen.LSTMCell", "flax.linen.OptimizedLSTMCell",
                   "flax.nnx.LSTMCell", "flax.nnx.OptimizedLSTMCell",
                   "torch.nn.RNN", "torch.nn.RNNCell", "keras.SimpleRNN",
                   "flax.linen.SimpleCell", "flax.nnx.SimpleCell",
                   "flax.linen.GRUCell", "flax.nnx.GRUCell",
                   "torch.nn.GRU", "torch.nn.GRUCell", "haste.GRU", "haste.LayerNormGRU",
                   "keras.GRU")
# the built-in targets of the GRU family (refnorm.GRU, LNGRU) and the cell each compares with
GRU_TARGETS = {"torch.nn.GRU": "torch_gru", "torch.nn.GRUCell": "torch_gru",
               "haste.GRU": "haste_gru", "haste.LayerNormGRU": "haste_layer_norm_gru",
               "keras.GRU": "torch_gru",     # the same GRU (reset "after", or "before")
               "flax.linen.GRUCell": "torch_gru", "flax.nnx.GRUCell": "torch_gru"}
# the targets that take --reset-after (refnorm.GRU reset="after" / "before")
RESET_TARGETS = ("keras.GRU",)
# the built-in targets that are vanilla RNNs (refnorm.RNN; --nonlinearity)
RNN_TARGETS = ("torch.nn.RNN", "torch.nn.RNNCell", "keras.SimpleRNN", "flax.linen.SimpleCell",
               "flax.nnx.SimpleCell")


def add_validate_parser(sub):
    p = sub.add_parser("validate", help="compare another framework's LSTM, RNN or GRU with refnorm, "
                                        "tensor by tensor", description=(
        "Copy the target's weights into the matching refnorm cell, run both on the same random "
        "inputs, lengths and upstream gradients, and print the relative error of every output "
        "and gradient against a tolerance set by the target's dtype. TARGET is one of "
        + ", ".join(BUILTIN_TARGETS) + " (built here with random non-zero weights), or "
        "MODULE:ATTR naming a module instance or a factory called as ATTR(input_size, "
        "hidden_size); with --preset, MODULE:ATTR is a callable f(inputs) -> outputs (see "
        "refnorm.validate). Exit status 1 on a mismatch. --all runs every adapter whose "
        "framework is installed and prints one matrix (refnorm.validation_matrix)."))
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--all", action="store_true",
                   help="every built-in adapter and preset whose framework is installed, in "
                        "training and inference: one matrix (framework and version x cell -> "
                        "worst relative error, verdict); a missing framework is a row with its "
                        "install line (an error under CI=true). Takes --seed and --json only")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON (target, framework and version, dtype, "
                        "tolerance, verdict, ok, worst relative error, per-tensor rows, notes)")
    p.add_argument("--input-size", type=int, default=3)
    p.add_argument("--hidden-size", type=int, default=4)
    p.add_argument("--layers", type=int, default=1,
                   help="torch.nn.LSTM, torch.nn.RNN, torch.nn.GRU: num_layers (default 1)")
    p.add_argument("--bidirectional", action="store_true",
                   help="torch.nn.LSTM, torch.nn.RNN, torch.nn.GRU: two directions")
    p.add_argument("--nonlinearity", choices=("tanh", "relu"),
                   help="the RNN targets (" + ", ".join(RNN_TARGETS) + ") and a --preset of the "
                        "RNN family: tanh (default) or relu")
    p.add_argument("--reset-after", choices=("true", "false"),
                   help=", ".join(RESET_TARGETS) + ": reset_after (default true: refnorm.GRU "
                        "reset=\"after\"; false: reset=\"before\")")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="the target's dtype for the built-in targets (default %(default)s)")
    p.add_argument("--T", type=int, default=6, dest="T", help="time steps (default 6)")
    p.add_argument("--B", type=int, default=4, dest="B", help="batch size (default 4)")
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default: random, "
                                                          "the first full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, help="relative tolerance (default: by dtype, "
                                             "1e-10 for float64, 1e-4 for float32)")
    p.add_argument("--preset", help="for a callable TARGET: the refnorm.presets cell it should "
                                    "compute (its weights are drawn at random)")
    p.add_argument("--randomize", action="store_true",
                   help="overwrite a MODULE:ATTR module's weights with random non-zero ones")
    p.add_argument("--float64", action="store_true",
                   help="fail unless the target computed in float64 at float64's tolerance "
                        "(without it a float32 target can pass, at float32 tolerance)")
    p.add_argument("--outputs-only", action="store_true",
                   help="compare hs, hT, cT alone (a target that returns no gradients); "
                        "otherwise every tensor not returned is a failing row")
    p.add_argument("--skip", nargs="+", default=[], metavar="TENSOR",
                   help="tensors not to compare, named as in the table (e.g. dc0 db)")
    p.add_argument("--inference", action="store_true",
                   help="run BN cells in inference (population statistics: a callable gets "
                        "them as inputs['stats'])")
    return p


RNN_CELLS = tuple(CELLS[stem] for stem in FAMILIES["rnn"])


def _random_cell(cls_or_preset, args, **options):
    """The cell `refnorm golden` would draw (a preset's held-at-zero params stay zero)."""
    from .golden import random_cell
    return random_cell(cls_or_preset, args.input_size, args.hidden_size, args.seed, **options)


def _build_target(args):
    """The module (or callable, cell) that `refnorm validate` compares."""
    import importlib

    from . import interop, presets
    from .validation import import_peer
    D, H = args.input_size, args.hidden_size
    rnn = args.target in RNN_TARGETS or (args.preset in presets.PRESETS and
                                         presets.PRESETS[args.preset].cls in RNN_CELLS)
    if args.nonlinearity and not rnn:
        raise ValueError("--nonlinearity is an option of the RNN targets "
                         f"({', '.join(RNN_TARGETS)}) and of the RNN family's presets")
    nonlinearity = args.nonlinearity or "tanh"
    if args.reset_after and args.target not in RESET_TARGETS:
        raise ValueError(f"--reset-after is an option of {', '.join(RESET_TARGETS)}")
    reset = "before" if args.reset_after == "false" else "after"
    if args.target in BUILTIN_TARGETS:
        family, _, name = args.target.rpartition(".")
        cell = _random_cell(CELLS["rnn"], args, nonlinearity=nonlinearity) if rnn else None
        if args.target in GRU_TARGETS:
            cell = _random_cell(presets.PRESETS[GRU_TARGETS[args.target]], args,
                                **({"reset": reset} if args.target in RESET_TARGETS else {}))
        if family.startswith("flax"):                    # flax.linen / flax.nnx, on JAX
            import_peer("flax", args.target)
            import jax
            if args.dtype == "float64":     # this command's process: else JAX makes it float32
                jax.config.update("jax_enable_x64", True)
            api, cell = importlib.import_module(family), cell or _random_cell(CELLS["lstm"], args)
            dtype = getattr(jax.numpy, args.dtype)
            # a SimpleCell's activation; nnx's computes in its dtype, float32 unless given
            simple = {"activation_fn": getattr(jax.nn, nonlinearity)} if rnn else {}
            if family == "flax.nnx":
                if name == "GRUCell":    # nnx's has no b_hn (interop.flax_gru.NNX_NO_B_HN)
                    cell.params["b_hn"][...] = 0.0
                simple.update({"dtype": dtype} if rnn else {})
                module = getattr(api, name)(D, H, param_dtype=dtype, rngs=api.Rngs(args.seed),
                                            **simple)
                return interop.to_flax(cell, module), None
            module = getattr(api, name)(H, param_dtype=dtype, **simple)
            return module.bind({"params": interop.to_flax(cell, module)}), None
        if family != "keras":                   # Keras brings its own backend (import_peer)
            torch = import_peer("torch", args.target)
        if family.startswith("torch"):
            stack = {"num_layers": args.layers, "bidirectional": args.bidirectional}
            options = {**(stack if name in ("LSTM", "RNN", "GRU") else {}),
                       **({"nonlinearity": nonlinearity} if rnn else {})}
            module = getattr(torch.nn, name)(D, H, dtype=getattr(torch, args.dtype), **options)
            return _randomize_torch(module, args.seed), None
        if family == "haste":
            haste_pytorch = import_peer("haste_pytorch", args.target)
            module = getattr(haste_pytorch, name)(D, H)
            module = module.double() if args.dtype == "float64" else module.float()
            if cell is None:                                # the LSTMs: the GRUs' is drawn
                cell = _random_cell(CELLS["ln_lstm" if name == "LayerNormLSTM" else "lstm"],
                                    args)
            return interop.to_haste(cell, module), None
        keras = import_peer("keras", args.target)
        if rnn:
            layer = keras.layers.SimpleRNN(H, activation=nonlinearity, return_sequences=True,
                                           return_state=True, dtype=args.dtype)
        elif name == "GRU":
            layer = keras.layers.GRU(H, reset_after=reset == "after", return_sequences=True,
                                     return_state=True, dtype=args.dtype)
        else:
            layer = keras.layers.LSTM(H, return_sequences=True, return_state=True,
                                      dtype=args.dtype)
            cell = _random_cell(CELLS["lstm"], args)
        layer.build((None, args.T, D))
        return interop.to_keras(cell, layer), None
    if ":" not in args.target:
        raise ValueError(f"TARGET must be one of {', '.join(BUILTIN_TARGETS)} or MODULE:ATTR, "
                         f"got {args.target!r}")
    module_name, _, attr = args.target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if args.preset:
        if args.preset not in presets.PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}: one of "
                             f"{', '.join(sorted(presets.PRESETS))}")
        return obj, _random_cell(presets.PRESETS[args.preset], args,
                                 **({"nonlinearity": nonlinearity} if rnn else {}))
    from .validation import _framework_kind
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "parameters")
                                 and not hasattr(obj, "get_weights")
                                 and _framework_kind(obj) != "flax"):     # a Flax cell calls
        obj = obj(D, H)
    if args.randomize:
        from .validation import _adapter
        kind = _framework_kind(obj)
        if kind == "torch":
            return _randomize_torch(obj, args.seed), None
        if kind == "flax":                  # nnx: written in place; linen: bound to new params
            adapter = _adapter(obj, None)
            cell = randomize(adapter.cell, seed=args.seed + 1)
            for grad in adapter.absent:     # a param the module has not (nnx GRUCell's b_hn)
                cell.params[grad[1:]][...] = 0.0
            new = interop.to_flax(cell, obj)
            return (obj if new is obj else obj.unbind()[0].bind({"params": new})), None
        convert = {"haste": interop.to_haste, "keras": interop.to_keras}[kind]
        convert(randomize(_adapter(obj, None).cell, seed=args.seed + 1), obj)
    return obj, None


def _randomize_torch(module, seed):
    """Every layer and direction of a torch.nn.LSTM, RNN or GRU (or its Cell) redrawn at
    random and non-zero through refnorm.randomize and the converter; returns the module."""
    from . import interop
    layers = getattr(module, "num_layers", 1)
    dirs = 2 if getattr(module, "bidirectional", False) else 1
    for k in range(layers * dirs):
        cell = interop.from_torch(module, k // dirs, bool(k % dirs))
        interop.to_torch(randomize(cell, seed=seed + 1 + k), module, k // dirs, bool(k % dirs))
    return module


def validate_args(argv):
    """The parsed options of `refnorm validate ARGV...` (refnorm.validation_matrix's rows)."""
    parser = argparse.ArgumentParser(prog="refnorm")
    add_validate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["validate", *argv])


def validation_report(args):
    """The ValidationReport of `refnorm validate` with options `args`; ValueError or
    ImportError (naming what to install) where the target cannot be built or run."""
    from .presets import PRESETS
    from .validation import validate
    skip = {name: "--skip" for name in args.skip}
    if args.preset in PRESETS:          # a param the peer does not have: no gradient to return
        held = f"held at zero by the preset {args.preset}"
        skip.update({"d" + name: held for name in PRESETS[args.preset].hold_zero})
    target, cell = _build_target(args)
    return validate(target, cell=cell, T=args.T, B=args.B, lengths=args.lengths,
                    seed=args.seed, tol=args.tol, training=not args.inference,
                    outputs_only=args.outputs_only, skip=skip, require_float64=args.float64)


def validate_command(args):
    import json
    if args.all:
        given = _options_given(args, allowed=("all", "json", "seed"))
        if given or args.target:
            print("refnorm validate --all: takes no TARGET and no options but --seed and "
                  f"--json (each row has its own), got {', '.join(given or [args.target])}",
                  file=sys.stderr)
            return 2
        from .validation_matrix import main as matrix
        return matrix(seed=args.seed, as_json=args.json)
    if not args.target:
        print("refnorm validate: give a TARGET, or --all", file=sys.stderr)
        return 2
    try:
        report = validation_report(args)
    except (ValueError, ImportError) as err:
        if args.json:
            print(json.dumps({"target": args.target, "error": str(err), "ok": False}))
        print(f"refnorm validate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args.json else report)
    return 0 if report.ok else 1


def _options_given(args, allowed):
    """The --options of `refnorm validate` set to other than their defaults, but `allowed`."""
    defaults = vars(validate_args([]))
    return [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
            if k in defaults and k not in allowed + ("command", "target")
            and v != defaults[k]]


STUDY_OUT, QUICK_OUT = "refnorm-study", "refnorm-study-quick"
PRESET_OUT = "refnorm-study-{}"          # a preset's default report folder (not the default's)
FIGURE_OUT = "refnorm-figure"
FIGURES = ("cooijmans-1",)      # refnorm.study.figures.FIGURES, without importing the study
SMOKE_TEST = ("SMOKE TEST (--quick): the whole pipeline on tiny sizes, in seconds. Its numbers "
              "and verdicts mean nothing; run `refnorm study` without --quick for the answer.")


def add_study_parser(sub):
    from .study.experiment import (PRESETS, TASKS, StudyConfig, preset_config, run_specs,
                                   time_statement)
    from .study.train import MODEL_STEMS
    d = StudyConfig()
    p = sub.add_parser("study", help="the normalisation / initialisation / gradient-flow "
                                     "experiment, with a report", description=(
        "Train LSTM, BNLSTM, SeqBNLSTM and LNLSTM from a sweep of weight inits on the adding "
        "problem and scikit-learn's digits, measure gradient flow per time step, test the "
        "common claims about batch norm in RNNs, and write report.md, results.json, CSV files "
        f"and PNG plots. The defaults ({len(run_specs(d))} runs) take {time_statement()}; the "
        "command prints its estimate before it starts. --quick is a smoke test of the pipeline "
        "in seconds, whose numbers mean nothing; it writes to its own folder and never "
        "overwrites a full report. Options given with --quick or --preset override its "
        "sizes."))
    p.add_argument("--out", help=f"report folder (default {STUDY_OUT}, with --quick "
                                 f"{QUICK_OUT}, with --preset NAME {PRESET_OUT.format('NAME')})")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, the whole "
                                                        "pipeline in seconds, meaningless numbers")
    paper = preset_config("paper")
    thread = preset_config("thread")
    p.add_argument("--preset", choices=PRESETS, help="default: the settings listed here; paper: "
                   f"a study for a cluster (--scheduler), {len(run_specs(paper))} runs: "
                   f"{len(paper.seeds)} seeds, hidden size {paper.hidden_size}, adding problem "
                   f"T = {paper.adding_length}, {paper.epochs} epochs of {paper.n_train} "
                   "sequences; thread: the rest of the forum thread at the default's sizes, "
                   f"{len(run_specs(thread))} runs: the vanilla RNN and GRU families and 2-layer "
                   "LSTM stacks without / with a norm between the layers (claims g, h); each "
                   "prints its CPU-hours before it starts; not with --quick")
    p.add_argument("--cells", nargs="+", choices=MODEL_STEMS, metavar="CELL",
                   help="any of " + ", ".join(MODEL_STEMS) + " (lstm2*: a 2-layer LSTM "
                   f"Stack, between-layer norm none / seq_bn / ln; default: {' '.join(d.cells)})")
    p.add_argument("--inits", nargs="+", metavar="SCHEME[:SCALE]",
                   help="gauss:S, uniform:S, orthogonal[:S], identity[:S], default "
                        f"(default: {' '.join(d.inits)})")
    p.add_argument("--tasks", nargs="+", choices=TASKS, help="digits_pixels: the digits pixel "
                   f"by pixel, T = 64 (default: {' '.join(d.tasks)})")
    p.add_argument("--length", type=int, dest="adding_length",
                   help=f"adding problem training length T (default {d.adding_length})")
    p.add_argument("--long-factors", type=int, nargs="*", help="evaluate on lengths factor*T "
                   f"past T_max (default {' '.join(map(str, d.long_factors))})")
    p.add_argument("--digits-mode", choices=("row", "pixel"),
                   help="digits read row by row (T=8, default) or pixel by pixel (T=64)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help=f"default {' '.join(map(str, d.seeds))}")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--hidden", type=int, dest="hidden_size", help=f"default {d.hidden_size}")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--backend", choices=sorted(available_backends()),
                   help="default numba when it imports, else numpy")
    p.add_argument("--jobs", type=int, help="worker processes (default: 2, or 1 on a single "
                                            "core); results do not depend on it")
    p.add_argument("--no-pad-claim", dest="pad_claim", action="store_false", default=None,
                   help="skip the variable-length runs of claim (c)")
    p.add_argument("--no-twins", dest="twins", action="store_false", default=None,
                   help="skip the twin runs (the first seed again with its weights moved by "
                        "rounding) that mark the chaotic numbers")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the trainings on the Dask "
                   "cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786) instead of "
                   "local processes; same results; needs pip install 'refnorm[cluster]' here "
                   "and refnorm on every worker")
    p.add_argument("--resume", action="store_true", help="continue the study recorded in --out "
                   "(runs.jsonl: one line per finished run), running only the runs it lacks; "
                   "refused if it was written with other settings")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="instead of a study, compare "
                   "the verdicts of the reports in these folders (e.g. a rerun with other "
                   "--seeds or --backend): one row per verdict, agree / weaker (definite in "
                   "some, inconclusive in others) / CONTRADICTS; exit status 1 on a "
                   "contradiction")
    p.add_argument("--figure", choices=FIGURES, help="instead of the study, reproduce a paper's "
                   "figure in under a minute: cooijmans-1 is Cooijmans et al. 2016 Figure 1 "
                   "(gradient norm against t for gamma 0.1..1, E[tanh'] with its IQR) plus the "
                   "same with the terms normalised apart and an orthogonal Wh; writes PNG, JSON "
                   f"and CSV to --out (default {FIGURE_OUT}-NAME); takes --backend, --no-plots")
    return p


STUDY_OPTIONS = ("cells", "inits", "tasks", "adding_length", "long_factors", "digits_mode",
                 "seeds", "epochs", "hidden_size", "batch_size", "lr", "backend", "jobs",
                 "pad_claim", "twins")


def study(args):
    if args.figure:
        return study_figure(args)
    if args.compare:
        return study_compare(args.compare)
    from .study import StudyFolderError, StudyRunsFailed, quick_config, run_study
    from .study.experiment import DIGITS_TASKS, default_jobs, preset_config
    preset = args.preset if args.preset != "default" else None
    if preset and args.quick:
        print(f"refnorm study: --quick and --preset {preset} do not combine: --quick is a smoke "
              "test on its own tiny sizes", file=sys.stderr)
        return 2
    given = {k: getattr(args, k) for k in STUDY_OPTIONS if getattr(args, k) is not None}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    if "backend" not in given:
        given["backend"] = "numba" if "numba" in available_backends() else "numpy"
    if "jobs" not in given:
        given["jobs"] = default_jobs()
    cfg = quick_config(**given) if args.quick else preset_config(preset or "default", **given)
    try:
        cfg.validate()
    except ValueError as err:
        print(f"refnorm study: {err}", file=sys.stderr)
        return 2
    needed = (["sklearn"] if set(DIGITS_TASKS) & set(cfg.tasks) else []) + (
        [] if args.no_plots else ["matplotlib"])
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            print(f"refnorm study needs {module}: pip install 'refnorm[study]' (or "
                  f"pip install -e '.[study]' in the source tree)", file=sys.stderr)
            return 2
    if args.scheduler:
        try:
            __import__("distributed")
        except ImportError:
            print("refnorm study --scheduler needs Dask's distributed: pip install "
                  "'refnorm[cluster]'", file=sys.stderr)
            return 2
    out = args.out or (QUICK_OUT if cfg.quick else PRESET_OUT.format(preset) if preset
                       else STUDY_OUT)
    if cfg.quick:
        full = _full_report_in(out)
        if full:
            print(f"refnorm study --quick: {out} holds a full report ({full}); a smoke test "
                  f"never overwrites one: give --out another folder", file=sys.stderr)
            return 2
    if preset:
        print(_preset_banner(cfg, preset), flush=True)
    print(_study_banner(cfg), flush=True)
    where = f"the Dask scheduler at {args.scheduler}" if args.scheduler else \
        f"{cfg.jobs} local process(es)"
    print(f"refnorm study: runs on {where}; each result goes to "
          f"{os.path.join(out, 'runs.jsonl')} as it finishes "
          f"({'resuming' if args.resume else 'continue an interrupted study with --resume'})",
          flush=True)
    # only the options given (the tests' stand-ins for run_study take cfg, out and plots)
    options = {k: v for k, v in (("resume", args.resume), ("scheduler", args.scheduler)) if v}
    start = time.perf_counter()
    try:
        analysis = run_study(cfg, out, plots=not args.no_plots, **options)
    except (StudyFolderError, ConnectionError) as err:
        print(f"refnorm study: {err}", file=sys.stderr)
        return 2
    except StudyRunsFailed as err:
        print(f"refnorm study: {err}", file=sys.stderr)
        return 1
    tag = "  [smoke test: meaningless]" if cfg.quick else ""
    print(f"refnorm study: report in {os.path.join(out, 'report.md')} "
          f"({time.perf_counter() - start:.0f} s)")
    for task, entry in analysis["question"]["tasks"].items():
        print(f"  does BN reduce the reliance on init? {task}: {entry['verdict']}{tag}")
    for claim in analysis["claims"]:
        print(f"  claim ({claim['id']}) {claim['title']}: {claim['verdict']}{tag}")
    if cfg.quick:
        print(SMOKE_TEST)
    return 0


def study_compare(folders):
    """`refnorm study --compare DIR ...`: the verdict table; 1 on a contradiction."""
    from .study.compare import compare
    missing = [f for f in folders if not os.path.exists(os.path.join(f, "results.json"))]
    if missing:
        print(f"refnorm study --compare: no results.json in {', '.join(missing)}",
              file=sys.stderr)
        return 2
    table, contradictions = compare(folders)
    print(table)
    print(f"refnorm study --compare: {contradictions} verdict(s) contradicted across "
          f"{len(folders)} reports" if contradictions else
          f"refnorm study --compare: no verdict contradicted across {len(folders)} reports")
    return 1 if contradictions else 0


def study_figure(args):
    """`refnorm study --figure NAME`: the figure's PNGs and numbers, its table and finding."""
    from .study import figures
    needed = ["sklearn"] + ([] if args.no_plots else ["matplotlib"])
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            print(f"refnorm study --figure needs {module}: pip install 'refnorm[study]'",
                  file=sys.stderr)
            return 2
    out = args.out or f"{FIGURE_OUT}-{args.figure}"
    backend = args.backend or ("numba" if "numba" in available_backends() else "numpy")
    start = time.perf_counter()
    results = figures.cooijmans_figure_1(out, backend=backend, plots=not args.no_plots)
    s = results["setup"]
    print(f"refnorm study --figure {args.figure}: H = {s['H']}, T = {s['T']}, "
          f"batch {s['batch']}, {backend} backend, {time.perf_counter() - start:.1f} s")
    print("||dL/dh_0|| / ||dL/dh_T-1|| (mean over examples) per variant (terms/Wh) and gamma:")
    print(figures.survival_table(results))
    for line in results["finding"]:
        print(f"  {line}")
    for path in results["files"]:
        print(f"  wrote {path}")
    return 0


def _study_banner(cfg):
    """What the command says before it starts: the smoke-test warning, or the estimate."""
    from .study.experiment import estimated_minutes, run_specs, time_statement
    runs = len(run_specs(cfg))
    if cfg.quick:
        return f"refnorm study: {runs} runs. {SMOKE_TEST}"
    idle, busy = estimated_minutes(cfg)
    caveat = " (the NumPy backend is slower)" if cfg.backend == "numpy" else ""
    return (f"refnorm study: {runs} runs on {cfg.jobs} process(es), {cfg.backend} backend; "
            f"estimated {idle:.1f} min on idle cores, {busy:.1f} on busy ones{caveat} "
            f"(scaled from the defaults' measured time: {time_statement()})")


def _preset_banner(cfg, preset):
    """A preset's runs and expected CPU-hours, and the cost model they come from."""
    from .study.experiment import COST_MODEL, estimated_cpu_hours, run_specs, time_statement
    idle, busy = estimated_cpu_hours(cfg)
    where = "meant for --scheduler" if idle >= 1 else "fits one machine"
    return (f"refnorm study --preset {preset}: {len(run_specs(cfg))} runs, expected "
            f"{idle:.{0 if idle >= 1 else 1}f} CPU-hours on idle cores, "
            f"{busy:.{0 if busy >= 1 else 1}f} on busy ones ({cfg.backend} "
            f"backend; one run holds one core), {where}; scaled from the "
            f"defaults' measured time ({time_statement()}) by {COST_MODEL}")


def _full_report_in(folder):
    """A description of the full (not --quick) report in `folder`, or None."""
    import json
    try:
        with open(os.path.join(folder, "results.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if data.get("config", {}).get("quick", True):
        return None
    return f"{len(data.get('runs', []))} runs, {data.get('elapsed_seconds', 0) / 60:.1f} min"


if __name__ == "__main__":
    sys.exit(main())
