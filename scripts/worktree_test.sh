#!/usr/bin/env bash
# Runs pytest on this working tree's Python sources with the native libraries of the installed
# (editable) build: for Python-only changes in a git worktree beside the main one, without a
# private build (scripts/private_test.sh builds one). Copies _core*.so and tf/_tf_ops.so next to
# the sources (both gitignored), drops the editable install's import redirect, and checks that
# the package imported is this tree's.
# Usage: scripts/worktree_test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(python3 - <<'PY'
import glob, os, site
hits = [d for d in site.getsitepackages() if glob.glob(os.path.join(d, "matcompress", "_core*.so"))]
print(os.path.join(hits[0], "matcompress") if hits else "")
PY
)
if [ -z "$site" ]; then
  echo "no installed matcompress build to take the native libraries from" >&2
  exit 1
fi
if [ "$site" != "$PWD/python/matcompress" ]; then
  # Replaced by a rename, never overwritten in place (and only when they differ): a run of
  # this script beside another one must not rewrite a library the other has mapped.
  put() {
    cmp -s "$1" "$2/$(basename "$1")" && return 0
    cp "$1" "$2/.$(basename "$1").tmp.$$" && mv -f "$2/.$(basename "$1").tmp.$$" "$2/$(basename "$1")"
  }
  for so in "$site"/_core*.so; do put "$so" python/matcompress; done
  [ -f "$site/tf/_tf_ops.so" ] && put "$site/tf/_tf_ops.so" python/matcompress/tf
  # generated at build time beside the op library (gitignored too)
  [ -f "$site/tf/_build_info.py" ] && put "$site/tf/_build_info.py" python/matcompress/tf
fi
export MC_TREE="$PWD/python"
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" python3 - -p no:cacheprovider "$@" <<'PY'
import os
import sys

sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import matcompress
import pytest

if not matcompress.__file__.startswith(os.environ["MC_TREE"]):
    sys.exit(f"imported {matcompress.__file__}, not this tree's sources")
sys.exit(pytest.main(sys.argv[1:]))
PY
