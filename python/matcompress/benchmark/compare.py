"""``matcompress bench``: every kernel against its peers in one run, beside the targets.

One run times every kernel of DESIGN.md §7 against the library a user would pick instead, in the
same process (only same-run ratios count: absolute figures move by up to 2x between machines of
one kind), and prints one table: the case, matcompress's time, the peer's time, the quality of
both (reconstruction error or inertia) with an equal-quality check, the speed ratio, the §7 target
beside it with met / missed, and matcompress's peak memory.

Cases (group names for ``--cases`` in brackets):

- [omp] OMP a/b/c (``sparse_encode``) against SPAMS ``omp`` and scikit-learn ``sparse_encode``
  (timed on a subset, compared per signal), and against the GEMM D·Xᵀ it needs;
- [dictionary] dictionary learning on 8x8 patches (K-SVD, MOD, online) against scikit-learn
  ``MiniBatchDictionaryLearning`` (reach its error in <= 1/20 of its time) and SPAMS ``trainDL``
  modes 3 and 2 (lower error at its time);
- [kmeans_1d] 1-D k-means, 1M values, k=16 and 256, against scikit-learn ``KMeans`` and faiss
  (random and k-means++ init, every value used);
- [blocks] block k-means 500k x 4 (k=256) and 100k x 16 (k=1024) against faiss, like for like;
- [gemv] the 4-bit codebook GEMV at 4096 x 4096 against dense numpy;
- [factored] every stored form at 4x fewer bytes, batch 32 and 256, against the dense GEMM;
- [additive] additive quantization of a 1024 x 1024 matrix (M codebooks of K codewords summed
  per block of b weights) against faiss ``ResidualQuantizer`` (beam search of the same width):
  time to fit and code every block, and the relative error;
- [train_step] the CompressedDense train step after the drop against ``keras.layers.Dense``
  (only when ``import tensorflow`` works).

A missing optional peer (spams, faiss, tensorflow; pillow for the patches) skips its rows with a
note, never the run. ``--quick`` runs smaller sizes and fewer rounds (under 2 minutes on 2 cores;
its figures are indicative only).

Usage: ``matcompress bench [--quick] [--markdown FILE] [--results FILE] [--png FILE] [--cases
GROUPS] [--wait-idle SECONDS] [--no-memory]``, or ``python bench/compare.py ...`` in a checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import harness, workloads
from .harness import say

__all__ = ["GROUPS", "TARGETS", "Record", "Result", "run", "format_report", "format_table",
           "replace_section", "write_results", "plot_ratios", "add_arguments", "run_parsed",
           "main"]

SECTION_TITLE = "## Comparison: `matcompress bench`"
GROUPS = ("omp", "dictionary", "kmeans_1d", "blocks", "additive", "gemv", "factored",
          "train_step")
QUALITY_TOLERANCE = 0.01  # "equal quality": ours <= theirs * (1 + this), where no rule is stated
MEMORY_TARGET = 2.0  # DESIGN.md §7: peak memory of sparse_encode, fit_codebook < 2x (in + out)
FAISS_MPPC = 256  # faiss's default max_points_per_centroid


@dataclasses.dataclass(frozen=True)
class Target:
    """A DESIGN.md §7 target: met when ratio >= value (`higher`) or ratio <= value."""

    text: str
    value: float
    higher: bool

    def ok(self, ratio):
        return ratio >= self.value if self.higher else ratio <= self.value


TARGETS = {
    "omp_spams": Target(">= 2x SPAMS", 2.0, True),
    "omp_sklearn": Target(">= 50x scikit-learn", 50.0, True),
    "omp_gemm": Target("<= 3x the GEMM time", 3.0, False),
    "dl_sklearn": Target("its error in <= 1/20 of its time", 20.0, True),
    "dl_spams": Target("lower error than SPAMS trainDL at its time", 1.0, True),
    "kmeans_1d": Target(">= 20x faiss and scikit-learn, inertia <= theirs", 20.0, True),
    "blocks_low": Target(">= 2x faiss at d <= 8, equal inertia", 2.0, True),
    "blocks_high": Target(">= 1x faiss at d = 16, equal inertia", 1.0, True),
    # Not a DESIGN.md §7 target (issue 12 names none for speed): the project's own bar.
    "additive_faiss": Target(">= 1x faiss ResidualQuantizer, error <= its x1.01", 1.0, True),
    "gemv": Target(">= 3x faster than the dense f32 GEMV", 3.0, True),
    "factored": Target("<= 2x the dense GEMM time at >= 4x fewer bytes", 2.0, False),
    "train_step": Target("<= 1.5x the Keras Dense train step", 1.5, False),
}


@dataclasses.dataclass
class Record:
    """One row of the table: matcompress against one peer on one case.

    Times are seconds for `mc_work` and `peer_work` items (e.g. signals: scikit-learn's OMP is
    timed on a subset); the ratio is computed from them. `quality_ok` is the equal-quality check
    (None when none applies); `bound`: matcompress's time is only a lower bound of the time it
    would need (it never reached the peer's error), so the ratio is an upper bound."""

    group: str
    case: str
    size: str
    ours: str
    peer: str
    target: str  # a key of TARGETS
    mc_seconds: float | None = None
    peer_seconds: float | None = None
    mc_work: float = 1.0
    peer_work: float = 1.0
    quality_name: str = ""
    mc_quality: float | None = None
    peer_quality: float | None = None
    quality_ok: bool | None = None
    quality_rule: str = ""
    bound: bool = False
    memory_key: str | None = None
    load: float | None = None
    skipped: str | None = None

    @property
    def measured(self):
        return self.skipped is None and self.mc_seconds is not None \
            and self.peer_seconds is not None

    @property
    def speedup(self):
        """The peer's time per item over ours (> 1: matcompress is faster)."""
        if not self.measured:
            return None
        return (self.peer_seconds / self.peer_work) / (self.mc_seconds / self.mc_work)

    @property
    def ratio(self):
        """The ratio the target speaks of: the speed-up, or our time over the peer's."""
        s = self.speedup
        if s is None:
            return None
        return s if TARGETS[self.target].higher else 1.0 / s

    @property
    def met(self):
        """True / False against the target (the ratio and the quality check); None if not
        measured."""
        r = self.ratio
        if r is None:
            return None
        return TARGETS[self.target].ok(r) and not self.bound and self.quality_ok is not False


@dataclasses.dataclass
class Result:
    mode: str
    threads: int
    groups: tuple
    records: list
    memory: dict
    notes: list
    elapsed: float = 0.0
    memory_how: str = ""
    failed: list = dataclasses.field(default_factory=list)  # groups that raised


# --------------------------------------------------------------------------------------------
# sizes per mode

OMP_CASES = (("a", 256, 64, 8), ("b", 1024, 256, 16), ("c", 2048, 512, 32))

SIZES = {
    "full": dict(
        omp_cases=OMP_CASES, omp=((20_000, 1000), (10_000, 300), (4_000, 100)), omp_repeats=3,
        omp_min_time=0.1,
        dl_patches=20_000, dl_atoms=256, dl_alphas=(workloads.SK_ALPHA_DEFAULT,
                                                    workloads.SK_ALPHA_CALIBRATED),
        dl_sk_reps=2, dl_rounds=3,
        km_values=1_000_000, km_ks=(16, 256), km_sk_runs=3, km_sk_budget=40.0,
        blocks=((500_000, 4, 256), (100_000, 16, 1024)),
        additive=(1024, ((2, 256, 8), (4, 16, 4))),
        gemv=4096, factored=4096, factored_batches=(32, 256), tf_shape=(4096, 1024),
        tf_batches=(32, 256), rounds=5, pause=harness.SETTLE_SECONDS, wait_idle=120.0,
        memory_one_process=False),
    "quick": dict(
        omp_cases=OMP_CASES, omp=((5_000, 200), (2_500, 60), (1_000, 25)), omp_repeats=1,
        omp_min_time=0.02,
        dl_patches=5_000, dl_atoms=256, dl_alphas=(workloads.SK_ALPHA_DEFAULT,),
        dl_sk_reps=1, dl_rounds=1,
        km_values=200_000, km_ks=(16, 256), km_sk_runs=1, km_sk_budget=10.0,
        blocks=((100_000, 4, 256), (40_000, 16, 1024)),
        additive=(512, ((2, 256, 8),)),
        gemv=4096, factored=1024, factored_batches=(32,), tf_shape=(256, 256), tf_batches=(32,),
        rounds=2, pause=0.1, wait_idle=10.0, memory_one_process=True),
    # for the tests: every case, seconds in all (figures meaningless)
    "tiny": dict(
        omp_cases=(("a", 64, 16, 4), ("b", 128, 32, 8), ("c", 256, 64, 8)),
        omp=((400, 20), (200, 8), (100, 4)), omp_repeats=1, omp_min_time=0.0,
        dl_patches=1_000, dl_atoms=32, dl_alphas=(workloads.SK_ALPHA_DEFAULT,),
        dl_sk_reps=1, dl_rounds=1,
        km_values=5_000, km_ks=(8, 16), km_sk_runs=1, km_sk_budget=5.0,
        blocks=((4_000, 4, 16), (2_000, 16, 16)),
        additive=(64, ((2, 16, 4),)),
        gemv=256, factored=256, factored_batches=(32,), tf_shape=(64, 64), tf_batches=(32,),
        rounds=1, pause=0.0, wait_idle=0.0, memory_one_process=True,
        # one thread: on a busy machine, OpenMP peers (faiss) at 2 threads take seconds for
        # milliseconds of work (spinning barriers on an oversubscribed core)
        threads=1),
}

FACTORED_RATIO = 4  # the target's bound: the most bytes it allows, the slowest for most forms


# --------------------------------------------------------------------------------------------
# the run


class _Context:
    """What every group's runner needs: sizes, threads, the settler, progress output, and the
    places results go (records, notes, memory specs)."""

    def __init__(self, mode, threads, wait_idle, out, tmpdir):
        self.mode, self.threads, self.out, self.tmpdir = mode, threads, out, tmpdir
        self.sizes = SIZES[mode]
        budget = self.sizes["wait_idle"] if wait_idle is None else wait_idle
        self.settle = harness.Settler(budget, pause=self.sizes["pause"])
        self.rounds = self.sizes["rounds"]
        self.records, self.notes, self.memory_specs = [], [], {}

    def say(self, msg):
        say(self.out, msg)

    def add(self, rec):
        self.records.append(rec)
        if rec.measured:
            self.say(f"  {rec.ours} vs {rec.peer}: {_fmt_s(rec.mc_seconds)} / "
                     f"{_fmt_s(rec.peer_seconds)} -> {_fmt_ratio(rec)} "
                     f"({'met' if rec.met else 'missed'})")
        return rec

    def interleave(self, routes, **kw):
        kw.setdefault("slow_rounds", self.rounds)
        return harness.interleave(routes, self.rounds, self.settle,
                                  out=None if self.out is None else self.say, **kw)


def _keep(store, key, fn):
    """fn, its latest result kept in store[key] (the timed calls' results are scored)."""
    def call():
        r = fn()
        store[key] = r
        return r
    return call


def _load(*timings):
    loads = [t.load.cores for t in timings if t is not None and t.load.wall > 0.05]
    loads = [v for v in loads if v is not None]
    return max(loads) if loads else None


def _run_omp(ctx):
    import matcompress as mc
    from sklearn.decomposition import sparse_encode as sk_sparse_encode

    T, z = ctx.threads, ctx.sizes
    spams, why = workloads.import_spams()
    if spams is None:
        ctx.notes.append(f"OMP: SPAMS rows skipped: {why}")
    for (name, k, m, s), (n, n_sk) in zip(z["omp_cases"], z["omp"]):
        case = f"OMP {name}: {k}x{m}, s={s}"
        size = f"{n:,} signals (scikit-learn: {n_sk:,})"
        ctx.say(f"{case}, {size} ...")
        D = workloads.make_dictionary(k, m, np.float32)
        X = workloads.make_signals(n, m, np.float32)
        Xs = X[:n_sk]
        buf = np.empty((k, n), np.float32)
        last = {}
        routes = {"mc": (_keep(last, "mc", lambda: mc.sparse_encode(
            X, D, n_nonzero_coefs=s, n_threads=T)), None)}
        if spams is not None:
            routes["spams"] = (_keep(last, "spams", workloads.spams_omp_fn(spams, X, D, s, T)),
                               None)
        routes["gemm"] = (lambda: np.matmul(D, X.T, out=buf), None)
        res = ctx.interleave(routes, min_time=z["omp_min_time"])
        sk_load = harness.ForeignLoad()
        t_sk, C_sk, _ = harness.best_time(
            lambda: sk_sparse_encode(Xs, D, algorithm="omp", n_nonzero_coefs=s),
            z["omp_repeats"], settle=ctx.settle, load=sk_load)
        C_mc = last["mc"]
        resid_mc = workloads.relative_residual(Xs, C_mc[:n_sk], D)
        resid_sk = workloads.relative_residual(Xs, C_sk, D)
        mem = f"omp_{name}"
        ctx.memory_specs[mem] = dict(kind="omp", n_components=k, n_features=m, s=s,
                                     n_signals=n)
        common = dict(group="omp", case=case, size=size, memory_key=mem)
        if spams is None:
            ctx.add(Record(ours="sparse_encode", peer="SPAMS omp", target="omp_spams",
                           skipped="spams not importable", **common))
        else:
            A = last["spams"]
            if A.nnz == 0:
                ctx.add(Record(ours="sparse_encode", peer="SPAMS omp", target="omp_spams",
                               skipped="SPAMS returned all-zero codes", **common))
            else:
                resid_sp = workloads.relative_residual(Xs, A[:, :n_sk].T, D)
                ctx.add(Record(
                    ours="sparse_encode", peer="SPAMS omp (ORMP)", target="omp_spams",
                    mc_seconds=res["mc"].best, peer_seconds=res["spams"].best,
                    quality_name="rel. residual (subset)", mc_quality=resid_mc,
                    peer_quality=resid_sp, quality_ok=resid_mc <= resid_sp * (
                        1 + QUALITY_TOLERANCE), quality_rule=f"<= x{1 + QUALITY_TOLERANCE:g}",
                    load=_load(res["mc"], res["spams"]), **common))
        ctx.add(Record(
            ours="sparse_encode", peer="scikit-learn sparse_encode(algorithm='omp')",
            target="omp_sklearn", mc_seconds=res["mc"].best, peer_seconds=t_sk, mc_work=n,
            peer_work=n_sk, quality_name="rel. residual (subset)", mc_quality=resid_mc,
            peer_quality=resid_sk,
            quality_ok=resid_mc <= resid_sk * (1 + QUALITY_TOLERANCE),
            quality_rule=f"<= x{1 + QUALITY_TOLERANCE:g}",
            load=max([v for v in (_load(res["mc"]), sk_load.cores) if v is not None],
                     default=None), **common))
        ctx.add(Record(
            ours="sparse_encode", peer="numpy GEMM D·Xᵀ (its projection, preallocated output)",
            target="omp_gemm", mc_seconds=res["mc"].best, peer_seconds=res["gemm"].best,
            load=_load(res["mc"], res["gemm"]), **common))


def _run_dictionary(ctx):
    z, T = ctx.sizes, ctx.threads
    n, atoms = z["dl_patches"], z["dl_atoms"]
    case = "dictionary learning, 8x8 patches"
    size = f"{n:,} patches, {atoms} atoms, s={workloads.DL_N_NONZERO}"
    try:
        X = workloads.load_patches(n)
    except ImportError as e:  # pillow (scikit-learn's sample images)
        why = f"the sample images need pillow ({type(e).__name__}: {e})"
        ctx.notes.append(f"dictionary learning skipped: {why}")
        ctx.add(Record(group="dictionary", case=case, size=size, ours="dict_learning",
                       peer="scikit-learn, SPAMS", target="dl_sklearn", skipped=why))
        return
    ctx.say(f"{case}, {size} ...")
    D0 = workloads.initial_dictionary(X, atoms)
    init = workloads.score(X, D0, workloads.DL_N_NONZERO, T)
    spams, why = workloads.import_spams()
    if spams is None:
        ctx.notes.append(f"dictionary learning: SPAMS rows skipped: {why}")
    learned = workloads.learn_and_score(
        X, D0, init["error"], alphas=z["dl_alphas"], sk_reps=z["dl_sk_reps"],
        rounds=z["dl_rounds"], spams=spams, settle=ctx.settle, out=ctx.out, threads=T,
        reach_spams=True)
    ctx.notes.extend(f"dictionary learning: {x}" for x in learned["notes"])
    ours = {r["method"]: r for r in learned["ours"]}
    peers = {r["name"]: r for r in learned["peers"]}
    for method in workloads.DL_METHODS:
        mem = f"dictionary_{method}"
        ctx.memory_specs[mem] = dict(kind="dictionary", n_patches=n, n_atoms=atoms,
                                     method=method, passes=workloads.DL_EPOCHS)
        r = ours[method]
        for t in (t for t in learned["targets"] if t["method"] == method):
            p = peers[t["peer"]]
            common = dict(group="dictionary", case=case, size=size, memory_key=mem,
                          ours=f"dict_learning(method={method!r})",
                          peer=f"{p['name']} ({p['params']})",
                          quality_name="rel. error", peer_quality=t["error"],
                          load=max([v for v in (r["foreign_load"], p["foreign_load"])
                                    if v is not None], default=None))
            if t["kind"] == "sklearn":
                reached = t["our_seconds"] is not None
                ctx.add(Record(
                    target="dl_sklearn", peer_seconds=t["seconds"],
                    mc_seconds=t["our_seconds"] if reached else r["times"][-1],
                    mc_quality=t["our_error"] if reached else r["final_error"],
                    quality_ok=reached, quality_rule="its error reached", bound=not reached,
                    **common))
            else:
                reach = t.get("our_reach_seconds")
                ctx.add(Record(
                    target="dl_spams", peer_seconds=t["seconds"],
                    mc_seconds=reach if reach is not None else r["times"][-1],
                    mc_quality=t["our_error"], quality_ok=bool(t["met"]),
                    quality_rule="ours at its time < its", bound=reach is None, **common))
    if spams is None:
        ctx.add(Record(group="dictionary", case=case, size=size, ours="dict_learning",
                       peer="SPAMS trainDL", target="dl_spams", skipped="spams not importable"))
    ctx.notes.append(
        "dictionary learning: every learner starts from the same dictionary (random patches); "
        "peers run 3 epochs (best time); matcompress's time is the time stamp of the first pass "
        "whose error is at most the peer's (median over rounds); its error column is its error "
        "at that pass (scikit-learn rows) or at the peer's time (SPAMS rows); every dictionary is "
        "scored by OMP with 8 nonzeros over its unit-norm atoms")


def _sk_back_to_back(ctx, fn, warm, runs, budget):
    """scikit-learn fits are slow: a warm-up on a small input, then up to `runs` runs back to
    back while the total stays under `budget` seconds. (best seconds, result, load)."""
    load = harness.ForeignLoad()
    ctx.settle()
    warm()
    times, result = [], None
    while True:
        ctx.settle()
        with load:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        if len(times) >= runs or sum(times) + times[-1] > budget:
            return min(times), result, load.cores


def _faiss(ctx, what):
    """(faiss or None, its k-means++ start method or None), with notes on what is missing."""
    faiss, why = workloads.import_faiss()
    if faiss is None:
        ctx.notes.append(f"{what}: faiss rows skipped: {why}")
        return None, None
    faiss.omp_set_num_threads(ctx.threads)
    kpp, how = workloads.faiss_kpp_method(faiss)
    if kpp is None:
        ctx.notes.append(f"{what}: {how}")
    return faiss, kpp


def _run_kmeans_1d(ctx):
    import matcompress as mc
    from sklearn.cluster import KMeans

    z, T = ctx.sizes, ctx.threads
    faiss, kpp = _faiss(ctx, "1-D k-means")
    n = z["km_values"]
    x = workloads.make_values(n)
    X1 = np.ascontiguousarray(x.reshape(-1, 1))
    it = workloads.N_ITER
    for k in z["km_ks"]:
        case = f"1-D k-means, k={k}"
        size = f"{n:,} Laplace values, {it} iterations"
        ctx.say(f"{case}, {size} ...")
        last = {}
        routes = {"mc": (_keep(last, "mc", lambda: mc.fit_codebook(
            x, k, method="lloyd", max_iter=it, tol=0.0, random_state=workloads.SEED,
            n_threads=T)[0]), None)}
        all_points = -(-n // k)
        peers = []
        if faiss is not None:
            inits = [("random init", None)] + ([("k-means++ init", kpp)] if kpp is not None
                                               else [])
            for label, init in inits:
                key = f"faiss {label}"
                routes[key] = (_keep(last, key, lambda init=init: workloads.faiss_kmeans(
                    faiss, X1, k, max_points_per_centroid=all_points, init_method=init)[0]),
                    None)
                peers.append((key, f"faiss Kmeans, {label}, every value "
                                   f"(max_points_per_centroid={all_points})"))
        res = ctx.interleave(routes)
        t_sk, sk, sk_load = _sk_back_to_back(
            ctx, lambda: KMeans(n_clusters=k, n_init=1, max_iter=it, tol=0.0,
                                random_state=workloads.SEED).fit(X1),
            lambda: KMeans(n_clusters=k, n_init=1, max_iter=2, tol=0.0,
                           random_state=workloads.SEED).fit(X1[: max(20_000, 64 * k)]),
            z["km_sk_runs"], z["km_sk_budget"])
        inertia = {key: workloads.inertia_1d(x, c) for key, c in last.items()}
        inertia["sk"] = workloads.inertia_1d(x, sk.cluster_centers_)
        mem = f"kmeans_1d_{k}"
        ctx.memory_specs[mem] = dict(kind="kmeans_1d", n=n, k=k)
        common = dict(group="kmeans_1d", case=case, size=size, memory_key=mem,
                      ours=f"fit_codebook (Lloyd, {it} iterations)",
                      target="kmeans_1d", quality_name="inertia", mc_quality=inertia["mc"],
                      quality_rule="<= its")
        ctx.add(Record(peer=f"scikit-learn KMeans (k-means++, n_init=1, {it} iterations)",
                       mc_seconds=res["mc"].best, peer_seconds=t_sk, peer_quality=inertia["sk"],
                       quality_ok=inertia["mc"] <= inertia["sk"],
                       load=max([v for v in (_load(res["mc"]), sk_load) if v is not None],
                                default=None), **common))
        for key, label in peers:
            ctx.add(Record(peer=label, mc_seconds=res["mc"].best, peer_seconds=res[key].best,
                           peer_quality=inertia[key], quality_ok=inertia["mc"] <= inertia[key],
                           load=_load(res["mc"], res[key]), **common))
        if faiss is None:
            ctx.add(Record(peer="faiss Kmeans", skipped="faiss not importable",
                           **{a: b for a, b in common.items()
                              if a not in ("quality_name", "mc_quality", "quality_rule")}))
    ctx.notes.append(
        "1-D k-means: faiss trains on every value (max_points_per_centroid = ceil(n/k)); its "
        f"default sub-samples to {FAISS_MPPC}·k values, a smaller problem (bench/kmeans.py "
        "shows it); inertia recomputed in float64 the same way for every result")


def _run_blocks(ctx):
    import matcompress as mc

    z, T = ctx.sizes, ctx.threads
    faiss, kpp = _faiss(ctx, "block k-means")
    it = workloads.N_ITER
    labels = {4: "block k-means 500k x 4, k=256", 16: "block k-means 100k x 16, k=1024"}
    for n, d, k in z["blocks"]:
        case = labels.get(d, f"block k-means, d={d}")
        size = f"{n:,} x {d}, k={k}, {it} iterations"
        ctx.say(f"{case}: {size} ...")
        X = workloads.make_blocks(n, d)
        sub = n > FAISS_MPPC * k
        target = "blocks_low" if d <= 8 else "blocks_high"
        lloyd = dict(method="lloyd", max_iter=it, tol=0.0, random_state=workloads.SEED,
                     n_threads=T)
        all_points = -(-n // k)
        # (our label, our kwargs, faiss label, faiss kwargs)
        pairs = [("random init, every point", dict(init="random"),
                  "faiss Kmeans, random init, every point", dict(
                      max_points_per_centroid=all_points))]
        if sub:
            pairs.append((f"random init, sample of {FAISS_MPPC}·k points",
                          dict(init="random", max_points_per_centroid=FAISS_MPPC),
                          f"faiss Kmeans, its default (random init, sample of {FAISS_MPPC}·k)",
                          dict()))
        if kpp is not None or faiss is None:
            pairs.append(("k-means++ init", dict(), "faiss Kmeans, k-means++ init, every point",
                          dict(max_points_per_centroid=all_points, init_method=kpp)))
        mem = f"blocks_{d}"
        ctx.memory_specs[mem] = dict(kind="blocks", n=n, d=d, k=k)
        if faiss is None:  # every row is a comparison with faiss: nothing to time
            for ours, _, peer, _ in pairs:
                ctx.add(Record(group="blocks", case=case, size=size, memory_key=mem,
                               target=target, ours=f"fit_codebook, {ours}",
                               peer=peer, skipped="faiss not importable"))
            continue
        last, routes = {}, {}
        for i, (_, kw, _, fkw) in enumerate(pairs):
            routes[f"mc{i}"] = (_keep(last, f"mc{i}", lambda kw=kw: mc.fit_codebook(
                X, k, block_size=d, **lloyd, **kw)[0]), None)
            routes[f"faiss{i}"] = (_keep(last, f"faiss{i}", lambda fkw=fkw: workloads.faiss_kmeans(
                faiss, X, k, search=True, **fkw)[0]), None)
        res = ctx.interleave(routes)
        for i, (ours, _, peer, _) in enumerate(pairs):
            common = dict(group="blocks", case=case, size=size, memory_key=mem, target=target,
                          ours=f"fit_codebook, {ours}", peer=peer)
            i_mc = workloads.inertia_blocks(X, last[f"mc{i}"])
            i_fa = workloads.inertia_blocks(X, last[f"faiss{i}"])
            ctx.add(Record(mc_seconds=res[f"mc{i}"].best, peer_seconds=res[f"faiss{i}"].best,
                           quality_name="inertia", mc_quality=i_mc, peer_quality=i_fa,
                           quality_ok=i_mc <= i_fa * (1 + QUALITY_TOLERANCE),
                           quality_rule=f"<= x{1 + QUALITY_TOLERANCE:g}",
                           load=_load(res[f"mc{i}"], res[f"faiss{i}"]), **common))
    ctx.notes.append(
        "block k-means: faiss's time includes index.search of every point (fit_codebook returns "
        "every point's code); like-for-like pairs (same init, same points); the sub-sampled pair "
        f"only where n > {FAISS_MPPC}·k")


def _run_additive(ctx):
    import matcompress as mc

    faiss, _ = _faiss(ctx, "additive quantization")
    size, configs = ctx.sizes["additive"]
    W = np.random.default_rng([workloads.SEED, size]).standard_normal((size, size),
                                                                       dtype=np.float32)
    beam = 8
    for M, K, b in configs:
        bits = K.bit_length() - 1
        case = f"additive quantization {size}², M={M}, K={K}, b={b}"
        what = f"{size} x {size} float32 ({M * bits / b:g} code bits a weight), beam {beam}"
        ctx.say(f"{case} ...")
        ours = (f"AdditiveCompressor(M={M}, K={K}, b={b}): residual training, 2 refit/beam "
                "rounds, scales")
        peer = "faiss ResidualQuantizer (train + compute_codes), max_beam_size 8"
        if faiss is None:
            ctx.add(Record(group="additive", case=case, size=what, ours=ours, peer=peer,
                           target="additive_faiss", skipped="faiss not importable"))
            continue
        comp = mc.AdditiveCompressor(M, K, b, beam_size=beam, random_state=workloads.SEED,
                                     max_fit_points=size * size, n_threads=ctx.threads)
        X = W.reshape(-1, b)

        def run_faiss(M=M, bits=bits, b=b, X=X):
            rq = faiss.ResidualQuantizer(b, M, bits)
            rq.max_beam_size = beam
            rq.train(X)
            return rq, rq.compute_codes(X)

        last = {}
        res = ctx.interleave({"mc": (_keep(last, "mc", lambda comp=comp: comp.compress(W)),
                                     None),
                              "faiss": (_keep(last, "faiss", run_faiss), None)})
        ref = float(np.linalg.norm(W))
        e_mc = float(np.linalg.norm(W - last["mc"].to_dense())) / ref
        rq, codes = last["faiss"]
        e_fa = float(np.linalg.norm(X - rq.decode(codes))) / ref
        ctx.add(Record(group="additive", case=case, size=what, ours=ours, peer=peer,
                       target="additive_faiss", mc_seconds=res["mc"].best,
                       peer_seconds=res["faiss"].best, quality_name="relative error",
                       mc_quality=e_mc, peer_quality=e_fa,
                       quality_ok=e_mc <= e_fa * (1 + QUALITY_TOLERANCE),
                       quality_rule=f"<= x{1 + QUALITY_TOLERANCE:g}",
                       load=_load(res["mc"], res["faiss"])))
    ctx.notes.append(
        "additive quantization: a Gaussian matrix (no channel structure, so matcompress's "
        "float16 column scales, stored besides, neither help nor cost); faiss codes the raw "
        "blocks; both fit and code every block")


def _run_gemv(ctx):
    from . import forms

    size = ctx.sizes["gemv"]
    case = "factored GEMV 4096², 4-bit codebook, batch 1"
    ctx.say(f"{case}: {size} x {size} ...")
    f, W, x, ref = forms.gemv_case(size)
    routes = {"dense": (lambda: x @ W, None), "mc": (lambda: f.matmul(x), None)}

    def err(y):
        return float(np.abs(np.asarray(y).reshape(-1) - ref[0]).max() / np.abs(ref).max())

    e_mc, e_dense = err(f.matmul(x)), err(x @ W)
    res = ctx.interleave(routes)
    path = os.path.join(ctx.tmpdir, "gemv.npz")
    f.save(path)
    ctx.memory_specs["gemv"] = dict(kind="matmul", path=path, batch=1)
    ctx.add(Record(group="gemv", case=case, size=f"{size} x {size}, batch 1",
                   ours=f"Codebook.matmul (4-bit packed, {_mib(f.nbytes)})",
                   peer=f"dense numpy x @ W (float32, {_mib(W.nbytes)})",
                   target="gemv", mc_seconds=res["mc"].best, peer_seconds=res["dense"].best,
                   quality_name="max error / max of y (float64 ref.)", mc_quality=e_mc,
                   peer_quality=e_dense, quality_ok=e_mc < 1e-4, quality_rule="< 1e-4",
                   memory_key="gemv", load=_load(res["mc"], res["dense"])))


def _run_factored(ctx):
    from . import forms

    size = ctx.sizes["factored"]
    r = FACTORED_RATIO
    case = f"factored product, every form at {r}x"
    rng = np.random.default_rng(forms.SEED)
    A = rng.standard_normal((size, size), dtype=np.float32)
    ctx.say(f"{case}: W {size} x {size}, forms from random factors ...")
    built = forms.build_forms(A, forms.FAMILIES, (r,), random_factors=True,
                              out=None if ctx.out is None else ctx.say)
    for fm in built:
        fm.path = os.path.join(ctx.tmpdir, f"form_{fm.family}.npz")
        fm.f.save(fm.path)
    for batch in ctx.sizes["factored_batches"]:
        x = np.random.default_rng([forms.SEED, size, batch, 4]).standard_normal(
            (batch, size), dtype=np.float32)
        routes = {"dense": (lambda x=x: x @ A, None)}
        for fm in built:
            routes[fm.key] = (lambda f=fm.f, x=x: f.matmul(x), None)
        ctx.say(f"  batch {batch}:")
        res = ctx.interleave(routes, slow_rounds=2)
        for fm in built:
            mem = f"factored_{fm.family}_{batch}"
            ctx.memory_specs[mem] = dict(kind="matmul", path=fm.path, batch=batch)
            ratio = fm.f.compression_ratio
            ctx.add(Record(group="factored", case=f"factored product, batch {batch}",
                           size=f"W {size} x {size}", ours=f"{fm.name} ({fm.params})",
                           peer="dense numpy x @ W (float32)", target="factored",
                           mc_seconds=res[fm.key].best, peer_seconds=res["dense"].best,
                           quality_name="x fewer bytes", mc_quality=ratio, peer_quality=1.0,
                           quality_ok=ratio >= 4.0 * (1 - QUALITY_TOLERANCE),
                           quality_rule=f">= 4x within {QUALITY_TOLERANCE:.0%}", memory_key=mem,
                           load=_load(res[fm.key], res["dense"])))
    ctx.notes.append(
        f"factored products: every form stored at {r}x fewer bytes (every stored byte counted, "
        "so the 8-bit codebook's table leaves it just under 4x: 'within 1%'; the target's bound, "
        "the slowest setting for every form but sign bits), built from "
        "random factors of the forms' sizes (a product's time does not depend on the values); "
        "a route slower than 0.5 s per call is timed in at most 2 rounds")


def _run_train_step(ctx):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    case = "CompressedDense train step after the drop"
    tf, why = workloads.import_optional("tensorflow")
    if tf is None:
        ctx.notes.append(f"train step skipped: {why}")
        ctx.add(Record(group="train_step", case=case, size="-", ours="CompressedDense",
                       peer="keras Dense", target="train_step",
                       skipped="tensorflow not importable"))
        return
    from . import tf_step

    m, n = ctx.sizes["tf_shape"]
    rng = np.random.default_rng(tf_step.SEED)
    for batch in ctx.sizes["tf_batches"]:
        ctx.say(f"{case}: {m} x {n}, batch {batch} (building the layers) ...")
        try:
            routes, nbytes = tf_step.train_step_routes(m, n, batch, rng)
        except ImportError as e:  # TensorFlow imports, but matcompress's op library does not load
            why = " ".join(str(e).split())
            ctx.notes.append(f"train step skipped: {why}")
            ctx.add(Record(group="train_step", case=case, size=f"{m} x {n}", ours="CompressedDense",
                           peer="keras Dense", target="train_step",
                           skipped="matcompress's TensorFlow op library does not load"))
            return
        res = ctx.interleave({k: (v, None) for k, v in routes.items()})
        for name in tf_step.COMPRESSORS:
            key = f"CompressedDense, {name}"
            ctx.add(Record(group="train_step", case=f"{case}, batch {batch}",
                           size=f"{m} x {n}, batch {batch}", ours=key,
                           peer="keras Dense", target="train_step",
                           mc_seconds=res[key].best, peer_seconds=res["keras Dense"].best,
                           quality_name="x fewer bytes (trained parts)",
                           mc_quality=m * n * 4 / nbytes[name], peer_quality=1.0,
                           load=_load(res[key], res["keras Dense"])))
    ctx.notes.append(
        f"train step: one tf.function step (forward, MSE, gradients, SGD with momentum) with "
        f"every compressor asked for {tf_step.RATIO}x fewer bytes, after the full matrix is "
        f"dropped; tensorflow {tf.__version__}; its peak memory is not measured")


_GROUP_TARGET = {"omp": "omp_spams", "dictionary": "dl_sklearn", "kmeans_1d": "kmeans_1d",
                 "blocks": "blocks_low", "additive": "additive_faiss", "gemv": "gemv",
                 "factored": "factored",
                 "train_step": "train_step"}
RUNNERS = {"omp": _run_omp, "dictionary": _run_dictionary, "kmeans_1d": _run_kmeans_1d,
           "blocks": _run_blocks, "additive": _run_additive, "gemv": _run_gemv,
           "factored": _run_factored,
           "train_step": _run_train_step}


def run(mode="full", *, groups=GROUPS, threads=None, wait_idle=None, memory=True, out=None):
    """Run the comparison; returns a :class:`Result`.

    Parameters
    ----------
    mode : {"full", "quick", "tiny"}, default="full"
        Sizes and rounds (see SIZES); "tiny" is for tests (figures meaningless).
    groups : sequence of str, default=GROUPS
        Which cases to run (names of GROUPS), in GROUPS order.
    threads : int, default=None
        Threads for every library; None: the cores matcompress uses by default (one in "tiny"
        mode).
    wait_idle : float, default=None
        Seconds the run may wait, in all, for other processes to leave the CPU before timings;
        None: the mode's default.
    memory : bool, default=True
        Measure matcompress's peak memory per case (in fresh processes).
    out : text stream, default=None
        Progress lines (None: silent).
    """
    import matcompress as mc
    from threadpoolctl import threadpool_limits

    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown case groups {unknown}; known: {', '.join(GROUPS)}")
    T = int(threads or SIZES[mode].get("threads") or mc.show_config()["default_threads"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        ctx = _Context(mode, T, wait_idle, out, tmp)
        failed = []
        with threadpool_limits(limits=T):
            for g in GROUPS:
                if g not in groups:
                    continue
                try:
                    RUNNERS[g](ctx)
                except Exception as e:  # noqa: BLE001 - one broken case must not lose the run
                    import traceback

                    failed.append(g)
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    why = (f"{type(e).__name__}: {' '.join(str(e).split())} "
                           f"({os.path.basename(where.filename)}:{where.lineno})")
                    ctx.notes.append(f"{g}: FAILED, its remaining rows are missing: {why}")
                    ctx.add(Record(group=g, case=g, size="-", ours="-", peer="-",
                                   target=_GROUP_TARGET[g], skipped=f"FAILED: {why}"))
                    say(out, f"{g}: FAILED: {why}")
        mem, how = {}, ""
        if memory and ctx.memory_specs:
            ctx.say("peak memory (fresh processes) ...")
            mem, how = measure_memory(ctx.memory_specs, T, ctx.sizes["memory_one_process"])
    loads = [r.load for r in ctx.records]
    notes = ctx.notes + harness.load_notes(loads, ctx.settle.waited)
    res = Result(mode=mode, threads=T, groups=tuple(g for g in GROUPS if g in groups),
                 records=ctx.records, memory=mem, notes=notes, memory_how=how, failed=failed)
    res.elapsed = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------
# peak memory, in fresh processes

_CHILD = r"""
import json, sys
a = json.loads(sys.argv[1])
if a["drop_editable"]:  # the parent bypassed an editable install (scripts/worktree_test.sh)
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import matcompress
assert matcompress.__file__ == a["package"], (matcompress.__file__, a["package"])
from matcompress.benchmark.compare import _memory_child
_memory_child(a)
"""


def _memory_call(spec, threads):
    """(call, warm-up call, input bytes) of the matcompress call a memory spec names."""
    import matcompress as mc

    kind = spec["kind"]
    if kind == "omp":
        D = workloads.make_dictionary(spec["n_components"], spec["n_features"], np.float32)
        X = workloads.make_signals(spec["n_signals"], spec["n_features"], np.float32)
        kw = dict(n_nonzero_coefs=spec["s"], n_threads=threads)
        return (lambda: mc.sparse_encode(X, D, **kw), lambda: mc.sparse_encode(X[:256], D, **kw),
                X.nbytes + D.nbytes)
    if kind == "dictionary":
        X = workloads.load_patches(spec["n_patches"])
        D0 = workloads.initial_dictionary(X, spec["n_atoms"])
        kw = dict(n_nonzero_coefs=workloads.DL_N_NONZERO, method=spec["method"], tol=0.0,
                  dict_init=D0, random_state=workloads.SEED, n_threads=threads)
        return (lambda: mc.dict_learning(X, spec["n_atoms"], max_iter=spec["passes"], **kw)[:2],
                lambda: mc.dict_learning(X[:spec["n_atoms"]], spec["n_atoms"], max_iter=1, **kw),
                X.nbytes + D0.nbytes)
    if kind in ("kmeans_1d", "blocks"):
        if kind == "blocks":
            x = workloads.make_blocks(spec["n"], spec["d"])
            kw = dict(block_size=spec["d"])
        else:
            x, kw = workloads.make_values(spec["n"]), {}
        kw.update(method="lloyd", max_iter=workloads.N_ITER, tol=0.0,
                  random_state=workloads.SEED, n_threads=threads)
        return (lambda: mc.fit_codebook(x, spec["k"], **kw)[:2],
                lambda: mc.fit_codebook(x[:4096], spec["k"], **kw), x.nbytes)
    if kind == "matmul":
        f = mc.factors.load(spec["path"])
        x = np.random.default_rng([workloads.SEED, spec["batch"]]).standard_normal(
            (spec["batch"], f.shape[0]), dtype=np.float32)
        # the warm-up at the full batch: threads, BLAS buffers, the conversions kept with f
        return lambda: f.matmul(x), lambda: f.matmul(x), f.nbytes + x.nbytes
    raise ValueError(f"unknown memory spec kind {kind!r}")


def _nbytes(obj):
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if hasattr(obj, "indptr"):  # scipy sparse
        return obj.data.nbytes + obj.indices.nbytes + obj.indptr.nbytes
    return int(getattr(obj, "nbytes", 0))


def _memory_child(a):
    """In a fresh process: each spec's call after a warm-up, its peak RSS growth (one JSON line
    per spec)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=a["threads"]):
        for key, spec in a["specs"].items():
            try:
                call, warm, in_bytes = _memory_call(spec, a["threads"])
                r = warm()
                del r
                harness.release_freed_memory()
                before, peak_before, how = harness.start_peak()
                y = call()
                peak_after = harness.maxrss()
                out_bytes = _nbytes(y)
                del y, call, warm
                harness.release_freed_memory()
                line = dict(key=key, before=before, peak_before=peak_before,
                            peak_after=peak_after, in_bytes=in_bytes, out_bytes=out_bytes,
                            how=how)
            except Exception as e:  # noqa: BLE001 - reported in the table, never a crash
                line = dict(key=key, error=f"{type(e).__name__}: {e}")
            print(json.dumps(line), flush=True)


def measure_memory(specs, threads, one_process=False, timeout=900):
    """Peak RSS growth of each spec's matcompress call: {key: figures}, and how it was measured.

    A fresh interpreter per spec (or one for all, each call after the previous one's memory is
    returned to the system, with `one_process`): after a warm-up call (threads, code, the
    conversions a factorization keeps), the peak RSS is reset by ``/proc/self/clear_refs`` just
    before the call and read from ``VmHWM`` after it; the figure is that peak minus the RSS before
    the call (tracemalloc would not see the C++ allocations)."""
    import matcompress

    base = dict(package=matcompress.__file__, threads=threads,
                drop_editable=not any("editable" in type(f).__module__ for f in sys.meta_path))
    batches = [specs] if one_process else [{k: v} for k, v in specs.items()]
    res = {}
    for batch in batches:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(dict(base, specs=batch))],
                              capture_output=True, text=True, timeout=timeout)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                if "error" not in r:
                    r["extra"] = r["peak_after"] - r["before"]
                    r["ratio"] = r["extra"] / max(1, r["in_bytes"] + r["out_bytes"])
                    r["resolved"] = r["peak_after"] > r["peak_before"]
                res[r["key"]] = r
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        for k in batch:
            res.setdefault(k, dict(key=k, error=why))
    how = next((r["how"] for r in res.values() if "how" in r), "not measured")
    where = "one fresh process for all, in turn" if one_process else "a fresh process per case"
    return res, f"{where}; {how}"


# --------------------------------------------------------------------------------------------
# the report


def _fmt_s(v):
    if v is None:
        return "-"
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1e3:.3g} ms" if v < 0.1 else f"{v * 1e3:.0f} ms"
    return f"{v:.2f} s"


def _fmt_x(v):
    if v >= 100:
        return f"{v:.0f}x"
    if v >= 10:
        return f"{v:.1f}x"
    return f"{v:.2f}x"


def _fmt_ratio(rec):
    r = rec.ratio
    if r is None:
        return "-"
    t = TARGETS[rec.target]
    text = f"{'< ' if rec.bound else ''}{_fmt_x(r)}"
    return text + (" faster" if t.higher else " its time")


def _fmt_q(v):
    if v is None:
        return "-"
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}" if a >= 10 else f"{v:.5f}" if a < 1 else f"{v:.4f}"


def _mib(b):
    return f"{b / 2**20:.1f} MiB" if abs(b) >= 2**20 or b == 0 else f"{b / 2**10:.0f} KiB"


def _fmt_mem(m, spec_kind):
    if m is None:
        return "-"
    if "error" in m:
        return f"error: {m['error']}"
    text = f"{_mib(m['extra'])} ({m['ratio']:.2f}x in+out"
    if spec_kind in ("omp", "kmeans_1d", "blocks"):
        text += f", < {MEMORY_TARGET:g}x {'met' if m['ratio'] < MEMORY_TARGET else 'MISSED'}"
    return text + ")" + ("" if m.get("resolved", True) else " (unresolved)")


def format_table(result):
    """The comparison table as markdown (padded, so it reads well in a terminal too)."""
    head = ["case", "size", "matcompress", "peer", "time: matcompress", "time: peer",
            "quality: matcompress / peer", "equal quality", "speed ratio", "target (DESIGN §7)",
            "result", "peak memory: matcompress", "other load"]
    body = []
    kinds = {}
    for r in result.records:
        mem = result.memory.get(r.memory_key) if r.memory_key else None
        kind = r.group if r.memory_key else None
        kinds[r.memory_key] = kind
        if r.skipped is not None:
            body.append([r.case, r.size, r.ours, r.peer, "-", "-", "-", "-", "-",
                         TARGETS[r.target].text, f"skipped: {r.skipped}",
                         _fmt_mem(mem, kind), "-"])
            continue
        if r.quality_name:
            q = f"{r.quality_name}: {_fmt_q(r.mc_quality)} / {_fmt_q(r.peer_quality)}"
        else:
            q = "-"
        eq = "-" if r.quality_ok is None else (
            f"{'yes' if r.quality_ok else 'NO'} ({r.quality_rule})")
        per = peer_per = ""
        if r.mc_work != r.peer_work:  # e.g. signals: scikit-learn's OMP runs on a subset
            per, peer_per = f" for {r.mc_work:,.0f}", f" for {r.peer_work:,.0f}"
        body.append([
            r.case, r.size, r.ours, r.peer, _fmt_s(r.mc_seconds) + per,
            _fmt_s(r.peer_seconds) + peer_per, q, eq, _fmt_ratio(r),
            TARGETS[r.target].text, harness.met(r.met), _fmt_mem(mem, kind),
            "-" if r.load is None else f"{r.load:.2f}"])
    # a "|" in a cell (an error message, say) would end the cell in markdown
    body = [[str(c).replace("|", "\\|") for c in row] for row in body]
    return harness.table(head, body)


def summary_line(result):
    """'targets met in N of M measured rows; missed: ...'."""
    measured = [r for r in result.records if r.measured]
    missed = [r for r in measured if not r.met]
    skipped = [r for r in result.records if not r.measured]
    text = f"targets met in {len(measured) - len(missed)} of {len(measured)} measured rows"
    if missed:
        text += "; missed: " + "; ".join(f"{r.case}, {_short(r.ours, 32)} vs "
                                         f"{_short(r.peer, 32)} ({_fmt_ratio(r)})"
                                         for r in missed)
    if skipped:
        text += f"; {len(skipped)} row{'s' if len(skipped) > 1 else ''} skipped"
    return text


def format_report(result, command, header=None):
    """The markdown section: title, command, machine facts, the table, notes."""
    lines = [SECTION_TITLE, ""]
    if result.mode != "full":
        lines += [f"**`{result.mode}` run: smaller sizes and fewer rounds; these figures are "
                  "indicative only** (the full run is the one that counts).", ""]
    if header is None:
        header = environment_header(command)
    lines += [header,
              f"- wall time: {result.elapsed:.0f} s ({result.mode} run"
              + (f", cases: {', '.join(result.groups)}" if result.groups != GROUPS else "")
              + ")",
              f"- every library on {result.threads} threads (threadpoolctl limits, "
              "faiss.omp_set_num_threads, SPAMS numThreads, n_threads); float32 data, fixed "
              "seeds",
              "- timing: the fast routes of a case interleaved in rounds (a pause and a wait for "
              "an idle CPU before each), best time each; scikit-learn's slow fits back to back; "
              "speed ratio = the peer's time per item over ours (\"faster\"), or ours over the "
              "peer's (\"its time\"), as the target states it",
              f"- peak memory: matcompress's call per case, {result.memory_how or 'not measured'}"
              "; in+out = input and output bytes (for products: the stored factors and x, y)",
              "- result: met when the ratio meets the target and the equal-quality check (where "
              "one applies) passes",
              "", format_table(result), "",
              f"Summary: {summary_line(result)}."]
    if result.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in dict.fromkeys(result.notes)]
    return "\n".join(lines) + "\n"


def environment_header(command):
    env = harness.environment()
    text = harness.format_environment(env, command)
    versions = [f"{d} {harness.distribution_version(d)}"
                for d in ("faiss-cpu", "tensorflow-cpu", "threadpoolctl", "matplotlib")]
    text += "\n- " + ", ".join(versions)
    source = harness.source_state()
    if source:
        text += f"\n- matcompress source: {source}"
    return text


_HEADING = re.compile(r"^## (?!#)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def replace_section(text, section, title=SECTION_TITLE):
    """`text` with its level-2 section headed `title` replaced by `section` (up to the next
    level-2 heading outside a code fence), or `section` appended when there is none."""
    lines = text.splitlines(keepends=True)
    start = end = None
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or not _HEADING.match(line):
            continue
        if start is None and line.rstrip("\n").rstrip() == title:
            start = i
        elif start is not None:
            end = i
            break
    section = section if section.endswith("\n") else section + "\n"
    if start is None:
        body = "".join(lines).rstrip("\n")
        return (body + "\n\n" if body else "") + section
    end = len(lines) if end is None else end
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_results(path, section):
    """Replace (or append) the comparison section of the markdown file at `path`."""
    with contextlib.redirect_stdout(io.StringIO()):
        harness.write_report(section, results=path, title=SECTION_TITLE, replace=replace_section)


def plot_ratios(result, path):
    """A PNG bar chart of every measured row's speed-up (the peer's time over ours, log scale)
    with its target as a mark: higher is better for every bar (a "<= Nx its time" target is
    drawn at 1/N)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result.records if r.measured]
    if not rows:
        raise ValueError("no measured rows to plot")
    labels = [f"{_short(r.case, 40)} | {_short(r.ours, 30)} vs {_short(r.peer, 30)}"
              for r in rows]
    speed = [r.speedup for r in rows]
    target = [TARGETS[r.target].value if TARGETS[r.target].higher
              else 1.0 / TARGETS[r.target].value for r in rows]
    colors = ["#3a7d44" if r.met else "#c0392b" for r in rows]
    fig = Figure(figsize=(12, 1.5 + 0.26 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))[::-1]
    ax.barh(y, speed, color=colors, height=0.7)
    ax.scatter(target, y, marker="|", s=220, color="black", linewidths=2, zorder=3,
               label="target")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("speed-up: the peer's time / matcompress's time, log scale (green: target "
                  "met, red: missed; black mark: the target)")
    title = f"matcompress bench ({result.mode} run, {result.threads} threads)"
    if result.mode != "full":
        title += ": indicative only"
    ax.set_title(title)
    lo = min(min(speed), min(target))
    hi = max(max(speed), max(target))
    ax.set_xlim(lo / 2, hi * 2)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _short(text, width=48):
    text = text.split(" (")[0]
    return text if len(text) <= width else text[:width - 1] + "…"


# --------------------------------------------------------------------------------------------
# command line

DESCRIPTION = ("Time every matcompress kernel against scikit-learn, SPAMS, faiss, dense numpy "
               "and Keras in one run, and print one table: the times, the quality of both "
               "results, the speed ratio beside its DESIGN.md §7 target (met / missed) and "
               "matcompress's peak memory. Missing optional peers (spams, faiss, tensorflow) are "
               "skipped with a note. The full run takes about 10 minutes on 2 cores; --quick "
               "under 2.")


def add_arguments(parser):
    """Add the comparison's options to an argparse parser (its own, or a CLI subcommand's)."""
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer rounds, under 2 minutes on 2 cores; the "
                             "figures are indicative only")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="all", metavar="GROUPS",
                        help="comma-separated case groups to run (default all: "
                             f"{', '.join(GROUPS)})")
    parser.add_argument("--markdown", metavar="FILE",
                        help="write the report section (command, machine, table) to FILE")
    parser.add_argument("--results", metavar="FILE",
                        help="replace (or add) the section \"## Comparison: `matcompress "
                             "bench`\" in the markdown FILE, e.g. bench/RESULTS.md; other "
                             "sections are left as they are")
    parser.add_argument("--png", metavar="FILE",
                        help="write a bar chart of the speed ratios against their targets "
                             "(needs matplotlib)")
    parser.add_argument("--wait-idle", type=float, metavar="SECONDS",
                        help="most time to wait, in all, for other processes to leave the CPU "
                             "before timings (default 120; 10 with --quick)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory measurements (fresh processes)")
    return parser


def _parse_groups(spec):
    return harness.parse_subset(spec, GROUPS, "--cases", "group")


def _check_output(path, what):
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory; give a file path")
    if not os.path.isdir(d):
        raise ValueError(f"{what}: directory {d!r} does not exist")


def run_parsed(args, command=None, prog="matcompress bench"):
    """Run the comparison for parsed arguments (see add_arguments); returns the exit status:
    0 done, 1 a runtime problem (e.g. matplotlib missing for --png), 2 a bad argument."""
    if command is None:
        command = shlex.join(["matcompress"] + sys.argv[1:])
    try:
        groups = _parse_groups(args.cases)
        for path, what in ((args.markdown, "--markdown"), (args.results, "--results"),
                           (args.png, "--png")):
            if path:
                _check_output(path, what)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.png:
        plt, why = workloads.import_optional("matplotlib")
        if plt is None:
            print(f"{prog}: error: --png needs matplotlib: {why}", file=sys.stderr)
            return 1
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    try:
        for module in ("spams", "faiss"):  # loaded now, so that their thread pools are listed
            workloads.import_optional(module)
        header = environment_header(command)
        print(header, flush=True)
        print(flush=True)
        result = run(mode, groups=groups, wait_idle=args.wait_idle, memory=not args.no_memory,
                     out=sys.stdout)
        section = format_report(result, command, header)
        print()
        print(section)
        harness.write_report(section, markdown=args.markdown, results=args.results,
                             title=SECTION_TITLE, replace=replace_section)
        if args.png:
            if any(r.measured for r in result.records):
                plot_ratios(result, args.png)
                print(f"wrote {args.png}")
            else:
                print(f"{prog}: nothing measured, no plot written", file=sys.stderr)
                return 1
        if result.failed:
            print(f"{prog}: error: case groups failed: {', '.join(result.failed)} (see the notes)",
                  file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None, prog="matcompress bench"):
    """Run ``matcompress bench`` with the arguments `argv` (default ``sys.argv[1:]``).

    Returns the exit status: 0 done, 1 a runtime problem, 2 a bad argument, 130 interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return run_parsed(args, command=shlex.join(prog.split() + argv), prog=prog)
