"""Tests of matcompress.additive: the beam-search encoder (``additive_encode``), the
factorization ``AdditiveCodebook`` (kind "additive") and ``AdditiveCompressor`` (name
"additive").

Every result is checked against an independent reference: brute force over all K^M code
combinations and a numpy greedy coder for the encoder; bit packing by ``np.packbits``, a float64
decoder, ``x @ W``, explicit gradient formulas and finite differences for the factorization; the
stored-bytes formula written out, exact least squares, block k-means (``mc.fit_codebook`` and
scikit-learn's ``KMeans``) and held-out output errors for the compressor.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matcompress as mc
from matcompress import additive
from matcompress.additive import AdditiveCodebook, AdditiveCompressor, additive_encode
from matcompress.factors import load

# Relative accuracy of one computation in each dtype (scores, decoded sums, products).
EPS = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def ref_bits(K):
    """Bits per code: ceil(log2 K), at least 1, for K <= 256; 16 beyond."""
    return 16 if K > 256 else max(1, math.ceil(math.log2(K)))


def ref_pack(codes, bits):
    """(rows, n) integer codes -> (rows, ceil(n * bits / 8)) uint8, least significant bit first
    (np.packbits on the explicit bit string: independent of matcompress.pack_bits)."""
    codes = np.asarray(codes, np.int64)
    rows, n = codes.shape
    bitmat = ((codes[:, :, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(bitmat.reshape(rows, n * bits), axis=1, bitorder="little")


def ref_unpack(packed, bits, n):
    rows = packed.shape[0]
    bitmat = np.unpackbits(packed, axis=1, bitorder="little")[:, :n * bits]
    return (bitmat.reshape(rows, n, bits).astype(np.int64) << np.arange(bits)).sum(-1)


def ref_stored_bytes(m, n, itemsize, M, K, b, axis):
    return (m * math.ceil(n // b * M * ref_bits(K) / 8) + M * K * b * itemsize
            + 2 * (n if axis == 1 else m))


def ref_decode(f):
    """(W, unscaled decoded W, codes (m, n / b, M)) of an AdditiveCodebook, in float64, from the
    packed bytes."""
    m, n = f.shape
    M, K, b = f.codebooks.shape
    nb = n // b
    c = ref_unpack(f.codes, ref_bits(K), nb * M).reshape(m, nb, M)
    cb = f.codebooks.astype(np.float64)
    D = np.zeros((m, nb, b))
    for t in range(M):
        D += cb[t][c[:, :, t]]
    D = D.reshape(m, n)
    return D * scale_grid(f.scales, f.channel_axis), D, c


def scale_grid(scales, axis):
    s = np.asarray(scales, np.float64)
    return s[None, :] if axis == 1 else s[:, None]


def make_codebook(rng, m, nb, b, M, K, axis, dtype):
    """A random AdditiveCodebook and its unpacked codes (m, nb, M)."""
    n = nb * b
    codes = rng.integers(0, K, size=(m, nb, M))
    books = rng.standard_normal((M, K, b)).astype(dtype)
    size = n if axis == 1 else m
    scales = (rng.uniform(0.5, 2.0, size) * rng.choice([-1.0, 1.0], size)).astype(np.float16)
    packed = ref_pack(codes.reshape(m, nb * M), ref_bits(K))
    return AdditiveCodebook(packed, books, scales, n, axis), codes


def code_errors(X, books, codes):
    """Each row's squared error ||x - sum_t books[t, codes[t]]||^2 in float64."""
    books = np.asarray(books, np.float64)
    approx = sum(books[t][codes[:, t]] for t in range(books.shape[0]))
    d = np.asarray(X, np.float64) - approx
    return (d * d).sum(1)


def brute_force(X, books):
    """(errors (n, K^M) of every code combination, the combinations (K^M, M))."""
    M, K, _ = books.shape
    combos = np.array(list(itertools.product(range(K), repeat=M)), dtype=np.int64)
    sums = sum(np.asarray(books, np.float64)[t][combos[:, t]] for t in range(M))
    d = np.asarray(X, np.float64)[:, None, :] - sums[None]
    return (d * d).sum(-1), combos


def score_tol(X, books, dtype):
    """Per-row tolerance of a squared error computed as ||x||^2 - 2 <x, c> + ||c||^2."""
    big = np.abs(np.asarray(books, np.float64)).sum(0).max(0)  # a bound on |sum of codewords|
    x = np.asarray(X, np.float64)
    eps = 1e-6 if np.dtype(dtype) == np.float32 else 1e-13
    return eps * ((x * x).sum(1) + (big * big).sum() + 1e-30)


def encode_problem(rng, n, b, M, K, dtype):
    """Codebooks (M, K, b) and points: half near sums of codewords, half Gaussian."""
    books = rng.standard_normal((M, K, b)) * rng.uniform(0.5, 1.5, (M, 1, 1))
    codes = rng.integers(0, K, size=(n, M))
    X = sum(books[t][codes[:, t]] for t in range(M)) + 0.3 * rng.standard_normal((n, b))
    X[n // 2:] = rng.standard_normal((n - n // 2, b)) * math.sqrt(M)
    return X.astype(dtype), books.astype(dtype)


def exhaustive_beam(M, K):
    """A beam keeping every partial code set (so the search is exhaustive): every single
    codeword (M * K) for M <= 2; every pair (M(M-1)/2 K^2) as well for M = 3."""
    return M * K if M <= 2 else max(M * K, M * (M - 1) // 2 * K * K)


def rel_err(A, f):
    A = np.asarray(A, np.float64)
    return np.linalg.norm(A - f.to_dense()) / np.linalg.norm(A)


def output_error(A, W, H):
    """trace(E^T H E), E = A - W, in float64."""
    E = np.asarray(A, np.float64) - np.asarray(W, np.float64)
    return float(np.einsum("ij,ij->", E, H @ E))


def scaled_matrix(rng, m, n, axis, dtype):
    """Gaussian matrix whose channels (columns for axis 1, rows for 0) differ in scale."""
    A = rng.standard_normal((m, n))
    A *= np.exp(rng.normal(size=n))[None, :] if axis == 1 else np.exp(rng.normal(size=m))[:, None]
    return A.astype(dtype)


def correlated_inputs(rng, n_samples, m, L):
    return rng.standard_normal((n_samples, m)) @ L


# ---------------------------------------------------------------------------------------------
# additive_encode
# ---------------------------------------------------------------------------------------------

ENCODE_SIZES = [(1, 1), (1, 7), (1, 16), (2, 2), (2, 9), (2, 16), (2, 32), (3, 2), (3, 4)]


@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("M,K", ENCODE_SIZES)
def test_encode_exhaustive_beam_is_optimal(rng, dtype, M, K, b):
    X, books = encode_problem(rng, 60, b, M, K, dtype)
    beam = exhaustive_beam(M, K)
    assert beam <= 64
    codes, err = additive_encode(X, books, beam_size=beam, n_threads=1)
    assert codes.shape == (60, M) and codes.dtype == np.int32
    assert err.shape == (60,) and err.dtype == dtype
    assert codes.min() >= 0 and codes.max() < K
    tol = score_tol(X, books, dtype)
    mine = code_errors(X, books, codes)
    np.testing.assert_allclose(err, mine, rtol=EPS[np.dtype(dtype)] * 10, atol=tol.max())
    all_err, combos = brute_force(X, books)
    best = all_err.min(1)
    assert np.all(mine <= best + tol)
    # Where the optimum is clear (second best further than the tolerance), the codes are it.
    order = np.sort(all_err, axis=1)
    clear = (order[:, 1] - order[:, 0] > 2 * tol) if order.shape[1] > 1 else np.ones(60, bool)
    # (scalar sums of K^M codewords lie close together: many near-ties for b = 1)
    assert clear.sum() >= (10 if b == 1 else 54)
    np.testing.assert_array_equal(codes[clear], combos[all_err.argmin(1)][clear])


def test_encode_beam_beats_greedy_somewhere(rng, dtype):
    # Shows that the exhaustive test above is not passed by greedy coding: on these problems
    # the greedy codes (beam 1) miss the optimum on some rows.
    X, books = encode_problem(rng, 200, 4, 2, 16, dtype)
    greedy = code_errors(X, books, additive_encode(X, books, beam_size=1)[0])
    full = code_errors(X, books, additive_encode(X, books, beam_size=32)[0])
    tol = score_tol(X, books, dtype)
    assert np.all(full <= greedy + tol)
    assert np.sum(full < greedy - tol) >= 5
    assert full.sum() < greedy.sum()


def greedy_reference(X, books):
    """Beam-1 coding in float64: at each step the codeword (of any unused codebook) that leaves
    the smallest residual, the first in (codebook, code) order on ties. Also returns, per row,
    the smallest gap between the best and the second-best score over the steps."""
    M, K, _ = books.shape
    X = np.asarray(X, np.float64)
    flat = np.asarray(books, np.float64).reshape(M * K, -1)
    n = X.shape[0]
    codes = np.full((n, M), -1, np.int64)
    gap = np.full(n, np.inf)
    r = X.copy()
    for _ in range(M):
        d = ((r[:, None, :] - flat[None]) ** 2).sum(-1)  # (n, M * K)
        used = np.repeat(codes >= 0, K, axis=1)
        d[used] = np.inf
        j = d.argmin(1)
        srt = np.sort(d, axis=1)
        if srt.shape[1] > 1:
            gap = np.minimum(gap, srt[:, 1] - srt[:, 0])
        codes[np.arange(n), j // K] = j % K
        r -= flat[j]
    return codes, gap


@pytest.mark.parametrize("M,K", [(1, 16), (2, 16), (3, 8)])
def test_encode_beam_one_is_greedy(rng, dtype, M, K):
    X, books = encode_problem(rng, 300, 4, M, K, dtype)
    codes, err = additive_encode(X, books, beam_size=1)
    ref, gap = greedy_reference(X, books)
    clear = gap > 2 * score_tol(X, books, dtype)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(codes[clear], ref[clear])
    np.testing.assert_allclose(err, code_errors(X, books, codes), rtol=EPS[np.dtype(dtype)] * 10,
                               atol=score_tol(X, books, dtype).max())


@pytest.mark.parametrize("beam", [1, 8])
def test_encode_init_never_worse(rng, dtype, beam):
    M, K = 3, 8
    X, books = encode_problem(rng, 300, 4, M, K, dtype)
    tol = score_tol(X, books, dtype)
    # Random starting codes: every row ends no worse; a row that moved is strictly better.
    init = rng.integers(0, K, size=(300, M))
    codes, err = additive_encode(X, books, init=init, beam_size=beam)
    e0, e1 = code_errors(X, books, init), code_errors(X, books, codes)
    assert np.all(e1 <= e0 + tol)
    moved = np.any(codes != init, axis=1)
    assert moved.any()
    assert np.all(e1[moved] < e0[moved] + tol[moved])
    np.testing.assert_allclose(err, e1, rtol=EPS[np.dtype(dtype)] * 10, atol=tol.max())
    # The optimum as a start: kept, although greedy coding alone misses it on some rows.
    all_err, combos = brute_force(X, books)
    best = all_err.min(1)
    opt = combos[all_err.argmin(1)].astype(np.uint8)  # any integer dtype is accepted
    alone = code_errors(X, books, additive_encode(X, books, beam_size=1)[0])
    assert np.sum(alone > best + tol) >= 3
    codes, err = additive_encode(X, books, init=opt, beam_size=beam)
    assert np.all(code_errors(X, books, codes) <= best + tol)
    assert np.all(np.abs(err - best) <= tol)
    # init is not modified
    assert np.array_equal(opt, combos[all_err.argmin(1)])


def test_encode_threads_give_identical_codes(rng, dtype):
    # 4000 points x M=2 x K=64 x b=4 x beam 8: enough work (> 2e7) for two threads.
    X, books = encode_problem(rng, 4000, 4, 2, 64, dtype)
    init = rng.integers(0, 64, size=(4000, 2))
    for kw in ({}, {"init": init}):
        c1, e1 = additive_encode(X, books, n_threads=1, **kw)
        c2, e2 = additive_encode(X, books, n_threads=2, **kw)
        cd, ed = additive_encode(X, books, **kw)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(c1, cd)
        np.testing.assert_array_equal(e1, ed)


def test_encode_empty_and_mixed_dtypes(rng):
    books = rng.standard_normal((2, 4, 3))
    codes, err = additive_encode(np.empty((0, 3)), books)
    assert codes.shape == (0, 2) and err.shape == (0,)
    X = rng.standard_normal((10, 3)).astype(np.float32)
    # float64 codebooks are taken in the dtype of X
    c64, e64 = additive_encode(X, books)
    c32, e32 = additive_encode(X, books.astype(np.float32))
    np.testing.assert_array_equal(c64, c32)
    assert e64.dtype == np.float32
    np.testing.assert_array_equal(e64, e32)


@pytest.mark.parametrize("power", [-70, 70, -600, 600])
def test_encode_extreme_magnitudes(rng, dtype, power):
    # Squares of 2^70 overflow float32 (and of 2^600 float64); those of 2^-70 / 2^-600
    # underflow. The codes must be those of the same problem at unit scale (a power-of-two
    # scaling changes no comparison); the errors scale by 4^power (inf past the dtype's range).
    if dtype == np.float32 and abs(power) > 100:
        power = 90 if power > 0 else -90  # within float32's range, squares still overflow
    X, books = encode_problem(rng, 100, 4, 2, 8, dtype)
    ref_codes, ref_err = additive_encode(X, books, beam_size=16)
    with np.errstate(over="ignore", under="ignore"):
        codes, err = additive_encode(np.ldexp(X, power), np.ldexp(books, power), beam_size=16)
        want = np.ldexp(ref_err.astype(np.float64), 2 * power)
    np.testing.assert_array_equal(codes, ref_codes)
    fin = np.finfo(dtype)
    big = want > float(fin.max)
    assert np.all(np.isinf(err[big]))
    ok = ~big & (want >= float(fin.smallest_normal))
    np.testing.assert_allclose(err[ok], want[ok], rtol=1e-5 if dtype == np.float32 else 1e-12)


def _bad_encode_cases():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3))
    B = rng.standard_normal((2, 4, 3))
    nan_x = X.copy()
    nan_x[1, 1] = np.nan
    inf_b = B.copy()
    inf_b[0, 0, 0] = np.inf
    return [
        (dict(X=X[0], codebooks=B), ValueError, "X must be 2-D"),
        (dict(X=X, codebooks=B[0]), ValueError, "codebooks must be 3-D"),
        (dict(X=X, codebooks=B[:, :, :2]), ValueError, "codebooks must have shape"),
        (dict(X=X, codebooks=B, init=np.zeros((5, 3), int)), ValueError, "init"),
        (dict(X=X, codebooks=B, init=np.zeros((4, 2), int)), ValueError, "init"),
        (dict(X=X, codebooks=B, init=np.zeros((5, 2))), ValueError, "init must be integer"),
        (dict(X=X, codebooks=B, init=np.full((5, 2), 4)), ValueError, r"init codes must lie"),
        (dict(X=X, codebooks=B, init=np.full((5, 2), -1)), ValueError, r"init codes must lie"),
        (dict(X=X, codebooks=B, beam_size=0), ValueError, "beam_size must be >= 1"),
        (dict(X=X, codebooks=B, beam_size=65), ValueError, "beam_size must be <= 64"),
        (dict(X=X, codebooks=B, beam_size=2.0), TypeError, "beam_size"),
        (dict(X=nan_x, codebooks=B), ValueError, "X"),
        (dict(X=X, codebooks=inf_b), ValueError, "codebooks"),
        (dict(X=X.astype(complex), codebooks=B), TypeError, "X must be real"),
        (dict(X=np.array([["a"] * 3] * 5), codebooks=B), TypeError, "X"),
        (dict(X=X, codebooks=np.zeros((17, 2, 3))), ValueError, "n_books"),
        (dict(X=X, codebooks=np.zeros((0, 2, 3))), ValueError, "codebook"),
        (dict(X=X, codebooks=B, n_threads=0), ValueError, "n_threads"),
    ]


@pytest.mark.parametrize("kwargs,exc,match", _bad_encode_cases())
def test_encode_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        additive_encode(**kwargs)


# ---------------------------------------------------------------------------------------------
# AdditiveCodebook
# ---------------------------------------------------------------------------------------------

# (m, n / b, b, M, K): 1-, 3-, 4-, 7-, 8- and 16-bit codes.
FORMS = [(5, 4, 3, 1, 2), (4, 4, 2, 3, 5), (3, 4, 4, 2, 16), (6, 2, 5, 2, 100),
         (2, 1, 8, 1, 256), (3, 6, 2, 2, 300)]


@pytest.fixture(params=[0, 1], ids=["axis0", "axis1"])
def axis(request):
    return request.param


@pytest.mark.parametrize("m,nb,b,M,K", FORMS)
def test_codebook_bytes_and_decoding(rng, dtype, axis, m, nb, b, M, K):
    f, codes = make_codebook(rng, m, nb, b, M, K, axis, dtype)
    n = nb * b
    itemsize = np.dtype(dtype).itemsize
    assert f.kind == "additive" and f.shape == (m, n) and f.dtype == dtype
    assert (f.n_codebooks, f.n_codes, f.block_size, f.bits) == (M, K, b, ref_bits(K))
    assert f.codes.shape == (m, math.ceil(nb * M * ref_bits(K) / 8))
    want = ref_stored_bytes(m, n, itemsize, M, K, b, axis)
    assert f.nbytes == want
    assert f.nbytes == f.codes.size + M * K * b * itemsize + 2 * (n if axis == 1 else m)
    assert f.nbytes == AdditiveCompressor.stored_bytes(m, n, itemsize, M, K, b, axis)
    assert f.compression_ratio == pytest.approx(m * n * itemsize / want, rel=1e-15)
    assert f.bits_per_weight == pytest.approx(8 * want / (m * n), rel=1e-15)
    np.testing.assert_array_equal(f.unpacked_codes(), codes)
    np.testing.assert_array_equal(f.unpacked_codes(1, m), codes[1:])
    W, _, _ = ref_decode(f)
    dense = f.to_dense()
    assert dense.dtype == dtype and dense.shape == (m, n)
    scale = np.abs(f.codebooks).max() * M * 2.0
    np.testing.assert_allclose(dense, W, rtol=EPS[np.dtype(dtype)] / 10,
                               atol=EPS[np.dtype(dtype)] / 10 * scale)
    for a, z in [(0, m), (1, m), (0, 1), (m - 1, m), (m // 2, m // 2)]:
        np.testing.assert_array_equal(f.dense_rows(a, z), dense[a:z])


@pytest.fixture(params=[None, 2], ids=["one_tile", "tiles_of_2_rows"])
def tiles(request, monkeypatch):
    """The decode tiles as built (2^20 weights) or forced down to 2 rows each."""
    if request.param is not None:
        monkeypatch.setattr(mc.quant, "_TILE_VALUES", 2 * 12)  # n = 12 in the tests below
    return request.param


def test_codebook_tiles_decode_alike(rng, dtype, axis, monkeypatch):
    f, _ = make_codebook(rng, 7, 4, 3, 2, 16, axis, dtype)
    whole, y_whole = f.to_dense(), f.matmul(np.eye(7, dtype=dtype))
    monkeypatch.setattr(mc.quant, "_TILE_VALUES", 12)  # one row per tile (quant._row_blocks)
    np.testing.assert_array_equal(f.to_dense(), whole)
    np.testing.assert_array_equal(f.dense_rows(2, 5), whole[2:5])
    np.testing.assert_allclose(f.matmul(np.eye(7, dtype=dtype)), y_whole,
                               rtol=EPS[np.dtype(dtype)])


@pytest.mark.parametrize("M,K", [(1, 5), (2, 16), (3, 300)])
def test_codebook_matmul(rng, dtype, axis, tiles, M, K):
    m, nb, b = 9, 4, 3
    f, _ = make_codebook(rng, m, nb, b, M, K, axis, dtype)
    W, _, _ = ref_decode(f)
    x = rng.standard_normal((2, 3, m)).astype(dtype)
    y = f.matmul(x)
    assert y.shape == (2, 3, nb * b) and y.dtype == dtype
    ref = x.astype(np.float64) @ W
    tol = EPS[np.dtype(dtype)] * np.abs(x).sum(-1).max() * np.abs(W).max() * 4
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
    np.testing.assert_array_equal(x @ f, y)
    # float64 x with a float32 W: computed in float64
    y64 = f.matmul(x.astype(np.float64)[0])
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, ref[0], rtol=0, atol=tol)


@pytest.mark.parametrize("M,K", [(1, 5), (2, 16), (3, 300)])
def test_codebook_matmul_backward(rng, dtype, axis, tiles, M, K):
    m, nb, b = 9, 4, 3
    n = nb * b
    f, codes = make_codebook(rng, m, nb, b, M, K, axis, dtype)
    W, D, c = ref_decode(f)
    S = scale_grid(f.scales, axis) * np.ones((m, n))
    x = rng.standard_normal((5, m)).astype(dtype)
    dy = rng.standard_normal((5, n)).astype(dtype)
    dx, grads = f.matmul_backward(x, dy)
    assert set(grads) == {"codebooks", "scales"}
    assert dx.shape == x.shape and dx.dtype == dtype
    assert grads["codebooks"].shape == (M, K, b) and grads["codebooks"].dtype == dtype
    assert grads["scales"].shape == f.scales.shape and grads["scales"].dtype == dtype
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    G = x64.T @ dy64  # dL/dW
    # Explicit formulas: a one-hot map from codes to codewords.
    onehot = (c[..., None] == np.arange(K)).astype(np.float64)  # (m, nb, M, K)
    want_cb = np.einsum("ijtk,ije->tke", onehot, (G * S).reshape(m, nb, b))
    want_s = (G * D).sum(0) if axis == 1 else (G * D).sum(1)
    rtol = EPS[np.dtype(dtype)] * 10

    def close(got, want, terms):
        bad = np.abs(np.asarray(got, np.float64) - want) > rtol * (terms + 1e-30)
        assert not bad.any(), (got[bad], want[bad], terms[bad])

    close(dx, dy64 @ W.T, np.abs(dy64) @ np.abs(W).T)
    close(grads["codebooks"], want_cb,
          np.einsum("ijtk,ije->tke", onehot, (np.abs(x64).T @ np.abs(dy64) * np.abs(S))
                    .reshape(m, nb, b)))
    absGD = np.abs(x64).T @ np.abs(dy64) * np.abs(D)
    close(grads["scales"], want_s, absGD.sum(0) if axis == 1 else absGD.sum(1))

    # Finite differences of L = sum(dy * (x @ W(codebooks, scales))) along random directions
    # (L is linear in each, so central differences are exact up to rounding).
    cb0, s0 = f.codebooks.astype(np.float64), f.scales.astype(np.float64)

    def loss(cb, s):
        Dd = sum(cb[t][c[:, :, t]] for t in range(M)).reshape(m, n)
        return float((dy64 * (x64 @ (Dd * scale_grid(s, axis)))).sum())

    for _ in range(2):
        V = rng.standard_normal(cb0.shape)
        fd = (loss(cb0 + V, s0) - loss(cb0 - V, s0)) / 2
        assert float((grads["codebooks"] * V).sum()) == pytest.approx(
            fd, rel=rtol * 100, abs=rtol * 100 * np.abs(want_cb).sum() * np.abs(V).max())
        u = rng.standard_normal(s0.shape)
        fd = (loss(cb0, s0 + u) - loss(cb0, s0 - u)) / 2
        assert float((grads["scales"] * u).sum()) == pytest.approx(
            fd, rel=rtol * 100, abs=rtol * 100 * np.abs(want_s).sum() * np.abs(u).max())

    dx_only, none = f.matmul_backward(x, dy, need_grads=False)
    assert none == {}
    np.testing.assert_array_equal(dx_only, dx)
    no_dx, grads2 = f.matmul_backward(x, dy, need_dx=False)
    assert no_dx is None
    np.testing.assert_array_equal(grads2["codebooks"], grads["codebooks"])
    np.testing.assert_array_equal(grads2["scales"], grads["scales"])


@pytest.mark.parametrize("K", [5, 16, 300])
def test_codebook_save_load_round_trip(rng, dtype, axis, tmp_path, K):
    f, _ = make_codebook(rng, 6, 3, 4, 2, K, axis, dtype)
    path = tmp_path / "f.npz"
    f.save(path)
    g = load(path)
    assert type(g) is AdditiveCodebook
    assert g == f
    for name in ("codes", "codebooks", "scales"):
        a, b = getattr(f, name), getattr(g, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    assert (g.n_cols, g.channel_axis) == (f.n_cols, f.channel_axis)
    assert type(g.n_cols) is int and type(g.channel_axis) is int
    assert g.to_dense().tobytes() == f.to_dense().tobytes()
    # A file whose codes lie beyond the codebook is refused on load.
    with np.load(path) as z:
        fields = {k: z[k] for k in z.files}
    if K < 1 << ref_bits(K):
        codes = f.unpacked_codes().reshape(6, -1).astype(np.int64)
        codes[0, 0] = K
        fields["codes"] = ref_pack(codes, ref_bits(K))
        np.savez(tmp_path / "bad.npz", **fields)
        with pytest.raises(ValueError, match="malformed 'additive'.*codes must lie"):
            load(tmp_path / "bad.npz")


def _bad_codebook_cases():
    rng = np.random.default_rng(1)
    m, nb, b, M, K = 4, 3, 2, 2, 5  # 3-bit codes: 6 per row -> 18 bits -> 3 bytes
    codes = rng.integers(0, K, size=(m, nb * M))
    good = dict(codes=ref_pack(codes, 3), codebooks=rng.standard_normal((M, K, b)),
                scales=np.ones(nb * b, np.float16), n_cols=nb * b, channel_axis=1)

    def case(match, exc=ValueError, **kw):
        return (dict(good, **kw), exc, match)

    high = good["codes"].copy()
    high[0, -1] |= 0x80  # bits 18..23 of a row are unused
    big = codes.copy()
    big[2, 3] = 7
    nan_cb = good["codebooks"].copy()
    nan_cb[1, 2, 0] = np.nan
    return [
        case("bytes per row", codes=np.zeros((m, 4), np.uint8)),
        case("bytes per row", codes=np.zeros((m, 2), np.uint8)),
        case(r"codes must lie in \[0, 5\); got 7", codes=ref_pack(big, 3)),
        case("unused high bits", codes=high),
        case("codes must be a 2-D uint8", TypeError, codes=good["codes"].astype(np.uint16)),
        case("codes must be a 2-D uint8", TypeError, codes=good["codes"][0]),
        case("at least one row", codes=np.zeros((0, 3), np.uint8)),
        case("scales must be float16", TypeError, scales=np.ones(nb * b, np.float32)),
        case(r"scales must have shape \(6,\)", scales=np.ones(m, np.float16)),
        case(r"scales must have shape \(4,\)", scales=np.ones(nb * b, np.float16),
             channel_axis=0),
        case("scales contain NaN", scales=np.full(nb * b, np.nan, np.float16)),
        case("codebooks contain NaN", codebooks=nan_cb),
        case("codebooks must be float32 or float64", TypeError,
             codebooks=good["codebooks"].astype(np.float16)),
        case("codebooks must be 3-D", codebooks=good["codebooks"][0]),
        case("every side >= 1", codebooks=np.zeros((M, K, 0))),
        case("must be a multiple of the block size", n_cols=7),
        case("n_cols must be >= 1", n_cols=0),
        case("n_cols must be an integer", TypeError, n_cols=6.0),
        case("at most 65536", codebooks=np.zeros((1, 65537, 1), np.float32)),
        case("channel_axis must be 0", channel_axis=2),
    ]


@pytest.mark.parametrize("kwargs,exc,match", _bad_codebook_cases())
def test_codebook_construction_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AdditiveCodebook(**kwargs)


def test_codebook_is_frozen_and_owns_copies(rng):
    m, nb, b, M, K = 3, 2, 2, 2, 4
    codes = rng.integers(0, K, size=(m, nb * M))
    packed = ref_pack(codes, 2)
    books = rng.standard_normal((M, K, b))
    scales = np.ones(nb * b, np.float16)
    f = AdditiveCodebook(packed, books, scales, nb * b)
    before = f.to_dense()
    packed[:] = 0
    books[:] = 7.0
    scales[:] = 3.0
    np.testing.assert_array_equal(f.to_dense(), before)  # the caller's arrays are copied
    with pytest.raises(ValueError):
        f.codebooks[0, 0, 0] = 1.0  # read-only
    with pytest.raises(AttributeError):
        f.n_cols = 8


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 6), nb=st.integers(1, 5), b=st.integers(1, 4), M=st.integers(1, 3),
       K=st.sampled_from([1, 2, 3, 5, 16, 17, 256, 257]), axis=st.sampled_from([0, 1]),
       dt=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_codebook_property(m, nb, b, M, K, axis, dt, seed):
    rng = np.random.default_rng(seed)
    f, codes = make_codebook(rng, m, nb, b, M, K, axis, dt)
    n = nb * b
    itemsize = np.dtype(dt).itemsize
    assert f.nbytes == ref_stored_bytes(m, n, itemsize, M, K, b, axis)
    np.testing.assert_array_equal(f.unpacked_codes(), codes)
    W, _, _ = ref_decode(f)
    eps = EPS[np.dtype(dt)]
    dense = f.to_dense()
    np.testing.assert_allclose(dense, W, rtol=eps, atol=eps * (np.abs(W).max() + 1))
    x = rng.standard_normal((3, m)).astype(dt)
    y = f.matmul(x)
    np.testing.assert_allclose(y, x.astype(np.float64) @ W, rtol=0,
                               atol=eps * 10 * (np.abs(x) @ np.abs(W) + 1e-30).max())
    a = int(rng.integers(0, m + 1))
    z = int(rng.integers(a, m + 1))
    np.testing.assert_array_equal(f.dense_rows(a, z), dense[a:z])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 20), b=st.integers(1, 4), MK=st.sampled_from(ENCODE_SIZES[:7]),
       dt=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_encode_property(n, b, MK, dt, seed):
    M, K = MK
    rng = np.random.default_rng(seed)
    X, books = encode_problem(rng, n, b, M, K, dt)
    codes, err = additive_encode(X, books, beam_size=exhaustive_beam(M, K))
    tol = score_tol(X, books, dt)
    best = brute_force(X, books)[0].min(1)
    mine = code_errors(X, books, codes)
    assert np.all(mine <= best + tol)
    np.testing.assert_allclose(err, mine, rtol=EPS[np.dtype(dt)] * 10, atol=tol.max())


# ---------------------------------------------------------------------------------------------
# AdditiveCompressor
# ---------------------------------------------------------------------------------------------


def test_compressor_error_falls_with_more_codebooks(rng, dtype, axis):
    A = scaled_matrix(rng, 128, 64, axis, dtype)
    errs = []
    for M in (1, 2, 3, 4):
        f = AdditiveCompressor(M, 16, 4, channel_axis=axis, random_state=0).compress(A)
        assert isinstance(f, AdditiveCodebook) and f.dtype == dtype and f.shape == A.shape
        assert (f.n_codebooks, f.n_codes, f.block_size, f.channel_axis) == (M, 16, 4, axis)
        assert f.nbytes == ref_stored_bytes(128, 64, np.dtype(dtype).itemsize, M, 16, 4, axis)
        errs.append(rel_err(A, f))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    # Each codebook adds 1 bit per weight here: the error falls by a clear factor each time.
    assert errs[-1] < 0.5 * errs[0]


def test_compressor_scales_are_least_squares(rng, dtype, axis):
    # Each channel's float16 scale is the least-squares one for the decoded codes (rounded to
    # float16), so no channel's error is above that of the rounded optimum.
    A = scaled_matrix(rng, 64, 32, axis, dtype)
    f = AdditiveCompressor(2, 16, 4, channel_axis=axis, random_state=0).compress(A)
    _, D, _ = ref_decode(f)
    A64 = A.astype(np.float64)
    if axis == 0:
        A64, D = A64.T, D.T  # channels as columns
    best = (A64 * D).sum(0) / (D * D).sum(0)

    def err(s):
        return ((A64 - D * s[None, :]) ** 2).sum(0)

    stored = f.scales.astype(np.float64)
    assert np.all(err(stored) <= err(best.astype(np.float16).astype(np.float64)))
    # ... which exceeds the exact optimum by at most (scale's float16 rounding)^2 * ||D_c||^2
    assert np.all(err(stored) <= err(best) + (np.abs(best) * 2.0 ** -11) ** 2 * (D * D).sum(0)
                  * (1 + 1e-6))


def ref_choice(m, n, itemsize, ratio, axis):
    """The documented rule: among b in (8, 4, 2), 4..8-bit codes with K <= blocks / 2 and 1..3
    codebooks that fit dense bytes / ratio, the most code bits per weight, then the longer
    block, then fewer codebooks. Returns ((M, K, b) or None, the smallest size of any)."""
    best, smallest = None, None
    for b in (8, 4, 2):
        if n % b:
            continue
        for bits in range(4, 9):
            K = 1 << bits
            if K > m * n // b // 2:
                continue
            for M in (1, 2, 3):
                size = ref_stored_bytes(m, n, itemsize, M, K, b, axis)
                smallest = size if smallest is None else min(smallest, size)
                if size <= m * n * itemsize / ratio:
                    key = (M * bits / b, b, -M)
                    if best is None or key > best[0]:
                        best = (key, (M, K, b))
    return (None if best is None else best[1]), smallest


@pytest.mark.parametrize("ratio", [4, 8, 16])
def test_compressor_ratio_targeting(rng, dtype, axis, ratio):
    m, n = 96, 64
    A = rng.standard_normal((m, n)).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    comp = AdditiveCompressor(compression_ratio=ratio, channel_axis=axis, random_state=0)
    f = comp.compress(A)
    assert f.compression_ratio >= ratio
    assert f.nbytes <= m * n * itemsize / ratio
    M, K, b = f.codebooks.shape
    assert comp.solve(A.shape, itemsize) == (M, K, b)
    assert f.nbytes == AdditiveCompressor.stored_bytes(m, n, itemsize, M, K, b, axis)
    assert f.nbytes == ref_stored_bytes(m, n, itemsize, M, K, b, axis)
    assert (M, K, b) == ref_choice(m, n, itemsize, ratio, axis)[0]
    assert rel_err(A, f) < 0.75  # a real approximation, not zeros


def test_compressor_unreachable_ratio_names_best(rng, dtype):
    m, n = 64, 32
    A = rng.standard_normal((m, n)).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    with pytest.raises(ValueError, match=r"additive: compression_ratio=500 is unreachable") as e:
        AdditiveCompressor(compression_ratio=500).compress(A)
    best = float(re.search(r"best reachable ratio is ([0-9.e+]+)", str(e.value)).group(1))
    smallest = ref_choice(m, n, itemsize, 500, 1)[1]
    ideal = m * n * itemsize / smallest
    assert ideal * (1 - 1e-5) <= best <= ideal
    f = AdditiveCompressor(compression_ratio=best, random_state=0).compress(A)
    assert f.compression_ratio >= best
    assert f.nbytes == smallest
    # No block size of (8, 4, 2) divides n = 3; too few blocks for 16 codes.
    with pytest.raises(ValueError, match="no block size"):
        AdditiveCompressor(compression_ratio=2).compress(np.ones((40, 3), dtype))
    with pytest.raises(ValueError, match="no block size"):
        AdditiveCompressor(compression_ratio=2).compress(np.ones((2, 8), dtype))


def test_compressor_deterministic(rng, dtype):
    # 4096 blocks, M = 2, K = 64: the encoder's work is large enough for two threads.
    A = rng.standard_normal((256, 64)).astype(dtype)
    kw = dict(n_codebooks=2, n_codes=64, block_size=4, n_iter=2, random_state=7)
    f1 = AdditiveCompressor(**kw, n_threads=1).compress(A)
    f2 = AdditiveCompressor(**kw, n_threads=2).compress(A)
    assert f1 == f2
    B = A[:64]
    kw = dict(n_codebooks=2, n_codes=16, block_size=4)
    g = AdditiveCompressor(**kw, random_state=np.random.default_rng(7)).compress(B)
    h = AdditiveCompressor(**kw, random_state=np.random.default_rng(7)).compress(B)
    assert g == h


def test_compressor_iterations_never_raise_error(rng, dtype, axis, monkeypatch):
    A = scaled_matrix(rng, 128, 64, axis, dtype)
    calls = []
    real = additive._refit_books

    def spy(x, w, books, codes):
        out = real(x, w, books, codes)
        calls.append((x, w, np.array(books), np.array(codes), np.array(out)))
        return out

    monkeypatch.setattr(additive, "_refit_books", spy)
    f4 = AdditiveCompressor(3, 16, 4, channel_axis=axis, n_iter=4, random_state=0).compress(A)
    assert len(calls) >= 3  # at least two iterations ran, then the final refit

    def weighted(x, w, books, codes):
        return float((w * code_errors(x, books, codes)).sum())

    chain = []
    for k, (x, w, books, codes, out) in enumerate(calls):
        if k:
            np.testing.assert_array_equal(books, calls[k - 1][4])  # the chain is unbroken
        chain += [weighted(x, w, books, codes), weighted(x, w, out, codes)]
    slack = 1 + (1e-6 if dtype == np.float32 else 1e-12)
    assert all(b <= a * slack for a, b in zip(chain, chain[1:])), chain
    assert chain[-1] < 0.98 * chain[0]  # the iterations improved on the residual start
    calls.clear()
    f0 = AdditiveCompressor(3, 16, 4, channel_axis=axis, n_iter=0, random_state=0).compress(A)
    assert len(calls) == 1
    assert rel_err(A, f4) <= rel_err(A, f0)


def test_compressor_refit_books_is_least_squares(rng):
    # Dense path (M * K <= 4096): the weighted least-squares optimum with the codes fixed.
    n, b, M, K = 300, 3, 2, 5
    x = rng.standard_normal((n, b))
    w = rng.uniform(0.1, 2.0, n)
    codes = rng.integers(0, K, size=(n, M))
    codes[codes[:, 0] == 4, 0] = 3  # codeword 4 of codebook 0 unused
    books = rng.standard_normal((M, K, b))
    out = additive._refit_books(x, w, books, codes)
    Phi = np.zeros((n, M * K))
    for t in range(M):
        Phi[np.arange(n), t * K + codes[:, t]] = 1
    sw = np.sqrt(w)[:, None]
    theta = np.linalg.lstsq(sw * Phi, sw * x, rcond=None)[0].reshape(M, K, b)

    def werr(bk):
        return float((w * code_errors(x, bk, codes)).sum())

    assert werr(out) == pytest.approx(werr(theta), rel=1e-9)
    assert werr(out) < werr(books)
    np.testing.assert_array_equal(out[0, 4], books[0, 4])
    # Block Gauss-Seidel path (M * K > 4096); with M = 1 one sweep is exact: weighted means.
    K = 4100
    x = rng.standard_normal((9000, 2))
    w = rng.uniform(0.1, 2.0, 9000)
    codes = rng.integers(0, K - 1, size=(9000, 1))  # the last codeword unused
    books = rng.standard_normal((1, K, 2))
    out = additive._refit_books(x, w, books, codes)
    for k in np.unique(codes)[[0, 17, 3000]]:  # used codewords
        sel = codes[:, 0] == k
        np.testing.assert_allclose(out[0, k], np.average(x[sel], axis=0, weights=w[sel]),
                                   rtol=1e-10)
    np.testing.assert_array_equal(out[0, K - 1], books[0, K - 1])
    codes2 = rng.integers(0, 2100, size=(9000, 2))
    books2 = rng.standard_normal((2, 2100, 2))
    out2 = additive._refit_books(x, w, books2, codes2)
    assert float((w * code_errors(x, out2, codes2)).sum()) < \
        float((w * code_errors(x, books2, codes2)).sum())


def test_compressor_block_codebook_16_bit_codes(rng, dtype):
    # 256 x 32 with b = 8: 1024 blocks, so K = 512 (at most half the blocks) is allowed.
    A = rng.standard_normal((256, 32)).astype(dtype)
    f = AdditiveCompressor(1, 512, 8, random_state=0).compress(A)
    assert f.bits == 16 and f.codes.dtype == np.uint8 and f.codes.shape == (256, 4 * 2)
    assert f.nbytes == 256 * 8 + 512 * 8 * np.dtype(dtype).itemsize + 2 * 32
    codes = ref_unpack(f.codes, 16, 4)
    assert codes.max() < 512 and codes.max() > 255  # the high codes are used
    np.testing.assert_array_equal(codes.reshape(256, 4, 1), f.unpacked_codes())
    g = AdditiveCompressor(1, 256, 8, random_state=0).compress(A)
    assert g.bits == 8 and g.codes.shape == (256, 4)
    assert rel_err(A, f) < 0.9 * rel_err(A, g)


def test_compressor_block_size_one(rng, dtype):
    # b = 1 (scalar codebooks summed): fit_codebook returns a (K,) codebook for blocks of one.
    A = rng.standard_normal((32, 16)).astype(dtype)
    f1 = AdditiveCompressor(1, 8, 1, random_state=0).compress(A)
    f2 = AdditiveCompressor(2, 8, 1, random_state=0).compress(A)
    assert f2.codebooks.shape == (2, 8, 1)
    # 3-bit scalar k-means of Gaussian values leaves about 3.5% of the energy (Lloyd-Max: 0.0345)
    assert rel_err(A, f1) < 0.22
    assert rel_err(A, f2) < 0.6 * rel_err(A, f1)


def test_compressor_matches_block_kmeans(dtype, axis):
    # With M = 1 the compressor is block k-means of the channel-normalized blocks. Its error is
    # compared with the same k-means done independently (mc.fit_codebook and scikit-learn's
    # KMeans, from single starts): channel RMS normalization, then plain blocks for axis 1 and
    # blocks weighted by their row's scale^2 for axis 0 (which makes the normalized error the
    # original one). k-means from one start varies by a few % with the seed, so the medians
    # over 5 seeds are compared.
    from sklearn.cluster import KMeans

    m, n, b, K = 128, 64, 4, 16
    A = scaled_matrix(np.random.default_rng(5), m, n, axis, dtype)
    A64 = A.astype(np.float64)
    s = np.sqrt((A64 ** 2).mean(axis=0 if axis == 1 else 1))
    S = scale_grid(s, axis)
    Z = A64 / S
    w = None if axis == 1 else np.repeat(s ** 2, n // b).reshape(m, n // b)
    mine, ours, sk = [], [], []
    for seed in range(5):
        f = AdditiveCompressor(1, K, b, channel_axis=axis, random_state=seed).compress(A)
        mine.append(np.linalg.norm(A64 - f.to_dense()))
        cb, codes, _ = mc.fit_codebook(Z, K, block_size=b, random_state=seed, sample_weight=w)
        ours.append(np.linalg.norm(A64 - cb[codes].reshape(m, n) * S))
        km = KMeans(K, n_init=1, random_state=seed).fit(
            Z.reshape(-1, b), sample_weight=None if w is None else w.reshape(-1))
        sk.append(np.linalg.norm(A64 - km.cluster_centers_[km.labels_].reshape(m, n) * S))
    mine, ours, sk = np.median(mine), np.median(ours), np.median(sk)
    assert mine <= 1.03 * ours
    assert mine <= 1.03 * sk
    # ... and not better than k-means can be: the references are sound (within a few %).
    assert mine >= 0.95 * min(ours, sk)


@pytest.fixture
def calibration(rng, dtype, axis):
    """A (64, 64), correlated inputs X = G @ L whose columns differ in scale: calibration and
    held-out draws."""
    m = 64
    A = rng.standard_normal((m, 64)).astype(dtype)
    L = rng.standard_normal((m, m)) / np.sqrt(m) * np.exp(rng.normal(size=m))[None, :]
    X = correlated_inputs(rng, 1024, m, L).astype(dtype)
    X_test = correlated_inputs(rng, 1024, m, L).astype(dtype)
    return A, X, X_test


def test_compressor_data_aware_lowers_output_error(calibration, dtype, axis):
    A, X, X_test = calibration
    kw = dict(n_codebooks=2, n_codes=16, block_size=4, channel_axis=axis, random_state=0)

    def held_out(f):
        return np.linalg.norm(X_test.astype(np.float64) @ (A - f.to_dense()))

    free = held_out(AdditiveCompressor(**kw).compress(A))
    for mode in ("diagonal", "hessian"):
        f = AdditiveCompressor(**kw, data_aware=mode).compress(A, X=X)
        assert f.dtype == dtype and f.shape == A.shape
        assert held_out(f) <= free, mode
    # damp = 0: the Hessian refit starts from the diagonal fit (same codes and scales) and
    # lowers the calibration output error trace(E^T H E).
    X64 = X.astype(np.float64)
    H = X64.T @ X64 / X.shape[0]
    fd = AdditiveCompressor(**kw, data_aware="diagonal", damp=0).compress(A, X=X)
    fh = AdditiveCompressor(**kw, data_aware="hessian", damp=0).compress(A, X=X)
    np.testing.assert_array_equal(fh.codes, fd.codes)
    np.testing.assert_array_equal(fh.scales, fd.scales)
    assert output_error(A, fh.to_dense(), H) < output_error(A, fd.to_dense(), H)


def test_hessian_refit_is_exact_and_never_raises(calibration, rng, dtype, axis):
    A, X, _ = calibration
    A = A[:, :32]
    X64 = X.astype(np.float64)[:512]
    H = X64.T @ X64 / 512
    f = AdditiveCompressor(2, 8, 4, channel_axis=axis, random_state=0).compress(A)
    g = additive._hessian_refit(A, H, f)
    np.testing.assert_array_equal(g.codes, f.codes)
    np.testing.assert_array_equal(g.scales, f.scales)
    assert g.codebooks.dtype == dtype
    before, after = output_error(A, ref_decode(f)[0], H), output_error(A, ref_decode(g)[0], H)
    assert after < before
    # The exact optimum over the codebooks (codes and scales fixed): least squares on
    # vec(R W(theta)) with H = R^T R, W linear in theta through a one-hot design.
    m, n = A.shape
    M, K, b = f.codebooks.shape
    nb = n // b
    c = ref_decode(f)[2]
    J = np.zeros((m, nb, b, M, K, b))
    rows, blocks = np.arange(m)[:, None], np.arange(nb)[None, :]
    for t in range(M):
        for e in range(b):
            J[rows, blocks, e, t, c[:, :, t], e] += 1
    J = J.reshape(m, n, M * K * b) * (scale_grid(f.scales, axis) * np.ones((m, n)))[..., None]
    R = np.linalg.cholesky(H).T
    RJ = np.einsum("ij,jcp->icp", R, J).reshape(-1, M * K * b)
    theta = np.linalg.lstsq(RJ, (R @ A.astype(np.float64)).reshape(-1), rcond=None)[0]
    best = output_error(A, J @ theta, H)
    assert after <= best * (1 + (1e-4 if dtype == np.float32 else 1e-8))
    # At the optimum (rounded to the dtype) there is nothing left to gain: the refit keeps its
    # input or improves it, judged on the stored (rounded) codebooks. Output errors are taken
    # from a float64 decoding of the stored parts.
    f_opt = AdditiveCodebook(f.codes, theta.reshape(M, K, b).astype(dtype), f.scales, n, axis)
    again = additive._hessian_refit(A, H, f_opt)
    assert output_error(A, ref_decode(again)[0], H) <= output_error(A, ref_decode(f_opt)[0], H)
    # Near the optimum, rounding decides: starts one ulp away in random directions are never
    # made worse.
    for _ in range(4):
        cb = f_opt.codebooks
        step = rng.choice([-1, 0, 1], size=cb.shape)
        start = dataclasses.replace(f_opt, codebooks=np.where(
            step > 0, np.nextafter(cb, np.inf), np.where(step < 0, np.nextafter(cb, -np.inf), cb)))
        out = additive._hessian_refit(A, H, start)
        assert output_error(A, ref_decode(out)[0], H) <= output_error(A, ref_decode(start)[0], H)


def _bad_compress_cases():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((16, 32))
    X = rng.standard_normal((10, 16))
    nan_a = A.copy()
    nan_a[3, 4] = np.nan
    nan_x = X.copy()
    nan_x[0, 0] = np.inf
    ok = dict(n_codebooks=2, n_codes=8, block_size=4)

    def case(params, args, exc, match):
        return (params, args, exc, match)

    return [
        case(ok, dict(A=A, X=X[:, :15]), ValueError, "X must have one column per row"),
        case(ok, dict(A=A, X=X[:0]), ValueError, "X has no rows"),
        case(ok, dict(A=nan_a), ValueError, "A"),
        case(ok, dict(A=A, X=nan_x), ValueError, "X"),
        case(ok, dict(A=A[0]), ValueError, "A must be 2-D"),
        case(ok, dict(A=A.astype(complex)), TypeError, "A must be real"),
        case(dict(ok, n_codes=65), dict(A=A), ValueError,
             r"n_codes must be <= 64 \(16 bits, and half the 128 blocks\)"),
        case(dict(ok, n_codes=1), dict(A=A), ValueError, "n_codes must be >= 2"),
        case(dict(ok, block_size=5), dict(A=A), ValueError, "block_size=5 must divide n=32"),
        case(dict(ok, block_size=0), dict(A=A), ValueError, "block_size must be >= 1"),
        case(dict(n_codes=8), dict(A=A[:, :12]), ValueError, "give block_size"),
        case(dict(ok, n_codebooks=0), dict(A=A), ValueError, "n_codebooks must be >= 1"),
        case(dict(ok, n_codebooks=17), dict(A=A), ValueError, "n_codebooks must be <= 16"),
        case(dict(n_codebooks=2), dict(A=A), ValueError, "exactly one of n_codes"),
        case(dict(ok, compression_ratio=4), dict(A=A), ValueError, "exactly one of n_codes"),
        case(dict(compression_ratio=1), dict(A=A), ValueError, "compression_ratio must be > 1"),
        case(dict(ok, data_aware="full"), dict(A=A), ValueError, "data_aware"),
        case(dict(ok, channel_axis=2), dict(A=A), ValueError, "channel_axis"),
        case(dict(ok, beam_size=0), dict(A=A), ValueError, "beam_size"),
        case(dict(ok, beam_size=65), dict(A=A), ValueError, "beam_size"),
        case(dict(ok, n_iter=-1), dict(A=A), ValueError, "n_iter"),
        case(dict(ok, max_iter=0), dict(A=A), ValueError, "max_iter"),
        case(dict(ok, damp=-0.1), dict(A=A), ValueError, "damp"),
        case(dict(ok, max_fit_points=0), dict(A=A), ValueError, "max_fit_points"),
        case(dict(ok, n_threads=0), dict(A=A), ValueError, "n_threads"),
        case(dict(ok, n_codes=8.0), dict(A=A), TypeError, "n_codes"),
    ]


@pytest.mark.parametrize("params,args,exc,match", _bad_compress_cases())
def test_compressor_bad_inputs(params, args, exc, match):
    with pytest.raises(exc, match=match):
        AdditiveCompressor(**params).compress(**args)


def test_compressor_inputs_never_modified(rng, dtype, axis):
    A = scaled_matrix(rng, 64, 32, axis, dtype)
    X = rng.standard_normal((50, 64)).astype(dtype)
    A0, X0 = A.copy(), X.copy()
    A.setflags(write=False)
    X.setflags(write=False)
    kw = dict(n_codebooks=2, n_codes=16, block_size=4, channel_axis=axis, random_state=0)
    f = AdditiveCompressor(**kw).compress(A, X=X)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(X, X0)
    # A Fortran-ordered copy gives the same result.
    g = AdditiveCompressor(**kw).compress(np.asfortranarray(A0), X=np.asfortranarray(X0))
    assert f == g


def test_compressor_registry_config_and_sampling(rng, dtype):
    A = rng.standard_normal((128, 64)).astype(dtype)
    f = mc.compress(A, "additive", compression_ratio=8, random_state=0)
    comp = AdditiveCompressor(compression_ratio=8, random_state=0)
    again = mc.compressors.MatrixCompressor.from_config(comp.get_config())
    assert type(again) is AdditiveCompressor and again.compress(A) == f
    # Codebooks fitted on a seeded sample of rows (512 of the 2048 blocks); every block coded.
    kw = dict(n_codebooks=2, n_codes=16, block_size=4, random_state=0)
    full = AdditiveCompressor(**kw).compress(A)
    part = AdditiveCompressor(**kw, max_fit_points=512).compress(A)
    assert part == AdditiveCompressor(**kw, max_fit_points=512).compress(A)
    assert rel_err(A, part) <= 1.15 * rel_err(A, full)
    per_row = np.linalg.norm(A - part.to_dense(), axis=1) / np.linalg.norm(A, axis=1)
    assert per_row.max() < 2.5 * np.median(per_row)


@pytest.mark.parametrize("power", [-100, 100])
def test_compressor_extreme_magnitudes(rng, dtype, power):
    # 2^100 ~ 1e30 in float32: the codebooks hold the weights' magnitude, whose squares overflow
    # float32 inside the encoder unless it rescales.
    A = rng.standard_normal((64, 32))
    kw = dict(n_codebooks=2, n_codes=8, block_size=4, random_state=0)
    ref = rel_err(A, AdditiveCompressor(**kw).compress(A))
    f = AdditiveCompressor(**kw).compress(np.ldexp(A, power).astype(dtype))
    assert np.all(np.isfinite(f.codebooks))
    err = np.linalg.norm(np.ldexp(f.to_dense().astype(np.float64), -power) - A) / np.linalg.norm(A)
    assert err == pytest.approx(ref, rel=1e-3)


def test_compressor_degenerate_matrices(dtype, axis):
    zeros = np.zeros((32, 16), dtype)
    f = AdditiveCompressor(2, 8, 4, channel_axis=axis, random_state=0).compress(zeros)
    np.testing.assert_array_equal(f.to_dense(), zeros)
    ones = np.ones((32, 16), dtype)
    f = AdditiveCompressor(2, 8, 4, channel_axis=axis, random_state=0).compress(ones)
    np.testing.assert_allclose(f.to_dense(), ones, rtol=1e-3)
    A = np.random.default_rng(3).standard_normal((32, 16)).astype(dtype)
    A[:, 5] = 0
    A[7] = 0
    f = AdditiveCompressor(2, 8, 4, channel_axis=axis, random_state=0).compress(A)
    if axis == 1:
        np.testing.assert_array_equal(f.to_dense()[:, 5], 0)
    else:
        np.testing.assert_array_equal(f.to_dense()[7], 0)
    assert rel_err(A, f) < 0.6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ordered", [False, True])
def test_encode_returns_the_beam_residuals(dtype, ordered):
    """return_beam: slot 0 is the chosen codes' residual; every other slot is x minus some
    other full hypothesis, so no slot beats the best error."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 4)).astype(dtype)
    books = (rng.standard_normal((3, 8, 4)) * [[[1.0]], [[0.5]], [[0.25]]]).astype(dtype)
    codes, err, res = additive.additive_encode(X, books, beam_size=5, ordered=ordered,
                                               return_beam=True)
    assert res.shape == (300, 5, 4) and res.dtype == dtype
    decoded = sum(books[t][codes[:, t]].astype(np.float64) for t in range(3))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(res[:, 0], X - decoded, atol=tol)
    norms = np.einsum("ijk,ijk->ij", res.astype(np.float64), res.astype(np.float64))
    assert np.all(norms >= err[:, None] * (1 - 1e-5) - tol)
    # each residual is x minus a sum of one codeword per codebook: check by brute force
    sums = (books[0][:, None, None] + books[1][None, :, None] + books[2][None, None, :])
    sums = sums.reshape(-1, 4).astype(np.float64)
    for i in range(0, 300, 37):
        for q in range(5):
            gap = np.abs((X[i] - res[i, q])[None, :] - sums).max(axis=1).min()
            assert gap < 1e-4 if dtype == np.float32 else gap < 1e-10


def test_gptq_route_is_judged_on_held_out_rows():
    """With 2 calibration rows per input, GPTQ's codes fit the noise of H; the route is
    judged on rows held out of its fit, so the result generalizes at least as well as the
    diagonal fit and clearly better than GPTQ taken on the calibration error alone."""
    from matcompress.benchmark.quality import synthetic_inputs, synthetic_matrix

    W = synthetic_matrix("student_t", 256, 128, 0)
    cal = synthetic_inputs(256, 512, 1)
    held = synthetic_inputs(256, 4096 + 512, 1)[512:]

    def out(f):
        return np.linalg.norm(held @ (W - f.to_dense())) / np.linalg.norm(held @ W)

    diag = AdditiveCompressor(2, 16, 4, random_state=0, data_aware="diagonal").compress(W, X=cal)
    gptq = AdditiveCompressor(2, 16, 4, random_state=0, data_aware="gptq").compress(W, X=cal)
    H, _ = additive._moments(cal, 0.01, False)
    unguarded = additive._hessian_refit(W, H, additive._gptq_codes(W, H, diag, 8, None))
    assert out(gptq) <= out(diag) * 1.001
    assert out(gptq) < out(unguarded) * 0.95
