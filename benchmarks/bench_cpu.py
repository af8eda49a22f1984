"""CPU benchmark of the Numba backend against the anchors measured in the same run.

    python benchmarks/bench_cpu.py                # full run (several minutes on 2 cores)
    python benchmarks/bench_cpu.py --quick        # smallest shapes only, fewer repeats
    python benchmarks/bench_cpu.py --family rnn   # the RNN family's tables alone
    python benchmarks/bench_cpu.py --family gru   # the GRU family's tables alone
    python benchmarks/bench_cpu.py --family stack # the 2-layer bidirectional LSTM stack alone

Three families of cells, each timed against its own anchors: the LSTM family (LSTM, BN-, SeqBN-,
LN-LSTM), the vanilla RNN family (RNN, BN-, SeqBN-, LN-RNN; tanh) and the GRU family (GRU, BN-,
SeqBN-, LN-GRU; reset after, the torch.nn.GRU form). G below is the width of the
pre-activation, 4H for the LSTM, H for the RNN and 3H for the GRU (GATES). One stack:
refnorm.Stack("lstm", H, H, num_layers=2, bidirectional=True) against torch.nn.LSTM(H, H,
num_layers=2, bidirectional=True) with the same weights, and against its own four cells run alone
(table_stack).

Anchors, all in this process, on the same threads:
  * torch.nn.LSTM / torch.nn.RNN (tanh) / torch.nn.GRU forward+backward and forward alone (the
    LSTM on oneDNN in float32, native in float64; the RNN native in both);
  * the BLAS floor: the matrix products the cell's BPTT must do, alone (input projection, one
    (B,H)·(H,G) product per step forward and one (B,G)·(G,H) backward, dWx, dWh, dx), through
    NumPy's BLAS: `@` for the whole-sequence products, and for the step products a direct
    ?gemm call into the same library from a compiled loop (blas_floor.py). refnorm does the
    whole-sequence products the same way, and the step products with its own kernel on a
    weight packed once per sequence, whose rate alone the product table also shows;
  * the best product rate: what this BLAS reaches on one large square product (or a floor, if
    faster), which bounds what any implementation of the same products could reach
    (table_product_bound);
  * the same normalised-cell equations in PyTorch eager with autograd, written the fast way
    (input projection once, time axis by unbind); tests/test_bench_timing.py checks that they
    give refnorm's outputs and gradients.
Ratios < 1 mean refnorm is faster. Times are medians of repeated runs after a warm-up; a ratio
is the median of the per-repeat ratios of two functions run side by side, with their lower and
upper quartiles in brackets: "0.70 (0.66-0.74)". Where a target lies between the quartiles, the
run does not decide it.
"""
import argparse
import ctypes
import ctypes.util
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import torch
from numba import njit

import refnorm
from refnorm.gradcheck import randomize
from refnorm.numba_cpu.common import pack_panels, packed_matmul, product_workspace
from refnorm.numba_cpu.norms import (batchnorm_backward, batchnorm_normalize, batchnorm_stats,
                                     layernorm_backward, layernorm_forward)

from blas_floor import gemm_for, matmul

SHAPES = [(16, 64), (32, 128), (64, 256), (128, 512)]
T_DEFAULT = 100
FAMILIES = {"lstm": ("bn_lstm", "seq_bn_lstm", "ln_lstm"),     # family: its normalised cells
            "rnn": ("bn_rnn", "seq_bn_rnn", "ln_rnn"),
            "gru": ("bn_gru", "seq_bn_gru", "ln_gru")}
GATES = {"lstm": 4, "rnn": 1, "gru": 3}     # the pre-activation z_t is (B, GATES·H)
NAMES = {"lstm": "LSTM", "rnn": "RNN", "gru": "GRU"}
# The clock every timing of this module reads, looked up at each call (tests/test_bench_timing.py
# puts a counter in its place, so the tests of these helpers time nothing).
clock = time.perf_counter


def median_time(fn, repeats, warmup=1):
    return interleaved_runs([fn], repeats, warmup)[0].time


def page_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Runs:
    """The per-repeat seconds and page faults of one function in interleaved_runs."""

    def __init__(self):
        self.times, self.faults = [], []

    @property
    def time(self):
        return statistics.median(self.times)

    @property
    def fault_count(self):
        return statistics.median(self.faults)

    def ratio(self, other):
        """self / other, paired repeat by repeat (the two ran within seconds of each other):
        (median, lower quartile, upper quartile) of the per-repeat ratios."""
        ratios = [a / b for a, b in zip(self.times, other.times)]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        return statistics.median(ratios), q1, q3


def spread(ratio, fmt="{:.2f}"):
    """'median (lower quartile-upper quartile)' of a paired ratio (Runs.ratio)."""
    median, q1, q3 = (fmt.format(v) for v in ratio)
    return f"{median} ({q1}-{q3})"


def interleaved_runs(fns, repeats, warmup=1):
    """The seconds and page faults of each function's calls (a Runs each), the functions run
    in turn within each repeat: this virtual machine's speed drifts by 10-20 % over minutes,
    and interleaving makes the drift hit every column of a ratio alike instead of whichever ran
    in a slow minute. Every other repeat runs them in reverse order, so that each function
    follows a different one half of the time: what a call inherits from the one before (the
    caches, memory another library has just freed) would otherwise favour a fixed side of each
    ratio (RESULTS.md, "How a ratio is measured": BN-LSTM/LSTM at (16, 64) in float32 read
    1.18-1.44 in a fixed order, 1.40-1.82 alternating). A call that writes memory
    the allocator has just returned to the system (or mapped anew) pays a fault per 4 KiB page,
    ~3-4 µs each here."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    runs = [Runs() for _ in fns]
    for repeat in range(repeats):
        order = list(zip(fns, runs))
        for fn, run in (order if repeat % 2 == 0 else order[::-1]):
            f0, start = page_faults(), clock()
            fn()
            run.times.append(clock() - start)
            run.faults.append(page_faults() - f0)
    return runs


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse (M_TRIM_THRESHOLD 1 GiB, M_MMAP_THRESHOLD
    32 MiB, its largest) instead of returning it to the system, for every library in the
    process alike. Without it, freeing and allocating in turn with another library (torch
    here) makes each call write fresh pages. Returns whether glibc accepted both settings."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD,
                                                                        32 << 20))


# -- refnorm ---------------------------------------------------------------------------------
def refnorm_case(stem, T, B, H, dtype, backend="numba"):
    cell = randomize(refnorm.CELLS[stem](H, H, seed=0, dtype=dtype, backend=backend), seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    kwargs = {"update_stats": False} if "bn" in stem else {}   # BN-, SeqBN- LSTM, RNN, GRU

    def fwd():
        return cell.forward(x, **kwargs)

    def fwd_bwd():
        hs, _, cache = cell.forward(x, **kwargs)
        return cell.backward(dhs, cache)

    return fwd, fwd_bwd


# -- the BLAS floor --------------------------------------------------------------------------
@njit(cache=True)
def _step_products(gemm, h, Wh, dz, out_f, out_b):
    for t in range(h.shape[0]):
        matmul(gemm, h[t], Wh, out_f)                      # forward recurrent product
        matmul(gemm, dz[t], Wh, out_b, transpose_b=True)   # backward recurrent product


@njit(cache=True)
def _kernel_step_products(h, Whp, WhTp, dz, out_f, out_b):
    work_f = product_workspace(h.shape[1], h.shape[2], Whp)
    work_b = product_workspace(dz.shape[1], dz.shape[2], WhTp)
    for t in range(h.shape[0]):
        packed_matmul(h[t], Whp, out_f, work_f)             # forward recurrent product
        packed_matmul(dz[t], WhTp, out_b, work_b)           # backward recurrent product


def blas_floor_case(T, B, H, dtype, gates=4):
    """The products of BPTT for a pre-activation of width G = gates·H (4 for the LSTM, 1 for
    the RNN, 3 for the GRU, whose step products are h_{t-1} Wh and dw_t Whᵀ over all 3H),
    D = H: the whole and its two halves timed apart, and the step products in
    refnorm's kernel."""
    rng = np.random.default_rng(0)
    D, G = H, gates * H
    x = rng.standard_normal((T, B, D)).astype(dtype)
    Wx = rng.standard_normal((D, G)).astype(dtype)
    Wh = rng.standard_normal((H, G)).astype(dtype)
    h = rng.standard_normal((T, B, H)).astype(dtype)
    dz = rng.standard_normal((T, B, G)).astype(dtype)
    out_f, out_b = np.empty((B, G), dtype), np.empty((B, H), dtype)
    gemm = gemm_for(dtype)

    def step_products():
        _step_products(gemm, h, Wh, dz, out_f, out_b)       # T forward + T backward products

    def kernel_step_products():
        _kernel_step_products(h, pack_panels(Wh), pack_panels(Wh.T), dz, out_f,
                              out_b)   # the same in refnorm's kernel, packing once as it does

    def whole_sequence_products():
        x.reshape(-1, D) @ Wx                               # input projection
        x.reshape(-1, D).T @ dz.reshape(-1, G)              # dWx
        h.reshape(-1, H).T @ dz.reshape(-1, G)              # dWh
        dz.reshape(-1, G) @ Wx.T                            # dx (one product, as refnorm's)

    def products():
        whole_sequence_products()
        step_products()

    return products, step_products, whole_sequence_products, kernel_step_products


# -- torch -----------------------------------------------------------------------------------
def torch_case(family, T, B, H, dtype):
    """torch.nn.LSTM, torch.nn.RNN with tanh, or torch.nn.GRU, D = H: its forward alone
    (no_grad) and its forward+backward."""
    tdt = getattr(torch, dtype)
    module = (torch.nn.LSTM(H, H) if family == "lstm" else torch.nn.GRU(H, H) if family == "gru"
              else torch.nn.RNN(H, H, nonlinearity="tanh")).to(tdt)
    x = torch.randn(T, B, H, dtype=tdt, requires_grad=True)
    dhs = torch.randn(T, B, H, dtype=tdt)

    def fwd():
        with torch.no_grad():
            return module(x)

    def fwd_bwd():
        out, _ = module(x)
        out.backward(dhs)

    return fwd, fwd_bwd


def _bn(z, gamma, beta, eps):
    mean = z.mean(0)
    var = ((z - mean) ** 2).mean(0)
    return gamma * (z - mean) / torch.sqrt(var + eps) + beta


def _ln(z, gamma, beta, eps):
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return gamma * (z - mean) / torch.sqrt(var + eps) + beta


def torch_eager_cell(stem, x, p, eps=1e-5):
    """The cell's equations in PyTorch eager, the fast way: the input projection once, the time
    axis by unbind (indexing x[t] makes backward allocate a full zero tensor per step). Zero
    initial states, no mask, batch statistics (training), tanh; `p` the cell's parameters as
    tensors. Returns hs (T, B, H)."""
    if stem.endswith("rnn"):
        return torch_eager_rnn(stem, x, p, eps)
    if stem.endswith("gru"):
        return torch_eager_gru(stem, x, p, eps)
    T, B, _ = x.shape
    H = p["Wh"].shape[0]
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    U = x @ p["Wx"]
    if stem == "seq_bn_lstm":
        U = _bn(U.reshape(T * B, -1), p["gamma_x"], 0.0, eps).reshape(T, B, -1)
    outs = []
    for u in U.unbind(0):
        a = h @ p["Wh"]
        if stem == "bn_lstm":
            z = _bn(a, p["gamma_h"], 0.0, eps) + _bn(u, p["gamma_x"], 0.0, eps) + p["b"]
        elif stem == "ln_lstm":
            z = _ln(a, p["gamma_h"], 0.0, eps) + _ln(u, p["gamma_x"], 0.0, eps) + p["b"]
        else:
            z = a + u + p["b"]
        i, f, g, o = z.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        cn = c
        if stem == "bn_lstm":
            cn = _bn(c, p["gamma_c"], p["beta_c"], eps)
        elif stem == "ln_lstm":
            cn = _ln(c, p["gamma_c"], p["beta_c"], eps)
        h = torch.sigmoid(o) * torch.tanh(cn)
        outs.append(h)
    return torch.stack(outs)


def torch_eager_rnn(stem, x, p, eps=1e-5):
    """The RNN family's equations (refnorm/numpy_ref/<stem>.py); the term form BN- and LN-RNN
    were built with is read from their gains: gamma_z alone is the summed form, BN or LN of
    u_t + a_t (BN-RNN 3), (LN-RNN 2); gamma_x and gamma_h the separate form (BN-RNN 2),
    (LN-RNN 3)."""
    T, B, _ = x.shape
    h = x.new_zeros(B, p["Wh"].shape[0])
    norm = _ln if stem == "ln_rnn" else _bn
    U = x @ p["Wx"]                                               # u_t = x_t Wx, all t
    if stem == "seq_bn_rnn":                                      # (SEQBN-RNN 1)
        U = _bn(U.reshape(T * B, -1), p["gamma_x"], 0.0, eps).reshape(T, B, -1)
    outs = []
    for u in U.unbind(0):
        a = h @ p["Wh"]                                           # a_t = h_{t-1} Wh
        if stem in ("bn_rnn", "ln_rnn") and "gamma_z" in p:       # summed terms
            z = norm(u + a, p["gamma_z"], 0.0, eps) + p["b"]
        elif stem in ("bn_rnn", "ln_rnn"):                        # separate terms
            z = norm(u, p["gamma_x"], 0.0, eps) + norm(a, p["gamma_h"], 0.0, eps) + p["b"]
        else:                                                     # (RNN 1), (SEQBN-RNN 2)
            z = u + a + p["b"]
        h = torch.tanh(z)                                         # (RNN 2)
        outs.append(h)
    return torch.stack(outs)


def torch_eager_gru(stem, x, p, eps=1e-5):
    """The GRU family's equations, reset after (refnorm/numpy_ref/<stem>.py): BN- and LN-GRU
    normalise u_t and a_t apart over all 3H (gains gamma_x, gamma_h, no shift), SeqBN-GRU
    normalises U over all T·B frames; b is added to the input side, b_hn to a^n inside r ⊙ ·."""
    T, B, _ = x.shape
    H = p["Wh"].shape[0]
    h = x.new_zeros(B, H)
    U = x @ p["Wx"]                                               # u_t = x_t Wx, all t
    if stem == "seq_bn_gru":                                      # (SEQBN-GRU 1)
        U = _bn(U.reshape(T * B, -1), p["gamma_x"], 0.0, eps).reshape(T, B, -1)
    outs = []
    for u in U.unbind(0):
        a = h @ p["Wh"]                                           # a_t = h_{t-1} Wh
        if stem == "bn_gru":                                      # (BN-GRU 2)
            v, w = _bn(u, p["gamma_x"], 0.0, eps) + p["b"], _bn(a, p["gamma_h"], 0.0, eps)
        elif stem == "ln_gru":                                    # (LN-GRU 2)
            v, w = _ln(u, p["gamma_x"], 0.0, eps) + p["b"], _ln(a, p["gamma_h"], 0.0, eps)
        else:                                                     # (GRU 1), (SEQBN-GRU 2)
            v, w = u + p["b"], a
        vr, vz, vn = v.chunk(3, dim=1)
        wr, wz, wn = w.chunk(3, dim=1)
        r, z = torch.sigmoid(vr + wr), torch.sigmoid(vz + wz)     # (GRU 2)
        n = torch.tanh(vn + r * (wn + p["b_hn"]))                 # (GRU 3)
        h = (1 - z) * n + z * h                                   # (GRU 5)
        outs.append(h)
    return torch.stack(outs)


def torch_eager_case(stem, T, B, H, dtype):
    cell = randomize(refnorm.CELLS[stem](H, H, seed=0, dtype=dtype), seed=1)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in cell.params.items()}
    x = torch.randn(T, B, H, dtype=getattr(torch, dtype), requires_grad=True)
    dhs = torch.randn(T, B, H, dtype=getattr(torch, dtype))

    def fwd_bwd():
        torch_eager_cell(stem, x, p).backward(dhs)

    return fwd_bwd


# -- tables ----------------------------------------------------------------------------------
def row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def product_flops(T, B, H, gates=4):
    """Floating-point operations of the matrix products a cell's BPTT must do (D = H, G =
    gates·H: 4H for the LSTM, H for the RNN, 3H for the GRU): six of (T·B)×H×G, i.e. x Wx and
    the T products h_{t-1} Wh forward, the T products dz_t Whᵀ, dWx, dWh and dx backward, two
    operations per multiply-add."""
    return 6 * 2 * T * B * H * gates * H


STEP_SHARE = 2 / 6   # of product_flops: the 2T step products; the other 4 are whole-sequence
FORWARD_SHARE = 2 / 6   # of product_flops: the forward's, x Wx and the T products h_{t-1} Wh


def gemm_ceiling(dtype, n=1536, repeats=5):
    """What this BLAS reaches on one large square product (n×n by n×n, NumPy's BLAS, output
    preallocated), in FLOP/s: the products of a cell, smaller and thinner, do not run faster
    (a floor measured in a faster minute can: table_product_bound takes the larger)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    c = np.empty((n, n), dtype)
    return 2 * n ** 3 / median_time(lambda: np.matmul(a, b, out=c), repeats)


def table_product_bound(measured, T, out, family="lstm"):
    """For each shape: the products' FLOPs, the rate the BLAS floor and refnorm reach, and the
    best ratio to torch any implementation could reach if it did the products at the best rate
    this BLAS showed in the run (the large square product, or a floor that beat it) and nothing
    else -- where that bound exceeds a target, the target is out of reach on this machine with
    this BLAS whatever the code around the products does. The floor's rate is also split: its
    2T step products (a third of the FLOPs, one small product per call, each packing Wh anew)
    and its four whole-sequence products, timed apart in the same interleaved runs; and the
    same 2T step products in refnorm's own kernel (packing Wh and Whᵀ once, as a call does).
    The last column bounds the forward alone the same way: its products (x Wx and the T step
    products, a third of the FLOPs) at the best rate, against torch's forward. `measured` is
    what table_vs_torch returned for `family`."""
    gates = GATES[family]
    print(f"\n## What the matrix products allow, {NAMES[family]} (same runs as above)\n",
          file=out)
    print(row(["dtype", "B", "H", "GFLOP per fwd+bwd", "BLAS floor GFLOP/s",
               "its 2T step products GFLOP/s", "its 4 whole-sequence products GFLOP/s",
               "the 2T step products in refnorm's kernel GFLOP/s", "refnorm GFLOP/s", "best product rate GFLOP/s",
               "least possible time / torch fwd+bwd", "least possible forward / torch fwd"]),
          file=out)
    print(row(["---"] * 12), file=out)
    ceiling = {}
    for dtype in ("float64", "float32"):
        floors = [product_flops(T, B, H, gates) / fl
                  for dt, B, H, _, _, fl, _, _, _, _ in measured if dt == dtype]
        ceiling[dtype] = max([gemm_ceiling(dtype)] + floors)
    for dtype, B, H, r_fb, t_fb, fl, step, whole, kernel, t_f in measured:
        flops = product_flops(T, B, H, gates)
        print(row([dtype, B, H, f"{flops / 1e9:.2f}", f"{flops / fl / 1e9:.1f}",
                   f"{STEP_SHARE * flops / step / 1e9:.1f}",
                   f"{(1 - STEP_SHARE) * flops / whole / 1e9:.1f}",
                   f"{STEP_SHARE * flops / kernel / 1e9:.1f}",
                   f"{flops / r_fb / 1e9:.1f}", f"{ceiling[dtype] / 1e9:.1f}",
                   f"{flops / ceiling[dtype] / t_fb:.2f}",
                   f"{FORWARD_SHARE * flops / ceiling[dtype] / t_f:.2f}"]), file=out)


def table_vs_torch(shapes, T, repeats, out, family="lstm"):
    """refnorm's LSTM (family "lstm"), tanh RNN ("rnn") or GRU ("gru") against torch.nn.LSTM /
    torch.nn.RNN / torch.nn.GRU and the BLAS floor of the same family. Prints the table;
    returns per shape (dtype, B, H) and the seconds of refnorm, torch, the floor, the floor's
    step and whole-sequence products timed apart, the same step products in refnorm's kernel, and torch's forward alone."""
    name = NAMES[family]
    anchor = f"torch.nn.{name}" + (" (tanh)" if family == "rnn" else "")
    print(f"\n## {name}: refnorm numba vs {anchor} and the BLAS floor "
          f"(T={T}, D=H, ms, median of {repeats}; ratios: median (quartiles) of the per-repeat "
          "ratios)\n", file=out)
    print(row(["dtype", "B", "H", "refnorm fwd+bwd", "torch fwd+bwd", "ratio",
               "BLAS floor", "ratio", "refnorm fwd", "torch fwd", "ratio",
               "page faults per fwd+bwd (refnorm / torch)"]), file=out)
    print(row(["---"] * 12), file=out)
    measured = []
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            fwd, fb = refnorm_case(family, T, B, H, dtype)
            tf, tfb = torch_case(family, T, B, H, dtype)
            floor, step, whole, kernel = blas_floor_case(T, B, H, dtype, GATES[family])
            r_fb, t_fb, fl, r_f, t_f, st, wh, kn = interleaved_runs(
                [fb, tfb, floor, fwd, tf, step, whole, kernel], repeats)
            print(row([dtype, B, H, f"{r_fb.time * 1e3:.2f}", f"{t_fb.time * 1e3:.2f}",
                       spread(r_fb.ratio(t_fb)), f"{fl.time * 1e3:.2f}", spread(r_fb.ratio(fl)),
                       f"{r_f.time * 1e3:.2f}", f"{t_f.time * 1e3:.2f}", spread(r_f.ratio(t_f)),
                       f"{r_fb.fault_count:.0f} / {t_fb.fault_count:.0f}"]), file=out)
            out.flush()
            measured.append((dtype, B, H) + tuple(r.time for r in (r_fb, t_fb, fl, st, wh, kn,
                                                                    t_f)))
    return measured


def table_norm_cells(shapes, T, repeats, out, family="lstm"):
    """The family's normalised cells (FAMILIES; the cells' default options: BN-RNN separate
    terms, LN-RNN summed, the GRUs reset after) against the family's plain cell in refnorm and
    against the same equations in PyTorch eager, the three interleaved."""
    name = NAMES[family]
    print(f"\n## Normalised cells on numba: fwd+bwd vs refnorm's {name} and vs the same "
          f"equations in PyTorch eager (T={T}, ms, median of {repeats}; ratios: median "
          "(quartiles) of the per-repeat ratios)\n", file=out)
    print(row(["dtype", "B", "H", "cell", "refnorm", f"vs refnorm {name}", "torch eager",
               "speed-up vs eager", f"page faults per fwd+bwd ({name} / cell)"]), file=out)
    print(row(["---"] * 9), file=out)
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            for stem in FAMILIES[family]:
                base, mine, eager = interleaved_runs(
                    [refnorm_case(family, T, B, H, dtype)[1], refnorm_case(stem, T, B, H, dtype)[1],
                     torch_eager_case(stem, T, B, H, dtype)], repeats)
                print(row([dtype, B, H, stem, f"{mine.time * 1e3:.2f}", spread(mine.ratio(base)),
                           f"{eager.time * 1e3:.2f}", spread(eager.ratio(mine), "{:.1f}x"),
                           f"{base.fault_count:.0f} / {mine.fault_count:.0f}"]), file=out)
                out.flush()


# -- threads ----------------------------------------------------------------------------------
THREAD_COUNTS = (1, 2)
TARGETS = {"float32": 1.0, "float64": 0.8}   # refnorm / torch.nn.LSTM, fwd+bwd, every shape
SPEEDUP_TARGET = 1.6                         # 2 threads vs 1, at (64, 256) and above
NORM_TARGET = 1.3                            # normalised cell / refnorm's LSTM, (32, 128) up


class Threads:
    """Sets the threads of torch and of every BLAS the process has loaded (NumPy's, which
    refnorm follows, included), cheaply enough to do before each timed call: the library
    controllers are found once."""

    def __init__(self):
        from threadpoolctl import ThreadpoolController
        self.blas = [c for c in ThreadpoolController().lib_controllers
                     if c.user_api in ("blas", "openmp")]

    def set(self, n):
        for c in self.blas:
            c.set_num_threads(n)
        torch.set_num_threads(n)

    def on(self, n, fn):
        """fn run on n threads (the setting is made before the clock starts only in the
        sense that it costs microseconds; it is inside the timed call)."""
        def run():
            self.set(n)
            return fn()
        return run


def per_core_rate(dtype, threads):
    """The best product rate per core this run can claim: the large square product on one
    thread (gemm_ceiling), measured with the BLAS on one thread."""
    threads.set(1)
    return gemm_ceiling(dtype)


def table_threads(shapes, T, repeats, out, counts=THREAD_COUNTS):
    """The LSTM on 1 and 2 threads against torch.nn.LSTM on as many, all four interleaved in one
    run per shape: each function sets the thread count of torch and the BLAS (refnorm follows
    the BLAS's, refnorm/numba_cpu/threads.py) before it runs. Columns: the ratio to torch at
    each count against its target (float32 <= 1.0, float64 <= 0.8), refnorm's and torch's
    speed-up from one thread to two (paired per repeat; target >= 1.6 for refnorm at (64, 256)
    and above), and the physical limit: the FLOPs of the products (product_flops) at the best
    per-core product rate of this run times the thread count, against torch's time at that
    count -- no implementation doing these products can be faster than that ratio."""
    threads = Threads()
    rate = {dt: per_core_rate(dt, threads) for dt in ("float64", "float32")}
    print(f"\n## LSTM on {' and '.join(map(str, counts))} threads: refnorm numba vs "
          f"torch.nn.LSTM on as many (T={T}, D=H, fwd+bwd, ms, median of {repeats}; ratios: "
          "median (quartiles) of the per-repeat ratios; best product rate per core: "
          + ", ".join(f"{dt} {rate[dt] / 1e9:.0f} GFLOP/s" for dt in rate) + ")\n", file=out)
    head = ["dtype", "B", "H"]
    for n in counts:
        head += [f"refnorm {n}t", f"torch {n}t", f"ratio {n}t", f"least possible / torch {n}t"]
    head += [f"refnorm {counts[0]}t / {counts[-1]}t", f"torch {counts[0]}t / {counts[-1]}t",
             "plan", "targets met"]
    print(row(head), file=out)
    print(row(["---"] * len(head)), file=out)
    results = []
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            fb = refnorm_case("lstm", T, B, H, dtype)[1]
            for n in counts:                  # the planner measures now, before torch runs
                threads.on(n, fb)()
            tfb = torch_case("lstm", T, B, H, dtype)[1]
            fns = [f for n in counts for f in (threads.on(n, fb), threads.on(n, tfb))]
            runs = interleaved_runs(fns, repeats)
            cells, met = [dtype, B, H], []
            flops = product_flops(T, B, H)
            for k, n in enumerate(counts):
                mine, theirs = runs[2 * k], runs[2 * k + 1]
                ratio = mine.ratio(theirs)
                least = flops / (n * rate[dtype]) / theirs.time
                cells += [f"{mine.time * 1e3:.2f}", f"{theirs.time * 1e3:.2f}", spread(ratio),
                          f"{least:.2f}"]
                met.append(f"{n}t {'yes' if ratio[0] <= TARGETS[dtype] else 'NO'}")
            speed_mine = runs[0].ratio(runs[-2])
            speed_torch = runs[1].ratio(runs[-1])
            cells += [spread(speed_mine, "{:.2f}x"), spread(speed_torch, "{:.2f}x"),
                      plan_text("lstm", dtype, B, H, counts[-1])]
            if B * H >= 64 * 256:
                met.append(f"speed-up {'yes' if speed_mine[0] >= SPEEDUP_TARGET else 'NO'}")
            print(row(cells + [", ".join(met)]), file=out)
            out.flush()
            results.append((dtype, B, H, runs))
    threads.set(counts[0])
    return results


def plan_text(stem, dtype, B, H, n):
    """What refnorm's planner chose on this machine for `stem` at (B, H): the step loops on n
    threads or one, and the step products' kernel width forward (Wh) and backward (Whᵀ)."""
    from refnorm.numba_cpu import planner
    G = GATES[FAMILIES_OF[stem]] * H
    split = planner.split_pays(stem, dtype, B, H, n)
    widths = [planner.vector_bytes(dtype, K, N) for K, N in ((H, G), (G, H))]
    return f"{'split' if split else 'one'}, {widths[0]}/{widths[1]} B"


FAMILIES_OF = {stem: family for family, stems in FAMILIES.items() for stem in (family,) + stems}


def table_norm_threads(shapes, T, repeats, out, counts=THREAD_COUNTS, family="lstm"):
    """A family's normalised cells against refnorm's own cell of that family (the LSTM's
    target: <= 1.3x at (32, 128) and above) at each thread count, the two interleaved per
    count."""
    threads = Threads()
    name = NAMES[family]
    target = f"; target <= {NORM_TARGET}x" if family == "lstm" else ""
    print(f"\n## Normalised {name}s vs refnorm's {name} on {' and '.join(map(str, counts))} "
          f"threads (T={T}, fwd+bwd, ms, median of {repeats}{target})\n", file=out)
    head = ["dtype", "B", "H", "cell"]
    for n in counts:
        head += [f"cell {n}t", f"vs {name} {n}t"]
    head.append("plan")
    print(row(head), file=out)
    print(row(["---"] * len(head)), file=out)
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            base = refnorm_case(family, T, B, H, dtype)[1]
            for stem in FAMILIES[family]:
                mine = refnorm_case(stem, T, B, H, dtype)[1]
                for n in counts:              # the planner measures now
                    threads.on(n, mine)()
                runs = interleaved_runs([f for n in counts for f in (threads.on(n, base),
                                                                     threads.on(n, mine))],
                                        repeats)
                cells = [dtype, B, H, stem]
                for k, n in enumerate(counts):
                    cells += [f"{runs[2 * k + 1].time * 1e3:.2f}",
                              spread(runs[2 * k + 1].ratio(runs[2 * k]))]
                cells.append(plan_text(stem, dtype, B, H, counts[-1]))
                print(row(cells), file=out)
                out.flush()
    threads.set(counts[0])


# -- the stack ---------------------------------------------------------------------------------
STACK_LAYERS = 2


def stack_lengths(T, B, seed=0):
    """The lengths of the stack table's rows with lengths: B lengths drawn uniformly from
    [T/2, T], the first T, so that torch's padded output is T steps long as refnorm's is."""
    n = np.random.default_rng(seed).integers(T // 2, T + 1, B)
    n[0] = T
    return n


def stack_params_from_torch(module, dtype):
    """refnorm.Stack's params of a torch.nn.LSTM(num_layers=L, bidirectional=True), copied by
    hand: weight_ih_l{k}[_reverse] (4H, D_k) -> "l{k}.{fwd|bwd}.Wx" = its transpose, weight_hh ->
    Wh = its transpose, b = bias_ih + bias_hh; the gate order i, f, g, o is both's."""
    params = {}
    for layer in range(module.num_layers):
        for d, suffix in (("fwd", ""), ("bwd", "_reverse")):
            def get(name):
                return getattr(module, f"{name}_l{layer}{suffix}").detach().numpy()
            params[f"l{layer}.{d}.Wx"] = np.array(get("weight_ih").T, dtype=dtype, order="C")
            params[f"l{layer}.{d}.Wh"] = np.array(get("weight_hh").T, dtype=dtype, order="C")
            params[f"l{layer}.{d}.b"] = np.array(get("bias_ih") + get("bias_hh"), dtype=dtype)
    return params


def stack_case(T, B, H, dtype, lengths=None, D=None):
    """refnorm.Stack("lstm", D, H, num_layers=2, bidirectional=True) on numba and
    torch.nn.LSTM(D, H, num_layers=2, bidirectional=True) with the same weights (torch's,
    stack_params_from_torch), the same time-major input x (T, B, D) (D = H unless given) and
    the same upstream gradient of the outputs dys (T, B, 2H); zero initial states. lengths=None:
    every sequence of length T, torch given the padded tensor as is; else refnorm is given
    `lengths` and torch the same sequences packed (pack_padded_sequence with
    enforce_sorted=False, the module, pad_packed_sequence to T steps, all inside the timed
    call). The anchor `cells_fwd_bwd` runs the four cells of such a stack alone, one after
    another, each refnorm.LSTM on numba at its own input size (D in layer 0, 2H in layer 1)
    with the stack's weights and the same lengths: forward+backward on inputs and upstream
    gradients of the shapes the stack gives them. Returns a namespace of the functions (their
    results: refnorm's forward and torch's (out, (h_n, c_n)); refnorm's fwd_bwd its grads) and
    of what they run on."""
    from types import SimpleNamespace

    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    D = H if D is None else D
    tdt = getattr(torch, dtype)
    torch.manual_seed(0)
    module = torch.nn.LSTM(D, H, num_layers=STACK_LAYERS, bidirectional=True).to(tdt)
    net = refnorm.Stack("lstm", D, H, num_layers=STACK_LAYERS, bidirectional=True, dtype=dtype,
                        backend="numba")
    net.params = stack_params_from_torch(module, dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    dys = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    dyst = torch.tensor(dys)
    kwargs = {} if lengths is None else {"lengths": np.asarray(lengths)}
    nt = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.int64)

    def torch_run():
        if nt is None:
            return module(xt)
        out, states = module(pack_padded_sequence(xt, nt, enforce_sorted=False))
        return pad_packed_sequence(out, total_length=T)[0], states

    def torch_fwd():
        with torch.no_grad():
            return torch_run()

    def torch_fwd_bwd():
        out, states = torch_run()
        out.backward(dyst)
        return out, states

    def fwd():
        return net.forward(x, **kwargs)

    def fwd_bwd():
        _, _, cache = net.forward(x, **kwargs)
        return net.backward(dys, cache)

    cells = []                                    # (cell, its input, its upstream gradient)
    for layer in range(STACK_LAYERS):
        D_k = D if layer == 0 else 2 * H
        for d in ("fwd", "bwd"):
            cell = refnorm.LSTM(D_k, H, seed=0, dtype=dtype, backend="numba")
            cell.params = {name: net.params[f"l{layer}.{d}.{name}"].copy() for name in cell.params}
            cells.append((cell, x if layer == 0 else rng.standard_normal((T, B, D_k)).astype(dtype),
                          rng.standard_normal((T, B, H)).astype(dtype)))

    def cells_fwd_bwd():
        for cell, inp, dhs in cells:
            _, _, cache = cell.forward(inp, **kwargs)
            cell.backward(dhs, cache)

    return SimpleNamespace(fwd=fwd, fwd_bwd=fwd_bwd, torch_fwd=torch_fwd,
                           torch_fwd_bwd=torch_fwd_bwd, cells_fwd_bwd=cells_fwd_bwd, net=net,
                           module=module, cells=cells, x=x, dys=dys, xt=xt, lengths=lengths)


STACK_TITLE = ("Stack: refnorm numba 2-layer bidirectional LSTM vs "
               "torch.nn.LSTM(num_layers=2, bidirectional=True)")
STACK_SEQUENCES = {None: "all T", "lengths": "lengths T/2 to T, packed in torch"}


def table_stack(shapes, length_shapes, T, repeats, out):
    """refnorm.Stack("lstm", H, H, num_layers=2, bidirectional=True) on numba against
    torch.nn.LSTM(H, H, num_layers=2, bidirectional=True) (stack_case): forward+backward and the
    forward alone (torch's under no_grad), and the four cells of the stack run alone (the
    anchor of what the stack adds to them), all five interleaved. Rows for full-length
    sequences at `shapes`, then rows with lengths (packed in torch) at `length_shapes`."""
    print(f"\n## {STACK_TITLE} (T={T}, D=H, ms, median of {repeats}; ratios: median "
          "(quartiles) of the per-repeat ratios)\n", file=out)
    print(row(["sequences", "dtype", "B", "H", "refnorm fwd+bwd", "torch fwd+bwd", "ratio",
               "its 4 cells alone fwd+bwd", "stack / cells", "refnorm fwd", "torch fwd",
               "ratio", "page faults per fwd+bwd (refnorm / cells / torch)"]), file=out)
    print(row(["---"] * 13), file=out)
    for kind, kind_shapes in ((None, shapes), ("lengths", length_shapes)):
        for dtype in ("float64", "float32"):
            for B, H in kind_shapes:
                case = stack_case(T, B, H, dtype, None if kind is None else stack_lengths(T, B))
                r_fb, t_fb, c_fb, r_f, t_f = interleaved_runs(
                    [case.fwd_bwd, case.torch_fwd_bwd, case.cells_fwd_bwd, case.fwd,
                     case.torch_fwd], repeats)
                print(row([STACK_SEQUENCES[kind], dtype, B, H, f"{r_fb.time * 1e3:.2f}",
                           f"{t_fb.time * 1e3:.2f}", spread(r_fb.ratio(t_fb)),
                           f"{c_fb.time * 1e3:.2f}", spread(r_fb.ratio(c_fb)),
                           f"{r_f.time * 1e3:.2f}", f"{t_f.time * 1e3:.2f}",
                           spread(r_f.ratio(t_f)), f"{r_fb.fault_count:.0f} / "
                           f"{c_fb.fault_count:.0f} / {t_fb.fault_count:.0f}"]), file=out)
                out.flush()
    print("\n\"all T\": every sequence T steps long and no lengths given to either side, torch "
          "running the padded tensor as it is: packing it would add pack_padded_sequence, a sort "
          "and pad_packed_sequence to torch's time, work refnorm does not do. \"lengths\": B "
          "lengths drawn from [T/2, T] (the first T), refnorm given them as lengths=, torch the "
          "same sequences packed (enforce_sorted=False; packing and unpacking timed with the "
          "call). \"its 4 cells alone\": the stack's four refnorm LSTM cells on numba (input size "
          "D in layer 0, 2H in layer 1, the same lengths), each called alone, forward then "
          "backward, one after another; stack / cells is what the stack adds to its cells: the "
          "reversals within the lengths, the concatenation of the two directions, the split and "
          "sum of the gradients, NumPy glue.", file=out)


def table_vs_book(shapes, T, repeats, out):
    """The Numba backend against the NumPy reference (the book) it is checked against, each
    cell's forward+backward in the same process, interleaved (this timing was once a guard in
    tests/test_numba_backend.py: "numba must not be slower than twice the book")."""
    print("\n## Numba backend vs the NumPy reference: fwd+bwd "
          f"(T={T}, D=H, ms, median of {repeats}; ratio numba / numpy: median (quartiles) of "
          "the per-repeat ratios)\n", file=out)
    print(row(["dtype", "B", "H", "cell", "numba", "numpy", "ratio"]), file=out)
    print(row(["---"] * 7), file=out)
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            for stem in ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"):
                fast, book = interleaved_runs(
                    [refnorm_case(stem, T, B, H, dtype)[1],
                     refnorm_case(stem, T, B, H, dtype, backend="numpy")[1]], repeats)
                print(row([dtype, B, H, stem, f"{fast.time * 1e3:.2f}",
                           f"{book.time * 1e3:.2f}", spread(fast.ratio(book))]), file=out)
                out.flush()


class PhaseTimer:
    """Times the phases of the numba cells' forward+backward where they run, by wrapping the
    module-level functions the cells call (while in use; `with PhaseTimer() as timer:`): the
    input projection, the forward and backward step loops (their step products included), the
    weight-gradient products dWx, dWh, dx, and SeqBN-LSTM's batch-norm passes over all T·B
    frames. `timer.cell` names the cell whose call is running; seconds accumulate per (cell,
    phase)."""
    PHASES = ("input projection", "forward loop", "backward loop", "dWx, dWh, dx products",
              "batch x time normalisation")

    def __init__(self):
        from refnorm.numba_cpu import bn_lstm, common, ln_lstm, lstm, seq_bn_lstm
        cells = (lstm, bn_lstm, ln_lstm)
        self.targets = [(mod, "input_projection", self.PHASES[0]) for mod in cells]
        self.targets += [(mod, f"{mod.__name__.split('.')[-1]}_{way}_loop", self.PHASES[phase])
                         for mod in cells for way, phase in (("forward", 1), ("backward", 2))]
        self.targets.append((common, "add_weight_grads", self.PHASES[3]))
        # SeqBN-LSTM runs the LSTM's loops through lstm.forward_rows / backward_rows (timed by
        # the LSTM's entries above), and the products by the names it imported
        self.targets += [(seq_bn_lstm, name, self.PHASES[phase]) for name, phase in (
            ("input_projection", 0),
            ("add_recurrent_weight_grad", 3), ("add_input_grads", 3), ("batchnorm_stats", 4),
            ("batchnorm_normalize", 4), ("batchnorm_backward", 4))]
        self.cell, self.seconds, self.saved = None, {}, []

    def _wrap(self, fn, phase):
        def timed(*args, **kwargs):
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                key = (self.cell, phase)
                self.seconds[key] = self.seconds.get(key, 0.0) + clock() - start
        return timed

    def __enter__(self):
        for mod, name, phase in self.targets:
            fn = getattr(mod, name)
            self.saved.append((mod, name, fn))
            setattr(mod, name, self._wrap(fn, phase))
        return self

    def __exit__(self, *exc):
        for mod, name, fn in reversed(self.saved):
            setattr(mod, name, fn)
        self.saved.clear()


def table_phases(shapes, T, repeats, out):
    """Where the normalised cells' extra time goes: each phase of a forward+backward (median
    over interleaved repeats, in reverse order every other repeat) for each cell, and the rest
    of the call (Python, argument checks, allocation, SeqBN-LSTM's γ_x ⊙ û; the population
    statistics are not updated, as in every table). The step loops hold the step products; BN-
    and LN-LSTM's normalisation and its backward run inside them, SeqBN-LSTM's apart."""
    print("\n## Where the time goes: phases of one forward+backward (T="
          f"{T}, ms, median of {repeats})\n", file=out)
    print(row(["dtype", "B", "H", "cell", "total", "vs LSTM"] + list(PhaseTimer.PHASES)
              + ["the rest"]), file=out)
    print(row(["---"] * (7 + len(PhaseTimer.PHASES))), file=out)
    stems = ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm")
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            with PhaseTimer() as timer:
                cases = [refnorm_case(stem, T, B, H, dtype)[1] for stem in stems]
                for fn in cases:
                    fn()
                per_call = {}

                def run(stem, fn):
                    def call():
                        timer.cell, timer.seconds = stem, {}
                        fn()
                        per_call.setdefault(stem, []).append(dict(timer.seconds))
                    return call
                runs = interleaved_runs([run(s, f) for s, f in zip(stems, cases)], repeats,
                                        warmup=0)
            for stem, r in zip(stems, runs):
                parts = [statistics.median(c.get((stem, ph), 0.0) for c in per_call[stem])
                         for ph in PhaseTimer.PHASES]
                rest = statistics.median(t - sum(c.values())
                                         for t, c in zip(r.times, per_call[stem]))
                print(row([dtype, B, H, stem, f"{r.time * 1e3:.2f}", spread(r.ratio(runs[0]))]
                          + [f"{v * 1e3:.2f}" for v in parts] + [f"{rest * 1e3:.2f}"]),
                      file=out)
            out.flush()


# -- the normalisation alone, hot ----------------------------------------------------------------
# The phase table says where BN- and LN-LSTM's time goes, not how little it could be. These loops
# make one step's normalisation calls of each cell, in the order its two step loops make them
# (training, carry="raw", separate terms, one group), T times over on one step's arrays, which
# then stay in L1/L2 and share the core with no other pass: what those calls cost at the least,
# in any step loop that makes them. table_normalisation sets it against the time the 1.25x
# target leaves the normalised cells beyond refnorm's LSTM, a quarter of the LSTM's own time.
@njit(cache=True)
def _bn_lstm_normalisation(T, eps, m, a, u, c_new, mean_h, var_h, mean_x, var_x, mean_c, var_c,
                           a_hat, u_hat, c_hat, gamma_h, gamma_x, gamma_c, dz, dc_in, dA, dU,
                           dc_norm, dgamma_h, dgamma_x, dgamma_c, dbeta_c):
    no_beta = np.empty(0, dz.dtype)
    for _ in range(T):
        batchnorm_stats(a, m, mean_h, var_h)               # bn_lstm_forward_loop
        batchnorm_stats(u, m, mean_x, var_x)
        batchnorm_normalize(a, m, mean_h, var_h, eps, a_hat)
        batchnorm_normalize(u, m, mean_x, var_x, eps, u_hat)
        batchnorm_stats(c_new, m, mean_c, var_c)
        batchnorm_normalize(c_new, m, mean_c, var_c, eps, c_hat)
        batchnorm_backward(dc_in, c_hat, var_c, m, gamma_c, eps, True, dc_norm, dgamma_c,
                           dbeta_c)                        # bn_lstm_backward_loop
        batchnorm_backward(dz, a_hat, var_h, m, gamma_h, eps, True, dA, dgamma_h, no_beta)
        batchnorm_backward(dz, u_hat, var_x, m, gamma_x, eps, True, dU, dgamma_x, no_beta)


@njit(cache=True)
def _ln_lstm_normalisation(T, eps, a, u, c_new, mean_h, var_h, mean_x, var_x, mean_c, var_c,
                           a_hat, u_hat, c_hat, gamma_h, gamma_x, gamma_c, dz, dc_in, dA, dU,
                           dc_norm, dgamma_h, dgamma_x, dgamma_c, dbeta_c):
    no_beta = np.empty(0, dz.dtype)
    for _ in range(T):
        layernorm_forward(a, eps, 1, a_hat, mean_h, var_h)       # ln_lstm_forward_loop
        layernorm_forward(u, eps, 1, u_hat, mean_x, var_x)
        layernorm_forward(c_new, eps, 1, c_hat, mean_c, var_c)
        layernorm_backward(dc_in, c_hat, var_c, gamma_c, eps, 1, dc_norm, dgamma_c,
                           dbeta_c)                              # ln_lstm_backward_loop
        layernorm_backward(dz, a_hat, var_h, gamma_h, eps, 1, dA, dgamma_h, no_beta)
        layernorm_backward(dz, u_hat, var_x, gamma_x, eps, 1, dU, dgamma_x, no_beta)


def normalisation_case(stem, T, B, H, dtype):
    """The hot normalisation calls of T steps of `stem` ("bn_lstm" or "ln_lstm") on random
    data (gains around 1; BN-LSTM's mask pads one row when B > 1): returns the function that
    runs them once and the dict of the arrays it reads and writes."""
    rng = np.random.default_rng(0)
    G, dt = 4 * H, np.dtype(dtype)
    stat = (G,) if stem == "bn_lstm" else (B, 1)
    stat_c = (H,) if stem == "bn_lstm" else (B, 1)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dt)

    def gain(n):
        return rng.uniform(0.5, 1.5, n).astype(dt)

    m = np.ones(B, dt)
    m[-1] = 0.0 if B > 1 else 1.0
    arrays = dict(m=m, a=normal(B, G), u=normal(B, G), c_new=normal(B, H),
                  mean_h=np.empty(stat, dt), var_h=np.empty(stat, dt),
                  mean_x=np.empty(stat, dt), var_x=np.empty(stat, dt),
                  mean_c=np.empty(stat_c, dt), var_c=np.empty(stat_c, dt),
                  a_hat=np.empty((B, G), dt), u_hat=np.empty((B, G), dt),
                  c_hat=np.empty((B, H), dt), gamma_h=gain(G), gamma_x=gain(G), gamma_c=gain(H),
                  dz=normal(B, G), dc_in=normal(B, H), dA=np.empty((B, G), dt),
                  dU=np.empty((B, G), dt), dc_norm=np.empty((B, H), dt),
                  dgamma_h=np.zeros(G, dt), dgamma_x=np.zeros(G, dt), dgamma_c=np.zeros(H, dt),
                  dbeta_c=np.zeros(H, dt))
    if stem == "bn_lstm":
        loop, names = _bn_lstm_normalisation, ("m",) + NORMALISATION_ARGS
    else:                                                  # layer norm has no mask
        loop, names = _ln_lstm_normalisation, NORMALISATION_ARGS
        del arrays["m"]
    eps = dt.type(1e-5)

    def run():
        loop(T, eps, *(arrays[k] for k in names))
    return run, arrays


NORMALISATION_ARGS = ("a", "u", "c_new", "mean_h", "var_h", "mean_x", "var_x", "mean_c",
                      "var_c", "a_hat", "u_hat", "c_hat", "gamma_h", "gamma_x", "gamma_c", "dz",
                      "dc_in", "dA", "dU", "dc_norm", "dgamma_h", "dgamma_x", "dgamma_c",
                      "dbeta_c")


def table_normalisation(shapes, T, repeats, out):
    """BN- and LN-LSTM's extra time over refnorm's LSTM, the budget the 1.25x target leaves it
    (0.25x the LSTM's time) and the share of that budget the normalisation calls alone take,
    hot (above): the three measured side by side."""
    print("\n## The normalisation alone, hot, against the time the 1.25x target leaves "
          f"(T={T}, ms per forward+backward, median of {repeats})\n", file=out)
    print(row(["dtype", "B", "H", "cell", "LSTM", "cell", "cell - LSTM",
               "budget: 0.25 x LSTM", "normalisation calls, hot", "hot / budget"]), file=out)
    print(row(["---"] * 10), file=out)
    stems = ("bn_lstm", "ln_lstm")
    for dtype in ("float64", "float32"):
        for B, H in shapes:
            fns = [refnorm_case("lstm", T, B, H, dtype)[1]]
            for stem in stems:
                fns += [refnorm_case(stem, T, B, H, dtype)[1],
                        normalisation_case(stem, T, B, H, dtype)[0]]
            runs = interleaved_runs(fns, repeats)
            lstm = runs[0]
            for i, stem in enumerate(stems):
                cell, hot = runs[1 + 2 * i], runs[2 + 2 * i]
                share = [4 * r for r in hot.ratio(lstm)]    # hot / (0.25 x LSTM), paired
                print(row([dtype, B, H, stem, f"{lstm.time * 1e3:.2f}", f"{cell.time * 1e3:.2f}",
                           f"{(cell.time - lstm.time) * 1e3:.2f}", f"{lstm.time / 4 * 1e3:.2f}",
                           f"{hot.time * 1e3:.2f}", spread(share, "{:.0%}")]), file=out)
            out.flush()


def table_linear_in_T(B, H, repeats, out):
    print(f"\n## Time vs T (LSTM fwd+bwd, float64, B={B}, H={H})\n", file=out)
    print(row(["T", "ms", "µs per step"]), file=out)
    print(row(["---"] * 3), file=out)
    for T in (10, 30, 100, 300, 1000):
        t = median_time(refnorm_case("lstm", T, B, H, "float64")[1], repeats)
        print(row([T, f"{t * 1e3:.2f}", f"{t / T * 1e6:.1f}"]), file=out)


# What BPTT cannot do without (the textbook minimum): the input x (for dWx), the states h, c
# (T+1, B, H) and the activated gates (T, B, 4H); the normalised cells also need the normalised
# terms â, û (T, B, 4H), ĉ (T, B, H) and the statistics. Everything else refnorm caches (tanh of
# the cell, the mask, counts) is a convenience whose cost this table shows.
REQUIRED = {"x", "h", "c", "gates", "a_hat", "u_hat", "c_hat", "mean_x", "var_x", "mean_h",
            "var_h", "mean_c", "var_c"}


def table_memory(B, H, T, out):
    print(f"\n## Memory of the cache (T={T}, B={B}, H={H}, float64)\n", file=out)
    print(row(["cell", "cache MB", "BPTT minimum MB", "cache / minimum",
               "peak during forward MB", "peak / minimum"]), file=out)
    print(row(["---"] * 6), file=out)
    for stem in ("lstm", "bn_lstm", "seq_bn_lstm", "ln_lstm"):
        fwd, _ = refnorm_case(stem, T, B, H, "float64")
        fwd()
        tracemalloc.start()
        _, _, cache = fwd()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        arrays = {k: v for k, v in vars(cache).items() if isinstance(v, np.ndarray)}
        size = sum(v.nbytes for v in arrays.values())
        minimum = sum(v.nbytes for k, v in arrays.items() if k in REQUIRED)
        print(row([stem, f"{size / 1e6:.1f}", f"{minimum / 1e6:.1f}", f"{size / minimum:.2f}",
                   f"{peak / 1e6:.1f}", f"{peak / minimum:.2f}"]), file=out)


def table_backward_memory(B, H, Ts, out):
    """What a backward pass holds beyond the gradients it returns, the scratch buffer included
    (released first, so the call allocates it): the gate gradients of at most one chunk of
    steps (refnorm/numba_cpu/common.py, backward_in_chunks) and small arrays, against the
    gate gradients of the whole sequence."""
    from refnorm.numba_cpu.common import release_scratch
    print(f"\n## Working memory of the backward (B={B}, H={H}, float64)\n", file=out)
    print(row(["cell", "T", "peak beyond the returned gradients MB",
               "gate gradients of all T steps MB"]), file=out)
    print(row(["---"] * 4), file=out)
    for T in Ts:
        for stem, n_gate_grads in (("lstm", 1), ("bn_lstm", 2), ("seq_bn_lstm", 2),
                                   ("ln_lstm", 2)):
            cell = randomize(refnorm.CELLS[stem](H, H, seed=0, backend="numba"), seed=1)
            rng = np.random.default_rng(0)
            x, dhs = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
            kwargs = {"update_stats": False} if "bn" in stem else {}
            _, _, cache = cell.forward(x, **kwargs)
            release_scratch()
            tracemalloc.start()
            grads = cell.backward(dhs, cache)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            returned = sum(g.nbytes for g in grads.values())
            whole = n_gate_grads * T * B * 4 * H * 8
            print(row([stem, T, f"{(peak - returned) / 1e6:.1f}", f"{whole / 1e6:.1f}"]),
                  file=out)
            out.flush()


FIRST_CALL = """
import importlib.abc, sys, time
sys.path.insert(0, {here!r})
if sys.argv[1] == "hide-scipy":          # as if SciPy were not installed
    class HideSciPy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "scipy":
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, HideSciPy())
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import numba
t2 = time.perf_counter()
from first_call_probe import probe
probe(1.0)           # Numba's start-up, paid by any first call of a jitted function
t3 = time.perf_counter()
import refnorm
t4 = time.perf_counter()
x = np.ones((3, 2, 4))
def first(C):
    c = C(4, 4, seed=0, backend="numba", **({{"max_steps": 3}} if C is refnorm.BNLSTM else {{}}))
    hs, _, k = c.forward(x)
    c.backward(hs, k)
first(refnorm.LSTM)
t5 = time.perf_counter()
for C in (refnorm.BNLSTM, refnorm.SeqBNLSTM, refnorm.LNLSTM):
    first(C)
t6 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
""".format(here=os.path.dirname(os.path.abspath(__file__)))
FIRST_CALL_PARTS = ("import numpy", "import numba", "Numba's start-up (a trivial cached function)",
                    "import refnorm", "LSTM fwd+bwd", "the other three cells")
# Numba's start-up imports scipy.linalg whenever SciPy is installed (numba.np.arraymath checks
# for its BLAS at import), ~0.2 s here, though refnorm calls NumPy's BLAS and needs no SciPy.
# Both cases are timed: SciPy installed, and hidden from the process as if it were not.
FIRST_CALL_CASES = (("SciPy installed", "as-installed"), ("SciPy absent", "hide-scipy"))


def first_call_seconds(runs=7):
    """Fresh processes with the on-disk cache warm: for each case of FIRST_CALL_CASES, the
    median time of each stage of importing refnorm and calling every cell on numba once
    (forward+backward). The cases alternate, process by process, so that a drift of the
    machine's speed hits both alike."""
    commands = [[sys.executable, "-c", FIRST_CALL, case] for _, case in FIRST_CALL_CASES]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)  # warm
    parts = [[] for _ in commands]
    for _ in range(runs):
        for command, times in zip(commands, parts):
            res = subprocess.run(command, check=True, capture_output=True, text=True)
            times.append([float(v) for v in res.stdout.split()])
    return [[statistics.median(p[i] for p in times) for i in range(len(FIRST_CALL_PARTS))]
            for times in parts]


def table_first_call(out):
    print("\n## First call in a fresh process, on-disk cache warm (s, median of 7 processes "
          "each, the two cases alternating)\n", file=out)
    print(row(("SciPy",) + FIRST_CALL_PARTS + ("to the first LSTM result", "total")), file=out)
    print(row(["---"] * (len(FIRST_CALL_PARTS) + 3)), file=out)
    for (label, _), parts in zip(FIRST_CALL_CASES, first_call_seconds()):
        print(row([label] + [f"{p:.3f}" for p in parts]
                  + [f"{sum(parts[:5]):.3f}", f"{sum(parts):.3f}"]), file=out)


def cpu_description(cpuinfo=None):
    """The CPU as /proc/cpuinfo names its first processor (or `cpuinfo`, that file's text): the
    model name, its family and model (which tell the generations apart where the name does not:
    "AMD EPYC" on these virtual machines) and the widest vector instructions it offers, AVX-512
    (avx512f), AVX2 or neither, with FMA where present. Where the file cannot be read, what
    platform knows."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())   # the first processor's
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    isa += " + FMA" if "fma" in flags else ""
    return (f"{fields.get('model name', platform.machine())} (family "
            f"{fields.get('cpu family', '?')} model {fields.get('model', '?')}), {isa}")


def kernels_description():
    """What the compiled code targets at run time: the CPU LLVM (Numba) compiles for, the
    kernels OpenBLAS picked (threadpoolctl) and torch's CPU capability."""
    import llvmlite.binding
    parts = [f"Numba/LLVM target {llvmlite.binding.get_host_cpu_name()}"]
    try:
        from threadpoolctl import threadpool_info
        parts += [f"OpenBLAS {i.get('version')} ({os.path.basename(os.path.dirname(i['filepath']))}"
                  f"): {i.get('architecture')} kernels"
                  for i in threadpool_info() if i.get("internal_api") == "openblas"]
    except ImportError:
        pass
    parts.append(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    return ", ".join(parts)


def load_average():
    """The system's load average over 1, 5 and 15 minutes. This script counts about 1 of it
    once it has run a minute (one thread); on 2 cores, much more than that is other programs
    taking a share of the cores from the measurements."""
    return "Load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest shapes, few repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and every BLAS (default 1: on 2 cores two "
                             "OpenBLAS threads made the small per-step products erratic)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="make glibc's malloc keep freed memory instead of returning it to "
                             "the system (see keep_freed_memory), for torch and refnorm alike")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per measurement (default 7, --quick 3)")
    parser.add_argument("--threads-table", action="store_true",
                        help="only the LSTM on 1 and 2 threads vs torch.nn.LSTM on as many, "
                             "and each family's normalised cells vs refnorm's own cell of the "
                             "family on each (issue 25's targets, the LSTM's); with --family, "
                             "that family's tables alone; every other table runs on --threads")
    parser.add_argument("--family", choices=tuple(FAMILIES) + ("stack",), default=None,
                        help="one family's tables alone: lstm, every table but the RNN and "
                             "GRU families' three and the stack's; rnn, the RNN vs "
                             "torch.nn.RNN and the floor, its products, and the normalised "
                             "RNNs; gru, the same three for the GRU vs torch.nn.GRU; stack, "
                             "the 2-layer bidirectional LSTM stack vs torch.nn.LSTM("
                             "num_layers=2, bidirectional=True) (default: every table)")
    args = parser.parse_args(argv)
    kept = args.keep_freed_memory and keep_freed_memory()
    if args.keep_freed_memory and not kept:
        parser.error("glibc's mallopt refused the settings")
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    shapes = SHAPES[:2] if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 7)
    out = sys.stdout
    print(f"# refnorm CPU benchmark, {time.strftime('%Y-%m-%d')}\n", file=out)
    print(f"{cpu_description()}, {os.cpu_count()} cores, "
          f"{'1 and 2 (set per timed call)' if args.threads_table else args.threads} "
          f"threads; Python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {__import__('numba').__version__}, torch {torch.__version__}; malloc "
          f"{'keeps freed memory (--keep-freed-memory)' if kept else 'as configured (default)'}"
          f".\n\n{kernels_description()}. {load_average()} at the start.", file=out)
    small = shapes[:2] if not args.quick else shapes[:1]
    if args.threads_table:
        if args.family in (None, "lstm"):
            table_threads(shapes, T_DEFAULT, repeats, out)
        for family in FAMILIES:
            if args.family in (None, family):
                table_norm_threads(shapes[1:] if not args.quick else shapes, T_DEFAULT,
                                   repeats, out, family=family)
        print(f"\n{load_average()} at the end.", file=out)
        return
    for family in FAMILIES:
        if args.family in (None, family):
            measured = table_vs_torch(shapes, T_DEFAULT, repeats, out, family)
            table_product_bound(measured, T_DEFAULT, out, family)
            table_norm_cells(small, T_DEFAULT, repeats, out, family)
    if args.family in (None, "stack"):
        table_stack(shapes, small, T_DEFAULT, repeats, out)
    if args.family in (None, "lstm"):
        table_vs_book(small, T_DEFAULT, repeats, out)
        table_phases(small, T_DEFAULT, max(repeats, 11), out)
        table_normalisation(small, T_DEFAULT, max(repeats, 11), out)
        table_linear_in_T(32, 128, 3, out)
        table_memory(32, 128, T_DEFAULT, out)
        table_backward_memory(32, 128, (T_DEFAULT, 1000), out)
        table_first_call(out)
    print(f"\n{load_average()} at the end.", file=out)


if __name__ == "__main__":
    main()
