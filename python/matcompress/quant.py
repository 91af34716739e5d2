"""Scalar codebooks with channel structure: W[i, j] ~ scale of its group * codebook[code[i, j]].

Trained weights are close to full rank, so at 8x and 16x fewer bytes only quantization keeps a
model; per-channel (or per-group) scales let one small codebook serve channels of very
different magnitude, as GPTQ / AWQ-style int4 and int2 quantization do. Codes are packed densely
at ``bits = ceil(log2(n_codes))`` bits per weight (:func:`pack_bits`), so 2-bit codes cost 2
bits.

- :class:`ScaledCodebook`: the factorization (kind ``"scaled_codebook"``).
- :class:`ScaledKMeansCompressor`: the compressor (name ``"scaled_kmeans"``): scales from the
  groups, a weighted 1-D k-means of the normalized weights (:func:`matcompress.fit_codebook`),
  then alternating least-squares scale refits, recoding and codebook refits; optionally weighted
  by calibration inputs ``X`` (the diagonal of ``X^T X``).
- :func:`pack_bits` / :func:`unpack_bits`: dense bit packing of integer codes along the last axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from . import factors as _factors
from ._validation import check_array, check_float, check_int, check_n_threads, check_random_state
from .compressors import MatrixCompressor, _check_ratio, _need_one, _unreachable
from .factors import Factorization, _float_array, _freeze

__all__ = ["pack_bits", "unpack_bits", "ScaledCodebook", "ScaledKMeansCompressor",
           "code_bits"]

#: Code widths :func:`pack_bits` supports.
BIT_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 16)

# Values decoded at a time by the factorization's products (a tile of rows of W).
_TILE_VALUES = 1 << 20

_F16_MAX = float(np.finfo(np.float16).max)


def code_bits(n_codes):
    """Bits per code for a codebook of ``n_codes`` entries: ``ceil(log2(n_codes))`` (at least
    1) up to 256 codes, 16 up to 65,536.

    Examples
    --------
    >>> from matcompress.quant import code_bits
    >>> [code_bits(k) for k in (1, 2, 3, 4, 5, 16, 17, 256, 257, 65536)]
    [1, 1, 2, 2, 3, 4, 5, 8, 16, 16]
    """
    n_codes = check_int(n_codes, "n_codes", min_value=1, max_value=1 << 16,
                        max_reason="codes are stored in at most 16 bits")
    return max(1, (n_codes - 1).bit_length()) if n_codes <= 256 else 16


def _check_bits(bits):
    bits = check_int(bits, "bits", min_value=1)
    if bits not in BIT_WIDTHS:
        raise ValueError(f"bits must be one of {BIT_WIDTHS}; got {bits}")
    return bits


def _packed_width(n, bits):
    return (n * bits + 7) // 8


def _pack_rows(c, bits):
    """c (rows, n) integers < 2**bits -> (rows, ceil(n * bits / 8)) uint8 (trusted input)."""
    rows, n = c.shape
    width = _packed_width(n, bits)
    if bits == 16:
        return np.ascontiguousarray(c, "<u2").view(np.uint8).reshape(rows, width)
    if bits == 8:
        return np.ascontiguousarray(c, np.uint8)
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte
        per = 8 // bits
        pad = np.zeros((rows, width * per), np.uint8)
        pad[:, :n] = c
        out = pad[:, 0::per].copy()
        for k in range(1, per):
            out |= pad[:, k::per] << np.uint8(k * bits)
        return out
    # 3, 5, 6, 7: 8 codes fill exactly ``bits`` bytes; assemble them in a 64-bit word.
    groups = (n + 7) // 8
    pad = np.zeros((rows, groups * 8), np.uint64)
    pad[:, :n] = c
    pad = pad.reshape(rows, groups, 8)
    word = pad[:, :, 0].copy()
    for k in range(1, 8):
        word |= pad[:, :, k] << np.uint64(k * bits)
    out = np.empty((rows, groups, bits), np.uint8)
    for t in range(bits):
        out[:, :, t] = (word >> np.uint64(8 * t)) & np.uint64(0xFF)
    return out.reshape(rows, groups * bits)[:, :width]


def _unpack_rows(p, bits, n):
    """p (rows, ceil(n * bits / 8)) uint8 -> (rows, n) codes (uint8; uint16 for 16 bits)."""
    rows = p.shape[0]
    if bits == 16:
        return np.ascontiguousarray(p).view("<u2").astype(np.uint16, copy=False)
    if bits == 8:
        return p.copy()
    mask = np.uint8((1 << bits) - 1)
    if 8 % bits == 0:
        per = 8 // bits
        out = np.empty((rows, p.shape[1] * per), np.uint8)
        for k in range(per):
            np.bitwise_and(p >> np.uint8(k * bits), mask, out=out[:, k::per])
        return out[:, :n]
    groups = (n + 7) // 8
    pad = np.zeros((rows, groups * bits), np.uint8)
    pad[:, :p.shape[1]] = p
    pad = pad.reshape(rows, groups, bits)
    word = pad[:, :, 0].astype(np.uint64)
    for t in range(1, bits):
        word |= pad[:, :, t].astype(np.uint64) << np.uint64(8 * t)
    out = np.empty((rows, groups, 8), np.uint8)
    for k in range(8):
        out[:, :, k] = (word >> np.uint64(k * bits)) & np.uint64(mask)
    return out.reshape(rows, groups * 8)[:, :n]


def _row_blocks(rows, n):
    step = max(1, _TILE_VALUES // max(1, n))
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


def pack_bits(codes, bits):
    """Pack integer codes densely at ``bits`` bits each along the last axis.

    Code ``j`` of a row occupies bits ``j * bits`` to ``(j + 1) * bits - 1`` of the row's bit
    string, where bit ``k`` of the string is bit ``k % 8`` (least significant first) of byte
    ``k // 8`` (little-endian throughout; 16-bit codes are little-endian ``uint16``).

    Parameters
    ----------
    codes : array-like of integers in [0, 2**bits), shape (..., n)
    bits : {1, 2, 3, 4, 5, 6, 7, 8, 16}

    Returns
    -------
    packed : ndarray of uint8, shape (..., ceil(n * bits / 8))
        The unused bits of each row's last byte are 0. :func:`unpack_bits` inverts it.

    Examples
    --------
    >>> from matcompress import pack_bits, unpack_bits
    >>> packed = pack_bits([[1, 2, 3, 0, 1], [3, 3, 3, 3, 3]], 2)
    >>> packed.tolist(), unpack_bits(packed, 2, 5).tolist()
    ([[57, 1], [255, 3]], [[1, 2, 3, 0, 1], [3, 3, 3, 3, 3]])
    >>> pack_bits([5, 7, 1], 3).tolist()  # 101 111 001 -> bits 101111001, low bit first
    [125, 0]
    """
    bits = _check_bits(bits)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers; got dtype {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one axis")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) to be packed in {bits} bits; got "
                         f"values in [{int(codes.min())}, {int(codes.max())}]")
    lead, n = codes.shape[:-1], codes.shape[-1]
    flat = codes.reshape(math.prod(lead), n)
    out = np.empty((flat.shape[0], _packed_width(n, bits)), np.uint8)
    for a, b in _row_blocks(flat.shape[0], n):
        out[a:b] = _pack_rows(flat[a:b], bits)
    return out.reshape(lead + (out.shape[1],))


def unpack_bits(packed, bits, n):
    """Unpack :func:`pack_bits`'s bytes into ``n`` codes along the last axis.

    Parameters
    ----------
    packed : ndarray of uint8, shape (..., ceil(n * bits / 8))
    bits : {1, 2, 3, 4, 5, 6, 7, 8, 16}
    n : int
        Codes per row.

    Returns
    -------
    codes : ndarray of shape (..., n)
        uint8 for ``bits <= 8``, uint16 for 16.
    """
    bits = _check_bits(bits)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be uint8; got dtype {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError("packed must have at least one axis (the packed codes)")
    n = check_int(n, "n", min_value=0)
    if packed.shape[-1] != _packed_width(n, bits):
        raise ValueError(f"n={n} codes of {bits} bits take {_packed_width(n, bits)} bytes per "
                         f"row; packed has {packed.shape[-1]}")
    lead = packed.shape[:-1]
    flat = packed.reshape(math.prod(lead), packed.shape[-1])
    out = np.empty((flat.shape[0], n), np.uint16 if bits == 16 else np.uint8)
    for a, b in _row_blocks(flat.shape[0], n):
        out[a:b] = _unpack_rows(flat[a:b], bits, n)
    return out.reshape(lead + (n,))


# --- the factorization ---------------------------------------------------------------------------

def _ceil_div(a, b):
    return -(-a // b)


class _DecodedTiles:
    """Dense rows and ``x @ W`` of a form decoded in tiles of rows of about 2^20 weights (never
    the whole W): ``_tile(start, stop, dtype)`` returns a tuple whose last item is rows
    [start, stop) of W in ``dtype``; ``n_cols`` is n and ``codes`` has a row per row of W."""

    @property
    def shape(self):
        return (self.codes.shape[0], self.n_cols)

    @property
    def bits_per_weight(self):
        """Stored bits per weight, codebooks and scales included."""
        m, n = self.shape
        return 8 * self.nbytes / (m * n)

    def _blocks(self):
        return _row_blocks(self.shape[0], self.n_cols)

    def to_dense(self):
        return self._dense_rows(0, self.shape[0])

    def _dense_rows(self, start, stop):
        out = np.empty((stop - start, self.n_cols), self.dtype)
        for a, b in _row_blocks(stop - start, self.n_cols):
            out[a:b] = self._tile(start + a, start + b, self.dtype)[-1]
        return out

    def _matmul(self, x):
        # x[:, rows] @ tile by BLAS, accumulated.
        y = None
        for a, b in self._blocks():
            part = x[:, a:b] @ self._tile(a, b, x.dtype)[-1]
            if y is None:
                y = part
            else:
                y += part
        return y


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ScaledCodebook(_DecodedTiles, Factorization):
    """W[i, j] ~ scales[g(i, j)] * codebook[book(i, j), code[i, j]].

    ``channel_axis=1`` (Keras kernels, ``x @ W``): a channel is a column; ``scales`` has shape
    ``(ceil(m / group_size), n)``, one scale per column per run of ``group_size`` consecutive
    rows, ``g(i, j) = (i // group_size, j)``. ``channel_axis=0`` (embedding tables): a channel is
    a row; ``scales`` has shape ``(m, ceil(n / group_size))``, ``g(i, j) = (i, j // group_size)``.
    ``group_size`` is stored clipped to the length of the grouped axis (m, or n).

    ``codebook`` (n_books, n_codes), in the dtype of W: codebook ``b`` serves channels
    ``b * run`` to ``(b + 1) * run - 1``, ``run = ceil(channels / n_books)``. ``scales`` are
    float16 (converted to the compute dtype: W is ``float(scale) * codebook value``, one
    rounding). ``codes`` (m, ceil(n * bits / 8)) uint8: each row's n codes packed at
    ``bits = ceil(log2(n_codes))`` bits (16 beyond 256 codes) by :func:`pack_bits`.

    Stored bytes (``nbytes``): codes + codebook + scales (2 bytes each); the three integers
    (n_cols, group_size, channel_axis) are not counted, as :class:`Codebook`'s n_cols is not.
    """

    codes: np.ndarray
    codebook: np.ndarray
    scales: np.ndarray
    n_cols: int
    group_size: int
    channel_axis: int = 1
    kind: ClassVar[str] = "scaled_codebook"

    def __post_init__(self):
        codebook = _float_array(self.codebook, "codebook", 2)
        n_books, n_codes = codebook.shape
        if n_books < 1 or n_codes < 1:
            raise ValueError(f"codebook must hold at least one entry in one book; got shape "
                             f"{codebook.shape}")
        if n_codes > 1 << 16:
            raise ValueError(f"codebook may hold at most 65536 codes (16 bits); got {n_codes}")
        if not np.isfinite(codebook).all():
            raise ValueError("codebook contains NaN or infinity")
        axis = check_int(self.channel_axis, "channel_axis")
        if axis not in (0, 1):
            raise ValueError(f"channel_axis must be 0 (rows) or 1 (columns); got {axis}")
        n = check_int(self.n_cols, "n_cols", min_value=1)
        bits = code_bits(n_codes)
        codes = np.asarray(self.codes)
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise TypeError(f"codes must be a 2-D uint8 array (packed codes); got dtype "
                            f"{codes.dtype}, shape {codes.shape}")
        if codes.shape[0] < 1:
            raise ValueError("codes must hold at least one row")
        if codes.shape[1] != _packed_width(n, bits):
            raise ValueError(f"codes must have ceil(n * bits / 8) = {_packed_width(n, bits)} "
                             f"bytes per row (n = {n}, {bits}-bit codes for {n_codes} codes); "
                             f"got {codes.shape[1]}")
        m = codes.shape[0]
        span = m if axis == 1 else n
        gs = min(check_int(self.group_size, "group_size", min_value=1), span)
        channels = n if axis == 1 else m
        if n_books > channels:
            raise ValueError(f"n_books={n_books} exceeds the number of channels, {channels}")
        scales = np.asarray(self.scales)
        if scales.dtype != np.float16:
            raise TypeError(f"scales must be float16; got dtype {scales.dtype}")
        want = (_ceil_div(m, gs), n) if axis == 1 else (m, _ceil_div(n, gs))
        if scales.shape != want:
            raise ValueError(f"scales must have shape {want} for W of shape ({m}, {n}), "
                             f"group_size={gs}, channel_axis={axis}; got {scales.shape}")
        if not np.isfinite(scales).all():
            raise ValueError("scales contain NaN or infinity")
        used = (n * bits) % 8
        if used and int(codes[:, -1].max()) >> used:
            raise ValueError("codes: the unused high bits of each row's last byte must be 0")
        if n_codes < 1 << bits:  # a code may exceed the codebook: decode and look
            for a, b in _row_blocks(m, n):
                top = int(_unpack_rows(codes[a:b], bits, n).max())
                if top >= n_codes:
                    raise ValueError(f"codes must lie in [0, {n_codes}); got {top}")
        object.__setattr__(self, "n_cols", n)
        object.__setattr__(self, "group_size", gs)
        object.__setattr__(self, "channel_axis", axis)
        _freeze(self, codes=codes, codebook=codebook, scales=scales)

    dtype = property(lambda self: self.codebook.dtype)
    n_books = property(lambda self: self.codebook.shape[0])
    n_codes = property(lambda self: self.codebook.shape[1])
    bits = property(lambda self: code_bits(self.n_codes))

    @property
    def nbytes(self):
        return int(self.codes.nbytes + self.codebook.nbytes + self.scales.nbytes)

    def unpacked_codes(self, start=0, stop=None):
        """Codes of rows [start, stop) as an (rows, n) integer array."""
        m = self.shape[0]
        stop = m if stop is None else stop
        return unpack_bits(self.codes[start:stop], self.bits, self.n_cols)

    def _books(self):
        """Book of each channel (column for axis 1, row for axis 0)."""
        m, n = self.shape
        channels = n if self.channel_axis == 1 else m
        run = _ceil_div(channels, self.n_books)
        return self._cached("books", lambda: (np.arange(channels) // run).astype(np.intp))

    def _flat_index(self, codes, start, stop):
        """Index into codebook.ravel() of each code of rows [start, stop)."""
        if self.n_books == 1:
            return codes
        books = self._books() * self.n_codes
        if self.channel_axis == 1:
            return codes + books[None, :]
        return codes + books[start:stop, None]

    def _scale_tile(self, scales, start, stop):
        """Each weight's scale for rows [start, stop): (rows, n), or broadcastable to it."""
        gs, n = self.group_size, self.n_cols
        if self.channel_axis == 1:
            g = np.arange(start, stop) // gs
            return scales[g]
        s = scales[start:stop]
        return s if gs == 1 else np.repeat(s, gs, axis=1)[:, :n]

    def _tile(self, start, stop, dtype):
        """(values, flat codebook index, scale tile, W tile) of rows [start, stop) in dtype."""
        codes = unpack_bits(self.codes[start:stop], self.bits, self.n_cols)
        flat = self._flat_index(codes, start, stop)
        values = self._as("codebook", dtype).reshape(-1)[flat]
        s = self._scale_tile(self._as("scales", dtype), start, stop)
        return values, flat, s, values * s

    trainable_fields: ClassVar[tuple[str, ...]] = ("codebook", "scales")

    def _backward(self, x, dy, need_dx, need_grads):
        m, n = self.shape
        ct = x.dtype
        dx = np.empty((x.shape[0], m), ct) if need_dx else None
        dcb = np.zeros(self.n_books * self.n_codes) if need_grads else None
        dsc = np.zeros(self.scales.shape) if need_grads else None
        gs = self.group_size
        for a, b in self._blocks():
            values, flat, s, w = self._tile(a, b, ct)
            if need_dx:
                dx[:, a:b] = dy @ w.T
            if not need_grads:
                continue
            g = x[:, a:b].T @ dy  # dL/dW for these rows: (rows, n)
            dcb += np.bincount(np.ravel(flat), weights=np.ravel(g * s),
                               minlength=dcb.shape[0])
            p = g * values
            if self.channel_axis == 1:
                first = -(-a // gs) * gs  # first group start at or after a
                starts = np.unique(np.concatenate([[0], np.arange(first, b, gs) - a]))
                dsc[a // gs: (b - 1) // gs + 1] += np.add.reduceat(p, starts, axis=0)
            else:
                dsc[a:b] += np.add.reduceat(p, np.arange(0, n, gs), axis=1)
        if not need_grads:
            return dx, {}
        return dx, {"codebook": dcb.astype(ct).reshape(self.codebook.shape),
                    "scales": dsc.astype(ct)}


_factors._KINDS[ScaledCodebook.kind] = ScaledCodebook


# --- the compressor ------------------------------------------------------------------------------

#: Group sizes ``compression_ratio`` tries (those shorter than the grouped axis), finest first;
#: then one group per channel.
GROUP_SIZES = (32, 64, 128, 256, 512, 1024)

#: Initial scales of the groups.
SCALE_INITS = ("rms", "absmax")


def _round16(s):
    """float64 scales -> float16 (clipped to the finite range)."""
    return np.clip(s, -_F16_MAX, _F16_MAX).astype(np.float16)


class _Grid:
    """The geometry of a scaled codebook of an (m, n) matrix: groups, books, chunks."""

    def __init__(self, m, n, gs, axis, n_books):
        self.m, self.n, self.gs, self.axis, self.n_books = m, n, gs, axis, n_books
        self.shape = (_ceil_div(m, gs), n) if axis == 1 else (m, _ceil_div(n, gs))
        channels = n if axis == 1 else m
        self.run = _ceil_div(channels, n_books)
        self.col_groups = np.arange(n) // gs

    def expand(self, sigma, rows):
        """Each weight's scale for the rows ``rows`` (ascending indices): (len(rows), n)."""
        if self.axis == 1:
            return sigma[rows // self.gs]
        return sigma[rows][:, self.col_groups]

    def group_range(self, rows):
        """(lo, hi): the rows of the grid holding the groups of ``rows`` (ascending)."""
        if self.axis == 1:
            return rows[0] // self.gs, rows[-1] // self.gs + 1
        return rows[0], rows[-1] + 1

    def group_sizes(self):
        """Weights per group (the grid's shape)."""
        if self.axis == 1:
            per = np.minimum(self.gs, self.m - np.arange(self.shape[0]) * self.gs)
            return np.broadcast_to(per[:, None], self.shape)
        per = np.minimum(self.gs, self.n - np.arange(self.shape[1]) * self.gs)
        return np.broadcast_to(per[None, :], self.shape)

    def group_sum(self, acc, p, rows, base=0):
        """acc (grid rows from ``base`` on) += the sums of p (len(rows), n) over each group
        (rows ascending)."""
        if self.axis == 1:
            g = rows // self.gs
            starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
            acc[g[starts] - base] += np.add.reduceat(p, starts, axis=0)
        else:
            acc[rows - base] += np.add.reduceat(p, np.arange(0, self.n, self.gs), axis=1)

    def group_max(self, acc, p, rows):
        if self.axis == 1:
            g = rows // self.gs
            starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
            np.maximum.at(acc, g[starts], np.maximum.reduceat(p, starts, axis=0))
        else:
            acc[rows] = np.maximum(acc[rows], np.maximum.reduceat(
                p, np.arange(0, self.n, self.gs), axis=1))

    def book_slices(self, rows):
        """[(book, row selection, column selection)] of the weights of ``rows``: for column
        books every row and a slice of columns, for row books the positions in ``rows``."""
        out = []
        for b in range(self.n_books):
            lo, hi = b * self.run, (b + 1) * self.run
            if self.axis == 1:
                if lo < self.n:
                    out.append((b, slice(None), slice(lo, min(hi, self.n))))
            else:
                sel = np.flatnonzero((rows >= lo) & (rows < hi))
                if sel.size:
                    out.append((b, sel, slice(None)))
        return out


class ScaledKMeansCompressor(MatrixCompressor):
    """A ~ scales * codebook[codes]: one scale per channel (or per group of ``group_size``
    weights of a channel), a shared scalar codebook fitted by 1-D k-means, codes packed at
    ``ceil(log2(n_codes))`` bits (:class:`ScaledCodebook`).

    Stored bytes: ``m * ceil(n * bits / 8)`` (codes) + ``n_books * n_codes * itemsize``
    (codebooks) + ``2 * n_scales`` (float16 scales; ``ceil(m / group_size) * n`` for
    ``channel_axis=1``, ``m * ceil(n / group_size)`` for 0).

    Parameters
    ----------
    n_codes : int, optional
        Codebook size, 1 to 65,536 (bits per code: 1 to 8, or 16 beyond 256).
    group_size : int, optional
        Weights of a channel sharing a scale (consecutive rows of a column for
        ``channel_axis=1``, consecutive columns of a row for 0). Default: the whole channel.
    channel_axis : {1, 0}, default=1
        1: a channel is a column (Keras kernels, ``x @ W``: one scale per output); 0: a row
        (embedding tables).
    n_books : int, default=1
        Codebooks, each shared by a contiguous run of ``ceil(channels / n_books)`` channels.
    compression_ratio : float, optional
        Instead of ``n_codes``: the most code bits (8 down to 1) for which some group size fits
        dense bytes / ratio, with the finest such group (from 32, 64, 128, 256, 512, 1024 --
        those shorter than the channel -- and the whole channel; only ``group_size`` when
        given).
    method : {"auto", "optimal", "lloyd"}, default="auto"
        The 1-D k-means of :func:`matcompress.fit_codebook` (``"auto"``: exact where cheap).
    max_iter : int, default=100
        Lloyd iterations per codebook fit.
    n_refits : int, default=2
        Alternations after the first fit: least-squares scales (rounded to float16), recoding,
        codebook refit. The result is the state of lowest error (never worse than the first).
    scale_init : {"auto", "rms", "absmax"}, default="auto"
        The first scale of each group: the root mean square of its weights, or the largest
        magnitude; ``"auto"``: the first fit from each, and the alternations from the one of
        lower error (neither wins everywhere: the largest magnitude on small groups at 3 bits
        and more, RMS at 2 bits; see docs/decisions.md).
    random_state : int, Generator or None
        Seeds the k-means starts and the row sample of large matrices.
    n_threads : int, optional
        Threads of the k-means.
    max_fit_points : int, default=2**24
        When A has more weights, the codebook is fitted to a random sample of whole rows holding
        about this many (seeded); scales and codes still cover every row, which are coded
        ``chunk_rows`` at a time (memory: the sample, one chunk, the codes).
    chunk_rows : int, optional
        Rows per chunk of the passes over A; default: about 2^20 weights.
    data_aware : {"gptq", "diagonal"}, default="gptq"
        With calibration inputs ``X``: scales and codebooks are fitted with the diagonal weights
        below either way; ``"gptq"`` then codes the rows in order with GPTQ's error feedback
        through the full ``H = X^T X / n_samples`` (:func:`matcompress.gptq.gptq_quantize`,
        scales and codebooks fixed: each row, updated by the errors of the rows before it, takes
        its nearest scaled codebook values), and keeps those codes when they lower
        ``trace(E^T H E)`` (the output error) below the diagonal fit's. Without X not used.
    damp : float, default=0.01
        ``"gptq"``: ``H + damp * mean(diag H) * I`` is used.

    Notes
    -----
    The error minimized is ``sum_ij h_i (W_ij - What_ij)^2``: ``h_i = 1`` without calibration
    inputs, and with ``X`` (``compress(A, X=X)``, the (n_samples, m) activations feeding the
    layer) ``h_i = mean_s X[s, i]^2 + 0.01 * mean_i(that)``: the diagonal of ``X^T X / n_samples``
    (the second moment of each input), damped by 1 % of its mean as GPTQ damps its Hessian, so
    ``||X (W - What)||_F^2`` is minimized up to its off-diagonal terms. Each group's first scale
    ``s`` is its RMS or largest magnitude (``scale_init``); the normalized weights ``w / s``
    are fitted by a 1-D k-means with sample weights ``h s^2`` (so the error is in W's units).
    Each alternation then refits every scale by weighted least squares given the codes,
    ``s = sum(h w c) / sum(h c^2)``, rounds it to float16, and refits the codebook (recoding
    every weight to its nearest entry). For an embedding table (``channel_axis=0``) looked up
    by one-hot rows, ``X`` of the looked-up one-hot vectors makes ``h`` the tokens'
    frequencies. Scales are stored relative to a power of two of the
    largest (the codebook absorbs it), so weights of any magnitude fit float16's range: the
    largest scale lies in [2^12, 2^13); a group more than 2^36 below it gets scale 0.
    References: E. Frantar et al., "GPTQ", ICLR 2023; J. Lin et al., "AWQ", MLSys 2024 (the
    per-group scaled int4 formats).

    Examples
    --------
    >>> import numpy as np
    >>> import matcompress as mc
    >>> rng = np.random.default_rng(0)
    >>> W = (rng.standard_normal((512, 256)) * rng.lognormal(0, 1, 256)).astype(np.float32)
    >>> f = mc.compress(W, "scaled_kmeans", compression_ratio=8, random_state=0)
    >>> f.bits, f.group_size, f.compression_ratio >= 8
    (3, 32, True)
    >>> err = np.linalg.norm(W - f.to_dense()) / np.linalg.norm(W)
    >>> bool(err < 0.2)
    True
    """

    name = "scaled_kmeans"
    #: ``compress`` takes calibration inputs ``X``.
    uses_inputs = True

    def __init__(self, n_codes=None, *, group_size=None, channel_axis=1, n_books=1,
                 compression_ratio=None, method="auto", max_iter=100, n_refits=2,
                 scale_init="auto", random_state=None, n_threads=None, max_fit_points=2**24,
                 chunk_rows=None, data_aware="gptq", damp=0.01):
        self.n_codes = n_codes
        self.group_size = group_size
        self.channel_axis = channel_axis
        self.n_books = n_books
        self.compression_ratio = compression_ratio
        self.method = method
        self.max_iter = max_iter
        self.n_refits = n_refits
        self.scale_init = scale_init
        self.random_state = random_state
        self.n_threads = n_threads
        self.max_fit_points = max_fit_points
        self.chunk_rows = chunk_rows
        self.data_aware = data_aware
        self.damp = damp

    @staticmethod
    def stored_bytes(m, n, itemsize, n_codes, group_size, channel_axis=1, n_books=1):
        """Stored bytes of a :class:`ScaledCodebook` of this configuration."""
        n_scales = (_ceil_div(m, group_size) * n if channel_axis == 1
                    else m * _ceil_div(n, group_size))
        return (m * _packed_width(n, code_bits(n_codes)) + n_books * n_codes * itemsize
                + 2 * n_scales)

    def _axis(self):
        axis = check_int(self.channel_axis, "channel_axis")
        if axis not in (0, 1):
            raise ValueError(f"channel_axis must be 0 (rows) or 1 (columns); got {axis}")
        return axis

    def solve(self, shape, itemsize):
        """(n_codes, group_size, n_books) used for a matrix of ``shape``."""
        m, n = shape
        axis = self._axis()
        span, channels = (m, n) if axis == 1 else (n, m)
        n_books = check_int(self.n_books, "n_books", min_value=1, max_value=channels,
                            max_reason=f"the number of channels, {channels}")
        gs = None
        if self.group_size is not None:
            gs = min(check_int(self.group_size, "group_size", min_value=1), span)
        ratio = _check_ratio(self.compression_ratio)
        _need_one(self.name, self.n_codes, ratio, "n_codes")
        if ratio is None:
            n_codes = check_int(self.n_codes, "n_codes", min_value=1, max_value=1 << 16,
                                max_reason="codes are stored in at most 16 bits")
            return n_codes, span if gs is None else gs, n_books
        budget = m * n * itemsize / ratio
        sizes = [gs] if gs is not None else [g for g in GROUP_SIZES if g < span] + [span]
        for bits in range(8, 0, -1):
            for g in sizes:
                if self.stored_bytes(m, n, itemsize, 1 << bits, g, axis, n_books) <= budget:
                    return 1 << bits, g, n_books
        g = max(sizes)
        reach = m * n * itemsize / self.stored_bytes(m, n, itemsize, 2, g, axis, n_books)
        form = "one scale per channel" if g == span else f"groups of {g}"
        raise _unreachable(self.name, ratio, reach,
                           f"1-bit codes with {form} are the smallest form")

    # -- fitting ----------------------------------------------------------------------------

    def _row_weights(self, X, m):
        """h (m,) float64 from the calibration inputs, or None."""
        if X is None:
            return None
        X = check_array(X, "X")
        if X.shape[1] != m:
            raise ValueError(f"X must have m = {m} columns (the inputs of the layer, one per row "
                             f"of A); got shape {X.shape}")
        h = np.zeros(m)
        for a, b in _row_blocks(X.shape[0], m):
            part = X[a:b].astype(np.float64)
            h += np.einsum("ij,ij->j", part, part)
        h /= X.shape[0]
        mean = h.mean()
        if not mean > 0:
            raise ValueError("X is zero everywhere: it gives no weight to any row of A")
        h += 0.01 * mean
        return h / h.max()  # only relative weights matter

    def compress(self, A, *, grad=None, X=None):
        """Compress A (m x n). ``X`` (n_samples, m): calibration inputs of the layer (see Notes);
        ``grad`` is ignored."""
        A = check_array(A, "A")
        m, n = A.shape
        n_codes, gs, n_books = self.solve(A.shape, A.dtype.itemsize)
        h = self._row_weights(X, m)
        if self.scale_init not in ("auto",) + SCALE_INITS:
            raise ValueError(f"scale_init must be 'auto', 'rms' or 'absmax'; got "
                             f"{self.scale_init!r}")
        n_refits = check_int(self.n_refits, "n_refits", min_value=0)
        limit = check_int(self.max_fit_points, "max_fit_points", min_value=1)
        step = (max(1, _TILE_VALUES // n) if self.chunk_rows is None
                else check_int(self.chunk_rows, "chunk_rows", min_value=1))
        rng = check_random_state(self.random_state)
        check_n_threads(self.n_threads)
        if self.data_aware not in ("gptq", "diagonal"):
            raise ValueError(f"data_aware must be 'gptq' or 'diagonal'; got {self.data_aware!r}")
        damp = check_float(self.damp, "damp")
        if not 0 <= damp < float("inf"):
            raise ValueError(f"damp must be >= 0; got {self.damp}")
        grid = _Grid(m, n, gs, self._axis(), n_books)
        f = _Fit(self, A, h, grid, n_codes, step, limit, rng).run(n_refits)
        if h is None or self.data_aware != "gptq":
            return f
        return _gptq_codes(A, X, f, damp)


class _Fit:
    """One run of ScaledKMeansCompressor.compress (passes over A in chunks of rows)."""

    def __init__(self, owner, A, h, grid, n_codes, step, limit, rng):
        self.owner, self.A, self.h, self.grid = owner, A, h, grid
        self.n_codes, self.rng = n_codes, rng
        # Least-squares scales chunk by chunk when no group spans two chunks (row groups: the
        # chunks are whole groups), so no grid-sized float64 sums are kept.
        if grid.axis == 1 and grid.gs <= step:
            step -= step % grid.gs
        self.step = step
        self.local = grid.axis == 0 or grid.gs <= step
        self.bits = code_bits(n_codes)
        m, n = A.shape
        if m * n <= limit:
            self.sample = None  # fit on every row
        else:
            self.sample = self._sample_rows(max(1, limit // n))

    def _sample_rows(self, count):
        """Rows of the codebook fit: ``count`` in all, drawn within each book's rows when the
        books are runs of rows (so every book gets some)."""
        g, m = self.grid, self.A.shape[0]
        if g.axis == 1 or g.n_books == 1:
            return np.sort(self.rng.choice(m, size=min(count, m), replace=False))
        parts = []
        per = max(1, count // g.n_books)
        for b in range(g.n_books):
            lo, hi = b * g.run, min(m, (b + 1) * g.run)
            if lo < hi:
                parts.append(lo + self.rng.choice(hi - lo, size=min(per, hi - lo),
                                                  replace=False))
        return np.sort(np.concatenate(parts))

    def _chunks(self, dtype=np.float64):
        m = self.A.shape[0]
        for a in range(0, m, self.step):
            b = min(m, a + self.step)
            yield np.arange(a, b), np.asarray(self.A[a:b], dtype)

    def _hrows(self, rows):
        return None if self.h is None else self.h[rows][:, None]

    # -- scales ---------------------------------------------------------------------------

    def _initial_scales(self, inits):
        """{init: float16 scales of the groups} for each of ``inits`` (one pass over A), or
        None when A is 0."""
        g = self.grid
        sums = np.zeros(g.shape) if "rms" in inits else None
        tops = np.zeros(g.shape) if "absmax" in inits else None
        amax = 0.0
        for rows, w in self._chunks():
            if sums is not None:
                g.group_sum(sums, w * w, rows)
            a = np.abs(w)
            amax = max(amax, float(a.max()))
            if tops is not None:
                g.group_max(tops, a, rows)
        # The coding passes compute in float32 for float32 A of moderate magnitude (products
        # of a weight and a codebook value stay below 2^90 or so), else in float64.
        self.ct = np.dtype(np.float32 if self.A.dtype == np.float32 and amax <= 2.0**40
                           else np.float64)
        out = {}
        for init in inits:
            stat = np.sqrt(sums / g.group_sizes()) if init == "rms" else tops
            top = float(stat.max())
            if top == 0:
                return None
            # Relative to a power of two of the largest (which becomes ~2^12, leaving float16
            # headroom for the refits); the codebook, fitted to w / scale, absorbs the factor.
            exponent = math.frexp(top)[1] - 13
            out[init] = _round16(np.ldexp(stat, -exponent))
        return out

    # -- codebook -------------------------------------------------------------------------

    def _fit_data(self, sigma):
        """Per book: (normalized values, weights) of the fit rows, in A's dtype (positive
        weights only; h is at most 1 and scales at most 65504, so the weights fit float32)."""
        g = self.grid
        dtype = self.A.dtype
        if self.sample is None:
            pieces = [(rows, w.astype(dtype)) for rows, w in self._chunks()]
        else:
            pieces = [(self.sample, np.asarray(self.A[self.sample], dtype))]
        data = [([], []) for _ in range(g.n_books)]
        for rows, w in pieces:
            s = g.expand(sigma, rows).astype(dtype)
            q = s * s
            if self.h is not None:
                q *= self._hrows(rows).astype(dtype)
            for b, r, c in g.book_slices(rows):
                sb, wb, qb = s[r, c], w[r, c], q[r, c]
                if np.all(qb > 0):
                    data[b][0].append(np.ravel(wb / sb))
                    data[b][1].append(np.ravel(qb))
                else:
                    keep = qb > 0
                    data[b][0].append(wb[keep] / sb[keep])
                    data[b][1].append(qb[keep])
            del s, q
        return [(np.concatenate(v) if v else np.zeros(0, dtype),
                 np.concatenate(q) if q else np.zeros(0, dtype)) for v, q in data]

    def _fit_books(self, sigma, init=None):
        from .kmeans import fit_codebook

        o = self.owner
        dtype = self.A.dtype
        books = np.zeros((self.grid.n_books, self.n_codes), dtype)
        for b, (v, q) in enumerate(self._fit_data(sigma)):
            if v.size == 0:
                continue  # every weight of this book has scale 0
            k = min(self.n_codes, v.size)
            start = "k-means++"
            if init is not None and k == self.n_codes and np.unique(init[b]).size == k:
                start = init[b].astype(dtype)
            book = fit_codebook(v, k, method=o.method, init=start,
                                max_iter=o.max_iter, sample_weight=q,
                                random_state=self.rng, n_threads=o.n_threads)[0]
            books[b, :k] = book
            books[b, k:] = book[-1]
        return books

    # -- coding ---------------------------------------------------------------------------

    @staticmethod
    def _least_squares(num, den, old):
        """float16 num / den where den > 0, else the old scale."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, _round16(num / den), old)

    def _pass(self, sigma, books, *, codes_out=None, refit=True):
        """Code every weight given the float16 scales and the books: (weighted squared error,
        least-squares float16 scales or None); the packed codes written to ``codes_out`` when
        given."""
        g = self.grid
        err = 0.0
        new = sigma.copy() if refit else None
        if refit and not self.local:
            num, den = np.zeros(g.shape), np.zeros(g.shape)
        ct = self.ct
        bk = books.astype(ct)
        # Nearest entries by the midpoints of the ascending books (exact; a distance kernel
        # ||v||^2 - 2 v c + ||c||^2 loses entries closer together than sqrt(eps) |v|).
        mids = [((b[1:] + b[:-1]) / 2).astype(ct) for b in books.astype(np.float64)]
        zero = not np.all(sigma != 0)
        for rows, w in self._chunks(ct):
            s = g.expand(sigma, rows).astype(ct)
            v = np.divide(w, s, out=np.zeros_like(w), where=s != 0) if zero else w / s
            if g.n_books == 1:
                codes = np.searchsorted(mids[0], v)
                c = bk[0][codes]
            else:
                codes = np.empty(w.shape, np.intp)
                c = np.empty_like(w)
                for b, r, cols in g.book_slices(rows):
                    codes[r, cols] = k = np.searchsorted(mids[b], v[r, cols])
                    c[r, cols] = bk[b][k]
            del v
            resid = s * c
            np.subtract(w, resid, out=resid)
            np.square(resid, out=resid)
            hr = self._hrows(rows)
            if hr is not None:
                hr = hr.astype(ct)
                resid *= hr
            err += float(np.sum(resid, dtype=np.float64))
            del resid
            if refit:
                hc = c if hr is None else hr * c
                if self.local:
                    lo, hi = g.group_range(rows)
                    num, den = np.zeros((hi - lo, g.shape[1])), np.zeros((hi - lo, g.shape[1]))
                    g.group_sum(num, hc * w, rows, lo)
                    g.group_sum(den, hc * c, rows, lo)
                    new[lo:hi] = self._least_squares(num, den, sigma[lo:hi])
                else:
                    g.group_sum(num, hc * w, rows)
                    g.group_sum(den, hc * c, rows)
            if codes_out is not None:
                codes_out[rows[0]:rows[-1] + 1] = _pack_rows(codes, self.bits)
        if refit and not self.local:
            new = self._least_squares(num, den, sigma)
        return err, new

    def run(self, n_refits):
        m, n = self.A.shape
        g = self.grid
        dtype = self.A.dtype
        codes = np.empty((m, _packed_width(n, self.bits)), np.uint8)
        inits = SCALE_INITS if self.owner.scale_init == "auto" else (self.owner.scale_init,)
        coded = None  # the state whose codes ``codes`` holds
        best = ls = None
        starts = self._initial_scales(inits)
        if starts is None:  # A == 0
            return ScaledCodebook(np.zeros_like(codes), np.zeros((g.n_books, self.n_codes), dtype),
                                  np.zeros(g.shape, np.float16), n, g.gs, g.axis)
        for init in inits:  # "auto": the first fit from each, the better one goes on
            sigma = starts[init]
            books = self._fit_books(sigma)
            write = n_refits == 0 and len(inits) == 1
            err, refit = self._pass(sigma, books, codes_out=codes if write else None,
                                    refit=n_refits > 0)
            state = (sigma, books)
            coded = state if write else coded
            if best is None or err < best[0]:
                best, ls = (err, state), refit
        sigma, books = best[1]
        for it in range(1, n_refits + 1):
            last = it == n_refits
            sigma = ls
            books = self._fit_books(sigma, init=books)
            err, ls = self._pass(sigma, books, codes_out=codes if last else None,
                                 refit=not last)
            state = (sigma, books)
            coded = state if last else coded
            if err < best[0]:
                best = (err, state)
        sigma, books = best[1]
        if coded is not best[1]:
            self._pass(sigma, books, codes_out=codes, refit=False)
        return ScaledCodebook(codes, books, sigma, n, g.gs, g.axis)


def _gptq_codes(A, X, f, damp):
    """``f`` (a ScaledCodebook fitted to A) with its codes chosen again by GPTQ against its own
    scales and codebooks, when that lowers the output error ``trace(E^T H E)``; else ``f``."""
    from .compressors import input_moments
    from .gptq import gptq_quantize

    m, n = f.shape
    H, _ = input_moments(X)
    books = f.codebook.astype(np.float64)
    scales = f.scales.astype(np.float64)
    gs, axis = f.group_size, f.channel_axis
    n_books, n_codes = books.shape
    order = np.argsort(books, axis=1, kind="stable")
    values = np.take_along_axis(books, order, axis=1)  # ascending per book
    mids = (values[:, 1:] + values[:, :-1]) / 2
    if axis == 1:
        col_book = np.arange(n) // _ceil_div(n, n_books)
    codes = np.empty((m, n), np.uint16 if n_codes > 256 else np.uint8)

    def quantize_rows(rows, start):
        w = rows[0]
        s = scales[start // gs] if axis == 1 else np.repeat(scales[start], gs)[:n]
        safe = np.where(s == 0, 1.0, s)
        v = w / safe
        if axis == 1 and n_books > 1:
            b = col_book
        else:
            b = np.full(n, 0 if axis == 1 else start // _ceil_div(m, n_books))
        k = np.empty(n, np.int64)
        for book in np.unique(b):
            cols = b == book
            k[cols] = np.searchsorted(mids[book], v[cols])
        codes[start] = order[b, k]
        return (s * values[b, k])[None, :]

    Q = gptq_quantize(A, H, quantize_rows, damp=damp)

    def output_error(W_hat):
        E = A.astype(np.float64) - W_hat
        return float(np.einsum("ij,ij->", E, H @ E))

    if output_error(Q) >= output_error(f.to_dense().astype(np.float64)):
        return f
    return ScaledCodebook(pack_bits(codes, f.bits), f.codebook, f.scales, n, gs, axis)
