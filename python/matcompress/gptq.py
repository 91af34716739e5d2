"""GPTQ: quantization with second-order error feedback on calibration inputs.

For a layer computing ``x @ W`` with W (m, n), calibration inputs X (n_samples, m) and
``H = X^T X / n_samples``, the output error of a quantized ``Q`` is
``||X (W - Q)||_F^2 = n_samples * sum_j (w_j - q_j)^T H (w_j - q_j)`` over the columns. GPTQ
(Frantar et al. 2023) fixes the rows of W (the input dimensions) one after another; after row i
is quantized, its error is spread onto the rows not yet quantized so that their optimal
least-squares compensation (the Optimal Brain Surgeon update) is applied, all through one
Cholesky factor of ``H^-1``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from ._validation import check_array, check_float, check_int

__all__ = ["gptq_quantize", "inverse_cholesky"]


def _dampened(H, damp):
    """H + damp * mean(diag H) * I (float64, a copy); the identity when diag H is zero."""
    H = np.array(H, dtype=np.float64, copy=True)
    mean = float(np.mean(np.diag(H)))
    if not mean > 0:
        return np.eye(H.shape[0])
    H[np.diag_indices_from(H)] += damp * mean
    return H


def inverse_cholesky(H, damp=0.01):
    """U, upper triangular, with ``U^T U = (H + damp * mean(diag H) * I)^-1`` (float64).

    Row i of U, from the diagonal on, is what GPTQ needs when rows 0..i-1 are fixed: it is
    ``H_F^-1[i, F] / sqrt(H_F^-1[i, i])`` for the inverse of H restricted to the free rows
    F = i..m-1 (the Cholesky factor of an inverse holds every such trailing inverse at once).
    An all-zero diagonal (X all zero) gives the identity.

    Raises
    ------
    ValueError
        When the dampened H is not positive definite (``damp=0`` and a singular H).
    """
    Hd = _dampened(H, damp)
    # With J the order reversal, J Hd J = L L^T gives Hd^-1 = J L^-T L^-1 J = U^T U for the
    # upper triangular U = J L^-1 J: one Cholesky factorization and one triangular inverse
    # (m^3 / 3 flops each), not the inverse of Hd and a second factorization (3x the flops;
    # the same U to 6e-16 relative, measured at m = 2048).
    try:
        L = scipy.linalg.cholesky(Hd[::-1, ::-1], lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise ValueError("H + damp * mean(diag H) * I is not positive definite; raise damp "
                         "(H is singular when X has fewer independent rows than columns)") \
            from None
    Linv, info = scipy.linalg.lapack.dtrtri(L, lower=1)
    if info != 0 or not np.all(np.isfinite(Linv)):
        raise ValueError("H + damp * mean(diag H) * I is too ill-conditioned to invert in "
                         "float64; raise damp")
    return np.ascontiguousarray(Linv[::-1, ::-1])


def gptq_quantize(W, H, quantize_rows, *, block_size=128, damp=0.01):
    """Quantize the rows of W one by one with GPTQ's error feedback.

    Parameters
    ----------
    W : array-like of shape (m, n)
        The weights of a layer computing ``x @ W`` (rows = inputs). Never modified.
    H : array-like of shape (m, m)
        The inputs' second moment ``X^T X / n_samples`` (symmetric, positive semi-definite).
    quantize_rows : callable
        ``quantize_rows(rows, start)``: ``rows`` a float64 array (k, n) holding rows ``start``
        to ``start + k - 1`` of W as updated so far; returns their quantized values, an array of
        the same shape. It is called once per row (k = 1), in order, so a quantizer that needs
        the row index (a per-channel scale, a codes array to fill) can use ``start``.
    block_size : int, default=128
        Rows per lazy batch: the error feedback inside a block is applied row by row (rank-1
        updates of the block only), the feedback onto the rows after the block as one GEMM.
        The result does not depend on it (up to rounding).
    damp : float, default=0.01
        H + damp * mean(diag H) * I is used: a ridge that makes H invertible (fewer samples
        than inputs, dead inputs) and keeps the updates bounded.

    Returns
    -------
    Q : ndarray of shape (m, n), float64
        The quantized weights: row i is ``quantize_rows`` 's output for row i.

    Notes
    -----
    With ``U`` upper triangular and ``U^T U = H^-1`` (:func:`inverse_cholesky`), row i's error
    ``e = (w_i - q_i) / U[i, i]`` is fed back as ``W[i+1:] -= outer(U[i, i+1:], e)``, which is
    the Optimal Brain Surgeon update of the rows still free. Rows are processed in their given
    order (GPTQ's "arbitrary order" result: the order matters little at scale). Costs: the
    inverse O(m^3), the feedback O(m^2 n) (one GEMM per block), the row-wise work
    O(m * block_size * n). Works in float64 on a copy of W.

    Reference: E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", ICLR 2023 (in its orientation W is
    (out, in) and columns are quantized; here rows, as a layer computes ``x @ W``).

    Examples
    --------
    >>> import numpy as np
    >>> from matcompress.gptq import gptq_quantize
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((256, 16)) * rng.lognormal(0, 1, 16)
    >>> W = rng.standard_normal((16, 8))
    >>> H = X.T @ X / len(X)
    >>> Q = gptq_quantize(W, H, lambda rows, start: np.round(rows))  # integer grid
    >>> bool(np.all(Q == np.round(Q)))
    True
    >>> bool(np.linalg.norm(X @ (W - Q)) < np.linalg.norm(X @ (W - np.round(W))))
    True
    """
    W = check_array(W, "W")
    m, n = W.shape
    H = check_array(H, "H")
    if H.shape != (m, m):
        raise ValueError(f"H must have shape (m, m) = {(m, m)} for W of shape {W.shape}; "
                         f"got {H.shape}")
    if not callable(quantize_rows):
        raise TypeError(f"quantize_rows must be callable; got {quantize_rows!r}")
    block_size = check_int(block_size, "block_size", min_value=1)
    damp = check_float(damp, "damp", min_value=0.0)
    U = inverse_cholesky(H, damp)
    return _gptq(np.array(W, dtype=np.float64), U, quantize_rows, block_size)


def _gptq(Wk, U, quantize_rows, block_size):
    """GPTQ on the float64 working copy Wk (overwritten) with the factor U."""
    m, n = Wk.shape
    Q = np.empty_like(Wk)
    for start in range(0, m, block_size):
        stop = min(start + block_size, m)
        block = Wk[start:stop]  # a view: the in-block updates land in Wk
        Ub = U[start:stop, start:stop]
        err = np.empty_like(block)
        for i in range(stop - start):
            row = block[i:i + 1]
            q = np.asarray(quantize_rows(row.copy(), start + i), dtype=np.float64)
            if q.shape != row.shape:
                raise ValueError(f"quantize_rows returned shape {q.shape} for rows of shape "
                                 f"{row.shape}")
            Q[start + i] = q[0]
            err[i] = (row[0] - q[0]) / Ub[i, i]
            if i + 1 < stop - start:
                block[i + 1:] -= np.outer(Ub[i, i + 1:], err[i])
        if stop < m:
            Wk[stop:] -= U[start:stop, stop:].T @ err
    return Q
