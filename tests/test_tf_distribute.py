"""Compression under tf.distribute: the same factors and loss curve on one device and on several.

1. ``MirroredStrategy`` over two logical CPU devices, ``model.fit`` with CompressionCallback, every
   built-in compressor through a snapshot, the blend and the drop: the per-epoch losses equal the
   one-device run's to a relative 1e-5, the integer parts are identical and the float parts agree
   to 1e-5 relative (the replicas' gradient sums round in another order).
2. ``MultiWorkerMirroredStrategy`` with two worker processes on the loopback interface, in a custom
   training loop (Keras 3's ``model.fit`` does not run under this strategy with TensorFlow 2.21:
   keras-team/keras#20585): both workers end with the same parts and losses, equal to a
   one-device run's to the same tolerances.

Each run is a fresh process: logical devices and the cluster must be set before TensorFlow
starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

_COMMON = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np

METHODS = {
    "kmeans": lambda C: C.KMeansCompressor(n_codes=16, random_state=0),
    "kmeans_blocks": lambda C: C.KMeansCompressor(n_codes=16, block_size=2, random_state=0),
    "pruning": lambda C: C.PruningCompressor(sparsity=0.75),
    "pruning_codes": lambda C: C.PruningCompressor(sparsity=0.5, n_codes=8, random_state=0),
    "low_rank": lambda C: C.LowRankCompressor(rank=4),
    "dictionary": lambda C: C.DictionaryCompressor(n_atoms=8, n_nonzero_coefs=2, random_state=0),
    "simhash": lambda C: C.SimhashCompressor(n_bits=16, random_state=0),
}
LR = {"simhash": 0.002}
rng = np.random.default_rng(0)
X = rng.standard_normal((512, 24)).astype(np.float32)
Y = (X @ rng.standard_normal((24, 6))).astype(np.float32)


def build(method):
    import keras
    import matcompress.tf as mctf
    from matcompress import compressors as C

    keras.utils.set_random_seed(1)
    layer = mctf.CompressedDense(6, METHODS[method](C), mctf.CompressionSchedule(
        begin_step=4, update_every=2, alpha_decrement=0.5))
    model = keras.Sequential([keras.Input((24,)), keras.layers.Dense(16, activation="tanh"),
                              layer])
    return layer, model


def report(layer, losses, **extra):
    parts = {k: v.tolist() for k, v in layer._core.arrays().items()}
    return {"loss": [float(v) for v in losses], "step": int(layer.step.numpy()),
            "a_trainable": bool(layer.kernel.trainable), "parts": parts, **extra}
"""

_MIRRORED = _COMMON + """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import matcompress.tf as mctf

out = {}
# One strategy object of each kind for all the runs: collective instances of strategies made
# and dropped in one process can collide.
strategies = (tf.distribute.OneDeviceStrategy("/cpu:0"),
              tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
for method in METHODS:
    runs = []
    for strategy in strategies:
        with strategy.scope():
            layer, model = build(method)
            model.compile(keras.optimizers.SGD(LR.get(method, 0.05)), "mse")
        hist = model.fit(X, Y, batch_size=64, epochs=3, shuffle=False, verbose=0,
                         callbacks=[mctf.CompressionCallback()])
        runs.append(report(layer, hist.history["loss"],
                           replicas=strategy.num_replicas_in_sync))
    out[method] = runs
print("RESULT " + json.dumps(out))
"""

_WORKER = _COMMON + """
index = int(sys.argv[1])
method = sys.argv[2]
if index >= 0:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": sys.argv[3].split(",")},
                                          "task": {"type": "worker", "index": index}})
import tensorflow as tf
import keras

strategy = (tf.distribute.MultiWorkerMirroredStrategy() if index >= 0
            else tf.distribute.OneDeviceStrategy("/cpu:0"))
GLOBAL_BATCH = 64
with strategy.scope():
    layer, model = build(method)
    opt = keras.optimizers.SGD(LR.get(method, 0.05))
    opt.build(model.trainable_variables)
ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(GLOBAL_BATCH)
if index >= 0:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
dist = strategy.experimental_distribute_dataset(ds)


def make_step():
    variables = model.trainable_variables

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=1)
                loss = tf.nn.compute_average_loss(per, global_batch_size=GLOBAL_BATCH)
            opt.apply(tape.gradient(loss, variables), variables)
            return loss
        return strategy.reduce("SUM", strategy.run(replica, args=(x, y)), axis=None)

    return step


step, losses = make_step(), []
for epoch in range(3):
    total, batches = 0.0, 0
    for x, y in dist:
        if layer.sync_trainable():  # the drop: A leaves the trainable variables
            step = make_step()
        total += float(step(x, y))
        batches += 1
    losses.append(total / batches)
print("RESULT " + json.dumps(report(layer, losses,
                                    replicas=strategy.num_replicas_in_sync)))
"""


def _result(stdout):
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no RESULT line in:\n" + stdout[-3000:])


def _run(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _finish(proc, timeout=600):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("timed out:\n" + err[-3000:])
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return _result(out)


def _same_run(a, b, what):
    assert a["step"] == b["step"] == 24, what
    assert a["a_trainable"] is False and b["a_trainable"] is False, what  # A was dropped
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, err_msg=what)
    for name, va in a["parts"].items():
        va, vb = np.asarray(va), np.asarray(b["parts"][name])
        if va.dtype.kind in "iu":
            np.testing.assert_array_equal(va, vb, err_msg=f"{what}: {name}")
        else:
            scale = max(np.abs(va).max(), 1e-30)
            np.testing.assert_allclose(va, vb, rtol=0, atol=1e-5 * scale,
                                       err_msg=f"{what}: {name}")


def test_mirrored_strategy_gives_the_one_device_factors_and_losses():
    result = _finish(_run(_MIRRORED))
    for method, (one, two) in result.items():
        assert one["replicas"] == 1 and two["replicas"] == 2
        assert one["loss"][-1] < one["loss"][0], method  # it trained
        _same_run(one, two, method)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["kmeans", "pruning_codes", "dictionary"])
def test_multi_worker_mirrored_strategy_on_two_local_workers(method):
    cluster = ",".join(f"localhost:{_free_port()}" for _ in range(2))
    procs = [_run(_WORKER, str(i), method, cluster) for i in (0, 1, -1)]
    try:
        w0, w1, one = (_finish(p) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert w0["replicas"] == w1["replicas"] == 2 and one["replicas"] == 1
    assert w0 == {**w1, "replicas": w0["replicas"]}  # the two workers agree exactly
    assert one["loss"][-1] < one["loss"][0]
    _same_run(one, w0, method)
