"""Structural forms: factorizations that change the shape of a layer's product.

The matrix-compression operator matcompress grows out of (Google Research's) offers, beside
its five factorizations, forms that restructure ``x @ W``:

=====================  ================  ===============  ==========================================
factorization          kind              compressor name  W ~
=====================  ================  ===============  ==========================================
:class:`BlockDiagonal` "block_diagonal"  "block"          k blocks on the diagonal (dense, or each
                                                          compressed by any compressor), zeros
                                                          elsewhere
:class:`MixedBlock`    "mixed_block"     "mixed_block"    a grid of b x b blocks, each a linear
                                                          combination of ``num_bases`` shared basis
                                                          blocks
:class:`InputOutput`   "input_output"    "input_output"   blockdiag(P, ..., P) @ C @
                                                          blockdiag(Q, ..., Q): input blocks
                                                          projected by one shared P, a smaller C,
                                                          output blocks expanded by one shared Q
=====================  ================  ===============  ==========================================

Each is initialized from A (never at random), so the blend phase of
:func:`matcompress.tf.apply_compression` starts close to A: the diagonal blocks of A; the truncated
SVD of A's blocks stacked as vectors; least-squares projections (the generalized low-rank
approximation of Ye 2005, alternating). Each reproduces A exactly at its largest size (one block;
``num_bases = b * b``; full-size projections). The products never build the whole W: one
batched GEMM over the diagonal blocks (at most three when the blocks are unequal); two GEMMs
through the shared bases, or row tiles of W decoded when that costs less; three GEMMs through
the projections. Gradients for every float part.

The compressors take their explicit parameters or ``compression_ratio=R`` (stored bytes at most
dense bytes / R; an unreachable ratio raises ``ValueError`` naming the best reachable one); the
rules that choose the parameters are in each class's docstring and in ``docs/decisions.md``
("Structural forms").
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import ClassVar

import numpy as np
import scipy.linalg

from ._validation import check_array, check_float, check_inputs, check_int, check_random_state
from .compressors import (MatrixCompressor, _check_ratio, _row_weights, _unreachable,
                          input_moments)
from .factors import (_KINDS, Factorization, _decode_parts, _encode_parts, _float_array,
                      _freeze)

__all__ = ["BlockDiagonal", "MixedBlock", "InputOutput", "BlockDiagonalCompressor",
           "MixedBlockCompressor", "InputOutputCompressor", "block_splits",
           "MIXED_BLOCK_SIZES", "INPUT_OUTPUT_BLOCK_SIZES"]

_TILE_VALUES = 1 << 22  # largest temporary (values) of the batched products, tiled over the batch


# --- shared helpers ------------------------------------------------------------------------------

def block_splits(size, n_blocks):
    """Offsets ``(n_blocks + 1,)`` of ``n_blocks`` near-equal runs covering ``range(size)``: the
    first ``size % n_blocks`` runs get ``size // n_blocks + 1`` entries, the others
    ``size // n_blocks`` (the rule :class:`BlockDiagonal` splits rows and columns by)."""
    q, r = divmod(size, n_blocks)
    sizes = np.full(n_blocks, q, np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _groups(m, n, k):
    """Runs of consecutive diagonal blocks of one shape, for W (m, n) split into k blocks:
    ``[(first block, count, rows, cols, row0, col0, value0)]``. Block i has ``m // k + 1`` rows
    when ``i < m % k`` and ``n // k + 1`` columns when ``i < n % k``, so the blocks form at most
    three runs (one when k divides m and n)."""
    qm, rm = divmod(m, k)
    qn, rn = divmod(n, k)
    cuts = sorted({0, rm, rn, k})
    out, v0 = [], 0
    for s, e in zip(cuts[:-1], cuts[1:]):
        if e <= s:
            continue
        r = qm + (1 if s < rm else 0)
        c = qn + (1 if s < rn else 0)
        out.append((s, e - s, r, c, s * qm + min(s, rm), s * qn + min(s, rn), v0))
        v0 += (e - s) * r * c
    return out


def _block_values(m, n, k):
    """Stored values of a dense BlockDiagonal: the sum of the blocks' sizes."""
    return sum(cnt * r * c for _, cnt, r, c, _, _, _ in _groups(m, n, k))


def _batch_tiles(batch, per_row):
    step = max(1, _TILE_VALUES // max(1, per_row))
    return [(s, min(batch, s + step)) for s in range(0, batch, step)]


def _as_compressor(spec, what):
    from .composite import _as_compressor as conv

    return conv(spec, what)


def _parts_field(parts, name, what):
    head, _, rest = name.partition(".")
    index, _, rest = rest.partition(".")
    if head != "parts" or not index.isdigit() or int(index) >= len(parts) or not rest:
        raise KeyError(f"{name!r} names no field of a part of this {what}")
    return parts[int(index)]._field(rest)


def _read_int(read, name, where, what):
    try:
        v = read(name)
    except ValueError as exc:
        raise ValueError(f"{where}: field {name!r} cannot be read: {exc}") from None
    if v.ndim != 0 or v.dtype.kind not in "iu":
        raise ValueError(f"{where}: malformed {what!r}: {name!r} is not an integer")
    return int(v)


# --- block diagonal ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BlockDiagonal(Factorization):
    """W (m, n) with ``n_blocks`` = k blocks on its diagonal and zeros elsewhere.

    Block i covers rows ``r[i]:r[i+1]`` and columns ``c[i]:c[i+1]`` with
    ``r = block_splits(m, k)``, ``c = block_splits(n, k)``: when k does not divide m, the first
    ``m % k`` blocks have one row more than the others (``m // k + 1``), and the same for the
    columns. So the splits follow from (m, n, k) and are not stored.

    Two storages:

    - dense blocks: ``values``, one flat array holding block 0 row-major, then block 1, ...
      (``sum_i rows_i * cols_i`` values), with ``n_rows``, ``n_cols``, ``n_blocks``. The blocks
      form at most three runs of equal shape (one when k divides m and n), each a contiguous
      slice of ``values`` viewed as a (count, rows, cols) stack: ``x @ W`` is one batched GEMM
      (``np.matmul`` over the stack) per run.
    - compressed blocks: ``parts``, a tuple of k factorizations (any kinds, one dtype) of the
      shapes above; the product goes block by block through each part's own product, and the
      parts are saved as :class:`matcompress.composite.Sum` saves its parts (``"p<i>/..."``).

    Stored bytes (``nbytes``): the values' bytes, or the sum of the parts' bytes; the three
    integers are not counted. Gradients: ``values``, or each part's fields as
    ``"parts.<i>.<field>"``.
    """

    values: np.ndarray | None = None
    n_rows: int | None = None
    n_cols: int | None = None
    n_blocks: int | None = None
    parts: tuple | None = None
    kind: ClassVar[str] = "block_diagonal"

    def __post_init__(self):
        if (self.values is None) == (self.parts is None):
            raise ValueError("give either values (dense blocks) or parts (compressed blocks)")
        if self.parts is not None:
            self._init_parts()
            return
        for name in ("n_rows", "n_cols", "n_blocks"):
            if getattr(self, name) is None:
                raise ValueError(f"dense blocks need {name}")
        m = check_int(self.n_rows, "n_rows", min_value=1)
        n = check_int(self.n_cols, "n_cols", min_value=1)
        k = check_int(self.n_blocks, "n_blocks", min_value=1, max_value=min(m, n),
                      max_reason=f"min(n_rows, n_cols) = {min(m, n)}")
        values = _float_array(self.values, "values", 1)
        want = _block_values(m, n, k)
        if values.shape[0] != want:
            raise ValueError(f"values must hold the {want} entries of {k} diagonal blocks of a "
                             f"{m} x {n} matrix; got {values.shape[0]}")
        object.__setattr__(self, "n_rows", m)
        object.__setattr__(self, "n_cols", n)
        object.__setattr__(self, "n_blocks", k)
        _freeze(self, values=values)

    def _init_parts(self):
        parts = self.parts
        if isinstance(parts, Factorization) or not isinstance(parts, (tuple, list)):
            raise TypeError("parts must be a tuple or list of Factorization objects; got "
                            f"{type(parts).__name__}")
        parts = tuple(parts)
        if not parts:
            raise ValueError("parts must hold at least one factorization")
        for i, p in enumerate(parts):
            if not isinstance(p, Factorization):
                raise TypeError(f"parts[{i}] must be a Factorization; got {type(p).__name__}")
            if p.dtype != parts[0].dtype:
                raise TypeError(f"parts[{i}] has dtype {p.dtype}; parts[0] has "
                                f"{parts[0].dtype}: the blocks must share a dtype")
        k = len(parts)
        m = sum(p.shape[0] for p in parts)
        n = sum(p.shape[1] for p in parts)
        if k > min(m, n):
            raise ValueError(f"{k} blocks cannot split a {m} x {n} matrix")
        rs, cs = block_splits(m, k), block_splits(n, k)
        for i, p in enumerate(parts):
            want = (int(rs[i + 1] - rs[i]), int(cs[i + 1] - cs[i]))
            if tuple(p.shape) != want:
                raise ValueError(f"parts[{i}] has shape {tuple(p.shape)}; block {i} of {k} of a "
                                 f"{m} x {n} matrix is {want} (the first m % k blocks have one "
                                 "row more, the first n % k one column more)")
        for name, v in (("n_rows", m), ("n_cols", n), ("n_blocks", k)):
            given = getattr(self, name)
            if given is not None and check_int(given, name) != v:
                raise ValueError(f"{name}={given} does not match the parts' {v}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "parts", parts)

    shape = property(lambda self: (self.n_rows, self.n_cols))

    @property
    def dtype(self):
        return self.values.dtype if self.values is not None else self.parts[0].dtype

    @property
    def row_splits(self):
        """Row offsets ``(k + 1,)`` of the blocks."""
        return block_splits(self.n_rows, self.n_blocks)

    @property
    def col_splits(self):
        """Column offsets ``(k + 1,)`` of the blocks."""
        return block_splits(self.n_cols, self.n_blocks)

    def blocks(self):
        """The k diagonal blocks as dense arrays (views of ``values``, or the parts' dense
        forms)."""
        if self.parts is not None:
            return [p.to_dense() for p in self.parts]
        out = []
        for _, cnt, r, c, _, _, v0 in _groups(*self.shape, self.n_blocks):
            stack = self.values[v0:v0 + cnt * r * c].reshape(cnt, r, c)
            out.extend(stack)
        return out

    @property
    def nbytes(self):
        if self.parts is not None:
            return int(sum(p.nbytes for p in self.parts))
        return int(self.values.nbytes)

    def to_dense(self):
        return self._dense_rows(0, self.n_rows)

    def _dense_rows(self, start, stop):
        m, n = self.shape
        out = np.zeros((stop - start, n), self.dtype)
        if self.parts is not None:
            rs, cs = self.row_splits, self.col_splits
            for i, p in enumerate(self.parts):
                lo, hi = max(start, int(rs[i])), min(stop, int(rs[i + 1]))
                if lo < hi:
                    out[lo - start:hi - start, cs[i]:cs[i + 1]] = p._dense_rows(
                        lo - int(rs[i]), hi - int(rs[i]))
            return out
        for _, cnt, r, c, row0, col0, v0 in _groups(m, n, self.n_blocks):
            lo, hi = max(start, row0), min(stop, row0 + cnt * r)
            if lo >= hi:
                continue
            local = np.arange(lo - row0, hi - row0)
            j, a = np.divmod(local, r)
            stack = self.values[v0:v0 + cnt * r * c].reshape(cnt, r, c)
            cols = (col0 + j * c)[:, None] + np.arange(c)[None, :]
            out[(local + row0 - start)[:, None], cols] = stack[j, a]
        return out

    @property
    def trainable_fields(self):
        if self.parts is None:
            return ("values",)
        return tuple(f"parts.{i}.{name}" for i, p in enumerate(self.parts)
                     for name in p.trainable_fields)

    def _field(self, name):
        if self.parts is None:
            return getattr(self, name)
        return _parts_field(self.parts, name, "BlockDiagonal")

    def _stacks(self, dtype):
        """(group, (count, rows, cols) stack of the blocks in ``dtype``) per run of blocks."""
        values = self._as("values", dtype)
        return [(g, values[g[6]:g[6] + g[1] * g[2] * g[3]].reshape(g[1], g[2], g[3]))
                for g in _groups(*self.shape, self.n_blocks)]

    def _matmul(self, x):
        B = x.shape[0]
        y = np.empty((B, self.n_cols), x.dtype)
        if self.parts is not None:
            rs, cs = self.row_splits, self.col_splits
            for i, p in enumerate(self.parts):
                xi = np.ascontiguousarray(x[:, rs[i]:rs[i + 1]])
                y[:, cs[i]:cs[i + 1]] = p._matmul(xi)
            return y
        for (_, cnt, r, c, row0, col0, _), stack in self._stacks(x.dtype):
            # (count, B, r) views of x's columns (no copy: numpy's matmul takes strided
            # 2-D slices to BLAS), times the (count, r, c) stack: one batched GEMM.
            xs = x[:, row0:row0 + cnt * r].reshape(B, cnt, r).transpose(1, 0, 2)
            out = np.matmul(xs, stack)
            y[:, col0:col0 + cnt * c] = out.transpose(1, 0, 2).reshape(B, cnt * c)
        return y

    def _backward(self, x, dy, need_dx, need_grads):
        B = x.shape[0]
        dx = np.empty((B, self.n_rows), x.dtype) if need_dx else None
        if self.parts is not None:
            rs, cs = self.row_splits, self.col_splits
            grads = {}
            for i, p in enumerate(self.parts):
                xi = np.ascontiguousarray(x[:, rs[i]:rs[i + 1]])
                dyi = np.ascontiguousarray(dy[:, cs[i]:cs[i + 1]])
                dxi, gi = p._backward(xi, dyi, need_dx, need_grads)
                if need_dx:
                    dx[:, rs[i]:rs[i + 1]] = dxi
                grads.update({f"parts.{i}.{name}": g for name, g in gi.items()})
            return dx, grads
        dv = np.empty(self.values.shape[0], x.dtype) if need_grads else None
        for (_, cnt, r, c, row0, col0, v0), stack in self._stacks(x.dtype):
            xs = x[:, row0:row0 + cnt * r].reshape(B, cnt, r).transpose(1, 0, 2)
            ds = dy[:, col0:col0 + cnt * c].reshape(B, cnt, c).transpose(1, 0, 2)
            if need_dx:
                dxs = np.matmul(ds, stack.transpose(0, 2, 1))  # (count, B, r)
                dx[:, row0:row0 + cnt * r] = dxs.transpose(1, 0, 2).reshape(B, cnt * r)
            if need_grads:
                dv[v0:v0 + cnt * r * c] = np.matmul(xs.transpose(0, 2, 1), ds).reshape(-1)
        return dx, ({"values": dv} if need_grads else {})

    def _encode_fields(self):
        out = {"n_rows": np.asarray(self.n_rows), "n_cols": np.asarray(self.n_cols),
               "n_blocks": np.asarray(self.n_blocks)}
        if self.parts is None:
            out["values"] = self.values
        else:
            out.update(_encode_parts(self.parts))
        return out

    @classmethod
    def _decode_fields(cls, names, read, where):
        names = set(names)
        ints = {}
        for name in ("n_rows", "n_cols", "n_blocks"):
            if name not in names:
                raise ValueError(f"{where}: fields of {cls.kind!r} missing or unknown: no "
                                 f"{name!r}")
            ints[name] = _read_int(read, name, where, cls.kind)
        parts = _decode_parts(names, read, where, cls.kind)
        rest = {n for n in names - {"n_rows", "n_cols", "n_blocks", "values"}
                if not re.match(r"p\d+/", n) and not n.startswith("__")}  # __kind__ ...
        if rest:
            raise ValueError(f"{where}: fields of {cls.kind!r} missing or unknown: "
                             f"{sorted(rest)}")
        try:
            if parts:
                if "values" in names:
                    raise ValueError("both values and parts are stored")
                return cls(parts=tuple(parts), **ints)
            if "values" not in names:
                raise ValueError("neither values nor parts are stored")
            return cls(values=read("values"), **ints)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed {cls.kind!r}: {exc}") from None

    def __repr__(self):
        m, n = self.shape
        what = "dense" if self.parts is None else ", ".join(
            sorted({type(p).__name__ for p in self.parts}))
        return (f"BlockDiagonal(n_blocks={self.n_blocks} ({what}), shape=({m}, {n}), "
                f"dtype={self.dtype}, nbytes={self.nbytes}, "
                f"compression_ratio={self.compression_ratio:.3g})")


_KINDS[BlockDiagonal.kind] = BlockDiagonal


# --- mixed block (shared basis blocks) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MixedBlock(Factorization):
    """W cut into a grid of b x b blocks, block (i, j) = ``sum_s coeffs[i, j, s] * bases[s]``.

    ``bases`` (S, b, b) are the ``num_bases`` = S shared basis blocks and ``coeffs``
    (m / b, n / b, S) the coefficients of each block, both in the dtype of W: W is
    (m, n) = (b * coeffs.shape[0], b * coeffs.shape[1]).

    ``x @ W`` never builds the whole W. Through the shared bases: with x's columns cut into the
    m / b row-blocks, ``Z[:, i, s] = x_i @ bases[s]`` (one GEMM of (batch * m / b, b) by
    (b, S * b)), then ``y_j = sum_{i, s} coeffs[i, j, s] Z[:, i, s]`` (one GEMM of (batch * b,
    m / b * S) by (m / b * S, n / b)): ``batch * S * (m * b + m * n / b)`` multiply-adds, tiled
    over the batch so that Z stays below about 2^22 values. That is ``S (b / n + 1 / b)`` times
    a dense product's flops, more than 1 for most ratios (S = 128 blocks of 32 at 4x on
    1024 x 1024: 8 times), so for large batches the product decodes row tiles of W (about 2^20
    weights each, ``S m n`` multiply-adds in all) and multiplies them by BLAS instead, whichever
    costs less (see ``_decodes``); the backward pass likewise. Stored bytes:
    ``S * (b * b + m * n / b^2)`` values.
    """

    bases: np.ndarray
    coeffs: np.ndarray
    kind: ClassVar[str] = "mixed_block"

    def __post_init__(self):
        bases = _float_array(self.bases, "bases", 3)
        coeffs = _float_array(self.coeffs, "coeffs", 3)
        S, b, b2 = bases.shape
        if b != b2 or b < 1:
            raise ValueError(f"bases must have shape (num_bases, b, b) with b >= 1; got "
                             f"{bases.shape}")
        if S < 1:
            raise ValueError("bases must hold at least one basis block")
        gm, gn, S2 = coeffs.shape
        if S2 != S or gm < 1 or gn < 1:
            raise ValueError(f"coeffs must have shape (m / b, n / b, num_bases={S}) with every "
                             f"side >= 1; got {coeffs.shape}")
        if coeffs.dtype != bases.dtype:
            raise TypeError(f"bases and coeffs must share a dtype; got {bases.dtype}, "
                            f"{coeffs.dtype}")
        _freeze(self, bases=bases, coeffs=coeffs)

    @property
    def shape(self):
        b = self.bases.shape[1]
        return (self.coeffs.shape[0] * b, self.coeffs.shape[1] * b)

    dtype = property(lambda self: self.bases.dtype)
    block_size = property(lambda self: self.bases.shape[1])
    num_bases = property(lambda self: self.bases.shape[0])

    @property
    def nbytes(self):
        return int(self.bases.nbytes + self.coeffs.nbytes)

    def _block_rows(self, i0, i1, dtype):
        """Block-rows [i0, i1) of W: (i1 - i0, b, n)."""
        S, b, _ = self.bases.shape
        gn = self.coeffs.shape[1]
        c = self._as("coeffs", dtype)[i0:i1].reshape(-1, S)
        blk = (c @ self._as("bases", dtype).reshape(S, b * b)).reshape(i1 - i0, gn, b, b)
        return blk.transpose(0, 2, 1, 3).reshape(i1 - i0, b, gn * b)

    def to_dense(self):
        return self._dense_rows(0, self.shape[0])

    def _dense_rows(self, start, stop):
        b = self.block_size
        if stop <= start:
            return np.zeros((0, self.shape[1]), self.dtype)
        i0, i1 = start // b, -(-stop // b)
        rows = self._block_rows(i0, i1, self.dtype).reshape(-1, self.shape[1])
        return np.ascontiguousarray(rows[start - i0 * b:stop - i0 * b])

    trainable_fields: ClassVar[tuple[str, ...]] = ("bases", "coeffs")

    def _parts(self, dtype):
        S, b, _ = self.bases.shape
        gm, gn, _ = self.coeffs.shape
        bases = self._as("bases", dtype)
        coeffs = self._as("coeffs", dtype)
        # (b, S * b): column s * b + c is bases[s, :, c]
        bmat = self._cached(("bmat", np.dtype(dtype).str),
                            lambda: np.ascontiguousarray(bases.transpose(1, 0, 2)
                                                         .reshape(b, S * b)))
        return S, b, gm, gn, bases, coeffs, bmat

    def _decodes(self, batch):
        """Whether ``x @ W`` for ``batch`` rows goes through decoded row tiles of W rather than
        the shared-basis route. Per row of x the basis route costs ``S (m b + m n / b)``
        multiply-adds against ``m n`` for a dense product, plus ``S m n`` once to decode W; its
        temporaries (batch x m x S values, transposed between the two GEMMs) cost about three
        times their flops (measured at 1024 x 1024: 3.4x a dense GEMM at equal flops). So
        decoding wins for large batches and many bases, the basis route for few rows (GEMV)
        and few bases."""
        S, b, _ = self.bases.shape
        m, n = self.shape
        basis = 3.0 * batch * S * (m * b + m * n / b)
        return S * m * n + batch * m * n < basis

    def _tiles(self):
        """Ranges of block-rows of about 2^20 decoded weights."""
        b, gm = self.block_size, self.coeffs.shape[0]
        step = max(1, (1 << 20) // max(1, b * self.shape[1]))
        return [(i, min(gm, i + step)) for i in range(0, gm, step)]

    def _matmul(self, x):
        if self._decodes(x.shape[0]):
            b = self.block_size
            y = np.zeros((x.shape[0], self.shape[1]), x.dtype)
            for i0, i1 in self._tiles():
                Wt = self._block_rows(i0, i1, x.dtype).reshape((i1 - i0) * b, -1)
                y += x[:, i0 * b:i1 * b] @ Wt
            return y
        S, b, gm, gn, _, coeffs, bmat = self._parts(x.dtype)
        B = x.shape[0]
        cmat = coeffs.transpose(0, 2, 1).reshape(gm * S, gn)  # row i * S + s
        y = np.empty((B, gn * b), x.dtype)
        for lo, hi in _batch_tiles(B, gm * S * b):
            t = hi - lo
            z = (x[lo:hi].reshape(t * gm, b) @ bmat).reshape(t, gm, S, b)
            zt = z.transpose(0, 3, 1, 2).reshape(t * b, gm * S)  # (t, c, i, s)
            yt = (zt @ cmat).reshape(t, b, gn)
            y[lo:hi] = yt.transpose(0, 2, 1).reshape(t, gn * b)
        return y

    def _backward_decoded(self, x, dy, need_dx, need_grads):
        """The backward pass through decoded row tiles of W: dx from the tiles, and
        dL/dW = x^T dy per tile projected on the bases (coefficients) and combined with the
        coefficients (bases)."""
        S, b, gm, gn, bases, coeffs, _ = self._parts(x.dtype)
        dx = np.empty((x.shape[0], gm * b), x.dtype) if need_dx else None
        dcoeffs = np.empty((gm, gn, S), x.dtype) if need_grads else None
        dbases = np.zeros((S, b * b), x.dtype) if need_grads else None
        flat = bases.reshape(S, b * b)
        for i0, i1 in self._tiles():
            rows = slice(i0 * b, i1 * b)
            if need_dx:
                Wt = self._block_rows(i0, i1, x.dtype).reshape((i1 - i0) * b, -1)
                dx[:, rows] = dy @ Wt.T
            if need_grads:
                G = x[:, rows].T @ dy  # (rows, n)
                Gb = G.reshape(i1 - i0, b, gn, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
                dcoeffs[i0:i1] = (Gb @ flat.T).reshape(i1 - i0, gn, S)
                dbases += coeffs[i0:i1].reshape(-1, S).T @ Gb
        if not need_grads:
            return dx, {}
        return dx, {"bases": dbases.reshape(S, b, b), "coeffs": dcoeffs}

    def _backward(self, x, dy, need_dx, need_grads):
        if self._decodes(x.shape[0]):
            return self._backward_decoded(x, dy, need_dx, need_grads)
        S, b, gm, gn, bases, coeffs, bmat = self._parts(x.dtype)
        B = x.shape[0]
        cmat = coeffs.transpose(0, 2, 1).reshape(gm * S, gn)
        dx = np.empty((B, gm * b), x.dtype) if need_dx else None
        dbm = np.zeros((b, S * b), x.dtype) if need_grads else None
        dcm = np.zeros((gm * S, gn), x.dtype) if need_grads else None
        # (S * b, b): row s * b + c is bases[s, :, c]
        btr = bases.transpose(0, 2, 1).reshape(S * b, b) if need_dx else None
        for lo, hi in _batch_tiles(B, gm * S * b):
            t = hi - lo
            xr = x[lo:hi].reshape(t * gm, b)
            dyt = dy[lo:hi].reshape(t, gn, b).transpose(0, 2, 1).reshape(t * b, gn)
            dzt = dyt @ cmat.T  # (t * b, gm * S): (t, c, i, s)
            dz = dzt.reshape(t, b, gm, S).transpose(0, 2, 3, 1).reshape(t * gm, S * b)
            if need_grads:
                z = (xr @ bmat).reshape(t, gm, S, b)
                zt = z.transpose(0, 3, 1, 2).reshape(t * b, gm * S)
                dcm += zt.T @ dyt
                dbm += xr.T @ dz
            if need_dx:
                dx[lo:hi] = (dz @ btr).reshape(t, gm * b)
        if not need_grads:
            return dx, {}
        dbases = dbm.reshape(b, S, b).transpose(1, 0, 2)
        dcoeffs = dcm.reshape(gm, S, gn).transpose(0, 2, 1)
        return dx, {"bases": dbases, "coeffs": dcoeffs}


_KINDS[MixedBlock.kind] = MixedBlock


# --- input / output projections ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class InputOutput(Factorization):
    """W = blockdiag(P, ..., P) @ C @ blockdiag(Q, ..., Q).

    ``P`` (bi, pi): the input is cut into blocks of ``bi`` = input block size, each projected by
    the one shared P to ``pi = bi / f_in`` values; ``C`` (m / bi * pi, n / bo * qo); ``Q``
    (qo, bo): each run of ``qo = bo / f_out`` outputs of C is expanded by the one shared Q to
    ``bo`` = output block size outputs. Either projection may be absent (None: the identity, no
    bytes). W is (m, n) = (C.shape[0] / pi * bi, C.shape[1] / qo * bo).

    ``x @ W`` is three GEMMs (x's blocks by P, by C, the output blocks by Q); ``to_dense`` is the
    product above (P applied to C's row-blocks, Q to its column-blocks). Stored bytes: P + C +
    Q. Gradients for P, C and Q.
    """

    C: np.ndarray
    P: np.ndarray | None = None
    Q: np.ndarray | None = None
    kind: ClassVar[str] = "input_output"

    def __post_init__(self):
        C = _float_array(self.C, "C", 2)
        if C.shape[0] < 1 or C.shape[1] < 1:
            raise ValueError(f"C must not be empty; got shape {C.shape}")
        P, Q = self.P, self.Q
        if P is not None:
            P = _float_array(P, "P", 2)
            bi, pi = P.shape
            if bi < 1 or pi < 1:
                raise ValueError(f"P must not be empty; got shape {P.shape}")
            if C.shape[0] % pi:
                raise ValueError(f"C has {C.shape[0]} rows, not a multiple of P's {pi} columns "
                                 "(C holds pi rows per input block)")
            if P.dtype != C.dtype:
                raise TypeError(f"P and C must share a dtype; got {P.dtype}, {C.dtype}")
        if Q is not None:
            Q = _float_array(Q, "Q", 2)
            qo, bo = Q.shape
            if qo < 1 or bo < 1:
                raise ValueError(f"Q must not be empty; got shape {Q.shape}")
            if C.shape[1] % qo:
                raise ValueError(f"C has {C.shape[1]} columns, not a multiple of Q's {qo} rows "
                                 "(C holds qo columns per output block)")
            if Q.dtype != C.dtype:
                raise TypeError(f"Q and C must share a dtype; got {Q.dtype}, {C.dtype}")
        _freeze(self, C=C, P=P, Q=Q)

    @property
    def shape(self):
        m, n = self.C.shape
        if self.P is not None:
            m = m // self.P.shape[1] * self.P.shape[0]
        if self.Q is not None:
            n = n // self.Q.shape[0] * self.Q.shape[1]
        return (m, n)

    dtype = property(lambda self: self.C.dtype)

    @property
    def input_block_size(self):
        """bi (None without P)."""
        return None if self.P is None else self.P.shape[0]

    @property
    def output_block_size(self):
        """bo (None without Q)."""
        return None if self.Q is None else self.Q.shape[1]

    @property
    def nbytes(self):
        return int(sum(a.nbytes for a in (self.P, self.C, self.Q) if a is not None))

    @property
    def trainable_fields(self):
        return tuple(name for name in ("P", "C", "Q") if getattr(self, name) is not None)

    def _expand(self, v, Q):
        """v (rows, n') @ blockdiag(Q, ...)."""
        if Q is None:
            return v
        qo, bo = Q.shape
        rows = v.shape[0]
        return (v.reshape(-1, qo) @ Q).reshape(rows, v.shape[1] // qo * bo)

    def to_dense(self):
        return self._dense_rows(0, self.shape[0])

    def _dense_rows(self, start, stop):
        dt = self.dtype
        if self.P is None:
            v = self.C[start:stop]
        elif stop <= start:
            v = np.zeros((0, self.C.shape[1]), dt)
        else:
            bi, pi = self.P.shape
            g0, g1 = start // bi, -(-stop // bi)
            Cg = self.C[g0 * pi:g1 * pi].reshape(g1 - g0, pi, -1)
            v = np.matmul(self.P[None], Cg).reshape((g1 - g0) * bi, -1)
            v = v[start - g0 * bi:stop - g0 * bi]
        return np.ascontiguousarray(self._expand(v, self.Q), dtype=dt)

    def _arrays_in(self, dtype):
        return (None if self.P is None else self._as("P", dtype), self._as("C", dtype),
                None if self.Q is None else self._as("Q", dtype))

    def _matmul(self, x):
        P, C, Q = self._arrays_in(x.dtype)
        B = x.shape[0]
        u = x if P is None else (x.reshape(-1, P.shape[0]) @ P).reshape(B, -1)
        return self._expand(u @ C, Q)

    def _backward(self, x, dy, need_dx, need_grads):
        P, C, Q = self._arrays_in(x.dtype)
        B = x.shape[0]
        xr = None if P is None else x.reshape(-1, P.shape[0])
        u = x if P is None else (xr @ P).reshape(B, -1)
        grads = {}
        if Q is not None:
            qo, bo = Q.shape
            dyr = dy.reshape(-1, bo)
            if need_grads:
                v = u @ C
                grads["Q"] = v.reshape(-1, qo).T @ dyr
            dv = (dyr @ Q.T).reshape(B, -1)
        else:
            dv = dy
        if need_grads:
            grads["C"] = u.T @ dv
        du = dv @ C.T if (need_dx or (need_grads and P is not None)) else None
        dx = None
        if P is not None and du is not None:
            dur = du.reshape(-1, P.shape[1])
            if need_grads:
                grads["P"] = xr.T @ dur
            if need_dx:
                dx = (dur @ P.T).reshape(B, -1)
        elif need_dx:
            dx = du
        return dx, grads


_KINDS[InputOutput.kind] = InputOutput


# --- compressors ---------------------------------------------------------------------------------

def _need_one(name, value, ratio, what):
    if (value is None) == (ratio is None):
        raise ValueError(f"{name}: give exactly one of {what} and compression_ratio")


class BlockDiagonalCompressor(MatrixCompressor):
    """A ~ its k diagonal blocks (:class:`BlockDiagonal`), dense or each compressed.

    Stored bytes: dense blocks ``itemsize * sum_i rows_i * cols_i`` (about ``m * n / k``
    values; see :class:`BlockDiagonal` for the split); compressed blocks, the sum of the block
    compressor's bytes.

    Parameters
    ----------
    n_blocks : int, optional
        k, from 1 (A itself) to min(m, n). Needed with ``block_compressor``.
    compression_ratio : float, optional
        Dense blocks: instead of ``n_blocks``, the smallest k whose blocks fit in dense bytes /
        ratio. With ``block_compressor``: each block gets the budget's share of its size, so
        every block is compressed at ``ratio * (sum of the blocks' sizes) / (m * n)`` (about
        ratio / k).
    block_compressor : str, MatrixCompressor or dict, optional
        Compresses each block (a registered name, an instance or a ``get_config()`` dict): the
        result then stores its blocks as factorizations. With ``compression_ratio`` it must
        take one.
    damp : float, default=0.01
        With calibration inputs X (``H = X^T X / n_samples``): each block is the ridge
        least-squares fit of the layer's outputs on its columns,
        ``B_i = argmin ||X_i B - X A[:, c_i]||^2 / n_samples + lam ||B - A_ii||^2``
        (``X_i`` the inputs of block i's rows, ``lam = damp * mean(diag H)``): the inputs of
        the other blocks, which the form drops, are predicted from block i's own where they are
        correlated. The output error is never above that of A's blocks (they are the
        ``lam -> inf`` limit). A block compressor then compresses ``B_i``, given ``X_i`` when
        it takes inputs.
    random_state : int or None
        Seeds the block compressor when it has no seed of its own.
    """

    name = "block"
    uses_inputs = True

    def __init__(self, n_blocks=None, *, compression_ratio=None, block_compressor=None,
                 damp=0.01, random_state=None):
        self.n_blocks = n_blocks
        self.compression_ratio = compression_ratio
        self.block_compressor = block_compressor
        self.damp = damp
        self.random_state = random_state

    def get_config(self):
        from .composite import _config_of

        cfg = super().get_config()
        if self.block_compressor is not None:
            cfg["config"]["block_compressor"] = _config_of(self.block_compressor,
                                                           "block_compressor")
        return cfg

    @staticmethod
    def stored_bytes(m, n, itemsize, n_blocks):
        """Stored bytes of a dense :class:`BlockDiagonal` of ``n_blocks`` blocks."""
        return itemsize * _block_values(m, n, n_blocks)

    def solve(self, shape, itemsize):
        """The number of blocks k used for a matrix of ``shape``."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        top = min(m, n)
        if self.block_compressor is not None:
            if self.n_blocks is None:
                raise ValueError(f"{self.name}: a block_compressor needs n_blocks")
            return check_int(self.n_blocks, "n_blocks", min_value=1, max_value=top,
                             max_reason=f"min(m, n) = {top}")
        _need_one(self.name, self.n_blocks, ratio, "n_blocks")
        if ratio is None:
            return check_int(self.n_blocks, "n_blocks", min_value=1, max_value=top,
                             max_reason=f"min(m, n) = {top}")
        budget = m * n * itemsize / ratio
        # Near-equal splits: the stored values fall (weakly) as k grows; a first guess from
        # m n / k, then the exact count.
        k = max(1, min(top, int(math.ceil(m * n * itemsize / budget)) - 1))
        while k > 1 and self.stored_bytes(m, n, itemsize, k - 1) <= budget:
            k -= 1
        while k <= top and self.stored_bytes(m, n, itemsize, k) > budget:
            k += 1
        if k > top:
            raise _unreachable(self.name, ratio,
                               m * n * itemsize / self.stored_bytes(m, n, itemsize, top),
                               f"at most min(m, n) = {top} blocks")
        return k

    def _block_compressor(self, ratio):
        from .composite import _with_ratio

        comp = _as_compressor(self.block_compressor, "block_compressor")
        if ratio is not None:
            comp = _with_ratio(comp, ratio, self.random_state)
        elif (self.random_state is not None and "random_state" in comp.get_config()["config"]
              and comp.get_config()["config"]["random_state"] is None):
            params = dict(comp.get_config()["config"], random_state=self.random_state)
            comp = type(comp)(**params)
        return comp

    def resolve(self, A, *, X=None):
        """With a block compressor whose structure depends on the values (``auto``, a
        composite): this compressor with that compressor resolved on A's first block (every
        block then gets the same choices)."""
        if self.block_compressor is None:
            return self
        A = check_array(A, "A")
        m, n = A.shape
        k = self.solve(A.shape, A.dtype.itemsize)
        rs, cs = block_splits(m, k), block_splits(n, k)
        comp = self._block_compressor(self._block_ratio(A.shape, A.dtype.itemsize, k, 0))
        resolved = comp.resolve(A[rs[0]:rs[1], cs[0]:cs[1]])
        if resolved is comp:
            return self
        config = dict(self.get_config()["config"], block_compressor=resolved.get_config())
        return type(self)(**config)

    def _block_ratio(self, shape, itemsize, k, i):
        """The ratio block i is compressed at (None without compression_ratio)."""
        from .composite import _budget_ratio

        ratio = _check_ratio(self.compression_ratio)
        if ratio is None:
            return None
        m, n = shape
        rs, cs = block_splits(m, k), block_splits(n, k)
        dense_i = int(rs[i + 1] - rs[i]) * int(cs[i + 1] - cs[i]) * itemsize
        budget_i = m * n * itemsize / ratio * dense_i / (itemsize * _block_values(m, n, k))
        return _budget_ratio(dense_i, budget_i)

    def compress(self, A, *, grad=None, X=None):
        """Compress A (m x n). ``X`` (n_samples, m): calibration inputs of the layer (see
        ``damp``); ``grad`` is handed to a block compressor, block by block."""
        from .composite import _run

        A = check_array(A, "A")
        m, n = A.shape
        k = self.solve(A.shape, A.dtype.itemsize)
        damp = check_float(self.damp, "damp", min_value=0.0)
        check_random_state(self.random_state)
        if grad is not None:
            grad = check_array(grad, "grad", dtype=A.dtype)
            if grad.shape != A.shape:
                raise ValueError(f"grad must have the shape of A, {A.shape}; got {grad.shape}")
        rs, cs = block_splits(m, k), block_splits(n, k)
        H = None
        if X is not None:
            X = check_inputs(X, m)
            H, diag = input_moments(X)
            if _row_weights(diag) is None:
                H = None
        blocks = []
        for i in range(k):
            r0, r1, c0, c1 = int(rs[i]), int(rs[i + 1]), int(cs[i]), int(cs[i + 1])
            if H is None:
                blocks.append(A[r0:r1, c0:c1])
            else:
                blocks.append(_data_aware_block(A, H, r0, r1, c0, c1, damp))
        if self.block_compressor is None:
            values = np.concatenate([np.ravel(b) for b in blocks]).astype(A.dtype, copy=False)
            return BlockDiagonal(values, m, n, k)
        parts = []
        for i, blk in enumerate(blocks):
            r0, r1, c0, c1 = int(rs[i]), int(rs[i + 1]), int(cs[i]), int(cs[i + 1])
            comp = self._block_compressor(self._block_ratio(A.shape, A.dtype.itemsize, k, i))
            g = None if grad is None else grad[r0:r1, c0:c1]
            Xi = None if X is None else np.ascontiguousarray(X[:, r0:r1])
            try:
                if Xi is not None and getattr(comp, "uses_inputs", False):
                    parts.append(_run(comp, np.ascontiguousarray(blk), g, Xi))
                else:
                    parts.append(_run(comp, np.ascontiguousarray(blk), g, None))
            except ValueError as exc:
                from .composite import _best_ratio, _min_bytes

                ratio = _check_ratio(self.compression_ratio)
                if ratio is None or _best_ratio(exc) is None:
                    raise
                least = sum(_min_bytes(comp, (int(rs[j + 1] - rs[j]), int(cs[j + 1] - cs[j])),
                                       A.dtype.itemsize) for j in range(k))
                best = m * n * A.dtype.itemsize / least if least else float("nan")
                raise _unreachable(self.name, ratio, best,
                                   f"block {i} of {k}: {exc}") from None
        return BlockDiagonal(parts=tuple(parts))


def _data_aware_block(A, H, r0, r1, c0, c1, damp):
    """argmin_B ||X_i B - X A[:, c]||^2 / n + lam ||B - A_ii||^2 (normal equations)."""
    lam = damp * float(np.mean(np.diag(H)))
    Hii = H[r0:r1, r0:r1] + lam * np.eye(r1 - r0)
    rhs = H[r0:r1] @ A[:, c0:c1].astype(np.float64) + lam * A[r0:r1, c0:c1]
    try:
        B = scipy.linalg.solve(Hii, rhs, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        raise ValueError("H + damp * mean(diag H) * I is not positive definite on a block; "
                         "raise damp (H = X^T X / n_samples is singular when X has fewer "
                         "independent rows than columns)") from None
    return B.astype(A.dtype)


#: Block sizes ``MixedBlockCompressor`` chooses among when ``block_size`` is not given.
MIXED_BLOCK_SIZES = (4, 8, 16, 32)


def _block_vectors(A, b):
    """A's b x b blocks as rows: (m / b * n / b, b * b), block (i, j) at row i * (n / b) + j."""
    m, n = A.shape
    return A.reshape(m // b, b, n // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)


def _one_thread():
    """BLAS/LAPACK on one thread for the symmetric eigensolvers: their sizes here (up to 1024)
    gain little from two threads and lose much when the cores are shared (measured on the
    2-core machine under load: ``eigh`` of 1024 x 1024 4.3 s on two threads, 0.59 s on one)."""
    from .lowrank import _blas_controller

    return _blas_controller().limit(limits=1, user_api="blas")


def _squared_singular_values(V):
    """The squared singular values of V (float64), descending: from the smaller Gram matrix."""
    G, d = V.shape
    with _one_thread():
        if G < d:
            w = np.linalg.svd(V, compute_uv=False) ** 2
        else:
            w = np.linalg.eigvalsh(V.T @ V)[::-1]
    return np.clip(w, 0.0, None)


def _top_right_vectors(V, k):
    """k orthonormal rows spanning the top-k right singular subspace of V (G, d), float64:
    the eigenvectors of V^T V when G >= d, the rows of the thin SVD's Vt when G < d, completed
    (when k > G) by an orthonormal basis of the rest of R^d (their coefficients are zero)."""
    G, d = V.shape
    with _one_thread():
        if G >= d:
            M = V.T @ V
            w, U = scipy.linalg.eigh((M + M.T) / 2, subset_by_index=[d - k, d - 1],
                                     check_finite=False)
            return np.ascontiguousarray(U[:, ::-1].T)
        Vt = scipy.linalg.svd(V, full_matrices=False, check_finite=False,
                              lapack_driver="gesdd")[2]
        if k <= Vt.shape[0]:
            return np.ascontiguousarray(Vt[:k])
        rest = np.eye(d) - Vt.T @ Vt
        Q = scipy.linalg.qr(rest, pivoting=True, check_finite=False)[0]
        return np.ascontiguousarray(np.vstack([Vt, Q[:, :k - Vt.shape[0]].T]))


class MixedBlockCompressor(MatrixCompressor):
    """A ~ a grid of b x b blocks over ``num_bases`` shared basis blocks (:class:`MixedBlock`).

    The fit is closed form: A's blocks stacked as vectors V (m n / b^2, b^2), the bases are the
    top ``num_bases`` right singular vectors of V (float64: eigenvectors of V^T V when there
    are at least b^2 blocks, else the thin SVD of V, completed by an orthonormal basis of the
    rest when ``num_bases`` exceeds the number of blocks) and the
    coefficients the blocks' projections on them: the truncated SVD of V, the least
    ``||A - W||_F`` of any form with that many bases. ``num_bases = b * b`` reproduces A (up
    to rounding). Stored bytes: ``itemsize * num_bases * (b * b + m * n / b^2)``.

    Parameters
    ----------
    num_bases : int, optional
        S, from 1 to b * b.
    block_size : int, optional
        b, dividing both m and n. Default: with ``num_bases``, the smallest of
        :data:`MIXED_BLOCK_SIZES` (4, 8, 16, 32) dividing both sides with ``b * b >=
        num_bases``; with ``compression_ratio``, the one of those (dividing both sides) whose
        fit at its largest S that fits has the least error (its spectrum's tail).
    compression_ratio : float, optional
        Instead of ``num_bases``: the largest S (at most b * b) that fits in dense bytes /
        ratio.
    random_state : int or None
        Unused (the fit is deterministic); accepted as every compressor does.
    """

    name = "mixed_block"

    def __init__(self, num_bases=None, block_size=None, *, compression_ratio=None,
                 random_state=None):
        self.num_bases = num_bases
        self.block_size = block_size
        self.compression_ratio = compression_ratio
        self.random_state = random_state

    @staticmethod
    def stored_bytes(m, n, itemsize, num_bases, block_size):
        """Stored bytes of a :class:`MixedBlock` of this configuration."""
        b = block_size
        return itemsize * num_bases * (b * b + (m // b) * (n // b))

    def _sizes(self, m, n):
        if self.block_size is not None:
            b = check_int(self.block_size, "block_size", min_value=1)
            if m % b or n % b:
                raise ValueError(f"block_size={b} must divide both sides of the {m} x {n} "
                                 "matrix")
            return (b,)
        sizes = tuple(b for b in MIXED_BLOCK_SIZES if m % b == 0 and n % b == 0)
        if not sizes:
            raise ValueError(f"{self.name}: no block size of {MIXED_BLOCK_SIZES} divides both "
                             f"sides of the {m} x {n} matrix; give block_size")
        return sizes

    def _options(self, shape, itemsize):
        """[(b, S)] the configurations the parameters allow (one unless b is searched)."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        _need_one(self.name, self.num_bases, ratio, "num_bases")
        sizes = self._sizes(m, n)
        if ratio is None:
            S = check_int(self.num_bases, "num_bases", min_value=1)
            if self.block_size is None:
                fit = [b for b in sizes if b * b >= S]
                if not fit:
                    raise ValueError(f"num_bases={S} exceeds b * b for every block size of "
                                     f"{sizes} dividing both sides; give block_size")
                sizes = fit[:1]
            b = sizes[0]
            check_int(S, "num_bases", min_value=1, max_value=b * b,
                      max_reason=f"block_size * block_size = {b * b}")
            return [(b, S)]
        budget = m * n * itemsize / ratio
        out = []
        for b in sizes:
            S = min(b * b, int(budget // self.stored_bytes(m, n, itemsize, 1, b)))
            while S >= 1 and self.stored_bytes(m, n, itemsize, S, b) > budget:
                S -= 1
            if S >= 1:
                out.append((b, S))
        if not out:
            best = max(m * n * itemsize / self.stored_bytes(m, n, itemsize, 1, b) for b in sizes)
            raise _unreachable(self.name, ratio, best, f"one basis block of size {sizes} is the "
                                                       "smallest form")
        return out

    def solve(self, shape, itemsize):
        """(num_bases, block_size) for a matrix of ``shape`` when they follow from the shape;
        with ``compression_ratio`` and several block sizes allowed, the first (smallest) of
        them (:meth:`resolve` and ``compress`` choose among them on the values)."""
        b, S = self._options(shape, itemsize)[0]
        return S, b

    def _choose(self, A):
        """(b, S) chosen for A: the configuration of least error (the spectrum's tail)."""
        options = self._options(A.shape, A.dtype.itemsize)
        if len(options) == 1:
            return options[0]
        best = None
        A64 = A.astype(np.float64)
        for b, S in options:
            tail = float(_squared_singular_values(_block_vectors(A64, b))[S:].sum())
            if best is None or tail < best[0]:
                best = (tail, b, S)
        return best[1], best[2]

    def resolve(self, A, *, X=None):
        """With ``compression_ratio`` and no ``block_size``: this compressor with the block size
        chosen on A fixed."""
        if self.compression_ratio is None or self.block_size is not None:
            return self
        A = check_array(A, "A")
        b, _ = self._choose(A)
        return type(self)(**dict(self.get_config()["config"], block_size=b))

    def compress(self, A, *, grad=None, X=None):
        """Compress A (m x n); ``grad`` and ``X`` are ignored."""
        A = check_array(A, "A")
        check_random_state(self.random_state)
        m, n = A.shape
        b, S = self._choose(A)
        V = _block_vectors(A.astype(np.float64), b)
        bases = _top_right_vectors(V, S)  # (S, b * b), orthonormal rows
        coeffs = V @ bases.T  # (m / b * n / b, S)
        return MixedBlock(bases.reshape(S, b, b).astype(A.dtype),
                          coeffs.reshape(m // b, n // b, S).astype(A.dtype))


#: The largest block the ratio search of ``InputOutputCompressor`` tries (its projection's
#: eigenproblem is b x b: about 1 s at 1024 on one core).
_MAX_SEARCHED_BLOCK = 1024

#: Block sizes ``InputOutputCompressor`` takes by default: the largest dividing the side.
INPUT_OUTPUT_BLOCK_SIZES = (32, 16, 8, 4, 2, 1)


def _top_eigvecs(M, k):
    """The k eigenvectors of the symmetric M of largest eigenvalues, as columns (float64)."""
    d = M.shape[0]
    with _one_thread():
        w, U = scipy.linalg.eigh((M + M.T) / 2, subset_by_index=[d - k, d - 1],
                                 check_finite=False)
    return np.ascontiguousarray(U[:, ::-1])


def _fit_projections(A, bi, pi, bo, qo, n_iter):
    """(P or None, C, Q or None) for A (float64): P (bi, pi) with orthonormal columns shared by
    the input blocks, Q (qo, bo) with orthonormal rows shared by the output blocks, and the
    least-squares C = blockdiag(P)^T A blockdiag(Q)^T. P is the top-pi eigenvectors of
    ``sum_g A_g A_g^T`` over A's row-blocks A_g (bi, n) -- the left singular vectors of the
    row-blocks side by side --, with A's columns first projected by Q when there is one; Q
    likewise from the column-blocks, projected by P; alternated ``n_iter`` rounds (Ye's
    generalized low-rank approximation: each step maximizes the captured energy
    ``||blockdiag(P)^T A blockdiag(Q)^T||^2`` given the other projection, so the error never
    rises). A full-size projection (pi = bi, qo = bo) is the identity."""
    m, n = A.shape
    full_p = bi is None or pi == bi
    full_q = bo is None or qo == bo

    def left(Q):  # A blockdiag(Q)^T: (m, n')
        return A if Q is None else (A.reshape(m, -1, Q.shape[1]) @ Q.T).reshape(m, -1)

    def right(P):  # blockdiag(P)^T A: (m', n)
        return A if P is None else (P.T @ A.reshape(-1, P.shape[0], n)).reshape(-1, n)

    def fit_p(Q):
        if full_p:
            return None if bi is None else np.eye(bi)
        Aq = left(Q)
        X = Aq.reshape(m // bi, bi, -1).transpose(1, 0, 2).reshape(bi, -1)  # blocks side by side
        return _top_eigvecs(X @ X.T, pi)

    def fit_q(P):
        if full_q:
            return None if bo is None else np.eye(bo)
        Y = right(P).reshape(-1, bo)  # the column-blocks stacked
        return _top_eigvecs(Y.T @ Y, qo).T

    def project(P, Q):
        C = right(P)
        if Q is not None:
            C = (C.reshape(C.shape[0], -1, bo) @ Q.T).reshape(C.shape[0], -1)
        return C

    P = fit_p(None)
    Q = fit_q(P)
    captured = float(np.sum(project(P, Q) ** 2))
    for _ in range(n_iter):
        if full_p or full_q:
            break  # one side is the identity: the other is optimal already
        P2 = fit_p(Q)
        Q2 = fit_q(P2)
        new = float(np.sum(project(P2, Q2) ** 2))
        if not new > captured * (1 + 1e-12):
            break
        P, Q, captured = P2, Q2, new
    return P, project(P, Q), Q


class InputOutputCompressor(MatrixCompressor):
    """A ~ blockdiag(P, ..., P) @ C @ blockdiag(Q, ..., Q) (:class:`InputOutput`): the input
    cut into blocks of ``input_block_size`` = bi, each projected by one shared P
    (bi x bi / f_in); C (m / f_in x n / f_out); each output block of ``bo / f_out`` values
    expanded by one shared Q (bo / f_out x bo) to ``output_block_size`` = bo.

    Stored bytes: ``itemsize * (bi * bi / f_in + m n / (f_in f_out) + bo * bo / f_out)``, P's
    term only when P is stored and Q's likewise.

    Parameters
    ----------
    input_factor, output_factor : int, optional
        f_in and f_out, each dividing its block size. P is stored when ``input_factor > 1`` or
        ``input_block_size`` is given (a full-size P at factor 1: trainable, initialized to the
        identity), else the input is not projected; the same for Q. Default 1.
    input_block_size, output_block_size : int, optional
        bi dividing m and bo dividing n. Default: the largest of
        :data:`INPUT_OUTPUT_BLOCK_SIZES` (32, 16, 8, 4, 2, 1) dividing the side that the factor
        divides.
    compression_ratio : float, optional
        Instead of the factors: for each side, no projection, or a power-of-two factor f > 1
        with a power-of-two block size it divides (the given block size, else any power of two
        dividing the side, up to the side or 1024). Among the configurations that fit in
        dense bytes / ratio: the smallest product ``f_in * f_out``, then the most stored bytes (the largest
        blocks the budget affords: a P of a block of 2b inputs can hold any pair of P's of b,
        so larger blocks fit A at least as well at one factor). A ratio of 2^j needs a product
        of 2^(j+1) (C alone takes dense / (f_in f_out), the projections a little more).
    n_iter : int, default=3
        Rounds of the alternating least-squares fit of P and Q after the first.
    random_state : int or None
        Unused (the fit is deterministic); accepted as every compressor does.

    Notes
    -----
    Initialized from A by least squares, not at random as in the original system (whose
    projections start random and only C is tied to A), so a layer's blend phase starts close
    to A: P spans the dominant column space shared by A's row-blocks (the SVD of the row-blocks
    side by side), Q the dominant row space shared by its column-blocks, and C is the exact
    least-squares fit ``blockdiag(P)^T A blockdiag(Q)^T`` (P, Q orthonormal); P and Q are then
    refitted alternately, each the exact maximizer of the captured energy given the other
    (J. Ye, "Generalized low rank approximations of matrices", Machine Learning 2005). With
    full-size projections the result is A.
    """

    name = "input_output"

    def __init__(self, input_factor=None, output_factor=None, *, input_block_size=None,
                 output_block_size=None, compression_ratio=None, n_iter=3, random_state=None):
        self.input_factor = input_factor
        self.output_factor = output_factor
        self.input_block_size = input_block_size
        self.output_block_size = output_block_size
        self.compression_ratio = compression_ratio
        self.n_iter = n_iter
        self.random_state = random_state

    @staticmethod
    def stored_bytes(m, n, itemsize, input_factor, output_factor, input_block_size=None,
                     output_block_size=None):
        """Stored bytes of an :class:`InputOutput` of this configuration (a block size of None:
        that projection is not stored)."""
        total = (m // input_factor) * (n // output_factor)
        if input_block_size is not None:
            total += input_block_size * (input_block_size // input_factor)
        if output_block_size is not None:
            total += output_block_size * (output_block_size // output_factor)
        return itemsize * total

    @staticmethod
    def _block(size, side, what, factor):
        """The block size for one side (given, or the default), checked."""
        name = f"{what}_block_size"
        if size is not None:
            b = check_int(size, name, min_value=1)
            if side % b:
                raise ValueError(f"{name}={b} must divide the matrix's {side} "
                                 f"{'rows' if what == 'input' else 'columns'}")
            if factor is not None and factor > b:
                raise ValueError(f"{what}_factor={factor} is larger than {name}={b}: a block "
                                 "cannot be projected to fewer than one value")
            if factor is not None and b % factor:
                raise ValueError(f"{what}_factor={factor} must divide {name}={b}")
            return b
        for b in INPUT_OUTPUT_BLOCK_SIZES:
            if side % b == 0 and (factor is None or b % factor == 0):
                return b
        raise ValueError(f"{what}_factor={factor} divides no block size of "
                         f"{INPUT_OUTPUT_BLOCK_SIZES} that divides the side {side}; give "
                         f"{name}")

    def solve(self, shape, itemsize):
        """(bi, f_in, P stored, bo, f_out, Q stored) for a matrix of ``shape``."""
        m, n = shape
        ratio = _check_ratio(self.compression_ratio)
        given = self.input_factor is not None or self.output_factor is not None
        if ratio is not None and given:
            raise ValueError(f"{self.name}: give either input_factor / output_factor or "
                             "compression_ratio, not both")
        if ratio is None:
            if not given and self.input_block_size is None and self.output_block_size is None:
                raise ValueError(f"{self.name}: give input_factor / output_factor (or a block "
                                 "size) or compression_ratio")
            f_in = check_int(1 if self.input_factor is None else self.input_factor,
                             "input_factor", min_value=1)
            f_out = check_int(1 if self.output_factor is None else self.output_factor,
                              "output_factor", min_value=1)
            bi = self._block(self.input_block_size, m, "input", f_in)
            bo = self._block(self.output_block_size, n, "output", f_out)
            return (bi, f_in, f_in > 1 or self.input_block_size is not None,
                    bo, f_out, f_out > 1 or self.output_block_size is not None)
        # Candidates: for each side, no projection (factor 1), or a power-of-two factor f
        # with a power-of-two block (the given one, else any dividing the side) it divides.
        ins = _side_options(self.input_block_size, m, "input")
        outs = _side_options(self.output_block_size, n, "output")
        budget = m * n * itemsize / ratio
        best, least = None, None
        for bi, f_in in ins:
            for bo, f_out in outs:
                size = self.stored_bytes(m, n, itemsize, f_in, f_out, bi, bo)
                least = size if least is None else min(least, size)
                if size > budget:
                    continue
                key = (-(f_in * f_out), size)
                if best is None or key > best[0]:
                    best = (key, (bi, f_in, bo, f_out))
        if best is None:
            raise _unreachable(self.name, ratio, m * n * itemsize / least,
                               "blocks projected to one value each are the smallest form")
        bi, f_in, bo, f_out = best[1]
        if bi is None:
            bi = self._block(self.input_block_size, m, "input", 1)
        if bo is None:
            bo = self._block(self.output_block_size, n, "output", 1)
        return bi, f_in, f_in > 1, bo, f_out, f_out > 1

    def compress(self, A, *, grad=None, X=None):
        """Compress A (m x n); ``grad`` and ``X`` are ignored."""
        A = check_array(A, "A")
        check_random_state(self.random_state)
        n_iter = check_int(self.n_iter, "n_iter", min_value=0)
        bi, f_in, use_p, bo, f_out, use_q = self.solve(A.shape, A.dtype.itemsize)
        if not use_p and not use_q:
            return InputOutput(A.copy())
        P, C, Q = _fit_projections(A.astype(np.float64), bi if use_p else None, bi // f_in,
                                   bo if use_q else None, bo // f_out, n_iter)
        dt = A.dtype
        return InputOutput(C.astype(dt), None if P is None else P.astype(dt),
                           None if Q is None else Q.astype(dt))


def _side_options(block_size, side, what):
    """[(block size or None, factor)] the ratio search of InputOutputCompressor tries for one
    side: (None, 1), no projection; and (b, f) for b the given block size (else every power of
    two dividing the side, up to the side or 1024) and f > 1 every power of two dividing b."""
    if block_size is not None:
        sizes = [InputOutputCompressor._block(block_size, side, what, None)]
    else:
        sizes = [b for b in _powers_dividing(min(side, _MAX_SEARCHED_BLOCK))
                 if b > 1 and side % b == 0]
    out = [(None, 1)]
    for b in sizes:
        out += [(b, f) for f in _powers_dividing(b) if f > 1]
    return out


def _powers_dividing(b):
    """1, 2, 4, ... up to b, those dividing b."""
    out, f = [], 1
    while f <= b:
        if b % f == 0:
            out.append(f)
        f *= 2
    return out
