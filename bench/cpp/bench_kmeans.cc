// google-benchmark microbenchmarks of scalar k-means (csrc/matcompress/kmeans.h), without Python.
//
// Data: 1,000,000 Laplace-distributed float32 values (fixed seed), made once outside the timing.
//   BM_kmeans_1d_lloyd<float>/k/threads   20 Lloyd iterations (tol 0) from k-means++
//   BM_kmeans_1d_optimal<float>/k/threads the exact optimum (dynamic programming)
// Counters: values/s.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>
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

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
