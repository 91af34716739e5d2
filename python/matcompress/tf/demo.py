"""The model-compression demo: train Keras models, compress their weight matrices with every
built-in compressor at 2x, 4x, 8x and 16x fewer bytes while they keep training
(:func:`matcompress.tf.apply_compression`), and report accuracy (or perplexity), bytes and time.

Offline stand-ins for the CIFAR-10 and Penn Treebank experiments (this package must run with no
download):

- **digits MLP** and **digits CNN**: scikit-learn's handwritten digits (1,797 8x8 images, shipped
  with scikit-learn), 75 % / 25 % split.
- **LSTM language model**: word-level, on the Python Language Reference topics that every CPython
  ships in ``pydoc_data/topics.py`` (about 64,000 words of English prose about Python): always
  there with the interpreter, English text with a long-tailed vocabulary like PTB's, and large
  enough for a small LSTM to learn in a minute. The 2,000 most frequent words are kept (the rest
  become ``<unk>``), the text is cut into sequences of 20 words, the last 10 % held out.

Each model is trained dense first; each compressor then starts from those weights, factorizes
the large matrices (Dense kernels and Embedding tables of at least 16,384 weights, convolution
kernels of at least 4,096 through their 2-D view) at the first step, blends for half an epoch
and trains the factors alone for the remaining epochs
(:class:`~matcompress.tf.CompressionSchedule`, :class:`~matcompress.tf.CompressionCallback`);
the stripped model (factors only; convolutions as :class:`~matcompress.tf.conv.FactoredConv`) is
evaluated. The CNN also gets "rank_reduced" rows: low rank, its convolutions computed as a
convolution to ``rank`` filters and a 1x1 projection. The full demo adds, on the digits models,
the structural forms ("block", "mixed_block", "input_output") and "gradual_pruning" (a
:class:`~matcompress.tf.PruningSchedule` to ``1 - 1/ratio`` sparsity during the fine-tuning;
the CNN's convolution stays dense there) at :data:`NEW_FORM_RATIOS`. The dense model is also
trained for the same extra epochs ("dense+N"); the reference for the targets is the better of its
two scores, so that a compressed model is credited neither with its extra training nor with a
bad restart.
"""

from __future__ import annotations

import collections
import math
import re
import time

import numpy as np

RATIOS = (2, 4, 8, 16)
METHODS = ("kmeans", "low_rank", "dictionary", "pruning", "simhash")
#: method="auto" per matrix, without and with the snapshot's batch as calibration inputs
#: (CompressionSchedule(calibrate=True)), at the ratios where single methods break.
SEARCHES = {"auto": (8, 16), "auto+X": (8, 16)}
QUICK_SEARCHES = {"auto": (8,), "auto+X": (8,)}
MIN_WEIGHTS = 16384  # matrices smaller than this stay dense
#: Convolution kernels are compressed from this many weights: the CNN's second convolution
#: (3 x 3 x 16 x 32 = 4,608, a 144 x 32 view) is; its first (144 weights, a 9 x 16 view that
#: most methods cannot bring to 8x, 0.1 % of the model's bytes) is not.
MIN_CONV_WEIGHTS = 4096
#: Rows that only some models get: low rank with the convolutions rank-reduced.
CONV_METHODS = ("rank_reduced",)
#: The structural forms (docs/decisions.md, "Structural forms") and gradual pruning: the
#: layers pruned by a :class:`~matcompress.tf.PruningSchedule` to ``1 - 1/ratio`` sparsity
#: over the first half of the fine-tuning (magnitude scores), counted as the CSR form of the
#: kept weights (so about half the asked ratio: a value and a column index per weight).
STRUCTURAL = ("block", "mixed_block", "input_output")
NEW_FORMS = STRUCTURAL + ("gradual_pruning",)
#: The new forms' ratios in the full demo (every model but the LSTM; the quick demo has none).
NEW_FORM_RATIOS = (4, 8)


# ---- data -------------------------------------------------------------------------------------

def digits_data(seed=0):
    """(X_train, y_train, X_test, y_test): scikit-learn's digits in [0, 1], 75 % / 25 %."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.75 * len(y))
    return X[order[:cut]], y[order[:cut]], X[order[cut:]], y[order[cut:]]


def corpus_words():
    """The words (lower-case runs of letters) of the Python Language Reference topics that
    CPython ships in ``pydoc_data/topics.py``."""
    from pydoc_data import topics

    text = " ".join(topics.topics[k] for k in sorted(topics.topics))
    return re.findall(r"[a-z]+", text.lower())


def corpus_data(vocab=2000, seq_len=20, held_out=0.1):
    """(X_train, Y_train, X_test, Y_test, vocab): word ids in sequences of ``seq_len``, the
    targets shifted by one word; the last ``held_out`` of the text is the test set."""
    words = corpus_words()
    common = [w for w, _ in collections.Counter(words).most_common(vocab - 1)]
    index = {w: i + 1 for i, w in enumerate(common)}  # 0: <unk>
    ids = np.array([index.get(w, 0) for w in words], np.int32)
    n = (len(ids) - 1) // seq_len
    X = ids[:n * seq_len].reshape(n, seq_len)
    Y = ids[1:n * seq_len + 1].reshape(n, seq_len)
    cut = int(n * (1 - held_out))
    return X[:cut], Y[:cut], X[cut:], Y[cut:], vocab


# ---- models ------------------------------------------------------------------------------------

def _mlp():
    import keras

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])


def _cnn():
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])


def _lstm(vocab, seq_len):
    import keras

    return keras.Sequential([keras.Input((seq_len,), dtype="int32"),
                             keras.layers.Embedding(vocab, 64),
                             keras.layers.LSTM(128, return_sequences=True),
                             keras.layers.Dense(vocab)])


def _compressor(method, ratio, seed):
    from .. import compressors as C
    from .. import structural as S

    if method in ("auto", "auto+X"):
        return C.get("auto", compression_ratio=ratio, random_state=seed)
    if method in ("low_rank", "rank_reduced"):
        return C.LowRankCompressor(compression_ratio=ratio)
    if method == "kmeans":
        return C.KMeansCompressor(compression_ratio=ratio, random_state=seed)
    if method == "dictionary":
        return C.DictionaryCompressor(compression_ratio=ratio, max_iter=5, random_state=seed)
    if method == "pruning":
        return C.PruningCompressor(compression_ratio=ratio)
    if method == "block":
        return S.BlockDiagonalCompressor(compression_ratio=ratio, random_state=seed)
    if method == "mixed_block":
        return S.MixedBlockCompressor(compression_ratio=ratio)
    if method == "input_output":
        return S.InputOutputCompressor(compression_ratio=ratio)
    return C.SimhashCompressor(compression_ratio=ratio, random_state=seed)


def _large(layer):
    import keras

    if type(layer) is keras.layers.Dense:
        return int(np.prod(layer.kernel.shape)) >= MIN_WEIGHTS
    if type(layer) is keras.layers.Embedding:
        return int(np.prod(layer.embeddings.shape)) >= MIN_WEIGHTS
    if type(layer) in (keras.layers.Conv1D, keras.layers.Conv2D):
        return int(np.prod(layer.kernel.shape)) >= MIN_CONV_WEIGHTS
    return False


def _large_matrix(layer):
    """The large Dense and Embedding matrices: what the "gradual_pruning" rows prune
    (:class:`~matcompress.tf.pruning.PruningKernel` takes 2-D kernels only, so a CNN's
    convolution stays dense in those rows)."""
    return _large(layer) and not hasattr(layer, "kernel_size")


class Task:
    """One model on its data: how to build, train and score it."""

    def __init__(self, name, build, data, loss, metric, epochs, finetune, batch_size,
                 has_convs=False, run_eagerly=False):
        self.name, self.build, self.data = name, build, data
        self.loss, self.metric = loss, metric  # metric: "accuracy" or "perplexity"
        self.epochs, self.finetune, self.batch_size = epochs, finetune, batch_size
        self.has_convs = has_convs  # the CONV_METHODS rows apply
        # eager training and scoring: no tracing, for runs of a few steps (tests)
        self.run_eagerly = run_eagerly

    def compile(self, model, lr=1e-3):
        import keras

        model.compile(keras.optimizers.Adam(lr), self.loss,
                      metrics=["accuracy"] if self.metric == "accuracy" else [],
                      run_eagerly=self.run_eagerly)

    def score(self, model):
        Xte, yte = self.data[2], self.data[3]
        out = model.evaluate(Xte, yte, batch_size=256, verbose=0, return_dict=True)
        if self.metric == "accuracy":
            return 100.0 * out["accuracy"]
        return math.exp(out["loss"])


def tasks(quick=False, seed=0):
    import keras

    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    Xtr, ytr, Xte, yte = digits_data(seed)
    out = [Task("digits MLP", _mlp, (Xtr, ytr, Xte, yte), sparse, "accuracy",
                epochs=12 if quick else 15, finetune=4 if quick else 5, batch_size=32)]
    if quick:
        return out
    img = (Xtr.reshape(-1, 8, 8, 1), ytr, Xte.reshape(-1, 8, 8, 1), yte)
    out.append(Task("digits CNN", _cnn, img, sparse, "accuracy", epochs=10, finetune=4,
                    batch_size=32, has_convs=True))
    Xc, Yc, Xct, Yct, vocab = corpus_data()
    out.append(Task("LSTM language model", lambda: _lstm(vocab, Xc.shape[1]),
                    (Xc, Yc, Xct, Yct), sparse, "perplexity", epochs=5, finetune=1,
                    batch_size=64))
    return out


# ---- the experiment ----------------------------------------------------------------------------

def _bytes(model):
    """(bytes of every weight, bytes of the compressed matrices' factors, bytes those matrices
    would take dense)."""
    from .compression import compressed_nbytes

    total = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    factored, dense = compressed_nbytes(model) if _has_factored(model) else (0, 0)
    return total, factored, dense


def _has_factored(model):
    from .layers import FactoredDense, FactoredEmbedding, FactoredKernel

    return any(isinstance(layer, (FactoredDense, FactoredEmbedding, FactoredKernel))
               for layer in model._flatten_layers(include_self=False))


def gradual_schedule(task, ratio):
    """The "gradual_pruning" rows' schedule: magnitude pruning from 0 to ``1 - 1/ratio``
    sparsity on Zhu & Gupta's ramp over the first half of the fine-tuning, the mask updated
    every quarter epoch, held for the second half."""
    from .pruning import PruningSchedule

    steps = math.ceil(len(task.data[0]) / task.batch_size)
    end = max(1, task.finetune * steps // 2)
    return PruningSchedule(0, end, max(1, min(steps // 4, end)), 0.0, 1.0 - 1.0 / ratio)


def run_task(task, methods=METHODS, ratios=RATIOS, seed=0, progress=None, searches=None,
             forms=None):
    """Rows (dicts) for the dense model, every method x ratio, every search (``searches``:
    method -> its ratios; "auto+X" calibrates on the snapshot's batch) and every new form
    (``forms``: method of :data:`NEW_FORMS` -> its ratios; "rank_reduced" rows come with
    ``task.has_convs``). A row records the score, the stripped model's bytes ("bytes"), the
    compressed matrices' stored bytes ("matrix_bytes") and dense bytes ("dense_matrix_bytes";
    "achieved" is their ratio) and the fine-tuning's seconds."""
    import keras

    from .compression import CompressionCallback, apply_compression, strip_compression
    from .schedule import CompressionSchedule

    Xtr, ytr = task.data[0], task.data[1]
    keras.utils.set_random_seed(seed)
    dense = task.build()
    task.compile(dense)
    t0 = time.perf_counter()
    dense.fit(Xtr, ytr, epochs=task.epochs, batch_size=task.batch_size, verbose=0)
    dense_time = time.perf_counter() - t0
    total, _, _ = _bytes(dense)
    big = sum(int(np.prod(layer.weights[0].shape)) * 4
              for layer in dense._flatten_layers(include_self=False) if _large(layer))
    rows = [{"task": task.name, "method": "dense", "ratio": 1, "score": task.score(dense),
             "bytes": total, "matrix_bytes": big, "dense_matrix_bytes": big, "achieved": 1.0,
             "time": dense_time}]
    # The reference: the dense model trained for the same extra epochs as each compressed one
    # (which would otherwise be credited with that training).
    keras.utils.set_random_seed(seed)
    more = keras.models.clone_model(dense)
    more.set_weights(dense.get_weights())
    task.compile(more)
    t0 = time.perf_counter()
    more.fit(Xtr, ytr, epochs=task.finetune, batch_size=task.batch_size, verbose=0)
    rows.append({"task": task.name, "method": f"dense+{task.finetune}", "ratio": 1,
                 "score": task.score(more), "bytes": total, "matrix_bytes": big,
                 "dense_matrix_bytes": big, "achieved": 1.0, "time": time.perf_counter() - t0})
    if progress:
        progress()
    steps = math.ceil(len(Xtr) / task.batch_size)
    # Snapshot at the first step, alpha down by a quarter every eighth of an epoch: the
    # factors alone from half an epoch on.
    schedule = CompressionSchedule(begin_step=0, update_every=max(1, steps // 8),
                                   alpha_decrement=0.25)
    calibrated = CompressionSchedule(begin_step=0, update_every=max(1, steps // 8),
                                     alpha_decrement=0.25, calibrate=True)
    runs = [(m, r) for m in methods for r in ratios]
    if task.has_convs:
        runs += [(m, r) for m in CONV_METHODS for r in ratios]
    runs += [(m, r) for m, rs in (searches or {}).items() for r in rs]
    runs += [(m, r) for m, rs in (forms or {}).items() for r in rs]
    for method, ratio in runs:
        row = {"task": task.name, "method": method, "ratio": ratio}
        try:
            keras.utils.set_random_seed(seed)
            if method == "gradual_pruning":
                model = apply_compression(dense, None, schedule=gradual_schedule(task, ratio),
                                          filter_fn=_large_matrix)
            else:
                model = apply_compression(
                    dense, _compressor(method, ratio, seed),
                    schedule=calibrated if method.endswith("+X") else schedule,
                    filter_fn=_large,
                    conv_form="rank_reduced" if method == "rank_reduced" else "reconstructed")
        except ValueError as exc:  # a ratio this method cannot reach on these shapes
            row.update(score=None, note=str(exc).split(";")[0])
            rows.append(row)
            if progress:
                progress()
            continue
        task.compile(model)
        t0 = time.perf_counter()
        model.fit(Xtr, ytr, epochs=task.finetune, batch_size=task.batch_size, verbose=0,
                  callbacks=[CompressionCallback()])
        elapsed = time.perf_counter() - t0
        # Convolutions keep their factors (FactoredConv), pruned layers their CSR form, so
        # that the bytes count them.
        small = strip_compression(model, convs="factored", sparse=True)
        task.compile(small)
        total, factored, dense_bytes = _bytes(small)
        row.update(score=task.score(small), bytes=total, matrix_bytes=factored,
                   dense_matrix_bytes=dense_bytes, achieved=dense_bytes / factored,
                   time=elapsed)
        rows.append(row)
        if progress:
            progress()
    return rows


def reference_score(rows, task):
    """The better of the dense model's scores (as trained, and after the same extra epochs as the
    compressed models): the stricter reference for the targets."""
    scores = [r["score"] for r in rows if r["task"] == task and r["method"].startswith("dense")]
    if not scores:
        return None
    return min(scores) if "LSTM" in task else max(scores)


def format_table(rows):
    lines = []
    w = max([12] + [len(r["method"]) for r in rows])
    head = (f"{'model':<20} {'method':<{w}} {'asked':>5} {'matrices':>9} {'all weights':>12} "
            f"{'score':>9} {'vs dense':>9} {'train s':>8}")
    dense_score = {r["task"]: reference_score(rows, r["task"]) for r in rows}
    task = None
    for r in rows:
        if r["task"] != task:
            task = r["task"]
            lines += ["", head, "-" * len(head)]
        asked = "-" if r["method"].startswith("dense") else f"{r['ratio']}x"
        if r.get("score") is None:
            note = r.get("note", "")
            lines.append(f"{r['task']:<20} {r['method']:<{w}} {asked:>5}  "
                         f"unreachable: {note[:60]}")
            continue
        base = dense_score[r["task"]]
        perplexity = "LSTM" in r["task"]
        score = f"{r['score']:.1f}" + ("" if perplexity else " %")
        delta = (f"{100 * (r['score'] / base - 1):+.1f} %" if perplexity
                 else f"{r['score'] - base:+.1f} pt")
        lines.append(f"{r['task']:<20} {r['method']:<{w}} {asked:>5} {r['achieved']:>8.1f}x "
                     f"{r['bytes'] / 1024:>9.1f} KiB {score:>9} {delta:>9} {r['time']:>8.1f}")
    return "\n".join(lines)


def check_targets(rows):
    """The issue's targets: the digits MLP at 8x within 1 point of its dense accuracy, the LSTM
    at 4x within 5 % of its dense perplexity (per method: met / missed)."""
    out = []
    for task, ratio, ok, what in (("digits MLP", 8, lambda s, b: b - s <= 1.0,
                                   "within 1 point of dense accuracy"),
                                  ("LSTM language model", 4, lambda s, b: s <= 1.05 * b,
                                   "within 5 % of dense perplexity")):
        base = reference_score(rows, task)
        if base is None:
            continue
        for r in rows:
            if r["task"] == task and r["ratio"] == ratio and not r["method"].startswith("dense"):
                verdict = ("unreachable" if r.get("score") is None
                           else "met" if ok(r["score"], base) else "missed")
                out.append(f"{task} at {ratio}x, {r['method']}: {what}: {verdict}")
    return out


def plot(rows, path):
    """A PNG: score against the achieved ratio, one panel a model, one line a method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        base = reference_score(rows, name)
        for method in METHODS + CONV_METHODS + tuple(SEARCHES) + NEW_FORMS:
            pts = [(r["achieved"], r["score"]) for r in rows if r["task"] == name
                   and r["method"] == method and r.get("score") is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method,
                        linestyle="--" if method in NEW_FORMS else "-")
        ax.axhline(base, color="k", linestyle="--", label="dense (better of 2 runs)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression of the large matrices (x fewer bytes)")
        ax.set_ylabel("perplexity" if "LSTM" in name else "test accuracy (%)")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(quick=False, png="matcompress-models.png", seed=0, say=print):
    """Run the demo; returns the rows."""
    import keras

    import_time = time.perf_counter()
    jobs = tasks(quick, seed)
    methods = METHODS
    ratios = (4, 8) if quick else RATIOS
    searches = QUICK_SEARCHES if quick else SEARCHES
    n_search = sum(len(r) for r in searches.values())
    # The new forms on the digits models (not the LSTM, whose kernels' step the bench times).
    forms = {} if quick else {m: NEW_FORM_RATIOS for m in NEW_FORMS}
    total = len(jobs) * (2 + len(methods) * len(ratios) + n_search)
    total += sum(len(CONV_METHODS) * len(ratios) for task in jobs if task.has_convs)
    total += sum(len(NEW_FORMS) * len(NEW_FORM_RATIOS) for task in jobs
                 if forms and task.metric == "accuracy")
    bar = keras.utils.Progbar(total, unit_name="model")
    done = [0]

    def tick():
        done[0] += 1
        bar.update(done[0])

    say(f"Training {len(jobs)} model(s) dense, then with {len(methods)} compressors at "
        f"{', '.join(f'{r}x' for r in ratios)} fewer bytes, and method='auto' per matrix "
        f"(auto+X: calibrated on the snapshot's batch) at "
        f"{', '.join(f'{r}x' for r in searches['auto'])} ({total} trainings)")
    if forms:
        say(f"... and the structural forms and gradual pruning on the digits models at "
            f"{', '.join(f'{r}x' for r in NEW_FORM_RATIOS)}")
    rows = []
    for task in jobs:
        rows += run_task(task, methods, ratios, seed, progress=tick, searches=searches,
                         forms=forms if task.metric == "accuracy" else None)
    say(format_table(rows))
    say("")
    for line in check_targets(rows):
        say(line)
    if png:
        plot(rows, png)
        say(f"\nPlot: {png}")
    say(f"Total time: {time.perf_counter() - import_time:.0f} s")
    return rows
