"""Batch-OMP throughput of each compiled instruction-set path, measured in one run.

Usage: ``python bench/omp_isa.py [--dtype float32|float64] [--repeats N]``

A wheel runs the AVX-512, AVX2 or portable (SSE2) kernel depending on the CPU; this prints
signals/second of ``matcompress.sparse_encode`` (2 threads, dense output) for every path this CPU
supports, at the three sizes of DESIGN.md section 7, as a markdown table. Paths the CPU lacks are
shown as "n/a".
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import matcompress as mc
from matcompress import _core

CASES = [("a", 256, 64, 8, 20_000), ("b", 1024, 256, 16, 10_000), ("c", 2048, 512, 32, 4_000)]
ISAS = ("generic", "avx2", "avx512")


def _supported(isa):
    return ISAS.index(isa) <= ISAS.index(_core.detected_isa())


def run(dtype=np.float32, repeats=3, seed=0):
    """Return ``{case: {isa: signals_per_second or None}}``."""
    rng = np.random.default_rng(seed)
    before = _core.active_isa()
    results = {}
    try:
        for name, k, n, s, n_signals in CASES:
            D = rng.standard_normal((k, n)).astype(dtype)
            D /= np.linalg.norm(D, axis=1, keepdims=True)
            X = rng.standard_normal((n_signals, n)).astype(dtype)
            row = {}
            for isa in ISAS:
                if not _supported(isa):
                    row[isa] = None
                    continue
                _core.set_isa(isa)
                mc.sparse_encode(X[:200], D, n_nonzero_coefs=s)  # warm-up
                best = min(_timed(lambda: mc.sparse_encode(X, D, n_nonzero_coefs=s))
                           for _ in range(repeats))
                row[isa] = n_signals / best
            results[f"{name}: {k}x{n}, s={s}"] = row
    finally:
        _core.set_isa(before)
    return results


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = run(np.dtype(args.dtype).type, args.repeats)
    print(f"signals/s, {args.dtype}, 2 threads, best of {args.repeats}; "
          f"CPU's best path: {_core.detected_isa()}\n")
    print("| case | " + " | ".join(ISAS) + " |")
    print("|---|" + "---|" * len(ISAS))
    for case, row in results.items():
        cells = ["n/a" if v is None else f"{v / 1e3:,.1f}k" for v in row.values()]
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
