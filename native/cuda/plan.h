// Host-side planning of the GPU backward pass: how a call's blocks map onto batched GEMMs, and
// how its steps are cut into chunks that stream through the device. Plain C++, so the host test
// checks it without a GPU.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/propagator.h"

namespace dvemb::cuda {

struct BlockLayout {
  struct Block {
    int64_t off;       // first column in the rows
    int k;             // columns, and P_b is k × k
    int64_t p_offset;  // where P_b starts in the propagators
  };
  std::vector<Block> blocks;  // as the call lists them
  // All blocks of one k at evenly spaced offsets (off_b = off_0 + b · stride): one
  // strided-batched GEMM covers them. Otherwise pointer arrays, listed by `order`.
  bool strided = false;
  int64_t stride = 0;
  // Block indices grouped by k (a pointer-array slot -> its block), and each group's k and size.
  std::vector<int> order;
  struct Group {
    int k, count;
  };
  std::vector<Group> groups;
  int64_t width = 0;   // Σ k_b: the columns the blocks cover
  int64_t p_size = 0;  // Σ k_b²
};

BlockLayout plan_blocks(const int32_t* blocks, int64_t block_count);

// Steps [first, end) of the call, walked from end − 1 down to first, and the rows and curvature
// rows they hold.
struct Chunk {
  int64_t first, end;
  int64_t row_begin, row_end;
  int64_t curv_begin, curv_end;
};

// Device bytes a chunk needs per row, per curvature row and per step.
struct ChunkCost {
  uint64_t row = 0, curvature_row = 0, step = 0;
};

// Cuts the call's steps into chunks in walking order (the first chunk holds the last steps),
// each within `budget` bytes, or of a single step when one step alone is over it.
std::vector<Chunk> plan_chunks(const PropagateJob& job, const ChunkCost& cost, uint64_t budget);

// Bytes of the largest chunk of a plan.
uint64_t chunk_bytes(const Chunk& chunk, const ChunkCost& cost);

}  // namespace dvemb::cuda
