"""Arrays of a weight file, ``.npy``, ``.npz`` or ``.safetensors``, for the command line.

:func:`open_weights` tells the format by its first bytes (the file name's extension is not
trusted), reads the arrays' names, dtypes and shapes without their data, and gives each a
:class:`Tensor` whose data is read only when asked for: ``.npy`` and ``.safetensors`` data
through a read-only memory map, an ``.npz`` member when it is loaded.

safetensors, read here without the ``safetensors`` package: an 8-byte little-endian header
length N, N bytes of JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets into the data that follows the header; an optional ``"__metadata__"``
entry maps strings to strings), then the little-endian data. F64 and F32 are read as they are,
F16 and BF16 widened to float32; integer and bool tensors are listed as not float; other dtypes
(e.g. the 8-bit floats) as not supported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from typing import Callable

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record

#: safetensors dtype -> (numpy dtype of the stored bytes, readable as float, name shown)
_SAFETENSORS_DTYPES = {
    "F64": ("<f8", True, "float64"),
    "F32": ("<f4", True, "float32"),
    "F16": ("<f2", True, "float16"),
    "BF16": ("<u2", True, "bfloat16"),
    "I64": ("<i8", False, "int64"),
    "I32": ("<i4", False, "int32"),
    "I16": ("<i2", False, "int16"),
    "I8": ("i1", False, "int8"),
    "U64": ("<u8", False, "uint64"),
    "U32": ("<u4", False, "uint32"),
    "U16": ("<u2", False, "uint16"),
    "U8": ("u1", False, "uint8"),
    "BOOL": ("?", False, "bool"),
}
_SAFETENSORS_ITEMSIZE = {"F8_E4M3": 1, "F8_E5M2": 1, "C64": 8, "C128": 16}


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and says why."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One array of a weight file: its name, shape and stored dtype, data read on demand.

    ``kind`` is "float" (:meth:`load` returns float32 or float64), "int" (integers or bools) or
    "unsupported" (a dtype that cannot be read as numbers here).
    """

    name: str
    shape: tuple
    dtype: str
    itemsize: int
    kind: str
    _raw: Callable[[], np.ndarray] = dataclasses.field(repr=False)
    _decode: Callable[[np.ndarray], np.ndarray] = dataclasses.field(repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the data in the file."""
        return math.prod(self.shape) * self.itemsize

    @property
    def compute_dtype(self) -> np.dtype:
        """The dtype :meth:`load` returns: float32 for floats of at most 4 bytes, else
        float64."""
        return np.dtype(np.float32 if self.itemsize <= 4 else np.float64)

    def raw(self) -> np.ndarray:
        """The data as stored (a read-only memory map for ``.npy`` and ``.safetensors``)."""
        return self._raw()

    def decode(self, raw) -> np.ndarray:
        """Rows of :meth:`raw` (any slice of it) as float32 or float64."""
        return self._decode(raw)

    def load(self) -> np.ndarray:
        """The whole array as float32 or float64 (no copy when it is stored so)."""
        return self._decode(self._raw())


class WeightFile:
    """The arrays of a weight file (:func:`open_weights`); a context manager closing it."""

    def __init__(self, path, fmt, tensors, closer=None):
        self.path = path
        self.format = fmt
        self.tensors = tensors
        self._closer = closer

    def close(self):
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def sniff(path):
    """"npy", "npz" or "safetensors" by the file's first bytes, or None."""
    with open(path, "rb") as fp:
        head = fp.read(9)
        size = os.fstat(fp.fileno()).st_size
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head[:4] in ZIP_MAGICS:
        return "npz"
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    return None


def open_weights(path) -> WeightFile:
    """Open a ``.npy``, ``.npz`` or ``.safetensors`` file and list its arrays (no data read).

    Raises
    ------
    WeightFileError
        When the file cannot be opened, is of none of the three formats, or is corrupt.
    """
    path = os.fspath(path)
    try:
        fmt = sniff(path)
    except OSError as exc:
        raise WeightFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if fmt is None:
        raise WeightFileError(f"cannot read {path}: not a .npy, .npz or .safetensors file")
    try:
        return {"npy": _open_npy, "npz": _open_npz, "safetensors": _open_safetensors}[fmt](path)
    except WeightFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise WeightFileError(f"cannot read {path}: corrupt .{fmt} file ({what})") from None


def _float_decoder(dtype):
    """raw -> float32 (floats of <= 4 bytes) or float64, native byte order."""
    target = np.dtype(np.float32 if dtype.itemsize <= 4 else np.float64)
    return lambda raw: np.asarray(raw).astype(target, copy=False)


def _kind(dtype):
    if dtype.kind == "f":
        return "float"
    return "int" if dtype.kind in "iub" else "unsupported"


def _read_header(fp):
    """(shape, fortran_order, dtype) of a .npy stream positioned at its start."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")


def _open_npy(path):
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path, "rb") as fp:
        shape, _, dtype = _read_header(fp)
        offset = fp.tell()
        size = os.fstat(fp.fileno()).st_size
    kind = _kind(dtype)
    if kind == "float" and size - offset < math.prod(shape) * dtype.itemsize:
        raise WeightFileError(f"cannot read {path}: truncated .npy file (the header announces "
                              f"{math.prod(shape) * dtype.itemsize:,} bytes of data, "
                              f"{size - offset:,} follow it)")

    def raw():
        if math.prod(shape) == 0:
            return np.empty(shape, dtype)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    tensor = Tensor(name, tuple(shape), dtype.name, dtype.itemsize, kind, raw,
                    _float_decoder(dtype))
    return WeightFile(path, "npy", [tensor])


def _open_npz(path):
    tensors = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise WeightFileError(f"cannot read {path}: a zip file but not an .npz (member "
                                      f"{info.filename!r} is not a .npy array)")
            with zf.open(info) as fp:
                shape, _, dtype = _read_header(fp)
            tensors.append((info.filename[:-4], tuple(shape), dtype))
    npz = np.load(path, allow_pickle=False)

    def member(key):
        def raw():
            try:
                return npz[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise WeightFileError(f"cannot read {path}: array {key!r}: {exc}") from None
        return raw

    out = [Tensor(key, shape, dtype.name, dtype.itemsize, _kind(dtype), member(key),
                  _float_decoder(dtype)) for key, shape, dtype in tensors]
    return WeightFile(path, "npz", out, npz.close)


def _bfloat16_to_float32(raw):
    """bfloat16 bits (uint16) to float32: the same sign, exponent and leading mantissa bits."""
    return (np.asarray(raw).astype(np.uint32) << 16).view(np.float32)


def _open_safetensors(path):
    with open(path, "rb") as fp:
        n = int.from_bytes(fp.read(8), "little")
        size = os.fstat(fp.fileno()).st_size
        text = fp.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightFileError(f"cannot read {path}: corrupt .safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"cannot read {path}: corrupt .safetensors header (not a JSON "
                              "object)")
    data_start = 8 + n
    data_size = size - data_start
    tensors = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        problem = _spec_problem(spec, data_size)
        if problem:
            raise WeightFileError(f"cannot read {path}: tensor {name!r}: {problem}")
        code, shape = spec["dtype"], tuple(spec["shape"])
        begin, end = spec["data_offsets"]
        stored, readable, shown = _SAFETENSORS_DTYPES.get(code, (None, False, code))
        itemsize = np.dtype(stored).itemsize if stored else _SAFETENSORS_ITEMSIZE.get(code, 0)
        if itemsize and end - begin != math.prod(shape) * itemsize:
            raise WeightFileError(
                f"cannot read {path}: tensor {name!r}: data_offsets [{begin}, {end}] hold "
                f"{end - begin} bytes; shape {list(shape)} of {code} needs "
                f"{math.prod(shape) * itemsize}")
        kind = "float" if readable else ("int" if stored else "unsupported")
        tensors.append(Tensor(name, shape, shown, itemsize, kind,
                              _safetensors_raw(path, stored, shape, data_start + begin),
                              _safetensors_decoder(code)))
    return WeightFile(path, "safetensors", tensors)


def _spec_problem(spec, data_size):
    """What is wrong with one tensor's header entry, or None."""
    if not isinstance(spec, dict):
        return "its header entry is not an object"
    if not isinstance(spec.get("dtype"), str):
        return "no dtype"
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    offsets = spec.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        return f"data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end"
    if offsets[1] > data_size:
        return (f"data_offsets end at {offsets[1]}, past the {data_size} bytes of data in the "
                "file (truncated?)")
    return None


def _safetensors_raw(path, stored, shape, offset):
    def raw():
        if stored is None:
            raise WeightFileError(f"cannot read {path}: a dtype this reader does not support")
        if math.prod(shape) == 0:
            return np.empty(shape, stored)
        return np.memmap(path, dtype=stored, mode="r", offset=offset, shape=shape)
    return raw


def _safetensors_decoder(code):
    if code == "BF16":
        return _bfloat16_to_float32
    if code in ("F64", "F32", "F16"):
        return _float_decoder(np.dtype(_SAFETENSORS_DTYPES[code][0]))
    return np.asarray
