"""Whether a step loop runs faster on several threads, measured on this machine, once.

The first time a cell meets a (dtype, B, H, threads) on a machine, the planner times a short
forward+backward of that cell at that shape (probe_steps: 16 steps up to (32, 128), 8 from
(64, 256); D = H, random weights) with the loop's rows on one thread and on `threads` threads (threads.py),
alternating the two, and keeps the faster: splitting must win by MARGIN to be chosen, so a
draw keeps the one-thread loop; a probe that finds no gain runs once more (PROBES). At small
shapes the hand-over to the second thread and the two threads sharing one core's cache can
cost more than the second core saves; where that turns is a matter of the CPU, its caches and
the dtype, which is why it is measured and not a constant (cuDNN's benchmark mode and FFTW's
planner choose the same way).

The choices are kept in memory and in a file per machine, plans/<machine>.json in refnorm's
cache folder, <machine> a hash of the CPU model, its vector ISA, the core count and the versions
of Python, NumPy, Numba and refnorm's source, so no machine runs another machine's choice. The
choice changes nothing but speed: the forward pass is bitwise the same either way, gradients
summed over rows differ by roundings (threads.py).

REFNORM_PLAN=split or REFNORM_PLAN=one skips the measurement and forces the choice (tests use
this to run both paths); REFNORM_PLAN unset, or "measure", measures. A choice measured while
other programs shared the cores can be wrong for an idle machine: delete plan_file() to measure
again. GRU's reset="before" form uses the choice measured on its default reset="after" form
(same key "gru"; the two gained alike from the split, measured at (64, 256)).
"""
import functools
import hashlib
import json
import os
import platform
import threading
import time

import numpy as np

PROBE_STEPS = 16       # at (B, H) = (32, 128); fewer at larger shapes (probe_steps)
PROBE_REPEATS = 5      # the best of 5 each way: a probe run right after another library's
                       # threads worked (torch's spin for a while) is slow, and 3 were not
                       # enough to leave one clean run (LSTM (64, 256) float32 planned "one")
MARGIN = 0.95           # split only if it takes less than 0.95x the one-thread time
PROBES = 2              # a probe that finds no gain is run once more, and one gain is enough:
                        # in a full bench run the LSTM at (64, 256) float32 twice planned "one"
                        # (the second core busy for a moment), where probes alone gave 0.77-0.88

_lock = threading.RLock()
_plans = {}             # key -> bool (split pays), this process
_measuring = threading.local()


@functools.lru_cache(maxsize=None)
def _cpu():
    """The CPU's model name and its vector ISA ("...|avx512f", "|avx2" or "|other"), from
    /proc/cpuinfo (Linux) or platform."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    isa = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    return f"{fields.get('model name', platform.processor())}|{isa}"


def machine_key():
    import numba

    from . import source_key
    parts = [_cpu(), str(os.cpu_count()), platform.python_version(), np.__version__,
             numba.__version__, source_key(os.path.dirname(__file__))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def plan_file():
    from . import refnorm_cache_dir
    refnorm_folder = os.path.dirname(os.path.dirname(refnorm_cache_dir()))   # .../refnorm
    return os.path.join(refnorm_folder, "plans", machine_key() + ".json")


def _load():
    try:
        with open(plan_file()) as f:
            saved = json.load(f)
        return {k: bool(v) for k, v in saved.items()} if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        return {}


def _save():
    """Add this process's plans to the file, the first writer of a key winning: under a lock,
    a key the file already holds (another process measured it meanwhile, e.g. the study's
    other worker) replaces this process's choice, so every process of the machine runs the
    same plan from then on and a run's numbers do not depend on which process ran it. Written
    to a temporary file renamed into place: a reader never sees half."""
    path = plan_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "w") as lock:
            _flock(lock)
            saved = _load()
            _plans.update(saved)
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
            with open(tmp, "w") as f:
                json.dump(_plans, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
    except OSError:
        pass                        # a read-only home: the plans stay in memory


def _flock(f):
    try:
        import fcntl
    except ImportError:             # not POSIX: no lock (two processes may both write a key)
        return
    fcntl.flock(f, fcntl.LOCK_EX)   # released when f is closed


def forced():
    """REFNORM_PLAN's forced choice: True (split), False (one thread) or None (measure)."""
    value = os.environ.get("REFNORM_PLAN", "measure").strip().lower()
    if value not in ("measure", "split", "one"):
        raise ValueError(f"REFNORM_PLAN must be 'measure', 'split' or 'one', got {value!r}")
    return None if value == "measure" else value == "split"


def split_pays(cell, dtype, B, H, threads):
    """True if the loops of `cell` at (B, H) in dtype ran faster on `threads` threads than on
    one when measured on this machine (measured now if never before)."""
    choice = forced()
    if choice is not None:
        return choice
    if getattr(_measuring, "choice", None) is not None:     # inside a probe: its forced choice
        return _measuring.choice
    key = f"{cell}|{np.dtype(dtype).name}|{B}|{H}|{threads}"
    with _lock:
        if key not in _plans:
            _plans.update({k: v for k, v in _load().items() if k not in _plans})
        if key not in _plans:
            try:
                _plans[key] = any(measure(cell, np.dtype(dtype), B, H)[1] < MARGIN
                                  for _ in range(PROBES))
            except ValueError:        # a shape the cell's class refuses (LN over H = 1): the
                _plans[key] = False   # backend function was called directly; one thread
            _save()
        return _plans[key]


MIN_PROBE_STEPS = 8     # with 2 steps SeqBN-LSTM's batch norm over all frames and the products
                        # outweighed the loop, and (64, 256) measured "no gain" (1.33x the LSTM)


def probe_steps(B, H):
    """PROBE_STEPS scaled down with the step's work B·H², to no fewer than MIN_PROBE_STEPS:
    the probe at (128, 512) runs 8 steps (~2.5 s in all, once per machine, in float64)."""
    return int(max(MIN_PROBE_STEPS, min(PROBE_STEPS, PROBE_STEPS * 32 * 128 ** 2 // (B * H * H))))


def measure(cell, dtype, B, H, steps=None, repeats=PROBE_REPEATS):
    """(seconds on one thread, split / one): the best of `repeats` forward+backward calls of
    `cell` on the Numba backend at (steps, B, H), D = H, each way, the two ways alternating."""
    import refnorm
    steps = steps or probe_steps(B, H)
    rng = np.random.default_rng(0)
    model = refnorm.CELLS[cell](H, H, seed=0, dtype=dtype.name, backend="numba")
    x = rng.standard_normal((steps, B, H)).astype(dtype)
    dhs = rng.standard_normal((steps, B, H)).astype(dtype)

    def run(split):
        _measuring.choice = split
        try:
            start = time.perf_counter()
            hs, _, cache = model.forward(x)
            model.backward(dhs, cache)
            return time.perf_counter() - start
        finally:
            _measuring.choice = None

    run(False), run(True)                          # compiles and warms both
    best = {False: np.inf, True: np.inf}
    for k in range(repeats):
        for split in ((False, True) if k % 2 == 0 else (True, False)):
            best[split] = min(best[split], run(split))
    return best[False], best[True] / best[False]


# -- the step product's vector width ---------------------------------------------------------------
def vector_bytes(dtype, K, N):
    """The micro-kernel's register width for a (K, N) weight in dtype on this machine: 32 or 64
    bytes (common.VECTOR_BYTES), the faster on a step product of KERNEL_ROWS rows measured once
    (64 must win by MARGIN). REFNORM_KERNEL=32 or 64 forces it; without AVX-512 in the CPU's
    flags 64 is never tried."""
    value = os.environ.get("REFNORM_KERNEL")
    if value is None and (dtype, K, N) in _widths:          # the common case: ~1 µs, no lock
        return _widths[dtype, K, N]
    value = (value or "measure").strip().lower()
    if value in ("32", "64"):
        return int(value)
    if value != "measure":
        raise ValueError(f"REFNORM_KERNEL must be 'measure', '32' or '64', got {value!r}")
    if not _cpu().endswith("avx512f"):
        _widths[dtype, K, N] = 32
        return 32
    key = f"kernel|{np.dtype(dtype).name}|{K}|{N}"
    with _lock:
        if key not in _plans:
            _plans.update({k: v for k, v in _load().items() if k not in _plans})
        if key not in _plans:
            times = measure_kernel(np.dtype(dtype), K, N)
            _plans[key] = times[64] < MARGIN * times[32]
            _save()
        _widths[dtype, K, N] = 64 if _plans[key] else 32
        return _widths[dtype, K, N]


_widths = {}            # (dtype, K, N) -> the planned width, this process

KERNEL_ROWS = 32        # rows of the probe's step product (a batch of 32)
KERNEL_CALLS = 20       # products per timing


def measure_kernel(dtype, K, N, repeats=PROBE_REPEATS):
    """{32: seconds, 64: seconds}: the best of `repeats` timings of KERNEL_CALLS products
    (KERNEL_ROWS, K)·(K, N) on W packed for each width, alternating the two."""
    from .common import pack_panels, packed_matmul, product_workspace
    rng = np.random.default_rng(0)
    A = rng.standard_normal((KERNEL_ROWS, K)).astype(dtype)
    W = rng.standard_normal((K, N)).astype(dtype)
    C = np.empty((KERNEL_ROWS, N), dtype)
    packed = {vb: pack_panels(W, vb) for vb in (32, 64)}
    work = {vb: product_workspace(KERNEL_ROWS, K, packed[vb]) for vb in (32, 64)}

    def run(vb):
        start = time.perf_counter()
        for _ in range(KERNEL_CALLS):
            packed_matmul(A, packed[vb], C, work[vb])
        return time.perf_counter() - start

    run(32), run(64)                                  # compiles and warms both
    best = {32: np.inf, 64: np.inf}
    for k in range(repeats):
        for vb in ((32, 64) if k % 2 == 0 else (64, 32)):
            best[vb] = min(best[vb], run(vb))
    return best
