#include "dictionary.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace matcompress {
namespace {

// Eight independent partial sums: one accumulator would chain every add on the previous one
// (the rows here are short, so latency, not throughput, would bound the loop).
template <typename T>
T dot(const T* __restrict a, const T* __restrict b, index_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  index_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
void axpy(T alpha, const T* __restrict x, T* __restrict y, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// ||v||, scaled so that squaring cannot overflow or underflow (v's entries may be as large as the
// type allows: K-SVD's update vector grows like |X|^2).
template <typename T>
T safe_norm(const T* v, index_t n) {
  T mx = 0;
  for (index_t i = 0; i < n; ++i) mx = std::max(mx, std::abs(v[i]));
  if (!(mx > T(0)) || !std::isfinite(mx)) return mx;
  const T inv = T(1) / mx;
  T s = 0;
  for (index_t i = 0; i < n; ++i) s += (v[i] * inv) * (v[i] * inv);
  return mx * std::sqrt(s);
}

// r = x - sum_t values[t] * D[indices[t]]; returns ||r||^2.
template <typename T>
T residual_row(const T* x, const int32_t* indices, const T* values, index_t cnt, const T* D,
               index_t m, T* r) {
  std::copy(x, x + m, r);
  for (index_t t = 0; t < cnt; ++t) axpy(-values[t], D + indices[t] * m, r, m);
  return dot(r, r, m);
}

// The codes regrouped by atom: the entries (flat offsets i * max_atoms + slot into the compact
// arrays) of atom a are entries[ptr[a] .. ptr[a+1]), in increasing signal order.
struct AtomLists {
  std::vector<index_t> ptr;
  std::vector<index_t> entries;
};

template <typename T>
AtomLists atom_lists(const CompactCodes<T>& c, index_t n, index_t k) {
  AtomLists l;
  l.ptr.assign(static_cast<size_t>(k + 1), 0);
  for (index_t i = 0; i < n; ++i)
    for (index_t t = 0; t < c.nnz[i]; ++t) ++l.ptr[c.indices[i * c.max_atoms + t] + 1];
  for (index_t a = 0; a < k; ++a) l.ptr[a + 1] += l.ptr[a];
  l.entries.resize(static_cast<size_t>(l.ptr[k]));
  std::vector<index_t> fill(l.ptr.begin(), l.ptr.end() - 1);
  for (index_t i = 0; i < n; ++i)
    for (index_t t = 0; t < c.nnz[i]; ++t)
      l.entries[fill[c.indices[i * c.max_atoms + t]]++] = i * c.max_atoms + t;
  return l;
}

template <typename T>
void check_codes(const CompactCodes<T>& c, index_t n, index_t k, const char* what) {
  MC_CHECK(c.indices != nullptr && c.values != nullptr && c.nnz != nullptr && c.max_atoms >= 1,
           what << ": missing codes");
  for (index_t i = 0; i < n; ++i) {
    MC_CHECK(c.nnz[i] >= 0 && c.nnz[i] <= c.max_atoms, what << ": bad code count at row " << i);
    for (index_t t = 0; t < c.nnz[i]; ++t) {
      const int32_t a = c.indices[i * c.max_atoms + t];
      MC_CHECK(a >= 0 && a < k, what << ": atom index " << a << " out of range at row " << i);
    }
  }
}

// Up to `m` signals with the largest row_error > 0, largest first (lower index on ties).
template <typename T>
std::vector<index_t> worst_signals(const T* row_error, index_t n, index_t m) {
  std::vector<index_t> idx;
  idx.reserve(static_cast<size_t>(n));
  for (index_t i = 0; i < n; ++i)
    if (row_error[i] > T(0)) idx.push_back(i);
  const auto worse = [&](index_t a, index_t b) {
    return row_error[a] > row_error[b] || (row_error[a] == row_error[b] && a < b);
  };
  if (static_cast<index_t>(idx.size()) > m) {
    std::nth_element(idx.begin(), idx.begin() + m, idx.end(), worse);
    idx.resize(static_cast<size_t>(m));
  }
  std::sort(idx.begin(), idx.end(), worse);
  return idx;
}

// Atom j <- x / ||x||. Returns false (atom unchanged) for a zero signal.
template <typename T>
bool set_atom(T* atom, const T* x, index_t m) {
  const T nrm = safe_norm(x, m);
  if (!(nrm > T(0)) || !std::isfinite(nrm)) return false;
  for (index_t i = 0; i < m; ++i) atom[i] = x[i] / nrm;
  return true;
}

// Pairs (a, b), a < b, of atoms with |<d_a, d_b>| > threshold, in row-major order of the Gram
// matrix (computed by GEMM outside any OpenMP region).
// `G` receives D D^T when given (size k * k).
template <typename T>
std::vector<std::pair<index_t, index_t>> duplicate_pairs(const Gemm<T>& gemm, const T* D,
                                                         index_t k, index_t m, double threshold,
                                                         T* G = nullptr) {
  std::vector<std::pair<index_t, index_t>> pairs;
  const bool check = threshold < 1.0 && k >= 2;
  if (!check && G == nullptr) return pairs;
  std::vector<T> own;
  if (G == nullptr) {
    own.resize(static_cast<size_t>(k * k));
    G = own.data();
  }
  gemm(false, true, k, k, m, T(1), D, m, D, m, T(0), G, k);
  if (!check) return pairs;
  for (index_t a = 0; a < k; ++a)
    for (index_t b = a + 1; b < k; ++b)
      if (std::abs(G[a * k + b]) > threshold) pairs.emplace_back(a, b);
  return pairs;
}

template <typename T>
void recompute_residuals(const BatchDictState<T>& s, int nt) {
  const index_t m = s.n_features, smax = s.codes.max_atoms;
  parallel_for(0, s.n_samples, nt, 256, [&](index_t i, int) {
    s.row_error[i] = residual_row(s.X + i * m, s.codes.indices + i * smax,
                                  s.codes.values + i * smax, s.codes.nnz[i], s.dictionary, m,
                                  s.residual + i * m);
  });
}

template <typename T>
double total(const T* row_error, index_t n) {
  double sum = 0;
  for (index_t i = 0; i < n; ++i) sum += double(row_error[i]);
  return sum;
}

// Approximate K-SVD: atom j with coefficients g on the signals I using it. With E = R_I + g d_j^T
// (the residual without atom j), d <- E^T g / ||E^T g||, then g <- E d: one step of the power
// iteration for E's leading singular pair, warm-started from the current one.
template <typename T>
void ksvd_update(const BatchDictState<T>& s, const AtomLists& lists, const int32_t* order) {
  const index_t m = s.n_features, k = s.n_components, smax = s.codes.max_atoms;
  std::vector<T> u(static_cast<size_t>(m)), d(static_cast<size_t>(m));
  for (index_t step = 0; step < k; ++step) {
    const index_t j = order != nullptr ? order[step] : step;
    const index_t p0 = lists.ptr[j], p1 = lists.ptr[j + 1];
    if (p0 == p1) continue;
    T* dj = s.dictionary + j * m;
    std::fill(u.begin(), u.end(), T(0));
    T gg = 0;
    for (index_t p = p0; p < p1; ++p) {
      const index_t o = lists.entries[p];
      const T g = s.codes.values[o];
      axpy(g, s.residual + (o / smax) * m, u.data(), m);
      gg += g * g;
    }
    axpy(gg, dj, u.data(), m);
    const T nrm = safe_norm(u.data(), m);
    if (!(nrm > T(0)) || !std::isfinite(nrm)) continue;
    for (index_t f = 0; f < m; ++f) d[f] = u[f] / nrm;
    const T c = dot(dj, d.data(), m);
    for (index_t p = p0; p < p1; ++p) {
      const index_t o = lists.entries[p];
      T* r = s.residual + (o / smax) * m;
      const T g = s.codes.values[o];
      const T g_new = dot(r, d.data(), m) + g * c;
      for (index_t f = 0; f < m; ++f) r[f] += g * dj[f] - g_new * d[f];
      s.codes.values[o] = g_new;
    }
    std::copy(d.begin(), d.end(), dj);
  }
}

// MOD: the least-squares dictionary for the current codes, atoms rescaled to unit norm.
template <typename T>
void mod_update(const BatchDictState<T>& s, const PosvSolver<T>& posv, const AtomLists& lists,
                int n_threads) {
  const index_t m = s.n_features, k = s.n_components, smax = s.codes.max_atoms;
  std::vector<T> G(static_cast<size_t>(k * k), T(0)), B(static_cast<size_t>(k * m), T(0));
  const double work = double(lists.entries.size()) * double(smax + m);
  parallel_for(0, k, resolve_threads_for_work(n_threads, work), 4, [&](index_t a, int) {
    T* g = G.data() + a * k;
    T* b = B.data() + a * m;
    for (index_t p = lists.ptr[a]; p < lists.ptr[a + 1]; ++p) {
      const index_t o = lists.entries[p], i = o / smax;
      const T v = s.codes.values[o];
      for (index_t t = 0; t < s.codes.nnz[i]; ++t)
        g[s.codes.indices[i * smax + t]] += v * s.codes.values[i * smax + t];
      axpy(v, s.X + i * m, b, m);
    }
    if (lists.ptr[a] == lists.ptr[a + 1]) {  // unused: keep the atom as it is
      g[a] = T(1);
      std::copy(s.dictionary + a * m, s.dictionary + (a + 1) * m, b);
    }
  });
  // Codes whose used atoms are linearly dependent make G singular: then a small ridge.
  double mean_diag = 0;
  for (index_t a = 0; a < k; ++a) mean_diag += double(G[a * k + a]) / double(k);
  std::vector<T> Gw, Bw;
  bool solved = false;
  double ridge = 0;
  for (int attempt = 0; attempt < 8 && !solved; ++attempt) {
    Gw = G;
    Bw = B;
    for (index_t a = 0; a < k; ++a) Gw[a * k + a] += T(ridge);
    solved = posv(k, m, Gw.data(), Bw.data());
    ridge = ridge == 0 ? mean_diag * (sizeof(T) == 4 ? 1e-6 : 1e-12) : ridge * 100;
  }
  if (!solved) return;  // keep the dictionary: the codes are unusable for a least-squares fit
  for (index_t a = 0; a < k; ++a) {
    const T* b = Bw.data() + a * m;
    const T nrm = safe_norm(b, m);
    const bool ok = nrm > T(0) && std::isfinite(nrm);
    if (ok)
      for (index_t f = 0; f < m; ++f) s.dictionary[a * m + f] = b[f] / nrm;
    // A zero least-squares atom contributes nothing: its coefficients become 0 (and the atom
    // unused, so it is replaced below).
    for (index_t p = lists.ptr[a]; p < lists.ptr[a + 1]; ++p)
      s.codes.values[lists.entries[p]] = ok ? s.codes.values[lists.entries[p]] * nrm : T(0);
  }
}

}  // namespace

template <typename T>
DictStepStats batch_dictionary_step(DictUpdate method, const Gemm<T>& gemm,
                                    const PosvSolver<T>& posv, const BatchDictState<T>& s,
                                    const int32_t* atom_order, const DictStepOptions& o) {
  const index_t n = s.n_samples, m = s.n_features, k = s.n_components, smax = s.codes.max_atoms;
  MC_CHECK(n >= 1 && m >= 1 && k >= 1, "batch_dictionary_step: bad sizes");
  MC_CHECK(k <= INT32_MAX, "batch_dictionary_step: n_components must be < 2^31");
  MC_CHECK(s.X && s.dictionary && s.residual && s.row_error,
           "batch_dictionary_step: missing arrays");
  check_codes(s.codes, n, k, "batch_dictionary_step");
  if (atom_order != nullptr) {
    std::vector<char> seen(static_cast<size_t>(k), 0);
    for (index_t j = 0; j < k; ++j) {
      MC_CHECK(atom_order[j] >= 0 && atom_order[j] < k && !seen[atom_order[j]],
               "batch_dictionary_step: atom_order is not a permutation");
      seen[atom_order[j]] = 1;
    }
  }
  const int nt = resolve_threads_for_work(o.n_threads, double(n) * double(m) * double(smax + 1),
                                          2e6);
  DictStepStats st;
  AtomLists lists = atom_lists(s.codes, n, k);
  if (method == DictUpdate::ksvd) {
    recompute_residuals(s, nt);
    ksvd_update(s, lists, atom_order);
    parallel_for(0, n, nt, 256, [&](index_t i, int) {
      s.row_error[i] = dot(s.residual + i * m, s.residual + i * m, m);
    });
  } else {
    mod_update(s, posv, lists, o.n_threads);
    recompute_residuals(s, nt);
  }

  // Atom replacement. Unused atoms cost nothing to replace. Of two duplicates (|cos| = |c| >
  // threshold) the less used one, j, is merged into its twin i: each of j's coefficients g moves
  // to i as c g, which changes that signal's residual by g (c d_i - d_j), of squared norm
  // g^2 (1 - c^2) (at most 2% of g^2 at the default threshold). Twins are kept out of later pairs
  // of the same pass, so no moved coefficient lands on an atom that is replaced afterwards.
  std::vector<index_t> uses(static_cast<size_t>(k), 0);
  for (index_t a = 0; a < k; ++a)
    for (index_t p = lists.ptr[a]; p < lists.ptr[a + 1]; ++p)
      uses[a] += s.codes.values[lists.entries[p]] != T(0);
  std::vector<char> replaced(static_cast<size_t>(k), 0), twin(static_cast<size_t>(k), 0);
  std::vector<index_t> victims;
  for (index_t a = 0; a < k; ++a)
    if (uses[a] == 0) {
      replaced[a] = 1;
      victims.push_back(a);
    }
  st.n_unused = static_cast<index_t>(victims.size());
  std::vector<T> G(static_cast<size_t>(k * k));
  // The worst-represented signals are chosen from the errors before any merge: a merge makes the
  // merged signals look worse than they are (their twin atom still represents them).
  std::vector<T> error_before(s.row_error, s.row_error + n);
  for (const auto& pr : duplicate_pairs(gemm, s.dictionary, k, m, o.duplicate_threshold,
                                        G.data())) {
    if (replaced[pr.first] || replaced[pr.second] || twin[pr.first] || twin[pr.second]) continue;
    const bool second = uses[pr.second] <= uses[pr.first];
    const index_t j = second ? pr.second : pr.first, i = second ? pr.first : pr.second;
    const T c = G[pr.first * k + pr.second];
    for (index_t p = lists.ptr[j]; p < lists.ptr[j + 1]; ++p) {
      const index_t o_ = lists.entries[p], row = o_ / smax;
      int32_t* idx = s.codes.indices + row * smax;
      T* val = s.codes.values + row * smax;
      index_t q = 0;
      while (q < s.codes.nnz[row] && idx[q] != i) ++q;
      if (q < s.codes.nnz[row]) {  // the signal uses the twin already: add to it
        val[q] += c * s.codes.values[o_];
        s.codes.values[o_] = T(0);  // dropped with atom j below
      } else {                      // the entry becomes the twin's
        s.codes.indices[o_] = static_cast<int32_t>(i);
        s.codes.values[o_] *= c;
      }
    }
    replaced[j] = 1;
    twin[i] = 1;
    victims.push_back(j);
    ++st.n_duplicates;
  }
  if (!victims.empty()) {
    parallel_for(0, n, nt, 256, [&](index_t i, int) {  // drop the replaced atoms from the codes
      int32_t* idx = s.codes.indices + i * smax;
      T* val = s.codes.values + i * smax;
      index_t w = 0;
      for (index_t t = 0; t < s.codes.nnz[i]; ++t) {
        if (replaced[idx[t]]) continue;
        idx[w] = idx[t];
        val[w] = val[t];
        ++w;
      }
      s.codes.nnz[i] = w;
    });
    const std::vector<index_t> worst =
        worst_signals(error_before.data(), n, static_cast<index_t>(victims.size()));
    for (size_t v = 0, w = 0; v < victims.size() && w < worst.size(); ++w)
      if (set_atom(s.dictionary + victims[v] * m, s.X + worst[w] * m, m)) ++v;
    if (st.n_duplicates > 0) recompute_residuals(s, nt);
  }
  st.sq_error = total(s.row_error, n);
  return st;
}

template <typename T>
OnlineStepStats online_dictionary_step(const Gemm<T>& gemm, const OnlineDictState<T>& s,
                                       const T* X, index_t n, const CompactCodes<T>& c, T beta,
                                       T weight, const DictStepOptions& o, T* gram) {
  const index_t m = s.n_features, k = s.n_components, smax = c.max_atoms;
  MC_CHECK(n >= 1 && m >= 1 && k >= 1, "online_dictionary_step: bad sizes");
  MC_CHECK(X && s.dictionary && s.A && s.B, "online_dictionary_step: missing arrays");
  check_codes(c, n, k, "online_dictionary_step");
  T* D = s.dictionary;
  T* A = s.A;
  T* B = s.B;
  OnlineStepStats st;

  // Residuals of the batch before the update: the error, and who is worst represented.
  std::vector<T> row_error(static_cast<size_t>(n));
  {
    const int nt = resolve_threads_for_work(o.n_threads, double(n) * double(m) * double(smax),
                                            2e6);
    std::vector<std::vector<T>> buf(static_cast<size_t>(nt), std::vector<T>(m));
    parallel_for(0, n, nt, 256, [&](index_t i, int tid) {
      row_error[i] = residual_row(X + i * m, c.indices + i * smax, c.values + i * smax, c.nnz[i],
                                  D, m, buf[tid].data());
    });
    st.sq_error = total(row_error.data(), n);
  }

  // Sufficient statistics.
  for (index_t i = 0; i < k * k; ++i) A[i] *= beta;
  for (index_t i = 0; i < k * m; ++i) B[i] *= beta;
  std::vector<char> used(static_cast<size_t>(k), 0);
  for (index_t i = 0; i < n; ++i) {
    const int32_t* idx = c.indices + i * smax;
    const T* val = c.values + i * smax;
    for (index_t t = 0; t < c.nnz[i]; ++t) {
      const T v = weight * val[t];
      if (val[t] != T(0)) used[idx[t]] = 1;
      for (index_t u = 0; u < c.nnz[i]; ++u) A[idx[t] * k + idx[u]] += v * val[u];
      axpy(v, X + i * m, B + idx[t] * m, m);
    }
  }

  // Block coordinate descent, blocks of kBlock atoms: C = A D by GEMM, corrected inside a block
  // for the atoms already updated in it, and by one GEMM for the rows after it.
  double mean_diag = 0;
  for (index_t a = 0; a < k; ++a) mean_diag += double(A[a * k + a]) / double(k);
  const T dead = T(mean_diag * 1e-6);
  constexpr index_t kBlock = 32;
  std::vector<T> C(static_cast<size_t>(k * m)), delta(static_cast<size_t>(kBlock * m));
  std::vector<T> u(static_cast<size_t>(m));
  gemm(false, false, k, m, k, T(1), A, k, D, m, T(0), C.data(), m);
  for (index_t j0 = 0; j0 < k; j0 += kBlock) {
    const index_t j1 = std::min(k, j0 + kBlock);
    for (index_t j = j0; j < j1; ++j) {
      T* dl = delta.data() + (j - j0) * m;
      std::fill(dl, dl + m, T(0));
      const T ajj = A[j * k + j];
      if (!(ajj > dead)) continue;
      T* dj = D + j * m;
      const T* cj = C.data() + j * m;
      for (index_t f = 0; f < m; ++f) u[f] = B[j * m + f] - cj[f];
      for (index_t l = j0; l < j; ++l) axpy(-A[j * k + l], delta.data() + (l - j0) * m, u.data(), m);
      for (index_t f = 0; f < m; ++f) u[f] = dj[f] + u[f] / ajj;
      const T nrm = safe_norm(u.data(), m);
      if (!(nrm > T(0)) || !std::isfinite(nrm)) continue;
      for (index_t f = 0; f < m; ++f) {
        const T dn = u[f] / nrm;
        dl[f] = dn - dj[f];
        dj[f] = dn;
      }
    }
    if (j1 < k)
      gemm(false, false, k - j1, m, j1 - j0, T(1), A + j1 * k + j0, k, delta.data(), m, T(1),
           C.data() + j1 * m, m);
  }

  // Replacement: dead atoms, then the less used atom of each duplicate pair.
  std::vector<char> replaced(static_cast<size_t>(k), 0);
  std::vector<index_t> victims;
  for (index_t a = 0; a < k; ++a)
    if (!used[a] && !(A[a * k + a] > dead)) {
      replaced[a] = 1;
      victims.push_back(a);
    }
  for (const auto& pr : duplicate_pairs(gemm, D, k, m, o.duplicate_threshold, gram)) {
    if (replaced[pr.first] || replaced[pr.second]) continue;
    const index_t j =
        A[pr.second * k + pr.second] <= A[pr.first * k + pr.first] ? pr.second : pr.first;
    replaced[j] = 1;
    victims.push_back(j);
  }
  if (!victims.empty()) {
    const std::vector<index_t> worst =
        worst_signals(row_error.data(), n, static_cast<index_t>(victims.size()));
    for (size_t v = 0, w = 0; v < victims.size() && w < worst.size(); ++w) {
      const index_t j = victims[v];
      if (!set_atom(D + j * m, X + worst[w] * m, m)) continue;
      for (index_t l = 0; l < k; ++l) A[j * k + l] = A[l * k + j] = T(0);
      std::fill(B + j * m, B + (j + 1) * m, T(0));
      if (gram != nullptr)  // row and column j of D D^T for the new atom
        for (index_t l = 0; l < k; ++l)
          gram[j * k + l] = gram[l * k + j] = dot(D + j * m, D + l * m, m);
      ++v;
      ++st.n_replaced;
    }
  }
  return st;
}

#define MC_INSTANTIATE(T)                                                                      \
  template DictStepStats batch_dictionary_step<T>(DictUpdate, const Gemm<T>&,                 \
                                                  const PosvSolver<T>&,                       \
                                                  const BatchDictState<T>&, const int32_t*,   \
                                                  const DictStepOptions&);                    \
  template OnlineStepStats online_dictionary_step<T>(const Gemm<T>&, const OnlineDictState<T>&, \
                                                     const T*, index_t, const CompactCodes<T>&, \
                                                     T, T, const DictStepOptions&, T*);
MC_INSTANTIATE(float)
MC_INSTANTIATE(double)
#undef MC_INSTANTIATE

}  // namespace matcompress
