// The backward recursion of one chunk of steps (REFERENCE §3; surface.ts PropagateArgs).
#pragma once
#include <cstdint>

#include "common.h"

namespace dvemb {

// Pointers are borrowed; sizes are already validated. Rows are `dim` wide; block b covers
// columns [blocks[2b], blocks[2b] + blocks[2b+1]) and owns a (k_b × k_b) propagator P_b.
struct PropagateJob {
  bool fp64 = false;
  int64_t dim = 0;
  const int32_t* blocks = nullptr;  // [off_0, k_0, off_1, k_1, ...]
  int64_t block_count = 0;
  float* propagators32 = nullptr;   // when !fp64: the P_b one after another
  double* propagators64 = nullptr;  // when fp64
  int64_t steps = 0;
  const float* rows = nullptr;
  const int32_t* step_rows = nullptr;  // steps + 1 prefix offsets, in rows
  const double* weights = nullptr;     // per row
  const float* curvature = nullptr;    // null: the empirical Fisher (C = G)
  const int32_t* step_curvature = nullptr;
  const double* curvature_weights = nullptr;
  const double* lr = nullptr;     // η per step
  const double* decay = nullptr;  // c per step
  float* embeddings = nullptr;    // same shape as rows, written inside the blocks' columns
};

// Walks steps − 1 down to 0. Sets *bad_step to −1, or to the first step (in walking order)
// after which E or a P held a NaN/Inf, where the walk stops.
//
// Only E is scanned every step; P is scanned when E turned out non-finite (to tell a bad P
// from the step before, which is then reported, from bad rows of this step) and once at the
// end. A non-finite P found only at the end (its step was followed by no rows for that block)
// is reported as step 0, the last one walked.
Error propagate(const PropagateJob& job, int64_t* bad_step);

}  // namespace dvemb
