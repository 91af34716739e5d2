// Run-time choice of the instruction set for the hand-vectorized kernels.
#pragma once

#include <string>

namespace matcompress {

/// Instruction sets the vectorized kernels are compiled for (x86-64); `generic` is portable C++.
enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

/// Best instruction set this CPU supports (among the compiled ones).
Isa detected_isa();

/// The set the kernels use: detected_isa(), or the one forced by the environment variable
/// MATCOMPRESS_ISA=generic|avx2|avx512 (read once; a set the CPU lacks is an error).
Isa active_isa();

/// Overrides the active set for the rest of the process (tests use it to cover every path).
void set_active_isa(Isa isa);

const char* isa_name(Isa isa);
Isa parse_isa(const std::string& name);

}  // namespace matcompress
