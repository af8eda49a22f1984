"""GPU proof and benchmark of the CUDA backend (issue 5), for a machine with an NVIDIA GPU.

    python benchmarks/bench_gpu.py                    # parity tests on the GPU, then the tables
    python benchmarks/bench_gpu.py --skip-tests       # tables only
    python benchmarks/bench_gpu.py --quick            # B=64, H=256 only, few repeats
    python benchmarks/bench_gpu.py --record           # also append the output to RESULTS.md

1. Runs tests/test_cuda_backend.py for real (NUMBA_ENABLE_CUDASIM=0): the simulator tests'
   parity at patched-small launches, plus the `gpu`-marked tests at the shipped launch sizes and
   both matmul paths.
2. Times forward+backward, float32, T=100, D=H, B in {64, 256}, H in {256, 1024}:
   * refnorm cuda LSTM vs torch.nn.LSTM on cuDNN (issue target: <= 1.5x);
   * refnorm's BN-LSTM, SeqBN-LSTM, LN-LSTM vs refnorm's own LSTM on the GPU (target <= 1.3x)
     and vs the same equations in PyTorch eager on the GPU (target >= 3x faster);
   * achieved FLOP/s of the matrix products BPTT must do (6·T·B·4H·(D+H)) vs the card's
     float32 matmul throughput measured in the same run (torch.matmul, TF32 off, on a
     (T·B, H)·(H, 4H) product and on 8192²), and the refnorm tiled kernel alone on that shape.
   refnorm is called on device arrays (no host copies: caches stay on the GPU); one column
   also times the cell API with NumPy in/out, i.e. with the copies of the caches included.
3. Breaks refnorm's LSTM fwd+bwd into its pieces, timed apart on arrays of the same shapes: the
   2T step products as the loops do them (common.step_product) and, for comparison, with the
   library's views made per product, the T forward and T backward step kernels, and one empty
   launch.
Timings are medians after a warm-up (which includes JIT compilation), bracketed by device
synchronisation. Nothing is asserted: targets are printed beside the ratios.

Its latest run, on an NVIDIA H200, is in benchmarks/RESULTS.md. Needs numba-cuda with its
CUDA libraries (e.g. numba-cuda[cu12]) and a CUDA build of torch, whose cuBLAS refnorm then uses
for its products (CuPy's if CuPy imports); the refnorm tiled kernel is timed alone for
comparison. numba-cuda 0.30.4 compiles no kernel under numpy >= 2.5 (it overloads
np.row_stack, which numpy 2.5 removed; refnorm's `cuda` extra asks for numpy < 2.5): on an image
that pairs them, alias it before numba is imported, e.g. a sitecustomize.py on PYTHONPATH with
`numpy.row_stack = numpy.vstack`.
"""
import os

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"             # before numba is imported: the real device

import argparse  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import cuda  # noqa: E402

import refnorm  # noqa: E402
import refnorm.numba_cuda as rc  # noqa: E402
from refnorm.gradcheck import randomize  # noqa: E402
from refnorm.numba_cuda import common  # noqa: E402
from refnorm.numba_cuda import lstm as cuda_lstm  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_cpu import torch_eager_cell  # noqa: E402

T_DEFAULT = 100
SHAPES = [(64, 256), (64, 1024), (256, 256), (256, 1024)]
TARGETS = {"cudnn": 1.5, "vs_lstm": 1.3, "vs_eager": 3.0}


def sync():
    cuda.synchronize()
    torch.cuda.synchronize()


def median_time(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- refnorm on device arrays ----------------------------------------------------------------
def refnorm_device_case(stem, T, B, H, dtype="float32"):
    """fwd+bwd through the backend functions on numba device arrays: nothing leaves the GPU."""
    cell = randomize(refnorm.CELLS[stem](H, H, seed=0, dtype=dtype), seed=1)
    rng = np.random.default_rng(0)
    dev = cuda.to_device
    x = dev(rng.standard_normal((T, B, H)).astype(dtype))
    dhs = dev(rng.standard_normal((T, B, H)).astype(dtype))
    h0 = dev(np.zeros((B, H), dtype))
    mask = dev(np.ones((T, B), dtype))
    params = {k: dev(v) for k, v in cell.params.items()}
    forward, backward = getattr(rc, stem + "_forward"), getattr(rc, stem + "_backward")
    options = {"lstm": {}, "bn_lstm": {"training": True, "eps": 1e-5},
               "seq_bn_lstm": {"training": True, "eps": 1e-5}, "ln_lstm": {"eps": 1e-5}}[stem]

    def fwd_bwd():
        hs, hT, cT, cache = forward(x, h0, h0, mask, params, **options)
        return backward(dhs, h0, h0, cache)

    return fwd_bwd


def refnorm_host_case(stem, T, B, H, dtype="float32"):
    """fwd+bwd through the cell API with NumPy in/out: every cache crosses PCIe twice."""
    kw = {"max_steps": T} if stem == "bn_lstm" else {}
    cell = randomize(refnorm.CELLS[stem](H, H, seed=0, dtype=dtype, backend="cuda", **kw),
                     seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    update = {"update_stats": False} if stem in ("bn_lstm", "seq_bn_lstm") else {}

    def fwd_bwd():
        hs, _, cache = cell.forward(x, **update)
        return cell.backward(dhs, cache)

    return fwd_bwd


# -- torch on the GPU ------------------------------------------------------------------------
def torch_cudnn_case(T, B, H):
    lstm = torch.nn.LSTM(H, H).cuda()
    x = torch.randn(T, B, H, device="cuda", requires_grad=True)
    dhs = torch.randn(T, B, H, device="cuda")

    def fwd_bwd():
        out, _ = lstm(x)
        out.backward(dhs)

    return fwd_bwd


def torch_eager_case(stem, T, B, H):
    cell = randomize(refnorm.CELLS[stem](H, H, seed=0, dtype="float32"), seed=1)
    p = {k: torch.tensor(v, device="cuda", requires_grad=True) for k, v in cell.params.items()}
    x = torch.randn(T, B, H, device="cuda", requires_grad=True)
    dhs = torch.randn(T, B, H, device="cuda")

    def fwd_bwd():
        torch_eager_cell(stem, x, p).backward(dhs)

    return fwd_bwd


# -- matmul throughput -----------------------------------------------------------------------
def bptt_flops(T, B, D, H):
    """Products of LSTM BPTT: U = XWx, T·(h Wh), dx = dU Wxᵀ, dWx, dWh, T·(dz Whᵀ):
    2·T·B·4H·D each for the three input-side ones, 2·T·B·4H·H for the three recurrent ones."""
    return 6 * T * B * 4 * H * (D + H)


def torch_matmul_flops(M, K, N, repeats):
    a = torch.randn(M, K, device="cuda")
    b = torch.randn(K, N, device="cuda")
    t = median_time(lambda: a @ b, repeats)
    return 2 * M * K * N / t


def refnorm_tiled_flops(M, K, N, repeats):
    rng = np.random.default_rng(0)
    a = cuda.to_device(rng.standard_normal((M, K)).astype(np.float32))
    b = cuda.to_device(rng.standard_normal((K, N)).astype(np.float32))
    c = cuda.device_array((M, N), np.float32)
    saved, common.USE_CUBLAS = common.USE_CUBLAS, False
    try:
        t = median_time(lambda: common.matmul(a, b, c), repeats)
    finally:
        common.USE_CUBLAS = saved
    return 2 * M * K * N / t


# -- tables ----------------------------------------------------------------------------------
def row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_lstm(shapes, T, repeats, out):
    print(f"\n## LSTM fwd+bwd, float32, T={T}, D=H: refnorm cuda vs torch.nn.LSTM (cuDNN) "
          f"(ms, median of {repeats}; target ratio <= {TARGETS['cudnn']})\n", file=out)
    print(row(["B", "H", "refnorm (device arrays)", "cuDNN", "ratio",
               "refnorm cell API (NumPy in/out)", "GFLOP/s achieved", "matmul GFLOP/s, same shape",
               "matmul GFLOP/s, 8192²", "refnorm tiled kernel GFLOP/s"]), file=out)
    print(row(["---"] * 10), file=out)
    peak = torch_matmul_flops(8192, 8192, 8192, 5)
    for B, H in shapes:
        mine = median_time(refnorm_device_case("lstm", T, B, H), repeats)
        cudnn = median_time(torch_cudnn_case(T, B, H), repeats)
        hosted = median_time(refnorm_host_case("lstm", T, B, H), max(3, repeats // 3))
        shape_peak = torch_matmul_flops(T * B, H, 4 * H, repeats)
        tiled = refnorm_tiled_flops(T * B, H, 4 * H, max(3, repeats // 3))
        print(row([B, H, f"{mine * 1e3:.2f}", f"{cudnn * 1e3:.2f}", f"{mine / cudnn:.2f}",
                   f"{hosted * 1e3:.1f}", f"{bptt_flops(T, B, H, H) / mine / 1e9:.0f}",
                   f"{shape_peak / 1e9:.0f}", f"{peak / 1e9:.0f}", f"{tiled / 1e9:.0f}"]),
              file=out)
        out.flush()


def table_norm_cells(shapes, T, repeats, out):
    print(f"\n## Normalised cells fwd+bwd, float32, T={T}, D=H: vs refnorm's LSTM on the GPU "
          f"(target <= {TARGETS['vs_lstm']}) and vs the same equations in PyTorch eager on the "
          f"GPU (target >= {TARGETS['vs_eager']}x) (ms)\n", file=out)
    print(row(["B", "H", "cell", "refnorm", "vs refnorm LSTM", "torch eager", "speed-up vs eager",
               "refnorm cell API (NumPy in/out)"]), file=out)
    print(row(["---"] * 8), file=out)
    for B, H in shapes:
        base = median_time(refnorm_device_case("lstm", T, B, H), repeats)
        for stem in ("bn_lstm", "seq_bn_lstm", "ln_lstm"):
            mine = median_time(refnorm_device_case(stem, T, B, H), repeats)
            eager = median_time(torch_eager_case(stem, T, B, H), repeats)
            hosted = median_time(refnorm_host_case(stem, T, B, H), max(3, repeats // 3))
            print(row([B, H, stem, f"{mine * 1e3:.2f}", f"{mine / base:.2f}",
                       f"{eager * 1e3:.2f}", f"{eager / mine:.1f}x", f"{hosted * 1e3:.1f}"]),
                  file=out)
            out.flush()


@cuda.jit
def _empty_kernel(out):
    # nothing: one launch of it is numba-cuda's fixed cost per launch from Python
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = 0.0


def lstm_breakdown_case(T, B, H, dtype="float32"):
    """The pieces of refnorm's LSTM fwd+bwd apart, on device arrays of its shapes: the 2T step
    products through common.matmul, the T forward step kernels, the T backward step kernels with
    their carry (common.carry_grad), and one empty launch. What the whole call takes beyond their
    sum is the whole-sequence work (input projection, dWx, dx, dWh, db) and allocation."""
    rng = np.random.default_rng(0)
    dev = cuda.to_device

    def rand(*shape, scale=1.0):
        return dev((scale * rng.standard_normal(shape)).astype(dtype))

    G = 4 * H
    V, Wh = rand(T, B, G), rand(H, G, scale=H ** -0.5)
    h, c, hs = rand(T + 1, B, H), rand(T + 1, B, H), rand(T, B, H)
    gates, tanh_c, dZ = rand(T, B, G), rand(T, B, H), rand(T, B, G)
    dh, dc, dhs, dH, dC = rand(T, B, H), rand(T, B, H), rand(T, B, H), rand(B, H), rand(B, H)
    mask = dev(np.ones((T, B), dtype))
    A, dh_rec = rand(B, G), rand(B, H)
    sink = dev(np.zeros(1, dtype))

    def products():                      # as the step loops do them
        forward = common.step_product(h, Wh, A)
        backward = common.step_product(dZ, Wh, dh_rec, trans_b=True)
        for t in range(T):
            forward(t)
            backward(t)

    def products_wrapped_per_call():     # the library's views made per product, for comparison
        for t in range(T):
            common.matmul(h[t], Wh, A)
            common.matmul(dZ[t], Wh, dh_rec, trans_b=True)

    def forward_kernels():
        for t in range(T):
            cuda_lstm.lstm_step_forward_kernel[common.grid(B * H), common.THREADS](
                t, V, A, mask, h, c, hs, gates, tanh_c)

    def backward_kernels():
        for t in range(T - 1, -1, -1):
            cuda_lstm.lstm_step_backward_kernel[common.grid(B * H), common.THREADS](
                t, dhs, dH, dC, mask, c, gates, tanh_c, dZ, dh, dc)
            common.carry_grad(t, dH, dh_rec, mask)

    def empty_launches():
        for _ in range(T):
            _empty_kernel[1, 32](sink)

    return {"products": products, "products wrapped per call": products_wrapped_per_call,
            "forward kernels": forward_kernels,
            "backward kernels": backward_kernels, "empty launches": empty_launches}


def table_breakdown(shapes, T, repeats, out):
    print(f"\n## Where refnorm's LSTM fwd+bwd time goes, float32, T={T}, D=H (ms, median of "
          f"{repeats}; the pieces timed apart on arrays of the same shapes)\n", file=out)
    print(row(["B", "H", "whole fwd+bwd", "2T step products",
               "the same, library views made per product", "T forward step kernels",
               "T backward step kernels + carry", "rest (whole-sequence work, allocation)",
               "one empty launch (µs)", "launches per fwd+bwd"]), file=out)
    print(row(["---"] * 10), file=out)
    for B, H in shapes:
        whole = median_time(refnorm_device_case("lstm", T, B, H), repeats)
        parts = {name: median_time(fn, repeats)
                 for name, fn in lstm_breakdown_case(T, B, H).items()}
        empty = parts.pop("empty launches") / T
        rest = whole - sum(v for k, v in parts.items() if k != "products wrapped per call")
        launches = 5 * T          # per step: 2 products, 1 forward kernel, 2 backward kernels
        print(row([B, H, f"{whole * 1e3:.2f}", *(f"{v * 1e3:.2f}" for v in parts.values()),
                   f"{rest * 1e3:.2f}", f"{empty * 1e6:.1f}", f"~{launches}"]), file=out)
        out.flush()


def driver_version():
    try:
        return ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
    except Exception as e:                           # informational only
        return f"? ({type(e).__name__})"


def matmul_path():
    if common.cublas_available():
        return "cuBLAS via " + common.cublas_provider()
    return "refnorm tiled kernel"


def _version(module):
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return "not installed"


def versions():
    """The card, driver and package versions; each piece is informational and never fatal."""
    import numba
    try:
        dev = cuda.get_current_device()
        card = f"{torch.cuda.get_device_name()} (compute capability {dev.compute_capability})"
    except Exception as e:                           # informational only
        card = f"? ({type(e).__name__}: {e})"
    return (f"{card}, driver CUDA {driver_version()}; host {platform.machine()}, "
            f"{os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
            f"numba {numba.__version__}, numba-cuda {_version('numba_cuda')}, CuPy "
            f"{_version('cupy')}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}); refnorm launch settings THREADS={common.THREADS}, "
            f"TILE={common.TILE}, matmul path: {matmul_path()}")


def run_tests(out):
    """The CUDA test module on the real device; returns pytest's exit code."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    res = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda_backend.py", "-q",
                          "-rs", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    tail = "\n".join(res.stdout.strip().splitlines()[-15:])
    print(f"\n## tests/test_cuda_backend.py on the GPU (exit code {res.returncode})\n\n```\n"
          f"{tail}\n```", file=out)
    return res.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B=64, H=256 only, few repeats")
    parser.add_argument("--skip-tests", action="store_true", help="tables only")
    parser.add_argument("--record", action="store_true",
                        help="append the output to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not cuda.is_available() or not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs an NVIDIA GPU visible to both numba-cuda "
                 f"(cuda.is_available()={cuda.is_available()}) and torch "
                 f"(torch.cuda.is_available()={torch.cuda.is_available()})")
    torch.backends.cuda.matmul.allow_tf32 = False    # float32 products in float32, like refnorm
    torch.backends.cudnn.allow_tf32 = False
    out = io.StringIO()

    class Tee:
        def write(self, s):
            sys.stdout.write(s)
            out.write(s)

        def flush(self):
            sys.stdout.flush()

    tee = Tee()
    print(f"# refnorm GPU benchmark, run of {time.strftime('%Y-%m-%d')}\n\n{versions()}",
          file=tee)
    code = 0 if args.skip_tests else run_tests(tee)
    shapes = SHAPES[:1] if args.quick else SHAPES
    repeats = 3 if args.quick else 10
    table_lstm(shapes, T_DEFAULT, repeats, tee)
    table_breakdown(shapes, T_DEFAULT, repeats, tee)
    table_norm_cells(shapes, T_DEFAULT, repeats, tee)
    if args.record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + out.getvalue())
    sys.exit(code)


if __name__ == "__main__":
    main()
