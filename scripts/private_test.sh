#!/usr/bin/env bash
# Builds the package into a private directory (not the editable install) and runs pytest against
# that build: for working trees beside the main one (git worktree), and for special builds.
# Usage: scripts/private_test.sh [pytest args...]
# Environment: MC_PRIVATE_DIR (install target, default build/private-site), MC_PRIVATE_CMAKE
# (extra -C options for pip, e.g. "-Ccmake.define.MATCOMPRESS_SANITIZE=ON"), MC_PRIVATE_TAG
# (a word the imported package path must contain; default: the install target),
# MC_PRIVATE_PRELOAD (LD_PRELOAD for the test process only, e.g. a sanitizer runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${MC_PRIVATE_DIR:-build/private-site}
rm -rf "$dest"
# shellcheck disable=SC2086
python3 -m pip install -q --no-deps --no-build-isolation --target "$dest" \
  -Cbuild-dir="$dest-build" ${MC_PRIVATE_CMAKE:-} .
export PYTHONPATH="$PWD/$dest${PYTHONPATH:+:$PYTHONPATH}"
export MC_PRIVATE_TAG=${MC_PRIVATE_TAG:-$PWD/$dest}
# An editable install (pip install -e .) redirects `import matcompress` through a meta-path finder
# that would win over PYTHONPATH: drop it, and check that the private build is the one imported.
LD_PRELOAD="${MC_PRIVATE_PRELOAD:-${LD_PRELOAD:-}}" python3 - -p no:cacheprovider "$@" <<'PY'
import os
import sys

sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import matcompress
import pytest

print("private build:", matcompress.__file__)
if os.environ["MC_PRIVATE_TAG"] not in matcompress.__file__:
    sys.exit("the private build is not the one imported")
sys.exit(pytest.main(sys.argv[1:]))
PY
