"""simhash benchmark: matcompress.simhash against the numpy route, measured in the same run.

    python bench/simhash.py [--quick] [--wait-idle SECONDS]

Data: A, 4096 x 1024 float32 N(0, 1) values (fixed seed); k = 256 and 1024 sign bits per column.
Rows, every one on 2 threads (``n_threads=2``; numpy's BLAS under
``threadpoolctl.threadpool_limits(2)``):

- matcompress: ``mc.simhash(A, k, random_state=0)``: R generated from the seed, the signs
  packed, and the least-squares scales.
- numpy signs: ``R = rng.standard_normal((m, k), dtype=float32); np.sign(R.T @ A)``: the signs
  only, unpacked, no scales.
- numpy + scales: the same R, ``S = where(R.T @ A >= 0, 1, -1)``, then the least-squares scales
  ``sum(A * RS, 0) / sum(RS * RS, 0)`` with ``RS = R @ S``: what matcompress returns, in numpy.
- GEMM alone: ``R.T @ A`` with R made beforehand: the floor of any route.

Timing: the rows are interleaved in rounds (5; 1 with --quick), each row's best wall time kept,
after one warm-up call; before each row the script waits for other processes to leave the CPU
(bench/omp.py's Settler, up to --wait-idle seconds in all) and reports the cores other
processes kept busy while the rows were timed. Ratios are against matcompress in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

try:
    from . import omp as _ob
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import omp as _ob

THREADS = 2
SHAPE = (4096, 1024)
KS = (256, 1024)


def _rows(A, k):
    m = A.shape[0]
    import matcompress as mc

    def numpy_signs():
        R = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        return np.sign(R.T @ A)

    def numpy_scales():
        R = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        S = np.where(R.T @ A >= 0, np.float32(1), np.float32(-1))
        RS = R @ S
        return S, np.einsum("ij,ij->j", A, RS) / np.einsum("ij,ij->j", RS, RS)

    R0 = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    return {
        "matcompress simhash": lambda: mc.simhash(A, k, random_state=0, n_threads=THREADS),
        "numpy signs": numpy_signs,
        "numpy + scales": numpy_scales,
        "GEMM R.T @ A alone": lambda: R0.T @ A,
    }


def run(quick=False, wait_idle=None, out=None):
    from threadpoolctl import threadpool_limits

    rounds = 1 if quick else 5
    settler = _ob.Settler(budget=(5 if quick else 60) if wait_idle is None else wait_idle)
    A = np.random.default_rng(_ob.SEED).standard_normal(SHAPE, dtype=np.float32)
    result = {}
    with threadpool_limits(THREADS):
        for k in KS:
            rows = _rows(A, k)
            best = {name: np.inf for name in rows}
            load = _ob.ForeignLoad()
            for _ in range(rounds):
                for name, fn in rows.items():
                    t, _, _ = _ob.best_time(fn, 1 if quick else 3, settle=settler, load=load)
                    best[name] = min(best[name], t)
            result[k] = (best, load.cores)
            ours = best["matcompress simhash"]
            other = "?" if load.cores is None else f"{load.cores:.2f}"
            _ob._say(out, f"\nA {SHAPE[0]} x {SHAPE[1]} float32, k = {k}, {THREADS} threads "
                          f"(other load {other} cores)")
            for name, t in best.items():
                _ob._say(out, f"  {name:22s} {t * 1e3:8.1f} ms   {t / ours:5.2f}x matcompress")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round (a smoke test)")
    parser.add_argument("--wait-idle", type=float, metavar="SECONDS",
                        help="wait up to this long in all for other processes to leave the CPU")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    run(quick=args.quick, wait_idle=args.wait_idle, out=sys.stdout)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
