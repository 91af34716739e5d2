// k-means codebooks for weight quantization: scalar (1-D) k-means, the hot case (kmeans.cc),
// and k-means of short blocks (vectors) of weights (kmeans_block.cc).
//
// Scalar: the values are sorted once (radix sort) and equal values merged; every later step works on the
// distinct sorted values through prefix sums of weight, weight*value and weight*value^2:
//  - Lloyd: each iteration is O(k log m) (clusters are the ranges between centroid midpoints);
//    the start is greedy k-means++ as scikit-learn's, sampled and scored with the prefix sums;
//  - optimal: the exact minimum of the within-cluster sum of squares by dynamic programming
//    (Wang & Song 2011, Ckmeans.1d.dp), divide-and-conquer over the monotone split points,
//    O(k m log m) time, with checkpointed layers so memory stays within a bound for any m.
#pragma once

#include <cstdint>

#include "blas.h"
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

// --- blocks ------------------------------------------------------------------------------------
// Lloyd's algorithm on n points of `dim` coordinates, as scikit-learn's KMeans(algorithm="lloyd")
// on the same start: the data is centred on its mean; each iteration assigns every point to its
// nearest centroid and moves each centroid to the weighted mean of its points; an empty cluster
// takes the point farthest from its centroid; the run stops when no point changes cluster or
// the summed squared centroid shift is <= tol times the mean variance of the coordinates. The
// nearest centroid comes from a register-tiled kernel fused with the arg-min (small dim) or from
// GEMM tiles of points x centroids with the arg-min on each tile; never an n x k matrix.
// The start is greedy k-means++ (scikit-learn's 2 + ln k trials per step), each step one
// vectorized pass over the points, or k distinct points drawn in proportion to their weights.
// Results are identical for any thread count.

struct KMeansBlockOptions {
  index_t max_iter = 100;
  double tol = 1e-6;                 ///< relative to the mean variance of the coordinates
  std::uint64_t seed = 0;            ///< k-means++ and sub-sampling
  index_t n_init = 1;                ///< runs from different starts; the best is kept
  bool random_init = false;          ///< start from k distinct points drawn with probability
                                     ///< proportional to weight, instead of k-means++
  index_t max_points_per_centroid = 0;  ///< > 0: the start and Lloyd run on a random sample
                                        ///< of at most k * this many points (codes cover all)
  int n_threads = 0;
};

struct KMeansBlockResult {
  double inertia = 0.0;  ///< sum over points of weight * squared distance to its centroid
  index_t n_iter = 0;    ///< Lloyd iterations of the kept run
};

/// Block k-means of n points (row-major, n x dim, finite) into k centroids.
/// @param gemm     used for the distance tiles when dim is large and it runs on the caller thread
/// @param weight   sample weights >= 0 (some > 0), size n, or null for all ones
/// @param init     starting centroids, k x dim, or null for k-means++
/// @param centers  out: k x dim
/// @param labels   out: size n, each point's centroid (the first of equally near ones)
template <typename T>
KMeansBlockResult kmeans_block(const Gemm<T>& gemm, const T* x, const T* weight, index_t n,
                               index_t dim, index_t k, const T* init,
                               const KMeansBlockOptions& options, T* centers, int32_t* labels);

/// Nearest of k centroids (k x dim) for each of n points; returns the weighted sum of squared
/// distances (weight may be null).
template <typename T>
double kmeans_assign(const Gemm<T>& gemm, const T* x, const T* weight, index_t n, index_t dim,
                     const T* centers, index_t k, int n_threads, int32_t* labels);

}  // namespace matcompress
