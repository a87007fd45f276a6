// The CUDA build's dispatch: the GPU first, the CPU core when the device cannot take a call.
#include "dispatch.h"

#include <cstdio>
#include <mutex>

#include "../core/blas.h"
#include "../cuda/backend.h"

namespace dvemb::dispatch {

namespace {

// One warning per process for each reason, not one per call.
void warn_fallback(const char* op, const cuda::Result& r) {
  static std::once_flag no_device, out_of_memory;
  std::call_once(r.status == cuda::Status::NoDevice ? no_device : out_of_memory, [&] {
    std::fprintf(stderr, "dvemb: %s runs on the CPU instead of the GPU: %s (warned once)\n", op,
                 r.message.c_str());
  });
}

// The GPU's result, or the CPU core's when the GPU could not start or finish the call (its
// outputs are then rewritten whole by the CPU).
template <typename Gpu, typename Cpu>
Error run(const char* op, Gpu gpu, Cpu cpu) {
  const cuda::Result r = gpu();
  if (r.ok()) return {};
  if (r.cpu_can_take_over()) {
    warn_fallback(op, r);
    return cpu();
  }
  return std::string(op) + " on the GPU: " + r.message;
}

}  // namespace

BackendInfo backend_info() {
  const cuda::DeviceInfo& device = cuda::device_info();
  if (!device.usable) return {"native-cpu", device.describe(), ""};
  return {"cuda", device.describe(),
          "cuBLAS (CUDA " + cuda::cuda_version_text(device.runtime_version) +
              "); CPU fallback: " + blas_config()};
}

Error projection_matrix(const ProjectionKey& key, int64_t rows, int64_t cols, float* out,
                        int threads) {
  return run(
      "projectionMatrix", [&] { return cuda::projection_matrix(key, rows, cols, out); },
      [&] {
        fill_projection(key, rows, 0, cols, out, cols, threads);
        return Error{};
      });
}

Error project_kronecker(const KroneckerJob& job) {
  return run(
      "projectKronecker", [&] { return cuda::project_kronecker(job); },
      [&] { return dvemb::project_kronecker(job); });
}

Error project_dense(const DenseJob& job) {
  return run(
      "projectDense", [&] { return cuda::project_dense(job); },
      [&] { return dvemb::project_dense(job); });
}

Error propagate(const PropagateJob& job, int64_t* bad_step) {
  return run(
      "propagate",
      [&] { return cuda::propagate(job, cuda::options_from_environment(), bad_step); },
      [&] { return dvemb::propagate(job, bad_step); });
}

Error score(const ScoreJob& job) {
  return run(
      "score", [&] { return cuda::score(job, cuda::options_from_environment()); },
      [&] { return dvemb::score(job); });
}

}  // namespace dvemb::dispatch
