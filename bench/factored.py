"""Factored products benchmark: every stored form's ``x @ W`` and backward pass against dense numpy.

    python bench/factored.py [--quick] [--size N] [--rounds R] [--forms F,...] [--ratios R,...]
                             [--batches B,...] [--sections S,...] [--random-factors]
                             [--wait-idle SECONDS] [--markdown FILE]

W is a 4096 x 4096 float32 matrix (``--size``; 1024 with ``--quick``); x of batch 1, 32 and 256
(``--batches``). Each form is stored at 4x, 8x and 16x fewer bytes than the dense float32 W
(``--ratios``; the ratio actually reached, every stored byte counted, is printed beside it):

- low rank (``mc.compress(A, "low_rank", compression_ratio=r)``: rank m n / (r (m + n)));
- sparse codes over a dictionary (random factors: K-SVD on 4096 x 4096 takes far too long; half
  the bytes to the dictionary, the rest to s codes per row, distinct sorted atom indices);
- codebooks (``mc.compress(A, "kmeans", n_codes=c, block_size=b, max_iter=10)``): 8-bit scalar
  at 4x, 4-bit scalar (packed) at 8x, 4-bit blocks of 2 and 8-bit blocks of 4 at 16x;
- sign bits (random factors: the encode at k = 32 m / r bits is a k x m x n GEMM; k from the
  simhash compressor's ratio solver). k = 32,735 at 4x makes ``x @ R`` alone 8x the dense GEMM's
  work and regenerates a 4096 x 32,735 projection per call: slow by nature, so its slow routes
  get fewer rounds (below);
- pruned, values (``mc.compress(A, "pruning", compression_ratio=r)``: uint16 column indices and
  float32 values, density 1/6, 1/12, 1/24) and pruned with codes (``n_codes=16``: uint8 codes
  into a 16-entry codebook, density 1/3, 1/6, 1/12).

``--random-factors`` builds every form from random factors of the same sizes (faster; the time of
a product does not depend on the values). A is Gaussian (seed SEED, printed); x and dy too.

Sections (``--sections``, default all):

- ``gemv``: the batch-1 4-bit codebook GEMV target of DESIGN.md §7 (>= 3x faster than the dense
  float32 GEMV), every instruction-set path of the kernel (``_core.set_isa``) and 1 thread.
- ``forward``: per batch, every form's ``W.matmul(x)`` against numpy ``x @ W``. Target (DESIGN.md
  §7): at batch >= 32 every form within 2x the dense GEMM time. At batch 1 each route is also
  timed with a cold cache: the forms' stored bytes (<= 16 MiB) fit in this machine's L3 and the
  dense W (64 MiB) does not, so calling one W again and again flatters the forms against a model
  of many layers. The cold route cycles through copies of its weights (as many as make twice the
  L3 size besides the one in use; about 1.3 GB in all at 4096), so every call reads its weights
  from memory while the thread pools stay as busy as between the layers of a model.
- ``backward``: ``W.matmul_backward(x, dy)`` (dx and the factor gradients) against the dense
  backward ``dy @ W.T`` and ``x.T @ dy``, at the batches >= 32 (no target: ratios only).
- ``memory``: the peak RSS growth of one batch-256 forward of each form (and of dense numpy), in a
  fresh process per form (one for all with --quick), the forms saved and loaded from ``.npz``
  (bench/omp.py's helpers: after a warm-up call at the same batch and ``malloc_trim``, the peak
  RSS reset by ``/proc/self/clear_refs`` and read from ``VmHWM``; tracemalloc does not see the
  C++ allocations).

Threads: numpy's (and SciPy's) BLAS held to the cores matcompress uses by default (2 here) with
threadpoolctl; matcompress at its default. Timing: the routes of a table interleaved in rounds
(``--rounds``, default 5; 1 with --quick), best time of each; before each route's turn,
bench/omp.py's Settler pauses (0.3 s; 0.1 s with --quick) and waits for other processes to
leave the CPU (at most ``--wait-idle`` seconds in all); a warm-up call in the first round; then
calls until 20 ms are spent (at least 3, at most 30). A route whose warm-up takes more than
0.5 s is timed once per round, in at most 2 rounds. The cores other processes kept busy during
each route's timed calls are reported (per route when its calls lasted 0.1 s or more in all).
Each route is checked once against a float64 reference before the timings (rows of W from the
factors, on an x that is nonzero in those rows only).

Importable: ``build_forms``, ``run_gemv``, ``run_forward``, ``run_backward``, ``run_memory``,
``main(argv=None)``. The forms and the interleaved timing live in ``matcompress.benchmark``
(``forms`` and ``harness``, shared with ``matcompress bench``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    from . import omp as _ob
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import omp as _ob

import matcompress as mc
from matcompress import _core
from matcompress.benchmark import harness
from matcompress.benchmark.forms import (  # noqa: F401 - re-exported
    CODEBOOKS, FAMILIES, RATIOS, SEED, Form, build_forms, gemv_case, sparse_codes_shape)
from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes

BATCHES = (1, 32, 256)
MEMORY_BATCH = 256
SECTIONS = ("gemv", "forward", "backward", "memory")
TARGET_GEMV = 3.0  # 4-bit codebook GEMV at batch 1: >= 3x faster than dense
TARGET_BATCH = 2.0  # batch >= 32: every form's time <= 2x the dense GEMM's
MIN_TIME = 0.02  # seconds of calls per route and round
MAX_CALLS = 30
SLOW_SECONDS = 0.5  # a warm-up longer than this: one call per round, at most SLOW_ROUNDS rounds
SLOW_ROUNDS = 2


# --------------------------------------------------------------------------------------------
# checks: rows of W from the factors (cheap for every form), compared on an x that is nonzero
# in those rows only


def _rows_of(f, start, stop):
    """W[start:stop] in float64, from the factors."""
    f64 = np.float64
    m, n = f.shape
    if isinstance(f, LowRank):
        return f.left[start:stop].astype(f64) @ f.right.astype(f64)
    if isinstance(f, SparseCodes):
        idx = f.indices[start:stop].astype(np.int64)
        return np.einsum("rs,rsn->rn", f.values[start:stop].astype(f64),
                         f.dictionary[idx].astype(f64))
    if isinstance(f, Codebook):
        codes = f.unpacked_codes()[start:stop]
        return f.codebook[codes].reshape(stop - start, n).astype(f64)
    if isinstance(f, SignBits):
        from matcompress.hashing import projection

        R = projection(f.seed, m, f.n_bits, rows=(start, stop)).astype(f64)
        W = np.zeros((stop - start, n))
        for c in range(0, f.n_bits, 4096):  # the +-1 signs in slices of 4096 bits
            s = np.unpackbits(f.bits[c:c + 4096], axis=1, count=n, bitorder="little")
            W += R[:, c:c + 4096] @ (2.0 * s - 1.0)
        return W * f.scale.astype(f64)
    if isinstance(f, Pruned):
        return f.to_csr()[start:stop].toarray().astype(f64)
    raise TypeError(type(f).__name__)


def _check_rows(m):
    k = min(64, m // 2)
    return [(0, k), (m - k, m)]


def check_forward(f, m, batch, seed=SEED):
    """Max |y - ref| / max |ref| of f.matmul on an x of `batch` rows (the path the timings
    take) that is nonzero in the first and last rows of W only."""
    rng = np.random.default_rng([seed, m, 2])
    x = np.zeros((batch, m), np.float32)
    ref = 0.0
    for a, b in _check_rows(m):
        x[:, a:b] = rng.standard_normal((batch, b - a))
        ref = ref + x[:, a:b].astype(np.float64) @ _rows_of(f, a, b)
    y = np.asarray(f.matmul(x))
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_backward(f, m, n, batch, seed=SEED):
    """Max relative error of dx from f.matmul_backward in the first and last columns."""
    rng = np.random.default_rng([seed, m, 3])
    x = rng.standard_normal((batch, m), dtype=np.float32)
    dy = rng.standard_normal((batch, n), dtype=np.float32)
    dx, grads = f.matmul_backward(x, dy)
    assert isinstance(grads, dict), type(grads)
    err = 0.0
    for a, b in _check_rows(m):
        ref = dy.astype(np.float64) @ _rows_of(f, a, b).T
        err = max(err, float(np.abs(dx[:, a:b] - ref).max() / max(np.abs(ref).max(), 1e-30)))
    return err


# --------------------------------------------------------------------------------------------
# timing


def _l3_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as fh:
            v = fh.read().strip()
        return int(v[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[v[-1]] if v[-1] in "KMG" \
            else int(v)
    except (OSError, ValueError, KeyError):
        return None


def cold_copies(nbytes, l3=None):
    """How many copies of `nbytes` of weights to cycle through so that every call finds its
    copy evicted from the caches: the others add up to at least twice the L3 size."""
    l3 = l3 or _l3_bytes() or 32 * 2**20
    return int(min(512, max(2, math.ceil(2 * l3 / max(nbytes, 1)) + 1)))


def copy_factorization(f):
    """The same factorization with every array copied (its own memory)."""
    arrays = {fl.name: getattr(f, fl.name).copy() for fl in dataclasses.fields(f)
              if isinstance(getattr(f, fl.name), np.ndarray)}
    return dataclasses.replace(f, **arrays)


def cycling(fns):
    """A call that runs the next of `fns` each time (round robin)."""
    it = itertools.cycle(fns)
    return lambda: next(it)()


def interleave(routes, rounds, settle, *, out=print):
    """routes: {name: (fn, prepare or None)}; prepare() runs before every call, untimed (e.g. an
    instruction-set switch). Rounds over every route, best time each (harness.interleave with
    this script's calls per round and slow-route rule)."""
    return harness.interleave(routes, rounds, settle, out=out, min_time=MIN_TIME,
                              max_calls=MAX_CALLS, slow_seconds=SLOW_SECONDS,
                              slow_rounds=SLOW_ROUNDS)


def _ms(s):
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def _load(t):
    """Other processes' cores during a route's timed calls; "-" when they lasted too little for
    /proc/stat's 10 ms ticks to tell."""
    c = t.load.cores
    return "-" if c is None or t.load.wall < 0.1 else f"{c:.2f}"


def _table_load(res):
    """Other processes' cores over all the timed calls of a table."""
    wall = sum(t.load.wall for t in res.values())
    return sum(t.load.other for t in res.values()) / wall if wall > 0 else None


# --------------------------------------------------------------------------------------------
# sections


def run_gemv(size, rounds, settle, out=print):
    """The batch-1 4-bit codebook GEMV against dense numpy, every ISA path and 1 thread."""
    f, W, x, ref = gemv_case(size)
    cb = np.ascontiguousarray(f.codebook[:, 0])
    order = ("generic", "avx2", "avx512")
    isas = [i for i in reversed(order) if order.index(i) <= order.index(_core.detected_isa())]
    dense = f"dense numpy x @ W ({_threads()} threads)"
    top = isas[0]

    def on(isa):
        return lambda: _core.set_isa(isa)

    routes = {dense: (lambda: x @ W, None)}
    for isa in isas:
        routes[f"4-bit codebook, {isa} ({_threads()} threads)"] = (lambda: f.matmul(x), on(isa))
    routes[f"4-bit codebook, {top} (1 thread)"] = (
        lambda: _core.codebook4_gemv(x[0], f.codes, size, cb, 1), on(top))
    before = _core.active_isa()
    out(f"gemv: W {size} x {size}, 4-bit codes, batch 1")
    try:
        for name, (fn, prepare) in routes.items():
            if prepare:
                prepare()
            y = np.asarray(fn()).reshape(-1)
            err = np.abs(y - ref[0]).max() / np.abs(ref).max()
            assert err < 1e-4, (name, err)
        res = interleave(routes, rounds, settle, out=out)
    finally:
        _core.set_isa(before)
    d = res[dense].best
    lines = [f"W {size} x {size} float32 ({W.nbytes / 2**20:.0f} MiB dense, "
             f"{f.nbytes / 2**20:.1f} MiB as 4-bit codes), x batch 1; best of {rounds} rounds.",
             "", "| route | time | dense / this | other load |", "|---|---|---|---|"]
    for name, t in res.items():
        lines.append(f"| {name} | {_ms(t.best)} | {d / t.best:.2f}x | {_load(t)} |")
    ratio = d / res[f"4-bit codebook, {top} ({_threads()} threads)"].best
    lines += ["", f"Target (DESIGN.md §7): 4-bit codebook GEMV at batch 1 >= {TARGET_GEMV:g}x "
                  f"faster than the dense float32 GEMV: {ratio:.2f}x, "
                  f"{'met' if ratio >= TARGET_GEMV else '**missed**'}."]
    if size != 4096:
        lines.append(f"(The target is stated for 4096 x 4096; at {size} x {size} the dense W "
                     f"is {W.nbytes / 2**20:.0f} MiB, so the comparison differs.)")
    summary = dict(ratio=ratio, met=ratio >= TARGET_GEMV, size=size)
    return "\n".join(lines), summary, [_table_load(res)]


def _threads():
    return int(mc.show_config()["default_threads"])


def run_forward(A, forms, batch, rounds, settle, cold=False, out=print):
    """One batch: every form's matmul against numpy x @ W; with `cold`, each route also cycling
    through enough copies of its weights that every call reads them from memory."""
    m, n = A.shape
    x = np.random.default_rng([SEED, m, batch, 4]).standard_normal((batch, m), dtype=np.float32)
    out(f"forward, batch {batch}:")
    routes = {"dense": (lambda: x @ A, None)}
    errs = {}
    for fm in forms:
        errs[fm.key] = check_forward(fm.f, m, batch)
        routes[fm.key] = (lambda f=fm.f: f.matmul(x), None)
    if cold:
        copies = [A.copy() for _ in range(cold_copies(A.nbytes))]
        routes["dense (cold)"] = (cycling([lambda W=W: x @ W for W in copies]), None)
        for fm in forms:
            copies = [fm.f] + [copy_factorization(fm.f)
                               for _ in range(cold_copies(fm.f.nbytes) - 1)]
            routes[fm.key + " (cold)"] = (cycling([lambda f=f: f.matmul(x) for f in copies]),
                                          None)
        del copies
    res = interleave(routes, rounds, settle, out=out)
    d = res["dense"].best
    dcold = res["dense (cold)"].best if cold else None
    head = ["form", "parameters", "ratio (actual)", "built by", "time", "GB/s stored",
            "dense / this"]
    if cold:
        head += ["cold cache: time", "dense / this"]
    if batch >= 32:
        head += [f"this / dense (<= {TARGET_BATCH:g}x)"]
    head += ["calls", "other load", "check"]
    body = [["dense numpy `x @ W`", "float32", "1.000", "-", _ms(d),
             f"{A.nbytes / d / 1e9:.1f}", "1.00x"]
            + ([_ms(dcold), "1.00x"] if cold else []) + (["1.00x"] if batch >= 32 else [])
            + [str(res["dense"].calls), _load(res["dense"]), "-"]]
    rows = []
    for fm in forms:
        t = res[fm.key]
        row = dict(key=fm.key, batch=batch, time=t.best, vs_dense=d / t.best,
                   slow=t.slow, err=errs[fm.key])
        cells = [fm.name, fm.params, f"{fm.f.compression_ratio:.3f} (asked {fm.ratio})",
                 fm.built, _ms(t.best), f"{fm.f.nbytes / t.best / 1e9:.1f}",
                 f"{d / t.best:.2f}x"]
        if cold:
            tc = res[fm.key + " (cold)"]
            row["cold_vs_dense"] = dcold / tc.best
            cells += [_ms(tc.best), f"{dcold / tc.best:.2f}x"]
        if batch >= 32:
            row["met"] = t.best <= TARGET_BATCH * d
            cells += [f"{t.best / d:.2f}x {'met' if row['met'] else '**missed**'}"]
        cells += [f"{t.calls}" + (" (slow)" if t.slow else ""), _load(t),
                  f"{errs[fm.key]:.1e}"]
        body.append(cells)
        rows.append(row)
    title = (f"### Forward, batch {batch}: `W.matmul(x)` against numpy `x @ W` "
             f"(x {batch} x {m})\n\n")
    return title + _ob._table(head, body), rows, [_table_load(res)]


def run_backward(A, forms, batch, rounds, settle, out=print):
    """One batch: every form's matmul_backward against dense dy @ W.T and x.T @ dy."""
    m, n = A.shape
    rng = np.random.default_rng([SEED, m, batch, 5])
    x = rng.standard_normal((batch, m), dtype=np.float32)
    dy = rng.standard_normal((batch, n), dtype=np.float32)
    out(f"backward, batch {batch}:")
    routes = {"dense": (lambda: (dy @ A.T, x.T @ dy), None)}
    errs, missing = {}, []
    for fm in forms:
        if not hasattr(fm.f, "matmul_backward"):
            missing.append(fm.key)
            continue
        errs[fm.key] = check_backward(fm.f, m, n, batch)
        routes[fm.key] = (lambda f=fm.f: f.matmul_backward(x, dy), None)
    res = interleave(routes, rounds, settle, out=out)
    d = res["dense"].best
    head = ["form", "parameters", "ratio (actual)", "time", "dense / this", "this / dense",
            "gradients", "calls", "other load", "check dx"]
    body = [["dense `dy @ W.T`, `x.T @ dy`", "float32", "1.000", _ms(d), "1.00x", "1.00x",
             "dx, dW", str(res["dense"].calls), _load(res["dense"]), "-"]]
    rows = []
    for fm in forms:
        if fm.key in missing:
            body.append([fm.name, fm.params, f"{fm.f.compression_ratio:.3f}", "n/a", "-", "-",
                         "no matmul_backward", "-", "-", "-"])
            continue
        t = res[fm.key]
        _, grads = fm.f.matmul_backward(x[:1], dy[:1])
        body.append([fm.name, fm.params, f"{fm.f.compression_ratio:.3f} (asked {fm.ratio})",
                     _ms(t.best), f"{d / t.best:.2f}x", f"{t.best / d:.2f}x",
                     "dx, " + ", ".join(f"d{k}" for k in grads) if grads else "dx",
                     f"{t.calls}" + (" (slow)" if t.slow else ""), _load(t),
                     f"{errs[fm.key]:.1e}"])
        rows.append(dict(key=fm.key, batch=batch, time=t.best, vs_dense=d / t.best))
    title = (f"### Backward, batch {batch}: `W.matmul_backward(x, dy)` (dx and the factor "
             f"gradients) against dense `dy @ W.T` and `x.T @ dy`\n\n")
    notes = [f"no matmul_backward in this build: {', '.join(missing)}"] if missing else []
    return title + _ob._table(head, body), rows, [_table_load(res)], notes


_MEMORY_CHILD = _ob.PEAK_RSS_HELPERS + r"""
import json, sys
a = json.loads(sys.argv[1])
if a["drop_editable"]:  # the parent bypassed an editable install (scripts/private_test.sh)
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import numpy as np
import matcompress
from threadpoolctl import threadpool_limits

assert matcompress.__file__ == a["package"], (matcompress.__file__, a["package"])

for path in a["paths"]:
    if path.endswith(".npy"):
        W = np.load(path)
        fn, stored, m = (lambda x: x @ W), W.nbytes, W.shape[0]
    else:
        f = matcompress.factors.load(path)
        fn, stored, m = f.matmul, f.nbytes, f.shape[0]
    x = np.random.default_rng(a["seed"]).standard_normal((a["batch"], m), dtype=np.float32)
    with threadpool_limits(a["threads"]):
        y = fn(x)  # warm-up at the full batch: threads, BLAS buffers, code paged in
        del y
        release_freed_memory()
        before, peak_before, method = start_peak()
        y = fn(x)
        peak_after = maxrss()
    # conversions the Python face keeps with the factorization (made by the warm-up call)
    cached = sum(v.nbytes for v in getattr(f, "__dict__", {}).get("_native_cache", {}).values()
                 if hasattr(v, "nbytes")) if not path.endswith(".npy") else 0
    print(json.dumps(dict(path=path, before=before, peak_before=peak_before,
                          peak_after=peak_after, out_bytes=y.nbytes, stored=stored,
                          cached=cached, method=method)), flush=True)
    del y, fn, x
    W = f = None
"""


def _memory_child(paths, batch, timeout=900):
    """{path: figures} of one forward call per path, in one fresh interpreter."""
    args = dict(paths=paths, batch=batch, seed=[SEED, batch, 6], threads=_threads(),
                package=mc.__file__,
                drop_editable=not any("editable" in type(f).__module__ for f in sys.meta_path))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout)
    res = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            r["extra"] = r["peak_after"] - r["before"]
            r["resolved"] = r["peak_after"] > r["peak_before"]
            res[r["path"]] = r
    why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {p: res.get(p, dict(error=why)) for p in paths}


def run_memory(A, forms, batch=MEMORY_BATCH, one_process=False, out=print):
    """Peak RSS growth of one forward call per form: a fresh process per form, or with
    `one_process` one fresh process measuring every form in turn (each after a warm-up call and
    with the freed memory returned to the system)."""
    m, n = A.shape
    out(f"memory, batch {batch}:")
    with tempfile.TemporaryDirectory(prefix="mc-fbench-") as tmp:
        paths = [os.path.join(tmp, "dense.npy")]
        np.save(paths[0], A)
        names = [("dense numpy `x @ W`", "-")]
        for i, fm in enumerate(forms):
            paths.append(os.path.join(tmp, f"form{i}.npz"))
            fm.f.save(paths[-1])
            names.append((fm.name, f"{fm.f.compression_ratio:.3f}"))
        if one_process:
            got = _memory_child(paths, batch)
        else:
            got = {}
            for p, (name, ratio) in zip(paths, names):
                got.update(_memory_child([p], batch))
                out(f"  {name} {ratio}: done")
        results = [(name, ratio, got[p]) for p, (name, ratio) in zip(paths, names)]
    def mib(b):
        return f"{b / 2**20:.1f} MiB" if abs(b) >= 2**20 or b == 0 else f"{b / 2**10:.0f} KiB"

    head = ["form", "ratio", "stored", "output y", "peak RSS growth", "growth beyond y",
            "beyond y / stored", "kept conversions"]
    body, how = [], "?"
    for name, ratio, r in results:
        if "error" in r:
            body.append([name, ratio, "-", "-", "error", r["error"], "-", "-"])
            continue
        how = r["method"]
        beyond = r["extra"] - r["out_bytes"]
        body.append([name, ratio, mib(r["stored"]), mib(r["out_bytes"]),
                     mib(r["extra"]) + ("" if r["resolved"] else " (unresolved)"),
                     mib(beyond), f"{beyond / r['stored']:.2f}x",
                     mib(r["cached"]) if r["cached"] else "-"])
    where = ("one fresh process for all, in turn" if one_process else
             "a fresh process per form")
    title = (f"### Peak memory of one forward call, batch {batch}\n\n"
             f"x {batch} x {m} ({mib(batch * m * 4)}); {where}, after a warm-up call at the "
             f"same batch; {how}. Kept conversions: arrays the Python face converted once and "
             "keeps with the factorization (e.g. int32 atom indices, int64 row offsets), made by "
             "the warm-up call, so not in the growth.\n\n")
    return title + _ob._table(head, body), results


# --------------------------------------------------------------------------------------------
# the run


def _csv(text, kind, choices=None):
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if kind is int:
        vals = [int(v) for v in vals]
    if choices is not None:
        bad = [v for v in vals if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
    return vals


def run(size, rounds, families, ratios, batches, sections, random_factors=False,
        wait_idle=60.0, quick=False, out=print):
    """Every requested section; returns (report text, summary dict). `quick`: shorter pauses
    before the routes (0.1 s) and one process for all the memory measurements."""
    from threadpoolctl import threadpool_limits

    T = _threads()
    settle = _ob.Settler(wait_idle, pause=0.1 if quick else _ob.SETTLE_SECONDS)
    parts, loads, notes = [], [], []
    summary = dict(gemv=None, forward=[], backward=[])
    with threadpool_limits(T):
        if "gemv" in sections:
            text, s, ld = run_gemv(size, rounds, settle, out=out)
            parts.append("### Batch-1 GEMV, 4-bit codebook (DESIGN.md §7 target)\n\n" + text)
            summary["gemv"] = s
            loads += ld
        rest = [s for s in sections if s != "gemv"]
        if rest:
            rng = np.random.default_rng(SEED)
            A = rng.standard_normal((size, size), dtype=np.float32)
            out(f"building the forms of A ({size} x {size}, Gaussian, seed {SEED}):")
            forms = build_forms(A, families, ratios, random_factors, out=out)
            if "forward" in sections:
                for b in batches:
                    text, rows, ld = run_forward(A, forms, b, rounds, settle, cold=b == 1,
                                                 out=out)
                    parts.append(text)
                    summary["forward"] += rows
                    loads += ld
                if 1 in batches:
                    notes.append(
                        "cold cache (batch 1): each route cycles through copies of its weights "
                        "(as many as make twice the L3 size, "
                        f"{(_l3_bytes() or 0) / 2**20:.0f} MiB here, besides its own), as a "
                        "model of many layers would; the warm figures call one copy again and "
                        "again, which keeps a form's stored bytes in the cache")
            if "backward" in sections:
                for b in [b for b in batches if b >= 32]:
                    text, rows, ld, nt = run_backward(A, forms, b, rounds, settle, out=out)
                    parts.append(text)
                    summary["backward"] += rows
                    loads += ld
                    notes += nt
            if "memory" in sections:
                text, _ = run_memory(A, forms, one_process=quick, out=out)
                parts.append(text)
    parts.append(format_summary(summary))
    notes += _ob.load_notes(loads, settle.waited)
    notes.append(f"seed {SEED} (A, x, dy and the random factors); check = max |y - ref| / "
                 "max |ref| against float64 rows of W from the factors; '(slow)' = warm-up "
                 f"over {SLOW_SECONDS:g} s, so one call in each of at most {SLOW_ROUNDS} rounds")
    parts.append("Notes:\n" + "\n".join(f"- {n}" for n in dict.fromkeys(notes)))
    return "\n\n".join(parts), summary


def format_summary(summary):
    lines = ["### Targets"]
    g = summary["gemv"]
    if g is not None:
        lines.append(f"- 4-bit codebook GEMV at batch 1 >= {TARGET_GEMV:g}x faster than dense: "
                     f"{g['ratio']:.2f}x, {'met' if g['met'] else '**missed**'}"
                     + ("" if g["size"] == 4096 else f" (at {g['size']} x {g['size']}, not the "
                        "4096 x 4096 of the target)"))
    big = [r for r in summary["forward"] if r["batch"] >= 32]
    if big:
        missed = [r for r in big if not r["met"]]
        lines.append(f"- batch >= 32, every form <= {TARGET_BATCH:g}x the dense GEMM time: "
                     f"{len(big) - len(missed)} of {len(big)} met"
                     + ("" if not missed else "; **missed**: " + ", ".join(
                         f"{r['key']} at batch {r['batch']} ({1 / r['vs_dense']:.2f}x)"
                         for r in missed)))
    if summary["backward"]:
        worst = max(summary["backward"], key=lambda r: 1 / r["vs_dense"])
        lines.append(f"- backward (no target): slowest against dense is {worst['key']} at batch "
                     f"{worst['batch']}, {1 / worst['vs_dense']:.2f}x the dense time")
    if len(lines) == 1:
        lines.append("- none measured")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="W 1024 x 1024, one round (< 1 minute)")
    p.add_argument("--size", type=int, help="W size x size (default 4096; 1024 with --quick)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 5; 1 with --quick)")
    p.add_argument("--forms", type=lambda s: _csv(s, str, FAMILIES), default=list(FAMILIES),
                   help=f"comma-separated form families (default all: {','.join(FAMILIES)})")
    p.add_argument("--ratios", type=lambda s: _csv(s, int), default=list(RATIOS),
                   help="comma-separated compression ratios (default 4,8,16)")
    p.add_argument("--batches", type=lambda s: _csv(s, int), default=list(BATCHES),
                   help="comma-separated batches (default 1,32,256; the backward section runs "
                        "those >= 32)")
    p.add_argument("--sections", type=lambda s: _csv(s, str, SECTIONS), default=list(SECTIONS),
                   help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    p.add_argument("--random-factors", action="store_true",
                   help="build every form from random factors instead of mc.compress")
    p.add_argument("--wait-idle", type=float,
                   help="most seconds to wait in all for other processes to leave the CPU "
                        "(default 60; 10 with --quick)")
    p.add_argument("--markdown", help="also write the report as markdown")
    a = p.parse_args(argv)
    size = a.size or (1024 if a.quick else 4096)
    rounds = a.rounds or (1 if a.quick else 5)
    wait = a.wait_idle if a.wait_idle is not None else (10.0 if a.quick else 60.0)
    command = shlex.join(["python", "bench/factored.py"]
                         + (sys.argv[1:] if argv is None else list(argv)))
    t0 = time.perf_counter()
    header = _ob.print_header(command)
    report, _ = run(size, rounds, a.forms, a.ratios, a.batches, a.sections, a.random_factors,
                    wait, a.quick, out=lambda s: print(s, flush=True))
    _ob.finish(report, time.perf_counter() - t0, a.markdown,
               "## Factored products" + (" (--quick)" if a.quick else ""), header,
               f"A {size} x {size} float32 Gaussian (seed {SEED}), its forms at ratios "
               f"{', '.join(map(str, a.ratios))}; Gaussian x and dy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
