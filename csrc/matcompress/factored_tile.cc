// Per-instruction-set kernels of the factored products. Compiled once per instruction set
// (MC_ISA_NS, see simd.h).
#include "factored_tile.h"

#include <algorithm>
#include <cstring>

#if defined(__AVX2__)
// GCC 12 reports the deliberately undefined values (_mm512_undefined_*) inside its own AVX-512
// intrinsics as "may be used uninitialized" (GCC bug 105593): a compiler false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

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

// ---- decoding tiles of scalar codebooks -----------------------------------------------------

#if defined(__AVX512F__) || defined(__AVX2__)
namespace {
// Output positions 2e and 2e + 1 take the low and high nibble of byte e: interleave the two
// looked-up registers.
template <int Half>
inline vec interleave(vec lo, vec hi) {
  ivec sel;
  for (index_t e = 0; e < kW; ++e)
    sel[e] = static_cast<int32_t>(e % 2 ? kW + Half * kW / 2 + e / 2 : Half * kW / 2 + e / 2);
  return __builtin_shuffle(lo, hi, sel);
}
}  // namespace

void decode4_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,
                  index_t c0, index_t cols, const float* cbp, float* out) {
  vec cb[16 / kW];
  for (index_t h = 0; h < 16 / kW; ++h) cb[h] = *reinterpret_cast<const uvec*>(cbp + h * kW);
  const index_t full = cols / (2 * kW) * (2 * kW);
  for (index_t i = i0; i < i1; ++i) {
    const std::uint8_t* p = codes + i * row_stride + c0 / 2;
    float* o = out + (i - i0) * cols;
    for (index_t c = 0; c < full; c += 2 * kW) {
      const bvec b = *reinterpret_cast<const ubvec*>(p + c / 2);
      const vec lo = lookup(cb, __builtin_convertvector(b & std::uint8_t(15), ivec));
      const vec hi = lookup(cb, __builtin_convertvector(b >> 4, ivec));
      *reinterpret_cast<uvec*>(o + c) = interleave<0>(lo, hi);
      *reinterpret_cast<uvec*>(o + c + kW) = interleave<1>(lo, hi);
    }
    for (index_t c = full; c < cols; ++c) o[c] = cbp[(p[c / 2] >> ((c & 1) * 4)) & 15];
  }
}

void decode8_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,
                  index_t c0, index_t cols, const float* cb, float* out) {
  const index_t full = cols / kW * kW;
#if defined(__AVX512F__)
  __m512 tab[16];
  for (int h = 0; h < 16; ++h) tab[h] = _mm512_loadu_ps(cb + 16 * h);
#endif
  for (index_t i = i0; i < i1; ++i) {
    const std::uint8_t* p = codes + i * row_stride + c0;
    float* o = out + (i - i0) * cols;
#if defined(__AVX512F__)
    // 256 entries in 16 registers: a two-register permute per 32 entries, the results merged
    // by the top 3 bits of the code (a gather is several times slower on AMD Zen 4).
    for (index_t c = 0; c < full; c += kW) {
      const __m512i idx = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c)));
      const __m512i group = _mm512_srli_epi32(idx, 5);
      __m512 r = _mm512_permutex2var_ps(tab[0], idx, tab[1]);
      for (int g = 1; g < 8; ++g) {
        const __mmask16 k = _mm512_cmpeq_epi32_mask(group, _mm512_set1_epi32(g));
        r = _mm512_mask_mov_ps(r, k, _mm512_permutex2var_ps(tab[2 * g], idx, tab[2 * g + 1]));
      }
      _mm512_storeu_ps(o + c, r);
    }
#else
    for (index_t c = 0; c < full; c += kW) {
      const __m256i idx = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + c)));
      _mm256_storeu_ps(o + c, _mm256_i32gather_ps(cb, idx, 4));
    }
#endif
    for (index_t c = full; c < cols; ++c) o[c] = cb[p[c]];
  }
}
#else
void decode4_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,
                  index_t c0, index_t cols, const float* cb, float* out) {
  for (index_t i = i0; i < i1; ++i) {
    const std::uint8_t* p = codes + i * row_stride + c0 / 2;
    float* o = out + (i - i0) * cols;
    for (index_t c = 0; c < cols; ++c) o[c] = cb[(p[c / 2] >> ((c & 1) * 4)) & 15];
  }
}

void decode8_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,
                  index_t c0, index_t cols, const float* cb, float* out) {
  for (index_t i = i0; i < i1; ++i) {
    const std::uint8_t* p = codes + i * row_stride + c0;
    float* o = out + (i - i0) * cols;
    for (index_t c = 0; c < cols; ++c) o[c] = cb[p[c]];
  }
}
#endif

// Blocks of 2 from 4-bit codes: a code's two entries go to two neighbouring lanes.
void decode4b2_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,
                    index_t c0, index_t cols, const float* cb, float* out) {
  index_t full = 0;
#if defined(__AVX512F__)
  // 16 floats = 8 codes = 4 bytes per register: lane e takes nibble e / 2, entry e % 2 of the
  // 32 floats of the codebook (a two-register permute).
  full = cols / 16 * 16;
  const __m512 t0 = _mm512_loadu_ps(cb), t1 = _mm512_loadu_ps(cb + 16);
  alignas(64) static const std::int32_t kShift[16] = {0, 0, 4, 4, 8, 8, 12, 12,
                                                      16, 16, 20, 20, 24, 24, 28, 28};
  alignas(64) static const std::int32_t kOdd[16] = {0, 1, 0, 1, 0, 1, 0, 1,
                                                    0, 1, 0, 1, 0, 1, 0, 1};
  const __m512i shift = _mm512_load_si512(kShift), odd = _mm512_load_si512(kOdd);
  const __m512i nib = _mm512_set1_epi32(15);
#endif
  for (index_t i = i0; i < i1; ++i) {
    const std::uint8_t* p = codes + i * row_stride;
    float* o = out + (i - i0) * cols;
#if defined(__AVX512F__)
    for (index_t c = 0; c < full; c += 16) {
      std::uint32_t word;
      std::memcpy(&word, p + (c0 + c) / 4, 4);
      const __m512i code = _mm512_and_si512(
          _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(word)), shift), nib);
      const __m512i idx = _mm512_add_epi32(_mm512_slli_epi32(code, 1), odd);
      _mm512_storeu_ps(o + c, _mm512_permutex2var_ps(t0, idx, t1));
    }
#endif
    for (index_t c = full; c < cols; c += 2) {
      const index_t blk = (c0 + c) / 2;
      const index_t code = (p[blk / 2] >> ((blk & 1) * 4)) & 15;
      o[c] = cb[2 * code];
      o[c + 1] = cb[2 * code + 1];
    }
  }
}

// ---- sign-bit GEMV --------------------------------------------------------------------------

#if defined(__AVX512F__) || defined(__AVX2__)
namespace {
// kW columns take kW / 8 bytes of a row of bits: each lane shifts its bit up to the sign
// position, and the complement of that bit flips the sign of the broadcast t[r].
typedef std::uint32_t uvec_s __attribute__((vector_size(kVecBytes)));
constexpr index_t kSignVecs = 4;  // registers of columns per tile
constexpr index_t kSignRows = 256;

inline uvec_s lane_shifts() {
  uvec_s s;
  for (index_t e = 0; e < kW; ++e) s[e] = static_cast<std::uint32_t>(31 - e);
  return s;
}
}  // namespace

void signs_tile(const float* t, const std::uint8_t* bits, index_t row_bytes, index_t k,
                index_t j0, index_t cols, float* z) {
  const uvec_s shifts = lane_shifts();
  const uvec_s sign = uvec_s{} + 0x80000000u;
  for (index_t c0 = 0; c0 < cols; c0 += kSignVecs * kW) {
    vec acc[kSignVecs] = {};
    for (index_t r0 = 0; r0 < k; r0 += kSignRows) {
      const index_t r1 = std::min(k, r0 + kSignRows);
      const std::uint8_t* p = bits + r0 * row_bytes + (j0 + c0) / 8;
      for (index_t r = r0; r < r1; ++r, p += row_bytes) {
        std::uint32_t tbits;
        std::memcpy(&tbits, t + r, 4);
        const uvec_s tr = uvec_s{} + tbits;
#pragma GCC unroll 4
        for (index_t a = 0; a < kSignVecs; ++a) {
          std::uint32_t word = 0;
          std::memcpy(&word, p + a * (kW / 8), kW / 8);
          const uvec_s up = (uvec_s{} + word) << shifts;
          const uvec_s v = tr ^ (~up & sign);
          acc[a] += (vec)v;  // the same bits as floats
        }
      }
    }
    for (index_t a = 0; a < kSignVecs; ++a)
      *reinterpret_cast<uvec*>(z + j0 + c0 + a * kW) = acc[a];
  }
}

index_t signs_tile_width() { return kSignVecs * kW; }
#else
void signs_tile(const float* t, const std::uint8_t* bits, index_t row_bytes, index_t k,
                index_t j0, index_t cols, float* z) {
  for (index_t c0 = 0; c0 < cols; c0 += 64) {
    float acc[64] = {};
    const std::uint8_t* p = bits + (j0 + c0) / 8;
    for (index_t r = 0; r < k; ++r, p += row_bytes) {
      const float tr = t[r];
      for (index_t c = 0; c < 64; ++c) acc[c] += (p[c >> 3] >> (c & 7)) & 1 ? tr : -tr;
    }
    for (index_t c = 0; c < 64; ++c) z[j0 + c0 + c] = acc[c];
  }
}

index_t signs_tile_width() { return 64; }
#endif

// ---- CSR tiles ------------------------------------------------------------------------------

namespace {
// <a, b> over n elements, in 16 interleaved partial sums (vectorized; a fixed order).
template <typename T>
T dot(const T* a, const T* b, index_t n) {
  constexpr index_t L = 16;
  T acc[L] = {};
  index_t i = 0;
  for (; i + L <= n; i += L)
    for (index_t l = 0; l < L; ++l) acc[l] += a[i + l] * b[i + l];
  T s = T(0);
  for (index_t l = 0; l < L; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

template <typename T>
struct DirectValues {
  const T* v;
  T operator[](index_t p) const { return v[p]; }
};

template <typename T, typename Code>
struct CodedValues {
  const Code* codes;
  const T* cb;
  index_t last;
  T operator[](index_t p) const {
    const index_t c = codes[p];
    return cb[c < last ? c : last];
  }
};

// Calls f(reader) with the value reader of `values`.
template <typename T, class F>
void with_values(const CsrValues<T>& values, F&& f) {
  if (values.code_bytes == 1)
    f(CodedValues<T, std::uint8_t>{static_cast<const std::uint8_t*>(values.codes),
                                   values.codebook, values.last_code});
  else if (values.code_bytes == 2)
    f(CodedValues<T, std::uint16_t>{static_cast<const std::uint16_t*>(values.codes),
                                    values.codebook, values.last_code});
  else
    f(DirectValues<T>{values.values});
}

template <typename T, typename Idx, class V>
void csr_tile_impl(const std::int64_t* indptr, const Idx* idx, const V& val, index_t m,
                   index_t j0, index_t j1, const T* xt, index_t batch, T* yt) {
  const std::uint64_t cols = static_cast<std::uint64_t>(j1 - j0);
  for (index_t i = 0; i < m; ++i) {
    const Idx* begin = idx + indptr[i];
    const Idx* end = idx + indptr[i + 1];
    if (begin == end) continue;
    const Idx* p = j0 == 0 ? begin
                           : std::lower_bound(begin, end, j0, [](Idx a, index_t v) {
                               return static_cast<index_t>(a) < v;
                             });
    const T* xi = xt + i * batch;
    if (batch == 1) {
      const T x0 = xi[0];
      for (; p < end; ++p) {
        const std::uint64_t c = static_cast<std::uint64_t>(static_cast<index_t>(*p) - j0);
        if (c >= cols) break;
        yt[c] += val[p - idx] * x0;
      }
    } else {
      for (; p < end; ++p) {
        const std::uint64_t c = static_cast<std::uint64_t>(static_cast<index_t>(*p) - j0);
        if (c >= cols) break;
        T* __restrict__ yr = yt + c * batch;
        const T w = val[p - idx];
#pragma GCC ivdep
        for (index_t b = 0; b < batch; ++b) yr[b] += w * xi[b];
      }
    }
  }
}

template <typename T, typename Idx, class V>
void csr_rows_impl(const std::int64_t* indptr, const Idx* idx, const V& val, index_t n,
                   index_t i0, index_t i1, const T* xt, const T* dyt, index_t batch, T* dxt,
                   T* dvalues) {
  for (index_t i = i0; i < i1; ++i) {
    T* __restrict__ out = dxt ? dxt + i * batch : nullptr;
    if (out) std::fill(out, out + batch, T(0));
    const T* xi = xt + i * batch;
    for (index_t p = indptr[i]; p < indptr[i + 1]; ++p) {
      const index_t j = static_cast<index_t>(idx[p]);
      if (static_cast<std::uint64_t>(j) >= static_cast<std::uint64_t>(n)) {
        if (dvalues) dvalues[p] = T(0);
        continue;
      }
      const T* g = dyt + j * batch;
      if (out) {
        const T w = val[p];
#pragma GCC ivdep
        for (index_t b = 0; b < batch; ++b) out[b] += w * g[b];
      }
      if (dvalues) dvalues[p] = dot(xi, g, batch);
    }
  }
}

template <typename T, typename Idx>
void csr_tile(const std::int64_t* indptr, const void* indices, const CsrValues<T>& values,
              index_t m, index_t j0, index_t j1, const T* xt, index_t batch, T* yt) {
  with_values(values, [&](const auto& val) {
    csr_tile_impl(indptr, static_cast<const Idx*>(indices), val, m, j0, j1, xt, batch, yt);
  });
}

template <typename T, typename Idx>
void csr_rows(const std::int64_t* indptr, const void* indices, const CsrValues<T>& values,
              index_t n, index_t i0, index_t i1, const T* xt, const T* dyt, index_t batch,
              T* dxt, T* dvalues) {
  with_values(values, [&](const auto& val) {
    csr_rows_impl(indptr, static_cast<const Idx*>(indices), val, n, i0, i1, xt, dyt, batch, dxt,
                  dvalues);
  });
}

#define MC_FACTORED_CSR(T, Idx)                                                                \
  template void csr_tile<T, Idx>(const std::int64_t*, const void*, const CsrValues<T>&,       \
                                 index_t, index_t, index_t, const T*, index_t, T*);            \
  template void csr_rows<T, Idx>(const std::int64_t*, const void*, const CsrValues<T>&,       \
                                 index_t, index_t, index_t, const T*, const T*, index_t, T*,   \
                                 T*);
MC_FACTORED_CSR(float, std::uint16_t)
MC_FACTORED_CSR(float, std::int32_t)
MC_FACTORED_CSR(double, std::uint16_t)
MC_FACTORED_CSR(double, std::int32_t)
#undef MC_FACTORED_CSR

}  // namespace MC_ISA_NS
}  // namespace matcompress
