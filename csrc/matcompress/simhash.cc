// Simhash compression (see simhash.h for the contract); simhash_tile.cc generates the
// projection, one copy per instruction set.
#include "simhash.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "philox.h"
#include "simhash_tile.h"

namespace matcompress {
namespace {

constexpr index_t kTileElems = index_t(1) << 20;  // elements of an R tile, at most (or 16 rows)
constexpr index_t kMaxTileRows = 512;             // rows of an R tile, at most
constexpr index_t kMinTileRows = 16;
constexpr index_t kBlock = 256;       // rows of P and G blocks, columns of G and S blocks
constexpr index_t kPCols = 128;       // columns of P blocks (finer: balances the gram blocks)
constexpr index_t kPackCols = 64;     // columns per task of the sign/pack pass (whole bytes)
constexpr index_t kGenChunk = 16384;  // Gaussian numbers per task (aligned: whole batches)
// A Gaussian number costs about as much as this many multiply-adds of a BLAS GEMM (measured:
// 2 ns with AVX-512, 10 ns generic, against ~0.03 ns per multiply-add): weighs the direct
// route's regeneration of R, and sizes the generation's thread count.
constexpr double kGenCost = 100.0;

index_t blocks_of(index_t n, index_t b) { return (n + b - 1) / b; }

// Elements [e0, e0 + count) of the stream of `seed` into out, in parallel over chunks aligned to
// absolute element indices (the bits do not depend on the partition anyway).
template <typename T>
void fill_gaussian(std::uint64_t seed, index_t e0, index_t count, T* out, int n_threads) {
  if (count <= 0) return;
  const GaussianFillFn<T> fill = gaussian_fill_kernel<T>(active_isa());
  const index_t first = e0 / kGenChunk, last = (e0 + count - 1) / kGenChunk;
  const int nt = resolve_threads(resolve_threads_for_work(n_threads, count * kGenCost * 0.3),
                                 last - first + 1);
  parallel_for(first, last + 1, nt, 1, [&](index_t c, int) {
    const index_t a = std::max(e0, c * kGenChunk);
    const index_t b = std::min(e0 + count, (c + 1) * kGenChunk);
    fill(seed, static_cast<std::uint64_t>(a), b - a, out + (a - e0));
  });
}

// One GEMM block of a tile: P[r0:r1, c0:c1] (+)= R[:, r0:r1]^T A_tile[:, c0:c1], or for the
// gram route G[r0:r1, c0:c1] (+)= R[:, r0:r1]^T R[:, c0:c1] (upper blocks only, c0 >= r0).
struct Block {
  index_t r0, r1, c0, c1;
  bool gram;
};

}  // namespace

index_t simhash_tile_rows(index_t k) {
  return std::clamp(kTileElems / std::max<index_t>(k, 1), kMinTileRows, kMaxTileRows);
}

template <typename T>
void simhash_projection(std::uint64_t seed, index_t m, index_t k, index_t row0, index_t rows,
                        T* out, int n_threads) {
  MC_CHECK(m >= 1 && k >= 1, "simhash_projection: need m >= 1 and k >= 1; got m=" << m
                                                                                  << ", k=" << k);
  MC_CHECK(row0 >= 0 && rows >= 0 && row0 <= m && rows <= m - row0,
           "simhash_projection: rows [" << row0 << ", " << row0 + rows << ") outside [0, " << m
                                        << ")");
  MC_CHECK(rows == 0 || out != nullptr, "simhash_projection: null output");
  fill_gaussian(seed, row0 * k, rows * k, out, n_threads);
}

void gaussian_reference(std::uint64_t seed, std::uint64_t e0, index_t count, double* out) {
  for (index_t i = 0; i < count; ++i)
    out[i] = philox::gaussian_element(seed, e0 + static_cast<std::uint64_t>(i));
}

template <typename T>
void simhash_encode(const Gemm<T>& gemm, const T* A, index_t m, index_t n, index_t k,
                    std::uint64_t seed, const SimhashOptions& o, std::uint8_t* bits, T* scale) {
  MC_CHECK(m >= 1 && n >= 1 && k >= 1, "simhash_encode: need m, n, k >= 1; got m="
                                           << m << ", n=" << n << ", k=" << k);
  MC_CHECK(A != nullptr && bits != nullptr && scale != nullptr, "simhash_encode: null pointer");
  const int n_threads = o.n_threads;
  const index_t tm = simhash_tile_rows(k);
  const index_t n_tiles = blocks_of(m, tm);
  const double dm = double(m), dn = double(n), dk = double(k);
  // R whole when it is no larger than P (or 2^22 numbers): then every GEMM task runs through all
  // the tiles with no barrier between them. Otherwise one tile at a time. The GEMM calls (and
  // so the bits) are the same either way.
  const index_t resident_cap = o.max_resident >= 0 ? o.max_resident
                                                   : std::max<index_t>(index_t(1) << 22, k * n);
  const bool resident = m <= resident_cap / k;
  // The cheaper route for the denominators, in multiply-adds (G's upper blocks plus G S, against
  // R S plus regenerating R when it is not resident); G at most max(2^24, k n) elements.
  SimhashNorms norms = o.norms;
  if (norms == SimhashNorms::automatic) {
    const bool fits = dk * dk <= std::max(double(1 << 24), dk * dn);
    const double gram_cost = dm * dk * (dk + double(kBlock)) / 2 + dk * dk * dn;
    const double direct_cost = dm * dk * dn + (resident ? 0.0 : kGenCost * dm * dk);
    norms = fits && gram_cost <= direct_cost ? SimhashNorms::gram : SimhashNorms::direct;
  }
  const bool gram = norms == SimhashNorms::gram;
  std::unique_ptr<T[]> R(new T[static_cast<size_t>((resident ? m : tm) * k)]);
  if (resident) fill_gaussian(seed, 0, m * k, R.get(), n_threads);

  // Runs task(i, tid, t) for every task i and tile t, each task's tiles in order.
  auto over_tiles = [&](index_t n_tasks, double work, auto&& task) {
    if (resident) {
      run_gemm_tasks(gemm, n_tasks, n_threads, work, [&](index_t i, int tid) {
        for (index_t t = 0; t < n_tiles; ++t) task(i, tid, t, R.get() + t * tm * k);
      });
    } else {
      for (index_t t = 0; t < n_tiles; ++t) {
        const index_t row0 = t * tm;
        fill_gaussian(seed, row0 * k, std::min(tm, m - row0) * k, R.get(), n_threads);
        run_gemm_tasks(gemm, n_tasks, n_threads, work / double(n_tiles),
                       [&](index_t i, int tid) { task(i, tid, t, R.get()); });
      }
    }
  };
  auto rows_of = [&](index_t t) { return std::min(tm, m - t * tm); };

  // Pass 1: P = R^T A (and G = R^T R) on a fixed partition into blocks, the gram ones first
  // (the larger ones, so the dynamic schedule ends on small ones).
  std::vector<Block> blocks;
  const index_t kb = blocks_of(k, kBlock), nb = blocks_of(n, kPCols);
  if (gram)
    for (index_t i = 0; i < kb; ++i)
      for (index_t j = i; j < kb; ++j)
        blocks.push_back({i * kBlock, std::min(k, (i + 1) * kBlock), j * kBlock,
                          std::min(k, (j + 1) * kBlock), true});
  for (index_t i = 0; i < kb; ++i)
    for (index_t j = 0; j < nb; ++j)
      blocks.push_back({i * kBlock, std::min(k, (i + 1) * kBlock), j * kPCols,
                        std::min(n, (j + 1) * kPCols), false});
  std::unique_ptr<T[]> P(new T[static_cast<size_t>(k * n)]);  // written by the first tile
  std::unique_ptr<T[]> G(gram ? new T[static_cast<size_t>(k * k)] : nullptr);
  over_tiles(static_cast<index_t>(blocks.size()), dm * dk * (dn + (gram ? dk / 2 : 0.0)),
             [&](index_t b, int, index_t t, const T* Rt) {
               const Block& q = blocks[static_cast<size_t>(b)];
               const index_t rows = rows_of(t);
               const T beta = t == 0 ? T(0) : T(1);
               if (q.gram)
                 gemm(true, false, q.r1 - q.r0, q.c1 - q.c0, rows, T(1), Rt + q.r0, k, Rt + q.c0,
                      k, beta, G.get() + q.r0 * k + q.c0, k);
               else
                 gemm(true, false, q.r1 - q.r0, q.c1 - q.c0, rows, T(1), Rt + q.r0, k,
                      A + t * tm * n + q.c0, n, beta, P.get() + q.r0 * n + q.c0, n);
             });
  if (gram)  // the lower triangle from the upper one
    for (index_t i = 1; i < k; ++i)
      for (index_t j = 0; j < i; ++j) G[i * k + j] = G[j * k + i];

  // Signs: bits, the numerators sum_t |P[t, j]|, and P turned into S (+-1) in place. Tasks own
  // whole bytes of columns; every column is summed in row order.
  const index_t row_bytes = blocks_of(n, 8);
  std::vector<double> num(static_cast<size_t>(n), 0.0), den(static_cast<size_t>(n), 0.0);
  {
    const index_t n_tasks = blocks_of(n, kPackCols);
    const int nt = resolve_threads(resolve_threads_for_work(n_threads, dk * dn * 4), n_tasks);
    parallel_for(0, n_tasks, nt, 1, [&](index_t c, int) {
      const index_t j0 = c * kPackCols, j1 = std::min(n, j0 + kPackCols);
      for (index_t t = 0; t < k; ++t) {
        T* p = P.get() + t * n;
        std::uint8_t* out = bits + t * row_bytes;
        for (index_t jb = j0; jb < j1; jb += 8) {
          unsigned byte = 0;
          const index_t je = std::min(j1, jb + 8);
          for (index_t j = jb; j < je; ++j) {
            const bool pos = p[j] >= T(0);
            num[static_cast<size_t>(j)] += std::fabs(double(p[j]));
            byte |= unsigned(pos) << (j - jb);
            p[j] = pos ? T(1) : T(-1);
          }
          out[jb / 8] = static_cast<std::uint8_t>(byte);
        }
      }
    });
  }

  // Denominators ||R s_j||^2, per block of columns [c0, c0 + w).
  const index_t n_col_blocks = blocks_of(n, kBlock);
  const int max_threads =
      gemm.runs_on_caller_thread() ? resolve_threads(n_threads, n_col_blocks) : 1;
  const T* S = P.get();
  if (gram) {
    // s_j^T (G S)_j, with Y = G S[:, c0:c0 + w] (k x w).
    std::vector<T> Y(static_cast<size_t>(max_threads * k * kBlock));
    run_gemm_tasks(gemm, n_col_blocks, max_threads, dk * dk * dn, [&](index_t c, int tid) {
      const index_t c0 = c * kBlock, w = std::min(n, c0 + kBlock) - c0;
      T* y = Y.data() + static_cast<size_t>(tid) * k * kBlock;
      gemm(false, false, k, w, k, T(1), G.get(), k, S + c0, n, T(0), y, w);
      for (index_t t = 0; t < k; ++t)
        for (index_t j = 0; j < w; ++j)
          den[static_cast<size_t>(c0 + j)] += double(S[t * n + c0 + j]) * double(y[t * w + j]);
    });
  } else {
    // sum_i (R S)[i, j]^2, tile by tile: Y = R_tile S[:, c0:c0 + w] (rows x w).
    std::vector<T> Y(static_cast<size_t>(max_threads * tm * kBlock));
    over_tiles(n_col_blocks, dm * dk * dn, [&](index_t c, int tid, index_t t, const T* Rt) {
      const index_t c0 = c * kBlock, w = std::min(n, c0 + kBlock) - c0, rows = rows_of(t);
      T* y = Y.data() + static_cast<size_t>(tid) * tm * kBlock;
      gemm(false, false, rows, w, k, T(1), Rt, k, S + c0, n, T(0), y, w);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < w; ++j) {
          const double v = y[i * w + j];
          den[static_cast<size_t>(c0 + j)] += v * v;
        }
    });
  }
  for (index_t j = 0; j < n; ++j) {
    const double a = num[static_cast<size_t>(j)], b = den[static_cast<size_t>(j)];
    scale[j] = a > 0 && b > 0 ? static_cast<T>(a / b) : T(0);
  }
}

template void simhash_projection<float>(std::uint64_t, index_t, index_t, index_t, index_t,
                                        float*, int);
template void simhash_projection<double>(std::uint64_t, index_t, index_t, index_t, index_t,
                                         double*, int);
template void simhash_encode<float>(const Gemm<float>&, const float*, index_t, index_t, index_t,
                                    std::uint64_t, const SimhashOptions&, std::uint8_t*, float*);
template void simhash_encode<double>(const Gemm<double>&, const double*, index_t, index_t,
                                     index_t, std::uint64_t, const SimhashOptions&,
                                     std::uint8_t*, double*);

}  // namespace matcompress
