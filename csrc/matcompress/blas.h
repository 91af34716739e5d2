// The BLAS entry points the core uses, injected by each face (numpy: SciPy's BLAS; TF: Eigen).
#pragma once

#include <climits>

#include "common.h"

namespace matcompress {

/// Row-major GEMM: C = alpha * op(A) * op(B) + beta * C, with op(A) m x k, op(B) k x n.
/// @param a  size m * lda (op(A) = A) or k * lda (op(A) = A^T), row-major
/// @param b  size k * ldb (op(B) = B) or n * ldb (op(B) = B^T), row-major
/// @param c  size m * ldc, row-major
template <typename T>
class Gemm {
 public:
  virtual ~Gemm() = default;
  virtual void operator()(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                          const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c,
                          index_t ldc) const = 0;

  /// True when every call runs on the calling thread only (e.g. the BLAS is limited to one
  /// thread for the duration), so kernels may call it from inside their OpenMP regions, one
  /// call per thread. When false, kernels call it only outside OpenMP regions and let it use
  /// its own threads: the two pools never run at full width at once.
  virtual bool runs_on_caller_thread() const { return false; }
};

/// Runs body(i, thread_id) for the n_items tasks of a kernel that calls `gemm` in each: on
/// OpenMP threads (sized for `work` multiply-adds) when the BLAS runs on the caller thread, else
/// one after the other with the BLAS using its own threads.
template <typename T, class Body>
void run_gemm_tasks(const Gemm<T>& gemm, index_t n_items, int n_threads, double work,
                    Body&& body) {
  if (gemm.runs_on_caller_thread()) {
    const int nt = resolve_threads(resolve_threads_for_work(n_threads, work), n_items);
    parallel_for(0, n_items, nt, 1, body);
  } else {
    for (index_t i = 0; i < n_items; ++i) body(i, 0);
  }
}

/// Adapter from a Fortran-convention (column-major, LP64) xGEMM function pointer, such as the
/// ones SciPy exports in scipy.linalg.cython_blas. Sizes beyond `max_dim` (INT_MAX by default)
/// are split into several calls.
template <typename T>
class FortranGemm final : public Gemm<T> {
 public:
  using Fn = void (*)(const char* transa, const char* transb, const int* m, const int* n,
                      const int* k, const T* alpha, const T* a, const int* lda, const T* b,
                      const int* ldb, const T* beta, T* c, const int* ldc);

  /// xGEMV with the Fortran convention: products with one row or one column of C go there.
  using GemvFn = void (*)(const char* trans, const int* m, const int* n, const T* alpha,
                          const T* a, const int* lda, const T* x, const int* incx, const T* beta,
                          T* y, const int* incy);

  /// `caller_thread`: the caller guarantees the BLAS runs each call on the calling thread.
  /// `gemv` (optional): the matching xGEMV, used when C has one row or one column (a GEMM
  /// kernel would pack the whole matrix operand for a single vector).
  explicit FortranGemm(Fn fn, index_t max_dim = INT_MAX, bool caller_thread = false,
                       GemvFn gemv = nullptr)
      : fn_(fn), gemv_(gemv), max_dim_(max_dim), caller_thread_(caller_thread) {
    MC_CHECK(fn_ != nullptr, "FortranGemm: null BLAS function");
    MC_CHECK(max_dim_ >= 1 && max_dim_ <= INT_MAX, "FortranGemm: max_dim out of range");
  }

  void operator()(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                  const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c,
                  index_t ldc) const override;
  bool runs_on_caller_thread() const override { return caller_thread_; }

 private:
  bool try_gemv(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c,
                index_t ldc) const;

  Fn fn_;
  GemvFn gemv_;
  index_t max_dim_;
  bool caller_thread_;
};

extern template class FortranGemm<float>;
extern template class FortranGemm<double>;

/// Solves A X = B for a symmetric positive definite A (Cholesky), row-major.
/// @param a  size n * n, symmetric; overwritten with its Cholesky factor
/// @param b  size n * nrhs, row-major; overwritten with the solution X
/// @return false when A is not (numerically) positive definite; b is then unspecified
template <typename T>
class PosvSolver {
 public:
  virtual ~PosvSolver() = default;
  virtual bool operator()(index_t n, index_t nrhs, T* a, T* b) const = 0;
};

/// Adapter from a Fortran-convention (LP64) xPOSV function pointer, such as the ones SciPy
/// exports in scipy.linalg.cython_lapack.
template <typename T>
class FortranPosv final : public PosvSolver<T> {
 public:
  using Fn = void (*)(const char* uplo, const int* n, const int* nrhs, T* a, const int* lda,
                      T* b, const int* ldb, int* info);
  explicit FortranPosv(Fn fn) : fn_(fn) {
    MC_CHECK(fn_ != nullptr, "FortranPosv: null LAPACK function");
  }
  bool operator()(index_t n, index_t nrhs, T* a, T* b) const override;

 private:
  Fn fn_;
};

extern template class FortranPosv<float>;
extern template class FortranPosv<double>;

}  // namespace matcompress
