"""Composite factorizations: W as a sum of stored forms, and the compressors that build them.

Trained layers are close to full rank (``PEERS.md``, "What real weights look like"): at a byte
budget the methods that win mix forms. :class:`Sum` stores W as the sum of two or more
factorizations of one shape and dtype; the compressors here build such sums:

=========================  =====================  ==============================================
compressor                 name                   W ~
=========================  =====================  ==============================================
LowRankResidualCompressor  "low_rank_residual"    LowRank (truncated SVD) + the residual quantized
OutlierCompressor          "outliers"             quantized + Pruned (a few weights kept exactly)
PruneQuantizeCompressor    "prune_kmeans"         Pruned with k-means codes (sparsity and codebook
                                                  size searched for a ratio)
CompositeCompressor        "composite"            the first compressor on A, the next on the
                                                  residual, and so on
=========================  =====================  ==============================================

With ``compression_ratio=R`` each splits the byte budget (dense bytes / R) between its parts and
passes the parts a ``compression_ratio`` of their own. The forms a quantizer can store come in
steps (4-bit or 8-bit codes, blocks), so a part often leaves some of its share unused: the
composites give those bytes to the part that can use any number of them (more rank, more
outliers) or to the next part. The parts are fitted with ``grad`` and, when their ``compress``
takes it, ``X``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import ClassVar

import numpy as np

from ._validation import check_array, check_float, check_int
from .compressors import (MatrixCompressor, PruningCompressor, _check_matrix, _check_ratio,
                          _unreachable, get)
from .factors import (_KINDS, Codebook, Factorization, LowRank, Pruned, _decode_parts,
                      _encode_parts, index_dtype)

__all__ = ["Sum", "LowRankResidualCompressor", "OutlierCompressor", "PruneQuantizeCompressor",
           "CompositeCompressor", "DEFAULT_QUANTIZER", "DEFAULT_RANK_SHARE"]

#: The quantizer of the residual (``low_rank_residual``) and of the non-outlier weights
#: (``outliers``) when none is given: a registered compressor name.
DEFAULT_QUANTIZER = "kmeans"

#: The share of the byte budget ``low_rank_residual`` starts the low-rank part from when neither
#: ``rank`` nor ``rank_share`` is given: the residual then gets the largest form that fits in the
#: other 90 %, the low rank whatever that form leaves (docs/decisions.md, "Composite
#: factorizations": on every matrix measured the largest residual form gave the lowest error).
DEFAULT_RANK_SHARE = 0.1


# --- the Sum factorization -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Sum(Factorization):
    """W = parts[0] + parts[1] + ...: two or more factorizations of one shape and dtype.

    ``nbytes`` is the sum of the parts' bytes. ``matmul`` adds the parts' products (each from
    its own factors; W is never built), the backward pass adds the parts' ``dx`` and gives the
    gradient of each part's trainable fields under the name ``"parts.<i>.<field>"`` (nested
    sums: ``"parts.0.parts.1.left"``). ``to_dense`` adds the parts' dense matrices in order,
    in the dtype of W.

    Stored (``save``, :func:`matcompress.archive.save_many`) as one flat set of fields: part
    ``i``'s kind as ``"p<i>/__kind__"`` and its fields as ``"p<i>/<field>"``.
    """

    parts: tuple
    kind: ClassVar[str] = "sum"

    def __post_init__(self):
        parts = self.parts
        if isinstance(parts, Factorization) or not isinstance(parts, (tuple, list)):
            raise TypeError("parts must be a tuple or list of Factorization objects; got "
                            f"{type(parts).__name__}")
        parts = tuple(parts)
        if len(parts) < 2:
            raise ValueError(f"parts must hold at least 2 factorizations; got {len(parts)}")
        for i, p in enumerate(parts):
            if not isinstance(p, Factorization):
                raise TypeError(f"parts[{i}] must be a Factorization; got {type(p).__name__}")
        shape, dtype = tuple(parts[0].shape), parts[0].dtype
        for i, p in enumerate(parts[1:], 1):
            if tuple(p.shape) != shape:
                raise ValueError(f"parts[{i}] has shape {tuple(p.shape)}; parts[0] has {shape}: "
                                 "the parts of a sum must have one shape")
            if p.dtype != dtype:
                raise TypeError(f"parts[{i}] has dtype {p.dtype}; parts[0] has {dtype}: the "
                                "parts of a sum must have one dtype")
        object.__setattr__(self, "parts", parts)

    shape = property(lambda self: tuple(self.parts[0].shape))
    dtype = property(lambda self: self.parts[0].dtype)

    @property
    def nbytes(self):
        return int(sum(p.nbytes for p in self.parts))

    def to_dense(self):
        out = np.array(self.parts[0].to_dense(), dtype=self.dtype, copy=True)
        for p in self.parts[1:]:
            out += p.to_dense()
        return out

    def _dense_rows(self, start, stop):
        out = np.array(self.parts[0]._dense_rows(start, stop), dtype=self.dtype, copy=True)
        for p in self.parts[1:]:
            out += p._dense_rows(start, stop)
        return out

    @property
    def trainable_fields(self):
        return tuple(f"parts.{i}.{name}" for i, p in enumerate(self.parts)
                     for name in p.trainable_fields)

    def _field(self, name):
        head, _, rest = name.partition(".")
        index, _, rest = rest.partition(".")
        if head != "parts" or not index.isdigit() or int(index) >= len(self.parts) or not rest:
            raise KeyError(f"{name!r} names no field of a part of this Sum")
        return self.parts[int(index)]._field(rest)

    def _matmul(self, x):
        y = self.parts[0]._matmul(x)
        if not y.flags.writeable:
            y = y.copy()
        for p in self.parts[1:]:
            y += p._matmul(x)
        return y

    def _backward(self, x, dy, need_dx, need_grads):
        dx, grads = None, {}
        for i, p in enumerate(self.parts):
            dxi, gi = p._backward(x, dy, need_dx, need_grads)
            if need_dx:
                dx = np.array(dxi, copy=True) if dx is None else dx + dxi
            grads.update({f"parts.{i}.{name}": g for name, g in gi.items()})
        return dx, grads

    def _encode_fields(self):
        return _encode_parts(self.parts)

    @classmethod
    def _decode_fields(cls, names, read, where):
        parts = _decode_parts(names, read, where, "sum")
        try:
            return cls(tuple(parts))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed 'sum': {exc}") from None

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return len(self.parts) == len(other.parts) and all(
            a == b for a, b in zip(self.parts, other.parts))

    __hash__ = None

    def __repr__(self):
        m, n = self.shape
        kinds = ", ".join(type(p).__name__ for p in self.parts)
        return (f"Sum(parts=({kinds}), shape=({m}, {n}), dtype={self.dtype}, "
                f"nbytes={self.nbytes}, compression_ratio={self.compression_ratio:.3g})")


_KINDS[Sum.kind] = Sum


# --- helpers -------------------------------------------------------------------------------------

def _as_compressor(spec, what):
    """A compressor from a registered name, an instance, or a ``get_config()`` dict."""
    if isinstance(spec, MatrixCompressor):
        return spec
    if isinstance(spec, str):
        return get(spec)
    if isinstance(spec, dict):
        return MatrixCompressor.from_config(spec)
    raise TypeError(f"{what} must be a compressor name, a MatrixCompressor or a get_config() "
                    f"dict; got {type(spec).__name__}")


def _config_of(spec, what):
    """JSON-friendly form of a compressor spec: names stay names, the rest become configs."""
    return spec if isinstance(spec, str) else _as_compressor(spec, what).get_config()


def _with_ratio(comp, ratio, random_state):
    """A copy of ``comp`` targeting ``ratio`` (and seeded by ``random_state`` when it has none)."""
    params = dict(comp.get_config()["config"])
    if "compression_ratio" not in params:
        raise ValueError(f"{comp.name or type(comp).__name__} takes no compression_ratio: with "
                         "compression_ratio, every part must be able to target a ratio")
    params["compression_ratio"] = ratio
    if random_state is not None and "random_state" in params and params["random_state"] is None:
        params["random_state"] = random_state
    return type(comp)(**params)


def _accepts_x(comp):
    try:
        params = inspect.signature(comp.compress).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins have signatures
        return False
    return "X" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _run(comp, A, grad, X):
    """``comp.compress(A, grad=grad)``, with ``X=X`` when given and accepted."""
    if X is not None and _accepts_x(comp):
        return comp.compress(A, grad=grad, X=X)
    return comp.compress(A, grad=grad)


_BEST = re.compile(r"the best reachable ratio is ([0-9.eE+-]+|inf)")


def _best_ratio(exc):
    """The best reachable ratio an unreachable-ratio ValueError names, or None."""
    found = _BEST.search(str(exc))
    return float(found.group(1)) if found else None


def _min_bytes(comp, shape, itemsize):
    """The fewest bytes ``comp`` can store a matrix of ``shape`` in (from the unreachable-ratio
    error of its ``solve`` at an absurd ratio), or 0 when that cannot be told."""
    m, n = shape
    solve = getattr(_with_ratio(comp, 1e300, None), "solve", None)
    if solve is None:
        return 0
    try:
        solve(shape, itemsize)
    except ValueError as exc:
        best = _best_ratio(exc)
        if best:
            return m * n * itemsize / best
    return 0


def _planned_nbytes(comp, shape, itemsize):
    """The bytes ``comp`` (targeting a ratio) will store for a matrix of ``shape`` when they
    follow from the shape alone and can be told without fitting (the built-in k-means: its
    ``solve`` and ``stored_bytes``), else None. The callers check the bytes after fitting."""
    from .compressors import KMeansCompressor

    cls = type(comp)
    if not (isinstance(comp, KMeansCompressor) and cls.solve is KMeansCompressor.solve
            and cls.stored_bytes is KMeansCompressor.stored_bytes
            and cls.compress is KMeansCompressor.compress):
        return None
    m, n = shape
    try:
        n_codes, b = comp.solve(shape, itemsize)
    except ValueError:  # the fit reports it
        return None
    return comp.stored_bytes(m, n, itemsize, n_codes, b)


def _budget_ratio(dense, nbytes):
    """The ratio that gives a part at most ``nbytes`` bytes: dense / (floor(nbytes) + 0.5), so
    that a form of exactly floor(nbytes) bytes fits whatever the rounding of dense / ratio, and
    none of one byte more does (capped just above 1, the least ratio a compressor takes)."""
    return max(dense / (math.floor(nbytes) + 0.5), 1 + 1e-9)


def _check_x(X, m):
    if X is None:
        return None
    X = check_array(X, "X")
    if X.shape[1] != m:
        raise ValueError(f"X must have shape (n_samples, {m}) (inputs of x @ A); got {X.shape}")
    return X


def _error(D, X):
    """||D||_F, or ||X @ D||_F with inputs X: what the searches minimize."""
    return float(np.linalg.norm(D if X is None else X @ D))


def _exact_correction(target, base):
    """(c, miss): c with ``base + c == target`` in the dtype (``target - base``, moved by an ulp
    where rounding misses), and where no such c exists (there c is the nearest): when
    ``target - base`` lies in a coarser binade than ``target`` the sums ``base + c`` step over
    it, and in the same binade they can all be rounding ties. When ``|target - base|`` is below
    ``|target| / 2``, a c always exists."""
    c = target - base
    for _ in range(4):
        miss = (base + c) != target
        if not miss.any():
            break
        up = (base[miss] + c[miss]) < target[miss]
        c[miss] = np.nextafter(c[miss], np.where(up, np.inf, -np.inf).astype(c.dtype))
    miss = (base + c) != target
    if miss.any():  # the nearest of the two neighbours of target - base
        t, b = target[miss], base[miss]
        near = t - b
        cands = np.stack([np.nextafter(near, -np.inf), near, np.nextafter(near, np.inf)])
        best = np.argmin(np.abs((b + cands) - t), axis=0)
        c[miss] = cands[best, np.arange(best.size)]
    return c, (base + c) != target


def _recode(q, A, pos, miss_pos):
    """``q`` with the code of each block holding an outlier that no correction can make exact
    re-chosen (a Codebook only; other forms are returned as they are): among the codes that make
    every outlier of the block exact, the one of least squared error on its other weights."""
    from .kmeans import pack_4bit

    if not isinstance(q, Codebook) or miss_pos.size == 0:
        return q
    m, n = q.shape
    b, per_row = q.block_size, q.n_cols // q.block_size
    cb = q.codebook
    codes = np.array(q.unpacked_codes(), copy=True)
    outlier = np.zeros(m * n, bool)
    outlier[pos] = True
    outlier = outlier.reshape(m, per_row, b)
    changed = False
    for blk in np.unique(miss_pos // b):
        i, jb = divmod(int(blk), per_row)
        a = A[i, jb * b:(jb + 1) * b]
        o = outlier[i, jb]
        base = np.array(cb[:, o], copy=True)
        _, miss = _exact_correction(np.broadcast_to(a[o], base.shape).copy(), base)
        ok = ~miss.any(axis=1)
        if not ok.any():
            continue
        err = ((cb[:, ~o] - a[~o]) ** 2).sum(axis=1)
        err[~ok] = np.inf
        codes[i, jb] = np.argmin(err)
        changed = True
    if not changed:
        return q
    stored = pack_4bit(codes) if q.packed else codes.astype(q.codes.dtype)
    return Codebook(stored, cb, q.n_cols, packed=q.packed)


def _csr(shape, flat_positions, values, dtype):
    """A Pruned holding ``values`` at the row-major ``flat_positions`` (any order); ``indptr`` in
    the smallest unsigned dtype holding nnz."""
    m, n = shape
    order = np.argsort(flat_positions, kind="stable")
    pos = flat_positions[order]
    rows, cols = np.divmod(pos, n)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    return Pruned(indptr.astype(index_dtype(pos.size + 1)), cols.astype(index_dtype(n)), n,
                  values=np.asarray(values, dtype)[order])


def _top(scores, k):
    """Flat positions of the ``k`` largest ``scores`` (ties: the lower position)."""
    flat = scores.reshape(-1)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int64)
    kth = flat.size - k
    threshold = np.partition(flat, kth)[kth]  # the k-th largest
    above = np.flatnonzero(flat > threshold)
    ties = np.flatnonzero(flat == threshold)[:k - above.size]
    return np.sort(np.concatenate([above, ties])).astype(np.int64)


# --- low rank + quantized residual ---------------------------------------------------------------

class LowRankResidualCompressor(MatrixCompressor):
    """A ~ U V (truncated SVD) + the residual A - U V compressed by ``residual``: a :class:`Sum`
    of a :class:`~matcompress.factors.LowRank` and the residual compressor's form.

    The low-rank part takes the few large singular directions trained layers have, which would
    stretch a quantizer's range; the quantizer takes the near-full-rank rest.

    Parameters
    ----------
    rank : int, optional
        The rank of the low-rank part. Without ``compression_ratio``, ``residual`` must then be
        a configured compressor (e.g. ``KMeansCompressor(n_codes=16)``); with it, the residual
        gets the bytes the rank leaves.
    residual : str, MatrixCompressor or dict, default=DEFAULT_QUANTIZER ("kmeans")
        The residual's compressor: a registered name, an instance, or a ``get_config()`` dict.
    compression_ratio : float, optional
        Dense bytes / stored bytes to meet. The low-rank part starts from ``rank_share`` of the
        byte budget, the residual compressor gets the rest; the bytes the residual's form leaves
        unused (its sizes come in steps) then go to further rank.
    rank_share : float in (0, 1) or sequence of them, default=None
        The share of the budget the low-rank part starts from (None:
        :data:`DEFAULT_RANK_SHARE`, 0.1). A sequence is searched: each share is fitted (shares
        that lead to the same rank once at most) and the lowest error kept.
    method : {"randomized", "svd"}, default="randomized"
        The truncated SVD (:func:`matcompress.low_rank`); one SVD at the largest rank any
        candidate needs serves every candidate.
    random_state : int or None
        Seeds the SVD and the residual compressor when that has no seed of its own.

    Notes
    -----
    The search minimizes ``||A - W||_F``, or ``||X (A - W)||_F`` when ``compress`` gets inputs
    ``X`` (also passed to a residual compressor that takes them). A residual compressor that
    cannot take a ``compression_ratio`` works with ``rank`` only.
    """

    name = "low_rank_residual"

    def __init__(self, rank=None, residual=DEFAULT_QUANTIZER, *, compression_ratio=None,
                 rank_share=None, method="randomized", random_state=None):
        self.rank = rank
        self.residual = residual
        self.compression_ratio = compression_ratio
        self.rank_share = rank_share
        self.method = method
        self.random_state = random_state

    def get_config(self):
        cfg = super().get_config()
        cfg["config"]["residual"] = _config_of(self.residual, "residual")
        return cfg

    def resolve(self, A, *, X=None):
        """This compressor with the rank chosen on A fixed: the residual then gets the bytes
        that rank leaves, so results on other matrices of A's shape have the same parts."""
        if self.compression_ratio is None or self.rank is not None:
            return self
        f = self.compress(A, X=X)
        config = dict(self.get_config()["config"], rank=int(f.parts[0].left.shape[1]),
                      rank_share=None)
        return type(self)(**config)

    def compress(self, A, *, grad=None, X=None):
        from .lowrank import low_rank

        A = _check_matrix(A)
        m, n = A.shape
        X = _check_x(X, m)
        ratio = _check_ratio(self.compression_ratio)
        residual = _as_compressor(self.residual, "residual")
        rank = None if self.rank is None else check_int(
            self.rank, "rank", min_value=1, max_value=min(m, n),
            max_reason=f"min(m, n) = {min(m, n)}")
        shares = None
        if self.rank_share is not None:
            if rank is not None:
                raise ValueError(f"{self.name}: give rank or rank_share, not both")
            given = self.rank_share
            if isinstance(given, (list, tuple)):
                if not given:
                    raise ValueError("rank_share must hold at least one share")
                shares = [check_float(v, f"rank_share[{i}]") for i, v in enumerate(given)]
            else:
                shares = [check_float(given, "rank_share")]
            for v in shares:
                if not 0 < v < 1:
                    raise ValueError(f"rank_share must lie in (0, 1); got {given}")
        if ratio is None:
            if rank is None:
                raise ValueError(f"{self.name}: give rank or compression_ratio")
            if shares is not None:
                raise ValueError(f"{self.name}: rank_share needs compression_ratio")
            lr = low_rank(A, rank, method=self.method, random_state=self.random_state)
            return Sum((lr, _run(residual, A - lr.to_dense(), grad, X)))

        isz = A.dtype.itemsize
        dense = m * n * isz
        budget = dense / ratio
        row = (m + n) * isz  # bytes per unit of rank
        res_min = _min_bytes(residual, (m, n), isz)
        if rank is not None:
            if budget - rank * row < max(res_min, 1):
                raise _unreachable(self.name, ratio, dense / (rank * row + res_min),
                                   f"rank {rank} stores {rank * row} bytes, the residual at "
                                   f"least {math.ceil(res_min)}")
            ranks, top = [rank], rank
        else:
            top = int(min(min(m, n), (budget - res_min) // row))
            if top < 1 or budget - row < max(res_min, 1):
                raise _unreachable(self.name, ratio, dense / (row + res_min),
                                   f"rank 1 stores {row} bytes, the residual at least "
                                   f"{math.ceil(res_min)}")
            shares = [DEFAULT_RANK_SHARE] if shares is None else shares
            ranks = sorted({min(top, max(1, int(s * budget // row))) for s in shares})

        def residual_for(r):
            return _with_ratio(residual, _budget_ratio(dense, budget - r * row),
                               self.random_state)

        # The residual's forms come in steps; the bytes its form leaves unused buy more rank.
        # When its bytes can be told before fitting (k-means), each start goes straight to its
        # final rank (one fit); otherwise it is fitted, then refitted at the rank the unused
        # bytes allow.
        plans = []  # (rank, whether to top up after fitting)
        for r in ranks:
            planned = None if rank is not None else _planned_nbytes(residual_for(r), (m, n), isz)
            if planned is None:
                plans.append((r, rank is None))
            else:
                plans.append((min(top, max(r, int((budget - planned) // row))), False))
        svd_rank = top if any(up for _, up in plans) else max(r for r, _ in plans)
        full = low_rank(A, svd_rank, method=self.method, random_state=self.random_state)

        def fit(r):
            lr = LowRank(full.left[:, :r], full.right[:r])
            R = A - lr.to_dense()
            try:
                res = _run(residual_for(r), R, grad, X)
            except ValueError as exc:
                reach = _best_ratio(exc)
                if reach is None:
                    raise
                raise _unreachable(self.name, ratio, dense / (row + dense / reach),
                                   f"the residual compressor: {exc}") from None
            return lr, res, _error(R - res.to_dense(), X)

        best, seen = None, set()
        for r, top_up in plans:
            if r in seen:
                continue
            seen.add(r)
            lr, res, err = fit(r)
            r2 = min(top, r + int((budget - r * row - res.nbytes) // row)) if top_up else r
            if r2 > r and r2 not in seen:
                seen.add(r2)
                lr2, res2, err2 = fit(r2)
                if err2 <= err:
                    lr, res, err = lr2, res2, err2
            if best is None or err < best[2]:
                best = (lr, res, err)
        return Sum((best[0], best[1]))


# --- outliers kept exactly -----------------------------------------------------------------------

_OUTLIER_SCORES = ("magnitude", "error")


class OutlierCompressor(MatrixCompressor):
    """A few weights kept exactly, the rest quantized (as SpQR keeps its outliers): a
    :class:`Sum` of the quantizer's form Q and a :class:`~matcompress.factors.Pruned` holding,
    at the outlier positions, the correction c with Q + c == A bit for bit (``to_dense`` gives
    A's own values there).

    The quantizer is fitted on the matrix with the outliers set to 0 (where trained weights
    concentrate), so they do not stretch its codebook. At some outliers no float c gives
    Q + c == A exactly (A - Q needs more precision than the dtype has, or every candidate sum
    is a rounding tie: 15 % of the outliers of a 128 x 96 test matrix at 8x, Q coding blocks
    of 2): a codebook's block there takes, of the codes that allow it, the one of least error
    on the block's other weights; where that fails (other quantizers), a third part holds
    A - (Q + c), exact as Q + c is within an ulp of A. Its bytes come out of the outliers of
    least error.

    Parameters
    ----------
    outlier_fraction : float in [0, 1), default=0.01
        The fraction of the weights kept exactly.
    quantizer : str, MatrixCompressor or dict, default=DEFAULT_QUANTIZER ("kmeans")
        A registered name, an instance, or a ``get_config()`` dict. Without
        ``compression_ratio`` it must be configured (e.g. ``KMeansCompressor(n_codes=16)``).
    compression_ratio : float, optional
        Dense bytes / stored bytes to meet: the quantizer gets the budget less the outliers'
        bytes (CSR: ``(m + 1) * offset bytes + nnz * (index bytes + itemsize)``, the offsets
        and column indices in the smallest unsigned dtypes holding nnz and n - 1).
    scores : {"magnitude", "error"}, default="magnitude"
        Which weights are outliers: the largest ``|A|``; or, after a first fit with those set
        aside, the largest errors ``|A - Q|`` of that fit (the quantizer is then refitted
        without them: two fits).
    fill : bool, default=True
        With ``compression_ratio``: the bytes the quantizer's form leaves unused (its sizes come
        in steps) hold further outliers, the weights of largest error ``|A - Q|``, so more than
        ``outlier_fraction`` can be kept.
    random_state : int or None
        Seeds the quantizer when it has no seed of its own.
    """

    name = "outliers"

    def __init__(self, outlier_fraction=0.01, quantizer=DEFAULT_QUANTIZER, *,
                 compression_ratio=None, scores="magnitude", fill=True, random_state=None):
        self.outlier_fraction = outlier_fraction
        self.quantizer = quantizer
        self.compression_ratio = compression_ratio
        self.scores = scores
        self.fill = fill
        self.random_state = random_state

    def get_config(self):
        cfg = super().get_config()
        cfg["config"]["quantizer"] = _config_of(self.quantizer, "quantizer")
        return cfg

    @staticmethod
    def stored_bytes(m, n, itemsize, nnz):
        """Bytes of a CSR part of ``nnz`` outliers (row offsets in the smallest unsigned dtype
        holding nnz, column indices in the smallest holding n - 1)."""
        return (m + 1) * index_dtype(nnz + 1).itemsize + nnz * (index_dtype(n).itemsize + itemsize)

    @classmethod
    def _most_nnz(cls, m, n, itemsize, room):
        """The most outliers whose CSR part fits in ``room`` bytes (-1 when none does)."""
        per = index_dtype(n).itemsize + itemsize
        best = -1
        for w, cap in ((1, 2**8 - 1), (2, 2**16 - 1), (4, 2**32 - 1)):
            nnz = min(int((room - (m + 1) * w) // per), cap, m * n - 1)
            if nnz >= 0 and cls.stored_bytes(m, n, itemsize, nnz) <= room:
                best = max(best, nnz)
        return best

    def compress(self, A, *, grad=None, X=None):
        A = _check_matrix(A)
        m, n = A.shape
        X = _check_x(X, m)
        frac = check_float(self.outlier_fraction, "outlier_fraction", min_value=0.0)
        if not frac < 1:
            raise ValueError(f"outlier_fraction must lie in [0, 1); got {frac}")
        if self.scores not in _OUTLIER_SCORES:
            raise ValueError(f"scores must be one of {_OUTLIER_SCORES}; got {self.scores!r}")
        if not isinstance(self.fill, (bool, np.bool_)):
            raise TypeError(f"fill must be True or False; got {self.fill!r}")
        ratio = _check_ratio(self.compression_ratio)
        quantizer = _as_compressor(self.quantizer, "quantizer")
        isz = A.dtype.itemsize
        dense = m * n * isz
        k = int(round(frac * m * n))
        sparse = self.stored_bytes(m, n, isz, k)
        if ratio is not None:
            budget = dense / ratio
            q_min = _min_bytes(quantizer, (m, n), isz)
            if budget - sparse < max(q_min, 1):
                raise _unreachable(self.name, ratio, dense / (sparse + q_min),
                                   f"{k} outliers take {sparse} bytes, the quantizer at least "
                                   f"{math.ceil(q_min)}")
            quantizer = _with_ratio(quantizer, _budget_ratio(dense, budget - sparse),
                                    self.random_state)
            planned = _planned_nbytes(quantizer, (m, n), isz)
            if self.fill and planned is not None:
                # The quantizer's form is known before fitting: the bytes it leaves unused hold
                # further outliers, chosen with the first ones (and kept out of its fit).
                k = max(k, self._most_nnz(m, n, isz, budget - planned))
                sparse = self.stored_bytes(m, n, isz, k)
                quantizer = _with_ratio(quantizer, _budget_ratio(dense, budget - sparse),
                                        self.random_state)

        def quantize(pos):
            inner = A.copy()
            inner.reshape(-1)[pos] = 0
            try:
                return _run(quantizer, inner, grad, X)
            except ValueError as exc:
                best = _best_ratio(exc)
                if best is None or ratio is None:
                    raise
                raise _unreachable(self.name, ratio, dense / (sparse + dense / best),
                                   f"the quantizer: {exc}") from None

        pos = _top(np.abs(A), k)
        q = quantize(pos)
        if self.scores == "error" and k:
            err = np.abs(A - q.to_dense())
            pos = _top(err, k)
            q = quantize(pos)
        Q = q.to_dense()
        if ratio is not None and self.fill:
            extra = self._most_nnz(m, n, isz, dense / ratio - q.nbytes) - pos.size
            if extra > 0:
                err = np.abs(A - Q).reshape(-1)
                err[pos] = -1  # already kept
                pos = np.union1d(pos, _top(err, min(extra, m * n - pos.size)))
        flat_a, flat_q = A.reshape(-1)[pos], Q.reshape(-1)[pos]
        corr, miss = _exact_correction(flat_a, flat_q)
        if miss.any():
            # No float c gives Q + c == A at some outliers (see _exact_correction): a
            # codebook's blocks there take another code that allows it.
            q = _recode(q, A, pos, pos[miss])
            flat_q = q.to_dense().reshape(-1)[pos]
            corr, miss = _exact_correction(flat_a, flat_q)
        if not miss.any():
            return Sum((q, _csr((m, n), pos, corr, A.dtype)))
        # Left (no such code, or another form): a third part holds the rest, exactly: Q + c is
        # within an ulp of A, so A - (Q + c) is exact (Sterbenz). Its bytes come out of the
        # outliers of least error.
        fix = flat_a[miss] - (flat_q[miss] + corr[miss])
        if ratio is not None:
            per = index_dtype(n).itemsize + isz
            fix_bytes = self.stored_bytes(m, n, isz, int(miss.sum()))
            over = q.nbytes + self.stored_bytes(m, n, isz, pos.size) + fix_bytes - dense / ratio
            if over > 0:
                drop = min(int(math.ceil(over / per)), int((~miss).sum()))
                gain = np.abs(flat_a - flat_q)
                gain[miss] = np.inf
                keep = np.sort(np.argsort(gain, kind="stable")[drop:])
                pos, corr, miss = pos[keep], corr[keep], miss[keep]
        main = _csr((m, n), pos, corr, A.dtype)
        return Sum((q, main, _csr((m, n), pos[miss], fix, A.dtype)))


# --- pruning then k-means ------------------------------------------------------------------------

class PruneQuantizeCompressor(MatrixCompressor):
    """Pruning, then scalar k-means on the kept values (Deep Compression): a
    :class:`~matcompress.factors.Pruned` with codes, as ``PruningCompressor(n_codes=...)``, with
    the sparsity and the codebook size searched for a ratio.

    Parameters
    ----------
    sparsity : float in [0, 1), optional
    n_codes : int, optional
        Without ``compression_ratio``: both given, as ``PruningCompressor(sparsity,
        n_codes=n_codes)``.
    compression_ratio : float, optional
        Dense bytes / stored bytes to meet. For each codebook size ``2**b``, ``b`` in ``bits``,
        the lowest sparsity that fits the budget (codes take 1 byte each up to 256 codes, so
        the sizes differ only in their codebook's bytes); a size that keeps no more weights
        than a larger one is skipped; the others are fitted and the lowest ``||A - W||_F``
        (``||X (A - W)||_F`` with inputs ``X``) kept.
    bits : tuple of int, default=(2, 3, 4, 5, 6, 7, 8)
        The code widths searched.
    scores : {"magnitude", "taylor"}, default="magnitude"
        As :class:`~matcompress.compressors.PruningCompressor`.
    random_state, n_threads
        For the quantization and the selection.
    """

    name = "prune_kmeans"

    def __init__(self, sparsity=None, n_codes=None, *, compression_ratio=None,
                 bits=(2, 3, 4, 5, 6, 7, 8), scores="magnitude", random_state=None,
                 n_threads=None):
        self.sparsity = sparsity
        self.n_codes = n_codes
        self.compression_ratio = compression_ratio
        self.bits = bits
        self.scores = scores
        self.random_state = random_state
        self.n_threads = n_threads

    def _pruner(self, **params):
        return PruningCompressor(scores=self.scores, random_state=self.random_state,
                                 n_threads=self.n_threads, **params)

    def resolve(self, A, *, X=None):
        """This compressor with the code width chosen on A fixed (``bits=(b,)``): its sparsity
        then follows from the shape, so results on other matrices of A's shape have the same
        parts."""
        if self.compression_ratio is None:
            return self
        f = self.compress(A, X=X)
        b = max(1, (int(f.codebook.shape[0]) - 1).bit_length())
        return type(self)(**{**self.get_config()["config"], "bits": [b]})

    def compress(self, A, *, grad=None, X=None):
        A = _check_matrix(A)
        m, n = A.shape
        X = _check_x(X, m)
        ratio = _check_ratio(self.compression_ratio)
        if ratio is None:
            if self.sparsity is None or self.n_codes is None:
                raise ValueError(f"{self.name}: give sparsity and n_codes, or compression_ratio")
            return self._pruner(sparsity=self.sparsity, n_codes=self.n_codes).compress(
                A, grad=grad)
        if self.sparsity is not None or self.n_codes is not None:
            raise ValueError(f"{self.name}: give either sparsity and n_codes or "
                             "compression_ratio, not both")
        if isinstance(self.bits, (str, bytes)) or not hasattr(self.bits, "__iter__"):
            raise TypeError(f"bits must be a sequence of integers; got {self.bits!r}")
        bits = sorted({check_int(b, "bits", min_value=1, max_value=16) for b in self.bits})
        if not bits:
            raise ValueError("bits must hold at least one code width")
        plans, best_reach = [], 0.0
        for b in bits:
            pruner = self._pruner(compression_ratio=ratio, n_codes=1 << b)
            try:
                s = pruner.solve(A.shape, A.dtype.itemsize)
            except ValueError as exc:
                best_reach = max(best_reach, _best_ratio(exc) or 0.0)
                continue
            plans.append((s, b, pruner))
        if not plans:
            raise _unreachable(self.name, ratio, best_reach,
                               "the row offsets and the smallest codebook fill the budget")
        # keep (sparsity, bits) unless a wider codebook keeps as many weights
        plans = [p for p in plans if not any(q[1] > p[1] and q[0] <= p[0] for q in plans)]
        best = None
        for _, _, pruner in plans:
            f = pruner.compress(A, grad=grad)
            err = _error(A - f.to_dense(), X)
            if best is None or err < best[1]:
                best = (f, err)
        return best[0]


# --- a chain of compressors ----------------------------------------------------------------------

class CompositeCompressor(MatrixCompressor):
    """The first compressor fitted to A, the next to the residual, and so on: a :class:`Sum`.

    Parameters
    ----------
    compressors : sequence of str, MatrixCompressor or dict
        Two or more: registered names, instances, or ``get_config()`` dicts. ``get_config``
        gives names as names and the rest as their config dicts (JSON-friendly), which
        ``from_config`` reads back.
    shares : sequence of float, optional
        With ``compression_ratio``: the share of the byte budget of each compressor (positive,
        summing to 1); default equal shares. Each part targets its share plus the bytes the
        parts before it left unused.
    compression_ratio : float, optional
        Dense bytes / stored bytes to meet. Without it every compressor must be configured.
    random_state : int or None
        Seeds each compressor that has no seed of its own (with ``compression_ratio``).
    """

    name = "composite"

    def __init__(self, compressors=(), shares=None, *, compression_ratio=None,
                 random_state=None):
        self.compressors = compressors
        self.shares = shares
        self.compression_ratio = compression_ratio
        self.random_state = random_state

    def _compressors(self):
        specs = self.compressors
        if isinstance(specs, (str, dict, MatrixCompressor)) or not isinstance(specs,
                                                                                (list, tuple)):
            raise TypeError("compressors must be a list of compressor names, MatrixCompressor "
                            f"objects or get_config() dicts; got {type(specs).__name__}")
        if len(specs) < 2:
            raise ValueError(f"compressors must hold at least 2 compressors; got {len(specs)}")
        return [_as_compressor(c, f"compressors[{i}]") for i, c in enumerate(specs)]

    def _shares(self, k):
        if self.shares is None:
            return [1 / k] * k
        if isinstance(self.shares, (str, bytes)) or not hasattr(self.shares, "__len__"):
            raise TypeError(f"shares must be a sequence of {k} numbers; got {self.shares!r}")
        if len(self.shares) != k:
            raise ValueError(f"shares must hold one share per compressor ({k}); got "
                             f"{len(self.shares)}")
        shares = [check_float(s, f"shares[{i}]") for i, s in enumerate(self.shares)]
        if any(s <= 0 for s in shares):
            raise ValueError(f"shares must be positive; got {list(self.shares)}")
        if abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"shares must sum to 1; got {list(self.shares)} (sum "
                             f"{sum(shares):.6g})")
        return shares

    def get_config(self):
        cfg = super().get_config()
        comps = self.compressors
        if isinstance(comps, (list, tuple)):
            cfg["config"]["compressors"] = [_config_of(c, f"compressors[{i}]")
                                            for i, c in enumerate(comps)]
        return cfg

    def compress(self, A, *, grad=None, X=None):
        A = _check_matrix(A)
        m, n = A.shape
        X = _check_x(X, m)
        comps = self._compressors()
        ratio = _check_ratio(self.compression_ratio)
        if ratio is None and self.shares is not None:
            raise ValueError(f"{self.name}: shares split the budget of compression_ratio; give "
                             "compression_ratio with them")
        shares = self._shares(len(comps))
        isz = A.dtype.itemsize
        dense = m * n * isz
        if ratio is not None:
            budget = dense / ratio
            need = [_min_bytes(c, (m, n), isz) for c in comps]
            worst = max(b / s for b, s in zip(need, shares))
            if worst > budget:
                raise _unreachable(self.name, ratio, dense / worst,
                                   f"with shares {[round(s, 6) for s in shares]}, the parts need "
                                   f"at least {[math.ceil(b) for b in need]} bytes")
        parts, R, carry = [], A, 0.0
        for i, (comp, share) in enumerate(zip(comps, shares)):
            if ratio is not None:
                mine = share * budget + carry
                comp = _with_ratio(comp, _budget_ratio(dense, mine), self.random_state)
            try:
                f = _run(comp, R, grad, X)
            except ValueError as exc:
                if ratio is None or _best_ratio(exc) is None:
                    raise
                raise _unreachable(self.name, ratio, dense / worst,
                                   f"compressors[{i}]: {exc}") from None
            if ratio is not None:
                carry = max(0.0, mine - f.nbytes)
            parts.append(f)
            if i + 1 < len(comps):
                R = R - f.to_dense()
        return Sum(tuple(parts))
