// The Gaussian numbers of the simhash projection, compiled once per instruction set (simhash_tile.cc) and chosen
// at run time. Every instruction set gives the same bits (philox.h uses no fused multiply-add
// and no libm). Internal to the core: simhash.h is the public entry.
#pragma once

#include <cstdint>

#include "common.h"
#include "cpu.h"

namespace matcompress {

/// Elements [e0, e0 + count) of the Gaussian stream of `seed` (philox::gaussian_fill), into
/// out (size count). R[i, j] is element i * k + j.
template <typename T>
using GaussianFillFn = void (*)(std::uint64_t seed, std::uint64_t e0, index_t count, T* out);

#define MC_DECLARE_SIMHASH_TILE(NS)                                                       \
  namespace NS {                                                                          \
  template <typename T>                                                                   \
  void gaussian_fill(std::uint64_t seed, std::uint64_t e0, index_t count, T* out);        \
  extern template void gaussian_fill<float>(std::uint64_t, std::uint64_t, index_t, float*); \
  extern template void gaussian_fill<double>(std::uint64_t, std::uint64_t, index_t,       \
                                             double*);                                    \
  }

MC_DECLARE_SIMHASH_TILE(isa_generic)
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
MC_DECLARE_SIMHASH_TILE(isa_avx2)
MC_DECLARE_SIMHASH_TILE(isa_avx512)
#endif

template <typename T>
GaussianFillFn<T> gaussian_fill_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::gaussian_fill<T>;
  if (isa == Isa::avx2) return &isa_avx2::gaussian_fill<T>;
#endif
  (void)isa;
  return &isa_generic::gaussian_fill<T>;
}

}  // namespace matcompress
