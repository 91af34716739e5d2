"""Shared fixtures and data helpers of the matcompress test suite.

The helpers are plain functions (importable as ``from conftest import ...``, which works with
pytest's default ``prepend`` import mode because ``tests/`` has no ``__init__.py``) so that the
hypothesis tests, which cannot use function-scoped fixtures, can call them too.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest


def _import_core():
    # Another engineer may be re-installing the package while the suite starts: retry once.
    try:
        from matcompress import _core
    except ImportError:
        time.sleep(30)
        from matcompress import _core
    return _core


_core = _import_core()

#: The instruction set active when the suite starts: the detected one, unless the MATCOMPRESS_ISA
#: environment variable forced another. Tests that switch instruction sets restore this one.
INITIAL_ISA = _core.active_isa()

#: Instruction sets in increasing order; a CPU supporting one supports every earlier one.
ISA_ORDER = ("generic", "avx2", "avx512")


def supported_isas():
    """Every instruction set this CPU and build support, generic first."""
    detected = _core.detected_isa()
    return ISA_ORDER[: ISA_ORDER.index(detected) + 1]


@contextlib.contextmanager
def use_isa(name):
    """Run the block with the kernels forced to instruction set ``name``; restore afterwards."""
    previous = _core.active_isa()
    _core.set_isa(name)
    try:
        yield name
    finally:
        _core.set_isa(previous)


# ---------------------------------------------------------------------------------------------
# Data helpers
# ---------------------------------------------------------------------------------------------


def make_dictionary(rng, n_components, n_features, dtype=np.float64):
    """Random Gaussian atoms (rows) normalised to unit Euclidean norm, in ``dtype``.

    The atoms are drawn and normalised in float64 and only then cast, so the float32 and float64
    versions of one draw describe the same dictionary.
    """
    D = rng.standard_normal((n_components, n_features))
    norms = np.linalg.norm(D, axis=1, keepdims=True)
    # A zero Gaussian row has probability 0; guard anyway so the helper never divides by 0.
    norms[norms == 0] = 1.0
    return (D / norms).astype(dtype)


def make_sparse_signals(rng, dictionary, n_samples, s, *, noise=1e-3, dtype=None):
    """Signals that are exactly ``s``-sparse in ``dictionary`` plus small Gaussian noise.

    Each signal uses ``s`` distinct atoms chosen uniformly at random, with coefficients of
    magnitude uniform in [1, 2] and a random sign (bounded away from 0, so the greedy choices
    are clear-cut and not near-ties). ``noise`` is the standard deviation of the additive
    Gaussian noise per feature.

    Returns ``(X, support, coefs)``: X of shape (n_samples, n_features) in ``dtype`` (default:
    the dictionary's), the true supports (n_samples, s) and coefficients (n_samples, s).
    """
    D = np.asarray(dictionary, dtype=np.float64)
    n_components, n_features = D.shape
    if dtype is None:
        dtype = np.asarray(dictionary).dtype
    support = np.empty((n_samples, s), dtype=np.int64)
    for i in range(n_samples):
        support[i] = rng.choice(n_components, size=s, replace=False)
    coefs = rng.uniform(1.0, 2.0, size=(n_samples, s)) * rng.choice([-1.0, 1.0], size=(n_samples, s))
    X = np.einsum("ns,nsf->nf", coefs, D[support])
    X += noise * rng.standard_normal(X.shape)
    return X.astype(dtype), support, coefs


def make_gaussian_signals(rng, n_samples, n_features, dtype=np.float64):
    """Dense i.i.d. standard normal signals (no sparse structure at all)."""
    return rng.standard_normal((n_samples, n_features)).astype(dtype)


def residual_norms(X, codes, dictionary):
    """Per-signal ``||x - code @ dictionary||`` computed in float64."""
    X = np.asarray(X, dtype=np.float64)
    codes = codes.toarray() if hasattr(codes, "toarray") else np.asarray(codes)
    return np.linalg.norm(X - codes.astype(np.float64) @ np.asarray(dictionary, np.float64), axis=1)


def supports(codes):
    """Boolean mask of the nonzero coefficients (dense or sparse codes)."""
    codes = codes.toarray() if hasattr(codes, "toarray") else np.asarray(codes)
    return codes != 0


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: every test sees the same data on every run."""
    return np.random.default_rng(20240611)


@pytest.fixture(params=supported_isas())
def isa(request):
    """Each instruction set the CPU supports (generic < avx2 < avx512, up to the detected one).

    Forces the kernels to it for the test and restores the initial instruction set afterwards
    (the detected one, unless MATCOMPRESS_ISA was set when the suite started).
    """
    _core.set_isa(request.param)
    try:
        yield request.param
    finally:
        _core.set_isa(INITIAL_ISA)


@pytest.fixture(autouse=True)
def _isa_restored():
    """Safety net: no test may leave a non-default instruction set behind for the next one."""
    yield
    if _core.active_isa() != INITIAL_ISA:
        left = _core.active_isa()
        _core.set_isa(INITIAL_ISA)
        pytest.fail(f"test left instruction set {left!r} active (expected {INITIAL_ISA!r})")


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    """Both floating-point dtypes of the API."""
    return np.dtype(request.param)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def n_threads(request):
    """One thread and the 2 cores of the CI machine."""
    return request.param
