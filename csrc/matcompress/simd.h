// Vector types for the per-instruction-set kernels (GCC vector extensions). Include only from
// files compiled once per instruction set (MC_ISA_NS names the namespace: isa_generic, isa_avx2,
// isa_avx512); everything here lives in that namespace, so the widths never mix across targets.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.h"

#ifndef MC_ISA_NS
#error "MC_ISA_NS must name the instruction-set namespace"
#endif

namespace matcompress {
namespace MC_ISA_NS {

// Vectors as wide as the target's registers: zmm, ymm or xmm. Wider vectors than the registers
// are split for arithmetic, but GCC scalarises their compares, selects and shuffles (measured:
// 9x slower). kChains independent accumulator chains cover the FMA latency within the register
// budget: 32 zmm (AVX-512), 16 ymm (AVX2), 16 xmm (SSE2).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kChains = 4;
constexpr int kRegisters = 32;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
constexpr int kChains = 2;
constexpr int kRegisters = 16;
#else
constexpr int kVecBytes = 16;
constexpr int kChains = 1;
constexpr int kRegisters = 16;
#endif

template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(kVecBytes)));
  typedef T uvec __attribute__((vector_size(kVecBytes), aligned(alignof(T)), may_alias));
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;  // same lane width as T
  typedef I ivec __attribute__((vector_size(kVecBytes)));
  static constexpr index_t W = kVecBytes / static_cast<index_t>(sizeof(T));

  static vec load(const T* p) { return *reinterpret_cast<const uvec*>(p); }
  static void store(T* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
  static vec splat(T x) { return vec{} + x; }
  static vec abs(vec v) { return reinterpret_cast<vec>(reinterpret_cast<ivec>(v) & ~sign_mask()); }
  static ivec sign_mask() { return ivec{} + (I(1) << (8 * sizeof(I) - 1)); }
  static ivec iota() {
    ivec r{};
    for (index_t e = 0; e < W; ++e) r[e] = static_cast<I>(e);
    return r;
  }
  static ivec rotate(index_t h) {  // shuffle mask: lane e takes lane (e + h) mod W
    return (iota() + static_cast<I>(h)) & static_cast<I>(W - 1);
  }
};

}  // namespace MC_ISA_NS
}  // namespace matcompress
