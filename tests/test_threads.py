"""Threads: exceptions from OpenMP workers, thread-count controls, Ctrl-C, and the GIL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from threadpoolctl import threadpool_limits

import matcompress as mc
from conftest import make_dictionary, make_gaussian_signals, make_sparse_signals, supports
from matcompress import _core

# ---------------------------------------------------------------------------------------------
# Exceptions thrown on OpenMP worker threads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_threads", [1, 2, 0])
@pytest.mark.parametrize(("n", "fail_at"), [(100, 5), (100, 0), (100, 99), (1, 0), (10_000, 7777)])
def test_parallel_raise_reaches_python(n, fail_at, n_threads):
    with pytest.raises(ValueError, match=rf"\bitem {fail_at} failed"):
        _core.parallel_raise(n, fail_at, n_threads)
    # The pool is still usable afterwards (no deadlock, no stuck exception).
    assert _core.parallel_raise(n, -1, n_threads) == n


@pytest.mark.parametrize("n_threads", [1, 2, 0])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
def test_parallel_raise_without_failure_visits_every_item(n, n_threads):
    assert _core.parallel_raise(n, -1, n_threads) == n
    assert _core.parallel_raise(n, n + 5, n_threads) == n  # fail_at never reached


def test_parallel_raise_repeatedly():
    for i in range(50):
        with pytest.raises(ValueError, match=f"item {i} failed"):
            _core.parallel_raise(64, i, 2)


# ---------------------------------------------------------------------------------------------
# Thread-count controls
# ---------------------------------------------------------------------------------------------


def _problem(dtype=np.float64, n=3000):
    rng = np.random.default_rng(42)
    D = make_dictionary(rng, 257, 64, dtype)
    X = make_gaussian_signals(rng, n, 64, dtype)
    return X, D


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_n_threads_none_and_minus_one(dtype):
    X, D = _problem(dtype)
    ref = mc.sparse_encode(X, D, n_nonzero_coefs=10, n_threads=_core.default_threads())
    for nt in (None, -1):
        assert_array_equal(mc.sparse_encode(X, D, n_nonzero_coefs=10, n_threads=nt), ref)
        sp = mc.sparse_encode(X, D, n_nonzero_coefs=10, n_threads=nt, return_sparse=True)
        assert_array_equal(sp.toarray(), ref)


def test_default_threads_is_positive():
    assert isinstance(_core.default_threads(), int)
    assert 1 <= _core.default_threads() <= max(os.cpu_count() or 1, 64)
    assert mc.show_config()["default_threads"] == _core.default_threads()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_threadpool_limits_leave_results_unchanged(dtype):
    X, D = _problem(dtype)
    free = mc.sparse_encode(X, D, n_nonzero_coefs=10)
    one = mc.sparse_encode(X, D, n_nonzero_coefs=10, n_threads=1)
    with threadpool_limits(1):
        # threadpoolctl's OpenMP limit is what n_threads=None means now.
        assert _core.default_threads() == 1
        limited = mc.sparse_encode(X, D, n_nonzero_coefs=10)
        limited_2 = mc.sparse_encode(X, D, n_nonzero_coefs=10, n_threads=2)
        limited_sp = mc.sparse_encode(X, D, n_nonzero_coefs=10, return_sparse=True)
    with threadpool_limits(1, user_api="blas"):
        blas_limited = mc.sparse_encode(X, D, n_nonzero_coefs=10)
    assert_array_equal(limited, one)  # same thread count: bitwise
    assert_array_equal(limited_sp.toarray(), one)
    for other in (free, limited_2, blas_limited):
        assert_array_equal(supports(other), supports(one))
        tight = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
        assert_allclose(other, one, **tight)
    # The limit is lifted afterwards.
    assert _core.default_threads() == mc.show_config()["default_threads"]


def _run_python(code, **env_vars):
    env = dict(os.environ, **env_vars)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        check=True,
    ).stdout.strip()


def test_omp_num_threads_is_honoured():
    code = (
        "import numpy as np, matcompress, matcompress._core as c\n"
        "print(c.default_threads())\n"
        "rng = np.random.default_rng(0)\n"
        "D = rng.standard_normal((50, 20)); X = rng.standard_normal((500, 20))\n"
        "code = matcompress.sparse_encode(X, D, n_nonzero_coefs=3)\n"
        "print(int((code != 0).sum()))\n"
    )
    assert _run_python(code, OMP_NUM_THREADS="1").split() == ["1", "1500"]
    # Not merely capped by the core count: the variable is read as given.
    assert _run_python(code, OMP_NUM_THREADS="3").split() == ["3", "1500"]


# ---------------------------------------------------------------------------------------------
# Ctrl-C and the GIL
# ---------------------------------------------------------------------------------------------


def _long_problem(n_samples):
    """1024 atoms x 256 features, float32; ~30k signals/s with s=32 on one thread."""
    rng = np.random.default_rng(9)
    D = make_dictionary(rng, 1024, 256, np.float32)
    # Tiling a block of distinct signals keeps the set-up cheap; the kernel does the full work.
    block = make_gaussian_signals(rng, 2000, 256, np.float32)
    X = np.tile(block, (-(-n_samples // 2000), 1))[:n_samples]
    return X, D


def test_keyboard_interrupt_stops_a_long_call():
    # 120k signals at s=32 on one thread take ~4 s here (3.4 s measured for 100k), so the SIGINT
    # sent after 0.5 s lands mid-call. The core polls for signals between chunks (~1000 signals,
    # a few tens of ms), so the KeyboardInterrupt must surface well within 1.5 s.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    X, D = _long_problem(120_000)
    sent = []

    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.5, interrupt)
    returned = False
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            timer.start()
            mc.sparse_encode(X, D, n_nonzero_coefs=32, n_threads=1, return_sparse=True)
            returned = True  # only reached if the call finished before the interrupt
            time.sleep(5)  # let a late SIGINT arrive here rather than after the test
    finally:
        timer.cancel()
        timer.join()
    raised = time.perf_counter()
    assert not returned, f"the call finished in {raised - start:.2f} s, before the SIGINT: make it longer"
    assert sent, "the timer never fired"
    assert raised - sent[0] < 1.5, f"KeyboardInterrupt arrived {raised - sent[0]:.2f} s after SIGINT"
    # The module still works afterwards and gives correct codes.
    rng = np.random.default_rng(0)
    D2 = make_dictionary(rng, 40, 16)
    X2, _, _ = make_sparse_signals(rng, D2, 20, 3)
    after = mc.sparse_encode(X2, D2, n_nonzero_coefs=3)
    from sklearn.decomposition import sparse_encode as sk_sparse_encode

    ref = sk_sparse_encode(X2, D2, algorithm="omp", n_nonzero_coefs=3)
    assert_allclose(after, ref, rtol=1e-10, atol=1e-10)


def test_gil_is_released_during_the_call():
    # A Python thread counting in a loop can only run while the main thread does not hold the
    # GIL. During a ~1 s call on one OpenMP thread (2 cores here) it must keep counting at a
    # good fraction of its free-running rate; with the GIL held it would be nearly frozen.
    X, D = _long_problem(30_000)
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        time.sleep(0.05)
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.3)
        free_rate = (count[0] - c0) / (time.perf_counter() - t0)
        c1, t1 = count[0], time.perf_counter()
        mc.sparse_encode(X, D, n_nonzero_coefs=32, n_threads=1, return_sparse=True)
        elapsed = time.perf_counter() - t1
        during = count[0] - c1
    finally:
        stop.set()
        worker.join()
    assert elapsed > 0.3, "the call was too short to tell"
    assert during >= 0.25 * free_rate * elapsed, (
        f"counter advanced {during} in {elapsed:.2f} s vs free rate {free_rate:.0f}/s"
    )
