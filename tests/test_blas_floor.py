"""The BLAS floor of benchmarks/bench_cpu.py (benchmarks/blas_floor.py): the step products
done by NumPy's own BLAS through a direct ?gemm call. The benchmark's ratios against the floor
mean something only if the floor computes the products it claims, in the library it claims;
these tests keep it honest without running the benchmark."""
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import blas_floor  # noqa: E402


def _product_bound(A, B, dtype):
    """The rounding bound of a K-term dot product, K·eps·(|A| |B|), entry by entry (Higham,
    Accuracy and Stability, 3.5): a wrong stride or operand misses it by O(1)."""
    K = A.shape[1]
    return K * np.finfo(dtype).eps * (np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul_is_the_product_on_the_views_the_floor_passes(dtype):
    """C = A·B and C = A·Bᵀ on a step's rows h[t] (a row block of a (T, B, H) array), and on
    rows with padding (leading dimension > columns), for both ?gemm. Random values, shapes
    with no two sides equal."""
    from blas_floor import gemm_for, matmul
    rng = np.random.default_rng(3)
    gemm = gemm_for(dtype)
    h = rng.standard_normal((3, 5, 7)).astype(dtype)                    # (T, B, H)
    Wh = rng.standard_normal((7, 12)).astype(dtype)                     # (H, 4H)
    dz = rng.standard_normal((3, 5, 12)).astype(dtype)
    C, D = np.full((5, 12), np.nan, dtype), np.full((5, 7), np.nan, dtype)
    matmul(gemm, h[1], Wh, C)                                           # h_prev @ Wh
    A = h[1].astype(np.float64)
    assert np.all(np.abs(C - A @ Wh.astype(np.float64)) <= _product_bound(h[1], Wh, dtype))
    matmul(gemm, dz[2], Wh, D, transpose_b=True)                        # dz @ Wh.T
    assert np.all(np.abs(D - dz[2].astype(np.float64) @ Wh.T.astype(np.float64))
                  <= _product_bound(dz[2], Wh.T, dtype))
    padded = rng.standard_normal((5, 10)).astype(dtype)[:, 2:9]         # rows 10 apart, 7 wide
    wide = np.full((5, 15), np.nan, dtype)
    matmul(gemm, padded, Wh, wide[:, 1:13])
    assert np.all(np.abs(wide[:, 1:13] - padded.astype(np.float64) @ Wh.astype(np.float64))
                  <= _product_bound(padded, Wh, dtype))
    assert np.isnan(wide[:, [0, 13, 14]]).all()                         # nothing outside C


def test_matmul_refuses_what_gemm_cannot_take():
    """Columns of non-unit stride, overlapping rows or mismatched shapes are a ValueError, and
    C is left as it was."""
    from numpy.lib.stride_tricks import as_strided

    from blas_floor import gemm_for, matmul
    rng = np.random.default_rng(4)
    gemm = gemm_for(np.float64)
    A, B = rng.standard_normal((4, 6)), rng.standard_normal((6, 5))
    C = rng.standard_normal((4, 5))
    before = C.copy()
    overlapping = as_strided(A, shape=(4, 6), strides=(16, 8))
    for args, message in [((A[:, ::2], B[:3], C), "unit stride"),
                          ((overlapping, B, C), "overlap"),
                          ((A, B[:4], C), "shapes"),
                          ((A, B, C[:3]), "shapes")]:
        with pytest.raises(ValueError, match=message):
            matmul(gemm, *args)
        assert np.array_equal(C, before)



def test_a_missing_blas_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(blas_floor, "_GEMMS", {})
    with pytest.raises(RuntimeError, match="found no CBLAS gemm"):
        blas_floor.gemm_for(np.float64)


def test_blas_discovery_skips_what_is_not_a_working_cblas(monkeypatch):
    """The search takes the first candidate that loads, exports both ?gemm and computes a small
    product right: a path that does not load and a library without CBLAS (libc) are passed
    over; a gemm that leaves C wrong fails the check."""
    import ctypes
    import ctypes.util

    common = blas_floor
    common.gemm_for(np.float64)                      # the search has run: LIBRARY is set
    numpy_blas = common.LIBRARY
    libc = ctypes.util.find_library("c") or "libc.so.6"
    monkeypatch.setattr(common, "_candidate_libraries",
                        lambda: iter(["/nonexistent/libblas.so", libc, numpy_blas]))
    path, gemms = common._find_gemms()
    assert path == numpy_blas and set(gemms) == {np.dtype(np.float64), np.dtype(np.float32)}

    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_int32] * 3, *[ctypes.c_int64] * 3,
                                 ctypes.c_double, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_double,
                                 ctypes.c_void_p, ctypes.c_int64)
    does_nothing = signature(lambda *args: None)
    assert not common._agrees(does_nothing, np.float64)
    assert common._agrees(gemms[np.dtype(np.float64)], np.float64)
