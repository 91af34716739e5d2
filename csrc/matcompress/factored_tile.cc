// Per-instruction-set kernels of the factored products. Compiled once per instruction set
// (MC_ISA_NS, see simd.h).
#include "factored_tile.h"
#include "simd.h"

namespace matcompress {
namespace MC_ISA_NS {
namespace {

#if defined(__AVX512F__) || defined(__AVX2__)
// 4-bit codebook GEMV on a tile of 4W columns (2W bytes of every row), W = floats per register.
// The even columns of the tile (low nibbles) and the odd ones (high nibbles) accumulate in
// separate registers, so a row costs: two loads of W bytes, a mask and a shift, four widenings
// to 32-bit indices, four lookups of the 16-entry codebook and four FMAs. The columns are
// interleaved back once, after the last row.
constexpr index_t kW = kVecBytes / 4;
typedef float vec __attribute__((vector_size(kVecBytes)));
typedef float uvec __attribute__((vector_size(kVecBytes), aligned(4), may_alias));
typedef int32_t ivec __attribute__((vector_size(kVecBytes)));
typedef std::uint8_t bvec __attribute__((vector_size(kVecBytes / 4)));
typedef std::uint8_t ubvec __attribute__((vector_size(kVecBytes / 4), aligned(1), may_alias));

inline vec lookup(const vec* cb, ivec idx) {
#if defined(__AVX512F__)
  return __builtin_shuffle(cb[0], idx);  // vpermps: the 16 entries in one register
#else
  return __builtin_shuffle(cb[0], cb[1], idx);  // two registers of 8 entries
#endif
}

// Rows go in blocks of kRows, every tile of the call finishing a block before the next: the block
// of codes (kRows rows x the call's bytes) stays in cache and its pages in the TLB, where one
// tile at a time down all rows touched a new page every two rows (4096 x 4096: 2x slower).
constexpr index_t kRows = 256;
constexpr index_t kMaxCols = 512;  // columns per call at most (codebook4_gemv's tasks)

void tile_impl(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
               index_t j0, index_t cols, const float* cbp, float* y) {
  vec cb[16 / kW];
  for (index_t h = 0; h < 16 / kW; ++h) cb[h] = *reinterpret_cast<const uvec*>(cbp + h * kW);
  alignas(64) float acc[kMaxCols];  // per tile: even[0], even[1], odd[0], odd[1]
  for (index_t r0 = 0; r0 < m; r0 += kRows) {
    const index_t r1 = r0 + kRows < m ? r0 + kRows : m;
    for (index_t t = 0; t < cols; t += 4 * kW) {
      vec* a4 = reinterpret_cast<vec*>(acc + t);
      vec even[2], odd[2];
      if (r0 == 0) {
        even[0] = even[1] = odd[0] = odd[1] = vec{};
      } else {
        even[0] = a4[0], even[1] = a4[1], odd[0] = a4[2], odd[1] = a4[3];
      }
      const std::uint8_t* p = codes + r0 * row_bytes + (j0 + t) / 2;
      for (index_t i = r0; i < r1; ++i, p += row_bytes) {
        const vec xi = vec{} + x[i];
#pragma GCC unroll 2
        for (int a = 0; a < 2; ++a) {
          const bvec b = *reinterpret_cast<const ubvec*>(p + a * kW);
          const ivec lo = __builtin_convertvector(b & std::uint8_t(15), ivec);
          const ivec hi = __builtin_convertvector(b >> 4, ivec);
          even[a] += xi * lookup(cb, lo);
          odd[a] += xi * lookup(cb, hi);
        }
      }
      a4[0] = even[0], a4[1] = even[1], a4[2] = odd[0], a4[3] = odd[1];
    }
  }
  for (index_t t = 0; t < cols; t += 4 * kW) {  // interleave the even and odd columns back
    const float* a4 = acc + t;
    float* out = y + j0 + t;
    for (index_t e = 0; e < 2 * kW; ++e) {
      out[2 * e] = a4[e];
      out[2 * e + 1] = a4[2 * kW + e];
    }
  }
}
#endif

}  // namespace

#if defined(__AVX512F__) || defined(__AVX2__)
void codebook4_tile(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
                    index_t j0, index_t cols, const float* cb, float* y) {
  tile_impl(x, codes, row_bytes, m, j0, cols, cb, y);
}

index_t codebook4_tile_width() { return 4 * kW; }
#else
// Portable: a tile of 64 columns accumulated in memory, the codes looked up one by one.
void codebook4_tile(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
                    index_t j0, index_t cols, const float* cb, float* y) {
  for (index_t t = 0; t < cols; t += 64) {
    float acc[64] = {};
    const std::uint8_t* p = codes + (j0 + t) / 2;
    for (index_t i = 0; i < m; ++i, p += row_bytes) {
      const float xi = x[i];
      for (index_t b = 0; b < 32; ++b) {
        acc[2 * b] += xi * cb[p[b] & 15];
        acc[2 * b + 1] += xi * cb[p[b] >> 4];
      }
    }
    for (index_t c = 0; c < 64; ++c) y[j0 + t + c] = acc[c];
  }
}

index_t codebook4_tile_width() { return 64; }
#endif

}  // namespace MC_ISA_NS
}  // namespace matcompress
