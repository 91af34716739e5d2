"""Compressors benchmark: every method at ratios 2, 4, 8, 16 beside the obvious numpy /
scikit-learn route, in one process.

    python bench/compressors.py [--quick] [--markdown FILE] [--wait-idle SECONDS]

Data: a 4096 x 1024 float32 matrix with a decaying spectrum, like a trained dense layer:
U diag(s) V^T with Haar-random orthonormal U, V and s_i = 1 / (1 + i / 32), scaled to an entry
standard deviation of 0.02, plus i.i.d. Laplace noise of 5 % of that (the part no low-rank form
captures). ``--quick``: 1024 x 256, one timed call each.

Rows, all on 2 threads (``n_threads=2``; ``threadpoolctl.threadpool_limits(2)`` around
everything; the same random_state everywhere):

- ``mc.compress(A, method, compression_ratio=r)`` for method in low_rank (randomized SVD),
  dictionary (K-SVD, 3 passes), kmeans (the solver's code size and block length), simhash and
  pruning (magnitude), and pruning then 4-bit quantization (``n_codes=16``); r in 2, 4, 8, 16.
  Time of the whole call; relative Frobenius error ``||A - W|| / ||A||``; the ratio reached
  (stored bytes counted by the Factorization).
- The reference route for the same stored form and parameters the compressor chose:
  low_rank: ``sklearn.utils.extmath.randomized_svd`` (same rank, its defaults) and
  ``TruncatedSVD`` (randomized, same rank); simhash: numpy
  ``sign(R^T A)`` with a numpy Gaussian R and least-squares scales; pruning:
  ``np.argpartition`` on |A| and a scipy CSR. Dictionary learning has no quick scikit-learn
  route at this size (``MiniBatchDictionaryLearning`` with as many atoms and nonzeros takes
  minutes; bench/dictionary.py compares the learners), and neither has k-means here
  (scikit-learn's KMeans with 256 codes on 4M values spends minutes in its k-means++ seeding;
  bench/kmeans.py compares k-means with scikit-learn and faiss on 1-D values and on blocks).

Timing: best of 3 calls (1 with --quick) after one warm-up, each library after a pause that waits
for other processes to leave the CPU (bench/omp.py's Settler), the cores other processes kept
busy reported. Errors are computed after the timings, the same way for every route.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import scipy.sparse as sp

try:
    from . import omp as _ob
except ImportError:  # run as a script
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import omp as _ob

import matcompress as mc

SEED = 20251125
RATIOS = (2, 4, 8, 16)
THREADS = 2


def make_matrix(m, n, seed=SEED):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = 1.0 / (1.0 + np.arange(n) / 32.0)
    A = (U * s) @ V.T
    A *= 0.02 / A.std()
    A += 0.05 * 0.02 / np.sqrt(2) * rng.laplace(size=A.shape)
    return A.astype(np.float32)


def rel_error(A, W):
    return float(np.linalg.norm(A.astype(np.float64) - W) / np.linalg.norm(A.astype(np.float64)))


# --- reference routes ----------------------------------------------------------------------------

def ref_randomized_svd(A, rank):
    from sklearn.utils.extmath import randomized_svd

    U, s, Vt = randomized_svd(A, rank, random_state=0)
    return (U * s) @ Vt


def ref_truncated_svd(A, rank):
    from sklearn.decomposition import TruncatedSVD

    t = TruncatedSVD(rank, algorithm="randomized", random_state=0)
    Z = t.fit_transform(A)
    return Z @ t.components_


def ref_simhash(A, n_bits):
    rng = np.random.default_rng(0)
    R = rng.standard_normal((A.shape[0], n_bits), dtype=np.float32)
    S = np.where(R.T @ A >= 0, np.float32(1), np.float32(-1))
    Y = R @ S
    scale = np.einsum("ij,ij->j", A, Y) / np.einsum("ij,ij->j", Y, Y)
    bits = np.packbits(S > 0, axis=1, bitorder="little")
    return (Y * scale, bits, scale)


def ref_prune(A, nnz):
    n = A.size
    flat = np.sort(np.argpartition(np.abs(A).ravel(), n - nnz)[n - nnz:])
    rows, cols = np.divmod(flat, A.shape[1])
    return sp.csr_array((A.ravel()[flat], (rows, cols)), shape=A.shape)


# --- the run -------------------------------------------------------------------------------------

OURS = [
    ("low_rank", dict()),
    ("dictionary", dict(max_iter=3)),
    ("kmeans", dict(n_threads=THREADS)),
    ("simhash", dict(n_threads=THREADS)),
    ("pruning", dict(n_threads=THREADS)),
    ("pruning+4bit", dict(n_threads=THREADS, n_codes=16)),
]


def _time(fn, repeats, settle, load):
    t, result, _ = _ob.best_time(fn, repeats, settle=settle, load=load)
    return t, result


def run(quick=False, wait_idle=None, out=print):
    from threadpoolctl import threadpool_limits

    m, n = (1024, 256) if quick else (4096, 1024)
    repeats = 1 if quick else 3
    settle = _ob.Settler(5.0 if quick else (120.0 if wait_idle is None else wait_idle))
    A = make_matrix(m, n)
    rows = []
    with threadpool_limits(THREADS):
        for method, params in OURS:
            name = "pruning" if method.startswith("pruning") else method
            for ratio in RATIOS:
                load = _ob.ForeignLoad()
                try:
                    t, f = _time(lambda: mc.compress(A, name, compression_ratio=ratio,
                                                     random_state=0, **params),
                                 repeats, settle, load)
                except ValueError as exc:
                    rows.append(dict(method=method, ratio=ratio, error=str(exc)))
                    out(f"{method:>13} r={ratio:>2}: {exc}")
                    continue
                row = dict(method=method, ratio=ratio, reached=f.compression_ratio, t=t,
                           err=rel_error(A, f.to_dense()), load=load.cores,
                           form=type(f).__name__, refs=[])
                row["params"] = describe(f)
                for ref_name, fn in references(method, f, A, quick):
                    rload = _ob.ForeignLoad()
                    rt, W = _time(fn, repeats, settle, rload)
                    if isinstance(W, tuple):
                        W = W[0]
                    if sp.issparse(W):
                        W = W.toarray()
                    row["refs"].append(dict(name=ref_name, t=rt, err=rel_error(A, W),
                                            load=rload.cores))
                rows.append(row)
                refs = "; ".join(f"{r['name']} {r['t'] * 1e3:.1f} ms err {r['err']:.4f}"
                                 for r in row["refs"])
                out(f"{method:>13} r={ratio:>2}: {t * 1e3:8.1f} ms err {row['err']:.4f} "
                    f"(reached {row['reached']:.2f}, {row['params']})  {refs}")
    return dict(shape=(m, n), rows=rows, quick=quick)


def describe(f):
    if isinstance(f, mc.factors.LowRank):
        return f"rank {f.rank}"
    if isinstance(f, mc.factors.SparseCodes):
        return f"{f.dictionary.shape[0]} atoms, {f.values.shape[1]} nonzeros/row"
    if isinstance(f, mc.factors.Codebook):
        return f"{f.n_codes} codes, blocks of {f.block_size}" + (", 4-bit" if f.packed else "")
    if isinstance(f, mc.factors.SignBits):
        return f"{f.n_bits} bits"
    if isinstance(f, mc.factors.Pruned):
        q = "" if f.codebook is None else f", {f.codebook.shape[0]} codes"
        return f"density {f.density:.3f}{q}"
    return type(f).__name__


def references(method, f, A, quick):
    if method == "low_rank":
        r = f.rank
        return [("sklearn randomized_svd", lambda: ref_randomized_svd(A, r)),
                ("TruncatedSVD", lambda: ref_truncated_svd(A, r))]
    if method == "simhash":
        k = f.n_bits
        return [("numpy sign(R^T A) + LS scales", lambda: ref_simhash(A, k))]
    if method == "pruning":
        nnz = f.nnz
        return [("np.argpartition + scipy CSR", lambda: ref_prune(A, nnz))]
    return []


def format_report(res):
    m, n = res["shape"]
    lines = [f"Matrix {m} x {n} float32 (decaying spectrum + Laplace noise), {THREADS} threads.",
             "",
             "| method | target ratio | reached | parameters | matcompress | rel. error | "
             "reference route | its time | its error | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['ratio']} | – | {r['error']} | | | | | | |")
            continue
        flag = " (load)" if r["load"] and r["load"] > _ob.BUSY_CORES else ""
        base = (f"| {r['method']} | {r['ratio']} | {r['reached']:.2f} | {r['params']} | "
                f"{r['t'] * 1e3:.1f} ms{flag} | {r['err']:.4f} |")
        if not r["refs"]:
            lines.append(base + " – | | | |")
        for i, ref in enumerate(r["refs"]):
            lead = base if i == 0 else "| | | | | | |"
            lines.append(f"{lead} {ref['name']} | {ref['t'] * 1e3:.1f} ms | {ref['err']:.4f} | "
                         f"{ref['t'] / r['t']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1024 x 256, one timed call each")
    p.add_argument("--markdown", help="also write the report as markdown")
    p.add_argument("--wait-idle", type=float, default=None,
                   help="seconds, in all, to wait for other processes to leave the CPU")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    res = run(quick=a.quick, wait_idle=a.wait_idle)
    env = _ob.format_environment(_ob.environment(), "python bench/compressors.py"
                                 + (" --quick" if a.quick else ""))
    m, n = res["shape"]
    _ob.finish(format_report(res), time.perf_counter() - t0, a.markdown,
               "# Compressors benchmark", env,
               f"{m} x {n} float32, s_i = 1/(1 + i/32), std 0.02, 5 % Laplace noise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
