// CPU kernels of the matcompress TensorFlow ops: check the inputs, hand TensorFlow's buffers to
// the core (csrc/matcompress/factored.h) and turn its errors into InvalidArgument. No algorithm
// code here. GEMMs run through Eigen on the calling thread (EigenGemm); the core's OpenMP threads
// are capped to the size of TensorFlow's intra-op pool, so the two never run at full width at
// once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "matcompress/blas.h"
#include "matcompress/factored.h"
#include "matcompress/kmeans.h"
#include "matcompress/omp.h"
#include "matcompress/simhash.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/eigen_gemm.h"
#include "tensorflow/core/framework/tensor.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace {

namespace mc = matcompress;
namespace tf = tensorflow;
using tf::OpKernelContext;
using tf::Tensor;

// An InvalidArgument status whose message concatenates the arguments.
template <typename... Args>
absl::Status bad(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// Row-major GEMM by Eigen on the calling thread, for the CPU's instruction set (eigen_gemm.h).
template <typename T>
class EigenGemm final : public mc::Gemm<T> {
 public:
  void operator()(bool ta, bool tb, mc::index_t m, mc::index_t n, mc::index_t k, T alpha,
                  const T* a, mc::index_t lda, const T* b, mc::index_t ldb, T beta, T* c,
                  mc::index_t ldc) const override {
    mc::eigen_gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  bool runs_on_caller_thread() const override { return true; }
};

int intra_op_threads(OpKernelContext* ctx) {
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  return workers != nullptr && workers->num_threads > 0 ? workers->num_threads : 1;
}

// Runs f(), turning the core's exceptions into op errors.
template <class F>
void run_core(OpKernelContext* ctx, F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    ctx->CtxFailure(bad(e.what()));
  } catch (const std::exception& e) {
    ctx->CtxFailure(absl::InternalError(e.what()));
  }
}

#define MC_REQUIRE(ctx, cond, ...) \
  OP_REQUIRES(ctx, cond, bad(__VA_ARGS__))

// Output i of the given shape (null, with the op failed, when it cannot be allocated).
template <typename T>
T* output(OpKernelContext* ctx, int i, const tf::TensorShape& shape) {
  Tensor* out = nullptr;
  const absl::Status s = ctx->allocate_output(i, shape, &out);
  if (!s.ok()) {
    ctx->CtxFailure(s);
    return nullptr;
  }
  return out->flat<T>().data();
}

bool is_matrix(const Tensor& t) { return t.dims() == 2; }

// The forward op: allocates y and runs fwd(y). The gradient op: allocates one output per shape
// in `grad_shapes` and runs bwd(outputs). The core's errors become op errors.
template <typename T, class Fwd, class Bwd>
void compute(OpKernelContext* ctx, bool grad, const tf::TensorShape& y_shape,
             std::initializer_list<tf::TensorShape> grad_shapes, Fwd&& fwd, Bwd&& bwd) {
  std::vector<T*> outs;
  if (!grad) {
    outs.push_back(output<T>(ctx, 0, y_shape));
  } else {
    int i = 0;
    for (const auto& shape : grad_shapes) outs.push_back(output<T>(ctx, i++, shape));
  }
  if (!ctx->status().ok()) return;
  run_core(ctx, [&] {
    if (grad)
      bwd(outs.data());
    else
      fwd(outs[0]);
  });
}

// x (batch, m) and, for the gradient ops, dy (batch, n).
bool check_x_dy(OpKernelContext* ctx, const Tensor& x, const Tensor* dy, int64_t m, int64_t n) {
  if (!is_matrix(x) || x.dim_size(1) != m) {
    ctx->CtxFailure(bad("x must have shape (batch, ", m, "); got ",
                                                x.shape().DebugString()));
    return false;
  }
  if (dy && (!is_matrix(*dy) || dy->dim_size(0) != x.dim_size(0) || dy->dim_size(1) != n)) {
    ctx->CtxFailure(bad("dy must have shape (", x.dim_size(0), ", ", n,
                                                "); got ", dy->shape().DebugString()));
    return false;
  }
  return true;
}

// ---- codebook -------------------------------------------------------------------------------

template <typename T, typename Code>
class CodebookOp : public tf::OpKernel {
 public:
  explicit CodebookOp(tf::OpKernelConstruction* c, bool grad) : OpKernel(c), grad_(grad) {
    OP_REQUIRES_OK(c, c->GetAttr("n", &n_));
    OP_REQUIRES_OK(c, c->GetAttr("packed", &packed_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int o = grad_ ? 1 : 0;
    const Tensor& x = ctx->input(0);
    const Tensor& codes = ctx->input(1 + o);
    const Tensor& cb = ctx->input(2 + o);
    MC_REQUIRE(ctx, is_matrix(cb) && cb.dim_size(0) >= 1 && cb.dim_size(1) >= 1,
               "codebook must be a non-empty matrix (n_codes, block); got ",
               cb.shape().DebugString());
    const int64_t n_codes = cb.dim_size(0), block = cb.dim_size(1);
    MC_REQUIRE(ctx, n_ % block == 0, "n = ", n_, " must be a multiple of the block size ", block);
    const int64_t blocks = n_ / block;
    MC_REQUIRE(ctx, !packed_ || (std::is_same_v<Code, std::uint8_t> && n_codes <= 16),
               "packed codes are uint8 with at most 16 codebook entries; got ", n_codes);
    const int64_t cols = packed_ ? (blocks + 1) / 2 : blocks;
    MC_REQUIRE(ctx, is_matrix(codes) && codes.dim_size(1) == cols && codes.dim_size(0) >= 1,
               "codes must have shape (m, ", cols, ") for n = ", n_, ", block ", block,
               packed_ ? ", packed" : "", "; got ", codes.shape().DebugString());
    const int64_t m = codes.dim_size(0);
    if (!check_x_dy(ctx, x, grad_ ? &ctx->input(1) : nullptr, m, n_)) return;
    // Every code must index the codebook (a clear error, not a silently clamped lookup); a
    // codebook as large as the codes' range needs no scan (the lookups are safe either way).
    const int64_t range = packed_ ? 16 : sizeof(Code) == 1 ? 256 : sizeof(Code) == 2 ? 65536 : 0;
    if (range == 0 || n_codes < range) {
      const Code* p = codes.flat<Code>().data();
      const int64_t count = codes.NumElements();
      Code lo = 0, hi = 0;
      if (packed_) {
        for (int64_t i = 0; i < count; ++i)
          hi = std::max<Code>(hi, std::max<Code>(p[i] & 15, p[i] >> 4));
      } else {
        for (int64_t i = 0; i < count; ++i) {
          lo = std::min(lo, p[i]);
          hi = std::max(hi, p[i]);
        }
      }
      MC_REQUIRE(ctx, lo >= 0 && static_cast<int64_t>(hi) < n_codes, "codes must lie in [0, ",
                 n_codes, "); got values in [", static_cast<int64_t>(lo), ", ",
                 static_cast<int64_t>(hi), "]");
    }
    mc::CodebookView<T> w{codes.data(),
                          packed_ ? mc::CodeFormat::u4
                          : sizeof(Code) == 1 ? mc::CodeFormat::u8
                          : sizeof(Code) == 2 ? mc::CodeFormat::u16
                                              : mc::CodeFormat::u32,
                          cols, cb.flat<T>().data(), n_codes, block, m, n_};
    const int64_t batch = x.dim_size(0);
    const int threads = intra_op_threads(ctx);
    const EigenGemm<T> gemm;
    const T* xp = x.flat<T>().data();
    const T* dyp = grad_ ? ctx->input(1).flat<T>().data() : nullptr;
    compute<T>(
        ctx, grad_, tf::TensorShape({batch, n_}), {x.shape(), cb.shape()},
        [&](T* y) { mc::codebook_matmul<T>(gemm, w, xp, batch, y, threads); },
        [&](T* const* o) {
          mc::codebook_matmul_backward<T>(gemm, w, xp, dyp, batch, o[0], o[1], threads);
        });
  }

 private:
  bool grad_;
  int64_t n_ = 0;
  bool packed_ = false;
};

template <typename T, typename Code>
struct CodebookMatMul : CodebookOp<T, Code> {
  explicit CodebookMatMul(tf::OpKernelConstruction* c) : CodebookOp<T, Code>(c, false) {}
};
template <typename T, typename Code>
struct CodebookMatMulGrad : CodebookOp<T, Code> {
  explicit CodebookMatMulGrad(tf::OpKernelConstruction* c) : CodebookOp<T, Code>(c, true) {}
};

// ---- sparse codes ---------------------------------------------------------------------------

template <typename T>
class SparseCodesOp : public tf::OpKernel {
 public:
  SparseCodesOp(tf::OpKernelConstruction* c, bool grad) : OpKernel(c), grad_(grad) {}

  void Compute(OpKernelContext* ctx) override {
    const int o = grad_ ? 1 : 0;
    const Tensor& x = ctx->input(0);
    const Tensor& idx = ctx->input(1 + o);
    const Tensor& val = ctx->input(2 + o);
    const Tensor& dict = ctx->input(3 + o);
    MC_REQUIRE(ctx, is_matrix(dict) && dict.dim_size(0) >= 1 && dict.dim_size(1) >= 1,
               "dictionary must be a non-empty matrix (k, n); got ", dict.shape().DebugString());
    MC_REQUIRE(ctx, is_matrix(idx) && idx.shape() == val.shape() && idx.dim_size(0) >= 1,
               "indices and values must be matrices of the same shape (m, s); got ",
               idx.shape().DebugString(), " and ", val.shape().DebugString());
    const int64_t k = dict.dim_size(0), n = dict.dim_size(1);
    const int64_t m = idx.dim_size(0), s = idx.dim_size(1);
    if (!check_x_dy(ctx, x, grad_ ? &ctx->input(1) : nullptr, m, n)) return;
    const auto flat = idx.flat<int32_t>();
    for (int64_t i = 0; i < flat.size(); ++i)
      MC_REQUIRE(ctx, flat(i) >= 0 && flat(i) < k, "indices must lie in [0, ", k, "); got ",
                 flat(i), " at position ", i);
    const mc::SparseCodesView<T> w{flat.data(), val.flat<T>().data(), dict.flat<T>().data(),
                                   m, s, k, n};
    const int64_t batch = x.dim_size(0);
    const int threads = intra_op_threads(ctx);
    const EigenGemm<T> gemm;
    const T* xp = x.flat<T>().data();
    const T* dyp = grad_ ? ctx->input(1).flat<T>().data() : nullptr;
    compute<T>(
        ctx, grad_, tf::TensorShape({batch, n}), {x.shape(), val.shape(), dict.shape()},
        [&](T* y) { mc::sparse_codes_matmul<T>(gemm, w, xp, batch, y, threads); },
        [&](T* const* o) {
          mc::sparse_codes_matmul_backward<T>(gemm, w, xp, dyp, batch, o[0], o[1], o[2],
                                              threads);
        });
  }

 private:
  bool grad_;
};

template <typename T>
struct SparseCodesMatMul : SparseCodesOp<T> {
  explicit SparseCodesMatMul(tf::OpKernelConstruction* c) : SparseCodesOp<T>(c, false) {}
};
template <typename T>
struct SparseCodesMatMulGrad : SparseCodesOp<T> {
  explicit SparseCodesMatMulGrad(tf::OpKernelConstruction* c) : SparseCodesOp<T>(c, true) {}
};

// ---- sign bits ------------------------------------------------------------------------------

template <typename T>
class SignBitsOp : public tf::OpKernel {
 public:
  SignBitsOp(tf::OpKernelConstruction* c, bool grad) : OpKernel(c), grad_(grad) {
    int64_t seed = 0;
    OP_REQUIRES_OK(c, c->GetAttr("seed", &seed));
    seed_ = static_cast<std::uint64_t>(seed);  // the seed's 64 bits, as Python's uint64
  }

  void Compute(OpKernelContext* ctx) override {
    const int o = grad_ ? 1 : 0;
    const Tensor& x = ctx->input(0);
    const Tensor& bits = ctx->input(1 + o);
    const Tensor& scale = ctx->input(2 + o);
    MC_REQUIRE(ctx, scale.dims() == 1 && scale.dim_size(0) >= 1,
               "scale must be a non-empty vector (n,); got ", scale.shape().DebugString());
    const int64_t n = scale.dim_size(0);
    MC_REQUIRE(ctx, is_matrix(bits) && bits.dim_size(0) >= 1 && bits.dim_size(1) == (n + 7) / 8,
               "bits must have shape (k, ", (n + 7) / 8, ") for n = ", n, "; got ",
               bits.shape().DebugString());
    MC_REQUIRE(ctx, is_matrix(x) && x.dim_size(1) >= 1, "x must be a matrix (batch, m); got ",
               x.shape().DebugString());
    const int64_t m = x.dim_size(1);
    if (!check_x_dy(ctx, x, grad_ ? &ctx->input(1) : nullptr, m, n)) return;
    const mc::SignBitsView<T> w{bits.flat<std::uint8_t>().data(), scale.flat<T>().data(), seed_,
                                m, bits.dim_size(0), n};
    const int64_t batch = x.dim_size(0);
    const int threads = intra_op_threads(ctx);
    const EigenGemm<T> gemm;
    const T* xp = x.flat<T>().data();
    const T* dyp = grad_ ? ctx->input(1).flat<T>().data() : nullptr;
    compute<T>(
        ctx, grad_, tf::TensorShape({batch, n}), {x.shape(), scale.shape()},
        [&](T* y) { mc::signbits_matmul<T>(gemm, w, xp, batch, y, threads); },
        [&](T* const* o) {
          mc::signbits_matmul_backward<T>(gemm, w, xp, dyp, batch, o[0], o[1], threads);
        });
  }

 private:
  bool grad_;
  std::uint64_t seed_ = 0;
};

template <typename T>
struct SignBitsMatMul : SignBitsOp<T> {
  explicit SignBitsMatMul(tf::OpKernelConstruction* c) : SignBitsOp<T>(c, false) {}
};
template <typename T>
struct SignBitsMatMulGrad : SignBitsOp<T> {
  explicit SignBitsMatMulGrad(tf::OpKernelConstruction* c) : SignBitsOp<T>(c, true) {}
};

// ---- pruned ---------------------------------------------------------------------------------

template <typename T, typename Idx>
class PrunedOp : public tf::OpKernel {
 public:
  PrunedOp(tf::OpKernelConstruction* c, bool grad) : OpKernel(c), grad_(grad) {
    OP_REQUIRES_OK(c, c->GetAttr("n", &n_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int o = grad_ ? 1 : 0;
    const Tensor& x = ctx->input(0);
    const Tensor& indptr = ctx->input(1 + o);
    const Tensor& indices = ctx->input(2 + o);
    const Tensor& values = ctx->input(3 + o);
    MC_REQUIRE(ctx, indptr.dims() == 1 && indptr.dim_size(0) >= 2,
               "indptr must be a vector of m + 1 >= 2 offsets; got ", indptr.shape().DebugString());
    MC_REQUIRE(ctx, indices.dims() == 1 && indices.shape() == values.shape(),
               "indices and values must be vectors of the same length; got ",
               indices.shape().DebugString(), " and ", values.shape().DebugString());
    MC_REQUIRE(ctx, n_ < (int64_t(1) << 31) && (sizeof(Idx) == 4 || n_ <= 65536),
               "n = ", n_, " is too large for ", sizeof(Idx) == 2 ? "uint16" : "int32",
               " indices");
    const int64_t m = indptr.dim_size(0) - 1;
    if (!check_x_dy(ctx, x, grad_ ? &ctx->input(1) : nullptr, m, n_)) return;
    const int64_t* ip = indptr.flat<int64_t>().data();
    const Idx* ix = indices.flat<Idx>().data();
    run_core(ctx, [&] { mc::check_csr(ip, ix, m, n_, indices.dim_size(0)); });
    if (!ctx->status().ok()) return;
    mc::PrunedView<T> w{ip, ix, sizeof(Idx) == 2, values.flat<T>().data()};
    w.m = m;
    w.n = n_;
    const int64_t batch = x.dim_size(0);
    const int threads = intra_op_threads(ctx);
    const T* xp = x.flat<T>().data();
    const T* dyp = grad_ ? ctx->input(1).flat<T>().data() : nullptr;
    compute<T>(
        ctx, grad_, tf::TensorShape({batch, n_}), {x.shape(), values.shape()},
        [&](T* y) { mc::pruned_matmul<T>(w, xp, batch, y, threads); },
        [&](T* const* o) {
          mc::pruned_matmul_backward<T>(w, xp, dyp, batch, o[0], o[1], threads);
        });
  }

 private:
  bool grad_;
  int64_t n_ = 0;
};

template <typename T, typename Idx>
struct PrunedMatMul : PrunedOp<T, Idx> {
  explicit PrunedMatMul(tf::OpKernelConstruction* c) : PrunedOp<T, Idx>(c, false) {}
};
template <typename T, typename Idx>
struct PrunedMatMulGrad : PrunedOp<T, Idx> {
  explicit PrunedMatMulGrad(tf::OpKernelConstruction* c) : PrunedOp<T, Idx>(c, true) {}
};

// ---- fitting ops --------------------------------------------------------------------------

// All finite, or the op fails naming `what`.
template <typename T>
bool check_finite(OpKernelContext* ctx, const Tensor& t, const char* what) {
  // A pass over the exponent bits (vectorized), then the first bad one when there is one.
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr U exp_mask = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  const auto flat = t.flat<T>();
  const U* bits = reinterpret_cast<const U*>(flat.data());
  bool any = false;
  for (int64_t i = 0; i < flat.size(); ++i) any |= (bits[i] & exp_mask) == exp_mask;
  if (!any) return true;
  for (int64_t i = 0; i < flat.size(); ++i) {
    if (!std::isfinite(flat(i))) {
      ctx->CtxFailure(bad(what, " must be finite; got ", static_cast<double>(flat(i)),
                          " at flat index ", i));
      return false;
    }
  }
  return true;
}

// e with max|x| / 2^e in [1, 2) when max|x| lies outside [2^-bound, 2^bound] (and is not 0),
// else 0: the numpy face's rule, so that both scale the same inputs by the same power of two.
template <typename T>
int scale_exponent(const Tensor& t, int bound) {
  const auto flat = t.flat<T>();
  double largest = 0;
  for (int64_t i = 0; i < flat.size(); ++i)
    largest = std::max(largest, std::abs(static_cast<double>(flat(i))));
  if (largest == 0.0 || (std::ldexp(1.0, -bound) < largest && largest < std::ldexp(1.0, bound)))
    return 0;
  int e = 0;
  std::frexp(largest, &e);
  return e - 1;
}

// A copy of t scaled by 2^-e (exact), or t itself when e == 0.
template <typename T>
const T* scaled(const Tensor& t, int e, std::vector<T>& buf) {
  const auto flat = t.flat<T>();
  if (e == 0) return flat.data();
  buf.resize(static_cast<std::size_t>(flat.size()));
  for (int64_t i = 0; i < flat.size(); ++i) buf[i] = std::ldexp(flat(i), -e);
  return buf.data();
}

// Dense: the codes as one (n_samples, n_components) output; else compact (indices, values, nnz).
template <typename T, bool Dense>
class SparseEncodeOp : public tf::OpKernel {
 public:
  explicit SparseEncodeOp(tf::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("max_atoms", &max_atoms_));
    OP_REQUIRES_OK(c, c->GetAttr("tol", &tol_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& d = ctx->input(1);
    MC_REQUIRE(ctx, is_matrix(x) && is_matrix(d) && x.dim_size(1) == d.dim_size(1),
               "x (n_samples, n_features) and dictionary (n_components, n_features) must be "
               "matrices with the same number of columns; got ", x.shape().DebugString(), " and ",
               d.shape().DebugString());
    const int64_t n = x.dim_size(0), f = x.dim_size(1), k = d.dim_size(0);
    MC_REQUIRE(ctx, k >= 1 && f >= 1, "dictionary must not be empty");
    MC_REQUIRE(ctx, max_atoms_ <= std::min(k, f), "max_atoms = ", max_atoms_,
               " exceeds min(n_components, n_features) = ", std::min(k, f));
    if (!check_finite<T>(ctx, x, "x") || !check_finite<T>(ctx, d, "dictionary")) return;
    const auto dict = d.flat<T>();
    for (int64_t a = 0; a < k; ++a) {
      double norm2 = 0;
      for (int64_t j = 0; j < f; ++j) norm2 += double(dict(a * f + j)) * double(dict(a * f + j));
      MC_REQUIRE(ctx, norm2 > 0, "dictionary has a zero-norm atom at row ", a,
                 ": every atom must have a nonzero norm");
    }
    mc::OmpCodes<T> out;
    Tensor nnz_buffer;
    if (Dense) {  // the kernel writes every element of the dense codes; nnz is scratch
      Tensor* codes = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({n, k}), &codes));
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tf::DT_INT64, tf::TensorShape({n}), &nnz_buffer));
      out.dense = codes->flat<T>().data();
      out.nnz = reinterpret_cast<mc::index_t*>(nnz_buffer.flat<int64_t>().data());
    } else {
      Tensor *idx = nullptr, *val = nullptr, *nnz = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({n, max_atoms_}), &idx));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({n, max_atoms_}), &val));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(2, tf::TensorShape({n}), &nnz));
      idx->flat<int32_t>().setZero();
      val->flat<T>().setZero();
      out.indices = idx->flat<int32_t>().data();
      out.values = val->flat<T>().data();
      out.nnz = reinterpret_cast<mc::index_t*>(nnz->flat<int64_t>().data());
    }
    mc::OmpProblem<T> p;
    p.X = x.flat<T>().data();
    p.n_samples = n;
    p.n_features = f;
    p.dictionary = dict.data();
    p.n_components = k;
    mc::OmpOptions o;
    o.max_atoms = max_atoms_;
    o.use_tol = tol_ >= 0;
    o.tol = tol_ >= 0 ? tol_ : 0.0;
    o.n_threads = intra_op_threads(ctx);
    static_assert(sizeof(mc::index_t) == sizeof(int64_t), "nnz is int64");
    const EigenGemm<T> gemm;
    run_core(ctx, [&] { mc::sparse_encode_omp<T>(gemm, p, o, out); });
  }

 private:
  int64_t max_atoms_ = 1;
  float tol_ = -1;
};

template <typename T>
class FitCodebookOp : public tf::OpKernel {
 public:
  explicit FitCodebookOp(tf::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("n_codes", &n_codes_));
    std::string method;
    OP_REQUIRES_OK(c, c->GetAttr("method", &method));
    optimal_ = method == "optimal";
    OP_REQUIRES_OK(c, c->GetAttr("max_iter", &max_iter_));
    OP_REQUIRES_OK(c, c->GetAttr("tol", &tol_));
    int64_t seed = 0;
    OP_REQUIRES_OK(c, c->GetAttr("seed", &seed));
    seed_ = static_cast<std::uint64_t>(seed);
    OP_REQUIRES_OK(c, c->GetAttr("n_init", &n_init_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pts = ctx->input(0);
    MC_REQUIRE(ctx, is_matrix(pts) && pts.dim_size(1) >= 1,
               "points must be a matrix (n, block); got ", pts.shape().DebugString());
    const int64_t n = pts.dim_size(0), b = pts.dim_size(1);
    MC_REQUIRE(ctx, n_codes_ <= n, "n_codes = ", n_codes_, " exceeds the number of ",
               b == 1 ? "values" : "blocks", ", ", n);
    MC_REQUIRE(ctx, !optimal_ || b == 1, "method 'optimal' exists for blocks of 1 only");
    if (!check_finite<T>(ctx, pts, "points")) return;
    Tensor *cb = nullptr, *codes = nullptr, *inertia = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({n_codes_, b}), &cb));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({n}), &codes));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, tf::TensorShape({}), &inertia));
    const int e = scale_exponent<T>(pts, sizeof(T) == 8 ? 300 : 40);
    std::vector<T> buf;
    const T* x = scaled<T>(pts, e, buf);
    T* cbp = cb->flat<T>().data();
    int32_t* cp = codes->flat<int32_t>().data();
    double value = 0;
    run_core(ctx, [&] {
      if (b == 1) {
        mc::KMeans1DOptions o;
        o.method = optimal_ ? mc::KMeans1DMethod::optimal : mc::KMeans1DMethod::lloyd;
        o.max_iter = max_iter_;
        o.tol = tol_;
        o.seed = seed_;
        o.n_init = n_init_;
        o.n_threads = intra_op_threads(ctx);
        value = mc::kmeans_1d<T>(x, nullptr, n, n_codes_, nullptr, o, cbp, cp).inertia;
      } else {
        mc::KMeansBlockOptions o;
        o.max_iter = max_iter_;
        o.tol = tol_;
        o.seed = seed_;
        o.n_init = n_init_;
        o.n_threads = intra_op_threads(ctx);
        const EigenGemm<T> gemm;
        value = mc::kmeans_block<T>(gemm, x, nullptr, n, b, n_codes_, nullptr, o, cbp, cp).inertia;
      }
    });
    if (!ctx->status().ok()) return;
    if (e != 0) {
      for (int64_t i = 0; i < n_codes_ * b; ++i) cbp[i] = std::ldexp(cbp[i], e);
      value = std::ldexp(value, 2 * e);
    }
    inertia->scalar<double>()() = value;
  }

 private:
  int64_t n_codes_ = 1, max_iter_ = 100, n_init_ = 1;
  bool optimal_ = false;
  float tol_ = 1e-6f;
  std::uint64_t seed_ = 0;
};

template <typename T>
class SimhashOp : public tf::OpKernel {
 public:
  explicit SimhashOp(tf::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("n_bits", &n_bits_));
    int64_t seed = 0;
    OP_REQUIRES_OK(c, c->GetAttr("seed", &seed));
    seed_ = static_cast<std::uint64_t>(seed);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    MC_REQUIRE(ctx, is_matrix(a) && a.dim_size(0) >= 1 && a.dim_size(1) >= 1,
               "a must be a non-empty matrix (m, n); got ", a.shape().DebugString());
    if (!check_finite<T>(ctx, a, "a")) return;
    const int64_t m = a.dim_size(0), n = a.dim_size(1);
    Tensor *bits = nullptr, *scale = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({n_bits_, (n + 7) / 8}), &bits));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({n}), &scale));
    const int e = scale_exponent<T>(a, sizeof(T) == 8 ? 500 : 60);
    std::vector<T> buf;
    const T* ap = scaled<T>(a, e, buf);
    mc::SimhashOptions o;
    o.n_threads = intra_op_threads(ctx);
    T* sp = scale->flat<T>().data();
    const EigenGemm<T> gemm;
    run_core(ctx, [&] {
      mc::simhash_encode<T>(gemm, ap, m, n, n_bits_, seed_, o, bits->flat<std::uint8_t>().data(),
                            sp);
    });
    if (e != 0 && ctx->status().ok())
      for (int64_t j = 0; j < n; ++j) sp[j] = std::ldexp(sp[j], e);
  }

 private:
  int64_t n_bits_ = 1;
  std::uint64_t seed_ = 0;
};

// ---- registration ---------------------------------------------------------------------------

#define MC_REGISTER_T(T)                                                                         \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>SparseCodesMatMul").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),       \
      SparseCodesMatMul<T>);                                                                     \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>SparseCodesMatMulGrad").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),   \
      SparseCodesMatMulGrad<T>);                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>SignBitsMatMul").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),          \
      SignBitsMatMul<T>);                                                                        \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>SignBitsMatMulGrad").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),      \
      SignBitsMatMulGrad<T>);

#define MC_REGISTER_CODES(T, C, TFC)                                                             \
  REGISTER_KERNEL_BUILDER(Name("Matcompress>CodebookMatMul")                                     \
                              .Device(tf::DEVICE_CPU)                                            \
                              .TypeConstraint<T>("T")                                            \
                              .TypeConstraint<TFC>("Tcodes"),                                    \
                          CodebookMatMul<T, C>);                                                 \
  REGISTER_KERNEL_BUILDER(Name("Matcompress>CodebookMatMulGrad")                                 \
                              .Device(tf::DEVICE_CPU)                                            \
                              .TypeConstraint<T>("T")                                            \
                              .TypeConstraint<TFC>("Tcodes"),                                    \
                          CodebookMatMulGrad<T, C>);

#define MC_REGISTER_IDX(T, I)                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>PrunedMatMul").Device(tf::DEVICE_CPU).TypeConstraint<T>("T")             \
          .TypeConstraint<I>("Tidx"),                                                            \
      PrunedMatMul<T, I>);                                                                       \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>PrunedMatMulGrad").Device(tf::DEVICE_CPU).TypeConstraint<T>("T")         \
          .TypeConstraint<I>("Tidx"),                                                            \
      PrunedMatMulGrad<T, I>);

#define MC_REGISTER_FIT(T)                                                                       \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>SparseEncode").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),            \
      SparseEncodeOp<T, false>);                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>SparseEncodeDense").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),       \
      SparseEncodeOp<T, true>);                                                                  \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>FitCodebook").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),             \
      FitCodebookOp<T>);                                                                         \
  REGISTER_KERNEL_BUILDER(                                                                       \
      Name("Matcompress>Simhash").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"), SimhashOp<T>);

MC_REGISTER_T(float)
MC_REGISTER_T(double)
MC_REGISTER_FIT(float)
MC_REGISTER_FIT(double)
MC_REGISTER_CODES(float, std::uint8_t, std::uint8_t)
MC_REGISTER_CODES(float, std::uint16_t, std::uint16_t)
MC_REGISTER_CODES(float, std::int32_t, std::int32_t)
MC_REGISTER_CODES(double, std::uint8_t, std::uint8_t)
MC_REGISTER_CODES(double, std::uint16_t, std::uint16_t)
MC_REGISTER_CODES(double, std::int32_t, std::int32_t)
MC_REGISTER_IDX(float, std::uint16_t)
MC_REGISTER_IDX(float, std::int32_t)
MC_REGISTER_IDX(double, std::uint16_t)
MC_REGISTER_IDX(double, std::int32_t)

}  // namespace
