"""Sparse coding by Orthogonal Matching Pursuit (Batch-OMP) on the native core."""

from __future__ import annotations

import warnings

import numpy as np

from . import _core
from ._validation import check_array, check_bool, check_float, check_int, check_n_threads

__all__ = ["sparse_encode"]


def sparse_encode(
    X,
    dictionary,
    *,
    gram=None,
    cov=None,
    n_nonzero_coefs=None,
    tol=None,
    n_threads=None,
    return_sparse=False,
    copy_cov=True,
):
    """Sparse-code every row of ``X`` over ``dictionary`` by Orthogonal Matching Pursuit.

    A drop-in for ``sklearn.decomposition.sparse_encode(X, dictionary, algorithm="omp")``:
    the same arguments, shapes, defaults and result, computed by Batch-OMP in native code.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Signals, one per row. float32 and float64 are kept (the codes have the same dtype);
        integer and boolean input is converted to float64; complex input is refused. Any memory
        layout works; ``X`` is never modified.
    dictionary : array-like of shape (n_components, n_features)
        Atoms, one per row, converted to the dtype of ``X``. Atoms need not have unit norm (the
        selection rule uses raw correlations, as scikit-learn does) but none may be zero.
    gram : array-like of shape (n_components, n_components), default=None
        Precomputed ``dictionary @ dictionary.T``. Computed (by GEMM) when None.
    cov : array-like of shape (n_components, n_samples), default=None
        Precomputed ``dictionary @ X.T``. Computed chunk by chunk (by GEMM) when None.
    n_nonzero_coefs : int, default=None
        Number of atoms per signal. ``None`` means
        ``int(min(max(n_features / 10, 1), n_components))``, scikit-learn's default. Ignored
        when ``tol`` is given.
    tol : float, default=None
        Target squared residual norm ``||x - code @ dictionary||^2``. When given it overrides
        ``n_nonzero_coefs``: atoms are added to each signal until its squared residual norm is
        <= ``tol`` (at least one atom, at most ``min(n_components, n_features)``), the rule of
        ``sklearn.linear_model.orthogonal_mp_gram(..., tol=tol)``.
    n_threads : int, default=None
        Threads for the computation. ``None`` or ``-1``: every core the process may use, as
        limited by ``OMP_NUM_THREADS`` and threadpoolctl. The GEMM steps run on these same
        threads, with SciPy's BLAS held to one thread during the call, so the BLAS and OpenMP
        thread pools never compete.
    return_sparse : bool, default=False
        Return a ``scipy.sparse.csr_array`` (sorted indices) built straight from the compact
        codes, without ever materialising the dense array.
    copy_cov : bool, default=True
        Accepted for scikit-learn compatibility. ``cov`` is never written to, so both values
        behave the same.

    Returns
    -------
    code : ndarray of shape (n_samples, n_components), or scipy.sparse.csr_array
        The sparse codes, ``X ≈ code @ dictionary``, in the dtype of ``X``.

    Warns
    -----
    RuntimeWarning
        When some signals stopped before their rule because the residual became orthogonal to
        every atom (e.g. an all-zero signal) or the next atom was linearly dependent on the
        selected ones; scikit-learn warns in the same cases.

    Notes
    -----
    Batch-OMP (Rubinstein, Zibulevsky & Elad, "Efficient Implementation of the K-SVD Algorithm
    using Batch Orthogonal Matching Pursuit", Technion CS-2008-08): the Gram matrix
    ``D D^T`` and the projections ``D X^T`` come from GEMM through SciPy's BLAS; each signal then
    needs only O(n_components * n_nonzero_coefs^2) work, a progressive Cholesky factorisation of
    the selected atoms' Gram matrix, on OpenMP threads with the GIL released. Atoms are chosen by
    largest ``|<residual, atom>|`` (first index on ties), as in scikit-learn. Signals are handled in
    chunks, so besides the input and the codes the memory used is
    O(chunk * n_components + n_components^2) for any ``n_samples``; Ctrl-C is honoured between
    chunks.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> rng = np.random.default_rng(0)
    >>> D = rng.standard_normal((32, 16))
    >>> D /= np.linalg.norm(D, axis=1, keepdims=True)
    >>> X = (1.5 * D[3] - 0.5 * D[20])[None, :]
    >>> code = mc.sparse_encode(X, D, n_nonzero_coefs=2)
    >>> np.flatnonzero(code[0]).tolist(), np.round(code[0, [3, 20]], 6).tolist()
    ([3, 20], [1.5, -0.5])
    """
    X = check_array(X, "X")
    dtype = X.dtype
    dictionary = check_array(dictionary, "dictionary", dtype=dtype)
    n_samples, n_features = X.shape
    n_components = dictionary.shape[0]
    if dictionary.shape[1] != n_features:
        raise ValueError(
            f"dictionary and X have different numbers of features: dictionary.shape="
            f"{dictionary.shape}, X.shape={X.shape}"
        )
    return_sparse = check_bool(return_sparse, "return_sparse")
    check_bool(copy_cov, "copy_cov")
    n_threads = check_n_threads(n_threads)

    if gram is not None:
        gram = check_array(gram, "gram", dtype=dtype)
        if gram.shape != (n_components, n_components):
            raise ValueError(
                f"gram must have shape (n_components, n_components) = "
                f"{(n_components, n_components)}; got {gram.shape}"
            )
        atom_norms2 = np.diagonal(gram)
    else:
        atom_norms2 = np.einsum("ij,ij->i", dictionary, dictionary)
    zero = np.flatnonzero(atom_norms2 <= 0)
    if zero.size:
        shown = zero[:10].tolist()
        more = f" and {zero.size - 10} more" if zero.size > 10 else ""
        where = "gram has a non-positive diagonal at" if gram is not None else "dictionary has"
        raise ValueError(
            f"{where} zero-norm atoms {shown}{more}: every atom must have a nonzero norm"
        )
    if cov is not None:
        cov = check_array(cov, "cov", dtype=dtype)
        if cov.shape != (n_components, n_samples):
            raise ValueError(
                f"cov must have shape (n_components, n_samples) = {(n_components, n_samples)}; "
                f"got {cov.shape}"
            )

    if tol is not None:
        tol = check_float(tol, "tol", min_value=0.0)
        max_atoms = min(n_components, n_features)
        use_tol = True
    else:
        use_tol = False
        tol = 0.0
        if n_nonzero_coefs is None:
            n_nonzero_coefs = int(min(max(n_features / 10, 1), n_components))
        n_nonzero_coefs = check_int(
            n_nonzero_coefs,
            "n_nonzero_coefs",
            min_value=1,
            max_value=min(n_components, n_features),
            max_reason=f"n_components={n_components}, n_features={n_features}",
        )
        max_atoms = n_nonzero_coefs

    encode = _core.sparse_encode_omp_f32 if dtype == np.float32 else _core.sparse_encode_omp_f64
    if return_sparse:
        indices, values, nnz, n_premature = encode(
            X, dictionary, gram, cov, max_atoms, use_tol, tol, n_threads
        )
    else:  # the dense rows are written by the kernel's threads as each signal is coded
        code, _, n_premature = encode(
            X, dictionary, gram, cov, max_atoms, use_tol, tol, n_threads, dense=True
        )
    if n_premature:
        warnings.warn(
            f"{n_premature} of {n_samples} signals stopped early: the residual became orthogonal "
            "to every atom, or the next atom was linearly dependent on the selected ones "
            "(scikit-learn's OMP warns about the same signals)",
            RuntimeWarning,
            stacklevel=2,
        )
    if return_sparse:
        return _to_csr(indices, values, nnz, n_components, n_threads)
    return code


def _to_csr(indices, values, nnz, n_components, n_threads):
    import scipy.sparse as sp

    indptr = np.zeros(nnz.shape[0] + 1, dtype=np.int64)
    np.cumsum(nnz, out=indptr[1:])
    to_csr = _core.codes_to_csr_f32 if values.dtype == np.float32 else _core.codes_to_csr_f64
    csr_indices, csr_values = to_csr(indices, values, nnz, indptr, n_threads)
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    else:
        csr_indices = csr_indices.astype(np.int64)
    return sp.csr_array((csr_values, csr_indices, indptr), shape=(nnz.shape[0], n_components))
