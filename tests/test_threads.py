"""The Numba backend on several threads (refnorm/numba_cpu/threads.py, planner.py): the rows of a
step loop cut into blocks, one thread each, and the whole-sequence products split by rows.

Contracts: the forward is bitwise the same on one block or several; gradients agree to float64
rounding (bias and gain gradients are summed block by block); a call holds NumPy's BLAS at one
thread while it runs and gives it back, also when it fails; the planner's choice is made once
per (cell, dtype, B, H, threads) on a machine, kept in a file keyed to the machine, and
REFNORM_PLAN forces it. The thread count is taken as 2 here whatever the machine has (the
BLAS's count is monkeypatched): the split path runs on a 1-core machine too.
"""
import json

import numpy as np
import pytest

import refnorm
from refnorm.gradcheck import randomize
from refnorm.numba_cpu import common, planner, threads

CELLS_SPLIT = ("lstm", "seq_bn_lstm", "gru", "seq_bn_gru", "rnn", "seq_bn_rnn", "ln_lstm",
               "ln_gru", "ln_rnn")


@pytest.fixture
def two_threads(monkeypatch):
    """loop_threads() reads 2; every split a step loop made is recorded as its blocks
    (threads.loop_blocks asks the planner only when the rows make more than one block)."""
    monkeypatch.setattr(threads, "blas_threads", lambda: 2)
    seen = []
    split_pays = planner.split_pays

    def spy(cell, dtype, B, H, n):
        split = split_pays(cell, dtype, B, H, n)
        if split:
            seen.append(threads.row_blocks(B, n))
        return split
    monkeypatch.setattr(planner, "split_pays", spy)
    return seen


def run(stem, plan, monkeypatch, B=10, T=7, H=5, D=3, dtype="float64", **options):
    monkeypatch.setenv("REFNORM_PLAN", plan)
    cell = randomize(
        refnorm.CELLS[stem](D, H, seed=0, dtype=dtype, backend="numba", **options), seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    hs, final, cache = cell.forward(x, lengths=lengths)
    dhs = rng.standard_normal(hs.shape).astype(dtype)
    return hs, final, cell.backward(dhs, cache)


@pytest.mark.parametrize("stem", CELLS_SPLIT)
def test_split_rows_give_the_one_thread_results(stem, two_threads, monkeypatch):
    """B = 10 (three 4-row tiles: blocks of 4 and 6 rows), padded steps: the forward outputs are
    bitwise those of one block, every gradient within 1e-13 of its largest entry."""
    hs1, final1, g1 = run(stem, "one", monkeypatch)
    assert two_threads == []
    hs2, final2, g2 = run(stem, "split", monkeypatch)
    assert two_threads and all(b == [(0, 4), (4, 10)] for b in two_threads), two_threads
    np.testing.assert_array_equal(hs1, hs2)
    as_tuple = (lambda f: f if isinstance(f, tuple) else (f,))
    for a, b in zip(as_tuple(final1), as_tuple(final2)):            # hT (and cT)
        np.testing.assert_array_equal(a, b)
    assert g1.keys() == g2.keys()
    for k in g1:
        scale = max(1.0, float(np.max(np.abs(g1[k]))))
        np.testing.assert_allclose(g2[k], g1[k], rtol=0, atol=1e-13 * scale, err_msg=k)


CELLS_MEETING = ("bn_lstm", "bn_gru", "bn_rnn")   # per-step batch norm: the blocks meet each step


def run_bn(stem, plan, monkeypatch, training=True, B=10, T=7, H=5, D=3, dtype="float64", **kw):
    """run() for the per-step BN cells, with their options, in training or (after one training
    pass that sets the population statistics) in inference."""
    monkeypatch.setenv("REFNORM_PLAN", plan)
    cell = randomize(refnorm.CELLS[stem](D, H, seed=0, dtype=dtype, backend="numba", **kw),
                     seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    if not training:
        cell.forward(x, lengths=lengths)
    hs, final, cache = cell.forward(x, lengths=lengths, training=training)
    dhs = rng.standard_normal(hs.shape).astype(dtype)
    return hs, final, cell.backward(dhs, cache)


@pytest.mark.parametrize("training", (True, False), ids=("training", "inference"))
@pytest.mark.parametrize("stem, options", [(s, {}) for s in CELLS_MEETING]
                         + [("bn_lstm", {"carry": "normalized"}),
                            ("bn_lstm", {"pad_stats": "include"}),
                            ("bn_rnn", {"terms": "summed"}),
                            ("bn_rnn", {"nonlinearity": "relu"}),
                            ("bn_gru", {"pad_stats": "include"})])
def test_batch_norm_blocks_meet_and_give_the_one_thread_results(stem, options, training,
                                                                two_threads, monkeypatch):
    """B = 10 in blocks of 4 and 6 rows, padded steps: each step's statistics are the blocks'
    sums joined (norms.batchnorm_join_stats), so the forward and every gradient agree with one
    block's to float64 rounding (1e-13 of the largest entry; a block's sums left out of the
    join, or a meeting left out, moves them by 1e-2 or more)."""
    hs1, final1, g1 = run_bn(stem, "one", monkeypatch, training, **options)
    assert two_threads == []
    hs2, final2, g2 = run_bn(stem, "split", monkeypatch, training, **options)
    assert two_threads and all(b == [(0, 4), (4, 10)] for b in two_threads), two_threads
    np.testing.assert_allclose(hs2, hs1, rtol=0, atol=1e-13)
    as_tuple = (lambda f: f if isinstance(f, tuple) else (f,))
    for a, b in zip(as_tuple(final1), as_tuple(final2)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-13)
    assert g1.keys() == g2.keys()
    for k in g1:
        scale = max(1.0, float(np.max(np.abs(g1[k]))))
        np.testing.assert_allclose(g2[k], g1[k], rtol=0, atol=1e-13 * scale, err_msg=k)


@pytest.mark.parametrize("stem", CELLS_MEETING)
def test_batch_norm_loop_that_cannot_meet_runs_as_one_block(stem, two_threads, monkeypatch):
    """Planned on two blocks while another call holds the meeting threads: the loop runs as
    one block, and gives one block's results to the bit (the shared sums arrays were made for
    two blocks; joining both would read the unwritten one)."""
    hs1, final1, g1 = run_bn(stem, "one", monkeypatch)
    assert threads._meeting.acquire(blocking=False)
    try:
        hs2, final2, g2 = run_bn(stem, "split", monkeypatch)
    finally:
        threads._meeting.release()
    assert two_threads                    # the plan was two blocks
    np.testing.assert_array_equal(hs2, hs1)
    for k in g1:
        np.testing.assert_array_equal(g2[k], g1[k], err_msg=k)


def test_blocks_meet_at_every_meeting():
    """Three threads on however many cores: at every meeting each reads what the others
    wrote before it (barrier.meet; with 3 threads on 2 cores a waiting thread gives its core
    away, so this also runs where the threads outnumber the cores)."""
    import threading

    from numba import njit

    from refnorm.numba_cpu.barrier import meet

    @njit(nogil=True)
    def rounds(sync, n, k, board, steps):
        wrong = 0
        for t in range(steps):
            board[t, k] = t + 1
            meet(sync, n)
            for j in range(n):
                wrong += board[t, j] != t + 1
            meet(sync, n)
        return wrong

    n, steps = 3, 300
    sync, board = np.zeros(3, np.int64), np.zeros((steps, n), np.int64)
    rounds(np.zeros(3, np.int64), 1, 0, np.zeros((1, 1), np.int64), 1)     # compile
    wrong = [None] * n
    workers = [threading.Thread(target=lambda k=k: wrong.__setitem__(
        k, rounds(sync, n, k, board, steps))) for k in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)
    assert wrong == [0] * n
    assert sync[0] == 0 and sync[1] == 2 * steps       # arrivals reset, one generation a meeting


def test_run_meeting_raises_the_first_failure_and_stops_the_waiting_blocks():
    """A block that fails before a meeting would leave the others waiting for ever: they
    raise instead, and the block's own error is the one raised."""
    from numba import njit

    from refnorm.numba_cpu.barrier import meet

    @njit(nogil=True)
    def wait_twice(sync, n):
        meet(sync, n)
        meet(sync, n)

    def loop(sync, k, n, r0, r1):
        if k == 1:
            raise ValueError("block 1 failed")
        wait_twice(sync, n)

    with pytest.raises(ValueError, match="block 1 failed"):
        threads.run_meeting(loop, [(0, 4), (4, 8), (8, 12)])
    ran = []
    threads.run_meeting(lambda sync, k, n, r0, r1: ran.append((k, n)), [(0, 4), (4, 8)])
    assert sorted(ran) == [(0, 2), (1, 2)]        # the meeting lock was given back


def test_a_second_meeting_at_once_runs_as_one_block():
    """While one call's blocks meet, another thread's call runs its loop as one block on its
    own thread instead of queueing behind them."""
    import threading

    held, seen = threading.Event(), []
    release = threading.Event()

    def first(sync, k, n, r0, r1):
        if k == 0:
            held.set()
            release.wait(30)

    worker = threading.Thread(target=threads.run_meeting, args=(first, [(0, 4), (4, 8)]))
    worker.start()
    assert held.wait(30)
    threads.run_meeting(lambda sync, k, n, r0, r1: seen.append((k, n, r0, r1)),
                        [(0, 4), (4, 8)])
    release.set()
    worker.join(30)
    assert seen == [(0, 1, 0, 8)]


def test_row_blocks_cut_whole_tiles():
    assert threads.TILE_ROWS == common.MR
    assert threads.row_blocks(10, 2) == [(0, 4), (4, 10)]
    assert threads.row_blocks(32, 2) == [(0, 16), (16, 32)]
    assert threads.row_blocks(4, 2) == [(0, 4)]                  # one tile: one block
    assert threads.row_blocks(7, 1) == [(0, 7)]
    for B in range(1, 40):
        for n in (1, 2, 3, 5):
            blocks = threads.row_blocks(B, n)
            assert blocks[0][0] == 0 and blocks[-1][1] == B
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            assert all(r0 % common.MR == 0 for r0, _ in blocks)
            assert len(blocks) <= min(n, -(-B // common.MR))


def test_a_call_holds_the_blas_at_one_thread_and_gives_it_back(monkeypatch):
    """Inside a call NumPy's BLAS runs one thread (the products run on refnorm's threads);
    after it, and after a call that raised, the BLAS has its count again."""
    from threadpoolctl import threadpool_limits
    seen = []
    real = threads.matmul

    def spy(A, B, out=None):
        seen.append(threads.blas_threads())
        return real(A, B, out)
    monkeypatch.setattr(common, "matmul", spy)
    with threadpool_limits(2):
        if threads.blas_threads() != 2:
            pytest.skip("this BLAS does not run 2 threads here")
        run("lstm", "split", monkeypatch)
        assert seen and set(seen) == {1}
        assert threads.blas_threads() == 2
        cell = refnorm.LSTM(3, 4, backend="numba")
        with pytest.raises(ValueError):
            cell.forward(np.full((2, 2, 3), np.nan))
        with pytest.raises(ValueError):
            refnorm.numba_cpu.lstm_forward(np.zeros((2, 2, 3)), np.zeros((2, 5)), np.zeros((2, 4)),
                                           np.ones((2, 2)), cell.params)
        assert threads.blas_threads() == 2


def test_matmul_split_by_rows_is_the_product():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((70, 9)), rng.standard_normal((9, 6))
    with threads.section():
        threads._section.threads = 2
        out = threads.matmul(A, B)
        into = np.empty((70, 6))
        threads.matmul(A.T.copy().T, B, out=into)
    threads._section.threads = None
    np.testing.assert_allclose(out, A @ B, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(into, A @ B, rtol=1e-14, atol=1e-14)
    assert threads._even_blocks(70, 2, 16) == [(0, 35), (35, 70)]
    assert threads._even_blocks(20, 2, 16) == [(0, 20)]


def test_run_rows_waits_for_every_block_and_raises():
    done = []

    def loop(r0, r1):
        if r0 == 0:
            raise RuntimeError("block 0")
        done.append((r0, r1))
    with pytest.raises(RuntimeError, match="block 0"):
        threads.run_rows(loop, [(0, 4), (4, 8), (8, 12)])
    assert sorted(done) == [(4, 8), (8, 12)]


def test_planner_measures_once_per_shape_and_keeps_it_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("REFNORM_PLAN", raising=False)
    monkeypatch.setattr(planner, "_plans", {})
    calls = []

    def fake(cell, dtype, B, H):
        calls.append((cell, dtype.name, B, H))
        return 0.01, (0.5 if B >= 32 else 0.99)      # split pays at B >= 32 only

    assert planner.PROBES == 2
    monkeypatch.setattr(planner, "measure", fake)
    assert planner.split_pays("lstm", np.float64, 32, 64, 2) is True
    assert planner.split_pays("lstm", np.float64, 8, 64, 2) is False    # 0.99: not by MARGIN
    assert planner.split_pays("lstm", np.float64, 32, 64, 2) is True
    assert calls == [("lstm", "float64", 32, 64)] + [("lstm", "float64", 8, 64)] * 2  # PROBES
    saved = json.loads(open(planner.plan_file()).read())
    assert saved == {"lstm|float64|32|64|2": True, "lstm|float64|8|64|2": False}
    assert str(tmp_path) in planner.plan_file()
    monkeypatch.setattr(planner, "_plans", {})               # a new process: read from the file
    assert planner.split_pays("lstm", np.float64, 8, 64, 2) is False and len(calls) == 3
    monkeypatch.setattr(planner, "_cpu", lambda: "another CPU|avx2")   # another machine
    monkeypatch.setattr(planner, "_plans", {})
    assert planner.split_pays("lstm", np.float64, 8, 64, 2) is False and len(calls) == 5


def test_planner_keeps_one_thread_where_the_cell_refuses_the_probe(tmp_path, monkeypatch):
    """LN over H = 1 is refused by the cell classes, not by the backend functions: the probe
    cannot build the cell, and the loop runs on one thread."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("REFNORM_PLAN", raising=False)
    monkeypatch.setattr(planner, "_plans", {})
    assert planner.split_pays("ln_rnn", np.float64, 8, 1, 2) is False


def test_planner_forced_and_refused_settings(monkeypatch):
    monkeypatch.setenv("REFNORM_PLAN", "split")
    assert planner.split_pays("gru", np.float32, 4, 4, 2) is True
    monkeypatch.setenv("REFNORM_PLAN", "one")
    assert planner.split_pays("gru", np.float32, 400, 400, 2) is False
    monkeypatch.setenv("REFNORM_PLAN", "fast")
    with pytest.raises(ValueError, match="REFNORM_PLAN"):
        planner.split_pays("gru", np.float32, 4, 4, 2)


def test_planner_measure_times_both_ways(monkeypatch):
    """The real probe: a number for the one-thread time and a ratio, both ways run (the forced
    choice inside the probe reaches the cell's loops)."""
    monkeypatch.setattr(threads, "blas_threads", lambda: 2)
    monkeypatch.delenv("REFNORM_PLAN", raising=False)
    seen = []
    split_pays = planner.split_pays
    monkeypatch.setattr(planner, "split_pays", lambda *a: seen.append(split_pays(*a)) or seen[-1])
    seconds, ratio = planner.measure("lstm", np.dtype("float64"), 8, 4, steps=2, repeats=1)
    assert seconds > 0 and ratio > 0
    assert seen.count(True) == seen.count(False) == 4   # forward and backward, warm-up and timed


# -- the step product's vector width (planner.vector_bytes) ---------------------------------------
@pytest.mark.parametrize("stem", ("lstm", "gru", "bn_lstm", "ln_rnn"))
def test_either_kernel_width_gives_the_same_cell(stem, monkeypatch):
    """The 32- and 64-byte micro-kernels, forced by REFNORM_KERNEL, at H = 150 (the 64-byte
    kernel's depth passes are 128 deep, so Whᵀ's 4H rows take several): outputs and
    gradients within 1e-13 of their largest entry (the sums over a tile's depth are cut into
    other passes, nothing else differs)."""
    results = {}
    for width in ("32", "64"):
        monkeypatch.setenv("REFNORM_KERNEL", width)
        results[width] = run(stem, "one", monkeypatch, B=6, T=4, H=150, D=7)
    (hs1, _, g1), (hs2, _, g2) = results["32"], results["64"]
    np.testing.assert_allclose(hs2, hs1, rtol=0, atol=1e-13)
    for k in g1:
        scale = max(1.0, float(np.max(np.abs(g1[k]))))
        np.testing.assert_allclose(g2[k], g1[k], rtol=0, atol=1e-13 * scale, err_msg=k)


def test_gru_reset_before_with_two_kernel_widths(monkeypatch):
    """The planner chooses the width per weight shape: GRU reset="before" packs Wh's r, z
    columns (H, 2H) and its n columns (H, H) apart, and each product needs a workspace for its
    own panels (one shared workspace, sized for the 64-byte panels of the first, raised on the
    second's 32-byte ones). Both ways round give the book's numbers."""
    monkeypatch.delenv("REFNORM_KERNEL", raising=False)
    monkeypatch.setattr(planner, "_cpu", lambda: "a CPU|avx2")      # unplanned shapes: 32
    H = 150
    book = run_book_gru_before(H)
    for first, second in ((64, 32), (32, 64)):
        monkeypatch.setattr(planner, "_widths", {(np.dtype("float64"), H, 2 * H): first,
                                                 (np.dtype("float64"), H, H): second})
        hs, _, g = run("gru", "one", monkeypatch, B=6, T=4, H=H, D=7, reset="before")
        np.testing.assert_allclose(hs, book[0], rtol=0, atol=1e-12)
        for k in g:
            scale = max(1.0, float(np.max(np.abs(book[2][k]))))
            np.testing.assert_allclose(g[k], book[2][k], rtol=0, atol=1e-12 * scale, err_msg=k)


def run_book_gru_before(H):
    """run()'s GRU reset="before" on the NumPy book, same seeds."""
    cell = randomize(refnorm.CELLS["gru"](7, H, seed=0, backend="numpy", reset="before"), seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 7))
    lengths = rng.integers(1, 5, 6)
    lengths[0] = 4
    hs, final, cache = cell.forward(x, lengths=lengths)
    return hs, final, cell.backward(rng.standard_normal(hs.shape), cache)


def test_planner_picks_the_kernel_width_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("REFNORM_KERNEL", raising=False)
    monkeypatch.setattr(planner, "_plans", {})
    monkeypatch.setattr(planner, "_widths", {})
    monkeypatch.setattr(planner, "_cpu", lambda: "a CPU|avx512f")
    calls = []

    def fake(dtype, K, N):
        calls.append((dtype.name, K, N))
        return {32: 1.0, 64: 0.5 if dtype == np.float32 else 0.97}
    monkeypatch.setattr(planner, "measure_kernel", fake)
    assert planner.vector_bytes(np.float32, 64, 256) == 64
    assert planner.vector_bytes(np.float64, 64, 256) == 32          # 0.97: not by MARGIN
    assert planner.vector_bytes(np.float32, 64, 256) == 64 and len(calls) == 2
    monkeypatch.setattr(planner, "_cpu", lambda: "a CPU|avx2")      # never tried without it
    assert planner.vector_bytes(np.float32, 64, 512) == 32 and len(calls) == 2
    monkeypatch.setenv("REFNORM_KERNEL", "64")
    assert planner.vector_bytes(np.float64, 3, 3) == 64
    monkeypatch.setenv("REFNORM_KERNEL", "128")
    with pytest.raises(ValueError, match="REFNORM_KERNEL"):
        planner.vector_bytes(np.float64, 3, 3)


def test_measure_kernel_times_both_widths():
    times = planner.measure_kernel(np.dtype("float32"), 16, 40, repeats=1)
    assert set(times) == {32, 64} and all(t > 0 for t in times.values())


def test_the_first_process_to_write_a_plan_wins(tmp_path, monkeypatch):
    """Two processes measured the same key at once and disagree: the one that writes second
    adopts the file's choice, so both run the same plan (the study's numbers must not depend on
    which worker ran a run)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("REFNORM_KERNEL", raising=False)
    monkeypatch.setattr(planner, "_cpu", lambda: "a CPU|avx512f")
    monkeypatch.setattr(planner, "_plans", {})
    monkeypatch.setattr(planner, "_widths", {})
    path = planner.plan_file()
    import os
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:                                     # the other process's choice
        json.dump({"kernel|float64|8|32": True}, f)
    monkeypatch.setattr(planner, "_load", lambda: {} if not planner._plans else
                        json.load(open(path)))                      # it wrote while we measured
    monkeypatch.setattr(planner, "measure_kernel", lambda dtype, K, N: {32: 0.5, 64: 1.0})
    assert planner.vector_bytes(np.float64, 8, 32) == 64
    assert json.load(open(path)) == {"kernel|float64|8|32": True}


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_runs_split_loops(two_threads, monkeypatch):
    """The parent has used the thread pool; a child made by fork() (multiprocessing's default
    on Linux) runs a split LSTM too instead of waiting for the parent's threads, which it does
    not have. The child reports through its exit status; a hang would fail by the timeout."""
    import multiprocessing as mp
    run("lstm", "split", monkeypatch)
    assert threads._pool is not None and two_threads

    def child():
        hs, _, _ = run("lstm", "split", monkeypatch)
        raise SystemExit(0 if np.isfinite(hs).all() else 1)
    process = mp.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    alive = process.is_alive()
    if alive:
        process.kill()
    assert not alive and process.exitcode == 0
