// pybind11 bindings of the matcompress core: convert, check shapes, allocate outputs, release the
// GIL, call the core. Validation of user input happens in python/matcompress/_validation.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <dlfcn.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "matcompress/additive.h"
#include "matcompress/blas.h"
#include "matcompress/cpu.h"
#include "matcompress/dictionary.h"
#include "matcompress/factored.h"
#include "matcompress/kmeans.h"
#include "matcompress/omp.h"
#include "matcompress/philox.h"
#include "matcompress/simhash.h"
#include "matcompress/pruning.h"

namespace py = pybind11;
namespace mc = matcompress;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// SciPy's BLAS (scipy.linalg.cython_blas): the library scikit-learn uses, governed by
// threadpoolctl. Looked up once, when the module is imported.
template <typename T>
typename mc::FortranGemm<T>::Fn scipy_blas(const char* name) {
  py::dict capi = py::module_::import("scipy.linalg.cython_blas").attr("__pyx_capi__");
  py::object cap = capi[name];
  void* ptr = PyCapsule_GetPointer(cap.ptr(), PyCapsule_GetName(cap.ptr()));
  if (ptr == nullptr) throw py::error_already_set();
  return reinterpret_cast<typename mc::FortranGemm<T>::Fn>(ptr);
}

template <typename T>
typename mc::FortranGemm<T>::Fn scipy_gemm_fn() {
  static const auto fn = scipy_blas<T>(sizeof(T) == 4 ? "sgemm" : "dgemm");
  return fn;
}

template <typename T>
typename mc::FortranGemm<T>::GemvFn scipy_gemv_fn() {
  static const auto fn = reinterpret_cast<typename mc::FortranGemm<T>::GemvFn>(
      scipy_blas<T>(sizeof(T) == 4 ? "sgemv" : "dgemv"));
  return fn;
}

// xPOSV from SciPy's LAPACK (scipy.linalg.cython_lapack), the same library as its BLAS.
template <typename T>
typename mc::FortranPosv<T>::Fn scipy_posv_fn() {
  static const auto fn = [] {
    py::dict capi = py::module_::import("scipy.linalg.cython_lapack").attr("__pyx_capi__");
    py::object cap = capi[sizeof(T) == 4 ? "sposv" : "dposv"];
    void* ptr = PyCapsule_GetPointer(cap.ptr(), PyCapsule_GetName(cap.ptr()));
    if (ptr == nullptr) throw py::error_already_set();
    return reinterpret_cast<typename mc::FortranPosv<T>::Fn>(ptr);
  }();
  return fn;
}

// The thread controls of the BLAS library SciPy's wrappers call into. dlsym on a handle also
// searches that object's dependencies, so this finds e.g. scipy_openblas_set_num_threads in the
// library behind scipy.linalg.cython_blas.
struct BlasThreadFns {
  int (*get)() = nullptr;
  void (*set)(int) = nullptr;
};

BlasThreadFns find_blas_thread_fns() {
  BlasThreadFns f;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(scipy_gemm_fn<float>()), &info) == 0 || !info.dli_fname)
    return f;
  void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) return f;
  static const char* const names[][2] = {
      {"scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"},
      {"openblas_get_num_threads", "openblas_set_num_threads"},
      {"scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"},
      {"openblas_get_num_threads64_", "openblas_set_num_threads64_"},
      {"bli_thread_get_num_threads", "bli_thread_set_num_threads"},
      {"MKL_Get_Max_Threads", "MKL_Set_Num_Threads"},
  };
  for (const auto& nm : names) {
    void* g = dlsym(h, nm[0]);
    void* s = dlsym(h, nm[1]);
    if (g != nullptr && s != nullptr) {
      f.get = reinterpret_cast<int (*)()>(g);
      f.set = reinterpret_cast<void (*)(int)>(s);
      break;
    }
  }
  return f;  // the handle stays open: the library is in use for the life of the process
}

const BlasThreadFns& blas_thread_fns() {
  static const BlasThreadFns f = find_blas_thread_fns();
  return f;
}

// Limits SciPy's BLAS to one thread while kernels run (restored by the last of any concurrent
// calls), so the core can call it from inside its OpenMP regions. Inactive when the BLAS has no
// known thread control; the core then calls GEMM only outside its OpenMP regions.
class BlasOneThread {
 public:
  BlasOneThread() {
    const BlasThreadFns& f = blas_thread_fns();
    if (f.set == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (depth_++ == 0) {
      saved_ = f.get();
      if (saved_ != 1) f.set(1);
    }
    active_ = true;
  }
  ~BlasOneThread() {
    if (!active_) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (--depth_ == 0 && saved_ != 1) blas_thread_fns().set(saved_);
  }
  BlasOneThread(const BlasOneThread&) = delete;
  BlasOneThread& operator=(const BlasOneThread&) = delete;
  bool active() const { return active_; }

 private:
  bool active_ = false;
  static inline std::mutex mutex_;
  static inline int depth_ = 0;
  static inline int saved_ = 1;
};

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

// Polled by the core between chunks, with the GIL released.
bool python_interrupted() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

template <typename T>
py::tuple sparse_encode_omp(const carray<T>& X, const std::optional<carray<T>>& dictionary,
                            const std::optional<carray<T>>& gram,
                            const std::optional<carray<T>>& cov, mc::index_t max_atoms,
                            bool use_tol, double tol, int n_threads, mc::index_t chunk_size,
                            bool inner_gemm, bool dense) {
  require(X.ndim() == 2, "X must be 2-D");
  mc::OmpProblem<T> p;
  p.X = X.data();
  p.n_samples = X.shape(0);
  p.n_features = X.shape(1);
  if (dictionary) {
    require(dictionary->ndim() == 2 && dictionary->shape(1) == p.n_features,
            "dictionary must have shape (n_components, n_features)");
    p.dictionary = dictionary->data();
    p.n_components = dictionary->shape(0);
  } else {
    require(gram.has_value(), "gram is required without a dictionary");
    p.n_components = gram->shape(0);
  }
  if (gram) {
    require(gram->ndim() == 2 && gram->shape(0) == p.n_components &&
                gram->shape(1) == p.n_components,
            "gram must have shape (n_components, n_components)");
    p.gram = gram->data();
  }
  if (cov) {
    require(cov->ndim() == 2 && cov->shape(0) == p.n_components && cov->shape(1) == p.n_samples,
            "cov must have shape (n_components, n_samples)");
    p.cov = cov->data();
  }
  mc::OmpOptions o;
  o.max_atoms = max_atoms;
  o.use_tol = use_tol;
  o.tol = tol;
  o.n_threads = n_threads;
  o.chunk_size = chunk_size;
  require(max_atoms >= 1, "max_atoms must be >= 1");

  // dense=True: the dense codes (n_samples, n_components) instead of the compact arrays.
  py::array_t<int32_t> indices(dense ? std::vector<py::ssize_t>{0, max_atoms}
                                     : std::vector<py::ssize_t>{p.n_samples, max_atoms});
  py::array_t<T> values(dense ? std::vector<py::ssize_t>{0, max_atoms}
                              : std::vector<py::ssize_t>{p.n_samples, max_atoms});
  py::array_t<T> codes(dense ? std::vector<py::ssize_t>{p.n_samples, p.n_components}
                             : std::vector<py::ssize_t>{0, p.n_components});
  py::array_t<mc::index_t> nnz(p.n_samples);
  mc::OmpCodes<T> out;
  out.nnz = nnz.mutable_data();
  if (dense) {
    out.dense = codes.mutable_data();
  } else {
    out.indices = indices.mutable_data();
    out.values = values.mutable_data();
  }
  mc::OmpStats stats;
  bool interrupted = false;
  {
    py::gil_scoped_release nogil;
    try {
      std::optional<BlasOneThread> one_blas_thread;
      if (inner_gemm) one_blas_thread.emplace();
      const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>(), INT_MAX,
                                    one_blas_thread && one_blas_thread->active());
      stats = mc::sparse_encode_omp<T>(gemm, p, o, out, &python_interrupted);
    } catch (const mc::Interrupted&) {
      interrupted = true;
    }
  }
  if (interrupted) throw py::error_already_set();  // the KeyboardInterrupt PyErr_CheckSignals set
  if (dense) return py::make_tuple(codes, nnz, stats.n_premature);
  return py::make_tuple(indices, values, nnz, stats.n_premature);
}

template <typename T>
mc::OmpCodes<T> codes_view(const carray<int32_t>& indices, const carray<T>& values,
                           const carray<mc::index_t>& nnz) {
  require(indices.ndim() == 2 && values.ndim() == 2 && nnz.ndim() == 1 &&
              indices.shape(0) == values.shape(0) && indices.shape(1) == values.shape(1) &&
              nnz.shape(0) == indices.shape(0),
          "inconsistent compact codes");
  const mc::index_t smax = indices.shape(1);
  for (mc::index_t i = 0; i < nnz.shape(0); ++i)
    require(nnz.data()[i] >= 0 && nnz.data()[i] <= smax, "inconsistent compact codes");
  return {const_cast<int32_t*>(indices.data()), const_cast<T*>(values.data()),
          const_cast<mc::index_t*>(nnz.data())};
}

template <typename T>
py::tuple codes_to_csr(const carray<int32_t>& indices, const carray<T>& values,
                       const carray<mc::index_t>& nnz, const carray<int64_t>& indptr,
                       int n_threads) {
  mc::OmpCodes<T> codes = codes_view<T>(indices, values, nnz);
  const mc::index_t n = indices.shape(0), smax = indices.shape(1);
  require(indptr.ndim() == 1 && indptr.shape(0) == n + 1, "indptr must have n_samples + 1 entries");
  const mc::index_t total = indptr.data()[n];
  py::array_t<int32_t> csr_indices(total);
  py::array_t<T> csr_values(total);
  int32_t* ci = csr_indices.mutable_data();
  T* cv = csr_values.mutable_data();
  {
    py::gil_scoped_release nogil;
    mc::omp_codes_to_csr<T>(n, smax, codes, indptr.data(), ci, cv, n_threads);
  }
  return py::make_tuple(csr_indices, csr_values);
}

// An array the core updates in place: exactly of type T, C-contiguous, writeable, of this shape.
template <typename T>
T* inplace(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape) {
  require(py::isinstance<py::array_t<T>>(a), std::string(name) + ": wrong dtype");
  require((a.flags() & py::array::c_style) != 0 && a.writeable(),
          std::string(name) + ": must be a writeable C-contiguous array");
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t d = 0; same && d < shape.size(); ++d) same = a.shape(d) == shape[d];
  require(same, std::string(name) + ": wrong shape");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

template <typename T>
mc::CompactCodes<T> compact_codes(const py::array& indices, const py::array& values,
                                  const py::array& nnz, py::ssize_t n, const char* what) {
  require(indices.ndim() == 2, std::string(what) + ": indices must be 2-D");
  const py::ssize_t smax = indices.shape(1);
  mc::CompactCodes<T> c;
  c.indices = inplace<int32_t>(indices, what, {n, smax});
  c.values = inplace<T>(values, what, {n, smax});
  c.nnz = inplace<mc::index_t>(nnz, what, {n});
  c.max_atoms = smax;
  return c;
}

// One batch dictionary-learning step (K-SVD or MOD) after the coding step; the state arrays are
// updated in place.
template <typename T>
py::dict dictionary_step(const std::string& method, const carray<T>& X, const py::array& D,
                         const py::array& indices, const py::array& values, const py::array& nnz,
                         const py::array& residual, const py::array& row_error,
                         const std::optional<carray<int32_t>>& order,
                         double duplicate_threshold, int n_threads) {
  require(method == "ksvd" || method == "mod", "method must be 'ksvd' or 'mod'");
  require(X.ndim() == 2, "X must be 2-D");
  const py::ssize_t n = X.shape(0), m = X.shape(1);
  require(D.ndim() == 2, "dictionary must be 2-D");
  const py::ssize_t k = D.shape(0);
  mc::BatchDictState<T> s;
  s.X = X.data();
  s.n_samples = n;
  s.n_features = m;
  s.dictionary = inplace<T>(D, "dictionary", {k, m});
  s.n_components = k;
  s.codes = compact_codes<T>(indices, values, nnz, n, "codes");
  s.residual = inplace<T>(residual, "residual", {n, m});
  s.row_error = inplace<T>(row_error, "row_error", {n});
  const int32_t* ord = nullptr;
  if (order) {
    require(order->ndim() == 1 && order->shape(0) == k, "order must have n_components entries");
    ord = order->data();
  }
  mc::DictStepOptions o;
  o.n_threads = n_threads;
  o.duplicate_threshold = duplicate_threshold;
  mc::DictStepStats st;
  {
    py::gil_scoped_release nogil;
    BlasOneThread one_blas_thread;  // the step's GEMMs are small: keep BLAS workers from spinning
    const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>());
    const mc::FortranPosv<T> posv(scipy_posv_fn<T>());
    st = mc::batch_dictionary_step<T>(method == "ksvd" ? mc::DictUpdate::ksvd : mc::DictUpdate::mod,
                                      gemm, posv, s, ord, o);
  }
  py::dict out;
  out["sq_error"] = st.sq_error;
  out["n_unused"] = st.n_unused;
  out["n_duplicates"] = st.n_duplicates;
  return out;
}

// One mini-batch of online dictionary learning; D, A and B are updated in place.
template <typename T>
py::tuple online_step(const carray<T>& X, const py::array& indices, const py::array& values,
                      const py::array& nnz, const py::array& D, const py::array& A,
                      const py::array& B, double beta, double weight,
                      double duplicate_threshold, int n_threads,
                      const std::optional<py::array>& gram) {
  require(X.ndim() == 2, "X must be 2-D");
  const py::ssize_t n = X.shape(0), m = X.shape(1);
  require(D.ndim() == 2, "dictionary must be 2-D");
  const py::ssize_t k = D.shape(0);
  mc::OnlineDictState<T> s;
  s.dictionary = inplace<T>(D, "dictionary", {k, m});
  s.n_components = k;
  s.n_features = m;
  s.A = inplace<T>(A, "A", {k, k});
  s.B = inplace<T>(B, "B", {k, m});
  const mc::CompactCodes<T> c = compact_codes<T>(indices, values, nnz, n, "codes");
  T* gram_out = gram ? inplace<T>(*gram, "gram", {k, k}) : nullptr;
  mc::DictStepOptions o;
  o.n_threads = n_threads;
  o.duplicate_threshold = duplicate_threshold;
  mc::OnlineStepStats st;
  {
    py::gil_scoped_release nogil;
    BlasOneThread one_blas_thread;
    const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>());
    st = mc::online_dictionary_step<T>(gemm, s, X.data(), n, c, T(beta), T(weight), o, gram_out);
  }
  return py::make_tuple(st.sq_error, st.n_replaced);
}

// Scalar k-means of a 1-D array into k codes: (codebook, codes as int32, inertia, n_iter,
// n_distinct).
template <typename T>
py::tuple kmeans_1d(const carray<T>& x, const std::optional<carray<T>>& weight, mc::index_t k,
                    const std::optional<carray<T>>& init, const std::string& method,
                    mc::index_t max_iter, double tol, std::uint64_t seed, mc::index_t n_init,
                    int n_threads, double memory_budget) {
  require(x.ndim() == 1, "values must be 1-D");
  const mc::index_t n = x.shape(0);
  require(method == "lloyd" || method == "optimal", "method must be 'lloyd' or 'optimal'");
  if (weight) require(weight->ndim() == 1 && weight->shape(0) == n, "weights: wrong shape");
  if (init) require(init->ndim() == 1 && init->shape(0) == k, "init: wrong shape");
  mc::KMeans1DOptions o;
  o.method = method == "optimal" ? mc::KMeans1DMethod::optimal : mc::KMeans1DMethod::lloyd;
  o.max_iter = max_iter;
  o.tol = tol;
  o.seed = seed;
  o.n_init = n_init;
  o.n_threads = n_threads;
  o.memory_budget = memory_budget;
  py::array_t<T> codebook(k);
  py::array_t<int32_t> codes(n);
  mc::KMeans1DResult r;
  {
    py::gil_scoped_release nogil;
    r = mc::kmeans_1d<T>(x.data(), weight ? weight->data() : nullptr, n, k,
                         init ? init->data() : nullptr, o, codebook.mutable_data(),
                         codes.mutable_data());
  }
  return py::make_tuple(codebook, codes, r.inertia, r.n_iter, r.n_distinct);
}

// Block k-means of the rows of X (n x dim): (centers, labels as int32, inertia, n_iter).
template <typename T>
py::tuple kmeans_block(const carray<T>& x, const std::optional<carray<T>>& weight, mc::index_t k,
                       const std::optional<carray<T>>& init, mc::index_t max_iter, double tol,
                       std::uint64_t seed, mc::index_t n_init, bool random_init,
                       mc::index_t max_points_per_centroid, int n_threads) {
  require(x.ndim() == 2, "X must be 2-D");
  const mc::index_t n = x.shape(0), dim = x.shape(1);
  require(n >= 1 && dim >= 1 && k >= 1 && k <= n, "need 1 <= k <= n_points and dim >= 1");
  if (weight) require(weight->ndim() == 1 && weight->shape(0) == n, "weights: wrong shape");
  if (init) require(init->ndim() == 2 && init->shape(0) == k && init->shape(1) == dim,
                    "init: wrong shape");
  mc::KMeansBlockOptions o;
  o.max_iter = max_iter;
  o.tol = tol;
  o.seed = seed;
  o.n_init = n_init;
  o.random_init = random_init;
  o.max_points_per_centroid = max_points_per_centroid;
  o.n_threads = n_threads;
  py::array_t<T> centers({k, dim});
  py::array_t<int32_t> labels(n);
  mc::KMeansBlockResult r;
  {
    py::gil_scoped_release nogil;
    BlasOneThread one_blas_thread;
    const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>(), INT_MAX, one_blas_thread.active());
    r = mc::kmeans_block<T>(gemm, x.data(), weight ? weight->data() : nullptr, n, dim, k,
                            init ? init->data() : nullptr, o, centers.mutable_data(),
                            labels.mutable_data());
  }
  return py::make_tuple(centers, labels, r.inertia, r.n_iter);
}

// Additive-quantization codes of X (n x dim) against codebooks (M x K x dim) by beam search:
// (codes (n, M) int32, squared errors (n,), their sum). init: (n, M) starting codes to keep
// where the search does not beat them.
template <typename T>
py::tuple additive_encode(const carray<T>& x, const carray<T>& codebooks,
                          const std::optional<py::array_t<int32_t, py::array::c_style |
                                                                     py::array::forcecast>>& init,
                          mc::index_t beam, int n_threads, bool ordered,
                          bool return_beam) {
  require(x.ndim() == 2 && codebooks.ndim() == 3 && x.shape(1) == codebooks.shape(2),
          "X must be (n, dim) and codebooks (n_books, n_codes, dim)");
  const mc::index_t n = x.shape(0), dim = x.shape(1), M = codebooks.shape(0),
                    K = codebooks.shape(1);
  require(dim >= 1 && M >= 1 && K >= 1, "need dim >= 1, one codebook and one code");
  if (init) {
    require(init->ndim() == 2 && init->shape(0) == n && init->shape(1) == M,
            "init: wrong shape");
    const int32_t* ic = init->data();
    for (mc::index_t i = 0; i < n * M; ++i)
      require(ic[i] >= 0 && ic[i] < K, "init: codes must lie in [0, n_codes)");
  }
  mc::AdditiveEncodeOptions o;
  o.beam = beam;
  o.n_threads = n_threads;
  o.ordered = ordered;
  py::array_t<int32_t> codes({n, M});
  py::array_t<T> err(n);
  py::array_t<T> residuals(return_beam ? std::vector<mc::index_t>{n, beam, dim}
                                       : std::vector<mc::index_t>{0, beam, dim});
  double total = 0;
  {
    py::gil_scoped_release nogil;
    BlasOneThread one_blas_thread;
    const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>(), INT_MAX, one_blas_thread.active());
    total = mc::additive_encode<T>(gemm, x.data(), n, dim, codebooks.data(), M, K,
                                   init ? init->data() : nullptr, o, codes.mutable_data(),
                                   err.mutable_data(),
                                   return_beam ? residuals.mutable_data() : nullptr);
  }
  if (return_beam) return py::make_tuple(codes, err, total, residuals);
  return py::make_tuple(codes, err, total);
}

// Nearest of the rows of `centers` for each row of X: (labels as int32, weighted inertia).
template <typename T>
py::tuple kmeans_assign(const carray<T>& x, const carray<T>& centers,
                        const std::optional<carray<T>>& weight, int n_threads) {
  require(x.ndim() == 2 && centers.ndim() == 2 && x.shape(1) == centers.shape(1),
          "X and centers must be 2-D with the same number of columns");
  const mc::index_t n = x.shape(0), dim = x.shape(1), k = centers.shape(0);
  require(k >= 1 && dim >= 1, "need at least one center and one column");
  if (weight) require(weight->ndim() == 1 && weight->shape(0) == n, "weights: wrong shape");
  py::array_t<int32_t> labels(n);
  double inertia = 0;
  {
    py::gil_scoped_release nogil;
    BlasOneThread one_blas_thread;
    const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>(), INT_MAX, one_blas_thread.active());
    inertia = mc::kmeans_assign<T>(gemm, x.data(), weight ? weight->data() : nullptr, n, dim,
                                   centers.data(), k, n_threads, labels.mutable_data());
  }
  return py::make_tuple(labels, inertia);
}

// Rows [row0, row0 + rows) of the simhash projection R (m x k) of `seed`.
template <typename T>
py::array_t<T> simhash_projection(std::uint64_t seed, mc::index_t m, mc::index_t k,
                                  mc::index_t row0, mc::index_t rows, int n_threads) {
  require(m >= 1 && k >= 1, "m and k must be >= 1");
  require(row0 >= 0 && rows >= 0 && row0 <= m && rows <= m - row0, "rows outside [0, m)");
  py::array_t<T> out({rows, k});
  T* p = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    mc::simhash_projection<T>(seed, m, k, row0, rows, p, n_threads);
  }
  return out;
}

// Simhash of A (m x n) with n_bits sign bits per column: (bits (n_bits, ceil(n / 8)) uint8,
// scale (n,)). norms: "auto", "gram" or "direct" (how ||R s_j||^2 is computed); max_resident:
// R is generated whole up to this many elements (-1: the core's default; 0: tile by tile).
template <typename T>
py::tuple simhash_encode(const carray<T>& A, mc::index_t n_bits, std::uint64_t seed,
                         int n_threads, const std::string& norms, mc::index_t max_resident) {
  require(A.ndim() == 2, "A must be 2-D");
  const mc::index_t m = A.shape(0), n = A.shape(1);
  require(m >= 1 && n >= 1 && n_bits >= 1, "need a non-empty A and n_bits >= 1");
  require(norms == "auto" || norms == "gram" || norms == "direct",
          "norms must be 'auto', 'gram' or 'direct'");
  mc::SimhashOptions o;
  o.n_threads = n_threads;
  o.norms = norms == "gram"     ? mc::SimhashNorms::gram
            : norms == "direct" ? mc::SimhashNorms::direct
                                : mc::SimhashNorms::automatic;
  o.max_resident = max_resident;
  py::array_t<std::uint8_t> bits({n_bits, (n + 7) / 8});
  py::array_t<T> scale(n);
  {
    py::gil_scoped_release nogil;
    BlasOneThread one_blas_thread;
    const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>(), INT_MAX, one_blas_thread.active());
    mc::simhash_encode<T>(gemm, A.data(), m, n, n_bits, seed, o, bits.mutable_data(),
                          scale.mutable_data());
  }
  return py::make_tuple(bits, scale);
}

// Test hook: Philox4x32 with 7 or 10 rounds on one counter (4 words) and key (2 words).
py::array_t<std::uint32_t> philox4x32(const carray<std::uint32_t>& counter,
                                      const carray<std::uint32_t>& key, int rounds) {
  require(counter.ndim() == 1 && counter.shape(0) == 4, "counter must have 4 words");
  require(key.ndim() == 1 && key.shape(0) == 2, "key must have 2 words");
  require(rounds == 7 || rounds == 10, "rounds must be 7 or 10");
  std::uint32_t x[4] = {counter.data()[0], counter.data()[1], counter.data()[2],
                        counter.data()[3]};
  if (rounds == 7)
    mc::philox::philox4x32<7>(x, key.data()[0], key.data()[1]);
  else
    mc::philox::philox4x32<10>(x, key.data()[0], key.data()[1]);
  py::array_t<std::uint32_t> out(4);
  std::copy(x, x + 4, out.mutable_data());
  return out;
}

// Test hook: elements [e0, e0 + count) of the Gaussian stream by the scalar definition.
py::array_t<double> gaussian_reference(std::uint64_t seed, std::uint64_t e0, mc::index_t count) {
  require(count >= 0, "count must be >= 0");
  py::array_t<double> out(count);
  mc::gaussian_reference(seed, e0, count, out.mutable_data());
  return out;
}

// Calls f(T()) with T the element type of x (float32 or float64; Python decided which).
template <typename F>
py::object with_float(const py::array& x, const char* name, F&& f) {
  if (py::isinstance<py::array_t<float>>(x)) return f(float());
  if (py::isinstance<py::array_t<double>>(x)) return f(double());
  throw py::type_error(std::string(name) + " must be float32 or float64");
}

// Calls f(I()) with I the column index type of `index_bytes` bytes (uint8/16/32, int64).
template <typename F>
py::object with_index(int index_bytes, F&& f) {
  switch (index_bytes) {
    case 1: return f(std::uint8_t());
    case 2: return f(std::uint16_t());
    case 4: return f(std::uint32_t());
    case 8: return f(std::int64_t());
  }
  throw py::value_error("index_bytes must be 1, 2, 4 or 8");
}

void require_scores_shape(const py::array& a, const py::array& scores) {
  require(a.ndim() == 2, "A must be 2-D");
  require(scores.ndim() == 2 && scores.shape(0) == a.shape(0) && scores.shape(1) == a.shape(1),
          "scores must have the shape of A");
}

// Calls f(a, scores, index) with A and scores as arrays of their own float types and a value
// of the CSR index type for index_bytes (the dispatch of the pruning-to-CSR bindings).
template <class F>
py::object with_prune_inputs(const py::array& a_in, const py::array& scores_in, int index_bytes,
                             F&& f) {
  require_scores_shape(a_in, scores_in);
  return with_float(a_in, "A", [&](auto t) {
    using T = decltype(t);
    return with_float(scores_in, "scores", [&](auto s) {
      using S = decltype(s);
      return with_index(index_bytes, [&](auto i) {
        return f(carray<T>::ensure(a_in), carray<S>::ensure(scores_in), i);
      });
    });
  });
}

// Block (or unstructured) pruning as CSR: (indptr int64, indices, values, threshold key,
// last kept tie). scores may be A itself (magnitude pruning).
py::object prune_csr(const py::array& a_in, const py::array& scores_in, mc::index_t br,
                    mc::index_t bc, mc::index_t n_keep, int n_threads, int index_bytes) {
  return with_prune_inputs(a_in, scores_in, index_bytes,
                           [&](const auto& a, const auto& scores, auto i) -> py::object {
        using T = typename std::decay_t<decltype(a)>::value_type;
        using S = typename std::decay_t<decltype(scores)>::value_type;
        using I = decltype(i);
        const mc::index_t rows = a.shape(0), cols = a.shape(1);
        require(br >= 1 && bc >= 1 && rows % br == 0 && cols % bc == 0,
                "block_shape must divide the shape of A");
        require(n_keep >= 0 && n_keep <= (rows / br) * (cols / bc), "n_keep out of range");
        const mc::index_t nnz = n_keep * br * bc;
        py::array_t<std::int64_t> indptr(rows + 1);
        py::array_t<I> indices(nnz);
        py::array_t<T> values(nnz);
        mc::PruneSelection sel;
        {
          py::gil_scoped_release nogil;
          sel = mc::prune_csr<T, S, I>(a.data(), scores.data(), rows, cols, br, bc, n_keep,
                                       n_threads, indptr.mutable_data(), indices.mutable_data(),
                                       values.mutable_data());
        }
        return py::make_tuple(indptr, indices, values, sel.key, sel.last_tie);
  });
}

// N:M pruning as CSR: (indptr int64, indices, values).
py::object prune_n_m_csr(const py::array& a_in, const py::array& scores_in, mc::index_t n,
                        mc::index_t m, int n_threads, int index_bytes) {
  return with_prune_inputs(a_in, scores_in, index_bytes,
                           [&](const auto& a, const auto& scores, auto i) -> py::object {
        using T = typename std::decay_t<decltype(a)>::value_type;
        using S = typename std::decay_t<decltype(scores)>::value_type;
        using I = decltype(i);
        const mc::index_t rows = a.shape(0), cols = a.shape(1);
        require(m >= 1 && n >= 1 && n <= m && cols % m == 0,
                "N:M needs 1 <= N <= M and M dividing the columns of A");
        const mc::index_t nnz = rows * (cols / m) * n;
        py::array_t<std::int64_t> indptr(rows + 1);
        py::array_t<I> indices(nnz);
        py::array_t<T> values(nnz);
        {
          py::gil_scoped_release nogil;
          mc::prune_n_m_csr<T, S, I>(a.data(), scores.data(), rows, cols, n, m, n_threads,
                                     indptr.mutable_data(), indices.mutable_data(),
                                     values.mutable_data());
        }
        return py::make_tuple(indptr, indices, values);
  });
}

// The keep mask of block (or unstructured) pruning.
py::object prune_mask(const py::array& scores_in, mc::index_t br, mc::index_t bc,
                             mc::index_t n_keep, int n_threads) {
  require(scores_in.ndim() == 2, "scores must be 2-D");
  return with_float(scores_in, "scores", [&](auto s) {
    using S = decltype(s);
    const carray<S> scores = carray<S>::ensure(scores_in);
    const mc::index_t rows = scores.shape(0), cols = scores.shape(1);
    require(br >= 1 && bc >= 1 && rows % br == 0 && cols % bc == 0,
            "block_shape must divide the shape of A");
    require(n_keep >= 0 && n_keep <= (rows / br) * (cols / bc), "n_keep out of range");
    py::array_t<bool> mask({rows, cols});
    {
      py::gil_scoped_release nogil;
      mc::prune_mask<S>(scores.data(), rows, cols, br, bc, n_keep, n_threads,
                        mask.mutable_data());
    }
    return mask;
  });
}

// The keep mask of N:M pruning.
py::object prune_n_m_mask(const py::array& scores_in, mc::index_t n, mc::index_t m,
                                 int n_threads) {
  require(scores_in.ndim() == 2, "scores must be 2-D");
  return with_float(scores_in, "scores", [&](auto s) {
    using S = decltype(s);
    const carray<S> scores = carray<S>::ensure(scores_in);
    const mc::index_t rows = scores.shape(0), cols = scores.shape(1);
    require(m >= 1 && n >= 1 && n <= m && cols % m == 0,
            "N:M needs 1 <= N <= M and M dividing the columns of A");
    py::array_t<bool> mask({rows, cols});
    {
      py::gil_scoped_release nogil;
      mc::prune_n_m_mask<S>(scores.data(), rows, cols, n, m, n_threads, mask.mutable_data());
    }
    return mask;
  });
}

// y = x · W for a 4-bit scalar codebook W (m x n): codes (m, ceil(n / 2)) packed as pack_4bit.
py::array_t<float> codebook4_gemv(const carray<float>& x, const carray<std::uint8_t>& codes,
                                  mc::index_t n, const carray<float>& codebook, int n_threads) {
  require(x.ndim() == 1 && codes.ndim() == 2 && codebook.ndim() == 1,
          "x must be 1-D, codes 2-D, codebook 1-D");
  const mc::index_t m = x.shape(0);
  require(codes.shape(0) == m, "codes must have one row per element of x");
  require(n >= 1 && codes.shape(1) == (n + 1) / 2, "codes must have ceil(n / 2) bytes per row");
  require(codebook.shape(0) >= 1 && codebook.shape(0) <= 16, "codebook must have 1 to 16 entries");
  py::array_t<float> y(n);
  {
    py::gil_scoped_release nogil;
    mc::codebook4_gemv(x.data(), codes.data(), codes.shape(1), m, n, codebook.data(),
                       codebook.shape(0), y.mutable_data(), n_threads);
  }
  return y;
}

// ---- factored products: y = x W and the backward passes (factored.h) --------------------------
// x (batch, m) and dy (batch, n) are C-contiguous arrays of the factors' dtype (the Python layer
// converts); the backward functions return a tuple with None for what was not asked.

template <typename T>
void require_batch(const carray<T>& x, mc::index_t m, const char* what) {
  require(x.ndim() == 2 && x.shape(1) == m,
          std::string(what) + " must be 2-D with " + std::to_string(m) + " columns");
}

template <typename T>
py::object maybe(bool want, std::initializer_list<py::ssize_t> shape) {
  return want ? py::object(py::array_t<T>(std::vector<py::ssize_t>(shape))) : py::none();
}

template <typename T>
T* ptr(const py::object& a) {
  return a.is_none() ? nullptr : py::cast<py::array_t<T>>(a).mutable_data();
}

// Runs f(gemm) without the GIL, the BLAS on one thread per call (the kernels split the GEMMs).
template <typename T, class F>
void with_gemm(F&& f) {
  py::gil_scoped_release nogil;
  BlasOneThread one_blas_thread;
  const mc::FortranGemm<T> gemm(scipy_gemm_fn<T>(), INT_MAX, one_blas_thread.active(),
                                scipy_gemv_fn<T>());
  f(gemm);
}

template <typename T>
mc::LowRankView<T> lowrank_view(const carray<T>& left, const carray<T>& right) {
  require(left.ndim() == 2 && right.ndim() == 2 && left.shape(1) == right.shape(0),
          "left (m, r) and right (r, n) must chain");
  require(left.shape(0) >= 1 && left.shape(1) >= 1 && right.shape(1) >= 1, "empty factor");
  return {left.data(), right.data(), left.shape(0), left.shape(1), right.shape(1)};
}

template <typename T>
py::array_t<T> lowrank_matmul(const carray<T>& x, const carray<T>& left, const carray<T>& right,
                              int n_threads) {
  const auto w = lowrank_view(left, right);
  require_batch(x, w.m, "x");
  py::array_t<T> y({x.shape(0), w.n});
  with_gemm<T>([&](const auto& gemm) {
    mc::lowrank_matmul<T>(gemm, w, x.data(), x.shape(0), y.mutable_data(), n_threads);
  });
  return y;
}

template <typename T>
py::tuple lowrank_backward(const carray<T>& x, const carray<T>& dy, const carray<T>& left,
                           const carray<T>& right, bool need_dx, bool need_grads, int n_threads) {
  const auto w = lowrank_view(left, right);
  require_batch(x, w.m, "x");
  require_batch(dy, w.n, "dy");
  require(dy.shape(0) == x.shape(0), "x and dy must have the same number of rows");
  const py::ssize_t b = x.shape(0);
  py::object dx = maybe<T>(need_dx, {b, w.m}), dl = maybe<T>(need_grads, {w.m, w.r}),
             dr = maybe<T>(need_grads, {w.r, w.n});
  T *pdx = ptr<T>(dx), *pdl = ptr<T>(dl), *pdr = ptr<T>(dr);
  with_gemm<T>([&](const auto& gemm) {
    mc::lowrank_matmul_backward<T>(gemm, w, x.data(), dy.data(), b, pdx, pdl, pdr, n_threads);
  });
  return py::make_tuple(dx, dl, dr);
}

template <typename T>
mc::SparseCodesView<T> sparse_codes_view(const carray<int32_t>& indices, const carray<T>& values,
                                         const carray<T>& dictionary) {
  require(indices.ndim() == 2 && values.ndim() == 2 && dictionary.ndim() == 2,
          "indices, values and dictionary must be 2-D");
  require(indices.shape(0) == values.shape(0) && indices.shape(1) == values.shape(1),
          "indices and values must have the same shape (m, s)");
  require(indices.shape(0) >= 1 && dictionary.shape(0) >= 1 && dictionary.shape(1) >= 1,
          "empty factor");
  return {indices.data(), values.data(),    dictionary.data(), indices.shape(0),
          indices.shape(1), dictionary.shape(0), dictionary.shape(1)};
}

template <typename T>
py::array_t<T> sparse_codes_matmul(const carray<T>& x, const carray<int32_t>& indices,
                                   const carray<T>& values, const carray<T>& dictionary,
                                   int n_threads) {
  const auto w = sparse_codes_view(indices, values, dictionary);
  require_batch(x, w.m, "x");
  py::array_t<T> y({x.shape(0), w.n});
  with_gemm<T>([&](const auto& gemm) {
    mc::sparse_codes_matmul<T>(gemm, w, x.data(), x.shape(0), y.mutable_data(), n_threads);
  });
  return y;
}

template <typename T>
py::tuple sparse_codes_backward(const carray<T>& x, const carray<T>& dy,
                                const carray<int32_t>& indices, const carray<T>& values,
                                const carray<T>& dictionary, bool need_dx, bool need_grads,
                                int n_threads) {
  const auto w = sparse_codes_view(indices, values, dictionary);
  require_batch(x, w.m, "x");
  require_batch(dy, w.n, "dy");
  require(dy.shape(0) == x.shape(0), "x and dy must have the same number of rows");
  const py::ssize_t b = x.shape(0);
  py::object dx = maybe<T>(need_dx, {b, w.m}), dv = maybe<T>(need_grads, {w.m, w.s}),
             dd = maybe<T>(need_grads, {w.k, w.n});
  T *pdx = ptr<T>(dx), *pdv = ptr<T>(dv), *pdd = ptr<T>(dd);
  with_gemm<T>([&](const auto& gemm) {
    mc::sparse_codes_matmul_backward<T>(gemm, w, x.data(), dy.data(), b, pdx, pdv, pdd,
                                        n_threads);
  });
  return py::make_tuple(dx, dv, dd);
}

// codes: 2-D C-contiguous; fmt 0: 4-bit packed uint8, 1: uint8, 2: uint16, 3: uint32.
template <typename T>
mc::CodebookView<T> codebook_view(const py::array& codes, int fmt, const carray<T>& codebook,
                                  mc::index_t n) {
  require(fmt >= 0 && fmt <= 3, "fmt must be 0 (4-bit), 1 (uint8), 2 (uint16) or 3 (uint32)");
  static const char* const types[] = {"uint8", "uint8", "uint16", "uint32"};
  const py::dtype want = py::dtype(types[fmt]);
  require(codes.dtype().is(want) || codes.dtype().equal(want),
          std::string("codes must be ") + types[fmt] + " for this format");
  require(codes.ndim() == 2 && (codes.flags() & py::array::c_style), "codes must be 2-D and "
          "C-contiguous");
  require(codebook.ndim() == 2 && codebook.shape(0) >= 1 && codebook.shape(1) >= 1,
          "codebook must be 2-D (n_codes, block) and non-empty");
  const mc::index_t b = codebook.shape(1), nb = n / std::max<mc::index_t>(b, 1);
  require(n >= 1 && n % b == 0, "n must be a positive multiple of the block size");
  require(codes.shape(0) >= 1, "codes must have at least one row");
  require(codes.shape(1) == (fmt == 0 ? (nb + 1) / 2 : nb), "codes have the wrong number of "
          "columns for n and the block size");
  require(fmt != 0 || codebook.shape(0) <= 16, "4-bit codes need at most 16 codebook entries");
  return {codes.data(), static_cast<mc::CodeFormat>(fmt), codes.shape(1), codebook.data(),
          codebook.shape(0), b, codes.shape(0), n};
}

template <typename T>
py::array_t<T> codebook_matmul(const carray<T>& x, const py::array& codes, int fmt,
                               const carray<T>& codebook, mc::index_t n, int n_threads) {
  const auto w = codebook_view(codes, fmt, codebook, n);
  require_batch(x, w.m, "x");
  py::array_t<T> y({x.shape(0), static_cast<py::ssize_t>(n)});
  with_gemm<T>([&](const auto& gemm) {
    mc::codebook_matmul<T>(gemm, w, x.data(), x.shape(0), y.mutable_data(), n_threads);
  });
  return y;
}

template <typename T>
py::tuple codebook_backward(const carray<T>& x, const carray<T>& dy, const py::array& codes,
                            int fmt, const carray<T>& codebook, mc::index_t n, bool need_dx,
                            bool need_grads, int n_threads) {
  const auto w = codebook_view(codes, fmt, codebook, n);
  require_batch(x, w.m, "x");
  require_batch(dy, w.n, "dy");
  require(dy.shape(0) == x.shape(0), "x and dy must have the same number of rows");
  const py::ssize_t b = x.shape(0);
  py::object dx = maybe<T>(need_dx, {b, w.m}), dc = maybe<T>(need_grads, {w.n_codes, w.block});
  T *pdx = ptr<T>(dx), *pdc = ptr<T>(dc);
  with_gemm<T>([&](const auto& gemm) {
    mc::codebook_matmul_backward<T>(gemm, w, x.data(), dy.data(), b, pdx, pdc, n_threads);
  });
  return py::make_tuple(dx, dc);
}

template <typename T>
mc::SignBitsView<T> signbits_view(const carray<std::uint8_t>& bits, const carray<T>& scale,
                                  std::uint64_t seed, mc::index_t m) {
  require(bits.ndim() == 2 && scale.ndim() == 1, "bits must be 2-D and scale 1-D");
  const mc::index_t n = scale.shape(0);
  require(n >= 1 && bits.shape(0) >= 1 && m >= 1, "empty factor");
  require(bits.shape(1) == (n + 7) / 8, "bits must have ceil(n / 8) bytes per row");
  return {bits.data(), scale.data(), seed, m, bits.shape(0), n};
}

template <typename T>
py::array_t<T> signbits_matmul(const carray<T>& x, const carray<std::uint8_t>& bits,
                               const carray<T>& scale, std::uint64_t seed, int n_threads) {
  require(x.ndim() == 2, "x must be 2-D");
  const auto w = signbits_view(bits, scale, seed, x.shape(1));
  py::array_t<T> y({x.shape(0), static_cast<py::ssize_t>(w.n)});
  with_gemm<T>([&](const auto& gemm) {
    mc::signbits_matmul<T>(gemm, w, x.data(), x.shape(0), y.mutable_data(), n_threads);
  });
  return y;
}

template <typename T>
py::tuple signbits_backward(const carray<T>& x, const carray<T>& dy,
                            const carray<std::uint8_t>& bits, const carray<T>& scale,
                            std::uint64_t seed, bool need_dx, bool need_grads, int n_threads) {
  require(x.ndim() == 2, "x must be 2-D");
  const auto w = signbits_view(bits, scale, seed, x.shape(1));
  require_batch(dy, w.n, "dy");
  require(dy.shape(0) == x.shape(0), "x and dy must have the same number of rows");
  const py::ssize_t b = x.shape(0);
  py::object dx = maybe<T>(need_dx, {b, w.m}), ds = maybe<T>(need_grads, {w.n});
  T *pdx = ptr<T>(dx), *pds = ptr<T>(ds);
  with_gemm<T>([&](const auto& gemm) {
    mc::signbits_matmul_backward<T>(gemm, w, x.data(), dy.data(), b, pdx, pds, n_threads);
  });
  return py::make_tuple(dx, ds);
}

// CSR: indptr int64 (m + 1), indices uint16 or int32 (nnz), and values (nnz) or codes (nnz,
// uint8 or uint16) into a 1-D codebook; the pattern is checked (a corrupted one raises
// ValueError).
template <typename T>
mc::PrunedView<T> pruned_view(const carray<int64_t>& indptr, const py::array& indices,
                              const std::optional<carray<T>>& values,
                              const std::optional<py::array>& codes,
                              const std::optional<carray<T>>& codebook, mc::index_t n) {
  require(indptr.ndim() == 1 && indptr.shape(0) >= 2, "indptr must be 1-D with m + 1 >= 2 entries");
  require(indices.ndim() == 1 && (indices.flags() & py::array::c_style),
          "indices must be 1-D and contiguous");
  const bool i16 = indices.dtype().equal(py::dtype::of<std::uint16_t>());
  require(i16 || indices.dtype().equal(py::dtype::of<std::int32_t>()),
          "indices must be uint16 or int32");
  require(n >= 1 && n < (mc::index_t(1) << 31), "n out of range");
  require(values.has_value() != codes.has_value(), "give values or codes, not both");
  const mc::index_t m = indptr.shape(0) - 1, nnz = indices.shape(0);
  mc::PrunedView<T> w{indptr.data(), indices.data(), i16, nullptr};
  w.m = m;
  w.n = n;
  if (values) {
    require(values->ndim() == 1 && values->shape(0) == nnz, "values must have one entry per index");
    w.values = values->data();
  } else {
    require(codebook.has_value() && codebook->ndim() == 1 && codebook->shape(0) >= 1,
            "codes need a non-empty 1-D codebook");
    require(codes->ndim() == 1 && codes->shape(0) == nnz && (codes->flags() & py::array::c_style),
            "codes must be 1-D, contiguous, one per index");
    const bool c8 = codes->dtype().equal(py::dtype::of<std::uint8_t>());
    require(c8 || codes->dtype().equal(py::dtype::of<std::uint16_t>()),
            "codes must be uint8 or uint16");
    w.codes = codes->data();
    w.code_bytes = c8 ? 1 : 2;
    w.codebook = codebook->data();
    w.n_codes = codebook->shape(0);
  }
  if (i16)
    mc::check_csr(indptr.data(), static_cast<const std::uint16_t*>(indices.data()), m, n, nnz);
  else
    mc::check_csr(indptr.data(), static_cast<const std::int32_t*>(indices.data()), m, n, nnz);
  return w;
}

template <typename T>
py::array_t<T> pruned_matmul(const carray<T>& x, const carray<int64_t>& indptr,
                             const py::array& indices, const std::optional<carray<T>>& values,
                             const std::optional<py::array>& codes,
                             const std::optional<carray<T>>& codebook, mc::index_t n,
                             int n_threads) {
  const auto w = pruned_view(indptr, indices, values, codes, codebook, n);
  require_batch(x, w.m, "x");
  py::array_t<T> y({x.shape(0), static_cast<py::ssize_t>(n)});
  {
    py::gil_scoped_release nogil;
    mc::pruned_matmul<T>(w, x.data(), x.shape(0), y.mutable_data(), n_threads);
  }
  return y;
}

// dvalues holds one gradient per entry (the caller sums them per code for a coded matrix).
template <typename T>
py::tuple pruned_backward(const carray<T>& x, const carray<T>& dy, const carray<int64_t>& indptr,
                          const py::array& indices, const std::optional<carray<T>>& values,
                          const std::optional<py::array>& codes,
                          const std::optional<carray<T>>& codebook, mc::index_t n, bool need_dx,
                          bool need_grads, int n_threads) {
  const auto w = pruned_view(indptr, indices, values, codes, codebook, n);
  require_batch(x, w.m, "x");
  require_batch(dy, w.n, "dy");
  require(dy.shape(0) == x.shape(0), "x and dy must have the same number of rows");
  const py::ssize_t b = x.shape(0);
  py::object dx = maybe<T>(need_dx, {b, w.m}), dv = maybe<T>(need_grads, {indices.shape(0)});
  T *pdx = ptr<T>(dx), *pdv = ptr<T>(dv);
  {
    py::gil_scoped_release nogil;
    mc::pruned_matmul_backward<T>(w, x.data(), dy.data(), b, pdx, pdv, n_threads);
  }
  return py::make_tuple(dx, dv);
}

// Test hook: row-major GEMM through the injected BLAS with a chosen split size, so the
// splitting of sizes past the 32-bit BLAS interface is exercised on small matrices.
template <typename T>
py::array_t<T> gemm(const carray<T>& a, const carray<T>& b, bool trans_a, bool trans_b,
                    mc::index_t max_dim, bool use_gemv) {
  require(a.ndim() == 2 && b.ndim() == 2, "a and b must be 2-D");
  const mc::index_t m = trans_a ? a.shape(1) : a.shape(0);
  const mc::index_t k = trans_a ? a.shape(0) : a.shape(1);
  const mc::index_t kb = trans_b ? b.shape(1) : b.shape(0);
  const mc::index_t n = trans_b ? b.shape(0) : b.shape(1);
  require(k == kb, "inner dimensions differ");
  py::array_t<T> c({m, n});
  T* cp = c.mutable_data();
  std::fill(cp, cp + m * n, T(0));
  {
    py::gil_scoped_release nogil;
    mc::FortranGemm<T> split(scipy_gemm_fn<T>(), max_dim, false,
                             use_gemv ? scipy_gemv_fn<T>() : nullptr);
    split(trans_a, trans_b, m, n, k, T(1), a.data(), a.shape(1), b.data(), b.shape(1), T(0), cp,
          n);
  }
  return c;
}

// Test hook: a parallel loop whose item `fail_at` throws, to check that an exception thrown on an
// OpenMP worker thread reaches Python (as ValueError) and the loop still ends.
mc::index_t parallel_raise(mc::index_t n, mc::index_t fail_at, int n_threads) {
  std::vector<unsigned char> seen(static_cast<size_t>(n > 0 ? n : 0));
  {
    py::gil_scoped_release nogil;
    mc::parallel_for(0, n, mc::resolve_threads(n_threads, n), 1, [&](mc::index_t i, int) {
      MC_CHECK(i != fail_at, "item " << i << " failed on an OpenMP worker thread");
      seen[i] = 1;
    });
  }
  mc::index_t count = 0;
  for (unsigned char v : seen) count += v;
  return count;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "matcompress native kernels (private: use the functions of the matcompress package)";
  // Resolve the BLAS capsules now, while the GIL is held (the kernels run without it).
  scipy_gemm_fn<float>();
  scipy_gemm_fn<double>();
  scipy_gemv_fn<float>();
  scipy_gemv_fn<double>();
  scipy_posv_fn<float>();
  scipy_posv_fn<double>();
  blas_thread_fns();

  m.def("sparse_encode_omp_f32", &sparse_encode_omp<float>, py::arg("X"), py::arg("dictionary"),
        py::arg("gram"), py::arg("cov"), py::arg("max_atoms"), py::arg("use_tol"), py::arg("tol"),
        py::arg("n_threads"), py::arg("chunk_size") = 0, py::arg("inner_gemm") = true,
        py::arg("dense") = false);
  m.def("sparse_encode_omp_f64", &sparse_encode_omp<double>, py::arg("X"), py::arg("dictionary"),
        py::arg("gram"), py::arg("cov"), py::arg("max_atoms"), py::arg("use_tol"), py::arg("tol"),
        py::arg("n_threads"), py::arg("chunk_size") = 0, py::arg("inner_gemm") = true,
        py::arg("dense") = false);
  m.def("dictionary_step_f32", &dictionary_step<float>);
  m.def("dictionary_step_f64", &dictionary_step<double>);
  m.def("online_step_f32", &online_step<float>, py::arg("X"), py::arg("indices"),
        py::arg("values"), py::arg("nnz"), py::arg("dictionary"), py::arg("A"), py::arg("B"),
        py::arg("beta"), py::arg("weight"), py::arg("duplicate_threshold"), py::arg("n_threads"),
        py::arg("gram") = py::none());
  m.def("online_step_f64", &online_step<double>, py::arg("X"), py::arg("indices"),
        py::arg("values"), py::arg("nnz"), py::arg("dictionary"), py::arg("A"), py::arg("B"),
        py::arg("beta"), py::arg("weight"), py::arg("duplicate_threshold"), py::arg("n_threads"),
        py::arg("gram") = py::none());
  for (const char* name : {"kmeans_1d_f32", "kmeans_1d_f64"}) {
    const bool f32 = name[11] == '3';
    auto args = std::make_tuple(py::arg("values"), py::arg("weight"), py::arg("k"),
                                py::arg("init"), py::arg("method"), py::arg("max_iter"),
                                py::arg("tol"), py::arg("seed"), py::arg("n_init"),
                                py::arg("n_threads"), py::arg("memory_budget") = 256.0 * (1 << 20));
    if (f32)
      std::apply([&](auto... a) { m.def(name, &kmeans_1d<float>, a...); }, args);
    else
      std::apply([&](auto... a) { m.def(name, &kmeans_1d<double>, a...); }, args);
  }
  m.def("kmeans_block_f32", &kmeans_block<float>, py::arg("X"), py::arg("weight"), py::arg("k"),
        py::arg("init"), py::arg("max_iter"), py::arg("tol"), py::arg("seed"), py::arg("n_init"),
        py::arg("random_init"), py::arg("max_points_per_centroid"), py::arg("n_threads"));
  m.def("kmeans_block_f64", &kmeans_block<double>, py::arg("X"), py::arg("weight"), py::arg("k"),
        py::arg("init"), py::arg("max_iter"), py::arg("tol"), py::arg("seed"), py::arg("n_init"),
        py::arg("random_init"), py::arg("max_points_per_centroid"), py::arg("n_threads"));
  m.def("additive_encode_f32", &additive_encode<float>, py::arg("X"), py::arg("codebooks"),
        py::arg("init"), py::arg("beam"), py::arg("n_threads"), py::arg("ordered") = false,
        py::arg("return_beam") = false);
  m.def("additive_encode_f64", &additive_encode<double>, py::arg("X"), py::arg("codebooks"),
        py::arg("init"), py::arg("beam"), py::arg("n_threads"), py::arg("ordered") = false,
        py::arg("return_beam") = false);
  m.def("kmeans_assign_f32", &kmeans_assign<float>, py::arg("X"), py::arg("centers"),
        py::arg("weight"), py::arg("n_threads"));
  m.def("kmeans_assign_f64", &kmeans_assign<double>, py::arg("X"), py::arg("centers"),
        py::arg("weight"), py::arg("n_threads"));
  m.def("simhash_projection_f32", &simhash_projection<float>, py::arg("seed"), py::arg("m"),
        py::arg("k"), py::arg("row0"), py::arg("rows"), py::arg("n_threads"));
  m.def("simhash_projection_f64", &simhash_projection<double>, py::arg("seed"), py::arg("m"),
        py::arg("k"), py::arg("row0"), py::arg("rows"), py::arg("n_threads"));
  m.def("simhash_encode_f32", &simhash_encode<float>, py::arg("A"), py::arg("n_bits"),
        py::arg("seed"), py::arg("n_threads"), py::arg("norms") = "auto",
        py::arg("max_resident") = -1);
  m.def("simhash_encode_f64", &simhash_encode<double>, py::arg("A"), py::arg("n_bits"),
        py::arg("seed"), py::arg("n_threads"), py::arg("norms") = "auto",
        py::arg("max_resident") = -1);
  m.def("philox4x32", &philox4x32, py::arg("counter"), py::arg("key"), py::arg("rounds") = 10);
  m.def("gaussian_reference", &gaussian_reference, py::arg("seed"), py::arg("e0"),
        py::arg("count"));
  m.def("prune_csr", &prune_csr, py::arg("A"), py::arg("scores"), py::arg("block_rows"),
        py::arg("block_cols"), py::arg("n_keep"), py::arg("n_threads"), py::arg("index_bytes"));
  m.def("prune_n_m_csr", &prune_n_m_csr, py::arg("A"), py::arg("scores"), py::arg("n"),
        py::arg("m"), py::arg("n_threads"), py::arg("index_bytes"));
  m.def("prune_mask", &prune_mask, py::arg("scores"), py::arg("block_rows"),
        py::arg("block_cols"), py::arg("n_keep"), py::arg("n_threads"));
  m.def("prune_n_m_mask", &prune_n_m_mask, py::arg("scores"), py::arg("n"), py::arg("m"),
        py::arg("n_threads"));
  m.def("codebook4_gemv", &codebook4_gemv, py::arg("x"), py::arg("codes"), py::arg("n"),
        py::arg("codebook"), py::arg("n_threads"));
  m.def("lowrank_matmul_f32", &lowrank_matmul<float>);
  m.def("lowrank_matmul_f64", &lowrank_matmul<double>);
  m.def("lowrank_backward_f32", &lowrank_backward<float>);
  m.def("lowrank_backward_f64", &lowrank_backward<double>);
  m.def("sparse_codes_matmul_f32", &sparse_codes_matmul<float>);
  m.def("sparse_codes_matmul_f64", &sparse_codes_matmul<double>);
  m.def("sparse_codes_backward_f32", &sparse_codes_backward<float>);
  m.def("sparse_codes_backward_f64", &sparse_codes_backward<double>);
  m.def("codebook_matmul_f32", &codebook_matmul<float>);
  m.def("codebook_matmul_f64", &codebook_matmul<double>);
  m.def("codebook_backward_f32", &codebook_backward<float>);
  m.def("codebook_backward_f64", &codebook_backward<double>);
  m.def("signbits_matmul_f32", &signbits_matmul<float>);
  m.def("signbits_matmul_f64", &signbits_matmul<double>);
  m.def("signbits_backward_f32", &signbits_backward<float>);
  m.def("signbits_backward_f64", &signbits_backward<double>);
  m.def("pruned_matmul_f32", &pruned_matmul<float>);
  m.def("pruned_matmul_f64", &pruned_matmul<double>);
  m.def("pruned_backward_f32", &pruned_backward<float>);
  m.def("pruned_backward_f64", &pruned_backward<double>);
  m.def("codes_to_csr_f32", &codes_to_csr<float>);
  m.def("codes_to_csr_f64", &codes_to_csr<double>);
  m.def("gemm_f32", &gemm<float>, py::arg("a"), py::arg("b"), py::arg("trans_a"),
        py::arg("trans_b"), py::arg("max_dim"), py::arg("use_gemv") = false);
  m.def("gemm_f64", &gemm<double>, py::arg("a"), py::arg("b"), py::arg("trans_a"),
        py::arg("trans_b"), py::arg("max_dim"), py::arg("use_gemv") = false);
  m.def("parallel_raise", &parallel_raise, py::arg("n"), py::arg("fail_at"), py::arg("n_threads"));

  m.def("active_isa", [] { return std::string(mc::isa_name(mc::active_isa())); },
        "Instruction set the vectorized kernels use now.");
  m.def("detected_isa", [] { return std::string(mc::isa_name(mc::detected_isa())); },
        "Best instruction set this CPU and build support.");
  m.def("set_isa", [](const std::string& name) { mc::set_active_isa(mc::parse_isa(name)); },
        "Force the instruction set of the vectorized kernels (generic, avx2, avx512).");
  m.def("blas_thread_control", [] { return blas_thread_fns().set != nullptr; },
        "Whether the kernels can limit SciPy's BLAS to one thread and call it per OpenMP thread.");
  m.def("default_threads", &mc::default_threads,
        "OpenMP threads a kernel uses when n_threads is None (omp_get_max_threads).");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
