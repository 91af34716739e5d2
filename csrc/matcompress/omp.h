// Batch Orthogonal Matching Pursuit (Rubinstein, Zibulevsky & Elad 2008): sparse coding of many
// signals against one dictionary, with the Gram matrix and the projections D x computed by GEMM
// and a progressive Cholesky update per signal.
#pragma once

#include <cstdint>
#include <functional>

#include "blas.h"
#include "common.h"

namespace matcompress {

/// The inputs of one sparse-coding problem; every matrix is row-major.
template <typename T>
struct OmpProblem {
  const T* X = nullptr;           ///< signals, size n_samples * n_features
  index_t n_samples = 0;
  index_t n_features = 0;
  const T* dictionary = nullptr;  ///< atoms as rows, size n_components * n_features; may be null
                                  ///< when both gram and cov are given
  index_t n_components = 0;
  const T* gram = nullptr;        ///< optional D D^T, size n_components * n_components
  const T* cov = nullptr;         ///< optional D X^T, size n_components * n_samples
};

struct OmpOptions {
  index_t max_atoms = 1;   ///< atoms per signal at most (n_nonzero_coefs, or the cap in tol mode)
  bool use_tol = false;    ///< stop each signal once its squared residual norm is <= tol
  double tol = 0.0;
  int n_threads = 0;       ///< OpenMP threads for the per-signal work; <= 0: the default
  index_t chunk_size = 0;  ///< signals per chunk; 0 picks one that bounds memory and time
};

/// Where the codes go. Signal i uses nnz[i] atoms, listed at indices[i*max_atoms ...] with
/// values values[i*max_atoms ...] in selection order (compact form), and/or as row i of `dense`.
/// Either compact array may be null when `dense` is given.
template <typename T>
struct OmpCodes {
  int32_t* indices = nullptr;  ///< size n_samples * max_atoms, or null
  T* values = nullptr;         ///< size n_samples * max_atoms, or null
  index_t* nnz = nullptr;      ///< size n_samples (required)
  T* dense = nullptr;          ///< size n_samples * n_components, or null; every element written
};

struct OmpStats {
  index_t n_premature = 0;  ///< signals stopped early because the next atom was degenerate
};

/// Sparse-codes every row of X. GEMMs run through `gemm` outside any OpenMP region; the
/// per-signal work runs on OpenMP threads. Signals are processed in chunks: extra memory is
/// O(chunk * n_components + n_components^2) whatever n_samples is. `interrupted` is polled
/// between chunks; when it returns true the call throws Interrupted.
template <typename T>
OmpStats sparse_encode_omp(const Gemm<T>& gemm, const OmpProblem<T>& problem,
                           const OmpOptions& options, const OmpCodes<T>& out,
                           const std::function<bool()>& interrupted = {});

/// Compact codes to CSR with sorted column indices. `indptr` (size n_samples + 1) is the prefix
/// sum of nnz, given by the caller; csr_indices / csr_values have size indptr[n_samples].
template <typename T>
void omp_codes_to_csr(index_t n_samples, index_t max_atoms, const OmpCodes<T>& codes,
                      const int64_t* indptr, int32_t* csr_indices, T* csr_values, int n_threads);

}  // namespace matcompress
