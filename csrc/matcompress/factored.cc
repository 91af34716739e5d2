// Products with factored matrices and their gradients (see factored.h for the contract);
// factored_tile.cc holds the per-instruction-set kernels (batch-1 GEMVs, CSR tiles).
#include "factored.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "factored_tile.h"
#include "simhash_tile.h"

namespace matcompress {
namespace {

constexpr index_t kTileRows = 256;   // rows of a decoded tile of W (the GEMM's inner dimension)
constexpr index_t kTileCols = 256;   // columns of a decoded tile of W (about: whole blocks)
constexpr index_t kMaxGroups = 16;   // partial sums of a codebook gradient (fixed by m only)
constexpr index_t kGemmPanel = 128;  // columns of C per task of a split GEMM
constexpr index_t kGemmRows = 32;    // or rows, when C is narrow
constexpr index_t kCsrGroups = 8;    // row groups of a batch-1 CSR product (partial ys)

index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// ---- helpers --------------------------------------------------------------------------------

// C = alpha op(A) op(B) + beta C as one BLAS call, or, when the BLAS runs on the caller thread,
// split into fixed panels of C's columns (or rows, when C is narrow) run on OpenMP threads. The
// panels depend on the shapes alone, so the bits do not depend on the thread count.
template <typename T>
void parallel_gemm(const Gemm<T>& gemm, bool ta, bool tb, index_t m, index_t n, index_t k,
                   T alpha, const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c,
                   index_t ldc, int n_threads) {
  if (m <= 0 || n <= 0) return;
  const double work = double(m) * double(n) * double(k);
  if (!gemm.runs_on_caller_thread()) {  // the BLAS's own threads
    gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // The split follows the shapes only (a BLAS may round a panel differently from the whole):
  // with one thread the panels run one after the other.
  if (n >= 2 * kGemmPanel) {
    run_gemm_tasks(gemm, ceil_div(n, kGemmPanel), n_threads, work, [&](index_t t, int) {
      const index_t j0 = t * kGemmPanel, w = std::min(kGemmPanel, n - j0);
      const T* bp = tb ? b + j0 * ldb : b + j0;
      gemm(ta, tb, m, w, k, alpha, a, lda, bp, ldb, beta, c + j0, ldc);
    });
  } else if (m >= 2 * kGemmRows) {
    run_gemm_tasks(gemm, ceil_div(m, kGemmRows), n_threads, work, [&](index_t t, int) {
      const index_t i0 = t * kGemmRows, h = std::min<index_t>(kGemmRows, m - i0);
      const T* ap = ta ? a + i0 : a + i0 * lda;
      gemm(ta, tb, h, n, k, alpha, ap, lda, b, ldb, beta, c + i0 * ldc, ldc);
    });
  } else {
    gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

// out (cols x rows) = in (rows x cols)ᵀ, in blocks, in parallel over row blocks of out.
template <typename T>
void transpose(const T* in, index_t rows, index_t cols, index_t ld_in, T* out, int n_threads) {
  constexpr index_t B = 32;
  const int nt = resolve_threads_for_work(n_threads, double(rows) * double(cols), 4e6);
  parallel_for(0, ceil_div(cols, B), nt, 1, [&](index_t cb, int) {
    const index_t c0 = cb * B, c1 = std::min(cols, c0 + B);
    for (index_t r0 = 0; r0 < rows; r0 += B) {
      const index_t r1 = std::min(rows, r0 + B);
      for (index_t c = c0; c < c1; ++c)
        for (index_t r = r0; r < r1; ++r) out[c * rows + r] = in[r * ld_in + c];
    }
  });
}

// One buffer per thread, grown on first use.
template <typename T>
class ThreadBuffers {
 public:
  explicit ThreadBuffers(int n) : bufs_(static_cast<std::size_t>(std::max(n, 1))) {}
  T* get(int tid, index_t size) {
    std::vector<T>& b = bufs_[static_cast<std::size_t>(tid)];
    if (static_cast<index_t>(b.size()) < size) b.resize(static_cast<std::size_t>(size));
    return b.data();
  }

 private:
  std::vector<std::vector<T>> bufs_;
};

int max_threads(int n_threads) { return n_threads > 0 ? n_threads : default_threads(); }

// ---- products with a W decoded tile by tile -------------------------------------------------

// decode(i0, i1, j0, j1, out): rows [i0, i1) and columns [j0, j1) of W into out (row stride
// j1 - j0). Column tiles are `tile_cols` wide (whole blocks of a block codebook).

// y (batch x n) = x (batch x m) W: threads own column tiles and add the row tiles in order.
template <typename T, class Decode>
void decoded_matmul(const Gemm<T>& gemm, index_t m, index_t n, index_t tile_cols, const T* x,
                    index_t batch, T* y, int n_threads, Decode&& decode) {
  const index_t tasks = ceil_div(n, tile_cols);
  ThreadBuffers<T> bufs(max_threads(n_threads));
  const double work = double(m) * double(n) * double(batch + 4);
  run_gemm_tasks(gemm, tasks, n_threads, work, [&](index_t t, int tid) {
    const index_t j0 = t * tile_cols, cols = std::min(tile_cols, n - j0);
    T* tile = bufs.get(tid, kTileRows * cols);
    for (index_t i0 = 0; i0 < m; i0 += kTileRows) {
      const index_t rows = std::min(kTileRows, m - i0);
      decode(i0, i0 + rows, j0, j0 + cols, tile);
      gemm(false, false, batch, cols, rows, T(1), x + i0, m, tile, cols, i0 == 0 ? T(0) : T(1),
           y + j0, n);
    }
  });
}

// dx (batch x m) = dy (batch x n) Wᵀ, and for each tile of W the tile of xᵀ dy handed to
// grad_tile(group, i0, i1, j0, j1, G) when grad_tile is wanted. Threads own groups of row tiles
// (at most kMaxGroups, fixed by m), each group's tiles in order.
template <typename T, class Decode, class GradTile>
void decoded_backward(const Gemm<T>& gemm, index_t m, index_t n, index_t tile_cols, const T* x,
                      const T* dy, index_t batch, T* dx, bool want_grad, int n_threads,
                      Decode&& decode, GradTile&& grad_tile, index_t n_groups) {
  const index_t row_tiles = ceil_div(m, kTileRows);
  ThreadBuffers<T> bufs(max_threads(n_threads));
  ThreadBuffers<T> grads(max_threads(n_threads));
  const double work = double(m) * double(n) * double(batch * ((dx ? 1 : 0) + want_grad) + 4);
  run_gemm_tasks(gemm, n_groups, n_threads, work, [&](index_t g, int tid) {
    const index_t first = g * row_tiles / n_groups, last = (g + 1) * row_tiles / n_groups;
    for (index_t rt = first; rt < last; ++rt) {
      const index_t i0 = rt * kTileRows, rows = std::min(kTileRows, m - i0);
      for (index_t j0 = 0; j0 < n; j0 += tile_cols) {
        const index_t cols = std::min(tile_cols, n - j0);
        if (dx) {
          T* tile = bufs.get(tid, rows * cols);
          decode(i0, i0 + rows, j0, j0 + cols, tile);
          gemm(false, true, batch, rows, cols, T(1), dy + j0, n, tile, cols,
               j0 == 0 ? T(0) : T(1), dx + i0, m);
        }
        if (want_grad) {
          T* G = grads.get(tid, rows * cols);
          if (batch > 0)
            gemm(true, false, rows, cols, batch, T(1), x + i0, m, dy + j0, n, T(0), G, cols);
          else
            std::fill(G, G + rows * cols, T(0));
          grad_tile(g, i0, i0 + rows, j0, j0 + cols, G);
        }
      }
    }
  });
}

// ---- codebook decoding ----------------------------------------------------------------------

// The code of block c in row i. Codes of 4 and 8 bits index a codebook padded to 16 / 256
// entries; wider ones are clamped into it. Either way a code outside the codebook (which the
// callers reject up front) can never read outside it.
template <typename Code>
struct CodeReader {
  const Code* codes;
  index_t stride;
  index_t last;
  index_t operator()(index_t i, index_t c) const {
    const index_t v = static_cast<index_t>(codes[i * stride + c]);
    if constexpr (sizeof(Code) == 1) {
      return v;
    } else {
      return v < last ? v : last;
    }
  }
};

struct Code4Reader {
  const std::uint8_t* codes;
  index_t stride;
  index_t operator()(index_t i, index_t c) const {
    return (codes[i * stride + c / 2] >> ((c & 1) * 4)) & 15;
  }
};

// Rows [i0, i1), columns [j0, j1) of W into out; B: the block size when fixed at compile time.
template <index_t B, typename T, class Reader>
void decode_tile(const T* cb, index_t block, const Reader& code, index_t i0, index_t i1,
                 index_t j0, index_t j1, T* out) {
  const index_t b = B > 0 ? B : block, cols = j1 - j0, c0 = j0 / b, c1 = j1 / b;
  for (index_t i = i0; i < i1; ++i) {
    T* row = out + (i - i0) * cols;
    if constexpr (B == 1) {
      for (index_t c = c0; c < c1; ++c) row[c - c0] = cb[code(i, c)];
    } else if constexpr (B > 1) {
      for (index_t c = c0; c < c1; ++c) {
        const T* src = cb + code(i, c) * B;
        T* dst = row + (c - c0) * B;
        for (index_t e = 0; e < B; ++e) dst[e] = src[e];
      }
    } else {
      for (index_t c = c0; c < c1; ++c)
        std::memcpy(row + (c - c0) * b, cb + code(i, c) * b, sizeof(T) * static_cast<std::size_t>(b));
    }
  }
}

// Calls f(decode, reader) with a tile decoder of w's code format and block size, reading the
// codebook `cb` (padded, see CodeReader).
template <typename T, class F>
void with_decoder(const CodebookView<T>& w, const T* cb, F&& f) {
  const auto go = [&](const auto& reader) {
    using Reader = std::decay_t<decltype(reader)>;
    if constexpr (std::is_same_v<T, float> &&
                  (std::is_same_v<Reader, Code4Reader> ||
                   std::is_same_v<Reader, CodeReader<std::uint8_t>>)) {
      if (w.block == 2 && std::is_same_v<Reader, Code4Reader>) {  // 4-bit pairs: the same
        const DecodeTileFn fn = decode4b2_tile_kernel(active_isa());
        f([&](index_t i0, index_t i1, index_t j0, index_t j1, T* out) {
          fn(static_cast<const std::uint8_t*>(w.codes), w.row_stride, i0, i1, j0, j1 - j0, cb,
             out);
        }, reader);
        return;
      }
      if (w.block == 1) {  // scalar 4- and 8-bit codes: vectorized lookups
        const DecodeTileFn fn =
            decode_tile_kernel(active_isa(), std::is_same_v<Reader, Code4Reader>);
        f([&](index_t i0, index_t i1, index_t j0, index_t j1, T* out) {
          fn(static_cast<const std::uint8_t*>(w.codes), w.row_stride, i0, i1, j0, j1 - j0, cb,
             out);
        }, reader);
        return;
      }
    }
    const auto with_block = [&](auto block_tag) {
      constexpr index_t B = decltype(block_tag)::value;
      f([&](index_t i0, index_t i1, index_t j0, index_t j1, T* out) {
        decode_tile<B>(cb, w.block, reader, i0, i1, j0, j1, out);
      }, reader);
    };
    switch (w.block) {
      case 1: with_block(std::integral_constant<index_t, 1>{}); break;
      case 2: with_block(std::integral_constant<index_t, 2>{}); break;
      case 4: with_block(std::integral_constant<index_t, 4>{}); break;
      case 8: with_block(std::integral_constant<index_t, 8>{}); break;
      default: with_block(std::integral_constant<index_t, 0>{}); break;
    }
  };
  const index_t last = w.n_codes - 1;
  switch (w.format) {
    case CodeFormat::u4:
      go(Code4Reader{static_cast<const std::uint8_t*>(w.codes), w.row_stride});
      break;
    case CodeFormat::u8:
      go(CodeReader<std::uint8_t>{static_cast<const std::uint8_t*>(w.codes), w.row_stride, last});
      break;
    case CodeFormat::u16:
      go(CodeReader<std::uint16_t>{static_cast<const std::uint16_t*>(w.codes), w.row_stride,
                                   last});
      break;
    case CodeFormat::u32:
      go(CodeReader<std::uint32_t>{static_cast<const std::uint32_t*>(w.codes), w.row_stride,
                                   last});
      break;
  }
}

// The codebook the decoders read: 4- and 8-bit codes get it padded with zeros to 16 / 256
// entries (into `pad`), wider codes read it in place.
template <typename T>
const T* padded_codebook(const CodebookView<T>& w, std::vector<T>& pad) {
  const index_t full = w.format == CodeFormat::u4 ? 16 : w.format == CodeFormat::u8 ? 256 : 0;
  if (full == 0 || w.n_codes >= full) return w.codebook;
  pad.assign(static_cast<std::size_t>(full * w.block), T(0));
  std::copy(w.codebook, w.codebook + w.n_codes * w.block, pad.begin());
  return pad.data();
}

template <typename T>
index_t codebook_tile_cols(const CodebookView<T>& w) {
  return std::max<index_t>(w.block, kTileCols / w.block * w.block);
}

template <typename T>
void check_codebook(const CodebookView<T>& w, index_t batch) {
  MC_CHECK(w.m >= 1 && w.n >= 1 && batch >= 0, "codebook product: empty matrix or batch < 0");
  MC_CHECK(w.block >= 1 && w.n % w.block == 0,
           "codebook product: n=" << w.n << " is not a multiple of the block " << w.block);
  MC_CHECK(w.n_codes >= 1, "codebook product: empty codebook");
  MC_CHECK(w.format != CodeFormat::u4 || w.n_codes <= 16,
           "codebook product: 4-bit codes need n_codes <= 16");
  const index_t nb = w.n / w.block;
  MC_CHECK(w.row_stride >= (w.format == CodeFormat::u4 ? (nb + 1) / 2 : nb),
           "codebook product: row stride too small");
}

// ---- sign bits ------------------------------------------------------------------------------

// Rows [i0, i1), columns [l0, l1) of the projection P (m x k) into out (row stride l1 - l0).
template <typename T>
void projection_tile(const GaussianFillFn<T>& fill, std::uint64_t seed, index_t k, index_t i0,
                     index_t i1, index_t l0, index_t l1, T* out) {
  for (index_t i = i0; i < i1; ++i)
    fill(seed, static_cast<std::uint64_t>(i * k + l0), l1 - l0, out + (i - i0) * (l1 - l0));
}

// Rows [t0, t1), columns [j0, j1) of S (k x n) as +-1 into out.
template <typename T>
void sign_tile(const std::uint8_t* bits, index_t row_bytes, index_t t0, index_t t1, index_t j0,
               index_t j1, T* out) {
  for (index_t t = t0; t < t1; ++t) {
    const std::uint8_t* p = bits + t * row_bytes;
    T* row = out + (t - t0) * (j1 - j0);
    for (index_t j = j0; j < j1; ++j) row[j - j0] = (p[j >> 3] >> (j & 7)) & 1 ? T(1) : T(-1);
  }
}

// t (batch x k) = x P, P regenerated in tiles: threads own column tiles of t.
template <typename T>
void times_projection(const Gemm<T>& gemm, const SignBitsView<T>& w, const T* x, index_t batch,
                      T* t, int n_threads) {
  const GaussianFillFn<T> fill = gaussian_fill_kernel<T>(active_isa());
  ThreadBuffers<T> bufs(max_threads(n_threads));
  const double work = double(w.m) * double(w.k) * double(batch + 100);
  run_gemm_tasks(gemm, ceil_div(w.k, kTileCols), n_threads, work, [&](index_t task, int tid) {
    const index_t l0 = task * kTileCols, cols = std::min(kTileCols, w.k - l0);
    T* tile = bufs.get(tid, kTileRows * cols);
    for (index_t i0 = 0; i0 < w.m; i0 += kTileRows) {
      const index_t rows = std::min(kTileRows, w.m - i0);
      projection_tile(fill, w.seed, w.k, i0, i0 + rows, l0, l0 + cols, tile);
      gemm(false, false, batch, cols, rows, T(1), x + i0, w.m, tile, cols,
           i0 == 0 ? T(0) : T(1), t + l0, w.k);
    }
  });
}

// z (batch x n) = t S.
template <typename T>
void times_signs(const Gemm<T>& gemm, const SignBitsView<T>& w, const T* t, index_t batch, T* z,
                 int n_threads) {
  const index_t row_bytes = (w.n + 7) / 8;
  if constexpr (std::is_same_v<T, float>) {
    if (batch == 1) {
      signs_gemv(t, w.bits, row_bytes, w.k, w.n, z, n_threads);
      return;
    }
  }
  decoded_matmul(gemm, w.k, w.n, kTileCols, t, batch, z, n_threads,
                 [&](index_t i0, index_t i1, index_t j0, index_t j1, T* out) {
                   sign_tile(w.bits, row_bytes, i0, i1, j0, j1, out);
                 });
}

template <typename T>
void check_signbits(const SignBitsView<T>& w, index_t batch) {
  MC_CHECK(w.m >= 1 && w.k >= 1 && w.n >= 1 && batch >= 0,
           "sign-bit product: empty matrix or batch < 0");
}

// ---- CSR ------------------------------------------------------------------------------------

template <typename T>
void check_pruned(const PrunedView<T>& w, index_t batch) {
  MC_CHECK(w.m >= 1 && w.n >= 1 && batch >= 0, "pruned product: empty matrix or batch < 0");
  MC_CHECK(w.n <= (index_t(1) << 31) - 1 && (!w.indices16 || w.n <= 65536),
           "pruned product: too many columns for the index type");
  MC_CHECK(w.values != nullptr || w.indptr[w.m] == 0 ||
               ((w.code_bytes == 1 || w.code_bytes == 2) && w.codebook && w.n_codes >= 1),
           "pruned product: give values, or 1- or 2-byte codes with a codebook");
}

template <typename T>
CsrValues<T> csr_values(const PrunedView<T>& w) {
  if (w.values) return {w.values, nullptr, 0, nullptr, 0};
  return {nullptr, w.codes, w.code_bytes, w.codebook, w.n_codes - 1};
}

// Columns per tile of yᵀ: the tile (columns x batch) about 128 KiB, at least 8 tiles when n
// allows (threads), whole multiples of 64 columns. Fixed by the shapes.
index_t csr_tile_cols(index_t n, index_t batch, std::size_t elem) {
  const index_t by_cache = std::max<index_t>(64, (index_t(128) << 10) /
                                                     (std::max<index_t>(batch, 1) *
                                                      static_cast<index_t>(elem)) / 64 * 64);
  const index_t by_threads = std::max<index_t>(64, ceil_div(ceil_div(n, 8), 64) * 64);
  return std::min(by_cache, by_threads);
}

}  // namespace

// ---- codebook4_gemv -------------------------------------------------------------------------

void codebook4_gemv(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
                    index_t n, const float* codebook, index_t n_codes, float* y, int n_threads) {
  MC_CHECK(m >= 0 && n >= 0 && row_bytes >= (n + 1) / 2, "codebook4_gemv: bad sizes");
  MC_CHECK(n_codes >= 1 && n_codes <= 16, "codebook4_gemv: n_codes must be in [1, 16]");
  float cb[16] = {};
  std::copy(codebook, codebook + n_codes, cb);
  const Codebook4Kernel k = codebook4_kernel(active_isa());
  // Tiles of several kernel widths per task: each task owns its columns of y.
  const index_t full = n / k.width * k.width;
  const index_t per_task = k.width * std::max<index_t>(1, 512 / k.width);  // <= kMaxCols
  const index_t tasks = (full + per_task - 1) / per_task;
  parallel_for(0, tasks, resolve_threads_for_work(n_threads, double(m) * double(n), 4e6), 1,
               [&](index_t t, int) {
    const index_t j0 = t * per_task, cols = std::min(per_task, full - j0);
    k.fn(x, codes, row_bytes, m, j0, cols, cb, y);
  });
  for (index_t j = full; j < n; ++j) {  // the last columns, one at a time
    float acc = 0.0f;
    const std::uint8_t* p = codes + j / 2;
    const int shift = (j % 2) * 4;
    for (index_t i = 0; i < m; ++i, p += row_bytes) acc += x[i] * cb[(*p >> shift) & 15];
    y[j] = acc;
  }
}

void signs_gemv(const float* t, const std::uint8_t* bits, index_t row_bytes, index_t k,
                index_t n, float* z, int n_threads) {
  MC_CHECK(k >= 0 && n >= 0 && row_bytes >= (n + 7) / 8, "signs_gemv: bad sizes");
  const SignsKernel kern = signs_kernel(active_isa());
  const index_t full = n / kern.width * kern.width;
  const index_t per_task = kern.width * std::max<index_t>(1, 512 / kern.width);
  const index_t tasks = (full + per_task - 1) / per_task;
  parallel_for(0, tasks, resolve_threads_for_work(n_threads, double(k) * double(n), 4e6), 1,
               [&](index_t task, int) {
    const index_t j0 = task * per_task, cols = std::min(per_task, full - j0);
    kern.fn(t, bits, row_bytes, k, j0, cols, z);
  });
  for (index_t j = full; j < n; ++j) {
    float acc = 0.0f;
    const std::uint8_t* p = bits + j / 8;
    const int shift = j % 8;
    for (index_t r = 0; r < k; ++r, p += row_bytes) acc += (*p >> shift) & 1 ? t[r] : -t[r];
    z[j] = acc;
  }
}

// ---- low rank -------------------------------------------------------------------------------

template <typename T>
void lowrank_matmul(const Gemm<T>& gemm, const LowRankView<T>& w, const T* x, index_t batch,
                    T* y, int n_threads) {
  MC_CHECK(w.m >= 1 && w.n >= 1 && w.r >= 1 && batch >= 0, "low-rank product: empty factor");
  if (batch == 0) return;
  std::vector<T> t(static_cast<std::size_t>(batch * w.r));
  parallel_gemm(gemm, false, false, batch, w.r, w.m, T(1), x, w.m, w.left, w.r, T(0), t.data(),
                w.r, n_threads);
  parallel_gemm(gemm, false, false, batch, w.n, w.r, T(1), t.data(), w.r, w.right, w.n, T(0), y,
                w.n, n_threads);
}

template <typename T>
void lowrank_matmul_backward(const Gemm<T>& gemm, const LowRankView<T>& w, const T* x,
                             const T* dy, index_t batch, T* dx, T* dleft, T* dright,
                             int n_threads) {
  MC_CHECK(w.m >= 1 && w.n >= 1 && w.r >= 1 && batch >= 0, "low-rank product: empty factor");
  if (batch == 0) {
    if (dleft) std::fill(dleft, dleft + w.m * w.r, T(0));
    if (dright) std::fill(dright, dright + w.r * w.n, T(0));
    return;
  }
  std::vector<T> u(static_cast<std::size_t>(batch * w.r));
  if (dx || dleft)  // u = dy Rᵀ
    parallel_gemm(gemm, false, true, batch, w.r, w.n, T(1), dy, w.n, w.right, w.n, T(0),
                  u.data(), w.r, n_threads);
  if (dx)
    parallel_gemm(gemm, false, true, batch, w.m, w.r, T(1), u.data(), w.r, w.left, w.r, T(0), dx,
                  w.m, n_threads);
  if (dleft)
    parallel_gemm(gemm, true, false, w.m, w.r, batch, T(1), x, w.m, u.data(), w.r, T(0), dleft,
                  w.r, n_threads);
  if (dright) {
    std::vector<T> t(static_cast<std::size_t>(batch * w.r));
    parallel_gemm(gemm, false, false, batch, w.r, w.m, T(1), x, w.m, w.left, w.r, T(0),
                  t.data(), w.r, n_threads);
    parallel_gemm(gemm, true, false, w.r, w.n, batch, T(1), t.data(), w.r, dy, w.n, T(0), dright,
                  w.n, n_threads);
  }
}

// ---- sparse codes ---------------------------------------------------------------------------

namespace {

template <typename T>
void check_sparse_codes(const SparseCodesView<T>& w, index_t batch) {
  MC_CHECK(w.m >= 1 && w.n >= 1 && w.k >= 1 && w.s >= 0 && batch >= 0,
           "sparse-code product: empty matrix or batch < 0");
  MC_CHECK(w.k < (index_t(1) << 31), "sparse-code product: too many atoms");
}

// C (m x k) in CSR form with each row's entries sorted by atom (ties in their order), and where
// each entry came from. Rows already in order (the Python face stores them so) are used in
// place; otherwise the rows are sorted into a copy.
template <typename T>
struct SortedCodes {
  std::vector<std::int64_t> indptr;
  const std::int32_t* indices = nullptr;
  const T* values = nullptr;
  bool sorted_copy = false;
  std::vector<std::int32_t> idx_copy, from;  // from: position within the row (copy only)
  std::vector<T> val_copy;

  SortedCodes(const SparseCodesView<T>& w, int n_threads)
      : indptr(static_cast<std::size_t>(w.m + 1)), indices(w.indices), values(w.values) {
    const index_t s = w.s;
    for (index_t i = 0; i <= w.m; ++i) indptr[static_cast<std::size_t>(i)] = i * s;
    bool in_order = true;
    for (index_t i = 0; i < w.m && in_order; ++i)
      for (index_t t = 1; t < s; ++t) in_order &= w.indices[i * s + t - 1] <= w.indices[i * s + t];
    if (in_order) return;
    sorted_copy = true;
    idx_copy.resize(static_cast<std::size_t>(w.m * s));
    val_copy.resize(static_cast<std::size_t>(w.m * s));
    from.resize(static_cast<std::size_t>(w.m * s));
    parallel_for(0, w.m, resolve_threads_for_work(n_threads, double(w.m * s) * 16, 4e6), 256,
                 [&](index_t i, int) {
      std::vector<std::pair<std::int32_t, std::int32_t>> order(static_cast<std::size_t>(s));
      for (index_t t = 0; t < s; ++t)
        order[static_cast<std::size_t>(t)] = {w.indices[i * s + t], static_cast<std::int32_t>(t)};
      std::sort(order.begin(), order.end());
      for (index_t t = 0; t < s; ++t) {
        const auto [a, from_t] = order[static_cast<std::size_t>(t)];
        const auto p = static_cast<std::size_t>(i * s + t);
        idx_copy[p] = a, val_copy[p] = w.values[i * s + from_t], from[p] = from_t;
      }
    });
    indices = idx_copy.data();
    values = val_copy.data();
  }

  PrunedView<T> view(const SparseCodesView<T>& w) const {
    PrunedView<T> c{indptr.data(), indices, false, values};
    c.m = w.m;
    c.n = w.k;
    return c;
  }
};

}  // namespace

template <typename T>
void sparse_codes_matmul(const Gemm<T>& gemm, const SparseCodesView<T>& w, const T* x,
                         index_t batch, T* y, int n_threads) {
  check_sparse_codes(w, batch);
  if (batch == 0) return;
  const SortedCodes<T> codes(w, n_threads);
  std::vector<T> xc(static_cast<std::size_t>(batch * w.k));
  pruned_matmul(codes.view(w), x, batch, xc.data(), n_threads);
  parallel_gemm(gemm, false, false, batch, w.n, w.k, T(1), xc.data(), w.k, w.dictionary, w.n,
                T(0), y, w.n, n_threads);
}

template <typename T>
void sparse_codes_matmul_backward(const Gemm<T>& gemm, const SparseCodesView<T>& w, const T* x,
                                  const T* dy, index_t batch, T* dx, T* dvalues, T* ddictionary,
                                  int n_threads) {
  check_sparse_codes(w, batch);
  const index_t k = w.k;
  const SortedCodes<T> codes(w, n_threads);
  const PrunedView<T> c = codes.view(w);
  if (dx || dvalues) {
    std::vector<T> g(static_cast<std::size_t>(batch * k));  // dy Dᵀ
    if (batch > 0)
      parallel_gemm(gemm, false, true, batch, k, w.n, T(1), dy, w.n, w.dictionary, w.n, T(0),
                    g.data(), k, n_threads);
    std::vector<T> dv(dvalues && codes.sorted_copy ? static_cast<std::size_t>(w.m * w.s) : 0);
    pruned_matmul_backward(c, x, g.data(), batch, dx,
                           codes.sorted_copy ? (dvalues ? dv.data() : nullptr) : dvalues,
                           n_threads);
    if (dvalues && codes.sorted_copy)  // back to the caller's order
      for (index_t i = 0; i < w.m; ++i)
        for (index_t t = 0; t < w.s; ++t)
          dvalues[i * w.s + codes.from[static_cast<std::size_t>(i * w.s + t)]] =
              dv[static_cast<std::size_t>(i * w.s + t)];
  }
  if (ddictionary) {
    if (batch == 0) {
      std::fill(ddictionary, ddictionary + k * w.n, T(0));
      return;
    }
    std::vector<T> xc(static_cast<std::size_t>(batch * k));
    pruned_matmul(c, x, batch, xc.data(), n_threads);
    parallel_gemm(gemm, true, false, k, w.n, batch, T(1), xc.data(), k, dy, w.n, T(0),
                  ddictionary, w.n, n_threads);
  }
}

// ---- codebook -------------------------------------------------------------------------------

template <typename T>
void codebook_matmul(const Gemm<T>& gemm, const CodebookView<T>& w, const T* x, index_t batch,
                     T* y, int n_threads) {
  check_codebook(w, batch);
  if (batch == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (batch == 1 && w.format == CodeFormat::u4 && w.block == 1) {
      codebook4_gemv(x, static_cast<const std::uint8_t*>(w.codes), w.row_stride, w.m, w.n,
                     w.codebook, w.n_codes, y, n_threads);
      return;
    }
  }
  std::vector<T> pad;
  with_decoder(w, padded_codebook(w, pad), [&](const auto& decode, const auto&) {
    decoded_matmul(gemm, w.m, w.n, codebook_tile_cols(w), x, batch, y, n_threads, decode);
  });
}

template <typename T>
void codebook_matmul_backward(const Gemm<T>& gemm, const CodebookView<T>& w, const T* x,
                              const T* dy, index_t batch, T* dx, T* dcodebook, int n_threads) {
  check_codebook(w, batch);
  if (!dx && !dcodebook) return;
  const index_t b = w.block, entries = w.n_codes * b;
  const index_t n_groups = std::min(kMaxGroups, ceil_div(w.m, kTileRows));
  std::vector<T> pad;
  const T* cb = padded_codebook(w, pad);
  const index_t padded_entries = std::max<index_t>(
      entries, (w.format == CodeFormat::u4 ? 16 : w.format == CodeFormat::u8 ? 256 : 0) * b);
  std::vector<T> partial(dcodebook ? static_cast<std::size_t>(n_groups * padded_entries) : 0);
  with_decoder(w, cb, [&](const auto& decode, const auto& reader) {
    decoded_backward(
        gemm, w.m, w.n, codebook_tile_cols(w), x, dy, batch, dx, dcodebook != nullptr,
        n_threads, decode,
        [&](index_t g, index_t i0, index_t i1, index_t j0, index_t j1, const T* G) {
          T* part = partial.data() + g * padded_entries;
          const index_t cols = j1 - j0, c0 = j0 / b, c1 = j1 / b;
          for (index_t i = i0; i < i1; ++i) {
            const T* row = G + (i - i0) * cols;
            for (index_t c = c0; c < c1; ++c) {
              T* dst = part + reader(i, c) * b;
              const T* src = row + (c - c0) * b;
              for (index_t e = 0; e < b; ++e) dst[e] += src[e];
            }
          }
        },
        n_groups);
  });
  if (dcodebook) {
    std::fill(dcodebook, dcodebook + entries, T(0));
    for (index_t g = 0; g < n_groups; ++g)
      for (index_t e = 0; e < entries; ++e) dcodebook[e] += partial[g * padded_entries + e];
  }
}

// ---- sign bits ------------------------------------------------------------------------------

template <typename T>
void signbits_matmul(const Gemm<T>& gemm, const SignBitsView<T>& w, const T* x, index_t batch,
                     T* y, int n_threads) {
  check_signbits(w, batch);
  if (batch == 0) return;
  std::vector<T> t(static_cast<std::size_t>(batch * w.k));
  times_projection(gemm, w, x, batch, t.data(), n_threads);
  times_signs(gemm, w, t.data(), batch, y, n_threads);
  for (index_t b = 0; b < batch; ++b)
    for (index_t j = 0; j < w.n; ++j) y[b * w.n + j] *= w.scale[j];
}

template <typename T>
void signbits_matmul_backward(const Gemm<T>& gemm, const SignBitsView<T>& w, const T* x,
                              const T* dy, index_t batch, T* dx, T* dscale, int n_threads) {
  check_signbits(w, batch);
  const index_t m = w.m, k = w.k, n = w.n, row_bytes = (n + 7) / 8;
  if (dscale) {
    std::fill(dscale, dscale + n, T(0));
    if (batch > 0) {
      std::vector<T> t(static_cast<std::size_t>(batch * k)), z(static_cast<std::size_t>(batch * n));
      times_projection(gemm, w, x, batch, t.data(), n_threads);
      times_signs(gemm, w, t.data(), batch, z.data(), n_threads);
      for (index_t b = 0; b < batch; ++b)  // rows in order: the same bits for any thread count
        for (index_t j = 0; j < n; ++j) dscale[j] += dy[b * n + j] * z[b * n + j];
    }
  }
  if (!dx || batch == 0) return;
  std::vector<T> dys(static_cast<std::size_t>(batch * n)), u(static_cast<std::size_t>(batch * k));
  for (index_t b = 0; b < batch; ++b)
    for (index_t j = 0; j < n; ++j) dys[b * n + j] = dy[b * n + j] * w.scale[j];
  // u = (dy diag(scale)) Sᵀ
  decoded_backward(
      gemm, k, n, kTileCols, static_cast<const T*>(nullptr), dys.data(), batch, u.data(), false,
      n_threads,
      [&](index_t i0, index_t i1, index_t j0, index_t j1, T* out) {
        sign_tile(w.bits, row_bytes, i0, i1, j0, j1, out);
      },
      [](index_t, index_t, index_t, index_t, index_t, const T*) {},
      std::min(kMaxGroups * 4, ceil_div(k, kTileRows)));
  // dx = u Pᵀ, P regenerated: threads own column tiles of dx (row tiles of P).
  const GaussianFillFn<T> fill = gaussian_fill_kernel<T>(active_isa());
  ThreadBuffers<T> bufs(max_threads(n_threads));
  run_gemm_tasks(gemm, ceil_div(m, kTileRows), n_threads, double(m) * double(k) * double(batch + 100),
                 [&](index_t task, int tid) {
    const index_t i0 = task * kTileRows, rows = std::min(kTileRows, m - i0);
    T* tile = bufs.get(tid, rows * kTileCols);
    for (index_t l0 = 0; l0 < k; l0 += kTileCols) {
      const index_t cols = std::min(kTileCols, k - l0);
      projection_tile(fill, w.seed, k, i0, i0 + rows, l0, l0 + cols, tile);
      gemm(false, true, batch, rows, cols, T(1), u.data() + l0, k, tile, cols,
           l0 == 0 ? T(0) : T(1), dx + i0, m);
    }
  });
}

// ---- pruned ---------------------------------------------------------------------------------

template <typename Idx>
void check_csr(const std::int64_t* indptr, const Idx* indices, index_t m, index_t n,
               index_t nnz) {
  MC_CHECK(indptr[0] == 0, "CSR: indptr[0] must be 0; got " << indptr[0]);
  MC_CHECK(indptr[m] == nnz, "CSR: indptr[-1] = " << indptr[m] << " but there are " << nnz
                                                  << " entries");
  // The offsets first, whole: then no row can send the entry walk past the arrays.
  for (index_t i = 0; i < m; ++i)
    MC_CHECK(indptr[i + 1] >= indptr[i], "CSR: indptr decreases at row " << i);
  for (index_t i = 0; i < m; ++i) {
    for (index_t p = indptr[i]; p < indptr[i + 1]; ++p) {
      const index_t j = static_cast<index_t>(indices[p]);
      MC_CHECK(j >= 0 && j < n, "CSR: column index " << j << " at entry " << p
                                                     << " outside [0, " << n << ")");
      MC_CHECK(p == indptr[i] || j >= static_cast<index_t>(indices[p - 1]),
               "CSR: column indices decrease within row " << i << " at entry " << p);
    }
  }
}

template <typename T>
void pruned_matmul(const PrunedView<T>& w, const T* x, index_t batch, T* y, int n_threads) {
  check_pruned(w, batch);
  if (batch == 0) return;
  const index_t m = w.m, n = w.n;
  if (batch == 1) {  // one pass over the entries into a y per fixed group of rows, then summed
    const index_t groups = std::min<index_t>(kCsrGroups, m);
    std::vector<T> part(static_cast<std::size_t>(groups * n), T(0));
    const double work = double(w.indptr[m]) + double(groups * n);
    const CsrTileFn<T> kern = csr_tile_kernel<T>(active_isa(), w.indices16);
    const CsrValues<T> vals = csr_values(w);
    parallel_for(0, groups, resolve_threads_for_work(n_threads, work, 2e6), 1,
                 [&](index_t g, int) {
      const index_t r0 = g * m / groups, r1 = (g + 1) * m / groups;
      kern(w.indptr + r0, w.indices, vals, r1 - r0, 0, n, x + r0, 1,
           part.data() + g * n);
    });
    parallel_for(0, ceil_div(n, 1024), resolve_threads_for_work(n_threads, double(groups * n), 2e6),
                 1, [&](index_t t, int) {
      for (index_t j = t * 1024; j < std::min(n, t * 1024 + 1024); ++j) {
        T acc = part[static_cast<std::size_t>(j)];
        for (index_t g = 1; g < groups; ++g) acc += part[static_cast<std::size_t>(g * n + j)];
        y[j] = acc;
      }
    });
    return;
  }
  std::vector<T> xt_buf(static_cast<std::size_t>(m * batch));
  transpose(x, batch, m, m, xt_buf.data(), n_threads);
  const T* xt = xt_buf.data();
  const index_t tile = csr_tile_cols(n, batch, sizeof(T));
  const index_t tasks = ceil_div(n, tile);
  const CsrTileFn<T> kern = csr_tile_kernel<T>(active_isa(), w.indices16);
  const CsrValues<T> vals = csr_values(w);
  const double work = double(w.indptr[m]) * double(batch) + double(m) * double(tasks) * 8;
  ThreadBuffers<T> bufs(max_threads(n_threads));
  parallel_for(0, tasks, resolve_threads_for_work(n_threads, work, 4e6), 1,
               [&](index_t task, int tid) {
    const index_t j0 = task * tile, cols = std::min(tile, n - j0);
    T* yt = bufs.get(tid, cols * batch);
    std::fill(yt, yt + cols * batch, T(0));
    kern(w.indptr, w.indices, vals, m, j0, j0 + cols, xt, batch, yt);
    for (index_t b = 0; b < batch; ++b)
      for (index_t c = 0; c < cols; ++c) y[b * n + j0 + c] = yt[c * batch + b];
  });
}

template <typename T>
void pruned_matmul_backward(const PrunedView<T>& w, const T* x, const T* dy, index_t batch,
                            T* dx, T* dvalues, int n_threads) {
  check_pruned(w, batch);
  const index_t m = w.m, n = w.n, nnz = w.indptr[m];
  if (batch == 0) {
    if (dvalues) std::fill(dvalues, dvalues + nnz, T(0));
    return;
  }
  if (!dx && !dvalues) return;
  const T *xt = x, *dyt = dy;
  std::vector<T> xt_buf, dyt_buf, dxt_buf;
  T* dxt = dx;
  if (batch > 1) {
    dyt_buf.resize(static_cast<std::size_t>(n * batch));
    transpose(dy, batch, n, n, dyt_buf.data(), n_threads);
    dyt = dyt_buf.data();
    if (dvalues) {
      xt_buf.resize(static_cast<std::size_t>(m * batch));
      transpose(x, batch, m, m, xt_buf.data(), n_threads);
      xt = xt_buf.data();
    }
    if (dx) {
      dxt_buf.resize(static_cast<std::size_t>(m * batch));
      dxt = dxt_buf.data();
    }
  }
  const CsrRowsFn<T> kern = csr_rows_kernel<T>(active_isa(), w.indices16);
  const CsrValues<T> vals = csr_values(w);
  const index_t chunk = 64;
  const double work = double(nnz) * double(batch) * 2;
  parallel_for(0, ceil_div(m, chunk), resolve_threads_for_work(n_threads, work, 4e6), 1,
               [&](index_t c, int) {
    kern(w.indptr, w.indices, vals, n, c * chunk, std::min(m, c * chunk + chunk), xt, dyt,
         batch, dxt, dvalues);
  });
  if (dx && batch > 1) transpose(dxt, m, batch, batch, dx, n_threads);
}

// ---- instantiations -------------------------------------------------------------------------

#define MC_INSTANTIATE_FACTORED(T)                                                              \
  template void lowrank_matmul<T>(const Gemm<T>&, const LowRankView<T>&, const T*, index_t, T*, \
                                  int);                                                         \
  template void lowrank_matmul_backward<T>(const Gemm<T>&, const LowRankView<T>&, const T*,     \
                                           const T*, index_t, T*, T*, T*, int);                 \
  template void sparse_codes_matmul<T>(const Gemm<T>&, const SparseCodesView<T>&, const T*,     \
                                       index_t, T*, int);                                       \
  template void sparse_codes_matmul_backward<T>(const Gemm<T>&, const SparseCodesView<T>&,      \
                                                const T*, const T*, index_t, T*, T*, T*, int);  \
  template void codebook_matmul<T>(const Gemm<T>&, const CodebookView<T>&, const T*, index_t,   \
                                   T*, int);                                                    \
  template void codebook_matmul_backward<T>(const Gemm<T>&, const CodebookView<T>&, const T*,   \
                                            const T*, index_t, T*, T*, int);                    \
  template void signbits_matmul<T>(const Gemm<T>&, const SignBitsView<T>&, const T*, index_t,   \
                                   T*, int);                                                    \
  template void signbits_matmul_backward<T>(const Gemm<T>&, const SignBitsView<T>&, const T*,   \
                                            const T*, index_t, T*, T*, int);                    \
  template void pruned_matmul<T>(const PrunedView<T>&, const T*, index_t, T*, int);             \
  template void pruned_matmul_backward<T>(const PrunedView<T>&, const T*, const T*, index_t,    \
                                          T*, T*, int);

MC_INSTANTIATE_FACTORED(float)
MC_INSTANTIATE_FACTORED(double)
#undef MC_INSTANTIATE_FACTORED

template void check_csr<std::uint16_t>(const std::int64_t*, const std::uint16_t*, index_t,
                                       index_t, index_t);
template void check_csr<std::int32_t>(const std::int64_t*, const std::int32_t*, index_t, index_t,
                                      index_t);

}  // namespace matcompress
