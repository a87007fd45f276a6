// The CUDA backend's operations, in plain C++ (no CUDA or Node header): each takes the CPU
// core's job struct, already validated by native/addon/args.cc, and computes the same result
// as the CPU core on the GPU (lib/backend/surface.ts). Each is safe to call from several
// threads at once.
#pragma once
#include <cstdint>

#include "../core/projection.h"
#include "../core/propagator.h"
#include "../core/scoring.h"
#include "device.h"

namespace dvemb::cuda {

// Where the time of one propagate call went, for benchmarks (Options::timings).
struct Timings {
  double wall_ms = 0;       // the whole call
  double compute_ms = 0;    // GPU time of the steps' GEMMs and kernels (compute stream)
  double upload_ms = 0;     // GPU time of the host -> device copies (copy stream)
  double download_ms = 0;   // device -> host copies
  double host_copy_ms = 0;  // memcpy between the caller's arrays and pinned memory (host)
  int64_t chunks = 0;
};

struct Options {
  // TF32 tensor cores for the fp32 GEMMs of propagate: faster, but products keep 10 mantissa
  // bits (relative error ~1e-3 per product instead of ~1e-7). Off unless asked for.
  bool tf32 = false;
  // Device bytes for the rows of one chunk of steps (propagate) or of embeddings (score); two
  // chunks are in flight. 0: automatic (propagate: a quarter of the free memory, at most
  // 256 MiB; score: 256 MiB). Small values exercise the streaming.
  uint64_t chunk_bytes = 0;
  // When set, propagate adds its time split here (timing events cost a little).
  Timings* timings = nullptr;
};

// DVEMB_CUDA_TF32=1 and DVEMB_CUDA_CHUNK_BYTES, read at each call.
Options options_from_environment();

// The whole (rows × cols) matrix of key, generated on the device, into host memory.
Result projection_matrix(const ProjectionKey& key, int64_t rows, int64_t cols, float* out);

// surface.ts projectKronecker / projectDense.
Result project_kronecker(const KroneckerJob& job);
Result project_dense(const DenseJob& job);

// surface.ts score; the embeddings stream through in chunks of options.chunk_bytes.
Result score(const ScoreJob& job, const Options& options);

// surface.ts propagate: *bad_step is −1 or the step the CPU core would report.
Result propagate(const PropagateJob& job, const Options& options, int64_t* bad_step);

}  // namespace dvemb::cuda
