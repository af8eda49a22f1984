"""The Numba CPU backend: the reference's math with the step loops compiled by Numba.

Mirror of refnorm.numpy_ref file for file (common, norms, lstm, bn_lstm, seq_bn_lstm,
ln_lstm); the same eight functions with the same signatures, returning the same cache classes,
so every test of the reference runs on it unchanged. Whole-sequence products stay NumPy BLAS
calls; the step loops run their one product per step in a kernel of their own on a weight
packed once per sequence (common.packed_matmul).

Compiled code is cached on disk (cache=True, common.JIT) outside the package: in
$NUMBA_CACHE_DIR when the user set one, else in refnorm_cache_dir() below. Numba's default, a
__pycache__ beside the source, puts files into site-packages/refnorm/ that `pip uninstall` does
not know of; the empty refnorm/ folder they leave behind then shadows a later editable install
("cannot import name 'CELLS' from 'refnorm' (unknown location)").
"""
import os
from contextlib import contextmanager

from numba.core import config


def refnorm_cache_dir():
    """$XDG_CACHE_HOME/refnorm/numba, or ~/.cache/refnorm/numba. Numba keys each source folder
    to a sub-folder of its own (its name and a hash of its path), and each file's entries to
    the file's modification time, so installs side by side never read each other's code."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "refnorm", "numba")


@contextmanager
def _cache_outside_the_package():
    """Decorate this package's functions with numba.config.CACHE_DIR pointing out of the
    package, unless the user set NUMBA_CACHE_DIR. Numba picks a function's cache folder when
    it is decorated (at import), so the setting is restored once the modules are loaded and
    nothing else in the process sees it. Where the folder cannot be created, Numba falls back
    to its own choice."""
    before = config.CACHE_DIR
    if not before:
        config.CACHE_DIR = refnorm_cache_dir()
    try:
        yield
    finally:
        config.CACHE_DIR = before


with _cache_outside_the_package():
    from .bn_lstm import bn_lstm_backward, bn_lstm_forward
    from .ln_lstm import ln_lstm_backward, ln_lstm_forward
    from .lstm import lstm_backward, lstm_forward
    from .seq_bn_lstm import seq_bn_lstm_backward, seq_bn_lstm_forward

__all__ = ["lstm_forward", "lstm_backward", "bn_lstm_forward", "bn_lstm_backward",
           "seq_bn_lstm_forward", "seq_bn_lstm_backward", "ln_lstm_forward", "ln_lstm_backward"]
