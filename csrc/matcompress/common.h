// Shared internals of the matcompress core: index type, error checks, CPU threads.
// No Python, no TensorFlow here.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace matcompress {

/// Signed 64-bit index: every size and offset in the core.
using index_t = std::int64_t;

/// User-facing precondition: throws std::invalid_argument (ValueError in Python) with context.
#define MC_CHECK(cond, msg)                                        \
  do {                                                             \
    if (!(cond)) {                                                 \
      std::ostringstream mc_check_os_;                             \
      mc_check_os_ << msg;                                         \
      throw std::invalid_argument(mc_check_os_.str());             \
    }                                                              \
  } while (0)

/// Thrown by a kernel when the caller's interrupt callback asked it to stop.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

/// Threads an OpenMP region may use by default (honours OMP_NUM_THREADS, omp_set_num_threads).
inline int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// n_threads <= 0 means "the default"; never more threads than work items.
inline int resolve_threads(int n_threads, index_t n_items) {
  index_t t = n_threads > 0 ? n_threads : default_threads();
  if (t > n_items) t = n_items;
  return t < 1 ? 1 : static_cast<int>(t);
}

/// Threads worth using for `work` units (multiply-adds or element operations): each thread gets
/// at least `min_per_thread` (default ~1 ms of work), because a parallel region costs a wake-up
/// and a barrier — and on a loaded machine the barrier waits for the worker's next timeslice.
inline int resolve_threads_for_work(int n_threads, double work, double min_per_thread = 1e7) {
  const double useful = work / min_per_thread;
  const index_t cap = useful < 1.0 ? 1 : static_cast<index_t>(useful);
  return resolve_threads(n_threads, cap);
}

/// Keeps the first exception thrown by any thread of a parallel loop, to re-throw after it.
class ExceptionSlot {
 public:
  void capture() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!first_) first_ = std::current_exception();
    failed_.store(true, std::memory_order_relaxed);
  }
  bool failed() const noexcept { return failed_.load(std::memory_order_relaxed); }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr first_;
  std::atomic<bool> failed_{false};
};

/// Runs body(i, thread_id) for i in [begin, end) on n_threads OpenMP threads (dynamic schedule,
/// `grain` items per grab). An exception in any thread stops the remaining work and is re-thrown
/// here after the loop.
template <class Body>
void parallel_for(index_t begin, index_t end, int n_threads, index_t grain, Body&& body) {
  if (end <= begin) return;
  if (n_threads <= 1) {
    for (index_t i = begin; i < end; ++i) body(i, 0);
    return;
  }
  ExceptionSlot slot;
  if (grain < 1) grain = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
  {
    const int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (index_t g = begin; g < end; g += grain) {
      if (slot.failed()) continue;
      try {
        const index_t stop = g + grain < end ? g + grain : end;
        for (index_t i = g; i < stop; ++i) body(i, tid);
      } catch (...) {
        slot.capture();
      }
    }
  }
#else
  for (index_t i = begin; i < end; ++i) body(i, 0);
#endif
  slot.rethrow();
}

}  // namespace matcompress
