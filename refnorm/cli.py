"""The `refnorm` command (also `python -m refnorm`).

    refnorm check    every cell, every backend present, training and inference, with a ragged
                     mask: backward vs central differences in float64, one row per tensor.
"""
import argparse
import sys
import time

import numpy as np

from . import CELLS, available_backends
from .config import GRADCHECK_STEP, GRADCHECK_TOL
from .gradcheck import gradcheck, randomize

# Lengths (5, 4, 2) in a batch of 3 over T = 5: late steps have two, then one valid row, so the
# masked carry, the BN statistics of a partly padded step and a step with one row are all used.
CHECK_T, CHECK_LENGTHS = 5, np.array([5, 4, 2])
CHECK_D, CHECK_H = 3, 3


def check_cases(backends):
    """(backend, label, mode, cell, forward kwargs) for every case `refnorm check` runs."""
    for backend in backends:
        for stem, cls in CELLS.items():
            variants = [({}, stem)]
            if stem == "ln_lstm":
                variants.append(({"per_gate": True}, "ln_lstm per_gate"))
            if stem == "bn_lstm":
                # 3 population slots for 5 steps from t0 = 1: steps 2.. all use slot 2
                variants = [({"max_steps": 3}, stem)]
            for options, label in variants:
                for training in (True, False):
                    cell = randomize(cls(CHECK_D, CHECK_H, seed=0, backend=backend, **options),
                                     seed=1)
                    kwargs = {"lengths": CHECK_LENGTHS, "training": training, "T": CHECK_T,
                              "B": len(CHECK_LENGTHS), "seed": 2}
                    if stem == "bn_lstm" and not training:
                        kwargs["t0"] = 1
                    yield backend, label, "training" if training else "inference", cell, kwargs


def check(backends=None, tol=GRADCHECK_TOL, out=None):
    """Run every case, print the table, return True when every error is <= tol."""
    out = out or sys.stdout
    backends = backends or available_backends()
    print(f"refnorm check: backward vs central differences (float64, step {GRADCHECK_STEP:g}), "
          f"random parameters, inputs and upstream gradients, lengths {CHECK_LENGTHS.tolist()}, "
          f"T={CHECK_T}, D={CHECK_D}, H={CHECK_H}", file=out)
    header = f"{'backend':8} {'cell':17} {'mode':9} {'tensor':8} {'rel. error':>10}  verdict"
    print(header, file=out)
    print("-" * len(header), file=out)
    worst, failures, start = 0.0, 0, time.perf_counter()
    for backend, label, mode, cell, kwargs in check_cases(backends):
        for name, err in gradcheck(cell, **kwargs).items():
            ok = err <= tol
            worst, failures = max(worst, err), failures + (not ok)
            print(f"{backend:8} {label:17} {mode:9} {name:8} {err:10.1e}  "
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
    args = parser.parse_args(argv)
    if args.command == "check":
        return 0 if check(args.backend, args.tol) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
