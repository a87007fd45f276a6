// cuBLAS behind the row-major wrappers of blas.h. cuBLAS is column-major, and a row-major
// matrix is the column-major view of its transpose, so C = op(A) op(B) (row-major) is computed
// as Cᵀ = op(B)ᵀ op(A)ᵀ: the operands and the sizes m and n swap places, the ops stay.
#include <cublas_v2.h>

#include <string>
#include <vector>

#include "blas.h"

struct dvemb::cuda::BlasHandle {
  cublasHandle_t handle = nullptr;
};

namespace dvemb::cuda {

namespace {

cublasOperation_t op(Op o) { return o == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; }

Result check(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return {};
  const std::string text = std::string(what) + ": " + cublasGetStatusString(status);
  switch (status) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return failed(Status::OutOfMemory, "out of device memory in " + text);
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return failed(Status::NoDevice, "cuBLAS cannot run here: " + text);
    default: return failed(Status::Failed, "cuBLAS failed in " + text);
  }
}

// One template over the precision; the typed cuBLAS entry points are picked below.
template <typename T>
struct Cublas;
template <>
struct Cublas<float> {
  static constexpr auto gemm = cublasSgemm;
  static constexpr auto strided = cublasSgemmStridedBatched;
  static constexpr auto batched = cublasSgemmBatched;
  static constexpr auto grouped = cublasSgemmGroupedBatched;
};
template <>
struct Cublas<double> {
  static constexpr auto gemm = cublasDgemm;
  static constexpr auto strided = cublasDgemmStridedBatched;
  static constexpr auto batched = cublasDgemmBatched;
  static constexpr auto grouped = cublasDgemmGroupedBatched;
};

template <typename T>
Result gemm_t(BlasHandle* h, Op ta, Op tb, int m, int n, int k, T alpha, const T* a, int lda,
              const T* b, int ldb, T beta, T* c, int ldc) {
  return check(Cublas<T>::gemm(h->handle, op(tb), op(ta), n, m, k, &alpha, b, ldb, a, lda, &beta,
                               c, ldc),
               "gemm");
}

template <typename T>
Result strided_t(BlasHandle* h, Op ta, Op tb, int m, int n, int k, T alpha, const T* a, int lda,
                 long long stride_a, const T* b, int ldb, long long stride_b, T beta, T* c,
                 int ldc, long long stride_c, int batch) {
  return check(Cublas<T>::strided(h->handle, op(tb), op(ta), n, m, k, &alpha, b, ldb, stride_b,
                                  a, lda, stride_a, &beta, c, ldc, stride_c, batch),
               "strided batched gemm");
}

template <typename T>
Result grouped_t(BlasHandle* h, Op ta, Op tb, const std::vector<GemmGroup>& groups, T alpha,
                 const T* const* a, const T* const* b, T beta, T* const* c) {
  if (groups.size() == 1) {
    const GemmGroup& g = groups[0];
    return check(Cublas<T>::batched(h->handle, op(tb), op(ta), g.n, g.m, g.k, &alpha, b, g.ldb,
                                    a, g.lda, &beta, c, g.ldc, g.count),
                 "batched gemm");
  }
  // cuBLAS takes one entry per group in host arrays.
  const size_t count = groups.size();
  std::vector<cublasOperation_t> op_a(count, op(tb)), op_b(count, op(ta));
  std::vector<int> m(count), n(count), k(count), lda(count), ldb(count), ldc(count), size(count);
  std::vector<T> alphas(count, alpha), betas(count, beta);
  for (size_t i = 0; i < count; ++i) {
    const GemmGroup& g = groups[i];
    m[i] = g.n;
    n[i] = g.m;
    k[i] = g.k;
    lda[i] = g.ldb;
    ldb[i] = g.lda;
    ldc[i] = g.ldc;
    size[i] = g.count;
  }
  return check(Cublas<T>::grouped(h->handle, op_a.data(), op_b.data(), m.data(), n.data(),
                                  k.data(), alphas.data(), b, lda.data(), a, ldb.data(),
                                  betas.data(), c, ldc.data(), static_cast<int>(count),
                                  size.data()),
               "grouped batched gemm");
}

}  // namespace

Result blas_create(BlasHandle** out) {
  *out = nullptr;
  cublasHandle_t handle = nullptr;
  if (Result r = check(cublasCreate(&handle), "cublasCreate"); !r.ok()) return r;
  // Products stay plain fp32 unless TF32 is asked for; no atomics, so results repeat bit for
  // bit from run to run.
  cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
  cublasSetAtomicsMode(handle, CUBLAS_ATOMICS_NOT_ALLOWED);
  *out = new BlasHandle{handle};
  return {};
}

void blas_destroy(BlasHandle* h) {
  if (!h) return;
  cublasDestroy(h->handle);
  delete h;
}

Result blas_set_stream(BlasHandle* h, cudaStream_t stream) {
  return check(cublasSetStream(h->handle, stream), "cublasSetStream");
}

Result blas_set_tf32(BlasHandle* h, bool tf32) {
  const cublasMath_t mode = tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
  return check(cublasSetMathMode(h->handle, mode), "cublasSetMathMode");
}

std::string blas_version(BlasHandle* h) {
  int v = 0;
  if (cublasGetVersion(h->handle, &v) != CUBLAS_STATUS_SUCCESS) return "cuBLAS";
  // CUBLAS_VERSION: major * 10000 + minor * 100 + patch.
  return "cuBLAS " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

Result gemm(BlasHandle* h, Op ta, Op tb, int m, int n, int k, float alpha, const float* a,
            int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  return gemm_t(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
Result gemm(BlasHandle* h, Op ta, Op tb, int m, int n, int k, double alpha, const double* a,
            int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  return gemm_t(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

Result gemm_strided(BlasHandle* h, Op ta, Op tb, int m, int n, int k, float alpha,
                    const float* a, int lda, long long stride_a, const float* b, int ldb,
                    long long stride_b, float beta, float* c, int ldc, long long stride_c,
                    int batch) {
  return strided_t(h, ta, tb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                   stride_c, batch);
}
Result gemm_strided(BlasHandle* h, Op ta, Op tb, int m, int n, int k, double alpha,
                    const double* a, int lda, long long stride_a, const double* b, int ldb,
                    long long stride_b, double beta, double* c, int ldc, long long stride_c,
                    int batch) {
  return strided_t(h, ta, tb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                   stride_c, batch);
}

Result gemm_grouped(BlasHandle* h, Op ta, Op tb, const std::vector<GemmGroup>& groups,
                    float alpha, const float* const* a, const float* const* b, float beta,
                    float* const* c) {
  return grouped_t(h, ta, tb, groups, alpha, a, b, beta, c);
}
Result gemm_grouped(BlasHandle* h, Op ta, Op tb, const std::vector<GemmGroup>& groups,
                    double alpha, const double* const* a, const double* const* b, double beta,
                    double* const* c) {
  return grouped_t(h, ta, tb, groups, alpha, a, b, beta, c);
}

}  // namespace dvemb::cuda
