// One tile of a projection matrix, entry by entry, as the CUDA kernels generate it: the formula
// itself is native/core/philox.h (compiled __host__ __device__ under nvcc), and this header only
// maps (row, column-in-tile) to its counter. Host code can run it too: the host test checks it
// against the CPU core's fill_projection.
#pragma once
#include <cmath>
#include <cstdint>

#include "../core/philox.h"
#include "../core/projection.h"

namespace dvemb::cuda {

struct TileParams {
  uint32_t k0 = 0, k1 = 0;  // the seed's two key words
  uint32_t block = 0, factor = 0;
  bool gaussian = true;
  double scale = 1;        // 1 / sqrt(rows), as the CPU and the TS backend compute it
  int64_t col_start = 0;   // the tile's first column in the whole matrix
};

// Host side: the parameters of the tile of key's (rows × ·) matrix starting at col_start.
inline TileParams tile_params(const ProjectionKey& key, int64_t rows, int64_t col_start) {
  TileParams p;
  p.k0 = static_cast<uint32_t>(key.seed);
  p.k1 = static_cast<uint32_t>(key.seed >> 32);
  p.block = key.block;
  p.factor = key.factor;
  p.gaussian = key.distribution == Distribution::Gaussian;
  p.scale = 1.0 / std::sqrt(static_cast<double>(rows));
  p.col_start = col_start;
  return p;
}

// Entry (r, p.col_start + c) of the matrix.
DVEMB_HOST_DEVICE inline float tile_entry(const TileParams& p, int64_t r, int64_t c) {
  return projection_entry(p.k0, p.k1, p.block, p.factor, p.gaussian, p.scale,
                          static_cast<uint32_t>(r), static_cast<uint32_t>(p.col_start + c));
}

}  // namespace dvemb::cuda
