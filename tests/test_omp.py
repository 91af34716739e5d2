"""matcompress.sparse_encode against scikit-learn's OMP, the independent reference.

Tolerances (stated once, used throughout):

* coefficients, float32: rtol = atol = 1e-4. Both implementations solve the same small
  least-squares systems (at most 32 atoms of a random unit-norm dictionary, condition numbers of
  order 10) in float32 with eps = 1.2e-7, in a different order of operations; the observed
  differences are ~1e-6, so 1e-4 leaves a wide margin yet catches any real error (a wrong
  coefficient is off by O(1)).
* coefficients, float64: rtol = atol = 1e-10 (same argument with eps = 2.2e-16).
* residual norms ``||x - code @ D||``: relative 1e-4 (float32), 1e-9 (float64). The residual is
  stationary in the coefficients on a fixed support, so it agrees even more tightly than the
  coefficients do when the supports agree; a different support shows up as an O(1) difference.

scikit-learn is ~100x slower than the kernel, so reference calls are kept to a few hundred
signals and cached across the n_threads parametrisation.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.decomposition import sparse_encode as sk_sparse_encode
from sklearn.linear_model import orthogonal_mp_gram

import matcompress as mc
from conftest import (
    make_dictionary,
    make_gaussian_signals,
    make_sparse_signals,
    residual_norms,
    supports,
    use_isa,
)
from matcompress import _core

COEF_TOL = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
}
RESID_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}


def sk_omp(X, D, n_nonzero_coefs=None, **kwargs):
    """scikit-learn's sparse_encode with algorithm='omp'."""
    if n_nonzero_coefs is None:
        return sk_sparse_encode(X, D, algorithm="omp", **kwargs)
    return sk_sparse_encode(X, D, algorithm="omp", n_nonzero_coefs=n_nonzero_coefs, **kwargs)


def _frozen(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=None)
def sparse_case(k, m, s, n, dtype_name, seed=0):
    """(D, X, sklearn codes) for s-sparse signals + noise 1e-3; cached, read-only arrays."""
    rng = np.random.default_rng([seed, k, m, s, n])
    D = make_dictionary(rng, k, m, np.dtype(dtype_name))
    X, _, _ = make_sparse_signals(rng, D, n, s, noise=1e-3)
    ref = sk_omp(X, D, s)
    return _frozen(D, X, ref)


@functools.lru_cache(maxsize=None)
def gaussian_case(k, m, s, n, dtype_name, seed=0):
    """(D, X, sklearn codes) for standard normal signals; cached, read-only arrays."""
    rng = np.random.default_rng([seed, k, m, s, n, 1])
    D = make_dictionary(rng, k, m, np.dtype(dtype_name))
    X = make_gaussian_signals(rng, n, m, np.dtype(dtype_name))
    ref = sk_omp(X, D, s)
    return _frozen(D, X, ref)


def nnz_per_row(codes):
    return np.count_nonzero(supports(codes), axis=1)


# (n_components, n_features, s, n_samples): the three benchmark shapes with fewer signals, then
# odd sizes (n_components not a multiple of the 32-wide padding / vector blocks, s hitting every
# remainder of the 4-, 2- and 1-chain update loops, s = n_features, a single atom).
SPARSE_SIZES = [
    (256, 64, 8, 300),
    (1024, 256, 16, 300),
    (2048, 512, 32, 150),
    (37, 20, 5, 200),
    (100, 30, 10, 200),
    (257, 64, 12, 200),
    (33, 16, 3, 100),
    (65, 24, 7, 100),
    (40, 12, 10, 60),
    (1, 5, 1, 20),
    (17, 40, 6, 50),
]


def _size_id(size):
    k, m, s, n = size
    return f"k{k}-m{m}-s{s}-n{n}"


# ---------------------------------------------------------------------------------------------
# Agreement with scikit-learn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SPARSE_SIZES, ids=_size_id)
def test_sparse_signals_match_sklearn(size, dtype, n_threads):
    k, m, s, n = size
    D, X, ref = sparse_case(k, m, s, n, dtype.name)
    got = mc.sparse_encode(X, D, n_nonzero_coefs=s, n_threads=n_threads)
    assert isinstance(got, np.ndarray)
    assert got.shape == (n, k)
    assert got.dtype == dtype
    # Supports identical, signal by signal, and exactly s atoms each.
    assert_array_equal(supports(got), supports(ref))
    assert_array_equal(nnz_per_row(got), np.full(n, s))
    assert_allclose(got, ref, **COEF_TOL[dtype])


# Gaussian signals: no sparse structure, so later greedy choices may be close calls.
GAUSSIAN_SIZES = [
    (256, 64, 8, 300),
    (1024, 256, 16, 200),
    (37, 20, 5, 200),
    (100, 30, 10, 200),
    (257, 64, 12, 200),
]


@pytest.mark.parametrize("size", GAUSSIAN_SIZES, ids=_size_id)
def test_gaussian_signals_residuals_match_sklearn(size, dtype, n_threads):
    k, m, s, n = size
    D, X, ref = gaussian_case(k, m, s, n, dtype.name)
    got = mc.sparse_encode(X, D, n_nonzero_coefs=s, n_threads=n_threads)
    assert got.dtype == dtype and got.shape == (n, k)
    assert np.all(nnz_per_row(got) <= s)
    r_got = residual_norms(X, got, D)
    r_ref = residual_norms(X, ref, D)
    assert_allclose(r_got, r_ref, rtol=RESID_RTOL[dtype], atol=0)
    # Supports may legitimately differ on float32 near-ties, but only for a handful of signals.
    same = np.all(supports(got) == supports(ref), axis=1)
    assert same.mean() >= (0.95 if dtype == np.float32 else 0.99)
    # Where the supports agree the coefficients agree too.
    assert_allclose(got[same], ref[same], **COEF_TOL[dtype])


def test_as_many_atoms_as_features_float64():
    # s = n_features (< n_components): the codes reconstruct x exactly. float64 only: in float32
    # the last correlations can fall below eps and both implementations then stop early.
    D, X, ref = sparse_case(40, 12, 12, 60, "float64")
    got = mc.sparse_encode(X, D, n_nonzero_coefs=12)
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    assert np.all(residual_norms(X, got, D) <= 1e-9)


def test_single_signal(dtype):
    D, X, ref = sparse_case(100, 30, 10, 200, dtype.name)
    got = mc.sparse_encode(X[7:8], D, n_nonzero_coefs=10)
    assert got.shape == (1, 100) and got.dtype == dtype
    assert_array_equal(supports(got), supports(ref[7:8]))
    assert_allclose(got, ref[7:8], **COEF_TOL[dtype])


@pytest.mark.parametrize(
    ("k", "m", "expected"),
    [(64, 64, 6), (50, 5, 1), (7, 100, 7), (300, 128, 12), (20, 19, 1), (40, 30, 3)],
)
def test_default_n_nonzero_coefs_matches_sklearn(k, m, expected, dtype):
    # sklearn's default: int(min(max(n_features / 10, 1), n_components)).
    rng = np.random.default_rng([k, m])
    D = make_dictionary(rng, k, m, dtype)
    X = make_gaussian_signals(rng, 60, m, dtype)
    got = mc.sparse_encode(X, D)
    ref = sk_omp(X, D)
    assert_array_equal(nnz_per_row(got), np.full(60, expected))
    assert_array_equal(nnz_per_row(ref), np.full(60, expected))
    assert_allclose(residual_norms(X, got, D), residual_norms(X, ref, D), rtol=RESID_RTOL[dtype])
    assert_array_equal(supports(got), supports(ref))


def test_unnormalised_atoms_match_sklearn(rng, dtype):
    # Atoms need not have unit norm: the selection uses raw correlations, as in scikit-learn.
    D = make_dictionary(rng, 80, 24, np.float64) * rng.uniform(0.2, 5.0, size=(80, 1))
    D = D.astype(dtype)
    X, _, _ = make_sparse_signals(rng, D, 100, 5, noise=1e-3)
    got = mc.sparse_encode(X, D, n_nonzero_coefs=5)
    ref = sk_omp(X, D, 5)
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, **COEF_TOL[dtype])


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 17), (3, 40), (5, 69), (2, 34), (0, 99), (64, 65)])
@pytest.mark.parametrize("negate", [False, True])
def test_ties_pick_the_first_index_like_sklearn(a, b, negate, dtype):
    # Atoms a < b are identical (or opposite): |<x, d_a>| == |<x, d_b>| exactly for x = 2 d_b.
    # Entries are 0 / +-1 with exactly 8 nonzeros per atom, so every correlation is an exact
    # integer in any summation order and no other atom reaches the maximum (|<d_b, d>| = 8 only
    # for d = +-d_b). Both implementations must pick the first index (numpy's argmax rule),
    # across lanes and vector blocks of the kernel.
    rng = np.random.default_rng([a, b])
    k, m = 100, 16
    while True:
        D = np.zeros((k, m))
        for r in range(k):
            cols = rng.choice(m, size=8, replace=False)
            D[r, cols] = rng.choice([-1.0, 1.0], size=8)
        D[a] = -D[b] if negate else D[b]
        unique_up_to_sign = {tuple(row * np.sign(row[np.flatnonzero(row)[0]])) for row in D}
        if len(unique_up_to_sign) == k - 1:
            break
    D = D.astype(dtype)
    X = (2.0 * D[[b]]).astype(dtype)
    got = mc.sparse_encode(X, D, n_nonzero_coefs=1)
    ref = sk_omp(X, D, 1)
    assert np.flatnonzero(got[0]).tolist() == [a]
    assert np.flatnonzero(ref[0]).tolist() == [a]
    assert_allclose(got, ref, **COEF_TOL[dtype])
    assert got[0, a] == pytest.approx(-2.0 if negate else 2.0)


# ---------------------------------------------------------------------------------------------
# tol mode
# ---------------------------------------------------------------------------------------------


def _sk_tol(X, D, tol, n_nonzero_coefs=None):
    """orthogonal_mp_gram on (D D^T, D X^T), as (n_samples, n_components)."""
    G = D @ D.T
    Xy = D @ X.T
    norms = np.einsum("ij,ij->i", X, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's own premature-stop warnings
        if n_nonzero_coefs is not None:
            coef = orthogonal_mp_gram(G, Xy, n_nonzero_coefs=n_nonzero_coefs)
        else:
            coef = orthogonal_mp_gram(G, Xy, tol=tol, norms_squared=norms)
    return coef.reshape(D.shape[0], X.shape[0]).T


@pytest.mark.parametrize(
    ("k", "m", "tol_fraction"),
    [(256, 64, 0.4), (256, 64, 0.1), (37, 20, 0.3), (100, 30, 0.2), (257, 64, 0.25)],
)
def test_tol_matches_orthogonal_mp_gram(k, m, tol_fraction, dtype, n_threads):
    rng = np.random.default_rng([k, m, int(tol_fraction * 100)])
    D = make_dictionary(rng, k, m, dtype)
    # Half Gaussian signals (many atoms needed), half sparse ones (few atoms needed).
    Xs, _, _ = make_sparse_signals(rng, D, 100, 4, noise=0.05)
    X = np.vstack([make_gaussian_signals(rng, 100, m, dtype), Xs])
    tol = tol_fraction * float(np.median(np.einsum("ij,ij->i", X, X, dtype=np.float64)))
    got = mc.sparse_encode(X, D, tol=tol, n_threads=n_threads)
    ref = _sk_tol(X, D, tol)
    assert got.dtype == dtype
    nnz_got, nnz_ref = nnz_per_row(got), nnz_per_row(ref)
    assert np.all(nnz_got >= 1) and np.all(nnz_got <= min(k, m))
    assert nnz_got.max() < min(k, m)  # the rule, not the cap, ended every signal here
    res2 = residual_norms(X, got, D) ** 2
    norms2 = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    if dtype == np.float64:
        assert_array_equal(nnz_got, nnz_ref)
        assert_array_equal(supports(got), supports(ref))
        assert_allclose(got, ref, **COEF_TOL[dtype])
        assert np.all(res2 <= tol * (1 + 1e-9))
    else:
        # The squared residual is tracked by downdating in float32: allow 1e-4 * ||x||^2 slack.
        assert np.all(res2 <= tol + 1e-4 * norms2)
        # nnz must agree except where sklearn's squared residual is within 1e-3 (relative) of
        # tol, either at its last step or at the step before (there float32 rounding decides).
        res2_ref = residual_norms(X, ref, D) ** 2
        res2_prev = np.full_like(res2_ref, np.inf)
        for t in np.unique(nnz_ref):
            if t > 1:
                rows = np.flatnonzero(nnz_ref == t)
                prev = _sk_tol(X[rows], D, None, n_nonzero_coefs=int(t - 1))
                res2_prev[rows] = residual_norms(X[rows], prev, D) ** 2
        near = (np.abs(res2_ref - tol) <= 1e-3 * tol) | (np.abs(res2_prev - tol) <= 1e-3 * tol)
        assert near.mean() < 0.05
        assert_array_equal(nnz_got[~near], nnz_ref[~near])
        same = np.all(supports(got) == supports(ref), axis=1)
        assert same.mean() >= 0.95
        assert_allclose(got[same], ref[same], **COEF_TOL[dtype])


def test_tol_overrides_n_nonzero_coefs(rng, dtype):
    D = make_dictionary(rng, 64, 20, dtype)
    X = make_gaussian_signals(rng, 50, 20, dtype)
    tol = 5.0
    a = mc.sparse_encode(X, D, tol=tol)
    b = mc.sparse_encode(X, D, tol=tol, n_nonzero_coefs=1)
    assert_array_equal(a, b)
    assert nnz_per_row(a).max() > 1


def test_huge_tol_gives_exactly_one_atom(rng, dtype):
    # "At least one atom": even when ||x||^2 <= tol already, the first atom is taken (sklearn).
    D = make_dictionary(rng, 50, 16, dtype)
    X = make_gaussian_signals(rng, 40, 16, dtype)
    got = mc.sparse_encode(X, D, tol=1e6)
    assert_array_equal(nnz_per_row(got), np.ones(40, dtype=np.int64))
    assert_allclose(got, sk_omp(X, D, 1), **COEF_TOL[dtype])
    assert_allclose(got, _sk_tol(X, D, 1e6), **COEF_TOL[dtype])


def test_zero_tol_stops_at_n_features_atoms(rng):
    # tol=0 with n_components > n_features: capped at n_features atoms, exact reconstruction.
    D = make_dictionary(rng, 40, 12)
    X = make_gaussian_signals(rng, 30, 12)
    got = mc.sparse_encode(X, D, tol=0.0)
    assert_array_equal(nnz_per_row(got), np.full(30, 12))
    assert np.all(residual_norms(X, got, D) <= 1e-9 * np.linalg.norm(X, axis=1))


def test_zero_tol_with_few_atoms_is_least_squares(rng, dtype):
    # tol=0 with n_components <= n_features: every atom is used, so the code is the least-squares
    # solution over the whole dictionary (an independent reference: numpy's lstsq).
    D = make_dictionary(rng, 10, 30, dtype)
    X = make_gaussian_signals(rng, 25, 30, dtype)
    got = mc.sparse_encode(X, D, tol=0.0)
    assert_array_equal(nnz_per_row(got), np.full(25, 10))
    ref = np.linalg.lstsq(D.T.astype(np.float64), X.T.astype(np.float64), rcond=None)[0].T
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    assert_allclose(got, ref, **tol)


def test_tol_single_signal(rng, dtype):
    D = make_dictionary(rng, 64, 20, dtype)
    X = make_gaussian_signals(rng, 1, 20, dtype)
    tol = 0.3 * float(X[0] @ X[0])
    got = mc.sparse_encode(X, D, tol=tol)
    ref = _sk_tol(X, D, tol)
    assert got.shape == (1, 64)
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, **COEF_TOL[dtype])


# ---------------------------------------------------------------------------------------------
# gram / cov / copy_cov, and inputs left untouched
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["gram", "cov", "gram+cov", "cov-transposed-view"])
@pytest.mark.parametrize("use_tol", [False, True], ids=["nnz", "tol"])
def test_precomputed_gram_and_cov(given, use_tol, dtype, n_threads, rng):
    D = make_dictionary(rng, 100, 30, dtype)
    X, _, _ = make_sparse_signals(rng, D, 150, 6, noise=1e-3)
    kwargs = dict(tol=0.5) if use_tol else dict(n_nonzero_coefs=6)
    base = mc.sparse_encode(X, D, n_threads=n_threads, **kwargs)
    extra = {}
    if given in ("gram", "gram+cov"):
        extra["gram"] = D @ D.T
    if given in ("cov", "gram+cov"):
        extra["cov"] = D @ X.T
    if given == "cov-transposed-view":
        extra["cov"] = (X @ D.T).T  # a transposed (Fortran-ordered) view
    got = mc.sparse_encode(X, D, n_threads=n_threads, **extra, **kwargs)
    assert got.dtype == dtype
    # gram / cov by numpy round differently from the internal GEMM: same supports, close values.
    assert_array_equal(supports(got), supports(base))
    assert_allclose(got, base, **COEF_TOL[dtype])
    ref = sk_omp(X, D, 6) if not use_tol else _sk_tol(X, D, 0.5)
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, **COEF_TOL[dtype])


def test_copy_cov_has_no_effect_and_inputs_are_untouched(rng, dtype):
    D = make_dictionary(rng, 70, 25, dtype)
    X, _, _ = make_sparse_signals(rng, D, 80, 5)
    gram = D @ D.T
    cov = D @ X.T
    copies = [a.copy() for a in (X, D, gram, cov)]
    results = []
    for copy_cov in (True, False):
        for kwargs in ({}, dict(gram=gram), dict(cov=cov), dict(gram=gram, cov=cov)):
            results.append(mc.sparse_encode(X, D, copy_cov=copy_cov, n_nonzero_coefs=5, **kwargs))
            results.append(mc.sparse_encode(X, D, copy_cov=copy_cov, tol=0.1, **kwargs))
            for orig, copy in zip((X, D, gram, cov), copies):
                assert_array_equal(orig, copy)
    half = len(results) // 2
    for a, b in zip(results[:half], results[half:]):  # copy_cov=True vs False: bitwise equal
        assert_array_equal(a, b)


def test_inputs_untouched_when_cast(rng):
    # float32 X with a float64 dictionary / gram / cov: the casts must not write back.
    D = make_dictionary(rng, 50, 20)
    X = make_gaussian_signals(rng, 40, 20, np.float32)
    gram, cov = D @ D.T, D @ X.T.astype(np.float64)
    copies = [a.copy() for a in (X, D, gram, cov)]
    mc.sparse_encode(X, D, gram=gram, cov=cov, n_nonzero_coefs=3, copy_cov=False)
    for orig, copy in zip((X, D, gram, cov), copies):
        assert_array_equal(orig, copy)
        assert orig.dtype == copy.dtype


# ---------------------------------------------------------------------------------------------
# return_sparse
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_tol", [False, True], ids=["nnz", "tol"])
def test_return_sparse_equals_dense(dtype, n_threads, use_tol, rng):
    D = make_dictionary(rng, 257, 64, dtype)
    X = make_gaussian_signals(rng, 700, 64, dtype)  # > 256 rows: several conversion grains
    kwargs = dict(tol=20.0) if use_tol else dict(n_nonzero_coefs=12)
    dense = mc.sparse_encode(X, D, n_threads=n_threads, **kwargs)
    sp = mc.sparse_encode(X, D, n_threads=n_threads, return_sparse=True, **kwargs)
    assert isinstance(sp, scipy.sparse.csr_array)
    assert sp.shape == (700, 257)
    assert sp.dtype == dtype
    assert sp.indices.dtype == np.int32 and sp.indptr.dtype == np.int32
    assert sp.has_sorted_indices
    for i in range(sp.shape[0]):  # check sortedness ourselves too, strictly increasing
        assert np.all(np.diff(sp.indices[sp.indptr[i] : sp.indptr[i + 1]]) > 0)
    assert_array_equal(sp.toarray(), dense)
    assert_array_equal(np.diff(sp.indptr), nnz_per_row(dense))
    if use_tol:
        assert len(np.unique(np.diff(sp.indptr))) > 1  # rows of different lengths exercised


def test_return_sparse_with_empty_rows(rng, dtype):
    D = make_dictionary(rng, 40, 10, dtype)
    X = make_gaussian_signals(rng, 6, 10, dtype)
    X[[0, 4]] = 0
    with pytest.warns(RuntimeWarning, match="2 of 6 signals stopped early"):
        sp = mc.sparse_encode(X, D, n_nonzero_coefs=3, return_sparse=True)
    with pytest.warns(RuntimeWarning):
        dense = mc.sparse_encode(X, D, n_nonzero_coefs=3)
    assert isinstance(sp, scipy.sparse.csr_array) and sp.has_sorted_indices
    assert_array_equal(np.diff(sp.indptr), [0, 3, 3, 3, 0, 3])
    assert_array_equal(sp.toarray(), dense)


# ---------------------------------------------------------------------------------------------
# Memory layouts and dtypes of the inputs
# ---------------------------------------------------------------------------------------------


def _layouts(a):
    """The same matrix as: a strided view, Fortran order, read-only, negative-stride views."""
    big = np.zeros((2 * a.shape[0], 3 * a.shape[1]), dtype=a.dtype)
    big[1::2, ::3] = a
    strided = big[1::2, ::3]
    assert not strided.flags.c_contiguous and not strided.flags.f_contiguous
    fortran = np.asfortranarray(a)
    readonly = a.copy()
    readonly.setflags(write=False)
    negative = a[::-1].copy()[::-1]  # same values through a negative row stride
    neg_cols = a[:, ::-1].copy()[:, ::-1]  # negative column stride
    assert negative.strides[0] < 0 and neg_cols.strides[1] < 0
    return {
        "strided": strided,
        "fortran": fortran,
        "readonly": readonly,
        "readonly-fortran": np.asfortranarray(readonly),
        "neg-stride": negative,
        "neg-col-stride": neg_cols,
    }


@pytest.mark.parametrize(
    "layout", ["strided", "fortran", "readonly", "readonly-fortran", "neg-stride", "neg-col-stride"]
)
def test_memory_layouts_give_identical_results(layout, dtype, rng):
    D = make_dictionary(rng, 60, 18, dtype)
    X, _, _ = make_sparse_signals(rng, D, 50, 4)
    gram, cov = D @ D.T, D @ X.T
    base = mc.sparse_encode(X, D, n_nonzero_coefs=4)
    base_gc = mc.sparse_encode(X, D, gram=gram, cov=cov, n_nonzero_coefs=4)
    base_tol = mc.sparse_encode(X, D, tol=0.05)
    Xl, Dl, Gl, Cl = (_layouts(a)[layout] for a in (X, D, gram, cov))
    assert_array_equal(Xl, X)
    assert_array_equal(mc.sparse_encode(Xl, Dl, n_nonzero_coefs=4), base)
    assert_array_equal(mc.sparse_encode(Xl, Dl, gram=Gl, cov=Cl, n_nonzero_coefs=4), base_gc)
    assert_array_equal(mc.sparse_encode(Xl, Dl, tol=0.05), base_tol)


def test_reversed_rows_give_reversed_codes(rng, dtype):
    D = make_dictionary(rng, 60, 18, dtype)
    X, _, _ = make_sparse_signals(rng, D, 50, 4)
    base = mc.sparse_encode(X, D, n_nonzero_coefs=4)
    rev = mc.sparse_encode(X[::-1], D, n_nonzero_coefs=4)
    assert_array_equal(supports(rev[::-1]), supports(base))
    assert_allclose(rev[::-1], base, **COEF_TOL[dtype])


@pytest.mark.parametrize("int_dtype", [np.int64, np.int32, np.uint8, np.int8, np.bool_, np.float16])
def test_non_float_X_converted_to_float64_like_sklearn(int_dtype, rng):
    D = make_dictionary(rng, 50, 16)
    if int_dtype == np.bool_:
        Xi = rng.random((40, 16)) < 0.5
        Xi[:, 0] = True  # no all-zero row
    elif int_dtype == np.uint8:
        Xi = rng.integers(1, 10, size=(40, 16)).astype(int_dtype)
    elif int_dtype == np.float16:
        Xi = rng.standard_normal((40, 16)).astype(np.float16)
    else:
        Xi = rng.integers(-5, 6, size=(40, 16)).astype(int_dtype)
        Xi[:, 0] = 7
    got = mc.sparse_encode(Xi, D, n_nonzero_coefs=4)
    assert got.dtype == np.float64
    assert_array_equal(got, mc.sparse_encode(Xi.astype(np.float64), D, n_nonzero_coefs=4))
    ref = sk_omp(Xi, D, 4)
    assert ref.dtype == np.float64
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, **COEF_TOL[np.dtype(np.float64)])


def test_integer_dictionary_and_lists_accepted(rng):
    Di = rng.integers(-3, 4, size=(30, 10))
    Di[:, 0] = 5  # no zero atom
    X = rng.standard_normal((20, 10))
    got = mc.sparse_encode(X.tolist(), Di.tolist(), n_nonzero_coefs=3)
    assert got.dtype == np.float64
    ref = sk_omp(X, Di.astype(np.float64), 3)
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, **COEF_TOL[np.dtype(np.float64)])


@pytest.mark.parametrize(("x_dtype", "d_dtype"), [(np.float32, np.float64), (np.float64, np.float32)])
def test_dictionary_gram_cov_cast_to_X_dtype(x_dtype, d_dtype, rng):
    D = make_dictionary(rng, 64, 20, d_dtype)
    X, _, _ = make_sparse_signals(rng, D, 60, 5, dtype=x_dtype)
    gram, cov = (D @ D.T).astype(d_dtype), (D @ X.T.astype(d_dtype)).astype(d_dtype)
    got = mc.sparse_encode(X, D, n_nonzero_coefs=5)
    assert got.dtype == x_dtype
    assert_array_equal(got, mc.sparse_encode(X, D.astype(x_dtype), n_nonzero_coefs=5))
    got_gc = mc.sparse_encode(X, D, gram=gram, cov=cov, n_nonzero_coefs=5)
    assert got_gc.dtype == x_dtype
    expected = mc.sparse_encode(
        X, D.astype(x_dtype), gram=gram.astype(x_dtype), cov=cov.astype(x_dtype), n_nonzero_coefs=5
    )
    assert_array_equal(got_gc, expected)


@pytest.mark.parametrize("scale", [1e300, 1e307])
def test_huge_finite_values_are_accepted(rng, scale):
    # 1e300 is finite and must not be refused. At 1e307 the float64 sum of the quick finiteness
    # check overflows to inf: that must not be taken for an infinite entry either. The codes scale
    # linearly with X.
    D = make_dictionary(rng, 30, 8)
    X = np.abs(make_gaussian_signals(rng, 20, 8)) + 0.5  # all positive
    big = X * scale
    assert np.all(np.isfinite(big))
    if scale == 1e307:
        with np.errstate(over="ignore"):
            assert not np.isfinite(np.sum(big))
    with warnings.catch_warnings():
        # numpy's overflow warning from that quick sum: see test_errors.test_no_numpy_warnings_leak.
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        got = mc.sparse_encode(big, D, n_nonzero_coefs=3)
    assert np.all(np.isfinite(got))
    base = mc.sparse_encode(X, D, n_nonzero_coefs=3)
    assert_array_equal(supports(got), supports(base))
    assert_allclose(got / scale, base, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Instruction sets and threads
# ---------------------------------------------------------------------------------------------


ISA_SIZES = [(37, 20, 5, 100), (100, 30, 10, 100), (257, 64, 12, 100), (1, 5, 1, 10),
             (64, 48, 13, 100), (1024, 256, 16, 100), (33, 16, 3, 50), (40, 12, 9, 40)]


@pytest.mark.parametrize("size", ISA_SIZES, ids=_size_id)
def test_every_isa_matches_generic(isa, size, dtype):
    assert _core.active_isa() == isa
    k, m, s, n = size
    rng = np.random.default_rng([k, m, s, n])
    D = make_dictionary(rng, k, m, dtype)
    X, _, _ = make_sparse_signals(rng, D, n, s)
    Xg = make_gaussian_signals(rng, n, m, dtype)
    tol = 0.3 * float(np.median(np.einsum("ij,ij->i", Xg, Xg)))
    got = [mc.sparse_encode(X, D, n_nonzero_coefs=s, n_threads=2),
           mc.sparse_encode(Xg, D, n_nonzero_coefs=s, n_threads=2),
           mc.sparse_encode(X, D, tol=0.01 * m, n_threads=2),
           mc.sparse_encode(Xg, D, tol=tol, n_threads=2)]
    with use_isa("generic"):
        ref = [mc.sparse_encode(X, D, n_nonzero_coefs=s, n_threads=2),
               mc.sparse_encode(Xg, D, n_nonzero_coefs=s, n_threads=2),
               mc.sparse_encode(X, D, tol=0.01 * m, n_threads=2),
               mc.sparse_encode(Xg, D, tol=tol, n_threads=2)]
    assert _core.active_isa() == isa
    # Sparse signals: supports identical, values within the coefficient tolerance.
    for i in (0, 2):
        assert_array_equal(supports(got[i]), supports(ref[i]))
        assert_allclose(got[i], ref[i], **COEF_TOL[dtype])
    # Gaussian signals: residuals agree; supports for (almost) all signals.
    for i in (1, 3):
        assert_allclose(residual_norms(Xg, got[i], D), residual_norms(Xg, ref[i], D),
                        rtol=RESID_RTOL[dtype])
        same = np.all(supports(got[i]) == supports(ref[i]), axis=1)
        assert same.mean() >= (0.95 if dtype == np.float32 else 1.0)
        assert_allclose(got[i][same], ref[i][same], **COEF_TOL[dtype])
    # And against sklearn, for good measure, on the sparse signals.
    ref_sk = sk_omp(X, D, s)
    assert_array_equal(supports(got[0]), supports(ref_sk))
    assert_allclose(got[0], ref_sk, **COEF_TOL[dtype])


def test_isa_environment_variable(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, MATCOMPRESS_ISA="generic")
    out = subprocess.run(
        [sys.executable, "-c", "import matcompress._core as c; print(c.active_isa())"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path, timeout=120,
    )
    assert out.stdout.strip() == "generic"


@pytest.mark.parametrize("use_tol", [False, True], ids=["nnz", "tol"])
def test_thread_counts_are_bitwise_identical(isa, dtype, use_tol):
    # Any thread count, bitwise: the GEMM blocks depend on n only (3 oversubscribes this 2-core
    # machine; None / -1 = all cores).
    rng = np.random.default_rng(5)
    D = make_dictionary(rng, 257, 64, dtype)
    X = make_gaussian_signals(rng, 3000, 64, dtype)
    kwargs = dict(tol=25.0) if use_tol else dict(n_nonzero_coefs=12)
    one = mc.sparse_encode(X, D, n_threads=1, **kwargs)
    for nt in (2, 3, None, -1):
        assert_array_equal(mc.sparse_encode(X, D, n_threads=nt, **kwargs), one)
    sp = mc.sparse_encode(X, D, n_threads=2, return_sparse=True, **kwargs)
    assert_array_equal(sp.toarray(), one)


@pytest.mark.parametrize("n_samples", [1, 7, 100, 1000, 2000])
def test_thread_counts_bitwise_with_given_cov(isa, dtype, n_samples):
    # With cov given there is no GEMM on the signals: the per-signal kernel alone must be
    # deterministic, whichever thread runs a signal and however the signals are grouped.
    rng = np.random.default_rng(n_samples)
    D = make_dictionary(rng, 100, 40, dtype)
    X = make_gaussian_signals(rng, n_samples, 40, dtype)
    gram, cov = D @ D.T, D @ X.T
    one = mc.sparse_encode(X, D, gram=gram, cov=cov, n_nonzero_coefs=6, n_threads=1)
    for nt in (2, 3, None):
        assert_array_equal(mc.sparse_encode(X, D, gram=gram, cov=cov, n_nonzero_coefs=6, n_threads=nt), one)
    perm = rng.permutation(n_samples)
    permuted = mc.sparse_encode(X[perm], D, gram=gram, cov=cov[:, perm], n_nonzero_coefs=6, n_threads=2)
    assert_array_equal(permuted, one[perm])


# The GEMM blocks depend on n only, never on n_threads, so the codes have the same bits for any
# thread count (a first version sized the blocks by thread count: 1-ulp differences in float64).
@pytest.mark.parametrize("n_samples", [100, 300, 1000, 2000])
def test_thread_counts_bitwise_float64(n_samples):
    rng = np.random.default_rng(5)
    D = make_dictionary(rng, 257, 64, np.float64)
    X = make_gaussian_signals(rng, n_samples, 64, np.float64)
    one = mc.sparse_encode(X, D, n_threads=1, n_nonzero_coefs=12)
    for nt in (2, 3):
        assert_array_equal(mc.sparse_encode(X, D, n_threads=nt, n_nonzero_coefs=12), one)


# ---------------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------------


def test_many_signals_span_several_chunks(dtype):
    # 20k signals, 16 features, 256 atoms, 4 atoms each. The automatic chunk is
    # min(8 MiB / (kpad * itemsize), 2e8 / (kpad * (n_features + s (s + 3) / 2))) with kpad = 256:
    # 8192 signals in float32, 4096 in float64, so 3 resp. 5 chunks (the last one partial).
    rng = np.random.default_rng(7)
    n, m, k, s = 20_000, 16, 256, 4
    D = make_dictionary(rng, k, m, dtype)
    X, _, _ = make_sparse_signals(rng, D, n, s, noise=1e-3)
    cov = D @ X.T
    whole = mc.sparse_encode(X, D, n_nonzero_coefs=s, n_threads=2)
    whole_cov = mc.sparse_encode(X, D, cov=cov, n_nonzero_coefs=s, n_threads=2)
    whole_tol = mc.sparse_encode(X, D, tol=0.01, n_threads=2)
    cuts = [0, 1, 4095, 4097, 8191, 8200, 12289, 19_999, 20_000]  # pieces straddle chunk edges
    pieces = [mc.sparse_encode(X[a:b], D, n_nonzero_coefs=s, n_threads=2)
              for a, b in zip(cuts[:-1], cuts[1:])]
    pieces_cov = [mc.sparse_encode(X[a:b], D, cov=cov[:, a:b], n_nonzero_coefs=s, n_threads=2)
                  for a, b in zip(cuts[:-1], cuts[1:])]
    pieces_tol = [mc.sparse_encode(X[a:b], D, tol=0.01, n_threads=2)
                  for a, b in zip(cuts[:-1], cuts[1:])]
    for w, p in ((whole, pieces), (whole_cov, pieces_cov), (whole_tol, pieces_tol)):
        cat = np.vstack(p)
        assert_array_equal(supports(w), supports(cat))
        assert_allclose(w, cat, **COEF_TOL[dtype])
    # The given-cov path gathers the chunk's columns from cov: exact, so bitwise equal.
    assert_array_equal(whole_cov, np.vstack(pieces_cov))
    # Rows around chunk boundaries and at the end against scikit-learn.
    rows = np.r_[0:3, 4094:4099, 8190:8195, 12286:12290, 16382:16387, 19_990:20_000]
    ref = sk_omp(X[rows], D, s)
    assert_array_equal(supports(whole[rows]), supports(ref))
    assert_allclose(whole[rows], ref, **COEF_TOL[dtype])


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 250, 1000])
def test_core_chunk_size_does_not_change_results(chunk_size, dtype):
    rng = np.random.default_rng(11)
    D = make_dictionary(rng, 100, 24, dtype)
    X, _, _ = make_sparse_signals(rng, D, 250, 6)
    cov = np.ascontiguousarray(D @ X.T)
    encode = _core.sparse_encode_omp_f32 if dtype == np.float32 else _core.sparse_encode_omp_f64
    base = encode(X, D, None, None, 6, False, 0.0, 2, chunk_size=0)
    got = encode(X, D, None, None, 6, False, 0.0, 2, chunk_size=chunk_size)
    idx0, val0, nnz0, prem0 = base
    idx, val, nnz, prem = got
    assert prem0 == prem == 0
    assert_array_equal(nnz, nnz0)
    assert_array_equal(idx, idx0)
    assert_allclose(val, val0, **COEF_TOL[dtype])
    base_cov = encode(X, D, None, cov, 6, False, 0.0, 2, chunk_size=0)
    got_cov = encode(X, D, None, cov, 6, False, 0.0, 2, chunk_size=chunk_size)
    for a, b in zip(base_cov[:3], got_cov[:3]):
        assert_array_equal(a, b)
    dense = mc.sparse_encode(X, D, n_nonzero_coefs=6)
    rebuilt = np.zeros_like(dense)
    np.put_along_axis(rebuilt, idx.astype(np.int64), val, axis=1)
    assert_allclose(rebuilt, dense, **COEF_TOL[dtype])


# ---------------------------------------------------------------------------------------------
# Degenerate signals
# ---------------------------------------------------------------------------------------------


def test_zero_signals_give_zero_codes_and_warn(dtype, n_threads, rng):
    D = make_dictionary(rng, 50, 20, dtype)
    X, _, _ = make_sparse_signals(rng, D, 10, 4)
    X[[0, 3, 9]] = 0
    with pytest.warns(RuntimeWarning, match="3 of 10 signals stopped early"):
        got = mc.sparse_encode(X, D, n_nonzero_coefs=4, n_threads=n_threads)
    assert np.all(got[[0, 3, 9]] == 0)
    keep = np.setdiff1d(np.arange(10), [0, 3, 9])
    assert_array_equal(nnz_per_row(got[keep]), np.full(7, 4))
    alone = mc.sparse_encode(X[keep], D, n_nonzero_coefs=4)
    assert_array_equal(supports(got[keep]), supports(alone))
    assert_allclose(got[keep], alone, **COEF_TOL[dtype])
    # scikit-learn warns about the same signals and also returns zero codes.
    with pytest.warns(RuntimeWarning):
        ref = sk_omp(X, D, 4)
    assert_array_equal(supports(got), supports(ref))
    assert_allclose(got, ref, **COEF_TOL[dtype])
    # tol mode too.
    with pytest.warns(RuntimeWarning, match="3 of 10"):
        got_tol = mc.sparse_encode(X, D, tol=0.01, n_threads=n_threads)
    assert np.all(got_tol[[0, 3, 9]] == 0)


def test_single_zero_signal(dtype):
    D = make_dictionary(np.random.default_rng(1), 8, 4, dtype)
    with pytest.warns(RuntimeWarning, match="1 of 1 signals"):
        got = mc.sparse_encode(np.zeros((1, 4), dtype), D, n_nonzero_coefs=2)
    assert got.shape == (1, 8) and got.dtype == dtype and not got.any()


def test_exactly_representable_signal_stops_early_like_sklearn(rng):
    # x is exactly 2 atoms but 3 are asked for: after 2 steps the residual is ~0, so both stop
    # early and warn; the two coefficients are recovered.
    D = make_dictionary(rng, 30, 10)
    X = (1.5 * D[4] - 0.75 * D[21])[None, :]
    with pytest.warns(RuntimeWarning, match="stopped early"):
        got = mc.sparse_encode(X, D, n_nonzero_coefs=3)
    with pytest.warns(RuntimeWarning):
        ref = sk_omp(X, D, 3)
    assert np.flatnonzero(got[0]).tolist() == [4, 21]
    assert_allclose(got[0, [4, 21]], [1.5, -0.75], rtol=1e-12)
    assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

@st.composite
def problems(draw):
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 40))
    k = draw(st.integers(1, 60))
    s = draw(st.integers(1, min(k, m)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    seed = draw(st.integers(0, 2**32 - 1))
    sparse = draw(st.booleans())
    return n, m, k, s, dtype, seed, sparse


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_property_random_shapes(problem):
    n, m, k, s, dtype, seed, sparse = problem
    rng = np.random.default_rng(seed)
    D = make_dictionary(rng, k, m, dtype)  # unit-norm Gaussian atoms, never zero
    if sparse:
        X, _, _ = make_sparse_signals(rng, D, n, s, noise=1e-2)
    else:
        X = make_gaussian_signals(rng, n, m, dtype)
    with warnings.catch_warnings():
        # Dependent atoms (k > m) can make both implementations stop early with a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        got = mc.sparse_encode(X, D, n_nonzero_coefs=s)
        sp = mc.sparse_encode(X, D, n_nonzero_coefs=s, return_sparse=True)
        ref = sk_omp(X, D, s) if dtype == np.float64 else None
    assert got.shape == (n, k)
    assert got.dtype == dtype
    assert np.all(np.isfinite(got))
    assert np.all(nnz_per_row(got) <= s)
    assert_array_equal(sp.toarray(), got)
    xnorm = np.linalg.norm(X.astype(np.float64), axis=1)
    r = residual_norms(X, got, D)
    slack = 1e-4 if dtype == np.float32 else 1e-10
    assert np.all(r <= xnorm * (1 + slack) + slack)
    if ref is not None:
        assert_allclose(r, residual_norms(X, ref, D), rtol=1e-9, atol=1e-10 * (1 + xnorm.max()))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.floats(0.0, 1.5))
def test_property_tol_mode(problem, tol_fraction):
    n, m, k, s, dtype, seed, sparse = problem
    rng = np.random.default_rng(seed)
    D = make_dictionary(rng, k, m, dtype)
    X = make_gaussian_signals(rng, n, m, dtype)
    norms2 = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    tol = tol_fraction * float(np.median(norms2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        got = mc.sparse_encode(X, D, tol=tol)
    stopped_early = any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert got.shape == (n, k) and got.dtype == dtype
    nnz = nnz_per_row(got)
    assert np.all(nnz <= min(k, m))
    res2 = residual_norms(X, got, D) ** 2
    slack = 1e-4 if dtype == np.float32 else 1e-9
    assert np.all(res2 <= norms2 * (1 + slack) + slack)
    # Every signal meets the target or has used all the atoms it may; only a signal that stopped
    # early (announced by the warning) may do neither.
    met = res2 <= tol + slack * (1 + norms2)
    if not stopped_early:
        assert np.all(met | (nnz == min(k, m)))
        assert np.all(nnz >= 1)
    if dtype == np.float64:
        ref = _sk_tol(X, D, tol)
        assert_allclose(res2, residual_norms(X, ref, D) ** 2, rtol=1e-9, atol=1e-9 * (1 + norms2.max()))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_fallback_path_without_blas_thread_control(dtype, n_threads):
    # inner_gemm=False is the path taken when SciPy's BLAS exposes no thread control: GEMMs run
    # outside the OpenMP regions on the BLAS's own threads. Same supports, same values to rounding.
    from matcompress import _core

    rng = np.random.default_rng(11)
    D = make_dictionary(rng, 300, 48, dtype)
    X = make_gaussian_signals(rng, 5000, 48, dtype)
    encode = _core.sparse_encode_omp_f32 if dtype == np.float32 else _core.sparse_encode_omp_f64
    inner = encode(X, D, None, None, 7, False, 0.0, n_threads, 0, True)
    outer = encode(X, D, None, None, 7, False, 0.0, n_threads, 700, False)
    assert_array_equal(inner[0], outer[0])
    assert_array_equal(inner[2], outer[2])
    assert_allclose(inner[1], outer[1], **COEF_TOL[dtype])
    # Dense codes written by the coding tasks, on the fallback path too.
    dense_outer, nnz_outer, _ = encode(X, D, None, None, 7, False, 0.0, n_threads, 700, False,
                                       dense=True)
    assert_array_equal(nnz_outer, outer[2])
    assert_allclose(mc.sparse_encode(X, D, n_nonzero_coefs=7, n_threads=n_threads), dense_outer,
                    **COEF_TOL[dtype])
