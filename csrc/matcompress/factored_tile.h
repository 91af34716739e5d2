// Per-instruction-set kernels of the factored products (factored_tile.cc). Internal to the core.
#pragma once

#include <cstdint>

#include "common.h"
#include "cpu.h"

namespace matcompress {

/// Columns [j0, j0 + cols) of y = x · W for a 4-bit codebook W (see codebook4_gemv); j0 even,
/// cols a multiple of codebook4_tile(). cb: 16 entries (unused ones 0).
using Codebook4TileFn = void (*)(const float* x, const std::uint8_t* codes, index_t row_bytes,
                                 index_t m, index_t j0, index_t cols, const float* cb, float* y);

#define MC_DECLARE_FACTORED_TILE(NS)                                                         \
  namespace NS {                                                                             \
  void codebook4_tile(const float* x, const std::uint8_t* codes, index_t row_bytes,          \
                      index_t m, index_t j0, index_t cols, const float* cb, float* y);       \
  index_t codebook4_tile_width();                                                            \
  }

MC_DECLARE_FACTORED_TILE(isa_generic)
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
MC_DECLARE_FACTORED_TILE(isa_avx2)
MC_DECLARE_FACTORED_TILE(isa_avx512)
#endif

struct Codebook4Kernel {
  Codebook4TileFn fn;
  index_t width;  ///< columns per tile call
};

inline Codebook4Kernel codebook4_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return {&isa_avx512::codebook4_tile, isa_avx512::codebook4_tile_width()};
  if (isa == Isa::avx2) return {&isa_avx2::codebook4_tile, isa_avx2::codebook4_tile_width()};
#endif
  (void)isa;
  return {&isa_generic::codebook4_tile, isa_generic::codebook4_tile_width()};
}

}  // namespace matcompress
