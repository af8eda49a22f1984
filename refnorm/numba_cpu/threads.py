"""The threads the step loops run on: as many as the user lets NumPy's BLAS use.

A step loop's batch rows never meet in the cells without batch statistics (LSTM, GRU, RNN, their
layer-norm forms, and the SeqBN forms, whose statistics are taken before the loop): row r of
h_t depends on row r of h_{t-1} and of x_t only. So the rows are cut into contiguous blocks and
each block runs the whole loop, all T steps, on a thread of its own (the loops release the GIL):
no thread waits for another between steps, and each runs its step product on its own rows
against the one packed weight, which both threads read. The per-step batch norm cells (BN-LSTM,
BN-GRU, BN-RNN) need the whole batch's statistics at every step: their blocks run side by side
too, each summing its own rows, and meet inside the compiled loop to join the sums
(run_meeting, barrier.py). The whole-sequence products, everyone's, are split by rows over
the threads (matmul, under section()).

How many: `loop_threads()` is the thread count of NumPy's BLAS at the moment of the call (what
threadpoolctl's `threadpool_limits`, OPENBLAS_NUM_THREADS or OMP_NUM_THREADS set), so one setting
governs the products and the loops; a call holds the BLAS at one thread while it runs
(section()), so no BLAS thread competes with a loop's. Whether a shape gains from it is the
planner's call (refnorm/numba_cpu/planner.py): below some size the hand-over costs more than the
second thread saves.

Results: every element of h, c, the gates and dz_t is computed by the same operations in the same
order whichever block holds its row, so the forward pass and the gate gradients are identical bit
for bit across thread counts; the bias and gain gradients, sums over rows, are added block by
block, and the weight gradients' products are cut into other BLAS calls: they differ from the
one-thread results by roundings. In the per-step batch norm cells the statistics are sums over
rows too, joined from the blocks' sums, so their forward pass differs by roundings as well.
"""
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

TILE_ROWS = 4       # = common.MR, the step product's rows per tile (tests/test_threads.py)

_lock = threading.Lock()
_pool = None
_pool_size = 0
_blas = []          # [controller of NumPy's BLAS, or None], found once
_section = threading.local()     # .threads: the thread count of the call running in this thread
_held = [0, None]                # calls inside a section now, the BLAS thread count they found
_meeting = threading.Lock()      # held by the one call whose loop's blocks meet (run_meeting)


def _numpy_blas():
    """threadpoolctl's controller of the BLAS NumPy calls (None when it finds none)."""
    if not _blas:
        from threadpoolctl import ThreadpoolController
        libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        numpy_own = [c for c in libs if "numpy" in (c.filepath or "")]
        _blas.append((numpy_own or libs or [None])[0])
    return _blas[0]


def blas_threads():
    """The thread count of NumPy's BLAS now (1 when no BLAS is found): a ctypes call, ~1 µs."""
    blas = _numpy_blas()
    return 1 if blas is None else max(1, int(blas.get_num_threads()))


def loop_threads():
    """The threads this call may use: those its section() found, else the BLAS's count now."""
    return getattr(_section, "threads", None) or blas_threads()


@contextmanager
def section():
    """One forward or backward call of the backend on loop_threads() threads. With more than
    one, NumPy's BLAS is held at one thread until the last section running in the process ends,
    and the call's products run on refnorm's own threads instead, split by rows (matmul below):
    an OpenBLAS thread spins on its core for a while after each product it helped with, and a
    step loop's second thread started right after the input projection found its core taken
    (measured, LSTM forward loop at (64, 256) float64 on 2 cores: 65 ms on two threads right
    after a two-thread product, 44 ms after a pause, 85-95 ms on one). Nested sections (a
    planner probe inside a call) use the outer one's count. A call made while another thread's
    section holds the BLAS at one thread finds one thread."""
    if getattr(_section, "threads", None):
        yield _section.threads
        return
    n = blas_threads()
    if n > 1:
        with _lock:
            if _held[0] == 0:
                _held[1] = _numpy_blas().get_num_threads()
                _numpy_blas().set_num_threads(1)
            _held[0] += 1
    _section.threads = n
    try:
        yield n
    finally:
        _section.threads = None
        if n > 1:
            with _lock:
                _held[0] -= 1
                if _held[0] == 0:
                    _numpy_blas().set_num_threads(_held[1])


def in_section(function):
    """function run inside section() (the backend's public forward and backward functions)."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        with section():
            return function(*args, **kwargs)
    return run


def matmul(A, B, out=None):
    """A @ B (2-D), into out if given: on loop_threads() threads inside a section, each thread
    one block of A's rows (the BLAS then runs on one thread in each), else one BLAS call. Each
    row of the result is one BLAS product either way; the blocks change which rows a call
    holds, and with them the BLAS's blocking, i.e. roundings."""
    if out is None:
        out = np.empty((A.shape[0], B.shape[1]), np.result_type(A, B))
    n = getattr(_section, "threads", None) or 1
    blocks = _even_blocks(A.shape[0], n, MIN_ROWS_PER_THREAD)
    run_rows(lambda r0, r1: np.matmul(A[r0:r1], B, out=out[r0:r1]), blocks)
    return out


MIN_ROWS_PER_THREAD = 16     # fewer rows than this per thread: one BLAS call


def _even_blocks(M, n, least):
    n = max(1, min(n, M // least))
    cuts = [M * k // n for k in range(n + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def row_blocks(B, n):
    """[(r0, r1), ...]: rows 0 .. B-1 in at most n contiguous blocks of whole MR-row tiles (the
    step product's row blocks), as equal as the tiles allow; fewer blocks when B has fewer
    tiles than n."""
    tiles = -(-B // TILE_ROWS)
    n = max(1, min(n, tiles))
    cuts = [min(B, TILE_ROWS * (tiles * k // n)) for k in range(n + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _forget_after_fork():
    """In a child made by fork() the pool's threads do not exist (only the forking thread is
    copied): a block submitted to the inherited pool would never run and its call would wait
    for ever. The child starts without a pool and with no section held."""
    global _pool, _pool_size, _meeting
    _pool, _pool_size = None, 0
    _held[:] = [0, None]
    _meeting = threading.Lock()
    _section.threads = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _executor(workers):
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refnorm-rows")
            _pool_size = workers
        return _pool


def run_rows(loop, blocks):
    """loop(r0, r1) for every block: the first on the calling thread, the others on the pool.
    Waits for all of them; an exception in any is raised here (after all have finished, so no
    thread still writes into the caller's arrays)."""
    if len(blocks) == 1:
        loop(*blocks[0])
        return
    futures = [_executor(len(blocks) - 1).submit(loop, r0, r1) for r0, r1 in blocks[1:]]
    error = None
    try:
        loop(*blocks[0])
    except BaseException as e:          # noqa: BLE001 -- re-raised once the others are done
        error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:      # noqa: BLE001
            error = error or e
    if error is not None:
        raise error


def run_meeting(loop, blocks):
    """loop(sync, k, n, r0, r1) for every block k of the n given, for step loops whose threads
    meet inside the compiled code at every step (barrier.meet on the shared int64 array sync):
    the first block on the calling thread, the others on the pool, like run_rows.

    A meeting needs every block running at once. One call's loop at a time holds the pool for
    meetings (the others' blocks only ever wait for their own work, so a block of the meeting
    queued behind them starts when they end); a call that finds it held runs its loop on its
    own thread, as one block. The pool's threads stay alive between calls: a thread started
    for the call was put on the calling thread's core and stayed there (measured, BN-LSTM
    forward at (32, 128) on 2 cores: both blocks on CPU 0 for the whole loop, 43 ms against
    22 ms on one thread). A block that fails marks sync aborted, so the others stop at their
    next meeting instead of waiting; its error is raised here once all have ended (run_rows)."""
    from .barrier import ABORTED
    sync = np.zeros(3, np.int64)
    if len(blocks) > 1 and not _meeting.acquire(blocking=False):
        blocks = [(blocks[0][0], blocks[-1][1])]
    if len(blocks) == 1:
        loop(sync, 0, 1, *blocks[0])
        return
    n = len(blocks)
    index = {r0: k for k, (r0, _) in enumerate(blocks)}

    def block(r0, r1):
        try:
            loop(sync, index[r0], n, r0, r1)
        except BaseException as e:
            if _stopped_for_another(e):     # the block that failed raises its own error
                return
            sync[ABORTED] = 1
            raise
    try:
        run_rows(block, blocks)
    finally:
        _meeting.release()


def touch_pages(*arrays):
    """Write one element per 4 KiB page of each (fresh) array from the calling thread, before a
    loop's blocks write them on several threads. On these machines NumPy asks for huge pages
    for arrays of 4 MiB and up, and two threads taking their first faults in one 2 MiB page at
    once were slow: BN-LSTM forward at (32, 128) float64 on 2 cores, one block's first pass over
    its rows of u_hat took 26 ms instead of 2 (with NumPy's huge pages turned off, 4.6 ms
    against 7.2 on one thread). Each array's contents are to be written by the loop."""
    for a in arrays:
        flat = a.reshape(-1)
        flat[::max(1, 4096 // a.itemsize)] = 0


def _stopped_for_another(error):
    from .barrier import ABORT_MESSAGE
    return isinstance(error, RuntimeError) and str(error) == ABORT_MESSAGE


def loop_blocks(cell, dtype, B, H):
    """The row blocks a step loop of `cell` runs on for a (B, H) batch in dtype: one block per
    thread the BLAS may use, when the planner found that faster on this machine for this shape
    (planner.py), else one block."""
    blocks = row_blocks(B, loop_threads())
    if len(blocks) == 1:                     # one thread, or one tile of rows
        return blocks
    from .planner import split_pays
    return blocks if split_pays(cell, dtype, B, H, len(blocks)) else [(0, B)]


def run_rows_summing(loop, blocks, totals):
    """loop(r0, r1, own) for every block (run_rows), where the loop adds its rows' share of
    gradients summed over rows (db, the gains') into own = {name: array}: with one block `totals`
    itself (the one-thread sums stay exactly as they were), with several a zeroed copy of each
    per block -- two threads never add into one array -- added to `totals` afterwards, block
    by block in row order."""
    if len(blocks) == 1:
        r0, r1 = blocks[0]
        loop(r0, r1, totals)
        return
    own = {r0: {name: np.zeros_like(total) for name, total in totals.items()} for r0, _ in blocks}
    run_rows(lambda r0, r1: loop(r0, r1, own[r0]), blocks)
    for r0, _ in blocks:
        for name, total in totals.items():
            total += own[r0][name]
