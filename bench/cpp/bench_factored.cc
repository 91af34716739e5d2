// google-benchmark microbenchmarks of the factored products (csrc/matcompress/factored.h), without
// Python: every stored form's y = x W and backward pass against the dense float32 GEMM.
//
// Data (fixed seed, made once outside the timing): W is 4096 x 4096 float32; each form is built
// from random factors with the sizes bench/factored.py uses for 4x, 8x and 16x fewer stored bytes
// (the time of a product does not depend on the values); x (batch x 4096) and dy Gaussian.
//   low rank       rank m n / (r (m + n))
//   sparse codes   half the bytes to the dictionary (k atoms), the rest to s codes per row
//                  (float32 values plus uint8 / uint16 atom indices as stored; the kernel takes
//                  int32 indices), distinct sorted atoms per row
//   codebook       variant 0: 8-bit scalar (4x); 1: 4-bit scalar, packed (8x); 2: 4-bit blocks of
//                  2, packed (16x); 3: 8-bit blocks of 4 (16x)
//   sign bits      k = (bytes - 4 n - 16) / (n / 8) bits per column (32,735 at 4x)
//   pruned         CSR, uint16 column indices and float32 values, (m + 1) int32 offsets as
//                  stored (the kernel takes int64), the same number of entries in every row
// Pruning then quantizing (uint8 codes into a codebook) has no kernel of its own in factored.h:
// bench/factored.py times it through the Python face.
//
//   BM_dense/batch/threads                y = x W, sgemm with `threads` BLAS threads (through
//                                         FortranGemm without its sgemv route)
//   BM_dense_gemv/threads                 y = x W at batch 1 by sgemv: the batch-1 baseline
//   BM_<form>/ratio/batch/gemm            the form's product on kThreads OpenMP threads; gemm=1:
//                                         BLAS held to one thread and called from inside the
//                                         OpenMP regions (the numpy face), gemm=0: BLAS with
//                                         kThreads threads, called between the regions
//   BM_dense_backward/batch/threads       dx = dy Wᵀ and dW = xᵀ dy
//   BM_<form>_backward/ratio/batch/gemm   dx and every factor gradient factored.h offers
// Counters: GB/s = stored bytes of the form read per second (dense: the 64 MiB of W; the rate a
// memory-bound batch-1 product reaches); GFLOP/s = 2 batch m n (4 batch m n for backward) per
// second, the work of the equivalent dense product, so forms and dense compare directly;
// ratio = dense bytes / stored bytes.
// The dense rows use the BLAS this program links (CMake's FindBLAS, OpenBLAS preferred), not
// numpy's: compare the forms with them within one run. At batch 1 compare with BM_dense_gemv:
// an sgemm with one row can be several times slower than sgemv (OpenBLAS 0.3.21 does not
// forward it). bench/factored.py makes the comparison with numpy.
//
//   bench_factored --benchmark_filter='batch:(1|32)/' --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "bench_common.h"
#include "matcompress/factored.h"

extern "C" {
// Fortran SGEMV (LP64): the dense batch-1 baseline, and FortranGemm's route for products with
// one row or column.
void sgemv_(const char* trans, const int* m, const int* n, const float* alpha, const float* a,
            const int* lda, const float* x, const int* incx, const float* beta, float* y,
            const int* incy);
}

namespace mc = matcompress;

namespace {

constexpr mc::index_t kM = 4096, kN = 4096;
constexpr std::uint64_t kSeed = 20251125;
constexpr int kThreads = 2;
constexpr double kDenseBytes = double(kM) * double(kN) * sizeof(float);

std::mt19937_64 rng_for(std::uint64_t tag, std::uint64_t a = 0, std::uint64_t b = 0) {
  std::seed_seq seq{kSeed, tag, a, b};
  return std::mt19937_64(seq);
}

std::vector<float> gaussian(std::size_t size, std::uint64_t tag, std::uint64_t a = 0,
                            std::uint64_t b = 0) {
  auto rng = rng_for(tag, a, b);
  std::normal_distribution<float> g;
  std::vector<float> v(size);
  for (auto& t : v) t = g(rng);
  return v;
}

/// `count` distinct values of [0, n), sorted (partial Fisher-Yates over `pool`).
template <typename Out>
void distinct_sorted(std::mt19937_64& rng, mc::index_t n, mc::index_t count,
                     std::vector<mc::index_t>& pool, Out* out) {
  pool.resize(static_cast<size_t>(n));
  std::iota(pool.begin(), pool.end(), mc::index_t{0});
  for (mc::index_t t = 0; t < count; ++t) {
    std::uniform_int_distribution<mc::index_t> pick(t, n - 1);
    std::swap(pool[t], pool[pick(rng)]);
  }
  std::sort(pool.begin(), pool.begin() + count);
  for (mc::index_t t = 0; t < count; ++t) out[t] = static_cast<Out>(pool[t]);
}

double budget(int ratio) { return kDenseBytes / ratio; }

// ---- inputs -------------------------------------------------------------------------------

const std::vector<float>& dense_w() {
  static const std::vector<float> w = gaussian(static_cast<size_t>(kM * kN), 1);
  return w;
}

/// x (batch x m) and dy (batch x n), one pair per batch size.
const std::vector<float>& input(mc::index_t batch, bool grad) {
  static std::map<std::pair<mc::index_t, bool>, std::vector<float>> cache;
  auto& v = cache[{batch, grad}];
  if (v.empty()) v = gaussian(static_cast<size_t>(batch * (grad ? kN : kM)), 2, batch, grad);
  return v;
}

// ---- forms ----------------------------------------------------------------------------------

struct LowRank {
  std::vector<float> left, right;
  mc::LowRankView<float> view;
  double stored;
};

const LowRank& lowrank(int ratio) {
  static std::map<int, std::unique_ptr<LowRank>> cache;
  auto& p = cache[ratio];
  if (!p) {
    p.reset(new LowRank);
    const mc::index_t r = static_cast<mc::index_t>(double(kM) * kN / (ratio * double(kM + kN)));
    p->left = gaussian(static_cast<size_t>(kM * r), 10, ratio);
    p->right = gaussian(static_cast<size_t>(r * kN), 11, ratio);
    p->view = {p->left.data(), p->right.data(), kM, r, kN};
    p->stored = double(r) * (kM + kN) * sizeof(float);
  }
  return *p;
}

struct SparseCodes {
  std::vector<std::int32_t> indices;
  std::vector<float> values, dictionary;
  mc::SparseCodesView<float> view;
  double stored;
};

const SparseCodes& sparse_codes(int ratio) {
  static std::map<int, std::unique_ptr<SparseCodes>> cache;
  auto& p = cache[ratio];
  if (!p) {
    p.reset(new SparseCodes);
    const double b = budget(ratio);
    const mc::index_t k =
        std::max<mc::index_t>(2, std::min<mc::index_t>(kM, mc::index_t(b / 2 / (kN * 4.0))));
    const double index_bytes = k <= 256 ? 1 : 2;
    mc::index_t s = mc::index_t((b - double(k) * kN * 4) / (double(kM) * (4 + index_bytes)));
    s = std::max<mc::index_t>(1, std::min({s, k, kN}));
    p->indices.resize(static_cast<size_t>(kM * s));
    auto rng = rng_for(20, ratio);
    std::vector<mc::index_t> pool;
    for (mc::index_t i = 0; i < kM; ++i)
      distinct_sorted(rng, k, s, pool, p->indices.data() + i * s);
    p->values = gaussian(static_cast<size_t>(kM * s), 21, ratio);
    p->dictionary = gaussian(static_cast<size_t>(k * kN), 22, ratio);
    p->view = {p->indices.data(), p->values.data(), p->dictionary.data(), kM, s, k, kN};
    p->stored = double(k) * kN * 4 + double(kM) * s * (4 + index_bytes);
  }
  return *p;
}

struct CodebookVariant {
  const char* name;
  int n_codes, block;
  int ratio;  // nominal
};
constexpr CodebookVariant kCodebooks[] = {
    {"8-bit", 256, 1, 4}, {"4-bit", 16, 1, 8}, {"4-bit/2", 16, 2, 16}, {"8-bit/4", 256, 4, 16}};

struct Codebook {
  std::vector<std::uint8_t> codes;
  std::vector<float> codebook;
  mc::CodebookView<float> view;
  double stored;
};

const Codebook& codebook(int variant) {
  static std::map<int, std::unique_ptr<Codebook>> cache;
  auto& p = cache[variant];
  if (!p) {
    p.reset(new Codebook);
    const CodebookVariant& v = kCodebooks[variant];
    const mc::index_t per_row = kN / v.block;
    const bool u4 = v.n_codes <= 16;
    const mc::index_t stride = u4 ? (per_row + 1) / 2 : per_row;
    auto rng = rng_for(30, variant);
    std::uniform_int_distribution<int> code(0, v.n_codes - 1);
    p->codes.assign(static_cast<size_t>(kM * stride), 0);
    for (mc::index_t i = 0; i < kM; ++i)
      for (mc::index_t j = 0; j < per_row; ++j) {
        const int c = code(rng);
        if (u4)
          p->codes[i * stride + j / 2] |= static_cast<std::uint8_t>(c << (4 * (j % 2)));
        else
          p->codes[i * stride + j] = static_cast<std::uint8_t>(c);
      }
    p->codebook = gaussian(static_cast<size_t>(v.n_codes * v.block), 31, variant);
    p->view = {p->codes.data(), u4 ? mc::CodeFormat::u4 : mc::CodeFormat::u8, stride,
               p->codebook.data(), v.n_codes, v.block, kM, kN};
    p->stored = double(p->codes.size()) + double(p->codebook.size()) * sizeof(float);
  }
  return *p;
}

struct SignBits {
  std::vector<std::uint8_t> bits;
  std::vector<float> scale;
  mc::SignBitsView<float> view;
  double stored;
};

const SignBits& signbits(int ratio) {
  static std::map<int, std::unique_ptr<SignBits>> cache;
  auto& p = cache[ratio];
  if (!p) {
    p.reset(new SignBits);
    const mc::index_t row_bytes = (kN + 7) / 8;
    const mc::index_t k = mc::index_t((budget(ratio) - kN * 4.0 - 16) / row_bytes);
    auto rng = rng_for(40, ratio);
    std::uniform_int_distribution<int> byte(0, 255);
    p->bits.resize(static_cast<size_t>(k * row_bytes));
    for (auto& b : p->bits) b = static_cast<std::uint8_t>(byte(rng));
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    p->scale.resize(static_cast<size_t>(kN));
    for (auto& s : p->scale) s = u(rng);
    p->view = {p->bits.data(), p->scale.data(), kSeed, kM, k, kN};
    p->stored = double(p->bits.size()) + kN * 4.0 + 16;
  }
  return *p;
}

struct Pruned {
  std::vector<std::int64_t> indptr;
  std::vector<std::uint16_t> indices;
  std::vector<float> values;
  mc::PrunedView<float> view;
  double stored;
};

const Pruned& pruned(int ratio) {
  static std::map<int, std::unique_ptr<Pruned>> cache;
  auto& p = cache[ratio];
  if (!p) {
    p.reset(new Pruned);
    // As PruningCompressor.solve: (m + 1) int32 offsets, then 2 + 4 bytes per kept entry.
    const mc::index_t nnz = mc::index_t((budget(ratio) - (kM + 1) * 4.0) / 6);
    p->indptr.resize(static_cast<size_t>(kM + 1));
    p->indices.resize(static_cast<size_t>(nnz));
    auto rng = rng_for(50, ratio);
    std::vector<mc::index_t> pool;
    p->indptr[0] = 0;
    for (mc::index_t i = 0; i < kM; ++i) {
      const mc::index_t count = nnz / kM + (i < nnz % kM ? 1 : 0);
      distinct_sorted(rng, kN, count, pool, p->indices.data() + p->indptr[i]);
      p->indptr[i + 1] = p->indptr[i] + count;
    }
    p->values = gaussian(static_cast<size_t>(nnz), 51, ratio);
    p->view = mc::PrunedView<float>{p->indptr.data(), p->indices.data(), true, p->values.data()};
    p->view.m = kM;
    p->view.n = kN;
    p->stored = (kM + 1) * 4.0 + double(nnz) * 6;
  }
  return *p;
}

// ---- helpers --------------------------------------------------------------------------------

/// The GEMM of a benchmark: gemm=1, BLAS held to one thread and called on the OpenMP threads
/// (as the numpy face does); gemm=0, BLAS with kThreads threads between the OpenMP regions.
/// Products with one row or column go to sgemv, as in the numpy face.
std::unique_ptr<mc::FortranGemm<float>> make_gemm(benchmark::State& state, bool inner) {
  if (!mcbench::set_blas_threads(inner ? 1 : kThreads) && inner) {
    state.SkipWithError("gemm=1 needs OpenBLAS (openblas_set_num_threads) to hold it to 1 thread");
    return nullptr;
  }
  return std::make_unique<mc::FortranGemm<float>>(&sgemm_, INT_MAX, inner, &sgemv_);
}

void counters(benchmark::State& state, mc::index_t batch, double stored, bool backward) {
  using C = benchmark::Counter;
  state.counters["GB/s"] = C(stored * 1e-9, C::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      C((backward ? 4e-9 : 2e-9) * double(batch) * kM * kN, C::kIsIterationInvariantRate);
  state.counters["ratio"] = kDenseBytes / stored;
}

// ---- dense ----------------------------------------------------------------------------------

void BM_dense(benchmark::State& state) {
  const mc::index_t batch = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  mcbench::set_blas_threads(threads);
  const mc::FortranGemm<float> gemm(&sgemm_);
  const auto& w = dense_w();
  const auto& x = input(batch, false);
  std::vector<float> y(static_cast<size_t>(batch * kN));
  for (auto _ : state) {
    gemm(false, false, batch, kN, kM, 1.f, x.data(), kM, w.data(), kN, 0.f, y.data(), kN);
    benchmark::DoNotOptimize(y.data());
  }
  counters(state, batch, kDenseBytes, false);
}

void BM_dense_gemv(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  mcbench::set_blas_threads(threads);
  const auto& w = dense_w();
  const auto& x = input(1, false);
  std::vector<float> y(static_cast<size_t>(kN));
  // Row-major W (m x n) is the column-major n x m matrix Wᵀ: y = Wᵀ x.
  const int n = int(kN), m = int(kM), one = 1;
  const float alpha = 1.f, beta = 0.f;
  for (auto _ : state) {
    sgemv_("N", &n, &m, &alpha, w.data(), &n, x.data(), &one, &beta, y.data(), &one);
    benchmark::DoNotOptimize(y.data());
  }
  counters(state, 1, kDenseBytes, false);
}

void BM_dense_backward(benchmark::State& state) {
  const mc::index_t batch = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  mcbench::set_blas_threads(threads);
  const mc::FortranGemm<float> gemm(&sgemm_);
  const auto& w = dense_w();
  const auto& x = input(batch, false);
  const auto& dy = input(batch, true);
  std::vector<float> dx(static_cast<size_t>(batch * kM)), dw(static_cast<size_t>(kM * kN));
  for (auto _ : state) {
    gemm(false, true, batch, kM, kN, 1.f, dy.data(), kN, w.data(), kN, 0.f, dx.data(), kM);
    gemm(true, false, kM, kN, batch, 1.f, x.data(), kM, dy.data(), kN, 0.f, dw.data(), kN);
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dw.data());
  }
  counters(state, batch, kDenseBytes, true);
}

// ---- forward and backward -------------------------------------------------------------------

// Times call(gemm, x, batch, outputs...) on form f: state.range(1) is the batch, range(2) the GEMM
// mode (forms without GEMM pass needs_gemm = false). `outputs` are sized by the caller.
template <class Form, class Call>
void run(benchmark::State& state, const Form& f, bool needs_gemm, bool backward,
         std::vector<std::vector<float>> outputs, Call call) {
  const mc::index_t batch = state.range(1);
  std::unique_ptr<mc::FortranGemm<float>> gemm;
  if (needs_gemm) {
    gemm = make_gemm(state, state.range(2) != 0);
    if (!gemm) return;
  }
  const auto& x = input(batch, false);
  const auto& dy = input(batch, true);
  for (auto _ : state) {
    call(gemm.get(), x.data(), dy.data(), batch, outputs);
    for (auto& o : outputs) benchmark::DoNotOptimize(o.data());
  }
  counters(state, batch, f.stored, backward);
}

std::vector<float> zeros(std::size_t n) { return std::vector<float>(n); }
std::size_t rows_of(benchmark::State& state, mc::index_t cols) {
  return static_cast<std::size_t>(state.range(1) * cols);
}

void BM_lowrank(benchmark::State& state) {
  const auto& f = lowrank(static_cast<int>(state.range(0)));
  run(state, f, true, false, {zeros(rows_of(state, kN))},
      [&](auto* g, const float* x, const float*, mc::index_t b, auto& o) {
        mc::lowrank_matmul<float>(*g, f.view, x, b, o[0].data(), kThreads);
      });
}

void BM_sparse_codes(benchmark::State& state) {
  const auto& f = sparse_codes(static_cast<int>(state.range(0)));
  run(state, f, true, false, {zeros(rows_of(state, kN))},
      [&](auto* g, const float* x, const float*, mc::index_t b, auto& o) {
        mc::sparse_codes_matmul<float>(*g, f.view, x, b, o[0].data(), kThreads);
      });
}

void BM_codebook(benchmark::State& state) {
  const int variant = static_cast<int>(state.range(0));
  const auto& f = codebook(variant);
  state.SetLabel(kCodebooks[variant].name);
  run(state, f, true, false, {zeros(rows_of(state, kN))},
      [&](auto* g, const float* x, const float*, mc::index_t b, auto& o) {
        mc::codebook_matmul<float>(*g, f.view, x, b, o[0].data(), kThreads);
      });
}

void BM_signbits(benchmark::State& state) {
  const auto& f = signbits(static_cast<int>(state.range(0)));
  run(state, f, true, false, {zeros(rows_of(state, kN))},
      [&](auto* g, const float* x, const float*, mc::index_t b, auto& o) {
        mc::signbits_matmul<float>(*g, f.view, x, b, o[0].data(), kThreads);
      });
}

void BM_pruned(benchmark::State& state) {
  const auto& f = pruned(static_cast<int>(state.range(0)));
  run(state, f, false, false, {zeros(rows_of(state, kN))},
      [&](auto*, const float* x, const float*, mc::index_t b, auto& o) {
        mc::pruned_matmul<float>(f.view, x, b, o[0].data(), kThreads);
      });
}

void BM_lowrank_backward(benchmark::State& state) {
  const auto& f = lowrank(static_cast<int>(state.range(0)));
  run(state, f, true, true,
      {zeros(rows_of(state, kM)), zeros(f.left.size()), zeros(f.right.size())},
      [&](auto* g, const float* x, const float* dy, mc::index_t b, auto& o) {
        mc::lowrank_matmul_backward<float>(*g, f.view, x, dy, b, o[0].data(), o[1].data(),
                                           o[2].data(), kThreads);
      });
}

void BM_sparse_codes_backward(benchmark::State& state) {
  const auto& f = sparse_codes(static_cast<int>(state.range(0)));
  run(state, f, true, true,
      {zeros(rows_of(state, kM)), zeros(f.values.size()), zeros(f.dictionary.size())},
      [&](auto* g, const float* x, const float* dy, mc::index_t b, auto& o) {
        mc::sparse_codes_matmul_backward<float>(*g, f.view, x, dy, b, o[0].data(), o[1].data(),
                                                o[2].data(), kThreads);
      });
}

void BM_codebook_backward(benchmark::State& state) {
  const int variant = static_cast<int>(state.range(0));
  const auto& f = codebook(variant);
  state.SetLabel(kCodebooks[variant].name);
  run(state, f, true, true, {zeros(rows_of(state, kM)), zeros(f.codebook.size())},
      [&](auto* g, const float* x, const float* dy, mc::index_t b, auto& o) {
        mc::codebook_matmul_backward<float>(*g, f.view, x, dy, b, o[0].data(), o[1].data(),
                                            kThreads);
      });
}

void BM_signbits_backward(benchmark::State& state) {
  const auto& f = signbits(static_cast<int>(state.range(0)));
  run(state, f, true, true, {zeros(rows_of(state, kM)), zeros(f.scale.size())},
      [&](auto* g, const float* x, const float* dy, mc::index_t b, auto& o) {
        mc::signbits_matmul_backward<float>(*g, f.view, x, dy, b, o[0].data(), o[1].data(),
                                            kThreads);
      });
}

void BM_pruned_backward(benchmark::State& state) {
  const auto& f = pruned(static_cast<int>(state.range(0)));
  run(state, f, false, true, {zeros(rows_of(state, kM)), zeros(f.values.size())},
      [&](auto*, const float* x, const float* dy, mc::index_t b, auto& o) {
        mc::pruned_matmul_backward<float>(f.view, x, dy, b, o[0].data(), o[1].data(), kThreads);
      });
}

// ---- registration ---------------------------------------------------------------------------

void forward_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ratio", "batch", "gemm"})->ArgsProduct({{4, 8, 16}, {1, 32, 256}, {1, 0}});
}
void backward_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ratio", "batch", "gemm"})->ArgsProduct({{4, 8, 16}, {32, 256}, {1, 0}});
}

BENCHMARK(BM_dense)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{1, 32, 256}, {kThreads}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_dense_gemv)->ArgNames({"threads"})->Arg(kThreads)->UseRealTime()->Unit(
    benchmark::kMillisecond);
BENCHMARK(BM_lowrank)->Apply(forward_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_sparse_codes)->Apply(forward_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_codebook)
    ->ArgNames({"variant", "batch", "gemm"})
    ->ArgsProduct({{0, 1, 2, 3}, {1, 32, 256}, {1, 0}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_signbits)->Apply(forward_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_pruned)
    ->ArgNames({"ratio", "batch"})
    ->ArgsProduct({{4, 8, 16}, {1, 32, 256}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_dense_backward)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{32, 256}, {kThreads}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_lowrank_backward)->Apply(backward_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_sparse_codes_backward)
    ->Apply(backward_args)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_codebook_backward)
    ->ArgNames({"variant", "batch", "gemm"})
    ->ArgsProduct({{0, 1, 2, 3}, {32, 256}, {1, 0}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_signbits_backward)->Apply(backward_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_pruned_backward)
    ->ArgNames({"ratio", "batch"})
    ->ArgsProduct({{4, 8, 16}, {32, 256}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return mcbench::run_benchmarks(argc, argv); }
