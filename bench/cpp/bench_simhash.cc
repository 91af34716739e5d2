// google-benchmark microbenchmarks of simhash (csrc/matcompress/simhash.h), without Python.
//
// Data: A, 4096 x 1024 float32 N(0, 1) values (fixed seed), made once outside the timing.
//   BM_simhash_encode<T>/k/threads/gemm   the whole encode (R generated tile by tile, P = R^T A,
//                                         signs, least-squares scales); gemm=1: BLAS held to one
//                                         thread and called per OpenMP thread (the numpy face),
//                                         gemm=0: BLAS with `threads` threads, outside the regions
//   BM_projection<T>/k/threads            generating R (4096 x k) alone
//   BM_gemm_only<T>/k/threads             the GEMM P = R^T A alone, R made beforehand (one BLAS
//                                         call with `threads` threads): the floor of the encode
// Counters: items/s = elements of A (or of R) per second; GFLOP/s of the 2 m k n of P = R^T A.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "bench_common.h"
#include "matcompress/simhash.h"

namespace mc = matcompress;

namespace {

constexpr mc::index_t kRows = 4096, kCols = 1024;
constexpr std::uint64_t kSeed = 20241125;

template <typename T>
const std::vector<T>& matrix() {
  static const std::vector<T> a = [] {
    std::mt19937_64 rng(kSeed);
    std::normal_distribution<double> normal;
    std::vector<T> v(static_cast<size_t>(kRows * kCols));
    for (auto& x : v) x = static_cast<T>(normal(rng));
    return v;
  }();
  return a;
}

void gemm_counters(benchmark::State& state, mc::index_t k) {
  state.counters["items/s"] =
      benchmark::Counter(double(kRows * kCols), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * double(kRows) * double(k) * double(kCols),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

template <typename T>
void BM_simhash_encode(benchmark::State& state) {
  const mc::index_t k = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  const bool inner_gemm = state.range(2) != 0;
  if (!mcbench::set_blas_threads(inner_gemm ? 1 : threads) && inner_gemm) {
    state.SkipWithError("gemm=1 needs OpenBLAS (openblas_set_num_threads) to hold it to 1 thread");
    return;
  }
  const mc::FortranGemm<T> gemm(mcbench::fortran_gemm<T>(), INT_MAX, /*caller_thread=*/inner_gemm);
  const std::vector<T>& a = matrix<T>();
  std::vector<std::uint8_t> bits(static_cast<size_t>(k * ((kCols + 7) / 8)));
  std::vector<T> scale(static_cast<size_t>(kCols));
  mc::SimhashOptions o;
  o.n_threads = threads;
  for (auto _ : state) {
    mc::simhash_encode<T>(gemm, a.data(), kRows, kCols, k, kSeed, o, bits.data(), scale.data());
    benchmark::DoNotOptimize(bits.data());
    benchmark::DoNotOptimize(scale.data());
  }
  gemm_counters(state, k);
}

template <typename T>
void BM_projection(benchmark::State& state) {
  const mc::index_t k = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  std::vector<T> r(static_cast<size_t>(kRows * k));
  for (auto _ : state) {
    mc::simhash_projection<T>(kSeed, kRows, k, 0, kRows, r.data(), threads);
    benchmark::DoNotOptimize(r.data());
  }
  state.counters["items/s"] =
      benchmark::Counter(double(kRows * k), benchmark::Counter::kIsIterationInvariantRate);
}

template <typename T>
void BM_gemm_only(benchmark::State& state) {
  const mc::index_t k = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  mcbench::set_blas_threads(threads);
  const mc::FortranGemm<T> gemm(mcbench::fortran_gemm<T>());
  std::vector<T> r(static_cast<size_t>(kRows * k)), p(static_cast<size_t>(k * kCols));
  mc::simhash_projection<T>(kSeed, kRows, k, 0, kRows, r.data(), threads);
  const std::vector<T>& a = matrix<T>();
  for (auto _ : state) {
    gemm(true, false, k, kCols, kRows, T(1), r.data(), k, a.data(), kCols, T(0), p.data(), kCols);
    benchmark::DoNotOptimize(p.data());
  }
  gemm_counters(state, k);
}

BENCHMARK_TEMPLATE(BM_simhash_encode, float)
    ->ArgNames({"k", "threads", "gemm"})
    ->ArgsProduct({{256, 1024}, {1, 2}, {1, 0}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_simhash_encode, double)
    ->ArgNames({"k", "threads", "gemm"})
    ->ArgsProduct({{256}, {2}, {1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_projection, float)
    ->ArgNames({"k", "threads"})
    ->ArgsProduct({{256, 1024}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_gemm_only, float)
    ->ArgNames({"k", "threads"})
    ->ArgsProduct({{256, 1024}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
