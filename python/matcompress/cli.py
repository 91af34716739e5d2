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
``matcompress info``
    Print the native build's configuration (:func:`matcompress.show_config`) and the versions of
    Python and of the packages matcompress uses.

Run it as ``matcompress ...`` (installed entry point) or ``python -m matcompress.cli ...``.
Exit codes: 0 success, 1 a runtime problem (e.g. a missing optional dependency, or the image
cannot be written), 2 a bad command-line argument, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import textwrap

__all__ = ["main"]

PROG = "matcompress"


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


def _atoms(text):
    """argparse ``type`` for ``--atoms``: a square m*m with 8 <= m <= 64."""
    from .demo import DemoUsageError, check_n_atoms

    value = _int_at_least(1)(text)
    try:
        return check_n_atoms(value)
    except DemoUsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build_parser():
    """Return the ``matcompress`` argument parser with its ``demo`` and ``info`` subcommands."""
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

    info = commands.add_parser(
        "info",
        help="print the native build's configuration and package versions",
        description="Print matcompress.show_config() and the versions of Python and of the "
                    "packages matcompress uses.",
    )
    info.set_defaults(handler=_run_info, command_parser=info)
    return parser


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
        dependency or an image that cannot be written, 2 on a bad argument, 130 when
        interrupted.
    """
    from .demo import DemoOutputError, MissingDependencyError

    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: demo, sparse-demo, info")
        return args.handler(args)
    except SystemExit as exc:  # argparse's --help, --version and errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (MissingDependencyError, DemoOutputError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
