#!/usr/bin/env bash
# Checks a binary wheel the way a user without a compiler gets it: a fresh virtual environment
# (no system site-packages), no compiler reachable, the wheel installed with its test and demo
# extras from PyPI (binary wheels only), then `matcompress demo --quick` and the test suite run
# against the installed package, from a scratch directory holding a copy of the project without
# its package sources (python/), so the source tree cannot be imported instead.
# Usage: scripts/check_wheel.sh WHEEL [pytest args...]
# Environment: MC_CHECK_DIR (scratch directory, replaced; default build/wheel-check).
# No compiler: PATH is the environment's bin/ plus one directory of links to every program on
# the caller's PATH except compilers (gcc, g++-12, x86_64-linux-gnu-gcc, cc, c99, clang, ...) and
# other Pythons, in which gcc/g++/cc/c++/cpp/clang/clang++ are stand-ins that fail; CC and CXX
# name the failing program; pip may only install wheels (--only-binary=:all:). A scan of PATH
# checks that nothing named like a compiler runs, before anything is installed.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 WHEEL [pytest args...]" >&2
  exit 2
fi
wheel=$(realpath "$1")
shift
cd "$(dirname "$0")/.."
repo=$PWD
dir=${MC_CHECK_DIR:-build/wheel-check}
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/run"
dir=$(realpath "$dir")
venv=$dir/venv
run=$dir/run
t_all=$(date +%s)
t0=$t_all
times=()
stage_done() {  # name: print (and keep) the seconds since the last stage
  local now
  now=$(date +%s)
  times+=("$(printf '%-22s %4d s' "$1" $((now - t0)))")
  printf '   %s: %d s\n' "$1" $((now - t0))
  t0=$now
}

echo "== wheel check: $(basename "$wheel")"
python3 -m venv "$venv"
cat >"$dir/bin/no-compiler" <<'SH'
#!/bin/sh
echo "the wheel check allows no compiler (called: $0 $*)" >&2
exit 1
SH
chmod +x "$dir/bin/no-compiler"
for name in gcc g++ cc c++ clang clang++ cpp; do
  ln -s no-compiler "$dir/bin/$name"
done
# The usual tools stay (joblib runs lscpu and cat, platform runs uname): the first program of
# each name on PATH, as in a shell.
compiler='^(.*-)?(gcc|g\+\+|cc|c\+\+|c89|c99|cpp|clang|clang\+\+|tcc|icx|icpx)(-?[0-9.]+)?$'
IFS=: read -r -a path_dirs <<<"$PATH"
for d in "${path_dirs[@]}"; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    name=${f##*/}
    if [ -f "$f" ] && [ -x "$f" ] && [ ! -e "$dir/bin/$name" ] && [ ! -L "$dir/bin/$name" ] \
        && ! [[ $name =~ $compiler ]] && [[ $name != python* && $name != pip* ]]; then
      ln -s "$f" "$dir/bin/$name"
    fi
  done
done
# Everything below runs in this environment: the venv's bin/ and the links only, no PYTHONPATH
# (the source tree must not leak in).
in_venv() {
  env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u LD_PRELOAD -u LD_LIBRARY_PATH \
    -u VIRTUAL_ENV PATH="$venv/bin:$dir/bin" CC="$dir/bin/no-compiler" CXX="$dir/bin/no-compiler" \
    "$@"
}
in_venv "$venv/bin/python" - <<'PY'
import os
import re
import shutil
import subprocess
import sys

# Anything on PATH named like a compiler (x86_64-linux-gnu-g++-12 too), and CC/CXX, must fail:
# the same names as above, so that a program left out of the links would be found here.
compiler = re.compile(
    r"(?:.*-)?(gcc|g\+\+|cc|c\+\+|c89|c99|cpp|clang|clang\+\+|tcc|icx|icpx)(?:-?[0-9.]+)?")
candidates = {os.environ["CC"], os.environ["CXX"]}
for d in os.environ["PATH"].split(os.pathsep):
    candidates.update(os.path.join(d, f) for f in os.listdir(d) if compiler.fullmatch(f))
for c in sorted(candidates):
    path = shutil.which(c)
    if path and subprocess.run([path, "--version"], capture_output=True).returncode == 0:
        sys.exit(f"a compiler is reachable: {c} ({path})")
n_tools = len(os.listdir(os.environ["PATH"].split(os.pathsep)[1]))
print(f"   no compiler reachable: PATH={os.environ['PATH']} ({n_tools} programs), CC and CXX "
      f"fail ({len(candidates)} compiler-like names checked)")
PY
stage_done "venv"

echo "== wheel check: pip install (binary wheels only) of the wheel with [test,demo]"
if ! in_venv "$venv/bin/python" -m pip install -q --only-binary=:all: "$wheel[test,demo]" \
    >"$dir/pip-install.log" 2>&1; then
  cat "$dir/pip-install.log"
  exit 1
fi
in_venv "$venv/bin/python" -c "import matcompress" \
  || { echo "the wheel does not import after pip install" >&2; exit 1; }
stage_done "pip install"

echo "== wheel check: matcompress info and demo --quick (in $run)"
cd "$run"
in_venv "$venv/bin/python" - "$venv" <<'PY'
import os
import sys

import matcompress

where = os.path.realpath(matcompress.__file__)
if not where.startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"matcompress imported from {where}, not from the virtual environment")
print(f"   matcompress {matcompress.__version__} from {where}")
PY
in_venv "$venv/bin/matcompress" info | sed 's/^/   /'
in_venv "$venv/bin/matcompress" demo --quick
stage_done "demo --quick"

echo "== wheel check: the test suite against the installed wheel (in $run)"
# Besides tests/ and the pytest configuration (pyproject.toml), the tests read README.md, .ci/run
# and the bench/ scripts: copy the project's files (git's list, untracked ones included) except
# python/.
python3 - "$repo" "$run" <<'PY'
import os
import shutil
import subprocess
import sys

repo, run = sys.argv[1:]
listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others",
                         "--exclude-standard"], check=True, capture_output=True).stdout
for name in listed.decode().split("\0"):
    if name and not name.startswith("python/") and os.path.isfile(os.path.join(repo, name)):
        os.makedirs(os.path.join(run, os.path.dirname(name)), exist_ok=True)
        shutil.copy2(os.path.join(repo, name), os.path.join(run, name))
PY
status=0
in_venv "$venv/bin/python" - "$venv" -p no:cacheprovider "$@" <<'PY' || status=$?
import os
import sys

import matcompress
import pytest

venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(matcompress.__file__)
if not where.startswith(venv + os.sep):
    sys.exit(f"matcompress imported from {where}, not from the virtual environment")
sys.exit(pytest.main(sys.argv[2:]))
PY
stage_done "test suite"

echo "== wheel check: times"
printf '   %s\n' "${times[@]}"
printf '   %-22s %4d s\n' "in all" $(($(date +%s) - t_all))
exit "$status"
