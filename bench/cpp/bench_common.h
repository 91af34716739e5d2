// Shared glue of the google-benchmark programs: the Fortran BLAS/LAPACK entry points they link,
// OpenBLAS thread pinning, and the run context every program reports.
#pragma once

#include <benchmark/benchmark.h>

#include <string>

#include "matcompress/blas.h"
#include "matcompress/cpu.h"

extern "C" {
// Fortran BLAS/LAPACK (LP64), with the argument lists of matcompress::FortranGemm<T>::Fn and
// matcompress::FortranPosv<T>::Fn.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
void sposv_(const char* uplo, const int* n, const int* nrhs, float* a, const int* lda, float* b,
            const int* ldb, int* info) __attribute__((weak));
void dposv_(const char* uplo, const int* n, const int* nrhs, double* a, const int* lda,
            double* b, const int* ldb, int* info) __attribute__((weak));
// OpenBLAS only; null when the linked BLAS is another one.
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
char* openblas_get_config(void) __attribute__((weak));
}

namespace mcbench {

template <typename T>
typename matcompress::FortranGemm<T>::Fn fortran_gemm();
template <>
inline matcompress::FortranGemm<float>::Fn fortran_gemm<float>() { return &sgemm_; }
template <>
inline matcompress::FortranGemm<double>::Fn fortran_gemm<double>() { return &dgemm_; }

/// Null when the linked library has no LAPACK.
template <typename T>
typename matcompress::FortranPosv<T>::Fn fortran_posv();
template <>
inline matcompress::FortranPosv<float>::Fn fortran_posv<float>() { return sposv_; }
template <>
inline matcompress::FortranPosv<double>::Fn fortran_posv<double>() { return dposv_; }

inline bool set_blas_threads(int n) {
  if (openblas_set_num_threads == nullptr) return false;
  openblas_set_num_threads(n);
  return true;
}

/// google-benchmark's main, with the instruction set, threads and BLAS in the context.
inline int run_benchmarks(int argc, char** argv) {
  namespace mc = matcompress;
  benchmark::AddCustomContext("matcompress_isa", mc::isa_name(mc::active_isa()));
  benchmark::AddCustomContext("openmp_max_threads", std::to_string(mc::default_threads()));
  if (openblas_get_config != nullptr)
    benchmark::AddCustomContext("blas", openblas_get_config());
  else
    benchmark::AddCustomContext("blas", "not OpenBLAS: BLAS thread count not pinned");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace mcbench
