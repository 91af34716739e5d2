"""Data-aware compression: ``compress(A, X=X)`` minimizing the output error ``||X (A - A_hat)||``,
GPTQ (matcompress.gptq), the inputs' validation and second moment, and old-signature user
compressors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import matcompress as mc
from matcompress.compressors import (
    DictionaryCompressor,
    KMeansCompressor,
    LowRankCompressor,
    MatrixCompressor,
    PruningCompressor,
    SimhashCompressor,
    input_moments,
)
from matcompress.gptq import gptq_quantize, inverse_cholesky

DTYPES = [np.float32, np.float64]
BUILTINS = [
    ("low_rank", dict(rank=4)),
    ("dictionary", dict(n_atoms=8, n_nonzero_coefs=2)),
    ("kmeans", dict(n_codes=8)),
    ("kmeans", dict(n_codes=16, block_size=2)),
    ("simhash", dict(n_bits=32)),
    ("pruning", dict(sparsity=0.5)),
    ("pruning", dict(sparsity=0.5, n_codes=4)),
]


def output_error(X, A, A_hat):
    X = np.asarray(X, np.float64)
    return float(np.linalg.norm(X @ (np.asarray(A, np.float64) - A_hat)))


def anisotropic(seed, m=64, n=48, n_samples=256, w="iid", dtype=np.float64):
    """W (m, n) and X (n_samples, m) whose column scales span 100x (log-uniform in [0.1, 10]).
    ``w="inv"``: W's rows divided by their input's scale (every input matters alike)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.1), np.log(10), m))
    W = rng.standard_normal((m, n))
    if w == "inv":
        W /= scales[:, None]
    X = rng.standard_normal((n_samples, m)) * scales
    return W.astype(dtype), X.astype(dtype)


# --- GPTQ ----------------------------------------------------------------------------------------

def obs_reference(W, H, quantize, damp):
    """GPTQ by its definition, no Cholesky and no blocks: quantize row i, then the Optimal Brain
    Surgeon update of the free rows i+1.. from the inverse of H restricted to rows i.."""
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(H.shape[0])
    Wk = np.array(W, np.float64)
    Q = np.empty_like(Wk)
    for i in range(Wk.shape[0]):
        Q[i] = quantize(Wk[i])
        Hinv = np.linalg.inv(Hd[i:, i:])
        Wk[i + 1:] -= np.outer(Hinv[1:, 0] / Hinv[0, 0], Wk[i] - Q[i])
    return Q


def grid(step):
    return lambda row: np.round(row / step) * step


def wrap(quantize):
    return lambda rows, start: quantize(rows[0])[None, :]


def random_problem(rng, m, n, n_samples):
    X = rng.standard_normal((n_samples, m)) * rng.lognormal(0, 1, m)
    X[:, : m // 2] += rng.standard_normal((n_samples, 1))  # correlated inputs
    return rng.standard_normal((m, n)), X.T @ X / n_samples


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 6), n_samples=st.integers(1, 40),
       damp=st.sampled_from([0.01, 0.1, 1.0]), block=st.integers(1, 13),
       seed=st.integers(0, 2**32 - 1))
def test_gptq_matches_obs_reference(m, n, n_samples, damp, block, seed):
    W, H = random_problem(np.random.default_rng(seed), m, n, n_samples)
    Q = gptq_quantize(W, H, wrap(grid(0.5)), block_size=block, damp=damp)
    np.testing.assert_allclose(Q, obs_reference(W, H, grid(0.5), damp), rtol=0, atol=1e-9)


@pytest.mark.parametrize("m, n", [(40, 7), (130, 5)])
def test_gptq_blocked_equals_unblocked(m, n):
    W, H = random_problem(np.random.default_rng(m), m, n, 3 * m)
    ref = obs_reference(W, H, grid(0.25), 0.01)
    for block in (1, 3, 16, 128, 1000):
        Q = gptq_quantize(W, H, wrap(grid(0.25)), block_size=block)
        np.testing.assert_allclose(Q, ref, rtol=0, atol=1e-9)


def test_gptq_lowers_output_error_and_identity_quantizer():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((50, 20))
    X = rng.standard_normal((400, 4)) @ rng.standard_normal((4, 50)) \
        + 0.1 * rng.standard_normal((400, 50))  # strongly correlated inputs
    H = X.T @ X / 400
    Q = gptq_quantize(W, H, wrap(grid(0.5)))
    plain = grid(0.5)(W)

    def err(Qm):
        E = W - Qm
        return np.trace(E.T @ H @ E)

    assert err(Q) < 0.8 * err(plain)  # measured 0.25 (correlated inputs)
    np.testing.assert_allclose(gptq_quantize(W, H, lambda rows, start: rows), W, atol=1e-12)


def test_gptq_passes_start_and_one_row():
    W, H = random_problem(np.random.default_rng(2), 9, 4, 30)
    seen = []

    def q(rows, start):
        seen.append((start, rows.shape, rows.dtype))
        return rows * 0
    gptq_quantize(W.astype(np.float32), H, q, block_size=4)
    assert seen == [(i, (1, 4), np.float64) for i in range(9)]


def test_inverse_cholesky():
    W, H = random_problem(np.random.default_rng(3), 20, 1, 10)  # singular H
    U = inverse_cholesky(H, 0.05)
    Hd = H + 0.05 * np.mean(np.diag(H)) * np.eye(20)
    np.testing.assert_allclose(U.T @ U @ Hd, np.eye(20), atol=1e-8)
    assert np.allclose(U, np.triu(U))
    with pytest.raises(ValueError, match="damp"):
        inverse_cholesky(H, 0.0)
    np.testing.assert_array_equal(inverse_cholesky(np.zeros((3, 3))), np.eye(3))


def test_gptq_bad_input():
    W, H = random_problem(np.random.default_rng(4), 5, 3, 20)
    with pytest.raises(ValueError, match="H must have shape"):
        gptq_quantize(W, H[:4, :4], wrap(grid(1)))
    with pytest.raises(TypeError, match="quantize_rows"):
        gptq_quantize(W, H, None)
    with pytest.raises(ValueError, match="block_size"):
        gptq_quantize(W, H, wrap(grid(1)), block_size=0)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(W, H, wrap(grid(1)), damp=-1)
    with pytest.raises(ValueError, match="returned shape"):
        gptq_quantize(W, H, lambda rows, start: rows[0])


# --- the inputs' second moment -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_input_moments(dtype):
    X = (np.random.default_rng(5).standard_normal((103, 17)) * 3).astype(dtype)
    X64 = X.astype(np.float64)
    for chunk in (None, 1, 10, 200):
        H, d = input_moments(X, chunk_rows=chunk)
        assert H.dtype == np.float64 and H.shape == (17, 17)
        np.testing.assert_allclose(H, X64.T @ X64 / 103, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(H, H.T)
        np.testing.assert_allclose(d, np.mean(X64**2, axis=0), rtol=1e-12)
        none, d2 = input_moments(X, diagonal_only=True, chunk_rows=chunk)
        assert none is None
        np.testing.assert_allclose(d2, d, rtol=1e-12)


# --- data-aware against data-free ----------------------------------------------------------------

# (method, params, bound): the data-aware output error is at most bound times the data-free one
# on every seed and W below. Measured worst ratio over 10 seeds and both kinds of W (64 x 48, 256
# samples, input scales spanning 100x): kmeans 16 codes 0.92, 4 codes 0.96, "diagonal" 0.97,
# pairs "diagonal" 0.89, pairs (GPTQ) 0.86, low rank 0.96, dictionary 0.90, pruning 0.73,
# pruning with codes 0.76, simhash 0.98 (its scales are the exact optimum for the same signs:
# never above 1).
AWARE = [
    ("kmeans", dict(n_codes=16), 0.97),
    ("kmeans", dict(n_codes=4), 0.99),
    ("kmeans", dict(n_codes=16, data_aware="diagonal"), 0.99),
    ("kmeans", dict(n_codes=64, block_size=2, data_aware="diagonal"), 0.95),
    ("kmeans", dict(n_codes=64, block_size=2), 0.93),
    ("low_rank", dict(rank=8), 0.99),
    ("dictionary", dict(n_atoms=16, n_nonzero_coefs=3), 0.95),
    ("simhash", dict(n_bits=64), 1.0 + 1e-9),
    ("pruning", dict(sparsity=0.75), 0.8),
    ("pruning", dict(sparsity=0.5, n_codes=8), 0.85),
]


@pytest.mark.parametrize("method, params, bound", AWARE,
                         ids=[f"{a}-{'-'.join(map(str, b.values()))}" for a, b, _ in AWARE])
@pytest.mark.parametrize("w", ["iid", "inv"])
def test_data_aware_beats_data_free(method, params, bound, w):
    for seed in (0, 1):
        W, X = anisotropic(seed, w=w)
        free = mc.compress(W, method, random_state=seed, **params)
        aware = mc.compress(W, method, random_state=seed, X=X, **params)
        assert type(aware) is type(free) and aware.nbytes == free.nbytes
        ratio = output_error(X, W, aware.to_dense()) / output_error(X, W, free.to_dense())
        assert ratio <= bound, (seed, ratio)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method, params", BUILTINS)
def test_dtypes_and_inputs_not_modified(method, params, dtype):
    W, X = anisotropic(7, m=24, n=16, n_samples=50, dtype=dtype)
    W0, X0 = W.copy(), X.copy()
    f = mc.compress(W, method, random_state=0, X=X, **params)
    assert f.dtype == dtype and f.shape == W.shape
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(X, X0)
    # float32 and float64 give the same answer up to float32 rounding of the fit
    if dtype == np.float32:
        g = mc.compress(W.astype(np.float64), method, random_state=0, X=X.astype(np.float64),
                        **params)
        e32 = output_error(X, W, f.to_dense())
        e64 = output_error(X, W, g.to_dense())
        assert e32 <= 1.5 * e64 + 1e-6 * np.linalg.norm(X @ W)


@pytest.mark.parametrize("method, params", BUILTINS)
def test_zero_inputs_give_the_data_free_result(method, params):
    W, X = anisotropic(8, m=24, n=16, n_samples=20)
    free = mc.compress(W, method, random_state=0, **params)
    zero = mc.compress(W, method, random_state=0, X=np.zeros_like(X), **params)
    np.testing.assert_array_equal(zero.to_dense(), free.to_dense())


def test_without_inputs_unchanged():
    W, _ = anisotropic(9)
    for method, params in BUILTINS:
        a = mc.compressors.get(method, random_state=3, **params).compress(W)
        b = mc.compress(W, method, random_state=3, X=None, **params)
        np.testing.assert_array_equal(a.to_dense(), b.to_dense())


def test_uses_inputs_flags():
    assert MatrixCompressor.uses_inputs is False
    for cls in (LowRankCompressor, DictionaryCompressor, KMeansCompressor, SimhashCompressor,
                PruningCompressor):
        assert cls.uses_inputs is True


# --- per method ----------------------------------------------------------------------------------

def whitened_reference(W, H, rank):
    """The best rank-r E-weighted approximation through the symmetric square root of H (eigh),
    another factor than the compressor's Cholesky one."""
    lam, V = np.linalg.eigh(H)
    root = (V * np.sqrt(lam)) @ V.T
    U, s, Vt = np.linalg.svd(root @ W)
    best = np.linalg.solve(root, (U[:, :rank] * s[:rank]) @ Vt[:rank])
    return best, float(np.sqrt(np.sum(s[rank:] ** 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("damp", [0.0, 0.01, 0.5])
def test_low_rank_whitened_is_optimal(dtype, damp):
    W, X = anisotropic(10, m=30, n=20, n_samples=200)
    X[:, :10] += np.random.default_rng(0).standard_normal((200, 1)) * 3  # correlated inputs
    H = X.T @ X / 200
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(30)
    best, floor = whitened_reference(W, Hd, 5)
    f = LowRankCompressor(5, method="svd", damp=damp).compress(W.astype(dtype),
                                                               X=X.astype(dtype))
    assert f.dtype == dtype and f.rank == 5
    tol = 1e-8 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(f.to_dense(), best, atol=tol * np.abs(best).max())
    E = f.to_dense().astype(np.float64) - W
    achieved = np.sqrt(np.trace(E.T @ Hd @ E))
    assert floor <= achieved * (1 + tol) and achieved <= floor * (1 + 10 * tol)
    if damp == 0:  # the exact output-error optimum: through X's QR, without H at all
        R = np.linalg.qr(X, mode="r")
        s = np.linalg.svd(R @ W, compute_uv=False)
        np.testing.assert_allclose(np.linalg.norm(X @ E), np.sqrt(np.sum(s[5:] ** 2)),
                                   rtol=10 * tol)


def test_low_rank_randomized_and_singular_inputs():
    W, X = anisotropic(11, m=40, n=30, n_samples=10)  # fewer samples than inputs
    with pytest.raises(ValueError, match="damp"):
        LowRankCompressor(4, damp=0.0).compress(W, X=X)
    H = X.T @ X / 10
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(40)
    _, floor = whitened_reference(W, Hd, 4)
    f = LowRankCompressor(4, random_state=0).compress(W, X=X)
    E = f.to_dense() - W
    assert np.sqrt(np.trace(E.T @ Hd @ E)) <= floor * 1.02


def nearest_codes(values, codebook):
    return np.argmin(np.abs(values[..., None] - codebook), axis=-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kmeans_gptq_codes(dtype):
    """The codes are GPTQ's against the returned codebook; the codebook is the k-means fit
    weighted by diag H; "diagonal" codes every weight by its nearest entry."""
    W, X = anisotropic(12, m=32, n=16, n_samples=100, w="inv", dtype=dtype)
    H, d = input_moments(X)
    f = KMeansCompressor(8, random_state=0).compress(W, X=X)
    book = f.codebook[:, 0].astype(np.float64)
    Q = gptq_quantize(W, H, lambda rows, start: book[nearest_codes(rows, book)])
    np.testing.assert_array_equal(f.to_dense(), Q.astype(dtype))
    weighted, _, _ = mc.fit_codebook(W, 8, random_state=0,
                                     sample_weight=np.broadcast_to(d[:, None] / d.max(), W.shape))
    np.testing.assert_allclose(book, weighted, rtol=1e-6 if dtype == np.float32 else 1e-12)
    g = KMeansCompressor(8, random_state=0, data_aware="diagonal").compress(W, X=X)
    np.testing.assert_array_equal(g.codebook, f.codebook)
    np.testing.assert_array_equal(g.to_dense(), book[nearest_codes(W, book)].astype(dtype))


def test_kmeans_gptq_beats_diagonal_on_correlated_inputs():
    rng = np.random.default_rng(13)
    W = rng.standard_normal((48, 24))
    X = (rng.standard_normal((300, 4)) @ rng.standard_normal((4, 48))
         + 0.3 * rng.standard_normal((300, 48))) * rng.lognormal(0, 1, 48)
    diag = KMeansCompressor(4, random_state=0, data_aware="diagonal").compress(W, X=X)
    gptq = KMeansCompressor(4, random_state=0).compress(W, X=X)
    # measured 0.29 (the output error of the GPTQ codes over the nearest ones)
    assert output_error(X, W, gptq.to_dense()) < 0.6 * output_error(X, W, diag.to_dense())


@pytest.mark.parametrize("mode", ["gptq", "diagonal"])
@pytest.mark.parametrize("b", [1, 2])
def test_kmeans_sample_path(mode, b):
    """Past max_fit_points the codebook comes from a sample of rows (weighted), every row is
    coded (by GPTQ or nearest)."""
    W, X = anisotropic(14, m=60, n=8, n_samples=120, w="inv")
    c = KMeansCompressor(16, block_size=b, random_state=0, data_aware=mode,
                         max_fit_points=100)
    f = c.compress(W, X=X)
    free = KMeansCompressor(16, block_size=b, random_state=0, max_fit_points=100).compress(W)
    assert f.nbytes == free.nbytes
    assert output_error(X, W, f.to_dense()) < output_error(X, W, free.to_dense())
    if mode == "diagonal":
        book = f.codebook
        dist = ((W.reshape(-1, 1, b) - book[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(f.to_dense(), book[np.argmin(dist, 1)].reshape(W.shape))


def test_kmeans_bad_data_aware():
    W, X = anisotropic(15, m=8, n=4, n_samples=10)
    with pytest.raises(ValueError, match="data_aware"):
        KMeansCompressor(4, data_aware="full").compress(W, X=X)
    with pytest.raises(ValueError, match="damp"):
        KMeansCompressor(4, damp=-0.1).compress(W, X=X)
    with pytest.raises(TypeError, match="damp"):
        LowRankCompressor(2, damp="x").compress(W, X=X)


def test_pruning_wanda_scores():
    W, X = anisotropic(16, m=20, n=10, n_samples=60)
    f = PruningCompressor(0.7).compress(W, X=X)
    score = np.abs(W) * np.sqrt(np.mean(X**2, axis=0))[:, None]
    keep = 200 - int(0.7 * 200)
    expected = np.zeros(200, bool)
    expected[np.argsort(-score.ravel(), kind="stable")[:keep]] = True
    np.testing.assert_array_equal(f.to_dense().ravel() != 0, expected)
    np.testing.assert_array_equal(f.to_dense()[expected.reshape(W.shape)],
                                  W[expected.reshape(W.shape)])
    # N:M and blocks take the scores too
    g = PruningCompressor(n_m=(1, 2)).compress(W, X=X)
    pairs = score.reshape(20, 5, 2)
    kept = (g.to_dense() != 0).reshape(20, 5, 2)
    np.testing.assert_array_equal(kept[..., 0], pairs[..., 0] >= pairs[..., 1])
    # with codes: the values' k-means is weighted by H_ii of their row
    h = PruningCompressor(0.7, n_codes=3, random_state=0).compress(W, X=X)
    rows = np.repeat(np.arange(20), np.diff(f.indptr))
    book, _, _ = mc.fit_codebook(f.values, 3, random_state=0,
                                 sample_weight=np.mean(X**2, axis=0)[rows])
    np.testing.assert_allclose(np.sort(h.codebook), book, rtol=1e-9)


def test_pruning_taylor_ignores_inputs_for_scores():
    W, X = anisotropic(17, m=10, n=6, n_samples=30)
    G = np.random.default_rng(0).standard_normal(W.shape)
    a = PruningCompressor(0.5, scores="taylor").compress(W, grad=G)
    b = PruningCompressor(0.5, scores="taylor").compress(W, grad=G, X=X)
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())


@pytest.mark.parametrize("dtype", DTYPES)
def test_simhash_scales_are_least_squares(dtype):
    W, X = anisotropic(18, m=30, n=12, n_samples=80, dtype=dtype)
    free = SimhashCompressor(40, random_state=0).compress(W)
    f = SimhashCompressor(40, random_state=0).compress(W, X=X)
    np.testing.assert_array_equal(f.bits, free.bits)
    assert f.seed == free.seed
    V = (free.projection() @ free.signs()).astype(np.float64)
    X64, W64 = X.astype(np.float64), W.astype(np.float64)
    expected = [np.linalg.lstsq((X64 @ V[:, [j]]), X64 @ W64[:, j], rcond=None)[0][0]
                for j in range(12)]
    np.testing.assert_allclose(f.scale, expected, rtol=1e-5 if dtype == np.float32 else 1e-10)


def test_dictionary_weighted_rows_and_dead_inputs():
    """Learning on sqrt(H_ii)-scaled rows; a row whose input is always zero is coded by OMP
    against the learned dictionary."""
    W, X = anisotropic(19, m=40, n=16, n_samples=100, w="inv")
    X[:, [3, 7]] = 0
    f = DictionaryCompressor(8, 3, random_state=0, method="mod", max_iter=5).compress(W, X=X)
    root = np.sqrt(np.mean(X**2, axis=0))
    root /= root.max()
    codes, D, _ = mc.dict_learning(W * root[:, None], 8, n_nonzero_coefs=3, method="mod",
                                   max_iter=5, random_state=0)
    np.testing.assert_allclose(f.dictionary, D, rtol=1e-9, atol=1e-12)
    dead = mc.sparse_encode(W[[3, 7]], D, n_nonzero_coefs=3) @ D
    np.testing.assert_allclose(f.to_dense()[[3, 7]], dead, rtol=1e-9, atol=1e-12)
    live = np.delete(np.arange(40), [3, 7])
    np.testing.assert_allclose(f.to_dense()[live], (codes[live] / root[live, None]) @ D,
                               rtol=1e-9, atol=1e-12)
    assert not np.allclose(f.dictionary, DictionaryCompressor(8, 3, random_state=0, method="mod",
                                                              max_iter=5).compress(W).dictionary)


def test_dictionary_sample_path():
    W, X = anisotropic(20, m=80, n=12, n_samples=100, w="inv")
    c = DictionaryCompressor(8, 2, random_state=0, max_fit_rows=40)
    f = c.compress(W, X=X)
    free = c.compress(W)
    assert f.nbytes == free.nbytes
    assert output_error(X, W, f.to_dense()) < output_error(X, W, free.to_dense())


# --- old-signature user compressors and the compress() dispatch ----------------------------------

class OldSignature(MatrixCompressor):
    name = "test_data_aware_old_signature"

    def __init__(self, rank=2):
        self.rank = rank

    def compress(self, A, *, grad=None):
        return mc.low_rank(A, self.rank, method="svd")


class WithInputs(MatrixCompressor):
    name = "test_data_aware_with_inputs"
    uses_inputs = True

    def __init__(self, rank=2):
        self.rank = rank

    def compress(self, A, *, grad=None, X=None):
        self.seen = X
        return mc.low_rank(A, self.rank, method="svd")


def test_old_signature_user_compressor():
    W, X = anisotropic(21, m=12, n=8, n_samples=20)
    f = mc.compress(W, "test_data_aware_old_signature", X=X)
    np.testing.assert_allclose(f.to_dense(), mc.low_rank(W, 2, method="svd").to_dense())
    g = mc.compress(W, "test_data_aware_old_signature", rank=3, grad=np.ones_like(W))
    assert g.rank == 3
    assert OldSignature.uses_inputs is False
    c = MatrixCompressor.from_config(OldSignature(3).get_config())
    assert c.compress(W).rank == 3


def test_new_signature_user_compressor_gets_inputs():
    from matcompress.compressors import _compress_with

    W, X = anisotropic(22, m=12, n=8, n_samples=20)
    c = WithInputs()
    _compress_with(c, W, X=X)
    assert c.seen is X
    _compress_with(c, W)
    assert c.seen is None


# --- bad inputs ----------------------------------------------------------------------------------

BAD_X = [
    (lambda X: X[:, :-1], ValueError, "X must have one column per row"),
    (lambda X: np.concatenate([X, X[:, :1]], axis=1), ValueError, "X must have one column"),
    (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), ValueError,
     "X contains NaN"),
    (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), ValueError,
     "X contains infinity"),
    (lambda X: X[0], ValueError, "X must be 2-D"),
    (lambda X: X[:0], ValueError, "X has no rows"),
    (lambda X: X.astype(np.complex128), TypeError, "X must be real"),
    (lambda X: X.astype(str), TypeError, "X must be a numeric array"),
]


def test_inputs_whose_squares_overflow():
    W, X = anisotropic(24, m=6, n=4, n_samples=5)
    with pytest.raises(ValueError, match="X is too large"):
        mc.compress(W, "kmeans", n_codes=4, X=X * 1e200)


@pytest.mark.parametrize("bad, exc, match", BAD_X, ids=[m for _, _, m in BAD_X])
@pytest.mark.parametrize("method, params", BUILTINS)
def test_bad_inputs_raise_naming_X(method, params, bad, exc, match):
    W, X = anisotropic(23, m=10, n=8, n_samples=6)
    with pytest.raises(exc, match=match):
        mc.compress(W, method, X=bad(X), **params)


def test_gptq_docstring_example():
    import doctest

    import matcompress.gptq

    result = doctest.testmod(matcompress.gptq, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
