"""matcompress.factors: every Factorization's to_dense, matmul, nbytes, save/load and validation.

References are written here from the documented formulas (the table in ``factors.py``), with
numpy only: the 4-bit codes are unpacked by hand, the sign bits with ``np.unpackbits``, CSR rows
walked with ``indptr``. The one library call in a reference is ``hashing.projection`` (the
Gaussian R of SignBits, defined bit for bit by its seed; it has its own tests in
test_simhash.py).

Tolerances (stated once): the forms that only copy stored values (Codebook, Pruned) must equal
the reference exactly. The others are sums of products computed in the factorization's dtype
and compared with a float64 reference to ``TOL[dtype] * (|B| @ |C|)`` element-wise (the
classical bound on a computed product's error, with a generous constant): float32 1e-5, float64
1e-13. ``matmul`` results are compared with ``x @ reference`` in float64 the same way, the bound
built from ``|x| @ |W|`` of the factors' absolute values.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from matcompress.factors import (FORMAT_VERSION, Codebook, Factorization, LowRank, Pruned,
                                 SignBits, SparseCodes, index_dtype, load)
from matcompress.hashing import projection

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-13}

KINDS = ["low_rank", "sparse_codes", "codebook_u8", "codebook_packed", "codebook_packed_odd",
         "codebook_u16_blocks", "sign_bits", "pruned_values", "pruned_codes"]


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def pack_nibbles(codes):
    """Two codes per byte along each row, the first in the low nibble (odd rows: high nibble 0)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[1] % 2:
        codes = np.hstack([codes, np.zeros((codes.shape[0], 1), np.uint8)])
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed, count):
    lo = packed & 0x0F
    hi = packed >> 4
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.int64)
    out[:, 0::2] = lo
    out[:, 1::2] = hi
    return out[:, :count]


def reference(f):
    """(dense W in float64, |B| @ |C| bound matrix or None for exact forms) from the fields."""
    if isinstance(f, LowRank):
        L, R = f.left.astype(np.float64), f.right.astype(np.float64)
        return L @ R, np.abs(L) @ np.abs(R)
    if isinstance(f, SparseCodes):
        m, s = f.values.shape
        D = f.dictionary.astype(np.float64)
        W = np.zeros((m, D.shape[1]))
        bound = np.zeros_like(W)
        for i in range(m):
            for t in range(s):
                W[i] += float(f.values[i, t]) * D[int(f.indices[i, t])]
                bound[i] += abs(float(f.values[i, t])) * np.abs(D[int(f.indices[i, t])])
        return W, bound
    if isinstance(f, Codebook):
        b = f.codebook.shape[1]
        nb = f.n_cols // b
        codes = unpack_nibbles(f.codes, nb) if f.packed else f.codes.astype(np.int64)
        W = np.zeros((codes.shape[0], f.n_cols))
        for i in range(codes.shape[0]):
            for j in range(nb):
                W[i, j * b:(j + 1) * b] = f.codebook[codes[i, j]]
        return W, None
    if isinstance(f, SignBits):
        n = f.scale.shape[0]
        S = 2.0 * np.unpackbits(f.bits, axis=1, count=n, bitorder="little") - 1.0
        R = projection(f.seed, f.n_rows, f.bits.shape[0], dtype=f.dtype).astype(np.float64)
        scale = f.scale.astype(np.float64)
        return (R @ S) * scale, (np.abs(R) @ np.abs(S)) * np.abs(scale)
    if isinstance(f, Pruned):
        m = f.indptr.shape[0] - 1
        W = np.zeros((m, f.n_cols))
        kept = f.values if f.values is not None else f.codebook[f.codes]
        for i in range(m):
            for p in range(int(f.indptr[i]), int(f.indptr[i + 1])):
                W[i, int(f.indices[p])] = kept[p]
        return W, None
    raise AssertionError(type(f))


def stored_arrays(f):
    """The arrays each form documents as stored (what nbytes counts), by field name."""
    names = {LowRank: ("left", "right"), SparseCodes: ("indices", "values", "dictionary"),
             Codebook: ("codes", "codebook"), SignBits: ("bits", "scale"),
             Pruned: ("indptr", "indices", "values", "codes", "codebook")}[type(f)]
    return {k: getattr(f, k) for k in names if getattr(f, k) is not None}


def expected_nbytes(f):
    total = sum(a.nbytes for a in stored_arrays(f).values())
    if isinstance(f, SignBits):
        total += 8 + 8  # the seed and n_rows, 8 bytes each (factors.Factorization.nbytes)
    return total


# ---------------------------------------------------------------------------------------------
# Builders: one valid instance of each form, fields drawn at random
# ---------------------------------------------------------------------------------------------


def build(kind, dtype, rng):
    dtype = np.dtype(dtype)
    if kind == "low_rank":
        return LowRank(rng.standard_normal((9, 3)).astype(dtype),
                       rng.standard_normal((3, 11)).astype(dtype))
    if kind == "sparse_codes":
        m, s, k, n = 10, 4, 6, 7
        indices = rng.integers(0, k, (m, s)).astype(np.uint8)
        values = rng.standard_normal((m, s)).astype(dtype)
        # padded rows: unused terms are (index 0, value 0), possibly repeating a used index 0
        values[2, 2:] = 0
        indices[2, 2:] = 0
        indices[3] = [0, 0, 5, 0]
        values[3, 3] = 0
        values[4] = 0  # a row with no terms at all
        indices[5] = [1, 1, 1, 1]  # repeated atoms add up
        return SparseCodes(indices, values, rng.standard_normal((k, n)).astype(dtype))
    if kind == "codebook_u8":
        return Codebook(rng.integers(0, 40, (8, 12)).astype(np.uint8),
                        rng.standard_normal((40, 1)).astype(dtype), 12)
    if kind == "codebook_packed":  # 6 blocks of 2 per row, 16 codes
        codes = rng.integers(0, 16, (7, 6))
        return Codebook(pack_nibbles(codes), rng.standard_normal((16, 2)).astype(dtype), 12,
                        packed=True)
    if kind == "codebook_packed_odd":  # 5 blocks of 3 per row: the last byte holds one code
        codes = rng.integers(0, 11, (6, 5))
        return Codebook(pack_nibbles(codes), rng.standard_normal((11, 3)).astype(dtype), 15,
                        packed=True)
    if kind == "codebook_u16_blocks":
        return Codebook(rng.integers(0, 300, (5, 4)).astype(np.uint16),
                        rng.standard_normal((300, 3)).astype(dtype), 12)
    if kind == "sign_bits":
        k, n, m = 24, 13, 9
        signs = rng.integers(0, 2, (k, n)).astype(np.uint8)
        return SignBits(np.packbits(signs, axis=1, bitorder="little"),
                        rng.uniform(0.1, 2.0, n).astype(dtype), seed=12345, n_rows=m)
    if kind in ("pruned_values", "pruned_codes"):
        m, n = 7, 10
        mask = rng.random((m, n)) < 0.4
        mask[3] = False  # an empty row
        mask[5] = True  # a full row
        indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
        indices = np.nonzero(mask)[1].astype(np.uint8)
        nnz = int(indptr[-1])
        if kind == "pruned_values":
            return Pruned(indptr, indices, n, values=rng.standard_normal(nnz).astype(dtype))
        return Pruned(indptr, indices, n, codes=rng.integers(0, 5, nnz).astype(np.uint8),
                      codebook=rng.standard_normal(5).astype(dtype))
    raise AssertionError(kind)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def factor(kind, dtype, rng):
    return build(kind, dtype, rng)


def assert_product_close(got, want, bound, dtype):
    """got == want to TOL[dtype] * bound element-wise (exactly when bound is None)."""
    if bound is None:
        assert_array_equal(got, want)
    else:
        assert np.all(np.abs(got.astype(np.float64) - want) <= TOL[np.dtype(dtype)] * bound
                      + np.finfo(np.float64).tiny), np.max(np.abs(got - want))


# ---------------------------------------------------------------------------------------------
# to_dense, shape, dtype
# ---------------------------------------------------------------------------------------------


def test_to_dense_matches_documented_formula(factor, dtype):
    W, bound = reference(factor)
    dense = factor.to_dense()
    assert factor.shape == W.shape == dense.shape
    assert factor.dtype == dtype
    assert dense.dtype == dtype
    assert_product_close(dense, W, bound, dtype)


def test_dense_rows_match_documented_formula(factor, dtype):
    W, bound = reference(factor)
    m, n = factor.shape
    for start, stop in ((0, m), (0, 1), (1, m - 1), (m - 1, m), (2, 2), (m, m)):
        rows = factor.dense_rows(start, stop)
        assert rows.shape == (stop - start, n) and rows.dtype == dtype
        assert_product_close(rows, W[start:stop], None if bound is None else bound[start:stop],
                             dtype)
    # blocks of rows put together give to_dense() (the same bits for the exact forms)
    blocks = np.vstack([factor.dense_rows(i, min(i + 3, m)) for i in range(0, m, 3)])
    if bound is None:
        assert_array_equal(blocks, factor.to_dense())
    else:
        assert_product_close(blocks, W, bound, dtype)


def test_dense_rows_generic_fallback_and_bounds(rng):
    f = build("low_rank", np.float32, rng)
    m = f.shape[0]
    # the base class's route (rows of the identity times W) agrees with LowRank's own
    assert_allclose(Factorization._dense_rows(f, 2, 5), f.dense_rows(2, 5), rtol=1e-5,
                    atol=1e-6)
    assert Factorization._dense_rows(f, 2, 5).dtype == np.float32
    with pytest.raises(ValueError, match="stop must be <="):
        f.dense_rows(0, m + 1)
    with pytest.raises(ValueError, match="stop must be >= 3"):
        f.dense_rows(3, 2)
    with pytest.raises(ValueError, match="start must be >= 0"):
        f.dense_rows(-1, 2)


def test_sign_bits_dense_is_projection_times_signs_times_scale(dtype, rng):
    n, k, m = 21, 16, 30  # n not a multiple of 8: the last byte's high bits are padding
    signs = rng.integers(0, 2, (k, n)).astype(np.uint8)
    bits = np.packbits(signs, axis=1, bitorder="little")
    bits[:, -1] |= 0xE0  # set the 3 padding bits: they must be ignored
    scale = rng.uniform(0.5, 1.5, n).astype(dtype)
    f = SignBits(bits, scale, seed=2**64 - 1, n_rows=m)
    S = 2.0 * np.unpackbits(bits, axis=1, count=n, bitorder="little") - 1
    assert_array_equal(S, 2.0 * signs - 1)
    R = projection(2**64 - 1, m, k, dtype=dtype).astype(np.float64)
    want = (R @ S) * scale
    assert_product_close(f.to_dense(), want, (np.abs(R) @ np.abs(S)) * scale, dtype)
    assert_array_equal(f.signs(), S.astype(dtype))
    assert f.n_bits == k and f.shape == (m, n)


def test_packed_and_unpacked_codebook_agree(rng, dtype):
    for nb in (1, 2, 5, 8, 9):  # odd and even numbers of blocks per row
        b = 3
        codes = rng.integers(0, 16, (6, nb))
        codebook = rng.standard_normal((16, b)).astype(dtype)
        plain = Codebook(codes.astype(np.uint8), codebook, nb * b)
        packed = Codebook(pack_nibbles(codes), codebook, nb * b, packed=True)
        assert packed.codes.shape == (6, (nb + 1) // 2)
        assert packed.shape == plain.shape == (6, nb * b)
        assert_array_equal(packed.to_dense(), plain.to_dense())
        assert packed.nbytes < plain.nbytes or nb == 1


@pytest.mark.parametrize("nb", [1, 2, 7, 10])
def test_unpacked_codes_slices(rng, nb):
    codes = rng.integers(0, 16, (4, nb))
    codebook = np.arange(16, dtype=np.float32)[:, None]
    for packed in (False, True):
        f = Codebook(pack_nibbles(codes) if packed else codes.astype(np.uint8), codebook, nb,
                     packed=packed)
        assert_array_equal(f.unpacked_codes(), codes)
        for start in range(nb + 1):
            for stop in range(start, nb + 1):
                assert_array_equal(f.unpacked_codes(start, stop), codes[:, start:stop],
                                   err_msg=f"packed={packed} [{start}:{stop}]")


def test_pruned_with_codes_decodes_through_codebook(dtype):
    indptr = np.array([0, 2, 2, 5], np.int64)
    indices = np.array([0, 3, 1, 2, 3], np.uint16)
    codebook = np.array([-1.5, 0.25, 4.0], dtype)
    codes = np.array([2, 0, 1, 1, 0], np.uint8)
    f = Pruned(indptr, indices, 4, codes=codes, codebook=codebook)
    want = np.array([[4.0, 0, 0, -1.5], [0, 0, 0, 0], [0, 0.25, 0.25, -1.5]], dtype)
    assert_array_equal(f.to_dense(), want)
    assert f.to_dense().dtype == dtype
    assert f.nnz == 5 and f.density == 5 / 12
    assert_array_equal(f.kept_values(), codebook[codes])


def test_sparse_codes_padded_rows(dtype):
    D = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]], dtype)
    indices = np.array([[2, 0, 0], [0, 0, 0], [1, 1, 0]], np.int32)
    values = np.array([[1.0, 0, 0], [0, 0, 0], [0.5, 0.25, 0]], dtype)
    f = SparseCodes(indices, values, D)
    assert_array_equal(f.to_dense(), np.array([[0, 0, 3.0], [0, 0, 0], [0, 1.5, 0]], dtype))


# ---------------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------------


def _matmul_bound(f, x64):
    """A bound on |x @ W| computed from |factors|: the scale of a correct product's rounding."""
    W, bound = reference(f)
    absW = np.abs(W) if bound is None else bound
    return np.abs(x64) @ absW


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64, np.int64], ids=["xf32", "xf64",
                                                                             "xint"])
def test_matmul_equals_x_times_dense(factor, dtype, lead, x_dtype, rng):
    m, n = factor.shape
    x = rng.standard_normal(lead + (m,)) * 3
    x = x.astype(x_dtype)
    y = factor.matmul(x)
    want_dtype = np.result_type(np.float64 if np.dtype(x_dtype).kind != "f" else x_dtype, dtype)
    assert y.dtype == want_dtype
    assert y.shape == lead + (n,)
    W, _ = reference(factor)
    x64 = x.astype(np.float64)
    want = x64 @ W
    # the result is rounded to its dtype; the factors' own sums in theirs
    tol = TOL[np.dtype(dtype)] + TOL[want_dtype]
    assert np.all(np.abs(y - want) <= tol * (_matmul_bound(factor, x64) + 1e-300))


def test_matmul_other_inputs(factor, rng):
    m, n = factor.shape
    W, _ = reference(factor)
    x = rng.integers(-3, 4, (2, m))
    # a list, a bool array, a Fortran-ordered array, an empty batch
    assert_allclose(factor.matmul(x.tolist()), x @ W, rtol=1e-4, atol=1e-4 * np.abs(W).max())
    xb = x > 0
    assert factor.matmul(xb).dtype == np.float64
    assert_allclose(factor.matmul(xb), xb.astype(np.float64) @ W, rtol=1e-4,
                    atol=1e-4 * np.abs(W).max())
    xf = np.asfortranarray(x.astype(factor.dtype))
    assert_allclose(factor.matmul(xf), x @ W, rtol=1e-4, atol=1e-4 * np.abs(W).max())
    assert factor.matmul(np.zeros((0, m), factor.dtype)).shape == (0, n)


def test_matmul_never_builds_the_dense_matrix(factor, monkeypatch, rng):
    m, n = factor.shape
    x = rng.standard_normal((3, m)).astype(factor.dtype)
    want = x.astype(np.float64) @ reference(factor)[0]

    def refuse(self):
        raise AssertionError("matmul called to_dense")

    monkeypatch.setattr(type(factor), "to_dense", refuse)
    assert_allclose(factor.matmul(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("packed", [False, True])
def test_codebook_matmul_decodes_column_tiles(monkeypatch, packed):
    # A float64 W of 512 x 8192 is 32 MiB; decoding 256 columns at a time needs 1 MiB. The
    # matmul's peak allocation must stay far below the dense size.
    rng = np.random.default_rng(3)
    m, n = 512, 8192
    codes = rng.integers(0, 16, (m, n)).astype(np.uint8)
    codebook = rng.standard_normal((16, 1))
    f = Codebook(pack_nibbles(codes) if packed else codes, codebook, n, packed=packed)
    x = rng.standard_normal((4, m))
    monkeypatch.setattr(Codebook, "to_dense", lambda self: pytest.fail("to_dense called"))
    tracemalloc.start()
    try:
        y = f.matmul(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_bytes = m * n * 8
    assert peak < dense_bytes / 8, f"peak {peak} bytes for a {dense_bytes}-byte W"
    cols = rng.choice(n, 50, replace=False)
    assert_allclose(y[:, cols], x @ codebook[codes[:, cols], 0], rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("b", [1, 3, 7, 256, 300])
def test_codebook_matmul_block_sizes_across_tiles(rng, b):
    # blocks that do not divide the 256-column tile, and blocks wider than a tile
    nb = 700 // b + 1
    codes = rng.integers(0, 9, (5, nb))
    codebook = rng.standard_normal((9, b))
    f = Codebook(codes.astype(np.uint8), codebook, nb * b)
    x = rng.standard_normal((3, 5))
    W = reference(f)[0]
    assert np.all(np.abs(f.matmul(x) - x @ W) <= 1e-13 * (np.abs(x) @ np.abs(W)))


def test_matmul_bad_x(factor):
    m, _ = factor.shape
    with pytest.raises(ValueError, match=rf"x must have shape \(\.\.\., {m}\)"):
        factor.matmul(np.ones((2, m + 1)))
    with pytest.raises(ValueError, match="x must have shape"):
        factor.matmul(np.float64(1.0))
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        factor.matmul(np.ones((2, m), complex))
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        factor.matmul(np.array([["a"] * m]))


def test_matmul_operators(factor, rng):
    m, n = factor.shape
    W, _ = reference(factor)
    x = rng.standard_normal((2, m))
    v = rng.standard_normal((n, 3))
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(W).max() * max(m, n))
    # other @ W for an object numpy does not claim (a list): Python calls __rmatmul__
    assert_allclose(x.tolist() @ factor, x @ W, **tol)
    # W @ other
    assert_allclose(factor @ v, W @ v, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_ndarray_at_factorization(dtype):
    rng = np.random.default_rng(0)
    for kind in KINDS:
        f = build(kind, dtype, rng)
        x = rng.standard_normal((2, f.shape[0])).astype(dtype)
        assert_array_equal(x @ f, f.matmul(x))


# ---------------------------------------------------------------------------------------------
# nbytes, compression_ratio
# ---------------------------------------------------------------------------------------------


def test_nbytes_and_compression_ratio(factor):
    total = expected_nbytes(factor)
    assert factor.nbytes == total
    assert isinstance(factor.nbytes, int)
    m, n = factor.shape
    assert factor.dense_nbytes == m * n * factor.dtype.itemsize
    assert factor.compression_ratio == pytest.approx(m * n * factor.dtype.itemsize / total,
                                                     rel=1e-15)


def test_nbytes_by_hand():
    # Spelled out once per form, independently of the helper above.
    f32 = np.float32
    assert LowRank(np.zeros((10, 2), f32), np.zeros((2, 6), f32)).nbytes == (20 + 12) * 4
    assert SparseCodes(np.zeros((5, 3), np.uint8), np.zeros((5, 3)), np.zeros((4, 7))).nbytes \
        == 15 * 1 + 15 * 8 + 28 * 8
    assert Codebook(np.zeros((4, 3), np.uint8), np.zeros((16, 2), f32), 12,
                    packed=True).nbytes == 12 + 32 * 4
    assert Codebook(np.zeros((4, 6), np.uint16), np.zeros((300, 1)), 6).nbytes \
        == 24 * 2 + 300 * 8
    assert SignBits(np.zeros((5, 2), np.uint8), np.ones(9, f32), 1, 3).nbytes \
        == 10 + 9 * 4 + 16
    assert Pruned(np.array([0, 1, 3], np.int32), np.array([0, 1, 2], np.uint8), 4,
                  values=np.ones(3, f32)).nbytes == 12 + 3 + 12
    assert Pruned(np.array([0, 1, 3], np.int32), np.array([0, 1, 2], np.uint8), 4,
                  codes=np.zeros(3, np.uint8), codebook=np.ones(2)).nbytes == 12 + 3 + 3 + 16


def test_index_dtype():
    assert index_dtype(1) == np.uint8
    assert index_dtype(256) == np.uint8
    assert index_dtype(257) == np.uint16
    assert index_dtype(65536) == np.uint16
    assert index_dtype(65537) == np.uint32
    assert index_dtype(2**32) == np.uint32
    assert index_dtype(2**32 + 1) == np.int64


# ---------------------------------------------------------------------------------------------
# Immutability, equality
# ---------------------------------------------------------------------------------------------


def test_frozen(factor):
    field = dataclasses.fields(factor)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(factor, field, getattr(factor, field))
    for name, a in stored_arrays(factor).items():
        assert not a.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            a.reshape(-1)[0] = 0
    with pytest.raises(TypeError):
        hash(factor)


def test_equality(kind, rng):
    a = build(kind, np.float64, np.random.default_rng(1))
    b = build(kind, np.float64, np.random.default_rng(1))
    c = build(kind, np.float64, np.random.default_rng(2))
    d = build(kind, np.float32, np.random.default_rng(1))
    assert a == b
    assert a != c
    assert a != d  # same values (cast), another dtype
    assert a != "not a factorization"
    assert isinstance(repr(a), str) and type(a).__name__ in repr(a)


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(factor, tmp_path):
    path = tmp_path / "f.npz"
    factor.save(path)
    g = load(path)
    assert type(g) is type(factor)
    assert g == factor
    for name, a in stored_arrays(factor).items():
        b = getattr(g, name)
        assert b.dtype == a.dtype, name
        assert b.shape == a.shape, name
        assert not b.flags.writeable, name
    for f in dataclasses.fields(factor):
        assert type(getattr(g, f.name)) is type(getattr(factor, f.name)), f.name
    assert_array_equal(g.to_dense(), factor.to_dense())
    assert g.nbytes == factor.nbytes
    # str paths work too
    g2 = load(str(path))
    assert g2 == factor


def test_load_sign_bits_extreme_seeds(tmp_path):
    for seed in (0, 2**63 - 1, 2**63, 2**64 - 1):
        f = SignBits(np.zeros((2, 1), np.uint8), np.ones(3), seed, 4)
        f.save(tmp_path / "s.npz")
        g = load(tmp_path / "s.npz")
        assert g.seed == seed and isinstance(g.seed, int)
        assert_array_equal(g.to_dense(), f.to_dense())


def _valid_arrays(kind="low_rank"):
    f = build(kind, np.float64, np.random.default_rng(0))
    out = {"__kind__": np.asarray(f.kind), "__version__": np.asarray(FORMAT_VERSION)}
    for fld in dataclasses.fields(f):
        v = getattr(f, fld.name)
        if v is not None:
            out[fld.name] = np.asarray(v)
    return out


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


FOREIGN = {
    "npy": lambda p: (np.save(p.with_suffix(".npy"), np.ones(3)), p.with_suffix(".npy"))[1],
    "random_npz": lambda p: _write(p, a=np.ones(3), b=np.arange(4)),
    "text": lambda p: (p.write_text("left,right\n1,2\n"), p)[1],
    "empty_file": lambda p: (p.write_bytes(b""), p)[1],
    "missing": lambda p: p.with_name("does_not_exist.npz"),
    "directory": lambda p: p.parent,
    "wrong_version": lambda p: _write(p, **{**_valid_arrays(), "__version__": np.asarray(2)}),
    "bad_version": lambda p: _write(p, **{**_valid_arrays(), "__version__": np.asarray("one")}),
    "version_array": lambda p: _write(p, **{**_valid_arrays(), "__version__": np.arange(2)}),
    "no_kind": lambda p: _write(p, **{k: v for k, v in _valid_arrays().items() if k != "__kind__"}),
    "unknown_kind": lambda p: _write(p, **{**_valid_arrays(), "__kind__": np.asarray("tucker")}),
    "missing_field": lambda p: _write(p, **{k: v for k, v in _valid_arrays().items()
                                           if k != "right"}),
    "bad_shape": lambda p: _write(p, **{**_valid_arrays(), "right": np.ones((4, 11))}),
    "bad_ndim": lambda p: _write(p, **{**_valid_arrays(), "left": np.ones(9)}),
    "bad_dtype": lambda p: _write(p, **{**_valid_arrays(), "left": np.ones((9, 3), np.int32)}),
    "codebook_codes_out_of_range": lambda p: _write(
        p, **{**_valid_arrays("codebook_u8"), "codes": np.full((8, 12), 200, np.uint8)}),
    "codebook_n_cols_array": lambda p: _write(
        p, **{**_valid_arrays("codebook_u8"), "n_cols": np.array([12, 12])}),
    "sign_bits_missing_seed": lambda p: _write(
        p, **{k: v for k, v in _valid_arrays("sign_bits").items() if k != "seed"}),
    "pruned_bad_indptr": lambda p: _write(
        p, **{**_valid_arrays("pruned_values"), "indptr": np.array([0, 5, 2], np.int32)}),
}

FOREIGN_MESSAGE = {
    "npy": "is a .npy array, not a matcompress factorization",
    "random_npz": "is not a matcompress factorization",
    "text": "is not a readable .npz file",
    "empty_file": "is not a readable .npz file",
    "missing": "is not a readable .npz file",
    "directory": "is not a readable .npz file",
    "wrong_version": "has format version 2; this matcompress reads version 1",
    "bad_version": "malformed header",
    "version_array": "malformed header",
    "no_kind": "no __kind__",
    "unknown_kind": "unknown factorization kind 'tucker'",
    "missing_field": "fields of 'low_rank' missing",
    "bad_shape": "malformed 'low_rank'.*do not chain",
    "bad_ndim": "malformed 'low_rank'.*left must be 2-D",
    "bad_dtype": "malformed 'low_rank'.*float32 or float64",
    "codebook_codes_out_of_range": "malformed 'codebook'.*codes must lie in",
    "codebook_n_cols_array": "malformed 'codebook'",
    "sign_bits_missing_seed": "fields of 'sign_bits' missing",
    "pruned_bad_indptr": "malformed 'pruned'.*never decrease",
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_load_foreign_files(tmp_path, case):
    path = FOREIGN[case](tmp_path / "f.npz")
    with pytest.raises(ValueError, match=FOREIGN_MESSAGE[case]) as info:
        load(path)
    assert str(path) in str(info.value)  # the message names the file


def test_load_object_field_names_the_file(tmp_path):
    arrays = _valid_arrays()
    arrays["left"] = np.array([None, 1], dtype=object)
    path = _write(tmp_path / "o.npz", **arrays)
    with pytest.raises(ValueError, match="left") as info:
        load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Constructor validation
# ---------------------------------------------------------------------------------------------

F32, F64 = np.float32, np.float64
_z = np.zeros


def _packed(n_rows, n_bytes, fill=0):
    return np.full((n_rows, n_bytes), fill, np.uint8)


BAD_CONSTRUCTIONS = [
    # LowRank
    ("lr_chain", lambda: LowRank(_z((4, 2)), _z((3, 5))), ValueError, "do not chain"),
    ("lr_dtypes", lambda: LowRank(_z((4, 2), F32), _z((2, 5))), TypeError, "share a dtype"),
    ("lr_int", lambda: LowRank(_z((4, 2), int), _z((2, 5), int)), TypeError, "left must be float"),
    ("lr_1d", lambda: LowRank(_z(4), _z((1, 5))), ValueError, "left must be 2-D"),
    ("lr_3d", lambda: LowRank(_z((4, 2)), _z((2, 5, 1))), ValueError, "right must be 2-D"),
    # SparseCodes
    ("sc_shape", lambda: SparseCodes(_z((4, 2), int), _z((4, 3)), _z((5, 6))), ValueError,
     "same shape"),
    ("sc_index_high", lambda: SparseCodes(np.full((4, 2), 5), _z((4, 2)), _z((5, 6))),
     ValueError, r"indices must lie in \[0, 5\)"),
    ("sc_index_negative", lambda: SparseCodes(np.full((4, 2), -1), _z((4, 2)), _z((5, 6))),
     ValueError, "indices must lie in"),
    ("sc_index_float", lambda: SparseCodes(_z((4, 2)), _z((4, 2)), _z((5, 6))), TypeError,
     "indices must be integers"),
    ("sc_dtypes", lambda: SparseCodes(_z((4, 2), int), _z((4, 2), F32), _z((5, 6))), TypeError,
     "share a dtype"),
    ("sc_dict_1d", lambda: SparseCodes(_z((4, 2), int), _z((4, 2)), _z(6)), ValueError,
     "dictionary must be 2-D"),
    # Codebook
    ("cb_n_cols_zero", lambda: Codebook(_z((3, 0), np.uint8), _z((4, 2)), 0), ValueError,
     "n_cols must be >= 1"),
    ("cb_n_cols_not_multiple", lambda: Codebook(_z((3, 2), np.uint8), _z((4, 2)), 5), ValueError,
     "n_cols=5 must be a positive multiple of the block size 2"),
    ("cb_code_columns", lambda: Codebook(_z((3, 2), np.uint8), _z((4, 2)), 6), ValueError,
     "codes must have n_cols / block_size = 3 columns"),
    ("cb_code_high", lambda: Codebook(np.full((3, 3), 4, np.uint8), _z((4, 2)), 6), ValueError,
     r"codes must lie in \[0, 4\)"),
    ("cb_code_float", lambda: Codebook(_z((3, 3)), _z((4, 2)), 6), TypeError,
     "codes must be integers"),
    ("cb_codebook_1d", lambda: Codebook(_z((3, 3), np.uint8), _z(4), 3), ValueError,
     "codebook must be 2-D"),
    ("cb_codebook_int", lambda: Codebook(_z((3, 3), np.uint8), _z((4, 1), int), 3), TypeError,
     "codebook must be float"),
    ("cb_packed_17_codes", lambda: Codebook(_packed(3, 2), _z((17, 1)), 4, packed=True),
     ValueError, "n_codes must be <= 16; got 17"),
    ("cb_packed_not_uint8", lambda: Codebook(_z((3, 2), np.uint16), _z((16, 1)), 4, packed=True),
     TypeError, "packed codes must be a 2-D uint8"),
    ("cb_packed_1d", lambda: Codebook(_z(2, np.uint8), _z((16, 1)), 4, packed=True),
     TypeError, "packed codes must be a 2-D uint8"),
    ("cb_packed_width", lambda: Codebook(_packed(3, 3), _z((16, 1)), 4, packed=True), ValueError,
     "packed codes must have 2 bytes per row; got 3"),
    ("cb_packed_width_odd", lambda: Codebook(_packed(3, 2), _z((16, 1)), 5, packed=True),
     ValueError, "packed codes must have 3 bytes per row; got 2"),
    ("cb_packed_low_nibble", lambda: Codebook(_packed(3, 2, 0x05), _z((5, 1)), 4, packed=True),
     ValueError, r"packed codes must lie in \[0, 5\)"),
    ("cb_packed_high_nibble", lambda: Codebook(_packed(3, 2, 0x50), _z((5, 1)), 4, packed=True),
     ValueError, r"packed codes must lie in \[0, 5\)"),
    # SignBits
    ("sb_bits_dtype", lambda: SignBits(_z((4, 1), np.int8), _z(8), 0, 3), TypeError,
     "bits must be a 2-D uint8"),
    ("sb_bits_1d", lambda: SignBits(_z(4, np.uint8), _z(8), 0, 3), TypeError,
     "bits must be a 2-D uint8"),
    ("sb_bits_width", lambda: SignBits(_z((4, 2), np.uint8), _z(8), 0, 3), ValueError,
     "ceil\\(n / 8\\) = 1 bytes per row"),
    ("sb_bits_width_short", lambda: SignBits(_z((4, 1), np.uint8), _z(9), 0, 3), ValueError,
     "ceil\\(n / 8\\) = 2 bytes per row"),
    ("sb_scale_2d", lambda: SignBits(_z((4, 1), np.uint8), _z((8, 1)), 0, 3), ValueError,
     "scale must be 1-D"),
    ("sb_scale_int", lambda: SignBits(_z((4, 1), np.uint8), _z(8, int), 0, 3), TypeError,
     "scale must be float"),
    ("sb_seed_negative", lambda: SignBits(_z((4, 1), np.uint8), _z(8), -1, 3), ValueError,
     r"seed must be (>= 0|<= 18446744073709551615)"),
    ("sb_seed_big", lambda: SignBits(_z((4, 1), np.uint8), _z(8), 2**64, 3), ValueError,
     r"seed must be (>= 0|<= 18446744073709551615)"),
    ("sb_n_rows", lambda: SignBits(_z((4, 1), np.uint8), _z(8), 0, 0), ValueError,
     "n_rows must be >= 1"),
    # Pruned
    ("pr_n_cols", lambda: Pruned(np.array([0, 0]), _z(0, int), 0, values=_z(0)), ValueError,
     "n_cols must be >= 1"),
    ("pr_indptr_float", lambda: Pruned(np.array([0.0, 1.0]), _z(1, int), 3, values=_z(1)),
     ValueError, "indptr must be a 1-D integer array"),
    ("pr_indptr_short", lambda: Pruned(np.array([0]), _z(0, int), 3, values=_z(0)), ValueError,
     "indptr must be a 1-D integer array of m \\+ 1 >= 2"),
    ("pr_indptr_start", lambda: Pruned(np.array([1, 1]), _z(1, int), 3, values=_z(1)),
     ValueError, "indptr must start at 0"),
    ("pr_indptr_decreasing", lambda: Pruned(np.array([0, 2, 1]), _z(1, int), 3, values=_z(1)),
     ValueError, "never decrease"),
    ("pr_indices_count", lambda: Pruned(np.array([0, 2]), _z(3, int), 3, values=_z(3)),
     ValueError, "indices must have indptr\\[-1\\] = 2 entries; got 3"),
    ("pr_indices_range", lambda: Pruned(np.array([0, 1]), np.array([3]), 3, values=_z(1)),
     ValueError, r"indices must lie in \[0, 3\)"),
    ("pr_values_count", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, values=_z(2)),
     ValueError, "values must have 1 entries; got 2"),
    ("pr_values_int", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, values=_z(1, int)),
     TypeError, "values must be float"),
    ("pr_neither", lambda: Pruned(np.array([0, 1]), _z(1, int), 3), ValueError,
     "give either values or codes"),
    ("pr_both", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, values=_z(1), codes=_z(1, int),
                               codebook=_z(2)), ValueError, "give either values or codes"),
    ("pr_values_codebook", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, values=_z(1),
                                          codebook=_z(2)), ValueError,
     "a codebook goes with codes"),
    ("pr_codes_no_codebook", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, codes=_z(1, int)),
     ValueError, "codes need a codebook"),
    ("pr_codes_range", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, codes=np.array([2]),
                                      codebook=_z(2)), ValueError, r"codes must lie in \[0, 2\)"),
    ("pr_codes_count", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, codes=_z(2, int),
                                      codebook=_z(2)), ValueError,
     "codes must have 1 entries; got 2"),
    ("pr_codebook_2d", lambda: Pruned(np.array([0, 1]), _z(1, int), 3, codes=_z(1, int),
                                      codebook=_z((2, 1))), ValueError, "codebook must be 1-D"),
]


@pytest.mark.parametrize(("build_bad", "exc", "match"), [c[1:] for c in BAD_CONSTRUCTIONS],
                         ids=[c[0] for c in BAD_CONSTRUCTIONS])
def test_constructor_validation(build_bad, exc, match):
    with pytest.raises(exc, match=match):
        build_bad()


@pytest.mark.parametrize("case", ["codebook_n_cols", "codebook_n_cols_str", "pruned_n_cols",
                                  "sign_bits_n_rows", "sign_bits_seed"])
def test_integer_scalar_fields_reject_non_integers(case):
    rng = np.random.default_rng(0)
    cb = build("codebook_u8", np.float64, rng)
    pr = build("pruned_values", np.float64, rng)
    sb = build("sign_bits", np.float64, rng)
    make = {
        "codebook_n_cols": lambda: Codebook(cb.codes, cb.codebook, 12.5),
        "codebook_n_cols_str": lambda: Codebook(cb.codes, cb.codebook, "12"),
        "pruned_n_cols": lambda: Pruned(pr.indptr, pr.indices, 10.7, values=pr.values),
        "sign_bits_n_rows": lambda: SignBits(sb.bits, sb.scale, sb.seed, 9.9),
        "sign_bits_seed": lambda: SignBits(sb.bits, sb.scale, 1.5, sb.n_rows),
    }[case]
    with pytest.raises(TypeError):
        make()


def test_sign_bits_needs_at_least_one_bit():
    with pytest.raises(ValueError, match="bits"):
        SignBits(np.zeros((0, 1), np.uint8), np.ones(7), 3, 5)


def test_factorization_is_abstract():
    with pytest.raises(TypeError):
        Factorization()
