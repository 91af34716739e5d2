#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# MATCOMPRESS_SANITIZE) into a private directory and runs the test suite against it.
# Usage: scripts/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter is not instrumented: preload the ASan runtime, and libstdc++ with it (python does
# not link it, and ASan's __cxa_throw interceptor must find the real one when it starts). Leak
# checking is off because CPython keeps many allocations alive until exit; UBSan findings abort.
# The preload applies to the test process only (MC_PRIVATE_PRELOAD), not to the build.
export MC_PRIVATE_DIR=${MC_SANITIZE_DIR:-build/sanitize-site}
export MC_PRIVATE_CMAKE="-Ccmake.define.MATCOMPRESS_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo"
export MC_PRIVATE_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
exec scripts/private_test.sh "$@"
