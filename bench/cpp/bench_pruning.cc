// google-benchmark microbenchmarks of pruning (csrc/matcompress/pruning.h), without Python.
//
// Data: a 4096 x 4096 float32 Gaussian matrix (fixed seed), made once outside the timing;
// magnitude scores (the matrix itself), output as CSR with uint16 column indices.
//   BM_prune_csr/br/bc/threads     sparsity 0.9: keep 10 % of the blocks (br x bc)
//   BM_prune_mask/br/bc/threads    the same selection written as a bool mask
//   BM_prune_n_m/n/m/threads       N:M (2:4 keeps half)
// Counters: entries/s (of the input matrix).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "bench_common.h"
#include "matcompress/pruning.h"

namespace mc = matcompress;

namespace {

constexpr mc::index_t kRows = 4096, kCols = 4096;
constexpr double kSparsity = 0.9;

const std::vector<float>& gaussian() {
  static const std::vector<float> x = [] {
    std::mt19937_64 rng(20250301);
    std::normal_distribution<float> g;
    std::vector<float> v(static_cast<size_t>(kRows * kCols));
    for (auto& t : v) t = g(rng);
    return v;
  }();
  return x;
}

mc::index_t n_keep(mc::index_t br, mc::index_t bc) {
  const mc::index_t blocks = (kRows / br) * (kCols / bc);
  return blocks - static_cast<mc::index_t>(std::floor(kSparsity * double(blocks)));
}

void set_counters(benchmark::State& state) {
  state.counters["entries/s"] = benchmark::Counter(double(kRows) * double(kCols),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

void BM_prune_csr(benchmark::State& state) {
  const mc::index_t br = state.range(0), bc = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const std::vector<float>& a = gaussian();
  const mc::index_t keep = n_keep(br, bc), nnz = keep * br * bc;
  std::vector<std::int64_t> indptr(kRows + 1);
  std::vector<std::uint16_t> indices(static_cast<size_t>(nnz));
  std::vector<float> values(static_cast<size_t>(nnz));
  for (auto _ : state) {
    mc::prune_csr<float, float, std::uint16_t>(a.data(), a.data(), kRows, kCols, br, bc, keep,
                                               threads, indptr.data(), indices.data(),
                                               values.data());
    benchmark::DoNotOptimize(values.data());
  }
  set_counters(state);
}

void BM_prune_mask(benchmark::State& state) {
  const mc::index_t br = state.range(0), bc = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const std::vector<float>& a = gaussian();
  std::unique_ptr<bool[]> mask(new bool[static_cast<size_t>(kRows * kCols)]);
  for (auto _ : state) {
    mc::prune_mask<float>(a.data(), kRows, kCols, br, bc, n_keep(br, bc), threads, mask.get());
    benchmark::DoNotOptimize(mask.get());
  }
  set_counters(state);
}

void BM_prune_n_m(benchmark::State& state) {
  const mc::index_t n = state.range(0), m = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const std::vector<float>& a = gaussian();
  const mc::index_t nnz = kRows * (kCols / m) * n;
  std::vector<std::int64_t> indptr(kRows + 1);
  std::vector<std::uint16_t> indices(static_cast<size_t>(nnz));
  std::vector<float> values(static_cast<size_t>(nnz));
  for (auto _ : state) {
    mc::prune_n_m_csr<float, float, std::uint16_t>(a.data(), a.data(), kRows, kCols, n, m,
                                                   threads, indptr.data(), indices.data(),
                                                   values.data());
    benchmark::DoNotOptimize(values.data());
  }
  set_counters(state);
}

BENCHMARK(BM_prune_csr)
    ->ArgNames({"br", "bc", "threads"})
    ->ArgsProduct({{1}, {1}, {1, 2}})
    ->Args({1, 4, 1})
    ->Args({1, 4, 2})
    ->Args({4, 4, 1})
    ->Args({4, 4, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_prune_mask)
    ->ArgNames({"br", "bc", "threads"})
    ->ArgsProduct({{1}, {1}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_prune_n_m)
    ->ArgNames({"n", "m", "threads"})
    ->ArgsProduct({{2}, {4}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
