// google-benchmark microbenchmarks of dictionary learning (csrc/matcompress/dictionary.h), without
// Python: whole passes, with the share of the dictionary update beside the OMP coding.
//
// Data: 20000 signals of 64 features, each 8 random atoms of a Gaussian unit-norm dictionary of
// 256 atoms with N(0, 1) coefficients, plus N(0, 0.1^2) noise; learning starts from 256 random
// signals (normalised), fixed seed. The dictionary keeps learning from one benchmark iteration
// to the next, as in a real run.
//
//   BM_batch_pass<float>/method/threads   one K-SVD (method 0) or MOD (1) pass: OMP coding of every
//                                         signal, then batch_dictionary_step
//   BM_online_epoch<float>/batch/threads  one epoch of online learning in mini-batches of `batch`
//                                         (coding with the Gram matrix the previous step returned)
// Counters: signals/s, and update_share = the dictionary steps' part of the time.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "bench_common.h"
#include "matcompress/dictionary.h"
#include "matcompress/omp.h"

namespace mc = matcompress;

namespace {

constexpr int kAtoms = 256, kFeatures = 64, kSparsity = 8, kSignals = 20000;
constexpr std::uint64_t kSeed = 20241125;

template <typename T>
struct Data {
  std::vector<T> X;      // kSignals x kFeatures
  std::vector<T> D0;     // kAtoms x kFeatures: normalised signals
};

template <typename T>
const Data<T>& data() {
  static const Data<T> d = [] {
    Data<T> out;
    std::mt19937_64 rng(kSeed);
    std::normal_distribution<double> normal;
    std::vector<double> truth(static_cast<size_t>(kAtoms) * kFeatures);
    for (int a = 0; a < kAtoms; ++a) {
      double n2 = 0;
      for (int f = 0; f < kFeatures; ++f) n2 += std::pow(truth[a * kFeatures + f] = normal(rng), 2);
      for (int f = 0; f < kFeatures; ++f) truth[a * kFeatures + f] /= std::sqrt(n2);
    }
    out.X.resize(static_cast<size_t>(kSignals) * kFeatures);
    std::uniform_int_distribution<int> atom(0, kAtoms - 1);
    for (int i = 0; i < kSignals; ++i) {
      std::vector<double> x(kFeatures);
      for (auto& v : x) v = 0.1 * normal(rng);
      for (int t = 0; t < kSparsity; ++t) {
        const int a = atom(rng);
        const double c = normal(rng);
        for (int f = 0; f < kFeatures; ++f) x[f] += c * truth[a * kFeatures + f];
      }
      for (int f = 0; f < kFeatures; ++f) out.X[static_cast<size_t>(i) * kFeatures + f] = T(x[f]);
    }
    out.D0.resize(static_cast<size_t>(kAtoms) * kFeatures);
    for (int a = 0; a < kAtoms; ++a) {
      const T* x = &out.X[static_cast<size_t>(std::uniform_int_distribution<int>(
                              0, kSignals - 1)(rng)) * kFeatures];
      double n2 = 0;
      for (int f = 0; f < kFeatures; ++f) n2 += double(x[f]) * x[f];
      for (int f = 0; f < kFeatures; ++f) out.D0[a * kFeatures + f] = T(x[f] / std::sqrt(n2));
    }
    return out;
  }();
  return d;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename T>
void BM_batch_pass(benchmark::State& state) {
  const bool ksvd = state.range(0) == 0;
  const int threads = static_cast<int>(state.range(1));
  if (mcbench::fortran_posv<T>() == nullptr) {
    state.SkipWithError("the linked BLAS has no LAPACK xPOSV");
    return;
  }
  mcbench::set_blas_threads(1);  // as the numpy face: one BLAS thread inside the kernels
  const mc::FortranGemm<T> gemm(mcbench::fortran_gemm<T>(), INT_MAX, /*caller_thread=*/true);
  const mc::FortranPosv<T> posv(mcbench::fortran_posv<T>());
  const Data<T>& d = data<T>();
  std::vector<T> D = d.D0, residual(d.X.size()), row_error(kSignals);
  std::vector<int32_t> indices(static_cast<size_t>(kSignals) * kSparsity);
  std::vector<T> values(indices.size());
  std::vector<mc::index_t> nnz(kSignals);

  mc::OmpProblem<T> prob{d.X.data(), kSignals, kFeatures, D.data(), kAtoms, nullptr, nullptr};
  mc::OmpOptions oo;
  oo.max_atoms = kSparsity;
  oo.n_threads = threads;
  mc::BatchDictState<T> s;
  s.X = d.X.data();
  s.n_samples = kSignals;
  s.n_features = kFeatures;
  s.dictionary = D.data();
  s.n_components = kAtoms;
  s.codes = {indices.data(), values.data(), nnz.data(), kSparsity};
  s.residual = residual.data();
  s.row_error = row_error.data();
  mc::DictStepOptions so;
  so.n_threads = threads;
  double update = 0, total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    mc::sparse_encode_omp<T>(gemm, prob, oo, {indices.data(), values.data(), nnz.data()});
    const auto t1 = std::chrono::steady_clock::now();
    mc::batch_dictionary_step<T>(ksvd ? mc::DictUpdate::ksvd : mc::DictUpdate::mod, gemm, posv,
                                 s, nullptr, so);
    update += seconds_since(t1);
    total += seconds_since(t0);
  }
  state.counters["signals/s"] =
      benchmark::Counter(kSignals, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["update_share"] = total > 0 ? update / total : 0;
  state.SetLabel(std::string(ksvd ? "K-SVD" : "MOD") + " pass, 20000x64, 256 atoms, s=8");
}

template <typename T>
void BM_online_epoch(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  mcbench::set_blas_threads(1);
  const mc::FortranGemm<T> gemm(mcbench::fortran_gemm<T>(), INT_MAX, /*caller_thread=*/true);
  const Data<T>& d = data<T>();
  std::vector<T> D = d.D0, A(kAtoms * kAtoms, T(0)), B(kAtoms * kFeatures, T(0));
  std::vector<T> gram(kAtoms * kAtoms);
  std::vector<int32_t> indices(static_cast<size_t>(batch) * kSparsity);
  std::vector<T> values(indices.size());
  std::vector<mc::index_t> nnz(batch);
  mc::OnlineDictState<T> s{D.data(), kAtoms, kFeatures, A.data(), B.data()};
  mc::OmpOptions oo;
  oo.max_atoms = kSparsity;
  oo.n_threads = threads;
  mc::DictStepOptions so;
  so.n_threads = threads;
  long t = 0;
  bool have_gram = false;
  double update = 0, total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int b0 = 0; b0 < kSignals; b0 += batch) {
      const int nb = std::min(batch, kSignals - b0);
      const T* xb = d.X.data() + static_cast<size_t>(b0) * kFeatures;
      mc::OmpProblem<T> prob{xb, nb, kFeatures, D.data(), kAtoms,
                             have_gram ? gram.data() : nullptr, nullptr};
      mc::sparse_encode_omp<T>(gemm, prob, oo, {indices.data(), values.data(), nnz.data()});
      const auto t1 = std::chrono::steady_clock::now();
      ++t;
      const T beta = T(std::pow(1.0 - 1.0 / double(t), 4.0));
      mc::online_dictionary_step<T>(gemm, s, xb, nb, {indices.data(), values.data(), nnz.data(),
                                                      kSparsity},
                                    beta, T(1.0 / nb), so, gram.data());
      have_gram = true;
      update += seconds_since(t1);
    }
    total += seconds_since(t0);
  }
  state.counters["signals/s"] =
      benchmark::Counter(kSignals, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["update_share"] = total > 0 ? update / total : 0;
  state.SetLabel("online epoch, 20000x64, 256 atoms, s=8");
}

BENCHMARK(BM_batch_pass<float>)
    ->ArgNames({"method", "threads"})
    ->ArgsProduct({{0, 1}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_online_epoch<float>)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{256, 1024}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
