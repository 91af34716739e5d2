// Batch-OMP inner loop for one signal. This file is compiled several times, once per instruction
// set, with MC_ISA_NS naming the namespace (isa_generic, isa_avx2, isa_avx512); the loops are
// written with fixed-width blocks so the compiler vectorizes them for each target.
//
// Formulation: instead of re-forming beta = G_I gamma at every step (Rubinstein et al. 2008),
// keep v_t = D u_t for the Gram-Schmidt basis u_t of the selected atoms. Then
//   L[t, i]   = v_i[j]                      (row t of the Cholesky factor of G_II)
//   v_t       = (G[j, :] - sum_i L[t, i] v_i) / L[t, t]
//   z_t       = alpha[j] / L[t, t]          (= <x, u_t>)
//   alpha    -= z_t v_t,   ||r||^2 -= z_t^2
// one fused pass over the k correlations per step (the same k*t flops as beta = G_I gamma, but
// no triangular solves inside the loop), and gamma = L^-T z once at the end.
#include <cmath>
#include <limits>
#include <type_traits>

#include "omp_signal.h"
#include "simd.h"

#ifndef MC_ISA_NS
#error "MC_ISA_NS must name the instruction-set namespace"
#endif

namespace matcompress {
namespace MC_ISA_NS {
namespace {

// The block of the kernel (omp_block, 128 bytes) is NV vectors of the target's width.
template <typename T>
struct OmpSimd : Simd<T> {
  static constexpr int NV = static_cast<int>(omp_block<T>() / Simd<T>::W);
};

/// Running maximum of |a| per lane and the index where it was first seen (strict ">" keeps the
/// earliest index of each lane), so resolve() gives the first index of the overall maximum —
/// numpy's argmax rule, which scikit-learn's OMP uses.
template <typename T>
struct LaneArgmax {
  using S = OmpSimd<T>;
  using vec = typename S::vec;
  using ivec = typename S::ivec;
  using I = typename S::I;
  vec max[S::NV];
  ivec idx[S::NV];
  ivec pos[S::NV];

  LaneArgmax() {
#pragma GCC unroll 8
    for (int v = 0; v < S::NV; ++v) {
      max[v] = S::splat(T(-1));
      idx[v] = ivec{};
      pos[v] = S::iota() + static_cast<I>(v * S::W);
    }
  }
  // a: the block's NV vectors; the positions advance by one block per call.
  void update(const vec* a) {
#pragma GCC unroll 8
    for (int v = 0; v < S::NV; ++v) {
      const vec ab = S::abs(a[v]);
      const auto gt = ab > max[v];
      max[v] = gt ? ab : max[v];
      idx[v] = gt ? pos[v] : idx[v];
      pos[v] += static_cast<I>(omp_block<T>());
    }
  }
  // Branch-free: horizontal max of the values, then the smallest index among the lanes that
  // hold it, both by log2(W) shuffle steps.
  index_t resolve() const {
    vec m = max[0];
#pragma GCC unroll 8
    for (int v = 1; v < S::NV; ++v) m = max[v] > m ? max[v] : m;
#pragma GCC unroll 8
    for (index_t h = S::W / 2; h >= 1; h /= 2) {
      const vec r = __builtin_shuffle(m, S::rotate(h));
      m = m > r ? m : r;
    }
    const ivec none = ivec{} + std::numeric_limits<I>::max();
    ivec c = max[0] == m ? idx[0] : none;
#pragma GCC unroll 8
    for (int v = 1; v < S::NV; ++v) {
      const ivec cv = max[v] == m ? idx[v] : none;
      c = cv < c ? cv : c;
    }
#pragma GCC unroll 8
    for (index_t h = S::W / 2; h >= 1; h /= 2) {
      const ivec r = __builtin_shuffle(c, S::rotate(h));
      c = c < r ? c : r;
    }
    return c[0];
  }
};

}  // namespace

template <typename T>
index_t omp_signal(const OmpSignalArgs<T>& args, T* __restrict alpha, T norm2,
                   const OmpSignalWork<T>& work, int32_t* out_idx, T* out_val,
                   bool* premature) {
  using S = OmpSimd<T>;
  using vec = typename S::vec;
  constexpr index_t B = omp_block<T>();
  constexpr int NV = S::NV;
  constexpr index_t W = S::W;
  const index_t kpad = args.kpad;
  const index_t smax = args.max_atoms;
  const T eps = std::numeric_limits<T>::epsilon();  // scikit-learn's min_float
  T* __restrict V = work.V;
  T* __restrict L = work.L;
  T* __restrict z = work.z;
  int32_t* sel = work.sel;

  *premature = false;
  T err = norm2;
  index_t j;
  {
    LaneArgmax<T> am;
    for (index_t c = 0; c < kpad; c += B) {
      vec a[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) a[v] = S::load(alpha + c + v * W);
      am.update(a);
    }
    j = am.resolve();
  }
  index_t t = 0;
  while (true) {
    const T aj = alpha[j];
    if (aj * aj < eps) {  // residual orthogonal to every atom (or x = 0)
      *premature = true;
      break;
    }
    bool reselected = false;
    for (index_t i = 0; i < t; ++i) reselected |= (sel[i] == j);
    if (reselected) {
      *premature = true;
      break;
    }
    T* Lt = L + t * smax;
    T d = args.gram[j * kpad + j];
    {
      const T* panel_j = V + (j / B) * smax * B + j % B;
      for (index_t i = 0; i < t; ++i) {
        const T w = panel_j[i * B];
        Lt[i] = w;
        d -= w * w;
      }
    }
    if (t > 0 && d <= eps) {  // atom j is (numerically) in the span of the selected ones
      *premature = true;
      break;
    }
    const T nrm = std::sqrt(d);
    const T inv = T(1) / nrm;
    const T zt = aj * inv;
    Lt[t] = nrm;
    z[t] = zt;
    sel[t] = static_cast<int32_t>(j);
    err -= zt * zt;

    // One fused pass over the k correlations: v_t, alpha -= z_t v_t, and the next arg-max.
    const T* __restrict gj = args.gram + j * kpad;
    const vec vinv = S::splat(inv), vz = S::splat(zt);
    LaneArgmax<T> am;
    for (index_t c = 0; c < kpad; c += B) {
      T* __restrict panel = V + c * smax;  // block c / B of V: smax rows of B values
      vec acc[kChains][NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[0][v] = S::load(gj + c + v * W);
#pragma GCC unroll 4
      for (int q = 1; q < kChains; ++q)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[q][v] = vec{};
      index_t i = 0;
      for (; i + kChains <= t; i += kChains) {
#pragma GCC unroll 4
        for (int q = 0; q < kChains; ++q) {
          const T* p = panel + (i + q) * B;
          const vec w = S::splat(Lt[i + q]);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) acc[q][v] -= w * S::load(p + v * W);
        }
      }
      if constexpr (kChains > 2) {  // a remainder of 2-3 steps still runs on two chains
        for (; i + 2 <= t; i += 2) {
#pragma GCC unroll 2
          for (int q = 0; q < 2; ++q) {
            const T* p = panel + (i + q) * B;
            const vec w = S::splat(Lt[i + q]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[q][v] -= w * S::load(p + v * W);
          }
        }
      }
      for (; i < t; ++i) {
        const T* p = panel + i * B;
        const vec w = S::splat(Lt[i]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[0][v] -= w * S::load(p + v * W);
      }
#pragma GCC unroll 4
      for (int q = 1; q < kChains; ++q)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[0][v] += acc[q][v];
      vec a[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const vec vt = acc[0][v] * vinv;
        S::store(panel + t * B + v * W, vt);
        a[v] = S::load(alpha + c + v * W) - vz * vt;
        S::store(alpha + c + v * W, a[v]);
      }
      am.update(a);
    }
    ++t;
    if (args.use_tol && std::abs(err) <= args.tol) break;
    if (t == smax) break;
    j = am.resolve();
  }

  // gamma = L^-T z (back substitution), written straight into the output.
  for (index_t i = t - 1; i >= 0; --i) {
    T s = z[i];
    for (index_t r = i + 1; r < t; ++r) s -= L[r * smax + i] * out_val[r];
    out_val[i] = s / L[i * smax + i];
  }
  for (index_t i = 0; i < t; ++i) out_idx[i] = sel[i];
  return t;
}

template index_t omp_signal<float>(const OmpSignalArgs<float>&, float*, float,
                                   const OmpSignalWork<float>&, int32_t*, float*, bool*);
template index_t omp_signal<double>(const OmpSignalArgs<double>&, double*, double,
                                    const OmpSignalWork<double>&, int32_t*, double*, bool*);

}  // namespace MC_ISA_NS
}  // namespace matcompress
