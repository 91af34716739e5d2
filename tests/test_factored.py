"""Native factored products: ``matmul`` and ``matmul_backward`` of every factorization.

First the batch-1 4-bit codebook GEMV binding (decoded in registers). Reference: numpy
``x @ codebook[codes]`` in float64. Tolerance: float32 sums of m products of unit-scale values,
relative to max|y|: 1e-5 (every path accumulates in float32, rows in order).

Then every form's product ``x @ W`` and its backward pass (dx and the gradients of the trainable
fields) against float64 numpy references, on every instruction set, batches 1, 3 and 64, odd
shapes, float32 and float64, 1 and 2 threads (bitwise equal), leading axes, mixed dtypes,
central finite differences and hypothesis property tests. The tolerance is derived in the
comment that opens that section: ``|got - ref| <= 8 * eps * sqrt(K) * S`` entry by entry, with S
the same computation on absolute values and K its depth (float32, m = 300: 1.7e-5 of S;
float64: 3.1e-14 of S).
"""

import concurrent.futures
import contextlib
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from threadpoolctl import ThreadpoolController, threadpool_limits

import matcompress as mc
from conftest import supported_isas, use_isa
from matcompress import _core
from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes

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


# =============================================================================================
# Every form's matmul and matmul_backward, from the factors
# =============================================================================================
#
# References (float64, numpy only, from the arrays the test generated — not from the object's
# helpers): the dense W~ of each form built by hand (4-bit codes packed by hand, sign bits by
# np.packbits, CSR rows walked by hand); y = x W~, dx = dy W~^T; the gradients from the formulas
# of the module docstring, with dW = x^T dy summed over every leading axis. The one library call
# in a reference is hashing.projection (SignBits' R, defined bit for bit by the seed and tested
# in test_simhash.py), through W.projection().
#
# Tolerance (derived once, used for every output): every entry is a sum of products, possibly
# through a chain of products (x L R, dy D^T C^T, ...). For a chain of total depth K (the sum of
# the inner dimensions, plus the batch for the gradients), rounding in unit roundoff u in ANY
# order or blocking (threads, SIMD lanes, FMA, tiles) gives
#     |computed - exact| <= lambda * sqrt(K) * u * S      (Higham & Mary, SIAM J. Sci. Comput.
# 41(5), 2019: probability >= 1 - 2 exp(-lambda^2 / 2) for independent rounding errors; the
# worst case is K * u * S), where S is the same chain computed on absolute values
# (|x| |L| |R|, |C|^T |x|^T |dy|, ...). We check
#     |got - ref| <= 8 * eps * sqrt(K) * S,     eps = 2u = np.finfo(working dtype).eps,
# i.e. lambda = 8 sqrt(2) ~ 11 (per-entry failure probability ~1e-28), which also absorbs the
# float64 reference's own rounding in the float64 cases. The working dtype is float32 when x or
# W is float32. Example: m = 300, float32 forward of a codebook: 8 * 1.19e-7 * sqrt(302) =
# 1.7e-5 of S; float64: 3.1e-14 of S. Where S = 0 (empty rows, unused codes, zero values) the
# result must be exactly 0. A wrong entry, a lost tail or a mis-decoded code in y or dx is an
# error of O(S / K) or larger: 1/K >> 8 eps sqrt(K) for every K here (K <= ~900 in float32).
# Only a single lost term of a very long segment sum (dcodebook at 300 x 513, K ~ 1e5) could
# hide under the bound; the small shapes catch those. A float32 accumulation in a float64
# product is ~1e8 times the float64 bound. NaN never passes (the check is `err <= bound`).
#
# Threads: every product is computed under an OpenMP limit of 1 and of 2 threads
# (threadpoolctl, user_api="openmp": what n_threads=None resolves to, see test_threads.py) and
# the two must be bitwise equal (factored.h: sums in an order fixed by the shapes alone). The
# kernels size their threads by the work (2e6-1e7 multiply-adds per thread), so the small
# shapes run on one thread either way; test_same_bits_for_1_and_2_threads_on_large_problems
# takes shapes where 2 threads do run.

F64 = np.float64
_THREADPOOLS = ThreadpoolController()  # one scan of the loaded libraries, reused by every test


def omp_threads(n):
    """The OpenMP thread limit that n_threads=None resolves to (the public methods' default)."""
    return _THREADPOOLS.limit(limits=n, user_api="openmp")


@dataclasses.dataclass
class Case:
    """A factorization with its float64 reference, built from the generated arrays."""

    W: object
    dense: np.ndarray        # W~ (m, n), float64
    abs_dense: np.ndarray    # the factor chain on absolute values (m, n): |L| |R|, |C| |D|, ...
    inner: int               # depth the factor chain adds to a product with W~ (r, k + s, ...)
    grads: object            # (x2, dy2) float64 2-D -> {field: (ref, abs scale, depth K)}


def _abs(a):
    return np.abs(np.asarray(a, F64))


def make_low_rank(rng, m, n, dtype, *, r=9):
    L = rng.standard_normal((m, r)).astype(dtype)
    R = rng.standard_normal((r, n)).astype(dtype)
    L64, R64 = L.astype(F64), R.astype(F64)

    def grads(x, dy):
        b = x.shape[0]
        dW = x.T @ dy
        adW = _abs(x).T @ _abs(dy)
        return {"left": (dW @ R64.T, adW @ _abs(R64).T, b + n + 2),
                "right": (L64.T @ dW, _abs(L64).T @ adW, b + m + 2)}

    return Case(LowRank(L, R), L64 @ R64, _abs(L64) @ _abs(R64), r, grads)


def make_sparse_codes(rng, m, n, dtype, *, s=3, k=11, index_dtype=np.int32, duplicates=False):
    idx = rng.integers(0, k, (m, s))
    vals = rng.standard_normal((m, s))
    if duplicates and s >= 2:
        idx[::2, 1] = idx[::2, 0]          # the same atom twice in every other row
        idx[::3, -1] = idx[::3, 0]
        vals[1::3, 0] = 0.0                # zero values, some on a duplicate
        vals[::4, :] = 0.0                 # rows that are entirely zero
    # The stored order (SparseCodes keeps each row's terms sorted by atom; see
    # test_sparse_codes_rows_are_stored_in_atom_order): the gradient of values follows it.
    order = np.argsort(idx, axis=1, kind="stable")
    idx, vals = np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
    D = rng.standard_normal((k, n)).astype(dtype)
    vals = vals.astype(dtype)
    V64, D64 = vals.astype(F64), D.astype(F64)
    C = np.zeros((m, k))
    aC = np.zeros((m, k))
    rows = np.repeat(np.arange(m), s)
    np.add.at(C, (rows, idx.ravel()), V64.ravel())
    np.add.at(aC, (rows, idx.ravel()), np.abs(V64.ravel()))
    dense = np.zeros((m, n))
    abs_dense = np.zeros((m, n))
    for t in range(s):
        dense += V64[:, t, None] * D64[idx[:, t]]
        abs_dense += np.abs(V64[:, t, None]) * np.abs(D64[idx[:, t]])

    def grads(x, dy):
        b = x.shape[0]
        dW = x.T @ dy
        adW = _abs(x).T @ _abs(dy)
        return {"values": (np.einsum("in,isn->is", dW, D64[idx]),
                           np.einsum("in,isn->is", adW, np.abs(D64[idx])), b + n + 2),
                "dictionary": (C.T @ dW, aC.T @ adW, b + m + s + 2)}

    W = SparseCodes(idx.astype(index_dtype), vals, D)
    return Case(W, dense, abs_dense, k + s, grads)


def pack_4bit_by_hand(codes):
    """Two codes per byte along each row, the even block in the low nibble; an odd last block
    leaves the high nibble 0."""
    m, nb = codes.shape
    out = np.zeros((m, (nb + 1) // 2), np.uint8)
    out[:, :] = codes[:, 0::2]
    out[:, : nb // 2] |= (codes[:, 1::2] << 4).astype(np.uint8)
    return out


def make_codebook(rng, m, n, dtype, *, b=1, n_codes=16, code_dtype=np.uint8, packed=False):
    nb = max(1, n // b)
    n = nb * b
    codes = rng.integers(0, n_codes, (m, nb))
    cb = rng.standard_normal((n_codes, b)).astype(dtype)
    cb64 = cb.astype(F64)
    dense = cb64[codes].reshape(m, n)
    stored = pack_4bit_by_hand(codes) if packed else codes.astype(code_dtype)
    W = Codebook(stored, cb, n, packed=packed)
    depth = int(np.bincount(codes.ravel()).max())  # terms of the largest segment sum

    def grads(x, dy):
        bsz = x.shape[0]
        dW = (x.T @ dy).reshape(m * nb, b)
        adW = (_abs(x).T @ _abs(dy)).reshape(m * nb, b)
        g = np.zeros((n_codes, b))
        ag = np.zeros((n_codes, b))
        np.add.at(g, codes.ravel(), dW)
        np.add.at(ag, codes.ravel(), adW)
        return {"codebook": (g, ag, bsz + depth + 2)}

    return Case(W, dense, np.abs(dense), 0, grads)


def make_sign_bits(rng, m, n, dtype, *, k=37, padding=False, seed=None):
    signs = rng.random((k, n)) < 0.5
    bits = np.packbits(signs, axis=1, bitorder="little")
    if padding and n % 8:
        bits[:, -1] |= np.uint8((0xFF << (n % 8)) & 0xFF)  # set the unused bits: must be ignored
    scale = (rng.standard_normal(n) * rng.uniform(0.5, 2.0, n)).astype(dtype)
    if seed is None:
        seed = int(rng.integers(0, 2**63)) * 2 + 1  # uses both 32-bit words of the key
    W = SignBits(bits, scale, seed, m)
    R = W.projection().astype(F64)
    S = np.where(signs, 1.0, -1.0)
    sc = scale.astype(F64)
    dense = (R @ S) * sc
    abs_dense = (np.abs(R) @ np.ones((k, n))) * np.abs(sc)

    def grads(x, dy):
        b = x.shape[0]
        return {"scale": (np.sum(dy * (x @ R @ S), axis=0),
                          np.sum(_abs(dy) * (_abs(x) @ np.abs(R) @ np.ones((k, n))), axis=0),
                          m + k + b + 2)}

    return Case(W, dense, abs_dense, k + 1, grads)


def _fit_index_dtype(dt, upper):
    dt = np.dtype(dt)
    while np.iinfo(dt).max < upper - 1:
        dt = {np.dtype(np.uint8): np.dtype(np.uint16), np.dtype(np.uint16): np.dtype(np.uint32),
              np.dtype(np.int8): np.dtype(np.int16), np.dtype(np.int16): np.dtype(np.int32)}[dt]
    return dt


def make_pruned(rng, m, n, dtype, *, density=0.3, index_dtype=np.uint16, indptr_dtype=np.int64,
                codes=False, n_codes=7, unsorted=False, empty_rows=True):
    keep = rng.random((m, n)) < density
    if empty_rows:
        keep[rng.random(m) < 0.3] = False
    cols_sorted = [np.flatnonzero(row) for row in keep]
    counts = np.array([c.size for c in cols_sorted], np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    nnz = int(indptr[-1])
    rows = np.repeat(np.arange(m), counts)
    cols = np.concatenate(cols_sorted) if nnz else np.zeros(0, np.int64)
    if codes:
        code = rng.integers(0, n_codes, nnz)
        cb = rng.standard_normal(n_codes).astype(dtype)
        vals64 = cb.astype(F64)[code]
    else:
        vals = rng.standard_normal(nnz).astype(dtype)
        vals64 = vals.astype(F64)
    # The caller's order: shuffled within each row when `unsorted`.
    order = np.arange(nnz)
    if unsorted:
        for i in range(m):
            rng.shuffle(order[indptr[i]:indptr[i + 1]])
    given_indices = cols[order].astype(_fit_index_dtype(index_dtype, n))
    kwargs = (dict(codes=code[order].astype(np.uint8 if n_codes <= 256 else np.uint16),
                   codebook=cb) if codes else dict(values=vals[order]))
    W = Pruned(indptr.astype(indptr_dtype), given_indices, n, **kwargs)
    dense = np.zeros((m, n))
    dense[rows, cols] = vals64

    def grads(x, dy):
        b = x.shape[0]
        dv = (x.T @ dy)[rows, cols]
        adv = (_abs(x).T @ _abs(dy))[rows, cols]
        if not codes:
            return {"values": (dv, adv, b + 2)}
        depth = int(np.bincount(code).max()) if nnz else 0
        return {"codebook": (np.bincount(code, weights=dv, minlength=n_codes),
                             np.bincount(code, weights=adv, minlength=n_codes), b + depth + 2)}

    case = Case(W, dense, np.abs(dense), 0, grads)
    # The stored CSR must be the sorted one (the gradients of `values` follow the stored order).
    assert_array_equal(W.indptr, indptr)
    assert_array_equal(W.indices, cols)
    assert_array_equal(W.codes if codes else W.values, code if codes else vals)
    return case


FORMS = {
    "low_rank": lambda rng, m, n, dt: make_low_rank(rng, m, n, dt, r=9),
    "low_rank_r1": lambda rng, m, n, dt: make_low_rank(rng, m, n, dt, r=1),
    "sparse_codes": lambda rng, m, n, dt: make_sparse_codes(rng, m, n, dt, s=3, k=11),
    "sparse_codes_dup_zero_u8": lambda rng, m, n, dt: make_sparse_codes(
        rng, m, n, dt, s=4, k=40, index_dtype=np.uint8, duplicates=True),
    "sparse_codes_s1_i64": lambda rng, m, n, dt: make_sparse_codes(
        rng, m, n, dt, s=1, k=300, index_dtype=np.int64),
    "sparse_codes_s0": lambda rng, m, n, dt: make_sparse_codes(rng, m, n, dt, s=0, k=5),
    "codebook_u8": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, n_codes=200),
    "codebook_u8_256": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, n_codes=256),
    "codebook_4bit": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, n_codes=16, packed=True),
    "codebook_4bit_5codes": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, n_codes=5,
                                                                packed=True),
    "codebook_4bit_b2": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, b=2, packed=True),
    "codebook_4bit_b4": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, b=4, n_codes=11,
                                                            packed=True),
    "codebook_4bit_b3": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, b=3, n_codes=9,
                                                            packed=True),
    "codebook_u8_b8": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, b=8, n_codes=100),
    "codebook_u16_b2": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, b=2, n_codes=300,
                                                           code_dtype=np.uint16),
    "codebook_i32_b4": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, b=4, n_codes=70,
                                                           code_dtype=np.int32),
    "codebook_i64": lambda rng, m, n, dt: make_codebook(rng, m, n, dt, n_codes=1000,
                                                        code_dtype=np.int64),
    "sign_bits": lambda rng, m, n, dt: make_sign_bits(rng, m, n, dt, k=37),
    "sign_bits_k1": lambda rng, m, n, dt: make_sign_bits(rng, m, n, dt, k=1),
    "sign_bits_k300": lambda rng, m, n, dt: make_sign_bits(rng, m, n, dt, k=300),
    "sign_bits_k64_padding": lambda rng, m, n, dt: make_sign_bits(rng, m, n, dt, k=64,
                                                                  padding=True),
    "pruned_values": lambda rng, m, n, dt: make_pruned(rng, m, n, dt),
    "pruned_values_u8_i32ptr_unsorted": lambda rng, m, n, dt: make_pruned(
        rng, m, n, dt, index_dtype=np.uint8, indptr_dtype=np.int32, unsorted=True),
    "pruned_values_u32_dense": lambda rng, m, n, dt: make_pruned(
        rng, m, n, dt, density=0.9, index_dtype=np.uint32, empty_rows=False),
    "pruned_values_i64_sparse": lambda rng, m, n, dt: make_pruned(
        rng, m, n, dt, density=0.02, index_dtype=np.int64),
    "pruned_codes": lambda rng, m, n, dt: make_pruned(rng, m, n, dt, codes=True,
                                                      index_dtype=np.uint8),
    "pruned_codes_u32_i32ptr_unsorted": lambda rng, m, n, dt: make_pruned(
        rng, m, n, dt, codes=True, n_codes=300, index_dtype=np.uint32, indptr_dtype=np.int32,
        unsorted=True),
    "pruned_empty": lambda rng, m, n, dt: make_pruned(rng, m, n, dt, density=0.0),
}

#: Every variant, as parameters.
FORM_PARAMS = sorted(FORMS)

#: One variant per form: for the tests that do not need every variant.
MAIN_FORMS = ["low_rank", "sparse_codes_dup_zero_u8", "codebook_4bit_b2", "codebook_u16_b2",
              "sign_bits", "pruned_values_u8_i32ptr_unsorted", "pruned_codes"]

EXPECTED_FIELDS = {LowRank: ("left", "right"), SparseCodes: ("values", "dictionary"),
                   Codebook: ("codebook",), SignBits: ("scale",)}

SHAPES = [(1, 1), (3, 7), (13, 65), (65, 13), (257, 518), (300, 513)]


def make_case(form, m, n, dtype, seed=0):
    rng = np.random.default_rng([seed, m, n, sorted(FORMS).index(form), np.dtype(dtype).num])
    return FORMS[form](rng, m, n, np.dtype(dtype))


def expected_fields(W):
    if isinstance(W, Pruned):
        return ("values",) if W.values is not None else ("codebook",)
    return EXPECTED_FIELDS[type(W)]


def assert_within(got, ref, scale, depth, eps, what):
    """|got - ref| <= 8 eps sqrt(depth) scale, entry by entry (see the section comment)."""
    got = np.asarray(got, F64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    bound = 8.0 * eps * np.sqrt(depth) * scale
    err = np.abs(got - ref)
    bad = ~(err <= bound)  # NaN fails
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err - bound, nan=np.inf),
                                                    -np.inf)), bad.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} entries out of tolerance (depth {depth}, "
            f"eps {eps:.3g}); worst at {worst}: got {got[worst]!r}, expected {ref[worst]!r}, "
            f"bound {bound[worst]:.3g}")


def working_eps(x_dtype, w_dtype):
    xf = np.dtype(x_dtype) if np.dtype(x_dtype).kind == "f" else np.dtype(F64)
    return max(np.finfo(xf).eps, np.finfo(w_dtype).eps)


def check_against_reference(case, x, dy, y, dx, grads):
    """y = x @ W, dx and the gradients of L = sum(dy * (x @ W)) against the float64 reference."""
    W = case.W
    m, n = W.shape
    out_dtype = np.result_type(x.dtype if x.dtype.kind == "f" else F64, W.dtype)
    eps = working_eps(x.dtype, W.dtype)
    x2 = np.asarray(x, F64).reshape(-1, m)
    dy2 = np.asarray(dy, F64).reshape(-1, n)
    assert y.shape == x.shape[:-1] + (n,) and y.dtype == out_dtype, (y.shape, y.dtype)
    assert_within(y.reshape(-1, n), x2 @ case.dense, _abs(x2) @ case.abs_dense,
                  m + case.inner + 2, eps, "y")
    assert dx.shape == x.shape and dx.dtype == out_dtype, (dx.shape, dx.dtype)
    assert_within(dx.reshape(-1, m), dy2 @ case.dense.T, _abs(dy2) @ case.abs_dense.T,
                  n + case.inner + 2, eps, "dx")
    assert tuple(W.trainable_fields) == expected_fields(W)
    assert set(grads) == set(expected_fields(W)), sorted(grads)
    refs = case.grads(x2, dy2)
    for name in expected_fields(W):
        field = getattr(W, name)
        g = grads[name]
        assert isinstance(g, np.ndarray) and g.shape == field.shape and g.dtype == field.dtype, \
            (name, getattr(g, "shape", None), getattr(g, "dtype", None), field.shape, field.dtype)
        ref, scale, depth = refs[name]
        assert_within(g, ref, scale, depth, eps, f"d{name}")


def run_both_thread_counts(W, x, dy):
    """(y, dx, grads) under 1 and under 2 OpenMP threads; asserts they are bitwise equal."""
    out = []
    for nt in (1, 2):
        with omp_threads(nt):
            y = W.matmul(x)
            dx, grads = W.matmul_backward(x, dy)
        out.append((y, dx, grads))
    (y1, dx1, g1), (y2, dx2, g2) = out
    assert_array_equal(y1, y2, err_msg="y: 1 and 2 threads differ")
    assert_array_equal(dx1, dx2, err_msg="dx: 1 and 2 threads differ")
    assert set(g1) == set(g2)
    for name in g1:
        assert_array_equal(g1[name], g2[name], err_msg=f"d{name}: 1 and 2 threads differ")
    return out[0]


@contextlib.contextmanager
def about(what):
    """Names the sub-case (e.g. the batch) in a failure raised inside the block."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from exc


@pytest.mark.parametrize("m, n", SHAPES)
@pytest.mark.parametrize("form", FORM_PARAMS)
def test_products_and_gradients_match_numpy(isa, form, m, n, dtype):
    # Batches 1 (the GEMV and register paths), 3 and 64 of one factorization.
    case = make_case(form, m, n, dtype)
    m, n = case.W.shape  # block codebooks round n to whole blocks
    for batch in (1, 3, 64):
        with about(f"batch {batch}"):
            rng = np.random.default_rng([m, n, batch, 7])
            x = rng.standard_normal((batch, m)).astype(dtype)
            dy = rng.standard_normal((batch, n)).astype(dtype)
            x0, dy0 = x.copy(), dy.copy()
            y, dx, grads = run_both_thread_counts(case.W, x, dy)
            check_against_reference(case, x, dy, y, dx, grads)
            assert_array_equal(x, x0)
            assert_array_equal(dy, dy0)


@pytest.mark.parametrize("x_dtype, w_dtype", [(np.float64, np.float32), (np.float32, np.float64)],
                         ids=["x64-W32", "x32-W64"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("form", FORM_PARAMS)
def test_mixed_dtypes_follow_result_type(form, batch, x_dtype, w_dtype):
    # y and dx have np.result_type(x, W) (float64 here); gradients keep the dtype of their field.
    case = make_case(form, 13, 65, w_dtype)
    m, n = case.W.shape
    rng = np.random.default_rng([m, n, batch, 11])
    x = rng.standard_normal((batch, m)).astype(x_dtype)
    dy = rng.standard_normal((batch, n)).astype(x_dtype)
    y, dx, grads = run_both_thread_counts(case.W, x, dy)
    assert y.dtype == dx.dtype == np.float64
    check_against_reference(case, x, dy, y, dx, grads)


@pytest.mark.parametrize("x_dtype", [np.int8, np.int32, np.int64, np.uint16, np.bool_])
@pytest.mark.parametrize("form", MAIN_FORMS + ["codebook_4bit", "sign_bits_k64_padding"])
def test_matmul_of_integer_x_is_float64(form, x_dtype):
    case = make_case(form, 13, 65, np.float32)
    m, n = case.W.shape
    rng = np.random.default_rng(5)
    for batch in ((), (1,), (4,)):
        x = rng.integers(0, 2 if x_dtype is np.bool_ else 5, batch + (m,)).astype(x_dtype)
        y = case.W.matmul(x)
        assert y.dtype == np.float64 and y.shape == batch + (n,)
        x2 = x.reshape(-1, m).astype(F64)
        assert_within(y.reshape(-1, n), x2 @ case.dense, x2 @ case.abs_dense,
                      m + case.inner + 2, np.finfo(np.float32).eps, "y")


@pytest.mark.parametrize("lead", [(2, 3), (), (1,), (2, 1, 2)], ids=str)
@pytest.mark.parametrize("form", FORM_PARAMS)
def test_leading_dims(form, lead, dtype):
    case = make_case(form, 13, 20, dtype)
    W = case.W
    m, n = W.shape
    rng = np.random.default_rng([len(lead), 3])
    x = rng.standard_normal(lead + (m,)).astype(dtype)
    dy = rng.standard_normal(lead + (n,)).astype(dtype)
    y = W.matmul(x)
    dx, grads = W.matmul_backward(x, dy)
    assert y.shape == lead + (n,) and dx.shape == lead + (m,)
    check_against_reference(case, x, dy, y, dx, grads)
    # The same as the 2-D call on the flattened batch, bit for bit.
    dx2, grads2 = W.matmul_backward(x.reshape(-1, m), dy.reshape(-1, n))
    assert_array_equal(y.reshape(-1, n), W.matmul(x.reshape(-1, m)))
    assert_array_equal(dx.reshape(-1, m), dx2)
    for name in grads:
        assert_array_equal(grads[name], grads2[name])


@pytest.mark.parametrize("form", MAIN_FORMS)
def test_strided_and_fortran_inputs(form, dtype):
    case = make_case(form, 13, 30, dtype)
    W = case.W
    m, n = W.shape
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, m)).astype(dtype)
    dy = rng.standard_normal((5, n)).astype(dtype)
    y_ref = W.matmul(x)
    dx_ref, g_ref = W.matmul_backward(x, dy)
    xs = np.repeat(x, 2, axis=1)[:, ::2]                       # a strided view
    dys = np.zeros((10, n), dtype)[::2]
    dys[...] = dy
    variants = [(np.asfortranarray(x), np.asfortranarray(dy)), (xs, dys),
                (x.astype(x.dtype.newbyteorder(">")), dy.astype(dy.dtype.newbyteorder(">")))]
    for xv, dyv in variants:
        assert_array_equal(W.matmul(xv), y_ref)
        dx, g = W.matmul_backward(xv, dyv)
        assert_array_equal(dx, dx_ref)
        for name in g_ref:
            assert_array_equal(g[name], g_ref[name])
    # Negative strides (rows reversed) and zero strides (a broadcast, read-only row). A row's
    # position in the batch may change its rounding (GEMM tails, GEMV at batch 1): compared
    # with the reference, not bit for bit.
    xb, dyb = np.broadcast_to(x[0], (4, m)), np.broadcast_to(dy[0], (4, n))
    for xv, dyv in ((x[::-1], dy[::-1]), (xb, dyb)):
        y = W.matmul(xv)
        dx, g = W.matmul_backward(xv, dyv)
        check_against_reference(case, xv, dyv, y, dx, g)


@pytest.mark.parametrize("form", FORM_PARAMS)
def test_need_dx_and_need_grads(form):
    case = make_case(form, 20, 33, np.float32)
    W = case.W
    m, n = W.shape
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, m)).astype(np.float32)
    dy = rng.standard_normal((3, n)).astype(np.float32)
    dx_full, g_full = W.matmul_backward(x, dy)
    dx, g = W.matmul_backward(x, dy, need_grads=False)
    assert g == {} and isinstance(g, dict)
    assert_array_equal(dx, dx_full)
    dx, g = W.matmul_backward(x, dy, need_dx=False)
    assert dx is None and set(g) == set(g_full)
    for name in g:
        assert_array_equal(g[name], g_full[name])
    dx, g = W.matmul_backward(x, dy, need_dx=False, need_grads=False)
    assert dx is None and g == {}
    with pytest.raises(TypeError):
        W.matmul_backward(x, dy, False)  # the flags are keyword-only


@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=str)
@pytest.mark.parametrize("form", FORM_PARAMS)
def test_empty_batch(form, lead, dtype):
    W = make_case(form, 7, 9, dtype).W
    m, n = W.shape
    x = np.zeros(lead + (m,), dtype)
    dy = np.zeros(lead + (n,), dtype)
    y = W.matmul(x)
    assert y.shape == lead + (n,) and y.dtype == dtype
    dx, grads = W.matmul_backward(x, dy)
    assert dx.shape == lead + (m,) and dx.dtype == dtype
    assert set(grads) == set(expected_fields(W))
    for name, g in grads.items():
        field = getattr(W, name)
        assert g.shape == field.shape and g.dtype == field.dtype
        assert_array_equal(g, np.zeros_like(field))  # no term: exactly 0


@pytest.mark.parametrize("form", FORM_PARAMS)
def test_gradients_match_central_differences(form):
    # L(f) = sum(dy * (x @ W(f).to_dense())) is linear in every trainable field f, so the
    # central difference with h = 0.5 is exact up to rounding: each L is a sum of depth
    # K = m + inner + batch * n + 4 rounded in float64, so |L_computed - L| <= 8 eps sqrt(K) La
    # (La: L on absolute values, doubled for the perturbation) and the difference quotient is
    # off by at most that / h; the gradient itself by its own bound.
    case = make_case(form, 6, 10, F64, seed=3)
    W = case.W
    m, n = W.shape
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, m))
    dy = rng.standard_normal((4, n))
    _, grads = W.matmul_backward(x, dy, need_dx=False)
    refs = case.grads(x, dy)
    h = 0.5
    eps = np.finfo(F64).eps
    La = 2 * float(np.sum(np.abs(dy) * (np.abs(x) @ case.abs_dense))) + 1.0
    K = m + case.inner + x.shape[0] * n + 4

    def loss(**fields):
        return float(np.sum(dy * (x @ dataclasses.replace(W, **fields).to_dense())))

    checked = 0
    for name in expected_fields(W):
        field = np.array(getattr(W, name))
        _, gscale, gdepth = refs[name]
        live = np.flatnonzero(gscale.ravel() > 0)
        if live.size == 0:
            continue
        for i in rng.choice(live, size=min(4, live.size), replace=False):
            plus, minus = field.copy(), field.copy()
            plus.flat[i] += h
            minus.flat[i] -= h
            fd = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * h)
            g = grads[name].flat[i]
            tol = 8 * eps * (np.sqrt(K) * La / h + np.sqrt(gdepth) * gscale.flat[i])
            assert abs(fd - g) <= tol, (name, i, fd, g, tol)
            checked += 1
    if form not in ("pruned_empty", "sparse_codes_s0"):  # the others have live entries
        assert checked > 0


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("form", FORM_PARAMS)
def test_repeatable_and_blas_thread_independent(form, batch):
    case = make_case(form, 300, 513, np.float32)
    W = case.W
    m, n = W.shape
    rng = np.random.default_rng(13)
    x = rng.standard_normal((batch, m)).astype(np.float32)
    dy = rng.standard_normal((batch, n)).astype(np.float32)
    first = (W.matmul(x), *W.matmul_backward(x, dy))
    runs = [(W.matmul(x), *W.matmul_backward(x, dy)) for _ in range(2)]
    with threadpool_limits(limits=1, user_api="blas"):
        runs.append((W.matmul(x), *W.matmul_backward(x, dy)))
    for y, dx, g in runs:
        assert_array_equal(y, first[0])
        assert_array_equal(dx, first[1])
        for name in first[2]:
            assert_array_equal(g[name], first[2][name])


def test_pruned_sorts_a_copy_of_unsorted_indices():
    indptr = np.array([0, 3, 3, 5], np.int32)
    indices = np.array([4, 0, 2, 3, 1], np.uint8)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    before = (indices.copy(), values.copy())
    W = Pruned(indptr, indices, 5, values=values)
    assert_array_equal(indices, before[0])
    assert_array_equal(values, before[1])
    assert_array_equal(W.indices, [0, 2, 4, 1, 3])
    assert_array_equal(W.values, [2.0, 3.0, 1.0, 5.0, 4.0])
    dense = np.zeros((3, 5))
    dense[0, [4, 0, 2]] = [1.0, 2.0, 3.0]
    dense[2, [3, 1]] = [4.0, 5.0]
    assert_array_equal(W.to_dense(), dense)
    x = np.array([[1.0, 10.0, 100.0]])
    dy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert_array_equal(W.matmul(x), x @ dense)
    dx, g = W.matmul_backward(x, dy)
    assert_array_equal(dx, dy @ dense.T)
    # dvalues[p] = (x^T dy)[row(p), indices[p]] in the stored (sorted) order.
    assert_array_equal(g["values"], [1.0, 3.0, 5.0, 200.0, 400.0])


def test_small_known_answers():
    # Hand-computed: W = [[1, 2], [3, 4]] in every form that can hold it exactly.
    x = np.array([[1.0, -1.0]])
    dy = np.array([[2.0, 1.0]])
    lr = LowRank(np.array([[1.0], [3.0]]), np.array([[1.0, 2.0]]))  # W = [[1, 2], [3, 6]]
    assert_array_equal(lr.matmul(x), [[-2.0, -4.0]])
    dx, g = lr.matmul_backward(x, dy)
    assert_array_equal(dx, [[4.0, 12.0]])
    assert_array_equal(g["left"], [[4.0], [-4.0]])    # x^T dy right^T = [[2,1],[-2,-1]] [1,2]^T
    assert_array_equal(g["right"], [[-4.0, -2.0]])    # left^T x^T dy = [1, 3] [[2,1],[-2,-1]]
    cb = Codebook(np.array([[0, 1], [2, 3]], np.uint8), np.array([[1.0], [2.0], [3.0], [4.0]]), 2)
    assert_array_equal(cb.matmul(x), [[-2.0, -2.0]])
    dx, g = cb.matmul_backward(x, dy)
    assert_array_equal(dx, [[4.0, 10.0]])
    assert_array_equal(g["codebook"], [[2.0], [1.0], [-2.0], [-1.0]])
    pr = Pruned(np.array([0, 1, 2]), np.array([1, 0]), 2, codes=np.array([0, 0]),
                codebook=np.array([5.0, 7.0]))  # W = [[0, 5], [5, 0]]
    assert_array_equal(pr.matmul(x), [[-5.0, 5.0]])
    dx, g = pr.matmul_backward(x, dy)
    assert_array_equal(dx, [[5.0, 10.0]])
    assert_array_equal(g["codebook"], [-1.0, 0.0])   # dW[0, 1] + dW[1, 0] = 1 - 2; code 1 unused


# Problems large enough that the kernels split their work over 2 threads (each kernel sizes its
# threads by its work: 2e6 to 1e7 multiply-adds per thread), where the small shapes above run
# on one thread whatever the limit. Same bits for 1 and 2 threads, and close to the reference.
LARGE = [
    pytest.param("low_rank_r300", 10, 1300, 128),          # GEMMs split into panels
    pytest.param("sparse_codes_s1_i64", 1500, 1300, 128),
    pytest.param("sparse_codes_dup_zero_u8", 8000, 20, 300),  # the code scatter and gathers
    pytest.param("codebook_u8", 1100, 1300, 64),
    pytest.param("codebook_4bit", 4500, 600, 40),       # more row tiles than gradient groups
    pytest.param("codebook_4bit", 3000, 3000, 1),       # the register GEMV on 2 threads
    pytest.param("codebook_i32_b4", 2000, 1200, 33),
    pytest.param("sign_bits", 1500, 1300, 64),
    pytest.param("sign_bits_k300", 3000, 3000, 1),      # the sign GEMV on 2 threads
    pytest.param("pruned_values_u32_dense", 1500, 1300, 64),
    pytest.param("pruned_values", 3000, 3000, 1),
    pytest.param("pruned_codes", 2000, 2500, 7),
]


def _large_case(form, m, n, dtype):
    if form == "low_rank_r300":
        return make_low_rank(np.random.default_rng([m, n]), m, n, np.dtype(dtype), r=300)
    return make_case(form, m, n, dtype)


@pytest.mark.parametrize("form, m, n, batch", LARGE)
def test_same_bits_for_1_and_2_threads_on_large_problems(form, m, n, batch, dtype):
    assert _core.default_threads() >= 2 or pytest.skip("needs 2 threads")
    case = _large_case(form, m, n, dtype)
    m, n = case.W.shape
    rng = np.random.default_rng([m, n, batch])
    x = rng.standard_normal((batch, m)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    y, dx, grads = run_both_thread_counts(case.W, x, dy)
    check_against_reference(case, x, dy, y, dx, grads)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("form", ["pruned_values_i64_sparse", "pruned_codes_u32_i32ptr_unsorted"])
def test_pruned_wider_than_16_bit_indices(isa, form, batch, dtype):
    # n > 65536: the kernels read int32 column indices instead of uint16 ones.
    case = make_case(form, 5, 70_001, dtype)
    m, n = case.W.shape
    rng = np.random.default_rng(14)
    x = rng.standard_normal((batch, m)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    y, dx, grads = run_both_thread_counts(case.W, x, dy)
    check_against_reference(case, x, dy, y, dx, grads)


@pytest.mark.parametrize("batch", [1, 4])
def test_pruned_duplicate_columns_add_up(batch, dtype):
    # Duplicates within a row are kept (factors.Pruned): each adds its value, and each entry's
    # gradient is the same (x^T dy)[row, col].
    indptr = np.array([0, 3, 3, 6], np.int64)
    indices = np.array([2, 2, 0, 1, 4, 1], np.uint16)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype)
    W = Pruned(indptr, indices, 5, values=values)
    dense = np.zeros((3, 5))
    dense[0, 2], dense[0, 0], dense[2, 1], dense[2, 4] = 3.0, 3.0, 10.0, 5.0
    assert_array_equal(W.to_dense(), dense)
    rng = np.random.default_rng(15)
    x = rng.integers(-3, 4, (batch, 3)).astype(dtype)     # small integers: every sum is exact
    dy = rng.integers(-3, 4, (batch, 5)).astype(dtype)
    assert_array_equal(W.matmul(x), x @ dense)
    dx, g = W.matmul_backward(x, dy)
    assert_array_equal(dx, dy @ dense.T)
    dW = x.astype(F64).T @ dy
    rows = [0, 0, 0, 2, 2, 2]
    assert_array_equal(g["values"], dW[rows, W.indices.astype(int)])


@pytest.mark.parametrize("x_dtype", [np.float16, np.longdouble])
@pytest.mark.parametrize("form", MAIN_FORMS)
def test_other_float_x_uses_the_kernel_types(form, x_dtype, dtype):
    # The kernels compute in float32 or float64: float16 x counts as float32, long double x
    # as float64 (the documented result dtype).
    case = make_case(form, 13, 20, dtype)
    m, n = case.W.shape
    x = np.random.default_rng(16).standard_normal((3, m)).astype(x_dtype)
    y = case.W.matmul(x)
    want = np.result_type(np.float32 if x_dtype == np.float16 else np.float64, dtype)
    assert y.dtype == want
    x2 = x.astype(F64)
    assert_within(y.astype(F64), x2 @ case.dense, np.abs(x2) @ case.abs_dense, m + case.inner + 2,
                  working_eps(want, dtype), "y")


def test_factorization_owns_its_arrays():
    # The factorization keeps read-only copies: changing the caller's array later changes
    # neither to_dense() nor matmul, in any compute dtype (cached conversions cannot go stale).
    rng = np.random.default_rng(17)
    left = rng.standard_normal((4, 2)).astype(np.float32)
    right = rng.standard_normal((2, 3)).astype(np.float32)
    W = LowRank(left, right)
    x = rng.standard_normal((2, 4))
    before = x @ W.to_dense().astype(F64)
    y64 = W.matmul(x)
    left[0, 0] += 10.0
    assert left.flags.writeable and not W.left.flags.writeable
    np.testing.assert_allclose(x @ W.to_dense().astype(F64), before, rtol=0, atol=0)
    np.testing.assert_allclose(W.matmul(x.astype(np.float32)), before, rtol=1e-5, atol=1e-5)
    assert_array_equal(W.matmul(x), y64)


def test_sparse_codes_with_no_terms_per_row_to_dense():
    # Allowed by the constructor: W = 0.
    W = SparseCodes(np.zeros((3, 0), np.int32), np.zeros((3, 0)), np.ones((4, 5)))
    assert_array_equal(W.to_dense(), np.zeros((3, 5)))


@pytest.mark.parametrize("seed", [0, 1, 2**32, 2**63, 2**64 - 1])
def test_sign_bits_extreme_seeds(seed, dtype):
    case = make_sign_bits(np.random.default_rng(18), 40, 30, np.dtype(dtype), k=20, seed=seed)
    rng = np.random.default_rng(19)
    x = rng.standard_normal((3, 40)).astype(dtype)
    dy = rng.standard_normal((3, 30)).astype(dtype)
    y, dx, grads = run_both_thread_counts(case.W, x, dy)
    check_against_reference(case, x, dy, y, dx, grads)


@pytest.mark.parametrize("form", MAIN_FORMS + ["codebook_4bit", "sign_bits_k300"])
def test_concurrent_calls_from_python_threads(form):
    # The GIL is released during the kernels: calls from several Python threads at once on the
    # same factorization give the results of one call at a time.
    case = make_case(form, 300, 513, np.float32)
    W = case.W
    m, n = W.shape
    rng = np.random.default_rng(20)
    xs = [rng.standard_normal((b, m)).astype(np.float32) for b in (1, 5, 1, 17)]
    dys = [rng.standard_normal((x.shape[0], n)).astype(np.float32) for x in xs]
    serial = [(W.matmul(x), *W.matmul_backward(x, dy)) for x, dy in zip(xs, dys)]

    def work(i):
        x, dy = xs[i % 4], dys[i % 4]
        return i % 4, (W.matmul(x), *W.matmul_backward(x, dy))

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(16)))
    for i, (y, dx, g) in results:
        assert_array_equal(y, serial[i][0])
        assert_array_equal(dx, serial[i][1])
        for name in g:
            assert_array_equal(g[name], serial[i][2][name])


# ---------------------------------------------------------------------------------------------
# Property tests: random shapes and parameters of every form
# ---------------------------------------------------------------------------------------------

_dims = st.integers(1, 70)
_leads = st.sampled_from([(), (1,), (2,), (3,), (8,), (17,), (2, 3)])
_dtypes = st.sampled_from([np.float32, np.float64])
_isas = st.sampled_from(supported_isas())
_PROPERTY = settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _check_random_case(build, m, n, lead, dtype, isa_name, seed):
    rng = np.random.default_rng(seed)
    case = build(rng, m, n, np.dtype(dtype))
    m, n = case.W.shape
    x = rng.standard_normal(lead + (m,)).astype(dtype)
    dy = rng.standard_normal(lead + (n,)).astype(dtype)
    x0, dy0 = x.copy(), dy.copy()
    with use_isa(isa_name):
        y, dx, grads = run_both_thread_counts(case.W, x, dy)
    check_against_reference(case, x, dy, y, dx, grads)
    assert_array_equal(x, x0)
    assert_array_equal(dy, dy0)


@_PROPERTY
@given(m=_dims, n=_dims, lead=_leads, dtype=_dtypes, isa_name=_isas, seed=st.integers(0, 2**32),
       r=st.integers(1, 20))
def test_property_low_rank(m, n, lead, dtype, isa_name, seed, r):
    _check_random_case(lambda rng, m, n, dt: make_low_rank(rng, m, n, dt, r=r),
                       m, n, lead, dtype, isa_name, seed)


@_PROPERTY
@given(m=_dims, n=_dims, lead=_leads, dtype=_dtypes, isa_name=_isas, seed=st.integers(0, 2**32),
       s=st.integers(1, 6), k=st.integers(1, 60), dup=st.booleans(),
       idx=st.sampled_from([np.uint8, np.uint16, np.int32, np.int64]))
def test_property_sparse_codes(m, n, lead, dtype, isa_name, seed, s, k, dup, idx):
    _check_random_case(lambda rng, m, n, dt: make_sparse_codes(
        rng, m, n, dt, s=s, k=k, index_dtype=idx, duplicates=dup), m, n, lead, dtype, isa_name,
        seed)


@_PROPERTY
@given(m=_dims, n=_dims, lead=_leads, dtype=_dtypes, isa_name=_isas, seed=st.integers(0, 2**32),
       b=st.sampled_from([1, 2, 3, 4, 8]), packed=st.booleans(), n_codes=st.integers(1, 400),
       code_dtype=st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64]))
def test_property_codebook(m, n, lead, dtype, isa_name, seed, b, packed, n_codes, code_dtype):
    if packed:
        n_codes = min(n_codes, 16)
    elif n_codes > np.iinfo(code_dtype).max + 1:
        code_dtype = np.int16 if code_dtype is np.int8 else np.uint16
    _check_random_case(lambda rng, m, n, dt: make_codebook(
        rng, m, n, dt, b=b, n_codes=n_codes, code_dtype=code_dtype, packed=packed),
        m, n, lead, dtype, isa_name, seed)


@_PROPERTY
@given(m=_dims, n=_dims, lead=_leads, dtype=_dtypes, isa_name=_isas, seed=st.integers(0, 2**32),
       k=st.integers(1, 80), padding=st.booleans())
def test_property_sign_bits(m, n, lead, dtype, isa_name, seed, k, padding):
    _check_random_case(lambda rng, m, n, dt: make_sign_bits(rng, m, n, dt, k=k, padding=padding),
                       m, n, lead, dtype, isa_name, seed)


@_PROPERTY
@given(m=_dims, n=_dims, lead=_leads, dtype=_dtypes, isa_name=_isas, seed=st.integers(0, 2**32),
       density=st.floats(0, 1), codes=st.booleans(), n_codes=st.integers(1, 40),
       idx=st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.int64]),
       indptr=st.sampled_from([np.int32, np.int64, np.uint32]), unsorted=st.booleans(),
       empty_rows=st.booleans())
def test_property_pruned(m, n, lead, dtype, isa_name, seed, density, codes, n_codes, idx, indptr,
                         unsorted, empty_rows):
    _check_random_case(lambda rng, m, n, dt: make_pruned(
        rng, m, n, dt, density=density, index_dtype=idx, indptr_dtype=indptr, codes=codes,
        n_codes=n_codes, unsorted=unsorted, empty_rows=empty_rows),
        m, n, lead, dtype, isa_name, seed)


def test_sparse_codes_rows_are_stored_in_atom_order():
    # Unsorted terms (with a duplicate atom) are stored sorted by atom, ties in their order; the
    # matrix, its product and the input arrays are unchanged.
    idx = np.array([[5, 1, 3, 1], [0, 2, 2, 1]], np.int32)
    vals = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    D = np.random.default_rng(20).standard_normal((6, 4))
    before = (idx.copy(), vals.copy())
    W = SparseCodes(idx, vals, D)
    assert_array_equal(W.indices, [[1, 1, 3, 5], [0, 1, 2, 2]])
    assert_array_equal(W.values, [[2.0, 4.0, 3.0, 1.0], [5.0, 8.0, 6.0, 7.0]])
    assert_array_equal(idx, before[0]) and assert_array_equal(vals, before[1])
    dense = np.zeros((2, 4))
    for i in range(2):
        for t in range(4):
            dense[i] += vals[i, t] * D[idx[i, t]]
    np.testing.assert_allclose(W.to_dense(), dense, rtol=1e-12, atol=1e-12)
    x = np.array([[1.0, -2.0]])
    np.testing.assert_allclose(W.matmul(x), x @ dense, rtol=1e-12, atol=1e-12)

