"""Scale benchmark: compressing a 10,000,000 x 128 float32 table (4.8 GiB, memory-mapped
``.npy``) with k-means (scalar codes and block codes) and with dictionary learning.

    python bench/scale.py [--rows 10000000] [--cols 128] [--table PATH] [--markdown FILE]

Target (DESIGN / issue "scale"): every case works with peak memory under 8 GB and reports its
progress. Each case runs in a fresh interpreter, which opens the table with
``np.load(mmap_mode="r")`` and calls the compressor (``verbose=True``: the chunked coding's
progress goes to stderr); a sampler thread in that process reads ``/proc/self/status`` every
0.1 s for the peak of the anonymous memory (RssAnon: the arrays the library allocates) and of
the whole resident set (VmHWM, which also counts the pages of the mapped file the process has
touched: they are the page cache's, dropped by the kernel under memory pressure, but a
process-level limit sees them). The relative error is measured on 100,000 rows drawn at random.

The table is written once (seeded; reused when the file exists with the right shape): rows
around 4,096 cluster centres with heavy-tailed (Student-t, 3 degrees of freedom) noise and
log-normal row scales, like an embedding table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

try:
    from .omp import finish, print_header
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(__file__))
    from omp import finish, print_header

SEED = 20251125
ROWS, COLS = 10_000_000, 128
LIMIT = 8 * 10**9  # bytes

CASES = {
    "kmeans-scalar": ("KMeansCompressor", dict(n_codes=16, block_size=1),
                      "k-means, 16 scalar codes (4 bits a weight)"),
    "kmeans-block": ("KMeansCompressor", dict(n_codes=256, block_size=4),
                     "k-means, 256 codes on blocks of 4 (2 bits a weight)"),
    "dictionary": ("DictionaryCompressor", dict(compression_ratio=8),
                   "dictionary learning at 8x (K-SVD on 65,536 sampled rows, then Batch-OMP)"),
}


def make_table(path, rows, cols, seed=SEED, chunk=500_000):
    """Write the table to ``path`` (.npy) chunk by chunk, unless it is there already."""
    if os.path.exists(path):
        try:
            t = np.load(path, mmap_mode="r")
            if t.shape == (rows, cols) and t.dtype == np.float32:
                return 0.0
        except ValueError:
            pass
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, cols)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        block = centres[rng.integers(0, 4096, n)]
        block += 0.2 * rng.standard_t(3, (n, cols)).astype(np.float32)
        block *= rng.lognormal(0.0, 0.5, (n, 1)).astype(np.float32)
        out[start:start + n] = block
    out.flush()
    del out
    return time.perf_counter() - t0


_CHILD = r"""
import json, sys, threading, time
import numpy as np
import matcompress.compressors as C

a = json.loads(sys.argv[1])

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    return out

peak = {"anon": 0}
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak["anon"] = max(peak["anon"], status()["RssAnon"])
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()

A = np.load(a["table"], mmap_mode="r")
comp = getattr(C, a["cls"])(**a["params"], random_state=0, verbose=True)
t0 = time.perf_counter()
f = comp.compress(A)
elapsed = time.perf_counter() - t0
stop.set()
time.sleep(0.15)
end = status()
anon = max(peak["anon"], end["RssAnon"])

rows = np.sort(np.random.default_rng(1).choice(A.shape[0], 100_000, replace=False))
W = np.asarray(A[rows], dtype=np.float64)
if f.kind == "codebook":
    from matcompress import unpack_4bit
    codes = f.codes[rows]
    b = f.codebook.shape[1] if f.codebook.ndim == 2 else 1
    if f.packed:
        codes = unpack_4bit(codes, f.n_cols // b)
    R = f.codebook.reshape(-1, b)[codes.astype(np.int64)].reshape(len(rows), -1)
else:  # sparse codes
    R = np.einsum("rs,rsn->rn", f.values[rows], f.dictionary[f.indices[rows].astype(np.int64)])
err = float(np.linalg.norm(R - W) / np.linalg.norm(W))
print("RESULT " + json.dumps(dict(seconds=elapsed, peak_anon=anon, peak_rss=end["VmHWM"],
                                  nbytes=int(f.nbytes), ratio=float(f.compression_ratio),
                                  error=err, form=repr(f))), flush=True)
"""


def run_case(name, table):
    cls, params, _ = CASES[name]
    args = json.dumps(dict(table=table, cls=cls, params=params))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    progress = [line for line in proc.stderr.splitlines() if "rows (" in line]
    result = next((json.loads(line[7:]) for line in proc.stdout.splitlines()
                   if line.startswith("RESULT ")), None)
    if proc.returncode or result is None:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(result, wall=wall, progress=progress)


def report(rows, table_bytes, made):
    gib = 2.0**30
    lines = ["| case | time | peak anonymous memory | peak RSS (incl. mapped file) | "
             "stored | ratio | relative error (100k rows) | under 8 GB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {CASES[name][2]} | {r['seconds']:.0f} s | {r['peak_anon'] / gib:.2f} GiB "
                     f"| {r['peak_rss'] / gib:.2f} GiB | {r['nbytes'] / 2**20:.0f} MiB | "
                     f"{r['ratio']:.2f}x | {r['error']:.3f} | "
                     f"{'yes' if r['peak_rss'] < LIMIT else 'NO'} |")
    lines.append("")
    lines.append(f"Table: {table_bytes / gib:.2f} GiB on disk"
                 + (f" (written in {made:.0f} s)" if made else " (reused)") + ".")
    for name, r in rows:
        shown = r["progress"] if len(r["progress"]) <= 3 else \
            r["progress"][:2] + ["..."] + r["progress"][-1:]
        lines.append(f"\nProgress lines of {name} (stderr):\n")
        lines += ["    " + p for p in shown]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=ROWS)
    p.add_argument("--cols", type=int, default=COLS)
    p.add_argument("--table", default=None,
                   help="path of the .npy table (default: bench/out/table-ROWSxCOLS.npy)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--markdown", default=None)
    a = p.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    table = a.table or os.path.join(here, "out", f"table-{a.rows}x{a.cols}.npy")
    os.makedirs(os.path.dirname(os.path.abspath(table)), exist_ok=True)
    command = "python bench/scale.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    header = print_header(command)
    t0 = time.perf_counter()
    made = make_table(table, a.rows, a.cols)
    rows = []
    for name in a.cases.split(","):
        r = run_case(name, table)
        print(f"{name}: {r['seconds']:.0f} s, peak anon {r['peak_anon'] / 2**30:.2f} GiB, "
              f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB, {r['ratio']:.2f}x, "
              f"error {r['error']:.3f}", flush=True)
        rows.append((name, r))
    finish(report(rows, os.path.getsize(table), made), time.perf_counter() - t0, a.markdown,
           "# Scale", header, f"{a.rows:,} x {a.cols} float32 table, seed {SEED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
