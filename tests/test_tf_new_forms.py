"""The TensorFlow face of the scaled codebook and the sum of factorizations: products, rows and
gradients against the numpy forms, and the compressed / stripped layers through training,
stripping and a .keras round trip (the additive codebook too; its ops and layers in detail:
tests/test_tf_additive.py)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.composite import Sum  # noqa: E402
from matcompress.factors import LowRank, Pruned  # noqa: E402
from matcompress.quant import ScaledCodebook, pack_bits  # noqa: E402

#: Keras' Variable.__array__ has no ``copy`` keyword: numpy >= 2 warns when Keras saves (as in
#: tests/test_tf_compression.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def random_scaled(rng, m, n, n_codes, group_size, axis, n_books, dtype):
    bits = 16 if n_codes > 256 else max(1, (n_codes - 1).bit_length())
    codes = rng.integers(0, n_codes, (m, n))
    book = rng.standard_normal((n_books, n_codes)).astype(dtype)
    shape = (-(-m // group_size), n) if axis == 1 else (m, -(-n // group_size))
    scales = rng.uniform(0.5, 2.0, shape).astype(np.float16)
    return ScaledCodebook(pack_bits(codes, bits), book, scales, n, group_size, axis)


def random_sum(rng, m, n, dtype):
    low = LowRank(rng.standard_normal((m, 2)).astype(dtype),
                  rng.standard_normal((2, n)).astype(dtype))
    sc = random_scaled(rng, m, n, 4, m, 1, 1, dtype)
    mask = rng.random((m, n)) < 0.1
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
    indices = np.nonzero(mask)[1].astype(np.uint16)
    sparse = Pruned(indptr, indices, n, values=rng.standard_normal(mask.sum()).astype(dtype))
    return Sum((low, Sum((sc, sparse))))


CASES = [
    # (m, n, n_codes, group_size, axis, n_books): every packing (1..8 and 16 bits)
    (9, 7, 2, 4, 1, 1), (8, 10, 4, 3, 1, 2), (11, 5, 8, 11, 1, 1), (6, 9, 16, 2, 0, 3),
    (7, 13, 32, 5, 0, 1), (10, 6, 64, 4, 1, 1), (5, 11, 128, 3, 0, 2), (12, 8, 256, 5, 1, 4),
    (6, 7, 300, 2, 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_scaled_codebook_product_rows_and_gradients(case, dtype):
    rng = np.random.default_rng(hash(case) % 2**32)
    f = random_scaled(rng, *case, dtype)
    m, n = f.shape
    W = f.to_dense()
    x = rng.standard_normal((3, m)).astype(dtype)
    tol = TOL[dtype]
    np.testing.assert_allclose(mctf.factored_matmul(x, f).numpy(), x @ W, rtol=tol, atol=tol)
    ids = np.array([[0, m - 1], [m // 2, 1]])
    np.testing.assert_array_equal(mctf.factored_rows(ids, f).numpy(), W[ids])
    # Gradients of the trained parts against the numpy backward pass.
    t = mctf.factor_tensors(f)
    var = {k: tf.Variable(t[k]) for k in ("codebook", "scales")}
    dy = rng.standard_normal((3, n)).astype(dtype)
    with tf.GradientTape() as tape:
        y = mctf.factored_matmul(x, {**t, **var})
        loss = tf.reduce_sum(y * dy)
    got = tape.gradient(loss, var)
    _, want = f.matmul_backward(x, dy)
    for k in var:
        g = tf.convert_to_tensor(got[k]).numpy()
        np.testing.assert_allclose(g, want[k], rtol=50 * tol,
                                   atol=50 * tol * np.abs(want[k]).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nested_sum_product_rows_and_gradients(dtype):
    rng = np.random.default_rng(7)
    f = random_sum(rng, 12, 9, dtype)
    W = f.to_dense()
    x = rng.standard_normal((4, 12)).astype(dtype)
    tol = TOL[dtype]
    np.testing.assert_allclose(mctf.factored_matmul(x, f).numpy(), x @ W, rtol=tol, atol=tol)
    ids = np.array([3, 0, 11])
    np.testing.assert_allclose(mctf.factored_rows(ids, f).numpy(), W[ids], rtol=tol, atol=tol)
    t = mctf.factor_tensors(f)
    var = {k: tf.Variable(t[k]) for k in f.trainable_fields}
    dy = rng.standard_normal((4, 9)).astype(dtype)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(mctf.factored_matmul(x, {**t, **var}) * dy)
    got = tape.gradient(loss, var)
    _, want = f.matmul_backward(x, dy)
    assert set(want) == set(var)
    for k in var:
        g = tf.convert_to_tensor(got[k]).numpy()
        np.testing.assert_allclose(g, want[k], rtol=50 * tol,
                                   atol=50 * tol * np.abs(want[k]).max())


@pytest.mark.parametrize("method, params", [
    ("scaled_kmeans", dict(n_codes=8, group_size=8)),
    ("low_rank_residual", dict(compression_ratio=3)),
    ("outliers", dict(compression_ratio=4)),
    ("additive", dict(n_codebooks=2, n_codes=16, block_size=4)),
])
def test_layers_train_strip_and_reload(method, params, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 16)).astype(np.float32)
    Y = (X @ rng.standard_normal((16, 24))).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(X, Y, epochs=3, batch_size=32, verbose=0)
    dense_kernel = model.layers[0].kernel.numpy()
    comp = mc.compressors.get(method, random_state=0, **params)
    ref = comp.compress(dense_kernel)
    c = mctf.apply_compression(model, comp, schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0))
    c.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: the parts stay the snapshot's
    c.fit(X[:32], Y[:32], epochs=1, batch_size=32, verbose=0,
          callbacks=[mctf.CompressionCallback()])
    layer = c.layers[0]
    got = layer._core.arrays()
    # The snapshot in the layer is the numpy compressor's result on the trained kernel.
    f = mctf.layers.to_factorization(layer.plan.kind, layer.plan.static, got)
    np.testing.assert_allclose(f.to_dense(), ref.to_dense(), rtol=1e-5, atol=1e-5)
    stripped = mctf.strip_compression(c)
    nbytes, dense = mctf.compressed_nbytes(stripped)
    assert nbytes == ref.nbytes and dense == dense_kernel.nbytes
    y = stripped.predict(X, verbose=0)
    np.testing.assert_allclose(y, X @ ref.to_dense() + layer.bias.numpy(), rtol=1e-4,
                               atol=1e-4)
    path = tmp_path / "m.keras"
    stripped.save(path)
    back = keras.models.load_model(path)
    np.testing.assert_array_equal(back.predict(X, verbose=0), y)


def test_scaled_codebook_variables_are_balanced_for_the_optimizer():
    """The compressor stores scales near 2^12 (float16 headroom) and a codebook near 1e-5; the
    layer keeps the codebook at the weights' magnitude and the scales near 1 (same product),
    so that Adam's steps fine-tune rather than wreck it: the loss falls after the snapshot."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((256, 32)).astype(np.float32)
    Y = np.tanh(X @ rng.standard_normal((32, 16)) * 0.3).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="tanh"),
                              keras.layers.Dense(16)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(X, Y, epochs=20, batch_size=32, verbose=0)
    comp = mc.compressors.get("scaled_kmeans", n_codes=4, random_state=0)
    kernel = model.layers[0].kernel.numpy()
    ref = comp.compress(kernel)
    assert np.sqrt(np.mean(ref.scales.astype(np.float64) ** 2)) > 100  # what the gain undoes
    c = mctf.apply_compression(model, comp, schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0), filter_fn=lambda layer: layer is model.layers[0])
    c.compile(keras.optimizers.Adam(0.003), "mse")
    first = c.evaluate(X, Y, verbose=0)
    c.fit(X[:32], Y[:32], epochs=1, batch_size=32, verbose=0,
          callbacks=[mctf.CompressionCallback()])  # the snapshot (one step)
    layer = c.layers[0]
    code_var = np.sqrt(np.mean(layer._parts["codebook"].numpy() ** 2))
    scale_var = np.sqrt(np.mean(layer._parts["scales"].numpy() ** 2))
    w_rms = np.sqrt(np.mean(kernel ** 2))
    assert 0.1 * w_rms < code_var < 10 * w_rms and 0.5 < scale_var < 2
    snap = c.evaluate(X, Y, verbose=0)
    h = c.fit(X, Y, epochs=5, batch_size=32, verbose=0, callbacks=[mctf.CompressionCallback()])
    after = c.evaluate(X, Y, verbose=0)
    assert after < snap and np.isfinite(h.history["loss"]).all(), (first, snap, after)
