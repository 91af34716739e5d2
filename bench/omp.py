"""OMP sparse-coding benchmark: matcompress against scikit-learn, SPAMS and the GEMM floor.

The three cases of DESIGN.md §7, every peer measured in the same process run, ratios printed beside
their targets (only same-run ratios count: absolute figures move up to 2x between machines here).

    python bench/omp.py [--quick] [--dtype float32|float64|both] [--markdown FILE]

Data: a Gaussian dictionary with unit-norm rows and Gaussian signals (dense, not sparse
combinations), fixed seeds. Timing: time.perf_counter, one warm-up call, then the best of
>= 3 runs (1 with --quick); fast calls are repeated until 0.3 s (0.1 s with --quick) is spent,
at most 30 runs, which only steadies the best-of figure of the few-ms calls (scikit-learn: exactly
3 / 1 runs). Before each library's timings the run pauses 0.3 s (idle BLAS/OpenMP threads of the
previous library spin for a while) and, while other processes keep the CPU busy, waits up to
--wait-idle seconds in all; the CPU that other processes used during the timings is reported
("other load") and flagged when above 0.15 cores: the machines here are shared.

Peers, and the traps of measuring them fairly (see /work/shared/PEERS.md):
- scikit-learn ``sparse_encode(algorithm="omp")`` is timed on a subset of the signals (rate =
  subset / time); with ``n_jobs > 1`` it returns float64 codes for float32 input.
- ``spams.omp`` is ORMP, not textbook OMP, so its supports and residual differ slightly. It needs
  Fortran-ordered (n_features, n_signals) arrays and ``eps=0.0, lambda1=0.0`` (otherwise float32
  codes can come back all zero); the benchmark asserts its codes have nonzeros.
- the GEMM floor is ``np.matmul(D, X.T, out=buf)`` (numpy's BLAS, preallocated output): the one
  projection any OMP needs.

Peak memory of ``matcompress.sparse_encode`` is measured in a fresh subprocess per case: the peak
RSS is reset just before the call (``/proc/self/clear_refs`` <- 5) and read after it from
``VmHWM`` in /proc/self/status; the figure is that peak minus the RSS just before the call.
(``ru_maxrss`` of a child can start at the parent's RSS at fork time, so it is only a fallback.)

Importable: ``run(quick, dtypes, out=None) -> list[dict]`` and ``main(argv=None)``. The timing,
load and memory helpers, the data and the SPAMS call live in the package
(``matcompress.benchmark.harness`` and ``.workloads``, shared with ``matcompress bench``); the
names the other bench/ scripts use are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

# Shared with `matcompress bench` (the package is all a wheel installs): the helpers the other
# bench/ scripts reach as omp.<name> are re-exported under their old names.
from matcompress.benchmark.harness import (  # noqa: F401 - re-exported
    BUSY_CORES, PEAK_RSS_HELPERS, SEED, SETTLE_SECONDS, ForeignLoad, Settler, best_time,
    environment, format_environment, load_notes, source_state as _source_state)
from matcompress.benchmark.harness import met as _met  # noqa: F401
from matcompress.benchmark.harness import say as _say  # noqa: F401
from matcompress.benchmark.harness import table as _table  # noqa: F401
from matcompress.benchmark.workloads import (  # noqa: F401 - re-exported
    make_dictionary, make_signals, relative_residual, spams_omp_fn, supports_equal)
from matcompress.benchmark.workloads import import_spams as _import_spams  # noqa: F401

__all__ = ["CASES", "run", "format_report", "environment", "main"]

# Targets of DESIGN.md §7.
TARGET_VS_SPAMS = 2.0  # matcompress signals/s >= 2x SPAMS
TARGET_VS_SKLEARN = 50.0  # >= 50x scikit-learn
TARGET_VS_GEMM = 3.0  # OMP time <= 3x the time of the GEMM D X^T
TARGET_MEMORY = 2.0  # peak extra memory < 2x (input + output)


class Case(NamedTuple):
    name: str
    n_components: int
    n_features: int
    s: int
    n_signals: int
    n_sklearn: int
    n_signals_quick: int
    n_sklearn_quick: int


CASES = (
    Case("a", 256, 64, 8, 20_000, 1000, 5000, 200),
    Case("b", 1024, 256, 16, 10_000, 300, 2500, 60),
    Case("c", 2048, 512, 32, 4_000, 100, 1000, 25),
)
# Full mode only: a larger input, CSR output, to show that chunking bounds the working memory.
LARGE_MEMORY_CASE = dict(name="a-large", n_components=256, n_features=64, s=8,
                         n_signals=400_000, return_sparse=True)


# --------------------------------------------------------------------------------------------
# peak memory, in a fresh process

_MEMORY_CHILD = PEAK_RSS_HELPERS + r"""
import json, sys
import numpy as np
import scipy.sparse  # imported before the measurement: return_sparse needs it
import matcompress

a = json.loads(sys.argv[1])
dtype = np.dtype(a["dtype"])
rng = np.random.default_rng([a["seed"], a["n_components"], a["n_features"]])
D = rng.standard_normal((a["n_components"], a["n_features"]), dtype=dtype)
D /= np.linalg.norm(D, axis=1, keepdims=True)
rng = np.random.default_rng([a["seed"], a["n_features"], 1])
X = rng.standard_normal((a["n_signals"], a["n_features"]), dtype=dtype)  # no temporaries
kw = dict(n_nonzero_coefs=a["s"], return_sparse=a["return_sparse"])
matcompress.sparse_encode(X[:256], D, **kw)  # threads started, code paged in
release_freed_memory()
before, peak_before, method = start_peak()
C = matcompress.sparse_encode(X, D, **kw)
peak_after = maxrss()
if a["return_sparse"]:
    out_bytes = C.data.nbytes + C.indices.nbytes + C.indptr.nbytes
else:
    out_bytes = C.nbytes
print(json.dumps(dict(before=before, peak_before=peak_before, peak_after=peak_after,
                      in_bytes=X.nbytes + D.nbytes, out_bytes=out_bytes, method=method,
                      nnz=int(np.count_nonzero(C.data if a["return_sparse"] else C)))))
"""


def measure_memory(n_components, n_features, s, n_signals, dtype, return_sparse=False,
                   seed=SEED, timeout=600):
    """Peak extra RSS of one matcompress.sparse_encode call, in a fresh interpreter."""
    args = dict(n_components=n_components, n_features=n_features, s=s, n_signals=n_signals,
                dtype=np.dtype(dtype).name, return_sparse=bool(return_sparse), seed=seed)
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return dict(error=(proc.stderr.strip().splitlines() or ["?"])[-1])
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = m["peak_after"] - m["before"]
    io = m["in_bytes"] + m["out_bytes"]
    return dict(in_bytes=m["in_bytes"], out_bytes=m["out_bytes"], peak_extra=extra,
                ratio=extra / io, method=m["method"],
                resolved=m["peak_after"] > m["peak_before"], nnz=m["nnz"])


# --------------------------------------------------------------------------------------------
# the benchmark


def run_case(case: Case, dtype, *, quick=False, out=None, memory=True, n_threads=None,
             settle=None):
    """Every measurement of one case in one dtype; returns one dict of figures.
    `settle`: called before each library's timings (see Settler)."""
    import matcompress
    from sklearn.decomposition import sparse_encode as sk_sparse_encode

    dtype = np.dtype(dtype)
    T = n_threads or int(matcompress.show_config()["default_threads"])
    n = case.n_signals_quick if quick else case.n_signals
    n_sub = case.n_sklearn_quick if quick else case.n_sklearn
    repeats, min_time = (1, 0.1) if quick else (3, 0.3)
    s, k, m = case.s, case.n_components, case.n_features
    D = make_dictionary(k, m, dtype)
    X = make_signals(n, m, dtype)
    Xs = X[:n_sub]
    row = dict(case=case.name, dtype=dtype.name, n_components=k, n_features=m, s=s,
               n_signals=n, n_sklearn=n_sub, threads=T, notes=[])
    load = ForeignLoad()  # over the in-process timings (not sklearn n_jobs>1: its workers count)
    _say(out, f"case {case.name} ({k} atoms x {m} features, s={s}), {dtype.name}, "
              f"{n} signals (scikit-learn: {n_sub})")

    def record(key, seconds, count, calls):
        row[key + "_s"] = seconds
        row[key + "_rate"] = count / seconds
        _say(out, f"  {key:<14} {count / seconds:>12,.0f} signals/s   "
                  f"(best of {calls}: {seconds * 1e3:.2f} ms for {count})")

    # matcompress, default threads and one thread
    t, C_mc, calls = best_time(
        lambda: matcompress.sparse_encode(X, D, n_nonzero_coefs=s), repeats, min_time,
        load=load, settle=settle)
    record("mc", t, n, calls)
    t, _, calls = best_time(
        lambda: matcompress.sparse_encode(X, D, n_nonzero_coefs=s, n_threads=1), repeats,
        min_time, load=load, settle=settle)
    record("mc1", t, n, calls)
    row["mc_out_dtype"] = C_mc.dtype.name

    # scikit-learn, n_jobs=None and n_jobs=T, on the subset
    t, C_sk, calls = best_time(
        lambda: sk_sparse_encode(Xs, D, algorithm="omp", n_nonzero_coefs=s), repeats,
        load=load, settle=settle)
    record("sk", t, n_sub, calls)
    row["sk_out_dtype"] = C_sk.dtype.name
    t, C_sk2, calls = best_time(
        lambda: sk_sparse_encode(Xs, D, algorithm="omp", n_nonzero_coefs=s, n_jobs=T),
        repeats, settle=settle)
    record("sk2", t, n_sub, calls)
    row["sk2_out_dtype"] = C_sk2.dtype.name
    if C_sk2.dtype != dtype:
        row["notes"].append(f"scikit-learn n_jobs={T} returned {C_sk2.dtype.name} codes")

    # SPAMS (ORMP), same threads
    spams, why = _import_spams()
    C_sp = None
    if spams is None:
        row["notes"].append(why)
        _say(out, f"  spams          skipped: {why}")
    else:
        t, A, calls = best_time(spams_omp_fn(spams, X, D, s, T), repeats, min_time,
                                load=load, settle=settle)
        assert A.nnz > 0, "spams.omp returned all-zero codes (pass eps=0.0, lambda1=0.0)"
        row["spams_nnz_fraction"] = A.nnz / (n * s)
        row["spams_out_dtype"] = A.dtype.name
        record("spams", t, n, calls)
        C_sp = A[:, :n_sub].T.toarray()

    # the GEMM floor: D X^T into a preallocated output, numpy's BLAS at its default threads
    buf = np.empty((k, n), dtype=dtype)
    t, _, calls = best_time(lambda: np.matmul(D, X.T, out=buf), repeats, min_time,
                            load=load, settle=settle)
    record("gemm", t, n, calls)
    del buf

    row["foreign_load"] = load.cores
    if load.cores is not None and load.cores > BUSY_CORES:
        row["notes"].append(
            f"case {case.name}/{dtype.name}: other processes kept {load.cores:.2f} cores busy "
            "during the timings: the machine was not idle, its figures are unreliable")
        _say(out, f"  WARNING: other processes kept {load.cores:.2f} cores busy meanwhile")

    # ratios (rates of the same run)
    row["vs_spams"] = row["mc_rate"] / row["spams_rate"] if C_sp is not None else None
    row["spams_vs_gemm"] = row["gemm_rate"] / row["spams_rate"] if C_sp is not None else None
    row["vs_sk"] = row["mc_rate"] / row["sk_rate"]
    row["vs_sk2"] = row["mc_rate"] / row["sk2_rate"]
    row["vs_gemm"] = row["mc_s"] / row["gemm_s"]

    # agreement, on the scikit-learn subset
    C_mcs = C_mc[:n_sub]
    row["support_vs_sk"] = supports_equal(C_mcs, C_sk)
    row["resid_mc"] = relative_residual(Xs, C_mcs, D)
    row["resid_sk"] = relative_residual(Xs, C_sk, D)
    row["max_code_diff_sk"] = float(np.max(np.abs(C_mcs.astype(np.float64) - C_sk)))
    if C_sp is not None:
        row["support_vs_spams"] = supports_equal(C_mcs, C_sp)
        row["resid_spams"] = relative_residual(Xs, C_sp, D)
    _say(out, f"  agreement on {n_sub}: supports = scikit-learn's {row['support_vs_sk']:.1%}"
              + (f", = SPAMS' {row['support_vs_spams']:.1%}" if C_sp is not None else "")
              + f"; residual mc {row['resid_mc']:.5f} sklearn {row['resid_sk']:.5f}"
              + (f" SPAMS {row['resid_spams']:.5f}" if C_sp is not None else ""))
    del C_mc, C_sk, C_sk2, C_sp, X, Xs

    if memory:
        mem = measure_memory(k, m, s, n, dtype)
        row["memory"] = mem
        if "error" in mem:
            _say(out, f"  memory         failed: {mem['error']}")
        else:
            _say(out, f"  peak extra     {mem['peak_extra'] / 2**20:.1f} MiB for "
                      f"{(mem['in_bytes'] + mem['out_bytes']) / 2**20:.1f} MiB in+out "
                      f"({mem['ratio']:.2f}x)")
    return row


def run_large_memory(dtype, out=None):
    c = LARGE_MEMORY_CASE
    mem = measure_memory(c["n_components"], c["n_features"], c["s"], c["n_signals"], dtype,
                         return_sparse=c["return_sparse"])
    row = dict(kind="memory", case=c["name"], dtype=np.dtype(dtype).name,
               n_components=c["n_components"], n_features=c["n_features"], s=c["s"],
               n_signals=c["n_signals"], return_sparse=True, memory=mem)
    if "error" in mem:
        _say(out, f"memory {c['name']} {row['dtype']}: failed: {mem['error']}")
    else:
        _say(out, f"memory {c['name']} {row['dtype']} ({c['n_signals']} signals, CSR): peak extra "
                  f"{mem['peak_extra'] / 2**20:.1f} MiB for "
                  f"{(mem['in_bytes'] + mem['out_bytes']) / 2**20:.1f} MiB in+out "
                  f"({mem['ratio']:.2f}x)")
    return row


def run(quick: bool = False, dtypes=("float32",), out=None, memory: bool = True,
        wait_idle=None):
    """Runs every case in every dtype (and, in full mode, the large memory case).

    `out`: a text stream for progress lines (None: silent). `wait_idle`: seconds the run may
    spend, in all, waiting for other processes to leave the CPU before a timing (default 60, or
    10 with `quick`). Returns one dict per case and dtype (kind="omp"), then one per large
    memory case (kind="memory")."""
    settle = Settler((10.0 if quick else 60.0) if wait_idle is None else wait_idle)
    rows = []
    for dtype in dtypes:
        for case in CASES:
            waited = settle.waited
            row = run_case(case, dtype, quick=quick, out=out, memory=memory, settle=settle)
            row["kind"] = "omp"
            row["waited_for_idle_s"] = settle.waited - waited
            rows.append(row)
    if memory and not quick:
        for dtype in dtypes:
            rows.append(run_large_memory(dtype, out=out))
    return rows


# --------------------------------------------------------------------------------------------
# reporting


def _rate(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _ratio(v, target, higher_is_better=True):
    if v is None:
        return "-"
    ok = v >= target if higher_is_better else v <= target
    return f"{v:.2f}x {_met(ok)}" if v < 100 else f"{v:.0f}x {_met(ok)}"


def format_report(rows):
    """The result tables as markdown (padded, so they read well in a terminal too)."""
    omp = [r for r in rows if r.get("kind", "omp") == "omp"]
    parts = []
    if omp:
        T = omp[0]["threads"]
        parts.append(
            f"### Throughput (signals/s; {T} threads unless marked 1T)\n\n"
            "scikit-learn is timed on the first `n_sk` signals; all other columns on all `n`. "
            "GEMM = `np.matmul(D, X.T, out=buf)`. Other load = cores other processes (or "
            "the hypervisor) kept busy during the in-process timings; near 0 on an idle "
            "machine.")
        head = ["case", "dtype", "n", "n_sk", "matcompress", "matcompress 1T", "sklearn",
                f"sklearn n_jobs={T}", f"SPAMS ({T}T)", "GEMM floor",
                f"mc/SPAMS (>= {TARGET_VS_SPAMS:g}x)", f"mc/sklearn (>= {TARGET_VS_SKLEARN:g}x)",
                f"mc/sklearn n_jobs={T} (>= {TARGET_VS_SKLEARN:g}x)",
                f"OMP/GEMM time (<= {TARGET_VS_GEMM:g}x)", "SPAMS/GEMM time", "other load"]
        body = []
        for r in omp:
            name = f"{r['case']}: {r['n_components']}x{r['n_features']}, s={r['s']}"
            body.append([
                name, r["dtype"], r["n_signals"], r["n_sklearn"], _rate(r["mc_rate"]),
                _rate(r["mc1_rate"]), _rate(r["sk_rate"]), _rate(r["sk2_rate"]),
                _rate(r.get("spams_rate")), _rate(r["gemm_rate"]),
                _ratio(r["vs_spams"], TARGET_VS_SPAMS), _ratio(r["vs_sk"], TARGET_VS_SKLEARN),
                _ratio(r["vs_sk2"], TARGET_VS_SKLEARN),
                _ratio(r["vs_gemm"], TARGET_VS_GEMM, higher_is_better=False),
                "-" if r["spams_vs_gemm"] is None else f"{r['spams_vs_gemm']:.1f}x",
                "-" if r.get("foreign_load") is None else f"{r['foreign_load']:.2f} cores"])
        parts.append(_table(head, body))

        head = ["case", "dtype", "signals", "supports = sklearn", "supports = SPAMS",
                "max |code diff| vs sklearn", "rel. residual matcompress", "sklearn", "SPAMS (ORMP)"]
        body = []
        for r in omp:
            sp = "resid_spams" in r
            body.append([r["case"], r["dtype"], r["n_sklearn"], f"{r['support_vs_sk']:.1%}",
                         f"{r['support_vs_spams']:.1%}" if sp else "-",
                         f"{r['max_code_diff_sk']:.2g}", f"{r['resid_mc']:.5f}",
                         f"{r['resid_sk']:.5f}", f"{r['resid_spams']:.5f}" if sp else "-"])
        parts.append("### Agreement (on the scikit-learn subset; residual = "
                     "‖X − C·D‖/‖X‖)\n\n" + _table(head, body))

    mem_rows = [r for r in rows if "memory" in r]
    if mem_rows:
        head = ["case", "dtype", "n", "output", "input", "output size", "input + output",
                "peak extra", f"ratio (< {TARGET_MEMORY:g}x)"]
        body = []
        for r in mem_rows:
            m = r["memory"]
            if "error" in m:
                body.append([r["case"], r["dtype"], r["n_signals"], "-", "-", "-", "-",
                             "error", m["error"]])
                continue
            mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
            body.append([
                r["case"], r["dtype"], r["n_signals"],
                "CSR" if r.get("return_sparse") else "dense", mib(m["in_bytes"]),
                mib(m["out_bytes"]), mib(m["in_bytes"] + m["out_bytes"]),
                mib(m["peak_extra"]) + ("" if m["resolved"] else " (unresolved)"),
                f"{m['ratio']:.2f}x {_met(m['ratio'] < TARGET_MEMORY)}"])
        method = mem_rows[0]["memory"].get("method", "?")
        parts.append(
            "### Peak memory of `matcompress.sparse_encode` (fresh process each; peak RSS during "
            f"the call minus RSS before it; {method})\n\n" + _table(head, body))

    notes = sorted({n for r in omp for n in r.get("notes", [])})
    waited = sum(r.get("waited_for_idle_s", 0.0) for r in omp)
    notes += load_notes([], waited)
    if omp and "spams_nnz_fraction" in omp[0]:
        fr = [f"{r['case']}/{r['dtype']} {r['spams_nnz_fraction']:.3f}" for r in omp
              if "spams_nnz_fraction" in r]
        notes.append("SPAMS nnz / (n·s) (asserted > 0): " + ", ".join(fr))
    if notes:
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


def print_header(command):
    """Print (and return) the report header: the environment of `command` and the source state."""
    header = format_environment(environment(), command)
    source = source_state()
    if source:
        header += f"\n- matcompress source: {source}"
    print(header, flush=True)
    print(flush=True)
    return header


def source_state():
    """The commit of the repository this script is in, and the library files changed since."""
    return _source_state(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def finish(report, elapsed, markdown, title, header, data):
    """Print the report and the total time; write the markdown file (title, environment header,
    time, a line on the data, the report) when asked."""
    print()
    print(report)
    print(f"total time {elapsed:.0f} s")
    if markdown:
        with open(markdown, "w") as f:
            f.write(f"{title}\n\n{header}\n- total benchmark time: {elapsed:.0f} s\n"
                    f"- data: {data}\n\n{report}")
        print(f"wrote {markdown}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer signals, one timed run (< 1 minute)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report as markdown")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--wait-idle", type=float, metavar="SECONDS",
                        help="most time to spend, in all, waiting for other processes to leave "
                             "the CPU before timings (default 60; 10 with --quick)")
    args = parser.parse_args(argv)
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    command = shlex.join(["python", "bench/omp.py"]
                         + (sys.argv[1:] if argv is None else list(argv)))

    t0 = time.perf_counter()
    env = environment()
    header = format_environment(env, command)
    print(header, flush=True)
    print(flush=True)
    rows = run(quick=args.quick, dtypes=dtypes, out=sys.stdout, memory=not args.no_memory,
               wait_idle=args.wait_idle)
    elapsed = time.perf_counter() - t0
    finish(format_report(rows), elapsed, args.markdown,
           "## OMP sparse coding" + (" (--quick)" if args.quick else ""), header,
           "Gaussian dictionary with unit-norm rows, Gaussian signals, fixed seed")
    return rows


if __name__ == "__main__":
    main()
