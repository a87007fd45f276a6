// Attribution scores on the GPU: out (n × m) = embeddings (n × dim) · tests (m × dim)ᵀ, the
// embeddings streamed through in chunks of rows: the GEMMs run on the compute stream while the
// next chunk goes up and the last one's scores come down on the copy stream.
#include <algorithm>

#include "backend.h"
#include "runtime.cuh"

namespace dvemb::cuda {

namespace {

constexpr size_t kChunkBytes = size_t{256} << 20;

Result score_chunks(Context& ctx, const ScoreJob& job, size_t chunk_bytes) {
  const int64_t n = job.n, m = job.m, dim = job.dim;
  const int64_t rows = std::max<int64_t>(
      1, std::min<int64_t>(n, chunk_bytes / (sizeof(float) * (dim + m))));
  const int64_t chunks = (n + rows - 1) / rows;
  Layout layout;
  const size_t o_tests = layout.add<float>(m * dim);
  size_t o_in[2], o_out[2];
  for (int p = 0; p < 2; ++p) {
    o_in[p] = layout.add<float>(rows * dim);
    o_out[p] = layout.add<float>(rows * m);
  }
  Layout staging;
  size_t s_in[2], s_out[2];
  for (int p = 0; p < 2; ++p) {
    s_in[p] = staging.add<float>(rows * dim);
    s_out[p] = staging.add<float>(rows * m);
  }
  DVEMB_TRY(ctx.device[0].reserve(layout.bytes(), "allocating scoring buffers"));
  DVEMB_TRY(ctx.pinned[0].reserve(staging.bytes(), "allocating pinned scoring buffers"));
  void* dev = ctx.device[0].data();
  void* host = ctx.pinned[0].data();
  const float* tests = Layout::at<float>(dev, o_tests);
  cudaEvent_t* uploaded = ctx.events;
  cudaEvent_t* computed = ctx.events + 2;
  cudaEvent_t* downloaded = ctx.events + 4;
  auto count_of = [&](int64_t j) { return std::min(rows, n - j * rows); };

  DVEMB_CUDA_CHECK(cudaMemcpy(Layout::at<float>(dev, o_tests), job.tests,
                              m * dim * sizeof(float), cudaMemcpyHostToDevice),
                   "copying test gradients to the device");
  // Chunk j's embeddings up on the copy stream, once chunk j − 2 no longer needs the buffers.
  auto upload = [&](int64_t j) -> Result {
    const int p = static_cast<int>(j % 2);
    DVEMB_CUDA_CHECK(cudaEventSynchronize(uploaded[p]), "scoring");  // pinned buffer free
    float* in_host = Layout::at<float>(host, s_in[p]);
    const size_t bytes = count_of(j) * dim * sizeof(float);
    copy_host(in_host, job.embeddings + j * rows * dim, bytes);
    DVEMB_CUDA_CHECK(cudaStreamWaitEvent(ctx.copy, computed[p], 0), "scoring");
    DVEMB_CUDA_CHECK(cudaMemcpyAsync(Layout::at<float>(dev, o_in[p]), in_host, bytes,
                                     cudaMemcpyHostToDevice, ctx.copy),
                     "copying embeddings to the device");
    DVEMB_CUDA_CHECK(cudaEventRecord(uploaded[p], ctx.copy), "scoring");
    return {};
  };
  // Chunk j's scores from pinned memory into the caller's array.
  auto finish = [&](int64_t j) -> Result {
    const int p = static_cast<int>(j % 2);
    DVEMB_CUDA_CHECK(cudaEventSynchronize(downloaded[p]), "scoring");
    copy_host(job.out + j * rows * m, Layout::at<float>(host, s_out[p]),
              count_of(j) * m * sizeof(float));
    return {};
  };

  // The GEMM of chunk j runs while chunk j + 1 goes up (queued on the copy stream before
  // chunk j's scores come down).
  DVEMB_TRY(upload(0));
  for (int64_t j = 0; j < chunks; ++j) {
    const int p = static_cast<int>(j % 2);
    const int64_t count = count_of(j);
    float* out_dev = Layout::at<float>(dev, o_out[p]);
    DVEMB_CUDA_CHECK(cudaStreamWaitEvent(ctx.compute, uploaded[p], 0), "scoring");
    DVEMB_TRY(gemm(ctx.blas, Op::N, Op::T, static_cast<int>(count), static_cast<int>(m),
                   static_cast<int>(dim), 1.0f, Layout::at<float>(dev, o_in[p]),
                   static_cast<int>(dim), tests, static_cast<int>(dim), 0.0f, out_dev,
                   static_cast<int>(m)));
    DVEMB_CUDA_CHECK(cudaEventRecord(computed[p], ctx.compute), "scoring");
    if (j + 1 < chunks) DVEMB_TRY(upload(j + 1));
    DVEMB_CUDA_CHECK(cudaStreamWaitEvent(ctx.copy, computed[p], 0), "scoring");
    DVEMB_CUDA_CHECK(cudaMemcpyAsync(Layout::at<float>(host, s_out[p]), out_dev,
                                     count * m * sizeof(float), cudaMemcpyDeviceToHost, ctx.copy),
                     "copying scores to the host");
    DVEMB_CUDA_CHECK(cudaEventRecord(downloaded[p], ctx.copy), "scoring");
    if (j > 0) DVEMB_TRY(finish(j - 1));
  }
  return finish(chunks - 1);
}

}  // namespace

Result score(const ScoreJob& job, const Options& options) {
  if (job.n == 0 || job.m == 0) return {};
  Lease ctx;
  DVEMB_TRY(ctx.acquire());
  Result r;
  for (size_t bytes = options.chunk_bytes ? options.chunk_bytes : kChunkBytes;; bytes /= 2) {
    r = score_chunks(*ctx, job, bytes);
    if (r.status != Status::OutOfMemory || bytes < (size_t{1} << 20)) break;
    ctx->release_scratch();
  }
  return r;
}

}  // namespace dvemb::cuda
