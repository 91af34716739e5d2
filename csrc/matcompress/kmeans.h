// k-means codebooks for weight quantization. This file: scalar (1-D) k-means, the hot case.
// The values are sorted once (radix sort) and equal values merged; every later step works on the
// distinct sorted values through prefix sums of weight, weight*value and weight*value^2:
//  - Lloyd: each iteration is O(k log m) (clusters are the ranges between centroid midpoints);
//    the start is greedy k-means++ as scikit-learn's, sampled and scored with the prefix sums;
//  - optimal: the exact minimum of the within-cluster sum of squares by dynamic programming
//    (Wang & Song 2011, Ckmeans.1d.dp), divide-and-conquer over the monotone split points,
//    O(k m log m) time, with checkpointed layers so memory stays within a bound for any m.
#pragma once

#include <cstdint>

#include "common.h"

namespace matcompress {

enum class KMeans1DMethod { lloyd, optimal };

struct KMeans1DOptions {
  KMeans1DMethod method = KMeans1DMethod::lloyd;
  index_t max_iter = 100;     ///< Lloyd iterations at most
  double tol = 1e-6;          ///< Lloyd stops when the summed squared centroid shift is <= tol
                              ///< times the (weighted) variance of the values, as scikit-learn
  std::uint64_t seed = 0;     ///< k-means++ sampling
  index_t n_init = 1;         ///< Lloyd: runs from different k-means++ starts; the best is kept
  double memory_budget = 256.0 * 1024 * 1024;  ///< bytes for the optimal method's split points
  int n_threads = 0;
};

struct KMeans1DResult {
  double inertia = 0.0;   ///< sum over values of weight * (value - its codebook entry)^2
  index_t n_iter = 0;     ///< Lloyd iterations of the kept run (0 for optimal)
  index_t n_distinct = 0; ///< distinct values
};

/// Scalar k-means of n values into k codes.
/// @param x         values, size n (finite)
/// @param weight    sample weights >= 0, size n, or null for all ones
/// @param init      Lloyd's starting centroids, size k, or null for k-means++
/// @param codebook  out: size k, ascending; when k >= the number of distinct values the codebook
///                  holds each distinct value once, then repeats the largest
/// @param codes     out: size n, the index of each value's codebook entry
template <typename T>
KMeans1DResult kmeans_1d(const T* x, const T* weight, index_t n, index_t k, const T* init,
                         const KMeans1DOptions& options, T* codebook, int32_t* codes);

}  // namespace matcompress
