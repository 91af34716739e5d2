"""``matcompress compress`` and ``matcompress inspect``, and the archive they write.

Most runs call ``matcompress.cli.main`` in this process (fast); a few start ``python -m
matcompress.cli``. Inputs are small matrices written here: ``.npy`` and ``.npz`` by numpy,
``.safetensors`` by the tiny writer below (the format's definition: an 8-byte little-endian
header length, a JSON header, the little-endian data), with bfloat16 and float16 values whose
float32 values are known independently (hand-written bit patterns, numpy's float16). Errors
printed by the commands are checked against ``||W - f.to_dense()||_F / ||W||_F`` computed here
in float64 (``to_dense`` is checked against the documented formulas in test_factors.py).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import matcompress
from matcompress import archive, cli, compressors
from matcompress._weight_files import open_weights
from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes
from matcompress.quant import ScaledCodebook

METHODS = ["lowrank", "dictionary", "kmeans", "simhash", "prune", "scaled-kmeans"]
#: Methods whose parameters are solved from --ratio only.
RATIO_ONLY = ["auto", "outliers", "lowrank-residual", "prune-kmeans"]

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``matcompress ARGV`` run in this process."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err, status, want_status, pattern):
    """The run failed with ``want_status`` and stderr ends in one error line matching
    ``pattern`` (a regular expression), with no traceback."""
    assert status == want_status, err
    assert "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("matcompress"), err
    assert ": error: " in last
    assert re.search(pattern, last), last
    return last


def write_safetensors(path, tensors, metadata=None):
    """Write ``{name: (dtype code, shape, little-endian bytes)}`` as a .safetensors file."""
    header, chunks, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (code, shape, data) in tensors.items():
        header[name] = {"dtype": code, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the writers pad the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    return path


def bfloat16_pair(rng, shape):
    """(bfloat16 bytes, their float32 values): float32 numbers whose low 16 bits are zero are
    exactly the bfloat16 numbers; their high halves are the bfloat16 encoding."""
    bits = rng.standard_normal(shape).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return (bits >> 16).astype("<u2").tobytes(), bits.view(np.float32)


def parse_table(out):
    """{name: {column: text}} from a table printed by compress or inspect, and the totals
    row. Names here hold no spaces."""
    lines = out.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    rows, total = {}, None
    for line in lines[1:]:
        if line.startswith("---"):
            continue
        if line.startswith("total ("):
            cells = re.split(r"\s{2,}", line.strip())
            total = dict(zip(["name"] + header[4:], cells))
            continue
        if total is not None or line.startswith(("note:", "wrote ")) or ": " in line:
            continue
        cells = line.split()
        rows[cells[0]] = dict(zip(header, cells))
    return rows, total


def number(text):
    return float(text.replace(",", "").rstrip("x"))


def relative_error(W, f):
    W = np.asarray(W, np.float64)
    return np.linalg.norm(W - f.to_dense().astype(np.float64)) / np.linalg.norm(W)


def matrices(rng):
    """Small weights of a model: two float32 matrices, one float64, a bias."""
    return {
        "layer.0.weight": rng.standard_normal((48, 32)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(32).astype(np.float32),
        "encoder/block_1/kernel": rng.standard_normal((40, 24)),
        "head.weight": rng.standard_normal((32, 16)).astype(np.float32),
    }


def every_kind(rng):
    """One factorization of each kind, from the compressors."""
    A = rng.standard_normal((32, 24)).astype(np.float32)
    return {
        "lr": compressors.compress(A, "low_rank", rank=3),
        "sc": compressors.compress(A, "dictionary", n_atoms=8, n_nonzero_coefs=2,
                                   random_state=0),
        "cb": compressors.compress(A, "kmeans", n_codes=12, block_size=2, random_state=0),
        "cb_u8": compressors.compress(A.astype(np.float64), "kmeans", n_codes=40,
                                      random_state=0),
        "sb": compressors.compress(A, "simhash", n_bits=20, random_state=3),
        "pr": compressors.compress(A, "pruning", sparsity=0.7),
        "pr_codes": compressors.compress(A, "pruning", sparsity=0.5, n_codes=4, random_state=0),
    }


# ---------------------------------------------------------------------------------------------
# Round trips: .npy, .npz, .safetensors
# ---------------------------------------------------------------------------------------------


def test_npy_round_trip_low_rank_is_near_optimal(tmp_path, rng, capsys):
    U = rng.standard_normal((64, 6))
    W = (U @ rng.standard_normal((6, 40)) + 0.05 * rng.standard_normal((64, 40))).astype(
        np.float32)
    np.save(tmp_path / "proj.npy", W)
    status, out, err = run(capsys, "compress", tmp_path / "proj.npy", "--method", "lowrank",
                           "--rank", 6, "-o", tmp_path / "out.npz")
    assert status == 0, err
    assert re.fullmatch(r"\[1/1\] proj 64x40 lowrank \.\.\. \d+\.\dx, \d+\.\d s\n", err), err
    fs = archive.load_many(tmp_path / "out.npz")
    assert list(fs) == ["proj"]  # named after the file
    f = fs["proj"]
    assert isinstance(f, LowRank) and f.rank == 6 and f.shape == (64, 40)
    assert f.dtype == np.float32
    # the truncated SVD's error is the smallest any rank-6 matrix reaches
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    best = math.sqrt(np.sum(s[6:] ** 2)) / math.sqrt(np.sum(s ** 2))
    got = relative_error(W, f)
    assert best * (1 - 1e-5) <= got <= 1.02 * best  # (float32 factors: rounding below)
    rows, total = parse_table(out)
    assert number(rows["proj"]["rel. error"]) == pytest.approx(got, rel=1e-3)
    assert number(rows["proj"]["bytes before"]) == W.nbytes
    assert number(rows["proj"]["bytes after"]) == 6 * (64 + 40) * 4 == f.nbytes
    assert total["name"] == "total (1 matrix)"
    assert out.rstrip().endswith(f"out.npz: 1 factorization, "
                                 f"{os.path.getsize(tmp_path / 'out.npz'):,} bytes")


def test_npz_mixed_arrays_skipped_with_notes(tmp_path, rng, capsys):
    arrays = {
        "layer.0.weight": rng.standard_normal((24, 16)).astype(np.float32),
        "layer.0.bias": np.ones(16, np.float32),
        "ids": np.arange(12).reshape(3, 4),
        "conv.kernel": rng.standard_normal((3, 3, 4)).astype(np.float32),
        "scale": np.float32(2.0),
        "empty": np.zeros((0, 5), np.float32),
        "flags": np.ones((2, 2), bool),
        "emb/table": rng.standard_normal((20, 8)),
    }
    np.savez(tmp_path / "model.npz", **arrays)
    status, out, err = run(capsys, "compress", tmp_path / "model.npz", "--method", "prune",
                           "--sparsity", "0.5", "-o", tmp_path / "out.npz")
    assert status == 0, err
    notes = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert notes == ["skipped layer.0.bias: 1-D", "skipped ids: int64, not float",
                     "skipped conv.kernel: 3-D", "skipped scale: 0-D",
                     "skipped empty: empty (0x5)", "skipped flags: bool, not float"]
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [p.split(" ...")[0] for p in progress] == [
        "[1/2] layer.0.weight 24x16 prune", "[2/2] emb/table 20x8 prune"]
    fs = archive.load_many(tmp_path / "out.npz")
    assert list(fs) == ["layer.0.weight", "emb/table"]
    for name, f in fs.items():
        W = arrays[name]
        assert isinstance(f, Pruned) and f.dtype == W.dtype and f.shape == W.shape
        assert f.nnz == W.size - W.size // 2
        # the kept entries are the largest in magnitude, unchanged
        dense = f.to_dense()
        kept = dense != 0
        assert_array_equal(dense[kept], W[kept])
        assert np.abs(W[~kept]).max() <= np.abs(W[kept]).min()
    assert "(6 arrays skipped)" in out


def test_safetensors_f32_f16_bf16_f64_decoded_exactly(tmp_path, rng, capsys):
    # bfloat16 bit patterns and their values, written down by hand
    known_bits = np.array([[0x3F80, 0xC000, 0x3F00], [0x4049, 0x0000, 0x477F]], "<u2")
    known = np.array([[1.0, -2.0, 0.5], [3.140625, 0.0, 65280.0]], np.float32)
    bf16_bytes, bf16 = bfloat16_pair(rng, (16, 12))
    f16 = rng.standard_normal((12, 8)).astype(np.float16)
    f32 = rng.standard_normal((10, 6)).astype(np.float32)
    f64 = rng.standard_normal((6, 4))
    path = write_safetensors(tmp_path / "model.safetensors", {
        "known.bf16": ("BF16", (2, 3), known_bits.tobytes()),
        "model.layers.0.mlp.weight": ("BF16", (16, 12), bf16_bytes),
        "half": ("F16", (12, 8), f16.astype("<f2").tobytes()),
        "single": ("F32", (10, 6), f32.astype("<f4").tobytes()),
        "double": ("F64", (6, 4), f64.astype("<f8").tobytes()),
        "bias": ("F32", (6,), np.zeros(6, "<f4").tobytes()),
        "position_ids": ("I64", (1, 5), np.arange(5, dtype="<i8").tobytes()),
        "fp8": ("F8_E4M3", (2, 2), bytes(4)),
    }, metadata={"format": "pt"})
    # sparsity 0 keeps every weight as it was decoded: the stored values are the decoding
    status, out, err = run(capsys, "compress", path, "--method", "prune", "--sparsity", "0",
                           "-o", tmp_path / "out.npz")
    assert status == 0, err
    assert "skipped bias: 1-D" in err
    assert "skipped position_ids: int64, not float" in err
    assert "skipped fp8: F8_E4M3, not supported" in err
    fs = archive.load_many(tmp_path / "out.npz")
    want = {"known.bf16": known, "model.layers.0.mlp.weight": bf16,
            "half": f16.astype(np.float32), "single": f32, "double": f64}
    assert list(fs) == list(want)
    for name, W in want.items():
        assert fs[name].dtype == W.dtype, name
        assert_array_equal(fs[name].to_dense(), W, err_msg=name)
    rows, _ = parse_table(out)
    assert rows["known.bf16"]["dtype"] == "bfloat16"
    assert number(rows["known.bf16"]["bytes before"]) == 2 * 6  # 2 bytes per bfloat16
    assert number(rows["half"]["bytes before"]) == 2 * 96
    assert number(rows["double"]["bytes before"]) == 8 * 24
    assert all(number(r["rel. error"]) == 0 for r in rows.values())
    assert "note: bfloat16 and float16 matrices are stored in float32" in out
    manifest = archive.read_manifest(tmp_path / "out.npz")
    infos = {e["name"]: e["info"] for e in manifest["entries"]}
    assert infos["half"] == {"source_dtype": "float16", "source_nbytes": 192}


def test_npy_and_safetensors_are_memory_mapped(tmp_path, rng):
    W = rng.standard_normal((8, 4)).astype(np.float32)
    np.save(tmp_path / "w.npy", W)
    write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", (8, 4), W.tobytes())})
    for name in ("w.npy", "w.safetensors"):
        with open_weights(tmp_path / name) as weights:
            (t,) = weights.tensors
            raw = t.raw()
            assert isinstance(raw, np.memmap), name
            assert not raw.flags.writeable
            assert_array_equal(t.load(), W)
            assert_array_equal(t.decode(raw[2:5]), W[2:5])


def test_format_sniffed_from_content_not_extension(tmp_path, rng, capsys):
    W = rng.standard_normal((16, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", w=W)
    os.replace(tmp_path / "a.npz", tmp_path / "weights.bin")
    np.save(tmp_path / "b.npy", W)
    os.replace(tmp_path / "b.npy", tmp_path / "single.safetensors")
    write_safetensors(tmp_path / "c.npy", {"w": ("F32", (16, 8), W.tobytes())})
    for name, entry in (("weights.bin", "w"), ("single.safetensors", "single"), ("c.npy", "w")):
        status, _, err = run(capsys, "compress", tmp_path / name, "--method", "kmeans",
                             "--codes", 4, "-o", tmp_path / "out.npz")
        assert status == 0, (name, err)
        (f,) = archive.load_many(tmp_path / "out.npz").values()
        assert list(archive.load_many(tmp_path / "out.npz")) == [entry]
        assert isinstance(f, Codebook) and f.n_codes == 4 and f.shape == (16, 8)


# ---------------------------------------------------------------------------------------------
# Every method, with --ratio and with its own parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS + RATIO_ONLY)
def test_every_method_meets_the_ratio(method, tmp_path, rng, capsys):
    arrays = matrices(rng)
    np.savez(tmp_path / "model.npz", **arrays)
    status, out, err = run(capsys, "compress", tmp_path / "model.npz", "--method", method,
                           "--ratio", "4", "-o", tmp_path / "out.npz", "--seed", 3)
    assert status == 0, err
    fs = archive.load_many(tmp_path / "out.npz")
    assert list(fs) == ["layer.0.weight", "encoder/block_1/kernel", "head.weight"]
    rows, total = parse_table(out)
    for name, f in fs.items():
        W = arrays[name]
        assert f.dtype == W.dtype and f.shape == W.shape
        assert W.nbytes / f.nbytes >= 4, (name, W.nbytes / f.nbytes)
        assert f.nbytes == int(number(rows[name]["bytes after"]))
        assert number(rows[name]["ratio"]) == pytest.approx(W.nbytes / f.nbytes, abs=0.006)
        err_ref = relative_error(W, f)
        assert 0 < err_ref < 1.2
        assert number(rows[name]["rel. error"]) == pytest.approx(err_ref, rel=1e-3)
    before = sum(arrays[n].nbytes for n in fs)
    after = sum(f.nbytes for f in fs.values())
    assert number(total["bytes before"]) == before and number(total["bytes after"]) == after
    sq = sum(relative_error(arrays[n], f) ** 2 * np.sum(arrays[n].astype(np.float64) ** 2)
             for n, f in fs.items())
    norm = sum(np.sum(arrays[n].astype(np.float64) ** 2) for n in fs)
    assert number(total["rel. error"]) == pytest.approx(math.sqrt(sq / norm), rel=1e-3)


PARAMS = {
    "lowrank": (["--rank", "3"], lambda f, m, n: isinstance(f, LowRank) and f.rank == 3),
    "dictionary": (["--atoms", "12", "--nonzeros", "3"],
                   lambda f, m, n: isinstance(f, SparseCodes) and f.dictionary.shape == (12, n)
                   and f.values.shape == (m, 3)),
    "kmeans": (["--codes", "8", "--block-size", "2"],
               lambda f, m, n: isinstance(f, Codebook) and f.codebook.shape == (8, 2)
               and f.packed),
    "simhash": (["--bits", "40"], lambda f, m, n: isinstance(f, SignBits) and f.n_bits == 40),
    "prune": (["--sparsity", "0.75"],
              lambda f, m, n: isinstance(f, Pruned) and f.nnz == m * n - int(0.75 * m * n)),
    "scaled-kmeans": (["--codes", "8", "--group-size", "4"],
                      lambda f, m, n: isinstance(f, ScaledCodebook)
                      and f.codebook.shape == (1, 8) and f.scales.shape == (-(-m // 4), n)),
}


@pytest.mark.parametrize("method", RATIO_ONLY)
def test_ratio_only_methods_need_the_ratio(method, tmp_path, rng, capsys):
    np.save(tmp_path / "w.npy", rng.standard_normal((32, 24)).astype(np.float32))
    status, _, err = run(capsys, "compress", tmp_path / "w.npy", "--method", method,
                         "-o", tmp_path / "out.npz")
    assert_one_line_error(err, status, 2, f"--method {method} needs --ratio")


def test_auto_picks_per_matrix_and_names_the_kind(tmp_path, rng, capsys):
    """A near-low-rank matrix and a heavy-tailed one: auto's per-matrix choice is at least as
    good as each fixed method's at the same ratio."""
    low = (rng.standard_normal((96, 4)) @ rng.standard_normal((4, 64))).astype(np.float32)
    heavy = rng.standard_t(3, (96, 64)).astype(np.float32)
    np.savez(tmp_path / "m.npz", low=low, heavy=heavy)
    errs = {}
    for method in ("auto", "lowrank", "kmeans", "scaled-kmeans"):
        status, _, err = run(capsys, "compress", tmp_path / "m.npz", "--method", method,
                             "--ratio", "6", "-o", tmp_path / f"{method}.npz", "--seed", 1)
        assert status == 0, err
        fs = archive.load_many(tmp_path / f"{method}.npz")
        errs[method] = {"low": relative_error(low, fs["low"]),
                        "heavy": relative_error(heavy, fs["heavy"])}
        assert all(W.nbytes / fs[k].nbytes >= 6 for k, W in (("low", low), ("heavy", heavy)))
    for k in ("low", "heavy"):
        assert errs["auto"][k] <= min(errs[m][k] for m in errs if m != "auto") * (1 + 1e-6), errs


@pytest.mark.parametrize("method", METHODS)
def test_every_method_with_its_parameters(method, tmp_path, rng, capsys):
    arrays = matrices(rng)
    np.savez(tmp_path / "model.npz", **arrays)
    flags, check = PARAMS[method]
    status, out, err = run(capsys, "compress", tmp_path / "model.npz", "--method", method,
                           *flags, "-o", tmp_path / "out.npz")
    assert status == 0, err
    fs = archive.load_many(tmp_path / "out.npz")
    rows, _ = parse_table(out)
    for name, f in fs.items():
        assert check(f, *arrays[name].shape), (name, f)
        assert number(rows[name]["rel. error"]) == pytest.approx(
            relative_error(arrays[name], f), rel=1e-3)


def test_kmeans_block_size_goes_with_ratio(tmp_path, rng, capsys):
    np.save(tmp_path / "w.npy", rng.standard_normal((32, 24)).astype(np.float32))
    status, _, err = run(capsys, "compress", tmp_path / "w.npy", "--method", "kmeans",
                         "--ratio", "6", "--block-size", "4", "-o", tmp_path / "out.npz")
    assert status == 0, err
    f = archive.load_many(tmp_path / "out.npz")["w"]
    assert f.block_size == 4 and 32 * 24 * 4 / f.nbytes >= 6


def test_half_precision_ratio_counts_the_input_bytes(tmp_path, rng, capsys):
    data, W = bfloat16_pair(rng, (64, 48))
    path = write_safetensors(tmp_path / "m.safetensors", {"w": ("BF16", (64, 48), data)})
    for method in ("lowrank", "kmeans", "prune"):
        status, out, err = run(capsys, "compress", path, "--method", method, "--ratio", "4",
                               "-o", tmp_path / "out.npz")
        assert status == 0, err
        f = archive.load_many(tmp_path / "out.npz")["w"]
        assert f.dtype == np.float32
        assert 64 * 48 * 2 / f.nbytes >= 4, method  # against the bfloat16 bytes
        rows, _ = parse_table(out)
        assert number(rows["w"]["ratio"]) == pytest.approx(64 * 48 * 2 / f.nbytes, abs=0.006)


def test_same_archive_for_one_and_two_threads_and_thread_limit(tmp_path, rng, capsys):
    np.save(tmp_path / "w.npy", rng.standard_normal((40, 32)).astype(np.float32))
    outs = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}.npz"
        status, _, err = run(capsys, "compress", tmp_path / "w.npy", "--method", "kmeans",
                             "--ratio", "4", "--threads", threads, "-o", out)
        assert status == 0, err
        outs.append(archive.load_many(out)["w"])
    assert outs[0] == outs[1]
    from matcompress import _core

    with cli._thread_limit(1):
        assert _core.default_threads() == 1


def test_seed_makes_runs_repeatable(tmp_path, rng, capsys):
    np.save(tmp_path / "w.npy", rng.standard_normal((32, 16)).astype(np.float32))
    fs = []
    for seed in (5, 5, 6):
        status, _, err = run(capsys, "compress", tmp_path / "w.npy", "--method", "simhash",
                             "--bits", 24, "--seed", seed, "-o", tmp_path / "o.npz")
        assert status == 0, err
        fs.append(archive.load_many(tmp_path / "o.npz")["w"])
    assert fs[0] == fs[1] and fs[0].seed != fs[2].seed


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [cli._BLOCK_ELEMENTS, 40], ids=["default-blocks", "tiny-blocks"])
def test_inspect_errors_match_numpy(block, tmp_path, rng, capsys, monkeypatch):
    arrays = matrices(rng)
    np.savez(tmp_path / "model.npz", **arrays)
    status, _, err = run(capsys, "compress", tmp_path / "model.npz", "--method", "simhash",
                         "--ratio", "3", "-o", tmp_path / "out.npz")
    assert status == 0, err
    # tiny blocks: 40 elements = 1 or 2 rows at a time, so every row block is visited
    monkeypatch.setattr(cli, "_BLOCK_ELEMENTS", block)
    status, out, err = run(capsys, "inspect", tmp_path / "out.npz", "--original",
                           tmp_path / "model.npz")
    assert status == 0, err
    fs = archive.load_many(tmp_path / "out.npz")
    rows, total = parse_table(out)
    assert list(rows) == list(fs)
    for name, f in fs.items():
        row = rows[name]
        assert row["kind"] == "sign_bits"
        assert row["shape"] == "{}x{}".format(*f.shape)
        assert row["dtype"] == str(arrays[name].dtype)
        assert number(row["bytes before"]) == arrays[name].nbytes
        assert number(row["bytes after"]) == f.nbytes
        assert number(row["rel. error"]) == pytest.approx(relative_error(arrays[name], f),
                                                          rel=1e-3)
    assert total["name"] == "total (3 matrices)"
    assert number(total["bytes after"]) == sum(f.nbytes for f in fs.values())
    assert out.rstrip().endswith(f"3 factorizations, {os.path.getsize(tmp_path / 'out.npz'):,} "
                                 "bytes")


def test_inspect_without_original_and_of_a_python_archive(tmp_path, rng, capsys):
    fs = every_kind(rng)
    archive.save_many(tmp_path / "mine.npz", fs)
    status, out, err = run(capsys, "inspect", tmp_path / "mine.npz")
    assert status == 0, err
    rows, total = parse_table(out)
    assert "rel. error" not in out
    for name, f in fs.items():
        assert rows[name]["kind"] == f.kind
        assert rows[name]["dtype"] == str(f.dtype)
        assert number(rows[name]["bytes before"]) == f.dense_nbytes
        assert number(rows[name]["ratio"]) == pytest.approx(f.compression_ratio, abs=0.006)
    assert total["name"] == f"total ({len(fs)} matrices)"


def test_inspect_safetensors_original(tmp_path, rng, capsys):
    data, W = bfloat16_pair(rng, (24, 16))
    path = write_safetensors(tmp_path / "m.safetensors", {"a.weight": ("BF16", (24, 16), data)})
    assert run(capsys, "compress", path, "--method", "lowrank", "--rank", 2, "-o",
               tmp_path / "o.npz")[0] == 0
    status, out, err = run(capsys, "inspect", tmp_path / "o.npz", "--original", path)
    assert status == 0, err
    rows, _ = parse_table(out)
    f = archive.load_many(tmp_path / "o.npz")["a.weight"]
    assert rows["a.weight"]["dtype"] == "bfloat16"
    assert number(rows["a.weight"]["rel. error"]) == pytest.approx(relative_error(W, f),
                                                                   rel=1e-3)


# ---------------------------------------------------------------------------------------------
# The archive module
# ---------------------------------------------------------------------------------------------


def test_load_many_round_trip_field_by_field(tmp_path, rng):
    base = every_kind(rng)
    # names that look like members, paths, or hold dots, spaces and non-ASCII letters
    names = ["0/left", "layer.0.weight", "a/b/c", "__manifest__", "héllo wörld", "1", "x.npy"]
    fs = dict(zip(names, base.values()))
    info = {"1": {"source_dtype": "bfloat16", "note": [1, 2]}}
    archive.save_many(tmp_path / "all.npz", fs, info=info)
    back = archive.load_many(tmp_path / "all.npz")
    assert list(back) == names
    for name, f in fs.items():
        g = back[name]
        assert type(g) is type(f) and g == f
        for fld in dataclasses.fields(f):
            a, b = getattr(f, fld.name), getattr(g, fld.name)
            if isinstance(a, np.ndarray):
                assert b.dtype == a.dtype and b.shape == a.shape, (name, fld.name)
                assert_array_equal(a, b)
            else:
                assert type(a) is type(b) and a == b, (name, fld.name)
    manifest = archive.read_manifest(tmp_path / "all.npz")
    assert manifest["version"] == archive.ARCHIVE_VERSION
    entries = {e["name"]: e for e in manifest["entries"]}
    for name, f in fs.items():
        e = entries[name]
        assert (e["kind"], e["shape"], e["dtype"], e["nbytes"]) == (f.kind, f.shape, str(f.dtype),
                                                                    f.nbytes)
        assert e["info"] == info.get(name, {})
    # the members are numbered, so numpy alone reads them
    with np.load(tmp_path / "all.npz") as z:
        assert_array_equal(z["0/left"], fs["0/left"].left)


def test_save_many_validates(tmp_path, rng):
    f = every_kind(rng)["lr"]
    with pytest.raises(TypeError, match="mapping"):
        archive.save_many(tmp_path / "x.npz", [f])
    with pytest.raises(ValueError, match="non-empty strings"):
        archive.save_many(tmp_path / "x.npz", {"": f})
    with pytest.raises(TypeError, match="must be a Factorization"):
        archive.save_many(tmp_path / "x.npz", {"a": np.ones((2, 2))})
    with pytest.raises(ValueError, match="not stored"):
        archive.save_many(tmp_path / "x.npz", {"a": f}, info={"b": {}})
    with pytest.raises(TypeError, match="JSON"):
        archive.save_many(tmp_path / "x.npz", {"a": f}, info={"a": {"x": object()}})
    assert not (tmp_path / "x.npz").exists()


def _manifest_file(path, f, **changes):
    """An archive of one low-rank entry with manifest keys changed (None deletes one)."""
    archive.save_many(path, {"w": f})
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    manifest = json.loads(str(members["__manifest__"]))
    entry = manifest["entries"][0]
    for key, value in changes.items():
        target = entry if key in entry or key in ("shape",) else manifest
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    members["__manifest__"] = np.asarray(json.dumps(manifest))
    np.savez(path, **members)
    return path


ARCHIVE_ERRORS = {
    "single": (lambda p, f: (f.save(p), p)[1], "holds a single factorization"),
    "plain_npz": (lambda p, f: (np.savez(p, a=np.ones(2)), p)[1], "not a matcompress archive"),
    "npy": (lambda p, f: (np.save(p.with_suffix(".npy"), np.ones(2)), p.with_suffix(".npy"))[1],
            "is a .npy array"),
    "text": (lambda p, f: (p.write_text("hello"), p)[1], "not a readable .npz"),
    "version": (lambda p, f: _manifest_file(p, f, version=2), "archive version 2"),
    "fversion": (lambda p, f: _manifest_file(p, f, factorization_version=9),
                 "format version 9"),
    "format": (lambda p, f: _manifest_file(p, f, format="other"), "malformed manifest"),
    "no_entries": (lambda p, f: _manifest_file(p, f, entries=None), "'entries' is not a list"),
    "shape": (lambda p, f: _manifest_file(p, f, shape=[3, 3]), "manifest says shape"),
    "bad_shape": (lambda p, f: _manifest_file(p, f, shape=[3]), "not two non-negative"),
    "missing_field": (lambda p, f: _manifest_file(p, f, fields=["left", "right", "extra"]),
                      r"fields \['extra'\] are listed"),
    "no_kind": (lambda p, f: _manifest_file(p, f, kind=None), "'kind' missing"),
    "kind": (lambda p, f: _manifest_file(p, f, kind="tucker"), "unknown factorization kind"),
}


@pytest.mark.parametrize("case", sorted(ARCHIVE_ERRORS))
def test_load_many_rejects_foreign_files(case, tmp_path, rng, capsys):
    make, pattern = ARCHIVE_ERRORS[case]
    path = make(tmp_path / "a.npz", every_kind(rng)["lr"])
    with pytest.raises(ValueError, match=pattern) as info:
        archive.load_many(path)
    assert str(path) in str(info.value)
    status, _, err = run(capsys, "inspect", path)
    assert_one_line_error(err, status, 1, pattern)


# ---------------------------------------------------------------------------------------------
# Error paths
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def model(tmp_path, rng):
    np.savez(tmp_path / "model.npz", **matrices(rng))
    return tmp_path / "model.npz"


def test_missing_and_directory_inputs(tmp_path, capsys):
    status, _, err = run(capsys, "compress", tmp_path / "nope.npz", "--method", "lowrank",
                         "--rank", 2, "-o", tmp_path / "o.npz")
    assert_one_line_error(err, status, 2, r"argument INPUT: .*nope\.npz: no such file")
    status, _, err = run(capsys, "compress", tmp_path, "--method", "lowrank", "--rank", 2,
                         "-o", tmp_path / "o.npz")
    assert_one_line_error(err, status, 2, "is a directory")
    status, _, err = run(capsys, "inspect", tmp_path / "nope.npz")
    assert_one_line_error(err, status, 2, "argument ARCHIVE: .*no such file")


CORRUPT = {
    "text": (lambda p: p.write_text("col1,col2\n1,2\n"),
             r"cannot read .*: not a \.npy, \.npz or \.safetensors file"),
    "empty": (lambda p: p.write_bytes(b""), r"not a \.npy, \.npz or \.safetensors file"),
    "zip_garbage": (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(range(200))),
                    r"cannot read .*: corrupt \.npz file"),
    "npy_truncated": (lambda p: p.write_bytes(_npy_bytes(np.ones((64, 32)))[:-100]),
                      r"truncated \.npy file"),
    "npy_bad_header": (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'xyz'}\n"),
                       r"corrupt \.npy file"),
    "st_bad_json": (lambda p: p.write_bytes(struct.pack("<Q", 8) + b"{nope   "),
                    r"corrupt \.safetensors header"),
    "st_truncated": (lambda p: p.write_bytes(_st_bytes(p)[:-40]),
                     r"tensor 'w': data_offsets end at 2048, past the \d+ bytes"),
    "st_wrong_size": (lambda p: write_safetensors(p, {"w": ("F32", (4, 4), bytes(60))}),
                      r"hold 60 bytes; shape \[4, 4\] of F32 needs 64"),
    "st_bad_shape": (lambda p: write_safetensors(p, {"w": ("F32", (-1, 4), bytes(16))}),
                     r"shape \[-1, 4\] is not a list of non-negative integers"),
}


def _npy_bytes(a):
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _st_bytes(p):
    write_safetensors(p, {"w": ("F32", (16, 32), np.ones((16, 32), "<f4").tobytes())})
    return p.read_bytes()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_unreadable_inputs(case, tmp_path, capsys):
    make, pattern = CORRUPT[case]
    path = tmp_path / "weights.npy"
    make(path)
    status, out, err = run(capsys, "compress", path, "--method", "lowrank", "--rank", 2, "-o",
                           tmp_path / "o.npz")
    assert_one_line_error(err, status, 1, pattern)
    assert str(path) in err
    assert not (tmp_path / "o.npz").exists() and out == ""


def test_corrupt_npz_member_fails_when_read(tmp_path, rng, capsys):
    np.savez_compressed(tmp_path / "m.npz", a=rng.standard_normal((64, 64)))
    data = bytearray((tmp_path / "m.npz").read_bytes())
    data[300:340] = bytes(40)  # inside the deflated data: the header was read, the data fails
    (tmp_path / "m.npz").write_bytes(bytes(data))
    status, _, err = run(capsys, "compress", tmp_path / "m.npz", "--method", "lowrank",
                         "--rank", 2, "-o", tmp_path / "o.npz")
    assert_one_line_error(err, status, 1, r"cannot read .*m\.npz")


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (np.inf, "infinity"),
                                       (-np.inf, "infinity")])
def test_nan_or_infinite_weight(bad, what, tmp_path, rng, capsys):
    arrays = matrices(rng)
    arrays["head.weight"][3, 5] = bad
    np.savez(tmp_path / "m.npz", **arrays)
    out = tmp_path / "o.npz"
    out.write_bytes(b"previous archive")
    status, _, err = run(capsys, "compress", tmp_path / "m.npz", "--method", "kmeans", "--codes",
                         4, "-o", out)
    last = assert_one_line_error(err, status, 1, rf"head\.weight contains {what}")
    assert "nothing written" in last
    assert "[3/3] head.weight 32x16 kmeans ... failed" in err
    assert out.read_bytes() == b"previous archive"
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "o.npz"]  # no temporary file left


@pytest.mark.parametrize("ratio", ["0.5", "1", "-3", "abc", "nan", "inf"])
def test_bad_ratio(ratio, model, tmp_path, capsys):
    status, _, err = run(capsys, "compress", model, "--method", "lowrank", f"--ratio={ratio}",
                         "-o", tmp_path / "o.npz")
    assert_one_line_error(err, status, 2, r"argument --ratio: (must be > 1|expected a number)")


@pytest.mark.parametrize("argv, pattern", [
    (["--method", "lowrank", "--ratio", "1000"],
     r"layer\.0\.weight \(48x32\): low_rank: compression_ratio=1000 is unreachable"),
    (["--method", "simhash", "--ratio", "50"],
     r"layer\.0\.weight \(48x32\): simhash: compression_ratio=50 is unreachable"),
    (["--method", "lowrank", "--rank", "30"],
     r"encoder/block_1/kernel \(40x24\): rank must be <= 24"),
    (["--method", "dictionary", "--atoms", "100", "--nonzeros", "2"],
     r"layer\.0\.weight \(48x32\): n_atoms must be <= 48"),
    (["--method", "kmeans", "--codes", "4", "--block-size", "5"],
     r"block_size=5 must divide n=32"),
    (["--method", "lowrank", "--ratio", "2", "--rank", "3"],
     "argument --rank: give either --ratio or --rank, not both"),
    (["--method", "dictionary", "--atoms", "3"],
     "--method dictionary needs --ratio or --atoms and --nonzeros"),
    (["--method", "prune"], "--method prune needs --ratio or --sparsity"),
    (["--method", "lowrank", "--codes", "3"], "argument --codes: applies to --method kmeans"),
    (["--method", "prune", "--sparsity", "1"], r"argument --sparsity: must be in \[0, 1\)"),
    (["--method", "svd", "--rank", "3"], "argument --method: invalid choice"),
    (["--method", "lowrank", "--rank", "0"], "argument --rank: must be at least 1"),
    (["--method", "lowrank", "--rank", "2", "--threads", "0"],
     "argument --threads: must be at least 1"),
])
def test_bad_method_parameters_exit_2_before_compressing(argv, pattern, model, tmp_path, capsys):
    status, _, err = run(capsys, "compress", model, *argv, "-o", tmp_path / "o.npz")
    assert_one_line_error(err, status, 2, pattern)
    assert "[1/" not in err  # nothing was compressed
    assert not (tmp_path / "o.npz").exists()


def test_unreachable_ratio_of_half_precision_explains_the_float32_target(tmp_path, rng,
                                                                         capsys):
    data, _ = bfloat16_pair(rng, (16, 8))
    path = write_safetensors(tmp_path / "m.safetensors", {"w": ("BF16", (16, 8), data)})
    status, _, err = run(capsys, "compress", path, "--method", "lowrank", "--ratio", "4",
                         "-o", tmp_path / "o.npz")
    assert_one_line_error(err, status, 2, r"--ratio 4 of its bfloat16 bytes asks for 8 of its "
                                          r"float32 bytes")


def test_unwritable_outputs(model, tmp_path, capsys, monkeypatch):
    argv = ["compress", model, "--method", "lowrank", "--rank", 2]
    status, _, err = run(capsys, *argv, "-o", tmp_path / "no" / "dir" / "o.npz")
    assert_one_line_error(err, status, 2, r"argument -o/--output: directory .* does not exist")
    status, _, err = run(capsys, *argv, "-o", tmp_path)
    assert_one_line_error(err, status, 2, r"argument -o/--output: .* is a directory")
    status, _, err = run(capsys, *argv, "-o", model)
    assert_one_line_error(err, status, 2, "is the input file")
    status, _, err = run(capsys, *argv, "-o", tmp_path / "model.npz" / "o.npz")
    assert_one_line_error(err, status, 2, "does not exist")

    # a write that fails half-way (a full disk): exit 1, the old file kept, no temporary left
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "o.npz"
    out.write_bytes(b"old")
    monkeypatch.setattr(archive, "save_many", full_disk)
    status, _, err = run(capsys, *argv, "-o", out)
    assert_one_line_error(err, status, 1, r"cannot write .*o\.npz: No space left on device")
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "o.npz"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes to read-only directories")
def test_read_only_directory(model, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        status, _, err = run(capsys, "compress", model, "--method", "lowrank", "--rank", 2,
                             "-o", ro / "o.npz")
    finally:
        ro.chmod(0o700)
    assert_one_line_error(err, status, 1, "cannot write .*: permission denied")
    assert "[1/" not in err


def test_output_file_mode_follows_umask(model, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert run(capsys, "compress", model, "--method", "lowrank", "--rank", 2, "-o",
                   tmp_path / "o.npz")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.npz").stat().st_mode & 0o777 == 0o644


def test_nothing_to_compress(tmp_path, capsys):
    np.savez(tmp_path / "m.npz", bias=np.ones(3), ids=np.arange(4).reshape(2, 2))
    status, _, err = run(capsys, "compress", tmp_path / "m.npz", "--method", "prune",
                         "--sparsity", "0.5", "-o", tmp_path / "o.npz")
    assert "skipped bias: 1-D" in err
    assert_one_line_error(err, status, 1, "holds no 2-D float array to compress")


def test_interrupt_exits_130_and_writes_nothing(model, tmp_path, capsys, monkeypatch):
    def interrupted(self, A, *, grad=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(compressors.LowRankCompressor, "compress", interrupted)
    status, _, err = run(capsys, "compress", model, "--method", "lowrank", "--rank", 2, "-o",
                         tmp_path / "o.npz")
    assert status == 130
    assert "[1/3] layer.0.weight 48x32 lowrank ... interrupted" in err
    assert err.rstrip().endswith("matcompress: interrupted")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_inspect_original_mismatches(tmp_path, rng, capsys):
    arrays = matrices(rng)
    np.savez(tmp_path / "m.npz", **arrays)
    assert run(capsys, "compress", tmp_path / "m.npz", "--method", "lowrank", "--rank", 2, "-o",
               tmp_path / "o.npz")[0] == 0
    np.savez(tmp_path / "other.npz", **{"layer.0.weight": arrays["layer.0.weight"]})
    status, _, err = run(capsys, "inspect", tmp_path / "o.npz", "--original",
                         tmp_path / "other.npz")
    assert_one_line_error(err, status, 1, r"has no array named 'encoder/block_1/kernel'")
    np.savez(tmp_path / "other.npz", **{**arrays, "head.weight": np.ones((16, 32), np.float32)})
    status, _, err = run(capsys, "inspect", tmp_path / "o.npz", "--original",
                         tmp_path / "other.npz")
    assert_one_line_error(err, status, 1, r"head\.weight: .* holds a 32x16 factorization, "
                                          r".* a 16x32 float32 array")
    status, _, err = run(capsys, "inspect", tmp_path / "o.npz", "--original", tmp_path / "x")
    assert_one_line_error(err, status, 2, "argument --original: .* no such file")


def test_help_lists_the_commands(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "compress" in out and "inspect" in out
    status, out, _ = run(capsys, "compress", "--help")
    assert status == 0
    for flag in ("--ratio", "--rank", "--atoms", "--nonzeros", "--codes", "--block-size",
                 "--bits", "--sparsity", "--threads", "--seed", "-o OUT.npz"):
        assert flag in out, flag
    status, out, _ = run(capsys, "inspect", "--help")
    assert status == 0 and "--original" in out
    for command in ("compress", "inspect"):
        assert f"``matcompress {command}" in cli.__doc__


# ---------------------------------------------------------------------------------------------
# python -m matcompress.cli in a fresh interpreter
# ---------------------------------------------------------------------------------------------

_DROP_EDITABLE = not any("editable" in type(f).__module__ for f in sys.meta_path)


def run_module(*argv, cwd):
    """``python -m matcompress.cli ARGV`` in a fresh interpreter that imports the same
    matcompress as this process (as test_tf_compression.py does: the editable install's finder
    dropped when this process dropped it, the module then run as ``-m`` runs it)."""
    if _DROP_EDITABLE:
        code = ("import runpy, sys\n"
                "sys.meta_path = [f for f in sys.meta_path\n"
                "                 if 'editable' not in type(f).__module__]\n"
                "import matcompress\n"
                f"assert matcompress.__file__ == {matcompress.__file__!r}, matcompress.__file__\n"
                "runpy.run_module('matcompress.cli', run_name='__main__', alter_sys=True)\n")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "matcompress.cli"]
    return subprocess.run(cmd + [str(a) for a in argv], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_module_compress_and_inspect(tmp_path, rng):
    arrays = matrices(rng)
    np.savez(tmp_path / "model.npz", **arrays)
    proc = run_module("compress", "model.npz", "--method", "kmeans", "--ratio", "5",
                      "--threads", "1", "-o", "out.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped layer.0.bias: 1-D" in proc.stderr
    assert re.search(r"^\[3/3\] head\.weight 32x16 kmeans \.\.\. \d+\.\dx, \d+\.\d s$",
                     proc.stderr, re.M), proc.stderr
    fs = archive.load_many(tmp_path / "out.npz")
    assert all(arrays[n].nbytes / f.nbytes >= 5 for n, f in fs.items())
    proc = run_module("inspect", "out.npz", "--original", "model.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows, _ = parse_table(proc.stdout)
    for name, f in fs.items():
        assert number(rows[name]["rel. error"]) == pytest.approx(
            relative_error(arrays[name], f), rel=1e-3)


def test_module_errors(tmp_path):
    proc = run_module("compress", "missing.npz", "--method", "prune", "--sparsity", "0.5",
                      "-o", "o.npz", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no such file" in proc.stderr
    (tmp_path / "notes.npz").write_text("not weights")
    proc = run_module("compress", "notes.npz", "--method", "prune", "--sparsity", "0.5",
                      "-o", "o.npz", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == ("matcompress: error: cannot read notes.npz: not a .npy, .npz or "
                           ".safetensors file\n")
