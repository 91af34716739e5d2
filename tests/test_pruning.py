"""matcompress.prune, prune_mask and taylor_scores.

Reference: numpy. Unstructured and block pruning keep the first n_keep blocks of a stable
argsort of -score (so equal scores keep the lower flat block index first), with
n_keep = n_blocks - floor(sparsity * n_blocks); a block's score is its sum of squared entry scores
accumulated in float64 in row-major order within the block (1 x 1: the score itself, in its own
dtype). N:M keeps, in every group of M consecutive entries along a row, the first N of a stable
argsort of -score. Every comparison is exact (assert_array_equal); the only tolerance is for
``matmul``, whose sums are ordered differently from numpy's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import matcompress as mc
from matcompress import _core
from matcompress.factors import Pruned, index_dtype

# ---------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------


def block_scores(S, block_shape):
    """The ranking key of every block: the score (1 x 1) or the float64 sum of squares."""
    br, bc = block_shape
    if (br, bc) == (1, 1):
        return np.asarray(S)
    m, n = S.shape
    B = np.asarray(S, dtype=np.float64).reshape(m // br, br, n // bc, bc)
    acc = np.zeros((m // br, n // bc))
    for r in range(br):  # row-major inside the block, one term at a time: the core's order
        for c in range(bc):
            v = B[:, r, :, c]
            acc = acc + v * v
    return acc


def expected_n_keep(n_blocks, sparsity):
    return n_blocks - math.floor(sparsity * n_blocks)


def reference_mask(S, sparsity, block_shape=(1, 1), n_keep=None):
    br, bc = block_shape
    key = block_scores(S, block_shape)
    if n_keep is None:
        n_keep = expected_n_keep(key.size, sparsity)
    order = np.argsort(-key.ravel(), kind="stable")
    keep = np.zeros(key.size, dtype=bool)
    keep[order[:n_keep]] = True
    keep = keep.reshape(key.shape)
    return np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)


def reference_n_m(S, n, m):
    rows, cols = S.shape
    groups = np.asarray(S).reshape(rows, cols // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=2)
    return keep.reshape(rows, cols)


def check_pruned(P, A, mask):
    """P holds exactly the entries of A where mask is true, in sorted CSR of the stated dtypes."""
    assert isinstance(P, Pruned)
    assert P.shape == A.shape and P.dtype == A.dtype
    assert P.nnz == int(mask.sum())
    assert P.indptr.dtype == np.int32
    assert P.indices.dtype == index_dtype(A.shape[1])
    assert_array_equal(np.diff(P.indptr.astype(np.int64)), mask.sum(axis=1))
    rows, cols = np.nonzero(mask)  # row-major: sorted columns within each row
    assert_array_equal(P.indices, cols)
    assert_array_equal(P.values, A[rows, cols])
    assert_array_equal(P.to_dense(), np.where(mask, A, 0))


def gaussian(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def quantized(rng, shape, dtype=np.float64, levels=4):
    """Many ties: entries in {-levels/2, ..., levels/2} / 2, zeros included."""
    return (rng.integers(-levels, levels + 1, size=shape) / 2).astype(dtype)


SPARSITIES = [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1 - 1e-9]

# ---------------------------------------------------------------------------------------------
# Unstructured and block pruning against numpy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("data", [gaussian, quantized])
def test_unstructured_matches_numpy(rng, dtype, data, sparsity):
    A = data(rng, (60, 70), dtype)
    expected = reference_mask(np.abs(A), sparsity)
    assert int(expected.sum()) == expected_n_keep(A.size, sparsity)
    assert_array_equal(mc.prune_mask(A, sparsity), expected)
    check_pruned(mc.prune(A, sparsity), A, expected)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.9, 0.99])
@pytest.mark.parametrize("block_shape", [(1, 4), (4, 1), (4, 4), (2, 5), (8, 10), (1, 80)])
@pytest.mark.parametrize("data", [gaussian, quantized])
def test_blocks_match_numpy(rng, dtype, data, block_shape, sparsity):
    A = data(rng, (64, 80), dtype)
    expected = reference_mask(np.abs(A), sparsity, block_shape)
    n_blocks = (64 // block_shape[0]) * (80 // block_shape[1])
    assert int(expected.sum()) == expected_n_keep(n_blocks, sparsity) * np.prod(block_shape)
    assert_array_equal(mc.prune_mask(A, sparsity, block_shape=block_shape), expected)
    check_pruned(mc.prune(A, sparsity, block_shape=block_shape), A, expected)


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 2)])
@pytest.mark.parametrize("fill", [0.0, 1.5])
def test_all_scores_equal(block_shape, fill):
    # Every block ties: the first n_keep in row-major block order are kept.
    A = np.full((12, 10), fill)
    for sparsity in (0.0, 0.25, 0.5, 0.97):
        expected = reference_mask(np.abs(A), sparsity, block_shape)
        assert_array_equal(mc.prune_mask(A, sparsity, block_shape=block_shape), expected)
        check_pruned(mc.prune(A, sparsity, block_shape=block_shape), A, expected)


def test_ties_straddle_rows_and_threshold():
    # Scores 0/1 with the threshold at 1: the ties kept run across several rows, then stop in
    # the middle of one.
    A = np.zeros((6, 5))
    A[[0, 1, 1, 3, 3, 3, 4, 5], [4, 0, 3, 1, 2, 4, 0, 2]] = 1.0
    A[2, 2] = 2.0
    for n_keep in range(1, 10):
        sparsity = 1 - n_keep / 30 + 1e-12
        assert expected_n_keep(30, sparsity) == n_keep
        expected = reference_mask(A, sparsity)
        assert_array_equal(mc.prune_mask(A, sparsity), expected)
        check_pruned(mc.prune(A, sparsity), A, expected)


def test_zero_scores_and_negative_zero():
    A = np.array([[0.0, -0.0, 1.0, -0.0], [0.0, 2.0, -0.0, 0.0]])
    for sparsity in (0.0, 0.5, 0.7):
        expected = reference_mask(np.abs(A), sparsity)
        assert_array_equal(mc.prune_mask(A, sparsity), expected)
    scores = np.array([[-0.0, 0.0, 0.0, -0.0], [0.0, 0.0, 1.0, -0.0]])  # -0 is non-negative
    expected = reference_mask(scores, 0.5)
    assert_array_equal(mc.prune_mask(A, 0.5, scores=scores), expected)


@pytest.mark.parametrize("shape", [(1, 37), (37, 1), (1, 1)])
def test_single_row_or_column(rng, shape):
    A = quantized(rng, shape)
    for sparsity in (0.0, 0.5, 0.95):
        expected = reference_mask(np.abs(A), sparsity)
        check_pruned(mc.prune(A, sparsity), A, expected)


def test_wide_range_of_magnitudes(rng):
    # Every exponent from 2^-1000 to 2^1000 (subnormals too): keys compare as the values.
    A = np.ldexp(rng.uniform(1, 2, (50, 41)), rng.integers(-1070, 1000, (50, 41)))
    A *= rng.choice([-1.0, 1.0], A.shape)
    for sparsity in (0.2, 0.9):
        assert_array_equal(mc.prune_mask(A, sparsity), reference_mask(np.abs(A), sparsity))
    f32 = np.ldexp(rng.uniform(1, 2, (50, 41)), rng.integers(-148, 120, (50, 41)))
    f32 = f32.astype(np.float32)
    assert_array_equal(mc.prune_mask(f32, 0.7), reference_mask(f32, 0.7))


def test_block_scores_beyond_the_float64_square_range(rng):
    # Squares of 1e200 overflow float64 and squares of 1e-200 underflow: the core rescales by a
    # power of two, which orders the blocks as the scaled reference does.
    base = gaussian(rng, (40, 40))
    for exponent in (700, -700):
        A = np.ldexp(base, exponent)
        expected = reference_mask(np.abs(base), 0.8, (2, 4))
        assert_array_equal(mc.prune_mask(A, 0.8, block_shape=(2, 4)), expected)
        check_pruned(mc.prune(A, 0.8, block_shape=(2, 4)), A, expected)


# ---------------------------------------------------------------------------------------------
# Scores given by the caller; taylor_scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scores_dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("block_shape", [(1, 1), (2, 2)])
def test_array_scores(rng, dtype, scores_dtype, block_shape):
    A = gaussian(rng, (30, 40), dtype)
    scores = rng.integers(0, 5, (30, 40)).astype(scores_dtype)  # ties, in the scores' dtype
    S = scores.astype(np.float64) if scores_dtype == np.int64 else scores
    expected = reference_mask(S, 0.6, block_shape)
    assert_array_equal(mc.prune_mask(A, 0.6, scores=scores, block_shape=block_shape), expected)
    check_pruned(mc.prune(A, 0.6, scores=scores, block_shape=block_shape), A, expected)


def test_scores_compared_in_their_own_dtype():
    # Two float64 scores that round to the same float32: the float64 order decides, not A's
    # float32 dtype.
    A = np.ones((1, 2), dtype=np.float32)
    scores = np.array([[1.0, 1.0 + 2**-40]])
    assert_array_equal(mc.prune_mask(A, 0.5, scores=scores), [[False, True]])


def test_taylor_scores(rng, dtype):
    A = gaussian(rng, (20, 30), dtype)
    G = gaussian(rng, (20, 30), dtype)
    T = mc.taylor_scores(A, G)
    assert T.dtype == dtype
    assert_array_equal(T, np.abs(A * G))
    expected = reference_mask(np.abs(A * G), 0.75)
    check_pruned(mc.prune(A, 0.75, scores=T), A, expected)


@pytest.mark.parametrize(
    ("a_dtype", "g_dtype", "out"),
    [
        (np.float32, np.float32, np.float32),
        (np.float32, np.float64, np.float64),
        (np.float64, np.float32, np.float64),
        (np.float32, np.int32, np.float64),
        (np.int64, np.int64, np.float64),
        (np.float16, np.float32, np.float64),
    ],
)
def test_taylor_scores_dtype_promotion(a_dtype, g_dtype, out):
    A = np.array([[1, -2], [3, 0]], dtype=a_dtype)
    G = np.array([[2, 2], [-1, 5]], dtype=g_dtype)
    T = mc.taylor_scores(A, G)
    assert T.dtype == out
    assert_array_equal(T, [[2, 4], [3, 0]])


def test_taylor_scores_any_shape_and_inputs_kept(rng):
    A = gaussian(rng, (3, 4, 5))
    G = gaussian(rng, (3, 4, 5))
    A0, G0 = A.copy(), G.copy()
    assert_array_equal(mc.taylor_scores(A, G), np.abs(A * G))
    assert_array_equal(A, A0)
    assert_array_equal(G, G0)


# ---------------------------------------------------------------------------------------------
# N:M
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_m", [(2, 4), (1, 4), (4, 8), (2, 8), (3, 5), (1, 1), (4, 4),
                                 (7, 16), (5, 40)])
@pytest.mark.parametrize("data", [gaussian, quantized])
def test_n_m_matches_numpy(rng, dtype, data, n_m):
    n, m = n_m
    A = data(rng, (17, 80), dtype)
    expected = reference_n_m(np.abs(A), n, m)
    groups = expected.reshape(17, 80 // m, m)
    assert (groups.sum(axis=2) == n).all()  # N kept in every group
    kept = np.abs(A).reshape(17, 80 // m, m)
    # group by group: every kept score >= every dropped one
    low_kept = np.where(groups, kept, np.inf).min(axis=2)
    high_dropped = np.where(groups, -np.inf, kept).max(axis=2)
    assert (low_kept >= high_dropped).all()
    assert_array_equal(mc.prune_mask(A, n_m=n_m), expected)
    P = mc.prune(A, n_m=n_m)
    check_pruned(P, A, expected)
    assert P.nnz == 17 * (80 // m) * n
    assert_array_equal(P.indptr, np.arange(18) * (80 // m) * n)


def test_n_m_with_sparsity_and_scores(rng):
    A = gaussian(rng, (8, 16))
    scores = quantized(rng, (8, 16)) ** 2
    expected = reference_n_m(scores, 2, 4)
    assert_array_equal(mc.prune_mask(A, 0.5, scores=scores, n_m=(2, 4)), expected)
    A3 = gaussian(rng, (4, 9))
    assert_array_equal(mc.prune_mask(A3, 2 / 3, n_m=(1, 3)), reference_n_m(np.abs(A3), 1, 3))


# ---------------------------------------------------------------------------------------------
# Counts, dtypes, factorization
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "block_shape", "sparsity"),
    [((10, 10), (1, 1), 0.29), ((10, 10), (1, 1), 0.7), ((7, 3), (1, 1), 0.5),
     ((12, 12), (4, 4), 0.5), ((12, 12), (3, 4), 0.99), ((100, 10), (1, 1), 1 - 1e-12),
     ((5, 5), (1, 1), 0.0)],
)
def test_nnz_follows_the_documented_count(rng, shape, block_shape, sparsity):
    A = gaussian(rng, shape)
    n_blocks = (shape[0] // block_shape[0]) * (shape[1] // block_shape[1])
    n_keep = n_blocks - math.floor(sparsity * n_blocks)
    assert n_keep >= 1
    P = mc.prune(A, sparsity, block_shape=block_shape)
    assert P.nnz == n_keep * block_shape[0] * block_shape[1]
    assert mc.prune_mask(A, sparsity, block_shape=block_shape).sum() == P.nnz


def test_sparsity_zero_keeps_everything(rng):
    A = quantized(rng, (9, 11))
    P = mc.prune(A, 0.0)
    assert P.nnz == A.size
    assert_array_equal(P.to_dense(), A)
    assert mc.prune_mask(A, 0).all()


@pytest.mark.parametrize(("n_cols", "idx"), [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                             (65536, np.uint16), (65537, np.uint32)])
def test_index_dtype(rng, n_cols, idx):
    A = gaussian(rng, (2, n_cols), np.float32)
    P = mc.prune(A, 0.5)
    assert P.indices.dtype == idx
    assert P.indptr.dtype == np.int32
    assert P.values.dtype == np.float32
    check_pruned(P, A, reference_mask(np.abs(A), 0.5))


def test_core_int64_indices_and_keep_none(rng):
    A = gaussian(rng, (6, 8))
    indptr, indices, values, _, _ = _core.prune_csr(A, A, 1, 1, 10, 1, 8)
    assert indptr.dtype == np.int64 and indices.dtype == np.int64
    expected = reference_mask(np.abs(A), None, n_keep=10)
    P = Pruned(indptr, indices, 8, values=values)
    assert_array_equal(P.to_dense(), np.where(expected, A, 0))
    # n_keep = 0 (no sparsity < 1 reaches it through prune): nothing kept
    indptr, indices, values, _, _ = _core.prune_csr(A, A, 2, 2, 0, 1, 1)
    assert indptr.tolist() == [0] * 7 and indices.size == 0 and values.size == 0
    assert not _core.prune_mask(A, 1, 1, 0, 2).any()


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 4)])
def test_pruned_dense_and_matmul(rng, dtype, block_shape):
    A = gaussian(rng, (32, 48), dtype)
    mask = mc.prune_mask(A, 0.8, block_shape=block_shape)
    P = mc.prune(A, 0.8, block_shape=block_shape)
    W = A * mask
    assert_array_equal(P.to_dense(), W)
    x = gaussian(rng, (5, 32), dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    # error of a float dot product: a few ulps of the sum of |terms|
    assert (np.abs(P.matmul(x) - x @ W) <= rtol * (np.abs(x) @ np.abs(W))).all()
    assert P.compression_ratio > 1


def test_integer_input_becomes_float64():
    A = np.array([[1, -5, 2, 0], [3, 3, -3, 1]])
    P = mc.prune(A, 0.5)
    assert P.dtype == np.float64
    assert_array_equal(P.to_dense(), np.where(reference_mask(np.abs(A), 0.5), A, 0))


# ---------------------------------------------------------------------------------------------
# Threads, layouts, inputs kept
# ---------------------------------------------------------------------------------------------


def crowded(rng, shape, dtype):
    """80 % of the entries equal: the threshold bucket holds over 2**20 entries."""
    A = gaussian(rng, shape, dtype)
    A[rng.random(shape) < 0.8] = 1.0
    return A


@pytest.mark.parametrize("data", [gaussian, quantized, crowded])
def test_bitwise_identical_for_any_thread_count(rng, dtype, data):
    # 1.5M entries: three parts per pass at three threads (about 0.5M entries per thread), and
    # the parallel refinement of a crowded threshold bucket.
    A = data(rng, (1500, 1000), dtype)
    cases = [dict(sparsity=0.9), dict(sparsity=0.37), dict(sparsity=0.5),
             dict(sparsity=0.9, block_shape=(4, 4)), dict(sparsity=0.5, block_shape=(1, 8)),
             dict(n_m=(2, 4)), dict(n_m=(3, 20))]
    for kw in cases:
        ref = mc.prune(A, n_threads=1, **kw)
        ref_mask = mc.prune_mask(A, n_threads=1, **kw)
        for n_threads in (2, 3, None):
            assert mc.prune(A, n_threads=n_threads, **kw) == ref, kw
            assert_array_equal(mc.prune_mask(A, n_threads=n_threads, **kw), ref_mask)
    for sparsity in (0.9, 0.5):
        expected = reference_mask(np.abs(A), sparsity)
        assert_array_equal(mc.prune_mask(A, sparsity, n_threads=2), expected)


def test_layouts_and_inputs_not_modified(rng, dtype):
    base = gaussian(rng, (40, 60), dtype)
    scores = np.abs(gaussian(rng, (60, 40), dtype)).T  # Fortran-ordered view
    views = {"C": base, "F": np.asfortranarray(base), "strided": gaussian(rng, (40, 120),
                                                                          dtype)[:, ::2]}
    for name, A in views.items():
        keep = A.copy()
        keep_scores = scores.copy()
        C = np.ascontiguousarray(A)
        for kw in (dict(sparsity=0.7), dict(sparsity=0.7, block_shape=(2, 3)), dict(n_m=(2, 4)),
                   dict(sparsity=0.5, scores=scores)):
            assert mc.prune(A, **kw) == mc.prune(C, **kw), name
            assert_array_equal(mc.prune_mask(A, **kw), mc.prune_mask(C, **kw))
        assert_array_equal(A, keep)
        assert_array_equal(scores, keep_scores)
    G = np.asfortranarray(gaussian(rng, (40, 60), dtype))
    assert_array_equal(mc.taylor_scores(views["F"], G), np.abs(base * G))


def test_concurrent_calls(rng):
    import threading

    A = gaussian(rng, (400, 500), np.float32)
    ref = mc.prune(A, 0.9)
    out = []

    def work():
        out.append(mc.prune(A, 0.9, n_threads=1))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and all(p == ref for p in out)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

_A = np.arange(24, dtype=np.float64).reshape(4, 6)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((_A,), {}, TypeError, "sparsity is required"),
        ((_A, 1.0), {}, ValueError, r"sparsity must lie in \[0, 1\)"),
        ((_A, -0.1), {}, ValueError, r"sparsity must lie in \[0, 1\)"),
        ((_A, 1.5), {}, ValueError, r"sparsity must lie in \[0, 1\)"),
        ((_A, float("nan")), {}, ValueError, "sparsity must be finite"),
        ((_A, "0.5"), {}, TypeError, "sparsity must be a real number"),
        ((_A, True), {}, TypeError, "sparsity must be a real number"),
        ((_A, 0.5), {"block_shape": (3, 4)}, ValueError, r"block_shape=\(3, 4\) must divide"),
        ((_A, 0.5), {"block_shape": (0, 1)}, ValueError, "block_shape must be >= 1"),
        ((_A, 0.5), {"block_shape": 2}, TypeError, "block_shape must be a pair"),
        ((_A, 0.5), {"block_shape": (1, 2, 3)}, TypeError, "block_shape must be a pair"),
        ((_A, 0.5), {"block_shape": (1.0, 2)}, TypeError, "block_shape must be an integer"),
        ((_A,), {"n_m": (2, 4)}, ValueError, "n_m=\\(2, 4\\): M must divide"),
        ((_A,), {"n_m": (3, 2)}, ValueError, "N must be <= M"),
        ((_A,), {"n_m": (0, 2)}, ValueError, "n_m must be >= 1"),
        ((_A,), {"n_m": 2}, TypeError, "n_m must be a pair"),
        ((_A, 0.25), {"n_m": (1, 2)}, ValueError, "sparsity=0.25 contradicts n_m"),
        ((_A,), {"n_m": (1, 2), "block_shape": (2, 2)}, ValueError, "n_m and block_shape"),
        ((_A, 0.5), {"scores": "gradient"}, ValueError, "scores must be one of"),
        ((_A, 0.5), {"scores": 1.0}, TypeError, "scores must be one of"),
        ((_A, 0.5), {"scores": None}, TypeError, "scores must be an array"),
        ((_A, 0.5), {"scores": np.ones((6, 4))}, ValueError, "scores must have the shape of A"),
        ((_A, 0.5), {"scores": np.ones(24)}, ValueError, "scores must be 2-D"),
        ((_A, 0.5), {"scores": -np.ones((4, 6))}, ValueError, "scores must be non-negative"),
        ((_A, 0.5), {"scores": np.full((4, 6), np.nan)}, ValueError, "scores contains NaN"),
        ((_A, 0.5), {"scores": np.full((4, 6), np.inf)}, ValueError, "scores contains infinity"),
        ((_A, 0.5), {"scores": np.ones((4, 6), complex)}, TypeError, "scores must be real"),
        ((np.ones(5), 0.5), {}, ValueError, "A must be 2-D"),
        ((np.ones((0, 3)), 0.5), {}, ValueError, "A is empty"),
        ((np.where(_A > 3, np.nan, _A), 0.5), {}, ValueError, "A contains NaN"),
        ((np.where(_A > 3, -np.inf, _A), 0.5), {}, ValueError, "A contains infinity"),
        ((_A.astype(str), 0.5), {}, TypeError, "A must be a numeric array"),
        ((_A, 0.5), {"n_threads": 0}, ValueError, "n_threads must be None, -1 or a positive"),
        ((_A, 0.5), {"n_threads": 1.5}, TypeError, "n_threads must be an integer"),
    ],
)
@pytest.mark.parametrize("fn", [mc.prune, mc.prune_mask], ids=["prune", "prune_mask"])
def test_bad_input(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize(
    ("A", "grad", "exc", "match"),
    [
        (np.ones((2, 3)), np.ones((3, 2)), ValueError, "grad must have the shape of A"),
        (np.ones((2, 3)), np.ones(3), ValueError, "grad must have the shape of A"),
        (np.ones((2, 3)), np.full((2, 3), np.nan), ValueError, "grad contains NaN"),
        (np.full((2, 3), np.inf), np.ones((2, 3)), ValueError, "A contains infinity"),
        (np.full((2, 3), 1e30, np.float32), np.full((2, 3), 1e30, np.float32), ValueError,
         "A \\* grad overflows float32"),
        (np.ones((2, 3)), None, TypeError, "grad must be an array"),
        (np.ones((2, 3)), np.ones((2, 3), complex), TypeError, "grad must be real"),
    ],
)
def test_taylor_scores_bad_input(A, grad, exc, match):
    with pytest.raises(exc, match=match):
        mc.taylor_scores(A, grad)


def test_core_checks_its_own_preconditions():
    A = np.ones((4, 6))
    with pytest.raises(ValueError, match="block_shape must divide"):
        _core.prune_csr(A, A, 3, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="n_keep out of range"):
        _core.prune_csr(A, A, 1, 1, 25, 1, 1)
    with pytest.raises(ValueError, match="scores must have the shape of A"):
        _core.prune_csr(A, np.ones((6, 4)), 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="N:M needs"):
        _core.prune_n_m_csr(A, A, 2, 4, 1, 1)
    with pytest.raises(ValueError, match="index_bytes"):
        _core.prune_csr(A, A, 1, 1, 1, 1, 3)
    with pytest.raises(TypeError, match="A must be float32 or float64"):
        _core.prune_csr(A.astype(np.int64), A, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="too small for 300 columns"):
        B = np.ones((1, 300))
        _core.prune_csr(B, B, 1, 1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Property test
# ---------------------------------------------------------------------------------------------


def _divisors(k):
    return [d for d in range(1, k + 1) if k % d == 0]


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 24))
    cols = draw(st.integers(1, 24))
    br = draw(st.sampled_from(_divisors(rows)))
    bc = draw(st.sampled_from(_divisors(cols)))
    sparsity = draw(st.floats(0.0, 1.0, exclude_max=True))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    levels = draw(st.sampled_from([0, 1, 3, 1000]))  # 0: Gaussian, else quantized (ties)
    rng = np.random.default_rng(seed)
    A = gaussian(rng, (rows, cols), dtype) if levels == 0 else quantized(rng, (rows, cols),
                                                                         dtype, levels)
    n_threads = draw(st.sampled_from([1, 2, 3]))
    return A, sparsity, (br, bc), n_threads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_property_matches_numpy(problem):
    A, sparsity, block_shape, n_threads = problem
    expected = reference_mask(np.abs(A), sparsity, block_shape)
    n_blocks = A.size // (block_shape[0] * block_shape[1])
    assert expected.sum() == expected_n_keep(n_blocks, sparsity) * block_shape[0] * block_shape[1]
    assert_array_equal(mc.prune_mask(A, sparsity, block_shape=block_shape, n_threads=n_threads),
                       expected)
    check_pruned(mc.prune(A, sparsity, block_shape=block_shape, n_threads=n_threads), A,
                 expected)
