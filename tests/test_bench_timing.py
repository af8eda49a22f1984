"""The timing helpers of benchmarks/bench_cpu.py: the order the compared functions run in, the
paired ratios the tables print, and the phase timer of the normalised cells' breakdown. A
benchmark's verdicts are only as good as these; the tests check them without timing anything:
bench_cpu reads its clock from one module-level name, bench_cpu.clock, and these tests put a
counter there that advances by 1 per read (fake_clock), so every "time" they see is exact."""
import itertools
import pathlib
import sys

import numpy as np
import pytest

import refnorm
from refnorm.gradcheck import randomize

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_cpu  # noqa: E402


@pytest.fixture
def fake_clock(monkeypatch):
    """bench_cpu's clock replaced by a counter: 0, 1, 2, ... one more at each read."""
    monkeypatch.setattr(bench_cpu, "clock", itertools.count().__next__)
    return bench_cpu


def test_interleaved_runs_reverse_the_order_every_other_repeat(fake_clock):
    """Each function follows a different neighbour half of the time: repeats 0, 2 run a, b, c;
    repeats 1, 3 run c, b, a. The warm-up calls come first, in order, once each. Each call is
    timed by two reads of the clock around it alone (1 tick of the fake clock)."""
    calls = []
    fns = [lambda name=name: calls.append(name) for name in "abc"]
    runs = bench_cpu.interleaved_runs(fns, repeats=4, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc" + "cba"
    assert [len(r.times) for r in runs] == [4, 4, 4]
    assert [len(r.faults) for r in runs] == [4, 4, 4]
    assert [r.times for r in runs] == [[1, 1, 1, 1]] * 3


def test_ratio_pairs_the_repeats_and_gives_median_and_quartiles():
    """Runs.ratio divides repeat by repeat, not median by median: here the paired ratios are
    0.5, 1.5, 0.25, 1.5, 0.5 (median 0.5, quartiles 0.5 and 1.5 by the inclusive method),
    while the medians' ratio would be 3 / 4 = 0.75. A drift that scales both functions of a
    repeat alike leaves every paired ratio unchanged."""
    a, b = bench_cpu.Runs(), bench_cpu.Runs()
    a.times = [1.0, 3.0, 2.0, 6.0, 5.0]
    b.times = [2.0, 2.0, 8.0, 4.0, 10.0]
    assert a.ratio(b) == (0.5, 0.5, 1.5)
    assert (a.time, b.time) == (3.0, 4.0)
    drift = [1.0, 2.0, 4.0, 8.0, 16.0]
    a.times, b.times = ([t * d for t, d in zip(ts, drift)] for ts in (a.times, b.times))
    assert a.ratio(b) == (0.5, 0.5, 1.5)
    assert bench_cpu.spread((0.7, 0.66, 0.741)) == "0.70 (0.66-0.74)"
    assert bench_cpu.spread((3.94, 3.8, 4.1), "{:.1f}x") == "3.9x (3.8x-4.1x)"


def test_phase_timer_times_the_real_calls_and_restores_the_functions(fake_clock):
    """Inside the timer every phase of each cell's forward+backward is timed (the LSTM, BN- and
    LN-LSTM call all but the batch x time normalisation, SeqBN-LSTM all five), the phases sum
    to no more than the call, and the cells' results are those of the unwrapped functions;
    outside it the modules hold their own functions again. On the fake clock each timed call
    reads it twice and counts 1: the phases sum to the number of timed calls n and the whole
    call to 2n + 1 exactly, which holds only if no timed call runs inside another (a phase
    counted twice)."""
    from refnorm.numba_cpu import bn_lstm, common, ln_lstm, lstm, seq_bn_lstm
    before = {(mod, name): getattr(mod, name) for mod, name, _ in bench_cpu.PhaseTimer().targets}
    assert len(before) == 3 + 6 + 1 + 6   # projection x3, loops x6, products, SeqBN-LSTM's 6
    phases_of = {"seq_bn_lstm": bench_cpu.PhaseTimer.PHASES}
    for stem in ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"):
        fwd_bwd = bench_cpu.refnorm_case(stem, 4, 3, 5, "float64")[1]
        expected = fwd_bwd()
        with bench_cpu.PhaseTimer() as timer:
            timer.cell = stem
            start = bench_cpu.clock()
            got = fwd_bwd()
            total = bench_cpu.clock() - start
        phases = {ph: timer.seconds.get((stem, ph), 0.0) for ph in bench_cpu.PhaseTimer.PHASES}
        called = phases_of.get(stem, bench_cpu.PhaseTimer.PHASES[:4])
        assert all(phases[ph] > 0 for ph in called), (stem, phases)
        assert all(phases[ph] == 0 for ph in phases if ph not in called), (stem, phases)
        assert sum(phases.values()) <= total
        assert total == 2 * sum(phases.values()) + 1, (stem, phases, total)
        assert got.keys() == expected.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], expected[k])
    after = {(mod, name): getattr(mod, name) for mod, name in before}
    assert after == before
    assert lstm.lstm_forward_loop is before[(lstm, "lstm_forward_loop")]
    assert seq_bn_lstm.forward_rows is lstm.forward_rows        # which calls lstm's loops
    assert common.add_weight_grads is before[(common, "add_weight_grads")]
    assert {bn_lstm, ln_lstm, seq_bn_lstm} <= {mod for mod, _ in before}


def test_phase_timer_restores_the_functions_when_the_call_fails(fake_clock):
    """An exception inside the timer (a bad input) still puts every function back."""
    before = {(mod, name): getattr(mod, name) for mod, name, _ in bench_cpu.PhaseTimer().targets}
    cell = refnorm.CELLS["lstm"](5, 5, seed=0, backend="numba")
    with pytest.raises(ValueError):
        with bench_cpu.PhaseTimer():
            cell.forward(np.full((4, 3, 5), np.nan))
    assert {(mod, name): getattr(mod, name) for mod, name in before} == before


@pytest.mark.parametrize("stem", ["bn_lstm", "ln_lstm"])
def test_hot_normalisation_loops_do_the_cells_work_t_times(stem):
    """The "normalisation alone, hot" table times what the cells' normalisation costs at the
    least; it means something only if its loops make the real calls on the real shapes. One
    step (T = 1) gives what the reference's norm functions give on the same arrays (1e-12:
    the compiled loops differ from NumPy by roundings); T = 3 adds each gain gradient three
    times, so the loop runs every step and none is optimised away."""
    from refnorm.numpy_ref import norms
    B, H, eps = 4, 3, 1e-5
    grads = ("dgamma_h", "dgamma_x", "dgamma_c", "dbeta_c")
    results = {}
    for T in (1, 3):
        run, arrays = bench_cpu.normalisation_case(stem, T, B, H, "float64")
        run()
        results[T] = arrays
    r = results[1]
    if stem == "bn_lstm":
        m = r["m"]
        assert m.min() == 0.0 < m.max()                 # a padded row is excluded

        def forward(z, gamma):
            return norms.batchnorm_forward(z, m, gamma, None, eps)[1:]

        def backward(dy, zhat, var, gamma):
            return norms.batchnorm_backward(dy, zhat, var, m, gamma, eps, training=True)
    else:
        def forward(z, gamma):
            return norms.layernorm_forward(z, gamma, None, eps)[1:]

        def backward(dy, zhat, var, gamma):
            return norms.layernorm_backward(dy, zhat, var, gamma, eps)

    def close(got, want):
        np.testing.assert_allclose(got, np.reshape(want, got.shape), rtol=1e-12,
                                   atol=1e-12 * np.abs(want).max())

    for z, gain, hat, mean, var in (("a", "gamma_h", "a_hat", "mean_h", "var_h"),
                                    ("u", "gamma_x", "u_hat", "mean_x", "var_x"),
                                    ("c_new", "gamma_c", "c_hat", "mean_c", "var_c")):
        zhat, mu, v = forward(r[z], r[gain])
        close(r[hat], zhat)
        close(r[mean], mu)
        close(r[var], v)
    dc, dgamma_c, dbeta_c = backward(r["dc_in"], r["c_hat"], r["var_c"], r["gamma_c"])
    da, dgamma_h, _ = backward(r["dz"], r["a_hat"], r["var_h"], r["gamma_h"])
    du, dgamma_x, _ = backward(r["dz"], r["u_hat"], r["var_x"], r["gamma_x"])
    for name, want in (("dc_norm", dc), ("dA", da), ("dU", du), ("dgamma_c", dgamma_c),
                       ("dbeta_c", dbeta_c), ("dgamma_h", dgamma_h), ("dgamma_x", dgamma_x)):
        close(r[name], want)
    for name in grads:
        close(results[3][name], 3 * r[name])


EAGER_CELLS = [("lstm", {}), ("bn_lstm", {}), ("seq_bn_lstm", {}), ("ln_lstm", {}),
               ("gru", {}), ("bn_gru", {}), ("seq_bn_gru", {}), ("ln_gru", {}),
               ("rnn", {}), ("bn_rnn", {"terms": "separate"}), ("bn_rnn", {"terms": "summed"}),
               ("seq_bn_rnn", {}), ("ln_rnn", {"terms": "summed"}),
               ("ln_rnn", {"terms": "separate"})]


@pytest.mark.parametrize("stem, options", EAGER_CELLS,
                         ids=[f"{s}-{o['terms']}" if o else s for s, o in EAGER_CELLS])
def test_torch_eager_anchor_is_the_cells_math(stem, options):
    """The "vs the same equations in PyTorch eager" columns mean something only if the eager
    code is the cell's math: torch_eager_cell gives the book's hs and, by autograd, its
    gradients of every parameter and of x, in float64 on tiny shapes (D != H, random non-zero
    parameters and upstream gradients, zero initial states and no mask, as the tables run it;
    BN cells in training on their batch statistics, not updating the population's). BN- and
    LN-RNN in both term forms: the eager reads the form from the gains. Tolerance 1e-10: the
    two sum in different orders, over T = 5 steps."""
    torch = pytest.importorskip("torch")
    T, B, D, H = 5, 4, 3, 6
    cell = randomize(refnorm.CELLS[stem](D, H, seed=0, dtype="float64", **options), seed=1)
    rng = np.random.default_rng(2)
    x, dhs = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    kwargs = {"update_stats": False} if "bn" in stem else {}
    hs, _, cache = cell.forward(x, **kwargs)
    grads = cell.backward(dhs, cache)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in cell.params.items()}
    xt = torch.tensor(x, requires_grad=True)
    hs_eager = bench_cpu.torch_eager_cell(stem, xt, p)
    hs_eager.backward(torch.tensor(dhs))

    def close(got, want):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())

    close(hs_eager.detach().numpy(), hs)
    for name, value in p.items():
        close(value.grad.numpy(), grads[name])
    close(xt.grad.numpy(), grads["x"])


@pytest.mark.parametrize("family, name, gates", [("rnn", "RNN", 1), ("gru", "GRU", 3)])
def test_family_tables_print_one_row_per_case(fake_clock, monkeypatch, family, name, gates):
    """The RNN and GRU families' three tables, run for real on a tiny shape with the fake clock
    (each timed call 1 tick, so every paired ratio reads 1.00 with quartiles 1.00): the RNN
    (GRU) against torch.nn.RNN (torch.nn.GRU) and its floor (G = H, 3H), the products the cell
    must do, and its BN-, SeqBN- and LN- cells against refnorm's plain cell and the eager
    anchor; a header, a rule and one row per (dtype, shape[, cell]), every row as wide as the
    header. gemm_ceiling's large product is replaced by a rate of 1 FLOP per tick."""
    import io
    monkeypatch.setattr(bench_cpu, "gemm_ceiling", lambda dtype: 1.0)
    out = io.StringIO()
    T, B, H = 3, 4, 5
    measured = bench_cpu.table_vs_torch([(B, H)], T, 3, out, family=family)
    bench_cpu.table_product_bound(measured, T, out, family=family)
    bench_cpu.table_norm_cells([(B, H)], T, 3, out, family=family)
    text = out.getvalue()
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert [t.split(" (")[0].replace(" and the BLAS floor", "") for t in titles] == [
        f"## {name}: refnorm numba vs torch.nn.{name}",
        f"## What the matrix products allow, {name}",
        f"## Normalised cells on numba: fwd+bwd vs refnorm's {name} and vs the same equations "
        "in PyTorch eager"]
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in text.split("## ")[1:]]
    rows = {"float64": [], "float32": []}
    for table, n in zip(tables, (2, 2, 6)):           # rows: dtypes x (cells)
        header, rule, *body = table
        assert rule == bench_cpu.row(["---"] * (header.count(" | ") + 1)) and len(body) == n
        for line in body:
            assert line.count(" | ") == header.count(" | "), line
            rows[line.split(" | ")[0][2:]].append(line)
    assert all(len(r) == 5 for r in rows.values())
    assert "1.00 (1.00-1.00)" in tables[0][2]
    assert [line.split(" | ")[3] for line in tables[2][2:]] == [
        f"bn_{family}", f"seq_bn_{family}", f"ln_{family}"] * 2
    assert f"vs refnorm {name}" in tables[2][0]
    assert [m[:3] for m in measured] == [("float64", B, H), ("float32", B, H)]
    flops = bench_cpu.product_flops(T, B, H, gates=bench_cpu.GATES[family])
    assert flops == 6 * 2 * T * B * H * gates * H
    assert flops == bench_cpu.product_flops(T, B, H) // 4 * gates
    assert f"{flops / 1e9:.2f}" == tables[1][2].split(" | ")[3]


@pytest.mark.parametrize("argv, families, stack, rest", [
    ([], ["lstm", "rnn", "gru"], True, True), (["--family", "rnn"], ["rnn"], False, False),
    (["--family", "gru"], ["gru"], False, False), (["--family", "lstm"], ["lstm"], False, True),
    (["--family", "stack"], [], True, False)])
def test_family_option_picks_the_tables(monkeypatch, capsys, argv, families, stack, rest):
    """--family rnn (gru) runs the RNN (GRU) family's three tables alone; --family stack the
    stack's table alone; --family lstm every table but those; no option, every family, the
    stack and then the LSTM-only tables. The tables are replaced by recorders (nothing runs),
    and so are the thread settings main makes."""
    import threadpoolctl
    import torch
    calls = []
    for name in ("table_vs_torch", "table_product_bound", "table_norm_cells", "table_stack",
                 "table_vs_book", "table_phases", "table_normalisation", "table_linear_in_T",
                 "table_memory", "table_backward_memory", "table_first_call"):
        monkeypatch.setattr(bench_cpu, name, lambda *a, _name=name, **k: calls.append(
            (_name, next((v for v in a + tuple(k.values())
                          if isinstance(v, str) and v in bench_cpu.FAMILIES), None))))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda n: None)
    bench_cpu.main(argv + ["--quick"])
    family_tables = [(name, family) for family in families for name in
                     ("table_vs_torch", "table_product_bound", "table_norm_cells")]
    family_tables += [("table_stack", None)] if stack else []
    assert calls[:len(family_tables)] == family_tables
    assert (len(calls) > len(family_tables)) == rest
    assert all(family is None and name != "table_stack"
               for name, family in calls[len(family_tables):])
    header = capsys.readouterr().out.splitlines()[2]
    assert " cores, 1 threads; " in header


def test_cpu_description_names_model_family_and_vector_isa():
    """The header's CPU: the first processor's model name, family and model, and the widest
    vector ISA its flags offer."""
    zen4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw\n\n"
            "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 1\nmodel name\t: other\n")
    assert bench_cpu.cpu_description(zen4) == "AMD EPYC (family 25 model 17), AVX-512 + FMA"
    zen3 = zen4.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512bw", "")
    assert bench_cpu.cpu_description(zen3) == "AMD EPYC (family 25 model 1), AVX2 + FMA"
    assert bench_cpu.cpu_description("model name\t: old\nflags\t: sse2\n").endswith("no AVX2")


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["all_T", "lengths_packed"])
def test_stack_benchmark_is_torch_math(dtype, tol, with_lengths):
    """The stack table compares like with like only if the benchmark's refnorm.Stack and
    torch.nn.LSTM(num_layers=2, bidirectional=True) compute the same thing: on a tiny shape
    (D != H, so Wx and Wh cannot be swapped unnoticed), with the weights stack_case copies,
    refnorm's ys, hT, cT equal torch's output, h_n, c_n (from both the no_grad forward and the
    forward+backward), and refnorm's gradients of x and of every parameter equal torch's after
    its backward of the same upstream gradient (b: each of bias_ih, bias_hh). With lengths,
    torch runs the sequences packed and padded back to T steps. The anchor's four cells are
    refnorm LSTMs on numba at input sizes D, D, 2H, 2H holding the stack's weights."""
    T, B, D, H = 6, 4, 3, 5
    lengths = bench_cpu.stack_lengths(T, B) if with_lengths else None
    if with_lengths:
        assert lengths.max() == T and lengths.min() < T and lengths.min() >= T // 2
    case = bench_cpu.stack_case(T, B, H, dtype, lengths, D=D)
    ys, (hT, cT), _ = case.fwd()
    grads = case.fwd_bwd()
    out_ng, (hn_ng, cn_ng) = case.torch_fwd()
    out, (hn, cn) = case.torch_fwd_bwd()

    def close(got, want):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())

    assert ys.shape == (T, B, 2 * H) and ys.dtype == np.dtype(dtype)
    for mine, theirs in ((ys, out), (hT, hn), (cT, cn), (ys, out_ng), (hT, hn_ng),
                         (cT, cn_ng)):
        close(mine, theirs.detach().numpy())
    close(grads["x"], case.xt.grad.numpy())
    names = {"weight_ih": "Wx", "weight_hh": "Wh", "bias_ih": "b", "bias_hh": "b"}
    seen = set()
    for name, p in case.module.named_parameters():
        kind, layer = name.rsplit("_l", 1)
        layer, reverse = layer.partition("_")[::2]
        key = f"l{layer}.{'bwd' if reverse else 'fwd'}.{names[kind]}"
        close(grads[key].T if kind.startswith("weight") else grads[key], p.grad.numpy())
        seen.add(key)
    assert seen == set(case.net.params) and len(seen) == 2 * 2 * 3
    assert [(c.input_size, c.hidden_size, c.backend, c.dtype) for c, _, _ in case.cells] == [
        (D, H, "numba", np.dtype(dtype))] * 2 + [(2 * H, H, "numba", np.dtype(dtype))] * 2
    for (cell, inp, dhs), (layer, d) in zip(case.cells, itertools.product((0, 1),
                                                                          ("fwd", "bwd"))):
        assert inp.shape == (T, B, cell.input_size) and dhs.shape == (T, B, H)
        for k, v in cell.params.items():
            np.testing.assert_array_equal(v, case.net.params[f"l{layer}.{d}.{k}"])
    case.cells_fwd_bwd()


def test_stack_table_prints_one_row_per_case(fake_clock):
    """The stack's table, run for real on a tiny shape with the fake clock (each timed call 1
    tick: every paired ratio 1.00 (1.00-1.00)): its title, a header, a rule, one row per
    (sequences, dtype, shape), full-length rows at `shapes` and rows with lengths at
    `length_shapes`, every row as wide as the header, and the note under it."""
    import io
    out = io.StringIO()
    T = 4
    bench_cpu.table_stack([(3, 2), (4, 3)], [(4, 3)], T, 3, out)
    text = out.getvalue()
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert [t.split(" (T=")[0] for t in titles] == [f"## {bench_cpu.STACK_TITLE}"]
    assert "2-layer bidirectional LSTM" in titles[0] and "bidirectional=True)" in titles[0]
    header, rule, *body = [line for line in text.splitlines() if line.startswith("|")]
    assert rule == bench_cpu.row(["---"] * (header.count(" | ") + 1))
    assert all(line.count(" | ") == header.count(" | ") for line in body)
    cells = [line[2:-2].split(" | ") for line in body]
    assert [(c[0], c[1], c[2], c[3]) for c in cells] == [
        ("all T", "float64", "3", "2"), ("all T", "float64", "4", "3"),
        ("all T", "float32", "3", "2"), ("all T", "float32", "4", "3"),
        (bench_cpu.STACK_SEQUENCES["lengths"], "float64", "4", "3"),
        (bench_cpu.STACK_SEQUENCES["lengths"], "float32", "4", "3")]
    columns = header[2:-2].split(" | ")
    ratios = [i for i, name in enumerate(columns) if name in ("ratio", "stack / cells")]
    assert len(ratios) == 3
    for c in cells:
        assert [c[i] for i in ratios] == ["1.00 (1.00-1.00)"] * 3
        assert len(c[-1].split(" / ")) == 3
    assert "packing it would add" in text
