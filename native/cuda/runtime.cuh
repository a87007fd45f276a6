// What every CUDA source of the backend shares: CUDA errors as Results, device and pinned
// buffers that are kept between calls, and the per-call context (streams, cuBLAS handle,
// scratch) borrowed from a process-wide pool.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "../core/projection.h"
#include "blas.h"
#include "device.h"

namespace dvemb::cuda {

// A failed CUDA runtime call as a Result, classified (out of memory, no usable device, other)
// and naming `what` was being done.
Result cuda_failure(cudaError_t error, const char* what);

// Returns the failed Result of a CUDA runtime call from the enclosing function.
#define DVEMB_CUDA_CHECK(call, what)                                            \
  do {                                                                           \
    const cudaError_t dvemb_error_ = (call);                                     \
    if (dvemb_error_ != cudaSuccess) return ::dvemb::cuda::cuda_failure(dvemb_error_, what); \
  } while (0)

// Returns a failed Result from the enclosing function.
#define DVEMB_TRY(expr)                                   \
  do {                                                    \
    ::dvemb::cuda::Result dvemb_result_ = (expr);         \
    if (!dvemb_result_.ok()) return dvemb_result_;        \
  } while (0)

// Threads per block of the backend's elementwise kernels.
constexpr int kThreads = 256;
// Blocks for a grid-stride loop over `count` items (the kernels loop, so a cap is fine).
inline unsigned grid_for(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// Device memory that grows on demand and is kept: the same sizes come back every training step,
// and cudaMalloc/cudaFree would synchronise the device each time.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  Result reserve(size_t bytes, const char* what);
  void release();
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaHostAlloc), so copies to and from the device run asynchronously.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { release(); }

  Result reserve(size_t bytes, const char* what);
  void release();
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Lays several arrays out in one allocation, each aligned for any element type.
class Layout {
 public:
  template <typename T>
  size_t add(int64_t count) {
    const size_t at = end_;
    end_ += align(static_cast<size_t>(count > 0 ? count : 0) * sizeof(T));
    return at;
  }
  size_t bytes() const { return end_ > 0 ? end_ : 256; }

  template <typename T>
  static T* at(void* base, size_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
  }

 private:
  static size_t align(size_t bytes) { return (bytes + 255) / 256 * 256; }
  size_t end_ = 0;
};

// Projection matrices of Kronecker factors on the device, generated on a miss: every training
// step asks for the same R_in and R_out again. Least recently used matrices go past the budget.
class FactorCache {
 public:
  explicit FactorCache(size_t max_bytes = size_t{256} << 20) : max_bytes_(max_bytes) {}
  FactorCache(const FactorCache&) = delete;
  FactorCache& operator=(const FactorCache&) = delete;

  // Starts a call: matrices handed out from here on stay until the next one starts.
  void begin_call() { ++call_; }
  // The (rows × cols) matrix of key, generated on `stream` on a miss.
  Result get(const ProjectionKey& key, int64_t rows, int64_t cols, cudaStream_t stream,
             const float** out);

 private:
  struct Entry {
    std::unique_ptr<DeviceBuffer> matrix;
    size_t bytes;
    uint64_t last_use;
    uint64_t call;  // the last call that asked for it
  };
  using Id = std::tuple<uint64_t, uint32_t, uint32_t, int, int64_t, int64_t>;

  std::map<Id, Entry> entries_;
  size_t max_bytes_;
  size_t bytes_ = 0;
  uint64_t clock_ = 0;
  uint64_t call_ = 0;
};

// Generates entries (r, col_start + c) of key's (rows × ·) matrix, r < rows, c < cols, into
// out[r * ld + c] on the device (projection.cu).
Result fill_projection_device(const ProjectionKey& key, int64_t rows, int64_t col_start,
                              int64_t cols, float* out, int64_t ld, cudaStream_t stream);

// Everything one call needs. A context serves one call at a time; concurrent calls (libuv runs
// up to four workers) each borrow their own from the pool.
struct Context {
  static constexpr int kDeviceSlots = 4;
  static constexpr int kPinnedSlots = 4;
  static constexpr int kEvents = 6;

  Context() = default;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context();

  Result init();
  // Frees the scratch (not the factor cache): called before retrying with smaller chunks.
  void release_scratch();

  cudaStream_t compute = nullptr;  // kernels and GEMMs
  cudaStream_t copy = nullptr;     // host <-> device copies that overlap them
  cudaEvent_t events[kEvents] = {};
  BlasHandle* blas = nullptr;
  DeviceBuffer device[kDeviceSlots];
  PinnedBuffer pinned[kPinnedSlots];
  FactorCache factors;
};

// A context borrowed from the pool for one call, handed back when the lease ends. The pool is
// never torn down: CUDA objects must not be destroyed after the runtime has shut down at exit.
class Lease {
 public:
  Lease() = default;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  // NoDevice when the device is not usable (device_info() says why).
  Result acquire();
  Context* operator->() const { return context_; }
  Context& operator*() const { return *context_; }

 private:
  Context* context_ = nullptr;
};

// memcpy on up to four threads: one thread cannot keep up with a PCIe 5 link.
void copy_host(void* to, const void* from, size_t bytes);

}  // namespace dvemb::cuda
