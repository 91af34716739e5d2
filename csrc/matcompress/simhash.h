// Simhash compression: A (m x n) ~ (R S) diag(scale), with R (m x k) a Gaussian projection
// regenerated from a 64-bit seed (never stored; philox.h defines every element), S = sign(R^T A)
// (k x n, +1 where R^T A >= 0) stored as bits, and per-column scales chosen by least squares:
//   scale_j = <A_j, R s_j> / ||R s_j||^2,  <A_j, R s_j> = sum_t |P[t, j]|,  P = R^T A,
// and 0 for a column whose numerator or denominator is 0 (a zero column of A).
//
// P is accumulated over fixed tiles of rows of A, R generated tile by tile; every GEMM goes
// through the injected Gemm on a fixed partition of the work (sized from m, n, k only), in a
// fixed order, so the results are bitwise identical for any thread count. ||R s_j||^2 comes from
//  - gram:   G = R^T R accumulated over the same tiles, then s_j^T G s_j (one GEMM G S), or
//  - direct: a second pass that regenerates R tile by tile and sums the squares of R S;
// automatic picks the cheaper (per row of A, the gram route needs about k^2 / 2 + k^2 n / m
// multiply-adds, the direct one k n, plus regenerating R when it is not held whole) within the
// memory bound below.
//
// Memory (elements of T): P, k * n (reused for S); R, whole (m * k) when that is at most
// max(2^22, k * n), else one tile of tile_rows(k) * k (at most 2^20, or 16 k); the gram route's G,
// k * k (chosen automatically only when that is at most max(2^24, k * n)); and per thread one
// GEMM product block of at most max(k, tile_rows(k)) * 256. A itself is read in place.
#pragma once

#include <cstdint>

#include "blas.h"
#include "common.h"

namespace matcompress {

enum class SimhashNorms { automatic, gram, direct };

struct SimhashOptions {
  int n_threads = 0;
  SimhashNorms norms = SimhashNorms::automatic;
  /// R is generated whole when it has at most this many elements (then the GEMM tasks run
  /// through every tile without a barrier between tiles), else one tile at a time; the results
  /// are the same. -1: max(2^22, k * n), i.e. R is never larger than P or 2^22 numbers.
  index_t max_resident = -1;
};

/// Rows of R in one tile for k columns: R tiles are tile_rows(k) x k (fixed by k alone).
index_t simhash_tile_rows(index_t k);

/// Rows [row0, row0 + rows) of the projection R (m x k) of `seed` (philox.h's definition).
/// @param out  size rows * k, row-major
template <typename T>
void simhash_projection(std::uint64_t seed, index_t m, index_t k, index_t row0, index_t rows,
                        T* out, int n_threads = 0);

/// Elements [e0, e0 + count) of the Gaussian stream of `seed`, one at a time by the scalar
/// definition (philox::gaussian_element): the reference the fast generator is tested against.
void gaussian_reference(std::uint64_t seed, std::uint64_t e0, index_t count, double* out);

/// Simhash of A (m x n, row-major, finite) with k sign bits per column.
/// @param gemm   the BLAS; called from inside OpenMP regions when it runs on the caller thread,
///               else outside them on the same blocks (then its own threads do the work)
/// @param bits   out: size k * ceil(n / 8); row t holds the signs of P[t, :], bit j % 8 of byte
///               j / 8 (little-endian) set where P[t, j] >= 0; padding bits 0
/// @param scale  out: size n
template <typename T>
void simhash_encode(const Gemm<T>& gemm, const T* A, index_t m, index_t n, index_t k,
                    std::uint64_t seed, const SimhashOptions& options, std::uint8_t* bits,
                    T* scale);

}  // namespace matcompress
