"""The ``matcompress demo`` command: sparse coding of natural-image patches.

The demo runs a small, real sparse-coding problem end to end and prints what it costs and what it
buys:

1. Take 8x8 patches at random positions of the two sample photographs that ship with
   scikit-learn (``china.jpg`` and ``flower.jpg``), in grayscale with intensities in [0, 1], and
   subtract each patch's mean (its DC value), as is standard in patch-based sparse coding.
2. Code every patch with ``n_nonzero_coefs`` atoms of the classic overcomplete 2-D DCT dictionary
   (256 atoms of 64 values by default) using :func:`matcompress.sparse_encode` (Batch-OMP).
3. Code a random subset of the same patches with scikit-learn's
   ``sklearn.decomposition.sparse_encode(..., algorithm="omp")``, the reference implementation,
   and compare: time, signals per second, relative error ``||X - C D||_F / ||X||_F``, PSNR of the
   reconstructed patches, the speed-up, and how many signals got exactly the same support.
4. Report the storage of the codes against the raw patches.

It needs scikit-learn and pillow (``pip install "matcompress[demo]"``). Run it as
``matcompress demo`` (``--quick`` for a smaller run), or call :func:`run_demo` from Python.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import sys
import time
import warnings

import numpy as np

__all__ = [
    "DemoUsageError",
    "MissingDependencyError",
    "overcomplete_dct_dictionary",
    "load_patches",
    "run_demo",
]

#: Side of the square image patches; a patch is a signal of ``PATCH_SIZE**2`` values.
PATCH_SIZE = 8
#: Largest dictionary the demo builds (64**2 atoms); larger ones make the scikit-learn reference
#: and the dense subset codes needlessly slow and big for a demonstration.
MAX_ATOMS = 4096
#: Patches coded and signals compared with scikit-learn, for the full and the ``--quick`` run.
DEFAULT_PATCHES, QUICK_PATCHES = 50_000, 10_000
DEFAULT_COMPARE, QUICK_COMPARE = 2_000, 500

_INSTALL_HINT = 'pip install "matcompress[demo]"'
# ITU-R BT.601 luma weights, the usual RGB -> grayscale conversion (as in PIL's "L" mode).
_LUMA = np.array([0.299, 0.587, 0.114])


class DemoUsageError(ValueError):
    """A demo parameter is out of range (the command line reports it with exit code 2)."""


class MissingDependencyError(ImportError):
    """scikit-learn or pillow, which the demo needs, is not installed."""


def check_demo_dependencies():
    """Raise :class:`MissingDependencyError` unless scikit-learn and pillow are importable.

    Raises
    ------
    MissingDependencyError
        Naming the missing packages and the command that installs them.
    """
    problems = []
    for module, dist in (("sklearn", "scikit-learn"), ("PIL", "pillow")):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = exc.name == module or importlib.util.find_spec(module) is None
            problems.append(dist if missing else f"{dist} (installed but its import fails: {exc})")
    if problems:
        raise MissingDependencyError(
            f"the demo needs {' and '.join(problems)}; install with: {_INSTALL_HINT}"
        )


def check_n_atoms(n_atoms):
    """Return ``n_atoms`` if the 2-D DCT dictionary can have that many atoms, else raise.

    Parameters
    ----------
    n_atoms : int
        Requested number of atoms.

    Returns
    -------
    n_atoms : int
        The same value.

    Raises
    ------
    DemoUsageError
        Unless ``n_atoms = m**2`` with ``PATCH_SIZE <= m`` and ``n_atoms <= MAX_ATOMS``.
    """
    side = math.isqrt(n_atoms) if n_atoms > 0 else 0
    if side * side != n_atoms or side < PATCH_SIZE or n_atoms > MAX_ATOMS:
        raise DemoUsageError(
            f"must be a square m*m with {PATCH_SIZE} <= m <= {math.isqrt(MAX_ATOMS)} (the 2-D DCT "
            f"dictionary is the Kronecker product of two {PATCH_SIZE}xm 1-D DCTs), e.g. 64, 256, "
            f"1024; got {n_atoms}"
        )
    return n_atoms


def overcomplete_dct_dictionary(n_atoms=256, *, patch_size=PATCH_SIZE, dtype=np.float64):
    """Build the overcomplete 2-D DCT dictionary for ``patch_size x patch_size`` patches.

    The 1-D dictionary ``D1`` has ``m = sqrt(n_atoms)`` columns ``cos(pi * i * j / m)`` for
    ``i < patch_size`` and ``j < m``; column 0 is the constant (DC) atom, every other column has
    its mean removed, and all columns are normalised. The 2-D atoms are the separable products of
    two 1-D atoms, ``kron(D1, D1)``, so they have unit norm, and all but the first have zero mean.

    Parameters
    ----------
    n_atoms : int, default=256
        Number of atoms; a perfect square ``m**2`` with ``m >= patch_size``.
    patch_size : int, default=8
        Side of the square patches the atoms describe.
    dtype : numpy dtype, default=numpy.float64
        dtype of the result.

    Returns
    -------
    dictionary : ndarray of shape (n_atoms, patch_size**2)
        One unit-norm atom per row; an atom reshaped to ``(patch_size, patch_size)`` is an image
        patch in row-major order, like the rows of
        ``extract_patches_2d(...).reshape(n, -1)``.

    Notes
    -----
    This is the initial dictionary of K-SVD (Aharon, Elad & Bruckstein, "K-SVD: An Algorithm for
    Designing Overcomplete Dictionaries for Sparse Representation", IEEE Trans. Signal Processing
    54(11), 2006) and the fixed dictionary of Elad & Aharon's patch-based image denoising.

    Examples
    --------
    >>> import numpy as np
    >>> from matcompress.demo import overcomplete_dct_dictionary
    >>> D = overcomplete_dct_dictionary(256)
    >>> D.shape, bool(np.allclose(np.linalg.norm(D, axis=1), 1.0))
    ((256, 64), True)
    """
    side = math.isqrt(n_atoms)
    if side * side != n_atoms or side < patch_size:
        raise ValueError(f"n_atoms must be a square m*m with m >= {patch_size}; got {n_atoms}")
    i = np.arange(patch_size)[:, None]
    j = np.arange(side)[None, :]
    d1 = np.cos(np.pi * i * j / side)
    d1[:, 1:] -= d1[:, 1:].mean(axis=0)
    d1 /= np.linalg.norm(d1, axis=0)
    return np.ascontiguousarray(np.kron(d1, d1).T, dtype=dtype)


@functools.lru_cache(maxsize=1)
def _sample_images():
    """scikit-learn's sample photographs (china.jpg, flower.jpg), uint8 RGB, loaded once."""
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def n_available_patches(patch_size=PATCH_SIZE):
    """Return how many distinct patches the sample images hold in total.

    Parameters
    ----------
    patch_size : int, default=8
        Side of the square patches.

    Returns
    -------
    n : int
        Sum over the images of ``(height - patch_size + 1) * (width - patch_size + 1)``.
    """
    shapes = [image.shape for image in _sample_images()]
    return sum((h - patch_size + 1) * (w - patch_size + 1) for h, w, _ in shapes)


def load_patches(n_patches, *, patch_size=PATCH_SIZE, seed=0, dtype=np.float32):
    """Sample mean-removed grayscale patches from scikit-learn's sample images.

    Parameters
    ----------
    n_patches : int
        Number of patches in total, split as evenly as possible between the images
        (``china.jpg`` gets the odd one). At most :func:`n_available_patches`.
    patch_size : int, default=8
        Side of the square patches.
    seed : int, default=0
        Seeds the ``numpy.random.RandomState`` that ``extract_patches_2d`` draws the patch
        positions from.
    dtype : numpy dtype, default=numpy.float32
        dtype of the result.

    Returns
    -------
    patches : ndarray of shape (n_patches, patch_size**2)
        Patches in row-major order with their mean (DC) removed; the intensities before removal
        are in [0, 1].
    means : ndarray of shape (n_patches,)
        The removed means, so ``patches + means[:, None]`` are the original pixel values.
    """
    from sklearn.feature_extraction.image import extract_patches_2d

    images = _sample_images()
    random_state = np.random.RandomState(seed)
    share, extra = divmod(n_patches, len(images))
    blocks = []
    for k, image in enumerate(images):
        count = share + (k < extra)
        if count == 0:  # max_patches=0 would mean "all patches" to extract_patches_2d
            continue
        gray = (image.astype(np.float64) @ _LUMA) / 255.0
        patches = extract_patches_2d(
            gray, (patch_size, patch_size), max_patches=count, random_state=random_state
        )
        blocks.append(patches.reshape(count, patch_size * patch_size))
    patches = np.concatenate(blocks)
    means = patches.mean(axis=1)
    patches -= means[:, None]
    return patches.astype(dtype), means.astype(dtype)


def _best_time(fn, repeats):
    """Run ``fn()`` ``repeats`` times; return (its last result, the shortest wall time in s)."""
    best = math.inf
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def _quiet(fn, *args, **kwargs):
    """Call ``fn`` with RuntimeWarnings silenced.

    Both OMP implementations warn when a signal stops before ``n_nonzero_coefs`` atoms (a flat
    patch, or a linearly dependent next atom); the demo counts those signals itself.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def _errors(X, reconstruction):
    """Return (relative Frobenius error, PSNR in dB for peak 1) of ``reconstruction`` of ``X``."""
    residual = np.asarray(X, dtype=np.float64) - reconstruction
    sq_error = float(np.einsum("ij,ij->", residual, residual))
    sq_norm = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    rel = math.sqrt(sq_error / sq_norm) if sq_norm > 0 else 0.0
    mse = sq_error / residual.size
    psnr = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
    return rel, psnr


def _blas_description(n_threads):
    """One-line description of SciPy's BLAS and its thread count (via threadpoolctl if present)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "SciPy's (install threadpoolctl to see which)"
    import scipy.linalg  # noqa: F401  (make sure SciPy's BLAS is loaded before asking)

    libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    # SciPy's wheels keep their OpenBLAS in scipy.libs/ (numpy's in numpy.libs/); elsewhere (conda,
    # distributions) one shared BLAS serves both and the first one listed is it.
    scipy_libs = [lib for lib in libs
                  if "scipy" in os.path.basename(os.path.dirname(lib.get("filepath") or ""))]
    lib = (scipy_libs or libs or [None])[0]
    if lib is None:
        return "SciPy's"
    threads = lib.get("num_threads")
    if n_threads is not None and threads is not None:
        threads = min(threads, n_threads)
    return f"SciPy's {lib.get('internal_api')} {lib.get('version') or ''}".rstrip() + (
        f", {threads} thread{'s' if threads != 1 else ''}" if threads is not None else ""
    )


def _blas_limit(n_threads):
    """Context manager capping BLAS threads at ``n_threads`` (no-op: None, or no threadpoolctl)."""
    import contextlib

    if n_threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n_threads, user_api="blas")


def run_demo(
    *,
    n_patches=DEFAULT_PATCHES,
    n_atoms=256,
    n_nonzero_coefs=8,
    n_threads=None,
    seed=0,
    n_compare=DEFAULT_COMPARE,
    dtype="float32",
    repeats=3,
    file=None,
):
    """Sparse-code image patches with matcompress and scikit-learn and print the comparison.

    Parameters
    ----------
    n_patches : int, default=50_000
        Patches coded by :func:`matcompress.sparse_encode`.
    n_atoms : int, default=256
        Atoms of the overcomplete 2-D DCT dictionary (a square ``m**2``, ``8 <= m <= 64``).
    n_nonzero_coefs : int, default=8
        Atoms per patch, ``1 <= n_nonzero_coefs <= 64``.
    n_threads : int, default=None
        Threads for matcompress (and the BLAS cap for both libraries); None means every core
        the process may use and leaves scikit-learn's BLAS at its own setting.
    seed : int, default=0
        Seed for the patch positions and the choice of the comparison subset.
    n_compare : int, default=2_000
        Patches (a random subset of the ``n_patches``) also coded by scikit-learn; capped at
        ``n_patches``.
    dtype : {"float32", "float64"}, default="float32"
        dtype of the patches and the dictionary, for both libraries.
    repeats : int, default=3
        Every timing is the best of this many runs.
    file : file-like, default=None
        Where the report goes; ``sys.stdout`` when None.

    Returns
    -------
    results : dict
        The figures printed: one entry per table row under ``"rows"`` (each with ``method``,
        ``signals``, ``seconds``, ``signals_per_s``, ``rel_error``, ``psnr_db``, ``speedup``),
        plus ``"same_support"`` (fraction of the subset), ``"max_code_diff"``,
        ``"bytes_raw"``, ``"bytes_codes"`` and ``"config"`` (:func:`matcompress.show_config`).

    Raises
    ------
    MissingDependencyError
        If scikit-learn or pillow is not installed.
    DemoUsageError
        If a parameter is out of range.
    """
    import matcompress

    out = sys.stdout if file is None else file
    check_demo_dependencies()
    check_n_atoms(n_atoms)
    if not 1 <= n_nonzero_coefs <= PATCH_SIZE * PATCH_SIZE:
        raise DemoUsageError(
            f"n_nonzero_coefs must be between 1 and {PATCH_SIZE * PATCH_SIZE} (the number of "
            f"pixels in a patch); got {n_nonzero_coefs}"
        )
    if n_threads is not None and n_threads < 1:
        raise DemoUsageError(f"n_threads must be a positive integer or None; got {n_threads}")
    if seed < 0 or seed >= 2**32:
        raise DemoUsageError(f"seed must be between 0 and 2**32 - 1; got {seed}")
    if repeats < 1:
        raise DemoUsageError(f"repeats must be at least 1; got {repeats}")
    if dtype not in ("float32", "float64"):
        raise DemoUsageError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    n_available = n_available_patches()
    if not 1 <= n_patches <= n_available:
        raise DemoUsageError(
            f"n_patches must be between 1 and {n_available:,} (all the {PATCH_SIZE}x{PATCH_SIZE} "
            f"patches of the sample images); got {n_patches:,}"
        )
    n_compare = max(1, min(n_compare, n_patches))

    from sklearn.decomposition import sparse_encode as sklearn_sparse_encode

    def say(line=""):
        print(line, file=out, flush=True)

    config = matcompress.show_config()
    threads_used = n_threads if n_threads is not None else config["default_threads"]
    np_dtype = np.dtype(dtype)
    side = math.isqrt(n_atoms)
    n_features = PATCH_SIZE * PATCH_SIZE

    say(f"matcompress {config['version']} demo: sparse coding of {PATCH_SIZE}x{PATCH_SIZE} "
        "image patches by Orthogonal Matching Pursuit")
    say(f"  data        {n_patches:,} random {PATCH_SIZE}x{PATCH_SIZE} patches of scikit-learn's "
        "sample images (china.jpg, flower.jpg),")
    say(f"              grayscale in [0, 1], mean (DC) removed, {dtype}, seed {seed}")
    say(f"  dictionary  overcomplete 2-D DCT: {n_atoms} atoms x {n_features} "
        f"(Kronecker product of two {PATCH_SIZE}x{side} 1-D DCTs)")
    say(f"  coding      {n_nonzero_coefs} nonzero coefficients per patch")
    say(f"  native      ISA {config['isa']} (CPU supports {config['isa_detected']}), OpenMP "
        f"{'on' if config['openmp'] else 'off'}, {threads_used} "
        f"thread{'s' if threads_used != 1 else ''}")
    say(f"  BLAS        {_blas_description(n_threads)} (the GEMM steps of both libraries)")
    say()

    X, _ = load_patches(n_patches, seed=seed, dtype=np_dtype)
    D = overcomplete_dct_dictionary(n_atoms, dtype=np_dtype)
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(n_patches, size=n_compare, replace=False))
    X_sub = np.ascontiguousarray(X[subset])

    def mc_dense():
        return _quiet(
            matcompress.sparse_encode, X_sub, D, n_nonzero_coefs=n_nonzero_coefs,
            n_threads=n_threads,
        )

    def mc_all():
        return _quiet(
            matcompress.sparse_encode, X, D, n_nonzero_coefs=n_nonzero_coefs,
            n_threads=n_threads, return_sparse=True,
        )

    def sk_dense():
        return _quiet(
            sklearn_sparse_encode, X_sub, D, algorithm="omp", n_nonzero_coefs=n_nonzero_coefs
        )

    with _blas_limit(n_threads):
        # Warm-up (lazy imports, thread pools, first-touch allocations), outside the timings.
        warm = X[: min(64, n_patches)]
        _quiet(matcompress.sparse_encode, warm, D, n_nonzero_coefs=n_nonzero_coefs,
               n_threads=n_threads)
        _quiet(sklearn_sparse_encode, warm, D, algorithm="omp", n_nonzero_coefs=n_nonzero_coefs)

        sk_codes, sk_time = _best_time(sk_dense, repeats)
        mc_codes, mc_time = _best_time(mc_dense, repeats)
        mc_csr, mc_all_time = _best_time(mc_all, repeats)

    sk_rate = n_compare / sk_time
    rows = []
    for method, signals, seconds, reference, reconstruction in (
        ("scikit-learn OMP", n_compare, sk_time, X_sub, sk_codes @ D),
        ("matcompress", n_compare, mc_time, X_sub, mc_codes @ D),
        ("matcompress, all (CSR)", n_patches, mc_all_time, X, mc_csr @ D),
    ):
        rel, psnr = _errors(reference, reconstruction)
        rate = signals / seconds
        rows.append(dict(method=method, signals=signals, seconds=seconds, signals_per_s=rate,
                         rel_error=rel, psnr_db=psnr, speedup=rate / sk_rate))

    header = (f"{'method':<24}{'signals':>9}{'seconds':>10}{'signals/s':>12}"
              f"{'rel. error':>12}{'PSNR dB':>9}{'speed-up':>10}")
    say(header)
    say("-" * len(header))
    for row in rows:
        say(f"{row['method']:<24}{row['signals']:>9,}{row['seconds']:>10.4f}"
            f"{row['signals_per_s']:>12,.0f}{row['rel_error']:>12.4f}{row['psnr_db']:>9.2f}"
            f"{row['speedup']:>9.1f}x")
    say()

    sk_support = sk_codes != 0
    mc_support = mc_codes != 0
    same = np.all(sk_support == mc_support, axis=1)
    n_same = int(same.sum())
    max_diff = float(np.max(np.abs(mc_codes[same] - sk_codes[same]), initial=0.0))
    say(f"same support as scikit-learn: {n_same:,} of {n_compare:,} subset signals "
        f"({100.0 * n_same / n_compare:.2f}%);")
    say(f"                              largest coefficient difference on those {max_diff:.1e}")
    short_all = int(np.count_nonzero(np.diff(mc_csr.indptr) < n_nonzero_coefs))
    short_mc = int(np.count_nonzero(mc_support.sum(axis=1) < n_nonzero_coefs))
    short_sk = int(np.count_nonzero(sk_support.sum(axis=1) < n_nonzero_coefs))
    if short_all:
        say(f"fewer than {n_nonzero_coefs} atoms (flat patch, or the next atom linearly "
            f"dependent): {short_all:,} of {n_patches:,} patches;")
        say(f"                              in the subset matcompress {short_mc:,}, "
            f"scikit-learn {short_sk:,}")

    itemsize = np_dtype.itemsize
    index_bytes = 1 if n_atoms <= 2**8 else 2 if n_atoms <= 2**16 else 4
    index_type = {1: "uint8", 2: "uint16", 4: "uint32"}[index_bytes]
    raw = n_features * itemsize
    coded = n_nonzero_coefs * (itemsize + index_bytes) + itemsize
    total_raw = n_patches * raw
    total_coded = n_patches * coded + D.nbytes
    say(f"storage: raw patch  {n_features} x {itemsize} B = {raw} B")
    say(f"         its code   {n_nonzero_coefs} x ({itemsize} B value + {index_bytes} B "
        f"{index_type} index) + {itemsize} B mean = {coded} B: {_size_ratio(raw, coded)}")
    say(f"         all codes  {n_patches:,} patch{'es' if n_patches != 1 else ''}: "
        f"{_fmt_bytes(total_raw)} raw -> {_fmt_bytes(total_coded)} with the "
        f"{_fmt_bytes(D.nbytes)} dictionary: {_size_ratio(total_raw, total_coded)}")
    say()
    say(f"notes: each time is the best of {repeats} run{'s' if repeats != 1 else ''}. scikit-learn "
        "runs sklearn.decomposition.sparse_encode(")
    say("       algorithm=\"omp\") with its defaults (n_jobs=None); matcompress runs "
        "matcompress.sparse_encode")
    say("       with the same arguments (dense codes), and with return_sparse=True on all patches.")
    say("       rel. error = ||X - C D||_F / ||X||_F on the mean-removed patches; PSNR on pixels "
        "in [0, 1].")

    return dict(rows=rows, same_support=n_same / n_compare, max_code_diff=max_diff,
                bytes_raw=total_raw, bytes_codes=total_coded, config=config)


def _size_ratio(raw, coded):
    """Describe ``coded`` bytes against ``raw`` bytes: "5.82x smaller" or "1.27x larger"."""
    if coded <= raw:
        return f"{raw / coded:.2f}x smaller"
    return f"{coded / raw:.2f}x larger"


def _fmt_bytes(n):
    """Format a byte count with a binary unit (B, KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
