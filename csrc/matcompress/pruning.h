// Pruning: keep the highest-scoring entries of an m x n matrix, one by one (unstructured), in
// blocks of br x bc entries, or N of every M consecutive entries along a row (N:M, e.g. 2:4).
//
// Scores are non-negative (|A| for magnitude pruning, |A * G| for first-order Taylor pruning,
// Molchanov et al. 2017); the ranking uses |score|, so passing A itself gives magnitude pruning.
// A block's score is the L2 norm of its entries' scores; blocks are ranked by the squared norm,
// accumulated in double in row-major order within the block (for 1 x 1 blocks: the score itself).
//
// Selection of the n_keep highest block scores is a radix select on the order-preserving bits of
// the non-negative keys: a parallel histogram of the top 16 bits finds the bucket holding the
// threshold, a second parallel pass counts the blocks above it per block row and gathers that
// bucket's keys, and histograms of the remaining bits over the gathered keys give the exact
// threshold key. O(n) work, no sort. Equal keys at the threshold are kept in increasing flat
// block index (row-major over the grid of blocks) until n_keep blocks are kept.
// Every result is bitwise identical for any thread count.
#pragma once

#include <cstdint>

#include "common.h"

namespace matcompress {

/// The blocks kept by a pruning, as a rule: block u (flat, row-major over the block grid) with
/// key k is kept when k > key, or k == key and u <= last_tie.
struct PruneSelection {
  std::uint64_t key = 0;  ///< threshold key: score bits (blocks: float64 bits of the squared norm)
  index_t last_tie = -1;  ///< the last kept block among those whose key equals `key`
  index_t n_kept = 0;     ///< blocks kept
};

/// Keeps the n_keep blocks of br x bc entries with the highest scores, as CSR.
/// @param a        matrix, n_rows x n_cols, row-major: the kept values come from here
/// @param scores   n_rows x n_cols, non-negative and finite (only |score| is used); may be `a`
/// @param n_keep   blocks to keep, in [0, (n_rows / br) * (n_cols / bc)]
/// @param indptr   out: size n_rows + 1, row offsets
/// @param indices  out: size n_keep * br * bc, column indices (ascending within each row)
/// @param values   out: size n_keep * br * bc, the kept entries of `a`
/// br must divide n_rows and bc n_cols. Returns the selection rule.
template <typename T, typename S, typename I>
PruneSelection prune_csr(const T* a, const S* scores, index_t n_rows, index_t n_cols, index_t br,
                         index_t bc, index_t n_keep, int n_threads, std::int64_t* indptr,
                         I* indices, T* values);

/// The same selection as a keep mask.
/// @param mask     out: n_rows x n_cols, true where an entry is kept
template <typename S>
PruneSelection prune_mask(const S* scores, index_t n_rows, index_t n_cols, index_t br, index_t bc,
                          index_t n_keep, int n_threads, bool* mask);

/// N:M pruning: in every group of m consecutive entries along a row, keeps the n with the
/// highest scores (equal scores: the lower column first), as CSR.
/// @param indptr   out: size n_rows + 1 (row i starts at i * (n_cols / m) * n)
/// @param indices  out: size n_rows * (n_cols / m) * n, column indices, ascending within each row
/// @param values   out: the same size, the kept entries of `a`
/// 1 <= n <= m, and m must divide n_cols.
template <typename T, typename S, typename I>
void prune_n_m_csr(const T* a, const S* scores, index_t n_rows, index_t n_cols, index_t n,
                   index_t m, int n_threads, std::int64_t* indptr, I* indices, T* values);

/// N:M pruning as a keep mask (n_rows x n_cols).
template <typename S>
void prune_n_m_mask(const S* scores, index_t n_rows, index_t n_cols, index_t n, index_t m,
                    int n_threads, bool* mask);

}  // namespace matcompress
