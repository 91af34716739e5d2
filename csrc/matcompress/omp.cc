#include "omp.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu.h"
#include "omp_signal.h"

namespace matcompress {
namespace {

index_t round_up(index_t v, index_t m) { return (v + m - 1) / m * m; }

// Signals between two interrupt polls: about 2e8 multiply-adds (a fraction of a second), and a
// correlation buffer near 8 MiB when the chunk's projections are computed all at once.
index_t auto_chunk(index_t n_samples, index_t n_features, index_t kpad, index_t max_atoms,
                   index_t elem_size) {
  const double mem = (8.0 * 1024 * 1024) / double(kpad * elem_size);
  const double per_signal = double(kpad) * double(n_features + max_atoms * (max_atoms + 3) / 2);
  const double work = 2e8 / std::max(per_signal, 1.0);
  index_t c = static_cast<index_t>(std::min(mem, work));
  c = std::max<index_t>(c, 64);
  return std::min(c, n_samples);
}

}  // namespace

template <typename T>
OmpStats sparse_encode_omp(const Gemm<T>& gemm, const OmpProblem<T>& p, const OmpOptions& o,
                           const OmpCodes<T>& out, const std::function<bool()>& interrupted) {
  const index_t n = p.n_samples, m = p.n_features, k = p.n_components;
  MC_CHECK(n >= 0 && m >= 1 && k >= 1, "sparse_encode_omp: bad sizes n_samples=" << n
                                           << " n_features=" << m << " n_components=" << k);
  MC_CHECK(k <= INT32_MAX, "sparse_encode_omp: n_components must be < 2^31");
  MC_CHECK(o.max_atoms >= 1 && o.max_atoms <= k,
           "sparse_encode_omp: max_atoms=" << o.max_atoms << " must be in [1, " << k << "]");
  MC_CHECK(!o.use_tol || o.tol >= 0, "sparse_encode_omp: tol must be >= 0, got " << o.tol);
  MC_CHECK(p.X != nullptr || (!o.use_tol && p.cov != nullptr),
           "sparse_encode_omp: X is needed unless cov is given and tol is not used");
  MC_CHECK(p.dictionary != nullptr || (p.gram != nullptr && p.cov != nullptr),
           "sparse_encode_omp: the dictionary is needed unless gram and cov are given");
  MC_CHECK(out.nnz != nullptr && (out.dense != nullptr ||
                                  (out.indices != nullptr && out.values != nullptr)),
           "sparse_encode_omp: no output for the codes");
  OmpStats stats;
  if (n == 0) return stats;

  const index_t kpad = round_up(k, kOmpPad);
  const index_t smax = o.max_atoms;
  const OmpSignalFn<T> kernel = omp_signal_kernel<T>(active_isa());
  // With a GEMM that runs on its caller's thread, every GEMM happens inside the OpenMP region:
  // each thread projects its own block of signals and codes them while the block is in cache,
  // and no BLAS thread pool spins on the cores the OpenMP threads need (measured 1.7x).
  const bool inner_gemm = gemm.runs_on_caller_thread();
  const double signal_work = double(kpad) * double(m + smax * (smax + 3) / 2);
  const int nt = resolve_threads_for_work(o.n_threads, double(n) * signal_work);
  const int nt_gram = resolve_threads_for_work(o.n_threads, double(k) * double(k) * double(m));

  // Gram matrix with padded rows (padding columns stay zero).
  std::vector<T> gram(static_cast<size_t>(k * kpad), T(0));
  constexpr index_t kRows = 64;
  if (p.gram != nullptr) {
    parallel_for(0, k, resolve_threads_for_work(o.n_threads, double(k) * double(k)), kRows,
                 [&](index_t r, int) {
      std::copy(p.gram + r * k, p.gram + (r + 1) * k, &gram[r * kpad]);
    });
  } else if (inner_gemm) {
    // G is symmetric: each row block computes only its columns up to the diagonal (half the
    // multiply-adds), then the upper triangle is mirrored. Blocks are taken largest first.
    const index_t n_blocks = (k + kRows - 1) / kRows;
    parallel_for(0, n_blocks, nt_gram, 1, [&](index_t task, int) {
      const index_t r0 = (n_blocks - 1 - task) * kRows, rows = std::min(kRows, k - r0);
      gemm(false, true, rows, r0 + rows, m, T(1), p.dictionary + r0 * m, m, p.dictionary, m,
           T(0), &gram[r0 * kpad], kpad);
    });
    constexpr index_t kTile = 32;  // mirror tile by tile: both sides stay in cache
    parallel_for(0, (k + kTile - 1) / kTile, resolve_threads_for_work(o.n_threads, double(k) * k),
                 1, [&](index_t tr, int) {
      const index_t r0 = tr * kTile, r1 = std::min(k, r0 + kTile);
      for (index_t c0 = r0; c0 < k; c0 += kTile) {
        const index_t c1 = std::min(k, c0 + kTile);
        for (index_t r = r0; r < r1; ++r)
          for (index_t c = std::max(c0, r + 1); c < c1; ++c) gram[r * kpad + c] = gram[c * kpad + r];
      }
    });
  } else {
    gemm(false, true, k, k, m, T(1), p.dictionary, m, p.dictionary, m, T(0), gram.data(), kpad);
  }
  for (index_t r = 0; r < k; ++r)
    MC_CHECK(gram[r * kpad + r] > T(0), "sparse_encode_omp: atom " << r
                                            << " has zero norm (Gram diagonal "
                                            << gram[r * kpad + r] << ")");

  // Tasks of up to 256 signals (at most 4 MiB of projections; GEMM blocks thinner than ~128 rows
  // lose up to 2x in OpenBLAS), at least 16 tasks when n allows; chunks of tasks between two
  // interrupt polls. Both depend on n only, never on the thread count, so every GEMM has the
  // same shape — and the codes the same bits — whatever n_threads is.
  const index_t sub_cap =
      std::clamp<index_t>((4 * 1024 * 1024) / (kpad * index_t(sizeof(T))), 16, 256);
  const index_t sub = std::clamp<index_t>((n + 15) / 16, 1, sub_cap);
  index_t chunk = o.chunk_size > 0 ? o.chunk_size : auto_chunk(n, m, kpad, smax, sizeof(T));
  if (o.chunk_size <= 0) chunk = std::max(chunk, 16 * sub);  // several tasks per thread
  chunk = std::min(n, round_up(chunk, sub));

  // Each task fills its own block of correlations when that needs no BLAS threads (a gather
  // from cov, or a GEMM on the caller's thread); otherwise one GEMM per chunk fills them first.
  const bool per_task = inner_gemm || p.cov != nullptr;
  std::vector<T> corr(static_cast<size_t>((per_task ? nt * sub : chunk) * kpad), T(0));
  const index_t ws_len = smax * kpad + smax * smax + smax;
  std::vector<T> ws(static_cast<size_t>(nt * ws_len));
  std::vector<int32_t> ws_sel(static_cast<size_t>(nt * smax));
  // Per-thread slots for one signal's codes when only the dense form is wanted.
  const bool compact = out.indices != nullptr && out.values != nullptr;
  std::vector<int32_t> slot_idx(compact ? 0 : static_cast<size_t>(nt * smax));
  std::vector<T> slot_val(compact ? 0 : static_cast<size_t>(nt * smax));
  std::vector<unsigned char> premature(static_cast<size_t>(n > 0 ? chunk : 0));
  const OmpSignalArgs<T> args{gram.data(), kpad, smax, o.use_tol, static_cast<T>(o.tol)};

  // corr rows b < nb (stride kpad) = D x_{i0 + b}, from cov or by GEMM.
  auto project = [&](index_t i0, index_t nb, T* dst) {
    if (p.cov != nullptr) {  // cov is (k, n_samples): read its rows contiguously
      for (index_t r = 0; r < k; ++r) {
        const T* src = p.cov + r * n + i0;
        for (index_t b = 0; b < nb; ++b) dst[b * kpad + r] = src[b];
      }
    } else {
      gemm(false, true, nb, k, m, T(1), p.X + i0 * m, m, p.dictionary, m, T(0), dst, kpad);
    }
  };

  for (index_t c0 = 0; c0 < n; c0 += chunk) {
    if (interrupted && interrupted()) throw Interrupted();
    const index_t cb = std::min(chunk, n - c0);
    if (!per_task) project(c0, cb, corr.data());  // BLAS's own threads, no OpenMP region open
    parallel_for(0, (cb + sub - 1) / sub, nt, 1, [&](index_t task, int tid) {
      const index_t b0 = task * sub, nb = std::min(sub, cb - b0);
      T* block = per_task ? &corr[tid * sub * kpad] : &corr[b0 * kpad];
      if (per_task) project(c0 + b0, nb, block);
      T* w = &ws[tid * ws_len];
      const OmpSignalWork<T> work{w, w + smax * kpad, w + smax * kpad + smax * smax,
                                  &ws_sel[tid * smax]};
      for (index_t b = 0; b < nb; ++b) {
        const index_t i = c0 + b0 + b;
        T norm2 = T(0);
        if (o.use_tol) {
          const T* x = p.X + i * m;
          for (index_t f = 0; f < m; ++f) norm2 += x[f] * x[f];
        }
        bool early = false;
        int32_t* idx = compact ? out.indices + i * smax : &slot_idx[tid * smax];
        T* val = compact ? out.values + i * smax : &slot_val[tid * smax];
        const index_t cnt = kernel(args, block + b * kpad, norm2, work, idx, val, &early);
        out.nnz[i] = cnt;
        premature[b0 + b] = early;
        if (out.dense != nullptr) {  // written here, while hot, on every thread
          T* row = out.dense + i * k;
          std::fill(row, row + k, T(0));
          for (index_t t = 0; t < cnt; ++t) row[idx[t]] = val[t];
        }
      }
    });
    for (index_t b = 0; b < cb; ++b) stats.n_premature += premature[b];
  }
  return stats;
}

template <typename T>
void omp_codes_to_csr(index_t n_samples, index_t max_atoms, const OmpCodes<T>& codes,
                      const int64_t* indptr, int32_t* csr_indices, T* csr_values,
                      int n_threads) {
  const int nt = resolve_threads_for_work(n_threads, double(n_samples) * double(max_atoms), 1e6);
  parallel_for(0, n_samples, nt, 256, [&](index_t i, int) {
    const int32_t* idx = codes.indices + i * max_atoms;
    const T* val = codes.values + i * max_atoms;
    const index_t cnt = codes.nnz[i];
    int32_t* oi = csr_indices + indptr[i];
    T* ov = csr_values + indptr[i];
    // Insertion sort by column: rows hold few atoms.
    for (index_t t = 0; t < cnt; ++t) {
      index_t s = t;
      while (s > 0 && oi[s - 1] > idx[t]) {
        oi[s] = oi[s - 1];
        ov[s] = ov[s - 1];
        --s;
      }
      oi[s] = idx[t];
      ov[s] = val[t];
    }
  });
}

#define MC_INSTANTIATE(T)                                                                    \
  template OmpStats sparse_encode_omp<T>(const Gemm<T>&, const OmpProblem<T>&,              \
                                         const OmpOptions&, const OmpCodes<T>&,             \
                                         const std::function<bool()>&);                     \
  template void omp_codes_to_csr<T>(index_t, index_t, const OmpCodes<T>&, const int64_t*,    \
                                    int32_t*, T*, int);
MC_INSTANTIATE(float)
MC_INSTANTIATE(double)
#undef MC_INSTANTIATE

}  // namespace matcompress
