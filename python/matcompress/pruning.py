"""Pruning: keep the highest-scoring entries of a weight matrix, one by one (unstructured), in
blocks (e.g. 1 x 4, 4 x 4), or N of every M consecutive entries along a row (N:M, e.g. 2:4)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _core
from ._validation import check_array, check_float, check_int, check_n_threads
from .factors import Pruned, index_dtype

__all__ = ["prune", "prune_mask", "taylor_scores", "SCORES"]

#: Named scores of prune and prune_mask.
SCORES = ("magnitude",)


def _check_pair(value, name, what):
    """value as a pair of ints >= 1, or raise naming ``name``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair of integers ({what}); got {value!r}")
    return tuple(check_int(v, name, min_value=1) for v in value)


def _check_scores(scores, A):
    if isinstance(scores, str):
        if scores not in SCORES:
            raise ValueError(f"scores must be one of {SCORES} or an array of the shape of A; "
                             f"got {scores!r}")
        return A
    if isinstance(scores, numbers.Number):
        raise TypeError(f"scores must be one of {SCORES} or an array of the shape of A; "
                        f"got {scores!r}")
    S = check_array(scores, "scores")
    if S.shape != A.shape:
        raise ValueError(f"scores must have the shape of A, {A.shape}; got {S.shape}")
    if np.any(S < 0):
        raise ValueError(f"scores must be non-negative; the smallest is {S.min():.6g}")
    return S


def _plan(A, sparsity, scores, block_shape, n_m, n_threads):
    """Validated inputs: (A, S, n_threads, block_shape, n_m or None, n_keep or None)."""
    A = check_array(A, "A")
    S = _check_scores(scores, A)
    n_threads = check_n_threads(n_threads)
    rows, cols = A.shape
    br, bc = _check_pair(block_shape, "block_shape", "rows, columns of a block")
    if n_m is not None:
        n, m = _check_pair(n_m, "n_m", "N kept of every M")
        if n > m:
            raise ValueError(f"n_m=({n}, {m}): N must be <= M")
        if cols % m:
            raise ValueError(f"n_m=({n}, {m}): M must divide the number of columns of A, {cols}")
        if (br, bc) != (1, 1):
            raise ValueError(f"n_m and block_shape={(br, bc)} cannot be combined: N:M pruning "
                             "keeps single entries (block_shape=(1, 1))")
        if sparsity is not None:
            sparsity = check_float(sparsity, "sparsity")
            if not math.isclose(sparsity, 1 - n / m, rel_tol=0.0, abs_tol=1e-9):
                raise ValueError(f"sparsity={sparsity} contradicts n_m=({n}, {m}), which prunes "
                                 f"1 - N/M = {1 - n / m:.6g} of the entries; pass sparsity=None")
        return A, S, n_threads, (1, 1), (n, m), None
    if sparsity is None:
        raise TypeError("sparsity is required (a float in [0, 1)) unless n_m is given")
    sparsity = check_float(sparsity, "sparsity")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1); got {sparsity}")
    if rows % br or cols % bc:
        raise ValueError(f"block_shape={(br, bc)} must divide the shape of A, {A.shape}")
    n_blocks = (rows // br) * (cols // bc)
    n_keep = n_blocks - math.floor(sparsity * n_blocks)
    return A, S, n_threads, (br, bc), None, n_keep


def prune(A, sparsity=None, *, scores="magnitude", block_shape=(1, 1), n_m=None, n_threads=None):
    """Keep the highest-scoring entries (or blocks of entries) of ``A`` and drop the rest.

    Parameters
    ----------
    A : array-like of shape (n_rows, n_cols)
        The matrix to prune. float32 and float64 are kept (the kept values have its dtype);
        integer and boolean input becomes float64. NaN and infinity are refused. Any memory
        layout works; ``A`` is never modified.
    sparsity : float in [0, 1), default=None
        Fraction of the blocks to drop. Of the ``n_blocks = (n_rows / br) * (n_cols / bc)``
        blocks, exactly ``n_keep = n_blocks - floor(sparsity * n_blocks)`` are kept (the product
        in float64), so ``sparsity=0`` keeps everything. Required unless ``n_m`` is given; with
        ``n_m`` it must be None or ``1 - N / M`` (to within 1e-9).
    scores : "magnitude" or array-like of shape (n_rows, n_cols), default="magnitude"
        What ranks the entries: ``"magnitude"`` is ``|A|``; an array gives non-negative, finite
        scores of its own (e.g. :func:`taylor_scores`), float32 or float64 (other dtypes become
        float64), compared in their own dtype.
    block_shape : (int, int), default=(1, 1)
        ``(br, bc)``: rows and columns of a block, which must divide the shape of ``A``. A block
        is kept or dropped whole; its score is the L2 norm of its entries' scores, and blocks
        are ranked by the squared norm, summed in float64 over the block in row-major order
        (``(1, 1)``: the score itself). float64 scores whose squares would overflow (or all
        underflow) are scaled by a power of two first.
    n_m : (int, int), default=None
        ``(N, M)``: in every group of ``M`` consecutive entries along a row keep the ``N`` with
        the highest scores (e.g. ``(2, 4)``, the pattern of sparse tensor cores). ``M`` must
        divide ``n_cols``; ``block_shape`` must be ``(1, 1)``.
    n_threads : int, default=None
        Threads; ``None`` or ``-1``: every core the process may use. The result does not depend
        on it.

    Returns
    -------
    Pruned
        The kept entries in CSR form (:class:`matcompress.factors.Pruned`): ``indptr`` (int32,
        or int64 when there are 2**31 kept entries or more), ``indices`` (column indices
        ascending within each row, in the smallest unsigned dtype holding ``n_cols - 1``) and
        ``values`` (the entries of ``A``). ``nnz`` is ``n_keep * br * bc``, or
        ``n_rows * (n_cols / M) * N`` with ``n_m``.

    Raises
    ------
    ValueError
        For sparsity outside [0, 1) or contradicting ``n_m``, a block shape or ``M`` that does
        not divide the shape of ``A``, scores of the wrong shape or with negative values, NaN or
        infinity in ``A`` or ``scores``.
    TypeError
        For arguments of the wrong type, and a missing ``sparsity`` without ``n_m``.

    Notes
    -----
    Ties: among blocks of equal score, the one with the lower flat index (row-major over the
    grid of blocks) is kept first; within an N:M group, the lower column. The selection is a
    parallel radix select on the bits of the scores (no sort): a histogram of the top 16 bits
    finds the bucket holding the threshold, and histograms of the remaining bits over that
    bucket's scores give the exact threshold score; a last pass writes the CSR.
    First-order Taylor scores follow P. Molchanov, S. Tyree, T. Karras, T. Aila and J. Kautz,
    "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017;
    N:M sparsity follows A. Mishra et al., "Accelerating Sparse Deep Neural Networks",
    arXiv:2104.08378, 2021.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> A = np.array([[0.5, -2.0, 0.1, 3.0],
    ...               [1.0, 0.2, -0.3, 0.0]])
    >>> P = mc.prune(A, 0.5)                  # keep 8 - floor(0.5 * 8) = 4 entries
    >>> P.nnz, P.indptr.tolist(), P.indices.tolist()
    (4, [0, 3, 4], [0, 1, 3, 0])
    >>> P.to_dense()
    array([[ 0.5, -2. ,  0. ,  3. ],
           [ 1. ,  0. ,  0. ,  0. ]])

    2:4 sparsity, and 1 x 2 blocks ranked by their norm:

    >>> mc.prune(A, n_m=(2, 4)).to_dense()
    array([[ 0. , -2. ,  0. ,  3. ],
           [ 1. ,  0. , -0.3,  0. ]])
    >>> mc.prune(A, 0.5, block_shape=(1, 2)).to_dense()
    array([[ 0.5, -2. ,  0.1,  3. ],
           [ 0. ,  0. ,  0. ,  0. ]])
    """
    A, S, n_threads, (br, bc), n_m, n_keep = _plan(A, sparsity, scores, block_shape, n_m,
                                                   n_threads)
    rows, cols = A.shape
    idx = index_dtype(cols)
    if n_m is not None:
        indptr, indices, values = _core.prune_n_m_csr(A, S, n_m[0], n_m[1], n_threads,
                                                      idx.itemsize)
    else:
        indptr, indices, values, _, _ = _core.prune_csr(A, S, br, bc, n_keep, n_threads,
                                                        idx.itemsize)
    if int(indptr[-1]) < 2**31:
        indptr = indptr.astype(np.int32)
    return Pruned(indptr, indices, cols, values=values)


def prune_mask(A, sparsity=None, *, scores="magnitude", block_shape=(1, 1), n_m=None,
               n_threads=None):
    """The entries :func:`prune` keeps, as a boolean mask of the shape of ``A``.

    The same arguments, selection, tie rule and count as :func:`prune`; use it to train with a
    fixed sparsity pattern (``W * mask``).

    Returns
    -------
    mask : ndarray of bool, shape (n_rows, n_cols)
        True where an entry is kept.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> A = np.array([[0.5, -2.0, 0.1, 3.0],
    ...               [1.0, 0.2, -0.3, 0.0]])
    >>> mc.prune_mask(A, 0.75).astype(int)
    array([[0, 1, 0, 1],
           [0, 0, 0, 0]])
    >>> mc.prune_mask(A, n_m=(1, 4)).astype(int)
    array([[0, 0, 0, 1],
           [1, 0, 0, 0]])
    """
    A, S, n_threads, (br, bc), n_m, n_keep = _plan(A, sparsity, scores, block_shape, n_m,
                                                   n_threads)
    if n_m is not None:
        return _core.prune_n_m_mask(S, n_m[0], n_m[1], n_threads)
    return _core.prune_mask(S, br, bc, n_keep, n_threads)


def taylor_scores(A, grad):
    """First-order Taylor scores ``|A * grad|`` (Molchanov et al. 2017): the estimated change
    of the loss when an entry of ``A`` is set to zero.

    Parameters
    ----------
    A : array-like
        The weights; any shape.
    grad : array-like of the shape of ``A``
        The gradient of the loss with respect to ``A`` (no broadcasting).

    Returns
    -------
    scores : ndarray of the shape of ``A``
        ``|A * grad|``, non-negative. dtype: float32 when both inputs are float32, float64
        otherwise (integer, boolean and float16 inputs count as float64; float32 times float64
        is float64, numpy's promotion). Pass it as ``scores=`` to :func:`prune`.

    Raises
    ------
    ValueError
        When the shapes differ, an input holds NaN or infinity, or the product overflows the
        result dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> A = np.array([[0.5, -2.0], [1.0, 0.1]])
    >>> G = np.array([[4.0, 0.1], [-0.2, 1.0]])
    >>> mc.taylor_scores(A, G)
    array([[2. , 0.2],
           [0.2, 0.1]])
    >>> mc.prune(A, 0.5, scores=mc.taylor_scores(A, G)).to_dense()
    array([[ 0.5, -2. ],
           [ 0. ,  0. ]])
    """
    A = check_array(A, "A", ndim=None)
    G = check_array(grad, "grad", ndim=None)
    if G.shape != A.shape:
        raise ValueError(f"grad must have the shape of A, {A.shape}; got {G.shape}")
    dtype = np.result_type(A.dtype, G.dtype)
    with np.errstate(over="ignore"):  # reported below, with the argument names
        out = np.multiply(A, G, dtype=dtype)
    np.abs(out, out=out)
    if not np.isfinite(out).all():
        raise ValueError(f"A * grad overflows {dtype}: the scores would be infinite; pass "
                         "float64 arrays")
    return out
