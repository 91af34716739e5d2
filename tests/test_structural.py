"""The structural forms (matcompress.structural): BlockDiagonal, MixedBlock, InputOutput and their
compressors ("block", "mixed_block", "input_output").

References, all built independently of the module: W from the stored parts by
``scipy.linalg.block_diag`` (the row/column splits by ``np.array_split``, whose rule -- the first
``size % k`` pieces one longer -- is the documented one) and by ``np.block`` over the blocks'
basis combinations; gradients from ``G = x^T dy`` (dL/dW) by the chain rule written out per
form, and checked again by finite differences (L is linear in each field, so a difference
quotient is exact up to rounding); stored bytes from the shapes; the mixed-block fit against the
truncated SVD of the blocks stacked as vectors (``np.linalg.svd``).

Tolerances: products and gradients 1e-5 (float32) / 1e-12 (float64) relative to the largest
value of the reference (sums of up to a few hundred products).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import matcompress as mc
from matcompress import structural as S
from matcompress.compressors import MatrixCompressor
from matcompress.factors import LowRank, load
from matcompress.structural import (BlockDiagonal, BlockDiagonalCompressor, InputOutput,
                                    InputOutputCompressor, MixedBlock, MixedBlockCompressor)

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
    err = float(np.abs(got - want).max(initial=0.0)) / scale
    assert err <= tol, err


def trained_like(rng, m, n, dtype=np.float64):
    """A few strong directions plus heavy-tailed noise: near full rank, as trained layers."""
    low = rng.standard_normal((m, 4)) @ rng.standard_normal((4, n)) * 0.5
    return (low + rng.standard_t(4, (m, n))).astype(dtype)


# --- independent references ----------------------------------------------------------------------

def splits(size, k):
    return [len(p) for p in np.array_split(np.arange(size), k)]


def ref_blocks(m, n, k, values):
    """The k blocks from the flat values (block 0 row-major, then block 1, ...)."""
    out, pos = [], 0
    for r, c in zip(splits(m, k), splits(n, k)):
        out.append(values[pos:pos + r * c].reshape(r, c))
        pos += r * c
    assert pos == values.size
    return out


def ref_block_diag(m, n, k, values):
    return scipy.linalg.block_diag(*ref_blocks(m, n, k, values))


def ref_mixed(bases, coeffs):
    gm, gn, _ = coeffs.shape
    return np.block([[np.tensordot(coeffs[i, j], bases, axes=1) for j in range(gn)]
                     for i in range(gm)])


def ref_input_output(P, C, Q):
    W = C
    if P is not None:
        W = scipy.linalg.block_diag(*[P] * (C.shape[0] // P.shape[1])) @ W
    if Q is not None:
        W = W @ scipy.linalg.block_diag(*[Q] * (C.shape[1] // Q.shape[0]))
    return W


def random_block(rng, m, n, k, dtype):
    return BlockDiagonal(rng.standard_normal(sum(r * c for r, c in zip(splits(m, k),
                                                                       splits(n, k))))
                         .astype(dtype), m, n, k)


def random_mixed(rng, gm, gn, b, n_bases, dtype):
    return MixedBlock(rng.standard_normal((n_bases, b, b)).astype(dtype),
                      rng.standard_normal((gm, gn, n_bases)).astype(dtype))


def random_io(rng, gi, bi, pi, go, bo, qo, dtype, use_p=True, use_q=True):
    P = rng.standard_normal((bi, pi)).astype(dtype) if use_p else None
    Q = rng.standard_normal((qo, bo)).astype(dtype) if use_q else None
    C = rng.standard_normal((gi * (pi if use_p else bi), go * (qo if use_q else bo)))
    return InputOutput(C.astype(dtype), P, Q)


def reference_dense(f):
    if isinstance(f, BlockDiagonal):
        if f.parts is not None:
            return scipy.linalg.block_diag(*[p.to_dense() for p in f.parts])
        return ref_block_diag(*f.shape, f.n_blocks, f.values)
    if isinstance(f, MixedBlock):
        return ref_mixed(f.bases, f.coeffs)
    return ref_input_output(f.P, f.C, f.Q)


def reference_grads(f, G):
    """Gradients of L = sum(G * W) (G = x^T dy) with respect to each stored float part."""
    G = G.astype(np.float64)
    if isinstance(f, BlockDiagonal):
        m, n = f.shape
        rs = np.cumsum([0] + splits(m, f.n_blocks))
        cs = np.cumsum([0] + splits(n, f.n_blocks))
        return {"values": np.concatenate([G[rs[i]:rs[i + 1], cs[i]:cs[i + 1]].ravel()
                                          for i in range(f.n_blocks)])}
    if isinstance(f, MixedBlock):
        nb, b, _ = f.bases.shape
        gm, gn, _ = f.coeffs.shape
        blocks = G.reshape(gm, b, gn, b).transpose(0, 2, 1, 3)  # (i, j, a, c)
        return {"coeffs": np.einsum("ijac,sac->ijs", blocks, f.bases.astype(np.float64)),
                "bases": np.einsum("ijs,ijac->sac", f.coeffs.astype(np.float64), blocks)}
    P, C, Q = (None if a is None else a.astype(np.float64) for a in (f.P, f.C, f.Q))
    BP = np.eye(C.shape[0]) if P is None else scipy.linalg.block_diag(
        *[P] * (C.shape[0] // P.shape[1]))
    BQ = np.eye(C.shape[1]) if Q is None else scipy.linalg.block_diag(
        *[Q] * (C.shape[1] // Q.shape[0]))
    out = {"C": BP.T @ G @ BQ.T}
    if P is not None:
        dBP = G @ (C @ BQ).T
        bi, pi = P.shape
        out["P"] = sum(dBP[g * bi:(g + 1) * bi, g * pi:(g + 1) * pi]
                       for g in range(C.shape[0] // pi))
    if Q is not None:
        dBQ = (BP @ C).T @ G
        qo, bo = Q.shape
        out["Q"] = sum(dBQ[h * qo:(h + 1) * qo, h * bo:(h + 1) * bo]
                       for h in range(C.shape[1] // qo))
    return out


def ref_nbytes(f):
    """Stored bytes from the shapes alone."""
    if isinstance(f, BlockDiagonal):
        if f.parts is not None:
            return sum(ref_nbytes(p) for p in f.parts)
        m, n = f.shape
        return f.dtype.itemsize * sum(r * c for r, c in zip(splits(m, f.n_blocks),
                                                             splits(n, f.n_blocks)))
    if isinstance(f, LowRank):
        return f.dtype.itemsize * f.rank * sum(f.shape)
    if isinstance(f, MixedBlock):
        m, n = f.shape
        b, nb = f.block_size, f.num_bases
        return f.dtype.itemsize * nb * (b * b + (m // b) * (n // b))
    total = f.C.shape[0] * f.C.shape[1]
    total += 0 if f.P is None else f.P.shape[0] * f.P.shape[1]
    total += 0 if f.Q is None else f.Q.shape[0] * f.Q.shape[1]
    return f.dtype.itemsize * total


def check_form(f, rng, dtype):
    """Product, rows, backward pass and bytes of f against the references."""
    dtype = np.dtype(dtype)
    tol = TOL[dtype]
    m, n = f.shape
    assert f.dtype == dtype
    W = reference_dense(f)
    np.testing.assert_array_equal(f.to_dense().shape, (m, n))
    assert f.to_dense().dtype == dtype
    assert_close(f.to_dense(), W, tol)
    lo = int(rng.integers(0, m))
    hi = int(rng.integers(lo, m + 1))
    assert_close(f.dense_rows(lo, hi), W[lo:hi], tol) if hi > lo else None
    assert f.dense_rows(lo, lo).shape == (0, n)
    x = rng.standard_normal((5, m)).astype(dtype)
    y = f.matmul(x)
    assert y.dtype == dtype
    assert_close(y, x @ W, tol)
    x3 = rng.standard_normal((2, 3, m)).astype(dtype)
    assert_close(x3 @ f, x3 @ W, tol)
    dy = rng.standard_normal((5, n)).astype(dtype)
    dx, grads = f.matmul_backward(x, dy)
    assert_close(dx, dy @ W.T, tol)
    want = reference_grads(f, x.T.astype(np.float64) @ dy)
    assert set(grads) == set(f.trainable_fields)
    for name, g in want.items():
        assert grads[name].dtype == dtype and grads[name].shape == g.shape
        assert_close(grads[name], g, 10 * tol)
    dx2, none = f.matmul_backward(x, dy, need_grads=False)
    assert none == {} and np.array_equal(dx2, dx)
    nodx, g2 = f.matmul_backward(x, dy, need_dx=False)
    assert nodx is None and all(np.array_equal(g2[k], grads[k]) for k in grads)
    assert f.nbytes == ref_nbytes(f)
    assert f.compression_ratio == m * n * dtype.itemsize / ref_nbytes(f)


# --- the factorizations --------------------------------------------------------------------------

BLOCK_CASES = [(12, 8, 1), (12, 8, 4), (13, 8, 4), (12, 9, 4), (14, 11, 4), (7, 7, 7), (9, 20, 6),
               (30, 21, 8)]


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "x".join(map(str, c)))
def test_block_diagonal_form(rng, dtype, case):
    f = random_block(rng, *case, dtype)
    check_form(f, rng, dtype)
    m, n, k = case
    np.testing.assert_array_equal(f.row_splits, np.cumsum([0] + splits(m, k)))
    np.testing.assert_array_equal(f.col_splits, np.cumsum([0] + splits(n, k)))
    for got, want in zip(f.blocks(), ref_blocks(m, n, k, f.values)):
        np.testing.assert_array_equal(got, want)
    # The runs of equal blocks: one (a single batched product) when k divides both sides.
    runs = S._groups(m, n, k)
    assert len(runs) <= 3 and (len(runs) == 1) == (m % k == 0 and n % k == 0)


@pytest.mark.parametrize("route", ["basis", "decoded"])
@pytest.mark.parametrize("case", [(3, 2, 4, 3), (1, 1, 5, 1), (4, 5, 2, 4), (2, 3, 3, 9)])
def test_mixed_block_form(rng, dtype, case, route, monkeypatch):
    monkeypatch.setattr(MixedBlock, "_decodes", lambda self, batch: route == "decoded")
    f = random_mixed(rng, *case, dtype)
    check_form(f, rng, dtype)
    gm, gn, b, nb = case
    assert f.shape == (gm * b, gn * b) and f.block_size == b and f.num_bases == nb


@pytest.mark.parametrize("route", ["basis", "decoded"])
def test_mixed_block_products_in_tiles(rng, monkeypatch, route):
    f = random_mixed(rng, 40, 3, 4, 5, np.float64)
    W = f.to_dense()
    x = rng.standard_normal((37, 160))
    dy = rng.standard_normal((37, 12))
    monkeypatch.setattr(MixedBlock, "_decodes", lambda self, batch: route == "decoded")
    monkeypatch.setattr(S, "_TILE_VALUES", 3000)  # a few rows of the batch per tile
    assert len(S._batch_tiles(37, 40 * 5 * 4)) > 5
    monkeypatch.setattr(MixedBlock, "_tiles", lambda self: [(0, 7), (7, 8), (8, 33), (33, 40)])
    assert_close(f.matmul(x), x @ W, 1e-12)
    dx, g = f.matmul_backward(x, dy)
    assert_close(dx, dy @ W.T, 1e-12)
    for name, want in reference_grads(f, x.T @ dy).items():
        assert_close(g[name], want, 1e-11)


def test_mixed_block_route_choice():
    """Few bases or a single row: through the bases; many bases and a large batch: decoded."""
    f = MixedBlock(np.zeros((128, 32, 32), np.float32), np.zeros((32, 32, 128), np.float32))
    assert f.shape == (1024, 1024)
    assert not f._decodes(1) and f._decodes(256)
    g = MixedBlock(np.zeros((2, 8, 8), np.float32), np.zeros((128, 128, 2), np.float32))
    assert not g._decodes(1) and not g._decodes(4096)  # 2 (8 + 1024 / 8) * 3 < 1024


IO_CASES = [  # gi, bi, pi, go, bo, qo, use_p, use_q
    (3, 4, 2, 2, 6, 3, True, True), (2, 5, 5, 3, 4, 1, True, True),
    (4, 3, 1, 2, 5, 5, True, False), (3, 4, 2, 3, 2, 1, False, True),
    (1, 6, 3, 1, 4, 2, True, True), (2, 4, 2, 2, 4, 2, False, False),
]


@pytest.mark.parametrize("case", IO_CASES, ids=lambda c: "x".join(map(str, c)))
def test_input_output_form(rng, dtype, case):
    f = random_io(rng, *case[:6], dtype, *case[6:])
    check_form(f, rng, dtype)
    gi, bi, pi, go, bo, qo, use_p, use_q = case
    assert f.shape == (gi * bi, go * bo)
    assert f.input_block_size == (bi if use_p else None)
    assert f.output_block_size == (bo if use_q else None)


def test_block_diagonal_of_compressed_blocks(rng, dtype):
    m, n, k = 13, 10, 3
    parts = [LowRank(rng.standard_normal((r, 2)).astype(dtype),
                     rng.standard_normal((2, c)).astype(dtype))
             for r, c in zip(splits(m, k), splits(n, k))]
    f = BlockDiagonal(parts=parts)
    assert f.shape == (m, n) and f.n_blocks == k and f.dtype == dtype
    check_form_parts(f, rng, dtype)


def check_form_parts(f, rng, dtype):
    tol = TOL[np.dtype(dtype)]
    W = reference_dense(f)
    assert_close(f.to_dense(), W, tol)
    assert_close(f.dense_rows(2, 11), W[2:11], tol)
    x = rng.standard_normal((4, f.shape[0])).astype(dtype)
    dy = rng.standard_normal((4, f.shape[1])).astype(dtype)
    assert_close(f.matmul(x), x @ W, tol)
    dx, g = f.matmul_backward(x, dy)
    assert_close(dx, dy @ W.T, tol)
    rs, cs = f.row_splits, f.col_splits
    assert set(g) == set(f.trainable_fields) == {f"parts.{i}.{s}" for i in range(f.n_blocks)
                                                for s in ("left", "right")}
    for i, p in enumerate(f.parts):
        # the part's own gradients for its block's inputs and outputs
        _, want = p.matmul_backward(x[:, rs[i]:rs[i + 1]], dy[:, cs[i]:cs[i + 1]])
        for name in want:
            assert_close(g[f"parts.{i}.{name}"], want[name], tol)
    assert f.nbytes == ref_nbytes(f)


def test_gradients_by_finite_differences(rng):
    """L = sum(dy * (x @ W)) is linear in each field: a difference quotient is exact."""
    forms = [random_block(rng, 11, 9, 3, np.float64), random_mixed(rng, 2, 3, 3, 4, np.float64),
             random_io(rng, 2, 4, 2, 3, 3, 1, np.float64)]
    for f in forms:
        x = rng.standard_normal((3, f.shape[0]))
        dy = rng.standard_normal((3, f.shape[1]))
        _, grads = f.matmul_backward(x, dy)
        loss = float(np.sum(dy * f.matmul(x)))
        for name, g in grads.items():
            d = rng.standard_normal(g.shape)
            moved = {k: getattr(f, k) for k in ("values", "n_rows", "n_cols", "n_blocks", "bases",
                                                  "coeffs", "C", "P", "Q") if hasattr(f, k)}
            moved[name] = getattr(f, name) + d
            h = type(f)(**moved)
            change = float(np.sum(dy * h.matmul(x))) - loss
            assert math.isclose(change, float(np.sum(g * d)), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("make", [
    lambda rng, dt: random_block(rng, 13, 9, 4, dt),
    lambda rng, dt: BlockDiagonal(parts=[LowRank(rng.standard_normal((5, 1)).astype(dt),
                                                 rng.standard_normal((1, 4)).astype(dt)),
                                         mc.compress(rng.standard_normal((4, 4)).astype(dt),
                                                     "kmeans", n_codes=4, random_state=0)]),
    lambda rng, dt: random_mixed(rng, 2, 3, 4, 3, dt),
    lambda rng, dt: random_io(rng, 2, 4, 2, 3, 2, 1, dt),
    lambda rng, dt: random_io(rng, 2, 4, 2, 3, 2, 1, dt, use_p=False),
], ids=["block", "block-parts", "mixed", "io", "io-no-p"])
def test_save_load_round_trip(rng, dtype, tmp_path, make):
    f = make(rng, dtype)
    f.save(tmp_path / "f.npz")
    g = load(tmp_path / "f.npz")
    assert type(g) is type(f) and g == f and g.nbytes == f.nbytes
    np.testing.assert_array_equal(g.to_dense(), f.to_dense())
    # several in one archive
    from matcompress.archive import load_many, save_many

    save_many(tmp_path / "many.npz", {"a": f, "b": g})
    back = load_many(tmp_path / "many.npz")
    assert back["a"] == f and back["b"] == f


def test_malformed_files_are_refused(rng, tmp_path):
    f = random_block(rng, 9, 8, 3, np.float32)
    f.save(tmp_path / "f.npz")
    with np.load(tmp_path / "f.npz") as z:
        fields = dict(z)
    bad = dict(fields, values=fields["values"][:-1])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="malformed 'block_diagonal'.*values must hold"):
        load(tmp_path / "bad.npz")
    bad = {k: v for k, v in fields.items() if k != "n_blocks"}
    np.savez(tmp_path / "bad2.npz", **bad)
    with pytest.raises(ValueError, match="n_blocks"):
        load(tmp_path / "bad2.npz")
    bad = dict(fields, stray=np.zeros(2))
    np.savez(tmp_path / "bad3.npz", **bad)
    with pytest.raises(ValueError, match="stray"):
        load(tmp_path / "bad3.npz")
    m = random_mixed(rng, 2, 2, 3, 2, np.float32)
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        fields = dict(z, coeffs=z["coeffs"][..., :1])
    np.savez(tmp_path / "bad4.npz", **fields)
    with pytest.raises(ValueError, match="malformed 'mixed_block'"):
        load(tmp_path / "bad4.npz")


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(values=np.zeros(5), n_rows=4, n_cols=4, n_blocks=2), ValueError,
     "values must hold the 8"),
    (dict(values=np.zeros(8), n_rows=4, n_cols=4, n_blocks=5), ValueError, "n_blocks must be <= 4"),
    (dict(values=np.zeros(8), n_rows=4, n_cols=4), ValueError, "need n_blocks"),
    (dict(values=np.zeros(8, np.int32), n_rows=4, n_cols=4, n_blocks=2), TypeError, "float32"),
    (dict(), ValueError, "either values"),
    (dict(parts=[np.zeros((2, 2))]), TypeError, r"parts\[0\] must be a Factorization"),
    (dict(parts=[]), ValueError, "at least one"),
    (dict(parts=[LowRank(np.ones((2, 1)), np.ones((1, 2))),
                 LowRank(np.ones((3, 1)), np.ones((1, 2)))]), ValueError, r"parts\[0\] has shape"),
    (dict(parts=[LowRank(np.ones((2, 1)), np.ones((1, 2))),
                 LowRank(np.ones((2, 1), np.float32), np.ones((1, 2), np.float32))]), TypeError,
     "share a dtype"),
    (dict(parts=[LowRank(np.ones((2, 1)), np.ones((1, 2)))], n_rows=3), ValueError,
     "does not match"),
])
def test_block_diagonal_construction_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BlockDiagonal(**kwargs)


@pytest.mark.parametrize("cls, kwargs, exc, match", [
    (MixedBlock, dict(bases=np.zeros((2, 3, 4)), coeffs=np.zeros((1, 1, 2))), ValueError,
     r"\(num_bases, b, b\)"),
    (MixedBlock, dict(bases=np.zeros((2, 3, 3)), coeffs=np.zeros((1, 1, 3))), ValueError,
     "num_bases=2"),
    (MixedBlock, dict(bases=np.zeros((0, 3, 3)), coeffs=np.zeros((1, 1, 0))), ValueError,
     "at least one"),
    (MixedBlock, dict(bases=np.zeros((2, 3, 3)), coeffs=np.zeros((1, 1, 2), np.float32)),
     TypeError, "share a dtype"),
    (MixedBlock, dict(bases=np.zeros((2, 3)), coeffs=np.zeros((1, 1, 2))), ValueError, "3-D"),
    (InputOutput, dict(C=np.zeros((5, 4)), P=np.zeros((4, 2))), ValueError,
     "not a multiple of P's 2"),
    (InputOutput, dict(C=np.zeros((4, 5)), Q=np.zeros((2, 4))), ValueError,
     "not a multiple of Q's 2"),
    (InputOutput, dict(C=np.zeros((4, 4)), P=np.zeros((4, 2), np.float32)), TypeError,
     "share a dtype"),
    (InputOutput, dict(C=np.zeros((0, 4))), ValueError, "empty"),
    (InputOutput, dict(C=np.zeros(4)), ValueError, "2-D"),
])
def test_construction_errors(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_forms_are_frozen_and_own_copies(rng):
    v = rng.standard_normal(8)
    f = BlockDiagonal(v, 4, 4, 2)
    v[0] = 99.0
    assert f.values[0] != 99.0
    with pytest.raises(ValueError):
        f.values[0] = 1.0
    with pytest.raises(AttributeError):
        f.n_blocks = 1


def test_matmul_checks_x(rng):
    f = random_mixed(rng, 2, 2, 3, 2, np.float64)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 6\)"):
        f.matmul(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="dy must have shape"):
        f.matmul_backward(np.zeros((2, 6)), np.zeros((2, 5)))


# --- the compressors: initialization from A ------------------------------------------------------

def test_one_block_reproduces_a(rng, dtype):
    A = trained_like(rng, 17, 11, dtype)
    f = mc.compress(A, "block", n_blocks=1)
    assert isinstance(f, BlockDiagonal) and f.dtype == dtype
    np.testing.assert_array_equal(f.to_dense(), A)
    # k blocks: exactly A's diagonal blocks, zeros elsewhere
    f = mc.compress(A, "block", n_blocks=4)
    rs = np.cumsum([0] + splits(17, 4))
    cs = np.cumsum([0] + splits(11, 4))
    want = np.zeros_like(A)
    for i in range(4):
        want[rs[i]:rs[i + 1], cs[i]:cs[i + 1]] = A[rs[i]:rs[i + 1], cs[i]:cs[i + 1]]
    np.testing.assert_array_equal(f.to_dense(), want)


def test_all_bases_reproduce_a(rng, dtype):
    A = trained_like(rng, 16, 24, dtype)
    for b in (2, 4, 8):
        f = mc.compress(A, "mixed_block", num_bases=b * b, block_size=b)
        assert f.num_bases == b * b and f.dtype == dtype
        assert_close(f.to_dense(), A, 10 * TOL[np.dtype(dtype)])
    # more bases than blocks (2 x 3 = 6 blocks of 8 x 8): still exact
    f = mc.compress(A, "mixed_block", num_bases=64, block_size=8)
    assert_close(f.to_dense(), A, 10 * TOL[np.dtype(dtype)])


def test_full_size_projections_reproduce_a(rng, dtype):
    A = trained_like(rng, 12, 20, dtype)
    f = mc.compress(A, "input_output", input_block_size=4, output_block_size=5)
    assert f.P.shape == (4, 4) and f.Q.shape == (5, 5) and f.C.shape == (12, 20)
    np.testing.assert_array_equal(f.to_dense(), A)
    np.testing.assert_array_equal(f.P, np.eye(4, dtype=dtype))
    f = mc.compress(A, "input_output", input_block_size=6, output_factor=1)
    assert f.Q is None
    np.testing.assert_array_equal(f.to_dense(), A)


def test_mixed_block_fit_is_the_truncated_svd(rng, dtype):
    A = trained_like(rng, 24, 32, dtype)
    b = 4
    V = A.astype(np.float64).reshape(6, b, 8, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    s = np.linalg.svd(V, compute_uv=False)
    for n_bases in (1, 3, 7, 12):
        f = mc.compress(A, "mixed_block", num_bases=n_bases, block_size=b)
        err2 = float(np.sum((f.to_dense().astype(np.float64) - A) ** 2))
        want = float(np.sum(s[n_bases:] ** 2))
        assert err2 == pytest.approx(want, rel=1e-4 if dtype == np.float32 else 1e-9,
                                     abs=1e-6 * float(np.sum(s ** 2)))
        # orthonormal bases
        B = f.bases.reshape(n_bases, -1).astype(np.float64)
        assert_close(B @ B.T, np.eye(n_bases), 1e-5 if dtype == np.float32 else 1e-12)


def test_input_output_fit_is_least_squares_and_improves(rng, dtype):
    A = trained_like(rng, 32, 48, np.float64)
    errors = []
    for n_iter in (0, 1, 3, 8):
        f = InputOutputCompressor(2, 4, input_block_size=8, output_block_size=12,
                                  n_iter=n_iter).compress(A.astype(dtype))
        assert f.P.shape == (8, 4) and f.Q.shape == (3, 12) and f.C.shape == (16, 12)
        W = f.to_dense().astype(np.float64)
        errors.append(np.linalg.norm(A - W))
        # C is the least-squares fit given P and Q: the gradient of ||A - W||^2 w.r.t. C
        # (blockdiag(P)^T (W - A) blockdiag(Q)^T) vanishes; P, Q orthonormal.
        g = reference_grads(f, W - A)["C"]
        assert np.abs(g).max() <= (1e-4 if dtype == np.float32 else 1e-10) * np.abs(A).max()
        P, Q = f.P.astype(np.float64), f.Q.astype(np.float64)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert_close(P.T @ P, np.eye(4), tol)
        assert_close(Q @ Q.T, np.eye(3), tol)
    slack = 1e-5 if dtype == np.float32 else 1e-12
    assert all(b <= a * (1 + slack) for a, b in zip(errors, errors[1:])), errors
    # not random: the fit beats a random P (and Q) with C fitted by least squares
    rand = random_io(rng, 4, 8, 4, 4, 12, 3, np.float64)
    Pq = np.linalg.qr(rand.P)[0]
    Qq = np.linalg.qr(rand.Q.T)[0].T
    BP = scipy.linalg.block_diag(*[Pq] * 4)
    BQ = scipy.linalg.block_diag(*[Qq] * 4)
    W_rand = BP @ (BP.T @ A @ BQ.T) @ BQ
    assert errors[-1] < 0.95 * np.linalg.norm(A - W_rand)


def test_input_output_single_projection_is_optimal(rng):
    """With only P (one input block spanning every row), blockdiag(P) P^T A is the best
    approximation of rank pi: the truncated SVD."""
    A = trained_like(rng, 16, 20)
    f = InputOutputCompressor(input_factor=4, input_block_size=16).compress(A)
    assert f.Q is None and f.P.shape == (16, 4)
    s = np.linalg.svd(A, compute_uv=False)
    assert np.sum((A - f.to_dense()) ** 2) == pytest.approx(np.sum(s[4:] ** 2), rel=1e-9)


# --- ratio targeting ----------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [1.5, 2, 3, 4, 8, 10])
def test_block_ratio_is_the_smallest_k(rng, dtype, ratio):
    A = trained_like(rng, 45, 31, dtype)
    f = mc.compress(A, "block", compression_ratio=ratio)
    dense = A.nbytes
    assert f.nbytes <= dense / ratio
    k = f.n_blocks
    fewer = dtype.itemsize * sum(r * c for r, c in zip(splits(45, k - 1), splits(31, k - 1))) \
        if k > 1 else dense
    assert fewer > dense / ratio


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_mixed_block_ratio_is_the_most_bases(rng, dtype, ratio):
    A = trained_like(rng, 32, 64, dtype)
    f = mc.compress(A, "mixed_block", compression_ratio=ratio)
    b, nb = f.block_size, f.num_bases
    assert b in (4, 8, 16, 32)
    assert f.nbytes <= A.nbytes / ratio
    more = dtype.itemsize * (nb + 1) * (b * b + (32 // b) * (64 // b))
    assert nb == b * b or more > A.nbytes / ratio
    # the block size chosen is the one of least error at its most bases
    errs = {}
    for bb in (4, 8, 16, 32):
        per = dtype.itemsize * (bb * bb + (32 // bb) * (64 // bb))
        s = min(bb * bb, int(A.nbytes / ratio // per))
        if s >= 1:
            g = mc.compress(A, "mixed_block", num_bases=s, block_size=bb)
            errs[bb] = np.linalg.norm(A - g.to_dense())
    assert np.linalg.norm(A - f.to_dense()) <= min(errs.values()) * (1 + 1e-6)
    assert f.block_size == min(errs, key=errs.get)


def io_candidates(m, n):
    """Every (bi, f_in, bo, f_out) the documented ratio rule allows (block None: no projection)."""
    def side(s):
        out = [(None, 1)]
        b = 2
        while b <= s:
            if s % b == 0:
                out += [(b, f) for f in (2 ** j for j in range(1, 20)) if f <= b and b % f == 0]
            b *= 2
        return out
    return [(bi, fi, bo, fo) for bi, fi in side(m) for bo, fo in side(n)]


def io_bytes(m, n, itemsize, bi, fi, bo, fo):
    total = (m // fi) * (n // fo)
    total += 0 if bi is None else bi * bi // fi
    total += 0 if bo is None else bo * bo // fo
    return itemsize * total


@pytest.mark.parametrize("ratio", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("shape", [(64, 48), (96, 128), (40, 24)])
def test_input_output_ratio_rule(rng, ratio, shape):
    m, n = shape
    A = trained_like(rng, m, n, np.float32)
    f = mc.compress(A, "input_output", compression_ratio=ratio)
    budget = A.nbytes / ratio
    assert f.nbytes <= budget
    fi = 1 if f.P is None else f.P.shape[0] // f.P.shape[1]
    fo = 1 if f.Q is None else f.Q.shape[1] // f.Q.shape[0]
    fits = [c for c in io_candidates(m, n) if io_bytes(m, n, 4, *c) <= budget]
    least = min(c[1] * c[3] for c in fits)
    assert fi * fo == least
    assert f.nbytes == max(io_bytes(m, n, 4, *c) for c in fits if c[1] * c[3] == least)


def test_explicit_parameters_bytes(rng, dtype):
    A = trained_like(rng, 48, 40, dtype)
    isz = dtype.itemsize
    f = mc.compress(A, "input_output", input_factor=4, output_factor=2)
    # default blocks: the largest of 32, 16, ... dividing the side: 16 rows, 8 columns
    assert f.P.shape == (16, 4) and f.Q.shape == (4, 8) and f.C.shape == (12, 20)
    assert f.nbytes == isz * (16 * 4 + 12 * 20 + 4 * 8)
    assert f.nbytes == InputOutputCompressor.stored_bytes(48, 40, isz, 4, 2, 16, 8)
    g = mc.compress(A, "mixed_block", num_bases=5)
    assert g.block_size == 4  # the smallest of 4, 8, 16, 32 dividing both with b * b >= 5
    assert g.nbytes == isz * 5 * (16 + 12 * 10)
    g = mc.compress(A, "mixed_block", num_bases=20)
    assert g.block_size == 8
    h = mc.compress(A, "block", n_blocks=6)
    assert h.nbytes == BlockDiagonalCompressor.stored_bytes(48, 40, isz, 6) == isz * 8 * 7 * 4 \
        + isz * 8 * 6 * 2


@pytest.mark.parametrize("method, ratio, best", [
    ("block", 100, lambda m, n, isz: m * n / sum(r * c for r, c in zip(splits(m, min(m, n)),
                                                                       splits(n, min(m, n))))),
    ("mixed_block", 1e4, lambda m, n, isz: max(m * n / (b * b + (m // b) * (n // b))
                                               for b in (4, 8, 16, 32)
                                               if m % b == 0 and n % b == 0)),
    ("input_output", 1e5, lambda m, n, isz: m * n * isz / min(
        io_bytes(m, n, isz, *c) for c in io_candidates(m, n))),
])
def test_unreachable_ratio_names_the_best(rng, dtype, method, ratio, best):
    A = trained_like(rng, 32, 48, dtype)
    with pytest.raises(ValueError, match="unreachable") as info:
        mc.compress(A, method, compression_ratio=ratio)
    named = float(re.search(r"the best reachable ratio is ([0-9.eE+-]+)", str(info.value))[1])
    want = best(32, 48, dtype.itemsize)
    assert named == pytest.approx(want, rel=1e-5) and named <= want
    f = mc.compress(A, method, compression_ratio=named)  # and it is reachable
    assert f.compression_ratio >= named


# --- compressed blocks, data-aware blocks, resolve ----------------------------------------------

@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_blocks_compressed_by_another_compressor(rng, dtype, ratio):
    A = trained_like(rng, 40, 30, dtype)
    c = BlockDiagonalCompressor(3, compression_ratio=ratio, block_compressor="kmeans",
                                random_state=0)
    f = c.compress(A)
    assert f.parts is not None and len(f.parts) == 3
    assert all(type(p).__name__ == "Codebook" for p in f.parts)
    assert f.nbytes <= A.nbytes / ratio and f.nbytes == sum(p.nbytes for p in f.parts)
    rs, cs = np.cumsum([0] + splits(40, 3)), np.cumsum([0] + splits(30, 3))
    for i, p in enumerate(f.parts):
        want = mc.compress(A[rs[i]:rs[i + 1], cs[i]:cs[i + 1]], "kmeans", random_state=0,
                           compression_ratio=c._block_ratio(A.shape, dtype.itemsize, 3, i))
        np.testing.assert_array_equal(p.to_dense(), want.to_dense())
    check_form_any(f, rng, dtype)
    # explicit parameters of the block compressor (no ratio)
    g = BlockDiagonalCompressor(2, block_compressor=mc.compressors.LowRankCompressor(3)).compress(A)
    assert [p.rank for p in g.parts] == [3, 3] and g.nbytes == ref_nbytes(g)


def check_form_any(f, rng, dtype):
    tol = TOL[np.dtype(dtype)]
    W = reference_dense(f)
    x = rng.standard_normal((3, f.shape[0])).astype(dtype)
    dy = rng.standard_normal((3, f.shape[1])).astype(dtype)
    assert_close(f.matmul(x), x @ W, tol)
    dx, _ = f.matmul_backward(x, dy)
    assert_close(dx, dy @ W.T, tol)


def test_block_compressor_errors(rng):
    A = trained_like(rng, 20, 20)
    with pytest.raises(ValueError, match="needs n_blocks"):
        BlockDiagonalCompressor(compression_ratio=2, block_compressor="kmeans").compress(A)
    with pytest.raises(ValueError, match="unreachable.*block 0 of 2"):
        BlockDiagonalCompressor(2, compression_ratio=1e4, block_compressor="low_rank").compress(A)
    with pytest.raises(TypeError, match="block_compressor"):
        BlockDiagonalCompressor(2, block_compressor=3.5).compress(A)


class _Recorder(MatrixCompressor):
    """Records what each block hands it (unregistered)."""

    uses_inputs = True

    def __init__(self, seen=None):
        self.seen = [] if seen is None else seen

    def compress(self, A, *, grad=None, X=None):
        self.seen.append((A.copy(), None if grad is None else grad.copy(),
                          None if X is None else X.copy()))
        return LowRank(A, np.eye(A.shape[1], dtype=A.dtype))


def test_block_compressor_gets_its_blocks_grad_and_inputs(rng):
    A = trained_like(rng, 9, 7)
    G = rng.standard_normal(A.shape)
    X = rng.standard_normal((30, 9))
    rec = _Recorder()
    f = BlockDiagonalCompressor(3, block_compressor=rec).compress(A, grad=G)
    rs, cs = np.cumsum([0] + splits(9, 3)), np.cumsum([0] + splits(7, 3))
    for i, (a, g, x) in enumerate(rec.seen):
        np.testing.assert_array_equal(a, A[rs[i]:rs[i + 1], cs[i]:cs[i + 1]])
        np.testing.assert_array_equal(g, G[rs[i]:rs[i + 1], cs[i]:cs[i + 1]])
        assert x is None
    np.testing.assert_array_equal(f.to_dense(), mc.compress(A, "block", n_blocks=3).to_dense())
    rec.seen.clear()
    BlockDiagonalCompressor(3, block_compressor=rec).compress(A, X=X)
    for i, (_, _, x) in enumerate(rec.seen):
        np.testing.assert_array_equal(x, X[:, rs[i]:rs[i + 1]])


def output_error(X, A, W):
    return float(np.linalg.norm(X @ (A - W)))


def test_data_aware_blocks_lower_the_output_error(rng, dtype):
    m, n = 24, 16
    A = trained_like(rng, m, n, dtype)
    # correlated inputs: what another block's inputs carry is partly predictable
    mix = rng.standard_normal((m, m)) * 0.3 + np.eye(m)
    X = (rng.standard_normal((200, m)) @ mix).astype(dtype)
    for k in (2, 3, 4):
        free = mc.compress(A, "block", n_blocks=k)
        aware = mc.compress(A, "block", n_blocks=k, X=X)
        assert aware.nbytes == free.nbytes
        e_free = output_error(X.astype(np.float64), A, free.to_dense())
        e_aware = output_error(X.astype(np.float64), A, aware.to_dense())
        assert e_aware < 0.9 * e_free, (k, e_aware, e_free)
        # the ridge least-squares blocks, by an independent solve (lstsq on augmented rows)
        lam = 0.01 * float(np.mean(np.sum(X.astype(np.float64) ** 2, 0) / 200))
        rs, cs = np.cumsum([0] + splits(m, k)), np.cumsum([0] + splits(n, k))
        for i, blk in enumerate(aware.blocks()):
            Xi = X[:, rs[i]:rs[i + 1]].astype(np.float64) / np.sqrt(200)
            Y = X.astype(np.float64) @ A[:, cs[i]:cs[i + 1]] / np.sqrt(200)
            r = rs[i + 1] - rs[i]
            aug_x = np.vstack([Xi, np.sqrt(lam) * np.eye(r)])
            aug_y = np.vstack([Y, np.sqrt(lam) * A[rs[i]:rs[i + 1], cs[i]:cs[i + 1]]])
            want = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
            assert_close(blk, want, 1e-4 if dtype == np.float32 else 1e-9)
    # one block: A itself; zero inputs: the data-free blocks
    one = mc.compress(A, "block", n_blocks=1, X=X)
    assert_close(one.to_dense(), A, 1e-5 if dtype == np.float32 else 1e-12)
    zero = mc.compress(A, "block", n_blocks=3, X=np.zeros_like(X))
    np.testing.assert_array_equal(zero.to_dense(), mc.compress(A, "block", n_blocks=3).to_dense())
    with pytest.raises(ValueError, match="raise damp"):
        mc.compress(A, "block", n_blocks=2, X=X[:3], damp=0.0)
    with pytest.raises(ValueError, match="X must have one column per row"):
        mc.compress(A, "block", n_blocks=2, X=X[:, 1:])


def test_resolve_fixes_value_dependent_choices(rng):
    A = trained_like(rng, 64, 96, np.float32)
    c = MixedBlockCompressor(compression_ratio=4)
    r = c.resolve(A)
    assert r.block_size == c.compress(A).block_size and r.compression_ratio == 4
    for seed in (1, 2):
        B = trained_like(np.random.default_rng(seed), 64, 96, np.float32) * (seed * 3)
        f = r.compress(B)
        assert f.block_size == r.block_size and f.bases.shape == c.compress(A).bases.shape
    assert InputOutputCompressor(compression_ratio=4).resolve(A).compression_ratio == 4
    assert BlockDiagonalCompressor(compression_ratio=3).resolve(A).compression_ratio == 3
    # a block compressor whose structure depends on the values gets resolved on block 0
    bc = BlockDiagonalCompressor(2, compression_ratio=4, block_compressor="low_rank_residual",
                                 random_state=0)
    res = bc.resolve(A)
    assert res is not bc
    inner = res.get_config()["config"]["block_compressor"]
    assert inner["name"] == "low_rank_residual" and inner["config"]["rank"] is not None
    shapes = None
    for seed in (0, 3, 4):
        f = res.compress(trained_like(np.random.default_rng(seed), 64, 96, np.float32))
        got = [[(k, v.shape) for k, v in sorted(mc.factors.encode_fields(p).items())
                if isinstance(v, np.ndarray) and v.ndim] for p in f.parts]
        assert shapes is None or got == shapes
        shapes = got
        assert f.compression_ratio >= 4


def test_config_round_trip():
    cs = [BlockDiagonalCompressor(3, block_compressor=mc.compressors.KMeansCompressor(n_codes=4)),
          BlockDiagonalCompressor(compression_ratio=4, damp=0.1, random_state=2),
          MixedBlockCompressor(5, 4), MixedBlockCompressor(compression_ratio=3),
          InputOutputCompressor(2, 4, input_block_size=8, n_iter=1),
          InputOutputCompressor(compression_ratio=6)]
    for c in cs:
        cfg = c.get_config()
        back = MatrixCompressor.from_config(cfg)
        assert type(back) is type(c) and back.get_config() == cfg
    cfg = cs[0].get_config()
    assert cfg["config"]["block_compressor"] == {"name": "kmeans", "config":
                                                 cs[0].block_compressor.get_config()["config"]}
    for name, cls in (("block", BlockDiagonalCompressor), ("mixed_block", MixedBlockCompressor),
                      ("input_output", InputOutputCompressor)):
        assert type(mc.compressors.get(name, compression_ratio=2)) is cls


def test_compressors_keep_dtype_and_inputs(rng, dtype):
    A = trained_like(rng, 32, 32, dtype)
    keep = A.copy()
    for method in ("block", "mixed_block", "input_output"):
        f = mc.compress(A, method, compression_ratio=4, random_state=0)
        assert f.dtype == dtype and f.shape == A.shape
        np.testing.assert_array_equal(A, keep)
        g = mc.compress(A, method, compression_ratio=4, random_state=0)
        np.testing.assert_array_equal(f.to_dense(), g.to_dense())  # deterministic
    # integer input becomes float64
    f = mc.compress(np.arange(64).reshape(8, 8), "block", n_blocks=2)
    assert f.dtype == np.float64


@pytest.mark.parametrize("method, params, exc, match", [
    ("block", dict(n_blocks=13), ValueError, r"n_blocks must be <= 12 \(min\(m, n\) = 12\)"),
    ("block", dict(n_blocks=0), ValueError, "n_blocks must be >= 1"),
    ("block", dict(), ValueError, "exactly one of n_blocks and compression_ratio"),
    ("block", dict(n_blocks=2, compression_ratio=2), ValueError, "exactly one"),
    ("block", dict(compression_ratio=1.0), ValueError, "must be > 1"),
    ("block", dict(n_blocks=2, damp=-1.0), ValueError, "damp must be >= 0"),
    ("mixed_block", dict(num_bases=4, block_size=5), ValueError, "block_size=5 must divide"),
    ("mixed_block", dict(num_bases=17, block_size=4), ValueError,
     r"num_bases must be <= 16 \(block_size \* block_size = 16\)"),
    ("mixed_block", dict(num_bases=2000), ValueError, "exceeds b \\* b for every block size"),
    ("mixed_block", dict(num_bases=0, block_size=4), ValueError, "num_bases must be >= 1"),
    ("mixed_block", dict(block_size=4), ValueError, "exactly one of num_bases"),
    ("input_output", dict(input_factor=8, input_block_size=4), ValueError,
     "input_factor=8 is larger than input_block_size=4"),
    ("input_output", dict(output_factor=3, output_block_size=4), ValueError,
     "output_factor=3 must divide output_block_size=4"),
    ("input_output", dict(input_factor=2, input_block_size=5), ValueError,
     "input_block_size=5 must divide the matrix's 12 rows"),
    ("input_output", dict(output_factor=2, output_block_size=7), ValueError,
     "output_block_size=7 must divide the matrix's 20 columns"),
    ("input_output", dict(input_factor=64), ValueError, "input_factor=64 divides no block size"),
    ("input_output", dict(), ValueError, "give input_factor / output_factor"),
    ("input_output", dict(input_factor=2, compression_ratio=4), ValueError, "not both"),
    ("input_output", dict(input_factor=0), ValueError, "input_factor must be >= 1"),
    ("input_output", dict(input_factor=2, n_iter=-1), ValueError, "n_iter must be >= 0"),
    ("input_output", dict(input_factor=2.0), TypeError, "input_factor must be an integer"),
])
def test_bad_parameters(rng, method, params, exc, match):
    A = trained_like(rng, 12, 20)
    with pytest.raises(exc, match=match):
        mc.compress(A, method, **params)


def test_mixed_block_sizes_that_divide_nothing(rng):
    A = trained_like(rng, 18, 30)  # no block size of 4, 8, 16, 32 divides both
    with pytest.raises(ValueError, match="no block size of .* divides both sides"):
        mc.compress(A, "mixed_block", compression_ratio=2)
    f = mc.compress(A, "mixed_block", compression_ratio=2, block_size=6)  # explicit: fine
    assert f.block_size == 6 and f.nbytes <= A.nbytes / 2


@pytest.mark.parametrize("method", ["block", "mixed_block", "input_output"])
def test_bad_matrices(method):
    A = np.ones((8, 8))
    A[1, 2] = np.nan
    with pytest.raises(ValueError, match="A contains NaN"):
        mc.compress(A, method, compression_ratio=2)
    with pytest.raises(ValueError, match="A must be 2-D"):
        mc.compress(np.ones(8), method, compression_ratio=2)
    with pytest.raises(ValueError, match="A is empty"):
        mc.compress(np.ones((0, 8)), method, compression_ratio=2)


# --- property tests -----------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), k=st.integers(1, 12),
       dt=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_property_block_diagonal(m, n, k, dt, seed):
    k = min(k, m, n)
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)).astype(dt)
    f = mc.compress(A, "block", n_blocks=k)
    check_form(f, rng, dt)
    # A's diagonal blocks, and nothing else
    W = f.to_dense()
    mask = scipy.linalg.block_diag(*[np.ones((r, c)) for r, c in zip(splits(m, k), splits(n, k))])
    np.testing.assert_array_equal(W, np.where(mask > 0, A, 0))


@settings(max_examples=25, deadline=None)
@given(gm=st.integers(1, 4), gn=st.integers(1, 4), b=st.integers(1, 4),
       frac=st.floats(0, 1), dt=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_property_mixed_block(gm, gn, b, frac, dt, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((gm * b, gn * b)).astype(dt)
    nb = max(1, round(frac * b * b))
    f = mc.compress(A, "mixed_block", num_bases=nb, block_size=b)
    check_form(f, rng, dt)
    V = A.astype(np.float64).reshape(gm, b, gn, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    s = np.linalg.svd(V, compute_uv=False)
    err2 = float(np.sum((f.to_dense().astype(np.float64) - A) ** 2))
    assert err2 <= float(np.sum(s[nb:] ** 2)) + 1e-4 * float(np.sum(s ** 2)) + 1e-12


@settings(max_examples=25, deadline=None)
@given(gi=st.integers(1, 3), ei=st.integers(0, 3), fi=st.integers(0, 3), go=st.integers(1, 3),
       eo=st.integers(0, 3), fo=st.integers(0, 3), dt=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_property_input_output(gi, ei, fi, go, eo, fo, dt, seed):
    bi, bo = 2 ** ei, 2 ** eo
    f_in, f_out = 2 ** min(fi, ei), 2 ** min(fo, eo)
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((gi * bi, go * bo)).astype(dt)
    f = mc.compress(A, "input_output", input_factor=f_in, output_factor=f_out,
                    input_block_size=bi, output_block_size=bo)
    assert f.P.shape == (bi, bi // f_in) and f.Q.shape == (bo // f_out, bo)
    check_form(f, rng, dt)
    if f_in == 1 and f_out == 1:
        np.testing.assert_array_equal(f.to_dense(), A)
    # never worse than the best projection on one side only... and never above ||A||
    assert np.linalg.norm(f.to_dense().astype(np.float64) - A) <= np.linalg.norm(A) * (1 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 40), n=st.integers(2, 40), ratio=st.floats(1.1, 12),
       method=st.sampled_from(["block", "mixed_block", "input_output"]),
       seed=st.integers(0, 2**16))
def test_property_ratio_met_or_best_named(m, n, ratio, method, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)).astype(np.float32)
    try:
        f = mc.compress(A, method, compression_ratio=ratio)
    except ValueError as exc:
        msg = str(exc)
        if "no block size" in msg:
            assert method == "mixed_block"
            return
        best = float(re.search(r"the best reachable ratio is ([0-9.eE+-]+)", msg)[1])
        assert best < ratio
        if best > 1:  # tiny matrices may not compress at all (best 1)
            g = mc.compress(A, method, compression_ratio=best)
            assert g.compression_ratio >= best
        return
    assert f.nbytes <= A.nbytes / ratio and f.nbytes == ref_nbytes(f)


# --- command line -------------------------------------------------------------------------------

@pytest.mark.parametrize("method, args, kind", [
    ("block", ["--ratio", "4"], "block_diagonal"),
    ("block", ["--blocks", "3"], "block_diagonal"),
    ("mixed-block", ["--ratio", "4"], "mixed_block"),
    ("mixed-block", ["--ratio", "4", "--block-size", "8"], "mixed_block"),
    ("mixed-block", ["--bases", "6", "--block-size", "8"], "mixed_block"),
    ("input-output", ["--ratio", "4"], "input_output"),
    ("input-output", ["--output-factor", "4"], "input_output"),
    ("input-output", ["--input-factor", "2", "--output-factor", "2", "--input-block-size", "8",
                      "--output-block-size", "16"], "input_output"),
])
def test_command_line(rng, tmp_path, capsys, method, args, kind):
    from matcompress import archive, cli

    arrays = {"a": trained_like(rng, 64, 48, np.float32), "b": trained_like(rng, 32, 32)}
    np.savez(tmp_path / "w.npz", **arrays)
    status = cli.main(["compress", str(tmp_path / "w.npz"), "--method", method, *args, "-o",
                       str(tmp_path / "o.npz")])
    out, err = capsys.readouterr()
    assert status == 0, err
    fs = archive.load_many(tmp_path / "o.npz")
    for name, f in fs.items():
        A = arrays[name]
        assert f.kind == kind and f.shape == A.shape and f.dtype == A.dtype
        if "--ratio" in args:
            assert f.compression_ratio >= 4
    f = fs["a"]
    if "--blocks" in args:
        assert f.n_blocks == 3
    if "--bases" in args:
        assert f.num_bases == 6 and f.block_size == 8
    if "--block-size" in args and method == "mixed-block":
        assert f.block_size == 8
    if "--output-factor" in args and "--input-factor" not in args:
        assert f.P is None and f.Q.shape == (4, 16)  # default block: 16 of 48 columns
    if "--input-block-size" in args:
        assert f.P.shape == (8, 4) and f.Q.shape == (8, 16)


@pytest.mark.parametrize("args, pattern", [
    (["--method", "input-output"], "needs --ratio or --input-factor or --output-factor"),
    (["--method", "input-output", "--ratio", "4", "--input-factor", "2"],
     "argument --input-factor: give either --ratio or"),
    (["--method", "block"], "needs --ratio or --blocks"),
    (["--method", "mixed-block", "--block-size", "4"], "needs --ratio or --bases"),
    (["--method", "block", "--bases", "3"], "--bases: applies to --method mixed-block"),
    (["--method", "mixed-block", "--bases", "100", "--block-size", "8"],
     r"a \(64x48\): num_bases must be <= 64"),
    (["--method", "block", "--ratio", "1000"], "unreachable.*best reachable ratio is 48"),
    (["--method", "input-output", "--input-factor", "3"], "input_factor=3 divides no block"),
])
def test_command_line_errors(rng, tmp_path, capsys, args, pattern):
    from matcompress import cli

    np.savez(tmp_path / "w.npz", a=trained_like(rng, 64, 48, np.float32))
    status = cli.main(["compress", str(tmp_path / "w.npz"), *args, "-o",
                       str(tmp_path / "o.npz")])
    _, err = capsys.readouterr()
    assert status == 2 and "Traceback" not in err
    assert re.search(pattern, err.strip().split("\n")[-1]), err
