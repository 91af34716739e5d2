"""The fitting ops of the TensorFlow face against the numpy face on the same inputs.

``mctf.sparse_encode``, ``mctf.fit_codebook`` and ``mctf.simhash`` run the same core functions
as ``mc.sparse_encode``, ``mc.fit_codebook`` and ``mc.simhash`` (GEMMs through Eigen instead of
SciPy's BLAS) with the same seeds: codes, code indices, bits and seeds must be equal; float
results agree to the GEMM's rounding (float32 1e-5, float64 1e-12 relative to the largest
entry), and exactly where no GEMM is involved (the scalar codebooks).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def close(a, b, dtype):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    assert a.shape == b.shape
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale


def test_the_op_library_loads():
    lib = mctf.load_library()
    assert hasattr(lib, "matcompress_fit_codebook")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{"n_nonzero_coefs": 1}, {"n_nonzero_coefs": 7}, {},
                                {"tol": 0.3}])
def test_sparse_encode_equals_the_numpy_face(dtype, kw):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((57, 40)).astype(dtype)
    D = rng.standard_normal((70, 40)).astype(dtype)
    ref = mc.sparse_encode(X, D, **kw)
    got = mctf.sparse_encode(X, D, **kw).numpy()
    assert got.dtype == dtype
    assert np.array_equal(got != 0, ref != 0)
    close(got, ref, dtype)
    indices, values, nnz = (t.numpy() for t in mctf.sparse_encode(X, D, compact=True, **kw))
    assert np.array_equal(nnz, (ref != 0).sum(axis=1))
    for i in range(X.shape[0]):
        assert set(indices[i, :nnz[i]].tolist()) == set(np.flatnonzero(ref[i]).tolist())
        close(values[i, :nnz[i]], ref[i, indices[i, :nnz[i]]], dtype)
        assert np.all(values[i, nnz[i]:] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size, method, n_codes", [(1, "auto", 16), (1, "lloyd", 16),
                                                         (1, "optimal", 5), (2, "auto", 16),
                                                         (4, "lloyd", 300)])
def test_fit_codebook_equals_the_numpy_face(dtype, block_size, method, n_codes):
    rng = np.random.default_rng(2)
    values = rng.laplace(size=(120, 40)).astype(dtype)
    c1, k1, i1 = mc.fit_codebook(values, n_codes, block_size=block_size, method=method,
                                 random_state=7)
    c2, k2, i2 = mctf.fit_codebook(values, n_codes, block_size=block_size, method=method,
                                   random_state=7)
    assert np.array_equal(k2.numpy(), k1) and k2.dtype.as_numpy_dtype == k1.dtype
    assert c2.shape == c1.shape and c2.dtype.as_numpy_dtype == dtype
    if block_size == 1:
        assert np.array_equal(c2.numpy(), c1)
        assert float(i2) == i1
    else:
        close(c2.numpy(), c1, dtype)
        assert float(i2) == pytest.approx(i1, rel=1e-5 if dtype == np.float32 else 1e-12)


def test_fit_codebook_scales_extreme_magnitudes_like_the_numpy_face():
    values = np.random.default_rng(3).standard_normal(500) * 2.0**120
    c1, k1, i1 = mc.fit_codebook(values, 8, random_state=0)
    c2, k2, i2 = mctf.fit_codebook(values, 8, random_state=0)
    assert np.array_equal(k2.numpy(), k1)
    assert np.array_equal(c2.numpy(), c1)
    assert float(i2) == i1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, n_bits", [((64, 40), 100), ((7, 3), 1), ((33, 130), 513)])
def test_simhash_equals_the_numpy_face(dtype, shape, n_bits):
    A = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    f = mc.simhash(A, n_bits, random_state=11)
    g = mctf.simhash(A, n_bits, random_state=11)
    assert g["seed"] == f.seed
    assert np.array_equal(g["bits"].numpy(), f.bits)
    close(g["scale"].numpy(), f.scale, dtype)
    x = np.random.default_rng(5).standard_normal((3, shape[0])).astype(dtype)
    close(mctf.factored_matmul(x, g).numpy(), f.matmul(x), dtype)


def test_fitting_runs_in_a_graph_with_the_same_result():
    values = np.random.default_rng(6).standard_normal((64, 16))

    @tf.function
    def fit(v):
        return mctf.fit_codebook(v, 8, block_size=2, random_state=0)

    eager = mctf.fit_codebook(values, 8, block_size=2, random_state=0)
    graph = fit(tf.constant(values))
    for a, b in zip(eager, graph):
        assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("call, match", [
    (lambda: mctf.sparse_encode(np.ones((2, 3)), np.zeros((4, 3))), "zero-norm atom"),
    (lambda: mctf.sparse_encode(np.full((2, 3), np.nan), np.ones((4, 3))), "x must be finite"),
    (lambda: mctf.sparse_encode(np.ones((2, 3)), np.zeros((4, 3)), compact=True),
     "zero-norm atom"),
    (lambda: mctf.sparse_encode(np.ones((2, 3)), np.full((4, 3), np.inf), compact=True),
     "dictionary must be finite"),
    (lambda: mctf.fit_codebook(np.array([1.0, np.inf, 2.0]), 2), "points must be finite"),
    (lambda: mctf.simhash(np.full((3, 2), np.inf), 4), "a must be finite"),
])
def test_bad_inputs_raise_invalid_argument(call, match):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        call()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: mctf.sparse_encode(np.ones((2, 3)), np.ones((4, 3)), n_nonzero_coefs=4),
     ValueError, "n_nonzero_coefs"),
    (lambda: mctf.fit_codebook(np.ones(5), 6), ValueError, "n_codes"),
    (lambda: mctf.fit_codebook(np.ones(6), 2, block_size=4), ValueError, "block_size"),
    (lambda: mctf.fit_codebook(np.ones(6, np.int32), 2), TypeError, "float32 or float64"),
    (lambda: mctf.simhash(np.ones((3, 2)), 0), ValueError, "n_bits"),
])
def test_bad_arguments_raise_python_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_import_matcompress_does_not_import_tensorflow():
    code = "import sys, matcompress; assert 'tensorflow' not in sys.modules, 'tensorflow'"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


_MIRRORED = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__] \
    if os.environ.get("MC_PRIVATE_TAG") else sys.meta_path
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import matcompress as mc
import matcompress.tf as mctf

rng = np.random.default_rng(0)
W = rng.standard_normal((48, 40)).astype(np.float32)
f = mc.compress(W, "kmeans", compression_ratio=8, random_state=0)
x = rng.standard_normal((8, 48)).astype(np.float32)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    parts = mctf.factor_tensors(f)
    parts["codebook"] = tf.Variable(parts["codebook"])

@tf.function
def step(xs):
    def replica(xr):
        with tf.GradientTape() as tape:
            y = mctf.factored_matmul(xr, parts)
            loss = tf.reduce_sum(y)
        return tape.gradient(loss, parts["codebook"])
    per = strategy.run(replica, args=(xs,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

dist = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(x).batch(8))
got = step(next(iter(dist))).numpy()
_, ref = f.matmul_backward(x, np.ones((8, 40), np.float32))
err = np.abs(got - ref["codebook"]).max() / np.abs(ref["codebook"]).max()
print("replicas", strategy.num_replicas_in_sync, "err", err)
assert strategy.num_replicas_in_sync == 2 and err < 1e-5, err
"""


def test_gradients_inside_mirrored_strategy_replicas():
    # Two logical CPUs (configured before TensorFlow starts: a fresh process), the batch split
    # between the replicas, the codebook gradients summed: equal to the numpy face's.
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "replicas 2" in proc.stdout
