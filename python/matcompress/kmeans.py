"""k-means codebooks for weight quantization: scalar (1-D) k-means, exact or by Lloyd's algorithm,
and k-means of short blocks of weights (product-quantization style)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _core
from ._validation import check_array, check_float, check_int, check_n_threads, check_random_state

__all__ = ["fit_codebook", "KMeansQuantizer", "pack_4bit", "unpack_4bit", "METHODS", "INITS"]

#: Methods of fit_codebook.
METHODS = ("auto", "optimal", "lloyd")

#: Named starts of Lloyd's algorithm.
INITS = ("k-means++", "random")

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


def _scale_exponent(values):
    """e with max|values| / 2**e in [1, 2) when the values are so large or small that sums of
    their squares would overflow or underflow in the computation's precision; else 0. float64:
    beyond 2**+-300 (the scalar core sums squares in float64); float32: beyond 2**+-40 (the block
    kernels form squared norms in float32). Scaling by a power of two is exact (up to values
    below 2**-100 of the largest, which may lose bits), so the codes do not change."""
    largest = float(np.max(np.abs(values)))
    bound = 300 if values.dtype == np.float64 else 40
    if largest == 0.0 or 2.0**-bound < largest < 2.0**bound:
        return 0
    return math.frexp(largest)[1] - 1


def _check_weight(sample_weight, shape, dtype, what):
    weight = check_array(sample_weight, "sample_weight", dtype=dtype, ndim=None)
    if weight.shape != shape:
        raise ValueError(f"sample_weight must have the shape of {what}, {shape}; "
                         f"got {weight.shape}")
    weight = weight.reshape(-1)
    if np.any(weight < 0):
        raise ValueError("sample_weight must be non-negative")
    if not np.any(weight > 0):
        raise ValueError("sample_weight is zero everywhere: at least one weight must be > 0")
    return weight


def _fit(values, n_codes, *, block_size, method, init, n_init, max_iter, tol, sample_weight,
         max_points_per_centroid, random_state, n_threads):
    """fit_codebook's work; also returns the number of Lloyd iterations and the method used."""
    arr = check_array(values, "values", ndim=None)
    block_size = check_int(block_size, "block_size", min_value=1)
    if block_size > 1 and arr.shape[-1] % block_size:
        raise ValueError(f"block_size={block_size} must divide the length of the last axis of "
                         f"values, {arr.shape[-1]}")
    codes_shape = arr.shape[:-1] + (arr.shape[-1] // block_size,)
    points = arr.reshape(-1, block_size)
    n = points.shape[0]
    what = "values" if block_size == 1 else "blocks"
    n_codes = check_int(n_codes, "n_codes", min_value=1, max_value=n,
                        max_reason=f"the number of {what}, {n}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "optimal" and block_size > 1:
        raise ValueError("method='optimal' (the exact dynamic programme) exists for block_size=1 "
                         "only; use 'lloyd' or 'auto' for blocks")
    n_init = check_int(n_init, "n_init", min_value=1)
    max_iter = check_int(max_iter, "max_iter", min_value=1)
    tol = check_float(tol, "tol", min_value=0.0)
    mppc = 0
    if max_points_per_centroid is not None:
        mppc = check_int(max_points_per_centroid, "max_points_per_centroid", min_value=1)
    n_threads = check_n_threads(n_threads)
    weight = None
    if sample_weight is not None:
        weight = _check_weight(sample_weight, codes_shape if block_size > 1 else arr.shape,
                               arr.dtype, "values" if block_size == 1 else
                               "the codes (one weight per block)")
    start = None
    named = isinstance(init, str)
    if named:
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or an array of starting centroids; "
                             f"got {init!r}")
    else:
        shape = (n_codes,) if block_size == 1 else (n_codes, block_size)
        start = check_array(init, "init", dtype=arr.dtype, ndim=len(shape))
        if start.shape != shape:
            axes = "(n_codes,)" if block_size == 1 else "(n_codes, block_size)"
            raise ValueError(f"init must have shape {shape} {axes}; "
                             f"got {start.shape}")
        n_init = 1
    if method == "auto":
        method = _auto_method(n_codes, n) if block_size == 1 else "lloyd"
    rng = check_random_state(random_state)
    seed = int(rng.integers(0, 2**63 - 1))
    exponent = _scale_exponent(points)
    if exponent:
        points = np.ldexp(points, -exponent)
        start = None if start is None else np.ldexp(start, -exponent)
    f64 = arr.dtype == np.float64
    if block_size == 1:
        fit = _core.kmeans_1d_f64 if f64 else _core.kmeans_1d_f32
        flat = points.reshape(-1)
        runs = [start]
        if named and init == "random" and method == "lloyd":  # one core call per random start
            runs = [_random_values(flat, weight, n_codes, rng) for _ in range(n_init)]
            n_init = 1
        best = None
        for s in runs:
            codebook, codes, inertia, n_iter, _ = fit(flat, weight, n_codes, s, method, max_iter,
                                                      tol, seed, n_init, n_threads)
            if best is None or inertia < best[2]:
                best = (codebook, codes, inertia, n_iter)
        codebook, codes, inertia, n_iter = best
    else:
        fit = _core.kmeans_block_f64 if f64 else _core.kmeans_block_f32
        codebook, codes, inertia, n_iter = fit(points, weight, n_codes, start, max_iter, tol,
                                               seed, n_init, named and init == "random", mppc,
                                               n_threads)
    if exponent:
        codebook = np.ldexp(codebook, exponent)
        with np.errstate(over="ignore"):
            inertia = float(np.ldexp(inertia, 2 * exponent))
    codes = codes.astype(_codes_dtype(n_codes)).reshape(codes_shape)
    return codebook, codes, float(inertia), int(n_iter), method


def _random_values(flat, weight, n_codes, rng):
    """n_codes distinct positions drawn with probability proportional to weight (as
    scikit-learn's init="random"), their values sorted."""
    p = None
    if weight is not None:
        w = weight.astype(np.float64)
        if np.count_nonzero(w) >= n_codes:
            p = w / w.sum()
    idx = rng.choice(flat.size, size=n_codes, replace=False, p=p)
    return np.sort(flat[idx])


def fit_codebook(
    values,
    n_codes,
    *,
    block_size=1,
    method="auto",
    init="k-means++",
    n_init=1,
    max_iter=100,
    tol=1e-6,
    sample_weight=None,
    max_points_per_centroid=None,
    random_state=None,
    n_threads=None,
):
    """Fit a codebook of ``n_codes`` scalars (or blocks of ``block_size`` values) to ``values``
    by k-means, and code every value (or block).

    Parameters
    ----------
    values : array-like of any shape
        The values to quantize (e.g. a weight matrix). float32 and float64 are kept; integer
        input becomes float64. Never modified. With ``block_size=1`` every element is one point;
        with ``block_size=b`` each run of ``b`` consecutive elements along the last axis is one
        point (a vector of length ``b``), as in product quantization.
    n_codes : int
        Codebook size, from 1 to the number of points. With ``block_size=1``, when it is at
        least the number of distinct values the codebook holds every distinct value (ascending)
        and then repeats the largest, and the inertia is 0.
    block_size : int, default=1
        Values per point; must divide the length of the last axis of ``values``.
    method : {"auto", "optimal", "lloyd"}, default="auto"
        - ``"optimal"`` (``block_size=1`` only): the exact minimum of the inertia, by dynamic
          programming over the sorted values (Wang & Song's Ckmeans.1d.dp, with a
          divide-and-conquer search of the monotone split points): O(n_codes * n * log n) time;
          memory for the split points is bounded (layers are recomputed in blocks beyond
          256 MiB).
        - ``"lloyd"``: Lloyd's algorithm. Scalars: on the sorted values, each iteration
          O(n_codes * log n) through prefix sums. Blocks: distances from a register-tiled
          kernel (GEMM tiles for blocks longer than 128) fused with the arg-min, never an
          n x n_codes matrix; the result follows scikit-learn's ``KMeans(algorithm="lloyd")``
          from the same start.
        - ``"auto"``: for ``block_size=1``, ``"optimal"`` when ``n_codes * n * log2(n)`` is at
          most 1.5e7 (the exact answer then costs tens of milliseconds at most), ``"lloyd"``
          otherwise; for blocks, ``"lloyd"``.
    init : {"k-means++", "random"} or array-like, default="k-means++"
        Lloyd's start: greedy k-means++ (scikit-learn's variant, 2 + ln(n_codes) candidates per
        step), ``n_codes`` distinct points drawn with probability proportional to their weight,
        or an array of shape ``(n_codes,)`` (``block_size=1``) or ``(n_codes, block_size)``
        used as given (``n_init`` is then ignored).
    n_init : int, default=1
        Lloyd runs from different starts; the lowest inertia is kept.
    max_iter : int, default=100
        Lloyd iterations at most.
    tol : float, default=1e-6
        Lloyd stops when the summed squared shift of the codebook is at most ``tol`` times the
        variance of the values (blocks: the mean variance of the coordinates), or when no point
        changes cluster (scikit-learn's rules).
    sample_weight : array-like, default=None
        Non-negative weights (not all zero): one per value (the shape of ``values``) with
        ``block_size=1``, one per block (the shape of ``codes``) otherwise. The inertia is the
        weighted sum of squared errors.
    max_points_per_centroid : int, default=None
        Blocks only (ignored for ``block_size=1``, whose iterations cost O(n_codes log n)
        whatever n): when given and there are more than ``n_codes * max_points_per_centroid``
        points, the start and Lloyd's iterations use a random sample of that many (as faiss
        does by default, with 256); the codes and inertia still cover every point.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the starts and the sample. Results are reproducible for a given seed, and do not
        depend on ``n_threads``.
    n_threads : int, default=None
        Threads; ``None`` or ``-1``: every core the process may use.

    Returns
    -------
    codebook : ndarray of shape (n_codes,) or (n_codes, block_size)
        The codebook, in the dtype of ``values``; ascending for ``block_size=1``.
    codes : ndarray of integers
        Index of each point's codebook entry (the nearest; the first of equally near ones), of
        the shape of ``values`` (``block_size=1``) or with the last axis divided by
        ``block_size``: uint8 for ``n_codes <= 256``, uint16 up to 65,536, else int32.
        ``codebook[codes]`` is the quantized array (reshape it to ``values.shape`` for blocks).
    inertia : float
        ``sum(sample_weight * squared distance of each point to its codebook entry)``.

    Notes
    -----
    Scalars are sorted once (a radix sort) and equal values merged, so duplicates cost nothing
    and the codebook never holds two entries for one cluster of equal values. Every later step
    works on prefix sums of the sorted distinct values. Blocks are centred on their mean before
    Lloyd's iterations, for accurate distances in float32. References: H. Wang and M. Song,
    "Ckmeans.1d.dp: Optimal k-means Clustering in One Dimension by Dynamic Programming", The R
    Journal 3(2), 2011; D. Arthur and S. Vassilvitskii, "k-means++: The Advantages of Careful
    Seeding", SODA 2007; H. Jegou, M. Douze and C. Schmid, "Product Quantization for Nearest
    Neighbor Search", IEEE TPAMI 33(1), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> W = np.array([[0.1, 0.12, 0.9], [1.0, 0.11, 0.95]])
    >>> codebook, codes, inertia = mc.fit_codebook(W, 2)
    >>> codebook.round(3).tolist(), codes.tolist()
    ([0.11, 0.95], [[0, 0, 1], [1, 0, 1]])

    Blocks of two values along each row:

    >>> W = np.array([[0.0, 1.0, 0.1, 1.1], [5.0, 5.0, 0.0, 0.9]])
    >>> codebook, codes, inertia = mc.fit_codebook(W, 2, block_size=2, random_state=0)
    >>> codes.shape, codebook[codes].reshape(W.shape).round(2).tolist()
    ((2, 2), [[0.03, 1.0, 0.03, 1.0], [5.0, 5.0, 0.03, 1.0]])
    """
    codebook, codes, inertia, _, _ = _fit(
        values, n_codes, block_size=block_size, method=method, init=init, n_init=n_init,
        max_iter=max_iter, tol=tol, sample_weight=sample_weight,
        max_points_per_centroid=max_points_per_centroid, random_state=random_state,
        n_threads=n_threads)
    return codebook, codes, inertia


def _assign(points, codebook, n_threads):
    """Index of the nearest codebook row for each row of points (the first of equally near)."""
    assign = _core.kmeans_assign_f64 if points.dtype == np.float64 else _core.kmeans_assign_f32
    codebook = np.ascontiguousarray(codebook, dtype=points.dtype)
    exponent = max(_scale_exponent(points), _scale_exponent(codebook), key=abs)
    if exponent:
        points, codebook = np.ldexp(points, -exponent), np.ldexp(codebook, -exponent)
    labels, _ = assign(points, codebook, None, n_threads)
    return labels


class KMeansQuantizer(TransformerMixin, BaseEstimator):
    """Weight quantization by k-means, as a scikit-learn transformer.

    Each row of ``X`` is cut into blocks of ``block_size`` values (single values by default);
    every block of every row is one point of the k-means. ``transform`` returns ``X`` with each
    block replaced by its codebook entry (the dequantized matrix), ``predict`` the codes.

    Parameters
    ----------
    n_codes : int, default=256
        Codebook size. When ``X`` has fewer points (blocks), every point gets its own code: the
        size used is ``n_codes_ = min(n_codes, number of points)``.
    block_size, method, init, n_init, max_iter, tol, max_points_per_centroid, random_state, \
n_threads
        As in :func:`fit_codebook`.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_codes_, block_size)
        The codebook.
    labels_ : ndarray of shape (n_samples, n_features // block_size)
        The codes of the training data.
    inertia_ : float
        Weighted sum of squared errors of the training data.
    n_iter_ : int
        Lloyd iterations of the kept run, at least 1: an exact answer (``method="optimal"``, or
        as many codes as distinct values) counts as one.
    n_codes_ : int
        Codebook size used.
    method_ : str
        The method used (``"optimal"`` or ``"lloyd"``).
    n_features_in_ : int
        Number of features seen during ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from matcompress import KMeansQuantizer
    >>> W = np.random.default_rng(0).standard_normal((64, 32))
    >>> q = KMeansQuantizer(n_codes=16, random_state=0).fit(W)
    >>> q.cluster_centers_.shape, q.labels_.shape, q.transform(W).shape
    ((16, 1), (64, 32), (64, 32))
    >>> round(float(np.sqrt(np.mean((q.transform(W) - W) ** 2))), 3)  # RMS error (std 1)
    0.095
    """

    def __init__(self, n_codes=256, *, block_size=1, method="auto", init="k-means++", n_init=1,
                 max_iter=100, tol=1e-6, max_points_per_centroid=None, random_state=None,
                 n_threads=None):
        self.n_codes = n_codes
        self.block_size = block_size
        self.method = method
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.max_points_per_centroid = max_points_per_centroid
        self.random_state = random_state
        self.n_threads = n_threads

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _points(self, X, reset):
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=reset)
        b = check_int(self.block_size, "block_size", min_value=1)
        if X.shape[1] % b:
            raise ValueError(f"block_size={b} must divide n_features={X.shape[1]}")
        return X, b

    def fit(self, X, y=None, sample_weight=None):
        """Fit the codebook to the blocks of X (``sample_weight``: one weight per row)."""
        X, b = self._points(X, reset=True)
        n_points = X.size // b
        n_codes = check_int(self.n_codes, "n_codes", min_value=1)
        weight = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            weight = np.repeat(sw, X.shape[1] // b).reshape(X.shape[0], X.shape[1] // b)
            if b == 1:
                weight = weight.reshape(X.shape)
        init = self.init
        if not isinstance(init, str):
            init = np.asarray(init)
        codebook, codes, inertia, n_iter, method = _fit(
            X, min(n_codes, n_points), block_size=b, method=self.method, init=init,
            n_init=self.n_init, max_iter=self.max_iter, tol=self.tol, sample_weight=weight,
            max_points_per_centroid=self.max_points_per_centroid,
            random_state=self.random_state, n_threads=self.n_threads)
        self.cluster_centers_ = codebook.reshape(-1, b)
        self.labels_ = codes.reshape(X.shape[0], X.shape[1] // b)
        self.inertia_ = inertia
        self.n_iter_ = max(n_iter, 1)
        self.n_codes_ = codebook.shape[0]
        self.method_ = method
        return self

    def predict(self, X):
        """Codes of the blocks of X: shape (n_samples, n_features // block_size)."""
        check_is_fitted(self)
        X, b = self._points(X, reset=False)
        labels = _assign(X.reshape(-1, b), self.cluster_centers_,
                         check_n_threads(self.n_threads))
        return labels.astype(_codes_dtype(self.n_codes_)).reshape(X.shape[0], X.shape[1] // b)

    def transform(self, X):
        """X with every block replaced by its codebook entry, in the dtype of X."""
        codes = self.predict(X)
        out = self.cluster_centers_[codes].reshape(codes.shape[0], -1)
        dtype = np.float32 if np.asarray(X).dtype == np.float32 else np.float64
        return out.astype(dtype, copy=False)

    def score(self, X, y=None, sample_weight=None):
        """Minus the (row-weighted) sum of squared quantization errors of X."""
        X_hat = self.transform(X)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        err = ((X.astype(np.float64) - X_hat) ** 2).sum(axis=1)
        if sample_weight is not None:
            err = err * _check_sample_weight(sample_weight, X, dtype=np.float64)
        return -float(err.sum())


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
