"""The factorizations every compressor returns: W (m x n) ~ B (*) C in a stored form.

Each is a frozen dataclass with ``shape``, ``dtype``, ``nbytes`` (the stored bytes: every array,
indices, codebooks and scales included), ``compression_ratio`` (dense bytes / stored bytes),
``to_dense()``, ``dense_rows(start, stop)`` (a block of rows of W), ``matmul(x)`` (``x @ W`` from
the factors, never building the dense matrix of the large forms) and ``save(path)`` /
:func:`load` (``.npz`` with a format version).

================  ======================================================  ===================="""

from __future__ import annotations

import abc
import dataclasses
import os
import re
from typing import ClassVar

import numpy as np

from . import _core
from ._validation import check_int

__all__ = ["Factorization", "LowRank", "SparseCodes", "Codebook", "SignBits", "Pruned", "load",
           "FORMAT_VERSION"]

#: Version of the ``.npz`` layout written by ``save``; ``load`` reads this version only.
FORMAT_VERSION = 1

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _float_array(a, name, ndim):
    a = np.asarray(a)
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64; got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {a.shape}")
    return a


def _int_array(a, name, ndim, *, upper, allow_unsigned=True):
    a = np.asarray(a)
    if a.dtype.kind not in ("iu" if allow_unsigned else "i"):
        raise TypeError(f"{name} must be integers; got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {a.shape}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}); got values in "
                         f"[{int(a.min())}, {int(a.max())}]")
    return a


def index_dtype(upper):
    """The smallest unsigned dtype holding indices in [0, upper): what compressors store."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if upper <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _sfx(dtype):
    return "f32" if np.dtype(dtype) == np.float32 else "f64"


def _native(name, dtype):
    """The native kernel ``name`` for a compute dtype (float32 or float64)."""
    return getattr(_core, f"{name}_{_sfx(dtype)}")


def _compute_dtype(*dtypes):
    """float32 when every float involved is at most float32, else float64 (the kernels'
    types; integers count as float64, float16 as float32, long double as float64)."""
    wide = any(np.dtype(d).kind != "f" or np.dtype(d).itemsize > 4 for d in dtypes)
    return np.dtype(np.float64 if wide else np.float32)


def _check_x(x, m, dtype):
    """x (..., m) as a float array of the compute dtype of x and the factorization."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"x must be a real numeric array; got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != m:
        raise ValueError(f"x must have shape (..., {m}) to multiply a matrix of {m} rows; "
                         f"got {x.shape}")
    return x.astype(_compute_dtype(x.dtype, dtype), copy=False)


class Factorization(abc.ABC):
    """A stored approximation of a matrix W of shape (m, n)."""

    kind: ClassVar[str]
    # numpy hands `ndarray @ factorization` to __rmatmul__ instead of treating the
    # factorization as an object scalar.
    __array_ufunc__ = None

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """(m, n): the shape of W."""

    @property
    @abc.abstractmethod
    def dtype(self) -> np.dtype:
        """dtype of W (float32 or float64)."""

    @abc.abstractmethod
    def to_dense(self) -> np.ndarray:
        """W as a dense (m, n) array."""

    def dense_rows(self, start, stop) -> np.ndarray:
        """Rows ``start`` to ``stop - 1`` of W as a dense ``(stop - start, n)`` array: what
        ``to_dense()[start:stop]`` holds, without building the other rows (to measure or
        export a large W one block of rows at a time). Each form decodes only its stored parts
        for those rows (the sign bits' projection rows regenerated from the seed)."""
        m = self.shape[0]
        start = check_int(start, "start", min_value=0, max_value=m)
        stop = check_int(stop, "stop", min_value=start, max_value=m)
        return self._dense_rows(start, stop)

    def _dense_rows(self, start, stop):
        """Rows [start, stop) of W (checked bounds). This fallback, for forms that do not
        override it, multiplies rows of the identity by W from the factors."""
        rows = np.zeros((stop - start, self.shape[0]), self.dtype)
        rows[np.arange(stop - start), np.arange(start, stop)] = 1
        return self.matmul(rows).astype(self.dtype, copy=False)

    #: The float fields a gradient is taken for (the discrete ones -- codes, indices, bits,
    #: the sparsity pattern, the seed -- stay fixed).
    trainable_fields: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def _matmul(self, x2d: np.ndarray) -> np.ndarray:
        """x2d (b, m), C-contiguous, of the compute dtype: x2d @ W."""

    @abc.abstractmethod
    def _backward(self, x2d, dy2d, need_dx, need_grads) -> tuple:
        """(dx2d or None, {field: gradient in the compute dtype} or {})."""

    def _cached(self, key, make):
        """A derived array kept with the factorization (e.g. factors in the compute dtype;
        the fields are read-only copies, so it never goes stale)."""
        cache = self.__dict__.setdefault("_native_cache", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def _as(self, name, dtype):
        """Field ``name`` as a C-contiguous array of ``dtype`` (cached when converted)."""
        a = getattr(self, name)
        if a.dtype == dtype:
            return a
        return self._cached((name, np.dtype(dtype).str), lambda: np.ascontiguousarray(a, dtype))

    def matmul(self, x):
        """``x @ W`` for x of shape (..., m), computed from the factors by the native kernels
        (W is never built; see ``csrc/matcompress/factored.h`` for each form's route). The
        result is float32 when x and W both are (float16 x counts as float32), else float64
        (also for integer or long-double x: the kernels compute in float32 or float64)."""
        m, n = self.shape
        x = _check_x(x, m, self.dtype)
        lead = x.shape[:-1]
        y = self._matmul(np.ascontiguousarray(x.reshape(-1, m)))
        return y.reshape(lead + (n,))

    def matmul_backward(self, x, dy, *, need_dx=True, need_grads=True):
        """Gradients of ``L = sum(dy * (x @ W))``: ``(dx, grads)``.

        ``dx = dy @ W.T`` has the shape of x (None when ``need_dx`` is false); ``grads`` maps
        each name in :attr:`trainable_fields` to the gradient of L with respect to that field
        (same shape and dtype as the field -- float16 fields: the compute dtype; empty when
        ``need_grads`` is false), the discrete parts held fixed: both low-rank sides;
        sparse-code values on their fixed support and the dictionary; codebook entries (a
        segment sum over the code map); sign-bit scales; pruned values (or their codebook);
        scaled and additive codebooks' entries and scales. Computed from the factors, never
        building W: no
        form's backward pass allocates a dense m x n temporary (each native function lists its
        buffers in ``csrc/matcompress/factored.h``; the largest are batch-sized, plus per-thread
        tiles of 256 x 256), except that scaled and additive codebooks (no native kernel yet)
        decode W in tiles of rows of about 2^20 weights for numpy's BLAS.

        Raises
        ------
        ValueError
            When x does not end in m or dy does not have the shape ``x.shape[:-1] + (n,)``.
        """
        m, n = self.shape
        x = _check_x(x, m, self.dtype)
        dy = np.asarray(dy)
        if dy.dtype.kind not in "biuf":
            raise TypeError(f"dy must be a real numeric array; got dtype {dy.dtype}")
        if dy.shape != x.shape[:-1] + (n,):
            raise ValueError(f"dy must have shape {x.shape[:-1] + (n,)} (x's leading shape, then "
                             f"n = {n}); got {dy.shape}")
        ct = _compute_dtype(x.dtype, dy.dtype)
        x2 = np.ascontiguousarray(x.reshape(-1, m), ct)
        dy2 = np.ascontiguousarray(dy.reshape(-1, n), ct)
        dx, grads = self._backward(x2, dy2, bool(need_dx), bool(need_grads))
        if dx is not None:
            dx = dx.reshape(x.shape)
        out = {}
        for name, g in grads.items():
            field = self._field(name)
            # float16 fields (ScaledCodebook's scales): the gradient in the compute dtype
            dt = field.dtype if field.dtype in _FLOATS else ct
            out[name] = np.asarray(g, dt).reshape(field.shape)
        return dx, out

    def _field(self, name):
        """The stored array a name of :attr:`trainable_fields` refers to (a composite form
        resolves the dotted names of its parts' fields, e.g. ``"parts.1.codebook"``)."""
        return getattr(self, name)

    def __matmul__(self, other):  # W @ other
        return self.to_dense() @ other

    def __rmatmul__(self, other):  # other @ W
        return self.matmul(other)

    def _arrays(self) -> dict:
        """The stored arrays (what nbytes counts and save writes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    @property
    def nbytes(self) -> int:
        """Stored bytes: the sum of the arrays' bytes (scalars such as a seed count 8)."""
        total = 0
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            total += v.nbytes if isinstance(v, np.ndarray) else (8 if v is not None else 0)
        return int(total)

    @property
    def dense_nbytes(self) -> int:
        m, n = self.shape
        return m * n * self.dtype.itemsize

    @property
    def compression_ratio(self) -> float:
        """Dense bytes of W over the stored bytes."""
        return self.dense_nbytes / self.nbytes

    def _encode_fields(self) -> dict:
        """``{name: ndarray}``: what :func:`encode_fields` returns for this form (the dataclass
        fields; a composite form overrides it to store its parts under prefixed names)."""
        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                fields[f.name] = v if isinstance(v, np.ndarray) else np.asarray(v)
        return fields

    @classmethod
    def _decode_fields(cls, names, read, where):
        """The inverse of :meth:`_encode_fields` (arguments as :func:`decode_fields`)."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in names:
                try:
                    v = read(f.name)
                except ValueError as exc:  # e.g. an object array (pickles are never loaded)
                    raise ValueError(f"{where}: field {f.name!r} cannot be read: {exc}") from None
                kwargs[f.name] = v.item() if v.ndim == 0 else v
        try:
            return cls(**kwargs)
        except TypeError as exc:
            if "missing" in str(exc) or "unexpected" in str(exc):
                raise ValueError(f"{where}: fields of {cls.kind!r} missing or unknown: "
                                 f"{exc}") from None
            raise ValueError(f"{where}: malformed {cls.kind!r}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: malformed {cls.kind!r}: {exc}") from None

    @property
    def info(self) -> dict:
        """How the factorization was chosen, when a compressor recorded it (``"auto"`` does:
        the method, params and every candidate's errors); an empty dict otherwise. Kept with
        the object only: :meth:`save` does not write it and equality ignores it."""
        return self.__dict__.get("_info", {})

    def _set_info(self, info):
        """Attach ``info`` (a dict) to this frozen factorization."""
        object.__setattr__(self, "_info", dict(info))

    def save(self, path):
        """Write the factorization to ``path`` (``.npz``, uncompressed; see :func:`load`)."""
        np.savez(path, __kind__=np.asarray(self.kind), __version__=np.asarray(FORMAT_VERSION),
                 **encode_fields(self))

    def __repr__(self):
        m, n = self.shape
        return (f"{type(self).__name__}(shape=({m}, {n}), dtype={self.dtype}, "
                f"nbytes={self.nbytes}, compression_ratio={self.compression_ratio:.3g})")

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                        and a.dtype == b.dtype and np.array_equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None


def _freeze(obj, **arrays):
    for name, a in arrays.items():
        if a is not None:
            # A read-only copy the factorization owns: the caller's array stays writeable, and
            # changing it later cannot change (or invalidate) the factorization.
            a = np.array(a, order="C", copy=True)
            a.setflags(write=False)
        object.__setattr__(obj, name, a)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LowRank(Factorization):
    """W ~ left @ right, left (m, r), right (r, n)."""

    left: np.ndarray
    right: np.ndarray
    kind: ClassVar[str] = "low_rank"

    def __post_init__(self):
        left = _float_array(self.left, "left", 2)
        right = _float_array(self.right, "right", 2)
        if left.shape[1] != right.shape[0]:
            raise ValueError(f"left {left.shape} and right {right.shape} do not chain: "
                             "left.shape[1] must equal right.shape[0]")
        if left.dtype != right.dtype:
            raise TypeError(f"left and right must share a dtype; got {left.dtype}, {right.dtype}")
        _freeze(self, left=left, right=right)

    shape = property(lambda self: (self.left.shape[0], self.right.shape[1]))
    dtype = property(lambda self: self.left.dtype)
    rank = property(lambda self: self.left.shape[1])

    def to_dense(self):
        return self.left @ self.right

    def _dense_rows(self, start, stop):
        return self.left[start:stop] @ self.right

    trainable_fields: ClassVar[tuple[str, ...]] = ("left", "right")

    def _matmul(self, x):
        return _native("lowrank_matmul", x.dtype)(x, self._as("left", x.dtype),
                                                  self._as("right", x.dtype), 0)

    def _backward(self, x, dy, need_dx, need_grads):
        dx, dl, dr = _native("lowrank_backward", x.dtype)(
            x, dy, self._as("left", x.dtype), self._as("right", x.dtype), need_dx, need_grads, 0)
        return dx, ({"left": dl, "right": dr} if need_grads else {})


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SparseCodes(Factorization):
    """Row i of W ~ sum_t values[i, t] * dictionary[indices[i, t]] (s terms per row; unused
    terms have value 0). Each row's terms are stored in atom order (sorted on construction when
    they are not)."""

    indices: np.ndarray
    values: np.ndarray
    dictionary: np.ndarray
    kind: ClassVar[str] = "sparse_codes"

    def __post_init__(self):
        dictionary = _float_array(self.dictionary, "dictionary", 2)
        values = _float_array(self.values, "values", 2)
        indices = _int_array(self.indices, "indices", 2, upper=dictionary.shape[0])
        if indices.shape != values.shape:
            raise ValueError(f"indices {indices.shape} and values {values.shape} must have the "
                             "same shape (m, s)")
        if values.dtype != dictionary.dtype:
            raise TypeError("values and dictionary must share a dtype")
        if indices.size and np.any(indices[:, 1:] < indices[:, :-1]):  # no wide temporary
            # Each row's terms are kept in atom order (the kernels read them so in place).
            order = np.argsort(indices, axis=1, kind="stable")
            indices = np.take_along_axis(indices, order, axis=1)
            values = np.take_along_axis(values, order, axis=1)
        _freeze(self, indices=indices, values=values, dictionary=dictionary)

    shape = property(lambda self: (self.values.shape[0], self.dictionary.shape[1]))
    dtype = property(lambda self: self.dictionary.dtype)

    def codes_csr(self):
        """The (m, k) sparse code matrix as a ``scipy.sparse.csr_array``."""
        return self._codes_csr(0, self.values.shape[0])

    def _codes_csr(self, start, stop):
        """Rows [start, stop) of the sparse code matrix (CSR)."""
        import scipy.sparse as sp

        s = self.values.shape[1]
        k = self.dictionary.shape[0]
        indptr = np.arange(stop - start + 1, dtype=np.int64) * s
        codes = sp.csr_array((self.values[start:stop].reshape(-1).copy(),
                              self.indices[start:stop].reshape(-1).astype(np.int64), indptr),
                             shape=(stop - start, k))
        codes.sum_duplicates()
        return codes

    def to_dense(self):
        return np.asarray(self.codes_csr() @ self.dictionary, dtype=self.dtype)

    def _dense_rows(self, start, stop):
        return np.asarray(self._codes_csr(start, stop) @ self.dictionary, dtype=self.dtype)

    trainable_fields: ClassVar[tuple[str, ...]] = ("values", "dictionary")

    def _args(self, dtype):
        return (self._as("indices", np.int32), self._as("values", dtype),
                self._as("dictionary", dtype))

    def _matmul(self, x):
        # x @ (C D) = (x C) D: a scatter into (batch, k), then one GEMM.
        return _native("sparse_codes_matmul", x.dtype)(x, *self._args(x.dtype), 0)

    def _backward(self, x, dy, need_dx, need_grads):
        dx, dv, dd = _native("sparse_codes_backward", x.dtype)(x, dy, *self._args(x.dtype),
                                                               need_dx, need_grads, 0)
        return dx, ({"values": dv, "dictionary": dd} if need_grads else {})


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Codebook(Factorization):
    """W[i, j*b:(j+1)*b] ~ codebook[codes[i, j]], codebook (n_codes, b). With ``packed``, codes
    below 16 are stored two per byte along each row (:func:`matcompress.pack_4bit`)."""

    codes: np.ndarray
    codebook: np.ndarray
    n_cols: int
    packed: bool = False
    kind: ClassVar[str] = "codebook"

    def __post_init__(self):
        codebook = _float_array(self.codebook, "codebook", 2)
        n_codes, b = codebook.shape
        n_cols = check_int(self.n_cols, "n_cols", min_value=1)
        if n_cols % b:
            raise ValueError(f"n_cols={n_cols} must be a positive multiple of the block size {b}")
        packed = bool(self.packed)
        if packed:
            if n_codes > 16:
                raise ValueError(f"packed codes hold 4 bits: n_codes must be <= 16; got {n_codes}")
            codes = np.asarray(self.codes)
            if codes.dtype != np.uint8 or codes.ndim != 2:
                raise TypeError("packed codes must be a 2-D uint8 array")
            if codes.shape[1] != (n_cols // b + 1) // 2:
                raise ValueError(f"packed codes must have {(n_cols // b + 1) // 2} bytes per row; "
                                 f"got {codes.shape[1]}")
            if codes.size and int((codes & 0x0F).max()) >= n_codes or \
                    codes.size and int((codes >> 4).max()) >= n_codes:
                raise ValueError(f"packed codes must lie in [0, {n_codes})")
            if (n_cols // b) % 2 and codes.size and int((codes[:, -1] >> 4).max()) != 0:
                raise ValueError("packed codes: the unused high nibble of each row's last byte "
                                 "must be 0 (an odd number of blocks per row)")
        else:
            codes = _int_array(self.codes, "codes", 2, upper=n_codes)
            if codes.shape[1] != n_cols // b:
                raise ValueError(f"codes must have n_cols / block_size = {n_cols // b} columns; "
                                 f"got {codes.shape[1]}")
        object.__setattr__(self, "n_cols", n_cols)
        object.__setattr__(self, "packed", packed)
        _freeze(self, codes=codes, codebook=codebook)

    @property
    def shape(self):
        return (self.codes.shape[0], self.n_cols)

    dtype = property(lambda self: self.codebook.dtype)
    block_size = property(lambda self: self.codebook.shape[1])
    n_codes = property(lambda self: self.codebook.shape[0])

    @property
    def nbytes(self):
        return int(self.codes.nbytes + self.codebook.nbytes)

    def unpacked_codes(self, start=0, stop=None):
        """Code columns [start, stop) (blocks) as integers."""
        nb = self.n_cols // self.block_size
        stop = nb if stop is None else stop
        if not self.packed:
            return self.codes[:, start:stop]
        lo, hi = start // 2, (stop + 1) // 2
        part = self.codes[:, lo:hi]
        out = np.empty((part.shape[0], 2 * part.shape[1]), np.uint8)
        out[:, 0::2] = part & 0x0F
        out[:, 1::2] = part >> 4
        return out[:, start - 2 * lo: stop - 2 * lo]

    def _decode(self, start, stop):
        """Columns [start, stop) of W, block-aligned."""
        b = self.block_size
        codes = self.unpacked_codes(start // b, stop // b)
        return self.codebook[codes].reshape(codes.shape[0], -1)

    def to_dense(self):
        return self._decode(0, self.n_cols)

    def _dense_rows(self, start, stop):
        codes = self.codes[start:stop]
        if self.packed:
            nibbles = np.empty((codes.shape[0], 2 * codes.shape[1]), np.uint8)
            nibbles[:, 0::2] = codes & 0x0F
            nibbles[:, 1::2] = codes >> 4
            codes = nibbles[:, :self.n_cols // self.block_size]
        return self.codebook[codes].reshape(codes.shape[0], self.n_cols)

    trainable_fields: ClassVar[tuple[str, ...]] = ("codebook",)

    def _native_codes(self):
        """(codes as the kernels read them, format): 0 4-bit packed, 1 uint8, 2 uint16,
        3 uint32 (signed codes are viewed as unsigned: they are checked non-negative)."""
        if self.packed:
            return self.codes, 0
        c = self.codes
        fmt = {1: 1, 2: 2, 4: 3}.get(c.dtype.itemsize)
        if fmt is None:  # 64-bit codes: converted once
            c = self._cached("codes", lambda: self.codes.astype(index_dtype(self.n_codes)))
            fmt = {1: 1, 2: 2, 4: 3}[c.dtype.itemsize]
        return c.view(f"u{c.dtype.itemsize}"), fmt

    def _matmul(self, x):
        if (x.shape[0] == 1 and self.packed and self.block_size == 1
                and x.dtype == np.float32 and self.dtype == np.float32):
            # Inference: the 4-bit codes decoded in registers (codebook4_gemv).
            y = _core.codebook4_gemv(x[0], self.codes, self.n_cols,
                                     np.ascontiguousarray(self.codebook[:, 0]), 0)
            return y[None, :]
        codes, fmt = self._native_codes()
        return _native("codebook_matmul", x.dtype)(x, codes, fmt, self._as("codebook", x.dtype),
                                                   self.n_cols, 0)

    def _backward(self, x, dy, need_dx, need_grads):
        codes, fmt = self._native_codes()
        dx, dc = _native("codebook_backward", x.dtype)(
            x, dy, codes, fmt, self._as("codebook", x.dtype), self.n_cols, need_dx, need_grads, 0)
        return dx, ({"codebook": dc} if need_grads else {})


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SignBits(Factorization):
    """W ~ (R @ S) * scale: R (m, k) Gaussian, regenerated from ``seed`` (never stored); S (k, n)
    signs, stored as bits (1 = +1) packed 8 per byte along each row, little-endian
    (``np.packbits(..., axis=1, bitorder="little")``); scale (n) per column."""

    bits: np.ndarray
    scale: np.ndarray
    seed: int
    n_rows: int
    kind: ClassVar[str] = "sign_bits"

    def __post_init__(self):
        scale = _float_array(self.scale, "scale", 1)
        bits = np.asarray(self.bits)
        if bits.dtype != np.uint8 or bits.ndim != 2:
            raise TypeError("bits must be a 2-D uint8 array (packed signs)")
        n = scale.shape[0]
        if bits.shape[1] != (n + 7) // 8:
            raise ValueError(f"bits must have ceil(n / 8) = {(n + 7) // 8} bytes per row for "
                             f"n = {n} columns; got {bits.shape[1]}")
        if bits.shape[0] < 1:
            raise ValueError("bits must hold at least one row of sign bits (k >= 1)")
        seed = check_int(self.seed, "seed", min_value=0, max_value=2**64 - 1)
        n_rows = check_int(self.n_rows, "n_rows", min_value=1)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "n_rows", n_rows)
        _freeze(self, bits=bits, scale=scale)

    shape = property(lambda self: (self.n_rows, self.scale.shape[0]))
    dtype = property(lambda self: self.scale.dtype)
    n_bits = property(lambda self: self.bits.shape[0])

    def signs(self):
        """S as a (k, n) array of +-1 in the dtype of W."""
        n = self.scale.shape[0]
        s = np.unpackbits(self.bits, axis=1, count=n, bitorder="little")
        return (2 * s.astype(self.dtype) - 1)

    def projection(self):
        """R (m, k), regenerated from the seed."""
        from .hashing import projection

        return projection(self.seed, self.n_rows, self.n_bits, dtype=self.dtype)

    def to_dense(self):
        return (self.projection() @ self.signs()) * self.scale

    def _dense_rows(self, start, stop):
        from .hashing import projection

        rows = projection(self.seed, self.n_rows, self.n_bits, dtype=self.dtype,
                          rows=(start, stop))
        return (rows @ self.signs()) * self.scale

    trainable_fields: ClassVar[tuple[str, ...]] = ("scale",)

    def _matmul(self, x):
        # x R by GEMM over tiles of R regenerated per thread, then the sign product.
        return _native("signbits_matmul", x.dtype)(x, self.bits, self._as("scale", x.dtype),
                                                   self.seed, 0)

    def _backward(self, x, dy, need_dx, need_grads):
        dx, ds = _native("signbits_backward", x.dtype)(
            x, dy, self.bits, self._as("scale", x.dtype), self.seed, need_dx, need_grads, 0)
        return dx, ({"scale": ds} if need_grads else {})


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Pruned(Factorization):
    """The kept entries of W in CSR form: ``indptr`` (m + 1), column ``indices`` (nnz) and either
    ``values`` (nnz) or ``codes`` (nnz) into a scalar ``codebook`` (pruning then quantizing, as
    Deep Compression). The entries of each row are stored in column order (sorted on
    construction when they are not; duplicates are kept and add up)."""

    indptr: np.ndarray
    indices: np.ndarray
    n_cols: int
    values: np.ndarray | None = None
    codes: np.ndarray | None = None
    codebook: np.ndarray | None = None
    kind: ClassVar[str] = "pruned"

    def __post_init__(self):
        n_cols = check_int(self.n_cols, "n_cols", min_value=1)
        indptr = np.asarray(self.indptr)
        if indptr.dtype.kind not in "iu" or indptr.ndim != 1 or indptr.size < 2:
            raise ValueError("indptr must be a 1-D integer array of m + 1 >= 2 offsets")
        if indptr[0] != 0 or np.any(np.diff(indptr.astype(np.int64)) < 0):
            raise ValueError("indptr must start at 0 and never decrease")
        nnz = int(indptr[-1])
        indices = _int_array(self.indices, "indices", 1, upper=n_cols)
        if indices.shape[0] != nnz:
            raise ValueError(f"indices must have indptr[-1] = {nnz} entries; got {indices.size}")
        values, codes, codebook = self.values, self.codes, self.codebook
        if (values is None) == (codes is None):
            raise ValueError("give either values or codes (with a codebook)")
        if values is not None:
            if codebook is not None:
                raise ValueError("a codebook goes with codes, not values")
            values = _float_array(values, "values", 1)
            if values.shape[0] != nnz:
                raise ValueError(f"values must have {nnz} entries; got {values.shape[0]}")
        else:
            if codebook is None:
                raise ValueError("codes need a codebook")
            codebook = _float_array(codebook, "codebook", 1)
            codes = _int_array(codes, "codes", 1, upper=codebook.shape[0])
            if codes.shape[0] != nnz:
                raise ValueError(f"codes must have {nnz} entries; got {codes.shape[0]}")
        if nnz > 1:  # column indices are kept in order within each row (a stable sort)
            rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr.astype(np.int64)))
            step = np.diff(indices.astype(np.int64))
            if np.any((step < 0) & (rows[1:] == rows[:-1])):
                order = np.lexsort((indices, rows))
                indices = indices[order]
                values = values[order] if values is not None else None
                codes = codes[order] if codes is not None else None
        object.__setattr__(self, "n_cols", n_cols)
        _freeze(self, indptr=indptr, indices=indices, values=values, codes=codes,
                codebook=codebook)

    @property
    def shape(self):
        return (self.indptr.shape[0] - 1, self.n_cols)

    @property
    def dtype(self):
        return (self.values if self.values is not None else self.codebook).dtype

    @property
    def nnz(self):
        return int(self.indptr[-1])

    @property
    def density(self):
        m, n = self.shape
        return self.nnz / (m * n)

    @property
    def nbytes(self):
        return int(sum(a.nbytes for a in (self.indptr, self.indices, self.values, self.codes,
                                          self.codebook) if a is not None))

    def kept_values(self):
        """The nnz kept values (decoded when quantized)."""
        return self.values if self.values is not None else self.codebook[self.codes]

    def to_csr(self):
        import scipy.sparse as sp

        return sp.csr_array((self.kept_values(), self.indices, self.indptr), shape=self.shape)

    def to_dense(self):
        return self.to_csr().toarray()

    def _dense_rows(self, start, stop):
        import scipy.sparse as sp

        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        indptr = self.indptr[start:stop + 1].astype(np.int64) - lo
        kept = (self.values[lo:hi] if self.values is not None
                else self.codebook[self.codes[lo:hi]])
        return sp.csr_array((kept, self.indices[lo:hi], indptr),
                            shape=(stop - start, self.n_cols)).toarray()

    @property
    def trainable_fields(self):
        return ("values",) if self.values is not None else ("codebook",)

    def _args(self, dtype):
        """(indptr, indices, values, codes, codebook) as the kernels read them: values or
        uint8/uint16 codes (read through the codebook, never decoded into an array)."""
        indptr = self._as("indptr", np.int64)
        indices = self._as("indices", np.uint16 if self.n_cols <= 65536 else np.int32)
        if self.values is not None:
            return indptr, indices, self._as("values", dtype), None, None
        codes = self.codes
        if codes.dtype not in (np.uint8, np.uint16):
            codes = self._as("codes", index_dtype(self.codebook.shape[0]))
        if codes.dtype not in (np.uint8, np.uint16):  # over 65,536 codes: decoded per call
            return indptr, indices, np.ascontiguousarray(self.codebook[codes], dtype), None, None
        return indptr, indices, None, codes, self._as("codebook", dtype)

    def _matmul(self, x):
        # Per tile of columns: each row's entries in the tile add w * x[:, i] (x transposed).
        return _native("pruned_matmul", x.dtype)(x, *self._args(x.dtype), self.n_cols, 0)

    def _backward(self, x, dy, need_dx, need_grads):
        dx, dv = _native("pruned_backward", x.dtype)(x, dy, *self._args(x.dtype), self.n_cols,
                                                     need_dx, need_grads, 0)
        if not need_grads:
            return dx, {}
        if self.values is not None:
            return dx, {"values": dv}
        return dx, {"codebook": np.bincount(self.codes.astype(np.intp, copy=False), weights=dv,
                                            minlength=self.codebook.shape[0])}


#: Factorization classes by kind, for :func:`load` and :func:`decode_fields`.
#: :mod:`matcompress.quant` adds ScaledCodebook ("scaled_codebook"),
#: :mod:`matcompress.additive` AdditiveCodebook ("additive"),
#: :mod:`matcompress.composite` Sum ("sum") and :mod:`matcompress.structural` BlockDiagonal,
#: MixedBlock and InputOutput ("block_diagonal", "mixed_block", "input_output") when they are
#: imported (``import matcompress`` does, before any file can be read).
_KINDS = {cls.kind: cls for cls in (LowRank, SparseCodes, Codebook, SignBits, Pruned)}


def load(path) -> Factorization:
    """Read a factorization written by ``save``.

    Raises
    ------
    ValueError
        When the file is not a matcompress factorization (not an ``.npz``, no kind or version
        entry, an unknown kind, missing or malformed fields) or was written by another format
        version.
    """
    try:
        archive = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a .npy array, not a matcompress factorization (.npz)")
    with archive:
        names = set(archive.files)
        if not {"__kind__", "__version__"} <= names:
            raise ValueError(f"{path} is not a matcompress factorization (no __kind__ / "
                             "__version__ entries)")
        try:
            kind = str(archive["__kind__"])
            version = int(archive["__version__"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed header: {exc}") from None
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {version}; this matcompress reads "
                             f"version {FORMAT_VERSION}")
        return decode_fields(kind, names, archive.__getitem__, path)


def encode_fields(factorization) -> dict:
    """The stored fields of ``factorization`` as ``{field: ndarray}``: what
    :meth:`~Factorization.save` writes beside its header (arrays as they are, scalars such as a
    seed as 0-d arrays, absent optional fields left out). :func:`decode_fields` inverts it;
    :mod:`matcompress.archive` writes many factorizations' fields into one file with it."""
    return factorization._encode_fields()


def _encode_parts(parts):
    """The fields of several factorizations stored together: part i's kind as ``p<i>/__kind__``
    and its fields as ``p<i>/<field>`` (:class:`matcompress.composite.Sum`, the compressed
    blocks of :class:`matcompress.structural.BlockDiagonal`)."""
    out = {}
    for i, p in enumerate(parts):
        out[f"p{i}/__kind__"] = np.asarray(p.kind)
        out.update({f"p{i}/{name}": a for name, a in p._encode_fields().items()})
    return out


def _decode_parts(names, read, where, what):
    """The parts stored as ``p<i>/...`` (as :class:`matcompress.composite.Sum` stores them)."""
    names = set(names)
    parts = []
    while f"p{len(parts)}/__kind__" in names:
        i = len(parts)
        prefix = f"p{i}/"
        try:
            kind = read(prefix + "__kind__")
        except ValueError as exc:
            raise ValueError(f"{where}: field {prefix + '__kind__'!r} cannot be read: "
                             f"{exc}") from None
        if kind.dtype.kind != "U" or kind.ndim != 0:
            raise ValueError(f"{where}: malformed {what!r}: {prefix + '__kind__'!r} is not a "
                             "string")
        sub = {n[len(prefix):] for n in names if n.startswith(prefix)} - {"__kind__"}
        parts.append(decode_fields(str(kind), sub, lambda f, prefix=prefix: read(prefix + f),
                                   f"{where}, part {i}"))
    stray = sorted(n for n in names if re.match(r"p\d+/", n)
                   and int(n[1:n.index("/")]) >= len(parts))
    if stray:
        raise ValueError(f"{where}: fields of {what!r} missing or unknown: {stray} belong to no "
                         "part")
    return parts


def decode_fields(kind, names, read, where) -> Factorization:
    """The factorization of ``kind`` rebuilt from fields written by :func:`encode_fields`.

    Parameters
    ----------
    kind : str
        A factorization kind (``Factorization.kind``: "low_rank", "sparse_codes", ...).
    names : collection of str
        The field names present.
    read : callable
        ``read(name)`` returns the stored array of field ``name`` (a ValueError from it, e.g. an
        object array that would need a pickle, is reported as an unreadable field).
    where : str or path
        What the messages name (the file, or the file and the entry).

    Raises
    ------
    ValueError
        For an unknown kind, or fields missing, unknown, unreadable or malformed.
    """
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"{where}: unknown factorization kind {kind!r}; known: "
                         f"{sorted(_KINDS)}")
    return cls._decode_fields(names, read, where)
