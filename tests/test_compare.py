"""Tests of the comparison behind ``matcompress bench`` (matcompress.benchmark.compare).

The comparison runs in its "tiny" mode (every case at toy sizes, one round, no pauses: seconds,
figures meaningless); the tests check its bookkeeping, not the speed of anything: every case is
in the table, every ratio is the one its recorded times give, met / missed follows the targets,
a missing peer is a note and skipped rows (never a crash), and the markdown section replacement
leaves the rest of a results file as it was.
"""

from __future__ import annotations

import math
import sys

import pytest

from matcompress.benchmark import compare
from matcompress.benchmark.compare import GROUPS, TARGETS, Record, Result

# Rows per group in tiny mode with every peer present (TensorFlow: 5 compressors, batch 32).
TINY_ROWS = {
    "omp": 9,  # 3 cases x (SPAMS, scikit-learn, GEMM)
    "dictionary": 9,  # 3 methods x (scikit-learn alpha=1, SPAMS mode 3, SPAMS mode 2)
    "kmeans_1d": 6,  # 2 cases x (scikit-learn, faiss random init, faiss k-means++)
    "blocks": 4,  # 2 cases x (random init, k-means++): n <= 256 k, so no sub-sampled pair
    "additive": 1,  # one configuration against faiss ResidualQuantizer
    "gemv": 1,
    "factored": 6,  # every form at 4x, batch 32
    "train_step": 5,  # every compressor
}

pytestmark = pytest.mark.filterwarnings(
    # TensorFlow's and Keras' own imports warn under filterwarnings=error; the peers' numeric
    # warnings (scikit-learn's lars at toy sizes, faiss's few points per centroid) are theirs
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning",
    "ignore::RuntimeWarning")


def _tf_usable():
    try:
        import matcompress.tf as mctf  # noqa: F401
        from matcompress.tf import ops

        ops.load_library()
    except Exception:  # noqa: BLE001 - no TensorFlow, or no op library in this build
        return False
    return True


def _peers_present():
    present = {}
    for mod in ("spams", "faiss"):
        try:
            __import__(mod)
            present[mod] = True
        except Exception:  # noqa: BLE001
            present[mod] = False
    return present


@pytest.fixture(scope="module")
def tiny():
    """One tiny run of every case with the peers this environment has (memory measured)."""
    return compare.run("tiny", memory=True)


@pytest.fixture(scope="module")
def no_peers():
    """A tiny run with spams, faiss and tensorflow made unimportable (as if not installed)."""
    mp = pytest.MonkeyPatch()
    for mod in ("spams", "faiss", "tensorflow"):
        mp.setitem(sys.modules, mod, None)  # `import mod` now raises ImportError
    try:
        yield compare.run("tiny", groups=("omp", "dictionary", "kmeans_1d", "blocks",
                                          "train_step"), memory=False)
    finally:
        mp.undo()


def _table_rows(result):
    """The body rows of the rendered table, split into cells, in record order."""
    lines = compare.format_table(result).splitlines()[2:]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]


def test_every_case_is_in_the_table(tiny):
    peers = _peers_present()
    by_group = {g: [r for r in tiny.records if r.group == g] for g in GROUPS}
    assert set(tiny.groups) == set(GROUPS)
    assert not tiny.failed, tiny.notes
    for g, rows in by_group.items():
        assert rows, f"no row for {g}"
        expected = TINY_ROWS[g]
        if g == "train_step" and not _tf_usable():
            expected = 1  # one skipped row
        if g in ("omp", "dictionary") and not peers["spams"]:
            expected = {"omp": 9, "dictionary": 4}[g]  # skipped SPAMS rows stand in
        if g in ("kmeans_1d", "blocks", "additive") and not peers["faiss"]:
            expected = {"kmeans_1d": 4, "blocks": 4, "additive": 1}[g]
        assert len(rows) == expected, (g, [(r.case, r.peer) for r in rows])
    cases = {r.case for r in tiny.records}
    for label in ("OMP a", "OMP b", "OMP c", "dictionary learning, 8x8 patches",
                  "1-D k-means, k=8", "1-D k-means, k=16", "block k-means 500k x 4, k=256",
                  "block k-means 100k x 16, k=1024", "additive quantization 64²",
                  "factored GEMV 4096², 4-bit codebook",
                  "factored product, batch 32", "CompressedDense train step"):
        assert any(c.startswith(label) for c in cases), (label, cases)
    rows = _table_rows(tiny)
    assert len(rows) == len(tiny.records)
    assert all(len(row) == 13 for row in rows)
    for row, rec in zip(rows, tiny.records):
        assert row[0] == rec.case and row[3] == rec.peer


def test_ratios_come_from_the_recorded_times(tiny):
    measured = [r for r in tiny.records if r.measured]
    assert len(measured) >= 20
    for r, row in zip(tiny.records, _table_rows(tiny)):
        if not r.measured:
            assert row[8] == "-"
            continue
        per_item_ours = r.mc_seconds / r.mc_work
        per_item_peer = r.peer_seconds / r.peer_work
        speedup = per_item_peer / per_item_ours
        assert r.speedup == pytest.approx(speedup, rel=1e-12)
        expected = speedup if TARGETS[r.target].higher else per_item_ours / per_item_peer
        assert r.ratio == pytest.approx(expected, rel=1e-12)
        assert row[8] == compare._fmt_ratio(r)
        number = float(row[8].lstrip("< ").split("x")[0])
        assert number == pytest.approx(expected, rel=0.01, abs=0.006)
    # scikit-learn's OMP runs on a subset: its ratio is per signal
    sk = next(r for r in measured if r.target == "omp_sklearn")
    assert sk.peer_work < sk.mc_work


def test_met_follows_the_targets(tiny):
    seen = set()
    for r, row in zip(tiny.records, _table_rows(tiny)):
        if not r.measured:
            assert r.met is None and row[10].startswith("skipped")
            continue
        t = TARGETS[r.target]
        ratio_ok = r.ratio >= t.value if t.higher else r.ratio <= t.value
        assert r.met == (ratio_ok and not r.bound and r.quality_ok is not False)
        assert row[10] == ("met" if r.met else "**missed**")
        seen.add(r.met)
    # the rule itself, on records whose figures are set by hand
    def rec(target, mc, peer, **kw):
        return Record(group="x", case="x", size="x", ours="x", peer="x", target=target,
                      mc_seconds=mc, peer_seconds=peer, **kw)

    assert rec("omp_spams", 1.0, 2.0).met  # exactly 2x faster: met
    assert not rec("omp_spams", 1.0, 1.99).met
    assert rec("omp_gemm", 3.0, 1.0).met  # exactly 3x its time: met
    assert not rec("omp_gemm", 3.01, 1.0).met
    assert not rec("omp_spams", 1.0, 5.0, quality_ok=False).met  # fast but worse: missed
    assert not rec("dl_sklearn", 1.0, 100.0, bound=True).met  # never reached its error
    assert rec("omp_sklearn", 1.0, 1.0, mc_work=100, peer_work=1).met  # 100x per item
    assert rec("omp_sklearn", 1.0, 1.0).met is False
    assert rec("omp_sklearn", None, 1.0).met is None


def test_missing_peers_are_notes_and_skipped_rows(no_peers):
    assert not no_peers.failed, no_peers.notes
    notes = "\n".join(no_peers.notes)
    for what in ("spams not importable", "faiss not importable", "tensorflow not importable"):
        assert what in notes, notes
    skipped = {r.peer.split(" (")[0]: r.skipped for r in no_peers.records if r.skipped}
    assert skipped["SPAMS omp"] == "spams not importable"
    assert skipped["SPAMS trainDL"] == "spams not importable"
    assert skipped["faiss Kmeans"] == "faiss not importable"
    assert skipped["keras Dense"] == "tensorflow not importable"
    assert [r for r in no_peers.records if r.group == "blocks"]
    assert all(r.skipped for r in no_peers.records if r.group == "blocks")
    # the peers that are there still ran
    assert any(r.measured and r.target == "omp_sklearn" for r in no_peers.records)
    assert any(r.measured and r.target == "dl_sklearn" for r in no_peers.records)
    assert any(r.measured and r.group == "kmeans_1d" for r in no_peers.records)
    text = compare.format_report(no_peers, "matcompress bench --tiny", header="- header")
    assert "skipped: spams not importable" in text
    assert "skipped: faiss not importable" in text
    assert "skipped: tensorflow not importable" in text
    assert "indicative only" in text


def test_peak_memory_is_measured_per_case(tiny):
    keys = {r.memory_key for r in tiny.records if r.memory_key}
    assert keys and keys <= set(tiny.memory)
    for key in keys:
        m = tiny.memory[key]
        assert "error" not in m, (key, m)
        assert m["in_bytes"] > 0 and m["out_bytes"] > 0
        assert m["extra"] == m["peak_after"] - m["before"]
        assert m["ratio"] == pytest.approx(m["extra"] / (m["in_bytes"] + m["out_bytes"]))
    assert "clear_refs" in tiny.memory_how or "VmHWM" in tiny.memory_how
    cells = [row[11] for row in _table_rows(tiny)]
    assert any("x in+out" in c for c in cells)


RESULTS = """# Benchmark results

Intro text.

```sh
## not a heading: inside a code fence
python bench/omp.py
```

## OMP

OMP figures.

## Comparison: `matcompress bench`

old figures
### an old subsection

## Dictionary learning

DL figures.
"""


def test_section_replacement_leaves_other_sections():
    new = "## Comparison: `matcompress bench`\n\nnew table\n\n### notes\n\n- a note\n"
    out = compare.replace_section(RESULTS, new)
    assert "old figures" not in out and "an old subsection" not in out
    assert "new table" in out and "- a note" in out
    before, after = RESULTS.split("## Comparison")[0], RESULTS.split("## Dictionary")[1]
    assert out.startswith(before)
    assert out.endswith("## Dictionary" + after)
    assert out.count("## Comparison: `matcompress bench`") == 1
    assert compare.replace_section(out, new) == out  # idempotent
    # created when absent: appended, the rest untouched
    plain = RESULTS.replace("## Comparison: `matcompress bench`\n\nold figures\n"
                            "### an old subsection\n\n", "")
    added = compare.replace_section(plain, new)
    assert added.startswith(plain.rstrip("\n")) and added.endswith(new)
    assert compare.replace_section("", new) == new
    # the last section of a file
    last = "# R\n\n## Comparison: `matcompress bench`\n\nold\n"
    assert compare.replace_section(last, new) == "# R\n\n" + new


def test_main_writes_markdown_results_and_png(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(RESULTS)
    md, png = tmp_path / "bench.md", tmp_path / "bench.png"
    status = compare.main(["--tiny", "--cases", "gemv", "--markdown", str(md), "--results",
                           str(results), "--png", str(png)], prog="matcompress bench")
    assert status == 0
    section = md.read_text()
    assert section.startswith("## Comparison: `matcompress bench`\n")
    assert "- command: `matcompress bench --tiny --cases gemv" in section
    assert "factored GEMV" in section and "CPU:" in section
    text = results.read_text()
    assert section in text and "old figures" not in text
    assert "DL figures." in text and "OMP figures." in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare.main(["--cases", "nope"]) == 2
    assert compare.main(["--png", str(tmp_path / "missing" / "x.png")]) == 2


def test_plot_and_summary_from_records(tmp_path):
    recs = [Record(group="omp", case="OMP a", size="-", ours="sparse_encode", peer="SPAMS",
                   target="omp_spams", mc_seconds=1.0, peer_seconds=3.0),
            Record(group="omp", case="OMP a", size="-", ours="sparse_encode", peer="GEMM",
                   target="omp_gemm", mc_seconds=4.0, peer_seconds=1.0),
            Record(group="gemv", case="GEMV", size="-", ours="matmul", peer="dense",
                   target="gemv", skipped="no reason")]
    res = Result(mode="quick", threads=2, groups=GROUPS, records=recs, memory={}, notes=[])
    line = compare.summary_line(res)
    assert line.startswith("targets met in 1 of 2 measured rows; missed: OMP a")
    assert "4.00x its time" in line and "1 row skipped" in line
    path = compare.plot_ratios(res, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 1000 and path.endswith("r.png")
    assert not math.isnan(recs[1].speedup) and recs[1].speedup == pytest.approx(0.25)


def test_a_failing_case_group_is_recorded_and_the_run_goes_on(monkeypatch, tmp_path):
    def broken(ctx):
        raise RuntimeError("simulated | failure")

    monkeypatch.setitem(compare.RUNNERS, "factored", broken)
    res = compare.run("tiny", groups=("gemv", "factored"), memory=False)
    assert res.failed == ["factored"]
    assert any(r.measured for r in res.records if r.group == "gemv")
    failed = [r for r in res.records if r.group == "factored"]
    assert len(failed) == 1 and failed[0].skipped.startswith("FAILED: RuntimeError")
    assert any("factored: FAILED" in n for n in res.notes)
    assert "simulated \\| failure" in compare.format_table(res)
    md = tmp_path / "out.md"
    assert compare.main(["--tiny", "--no-memory", "--cases", "gemv,factored", "--markdown",
                         str(md)]) == 1
    assert "FAILED" in md.read_text()  # the report is still written
