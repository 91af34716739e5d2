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
5. Learn a dictionary of ``n_atoms`` atoms from a random subset of the same patches, twice from
   the same initial dictionary (random training patches): with
   :func:`matcompress.dict_learning` (``method="online"``) and with scikit-learn's
   ``MiniBatchDictionaryLearning`` (its default ``alpha=1`` and a calibrated ``alpha=0.1``),
   for the same number of epochs, and with matcompress once more for ``LONG_FACTOR`` times the
   epochs (its default mini-batches). Score every dictionary, the fixed DCT one included, the same
   way: unit-norm atoms, :func:`matcompress.sparse_encode` with ``n_nonzero_coefs`` atoms, the
   relative error on the training patches and on the held-out rest, and print them with the
   training times and the speed-up.
6. Write a PNG of the atoms learned by matcompress (left) and by scikit-learn (right), see
   :func:`atoms_image`.

It needs scikit-learn and pillow (``pip install "matcompress[demo]"``). Run it as
``matcompress demo`` (``--quick`` for a smaller run, ``--png PATH`` for where the image goes), or
call :func:`run_demo` from Python.
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
    "DemoOutputError",
    "MissingDependencyError",
    "overcomplete_dct_dictionary",
    "load_patches",
    "atoms_image",
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
#: Dictionary learning: training patches (a random subset of the patches; the rest are held out)
#: and epochs (passes over them), for the full and the ``--quick`` run. scikit-learn's learner
#: takes most of the demo's time, about linear in patches x epochs.
DEFAULT_LEARN_PATCHES, QUICK_LEARN_PATCHES = 20_000, 8_000
DEFAULT_EPOCHS, QUICK_EPOCHS = 3, 1
#: Mini-batch size of both online learners (scikit-learn's default).
LEARN_BATCH_SIZE = 256
#: The lasso penalty given to scikit-learn's MiniBatchDictionaryLearning besides its default 1.
#: A patch gets a nonzero lasso code only if some atom has |<patch, atom>| > alpha; the
#: mean-removed patches have a median norm near 0.08 and 83% of them a norm <= 1, so alpha=1 leaves
#: at least those with zero codes. Of 0.05, 0.1 and 0.2, 0.1 gave the lowest held-out OMP error
#: (20,000 training patches, 3 epochs; 0.03 to 1 tried on 10,000).
SKLEARN_ALPHA = 0.1
#: Default file of the atom image written by the command line.
DEFAULT_PNG = "matcompress-atoms.png"
# Row names of the dictionary-learning table that the summary and the image refer to.
_SKLEARN_ROW = f"scikit-learn, alpha={SKLEARN_ALPHA:g}"
_MATCOMPRESS_ROW = "matcompress, online"
#: matcompress is also run for this many times the epochs (its default mini-batches), to show what
#: a fraction of scikit-learn's time buys.
LONG_FACTOR = 10
_MATCOMPRESS_LONG_ROW = f"matcompress, online, {LONG_FACTOR}x epochs"

_INSTALL_HINT = 'pip install "matcompress[demo]"'
# ITU-R BT.601 luma weights, the usual RGB -> grayscale conversion (as in PIL's "L" mode).
_LUMA = np.array([0.299, 0.587, 0.114])


class DemoUsageError(ValueError):
    """A demo parameter is out of range (the command line reports it with exit code 2)."""


class MissingDependencyError(ImportError):
    """scikit-learn or pillow, which the demo needs, is not installed."""


class DemoOutputError(OSError):
    """The atom image could not be written (the command line reports it with exit code 1)."""


def check_demo_dependencies(modules=(("sklearn", "scikit-learn"), ("PIL", "pillow"))):
    """Raise :class:`MissingDependencyError` unless every (module, distribution) of ``modules``
    is importable (default: scikit-learn and pillow, for this demo).

    Raises
    ------
    MissingDependencyError
        Naming the missing packages and the command that installs them.
    """
    problems = []
    for module, dist in modules:
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


# Layout of the atom image, in pixels of the image: white gaps between tiles and panels, a margin
# around everything, and a fixed-height label row (fixed, so the size does not depend on the font).
_TILE_GAP = 2
_PANEL_GAP = 24
_MARGIN = 12
_LABEL_HEIGHT = 24
_LABEL_FONT_SIZE = 14


def _label_font():
    """Pillow's built-in font at ``_LABEL_FONT_SIZE`` (Pillow >= 10.1), else its bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=_LABEL_FONT_SIZE)
    except (TypeError, OSError, ImportError):  # older Pillow, or no FreeType support
        return ImageFont.load_default()


def _fit_text(draw, text, font, width):
    """``text``, shortened with "..." at the end if needed so that it is at most ``width`` wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def atoms_image(dictionaries, labels=None, *, patch_size=PATCH_SIZE, scale=None):
    """Draw dictionaries of image-patch atoms side by side as grids of tiles.

    Every atom becomes a ``patch_size x patch_size`` grayscale tile, scaled to its own range
    (its minimum black, its maximum white; a constant atom is mid-gray), enlarged ``scale``
    times by pixel repetition. The tiles fill a near-square grid row by row, in the order of the
    rows of the dictionary, with white gaps of 2 pixels; the grids (panels) stand left to right
    in the order given, each under its label.

    Parameters
    ----------
    dictionaries : sequence of array-like of shape (n_atoms, patch_size**2)
        The dictionaries, one atom per row in row-major patch order; all the same shape.
    labels : sequence of str, default=None
        One label per dictionary, centred above its panel (shortened with "..." if wider than
        the panel); None: no label row.
    patch_size : int, default=8
        Side of the square patches.
    scale : int, default=None
        Image pixels per patch pixel; None: 4 for grids up to 16 atoms wide, 2 up to 32, else 1.

    Returns
    -------
    image : PIL.Image.Image
        A grayscale ("L") image of width ``2*12 + n_panels * grid + (n_panels - 1) * 24`` and
        height ``2*12 + 24 + grid`` (without labels ``2*12 + grid``), where ``grid = cols *
        patch_size * scale + (cols - 1) * 2`` and ``cols = ceil(sqrt(n_atoms))``.

    Examples
    --------
    >>> from matcompress.demo import atoms_image, overcomplete_dct_dictionary
    >>> D = overcomplete_dct_dictionary(256)
    >>> image = atoms_image([D, D], ["DCT", "DCT again"])
    >>> image.mode, image.size
    ('L', (1132, 590))
    """
    from PIL import Image, ImageDraw

    mats = [np.asarray(d, dtype=np.float64) for d in dictionaries]
    if not mats:
        raise ValueError("dictionaries must hold at least one dictionary")
    n_atoms, n_features = mats[0].shape
    if n_atoms < 1 or n_features != patch_size * patch_size:
        raise ValueError(f"each dictionary must have shape (n_atoms >= 1, {patch_size**2}); "
                         f"got {mats[0].shape}")
    if any(m.shape != mats[0].shape for m in mats):
        raise ValueError(f"the dictionaries differ in shape: {[m.shape for m in mats]}")
    if labels is not None and len(labels) != len(mats):
        raise ValueError(f"{len(labels)} labels for {len(mats)} dictionaries")
    cols = math.ceil(math.sqrt(n_atoms))
    rows = math.ceil(n_atoms / cols)
    if scale is None:
        scale = 4 if cols <= 16 else 2 if cols <= 32 else 1
    tile = patch_size * scale
    grid_w = cols * tile + (cols - 1) * _TILE_GAP
    grid_h = rows * tile + (rows - 1) * _TILE_GAP
    top = _MARGIN + (_LABEL_HEIGHT if labels is not None else 0)
    width = 2 * _MARGIN + len(mats) * grid_w + (len(mats) - 1) * _PANEL_GAP
    canvas = np.full((top + grid_h + _MARGIN, width), 255, dtype=np.uint8)
    for p, atoms in enumerate(mats):
        low = atoms.min(axis=1, keepdims=True)
        span = atoms.max(axis=1, keepdims=True) - low
        unit = np.divide(atoms - low, span, out=np.full_like(atoms, 0.5), where=span > 0)
        tiles = np.rint(255.0 * unit).astype(np.uint8).reshape(n_atoms, patch_size, patch_size)
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        left = _MARGIN + p * (grid_w + _PANEL_GAP)
        for k in range(n_atoms):
            r, c = divmod(k, cols)
            y = top + r * (tile + _TILE_GAP)
            x = left + c * (tile + _TILE_GAP)
            canvas[y:y + tile, x:x + tile] = tiles[k]
    image = Image.fromarray(canvas)
    if labels is not None:
        draw = ImageDraw.Draw(image)
        font = _label_font()
        for p, label in enumerate(labels):
            left = _MARGIN + p * (grid_w + _PANEL_GAP)
            text = _fit_text(draw, str(label), font, grid_w)
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            x = left + (grid_w - (x1 - x0)) / 2 - x0
            y = _MARGIN + (_LABEL_HEIGHT - 4 - (y1 - y0)) / 2 - y0  # centred, 4 px above tiles
            draw.text((x, y), text, fill=0, font=font)
    return image


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
    n_learn=DEFAULT_LEARN_PATCHES,
    epochs=DEFAULT_EPOCHS,
    png=None,
    file=None,
):
    """Sparse-code image patches and learn dictionaries with matcompress and scikit-learn; print
    the comparison and optionally write an image of the learned atoms.

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
        Every sparse-coding timing is the best of this many runs (dictionary learning is timed
        once).
    n_learn : int, default=20_000
        Patches (a random subset of the ``n_patches``; the others are held out) that both
        libraries learn a dictionary of ``n_atoms`` atoms from; capped at ``n_patches``. 0, or
        fewer than ``n_atoms`` patches, skips dictionary learning (and the image).
    epochs : int, default=3
        Passes over the training patches of both online learners.
    png : str or os.PathLike, default=None
        Where to write the image of the learned atoms (matcompress left, scikit-learn with
        ``alpha=SKLEARN_ALPHA`` right; see :func:`atoms_image`); None writes no image.
    file : file-like, default=None
        Where the report goes; ``sys.stdout`` when None.

    Returns
    -------
    results : dict
        The figures printed: one entry per table row under ``"rows"`` (each with ``method``,
        ``signals``, ``seconds``, ``signals_per_s``, ``rel_error``, ``psnr_db``, ``speedup``),
        plus ``"same_support"`` (fraction of the subset), ``"max_code_diff"``,
        ``"bytes_raw"``, ``"bytes_codes"``, ``"config"`` (:func:`matcompress.show_config`) and
        ``"learning"``: None when skipped, else a dict with one entry per row of the
        dictionary-learning table under ``"rows"`` (each with ``method``, ``epochs``,
        ``seconds``, ``train_error``, ``heldout_error``, ``speedup``; ``epochs``, ``seconds``
        and ``speedup`` are None for the fixed dictionaries, ``heldout_error`` is None when no
        patch is held out), ``"n_train"``, ``"n_heldout"``, ``"dictionaries"`` (the scored
        dictionaries by row method, unit-norm atoms), ``"usage"`` (by row method, how many
        training patches use each atom) and ``"png"`` (the path written, or None).

    Raises
    ------
    MissingDependencyError
        If scikit-learn or pillow is not installed.
    DemoUsageError
        If a parameter is out of range.
    DemoOutputError
        If the image cannot be written (after the report is printed).
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
    if n_learn < 0:
        raise DemoUsageError(f"n_learn must be at least 0; got {n_learn}")
    if epochs < 1:
        raise DemoUsageError(f"epochs must be at least 1; got {epochs}")
    n_learn = min(n_learn, n_patches)
    learn = n_learn >= n_atoms

    from sklearn.decomposition import sparse_encode as sklearn_sparse_encode

    def say(line=""):
        print(line, file=out, flush=True)

    config = matcompress.show_config()
    threads_used = n_threads if n_threads is not None else config["default_threads"]
    np_dtype = np.dtype(dtype)
    side = math.isqrt(n_atoms)
    n_features = PATCH_SIZE * PATCH_SIZE

    say(f"matcompress {config['version']} demo: "
        + (f"Orthogonal Matching Pursuit and dictionary learning on {PATCH_SIZE}x{PATCH_SIZE} "
           "image patches" if learn else f"sparse coding of {PATCH_SIZE}x{PATCH_SIZE} image "
           "patches by Orthogonal Matching Pursuit"))
    say(f"  data        {n_patches:,} random {PATCH_SIZE}x{PATCH_SIZE} patches of scikit-learn's "
        "sample images (china.jpg, flower.jpg),")
    say(f"              grayscale in [0, 1], mean (DC) removed, {dtype}, seed {seed}")
    say(f"  dictionary  overcomplete 2-D DCT: {n_atoms} atoms x {n_features} "
        f"(Kronecker product of two {PATCH_SIZE}x{side} 1-D DCTs)")
    say(f"  coding      {n_nonzero_coefs} nonzero coefficients per patch")
    if learn:
        held = n_patches - n_learn
        say(f"  learning    {n_atoms} atoms from {n_learn:,} of the patches"
            + (f" ({held:,} held out)" if held else " (none held out)")
            + f", {epochs} epoch{'s' if epochs != 1 else ''}, mini-batches of {LEARN_BATCH_SIZE}")
        if epochs < DEFAULT_EPOCHS:  # only --quick lowers the epochs
            say(f"              (quick run: the full demo learns from {DEFAULT_LEARN_PATCHES:,} "
                f"patches for {DEFAULT_EPOCHS} epochs)")
    else:
        say(f"  learning    skipped: learning {n_atoms} atoms needs at least {n_atoms} "
            f"training patches, got {n_learn:,}")
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

    learning = None
    png_error = None
    if learn:
        learning, facts = _learn_dictionaries(
            X, D, rng, say, n_learn=n_learn, epochs=epochs, n_nonzero_coefs=n_nonzero_coefs,
            n_threads=n_threads, seed=seed,
        )
        if learning is not None:
            if png is not None:
                png_error = _write_atoms_png(png, learning, epochs, say)
            learning["png"] = os.fspath(png) if png is not None and png_error is None else None
        say()

    say(f"notes: each time is the best of {repeats} run{'s' if repeats != 1 else ''}. scikit-learn "
        "runs sklearn.decomposition.sparse_encode(")
    say("       algorithm=\"omp\") with its defaults (n_jobs=None); matcompress runs "
        "matcompress.sparse_encode")
    say("       with the same arguments (dense codes), and with return_sparse=True on all patches.")
    say("       rel. error = ||X - C D||_F / ||X||_F on the mean-removed patches; PSNR on pixels "
        "in [0, 1].")
    if learning is not None:
        _learning_notes(learning, facts, epochs, n_nonzero_coefs, say)
    if png_error is not None:
        raise DemoOutputError(f"cannot write the atoms image {os.fspath(png)!r}: {png_error}")

    return dict(rows=rows, same_support=n_same / n_compare, max_code_diff=max_diff,
                bytes_raw=total_raw, bytes_codes=total_coded, config=config, learning=learning)


def _unit_atoms(dictionary, dtype):
    """``dictionary`` with every non-zero row scaled to unit norm, C-contiguous in ``dtype``."""
    D = np.asarray(dictionary, dtype=np.float64)
    norms = np.linalg.norm(D, axis=1, keepdims=True)
    D = np.divide(D, norms, out=np.zeros_like(D), where=norms > 0)
    return np.ascontiguousarray(D, dtype=dtype)


def _learn_dictionaries(X, D_dct, rng, say, *, n_learn, epochs, n_nonzero_coefs, n_threads,
                        seed):
    """Learn ``len(D_dct)`` atoms from ``n_learn`` random rows of ``X`` with matcompress and
    scikit-learn from one initial dictionary, score them and the DCT dictionary on the training
    and the held-out rows, print the table. Return (the figures for ``run_demo``'s result,
    facts for the notes), or (None, None) if skipped."""
    import matcompress
    from sklearn.decomposition import MiniBatchDictionaryLearning
    from sklearn.exceptions import ConvergenceWarning

    n_patches = X.shape[0]
    n_atoms = D_dct.shape[0]
    train = np.zeros(n_patches, dtype=bool)
    train[rng.choice(n_patches, size=n_learn, replace=False)] = True
    X_train = np.ascontiguousarray(X[train])
    X_held = np.ascontiguousarray(X[~train])
    n_held = X_held.shape[0]
    norms = np.linalg.norm(X_train.astype(np.float64), axis=1)
    candidates = np.flatnonzero(norms > 0)
    if candidates.size < n_atoms:
        say(f"dictionary learning: skipped, only {candidates.size:,} of the {n_learn:,} training "
            f"patches are not flat and the initial dictionary needs {n_atoms}")
        return None, None
    chosen = np.sort(rng.choice(candidates, size=n_atoms, replace=False))
    init = _unit_atoms(X_train[chosen], X.dtype)

    say(f"dictionary learning: {n_atoms} atoms, {n_nonzero_coefs} nonzeros per patch, "
        f"{n_learn:,} training patches" + (f" ({n_held:,} held out)" if n_held else ""))
    say(f"                     (scored alike: unit-norm atoms, matcompress.sparse_encode with "
        f"{n_nonzero_coefs} nonzeros)")

    def score(dictionary):
        atoms = _unit_atoms(dictionary, X.dtype)
        codes = _quiet(matcompress.sparse_encode, X_train, atoms,
                       n_nonzero_coefs=n_nonzero_coefs, n_threads=n_threads, return_sparse=True)
        usage = np.bincount(codes.indices, minlength=n_atoms)
        train_error = _errors(X_train, codes @ atoms)[0]
        held_error = None
        if n_held:
            held = _quiet(matcompress.sparse_encode, X_held, atoms,
                          n_nonzero_coefs=n_nonzero_coefs, n_threads=n_threads,
                          return_sparse=True)
            held_error = _errors(X_held, held @ atoms)[0]
        return atoms, usage, train_error, held_error

    def sklearn_fit(alpha):
        model = MiniBatchDictionaryLearning(
            n_components=n_atoms, alpha=alpha, max_iter=epochs, batch_size=LEARN_BATCH_SIZE,
            tol=0.0, max_no_improvement=None, dict_init=init, random_state=seed,
        )
        with warnings.catch_warnings():  # lasso-LARS may warn on degenerate active sets
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            model.fit(X_train)
        return model.components_

    def matcompress_fit(passes=epochs, batch_size=LEARN_BATCH_SIZE):
        return _quiet(
            matcompress.dict_learning, X_train, n_atoms, n_nonzero_coefs=n_nonzero_coefs,
            method="online", max_iter=passes, tol=0.0, batch_size=batch_size,
            dict_init=init, random_state=seed, n_threads=n_threads,
        )[1]

    runs = [
        ("overcomplete 2-D DCT (fixed)", None, None, D_dct),
        (f"initial: {n_atoms} random patches", None, None, init),
    ]
    with _blas_limit(n_threads):
        for method, fit in (
            ("scikit-learn, alpha=1 (default)", lambda: sklearn_fit(1.0)),
            (_SKLEARN_ROW, lambda: sklearn_fit(SKLEARN_ALPHA)),
            (_MATCOMPRESS_ROW, matcompress_fit),
        ):
            dictionary, seconds = _best_time(fit, 1)
            runs.append((method, epochs, seconds, dictionary))
        dictionary, seconds = _best_time(
            lambda: matcompress_fit(LONG_FACTOR * epochs, batch_size=None), 1)
        runs.append((_MATCOMPRESS_LONG_ROW, LONG_FACTOR * epochs, seconds, dictionary))
        scored = [(method, ep, sec) + score(d) for method, ep, sec, d in runs]

    reference = next(sec for method, _, sec, *_ in scored if method == _SKLEARN_ROW)
    rows, dictionaries, usages = [], {}, {}
    for method, ep, seconds, atoms, usage, train_error, held_error in scored:
        rows.append(dict(method=method, epochs=ep, seconds=seconds, train_error=train_error,
                         heldout_error=held_error,
                         speedup=None if seconds is None else reference / seconds))
        dictionaries[method] = atoms
        usages[method] = usage

    def cell(value, fmt, width):
        return f"{'-' if value is None else format(value, fmt):>{width}}"

    header = (f"{'dictionary':<34}{'epochs':>7}{'seconds':>10}{'train error':>13}"
              f"{'held-out error':>16}{'speed-up':>10}")
    say(header)
    say("-" * len(header))
    for row in rows:
        say(f"{row['method']:<34}{cell(row['epochs'], 'd', 7)}{cell(row['seconds'], '.4f', 10)}"
            f"{cell(row['train_error'], '.4f', 13)}{cell(row['heldout_error'], '.4f', 16)}"
            f"{'-' if row['speedup'] is None else format(row['speedup'], '.1f') + 'x':>10}")
    say()

    by_method = {row["method"]: row for row in rows}
    dct, sk, mc = by_method[rows[0]["method"]], by_method[_SKLEARN_ROW], by_method[_MATCOMPRESS_ROW]
    keys = [(key, where) for key, where in (("heldout_error", "held-out"),
                                            ("train_error", "training"))
            if dct[key] is not None]

    def versus(row, key):
        change = 100.0 * (1.0 - row[key] / dct[key])
        return (f"{row[key]:.4f} vs {dct[key]:.4f}: {abs(change):.1f}% "
                f"{'lower' if change >= 0 else 'higher'}")

    say("learned vs the fixed DCT dictionary, rel. error on the "
        + " | ".join(f"{where}" for _, where in keys) + " patches:")
    for row in (mc, sk):
        say(f"  {row['method']:<26}" + " | ".join(versus(row, key) for key, _ in keys))
    say(f"matcompress vs scikit-learn (alpha={SKLEARN_ALPHA:g}): learned {mc['speedup']:.1f}x "
        "faster;")
    say("  rel. error " + ", ".join(f"{mc[key]:.4f} vs {sk[key]:.4f} on the {where} patches"
                                   for key, where in keys))
    long = by_method[_MATCOMPRESS_LONG_ROW]
    say(f"  with {LONG_FACTOR}x the epochs (default mini-batches), still {long['speedup']:.1f}x "
        "faster:")
    say("  rel. error " + ", ".join(f"{long[key]:.4f} on the {where} patches"
                                   for key, where in keys))
    learning = dict(rows=rows, n_train=n_learn, n_heldout=n_held, dictionaries=dictionaries,
                    usage=usages)
    facts = dict(share_small=float(np.mean(norms <= 1.0)), median_norm=float(np.median(norms)))
    return learning, facts


def _write_atoms_png(path, learning, epochs, say):
    """Write matcompress's and scikit-learn's atoms (most used first) to ``path``; print where.

    Returns None, or the OSError that stopped the write.
    """
    panels, labels = [], []
    by_method = {row["method"]: row for row in learning["rows"]}
    for method, name in ((_MATCOMPRESS_ROW, "matcompress online"),
                         (_SKLEARN_ROW, f"scikit-learn alpha={SKLEARN_ALPHA:g}")):
        row = by_method[method]
        order = np.argsort(-learning["usage"][method], kind="stable")
        panels.append(learning["dictionaries"][method][order])
        error, where = ((row["heldout_error"], "held-out") if row["heldout_error"] is not None
                        else (row["train_error"], "training"))
        labels.append(f"{name}, {epochs} epoch{'s' if epochs != 1 else ''}, "
                      f"{row['seconds']:.2f} s: {where} error {error:.4f}")
    image = atoms_image(panels, labels)
    try:
        image.save(path, format="PNG")
    except OSError as exc:
        say(f"atoms image: could not write {os.fspath(path)}: {exc}")
        return exc
    say(f"atoms image: wrote {os.path.abspath(path)}")
    say(f"  {image.size[0]}x{image.size[1]} PNG, matcompress left, scikit-learn "
        f"alpha={SKLEARN_ALPHA:g} right; each atom scaled to its own range,")
    say("  most used (on the training patches) first")
    return None


def _learning_notes(learning, facts, epochs, n_nonzero_coefs, say):
    """Print the notes on the dictionary-learning comparison, wrapped like the others."""
    import textwrap

    n_atoms = len(learning["dictionaries"][_MATCOMPRESS_ROW])
    text = (
        f"Dictionary learning is timed once. All learners start from the same initial dictionary "
        f"({n_atoms} random training patches, normalised) and make {epochs} "
        f"pass{'es' if epochs != 1 else ''} over the training patches in mini-batches of "
        f"{LEARN_BATCH_SIZE}. scikit-learn: MiniBatchDictionaryLearning(alpha, max_iter=epochs, "
        f"tol=0, max_no_improvement=None) with lasso-LARS codes (its default) and n_jobs=None. A "
        f"patch gets a nonzero lasso code only if |<patch, atom>| > alpha for some atom, so with "
        f"its default alpha=1 at least {100.0 * facts['share_small']:.1f}% of the training "
        f"patches (norm <= 1; median norm {facts['median_norm']:.3f}) get all-zero codes and it "
        f"learns little or nothing; alpha={SKLEARN_ALPHA:g} gave the lowest held-out error of "
        f"0.05, 0.1 and 0.2 (measured on {DEFAULT_LEARN_PATCHES:,} of these patches, "
        f"{DEFAULT_EPOCHS} epochs). "
        f"matcompress: matcompress.dict_learning(method=\"online\", "
        f"batch_size={LEARN_BATCH_SIZE}, tol=0) with OMP codes of {n_nonzero_coefs} nonzeros; "
        f"\"online\" reaches a lower error than \"ksvd\" or \"mod\" in the same time on these "
        f"patches."
    )
    say(textwrap.fill(text, width=100, initial_indent=" " * 7, subsequent_indent=" " * 7,
                      break_on_hyphens=False))


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
