"""Test-session set-up shared by every test module.

NUMBA_ENABLE_CUDASIM: the CUDA backend's tests (tests/test_cuda_backend.py) run on numba-cuda's
simulator unless a real GPU is asked for. The variable must be set before numba is first
imported, which happens when the test modules import refnorm, after this file runs. It only
swaps numba.cuda for the simulator: the Numba CPU backend's @njit code is compiled exactly as
without it. Set NUMBA_ENABLE_CUDASIM=0 explicitly to test on a real GPU
(benchmarks/bench_gpu.py does).
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_terminal_summary(terminalreporter):
    """The matrix of `refnorm validate --all`, where tests/test_validate_all.py ran it: what
    refnorm has validated, at the end of the log (CI's included)."""
    import sys
    for text in getattr(sys.modules.get("test_validate_all"), "SUMMARY", ()):
        terminalreporter.write_sep("=", "refnorm validate --all (tests/test_validate_all.py)")
        terminalreporter.write_line(text)
