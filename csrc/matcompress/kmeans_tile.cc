// Nearest-centroid kernels of block k-means. This file is compiled several times, once per
// instruction set, with MC_ISA_NS naming the namespace (see simd.h); it is built with
// -ffp-contract=fast so the dot products use FMA where the target has it.
#include <limits>

#include "kmeans_tile.h"
#include "simd.h"

namespace matcompress {
namespace MC_ISA_NS {
namespace {

// Register tile of the direct kernel: PV vectors of points x CC centroids of accumulators, plus
// the running best score and index of each point vector, within the target's registers.
constexpr int kPV = 2;
constexpr int kCC = kRegisters >= 32 ? 8 : 4;

// Scores of CC centroids from j0 for the points of one block, merged into the running best.
template <typename T, int CC, int DIM>
inline void centroid_block(const NearestTile<T>& t, index_t p0, index_t j0,
                           typename Simd<T>::vec* best, typename Simd<T>::ivec* idx) {
  using S = Simd<T>;
  using vec = typename S::vec;
  using ivec = typename S::ivec;
  using I = typename S::I;
  const index_t dim = DIM > 0 ? DIM : t.dim;
  const T* __restrict c = t.c + j0 * dim;
  vec acc[kPV][CC];
#pragma GCC unroll 8
  for (int cc = 0; cc < CC; ++cc) {
    const vec h = S::splat(t.nh[j0 + cc]);
#pragma GCC unroll 4
    for (int pv = 0; pv < kPV; ++pv) acc[pv][cc] = h;
  }
#pragma GCC unroll 16
  for (index_t d = 0; d < dim; ++d) {
    vec xv[kPV];
    const T* xrow = t.xs + d * t.ldx + p0;
#pragma GCC unroll 4
    for (int pv = 0; pv < kPV; ++pv) xv[pv] = S::load(xrow + pv * S::W);
#pragma GCC unroll 8
    for (int cc = 0; cc < CC; ++cc) {
      const vec cb = S::splat(c[cc * dim + d]);
#pragma GCC unroll 4
      for (int pv = 0; pv < kPV; ++pv) acc[pv][cc] += xv[pv] * cb;
    }
  }
#pragma GCC unroll 8
  for (int cc = 0; cc < CC; ++cc) {
    const ivec jv = ivec{} + static_cast<I>(j0 + cc);
#pragma GCC unroll 4
    for (int pv = 0; pv < kPV; ++pv) {
      const auto gt = acc[pv][cc] > best[pv];  // strict: an equal later score keeps the first j
      best[pv] = gt ? acc[pv][cc] : best[pv];
      idx[pv] = gt ? jv : idx[pv];
    }
  }
}

template <typename T, int DIM>
void nearest_direct_dim(const NearestTile<T>& t, int32_t* label, T* score) {
  using S = Simd<T>;
  using vec = typename S::vec;
  using ivec = typename S::ivec;
  constexpr index_t P = kPV * S::W;
  static_assert(kNearestPad % P == 0, "kNearestPad must be a multiple of the point block");
  for (index_t p0 = 0; p0 < t.rows; p0 += P) {
    vec best[kPV];
    ivec idx[kPV];
    for (int pv = 0; pv < kPV; ++pv) {
      best[pv] = S::splat(-std::numeric_limits<T>::infinity());
      idx[pv] = ivec{};
    }
    index_t j = 0;
    for (; j + kCC <= t.k; j += kCC) centroid_block<T, kCC, DIM>(t, p0, j, best, idx);
    for (; j < t.k; ++j) centroid_block<T, 1, DIM>(t, p0, j, best, idx);
    const index_t m = t.rows - p0 < P ? t.rows - p0 : P;
    for (index_t e = 0; e < m; ++e) {
      label[p0 + e] = static_cast<int32_t>(idx[e / S::W][e % S::W]);
      score[p0 + e] = best[e / S::W][e % S::W];
    }
  }
}

}  // namespace

template <typename T>
void nearest_direct(const NearestTile<T>& t, int32_t* label, T* score) {
  switch (t.dim) {  // small dimensions fully unrolled; others loop over the coordinates
    case 2: return nearest_direct_dim<T, 2>(t, label, score);
    case 3: return nearest_direct_dim<T, 3>(t, label, score);
    case 4: return nearest_direct_dim<T, 4>(t, label, score);
    case 5: return nearest_direct_dim<T, 5>(t, label, score);
    case 6: return nearest_direct_dim<T, 6>(t, label, score);
    case 7: return nearest_direct_dim<T, 7>(t, label, score);
    case 8: return nearest_direct_dim<T, 8>(t, label, score);
    case 16: return nearest_direct_dim<T, 16>(t, label, score);
    default: return nearest_direct_dim<T, 0>(t, label, score);
  }
}

template <typename T>
void argmax_rows(const T* g, index_t ldg, index_t rows, index_t kc, const T* nh, index_t j0,
                 int32_t* label, T* score) {
  using S = Simd<T>;
  using vec = typename S::vec;
  using ivec = typename S::ivec;
  using I = typename S::I;
  constexpr index_t W = S::W;
  const T* __restrict h = nh + j0;
  const index_t kv = kc - kc % W;
  for (index_t i = 0; i < rows; ++i) {
    const T* __restrict gi = g + i * ldg;
    T m = -std::numeric_limits<T>::infinity();
    index_t arg = -1;
    if (kv > 0) {
      vec best = S::splat(m);
      ivec idx{}, pos = S::iota();
      for (index_t j = 0; j < kv; j += W) {
        const vec s = S::load(gi + j) + S::load(h + j);
        const auto gt = s > best;
        best = gt ? s : best;
        idx = gt ? pos : idx;
        pos += static_cast<I>(W);
      }
      vec mv = best;  // horizontal max, then the smallest index among the lanes holding it
#pragma GCC unroll 8
      for (index_t r = W / 2; r >= 1; r /= 2) {
        const vec o = __builtin_shuffle(mv, S::rotate(r));
        mv = mv > o ? mv : o;
      }
      ivec cand = best == mv ? idx : ivec{} + std::numeric_limits<I>::max();
#pragma GCC unroll 8
      for (index_t r = W / 2; r >= 1; r /= 2) {
        const ivec o = __builtin_shuffle(cand, S::rotate(r));
        cand = cand < o ? cand : o;
      }
      m = mv[0];
      arg = cand[0];
    }
    for (index_t j = kv; j < kc; ++j) {
      const T s = gi[j] + h[j];
      if (s > m) {
        m = s;
        arg = j;
      }
    }
    if (m > score[i]) {
      score[i] = m;
      label[i] = static_cast<int32_t>(j0 + arg);
    }
  }
}

namespace {

// Potentials of CQ candidates from c0 over the block.
template <typename T, int CQ>
inline void potentials_group(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn,
                             const T* w, const T* closest, const T* q, const T* qn, double* out) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr index_t W = S::W;
  vec sum[CQ];
  T m2q[CQ * 64];  // -2 q, so the dot product accumulates straight into the distance
  const bool small = dim <= 64;
  if (small)
    for (index_t e = 0; e < CQ * dim; ++e) m2q[e] = T(-2) * q[e];
  for (int c = 0; c < CQ; ++c) sum[c] = vec{};
  for (index_t i = 0; i < rows; i += W) {
    const vec nx = S::load(xn + i), cl = S::load(closest + i);
    vec acc[CQ];
#pragma GCC unroll 8
    for (int c = 0; c < CQ; ++c) acc[c] = nx + S::splat(qn[c]);
    if (small) {
      for (index_t d = 0; d < dim; ++d) {
        const vec xv = S::load(xs + d * ldx + i);
#pragma GCC unroll 8
        for (int c = 0; c < CQ; ++c) acc[c] += xv * S::splat(m2q[c * dim + d]);
      }
    } else {
      for (index_t d = 0; d < dim; ++d) {
        const vec xv = S::load(xs + d * ldx + i);
#pragma GCC unroll 8
        for (int c = 0; c < CQ; ++c) acc[c] += xv * S::splat(T(-2) * q[c * dim + d]);
      }
    }
    // (a distance a rounding below 0 only lowers a potential by that rounding)
    if (w) {
      const vec wv = S::load(w + i);
#pragma GCC unroll 8
      for (int c = 0; c < CQ; ++c) sum[c] += wv * (acc[c] < cl ? acc[c] : cl);
    } else {
#pragma GCC unroll 8
      for (int c = 0; c < CQ; ++c) sum[c] += acc[c] < cl ? acc[c] : cl;
    }
  }
  for (int c = 0; c < CQ; ++c) {
    double s = 0;
    for (index_t e = 0; e < W; ++e) s += double(sum[c][e]);
    out[c] += s;
  }
}

}  // namespace

template <typename T>
void pp_potentials(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn, const T* w,
                   const T* closest, const T* q, const T* qn, index_t nq, double* out) {
  constexpr int G = kRegisters >= 32 ? 8 : 4;
  index_t c = 0;
  for (; c + G <= nq; c += G)
    potentials_group<T, G>(xs, ldx, rows, dim, xn, w, closest, q + c * dim, qn + c, out + c);
  for (; c < nq; ++c)
    potentials_group<T, 1>(xs, ldx, rows, dim, xn, w, closest, q + c * dim, qn + c, out + c);
}

template <typename T>
void pp_closest(const T* xs, index_t ldx, index_t rows, index_t dim, const T* xn, const T* q,
                T qn, T* closest) {
  using S = Simd<T>;
  using vec = typename S::vec;
  const vec zero{};
  for (index_t i = 0; i < rows; i += S::W) {
    vec acc{};
    for (index_t d = 0; d < dim; ++d) acc += S::load(xs + d * ldx + i) * S::splat(q[d]);
    vec dist = S::load(xn + i) + S::splat(qn) - T(2) * acc;
    dist = dist > zero ? dist : zero;
    const vec cl = S::load(closest + i);
    S::store(closest + i, dist < cl ? dist : cl);
  }
}

template void pp_potentials<float>(const float*, index_t, index_t, index_t, const float*,
                                   const float*, const float*, const float*, const float*,
                                   index_t, double*);
template void pp_potentials<double>(const double*, index_t, index_t, index_t, const double*,
                                    const double*, const double*, const double*, const double*,
                                    index_t, double*);
template void pp_closest<float>(const float*, index_t, index_t, index_t, const float*,
                                const float*, float, float*);
template void pp_closest<double>(const double*, index_t, index_t, index_t, const double*,
                                 const double*, double, double*);
template void nearest_direct<float>(const NearestTile<float>&, int32_t*, float*);
template void nearest_direct<double>(const NearestTile<double>&, int32_t*, double*);
template void argmax_rows<float>(const float*, index_t, index_t, index_t, const float*, index_t,
                                 int32_t*, float*);
template void argmax_rows<double>(const double*, index_t, index_t, index_t, const double*,
                                  index_t, int32_t*, double*);

}  // namespace MC_ISA_NS
}  // namespace matcompress
