#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# MATCOMPRESS_SANITIZE) into a private directory and runs the test suite against it.
# Usage: scripts/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${MC_SANITIZE_DIR:-build/sanitize-site}
rm -rf "$dest"
python3 -m pip install --no-deps --no-build-isolation --target "$dest" \
  -Ccmake.define.MATCOMPRESS_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo \
  -Cbuild-dir=build/sanitize .
# The interpreter is not instrumented: preload the ASan runtime, and libstdc++ with it (python does
# not link it, and ASan's __cxa_throw interceptor must find the real one when it starts). Leak
# checking is off because CPython keeps many allocations alive until exit; UBSan findings abort.
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$PWD/$dest${PYTHONPATH:+:$PYTHONPATH}"
# An editable install (pip install -e .) redirects `import matcompress` through a meta-path finder
# that would win over PYTHONPATH: drop it, and check that the sanitized build is the one imported.
python3 - -p no:cacheprovider "$@" <<'PY'
import sys

sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
import matcompress
import pytest

print("sanitized build:", matcompress.__file__)
if "sanitize" not in matcompress.__file__:
    sys.exit("the sanitized build is not the one imported")
sys.exit(pytest.main(sys.argv[1:]))
PY
