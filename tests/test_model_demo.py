"""The ``matcompress demo`` command (python/matcompress/tf/demo.py): its data, its table and
target checks, and one quick run end to end (the digits MLP, every compressor at 4x and 8x)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from matcompress import cli  # noqa: E402
from matcompress.tf import demo  # noqa: E402


def test_corpus_is_the_stdlib_language_reference_in_word_ids():
    words = demo.corpus_words()
    assert len(words) > 50_000 and "function" in words and "class" in words
    Xtr, Ytr, Xte, Yte, vocab = demo.corpus_data(vocab=500, seq_len=10)
    assert vocab == 500 and Xtr.shape[1] == 10 and Xtr.shape == Ytr.shape
    assert Xte.shape[0] == pytest.approx(0.1 * (Xtr.shape[0] + Xte.shape[0]), abs=1)
    assert Xtr.min() >= 0 and max(Xtr.max(), Xte.max()) < vocab
    assert np.array_equal(Ytr[:, :-1], Xtr[:, 1:])  # targets: the next word
    assert np.array_equal(Ytr[:-1, -1], Xtr[1:, 0])
    # 0 is <unk>: the rare words; the most frequent word has id 1
    ids = {w: i for i, w in enumerate(words)}
    assert (Xtr == 0).mean() > 0.01 and (Xtr == 1).mean() > (Xtr == 2).mean() > 0
    assert ids  # deterministic: same arrays twice
    again = demo.corpus_data(vocab=500, seq_len=10)
    assert np.array_equal(again[0], Xtr) and np.array_equal(again[3], Yte)


def test_digits_split():
    Xtr, ytr, Xte, yte = demo.digits_data(seed=3)
    assert Xtr.shape == (1347, 64) and Xte.shape == (450, 64)
    assert Xtr.dtype == np.float32 and 0 <= Xtr.min() and Xtr.max() <= 1
    assert set(np.unique(ytr)) == set(range(10))


def _rows(mlp8, lstm4):
    rows = [{"task": "digits MLP", "method": "dense", "ratio": 1, "score": 97.0},
            {"task": "LSTM language model", "method": "dense", "ratio": 1, "score": 100.0}]
    for method, score in mlp8.items():
        rows.append({"task": "digits MLP", "method": method, "ratio": 8, "score": score})
    for method, score in lstm4.items():
        rows.append({"task": "LSTM language model", "method": method, "ratio": 4,
                     "score": score})
    return rows


def test_targets_are_checked_per_method():
    lines = demo.check_targets(_rows({"kmeans": 96.1, "low_rank": 95.9, "simhash": None},
                                     {"kmeans": 104.9, "pruning": 105.2}))
    assert "digits MLP at 8x, kmeans: within 1 point of dense accuracy: met" in lines
    assert "digits MLP at 8x, low_rank: within 1 point of dense accuracy: missed" in lines
    assert "digits MLP at 8x, simhash: within 1 point of dense accuracy: unreachable" in lines
    assert "LSTM language model at 4x, kmeans: within 5 % of dense perplexity: met" in lines
    assert "LSTM language model at 4x, pruning: within 5 % of dense perplexity: missed" in lines


def test_table_lists_every_row_with_its_change():
    rows = [{"task": "digits MLP", "method": "dense", "ratio": 1, "score": 97.0,
             "bytes": 2048, "achieved": 1.0, "time": 1.0},
            {"task": "digits MLP", "method": "kmeans", "ratio": 8, "score": 96.5,
             "bytes": 512, "achieved": 15.8, "time": 2.0},
            {"task": "digits MLP", "method": "simhash", "ratio": 16, "score": None,
             "note": "simhash: compression_ratio=16 cannot be reached"}]
    table = demo.format_table(rows)
    assert "-0.5 pt" in table and "15.8x" in table and "unreachable" in table


def test_cli_demo_help_and_bad_png(tmp_path, capsys):
    assert cli.main(["demo", "--help"]) == 0
    assert "LSTM language model" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["demo", "--quick", "--png", str(tmp_path / "no" / "such" / "x.png")]) == 1
    assert "cannot write the plot" in capsys.readouterr().err


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    png = tmp_path / "models.png"
    assert cli.main(["demo", "--quick", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in demo.METHODS:
        assert f"digits MLP at 8x, {method}:" in out
    # The k-means codebook keeps the MLP's accuracy at 8x (the target).
    assert "digits MLP at 8x, kmeans: within 1 point of dense accuracy: met" in out
    table = [line for line in out.splitlines()
             if line.startswith("digits MLP ") and " at 8x" not in line and " at 4x" not in line]
    n_search = sum(len(r) for r in demo.QUICK_SEARCHES.values())
    # dense, dense+4, the methods at 4x and 8x, the searches (auto, auto+X)
    assert len(table) == 2 + 2 * len(demo.METHODS) + n_search
    for method in demo.QUICK_SEARCHES:
        assert f"digits MLP at 8x, {method}:" in out
