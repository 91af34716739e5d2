"""TensorFlow ops benchmark: each op against the numpy face on the same data, and the factored
products against ``tf.matmul`` on the dense matrix.

    python bench/tf_ops.py [--quick] [--rounds 5] [--wait-idle SECONDS] [--markdown FILE]

Targets (issue 8): op overhead <= 10 % over the numpy face at the OMP sizes and at the batch-1
GEMV of DESIGN.md §7. Both faces run the same core functions on 2 threads (numpy: SciPy's
OpenBLAS held to one thread inside the kernels; TensorFlow: Eigen GEMMs on the calling thread,
OpenMP capped to TensorFlow's 2 intra-op threads). The ops are timed eagerly and inside a
graph (a ``tf.function`` running the op 10 times in sequence, per call: a TensorFlow function call
costs about 0.2 ms here, which a model shares among its ops), on tensors made once. Results stay
tensors: on the CPU a call returns once its ops have run (synchronous execution, TensorFlow's
default), and ``.numpy()`` would copy them (1.5 ms for the 20 MB of dense codes of OMP a), a cost
the numpy face does not pay.

Timing: the routes of a case interleaved in rounds (best of each), after bench/omp.py's Settler;
a route's call is repeated until 20 ms are spent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    from . import omp as _ob
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(__file__))
    import omp as _ob

import matcompress as mc

SEED = 20251126


def _routes_table(title, routes, rounds, settle, out):
    """Interleave the routes (name -> zero-argument callable) and return table lines with each
    route's best time and its ratio to the first route."""
    # A route is a callable, or (callable, calls it makes): its time is per call.
    routes = {k: (v if isinstance(v, tuple) else (v, 1)) for k, v in routes.items()}
    best = {k: np.inf for k in routes}
    loads = {k: _ob.ForeignLoad() for k in routes}
    for fn, _ in routes.values():  # warm-up (graph tracing, threads, pages)
        fn()
    for _ in range(rounds):
        for name, (fn, calls) in routes.items():
            t, _, _ = _ob.best_time(fn, 3, min_time=0.02, settle=settle, load=loads[name])
            best[name] = min(best[name], t / calls)
    first = next(iter(routes))
    lines = [f"**{title}**", "", "| route | time | this / " + first.split(" (")[0] + " | other load |",
             "|---|---|---|---|"]
    for name in routes:
        lines.append(f"| {name} | {best[name] * 1e3:.3f} ms | {best[name] / best[first]:.3f}x | "
                     f"{loads[name].cores or 0:.2f} |")
    return lines, best, [loads[k].cores for k in routes]


def _graph(fn):
    import tensorflow as tf

    return tf.function(fn, autograph=False)


REPEAT = 10  # op calls inside one graph call, so that the call's own cost is shared


def _in_graph(fn):
    """Per-call time of fn inside a graph: one tf.function calling fn on REPEAT distinct inputs
    in sequence (each call after the last by a control edge; distinct inputs, so that no two
    calls are merged as one); the route divides by REPEAT."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def run(*xs):
        outs = []
        for a in xs:
            with tf.control_dependencies(outs[-1:]):
                outs.append(fn(a))
        return outs

    return run


def run(quick=False, rounds=5, wait_idle=60.0, out=print):
    import tensorflow as tf

    import matcompress.tf as mctf

    rng = np.random.default_rng(SEED)
    settle = _ob.Settler(wait_idle)
    lines, summary, loads = [], [], []

    def add(title, routes, ours, ref):
        out(f"{title} ...")
        tab, best, ld = _routes_table(title, routes, rounds, settle, out)
        lines.extend(tab + [""])
        loads.extend(ld)
        if ours and ref:
            summary.append((title, best[ours] / best[ref]))

    # OMP at DESIGN.md §7's sizes (a: 256 atoms x 64, s = 8, 20k signals; b: 1024 x 256, s = 16)
    omp_cases = [("a", 256, 64, 8, 20000), ("b", 1024, 256, 16, 10000)]
    if quick:
        omp_cases = [("a", 256, 64, 8, 2000)]
    for label, k, f, s, n in omp_cases:
        D = rng.standard_normal((k, f)).astype(np.float32)
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        X = rng.standard_normal((n, f)).astype(np.float32)
        Xt, Dt = tf.constant(X), tf.constant(D)
        ref = mc.sparse_encode(X, D, n_nonzero_coefs=s)
        got = mctf.sparse_encode(Xt, Dt, n_nonzero_coefs=s).numpy()
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        compact = _graph(lambda a, b: mctf.sparse_encode(a, b, n_nonzero_coefs=s, compact=True))
        dense = _graph(lambda a, b: mctf.sparse_encode(a, b, n_nonzero_coefs=s))
        add(f"OMP {label}: {n} signals, dictionary {k} x {f}, s = {s} (float32)", {
            "numpy face `mc.sparse_encode` (dense codes)": lambda: mc.sparse_encode(
                X, D, n_nonzero_coefs=s),
            "TF op, graph (dense codes)": lambda: dense(Xt, Dt),
            "TF op, graph (compact codes)": lambda: compact(Xt, Dt),
            "TF op, eager (dense codes)": lambda: mctf.sparse_encode(
                Xt, Dt, n_nonzero_coefs=s),
        }, "TF op, graph (dense codes)", "numpy face `mc.sparse_encode` (dense codes)")

    # The batch-1 GEMV of a 4-bit codebook and batch 32 / 256 products of every form.
    size = 1024 if quick else 4096
    A = rng.standard_normal((size, size)).astype(np.float32)
    forms = {
        "4-bit codebook (8x)": mc.factors.Codebook(
            mc.pack_4bit(rng.integers(0, 16, (size, size)).astype(np.uint8)),
            rng.laplace(size=(16, 1)).astype(np.float32), size, packed=True),
        "pruned (8x)": mc.compress(A, "pruning", compression_ratio=8),
        "sparse codes (8x, 256 atoms)": mc.factors.SparseCodes(
            rng.integers(0, 256, (size, size // 20)).astype(np.uint8),
            rng.standard_normal((size, size // 20)).astype(np.float32),
            rng.standard_normal((256, size)).astype(np.float32)),
        "low rank (8x)": mc.compress(A, "low_rank", compression_ratio=8, random_state=0),
    }
    W = tf.constant(A)
    for batch in ((1,) if quick else (1, 32, 256)):
        x = rng.standard_normal((batch, size)).astype(np.float32)
        xt = tf.constant(x)
        xs = [tf.constant(x + np.float32(i)) for i in range(REPEAT)]
        for name, f in forms.items():
            if batch == 1 and name != "4-bit codebook (8x)":
                continue
            ft = mctf.factor_tensors(f)
            assert np.allclose(mctf.factored_matmul(xt, ft).numpy(), f.matmul(x), rtol=1e-4,
                               atol=1e-3)
            g = _in_graph(lambda a, ft=ft: mctf.factored_matmul(a, ft))
            dense = _in_graph(lambda a: tf.matmul(a, W))
            add(f"{name}, {size} x {size}, batch {batch}", {
                "numpy face `f.matmul(x)`": lambda f=f: f.matmul(x),
                "TF op, graph": (lambda g=g: g(*xs), REPEAT),
                "TF op, eager": lambda ft=ft: mctf.factored_matmul(xt, ft),
                "tf.matmul on the dense W, graph": (lambda: dense(*xs),
                                                    REPEAT),
            }, "TF op, graph", "numpy face `f.matmul(x)`")

    # The batch-1 GEMV again, as the median of many alternations in a fresh process per thread
    # count: its best-of times above swing from run to run on this machine.
    out("4-bit GEMV, alternations ...")
    lines += ["**4-bit codebook GEMV, batch 1: median over alternations (a fresh process per "
              "thread count; each sample 10 calls of the numpy face, then one graph of 10 op "
              "calls; TensorFlow's own cost per op: the same graph of a 1 x 8 by 8 x 8 "
              "`tf.matmul`)**", "",
              "| threads | numpy face | TF op, graph | TF's cost per op (tiny `tf.matmul`) | "
              "TF op / numpy face | (TF op − TF's cost per op) / numpy face | ratio of best "
              "times |", "|---|---|---|---|---|---|---|"]
    for threads in (1, 2):
        r = _alternations_in_child(threads, 1024 if quick else 4096, 40 if quick else 200)
        lines.append(f"| {threads} | {r['numpy_median']:.3f} ms | {r['tf_median']:.3f} ms | "
                     f"{r['floor_median']:.3f} ms | {r['median_ratio']:.3f} | "
                     f"{r['median_ratio_less_floor']:.3f} | {r['best_ratio']:.3f} |")
        summary.append((f"4-bit GEMV batch 1, {threads} thread(s), median of alternations",
                        r["median_ratio"]))
        summary.append((f"4-bit GEMV batch 1, {threads} thread(s), median of alternations, "
                        "less TensorFlow's cost per op", r["median_ratio_less_floor"]))
    lines.append("")

    lines.append("Summary, TF op (graph) time / numpy face time (target <= 1.10 at the OMP and "
                 "batch-1 GEMV sizes):")
    lines.append("")
    for title, r in summary:
        lines.append(f"- {title}: {r:.3f}")
    notes = _ob.load_notes(loads, settle.waited)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def _alternations_in_child(threads, size, samples):
    """Runs _alternations in a fresh process with `threads` OpenMP and intra-op threads (both
    fixed at start-up) and returns its figures."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, __file__, "--alternations-child", str(threads),
                           str(size), str(samples)], env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _alternations(threads, size, samples):
    """Median per-call times of the 4-bit GEMV (numpy face, then the op in a graph), alternated
    `samples` times; prints them as JSON."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    import matcompress.tf as mctf

    rng = np.random.default_rng(SEED)
    f = mc.factors.Codebook(mc.pack_4bit(rng.integers(0, 16, (size, size)).astype(np.uint8)),
                            rng.laplace(size=(16, 1)).astype(np.float32), size, packed=True)
    ft = mctf.factor_tensors(f)
    xs = [rng.standard_normal((1, size)).astype(np.float32) for _ in range(REPEAT)]
    xts = [tf.constant(x) for x in xs]
    g = _in_graph(lambda a: mctf.factored_matmul(a, ft))

    def per_call(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) / REPEAT

    # TensorFlow's own cost per op in the same graph: a 1 x 8 by 8 x 8 tf.matmul per input.
    tiny_w = tf.constant(np.ones((8, 8), np.float32))
    tiny_xs = [tf.constant(np.full((1, 8), i, np.float32)) for i in range(REPEAT)]
    tiny = _in_graph(lambda a: tf.matmul(a, tiny_w))

    face = lambda: [f.matmul(x) for x in xs]  # noqa: E731
    op = lambda: g(*xts)  # noqa: E731
    floor = lambda: tiny(*tiny_xs)  # noqa: E731
    face(), op(), floor()
    a, b, c = [], [], []
    for _ in range(samples):
        a.append(per_call(face))
        b.append(per_call(op))
        c.append(per_call(floor))
    a, b, c = np.array(a), np.array(b), np.array(c)
    print(json.dumps({"numpy_median": float(np.median(a)) * 1e3,
                      "tf_median": float(np.median(b)) * 1e3,
                      "floor_median": float(np.median(c)) * 1e3,
                      "median_ratio": float(np.median(b / a)),
                      "median_ratio_less_floor": float(np.median((b - c) / a)),
                      "best_ratio": float(b.min() / a.min())}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--alternations-child"]:
        _alternations(*(int(v) for v in argv[1:4]))
        return 0
    return bench_main(argv, __doc__, "bench/tf_ops.py", run, "# TensorFlow ops",
                      f"seed {SEED}; Gaussian signals and unit-norm atoms; random 4-bit codes")


def bench_main(argv, doc, script, run_fn, title, data):
    """The command line of a TensorFlow benchmark (--quick, --rounds, --wait-idle, --markdown):
    run_fn(quick, rounds, wait_idle) gives the report."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--wait-idle", type=float, default=None)
    p.add_argument("--markdown", help="also write the report as markdown")
    a = p.parse_args(argv)
    command = shlex.join(["python", script] + argv)
    t0 = time.perf_counter()
    header = _ob.print_header(command)
    wait = a.wait_idle if a.wait_idle is not None else (10.0 if a.quick else 60.0)
    report = run_fn(a.quick, 1 if a.quick else a.rounds, wait)
    import tensorflow as tf

    _ob.finish(report, time.perf_counter() - t0, a.markdown, title,
               header + f"\n- tensorflow {tf.__version__}", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
