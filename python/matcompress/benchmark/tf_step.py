"""The train step of a CompressedDense layer after its full matrix is dropped, against Dense
(and of a compressed Conv2D against Conv2D, and of a gradually pruned Dense).

Shared by ``matcompress bench`` and the repository's ``bench/train_step.py``,
``bench/conv_step.py`` and ``bench/new_forms.py``. Imports TensorFlow
when called, never on import. The step is the same ``tf.function`` for both layers: forward,
mean squared error, ``tf.GradientTape`` gradients of the trainable variables,
``keras.optimizers.SGD(momentum=0.9).apply``. The compressed layer's schedule switches to the
factors at step 0 (``alpha_decrement=1``); one step factorizes, then ``sync_trainable`` removes A
from the trainable variables (as ``CompressionCallback`` does) and the step is traced again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SEED", "RATIO", "COMPRESSORS", "STRUCTURAL", "step_fn", "make_compressor",
           "train_step_routes", "pruning_step_routes", "conv_step_routes"]

SEED = 20251127
RATIO = 8
COMPRESSORS = ("kmeans", "low_rank", "pruning", "dictionary", "simhash")
#: The structural forms (issue 13): block-diagonal, shared-basis blocks, input/output.
STRUCTURAL = ("block", "mixed_block", "input_output")


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
    from matcompress import structural as S

    makers = {
        "block": lambda: S.BlockDiagonalCompressor(compression_ratio=ratio, random_state=0),
        "mixed_block": lambda: S.MixedBlockCompressor(compression_ratio=ratio),
        "input_output": lambda: S.InputOutputCompressor(compression_ratio=ratio),
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


def pruning_step_routes(m, n, batch, rng, sparsity, score="magnitude"):
    """Gradual pruning's steps on a ``keras.layers.Dense(n)`` of inputs of width m: routes
    {name: one train step} for keras Dense (first), the pruned layer between mask updates
    ("PruningKernel, between updates": pruned to `sparsity` at step 0, then the step of every
    step after ``end_step`` and between updates) and in an update step ("PruningKernel, update
    step": a schedule flat at `sparsity` that recomputes the mask at every step), the same
    kernel snapshot; and the bytes of the pruned kernel's CSR form."""
    import keras
    import tensorflow as tf

    import matcompress.tf as mctf

    x = tf.constant(rng.standard_normal((batch, m)).astype(np.float32))
    y = tf.constant(rng.standard_normal((batch, n)).astype(np.float32))
    dense = keras.Sequential([keras.Input((m,)), keras.layers.Dense(n)])
    dense_step = step_fn(dense, dense.trainable_variables)
    routes = {"keras Dense": lambda s=dense_step: s(x, y)}
    schedules = {"between updates": mctf.PruningSchedule(0, 1, 1, sparsity, sparsity,
                                                         score=score),
                 "update step": mctf.PruningSchedule(0, 2 ** 30, 1, sparsity, sparsity,
                                                     score=score)}
    nbytes = 0
    for what, schedule in schedules.items():
        model = mctf.apply_compression(dense, None, schedule=schedule)
        step = step_fn(model, model.trainable_variables)
        step(x, y)  # step 0: the first update
        step(x, y)  # step 1: end_step of the first schedule
        routes[f"PruningKernel, {what}"] = lambda s=step: s(x, y)
        nbytes = int(model.layers[0].factorization().nbytes)
    return routes, nbytes


#: conv_step_routes' default forms: (compressor, conv_form).
CONV_FORMS = (("kmeans", "reconstructed"), ("low_rank", "reconstructed"),
              ("pruning", "reconstructed"), ("simhash", "reconstructed"),
              ("dictionary", "reconstructed"), ("low_rank", "rank_reduced"))


def conv_step_routes(hw, c_in, c_out, batch, rng, forms=CONV_FORMS, ratio=4):
    """Routes {name: one train step} for ``keras.layers.Conv2D(c_out, 3, padding="same")`` on
    (batch, hw, hw, c_in) images (first, "keras Conv2D") and for its compressed twin in each
    (compressor, conv_form) of `forms` after the drop ("CompressedConv, <name>, <form>")."""
    import keras
    import tensorflow as tf

    import matcompress.tf as mctf

    schedule = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    x = tf.constant(rng.standard_normal((batch, hw, hw, c_in)).astype(np.float32))
    y = tf.constant(rng.standard_normal((batch, hw, hw, c_out)).astype(np.float32))
    dense = keras.Sequential([keras.Input((hw, hw, c_in)),
                              keras.layers.Conv2D(c_out, 3, padding="same")])
    routes = {"keras Conv2D": lambda s=step_fn(dense, dense.trainable_variables): s(x, y)}
    for name, form in forms:
        model = mctf.apply_compression(dense, make_compressor(name, ratio), schedule=schedule,
                                       conv_form=form)
        layer = model.layers[0]
        step_fn(model, model.trainable_variables)(x, y)  # the snapshot
        layer.sync_trainable()
        step = step_fn(model, model.trainable_variables)
        routes[f"CompressedConv, {name}, {form}"] = lambda s=step: s(x, y)
    return routes
