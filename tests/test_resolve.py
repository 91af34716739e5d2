"""MatrixCompressor.resolve: the structure chosen on one matrix holds for every matrix of its
shape (what the TensorFlow layers rely on: their variables are made before training)."""

from __future__ import annotations

import numpy as np
import pytest

from matcompress import compressors as C
from matcompress.factors import encode_fields


def matrix(seed, m=96, n=64, dtype=np.float32):
    """Trained-like: a low-rank part plus heavy-tailed noise of a seed-dependent scale, so that
    searches (ranks, code widths, methods) can land differently on different seeds."""
    r = np.random.default_rng(seed)
    low = r.standard_normal((m, 8)) @ r.standard_normal((8, n)) * r.uniform(0.05, 0.6)
    return (low + r.standard_t(3, (m, n)) * r.uniform(0.2, 2)).astype(dtype)


def structure(f):
    """Kind, and every stored array's shape and dtype, recursively (a sum's parts too)."""
    return f.kind, {k: (v.shape, v.dtype.str) for k, v in encode_fields(f).items()
                    if isinstance(v, np.ndarray) and v.ndim}


def make(name, ratio):
    if name == "composite":
        return C.get(name, compressors=["low_rank", "kmeans"], compression_ratio=ratio,
                     random_state=0)
    return C.get(name, compression_ratio=ratio, random_state=0)


#: The package's own compressors (test modules register subclasses of their own as they load).
BUILTIN = sorted(n for n, cls in C._REGISTRY.items() if cls.__module__.startswith("matcompress."))


def test_every_builtin_is_covered():
    assert {"kmeans", "scaled_kmeans", "auto", "outliers", "prune_kmeans"} <= set(BUILTIN)


@pytest.mark.parametrize("ratio", [4, 8])
@pytest.mark.parametrize("name", BUILTIN)
def test_resolved_structure_holds_for_other_matrices(name, ratio):
    A = matrix(1)
    c = make(name, ratio).resolve(A)
    assert isinstance(c, C.MatrixCompressor)
    first = c.compress(A)
    assert first.compression_ratio >= ratio
    want = structure(first)
    for seed in (2, 3, 4):
        f = c.compress(matrix(seed))
        assert structure(f) == want
        assert f.compression_ratio >= ratio


def test_searching_compressors_resolve_to_their_choice():
    A = matrix(1)
    auto = C.get("auto", compression_ratio=8, random_state=0)
    chosen = auto.resolve(A)
    f = auto.compress(A)
    assert chosen.name == f.info["method"]
    np.testing.assert_array_equal(chosen.compress(A).to_dense(), f.to_dense())
    lrr = C.get("low_rank_residual", compression_ratio=4, random_state=0)
    g = lrr.compress(A)
    fixed = lrr.resolve(A)
    assert fixed.rank == g.parts[0].left.shape[1] and fixed.compression_ratio == 4
    np.testing.assert_array_equal(fixed.compress(A).to_dense(), g.to_dense())
    pk = C.get("prune_kmeans", compression_ratio=8, random_state=0)
    h = pk.compress(A)
    assert list(pk.resolve(A).bits) == [int(np.log2(h.codebook.shape[0]))]
    # Fixed-form compressors are their own resolution.
    km = C.get("kmeans", compression_ratio=8)
    assert km.resolve(A) is km
