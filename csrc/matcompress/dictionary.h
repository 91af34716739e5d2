// Dictionary learning on top of Batch-OMP: the dictionary-update half of each iteration of
// K-SVD (approximate form, Rubinstein, Zibulevsky & Elad 2008), MOD (Engan, Aase & Husoy 1999)
// and online dictionary learning (Mairal, Bach, Ponce & Sapiro 2009). The caller alternates
// sparse_encode_omp with these steps; every matrix is row-major and atoms are rows of unit norm.
#pragma once

#include <cstdint>

#include "blas.h"
#include "common.h"

namespace matcompress {

/// Compact sparse codes as sparse_encode_omp writes them: signal i uses nnz[i] atoms, listed at
/// indices[i * max_atoms ...] with values values[i * max_atoms ...].
template <typename T>
struct CompactCodes {
  int32_t* indices = nullptr;  ///< size n_signals * max_atoms
  T* values = nullptr;         ///< size n_signals * max_atoms
  index_t* nnz = nullptr;      ///< size n_signals
  index_t max_atoms = 0;
};

/// One iteration of batch dictionary learning (K-SVD, MOD). Everything but X is updated in place
/// by batch_dictionary_step.
template <typename T>
struct BatchDictState {
  const T* X = nullptr;     ///< signals, size n_samples * n_features
  index_t n_samples = 0;
  index_t n_features = 0;
  T* dictionary = nullptr;  ///< unit-norm atoms, size n_components * n_features
  index_t n_components = 0;
  CompactCodes<T> codes;    ///< OMP codes over the dictionary (n_samples rows)
  T* residual = nullptr;    ///< out: X - codes * dictionary, size n_samples * n_features
  T* row_error = nullptr;   ///< out: squared norm of each residual row, size n_samples
};

enum class DictUpdate { ksvd, mod };

struct DictStepOptions {
  int n_threads = 0;                 ///< OpenMP threads; <= 0: the default
  double duplicate_threshold = 0.95;  ///< |cosine| above which two atoms are duplicates
};

struct DictStepStats {
  double sq_error = 0.0;         ///< ||X - codes D||^2 after the step
  index_t n_unused = 0;          ///< unused atoms replaced by badly represented signals
  index_t n_duplicates = 0;      ///< duplicate atoms replaced
};

/// One iteration of batch dictionary learning after the coding step (state.codes: OMP codes over
/// state.dictionary):
///  1. the dictionary update, which never increases the error for the given supports: `ksvd`
///     updates atom after atom (in `atom_order`, a permutation of 0..n_components-1, or 0, 1, ...
///     when null) by one power-iteration step on the residual of the signals using it, with their
///     coefficients; `mod` solves the least-squares dictionary (codes^T codes) D = codes^T X by
///     Cholesky, then rescales atoms to unit norm and codes inversely;
///  2. unused atoms are replaced by the worst-represented signals (normalised); of each pair of
///     duplicate atoms (|cosine| above the threshold) the less used one is merged into the other
///     (its coefficients move over, scaled by the cosine: the error grows by at most
///     (1 - threshold^2) times their squared sum) and replaced too.
/// The residual and row errors are written for the final codes and dictionary. GEMM and the
/// solver are called outside OpenMP regions. Results do not depend on the number of threads.
template <typename T>
DictStepStats batch_dictionary_step(DictUpdate method, const Gemm<T>& gemm,
                                    const PosvSolver<T>& posv, const BatchDictState<T>& state,
                                    const int32_t* atom_order, const DictStepOptions& options);

/// Online dictionary learning: the sufficient statistics and the dictionary.
template <typename T>
struct OnlineDictState {
  T* dictionary = nullptr;  ///< unit-norm atoms, size n_components * n_features
  index_t n_components = 0;
  index_t n_features = 0;
  T* A = nullptr;           ///< sum of code outer products, size n_components * n_components
  T* B = nullptr;           ///< sum of codes^T X, size n_components * n_features
};

struct OnlineStepStats {
  double sq_error = 0.0;   ///< ||X_b - codes D||^2 of the mini-batch, before the update
  index_t n_replaced = 0;  ///< dead or duplicate atoms replaced by badly represented signals
};

/// One mini-batch of online dictionary learning (Mairal et al. 2009, Algorithm 1 with L0 codes):
/// A <- beta A + weight codes^T codes, B <- beta B + weight codes^T X_b, then one pass of block
/// coordinate descent over the atoms (blocks of atoms, GEMM between blocks), each atom projected
/// back to unit norm. Atoms no signal has used (A_jj ~ 0) and the less used atom of each duplicate
/// pair are replaced by the batch's worst-represented signals and their statistics cleared.
/// @param X      the mini-batch, size n * n_features
/// @param codes  its OMP codes over the current dictionary (n rows)
/// @param gram   optional out: the updated dictionary's Gram matrix D D^T, size
///               n_components^2 (computed anyway to find duplicates; the next batch's coding
///               can reuse it)
template <typename T>
OnlineStepStats online_dictionary_step(const Gemm<T>& gemm, const OnlineDictState<T>& state,
                                       const T* X, index_t n, const CompactCodes<T>& codes,
                                       T beta, T weight, const DictStepOptions& options,
                                       T* gram = nullptr);

}  // namespace matcompress
