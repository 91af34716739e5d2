"""``method="auto"`` against each candidate alone, and ``compress_many`` against uniform ``auto``.

    python bench/auto.py [--quick] [--part 1|2]

Part 1: a 1024 x 1024 float32 near-full-rank heavy-tailed matrix (Student t with 3 degrees of
freedom, column scales log-normal) at 4x, 8x, 16x: every default candidate fitted alone (error,
ratio, time) and ``auto`` (error, ratio, time; the time over the best single fit's time and over
the slowest single fit's). Part 2: six matrices of different shapes and difficulty under one
budget: ``compress_many`` against ``auto`` at the same ratio on each matrix (total squared
error, total ratio, time). Seeds fixed; threads as the machine gives.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import matcompress as mc
from matcompress.auto import default_candidates


def heavy(rng, m, n, df=3.0):
    scales = rng.lognormal(0.0, 0.5, n)
    return (0.02 * rng.standard_t(df, (m, n)) * scales).astype(np.float32)


class Clock:
    """Wall and CPU (process) seconds of a block: the machine is shared, and CPU time moves less
    with the other processes' load than wall time does."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def rel(W, f):
    return float(np.linalg.norm(W - f.to_dense()) / np.linalg.norm(W))


def part1(quick):
    rng = np.random.default_rng(0)
    m = 512 if quick else 1024
    W = heavy(rng, m, m)
    print(f"## auto vs each candidate alone: {m} x {m} float32, Student t(3) x log-normal column "
          "scales\n")
    for R in (4, 8, 16):
        print(f"### {R}x\n")
        print("| method | params | rel. error | ratio | wall (s) | CPU (s) |\n"
              "|---|---|---|---|---|---|")
        singles = []
        for name, params in default_candidates():
            try:
                with Clock() as c:
                    f = mc.compress(W, name, compression_ratio=R, random_state=0, **params)
            except ValueError as exc:
                print(f"| {name} | {params} | unreachable: {str(exc)[-40:]} | | | |")
                continue
            singles.append((rel(W, f), c.cpu, name, params, f.compression_ratio))
            print(f"| {name} | {params} | {singles[-1][0]:.4f} | {f.compression_ratio:.2f} | "
                  f"{c.wall:.3f} | {c.cpu:.3f} |", flush=True)
        with Clock() as c:
            f = mc.compress(W, "auto", compression_ratio=R, random_state=0)
        dt = c.cpu
        err = rel(W, f)
        best = min(singles)
        print(f"| **auto** | chose {f.info['method']} {f.info['params']} | {err:.4f} | "
              f"{f.compression_ratio:.2f} | {c.wall:.3f} | {c.cpu:.3f} |\n")
        slowest = max(s[1] for s in singles)
        print(f"auto / best single: error {err / best[0]:.3f}x, CPU time {dt / best[1]:.2f}x the "
              f"best single fit ({best[2]} {best[3]}, {best[1]:.3f} s CPU); {dt / slowest:.2f}x "
              f"the slowest single fit; sum of all single fits "
              f"{sum(s[1] for s in singles):.2f} s\n")
        screen = sum(c["fit_time"] or 0 for c in f.info["candidates"])
        refit = sum(r["fit_time"] for r in f.info["refit"])
        print(f"auto's wall time: sample fits {screen:.3f} s, refits {refit:.3f} s, "
              f"total {f.info['time']:.3f} s\n", flush=True)


def matrices(rng, quick):
    k = 2 if quick else 1
    u = rng.standard_normal((512 // k, 12)) @ rng.standard_normal((12, 512 // k))
    return {
        "attn_q 512x512 t(3)": heavy(rng, 512 // k, 512 // k),
        "ffn_up 512x2048 t(5)": heavy(rng, 512 // k, 2048 // k, df=5.0),
        "ffn_down 2048x512 t(3)": heavy(rng, 2048 // k, 512 // k),
        "emb 4096x256 gauss": (0.05 * rng.standard_normal((4096 // k, 256))).astype(np.float32),
        "proj 512x512 rank12+noise": (0.05 * u + 0.01 * rng.standard_normal(u.shape))
        .astype(np.float32),
        "head 256x1024 gauss+outliers": (0.02 * rng.standard_normal((256, 1024 // k))
                                         * np.where(rng.random((256, 1024 // k)) < 0.01, 30, 1))
        .astype(np.float32),
    }


def part2(quick):
    rng = np.random.default_rng(1)
    mats = matrices(rng, quick)
    print("## compress_many vs uniform auto\n")
    for R in (8, 16):
        with Clock() as c:
            fs, summary = mc.compress_many(mats, R, random_state=0)
        t_many = c.cpu
        with Clock() as c:
            uni = {k: mc.compress(W, "auto", compression_ratio=R, random_state=0)
                   for k, W in mats.items()}
        t_uni = c.cpu
        print(f"### {R}x\n\n| matrix | many: method, ratio, rel. error | uniform auto: method, "
              "rel. error |\n|---|---|---|")
        sq_u = nb_u = 0
        for k, W in mats.items():
            s = summary["matrices"][k]
            f = uni[k]
            sq = float(np.sum((W.astype(np.float64) - f.to_dense()) ** 2))
            sq_u += sq
            nb_u += f.nbytes
            print(f"| {k} | {s['method']} {s['params']} {s['compression_ratio']:.2f}x, "
                  f"{s['error']:.4f} | {f.info['method']} {f.info['params']} "
                  f"{f.compression_ratio:.2f}x, {rel(W, f):.4f} |")
        dense = summary["dense_nbytes"]
        print(f"\ntotal squared error: many {summary['squared_error']:.4g} (ratio "
              f"{summary['compression_ratio']:.2f}, {t_many:.1f} s CPU, steps down "
              f"{summary['steps_down']}), uniform auto {sq_u:.4g} (ratio {dense / nb_u:.2f}, "
              f"{t_uni:.1f} s CPU); many / uniform = {summary['squared_error'] / sq_u:.3f}\n")


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    parts = sys.argv[sys.argv.index("--part") + 1] if "--part" in sys.argv else "12"
    if "1" in parts:
        part1(quick)
    if "2" in parts:
        part2(quick)
