// Beam-search encoder of additive quantization; see additive.h for the contract.
#include "additive.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace matcompress {
namespace {

constexpr index_t kPoints = 32;     // points per tile
constexpr index_t kChunk = 1024;    // codewords per GEMM chunk: a tile x chunk block of inner
                                    // products stays in L2 (32 points x 8 hypotheses x 1024)
constexpr index_t kMaxBeam = 64;
constexpr index_t kDirectMaxDim = 16;  // blocks up to this long: scores computed directly
                                       // (a GEMM with an inner dimension of 2-16 is bound by
                                       // writing its output; measured 3-5x slower here)
constexpr index_t kMaxBooks = 16;

// One candidate of a point's next beam: hypothesis h extended by codeword j (flat index
// t * K + code).
struct Candidate {
  double score;
  int32_t h;
  int32_t j;
};

template <typename T>
struct Scratch {
  std::vector<T> res, next_res, g;      // residuals (points x beam x dim), inner products
  std::vector<T> score;                 // one hypothesis's scores against a chunk
  std::vector<double> e, next_e;        // squared residual norms
  std::vector<int32_t> code, next_code; // (points x beam x M), -1 where a book is unused
  std::vector<int32_t> n_hyp;           // hypotheses per point
  std::vector<Candidate> top;           // points x beam
  std::vector<int32_t> n_top;
  std::vector<double> worst;            // the largest kept score per point (inf until full)
  std::vector<int32_t> worst_at;        // its place in the point's list
};

}  // namespace

template <typename T>
double additive_encode(const Gemm<T>& gemm, const T* x, index_t n, index_t dim,
                       const T* codebooks, index_t n_books, index_t n_codes,
                       const int32_t* init, const AdditiveEncodeOptions& options,
                       int32_t* codes, T* err, T* beam_residuals) {
  const index_t M = n_books, K = n_codes, L = options.beam;
  MC_CHECK(n >= 0 && dim >= 1, "additive_encode: need dim >= 1");
  MC_CHECK(M >= 1 && M <= kMaxBooks, "additive_encode: need 1 <= n_books <= " << kMaxBooks);
  MC_CHECK(K >= 1 && K <= (index_t(1) << 24), "additive_encode: need 1 <= n_codes <= 2^24");
  MC_CHECK(L >= 1 && L <= kMaxBeam, "additive_encode: beam must be in [1, " << kMaxBeam << "]");
  if (n == 0) return 0.0;
  const index_t MK = M * K;
  std::vector<T> cn(static_cast<size_t>(MK));  // ||c_j||^2
  for (index_t j = 0; j < MK; ++j) {
    double s = 0;
    const T* c = codebooks + j * dim;
    for (index_t d = 0; d < dim; ++d) s += double(c[d]) * double(c[d]);
    cn[j] = T(s);
  }
  const bool direct = dim <= kDirectMaxDim;
  std::vector<T> cbt;  // direct route: the codewords transposed, dim x MK
  if (direct) {
    cbt.resize(static_cast<size_t>(dim * MK));
    for (index_t j = 0; j < MK; ++j)
      for (index_t d = 0; d < dim; ++d) cbt[d * MK + j] = codebooks[j * dim + d];
  }
  const index_t n_tiles = (n + kPoints - 1) / kPoints;
  const index_t chunk = std::min(kChunk, MK);
  const int max_threads = std::max(default_threads(), options.n_threads) + 1;
  std::vector<Scratch<T>> scratch(static_cast<size_t>(max_threads));
  std::vector<double> tile_err(static_cast<size_t>(n_tiles), 0.0);
  const double work = double(n) * double(M) * double(M) * double(L) * double(K) * double(dim);

  run_gemm_tasks(gemm, n_tiles, options.n_threads, work, [&](index_t tile, int tid) {
    Scratch<T>& s = scratch[static_cast<size_t>(tid)];
    const index_t p0 = tile * kPoints, P = std::min(kPoints, n - p0);
    const size_t hyp = static_cast<size_t>(P * L);
    s.res.resize(hyp * dim);
    s.next_res.resize(hyp * dim);
    s.e.resize(hyp);
    s.next_e.resize(hyp);
    s.code.resize(hyp * M);
    s.next_code.resize(hyp * M);
    s.n_hyp.assign(static_cast<size_t>(P), 1);
    s.top.resize(hyp);
    s.n_top.resize(static_cast<size_t>(P));
    s.worst.resize(static_cast<size_t>(P));
    s.worst_at.resize(static_cast<size_t>(P));
    if (!direct) s.g.resize(hyp * static_cast<size_t>(chunk));
    s.score.resize(static_cast<size_t>(chunk));
    // Step 0: one hypothesis per point, the point itself.
    for (index_t p = 0; p < P; ++p) {
      const T* xp = x + (p0 + p) * dim;
      T* r = s.res.data() + p * L * dim;
      double e = 0;
      for (index_t d = 0; d < dim; ++d) {
        r[d] = xp[d];
        e += double(xp[d]) * double(xp[d]);
      }
      s.e[p * L] = e;
      std::fill_n(s.code.data() + p * L * M, M, -1);
    }
    for (index_t step = 0; step < M; ++step) {
      std::fill(s.n_top.begin(), s.n_top.end(), 0);
      std::fill(s.worst.begin(), s.worst.end(), std::numeric_limits<double>::infinity());
      const index_t j_begin = options.ordered ? step * K : 0;
      const index_t j_end = options.ordered ? (step + 1) * K : MK;
      for (index_t j0 = j_begin; j0 < j_end; j0 += chunk) {
        const index_t jc = std::min(chunk, j_end - j0);
        // Step 0 has one hypothesis per point (slot p * L): the GEMM reads those rows only.
        const index_t stride = step == 0 ? L : 1;
        if (!direct) {
          gemm(false, true, step == 0 ? P : P * L, jc, dim, T(1), s.res.data(), stride * dim,
               codebooks + j0 * dim, dim, T(0), s.g.data(), jc);
        }
        for (index_t p = 0; p < P; ++p) {
          Candidate* top = s.top.data() + p * L;
          int32_t& nt = s.n_top[p];
          double& worst = s.worst[p];
          for (index_t h = 0; h < s.n_hyp[p]; ++h) {
            const index_t slot = p * L + h;
            const int32_t* hc = s.code.data() + slot * M;
            const double e = s.e[slot];
            // sc[jj] = ||c_j||^2 - 2 <r, c_j>, so the candidate's error is e + sc[jj].
            T* sc = s.score.data();
            if (direct) {
              const T* r = s.res.data() + slot * dim;
              const T* cn0 = cn.data() + j0;
              for (index_t jj = 0; jj < jc; ++jj) sc[jj] = cn0[jj];
              for (index_t d = 0; d < dim; ++d) {
                const T rd = T(-2) * r[d];
                const T* ct = cbt.data() + d * MK + j0;
                for (index_t jj = 0; jj < jc; ++jj) sc[jj] += rd * ct[jj];
              }
            } else {
              const T* g = s.g.data() + (slot / stride) * jc;
              const T* cn0 = cn.data() + j0;
              for (index_t jj = 0; jj < jc; ++jj) sc[jj] = cn0[jj] - T(2) * g[jj];
            }
            for (index_t jj = 0; jj < jc; ++jj) {
              if (!(e + double(sc[jj]) < worst)) continue;
              const double score = e + double(sc[jj]);
              const index_t j = j0 + jj;
              const index_t t = j / K;
              if (hc[t] >= 0) continue;  // this hypothesis has used codebook t
              const int32_t code = static_cast<int32_t>(j - t * K);
              // The same set reached in another order: keep the lower score. (In ordered
              // search distinct hypotheses extended by distinct codewords are distinct sets.)
              index_t dup = -1;
              for (index_t q = 0; q < nt && dup < 0 && !options.ordered; ++q) {
                const int32_t* oc = s.code.data() + (p * L + top[q].h) * M;
                const index_t ot = top[q].j / K;
                const int32_t ocode = static_cast<int32_t>(top[q].j - ot * K);
                bool same = true;
                for (index_t u = 0; u < M && same; ++u) {
                  const int32_t a = u == t ? code : hc[u];
                  const int32_t b = u == ot ? ocode : oc[u];
                  same = a == b;
                }
                if (same) dup = q;
              }
              if (dup >= 0) {
                if (!(score < top[dup].score)) continue;
                top[dup] = {score, int32_t(h), int32_t(j)};
              } else if (nt < L) {
                top[nt++] = {score, int32_t(h), int32_t(j)};
              } else {
                top[s.worst_at[p]] = {score, int32_t(h), int32_t(j)};
              }
              if (nt == L) {  // the new worst entry and its place
                index_t w = 0;
                for (index_t q = 1; q < nt; ++q)
                  if (top[q].score > top[w].score) w = q;
                s.worst_at[p] = static_cast<int32_t>(w);
                worst = top[w].score;
              }
            }
          }
        }
      }
      // The kept candidates become the hypotheses; residual norms recomputed exactly.
      for (index_t p = 0; p < P; ++p) {
        Candidate* top = s.top.data() + p * L;
        const index_t nt = s.n_top[p];
        // Best first: the next step meets low scores early, so its threshold tightens sooner.
        std::sort(top, top + nt, [](const Candidate& a, const Candidate& b) {
          return a.score < b.score || (a.score == b.score && a.j < b.j);
        });
        MC_CHECK(nt > 0, "additive_encode: no finite distance for point "
                             << p0 + p << " (values too large for the dtype?)");
        for (index_t q = 0; q < nt; ++q) {
          const index_t from = p * L + top[q].h, to = p * L + q;
          const T* r = s.res.data() + from * dim;
          const T* c = codebooks + index_t(top[q].j) * dim;
          T* nr = s.next_res.data() + to * dim;
          double e = 0;
          for (index_t d = 0; d < dim; ++d) {
            nr[d] = r[d] - c[d];
            e += double(nr[d]) * double(nr[d]);
          }
          s.next_e[to] = e;
          int32_t* nc = s.next_code.data() + to * M;
          std::copy_n(s.code.data() + from * M, M, nc);
          const index_t t = top[q].j / K;
          nc[t] = static_cast<int32_t>(top[q].j - t * K);
        }
        s.n_hyp[p] = static_cast<int32_t>(nt);
      }
      std::swap(s.res, s.next_res);
      std::swap(s.e, s.next_e);
      std::swap(s.code, s.next_code);
    }
    double total = 0;
    for (index_t p = 0; p < P; ++p) {
      index_t best = 0;
      for (index_t h = 1; h < s.n_hyp[p]; ++h)
        if (s.e[p * L + h] < s.e[p * L + best]) best = h;
      double e = s.e[p * L + best];
      const int32_t* bc = s.code.data() + (p * L + best) * M;
      int32_t* out = codes + (p0 + p) * M;
      std::copy_n(bc, M, out);
      if (init) {
        // The starting codes' error, summed as the codes' residual.
        const int32_t* ic = init + (p0 + p) * M;
        const T* xp = x + (p0 + p) * dim;
        double e0 = 0;
        for (index_t d = 0; d < dim; ++d) {
          double r = double(xp[d]);
          for (index_t t = 0; t < M; ++t) r -= double(codebooks[(t * K + ic[t]) * dim + d]);
          e0 += r * r;
        }
        if (!(e < e0)) {
          std::copy_n(ic, M, out);
          e = e0;
        }
      }
      if (beam_residuals) {
        T* out_r = beam_residuals + (p0 + p) * L * dim;
        const T* rb = s.res.data() + (p * L + best) * dim;
        std::copy_n(rb, dim, out_r);
        index_t q = 1;
        for (index_t h = 0; h < s.n_hyp[p]; ++h)
          if (h != best) std::copy_n(s.res.data() + (p * L + h) * dim, dim, out_r + q++ * dim);
        for (; q < L; ++q) std::copy_n(rb, dim, out_r + q * dim);
      }
      if (err) err[p0 + p] = T(e);
      total += e;
    }
    tile_err[static_cast<size_t>(tile)] = total;
  });
  double total = 0;
  for (double e : tile_err) total += e;
  return total;
}

template double additive_encode<float>(const Gemm<float>&, const float*, index_t, index_t,
                                       const float*, index_t, index_t, const int32_t*,
                                       const AdditiveEncodeOptions&, int32_t*, float*, float*);
template double additive_encode<double>(const Gemm<double>&, const double*, index_t, index_t,
                                        const double*, index_t, index_t, const int32_t*,
                                        const AdditiveEncodeOptions&, int32_t*, double*,
                                        double*);

}  // namespace matcompress
