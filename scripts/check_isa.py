#!/usr/bin/env python3
"""Check that a build of matcompress runs on any x86-64 CPU.

The build dispatches AVX2 / AVX-512 at run time (docs/decisions.md §3, §15): only the per-ISA
objects (``-DMC_ISA_NS=isa_avx2`` / ``isa_avx512``) may be compiled with instruction-set flags,
and their code must stay behind the dispatch. Checked from CMake's build tree, in three steps:

1. the compile commands (``compile_commands.json``): no ``-march=``/``-mtune=native``, and
   ``-mavx*``, ``-mfma``, ``-mbmi*``, ``-mf16c``, ... only together with an AVX ``MC_ISA_NS``;
2. the objects: the others have no instruction beyond the x86-64 baseline (VEX/EVEX encodings,
   ymm/zmm/mask registers, BMI, POPCNT, LZCNT, MOVBE); in the per-ISA objects every global or
   weak function that has such instructions is named in an ISA namespace
   (``matcompress::isa_avx2::...``, ``Eigen_isa_avx512::...``), so the linker can never pick an
   AVX copy of a shared template for the generic path;
3. the linked libraries (unstripped, from the build tree): functions with such instructions are
   in an ISA namespace or are local symbols (``static inline`` helpers, one copy per object).

Usage: check_isa.py BUILD_DIR BINARY...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

DISPATCHED = ("isa_avx2", "isa_avx512")
ISA_FLAG = re.compile(r"^-m(avx|fma|bmi|f16c|popcnt|lzcnt|movbe|sse3|ssse3|sse4|prefer-vector)")
# Instructions a baseline x86-64 CPU may lack (objdump's AT&T syntax, mnemonics lower case).
NON_BASELINE_MNEMONICS = {
    "andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "lzcnt", "mulx", "pdep", "pext",
    "popcnt", "rorx", "sarx", "shlx", "shrx", "movbe",
}
NON_BASELINE_OPERAND = re.compile(r"%[yz]mm\d+|%k[0-7]\b")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def non_baseline(instruction):
    """True when the instruction text (mnemonic and operands) needs more than x86-64."""
    # Prefixes (rep, lock, notrack, data16, ...) may come first; VEX/EVEX ones are v-mnemonics.
    for word in instruction.split()[:3]:
        if word.startswith("v") and word not in ("verr", "verw"):
            return True
        if word in NON_BASELINE_MNEMONICS:
            return True
    return bool(NON_BASELINE_OPERAND.search(instruction))


def avx_functions(path):
    """{function name: first non-baseline instruction} in the disassembly of ``path``."""
    out = subprocess.run(["objdump", "-d", "-C", "-w", "--no-show-raw-insn", path],
                         check=True, capture_output=True, text=True).stdout
    function, found = None, {}
    for line in out.splitlines():
        m = FUNCTION.match(line)
        if m:
            function = m.group(1)
        elif function is not None and ":\t" in line and function not in found:
            instruction = line.split(":\t", 1)[1].strip()
            if non_baseline(instruction):
                found[function] = instruction
    return found


def bindings(path):
    """{defined symbol name: set of nm types} ('t' local code, 'T' global, 'W' weak, ...)."""
    out = subprocess.run(["nm", "-C", "--defined-only", path],
                         check=True, capture_output=True, text=True).stdout
    result = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            result.setdefault(parts[2], set()).add(parts[1])
    return result


def dispatched(name):
    return any(ns in name for ns in DISPATCHED)


def check_objects(build_dir):
    """Steps 1 and 2: problems as a list of strings."""
    with open(os.path.join(build_dir, "compile_commands.json")) as f:
        entries = json.load(f)
    problems = []
    n_isa = n_avx_functions = 0
    for entry in entries:
        args = entry.get("arguments") or shlex.split(entry["command"])
        source = os.path.relpath(entry["file"])
        if any(a.startswith("-march=") or a == "-mtune=native" for a in args):
            problems.append(f"{source}: compiled with "
                            f"{[a for a in args if a.startswith(('-march', '-mtune'))]}")
        isa_flags = [a for a in args if ISA_FLAG.match(a)]
        namespace = [a.split("=", 1)[1] for a in args if a.startswith("-DMC_ISA_NS=")]
        is_isa = bool(namespace) and namespace[0] in DISPATCHED
        if isa_flags and not is_isa:
            problems.append(f"{source}: {' '.join(isa_flags)} outside the per-ISA objects")
        if is_isa and namespace[0] == "isa_avx2" and any("avx512" in a for a in isa_flags):
            problems.append(f"{source}: AVX-512 flags in the AVX2 object")
        obj = os.path.join(entry["directory"], entry["output"])
        if not os.path.exists(obj):
            problems.append(f"{source}: object {obj} missing")
            continue
        found = avx_functions(obj)
        if not is_isa:
            problems += [f"{source} (baseline object): {fn}: {insn}" for fn, insn in found.items()]
            continue
        n_isa += 1
        n_avx_functions += len(found)
        types = bindings(obj)
        for fn, insn in found.items():
            shared = types.get(fn, set()) - {"t"}
            if shared and not dispatched(fn):
                problems.append(f"{source} ({namespace[0]}): {fn} is a {'/'.join(sorted(shared))} "
                                f"symbol outside the ISA namespace with {insn}")
    print(f"  {len(entries)} translation units; {n_isa} per-ISA objects with instruction-set "
          f"flags ({n_avx_functions} AVX functions); the others have baseline x86-64 code only; "
          "no -march")
    return problems


def check_binary(path):
    """Step 3: problems as a list of strings."""
    found = avx_functions(path)
    types = bindings(path)
    inside = [fn for fn in found if dispatched(fn)]
    problems = []
    n_local = 0
    for fn, insn in found.items():
        if dispatched(fn):
            continue
        if types.get(fn, {"?"}) == {"t"}:
            n_local += 1
        else:
            problems.append(f"{path}: {fn} ({'/'.join(sorted(types.get(fn, {'?'})))}) has {insn}")
    print(f"  {os.path.basename(path)}: {len(inside)} AVX functions in the ISA namespaces, "
          f"{n_local} local helpers of the per-ISA objects, {len(problems)} elsewhere")
    if not inside:
        problems.append(f"{path}: no per-ISA kernels found (stripped, or built without dispatch?)")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", metavar="BUILD_DIR")
    parser.add_argument("binaries", nargs="+", metavar="BINARY")
    args = parser.parse_args(argv)
    problems = check_objects(args.build_dir)
    for binary in args.binaries:
        problems += check_binary(binary)
    for p in problems:
        print("  PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
