"""k-means benchmark: matcompress.fit_codebook against scikit-learn and faiss.

The k-means rows of DESIGN.md §7, every library measured in the same process run, ratios printed
beside their targets (only same-run ratios count: absolute figures move up to 2x between machines
here). This file holds the 1-D cases; the block cases (500k x 4, k=256; 100k x 16, k=1024) come
with the block k-means, as more entries of CASES with their own runner (see RUNNERS).

    python bench/kmeans.py [--quick] [--markdown FILE] [--no-memory] [--wait-idle SECONDS]
                           [--optimal-budget SECONDS] [--seeds N]

Target (DESIGN.md §7): 1-D k-means of 1M values, k=16 and k=256, >= 20x faster than the faster
of scikit-learn and faiss, at an inertia <= theirs. The headline ratio compares
``fit_codebook(x, k, method="lloyd", max_iter=20, tol=0)`` (the peers' 20 iterations) with the
fastest peer run that uses every value (scikit-learn; faiss without sub-sampling, default init
and k-means++ init), and requires our inertia <= that run's. faiss's default sub-samples to
max_points_per_centroid * k = 256 k values; those runs are shown beside every other peer run
(ratio of time and of inertia), not in the headline: they solve a smaller problem.

Data: 1,000,000 Laplace(0, 1) values, float32, fixed seed. k = 16 and 256. ``--quick`` (a smoke
test, well under a minute): 200,000 values, one timed run each, no scikit-learn "Lloyd alone"
row, no seed spread, the optimum only when estimated under 2 s, memory of Lloyd only.

Every library on 2 threads: ``n_threads=2`` for matcompress, ``threadpoolctl.threadpool_limits(2)``
around everything (scikit-learn's OpenMP and BLAS), ``faiss.omp_set_num_threads(2)``.

- matcompress: Lloyd for 20 iterations (tol=0), Lloyd with the default tol/max_iter (to
  convergence), and the exact optimum (method="optimal"). The optimum costs O(k m log m) for m
  distinct values, serial; its time is estimated first (a run on 65,536 values scaled by
  n log n, doubled when the split points exceed the 256 MiB memory bound and are recomputed) and
  the run is skipped when the estimate exceeds --optimal-budget (default 90 s; 2 s with --quick).
- faiss: ``faiss.Kmeans(1, k, niter=20, seed=SEED)``, with its default sub-sampling
  (max_points_per_centroid=256) and with max_points_per_centroid = ceil(n / k) (every value
  used), each with the default init (random values) and with
  ``init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS`` (when the installed faiss has it;
  otherwise the report says so). faiss's own objective is on its sample and before its last
  update: it is printed for reference only.
- scikit-learn: ``KMeans(n_clusters=k, n_init=1, max_iter=20, tol=0, random_state=SEED)`` on the
  values as (n, 1). Its k-means++ seeding is timed on its own
  (``sklearn.cluster.kmeans_plusplus`` on the centred values with the same random_state: KMeans
  centres the data first, so these are exactly its seeds), and so is Lloyd alone from those seeds
  (``KMeans(init=seeds)``, which reproduces the KMeans result). matcompress Lloyd from those same
  seeds (``init=``) is timed too: with the same start, the inertia should match scikit-learn's.

Inertia: for every result the same way, after the timings: the sum over all n values of the
squared distance to the nearest codebook entry, in float64. It is printed as a ratio to the
lowest inertia in the run (the exact optimum when it ran). Each row also shows the minor page
faults of this process per timed call (getrusage).

Timing: time.perf_counter. The fast runs (matcompress Lloyd, faiss) are interleaved in rounds
(5 rounds; 1 with --quick), so a slow spell of the host hits every library; in a round each gets
one call (matcompress: repeated until 0.1 s is spent), after one warm-up call per case on a small
input. Each counts its best time. scikit-learn's runs are slow: they run back to back, up to 3
per row, one more only while the total would stay under 40 s (1 with --quick). Before each library's
timings the script pauses 0.3 s and waits for other processes to leave the CPU (up to --wait-idle
seconds in all; default 120, 5 with --quick), and it reports the cores other processes kept busy
while each row was timed ("other load", flagged above 0.15 cores): the machines here are shared.
Helpers come from bench/omp.py.

Seed spread (untimed, after the timings; --seeds N, default 5): the recomputed inertia of
matcompress Lloyd (2N seeds), faiss on all values (N seeds per init) and scikit-learn KMeans (N
seeds, fewer if they would take over 45 s), seeds SEED + i: whether the one timed seed's
"inertia <= theirs" is luck.

"Where the time goes" times fit_codebook's parts in the same run, interleaved in 7 rounds (best
of each, with page faults and user/system CPU per call from getrusage): on pre-sorted vs shuffled
input, with max_iter=1, with n_codes=1 (the fixed cost: sort, merge of equal values, prefix sums,
codes), on one thread, and numpy's sort and argsort of the same values for reference. Then
fit_codebook in fresh processes, with glibc malloc's defaults and with GLIBC_TUNABLES that make
malloc keep freed memory: the share of a call spent page-faulting its working memory in.

Peak memory of ``fit_codebook`` is measured in a fresh process per call: the peak RSS is reset
just before the call (``/proc/self/clear_refs`` <- 5) and read from ``VmHWM`` after it; the figure
is that peak minus the RSS before the call, against input + output bytes (DESIGN.md §7: < 2x).

Importable: ``run(quick=False, out=None, memory=True, wait_idle=None, optimal_budget=None,
seeds=None, cases=CASES) -> dict``, ``format_report(result) -> str`` and ``main(argv=None)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

try:  # part of a package (bench/ on a path as a package)
    from . import omp as _ob
except ImportError:  # run as a script: bench/ is sys.path[0]; or imported with bench/ on the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import omp as _ob

__all__ = ["CASES", "RUNNERS", "run", "format_report", "main", "make_values", "inertia_1d"]

SEED = _ob.SEED
THREADS = 2
N_ITER = 20  # the peers' iterations, and ours in the headline row
TARGET_SPEEDUP = 20.0  # >= 20x the faster of scikit-learn and faiss ...
# ... at an inertia <= theirs (compared as float64 sums; no tolerance)
TARGET_MEMORY = 2.0  # peak extra memory < 2x (input + output)
BUSY_CORES = _ob.BUSY_CORES

ROUNDS, ROUNDS_QUICK = 5, 1  # rounds of the fast (interleaved) runs
ANATOMY_ROUNDS = 7  # rounds of the "where the time goes" calls (1 with --quick)
OUR_MIN_TIME = 0.1  # matcompress: calls per round until this many seconds are spent (<= 10)
SK_MAX_RUNS, SK_BUDGET = 3, 40.0  # scikit-learn: one more run while the total stays < SK_BUDGET s
OPTIMAL_BUDGET, OPTIMAL_BUDGET_QUICK = 90.0, 2.0  # seconds an optimal run may be estimated at
OPTIMAL_PROBE = 65_536  # values of the probe run that estimates the optimal method's time
OPTIMAL_MEMORY_BUDGET = 256 * 2**20  # fit_codebook's bound for the split points (kmeans.cc)
SEEDS = 5  # seed spread (untimed): seeds per peer configuration; matcompress gets 2x as many
SK_SEED_BUDGET = 45.0  # scikit-learn: only as many seeds as fit in this many seconds (>= 1)

_say = _ob._say
_met = _ob._met
_table = _ob._table


class Case(NamedTuple):
    name: str
    kind: str  # "scalar" (1-D); "block" to come with the block k-means
    k: int
    n: int
    n_quick: int
    dim: int = 1


CASES = (
    Case("1-D, k=16", "scalar", 16, 1_000_000, 200_000),
    Case("1-D, k=256", "scalar", 256, 1_000_000, 200_000),
    # block cases, to come: Case("blocks 4-D, k=256", "block", 256, 500_000, ..., dim=4),
    #                       Case("blocks 16-D, k=1024", "block", 1024, 100_000, ..., dim=16)
)


# --------------------------------------------------------------------------------------------
# data, inertia


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


def check_codes_1d(x, codebook, codes):
    """Values whose code is not (one of) their nearest entries, and the largest excess of the
    squared error over the nearest entry's (0 when every code is nearest)."""
    v = np.asarray(x, dtype=np.float64).ravel()
    cb = np.asarray(codebook, dtype=np.float64)
    err = (v - cb[np.asarray(codes).ravel().astype(np.int64)]) ** 2
    s = np.sort(cb)
    i = np.searchsorted(s, v)
    best = np.minimum((v - s[np.maximum(i - 1, 0)]) ** 2, (v - s[np.minimum(i, s.size - 1)]) ** 2)
    excess = err - best
    return int(np.count_nonzero(excess > 0)), float(excess.max(initial=0.0))


# --------------------------------------------------------------------------------------------
# one timed configuration


def _minor_faults():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Row:
    """One library configuration: timed calls (best counts), other load, and its result.
    `fit` returns (centroids, info dict); centroids are kept from the first timed call and
    every later call's are compared with them."""

    def __init__(self, library, label, fit, params, *, target_ref=False, subsampled=False):
        self.library, self.label, self.fit, self.params = library, label, fit, params
        self.target_ref, self.subsampled = target_ref, subsampled
        self.times, self.load, self.faults = [], _ob.ForeignLoad(), []
        self.centroids = self.info = None
        self.deterministic = True
        self.skipped = None

    def call(self, min_time=0.0, max_calls=10):
        total, calls = 0.0, 0
        while calls == 0 or (total < min_time and calls < max_calls):
            f0 = _minor_faults()
            with self.load:
                t0 = time.perf_counter()
                c, info = self.fit()
                dt = time.perf_counter() - t0
            self.faults.append(_minor_faults() - f0)
            c = np.sort(np.asarray(c, dtype=np.float64).ravel())
            if self.centroids is None:
                self.centroids, self.info = c, info
            elif not np.array_equal(c, self.centroids):
                self.deterministic = False
            self.times.append(dt)
            total, calls = total + dt, calls + 1
        return dt

    @property
    def seconds(self):
        return min(self.times) if self.times else None


# --------------------------------------------------------------------------------------------
# peers


def _import_faiss():
    try:
        import faiss

        return faiss, None
    except Exception as e:  # noqa: BLE001 - any import failure means "skip"
        return None, f"faiss not importable ({type(e).__name__}: {e})"


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


def faiss_rows(faiss, x, k, kpp):
    n = x.size
    X = np.ascontiguousarray(x.reshape(-1, 1))
    all_points = -(-n // k)  # faiss sub-samples when n > k * max_points_per_centroid
    default_mppc = faiss.ClusteringParameters().max_points_per_centroid
    rows = []
    inits = [("default init", None)] + ([("k-means++ init", kpp)] if kpp is not None else [])
    for init_name, init in inits:
        for mppc, sub in ((default_mppc, n > default_mppc * k), (all_points, False)):
            kw = dict(niter=N_ITER, seed=SEED, max_points_per_centroid=mppc)
            if init is not None:
                kw["init_method"] = init

            def fit(kw=kw):
                km = faiss.Kmeans(1, k, **kw)
                km.train(X)
                return km.centroids, dict(n_iter=len(km.obj),
                                          reported=float(km.obj[-1]) if len(km.obj) else None)

            sample = (f"sample of {mppc * k:,} values" if sub else "all values")
            params = (f"Kmeans(1, {k}, niter={N_ITER}), {init_name}, "
                      f"max_points_per_centroid={mppc}: {sample}")
            rows.append(Row("faiss", f"{init_name}, {sample}", fit, params,
                            target_ref=not sub, subsampled=sub))
    return rows


def sklearn_rows(x, k, lloyd_alone=True):
    from sklearn.cluster import KMeans, kmeans_plusplus

    X = x.reshape(-1, 1)
    mean = X.mean(axis=0)  # KMeans centres the data (in float32, as here) before seeding
    Xc = X - mean
    seeds = {}

    def fit_full():
        km = KMeans(n_clusters=k, n_init=1, max_iter=N_ITER, tol=0.0, random_state=SEED).fit(X)
        return km.cluster_centers_, dict(n_iter=int(km.n_iter_), reported=float(km.inertia_))

    def fit_seeding():
        c, _ = kmeans_plusplus(Xc, k, random_state=SEED)
        seeds["c"] = c
        return c + mean, dict(n_iter=0)

    def fit_lloyd():
        if "c" not in seeds:
            fit_seeding()
        km = KMeans(n_clusters=k, n_init=1, max_iter=N_ITER, tol=0.0,
                    init=seeds["c"] + mean).fit(X)
        return km.cluster_centers_, dict(n_iter=int(km.n_iter_), reported=float(km.inertia_))

    rows = [
        Row("scikit-learn", "KMeans (k-means++ seeding + Lloyd)", fit_full,
            f"KMeans(n_clusters={k}, n_init=1, max_iter={N_ITER}, tol=0)", target_ref=True),
        Row("scikit-learn", "k-means++ seeding alone", fit_seeding,
            f"kmeans_plusplus(X - mean, {k}) (KMeans's own seeds)"),
    ]
    if lloyd_alone:
        rows.append(Row("scikit-learn", "Lloyd alone, from those seeds", fit_lloyd,
                        f"KMeans(init=seeds, n_init=1, max_iter={N_ITER}, tol=0)"))
    return rows, (lambda: None if "c" not in seeds else (seeds["c"] + mean).ravel())


# --------------------------------------------------------------------------------------------
# matcompress


def our_row(x, k, label, **kw):
    import matcompress

    kw = dict(kw, random_state=SEED, n_threads=THREADS)
    last = {}

    def fit():
        cb, codes, inertia = matcompress.fit_codebook(x, k, **kw)
        last.update(codebook=cb, codes=codes)
        return cb, dict(reported=inertia)

    params = "fit_codebook(x, k, " + ", ".join(
        f"{a}={v!r}" for a, v in kw.items() if a not in ("random_state", "n_threads")) + ")"
    row = Row("matcompress", label, fit, params)
    row.last = last
    return row


def our_n_iter(x, k, **kw):
    """Lloyd iterations of fit_codebook(x, k, random_state=SEED, **kw), from the native call
    behind it (fit_codebook does not return them; private API, for the report only)."""
    try:
        from matcompress import _core

        seed = int(np.random.default_rng(SEED).integers(0, 2**63 - 1))  # as fit_codebook
        r = _core.kmeans_1d_f32(x.ravel(), None, k, None, kw.get("method", "lloyd"),
                                kw.get("max_iter", 100), kw.get("tol", 1e-6), seed, 1, THREADS)
        return int(r[3]), int(r[4]), np.sort(np.asarray(r[0], dtype=np.float64))
    except Exception:  # noqa: BLE001 - the report then shows no iteration count
        return None, None, None


def estimate_optimal_seconds(x, k):
    """Seconds fit_codebook(method="optimal") would take on x, from a run on OPTIMAL_PROBE
    values scaled by n log n (x2 when the split points exceed the memory bound)."""
    import matcompress

    n = x.size
    p = min(n, OPTIMAL_PROBE)
    probe = x[:p]
    matcompress.fit_codebook(probe[:4096], min(k, 4096), method="optimal", n_threads=THREADS)
    t0 = time.perf_counter()
    matcompress.fit_codebook(probe, k, method="optimal", n_threads=THREADS)
    t = time.perf_counter() - t0
    if p == n:
        return t, t
    est = t * (n / p) * (math.log2(n) / math.log2(p))
    if 4.0 * k * n > OPTIMAL_MEMORY_BUDGET:  # blocks of layers recomputed while backtracking
        est *= 2.0
    return est, t


# --------------------------------------------------------------------------------------------
# peak memory, in a fresh process

_MEMORY_CHILD = _ob.PEAK_RSS_HELPERS + r"""
import json, sys
a = json.loads(sys.argv[1])
sys.path.insert(0, a["bench_dir"])
import numpy as np
import matcompress
from kmeans import make_values

x = make_values(a["n"])
kw = dict(a["kw"], random_state=a["seed"], n_threads=a["threads"])
matcompress.fit_codebook(x[:4096], a["k"], **kw)  # threads started, code paged in
release_freed_memory()
before, peak_before, method = start_peak()
codebook, codes, inertia = matcompress.fit_codebook(x, a["k"], **kw)
peak_after = maxrss()
import hashlib
from matcompress import _core
with open(_core.__file__, "rb") as f:
    native = hashlib.sha256(f.read()).hexdigest()[:12]
print(json.dumps(dict(before=before, peak_before=peak_before, peak_after=peak_after,
                      in_bytes=x.nbytes, out_bytes=codebook.nbytes + codes.nbytes,
                      codes_dtype=codes.dtype.name, method=method, native=native)))
"""


def measure_memory(n, k, kw, timeout=900):
    """Peak extra RSS of one fit_codebook call, in a fresh interpreter."""
    args = dict(n=n, k=k, kw=kw, seed=SEED, threads=THREADS,
                bench_dir=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout)
    res = dict(n=n, k=k, kw=kw)
    if proc.returncode != 0:
        res["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return res
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = m["peak_after"] - m["before"]
    res.update(before=m["before"], peak=m["peak_after"], peak_extra=extra,
               in_bytes=m["in_bytes"], out_bytes=m["out_bytes"], codes_dtype=m["codes_dtype"],
               ratio=extra / (m["in_bytes"] + m["out_bytes"]), how=m["method"],
               resolved=m["peak_after"] > m["peak_before"], native=m["native"])
    return res


# --------------------------------------------------------------------------------------------
# the 1-D case


def seed_spread(x, k, seeds, faiss, kpp, sk_seconds, out):
    """Inertia (recomputed) of each configuration over several seeds, untimed: whether one
    seed's inertia comparison is luck. Seeds SEED + i; i = 0 is the timed run's seed."""
    import matcompress

    configs = []
    for label, kw in ((f"Lloyd, {N_ITER} iterations (tol=0)",
                       dict(method="lloyd", max_iter=N_ITER, tol=0.0)),
                      ("Lloyd to convergence (default tol, max_iter)", dict(method="lloyd"))):
        configs.append(("matcompress", label, 2 * seeds, lambda s, kw=kw: matcompress.fit_codebook(
            x, k, random_state=s, n_threads=THREADS, **kw)[0]))
    if faiss is not None:
        X = np.ascontiguousarray(x.reshape(-1, 1))
        for init_name, init in [("default init", None)] + (
                [("k-means++ init", kpp)] if kpp is not None else []):
            def fit(s, init=init):
                kw = dict(niter=N_ITER, seed=s, max_points_per_centroid=-(-x.size // k))
                if init is not None:
                    kw["init_method"] = init
                km = faiss.Kmeans(1, k, **kw)
                km.train(X)
                return km.centroids
            configs.append(("faiss", f"{init_name}, all values", seeds, fit))
    from sklearn.cluster import KMeans

    n_sk = max(1, min(seeds, int(SK_SEED_BUDGET // max(sk_seconds, 1e-9))))
    configs.append(("scikit-learn", "KMeans (k-means++ seeding + Lloyd)", n_sk,
                    lambda s: KMeans(n_clusters=k, n_init=1, max_iter=N_ITER, tol=0.0,
                                     random_state=s).fit(x.reshape(-1, 1)).cluster_centers_))
    spread = []
    for lib, label, n_seeds, fit in configs:
        inertias = [inertia_1d(x, fit(SEED + i)) for i in range(n_seeds)]
        spread.append(dict(library=lib, label=label, seeds=n_seeds, inertias=inertias))
        _say(out, f"  seeds: {lib} {label}: {n_seeds} seeds, inertia {min(inertias):.6g} .. "
                  f"{max(inertias):.6g}")
    return spread


def _interleaved(items, rounds, settle):
    """items: (label, fn). One warm-up call each, then `rounds` rounds of one call each (so a
    slow spell of the host hits them all); per item the best wall time and the mean minor page
    faults, user and system CPU seconds (this process, every thread) and wall time per call."""
    import resource

    settle()
    for _, fn in items:
        fn()
    acc = {w: dict(seconds=math.inf, calls=0, faults=0.0, user=0.0, sys=0.0, wall=0.0)
           for w, _ in items}
    for _ in range(rounds):
        settle()
        for w, fn in items:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            a = acc[w]
            a["seconds"] = min(a["seconds"], dt)
            a["calls"] += 1
            a["faults"] += r1.ru_minflt - r0.ru_minflt
            a["user"] += r1.ru_utime - r0.ru_utime
            a["sys"] += r1.ru_stime - r0.ru_stime
            a["wall"] += dt
    out = []
    for w, _ in items:
        a = acc[w]
        out.append(dict(what=w, seconds=a["seconds"], calls=a["calls"],
                        **{key: a[key] / a["calls"] for key in ("faults", "user", "sys", "wall")}))
    return out


_MALLOC_CHILD = r"""
import json, resource, sys, time
a = json.loads(sys.argv[1])
sys.path.insert(0, a["bench_dir"])
import matcompress
from kmeans import make_values

x = make_values(a["n"])
kw = dict(method="lloyd", max_iter=a["max_iter"], tol=0.0, random_state=a["seed"],
          n_threads=a["threads"])
calls = []
for _ in range(a["calls"]):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    matcompress.fit_codebook(x, a["k"], **kw)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    calls.append(dict(seconds=dt, faults=r1.ru_minflt - r0.ru_minflt,
                      user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime))
print(json.dumps(calls))
"""

# glibc frees blocks this large back to the kernel (mmap / heap trimming), so each call page-faults
# its working memory in again; these tunables make malloc keep freed memory instead.
KEEP_HEAP_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"


def malloc_anatomy(n, k, settle, calls=6):
    """fit_codebook (Lloyd, 20 iterations) in fresh processes: glibc malloc's defaults vs
    malloc keeping freed memory (GLIBC_TUNABLES): how much of a call is page faults."""
    out = []
    args = dict(n=n, k=k, max_iter=N_ITER, seed=SEED, threads=THREADS, calls=calls,
                bench_dir=os.path.dirname(os.path.abspath(__file__)))
    for label, tun in (("glibc malloc defaults", None),
                       ("malloc keeps freed memory (GLIBC_TUNABLES)", KEEP_HEAP_TUNABLES)):
        env = dict(os.environ)
        if tun:
            env["GLIBC_TUNABLES"] = ":".join(x for x in (env.get("GLIBC_TUNABLES"), tun) if x)
        settle()
        proc = subprocess.run([sys.executable, "-c", _MALLOC_CHILD, json.dumps(args)], env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            out.append(dict(what=f"fresh process, {label}",
                            error=(proc.stderr.strip().splitlines() or ["?"])[-1]))
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        first, later = r[0], r[1:]
        out.append(dict(what=f"fresh process, {label}: first call", seconds=first["seconds"],
                        calls=1, faults=first["faults"], user=first["user"], sys=first["sys"],
                        wall=first["seconds"]))
        if later:
            out.append(dict(
                what=f"fresh process, {label}: calls 2-{len(r)}",
                seconds=min(c["seconds"] for c in later), calls=len(later),
                faults=sum(c["faults"] for c in later) / len(later),
                user=sum(c["user"] for c in later) / len(later),
                sys=sum(c["sys"] for c in later) / len(later),
                wall=sum(c["seconds"] for c in later) / len(later)))
    return out


def anatomy_1d(x, k, quick, settle):
    """Times of fit_codebook's parts (see the module docstring)."""
    import matcompress

    reps = 1 if quick else ANATOMY_ROUNDS
    fc = matcompress.fit_codebook
    base = dict(method="lloyd", max_iter=N_ITER, tol=0.0, random_state=SEED)
    xs = np.sort(x)
    items = [
        ("fit_codebook Lloyd 20 iters, shuffled input (as above)",
         lambda: fc(x, k, n_threads=THREADS, **base)),
        ("same, input pre-sorted ascending", lambda: fc(xs, k, n_threads=THREADS, **base)),
        ("same, max_iter=1", lambda: fc(x, k, n_threads=THREADS, **dict(base, max_iter=1))),
        ("same, 1 thread", lambda: fc(x, k, n_threads=1, **base)),
        ("fit_codebook n_codes=1 (fixed cost: sort, merge, prefix sums, codes)",
         lambda: fc(x, 1, n_threads=THREADS, **base)),
        ("numpy: np.sort(x) (float32)", lambda: np.sort(x)),
        ("numpy: np.argsort(x, kind='stable')", lambda: np.argsort(x, kind="stable")),
    ]
    return _interleaved(items, reps, settle) + malloc_anatomy(x.size, k, settle,
                                                             calls=3 if quick else 6)


def run_scalar_case(case, *, quick, out, settle, optimal_budget, faiss, kpp, seeds):
    from threadpoolctl import threadpool_limits

    import matcompress

    n, k = (case.n_quick if quick else case.n), case.k
    x = make_values(n)
    m_distinct = int(np.unique(x).size)
    res = dict(case=case.name, kind=case.kind, k=k, n=n, n_distinct=m_distinct, rows=[],
               notes=[])
    _say(out, f"{case.name}: {n:,} Laplace float32 values ({m_distinct:,} distinct), k={k}")
    rounds = ROUNDS_QUICK if quick else ROUNDS

    with threadpool_limits(limits=THREADS):
        if faiss is not None:
            faiss.omp_set_num_threads(THREADS)
        ours = [
            our_row(x, k, f"Lloyd, {N_ITER} iterations (tol=0)", method="lloyd",
                    max_iter=N_ITER, tol=0.0),
            our_row(x, k, "Lloyd to convergence (default tol, max_iter)", method="lloyd"),
        ]
        peers_fast = faiss_rows(faiss, x, k, kpp) if faiss is not None else []

        # ---- warm-up on a small input (threads started, code paged in), then the rounds
        settle()
        small = x[: max(20_000, 64 * k)]
        matcompress.fit_codebook(small, k, n_threads=THREADS, random_state=SEED,
                                 method="lloyd", max_iter=2)
        if faiss is not None:
            faiss.Kmeans(1, k, niter=2, seed=SEED).train(np.ascontiguousarray(small[:, None]))
        for rnd in range(rounds):
            line = []
            for row in ours + peers_fast:
                settle()
                row.call(min_time=OUR_MIN_TIME if row.library == "matcompress" else 0.0)
                line.append(f"{row.library} {row.label}: {row.times[-1]:.3f} s")
            _say(out, f"  round {rnd + 1}/{rounds}: " + "; ".join(line))

        # ---- the exact optimum: estimated first, skipped above the budget
        est, probe_t = estimate_optimal_seconds(x, k)
        opt = our_row(x, k, "exact optimum (method='optimal')", method="optimal")
        res["optimal_estimate"] = est
        if est > optimal_budget:
            opt.skipped = (f"skipped: estimated at {est:.0f} s (probe: {probe_t:.2f} s on "
                           f"{min(n, OPTIMAL_PROBE):,} values, scaled by n log n"
                           + (", x2 for recomputed split points" if 4.0 * k * n
                              > OPTIMAL_MEMORY_BUDGET else "")
                           + f") > budget {optimal_budget:.0f} s (--optimal-budget)")
            _say(out, f"  matcompress optimal {opt.skipped}")
        else:
            reps = 1 if (quick or est > 10) else 3
            settle()
            for _ in range(reps):
                opt.call()
            _say(out, f"  matcompress optimal: {opt.seconds:.3f} s (estimated {est:.2f} s; "
                      f"{reps} run{'s' if reps > 1 else ''})")
        ours.append(opt)

        # ---- scikit-learn: back to back, fewer runs
        sk, sk_seeds = sklearn_rows(x, k, lloyd_alone=not quick)
        settle()
        from sklearn.cluster import KMeans

        KMeans(n_clusters=k, n_init=1, max_iter=2, tol=0.0, random_state=SEED).fit(
            small.reshape(-1, 1))  # warm-up
        for row in sk:
            settle()
            while True:
                row.call()
                if (quick or len(row.times) >= SK_MAX_RUNS
                        or sum(row.times) + row.times[-1] > SK_BUDGET):
                    break
            _say(out, f"  scikit-learn {row.label}: {row.seconds:.3f} s "
                      f"(runs: {', '.join(f'{t:.3f}' for t in row.times)})")

        # ---- our Lloyd from scikit-learn's seeds: the same iterations (a check of Lloyd)
        same = our_row(x, k, f"Lloyd, {N_ITER} iterations, from scikit-learn's seeds (init=)",
                       method="lloyd", init=sk_seeds(), max_iter=N_ITER, tol=0.0)
        same.params = (f"fit_codebook(x, k, method='lloyd', init=<scikit-learn's seeds>, "
                       f"max_iter={N_ITER}, tol=0.0)")
        settle()
        for _ in range(1 if quick else 3):
            same.call()

        # ---- where the time goes
        res["anatomy"] = anatomy_1d(x, k, quick, settle)

        # ---- inertia over seeds (untimed)
        if seeds:
            res["spread"] = seed_spread(x, k, seeds, faiss, kpp, sk[0].seconds, out)

    # ---- inertia, the same way for everyone, after the timings
    rows = ours + peers_fast + sk + [same]
    for row in rows:
        d = dict(library=row.library, label=row.label, params=row.params,
                 target_ref=row.target_ref, subsampled=row.subsampled, skipped=row.skipped)
        if row.skipped is None:
            d.update(seconds=row.seconds, times=row.times, runs=len(row.times),
                     inertia=inertia_1d(x, row.centroids), deterministic=row.deterministic,
                     n_iter=(row.info or {}).get("n_iter"),
                     reported=(row.info or {}).get("reported"), foreign_load=row.load.cores,
                     n_centroids=row.centroids.size,
                     faults=float(np.median(row.faults)) if row.faults else None,
                     n_unique=int(np.unique(row.centroids).size))
            if not row.deterministic:
                res["notes"].append(f"{case.name}: {row.library} {row.label}: repeated runs gave "
                                    "different centroids (the best time's run may not be the "
                                    "one scored)")
        res["rows"].append(d)
    best = min(r["inertia"] for r in res["rows"] if "inertia" in r)
    res["best_inertia"] = best
    for r in res["rows"]:
        if "inertia" in r:
            r["inertia_ratio"] = r["inertia"] / best

    # ---- checks of matcompress's results (codes nearest, reported inertia = recomputed)
    for row, d in zip(ours, res["rows"]):
        if row.skipped is not None:
            continue
        cb, codes = row.last["codebook"], row.last["codes"]
        bad, excess = check_codes_1d(x, cb, codes)
        rel = abs(d["reported"] - d["inertia"]) / max(d["inertia"], 1e-300)
        d["check"] = dict(codes_not_nearest=bad, max_excess=excess, reported_rel_diff=rel,
                          codes_dtype=codes.dtype.name,
                          ascending=bool(np.all(np.diff(cb.astype(np.float64)) >= 0)))
        if bad or rel > 1e-6 or not d["check"]["ascending"]:
            res["notes"].append(f"{case.name}: matcompress {row.label}: CHECK FAILED: {bad} codes "
                                f"not nearest (max excess {excess:.3g}), reported inertia off "
                                f"by {rel:.2g} relative, ascending={d['check']['ascending']}")
    for row, d, kw in zip(ours[:2], res["rows"][:2],
                          (dict(method="lloyd", max_iter=N_ITER, tol=0.0), dict(method="lloyd"))):
        it, _, cb = our_n_iter(x, k, **kw)
        if it is not None and np.array_equal(cb, row.centroids):  # the same run
            d["n_iter"] = it
    opt_row = res["rows"][2]
    if "inertia" in opt_row:
        worse = [r for r in res["rows"] if "inertia" in r and r["inertia"] < opt_row["inertia"]
                 * (1 - 1e-9)]
        if worse:
            res["notes"].append(
                f"{case.name}: BUG? the exact optimum's inertia {opt_row['inertia']:.6g} is above "
                + ", ".join(f"{r['library']} {r['label']} {r['inertia']:.6g}" for r in worse))

    # ---- targets: Lloyd (20 iterations) against the peers
    lloyd20 = res["rows"][0]
    refs = [r for r in res["rows"] if r["target_ref"] and "seconds" in r]
    res["targets"] = []
    if refs:
        ref = min(refs, key=lambda r: r["seconds"])
        speed = ref["seconds"] / lloyd20["seconds"]
        inertia_ok = lloyd20["inertia"] <= ref["inertia"]
        res["headline"] = dict(ref=f"{ref['library']} {ref['label']}", ref_seconds=ref["seconds"],
                               ref_inertia=ref["inertia"], seconds=lloyd20["seconds"],
                               inertia=lloyd20["inertia"], speedup=speed,
                               inertia_ratio=lloyd20["inertia"] / ref["inertia"],
                               met=speed >= TARGET_SPEEDUP and inertia_ok,
                               speed_met=speed >= TARGET_SPEEDUP, inertia_met=inertia_ok)
    for ours_d in res["rows"][:2]:
        for r in res["rows"]:
            if r["library"] == "matcompress" or "seconds" not in r:
                continue
            speed = r["seconds"] / ours_d["seconds"]
            res["targets"].append(dict(
                ours=ours_d["label"], peer=f"{r['library']} {r['label']}",
                headline_ref=r["target_ref"], speedup=speed,
                inertia_ratio=ours_d["inertia"] / r["inertia"],
                met=speed >= TARGET_SPEEDUP and ours_d["inertia"] <= r["inertia"]))
    for r in res["rows"]:
        if "seconds" in r:
            _say(out, f"  {r['library']:<12} {r['label']:<55} {r['seconds']:8.3f} s  "
                      f"inertia {r['inertia']:.6g} ({r['inertia_ratio']:.4f}x best)  "
                      f"other load {_fmt_load(r['foreign_load'])}")
    h = res.get("headline")
    if h:
        _say(out, f"  target: {h['speedup']:.1f}x {h['ref']} ({_fmt_s(h['ref_seconds'])}), inertia "
                  f"{h['inertia_ratio']:.4f}x its: {_met(h['met'])}")
    return res


RUNNERS = {"scalar": run_scalar_case}  # "block": run_block_case, with the block k-means


# --------------------------------------------------------------------------------------------
# the benchmark


def _native_state():
    """Path, mtime and sha256 prefix of the native module being measured."""
    try:
        from matcompress import _core

        path = _core.__file__
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        mtime = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(path)))
        return dict(path=path, mtime=mtime, sha256=digest)
    except Exception as e:  # noqa: BLE001
        return dict(error=str(e))


def run(quick=False, out=None, memory=True, wait_idle=None, optimal_budget=None, seeds=None,
        cases=CASES):
    """Every case; returns dict(cases=[...], memory=[...], notes=[...], ...).

    `out`: a text stream for progress lines (None: silent). `wait_idle`: seconds the run may
    spend, in all, waiting for other processes to leave the CPU before a timing (default 120,
    or 10 with `quick`). `optimal_budget`: seconds the exact optimum may be estimated to take
    (default 90, or 10 with `quick`)."""
    settle = _ob.Settler((5.0 if quick else 120.0) if wait_idle is None else wait_idle)
    if seeds is None:
        seeds = 0 if quick else SEEDS
    if optimal_budget is None:
        optimal_budget = OPTIMAL_BUDGET_QUICK if quick else OPTIMAL_BUDGET
    res = dict(quick=quick, threads=THREADS, cases=[], memory=[], notes=[],
               optimal_budget=optimal_budget, native_before=_native_state())
    faiss, why = _import_faiss()
    kpp = None
    if faiss is None:
        res["notes"].append(why)
        _say(out, f"faiss skipped: {why}")
    else:
        kpp, how = faiss_kpp_method(faiss)
        res["faiss_kpp"] = how
        _say(out, how)
    if quick:
        res["notes"].append("--quick: fewer values, one timed run per library: a smoke test")
    for case in cases:
        waited = settle.waited
        c = RUNNERS[case.kind](case, quick=quick, out=out, settle=settle,
                               optimal_budget=optimal_budget, faiss=faiss, kpp=kpp,
                               seeds=seeds)
        c["waited_for_idle_s"] = settle.waited - waited
        res["cases"].append(c)
        res["notes"].extend(c["notes"])
    loads = [r["foreign_load"] for c in res["cases"] for r in c["rows"]
             if r.get("foreign_load") is not None]
    if loads and max(loads) > BUSY_CORES:
        res["notes"].append(f"other processes kept up to {max(loads):.2f} cores busy during some "
                            "timings (see the 'other load' column): those figures are unreliable")
    if settle.waited > 0:
        res["notes"].append(f"waited {settle.waited:.0f} s in all for other processes to leave "
                            "the CPU")

    if memory:
        for c in res["cases"]:
            if c["kind"] != "scalar":
                continue
            kws = [dict(method="lloyd", max_iter=N_ITER, tol=0.0)]
            opt = c["rows"][2]
            if not opt["skipped"] and not quick:
                kws.append(dict(method="optimal"))
            for kw in kws:
                m = measure_memory(c["n"], c["k"], kw)
                m["case"] = c["case"]
                res["memory"].append(m)
                if "error" in m:
                    _say(out, f"memory {c['case']} {kw}: failed: {m['error']}")
                else:
                    _say(out, f"memory {c['case']} {kw['method']}: peak extra "
                              f"{m['peak_extra'] / 2**20:.1f} MiB for "
                              f"{(m['in_bytes'] + m['out_bytes']) / 2**20:.1f} MiB in+out "
                              f"({m['ratio']:.1f}x)")
    loaded = res["native_before"].get("sha256")
    other = sorted({m["native"] for m in res["memory"] if m.get("native") not in (None, loaded)})
    if other:
        res["notes"].append(f"the peak-memory processes loaded another build of the native "
                            f"module (sha256 {', '.join(other)}…) than the timings "
                            f"({loaded}…)")
    res["native_after"] = _native_state()
    if res["native_after"] != res["native_before"]:
        res["notes"].append(f"THE NATIVE MODULE CHANGED DURING THE RUN (before: "
                            f"{res['native_before']}, after: {res['native_after']}): the figures "
                            "mix two builds")
    return res


# --------------------------------------------------------------------------------------------
# reporting


def _fmt_s(v):
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1e3:.1f} ms"
    return f"{v:.2f} s" if v < 100 else f"{v:.0f} s"


def _fmt_load(v):
    return "-" if v is None else f"{v:.2f}"


def _fmt_x(v):
    return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def format_report(res):
    """The result tables as markdown (padded, so they read well in a terminal too)."""
    parts = []
    T = res["threads"]
    for c in res["cases"]:
        head = ["library", "configuration", "time (best)", "runs", "iterations", "inertia",
                "/ lowest", "page faults per call", "other load"]
        body = []
        for r in c["rows"]:
            if r.get("skipped"):
                body.append([r["library"], r["label"], r["skipped"], "-", "-", "-", "-", "-",
                             "-"])
                continue
            it = "-" if r["n_iter"] is None else str(r["n_iter"])
            body.append([r["library"], r["label"], _fmt_s(r["seconds"]), r["runs"], it,
                         f"{r['inertia']:.6g}", f"{r['inertia_ratio']:.4f}",
                         "-" if r.get("faults") is None else f"{r['faults']:,.0f}",
                         _fmt_load(r["foreign_load"])])
        parts.append(
            f"### {c['case']}: {c['n']:,} values ({c['n_distinct']:,} distinct), {T} threads\n\n"
            "Inertia recomputed for every result: Σ (x − nearest centroid)² over all values, "
            "in float64; '/ lowest' = ratio to the lowest inertia in this table. Page faults: the "
            "median of the minor page faults of this process per timed call (getrusage). Other "
            "load = cores other processes kept busy while the row was timed (near 0 on an idle "
            "machine; calls under ~50 ms are measured in /proc/stat's 10 ms ticks).\n\n"
            + _table(head, body))

    # targets
    head = ["case", "reference (fastest peer run on all values)", "its time", "matcompress "
            f"Lloyd {N_ITER} iters", f"speed-up (>= {TARGET_SPEEDUP:g}x)",
            "inertia ours / its (<= 1)", "target"]
    body = []
    for c in res["cases"]:
        h = c.get("headline")
        if not h:
            continue
        body.append([c["case"], h["ref"], _fmt_s(h["ref_seconds"]), _fmt_s(h["seconds"]),
                     f"{_fmt_x(h['speedup'])} {_met(h['speed_met'])}",
                     f"{h['inertia_ratio']:.4f} {_met(h['inertia_met'])}", _met(h["met"])])
    parts.append(f"### Target of DESIGN.md §7: >= {TARGET_SPEEDUP:g}x the faster of scikit-learn "
                 "and faiss, at an inertia <= theirs\n\n"
                 "The reference is the fastest of scikit-learn KMeans and faiss (default and "
                 "k-means++ init) on all the values, 20 iterations each, as ours.\n\n"
                 + _table(head, body))

    head = ["case", "matcompress", "peer run", "speed-up", "inertia ours / theirs",
            f">= {TARGET_SPEEDUP:g}x and <= 1"]
    body = []
    for c in res["cases"]:
        for t in c["targets"]:
            peer = t["peer"] + ("" if t["headline_ref"] else " †")
            body.append([c["case"], t["ours"], peer, _fmt_x(t["speedup"]),
                         f"{t['inertia_ratio']:.4f}", "yes" if t["met"] else "no"])
    parts.append("### Against every peer run\n\n"
                 "† not a reference of the target: faiss's default sub-sampling trains on "
                 "max_points_per_centroid·k values only; scikit-learn's seeding or Lloyd alone "
                 "are parts of its KMeans.\n\n" + _table(head, body))

    # seed spread
    for c in res["cases"]:
        if not c.get("spread"):
            continue
        best = c["best_inertia"]
        head = ["library", "configuration", "seeds", "min", "median", "max", "timed seed"]
        body = []
        for sp in c["spread"]:
            v = np.array(sp["inertias"]) / best
            body.append([sp["library"], sp["label"], sp["seeds"], f"{v.min():.4f}",
                         f"{np.median(v):.4f}", f"{v.max():.4f}", f"{v[0]:.4f}"])
        peers = [sp for sp in c["spread"] if sp["library"] != "matcompress"]
        l20 = c["spread"][0]["inertias"]
        lines = []
        for sp in peers:
            wins = sum(a <= b for a in l20 for b in sp["inertias"])
            pairs = len(l20) * len(sp["inertias"])
            lines.append(f"{sp['library']} {sp['label']}: {wins} of {pairs}")
        parts.append(
            f"### Inertia over seeds: {c['case']} (untimed; ratio to the lowest inertia of the "
            f"timed table; seeds {SEED} + i, i = 0 is the timed run)\n\n" + _table(head, body)
            + f"\n\nPairs (our Lloyd {N_ITER}-iteration seed, peer seed) with our inertia <= the "
            "peer's: " + "; ".join(lines) + ".")

    # anatomy
    for c in res["cases"]:
        if not c.get("anatomy"):
            continue
        a = c["anatomy"]
        base = a[0]["seconds"]
        body = [[x["what"], "error", x["error"], "-", "-", "-", "-"] if "error" in x else
                [x["what"], _fmt_s(x["seconds"]), f"{x['seconds'] / base:.2f}",
                 f"{x['faults']:,.0f}", _fmt_s(x["user"]), _fmt_s(x["sys"]), _fmt_s(x["wall"])]
                for x in a]
        parts.append(f"### Where the time goes: {c['case']}, {c['n']:,} values (in-process "
                     f"rows: best of {1 if res['quick'] else ANATOMY_ROUNDS} interleaved "
                     "rounds)\n\n"
                     "Minor page faults and CPU time (user, system; both threads) are means per "
                     "call over the timed calls, from getrusage; 'mean wall' is their mean wall "
                     "time. The first rows run in this process; the 'fresh process' rows in new "
                     "interpreters (Lloyd, 20 iterations), with glibc malloc's defaults and with "
                     f"`GLIBC_TUNABLES={KEEP_HEAP_TUNABLES}` (freed memory stays in the heap).\n\n"
                     + _table(["call", "time (best)", "/ first row", "page faults", "user CPU",
                               "system CPU", "mean wall"], body))

    # checks
    lines = []
    for c in res["cases"]:
        for r in c["rows"]:
            ch = r.get("check")
            if ch:
                lines.append(f"- {c['case']}, {r['label']}: codes not nearest: "
                             f"{ch['codes_not_nearest']}; returned inertia vs recomputed: "
                             f"{ch['reported_rel_diff']:.1e} relative; codebook ascending: "
                             f"{ch['ascending']}; codes {ch['codes_dtype']}")
        fa = [r for r in c["rows"] if r["library"] == "faiss" and r.get("reported") is not None]
        if fa:
            lines.append(f"- {c['case']}, faiss's own last objective / recomputed inertia: "
                         + ", ".join(f"{r['label']} {r['reported'] / r['inertia']:.3f}"
                                     for r in fa))
        few = [r for r in c["rows"] if r.get("n_unique") is not None
               and r["n_unique"] < r["n_centroids"]]
        for r in few:
            lines.append(f"- {c['case']}, {r['library']} {r['label']}: {r['n_unique']} distinct "
                         f"centroids of {r['n_centroids']}")
    if lines:
        parts.append("Checks (matcompress results; peers' own figures):\n" + "\n".join(lines))

    if res["memory"]:
        head = ["case", "call", "input", "output (codebook + codes)", "peak extra",
                f"extra / (input + output) (< {TARGET_MEMORY:g}x)"]
        body = []
        mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
        for m in res["memory"]:
            call = "fit_codebook(" + ", ".join(f"{a}={v!r}" for a, v in m["kw"].items()) + ")"
            if "error" in m:
                body.append([m["case"], call, "-", "-", "error", m["error"]])
                continue
            body.append([m["case"], call, mib(m["in_bytes"]),
                         f"{mib(m['out_bytes'])} ({m['codes_dtype']} codes)",
                         mib(m["peak_extra"]) + ("" if m["resolved"] else " (unresolved)"),
                         f"{m['ratio']:.1f}x {_met(m['ratio'] < TARGET_MEMORY)}"])
        how = next((m["how"] for m in res["memory"] if "how" in m), "?")
        parts.append(f"### Peak memory of `fit_codebook` (fresh process per call; {how})\n\n"
                     + _table(head, body))

    notes = list(res["notes"])
    if res.get("faiss_kpp"):
        notes.append(res["faiss_kpp"])
    if notes:
        parts.append("Notes:\n" + "\n".join(f"- {x}" for x in dict.fromkeys(notes)))
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="200,000 values, one timed run each (< 1 minute)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report as markdown")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--wait-idle", type=float, metavar="SECONDS",
                        help="most time to spend, in all, waiting for other processes to leave "
                             "the CPU before timings (default 120; 5 with --quick)")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help=f"seeds of the untimed inertia spread per peer configuration "
                             f"(default {SEEDS}; 0 with --quick)")
    parser.add_argument("--optimal-budget", type=float, metavar="SECONDS",
                        help="skip method='optimal' when its estimated time exceeds this "
                             f"(default {OPTIMAL_BUDGET:g}; {OPTIMAL_BUDGET_QUICK:g} with --quick)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "bench/kmeans.py"]
                         + (sys.argv[1:] if argv is None else list(argv)))

    import importlib.metadata as md

    t0 = time.perf_counter()
    faiss, _ = _import_faiss()  # so that its thread pools are listed
    header = _ob.format_environment(_ob.environment(), command)
    versions = []
    for dist in ("faiss-cpu", "threadpoolctl"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    header += "\n- " + ", ".join(versions)
    source = _ob.source_state()
    if source:
        header += f"\n- matcompress source: {source}"
    nat = _native_state()
    if "error" not in nat:
        header += f"\n- native module: `{nat['path']}` (modified {nat['mtime']}, sha256 " \
                  f"{nat['sha256']}…)"
    print(header, flush=True)
    print(flush=True)
    res = run(quick=args.quick, out=sys.stdout, memory=not args.no_memory,
              wait_idle=args.wait_idle, optimal_budget=args.optimal_budget, seeds=args.seeds)
    elapsed = time.perf_counter() - t0
    n = res["cases"][0]["n"] if res["cases"] else 0
    _ob.finish(format_report(res), elapsed, args.markdown,
               "## 1-D k-means: `bench/kmeans.py`" + (" (--quick)" if args.quick else ""),
               header, f"{n:,} Laplace(0, 1) values, float32, seed {SEED}")
    return res


if __name__ == "__main__":
    main()
