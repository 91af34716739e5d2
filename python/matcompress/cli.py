"""The ``matcompress`` command line.

Commands
--------
``matcompress demo [--quick] [--png PATH] [--seed SEED]``
    Train Keras models (an MLP and a CNN on scikit-learn's digits, an LSTM language model on the
    Python Language Reference text shipped with CPython), compress their large matrices with
    every built-in compressor at 2x-16x while they keep training, and print accuracy or
    perplexity, bytes and time; write a PNG plot (see :mod:`matcompress.tf.demo`).
``matcompress sparse-demo [--quick] [--patches N] [--atoms K] [--sparsity S] [--threads T]
[--seed SEED] [--dtype {float32,float64}] [--png PATH]``
    Sparse-code 8x8 patches of natural images with :func:`matcompress.sparse_encode` and with
    scikit-learn, and print time, error, speed-up and storage; learn a dictionary from the same
    patches with :func:`matcompress.dict_learning` and with scikit-learn's
    ``MiniBatchDictionaryLearning``, print their time and error beside the fixed DCT
    dictionary's, and write a PNG of both sets of learned atoms (default
    ``matcompress-atoms.png``; see :mod:`matcompress.demo`).
``matcompress compress INPUT --method {lowrank,dictionary,kmeans,simhash,prune,scaled-kmeans,
additive,block,mixed-block,input-output,auto,outliers,lowrank-residual,prune-kmeans}
(--ratio R | method parameters) -o OUT.npz
[--threads T] [--seed SEED]``
    Compress every 2-D float array of a ``.npy``, ``.npz`` or ``.safetensors`` file (float16
    and bfloat16 ones in float32) and write all the factorizations to one ``.npz``
    (:mod:`matcompress.archive`; read it back with :func:`matcompress.archive.load_many`).
    Other arrays are skipped with a note. The method parameters: lowrank ``--rank``,
    dictionary ``--atoms`` and ``--nonzeros``, kmeans ``--codes`` (and ``--block-size``), simhash
    ``--bits``, prune ``--sparsity``, scaled-kmeans ``--codes`` (and ``--group-size``),
    additive ``--codes`` (and ``--codebooks``, ``--block-size``), block ``--blocks``,
    mixed-block ``--bases`` (and ``--block-size``), input-output ``--input-factor`` and/or
    ``--output-factor`` (and ``--input-block-size``, ``--output-block-size``); auto, outliers,
    lowrank-residual and prune-kmeans take ``--ratio`` only. Prints a line per matrix on stderr
    and a table (bytes, ratio, relative error) on stdout.
``matcompress inspect ARCHIVE [--original INPUT]``
    Print each factorization of an archive written by ``compress``: name, kind, shape, dtype,
    bytes, ratio, and with the original file the relative error ``||W - W~||_F / ||W||_F``,
    computed a block of rows at a time. A totals line ends the table.
``matcompress info``
    Print the native build's configuration (:func:`matcompress.show_config`) and the versions of
    Python and of the packages matcompress uses.
``matcompress bench [--quick] [--cases GROUPS] [--markdown FILE] [--results FILE] [--png FILE]``
    Time every kernel against scikit-learn, SPAMS, faiss and dense numpy in one run and print
    the ratios beside their targets, with peak memory (:mod:`matcompress.benchmark.compare`;
    ``bench/compare.py`` runs the same).

Run it as ``matcompress ...`` (installed entry point) or ``python -m matcompress.cli ...``.
Exit codes: 0 success; 1 a runtime problem (a missing optional dependency, a file that cannot
be read or written, a NaN weight, a compression that fails); 2 a bad command-line argument (a
missing input file, an output in a directory that does not exist, method parameters that do
not fit a matrix); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import platform
import sys
import tempfile
import textwrap
import time
from typing import NamedTuple

import numpy as np

__all__ = ["main"]

PROG = "matcompress"


class _Failure(Exception):
    """A runtime problem of a command (exit status 1); the message is one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``prog: error: message (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but never wrapping at a hyphen (it would split file names such as
    ``matcompress-atoms.png``). Overrides argparse's long-standing private wrapping hooks."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


def _int_at_least(low):
    """An argparse ``type`` accepting integers >= ``low`` (``_`` separators allowed, 50_000)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _float_in(low, high=math.inf, *, low_open=False):
    """An argparse ``type`` accepting finite floats from ``low`` (excluded when ``low_open``)
    up to, and excluding, ``high``."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low)
                and value < high):
            if high == math.inf:
                where = f"> {low:g}" if low_open else f">= {low:g}"
            else:
                where = f"in {'(' if low_open else '['}{low:g}, {high:g})"
            raise argparse.ArgumentTypeError(f"must be {where}, got {text}")
        return value

    return parse


def _atoms(text):
    """argparse ``type`` for ``--atoms``: a square m*m with 8 <= m <= 64."""
    from .demo import DemoUsageError, check_n_atoms

    value = _int_at_least(1)(text)
    try:
        return check_n_atoms(value)
    except DemoUsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Method(NamedTuple):
    """How ``compress --method NAME`` maps to a registered compressor."""

    registry: str  # the name compressors.get knows
    params: dict  # command-line flag -> the compressor's parameter
    required: tuple  # the flags needed when --ratio is not given
    with_ratio: tuple = ()  # the flags that may go with --ratio
    any_of: tuple = ()  # without --ratio, at least one of these flags is needed


_METHODS = {
    "lowrank": _Method("low_rank", {"--rank": "rank"}, ("--rank",)),
    "dictionary": _Method("dictionary", {"--atoms": "n_atoms", "--nonzeros": "n_nonzero_coefs"},
                          ("--atoms", "--nonzeros")),
    "kmeans": _Method("kmeans", {"--codes": "n_codes", "--block-size": "block_size"},
                      ("--codes",), ("--block-size",)),
    "simhash": _Method("simhash", {"--bits": "n_bits"}, ("--bits",)),
    "prune": _Method("pruning", {"--sparsity": "sparsity"}, ("--sparsity",)),
    "scaled-kmeans": _Method("scaled_kmeans", {"--codes": "n_codes",
                                               "--group-size": "group_size"},
                             ("--codes",), ("--group-size",)),
    "additive": _Method("additive", {"--codes": "n_codes", "--codebooks": "n_codebooks",
                                     "--block-size": "block_size"},
                        ("--codes",), ("--codebooks", "--block-size")),
    "block": _Method("block", {"--blocks": "n_blocks"}, ("--blocks",)),
    "mixed-block": _Method("mixed_block", {"--bases": "num_bases",
                                           "--block-size": "block_size"},
                           ("--bases",), ("--block-size",)),
    "input-output": _Method("input_output", {"--input-factor": "input_factor",
                                             "--output-factor": "output_factor",
                                             "--input-block-size": "input_block_size",
                                             "--output-block-size": "output_block_size"},
                            (), ("--input-block-size", "--output-block-size"),
                            ("--input-factor", "--output-factor")),
    # Searches and composites: their parameters are solved from --ratio.
    "auto": _Method("auto", {}, ()),
    "outliers": _Method("outliers", {"--outlier-fraction": "outlier_fraction"}, (),
                        ("--outlier-fraction",)),
    "lowrank-residual": _Method("low_rank_residual", {}, ()),
    "prune-kmeans": _Method("prune_kmeans", {}, ()),
}


def _dest(flag):
    return flag[2:].replace("-", "_")


def _build_parser():
    """Return the ``matcompress`` argument parser and its subcommands."""
    from . import __version__
    from .demo import (
        DEFAULT_COMPARE, DEFAULT_EPOCHS, DEFAULT_LEARN_PATCHES, DEFAULT_PATCHES, DEFAULT_PNG,
        QUICK_COMPARE, QUICK_EPOCHS, QUICK_LEARN_PATCHES, QUICK_PATCHES, SKLEARN_ALPHA,
    )

    parser = _Parser(
        prog=PROG,
        description="Fast matrix compression for machine-learning models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = commands.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
        help="train Keras models and compress them with every method at 2x-16x; print "
             "accuracy, bytes and time",
        description=(
            "Train an MLP and a small CNN on scikit-learn's digits and a word-level LSTM "
            "language model on the Python Language Reference text that ships with CPython, "
            "then compress their large weight matrices with every built-in compressor at 2x, "
            "4x, 8x and 16x fewer bytes while they keep training (apply_compression), and print "
            "accuracy or perplexity, bytes and training time, with the targets; write a PNG "
            "plot. Needs TensorFlow, scikit-learn and matplotlib: "
            'pip install "matcompress[demo]".'
        ),
    )
    models.add_argument("--quick", action="store_true",
                        help="the digits MLP only, at 4x and 8x, fewer epochs (about a minute)")
    models.add_argument("--png", default="matcompress-models.png", metavar="PATH",
                        help="where to write the plot (default: matcompress-models.png in the "
                             "current directory); an existing file is replaced")
    models.add_argument("--seed", type=_int_at_least(0), default=0, metavar="SEED",
                        help="seed for the data split, the initial weights and the compressors "
                             "(default 0)")
    models.set_defaults(handler=_run_model_demo, command_parser=models)

    demo = commands.add_parser(
        "sparse-demo",
        formatter_class=_HelpFormatter,
        help="sparse-code 8x8 image patches and learn dictionaries with matcompress and "
             "scikit-learn; compare them",
        description=(
            "Sparse-code 8x8 patches of scikit-learn's sample images over the overcomplete 2-D "
            "DCT dictionary with matcompress.sparse_encode (all patches) and with scikit-learn's "
            "sparse_encode(algorithm='omp') (a subset), then print time, signals/s, error, "
            "PSNR, speed-up, support agreement and storage. Then learn a dictionary of the same "
            "size from a random subset of the patches with matcompress.dict_learning "
            "(method='online') and with scikit-learn's MiniBatchDictionaryLearning (alpha=1, its "
            f"default, and alpha={SKLEARN_ALPHA:g}), all from the same initial dictionary; print "
            "their time, speed-up and OMP error on the training and the held-out patches beside "
            "the fixed DCT dictionary's, and write a PNG of the atoms learned by matcompress and "
            "by scikit-learn. scikit-learn's dictionary learning takes most of the time (about a "
            "minute on 2 cores for the full run). Needs scikit-learn and pillow: "
            'pip install "matcompress[demo]".'
        ),
    )
    demo.add_argument(
        "--quick", action="store_true",
        help=f"smaller run: {QUICK_PATCHES:,} patches, {QUICK_COMPARE:,} for scikit-learn's OMP, "
             f"dictionaries learned from {QUICK_LEARN_PATCHES:,} of them for {QUICK_EPOCHS} "
             f"epoch{'s' if QUICK_EPOCHS != 1 else ''} (default {DEFAULT_PATCHES:,}, "
             f"{DEFAULT_COMPARE:,}, {DEFAULT_LEARN_PATCHES:,} and {DEFAULT_EPOCHS} epochs)",
    )
    demo.add_argument("--patches", type=_int_at_least(1), metavar="N",
                      help="patches coded by matcompress (overrides --quick's count); the "
                           "dictionaries learn from a random subset of them")
    demo.add_argument("--atoms", type=_atoms, default=256, metavar="K",
                      help="atoms of the DCT and of the learned dictionaries, a square m*m with "
                           "8 <= m <= 64 (default 256)")
    demo.add_argument("--sparsity", type=_int_at_least(1), default=8, metavar="S",
                      help="nonzero coefficients per patch, at most 64, in coding and learning "
                           "(default 8)")
    demo.add_argument("--threads", type=_int_at_least(1), metavar="T",
                      help="threads for matcompress and the BLAS (default: all available cores)")
    demo.add_argument("--seed", type=_int_at_least(0), default=0, metavar="SEED",
                      help="seed for the patch positions, the comparison subset, the training "
                           "patches and the learners (default 0)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                      help="dtype of patches and dictionary for both libraries (default float32)")
    demo.add_argument("--png", default=DEFAULT_PNG, metavar="PATH",
                      help="where to write the PNG of the learned atoms, matcompress's left and "
                           "scikit-learn's right; an existing file is replaced (default: "
                           f"{DEFAULT_PNG} in the current directory)")
    demo.set_defaults(handler=_run_demo, command_parser=demo)

    compress = commands.add_parser(
        "compress",
        formatter_class=_HelpFormatter,
        help="compress every 2-D float array of a .npy, .npz or .safetensors file into one .npz "
             "of factorizations",
        description=(
            "Compress every 2-D float array of INPUT with one method and write all the "
            "factorizations to one .npz archive (read it back in Python with "
            "matcompress.archive.load_many, or list it with 'matcompress inspect'). Arrays that "
            "are not 2-D or not float (biases, integer buffers) are skipped with a note; float16 "
            "and bfloat16 matrices are compressed in float32. Give either --ratio or the "
            "method's parameters: lowrank --rank; dictionary --atoms and --nonzeros; kmeans "
            "--codes (and --block-size, also allowed with --ratio); simhash --bits; prune "
            "--sparsity; scaled-kmeans --codes (and --group-size); additive --codes (and "
            "--codebooks, --block-size); block --blocks; mixed-block --bases (and "
            "--block-size, also allowed with --ratio); input-output --input-factor and/or "
            "--output-factor (and --input-block-size, --output-block-size, also allowed with "
            "--ratio); auto, outliers, lowrank-residual and prune-kmeans take --ratio. A "
            "line per matrix goes to stderr; a table of bytes, ratios and relative errors "
            "||W - W~||_F / ||W||_F to stdout."
        ),
    )
    compress.add_argument("input", metavar="INPUT",
                          help="a .npy file (one array, named after the file), a .npz (every "
                               "array in it) or a .safetensors file (F64, F32, F16, BF16); the "
                               "format is told by the file's first bytes")
    compress.add_argument("--method", required=True, choices=tuple(_METHODS),
                          help="lowrank (truncated SVD), dictionary (sparse codes over a learned "
                               "dictionary), kmeans (codebook), simhash (sign bits of a random "
                               "projection), prune (the largest weights kept), scaled-kmeans "
                               "(per-channel float16 scales times a shared codebook), additive "
                               "(blocks of weights as sums of codewords from a few codebooks, "
                               "times per-channel scales), block (k blocks on the diagonal), "
                               "mixed-block (a grid of blocks over a few shared basis blocks), "
                               "input-output (input blocks projected by a shared P, a smaller C, "
                               "output blocks expanded by a shared Q); with "
                               "--ratio only: auto (per matrix, the method and parameters with "
                               "the lowest error at that ratio), outliers (1%% of the weights "
                               "kept exactly, the rest quantized), lowrank-residual (a low rank "
                               "plus a quantized residual), prune-kmeans (pruning, then the kept "
                               "weights quantized)")
    compress.add_argument("--ratio", type=_float_in(1, low_open=True), metavar="R",
                          help="store each matrix in at most its bytes in INPUT / R (> 1); the "
                               "method's parameters are solved for per matrix. The bytes are "
                               "INPUT's: a float16 or bfloat16 matrix, stored in float32, asks "
                               "the compressor for 2R of its float32 bytes")
    params = compress.add_argument_group("method parameters (instead of --ratio)")
    params.add_argument("--rank", type=_int_at_least(1), metavar="K",
                        help="lowrank: the rank of the factors, at most min(rows, columns)")
    params.add_argument("--atoms", type=_int_at_least(1), metavar="K",
                        help="dictionary: atoms of the dictionary, at most the matrix's rows")
    params.add_argument("--nonzeros", type=_int_at_least(1), metavar="S",
                        help="dictionary: nonzero coefficients per row, at most --atoms")
    params.add_argument("--codes", type=_int_at_least(1), metavar="K",
                        help="kmeans: codebook entries (16 or fewer: 4-bit codes); "
                             "scaled-kmeans, additive: entries per codebook")
    params.add_argument("--codebooks", type=_int_at_least(1), metavar="M",
                        help="additive: codebooks summed per block (default 2; with --ratio: "
                             "solved, 1 to 3)")
    params.add_argument("--block-size", type=_int_at_least(1), metavar="B",
                        help="kmeans, additive: weights per code along each row, a divisor of "
                             "the columns (kmeans: default 1; with --ratio, the best of 1, 2, 4, "
                             "8 and 16; additive: default 8; with --ratio, the best of 8, 4, 2); "
                             "mixed-block: the side of the square blocks, a divisor of rows and "
                             "columns")
    params.add_argument("--bits", type=_int_at_least(1), metavar="K",
                        help="simhash: sign bits per column")
    params.add_argument("--sparsity", type=_float_in(0, 1), metavar="S",
                        help="prune: the fraction of the weights removed, in [0, 1)")
    params.add_argument("--group-size", type=_int_at_least(1), metavar="G",
                        help="scaled-kmeans: rows sharing one scale per column (default, and "
                             "with --ratio: solved, the finest groups that fit)")
    params.add_argument("--blocks", type=_int_at_least(1), metavar="K",
                        help="block: diagonal blocks, at most min(rows, columns) (the first "
                             "rows %% K blocks get one row more, the same for columns)")
    params.add_argument("--bases", type=_int_at_least(1), metavar="S",
                        help="mixed-block: shared basis blocks, at most --block-size squared "
                             "(--block-size: divides both sides; default the smallest of 4, "
                             "8, 16, 32 that does and holds S; with --ratio, the best of them)")
    params.add_argument("--input-factor", type=_int_at_least(1), metavar="F",
                        help="input-output: each block of --input-block-size inputs is "
                             "projected to block / F values (F divides the block; default 1)")
    params.add_argument("--output-factor", type=_int_at_least(1), metavar="F",
                        help="input-output: each block of --output-block-size outputs is "
                             "expanded from block / F values (default 1)")
    params.add_argument("--input-block-size", type=_int_at_least(1), metavar="B",
                        help="input-output: inputs per block, a divisor of the rows (default: "
                             "the largest of 32, 16, ..., 1 dividing them that F divides; with "
                             "--ratio, searched)")
    params.add_argument("--output-block-size", type=_int_at_least(1), metavar="B",
                        help="input-output: outputs per block, a divisor of the columns (as "
                             "--input-block-size)")
    params.add_argument("--outlier-fraction", type=_float_in(0, 1), metavar="F",
                        help="outliers: the fraction of the weights kept exactly (default 0.01)")
    compress.add_argument("-o", "--output", required=True, metavar="OUT.npz",
                          help="the archive to write, exactly this path (an existing file is "
                               "replaced, and only once every matrix is compressed)")
    compress.add_argument("--threads", type=_int_at_least(1), metavar="T",
                          help="threads for matcompress's kernels and the BLAS (default: all "
                               "available cores)")
    compress.add_argument("--seed", type=_int_at_least(0), default=0, metavar="SEED",
                          help="seed of the compressors' random choices (default 0: the same "
                               "archive on every run)")
    compress.set_defaults(handler=_run_compress, command_parser=compress)

    inspect_ = commands.add_parser(
        "inspect",
        formatter_class=_HelpFormatter,
        help="list the factorizations of an archive written by compress, with their errors "
             "given the original file",
        description=(
            "Print each factorization of an archive written by 'matcompress compress' (or "
            "matcompress.archive.save_many): name, kind, shape, dtype, bytes before and after, "
            "ratio; with --original, also the relative error ||W - W~||_F / ||W||_F against "
            "the array of the same name in the original file, computed a block of rows at a "
            "time (W~ is never built whole). A totals line ends the table."
        ),
    )
    inspect_.add_argument("archive", metavar="ARCHIVE", help="a .npz written by compress")
    inspect_.add_argument("--original", metavar="INPUT",
                          help="the file that was compressed (.npy, .npz or .safetensors)")
    inspect_.set_defaults(handler=_run_inspect, command_parser=inspect_)

    info = commands.add_parser(
        "info",
        help="print the native build's configuration and package versions",
        description="Print matcompress.show_config() and the versions of Python and of the "
                    "packages matcompress uses.",
    )
    info.set_defaults(handler=_run_info, command_parser=info)

    from .benchmark import compare

    bench = commands.add_parser(
        "bench",
        help="time every kernel against scikit-learn, SPAMS, faiss and numpy; print the ratios "
             "beside their targets",
        description=compare.DESCRIPTION,
    )
    compare.add_arguments(bench)
    bench.set_defaults(handler=_run_bench, command_parser=bench)
    return parser


def _run_bench(args):
    """The comparison of matcompress.benchmark.compare; its exit status."""
    from .benchmark import compare

    return compare.run_parsed(args)


def _run_model_demo(args):
    """Run the model-compression demo (matcompress.tf.demo); exit status 0."""
    from .demo import DemoOutputError, check_demo_dependencies

    # Before TensorFlow's first import (the dependency check imports it): its C++ INFO and
    # WARNING lines (oneDNN notices, a type-inference warning on the phase switch) are noise
    # between the progress bar's updates.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    check_demo_dependencies((("tensorflow", "tensorflow-cpu"), ("sklearn", "scikit-learn"),
                             ("matplotlib", "matplotlib")))
    png = os.path.abspath(args.png)
    if not os.path.isdir(os.path.dirname(png)):
        raise DemoOutputError(f"cannot write the plot to {args.png}: no such directory")
    from .tf import demo as model_demo

    try:
        model_demo.run(quick=args.quick, png=png, seed=args.seed)
    except OSError as exc:
        raise DemoOutputError(f"cannot write the plot to {args.png}: {exc}") from exc
    return 0


def _run_demo(args):
    """Check the demo's arguments (exit 2 on a bad one), run it, and return exit status 0."""
    from .demo import (
        DEFAULT_COMPARE, DEFAULT_EPOCHS, DEFAULT_LEARN_PATCHES, DEFAULT_PATCHES, PATCH_SIZE,
        QUICK_COMPARE, QUICK_EPOCHS, QUICK_LEARN_PATCHES, QUICK_PATCHES, DemoUsageError,
        check_demo_dependencies, n_available_patches, run_demo,
    )

    error = args.command_parser.error
    if args.sparsity > PATCH_SIZE * PATCH_SIZE:
        error(f"argument --sparsity: must be at most {PATCH_SIZE * PATCH_SIZE} "
              f"(the pixels of a {PATCH_SIZE}x{PATCH_SIZE} patch), got {args.sparsity}")
    if args.seed >= 2**32:
        error(f"argument --seed: must be below 2**32, got {args.seed}")
    if not args.png:
        error("argument --png: expected a file path, got ''")
    if os.path.isdir(args.png):
        error(f"argument --png: {args.png!r} is a directory; give a file path such as "
              f"{os.path.join(args.png, 'atoms.png')!r}")
    png_dir = os.path.dirname(os.path.abspath(args.png))
    if not os.path.isdir(png_dir):
        error(f"argument --png: directory {png_dir!r} does not exist")
    check_demo_dependencies()
    n_patches = args.patches or (QUICK_PATCHES if args.quick else DEFAULT_PATCHES)
    n_available = n_available_patches()
    if n_patches > n_available:
        error(f"argument --patches: must be at most {n_available:,} (all the "
              f"{PATCH_SIZE}x{PATCH_SIZE} patches of the sample images), got {n_patches:,}")
    try:
        run_demo(
            n_patches=n_patches,
            n_atoms=args.atoms,
            n_nonzero_coefs=args.sparsity,
            n_threads=args.threads,
            seed=args.seed,
            n_compare=QUICK_COMPARE if args.quick else DEFAULT_COMPARE,
            dtype=args.dtype,
            n_learn=QUICK_LEARN_PATCHES if args.quick else DEFAULT_LEARN_PATCHES,
            epochs=QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS,
            png=args.png,
        )
    except DemoUsageError as exc:  # not reached with the checks above; kept as a safety net
        error(str(exc))
    return 0


# --- compress and inspect ------------------------------------------------------------------------

#: Elements of W (and of its approximation) held at a time when measuring an error.
_BLOCK_ELEMENTS = 1 << 20


def _check_file_argument(error, path, what):
    """Exit 2 unless ``path`` names an existing file (``what`` names the argument)."""
    if not os.path.exists(path):
        error(f"argument {what}: {path}: no such file")
    if os.path.isdir(path):
        error(f"argument {what}: {path} is a directory, not a file")


def _open_weights(path):
    """The arrays of a weight file (matcompress._weight_files); exit 1 when it is unreadable."""
    from ._weight_files import WeightFileError, open_weights

    try:
        return open_weights(path)
    except WeightFileError as exc:
        raise _Failure(str(exc)) from None


def _skip_reason(tensor):
    """Why ``compress`` leaves an array alone, or None for a 2-D float array."""
    if tensor.kind == "int":
        return f"{tensor.dtype}, not float"
    if tensor.kind != "float":
        return f"{tensor.dtype}, not supported"
    if len(tensor.shape) != 2:
        return f"{len(tensor.shape)}-D"
    if 0 in tensor.shape:
        return f"empty ({tensor.shape[0]}x{tensor.shape[1]})"
    return None


def _compressor_params(args):
    """(registry name, compressor parameters) from the method flags; exit 2 on a bad mix."""
    from .compressors import _REGISTRY

    error = args.command_parser.error
    method = _METHODS[args.method]
    flags = [flag for m in _METHODS.values() for flag in m.params]
    given = [flag for flag in flags if getattr(args, _dest(flag)) is not None]
    for flag in given:
        if flag not in method.params:
            owner = next(name for name, m in _METHODS.items() if flag in m.params)
            error(f"argument {flag}: applies to --method {owner}, not {args.method}")
    needed = " and ".join(method.required) or " or ".join(method.any_of)
    if not method.required and not method.any_of and args.ratio is None:
        error(f"--method {args.method} needs --ratio (its parameters are solved from it)")
    if args.ratio is not None:
        clash = [flag for flag in given if flag not in method.with_ratio]
        if clash:
            error(f"argument {clash[0]}: give either --ratio or {needed}, not both")
    elif not set(method.required) <= set(given) or (method.any_of
                                                     and not set(method.any_of) & set(given)):
        error(f"--method {args.method} needs --ratio or {needed}")
    params = {method.params[flag]: getattr(args, _dest(flag)) for flag in given}
    params["random_state"] = args.seed
    accepts = inspect.signature(_REGISTRY[method.registry].__init__).parameters
    if args.threads is not None and "n_threads" in accepts:
        params["n_threads"] = args.threads
    if "verbose" in accepts:  # progress of the chunked coding of large matrices, on stderr
        params["verbose"] = True
    return method.registry, params


def _compressor_for(tensor, registry, params, args):
    """The compressor of one matrix, its parameters checked against the matrix's shape (exit 2
    when they do not fit, before anything is compressed). ``--ratio`` counts the matrix's
    bytes in INPUT: a float16 matrix, compressed in float32, asks the compressor for twice R."""
    from .compressors import get

    compute = tensor.compute_dtype
    params = dict(params)
    if args.ratio is not None:
        params["compression_ratio"] = args.ratio * compute.itemsize / tensor.itemsize
    compressor = get(registry, **params)
    solve = getattr(compressor, "solve", None)
    if solve is None:  # a search: its errors come with the matrix's compression
        return compressor
    try:
        solve(tensor.shape, compute.itemsize)
    except (ValueError, TypeError) as exc:
        m, n = tensor.shape
        hint = ""
        if args.ratio is not None and compute.itemsize != tensor.itemsize:
            hint = (f" ({tensor.dtype} is compressed in {compute}: --ratio {args.ratio:g} of its "
                    f"{tensor.dtype} bytes asks for {params['compression_ratio']:g} of its "
                    f"{compute} bytes)")
        args.command_parser.error(f"{tensor.name} ({m}x{n}): {exc}{hint}")
    return compressor


def _thread_limit(n_threads):
    """Caps the OpenMP and BLAS threads at ``n_threads`` (threadpoolctl; without it, or with
    None, nothing changes: the compressors that take ``n_threads`` are also given it)."""
    if n_threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n_threads)


def _squared_errors(rows, f):
    """(||W - W~||_F^2, ||W||_F^2) in float64, ``rows(start, stop)`` giving rows of W; W~ is
    decoded a block of rows at a time (``Factorization.dense_rows``)."""
    m, n = f.shape
    step = max(1, _BLOCK_ELEMENTS // n)
    err2 = norm2 = 0.0
    for start in range(0, m, step):
        stop = min(start + step, m)
        w = np.asarray(rows(start, stop), np.float64)
        d = w - f.dense_rows(start, stop)
        err2 += float(np.vdot(d, d))
        norm2 += float(np.vdot(w, w))
    return err2, norm2


def _count(n, singular, plural=None):
    """``n`` and the noun: "1 matrix", "3 matrices"."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _relative(err2, norm2):
    if norm2 > 0:
        return math.sqrt(err2 / norm2)
    return 0.0 if err2 == 0 else math.inf


def _print_table(rows, *, with_error):
    """One row per factorization and a totals row; ``rows`` hold (name, kind, (m, n), dtype,
    bytes before, bytes after, squared error or None, squared norm or None)."""
    header = ["name", "kind", "shape", "dtype", "bytes before", "bytes after", "ratio"]
    if with_error:
        header.append("rel. error")
    lines = []
    for name, kind, (m, n), dtype, before, after, err2, norm2 in rows:
        line = [name, kind, f"{m}x{n}", dtype, f"{before:,}", f"{after:,}",
                f"{before / after:.2f}x"]
        if with_error:
            line.append(f"{_relative(err2, norm2):.4g}")
        lines.append(line)
    before = sum(r[4] for r in rows)
    after = sum(r[5] for r in rows)
    total = [f"total ({_count(len(rows), 'matrix', 'matrices')})", "", "", "", f"{before:,}", f"{after:,}",
             f"{before / after:.2f}x"]
    if with_error:
        total.append(f"{_relative(sum(r[6] for r in rows), sum(r[7] for r in rows)):.4g}")
    widths = [max(len(line[k]) for line in [header, total] + lines) for k in range(len(header))]
    right = set(range(4, len(header)))

    def fmt(line):
        return "  ".join(cell.rjust(w) if k in right else cell.ljust(w)
                         for k, (cell, w) in enumerate(zip(line, widths))).rstrip()

    print(fmt(header))
    for line in lines:
        print(fmt(line))
    print("  ".join("-" * w for w in widths))
    print(fmt(total))


def _half_precision_note(rows):
    """A note when some matrices were stored in a wider dtype than INPUT's (float16, bfloat16)."""
    narrow = sorted({r[3] for r in rows if r[3] in ("float16", "bfloat16")})
    if narrow:
        print(f"note: {' and '.join(narrow)} matrices are stored in float32; 'bytes before' and "
              "the ratios count their bytes in the original file")


def _check_output(args):
    """Exit 2 for an output path that cannot be a file; exit 1 when its directory is not
    writable (before anything is compressed)."""
    error = args.command_parser.error
    out = args.output
    if not out:
        error("argument -o/--output: expected a file path, got ''")
    if os.path.isdir(out):
        error(f"argument -o/--output: {out} is a directory; give a file path such as "
              f"{os.path.join(out, 'compressed.npz')}")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        error(f"argument -o/--output: directory {directory} does not exist")
    if os.path.exists(out) and os.path.samefile(out, args.input):
        error(f"argument -o/--output: {out} is the input file")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _Failure(f"cannot write {out}: permission denied (directory {directory})")


def _write_archive(path, factorizations, info):
    """Write the archive to a temporary file beside ``path``, then rename it to ``path``: an
    existing file is replaced whole or left as it was."""
    from . import archive

    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".matcompress-", suffix=".npz.tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's file is private; the archive is not
        with os.fdopen(fd, "wb") as fp:
            archive.save_many(fp, factorizations, info=info)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _compress_one(tensor, compressor, input_path):
    """(factorization, squared error, squared norm) of one matrix; exit 1 for a NaN or infinite
    weight, a read error or a compression that fails."""
    from ._validation import check_finite
    from ._weight_files import WeightFileError

    m, n = tensor.shape
    try:
        A = tensor.load()
    except WeightFileError as exc:
        raise _Failure(str(exc)) from None
    try:
        check_finite(A, tensor.name)
    except ValueError as exc:
        raise _Failure(f"{exc} (in {input_path}); nothing written") from None
    try:
        f = compressor.compress(A)
    except (ValueError, TypeError) as exc:
        raise _Failure(f"cannot compress {tensor.name} ({m}x{n}): {exc}; nothing written") \
            from None
    return (f, *_squared_errors(lambda start, stop: A[start:stop], f))


def _run_compress(args):
    """Compress every 2-D float array of the input and write the archive; return 0."""
    _check_file_argument(args.command_parser.error, args.input, "INPUT")
    registry, params = _compressor_params(args)
    _check_output(args)
    factorizations, info, rows = {}, {}, []
    with _open_weights(args.input) as weights:
        plan = []
        for tensor in weights.tensors:
            reason = _skip_reason(tensor)
            if reason:
                print(f"skipped {tensor.name}: {reason}", file=sys.stderr)
            else:
                plan.append(tensor)
        if not plan:
            raise _Failure(f"{args.input} holds no 2-D float array to compress")
        compressors = [_compressor_for(t, registry, params, args) for t in plan]
        with _thread_limit(args.threads):
            for i, (tensor, compressor) in enumerate(zip(plan, compressors), 1):
                m, n = tensor.shape
                head = f"[{i}/{len(plan)}] {tensor.name} {m}x{n} {args.method} ..."
                # A large matrix may report the progress of its chunked coding: on lines of
                # their own, and the result on a line that names the matrix again.
                alone = m * n > 1 << 22
                print(head, end="\n" if alone else "", file=sys.stderr, flush=True)
                lead = f"[{i}/{len(plan)}] {tensor.name}:" if alone else ""
                ending = " failed"
                try:
                    start = time.perf_counter()
                    f, err2, norm2 = _compress_one(tensor, compressor, args.input)
                    seconds = time.perf_counter() - start
                    ending = f" {tensor.nbytes / f.nbytes:.1f}x, {seconds:.1f} s"
                except KeyboardInterrupt:
                    ending = " interrupted"
                    raise
                finally:
                    print(lead + ending, file=sys.stderr, flush=True)
                factorizations[tensor.name] = f
                info[tensor.name] = {"source_dtype": tensor.dtype,
                                     "source_nbytes": tensor.nbytes}
                rows.append((tensor.name, f.kind, (m, n), tensor.dtype, tensor.nbytes, f.nbytes,
                             err2, norm2))
    _write_archive(args.output, factorizations, info)
    _print_table(rows, with_error=True)
    _half_precision_note(rows)
    skipped = len(weights.tensors) - len(plan)
    print(f"wrote {args.output}: {_count(len(factorizations), 'factorization')}, "
          f"{os.path.getsize(args.output):,} bytes"
          + (f" ({_count(skipped, 'array')} skipped)" if skipped else ""))
    return 0


def _run_inspect(args):
    """List an archive's factorizations (with errors against --original); return 0."""
    from . import archive

    error = args.command_parser.error
    _check_file_argument(error, args.archive, "ARCHIVE")
    if args.original is not None:
        _check_file_argument(error, args.original, "--original")
    try:
        manifest = archive.read_manifest(args.archive)
        factorizations = archive.load_many(args.archive)
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    entries = {entry["name"]: entry for entry in manifest["entries"]}
    rows = []
    for name, f in factorizations.items():
        extra = entries[name]["info"]
        before = extra.get("source_nbytes", f.dense_nbytes)
        dtype = extra.get("source_dtype", str(f.dtype))
        if not isinstance(before, int) or isinstance(before, bool) or before < 0:
            before = f.dense_nbytes
        rows.append([name, f.kind, f.shape, str(dtype), before, f.nbytes, None, None])
    if args.original is not None:
        with _open_weights(args.original) as weights:
            tensors = {t.name: t for t in weights.tensors}
            for row in rows:
                name, f = row[0], factorizations[row[0]]
                t = tensors.get(name)
                if t is None:
                    raise _Failure(f"{args.original} has no array named {name!r} (a "
                                   f"factorization of {args.archive})")
                if t.kind != "float" or tuple(t.shape) != f.shape:
                    shape = "x".join(map(str, t.shape)) or "0-D"
                    raise _Failure(f"{name}: {args.archive} holds a {f.shape[0]}x{f.shape[1]} "
                                   f"factorization, {args.original} a {shape} {t.dtype} array")
                raw = t.raw()
                row[6], row[7] = _squared_errors(lambda a, b: t.decode(raw[a:b]), f)
    _print_table([tuple(r) for r in rows], with_error=args.original is not None)
    _half_precision_note(rows)
    print(f"{args.archive}: {_count(len(rows), 'factorization')}, "
          f"{os.path.getsize(args.archive):,} bytes")
    return 0


def _distribution_version(name):
    """Installed version of distribution ``name``, or "not installed" (without importing it)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run_info(args):
    """Print show_config(), the versions in use and the loaded BLAS libraries; return 0."""
    import matcompress

    config = matcompress.show_config()
    width = max(len(key) for key in config) + 2
    print("matcompress configuration (matcompress.show_config())")
    for key, value in config.items():
        print(f"  {key:<{width}}{value}")
    print("versions")
    print(f"  {'python':<{width}}{platform.python_version()} "
          f"({platform.python_implementation()}, {platform.system()} {platform.machine()})")
    for dist, role in (("numpy", ""), ("scipy", ""), ("scikit-learn", "optional: demo, tests"),
                       ("pillow", "optional: demo"), ("threadpoolctl", "optional: BLAS threads")):
        version = _distribution_version(dist)
        print(f"  {dist:<{width}}{version}" + (f"  ({role})" if role else ""))
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 0
    import scipy.linalg  # noqa: F401  (load SciPy's BLAS so threadpoolctl sees it)

    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if blas:
        print("BLAS libraries loaded (threadpoolctl)")
        for lib in blas:
            print(f"  {lib.get('internal_api')} {lib.get('version')}, {lib.get('num_threads')} "
                  f"threads, {lib.get('filepath')}")
    return 0


def main(argv=None):
    """Run the ``matcompress`` command line.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        The exit code: 0 on success, 1 on a runtime problem such as a missing optional
        dependency, a file that cannot be read or written or a NaN weight, 2 on a bad argument,
        130 when interrupted.
    """
    from .demo import DemoOutputError, MissingDependencyError

    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: compress, inspect, demo, sparse-demo, info")
        return args.handler(args)
    except SystemExit as exc:  # argparse's --help, --version and errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (MissingDependencyError, DemoOutputError, _Failure) as exc:
        message = " ".join(str(exc).split())  # one line, whatever a library's message holds
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
