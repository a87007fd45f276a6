#include "projection.h"

#include <cmath>

#include "blas.h"
#include "philox.h"

namespace dvemb {

namespace {

// Below this many entries a matrix is generated on the calling thread alone.
constexpr int64_t kParallelEntries = int64_t{1} << 16;
// Scratch budget (floats) for the projected factors of one batch of examples.
constexpr int64_t kScratchFloats = int64_t{1} << 22;

// The whole (rows × cols) matrix of key, from the cache when there is one.
ProjectionCache::Matrix factor_matrix(const KroneckerJob& job, uint32_t factor, int64_t rows,
                                      int64_t cols) {
  const ProjectionKey key{job.seed, job.block, factor, job.distribution};
  if (job.cache) return job.cache->get(key, rows, cols, job.threads);
  std::shared_ptr<float[]> m(allocate<float>(rows * cols).release());
  if (m) fill_projection(key, rows, 0, cols, m.get(), cols, job.threads);
  return m;
}

}  // namespace

void fill_projection(const ProjectionKey& key, int64_t rows, int64_t col_start, int64_t cols,
                     float* out, int64_t ld, int threads) {
  const uint32_t k0 = static_cast<uint32_t>(key.seed);
  const uint32_t k1 = static_cast<uint32_t>(key.seed >> 32);
  const bool gaussian = key.distribution == Distribution::Gaussian;
  // Exactly the TS twin's 1 / Math.sqrt(rows).
  const double scale = 1.0 / std::sqrt(static_cast<double>(rows));
  const int workers = rows * cols >= kParallelEntries ? threads : 1;
  parallel_for(rows, workers, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      float* row = out + r * ld;
      for (int64_t c = 0; c < cols; ++c) {
        row[c] = projection_entry(k0, k1, key.block, key.factor, gaussian, scale,
                                  static_cast<uint32_t>(r), static_cast<uint32_t>(col_start + c));
      }
    }
  });
}

ProjectionCache::Matrix ProjectionCache::get(const ProjectionKey& key, int64_t rows,
                                             int64_t cols, int threads) {
  const Id id{key.seed, key.block, key.factor, static_cast<int>(key.distribution), rows, cols};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      it->second.last_use = ++clock_;
      return it->second.matrix;
    }
  }
  // Generated outside the lock so other keys are not held up; two threads missing the same
  // key at once both generate it, which is harmless.
  std::shared_ptr<float[]> m(allocate<float>(rows * cols).release());
  if (!m) return nullptr;
  fill_projection(key, rows, 0, cols, m.get(), cols, threads);
  const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
  if (bytes > max_bytes_) return m;

  std::lock_guard<std::mutex> lock(mutex_);
  if (entries_.count(id)) return m;
  while (bytes_ + bytes > max_bytes_ && !entries_.empty()) {
    auto oldest = entries_.begin();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    }
    bytes_ -= oldest->second.bytes;
    entries_.erase(oldest);
  }
  entries_[id] = Entry{m, bytes, ++clock_};
  bytes_ += bytes;
  return m;
}

Error project_kronecker(const KroneckerJob& job) {
  if (job.n == 0) return {};
  const int64_t d_in_b = job.d_in + (job.bias ? 1 : 0);
  const int64_t k_in = job.k_in, k_out = job.k_out;
  const auto r_in = factor_matrix(job, kFactorIn, k_in, d_in_b);
  const auto r_out = factor_matrix(job, kFactorOut, k_out, job.d_out);
  if (!r_in || !r_out) {
    return out_of_memory("projection factors",
                         sizeof(float) * static_cast<size_t>(k_in * d_in_b + k_out * job.d_out));
  }
  const float* R_in = r_in.get();
  const float* R_out = r_out.get();
  const int ld_in = static_cast<int>(d_in_b);

  if (job.form == KroneckerJob::Form::Gradient) {
    // out_e = R_out (∇W_e R_inᵀ): the first product for a whole batch of examples at once.
    const int64_t d_out = job.d_out;
    const int64_t batch = std::max<int64_t>(1, kScratchFloats / (d_out * k_in));
    auto t = allocate<float>(std::min(batch, job.n) * d_out * k_in);
    if (!t) return out_of_memory("projected gradients", sizeof(float) * batch * d_out * k_in);
    for (int64_t e0 = 0; e0 < job.n; e0 += batch) {
      const int64_t count = std::min(batch, job.n - e0);
      gemm(CblasNoTrans, CblasTrans, static_cast<int>(count * d_out), static_cast<int>(k_in),
           ld_in, 1.0f, job.inputs + e0 * d_out * d_in_b, ld_in, R_in, ld_in, 0.0f, t.get(),
           static_cast<int>(k_in));
      for (int64_t e = 0; e < count; ++e) {
        gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(k_out), static_cast<int>(k_in),
             static_cast<int>(d_out), 1.0f, R_out, static_cast<int>(d_out),
             t.get() + e * d_out * k_in, static_cast<int>(k_in), 0.0f,
             job.out + (e0 + e) * job.ld_out + job.offset, static_cast<int>(k_in));
      }
    }
    return {};
  }

  // Factors: X = Ã R_inᵀ and Y = Δ R_outᵀ for every token of a batch of examples, then
  // out_e = Y_eᵀ X_e = Σ_τ (R_out δ_τ)(R_in ã_τ)ᵀ. The bias column of Ã is all ones, so it
  // adds R_in's last column to every row of X.
  const int64_t tokens = job.tokens;
  const int64_t batch = std::max<int64_t>(1, kScratchFloats / (tokens * (k_in + k_out)));
  const int64_t batch_rows = std::min(batch, job.n) * tokens;
  auto x = allocate<float>(batch_rows * k_in);
  auto y = allocate<float>(batch_rows * k_out);
  if (!x || !y) {
    return out_of_memory("projected factors", sizeof(float) * batch_rows * (k_in + k_out));
  }
  for (int64_t e0 = 0; e0 < job.n; e0 += batch) {
    const int64_t count = std::min(batch, job.n - e0);
    const int rows = static_cast<int>(count * tokens);
    gemm(CblasNoTrans, CblasTrans, rows, static_cast<int>(k_in), static_cast<int>(job.d_in),
         1.0f, job.inputs + e0 * tokens * job.d_in, static_cast<int>(job.d_in), R_in, ld_in,
         0.0f, x.get(), static_cast<int>(k_in));
    if (job.bias) {
      for (int64_t r = 0; r < rows; ++r) {
        float* xr = x.get() + r * k_in;
        for (int64_t i = 0; i < k_in; ++i) xr[i] += R_in[i * d_in_b + job.d_in];
      }
    }
    gemm(CblasNoTrans, CblasTrans, rows, static_cast<int>(k_out), static_cast<int>(job.d_out),
         1.0f, job.output_grads + e0 * tokens * job.d_out, static_cast<int>(job.d_out), R_out,
         static_cast<int>(job.d_out), 0.0f, y.get(), static_cast<int>(k_out));
    for (int64_t e = 0; e < count; ++e) {
      gemm(CblasTrans, CblasNoTrans, static_cast<int>(k_out), static_cast<int>(k_in),
           static_cast<int>(tokens), 1.0f, y.get() + e * tokens * k_out, static_cast<int>(k_out),
           x.get() + e * tokens * k_in, static_cast<int>(k_in), 0.0f,
           job.out + (e0 + e) * job.ld_out + job.offset, static_cast<int>(k_in));
    }
  }
  return {};
}

Error project_dense(const DenseJob& job) {
  if (job.n == 0) return {};
  const int64_t width = std::min(kDenseTileColumns, job.d);
  auto tile = allocate<float>(job.k * width);
  if (!tile) return out_of_memory("a projection tile", sizeof(float) * job.k * width);
  const ProjectionKey key{job.seed, job.block, kFactorDense, job.distribution};
  // out (n × k, ld_out) += grads[:, c0 : c0 + w] · R[:, c0 : c0 + w]ᵀ, tile by tile.
  for (int64_t c0 = 0; c0 < job.d; c0 += width) {
    const int64_t w = std::min(width, job.d - c0);
    fill_projection(key, job.k, c0, w, tile.get(), w, job.threads);
    gemm(CblasNoTrans, CblasTrans, static_cast<int>(job.n), static_cast<int>(job.k),
         static_cast<int>(w), 1.0f, job.grads + c0, static_cast<int>(job.d), tile.get(),
         static_cast<int>(w), c0 == 0 ? 0.0f : 1.0f, job.out + job.offset,
         static_cast<int>(job.ld_out));
  }
  return {};
}

}  // namespace dvemb
