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

/// Columns [j0, j0 + cols) of z = t · S for sign bits S (see signs_gemv); j0 a multiple of 8,
/// cols a multiple of signs_tile_width().
using SignsTileFn = void (*)(const float* t, const std::uint8_t* bits, index_t row_bytes,
                             index_t k, index_t j0, index_t cols, float* z);

/// The values of CSR entries: `values[p]`, or `codebook[codes[p]]` for 1- or 2-byte codes
/// (clamped to `last_code`, so a corrupted code cannot read past the codebook).
template <typename T>
struct CsrValues {
  const T* values;         ///< null when coded
  const void* codes;       ///< uint8 (code_bytes 1) or uint16 (2)
  int code_bytes;
  const T* codebook;
  index_t last_code;
};

/// CSR product tile: yt[(j - j0) * batch + b] += values[p] * xt[i * batch + b] for every entry
/// p = (i, j) of rows [0, m) with j in [j0, j1) (indices non-decreasing within rows; a row's scan
/// stops at the first entry outside the tile, so corrupted rows never write outside it).
template <typename T>
using CsrTileFn = void (*)(const std::int64_t* indptr, const void* indices,
                           const CsrValues<T>& values,
                           index_t m, index_t j0, index_t j1, const T* xt, index_t batch, T* yt);

/// CSR backward over rows [i0, i1): dxt[i * batch + b] = sum_p values[p] dyt[j_p * batch + b]
/// and dvalues[p] = <xt[i, :], dyt[j_p, :]> (either output may be null; entries with j_p >= n
/// are skipped).
template <typename T>
using CsrRowsFn = void (*)(const std::int64_t* indptr, const void* indices,
                           const CsrValues<T>& values,
                           index_t n, index_t i0, index_t i1, const T* xt, const T* dyt,
                           index_t batch, T* dxt, T* dvalues);

/// Rows [i0, i1) of a scalar float codebook matrix, code columns [c0, c0 + cols), decoded into
/// out (row stride cols). codes: row i at codes + i * row_stride (bytes); 4-bit: c0 even, cb 16
/// entries; 8-bit: cb 256 entries (padded: every byte value is a valid index).
using DecodeTileFn = void (*)(const std::uint8_t* codes, index_t row_stride, index_t i0,
                              index_t i1, index_t c0, index_t cols, const float* cb, float* out);

#define MC_DECLARE_FACTORED_TILE(NS)                                                         \
  namespace NS {                                                                             \
  void decode4_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,   \
                    index_t c0, index_t cols, const float* cb, float* out);                  \
  void decode8_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1,   \
                    index_t c0, index_t cols, const float* cb, float* out);                  \
  void decode4b2_tile(const std::uint8_t* codes, index_t row_stride, index_t i0, index_t i1, \
                      index_t c0, index_t cols, const float* cb, float* out);                \
  void codebook4_tile(const float* x, const std::uint8_t* codes, index_t row_bytes,          \
                      index_t m, index_t j0, index_t cols, const float* cb, float* y);       \
  index_t codebook4_tile_width();                                                            \
  void signs_tile(const float* t, const std::uint8_t* bits, index_t row_bytes, index_t k,    \
                  index_t j0, index_t cols, float* z);                                       \
  index_t signs_tile_width();                                                                \
  template <typename T, typename Idx>                                                        \
  void csr_tile(const std::int64_t* indptr, const void* indices, const CsrValues<T>& values,  \
                index_t m,                                                                   \
                index_t j0, index_t j1, const T* xt, index_t batch, T* yt);                  \
  template <typename T, typename Idx>                                                        \
  void csr_rows(const std::int64_t* indptr, const void* indices, const CsrValues<T>& values,  \
                index_t n,                                                                   \
                index_t i0, index_t i1, const T* xt, const T* dyt, index_t batch, T* dxt,    \
                T* dvalues);                                                                 \
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

/// The same for 4-bit codes into blocks of 2 (cb: 16 x 2 entries; cols counts floats, c0 the
/// first float column, both even; the codes of a row start at nibble c0 / 2).
inline DecodeTileFn decode4b2_tile_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::decode4b2_tile;
  if (isa == Isa::avx2) return &isa_avx2::decode4b2_tile;
#endif
  (void)isa;
  return &isa_generic::decode4b2_tile;
}

inline DecodeTileFn decode_tile_kernel(Isa isa, bool four_bit) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return four_bit ? &isa_avx512::decode4_tile : &isa_avx512::decode8_tile;
  if (isa == Isa::avx2) return four_bit ? &isa_avx2::decode4_tile : &isa_avx2::decode8_tile;
#endif
  (void)isa;
  return four_bit ? &isa_generic::decode4_tile : &isa_generic::decode8_tile;
}

struct SignsKernel {
  SignsTileFn fn;
  index_t width;
};

inline SignsKernel signs_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return {&isa_avx512::signs_tile, isa_avx512::signs_tile_width()};
  if (isa == Isa::avx2) return {&isa_avx2::signs_tile, isa_avx2::signs_tile_width()};
#endif
  (void)isa;
  return {&isa_generic::signs_tile, isa_generic::signs_tile_width()};
}

template <typename T>
CsrTileFn<T> csr_tile_kernel(Isa isa, bool indices16) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512)
    return indices16 ? &isa_avx512::csr_tile<T, std::uint16_t>
                     : &isa_avx512::csr_tile<T, std::int32_t>;
  if (isa == Isa::avx2)
    return indices16 ? &isa_avx2::csr_tile<T, std::uint16_t> : &isa_avx2::csr_tile<T, std::int32_t>;
#endif
  (void)isa;
  return indices16 ? &isa_generic::csr_tile<T, std::uint16_t>
                   : &isa_generic::csr_tile<T, std::int32_t>;
}

template <typename T>
CsrRowsFn<T> csr_rows_kernel(Isa isa, bool indices16) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512)
    return indices16 ? &isa_avx512::csr_rows<T, std::uint16_t>
                     : &isa_avx512::csr_rows<T, std::int32_t>;
  if (isa == Isa::avx2)
    return indices16 ? &isa_avx2::csr_rows<T, std::uint16_t> : &isa_avx2::csr_rows<T, std::int32_t>;
#endif
  (void)isa;
  return indices16 ? &isa_generic::csr_rows<T, std::uint16_t>
                   : &isa_generic::csr_rows<T, std::int32_t>;
}

}  // namespace matcompress
