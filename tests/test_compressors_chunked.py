"""The compressors' path for large matrices: k-means (scalar and block) and dictionary learning
fitted to a sample of rows, then every row coded chunk by chunk (``max_fit_points`` /
``max_fit_rows``, ``chunk_rows``), on memory-mapped ``.npy`` input.

References: a brute-force nearest codebook entry in float64 (numpy broadcasting) for every
point, and ``mc.sparse_encode`` of the whole matrix on the returned dictionary (Batch-OMP on
the same atoms: the same atoms chosen, values within 1e-5 of the largest, float32 sums in
another order).
"""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import matcompress as mc
from matcompress.compressors import DictionaryCompressor, KMeansCompressor


@pytest.fixture
def table(tmp_path):
    """A 1,000 x 16 float32 table on disk, opened read-only through a memory map."""
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((1000, 16)) * rng.uniform(0.5, 2.0, (1000, 1))).astype(np.float32)
    path = tmp_path / "table.npy"
    np.save(path, A)
    return A, np.load(path, mmap_mode="r")


def nearest(points, codebook):
    d = ((points[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2)
    return d.sum(-1).argmin(1)


@pytest.mark.parametrize("n_codes, block_size", [(16, 1), (200, 1), (256, 2), (16, 4)])
def test_kmeans_sample_then_chunks(table, n_codes, block_size):
    A, mapped = table
    c = KMeansCompressor(n_codes=n_codes, block_size=block_size, max_fit_points=1500,
                         chunk_rows=37, random_state=0)
    f = c.compress(mapped)
    assert f.packed == (n_codes <= 16)
    codebook = f.codebook.reshape(n_codes, block_size)
    points = A.reshape(-1, block_size).astype(np.float64)
    chosen = f.to_dense().reshape(-1, block_size).astype(np.float64)
    best = codebook[nearest(points, codebook)].astype(np.float64)
    d_chosen = ((points - chosen) ** 2).sum(1)
    d_best = ((points - best) ** 2).sum(1)
    # the nearest entry, but for near-ties the float32 distance kernel may break otherwise
    tie = 1e-5 * (points ** 2).sum(1).max()
    assert np.all(d_chosen <= d_best + tie)
    assert np.mean(d_chosen == d_best) > 0.999
    # the codebook comes from the sample: equal to fitting those rows alone
    again = c.compress(A)  # an in-memory array takes the same path, same seed
    assert again == f
    # not the whole-matrix fit (which max_fit_points would allow at 16,000)
    whole = KMeansCompressor(n_codes=n_codes, block_size=block_size,
                             random_state=0).compress(A)
    assert not np.array_equal(whole.codebook, f.codebook)
    err = np.linalg.norm(f.to_dense() - A) / np.linalg.norm(A)
    err_whole = np.linalg.norm(whole.to_dense() - A) / np.linalg.norm(A)
    # a 1,500-point sample of a 16,000-point matrix: close for 16 codes, within 2x for 200+
    # (fewer than 8 sample points a code)
    assert err <= (1.15 if n_codes <= 16 else 2.0) * err_whole


def test_kmeans_chunks_do_not_change_the_codes(table):
    A, mapped = table
    ref = KMeansCompressor(n_codes=16, max_fit_points=4000, random_state=3).compress(mapped)
    for rows in (1, 7, 1000, 5000):
        f = KMeansCompressor(n_codes=16, max_fit_points=4000, chunk_rows=rows,
                             random_state=3).compress(mapped)
        assert f == ref


def test_dictionary_sample_then_chunks(table):
    A, mapped = table
    c = DictionaryCompressor(n_atoms=24, n_nonzero_coefs=3, max_fit_rows=300, chunk_rows=41,
                             random_state=0)
    f = c.compress(mapped)
    assert f.indices.shape == (1000, 3) and f.indices.dtype == np.uint8
    assert np.all(np.diff(f.indices.astype(int), axis=1) > 0)  # atom order in each row
    codes = mc.sparse_encode(A, f.dictionary, n_nonzero_coefs=3)
    dense = np.zeros_like(codes)
    np.put_along_axis(dense, f.indices.astype(np.int64), f.values, axis=1)
    assert_array_equal(dense != 0, codes != 0)
    assert np.abs(dense - codes).max() <= 1e-5 * np.abs(codes).max()
    assert c.compress(A) == f
    # a dictionary learned from 300 rows codes the rest about as well as one from all rows
    whole = DictionaryCompressor(n_atoms=24, n_nonzero_coefs=3, random_state=0).compress(A)
    err = np.linalg.norm(f.to_dense() - A) / np.linalg.norm(A)
    err_whole = np.linalg.norm(whole.to_dense() - A) / np.linalg.norm(A)
    assert err <= 1.1 * err_whole


def test_progress_and_input_left_alone(table, capsys):
    A, mapped = table
    KMeansCompressor(n_codes=16, max_fit_points=2000, chunk_rows=100, verbose=True,
                     random_state=0).compress(mapped)
    DictionaryCompressor(n_atoms=8, n_nonzero_coefs=2, max_fit_rows=100, chunk_rows=100,
                         verbose=True, random_state=0).compress(mapped)
    err = capsys.readouterr().err
    assert "kmeans: coding: 1,000 of 1,000 rows (100 %)" in err
    assert "dictionary: coding: 1,000 of 1,000 rows (100 %)" in err
    assert_array_equal(np.asarray(mapped), A)


def test_bad_sample_sizes(table):
    A, _ = table
    with pytest.raises(ValueError, match="max_fit_points=10 leaves fewer points than "
                                         "n_codes=256"):
        KMeansCompressor(n_codes=256, block_size=2, max_fit_points=10).compress(A)
    with pytest.raises(ValueError, match="max_fit_rows=5 is below n_atoms=8"):
        DictionaryCompressor(n_atoms=8, n_nonzero_coefs=2, max_fit_rows=5).compress(A)
    with pytest.raises(ValueError, match="max_fit_points"):
        KMeansCompressor(n_codes=4, max_fit_points=0).compress(A)
    with pytest.raises(ValueError, match="chunk_rows"):
        KMeansCompressor(n_codes=4, max_fit_points=100, chunk_rows=0).compress(A)
