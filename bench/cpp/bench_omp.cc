// google-benchmark microbenchmarks of the Batch-OMP core (csrc/matcompress/omp.h), without Python.
//
// The three cases of DESIGN.md §7 (dictionary n_components x n_features, s atoms a signal):
//   case 0 = a: 256 x 64,   s=8,  20000 signals
//   case 1 = b: 1024 x 256, s=16, 10000 signals
//   case 2 = c: 2048 x 512, s=32,  4000 signals
// Data: Gaussian dictionary with unit-norm rows, Gaussian signals, fixed seed, made once outside
// the timing loops. Every benchmark reports signals/s (wall time: UseRealTime).
//
//   BM_sparse_encode_omp<float>/case/threads/gemm
//     gemm = 1: the numpy face's mode: the BLAS held to one thread and called by each OpenMP
//               thread on its own block of signals (FortranGemm caller_thread = true);
//     gemm = 0: the BLAS runs `threads` threads of its own, called outside OpenMP regions.
//   BM_gemm_projection<float>/case/threads
//     the floor: the one GEMM every OMP needs, the projections X D^T of all signals (same layout
//     as the core's), the BLAS at `threads` threads.
//
// Thread counts of the BLAS are pinned through openblas_set_num_threads when the linked BLAS is
// OpenBLAS (a weak symbol: other BLAS libraries keep their own setting, and gemm=1 is skipped).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.h"
#include "matcompress/omp.h"

namespace mc = matcompress;

namespace {

struct CaseDef {
  const char* name;
  int n_components, n_features, s, n_signals;
};
constexpr CaseDef kCases[] = {
    {"a", 256, 64, 8, 20000},
    {"b", 1024, 256, 16, 10000},
    {"c", 2048, 512, 32, 4000},
};
constexpr std::uint64_t kSeed = 20240611;

using mcbench::fortran_gemm;
using mcbench::set_blas_threads;

template <typename T>
struct Problem {
  std::vector<T> D;  // n_components x n_features, unit-norm rows
  std::vector<T> X;  // n_signals x n_features
};

// Made once per (case, type) and kept for the whole run: set-up stays out of every timing.
template <typename T>
const Problem<T>& problem(int c) {
  static std::map<int, std::unique_ptr<Problem<T>>> cache;
  auto& slot = cache[c];
  if (!slot) {
    const CaseDef& cd = kCases[c];
    slot = std::make_unique<Problem<T>>();
    std::mt19937_64 rng(kSeed + static_cast<std::uint64_t>(c));
    std::normal_distribution<double> normal;
    slot->D.resize(static_cast<size_t>(cd.n_components) * cd.n_features);
    for (int r = 0; r < cd.n_components; ++r) {
      double norm2 = 0;
      std::vector<double> row(cd.n_features);
      for (auto& v : row) {
        v = normal(rng);
        norm2 += v * v;
      }
      const double inv = 1.0 / std::sqrt(norm2);
      for (int f = 0; f < cd.n_features; ++f)
        slot->D[static_cast<size_t>(r) * cd.n_features + f] = static_cast<T>(row[f] * inv);
    }
    slot->X.resize(static_cast<size_t>(cd.n_signals) * cd.n_features);
    for (auto& v : slot->X) v = static_cast<T>(normal(rng));
  }
  return *slot;
}

std::string case_label(const CaseDef& cd) {
  return std::string(cd.name) + ": " + std::to_string(cd.n_components) + "x" +
         std::to_string(cd.n_features) + " s=" + std::to_string(cd.s) + " n=" +
         std::to_string(cd.n_signals);
}

template <typename T>
void BM_sparse_encode_omp(benchmark::State& state) {
  const int c = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const bool inner_gemm = state.range(2) != 0;
  const CaseDef& cd = kCases[c];
  const Problem<T>& p = problem<T>(c);
  if (!set_blas_threads(inner_gemm ? 1 : threads) && inner_gemm) {
    state.SkipWithError("gemm=1 needs OpenBLAS (openblas_set_num_threads) to hold it to 1 thread");
    return;
  }
  const mc::FortranGemm<T> gemm(fortran_gemm<T>(), INT_MAX, /*caller_thread=*/inner_gemm);

  mc::OmpProblem<T> prob;
  prob.X = p.X.data();
  prob.n_samples = cd.n_signals;
  prob.n_features = cd.n_features;
  prob.dictionary = p.D.data();
  prob.n_components = cd.n_components;
  mc::OmpOptions opt;
  opt.max_atoms = cd.s;
  opt.n_threads = threads;
  std::vector<int32_t> indices(static_cast<size_t>(cd.n_signals) * cd.s);
  std::vector<T> values(indices.size());
  std::vector<mc::index_t> nnz(cd.n_signals);
  const mc::OmpCodes<T> out{indices.data(), values.data(), nnz.data()};

  mc::index_t premature = 0;
  for (auto _ : state) {
    const mc::OmpStats st = mc::sparse_encode_omp<T>(gemm, prob, opt, out);
    premature += st.n_premature;
    benchmark::DoNotOptimize(values.data());
    benchmark::ClobberMemory();
  }
  mc::index_t total_nnz = 0;
  for (auto v : nnz) total_nnz += v;
  if (total_nnz != static_cast<mc::index_t>(cd.n_signals) * cd.s)
    state.SkipWithError("fewer atoms than requested: check the data");
  state.counters["signals/s"] = benchmark::Counter(static_cast<double>(cd.n_signals),
                                                   benchmark::Counter::kIsIterationInvariantRate);
  state.counters["premature"] =
      benchmark::Counter(static_cast<double>(premature), benchmark::Counter::kAvgIterations);
  state.SetLabel(case_label(cd) + (inner_gemm ? ", 1-thread BLAS per OpenMP thread"
                                              : ", BLAS threads outside OpenMP"));
}

template <typename T>
void BM_gemm_projection(benchmark::State& state) {
  const int c = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const CaseDef& cd = kCases[c];
  const Problem<T>& p = problem<T>(c);
  set_blas_threads(threads);
  const mc::FortranGemm<T> gemm(fortran_gemm<T>());
  // corr (n_signals x n_components, row-major) = X D^T, as the core lays out its projections.
  std::vector<T> corr(static_cast<size_t>(cd.n_signals) * cd.n_components);
  for (auto _ : state) {
    gemm(false, true, cd.n_signals, cd.n_components, cd.n_features, T(1), p.X.data(),
         cd.n_features, p.D.data(), cd.n_features, T(0), corr.data(), cd.n_components);
    benchmark::DoNotOptimize(corr.data());
    benchmark::ClobberMemory();
  }
  state.counters["signals/s"] = benchmark::Counter(static_cast<double>(cd.n_signals),
                                                   benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(case_label(cd) + ", X D^T");
}

BENCHMARK(BM_sparse_encode_omp<float>)
    ->ArgNames({"case", "threads", "gemm"})
    ->ArgsProduct({{0, 1, 2}, {1, 2}, {1, 0}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_gemm_projection<float>)
    ->ArgNames({"case", "threads"})
    ->ArgsProduct({{0, 1, 2}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
