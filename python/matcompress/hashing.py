"""Simhash compression: the signs of a random Gaussian projection, with least-squares column
scales. The projection is regenerated from a 64-bit seed and never stored."""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from . import _core
from ._validation import check_array, check_int, check_n_threads, check_random_state
from .factors import SignBits

__all__ = ["simhash", "projection"]

_NORMS = ("auto", "gram", "direct")


def _check_seed(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer; got {seed!r} of type {type(seed).__name__}")
    seed = operator.index(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64); got {seed}")
    return seed


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64; got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64; got {dt}")
    return dt


def _scale_exponent(A):
    """e with max|A| / 2**e in [1, 2) when A is so large that R^T A could overflow, or so small
    that its products with R would lose bits to underflow; else 0. Scaling by a power of two is
    exact, so the signs do not change and the scales are scaled back exactly."""
    largest = max(float(A.max()), -float(A.min()))  # no temporary |A|
    bound = 60 if A.dtype == np.float32 else 500
    if largest == 0.0 or 2.0**-bound < largest < 2.0**bound:
        return 0
    return math.frexp(largest)[1] - 1


def _encode(A, n_bits, seed, n_threads, norms="auto", max_resident=-1):
    """The core call on validated input: (bits, scale). ``norms`` and ``max_resident`` choose
    the core's routes (tests cover each; the default picks by cost and memory)."""
    encode = _core.simhash_encode_f64 if A.dtype == np.float64 else _core.simhash_encode_f32
    exponent = _scale_exponent(A)
    if exponent:
        A = np.ldexp(A, -exponent).astype(A.dtype, copy=False)
    bits, scale = encode(A, n_bits, seed, n_threads, norms, max_resident)
    if exponent:
        scale = np.ldexp(scale, exponent).astype(A.dtype, copy=False)
    return bits, scale


def projection(seed, m, k, dtype=np.float32, *, rows=None, n_threads=None):
    """The Gaussian projection ``R`` of shape ``(m, k)`` that :func:`simhash` uses for ``seed``.

    Parameters
    ----------
    seed : int
        In ``[0, 2**64)``: the ``seed`` of a :class:`~matcompress.factors.SignBits`.
    m : int
        Rows of ``R`` (the rows of the compressed matrix).
    k : int
        Columns of ``R`` (the number of sign bits per column).
    dtype : {numpy.float32, numpy.float64}, default=numpy.float32
        The float32 ``R`` is the float64 one rounded to nearest.
    rows : tuple of two ints, default=None
        ``(start, stop)``: only rows ``start`` to ``stop - 1`` of ``R``, equal to
        ``projection(seed, m, k)[start:stop]`` without generating the others.
    n_threads : int, default=None
        Threads; ``None`` or ``-1``: every core the process may use. The result does not depend
        on it.

    Returns
    -------
    R : ndarray of shape (m, k) or (stop - start, k)
        Independent standard normal numbers. ``R[i, j]`` depends on ``seed``, ``k``, ``i`` and
        ``j`` only, and is the same on every machine, thread count and instruction set.

    Notes
    -----
    ``R[i, j]`` is number ``e = i * k + j`` of a counter-based stream: Philox4x32-10 (Salmon et
    al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC11, 2011) with key ``seed`` (low word
    first) and counter ``e // 4`` gives four 32-bit words; each pair ``(a, b)`` becomes two
    numbers by the Box-Muller transform of ``u = (a + 1) / 2**32`` and ``v = (b + 1) / 2**32``,
    ``sqrt(-2 ln u) * (cos 2 pi v, sin 2 pi v)``, and ``R[i, j]`` is number ``e % 4`` of the
    four. The logarithm, sine and cosine are computed by the package's own polynomials, so the
    bits do not depend on the platform's math library (``csrc/matcompress/philox.h``).

    Examples
    --------
    >>> import numpy as np
    >>> from matcompress.hashing import projection
    >>> R = projection(7, 1000, 64, dtype=np.float64)
    >>> R.shape, bool(np.all(projection(7, 1000, 64, np.float64, rows=(10, 20)) == R[10:20]))
    ((1000, 64), True)
    >>> round(float(R.mean()), 2), round(float(R.std()), 2)
    (0.0, 1.0)
    """
    seed = _check_seed(seed)
    m = check_int(m, "m", min_value=1)
    k = check_int(k, "k", min_value=1)
    dt = _check_dtype(dtype)
    if rows is None:
        start, stop = 0, m
    else:
        try:
            start, stop = rows
        except (TypeError, ValueError):
            raise TypeError(f"rows must be a (start, stop) pair; got {rows!r}") from None
        start = check_int(start, "rows[0]", min_value=0, max_value=m)
        stop = check_int(stop, "rows[1]", min_value=start, max_value=m)
    n_threads = check_n_threads(n_threads)
    fn = _core.simhash_projection_f64 if dt == np.float64 else _core.simhash_projection_f32
    return fn(seed, m, k, start, stop - start, n_threads)


def simhash(A, n_bits, *, random_state=None, n_threads=None):
    """Compress ``A`` to ``n_bits`` sign bits per column and one scale per column (simhash).

    ``A`` of shape ``(m, n)`` is approximated by ``(R @ S) * scale``: ``R`` ``(m, n_bits)`` is a
    Gaussian random projection regenerated from a seed (never stored), ``S = sign(R.T @ A)``
    (``+1`` where ``R.T @ A >= 0``) is stored as bits, and each column's scale is the least
    squares best one for that column.

    Parameters
    ----------
    A : array-like of shape (m, n)
        The matrix to compress (e.g. a weight matrix). float32 and float64 are kept; other real
        dtypes become float64. Finite values only. Never modified.
    n_bits : int
        Sign bits per column (``k``), at least 1. The approximation improves as it grows; the
        stored size is ``n_bits * ceil(n / 8)`` bytes plus the ``n`` scales.
    random_state : int, numpy.random.Generator or None, default=None
        Draws the seed of ``R`` (the result's ``seed``); the same int gives the same result.
    n_threads : int, default=None
        Threads; ``None`` or ``-1``: every core the process may use. The result does not depend
        on it.

    Returns
    -------
    factors : SignBits
        ``bits`` (``(n_bits, ceil(n / 8))`` uint8, little-endian within each byte), ``scale``
        (``(n,)``, the dtype of ``A``), ``seed`` and ``n_rows = m``; ``factors.to_dense()``
        is the approximation and ``x @ factors`` multiplies without it.

    Notes
    -----
    With ``P = R.T @ A`` and ``s_j = sign(P[:, j])``, the scale minimizing
    ``||A[:, j] - scale_j R s_j||`` is ``<A[:, j], R s_j> / ||R s_j||**2``, whose numerator is
    ``sum_t |P[t, j]|``; a zero column gets scale 0. ``P`` is accumulated over tiles of rows of
    ``A`` with ``R`` generated tile by tile (at most ``2**20`` numbers at a time); the
    denominators come from ``G = R.T @ R`` (``s_j.T G s_j``) or, when ``n_bits`` is large
    against ``m`` and ``n``, from a second pass over the tiles. Results are bitwise the same for
    any ``n_threads``. Sign random projections: M. S. Charikar, "Similarity Estimation
    Techniques from Rounding Algorithms", STOC 2002. ``R`` is defined in :func:`projection`.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> A = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    >>> f = mc.simhash(A, 512, random_state=0)
    >>> f.bits.shape, f.scale.shape, f.shape, round(f.compression_ratio, 1)
    ((512, 8), (64,), (256, 64), 15.0)
    >>> err = np.linalg.norm(f.to_dense() - A) / np.linalg.norm(A)  # relative error
    >>> round(float(err), 2)
    0.66
    """
    A = check_array(A, "A")
    n_bits = check_int(n_bits, "n_bits", min_value=1)
    n_threads = check_n_threads(n_threads)
    rng = check_random_state(random_state)
    seed = int(rng.integers(0, 2**63 - 1))
    bits, scale = _encode(A, n_bits, seed, n_threads)
    return SignBits(bits=bits, scale=scale, seed=seed, n_rows=A.shape[0])
