"""Train-step benchmark of compressed convolutions: a CompressedConv after its full kernel is
dropped (only the factors train) against ``keras.layers.Conv2D`` of the same shape.

    python bench/conv_step.py [--quick] [--rounds 5] [--wait-idle SECONDS] [--markdown FILE]

Cases: the demo CNN's second convolution (3 x 3, 16 -> 32 channels, 8 x 8 images) and a
mid-sized one (3 x 3, 64 -> 64, 16 x 16 images), batch 32, "same" padding; every built-in
in-graph compressor at 4x fewer bytes on the kernel's (kh kw c_in, c_out) view in the
"reconstructed" form (the kernel rebuilt from the factors each step), and low rank in the
"rank_reduced" form (the convolution to ``rank`` filters, then the 1x1 projection). The step
is bench/train_step.py's (``matcompress.benchmark.tf_step.step_fn``): forward, mean squared
error, gradients, SGD with momentum; the compressed layer switches to the factors at step 0,
then ``sync_trainable`` removes A from the trainable variables and the step is traced again.
Timing: the routes of a case interleaved in rounds (best of each), as bench/tf_ops.py.
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

from matcompress.benchmark.tf_step import CONV_FORMS as FORMS
from matcompress.benchmark.tf_step import SEED, conv_step_routes

RATIO = 4


def conv_routes(hw, c_in, c_out, batch, rng, forms=FORMS, ratio=RATIO):
    """Routes {name: one train step}: keras Conv2D first, then each compressed form."""
    return conv_step_routes(hw, c_in, c_out, batch, rng, forms=forms, ratio=ratio)


def run(quick=False, rounds=5, wait_idle=60.0, out=print):
    rng = np.random.default_rng(SEED)
    settle = _ob.Settler(wait_idle)
    lines, summary, loads = [], [], []
    cases = [(8, 16, 32)] if quick else [(8, 16, 32), (16, 64, 64)]
    for hw, c_in, c_out in cases:
        routes = conv_routes(hw, c_in, c_out, 32, rng)
        title = (f"train step, Conv2D 3 x 3, {c_in} -> {c_out} channels, {hw} x {hw} images, "
                 "batch 32 (float32)")
        out(f"{title} ...")
        tab, best, ld = _routes_table(title, routes, rounds, settle, out)
        lines.extend(tab + [""])
        loads.extend(ld)
        for name in routes:
            if name != "keras Conv2D":
                summary.append((f"{name[16:]}, {c_in} -> {c_out}",
                                best[name] / best["keras Conv2D"]))
    lines.append(f"Summary, CompressedConv train step / keras Conv2D ({RATIO}x fewer bytes):")
    lines.append("")
    for title, r in summary:
        lines.append(f"- {title}: {r:.3f}")
    notes = _ob.load_notes(loads, settle.waited)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return bench_main(argv, __doc__, "bench/conv_step.py", run, "# Conv train step",
                      f"seed {SEED}; Gaussian inputs and targets; {RATIO}x fewer bytes")


if __name__ == "__main__":
    sys.exit(main())
