// Eigen's GEMM for one instruction set (MC_ISA_NS; see eigen_gemm.h).
#define EIGEN_DONT_PARALLELIZE  // on the calling thread: the core owns the threads
#include "tf/eigen_gemm.h"

// Eigen's templates have the same names in each instruction set's object, and the linker keeps
// one copy of each (the first, generic one: the AVX-512 build then ran SSE kernels, 2-3x slower).
// Renaming the namespace per instruction set keeps every copy apart. A header name written as
// <...> is not macro-expanded, so the include below still finds Eigen.
#define MC_EIGEN_NS_(isa) Eigen_##isa
#define MC_EIGEN_NS(isa) MC_EIGEN_NS_(isa)
#define Eigen MC_EIGEN_NS(MC_ISA_NS)
#include <Eigen/Core>

namespace matcompress {
namespace MC_ISA_NS {
namespace {

template <typename T>
void gemm_impl(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha, const T* a,
               index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  using CMap = Eigen::Map<const Mat, 0, Stride>;
  if (m == 0 || n == 0) return;
  Eigen::Map<Mat, 0, Stride> C(c, m, n, Stride(ldc));
  if (beta == T(0))
    C.setZero();
  else if (beta != T(1))
    C *= beta;
  if (k == 0) return;
  const CMap A(a, ta ? k : m, ta ? m : k, Stride(lda));
  const CMap B(b, tb ? n : k, tb ? k : n, Stride(ldb));
  if (!ta && !tb)
    C.noalias() += alpha * A * B;
  else if (!ta && tb)
    C.noalias() += alpha * A * B.transpose();
  else if (ta && !tb)
    C.noalias() += alpha * A.transpose() * B;
  else
    C.noalias() += alpha * A.transpose() * B.transpose();
}

}  // namespace

void eigen_gemm(bool ta, bool tb, index_t m, index_t n, index_t k, float alpha, const float* a,
                index_t lda, const float* b, index_t ldb, float beta, float* c, index_t ldc) {
  gemm_impl(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void eigen_gemm(bool ta, bool tb, index_t m, index_t n, index_t k, double alpha, const double* a,
                index_t lda, const double* b, index_t ldb, double beta, double* c,
                index_t ldc) {
  gemm_impl(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace MC_ISA_NS
}  // namespace matcompress
