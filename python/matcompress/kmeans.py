"""k-means codebooks for weight quantization: scalar (1-D) k-means, exact or by Lloyd's algorithm."""

from __future__ import annotations

import math

import numpy as np

from . import _core
from ._validation import check_array, check_float, check_int, check_n_threads, check_random_state

__all__ = ["fit_codebook", "pack_4bit", "unpack_4bit", "METHODS"]

#: Methods of fit_codebook.
METHODS = ("auto", "optimal", "lloyd")

# method="auto" takes the exact optimum when its dynamic programme is cheap: about
# n_codes * n * log2(n) evaluations, a few ns each (tens of ms at this bound).
_AUTO_OPTIMAL_WORK = 1.5e7


def _codes_dtype(n_codes):
    if n_codes <= 1 << 8:
        return np.uint8
    if n_codes <= 1 << 16:
        return np.uint16
    return np.int32


def _auto_method(n_codes, n):
    return "optimal" if n_codes * n * math.log2(n) <= _AUTO_OPTIMAL_WORK else "lloyd"


def _scale_exponent(flat):
    """e with max|values| / 2**e in [1, 2) when the values are so large or small that their
    squares would overflow or underflow in float64 (the core sums squares in float64); else 0.
    Scaling by a power of two is exact, so the codes do not change."""
    largest = float(np.max(np.abs(flat)))
    if largest == 0.0 or 2.0**-300 < largest < 2.0**300:
        return 0
    return math.frexp(largest)[1] - 1


def fit_codebook(
    values,
    n_codes,
    *,
    method="auto",
    init="k-means++",
    n_init=1,
    max_iter=100,
    tol=1e-6,
    sample_weight=None,
    random_state=None,
    n_threads=None,
):
    """Fit a codebook of ``n_codes`` scalars to ``values`` (1-D k-means) and code every value.

    Parameters
    ----------
    values : array-like of any shape
        The values to quantize (e.g. a weight matrix); every element is one point. float32 and
        float64 are kept; integer input becomes float64. Never modified.
    n_codes : int
        Codebook size, from 1 to the number of values. When it is at least the number of distinct
        values, the codebook holds every distinct value (ascending) and then repeats the largest,
        and the inertia is 0.
    method : {"auto", "optimal", "lloyd"}, default="auto"
        - ``"optimal"``: the exact minimum of the inertia, by dynamic programming over the
          sorted values (Wang & Song's Ckmeans.1d.dp, with a divide-and-conquer search of the
          monotone split points): O(n_codes * n * log n) time; memory for the split points is
          bounded (layers are recomputed in blocks beyond 256 MiB).
        - ``"lloyd"``: Lloyd's algorithm on the sorted values, each iteration O(n_codes * log n)
          through prefix sums, from a greedy k-means++ start (as scikit-learn's) or ``init``.
        - ``"auto"``: ``"optimal"`` when ``n_codes * n * log2(n)`` is at most 1.5e7 (the
          exact answer then costs tens of milliseconds at most), ``"lloyd"`` otherwise.
    init : "k-means++" or array-like of shape (n_codes,), default="k-means++"
        Lloyd's start. An array is used as given (sorted), with ``n_init`` ignored.
    n_init : int, default=1
        Lloyd runs from different k-means++ starts; the lowest inertia is kept.
    max_iter : int, default=100
        Lloyd iterations at most.
    tol : float, default=1e-6
        Lloyd stops when the summed squared shift of the codebook is at most ``tol`` times the
        (weighted) variance of the values, or when no value changes cluster (scikit-learn's
        rules).
    sample_weight : array-like of the shape of values, default=None
        Non-negative weights (not all zero); the inertia is the weighted sum of squared errors.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds k-means++. Results are reproducible for a given seed.
    n_threads : int, default=None
        Threads; ``None`` or ``-1``: every core the process may use.

    Returns
    -------
    codebook : ndarray of shape (n_codes,)
        Ascending codebook, in the dtype of ``values``.
    codes : ndarray of the shape of values
        Index of each value's codebook entry: uint8 for ``n_codes <= 256``, uint16 up to 65,536,
        else int32. ``codebook[codes]`` is the quantized array.
    inertia : float
        ``sum(sample_weight * (values - codebook[codes]) ** 2)``.

    Notes
    -----
    The values are sorted once (a radix sort) and equal values merged, so duplicates cost
    nothing and the codebook never holds two entries for one cluster of equal values. Every
    later step works on prefix sums of the sorted distinct values. References: H. Wang and
    M. Song, "Ckmeans.1d.dp: Optimal k-means Clustering in One Dimension by Dynamic Programming",
    The R Journal 3(2), 2011; D. Arthur and S. Vassilvitskii, "k-means++: The Advantages of
    Careful Seeding", SODA 2007.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> W = np.array([[0.1, 0.12, 0.9], [1.0, 0.11, 0.95]])
    >>> codebook, codes, inertia = mc.fit_codebook(W, 2)
    >>> codebook.round(3).tolist(), codes.tolist()
    ([0.11, 0.95], [[0, 0, 1], [1, 0, 1]])
    """
    arr = check_array(values, "values", ndim=None)
    n = arr.size
    n_codes = check_int(n_codes, "n_codes", min_value=1, max_value=n,
                        max_reason=f"the number of values, {n}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    n_init = check_int(n_init, "n_init", min_value=1)
    max_iter = check_int(max_iter, "max_iter", min_value=1)
    tol = check_float(tol, "tol", min_value=0.0)
    n_threads = check_n_threads(n_threads)
    flat = arr.reshape(-1)
    weight = None
    if sample_weight is not None:
        weight = check_array(sample_weight, "sample_weight", dtype=arr.dtype, ndim=None)
        if weight.shape != arr.shape:
            raise ValueError(f"sample_weight must have the shape of values, {arr.shape}; "
                             f"got {weight.shape}")
        weight = weight.reshape(-1)
        if np.any(weight < 0):
            raise ValueError("sample_weight must be non-negative")
        if not np.any(weight > 0):
            raise ValueError("sample_weight is zero everywhere: at least one weight must be > 0")
    start = None
    if isinstance(init, str):
        if init != "k-means++":
            raise ValueError(f"init must be 'k-means++' or an array of n_codes values; got {init!r}")
    else:
        start = check_array(init, "init", dtype=arr.dtype, ndim=1)
        if start.shape != (n_codes,):
            raise ValueError(f"init must have shape (n_codes,) = ({n_codes},); got {start.shape}")
    if method == "auto":
        method = _auto_method(n_codes, n)
    rng = check_random_state(random_state)
    seed = int(rng.integers(0, 2**63 - 1))
    fit = _core.kmeans_1d_f32 if arr.dtype == np.float32 else _core.kmeans_1d_f64
    exponent = _scale_exponent(flat)
    if exponent:
        flat = np.ldexp(flat, -exponent)
        start = None if start is None else np.ldexp(start, -exponent)
    codebook, codes, inertia, _, _ = fit(flat, weight, n_codes, start, method, max_iter, tol,
                                         seed, n_init, n_threads)
    if exponent:
        codebook = np.ldexp(codebook, exponent)
        with np.errstate(over="ignore"):
            inertia = float(np.ldexp(inertia, 2 * exponent))
    return codebook, codes.astype(_codes_dtype(n_codes)).reshape(arr.shape), float(inertia)


def pack_4bit(codes):
    """Pack codes below 16 two to a byte along the last axis (the first in the low nibble).

    Parameters
    ----------
    codes : array-like of integers in [0, 15], shape (..., n)

    Returns
    -------
    packed : ndarray of uint8, shape (..., ceil(n / 2))
        An odd ``n`` leaves the last high nibble 0. :func:`unpack_4bit` inverts it.

    Examples
    --------
    >>> from matcompress import pack_4bit, unpack_4bit
    >>> packed = pack_4bit([[1, 2, 15], [0, 7, 3]])
    >>> packed.tolist(), unpack_4bit(packed, 3).tolist()
    ([[33, 15], [112, 3]], [[1, 2, 15], [0, 7, 3]])
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers; got dtype {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one axis")
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("codes must lie in [0, 15] to be packed in 4 bits")
    codes = codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_4bit(packed, n):
    """Unpack :func:`pack_4bit`'s bytes into ``n`` codes (uint8) along the last axis."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be uint8; got dtype {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError("packed must have at least one axis (the packed codes)")
    n = check_int(n, "n", min_value=0, max_value=2 * packed.shape[-1] if packed.ndim else 0)
    if n <= 2 * packed.shape[-1] - 2:
        raise ValueError(f"n={n} does not match {packed.shape[-1]} packed bytes")
    out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :n]
