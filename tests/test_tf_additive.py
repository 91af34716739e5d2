"""The TensorFlow face of the additive codebook (kind "additive"): products, rows and gradients
against the numpy form and a dense TensorFlow reference, and the compressed / stripped layers
(Dense, Embedding, CompressedKernel) through training, stripping and a .keras round trip.

References: ``AdditiveCodebook.to_dense`` and ``matmul_backward`` (numpy), and W built
independently of the ops' gathers (one-hot codes from the numpy unpacking, contracted with the
codebooks by ``tf.einsum``) under a ``tf.GradientTape``.

Tolerances: products 2e-5 (float32) / 1e-12 (float64) of the largest value (a sum over m
products); decoded rows bit-exact (the same additions in the same order as numpy); gradients
50x that of their largest entry (segment sums in another order). The layers' float32 scales
are rounded to float16 when stripped: the stripped W then differs from the layer's by at most
2^-11 of its largest weight (checked at 1e-3).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.additive import AdditiveCodebook  # noqa: E402
from matcompress.compressors import MatrixCompressor  # noqa: E402
from matcompress.quant import pack_bits  # noqa: E402

#: Keras' Variable.__array__ has no ``copy`` keyword: numpy >= 2 warns when Keras saves (as in
#: tests/test_tf_compression.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def code_bits(n_codes):
    return 16 if n_codes > 256 else max(1, (n_codes - 1).bit_length())


def random_additive(rng, m, n, n_books, n_codes, b, axis, dtype):
    codes = rng.integers(0, n_codes, (m, n // b * n_books))
    books = rng.standard_normal((n_books, n_codes, b)).astype(dtype)
    scales = rng.uniform(0.5, 2.0, n if axis == 1 else m).astype(np.float16)
    return AdditiveCodebook(pack_bits(codes, code_bits(n_codes)), books, scales, n, axis)


def dense_reference(f, codebooks, scales):
    """W from tensors ``codebooks`` and ``scales`` through one-hot codes (numpy's unpacking)."""
    onehot = tf.one_hot(f.unpacked_codes(), f.n_codes, dtype=codebooks.dtype)  # (m, nb, M, K)
    w = tf.reshape(tf.einsum("rjtk,tke->rje", onehot, codebooks), f.shape)
    s = tf.cast(scales, codebooks.dtype)
    return w * (s[None, :] if f.channel_axis == 1 else s[:, None])


def assert_close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(np.abs(want).max(), 1e-30)
    assert np.abs(got - want).max() <= tol * scale, np.abs(got - want).max() / scale


CASES = [
    # (m, n, n_books, n_codes, block_size, channel_axis): every packing (1..8 and 16 bits)
    (9, 8, 1, 2, 4, 1), (8, 12, 2, 4, 3, 0), (11, 6, 2, 8, 2, 1), (7, 16, 1, 16, 8, 0),
    (10, 10, 3, 32, 5, 1), (6, 9, 2, 64, 3, 0), (5, 8, 1, 128, 2, 1), (12, 8, 2, 256, 4, 0),
    (6, 8, 2, 300, 4, 1), (7, 5, 2, 5, 1, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_product_rows_and_gradients(case, dtype):
    rng = np.random.default_rng(sum(case) * 7 + case[3])
    f = random_additive(rng, *case, dtype)
    m, n = f.shape
    W = f.to_dense()
    tol = TOL[dtype]
    x = rng.standard_normal((3, m)).astype(dtype)
    assert_close(mctf.factored_matmul(x, f).numpy(), x @ W, tol)
    x3 = rng.standard_normal((2, 2, m)).astype(dtype)  # leading axes
    assert_close(mctf.factored_matmul(x3, f).numpy(), x3 @ W, tol)
    ids = np.array([[0, m - 1], [m // 2, 1]])
    np.testing.assert_array_equal(mctf.factored_rows(ids, f).numpy(), W[ids])
    assert mctf.factored_rows(np.zeros(0, np.int32), f).shape == (0, n)

    # Gradients for x, the codebooks and the scales (trained in the compute dtype).
    t = mctf.factor_tensors(f)
    assert t["scales"].dtype == dtype and t["codebooks"].dtype == dtype
    var = {k: tf.Variable(t[k]) for k in f.trainable_fields}
    xt = tf.constant(x)
    dy = rng.standard_normal((3, n)).astype(dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(mctf.factored_matmul(xt, {**t, **var}) * dy)
        ref_loss = tf.reduce_sum(tf.matmul(xt, dense_reference(f, var["codebooks"],
                                                               var["scales"])) * dy)
        rows_loss = tf.reduce_sum(mctf.factored_rows(tf.range(m), {**t, **var})
                                  * (x.T @ dy))
    got = tape.gradient(loss, {"x": xt, **var})
    via_rows = tape.gradient(rows_loss, var)
    tape_ref = tape.gradient(ref_loss, {"x": xt, **var})
    dx, want = f.matmul_backward(x, dy)
    want = {"x": dx, **want}
    assert set(want) == {"x", "codebooks", "scales"}
    for k in want:
        g = tf.convert_to_tensor(got[k]).numpy()
        assert g.dtype == dtype and g.shape == want[k].shape
        assert_close(g, want[k], 50 * tol)
        assert_close(g, tf.convert_to_tensor(tape_ref[k]).numpy(), 50 * tol)
        if k != "x":
            assert_close(tf.convert_to_tensor(via_rows[k]).numpy(), want[k], 50 * tol)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 6), n_blocks=st.integers(1, 4), b=st.integers(1, 4),
       n_books=st.integers(1, 3), bits=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 16]),
       axis=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_random_shapes_match_numpy(m, n_blocks, b, n_books, bits, axis, seed):
    rng = np.random.default_rng(seed)
    lo, hi = (257, 400) if bits == 16 else (2 ** (bits - 1) + 1, 2 ** bits)
    n_codes = int(rng.integers(lo, hi + 1)) if bits > 1 else 2
    f = random_additive(rng, m, n_blocks * b, n_books, n_codes, b, axis, np.float32)
    assert f.bits == bits
    W = f.to_dense()
    x = rng.standard_normal((2, m)).astype(np.float32)
    assert_close(mctf.factored_matmul(x, f).numpy(), x @ W, 2e-5)
    ids = rng.integers(0, m, 5)
    np.testing.assert_array_equal(mctf.factored_rows(ids, f).numpy(), W[ids])


def test_product_and_rows_in_tf_function():
    rng = np.random.default_rng(1)
    f = random_additive(rng, 10, 12, 2, 16, 4, 0, np.float32)
    t = mctf.factor_tensors(f)
    var = {k: tf.Variable(t[k]) for k in f.trainable_fields}

    @tf.function
    def run(x, ids):
        parts = {**t, **var}
        return mctf.factored_matmul(x, parts), mctf.factored_rows(ids, parts)

    x = rng.standard_normal((4, 10)).astype(np.float32)
    y, rows = run(x, tf.constant([9, 0, 3], tf.int32))
    W = f.to_dense()
    assert_close(y.numpy(), x @ W, 2e-5)
    np.testing.assert_array_equal(rows.numpy(), W[[9, 0, 3]])


def test_sum_with_an_additive_part():
    from matcompress.composite import Sum
    from matcompress.factors import LowRank

    rng = np.random.default_rng(5)
    f = Sum((random_additive(rng, 9, 8, 2, 8, 4, 0, np.float64),
             LowRank(rng.standard_normal((9, 2)), rng.standard_normal((2, 8)))))
    W = f.to_dense()
    x = rng.standard_normal((3, 9))
    assert_close(mctf.factored_matmul(x, f).numpy(), x @ W, 1e-12)
    np.testing.assert_allclose(mctf.factored_rows([4, 0], f).numpy(), W[[4, 0]], rtol=1e-12)
    t = mctf.factor_tensors(f)
    var = {k: tf.Variable(t[k]) for k in f.trainable_fields}
    assert {"parts.0.codebooks", "parts.0.scales"} <= set(var)
    dy = rng.standard_normal((3, 8))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(mctf.factored_matmul(x, {**t, **var}) * dy)
    got = tape.gradient(loss, var)
    _, want = f.matmul_backward(x, dy)
    for k in var:
        assert_close(tf.convert_to_tensor(got[k]).numpy(), want[k], 1e-10)


# ---- layers ----------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="test_tf_additive")
class MyDense(keras.layers.Dense):
    """A Dense subclass: wrapped by CompressedKernel, not turned into CompressedDense."""


def _fit(model, X, Y, epochs, lr=0.01):
    model.compile(keras.optimizers.Adam(lr), "mse")
    return model.fit(X, Y, epochs=epochs, batch_size=32, verbose=0,
                     callbacks=[mctf.CompressionCallback()])


def test_dense_trains_strips_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 16)).astype(np.float32)
    Y = np.tanh(X @ rng.standard_normal((16, 4))).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="tanh"),
                              keras.layers.Dense(4)])
    _fit(model, X, Y, 3)
    kernel = model.layers[0].kernel.numpy()
    comp = mc.AdditiveCompressor(2, 16, 4, random_state=0)
    ref = comp.compress(kernel)
    c = mctf.apply_compression(model, comp, schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0), filter_fn=lambda layer: layer is model.layers[0])
    layer = c.layers[0]
    assert isinstance(layer, mctf.CompressedDense) and layer.plan.kind == "additive"
    assert layer.plan.gains == {}  # the compressor's scales sit near 1 already
    h = _fit(c, X, Y, 2)  # model.fit: a tf.function, the snapshot at its first step
    assert np.isfinite(h.history["loss"]).all()
    parts = layer._core.arrays()
    # Trained: the codebooks and scales moved from the snapshot; the codes did not.
    np.testing.assert_array_equal(parts["codes"], ref.codes)
    assert not np.allclose(parts["codebooks"], ref.codebooks)
    assert parts["scales"].dtype == np.float32
    assert not np.allclose(parts["scales"], ref.scales.astype(np.float32))

    effective = mctf.factored_rows(tf.range(16), layer.factors()).numpy()
    stripped = mctf.strip_compression(c)
    f = stripped.layers[0].factorization()
    assert isinstance(f, AdditiveCodebook) and f.scales.dtype == np.float16
    assert f.codebooks.dtype == np.float32 and f.channel_axis == 1
    np.testing.assert_array_equal(f.codebooks, parts["codebooks"])
    np.testing.assert_array_equal(f.scales, parts["scales"].astype(np.float16))
    assert_close(f.to_dense(), effective, 1e-3)
    nbytes, dense = mctf.compressed_nbytes(stripped)
    assert nbytes == ref.nbytes == f.nbytes and dense == kernel.nbytes

    y = stripped.predict(X, verbose=0)
    bias0, (k1, b1) = layer.bias.numpy(), (w.numpy() for w in c.layers[1].weights)
    assert_close(y, np.tanh(X @ f.to_dense() + bias0) @ k1 + b1, 1e-5)
    assert_close(y, c.predict(X, verbose=0), 1e-2)
    # The stripped layer keeps training (float16 scales variable, gradient through the cast).
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(stripped(X) - Y))
    grads = tape.gradient(loss, stripped.layers[0].trainable_variables)
    assert all(g is not None and np.isfinite(tf.convert_to_tensor(g).numpy()).all()
               for g in grads)

    stripped.save(tmp_path / "s.keras")
    back = keras.models.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(back.predict(X, verbose=0), y)
    g = back.layers[0].factorization()
    for name in ("codes", "codebooks", "scales"):
        np.testing.assert_array_equal(getattr(g, name), getattr(f, name))
    # The compressed model itself. compile=False: its optimizer's slots do not come back after
    # A's drop (A is trainable again in the reloaded layer until CompressionCallback syncs it,
    # so Keras counts other variables; the same for every kind).
    c.save(tmp_path / "c.keras")
    back_c = keras.models.load_model(tmp_path / "c.keras", compile=False)
    assert int(back_c.layers[0].step.numpy()) == int(layer.step.numpy())
    back_c.layers[0].sync_trainable()  # past the drop, as the saved layer (the same graph)
    np.testing.assert_array_equal(back_c.predict(X, verbose=0), c.predict(X, verbose=0))


def test_calibrated_snapshot_is_the_compressors_with_inputs():
    """CompressionSchedule(calibrate=True): the snapshot batch reaches compress(A, X=X)."""
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((64, 16)) * np.exp(rng.standard_normal(16))).astype(np.float32)
    Y = rng.standard_normal((64, 24)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24)])
    kernel = model.layers[0].kernel.numpy()
    comp = mc.AdditiveCompressor(2, 16, 4, random_state=0)
    c = mctf.apply_compression(model, comp, schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0, calibrate=True))
    c.compile(keras.optimizers.SGD(0.0), "mse")
    c.fit(X, Y, epochs=1, batch_size=64, verbose=0, shuffle=False,
          callbacks=[mctf.CompressionCallback()])
    layer = c.layers[0]
    assert layer.plan.uses_inputs
    f = mctf.strip_compression(c).layers[0].factorization()
    ref, blind = comp.compress(kernel, X=X), comp.compress(kernel)
    for name in ("codes", "codebooks", "scales"):
        np.testing.assert_array_equal(getattr(f, name), getattr(ref, name))
    assert not np.array_equal(ref.to_dense(), blind.to_dense())  # X made a difference


def test_embedding_and_compressed_kernel(tmp_path):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 40, (64, 3))
    Y = rng.standard_normal((64, 1)).astype(np.float32)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(40, 8),
                              keras.layers.Flatten(), MyDense(16, activation="tanh"),
                              keras.layers.Dense(1)])
    comp = mc.AdditiveCompressor(2, 8, 4, channel_axis=0, random_state=0)
    c = mctf.apply_compression(
        model, comp, schedule=mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0),
        filter_fn=lambda layer: isinstance(layer, (keras.layers.Embedding, MyDense)))
    emb, ker = c.layers[0], c.layers[2]
    assert isinstance(emb, mctf.CompressedEmbedding) and isinstance(ker, mctf.CompressedKernel)
    assert _fit(c, ids, Y, 2).history["loss"][-1] > 0
    stripped = mctf.strip_compression(c)
    femb, fker = stripped.layers[0], stripped.layers[2]
    assert isinstance(femb, mctf.FactoredEmbedding) and isinstance(fker, mctf.FactoredKernel)
    fe, fk = femb.factorization(), fker.factorization()
    for f, shape in ((fe, (40, 8)), (fk, (24, 16))):
        assert isinstance(f, AdditiveCodebook) and f.shape == shape
        assert f.channel_axis == 0 and f.scales.dtype == np.float16
    np.testing.assert_array_equal(femb(ids).numpy(), fe.to_dense()[ids])
    effective = mctf.factored_rows(tf.range(40), emb.factors()).numpy()
    assert_close(fe.to_dense(), effective, 1e-3)
    # The stripped model against numpy: lookup, flatten, x @ W + bias, tanh, dense.
    k_bias = fker.layer.bias.numpy()
    k1, b1 = (w.numpy() for w in c.layers[3].weights)
    h = np.tanh(fe.to_dense()[ids].reshape(64, -1) @ fk.to_dense() + k_bias)
    y = stripped.predict(ids, verbose=0)
    assert_close(y, h @ k1 + b1, 1e-5)
    stripped.save(tmp_path / "e.keras")
    back = keras.models.load_model(tmp_path / "e.keras")
    np.testing.assert_array_equal(back.predict(ids, verbose=0), y)


class _Fixed(MatrixCompressor):
    """Returns a given factorization (unregistered: no ``name``)."""

    def __init__(self, f):
        self.f = f

    def compress(self, A, *, grad=None, X=None):
        return self.f


def test_variables_are_balanced_for_adam():
    """The compressor's codebooks hold the weights' magnitude and its scales sit near 1: no
    gain, and Adam fine-tunes (the loss falls after the snapshot). A hand-made factorization
    with scales near 2^12 gets the power-of-two gain that brings them near 1 (exactly undone
    when stripped)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((256, 32)).astype(np.float32)
    Y = np.tanh(X @ rng.standard_normal((32, 16)) * 0.3).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="tanh"),
                              keras.layers.Dense(16)])
    _fit(model, X, Y, 20)
    kernel = model.layers[0].kernel.numpy()
    w_rms = np.sqrt(np.mean(kernel ** 2))
    comp = mc.AdditiveCompressor(compression_ratio=8, random_state=0)
    c = mctf.apply_compression(model, comp, schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0), filter_fn=lambda layer: layer is model.layers[0])
    c.compile(keras.optimizers.Adam(0.003), "mse")
    c.fit(X[:32], Y[:32], epochs=1, batch_size=32, verbose=0,
          callbacks=[mctf.CompressionCallback()])  # the snapshot (one step)
    layer = c.layers[0]
    assert layer.plan.gains == {}
    books = np.sqrt(np.mean(layer._parts["codebooks"].numpy() ** 2))
    scales = np.sqrt(np.mean(layer._parts["scales"].numpy() ** 2))
    assert 0.1 * w_rms < books < 10 * w_rms and 0.5 < scales < 2
    snap = c.evaluate(X, Y, verbose=0)
    h = c.fit(X, Y, epochs=4, batch_size=32, verbose=0, callbacks=[mctf.CompressionCallback()])
    after = c.evaluate(X, Y, verbose=0)
    assert after < snap and np.isfinite(h.history["loss"]).all(), (snap, after)

    ref = comp.compress(kernel)
    big = AdditiveCodebook(ref.codes, ref.codebooks / 4096, (ref.scales * 4096.0).astype(
        np.float16), ref.n_cols, ref.channel_axis)
    np.testing.assert_allclose(big.to_dense(), ref.to_dense(), rtol=1e-6, atol=1e-7)
    hand = mctf.apply_compression(model, _Fixed(big), schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0), filter_fn=lambda layer: layer is model.layers[0])
    hand.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: the parts stay the snapshot's
    hand.fit(X[:32], Y[:32], epochs=1, batch_size=32, verbose=0,
             callbacks=[mctf.CompressionCallback()])
    layer = hand.layers[0]
    assert layer.plan.gains == {"scales": 2.0 ** -12, "codebooks": 2.0 ** 12}
    books = np.sqrt(np.mean(layer._parts["codebooks"].numpy() ** 2))
    scales = np.sqrt(np.mean(layer._parts["scales"].numpy() ** 2))
    assert 0.1 * w_rms < books < 10 * w_rms and 0.5 < scales < 2
    f = mctf.strip_compression(hand).layers[0].factorization()
    for name in ("codes", "codebooks", "scales"):
        np.testing.assert_array_equal(getattr(f, name), getattr(big, name))
