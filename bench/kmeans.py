"""k-means benchmark: matcompress.fit_codebook against scikit-learn and faiss.

The k-means rows of DESIGN.md §7, every library measured in the same process run, ratios printed
beside their targets (only same-run ratios count: absolute figures move up to 2x between machines
here). Two kinds of case, each entry of CASES dispatched by its ``kind`` through RUNNERS: the
1-D cases ("scalar": 1M values, k=16 and k=256) and the block cases ("block": 500,000 blocks of
4 values, k=256; 100,000 blocks of 16 values, k=1024), described in turn below.

    python bench/kmeans.py [--quick] [--cases KINDS] [--markdown FILE] [--no-memory]
                           [--wait-idle SECONDS] [--optimal-budget SECONDS] [--seeds N]

``--cases``: ``all`` (default), ``scalar``, ``block``, or a comma-separated list of kinds and case
names (e.g. ``--cases "blocks 4-D, k=256"``).

1-D cases
---------

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
Helpers come from ``matcompress.benchmark`` (through bench/omp.py).

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

Block cases
-----------

Targets (DESIGN.md §7): block k-means >= 2x faster than faiss at d <= 8 and >= 1x at d = 16, at
equal inertia (here: ours <= theirs x 1.01), every run 20 Lloyd iterations (tol=0). Data:
i.i.d. Laplace(0, 1) values, float32, fixed seed, as (n, d) (each row one block: a weight matrix's
values cut into runs of d; Laplace as the 1-D cases, heavier-tailed than Gaussian, as trained
weights are). ``fit_codebook(X, k, block_size=d, ...)``. The headline pairs are like for like:

- random init, every point: ours ``init="random"`` against ``faiss.Kmeans(d, k, niter=20,
  max_points_per_centroid=ceil(n / k))`` (its default random init, no sub-sampling);
- random init, sub-sampled: ours ``init="random", max_points_per_centroid=256`` against faiss's
  default (trains on 256 k points). At n <= 256 k (the 16-D case) neither sub-samples: the rows
  would repeat the all-points ones and are not run;
- k-means++: ours (the default init) against the faster of faiss with
  ``init_method=ClusteringInitMethod_KMEANS_PLUS_PLUS`` on every point (when the installed faiss
  has it; ``faiss_kpp_method``) and scikit-learn ``KMeans(n_clusters=k, n_init=1, max_iter=20,
  tol=0, random_state=SEED, algorithm="lloyd")``.

Every pair prints its speed-up and inertia ratio beside the target and a met / missed verdict; the
"against every peer run" table pairs each of our rows with every faiss row and KMeans. Also timed:
ours with ``max_iter=1`` ("k-means++ seeding + 1 iteration": the seeding's cost), the
nearest-centroid assignment alone (the kernel behind ``KMeansQuantizer.predict``), scikit-learn's
seeding alone (``kmeans_plusplus`` on the centred blocks: KMeans's own seeds) and its Lloyd from
those seeds (``KMeans(init=seeds)``), and our Lloyd from the same seeds (``init=``): with the same
start the inertias should match. faiss's time is ``train`` plus ``index.search(X, 1)`` on the
trained index (the codes of every point, which fit_codebook returns); the table shows that
search's share. Inertia: the sum over all blocks of the squared distance to the nearest centroid,
in float64, in chunks of rows (never an n x k matrix), after the timings, the same way for every
result; our codes are checked to be the nearest and our returned inertia against it. Our Lloyd
iteration counts come from an untimed rerun of the function behind fit_codebook (not with
--quick).

Timing as for the 1-D cases: the fast runs (every matcompress and faiss row) interleaved in 5
rounds, best time, a pause and wait for idle before each row; scikit-learn once per row, back to
back (about 10 s per KMeans fit here). Seed spread (untimed, --seeds N): the like-for-like rows of
ours and faiss (no scikit-learn: seconds per seed), N seeds each, with the median inertia ratio of
each pair. Peak memory: fit_codebook with k-means++ on every point and with random init (on the
sample when sub-sampled), in a fresh process as below. Timings and seeds use 2 threads, as the
1-D cases.

``--quick``: 100,000 4-D blocks and 40,000 16-D blocks (faiss's minimum of 39 points per
centroid), one round, one pause per round, scikit-learn only where n·k·d <= 2e8 (the 4-D case;
no KMeans row, its seeding and Lloyd alone only), no iteration counts of ours, no seed spread,
memory of the k-means++ fit only.

Peak memory
-----------

Peak memory of ``fit_codebook`` is measured in a fresh process per call: the peak RSS is reset
just before the call (``/proc/self/clear_refs`` <- 5) and read from ``VmHWM`` after it; the figure
is that peak minus the RSS before the call, against input + output bytes (DESIGN.md §7: < 2x).

Importable: ``run(quick=False, out=None, memory=True, wait_idle=None, optimal_budget=None,
seeds=None, cases=CASES) -> dict``, ``format_report(result) -> str``, ``select_cases(spec)``
(the cases --cases names) and ``main(argv=None)``. The data, the inertia and the faiss call live
in ``matcompress.benchmark.workloads`` (shared with ``matcompress bench``).
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

from matcompress.benchmark.workloads import (  # noqa: F401 - re-exported
    INERTIA_CHUNK_BYTES, N_ITER, faiss_kmeans, faiss_kpp_method, inertia_1d, inertia_blocks,
    make_blocks, make_values)
from matcompress.benchmark.workloads import chunk_rows as _chunk_rows
from matcompress.benchmark.workloads import import_faiss as _import_faiss
from matcompress.benchmark.workloads import nearest_sq as _nearest_sq
from matcompress.benchmark.workloads import prepare_centroids as _prepare_centroids

try:  # part of a package (bench/ on a path as a package)
    from . import omp as _ob
except ImportError:  # run as a script: bench/ is sys.path[0]; or imported with bench/ on the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import omp as _ob

__all__ = ["CASES", "RUNNERS", "run", "format_report", "main", "make_values", "inertia_1d",
           "make_blocks", "inertia_blocks", "select_cases"]

SEED = _ob.SEED
THREADS = 2
TARGET_SPEEDUP = 20.0  # >= 20x the faster of scikit-learn and faiss ...
# ... at an inertia <= theirs (compared as float64 sums; no tolerance)
TARGET_MEMORY = 2.0  # peak extra memory < 2x (input + output)

ROUNDS, ROUNDS_QUICK = 5, 1  # rounds of the fast (interleaved) runs
ANATOMY_ROUNDS = 7  # rounds of the "where the time goes" calls (1 with --quick)
OUR_MIN_TIME = 0.1  # matcompress: calls per round until this many seconds are spent (<= 10)
SK_MAX_RUNS, SK_BUDGET = 3, 40.0  # scikit-learn: one more run while the total stays < SK_BUDGET s
OPTIMAL_BUDGET, OPTIMAL_BUDGET_QUICK = 90.0, 2.0  # seconds an optimal run may be estimated at
OPTIMAL_PROBE = 65_536  # values of the probe run that estimates the optimal method's time
OPTIMAL_MEMORY_BUDGET = 256 * 2**20  # fit_codebook's bound for the split points (kmeans.cc)
SEEDS = 5  # seed spread (untimed): seeds per peer configuration; matcompress gets 2x as many
SK_SEED_BUDGET = 45.0  # scikit-learn: only as many seeds as fit in this many seconds (>= 1)
# blocks (DESIGN.md §7): >= 2x faiss at d <= 8, >= 1x at d = 16, at equal inertia
TARGET_BLOCK_LOW_DIM, TARGET_BLOCK_HIGH_DIM, BLOCK_LOW_DIM = 2.0, 1.0, 8
INERTIA_EQUAL = 0.01  # "equal inertia": ours <= theirs * (1 + INERTIA_EQUAL)
FAISS_MPPC = 256  # faiss's default max_points_per_centroid; our sub-sampled row's too
SK_QUICK_WORK = 2e8  # --quick: scikit-learn on a block case only when n * k * dim <= this

_say = _ob._say
_met = _ob._met
_table = _ob._table


class Case(NamedTuple):
    name: str
    kind: str  # "scalar" (1-D values) or "block" (points of `dim` values); a key of RUNNERS
    k: int
    n: int  # values (scalar) or blocks (block)
    n_quick: int
    dim: int = 1


CASES = (
    Case("1-D, k=16", "scalar", 16, 1_000_000, 200_000),
    Case("1-D, k=256", "scalar", 256, 1_000_000, 200_000),
    Case("blocks 4-D, k=256", "block", 256, 500_000, 100_000, dim=4),
    Case("blocks 16-D, k=1024", "block", 1024, 100_000, 40_000, dim=16),
)


# --------------------------------------------------------------------------------------------
# data, inertia


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
    every later call's are compared with them. `canon` puts centroids in a canonical order
    (default: the values, flattened and sorted); `role` names the row for the block targets;
    `aux` marks a row that times a part of a fit (no inertia of its own)."""

    def __init__(self, library, label, fit, params, *, target_ref=False, subsampled=False,
                 canon=None, role=None, aux=False):
        self.library, self.label, self.fit, self.params = library, label, fit, params
        self.target_ref, self.subsampled = target_ref, subsampled
        self.canon, self.role, self.aux = canon, role, aux
        self.times, self.load, self.faults, self.infos = [], _ob.ForeignLoad(), [], []
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
            self.infos.append(info)
            c = (self.canon(c) if self.canon is not None
                 else np.sort(np.asarray(c, dtype=np.float64).ravel()))
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

    @property
    def best_info(self):
        """The info dict of the fastest call."""
        return self.infos[int(np.argmin(self.times))] if self.times else None


# --------------------------------------------------------------------------------------------
# peers


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
                return faiss_kmeans(faiss, X, k, **kw)

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
from kmeans import make_blocks, make_values

x = make_values(a["n"]) if a["dim"] == 1 else make_blocks(a["n"], a["dim"])
kw = dict(a["kw"], random_state=a["seed"], n_threads=a["threads"])
if a["dim"] > 1:
    kw["block_size"] = a["dim"]
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


def measure_memory(n, k, kw, timeout=900, dim=1):
    """Peak extra RSS of one fit_codebook call, in a fresh interpreter: on make_values(n), or on
    make_blocks(n, dim) with block_size=dim when dim > 1."""
    args = dict(n=n, k=k, kw=kw, seed=SEED, threads=THREADS, dim=dim,
                bench_dir=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout)
    res = dict(n=n, k=k, kw=dict(kw, block_size=dim) if dim > 1 else kw)
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
                return faiss_kmeans(faiss, X, k, seed=s, max_points_per_centroid=-(-x.size // k),
                                    init_method=init)[0]
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


def _note_nondeterministic(res, case, row):
    if not row.deterministic:
        res["notes"].append(f"{case.name}: {row.library} {row.label}: repeated runs gave "
                            "different centroids (the best time's run may not be the one scored)")


def _rank_inertia(res):
    """The lowest inertia of a case's rows, and each row's ratio to it."""
    best = min(r["inertia"] for r in res["rows"] if "inertia" in r)
    res["best_inertia"] = best
    for r in res["rows"]:
        if "inertia" in r:
            r["inertia_ratio"] = r["inertia"] / best


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
            _note_nondeterministic(res, case, row)
        res["rows"].append(d)
    _rank_inertia(res)

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


# --------------------------------------------------------------------------------------------
# the block cases


def block_target(dim):
    """DESIGN.md §7: >= 2x faiss at d <= 8, >= 1x at d = 16."""
    return TARGET_BLOCK_LOW_DIM if dim <= BLOCK_LOW_DIM else TARGET_BLOCK_HIGH_DIM


def check_codes_blocks(X, codebook, codes):
    """(points whose code is not their nearest centroid in float64, the largest excess of a
    point's squared error over the nearest one's relative to the squared norm of the point plus
    the centroid's, the summed excess, the inertia of the codes) - float32 distances may pick
    either of two centroids nearly equally near."""
    prepared = _prepare_centroids(codebook, X.shape[1])
    C, _, cn = prepared
    codes = np.asarray(codes).ravel().astype(np.int64)
    rows = _chunk_rows(C.shape[0])
    bad, worst, excess_sum, total = 0, 0.0, 0.0, 0.0
    for s in range(0, X.shape[0], rows):
        V = np.asarray(X[s:s + rows], dtype=np.float64)
        _, best = _nearest_sq(V, prepared)
        c = codes[s:s + rows]
        err = ((V - C[c]) ** 2).sum(axis=1)
        ex = err - best
        bad += int(np.count_nonzero(ex > 0))
        scale = (V * V).sum(axis=1) + cn[c]
        worst = max(worst, float((np.maximum(ex, 0) / np.maximum(scale, 1e-300)).max(
            initial=0.0)))
        excess_sum += float(np.maximum(ex, 0).sum())
        total += float(err.sum())
    return bad, worst, excess_sum, total


def _canon_rows(c):
    """Centroids (k x d) as float64, rows in lexicographic order."""
    c = np.asarray(c, dtype=np.float64)
    c = c.reshape(c.shape[0], -1)
    return c[np.lexsort(c.T[::-1])]


def _shown(v):
    return "<array>" if isinstance(v, np.ndarray) else repr(v)


def our_block_row(X, k, label, role, *, aux=False, **kw):
    import matcompress

    kw = dict(kw, random_state=SEED, n_threads=THREADS)
    last = {}
    d = X.shape[1]

    def fit():
        cb, codes, inertia = matcompress.fit_codebook(X, k, block_size=d, **kw)
        last.update(codebook=cb, codes=codes)
        return cb, dict(reported=inertia)

    params = f"fit_codebook(X, {k}, block_size={d}, " + ", ".join(
        f"{a}={_shown(v)}" for a, v in kw.items() if a not in ("random_state", "n_threads")) + ")"
    row = Row("matcompress", label, fit, params, canon=_canon_rows, role=role, aux=aux)
    row.last, row.kw = last, kw
    return row


def our_block_n_iter(X, k, kw):
    """(Lloyd iterations, codebook) of fit_codebook(X, k, block_size=d, **kw), from the private
    function behind it (fit_codebook does not return them; for the report only)."""
    try:
        from matcompress.kmeans import _fit

        a = dict(method="lloyd", init="k-means++", n_init=1, max_iter=100, tol=1e-6,
                 sample_weight=None, max_points_per_centroid=None)
        a.update(kw)
        cb, _, _, n_iter, _ = _fit(X, k, block_size=X.shape[1], **a)
        return int(n_iter), _canon_rows(cb)
    except Exception:  # noqa: BLE001 - the report then shows no iteration count
        return None, None


def faiss_block_rows(faiss, X, k, kpp):
    """faiss.Kmeans: its default (random init, max_points_per_centroid=256), random init on every
    point, k-means++ init on every point. The time includes the final assignment of every point
    (index.search on the trained index), as fit_codebook returns every point's code."""
    n, d = X.shape
    default_mppc = faiss.ClusteringParameters().max_points_per_centroid
    all_mppc = -(-n // k)  # faiss sub-samples when n > k * max_points_per_centroid
    sub = n > default_mppc * k
    configs = [("default", f"default (random init, max_points_per_centroid={default_mppc}): "
                f"sample of {default_mppc * k:,} points" if sub else
                f"default (random init, max_points_per_centroid={default_mppc})", default_mppc,
                None),
               ("random_all", "random init, all points", all_mppc, None)]
    if kpp is not None:
        configs.append(("kpp", "k-means++ init, all points", all_mppc, kpp))
    rows = []
    for role, label, mppc, init in configs:
        kw = dict(niter=N_ITER, seed=SEED, max_points_per_centroid=mppc)
        if init is not None:
            kw["init_method"] = init

        def fit(kw=kw):
            return faiss_kmeans(faiss, X, k, search=True, **kw)

        params = (f"Kmeans({d}, {k}, niter={N_ITER}, max_points_per_centroid={mppc}"
                  + (", init_method=KMEANS_PLUS_PLUS" if init is not None else "")
                  + ").train(X), then index.search(X, 1)")
        row = Row("faiss", label, fit, params, canon=_canon_rows, role=role,
                  target_ref=role != "default" or not sub, subsampled=role == "default" and sub)
        if role == "default" and not sub:
            row.skipped = (f"not run: n = {n:,} <= {default_mppc} k = {default_mppc * k:,}, so the "
                           "default trains on every point: the same run as 'random init, all "
                           "points'")
        rows.append(row)
    return rows


def sklearn_block_rows(X, k, quick, run_any=True):
    """scikit-learn KMeans (k-means++ seeding + Lloyd), its seeding alone (kmeans_plusplus on the
    centred data: KMeans's own seeds) and Lloyd alone from those seeds. With quick, no KMeans row
    (seeding + Lloyd alone run: a smoke test of the code and of the same-start check); with
    run_any false, none (all marked skipped)."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    mean = X.mean(axis=0)  # KMeans centres the data (in float32, as here) before seeding
    seeds = {}

    def fit_full():
        km = KMeans(n_clusters=k, n_init=1, max_iter=N_ITER, tol=0.0, random_state=SEED,
                    algorithm="lloyd").fit(X)
        return km.cluster_centers_, dict(n_iter=int(km.n_iter_), reported=float(km.inertia_))

    def fit_seeding():
        c, _ = kmeans_plusplus(X - mean, k, random_state=SEED)
        seeds["c"] = (c + mean).astype(np.float32)
        return seeds["c"], dict(n_iter=0)

    def fit_lloyd():
        if "c" not in seeds:
            fit_seeding()
        km = KMeans(n_clusters=k, n_init=1, max_iter=N_ITER, tol=0.0, init=seeds["c"],
                    algorithm="lloyd").fit(X)
        return km.cluster_centers_, dict(n_iter=int(km.n_iter_), reported=float(km.inertia_))

    full = Row("scikit-learn", "KMeans (k-means++ seeding + Lloyd)", fit_full,
               f"KMeans(n_clusters={k}, n_init=1, max_iter={N_ITER}, tol=0, "
               "algorithm='lloyd')", target_ref=True, canon=_canon_rows, role="kmeans")
    if quick:
        full.skipped = "not run with --quick (about 1.5x the two rows below)"
    rows = [
        full,
        Row("scikit-learn", "k-means++ seeding alone", fit_seeding,
            f"kmeans_plusplus(X - mean, {k}) (KMeans's own seeds)", canon=_canon_rows,
            role="seeding"),
        Row("scikit-learn", "Lloyd alone, from those seeds", fit_lloyd,
            f"KMeans(init=seeds, n_init=1, max_iter={N_ITER}, tol=0, algorithm='lloyd')",
            canon=_canon_rows, role="lloyd"),
    ]
    if not run_any:
        for row in rows:
            row.skipped = (f"not run with --quick: n·k·d = {X.shape[0] * k * X.shape[1]:.1e} > "
                           f"{SK_QUICK_WORK:.0e} (the other block case runs it)")
    return rows, (lambda: seeds.get("c"))


def seed_spread_blocks(X, k, seeds, faiss, kpp, sub, out):
    """Recomputed inertia of the like-for-like configurations over seeds SEED + i (untimed):
    whether the timed seed's inertia comparison is luck. No scikit-learn (seconds per seed)."""
    import matcompress

    n, d = X.shape
    base = dict(method="lloyd", max_iter=N_ITER, tol=0.0, n_threads=THREADS)
    configs = []

    def ours(role, label, **kw):
        configs.append(("matcompress", role, label, lambda s: matcompress.fit_codebook(
            X, k, block_size=d, random_state=s, **base, **kw)[0]))

    def theirs(role, label, **kw):
        def fit(s):
            return faiss_kmeans(faiss, X, k, seed=s, **kw)[0]
        configs.append(("faiss", role, label, fit))

    ours("random_all", "random init, all points", init="random")
    if faiss is not None:
        theirs("random_all", "random init, all points", max_points_per_centroid=-(-n // k))
    if sub:
        ours("sub", f"random init, max_points_per_centroid={FAISS_MPPC}", init="random",
             max_points_per_centroid=FAISS_MPPC)
        if faiss is not None:
            theirs("default", "default (random init, sub-sampled)")
    ours("kpp", "k-means++ init")
    if faiss is not None and kpp is not None:
        theirs("kpp", "k-means++ init, all points", max_points_per_centroid=-(-n // k),
               init_method=kpp)
    spread = []
    for lib, role, label, fit in configs:
        inertias = [inertia_blocks(X, fit(SEED + i)) for i in range(seeds)]
        spread.append(dict(library=lib, role=role, label=label, seeds=seeds, inertias=inertias))
        _say(out, f"  seeds: {lib} {label}: {seeds} seeds, inertia {min(inertias):.6g} .. "
                  f"{max(inertias):.6g}")
    return spread


def _pair(ours, peer, target):
    speed = peer["seconds"] / ours["seconds"]
    ratio = ours["inertia"] / peer["inertia"]
    return dict(ours=ours["label"], peer=f"{peer['library']} {peer['label']}",
                seconds=ours["seconds"], peer_seconds=peer["seconds"], speedup=speed,
                inertia_ratio=ratio, target=target, speed_met=speed >= target,
                inertia_met=ratio <= 1.0 + INERTIA_EQUAL,
                met=speed >= target and ratio <= 1.0 + INERTIA_EQUAL)


def run_block_case(case, *, quick, out, settle, optimal_budget, faiss, kpp, seeds):
    from threadpoolctl import threadpool_limits

    import matcompress
    from matcompress.kmeans import _assign

    n, k, d = (case.n_quick if quick else case.n), case.k, case.dim
    X = make_blocks(n, d)
    sub = n > FAISS_MPPC * k  # faiss's default (and our sub-sampled row) use a sample
    target = block_target(d)
    res = dict(case=case.name, kind=case.kind, k=k, n=n, dim=d, subsampled=sub, target=target,
               rows=[], notes=[])
    _say(out, f"{case.name}: {n:,} blocks of {d} Laplace float32 values, k={k}")
    rounds = ROUNDS_QUICK if quick else ROUNDS
    lloyd = dict(method="lloyd", max_iter=N_ITER, tol=0.0)

    with threadpool_limits(limits=THREADS):
        if faiss is not None:
            faiss.omp_set_num_threads(THREADS)
        kpp_row = our_block_row(X, k, f"k-means++ init, Lloyd {N_ITER} iterations (tol=0)",
                                "kpp", **lloyd)
        ours = [
            kpp_row,
            our_block_row(X, k, f"random init, Lloyd {N_ITER} iterations (tol=0), all points",
                          "random_all", init="random", **lloyd),
            our_block_row(X, k, f"random init, max_points_per_centroid={FAISS_MPPC}"
                          + (f": sample of {FAISS_MPPC * k:,} points" if sub else ""), "sub",
                          init="random", max_points_per_centroid=FAISS_MPPC, **lloyd),
            our_block_row(X, k, "k-means++ seeding + 1 iteration (max_iter=1)", "seed1",
                          method="lloyd", max_iter=1, tol=0.0),
        ]
        if not sub:
            ours[2].skipped = (f"not run: n = {n:,} <= {FAISS_MPPC} k = {FAISS_MPPC * k:,}: no "
                               "sub-sampling, the same run as the all-points row")

        def assign_fit():  # times the assignment only; its "centroids" are the input codebook
            cb = kpp_row.last["codebook"]  # the k-means++ row runs first in every round
            _assign(X, cb, THREADS)
            return cb, {}

        assign = Row("matcompress", "nearest-centroid assignment alone (codes of all points)",
                     assign_fit, "kmeans_assign (KMeansQuantizer.predict's kernel) with the "
                     "k-means++ row's codebook", canon=_canon_rows, role="assign", aux=True)
        ours_all = ours + [assign]
        peers_fast = faiss_block_rows(faiss, X, k, kpp) if faiss is not None else []

        # ---- warm-up on a small input (threads started, code paged in), then the rounds
        settle()
        small = X[: min(n, max(20_000, 4 * k))]
        matcompress.fit_codebook(small, k, block_size=d, n_threads=THREADS, random_state=SEED,
                                 method="lloyd", max_iter=2)
        if faiss is not None:
            km = faiss.Kmeans(d, k, niter=2, seed=SEED, min_points_per_centroid=1)
            km.train(small)
            km.index.search(small, 1)
        timed = [r for r in ours_all + peers_fast if r.skipped is None]
        for rnd in range(rounds):
            line = []
            if quick:
                settle()
            for row in timed:
                if not quick:
                    settle()
                row.call(min_time=OUR_MIN_TIME if row.library == "matcompress" else 0.0)
                line.append(f"{row.library} {row.role}: {row.times[-1]:.3f} s")
            _say(out, f"  round {rnd + 1}/{rounds}: " + "; ".join(line))

        # ---- scikit-learn: back to back, one run each
        cheap = n * k * d <= SK_QUICK_WORK
        sk, sk_seeds = sklearn_block_rows(X, k, quick, run_any=cheap or not quick)
        if cheap or not quick:
            settle()
            from sklearn.cluster import KMeans

            KMeans(n_clusters=k, init="random", n_init=1, max_iter=2, tol=0.0,
                   random_state=SEED).fit(small)  # warm-up (no k-means++: seconds at k=1024)
            for row in sk:
                if row.skipped is not None:
                    continue
                settle()
                row.call()
                _say(out, f"  scikit-learn {row.label}: {row.seconds:.3f} s")

        # ---- our Lloyd from scikit-learn's seeds: the same start (a check of Lloyd)
        same = our_block_row(X, k, f"Lloyd {N_ITER} iterations from scikit-learn's seeds (init=)",
                             "same_init", init=sk_seeds(), **lloyd)
        if sk_seeds() is None:
            same.skipped = "not run: no scikit-learn seeds (scikit-learn not run)"
        else:
            settle()
            for _ in range(1 if quick else 3):
                same.call()

        # ---- inertia over seeds (untimed)
        if seeds:
            res["spread"] = seed_spread_blocks(X, k, seeds, faiss, kpp, sub, out)

    # ---- inertia, the same way for everyone, after the timings
    rows = ours_all + peers_fast + sk + [same]
    for row in rows:
        dd = dict(library=row.library, label=row.label, params=row.params, role=row.role,
                  aux=row.aux, target_ref=row.target_ref, subsampled=row.subsampled,
                  skipped=row.skipped)
        if row.skipped is None:
            info = row.best_info or {}
            dd.update(seconds=row.seconds, times=row.times, runs=len(row.times),
                      deterministic=row.deterministic, n_iter=(row.info or {}).get("n_iter"),
                      reported=(row.info or {}).get("reported"), search_s=info.get("search_s"),
                      foreign_load=row.load.cores, n_centroids=row.centroids.shape[0],
                      faults=float(np.median(row.faults)) if row.faults else None,
                      n_unique=int(np.unique(row.centroids, axis=0).shape[0]))
            if not row.aux:
                dd["inertia"] = inertia_blocks(X, row.centroids)
            _note_nondeterministic(res, case, row)
        res["rows"].append(dd)
    _rank_inertia(res)
    by_role = {}
    for r in res["rows"]:
        by_role.setdefault((r["library"], r["role"]), r)

    # ---- checks of matcompress's results (codes nearest, reported inertia = recomputed) and
    # the iteration counts (untimed reruns of the private function behind fit_codebook)
    for row, dd in zip(rows, res["rows"]):
        if row.library != "matcompress" or row.aux or row.skipped is not None:
            continue
        cb, codes = row.last["codebook"], row.last["codes"]
        bad, worst, excess, code_inertia = check_codes_blocks(X, cb, codes)
        rel = abs(dd["reported"] - code_inertia) / max(code_inertia, 1e-300)
        dd["check"] = dict(codes_not_nearest=bad, max_rel_excess=worst,
                           excess_share=excess / max(code_inertia, 1e-300),
                           reported_rel_diff=rel, codes_dtype=codes.dtype.name,
                           codes_shape=list(codes.shape))
        if worst > 1e-5 or rel > 1e-5:
            res["notes"].append(f"{case.name}: matcompress {row.label}: CHECK FAILED: {bad} codes "
                                f"not nearest (largest excess {worst:.2g} of |x|^2 + |c|^2), "
                                f"reported inertia off by {rel:.2g} relative")
        if quick:  # the untimed reruns cost as much as the timings
            continue
        it, cb2 = our_block_n_iter(X, k, row.kw)
        if it is None:
            res["notes"].append(f"{case.name}: matcompress {row.label}: no iteration count (the "
                                "private function behind fit_codebook failed)")
        elif np.array_equal(cb2, row.centroids):  # the same run
            dd["n_iter"] = it
        else:
            res["notes"].append(f"{case.name}: matcompress {row.label}: the rerun for its "
                                "iteration count gave another codebook (no count shown)")

    # ---- targets (DESIGN.md §7): the like-for-like pairs
    def get(lib, role):
        r = by_role.get((lib, role))
        return r if r is not None and "seconds" in r and "inertia" in r else None

    heads = []
    pairs = [("random init, every point", get("matcompress", "random_all"),
              [get("faiss", "random_all")], None),
             (f"random init, sub-sampled to {FAISS_MPPC} points per centroid",
              get("matcompress", "sub"), [get("faiss", "default")],
              None if sub else f"n/a: n = {n:,} <= {FAISS_MPPC} k, neither sub-samples (the "
                               "row above is the comparison)"),
             ("k-means++ init (the faster of faiss k-means++ and scikit-learn KMeans)",
              get("matcompress", "kpp"), [get("faiss", "kpp"), get("scikit-learn", "kmeans")],
              None)]
    for name, o, peers, na in pairs:
        peers = [p for p in peers if p is not None]
        if na is None and (o is None or not peers):
            na = "n/a: " + ("no peer run" if o is not None else "our row did not run")
        if na is not None:
            heads.append(dict(name=name, na=na))
            continue
        ref = min(peers, key=lambda r: r["seconds"])
        heads.append(dict(name=name, **_pair(o, ref, target)))
    res["headlines"] = heads
    res["targets"] = []
    for o in ours[:3] + [same]:
        od = by_role.get(("matcompress", o.role))
        if od is None or "seconds" not in od:
            continue
        for r in res["rows"]:
            if r["library"] == "matcompress" or "inertia" not in r or "seconds" not in r:
                continue
            # our rows against faiss and KMeans; ours from scikit-learn's seeds against its
            # Lloyd from those seeds (the same work)
            if (r["role"] == "lloyd") != (o.role == "same_init") or r["role"] == "seeding":
                continue
            res["targets"].append(_pair(od, r, target))
    for r in res["rows"]:
        if "seconds" in r:
            inert = (f"inertia {r['inertia']:.6g} ({r['inertia_ratio']:.4f}x best)"
                     if "inertia" in r else "")
            _say(out, f"  {r['library']:<12} {r['label']:<60} {r['seconds']:8.3f} s  {inert}  "
                      f"other load {_fmt_load(r['foreign_load'])}")
    for h in heads:
        if "na" in h:
            _say(out, f"  target, {h['name']}: {h['na']}")
        else:
            _say(out, f"  target, {h['name']}: {h['speedup']:.2f}x {h['peer']} (>= {target:g}x "
                      f"{_met(h['speed_met'])}), inertia {h['inertia_ratio']:.4f}x its (<= "
                      f"{1 + INERTIA_EQUAL:g} {_met(h['inertia_met'])}): {_met(h['met'])}")
    return res


RUNNERS = {"scalar": run_scalar_case, "block": run_block_case}


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
    loads = [r.get("foreign_load") for c in res["cases"] for r in c["rows"]]
    res["notes"] += _ob.load_notes(loads, settle.waited, " (see the 'other load' column)")

    if memory:
        for c in res["cases"]:
            dim = c.get("dim", 1)
            kws = [dict(method="lloyd", max_iter=N_ITER, tol=0.0)]
            if c["kind"] == "scalar":
                opt = c["rows"][2]
                if not opt["skipped"] and not quick:
                    kws.append(dict(method="optimal"))
            elif not quick:  # block: k-means++ on every point; random init on a sample
                kws.append(dict(method="lloyd", init="random", max_iter=N_ITER, tol=0.0,
                                **({"max_points_per_centroid": FAISS_MPPC}
                                   if c["subsampled"] else {})))
            for kw in kws:
                m = measure_memory(c["n"], c["k"], kw, dim=dim)
                m["case"] = c["case"]
                res["memory"].append(m)
                if "error" in m:
                    _say(out, f"memory {c['case']} {kw}: failed: {m['error']}")
                else:
                    what = kw["method"] if dim == 1 else kw
                    _say(out, f"memory {c['case']} {what}: peak extra "
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


def _fmt_mem_ratio(v):
    """One decimal, two when one would read as the target itself (1.96 -> '1.96', not '2.0')."""
    return f"{v:.2f}" if f"{v:.1f}" == f"{TARGET_MEMORY:.1f}" else f"{v:.1f}"


def _fmt_x(v):
    return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def _format_blocks(res):
    """The block cases' tables: rows, targets, every pair, seed spread."""
    parts = []
    T = res["threads"]
    blocks = [c for c in res["cases"] if c["kind"] == "block"]
    for c in blocks:
        head = ["library", "configuration", "time (best)", "runs", "iterations", "inertia",
                "/ lowest", "of which final assignment", "page faults per call", "other load"]
        body = []
        for r in c["rows"]:
            if r.get("skipped"):
                body.append([r["library"], r["label"], r["skipped"]] + ["-"] * 7)
                continue
            it = "-" if r["n_iter"] is None else str(r["n_iter"])
            has = "inertia" in r
            body.append([r["library"], r["label"], _fmt_s(r["seconds"]), r["runs"], it,
                         f"{r['inertia']:.6g}" if has else "-",
                         f"{r['inertia_ratio']:.4f}" if has else "-",
                         _fmt_s(r.get("search_s")),
                         "-" if r.get("faults") is None else f"{r['faults']:,.0f}",
                         _fmt_load(r["foreign_load"])])
        sub = (f"faiss's default sub-samples to {FAISS_MPPC}·k = {FAISS_MPPC * c['k']:,} points"
               if c["subsampled"] else f"n <= {FAISS_MPPC}·k: faiss's default uses every point")
        parts.append(
            f"### {c['case']}: {c['n']:,} blocks of {c['dim']} values, k={c['k']}, {T} threads"
            f" ({sub})\n\n"
            "Inertia recomputed for every result: Σ ‖x − nearest centroid‖² over all blocks, in "
            "float64 (in chunks of rows); '/ lowest' = ratio to the lowest inertia in this table. "
            "Every fit returns (or, for faiss, is timed with) the code of every point: faiss's "
            "time is train + index.search of all points ('of which final assignment'). "
            "Iterations: ours from an untimed rerun of the function behind fit_codebook; faiss "
            "len(obj); scikit-learn n_iter_. Page faults: the median of the minor page faults of "
            "this process per timed call. Other load = cores other processes kept busy while the "
            "row was timed.\n\n" + _table(head, body))

    if blocks:
        head = ["case", "comparison", "matcompress", "time", "peer", "its time", "speed-up",
                f"inertia ours / its (<= {1 + INERTIA_EQUAL:g})", "target"]
        body = []
        for c in blocks:
            for h in c["headlines"]:
                if "na" in h:
                    body.append([c["case"], h["name"], h["na"]] + ["-"] * 6)
                    continue
                body.append([c["case"], h["name"], h["ours"], _fmt_s(h["seconds"]), h["peer"],
                             _fmt_s(h["peer_seconds"]),
                             f"{h['speedup']:.2f}x (>= {h['target']:g}x) "
                             f"{_met(h['speed_met'])}",
                             f"{h['inertia_ratio']:.4f} {_met(h['inertia_met'])}",
                             _met(h["met"])])
        parts.append(
            f"### Targets of DESIGN.md §7 for blocks: >= {TARGET_BLOCK_LOW_DIM:g}x faiss at "
            f"d <= {BLOCK_LOW_DIM}, >= {TARGET_BLOCK_HIGH_DIM:g}x at d = 16, at equal inertia\n\n"
            f"Same-run ratios, {N_ITER} iterations everywhere (tol=0). 'Equal inertia': ours <= "
            f"theirs × {1 + INERTIA_EQUAL:g}. Like for like: our random init against faiss's "
            "(its default init), on every point and on the same size of sample; our k-means++ "
            "against the faster of faiss with k-means++ init and scikit-learn KMeans.\n\n"
            + _table(head, body))

        head = ["case", "matcompress", "peer run", "speed-up", "inertia ours / theirs",
                "target met (speed and inertia)"]
        body = []
        for c in blocks:
            for t in c["targets"]:
                body.append([c["case"], t["ours"], t["peer"], f"{t['speedup']:.2f}x",
                             f"{t['inertia_ratio']:.4f}",
                             f"{'yes' if t['met'] else 'no'} (>= {t['target']:g}x, <= "
                             f"{1 + INERTIA_EQUAL:g})"])
        parts.append("### Blocks: against every peer run\n\n"
                     "Not all of these are like-for-like pairs (see the targets above): faiss's "
                     "default trains on a sample, and the inits differ. Our Lloyd from "
                     "scikit-learn's seeds is paired with scikit-learn's Lloyd from the same "
                     "seeds: the same work from the same start.\n\n"
                     + _table(head, body))

    for c in blocks:
        if not c.get("spread"):
            continue
        head, body = _spread_table(c)
        lines = []
        mine = {sp["role"]: sp for sp in c["spread"] if sp["library"] == "matcompress"}
        for sp in c["spread"]:
            if sp["library"] == "matcompress":
                continue
            o = mine.get("sub" if sp["role"] == "default" else sp["role"])
            if o is None:
                continue
            wins = sum(a <= b * (1 + INERTIA_EQUAL) for a in o["inertias"]
                       for b in sp["inertias"])
            med = np.median(o["inertias"]) / np.median(sp["inertias"])
            lines.append(f"ours {o['label']} vs faiss {sp['label']}: median ratio {med:.4f}, "
                         f"{wins} of {len(o['inertias']) * len(sp['inertias'])} pairs within "
                         "equal inertia")
        parts.append(
            f"### Inertia over seeds: {c['case']} (untimed; ratio to the lowest inertia of the "
            f"timed table; seeds {SEED} + i, i = 0 is the timed run)\n\n" + _table(head, body)
            + "\n\n" + "; ".join(lines) + ".")
    return parts


def _block_check_lines(res):
    lines = []
    for c in res["cases"]:
        if c["kind"] != "block":
            continue
        for r in c["rows"]:
            ch = r.get("check")
            if ch:
                lines.append(f"- {c['case']}, {r['label']}: codes not nearest (float64): "
                             f"{ch['codes_not_nearest']} (largest excess "
                             f"{ch['max_rel_excess']:.1e} of |x|² + |c|²; "
                             f"{ch['excess_share']:.1e} of the inertia); returned inertia vs "
                             f"recomputed: {ch['reported_rel_diff']:.1e} relative; codes "
                             f"{ch['codes_dtype']} {tuple(ch['codes_shape'])}")
        same = next((r for r in c["rows"] if r["role"] == "same_init" and "inertia" in r), None)
        skl = next((r for r in c["rows"] if r["role"] == "lloyd" and "inertia" in r), None)
        if same and skl:
            its = ("" if same["n_iter"] is None or skl["n_iter"] is None else
                   f" (iterations {same['n_iter']} and {skl['n_iter']})")
            lines.append(f"- {c['case']}: from the same seeds, our Lloyd / scikit-learn's: "
                         f"inertia {same['inertia'] / skl['inertia']:.6f}, time "
                         f"{same['seconds'] / skl['seconds']:.3f}{its}")
        fa = [r for r in c["rows"] if r["library"] == "faiss" and r.get("reported") is not None
              and "inertia" in r]
        if fa:
            lines.append(f"- {c['case']}, faiss's own last objective / recomputed inertia: "
                         + ", ".join(f"{r['label']} {r['reported'] / r['inertia']:.3f}"
                                     for r in fa))
        for r in c["rows"]:
            if r.get("n_unique") is not None and r["n_unique"] < r["n_centroids"]:
                lines.append(f"- {c['case']}, {r['library']} {r['label']}: {r['n_unique']} "
                             f"distinct centroids of {r['n_centroids']}")
    return lines


def _spread_table(c):
    """Header and rows of a case's seed-spread table (inertias over the lowest of the case)."""
    best = c["best_inertia"]
    head = ["library", "configuration", "seeds", "min", "median", "max", "timed seed"]
    body = []
    for sp in c["spread"]:
        v = np.array(sp["inertias"]) / best
        body.append([sp["library"], sp["label"], sp["seeds"], f"{v.min():.4f}",
                     f"{np.median(v):.4f}", f"{v.max():.4f}", f"{v[0]:.4f}"])
    return head, body


def format_report(res):
    """The result tables as markdown (padded, so they read well in a terminal too)."""
    parts = []
    T = res["threads"]
    scalar = [c for c in res["cases"] if c["kind"] == "scalar"]
    for c in scalar:
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
    for c in scalar:
        h = c.get("headline")
        if not h:
            continue
        body.append([c["case"], h["ref"], _fmt_s(h["ref_seconds"]), _fmt_s(h["seconds"]),
                     f"{_fmt_x(h['speedup'])} {_met(h['speed_met'])}",
                     f"{h['inertia_ratio']:.4f} {_met(h['inertia_met'])}", _met(h["met"])])
    if scalar:
        parts.append(f"### Target of DESIGN.md §7: >= {TARGET_SPEEDUP:g}x the faster of "
                     "scikit-learn and faiss, at an inertia <= theirs\n\n"
                     "The reference is the fastest of scikit-learn KMeans and faiss (default and "
                     "k-means++ init) on all the values, 20 iterations each, as ours.\n\n"
                     + _table(head, body))

    head = ["case", "matcompress", "peer run", "speed-up", "inertia ours / theirs",
            f">= {TARGET_SPEEDUP:g}x and <= 1"]
    body = []
    for c in scalar:
        for t in c["targets"]:
            peer = t["peer"] + ("" if t["headline_ref"] else " †")
            body.append([c["case"], t["ours"], peer, _fmt_x(t["speedup"]),
                         f"{t['inertia_ratio']:.4f}", "yes" if t["met"] else "no"])
    if scalar:
        parts.append("### Against every peer run\n\n"
                     "† not a reference of the target: faiss's default sub-sampling trains on "
                     "max_points_per_centroid·k values only; scikit-learn's seeding or Lloyd alone "
                     "are parts of its KMeans.\n\n" + _table(head, body))

    # seed spread
    for c in scalar:
        if not c.get("spread"):
            continue
        head, body = _spread_table(c)
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
    for c in scalar:
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

    parts.extend(_format_blocks(res))

    # checks
    lines = []
    for c in scalar:
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
    lines.extend(_block_check_lines(res))
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
                         f"{_fmt_mem_ratio(m['ratio'])}x {_met(m['ratio'] < TARGET_MEMORY)}"])
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
                        help="fewer values and blocks, one timed run each (< 1 minute)")
    parser.add_argument("--cases", default="all", metavar="KINDS",
                        help="which cases: 'all' (default), 'scalar', 'block', or a "
                             "comma-separated list of kinds or case names")
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
    cases = select_cases(args.cases)
    if not cases:
        parser.error(f"--cases {args.cases!r}: no such kind or case (kinds: "
                     f"{', '.join(RUNNERS)}; cases: {'; '.join(c.name for c in CASES)})")
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
              wait_idle=args.wait_idle, optimal_budget=args.optimal_budget, seeds=args.seeds,
              cases=cases)
    elapsed = time.perf_counter() - t0
    data, kinds = [], {c["kind"] for c in res["cases"]}
    for c in res["cases"]:
        if c["kind"] == "scalar":
            what = f"{c['n']:,} Laplace(0, 1) values"
        else:
            what = f"{c['n']:,} blocks of {c['dim']} i.i.d. Laplace(0, 1) values"
        data.append(f"{c['case']}: {what}")
    title = {"scalar": "1-D k-means", "block": "block k-means"}.get(
        next(iter(kinds)) if len(kinds) == 1 else None, "k-means")
    _ob.finish(format_report(res), elapsed, args.markdown,
               f"## {title}: `bench/kmeans.py`" + (" (--quick)" if args.quick else ""),
               header, "; ".join(data) + f"; float32, seed {SEED}")
    return res


def select_cases(spec):
    """The CASES named by --cases: 'all', or kinds (keys of RUNNERS) and case names (which hold
    commas themselves), comma-separated; () when a part names nothing."""
    if spec.strip() == "all":
        return CASES
    known = {c.kind for c in CASES} | {c.name for c in CASES}
    want, part = set(), None
    for token in (t.strip() for t in spec.split(",")):
        part = token if part is None else f"{part}, {token}"
        if part in known:
            want.add(part)
            part = None
    if part is not None or not want:
        return ()
    return tuple(c for c in CASES if c.kind in want or c.name in want)


if __name__ == "__main__":
    main()
