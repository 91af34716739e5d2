"""bench/new_forms.py (matcompress.benchmark.new_forms): the new forms' accuracy against bytes
and train-step benchmark. One run of its tiny mode (four eager steps on 128 digits, tiny
layers), whose rows and report are checked: every form and ratio present, ratios computed from
the recorded bytes and times, verdicts from the ratios; and the report's pieces on made-up
rows."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("sklearn")

from matcompress.benchmark import new_forms as nf  # noqa: E402
from matcompress.benchmark.compare import replace_section  # noqa: E402
from matcompress.benchmark.harness import write_report  # noqa: E402

TASKS = ("digits MLP", "digits CNN")


def _expected_methods(task, finetune=1):
    methods = ["dense", f"dense+{finetune}"] + list(nf.BASELINES)
    methods += [m for m in nf.FORMS if m != "rank_reduced" or task == "digits CNN"]
    return methods


@pytest.fixture(scope="module")
def tiny():
    result = nf.run("tiny", seed=0)
    return result, nf.format_report(result, "python bench/new_forms.py --tiny")


def _table_rows(report, heading):
    """The body rows (lists of cells) of the markdown table after the line `heading`."""
    lines = report.splitlines()
    i = lines.index(heading) + 2  # a blank line, then the header
    out = []
    for line in lines[i + 2:]:  # past the header and the |---| rule
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_every_form_and_ratio_has_a_row(tiny):
    result, _ = tiny
    ratios = nf.MODES["tiny"]["ratios"]
    for task in TASKS:
        got = {(r["method"], r["ratio"]) for r in result["rows"] if r["task"] == task}
        want = {(m, 1) for m in ("dense", "dense+1")}
        want |= {(m, r) for m in _expected_methods(task)[2:] for r in ratios}
        assert got == want
        # the tiny layers reach every asked ratio: no row is "unreachable"
        assert all(r.get("score") is not None for r in result["rows"] if r["task"] == task)


def test_achieved_ratios_come_from_the_recorded_bytes(tiny):
    result, _ = tiny
    for r in result["rows"]:
        assert r["achieved"] == pytest.approx(r["dense_matrix_bytes"] / r["matrix_bytes"],
                                              rel=1e-12)
        if r["method"].startswith("dense"):
            assert r["matrix_bytes"] == r["dense_matrix_bytes"]
        elif r["method"] != "gradual_pruning":
            # ratio targeting: stored bytes <= dense bytes / asked ratio (k-means may store
            # fewer, never more)
            assert r["matrix_bytes"] <= r["dense_matrix_bytes"] / r["ratio"] * (1 + 1e-9)
        # the compressed matrices: the MLP's 64 x 256 and 256 x 256 kernels; the CNN's
        # 144 x 32 convolution view and 512 x 256 Dense kernel (gradual pruning: Dense only)
        dense = {"digits MLP": 4 * (64 * 256 + 256 * 256),
                 "digits CNN": 4 * (144 * 32 + 512 * 256)}[r["task"]]
        if r["method"] == "gradual_pruning" and r["task"] == "digits CNN":
            dense = 4 * 512 * 256
        assert r["dense_matrix_bytes"] == dense


def test_gradual_pruning_bytes_are_the_csr_of_the_kept_weights(tiny):
    """Independent count: sparsity 1 - 1/R prunes floor(s * size) weights per kernel; the CSR
    stores a float32 value and a uint8 column index (256 columns) per kept weight, plus the
    row pointers."""
    result, _ = tiny
    (row,) = [r for r in result["rows"]
              if r["task"] == "digits MLP" and r["method"] == "gradual_pruning"]
    s = 1.0 - 1.0 / row["ratio"]
    kept = sum(size - int(s * size) for size in (64 * 256, 256 * 256))
    assert 5 * kept < row["matrix_bytes"] <= 5 * kept + 4 * (65 + 257)


def test_report_tables_list_every_row_and_recompute_to_the_same_ratios(tiny):
    result, report = tiny
    for task in TASKS:
        body = _table_rows(report, f"**{task}: every row**")
        assert [(b[0], b[1]) for b in body] == [
            (r["method"], "-" if r["method"].startswith("dense") else f"{r['ratio']}x")
            for r in result["rows"] if r["task"] == task]
        for b in body:
            assert b[2] != "-", b  # every tiny row is reachable
            matrix, dense = int(b[2].replace(",", "")), int(b[3].replace(",", ""))
            assert b[4] == f"{dense / matrix:.2f}x"
        pivot = _table_rows(report, f"**{task}: accuracy % (achieved ratio) per asked ratio**")
        names = [p[0].replace(" (new)", "") for p in pivot]
        assert sorted(names) == sorted(_expected_methods(task)[2:])
        for p in pivot:
            m = re.fullmatch(r"([\d.]+) \(([\d.]+)x\)", p[1])
            assert m, p


def test_step_rows_cover_every_new_form_with_ratios_from_their_times(tiny):
    result, report = tiny
    steps = result["steps"]
    forms = {s["form"] for s in steps}
    assert forms == {"block", "mixed_block", "input_output", "gradual_pruning", "rank_reduced"}
    assert {s["route"] for s in steps if s["form"] == "gradual_pruning"} == {
        "PruningKernel, between updates", "PruningKernel, update step"}
    for s in steps:
        assert s["seconds"] > 0 and s["reference"] > 0
        assert s["vs_dense"] == pytest.approx(s["seconds"] / s["reference"], rel=1e-12)
    verdicts = nf.step_verdicts(steps)
    for form, case, ratio, ok in verdicts:
        line = f"- {form}, {case}: {ratio:.2f}x: " + ("met" if ok else "**missed**")
        assert line in report
        assert ok == (ratio <= nf.STEP_TARGET)
    assert f"{sum(v[3] for v in verdicts)} of {len(verdicts)} step targets met." in report


def _made_up():
    rows = []
    for method, score, matrix in (("dense", 98.0, 4096), ("dense+1", 98.5, 4096),
                                  ("block", 97.0, 1024), ("kmeans", 98.0, 500)):
        rows.append(dict(task="digits MLP", method=method, ratio=1 if "dense" in method else 4,
                         score=score, bytes=9000, matrix_bytes=matrix,
                         dense_matrix_bytes=4096, achieved=4096 / matrix, time=1.0))
    rows.append(dict(task="digits MLP", method="block", ratio=8, score=None,
                     note="block: compression_ratio=8 cannot be reached; best 6.0"))
    case = "Dense 8 x 8, batch 2, 4x"
    base = dict(case=case, ratio=4, reference=1e-3, reference_name="keras Dense", bytes=10,
                load=0.0, reference_load=0.0)
    steps = [dict(base, route="CompressedDense, block", form="block", seconds=2e-3,
                  vs_dense=2.0),
             dict(base, route="PruningKernel, between updates", form="gradual_pruning",
                  seconds=1.2e-3, vs_dense=1.2),
             dict(base, route="PruningKernel, update step", form="gradual_pruning",
                  seconds=5.2e-3, vs_dense=5.2)]
    return dict(mode="quick", seed=0, rows=rows, steps=steps, step_notes=[],
                accuracy_seconds=1.0, step_seconds=1.0, elapsed=2.0)


def test_pivot_and_verdicts_on_made_up_rows():
    result = _made_up()
    pivot = nf.accuracy_pivot(result["rows"], "digits MLP", (4, 8))
    assert "| block (new) | 97.0 (4.0x) | unreachable |" in re.sub(r" +", " ", pivot)
    assert "| kmeans | 98.0 (8.2x) | - |" in re.sub(r" +", " ", pivot)
    verdicts = {v[0]: (v[2], v[3])
                for v in nf.step_verdicts(result["steps"], update_every=(10, 40))}
    assert verdicts["block"] == (2.0, False)
    assert verdicts["gradual_pruning (between updates)"] == (1.2, True)
    # (9 x 1.2 ms + 5.2 ms) / (10 x 1 ms) = 1.6
    ratio, ok = verdicts["gradual_pruning (one update every 10 steps)"]
    assert ratio == pytest.approx(1.6) and not ok
    # (39 x 1.2 ms + 5.2 ms) / (40 x 1 ms) = 1.3
    ratio, ok = verdicts["gradual_pruning (one update every 40 steps)"]
    assert ratio == pytest.approx(1.3) and ok
    assert len(verdicts) == 4


def test_report_replaces_its_own_section(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Other\n\nkept\n", encoding="utf-8")
    section = nf.format_report(_made_up(), "python bench/new_forms.py --quick")
    assert section.startswith(nf.SECTION_TITLE + "\n")
    assert "Mode quick: figures indicative only" in section
    for _ in range(2):
        write_report(section, results=str(path), title=nf.SECTION_TITLE,
                     replace=replace_section)
    text = path.read_text(encoding="utf-8")
    assert text.count(nf.SECTION_TITLE) == 1 and "## Other\n\nkept\n" in text
    capsys.readouterr()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        nf.run("huge")
    assert nf.main(["--quick", "--tiny"]) == 2
    assert nf.main(["--no-such-flag"]) == 2
