// The backward recursion on the GPU (REFERENCE §3; surface.ts PropagateArgs), the twin of
// native/core/propagator.cc. Per step, for every block b at once:
//   E = diag(η w) G Pᵀ            one batched GEMM, then a kernel scales the rows and flags NaN/Inf
//   F = C Pᵀ, scaled by η w_C     (curvature rows only: one more batched GEMM)
//   P ← c P − Eᵀ G  (or Fᵀ C)      one batched GEMM
// "Batched" is one strided-batched cuBLAS call when the blocks share k at evenly spaced
// offsets, else one pointer-array (grouped) batched call.
//
// The steps stream through in chunks: while chunk j computes on one stream, chunk j+1's rows go
// up and chunk j−1's embeddings come down on the other, through pinned buffers. The NaN/Inf flag
// is read once per chunk; when it is set the call is walked again from its start, checking after
// every step, so that the step reported is exactly the CPU core's (P on the host is written only
// at the end, so the start is still there).
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "backend.h"
#include "plan.h"
#include "runtime.cuh"

namespace dvemb::cuda {

namespace {

// Per chunk: flags[0] is the largest (first walked) step whose E held a NaN/Inf, −1 if none,
// and flags[1] the smallest block index with one at that step.
constexpr int kFlags = 2;

// Rows (ld = dim) restricted to the blocks' columns (cols lists them, width in all): row i is
// scaled by (T)(η w[i]) as the CPU does. With `out` (fp64) the result is also rounded to float
// there. With `flags`, a non-finite (float) result marks the step and its block.
template <typename T>
__global__ void scale_rows_kernel(T* rows, float* out, int64_t count, int64_t dim,
                                  const int* cols, const int* col_block, int64_t width,
                                  const double* w, double eta, int* flags, int step) {
  const int64_t total = count * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / width, j = i - r * width;
    const int64_t at = r * dim + cols[j];
    const T a = static_cast<T>(eta * w[r]);
    const T v = rows[at] * a;
    rows[at] = v;
    const float f = static_cast<float>(v);
    if (out) out[at] = f;
    if (flags && !isfinite(f)) {
      atomicMax(&flags[0], step);
      atomicMin(&flags[1], col_block[j]);
    }
  }
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t count, T a) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] *= a;
  }
}

template <typename T>
__global__ void widen_kernel(const float* from, T* to, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    to[i] = from[i];
  }
}

template <typename T>
__global__ void check_finite_kernel(const T* x, int64_t count, int* flag) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (!isfinite(x[i])) *flag = 1;
  }
}

__global__ void reset_flags_kernel(int* flags) {
  flags[0] = -1;
  flags[1] = INT_MAX;
}

double milliseconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// GPU time of the parts of a call (timing events on the streams) and host time of its copies,
// for Options::timings; does nothing without it.
class Profile {
 public:
  enum Part { kCompute, kUpload, kDownload, kParts };

  explicit Profile(Timings* out) : out_(out) {}
  Profile(const Profile&) = delete;
  Profile& operator=(const Profile&) = delete;
  ~Profile() {
    for (auto& spans : spans_) {
      for (auto& [a, b] : spans) {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
      }
    }
    for (cudaEvent_t e : open_) {
      if (e) cudaEventDestroy(e);
    }
  }

  void begin(Part part, cudaStream_t stream) {
    if (out_ && !open_[part]) open_[part] = record(stream);
  }
  void end(Part part, cudaStream_t stream) {
    if (!out_ || !open_[part]) return;
    if (cudaEvent_t e = record(stream)) spans_[part].push_back({open_[part], e});
    open_[part] = nullptr;
  }
  template <typename F>
  void host(F copy) {
    const auto t0 = std::chrono::steady_clock::now();
    copy();
    if (out_) out_->host_copy_ms += milliseconds_since(t0);
  }
  // After the call's work is done.
  void finish(double wall_ms, int64_t chunks) {
    if (!out_) return;
    double* fields[kParts] = {&out_->compute_ms, &out_->upload_ms, &out_->download_ms};
    for (int p = 0; p < kParts; ++p) {
      for (auto& [a, b] : spans_[p]) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, a, b) == cudaSuccess) *fields[p] += ms;
      }
    }
    cudaGetLastError();
    out_->wall_ms += wall_ms;
    out_->chunks += chunks;
  }

 private:
  static cudaEvent_t record(cudaStream_t stream) {
    cudaEvent_t e = nullptr;
    if (cudaEventCreate(&e) != cudaSuccess) return nullptr;
    cudaEventRecord(e, stream);
    return e;
  }

  Timings* out_;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> spans_[kParts];
  cudaEvent_t open_[kParts] = {};
};

// Pointer-array slots per step: the step's rows G, its E, its curvature rows C, its F.
enum Kind { kG = 0, kE = 1, kC = 2, kF = 3 };

template <typename T>
class Walk {
 public:
  Walk(Context& ctx, const PropagateJob& job, T* host_p, Profile& profile)
      : ctx_(ctx),
        job_(job),
        host_p_(host_p),
        profile_(profile),
        layout_(plan_blocks(job.blocks, job.block_count)) {
    kinds_ = job.curvature ? 4 : 2;
    covers_all_ = layout_.width == job.dim;
  }

  // One attempt at a chunk budget; OutOfMemory (before anything was written) lets the caller
  // try a smaller one.
  Result run(uint64_t budget, int64_t* bad_step) {
    *bad_step = -1;
    DVEMB_TRY(allocate(budget));
    bool stopped = false;
    Result r = walk(false, bad_step, &stopped);
    if (r.status == Status::Ok && retry_exact_) {
      // A NaN/Inf somewhere: walk again, checking every step.
      retry_exact_ = false;
      r = walk(true, bad_step, &stopped);
    }
    DVEMB_TRY(r);
    if (!stopped) {
      // A P that went non-finite with no later rows to show it is reported as step 0.
      bool bad = false;
      DVEMB_TRY(check_finite(p_, layout_.p_size, &bad));
      if (bad) *bad_step = 0;
    }
    DVEMB_CUDA_CHECK(cudaMemcpy(host_p_, p_, layout_.p_size * sizeof(T), cudaMemcpyDeviceToHost),
                     "copying the propagators to the host");
    return {};
  }

  int64_t chunk_count() const { return static_cast<int64_t>(chunks_.size()); }

  // Bytes of one step's largest chunk when every chunk holds one step: below that budget,
  // halving it further changes nothing.
  uint64_t smallest_budget() const {
    uint64_t most = 0;
    for (const Chunk& c : plan_chunks(job_, cost(), 0)) {
      most = std::max(most, chunk_bytes(c, cost()));
    }
    return most;
  }

 private:
  // Device pointers of one chunk's buffers (and their pinned twins).
  struct Buffers {
    // Uploaded: the in-region, laid out alike on the host (pinned) and the device.
    float* rows;
    double* w;
    float* curv;
    double* cw;
    T** ptrs;
    float* emb;  // in the in-region only when the blocks leave columns untouched
    void* in_dev;
    // Device only.
    T* rows_t;  // rows as T (fp32: the rows themselves)
    T* e;       // E as T (fp32: the embeddings themselves)
    T* curv_t;
    T* f;
    int* flags;
    // Host (pinned) twins.
    void* in_host;
    float* emb_host;
    int* flags_host;
    // Offsets in the in-region.
    size_t o_rows, o_w, o_curv, o_cw, o_ptrs, o_emb;
  };

  static constexpr bool kFp64 = std::is_same<T, double>::value;

  ChunkCost cost() const {
    const uint64_t dim = job_.dim;
    ChunkCost c;
    c.row = dim * sizeof(float) * 2 + sizeof(double) + (kFp64 ? dim * sizeof(double) * 2 : 0);
    c.curvature_row = dim * sizeof(float) + sizeof(double) + dim * sizeof(T) +
                      (kFp64 ? dim * sizeof(double) : 0);
    c.step = layout_.strided ? 0 : kinds_ * layout_.blocks.size() * sizeof(T*);
    return c;
  }

  Result allocate(uint64_t budget) {
    chunks_ = plan_chunks(job_, cost(), budget);
    int64_t rows = 0, curv = 0, steps = 0;
    for (const Chunk& c : chunks_) {
      rows = std::max(rows, c.row_end - c.row_begin);
      curv = std::max(curv, c.curv_end - c.curv_begin);
      steps = std::max(steps, c.end - c.first);
    }
    const int64_t dim = job_.dim, width = layout_.width;
    const int64_t slots = layout_.strided ? 0 : static_cast<int64_t>(layout_.blocks.size());

    // Call-wide: P, the P pointer array, the column maps.
    Layout call;
    const size_t o_p = call.add<T>(layout_.p_size);
    const size_t o_pp = call.add<T*>(slots);
    const size_t o_cols = call.add<int>(width);
    const size_t o_cb = call.add<int>(width);
    const size_t o_pf = call.add<int>(1);
    DVEMB_TRY(ctx_.device[0].reserve(call.bytes(), "allocating the propagators"));
    void* base = ctx_.device[0].data();
    p_ = Layout::at<T>(base, o_p);
    p_ptrs_ = Layout::at<T*>(base, o_pp);
    cols_ = Layout::at<int>(base, o_cols);
    col_block_ = Layout::at<int>(base, o_cb);
    p_flag_ = Layout::at<int>(base, o_pf);

    // Per chunk, twice: the uploaded in-region, then the device-only part.
    for (int p = 0; p < 2; ++p) {
      Buffers& b = buffers_[p];
      Layout in;
      b.o_rows = in.add<float>(rows * dim);
      b.o_w = in.add<double>(rows);
      b.o_curv = in.add<float>(curv * dim);
      b.o_cw = in.add<double>(curv);
      b.o_ptrs = in.add<T*>(steps * kinds_ * slots);
      b.o_emb = in.add<float>(covers_all_ ? 0 : rows * dim);
      const size_t in_bytes = in.bytes();
      Layout dev = in;
      const size_t o_emb = covers_all_ ? dev.add<float>(rows * dim) : b.o_emb;
      const size_t o_rows_t = dev.add<T>(kFp64 ? rows * dim : 0);
      const size_t o_e = dev.add<T>(kFp64 ? rows * dim : 0);
      const size_t o_curv_t = dev.add<T>(kFp64 ? curv * dim : 0);
      const size_t o_f = dev.add<T>(curv * dim);
      const size_t o_flags = dev.add<int>(kFlags);
      Layout out;
      const size_t o_emb_host = out.add<float>(rows * dim);
      const size_t o_flags_host = out.add<int>(kFlags);
      const size_t o_probe = out.add<int>(kFlags);

      DVEMB_TRY(ctx_.device[1 + p].reserve(dev.bytes(), "allocating a chunk of rows"));
      DVEMB_TRY(ctx_.pinned[p].reserve(in_bytes, "allocating pinned memory for rows"));
      DVEMB_TRY(ctx_.pinned[2 + p].reserve(out.bytes(), "allocating pinned memory for embeddings"));
      void* d = ctx_.device[1 + p].data();
      b.rows = Layout::at<float>(d, b.o_rows);
      b.w = Layout::at<double>(d, b.o_w);
      b.curv = Layout::at<float>(d, b.o_curv);
      b.cw = Layout::at<double>(d, b.o_cw);
      b.ptrs = Layout::at<T*>(d, b.o_ptrs);
      b.emb = Layout::at<float>(d, o_emb);
      b.rows_t = kFp64 ? Layout::at<T>(d, o_rows_t) : reinterpret_cast<T*>(b.rows);
      b.e = kFp64 ? Layout::at<T>(d, o_e) : reinterpret_cast<T*>(b.emb);
      b.curv_t = kFp64 ? Layout::at<T>(d, o_curv_t) : reinterpret_cast<T*>(b.curv);
      b.f = Layout::at<T>(d, o_f);
      b.flags = Layout::at<int>(d, o_flags);
      b.in_dev = d;
      b.in_host = ctx_.pinned[p].data();
      b.emb_host = Layout::at<float>(ctx_.pinned[2 + p].data(), o_emb_host);
      b.flags_host = Layout::at<int>(ctx_.pinned[2 + p].data(), o_flags_host);
      // Exact mode reads the flags here, synchronously.
      if (p == 0) probe_ = Layout::at<int>(ctx_.pinned[2].data(), o_probe);
    }

    // The column maps and P's pointer array, once.
    std::vector<int> cols, col_block;
    for (size_t b = 0; b < layout_.blocks.size(); ++b) {
      for (int i = 0; i < layout_.blocks[b].k; ++i) {
        cols.push_back(static_cast<int>(layout_.blocks[b].off + i));
        col_block.push_back(static_cast<int>(b));
      }
    }
    std::vector<T*> p_ptrs;
    for (int64_t slot = 0; slot < slots; ++slot) {
      p_ptrs.push_back(p_ + layout_.blocks[layout_.order[slot]].p_offset);
    }
    DVEMB_CUDA_CHECK(cudaMemcpy(cols_, cols.data(), width * sizeof(int), cudaMemcpyHostToDevice),
                     "copying the block layout");
    DVEMB_CUDA_CHECK(cudaMemcpy(col_block_, col_block.data(), width * sizeof(int),
                                cudaMemcpyHostToDevice),
                     "copying the block layout");
    if (slots > 0) {
      DVEMB_CUDA_CHECK(cudaMemcpy(p_ptrs_, p_ptrs.data(), slots * sizeof(T*),
                                  cudaMemcpyHostToDevice),
                       "copying the block layout");
    }
    return {};
  }

  // The whole walk, in chunks. Exact: checks after every step and stops at the first bad one.
  Result walk(bool exact, int64_t* bad_step, bool* stopped) {
    *stopped = false;
    DVEMB_CUDA_CHECK(cudaMemcpy(p_, host_p_, layout_.p_size * sizeof(T), cudaMemcpyHostToDevice),
                     "copying the propagators to the device");
    const size_t count = chunks_.size();
    retry_exact_ = false;
    DVEMB_TRY(stage(0, 0));
    for (size_t j = 0; j < count; ++j) {
      const int p = static_cast<int>(j % 2);
      DVEMB_TRY(compute(j, p, exact, bad_step, stopped));
      if (*stopped) {
        if (j > 0) DVEMB_TRY(finish(j - 1, 1 - p));
        return finish_partial(j, p);
      }
      DVEMB_TRY(download(j, p));
      if (j + 1 < count) DVEMB_TRY(stage(j + 1, 1 - p));
      if (j > 0) {
        DVEMB_TRY(finish(j - 1, 1 - p));
        if (retry_exact_) return sync_all();
      }
    }
    DVEMB_TRY(finish(count - 1, static_cast<int>((count - 1) % 2)));
    return retry_exact_ ? sync_all() : Result{};
  }

  Result sync_all() {
    DVEMB_CUDA_CHECK(cudaStreamSynchronize(ctx_.compute), "propagating");
    DVEMB_CUDA_CHECK(cudaStreamSynchronize(ctx_.copy), "propagating");
    return {};
  }

  cudaEvent_t uploaded(int p) const { return ctx_.events[p]; }
  cudaEvent_t computed(int p) const { return ctx_.events[2 + p]; }
  cudaEvent_t downloaded(int p) const { return ctx_.events[4 + p]; }

  // Host side of chunk j: its inputs into pinned memory, then up on the copy stream.
  Result stage(size_t j, int p) {
    const Chunk& c = chunks_[j];
    Buffers& b = buffers_[p];
    const int64_t dim = job_.dim;
    const int64_t rows = c.row_end - c.row_begin, curv = c.curv_end - c.curv_begin;
    DVEMB_CUDA_CHECK(cudaEventSynchronize(uploaded(p)), "propagating");  // pinned buffer free
    char* host = static_cast<char*>(b.in_host);
    profile_.begin(Profile::kUpload, ctx_.copy);
    auto put = [&](size_t offset, const void* from, size_t bytes) -> Result {
      if (bytes == 0) return {};
      profile_.host([&] { copy_host(host + offset, from, bytes); });
      DVEMB_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(b.in_dev) + offset, host + offset,
                                       bytes, cudaMemcpyHostToDevice, ctx_.copy),
                       "copying rows to the device");
      return {};
    };
    DVEMB_TRY(put(b.o_rows, job_.rows + c.row_begin * dim, rows * dim * sizeof(float)));
    DVEMB_TRY(put(b.o_w, job_.weights + c.row_begin, rows * sizeof(double)));
    if (job_.curvature) {
      DVEMB_TRY(put(b.o_curv, job_.curvature + c.curv_begin * dim, curv * dim * sizeof(float)));
      DVEMB_TRY(put(b.o_cw, job_.curvature_weights + c.curv_begin, curv * sizeof(double)));
    }
    if (!covers_all_) {
      // Columns outside every block must come back as they were.
      DVEMB_TRY(put(b.o_emb, job_.embeddings + c.row_begin * dim, rows * dim * sizeof(float)));
    }
    if (!layout_.strided) {
      std::vector<T*> ptrs = pointers(c, b);
      DVEMB_TRY(put(b.o_ptrs, ptrs.data(), ptrs.size() * sizeof(T*)));
    }
    profile_.end(Profile::kUpload, ctx_.copy);
    DVEMB_CUDA_CHECK(cudaEventRecord(uploaded(p), ctx_.copy), "propagating");
    return {};
  }

  // Operand addresses of every step of a chunk for the pointer-array GEMMs, [step][kind][slot].
  std::vector<T*> pointers(const Chunk& c, const Buffers& b) const {
    const int64_t dim = job_.dim, slots = layout_.blocks.size();
    std::vector<T*> ptrs(static_cast<size_t>((c.end - c.first) * kinds_ * slots));
    for (int64_t s = c.first; s < c.end; ++s) {
      const int64_t r = (job_.step_rows[s] - c.row_begin) * dim;
      const int64_t q = job_.curvature ? (job_.step_curvature[s] - c.curv_begin) * dim : 0;
      T** at = ptrs.data() + (s - c.first) * kinds_ * slots;
      for (int64_t slot = 0; slot < slots; ++slot) {
        const int64_t off = layout_.blocks[layout_.order[slot]].off;
        at[kG * slots + slot] = b.rows_t + r + off;
        at[kE * slots + slot] = b.e + r + off;
        if (job_.curvature) {
          at[kC * slots + slot] = b.curv_t + q + off;
          at[kF * slots + slot] = b.f + q + off;
        }
      }
    }
    return ptrs;
  }

  Result compute(size_t j, int p, bool exact, int64_t* bad_step, bool* stopped) {
    const Chunk& c = chunks_[j];
    const Buffers& b = buffers_[p];
    const cudaStream_t stream = ctx_.compute;
    const int64_t dim = job_.dim;
    DVEMB_CUDA_CHECK(cudaStreamWaitEvent(stream, uploaded(p), 0), "propagating");
    profile_.begin(Profile::kCompute, stream);
    reset_flags_kernel<<<1, 1, 0, stream>>>(b.flags);
    if constexpr (kFp64) {
      const int64_t rows = (c.row_end - c.row_begin) * dim;
      const int64_t curv = (c.curv_end - c.curv_begin) * dim;
      widen_kernel<<<grid_for(rows), kThreads, 0, stream>>>(b.rows, b.rows_t, rows);
      if (curv > 0) widen_kernel<<<grid_for(curv), kThreads, 0, stream>>>(b.curv, b.curv_t, curv);
    }
    DVEMB_CUDA_CHECK(cudaGetLastError(), "preparing a chunk of rows");
    for (int64_t s = c.end - 1; s >= c.first; --s) {
      DVEMB_TRY(step(s, c, b, exact, bad_step, stopped));
      if (*stopped) return {};
    }
    profile_.end(Profile::kCompute, stream);
    DVEMB_CUDA_CHECK(cudaEventRecord(computed(p), stream), "propagating");
    return {};
  }

  // Step s on every block. In exact mode, stops (P left as after step s + 1) when E is bad.
  Result step(int64_t s, const Chunk& c, const Buffers& b, bool exact, int64_t* bad_step,
              bool* stopped) {
    const int64_t dim = job_.dim;
    const int64_t q = s - c.first;
    const double eta = job_.lr[s];
    const T decay = static_cast<T>(job_.decay[s]);
    const int m = job_.step_rows[s + 1] - job_.step_rows[s];
    const int64_t r = (job_.step_rows[s] - c.row_begin) * dim;
    if (m > 0) {
      DVEMB_TRY(times_p_transposed(m, b.rows_t + r, b.e + r, b, q, kG, kE));
      scale_rows_kernel<<<grid_for(m * layout_.width), kThreads, 0, ctx_.compute>>>(
          b.e + r, kFp64 ? b.emb + r : nullptr, m, dim, cols_, col_block_, layout_.width,
          b.w + (job_.step_rows[s] - c.row_begin), eta, b.flags, static_cast<int>(s));
      DVEMB_CUDA_CHECK(cudaGetLastError(), "scaling embeddings");
      if (exact) {
        DVEMB_TRY(read_ints(b.flags, probe_, kFlags));
        if (probe_[0] >= 0) {
          // As the CPU: the step before, when the first bad block's P already was non-finite.
          const auto& block = layout_.blocks[probe_[1]];
          bool p_was_bad = false;
          DVEMB_TRY(check_finite(p_ + block.p_offset, int64_t{block.k} * block.k, &p_was_bad));
          *bad_step = p_was_bad && s + 1 < job_.steps ? s + 1 : s;
          stop_step_ = s;
          *stopped = true;
          return {};
        }
      }
    }
    if (!job_.curvature) {
      if (m > 0) return update_p(m, b.e + r, b.rows_t + r, decay, b, q, kE, kG);
      return scale_p(decay);
    }
    const int mc = job_.step_curvature[s + 1] - job_.step_curvature[s];
    if (mc == 0) return scale_p(decay);
    const int64_t rc = (job_.step_curvature[s] - c.curv_begin) * dim;
    DVEMB_TRY(times_p_transposed(mc, b.curv_t + rc, b.f + rc, b, q, kC, kF));
    scale_rows_kernel<<<grid_for(mc * layout_.width), kThreads, 0, ctx_.compute>>>(
        b.f + rc, nullptr, mc, dim, cols_, col_block_, layout_.width,
        b.cw + (job_.step_curvature[s] - c.curv_begin), eta, nullptr, static_cast<int>(s));
    DVEMB_CUDA_CHECK(cudaGetLastError(), "scaling curvature products");
    return update_p(mc, b.f + rc, b.curv_t + rc, decay, b, q, kF, kC);
  }

  T** slot_pointers(const Buffers& b, int64_t q, Kind kind) const {
    const int64_t slots = layout_.blocks.size();
    return b.ptrs + (q * kinds_ + kind) * slots;
  }

  // Y_b = X_b P_bᵀ for every block (X, Y: m rows, ld dim; row-major gemm(N, T, m, k, k)).
  Result times_p_transposed(int m, const T* x, T* y, const Buffers& b, int64_t q, Kind kx,
                            Kind ky) {
    const int dim = static_cast<int>(job_.dim);
    if (layout_.strided) {
      const auto& first = layout_.blocks[0];
      const int k = first.k;
      return gemm_strided(ctx_.blas, Op::N, Op::T, m, k, k, T{1}, x + first.off, dim,
                          layout_.stride, p_, k, int64_t{k} * k, T{0}, y + first.off, dim,
                          layout_.stride, static_cast<int>(layout_.blocks.size()));
    }
    std::vector<GemmGroup> groups;
    for (const auto& g : layout_.groups) groups.push_back({m, g.k, g.k, dim, g.k, dim, g.count});
    return gemm_grouped(ctx_.blas, Op::N, Op::T, groups, T{1}, slot_pointers(b, q, kx), p_ptrs_,
                        T{0}, slot_pointers(b, q, ky));
  }

  // P_b ← c P_b − Y_bᵀ X_b for every block (row-major gemm(T, N, k, k, m)).
  Result update_p(int m, const T* y, const T* x, T decay, const Buffers& b, int64_t q, Kind ky,
                  Kind kx) {
    const int dim = static_cast<int>(job_.dim);
    if (layout_.strided) {
      const auto& first = layout_.blocks[0];
      const int k = first.k;
      return gemm_strided(ctx_.blas, Op::T, Op::N, k, k, m, T{-1}, y + first.off, dim,
                          layout_.stride, x + first.off, dim, layout_.stride, decay, p_, k,
                          int64_t{k} * k, static_cast<int>(layout_.blocks.size()));
    }
    std::vector<GemmGroup> groups;
    for (const auto& g : layout_.groups) groups.push_back({g.k, g.k, m, dim, dim, g.k, g.count});
    return gemm_grouped(ctx_.blas, Op::T, Op::N, groups, T{-1}, slot_pointers(b, q, ky),
                        slot_pointers(b, q, kx), decay, p_ptrs_);
  }

  // A step without rows: P ← c P.
  Result scale_p(T decay) {
    if (decay == T{1}) return {};
    scale_kernel<<<grid_for(layout_.p_size), kThreads, 0, ctx_.compute>>>(p_, layout_.p_size,
                                                                          decay);
    DVEMB_CUDA_CHECK(cudaGetLastError(), "scaling the propagators");
    return {};
  }

  // Whether x[0..count) holds a NaN/Inf (waits for the queued work).
  Result check_finite(const T* x, int64_t count, bool* bad) {
    DVEMB_CUDA_CHECK(cudaMemsetAsync(p_flag_, 0, sizeof(int), ctx_.compute), "checking P");
    check_finite_kernel<<<grid_for(count), kThreads, 0, ctx_.compute>>>(x, count, p_flag_);
    DVEMB_CUDA_CHECK(cudaGetLastError(), "checking P");
    int flag = 0;
    DVEMB_TRY(read_ints(p_flag_, &flag, 1));
    *bad = flag != 0;
    return {};
  }

  // Copies device ints to the host after the work queued on the compute stream.
  Result read_ints(const int* from, int* to, int count) {
    DVEMB_CUDA_CHECK(cudaMemcpyAsync(to, from, count * sizeof(int), cudaMemcpyDeviceToHost,
                                     ctx_.compute),
                     "reading the NaN/Inf flags");
    DVEMB_CUDA_CHECK(cudaStreamSynchronize(ctx_.compute), "propagating");
    return {};
  }

  // Chunk j's embeddings and flags down on the copy stream once it has computed.
  Result download(size_t j, int p) {
    const Buffers& b = buffers_[p];
    DVEMB_CUDA_CHECK(cudaStreamWaitEvent(ctx_.copy, computed(p), 0), "propagating");
    profile_.begin(Profile::kDownload, ctx_.copy);
    const Chunk& c = chunks_[j];
    const size_t bytes = (c.row_end - c.row_begin) * job_.dim * sizeof(float);
    if (bytes > 0) {
      DVEMB_CUDA_CHECK(cudaMemcpyAsync(b.emb_host, b.emb, bytes, cudaMemcpyDeviceToHost,
                                       ctx_.copy),
                       "copying embeddings to the host");
    }
    DVEMB_CUDA_CHECK(cudaMemcpyAsync(b.flags_host, b.flags, kFlags * sizeof(int),
                                     cudaMemcpyDeviceToHost, ctx_.copy),
                     "reading the NaN/Inf flags");
    profile_.end(Profile::kDownload, ctx_.copy);
    DVEMB_CUDA_CHECK(cudaEventRecord(downloaded(p), ctx_.copy), "propagating");
    return {};
  }

  // Waits for chunk j's download; its embeddings go to the caller unless the chunk saw a NaN/Inf.
  Result finish(size_t j, int p) {
    const Buffers& b = buffers_[p];
    DVEMB_CUDA_CHECK(cudaEventSynchronize(downloaded(p)), "propagating");
    if (b.flags_host[0] >= 0) {  // (never in exact mode: it stops at the step)
      retry_exact_ = true;
      return {};
    }
    const Chunk& c = chunks_[j];
    profile_.host([&] {
      copy_host(job_.embeddings + c.row_begin * job_.dim, b.emb_host,
                (c.row_end - c.row_begin) * job_.dim * sizeof(float));
    });
    return {};
  }

  // After an exact-mode stop in chunk j: the rows of the steps walked (those the CPU wrote, the
  // failing step's included) come down.
  Result finish_partial(size_t j, int p) {
    const Chunk& c = chunks_[j];
    const Buffers& b = buffers_[p];
    DVEMB_TRY(sync_all());
    const int64_t from = job_.step_rows[stop_step_];
    const size_t bytes = (c.row_end - from) * job_.dim * sizeof(float);
    const int64_t skip = (from - c.row_begin) * job_.dim;
    if (bytes > 0) {
      DVEMB_CUDA_CHECK(cudaMemcpy(job_.embeddings + from * job_.dim, b.emb + skip, bytes,
                                  cudaMemcpyDeviceToHost),
                       "copying embeddings to the host");
    }
    return {};
  }

  Context& ctx_;
  const PropagateJob& job_;
  T* host_p_;
  Profile& profile_;
  BlockLayout layout_;
  int kinds_ = 2;
  bool covers_all_ = true;
  std::vector<Chunk> chunks_;
  Buffers buffers_[2] = {};
  T* p_ = nullptr;
  T** p_ptrs_ = nullptr;
  int* cols_ = nullptr;
  int* col_block_ = nullptr;
  int* p_flag_ = nullptr;
  int* probe_ = nullptr;
  bool retry_exact_ = false;
  int64_t stop_step_ = 0;
};

uint64_t environment_number(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : 0;
}

template <typename T>
Result run(Context& ctx, const PropagateJob& job, const Options& options, T* host_p,
           int64_t* bad_step) {
  const auto t0 = std::chrono::steady_clock::now();
  Profile profile(options.timings);
  Walk<T> walk(ctx, job, host_p, profile);
  uint64_t budget = options.chunk_bytes;
  if (budget == 0) {
    size_t free = 0, total = 0;
    DVEMB_CUDA_CHECK(cudaMemGetInfo(&free, &total), "reading free device memory");
    budget = std::min<uint64_t>(uint64_t{256} << 20, free / 4);
  }
  const uint64_t smallest = walk.smallest_budget();
  for (;;) {
    Result r = walk.run(budget, bad_step);
    if (r.ok()) profile.finish(milliseconds_since(t0), walk.chunk_count());
    if (r.status != Status::OutOfMemory || budget <= smallest) return r;
    ctx.release_scratch();  // and try chunks half as large
    budget /= 2;
  }
}

}  // namespace

Options options_from_environment() {
  Options o;
  o.tf32 = environment_number("DVEMB_CUDA_TF32") != 0;
  o.chunk_bytes = environment_number("DVEMB_CUDA_CHUNK_BYTES");
  return o;
}

Result propagate(const PropagateJob& job, const Options& options, int64_t* bad_step) {
  *bad_step = -1;
  if (job.steps == 0) return {};
  Lease ctx;
  DVEMB_TRY(ctx.acquire());
  DVEMB_TRY(blas_set_tf32(ctx->blas, options.tf32 && !job.fp64));
  Result r = job.fp64 ? run(*ctx, job, options, job.propagators64, bad_step)
                      : run(*ctx, job, options, job.propagators32, bad_step);
  // The context goes back to the pool in plain fp32 and on its usual stream.
  blas_set_tf32(ctx->blas, false);
  return r;
}

}  // namespace dvemb::cuda
