"""CompressionSchedule(calibrate=True): the snapshot hands the batch to a compressor that takes
calibration inputs (``uses_inputs``).

The compressor here records what it receives and returns the rank-r minimizer of
||X (A - W)|| computed in numpy from the X it was given, so the tests check both that X is the
batch the layer multiplied at the snapshot step and that the layer's factors are the ones that
X determines.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress.tf as mctf  # noqa: E402
from matcompress import compressors as C  # noqa: E402
from matcompress.factors import LowRank  # noqa: E402
from matcompress.tf import factorize  # noqa: E402


def weighted_low_rank(A, X, r):
    """argmin_{rank r} ||X (A - W)||_F (X of full column rank): W = C^-1 [C A]_r, C from
    X^T X = C^T C."""
    H = X.T.astype(np.float64) @ X.astype(np.float64)
    H += 1e-6 * np.trace(H) / len(H) * np.eye(len(H))
    Ct = np.linalg.cholesky(H)  # H = Ct Ct^T, so C = Ct^T
    U, s, Vt = np.linalg.svd(Ct.T @ A.astype(np.float64), full_matrices=False)
    left = np.linalg.solve(Ct.T, U[:, :r] * s[:r])
    return left, Vt[:r]


class Recorder(C.MatrixCompressor):
    """Rank-r factors; data-aware when given X. Records every call's X (None without)."""

    uses_inputs = True
    calls: list = []

    def __init__(self, rank=2):
        self.rank = rank

    def compress(self, A, *, grad=None, X=None):
        type(self).calls.append(None if X is None else np.array(X))
        A = np.asarray(A)
        if X is None:
            U, s, Vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
            left, right = U[:, :self.rank] * s[:self.rank], Vt[:self.rank]
        else:
            left, right = weighted_low_rank(A, X, self.rank)
        return LowRank(left.astype(A.dtype), right.astype(A.dtype))


class NoInputs(C.MatrixCompressor):
    """A user compressor written before calibration inputs existed: no X parameter."""

    def compress(self, A, *, grad=None):
        U, s, Vt = np.linalg.svd(np.asarray(A, np.float64), full_matrices=False)
        return LowRank((U[:, :2] * s[:2]).astype(A.dtype), Vt[:2].astype(A.dtype))


@pytest.fixture(autouse=True)
def _fresh():
    Recorder.calls = []
    yield


def _schedule(calibrate, begin=2):
    return mctf.CompressionSchedule(begin_step=begin, update_every=1, alpha_decrement=1.0,
                                    calibrate=calibrate)


def test_schedule_config_round_trip_and_validation():
    s = _schedule(True)
    assert s.get_config()["calibrate"] is True
    assert mctf.CompressionSchedule.from_config(s.get_config()) == s
    # Configs saved before the parameter existed still load, uncalibrated.
    old = {k: v for k, v in s.get_config().items() if k != "calibrate"}
    assert mctf.CompressionSchedule.from_config(old).calibrate is False
    with pytest.raises(TypeError, match="calibrate"):
        mctf.CompressionSchedule(calibrate="yes")


def test_plan_routes():
    shape, init = (6, 5), np.ones((6, 5), np.float32)
    assert factorize.plan(Recorder(), shape, np.float32, initial=init, calibrate=True).uses_inputs
    assert not factorize.plan(Recorder(), shape, np.float32, initial=init).uses_inputs
    # The built-ins take calibration inputs: calibrated, they run on the host with X; else
    # in the graph.
    p = factorize.plan(C.LowRankCompressor(rank=2), shape, np.float32, initial=init,
                       calibrate=True)
    assert p.uses_inputs and not p.in_graph
    p = factorize.plan(C.LowRankCompressor(rank=2), shape, np.float32)
    assert not p.uses_inputs and p.in_graph
    # A compressor without calibration inputs keeps its route.
    p = factorize.plan(NoInputs(), shape, np.float32, initial=init, calibrate=True)
    assert not p.uses_inputs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_snapshot_receives_its_batch(dtype):
    rng = np.random.default_rng(0)
    m, n, batch, begin = 12, 7, 16, 2
    # Anisotropic inputs: the data-aware factors differ from the plain SVD's.
    X = (rng.standard_normal((batch * 4, m)) * np.logspace(-1, 1, m)).astype(dtype)
    keras.utils.set_random_seed(0)
    layer = mctf.CompressedDense(n, Recorder(rank=2), _schedule(True, begin), dtype=dtype)
    layer.build((None, m))
    for step in range(begin + 1):
        xb = X[step * batch:(step + 1) * batch]
        kernel_before = layer.kernel.numpy()
        layer(tf.constant(xb), training=True)
    # One call at plan time (the initial value, no inputs), one at the snapshot with the batch.
    assert len(Recorder.calls) == 2 and Recorder.calls[0] is None
    np.testing.assert_array_equal(Recorder.calls[1], xb)
    left, right = weighted_low_rank(kernel_before, xb, 2)
    f = layer._core.arrays()
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(f["left"] @ f["right"], left @ right, rtol=tol, atol=tol)
    # ... and that is the minimizer of the batch's output error, not the plain truncated SVD.
    U, s, Vt = np.linalg.svd(kernel_before.astype(np.float64), full_matrices=False)
    plain = (U[:, :2] * s[:2]) @ Vt[:2]
    err = lambda W: np.linalg.norm(xb @ (kernel_before - W))  # noqa: E731
    assert err(left @ right) < 0.9 * err(plain)


def test_uncalibrated_schedule_gives_no_inputs():
    rng = np.random.default_rng(1)
    layer = mctf.CompressedDense(4, Recorder(rank=2), _schedule(False, 1))
    layer.build((None, 8))
    for _ in range(2):
        layer(tf.constant(rng.standard_normal((5, 8)), tf.float32), training=True)
    assert Recorder.calls == [None, None]


def test_old_signature_compressor_under_calibrating_schedule():
    layer = mctf.CompressedDense(4, NoInputs(), _schedule(True, 0))
    layer.build((None, 8))
    y = layer(tf.ones((3, 8)), training=True)
    assert y.shape == (3, 4)


def test_model_fit_three_d_inputs_and_graph_mode():
    """In model.fit (a tf.function) with (batch, time, m) inputs: X is the batch flattened."""
    rng = np.random.default_rng(2)
    m, begin, batch = 6, 3, 8
    X = rng.standard_normal((batch * 5, 4, m)).astype(np.float32)
    Y = rng.standard_normal((batch * 5, 4, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    layer = mctf.CompressedDense(3, Recorder(rank=2), _schedule(True, begin))
    model = keras.Sequential([keras.Input((4, m)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # lr 0: A stays put
    model.fit(X, Y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[mctf.CompressionCallback()])
    got = [c for c in Recorder.calls if c is not None]
    assert len(got) == 1
    np.testing.assert_array_equal(got[0], X[begin * batch:(begin + 1) * batch].reshape(-1, m))


def test_compressed_kernel_input_facing_only():
    """An LSTM's input kernel receives the sequence inputs; its recurrent kernel none."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    for attr, expect in (("cell.kernel", True), ("cell.recurrent_kernel", False)):
        Recorder.calls = []
        keras.utils.set_random_seed(0)
        wrapped = mctf.CompressedKernel(keras.layers.LSTM(8), Recorder(rank=2),
                                        _schedule(True, 0), kernel_attr=attr)
        wrapped(tf.constant(x), training=True)
        assert wrapped.plan.uses_inputs is expect
        if expect:
            np.testing.assert_array_equal(Recorder.calls[-1], x.reshape(-1, 6))
        else:
            assert Recorder.calls[-1] is None


def test_embedding_factorizes_without_inputs():
    layer = mctf.CompressedEmbedding(20, 6, Recorder(rank=2), _schedule(True, 0))
    layer(tf.constant([[1, 2, 3]]), training=True)
    assert not layer.plan.uses_inputs and Recorder.calls[-1] is None


def test_compressed_matrix_custom_loop():
    rng = np.random.default_rng(4)
    A = tf.Variable(rng.standard_normal((10, 4)).astype(np.float32))
    cm = mctf.CompressedMatrix(A, Recorder(rank=1), _schedule(True, 0))
    x = rng.standard_normal((7, 10)).astype(np.float32)
    cm.matmul(tf.constant(x))
    np.testing.assert_array_equal(Recorder.calls[-1], x)


_MIRRORED = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import matcompress.tf as mctf
sys.path.insert(0, sys.argv[1])
from test_tf_calibrate import Recorder

rng = np.random.default_rng(0)
X = rng.standard_normal((64, 10)).astype(np.float32)
Y = rng.standard_normal((64, 3)).astype(np.float32)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    layer = mctf.CompressedDense(3, Recorder(rank=2), mctf.CompressionSchedule(
        begin_step=1, alpha_decrement=1.0, calibrate=True))
    model = keras.Sequential([keras.Input((10,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0,
          callbacks=[mctf.CompressionCallback()])
got = [c for c in Recorder.calls if c is not None]
# Each replica factorized from the whole global batch (both halves gathered), identically.
assert len(got) == 2, [None if c is None else c.shape for c in Recorder.calls]
for c in got:
    assert c.shape == (16, 10), c.shape
    assert sorted(map(tuple, c.round(6))) == sorted(map(tuple, X[16:32].round(6)))
np.testing.assert_array_equal(got[0], got[1])
print("ok")
"""


def test_mirrored_strategy_gathers_the_global_batch(tmp_path):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", _MIRRORED, os.path.dirname(__file__)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_builtin_low_rank_calibrated_in_a_layer_matches_numpy():
    """A built-in compressor through a calibrating schedule: the layer's parts are
    ``LowRankCompressor.compress(A, X=batch)``'s (the whitened SVD)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((32, 12)) * np.logspace(-1, 1, 12)).astype(np.float32)
    keras.utils.set_random_seed(0)
    layer = mctf.CompressedDense(6, C.LowRankCompressor(rank=2), _schedule(True, 0))
    layer.build((None, 12))
    A = layer.kernel.numpy()
    layer(tf.constant(x), training=True)
    want = C.LowRankCompressor(rank=2).compress(A, X=x).to_dense()
    f = layer._core.arrays()
    np.testing.assert_allclose(f["left"] @ f["right"], want, rtol=1e-5, atol=1e-5)
