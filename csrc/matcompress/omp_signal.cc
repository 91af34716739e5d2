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

#include "omp_signal.h"

#ifndef MC_ISA_NS
#error "MC_ISA_NS must name the instruction-set namespace"
#endif

namespace matcompress {
namespace MC_ISA_NS {
namespace {

template <typename T>
constexpr index_t block() {
  return 128 / static_cast<index_t>(sizeof(T));  // 32 floats / 16 doubles: two zmm registers
}

/// First index of the largest |a[i]|, i < n (n a multiple of block<T>()); *best gets the value.
template <typename T>
index_t argmax_abs(const T* __restrict a, index_t n, T* best) {
  constexpr index_t B = block<T>();
  T lane[B] = {};
  for (index_t c = 0; c < n; c += B)
    for (index_t e = 0; e < B; ++e) {
      const T v = std::abs(a[c + e]);
      lane[e] = v > lane[e] ? v : lane[e];
    }
  T m = lane[0];
  for (index_t e = 1; e < B; ++e) m = lane[e] > m ? lane[e] : m;
  *best = m;
  for (index_t i = 0; i < n; ++i)
    if (std::abs(a[i]) == m) return i;
  return 0;
}

}  // namespace

template <typename T>
index_t omp_signal(const OmpSignalArgs<T>& args, T* __restrict alpha, T norm2,
                   const OmpSignalWork<T>& work, int32_t* out_idx, T* out_val,
                   bool* premature) {
  constexpr index_t B = block<T>();
  const index_t kpad = args.kpad;
  const index_t smax = args.max_atoms;
  const T eps = std::numeric_limits<T>::epsilon();  // scikit-learn's min_float
  T* __restrict V = work.V;
  T* __restrict L = work.L;
  T* __restrict z = work.z;
  int32_t* sel = work.sel;

  *premature = false;
  T err = norm2;
  T best;
  index_t j = argmax_abs(alpha, kpad, &best);
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
      const T w = V[i * kpad + j];
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
    T* __restrict vt = V + t * kpad;
    T lane[B] = {};
    for (index_t c = 0; c < kpad; c += B) {
      T acc[B];
      for (index_t e = 0; e < B; ++e) acc[e] = gj[c + e];
      for (index_t i = 0; i < t; ++i) {
        const T w = Lt[i];
        const T* __restrict vi = V + i * kpad + c;
        for (index_t e = 0; e < B; ++e) acc[e] -= w * vi[e];
      }
      for (index_t e = 0; e < B; ++e) {
        const T v = acc[e] * inv;
        vt[c + e] = v;
        const T a = alpha[c + e] - zt * v;
        alpha[c + e] = a;
        const T ab = std::abs(a);
        lane[e] = ab > lane[e] ? ab : lane[e];
      }
    }
    ++t;
    if (args.use_tol && std::abs(err) <= args.tol) break;
    if (t == smax) break;
    best = lane[0];
    for (index_t e = 1; e < B; ++e) best = lane[e] > best ? lane[e] : best;
    for (j = 0; j < kpad; ++j)
      if (std::abs(alpha[j]) == best) break;
    if (j == kpad) j = 0;
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
