"""The MatrixCompressor family: every compression method as an interchangeable object.

A compressor turns a matrix A (m x n) into a :class:`~matcompress.factors.Factorization`.
Each built-in takes either its own parameters or a target ``compression_ratio`` (dense bytes /
stored bytes, every index, codebook and scale counted) and then solves for the parameters so that
the stored bytes meet the target. A subclass of :class:`MatrixCompressor` written by a user
works everywhere a built-in does (``get_config`` / ``from_config`` included).

Data-aware compression: ``compress(A, X=X)`` with calibration inputs X (n_samples, m) of a layer
computing ``x @ A`` minimizes (exactly or approximately, per method) the layer's output error
``||X (A - A_hat)||_F`` instead of ``||A - A_hat||_F``. Compressors that use X say so with the class
attribute ``uses_inputs = True``; X enters through ``H = X^T X / n_samples``
(:func:`input_moments`).
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import ClassVar

import numpy as np

from ._validation import check_array, check_float, check_inputs, check_int
from .factors import Codebook, Factorization, Pruned, SparseCodes, index_dtype

__all__ = [
    "MatrixCompressor",
    "input_moments",
    "LowRankCompressor",
    "DictionaryCompressor",
    "KMeansCompressor",
    "SimhashCompressor",
    "PruningCompressor",
    "compress",
    "get",
    "METHODS",
]

_REGISTRY: dict[str, type] = {}


class MatrixCompressor(abc.ABC):
    """Base class of every compressor.

    Subclasses implement :meth:`compress` and take their parameters as keyword arguments of
    ``__init__`` stored under the same names (as scikit-learn estimators), which is all
    ``get_config`` / ``from_config`` need. A class attribute ``name`` registers the subclass so
    ``MatrixCompressor.from_config`` and :func:`get` find it by name.

    Data-aware compressors set the class attribute ``uses_inputs = True`` and accept the
    calibration inputs as ``compress(A, *, grad=None, X=None)``. It is False here, and a
    subclass written for the older signature ``compress(self, A, *, grad=None)`` keeps working:
    every caller that has inputs (:func:`compress` included) passes ``X`` only to compressors
    whose ``uses_inputs`` is True, and ignores it for the others (as ``grad`` is ignored by
    methods that do not use gradients).
    """

    name: ClassVar[str] = ""
    #: True when ``compress`` accepts the calibration inputs ``X`` (and uses them).
    uses_inputs: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            _REGISTRY[cls.name] = cls

    @abc.abstractmethod
    def compress(self, A, *, grad=None, X=None) -> Factorization:
        """Compress A (m x n); ``grad`` (the loss gradient with respect to A, same shape) is used
        by gradient-aware methods and ignored by the others. ``X`` (n_samples, m): calibration
        inputs of the layer computing ``x @ A``, passed only when ``uses_inputs`` is True; the
        compressor then minimizes the output error ``||X (A - A_hat)||_F``."""

    def resolve(self, A) -> "MatrixCompressor":
        """A compressor whose results on any matrix of A's shape have the parts (shapes, dtypes,
        kind) of this one's result on A: ``self`` when those follow from the shape alone (every
        built-in fixed-form compressor), else a compressor with the choices made on A fixed
        (``auto``'s method, a composite's rank or code width). A layer whose variables are made
        before training (:mod:`matcompress.tf`) calls it once, on the matrix it is built with."""
        return self

    def get_config(self) -> dict:
        """``{"name": ..., "config": {parameter: value}}`` (JSON-friendly parameters)."""
        params = {}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            v = getattr(self, p.name)
            params[p.name] = list(v) if isinstance(v, tuple) else v
        return {"name": self.name or type(self).__name__, "config": params}

    @classmethod
    def from_config(cls, config: dict) -> "MatrixCompressor":
        """Rebuild a compressor from ``get_config()`` output (the registered class named in it
        when called on the base class)."""
        if not isinstance(config, dict) or "config" not in config:
            raise ValueError("config must be a dict as returned by get_config(), with a 'config' "
                             "entry")
        target = cls
        if cls is MatrixCompressor or cls.name != config.get("name"):
            name = config.get("name")
            target = _REGISTRY.get(name)
            if target is None:
                raise ValueError(f"unknown compressor {name!r}; registered: {sorted(_REGISTRY)}")
            if not issubclass(target, cls):
                raise ValueError(f"config is for {name!r}, not a {cls.__name__}")
        return target(**config["config"])

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    __hash__ = None


def get(name, **params) -> MatrixCompressor:
    """The registered compressor called ``name`` ("low_rank", "dictionary", "kmeans", "simhash",
    "pruning", or a user subclass's name), built with ``params``."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown compression method {name!r}; known: {sorted(_REGISTRY)}")
    return cls(**params)


def compress(A, method, /, *, compression_ratio=None, grad=None, X=None,
             **params) -> Factorization:
    """One line: ``get(method, compression_ratio=..., **params).compress(A, grad=grad, X=X)``.

    ``X`` (calibration inputs of the layer computing ``x @ A``, shape (n_samples, m)) is passed
    on only when the compressor's ``uses_inputs`` is True (every built-in's is); it is ignored
    otherwise, so a user compressor written as ``compress(self, A, *, grad=None)`` still works.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> A = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    >>> f = mc.compress(A, "kmeans", compression_ratio=8, random_state=0)
    >>> type(f).__name__, f.compression_ratio >= 8
    ('Codebook', True)
    """
    if compression_ratio is not None:
        params["compression_ratio"] = compression_ratio
    return _compress_with(get(method, **params), A, grad=grad, X=X)


def _compress_with(compressor, A, *, grad=None, X=None):
    """``compressor.compress(A, grad=grad, X=X)``, with X passed only when the compressor's
    ``uses_inputs`` is True (so an old-signature user compressor works)."""
    if X is not None and getattr(compressor, "uses_inputs", False):
        return compressor.compress(A, grad=grad, X=X)
    return compressor.compress(A, grad=grad)


def input_moments(X, *, diagonal_only=False, chunk_rows=None):
    """The calibration inputs' second moment ``H = X^T X / n_samples`` and its diagonal.

    Parameters
    ----------
    X : ndarray of shape (n_samples, m)
        Inputs validated by ``_validation.check_inputs(X, m)`` (2-D float32 or float64, finite,
        at least one row, width m); possibly memory-mapped.
    diagonal_only : bool, default=False
        Only the diagonal (the mean square of each input), O(n_samples * m).
    chunk_rows : int, optional
        Rows of X converted to float64 at a time; default: about 2^22 values.

    Returns
    -------
    H : ndarray of shape (m, m), float64, or None with ``diagonal_only``
        Accumulated in float64 over chunks of rows (one GEMM per chunk), exactly symmetric.
    diag : ndarray of shape (m,), float64
        ``mean(X ** 2, axis=0)``.

    Notes
    -----
    The output error of a layer is ``||X (W - W_hat)||_F^2 = n_samples * trace(E^T H E)`` with
    ``E = W - W_hat``; keeping only the diagonal gives ``n_samples * sum_ij H_ii E_ij^2``, the
    weighted error the diagonal (cheaper) data-aware methods minimize.
    """
    n_samples, m = X.shape
    step = _chunk_rows(chunk_rows, m)
    H = None if diagonal_only else np.zeros((m, m))
    diag = np.zeros(m)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        for start in range(0, n_samples, step):
            chunk = np.asarray(X[start:start + step], dtype=np.float64)
            diag += np.einsum("ij,ij->j", chunk, chunk)
            if H is not None:
                H += chunk.T @ chunk
        diag /= n_samples
    if not np.all(np.isfinite(diag)):
        raise ValueError("X is too large: the squares of its values overflow float64")
    if H is None:
        return None, diag
    H /= n_samples
    H = (H + H.T) / 2
    return H, diag


def _row_weights(diag):
    """The diagonal of H scaled to a largest value of 1 (weights only matter relative to each
    other; this keeps them representable in float32), or None when it is zero (X all zero:
    every approximation has zero output error, so the data-free one is used)."""
    top = float(diag.max())
    if not top > 0:
        return None
    return diag / top


def _check_damp(damp):
    return check_float(damp, "damp", min_value=0.0)


# --- helpers -------------------------------------------------------------------------------------

def _check_matrix(A):
    return check_array(A, "A")


def _check_ratio(ratio):
    if ratio is None:
        return None
    ratio = check_float(ratio, "compression_ratio")
    if not ratio > 1:
        raise ValueError(f"compression_ratio must be > 1 (dense bytes / stored bytes); got {ratio}")
    return ratio


def _round_down(x, digits=6):
    """x rounded down to ``digits`` significant digits (a ratio that is still reachable)."""
    if not (x > 0 and math.isfinite(x)):
        return x
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return math.floor(x * scale) / scale


class _Progress:
    """Progress of a chunked pass on stderr (``verbose``): a line at most every few seconds
    and one at the end."""

    def __init__(self, what, total, verbose, every=5.0):
        import time

        self.what, self.total, self.verbose, self.every = what, total, bool(verbose), every
        self.clock = time.perf_counter
        self.start = self.last = self.clock()

    def __call__(self, done):
        if not self.verbose:
            return
        now = self.clock()
        if done < self.total and now - self.last < self.every:
            return
        import sys

        self.last = now
        print(f"{self.what}: {done:,} of {self.total:,} rows ({100 * done / self.total:.0f} %), "
              f"{now - self.start:.1f} s", file=sys.stderr, flush=True)


def _chunk_rows(chunk_rows, n_cols, what="chunk_rows"):
    """Rows per chunk: as given, or about 2^22 values (16 MiB of float32)."""
    if chunk_rows is None:
        return max(1, (1 << 22) // max(1, n_cols))
    return check_int(chunk_rows, what, min_value=1)


def _sample_rows(m, n_rows, random_state):
    """``n_rows`` distinct row indices of ``m``, ascending (memory-mapped input is then read
    front to back), drawn from ``random_state``."""
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(m, size=n_rows, replace=False))


def _unreachable(method, ratio, best, detail):
    return ValueError(f"{method}: compression_ratio={ratio:g} is unreachable for this matrix "
                      f"({detail}); the best reachable ratio is {_round_down(best):g}")


def _pair(value, name):
    """A pair of positive ints, or raise naming ``name``."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of integers (rows, columns); got {value!r}") \
            from None
    return check_int(a, f"{name}[0]", min_value=1), check_int(b, f"{name}[1]", min_value=1)


def _need_one(name, value, ratio, what):
    if (value is None) == (ratio is None):
        raise ValueError(f"{name}: give exactly one of {what} and compression_ratio")


# --- low rank ------------------------------------------------------------------------------------

class LowRankCompressor(MatrixCompressor):
    """A ~ left @ right (truncated SVD). Stored bytes: rank * (m + n) * itemsize.

    Parameters
    ----------
    rank : int, optional
    compression_ratio : float, optional
        Instead of ``rank``: the largest rank whose factors fit in dense bytes / ratio.
    method : {"randomized", "svd"}, default="randomized"
    random_state : int or None
    damp : float, default=0.01
        With calibration inputs X: the factors minimize ``||X (A - left @ right)||_F^2 / n_samples
        + damp * mean(diag H) * ||A - left @ right||_F^2`` with ``H = X^T X / n_samples``,
        exactly, by whitening: with ``H + damp * mean(diag H) * I = C C^T`` (Cholesky), the
        truncated SVD ``U_r S_r V_r^T`` of ``C^T A`` gives ``left = C^-T U_r S_r^(1/2)``,
        ``right = S_r^(1/2) V_r^T``. The ridge term keeps the problem well posed when X has fewer
        samples than A has rows (``damp=0`` then raises) and leans the directions X never
        excites towards the data-free fit.
    """

    name = "low_rank"
    uses_inputs = True

    def __init__(self, rank=None, *, compression_ratio=None, method="randomized",
                 random_state=None, damp=0.01):
        self.rank = rank
        self.compression_ratio = compression_ratio
        self.method = method
        self.random_state = random_state
        self.damp = damp

    def solve(self, shape, itemsize):
        """The rank used for a matrix of ``shape``."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        _need_one(self.name, self.rank, ratio, "rank")
        if ratio is None:
            return check_int(self.rank, "rank", min_value=1, max_value=min(m, n),
                             max_reason=f"min(m, n) = {min(m, n)}")
        rank = min(int(m * n / (ratio * (m + n))), min(m, n))
        if rank < 1:
            raise _unreachable(self.name, ratio, m * n / (m + n), "rank 1 stores m + n values")
        return rank

    def compress(self, A, *, grad=None, X=None):
        from .lowrank import low_rank

        A = _check_matrix(A)
        rank = self.solve(A.shape, A.dtype.itemsize)
        if X is not None:
            damp = _check_damp(self.damp)
            H, diag = input_moments(check_inputs(X, A.shape[0]))
            if _row_weights(diag) is not None:
                return _whitened_low_rank(A, rank, H, damp, self.method, self.random_state)
        return low_rank(A, rank, method=self.method, random_state=self.random_state)


def _whitened_low_rank(A, rank, H, damp, method, random_state):
    """The rank-``rank`` minimizer of ``trace(E^T (H + damp mean(diag H) I) E)``, E = A - LR."""
    import scipy.linalg

    from .factors import LowRank
    from .gptq import _dampened
    from .lowrank import low_rank

    try:
        C = scipy.linalg.cholesky(_dampened(H, damp), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise ValueError("H + damp * mean(diag H) * I is not positive definite; raise damp "
                         "(H = X^T X / n_samples is singular when X has fewer independent rows "
                         "than columns)") from None
    f = low_rank(C.T @ A.astype(np.float64), rank, method=method, random_state=random_state)
    left = scipy.linalg.solve_triangular(C, f.left, trans="T", lower=True, check_finite=False)
    return LowRank(np.ascontiguousarray(left, dtype=A.dtype),
                   np.ascontiguousarray(f.right, dtype=A.dtype))


# --- dictionary ----------------------------------------------------------------------------------

class DictionaryCompressor(MatrixCompressor):
    """Rows of A as sparse combinations of a learned dictionary (K-SVD / MOD / online).

    Stored bytes: ``n_atoms * n * itemsize`` (dictionary) + ``m * s * (itemsize + index
    bytes)`` (values and atom indices, uint8 up to 256 atoms, uint16 up to 65,536).

    Parameters
    ----------
    n_atoms, n_nonzero_coefs : int, optional
    compression_ratio : float, optional
        Instead of the two: about a quarter of the byte budget goes to the dictionary
        (``n_atoms``, at most m / 2), the rest to the codes (``n_nonzero_coefs``).
    method : {"ksvd", "mod", "online"}, default="ksvd"
    max_iter : int, default=10
    random_state : int or None
    max_fit_rows : int, default=65536
        Large matrices: when A has more rows, the dictionary is learned from a random sample of
        this many rows (drawn from ``random_state``), and every row is then coded against it by
        Batch-OMP (:func:`matcompress.sparse_encode`), ``chunk_rows`` rows at a time: memory
        stays at the sample, one chunk and the codes (memory-mapped input works).
    chunk_rows : int, optional
        Rows coded per chunk on that path; default: about 2^22 values.
    n_threads : int, optional
        Threads of the coding on that path.
    verbose : bool, default=False
        Report the chunked coding's progress on stderr.

    Notes
    -----
    With calibration inputs X (``compress(A, X=X)``), the dictionary is learned for the
    diagonal of the output error, ``sum_i H_ii ||a_i - c_i D||^2`` with
    ``H_ii = mean(X[:, i] ** 2)``: the rows are learned from as ``sqrt(H_ii) a_i`` and their
    codes divided back by ``sqrt(H_ii)``. This is exactly the row-weighted K-SVD / MOD / online
    learning, because OMP's choice of atoms does not depend on a row's scale and its
    coefficients scale with it; so the weights move the atoms (towards the rows whose inputs are
    large) and not the coding of a row against a given dictionary. Rows whose input is always
    zero are coded by OMP against the learned dictionary. The correlations between inputs (the
    off-diagonal of H) are not used: they couple the codes of different rows, which this
    row-by-row coding cannot represent.
    """

    name = "dictionary"
    uses_inputs = True

    def __init__(self, n_atoms=None, n_nonzero_coefs=None, *, compression_ratio=None,
                 method="ksvd", max_iter=10, random_state=None, max_fit_rows=65536,
                 chunk_rows=None, n_threads=None, verbose=False):
        self.n_atoms = n_atoms
        self.n_nonzero_coefs = n_nonzero_coefs
        self.compression_ratio = compression_ratio
        self.method = method
        self.max_iter = max_iter
        self.random_state = random_state
        self.max_fit_rows = max_fit_rows
        self.chunk_rows = chunk_rows
        self.n_threads = n_threads
        self.verbose = verbose

    @staticmethod
    def stored_bytes(m, n, itemsize, k, s):
        return k * n * itemsize + m * s * (itemsize + index_dtype(k).itemsize)

    def solve(self, shape, itemsize):
        """(n_atoms, n_nonzero_coefs) used for a matrix of ``shape``."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        if ratio is None:
            if self.n_atoms is None or self.n_nonzero_coefs is None:
                raise ValueError(f"{self.name}: give n_atoms and n_nonzero_coefs, or "
                                 "compression_ratio")
            k = check_int(self.n_atoms, "n_atoms", min_value=1, max_value=m,
                          max_reason=f"the number of rows, {m}")
            s = check_int(self.n_nonzero_coefs, "n_nonzero_coefs", min_value=1,
                          max_value=min(k, n), max_reason=f"min(n_atoms, n) = {min(k, n)}")
            return k, s
        if self.n_atoms is not None or self.n_nonzero_coefs is not None:
            raise ValueError(f"{self.name}: give either n_atoms and n_nonzero_coefs or "
                             "compression_ratio, not both")
        budget = m * n * itemsize / ratio
        best = None
        # First the atoms whose codes use a quarter of them (s = k / 4: codes that are sparse,
        # and no bytes left over), then fixed shares of the budget for the atoms.
        balanced = []
        for idx in (1, 2, 4):
            k = int(budget / (n * itemsize + m * (itemsize + idx) / 4))
            if k >= 8 and index_dtype(k).itemsize == idx:
                balanced.append(k)
        candidates = [int(frac * budget / (n * itemsize)) for frac in (0.25, 0.125, 0.0625, 0.5)]
        for i, k in enumerate(balanced + candidates + [2]):
            k = min(max(2, k), max(1, m // 2))
            s = int((budget - k * n * itemsize) // (m * (itemsize + index_dtype(k).itemsize)))
            s = min(s, k, n) if i >= len(balanced) else min(s, max(1, k // 4), n)
            if s >= 1 and self.stored_bytes(m, n, itemsize, k, s) <= budget:
                best = (k, s)
                break
        if best is None:
            k = min(2, max(1, m // 2))
            reach = m * n * itemsize / self.stored_bytes(m, n, itemsize, k, 1)
            raise _unreachable(self.name, ratio, reach,
                               "not even 2 atoms and 1 nonzero per row fit")
        return best

    def compress(self, A, *, grad=None, X=None):
        from .dictionary import dict_learning

        A = _check_matrix(A)
        m, n = A.shape
        k, s = self.solve(A.shape, A.dtype.itemsize)
        limit = check_int(self.max_fit_rows, "max_fit_rows", min_value=1)
        root = None  # sqrt of the row weights, with X
        if X is not None:
            weight = _row_weights(input_moments(check_inputs(X, m), diagonal_only=True)[1])
            if weight is not None:
                root = np.sqrt(weight).astype(A.dtype)
        if m > limit:
            if limit < k:
                raise ValueError(f"max_fit_rows={limit} is below n_atoms={k}")
            rng = np.random.default_rng(self.random_state)
            rows = _sample_rows(m, limit, rng)
            sample = A[rows] if root is None else A[rows] * root[rows, None]
            _, dictionary, _ = dict_learning(sample, k, n_nonzero_coefs=s, method=self.method,
                                             max_iter=self.max_iter, random_state=rng,
                                             n_threads=self.n_threads)
            del sample
            return self._code_chunks(A, dictionary.astype(A.dtype, copy=False), s)
        codes, dictionary, _ = dict_learning(A if root is None else A * root[:, None], k,
                                             n_nonzero_coefs=s, method=self.method,
                                             max_iter=self.max_iter,
                                             random_state=self.random_state,
                                             n_threads=self.n_threads)
        if root is not None:
            live = root > 0
            codes[live] /= root[live, None]
            if not live.all():  # OMP as sparse_encode, without its warning on rows that stop
                from ._validation import check_n_threads  # early (harmless here)
                from .dictionary import _omp_codes

                codes[~live] = _omp_codes(np.ascontiguousarray(A[~live]),
                                          dictionary.astype(A.dtype, copy=False), s,
                                          check_n_threads(self.n_threads))
        indices = np.zeros((m, s), index_dtype(k))
        values = np.zeros((m, s), A.dtype)
        rows, cols = np.nonzero(codes)
        counts = np.bincount(rows, minlength=m)
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = slot < s  # (OMP never selects more than s atoms)
        indices[rows[keep], slot[keep]] = cols[keep]
        values[rows[keep], slot[keep]] = codes[rows[keep], cols[keep]]
        return SparseCodes(indices, values, dictionary.astype(A.dtype, copy=False))

    def _code_chunks(self, A, dictionary, s):
        """SparseCodes of every row of A over ``dictionary``, by Batch-OMP in chunks; each
        row's terms in atom order, unused slots (a row coded by fewer atoms) index 0, value 0."""
        from .omp import sparse_encode

        m, n = A.shape
        k = dictionary.shape[0]
        indices = np.zeros((m, s), index_dtype(k))
        values = np.zeros((m, s), A.dtype)
        gram = dictionary @ dictionary.T
        step = _chunk_rows(self.chunk_rows, n)
        progress = _Progress("dictionary: coding", m, self.verbose)
        for start in range(0, m, step):
            chunk = np.ascontiguousarray(A[start:start + step])
            csr = sparse_encode(chunk, dictionary, gram=gram, n_nonzero_coefs=s,
                                n_threads=self.n_threads, return_sparse=True)
            counts = np.diff(csr.indptr)
            rows = np.repeat(np.arange(chunk.shape[0]), counts)
            slot = np.arange(rows.size) - np.repeat(csr.indptr[:-1], counts)
            indices[start + rows, slot] = csr.indices
            values[start + rows, slot] = csr.data
            progress(min(m, start + step))
        return SparseCodes(indices, values, dictionary)


# --- k-means -------------------------------------------------------------------------------------

class KMeansCompressor(MatrixCompressor):
    """Weights (or blocks of ``block_size`` weights along each row) replaced by the nearest of
    ``n_codes`` codebook entries (k-means). Codes are stored 4-bit packed when ``n_codes <= 16``,
    else in uint8 / uint16.

    Parameters
    ----------
    n_codes : int, optional
    block_size : int, default=1
    compression_ratio : float, optional
        Instead of ``n_codes`` (and ``block_size`` when it is not given): the configuration with
        the most code bits per weight whose codes and codebook fit, the shorter block on a tie —
        16-bit codes on single weights, 8- or 4-bit codes on blocks of 1, 2, 4, 8 or 16 weights
        (blocks must divide n).
    method, init, max_iter, random_state, n_threads
        As in :func:`matcompress.fit_codebook`.
    max_fit_points : int, default=2**24
        Large matrices (an embedding table of millions of rows, possibly a memory-mapped
        ``.npy``): when A has more points (weights, or blocks) than this, the codebook is fitted
        to a random sample of whole rows holding about this many points (drawn from
        ``random_state``), and every row is then coded against it, ``chunk_rows`` rows at a
        time; memory stays at the sample, one chunk and the codes. Every matrix up to 4096 x
        4096 is fitted whole.
    chunk_rows : int, optional
        Rows coded per chunk on that path; default: about 2^22 values.
    verbose : bool, default=False
        Report the chunked coding's progress on stderr.
    data_aware : {"gptq", "diagonal"}, default="gptq"
        With calibration inputs (``compress(A, X=X)``), how they are used. Both fit the
        codebook by k-means weighted by the second moment of each weight's input,
        ``H_ii = mean(X[:, i] ** 2)`` for every weight (block) of row i: the diagonal of the
        output error ``||X (A - A_hat)||^2``. ``"diagonal"`` then codes each weight (block) by
        its nearest entry; ``"gptq"`` codes the rows in order with GPTQ's error feedback
        through the full ``H = X^T X / n_samples`` (:func:`matcompress.gptq.gptq_quantize`:
        each row, updated by the errors of the rows before it, coded by its nearest entries;
        blocks lie along a row, so they share one input and GPTQ applies to them unchanged).
        The codebook is not refitted to the GPTQ codes (docs/decisions.md: it gained at most
        0.5 %). GPTQ works on a float64 copy of A and needs H (m x m) and its inverse factor;
        past ``max_fit_points`` the codebook is still fitted to a sample of rows, and GPTQ
        then codes every row. Without X this parameter is not used.
    damp : float, default=0.01
        ``"gptq"``: ``H + damp * mean(diag H) * I`` is used.
    """

    name = "kmeans"
    uses_inputs = True

    def __init__(self, n_codes=None, block_size=None, *, compression_ratio=None, method="auto",
                 init="k-means++", max_iter=100, random_state=None, n_threads=None,
                 max_fit_points=2**24, chunk_rows=None, verbose=False, data_aware=None,
                 damp=0.01):
        self.n_codes = n_codes
        self.block_size = block_size
        self.compression_ratio = compression_ratio
        self.method = method
        self.init = init
        self.max_iter = max_iter
        self.random_state = random_state
        self.n_threads = n_threads
        self.max_fit_points = max_fit_points
        self.chunk_rows = chunk_rows
        self.verbose = verbose
        self.data_aware = data_aware
        self.damp = damp

    @staticmethod
    def stored_bytes(m, n, itemsize, n_codes, b):
        per_row = n // b
        code_bytes = m * ((per_row + 1) // 2) if n_codes <= 16 else \
            m * per_row * index_dtype(n_codes).itemsize
        return code_bytes + n_codes * b * itemsize

    def solve(self, shape, itemsize):
        """(n_codes, block_size) used for a matrix of ``shape``."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        _need_one(self.name, self.n_codes, ratio, "n_codes")
        if ratio is None:
            b = 1 if self.block_size is None else check_int(self.block_size, "block_size",
                                                            min_value=1)
            if n % b:
                raise ValueError(f"block_size={b} must divide n={n}")
            n_codes = check_int(self.n_codes, "n_codes", min_value=1, max_value=m * n // b,
                                max_reason=f"the number of blocks, {m * n // b}")
            return n_codes, b
        budget = m * n * itemsize / ratio
        if self.block_size is not None:
            b = check_int(self.block_size, "block_size", min_value=1)
            if n % b:
                raise ValueError(f"block_size={b} must divide n={n}")
            sizes = [b]
        else:
            sizes = [b for b in (1, 2, 4, 8, 16) if n % b == 0]
        # Most code bits per weight; on a tie the shorter block (cheaper to fit, and scalar codes
        # get the exact or O(k log n) 1-D method). 16-bit codes only for scalars: block k-means
        # with 65,536 centroids costs n * 65,536 * b per iteration.
        best = None  # (bits per weight, -b, n_codes)
        for b in sizes:
            points = m * n // b
            for bits in ((16, 8, 4) if b == 1 else (8, 4)):
                n_codes = min(1 << bits, points)
                if self.stored_bytes(m, n, itemsize, n_codes, b) > budget:
                    continue
                cand = (math.log2(n_codes) / b, -b, n_codes)
                if best is None or cand > best:
                    best = cand
        if best is None:
            reach, b = max((m * n * itemsize /
                            self.stored_bytes(m, n, itemsize, min(16, m * n // b), b), b)
                           for b in sizes)
            raise _unreachable(self.name, ratio, reach,
                               f"4-bit codes on blocks of {b} are the smallest form")
        return best[2], -best[1]

    def _data_aware_mode(self, b):
        mode = self.data_aware
        if mode is None:
            return "gptq"
        if mode not in ("gptq", "diagonal"):
            raise ValueError(f"data_aware must be 'gptq', 'diagonal' or None; got {mode!r}")
        return mode

    def compress(self, A, *, grad=None, X=None):
        from .kmeans import fit_codebook, pack_4bit

        A = _check_matrix(A)
        m, n = A.shape
        n_codes, b = self.solve(A.shape, A.dtype.itemsize)
        limit = check_int(self.max_fit_points, "max_fit_points", min_value=1)
        fit = dict(block_size=b, method=self.method, init=self.init, max_iter=self.max_iter,
                   random_state=self.random_state, n_threads=self.n_threads)
        per_row = n // b
        weight = H = None  # row weights (diagonal of H, largest 1) and H, with X
        if X is not None:
            mode = self._data_aware_mode(b)
            damp = _check_damp(self.damp)
            X = check_inputs(X, m)
            H, diag = input_moments(X, diagonal_only=mode == "diagonal")
            weight = _row_weights(diag)
            if weight is None:
                H = None
        if weight is not None:
            return self._compress_data_aware(A, n_codes, b, fit, limit, weight, H, damp)
        if m * per_row <= limit:
            codebook, codes, _ = fit_codebook(A, n_codes, **fit)
            codebook = codebook.reshape(n_codes, b)
            if n_codes <= 16:
                return Codebook(pack_4bit(codes), codebook, n, packed=True)
            return Codebook(codes.astype(index_dtype(n_codes), copy=False), codebook, n)
        # Fit to a sample of rows, then code every row chunk by chunk.
        rng = np.random.default_rng(self.random_state)
        sample = A[_sample_rows(m, max(1, limit // per_row), rng)]
        if sample.shape[0] * per_row < n_codes:
            raise ValueError(f"max_fit_points={limit} leaves fewer points than n_codes="
                             f"{n_codes}")
        codebook = fit_codebook(sample, n_codes, **dict(fit, random_state=rng))[0]
        del sample
        codebook = codebook.reshape(n_codes, b)
        return Codebook(*self._code_chunks(A, codebook, pack_4bit), n, packed=n_codes <= 16)

    def _compress_data_aware(self, A, n_codes, b, fit, limit, weight, H, damp):
        """The codebook fitted with the weights of the rows (``weight``, one per row); codes
        by nearest entry, or by GPTQ when ``H`` is given."""
        from .kmeans import fit_codebook, pack_4bit

        m, n = A.shape
        per_row = n // b
        packed = n_codes <= 16

        def weights_of(rows):  # one per point: every weight (block) of row i gets weight[i]
            return np.broadcast_to(weight[rows][:, None], (rows.size, per_row))

        if m * per_row <= limit:
            codebook, codes, _ = fit_codebook(A, n_codes, sample_weight=weights_of(np.arange(m)),
                                              **fit)
        else:
            rng = np.random.default_rng(self.random_state)
            rows = _sample_rows(m, max(1, limit // per_row), rng)
            if rows.size * per_row < n_codes:
                raise ValueError(f"max_fit_points={limit} leaves fewer points than n_codes="
                                 f"{n_codes}")
            if not np.any(weight[rows] > 0):
                raise ValueError("X is zero on every input of the rows sampled to fit the "
                                 "codebook (max_fit_points); raise max_fit_points")
            codebook = fit_codebook(A[rows], n_codes, sample_weight=weights_of(rows),
                                    **dict(fit, random_state=rng))[0]
            codes = None
        codebook = codebook.reshape(n_codes, b)
        if H is not None:
            codes = self._gptq_codes(A, codebook, H, damp)
        elif codes is None:
            codes, codebook = self._code_chunks(A, codebook, pack_4bit)
            return Codebook(codes, codebook, n, packed=packed)
        if packed:
            return Codebook(pack_4bit(codes), codebook, n, packed=True)
        return Codebook(codes.astype(index_dtype(n_codes), copy=False), codebook, n)

    def _gptq_codes(self, A, codebook, H, damp):
        """(m, n // b) codes of A chosen by GPTQ against the fixed ``codebook``."""
        from .gptq import gptq_quantize
        from .kmeans import _assign

        m, n = A.shape
        n_codes, b = codebook.shape
        codes = np.empty((m, n // b), index_dtype(max(n_codes, 256)))
        book = codebook.astype(np.float64)
        if b == 1:
            values = book[:, 0]  # ascending: the nearest entry by its midpoints, the first of
            mids = (values[1:] + values[:-1]) / 2  # two equally near ones

            def quantize_rows(rows, start):
                idx = np.searchsorted(mids, rows[0], side="left")
                codes[start] = idx
                return values[idx][None, :]
        else:
            # one row's blocks at a time: too little work to share between threads

            def quantize_rows(rows, start):
                idx = _assign(rows.reshape(-1, b), book, 1)
                codes[start] = idx
                return book[idx].reshape(1, n)

        gptq_quantize(A, H, quantize_rows, damp=damp)
        return codes

    def _code_chunks(self, A, codebook, pack_4bit):
        """(codes, codebook): every row of A coded against ``codebook`` in chunks."""
        from ._validation import check_n_threads
        from .kmeans import _assign

        m, n = A.shape
        n_codes, b = codebook.shape
        n_threads = check_n_threads(self.n_threads)
        per_row = n // b
        packed = n_codes <= 16
        codes = (np.empty((m, (per_row + 1) // 2), np.uint8) if packed
                 else np.empty((m, per_row), index_dtype(n_codes)))
        step = _chunk_rows(self.chunk_rows, n)
        progress = _Progress("kmeans: coding", m, self.verbose)
        for start in range(0, m, step):
            chunk = np.ascontiguousarray(A[start:start + step])
            labels = _assign(chunk.reshape(-1, b), codebook, n_threads)
            labels = labels.reshape(chunk.shape[0], per_row)
            codes[start:start + step] = pack_4bit(labels) if packed else labels
            progress(min(m, start + step))
        return codes, codebook


# --- simhash -------------------------------------------------------------------------------------

class SimhashCompressor(MatrixCompressor):
    """A ~ (R @ S) * scale with R a Gaussian projection regenerated from a seed and S the
    ``n_bits`` sign bits per column. Stored bytes: ``n_bits * ceil(n / 8)`` + ``n * itemsize``
    (scales) + 16 (seed and row count).

    Parameters
    ----------
    n_bits : int, optional
    compression_ratio : float, optional
        Instead of ``n_bits``: the most bits that fit.
    random_state : int or None
    n_threads : int or None

    Notes
    -----
    With calibration inputs X (``compress(A, X=X)``) the signs are the same and each column's
    scale is refitted to minimize that column's output error ``||X (a_j - scale_j v_j)||``
    (``v_j = R s_j``): ``scale_j = <X v_j, X a_j> / ||X v_j||^2`` (the data-free scale where
    ``X v_j = 0``). The output error separates over columns, so these scales are the exact
    optimum for the given signs.
    """

    name = "simhash"
    uses_inputs = True

    def __init__(self, n_bits=None, *, compression_ratio=None, random_state=None,
                 n_threads=None):
        self.n_bits = n_bits
        self.compression_ratio = compression_ratio
        self.random_state = random_state
        self.n_threads = n_threads

    @staticmethod
    def stored_bytes(m, n, itemsize, k):
        return k * ((n + 7) // 8) + n * itemsize + 16

    def solve(self, shape, itemsize):
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        _need_one(self.name, self.n_bits, ratio, "n_bits")
        if ratio is None:
            return check_int(self.n_bits, "n_bits", min_value=1)
        budget = m * n * itemsize / ratio
        k = int((budget - n * itemsize - 16) // ((n + 7) // 8))
        if k < 1:
            raise _unreachable(self.name, ratio,
                               m * n * itemsize / self.stored_bytes(m, n, itemsize, 1),
                               "the per-column scales alone exceed the budget")
        return k

    def compress(self, A, *, grad=None, X=None):
        from .hashing import simhash

        A = _check_matrix(A)
        if X is not None:
            X = check_inputs(X, A.shape[0])
        f = simhash(A, self.solve(A.shape, A.dtype.itemsize), random_state=self.random_state,
                    n_threads=self.n_threads)
        if X is None:
            return f
        return _output_scales(f, A, X)


def _output_scales(f, A, X, chunk_rows=None):
    """``f`` (SignBits) with each column's scale minimizing ``||X (a_j - scale_j R s_j)||``."""
    from .factors import SignBits

    # V = R S (m, n) once: O(m k n), then 2 n_samples m n for X V and X A (cheaper than X R
    # then (X R) S when k > m n / (m + n), the usual case: k of the order of m at 8x)
    V = f.projection().astype(np.float64) @ f.signs().astype(np.float64)
    A64 = A.astype(np.float64)
    num = np.zeros(A.shape[1])
    den = np.zeros(A.shape[1])
    step = _chunk_rows(chunk_rows, max(A.shape))
    for start in range(0, X.shape[0], step):
        chunk = np.asarray(X[start:start + step], dtype=np.float64)
        XV = chunk @ V
        num += np.einsum("ij,ij->j", XV, chunk @ A64)
        den += np.einsum("ij,ij->j", XV, XV)
    scale = f.scale.astype(np.float64)
    ok = den > 0
    scale[ok] = num[ok] / den[ok]
    return SignBits(bits=f.bits, scale=scale.astype(A.dtype), seed=f.seed, n_rows=f.n_rows)


# --- pruning -------------------------------------------------------------------------------------

class PruningCompressor(MatrixCompressor):
    """The largest-scoring entries of A kept in CSR form; optionally their values quantized by
    scalar k-means to ``n_codes`` (pruning then quantizing, as Deep Compression).

    Stored bytes: ``(m + 1) * 4`` (row offsets, int32) + ``nnz * index bytes`` (column indices,
    uint8 / uint16 / uint32 by n) + ``nnz * itemsize`` (values), or with ``n_codes``:
    ``nnz * code bytes`` (uint8 / uint16) + ``n_codes * itemsize``.

    Parameters
    ----------
    sparsity : float in [0, 1), optional
        Fraction of entries (or blocks) removed.
    compression_ratio : float, optional
        Instead of ``sparsity``: the lowest sparsity whose stored bytes fit.
    scores : {"magnitude", "taylor"}, default="magnitude"
        |A|, or the first-order Taylor score |A * grad| (Molchanov et al. 2017; ``compress``
        then needs ``grad``). With calibration inputs X (``compress(A, X=X)``) the magnitude
        score becomes ``|A_ij| * sqrt(H_ii)``, ``H_ii = mean(X[:, i] ** 2)``: the Wanda score
        (Sun et al. 2024), whose square is the output error that removing the entry alone
        adds, ``H_ii A_ij^2`` (OBD's diagonal saliency, LeCun et al. 1990, with the Hessian of
        the output error). The selection stays global (or by block, or N:M) as without X; the
        kept values are not updated. The Taylor score uses ``grad`` and ignores X.
    block_shape : (int, int), default=(1, 1)
        Blocks pruned together (scored by the L2 norm of their entries' scores).
    n_m : (int, int), optional
        N:M structured sparsity (e.g. (2, 4)): N kept in every M consecutive entries of a row;
        the sparsity is then 1 - N / M and neither ``sparsity`` nor ``compression_ratio`` applies.
    n_codes : int, optional
        Quantize the kept values to this many scalar codes (with X: each value weighted by
        ``H_ii`` of its row in the k-means, as :class:`KMeansCompressor`'s ``"diagonal"``).
    random_state, n_threads
        For the quantization and the selection.
    """

    name = "pruning"
    uses_inputs = True

    def __init__(self, sparsity=None, *, compression_ratio=None, scores="magnitude",
                 block_shape=(1, 1), n_m=None, n_codes=None, random_state=None, n_threads=None):
        self.sparsity = sparsity
        self.compression_ratio = compression_ratio
        self.scores = scores
        self.block_shape = block_shape
        self.n_m = n_m
        self.n_codes = n_codes
        self.random_state = random_state
        self.n_threads = n_threads

    def _value_bytes(self, itemsize):
        if self.n_codes is None:
            return itemsize
        return index_dtype(check_int(self.n_codes, "n_codes", min_value=1)).itemsize

    def stored_bytes(self, m, n, itemsize, nnz):
        extra = 0 if self.n_codes is None else int(self.n_codes) * itemsize
        return (m + 1) * 4 + nnz * (index_dtype(n).itemsize + self._value_bytes(itemsize)) + extra

    def solve(self, shape, itemsize):
        """The sparsity used (None with n_m)."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        bh, bw = _pair(self.block_shape, "block_shape")
        if self.n_m is not None:
            _pair(self.n_m, "n_m")
            if self.sparsity is not None or ratio is not None:
                raise ValueError(f"{self.name}: n_m fixes the sparsity; give neither sparsity "
                                 "nor compression_ratio with it")
            return None
        _need_one(self.name, self.sparsity, ratio, "sparsity")
        if ratio is None:
            s = check_float(self.sparsity, "sparsity", min_value=0.0)
            if not s < 1:
                raise ValueError(f"sparsity must lie in [0, 1); got {s}")
            return s
        n_blocks = (m // bh) * (n // bw)
        budget = m * n * itemsize / ratio
        per_entry = index_dtype(n).itemsize + self._value_bytes(itemsize)
        fixed = self.stored_bytes(m, n, itemsize, 0)
        keep_entries = int((budget - fixed) // per_entry)
        keep_blocks = keep_entries // (bh * bw)
        if keep_blocks < 1:
            raise _unreachable(self.name, ratio,
                               m * n * itemsize / self.stored_bytes(m, n, itemsize, bh * bw),
                               "the row offsets alone nearly fill the budget")
        keep_blocks = min(keep_blocks, n_blocks)
        # prune() keeps n_blocks - floor(sparsity * n_blocks) blocks
        s = (n_blocks - keep_blocks) / n_blocks
        while n_blocks - math.floor(s * n_blocks) > keep_blocks:
            s = math.nextafter(s, 1.0)
        return s

    def compress(self, A, *, grad=None, X=None):
        from .pruning import prune, taylor_scores

        A = _check_matrix(A)
        sparsity = self.solve(A.shape, A.dtype.itemsize)
        weight = None
        if X is not None:
            weight = _row_weights(input_moments(check_inputs(X, A.shape[0]),
                                                diagonal_only=True)[1])
        if self.scores == "magnitude":
            scores = "magnitude"
            if weight is not None:
                scores = np.abs(A) * np.sqrt(weight)[:, None]
        elif self.scores == "taylor":
            if grad is None:
                raise ValueError("scores='taylor' needs grad (the loss gradient with respect "
                                 "to A) in compress(A, grad=...)")
            scores = taylor_scores(A, grad)
        else:
            raise ValueError(f"scores must be 'magnitude' or 'taylor'; got {self.scores!r}")
        pruned = prune(A, sparsity, scores=scores, block_shape=_pair(self.block_shape,
                                                                     "block_shape"),
                       n_m=None if self.n_m is None else _pair(self.n_m, "n_m"),
                       n_threads=self.n_threads)
        if self.n_codes is None:
            return pruned
        from .kmeans import fit_codebook

        values = pruned.values
        if values.size == 0:
            raise ValueError("nothing kept to quantize")
        n_codes = min(int(self.n_codes), values.size)
        sample_weight = None
        if weight is not None:
            sample_weight = np.repeat(weight, np.diff(pruned.indptr))
            if not np.any(sample_weight > 0):
                sample_weight = None
        codebook, codes, _ = fit_codebook(values, n_codes, random_state=self.random_state,
                                          n_threads=self.n_threads, sample_weight=sample_weight)
        return Pruned(pruned.indptr, pruned.indices, pruned.n_cols,
                      codes=codes.astype(index_dtype(n_codes), copy=False), codebook=codebook)


#: Built-in method names (for :func:`compress`).
METHODS = ("low_rank", "dictionary", "kmeans", "simhash", "pruning")
