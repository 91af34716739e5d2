"""Choosing the compression method per matrix: ``method="auto"`` and :func:`compress_many`.

:class:`AutoCompressor` (registered as ``"auto"``, so ``mc.compress(W, "auto",
compression_ratio=8)``) tries a list of candidate compressors at one compression ratio and keeps
the one with the lowest error:

1. every candidate is checked against the full matrix's shape (a candidate whose ratio is
   unreachable for it is skipped) and fitted to a random sample of ``sample_rows`` rows, where
   its error is measured (the search then costs a small multiple of one fit);
2. the ``refit_top`` candidates with the lowest sample error are fitted to the whole matrix and
   the lowest FULL error wins, so the result never loses to the best candidate it refitted. When
   the sample is the whole matrix the sample fits are the final ones and every candidate
   competes on its full error.

The error is the relative Frobenius error ``||W - What||_F / ||W||_F`` or, with calibration
inputs X (the layer computes ``X @ W``), the relative output error
``||X (W - What)||_F / ||X W||_F``. With X of 8 rows or more, the candidates that use X fit to
three quarters of its rows and every candidate is scored on the quarter held out (every 4th
row): data-aware fits such as GPTQ codes can fit the noise of the calibration rows, and judged on
them they look better than they are (on a synthetic layer with 2 calibration rows per input,
scaled 4-bit GPTQ codes won on the calibration rows and lost by 25 % on new ones).

:func:`compress_many` spreads one byte budget over many matrices (the layers of a model): a matrix
that compresses well gives bytes to one that does not. See its Notes for the algorithm.
"""

from __future__ import annotations

import inspect
import math
import re
import time

import numpy as np

from ._validation import check_array, check_int
from .compressors import _REGISTRY, MatrixCompressor, _check_ratio, _round_down, _sample_rows
from .factors import Factorization

__all__ = ["AutoCompressor", "compress_many", "default_candidates", "OPTIONAL_METHODS",
           "DEFAULT_LADDER"]

#: Methods added to the default candidates when they are registered (each takes
#: ``compression_ratio``): per-channel scaled codebooks, additive vector codebooks and the
#: composite methods.
OPTIONAL_METHODS = ("scaled_kmeans", "additive", "low_rank_residual", "outliers", "prune_kmeans")

#: Rungs of :func:`compress_many`'s ladder, as multiples of the target ratio (R / 4 ... 4 R).
DEFAULT_LADDER = tuple(2.0 ** (k / 2) for k in range(-4, 5))

# The parameters each built-in's ``solve`` fixes (two candidates that solve to the same values
# and agree on everything else are one candidate).
_SOLVED = {"low_rank": ("rank",), "kmeans": ("n_codes", "block_size"),
           "dictionary": ("n_atoms", "n_nonzero_coefs"), "simhash": ("n_bits",),
           "pruning": ("sparsity",), "additive": ("n_codebooks", "n_codes", "block_size")}

_REACHABLE = re.compile(r"best reachable ratio is ([0-9.eE+-]+)")


def default_candidates():
    """The candidates :class:`AutoCompressor` tries when none are given, as a list of
    ``(method name, params)`` (each gets ``compression_ratio``, ``random_state`` and
    ``n_threads`` added):

    - ``("kmeans", {})``: the k-means configuration the solver picks (most code bits per weight),
      and ``("kmeans", {"block_size": b})`` for b = 2, 4, 8 (vector codes: at 4x on float32
      8-bit codes on pairs beat the solver's 4-bit scalar codes);
    - ``("low_rank", {})``, ``("dictionary", {})``, ``("simhash", {})``;
    - ``("pruning", {})`` (magnitude) and ``("pruning", {"n_codes": 256})`` (pruning, then
      the kept values quantized to 8-bit codes);
    - each of :data:`OPTIONAL_METHODS` that is registered when this is called.

    The list is a fresh copy: edit it and pass it as ``candidates``.
    """
    cands = [("kmeans", {})] + [("kmeans", {"block_size": b}) for b in (2, 4, 8)]
    cands += [("low_rank", {}), ("pruning", {}), ("pruning", {"n_codes": 256}),
              ("dictionary", {}), ("simhash", {})]
    cands += [(name, {}) for name in OPTIONAL_METHODS if name in _REGISTRY]
    return cands


def _accepts(func, name):
    params = inspect.signature(func).parameters
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _uses_inputs(compressor):
    """Whether ``compressor.compress`` takes calibration inputs ``X``."""
    if getattr(compressor, "uses_inputs", False):
        return True
    try:
        return "X" in inspect.signature(compressor.compress).parameters
    except (TypeError, ValueError):
        return False


def _check_candidates(candidates):
    """The candidate list as given (a list of (name, params) pairs or compressor instances),
    checked; names resolved now, so an unknown name fails before any fit."""
    if candidates is None:
        return default_candidates()
    if isinstance(candidates, (str, MatrixCompressor)) or not hasattr(candidates, "__iter__"):
        raise TypeError("candidates must be a list of (method name, params) pairs or "
                        f"MatrixCompressor instances; got {candidates!r}")
    out = []
    for c in candidates:
        if isinstance(c, MatrixCompressor):
            if isinstance(c, AutoCompressor):
                raise ValueError("candidates: an AutoCompressor cannot be a candidate")
            out.append(c)
            continue
        if isinstance(c, dict) and "config" in c:  # a compressor's get_config()
            c = MatrixCompressor.from_config(c)
            if isinstance(c, AutoCompressor):
                raise ValueError("candidates: an AutoCompressor cannot be a candidate")
            out.append(c)
            continue
        if isinstance(c, str):
            name, params = c, {}
        else:
            try:
                name, params = c
            except (TypeError, ValueError):
                raise TypeError("each candidate must be a method name, a (method name, params) "
                                f"pair or a MatrixCompressor; got {c!r}") from None
        if not isinstance(name, str) or name not in _REGISTRY:
            raise ValueError(f"candidates: unknown compression method {name!r}; known: "
                             f"{sorted(_REGISTRY)}")
        if name == "auto":
            raise ValueError("candidates: 'auto' cannot be its own candidate")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise TypeError(f"candidates: the params of {name!r} must be a dict; got {params!r}")
        out.append((name, dict(params)))
    if not out:
        raise ValueError("candidates is empty: give at least one candidate")
    return out


def _build(spec, ratio, seed, n_threads):
    """(method name, params shown, compressor) for one candidate at ``ratio``."""
    if isinstance(spec, MatrixCompressor):
        config = spec.get_config()
        return config["name"], config["config"], spec
    name, params = spec
    cls = _REGISTRY[name]
    full = dict(params)
    full.setdefault("compression_ratio", ratio)
    for key, value in (("random_state", seed), ("n_threads", n_threads)):
        if key not in full and _accepts(cls.__init__, key):
            full[key] = value
    try:
        compressor = cls(**full)
    except TypeError as exc:
        raise ValueError(f"candidates: bad params for {name!r}: {exc}") from None
    return name, params, compressor


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _squared_error(A, f, X, XA, chunk=None):
    """||A - What||_F^2, or ||X A - X What||_F^2 with X, in float64 (W decoded a block of rows
    at a time)."""
    if X is not None:
        d = np.asarray(f.matmul(X), np.float64) - XA
        return float(np.einsum("ij,ij->", d, d))
    m, n = A.shape
    step = chunk or max(1, (1 << 20) // max(1, n))
    total = 0.0
    for start in range(0, m, step):
        stop = min(m, start + step)
        d = np.asarray(A[start:stop], np.float64) - f.dense_rows(start, stop)
        total += float(np.einsum("ij,ij->", d, d))
    return total


class _Matrix:
    """One matrix's search state: its row sample and reference norms."""

    def __init__(self, A, X, grad, sample_rows, random_state, n_threads):
        self.A, self.X, self.grad, self.n_threads = A, X, grad, n_threads
        m = A.shape[0]
        rng = np.random.default_rng(random_state)
        self.whole = sample_rows is None or sample_rows >= m
        self.rows = np.arange(m) if self.whole else _sample_rows(m, sample_rows, rng)
        # Every candidate gets the same seed (an int given stays that int, so a candidate's
        # result is what the method gives alone with that random_state).
        if random_state is None or isinstance(random_state, (int, np.integer)):
            self.seed = random_state
        else:
            self.seed = int(rng.integers(2**31 - 1))
        self.As = A if self.whole else np.ascontiguousarray(A[self.rows])
        # With X, the candidates fit to three quarters of its rows and are scored on the
        # quarter held out: data-aware fits (GPTQ codes above all) can fit the noise of the
        # calibration rows, and scored on them they would look better than they are.
        self.X, self.Xe = X, X
        if X is not None and X.shape[0] >= 8:
            held = np.arange(3, X.shape[0], 4)
            self.X = np.ascontiguousarray(np.delete(X, held, axis=0))
            self.Xe = np.ascontiguousarray(X[held])
        X = self.X
        self.Xs = None if X is None else \
            (X if self.whole else np.ascontiguousarray(X[:, self.rows]))
        self.Xes = None if X is None else \
            (self.Xe if self.whole else np.ascontiguousarray(self.Xe[:, self.rows]))
        self.gs = None if grad is None else (grad if self.whole else grad[self.rows])
        self.XA = None if X is None else \
            np.asarray(self.Xe, np.float64) @ np.asarray(A, np.float64)
        self.XAs = self.XA if self.whole or X is None else \
            np.asarray(self.Xes, np.float64) @ np.asarray(self.As, np.float64)
        self.ref = self._norm2(A, self.XA)
        self.ref_s = self.ref if self.whole else self._norm2(self.As, self.XAs)
        self._screens = {}
        # Fits by configuration: k-means solves to the same codes and blocks at several ratios
        # (compress_many's rungs), and one fit then serves them all.
        self._sample_fits, self._full_fits = {}, {}

    def score_name(self):
        if self.X is None:
            return "relative Frobenius error"
        if self.Xe is not self.X:
            return "relative output error on the held-out calibration rows (every 4th row of X)"
        return "relative output error"

    @staticmethod
    def _norm2(A, XA):
        v = XA if XA is not None else np.asarray(A, np.float64)
        return float(np.einsum("ij,ij->", v, v))

    @staticmethod
    def relative(sq, ref):
        return math.sqrt(sq / ref) if ref > 0 else math.sqrt(sq)

    def _fit(self, compressor, A, X, grad):
        kwargs = {}
        if grad is not None:
            kwargs["grad"] = grad
        if X is not None and _uses_inputs(compressor):
            kwargs["X"] = X
        t = time.perf_counter()
        f = compressor.compress(A, **kwargs)
        return f, time.perf_counter() - t

    def screen(self, ratio, specs):
        """Every candidate at ``ratio`` fitted to the sample (cached per ratio): a list of
        entries, skipped ones included (with the reason)."""
        key = float(ratio)
        if key in self._screens:
            return self._screens[key]
        A = self.A
        entries, seen = [], set()
        for spec in specs:
            name, params, c = _build(spec, ratio, self.seed, self.n_threads)
            entry = {"method": name, "params": _jsonable(params), "compressor": c,
                     "sample_error": None, "nbytes": None, "compression_ratio": None,
                     "fit_time": None, "skipped": None}
            entries.append(entry)
            # The built-ins' ``solve(shape, itemsize)`` says, without a fit, whether the ratio is
            # reachable for the whole matrix's shape (the sample's shape may differ in that).
            solve = getattr(c, "solve", None)
            solved = dedupe = None
            if callable(solve) and list(inspect.signature(solve).parameters)[:2] == \
                    ["shape", "itemsize"]:
                try:
                    solved = solve(A.shape, A.dtype.itemsize)
                except ValueError as exc:
                    entry["skipped"] = str(exc)
                    continue
            if solved is not None:
                config = {k: v for k, v in c.get_config()["config"].items()
                          if k not in ("compression_ratio",) + _SOLVED.get(c.name, ())}
                dedupe = (type(c).__name__, repr(solved), repr(sorted(config.items())))
                if dedupe in seen:
                    entry["skipped"] = "the same configuration as an earlier candidate"
                    continue
                seen.add(dedupe)
            entry["_key"] = dedupe
            skey = None
            if dedupe is not None:
                try:  # the sample's own configuration (its shape may solve differently)
                    skey = (dedupe, repr(solve(self.As.shape, A.dtype.itemsize)))
                except ValueError:
                    skey = None
            if skey is not None and skey in self._sample_fits:
                f, dt, sq = self._sample_fits[skey]
            else:
                try:
                    f, dt = self._fit(c, self.As, self.Xs, self.gs)
                except ValueError as exc:
                    entry["skipped"] = str(exc)
                    continue
                sq = _squared_error(self.As, f, self.Xes, self.XAs)
                if skey is not None:
                    self._sample_fits[skey] = (f, dt, sq)
            entry.update(sample_error=self.relative(sq, self.ref_s), nbytes=int(f.nbytes),
                         compression_ratio=float(f.compression_ratio), fit_time=dt)
            entry["_sq"] = sq
            if self.whole:
                entry["_fit"] = f
        self._screens[key] = entries
        return entries

    def ranked(self, entries):
        return sorted((e for e in entries if e["skipped"] is None),
                      key=lambda e: (not math.isfinite(e["sample_error"]), e["sample_error"]))

    def estimate(self, entries, ratio):
        """(estimated full squared error, estimated full bytes, best entry) at ``ratio`` from
        the sample, or None when no candidate fits."""
        ranked = self.ranked(entries)
        if not ranked:
            return None
        best = ranked[0]
        m = self.A.shape[0]
        dense = self.A.nbytes
        sq = best["_sq"] * (m / self.rows.size)
        nbytes = min(dense / ratio, dense / best["compression_ratio"])
        return sq, nbytes, best

    def refit(self, entries, ratio, refit_top):
        """(factorization, refit records, chosen entry): the ``refit_top`` best candidates by
        sample error fitted to the whole matrix (more when one misses the ratio), lowest full
        error wins; ValueError when none meets the ratio."""
        A = self.A
        dense = A.nbytes
        ranked = self.ranked(entries)
        records, best = [], None
        for e in ranked:
            if best is not None and len(records) >= refit_top and not self.whole:
                break
            if self.whole:
                f, dt = e["_fit"], e["fit_time"]
                sq = e["_sq"]
            elif e.get("_key") is not None and e["_key"] in self._full_fits:
                f, dt, sq = self._full_fits[e["_key"]]
            else:
                f, dt = self._fit(e["compressor"], A, self.X, self.grad)
                sq = _squared_error(A, f, self.Xe, self.XA)
                if e.get("_key") is not None:
                    self._full_fits[e["_key"]] = (f, dt, sq)
            meets = f.nbytes <= dense / ratio and f.compression_ratio >= ratio
            rec = {"method": e["method"], "params": e["params"],
                   "error": self.relative(sq, self.ref), "nbytes": int(f.nbytes),
                   "compression_ratio": float(f.compression_ratio), "fit_time": dt,
                   "meets_ratio": bool(meets)}
            e["full_error"] = rec["error"]
            records.append(rec)
            if meets and (best is None or sq < best[1]):
                best = (f, sq, e)
        if best is None:
            self._unreachable(entries, records, ratio)
        return best[0], records, best[2], best[1]

    def _unreachable(self, entries, records, ratio):
        reach = []
        for e in entries:
            if e["skipped"]:
                hit = _REACHABLE.search(e["skipped"])
                if hit:
                    reach.append((float(hit.group(1)), e["method"]))
        for r in records:
            reach.append((r["compression_ratio"], r["method"]))
        m, n = self.A.shape
        detail = ""
        if reach:
            best = max(reach)
            detail = (f"; the best reachable ratio among the candidates is "
                      f"{_round_down(best[0]):g} ({best[1]})")
        raise ValueError(f"auto: compression_ratio={ratio:g} is unreachable for this {m} x {n} "
                         f"{self.A.dtype} matrix by every candidate{detail}")


def _public(entries):
    keys = ("method", "params", "sample_error", "nbytes", "compression_ratio", "fit_time",
            "skipped")
    out = []
    for e in entries:
        d = {k: e[k] for k in keys}
        d["full_error"] = e.get("full_error")
        out.append(d)
    return out


def _check_inputs(X, m, name="X"):
    if X is None:
        return None
    X = check_array(X, name)
    if X.shape[1] != m:
        raise ValueError(f"{name} must have shape (n_samples, {m}) (the layer computes X @ W, "
                         f"W has {m} rows); got {X.shape}")
    return X


def _check_sample_rows(sample_rows):
    if sample_rows is None:
        return None
    return check_int(sample_rows, "sample_rows", min_value=1)


class AutoCompressor(MatrixCompressor):
    """The candidate compressor with the lowest error at a compression ratio.

    Each candidate is fitted to a random sample of ``sample_rows`` rows at ``compression_ratio``
    and scored there; the ``refit_top`` best are fitted to the whole matrix and the lowest full
    error wins (see the module docstring). The result's ``info`` holds the chosen method and
    params, every candidate's sample error, bytes, ratio and fit time (or why it was skipped)
    and the refitted candidates' full errors.

    Parameters
    ----------
    compression_ratio : float
        Required: the result stores at most dense bytes / ``compression_ratio``.
    candidates : list, optional
        ``(method name, params)`` pairs (a registered name, e.g. ``("kmeans", {"block_size":
        4})``) or :class:`MatrixCompressor` instances (used as they are). A pair's params get
        ``compression_ratio`` (unless they set it: ``compression_ratio=None`` means the params
        fix the size, and the result must still meet the ratio), ``random_state`` and
        ``n_threads`` when the method takes them. Default: :func:`default_candidates`.
    sample_rows : int or None, default=256
        Rows the candidates are scored on (None: the whole matrix). Matrices with at most this
        many rows are scored whole, and then no candidate is refitted.
    refit_top : int, default=2
        Candidates refitted to the whole matrix (more when one of them misses the ratio).
    random_state : int, Generator or None
        Draws the sample rows; an int is also every candidate's ``random_state``.
    n_threads : int or None
        Passed to the candidates.

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> W = np.random.default_rng(0).standard_t(3, (128, 64)).astype(np.float32)
    >>> f = mc.compress(W, "auto", compression_ratio=8, random_state=0,
    ...                 candidates=[("kmeans", {}), ("low_rank", {}), ("pruning", {})])
    >>> f.compression_ratio >= 8, f.info["method"]
    (True, 'kmeans')
    """

    name = "auto"
    uses_inputs = True

    def __init__(self, compression_ratio=None, *, candidates=None, sample_rows=256, refit_top=2,
                 random_state=None, n_threads=None):
        self.compression_ratio = compression_ratio
        self.candidates = candidates
        self.sample_rows = sample_rows
        self.refit_top = refit_top
        self.random_state = random_state
        self.n_threads = n_threads

    def get_config(self):
        """As :meth:`MatrixCompressor.get_config`; ``candidates`` as JSON-friendly lists
        (``[name, params]``, or a compressor instance's own ``get_config()``)."""
        config = super().get_config()
        if self.candidates is not None and not isinstance(self.candidates, (str, dict)):
            config["config"]["candidates"] = [
                c.get_config() if isinstance(c, MatrixCompressor)
                else ([c[0], dict(c[1] or {})] if isinstance(c, (tuple, list)) and len(c) == 2
                      else c)
                for c in self.candidates]
        return config

    def _ratio(self):
        if self.compression_ratio is None:
            raise ValueError("auto: compression_ratio is required (the method is chosen for a "
                             "target ratio)")
        return _check_ratio(self.compression_ratio)

    def resolve(self, A, *, X=None):
        """The candidate chosen for A, as a compressor (itself resolved on A): its results on
        other matrices of A's shape have the chosen form's parts."""
        f = self.compress(A, X=X)
        chosen = MatrixCompressor.from_config(f.info["compressor"])
        return chosen.resolve(A)

    def compress(self, A, *, grad=None, X=None) -> Factorization:
        """The best candidate's factorization of A (m x n), its ``info`` filled in.

        Parameters
        ----------
        A : ndarray of shape (m, n)
        grad : ndarray of shape (m, n), optional
            Passed (sampled with the rows) to every candidate.
        X : ndarray of shape (n_samples, m), optional
            Calibration inputs of the layer ``X @ A``: the error scored becomes the relative
            output error, and X goes to the candidates that use it.
        """
        t0 = time.perf_counter()
        ratio = self._ratio()
        A = check_array(A, "A")
        specs = _check_candidates(self.candidates)
        sample_rows = _check_sample_rows(self.sample_rows)
        refit_top = check_int(self.refit_top, "refit_top", min_value=1)
        X = _check_inputs(X, A.shape[0])
        if grad is not None:
            grad = check_array(grad, "grad")
            if grad.shape != A.shape:
                raise ValueError(f"grad must have the shape of A, {A.shape}; got {grad.shape}")
        mat = _Matrix(A, X, grad, sample_rows, self.random_state, self.n_threads)
        entries = mat.screen(ratio, specs)
        f, records, chosen, sq = mat.refit(entries, ratio, refit_top)
        assert f.compression_ratio >= ratio, (f.compression_ratio, ratio)
        info = {
            "method": chosen["method"],
            "params": chosen["params"],
            "compressor": _jsonable(chosen["compressor"].get_config()),
            "error": mat.relative(sq, mat.ref),
            "score": mat.score_name(),
            "compression_ratio_target": ratio,
            "sample_rows": int(mat.rows.size),
            "candidates": _public(entries),
            "refit": records,
            "time": time.perf_counter() - t0,
        }
        f._set_info(info)
        return f


def _as_items(value, what):
    if isinstance(value, dict):
        return list(value.items()), True
    if isinstance(value, (list, tuple)):
        return list(enumerate(value)), False
    raise TypeError(f"{what} must be a dict name -> 2-D array, or a list of 2-D arrays; got "
                    f"{type(value).__name__}")


def compress_many(weights, compression_ratio=None, *, candidates=None, X=None, ladder=None,
                  sample_rows=256, refit_top=2, random_state=None, n_threads=None):
    """Compress many matrices under ONE byte budget: total stored bytes <= total dense bytes /
    ``compression_ratio``, the bytes going where they reduce the error most.

    Parameters
    ----------
    weights : dict of name -> ndarray of shape (m_i, n_i), or a list of them
    compression_ratio : float
        Required: the ratio of the total (one matrix may get less, another more).
    candidates : list, optional
        As in :class:`AutoCompressor` (default :func:`default_candidates`).
    X : dict or list, optional
        Calibration inputs per matrix (the same keys, or a list aligned with ``weights``;
        entries may be None): matrix i's error becomes ``||X_i (W_i - What_i)||_F^2``.
    ladder : sequence of float, optional
        The ratios tried per matrix, as multiples of ``compression_ratio`` (default
        :data:`DEFAULT_LADDER`: R / 4 ... 4 R in steps of sqrt(2); rungs <= 1 are dropped).
    sample_rows, refit_top, random_state, n_threads
        As in :class:`AutoCompressor`; each matrix is searched as ``auto`` would search it
        (the same sample rows and seeds), so a matrix given rung R gets what
        ``compress(W, "auto", compression_ratio=R, ...)`` gives.

    Returns
    -------
    factorizations : dict name -> Factorization (a list for a list of weights)
        Each with the ``info`` of its search at its chosen ratio.
    summary : dict
        ``compression_ratio`` (the total: dense bytes / stored bytes), ``nbytes``,
        ``dense_nbytes``, ``budget``, ``squared_error`` (the total), ``estimated_squared_error``
        and ``uniform_estimated_squared_error`` (every matrix at R, from the samples),
        ``steps_down``, ``time`` and ``matrices``: per matrix the chosen ``method``, ``params``,
        rung ``target_ratio``, ``nbytes``, ``compression_ratio``, ``error`` (relative) and
        ``squared_error``.

    Notes
    -----
    The algorithm (a greedy allocation, as for rate-distortion bit allocation):

    1. For every matrix and every rung ``r`` of the ladder, the candidates are fitted at ``r`` to
       the matrix's row sample. The rung's option is the best candidate there; its squared
       error on the whole matrix is estimated as the sample's squared error times
       ``m / sample_rows``, its bytes as ``dense bytes / max(r, the sample fit's ratio)``.
    2. Every matrix starts at its cheapest option. Then, repeatedly, among all moves of one
       matrix to an option of lower estimated error whose extra bytes still fit the budget, the
       move with the largest error reduction per extra byte is made (a move that costs no
       bytes first); any option may be the move, not only the next rung, so ladders that are
       not convex are handled. The result is compared with the uniform assignment (every matrix
       at R) by estimated total error, and the better one kept.
    3. Each matrix is refitted at its rung as :class:`AutoCompressor` would (the best
       ``refit_top`` sample candidates fitted whole, lowest full error). When the real total
       misses the budget (a sample underestimated some bytes), the matrix whose move down to a
       cheaper option loses the least estimated error per byte saved is moved and refitted,
       until the total fits: the result never misses the ratio.
    """
    t0 = time.perf_counter()
    if compression_ratio is None:
        raise ValueError("compress_many: compression_ratio is required")
    ratio = _check_ratio(compression_ratio)
    items, as_dict = _as_items(weights, "weights")
    if not items:
        raise ValueError("weights is empty: give at least one matrix")
    specs = _check_candidates(candidates)
    sample_rows = _check_sample_rows(sample_rows)
    refit_top = check_int(refit_top, "refit_top", min_value=1)
    ladder = DEFAULT_LADDER if ladder is None else tuple(ladder)
    if not ladder:
        raise ValueError("ladder is empty")
    rungs = set()
    for k in ladder:
        k = float(k)
        if not (k > 0 and math.isfinite(k)):
            raise ValueError(f"ladder entries must be positive multiples of the ratio; got {k}")
        if ratio * k > 1:
            rungs.add(ratio * k)
    rungs = sorted(rungs | {ratio})
    if X is None:
        xs = {}
    else:
        x_items, _ = _as_items(X, "X")
        xs = dict(x_items)
        unknown = set(xs) - {k for k, _ in items}
        if unknown:
            raise ValueError(f"X has entries for no matrix: {sorted(map(str, unknown))}")
    rng = np.random.default_rng(random_state)
    mats = {}
    for key, W in items:
        A = check_array(W, f"weights[{key!r}]")
        Xi = _check_inputs(xs.get(key), A.shape[0], f"X[{key!r}]")
        # One seed per matrix: an int random_state is every matrix's (what `auto` on that
        # matrix alone gets); else drawn from it.
        seed = random_state if random_state is None or isinstance(random_state, (int, np.integer)) \
            else int(rng.integers(2**31 - 1))
        mats[key] = _Matrix(A, Xi, None, sample_rows, seed, n_threads)

    # 1. the options: per matrix a list of (sq error estimate, bytes estimate, rung)
    options = {}
    for key, mat in mats.items():
        opts = []
        for r in rungs:
            est = mat.estimate(mat.screen(r, specs), r)
            if est is not None:
                opts.append((est[0], est[1], r))
        if not opts:
            try:
                mat.refit(mat.screen(rungs[0], specs), rungs[0], refit_top)
            except ValueError as exc:
                raise ValueError(f"compress_many: weights[{key!r}]: {exc}") from None
        options[key] = opts
    dense = sum(mat.A.nbytes for mat in mats.values())
    budget = dense / ratio

    def cheapest(key):
        return min(range(len(options[key])), key=lambda i: (options[key][i][1], options[key][i][0]))

    choice = {key: cheapest(key) for key in mats}
    used = sum(options[k][i][1] for k, i in choice.items())
    if used > budget:
        reach = dense / used
        raise ValueError(f"compress_many: compression_ratio={ratio:g} is unreachable for these "
                         f"matrices with ladder rungs up to {rungs[-1]:g}; the cheapest options "
                         f"reach about {_round_down(reach):g}")

    # 2. greedy upgrades
    def upgrade(choice, used):
        while True:
            best = None
            for key, i in choice.items():
                e0, b0, _ = options[key][i]
                for j, (e1, b1, _) in enumerate(options[key]):
                    if e1 >= e0 or used + b1 - b0 > budget:
                        continue
                    extra = b1 - b0
                    gain = (e0 - e1) / extra if extra > 0 else math.inf
                    cand = (gain, e0 - e1, key, j)
                    if best is None or cand[:2] > best[:2]:
                        best = cand
            if best is None:
                return choice, used
            _, _, key, j = best
            used += options[key][j][1] - options[key][choice[key]][1]
            choice[key] = j

    choice, used = upgrade(dict(choice), used)
    est_total = sum(options[k][i][0] for k, i in choice.items())
    uniform = {}
    for key in mats:
        at = [i for i, o in enumerate(options[key]) if o[2] == ratio]
        if not at:
            uniform = None
            break
        uniform[key] = at[0]
    uniform_est = None
    if uniform is not None:
        uniform_est = sum(options[k][i][0] for k, i in uniform.items())
        if uniform_est < est_total and \
                sum(options[k][i][1] for k, i in uniform.items()) <= budget:
            choice, est_total = uniform, uniform_est

    # 3. refit; an option once fitted has its real bytes and error, so no option is fitted
    # twice and the loop ends
    fitted, fits = {}, {}

    def fit(key):
        i = choice[key]
        if (key, i) not in fits:
            mat = mats[key]
            r = options[key][i][2]
            entries = mat.screen(r, specs)
            f, records, chosen, sq = mat.refit(entries, r, refit_top)
            # (set on the result at the end: rungs that solve alike share one object)
            info = {"method": chosen["method"], "params": chosen["params"],
                    "compressor": _jsonable(chosen["compressor"].get_config()),
                    "error": mat.relative(sq, mat.ref),
                    "score": mat.score_name(),
                    "compression_ratio_target": r, "sample_rows": int(mat.rows.size),
                    "candidates": _public(entries), "refit": records}
            fits[key, i] = (f, sq, chosen, info)
            options[key][i] = (sq, f.nbytes, r)
        fitted[key] = (i,) + fits[key, i]

    def actual():
        return sum(v[1].nbytes for v in fitted.values())

    for key in mats:
        fit(key)
    steps_down = 0

    def step_down():
        nonlocal steps_down
        while actual() > budget:
            best = None
            for key, i in choice.items():
                b_now, e_now = options[key][i][1], options[key][i][0]
                for j, (e1, b1, _) in enumerate(options[key]):
                    if j != i and b1 < b_now:
                        cost = (e1 - e_now) / (b_now - b1)
                        if best is None or cost < best[0]:
                            best = (cost, key, j)
            if best is None:  # pragma: no cover - the cheapest options fit by construction
                raise ValueError(f"compress_many: the refitted total ({actual()} bytes) misses "
                                 f"the budget ({budget:.0f} bytes) and no matrix can step down")
            _, key, j = best
            choice[key] = j
            fit(key)
            steps_down += 1

    for _ in range(len(rungs) * len(mats)):
        step_down()
        # bytes the estimates overstated: upgrade again with the real figures
        new, _ = upgrade(dict(choice), actual())
        changed = [k for k in mats if new[k] != choice[k]]
        if not changed:
            break
        choice.update(new)
        for key in changed:
            fit(key)
    step_down()
    total = sum(v[1].nbytes for v in fitted.values())
    assert total <= budget, (total, budget)

    result, per = {}, {}
    for key, _ in items:
        i, f, sq, chosen, info = fitted[key]
        f._set_info(info)
        result[key] = f
        per[key] = {"method": chosen["method"], "params": chosen["params"],
                    "target_ratio": options[key][i][2], "nbytes": int(f.nbytes),
                    "compression_ratio": float(f.compression_ratio),
                    "error": mats[key].relative(sq, mats[key].ref), "squared_error": sq}
    summary = {"compression_ratio": dense / total, "nbytes": int(total), "dense_nbytes": dense,
               "budget": budget, "squared_error": sum(v["squared_error"] for v in per.values()),
               "estimated_squared_error": est_total,
               "uniform_estimated_squared_error": uniform_est, "steps_down": steps_down,
               "time": time.perf_counter() - t0, "matrices": per}
    if not as_dict:
        result = [result[k] for k, _ in items]
    return result, summary
