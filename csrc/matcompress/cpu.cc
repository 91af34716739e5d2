#include "cpu.h"

#include <atomic>
#include <cstdlib>

#include "common.h"

namespace matcompress {

#if defined(__x86_64__) || defined(_M_X64)
#define MC_X86 1
#endif

Isa detected_isa() {
#if defined(MC_X86) && defined(MATCOMPRESS_HAVE_ISA_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

Isa parse_isa(const std::string& name) {
  if (name == "generic") return Isa::generic;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  MC_CHECK(false, "unknown instruction set '" << name << "' (expected generic, avx2 or avx512)");
  return Isa::generic;
}

namespace {
std::atomic<int> g_active{-1};

void check_supported(Isa isa) {
  MC_CHECK(static_cast<int>(isa) <= static_cast<int>(detected_isa()),
           "instruction set '" << isa_name(isa) << "' is not supported by this CPU or build (best: "
                               << isa_name(detected_isa()) << ")");
}
}  // namespace

Isa active_isa() {
  int v = g_active.load(std::memory_order_acquire);
  if (v >= 0) return static_cast<Isa>(v);
  Isa isa = detected_isa();
  if (const char* env = std::getenv("MATCOMPRESS_ISA"); env != nullptr && *env != '\0') {
    isa = parse_isa(env);
    check_supported(isa);
  }
  g_active.store(static_cast<int>(isa), std::memory_order_release);
  return isa;
}

void set_active_isa(Isa isa) {
  check_supported(isa);
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

}  // namespace matcompress
