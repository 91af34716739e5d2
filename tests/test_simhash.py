"""simhash and its projection: the Philox generator against the published known answers, the
Gaussian numbers against an independent numpy implementation of the same definition, the sign
bits and least-squares scales against numpy, determinism across thread counts, tiles and
instruction sets, and every validation path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import matcompress as mc
from conftest import use_isa, supported_isas
from matcompress import _core
from matcompress.factors import SignBits, load
from matcompress.hashing import _encode, projection

# ---------------------------------------------------------------------------------------------
# Philox4x32 and the Gaussian stream
# ---------------------------------------------------------------------------------------------

# Random123's tests/kat_vectors (github.com/DEShawResearch/random123): counter (4 words), key
# (2 words), output (4 words), for 7 and 10 rounds.
PHILOX_KAT = [
    (7, [0, 0, 0, 0], [0, 0], [0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48]),
    (7, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662]),
    (7, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A]),
    (10, [0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    (10, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (10, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize(("rounds", "counter", "key", "expected"), PHILOX_KAT)
def test_philox_known_answers(rounds, counter, key, expected):
    out = _core.philox4x32(np.array(counter, np.uint32), np.array(key, np.uint32), rounds)
    assert [int(v) for v in out] == expected


_MASK = np.uint64(0xFFFFFFFF)


def _philox_np(block, seed, rounds=10):
    """Philox4x32 of counters (block mod 2^32, block >> 32, 0, 0), written independently in
    numpy (uint64 arithmetic on 32-bit words); returns the four output words."""
    block = np.asarray(block, np.uint64)
    x0, x1 = block & _MASK, block >> np.uint64(32)
    x2 = x3 = np.zeros_like(block)
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0 = np.uint64(0xD2511F53) * x0
        p1 = np.uint64(0xCD9E8D57) * x2
        x0, x1, x2, x3 = ((p1 >> np.uint64(32)) ^ x1 ^ np.uint64(k0), p1 & _MASK,
                          (p0 >> np.uint64(32)) ^ x3 ^ np.uint64(k1), p0 & _MASK)
    return x0, x1, x2, x3


def _gaussian_np(seed, e):
    """Element(s) e of the stream of `seed` by the definition in philox.h, with numpy's log,
    cos and sin."""
    e = np.asarray(e, np.uint64)
    words = _philox_np(e >> np.uint64(2), seed)
    lane = (e & np.uint64(3)).astype(np.int64)
    a = np.where(lane < 2, words[0], words[2]).astype(np.float64)
    b = np.where(lane < 2, words[1], words[3]).astype(np.float64)
    rho = np.sqrt(-2.0 * np.log((a + 1.0) * 2.0**-32))
    theta = 2.0 * np.pi * ((b + 1.0) * 2.0**-32)
    return np.where(lane % 2 == 0, rho * np.cos(theta), rho * np.sin(theta))


# The header's log, sin and cos are within a few ulp; numpy's within one: the numbers (at most
# 6.7 in magnitude) agree to about 1e-15.
GAUSSIAN_ATOL = 1e-14


@pytest.mark.parametrize("seed", [0, 1, 0xDEADBEEF, 2**32, 2**63 + 12345, 2**64 - 1])
def test_projection_matches_numpy_definition(seed):
    m, k = 37, 29  # odd k: rows start mid-block
    R = projection(seed, m, k, np.float64)
    ref = _gaussian_np(seed, np.arange(m * k)).reshape(m, k)
    np.testing.assert_allclose(R, ref, rtol=0, atol=GAUSSIAN_ATOL)


def test_projection_far_counters_match_numpy_definition():
    # Elements beyond 2^34 use the high counter word.
    e0 = 2**34 + 2**33 + 5
    got = _core.gaussian_reference(99, e0, 64)
    np.testing.assert_allclose(got, _gaussian_np(99, np.arange(e0, e0 + 64, dtype=np.uint64)),
                               rtol=0, atol=GAUSSIAN_ATOL)


def test_numbers_finite_and_within_the_largest_radius():
    # u = (a + 1) / 2^32 >= 2^-32, so |z| <= sqrt(64 ln 2) = 6.66; u = 1 gives 0, not NaN.
    R = projection(3, 2000, 500, np.float64)
    assert np.all(np.isfinite(R))
    assert np.abs(R).max() <= math.sqrt(64 * math.log(2)) + 1e-12


@pytest.mark.parametrize(("m", "k", "rows"), [(50, 7, (0, 50)), (50, 7, (3, 41)),
                                               (1000, 300, (511, 1000)), (9, 1, (4, 5)),
                                               (20, 5, (7, 7))])
def test_projection_scalar_and_batched_paths_agree_bitwise(isa, m, k, rows):
    # The vectorized generator (every instruction set) against the one-element-at-a-time
    # definition: the same bits.
    part = projection(11, m, k, np.float64, rows=rows)
    start, stop = rows
    ref = _core.gaussian_reference(11, start * k, (stop - start) * k).reshape(-1, k)
    assert part.shape == (stop - start, k)
    assert np.array_equal(part.view(np.uint64), ref.view(np.uint64))


def test_projection_float32_is_float64_rounded():
    R64 = projection(5, 300, 70, np.float64)
    R32 = projection(5, 300, 70, np.float32)
    assert R32.dtype == np.float32
    assert np.array_equal(R32, R64.astype(np.float32))


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_projection_identical_across_threads_and_tiles(n_threads):
    full = projection(123, 3000, 256, np.float32, n_threads=1)
    assert np.array_equal(projection(123, 3000, 256, np.float32, n_threads=n_threads), full)
    for start, stop in [(0, 1), (1, 2999), (777, 1500), (2999, 3000)]:
        part = projection(123, 3000, 256, np.float32, rows=(start, stop), n_threads=n_threads)
        assert np.array_equal(part, full[start:stop])


def test_projection_rows_do_not_depend_on_m():
    # R[i, j] depends on (seed, k, i, j) only: a taller R extends a shorter one.
    assert np.array_equal(projection(8, 40, 16)[:25], projection(8, 25, 16))


def test_projection_seeds_differ_in_each_word():
    base = projection(2**40 + 7, 10, 10, np.float64)
    for other in (7, 2**41 + 7, 2**40 + 8):  # high word only, high word, low word
        assert not np.any(projection(other, 10, 10, np.float64) == base)


def test_projection_moments():
    # 2^20 numbers: tolerances are about 5 standard errors of each statistic, and the stream is
    # fixed by the seed, so the test is deterministic.
    R = projection(20240611, 2048, 512, np.float64)
    x = R.reshape(-1)
    n = x.size
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(scipy.stats.skew(x)) < 5 * math.sqrt(6 / n)
    assert abs(scipy.stats.kurtosis(x)) < 5 * math.sqrt(24 / n)
    assert scipy.stats.kstest(x, "norm").pvalue > 1e-3
    # Columns (and rows) uncorrelated: each sample correlation has standard error 1/sqrt(rows).
    corr = np.corrcoef(R, rowvar=False)
    off = corr[~np.eye(corr.shape[0], dtype=bool)]
    assert abs(off.mean()) < 5 / math.sqrt(R.shape[0] * off.size / 2)
    assert np.abs(off).max() < 6 / math.sqrt(R.shape[0])
    # The two numbers of one Box-Muller pair, and consecutive pairs, are uncorrelated.
    for lag in (1, 2, 3, 4):
        r = np.corrcoef(x[:-lag], x[lag:])[0, 1]
        assert abs(r) < 5 / math.sqrt(n)
    # Squares too (Box-Muller pairs share their radius: dependence would show here).
    pairs = x.reshape(-1, 2)
    r = np.corrcoef(pairs[:, 0] ** 2, pairs[:, 1] ** 2)[0, 1]
    assert abs(r) < 5 / math.sqrt(pairs.shape[0])


# ---------------------------------------------------------------------------------------------
# simhash against numpy
# ---------------------------------------------------------------------------------------------


def _reference(A, bits, seed, k):
    """numpy's P = R^T A (float64, from the same R), and the least-squares scales for the signs
    in `bits`."""
    m, n = A.shape
    R = projection(seed, m, k, A.dtype).astype(np.float64)
    A64 = A.astype(np.float64)
    P = R.T @ A64
    S = 2.0 * np.unpackbits(bits, axis=1, count=n, bitorder="little") - 1.0
    RS = R @ S
    num = np.einsum("ij,ij->j", A64, RS)
    den = np.einsum("ij,ij->j", RS, RS)
    return P, np.where(den > 0, num / np.where(den > 0, den, 1), 0.0), R, np.abs(R).T @ np.abs(A64)


# Measured: 1.3e-7 (float32) and 4e-15 (float64) at 1100 x 300, k = 300.
SCALE_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _check_against_numpy(A, n_bits, seed, factors):
    m, n = A.shape
    P, scale_ref, _, bound = _reference(A, factors.bits, seed, n_bits)
    eps = np.finfo(A.dtype).eps
    signs = factors.signs() > 0
    # Signs differ only where P is within float rounding of 0 (an accumulated dot product of
    # length m: at most m * eps * sum |R||A|, usually far less).
    mismatch = signs != (P >= 0)
    assert np.all(np.abs(P[mismatch]) <= m * eps * bound[mismatch])
    assert mismatch.mean() < 1e-3
    # Padding bits are 0, as np.packbits makes them.
    assert np.array_equal(factors.bits, np.packbits(signs, axis=1, bitorder="little"))
    np.testing.assert_allclose(factors.scale, scale_ref, rtol=SCALE_RTOL[A.dtype],
                               atol=SCALE_RTOL[A.dtype] * np.abs(scale_ref).max())


@pytest.mark.parametrize("max_resident", [-1, 0], ids=["whole_R", "R_tiles"])
@pytest.mark.parametrize("norms", ["gram", "direct", "auto"])
@pytest.mark.parametrize(("m", "n", "k"), [(300, 70, 64), (1100, 300, 300), (5, 9, 700),
                                           (1, 1, 1), (17, 1, 3)])
def test_encode_matches_numpy(rng, dtype, m, n, k, norms, max_resident):
    A = rng.standard_normal((m, n)).astype(dtype)
    seed = 0xC0FFEE
    bits, scale = _encode(A, k, seed, 0, norms, max_resident)
    f = SignBits(bits=bits, scale=scale, seed=seed, n_rows=m)
    assert bits.shape == (k, (n + 7) // 8) and bits.dtype == np.uint8
    assert scale.shape == (n,) and scale.dtype == dtype
    _check_against_numpy(A, k, seed, f)


def test_scale_is_the_least_squares_optimum(rng):
    A = rng.standard_normal((120, 6))
    f = mc.simhash(A, 48, random_state=1)
    R, S = f.projection(), f.signs()
    for j in range(A.shape[1]):
        RS = R @ S[:, j]
        (best,), *_ = np.linalg.lstsq(RS[:, None], A[:, j], rcond=None)
        np.testing.assert_allclose(f.scale[j], best, rtol=1e-10)


def test_simhash_returns_signbits_that_agree_with_numpy(rng, dtype):
    A = rng.standard_normal((200, 45)).astype(dtype)
    f = mc.simhash(A, 96, random_state=3)
    assert isinstance(f, SignBits)
    assert f.shape == A.shape and f.dtype == dtype and f.n_bits == 96 and f.n_rows == 200
    R = projection(f.seed, 200, 96, dtype)
    dense = (R.astype(np.float64) @ f.signs().astype(np.float64)) * f.scale
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(f.to_dense(), dense, rtol=tol, atol=tol * np.abs(dense).max())
    x = rng.standard_normal((3, 200)).astype(dtype)
    np.testing.assert_allclose(f.matmul(x), x.astype(np.float64) @ dense, rtol=tol,
                               atol=tol * 50 * np.abs(dense).max())
    _check_against_numpy(A, 96, f.seed, f)


def test_zero_columns_get_scale_zero(dtype):
    A = np.zeros((40, 5), dtype)
    A[:, 1] = np.linspace(-1, 1, 40)
    A[:, 3] = 2.0
    f = mc.simhash(A, 32, random_state=0)
    assert f.scale[0] == 0 and f.scale[2] == 0 and f.scale[4] == 0
    assert f.scale[1] > 0 and f.scale[3] > 0
    assert np.all(f.signs()[:, [0, 2, 4]] == 1)  # R^T 0 = 0 >= 0
    assert np.array_equal(mc.simhash(np.zeros((3, 3)), 4).scale, np.zeros(3))


def test_error_decreases_with_n_bits(rng):
    # For Gaussian columns the relative error falls like sqrt(m / n_bits); averaged over seeds.
    A = rng.standard_normal((128, 32))
    errors = []
    for n_bits in (16, 64, 256, 1024, 4096):
        errs = [np.linalg.norm(mc.simhash(A, n_bits, random_state=s).to_dense() - A)
                / np.linalg.norm(A) for s in range(3)]
        errors.append(np.mean(errs))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.25 and errors[0] > 0.9


@pytest.mark.parametrize("norms", ["gram", "direct"])
def test_encode_identical_across_threads_and_tiling(rng, dtype, norms):
    # 3 row tiles, 2 x 3 blocks of P: every thread count, and R generated whole or one tile at
    # a time (max_resident=0), give the same bits.
    A = rng.standard_normal((1100, 300)).astype(dtype)
    ref = _encode(A, 300, 42, 1, norms)
    for n_threads, max_resident in [(2, -1), (3, -1), (1, 0), (2, 0), (3, 0)]:
        bits, scale = _encode(A, 300, 42, n_threads, norms, max_resident)
        assert np.array_equal(bits, ref[0])
        assert np.array_equal(scale.view(np.uint8), ref[1].view(np.uint8))


def test_encode_identical_across_isas(rng, dtype):
    A = rng.standard_normal((600, 40)).astype(dtype)
    results = []
    for name in supported_isas():
        with use_isa(name):
            results.append(_encode(A, 130, 9, 2))
    for bits, scale in results[1:]:
        assert np.array_equal(bits, results[0][0])
        assert np.array_equal(scale, results[0][1])


def test_gram_and_direct_routes_agree(rng, dtype):
    A = rng.standard_normal((700, 50)).astype(dtype)
    bits_g, scale_g = _encode(A, 260, 5, 0, "gram")
    bits_d, scale_d = _encode(A, 260, 5, 0, "direct")
    assert np.array_equal(bits_g, bits_d)  # the same P
    np.testing.assert_allclose(scale_g, scale_d, rtol=SCALE_RTOL[np.dtype(dtype)])


def test_determinism_and_seeds(rng):
    A = rng.standard_normal((64, 20))
    f1 = mc.simhash(A, 32, random_state=5)
    assert f1 == mc.simhash(A, 32, random_state=5)
    assert f1 == mc.simhash(A, 32, random_state=np.random.default_rng(5))
    f2 = mc.simhash(A, 32, random_state=6)
    assert f2.seed != f1.seed and not np.array_equal(f2.bits, f1.bits)
    assert mc.simhash(A, 32).seed != mc.simhash(A, 32).seed  # fresh entropy


def test_input_not_modified_and_layouts(rng):
    A = rng.standard_normal((90, 40))
    before = A.copy()
    ref = mc.simhash(A, 50, random_state=0)
    assert np.array_equal(A, before)
    assert mc.simhash(np.asfortranarray(A), 50, random_state=0) == ref
    wide = np.empty((90, 80))
    wide[:, ::2] = A
    assert mc.simhash(wide[:, ::2], 50, random_state=0) == ref  # non-contiguous view
    assert mc.simhash(A.tolist(), 50, random_state=0) == ref


def test_integer_input_becomes_float64():
    f = mc.simhash(np.arange(12).reshape(4, 3), 8, random_state=0)
    assert f.dtype == np.float64
    assert f == mc.simhash(np.arange(12.0).reshape(4, 3), 8, random_state=0)


@pytest.mark.parametrize("exponent", [100, -90])
def test_huge_and_tiny_values(rng, exponent):
    # float32 values beyond 2^60 or below 2^-60 are scaled by a power of two first (exact): the
    # bits are those of the unscaled matrix and the scales are scaled back exactly.
    A = rng.uniform(0.5, 2.0, (30, 8)).astype(np.float32) * rng.choice([-1, 1], (30, 8))
    ref = mc.simhash(A, 16, random_state=0)
    f = mc.simhash(np.ldexp(A, exponent).astype(np.float32), 16, random_state=0)
    assert np.array_equal(f.bits, ref.bits)
    assert np.array_equal(f.scale, np.ldexp(ref.scale, exponent).astype(np.float32))
    assert np.all(np.isfinite(f.to_dense()))


def test_save_load_round_trip(rng, tmp_path):
    f = mc.simhash(rng.standard_normal((50, 13)), 24, random_state=0)
    f.save(tmp_path / "f.npz")
    g = load(tmp_path / "f.npz")
    assert g == f
    np.testing.assert_array_equal(g.to_dense(), f.to_dense())


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 80),
       f32=st.booleans(), seed=st.integers(0, 2**64 - 1),
       data_seed=st.integers(0, 2**32 - 1), norms=st.sampled_from(["gram", "direct"]),
       max_resident=st.sampled_from([-1, 0]))
def test_property_random_shapes(m, n, k, f32, seed, data_seed, norms, max_resident):
    dtype = np.float32 if f32 else np.float64
    A = np.random.default_rng(data_seed).standard_normal((m, n)).astype(dtype)
    bits, scale = _encode(A, k, seed, 1, norms, max_resident)
    f = SignBits(bits=bits, scale=scale, seed=seed, n_rows=m)
    _check_against_numpy(A, k, seed, f)
    bits2, scale2 = _encode(A, k, seed, 2, norms, max_resident)
    assert np.array_equal(bits2, bits) and np.array_equal(scale2, scale)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity"),
                                           (-np.inf, "infinity")])
def test_non_finite_A(dtype, bad, what):
    A = np.ones((4, 3), dtype)
    A[1, 2] = bad
    with pytest.raises(ValueError, match=f"^A contains {what}"):
        mc.simhash(A, 8)


@pytest.mark.parametrize(("A", "exc", "match"), [
    (np.ones(5), ValueError, "A must be 2-D"),
    (np.ones((2, 3, 4)), ValueError, "A must be 2-D"),
    (np.ones((3, 3), np.complex128), TypeError, "A must be real"),
    (np.ones((0, 3)), ValueError, "A is empty"),
    (np.ones((3, 0)), ValueError, "A is empty"),
    (np.array([["a", "b"]]), TypeError, "A must be a numeric array"),
    (None, TypeError, "A must be an array"),
])
def test_bad_A(A, exc, match):
    with pytest.raises(exc, match=match):
        mc.simhash(A, 8)


@pytest.mark.parametrize(("n_bits", "exc", "match"), [
    (0, ValueError, "n_bits must be >= 1; got 0"),
    (-1, ValueError, "n_bits must be >= 1; got -1"),
    (1.5, TypeError, "n_bits must be an integer"),
    (8.0, TypeError, "n_bits must be an integer"),
    ("8", TypeError, "n_bits must be an integer"),
    (True, TypeError, "n_bits must be an integer"),
    (None, TypeError, "n_bits must be an integer"),
])
def test_bad_n_bits(n_bits, exc, match):
    with pytest.raises(exc, match=match):
        mc.simhash(np.ones((3, 3)), n_bits)


def test_numpy_integer_n_bits_accepted():
    assert mc.simhash(np.ones((3, 3)), np.int64(4), random_state=0).n_bits == 4


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(random_state=-1), ValueError, "random_state must be a non-negative integer"),
    (dict(random_state=1.5), TypeError, "random_state must be None, an int"),
    (dict(n_threads=0), ValueError, "n_threads must be None, -1 or a positive integer"),
    (dict(n_threads=1.0), TypeError, "n_threads must be an integer"),
])
def test_bad_keywords(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mc.simhash(np.ones((3, 3)), 4, **kwargs)


def test_keywords_are_keyword_only():
    with pytest.raises(TypeError):
        mc.simhash(np.ones((3, 3)), 4, 0)


@pytest.mark.parametrize(("args", "kwargs", "exc", "match"), [
    ((-1, 3, 3), {}, ValueError, r"seed must lie in \[0, 2\*\*64\)"),
    ((2**64, 3, 3), {}, ValueError, r"seed must lie in \[0, 2\*\*64\)"),
    ((1.0, 3, 3), {}, TypeError, "seed must be an integer"),
    ((0, 0, 3), {}, ValueError, "m must be >= 1"),
    ((0, 3, 0), {}, ValueError, "k must be >= 1"),
    ((0, 3, 2.0), {}, TypeError, "k must be an integer"),
    ((0, 3, 3, np.int32), {}, TypeError, "dtype must be float32 or float64"),
    ((0, 3, 3, "banana"), {}, TypeError, "dtype must be float32 or float64"),
    ((0, 3, 3), dict(rows=(2, 1)), ValueError, r"rows\[1\] must be >= 2"),
    ((0, 3, 3), dict(rows=(0, 4)), ValueError, r"rows\[1\] must be <= 3"),
    ((0, 3, 3), dict(rows=(-1, 2)), ValueError, r"rows\[0\] must be >= 0"),
    ((0, 3, 3), dict(rows=5), TypeError, r"rows must be a \(start, stop\) pair"),
])
def test_bad_projection_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        projection(*args, **kwargs)


def test_core_checks_its_preconditions():
    # The bindings and the core refuse what the Python layer would never pass.
    with pytest.raises(ValueError, match="n_bits >= 1"):
        _core.simhash_encode_f64(np.ones((2, 2)), 0, 0, 1)
    with pytest.raises(ValueError, match="norms must be"):
        _core.simhash_encode_f64(np.ones((2, 2)), 2, 0, 1, "fast")
    with pytest.raises(ValueError, match="rows outside"):
        _core.simhash_projection_f32(0, 4, 2, 3, 2, 1)
    with pytest.raises(ValueError, match="rounds must be 7 or 10"):
        _core.philox4x32(np.zeros(4, np.uint32), np.zeros(2, np.uint32), 8)
