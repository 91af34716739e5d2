"""The new forms of issue 13 in training: test accuracy against stored bytes on the demo's digits
MLP and CNN, and the train step of each form against the dense layer.

The repository's ``bench/new_forms.py`` is a thin wrapper of :func:`main`.

**Accuracy.** The models, data, training and scoring are the demo's
(:mod:`matcompress.tf.demo`: :func:`~matcompress.tf.demo.tasks`,
:func:`~matcompress.tf.demo.run_task`), so the figures compare with its table: each model is
trained dense, then each method starts from those weights, factorizes the large matrices at the
first step (Dense kernels of >= 16,384 weights and convolution kernels of >= 4,096 through their
2-D view), blends for half an epoch and fine-tunes the factors; the stripped model is scored on
the 450 held-out digits. Methods: the new forms -- "block" (:class:`~matcompress.structural.
BlockDiagonalCompressor`), "mixed_block", "input_output", "rank_reduced" (the CNN's convolution
as a convolution to ``rank`` filters and a 1x1 projection, with :class:`~matcompress.compressors.
LowRankCompressor`), "gradual_pruning" (:func:`~matcompress.tf.demo.gradual_schedule`: a
:class:`~matcompress.tf.PruningSchedule` to ``1 - 1/R`` sparsity over the first half of the
fine-tuning, counted as the CSR form of the kept weights; Dense kernels only) -- beside the five
built-in methods and the dense model (as trained, and trained for the same extra epochs).

**Train step.** One ``tf.function`` step (forward, mean squared error, gradients,
``SGD(momentum=0.9).apply``; :mod:`matcompress.benchmark.tf_step`) of each structural form's
``CompressedDense`` after the drop against ``keras.layers.Dense``; of gradual pruning's
``PruningKernel`` between mask updates and in an update step; and of the compressed
``Conv2D`` (rank-reduced, and the structural forms on the kernel's view) against
``keras.layers.Conv2D``. Routes interleaved in rounds, best of each. Target (DESIGN §7): at most
1.5x the dense layer's step.

Modes: full (about 5 minutes on 2 cores), ``quick`` (one ratio, shorter training and small
layers, about a minute), ``tiny`` (a few eager steps on a few digits and tiny layers: for the
tests; figures meaningless).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

__all__ = ["SECTION_TITLE", "MODES", "FORMS", "BASELINES", "STEP_TARGET", "run",
           "accuracy_rows", "step_rows", "format_report", "main"]

SECTION_TITLE = "## New forms in training: `python bench/new_forms.py` (issue 13)"
STEP_TARGET = 1.5  # DESIGN §7: a compressed layer's train step at most 1.5x the dense one's

#: The new forms (the CNN alone gets "rank_reduced") and the five methods beside them.
FORMS = ("block", "mixed_block", "input_output", "rank_reduced", "gradual_pruning")
BASELINES = ("low_rank", "dictionary", "kmeans", "simhash", "pruning")

#: Per mode: the ratios; the digits models' (dense epochs, fine-tuning epochs) and training
#: digits (None: all); the Dense train-step cases (inputs, units, batch) and the convolution's
#: (image side, c_in, c_out, batch), each at every ratio of ``step_ratios``; timing rounds.
MODES = {
    "full": dict(ratios=(2, 4, 8), mlp=(15, 5), cnn=(10, 4), n_train=None, eager=False,
                 dense_cases=((1024, 1024, 32), (1024, 1024, 256)),
                 conv_cases=((16, 64, 64, 32),), step_ratios=(4, 8), rounds=5),
    "quick": dict(ratios=(4,), mlp=(10, 2), cnn=(5, 1), n_train=None, eager=False,
                  dense_cases=((256, 256, 32),), conv_cases=((8, 16, 32, 32),),
                  step_ratios=(4,), rounds=2),
    "tiny": dict(ratios=(4,), mlp=(1, 1), cnn=(1, 1), n_train=128, eager=True,
                 dense_cases=((64, 64, 8),), conv_cases=((4, 8, 8, 4),), step_ratios=(4,),
                 rounds=1),
}
#: The convolution forms timed: (compressor, conv_form).
CONV_STEP_FORMS = (("low_rank", "rank_reduced"), ("block", "reconstructed"),
                   ("mixed_block", "reconstructed"), ("input_output", "reconstructed"))


# ---- accuracy against bytes ---------------------------------------------------------------------

def _tasks(mode, seed):
    from ..tf import demo

    cfg = MODES[mode]
    out = []
    for task in demo.tasks(quick=False, seed=seed)[:2]:  # the digits MLP and CNN
        epochs, finetune = cfg["mlp"] if task.name == "digits MLP" else cfg["cnn"]
        data = task.data
        if cfg["n_train"] is not None:
            k = cfg["n_train"]
            data = (data[0][:k], data[1][:k], data[2][:k], data[3][:k])
        out.append(demo.Task(task.name, task.build, data, task.loss, task.metric, epochs,
                             finetune, task.batch_size, has_convs=task.has_convs,
                             run_eagerly=cfg["eager"]))
    return out


def accuracy_rows(mode="full", seed=0, say=None):
    """The demo's rows (dicts: task, method, ratio, score, bytes, matrix_bytes,
    dense_matrix_bytes, achieved, time; or score None and a note) for the dense model, the five
    methods and the new forms at the mode's ratios, on the digits MLP and CNN."""
    from ..tf import demo

    ratios = MODES[mode]["ratios"]
    rows = []
    for task in _tasks(mode, seed):
        t0 = time.perf_counter()
        forms = {m: ratios for m in FORMS if m != "rank_reduced"}
        # run_task adds the CONV_METHODS ("rank_reduced") rows to a model with convolutions
        rows += demo.run_task(task, methods=BASELINES, ratios=ratios, seed=seed, forms=forms)
        if say:
            say(f"{task.name}: {time.perf_counter() - t0:.0f} s")
    return rows


# ---- train steps --------------------------------------------------------------------------------

def _time_routes(routes, rounds, settle):
    from .harness import interleave

    res = interleave({k: (v, None) for k, v in routes.items()}, rounds, settle, out=None)
    return {k: t.best for k, t in res.items()}, {k: t.load.cores for k, t in res.items()}


def step_rows(mode="full", seed=None, wait_idle=0.0, say=None):
    """Train-step rows (dicts: case, route, form, ratio, seconds, reference seconds, ratio to
    the reference, bytes, load) of every new form against its dense layer."""
    from . import harness, tf_step

    cfg = MODES[mode]
    rng = np.random.default_rng(tf_step.SEED if seed is None else seed)
    settle = harness.Settler(wait_idle)
    rows = []

    def add(case, routes, first, rounds, ratio, nbytes, forms):
        best, load = _time_routes(routes, rounds, settle)
        for name in routes:
            if name == first:
                continue
            rows.append(dict(case=case, route=name, form=forms[name], ratio=ratio,
                             seconds=best[name], reference=best[first],
                             vs_dense=best[name] / best[first], bytes=nbytes.get(name),
                             reference_name=first, load=load[name], reference_load=load[first]))

    for m, n, batch in cfg["dense_cases"]:
        for ratio in cfg["step_ratios"]:
            case = f"Dense {m} x {n}, batch {batch}, {ratio}x"
            if say:
                say(f"train step: {case} ...")
            routes, nbytes = tf_step.train_step_routes(m, n, batch, rng,
                                                       compressors=tf_step.STRUCTURAL,
                                                       ratio=ratio)
            forms = {f"CompressedDense, {k}": k for k in tf_step.STRUCTURAL}
            nbytes = {f"CompressedDense, {k}": v for k, v in nbytes.items()}
            sparsity = 1.0 - 1.0 / ratio
            pr, pbytes = tf_step.pruning_step_routes(m, n, batch, rng, sparsity)
            for name, fn in pr.items():
                if name != "keras Dense":
                    routes[name] = fn
                    forms[name] = "gradual_pruning"
                    nbytes[name] = pbytes
            add(case, routes, "keras Dense", cfg["rounds"], ratio, nbytes, forms)
    for hw, c_in, c_out, batch in cfg["conv_cases"]:
        for ratio in cfg["step_ratios"]:
            case = (f"Conv2D 3 x 3, {c_in} -> {c_out}, {hw} x {hw} images, batch {batch}, "
                    f"{ratio}x")
            if say:
                say(f"train step: {case} ...")
            routes = tf_step.conv_step_routes(hw, c_in, c_out, batch, rng,
                                              forms=CONV_STEP_FORMS, ratio=ratio)
            forms = {f"CompressedConv, {c}, {f}": ("rank_reduced" if f == "rank_reduced" else c)
                     for c, f in CONV_STEP_FORMS}
            add(case, routes, "keras Conv2D", cfg["rounds"], ratio, {}, forms)
    notes = harness.load_notes([r["load"] for r in rows] + [r["reference_load"] for r in rows],
                               settle.waited)
    return rows, notes


# ---- the report ---------------------------------------------------------------------------------

def run(mode="full", seed=0, wait_idle=None, say=None):
    """Both parts; returns a dict (mode, seed, rows, steps, step_notes, elapsed)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    t0 = time.perf_counter()
    rows = accuracy_rows(mode, seed, say=say)
    t1 = time.perf_counter()
    if wait_idle is None:
        wait_idle = {"full": 60.0, "quick": 10.0, "tiny": 0.0}[mode]
    steps, notes = step_rows(mode, wait_idle=wait_idle, say=say)
    t2 = time.perf_counter()
    return dict(mode=mode, seed=seed, rows=rows, steps=steps, step_notes=notes,
                accuracy_seconds=t1 - t0, step_seconds=t2 - t1, elapsed=t2 - t0)


def _kib(b):
    return f"{b / 1024:.1f}"


def accuracy_table(rows, task):
    """The markdown table of one model's rows: every method and ratio, with the bytes the
    achieved ratio is computed from."""
    from ..tf.demo import reference_score

    base = reference_score(rows, task)
    body = []
    for r in rows:
        if r["task"] != task:
            continue
        dense = r["method"].startswith("dense")
        asked = "-" if dense else f"{r['ratio']}x"
        if r.get("score") is None:
            body.append([r["method"], asked, "-", "-", "-", "-", "n/a", "-",
                         "unreachable: " + r.get("note", "")[:70]])
            continue
        achieved = r["dense_matrix_bytes"] / r["matrix_bytes"]
        body.append([r["method"], asked, f"{r['matrix_bytes']:,}", f"{r['dense_matrix_bytes']:,}",
                     f"{achieved:.2f}x", _kib(r["bytes"]), f"{r['score']:.1f}",
                     f"{r['score'] - base:+.1f}", f"{r['time']:.1f}"])
    from .harness import table

    return table(["method", "asked", "matrix bytes", "dense bytes", "achieved", "all KiB",
                  "accuracy %", "vs dense pt", "train s"], body)


def accuracy_pivot(rows, task, ratios):
    """Accuracy (%) and achieved ratio per method (rows) and asked ratio (columns)."""
    from .harness import table

    methods = [m for m in FORMS + BASELINES
               if any(r["task"] == task and r["method"] == m for r in rows)]
    body = []
    for m in methods:
        cells = []
        for ratio in ratios:
            hit = [r for r in rows if r["task"] == task and r["method"] == m
                   and r["ratio"] == ratio]
            if not hit:
                cells.append("-")
            elif hit[0].get("score") is None:
                cells.append("unreachable")
            else:
                r = hit[0]
                achieved = r["dense_matrix_bytes"] / r["matrix_bytes"]
                cells.append(f"{r['score']:.1f} ({achieved:.1f}x)")
        body.append([m + (" (new)" if m in FORMS else "")] + cells)
    return table(["method"] + [f"{r}x" for r in ratios], body)


def step_table(steps, case):
    from .harness import met, table

    body = []
    ref = None
    for s in steps:
        if s["case"] != case:
            continue
        ref = s
        body.append([s["route"], f"{s['seconds'] * 1e3:.3f} ms", f"{s['vs_dense']:.2f}x",
                     met(s["vs_dense"] <= STEP_TARGET) if "update step" not in s["route"]
                     else "(amortized below)",
                     "-" if s["bytes"] is None else f"{s['bytes']:,}", f"{s['load'] or 0:.2f}"])
    head = [[ref["reference_name"], f"{ref['reference'] * 1e3:.3f} ms", "1.00x", "", "",
             f"{ref['reference_load'] or 0:.2f}"]]
    return table(["route", "time", "this / dense", f"target <= {STEP_TARGET}",
                  "bytes (trained parts; pruning: CSR)", "other load"], head + body)


def step_verdicts(steps, update_every=(10, 100)):
    """(form, case, ratio to dense, met) per timed form. Gradual pruning gets three: its step
    between mask updates, and one update step amortized over each of ``update_every`` steps
    (10: the demo's and this benchmark's schedule, a quarter epoch of the digits training set
    at batch 32; 100: the low end of Zhu & Gupta's schedules)."""
    out = []
    for s in steps:
        if s["form"] != "gradual_pruning":
            out.append((s["form"], s["case"], s["vs_dense"], s["vs_dense"] <= STEP_TARGET))
            continue
        if "between" not in s["route"]:
            continue
        out.append(("gradual_pruning (between updates)", s["case"], s["vs_dense"],
                    s["vs_dense"] <= STEP_TARGET))
        upd = [u for u in steps if u["case"] == s["case"] and "update step" in u["route"]]
        for every in (update_every if upd else ()):
            ratio = ((every - 1) * s["seconds"] + upd[0]["seconds"]) / (every * s["reference"])
            out.append((f"gradual_pruning (one update every {every} steps)", s["case"], ratio,
                        ratio <= STEP_TARGET))
    return out


def format_report(result, command):
    """The markdown section of ``result`` (from :func:`run`) run as ``command``."""
    from . import harness
    from .harness import met

    mode = result["mode"]
    cfg = MODES[mode]
    rows, steps = result["rows"], result["steps"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = [SECTION_TITLE, ""]
    lines += [
        "Test accuracy of the demo's digits MLP and CNN (`matcompress.tf.demo`: the same models, "
        "data, schedule and fine-tuning) against the stored bytes of the compressed matrices, "
        f"for the new forms of issue 13 at {', '.join(f'{r}x' for r in cfg['ratios'])} beside "
        "the five built-in methods, and the train step of each new form against the dense "
        "layer (target <= 1.5x, DESIGN §7)."
        + ("" if mode == "full" else f" **Mode {mode}: figures indicative only.**"),
        "",
        "- \"asked\": the compression_ratio asked; \"matrix bytes\": the stored bytes of the "
        "compressed matrices' factors in the stripped model (`compressed_nbytes`), \"dense "
        "bytes\": those matrices dense (float32), \"achieved\" = dense bytes / matrix bytes; "
        "\"all KiB\": every weight of the stripped model; \"vs dense\": accuracy minus the "
        "better of the dense model's two scores (as trained, and after the same extra epochs)",
        f"- digits MLP: {cfg['mlp'][0]} dense epochs, {cfg['mlp'][1]} epochs of fine-tuning; "
        f"digits CNN: {cfg['cnn'][0]} and {cfg['cnn'][1]}; Adam 1e-3, batch 32, seed "
        f"{result['seed']}; 450 test digits (one digit = 0.22 pt)"
        + ("" if cfg["n_train"] is None else
           f"; only the first {cfg['n_train']} training and test digits, eager steps"),
        "- gradual_pruning: PruningSchedule(0, half the fine-tuning's steps, a quarter epoch, "
        "0, 1 - 1/R), magnitude scores, the Dense kernels only (PruningKernel takes 2-D kernels: "
        "the CNN's convolution stays dense in these rows); its bytes are the CSR form (values, "
        "narrow column indices, row pointers), so it achieves about R / 2 at sparsity 1 - 1/R, "
        "where the `pruning` method's ratio targeting keeps fewer weights to meet R",
        "- rank_reduced: low rank with the convolution computed as a convolution to `rank` "
        "filters and a 1x1 projection (CNN only; its Dense kernel is plain low rank)",
        "",
    ]
    for task in tasks:
        lines += [f"**{task}: accuracy % (achieved ratio) per asked ratio**", "",
                  accuracy_pivot(rows, task, cfg["ratios"]), ""]
    for task in tasks:
        lines += [f"**{task}: every row**", "", accuracy_table(rows, task), ""]
    from ..tf.demo import check_targets

    targets = check_targets(rows)
    if targets:
        lines += ["The demo's accuracy target (digits MLP at 8x within 1 point of dense):", ""]
        lines += [f"- {t}" for t in targets] + [""]
    cases = list(dict.fromkeys(s["case"] for s in steps))
    lines += ["**Train step of each new form against the dense layer** (best of "
              f"{cfg['rounds']} interleaved rounds; after the drop: only the factors train; "
              "gradual pruning: the PruningKernel step between mask updates, and an update "
              "step, which recomputes the mask; the targets amortize it over 10 steps, this "
              "benchmark's and the demo's schedule, and over 100)", ""]
    for case in cases:
        lines += [f"*{case}*", "", step_table(steps, case), ""]
    lines += [f"Targets: train step <= {STEP_TARGET}x the dense layer's:", ""]
    verdicts = step_verdicts(steps)
    for form, case, ratio, ok in verdicts:
        lines.append(f"- {form}, {case}: {ratio:.2f}x: {met(ok)}")
    n_met = sum(ok for *_, ok in verdicts)
    lines += ["", f"{n_met} of {len(verdicts)} step targets met."]
    if result["step_notes"]:
        lines += [""] + [f"- {n}" for n in result["step_notes"]]
    lines += ["", "### The run", "",
              harness.format_environment(harness.environment(), command)]
    try:
        import tensorflow as tf

        lines.append(f"- tensorflow {tf.__version__}")
    except ImportError:  # pragma: no cover - the benchmark needs it
        pass
    src = harness.source_state()
    if src:
        lines.append(f"- matcompress source: {src}")
    lines.append(f"- wall time: {result['elapsed']:.0f} s (accuracy "
                 f"{result['accuracy_seconds']:.0f} s, train steps {result['step_seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


# ---- command line -------------------------------------------------------------------------------

def main(argv=None, prog="python bench/new_forms.py"):
    """Run the benchmark from the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="one ratio (4x), shorter training, small layers (about a minute)")
    g.add_argument("--tiny", action="store_true",
                   help="a few eager steps on a few digits, tiny layers (for the tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-idle", type=float, default=None, metavar="SECONDS",
                   help="budget for waiting for other processes to leave the CPU before "
                        "timings (default 60 full, 10 quick, 0 tiny)")
    p.add_argument("--markdown", metavar="FILE", help="write the report section to FILE")
    p.add_argument("--results", metavar="FILE",
                   help="replace (or add) this benchmark's section of the markdown FILE "
                        "(e.g. bench/RESULTS.md), leaving the others")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    command = shlex.join(prog.split() + argv)
    result = run(mode, seed=args.seed, wait_idle=args.wait_idle,
                 say=lambda msg: print(msg, flush=True))
    section = format_report(result, command)
    print()
    print(section)
    from .compare import replace_section
    from .harness import write_report

    write_report(section, markdown=args.markdown, results=args.results, title=SECTION_TITLE,
                 replace=replace_section)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
