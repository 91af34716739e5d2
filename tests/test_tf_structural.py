"""The TensorFlow face of the structural forms (kinds "block_diagonal", "mixed_block",
"input_output"): products, rows and gradients against the numpy forms, and the compressed /
stripped layers (Dense, Embedding, CompressedKernel) through training under ``model.fit``,
stripping and a .keras round trip.

References: ``to_dense`` and ``matmul_backward`` of the numpy forms (checked against
independent constructions in tests/test_structural.py).

Tolerances: products and rows 2e-5 (float32) / 1e-12 (float64) of the largest value (sums over
m products in another order); gradients 50x that.
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
from matcompress.factors import LowRank  # noqa: E402
from matcompress.structural import BlockDiagonal, InputOutput, MixedBlock  # noqa: E402

#: Keras' Variable.__array__ has no ``copy`` keyword: numpy >= 2 warns when Keras saves (as in
#: tests/test_tf_compression.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def assert_close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
    assert float(np.abs(got - want).max(initial=0.0)) <= tol * scale


def splits(size, k):
    return [len(p) for p in np.array_split(np.arange(size), k)]


def make(case, rng, dtype):
    kind = case[0]
    if kind == "block":
        _, m, n, k = case
        size = sum(r * c for r, c in zip(splits(m, k), splits(n, k)))
        return BlockDiagonal(rng.standard_normal(size).astype(dtype), m, n, k)
    if kind == "block-parts":
        _, m, n, k = case
        parts = []
        for i, (r, c) in enumerate(zip(splits(m, k), splits(n, k))):
            blk = rng.standard_normal((r, c)).astype(dtype)
            if i % 2:
                parts.append(mc.compress(blk, "kmeans", n_codes=4, random_state=0))
            else:
                parts.append(LowRank(blk[:, :2].copy(), rng.standard_normal((2, c))
                                     .astype(dtype)))
        return BlockDiagonal(parts=parts)
    if kind == "mixed":
        _, gm, gn, b, nb = case
        return MixedBlock(rng.standard_normal((nb, b, b)).astype(dtype),
                          rng.standard_normal((gm, gn, nb)).astype(dtype))
    _, gi, bi, pi, go, bo, qo, use_p, use_q = case
    P = rng.standard_normal((bi, pi)).astype(dtype) if use_p else None
    Q = rng.standard_normal((qo, bo)).astype(dtype) if use_q else None
    C = rng.standard_normal((gi * (pi if use_p else bi), go * (qo if use_q else bo)))
    return InputOutput(C.astype(dtype), P, Q)


CASES = [
    ("block", 12, 8, 4), ("block", 13, 9, 4), ("block", 7, 11, 3), ("block", 5, 5, 1),
    ("block-parts", 11, 8, 3),
    ("mixed", 3, 2, 4, 3), ("mixed", 2, 3, 3, 9), ("mixed", 1, 16, 8, 1),
    ("io", 3, 4, 2, 2, 6, 3, True, True), ("io", 4, 3, 1, 2, 5, 5, True, False),
    ("io", 3, 4, 2, 3, 2, 1, False, True), ("io", 1, 8, 1, 1, 4, 2, True, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_product_rows_and_gradients(case, dtype):
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    f = make(case, rng, dtype)
    m, n = f.shape
    W = f.to_dense()
    tol = TOL[dtype]
    x = rng.standard_normal((3, m)).astype(dtype)
    assert_close(mctf.factored_matmul(x, f).numpy(), x @ W, tol)
    x3 = rng.standard_normal((2, 2, m)).astype(dtype)
    assert_close(mctf.factored_matmul(x3, f).numpy(), x3 @ W, tol)
    ids = np.array([[0, m - 1], [m // 2, 1]])
    assert_close(mctf.factored_rows(ids, f).numpy(), W[ids], tol)
    assert_close(mctf.factored_rows(tf.range(m), f).numpy(), W, tol)  # every row
    assert mctf.factored_rows(np.zeros(0, np.int32), f).shape == (0, n)

    t = mctf.factor_tensors(f)
    var = {k: tf.Variable(t[k]) for k in f.trainable_fields}
    assert var and all(v.dtype == dtype for v in var.values())
    xt = tf.constant(x)
    dy = rng.standard_normal((3, n)).astype(dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(mctf.factored_matmul(xt, {**t, **var}) * dy)
        rows_loss = tf.reduce_sum(mctf.factored_rows(tf.range(m), {**t, **var}) * (x.T @ dy))
        few_loss = tf.reduce_sum(mctf.factored_rows([1, 0], {**t, **var}))
    got = tape.gradient(loss, {"x": xt, **var})
    via_rows = tape.gradient(rows_loss, var)
    via_few = tape.gradient(few_loss, var)
    dx, want = f.matmul_backward(x, dy)
    want = {"x": dx, **want}
    one_hot = np.zeros((2, m), dtype)
    one_hot[0, 1] = one_hot[1, 0] = 1
    _, want_few = f.matmul_backward(one_hot, np.ones((2, n), dtype))
    for k in want:
        g = tf.convert_to_tensor(got[k]).numpy()
        assert g.dtype == dtype and g.shape == want[k].shape
        assert_close(g, want[k], 50 * tol)
        if k != "x":
            assert_close(tf.convert_to_tensor(via_rows[k]).numpy(), want[k], 50 * tol)
            assert_close(tf.convert_to_tensor(via_few[k]).numpy(), want_few[k], 50 * tol)


def test_in_tf_function_with_unknown_sizes():
    """Traced with unknown batch and id counts (the input/output rows then choose their
    route at run time)."""
    rng = np.random.default_rng(1)
    forms = [make(("io", 4, 4, 2, 2, 6, 3, True, True), rng, np.float32),
             make(("block", 16, 12, 3), rng, np.float32),
             make(("mixed", 4, 3, 4, 2), rng, np.float32)]  # the route chosen at run time
    for f in forms:
        t = mctf.factor_tensors(f)
        var = {k: tf.Variable(t[k]) for k in f.trainable_fields}
        m = f.shape[0]

        @tf.function(input_signature=[tf.TensorSpec([None, m], tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
        def run(x, ids):
            parts = {**t, **var}
            return mctf.factored_matmul(x, parts), mctf.factored_rows(ids, parts)

        W = f.to_dense()
        x = rng.standard_normal((5, m)).astype(np.float32)
        for ids in ([2], list(range(m)) * 2):  # few ids, then more than m / pi
            y, rows = run(x, tf.constant(ids, tf.int32))
            assert_close(y.numpy(), x @ W, 2e-5)
            assert_close(rows.numpy(), W[ids], 2e-5)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), k=st.integers(1, 9), seed=st.integers(0, 999))
def test_random_block_shapes_match_numpy(m, n, k, seed):
    rng = np.random.default_rng(seed)
    f = make(("block", m, n, min(k, m, n)), rng, np.float32)
    W = f.to_dense()
    x = rng.standard_normal((2, m)).astype(np.float32)
    assert_close(mctf.factored_matmul(x, f).numpy(), x @ W, 2e-5)
    ids = rng.integers(0, m, 4)
    np.testing.assert_array_equal(mctf.factored_rows(ids, f).numpy(), W[ids])


def test_mixed_block_routes():
    """The basis route (few bases, many columns) and the decoded one (many bases) agree."""
    rng = np.random.default_rng(4)
    few = make(("mixed", 1, 16, 8, 1), rng, np.float64)  # 3 S (m b + m n / b) <= m n
    many = make(("mixed", 3, 2, 4, 9), rng, np.float64)
    for f, route in ((few, "basis"), (many, "decoded")):
        t = mctf.factor_tensors(f)
        x = tf.constant(rng.standard_normal((6, f.shape[0])))
        graph = tf.function(lambda x, t=t: mctf.factored_matmul(x, t)).get_concrete_function(x)
        names = {op.type for op in graph.graph.get_operations()}
        assert ("Einsum" in names) == (route == "basis"), names
        assert_close(mctf.factored_matmul(x, f).numpy(), x.numpy() @ f.to_dense(), 1e-12)


def test_unknown_kind_and_factor_tensors():
    rng = np.random.default_rng(2)
    f = make(("block-parts", 9, 6, 2), rng, np.float64)
    t = mctf.factor_tensors(f)
    assert t["kind"] == "block_diagonal" and t["n_blocks"] == 2
    assert t["parts.0.kind"] == "low_rank" and t["parts.1.kind"] == "codebook"
    g = make(("io", 2, 4, 2, 2, 4, 2, False, True), rng, np.float64)
    assert "P" not in mctf.factor_tensors(g) and "Q" in mctf.factor_tensors(g)


# ---- layers ----------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="test_tf_structural")
class MyDense(keras.layers.Dense):
    """A Dense subclass: wrapped by CompressedKernel, not turned into CompressedDense."""


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 32)).astype(np.float32)
    Y = np.tanh(X @ rng.standard_normal((32, 8)) * 0.3).astype(np.float32)
    return X, Y


_WEIGHTS = []


def _trained():
    """The MLP, trained once (its weights kept for the next tests)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(48, activation="tanh"),
                              keras.layers.Dense(8)])
    if not _WEIGHTS:
        X, Y = _data()
        model.compile(keras.optimizers.Adam(0.01), "mse")
        model.fit(X, Y, epochs=3, batch_size=32, verbose=0)
        _WEIGHTS.append(model.get_weights())
    model.set_weights(_WEIGHTS[0])
    return model


@pytest.mark.parametrize("method, params, kind", [
    ("block", dict(n_blocks=3), "block_diagonal"),
    ("block", dict(n_blocks=2, block_compressor="low_rank", compression_ratio=3),
     "block_diagonal"),
    ("mixed_block", dict(compression_ratio=3), "mixed_block"),
    ("input_output", dict(compression_ratio=3), "input_output"),
    ("input_output", dict(input_factor=2, output_factor=2), "input_output"),
], ids=["block", "block-lowrank", "mixed", "io-ratio", "io-factors"])
def test_dense_trains_strips_and_reloads(method, params, kind, tmp_path):
    X, Y = _data()
    model = _trained()
    kernel = model.layers[0].kernel.numpy()
    comp = mc.compressors.get(method, random_state=0, **params)
    ref = comp.compress(kernel)
    if "compression_ratio" in params:
        assert ref.compression_ratio >= params["compression_ratio"]
    c = mctf.apply_compression(model, comp, schedule=mctf.CompressionSchedule(
        begin_step=0, alpha_decrement=1.0), filter_fn=lambda layer: layer is model.layers[0])
    layer = c.layers[0]
    assert isinstance(layer, mctf.CompressedDense) and layer.plan.kind == kind
    c.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: the parts stay the snapshot's
    c.fit(X[:32], Y[:32], epochs=1, batch_size=32, verbose=0,
          callbacks=[mctf.CompressionCallback()])
    snap = mctf.layers.to_factorization(layer.plan.kind, layer.plan.static, layer._core.arrays())
    # The snapshot is the numpy compressor's result on the trained kernel (the init from A).
    assert type(snap) is type(ref) and snap.nbytes == ref.nbytes
    assert_close(snap.to_dense(), ref.to_dense(), 1e-6)
    before = c.evaluate(X, Y, verbose=0)
    c.compile(keras.optimizers.Adam(0.003), "mse")
    h = c.fit(X, Y, epochs=3, batch_size=32, verbose=0, callbacks=[mctf.CompressionCallback()])
    assert np.isfinite(h.history["loss"]).all()
    after = c.evaluate(X, Y, verbose=0)
    assert after < before, (before, after)  # the parts train
    trained = layer._core.arrays()
    assert any(not np.allclose(trained[k], v) for k, v in
               mctf.layers._stored_fields(snap)[0].items())

    effective = mctf.factored_rows(tf.range(32), layer.factors()).numpy()
    stripped = mctf.strip_compression(c)
    f = stripped.layers[0].factorization()
    assert type(f) is type(ref) and f.kind == kind and f.shape == (32, 48)
    assert_close(f.to_dense(), effective, 1e-6)
    nbytes, dense = mctf.compressed_nbytes(stripped)
    assert nbytes == ref.nbytes == f.nbytes and dense == kernel.nbytes
    y = stripped.predict(X, verbose=0)
    k1, b1 = (w.numpy() for w in c.layers[1].weights)
    assert_close(y, np.tanh(X @ f.to_dense() + layer.bias.numpy()) @ k1 + b1, 1e-5)
    assert_close(y, c.predict(X, verbose=0), 1e-5)
    # the stripped layer keeps training
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(stripped(X) - Y))
    grads = tape.gradient(loss, stripped.layers[0].trainable_variables)
    assert grads and all(g is not None and np.isfinite(tf.convert_to_tensor(g).numpy()).all()
                         for g in grads)
    stripped.save(tmp_path / "s.keras")
    back = keras.models.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(back.predict(X, verbose=0), y)
    assert back.layers[0].factorization() == f
    # SavedModel of the stripped model: the factors' product served without Keras
    stripped.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    assert_close(served.serve(tf.constant(X, tf.float32)).numpy(), y, 1e-6)


def test_compressed_model_round_trip(tmp_path):
    X, Y = _data()
    model = _trained()
    c = mctf.apply_compression(model, mc.MixedBlockCompressor(compression_ratio=4),
                               schedule=mctf.CompressionSchedule(begin_step=1, end_step=-1,
                                                                 alpha_decrement=0.5))
    c.compile(keras.optimizers.Adam(0.003), "mse")
    h = c.fit(X, Y, epochs=2, batch_size=32, verbose=0, callbacks=[mctf.CompressionCallback()])
    assert np.isfinite(h.history["loss"]).all()
    c.save(tmp_path / "c.keras")
    back = keras.models.load_model(tmp_path / "c.keras", compile=False)
    for a, b in zip(back.layers, c.layers):
        if isinstance(b, mctf.CompressedDense):
            assert int(a.step.numpy()) == int(b.step.numpy())
            a.sync_trainable()
    np.testing.assert_allclose(back.predict(X, verbose=0), c.predict(X, verbose=0), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("comp, kind", [
    (mc.InputOutputCompressor(2, 2, input_block_size=8, output_block_size=4), "input_output"),
    (mc.BlockDiagonalCompressor(4), "block_diagonal"),
], ids=["io", "block"])
def test_embedding_and_compressed_kernel(comp, kind, tmp_path):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 40, (64, 3))
    Y = rng.standard_normal((64, 1)).astype(np.float32)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(40, 8),
                              keras.layers.Flatten(), MyDense(16, activation="tanh"),
                              keras.layers.Dense(1)])
    c = mctf.apply_compression(
        model, comp, schedule=mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0),
        filter_fn=lambda layer: isinstance(layer, (keras.layers.Embedding, MyDense)))
    emb, ker = c.layers[0], c.layers[2]
    assert isinstance(emb, mctf.CompressedEmbedding) and emb.plan.kind == kind
    assert isinstance(ker, mctf.CompressedKernel) and ker.plan.kind == kind
    c.compile(keras.optimizers.Adam(0.01), "mse")
    h = c.fit(ids, Y, epochs=2, batch_size=32, verbose=0, callbacks=[mctf.CompressionCallback()])
    assert np.isfinite(h.history["loss"]).all()
    stripped = mctf.strip_compression(c)
    femb, fker = stripped.layers[0], stripped.layers[2]
    assert isinstance(femb, mctf.FactoredEmbedding) and isinstance(fker, mctf.FactoredKernel)
    fe, fk = femb.factorization(), fker.factorization()
    assert fe.kind == fk.kind == kind and fe.shape == (40, 8) and fk.shape == (24, 16)
    if kind == "block_diagonal":
        assert fe.n_blocks == fk.n_blocks == 4
    else:
        assert fe.P.shape == (8, 4) and fe.Q.shape == (2, 4) and fe.C.shape == (20, 4)
    assert_close(femb(ids).numpy(), fe.to_dense()[ids], 1e-6)
    k_bias = fker.layer.bias.numpy()
    k1, b1 = (w.numpy() for w in c.layers[3].weights)
    h = np.tanh(fe.to_dense()[ids].reshape(64, -1) @ fk.to_dense() + k_bias)
    y = stripped.predict(ids, verbose=0)
    assert_close(y, h @ k1 + b1, 1e-5)
    stripped.save(tmp_path / "e.keras")
    back = keras.models.load_model(tmp_path / "e.keras")
    np.testing.assert_array_equal(back.predict(ids, verbose=0), y)
