"""The train step of a CompressedDense layer after its full matrix is dropped, against Dense.

Shared by ``matcompress bench`` and the repository's ``bench/train_step.py``. Imports TensorFlow
when called, never on import. The step is the same ``tf.function`` for both layers: forward,
mean squared error, ``tf.GradientTape`` gradients of the trainable variables,
``keras.optimizers.SGD(momentum=0.9).apply``. The compressed layer's schedule switches to the
factors at step 0 (``alpha_decrement=1``); one step factorizes, then ``sync_trainable`` removes A
from the trainable variables (as ``CompressionCallback`` does) and the step is traced again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SEED", "RATIO", "COMPRESSORS", "step_fn", "make_compressor", "train_step_routes"]

SEED = 20251127
RATIO = 8
COMPRESSORS = ("kmeans", "low_rank", "pruning", "dictionary", "simhash")


def step_fn(model, variables):
    """One training step of `model` on (x, y) updating `variables`, as a tf.function."""
    import keras
    import tensorflow as tf

    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    opt.build(variables)

    @tf.function(autograph=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, variables)
        opt.apply(grads, variables)
        return loss

    return step


def make_compressor(name, ratio=RATIO):
    """The built-in compressor `name` asked for `ratio` times fewer bytes."""
    from matcompress import compressors as C

    makers = {
        "kmeans": lambda: C.KMeansCompressor(compression_ratio=ratio, random_state=0),
        "low_rank": lambda: C.LowRankCompressor(compression_ratio=ratio),
        "pruning": lambda: C.PruningCompressor(compression_ratio=ratio),
        "dictionary": lambda: C.DictionaryCompressor(compression_ratio=ratio, max_iter=2,
                                                     random_state=0),
        "simhash": lambda: C.SimhashCompressor(compression_ratio=ratio, random_state=0),
    }
    return makers[name]()


def train_step_routes(m, n, batch, rng, compressors=COMPRESSORS, ratio=RATIO):
    """Routes {name: zero-argument call of one train step} for ``keras.layers.Dense(n)`` on
    inputs of width m (first, named "keras Dense") and for ``CompressedDense`` with each of
    `compressors` after the drop ("CompressedDense, <name>"), the same kernel snapshot; and the
    bytes of each compressed layer's trained parts {name: bytes}."""
    import keras
    import tensorflow as tf

    import matcompress.tf as mctf

    schedule = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    x = tf.constant(rng.standard_normal((batch, m)).astype(np.float32))
    y = tf.constant(rng.standard_normal((batch, n)).astype(np.float32))
    dense = keras.Sequential([keras.Input((m,)), keras.layers.Dense(n)])
    dense_step = step_fn(dense, dense.trainable_variables)
    routes = {"keras Dense": lambda s=dense_step: s(x, y)}
    nbytes = {}
    for name in compressors:
        layer = mctf.CompressedDense(n, make_compressor(name, ratio), schedule)
        model = keras.Sequential([keras.Input((m,)), layer])
        layer.kernel.assign(dense.layers[0].kernel)
        step_fn(model, model.trainable_variables)(x, y)  # the snapshot
        layer.sync_trainable()
        step = step_fn(model, model.trainable_variables)
        routes[f"CompressedDense, {name}"] = lambda s=step: s(x, y)
        nbytes[name] = layer.plan.nbytes()
    return routes, nbytes
