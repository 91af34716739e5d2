"""Data-aware compression against data-free, on one layer's calibration inputs.

    python bench/data_aware.py [--size 512] [--samples 2048] [--repeat 3] [--threads N]

A float32 weight W (size x size) of a layer computing ``x @ W`` and inputs X (samples x size)
whose feature scales are lognormal(0, 1). Three cases: W i.i.d. Gaussian with independent
inputs; W whose rows shrink as their input grows (``W_ij ~ N(0, 1) / scale_i``, so every input
contributes alike to the output, as after training on such inputs); and i.i.d. W with correlated
inputs (16 shared factors plus noise, then the scales). Printed: the relative output error
``||X (W - W_hat)|| / ||X W||`` of each method without X and with X, and the fit time (best of
``--repeat``; computing ``H = X^T X / n`` included). ``--threads``: BLAS and OpenMP threads
(threadpoolctl; default: as the environment says).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import matcompress as mc


def cases(size, samples, rng):
    scales = rng.lognormal(0.0, 1.0, size)
    Z = rng.standard_normal((samples, size))
    W = rng.standard_normal((size, size)) / np.sqrt(size)
    factors = rng.standard_normal((samples, 16)) @ rng.standard_normal((16, size))
    mixed = 0.3 * Z @ (rng.standard_normal((size, size)) / np.sqrt(size)) + factors
    return {
        "iid W, independent inputs": (W, Z * scales),
        "W rows ~ 1/scale, independent inputs": (W / scales[:, None], Z * scales),
        "iid W, correlated inputs": (W, mixed * scales),
    }


METHODS = [
    ("kmeans 4-bit scalar", "kmeans", dict(n_codes=16, block_size=1), ("diagonal", "gptq")),
    ("kmeans 2-bit scalar", "kmeans", dict(n_codes=4, block_size=1), ("diagonal", "gptq")),
    ("kmeans 8-bit codes on pairs", "kmeans", dict(n_codes=256, block_size=2),
     ("diagonal", "gptq")),
    ("low rank 4x", "low_rank", dict(compression_ratio=4), (None,)),
    ("pruning 4x", "pruning", dict(compression_ratio=4), (None,)),
    ("dictionary 4x", "dictionary", dict(compression_ratio=4), (None,)),
    ("simhash 8x", "simhash", dict(compression_ratio=8), (None,)),
]


def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(args.threads):
            return run(args)
    return run(args)


def run(args):
    rng = np.random.default_rng(0)
    for case, (W, X) in cases(args.size, args.samples, rng).items():
        W = W.astype(np.float32)
        X = X.astype(np.float32)
        X64 = X.astype(np.float64)
        ref = np.linalg.norm(X64 @ W)

        def error(f):
            return float(np.linalg.norm(X64 @ (W - f.to_dense())) / ref)

        print(f"\n{case} (W {W.shape}, X {X.shape})")
        print(f"{'method':30s} {'data-free':>18s} {'diagonal':>18s} {'with X':>18s}")
        for label, method, params, modes in METHODS:
            cells = []
            free, t = timed(lambda: mc.compress(W, method, random_state=0, **params),
                            args.repeat)
            cells.append(f"{error(free):.4f} {t:6.3f} s")
            for mode in (modes if len(modes) == 2 else ("-",) + modes):
                if mode == "-":
                    cells.append("")
                    continue
                extra = {} if mode is None else {"data_aware": mode}
                f, t = timed(lambda: mc.compress(W, method, random_state=0, X=X, **params,
                                                 **extra), args.repeat)
                cells.append(f"{error(f):.4f} {t:6.3f} s")
            print(f"{label:30s} " + " ".join(f"{c:>18s}" for c in cells))


if __name__ == "__main__":
    main()
