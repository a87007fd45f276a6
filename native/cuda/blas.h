// The cuBLAS calls of the CUDA backend, behind row-major wrappers (the same argument order as
// cblas with CblasRowMajor, so the kernels read like the CPU core). Only blas.cu includes
// cublas_v2.h: everything else compiles with the CUDA runtime headers alone.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "device.h"

namespace dvemb::cuda {

enum class Op { N, T };

struct BlasHandle;  // a cublasHandle_t

Result blas_create(BlasHandle** out);
void blas_destroy(BlasHandle* handle);
// Every later call on the handle runs on `stream`.
Result blas_set_stream(BlasHandle* handle, cudaStream_t stream);
// TF32 tensor-core products for fp32 GEMMs (10-bit mantissa inputs) or plain fp32 (default).
Result blas_set_tf32(BlasHandle* handle, bool tf32);
// e.g. "cuBLAS 13.1.1".
std::string blas_version(BlasHandle* handle);

// C (m × n) = alpha op(A) op(B) + beta C, all row-major.
Result gemm(BlasHandle* h, Op ta, Op tb, int m, int n, int k, float alpha, const float* a,
            int lda, const float* b, int ldb, float beta, float* c, int ldc);
Result gemm(BlasHandle* h, Op ta, Op tb, int m, int n, int k, double alpha, const double* a,
            int lda, const double* b, int ldb, double beta, double* c, int ldc);

// `batch` products of one shape whose operands lie a fixed number of elements apart (a stride
// of 0 shares an operand): one cublas<t>gemmStridedBatched call.
Result gemm_strided(BlasHandle* h, Op ta, Op tb, int m, int n, int k, float alpha,
                    const float* a, int lda, long long stride_a, const float* b, int ldb,
                    long long stride_b, float beta, float* c, int ldc, long long stride_c,
                    int batch);
Result gemm_strided(BlasHandle* h, Op ta, Op tb, int m, int n, int k, double alpha,
                    const double* a, int lda, long long stride_a, const double* b, int ldb,
                    long long stride_b, double beta, double* c, int ldc, long long stride_c,
                    int batch);

// Products whose operands are listed in device arrays of pointers, `count` consecutive entries
// of them per group, every product of a group of one shape. One group: one cublas<t>gemmBatched
// call; several (blocks of different sizes): one cublas<t>gemmGroupedBatched call.
struct GemmGroup {
  int m, n, k, lda, ldb, ldc, count;
};
Result gemm_grouped(BlasHandle* h, Op ta, Op tb, const std::vector<GemmGroup>& groups,
                    float alpha, const float* const* a, const float* const* b, float beta,
                    float* const* c);
Result gemm_grouped(BlasHandle* h, Op ta, Op tb, const std::vector<GemmGroup>& groups,
                    double alpha, const double* const* a, const double* const* b, double beta,
                    double* const* c);

}  // namespace dvemb::cuda
