"""Data, peers and scoring of the benchmarks, shared by ``matcompress bench`` and ``bench/``.

Each kernel's benchmark data (fixed seeds), the calls of its peers set up the way that makes the
comparison fair (each function's docstring names the trap it avoids), and one way of scoring
every result:

- OMP: :func:`make_dictionary`, :func:`make_signals`, :func:`relative_residual`,
  :func:`supports_equal`, :func:`spams_omp_fn`;
- k-means: :func:`make_values`, :func:`make_blocks`, :func:`inertia_1d`,
  :func:`inertia_blocks`, :func:`faiss_kmeans`, :func:`faiss_kpp_method`;
- dictionary learning: :func:`load_patches`, :func:`initial_dictionary`, :func:`score`, the
  peers' runners and :func:`learn_and_score` (scikit-learn, SPAMS and matcompress from the same
  start, interleaved, every dictionary scored the same way);
- optional peers: :func:`import_optional` (a missing peer is a note, never a crash).
"""

from __future__ import annotations

import statistics
import time
import warnings

import numpy as np

from .harness import SEED, ForeignLoad, met, say

__all__ = [
    "import_optional", "import_spams", "import_faiss",
    "make_dictionary", "make_signals", "supports_equal", "relative_residual", "spams_omp_fn",
    "N_ITER", "make_values", "inertia_1d", "make_blocks", "inertia_blocks", "faiss_kpp_method",
    "faiss_kmeans",
    "load_patches", "initial_dictionary", "unit_atoms", "score", "learn_and_score",
]


# --------------------------------------------------------------------------------------------
# optional peers


def import_optional(module, dist=None):
    """(module, None) when `module` imports, else (None, a note saying why: a skipped peer)."""
    import importlib

    try:
        return importlib.import_module(module), None
    except Exception as e:  # noqa: BLE001 - any import failure means "skip"
        what = module if dist is None else f"{module} ({dist})"
        return None, f"{what} not importable ({type(e).__name__}: {e})"


def import_spams():
    """spams (spams-bin on PyPI), or (None, note)."""
    return import_optional("spams")


def import_faiss():
    """faiss (faiss-cpu on PyPI), or (None, note)."""
    return import_optional("faiss")


# --------------------------------------------------------------------------------------------
# OMP


def make_dictionary(n_components, n_features, dtype, seed=SEED):
    """Gaussian atoms (rows) of unit norm, `dtype`, seeded by the shape."""
    rng = np.random.default_rng([seed, n_components, n_features])
    D = rng.standard_normal((n_components, n_features), dtype=dtype)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return D


def make_signals(n_signals, n_features, dtype, seed=SEED):
    """Dense Gaussian signals (n_signals, n_features): no sparse structure."""
    rng = np.random.default_rng([seed, n_features, 1])
    return rng.standard_normal((n_signals, n_features), dtype=dtype)


def supports_equal(A, B):
    """Fraction of rows whose sets of nonzero columns are identical."""
    return float(np.mean(np.all((np.asarray(A) != 0) == (np.asarray(B) != 0), axis=1)))


def relative_residual(X, codes, D):
    """||X - codes D||_F / ||X||_F in float64 (codes dense or scipy sparse)."""
    X64 = np.asarray(X, dtype=np.float64)
    C = codes.toarray() if hasattr(codes, "toarray") else np.asarray(codes)
    R = X64 - C.astype(np.float64) @ np.asarray(D, dtype=np.float64)
    return float(np.linalg.norm(R) / np.linalg.norm(X64))


def spams_omp_fn(spams, X, D, s, threads):
    """A zero-argument call of ``spams.omp`` on X (n, m) over D (k, m) with s nonzeros.

    SPAMS wants Fortran-ordered (n_features, n_signals) arrays (made here, once, outside the
    timed call) and ``eps=0.0, lambda1=0.0``: without them float32 codes can come back all zero
    (uninitialised memory, in some processes only). ``spams.omp`` is ORMP, not textbook OMP. The
    call returns the codes as a scipy sparse (k, n) matrix; check ``nnz > 0`` on a result."""
    Xf, Df = np.asfortranarray(X.T), np.asfortranarray(D.T)
    return lambda: spams.omp(Xf, Df, L=s, eps=0.0, lambda1=0.0, numThreads=threads)


# --------------------------------------------------------------------------------------------
# k-means

N_ITER = 20  # the peers' iterations (faiss's default niter=25 is not theirs: all runs use 20)
INERTIA_CHUNK_BYTES = 2**20  # float64 distances per chunk (block inertia): cache-sized chunks


def make_values(n, seed=SEED):
    """n Laplace(0, 1) values, float32 (the same n and seed give the same values)."""
    rng = np.random.default_rng([seed, 1])
    return rng.laplace(size=n).astype(np.float32)


def inertia_1d(x, codebook, chunk=1 << 20):
    """Sum over x of the squared distance to the nearest codebook entry, in float64."""
    cb = np.unique(np.asarray(codebook, dtype=np.float64).ravel())  # sorted, no duplicates
    total = 0.0
    for s in range(0, x.size, chunk):
        v = np.asarray(x.ravel()[s:s + chunk], dtype=np.float64)
        i = np.searchsorted(cb, v)
        lo = cb[np.maximum(i - 1, 0)]
        hi = cb[np.minimum(i, cb.size - 1)]
        total += float(np.minimum((v - lo) ** 2, (v - hi) ** 2).sum())
    return total


def make_blocks(n, dim, seed=SEED):
    """n blocks of dim i.i.d. Laplace(0, 1) values, float32, shape (n, dim) (the same n, dim and
    seed give the same blocks)."""
    rng = np.random.default_rng([seed, 2, dim])
    return rng.laplace(size=(n, dim)).astype(np.float32)


def prepare_centroids(centroids, dim):
    """(C, -2 C^T, squared norms of C), float64, for nearest_sq."""
    C = np.asarray(centroids, dtype=np.float64).reshape(-1, dim)
    return C, np.ascontiguousarray(-2.0 * C.T), (C * C).sum(axis=1)


def nearest_sq(V, prepared):
    """float64 points V (m x d) and prepare_centroids(...): the index of the nearest centroid of
    each point (by |c|^2 - 2 v.c) and the squared distance to it, computed directly."""
    C, m2ct, cn = prepared
    s = V @ m2ct
    s += cn
    j = np.argmin(s, axis=1)
    return j, ((V - C[j]) ** 2).sum(axis=1)


def chunk_rows(k):
    """Rows per chunk so that a chunk's (rows, k) float64 distances take INERTIA_CHUNK_BYTES."""
    return max(1, INERTIA_CHUNK_BYTES // (8 * k))


def inertia_blocks(X, centroids):
    """Sum over the rows of X of the squared distance to the nearest centroid, in float64, in
    chunks of rows (never an n x k matrix)."""
    prepared = prepare_centroids(centroids, X.shape[1])
    rows = chunk_rows(prepared[0].shape[0])
    total = 0.0
    for s in range(0, X.shape[0], rows):
        total += float(nearest_sq(np.asarray(X[s:s + rows], dtype=np.float64), prepared)[1]
                       .sum())
    return total


def faiss_kpp_method(faiss):
    """(value of init_method for k-means++, or None, and how it was found)."""
    value = getattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS", None)
    has_field = hasattr(faiss.ClusteringParameters(), "init_method")
    if value is None or not has_field:
        avail = sorted(a for a in dir(faiss) if a.startswith("ClusteringInitMethod_"))
        return None, ("faiss has no ClusteringInitMethod_KMEANS_PLUS_PLUS / "
                      f"ClusteringParameters.init_method (available: {avail or 'none'}): "
                      "k-means++ rows skipped")
    return int(value), (f"faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS = {int(value)} "
                        f"(default init_method = {faiss.ClusteringParameters().init_method})")


def faiss_kmeans(faiss, X, k, *, niter=N_ITER, seed=SEED, max_points_per_centroid=None,
                 init_method=None, search=False):
    """One ``faiss.Kmeans`` fit of X (n, d) float32: (centroids, info).

    faiss sub-samples to ``max_points_per_centroid * k`` points (default 256 k): pass
    ``ceil(n / k)`` to train on every point. Its own objective (``info["reported"]``) is on that
    sample and before its last update: recompute the inertia instead. With `search`, the codes
    of every point are computed too (``index.search`` on the trained index; its seconds in
    ``info["search_s"]``), as ``fit_codebook`` returns every point's code."""
    d = X.shape[1]
    kw = dict(niter=niter, seed=seed)
    if max_points_per_centroid is not None:
        kw["max_points_per_centroid"] = max_points_per_centroid
    if init_method is not None:
        kw["init_method"] = init_method
    km = faiss.Kmeans(d, k, **kw)
    km.train(X)
    info = dict(n_iter=len(km.obj), reported=float(km.obj[-1]) if len(km.obj) else None)
    if search:
        t0 = time.perf_counter()
        if km.index.ntotal == k:  # the trained index holds the centroids
            _, labels = km.index.search(X, 1)
        else:
            _, labels = km.assign(X)
        info["search_s"] = time.perf_counter() - t0
    return km.centroids, info


# --------------------------------------------------------------------------------------------
# dictionary learning

DL_N_COMPONENTS = 256
DL_N_NONZERO = 8
DL_EPOCHS = 3
DL_THREADS = 2
DL_METHODS = ("ksvd", "mod", "online")

SK_ALPHA_DEFAULT = 1.0
# Chosen once (2026-11-25): MiniBatchDictionaryLearning, 3 epochs, scored as in this module, on
# another draw of 20,000 patches (load_patches seed 0) from another random-patch start, for alpha
# in {1, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05}: errors 0.4215, 0.3677, 0.3521, 0.3478, 0.3508, 0.3576,
# 0.3655. 0.15 is the lowest; on the benchmark's own patches and start, 0.2 / 0.15 / 0.1 give
# 0.3508 / 0.3453 / 0.3493. Smaller alphas are also slower (lars codes more atoms) and make lars
# warn (ConvergenceWarning).
SK_ALPHA_CALIBRATED = 0.15
SPAMS_LAMBDA_L0 = DL_N_NONZERO  # mode 3: ||alpha||_0 <= lambda1
# Chosen the same way for SPAMS mode 2 (the same draw and start), lambda1 in {0.3, 0.2, 0.15,
# 0.12, 0.1, 0.08, 0.06, 0.045, 0.03, 0.01, 0.003, 0.001}: errors 0.3675, 0.3535, 0.3484, 0.3487,
# 0.3518, 0.3555, 0.3620, 0.3686, 0.3808, 0.4127, 0.4340, 0.4411 (spams.lasso codes ~4 nonzeros
# per patch at 0.15, ~7 at 0.1); on the benchmark's patches 0.2 / 0.15 / 0.12 / 0.1 give
# 0.3528 / 0.3472 / 0.3471 / 0.3491. Its objective, 0.5 ||x - D a||^2 + lambda1 ||a||_1 per
# signal, is scikit-learn's with lambda1 = alpha, and the best values agree. At 3e-4 SPAMS
# returned atoms of norm 0.
SPAMS_LAMBDA_L1 = 0.15

TARGET_SK_SPEEDUP = 20.0  # reach scikit-learn's error in <= 1/20 of its time
BUDGET_FACTOR = 1.25  # our runs go on until this times the slowest reference time
MIN_BUDGET = 0.3  # seconds


def spams_batch(threads=DL_THREADS):
    """trainDL's default mini-batch at numThreads=threads (checked): 256 (threads + 1)."""
    return 256 * (threads + 1)


def load_patches(n_patches, seed=SEED):
    """The benchmark patches: (n_patches, 64) float32, 8x8, mean removed (needs pillow)."""
    import matcompress.demo

    X, _ = matcompress.demo.load_patches(n_patches, seed=seed)
    return np.ascontiguousarray(X, dtype=np.float32)


def initial_dictionary(X, n_components=DL_N_COMPONENTS, seed=SEED):
    """n_components distinct random non-zero rows of X, normalised (float32, seeded): every
    learner starts from it (SPAMS has no seed, so this also makes it deterministic)."""
    norms = np.linalg.norm(X.astype(np.float64), axis=1)
    candidates = np.flatnonzero(norms > 0)
    rng = np.random.default_rng([seed, n_components, 1])
    chosen = np.sort(rng.choice(candidates, size=n_components, replace=False))
    return (X[chosen] / norms[chosen, None]).astype(np.float32)


def unit_atoms(D):
    """Atoms scaled to unit norm in float64; atoms of norm 0 dropped. Returns (D, dropped)."""
    D = np.asarray(D, dtype=np.float64)
    norms = np.linalg.norm(D, axis=1)
    keep = norms > 0
    return D[keep] / norms[keep, None], int((~keep).sum())


def score(X, D, s=DL_N_NONZERO, n_threads=DL_THREADS):
    """Relative error of X over D with OMP codes of s nonzeros (matcompress.sparse_encode,
    scikit-learn's rule), atoms normalised. Returns dict(error, dropped_atoms, short_codes):
    short_codes = signals whose OMP stopped before s atoms (e.g. orthogonal to every atom)."""
    import matcompress

    Dn, dropped = unit_atoms(D)
    with warnings.catch_warnings():  # signals that stop early are counted below
        warnings.simplefilter("ignore", RuntimeWarning)
        C = matcompress.sparse_encode(X, Dn.astype(X.dtype), n_nonzero_coefs=min(s, len(Dn)),
                                      return_sparse=True, n_threads=n_threads)
    X64 = np.asarray(X, dtype=np.float64)
    R = X64 - C.astype(np.float64) @ Dn
    short = int(np.count_nonzero(np.diff(C.indptr) < s))
    return dict(error=float(np.linalg.norm(R) / np.linalg.norm(X64)), dropped_atoms=dropped,
                short_codes=short)


def _timed(fn, load):
    with load:
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
    return dt, result


class PeerRunner:
    """Timed fits of one peer (the best time counts); dictionaries scored afterwards."""

    def __init__(self, name, fit, warm_up, **info):
        self.name, self.fit, self.warm_up, self.info = name, fit, warm_up, info
        self.times, self.dicts, self.loads = [], [], []

    def run_once(self):
        load = ForeignLoad()
        dt, D = _timed(self.fit, load)
        self.times.append(dt)
        self.loads.append(load.cores)
        self.dicts.append(np.array(D, dtype=np.float32))
        return dt

    def result(self, X, s=DL_N_NONZERO, n_threads=DL_THREADS):
        scores = [score(X, D, s, n_threads) for D in self.dicts]
        errors = [sc["error"] for sc in scores]
        best = int(np.argmin(self.times))
        # other load: during the run whose time counts (the fastest)
        return dict(name=self.name, times=self.times, seconds=self.times[best],
                    error=errors[best], errors=errors,
                    dropped_atoms=scores[best]["dropped_atoms"], foreign_load=self.loads[best],
                    foreign_loads=self.loads,
                    deterministic=all(np.array_equal(self.dicts[0], D) for D in self.dicts[1:]),
                    **self.info)


def sklearn_runner(X, D0, alpha, epochs=DL_EPOCHS, seed=SEED):
    """scikit-learn ``MiniBatchDictionaryLearning(max_iter=epochs, tol=0,
    max_no_improvement=None)`` from D0: exactly `epochs` epochs (its defaults otherwise)."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    def make(max_iter):
        return MiniBatchDictionaryLearning(
            n_components=D0.shape[0], alpha=alpha, max_iter=max_iter, tol=0.0,
            max_no_improvement=None, dict_init=D0.copy(), random_state=seed)

    caught = []  # lars warns (ConvergenceWarning) at small alphas: counted, not printed

    def fit(max_iter, data):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            D = make(max_iter).fit(data).components_
        caught.extend(f"{x.category.__name__}: {str(x.message).split(',')[0]}" for x in w)
        return D

    return PeerRunner(
        f"scikit-learn alpha={alpha:g}", lambda: fit(epochs, X), lambda: fit(1, X[:1024]),
        library="scikit-learn", alpha=alpha, warnings=caught,
        params=f"MiniBatchDictionaryLearning alpha={alpha:g}, lars, batch 256, {epochs} epochs")


def spams_runner(spams, X, D0, mode, lambda1, epochs=DL_EPOCHS, threads=DL_THREADS):
    """SPAMS ``trainDL`` from D0 (mode 3: at most lambda1 nonzeros; mode 2: L1 penalty), its
    default mini-batch passed explicitly so that ``iter`` (mini-batches) = epochs * n / batch."""
    n = X.shape[0]
    batch = spams_batch(threads)
    iters = max(1, round(epochs * n / batch))
    Xf = np.asfortranarray(X.T)

    def fit(it):
        D = spams.trainDL(Xf, D=np.asfortranarray(D0.T), mode=mode, lambda1=lambda1, iter=it,
                          batchsize=batch, numThreads=threads, verbose=False)
        return np.asarray(D).T

    kind = "L0" if mode == 3 else "L1"
    return PeerRunner(
        f"SPAMS mode {mode}", lambda: fit(iters), lambda: fit(2), library="SPAMS", mode=mode,
        params=f"trainDL mode={mode} ({kind}), lambda1={lambda1:g}, batch {batch}, "
               f"iter={iters}")


class OurRunner:
    """dict_learning from D0: the first run goes on until `budget` seconds, later runs do the
    same number of passes. Keeps the first run's snapshots and every run's time stamps; the
    result has the median time stamp of each pass."""

    def __init__(self, X, D0, method, s=DL_N_NONZERO, threads=DL_THREADS, seed=SEED):
        self.X, self.D0, self.method = X, D0, method
        self.kw = dict(n_nonzero_coefs=s, method=method, tol=0.0, dict_init=D0,
                       random_state=seed, n_threads=threads)
        self.passes = self.snapshots = self.budget = None
        self.stamps, self.identical, self.load = [], True, ForeignLoad()

    def warm_up(self):
        import matcompress

        matcompress.dict_learning(self.X, self.D0.shape[0], max_iter=1, **self.kw)

    def run_once(self, budget):
        import matcompress

        first = self.passes is None
        stamps, snaps = [], []
        t0 = None

        def callback(iteration, error, dictionary):
            t = time.perf_counter() - t0
            stamps.append(t)
            snaps.append(dictionary)
            return not first or t < budget

        with self.load:
            t0 = time.perf_counter()
            matcompress.dict_learning(self.X, self.D0.shape[0],
                                      max_iter=1_000_000 if first else self.passes,
                                      callback=callback, **self.kw)
        if first:
            self.passes, self.snapshots, self.budget = len(stamps), snaps, budget
        else:  # deterministic: the same dictionaries pass by pass
            self.identical &= len(snaps) == self.passes and all(
                np.array_equal(a, b) for a, b in zip(snaps, self.snapshots))
        self.stamps.append(stamps)
        return stamps

    def result(self):
        times = [statistics.median(st[i] for st in self.stamps) for i in range(self.passes)]
        return dict(method=self.method, passes=self.passes, times=times,
                    snapshots=self.snapshots, repeats=len(self.stamps),
                    identical=self.identical, all_stamps=self.stamps, budget=self.budget,
                    by_budget=self.stamps[0][-1] >= self.budget, foreign_load=self.load.cores)


class Scores:
    """Scores of one method's snapshots, computed on demand (each costs an OMP pass)."""

    def __init__(self, X, run, initial_error, s=DL_N_NONZERO, n_threads=DL_THREADS):
        self.X, self.run, self.initial_error, self.cache = X, run, initial_error, {}
        self.s, self.n_threads = s, n_threads

    def __call__(self, i):
        if i not in self.cache:
            self.cache[i] = score(self.X, self.run["snapshots"][i], self.s,
                                  self.n_threads)["error"]
        return self.cache[i]

    def time_to_reach(self, error):
        """(seconds, pass) of the first pass scored <= error; (None, None) if none."""
        for i, t in enumerate(self.run["times"]):
            if self(i) <= error:
                return t, i
        return None, None

    def error_at(self, seconds):
        """(error, pass) of the last pass finished at or before `seconds`; (initial, None) if
        none."""
        done = [i for i, t in enumerate(self.run["times"]) if t <= seconds]
        if not done:
            return self.initial_error, None
        return self(done[-1]), done[-1]


def _fmt_s(v):
    if v is None:
        return "-"
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_times(times):
    return ", ".join(f"{t:.3f}" if t < 10 else f"{t:.1f}" for t in times)


def _fmt_load(v):
    return "-" if v is None else f"{v:.2f} cores"


def _runs(k):
    return f"median of {k} runs" if k > 1 else "1 run"


def _stop(r, budget):
    if r["by_budget"]:
        return f"to the {budget:.2f} s budget"
    return "then it stopped itself: the fit became exact"


def describe_target(t):
    """One line on a dictionary-learning target of :func:`learn_and_score`."""
    if t["kind"] == "sklearn":
        if t["our_seconds"] is None:
            return (f"{t['peer']} error {t['error']:.4f} not reached in the budget "
                    f"({t['ratio']:.1f}x)")
        return (f"{t['peer']} error {t['error']:.4f} reached in {_fmt_s(t['our_seconds'])} = "
                f"1/{t['ratio']:.1f} of {_fmt_s(t['seconds'])} ({met(t['met'])})")
    return (f"at {t['peer']}'s {_fmt_s(t['seconds'])}: {t['our_error']:.5f} vs "
            f"{t['error']:.5f} ({met(t['met'])})")


def learn_and_score(X, D0, initial_error, *, alphas, sk_reps, rounds, spams, settle, out=None,
                    methods=DL_METHODS, s=DL_N_NONZERO, epochs=DL_EPOCHS, threads=DL_THREADS,
                    seed=SEED, reach_spams=False):
    """Every dictionary learner from D0 on X, timed, then scored the same way.

    scikit-learn (one alpha per entry of `alphas`, `sk_reps` runs each, back to back: each
    takes seconds to tens of seconds); then SPAMS ``trainDL`` modes 3 and 2 (when `spams` is not
    None) and matcompress ``dict_learning`` (each of `methods`) interleaved in `rounds` rounds, so
    that a slow spell of the machine (the host can slow a core without any visible load) hits
    both. In the first round matcompress runs until a budget of BUDGET_FACTOR times the slowest
    reference time (1/TARGET_SK_SPEEDUP of each scikit-learn time, each SPAMS time), keeping a
    time-stamped snapshot after every pass; later rounds run the same passes. Peers count their
    best time, matcompress the median time stamp of each pass. Call it under threadpoolctl's
    limits. `settle()` runs before each library's timings.

    Returns dict(peers, ours, targets, budget, notes): peers and ours as the runners' results;
    targets one dict per (method, reference): kind "sklearn" (ratio = its time / our time to
    reach its error, met when >= TARGET_SK_SPEEDUP; when never reached, the ratio is a bound:
    its time / our last time stamp, not met) or "spams" (our error at its best time, from the
    last pass finished by then; ratio = ours / its error, met when < 1; with `reach_spams`,
    also our_reach_seconds = our time to reach its error, None if never: that scores every pass
    up to it)."""
    res = dict(peers=[], ours=[], targets=[], budget=None, notes=[])
    peers = []
    for alpha in alphas:
        say(out, f"scikit-learn MiniBatchDictionaryLearning alpha={alpha:g} "
                 f"({epochs} epochs, {sk_reps} run{'s' if sk_reps > 1 else ''}) ...")
        runner = sklearn_runner(X, D0, alpha, epochs, seed)
        settle()
        runner.warm_up()
        for _ in range(sk_reps):
            runner.run_once()
        say(out, f"  {min(runner.times):.2f} s (runs: {_fmt_times(runner.times)}), other "
                 f"load {_fmt_load(runner.loads[int(np.argmin(runner.times))])}")
        peers.append(runner)

    spams_runners = []
    if spams is not None:
        spams_runners = [spams_runner(spams, X, D0, 3, SPAMS_LAMBDA_L0, epochs, threads),
                         spams_runner(spams, X, D0, 2, SPAMS_LAMBDA_L1, epochs, threads)]
    ours = [OurRunner(X, D0, method, s, threads, seed) for method in methods]
    settle()
    for runner in spams_runners + ours:  # threads started, code paged in
        runner.warm_up()
    deadlines = [min(r.times) / TARGET_SK_SPEEDUP for r in peers]
    budget = None
    for rnd in range(rounds):
        line = []
        for runner in spams_runners:
            settle()
            line.append(f"{runner.name} {runner.run_once():.3f} s")
        if budget is None:  # the slowest reference time, from the first round
            budget = max([MIN_BUDGET] + [BUDGET_FACTOR * d for d in deadlines]
                         + [BUDGET_FACTOR * r.times[0] for r in spams_runners])
            res["budget"] = budget
            say(out, f"SPAMS trainDL and matcompress dict_learning, {rounds} round"
                     f"{'s' if rounds > 1 else ''}; matcompress runs to a {budget:.2f} s "
                     "budget ...")
        for runner in ours:
            settle()
            stamps = runner.run_once(budget)
            line.append(f"{runner.method} {len(stamps)} passes {stamps[-1]:.3f} s")
        say(out, f"  round {rnd + 1}: " + ", ".join(line))

    res["peers"] = [r.result(X, s, threads) for r in peers + spams_runners]
    res["ours"] = [r.result() for r in ours]
    for r in res["peers"]:
        say(out, f"{r['name']}: {r['seconds']:.3f} s (runs: {_fmt_times(r['times'])}), "
                 f"error {r['error']:.4f}, other load {_fmt_load(r['foreign_load'])}")
        if not r["deterministic"]:
            errors = ", ".join(f"{e:.4f}" for e in r["errors"])
            res["notes"].append(f"{r['name']}: the repeated runs gave different "
                                f"dictionaries (errors {errors})")
        if r.get("warnings"):
            kinds = sorted(set(r["warnings"]))
            res["notes"].append(f"{r['name']}: {len(r['warnings'])} warnings in its fits "
                                f"(warm-up included): {'; '.join(kinds[:2])}")
        if r["dropped_atoms"]:
            res["notes"].append(f"{r['name']}: {r['dropped_atoms']} atoms of norm 0 "
                                "(dropped when scoring)")
    for r in res["ours"]:
        say(out, f"matcompress {r['method']}: {r['passes']} passes "
                 f"({_stop(r, res['budget'])}), {r['times'][-1] / r['passes'] * 1e3:.1f} ms "
                 f"per pass ({_runs(r['repeats'])}), other load "
                 f"{_fmt_load(r['foreign_load'])}")
        if not r["identical"]:
            res["notes"].append(f"matcompress {r['method']}: the repeated runs gave "
                                "different snapshots; times are medians over runs that differ")

    refs = []
    for r in res["peers"]:
        if r["library"] == "scikit-learn":
            refs.append(dict(kind="sklearn", peer=r["name"], error=r["error"],
                             seconds=r["seconds"], deadline=r["seconds"] / TARGET_SK_SPEEDUP))
        else:
            refs.append(dict(kind="spams", peer=r["name"], error=r["error"],
                             seconds=r["seconds"], deadline=r["seconds"]))

    # ---- scoring, after every timing
    for r in res["ours"]:
        sc = Scores(X, r, initial_error, s, threads)
        r["final_error"] = sc(r["passes"] - 1)
        for ref in refs:
            t = dict(method=r["method"], **ref)
            if ref["kind"] == "sklearn":
                seconds, i = sc.time_to_reach(ref["error"])
                t.update(our_seconds=seconds, our_pass=i, our_error=None if i is None else sc(i))
                if seconds is None:  # not reached within the budget: the ratio is below this
                    t["ratio"] = ref["seconds"] / r["times"][-1]
                    t["met"] = False
                else:
                    t["ratio"] = ref["seconds"] / seconds
                    t["met"] = t["ratio"] >= TARGET_SK_SPEEDUP
            else:
                err, i = sc.error_at(ref["seconds"])
                t.update(our_error=err, our_pass=i,
                         our_seconds=None if i is None else r["times"][i])
                t["ratio"] = err / ref["error"]
                t["met"] = err < ref["error"]
                if reach_spams:
                    t["our_reach_seconds"], _ = sc.time_to_reach(ref["error"])
            res["targets"].append(t)
        r["scored"] = dict(sorted(sc.cache.items()))
        say(out, f"{r['method']}: " + "; ".join(describe_target(t) for t in res["targets"]
                                                 if t["method"] == r["method"]))
    return res
