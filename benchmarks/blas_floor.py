"""The BLAS floor's step product: a direct CBLAS ?gemm call into the BLAS NumPy uses.

bench_cpu.py's floor does the matrix products an LSTM's BPTT must do, alone, in NumPy's BLAS:
the whole-sequence products through NumPy's `@`, and the 2T step products, one small product
per step, through matmul below, called from a compiled loop so that no Python runs between
steps. (refnorm's step loops do not call a BLAS: they run their own kernel on a weight packed
once per sequence, refnorm/numba_cpu/common.py, packed_matmul; the floor is what the BLAS
itself does with the same products.)

How: ctypes finds cblas_dgemm / cblas_sgemm in NumPy's library, and the compiled loop takes the
function as an argument, `gemm`. Numba calls a ctypes function directly (no Python in between),
and its type is its C signature, so a loop compiled for one library's integer width is cached
on disk under that signature and never handed another library's. Not Numba's np.dot: it calls
SciPy's OpenBLAS (scipy.linalg.cython_blas), a second library in the process, which Numba loads
only at the first compiled call, after a threadpool_limits made at start-up (it then ran on 2
threads while NumPy's ran on 1). ?gemm also takes Bᵀ as it stands.

Where the library is: NumPy's wheels carry OpenBLAS in numpy.libs/ (Linux, Windows) or
numpy/.dylibs/ (macOS), with 64-bit integers and suffixed names (scipy_cblas_dgemm64_); a NumPy
built against a system BLAS (conda, distributions) has it among the libraries this process has
loaded (/proc/self/maps on Linux), or ctypes.util.find_library finds one. The first that exports
a CBLAS gemm and passes a small product against NumPy's is used.
"""
import ctypes
import ctypes.util
import glob
import os

import numpy as np
from numba import njit

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112          # CBLAS enums: CblasRowMajor, CblasNoTrans, ...

# (name pattern, integer width): OpenBLAS as NumPy and SciPy bundle it (ILP64 gets the 64_
# suffix), then plain CBLAS (MKL, Accelerate, a system OpenBLAS).
SYMBOLS = (("scipy_cblas_{}gemm64_", 64), ("cblas_{}gemm64_", 64), ("scipy_cblas_{}gemm", 32),
           ("cblas_{}gemm", 32))


def _candidate_libraries():
    """Paths (or names) of libraries that may hold NumPy's BLAS, the likeliest first; a
    generator, so that find_library (~80 ms: it runs ldconfig) runs only when nothing else
    served."""
    here = os.path.dirname(np.__file__)
    for folder in (os.path.join(here, os.pardir, "numpy.libs"), os.path.join(here, ".dylibs")):
        yield from sorted(glob.glob(os.path.join(os.path.normpath(folder), "*blas*")))
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps]
    except OSError:                                  # not Linux
        paths = []
    for path in dict.fromkeys(paths):
        name = os.path.basename(path).lower()
        if "blas" in name or "mkl_rt" in name:
            yield path
    for name in ("openblas", "cblas", "blas", "Accelerate"):
        found = ctypes.util.find_library(name)
        if found:
            yield found


def _cblas_gemm(lib, prefix, ctype):
    """The library's cblas_?gemm as a typed ctypes function, or None."""
    for pattern, width in SYMBOLS:
        name = pattern.format(prefix)
        if not hasattr(lib, name):
            continue
        if width == 32 and "USE64BITINT" in _openblas_config(lib):
            width = 64                               # an ILP64 OpenBLAS without the suffix
        n = ctypes.c_int64 if width == 64 else ctypes.c_int32
        f = getattr(lib, name)
        f.restype = None
        #            order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
        f.argtypes = [ctypes.c_int32] * 3 + [n] * 3 + [ctype, ctypes.c_void_p, n,
                                                       ctypes.c_void_p, n, ctype,
                                                       ctypes.c_void_p, n]
        return f
    return None


def _openblas_config(lib):
    """OpenBLAS's build configuration string (it names USE64BITINT), or "" for other BLAS."""
    for name in ("scipy_openblas_get_config64_", "openblas_get_config64_",
                 "scipy_openblas_get_config", "openblas_get_config"):
        if hasattr(lib, name):
            get = getattr(lib, name)
            get.restype = ctypes.c_char_p
            return get().decode(errors="replace")
    return ""


def _agrees(gemm, dtype):
    """One small product, A·Bᵀ added to C, against NumPy: catches a wrong integer width or a
    library that is not a CBLAS."""
    rng = np.random.default_rng(0)
    A, B, C = (rng.standard_normal(s).astype(dtype) for s in ((3, 5), (4, 5), (3, 4)))
    want = C + A @ B.T
    gemm(ROW_MAJOR, NO_TRANS, TRANS, 3, 4, 5, 1.0, A.ctypes.data, 5, B.ctypes.data, 5, 1.0,
         C.ctypes.data, 4)
    return np.allclose(C, want, rtol=1e-5, atol=1e-5)


def _find_gemms():
    for path in _candidate_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        gemms = {np.dtype(np.float64): _cblas_gemm(lib, "d", ctypes.c_double),
                 np.dtype(np.float32): _cblas_gemm(lib, "s", ctypes.c_float)}
        if all(f is not None and _agrees(f, dt) for dt, f in gemms.items()):
            return path, gemms
    return None, {}


LIBRARY, _GEMMS = None, None                         # found at the first gemm_for call


def gemm_for(dtype):
    """The ctypes cblas_?gemm for float64 or float32 arrays, matmul's `gemm`."""
    global LIBRARY, _GEMMS
    if _GEMMS is None:
        LIBRARY, _GEMMS = _find_gemms()
    if not _GEMMS:
        raise RuntimeError(
            "the BLAS floor found no CBLAS gemm: it looks in the BLAS NumPy bundles "
            "(numpy.libs/, numpy/.dylibs/), in the libraries this process has loaded, and in "
            "ctypes.util.find_library('openblas' | 'cblas' | 'blas' | 'Accelerate').")
    return _GEMMS[np.dtype(dtype)]


@njit(cache=True)
def leading_dimension(X):
    """The row stride of a 2-D array in elements, BLAS's lda; its rows must have unit stride."""
    rows, cols = X.shape
    if cols > 1 and X.strides[1] != X.itemsize:
        raise ValueError("matmul needs rows of unit stride")
    ld = X.strides[0] // X.itemsize              # lda = the row stride, in elements
    if rows == 1:
        return max(ld, cols, 1)                  # a single row's stride is never followed
    if ld < cols:
        raise ValueError("matmul needs rows that do not overlap")
    return ld


@njit(cache=True)
def matmul(gemm, A, B, C, transpose_b=False):
    """C = A·B, or A·Bᵀ with transpose_b, by one ?gemm call: no copy, no temporary. A, B, C are
    2-D with rows of unit stride (C-contiguous arrays, or row blocks of them)."""
    m, k = A.shape
    n = C.shape[1]
    if C.shape[0] != m or B.shape[1 if transpose_b else 0] != k or \
            B.shape[0 if transpose_b else 1] != n:
        raise ValueError("matmul: the shapes do not match")
    # C = A @ B, or C = A @ B.T: C = 1·op(A)·op(B) + 0·C
    gemm(ROW_MAJOR, NO_TRANS, TRANS if transpose_b else NO_TRANS, m, n, k, 1.0,
         A.ctypes.data, leading_dimension(A), B.ctypes.data, leading_dimension(B), 0.0,
         C.ctypes.data, leading_dimension(C))
