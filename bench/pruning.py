"""Pruning benchmark: matcompress.prune against the numpy route, in one process.

    python bench/pruning.py [--rows 4096] [--cols 1024] [--sparsity 0.9] [--rounds 7]
                            [--wait-idle SECONDS]

Data: a float32 Gaussian matrix (default 4096 x 1024, fixed seed), magnitude pruning at
sparsity 0.9 (keep 10 % of the entries).

- matcompress: ``prune(A, sparsity, n_threads=2)`` and ``n_threads=1`` (validation, selection and
  the CSR ``Pruned`` result), and ``prune_mask`` (2 threads).
- numpy route: ``np.argpartition(np.abs(A).ravel(), n - k)[n - k:]``, the kept flat indices
  sorted, then ``scipy.sparse.csr_array((values, (rows, cols)))``: the same CSR (sorted column
  indices). numpy's argpartition is single-threaded.

Both results hold the same kept set (checked: Gaussian data has no ties, so the tie rules cannot
differ). Timing: the libraries are interleaved in rounds (best of each over the rounds; in a
round each gets one warm call), after a pause that waits for other processes to leave the CPU
(bench/omp.py's Settler); the cores other processes kept busy are reported.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import scipy.sparse as sp

try:
    from . import omp as _ob
except ImportError:  # run as a script
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import omp as _ob

import matcompress as mc

SEED = 20250301


def csr_of(A, flat):
    """The entries of A at the flat indices `flat` (any order) as a scipy CSR."""
    flat = np.sort(flat)
    rows, cols = np.divmod(flat, A.shape[1])
    return sp.csr_array((A.ravel()[flat], (rows, cols)), shape=A.shape)


def numpy_route(A, sparsity):
    """The kept entries as a scipy CSR, from np.argpartition on |A|."""
    n = A.size
    k = n - math.floor(sparsity * n)
    return csr_of(A, np.argpartition(np.abs(A).ravel(), n - k)[n - k:])


def run(rows=4096, cols=1024, sparsity=0.9, rounds=7, wait_idle=60.0, out=print):
    A = np.random.default_rng(SEED).standard_normal((rows, cols)).astype(np.float32)
    n, k = A.size, A.size - math.floor(sparsity * A.size)
    cases = {
        "matcompress prune (2 threads)": lambda: mc.prune(A, sparsity, n_threads=2),
        "matcompress prune (1 thread)": lambda: mc.prune(A, sparsity, n_threads=1),
        "matcompress prune_mask (2 threads)": lambda: mc.prune_mask(A, sparsity, n_threads=2),
        "numpy route (argpartition + scipy CSR)": lambda: numpy_route(A, sparsity),
    }
    P = mc.prune(A, sparsity)
    R = numpy_route(A, sparsity)
    same = (P.nnz == R.nnz and np.array_equal(P.indptr, R.indptr)
            and np.array_equal(P.indices, R.indices) and np.array_equal(P.values, R.data))
    settle = _ob.Settler(wait_idle)
    best = {name: math.inf for name in cases}
    loads = {name: _ob.ForeignLoad() for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t, _, _ = _ob.best_time(fn, 1, settle=settle, load=loads[name])
            best[name] = min(best[name], t)
    ref = best["numpy route (argpartition + scipy CSR)"]
    out(f"prune of a {rows} x {cols} float32 matrix at sparsity {sparsity} "
        f"(keep {k} of {n}); best of {rounds} rounds")
    out(f"same CSR as the numpy route: {same}")
    out(f"{'':40s} {'time':>9s} {'numpy route / this':>19s} {'other load':>11s}")
    for name in cases:
        cores = loads[name].cores
        out(f"{name:40s} {best[name] * 1e3:7.2f} ms {ref / best[name]:18.1f}x "
            f"{'' if cores is None else f'{cores:.2f} cores':>11s}")
    return {"best": best, "same": same}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--wait-idle", type=float, default=60.0)
    a = p.parse_args(argv)
    result = run(a.rows, a.cols, a.sparsity, a.rounds, a.wait_idle)
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
