"""Timing, machine-load and peak-memory helpers shared by every benchmark.

One copy for the comparison behind ``matcompress bench`` (:mod:`matcompress.benchmark.compare`)
and for the scripts in the repository's ``bench/`` directory, which import them from here (the
package is all a wheel installs; ``bench/`` is not part of it).

- Timing: :func:`best_time` (warm-up call, then the best of several), :func:`interleave` (the
  routes of a comparison in rounds, so that a slow spell of the host hits every library).
- The machines here are shared: :class:`ForeignLoad` measures the cores other processes kept busy
  while timing, :class:`Settler` pauses before a library's timings (idle BLAS/OpenMP threads of
  the previous library spin for a while) and waits, within a budget, for other processes to leave
  the CPU.
- Peak memory: :data:`PEAK_RSS_HELPERS`, the source of the functions a fresh child process runs
  around the measured call (peak RSS reset by ``/proc/self/clear_refs``, read from ``VmHWM``).
- Reports: :func:`environment`, :func:`format_environment`, :func:`source_state`, :func:`table`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import subprocess
import time

import numpy as np

__all__ = [
    "SEED", "SETTLE_SECONDS", "BUSY_CORES", "ForeignLoad", "Settler", "load_notes", "best_time",
    "Timing", "interleave", "PEAK_RSS_HELPERS", "release_freed_memory", "rss_now", "maxrss",
    "start_peak", "say", "table", "met", "environment", "format_environment", "source_state",
]

SEED = 20240611

# Idle BLAS / OpenMP worker threads busy-wait for a while after a call (OpenBLAS's pthreads
# pool ~0.1 s, libgomp less) before they sleep. With several pools in one process (numpy's,
# SciPy's and SPAMS' OpenBLAS, two libgomp) on 2 cores, the previous library's spinning threads
# would steal the cores from the next one's measurement: wait this long before each library.
SETTLE_SECONDS = 0.3
BUSY_CORES = 0.15  # warn when other processes used more cores than this while timing


# --------------------------------------------------------------------------------------------
# other processes' load


def _system_busy_seconds():
    """CPU seconds all cores spent busy (user, system, irq, steal) since boot; None if unknown."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system | irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Accumulates how many cores were busy with work other than this process (other processes,
    or steal by the hypervisor) while timing: ratios measured on a busy machine mean little."""

    def __init__(self):
        self.wall = 0.0
        self.other = 0.0

    def __enter__(self):
        self._t = (time.perf_counter(), time.process_time(), _system_busy_seconds())
        return self

    def __exit__(self, *exc):
        w0, p0, b0 = self._t
        b1 = _system_busy_seconds()
        if b0 is not None and b1 is not None:
            self.wall += time.perf_counter() - w0
            self.other += max(0.0, (b1 - b0) - (time.process_time() - p0))
        return False

    @property
    def cores(self):
        return self.other / self.wall if self.wall > 0 else None


class Settler:
    """Before each library's timings: pause `pause` seconds, and keep pausing while other
    processes keep more than BUSY_CORES cores busy, until `budget` seconds of waiting are spent
    for the whole run (the machines here are shared; a pause cannot hurt a measurement)."""

    def __init__(self, budget=0.0, pause=SETTLE_SECONDS):
        self.budget, self.pause, self.waited = float(budget), pause, 0.0

    def __call__(self):
        while True:
            meter = ForeignLoad()
            with meter:
                time.sleep(self.pause)
            busy = meter.cores
            if busy is None or busy <= BUSY_CORES or self.waited >= self.budget:
                return
            self.waited += meter.wall


def load_notes(loads, waited, where=""):
    """Report notes on a run's other load: the most cores other processes kept busy while
    timings ran (when above BUSY_CORES) and the seconds spent waiting for an idle CPU."""
    notes = []
    loads = [v for v in loads if v is not None]
    if loads and max(loads) > BUSY_CORES:
        notes.append(f"other processes kept up to {max(loads):.2f} cores busy during some "
                     f"timings{where}: those figures are unreliable")
    if waited > 0:
        notes.append(f"waited {waited:.0f} s in all for other processes to leave the CPU")
    return notes


# --------------------------------------------------------------------------------------------
# timing


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def best_time(fn, repeats, min_time=0.0, max_repeats=30, settle=None, load=None):
    """settle() (default: pause SETTLE_SECONDS), one warm-up call, then the best wall time of
    >= `repeats` calls (more while the calls so far took less than `min_time` in total).
    `load`: a ForeignLoad that accumulates other processes' CPU use during the timed calls.
    Returns (best seconds, warm-up result, calls)."""
    if settle is None:
        time.sleep(SETTLE_SECONDS)
    else:
        settle()
    result = fn()
    best, total, calls = math.inf, 0.0, 0
    with load if load is not None else _Nothing():
        while calls < repeats or (total < min_time and calls < max_repeats):
            t0 = time.perf_counter()
            r = fn()
            dt = time.perf_counter() - t0
            del r
            best, total, calls = min(best, dt), total + dt, calls + 1
    return best, result, calls


@dataclasses.dataclass
class Timing:
    """One route of :func:`interleave`: its best time, calls, rounds, and other load."""

    best: float = math.inf
    calls: int = 0
    rounds: int = 0
    slow: bool = False
    load: ForeignLoad = dataclasses.field(default_factory=ForeignLoad)


def _timed_call(fn, prepare=None):
    """Seconds of one call of fn (after prepare(), untimed); the result is dropped at once."""
    if prepare:
        prepare()
    t0 = time.perf_counter()
    r = fn()
    dt = time.perf_counter() - t0
    del r
    return dt


def interleave(routes, rounds, settle, *, out=print, min_time=0.02, max_calls=30,
               slow_seconds=0.5, slow_rounds=2):
    """Time routes in rounds, best time each.

    routes: {name: (fn, prepare or None)}; prepare() runs before every call, untimed (e.g. an
    instruction-set switch). In each round every route gets settle(), then calls until `min_time`
    seconds are spent (at least 3, at most `max_calls`); the first round starts with an untimed
    warm-up call. A route whose warm-up takes more than `slow_seconds` is slow: one call per
    round, in at most `slow_rounds` rounds. `out`: a callable for progress lines, or None.
    Returns {name: Timing}."""
    res = {name: Timing() for name in routes}
    for rnd in range(rounds):
        for name, (fn, prepare) in routes.items():
            t = res[name]
            if t.slow and t.rounds >= slow_rounds:
                continue
            settle()
            if rnd == 0:  # warm-up: threads, pages, caches; decides whether the route is slow
                t.slow = _timed_call(fn, prepare) > slow_seconds
            spent, calls = 0.0, 0
            with t.load:
                while True:
                    dt = _timed_call(fn, prepare)
                    spent, calls = spent + dt, calls + 1
                    t.best = min(t.best, dt)
                    if t.slow or (calls >= 3 and spent >= min_time) or calls >= max_calls:
                        break
            t.calls += calls
            t.rounds += 1
        if out is not None:
            out(f"    round {rnd + 1}/{rounds} done")
    return res


# --------------------------------------------------------------------------------------------
# peak memory, in a fresh process

# Source of the helpers a memory-measuring child process runs (the bench/ scripts prepend it to
# their child scripts): the RSS now, the peak RSS, and start_peak() to reset the peak just before
# the measured call. Executed below as well, so that this module offers the same functions.
PEAK_RSS_HELPERS = r"""
import gc, resource

def release_freed_memory():
    # give freed heap memory back, so the measured call cannot reuse it unseen (no RSS growth)
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def maxrss():
    # VmHWM: this process's peak RSS, which clear_refs resets. ru_maxrss can also hold the RSS
    # of the parent at fork time (the kernel keeps the pre-exec peak), so it is only a fallback.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

def start_peak():
    # reset the peak RSS to the current one: (RSS now, peak now, how the peak is read)
    before = rss_now()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS to the current RSS
        method = "peak RSS reset by /proc/self/clear_refs, read from VmHWM"
    except OSError:
        method = "peak RSS (VmHWM / ru_maxrss) minus RSS before"
    return before, maxrss(), method
"""

_helpers = {}
exec(PEAK_RSS_HELPERS, _helpers)  # noqa: S102 - our own source, defined just above
release_freed_memory = _helpers["release_freed_memory"]
rss_now = _helpers["rss_now"]
maxrss = _helpers["maxrss"]
start_peak = _helpers["start_peak"]
del _helpers


# --------------------------------------------------------------------------------------------
# reports


def say(out, msg):
    """Print `msg` to the text stream `out` (None: silent)."""
    if out is not None:
        print(msg, file=out, flush=True)


def table(header, body):
    """A markdown table, padded so that it reads well in a terminal too."""
    cols = list(zip(*([header] + body)))
    w = [max(len(str(v)) for v in col) for col in cols]

    def line(vals):
        return "| " + " | ".join(str(v).ljust(x) for v, x in zip(vals, w)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [line(r) for r in body])


def met(ok):
    return "met" if ok else "**missed**"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def distribution_version(*dists):
    """The installed version of the first of `dists` that is installed, or "not installed"."""
    import importlib.metadata as md

    for dist in dists:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "not installed"


def environment():
    """Versions, CPU and thread/BLAS facts for the report header."""
    import matcompress
    import scipy
    import sklearn

    env = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=_cpu_model(),
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        python=platform.python_version(),
        matcompress=matcompress.show_config(),
        numpy=np.__version__, scipy=scipy.__version__, sklearn=sklearn.__version__,
        spams=distribution_version("spams-bin", "spams"),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
    )
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = [
            dict(api=p.get("internal_api"), lib=os.path.basename(p.get("filepath", "")),
                 version=p.get("version"), threads=p.get("num_threads"),
                 layer=p.get("threading_layer"), arch=p.get("architecture"))
            for p in threadpool_info()]
    except ImportError:
        env["threadpools"] = "threadpoolctl not installed"
    return env


def format_environment(env, command):
    """The report header's lines (markdown list items) for `environment()` and `command`."""
    lines = [
        f"- command: `{command}`",
        f"- date: {env['date']}",
        f"- CPU: {env['cpu']} ({env['cpus']} usable cores); OMP_NUM_THREADS="
        f"{env['omp_num_threads']}",
        f"- matcompress.show_config(): `{env['matcompress']}`",
        f"- python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, "
        f"scikit-learn {env['sklearn']}, spams-bin {env['spams']}",
        "- thread pools (threadpoolctl):",
    ]
    pools = env["threadpools"]
    if isinstance(pools, str):
        lines.append(f"  - {pools}")
    else:
        for p in pools:
            extra = ", ".join(f"{k} {p[k]}" for k in ("version", "layer", "arch") if p.get(k))
            lines.append(f"  - {p['api']} `{p['lib']}`: {p['threads']} threads"
                         + (f" ({extra})" if extra else ""))
    return "\n".join(lines)


def source_state(root=None):
    """The commit of the git repository at `root` and the library files changed since; None when
    `root` is no git checkout (an installed wheel). Default root: the repository holding this
    package's sources (python/matcompress/benchmark/ -> three levels up)."""
    if root is None:
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "python",
                                  "csrc"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    files = [line[3:] for line in changed.splitlines() if line.strip()]
    return f"{commit}" + (f" + uncommitted changes to {', '.join(files)}" if files else "")


def parse_subset(spec, choices, flag, noun="name"):
    """The entries of a comma-separated ``spec`` ("all": every one of ``choices``), in the order
    of ``choices``; ValueError naming ``flag`` for an unknown or empty list."""
    if spec.strip() == "all":
        return tuple(choices)
    want = [g.strip() for g in spec.split(",") if g.strip()]
    bad = [g for g in want if g not in choices]
    if bad or not want:
        raise ValueError(f"{flag}: unknown {noun}(s) {bad or [spec]}; choose from "
                         f"{', '.join(choices)} or 'all'")
    return tuple(g for g in choices if g in want)


def write_report(section, *, markdown=None, results=None, title=None, replace=None):
    """Write a benchmark's report ``section``: the whole of it to ``markdown``, and as the
    section ``title`` of the markdown file ``results`` (others left as they are; ``replace``
    is ``replace_section(old, section, title=...)``). Prints what it wrote."""
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(section)
        print(f"wrote {markdown}")
    if results:
        old = ""
        if os.path.exists(results):
            with open(results, encoding="utf-8") as f:
                old = f.read()
        with open(results, "w", encoding="utf-8") as f:
            f.write(replace(old, section, title=title))
        print(f"replaced the section {title!r} in {results}")
