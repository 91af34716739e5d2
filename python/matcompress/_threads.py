"""Thread bookkeeping shared by the kernels' Python wrappers."""

from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def blas_threads_at_most(n_threads):
    """Cap the BLAS threads at ``n_threads`` (a positive int) for the duration of a call.

    The kernels call SciPy's BLAS between their OpenMP regions, never inside them, so the two
    pools never run at once; this only makes an explicit ``n_threads`` hold for the GEMM part too.
    Without threadpoolctl the BLAS keeps its own setting.
    """
    ctl = _blas_controller() if n_threads else None
    if ctl is None or all(lib.num_threads <= n_threads for lib in ctl.lib_controllers):
        yield
        return
    with ctl.limit(limits=n_threads):
        yield
