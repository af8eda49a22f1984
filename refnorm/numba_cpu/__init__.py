"""The Numba CPU backend: the reference's math with the step loops compiled by Numba.

Mirror of refnorm.numpy_ref file for file (common, norms, lstm, bn_lstm, seq_bn_lstm,
ln_lstm, rnn, bn_rnn, seq_bn_rnn, ln_rnn, gru, bn_gru, seq_bn_gru, ln_gru); the same twenty-four
functions with the same signatures, returning the same cache classes, so every test of the
reference runs on it unchanged.
Whole-sequence products stay NumPy BLAS calls; the step loops run their one product per step in
a kernel of their own on a weight packed once per sequence (common.packed_matmul).

Compiled code is cached on disk (cache=True, common.JIT) outside the package: in
$NUMBA_CACHE_DIR when the user set one, else in refnorm_cache_dir() below. Numba's default, a
__pycache__ beside the source, puts files into site-packages/refnorm/ that `pip uninstall` does
not know of; the empty refnorm/ folder they leave behind then shadows a later editable install
("cannot import name 'CELLS' from 'refnorm' (unknown location)").
"""
import hashlib
import os
from contextlib import contextmanager

from numba.core import config


def source_key(folder):
    """A hash of every .py file's name and bytes in `folder`: it changes with any edit."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            digest.update(name.encode() + b"\0")
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()[:16]


def refnorm_cache_dir():
    """$XDG_CACHE_HOME/refnorm/numba/KEY, or ~/.cache/refnorm/numba/KEY, KEY the source_key of
    this package. Numba checks a cached function against its own file's time stamp only, not
    against the files of the functions it calls and inlines: after an edit of norms.py alone,
    the cached loops of bn_lstm.py ran the old normalisation. A folder per version of the whole
    package's source makes any edit a fresh compile. Within it Numba keys each source folder to
    a sub-folder of its own (a hash of its path), so installs side by side never share code."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "refnorm", "numba", source_key(os.path.dirname(__file__)))


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
    from .bn_rnn import bn_rnn_backward, bn_rnn_forward
    from .ln_lstm import ln_lstm_backward, ln_lstm_forward
    from .ln_rnn import ln_rnn_backward, ln_rnn_forward
    from .lstm import lstm_backward, lstm_forward
    from .rnn import rnn_backward, rnn_forward
    from .seq_bn_lstm import seq_bn_lstm_backward, seq_bn_lstm_forward
    from .seq_bn_rnn import seq_bn_rnn_backward, seq_bn_rnn_forward
    from .gru import gru_backward, gru_forward
    from .bn_gru import bn_gru_backward, bn_gru_forward
    from .seq_bn_gru import seq_bn_gru_backward, seq_bn_gru_forward
    from .ln_gru import ln_gru_backward, ln_gru_forward

# Each public function runs inside threads.section(): its loops and products on the threads the
# user lets NumPy's BLAS use (threads.py).
from .threads import in_section

__all__ = ["lstm_forward", "lstm_backward", "bn_lstm_forward", "bn_lstm_backward",
           "seq_bn_lstm_forward", "seq_bn_lstm_backward", "ln_lstm_forward", "ln_lstm_backward",
           "rnn_forward", "rnn_backward", "bn_rnn_forward", "bn_rnn_backward",
           "seq_bn_rnn_forward", "seq_bn_rnn_backward", "ln_rnn_forward", "ln_rnn_backward",
           "gru_forward", "gru_backward", "bn_gru_forward", "bn_gru_backward",
           "seq_bn_gru_forward", "seq_bn_gru_backward", "ln_gru_forward", "ln_gru_backward"]

for _name in __all__:
    globals()[_name] = in_section(globals()[_name])
del _name
