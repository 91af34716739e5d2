#include "kmeans.h"
#include "random.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace matcompress {
namespace {

// Order-preserving unsigned keys of floating-point values (negative values bit-flipped).
inline std::uint32_t sort_key(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline std::uint64_t sort_key(double v) {
  std::uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

inline float value_of(std::uint32_t k) {
  const std::uint32_t u = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline double value_of(std::uint64_t k) {
  const std::uint64_t u = (k & 0x8000000000000000ull) ? (k ^ 0x8000000000000000ull) : ~k;
  double v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

template <typename I, typename T>
struct Sorted {
  std::vector<decltype(sort_key(T()))> keys;  // ascending
  std::vector<I> order;                       // keys[p] = sort_key(x[order[p]])
};

// x sorted ascending: LSD radix sort on 8-bit digits of the keys, skipping the digits every key
// shares. Stable, so equal values keep their input order.
template <typename I, typename T>
Sorted<I, T> radix_sort(const T* x, index_t n) {
  using Key = decltype(sort_key(T()));
  constexpr int kBits = 8, kBuckets = 1 << kBits;  // 8: 31 ms vs 49 ms with 11 (1M floats)
  constexpr int kPasses = (int(sizeof(Key)) * 8 + kBits - 1) / kBits;
  std::vector<Key> keys(static_cast<size_t>(n)), keys2(static_cast<size_t>(n));
  std::vector<I> order(static_cast<size_t>(n)), order2(static_cast<size_t>(n));
  std::vector<index_t> hist(static_cast<size_t>(kPasses) * kBuckets, 0);
  for (index_t i = 0; i < n; ++i) {
    const Key key = sort_key(x[i]);
    keys[i] = key;
    order[i] = static_cast<I>(i);
    for (int p = 0; p < kPasses; ++p) ++hist[p * kBuckets + ((key >> (p * kBits)) & (kBuckets - 1))];
  }
  for (int p = 0; p < kPasses; ++p) {
    index_t* h = &hist[p * kBuckets];
    if (*std::max_element(h, h + kBuckets) == n) continue;  // every key has this digit
    index_t sum = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const index_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (index_t i = 0; i < n; ++i) {
      const index_t dst = h[(keys[i] >> (p * kBits)) & (kBuckets - 1)]++;
      keys2[dst] = keys[i];
      order2[dst] = order[i];
    }
    keys.swap(keys2);
    order.swap(order2);
  }
  return {std::move(keys), std::move(order)};
}

// The distinct sorted values (centred on their weighted mean, for accurate sums of squares) and
// the prefix sums of weight, weight*u and weight*u^2 over them: sums over any range in O(1).
struct Distinct {
  std::vector<double> u;      // size m, ascending
  std::vector<double> pw, ps, pq;  // size m + 1
  double offset = 0;          // the original value of u = 0
  index_t m = 0;

  double weight(index_t a, index_t b) const { return pw[b] - pw[a]; }
  // sum over [a, b) of w (u - c)^2
  double cost(index_t a, index_t b, double c) const {
    if (b <= a) return 0.0;
    const double v = (pq[b] - pq[a]) - 2.0 * c * (ps[b] - ps[a]) + c * c * (pw[b] - pw[a]);
    return v > 0.0 ? v : 0.0;
  }
  // sum over [a, b) of w (u - mean)^2: the cost at the range's own mean
  double sse(index_t a, index_t b) const {
    const double w = pw[b] - pw[a];
    if (!(w > 0.0)) return 0.0;
    const double s = ps[b] - ps[a];
    const double v = (pq[b] - pq[a]) - s * s / w;
    return v > 0.0 ? v : 0.0;
  }
  double mean(index_t a, index_t b) const {
    const double w = pw[b] - pw[a];
    return w > 0.0 ? (ps[b] - ps[a]) / w : u[a];
  }
  // first index with u > v
  index_t above(double v) const {
    return std::upper_bound(u.begin(), u.end(), v) - u.begin();
  }
  index_t at_or_above(double v) const {
    return std::lower_bound(u.begin(), u.end(), v) - u.begin();
  }
};

// The boundaries of the clusters of sorted centroids c: cluster j is [pos[j], pos[j+1]); a value
// exactly at a midpoint goes to the lower centroid, and of equal centroids the first takes every
// value (scikit-learn's arg-min takes the first), leaving the others empty.
void boundaries(const Distinct& d, const std::vector<double>& c, std::vector<index_t>& pos) {
  const index_t k = static_cast<index_t>(c.size());
  pos.resize(static_cast<size_t>(k + 1));
  pos[0] = 0;
  pos[k] = d.m;
  for (index_t j = k - 2; j >= 0; --j)
    pos[j + 1] = c[j] == c[j + 1] ? pos[j + 2] : d.above(0.5 * (c[j] + c[j + 1]));
  for (index_t j = 1; j <= k; ++j) pos[j] = std::max(pos[j], pos[j - 1]);
}

double inertia_of(const Distinct& d, const std::vector<double>& c, const std::vector<index_t>& pos) {
  double total = 0;
  for (size_t j = 0; j < c.size(); ++j) total += d.cost(pos[j], pos[j + 1], c[j]);
  return total;
}

// Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's 2 + ln k local trials):
// each step samples candidates with probability proportional to weight * squared distance to the
// nearest centroid, and keeps the one that lowers the potential most. Both the sampling and the
// potential of a candidate come from the prefix sums: O(log m) each, plus O(k) per step.
std::vector<double> kmeans_pp(const Distinct& d, index_t k, Random& rng) {
  const index_t m = d.m;
  const int trials = 2 + static_cast<int>(std::log(double(k)));
  std::vector<double> c;
  c.reserve(static_cast<size_t>(k));
  {  // first centroid: a value drawn with probability proportional to its weight
    const double r = rng.uniform() * d.pw[m];
    index_t i = std::upper_bound(d.pw.begin() + 1, d.pw.end(), r) - (d.pw.begin() + 1);
    c.push_back(d.u[std::min(i, m - 1)]);
  }
  // seg[j]: potential of cluster j (its values' weighted squared distances to c[j])
  std::vector<double> seg(1, d.cost(0, m, c[0])), cum;
  const auto lo_of = [&](index_t j) {
    return j == 0 ? index_t(0) : d.above(0.5 * (c[j - 1] + c[j]));
  };
  const auto hi_of = [&](index_t j) {
    return j + 1 == index_t(c.size()) ? m : d.above(0.5 * (c[j] + c[j + 1]));
  };
  while (index_t(c.size()) < k) {
    cum.assign(seg.size() + 1, 0.0);
    for (size_t j = 0; j < seg.size(); ++j) cum[j + 1] = cum[j] + seg[j];
    const double pot = cum.back();
    double best_gain = -1.0, best = 0.0;
    for (int t = 0; t < trials && pot > 0.0; ++t) {
      const double r = rng.uniform() * pot;
      index_t j = std::upper_bound(cum.begin() + 1, cum.end(), r) - (cum.begin() + 1);
      j = std::min<index_t>(j, index_t(seg.size()) - 1);
      const double rr = r - cum[j];
      const index_t a = lo_of(j), b = hi_of(j);
      // first value i in [a, b) whose running sum of w (u - c_j)^2 exceeds rr
      index_t lo = a, hi = b;
      while (lo < hi) {
        const index_t mid = lo + (hi - lo) / 2;
        if (d.cost(a, mid + 1, c[j]) > rr) hi = mid; else lo = mid + 1;
      }
      const double cand = d.u[std::min(lo, b - 1)];
      // gain of adding cand: the values now closer to cand than to their centroid
      const index_t right = std::lower_bound(c.begin(), c.end(), cand) - c.begin();
      if (right < index_t(c.size()) && c[right] == cand) {
        if (best_gain < 0.0) { best_gain = 0.0; best = cand; }
        continue;
      }
      // The values strictly closer to cand than to their centroid: [lo, hi). Before, those up
      // to the midpoint of the two neighbours belonged to the left one, the others to the right.
      const bool has_l = right > 0, has_r = right < index_t(c.size());
      const double cl = has_l ? c[right - 1] : 0.0, cr = has_r ? c[right] : 0.0;
      const index_t lo_v = has_l ? d.above(0.5 * (cl + cand)) : 0;
      const index_t hi_v = std::max(lo_v, has_r ? d.at_or_above(0.5 * (cand + cr)) : m);
      const index_t sp = !has_r ? hi_v
                         : !has_l ? lo_v
                         : std::clamp(d.above(0.5 * (cl + cr)), lo_v, hi_v);
      const double old_cost = (has_l ? d.cost(lo_v, sp, cl) : 0.0) +
                              (has_r ? d.cost(sp, hi_v, cr) : 0.0);
      const double gain = old_cost - d.cost(lo_v, hi_v, cand);
      if (gain > best_gain) { best_gain = gain; best = cand; }
    }
    if (!(pot > 0.0)) {  // every value sits on a centroid already: take unused values in order
      for (index_t i = 0; i < m && index_t(c.size()) < k; ++i)
        if (!std::binary_search(c.begin(), c.end(), d.u[i]))
          c.insert(std::upper_bound(c.begin(), c.end(), d.u[i]), d.u[i]);
      break;
    }
    const index_t p = std::upper_bound(c.begin(), c.end(), best) - c.begin();
    c.insert(c.begin() + p, best);
    seg.insert(seg.begin() + p, 0.0);
    for (index_t j = std::max<index_t>(0, p - 1); j <= std::min<index_t>(p + 1, index_t(c.size()) - 1); ++j)
      seg[j] = d.cost(lo_of(j), hi_of(j), c[j]);
  }
  return c;
}

struct LloydRun {
  std::vector<double> c;
  std::vector<index_t> pos;
  double inertia = 0;
  index_t n_iter = 0;
};

// Lloyd's algorithm from sorted centroids, with scikit-learn's rules: stop when the clusters no
// longer change or the summed squared shift is <= tol_abs; empty clusters take the values
// farthest from their centroids; a final assignment matches the clusters to the centroids.
LloydRun lloyd(const Distinct& d, std::vector<double> c, index_t max_iter, double tol_abs) {
  const index_t k = static_cast<index_t>(c.size());
  LloydRun run;
  std::vector<index_t> pos, old_pos;
  std::vector<double> sum(static_cast<size_t>(k)), w(static_cast<size_t>(k));
  for (index_t it = 0; it < max_iter; ++it) {
    boundaries(d, c, pos);
    run.n_iter = it + 1;
    for (index_t j = 0; j < k; ++j) {
      w[j] = d.weight(pos[j], pos[j + 1]);
      sum[j] = d.ps[pos[j + 1]] - d.ps[pos[j]];
    }
    // Empty clusters: the values farthest from their (old) centroids, largest first.
    std::vector<index_t> empty;
    for (index_t j = 0; j < k; ++j)
      if (!(w[j] > 0.0)) empty.push_back(j);
    if (!empty.empty()) {
      // The values farthest from their (old) centroids, largest first (lower value on ties),
      // as scikit-learn: in a cluster they come from its two ends inwards, so a heap of the
      // clusters' next candidates from each side yields them in order.
      struct Far {
        double dist;
        index_t value, cluster, step;  // step: +1 walking up from the low end, -1 down
        bool operator<(const Far& o) const {
          return dist < o.dist || (dist == o.dist && value > o.value);
        }
      };
      std::vector<Far> heap;
      for (index_t j = 0; j < k; ++j) {
        if (pos[j] == pos[j + 1]) continue;
        heap.push_back({std::abs(d.u[pos[j]] - c[j]), pos[j], j, +1});
        if (pos[j + 1] - 1 != pos[j])
          heap.push_back({std::abs(d.u[pos[j + 1] - 1] - c[j]), pos[j + 1] - 1, j, -1});
      }
      std::make_heap(heap.begin(), heap.end());
      std::vector<char> taken(static_cast<size_t>(d.m), 0);
      size_t e = 0;
      while (e < empty.size() && !heap.empty()) {
        std::pop_heap(heap.begin(), heap.end());
        const Far f = heap.back();
        heap.pop_back();
        const index_t next_v = f.value + f.step;
        if (next_v >= pos[f.cluster] && next_v < pos[f.cluster + 1] && !taken[next_v]) {
          heap.push_back({std::abs(d.u[next_v] - c[f.cluster]), next_v, f.cluster, f.step});
          std::push_heap(heap.begin(), heap.end());
        }
        if (taken[f.value]) continue;
        taken[f.value] = 1;
        const index_t v = f.value, from = f.cluster, to = empty[e++];
        const double wv = d.pw[v + 1] - d.pw[v];
        sum[from] -= wv * d.u[v];
        w[from] -= wv;
        sum[to] = wv * d.u[v];
        w[to] = wv;
      }
    }
    double shift = 0;
    std::vector<double> next(static_cast<size_t>(k));
    for (index_t j = 0; j < k; ++j) {
      next[j] = w[j] > 0.0 ? sum[j] / w[j] : c[j];
      shift += (next[j] - c[j]) * (next[j] - c[j]);
    }
    const bool same = pos == old_pos;
    c = next;
    if (!empty.empty()) std::sort(c.begin(), c.end());
    if (same) break;
    if (shift <= tol_abs) break;
    old_pos = pos;
  }
  boundaries(d, c, run.pos);
  run.inertia = inertia_of(d, c, run.pos);
  run.c = std::move(c);
  return run;
}

// One layer of the dynamic programme: cur[i] = min over j of prev[j-1] + sse(j, i+1), for the
// clusters numbered `layer` (0-based) ending at value i; split[i] = the best j. The best j is
// non-decreasing in i, so a divide and conquer over i needs O(m log m) evaluations.
void dp_layer(const Distinct& d, index_t layer, const std::vector<double>& prev,
              std::vector<double>& cur, std::uint32_t* split) {
  const index_t m = d.m;
  struct Range { index_t lo, hi, jlo, jhi; };
  std::vector<Range> stack{{layer, m - 1, layer, m - 1}};
  while (!stack.empty()) {
    const Range r = stack.back();
    stack.pop_back();
    if (r.lo > r.hi) continue;
    const index_t i = r.lo + (r.hi - r.lo) / 2;
    double best = std::numeric_limits<double>::infinity();
    index_t bj = std::max(r.jlo, layer);
    for (index_t j = std::max(r.jlo, layer); j <= std::min(r.jhi, i); ++j) {
      const double v = prev[j - 1] + d.sse(j, i + 1);
      if (v < best) { best = v; bj = j; }
    }
    cur[i] = best;
    if (split) split[i] = static_cast<std::uint32_t>(bj);
    stack.push_back({r.lo, i - 1, r.jlo, bj});
    stack.push_back({i + 1, r.hi, bj, r.jhi});
  }
}

// The optimal clusters (as ranges of distinct values) for k <= m. Layers are processed in blocks
// whose split points fit the memory budget; the block boundaries' cost rows are kept, and each
// block's split points are recomputed while backtracking when there is more than one block.
std::vector<index_t> optimal_ranges(const Distinct& d, index_t k, double budget) {
  const index_t m = d.m;
  MC_CHECK(m < (index_t(1) << 32), "kmeans_1d: too many distinct values for the optimal method");
  const index_t per_layer = m * index_t(sizeof(std::uint32_t));
  const index_t block = std::clamp<index_t>(static_cast<index_t>(budget / double(per_layer)), 1, k);
  const index_t n_blocks = (k + block - 1) / block;
  const double needed = double(block) * double(per_layer) +
                        double(n_blocks > 1 ? n_blocks : 0) * double(m) * sizeof(double);
  MC_CHECK(needed <= 2.0 * budget + 64.0 * double(m) * sizeof(double),
           "kmeans_1d: the optimal method needs about " << needed / (1 << 20)
           << " MiB for k=" << k << " and " << m << " distinct values; use Lloyd");
  std::vector<double> prev(static_cast<size_t>(m)), cur(static_cast<size_t>(m));
  std::vector<std::vector<double>> checkpoint(static_cast<size_t>(n_blocks));  // row before block
  std::vector<std::uint32_t> splits(static_cast<size_t>(std::min(block, k) * m));
  const auto first_layer = [&](std::uint32_t* split) {
    for (index_t i = 0; i < m; ++i) {
      prev[i] = d.sse(0, i + 1);
      if (split) split[i] = 0;
    }
  };
  const bool one_block = n_blocks == 1;
  first_layer(one_block ? splits.data() : nullptr);
  for (index_t layer = 1; layer < k; ++layer) {
    if (layer % block == 0) checkpoint[layer / block] = prev;
    dp_layer(d, layer, prev, cur, one_block ? splits.data() + layer * m : nullptr);
    prev.swap(cur);
  }
  std::vector<index_t> start(static_cast<size_t>(k + 1));
  start[k] = m;
  index_t end = m - 1;  // last value of the cluster being traced back
  for (index_t b = n_blocks - 1; b >= 0; --b) {
    const index_t l0 = b * block, l1 = std::min(k, l0 + block);
    if (!one_block) {  // recompute this block's split points from its checkpoint
      if (l0 == 0) {
        first_layer(splits.data());
      } else {
        prev = checkpoint[b];
      }
      for (index_t layer = std::max<index_t>(l0, 1); layer < l1; ++layer) {
        dp_layer(d, layer, prev, cur, splits.data() + (layer - l0) * m);
        prev.swap(cur);
      }
    }
    for (index_t layer = l1 - 1; layer >= l0; --layer) {
      const index_t j = layer == 0 ? 0 : splits[(one_block ? layer : layer - l0) * m + end];
      start[layer] = j;
      end = j - 1;
    }
  }
  return start;
}

// I: the type of positions in the sorting permutation (32 bits while n allows: half the traffic).
template <typename I, typename T>
KMeans1DResult kmeans_1d_impl(const T* x, const T* weight, index_t n, index_t k, const T* init,
                              const KMeans1DOptions& o, T* codebook, int32_t* codes) {
  KMeans1DResult res;

  // Sort once; merge equal values (their weights add up).
  Sorted<I, T> sorted = radix_sort<I>(x, n);
  const std::vector<I>& order = sorted.order;
  std::vector<I> first;  // first sorted position of each distinct value
  Distinct d;
  {
    double wsum = 0, wxsum = 0;
    for (index_t i = 0; i < n; ++i) {
      const double w = weight ? double(weight[i]) : 1.0;
      wsum += w;
      wxsum += w * double(x[i]);
    }
    d.offset = wsum > 0 ? wxsum / wsum : 0.0;
    // Count the distinct values first (equal values compare equal: -0.0 and 0.0 merge).
    index_t m = 0;
    T prev = T(0);
    for (index_t p = 0; p < n; ++p) {
      const T v = value_of(sorted.keys[p]);
      m += (p == 0 || v != prev);
      prev = v;
    }
    first.resize(static_cast<size_t>(m));
    d.u.resize(static_cast<size_t>(m));
    d.pw.assign(static_cast<size_t>(m + 1), 0.0);
    d.ps.assign(static_cast<size_t>(m + 1), 0.0);
    d.pq.assign(static_cast<size_t>(m + 1), 0.0);
    index_t v = -1;
    double w_acc = 0;
    for (index_t p = 0; p < n; ++p) {
      const T val = value_of(sorted.keys[p]);
      if (p == 0 || val != prev) {
        if (v >= 0) {  // close the previous distinct value
          d.pw[v + 1] = d.pw[v] + w_acc;
          d.ps[v + 1] = d.ps[v] + w_acc * d.u[v];
          d.pq[v + 1] = d.pq[v] + w_acc * d.u[v] * d.u[v];
        }
        ++v;
        first[v] = static_cast<I>(p);
        d.u[v] = double(val) - d.offset;
        w_acc = 0;
      }
      w_acc += weight ? double(weight[order[p]]) : 1.0;
      prev = val;
    }
    d.pw[v + 1] = d.pw[v] + w_acc;
    d.ps[v + 1] = d.ps[v] + w_acc * d.u[v];
    d.pq[v + 1] = d.pq[v] + w_acc * d.u[v] * d.u[v];
    d.m = m;
    decltype(sorted.keys)().swap(sorted.keys);  // free the keys
  }
  const index_t m = d.m;
  res.n_distinct = m;

  std::vector<index_t> range;  // cluster j = distinct values [range[j], range[j+1])
  std::vector<double> centre;
  if (k >= m) {  // every distinct value is a code; the rest repeat the largest
    range.resize(static_cast<size_t>(m + 1));
    std::iota(range.begin(), range.end(), index_t(0));
    centre = d.u;
  } else if (o.method == KMeans1DMethod::optimal) {
    range = optimal_ranges(d, k, o.memory_budget);
    for (index_t j = 0; j < k; ++j) centre.push_back(d.mean(range[j], range[j + 1]));
  } else {
    const double variance = d.pw[m] > 0 ? d.sse(0, m) / d.pw[m] : 0.0;
    const double tol_abs = o.tol * variance;
    Random rng(o.seed);
    LloydRun best;
    best.inertia = std::numeric_limits<double>::infinity();
    for (index_t r = 0; r < (init ? 1 : o.n_init); ++r) {
      std::vector<double> c;
      if (init) {
        for (index_t j = 0; j < k; ++j) c.push_back(double(init[j]) - d.offset);
        std::sort(c.begin(), c.end());
      } else {
        c = kmeans_pp(d, k, rng);
      }
      LloydRun run = lloyd(d, std::move(c), o.max_iter, tol_abs);
      if (best.c.empty() || run.inertia < best.inertia) best = std::move(run);
    }
    range = best.pos;
    centre = best.c;
    res.n_iter = best.n_iter;
  }
  const index_t kk = static_cast<index_t>(centre.size());
  for (index_t j = 0; j < k; ++j) {
    if (k >= m) {
      codebook[j] = x[order[first[std::min(j, m - 1)]]];
      continue;
    }
    const index_t jj = std::min(j, kk - 1);
    T c = T(centre[jj] + d.offset);
    if (range[jj] < range[jj + 1]) {
      // A mean lies within its values; rounding through the offset may step outside (e.g. a
      // cluster of one tiny value next to an offset of hundreds): clamp, which also keeps the
      // codebook ascending and single-value clusters exact.
      const T lo = x[order[first[range[jj]]]], hi = x[order[first[range[jj + 1] - 1]]];
      c = std::min(std::max(c, lo), hi);
    }
    codebook[j] = c;
  }
  res.inertia = 0;
  if (k < m)  // (k >= m: every value is its own code, exactly)
    for (index_t j = 0; j < kk; ++j)  // the inertia of the codebook as stored (rounded to T)
      res.inertia += d.cost(range[j], range[j + 1], double(codebook[j]) - d.offset);

  // Codes: sorted positions in parallel chunks, each finding its first cluster by binary search.
  const index_t chunk = 1 << 16;
  parallel_for(0, (n + chunk - 1) / chunk, resolve_threads_for_work(o.n_threads, double(n), 1e6),
               1, [&](index_t c, int) {
    const index_t p0 = c * chunk, p1 = std::min(n, p0 + chunk);
    index_t v = std::upper_bound(first.begin(), first.end(), static_cast<I>(p0)) - first.begin() - 1;
    index_t j = std::upper_bound(range.begin(), range.end(), v) - range.begin() - 1;
    for (index_t p = p0; p < p1; ++p) {
      while (v + 1 < m && p >= index_t(first[v + 1])) ++v;
      while (v >= range[j + 1]) ++j;
      codes[order[p]] = static_cast<int32_t>(j);
    }
  });
  return res;
}

}  // namespace

template <typename T>
KMeans1DResult kmeans_1d(const T* x, const T* weight, index_t n, index_t k, const T* init,
                         const KMeans1DOptions& o, T* codebook, int32_t* codes) {
  MC_CHECK(n >= 1 && k >= 1, "kmeans_1d: need n >= 1 and k >= 1, got n=" << n << " k=" << k);
  MC_CHECK(k <= INT32_MAX, "kmeans_1d: k must be < 2^31");
  MC_CHECK(o.max_iter >= 0 && o.n_init >= 1 && o.tol >= 0, "kmeans_1d: bad options");
  if (n <= index_t(UINT32_MAX))
    return kmeans_1d_impl<std::uint32_t>(x, weight, n, k, init, o, codebook, codes);
  return kmeans_1d_impl<index_t>(x, weight, n, k, init, o, codebook, codes);
}

template KMeans1DResult kmeans_1d<float>(const float*, const float*, index_t, index_t,
                                         const float*, const KMeans1DOptions&, float*, int32_t*);
template KMeans1DResult kmeans_1d<double>(const double*, const double*, index_t, index_t,
                                          const double*, const KMeans1DOptions&, double*,
                                          int32_t*);

}  // namespace matcompress
