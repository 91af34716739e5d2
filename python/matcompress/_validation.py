"""Validation of user input at the Python boundary (scikit-learn style).

Public functions validate with these helpers; private functions and the native core trust what
they are given. Every message names the argument and shows the offending value.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _is_sparse(a) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(a)


def check_array(a, name, *, dtype=None, ndim=2, allow_empty=False):
    """Return ``a`` as a C-contiguous float32/float64 array, or raise naming ``name``.

    ``ndim=None`` accepts any number of axes but zero.

    With ``dtype=None`` float32 and float64 are kept and every other real numeric dtype (ints,
    bools, float16) becomes float64, as scikit-learn's ``check_array`` does; otherwise the array
    is converted to ``dtype``. The input is never modified: a copy is made only when the dtype
    or the memory layout has to change.
    """
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    if _is_sparse(a):
        raise TypeError(f"{name} must be a dense array; got a sparse matrix ({type(a).__name__})")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} could not be converted to a numeric array: {exc}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real; complex dtype {arr.dtype} is not supported")
    if kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array; got dtype {arr.dtype}")
    if ndim is None:  # any number of axes, at least one
        if arr.ndim == 0:
            raise ValueError(f"{name} must be an array, not a scalar; got {arr!r}")
    elif arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got an array of shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); at least one element is needed")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in _FLOAT_DTYPES else np.dtype(np.float64)
    dtype = np.dtype(dtype)
    if kind == "f":
        check_finite(arr, name)
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(arr, dtype=dtype)
    if kind == "f" and arr.dtype.itemsize > dtype.itemsize and not _all_finite(converted):
        raise ValueError(
            f"{name} has values too large for {dtype} (the dtype of the computation): "
            f"the largest magnitude is {np.max(np.abs(arr)):.3g}"
        )
    return converted


def _all_finite(arr):
    # One reduction first (no temporary array); the element-wise test only when it overflows or
    # meets a NaN/inf. numpy's floating-point warnings are silenced: they are not the user's.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(arr, dtype=np.float64)):
            return True
    return bool(np.isfinite(arr).all())


def check_finite(arr, name):
    """Raise ValueError if ``arr`` holds NaN or infinity."""
    if arr.size == 0 or _all_finite(arr):
        return
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    raise ValueError(f"{name} contains infinity")


def check_int(value, name, *, min_value=None, max_value=None, max_reason=""):
    """Return ``value`` as an int in [min_value, max_value], or raise naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}")
    value = operator.index(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}; got {value}")
    if max_value is not None and value > max_value:
        reason = f" ({max_reason})" if max_reason else ""
        raise ValueError(f"{name} must be <= {max_value}{reason}; got {value}")
    return value


def check_float(value, name, *, min_value=None):
    """Return ``value`` as a finite float >= min_value, or raise naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}; got {value}")
    return value


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_n_threads(n_threads):
    """Return the thread count for the core: 0 means "every core the process may use".

    ``None`` and ``-1`` mean all usable cores (``OMP_NUM_THREADS`` and threadpoolctl's OpenMP
    limit are honoured); a positive integer is used as given.
    """
    if n_threads is None:
        return 0
    n = check_int(n_threads, "n_threads")
    if n == -1:
        return 0
    if n < 1:
        raise ValueError(f"n_threads must be None, -1 or a positive integer; got {n}")
    return n


def check_random_state(random_state, name="random_state"):
    """Return a ``numpy.random.Generator`` for ``random_state``.

    ``None`` draws fresh entropy; an int seeds a new generator (the same int, the same stream); a
    ``Generator`` is used as is; a legacy ``RandomState`` seeds a new generator from one draw.
    """
    if random_state is None or isinstance(random_state, np.random.Generator):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, numbers.Integral):
        raise TypeError(
            f"{name} must be None, an int, a numpy Generator or RandomState; got {random_state!r}"
        )
    if random_state < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {random_state}")
    return np.random.default_rng(operator.index(random_state))


def check_inputs(X, n_rows, name="X"):
    """Calibration inputs of a layer computing ``X @ W`` for W with ``n_rows`` rows: ``X`` as a
    C-contiguous 2-D float32/float64 array (other real dtypes become float64) of width
    ``n_rows`` with at least one row, finite; or raise naming ``name``."""
    arr = check_array(X, name, allow_empty=True)
    if arr.shape[1] != n_rows:
        raise ValueError(f"{name} must have one column per row of the matrix (the layer computes "
                         f"{name} @ W with W of {n_rows} rows); got {name} of shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} has no rows (shape {arr.shape}); at least one calibration "
                         "sample is needed")
    return arr
