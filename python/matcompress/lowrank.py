"""Low-rank factorization: truncated SVD, exact (LAPACK) or randomized (Halko et al. 2011)."""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg

from ._validation import check_array, check_int, check_random_state
from .factors import LowRank

__all__ = ["low_rank", "randomized_svd", "METHODS"]

#: Methods of low_rank.
METHODS = ("svd", "randomized")


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _orthonormal(Y):
    """An orthonormal basis of the columns of Y (tall, l columns): Cholesky QR twice (two
    GEMMs and two l x l Cholesky factorizations; accurate to machine precision after the second
    pass), or Householder QR when Y is too ill-conditioned for it. These thin products run on
    one BLAS thread: split over threads they wait for each other (measured 0.4 ms on one thread,
    18-53 ms on two on a loaded machine, for 4096 x 42)."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        return _orthonormal_1(Y)


def _orthonormal_1(Y):
    Q = Y
    for _ in range(2):
        G = Q.T @ Q
        try:
            R = scipy.linalg.cholesky(G, lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            return scipy.linalg.qr(Y, mode="economic", check_finite=False)[0]
        Q = scipy.linalg.solve_triangular(R, Q.T, trans="T", lower=False,
                                          check_finite=False).T
    if not np.all(np.isfinite(Q)):
        return scipy.linalg.qr(Y, mode="economic", check_finite=False)[0]
    return Q


def randomized_svd(A, rank, *, n_oversamples=10, n_iter="auto", random_state=None):
    """Truncated SVD ``U (m, rank), s (rank,), Vt (rank, n)`` of A by a randomized range finder.

    Halko, Martinsson & Tropp (2011), Algorithm 4.4: Y = (A A^T)^q A Omega for a Gaussian Omega
    with ``rank + n_oversamples`` columns, re-orthonormalized after every product (Cholesky QR);
    then the SVD of the small Q^T A. ``n_iter="auto"``: 7 power iterations when ``rank`` is below
    10 % of min(m, n), else 4 (scikit-learn's rule). Works in the dtype of A.
    """
    A = check_array(A, "A")
    m, n = A.shape
    rank = check_int(rank, "rank", min_value=1, max_value=min(m, n),
                     max_reason=f"min(m, n) = {min(m, n)}")
    n_oversamples = check_int(n_oversamples, "n_oversamples", min_value=0)
    if isinstance(n_iter, str):
        if n_iter != "auto":
            raise ValueError(f"n_iter must be a non-negative int or 'auto'; got {n_iter!r}")
        n_iter = 7 if rank < 0.1 * min(m, n) else 4
    n_iter = check_int(n_iter, "n_iter", min_value=0)
    rng = check_random_state(random_state)
    transpose = m < n  # work on the tall orientation
    M = A.T if transpose else A
    l = min(rank + n_oversamples, min(m, n))
    omega = rng.standard_normal((M.shape[1], l), dtype=A.dtype)
    Q = _orthonormal(M @ omega)
    for _ in range(n_iter):
        Q = _orthonormal(M.T @ Q)
        Q = _orthonormal(M @ Q)
    B = Q.T @ M  # (l, n)
    Ub, s, Vt = scipy.linalg.svd(B, full_matrices=False, check_finite=False,
                                 lapack_driver="gesdd")
    U = Q @ Ub[:, :rank]
    s, Vt = s[:rank], Vt[:rank]
    if transpose:
        return Vt.T, s, U.T
    return U, s, Vt


def low_rank(A, rank, *, method="randomized", n_oversamples=10, n_iter="auto",
             random_state=None):
    """Best rank-``rank`` approximation of A as a :class:`~matcompress.factors.LowRank`.

    Parameters
    ----------
    A : array-like of shape (m, n)
        float32 and float64 are kept; other real dtypes become float64. Never modified.
    rank : int
        From 1 to min(m, n).
    method : {"randomized", "svd"}, default="randomized"
        ``"svd"``: the exact truncated SVD (LAPACK ``gesdd`` through SciPy), O(m n min(m, n)).
        ``"randomized"``: :func:`randomized_svd`, O(m n rank) per pass; its error is within a
        small factor of the optimum for fast-decaying spectra and close to it after the power
        iterations.
    n_oversamples, n_iter, random_state
        For ``"randomized"``: see :func:`randomized_svd`.

    Returns
    -------
    LowRank
        ``left = U sqrt(s)`` (m, rank) and ``right = sqrt(s) Vt`` (rank, n): the singular values
        split evenly, so both factors have the same scale (better conditioned for training them
        later).

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 8)) @ rng.standard_normal((8, 60))
    >>> f = mc.low_rank(A, 8, random_state=0)
    >>> f.left.shape, f.right.shape, bool(np.allclose(f.to_dense(), A))
    ((100, 8), (8, 60), True)
    """
    A = check_array(A, "A")
    m, n = A.shape
    rank = check_int(rank, "rank", min_value=1, max_value=min(m, n),
                     max_reason=f"min(m, n) = {min(m, n)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "svd":
        U, s, Vt = scipy.linalg.svd(A, full_matrices=False, check_finite=False,
                                    lapack_driver="gesdd")
        U, s, Vt = U[:, :rank], s[:rank], Vt[:rank]
    else:
        U, s, Vt = randomized_svd(A, rank, n_oversamples=n_oversamples, n_iter=n_iter,
                                  random_state=random_state)
    root = np.sqrt(s).astype(A.dtype)
    return LowRank(np.ascontiguousarray(U * root), np.ascontiguousarray(root[:, None] * Vt))
