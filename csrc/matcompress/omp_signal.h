// Per-signal step of Batch-OMP, compiled once per instruction set (omp_signal.cc) and chosen at
// run time. Internal to the core: omp.h is the public entry point.
#pragma once

#include <cstdint>

#include "common.h"
#include "cpu.h"

namespace matcompress {

/// Padding of the Gram rows and correlation vectors: a multiple of the widest vector block.
constexpr index_t kOmpPad = 32;

/// Columns per vector block of the per-signal kernel: 128 bytes, two zmm registers.
template <typename T>
constexpr index_t omp_block() {
  return 128 / static_cast<index_t>(sizeof(T));
}

template <typename T>
struct OmpSignalArgs {
  const T* gram;      ///< Gram matrix, size k * kpad (row j = <d_j, d_i>, padding columns zero)
  index_t kpad;       ///< row stride of gram and length of every correlation vector
  index_t max_atoms;  ///< stop after this many atoms
  bool use_tol;       ///< also stop once the squared residual norm is <= tol
  T tol;
};

template <typename T>
struct OmpSignalWork {
  T* V;          ///< kpad * max_atoms: D u_t for the orthonormalised selected atoms u_t, in
                 ///< panels: for each block of omp_block<T>() columns, the max_atoms rows' segments
                 ///< contiguous, so one step streams through memory sequentially
  T* L;          ///< max_atoms * max_atoms: Cholesky factor of the selected atoms' Gram matrix
  T* z;          ///< max_atoms: <x, u_t>
  int32_t* sel;  ///< max_atoms: selected atom indices, in selection order
};

/// Sparse-codes one signal. `alpha` (size kpad, padding zero) holds D x on entry and the
/// residual's correlations on exit; `norm2` is ||x||^2 (only read with use_tol).
/// Writes out_idx / out_val (size max_atoms) and returns the number of atoms. `*premature` is
/// set when the loop stopped before its rule because the next atom was degenerate, exactly where
/// scikit-learn's _gram_omp warns.
template <typename T>
using OmpSignalFn = index_t (*)(const OmpSignalArgs<T>& args, T* alpha, T norm2,
                                const OmpSignalWork<T>& work, int32_t* out_idx, T* out_val,
                                bool* premature);

#define MC_DECLARE_OMP_SIGNAL(NS)                                                          \
  namespace NS {                                                                           \
  template <typename T>                                                                    \
  index_t omp_signal(const OmpSignalArgs<T>& args, T* alpha, T norm2,                      \
                     const OmpSignalWork<T>& work, int32_t* out_idx, T* out_val,           \
                     bool* premature);                                                     \
  extern template index_t omp_signal<float>(const OmpSignalArgs<float>&, float*, float,    \
                                            const OmpSignalWork<float>&, int32_t*, float*, \
                                            bool*);                                        \
  extern template index_t omp_signal<double>(const OmpSignalArgs<double>&, double*, double,\
                                             const OmpSignalWork<double>&, int32_t*,       \
                                             double*, bool*);                              \
  }

MC_DECLARE_OMP_SIGNAL(isa_generic)
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
MC_DECLARE_OMP_SIGNAL(isa_avx2)
MC_DECLARE_OMP_SIGNAL(isa_avx512)
#endif

/// The kernel for instruction set `isa`.
template <typename T>
OmpSignalFn<T> omp_signal_kernel(Isa isa) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  if (isa == Isa::avx512) return &isa_avx512::omp_signal<T>;
  if (isa == Isa::avx2) return &isa_avx2::omp_signal<T>;
#endif
  (void)isa;
  return &isa_generic::omp_signal<T>;
}

}  // namespace matcompress
