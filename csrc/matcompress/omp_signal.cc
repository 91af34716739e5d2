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

#ifndef MC_ISA_NS
#error "MC_ISA_NS must name the instruction-set namespace"
#endif

namespace matcompress {
namespace MC_ISA_NS {
namespace {

// Independent accumulator chains in the update loop, as many as the registers allow:
// 32 zmm (AVX-512), 16 ymm (AVX2), 16 xmm (SSE2).
#if defined(__AVX512F__)
constexpr int kChains = 4;
#elif defined(__AVX2__)
constexpr int kChains = 2;
#else
constexpr int kChains = 1;
#endif

/// Per-lane running maximum of |a| and where it was first seen; strict ">" keeps the earliest
/// index of each lane, so resolve() returns the first index of the overall maximum.
template <typename T>
struct LaneArgmax {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;  // same width as T
  static constexpr index_t B = omp_block<T>();
  T val[B];
  I idx[B];

  LaneArgmax() {
    for (index_t e = 0; e < B; ++e) {
      val[e] = T(-1);
      idx[e] = 0;
    }
  }
  void update(const T* a, index_t c) {
    for (index_t e = 0; e < B; ++e) {
      const T ab = std::abs(a[e]);
      const bool gt = ab > val[e];
      val[e] = gt ? ab : val[e];
      idx[e] = gt ? static_cast<I>(c + e) : idx[e];
    }
  }
  index_t resolve() const {
    index_t best = 0;
    for (index_t e = 1; e < B; ++e)
      if (val[e] > val[best] || (val[e] == val[best] && idx[e] < idx[best])) best = e;
    return idx[best];
  }
};

}  // namespace

template <typename T>
index_t omp_signal(const OmpSignalArgs<T>& args, T* __restrict alpha, T norm2,
                   const OmpSignalWork<T>& work, int32_t* out_idx, T* out_val,
                   bool* premature) {
  constexpr index_t B = omp_block<T>();
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
    for (index_t c = 0; c < kpad; c += B) am.update(alpha + c, c);
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
    for (index_t i = 0; i < t; ++i) {
      const T w = V[(j / B) * smax * B + i * B + j % B];
      Lt[i] = w;
      d -= w * w;
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

    const T* __restrict gj = args.gram + j * kpad;
    LaneArgmax<T> am;
    for (index_t c = 0; c < kpad; c += B) {
      T* __restrict panel = V + c * smax;  // (c / B) * smax * B
      T* __restrict vt = panel + t * B;
      // kChains independent partial sums: a single chain per block would wait on FMA latency.
      T acc[kChains][B];
      index_t i = 0;
      if (t >= kChains) {
        for (int q = 0; q < kChains; ++q) {
          const T w = Lt[q];
          const T* __restrict vq = panel + q * B;
          for (index_t e = 0; e < B; ++e) acc[q][e] = (q == 0 ? gj[c + e] : T(0)) - w * vq[e];
        }
        for (i = kChains; i + kChains <= t; i += kChains)
          for (int q = 0; q < kChains; ++q) {
            const T w = Lt[i + q];
            const T* __restrict vq = panel + (i + q) * B;
            for (index_t e = 0; e < B; ++e) acc[q][e] -= w * vq[e];
          }
        for (int q = 1; q < kChains; ++q)
          for (index_t e = 0; e < B; ++e) acc[0][e] += acc[q][e];
      } else {
        for (index_t e = 0; e < B; ++e) acc[0][e] = gj[c + e];
      }
      for (; i < t; ++i) {
        const T w = Lt[i];
        const T* __restrict vi = panel + i * B;
        for (index_t e = 0; e < B; ++e) acc[0][e] -= w * vi[e];
      }
      for (index_t e = 0; e < B; ++e) {
        const T v = acc[0][e] * inv;
        vt[e] = v;
        alpha[c + e] -= zt * v;
      }
      am.update(alpha + c, c);
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
