#include "plan.h"

#include <algorithm>
#include <map>

namespace dvemb::cuda {

BlockLayout plan_blocks(const int32_t* blocks, int64_t block_count) {
  BlockLayout layout;
  std::map<int, std::vector<int>> by_k;  // ordered, so the grouping is deterministic
  for (int64_t b = 0; b < block_count; ++b) {
    const int k = blocks[2 * b + 1];
    layout.blocks.push_back({blocks[2 * b], k, layout.p_size});
    layout.width += k;
    layout.p_size += int64_t{k} * k;
    by_k[k].push_back(static_cast<int>(b));
  }
  for (const auto& [k, members] : by_k) {
    layout.groups.push_back({k, static_cast<int>(members.size())});
    layout.order.insert(layout.order.end(), members.begin(), members.end());
  }

  // Strided: one k, and offsets a constant step apart (a positive one: blocks never overlap).
  const auto& bl = layout.blocks;
  layout.strided = by_k.size() == 1;
  if (bl.size() > 1) {
    layout.stride = bl[1].off - bl[0].off;
    layout.strided = layout.strided && layout.stride >= bl[0].k;
    for (size_t b = 1; b < bl.size() && layout.strided; ++b) {
      layout.strided = bl[b].off - bl[b - 1].off == layout.stride;
    }
  }
  return layout;
}

uint64_t chunk_bytes(const Chunk& c, const ChunkCost& cost) {
  return static_cast<uint64_t>(c.row_end - c.row_begin) * cost.row +
         static_cast<uint64_t>(c.curv_end - c.curv_begin) * cost.curvature_row +
         static_cast<uint64_t>(c.end - c.first) * cost.step;
}

std::vector<Chunk> plan_chunks(const PropagateJob& job, const ChunkCost& cost, uint64_t budget) {
  std::vector<Chunk> chunks;
  auto curvature_at = [&](int64_t s) -> int64_t {
    return job.curvature ? job.step_curvature[s] : 0;
  };
  int64_t end = job.steps;
  while (end > 0) {
    Chunk c{end - 1, end, job.step_rows[end - 1], job.step_rows[end], curvature_at(end - 1),
            curvature_at(end)};
    // Grow downwards while the next step still fits.
    while (c.first > 0) {
      Chunk wider = c;
      --wider.first;
      wider.row_begin = job.step_rows[wider.first];
      wider.curv_begin = curvature_at(wider.first);
      if (chunk_bytes(wider, cost) > budget) break;
      c = wider;
    }
    chunks.push_back(c);
    end = c.first;
  }
  return chunks;
}

}  // namespace dvemb::cuda
