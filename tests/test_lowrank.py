"""matcompress.low_rank and randomized_svd against numpy's SVD.

Tolerances (stated once):

* exact (``method="svd"``): the error ``||A - left @ right||_F`` equals
  ``sqrt(sum of the dropped s_i^2)`` (numpy's float64 SVD of A) to ``EXACT_ATOL[dtype] *
  ||A||_F`` (float32 2e-6, float64 1e-13: a backward-stable SVD is exact for a nearby matrix
  within a few ulps of ``||A||``); the product equals the numpy truncation to the same bound.
* balance: ``left.T @ left`` and ``right @ right.T`` equal ``diag(s[:rank])`` to
  ``EXACT_ATOL[dtype] * s[0]`` element-wise (times 10 for the float32 Gram products).
* randomized (Halko et al. 2011, with power iterations): on a decaying spectrum (s_i = 1/i plus
  1e-3 noise) the error is within ``DECAY_RTOL = 1e-3`` of the optimum (measured <= 3e-5); on a
  flat one (Gaussian matrix) within ``FLAT_RTOL = 5e-2`` (measured <= 5e-3); its leading singular
  values within 1e-4 relative of the exact ones on the decaying spectrum.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import matcompress as mc
from matcompress.factors import LowRank

EXACT_ATOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}
DECAY_RTOL = 1e-3
FLAT_RTOL = 5e-2
SHAPES = [(120, 80), (60, 150)]  # tall and wide


def decaying(rng, m, n, dtype=np.float64, noise=1e-3):
    """U diag(1 / i) V^T plus Gaussian noise: a clear, distinct, decaying spectrum."""
    r = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    A = (U / np.arange(1, r + 1)) @ V.T + noise * rng.standard_normal((m, n)) / np.sqrt(max(m, n))
    return A.astype(dtype)


def optimum(A, rank):
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2))), s


def error(f, A):
    return float(np.linalg.norm(f.to_dense().astype(np.float64) - A.astype(np.float64)))


# ---------------------------------------------------------------------------------------------
# Exact truncated SVD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=["tall", "wide"])
@pytest.mark.parametrize("rank", [1, 5, 33, "min-1", "min"])
def test_svd_is_the_truncated_svd(rng, dtype, shape, rank):
    A = decaying(rng, *shape, dtype)
    r = {"min-1": min(shape) - 1, "min": min(shape)}.get(rank, rank)
    f = mc.low_rank(A, r, method="svd")
    assert isinstance(f, LowRank)
    assert f.left.shape == (shape[0], r) and f.right.shape == (r, shape[1]) and f.rank == r
    assert f.left.dtype == f.right.dtype == f.dtype == dtype
    opt, s = optimum(A, r)
    normA = float(np.linalg.norm(A.astype(np.float64)))
    atol = EXACT_ATOL[dtype] * normA
    assert abs(error(f, A) - opt) <= atol
    U, s64, Vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    truncation = (U[:, :r] * s64[:r]) @ Vt[:r]
    assert np.linalg.norm(f.to_dense() - truncation) <= 4 * atol


@pytest.mark.parametrize("method", ["svd", "randomized"])
def test_factors_are_balanced(rng, dtype, method):
    # left = U sqrt(s), right = sqrt(s) Vt: left^T left = right right^T = diag(s)
    A = decaying(rng, 90, 70, dtype)
    r = 8
    f = mc.low_rank(A, r, method=method, random_state=0)
    _, s = optimum(A, r)
    L, R = f.left.astype(np.float64), f.right.astype(np.float64)
    gram_tol = (10 if dtype == np.float32 else 1) * EXACT_ATOL[dtype] * s[0]
    # randomized: its own singular values, within 1e-4 of the exact ones on this spectrum
    rtol = 1e-4 if method == "randomized" else 0.0
    assert_allclose(np.diag(L.T @ L), np.diag(R @ R.T), rtol=0, atol=gram_tol)
    for G in (L.T @ L, R @ R.T):
        assert_allclose(np.diag(G), s[:r], rtol=rtol, atol=gram_tol)
        off = G - np.diag(np.diag(G))
        assert np.max(np.abs(off)) <= gram_tol
    # the two factors' columns/rows are the singular vectors up to sign
    U, _, Vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    if method == "svd":
        Un = L / np.sqrt(s[:r])
        Vn = R / np.sqrt(s[:r])[:, None]
        signs = np.sign(np.sum(Un * U[:, :r], axis=0))
        assert_allclose(Un * signs, U[:, :r], atol=1e3 * EXACT_ATOL[dtype])
        assert_allclose(Vn * signs[:, None], Vt[:r], atol=1e3 * EXACT_ATOL[dtype])


def test_exact_low_rank_matrix_is_recovered(rng, dtype):
    A = (rng.standard_normal((50, 6)) @ rng.standard_normal((6, 40))).astype(dtype)
    tol = EXACT_ATOL[dtype] * np.linalg.norm(A.astype(np.float64)) * 10
    for method in ("svd", "randomized"):
        f = mc.low_rank(A, 6, method=method, random_state=1)
        assert error(f, A) <= tol


def test_integer_input_becomes_float64_and_input_untouched(rng):
    A = rng.integers(-5, 6, (30, 20))
    before = A.copy()
    for method in ("svd", "randomized"):
        f = mc.low_rank(A, 4, method=method, random_state=0)
        assert f.dtype == np.float64
    assert_array_equal(A, before)
    Af = np.asfortranarray(decaying(rng, 40, 30))
    before = Af.copy()
    f = mc.low_rank(Af, 3, random_state=0)
    g = mc.low_rank(np.ascontiguousarray(Af), 3, random_state=0)
    assert_array_equal(Af, before)
    assert_allclose(f.to_dense(), g.to_dense(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Randomized
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=["tall", "wide"])
@pytest.mark.parametrize("rank", [1, 5, 20, "min-2", "min"])
def test_randomized_close_to_exact_on_decaying_spectrum(rng, dtype, shape, rank):
    A = decaying(rng, *shape, dtype)
    r = {"min-2": min(shape) - 2, "min": min(shape)}.get(rank, rank)
    f = mc.low_rank(A, r, method="randomized", random_state=0)
    assert f.dtype == dtype and f.rank == r
    opt, _ = optimum(A, r)
    normA = float(np.linalg.norm(A.astype(np.float64)))
    assert error(f, A) <= opt * (1 + DECAY_RTOL) + 10 * EXACT_ATOL[dtype] * normA


@pytest.mark.parametrize("shape", SHAPES, ids=["tall", "wide"])
@pytest.mark.parametrize("rank", [1, 10, 30])
def test_randomized_close_to_exact_on_flat_spectrum(rng, dtype, shape, rank):
    A = rng.standard_normal(shape).astype(dtype)
    f = mc.low_rank(A, rank, random_state=0)
    opt, _ = optimum(A, rank)
    assert error(f, A) <= opt * (1 + FLAT_RTOL)


def test_default_method_is_randomized(rng):
    A = decaying(rng, 60, 50)
    assert mc.low_rank(A, 5, random_state=3) == mc.low_rank(A, 5, method="randomized",
                                                             random_state=3)


def test_randomized_is_deterministic_for_a_seed(rng, dtype):
    A = decaying(rng, 80, 60, dtype)
    a = mc.low_rank(A, 7, random_state=11)
    b = mc.low_rank(A, 7, random_state=11)
    assert a == b
    c = mc.low_rank(A, 7, random_state=np.random.default_rng(11))
    assert c == a  # a Generator seeded alike draws the same Omega
    U1, s1, V1 = mc.randomized_svd(A, 7, random_state=5)
    U2, s2, V2 = mc.randomized_svd(A, 7, random_state=5)
    assert_array_equal(U1, U2)
    assert_array_equal(s1, s2)
    assert_array_equal(V1, V2)


@pytest.mark.parametrize("shape", SHAPES, ids=["tall", "wide"])
def test_randomized_svd_matches_numpy(rng, dtype, shape):
    A = decaying(rng, *shape, dtype)
    r = 10
    U, s, Vt = mc.randomized_svd(A, r, random_state=0)
    m, n = shape
    assert U.shape == (m, r) and s.shape == (r,) and Vt.shape == (r, n)
    assert U.dtype == s.dtype == Vt.dtype == dtype
    s_ref = np.linalg.svd(A.astype(np.float64), compute_uv=False)[:r]
    assert_allclose(s, s_ref, rtol=1e-4)
    assert np.all(np.diff(s) <= 0)  # descending
    eye_tol = 1e3 * EXACT_ATOL[dtype]
    assert_allclose(U.T.astype(np.float64) @ U, np.eye(r), atol=eye_tol)
    assert_allclose(Vt.astype(np.float64) @ Vt.T, np.eye(r), atol=eye_tol)
    opt, _ = optimum(A, r)
    recon = (U.astype(np.float64) * s) @ Vt
    assert np.linalg.norm(recon - A) <= opt * (1 + DECAY_RTOL) + 10 * EXACT_ATOL[dtype]


@pytest.mark.parametrize("n_iter", [0, 1, 7])
@pytest.mark.parametrize("n_oversamples", [0, 5, 200])
def test_randomized_options(rng, n_iter, n_oversamples):
    # every option value runs and gives a valid rank-r factorization; more power iterations
    # (or full oversampling) bring it to the optimum on a decaying spectrum
    A = decaying(rng, 70, 50)
    r = 6
    f = mc.low_rank(A, r, n_iter=n_iter, n_oversamples=n_oversamples, random_state=0)
    opt, _ = optimum(A, r)
    err = error(f, A)
    assert err >= opt * (1 - 1e-12)
    if n_oversamples == 0:  # a sketch of exactly r columns: looser (measured 1.67, 1.12, 1.0015)
        bound = {0: 2.5, 1: 1.25, 7: 1.01}[n_iter]
    else:
        bound = {0: 1.5, 1: 1.05, 7: 1 + DECAY_RTOL}[n_iter]
    if n_oversamples == 200:  # l = min(m, n): Q spans the whole column space
        bound = 1 + 1e-10
    assert err <= opt * bound


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

A_OK = np.random.default_rng(0).standard_normal((12, 8))


def _with(value, index=(1, 2)):
    A = A_OK.copy()
    A[index] = value
    return A


BAD = [
    ("rank_0", dict(rank=0), ValueError, "rank must be >= 1; got 0"),
    ("rank_negative", dict(rank=-3), ValueError, "rank must be >= 1"),
    ("rank_too_big", dict(rank=9), ValueError, r"rank must be <= 8 \(min\(m, n\) = 8\); got 9"),
    ("rank_float", dict(rank=2.0), TypeError, "rank must be an integer"),
    ("rank_none", dict(rank=None), TypeError, "rank must be an integer"),
    ("rank_bool", dict(rank=True), TypeError, "rank must be an integer"),
    ("nan", dict(A=_with(np.nan)), ValueError, "A contains NaN"),
    ("inf", dict(A=_with(-np.inf)), ValueError, "A contains infinity"),
    ("1d", dict(A=np.ones(5), rank=1), ValueError, "A must be 2-D"),
    ("3d", dict(A=np.ones((2, 3, 4)), rank=1), ValueError, "A must be 2-D"),
    ("empty", dict(A=np.ones((0, 3)), rank=1), ValueError, "A is empty"),
    ("complex", dict(A=A_OK.astype(complex)), TypeError, "A must be real"),
    ("strings", dict(A=np.array([["a", "b"]])), TypeError, "A must be a numeric array"),
    ("none", dict(A=None), TypeError, "A must be an array"),
    ("n_iter_negative", dict(n_iter=-1), ValueError, "n_iter must be >= 0; got -1"),
    ("n_iter_bogus", dict(n_iter="bogus"), ValueError, "n_iter must be a non-negative int or "
                                                       "'auto'; got 'bogus'"),
    ("n_iter_float", dict(n_iter=2.5), TypeError, "n_iter must be an integer"),
    ("n_oversamples_negative", dict(n_oversamples=-1), ValueError, "n_oversamples must be >= 0"),
    ("random_state_bad", dict(random_state="seed"), TypeError, "random_state must be"),
    ("random_state_negative", dict(random_state=-1), ValueError, "random_state must be a "
                                                                 "non-negative"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.parametrize("func", ["low_rank", "randomized_svd"])
def test_bad_input(func, kwargs, exc, match):
    kwargs = {"A": A_OK, "rank": 3, **kwargs}
    A, rank = kwargs.pop("A"), kwargs.pop("rank")
    with pytest.raises(exc, match=match):
        getattr(mc, func)(A, rank, **kwargs)


@pytest.mark.parametrize("method", ["bogus", "SVD", None])
def test_bad_method(method):
    with pytest.raises(ValueError, match=r"method must be one of \('svd', 'randomized'\)"):
        mc.low_rank(A_OK, 2, method=method)


def test_rank_checked_against_wide_matrix():
    with pytest.raises(ValueError, match=r"rank must be <= 8 \(min\(m, n\) = 8\)"):
        mc.low_rank(A_OK.T, 9)
    assert mc.low_rank(A_OK.T, 8, method="svd").shape == (8, 12)
