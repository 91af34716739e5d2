"""Every code block of README.md runs.

- ```python blocks: executed one by one, each in a fresh namespace, in a temporary working
  directory (they write files such as w.npz); a block that raises fails its test. Blocks that
  import TensorFlow are skipped when it is not installed.
- ```sh blocks: each command line is checked. ``pip install`` lines must name extras that
  pyproject.toml defines (installing is what CI itself does with the test command, which
  .ci/run runs verbatim: checked here too). ``matcompress`` lines are run through the command
  line's ``main``, a block's commands in order in one directory — except ``demo`` runs, which
  are parsed only (test_model_demo.py runs ``matcompress demo --quick`` end to end; the full
  demo takes minutes) and ``bench`` runs, which are run with ``--tiny`` instead of their
  sizes. Other lines (python
  scripts under bench/) are parsed as arguments of their script's parser when possible.
"""

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang):
    return [(m.start(), m.group(1)) for m in
            re.finditer(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)]


def line_of(offset):
    return README.count("\n", 0, offset) + 1


PYTHON = blocks("python")
SHELL = blocks("sh")


def test_readme_has_blocks():
    assert len(PYTHON) >= 5 and len(SHELL) >= 2


# Keras' Variable.__array__ has no ``copy`` keyword: numpy >= 2 warns when Keras itself converts
# a variable during fit (as in test_tf_compression.py, not the library's doing).
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
@pytest.mark.parametrize("offset, code", PYTHON, ids=[f"line{line_of(o)}" for o, _ in PYTHON])
def test_python_block_runs(offset, code, tmp_path, monkeypatch):
    if re.search(r"^\s*import (tensorflow|keras|matcompress\.tf)", code, re.M):
        pytest.importorskip("tensorflow")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line_of(offset)}", "exec"), {"__name__": "__readme__"})


def _extras():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"].get("optional-dependencies", {}))


def _commands():
    out = []
    for offset, code in SHELL:
        for raw in code.splitlines():
            raw = raw.strip()
            if not raw or raw.startswith("#"):
                continue
            for part in raw.split("&&"):
                out.append((line_of(offset), part.strip()))
    return out


def test_pip_lines_name_real_extras():
    extras = _extras()
    seen = 0
    for _, cmd in _commands():
        words = shlex.split(cmd)
        if "pip" in words and "install" in words:
            for word in words[words.index("install") + 1:]:
                for extra in re.findall(r"\[([^\]]+)\]", word):
                    for name in extra.split(","):
                        assert name in extras, f"{cmd}: extra {name!r} not in pyproject.toml"
                        seen += 1
    assert seen


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(c for _, c in _commands() if "pytest" in c and "pip" not in c)
    install = next(c for _, c in _commands() if '".[test]"' in c)
    assert f"{install} && {test_cmd}" in ci


def _block_commands():
    """(README line, [matcompress command lines]) of each sh block that has some."""
    out = []
    for offset, code in SHELL:
        cmds = [part.strip() for raw in code.splitlines() for part in raw.split("&&")
                if part.strip().startswith("matcompress")]
        if cmds:
            out.append((line_of(offset), cmds))
    return out


@pytest.mark.parametrize("where, cmds", _block_commands(), ids=lambda v: str(v))
def test_matcompress_commands(where, cmds, tmp_path, monkeypatch, capsys):
    """A block's commands run in order in one directory (inspect reads what compress wrote)."""
    from matcompress import cli

    monkeypatch.chdir(tmp_path)
    for cmd in cmds:
        argv = shlex.split(cmd)[1:]
        if argv and argv[0] == "demo":
            cli._build_parser().parse_args(argv)  # parsed only: see the module docstring
            continue
        if argv and argv[0] == "bench":
            argv = [a for a in argv if a != "--quick"] + ["--tiny"]
        _prepare_inputs(argv, tmp_path)
        assert cli.main(argv) == 0, f"README.md:{where}: {cmd}"


def _prepare_inputs(argv, tmp_path):
    """Files a README command reads, made here: the weights of the compress examples."""
    import numpy as np

    rng = np.random.default_rng(0)
    for word in argv:
        if word.endswith(".npz") and word.startswith("weights") and not os.path.exists(word):
            np.savez(word, **{"dense/kernel": rng.standard_normal((256, 128)).astype(np.float32),
                              "dense/bias": np.zeros(128, np.float32),
                              "embedding": rng.standard_normal((1000, 64)).astype(np.float32)})


@pytest.mark.parametrize("where, cmd", [c for c in _commands() if c[1].startswith("python")
                                        and "bench/" in c[1]], ids=lambda v: str(v))
def test_bench_script_arguments_parse(where, cmd):
    words = shlex.split(cmd)
    script = ROOT / next(w for w in words if w.startswith("bench/"))
    assert script.exists(), f"README.md:{where}: {script} missing"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for word in words[words.index(next(w for w in words if w.startswith("bench/"))) + 1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in out.stdout, f"README.md:{where}: {word} unknown"
