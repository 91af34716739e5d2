// Row-major GEMM by Eigen on the calling thread, compiled once per instruction set
// (eigen_gemm.cc with MC_ISA_NS and that set's flags) and chosen at run time: the op library is
// built for any x86-64 CPU, and Eigen's kernels follow the flags they are compiled with.
#pragma once

#include "matcompress/common.h"
#include "matcompress/cpu.h"

namespace matcompress {

#define MC_DECLARE_EIGEN_GEMM(NS)                                                            \
  namespace NS {                                                                             \
  void eigen_gemm(bool ta, bool tb, index_t m, index_t n, index_t k, float alpha,           \
                  const float* a, index_t lda, const float* b, index_t ldb, float beta,      \
                  float* c, index_t ldc);                                                    \
  void eigen_gemm(bool ta, bool tb, index_t m, index_t n, index_t k, double alpha,          \
                  const double* a, index_t lda, const double* b, index_t ldb, double beta,   \
                  double* c, index_t ldc);                                                   \
  }

MC_DECLARE_EIGEN_GEMM(isa_generic)
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
MC_DECLARE_EIGEN_GEMM(isa_avx2)
MC_DECLARE_EIGEN_GEMM(isa_avx512)
#endif

template <typename T>
void eigen_gemm(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha, const T* a,
                index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
#ifdef MATCOMPRESS_HAVE_ISA_KERNELS
  switch (active_isa()) {
    case Isa::avx512:
      return isa_avx512::eigen_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    case Isa::avx2:
      return isa_avx2::eigen_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    default:
      break;
  }
#endif
  isa_generic::eigen_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace matcompress
