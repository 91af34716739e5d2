"""Factored products benchmark (first part): the batch-1 4-bit codebook GEMV against dense numpy.

    python bench/factored.py [--size 4096] [--rounds 7] [--wait-idle SECONDS]

Target (DESIGN.md §7): y = x · W for a 4096 x 4096 float32 matrix stored as 4-bit codes of a
16-entry scalar codebook (8x fewer bytes), batch 1, >= 3x faster than the dense float32 GEMV
(numpy ``x @ W``, OpenBLAS) in the same run. Both on 2 threads (threadpoolctl for numpy's BLAS;
``Codebook.matmul`` -> ``_core.codebook4_gemv`` with every core). Also every instruction-set
path of the kernel (``_core.set_isa``) and 1 thread.

Timing: the routes interleaved in rounds (best of each), each round after bench/omp.py's Settler
(a pause that waits for other processes to leave the CPU); a route's call is repeated until
20 ms are spent. The cores other processes kept busy are reported. The other forms, the batch
32/256 products and the gradients come with the rest of the factored-product kernels.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

try:
    from . import omp as _ob
except ImportError:  # run as a script
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import omp as _ob

import matcompress as mc
from matcompress import _core
from matcompress.factors import Codebook

SEED = 20251125


def run(size=4096, rounds=7, wait_idle=60.0, out=print):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(SEED)
    codes = rng.integers(0, 16, (size, size)).astype(np.uint8)
    cb = rng.laplace(size=16).astype(np.float32)
    f = Codebook(mc.pack_4bit(codes), cb[:, None], size, packed=True)
    W = f.to_dense()
    x = rng.standard_normal((1, size)).astype(np.float32)
    ref = x.astype(np.float64) @ W.astype(np.float64)
    isas = [i for i in ("avx512", "avx2", "generic")
            if ("generic", "avx2", "avx512").index(i)
            <= ("generic", "avx2", "avx512").index(_core.detected_isa())]
    routes = {"dense numpy x @ W (2 threads)": (None, lambda: x @ W)}
    for isa in isas:
        routes[f"4-bit codebook, {isa} (2 threads)"] = (isa, lambda: f.matmul(x))
    top = isas[0]
    routes[f"4-bit codebook, {top} (1 thread)"] = (
        top, lambda: _core.codebook4_gemv(x[0], f.codes, size, cb, 1))
    best = {k: np.inf for k in routes}
    loads = {k: _ob.ForeignLoad() for k in routes}
    settle = _ob.Settler(wait_idle)
    before = _core.active_isa()
    try:
        with threadpool_limits(2):
            for name, (isa, fn) in routes.items():  # warm-up and check
                if isa:
                    _core.set_isa(isa)
                y = np.asarray(fn()).reshape(-1)
                err = np.abs(y - ref[0]).max() / np.abs(ref).max()
                assert err < 1e-4, (name, err)
            for _ in range(rounds):
                for name, (isa, fn) in routes.items():
                    if isa:
                        _core.set_isa(isa)
                    t, _, _ = _ob.best_time(fn, 3, min_time=0.02, settle=settle,
                                            load=loads[name])
                    best[name] = min(best[name], t)
    finally:
        _core.set_isa(before)
    dense = best["dense numpy x @ W (2 threads)"]
    lines = [f"W {size} x {size} float32 ({W.nbytes / 2**20:.0f} MiB dense, "
             f"{f.nbytes / 2**20:.1f} MiB as 4-bit codes), x batch 1; best of {rounds} rounds.",
             "", "| route | time | dense / this | other load |", "|---|---|---|---|"]
    for name in routes:
        lines.append(f"| {name} | {best[name] * 1e3:.3f} ms | {dense / best[name]:.2f}x | "
                     f"{loads[name].cores or 0:.2f} |")
    top2 = f"4-bit codebook, {top} (2 threads)"
    ratio = dense / best[top2]
    lines += ["", f"Target (DESIGN.md §7): 4-bit codebook GEMV at batch 1 >= 3x faster than the "
                  f"dense float32 GEMV: {ratio:.2f}x, {'met' if ratio >= 3 else 'missed'}."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--wait-idle", type=float, default=60.0)
    p.add_argument("--markdown", help="also write the report as markdown")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    report = run(a.size, a.rounds, a.wait_idle)
    env = _ob.format_environment(_ob.environment(), "python bench/factored.py")
    _ob.finish(report, time.perf_counter() - t0, a.markdown, "# Factored products", env,
               f"{a.size} x {a.size} random 4-bit codes, Laplace codebook, Gaussian x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
