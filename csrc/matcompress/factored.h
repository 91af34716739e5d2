// Products with factored matrices, y = x · W̃ for x of shape (batch, m), and their gradients,
// computed from the factors: the dense W̃ (m x n) is never built. All matrices are row-major.
//
// Forms (W̃ in terms of its factors; see python/matcompress/factors.py):
//   low rank      W̃ = L R,                          L (m x r), R (r x n)
//   sparse codes  W̃ = C D,                          C (m x k) with s entries per row, D (k x n)
//   codebook      W̃[i, jb:(j+1)b] = cb[code(i, j)], cb (n_codes x b), codes 4/8/16/32-bit
//   sign bits     W̃ = (P S) diag(scale),            P (m x k) Gaussian regenerated from a seed
//                                                    (simhash.h), S (k x n) signs stored as bits
//   pruned        W̃ = the CSR entries
//
// Backward passes take dy (batch x n) and return dx = dy W̃ᵀ (batch x m) and the gradients of
// the trainable parts of L = <dy, x W̃>; every output pointer may be null (not wanted). Discrete
// parts (codes, indices, bits, the CSR pattern) are fixed.
//
// Threads: OpenMP over fixed output tiles (columns of y, rows of W̃ for dx and the gradients);
// every sum runs in an order fixed by the shapes alone, so results are bitwise identical for any
// thread count. GEMMs go through the injected Gemm: from inside the OpenMP regions when it runs
// on the caller thread, else one task after another with the BLAS using its own threads.
// Memory: none of these allocates a dense m x n temporary; each function's comment says what it
// allocates.
#pragma once

#include <cstdint>

#include "blas.h"
#include "common.h"

namespace matcompress {

/// y = x · W for W (m x n) stored as 4-bit codes into a scalar codebook of at most 16 entries:
/// W[i, j] = codebook[code(i, j)], codes packed two per byte along each row, the even column in
/// the low nibble (row stride `row_bytes` >= ceil(n / 2)); x of size m, y of size n (written).
/// The codes are decoded in registers (a 16-entry lookup by one permute on AVX-512, two on
/// AVX2); threads own disjoint column tiles and add the rows in order, so the result is the same
/// for any thread count. Allocates nothing.
void codebook4_gemv(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
                    index_t n, const float* codebook, index_t n_codes, float* y, int n_threads);

/// z = t · S for S (k x n) stored as sign bits (bit j % 8 of byte j / 8 of row r set: +1, else
/// -1; row stride `row_bytes`); t of size k, z of size n (written). The signs are applied in
/// registers (the bits of a row flip the signs of a broadcast t[r]); threads own column tiles.
/// Allocates nothing.
void signs_gemv(const float* t, const std::uint8_t* bits, index_t row_bytes, index_t k,
                index_t n, float* z, int n_threads);

// ---- low rank -------------------------------------------------------------------------------

template <typename T>
struct LowRankView {
  const T* left;   ///< m x r
  const T* right;  ///< r x n
  index_t m, r, n;
};

/// y (batch x n) = (x L) R. Allocates batch x r.
template <typename T>
void lowrank_matmul(const Gemm<T>& gemm, const LowRankView<T>& w, const T* x, index_t batch,
                    T* y, int n_threads);

/// dx = (dy Rᵀ) Lᵀ, dL = xᵀ (dy Rᵀ), dR = (x L)ᵀ dy. Allocates batch x r (twice when dR is
/// wanted).
template <typename T>
void lowrank_matmul_backward(const Gemm<T>& gemm, const LowRankView<T>& w, const T* x,
                             const T* dy, index_t batch, T* dx, T* dleft, T* dright,
                             int n_threads);

// ---- sparse codes ---------------------------------------------------------------------------

template <typename T>
struct SparseCodesView {
  const std::int32_t* indices;  ///< m x s, in [0, k)
  const T* values;              ///< m x s
  const T* dictionary;          ///< k x n
  index_t m, s, k, n;
};

/// y = (x C) D: C as a CSR matrix (each row's entries in atom order: in place when the rows
/// are so, else a sorted copy), x C by the CSR product below, then one GEMM. Allocates
/// batch x k, (m + k) x batch and, for unsorted rows, the copy.
template <typename T>
void sparse_codes_matmul(const Gemm<T>& gemm, const SparseCodesView<T>& w, const T* x,
                         index_t batch, T* y, int n_threads);

/// g = dy Dᵀ (batch x k); dx[:, i] = sum_t values[i, t] g[:, indices[i, t]];
/// dvalues[i, t] = <x[:, i], g[:, indices[i, t]]> (the CSR backward on the sorted copy);
/// dD = (x C)ᵀ dy. Allocates batch x k twice, (m + k) x batch and, for unsorted rows, the
/// sorted copy.
template <typename T>
void sparse_codes_matmul_backward(const Gemm<T>& gemm, const SparseCodesView<T>& w, const T* x,
                                  const T* dy, index_t batch, T* dx, T* dvalues, T* ddictionary,
                                  int n_threads);

// ---- codebook -------------------------------------------------------------------------------

enum class CodeFormat : int {
  u4 = 0,   ///< two codes per byte, the even block in the low nibble (n_codes <= 16)
  u8 = 1,
  u16 = 2,
  u32 = 3,
};

template <typename T>
struct CodebookView {
  const void* codes;    ///< m rows of n / block codes; row i starts at element i * row_stride
  CodeFormat format;
  index_t row_stride;   ///< in code elements (bytes for u4)
  const T* codebook;    ///< n_codes x block
  index_t n_codes, block;
  index_t m, n;         ///< n a multiple of block
};

/// y = x W. Batch 1, float, 4-bit scalar codes: codebook4_gemv. Otherwise tiles of W (256 x 256)
/// are decoded into a per-thread buffer and multiplied by GEMM. Allocates one tile per thread.
template <typename T>
void codebook_matmul(const Gemm<T>& gemm, const CodebookView<T>& w, const T* x, index_t batch,
                     T* y, int n_threads);

/// dx = dy Wᵀ by decoded tiles; dcodebook[c] = the sum of (xᵀ dy)[i, j] over the positions
/// holding entry c (a segment sum over the code map), (xᵀ dy) formed tile by tile. Allocates two
/// tiles per thread and, for dcodebook, n_codes x block partial sums per group of row tiles (at
/// most 16 groups).
template <typename T>
void codebook_matmul_backward(const Gemm<T>& gemm, const CodebookView<T>& w, const T* x,
                              const T* dy, index_t batch, T* dx, T* dcodebook, int n_threads);

// ---- sign bits ------------------------------------------------------------------------------

template <typename T>
struct SignBitsView {
  const std::uint8_t* bits;  ///< k rows of ceil(n / 8) bytes; bit j % 8 of byte j / 8 is S[t, j] > 0
  const T* scale;            ///< n
  std::uint64_t seed;        ///< of the projection P (m x k), simhash_projection
  index_t m, k, n;
};

/// y = ((x P) S) diag(scale): x P by GEMM over tiles of P regenerated per thread, then the sign
/// product (batch 1, float: a bit-mask GEMV in registers; else decoded ±1 tiles and GEMM).
/// Allocates batch x k and one tile of P and of S per thread.
template <typename T>
void signbits_matmul(const Gemm<T>& gemm, const SignBitsView<T>& w, const T* x, index_t batch,
                     T* y, int n_threads);

/// dx = ((dy diag(scale)) Sᵀ) Pᵀ; dscale[j] = <dy[:, j], ((x P) S)[:, j]> (recomputes the
/// forward product without the scale). Allocates batch x k (x2 for dscale), batch x n for
/// dscale, and tiles per thread.
template <typename T>
void signbits_matmul_backward(const Gemm<T>& gemm, const SignBitsView<T>& w, const T* x,
                              const T* dy, index_t batch, T* dx, T* dscale, int n_threads);

// ---- pruned (CSR) ---------------------------------------------------------------------------

template <typename T>
struct PrunedView {
  const std::int64_t* indptr;  ///< m + 1
  const void* indices;         ///< nnz column indices, non-decreasing within each row
  bool indices16;              ///< uint16 indices, else int32
  const T* values;             ///< nnz values, or null when the entries are coded:
  const void* codes = nullptr;  ///< nnz uint8 (code_bytes 1) or uint16 (2) codes into
  int code_bytes = 0;
  const T* codebook = nullptr;  ///< n_codes scalars (pruning then quantizing)
  index_t n_codes = 0;
  index_t m = 0, n = 0;
};

/// y = x W: x transposed to m x batch, then per tile of columns (owned by one thread; the tile
/// of yᵀ about 128 KiB) each row's entries in the tile add w * x[:, i] into it. Allocates
/// (m + n) x batch. Batch 1: one pass over the entries into a partial y per group of rows (8
/// fixed groups), summed in order; allocates 8 n.
template <typename T>
void pruned_matmul(const PrunedView<T>& w, const T* x, index_t batch, T* y, int n_threads);

/// dx[:, i] = sum_p values[p] dy[:, j_p] over the entries of row i; dvalues[p] =
/// <x[:, i], dy[:, j_p]>; threads own rows. Allocates (m + n) x batch.
template <typename T>
void pruned_matmul_backward(const PrunedView<T>& w, const T* x, const T* dy, index_t batch,
                            T* dx, T* dvalues, int n_threads);

/// Checks a CSR pattern: indptr starts at 0 and never decreases, indices lie in [0, n) and do
/// not decrease within a row. Throws std::invalid_argument naming the first bad entry.
template <typename Idx>
void check_csr(const std::int64_t* indptr, const Idx* indices, index_t m, index_t n,
               index_t nnz);

}  // namespace matcompress
