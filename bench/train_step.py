"""Train-step benchmark: a CompressedDense layer after its full matrix is dropped (only the
factors train) against ``keras.layers.Dense`` of the same shape.

    python bench/train_step.py [--quick] [--rounds 5] [--wait-idle SECONDS] [--markdown FILE]

Target (issue 9): <= 1.5x the Dense train step, at 1024 x 1024 and 4096 x 1024 (inputs x
units), batch 32 and 256, for every built-in compressor at 8x fewer bytes. The step is the same
``tf.function`` for both: forward, mean squared error, ``tf.GradientTape`` gradients of the
trainable variables, ``keras.optimizers.SGD(momentum=0.9).apply``. The compressed layer's
schedule switches to the factors at step 0 (``alpha_decrement=1``); one step factorizes, then
``sync_trainable`` removes A from the trainable variables (as ``CompressionCallback`` does) and
the step is traced again before timing.

Timing: the routes of a case interleaved in rounds (best of each), as bench/tf_ops.py. The
layers and the step live in ``matcompress.benchmark.tf_step`` (shared with ``matcompress bench``).
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    from . import omp as _ob
    from .tf_ops import _routes_table, bench_main
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(__file__))
    import omp as _ob
    from tf_ops import _routes_table, bench_main

from matcompress.benchmark.tf_step import COMPRESSORS, RATIO, SEED, train_step_routes


def run(quick=False, rounds=5, wait_idle=60.0, out=print):
    rng = np.random.default_rng(SEED)
    settle = _ob.Settler(wait_idle)
    lines, summary, loads = [], [], []
    shapes = [(256, 256)] if quick else [(1024, 1024), (4096, 1024)]
    batches = (32,) if quick else (32, 256)
    for m, n in shapes:
        for batch in batches:
            routes, bytes_ = train_step_routes(m, n, batch, rng)
            title = f"train step, {m} x {n}, batch {batch} (float32)"
            out(f"{title} ...")
            tab, best, ld = _routes_table(title, routes, rounds, settle, out)
            lines.extend(tab)
            lines.append("")
            lines.append("Bytes of the trained parts (training dtypes: unpacked indices; the "
                         "stripped layer stores the compressor's): " + ", ".join(
                             f"{k} {v:,}" for k, v in bytes_.items())
                         + f"; dense {m * n * 4:,}")
            lines.append("")
            loads.extend(ld)
            for name in COMPRESSORS:
                summary.append((f"{name}, {m} x {n}, batch {batch}",
                                best[f"CompressedDense, {name}"] / best["keras Dense"]))
    lines.append("Summary, CompressedDense train step / keras Dense (target <= 1.5):")
    lines.append("")
    for title, r in summary:
        lines.append(f"- {title}: {r:.3f}")
    notes = _ob.load_notes(loads, settle.waited)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return bench_main(argv, __doc__, "bench/train_step.py", run, "# Train step",
                      f"seed {SEED}; Gaussian inputs and targets; every compressor at {RATIO}x")


if __name__ == "__main__":
    sys.exit(main())
