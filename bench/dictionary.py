"""Dictionary-learning benchmark: matcompress (K-SVD, MOD, online) against scikit-learn and SPAMS.

The dictionary-learning row of DESIGN.md §7, every library measured in the same process run, ratios
printed beside their targets (only same-run ratios count: absolute figures move up to 2x between
machines here):

- reach the error of scikit-learn's ``MiniBatchDictionaryLearning`` in <= 1/20 of its time;
- lower error than SPAMS ``trainDL`` at SPAMS's time.

    python bench/dictionary.py [--quick] [--markdown FILE] [--no-memory] [--wait-idle SECONDS]

Data: 20,000 random 8x8 patches of scikit-learn's sample images, mean removed, float32
(``matcompress.demo.load_patches``, fixed seed); 256 atoms, 8 nonzeros. ``--quick`` uses 5,000
patches and skips the slow scikit-learn run with the calibrated alpha (a smoke test, < 1 minute).

Every dictionary is scored one way, after the timings: atoms scaled to unit norm (atoms of norm 0
are dropped), OMP codes with 8 nonzeros from ``matcompress.sparse_encode`` (scikit-learn's OMP
rule; the script checks once, on one learned dictionary, that scikit-learn's
``sparse_encode(algorithm="omp")`` gives the same error), relative error ||X - codes D||_F / ||X||_F
in float64. Every method starts from the same dictionary: 256 distinct random patches, normalised,
seeded (SPAMS has no seed, so this also makes it deterministic).

Peers, 3 epochs each, on 2 threads (threadpoolctl limits every BLAS and OpenMP pool; see
/work/shared/PEERS.md for the traps):
- scikit-learn ``MiniBatchDictionaryLearning(max_iter=3, tol=0, max_no_improvement=None)``, its
  defaults otherwise (``fit_algorithm="lars"``, ``batch_size=256``, ``n_jobs=None``: one
  process, BLAS on 2 threads), with the default ``alpha=1`` and with a calibrated alpha
  (SK_ALPHA_CALIBRATED; how it was chosen is written beside it). ``n_jobs=2`` was slower in a
  check here (1 epoch: 6.9 s vs 1.3 s at alpha=1, 20 s vs 13.5 s at 0.15, best of 2 each, a busy
  machine): it starts a joblib job per mini-batch of 256.
- SPAMS ``trainDL`` mode 3 (``lambda1=8``: at most 8 nonzeros, the same constraint as ours) and
  mode 2 (L1 penalty, calibrated SPAMS_LAMBDA_L1), ``numThreads=2``, Fortran (n_features, n)
  arrays, its default mini-batch of 256 * (numThreads + 1) = 768 signals passed explicitly so that
  ``iter`` (which counts mini-batches) = epochs * n / 768.

Timing: time.perf_counter, after one small warm-up call per library. scikit-learn: the best of
2 runs per alpha, back to back. SPAMS and matcompress run interleaved, in 3 rounds (each round:
SPAMS mode 3, SPAMS mode 2, then each of our methods), so that a slow spell of the machine hits
both sides (the host can slow a core here without any load showing, see RESULTS.md); SPAMS
counts its best time.
matcompress: ``dict_learning(method=..., dict_init=D0, tol=0, n_threads=2)``; in the first round
it runs until a time budget of 1.25x the slowest reference time it is compared with (1/20 of each
scikit-learn time, each SPAMS time of that round; tol=0 runs every pass); the callback keeps the dictionary copy it gets, with a
time stamp, after every pass and returns False once the budget is spent. Later rounds run the
same number of passes; the passes are deterministic, so the snapshots are equal across rounds
(checked) and each pass gets the median of its time stamps. --quick: 1 run of each, 1 round.
Scoring happens after all timings. "Time to reach scikit-learn's error" is the time stamp of the
first pass whose scored error is at most scikit-learn's (an upper bound: the error may have been
reached inside that pass); "error at SPAMS's time" is the scored error of the last pass finished at
or before SPAMS's best time (the initial dictionary if no pass finished). Peers get their best
time and matcompress the median, so timing noise counts against matcompress.

Before each library's timings (before each run, in the rounds) the script pauses 0.3 s and waits
for other processes to leave the CPU (up to --wait-idle seconds in all), and it reports the cores
other processes kept busy during the timings ("other load", flagged above 0.15 cores): the
machines here are shared. Helpers come from ``matcompress.benchmark`` (through bench/omp.py).

Peak memory of one ``dict_learning`` fit per method (3 passes) is measured in a fresh process: the
peak RSS is reset just before the call (``/proc/self/clear_refs`` <- 5) and read from ``VmHWM``
after it; the figure is that peak minus the RSS before the call.

Importable: ``run(quick=False, out=None, memory=True, wait_idle=None) -> dict``,
``format_report(result) -> str`` and ``main(argv=None)``. The data, the peers' runners and the
interleaved timing and scoring live in ``matcompress.benchmark.workloads`` (shared with
``matcompress bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import warnings

import numpy as np

from matcompress.benchmark.workloads import (  # noqa: F401 - re-exported
    BUDGET_FACTOR, MIN_BUDGET, SK_ALPHA_CALIBRATED, SK_ALPHA_DEFAULT, SPAMS_LAMBDA_L0,
    SPAMS_LAMBDA_L1, TARGET_SK_SPEEDUP, initial_dictionary, learn_and_score, score,
    sklearn_runner, spams_runner)
from matcompress.benchmark.workloads import DL_EPOCHS as EPOCHS
from matcompress.benchmark.workloads import DL_METHODS as METHODS
from matcompress.benchmark.workloads import DL_N_COMPONENTS as N_COMPONENTS
from matcompress.benchmark.workloads import DL_N_NONZERO as N_NONZERO
from matcompress.benchmark.workloads import DL_THREADS as THREADS
from matcompress.benchmark.workloads import _fmt_load, _fmt_s, _fmt_times, _runs, _stop
from matcompress.benchmark.workloads import load_patches, spams_batch
from matcompress.benchmark.workloads import unit_atoms as _unit_atoms

try:  # part of a package (bench/ on a path as a package)
    from . import omp as _ob
except ImportError:  # run as a script: bench/ is sys.path[0]; or imported with bench/ on the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import omp as _ob

__all__ = ["run", "format_report", "main", "load_data", "initial_dictionary", "score"]

SEED = _ob.SEED
N_PATCHES = 20_000
N_PATCHES_QUICK = 5_000
SPAMS_BATCH = spams_batch(THREADS)  # trainDL's default batchsize at numThreads=THREADS (checked)

_say = _ob._say


# --------------------------------------------------------------------------------------------
# data, initial dictionary, scoring


def load_data(n_patches=N_PATCHES, seed=SEED):
    """The benchmark patches: (n_patches, 64) float32, mean removed."""
    return load_patches(n_patches, seed)


def check_scoring(X, D, s=N_NONZERO):
    """The error of scikit-learn's sparse_encode(algorithm="omp") codes vs ours, on X."""
    from sklearn.decomposition import sparse_encode as sk_sparse_encode

    Dn, _ = _unit_atoms(D)
    Dn = Dn.astype(X.dtype)
    X64 = np.asarray(X, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t0 = time.perf_counter()
        C_sk = sk_sparse_encode(X, Dn, algorithm="omp", n_nonzero_coefs=s)
        t_sk = time.perf_counter() - t0
    err_sk = float(np.linalg.norm(X64 - C_sk.astype(np.float64) @ Dn.astype(np.float64))
                   / np.linalg.norm(X64))
    err_mc = score(X, Dn, s)["error"]
    return dict(n=X.shape[0], error_mc=err_mc, error_sk=err_sk, diff=abs(err_mc - err_sk),
                sk_seconds=t_sk)


# --------------------------------------------------------------------------------------------
# peak memory, in a fresh process

_MEMORY_CHILD = _ob.PEAK_RSS_HELPERS + r"""
import json, sys
a = json.loads(sys.argv[1])
sys.path.insert(0, a["bench_dir"])
import numpy as np
import matcompress
from dictionary import load_data, initial_dictionary, N_COMPONENTS, N_NONZERO, SEED, THREADS

X = load_data(a["n"])
D0 = initial_dictionary(X)
kw = dict(n_nonzero_coefs=N_NONZERO, method=a["method"], tol=0.0, dict_init=D0,
          random_state=SEED, n_threads=THREADS)
matcompress.dict_learning(X[:N_COMPONENTS], N_COMPONENTS, max_iter=1, **kw)  # threads, code in
release_freed_memory()
before, peak_before, method = start_peak()
codes, D, errors = matcompress.dict_learning(X, N_COMPONENTS, max_iter=a["passes"], **kw)
peak_after = maxrss()
print(json.dumps(dict(before=before, peak_before=peak_before, peak_after=peak_after,
                      in_bytes=X.nbytes + D0.nbytes, out_bytes=codes.nbytes + D.nbytes,
                      method=method, passes=len(errors))))
"""


def measure_memory(n, method, passes=EPOCHS, timeout=600):
    """Peak extra RSS of one matcompress.dict_learning fit, in a fresh interpreter."""
    args = dict(n=n, method=method, passes=passes,
                bench_dir=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return dict(method=method, error=(proc.stderr.strip().splitlines() or ["?"])[-1])
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = m["peak_after"] - m["before"]
    return dict(method=method, passes=m["passes"], before=m["before"], peak=m["peak_after"],
                peak_extra=extra, in_bytes=m["in_bytes"], out_bytes=m["out_bytes"],
                ratio=extra / (m["in_bytes"] + m["out_bytes"]), how=m["method"],
                resolved=m["peak_after"] > m["peak_before"])


# --------------------------------------------------------------------------------------------
# the benchmark


def run(quick=False, out=None, memory=True, wait_idle=None):
    """Every measurement; returns a dict of figures (see format_report).

    `out`: a text stream for progress lines (None: silent). `wait_idle`: seconds the run may
    spend, in all, waiting for other processes to leave the CPU before a timing (default 120,
    or 10 with `quick`)."""
    from threadpoolctl import threadpool_limits

    n = N_PATCHES_QUICK if quick else N_PATCHES
    settle = _ob.Settler((10.0 if quick else 120.0) if wait_idle is None else wait_idle)
    res = dict(quick=quick, n=n, n_components=N_COMPONENTS, s=N_NONZERO, epochs=EPOCHS,
               threads=THREADS, peers=[], ours=[], targets=[], notes=[], memory=[])
    X = load_data(n)
    D0 = initial_dictionary(X)
    init = score(X, D0)
    res["initial_error"] = init["error"]
    _say(out, f"{n} patches 8x8 (mean removed, float32), {N_COMPONENTS} atoms, "
              f"{N_NONZERO} nonzeros; initial dictionary (random patches): error "
              f"{init['error']:.4f}")
    if init["short_codes"]:
        Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-30)
        exact = int(np.count_nonzero(np.abs(Xn @ D0.T).max(axis=1) > 0.9999))
        res["notes"].append(
            f"OMP stops before {N_NONZERO} atoms on {init['short_codes']} of {n} patches over the "
            f"initial dictionary (residual 0): {exact} patches are atoms or copies of one")

    spams, why = _ob._import_spams()
    with threadpool_limits(limits=THREADS):
        # ---- scikit-learn: its runs back to back (each takes seconds to tens of seconds)
        sk_reps = 1 if quick else 2
        rounds = 1 if quick else 3
        alphas = [SK_ALPHA_DEFAULT] + ([] if quick else [SK_ALPHA_CALIBRATED])
        if quick:
            res["notes"].append(
                f"--quick: {n} patches instead of {N_PATCHES}; the scikit-learn run with the "
                f"calibrated alpha={SK_ALPHA_CALIBRATED:g} (tens of seconds) is skipped; one "
                "timed run per library")
        # SPAMS and matcompress run interleaved in rounds: a slow spell of the machine (the host
        # can slow a core without any visible load) then hits both, not one of them.
        if spams is None:
            res["notes"].append(why)
            _say(out, f"SPAMS skipped: {why}")
        learned = learn_and_score(X, D0, init["error"], alphas=alphas, sk_reps=sk_reps,
                                  rounds=rounds, spams=spams, settle=settle, out=out)
    for key in ("peers", "ours", "targets", "budget"):
        res[key] = learned[key]
    res["notes"] += learned["notes"]

    ksvd = res["ours"][0]
    n_check = n if not quick else min(n, 2000)
    chk = check_scoring(X[:n_check], ksvd["snapshots"][-1])
    chk["dictionary"] = f"matcompress {ksvd['method']}, last pass"
    res["check"] = chk
    _say(out, f"scoring check on {chk['n']} patches ({chk['dictionary']}): matcompress OMP error "
              f"{chk['error_mc']:.6f}, scikit-learn sparse_encode(algorithm='omp') "
              f"{chk['error_sk']:.6f}, |difference| {chk['diff']:.1e} "
              f"({'ok' if chk['diff'] <= 1e-4 else 'ABOVE 1e-4'})")
    if chk["diff"] > 1e-4:
        res["notes"].append(f"scoring check: matcompress and scikit-learn OMP errors differ by "
                            f"{chk['diff']:.1e} (> 1e-4)")

    res["notes"] += _ob.load_notes([r["foreign_load"] for r in res["peers"] + res["ours"]],
                                   settle.waited)

    if memory:
        for method in METHODS:
            m = measure_memory(n, method)
            res["memory"].append(m)
            if "error" in m:
                _say(out, f"memory {method}: failed: {m['error']}")
            else:
                _say(out, f"memory {method}: peak RSS {m['peak'] / 2**20:.1f} MiB, "
                          f"{m['peak_extra'] / 2**20:.1f} MiB above the RSS before the fit")
    return res


# --------------------------------------------------------------------------------------------
# reporting


_met = _ob._met
_table = _ob._table


def format_report(res):
    """The result tables as markdown (padded, so they read well in a terminal too)."""
    parts = []
    n, k, s = res["n"], res["n_components"], res["s"]
    head = ["library", "method", "time", "runs (s)", "rel. error", "other load"]
    body = [["-", "initial dictionary (random patches, normalised)", "-", "-",
             f"{res['initial_error']:.4f}", "-"]]
    for r in res["peers"]:
        body.append([r["library"], r["params"], _fmt_s(r["seconds"]), _fmt_times(r["times"]),
                     f"{r['error']:.4f}", _fmt_load(r["foreign_load"])])
    for r in res["ours"]:
        body.append(["matcompress", f"dict_learning {r['method']}: {r['passes']} passes "
                                    f"({_stop(r, res['budget'])})",
                     _fmt_s(r["times"][-1]),
                     _runs(r["repeats"]),
                     f"{r['final_error']:.4f}", _fmt_load(r["foreign_load"])])
    parts.append(
        f"### Errors and times ({n} patches 8x8, {k} atoms, {res['threads']} threads)\n\n"
        f"Rel. error = ‖X − codes·D‖/‖X‖ with OMP codes of {s} nonzeros over the unit-norm atoms "
        f"(matcompress.sparse_encode), for every dictionary. Peers: {res['epochs']} epochs from "
        "the same initial dictionary, best time of their runs. Other load = cores other "
        "processes (or the hypervisor) kept busy during the timings (peers: during their "
        "fastest run; matcompress: during all its runs); near 0 on an idle machine."
        "\n\n" + _table(head, body))

    head = ["matcompress", "target", "reference", "matcompress", "ratio", "result"]
    body = []
    for t in res["targets"]:
        if t["kind"] == "sklearn":
            target = f"{t['peer']}'s error in <= 1/{TARGET_SK_SPEEDUP:g} of its time"
            ref = f"{t['error']:.5f} in {_fmt_s(t['seconds'])}"
            if t["our_seconds"] is None:
                ours = f"not reached in {_fmt_s(t['seconds'] / t['ratio'])}"
                ratio = f"< {t['ratio']:.1f}x"
            else:
                ours = (f"{t['our_error']:.5f} after {_fmt_s(t['our_seconds'])} "
                        f"(pass {t['our_pass'] + 1})")
                ratio = f"{t['ratio']:.1f}x (>= {TARGET_SK_SPEEDUP:g}x)"
        else:
            target = f"lower error than {t['peer']} at its time"
            ref = f"{t['error']:.5f} in {_fmt_s(t['seconds'])}"
            if t["our_pass"] is None:
                ours = f"{t['our_error']:.5f} (no pass finished: initial dictionary)"
            else:
                ours = (f"{t['our_error']:.5f} after {_fmt_s(t['our_seconds'])} "
                        f"(pass {t['our_pass'] + 1})")
            ratio = f"{t['ratio']:.4f}x error (< 1)"
        body.append([t["method"], target, ref, ours, ratio, _met(t["met"])])
    parts.append("### Targets of DESIGN.md §7 (same-run ratios)\n\n"
                 "matcompress times are the median time stamps of the passes over the repeated "
                 "runs; a pass is the resolution (the error may be reached inside it).\n\n"
                 + _table(head, body))

    curve = []
    for r in res["ours"]:
        pts = ", ".join(f"{_fmt_s(r['times'][i])} {e:.4f}" for i, e in r["scored"].items())
        curve.append(f"- {r['method']} ({r['passes']} passes, "
                     f"{r['times'][-1] / r['passes'] * 1e3:.1f} ms per pass): {pts}")
    parts.append("Scored passes of matcompress (time stamp, rel. error):\n" + "\n".join(curve))

    chk = res.get("check")
    if chk:
        parts.append(
            f"Scoring check ({chk['dictionary']}, {chk['n']} patches): rel. error with "
            f"matcompress.sparse_encode {chk['error_mc']:.6f}, with scikit-learn "
            f"sparse_encode(algorithm=\"omp\") {chk['error_sk']:.6f}: |difference| "
            f"{chk['diff']:.1e} ({'<=' if chk['diff'] <= 1e-4 else '>'} 1e-4).")

    if res["memory"]:
        head = ["method", "passes", "input (X, D0)", "output (codes, D)", "peak RSS",
                "peak extra during the fit", "extra / (input + output)"]
        body = []
        mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
        for m in res["memory"]:
            if "error" in m:
                body.append([m["method"], "-", "-", "-", "-", "error", m["error"]])
                continue
            body.append([m["method"], m["passes"], mib(m["in_bytes"]), mib(m["out_bytes"]),
                         mib(m["peak"]), mib(m["peak_extra"])
                         + ("" if m["resolved"] else " (unresolved)"), f"{m['ratio']:.2f}x"])
        how = next((m["how"] for m in res["memory"] if "how" in m), "?")
        parts.append("### Peak memory of `matcompress.dict_learning` (fresh process per method; "
                     f"{n} patches; {how}; the codes returned are dense)\n\n"
                     + _table(head, body))

    if res["notes"]:
        parts.append("Notes:\n" + "\n".join(f"- {x}" for x in res["notes"]))
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{N_PATCHES_QUICK} patches, no calibrated scikit-learn run, one "
                             "timed run each (< 1 minute)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report as markdown")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--wait-idle", type=float, metavar="SECONDS",
                        help="most time to spend, in all, waiting for other processes to leave "
                             "the CPU before timings (default 120; 10 with --quick)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "bench/dictionary.py"]
                         + (sys.argv[1:] if argv is None else list(argv)))

    t0 = time.perf_counter()
    _ob._import_spams()  # so that its thread pools are listed
    header = _ob.print_header(command)
    res = run(quick=args.quick, out=sys.stdout, memory=not args.no_memory,
              wait_idle=args.wait_idle)
    elapsed = time.perf_counter() - t0
    _ob.finish(format_report(res), elapsed, args.markdown,
               "## Dictionary learning" + (" (--quick)" if args.quick else ""), header,
               f"{res['n']} random 8x8 patches of scikit-learn's sample images, mean removed, "
               f"float32 (`matcompress.demo.load_patches`, seed {SEED}); "
               f"{res['n_components']} atoms, {res['s']} nonzeros")
    return res


if __name__ == "__main__":
    main()
