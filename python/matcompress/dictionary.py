"""Dictionary learning on Batch-OMP: K-SVD, MOD and online (mini-batch) learning.

The coding half of every iteration is :func:`matcompress.sparse_encode`'s native Batch-OMP; the
dictionary half (``csrc/matcompress/dictionary.cc``) runs in the native core with the GIL
released.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _core
from ._validation import (
    check_array,
    check_float,
    check_int,
    check_n_threads,
    check_random_state,
)
from .omp import sparse_encode

__all__ = ["dict_learning", "DictionaryLearning", "METHODS"]

#: The dictionary-update algorithms.
METHODS = ("ksvd", "mod", "online")

# Of two atoms with |cosine| above this, the less used one is replaced (docs/decisions.md §8:
# 0.95 recovered more atoms of synthetic dictionaries than 0.99, at the same error on patches).
_DUPLICATE_THRESHOLD = 0.95
# Online learning: past mini-batches fade as (tau / t) ** rho (docs/decisions.md: rho = 1, 2, 4,
# 8, 16 measured on image patches; 4 converged fastest).
_FORGET_RHO = 4.0


def _kernels(dtype):
    if dtype == np.float32:
        return _core.sparse_encode_omp_f32, _core.dictionary_step_f32, _core.online_step_f32
    return _core.sparse_encode_omp_f64, _core.dictionary_step_f64, _core.online_step_f64


def _validate_params(X, n_components, n_nonzero_coefs, method, max_iter, tol, batch_size,
                     dict_init, n_threads, verbose, callback, *, warn_few_samples=True):
    n_samples, n_features = X.shape
    n_components = check_int(n_components, "n_components", min_value=1)
    if n_nonzero_coefs is None:
        n_nonzero_coefs = int(min(max(n_features / 10, 1), n_components))
    n_nonzero_coefs = check_int(n_nonzero_coefs, "n_nonzero_coefs", min_value=1)
    if n_nonzero_coefs > n_components:
        raise ValueError(
            f"n_nonzero_coefs must be <= n_components={n_components}; got {n_nonzero_coefs}"
        )
    if n_nonzero_coefs > n_features:
        raise ValueError(
            f"n_nonzero_coefs must be <= n_features={n_features} (no more atoms than dimensions "
            f"can be linearly independent); got {n_nonzero_coefs}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    max_iter = check_int(max_iter, "max_iter", min_value=0)
    tol = check_float(tol, "tol", min_value=0.0)
    if batch_size is None:
        batch_size = _auto_batch_size(n_samples)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    n_threads = check_n_threads(n_threads)
    if not isinstance(verbose, (bool, int, np.integer)):
        raise TypeError(f"verbose must be a bool or an int; got {verbose!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None; got {callback!r}")
    if dict_init is not None:
        dict_init = check_array(dict_init, "dict_init", dtype=X.dtype)
        if dict_init.shape != (n_components, n_features):
            raise ValueError(
                f"dict_init must have shape (n_components, n_features) = "
                f"{(n_components, n_features)}; got {dict_init.shape}"
            )
        norms = np.linalg.norm(dict_init, axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise ValueError(
                f"dict_init has zero-norm rows {zero[:10].tolist()}: every atom needs a direction"
            )
        dict_init = dict_init / norms[:, None]  # a normalised copy; the input is not touched
    if warn_few_samples and n_samples < n_components:
        warnings.warn(
            f"n_samples={n_samples} is smaller than n_components={n_components}: at most "
            f"n_samples atoms can be learned from the data, the others start from random "
            f"directions",
            UserWarning,
            stacklevel=3,
        )
    return n_components, n_nonzero_coefs, max_iter, tol, batch_size, dict_init, n_threads


def _auto_batch_size(n_samples):
    """n_samples / 20 within [64, 1024]: enough mini-batches per pass on small data, and on large
    data batches big enough to amortise the fixed cost of each update (docs/decisions.md §8)."""
    return min(1024, max(64, n_samples // 20))


def _initial_dictionary(X, n_components, rng):
    """Distinct non-zero samples, normalised; random unit vectors if there are too few."""
    n_features = X.shape[1]
    candidates = np.flatnonzero(np.any(X != 0, axis=1))
    take = min(n_components, candidates.size)
    chosen = np.sort(rng.choice(candidates, size=take, replace=False)) if take else candidates
    D = np.empty((n_components, n_features), dtype=X.dtype)
    rows = np.ldexp(X[chosen], -_scale_exponent(X[chosen])) if take else X[chosen]
    D[:take] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    if take < n_components:
        extra = rng.standard_normal((n_components - take, n_features))
        D[take:] = extra / np.linalg.norm(extra, axis=1, keepdims=True)
    return D


def _dense_codes(indices, values, nnz, n_components):
    n, smax = indices.shape
    codes = np.zeros((n, n_components), dtype=values.dtype)
    rows, slots = np.nonzero(np.arange(smax)[None, :] < nnz[:, None])
    codes[rows, indices[rows, slots]] = values[rows, slots]
    return codes


class _Progress:
    """tqdm bar (when verbose) and user callback, one report per pass over the data."""

    def __init__(self, verbose, callback, total, method):
        self.callback = callback
        self.bar = None
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"dictionary learning ({method})", unit="pass")

    def report(self, iteration, error, dictionary):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(error=f"{error:.5f}")
        if self.callback is not None:
            return self.callback(iteration, error, dictionary.copy()) is not False
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _scale_exponent(X):
    """e such that max|X| / 2**e is in [1, 2), or 0 for an all-zero X.

    Learning runs on ``X / 2**e`` (exact: a power of two) and the codes are scaled back: squared
    norms then neither overflow nor underflow whatever the magnitude of X, OMP's absolute
    stopping thresholds mean the same for any scale, and the results scale exactly with X.
    """
    largest = float(np.max(np.abs(X)))
    if largest == 0.0:
        return 0
    return math.frexp(largest)[1] - 1


def _scaled_norm(X, exponent, block=65536):
    """||X / 2**exponent||_F, block by block (no copy of X, no overflow)."""
    total = 0.0
    for b0 in range(0, X.shape[0], block):
        rows = np.ldexp(X[b0:b0 + block], -exponent)
        total += float(np.einsum("ij,ij->", rows, rows, dtype=np.float64))
    return math.sqrt(total)


def _omp_codes(X, D, s, n_threads):
    """Dense OMP codes of X over D: exactly ``sparse_encode(X, D, n_nonzero_coefs=s)``."""
    encode, _, _ = _kernels(X.dtype)
    return encode(X, D, None, None, s, False, 0.0, n_threads, dense=True)[0]


def _converged(errors, tol, replaced=False):
    """The stopping rule: an exact fit, or (tol > 0) a pass that lowered the error by less than
    tol times its previous value. A pass that replaced atoms is not judged: the new atoms are
    not in any code yet, and a merged duplicate may raise that pass's error a little."""
    if errors[-1] == 0.0:
        return True
    if tol == 0.0 or replaced or len(errors) < 2:
        return False
    return errors[-2] - errors[-1] < tol * errors[-2]


def _batch_learning(X, D, s, method, max_iter, tol, rng, n_threads, progress):
    """K-SVD or MOD on X (already scaled). Returns (codes, errors); D is updated in place."""
    encode, step, _ = _kernels(X.dtype)
    n_samples, n_features = X.shape
    n_components = D.shape[0]
    residual = np.empty_like(X)
    row_error = np.empty(n_samples, dtype=X.dtype)
    norm_X = _scaled_norm(X, 0)
    errors = []
    for it in range(max_iter):
        indices, values, nnz, _ = encode(X, D, None, None, s, False, 0.0, n_threads)
        order = rng.permutation(n_components).astype(np.int32) if method == "ksvd" else None
        stats = step(method, X, D, indices, values, nnz, residual, row_error, order,
                     _DUPLICATE_THRESHOLD, n_threads)
        errors.append(math.sqrt(stats["sq_error"]) / norm_X if norm_X > 0 else 0.0)
        replaced = stats["n_unused"] + stats["n_duplicates"] > 0
        if not progress.report(it, errors[-1], D) or _converged(errors, tol, replaced):
            break
    if not errors:  # max_iter=0: no codes yet
        return None, errors
    return _dense_codes(indices, values, nnz, n_components), errors


class _OnlineState:
    """Mairal et al.'s online learner: dictionary, sufficient statistics A and B, batch count."""

    # A warm start (a dictionary that is already good) counts as this many earlier batches.
    WARM_BATCHES = 10

    def __init__(self, dictionary, n_nonzero_coefs, batch_size, n_threads, exponent, *,
                 warm=False):
        self.dictionary = np.array(dictionary, order="C")
        self.exponent = exponent  # every batch is learned from as X / 2**exponent
        self.warm = warm
        self.t_offset = 0
        k, n_features = self.dictionary.shape
        self.A = np.zeros((k, k), dtype=self.dictionary.dtype)
        self.B = np.zeros((k, n_features), dtype=self.dictionary.dtype)
        self.gram = None  # D D^T of the current dictionary, from the last update
        self.n_batches = 0
        self.n_nonzero_coefs = n_nonzero_coefs
        self.batch_size = batch_size
        self.n_threads = n_threads

    def _warm_prior(self, values, n):
        """Statistics for which the current dictionary is already the solution (A = a I,
        B = a D, a = the first batch's mean code energy per atom), weighted as WARM_BATCHES
        earlier batches: the first mini-batches refine a given dictionary instead of replacing
        it with a fit to themselves."""
        k = self.A.shape[0]
        a = float(np.einsum("ij,ij->", values, values, dtype=np.float64)) / (n * k)
        if a > 0:
            self.A[...] = 0
            self.A[np.diag_indices(k)] = a
            self.B[...] = a * self.dictionary
            self.t_offset = self.WARM_BATCHES

    def pass_over(self, X, order=None):
        """One pass over X in mini-batches (in `order` if given). Returns the summed squared
        error of every batch (of X / 2**exponent), each coded with the dictionary as it was at
        that batch."""
        encode, _, step = _kernels(X.dtype)
        total = 0.0
        n = X.shape[0]
        for b0 in range(0, n, self.batch_size):
            rows = slice(b0, b0 + self.batch_size)
            batch = np.ldexp(X[order[rows]] if order is not None else X[rows], -self.exponent)
            indices, values, nnz, _ = encode(
                batch, self.dictionary, self.gram, None, self.n_nonzero_coefs, False, 0.0,
                self.n_threads,
            )
            if self.gram is None:
                self.gram = np.empty((self.A.shape[0],) * 2, dtype=self.A.dtype)
            if self.warm and self.n_batches == 0:
                self._warm_prior(values, batch.shape[0])
            self.n_batches += 1
            t = self.n_batches + self.t_offset
            # Mairal et al.'s forgetting: batch tau weighs (tau / t) ** rho in A and B at step t.
            sq_error, _ = step(batch, indices, values, nnz, self.dictionary, self.A, self.B,
                               (1.0 - 1.0 / t) ** _FORGET_RHO, 1.0 / batch.shape[0],
                               _DUPLICATE_THRESHOLD, self.n_threads, self.gram)
            total += sq_error
        return total


def _online_learning(X, D, s, max_iter, tol, batch_size, rng, n_threads, progress, exponent):
    state = _OnlineState(D, s, batch_size, n_threads, exponent)
    norm_X = _scaled_norm(X, exponent)
    errors = []
    for it in range(max_iter):
        sq_error = state.pass_over(X, rng.permutation(X.shape[0]))
        errors.append(math.sqrt(sq_error) / norm_X if norm_X > 0 else 0.0)
        if not progress.report(it, errors[-1], state.dictionary) or _converged(errors, tol):
            break
    D[...] = state.dictionary
    return errors


def dict_learning(
    X,
    n_components,
    *,
    n_nonzero_coefs=None,
    method="ksvd",
    max_iter=30,
    tol=1e-4,
    batch_size=None,
    dict_init=None,
    random_state=None,
    n_threads=None,
    verbose=False,
    callback=None,
):
    """Learn a dictionary of unit-norm atoms in which every row of ``X`` is sparse.

    Solves ``min ||X - codes @ dictionary||_F`` over dictionaries with unit-norm rows and codes
    with at most ``n_nonzero_coefs`` nonzeros per row, alternating Batch-OMP sparse coding (as in
    :func:`matcompress.sparse_encode`) with a dictionary update.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Training signals, one per row. float32 and float64 are kept (the results have the same
        dtype); integer input becomes float64. ``X`` is never modified.
    n_components : int
        Number of atoms (rows of the dictionary); may exceed ``n_features`` (overcomplete).
    n_nonzero_coefs : int, default=None
        Atoms per signal in the codes. ``None``: ``int(min(max(n_features / 10, 1),
        n_components))``, scikit-learn's OMP default. At most ``n_components`` and
        ``n_features``.
    method : {"ksvd", "mod", "online"}, default="ksvd"
        - ``"ksvd"``: approximate K-SVD; atoms are updated one after another (in a random order
          each pass), each by one power-iteration step on the residual of the signals using it,
          together with their coefficients.
        - ``"mod"``: method of optimal directions; the least-squares dictionary for the current
          codes by one Cholesky solve, then atoms normalised (codes rescaled to match).
        - ``"online"``: mini-batches of ``batch_size`` signals in a random order; running
          sufficient statistics and one block-coordinate pass over the atoms per batch. It needs
          far fewer passes than the batch methods and its memory does not grow with ``n_samples``
          (see :meth:`DictionaryLearning.partial_fit` for data that does not fit in memory).
    max_iter : int, default=30
        Passes over the data at most: iterations of K-SVD or MOD, epochs of online learning.
        ``0`` returns the initial dictionary and its codes.
    tol : float, default=1e-4
        Stop when a pass lowers the relative error by less than ``tol`` times its previous value
        (an increase counts; passes that replaced atoms are not judged). ``0`` runs all
        ``max_iter`` passes (unless the fit becomes exact).
    batch_size : int, default=None
        Signals per mini-batch (``method="online"`` only). ``None``: ``n_samples // 20`` within
        [64, 1024]. Each batch costs a fixed O(n_components^2 * n_features) for the dictionary
        update besides its coding, so larger batches are cheaper per signal (on 20,000 image
        patches with 256 atoms, 1024 reached a given error in about half the time of 256), while
        small data needs small batches to get enough updates per pass.
    dict_init : array-like of shape (n_components, n_features), default=None
        Initial dictionary; its rows are normalised (a copy; none may be zero). ``None``:
        ``n_components`` distinct non-zero rows of ``X`` chosen at random, normalised (random
        unit vectors for atoms beyond the number of such rows).
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the initial dictionary, the K-SVD atom order and the online sample order. With an
        int, results are reproducible for a given thread count (in fact for any thread count:
        the native kernels give bitwise the same result on every number of threads).
    n_threads : int, default=None
        Threads; ``None`` or ``-1``: every core the process may use (honours
        ``OMP_NUM_THREADS`` and threadpoolctl).
    verbose : bool, default=False
        Show a tqdm progress bar with the current relative error.
    callback : callable, default=None
        Called after every pass as ``callback(iteration, error, dictionary)`` with the pass
        number (from 0), its relative error and a copy of the dictionary. Returning ``False``
        stops the learning.

    Returns
    -------
    codes : ndarray of shape (n_samples, n_components)
        Sparse codes of ``X``. For K-SVD and MOD, the codes the last pass ended with, so that
        ``||X - codes @ dictionary|| / ||X|| == errors[-1]``; for online learning (and with
        ``max_iter=0``), ``sparse_encode(X, dictionary, n_nonzero_coefs=n_nonzero_coefs)``.
    dictionary : ndarray of shape (n_components, n_features)
        The learned atoms, unit norm.
    errors : ndarray of shape (n_iter,)
        Relative error ``||X - codes @ dictionary||_F / ||X||_F`` after each pass. The K-SVD and
        MOD updates never increase the error of the codes they start from; the OMP coding step is
        greedy and a duplicate merge costs a little (see Notes), so the sequence is not
        non-increasing by construction, but in practice it decreases. For online learning each mini-batch is measured with the dictionary it
        was coded with, before that batch's update.

    Warns
    -----
    UserWarning
        When ``n_samples < n_components``.

    Notes
    -----
    Unused atoms are replaced by the worst-represented signals (normalised). Of two atoms whose
    |cosine| exceeds 0.95 the less used one is replaced too; in K-SVD and MOD its coefficients
    first move to its twin (scaled by the cosine), which raises the error of that pass by at most
    ``1 - 0.95**2`` (about 10%) of their squared sum. Learning runs on ``X`` scaled by a power of
    two to a largest magnitude in [1, 2) (the codes are scaled back), so results do not depend
    on the magnitude of ``X``: scaling ``X`` by a power of two scales the codes exactly. Signals
    on which OMP stops early (e.g. all-zero rows) are normal here and not reported.

    References: M. Aharon, M. Elad, A. Bruckstein, "K-SVD: An Algorithm for Designing
    Overcomplete Dictionaries for Sparse Representation", IEEE TSP 2006; R. Rubinstein,
    M. Zibulevsky, M. Elad, "Efficient Implementation of the K-SVD Algorithm using Batch
    Orthogonal Matching Pursuit", Technion CS-2008-08; K. Engan, S. O. Aase, J. H. Husoy, "Method
    of optimal directions for frame design", ICASSP 1999; J. Mairal, F. Bach, J. Ponce,
    G. Sapiro, "Online Dictionary Learning for Sparse Coding", ICML 2009.

    Examples
    --------
    Signals made of 3 atoms each, from 20 random atoms in 16 dimensions; learning from random
    signals as the start finds most atoms again (K-SVD, like every method here, can settle in a
    local minimum where an atom is shared or split):

    >>> import numpy as np
    >>> import matcompress as mc
    >>> rng = np.random.default_rng(0)
    >>> atoms = rng.standard_normal((20, 16))
    >>> atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    >>> true_codes = np.zeros((2000, 20))
    >>> for row in true_codes:
    ...     row[rng.choice(20, 3, replace=False)] = rng.uniform(1, 2, 3) * rng.choice([-1, 1], 3)
    >>> X = true_codes @ atoms
    >>> codes, D, errors = mc.dict_learning(X, 20, n_nonzero_coefs=3, random_state=0)
    >>> codes.shape, D.shape
    ((2000, 20), (20, 16))
    >>> bool(errors[-1] < 0.5 * errors[0])
    True
    >>> found = np.abs(D @ atoms.T).max(axis=0) > 0.99
    >>> bool(found.sum() >= 15)
    True
    """
    X = check_array(X, "X")
    n_components, s, max_iter, tol, batch_size, dict_init, n_threads = _validate_params(
        X, n_components, n_nonzero_coefs, method, max_iter, tol, batch_size, dict_init,
        n_threads, verbose, callback,
    )
    rng = check_random_state(random_state)
    exponent = _scale_exponent(X)
    D = dict_init if dict_init is not None else _initial_dictionary(X, n_components, rng)
    progress = _Progress(verbose, callback, max_iter, method)
    try:
        if method == "online":
            errors = _online_learning(
                X, D, s, max_iter, tol, batch_size, rng, n_threads, progress, exponent
            )
            codes = None
        else:
            scaled = np.ldexp(X, -exponent) if exponent else X
            codes, errors = _batch_learning(scaled, D, s, method, max_iter, tol, rng, n_threads,
                                            progress)
            if codes is not None:  # the training codes, consistent with errors[-1]
                np.ldexp(codes, exponent, out=codes)
    finally:
        progress.close()
    if codes is None:  # online learning, or max_iter=0: the codes sparse_encode would give
        codes = _omp_codes(X, D, s, n_threads)
    return codes, D, np.asarray(errors, dtype=np.float64)


class DictionaryLearning(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Dictionary learning with sparse (OMP) codes: K-SVD, MOD or online.

    A scikit-learn estimator over :func:`dict_learning`: ``fit`` learns ``components_`` (the
    dictionary), ``transform`` sparse-codes new data over it with Batch-OMP, ``partial_fit``
    refines it one chunk of data at a time with online updates.

    Parameters
    ----------
    n_components : int, default=None
        Number of atoms; ``None`` means ``n_features``.
    n_nonzero_coefs : int, default=None
        Atoms per signal, in training and in ``transform``. ``None``:
        ``int(min(max(n_features / 10, 1), n_components))``.
    method : {"ksvd", "mod", "online"}, default="ksvd"
        Dictionary update used by ``fit`` (see :func:`dict_learning`).
    max_iter : int, default=30
        Passes over the data in ``fit``.
    tol : float, default=1e-4
        Relative-decrease stopping tolerance of ``fit``.
    batch_size : int, default=None
        Mini-batch size of online learning (``method="online"`` and ``partial_fit``); ``None``:
        ``n_samples // 20`` within [64, 1024] (of the data given to ``fit``, or to the first
        ``partial_fit``).
    dict_init : array-like of shape (n_components, n_features), default=None
        Initial dictionary for ``fit`` (and for the first ``partial_fit`` of an unfitted
        estimator).
    random_state : int, numpy.random.Generator or None, default=None
        Seed; see :func:`dict_learning`.
    n_threads : int, default=None
        Threads; ``None`` or ``-1`` means every usable core.
    verbose : bool, default=False
        Progress bar in ``fit``.
    callback : callable, default=None
        ``callback(iteration, error, dictionary)`` after every pass of ``fit``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The dictionary: unit-norm atoms.
    error_ : ndarray of shape (n_iter_,)
        Relative error after each pass of ``fit``, followed by one value per ``partial_fit``
        call (the error of its mini-batches, each measured before its update).
    n_iter_ : int
        Passes over the data so far (``fit`` passes plus ``partial_fit`` calls).
    n_steps_ : int
        Online mini-batch updates so far (``method="online"`` and ``partial_fit``).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names seen in ``fit``, when ``X`` has string column names.

    See Also
    --------
    dict_learning : the function behind ``fit``.
    sparse_encode : the coding step behind ``transform``.

    Examples
    --------
    >>> import numpy as np
    >>> from matcompress import DictionaryLearning
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((500, 16))
    >>> est = DictionaryLearning(32, n_nonzero_coefs=4, max_iter=5, random_state=0).fit(X)
    >>> est.components_.shape, est.transform(X[:3]).shape
    ((32, 16), (3, 32))
    """

    def __init__(
        self,
        n_components=None,
        *,
        n_nonzero_coefs=None,
        method="ksvd",
        max_iter=30,
        tol=1e-4,
        batch_size=None,
        dict_init=None,
        random_state=None,
        n_threads=None,
        verbose=False,
        callback=None,
    ):
        self.n_components = n_components
        self.n_nonzero_coefs = n_nonzero_coefs
        self.method = method
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.dict_init = dict_init
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose
        self.callback = callback

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _n_components(self, n_features):
        return n_features if self.n_components is None else self.n_components

    def _fit(self, X):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n_components = self._n_components(X.shape[1])
        codes, self.components_, errors = dict_learning(
            X,
            n_components,
            n_nonzero_coefs=self.n_nonzero_coefs,
            method=self.method,
            max_iter=self.max_iter,
            tol=self.tol,
            batch_size=self.batch_size,
            dict_init=self.dict_init,
            random_state=self.random_state,
            n_threads=self.n_threads,
            verbose=self.verbose,
            callback=self.callback,
        )
        self.error_ = errors
        self.n_iter_ = len(errors)
        batch_size = self.batch_size or _auto_batch_size(X.shape[0])
        self.n_steps_ = math.ceil(X.shape[0] / batch_size) * len(errors) if (
            self.method == "online") else 0
        self._online = None
        return X

    def fit(self, X, y=None):
        """Learn the dictionary from ``X`` of shape (n_samples, n_features). Returns self."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit, then return ``transform(X)``: the OMP codes of ``X`` over the learned atoms."""
        X = self._fit(X)
        return self._encode(X)

    def transform(self, X):
        """Sparse-code ``X`` over ``components_`` (OMP, ``n_nonzero_coefs`` atoms per row).

        Returns an ndarray of shape (n_samples, n_components) in the dtype of ``X``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._encode(X)

    def _encode(self, X):
        n_components, n_features = self.components_.shape
        s = self.n_nonzero_coefs
        if s is None:
            s = int(min(max(n_features / 10, 1), n_components))
        with warnings.catch_warnings():  # all-zero rows stop early: that is not an error here
            warnings.simplefilter("ignore", RuntimeWarning)
            return sparse_encode(X, self.components_.astype(X.dtype, copy=False),
                                 n_nonzero_coefs=s, n_threads=self.n_threads)

    def partial_fit(self, X, y=None):
        """Refine the dictionary with one pass of online updates over ``X``, in mini-batches
        of ``batch_size`` rows in the order given. Works whatever ``method`` is, so a dictionary
        fitted by K-SVD can keep learning from a stream: the first call after ``fit`` starts the
        online statistics as if ``components_`` had come from a few earlier mini-batches, so it
        refines the fitted dictionary rather than refitting it to one batch. Returns self."""
        first = not hasattr(self, "components_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=first)
        online = getattr(self, "_online", None)
        if online is not None:
            X = X.astype(online.dictionary.dtype, copy=False)
        else:
            if first:
                n_components = self._n_components(X.shape[1])
                init = self.dict_init
                rng = check_random_state(self.random_state)
            else:
                n_components = self.components_.shape[0]
                init = self.components_
                rng = None
            s_components, s, _, _, batch_size, init, n_threads = _validate_params(
                X, n_components, self.n_nonzero_coefs, self.method, 0, self.tol,
                self.batch_size, init, self.n_threads, self.verbose, self.callback,
                warn_few_samples=first,
            )
            D = init if init is not None else _initial_dictionary(X, s_components, rng)
            # A fitted dictionary is refined; an initial one (dict_init or samples) starts cold.
            # The scale of this first chunk is kept for the later ones (A and B accumulate).
            online = _OnlineState(D, s, batch_size, n_threads, _scale_exponent(X),
                                  warm=not first)
            self._online = online
            if first:
                self.error_ = np.zeros(0)
                self.n_iter_ = 0
                self.n_steps_ = 0
        before = online.n_batches
        sq_error = online.pass_over(X)
        norm_X = _scaled_norm(X, online.exponent)
        error = math.sqrt(sq_error) / norm_X if norm_X > 0 else 0.0
        self.components_ = online.dictionary.copy()
        self.error_ = np.append(self.error_, error)
        self.n_iter_ += 1
        self.n_steps_ += online.n_batches - before
        return self

    @property
    def _n_features_out(self):
        return self.components_.shape[0]
