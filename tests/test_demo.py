"""The ``matcompress sparse-demo`` command: its dictionary-learning step and the atom image.

One quick demo runs through the command-line entry point (module fixture, about 10 s on 2 cores);
the other tests check the image layout, the options and the error paths on small inputs.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

pytest.importorskip("sklearn")
Image = pytest.importorskip("PIL.Image")

from matcompress import cli, demo  # noqa: E402  (after the optional-dependency checks)

LEARNING_ROWS = (
    "overcomplete 2-D DCT (fixed)",
    "initial: 256 random patches",
    "scikit-learn, alpha=1 (default)",
    f"scikit-learn, alpha={demo.SKLEARN_ALPHA:g}",
    "matcompress, online",
    f"matcompress, online, {demo.LONG_FACTOR}x epochs",
)
# 256 atoms: a 16 x 16 grid of 8*4-pixel tiles with 2-pixel gaps per panel, two panels 24 pixels
# apart, 12-pixel margins and a 24-pixel label row.
GRID = 16 * 32 + 15 * 2
PNG_SIZE = (2 * 12 + 2 * GRID + 24, 2 * 12 + 24 + GRID)


def parse_learning_table(output):
    """{row name: (epochs, seconds, train error, held-out error, speed-up)}, None for '-'."""
    rows = {}
    for line in output.splitlines():
        for name in LEARNING_ROWS:
            if line.startswith(name + " "):
                cells = line[len(name):].split()
                assert len(cells) == 5, line
                rows[name] = tuple(None if c == "-" else float(c.rstrip("x")) for c in cells)
    return rows


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run ``matcompress sparse-demo --quick --png <tmp>/atoms.png`` once: (status, stdout, png path)."""
    png = tmp_path_factory.mktemp("demo") / "atoms.png"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["sparse-demo", "--quick", "--png", str(png)])
    assert err.getvalue() == ""
    return status, out.getvalue(), png


def test_quick_demo_prints_dictionary_learning(quick_run):
    status, output, png = quick_run
    assert status == 0
    assert "and dictionary learning on 8x8 image patches" in output
    assert (f"256 atoms from {demo.QUICK_LEARN_PATCHES:,} of the patches "
            f"({10_000 - demo.QUICK_LEARN_PATCHES:,} held out), 1 epoch") in output
    assert "(quick run: the full demo learns from 20,000 patches for 3 epochs)" in output
    assert "dictionary learning: 256 atoms, 8 nonzeros per patch" in output
    assert "learned vs the fixed DCT dictionary" in output
    assert "matcompress vs scikit-learn (alpha=0.1): learned " in output
    assert f"atoms image: wrote {os.path.abspath(png)}" in output
    rows = parse_learning_table(output)
    assert set(rows) == set(LEARNING_ROWS)
    for name in LEARNING_ROWS[2:]:
        epochs, seconds, _, _, speedup = rows[name]
        factor = demo.LONG_FACTOR if name == LEARNING_ROWS[-1] else 1
        assert epochs == factor * demo.QUICK_EPOCHS and seconds > 0 and speedup > 0
    # More epochs: a lower training error than the same-epochs run.
    assert rows[LEARNING_ROWS[-1]][2] < rows["matcompress, online"][2]
    assert "with 10x the epochs (default mini-batches), still " in output
    assert rows[f"scikit-learn, alpha={demo.SKLEARN_ALPHA:g}"][4] == 1.0  # the reference
    for name in LEARNING_ROWS[:2]:
        assert rows[name][0] is None and rows[name][1] is None and rows[name][4] is None


def test_quick_demo_learned_dictionaries_beat_dct(quick_run):
    _, output, _ = quick_run
    rows = parse_learning_table(output)
    _, _, dct_train, dct_held, _ = rows["overcomplete 2-D DCT (fixed)"]
    for name in ("matcompress, online", f"scikit-learn, alpha={demo.SKLEARN_ALPHA:g}"):
        _, _, train, held, _ = rows[name]
        assert 0 < train < 0.95 * dct_train, name  # clearly lower on the training patches
        assert 0 < held < dct_held, name  # and lower on the held-out ones
    # The printed summary says "lower" for both learned dictionaries on both sets.
    summary = [line for line in output.splitlines()
               if line.startswith(("  matcompress, online ", "  scikit-learn, alpha="))]
    assert len(summary) == 2
    assert all(line.count("lower") == 2 and "higher" not in line for line in summary)


def test_quick_demo_writes_the_atom_png(quick_run):
    _, _, png = quick_run
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == PNG_SIZE
        assert image.mode == "L"
        pixels = np.asarray(image)
    assert (pixels[:12] == 255).all() and (pixels[-12:] == 255).all()  # margins
    assert (pixels[:, :12] == 255).all() and (pixels[:, -12:] == 255).all()
    assert (pixels[12:36] < 128).any()  # the label row holds dark text
    middle = 12 + GRID + 12  # centre of the white strip between the two panels
    assert (pixels[36:, middle] == 255).all()
    for left in (12, 12 + GRID + 24):  # the first and the last tile of each panel
        for y, x in ((36, left), (36 + 15 * 34, left + 15 * 34)):
            tile = pixels[y:y + 32, x:x + 32]
            assert tile.min() == 0 and tile.max() == 255  # each atom scaled to its own range
            blocks = tile.reshape(8, 4, 8, 4)  # upscaled 4x: constant 4x4 blocks
            assert (blocks == blocks[:, :1, :, :1]).all()
        assert (pixels[36:36 + 32, left + 32:left + 34] == 255).all()  # gap between tiles


def test_help_documents_png(capsys):
    assert cli.main(["sparse-demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--png PATH" in text
    assert "matcompress-atoms.png in the current directory" in text
    assert "MiniBatchDictionaryLearning" in text


def test_cli_passes_png_and_quick_learning_settings(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: calls.append(kwargs))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sparse-demo", "--quick"]) == 0
    assert cli.main(["sparse-demo", "--png", "out.png"]) == 0
    quick, full = calls
    assert quick["png"] == demo.DEFAULT_PNG == "matcompress-atoms.png"
    assert (quick["n_learn"], quick["epochs"]) == (demo.QUICK_LEARN_PATCHES, demo.QUICK_EPOCHS)
    assert full["png"] == "out.png"
    assert (full["n_learn"], full["epochs"]) == (demo.DEFAULT_LEARN_PATCHES, demo.DEFAULT_EPOCHS)


@pytest.mark.parametrize("where", ["missing-dir", "is-a-dir", "empty"])
def test_cli_rejects_bad_png_path_before_running(where, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: pytest.fail("the demo ran"))
    path = {"missing-dir": str(tmp_path / "missing" / "atoms.png"), "is-a-dir": str(tmp_path),
            "empty": ""}[where]
    assert cli.main(["sparse-demo", "--quick", "--png", path]) == 2
    assert "argument --png:" in capsys.readouterr().err


def test_cli_unwritable_png_exits_1(monkeypatch, capsys):
    def fail(**kwargs):
        raise demo.DemoOutputError("cannot write the atoms image 'x.png': permission denied")

    monkeypatch.setattr(demo, "run_demo", fail)
    assert cli.main(["sparse-demo", "--quick"]) == 1
    assert "matcompress: error: cannot write the atoms image" in capsys.readouterr().err


def test_run_demo_reports_before_failing_to_write(tmp_path):
    out = io.StringIO()
    with pytest.raises(demo.DemoOutputError, match="cannot write the atoms image"):
        # A directory is not a writable file; 300 training patches keep this small.
        demo.run_demo(n_patches=600, n_compare=50, n_learn=300, epochs=1, repeats=1,
                      png=tmp_path, file=out)
    text = out.getvalue()
    assert "matcompress, online" in text and "atoms image: could not write" in text


def test_run_demo_learning_results_without_png(tmp_path):
    out = io.StringIO()
    results = demo.run_demo(n_patches=600, n_compare=50, n_learn=600, epochs=1, repeats=1,
                            file=out)
    learning = results["learning"]
    assert learning["png"] is None and list(tmp_path.iterdir()) == []
    assert (learning["n_train"], learning["n_heldout"]) == (600, 0)
    assert [row["method"] for row in learning["rows"]] == list(LEARNING_ROWS)
    assert all(row["heldout_error"] is None for row in learning["rows"])
    for name, atoms in learning["dictionaries"].items():
        assert atoms.shape == (256, 64) and atoms.dtype == np.float32, name
        np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0, rtol=1e-5)
    assert "(none held out)" in out.getvalue()
    assert "on the training patches" in out.getvalue()


def test_run_demo_skips_learning_with_too_few_patches(tmp_path):
    out = io.StringIO()
    png = tmp_path / "atoms.png"
    results = demo.run_demo(n_patches=200, n_compare=50, repeats=1, png=png, file=out)
    assert results["learning"] is None
    assert not png.exists()
    assert "learning    skipped: learning 256 atoms needs at least 256 training patches, " \
           "got 200" in out.getvalue()
    assert "dictionary learning:" not in out.getvalue()


def test_atoms_image_layout():
    rng = np.random.default_rng(0)
    left = rng.standard_normal((64, 64))
    right = rng.standard_normal((64, 64))
    right[5] = 3.0  # a constant atom: mid-gray
    image = demo.atoms_image([left, right], ["left", "right"])
    grid = 8 * 32 + 7 * 2  # 64 atoms: 8 x 8 tiles, 4x upscaled
    assert image.mode == "L" and image.size == (2 * 12 + 2 * grid + 24, 2 * 12 + 24 + grid)
    pixels = np.asarray(image)
    x0 = 12 + grid + 24 + 5 * 34  # atom 5 of the right panel: row 0, column 5
    assert (pixels[36:68, x0:x0 + 32] == 128).all()
    expected = np.rint(255 * (left[9] - left[9].min()) / np.ptp(left[9])).reshape(8, 8)
    tile = pixels[36 + 34:36 + 34 + 32, 12 + 34:12 + 34 + 32]  # atom 9: row 1, column 1
    np.testing.assert_array_equal(tile[::4, ::4], expected)
    unlabelled = demo.atoms_image([left], scale=1)
    assert unlabelled.size == (2 * 12 + 8 * 8 + 7 * 2,) * 2


@pytest.mark.parametrize("bad, message", [
    ([], "at least one"),
    ([np.zeros((4, 63))], "shape"),
    ([np.zeros((4, 64)), np.zeros((5, 64))], "differ in shape"),
])
def test_atoms_image_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        demo.atoms_image(bad)


def test_atoms_image_label_count_must_match():
    with pytest.raises(ValueError, match="1 labels for 2 dictionaries"):
        demo.atoms_image([np.ones((4, 64)), np.ones((4, 64))], ["only one"])
