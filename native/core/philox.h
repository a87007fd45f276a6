// Philox4x32-10, the counter-based generator behind every projection entry. Must match
// lib/backend/ts/philox.ts bit for bit (both are checked against the published known answers).
// The same source serves the CUDA kernels (native/cuda/): under nvcc every function here is
// __host__ __device__, so the GPU cannot drift from the CPU.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DVEMB_HOST_DEVICE __host__ __device__
#else
#define DVEMB_HOST_DEVICE
#endif

namespace dvemb {

struct Philox4x32 {
  static constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  static constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;

  DVEMB_HOST_DEVICE static inline void run(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                           uint32_t k0, uint32_t k1, uint32_t out[4]) {
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += W0;
        k1 += W1;
      }
      const uint64_t p0 = static_cast<uint64_t>(M0) * c0;
      const uint64_t p1 = static_cast<uint64_t>(M1) * c2;
      const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
      const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
      c0 = hi1 ^ c1 ^ k0;
      c1 = lo1;
      c2 = hi0 ^ c3 ^ k1;
      c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
  }
};

// The projection entry formula (lib/backend/surface.ts, ProjectionKey). Evaluated in double and
// rounded once; this file must be compiled without FMA contraction (-ffp-contract=off) so the
// CPU, the GPU and V8 agree to one float32 ulp for Gaussian entries and exactly for Rademacher
// (nvcc: --fmad=false). The GPU's double log and cos are within 2 double ulps of glibc's, far
// below half a float32 ulp, so only the final rounding can differ, by one.
DVEMB_HOST_DEVICE inline float projection_entry(uint32_t k0, uint32_t k1, uint32_t block,
                                                uint32_t factor, bool gaussian, double scale,
                                                uint32_t row, uint32_t col) {
  uint32_t w[4];
  Philox4x32::run(col, row, block, factor, k0, k1, w);
  if (gaussian) {
    const double u1 = (static_cast<double>(w[0]) + 1.0) * 2.3283064365386963e-10;
    const double u2 = static_cast<double>(w[1]) * 2.3283064365386963e-10;
    const double v = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    return static_cast<float>(v * scale);
  }
  return static_cast<float>((w[0] & 1u) ? -scale : scale);
}

}  // namespace dvemb
