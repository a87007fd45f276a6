#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime.cuh"

namespace dvemb::cuda {

namespace {

std::string mib(size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

}  // namespace

Result cuda_failure(cudaError_t error, const char* what) {
  // Clears the error when it is not sticky, so a later launch check does not report it again.
  cudaGetLastError();
  const std::string text = std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
  switch (error) {
    case cudaErrorMemoryAllocation: {
      size_t free = 0, total = 0;
      std::string room;
      if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
        room = " (" + mib(free) + " free of " + mib(total) + ")";
      }
      cudaGetLastError();
      return failed(Status::OutOfMemory, std::string("out of device memory while ") + what + room);
    }
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorStubLibrary:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorInitializationError:
      return failed(Status::NoDevice, std::string("CUDA cannot run here (") + what + "): " + text);
    default:
      return failed(Status::Failed, std::string("CUDA error while ") + what + ": " + text);
  }
}

Result DeviceBuffer::reserve(size_t bytes, const char* what) {
  if (bytes <= bytes_) return {};
  release();
  DVEMB_CUDA_CHECK(cudaMalloc(&data_, bytes), what);
  bytes_ = bytes;
  return {};
}

void DeviceBuffer::release() {
  if (data_) cudaFree(data_);
  data_ = nullptr;
  bytes_ = 0;
}

Result PinnedBuffer::reserve(size_t bytes, const char* what) {
  if (bytes <= bytes_) return {};
  release();
  DVEMB_CUDA_CHECK(cudaHostAlloc(&data_, bytes, cudaHostAllocDefault), what);
  bytes_ = bytes;
  return {};
}

void PinnedBuffer::release() {
  if (data_) cudaFreeHost(data_);
  data_ = nullptr;
  bytes_ = 0;
}

Result FactorCache::get(const ProjectionKey& key, int64_t rows, int64_t cols,
                        cudaStream_t stream, const float** out) {
  const Id id{key.seed, key.block, key.factor, static_cast<int>(key.distribution), rows, cols};
  auto it = entries_.find(id);
  if (it != entries_.end()) {
    it->second.last_use = ++clock_;
    it->second.call = call_;
    *out = static_cast<const float*>(it->second.matrix->data());
    return {};
  }
  const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
  while (bytes_ + bytes > max_bytes_) {
    // The least recently used matrix that this call has not been handed.
    auto oldest = entries_.end();
    for (auto e = entries_.begin(); e != entries_.end(); ++e) {
      if (e->second.call == call_) continue;
      if (oldest == entries_.end() || e->second.last_use < oldest->second.last_use) oldest = e;
    }
    if (oldest == entries_.end()) break;
    bytes_ -= oldest->second.bytes;
    entries_.erase(oldest);  // cudaFree waits for work still reading it
  }
  auto matrix = std::make_unique<DeviceBuffer>();
  DVEMB_TRY(matrix->reserve(bytes, "allocating a projection factor"));
  float* data = static_cast<float*>(matrix->data());
  DVEMB_TRY(fill_projection_device(key, rows, 0, cols, data, cols, stream));
  // Past the budget a matrix is still kept: the call needs it.
  entries_[id] = Entry{std::move(matrix), bytes, ++clock_, call_};
  bytes_ += bytes;
  *out = data;
  return {};
}

Context::~Context() {
  for (auto& e : events) {
    if (e) cudaEventDestroy(e);
  }
  if (compute) cudaStreamDestroy(compute);
  if (copy) cudaStreamDestroy(copy);
  blas_destroy(blas);
}

Result Context::init() {
  // Non-blocking: the legacy default stream (used by other libraries in the process) must not
  // serialise with ours.
  DVEMB_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), "creating a stream");
  DVEMB_CUDA_CHECK(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking), "creating a stream");
  for (auto& e : events) {
    DVEMB_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "creating an event");
  }
  DVEMB_TRY(blas_create(&blas));
  return blas_set_stream(blas, compute);
}

void Context::release_scratch() {
  cudaStreamSynchronize(compute);
  cudaStreamSynchronize(copy);
  for (auto& b : device) b.release();
  for (auto& b : pinned) b.release();
}

namespace {

std::mutex pool_mutex;
std::vector<Context*>& idle_contexts() {
  static auto* idle = new std::vector<Context*>();  // never destroyed, see Lease
  return *idle;
}

}  // namespace

Result Lease::acquire() {
  const DeviceInfo& info = device_info();
  if (!info.usable) return failed(Status::NoDevice, "no usable CUDA device: " + info.reason);
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    auto& idle = idle_contexts();
    if (!idle.empty()) {
      context_ = idle.back();
      idle.pop_back();
      return {};
    }
  }
  auto context = std::make_unique<Context>();
  DVEMB_TRY(context->init());
  context_ = context.release();
  return {};
}

Lease::~Lease() {
  if (!context_) return;
  // A call that failed part-way may have left work queued: the next one must not see it.
  cudaStreamSynchronize(context_->compute);
  cudaStreamSynchronize(context_->copy);
  std::lock_guard<std::mutex> lock(pool_mutex);
  idle_contexts().push_back(context_);
}

void copy_host(void* to, const void* from, size_t bytes) {
  constexpr size_t kPerThread = size_t{8} << 20;
  const size_t parts = std::min<size_t>(4, std::max<size_t>(1, bytes / kPerThread));
  if (parts == 1) {
    std::memcpy(to, from, bytes);
    return;
  }
  auto part = [&](size_t p) {
    const size_t begin = bytes * p / parts, end = bytes * (p + 1) / parts;
    std::memcpy(static_cast<char*>(to) + begin, static_cast<const char*>(from) + begin,
                end - begin);
  };
  std::vector<std::thread> threads;
  for (size_t p = 1; p < parts; ++p) threads.emplace_back(part, p);
  part(0);
  for (auto& t : threads) t.join();
}

}  // namespace dvemb::cuda
