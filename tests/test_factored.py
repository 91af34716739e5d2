"""Native factored products: the batch-1 4-bit codebook GEMV (decoded in registers).

Reference: numpy ``x @ codebook[codes]`` in float64. Tolerance: float32 sums of m products of
unit-scale values, relative to max|y|: 1e-5 (every path accumulates in float32, rows in order).
"""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import matcompress as mc
from matcompress import _core
from matcompress.factors import Codebook

ISAS = [i for i in ("generic", "avx2", "avx512")
        if ("generic", "avx2", "avx512").index(i)
        <= ("generic", "avx2", "avx512").index(_core.detected_isa())]


@pytest.fixture(params=ISAS)
def isa(request):
    before = _core.active_isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


def problem(m, n, n_codes=16, seed=0):
    rng = np.random.default_rng([seed, m, n, n_codes])
    codes = rng.integers(0, n_codes, (m, n)).astype(np.uint8)
    cb = rng.standard_normal(n_codes).astype(np.float32)
    x = rng.standard_normal(m).astype(np.float32)
    return x, codes, cb


@pytest.mark.parametrize("m, n", [(1, 1), (1, 2), (3, 5), (7, 63), (8, 64), (13, 65), (64, 130),
                                  (100, 257), (300, 511), (257, 1030), (33, 2049)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_codebook4_gemv_matches_numpy(isa, m, n, n_threads):
    x, codes, cb = problem(m, n)
    ref = x.astype(np.float64) @ cb[codes].astype(np.float64)
    y = _core.codebook4_gemv(x, mc.pack_4bit(codes), n, cb, n_threads)
    assert y.dtype == np.float32 and y.shape == (n,)
    scale = max(np.abs(ref).max(), 1e-30)
    assert np.abs(y - ref).max() <= 1e-5 * scale * max(1, np.sqrt(m) / 8)


@pytest.mark.parametrize("n_codes", [1, 2, 5, 16])
def test_codebook4_gemv_smaller_codebooks(isa, n_codes):
    x, codes, cb = problem(70, 200, n_codes)
    ref = x.astype(np.float64) @ cb[codes].astype(np.float64)
    y = _core.codebook4_gemv(x, mc.pack_4bit(codes), 200, cb, 0)
    assert np.abs(y - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-30)


def test_codebook4_gemv_same_bits_for_any_thread_count(isa):
    x, codes, cb = problem(600, 3000)
    packed = mc.pack_4bit(codes)
    ys = [_core.codebook4_gemv(x, packed, 3000, cb, t) for t in (1, 2, 3)]
    assert_array_equal(ys[0], ys[1])
    assert_array_equal(ys[0], ys[2])


def test_codebook_matmul_batch1_uses_the_native_path(monkeypatch):
    x, codes, cb = problem(90, 301)
    f = Codebook(mc.pack_4bit(codes), cb[:, None], 301, packed=True)
    calls = []
    real = _core.codebook4_gemv
    monkeypatch.setattr(_core, "codebook4_gemv", lambda *a: calls.append(1) or real(*a))
    y1 = f.matmul(x)
    assert calls, "batch-1 float32 matmul of a packed scalar codebook goes native"
    y2 = f.matmul(np.stack([x, x]))[0]  # the column-tile route
    ref = x.astype(np.float64) @ f.to_dense().astype(np.float64)
    for y in (y1, y2):
        assert y.shape == (301,) and y.dtype == np.float32
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
