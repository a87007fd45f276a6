// The only place the BLAS is included. OpenBLAS's cblas.h also declares its thread controls.
#pragma once
#include <cblas.h>

namespace dvemb {

inline int blas_threads() { return openblas_get_num_threads(); }
inline void set_blas_threads(int threads) { openblas_set_num_threads(threads); }
// e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64".
inline const char* blas_config() { return openblas_get_config(); }

// Row-major GEMM, overloaded on precision so templated code can call one name.
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c,
                 int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
                 const double* a, int lda, const double* b, int ldb, double beta, double* c,
                 int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace dvemb
