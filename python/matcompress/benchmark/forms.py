"""The stored forms of one weight matrix, for the factored-product benchmarks.

Shared by ``matcompress bench`` and the repository's ``bench/factored.py``: every form of an
m x n float32 matrix at a given compression ratio (every stored byte counted), built by the
compressors or from random factors of the same sizes (the time of a product does not depend on
the values), and the batch-1 4-bit codebook GEMV case of DESIGN.md §7.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

__all__ = ["SEED", "FAMILIES", "RATIOS", "CODEBOOKS", "Form", "sparse_codes_shape",
           "build_forms", "describe", "gemv_case"]

SEED = 20251125
FAMILIES = ("low_rank", "sparse_codes", "codebook", "sign_bits", "pruned", "pruned_codes")
RATIOS = (4, 8, 16)
# (name, n_codes, block) of the codebook forms at each ratio
CODEBOOKS = {4: [("codebook 8-bit", 256, 1)], 8: [("codebook 4-bit", 16, 1)],
             16: [("codebook 4-bit, blocks of 2", 16, 2), ("codebook 8-bit, blocks of 4", 256, 4)]}


@dataclasses.dataclass
class Form:
    family: str
    ratio: int  # requested
    name: str
    params: str
    built: str  # how: "compress(...)" or "random factors"
    f: object  # the Factorization
    build_s: float

    @property
    def key(self):
        return f"{self.name} @{self.ratio}x"


def sparse_codes_shape(m, n, ratio, itemsize=4):
    """(n_atoms, nonzeros per row) of the sparse-codes form: half the bytes to the dictionary,
    the rest to the codes (values plus uint8/uint16 atom indices). The dictionary compressor's
    own ratio solver gives every code row all its atoms on a square matrix (s = n_atoms, and
    1.8x the requested ratio), which is no sparse-codes product to time."""
    from matcompress.factors import index_dtype

    budget = m * n * itemsize / ratio
    k = max(2, min(m, int(budget / 2 // (n * itemsize))))
    s = int((budget - k * n * itemsize) // (m * (itemsize + index_dtype(k).itemsize)))
    return k, max(1, min(s, k, n))


def _random_codebook(rng, m, n, n_codes, b):
    import matcompress as mc
    from matcompress.factors import Codebook, index_dtype

    codes = rng.integers(0, n_codes, (m, n // b)).astype(index_dtype(n_codes))
    cb = rng.laplace(size=(n_codes, b)).astype(np.float32)
    if n_codes <= 16:
        return Codebook(mc.pack_4bit(codes), cb, n, packed=True)
    return Codebook(codes, cb, n)


def _random_pruned(rng, m, n, nnz, n_codes=None):
    from matcompress.factors import Pruned, index_dtype

    per_row = np.full(m, nnz // m, np.int64)
    per_row[: nnz % m] += 1
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    keys = rng.random((m, n))
    cols = [np.sort(np.argpartition(keys[i], c)[:c]) for i, c in enumerate(per_row)]
    indices = np.concatenate(cols).astype(index_dtype(n))
    if n_codes is None:
        return Pruned(indptr, indices, n, values=rng.standard_normal(nnz).astype(np.float32))
    return Pruned(indptr, indices, n, codes=rng.integers(0, n_codes, nnz).astype(np.uint8),
                  codebook=rng.laplace(size=n_codes).astype(np.float32))


def build_forms(A, families=FAMILIES, ratios=RATIOS, random_factors=False, out=print):
    """Every requested form of A (m x n float32) at every requested ratio, as a list of Form.

    Sparse codes and sign bits always come from random factors (K-SVD on 4096 x 4096 takes far
    too long; the sign-bit encode at k = 32 m / r bits is a k x m x n GEMM); the other forms from
    ``matcompress.compress`` unless `random_factors`. `out`: a callable for progress lines."""
    import matcompress as mc
    from matcompress.compressors import PruningCompressor, SimhashCompressor
    from matcompress.factors import LowRank, SignBits, SparseCodes, index_dtype

    m, n = A.shape
    rng = np.random.default_rng([SEED, m, n, 1])
    forms = []

    def add(family, ratio, name, make, built):
        t0 = time.perf_counter()
        f = make()
        form = Form(family, ratio, name, describe(f), built, f, time.perf_counter() - t0)
        forms.append(form)
        if out is not None:
            out(f"  built {form.key:<34} {form.params:<34} ratio {f.compression_ratio:7.3f}  "
                f"({built}, {form.build_s:.1f} s)")

    for family in families:
        for r in ratios:
            if family == "low_rank":
                if random_factors:
                    rank = int(m * n / (r * (m + n)))
                    add(family, r, "low rank", lambda: LowRank(
                        rng.standard_normal((m, rank), dtype=np.float32),
                        rng.standard_normal((rank, n), dtype=np.float32)), "random factors")
                else:
                    add(family, r, "low rank", lambda: mc.compress(
                        A, "low_rank", compression_ratio=r, random_state=0),
                        "compress(ratio)")
            elif family == "sparse_codes":
                k, s = sparse_codes_shape(m, n, r)

                def make_sc():
                    idx = np.sort(np.argsort(rng.random((m, k)), axis=1)[:, :s], axis=1)
                    D = rng.standard_normal((k, n), dtype=np.float32)
                    D /= np.linalg.norm(D, axis=1, keepdims=True)
                    return SparseCodes(idx.astype(index_dtype(k)),
                                       rng.standard_normal((m, s), dtype=np.float32), D)

                add(family, r, "sparse codes", make_sc, "random factors")
            elif family == "codebook":
                for name, n_codes, b in CODEBOOKS.get(r, []):
                    if random_factors:
                        add(family, r, name,
                            lambda: _random_codebook(rng, m, n, n_codes, b), "random factors")
                    else:
                        add(family, r, name, lambda: mc.compress(
                            A, "kmeans", n_codes=n_codes, block_size=b, max_iter=10,
                            random_state=0), "compress(n_codes, block_size)")
            elif family == "sign_bits":
                k = SimhashCompressor(compression_ratio=r).solve((m, n), 4)
                add(family, r, "sign bits", lambda: SignBits(
                    rng.integers(0, 256, (k, (n + 7) // 8), dtype=np.uint8),
                    rng.uniform(0.5, 1.5, n).astype(np.float32), SEED, m), "random factors")
            elif family in ("pruned", "pruned_codes"):
                codes = family == "pruned_codes"
                name = "pruned, 16 codes" if codes else "pruned"
                kw = dict(n_codes=16, random_state=0) if codes else {}
                if random_factors:
                    c = PruningCompressor(compression_ratio=r, **kw)
                    s = c.solve((m, n), 4)
                    nnz = m * n - math.floor(s * m * n)
                    add(family, r, name, lambda: _random_pruned(
                        rng, m, n, nnz, 16 if codes else None), "random factors")
                else:
                    add(family, r, name, lambda: mc.compress(
                        A, "pruning", compression_ratio=r, **kw), "compress(ratio)")
            else:
                raise ValueError(f"unknown form family {family!r}; known: {FAMILIES}")
    return forms


def describe(f):
    """The parameters of a factorization, in a few words."""
    from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes

    if isinstance(f, LowRank):
        return f"rank {f.rank}"
    if isinstance(f, SparseCodes):
        return (f"{f.dictionary.shape[0]} atoms, s = {f.values.shape[1]} "
                f"({f.indices.dtype.name} indices)")
    if isinstance(f, Codebook):
        return (f"{f.n_codes} codes x {f.block_size}, "
                f"{'4-bit packed' if f.packed else f.codes.dtype.name}")
    if isinstance(f, SignBits):
        return f"k = {f.n_bits} bits"
    if isinstance(f, Pruned):
        what = (f"{f.indices.dtype.name} indices, "
                + ("float32 values" if f.values is not None else
                   f"{f.codes.dtype.name} codes of {f.codebook.size}"))
        return f"density {f.density:.4f}, {what}"
    return type(f).__name__


def gemv_case(size, seed=SEED):
    """The batch-1 4-bit codebook GEMV case: (f, W, x, reference y in float64).

    f: a ``Codebook`` of random 4-bit codes (packed) into 16 Laplace values, size x size;
    W = f.to_dense() (float32); x (1, size) Gaussian."""
    import matcompress as mc
    from matcompress.factors import Codebook

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (size, size)).astype(np.uint8)
    cb = rng.laplace(size=16).astype(np.float32)
    f = Codebook(mc.pack_4bit(codes), cb[:, None], size, packed=True)
    W = f.to_dense()
    x = rng.standard_normal((1, size)).astype(np.float32)
    ref = x.astype(np.float64) @ W.astype(np.float64)
    return f, W, x, ref
