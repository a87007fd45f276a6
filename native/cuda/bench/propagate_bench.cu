// The GPU backward pass next to plain cuBLAS SGEMMs of the same shapes, in one run (the [CUDA]
// issue's "≥ 0.7 × cuBLAS sgemm throughput"). Prints one JSON object; bench/cuda.ts runs it and
// merges it into bench/results/cuda.json.
//
//   dvemb_cuda_bench [--blocks 24] [--k 256] [--batch 16] [--steps 2000] [--tf32]
//
// Measured, for `blocks` blocks of k × k propagators and `batch` rows a step (fp32):
//   propagate: cuda::propagate from host memory (rows up, embeddings down, as the addon runs it):
//              wall time, and the GPU time of its compute stream alone;
//   strided:   the two GEMMs of every step (E = G Pᵀ, P ← P − Eᵀ G) as the same two
//              strided-batched SGEMM calls on device-resident data, nothing else;
//   loop:      the same GEMMs as one plain cublasSgemm per block (what a loop over layers does).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../backend.h"
#include "../runtime.cuh"

using namespace dvemb;
using namespace dvemb::cuda;

namespace {

struct Config {
  int blocks = 24, k = 256, batch = 16, steps = 2000;
  bool tf32 = false;
};

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--blocks") c.blocks = next();
    else if (a == "--k") c.k = next();
    else if (a == "--batch") c.batch = next();
    else if (a == "--steps") c.steps = next();
    else if (a == "--tf32") c.tf32 = true;
  }
  return c;
}

int fail(const std::string& what) {
  std::printf("{\"error\": \"%s\"}\n", what.c_str());
  return 1;
}

// GPU milliseconds of `body` on the context's compute stream.
template <typename Body>
Result time_gpu(Context& ctx, Body body, float* ms) {
  cudaEvent_t a, b;
  DVEMB_CUDA_CHECK(cudaEventCreate(&a), "timing");
  DVEMB_CUDA_CHECK(cudaEventCreate(&b), "timing");
  cudaEventRecord(a, ctx.compute);
  Result r = body();
  cudaEventRecord(b, ctx.compute);
  cudaEventSynchronize(b);
  cudaEventElapsedTime(ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const Config cfg = parse(argc, argv);
  const DeviceInfo& device = device_info();
  if (!device.usable) return fail("no GPU: " + device.reason);
  const int64_t dim = int64_t{cfg.blocks} * cfg.k, k = cfg.k, b = cfg.batch;
  const int64_t steps = cfg.steps, rows_total = steps * b;
  const double flops_per_step = 4.0 * b * cfg.blocks * double(k) * k;

  // Host data as a recorded trajectory would give it.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  std::vector<float> rows(rows_total * dim);
  for (auto& x : rows) x = u(rng);
  std::vector<int32_t> blocks, step_rows(steps + 1);
  for (int i = 0; i < cfg.blocks; ++i) {
    blocks.push_back(i * cfg.k);
    blocks.push_back(cfg.k);
  }
  for (int64_t s = 0; s <= steps; ++s) step_rows[s] = static_cast<int32_t>(s * b);
  std::vector<double> weights(rows_total, 1.0 / b), lr(steps, 0.01), decay(steps, 1.0);
  std::vector<float> embeddings(rows_total * dim);
  auto identity = [&] {
    std::vector<float> p(int64_t{cfg.blocks} * k * k, 0.0f);
    for (int i = 0; i < cfg.blocks; ++i)
      for (int64_t j = 0; j < k; ++j) p[i * k * k + j * k + j] = 1;
    return p;
  };
  std::vector<float> p = identity();
  PropagateJob job;
  job.dim = dim;
  job.blocks = blocks.data();
  job.block_count = cfg.blocks;
  job.propagators32 = p.data();
  job.steps = steps;
  job.rows = rows.data();
  job.step_rows = step_rows.data();
  job.weights = weights.data();
  job.lr = lr.data();
  job.decay = decay.data();
  job.embeddings = embeddings.data();

  // Warm-up (context, cuBLAS heuristics, pinned buffers), then the measured call.
  Options options;
  options.tf32 = cfg.tf32;
  int64_t bad = 0;
  {
    PropagateJob warm = job;
    warm.steps = std::min<int64_t>(steps, 50);
    if (Result r = propagate(warm, options, &bad); !r.ok()) return fail(r.message);
  }
  p = identity();
  Timings timings;
  options.timings = &timings;
  if (Result r = propagate(job, options, &bad); !r.ok()) return fail(r.message);

  // The same GEMMs alone, on device-resident data.
  Lease ctx;
  if (Result r = ctx.acquire(); !r.ok()) return fail(r.message);
  blas_set_tf32(ctx->blas, cfg.tf32);
  const int64_t pool = std::min<int64_t>(steps, 64);  // distinct steps of rows on the device
  float *d_rows = nullptr, *d_e = nullptr, *d_p = nullptr;
  if (cudaMalloc(&d_rows, pool * b * dim * sizeof(float)) != cudaSuccess ||
      cudaMalloc(&d_e, b * dim * sizeof(float)) != cudaSuccess ||
      cudaMalloc(&d_p, p.size() * sizeof(float)) != cudaSuccess) {
    return fail("out of device memory for the GEMM peer");
  }
  cudaMemcpy(d_rows, rows.data(), pool * b * dim * sizeof(float), cudaMemcpyHostToDevice);
  const std::vector<float> eye = identity();
  cudaMemcpy(d_p, eye.data(), eye.size() * sizeof(float), cudaMemcpyHostToDevice);
  const int ik = static_cast<int>(k), ib = static_cast<int>(b), idim = static_cast<int>(dim);
  auto strided = [&]() -> Result {
    for (int64_t s = 0; s < steps; ++s) {
      const float* g = d_rows + (s % pool) * b * dim;
      DVEMB_TRY(gemm_strided(ctx->blas, Op::N, Op::T, ib, ik, ik, 1.0f, g, idim, k, d_p, ik,
                             k * k, 0.0f, d_e, idim, k, cfg.blocks));
      DVEMB_TRY(gemm_strided(ctx->blas, Op::T, Op::N, ik, ik, ib, -1e-4f, d_e, idim, k, g, idim,
                             k, 1.0f, d_p, ik, k * k, cfg.blocks));
    }
    return {};
  };
  auto loop = [&]() -> Result {
    for (int64_t s = 0; s < steps; ++s) {
      const float* g = d_rows + (s % pool) * b * dim;
      for (int i = 0; i < cfg.blocks; ++i) {
        DVEMB_TRY(gemm(ctx->blas, Op::N, Op::T, ib, ik, ik, 1.0f, g + i * k, idim, d_p + i * k * k,
                       ik, 0.0f, d_e + i * k, idim));
        DVEMB_TRY(gemm(ctx->blas, Op::T, Op::N, ik, ik, ib, -1e-4f, d_e + i * k, idim, g + i * k,
                       idim, 1.0f, d_p + i * k * k, ik));
      }
    }
    return {};
  };
  float ms_strided = 0, ms_loop = 0, ms_warm = 0;
  time_gpu(*ctx, strided, &ms_warm);
  if (Result r = time_gpu(*ctx, strided, &ms_strided); !r.ok()) return fail(r.message);
  if (Result r = time_gpu(*ctx, loop, &ms_loop); !r.ok()) return fail(r.message);
  blas_set_tf32(ctx->blas, false);
  cudaFree(d_rows);
  cudaFree(d_e);
  cudaFree(d_p);

  auto rate = [&](double ms) { return ms > 0 ? steps / (ms / 1000) : 0.0; };
  auto gflops = [&](double ms) {
    return ms > 0 ? flops_per_step * steps / (ms / 1000) / 1e9 : 0.0;
  };
  std::printf(
      "{\n"
      "  \"device\": \"%s\",\n"
      "  \"shape\": {\"blocks\": %d, \"k\": %d, \"batch\": %d, \"steps\": %lld, \"tf32\": %s},\n"
      "  \"flopsPerStep\": %.0f,\n"
      "  \"propagate\": {\"wallMs\": %.3f, \"computeMs\": %.3f, \"uploadMs\": %.3f, "
      "\"downloadMs\": %.3f, \"hostCopyMs\": %.3f, \"chunks\": %lld,\n"
      "                \"stepsPerSecWall\": %.1f, \"stepsPerSecCompute\": %.1f, "
      "\"gflopsCompute\": %.1f, \"badStep\": %lld},\n"
      "  \"cublasStrided\": {\"ms\": %.3f, \"stepsPerSec\": %.1f, \"gflops\": %.1f},\n"
      "  \"cublasLoop\": {\"ms\": %.3f, \"stepsPerSec\": %.1f, \"gflops\": %.1f},\n"
      "  \"ratioComputeVsStrided\": %.3f,\n"
      "  \"ratioWallVsStrided\": %.3f\n"
      "}\n",
      device.describe().c_str(), cfg.blocks, cfg.k, cfg.batch, static_cast<long long>(steps),
      cfg.tf32 ? "true" : "false", flops_per_step, timings.wall_ms, timings.compute_ms,
      timings.upload_ms, timings.download_ms, timings.host_copy_ms,
      static_cast<long long>(timings.chunks), rate(timings.wall_ms), rate(timings.compute_ms),
      gflops(timings.compute_ms), static_cast<long long>(bad), ms_strided, rate(ms_strided),
      gflops(ms_strided), ms_loop, rate(ms_loop), gflops(ms_loop),
      ms_strided > 0 ? (ms_strided / timings.compute_ms) : 0.0,
      ms_strided > 0 ? (ms_strided / timings.wall_ms) : 0.0);
  return 0;
}
