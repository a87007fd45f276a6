// Random projections of per-example gradients (REFERENCE §4): the projection matrices, the
// Kronecker-factored projection of linear layers and the dense projection of anything else.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "common.h"

namespace dvemb {

enum class Distribution { Gaussian, Rademacher };

// Which matrix of a block (surface.ts FACTOR_*).
enum Factor : uint32_t { kFactorDense = 0, kFactorIn = 1, kFactorOut = 2 };

struct ProjectionKey {
  uint64_t seed = 0;  // < 2^53
  uint32_t block = 0;
  uint32_t factor = kFactorDense;
  Distribution distribution = Distribution::Gaussian;
};

// Writes entries (r, col_start + c) of the (rows × ·) matrix of `key`, r < rows, c < cols, to
// out[r * ld + c]. `rows` also fixes the scale 1/sqrt(rows).
void fill_projection(const ProjectionKey& key, int64_t rows, int64_t col_start, int64_t cols,
                     float* out, int64_t ld, int threads);

// Whole projection matrices of Kronecker factors, kept because every training step asks for
// the same R_in / R_out again. Thread-safe; least recently used matrices are dropped past
// the byte budget.
class ProjectionCache {
 public:
  using Matrix = std::shared_ptr<const float[]>;
  explicit ProjectionCache(size_t max_bytes = size_t{256} << 20) : max_bytes_(max_bytes) {}

  // The (rows × cols) matrix of key, generated on a miss; null only when out of memory.
  Matrix get(const ProjectionKey& key, int64_t rows, int64_t cols, int threads);

 private:
  struct Entry {
    Matrix matrix;
    size_t bytes;
    uint64_t last_use;
  };
  using Id = std::tuple<uint64_t, uint32_t, uint32_t, int, int64_t, int64_t>;

  std::mutex mutex_;
  std::map<Id, Entry> entries_;
  size_t max_bytes_;
  size_t bytes_ = 0;
  uint64_t clock_ = 0;
};

// surface.ts KroneckerArgs. Pointers are borrowed; sizes are already validated.
struct KroneckerJob {
  enum class Form { Factors, Gradient };
  uint64_t seed = 0;
  uint32_t block = 0;
  Distribution distribution = Distribution::Gaussian;
  Form form = Form::Factors;
  int64_t n = 0, tokens = 1, d_in = 0, d_out = 0;
  bool bias = false;
  int64_t k_in = 0, k_out = 0;
  const float* inputs = nullptr;        // (n, tokens, d_in) or (n, d_out, d_in + bias)
  const float* output_grads = nullptr;  // (n, tokens, d_out); unused for Form::Gradient
  float* out = nullptr;
  int64_t ld_out = 0, offset = 0;
  ProjectionCache* cache = nullptr;  // optional
  int threads = 1;                   // for generating the factor matrices
};

Error project_kronecker(const KroneckerJob& job);

// surface.ts DenseArgs.
struct DenseJob {
  uint64_t seed = 0;
  uint32_t block = 0;
  Distribution distribution = Distribution::Gaussian;
  int64_t n = 0, d = 0, k = 0;
  const float* grads = nullptr;  // (n × d)
  float* out = nullptr;
  int64_t ld_out = 0, offset = 0;
  int threads = 1;
};

// Columns of R generated per tile: R is never held whole.
constexpr int64_t kDenseTileColumns = 1024;

Error project_dense(const DenseJob& job);

}  // namespace dvemb
