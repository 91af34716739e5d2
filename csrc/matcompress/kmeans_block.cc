// Block k-means: Lloyd's algorithm on short vectors of weights, from a greedy k-means++ start.
// See kmeans.h for the contract; kmeans_tile.cc holds the per-instruction-set distance kernels.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>
#include <vector>

#include "kmeans.h"
#include "kmeans_tile.h"
#include "random.h"

namespace matcompress {
namespace {

constexpr index_t kTile = 256;          // points per tile (a multiple of kNearestPad)
constexpr index_t kGemmChunk = 256;     // centroids per GEMM tile: a 256 x 256 tile stays in L2
constexpr index_t kDirectMaxDim = 128;    // register-tiled kernel up to this dim (measured: faster
                                        // than GEMM tiles at dim 16-128), GEMM tiles above
constexpr index_t kStripesMax = 16;     // fixed partition of the points for the centroid sums
constexpr double kStripeBudget = 64.0 * 1024 * 1024;  // bytes of per-stripe sums at most

static_assert(kTile % kNearestPad == 0, "tiles must hold whole point blocks");

index_t tiles_of(index_t n) { return (n + kTile - 1) / kTile; }

// The points Lloyd runs on, centred by `shift` as the kernels see them.
template <typename T>
struct Points {
  const T* x = nullptr;  // n x dim
  const T* w = nullptr;  // n or null
  index_t n = 0, dim = 0;
  const T* shift = nullptr;  // dim
  double weight(index_t i) const { return w ? double(w[i]) : 1.0; }
};

// Per-thread buffers of a pass.
template <typename T>
struct Scratch {
  std::vector<T> xs, g, score;
  std::vector<int32_t> label;
};

// The centroids (centred) and everything the nearest-centroid search needs.
template <typename T>
class Nearest {
 public:
  Nearest(const Gemm<T>& gemm, index_t dim, index_t k)
      : gemm_(gemm), dim_(dim), k_(k), c_(static_cast<size_t>(k * dim)),
        nh_(static_cast<size_t>(k)), direct_(nearest_kernel<T>(active_isa())),
        argmax_(argmax_rows_kernel<T>(active_isa())),
        use_gemm_(dim > kDirectMaxDim && gemm.runs_on_caller_thread()) {}

  index_t k() const { return k_; }
  index_t dim() const { return dim_; }
  const T* centers() const { return c_.data(); }
  T* mutable_centers() { return c_.data(); }

  // Call after changing the centroids.
  void update() {
    for (index_t j = 0; j < k_; ++j) {
      const T* c = c_.data() + j * dim_;
      T s = 0;
      for (index_t d = 0; d < dim_; ++d) s += c[d] * c[d];
      nh_[j] = T(-0.5) * s;
    }
  }

  void prepare(Scratch<T>& s) const {
    s.xs.resize(static_cast<size_t>(dim_ * kTile));
    s.score.resize(kTile);
    s.label.resize(kTile);
    if (use_gemm_) s.g.resize(static_cast<size_t>(kTile * std::min(k_, kGemmChunk)));
  }

  // Nearest centroid of points [i0, i0 + rows) into s.label / s.score; s.xs gets the tile.
  void tile(const Points<T>& p, index_t i0, index_t rows, Scratch<T>& s) const {
    T* __restrict xs = s.xs.data();
    for (index_t i = 0; i < rows; ++i) {
      const T* xi = p.x + (i0 + i) * dim_;
      for (index_t d = 0; d < dim_; ++d) xs[d * kTile + i] = xi[d] - p.shift[d];
    }
    const index_t padded = (rows + kNearestPad - 1) / kNearestPad * kNearestPad;
    for (index_t d = 0; d < dim_; ++d)
      std::fill(xs + d * kTile + rows, xs + d * kTile + padded, T(0));
    if (!use_gemm_) {
      direct_(NearestTile<T>{xs, kTile, rows, dim_, c_.data(), nh_.data(), k_}, s.label.data(),
              s.score.data());
      return;
    }
    std::fill(s.score.begin(), s.score.begin() + rows, -std::numeric_limits<T>::infinity());
    std::fill(s.label.begin(), s.label.begin() + rows, 0);
    for (index_t j0 = 0; j0 < k_; j0 += kGemmChunk) {
      const index_t kc = std::min(kGemmChunk, k_ - j0);
      gemm_(true, true, rows, kc, dim_, T(1), xs, kTile, c_.data() + j0 * dim_, dim_, T(0),
            s.g.data(), kc);
      argmax_(s.g.data(), kc, rows, kc, nh_.data(), j0, s.label.data(), s.score.data());
    }
  }

  // Squared distance of tile point i (in s.xs) to centroid j.
  double distance(const Scratch<T>& s, index_t i, index_t j) const {
    const T* c = c_.data() + j * dim_;
    double r = 0;
    for (index_t d = 0; d < dim_; ++d) {
      const double e = double(s.xs[d * kTile + i]) - double(c[d]);
      r += e * e;
    }
    return r;
  }

 private:
  const Gemm<T>& gemm_;
  index_t dim_, k_;
  std::vector<T> c_, nh_;
  NearestFn<T> direct_;
  ArgmaxRowsFn<T> argmax_;
  bool use_gemm_;
};

// Threads for a pass over n points against k centroids.
int pass_threads(int n_threads, index_t n, index_t k, index_t dim) {
  return resolve_threads_for_work(n_threads, double(n) * double(k) * double(dim + 2));
}

// Labels of every point; with `inertia`, also the weighted sum of squared distances (exact
// differences in double, per tile, added in tile order).
template <typename T>
void assign_all(const Nearest<T>& nn, const Points<T>& p, int n_threads, int32_t* labels,
                double* inertia) {
  const index_t nt = tiles_of(p.n);
  std::vector<double> part(inertia ? static_cast<size_t>(nt) : 0);
  const int threads = pass_threads(n_threads, p.n, nn.k(), nn.dim());
  std::vector<Scratch<T>> scratch(static_cast<size_t>(threads));
  for (auto& s : scratch) nn.prepare(s);
  parallel_for(0, nt, threads, 1, [&](index_t t, int tid) {
    Scratch<T>& s = scratch[tid];
    const index_t i0 = t * kTile, rows = std::min(kTile, p.n - i0);
    nn.tile(p, i0, rows, s);
    std::copy(s.label.begin(), s.label.begin() + rows, labels + i0);
    if (inertia) {
      double acc = 0;
      for (index_t i = 0; i < rows; ++i) acc += p.weight(i0 + i) * nn.distance(s, i, s.label[i]);
      part[t] = acc;
    }
  });
  if (inertia) *inertia = std::accumulate(part.begin(), part.end(), 0.0);
}

// Mean and mean variance of the coordinates (unweighted, as scikit-learn's tolerance), from
// fixed blocks added in order.
template <typename T>
void moments(const T* x, index_t n, index_t dim, int n_threads, std::vector<double>& mean,
             double& mean_variance) {
  constexpr index_t kBlock = 16384;
  const index_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(nb * dim));
  const int threads = resolve_threads_for_work(n_threads, double(n) * double(dim), 1e6);
  parallel_for(0, nb, threads, 1, [&](index_t b, int) {
    double* acc = part.data() + b * dim;
    for (index_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
      for (index_t d = 0; d < dim; ++d) acc[d] += double(x[i * dim + d]);
  });
  mean.assign(static_cast<size_t>(dim), 0.0);
  for (index_t b = 0; b < nb; ++b)
    for (index_t d = 0; d < dim; ++d) mean[d] += part[b * dim + d];
  for (double& m : mean) m /= double(n);
  std::fill(part.begin(), part.end(), 0.0);
  parallel_for(0, nb, threads, 1, [&](index_t b, int) {
    double* acc = part.data() + b * dim;
    for (index_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
      for (index_t d = 0; d < dim; ++d) {
        const double e = double(x[i * dim + d]) - mean[d];
        acc[d] += e * e;
      }
  });
  double total = 0;
  for (double v : part) total += v;
  mean_variance = total / (double(n) * double(dim));
}

// Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant): each step samples
// 2 + ln k candidates with probability proportional to weight * squared distance to the nearest
// centroid and keeps the one that lowers the potential sum_i w_i min(closest_i, d(x_i, q)) most.
// One parallel pass over fixed blocks of points per step: it first folds the previous step's
// centroid into `closest`, then sums every candidate's potential per block with a vectorized
// kernel (a GEMM-like register tile of points x candidates). Block sums are added in block order
// and the chosen candidate's block sums drive the next step's sampling, so the result does not
// depend on the thread count.
template <typename T>
class PlusPlus {
 public:
  static constexpr index_t kBlock = 4096;  // points per block, a multiple of kNearestPad

  PlusPlus(const Points<T>& p, int n_threads)
      : p_(p), n_(p.n), dim_(p.dim), n_threads_(n_threads),
        npad_((p.n + kNearestPad - 1) / kNearestPad * kNearestPad), nb_((p.n + kBlock - 1) / kBlock),
        potentials_(potentials_kernel<T>(active_isa())), update_(closest_kernel<T>(active_isa())) {
    xs_.assign(static_cast<size_t>(dim_ * npad_), T(0));
    xn_.assign(static_cast<size_t>(npad_), T(0));
    closest_.assign(static_cast<size_t>(npad_), T(0));
    if (p.w) {
      w_.assign(static_cast<size_t>(npad_), T(0));
      std::copy(p.w, p.w + n_, w_.begin());
    }
    parallel_for(0, nb_, resolve_threads_for_work(n_threads, double(n_) * dim_, 1e6), 1,
                 [&](index_t b, int) {
      for (index_t i = b * kBlock; i < std::min(n_, (b + 1) * kBlock); ++i) {
        T s = 0;
        for (index_t d = 0; d < dim_; ++d) {
          const T v = p.x[i * dim_ + d] - p.shift[d];
          xs_[d * npad_ + i] = v;
          s += v * v;
        }
        xn_[i] = s;
        closest_[i] = std::numeric_limits<T>::max();
      }
    });
  }

  // k point indices, in the order chosen.
  std::vector<index_t> run(index_t k, Random& rng) {
    std::vector<index_t> chosen;
    chosen.reserve(static_cast<size_t>(k));
    {  // first: a point drawn with probability proportional to its weight
      double total = 0;
      for (index_t i = 0; i < n_; ++i) total += p_.weight(i);
      const double r = rng.uniform() * total;
      double acc = 0;
      index_t pick = n_ - 1;
      for (index_t i = 0; i < n_; ++i) {
        acc += p_.weight(i);
        if (acc > r && p_.weight(i) > 0) {
          pick = i;
          break;
        }
      }
      chosen.push_back(pick);
    }
    const int trials = 2 + static_cast<int>(std::log(double(k)));
    std::vector<T> q(static_cast<size_t>(trials * dim_)), qn(static_cast<size_t>(trials));
    std::vector<T> prev(static_cast<size_t>(dim_));
    std::vector<double> part(static_cast<size_t>(nb_ * trials)), pot(static_cast<size_t>(trials));
    std::vector<double> block_pot(static_cast<size_t>(nb_)), cum(static_cast<size_t>(nb_));
    std::vector<index_t> cand(static_cast<size_t>(trials));
    const int threads =
        resolve_threads_for_work(n_threads_, double(n_) * double(dim_ + 2) * (trials + 1), 2e5);
    // Step 0: closest = distance to the first centroid; block potentials.
    load(chosen[0], prev.data());
    T prev_n = norm(prev.data());
    parallel_for(0, nb_, threads, 1, [&](index_t b, int) {
      fold(b, prev.data(), prev_n);
      block_pot[b] = block_potential(b);
    });
    index_t fill_cursor = 0;
    while (index_t(chosen.size()) < k) {
      double total = 0;
      for (index_t b = 0; b < nb_; ++b) cum[b] = (total += block_pot[b]);
      if (!(total > 0)) {  // every point sits on a centroid: add points not chosen yet, in order
        for (; fill_cursor < n_ && index_t(chosen.size()) < k; ++fill_cursor)
          if (std::none_of(chosen.begin(), chosen.end(),
                           [&](index_t c) { return same_point(fill_cursor, c); }))
            chosen.push_back(fill_cursor);
        while (index_t(chosen.size()) < k) chosen.push_back(chosen[0]);
        break;
      }
      for (int t = 0; t < trials; ++t) {
        cand[t] = sample(rng.uniform() * total, cum, prev.data(), prev_n);
        load(cand[t], q.data() + t * dim_);
        qn[t] = norm(q.data() + t * dim_);
      }
      std::fill(part.begin(), part.end(), 0.0);
      parallel_for(0, nb_, threads, 1, [&](index_t b, int) {
        fold(b, prev.data(), prev_n);
        const index_t i0 = b * kBlock, rows = std::min(kBlock, n_ - i0);
        potentials_(xs_.data() + i0, npad_, rows, dim_, xn_.data() + i0,
                    w_.empty() ? nullptr : w_.data() + i0, closest_.data() + i0, q.data(),
                    qn.data(), trials, part.data() + b * trials);
      });
      std::fill(pot.begin(), pot.end(), 0.0);
      for (index_t b = 0; b < nb_; ++b)
        for (int t = 0; t < trials; ++t) pot[t] += part[b * trials + t];
      int best = 0;
      for (int t = 1; t < trials; ++t)
        if (pot[t] < pot[best]) best = t;
      for (index_t b = 0; b < nb_; ++b) block_pot[b] = part[b * trials + best];
      chosen.push_back(cand[best]);
      std::copy(q.begin() + best * dim_, q.begin() + (best + 1) * dim_, prev.begin());
      prev_n = qn[best];
    }
    return chosen;
  }

 private:
  void load(index_t i, T* out) const {
    for (index_t d = 0; d < dim_; ++d) out[d] = xs_[d * npad_ + i];
  }
  T norm(const T* v) const {
    T s = 0;
    for (index_t d = 0; d < dim_; ++d) s += v[d] * v[d];
    return s;
  }
  bool same_point(index_t i, index_t j) const {
    for (index_t d = 0; d < dim_; ++d)
      if (p_.x[i * dim_ + d] != p_.x[j * dim_ + d]) return false;
    return true;
  }
  // closest = min(closest, distance to the centroid v) on block b (idempotent).
  void fold(index_t b, const T* v, T vn) {
    const index_t i0 = b * kBlock, rows = std::min(kBlock, n_ - i0);
    update_(xs_.data() + i0, npad_, rows, dim_, xn_.data() + i0, v, vn, closest_.data() + i0);
  }
  double block_potential(index_t b) const {
    double s = 0;
    for (index_t i = b * kBlock; i < std::min(n_, (b + 1) * kBlock); ++i)
      s += p_.weight(i) * double(closest_[i]);
    return s;
  }
  // The point where the running sum of weight * closest passes r (blocks in order).
  index_t sample(double r, const std::vector<double>& cum, const T* v, T vn) {
    index_t b = std::upper_bound(cum.begin(), cum.end(), r) - cum.begin();
    if (b >= nb_) b = nb_ - 1;
    while (b > 0 && cum[b] == (b > 0 ? cum[b - 1] : 0.0)) --b;  // an empty block: step back
    fold(b, v, vn);
    double acc = b > 0 ? cum[b - 1] : 0.0;
    index_t last = -1;
    for (index_t i = b * kBlock; i < std::min(n_, (b + 1) * kBlock); ++i) {
      const double mass = p_.weight(i) * double(closest_[i]);
      if (!(mass > 0)) continue;
      last = i;
      acc += mass;
      if (acc > r) return i;
    }
    return last >= 0 ? last : b * kBlock;
  }

  const Points<T>& p_;
  index_t n_, dim_;
  int n_threads_;
  index_t npad_, nb_;
  PotentialsFn<T> potentials_;
  ClosestFn<T> update_;
  std::vector<T> xs_, xn_, closest_, w_;
};

// k distinct points drawn without replacement with probability proportional to weight
// (Efraimidis & Spirakis: the k largest keys log(u) / w), in index order; zero-weight points
// only when fewer than k weights are positive.
template <typename T>
std::vector<index_t> random_points(const Points<T>& p, index_t k, Random& rng) {
  using Item = std::pair<double, index_t>;  // (key, index); the heap's top is the smallest key
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (index_t i = 0; i < p.n; ++i) {
    const double w = p.weight(i);
    const double u = rng.uniform();
    const double key = w > 0 ? std::log1p(-u) / w : -std::numeric_limits<double>::max();
    if (index_t(heap.size()) < k) {
      heap.emplace(key, i);
    } else if (key > heap.top().first) {
      heap.pop();
      heap.emplace(key, i);
    }
  }
  std::vector<index_t> chosen;
  while (!heap.empty()) {
    chosen.push_back(heap.top().second);
    heap.pop();
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

struct LloydOutcome {
  index_t n_iter = 0;
  bool strict = false;  // stopped because no label changed: the labels match the centroids
};

// Lloyd iterations from the centroids in nn (centred), labels of p.n points written to `labels`.
template <typename T>
LloydOutcome lloyd(Nearest<T>& nn, const Points<T>& p, index_t max_iter, double tol_abs,
                   int n_threads, int32_t* labels) {
  const index_t k = nn.k(), dim = nn.dim(), n = p.n;
  const index_t nt = tiles_of(n);
  const double stripe_bytes = double(k) * double(dim + 1) * sizeof(double);
  const index_t stripes = std::max<index_t>(
      1, std::min<index_t>({kStripesMax, nt, index_t(kStripeBudget / stripe_bytes)}));
  const index_t per_stripe = (nt + stripes - 1) / stripes;
  std::vector<double> sums(static_cast<size_t>(stripes * k * dim));
  std::vector<double> wsum(static_cast<size_t>(stripes * k));
  std::vector<index_t> changed(static_cast<size_t>(stripes));
  const int threads = resolve_threads(pass_threads(n_threads, n, k, dim), stripes);
  std::vector<Scratch<T>> scratch(static_cast<size_t>(threads));
  for (auto& s : scratch) nn.prepare(s);
  std::fill(labels, labels + n, -1);
  std::vector<double> total(static_cast<size_t>(k * dim)), wtotal(static_cast<size_t>(k));
  std::vector<T> old(static_cast<size_t>(k * dim));
  LloydOutcome out;
  for (index_t it = 0; it < max_iter; ++it) {
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(wsum.begin(), wsum.end(), 0.0);
    parallel_for(0, stripes, threads, 1, [&](index_t st, int tid) {
      Scratch<T>& s = scratch[tid];
      double* S = sums.data() + st * k * dim;
      double* Wt = wsum.data() + st * k;
      index_t ch = 0;
      for (index_t t = st * per_stripe; t < std::min(nt, (st + 1) * per_stripe); ++t) {
        const index_t i0 = t * kTile, rows = std::min(kTile, n - i0);
        nn.tile(p, i0, rows, s);
        for (index_t i = 0; i < rows; ++i) {
          const int32_t j = s.label[i];
          ch += labels[i0 + i] != j;
          labels[i0 + i] = j;
          const double w = p.weight(i0 + i);
          Wt[j] += w;
          double* Sj = S + j * dim;
          for (index_t d = 0; d < dim; ++d) Sj[d] += w * double(s.xs[d * kTile + i]);
        }
      }
      changed[st] = ch;
    });
    std::fill(total.begin(), total.end(), 0.0);
    std::fill(wtotal.begin(), wtotal.end(), 0.0);
    for (index_t st = 0; st < stripes; ++st) {
      for (index_t q = 0; q < k * dim; ++q) total[q] += sums[st * k * dim + q];
      for (index_t j = 0; j < k; ++j) wtotal[j] += wsum[st * k + j];
    }
    std::copy(nn.centers(), nn.centers() + k * dim, old.begin());
    std::vector<index_t> empty;
    for (index_t j = 0; j < k; ++j)
      if (wtotal[j] == 0) empty.push_back(j);
    if (!empty.empty()) {  // scikit-learn's rule: the points farthest from their centroids
      std::vector<double> far(static_cast<size_t>(n));
      parallel_for(0, nt, resolve_threads_for_work(n_threads, double(n) * dim, 1e6), 1,
                   [&](index_t t, int) {
        for (index_t i = t * kTile; i < std::min(n, (t + 1) * kTile); ++i) {
          double r = 0;
          for (index_t d = 0; d < dim; ++d) {
            const double e = double(p.x[i * dim + d]) - double(p.shift[d]) -
                             double(old[labels[i] * dim + d]);
            r += e * e;
          }
          far[i] = p.weight(i) > 0 ? r : -1.0;
        }
      });
      // the len(empty) largest, by distance descending then index ascending
      using Item = std::pair<double, index_t>;
      const auto after = [](const Item& a, const Item& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      };
      std::priority_queue<Item, std::vector<Item>, decltype(after)> heap(after);
      for (index_t i = 0; i < n; ++i) {
        if (far[i] < 0) continue;
        if (index_t(heap.size()) < index_t(empty.size())) {
          heap.emplace(far[i], i);
        } else if (after(Item(far[i], i), heap.top())) {
          heap.pop();
          heap.emplace(far[i], i);
        }
      }
      std::vector<index_t> picks(heap.size());
      for (size_t q = picks.size(); q-- > 0;) {
        picks[q] = heap.top().second;
        heap.pop();
      }
      for (size_t e = 0; e < picks.size(); ++e) {
        const index_t i = picks[e], to = empty[e], from = labels[i];
        const double w = p.weight(i);
        for (index_t d = 0; d < dim; ++d) {
          const double v = w * (double(p.x[i * dim + d]) - double(p.shift[d]));
          total[from * dim + d] -= v;
          total[to * dim + d] = v;
        }
        wtotal[from] -= w;
        wtotal[to] = w;
      }
    }
    T* c = nn.mutable_centers();
    double shift = 0;
    for (index_t j = 0; j < k; ++j) {
      if (!(wtotal[j] > 0)) continue;  // keeps its centroid (only with zero weights)
      for (index_t d = 0; d < dim; ++d) {
        c[j * dim + d] = T(total[j * dim + d] / wtotal[j]);
        const double e = double(c[j * dim + d]) - double(old[j * dim + d]);
        shift += e * e;
      }
    }
    nn.update();
    out.n_iter = it + 1;
    if (std::accumulate(changed.begin(), changed.end(), index_t(0)) == 0) {
      out.strict = true;
      break;
    }
    if (shift <= tol_abs) break;
  }
  return out;
}

template <typename T>
KMeansBlockResult kmeans_block_impl(const Gemm<T>& gemm, const T* x, const T* weight, index_t n,
                                    index_t dim, index_t k, const T* init,
                                    const KMeansBlockOptions& o, T* centers, int32_t* labels) {
  std::vector<double> mean;
  double variance = 0;
  moments(x, n, dim, o.n_threads, mean, variance);
  std::vector<T> shift(mean.begin(), mean.end());
  const double tol_abs = o.tol * variance;
  Random rng(o.seed);

  // Lloyd's points: all, or a sample of k * max_points_per_centroid (sorted indices).
  Points<T> all{x, weight, n, dim, shift.data()};
  Points<T> train = all;
  std::vector<T> sx, sw;
  if (o.max_points_per_centroid > 0 &&
      double(n) > double(k) * double(o.max_points_per_centroid)) {
    const index_t m = k * o.max_points_per_centroid;
    std::vector<index_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), index_t(0));
    for (index_t i = 0; i < m; ++i) std::swap(idx[i], idx[i + rng.below(n - i)]);
    std::sort(idx.begin(), idx.begin() + m);
    sx.resize(static_cast<size_t>(m * dim));
    if (weight) sw.resize(static_cast<size_t>(m));
    for (index_t i = 0; i < m; ++i) {
      std::copy(x + idx[i] * dim, x + (idx[i] + 1) * dim, sx.begin() + i * dim);
      if (weight) sw[i] = weight[idx[i]];
    }
    train = Points<T>{sx.data(), weight ? sw.data() : nullptr, m, dim, shift.data()};
  }

  Nearest<T> nn(gemm, dim, k);
  std::vector<T> best_centers;
  std::vector<int32_t> run_labels(static_cast<size_t>(train.n)), other_labels;
  KMeansBlockResult res;
  double best_inertia = std::numeric_limits<double>::infinity();
  const index_t runs = init ? 1 : o.n_init;
  for (index_t r = 0; r < runs; ++r) {
    T* c = nn.mutable_centers();
    if (init) {
      for (index_t j = 0; j < k; ++j)
        for (index_t d = 0; d < dim; ++d) c[j * dim + d] = init[j * dim + d] - shift[d];
    } else {
      Random run_rng(rng.next());
      std::vector<index_t> chosen;
      if (o.random_init) {
        chosen = random_points(train, k, run_rng);
      } else {
        PlusPlus<T> pp(train, o.n_threads);
        chosen = pp.run(k, run_rng);
      }
      for (index_t j = 0; j < k; ++j)
        for (index_t d = 0; d < dim; ++d)
          c[j * dim + d] = train.x[chosen[j] * dim + d] - shift[d];
    }
    nn.update();
    const LloydOutcome lo = lloyd(nn, train, o.max_iter, tol_abs, o.n_threads, run_labels.data());
    // Final labels and inertia over every point, with the final centroids (a last assignment
    // step, as scikit-learn's when the labels were still changing).
    double inertia = 0;
    int32_t* dst = labels;
    if (runs > 1) {
      other_labels.resize(static_cast<size_t>(n));
      dst = r == 0 ? labels : other_labels.data();
    }
    assign_all(nn, all, o.n_threads, dst, &inertia);
    if (r > 0 && inertia < best_inertia) std::copy(other_labels.begin(), other_labels.end(), labels);
    if (r == 0 || inertia < best_inertia) {
      best_inertia = inertia;
      best_centers.assign(nn.centers(), nn.centers() + k * dim);
      res.n_iter = lo.n_iter;
    }
  }
  res.inertia = best_inertia;
  for (index_t j = 0; j < k; ++j)
    for (index_t d = 0; d < dim; ++d)
      centers[j * dim + d] = T(double(best_centers[j * dim + d]) + mean[d]);
  return res;
}

}  // namespace

template <typename T>
KMeansBlockResult kmeans_block(const Gemm<T>& gemm, const T* x, const T* weight, index_t n,
                               index_t dim, index_t k, const T* init,
                               const KMeansBlockOptions& o, T* centers, int32_t* labels) {
  MC_CHECK(n >= 1 && dim >= 1 && k >= 1 && k <= n,
           "kmeans_block: need 1 <= k <= n and dim >= 1, got n=" << n << " dim=" << dim
                                                                  << " k=" << k);
  MC_CHECK(n <= INT32_MAX, "kmeans_block: more than 2^31 - 1 points");
  MC_CHECK(o.max_iter >= 0 && o.n_init >= 1 && o.tol >= 0 && o.max_points_per_centroid >= 0,
           "kmeans_block: bad options");
  return kmeans_block_impl(gemm, x, weight, n, dim, k, init, o, centers, labels);
}

template <typename T>
double kmeans_assign(const Gemm<T>& gemm, const T* x, const T* weight, index_t n, index_t dim,
                     const T* centers, index_t k, int n_threads, int32_t* labels) {
  MC_CHECK(n >= 0 && dim >= 1 && k >= 1, "kmeans_assign: need dim >= 1 and k >= 1");
  MC_CHECK(n <= INT32_MAX, "kmeans_assign: more than 2^31 - 1 points");
  if (n == 0) return 0.0;
  // Centre on the centroids' mean, for accurate dot products.
  std::vector<T> shift(static_cast<size_t>(dim));
  for (index_t d = 0; d < dim; ++d) {
    double s = 0;
    for (index_t j = 0; j < k; ++j) s += double(centers[j * dim + d]);
    shift[d] = T(s / double(k));
  }
  Nearest<T> nn(gemm, dim, k);
  T* c = nn.mutable_centers();
  for (index_t j = 0; j < k; ++j)
    for (index_t d = 0; d < dim; ++d) c[j * dim + d] = centers[j * dim + d] - shift[d];
  nn.update();
  double inertia = 0;
  assign_all(nn, Points<T>{x, weight, n, dim, shift.data()}, n_threads, labels, &inertia);
  return inertia;
}

template KMeansBlockResult kmeans_block<float>(const Gemm<float>&, const float*, const float*,
                                               index_t, index_t, index_t, const float*,
                                               const KMeansBlockOptions&, float*, int32_t*);
template KMeansBlockResult kmeans_block<double>(const Gemm<double>&, const double*,
                                                const double*, index_t, index_t, index_t,
                                                const double*, const KMeansBlockOptions&,
                                                double*, int32_t*);
template double kmeans_assign<float>(const Gemm<float>&, const float*, const float*, index_t,
                                     index_t, const float*, index_t, int, int32_t*);
template double kmeans_assign<double>(const Gemm<double>&, const double*, const double*, index_t,
                                      index_t, const double*, index_t, int, int32_t*);

}  // namespace matcompress
