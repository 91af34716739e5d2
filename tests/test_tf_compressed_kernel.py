"""apply_compression on layers other than Keras' Dense and Embedding (issue 9): any layer whose
2-D kernel ``filter_fn`` selects is wrapped in ``CompressedKernel`` (the layer's own ``call``
with its kernel replaced by A, the blend, then the factors' product) and stripped to
``FactoredKernel`` (the kernel variable gone, rebuilt from the factors each call).

References: the same layer class called on the numpy matrix the phase prescribes (A; the
blend ``alpha*A + (1 - alpha)*to_dense()`` of the numpy Factorization built from the layer's
parts; ``to_dense()``), numpy byte counts of the compressor's own ``compress``, and Keras'
``.keras`` / SavedModel round trips compared bitwise.

Tolerance: outputs against the reference layer 1e-5 (float32) / 1e-12 (float64) of the
largest output: the same ops on a matrix that differs by the rounding of the blend (a few
ulps), far below a wrong phase, alpha or factor (errors of the order of the outputs).
"""

import os

import numpy as np
import pytest
from numpy.testing import assert_array_equal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress.tf as mctf  # noqa: E402
from matcompress.compressors import (  # noqa: E402
    KMeansCompressor,
    LowRankCompressor,
    PruningCompressor,
)
from matcompress.tf.layers import to_factorization  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

TOL = {"float32": 1e-5, "float64": 1e-12}


def assert_close(got, ref, dtype):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(np.abs(ref).max(), 1e-30)
    assert np.abs(got - ref).max() <= TOL[dtype] * scale, np.abs(got - ref).max() / scale


@keras.saving.register_keras_serializable(package="test_tf_compressed_kernel")
class TransposedLinear(keras.layers.Layer):
    """A custom layer that uses its kernel (units, m) as ``x @ kernel.T``: not Dense's way."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(self.units, input_shape[-1]))
        self.shift = self.add_weight(name="shift", shape=(self.units,), initializer="ones")

    def call(self, x):
        return tf.matmul(x, self.kernel, transpose_b=True) * self.shift

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="test_tf_compressed_kernel")
class MyDense(keras.layers.Dense):
    """A Dense subclass: wrapped by CompressedKernel, not turned into CompressedDense."""


def _data(seed, n=64, m=12):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m)).astype("float32")
    return x, (x[:, :3].sum(1) > 0).astype("int32")


def _einsum_model(dtype="float32"):
    keras.utils.set_random_seed(1)
    inp = keras.Input((12,), dtype=dtype)
    h = keras.layers.EinsumDense("ab,bc->ac", output_shape=24, bias_axes="c",
                                 activation="tanh", name="ein", dtype=dtype)(inp)
    return keras.Model(inp, keras.layers.Dense(2, name="out", dtype=dtype)(h))


def _parts_factorization(wrapper):
    return to_factorization(wrapper.plan.kind, wrapper.plan.static, wrapper._core.arrays())


def _reference(layer, kernel, x):
    """``layer``'s own call with its kernel replaced by the numpy matrix ``kernel``."""
    clone = layer.__class__.from_config(layer.get_config())
    clone.build_from_config(layer.get_build_config())
    clone.set_weights(layer.get_weights())
    attr = "_kernel" if hasattr(clone, "_kernel") else "kernel"
    getattr(clone, attr).assign(kernel)
    return clone(x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_phases_of_a_custom_layer(dtype):
    """Before begin_step the layer computes with A; during the blend with alpha*A + (1-alpha)W;
    after the drop with W alone and A gets no gradient and keeps its value."""
    keras.utils.set_random_seed(0)
    layer = TransposedLinear(10, dtype=dtype)
    layer.build((None, 16))
    schedule = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)
    wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=3), schedule=schedule,
                                     filter_fn=lambda l: True)
    assert isinstance(wrapper, mctf.CompressedKernel)
    assert wrapper.layer is not layer  # a copy: the original layer is left alone
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(dtype)
    A = layer.kernel.numpy()
    for step in range(2):  # the full matrix
        assert_close(wrapper(x, training=True), _reference(layer, A, x), dtype)
    # step 2: snapshot, alpha = 0.5; step 3: alpha 0; from step 4 A is dropped
    got = wrapper(x, training=True)
    W = _parts_factorization(wrapper).to_dense()
    assert np.linalg.matrix_rank(W) == 3
    assert_close(got, _reference(layer, 0.5 * A + 0.5 * W, x), dtype)
    wrapper(x, training=True)
    for _ in range(2):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(wrapper(x, training=True) ** 2)
        grads = tape.gradient(y, [wrapper.kernel] + list(wrapper._parts.values()))
        assert grads[0] is None
        assert all(g is not None for g in grads[1:])
    assert_close(wrapper(x, training=False), _reference(layer, W, x), dtype)
    assert_array_equal(wrapper.kernel.numpy(), A)
    assert int(wrapper.step.numpy()) == 6


def test_einsum_dense_fit_strip_and_round_trips(tmp_path):
    x, y = _data(0)
    model = _einsum_model()
    compressor = KMeansCompressor(n_codes=16, random_state=0)
    schedule = mctf.CompressionSchedule(begin_step=4, update_every=2, alpha_decrement=0.5)
    cm = mctf.apply_compression(model, compressor, schedule=schedule,
                                filter_fn=lambda l: l.name == "ein")
    assert [type(l).__name__ for l in cm.layers[1:]] == ["CompressedKernel", "Dense"]
    assert_close(cm.predict(x, verbose=0), model.predict(x, verbose=0), "float32")
    cm.compile(keras.optimizers.Adam(0.01),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    a_before = cm.get_layer("ein").kernel.numpy()
    hist = cm.fit(x, y, batch_size=16, epochs=4, callbacks=[mctf.CompressionCallback()],
                  verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    wrapper = cm.get_layer("ein")
    assert int(wrapper.step.numpy()) == 16
    assert not wrapper.kernel.trainable
    assert all(v is not wrapper.kernel for v in cm.trainable_variables)
    # A moved until its drop step (8) and not after
    assert not np.array_equal(wrapper.kernel.numpy(), a_before)

    stripped = mctf.strip_compression(cm)
    fk = stripped.get_layer("ein")
    assert isinstance(fk, mctf.FactoredKernel)
    assert fk.layer._kernel is None
    assert all(tuple(v.shape) != (12, 24) for v in stripped.weights)
    assert_close(stripped.predict(x, verbose=0), cm.predict(x, verbose=0), "float32")
    f = fk.factorization()
    expected = compressor.compress(wrapper.kernel.numpy())
    assert f.nbytes == expected.nbytes
    assert mctf.compressed_nbytes(stripped) == (f.nbytes, 12 * 24 * 4)

    for name, m in (("compressed", cm), ("stripped", stripped)):
        path = str(tmp_path / f"{name}.keras")
        m.save(path)
        loaded = keras.models.load_model(path)
        assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0))
    stripped.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    assert_array_equal(served.serve(x).numpy(), stripped.predict(x, verbose=0))


def test_lstm_input_kernel_through_an_attribute_path(tmp_path):
    """filter_fn returns "cell.kernel": an LSTM's input kernel, used inside its while loop."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 5, 12)).astype("float32")
    y = rng.standard_normal((32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((5, 12)), keras.layers.LSTM(8, name="lstm"),
                              keras.layers.Dense(4, name="out")])
    schedule = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=1.0)
    cm = mctf.apply_compression(
        model, PruningCompressor(compression_ratio=2.0), schedule=schedule,
        filter_fn=lambda l: "cell.kernel" if l.name == "lstm" else False)
    wrapper = cm.get_layer("lstm")
    assert isinstance(wrapper, mctf.CompressedKernel) and wrapper.kernel.shape == (12, 32)
    assert_close(cm.predict(x, verbose=0), model.predict(x, verbose=0), "float32")
    cm.compile(keras.optimizers.Adam(0.01), "mse")
    hist = cm.fit(x, y, batch_size=8, epochs=3, callbacks=[mctf.CompressionCallback()],
                  verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    W = _parts_factorization(wrapper).to_dense()
    assert np.count_nonzero(W) <= W.size // 2 + 1
    stripped = mctf.strip_compression(cm)
    assert stripped.get_layer("lstm").layer.cell.kernel is None
    assert_close(stripped.predict(x, verbose=0), cm.predict(x, verbose=0), "float32")
    path = str(tmp_path / "lstm.keras")
    stripped.save(path)
    assert_array_equal(keras.models.load_model(path).predict(x, verbose=0),
                       stripped.predict(x, verbose=0))


def test_subclasses_are_wrapped_and_keep_their_own_call():
    keras.utils.set_random_seed(3)
    dense = MyDense(6, activation="relu", name="mine")
    dense.build((None, 9))
    wrapped = mctf.apply_compression(dense, LowRankCompressor(rank=2),
                                     schedule=mctf.CompressionSchedule(begin_step=0))
    assert isinstance(wrapped, mctf.CompressedKernel) and isinstance(wrapped.layer, MyDense)
    assert wrapped.kernel_attr == "kernel"

    class MyEmbedding(keras.layers.Embedding):
        pass

    emb = MyEmbedding(20, 4, name="emb")
    emb.build(None)
    wrapped = mctf.apply_compression(emb, LowRankCompressor(rank=2),
                                     schedule=mctf.CompressionSchedule(begin_step=0))
    assert wrapped.kernel_attr == "embeddings"
    ids = np.array([[1, 5, 19]])
    W = None
    out = wrapped(ids, training=True)  # step 0: snapshot and alpha 0.9
    W = _parts_factorization(wrapped).to_dense()
    A = emb.embeddings.numpy()
    assert_close(out, (0.9 * A + 0.1 * W)[ids], "float32")


def test_subclassed_model_in_place():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = TransposedLinear(8, name="body")
            self.head = keras.layers.Dense(2, name="head")

        def call(self, x, training=None):
            return self.head(self.body(x))

    keras.utils.set_random_seed(4)
    x, y = _data(4)
    net = Net()
    ref = net(x).numpy()
    out = mctf.apply_compression(net, LowRankCompressor(rank=2),
                                 schedule=mctf.CompressionSchedule(begin_step=1),
                                 filter_fn=lambda l: l.name == "body")
    assert out is net and isinstance(net.body, mctf.CompressedKernel)
    assert isinstance(net.head, keras.layers.Dense)
    assert_close(net(x), ref, "float32")
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=2, batch_size=32, callbacks=[mctf.CompressionCallback()], verbose=0)
    assert int(net.body.step.numpy()) == 4


def test_layers_without_a_2d_kernel_are_refused():
    c = LowRankCompressor(rank=1)
    s = mctf.CompressionSchedule()
    # (convolutions' N-D kernels are compressed through their 2-D view: tests/test_tf_conv.py)
    conv = keras.layers.Conv1DTranspose(2, 3, name="conv")
    conv.build((None, 6, 4))
    with pytest.raises(TypeError, match=r"'conv' of type Conv1DTranspose: its kernel of shape "
                                        r"\(3, 2, 4\) is not 2-D"):
        mctf.apply_compression(conv, c, schedule=s)
    dense = keras.layers.Dense(3, name="d")
    dense.build((None, 4))
    with pytest.raises(TypeError, match="'d' of type Dense has no weight variable 'bias2'"):
        mctf.apply_compression(dense, c, schedule=s, filter_fn=lambda l: "bias2")
    lstm = keras.layers.LSTM(3, name="rnn")
    lstm.build((None, 2, 4))
    with pytest.raises(TypeError, match="'rnn' of type LSTM has no attribute 'cel.kernel'"):
        mctf.apply_compression(lstm, c, schedule=s, filter_fn=lambda l: "cel.kernel")
    with pytest.raises(ValueError, match="compressed already"):
        wrapped = mctf.apply_compression(dense, c, schedule=s, filter_fn=lambda l: "kernel")
        mctf.apply_compression(keras.Sequential([keras.Input((4,)), wrapped]), c, schedule=s)
