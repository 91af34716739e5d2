#include "blas.h"

#include <algorithm>
#include <vector>

namespace matcompress {

template <typename T>
void FortranGemm<T>::operator()(bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                                T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                                T beta, T* c, index_t ldc) const {
  MC_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative size");
  if (m == 0 || n == 0) return;
  MC_CHECK(lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
           "gemm: leading dimension exceeds the 32-bit BLAS interface");
  if (try_gemv(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char ta = trans_a ? 'T' : 'N';
  const char tb = trans_b ? 'T' : 'N';
  const int ilda = static_cast<int>(std::max<index_t>(lda, 1));
  const int ildb = static_cast<int>(std::max<index_t>(ldb, 1));
  const int ildc = static_cast<int>(std::max<index_t>(ldc, 1));
  for (index_t i0 = 0; i0 < m; i0 += max_dim_) {
    const int mb = static_cast<int>(std::min(max_dim_, m - i0));
    for (index_t j0 = 0; j0 < n; j0 += max_dim_) {
      const int nb = static_cast<int>(std::min(max_dim_, n - j0));
      T* cblk = c + i0 * ldc + j0;
      if (k == 0) {  // BLAS would only scale C; keep that meaning
        const int zero = 0;
        fn_(&tb, &ta, &nb, &mb, &zero, &alpha, b, &ildb, a, &ilda, &beta, cblk, &ildc);
        continue;
      }
      for (index_t p0 = 0; p0 < k; p0 += max_dim_) {
        const int kb = static_cast<int>(std::min(max_dim_, k - p0));
        const T* ablk = trans_a ? a + p0 * lda + i0 : a + i0 * lda + p0;
        const T* bblk = trans_b ? b + j0 * ldb + p0 : b + p0 * ldb + j0;
        const T beta_blk = p0 == 0 ? beta : T(1);
        fn_(&tb, &ta, &nb, &mb, &kb, &alpha, bblk, &ildb, ablk, &ilda, &beta_blk, cblk, &ildc);
      }
    }
  }
}

// One row of C: c = op(A) op(B) with op(A) a row vector; one column: op(B) a column vector.
// Row-major B (k x n, ldb) reads in column-major order as an n x k matrix (ld ldb), so
// c = op(B)^T a is xGEMV('N') on it, and a transposed B (n x k) is xGEMV('T').
template <typename T>
bool FortranGemm<T>::try_gemv(bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                              T alpha, const T* a, index_t lda, const T* b, index_t ldb, T beta,
                              T* c, index_t ldc) const {
  if (gemv_ == nullptr || k == 0 || (m != 1 && n != 1)) return false;
  if (m > max_dim_ || n > max_dim_ || k > max_dim_ || k > INT_MAX) return false;
  const int ik = static_cast<int>(k), one = 1;
  if (m == 1) {  // c (n) = op(B)^T v, v = op(A)'s row: a[p] or a[p * lda]
    const int incv = static_cast<int>(trans_a ? std::max<index_t>(lda, 1) : 1);
    const int in = static_cast<int>(n), ildb = static_cast<int>(std::max<index_t>(ldb, 1));
    if (!trans_b)
      gemv_("N", &in, &ik, &alpha, b, &ildb, a, &incv, &beta, c, &one);
    else
      gemv_("T", &ik, &in, &alpha, b, &ildb, a, &incv, &beta, c, &one);
    return true;
  }
  // n == 1: c (m, stride ldc) = op(A) v, v = op(B)'s column: b[p * ldb] or b[p]
  const int incv = static_cast<int>(trans_b ? 1 : std::max<index_t>(ldb, 1));
  const int im = static_cast<int>(m), ilda = static_cast<int>(std::max<index_t>(lda, 1));
  const int incc = static_cast<int>(std::max<index_t>(ldc, 1));
  if (!trans_a)
    gemv_("T", &ik, &im, &alpha, a, &ilda, b, &incv, &beta, c, &incc);
  else
    gemv_("N", &im, &ik, &alpha, a, &ilda, b, &incv, &beta, c, &incc);
  return true;
}

template class FortranGemm<float>;
template class FortranGemm<double>;

template <typename T>
bool FortranPosv<T>::operator()(index_t n, index_t nrhs, T* a, T* b) const {
  MC_CHECK(n >= 0 && nrhs >= 0, "posv: negative size");
  if (n == 0 || nrhs == 0) return true;
  MC_CHECK(n <= INT_MAX && nrhs <= INT_MAX && n * nrhs <= INT_MAX,
           "posv: size exceeds the 32-bit LAPACK interface");
  // A is symmetric, so its row-major and column-major readings agree. The row-major right-hand
  // side (n x nrhs) reads as its transpose in column-major order: transpose into LAPACK's layout.
  std::vector<T> cm(static_cast<size_t>(n * nrhs));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < nrhs; ++j) cm[j * n + i] = b[i * nrhs + j];
  const char uplo = 'L';
  const int in = static_cast<int>(n), inrhs = static_cast<int>(nrhs);
  int info = 0;
  fn_(&uplo, &in, &inrhs, a, &in, cm.data(), &in, &info);
  MC_CHECK(info >= 0, "posv: invalid argument " << -info);
  if (info > 0) return false;
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < nrhs; ++j) b[i * nrhs + j] = cm[j * n + i];
  return true;
}

template class FortranPosv<float>;
template class FortranPosv<double>;

}  // namespace matcompress
