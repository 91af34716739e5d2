"""matcompress.compressors: every built-in meets its ratio, parameters, configs, user subclasses,
unreachable ratios and bad input.

Bytes are counted here from the returned arrays (``stored_bytes``: the sum of the stored arrays'
``nbytes``, plus the 16 bytes SignBits documents for its seed and row count), never from the
library's ``nbytes``; the smallest form each method can produce (``smallest_bytes``) is written
from the byte formulas in the compressors' docstrings.

Reconstruction error ordering: on a matrix with a decaying spectrum (U diag(1/i) V^T plus noise),
the relative Frobenius error at a lower ratio (more bytes) is at most the error at a higher ratio
times ``1 + SLACK[method]``. The exact, nested methods (truncated SVD, pruning: the kept set grows
with the budget) get 1e-9 (rounding only). Methods with a random start or a solver that changes
the form between ratios get a stated slack: randomized SVD 1 %, k-means 2 % (block sizes change
with the ratio), dictionary learning and simhash 5 % (another dictionary / projection per size),
pruning + quantization 3 % (measured 1.1 %: at ratio 2 the solver keeps every entry and
quantizes them all, at ratio 4 it drops the smallest 2 %, which are then exact zeros; see the
report).
"""

from __future__ import annotations

import functools
import json
import math
import re

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import matcompress as mc
from matcompress import compressors
from matcompress.compressors import (DictionaryCompressor, KMeansCompressor, LowRankCompressor,
                                     MatrixCompressor, PruningCompressor, SimhashCompressor)
from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes

SHAPES = [(256, 128), (128, 384), (300, 200)]
RATIOS = [2, 4, 8, 16]

#: id -> (registered name, parameters besides compression_ratio, returned type)
METHODS = {
    "low_rank": ("low_rank", dict(random_state=0), LowRank),
    "low_rank_svd": ("low_rank", dict(method="svd"), LowRank),
    "dictionary": ("dictionary", dict(max_iter=2, random_state=0), SparseCodes),
    "kmeans": ("kmeans", dict(random_state=0), Codebook),
    "kmeans_scalar": ("kmeans", dict(block_size=1, random_state=0), Codebook),
    "kmeans_block4": ("kmeans", dict(block_size=4, random_state=0), Codebook),
    "simhash": ("simhash", dict(random_state=0), SignBits),
    "pruning": ("pruning", {}, Pruned),
    "pruning_taylor": ("pruning", dict(scores="taylor"), Pruned),
    "pruning_1x4": ("pruning", dict(block_shape=(1, 4)), Pruned),
    "pruning_4x4": ("pruning", dict(block_shape=(4, 4)), Pruned),
    "pruning_quantized": ("pruning", dict(n_codes=16, random_state=0), Pruned),
}

SLACK = {"low_rank": 1e-2, "low_rank_svd": 1e-9, "dictionary": 5e-2, "kmeans": 2e-2,
         "kmeans_scalar": 2e-2, "kmeans_block4": 2e-2, "simhash": 5e-2, "pruning": 1e-9,
         "pruning_taylor": 1e-9, "pruning_1x4": 1e-9, "pruning_4x4": 1e-9,
         "pruning_quantized": 3e-2}


# ---------------------------------------------------------------------------------------------
# Data and independent byte counts
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def matrix(shape, dtype):
    """U diag(1/i) V^T plus 1 % noise, scaled to entries of order 1; and a gradient."""
    m, n = shape
    rng = np.random.default_rng(1000 * m + n)
    r = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    A = (U / np.arange(1, r + 1)) @ V.T
    A = A / np.abs(A).mean()
    A += 0.01 * rng.standard_normal(A.shape)
    G = rng.standard_normal(A.shape)
    A = A.astype(dtype)
    G = G.astype(dtype)
    A.setflags(write=False)
    G.setflags(write=False)
    return A, G


def stored_bytes(f):
    """Bytes of the stored arrays (plus SignBits' seed and n_rows, 8 bytes each)."""
    if isinstance(f, LowRank):
        arrays = [f.left, f.right]
    elif isinstance(f, SparseCodes):
        arrays = [f.indices, f.values, f.dictionary]
    elif isinstance(f, Codebook):
        arrays = [f.codes, f.codebook]
    elif isinstance(f, SignBits):
        return f.bits.nbytes + f.scale.nbytes + 16
    elif isinstance(f, Pruned):
        arrays = [f.indptr, f.indices, f.values, f.codes, f.codebook]
    else:
        raise AssertionError(type(f))
    return sum(a.nbytes for a in arrays if a is not None)


def _index_bytes(upper):
    return 1 if upper <= 256 else 2 if upper <= 65536 else 4


def smallest_bytes(method_id, shape, itemsize):
    """The fewest bytes the method can store for a matrix of ``shape`` (its docstring's forms)."""
    m, n = shape
    params = METHODS[method_id][1]
    if method_id.startswith("low_rank"):
        return (m + n) * itemsize  # rank 1
    if method_id == "dictionary":
        return 2 * n * itemsize + m * (itemsize + 1)  # 2 atoms, 1 nonzero per row
    if method_id.startswith("kmeans"):
        sizes = [params["block_size"]] if "block_size" in params else [1, 2, 4, 8, 16]
        return min(m * math.ceil(n // b / 2) + min(16, m * n // b) * b * itemsize
                   for b in sizes if n % b == 0)  # 4-bit codes
    if method_id == "simhash":
        return math.ceil(n / 8) + n * itemsize + 16  # one bit per column
    if method_id.startswith("pruning"):
        bh, bw = params.get("block_shape", (1, 1))
        n_codes = params.get("n_codes")
        value = itemsize if n_codes is None else _index_bytes(n_codes)
        extra = 0 if n_codes is None else n_codes * itemsize
        return (m + 1) * 4 + bh * bw * (_index_bytes(n) + value) + extra  # one block kept
    raise AssertionError(method_id)


def best_ratio(method_id, shape, itemsize):
    return shape[0] * shape[1] * itemsize / smallest_bytes(method_id, shape, itemsize)


def _compress(A, name, ratio, grad, params):
    # through get(), the registry
    return compressors.get(name, compression_ratio=ratio, **params).compress(A, grad=grad)


@functools.lru_cache(maxsize=None)
def run(method_id, shape, dtype, ratio):
    """compress(A, ...) at ``ratio``: the factorization, or the ValueError's message."""
    name, params, _ = METHODS[method_id]
    A, G = matrix(shape, dtype)
    try:
        return _compress(A, name, ratio, G, params)
    except ValueError as exc:
        return str(exc)


def rel_error(f, A):
    A64 = A.astype(np.float64)
    return float(np.linalg.norm(f.to_dense().astype(np.float64) - A64) / np.linalg.norm(A64))


BEST = re.compile(r"best reachable ratio is ([0-9.e+]+)")


def reported_best(message):
    found = BEST.search(message)
    assert found, message
    return float(found.group(1))


# ---------------------------------------------------------------------------------------------
# Every built-in meets its ratio
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method_id", sorted(METHODS))
def test_meets_requested_ratio(method_id, shape, dtype):
    _, _, kind = METHODS[method_id]
    A, _ = matrix(shape, dtype)
    dense = A.nbytes
    for ratio in RATIOS:
        result = run(method_id, shape, dtype, ratio)
        if ratio > best_ratio(method_id, shape, dtype.itemsize):
            assert isinstance(result, str), f"ratio {ratio} beyond the smallest form succeeded"
            assert reported_best(result) < ratio
            continue
        assert not isinstance(result, str), f"ratio {ratio}: {result}"
        f = result
        assert type(f) is kind
        assert f.shape == A.shape and f.dtype == dtype
        counted = stored_bytes(f)
        assert counted <= dense / ratio, f"ratio {ratio}: {counted} bytes > {dense / ratio}"
        assert f.nbytes == counted
        assert f.compression_ratio >= ratio


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method_id", sorted(METHODS))
def test_more_bytes_not_worse(method_id, shape, dtype):
    A, _ = matrix(shape, dtype)
    errors = []
    for ratio in RATIOS:  # increasing ratio: fewer bytes
        f = run(method_id, shape, dtype, ratio)
        if not isinstance(f, str):
            errors.append((ratio, rel_error(f, A)))
    assert len(errors) >= 2
    for (r_lo, e_lo), (r_hi, e_hi) in zip(errors, errors[1:]):
        assert e_lo <= e_hi * (1 + SLACK[method_id]), \
            f"ratio {r_lo}: error {e_lo:.5f} > ratio {r_hi}: {e_hi:.5f}"
    # and the methods are not trivial: the most bytes give a useful approximation
    assert errors[0][1] < 0.9


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_kmeans_solver_picks_a_dividing_block(shape, dtype):
    # ratio mode without block_size: blocks of 1, 2, 4, 8 or 16 that divide n; fewer bytes never
    # buy more code bits per weight
    bits = []
    for ratio in RATIOS:
        f = run("kmeans", shape, dtype, ratio)
        assert f.block_size in (1, 2, 4, 8, 16) and shape[1] % f.block_size == 0
        assert f.packed == (f.n_codes <= 16)
        bits.append(math.log2(f.n_codes) / f.block_size)
    assert bits == sorted(bits, reverse=True)


WITHOUT_METHOD = sorted(m for m in METHODS if "method" not in METHODS[m][1])


@pytest.mark.parametrize("method_id", WITHOUT_METHOD)
def test_compress_function_equals_compressor(method_id):
    # (methods with a `method` parameter: test_compress_function_passes_the_compressors_method)
    name, params, _ = METHODS[method_id]
    A, G = matrix((256, 128), np.dtype(np.float32))
    via_function = mc.compress(A, name, compression_ratio=4, grad=G, **params)
    via_get = compressors.get(name, compression_ratio=4, **params).compress(A, grad=G)
    cls = type(compressors.get(name, compression_ratio=4))
    via_class = cls(compression_ratio=4, **params).compress(A, grad=G)
    assert via_function == via_get == via_class


@pytest.mark.parametrize(("name", "params"), [("low_rank", dict(method="svd")),
                                              ("dictionary", dict(method="mod", max_iter=1)),
                                              ("kmeans", dict(method="lloyd"))])
def test_compress_function_passes_the_compressors_method(name, params):
    A, _ = matrix((256, 128), np.dtype(np.float32))
    f = mc.compress(A, name, compression_ratio=4, random_state=0, **params)
    g = compressors.get(name, compression_ratio=4, random_state=0, **params).compress(A)
    assert f == g


# ---------------------------------------------------------------------------------------------
# Explicit parameters give exactly those parameters
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def A32():
    return matrix((256, 128), np.dtype(np.float32))[0]


def test_low_rank_explicit_rank(A32):
    f = LowRankCompressor(7, method="svd").compress(A32)
    assert f.rank == 7 and f.left.shape == (256, 7) and f.right.shape == (7, 128)
    assert f == mc.low_rank(A32, 7, method="svd")
    g = LowRankCompressor(rank=128, random_state=0).compress(A32)
    assert g.rank == 128


@pytest.mark.parametrize(("n_codes", "block_size", "packed", "codes_dtype"),
                         [(16, 4, True, np.uint8), (2, 1, True, np.uint8),
                          (256, 2, False, np.uint8), (300, None, False, np.uint16),
                          (17, 8, False, np.uint8)])
def test_kmeans_explicit_parameters(A32, n_codes, block_size, packed, codes_dtype):
    f = KMeansCompressor(n_codes, block_size, random_state=0).compress(A32)
    b = block_size or 1
    assert f.n_codes == n_codes and f.block_size == b and f.packed is packed
    assert f.codebook.shape == (n_codes, b)
    assert f.codes.dtype == codes_dtype
    per_row = 128 // b
    assert f.codes.shape == (256, (per_row + 1) // 2 if packed else per_row)
    assert f.unpacked_codes().max() < n_codes
    assert stored_bytes(f) == KMeansCompressor.stored_bytes(256, 128, 4, n_codes, b)


def test_simhash_explicit_bits(A32):
    f = SimhashCompressor(37, random_state=0).compress(A32)
    assert f.bits.shape == (37, 16) and f.scale.shape == (128,) and f.n_rows == 256
    assert f == mc.simhash(A32, 37, random_state=0)
    assert stored_bytes(f) == SimhashCompressor.stored_bytes(256, 128, 4, 37)


def _kept_mask(f):
    mask = np.zeros(f.shape, bool)
    for i in range(f.shape[0]):
        mask[i, f.indices[f.indptr[i]:f.indptr[i + 1]]] = True
    return mask


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.999])
def test_pruning_explicit_sparsity(A32, sparsity):
    f = PruningCompressor(sparsity).compress(A32)
    total = A32.size
    assert f.nnz == total - math.floor(sparsity * total)
    mask = _kept_mask(f)
    assert_array_equal(f.to_dense()[mask], A32[mask])
    if 0 < f.nnz < total:
        assert np.abs(A32[mask]).min() >= np.abs(A32[~mask]).max()


def test_pruning_taylor_keeps_the_largest_products():
    A, G = matrix((256, 128), np.dtype(np.float64))
    f = PruningCompressor(0.6, scores="taylor").compress(A, grad=G)
    mask = _kept_mask(f)
    S = np.abs(A * G)
    assert mask.sum() == A.size - math.floor(0.6 * A.size)
    assert S[mask].min() >= S[~mask].max()
    # grad is what changes the selection
    assert not np.array_equal(mask, _kept_mask(PruningCompressor(0.6).compress(A)))


@pytest.mark.parametrize("block_shape", [(1, 4), (4, 4), (2, 8)])
def test_pruning_blocks_kept_whole(A32, block_shape):
    bh, bw = block_shape
    f = PruningCompressor(0.5, block_shape=block_shape).compress(A32)
    n_blocks = (256 // bh) * (128 // bw)
    assert f.nnz == (n_blocks - math.floor(0.5 * n_blocks)) * bh * bw
    blocks = _kept_mask(f).reshape(256 // bh, bh, 128 // bw, bw).sum(axis=(1, 3))
    assert set(np.unique(blocks)) <= {0, bh * bw}


def test_pruning_quantized_explicit_codes(A32):
    f = PruningCompressor(0.5, n_codes=8, random_state=0).compress(A32)
    assert f.values is None and f.codebook.shape == (8,) and f.codes.dtype == np.uint8
    assert f.codebook.dtype == np.float32
    assert f.nnz == A32.size // 2
    # same support as without quantization
    assert_array_equal(_kept_mask(f), _kept_mask(PruningCompressor(0.5).compress(A32)))


@pytest.mark.parametrize(("N", "M"), [(2, 4), (1, 4), (3, 8)])
def test_pruning_n_m(A32, N, M):
    f = PruningCompressor(n_m=(N, M)).compress(A32)
    m, n = A32.shape
    assert f.nnz == m * n // M * N
    for i in range(m):
        cols = f.indices[f.indptr[i]:f.indptr[i + 1]].astype(np.int64)
        assert_array_equal(np.bincount(cols // M, minlength=n // M), N)
    mask = _kept_mask(f).reshape(m, n // M, M)
    mags = np.abs(A32).reshape(m, n // M, M)
    kept_min = np.where(mask, mags, np.inf).min(axis=2)
    dropped_max = np.where(mask, -np.inf, mags).max(axis=2)
    assert np.all(kept_min >= dropped_max)


def test_dictionary_explicit_parameters():
    A, _ = matrix((300, 200), np.dtype(np.float64))
    A = A[:80, :40]
    f = DictionaryCompressor(12, 3, max_iter=2, random_state=0).compress(A)
    assert f.dictionary.shape == (12, 40) and f.indices.shape == (80, 3)
    assert f.values.shape == (80, 3) and f.indices.dtype == np.uint8
    assert f.indices.max() < 12
    assert (np.count_nonzero(f.values, axis=1) <= 3).all()
    assert stored_bytes(f) == DictionaryCompressor.stored_bytes(80, 40, 8, 12, 3)
    assert rel_error(f, A) < 1.0


# ---------------------------------------------------------------------------------------------
# get_config / from_config
# ---------------------------------------------------------------------------------------------

CONFIGURED = [
    LowRankCompressor(5, method="svd", random_state=3),
    LowRankCompressor(compression_ratio=4.5, random_state=1),
    DictionaryCompressor(8, 2, method="mod", max_iter=2, random_state=1),
    DictionaryCompressor(compression_ratio=8, max_iter=1, random_state=1),
    KMeansCompressor(16, 4, method="lloyd", init="random", max_iter=20, random_state=2,
                     n_threads=1),
    KMeansCompressor(compression_ratio=8, random_state=0),
    SimhashCompressor(64, random_state=4, n_threads=2),
    SimhashCompressor(compression_ratio=10, random_state=4),
    PruningCompressor(0.6, scores="taylor", block_shape=(1, 4), n_codes=16, random_state=5),
    PruningCompressor(n_m=(2, 4)),
    PruningCompressor(compression_ratio=4, block_shape=(4, 4)),
]


@pytest.mark.parametrize("c", CONFIGURED, ids=lambda c: f"{c.name}")
def test_config_round_trip(c):
    cfg = c.get_config()
    assert cfg["name"] == c.name
    assert set(cfg) == {"name", "config"}
    text = json.dumps(cfg)  # JSON-friendly
    again = json.loads(text)
    rebuilt_all = (type(c).from_config(cfg), type(c).from_config(again),
                   MatrixCompressor.from_config(again), compressors.get(c.name, **again["config"]))
    for rebuilt in rebuilt_all:
        assert type(rebuilt) is type(c)
        assert rebuilt == c
        assert rebuilt.get_config() == cfg
    assert type(c).__name__ in repr(c)
    # the rebuilt compressor computes the same thing
    A, G = matrix((128, 384), np.dtype(np.float32))
    A, G = A[:64, :96], G[:64, :96]
    assert MatrixCompressor.from_config(again).compress(A, grad=G) == c.compress(A, grad=G)


def test_config_inequality():
    assert LowRankCompressor(4) != LowRankCompressor(5)
    assert LowRankCompressor(4) != KMeansCompressor(4)
    assert PruningCompressor(0.5, block_shape=[4, 4]) == PruningCompressor(0.5, block_shape=(4, 4))


def test_from_config_errors():
    cfg = LowRankCompressor(4).get_config()
    with pytest.raises(ValueError, match="config must be a dict"):
        MatrixCompressor.from_config("low_rank")
    with pytest.raises(ValueError, match="'config' entry"):
        MatrixCompressor.from_config({"name": "low_rank"})
    with pytest.raises(ValueError, match=r"unknown compressor 'nope'; registered: \["):
        MatrixCompressor.from_config({"name": "nope", "config": {}})
    with pytest.raises(ValueError, match="config is for 'low_rank', not a KMeansCompressor"):
        KMeansCompressor.from_config(cfg)


def test_get_unknown_lists_known_names():
    with pytest.raises(ValueError, match="unknown compression method 'bogus'") as info:
        compressors.get("bogus")
    for name in compressors.METHODS + ("mine",):
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="unknown compression method"):
        mc.compress(np.ones((4, 4)), "bogus", compression_ratio=2)


def test_builtin_names():
    assert compressors.METHODS == ("low_rank", "dictionary", "kmeans", "simhash", "pruning")
    for name in compressors.METHODS:
        c = compressors.get(name)
        assert c.name == name and isinstance(c, MatrixCompressor)


def test_matrix_compressor_is_abstract():
    with pytest.raises(TypeError):
        MatrixCompressor()


# ---------------------------------------------------------------------------------------------
# A user subclass works everywhere a built-in does
# ---------------------------------------------------------------------------------------------


class SignMeanCompressor(MatrixCompressor):
    """A user's method: W ~ sign(A) * mean|A|, 1-bit codes stored 4-bit packed with a two-entry
    codebook (a Codebook); with ``per_row`` a LowRank of rank 1 (|A| row means times ones), to
    show that any Factorization may come back."""

    name = "mine"

    def __init__(self, *, compression_ratio=None, per_row=False):
        self.compression_ratio = compression_ratio
        self.per_row = per_row

    def compress(self, A, *, grad=None):
        A = np.asarray(A)
        m, n = A.shape
        if self.per_row:
            f = LowRank(np.abs(A).mean(axis=1, keepdims=True), np.ones((1, n), A.dtype))
        else:
            codes = (A >= 0).astype(np.uint8)
            if n % 2:
                codes = np.hstack([codes, np.zeros((m, 1), np.uint8)])
            packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
            mu = np.abs(A).mean()
            f = Codebook(packed, np.array([[-mu], [mu]], A.dtype), n, packed=True)
        if self.compression_ratio is not None and f.compression_ratio < self.compression_ratio:
            raise ValueError(f"mine: the best reachable ratio is {f.compression_ratio:.4g}")
        return f


class MyLowRank(LowRankCompressor):
    """A subclass of a built-in with its own name."""

    name = "my_low_rank"


def test_user_subclass_through_get_and_compress(A32):
    c = compressors.get("mine", compression_ratio=4)
    assert isinstance(c, SignMeanCompressor)
    f = mc.compress(A32, "mine", compression_ratio=4)
    assert f == c.compress(A32) == SignMeanCompressor(compression_ratio=4).compress(A32)
    assert isinstance(f, Codebook) and f.compression_ratio >= 4
    mu = np.abs(A32).mean()
    assert_array_equal(f.to_dense(), np.where(A32 >= 0, mu, -mu).astype(np.float32))
    x = np.ones((2, 256), np.float32)
    np.testing.assert_allclose(f.matmul(x), x @ f.to_dense(), rtol=1e-5)
    g = mc.compress(A32, "mine", per_row=True)
    assert isinstance(g, LowRank) and g.rank == 1
    with pytest.raises(ValueError, match="best reachable ratio"):
        mc.compress(A32, "mine", compression_ratio=100)


def test_user_subclass_config_round_trip(A32, tmp_path):
    for c in (SignMeanCompressor(compression_ratio=3, per_row=True), MyLowRank(6, method="svd")):
        cfg = c.get_config()
        assert cfg == {"name": c.name, "config": cfg["config"]}
        again = json.loads(json.dumps(cfg))
        for rebuilt in (MatrixCompressor.from_config(again), type(c).from_config(again)):
            assert type(rebuilt) is type(c) and rebuilt == c
        f = MatrixCompressor.from_config(again).compress(A32)
        assert f == c.compress(A32)
        f.save(tmp_path / "f.npz")
        assert mc.factors.load(tmp_path / "f.npz") == f
    assert SignMeanCompressor(per_row=True).get_config() == {
        "name": "mine", "config": {"compression_ratio": None, "per_row": True}}
    assert MyLowRank(6).compress(A32, grad=None).rank == 6


# ---------------------------------------------------------------------------------------------
# Unreachable ratios
# ---------------------------------------------------------------------------------------------


def _check_best_is_tight(method_id, shape, dtype):
    name, params, _ = METHODS[method_id]
    A, G = matrix(shape, dtype) if shape in SHAPES else (
        np.random.default_rng(1).standard_normal(shape).astype(dtype),
        np.random.default_rng(2).standard_normal(shape).astype(dtype))
    with pytest.raises(ValueError, match="best reachable ratio is") as info:
        _compress(A, name, 1e6, G, params)
    msg = str(info.value)
    assert "compression_ratio=1e+06 is unreachable" in msg
    best = reported_best(msg)
    # the reported figure is the ratio of the smallest form, to its 4 significant digits
    assert best == pytest.approx(best_ratio(method_id, shape, dtype.itemsize), rel=6e-4)
    below, above = best * (1 - 1e-3), best * (1 + 1e-3)
    f = _compress(A, name, below, G, params)
    assert stored_bytes(f) <= A.nbytes / below
    with pytest.raises(ValueError, match="best reachable ratio"):
        _compress(A, name, above, G, params)


@pytest.mark.parametrize("method_id", sorted(METHODS))
def test_unreachable_ratio_reports_a_reachable_best(method_id, dtype):
    _check_best_is_tight(method_id, (256, 128), dtype)


@pytest.mark.parametrize("method_id", ["low_rank", "kmeans", "simhash", "pruning"])
def test_unreachable_ratio_other_shape(method_id):
    _check_best_is_tight(method_id, (300, 200), np.dtype(np.float64))


def test_dictionary_best_reachable_on_tall_matrix():
    _check_best_is_tight("dictionary", (1000, 8), np.dtype(np.float32))


def test_kmeans_best_reachable_on_small_matrix():
    _check_best_is_tight("kmeans", (64, 128), np.dtype(np.float32))


def test_reported_best_ratio_itself_is_reachable():
    A = np.random.default_rng(0).standard_normal((7, 11)).astype(np.float32)
    with pytest.raises(ValueError) as info:
        mc.compress(A, "low_rank", compression_ratio=5)
    best = reported_best(str(info.value))
    mc.compress(A, "low_rank", compression_ratio=best)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _nan_at(A, value):
    A = np.array(A, copy=True)
    A[3, 5] = value
    return A


BUILTINS = ["low_rank", "dictionary", "kmeans", "simhash", "pruning"]


@pytest.mark.parametrize("ratio", [1, 1.0, 0.5, 0, -2])
@pytest.mark.parametrize("name", BUILTINS)
def test_ratio_must_exceed_one(A32, name, ratio):
    with pytest.raises(ValueError, match=f"compression_ratio must be > 1 .*got {float(ratio)}"):
        mc.compress(A32, name, compression_ratio=ratio)


@pytest.mark.parametrize(("ratio", "exc", "match"), [
    ("4", TypeError, "compression_ratio must be a real number"),
    (True, TypeError, "compression_ratio must be a real number"),
    ([4], TypeError, "compression_ratio must be a real number"),
    (float("nan"), ValueError, "compression_ratio must be finite"),
    (float("inf"), ValueError, "compression_ratio must be finite"),
])
@pytest.mark.parametrize("name", BUILTINS)
def test_ratio_type(A32, name, ratio, exc, match):
    with pytest.raises(exc, match=match):
        mc.compress(A32, name, compression_ratio=ratio)


@pytest.mark.parametrize(("name", "params", "match"), [
    ("low_rank", dict(rank=4), "give exactly one of rank and compression_ratio"),
    ("kmeans", dict(n_codes=16), "give exactly one of n_codes and compression_ratio"),
    ("simhash", dict(n_bits=16), "give exactly one of n_bits and compression_ratio"),
    ("pruning", dict(sparsity=0.5), "give exactly one of sparsity and compression_ratio"),
    ("pruning", dict(n_m=(2, 4)), "n_m fixes the sparsity"),
    ("dictionary", dict(n_atoms=4, n_nonzero_coefs=2), "not both"),
    ("dictionary", dict(n_atoms=4), "not both"),
])
def test_parameter_and_ratio(A32, name, params, match):
    with pytest.raises(ValueError, match=match):
        mc.compress(A32, name, compression_ratio=4, **params)


@pytest.mark.parametrize(("name", "params", "match"), [
    ("low_rank", {}, "give exactly one of rank and compression_ratio"),
    ("kmeans", {}, "give exactly one of n_codes and compression_ratio"),
    ("kmeans", dict(block_size=4), "give exactly one of n_codes and compression_ratio"),
    ("simhash", {}, "give exactly one of n_bits and compression_ratio"),
    ("pruning", {}, "give exactly one of sparsity and compression_ratio"),
    ("dictionary", {}, "give n_atoms and n_nonzero_coefs, or compression_ratio"),
    ("dictionary", dict(n_atoms=4), "give n_atoms and n_nonzero_coefs, or compression_ratio"),
    ("pruning", dict(sparsity=0.5, n_m=(2, 4)), "n_m fixes the sparsity"),
])
def test_neither_or_conflicting_parameters(A32, name, params, match):
    with pytest.raises(ValueError, match=match):
        mc.compress(A32, name, **params)


@pytest.mark.parametrize(("value", "what"), [(np.nan, "NaN"), (np.inf, "infinity"),
                                             (-np.inf, "infinity")])
@pytest.mark.parametrize("name", BUILTINS)
def test_non_finite_matrix(A32, name, value, what):
    with pytest.raises(ValueError, match=f"A contains {what}"):
        mc.compress(_nan_at(A32, value), name, compression_ratio=4)


@pytest.mark.parametrize(("A", "exc", "match"), [
    (np.ones(16), ValueError, "A must be 2-D"),
    (np.ones((2, 4, 4)), ValueError, "A must be 2-D"),
    (None, TypeError, "A must be an array"),
    (np.ones((4, 4), complex), TypeError, "A must be real"),
    (np.ones((0, 4)), ValueError, "A is empty"),
])
@pytest.mark.parametrize("name", BUILTINS)
def test_bad_matrix(name, A, exc, match):
    with pytest.raises(exc, match=match):
        mc.compress(A, name, compression_ratio=2)


BAD_PARAMS = [
    # pruning
    ("taylor_no_grad", "pruning", dict(sparsity=0.5, scores="taylor"), None,
     ValueError, r"scores='taylor' needs grad"),
    ("taylor_no_grad_ratio", "pruning", dict(compression_ratio=4, scores="taylor"), None,
     ValueError, r"needs grad"),
    ("grad_shape", "pruning", dict(sparsity=0.5, scores="taylor"), np.ones((128, 256)),
     ValueError, r"grad must have the shape of A, \(256, 128\); got \(128, 256\)"),
    ("grad_nan", "pruning", dict(sparsity=0.5, scores="taylor"),
     _nan_at(np.ones((256, 128)), np.nan), ValueError, "grad contains NaN"),
    ("grad_inf", "pruning", dict(sparsity=0.5, scores="taylor"),
     _nan_at(np.ones((256, 128)), np.inf), ValueError, "grad contains infinity"),
    ("scores_bogus", "pruning", dict(sparsity=0.5, scores="bogus"), None,
     ValueError, "scores must be 'magnitude' or 'taylor'; got 'bogus'"),
    ("sparsity_one", "pruning", dict(sparsity=1.0), None,
     ValueError, r"sparsity must lie in \[0, 1\); got 1.0"),
    ("sparsity_above", "pruning", dict(sparsity=1.5), None,
     ValueError, r"sparsity must lie in \[0, 1\)"),
    ("sparsity_negative", "pruning", dict(sparsity=-0.1), None,
     ValueError, "sparsity must be >= 0.0; got -0.1"),
    ("sparsity_nan", "pruning", dict(sparsity=float("nan")), None,
     ValueError, "sparsity must be finite"),
    ("sparsity_str", "pruning", dict(sparsity="half"), None,
     TypeError, "sparsity must be a real number"),
    ("block_not_dividing", "pruning", dict(sparsity=0.5, block_shape=(3, 3)), None,
     ValueError, r"block_shape=\(3, 3\) must divide the shape of A, \(256, 128\)"),
    ("block_not_dividing_ratio", "pruning", dict(compression_ratio=4, block_shape=(1, 3)), None,
     ValueError, r"block_shape=\(1, 3\) must divide"),
    ("block_zero", "pruning", dict(sparsity=0.5, block_shape=(0, 4)), None,
     ValueError, r"block_shape\[0\] must be >= 1"),
    ("block_triple", "pruning", dict(sparsity=0.5, block_shape=(1, 2, 2)), None,
     TypeError, "block_shape must be a pair"),
    ("n_m_not_dividing", "pruning", dict(n_m=(2, 3)), None,
     ValueError, r"n_m=\(2, 3\): M must divide the number of columns of A, 128"),
    ("n_m_n_above_m", "pruning", dict(n_m=(5, 4)), None,
     ValueError, r"n_m=\(5, 4\): N must be <= M"),
    ("n_m_with_blocks", "pruning", dict(n_m=(2, 4), block_shape=(4, 4)), None,
     ValueError, "n_m and block_shape=.* cannot be combined"),
    ("n_m_zero", "pruning", dict(n_m=(0, 4)), None, ValueError, r"n_m\[0\] must be >= 1"),
    ("pruning_n_codes_zero", "pruning", dict(sparsity=0.5, n_codes=0), None,
     ValueError, "n_codes must be >= 1"),
    ("pruning_n_codes_ratio_zero", "pruning", dict(compression_ratio=4, n_codes=0), None,
     ValueError, "n_codes must be >= 1"),
    # low rank
    ("rank_zero", "low_rank", dict(rank=0), None, ValueError, "rank must be >= 1; got 0"),
    ("rank_too_big", "low_rank", dict(rank=129), None,
     ValueError, r"rank must be <= 128 \(min\(m, n\) = 128\); got 129"),
    ("rank_float", "low_rank", dict(rank=4.0), None, TypeError, "rank must be an integer"),
    # k-means
    ("n_codes_zero", "kmeans", dict(n_codes=0), None, ValueError, "n_codes must be >= 1"),
    ("n_codes_too_many", "kmeans", dict(n_codes=4097, block_size=8), None,
     ValueError, r"n_codes must be <= 4096 \(the number of blocks, 4096\)"),
    ("block_size_not_dividing", "kmeans", dict(n_codes=16, block_size=3), None,
     ValueError, "block_size=3 must divide n=128"),
    ("block_size_zero", "kmeans", dict(n_codes=16, block_size=0), None,
     ValueError, "block_size must be >= 1"),
    ("block_size_zero_ratio", "kmeans", dict(compression_ratio=4, block_size=0), None,
     ValueError, "block_size must be >= 1"),
    # simhash
    ("n_bits_zero", "simhash", dict(n_bits=0), None, ValueError, "n_bits must be >= 1"),
    ("n_bits_float", "simhash", dict(n_bits=8.5), None, TypeError, "n_bits must be an integer"),
    # dictionary
    ("n_atoms_zero", "dictionary", dict(n_atoms=0, n_nonzero_coefs=1), None,
     ValueError, "n_atoms must be >= 1"),
    ("n_atoms_too_many", "dictionary", dict(n_atoms=257, n_nonzero_coefs=1), None,
     ValueError, r"n_atoms must be <= 256 \(the number of rows, 256\)"),
    ("n_nonzero_above_atoms", "dictionary", dict(n_atoms=4, n_nonzero_coefs=5), None,
     ValueError, r"n_nonzero_coefs must be <= 4 \(min\(n_atoms, n\) = 4\)"),
    ("n_nonzero_zero", "dictionary", dict(n_atoms=4, n_nonzero_coefs=0), None,
     ValueError, "n_nonzero_coefs must be >= 1"),
]


@pytest.mark.parametrize(("name", "params", "grad", "exc", "match"), [b[1:] for b in BAD_PARAMS],
                         ids=[b[0] for b in BAD_PARAMS])
def test_bad_parameters(A32, name, params, grad, exc, match):
    with pytest.raises(exc, match=match):
        mc.compress(A32, name, grad=grad, **params)


@pytest.mark.parametrize("name", ["low_rank", "dictionary", "kmeans"])
def test_bad_method_names_the_argument(A32, name):
    params = {"low_rank": dict(rank=2), "dictionary": dict(n_atoms=4, n_nonzero_coefs=1),
              "kmeans": dict(n_codes=4)}[name]
    c = compressors.get(name, method="bogus", **params)
    with pytest.raises(ValueError, match="method must be one of"):
        c.compress(A32)


def test_kmeans_block_size_not_dividing_with_ratio(A32):
    with pytest.raises(ValueError, match="block_size=3 must divide"):
        mc.compress(A32, "kmeans", compression_ratio=4, block_size=3)


@pytest.mark.parametrize("params", [dict(sparsity=0.5, block_shape=4), dict(n_m=4)])
def test_pruning_scalar_shape_names_the_argument(params, A32):
    c = PruningCompressor(**params)  # parameters are checked when used, as scikit-learn's
    with pytest.raises(TypeError, match="block_shape|n_m"):
        c.compress(A32)
