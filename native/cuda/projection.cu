// Random projections on the GPU (REFERENCE §4): projection matrices generated on the device
// from the same counter-based formula as the CPU, the Kronecker-factored projection of linear
// layers and the dense projection in column tiles. Same results as native/core/projection.cc up
// to the order of float32 sums.
#include <algorithm>

#include "backend.h"
#include "philox.cuh"
#include "runtime.cuh"

namespace dvemb::cuda {

namespace {

// Device scratch of one batch of examples, in floats (1 GiB): batches are cut to fit.
constexpr int64_t kScratchFloats = int64_t{1} << 28;

__global__ void fill_kernel(TileParams p, int64_t rows, int64_t cols, float* out, int64_t ld) {
  const int64_t count = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    out[r * ld + c] = tile_entry(p, r, c);
  }
}

// x[r, i] += R_in[i, d_in] for every row r: the bias column of Ã is all ones.
__global__ void add_bias_kernel(float* x, int64_t rows, int64_t k_in, const float* r_in,
                                int64_t ld_in, int64_t d_in) {
  const int64_t count = rows * k_in;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += r_in[(i % k_in) * ld_in + d_in];
  }
}

// The largest batch of examples, each needing `per_example` floats, that fits the scratch.
int64_t batch_for(int64_t n, int64_t per_example, int64_t scratch_floats) {
  return std::max<int64_t>(1, std::min(n, scratch_floats / std::max<int64_t>(1, per_example)));
}

// Copies `count` result rows of `width` floats into out (ld_out apart, from column offset).
Result download_rows(const float* from, int64_t count, int64_t width, float* out, int64_t ld_out,
                     cudaStream_t stream) {
  DVEMB_CUDA_CHECK(cudaMemcpy2DAsync(out, ld_out * sizeof(float), from, width * sizeof(float),
                                     width * sizeof(float), count, cudaMemcpyDeviceToHost, stream),
                   "copying projections to the host");
  return {};
}

Result kronecker_batches(Context& ctx, const KroneckerJob& job, int64_t scratch_floats) {
  const cudaStream_t stream = ctx.compute;
  const int64_t d_in_b = job.d_in + (job.bias ? 1 : 0);
  const int64_t k_in = job.k_in, k_out = job.k_out, kk = k_in * k_out;
  const float* R_in = nullptr;
  const float* R_out = nullptr;
  ctx.factors.begin_call();  // R_in stays while R_out is fetched
  DVEMB_TRY(ctx.factors.get({job.seed, job.block, kFactorIn, job.distribution}, k_in, d_in_b,
                            stream, &R_in));
  DVEMB_TRY(ctx.factors.get({job.seed, job.block, kFactorOut, job.distribution}, k_out,
                            job.d_out, stream, &R_out));
  const int ld_in = static_cast<int>(d_in_b);

  if (job.form == KroneckerJob::Form::Gradient) {
    // out_e = R_out (∇W_e R_inᵀ): the first product for the whole batch, the second batched.
    const int64_t d_out = job.d_out;
    const int64_t batch = batch_for(job.n, d_out * d_in_b + d_out * k_in + kk, scratch_floats);
    Layout layout;
    const size_t o_in = layout.add<float>(batch * d_out * d_in_b);
    const size_t o_t = layout.add<float>(batch * d_out * k_in);
    const size_t o_out = layout.add<float>(batch * kk);
    DVEMB_TRY(ctx.device[0].reserve(layout.bytes(), "allocating Kronecker scratch"));
    float* in = Layout::at<float>(ctx.device[0].data(), o_in);
    float* t = Layout::at<float>(ctx.device[0].data(), o_t);
    float* out = Layout::at<float>(ctx.device[0].data(), o_out);
    for (int64_t e0 = 0; e0 < job.n; e0 += batch) {
      const int64_t count = std::min(batch, job.n - e0);
      DVEMB_CUDA_CHECK(cudaMemcpyAsync(in, job.inputs + e0 * d_out * d_in_b,
                                       count * d_out * d_in_b * sizeof(float),
                                       cudaMemcpyHostToDevice, stream),
                       "copying gradients to the device");
      DVEMB_TRY(gemm(ctx.blas, Op::N, Op::T, static_cast<int>(count * d_out),
                     static_cast<int>(k_in), ld_in, 1.0f, in, ld_in, R_in, ld_in, 0.0f, t,
                     static_cast<int>(k_in)));
      DVEMB_TRY(gemm_strided(ctx.blas, Op::N, Op::N, static_cast<int>(k_out),
                             static_cast<int>(k_in), static_cast<int>(d_out), 1.0f, R_out,
                             static_cast<int>(d_out), 0, t, static_cast<int>(k_in), d_out * k_in,
                             0.0f, out, static_cast<int>(k_in), kk, static_cast<int>(count)));
      DVEMB_TRY(download_rows(out, count, kk, job.out + e0 * job.ld_out + job.offset, job.ld_out,
                              stream));
    }
    return {};
  }

  // Factors: X = Ã R_inᵀ and Y = Δ R_outᵀ for every token of the batch, then, batched over
  // examples, out_e = Y_eᵀ X_e = Σ_τ (R_out δ_τ)(R_in ã_τ)ᵀ.
  const int64_t tokens = job.tokens;
  const int64_t batch = batch_for(
      job.n, tokens * (job.d_in + job.d_out + k_in + k_out) + kk, scratch_floats);
  Layout layout;
  const size_t o_a = layout.add<float>(batch * tokens * job.d_in);
  const size_t o_d = layout.add<float>(batch * tokens * job.d_out);
  const size_t o_x = layout.add<float>(batch * tokens * k_in);
  const size_t o_y = layout.add<float>(batch * tokens * k_out);
  const size_t o_out = layout.add<float>(batch * kk);
  DVEMB_TRY(ctx.device[0].reserve(layout.bytes(), "allocating Kronecker scratch"));
  void* base = ctx.device[0].data();
  float* a = Layout::at<float>(base, o_a);
  float* d = Layout::at<float>(base, o_d);
  float* x = Layout::at<float>(base, o_x);
  float* y = Layout::at<float>(base, o_y);
  float* out = Layout::at<float>(base, o_out);
  for (int64_t e0 = 0; e0 < job.n; e0 += batch) {
    const int64_t count = std::min(batch, job.n - e0);
    const int rows = static_cast<int>(count * tokens);
    DVEMB_CUDA_CHECK(cudaMemcpyAsync(a, job.inputs + e0 * tokens * job.d_in,
                                     rows * job.d_in * sizeof(float), cudaMemcpyHostToDevice,
                                     stream),
                     "copying layer inputs to the device");
    DVEMB_CUDA_CHECK(cudaMemcpyAsync(d, job.output_grads + e0 * tokens * job.d_out,
                                     rows * job.d_out * sizeof(float), cudaMemcpyHostToDevice,
                                     stream),
                     "copying output gradients to the device");
    DVEMB_TRY(gemm(ctx.blas, Op::N, Op::T, rows, static_cast<int>(k_in),
                   static_cast<int>(job.d_in), 1.0f, a, static_cast<int>(job.d_in), R_in, ld_in,
                   0.0f, x, static_cast<int>(k_in)));
    if (job.bias) {
      add_bias_kernel<<<grid_for(rows * k_in), kThreads, 0, stream>>>(x, rows, k_in, R_in,
                                                                       d_in_b, job.d_in);
      DVEMB_CUDA_CHECK(cudaGetLastError(), "adding the bias column");
    }
    DVEMB_TRY(gemm(ctx.blas, Op::N, Op::T, rows, static_cast<int>(k_out),
                   static_cast<int>(job.d_out), 1.0f, d, static_cast<int>(job.d_out), R_out,
                   static_cast<int>(job.d_out), 0.0f, y, static_cast<int>(k_out)));
    DVEMB_TRY(gemm_strided(ctx.blas, Op::T, Op::N, static_cast<int>(k_out),
                           static_cast<int>(k_in), static_cast<int>(tokens), 1.0f, y,
                           static_cast<int>(k_out), tokens * k_out, x, static_cast<int>(k_in),
                           tokens * k_in, 0.0f, out, static_cast<int>(k_in), kk,
                           static_cast<int>(count)));
    DVEMB_TRY(download_rows(out, count, kk, job.out + e0 * job.ld_out + job.offset, job.ld_out,
                            stream));
  }
  return {};
}

Result dense_tiles(Context& ctx, const DenseJob& job, int64_t scratch_floats) {
  const cudaStream_t stream = ctx.compute;
  // Tiles as wide as the scratch allows: R (k × w) and the gradients' columns (n × w).
  const int64_t width =
      std::max<int64_t>(1, std::min(job.d, (scratch_floats - job.n * job.k) / (job.k + job.n)));
  Layout layout;
  const size_t o_r = layout.add<float>(job.k * width);
  const size_t o_g = layout.add<float>(job.n * width);
  const size_t o_out = layout.add<float>(job.n * job.k);
  DVEMB_TRY(ctx.device[0].reserve(layout.bytes(), "allocating dense projection scratch"));
  void* base = ctx.device[0].data();
  float* tile = Layout::at<float>(base, o_r);
  float* grads = Layout::at<float>(base, o_g);
  float* out = Layout::at<float>(base, o_out);
  const ProjectionKey key{job.seed, job.block, kFactorDense, job.distribution};
  // out (n × k) += grads[:, c0 : c0 + w] · R[:, c0 : c0 + w]ᵀ, tile by tile.
  for (int64_t c0 = 0; c0 < job.d; c0 += width) {
    const int64_t w = std::min(width, job.d - c0);
    DVEMB_TRY(fill_projection_device(key, job.k, c0, w, tile, w, stream));
    DVEMB_CUDA_CHECK(cudaMemcpy2DAsync(grads, w * sizeof(float), job.grads + c0,
                                       job.d * sizeof(float), w * sizeof(float), job.n,
                                       cudaMemcpyHostToDevice, stream),
                     "copying gradients to the device");
    DVEMB_TRY(gemm(ctx.blas, Op::N, Op::T, static_cast<int>(job.n), static_cast<int>(job.k),
                   static_cast<int>(w), 1.0f, grads, static_cast<int>(w), tile,
                   static_cast<int>(w), c0 == 0 ? 0.0f : 1.0f, out, static_cast<int>(job.k)));
  }
  return download_rows(out, job.n, job.k, job.out + job.offset, job.ld_out, stream);
}

// Waits for the queued work: kernel errors surface here.
Result wait(Context& ctx) {
  DVEMB_CUDA_CHECK(cudaStreamSynchronize(ctx.compute), "projecting");
  return {};
}

// Runs `attempt` with the scratch budget halved after each out-of-memory failure, down to
// what a single example needs; then the failure is the caller's.
template <typename Attempt>
Result with_smaller_batches(Context& ctx, Attempt attempt) {
  for (int64_t floats = kScratchFloats;; floats /= 2) {
    Result r = attempt(floats);
    if (r.ok()) r = wait(ctx);
    if (r.status != Status::OutOfMemory || floats < (int64_t{1} << 16)) return r;
    ctx.release_scratch();
  }
}

}  // namespace

Result fill_projection_device(const ProjectionKey& key, int64_t rows, int64_t col_start,
                              int64_t cols, float* out, int64_t ld, cudaStream_t stream) {
  fill_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(tile_params(key, rows, col_start),
                                                             rows, cols, out, ld);
  DVEMB_CUDA_CHECK(cudaGetLastError(), "generating a projection matrix");
  return {};
}

Result projection_matrix(const ProjectionKey& key, int64_t rows, int64_t cols, float* out) {
  Lease ctx;
  DVEMB_TRY(ctx.acquire());
  const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
  DVEMB_TRY(ctx->device[0].reserve(bytes, "allocating a projection matrix"));
  float* matrix = static_cast<float*>(ctx->device[0].data());
  DVEMB_TRY(fill_projection_device(key, rows, 0, cols, matrix, cols, ctx->compute));
  DVEMB_CUDA_CHECK(cudaMemcpyAsync(out, matrix, bytes, cudaMemcpyDeviceToHost, ctx->compute),
                   "copying a projection matrix to the host");
  DVEMB_CUDA_CHECK(cudaStreamSynchronize(ctx->compute), "generating a projection matrix");
  return {};
}

Result project_kronecker(const KroneckerJob& job) {
  if (job.n == 0) return {};
  Lease ctx;
  DVEMB_TRY(ctx.acquire());
  return with_smaller_batches(*ctx, [&](int64_t floats) {
    return kronecker_batches(*ctx, job, floats);
  });
}

Result project_dense(const DenseJob& job) {
  if (job.n == 0) return {};
  Lease ctx;
  DVEMB_TRY(ctx.acquire());
  return with_smaller_batches(*ctx, [&](int64_t floats) {
    return dense_tiles(*ctx, job, floats);
  });
}

}  // namespace dvemb::cuda
