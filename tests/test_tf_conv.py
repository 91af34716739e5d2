"""Compressed convolutions (issue 13, item 4): Keras Conv1D / Conv2D / Conv3D kernels compressed
through their 2-D view (prod(kernel_size) * c_in, c_out) by ``apply_compression``
(:class:`matcompress.tf.CompressedConv`), the rank-reduced form (a convolution to ``rank``
filters and a 1x1 projection), calibration on image patches, ``strip_compression`` to plain
Keras convolutions or :class:`matcompress.tf.FactoredConv`, ``compressed_nbytes``, ``.keras``
and SavedModel round trips.

References, independent of the code under test: ``tf.nn.conv1d`` / ``conv2d`` / ``conv3d``
(causal padding done by ``np.pad``, channels_first by transposes) on the kernel rebuilt by the
numpy ``Factorization.to_dense()`` of the layer's parts, reshaped; numpy im2col for the
patches; numpy's SVD for the rank-reduced initialization; the numpy compressors' ``compress``
(with the numpy patches for calibration) and their ``nbytes``; a ``tf.GradientTape`` on the
reference convolution for the gradients of the low-rank factors.

Tolerances: outputs 1e-5 (float32) / 1e-12 (float64) of the largest output (the same
convolution on kernels that differ by the rounding of a blend or of a reshaped product, far
below a wrong phase, factor or layout, whose errors are of the order of the outputs);
gradients 1e-4 / 1e-10 relative to the largest entry (a product of two convolutions'
roundings); the SVD initialization 1e-5 / 1e-12 of ||A||_2 (tf's SVD against numpy's, gaps
> 0.05 ||A|| on these seeded kernels); bitwise where the same ops run on the same values
(stripped and reloaded models, patches gathered from the input).

Runtime: about 20 s on 2 cores (kernels of a few hundred weights, 7 x 7 images).
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.compressors import (  # noqa: E402
    KMeansCompressor,
    LowRankCompressor,
    PruningCompressor,
)
from matcompress.tf.conv import svd_split  # noqa: E402
from matcompress.tf.layers import to_factorization  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

TOL = {"float32": 1e-5, "float64": 1e-12}
GRAD_TOL = {"float32": 1e-4, "float64": 1e-10}


def assert_close(got, ref, dtype, tol=TOL):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-30)
    assert np.abs(got - ref).max() <= tol[dtype] * scale, np.abs(got - ref).max() / scale


def reference_conv(layer, kernel, x, bias=True):
    """``layer``'s convolution of x with ``kernel`` (numpy), by tf.nn, plus its bias and
    activation."""
    x = tf.convert_to_tensor(x)
    first = layer.data_format == "channels_first"
    if first:
        x = tf.transpose(x, [0] + list(range(2, layer.rank + 2)) + [1])
    padding = layer.padding.upper()
    if padding == "CAUSAL":
        pad = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
        x = tf.constant(np.pad(x.numpy(), [(0, 0), (pad, 0), (0, 0)]))
        padding = "VALID"
    kernel = tf.constant(np.asarray(kernel, x.dtype.as_numpy_dtype))
    fn = {1: tf.nn.conv1d, 2: tf.nn.conv2d, 3: tf.nn.conv3d}[layer.rank]
    strides = list(layer.strides) if layer.rank > 1 else layer.strides[0]
    if layer.rank == 3:
        strides = [1] + list(layer.strides) + [1]
        dil = [1] + list(layer.dilation_rate) + [1]
    else:
        dil = list(layer.dilation_rate)
    y = fn(x, kernel, strides, padding, dilations=dil)
    if bias and layer.use_bias:
        y = y + layer.bias.numpy().astype(y.dtype.as_numpy_dtype)
    if layer.activation is not None:
        y = layer.activation(y)
    if first:
        y = tf.transpose(y, [0, layer.rank + 1] + list(range(1, layer.rank + 1)))
    return y.numpy()


def im2col(layer, x):
    """numpy image patches (rows, prod(kernel_size) * c_in) of a channels_last Conv2D's input,
    rows in output order (the left operand of the kernel's 2-D view)."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    n, H, W, c = x.shape
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if layer.padding == "same":
        oh, ow = -(-H // sh), -(-W // sw)
        ph = max((oh - 1) * sh + eh - H, 0)
        pw = max((ow - 1) * sw + ew - W, 0)
        x = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
    else:
        oh, ow = (H - eh) // sh + 1, (W - ew) // sw + 1
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                win = x[b, i * sh:i * sh + eh:dh, j * sw:j * sw + ew:dw, :]
                rows.append(win.reshape(-1))
    return np.array(rows)


def layer_factorization(layer):
    return to_factorization(layer.plan.kind, layer.plan.static, layer._core.arrays())


def reconstructed(layer):
    """The kernel rebuilt (numpy) from a CompressedConv's current parts."""
    return layer_factorization(layer).to_dense().reshape(layer._kernel_shape)


def make_conv(kind="conv2d", dtype="float32", seed=0, c_in=4, filters=8, input_hw=7, **kw):
    keras.utils.set_random_seed(seed)
    cls = {"conv1d": keras.layers.Conv1D, "conv2d": keras.layers.Conv2D,
           "conv3d": keras.layers.Conv3D}[kind]
    kw.setdefault("kernel_size", 3)
    kw.setdefault("bias_initializer", "random_normal")
    layer = cls(filters, name="conv", dtype=dtype, **kw)
    rank = {"conv1d": 1, "conv2d": 2, "conv3d": 3}[kind]
    spatial = (input_hw,) * rank
    shape = ((None, c_in) + spatial if kw.get("data_format") == "channels_first"
             else (None,) + spatial + (c_in,))
    layer.build(shape)
    x_dtype = "float32" if dtype.startswith("mixed") else dtype
    x = np.random.default_rng(seed + 100).standard_normal((3,) + shape[1:]).astype(x_dtype)
    return layer, x


# ---- outputs through the phases --------------------------------------------------------------

PHASE_CASES = {
    "conv2d-same-lowrank": ("conv2d", dict(padding="same", activation="relu"),
                            lambda: LowRankCompressor(rank=3)),
    "conv2d-valid-stride2-kmeans": ("conv2d", dict(strides=2),
                                    lambda: KMeansCompressor(n_codes=8, random_state=0)),
    "conv2d-dilated-pruning": ("conv2d", dict(dilation_rate=2, padding="same",
                                              activation="tanh"),
                               lambda: PruningCompressor(compression_ratio=2)),
    "conv2d-channels-first-simhash": ("conv2d", dict(data_format="channels_first",
                                                     padding="same"),
                                      lambda: mc.compressors.get("simhash", n_bits=64,
                                                                 random_state=0)),
    "conv2d-groups2-dictionary": ("conv2d", dict(groups=2, use_bias=False),
                                  lambda: mc.compressors.get("dictionary", n_atoms=6,
                                                             n_nonzero_coefs=2,
                                                             random_state=0)),
    "conv1d-causal-dilated-lowrank": ("conv1d", dict(padding="causal", dilation_rate=2),
                                      lambda: LowRankCompressor(rank=2)),
    "conv1d-same-stride2-kmeans": ("conv1d", dict(padding="same", strides=2,
                                                  activation="relu"),
                                   lambda: KMeansCompressor(n_codes=4, random_state=0)),
    "conv3d-lowrank": ("conv3d", dict(kernel_size=2), lambda: LowRankCompressor(rank=2)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(PHASE_CASES))
def test_phases_equal_the_convolution_on_the_reconstructed_kernel(case, dtype):
    """A before the snapshot, the blend alpha*A + (1-alpha)*W, then W alone: each equals the
    tf.nn convolution on that kernel; A gets no gradient once dropped and keeps its value."""
    if dtype == "float64" and case.startswith("conv3d"):
        pytest.skip("one dtype is enough for the 3-D case")
    if dtype == "float64" and "channels-first" in case:
        pytest.skip("TensorFlow's CPU Conv2D takes NCHW in float32 only (Keras' own layer "
                    "fails too)")
    kind, kw, make = PHASE_CASES[case]
    layer, x = make_conv(kind, dtype, input_hw=5 if kind == "conv3d" else 7, **kw)
    sch = mctf.CompressionSchedule(begin_step=1, update_every=1, alpha_decrement=0.5)
    wrapper = mctf.apply_compression(layer, make(), schedule=sch)
    assert isinstance(wrapper, mctf.CompressedConv) and wrapper.form == "reconstructed"
    A = layer.kernel.numpy()
    m = int(np.prod(A.shape[:-1]))
    assert wrapper._core.shape == (m, A.shape[-1])
    assert_close(wrapper(x, training=True), reference_conv(layer, A, x), dtype)  # step 0
    got = wrapper(x, training=True)  # step 1: the snapshot, alpha 0.5
    W = reconstructed(wrapper)
    assert not np.allclose(W, A)
    assert_close(got, reference_conv(layer, 0.5 * A + 0.5 * W, x), dtype)
    wrapper(x, training=True)  # step 2: alpha 0, A dropped from the next step on
    wrapper.sync_trainable()
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(wrapper(x, training=True) ** 2)
    grads = tape.gradient(y, [wrapper.kernel] + [v for v in wrapper._parts.values()
                                                 if v.trainable])
    assert grads[0] is None and all(g is not None for g in grads[1:])
    assert_close(wrapper(x, training=False), reference_conv(layer, W, x), dtype)
    assert_array_equal(wrapper.kernel.numpy(), A)


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       padding=st.sampled_from(["same", "valid"]), c_in=st.integers(1, 4),
       filters=st.integers(1, 5), hw=st.integers(5, 8), rank=st.integers(1, 5),
       form=st.sampled_from(["reconstructed", "rank_reduced"]), seed=st.integers(0, 2**16))
def test_random_conv2d_shapes_match_the_reference(k, stride, dilation, padding, c_in, filters,
                                                   hw, rank, form, seed):
    """Random kernel sizes, strides, dilations, paddings and widths, both forms: after the
    snapshot (alpha 0) the output is tf.nn.conv2d on the rank-r truncated SVD of the view."""
    if stride > 1 and dilation > 1:
        stride = 1  # Keras refuses both at once
    layer, x = make_conv("conv2d", seed=seed % 97, c_in=c_in, filters=filters, input_hw=hw,
                         kernel_size=k, strides=stride, dilation_rate=dilation,
                         padding=padding)
    A = layer.kernel.numpy()
    view = A.reshape(-1, filters).astype(np.float64)
    rank = min(rank, *view.shape)
    sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=rank), schedule=sch,
                                     conv_form=form)
    y = wrapper(x, training=True)
    U, s_, Vt = np.linalg.svd(view, full_matrices=False)
    best = (U[:, :rank] * s_[:rank]) @ Vt[:rank]
    W = reconstructed(wrapper)
    # tf's SVD against numpy's: exact up to rounding unless singular values tie
    if rank == len(s_) or s_[rank - 1] - s_[rank] > 0.05 * s_[0]:
        assert np.abs(W.reshape(view.shape) - best).max() <= 1e-4 * s_[0]
    assert_close(y, reference_conv(layer, W, x), "float32")


BUILTIN_PARAMS = {
    "low_rank": dict(compression_ratio=2),
    "kmeans": dict(compression_ratio=4, random_state=0),
    "simhash": dict(compression_ratio=2, random_state=0),
    "pruning": dict(compression_ratio=2),
    "dictionary": dict(compression_ratio=2, random_state=0),
    "scaled_kmeans": dict(n_codes=8, group_size=8, random_state=0),
    "additive": dict(n_codebooks=2, n_codes=16, block_size=4, random_state=0),
    "low_rank_residual": dict(compression_ratio=3, random_state=0),
    "outliers": dict(compression_ratio=4, random_state=0),
    "prune_kmeans": dict(compression_ratio=4, random_state=0),
    "composite": dict(compressors=["low_rank", "kmeans"], compression_ratio=2.5,
                      random_state=0),
    "auto": dict(compression_ratio=4, random_state=0),
    "block": dict(compression_ratio=2),
    "mixed_block": dict(compression_ratio=2),
    "input_output": dict(compression_ratio=2),
}


def test_every_builtin_compressor_is_covered():
    builtin = {n for n, cls in mc.compressors._REGISTRY.items()
               if cls.__module__.startswith("matcompress.")}
    assert builtin <= set(BUILTIN_PARAMS)


class Halves(mc.compressors.MatrixCompressor):
    """A user compressor: every weight rounded to a multiple of 1/2 of the largest one (a
    codebook of 5 values)."""

    name = "test_tf_conv_halves"

    def compress(self, A, *, grad=None):
        A = np.asarray(A)
        top = np.abs(A).max()
        book = (np.arange(-2, 3) * top / 2).astype(A.dtype).reshape(-1, 1)
        codes = np.abs(A.reshape(-1, 1) - book.T).argmin(1).astype(np.uint8)
        return mc.factors.Codebook(codes.reshape(A.shape), book, A.shape[1])


@pytest.mark.parametrize("name", sorted(BUILTIN_PARAMS) + ["user"])
def test_every_compressor_trains_and_strips(name):
    """Each built-in compressor (and a user's) on a Conv2D: the snapshot equals the numpy
    compressor on the kernel's view, the outputs equal tf.nn.conv2d on the reconstructed kernel,
    the trainable parts get finite gradients, not all zero, and the plain strip gives the same
    outputs."""
    layer, x = make_conv("conv2d", padding="same", activation="relu")
    comp = Halves() if name == "user" else mc.compressors.get(name, **BUILTIN_PARAMS[name])
    sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    wrapper = mctf.apply_compression(layer, comp, schedule=sch)
    A = layer.kernel.numpy()
    view = A.reshape(-1, A.shape[-1])
    with tf.GradientTape() as tape:
        y = wrapper(x, training=True)
        loss = tf.reduce_sum(y * np.random.default_rng(5).standard_normal(y.shape))
    trainable = [v for v in wrapper._parts.values() if v.trainable]
    grads = tape.gradient(loss, trainable)
    assert trainable and all(g is not None for g in grads)
    grads = [tf.convert_to_tensor(g).numpy() for g in grads]
    assert all(np.isfinite(g).all() for g in grads)
    assert any(np.abs(g).max() > 0 for g in grads)
    f = layer_factorization(wrapper)
    ref = comp.resolve(view).compress(view) if name != "user" else comp.compress(view)
    assert f.kind == ref.kind and f.nbytes == ref.nbytes
    if name == "dictionary":  # MOD in the graph, K-SVD in numpy: errors within 10 %
        err = np.linalg.norm(view - f.to_dense())
        assert err <= 1.1 * np.linalg.norm(view - ref.to_dense())
    elif name == "low_rank":  # tf's exact SVD against numpy's randomized one
        assert np.abs(f.to_dense() - ref.to_dense()).max() <= 1e-4 * np.linalg.norm(view, 2)
    else:
        np.testing.assert_allclose(f.to_dense(), ref.to_dense(), rtol=1e-5,
                                   atol=1e-5 * np.abs(view).max())
    W = f.to_dense().reshape(A.shape)
    assert_close(y, reference_conv(layer, W, x), "float32")
    plain = mctf.strip_compression(wrapper)
    assert type(plain) is keras.layers.Conv2D
    assert_close(plain(x), reference_conv(layer, W, x), "float32")


def test_gradients_of_the_low_rank_factors_equal_the_reference():
    """d loss / d (left, right) of a compressed Conv2D (both forms) equal a GradientTape on
    tf.nn.conv2d(x, reshape(left @ right))."""
    for dtype in ("float32", "float64"):
        for form in ("reconstructed", "rank_reduced"):
            layer, x = make_conv("conv2d", dtype, padding="same", strides=2,
                                 activation="tanh")
            sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
            wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=3), schedule=sch,
                                             conv_form=form)
            wrapper(x, training=True)  # the snapshot
            dy = np.random.default_rng(6).standard_normal(wrapper(x).shape).astype(dtype)
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(wrapper(x, training=True) * dy)
            parts = [wrapper._parts["left"], wrapper._parts["right"]]
            got = tape.gradient(loss, parts)
            L = tf.Variable(parts[0].numpy())
            R = tf.Variable(parts[1].numpy())
            with tf.GradientTape() as tape:
                K = tf.reshape(L @ R, layer.kernel.shape)
                y = tf.nn.conv2d(x, K, 2, "SAME") + layer.bias
                ref_loss = tf.reduce_sum(tf.tanh(y) * dy)
            want = tape.gradient(ref_loss, [L, R])
            assert_close(loss, ref_loss, dtype)
            for g, w in zip(got, want):
                assert np.abs(w.numpy()).max() > 0
                assert_close(tf.convert_to_tensor(g), w, dtype, GRAD_TOL)


# ---- in model.fit ----------------------------------------------------------------------------

def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((7, 7, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Reshape((49, 8), name="reshape"),
        keras.layers.Conv1D(6, 3, strides=2, activation="relu", name="c1d"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(2, name="out")])


def _cnn_data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 7, 7, 3)).astype("float32")
    y = (x[:, :3, :3, 0].sum((1, 2)) > 0).astype("int32")
    return x, y


@keras.saving.register_keras_serializable(package="test_tf_conv")
class DoubledConv(keras.layers.Conv2D):
    """A Conv2D subclass with its own call."""

    def call(self, inputs):
        return 2.0 * super().call(inputs)


def test_default_filter_selects_convolutions_and_subclasses_need_filter_fn():
    model = _cnn()
    cm = mctf.apply_compression(model, LowRankCompressor(rank=2),
                                schedule=mctf.CompressionSchedule(begin_step=1))
    kinds = {layer.name: type(layer).__name__ for layer in cm.layers}
    assert kinds == {"c1": "CompressedConv", "reshape": "Reshape", "c1d": "CompressedConv",
                     "flatten": "Flatten", "out": "CompressedDense"}
    x, _ = _cnn_data()
    assert_close(cm.predict(x, verbose=0), model.predict(x, verbose=0), "float32")

    keras.utils.set_random_seed(1)
    sub = keras.Sequential([keras.Input((7, 7, 3)), DoubledConv(4, 3, name="dc")])
    with pytest.warns(UserWarning, match="selected no layer"):
        mctf.apply_compression(sub, LowRankCompressor(rank=2),
                               schedule=mctf.CompressionSchedule())
    wrapped = mctf.apply_compression(sub, LowRankCompressor(rank=2),
                                     schedule=mctf.CompressionSchedule(begin_step=5),
                                     filter_fn=lambda layer: layer.name == "dc")
    layer = wrapped.get_layer("dc")
    assert isinstance(layer, mctf.CompressedConv) and isinstance(layer.layer, DoubledConv)
    # the subclass's own call runs (doubling), before the snapshot on A
    A = sub.layers[0].kernel.numpy()
    assert_close(wrapped(x), 2.0 * reference_conv(sub.layers[0], A, x), "float32")


@pytest.fixture(scope="module")
def fit_run():
    """The CNN compressed by k-means (convs and Dense), fitted through the schedule: snapshot at
    step 2, alpha 0.5 at steps 2-3, 0 from the drop step 4; the parts freeze at end_step 10."""
    model = _cnn()
    x, y = _cnn_data()
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sch = mctf.CompressionSchedule(begin_step=2, end_step=10, update_every=2,
                                   alpha_decrement=0.5)
    cm = mctf.apply_compression(model, KMeansCompressor(n_codes=8, random_state=0),
                                schedule=sch)
    cm.compile(keras.optimizers.Adam(0.01),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    conv = cm.get_layer("c1")
    log = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            log.append((int(conv.step.numpy()), conv.kernel.numpy().copy(),
                        {k: v.numpy().copy() for k, v in conv._parts.items()},
                        conv.kernel.trainable))

    hist = cm.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                  callbacks=[mctf.CompressionCallback(), Watch()])
    return {"model": model, "cm": cm, "x": x, "y": y, "log": log, "hist": hist}


def test_fit_blends_drops_and_freezes_the_convolution(fit_run):
    log, conv = fit_run["log"], fit_run["cm"].get_layer("c1")
    assert [t for t, *_ in log] == list(range(12))
    assert int(conv.step.numpy()) == 12
    by_step = {t: (A, parts, on) for t, A, parts, on in log}
    # A trains until the drop step (4), then is neither trainable nor moved.
    assert not np.array_equal(by_step[1][0], by_step[3][0])
    assert all(by_step[t][2] for t in range(4)) and not any(by_step[t][2] for t in range(4, 12))
    for t in range(5, 12):
        assert_array_equal(by_step[t][0], by_step[4][0])
    assert_array_equal(conv.kernel.numpy(), by_step[4][0])
    # The codebook trains after the snapshot and is frozen from end_step (10).
    books = [by_step[t][1]["codebook"] for t in range(3, 12)]
    assert not np.array_equal(books[1], books[5])
    assert_array_equal(by_step[11][1]["codebook"], by_step[10][1]["codebook"])
    assert_array_equal(conv._parts["codebook"].numpy(), by_step[10][1]["codebook"])
    # the codes never change after the snapshot
    for t in range(3, 12):
        assert_array_equal(by_step[t][1]["codes"], by_step[3][1]["codes"])
    assert all(v is not conv.kernel for v in fit_run["cm"].trainable_variables)


def test_fit_outputs_strip_and_bytes(fit_run, tmp_path):
    cm, x = fit_run["cm"], fit_run["x"]
    conv, c1d = cm.get_layer("c1"), cm.get_layer("c1d")
    # the model's outputs: the reference convolutions on the reconstructed kernels
    h = reference_conv(conv.layer, reconstructed(conv), x).reshape(len(x), 49, 8)
    h = reference_conv(c1d.layer, reconstructed(c1d), h).reshape(len(x), -1)
    out = cm.get_layer("out")
    W = layer_factorization(out).to_dense()
    assert_close(cm.predict(x, verbose=0), h @ W + out.bias.numpy(), "float32")

    plain = mctf.strip_compression(cm)
    assert [type(layer).__name__ for layer in plain.layers] == [
        "Conv2D", "Reshape", "Conv1D", "Flatten", "FactoredDense"]
    p1 = plain.get_layer("c1")
    assert p1.activation is keras.activations.relu and p1.padding == "same"
    assert_array_equal(p1.kernel.numpy(), reconstructed(conv))
    assert_array_equal(p1.bias.numpy(), conv.layer.bias.numpy())
    y_plain = plain.predict(x, verbose=0)
    assert_close(y_plain, cm.predict(x, verbose=0), "float32")

    factored = mctf.strip_compression(cm, convs="factored")
    assert [type(layer).__name__ for layer in factored.layers] == [
        "FactoredConv", "Reshape", "FactoredConv", "Flatten", "FactoredDense"]
    assert all(len(v.shape) != 4 for v in factored.weights)  # no dense conv kernel kept
    y_fact = factored.predict(x, verbose=0)
    assert_close(y_fact, y_plain, "float32")
    # bytes: 8 codes stored 4-bit packed (two per byte along a row) plus the float32 codebook;
    # views 27 x 8 (c1), 24 x 6 (c1d) and the Dense kernel 144 x 2
    conv_bytes = 27 * 4 + 8 * 4
    c1d_bytes = 24 * 3 + 8 * 4
    dense_bytes = 144 * 1 + 8 * 4
    want = (conv_bytes + c1d_bytes + dense_bytes, (27 * 8 + 24 * 6 + 144 * 2) * 4)
    assert mctf.compressed_nbytes(factored) == want
    assert mctf.compressed_nbytes(cm) == want
    assert mctf.compressed_nbytes(plain) == (dense_bytes, 144 * 2 * 4)

    for name, m in (("compressed", cm), ("plain", plain), ("factored", factored)):
        path = str(tmp_path / f"{name}.keras")
        m.save(path)
        loaded = keras.models.load_model(path)
        assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0), name)
    loaded = keras.models.load_model(str(tmp_path / "compressed.keras"))
    assert int(loaded.get_layer("c1").step.numpy()) == 12
    for name, m in (("compressed", cm), ("plain", plain), ("factored", factored)):
        m.export(str(tmp_path / f"saved_{name}"), verbose=False)
        served = tf.saved_model.load(str(tmp_path / f"saved_{name}"))
        assert_array_equal(served.serve(x).numpy(), m.predict(x, verbose=0), name)


def test_fit_trains_the_factors(fit_run):
    hist = fit_run["hist"].history["loss"]
    assert hist[-1] < hist[0]


# ---- calibration -----------------------------------------------------------------------------

def test_patches_are_the_left_operand_of_the_kernel_view():
    for kw in (dict(padding="same"), dict(strides=2), dict(dilation_rate=2, padding="same"),
               dict(strides=(2, 1), padding="same")):
        layer, x = make_conv("conv2d", **kw)
        wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=2),
                                         schedule=mctf.CompressionSchedule(begin_step=5))
        P = wrapper.patches(x).numpy()
        assert_array_equal(P, im2col(layer, x))
        A = layer.kernel.numpy()
        y = reference_conv(layer, A, x, bias=False)
        assert_close(P @ A.reshape(-1, 8), y.reshape(-1, 8), "float32")
        # a cap keeps a subset of the rows, in order, without repeats
        sub = wrapper.patches(x, max_rows=20).numpy()
        rows = {r.tobytes(): i for i, r in enumerate(P)}
        idx = [rows[r.tobytes()] for r in sub]
        assert len(sub) == 20 and idx == sorted(set(idx))
    # Conv1D, causal: the same identity holds
    layer, x = make_conv("conv1d", padding="causal", dilation_rate=2)
    wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=2),
                                     schedule=mctf.CompressionSchedule(begin_step=5))
    P = wrapper.patches(x).numpy()
    A = layer.kernel.numpy()
    assert_close(P @ A.reshape(-1, 8), reference_conv(layer, A, x, bias=False).reshape(-1, 8),
                 "float32")


@pytest.mark.parametrize("form", ["reconstructed", "rank_reduced"])
def test_calibrated_snapshot_uses_the_patches(form):
    """CompressionSchedule(calibrate=True): the snapshot equals the numpy compressor with the
    numpy patches as X (k-means: GPTQ codes; rank-reduced: the whitened low rank, re-split as
    U S and V^T), and it fits the batch's outputs better than the data-free snapshot."""
    layer, x = make_conv("conv2d", padding="same")
    x = x * np.linspace(0.1, 3, 4).astype("float32")  # unequal input channels
    comp = (KMeansCompressor(n_codes=4, random_state=0) if form == "reconstructed"
            else LowRankCompressor(rank=2))
    errs = {}
    for calibrate in (False, True):
        sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0, calibrate=calibrate)
        wrapper = mctf.apply_compression(layer, comp, schedule=sch, conv_form=form)
        wrapper(x, training=True)
        f = layer_factorization(wrapper)
        A = layer.kernel.numpy()
        view = A.reshape(-1, 8)
        X = im2col(layer, x)
        if calibrate:
            ref = comp.compress(view, X=X)
            if form == "rank_reduced":
                ref = svd_split(ref.left, ref.right)
                np.testing.assert_allclose(f.left, ref.left, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(f.right, ref.right, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(f.to_dense(), ref.to_dense(), rtol=1e-4, atol=1e-5)
        errs[calibrate] = np.linalg.norm(X @ (view - f.to_dense()))
    assert errs[True] < errs[False]


def test_grouped_convolutions_factorize_without_inputs():
    layer, x = make_conv("conv2d", groups=2, padding="same")
    sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0, calibrate=True)
    wrapper = mctf.apply_compression(layer, KMeansCompressor(n_codes=4, random_state=0),
                                     schedule=sch)
    assert not wrapper.plan.uses_inputs and wrapper.plan.in_graph
    y = wrapper(x, training=True)
    assert_close(y, reference_conv(layer, reconstructed(wrapper), x), "float32")


def test_mixed_precision_snapshot_reads_the_float32_kernel():
    """Under a mixed_float16 policy the layer computes in float16, but the snapshot factorizes
    the float32 kernel (the numpy compressor's result on it) and the blend runs in float32."""
    layer, x = make_conv("conv2d", dtype="mixed_float16", padding="same")
    A = layer.kernel.numpy()
    assert A.dtype == np.float32
    for form, comp in (("reconstructed", KMeansCompressor(n_codes=8, random_state=0)),
                       ("rank_reduced", LowRankCompressor(rank=3))):
        sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=0.5)
        wrapper = mctf.apply_compression(layer, comp, schedule=sch, conv_form=form)
        y = wrapper(x, training=True)  # snapshot and blend
        assert y.dtype == tf.float16
        f = layer_factorization(wrapper)
        assert f.dtype == np.float32
        ref = comp.compress(A.reshape(-1, 8)).to_dense()
        np.testing.assert_allclose(f.to_dense(), ref, rtol=1e-4, atol=1e-4)
        W = f.to_dense().reshape(A.shape)
        want = reference_conv(layer, 0.5 * A + 0.5 * W, x.astype(np.float32))
        assert np.abs(y.numpy() - want).max() <= 1e-2 * np.abs(want).max()


# ---- the rank-reduced form -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rank_reduced_init_is_the_truncated_svd(dtype):
    layer, x = make_conv("conv2d", dtype, padding="same", activation="relu")
    A = layer.kernel.numpy()
    view = A.reshape(-1, 8).astype(np.float64)
    U, s, Vt = np.linalg.svd(view, full_matrices=False)
    for rank in (3, 8):  # 8 = min(36, 8): full rank
        sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
        wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=rank), schedule=sch,
                                         conv_form="rank_reduced")
        assert wrapper.form == "rank_reduced"
        y = wrapper(x, training=True)
        left = wrapper._parts["left"].numpy().astype(np.float64)
        right = wrapper._parts["right"].numpy().astype(np.float64)
        norm = s[0]
        tol = TOL[dtype] * norm
        best = (U[:, :rank] * s[:rank]) @ Vt[:rank]
        assert np.abs(left @ right - best).max() <= tol
        # left = U_r S_r and right = V_r^T: orthonormal rows, left's columns of norms s
        assert np.abs(right @ right.T - np.eye(rank)).max() <= TOL[dtype] * 10
        assert np.abs(left.T @ left - np.diag(s[:rank] ** 2)).max() <= tol * norm * 10
        # sign-independent: each column of left is +-U_r S_r
        signs = np.sign(np.sum(left * U[:, :rank], 0))
        assert np.abs(left - U[:, :rank] * s[:rank] * signs).max() <= tol * 10
        assert_close(y, reference_conv(layer, best.reshape(A.shape), x), dtype)
        if rank == 8:
            assert np.abs(left @ right - view).max() <= tol
            assert_close(y, layer(x), dtype)


def test_rank_reduced_trains_strips_and_round_trips(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((7, 7, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(12, 3, strides=2, activation="relu", name="c2"),
        keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
    x, y = _cnn_data(1)
    sch = mctf.CompressionSchedule(begin_step=0, update_every=2, alpha_decrement=0.5)
    cm = mctf.apply_compression(model, LowRankCompressor(rank=3), schedule=sch,
                                conv_form="rank_reduced",
                                filter_fn=lambda layer: layer.name in ("c1", "c2"))
    c2 = cm.get_layer("c2")
    assert isinstance(c2, mctf.CompressedConv) and c2.form == "rank_reduced"
    cm.compile(keras.optimizers.Adam(0.01),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = cm.fit(x, y, batch_size=16, epochs=4, verbose=0,
                  callbacks=[mctf.CompressionCallback()])
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert not c2.kernel.trainable
    W = reconstructed(c2)
    assert np.linalg.matrix_rank(W.reshape(-1, 12)) == 3
    h = reference_conv(cm.get_layer("c1").layer, reconstructed(cm.get_layer("c1")), x)
    assert_close(c2(h), reference_conv(c2.layer, W, h), "float32")
    y_cm = cm.predict(x, verbose=0)

    plain = mctf.strip_compression(cm)
    pair = plain.get_layer("c2")
    assert type(pair) is keras.Sequential
    reduce, project = pair.layers
    assert type(reduce) is type(project) is keras.layers.Conv2D
    assert tuple(reduce.kernel.shape) == (3, 3, 8, 3) and reduce.bias is None
    assert reduce.strides == (2, 2) and reduce.padding == "valid"
    assert reduce.activation is keras.activations.linear
    assert tuple(project.kernel.shape) == (1, 1, 3, 12)
    assert project.activation is keras.activations.relu
    assert_array_equal(project.bias.numpy(), c2.layer.bias.numpy())
    assert_close(plain.predict(x, verbose=0), y_cm, "float32")
    # the two plain convolutions store the factors' bytes
    assert sum(int(np.prod(v.shape)) for v in pair.weights) == 72 * 3 + 3 * 12 + 12
    factored = mctf.strip_compression(cm, convs="factored")
    assert isinstance(factored.get_layer("c2"), mctf.FactoredConv)
    assert_close(factored.predict(x, verbose=0), y_cm, "float32")
    assert mctf.compressed_nbytes(factored) == ((72 + 12) * 3 * 4 + (27 + 8) * 3 * 4,
                                                (72 * 12 + 27 * 8) * 4)
    for name, m in (("compressed", cm), ("plain", plain), ("factored", factored)):
        path = str(tmp_path / f"{name}.keras")
        m.save(path)
        assert_array_equal(keras.models.load_model(path).predict(x, verbose=0),
                           m.predict(x, verbose=0))
    plain.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    assert_array_equal(served.serve(x).numpy(), plain.predict(x, verbose=0))


def test_rank_reduced_channels_first_conv1d_and_functional():
    """The projection on axis 1 (channels_first) and a Conv1D with causal padding, in a
    functional model."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((4, 9))
    h = keras.layers.Conv1D(6, 3, data_format="channels_first", padding="causal",
                            activation="relu", name="a")(inp)
    out = keras.layers.Conv1D(5, 2, padding="same", name="b")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(4).standard_normal((3, 4, 9)).astype("float32")
    sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    cm = mctf.apply_compression(model, LowRankCompressor(rank=2), schedule=sch,
                                conv_form="rank_reduced")
    y = cm(x, training=True)
    a, b = cm.get_layer("a"), cm.get_layer("b")
    ha = reference_conv(a.layer, reconstructed(a), x)
    assert_close(y, reference_conv(b.layer, reconstructed(b), ha), "float32")
    plain = mctf.strip_compression(cm)
    assert [type(layer).__name__ for layer in plain.layers[1:]] == ["Sequential",
                                                                   "Sequential"]
    assert_close(plain(x), y, "float32")


# ---- bad input -------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors():
    layer, _ = make_conv("conv2d")  # view 36 x 8
    sch = mctf.CompressionSchedule()
    with pytest.raises(ValueError, match=r"rank must be <= 8 \(min\(m, n\) = 8\); got 9"):
        mctf.apply_compression(layer, LowRankCompressor(rank=9), schedule=sch,
                               conv_form="rank_reduced")
    with pytest.raises(ValueError, match=r"rank must be <= 8 \(min\(m, n\) = 8\); got 9"):
        mctf.apply_compression(layer, LowRankCompressor(rank=9), schedule=sch)
    with pytest.raises(ValueError, match="conv_form='rank_reduced' needs a LowRankCompressor"):
        mctf.apply_compression(layer, KMeansCompressor(n_codes=4), schedule=sch,
                               conv_form="rank_reduced")
    with pytest.raises(ValueError, match="conv_form must be one of"):
        mctf.apply_compression(layer, LowRankCompressor(rank=2), schedule=sch,
                               conv_form="svd")
    grouped, _ = make_conv("conv2d", groups=2)
    with pytest.raises(ValueError, match="'conv': conv_form='rank_reduced' needs groups=1"):
        mctf.apply_compression(grouped, LowRankCompressor(rank=2), schedule=sch,
                               conv_form="rank_reduced")
    lora = keras.layers.Conv2D(4, 3, lora_rank=2, name="lc")
    lora.build((None, 7, 7, 3))
    with pytest.raises(ValueError, match="'lc' uses LoRA"):
        mctf.apply_compression(lora, LowRankCompressor(rank=2), schedule=sch)
    # layers without a kernel, or with one that is not a convolution's
    pool = keras.Sequential([keras.Input((7, 7, 3)), keras.layers.MaxPooling2D(name="pool")])
    with pytest.raises(TypeError, match="'pool' of type MaxPooling2D has no weight variable "
                                        "'kernel'"):
        mctf.apply_compression(pool, LowRankCompressor(rank=2), schedule=sch,
                               filter_fn=lambda layer: True)
    tconv = keras.layers.Conv2DTranspose(4, 3, name="t")
    tconv.build((None, 7, 7, 3))
    with pytest.raises(TypeError, match=r"'t' of type Conv2DTranspose: its kernel of shape "
                                        r"\(3, 3, 4, 3\) is not 2-D"):
        mctf.apply_compression(tconv, LowRankCompressor(rank=2), schedule=sch)
    with pytest.raises(TypeError, match="'conv' of type Conv2D: its bias of shape"):
        mctf.apply_compression(layer, LowRankCompressor(rank=1), schedule=sch,
                               filter_fn=lambda layer: "bias")
    with pytest.raises(TypeError, match="is not a Keras Conv1D, Conv2D or Conv3D"):
        mctf.CompressedConv(keras.layers.Dense(3, name="d"), LowRankCompressor(rank=1))
    with pytest.raises(ValueError, match="kernel_attr='bias'"):
        mctf.CompressedConv(layer, LowRankCompressor(rank=1), kernel_attr="bias")
    wrapper = mctf.apply_compression(layer, LowRankCompressor(rank=2), schedule=sch)
    with pytest.raises(ValueError, match="convs must be 'plain' or 'factored'"):
        mctf.strip_compression(wrapper, convs="dense")
    with pytest.raises(ValueError, match="has not been factorized yet"):
        mctf.compressed_nbytes(keras.Sequential([keras.Input((7, 7, 4)), wrapper]))
