"""Gradual pruning (PruningSchedule: magnitude, Taylor, Fisher) against one-shot magnitude
pruning on the digits MLP of the demo; the figures of docs/decisions.md, "Gradual pruning in
training".

Usage: python bench/gradual_pruning.py [sparsity=0.9] [ramp_epochs=6]

Each seed trains the MLP (64-256-256-10, Adam 1e-3, batch 32) dense for 10 epochs, then every
method runs 10 more epochs from those weights: the dense model itself, one-shot magnitude
pruning at step 0 then fine-tuning with the mask held, and the gradual ramp from 0 to the
sparsity over ``ramp_epochs`` (updates every half epoch) followed by fine-tuning. Test accuracy
of the stripped models on the 450 held-out digits; about 70 s on 2 cores.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.tf.demo import digits_data  # noqa: E402

SEEDS = (0, 1, 2)
EPOCHS, BATCH = 10, 32


def mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)),
                             keras.layers.Dense(256, activation="relu", name="d1"),
                             keras.layers.Dense(256, activation="relu", name="d2"),
                             keras.layers.Dense(10, name="d3")])


def compiled(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main(sparsity=0.9, ramp_epochs=6):
    Xtr, ytr, Xte, yte = digits_data(0)
    steps_per_epoch = -(-len(ytr) // BATCH)

    def accuracy(model):
        return float(np.mean(np.argmax(model.predict(Xte, verbose=0, batch_size=512), 1)
                             == yte))

    schedules = {"one-shot magnitude + fine-tuning":
                 mctf.PruningSchedule(0, 1, 1, sparsity, sparsity)}
    for score in ("magnitude", "taylor", "fisher"):
        schedules[f"gradual {score}"] = mctf.PruningSchedule(
            0, ramp_epochs * steps_per_epoch, steps_per_epoch // 2, 0.0, sparsity, score=score)
    acc, secs = {}, {}
    for seed in SEEDS:
        dense = compiled(mlp(seed))
        dense.fit(Xtr, ytr, batch_size=BATCH, epochs=EPOCHS, verbose=0)
        weights = dense.get_weights()
        acc.setdefault("dense", []).append(accuracy(dense))
        more = compiled(mlp(seed))
        more.set_weights(weights)
        t0 = time.perf_counter()
        more.fit(Xtr, ytr, batch_size=BATCH, epochs=EPOCHS, verbose=0)
        secs.setdefault("dense +10 epochs", []).append(time.perf_counter() - t0)
        acc.setdefault("dense +10 epochs", []).append(accuracy(more))
        shot = mlp(seed)
        shot.set_weights(weights)
        for layer in shot.layers:
            K = layer.kernel.numpy()
            layer.kernel.assign(K * mc.prune_mask(K, sparsity))
        acc.setdefault("one-shot magnitude", []).append(accuracy(shot))
        for name, schedule in schedules.items():
            base = mlp(seed)
            base.set_weights(weights)
            model = compiled(mctf.apply_compression(base, None, schedule=schedule))
            t0 = time.perf_counter()
            model.fit(Xtr, ytr, batch_size=BATCH, epochs=EPOCHS, verbose=0)
            secs.setdefault(name, []).append(time.perf_counter() - t0)
            assert all(abs(layer.sparsity - sparsity) < 1e-3 for layer in model.layers)
            acc.setdefault(name, []).append(accuracy(mctf.strip_compression(model)))
    print(f"sparsity {sparsity}, ramp {ramp_epochs} epochs; test accuracy (%) for seeds "
          f"{SEEDS}, mean; time of the 10 epochs")
    for name, values in acc.items():
        line = " / ".join(f"{100 * a:.1f}" for a in values)
        extra = f"   {np.mean(secs[name]):.1f} s" if name in secs else ""
        print(f"{name:36s} {line}   mean {100 * np.mean(values):.1f}{extra}")


if __name__ == "__main__":
    main(*(float(a) if i == 0 else int(a) for i, a in enumerate(sys.argv[1:3])))
