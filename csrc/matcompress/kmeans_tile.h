// Nearest-centroid search for block k-means, compiled once per instruction set
// (kmeans_tile.cc) and chosen at run time. Internal to the core: kmeans.h is the public entry.
//
// Both kernels maximise the score s_j(x) = <x, c_j> - ||c_j||^2 / 2 over the centroids j, so
// ||x - c_j||^2 = ||x||^2 - 2 s_j(x); ties keep the first j (numpy's argmin rule).
#pragma once

#include <cstdint>

#include "common.h"
#include "cpu.h"

namespace matcompress {

/// Points of a NearestTile are padded to a multiple of this (the widest block of points).
constexpr index_t kNearestPad = 32;

template <typename T>
struct NearestTile {
  const T* xs;     ///< points transposed: xs[d * ldx + i] is coordinate d of point i; the
                   ///< columns from `rows` up to the next multiple of kNearestPad are readable
  index_t ldx;     ///< row stride of xs, a multiple of kNearestPad
  index_t rows;    ///< points
  index_t dim;     ///< coordinates per point
  const T* c;      ///< centroids, k x dim, row-major
  const T* nh;     ///< k: -||c_j||^2 / 2
  index_t k;       ///< centroids
};

/// Direct kernel (small dim): each point's best centroid and score, written to label[i] and
/// score[i] for i < rows. A register tile of points x centroids accumulates the dot products
/// and the arg-max runs on it in registers.
template <typename T>
using NearestFn = void (*)(const NearestTile<T>& tile, int32_t* label, T* score);

/// Arg-max epilogue of the GEMM route: g (rows x kc, row stride ldg) holds <x_i, c_{j0+j}>;
/// label[i] / score[i] are replaced where centroid j0 + j scores strictly higher than score[i].
template <typename T>
using ArgmaxRowsFn = void (*)(const T* g, index_t ldg, index_t rows, index_t kc, const T* nh,
                              index_t j0, int32_t* label, T* score);

/// k-means++ potentials over a block of points held as in NearestTile (xs, ldx, rows, dim; the
/// padding columns of xs, xn, closest and w are zero): for each candidate c < nq (coordinates
/// q + c * dim, squared norm qn[c]) adds sum_i w_i * min(closest_i, ||x_i - q_c||^2) to out[c]
/// (w null: all ones). Distances are ||x||^2 - 2 <x, q> + ||q||^2, clamped at 0.
template <typename T>
using PotentialsFn = void (*)(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn,
                              const T* w, const T* closest, const T* q, const T* qn, index_t nq,
                              double* out);

/// closest_i = min(closest_i, ||x_i - q||^2) over a block, as PotentialsFn computes them.
template <typename T>
using ClosestFn = void (*)(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn,
                           const T* q, T qn, T* closest);

#define MC_DECLARE_KMEANS_TILE(NS)                                                           \
  namespace NS {                                                                             \
  template <typename T>                                                                      \
  void nearest_direct(const NearestTile<T>& tile, int32_t* label, T* score);                 \
  template <typename T>                                                                      \
  void argmax_rows(const T* g, index_t ldg, index_t rows, index_t kc, const T* nh,           \
                   index_t j0, int32_t* label, T* score);                                    \
  template <typename T>                                                                      \
  void pp_potentials(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn,       \
                     const T* w, const T* closest, const T* q, const T* qn, index_t nq,      \
                     double* out);                                                           \
  template <typename T>                                                                      \
  void pp_closest(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn,          \
                  const T* q, T qn, T* closest);                                             \
  extern template void pp_potentials<float>(const float*, index_t, index_t, index_t,         \
                                            const float*, const float*, const float*,        \
                                            const float*, const float*, index_t, double*);   \
  extern template void pp_potentials<double>(const double*, index_t, index_t, index_t,       \
                                             const double*, const double*, const double*,    \
                                             const double*, const double*, index_t,          \
                                             double*);                                       \
  extern template void pp_closest<float>(const float*, index_t, index_t, index_t,            \
                                         const float*, const float*, float, float*);         \
  extern template void pp_closest<double>(const double*, index_t, index_t, index_t,          \
                                          const double*, const double*, double, double*);    \
  extern template void nearest_direct<float>(const NearestTile<float>&, int32_t*, float*);   \
  extern template void nearest_direct<double>(const NearestTile<double>&, int32_t*,          \
                                              double*);                                      \
  extern template void argmax_rows<float>(const float*, index_t, index_t, index_t,           \
                                          const float*, index_t, int32_t*, float*);          \
  extern template void argmax_rows<double>(const double*, index_t, index_t, index_t,         \
                                           const double*, index_t, int32_t*, double*);       \
  }

MC_DECLARE_KMEANS_TILE(isa_generic)
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
MC_DECLARE_KMEANS_TILE(isa_avx2)
MC_DECLARE_KMEANS_TILE(isa_avx512)
#endif

template <typename T>
NearestFn<T> nearest_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::nearest_direct<T>;
  if (isa == Isa::avx2) return &isa_avx2::nearest_direct<T>;
#endif
  (void)isa;
  return &isa_generic::nearest_direct<T>;
}

template <typename T>
ArgmaxRowsFn<T> argmax_rows_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::argmax_rows<T>;
  if (isa == Isa::avx2) return &isa_avx2::argmax_rows<T>;
#endif
  (void)isa;
  return &isa_generic::argmax_rows<T>;
}

template <typename T>
PotentialsFn<T> potentials_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::pp_potentials<T>;
  if (isa == Isa::avx2) return &isa_avx2::pp_potentials<T>;
#endif
  (void)isa;
  return &isa_generic::pp_potentials<T>;
}

template <typename T>
ClosestFn<T> closest_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::pp_closest<T>;
  if (isa == Isa::avx2) return &isa_avx2::pp_closest<T>;
#endif
  (void)isa;
  return &isa_generic::pp_closest<T>;
}

}  // namespace matcompress
