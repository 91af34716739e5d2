"""The core's row-major GEMM adapter over SciPy's Fortran BLAS, against numpy.

``_core.gemm_f32`` / ``gemm_f64(a, b, trans_a, trans_b, max_dim)`` compute ``op(a) @ op(b)``
splitting m, n and k into blocks of at most ``max_dim`` (the logic that keeps every size under the
32-bit BLAS interface), so small ``max_dim`` values exercise the block offsets for every
transposition and the accumulation over k blocks (beta = 1 after the first block).

Tolerances: the reference is computed in float64 from the same inputs; entries are N(0, 1) and
k <= 41, so |C| is at most a few tens. Splitting k changes the summation order only:
float32 atol 1e-4 (~1e3 eps * |C|), float64 atol 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from matcompress import _core

GEMM = {np.float32: _core.gemm_f32, np.float64: _core.gemm_f64}
ATOL = {np.float32: 1e-4, np.float64: 1e-12}
BIG = 2**31 - 1  # INT_MAX: no splitting at all

SHAPES = [  # (m, n, k)
    (5, 7, 9),
    (1, 1, 1),
    (1, 13, 6),
    (11, 1, 8),
    (6, 9, 1),
    (17, 23, 41),
    (32, 16, 8),
    (3, 40, 29),
]


def _operands(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    return a, b, ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("max_dim", [1, 2, 3, 7, BIG])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_numpy(shape, max_dim, trans_a, trans_b, dtype):
    m, n, k = shape
    rng = np.random.default_rng([m, n, k, max_dim, trans_a, trans_b])
    a, b, ref = _operands(rng, m, n, k, trans_a, trans_b, dtype)
    c = GEMM[dtype](a, b, trans_a, trans_b, max_dim)
    assert c.shape == (m, n)
    assert c.dtype == dtype
    assert c.flags.c_contiguous
    assert_allclose(c, ref, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("shape", [(1, 13, 6), (11, 1, 8), (1, 1, 5), (1, 40, 1), (7, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_one_row_or_column_goes_through_gemv(shape, trans_a, trans_b, dtype):
    # C with one row or one column: the adapter calls xGEMV, every transposition mapped.
    m, n, k = shape
    rng = np.random.default_rng([m, n, k, trans_a, trans_b, 1])
    a, b, ref = _operands(rng, m, n, k, trans_a, trans_b, dtype)
    c = GEMM[dtype](a, b, trans_a, trans_b, BIG, use_gemv=True)
    assert c.shape == (m, n) and c.dtype == dtype
    assert_allclose(c, ref, rtol=0, atol=ATOL[dtype])
    # ... and agrees with the GEMM route
    assert_allclose(c, GEMM[dtype](a, b, trans_a, trans_b, BIG), rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("max_dim", [1, 2, 3, 7])
def test_split_equals_unsplit_up_to_rounding(max_dim, dtype):
    # Same inputs with and without splitting: identical up to the summation order over k.
    rng = np.random.default_rng(max_dim)
    a = rng.standard_normal((19, 22)).astype(dtype)
    b = rng.standard_normal((22, 15)).astype(dtype)
    whole = GEMM[dtype](a, b, False, False, BIG)
    split = GEMM[dtype](a, b, False, False, max_dim)
    assert_allclose(split, whole, rtol=0, atol=ATOL[dtype])
    # With k not split (max_dim >= k), m / n blocks alone do not change any sum.
    if dtype == np.float64:
        a1 = a[:, :max_dim]
        b1 = b[:max_dim]
        assert_allclose(GEMM[dtype](a1, b1, False, False, max_dim), a1 @ b1, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_k_split_sums_every_block(dtype):
    # A k-split that dropped or repeated a block would be off by a whole block's contribution:
    # with all-ones operands every entry is exactly k.
    for k in (1, 2, 5, 10, 11):
        a = np.ones((4, k), dtype)
        b = np.ones((k, 3), dtype)
        for max_dim in (1, 2, 3, 4, BIG):
            assert_array_equal(GEMM[dtype](a, b, False, False, max_dim), np.full((4, 3), k, dtype))
            assert_array_equal(GEMM[dtype](a.T.copy(), b.T.copy(), True, True, max_dim),
                               np.full((4, 3), k, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_blocks_land_in_the_right_place(dtype):
    # Integer-valued operands with distinct entries: every product and sum is exact, so any
    # misplaced block offset shows up as an exact mismatch.
    m, n, k = 9, 10, 7
    a = np.arange(m * k, dtype=dtype).reshape(m, k) % 13 - 6
    b = np.arange(k * n, dtype=dtype).reshape(k, n) % 11 - 5
    ref = a.astype(np.int64) @ b.astype(np.int64)
    for max_dim in (1, 2, 3, 4, 5, 8, BIG):
        assert_array_equal(GEMM[dtype](a, b, False, False, max_dim), ref)
        assert_array_equal(GEMM[dtype](a.T.copy(), b, True, False, max_dim), ref)
        assert_array_equal(GEMM[dtype](a, b.T.copy(), False, True, max_dim), ref)
        assert_array_equal(GEMM[dtype](a.T.copy(), b.T.copy(), True, True, max_dim), ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_empty_dimensions(dtype):
    f = GEMM[dtype]
    # k = 0: the product is all zeros (BLAS only scales C by beta = 0).
    assert_array_equal(f(np.zeros((3, 0), dtype), np.zeros((0, 4), dtype), False, False, 2),
                       np.zeros((3, 4), dtype))
    assert_array_equal(f(np.zeros((0, 3), dtype), np.zeros((4, 0), dtype), True, True, BIG),
                       np.zeros((3, 4), dtype))
    # m = 0 or n = 0: an empty result of the right shape.
    assert f(np.zeros((0, 5), dtype), np.ones((5, 4), dtype), False, False, 2).shape == (0, 4)
    assert f(np.ones((3, 5), dtype), np.zeros((5, 0), dtype), False, False, 2).shape == (3, 0)


def test_non_contiguous_inputs_are_converted():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 20))[::2, 1::2]  # (6, 10), strided
    b = np.asfortranarray(rng.standard_normal((10, 7)))
    assert_allclose(_core.gemm_f64(a, b, False, False, 3), a @ b, rtol=0, atol=1e-12)


def test_gemm_argument_errors():
    a = np.ones((3, 4))
    with pytest.raises(ValueError, match="inner dimensions"):
        _core.gemm_f64(a, np.ones((5, 2)), False, False, BIG)
    with pytest.raises(ValueError, match="2-D"):
        _core.gemm_f64(np.ones(3), np.ones((3, 2)), False, False, BIG)
    with pytest.raises(ValueError, match="max_dim"):
        _core.gemm_f64(a, np.ones((4, 2)), False, False, 0)
    with pytest.raises(ValueError, match="max_dim"):
        _core.gemm_f32(a.astype(np.float32), np.ones((4, 2), np.float32), False, False, 2**31)
