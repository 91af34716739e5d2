"""Many factorizations in one ``.npz`` file: what ``matcompress compress`` writes.

:func:`save_many` writes ``{name: Factorization}`` to one uncompressed ``.npz``, :func:`load_many`
reads it back as a dict in the same order, and :func:`read_manifest` reads only its table of
contents (no field arrays).

Layout (archive version 1)
--------------------------
``__manifest__``
    A 0-d unicode array holding a JSON object::

        {"format": "matcompress.archive", "version": 1, "factorization_version": 1,
         "entries": [{"name": "layer.0.weight", "kind": "low_rank", "shape": [768, 3072],
                      "dtype": "float32", "nbytes": 393216, "fields": ["left", "right"],
                      "info": {}},
                     ...]}

    ``kind``, ``shape``, ``dtype`` and ``nbytes`` describe each factorization (so a table of
    contents reads no array); ``fields`` lists its members; ``info`` holds whatever JSON the
    writer added (``matcompress compress`` records the source array's dtype and bytes as
    ``{"source_dtype": "bfloat16", "source_nbytes": ...}``).
``<i>/<field>``
    Field ``<field>`` of entry ``i`` (0-based, in the manifest's order), exactly as
    :meth:`Factorization.save <matcompress.factors.Factorization.save>` writes the fields of one
    factorization (:func:`matcompress.factors.encode_fields`: arrays as they are, scalars such
    as a seed as 0-d arrays, absent optional fields left out).

Names are any non-empty strings (``layer.0.weight``, ``encoder/block_1/kernel``) and appear in
the manifest only: members are keyed by position, so no name can be mistaken for a field of
another, whatever characters it holds. Nothing needs a pickle: ``numpy.load(path)`` opens the
file, and entry ``i``'s fields are ``archive[f"{i}/left"]`` and so on.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> import matcompress as mc
>>> from matcompress.archive import load_many, save_many
>>> rng = np.random.default_rng(0)
>>> fs = {"layer.0.weight": mc.compress(rng.standard_normal((64, 32)), "low_rank", rank=4),
...       "layer.1.weight": mc.compress(rng.standard_normal((32, 16)), "kmeans", n_codes=16,
...                                     random_state=0)}
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> save_many(path, fs)
>>> back = load_many(path)
>>> list(back), back["layer.1.weight"] == fs["layer.1.weight"]
(['layer.0.weight', 'layer.1.weight'], True)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping

import numpy as np

from .factors import FORMAT_VERSION, Factorization, decode_fields, encode_fields

__all__ = ["save_many", "load_many", "read_manifest", "ARCHIVE_VERSION"]

#: Version of the archive layout written by :func:`save_many`; the readers read this one only.
ARCHIVE_VERSION = 1

_FORMAT = "matcompress.archive"
_MANIFEST = "__manifest__"


def save_many(path, factorizations, *, info=None):
    """Write factorizations to one ``.npz`` file (uncompressed; layout in the module docstring).

    Parameters
    ----------
    path : str, path-like or writable binary file
        As for ``numpy.savez``: ``.npz`` is appended to a file name that does not end in it.
    factorizations : mapping of str to Factorization
        Entries in the order to store them; names are any non-empty strings.
    info : mapping of str to dict, default=None
        Extra JSON-serializable facts per name (a subset of the names), stored in the manifest.

    Raises
    ------
    TypeError
        When ``factorizations`` is not a mapping of strings to factorizations, or an ``info``
        entry is not a JSON-serializable dict.
    ValueError
        When a name is empty or ``info`` names an entry that is not stored.
    """
    if not isinstance(factorizations, Mapping):
        raise TypeError("factorizations must be a mapping of names to Factorization objects; "
                        f"got {type(factorizations).__name__}")
    info = {} if info is None else info
    if not isinstance(info, Mapping):
        raise TypeError(f"info must be a mapping of names to dicts; got {type(info).__name__}")
    unknown = [name for name in info if name not in factorizations]
    if unknown:
        raise ValueError(f"info names entries that are not stored: {unknown}")
    entries, members = [], {}
    for i, (name, f) in enumerate(factorizations.items()):
        if not isinstance(name, str) or not name:
            raise (TypeError if not isinstance(name, str) else ValueError)(
                f"names must be non-empty strings; got {name!r}")
        if not isinstance(f, Factorization):
            raise TypeError(f"{name!r} must be a Factorization; got {type(f).__name__}")
        extra = info.get(name, {})
        if not isinstance(extra, dict):
            raise TypeError(f"info[{name!r}] must be a dict; got {type(extra).__name__}")
        fields = encode_fields(f)
        entries.append({"name": name, "kind": f.kind, "shape": [int(d) for d in f.shape],
                        "dtype": str(f.dtype), "nbytes": int(f.nbytes), "fields": list(fields),
                        "info": extra})
        members.update({f"{i}/{field}": a for field, a in fields.items()})
    manifest = {"format": _FORMAT, "version": ARCHIVE_VERSION,
                "factorization_version": FORMAT_VERSION, "entries": entries}
    try:
        text = json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"info must hold JSON-serializable values only: {exc}") from None
    np.savez(path, **{_MANIFEST: np.asarray(text)}, **members)


def read_manifest(path) -> dict:
    """The manifest of an archive written by :func:`save_many` (no field array is read).

    Returns
    -------
    manifest : dict
        ``{"format", "version", "factorization_version", "entries"}``; each entry a dict with
        ``name``, ``kind``, ``shape`` (a tuple), ``dtype``, ``nbytes``, ``fields`` and ``info``.

    Raises
    ------
    ValueError
        When the file is not a readable matcompress archive of this version (the message names
        the file).
    """
    with _open(path) as (_, manifest):
        return manifest


def load_many(path) -> dict:
    """Read every factorization of an archive written by :func:`save_many`.

    Returns
    -------
    factorizations : dict of str to Factorization
        In the order they were saved.

    Raises
    ------
    ValueError
        When the file is not a readable matcompress archive of this version, or an entry's
        fields are missing, unreadable, malformed or disagree with the manifest (the message
        names the file and the entry).
    """
    out = {}
    with _open(path) as (archive, manifest):
        members = set(archive.files)
        for i, entry in enumerate(manifest["entries"]):
            name = entry["name"]
            where = f"{path}, entry {name!r}"
            absent = [field for field in entry["fields"] if f"{i}/{field}" not in members]
            if absent:
                raise ValueError(f"{where}: fields {absent} are listed in the manifest but not "
                                 "stored")
            f = decode_fields(entry["kind"], set(entry["fields"]),
                              lambda field, i=i: archive[f"{i}/{field}"], where)
            if tuple(f.shape) != entry["shape"] or str(f.dtype) != entry["dtype"]:
                raise ValueError(f"{where}: the manifest says shape {entry['shape']} and dtype "
                                 f"{entry['dtype']}; the fields give {f.shape} and {f.dtype}")
            out[name] = f
    return out


@contextlib.contextmanager
def _open(path):
    """``with _open(path) as (npz, manifest)``: the open ``.npz`` and its checked manifest."""
    try:
        archive = np.load(path if hasattr(path, "read") else os.fspath(path), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a .npy array, not a matcompress archive (.npz)")
    with archive:
        yield archive, _check_manifest(archive, path)


def _check_manifest(archive, path):
    if _MANIFEST not in archive.files:
        if "__kind__" in archive.files:
            raise ValueError(f"{path} holds a single factorization (Factorization.save), not an "
                             "archive of many: read it with matcompress.factors.load")
        raise ValueError(f"{path} is not a matcompress archive (no {_MANIFEST} entry)")
    try:
        text = archive[_MANIFEST]
        if text.dtype.kind != "U" or text.ndim != 0:
            raise ValueError(f"expected a JSON string, got an array of {text.dtype} and shape "
                             f"{text.shape}")
        manifest = json.loads(str(text))
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise ValueError(f"its format is not {_FORMAT!r}")
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: malformed manifest: {exc}") from None
    version = manifest.get("version")
    if version != ARCHIVE_VERSION:
        raise ValueError(f"{path} has archive version {version}; this matcompress reads version "
                         f"{ARCHIVE_VERSION}")
    if manifest.get("factorization_version") != FORMAT_VERSION:
        raise ValueError(f"{path} holds factorizations of format version "
                         f"{manifest.get('factorization_version')}; this matcompress reads "
                         f"version {FORMAT_VERSION}")
    entries = manifest.get("entries")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: malformed manifest: 'entries' is not a list")
    seen = set()
    for k, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            raise ValueError(f"{path}: malformed manifest: entry {k}: {problem}")
        if entry["name"] in seen:
            raise ValueError(f"{path}: malformed manifest: the name {entry['name']!r} appears "
                             "twice")
        seen.add(entry["name"])
        entry["shape"] = tuple(entry["shape"])
    return manifest


def _entry_problem(entry):
    """What is wrong with one manifest entry, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    expect = {"name": str, "kind": str, "shape": list, "dtype": str, "nbytes": int,
              "fields": list, "info": dict}
    for key, typ in expect.items():
        if not isinstance(entry.get(key), typ) or isinstance(entry.get(key), bool):
            return f"{key!r} missing or not a {typ.__name__}"
    if not entry["name"]:
        return "an empty name"
    if len(entry["shape"]) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                           and d >= 0 for d in entry["shape"]):
        return f"shape {entry['shape']} is not two non-negative integers"
    if not all(isinstance(field, str) for field in entry["fields"]):
        return "'fields' holds a non-string"
    return None
