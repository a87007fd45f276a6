#include "scoring.h"

#include "blas.h"

namespace dvemb {

Error score(const ScoreJob& job) {
  if (job.n == 0 || job.m == 0) return {};
  const int dim = static_cast<int>(job.dim);
  gemm(CblasNoTrans, CblasTrans, static_cast<int>(job.n), static_cast<int>(job.m), dim, 1.0f,
       job.embeddings, dim, job.tests, dim, 0.0f, job.out, static_cast<int>(job.m));
  return {};
}

}  // namespace dvemb
