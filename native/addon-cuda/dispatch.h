// What the Node binding (native/addon/) calls for each operation, so that the same binding
// sources build both addons. Without DVEMB_WITH_CUDA (dvemb.node) these are the CPU core itself.
// With it (dvemb_cuda.node, see CMakeLists.txt) they run on the GPU (native/cuda/backend.h) and
// hand a call to the CPU core, with a warning on stderr, when the device cannot take it: no
// usable device, or out of device memory even in the smallest chunks. Plain C++: no Node here.
#pragma once
#include <cstdint>
#include <string>

#include "../core/projection.h"
#include "../core/propagator.h"
#include "../core/scoring.h"

namespace dvemb::dispatch {

// What info() reports: backend "cuda" with the device, or "native-cpu" (with, in a CUDA build,
// "no device: <why>", which the loader shows when it falls back to dvemb.node).
struct BackendInfo {
  const char* backend;
  std::string device;  // empty in the CPU build
  std::string blas;    // empty: the caller reports the BLAS it links
};

#ifdef DVEMB_WITH_CUDA

constexpr bool kCudaBuild = true;
BackendInfo backend_info();
Error projection_matrix(const ProjectionKey& key, int64_t rows, int64_t cols, float* out,
                        int threads);
Error project_kronecker(const KroneckerJob& job);
Error project_dense(const DenseJob& job);
Error propagate(const PropagateJob& job, int64_t* bad_step);
Error score(const ScoreJob& job);

#else

constexpr bool kCudaBuild = false;
inline BackendInfo backend_info() { return {"native-cpu", "", ""}; }
inline Error projection_matrix(const ProjectionKey& key, int64_t rows, int64_t cols, float* out,
                               int threads) {
  fill_projection(key, rows, 0, cols, out, cols, threads);
  return {};
}
inline Error project_kronecker(const KroneckerJob& job) { return dvemb::project_kronecker(job); }
inline Error project_dense(const DenseJob& job) { return dvemb::project_dense(job); }
inline Error propagate(const PropagateJob& job, int64_t* bad_step) {
  return dvemb::propagate(job, bad_step);
}
inline Error score(const ScoreJob& job) { return dvemb::score(job); }

#endif

}  // namespace dvemb::dispatch
