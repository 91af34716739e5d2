"""Scaled codebooks (matcompress.quant): dense bit packing, the ScaledCodebook factorization and
ScaledKMeansCompressor.

References: bit packing against a bit string built code by code with ``np.packbits``; every
dense form against a reconstruction from the fields written here with ``np.indices`` (W[i, j] =
float(scale) * codebook value, one rounding: equal bit for bit); products against numpy on that
reconstruction, with a bound ``tol * (|x| @ |W|)`` per output (tol 1e-5 for float32: sums of up to
a few hundred products; 1e-12 for float64); gradients against the same products and against
central finite differences of a float64 loss built from the fields. Errors of the compressor
against plain k-means (``KMeansCompressor`` with as many codes).
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import matcompress as mc
import matcompress.quant as quant
from matcompress.factors import load
from matcompress.quant import (BIT_WIDTHS, ScaledCodebook, ScaledKMeansCompressor, code_bits,
                               pack_bits, unpack_bits)

_PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# ---------------------------------------------------------------------------------------------
# pack_bits / unpack_bits
# ---------------------------------------------------------------------------------------------

def _reference_pack(codes, bits):
    """Each row's bit string written code by code (low bit first), then np.packbits."""
    codes = np.asarray(codes)
    lead, n = codes.shape[:-1], codes.shape[-1]
    flat = codes.reshape(math.prod(lead), n).astype(np.int64)
    width = (n * bits + 7) // 8
    out = np.zeros((flat.shape[0], width), np.uint8)
    for r, row in enumerate(flat):
        string = np.zeros(width * 8, np.uint8)
        for j, c in enumerate(row):
            for t in range(bits):
                string[j * bits + t] = (int(c) >> t) & 1
        out[r] = np.packbits(string, bitorder="little")
    return out.reshape(lead + (width,))


@_PROPERTY
@given(bits=st.sampled_from(BIT_WIDTHS), lead=st.sampled_from([(), (1,), (3,), (2, 3)]),
       n=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
def test_pack_bits_round_trip_and_layout(bits, lead, n, seed):
    rng = np.random.default_rng(seed)
    dtype = rng.choice([np.uint8, np.int32, np.int64]) if bits <= 8 else \
        rng.choice([np.uint16, np.int64])
    codes = rng.integers(0, 1 << bits, size=lead + (n,)).astype(dtype)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == lead + ((n * bits + 7) // 8,)
    assert_array_equal(packed, _reference_pack(codes, bits))
    back = unpack_bits(packed, bits, n)
    assert back.dtype == (np.uint16 if bits == 16 else np.uint8)
    assert_array_equal(back, codes)


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_pack_bits_extremes_and_large_rows(bits):
    rng = np.random.default_rng(bits)
    top = (1 << bits) - 1
    codes = np.full((3, 1001), top, np.int64)
    codes[1] = 0
    codes[2] = rng.integers(0, top + 1, 1001)
    packed = pack_bits(codes, bits)
    assert_array_equal(unpack_bits(packed, bits, 1001), codes)
    used = (1001 * bits) % 8
    if used:  # the unused bits of the last byte are 0
        assert int(packed[:, -1].max()) >> used == 0
    # many rows (several blocks of the vectorized loop): the same as row by row
    many = rng.integers(0, top + 1, (5000, 300))
    packed = pack_bits(many, bits)
    assert_array_equal(packed[::997], np.stack([pack_bits(r, bits) for r in many[::997]]))
    assert_array_equal(unpack_bits(packed, bits, 300), many)


def test_pack_bits_errors():
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_bits([1, 2], 9)
    with pytest.raises(ValueError, match="bits must be >= 1"):
        pack_bits([1, 2], 0)
    with pytest.raises(TypeError, match="bits must be an integer"):
        pack_bits([1, 2], 2.0)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        pack_bits([1, 4], 2)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 8\)"):
        pack_bits([-1, 4], 3)
    with pytest.raises(TypeError, match="codes must be integers"):
        pack_bits([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="at least one axis"):
        pack_bits(np.int64(3), 2)
    with pytest.raises(ValueError, match="n=5 codes of 3 bits take 2 bytes"):
        unpack_bits(np.zeros((2, 3), np.uint8), 3, 5)
    with pytest.raises(TypeError, match="packed must be uint8"):
        unpack_bits(np.zeros((2, 2), np.int16), 3, 5)
    with pytest.raises(ValueError, match="bits must be one of"):
        unpack_bits(np.zeros((2, 2), np.uint8), 12, 1)


def test_code_bits():
    assert [code_bits(k) for k in (1, 2, 3, 4, 5, 8, 9, 16, 17, 128, 129, 256, 257, 65536)] == \
        [1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="n_codes must be <= 65536"):
        code_bits(65537)
    with pytest.raises(ValueError, match="n_codes must be >= 1"):
        code_bits(0)


# ---------------------------------------------------------------------------------------------
# ScaledCodebook
# ---------------------------------------------------------------------------------------------

def make_scaled(rng, m, n, dtype, *, n_codes=6, gs=None, axis=1, n_books=1):
    """(factorization, codes, codebook, scales) with random fields."""
    span = m if axis == 1 else n
    gs = span if gs is None else gs
    gs_eff = min(gs, span)
    shape = (-(-m // gs_eff), n) if axis == 1 else (m, -(-n // gs_eff))
    scales = rng.lognormal(0, 1, shape).astype(np.float16) * rng.choice([-1, 1], shape)
    codebook = rng.standard_normal((n_books, n_codes)).astype(dtype)
    codes = rng.integers(0, n_codes, (m, n))
    f = ScaledCodebook(pack_bits(codes, code_bits(n_codes)), codebook, scales.astype(np.float16),
                       n, gs, axis)
    return f, codes, codebook, scales.astype(np.float16)


def reference_dense(codes, codebook, scales, gs, axis, dtype=None):
    """W from the fields, written out with np.indices (in ``dtype``, default the codebook's)."""
    m, n = codes.shape
    dtype = codebook.dtype if dtype is None else dtype
    n_books = codebook.shape[0]
    i, j = np.indices((m, n))
    channel = j if axis == 1 else i
    run = -(-(n if axis == 1 else m) // n_books)
    book = channel // run
    span = m if axis == 1 else n
    gs = min(gs, span)
    s = scales.astype(dtype)[i // gs, j] if axis == 1 else scales.astype(dtype)[i, j // gs]
    return s * codebook.astype(dtype)[book, codes]


CASES = {
    "cols_one_group": dict(m=37, n=23),
    "cols_groups": dict(m=37, n=23, gs=8, n_codes=5),
    "cols_groups_books": dict(m=40, n=23, gs=7, n_codes=3, n_books=4),
    "cols_group_of_1": dict(m=9, n=11, gs=1, n_codes=2),
    "cols_1bit": dict(m=30, n=17, gs=16, n_codes=1),
    "cols_8bit": dict(m=20, n=13, gs=6, n_codes=256, n_books=2),
    "cols_16bit": dict(m=12, n=9, gs=5, n_codes=300),
    "rows_one_group": dict(m=29, n=19, axis=0),
    "rows_groups": dict(m=29, n=19, gs=4, axis=0, n_codes=7),
    "rows_groups_books": dict(m=29, n=19, gs=6, axis=0, n_codes=16, n_books=3),
    "rows_gs_beyond_n": dict(m=8, n=5, gs=64, axis=0, n_codes=33),
}


@pytest.fixture(params=[None, 7, 64], ids=["one_tile", "tiles_7", "tiles_64"])
def tile(request, monkeypatch):
    """The products' tile of decoded weights: the default, and tiles of a few rows (boundaries
    inside groups: 7 values is one row of tiles for n >= 7)."""
    if request.param is not None:
        monkeypatch.setattr(quant, "_TILE_VALUES", request.param)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_forms_equal_the_reconstruction(case, dtype, rng, tile):
    params = dict(CASES[case])
    m, n = params.pop("m"), params.pop("n")
    f, codes, codebook, scales = make_scaled(rng, m, n, dtype, **params)
    ref = reference_dense(codes, codebook, scales, f.group_size, f.channel_axis)
    assert f.shape == (m, n) and f.dtype == dtype
    assert_array_equal(f.to_dense(), ref)
    assert f.to_dense().dtype == dtype
    assert_array_equal(f.dense_rows(3, m - 1), ref[3:m - 1])
    assert_array_equal(f.unpacked_codes(), codes)
    # stored bytes counted from the shapes
    bits = code_bits(codebook.shape[1])
    assert f.nbytes == m * ((n * bits + 7) // 8) + codebook.size * dtype.itemsize + \
        2 * scales.size
    assert f.compression_ratio == m * n * dtype.itemsize / f.nbytes


@pytest.mark.parametrize("case", sorted(CASES))
def test_matmul_and_backward_match_numpy(case, dtype, rng, tile):
    params = dict(CASES[case])
    m, n = params.pop("m"), params.pop("n")
    f, codes, codebook, scales = make_scaled(rng, m, n, dtype, **params)
    W = reference_dense(codes, codebook, scales, f.group_size, f.channel_axis, np.float64)
    x = rng.standard_normal((2, 3, m)).astype(dtype)
    dy = rng.standard_normal((2, 3, n)).astype(dtype)
    tol = _TOL[dtype]
    y = f.matmul(x)
    assert y.dtype == dtype and y.shape == (2, 3, n)
    ref = x.astype(np.float64) @ W
    assert np.all(np.abs(y - ref) <= tol * (np.abs(x) @ np.abs(W)) + 1e-300)
    assert_array_equal(x @ f, y)  # __rmatmul__
    dx, grads = f.matmul_backward(x, dy)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert np.all(np.abs(dx - dy @ W.T) <= tol * (np.abs(dy) @ np.abs(W.T)) + 1e-300)
    # gradients: dL/dW = x^T dy, gathered onto the codebook entries and the scales
    x2, dy2 = x.reshape(-1, m).astype(np.float64), dy.reshape(-1, n).astype(np.float64)
    G, Gabs = x2.T @ dy2, np.abs(x2).T @ np.abs(dy2)
    i, j = np.indices((m, n))
    run = -(-(n if f.channel_axis == 1 else m) // f.n_books)
    book = (j if f.channel_axis == 1 else i) // run
    gs = f.group_size
    gi, gj = (i // gs, j) if f.channel_axis == 1 else (i, j // gs)
    s = scales.astype(np.float64)[gi, gj]
    c = codebook.astype(np.float64)[book, codes]
    dcb, dcb_bound = np.zeros(codebook.shape), np.zeros(codebook.shape)
    np.add.at(dcb, (book, codes), G * s)
    np.add.at(dcb_bound, (book, codes), Gabs * np.abs(s))
    dsc, dsc_bound = np.zeros(scales.shape), np.zeros(scales.shape)
    np.add.at(dsc, (gi, gj), G * c)
    np.add.at(dsc_bound, (gi, gj), Gabs * np.abs(c))
    assert sorted(grads) == ["codebook", "scales"]
    assert grads["codebook"].dtype == dtype and grads["codebook"].shape == codebook.shape
    assert grads["scales"].dtype == dtype and grads["scales"].shape == scales.shape
    assert np.all(np.abs(grads["codebook"] - dcb) <= 2 * tol * dcb_bound + 1e-300)
    assert np.all(np.abs(grads["scales"] - dsc) <= 2 * tol * dsc_bound + 1e-300)
    dx2, none = f.matmul_backward(x, dy, need_grads=False)
    assert_array_equal(dx2, dx) and none == {}
    nodx, grads2 = f.matmul_backward(x, dy, need_dx=False)
    assert nodx is None
    assert_array_equal(grads2["scales"], grads["scales"])


def test_gradients_match_finite_differences(rng):
    """float64: L = sum(dy * (x @ W(codebook, scales))) with W built from the fields as real
    numbers; central differences of L (exact up to rounding: L is linear in each field)."""
    f, codes, codebook, scales = make_scaled(rng, 11, 7, np.float64, n_codes=4, gs=3, n_books=2)
    x, dy = rng.standard_normal((4, 11)), rng.standard_normal((4, 7))
    _, grads = f.matmul_backward(x, dy)

    def loss(cb, sc):
        i, j = np.indices((11, 7))
        W = sc[i // 3, j] * cb[j // 4, codes]
        return float(np.sum(dy * (x @ W)))

    cb, sc = codebook.astype(np.float64), scales.astype(np.float64)
    h = 1e-3
    for idx in np.ndindex(cb.shape):
        e = np.zeros(cb.shape)
        e[idx] = h
        fd = (loss(cb + e, sc) - loss(cb - e, sc)) / (2 * h)
        assert abs(grads["codebook"][idx] - fd) <= 1e-8 * (1 + abs(fd))
    for idx in np.ndindex(sc.shape):
        e = np.zeros(sc.shape)
        e[idx] = h
        fd = (loss(cb, sc + e) - loss(cb, sc - e)) / (2 * h)
        assert abs(grads["scales"][idx] - fd) <= 1e-8 * (1 + abs(fd))


def test_float32_factorization_float64_input(rng):
    f, codes, codebook, scales = make_scaled(rng, 15, 6, np.float32, gs=4)
    W = reference_dense(codes, codebook, scales, 4, 1, np.float64)
    x = rng.standard_normal((3, 15))
    y = f.matmul(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, x @ W, rtol=1e-12, atol=1e-12)
    _, grads = f.matmul_backward(x, np.ones((3, 6)))
    assert grads["scales"].dtype == np.float64 and grads["codebook"].dtype == np.float32


@pytest.mark.parametrize("case", ["cols_groups_books", "rows_groups", "cols_16bit"])
def test_save_load_round_trip(case, dtype, rng, tmp_path):
    params = dict(CASES[case])
    m, n = params.pop("m"), params.pop("n")
    f = make_scaled(rng, m, n, dtype, **params)[0]
    f.save(tmp_path / "f.npz")
    g = load(tmp_path / "f.npz")
    assert type(g) is ScaledCodebook and g == f
    assert (g.group_size, g.channel_axis, g.n_cols) == (f.group_size, f.channel_axis, f.n_cols)
    assert_array_equal(g.to_dense(), f.to_dense())
    assert g.scales.dtype == np.float16 and g.nbytes == f.nbytes


def test_archive_round_trip(rng, tmp_path):
    from matcompress import archive

    f = make_scaled(rng, 20, 9, np.float32, gs=8, axis=0, n_codes=9)[0]
    archive.save_many(tmp_path / "a.npz", {"layer": f})
    g = archive.load_many(tmp_path / "a.npz")["layer"]
    assert g == f


def test_fields_are_read_only_copies(rng):
    codes = pack_bits(rng.integers(0, 4, (6, 5)), 2)
    scales = np.ones((1, 5), np.float16)
    f = ScaledCodebook(codes, np.array([[0.0, 1, 2, 3]]), scales, 5, 6)
    scales[0, 0] = 7
    codes[0, 0] = 0
    assert f.scales[0, 0] == 1 and not f.scales.flags.writeable and not f.codes.flags.writeable
    assert f.group_size == 6 and f.bits == 2 and f.n_codes == 4 and f.n_books == 1


def test_validation():
    codes = pack_bits(np.zeros((6, 5), int), 3)  # 5 codes -> 3 bits
    cb = np.arange(5.0)[None, :]
    s = np.ones((2, 5), np.float16)
    ScaledCodebook(codes, cb, s, 5, 3)  # valid
    with pytest.raises(TypeError, match="scales must be float16"):
        ScaledCodebook(codes, cb, s.astype(np.float32), 5, 3)
    with pytest.raises(ValueError, match=r"scales must have shape \(2, 5\)"):
        ScaledCodebook(codes, cb, np.ones((3, 5), np.float16), 5, 3)
    with pytest.raises(ValueError, match=r"scales must have shape \(6, 2\)"):
        ScaledCodebook(codes, cb, s, 5, 3, channel_axis=0)
    with pytest.raises(ValueError, match="scales contain NaN"):
        ScaledCodebook(codes, cb, np.full((2, 5), np.nan, np.float16), 5, 3)
    with pytest.raises(ValueError, match="codebook contains NaN"):
        ScaledCodebook(codes, np.array([[0, 1, 2, 3, np.inf]]), s, 5, 3)
    with pytest.raises(TypeError, match="codebook must be float32 or float64"):
        ScaledCodebook(codes, np.arange(5)[None, :], s, 5, 3)
    with pytest.raises(ValueError, match="codebook must be 2-D"):
        ScaledCodebook(codes, np.arange(5.0), s, 5, 3)
    with pytest.raises(ValueError, match=r"1 bytes per row \(n = 5, 1-bit codes for 2 codes\)"):
        ScaledCodebook(codes, np.arange(2.0)[None, :], s, 5, 3)
    with pytest.raises(TypeError, match="codes must be a 2-D uint8"):
        ScaledCodebook(codes.astype(np.int16), cb, s, 5, 3)
    bad = codes.copy()
    bad[2, 0] = 6  # code 6 >= 5 codes
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\); got 6"):
        ScaledCodebook(bad, cb, s, 5, 3)
    bad = codes.copy()
    bad[1, -1] = 0x80  # 15 bits used: the 16th must be 0
    with pytest.raises(ValueError, match="unused high bits"):
        ScaledCodebook(bad, cb, s, 5, 3)
    with pytest.raises(ValueError, match="channel_axis must be 0"):
        ScaledCodebook(codes, cb, s, 5, 3, channel_axis=2)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        ScaledCodebook(codes, cb, s, 5, 0)
    with pytest.raises(ValueError, match="n_books=6 exceeds the number of channels, 5"):
        ScaledCodebook(codes, np.zeros((6, 5)), s, 5, 3)
    with pytest.raises(ValueError, match="at most 65536 codes"):
        ScaledCodebook(np.zeros((6, 10), np.uint8), np.zeros((1, 65537)), s, 5, 3)


# ---------------------------------------------------------------------------------------------
# ScaledKMeansCompressor
# ---------------------------------------------------------------------------------------------

def scaled_columns(rng, m, n, dtype=np.float64, sigma=1.0):
    """Gaussian weights with lognormal(0, sigma) column scales (outputs of very different
    magnitude, as trained layers have)."""
    return (rng.standard_normal((m, n)) * rng.lognormal(0, sigma, n)).astype(dtype)


def relative_error(W, f, X=None):
    D = W.astype(np.float64) - f.to_dense()
    if X is None:
        return np.linalg.norm(D) / np.linalg.norm(W)
    return np.linalg.norm(X @ D) / np.linalg.norm(X @ W)


def assert_nearest_codes(W, f, h=None):
    """Every weight is coded by its nearest codebook entry given its stored scale."""
    W = W.astype(np.float64)
    m, n = W.shape
    codes = f.unpacked_codes()
    D = f.to_dense().astype(np.float64)
    S = reference_dense(np.zeros((m, n), int), np.ones((f.n_books, 1), f.dtype), f.scales,
                        f.group_size, f.channel_axis, np.float64)
    i, j = np.indices((m, n))
    run = -(-(n if f.channel_axis == 1 else m) // f.n_books)
    book = (j if f.channel_axis == 1 else i) // run
    cb = f.codebook.astype(np.float64)
    best = np.min(np.abs(W[..., None] - S[..., None] * cb[book]), axis=-1)
    assert codes.max() < f.n_codes
    assert np.all(np.abs(W - D) <= best * (1 + 1e-6) + 1e-6 * np.abs(S * cb.max()))


@pytest.mark.parametrize("n_codes", [4, 16])
def test_beats_plain_kmeans_on_scaled_columns(rng, n_codes):
    W = scaled_columns(rng, 128, 64)
    f = ScaledKMeansCompressor(n_codes, random_state=0).compress(W)
    plain = mc.compress(W, "kmeans", n_codes=n_codes, random_state=0)
    ours, theirs = relative_error(W, f), relative_error(W, plain)
    # measured: 0.34 vs 0.53 (4 codes), 0.086 vs 0.152 (16 codes): 0.57 to 0.68 of the error
    assert ours <= 0.75 * theirs, (ours, theirs)
    assert f.bits == code_bits(n_codes) and f.scales.shape == (1, 64)
    assert_nearest_codes(W, f)


def test_per_channel_scales_make_the_error_scale_free(rng):
    """Columns scaled by 10^-4 .. 10^4: every column keeps about the relative error of a
    standard normal one (the scale removes the magnitude; float16 scales relative to the
    largest span 2^12 down to 2^-24)."""
    W = rng.standard_normal((256, 12)) * np.logspace(-4, 4, 12)
    f = ScaledKMeansCompressor(8, random_state=0).compress(W)
    col = np.linalg.norm(W - f.to_dense(), axis=0) / np.linalg.norm(W, axis=0)
    assert col.max() < 0.25, col  # 3-bit Gaussian optimum: 0.186


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_extreme_magnitudes(rng, magnitude):
    """Scales are stored relative to a power of two of the largest: weights far outside
    float16's range are quantized as well as unit ones."""
    W = scaled_columns(rng, 64, 16)
    base = relative_error(W, ScaledKMeansCompressor(8, random_state=0).compress(W))
    f = ScaledKMeansCompressor(8, random_state=0).compress(W * magnitude)
    assert abs(relative_error(W * magnitude, f) - base) < 0.01 * base


def test_data_aware_fit_lowers_the_output_error(rng):
    W = scaled_columns(rng, 96, 40)
    X = rng.standard_normal((300, 96)) * rng.lognormal(0, 1.5, 96)  # anisotropic inputs
    for n_codes in (4, 8):
        free = ScaledKMeansCompressor(n_codes, random_state=0).compress(W)
        aware = ScaledKMeansCompressor(n_codes, random_state=0,
                                       data_aware="diagonal").compress(W, X=X)
        e_free, e_aware = relative_error(W, free, X), relative_error(W, aware, X)
        # measured: 0.37 -> 0.29 (2 bits), 0.21 -> 0.15 (3 bits)
        assert e_aware <= 0.9 * e_free, (n_codes, e_free, e_aware)
        assert_nearest_codes(W, aware)
        # GPTQ codes (the default) on the same fit: never a higher output error
        gptq = ScaledKMeansCompressor(n_codes, random_state=0).compress(W, X=X)
        assert relative_error(W, gptq, X) <= e_aware


def test_refits_never_increase_the_error(rng):
    """The objective (sum h_i (W - What)_ij^2, h from X's second moments damped by 1 % of their
    mean) never increases with more alternations; without X, the Frobenius error. (The exact
    ||X (W - What)|| may: measured 375.72 after 2 refits, 375.75 after 3 with groups of 16.)"""
    W = scaled_columns(rng, 80, 48)
    X = rng.standard_normal((50, 80)) * rng.lognormal(0, 1, 80)
    h = np.mean(X * X, axis=0)
    h += 0.01 * h.mean()
    for kwargs in (dict(), dict(group_size=16), dict(channel_axis=0, group_size=8)):
        for x in (None, X):
            errors = []
            for n_refits in range(4):
                f = ScaledKMeansCompressor(4, n_refits=n_refits, random_state=3,
                                           data_aware="diagonal", **kwargs).compress(W, X=x)
                D = W - f.to_dense()
                errors.append(np.sum((1.0 if x is None else h[:, None]) * D * D))
            assert all(b <= a for a, b in zip(errors, errors[1:])), errors
            assert errors[-1] < errors[0]  # measured: 1.5 % to 28 % lower


@pytest.mark.parametrize("ratio", [2, 4, 8, 16])
@pytest.mark.parametrize("axis", [1, 0])
def test_compression_ratio_is_met_by_the_best_configuration(ratio, axis, dtype, rng):
    m, n = 200, 136
    W = scaled_columns(rng, m, n, dtype) if axis == 1 else scaled_columns(rng, n, m, dtype).T
    c = ScaledKMeansCompressor(compression_ratio=ratio, channel_axis=axis, random_state=0)
    f = c.compress(W)
    assert f.nbytes <= m * n * dtype.itemsize / ratio and f.compression_ratio >= ratio
    n_codes, gs, n_books = c.solve(W.shape, dtype.itemsize)
    assert (f.n_codes, f.group_size, f.n_books) == (n_codes, gs, 1)
    assert n_codes == 1 << f.bits
    span = m if axis == 1 else n
    sizes = [g for g in (32, 64, 128, 256, 512, 1024) if g < span] + [span]
    stored = ScaledKMeansCompressor.stored_bytes
    budget = m * n * dtype.itemsize / ratio
    # no configuration with more bits fits, nor a finer group with as many bits
    if f.bits < 8:
        assert stored(m, n, dtype.itemsize, 2 * n_codes, span, axis) > budget
    assert all(stored(m, n, dtype.itemsize, n_codes, g, axis) > budget for g in sizes if g < gs)
    assert f.to_dense().dtype == dtype
    assert relative_error(W, f) < {1: 0.62, 2: 0.36, 3: 0.2}.get(f.bits, 0.1)


def test_compress_through_the_registry(rng):
    W = scaled_columns(rng, 64, 32, np.float32)
    f = mc.compress(W, "scaled_kmeans", compression_ratio=8, random_state=0)
    assert type(f) is ScaledCodebook and f.compression_ratio >= 8
    c = mc.compressors.get("scaled_kmeans", n_codes=4, group_size=16, channel_axis=0)
    assert isinstance(c, ScaledKMeansCompressor) and ScaledKMeansCompressor.uses_inputs
    again = mc.compressors.MatrixCompressor.from_config(c.get_config())
    assert again == c and again.get_config()["config"]["group_size"] == 16


def test_reproducible(rng):
    W = scaled_columns(rng, 60, 30)
    for kwargs in (dict(n_codes=8), dict(compression_ratio=6, channel_axis=0),
                   dict(n_codes=16, max_fit_points=500, n_books=2)):
        a = ScaledKMeansCompressor(random_state=7, **kwargs).compress(W)
        b = ScaledKMeansCompressor(random_state=7, **kwargs).compress(W)
        assert a == b
    assert W.flags.writeable  # input untouched (copied fields)


@pytest.mark.parametrize("axis", [1, 0])
def test_large_matrix_path_samples_and_codes_in_chunks(axis, rng, tmp_path):
    """Past max_fit_points the codebook is fitted to a sample of rows; every row is still coded
    to its nearest entry, the error is close to the whole fit's, and the result does not depend
    on the chunk size (a memory-mapped input works)."""
    W = scaled_columns(rng, 600, 24, np.float32)
    np.save(tmp_path / "w.npy", W)
    mapped = np.load(tmp_path / "w.npy", mmap_mode="r")
    gs = 50 if axis == 1 else 8
    whole = ScaledKMeansCompressor(16, group_size=gs, channel_axis=axis,
                                   random_state=0).compress(W)
    parts = [ScaledKMeansCompressor(16, group_size=gs, channel_axis=axis, n_books=3,
                                    max_fit_points=2000, chunk_rows=rows,
                                    random_state=0).compress(mapped) for rows in (1, 37, 600)]
    for f in parts:
        assert_nearest_codes(W, f)
        assert relative_error(W, f) < 1.1 * relative_error(W, whole)
    if axis == 0:  # groups within rows: the chunks see exactly the same sums
        assert parts[0] == parts[1] == parts[2]
    else:
        np.testing.assert_allclose(parts[0].to_dense(), parts[2].to_dense(), rtol=0, atol=0.05)


@_PROPERTY
@given(m=st.integers(1, 40), n=st.integers(1, 30), n_codes=st.integers(1, 40),
       gs=st.integers(1, 50), axis=st.sampled_from([0, 1]), n_books=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
# one scale per weight: three codebook entries within 1e-4 of each other (relative), which a
# distance kernel (|v|^2 - 2 v c + |c|^2 in float32) once told apart wrongly
@example(m=1, n=3, n_codes=3, gs=1, axis=0, n_books=1, dtype=np.float32, seed=0)
def test_random_shapes_and_parameters(m, n, n_codes, gs, axis, n_books, dtype, seed):
    rng = np.random.default_rng(seed)
    n_books = min(n_books, n if axis == 1 else m)
    W = scaled_columns(rng, m, n, dtype)
    f = ScaledKMeansCompressor(n_codes, group_size=gs, channel_axis=axis, n_books=n_books,
                               n_refits=1, random_state=0).compress(W)
    assert f.shape == (m, n) and f.dtype == dtype and f.n_codes == n_codes
    assert f.group_size == min(gs, m if axis == 1 else n) and f.n_books == n_books
    assert f.nbytes == ScaledKMeansCompressor.stored_bytes(m, n, np.dtype(dtype).itemsize,
                                                           n_codes, gs, axis, n_books)
    assert_nearest_codes(W, f)
    assert relative_error(W, f) <= 1.0 + 1e-3  # never worse than the zero matrix (+ rounding)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_codes_among_many_close_entries(dtype, rng):
    """16-bit codes (4096 entries, spaced ~1e-3 of the largest value): still the nearest."""
    W = scaled_columns(rng, 300, 40, dtype)
    f = ScaledKMeansCompressor(4096, n_refits=1, random_state=0).compress(W)
    assert f.bits == 16
    assert_nearest_codes(W, f)
    assert relative_error(W, f) < 2e-3


def test_zero_and_integer_input():
    f = ScaledKMeansCompressor(4, random_state=0).compress(np.zeros((5, 3), np.float32))
    assert f.dtype == np.float32 and not f.to_dense().any()
    g = ScaledKMeansCompressor(256, random_state=0).compress(np.arange(12).reshape(3, 4))
    assert g.dtype == np.float64
    np.testing.assert_allclose(g.to_dense(), np.arange(12).reshape(3, 4), atol=1e-2)


def test_bad_input(rng):
    W = scaled_columns(rng, 20, 6)
    c = ScaledKMeansCompressor(4)
    bad = W.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="A contains NaN"):
        c.compress(bad)
    with pytest.raises(ValueError, match="A must be 2-D"):
        c.compress(W[0])
    X = rng.standard_normal((7, 20))
    Xn = X.copy()
    Xn[0, 0] = np.inf
    with pytest.raises(ValueError, match="X contains infinity"):
        c.compress(W, X=Xn)
    with pytest.raises(ValueError, match=r"X must have m = 20 columns .* got shape \(7, 19\)"):
        c.compress(W, X=X[:, 1:])
    with pytest.raises(ValueError, match="X must be 2-D"):
        c.compress(W, X=X[0])
    with pytest.raises(ValueError, match="X is zero everywhere"):
        c.compress(W, X=np.zeros((3, 20)))
    with pytest.raises(ValueError, match="n_codes must be <= 65536"):
        ScaledKMeansCompressor(65537).compress(W)
    with pytest.raises(ValueError, match="n_codes must be >= 1"):
        ScaledKMeansCompressor(0).compress(W)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        ScaledKMeansCompressor(4, group_size=0).compress(W)
    with pytest.raises(ValueError, match="channel_axis must be 0"):
        ScaledKMeansCompressor(4, channel_axis=2).compress(W)
    with pytest.raises(ValueError, match="n_books must be <= 6"):
        ScaledKMeansCompressor(4, n_books=7).compress(W)
    with pytest.raises(ValueError, match="scale_init must be"):
        ScaledKMeansCompressor(4, scale_init="max").compress(W)
    with pytest.raises(ValueError, match="n_refits must be >= 0"):
        ScaledKMeansCompressor(4, n_refits=-1).compress(W)
    with pytest.raises(ValueError, match="give exactly one of n_codes and compression_ratio"):
        ScaledKMeansCompressor(4, compression_ratio=4).compress(W)
    with pytest.raises(ValueError, match="give exactly one"):
        ScaledKMeansCompressor().compress(W)
    with pytest.raises(ValueError, match="method must be one of"):
        ScaledKMeansCompressor(4, method="fast").compress(W)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unreachable_ratio_names_the_best(dtype, rng):
    W = scaled_columns(rng, 20, 6, dtype)
    with pytest.raises(ValueError, match=r"scaled_kmeans: compression_ratio=40 is unreachable "
                       r".*1-bit codes with one scale per channel.*best reachable ratio is "
                       r"(\d+\.?\d*)") as info:
        ScaledKMeansCompressor(compression_ratio=40).compress(W)
    best = float(str(info.value).rsplit(" ", 1)[1])
    f = ScaledKMeansCompressor(compression_ratio=best, random_state=0).compress(W)
    assert f.bits == 1 and f.compression_ratio >= best
    with pytest.raises(ValueError, match="compression_ratio must be > 1"):
        ScaledKMeansCompressor(compression_ratio=1).compress(W)


def test_docstring_examples():
    result = doctest.testmod(quant, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
