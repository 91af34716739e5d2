#include "pruning.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

namespace matcompress {
namespace {

// Order-preserving keys of non-negative scores: the IEEE bits without the sign bit, so -0 ranks
// as +0 (and a negative score as its magnitude, which is how A itself gives magnitude pruning).
inline std::uint32_t score_key(float s) {
  std::uint32_t u;
  std::memcpy(&u, &s, sizeof u);
  return u & 0x7FFFFFFFu;
}
inline std::uint64_t score_key(double s) {
  std::uint64_t u;
  std::memcpy(&u, &s, sizeof u);
  return u & 0x7FFFFFFFFFFFFFFFull;
}

// Element passes cost ~1 ns per entry: a thread per ~0.5 ms of it (see resolve_threads_for_work).
constexpr double kEntriesPerThread = 5e5;
// Bits of the first (full) histogram pass and of each refinement pass over the gathered keys.
constexpr int kTopBits = 16;
constexpr int kRefineBits = 16;
// Refinement histograms over fewer gathered keys than this run on one thread.
constexpr index_t kParallelRefine = index_t(1) << 20;

// Runs body(p) for the parts p in [0, n_parts) on up to n_threads threads, the first exception
// re-thrown after the region. Parts are fixed ranges of the data chosen by the caller; every
// result below combines them by integer sums or in part order, never by thread.
template <class Body>
void for_parts(int n_parts, int n_threads, Body&& body) {
  if (n_parts <= 1 || n_threads <= 1) {
    for (int p = 0; p < n_parts; ++p) body(p);
    return;
  }
  ExceptionSlot slot;
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(std::min(n_parts, n_threads))
#endif
  for (int p = 0; p < n_parts; ++p) {
    if (slot.failed()) continue;
    try {
      body(p);
    } catch (...) {
      slot.capture();
    }
  }
  slot.rethrow();
}

// Highest bucket b of `hist` (size n_buckets) with sum(hist[b:]) >= need; `above` receives
// sum(hist[b+1:]). need >= 1 and sum(hist) >= need.
index_t bucket_of_rank(const index_t* hist, index_t n_buckets, index_t need, index_t* above) {
  index_t acc = 0;
  for (index_t b = n_buckets - 1; b > 0; --b) {
    if (acc + hist[b] >= need) {
      *above = acc;
      return b;
    }
    acc += hist[b];
  }
  *above = acc;
  return 0;
}

// The keep rule of a selection on signed keys: unit u is kept when its key is > lo (u <=
// last_tie) or > hi (u > last_tie), i.e. above the threshold key, or equal to it and no later
// than the last kept tie. Keys are < 2^(bits - 1), so hi - 1 never overflows.
template <typename SK>
struct Thresholds {
  SK hi, lo;
  index_t last_tie;
  explicit Thresholds(const PruneSelection& s)
      : hi(static_cast<SK>(s.key)), lo(static_cast<SK>(hi - 1)), last_tie(s.last_tie) {}
  bool keep(SK k, index_t u) const { return k > (u <= last_tie ? lo : hi); }
  // Calls f(begin, end, threshold) for the (at most two) runs of [u0, u1) sharing a threshold.
  template <class F>
  void runs(index_t u0, index_t u1, F&& f) const {
    const index_t split = std::min(std::max(last_tie + 1, u0), u1);
    if (split > u0) f(u0, split, lo);
    if (split < u1) f(split, u1, hi);
  }
};

// Units per chunk of the flag-based loops below (one 64-bit mask).
constexpr index_t kChunk = 64;

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pack_flags8 assumes a little-endian byte order"
#endif

// Bit j of the result = byte j of `word`, whose eight bytes are each 0 or 1 (the multiply moves
// byte j's low bit to bit 56 + j, with no carries between the partial products).
inline std::uint64_t pack_flags8(std::uint64_t word) {
  return (word * 0x0102040810204080ull) >> 56;
}

// Calls visit(u) for every unit u in [u0, u1), in order, with key_of(u) > thr. The comparisons
// fill a chunk of byte flags (a loop the compiler vectorizes), packed into a 64-bit mask whose
// set bits are visited: per dropped unit a fraction of a cycle, and one mispredicted branch per
// chunk rather than per unit.
template <typename SK, typename KeyFn, typename Visit>
void for_kept(const KeyFn& key_of, index_t u0, index_t u1, SK thr, Visit&& visit) {
  alignas(64) unsigned char flag[kChunk];
  for (index_t c0 = u0; c0 < u1; c0 += kChunk) {
    const index_t len = std::min(kChunk, u1 - c0);
    if (len == kChunk) {
      for (index_t q = 0; q < kChunk; ++q) flag[q] = static_cast<SK>(key_of(c0 + q)) > thr;
    } else {
      for (index_t q = 0; q < len; ++q) flag[q] = static_cast<SK>(key_of(c0 + q)) > thr;
      std::fill(flag + len, flag + kChunk, static_cast<unsigned char>(0));
    }
    std::uint64_t bits = 0;
    for (int w = 0; w < int(kChunk / 8); ++w) {
      std::uint64_t word;
      std::memcpy(&word, flag + 8 * w, sizeof word);
      bits |= pack_flags8(word) << (8 * w);
    }
    while (bits != 0) {
      visit(c0 + __builtin_ctzll(bits));
      bits &= bits - 1;
    }
  }
}

// Selects the n_keep highest keys among the units of a rows x cols grid (flat index u = r * cols
// + c), key_of(u) of type K with the top bit 0. row_kept (size rows) receives the kept units
// per grid row.
template <typename K, typename KeyFn>
PruneSelection select_top(const KeyFn& key_of, index_t rows, index_t cols, index_t n_keep,
                          int n_threads, std::vector<index_t>& row_kept) {
  const index_t n = rows * cols;
  PruneSelection sel;
  if (n_keep >= n) {  // everything: every key is >= 0
    row_kept.assign(static_cast<size_t>(rows), cols);
    sel.key = 0;
    sel.last_tie = n - 1;
    sel.n_kept = n;
    return sel;
  }
  row_kept.assign(static_cast<size_t>(rows), 0);
  if (n_keep <= 0) {  // nothing: no key exceeds the largest signed value
    sel.key = static_cast<std::uint64_t>(std::numeric_limits<std::make_signed_t<K>>::max());
    sel.last_tie = -1;
    return sel;
  }
  constexpr int kKeyBits = int(sizeof(K)) * 8 - 1;
  constexpr int kShift = kKeyBits - kTopBits;
  constexpr index_t kBuckets = index_t(1) << kTopBits;
  const int threads = resolve_threads_for_work(n_threads, double(n), kEntriesPerThread);
  const int parts = static_cast<int>(std::min<index_t>(threads, rows));
  auto first_row = [&](int p) { return rows * p / parts; };

  // Pass 1: histograms of the top bits, one per part (rows [first_row(p), first_row(p + 1))).
  std::vector<index_t> hist(static_cast<size_t>(parts) * kBuckets, 0);
  for_parts(parts, threads, [&](int p) {
    index_t* h = hist.data() + static_cast<size_t>(p) * kBuckets;
    for (index_t u = first_row(p) * cols, end = first_row(p + 1) * cols; u < end; ++u)
      ++h[key_of(u) >> kShift];
  });
  std::vector<index_t> total(hist.begin(), hist.begin() + kBuckets);
  for (int p = 1; p < parts; ++p)
    for (index_t b = 0; b < kBuckets; ++b) total[b] += hist[static_cast<size_t>(p) * kBuckets + b];
  index_t above = 0;
  const index_t top = bucket_of_rank(total.data(), kBuckets, n_keep, &above);
  index_t need = n_keep - above;  // to take from bucket `top`: 1 <= need <= total[top]

  // Pass 2: per grid row, the units above bucket `top`; that bucket's keys gathered in unit
  // order (each part writes at its offset, known from its histogram).
  std::vector<K> cand(static_cast<size_t>(total[top]));
  std::vector<index_t> part_offset(static_cast<size_t>(parts) + 1, 0);
  for (int p = 0; p < parts; ++p)
    part_offset[p + 1] = part_offset[p] + hist[static_cast<size_t>(p) * kBuckets + top];
  std::vector<index_t> row_cand(static_cast<size_t>(rows) + 1, 0);
  decltype(hist)().swap(hist);
  const K top_key = static_cast<K>(top);
  for_parts(parts, threads, [&](int p) {
    K* out = cand.data() + part_offset[p];
    for (index_t r = first_row(p); r < first_row(p + 1); ++r) {
      index_t sure = 0;
      K* const row_start = out;
      const index_t row_end = (r + 1) * cols;
      for (index_t c0 = r * cols; c0 < row_end; c0 += kChunk) {
        const index_t c1 = std::min(c0 + kChunk, row_end);
        K gt = 0, eq = 0;  // counted branch-free (vectorized); the rare bucket gathered after
        for (index_t u = c0; u < c1; ++u) {
          const K d = static_cast<K>(key_of(u) >> kShift);
          gt += d > top_key;
          eq += d == top_key;
        }
        sure += gt;
        if (eq == 0) continue;
        for (index_t u = c0; u < c1; ++u) {
          const K k = key_of(u);
          if (static_cast<K>(k >> kShift) == top_key) *out++ = k;
        }
      }
      row_kept[r] = sure;
      row_cand[r + 1] = out - row_start;
    }
  });
  for (index_t r = 0; r < rows; ++r) row_cand[r + 1] += row_cand[r];  // offsets into cand

  // Refinement: histograms of the next bits of the gathered keys that share the prefix found so
  // far, until every bit is known. Survivors are copied out once they are few.
  std::uint64_t prefix = static_cast<std::uint64_t>(top);
  int known_low = kShift;  // bits below the prefix
  const K* keys = cand.data();
  index_t n_keys = static_cast<index_t>(cand.size());
  std::vector<K> survivors;
  while (known_low > 0) {
    const int bits = std::min(kRefineBits, known_low);
    const int shift = known_low - bits;
    const index_t n_buckets = index_t(1) << bits;
    const int rparts = n_keys >= kParallelRefine ? threads : 1;
    std::vector<index_t> rh(static_cast<size_t>(rparts) * n_buckets, 0);
    for_parts(rparts, rparts, [&](int p) {
      index_t* h = rh.data() + static_cast<size_t>(p) * n_buckets;
      for (index_t q = n_keys * p / rparts, end = n_keys * (p + 1) / rparts; q < end; ++q) {
        const K k = keys[q];
        if ((k >> known_low) == prefix) ++h[(k >> shift) & (n_buckets - 1)];
      }
    });
    for (int p = 1; p < rparts; ++p)
      for (index_t b = 0; b < n_buckets; ++b) rh[b] += rh[static_cast<size_t>(p) * n_buckets + b];
    index_t above_here = 0;
    const index_t b = bucket_of_rank(rh.data(), n_buckets, need, &above_here);
    need -= above_here;
    prefix = (prefix << bits) | static_cast<std::uint64_t>(b);
    known_low = shift;
    const index_t n_left = rh[b];
    if (known_low > 0 && n_left * 4 <= n_keys) {
      std::vector<K> next;
      next.reserve(static_cast<size_t>(n_left));
      for (index_t q = 0; q < n_keys; ++q)
        if ((keys[q] >> known_low) == prefix) next.push_back(keys[q]);
      survivors.swap(next);
      keys = survivors.data();
      n_keys = n_left;
    }
  }
  const K t = static_cast<K>(prefix);
  decltype(survivors)().swap(survivors);

  // Per grid row: gathered keys above t, and ties (== t). Ties are kept in unit order: every
  // tie of the rows before row r_tie, the first `quota` of row r_tie, none after.
  std::vector<index_t> row_ties(static_cast<size_t>(rows), 0);
  for_parts(parts, threads, [&](int p) {
    for (index_t r = first_row(p); r < first_row(p + 1); ++r) {
      index_t up = 0, eq = 0;
      for (index_t q = row_cand[r]; q < row_cand[r + 1]; ++q) {
        up += cand[q] > t;
        eq += cand[q] == t;
      }
      row_kept[r] += up;
      row_ties[r] = eq;
    }
  });
  index_t r_tie = 0, quota = need;
  for (; r_tie < rows; ++r_tie) {
    if (row_ties[r_tie] >= quota) break;
    quota -= row_ties[r_tie];
    row_kept[r_tie] += row_ties[r_tie];
  }
  MC_CHECK(r_tie < rows, "pruning: internal error: the threshold has too few ties");
  row_kept[r_tie] += quota;
  index_t last = -1;
  for (index_t u = r_tie * cols, end = u + cols, seen = 0; u < end; ++u) {
    if (key_of(u) == t && ++seen == quota) {
      last = u;
      break;
    }
  }
  sel.key = t;
  sel.last_tie = last;
  sel.n_kept = n_keep;
  return sel;
}

// Keys of the blocks (float64 bits of the sum of squared scores, row-major inside each block),
// nbr x nbc. When float64 squares overflow, or even the largest block's is below 2^-1000, the
// scores are scaled by the power of two that brings the largest into [1, 2), which keeps the
// order of every block whose squares stay normal.
// a[bj] += the squares of the scores of block bj in one row (kBC > 0: bc fixed at compile time).
template <int kBC, bool kScaled, typename S>
void add_row_squares(const S* row, index_t nbc, index_t bc, double scale, double* a) {
  const index_t b = kBC > 0 ? kBC : bc;
  for (index_t bj = 0; bj < nbc; ++bj) {
    const S* x = row + bj * b;
    double sum = a[bj];
    for (index_t c = 0; c < b; ++c) {
      double v = static_cast<double>(x[c]);
      if (kScaled) v *= scale;
      sum += v * v;
    }
    a[bj] = sum;
  }
}

template <bool kScaled, typename S>
void add_row_squares(const S* row, index_t nbc, index_t bc, double scale, double* a) {
  switch (bc) {
    case 1: return add_row_squares<1, kScaled>(row, nbc, bc, scale, a);
    case 2: return add_row_squares<2, kScaled>(row, nbc, bc, scale, a);
    case 4: return add_row_squares<4, kScaled>(row, nbc, bc, scale, a);
    case 8: return add_row_squares<8, kScaled>(row, nbc, bc, scale, a);
    default: return add_row_squares<0, kScaled>(row, nbc, bc, scale, a);
  }
}

template <typename S>
std::unique_ptr<std::uint64_t[]> block_keys(const S* s, index_t rows, index_t cols, index_t br,
                                            index_t bc, int n_threads) {
  const index_t nbr = rows / br, nbc = cols / bc;
  // Not value-initialized: every key is written below.
  std::unique_ptr<std::uint64_t[]> keys(new std::uint64_t[static_cast<size_t>(nbr * nbc)]);
  const int threads = resolve_threads_for_work(n_threads, double(rows) * double(cols),
                                               kEntriesPerThread);
  std::vector<std::vector<double>> acc(static_cast<size_t>(threads),
                                       std::vector<double>(static_cast<size_t>(nbc)));
  std::vector<double> largest(static_cast<size_t>(threads), 0.0);
  auto run = [&](double scale) {
    std::fill(largest.begin(), largest.end(), 0.0);
    parallel_for(0, nbr, threads, 1, [&](index_t bi, int tid) {
      double* a = acc[tid].data();
      std::fill(a, a + nbc, 0.0);
      for (index_t r = 0; r < br; ++r) {
        const S* row = s + (bi * br + r) * cols;
        if (scale == 1.0)
          add_row_squares<false>(row, nbc, bc, scale, a);
        else
          add_row_squares<true>(row, nbc, bc, scale, a);
      }
      double big = largest[tid];
      std::uint64_t* k = keys.get() + bi * nbc;
      for (index_t bj = 0; bj < nbc; ++bj) big = std::max(big, a[bj]);
      std::memcpy(k, a, static_cast<size_t>(nbc) * sizeof(double));
      largest[tid] = big;
    });
    return *std::max_element(largest.begin(), largest.end());
  };
  const double big = run(1.0);
  // Overflow, or squares so small that the largest block's is below 2^-1000 (or 0).
  if (std::is_same<S, double>::value && (std::isinf(big) || big < 0x1p-1000)) {
    double max_abs = 0;
    for (index_t i = 0; i < rows * cols; ++i)
      max_abs = std::max(max_abs, std::fabs(static_cast<double>(s[i])));
    if (max_abs > 0) run(std::ldexp(1.0, -std::ilogb(max_abs)));
  }
  return keys;
}

template <typename S, typename Emit>
PruneSelection prune_generic(const S* scores, index_t n_rows, index_t n_cols, index_t br,
                             index_t bc, index_t n_keep, int n_threads, Emit&& emit) {
  MC_CHECK(n_rows >= 1 && n_cols >= 1, "pruning: the matrix is empty (" << n_rows << " x "
                                                                        << n_cols << ")");
  MC_CHECK(br >= 1 && bc >= 1 && n_rows % br == 0 && n_cols % bc == 0,
           "pruning: block_shape (" << br << ", " << bc << ") must divide the matrix shape ("
                                    << n_rows << ", " << n_cols << ")");
  const index_t nbr = n_rows / br, nbc = n_cols / bc;
  MC_CHECK(n_keep >= 0 && n_keep <= nbr * nbc,
           "pruning: n_keep=" << n_keep << " must lie in [0, " << nbr * nbc << "]");
  std::vector<index_t> row_kept;
  if (br == 1 && bc == 1) {
    using K = decltype(score_key(S()));
    auto key_of = [scores](index_t u) { return score_key(scores[u]); };
    const PruneSelection sel = select_top<K>(key_of, n_rows, n_cols, n_keep, n_threads, row_kept);
    emit(sel, row_kept, key_of);
    return sel;
  }
  const std::unique_ptr<std::uint64_t[]> keys =
      block_keys(scores, n_rows, n_cols, br, bc, n_threads);
  const std::uint64_t* kp = keys.get();
  auto key_of = [kp](index_t u) { return kp[u]; };
  const PruneSelection sel =
      select_top<std::uint64_t>(key_of, nbr, nbc, n_keep, n_threads, row_kept);
  emit(sel, row_kept, key_of);
  return sel;
}

int fill_threads(int n_threads, index_t n_rows, index_t n_cols) {
  return resolve_threads_for_work(n_threads, double(n_rows) * double(n_cols), kEntriesPerThread);
}

// Row grain of a parallel row loop: about 16k entries per grab.
index_t row_grain(index_t n_cols) { return std::max<index_t>(1, (index_t(1) << 14) / n_cols); }

void check_n_m(index_t n_rows, index_t n_cols, index_t n, index_t m) {
  MC_CHECK(n_rows >= 1 && n_cols >= 1, "pruning: the matrix is empty");
  MC_CHECK(m >= 1 && n >= 1 && n <= m, "pruning: N:M needs 1 <= N <= M; got " << n << ":" << m);
  MC_CHECK(n_cols % m == 0,
           "pruning: M=" << m << " must divide the number of columns, " << n_cols);
}

template <typename I>
void check_index_type(index_t n_cols) {
  MC_CHECK(static_cast<std::uint64_t>(n_cols - 1) <=
               static_cast<std::uint64_t>(std::numeric_limits<I>::max()),
           "pruning: the column index type is too small for " << n_cols << " columns");
}

// Bit j set for the n highest of the m <= 32 scores of a group (equal scores: the lower j
// first): those that fewer than n scores rank before. Each pair is compared once, branch-free;
// kM > 0 fixes m at compile time (unrolled).
template <int kM, typename S>
inline std::uint32_t n_m_group_bits(const S* s, index_t m, index_t n) {
  using K = decltype(score_key(S()));
  const index_t mm = kM > 0 ? kM : m;
  K key[kM > 0 ? kM : 32];
  index_t before[kM > 0 ? kM : 32];
  for (index_t j = 0; j < mm; ++j) {
    key[j] = score_key(s[j]);
    before[j] = 0;
  }
  for (index_t i = 0; i < mm; ++i) {  // i ranks before j > i when key_i >= key_j
    for (index_t j = i + 1; j < mm; ++j) {
      const index_t i_first = key[i] >= key[j];
      before[j] += i_first;
      before[i] += 1 - i_first;
    }
  }
  std::uint32_t bits = 0;
  for (index_t j = 0; j < mm; ++j) bits |= std::uint32_t(before[j] < n) << j;
  return bits;
}

// keep[j] for groups of m > 32: the n highest by nth_element on `order` (size m).
template <typename S>
void n_m_group_flags(const S* s, index_t m, index_t n, unsigned char* keep, index_t* order) {
  using K = decltype(score_key(S()));
  std::iota(order, order + m, index_t(0));
  std::nth_element(order, order + (n - 1), order + m, [s](index_t x, index_t y) {
    const K kx = score_key(s[x]), ky = score_key(s[y]);
    return kx > ky || (kx == ky && x < y);
  });
  std::fill(keep, keep + m, static_cast<unsigned char>(0));
  for (index_t q = 0; q < n; ++q) keep[order[q]] = 1;
}

// Runs group(i, q, g, mm, kept) for every row i and group q (columns g = q * m to g + m), mm
// being m (a compile-time constant when kM > 0) and kept(j) whether entry g + j is kept.
template <int kM, typename S, typename GroupFn>
void n_m_groups(const S* scores, index_t n_rows, index_t n_cols, index_t n, index_t m,
                int n_threads, GroupFn&& group) {
  const int threads = fill_threads(n_threads, n_rows, n_cols);
  if (kM > 0 || m <= 32) {
    parallel_for(0, n_rows, threads, row_grain(n_cols), [&](index_t i, int) {
      const S* s = scores + i * n_cols;
      for (index_t q = 0, g = 0; g < n_cols; ++q, g += m) {
        const std::uint32_t bits = n_m_group_bits<kM>(s + g, m, n);
        group(i, q, g, std::integral_constant<index_t, kM>(),
              [bits](index_t j) { return index_t((bits >> j) & 1u); });
      }
    });
    return;
  }
  std::vector<std::vector<index_t>> order(static_cast<size_t>(threads));
  std::vector<std::vector<unsigned char>> keep(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    order[t].resize(static_cast<size_t>(m));
    keep[t].resize(static_cast<size_t>(m));
  }
  parallel_for(0, n_rows, threads, row_grain(n_cols), [&](index_t i, int tid) {
    const S* s = scores + i * n_cols;
    const unsigned char* k = keep[tid].data();
    for (index_t q = 0, g = 0; g < n_cols; ++q, g += m) {
      n_m_group_flags(s + g, m, n, keep[tid].data(), order[tid].data());
      group(i, q, g, std::integral_constant<index_t, 0>(),
            [k](index_t j) { return index_t(k[j]); });
    }
  });
}

template <typename S, typename GroupFn>
void n_m_dispatch(const S* scores, index_t n_rows, index_t n_cols, index_t n, index_t m,
                  int n_threads, GroupFn&& group) {
  switch (m) {
    case 4: return n_m_groups<4>(scores, n_rows, n_cols, n, m, n_threads, group);
    case 8: return n_m_groups<8>(scores, n_rows, n_cols, n, m, n_threads, group);
    case 16: return n_m_groups<16>(scores, n_rows, n_cols, n, m, n_threads, group);
    default: return n_m_groups<0>(scores, n_rows, n_cols, n, m, n_threads, group);
  }
}

}  // namespace

template <typename T, typename S, typename I>
PruneSelection prune_csr(const T* a, const S* scores, index_t n_rows, index_t n_cols, index_t br,
                         index_t bc, index_t n_keep, int n_threads, std::int64_t* indptr,
                         I* indices, T* values) {
  check_index_type<I>(n_cols);
  return prune_generic(scores, n_rows, n_cols, br, bc, n_keep, n_threads,
                       [&](const PruneSelection& sel, const std::vector<index_t>& row_kept,
                           const auto& key_of) {
    using SK = std::make_signed_t<decltype(key_of(0))>;
    const Thresholds<SK> rule(sel);
    const index_t nbc = n_cols / bc;
    indptr[0] = 0;
    for (index_t i = 0; i < n_rows; ++i) indptr[i + 1] = indptr[i] + row_kept[i / br] * bc;
    parallel_for(0, n_rows, fill_threads(n_threads, n_rows, n_cols), row_grain(n_cols),
                 [&](index_t i, int) {
      index_t pos = indptr[i];
      const T* const row = a + i * n_cols;
      I* const idx = indices;
      T* const val = values;
      if (br == 1 && bc == 1) {
        const index_t u0 = i * n_cols;
        rule.runs(u0, u0 + n_cols, [&](index_t b, index_t e, SK thr) {
          for_kept(key_of, b, e, thr, [&](index_t u) {
            idx[pos] = static_cast<I>(u - u0);
            val[pos] = row[u - u0];
            ++pos;
          });
        });
        return;
      }
      // The kept blocks are a scattered tenth or so of the row: too irregular for the hardware
      // prefetchers, so the next row is requested now (measured: 1 x 4 blocks, 4096 x 4096
      // float32, sparsity 0.9: the fill's time halves).
      if (i + 1 < n_rows) {
        const char* next = reinterpret_cast<const char*>(row + n_cols);
        for (index_t off = 0; off < n_cols * index_t(sizeof(T)); off += 64)
          __builtin_prefetch(next + off, 0, 1);
      }
      const index_t u0 = (i / br) * nbc;
      rule.runs(u0, u0 + nbc, [&](index_t b, index_t e, SK thr) {
        for_kept(key_of, b, e, thr, [&](index_t u) {
          const index_t j0 = (u - u0) * bc;
          for (index_t c = 0; c < bc; ++c, ++pos) {
            idx[pos] = static_cast<I>(j0 + c);
            val[pos] = row[j0 + c];
          }
        });
      });
    });
  });
}

template <typename S>
PruneSelection prune_mask(const S* scores, index_t n_rows, index_t n_cols, index_t br, index_t bc,
                          index_t n_keep, int n_threads, bool* mask) {
  return prune_generic(scores, n_rows, n_cols, br, bc, n_keep, n_threads,
                       [&](const PruneSelection& sel, const std::vector<index_t>&,
                           const auto& key_of) {
    using SK = std::make_signed_t<decltype(key_of(0))>;
    const Thresholds<SK> rule(sel);
    const index_t nbc = n_cols / bc;
    parallel_for(0, n_rows, fill_threads(n_threads, n_rows, n_cols), row_grain(n_cols),
                 [&](index_t i, int) {
      bool* out = mask + i * n_cols;
      if (br == 1 && bc == 1) {
        const index_t u0 = i * n_cols;
        rule.runs(u0, u0 + n_cols, [&](index_t b, index_t e, SK thr) {
          for (index_t u = b; u < e; ++u) out[u - u0] = static_cast<SK>(key_of(u)) > thr;
        });
        return;
      }
      const index_t u0 = (i / br) * nbc;
      for (index_t bj = 0; bj < nbc; ++bj) {
        const bool k = rule.keep(static_cast<SK>(key_of(u0 + bj)), u0 + bj);
        for (index_t c = 0; c < bc; ++c) out[bj * bc + c] = k;
      }
    });
  });
}

template <typename T, typename S, typename I>
void prune_n_m_csr(const T* a, const S* scores, index_t n_rows, index_t n_cols, index_t n,
                   index_t m, int n_threads, std::int64_t* indptr, I* indices, T* values) {
  check_n_m(n_rows, n_cols, n, m);
  check_index_type<I>(n_cols);
  const index_t per_row = n_cols / m * n;
  for (index_t i = 0; i <= n_rows; ++i) indptr[i] = i * per_row;
  n_m_dispatch(scores, n_rows, n_cols, n, m, n_threads,
               [&](index_t i, index_t q, index_t g, auto fixed_m, const auto& kept) {
    const index_t mm = decltype(fixed_m)::value > 0 ? decltype(fixed_m)::value : m;
    index_t pos = i * per_row + q * n;
    const T* row = a + i * n_cols;
    if (g + mm < n_cols) {
      // Branch-free: every entry written at pos, pos advanced past the kept ones. The group's
      // n slots are followed by the next group's, so the writes stay inside the row.
      for (index_t j = 0; j < mm; ++j) {
        indices[pos] = static_cast<I>(g + j);
        values[pos] = row[g + j];
        pos += kept(j);
      }
      return;
    }
    for (index_t j = 0; j < mm; ++j) {
      if (!kept(j)) continue;
      indices[pos] = static_cast<I>(g + j);
      values[pos] = row[g + j];
      ++pos;
    }
  });
}

template <typename S>
void prune_n_m_mask(const S* scores, index_t n_rows, index_t n_cols, index_t n, index_t m,
                    int n_threads, bool* mask) {
  check_n_m(n_rows, n_cols, n, m);
  n_m_dispatch(scores, n_rows, n_cols, n, m, n_threads,
               [&](index_t i, index_t, index_t g, auto fixed_m, const auto& kept) {
    const index_t mm = decltype(fixed_m)::value > 0 ? decltype(fixed_m)::value : m;
    bool* out = mask + i * n_cols + g;
    for (index_t j = 0; j < mm; ++j) out[j] = kept(j) != 0;
  });
}

#define MC_PRUNE_CSR(T, S, I)                                                                   \
  template PruneSelection prune_csr<T, S, I>(const T*, const S*, index_t, index_t, index_t,     \
                                             index_t, index_t, int, std::int64_t*, I*, T*);     \
  template void prune_n_m_csr<T, S, I>(const T*, const S*, index_t, index_t, index_t, index_t,  \
                                       int, std::int64_t*, I*, T*);
#define MC_PRUNE_CSR_I(T, S)            \
  MC_PRUNE_CSR(T, S, std::uint8_t)      \
  MC_PRUNE_CSR(T, S, std::uint16_t)     \
  MC_PRUNE_CSR(T, S, std::uint32_t)     \
  MC_PRUNE_CSR(T, S, std::int64_t)
MC_PRUNE_CSR_I(float, float)
MC_PRUNE_CSR_I(float, double)
MC_PRUNE_CSR_I(double, float)
MC_PRUNE_CSR_I(double, double)
template PruneSelection prune_mask<float>(const float*, index_t, index_t, index_t, index_t,
                                          index_t, int, bool*);
template PruneSelection prune_mask<double>(const double*, index_t, index_t, index_t, index_t,
                                           index_t, int, bool*);
template void prune_n_m_mask<float>(const float*, index_t, index_t, index_t, index_t, int, bool*);
template void prune_n_m_mask<double>(const double*, index_t, index_t, index_t, index_t, int,
                                     bool*);

}  // namespace matcompress
