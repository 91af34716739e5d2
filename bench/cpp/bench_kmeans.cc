// google-benchmark microbenchmarks of k-means (csrc/matcompress/kmeans.h), without Python.
//
// Scalar data: 1,000,000 Laplace-distributed float32 values (fixed seed), made once outside the
// timing.
//   BM_kmeans_1d_lloyd<float>/k/threads   20 Lloyd iterations (tol 0) from k-means++
//   BM_kmeans_1d_optimal<float>/k/threads the exact optimum (dynamic programming)
// Counters: values/s.
//
// Block data: n x dim i.i.d. Laplace float32 values (fixed seed, made once per size outside the
// timing); sizes (n, dim, k) = (500000, 4, 256) and (100000, 16, 1024), the cases of
// bench/kmeans.py, and (20000, 8, 64), a smoke size. The start is k points taken every n/k rows
// (the data are i.i.d., so a random sample), fixed for every run.
//   BM_kmeans_block_lloyd/n/dim/k/threads  kmeans_block from that start, 20 iterations (tol 0):
//                                          the Lloyd E+M steps, plus the centring of the data and
//                                          the final assignment of every point
//   BM_kmeans_block_kpp1/n/dim/k/threads   kmeans_block with k-means++ and max_iter=1: the
//                                          seeding plus one iteration
//   BM_kmeans_assign/n/dim/k/threads       kmeans_assign of every point to the start centroids
// Counters: n_iter (Lloyd iterations run), time/iter (lloyd: time per iteration, the fixed cost
// spread over the iterations), points/s (points x iterations per second), inertia.
#include <benchmark/benchmark.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "bench_common.h"
#include "matcompress/kmeans.h"

namespace mc = matcompress;

namespace {

constexpr mc::index_t kValues = 1000000;

const std::vector<float>& laplace() {
  static const std::vector<float> x = [] {
    std::mt19937_64 rng(20241125);
    std::exponential_distribution<double> e(1.0);
    std::bernoulli_distribution sign(0.5);
    std::vector<float> v(kValues);
    for (auto& t : v) t = float(sign(rng) ? e(rng) : -e(rng));
    return v;
  }();
  return x;
}

void run(benchmark::State& state, mc::KMeans1DMethod method) {
  const mc::index_t k = state.range(0);
  mc::KMeans1DOptions o;
  o.method = method;
  o.max_iter = 20;
  o.tol = 0.0;
  o.n_threads = static_cast<int>(state.range(1));
  const std::vector<float>& x = laplace();
  std::vector<float> codebook(static_cast<size_t>(k));
  std::vector<int32_t> codes(x.size());
  double inertia = 0;
  for (auto _ : state) {
    inertia = mc::kmeans_1d<float>(x.data(), nullptr, kValues, k, nullptr, o, codebook.data(),
                                   codes.data()).inertia;
    benchmark::DoNotOptimize(codes.data());
  }
  state.counters["values/s"] =
      benchmark::Counter(double(kValues), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["inertia"] = inertia;
}

void BM_kmeans_1d_lloyd(benchmark::State& state) { run(state, mc::KMeans1DMethod::lloyd); }
void BM_kmeans_1d_optimal(benchmark::State& state) { run(state, mc::KMeans1DMethod::optimal); }

BENCHMARK(BM_kmeans_1d_lloyd)
    ->ArgNames({"k", "threads"})
    ->ArgsProduct({{16, 256}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_kmeans_1d_optimal)
    ->ArgNames({"k", "threads"})
    ->ArgsProduct({{16}, {1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- blocks ------------------------------------------------------------------------------------

struct Blocks {
  const std::vector<float>* x;  // n x dim
  std::vector<float> init;      // k x dim: rows 0, n/k, 2n/k, ...
};

const Blocks& blocks(mc::index_t n, mc::index_t dim, mc::index_t k) {
  static std::map<std::pair<mc::index_t, mc::index_t>, std::vector<float>> data;
  static std::map<std::vector<mc::index_t>, Blocks> cache;
  auto key = std::vector<mc::index_t>{n, dim, k};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto& x = data[{n, dim}];
  if (x.empty()) {
    std::mt19937_64 rng(20241125 + static_cast<std::uint64_t>(dim));
    std::exponential_distribution<double> e(1.0);
    std::bernoulli_distribution sign(0.5);
    x.resize(static_cast<size_t>(n * dim));
    for (auto& t : x) t = float(sign(rng) ? e(rng) : -e(rng));
  }
  Blocks b;
  b.x = &x;
  b.init.resize(static_cast<size_t>(k * dim));
  const mc::index_t step = n / k;
  for (mc::index_t c = 0; c < k; ++c)
    for (mc::index_t j = 0; j < dim; ++j) b.init[c * dim + j] = x[(c * step) * dim + j];
  return cache.emplace(key, std::move(b)).first->second;
}

enum class BlockWork { lloyd, kpp1, assign };

void run_block(benchmark::State& state, BlockWork work) {
  const mc::index_t n = state.range(0), dim = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  mcbench::set_blas_threads(1);  // as the numpy face: one BLAS thread inside the kernels
  const mc::FortranGemm<float> gemm(mcbench::fortran_gemm<float>(), INT_MAX,
                                    /*caller_thread=*/true);
  const Blocks& b = blocks(n, dim, k);
  std::vector<float> centers(static_cast<size_t>(k * dim));
  std::vector<int32_t> labels(static_cast<size_t>(n));
  mc::KMeansBlockOptions o;
  o.max_iter = work == BlockWork::kpp1 ? 1 : 20;
  o.tol = 0.0;
  o.seed = 20241125;
  o.n_threads = threads;
  double inertia = 0, iters = 0, runs = 0;
  for (auto _ : state) {
    if (work == BlockWork::assign) {
      inertia = mc::kmeans_assign<float>(gemm, b.x->data(), nullptr, n, dim, b.init.data(), k,
                                         threads, labels.data());
      iters += 1;
    } else {
      const mc::KMeansBlockResult r = mc::kmeans_block<float>(
          gemm, b.x->data(), nullptr, n, dim, k,
          work == BlockWork::lloyd ? b.init.data() : nullptr, o, centers.data(), labels.data());
      inertia = r.inertia;
      iters += double(r.n_iter);
    }
    runs += 1;
    benchmark::DoNotOptimize(labels.data());
  }
  const double per_run = runs > 0 ? iters / runs : 0;
  state.counters["n_iter"] = per_run;
  if (work == BlockWork::lloyd)
    state.counters["time/iter"] = benchmark::Counter(  // time / (runs * iterations per run)
        per_run, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["points/s"] = benchmark::Counter(
      double(n) * per_run, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["inertia"] = inertia;
}

void BM_kmeans_block_lloyd(benchmark::State& state) { run_block(state, BlockWork::lloyd); }
void BM_kmeans_block_kpp1(benchmark::State& state) { run_block(state, BlockWork::kpp1); }
void BM_kmeans_assign(benchmark::State& state) { run_block(state, BlockWork::assign); }

// (n, dim, k) x threads; the smoke size first.
void block_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "dim", "k", "threads"});
  for (const auto& s : std::vector<std::vector<int64_t>>{
           {20000, 8, 64}, {500000, 4, 256}, {100000, 16, 1024}})
    for (int64_t t : {1, 2}) b->Args({s[0], s[1], s[2], t});
}

BENCHMARK(BM_kmeans_block_lloyd)->Apply(block_sizes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_kmeans_block_kpp1)->Apply(block_sizes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_kmeans_assign)->Apply(block_sizes)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
