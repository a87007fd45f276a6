// Attribution scores: inner products of embeddings with (projected) test gradients.
#pragma once
#include <cstdint>

#include "common.h"

namespace dvemb {

// surface.ts ScoreArgs: out (n × m) = embeddings (n × dim) · tests (m × dim)ᵀ.
struct ScoreJob {
  int64_t n = 0, m = 0, dim = 0;
  const float* embeddings = nullptr;
  const float* tests = nullptr;
  float* out = nullptr;
};

Error score(const ScoreJob& job);

}  // namespace dvemb
