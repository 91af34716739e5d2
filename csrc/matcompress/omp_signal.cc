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
// 32 zmm (AVX-512), 16 ymm (AVX2), 16 xmm (SSE2). One chain would wait on FMA latency.
#if defined(__AVX512F__)
constexpr int kChains = 4;
#elif defined(__AVX2__)
constexpr int kChains = 2;
#else
constexpr int kChains = 1;
#endif

// 64-byte vectors (GCC vector extensions): one zmm, two ymm or four xmm registers depending on
// the target this file is compiled for. A block of the kernel is two of them.
template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(64)));
  typedef T uvec __attribute__((vector_size(64), aligned(alignof(T)), may_alias));
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;  // same lane width as T
  typedef I ivec __attribute__((vector_size(64)));
  static constexpr index_t W = 64 / static_cast<index_t>(sizeof(T));

  static vec load(const T* p) { return *reinterpret_cast<const uvec*>(p); }
  static void store(T* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
  static vec splat(T x) { return vec{} + x; }
  static vec abs(vec v) { return reinterpret_cast<vec>(reinterpret_cast<ivec>(v) & ~sign_mask()); }
  static ivec sign_mask() { return ivec{} + (I(1) << (8 * sizeof(I) - 1)); }
  static ivec iota() {
    ivec r{};
    for (index_t e = 0; e < W; ++e) r[e] = static_cast<I>(e);
    return r;
  }
};

/// Running maximum of |a| per lane and the index where it was first seen (strict ">" keeps the
/// earliest index of each lane), so resolve() gives the first index of the overall maximum —
/// numpy's argmax rule, which scikit-learn's OMP uses.
template <typename T>
struct LaneArgmax {
  using S = Simd<T>;
  typename S::vec max_lo = S::splat(T(-1)), max_hi = S::splat(T(-1));
  typename S::ivec idx_lo{}, idx_hi{};
  typename S::ivec pos_lo = S::iota(), pos_hi = S::iota() + static_cast<typename S::I>(S::W);

  // a_lo, a_hi: the block's two vectors; pos advances by one block per call.
  void update(typename S::vec a_lo, typename S::vec a_hi) {
    const typename S::vec ab_lo = S::abs(a_lo), ab_hi = S::abs(a_hi);
    const auto gt_lo = ab_lo > max_lo;
    const auto gt_hi = ab_hi > max_hi;
    max_lo = gt_lo ? ab_lo : max_lo;
    max_hi = gt_hi ? ab_hi : max_hi;
    idx_lo = gt_lo ? pos_lo : idx_lo;
    idx_hi = gt_hi ? pos_hi : idx_hi;
    pos_lo += static_cast<typename S::I>(2 * S::W);
    pos_hi += static_cast<typename S::I>(2 * S::W);
  }
  // Branch-free: horizontal max of the values, then the smallest index among the lanes that
  // hold it, both by log2(W) shuffle steps.
  index_t resolve() const {
    typename S::vec m = max_lo > max_hi ? max_lo : max_hi;
    for (index_t h = S::W / 2; h >= 1; h /= 2) {
      const typename S::vec r = __builtin_shuffle(m, rotate(h));
      m = m > r ? m : r;
    }
    constexpr typename S::I kNone = std::numeric_limits<typename S::I>::max();
    const typename S::ivec none = typename S::ivec{} + kNone;
    const typename S::ivec c_lo = max_lo == m ? idx_lo : none;
    const typename S::ivec c_hi = max_hi == m ? idx_hi : none;
    typename S::ivec c = c_lo < c_hi ? c_lo : c_hi;
    for (index_t h = S::W / 2; h >= 1; h /= 2) {
      const typename S::ivec r = __builtin_shuffle(c, rotate(h));
      c = c < r ? c : r;
    }
    return c[0];
  }

 private:
  static typename S::ivec rotate(index_t h) {  // lane e takes lane (e + h) mod W
    return (S::iota() + static_cast<typename S::I>(h)) & static_cast<typename S::I>(S::W - 1);
  }
};

}  // namespace

template <typename T>
index_t omp_signal(const OmpSignalArgs<T>& args, T* __restrict alpha, T norm2,
                   const OmpSignalWork<T>& work, int32_t* out_idx, T* out_val,
                   bool* premature) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr index_t B = omp_block<T>();
  static_assert(B == 2 * S::W, "a block is two vectors");
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
    for (index_t c = 0; c < kpad; c += B) am.update(S::load(alpha + c), S::load(alpha + c + S::W));
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
      vec lo0 = S::load(gj + c), hi0 = S::load(gj + c + S::W);
      vec lo1{}, hi1{}, lo2{}, hi2{}, lo3{}, hi3{};
      index_t i = 0;
      if constexpr (kChains == 4) {
        for (; i + 4 <= t; i += 4) {
          const T* p = panel + i * B;
          const vec w0 = S::splat(Lt[i]), w1 = S::splat(Lt[i + 1]);
          const vec w2 = S::splat(Lt[i + 2]), w3 = S::splat(Lt[i + 3]);
          lo0 -= w0 * S::load(p);
          hi0 -= w0 * S::load(p + S::W);
          lo1 -= w1 * S::load(p + B);
          hi1 -= w1 * S::load(p + B + S::W);
          lo2 -= w2 * S::load(p + 2 * B);
          hi2 -= w2 * S::load(p + 2 * B + S::W);
          lo3 -= w3 * S::load(p + 3 * B);
          hi3 -= w3 * S::load(p + 3 * B + S::W);
        }
        lo2 += lo3;
        hi2 += hi3;
      }
      if constexpr (kChains >= 2) {
        for (; i + 2 <= t; i += 2) {
          const T* p = panel + i * B;
          const vec w0 = S::splat(Lt[i]), w1 = S::splat(Lt[i + 1]);
          lo0 -= w0 * S::load(p);
          hi0 -= w0 * S::load(p + S::W);
          lo1 -= w1 * S::load(p + B);
          hi1 -= w1 * S::load(p + B + S::W);
        }
        lo0 += lo2;
        hi0 += hi2;
        lo0 += lo1;
        hi0 += hi1;
      }
      for (; i < t; ++i) {
        const T* p = panel + i * B;
        const vec w0 = S::splat(Lt[i]);
        lo0 -= w0 * S::load(p);
        hi0 -= w0 * S::load(p + S::W);
      }
      lo0 *= vinv;
      hi0 *= vinv;
      S::store(panel + t * B, lo0);
      S::store(panel + t * B + S::W, hi0);
      const vec a_lo = S::load(alpha + c) - vz * lo0;
      const vec a_hi = S::load(alpha + c + S::W) - vz * hi0;
      S::store(alpha + c, a_lo);
      S::store(alpha + c + S::W, a_hi);
      am.update(a_lo, a_hi);
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
