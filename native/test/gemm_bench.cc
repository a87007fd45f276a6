// The benchmark baseline for the backward pass: the very GEMMs one step of the per-block
// recursion performs (E = G Pᵀ, then P ← c P − Eᵀ G, per block, with rows `dim` wide), as plain
// cblas_sgemm calls in a C++ loop over data in memory. No Node, no I/O, no checks: an upper
// bound the real pass is measured against (bench/backward.ts runs it in the same run).
// Usage: dvemb_gemm_bench <blocks> <k> <batch> <steps> <reps>  -> one line of JSON
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../core/blas.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s <blocks> <k> <batch> <steps> <reps>\n", argv[0]);
    return 2;
  }
  const int blocks = std::atoi(argv[1]), k = std::atoi(argv[2]), b = std::atoi(argv[3]);
  const int steps = std::atoi(argv[4]), reps = std::atoi(argv[5]);
  const int64_t dim = int64_t{blocks} * k;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  std::vector<float> rows(int64_t{steps} * b * dim), emb(rows.size()), P(int64_t{blocks} * k * k, 0.0f);
  for (auto& x : rows) x = normal(rng);
  for (int i = 0; i < blocks; ++i)
    for (int j = 0; j < k; ++j) P[int64_t{i} * k * k + int64_t{j} * k + j] = 1.0f;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = steps - 1; s >= 0; --s) {
      for (int i = 0; i < blocks; ++i) {
        const float* G = rows.data() + int64_t{s} * b * dim + int64_t{i} * k;
        float* E = emb.data() + int64_t{s} * b * dim + int64_t{i} * k;
        float* p = P.data() + int64_t{i} * k * k;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, k, k, 1.0f, G, dim, p, k, 0.0f, E, dim);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, k, b, -1e-3f, E, dim, G, dim, 0.999f, p, k);
      }
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double flops = 4.0 * b * double(k) * k * blocks * steps;
  std::printf("{\"blocks\":%d,\"k\":%d,\"batch\":%d,\"steps\":%d,\"threads\":%d,\"seconds\":%.6f,\"gflops\":%.3f}\n", blocks, k,
              b, steps, openblas_get_num_threads(), best, flops / best / 1e9);
  return 0;
}
