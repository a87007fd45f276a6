#include "propagator.h"

#include <cstring>
#include <type_traits>

#include "blas.h"

namespace dvemb {

namespace {

// Exponent bits all ones (NaN or Inf) carry into the sign bit when one exponent ulp is added,
// so OR-ing that over a row detects any non-finite value in one branch-free, vectorisable pass.
inline uint32_t nonfinite_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x7f800000u) + 0x00800000u;
}
inline uint64_t nonfinite_bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x7ff0000000000000u) + 0x0010000000000000u;
}
constexpr uint32_t kSign32 = 0x80000000u;
constexpr uint64_t kSign64 = 0x8000000000000000u;

template <typename T>
bool all_finite(const T* x, int64_t count) {
  decltype(nonfinite_bits(T{})) acc = 0;
  for (int64_t i = 0; i < count; ++i) acc |= nonfinite_bits(x[i]);
  return (acc & (std::is_same<T, float>::value ? kSign32 : kSign64)) == 0;
}

// row[0..k) *= a and, for fp64, rounded into out; returns whether the float output is finite.
// (fp32 E is computed in place: row is the output.)
inline bool scale_row(float* row, int64_t k, float a, float* /*out*/) {
  uint32_t acc = 0;
  for (int64_t i = 0; i < k; ++i) {
    row[i] *= a;
    acc |= nonfinite_bits(row[i]);
  }
  return (acc & kSign32) == 0;
}
inline bool scale_row(double* row, int64_t k, double a, float* out) {
  uint32_t acc = 0;
  for (int64_t i = 0; i < k; ++i) {
    row[i] *= a;
    out[i] = static_cast<float>(row[i]);
    acc |= nonfinite_bits(out[i]);
  }
  return (acc & kSign32) == 0;
}

template <typename T>
struct Block {
  int64_t off;
  int k;
  T* p;
};

// One precision of the walk. fp32 uses the rows and the embeddings in place (leading
// dimension dim); fp64 converts each step's block of rows into scratch first.
template <typename T>
class Walk {
 public:
  Walk(const PropagateJob& job, T* propagators) : job_(job) {
    int64_t at = 0;
    for (int64_t b = 0; b < job.block_count; ++b) {
      const int k = job.blocks[2 * b + 1];
      blocks_.push_back(Block<T>{job.blocks[2 * b], k, propagators + at});
      at += int64_t{k} * k;
      max_k_ = std::max<int64_t>(max_k_, k);
    }
    for (int64_t s = 0; s < job.steps; ++s) {
      max_rows_ = std::max<int64_t>(max_rows_, job.step_rows[s + 1] - job.step_rows[s]);
      if (job.curvature) {
        max_curv_ = std::max<int64_t>(max_curv_,
                                      job.step_curvature[s + 1] - job.step_curvature[s]);
      }
    }
  }

  // Scratch for the whole call, so the loop below never allocates.
  Error allocate_scratch() {
    constexpr bool fp64 = std::is_same<T, double>::value;
    const int64_t g = fp64 ? max_rows_ * max_k_ : 0;
    const int64_t c = job_.curvature ? max_curv_ * max_k_ : 0;
    g_ = allocate<T>(g);
    e_ = allocate<T>(g);
    c_ = allocate<T>(fp64 ? c : 0);
    f_ = allocate<T>(c);
    if (!g_ || !e_ || !c_ || !f_) return out_of_memory("propagate scratch", sizeof(T) * 2 * (g + c));
    return {};
  }

  void run(int64_t* bad_step) {
    *bad_step = -1;
    for (int64_t s = job_.steps - 1; s >= 0; --s) {
      for (const auto& block : blocks_) {
        if (step(s, block)) continue;
        // E is non-finite: either this step's rows did it, or P already was after step s + 1.
        const bool p_was_bad = !all_finite(block.p, int64_t{block.k} * block.k);
        *bad_step = p_was_bad && s + 1 < job_.steps ? s + 1 : s;
        return;
      }
    }
    if (job_.steps == 0) return;
    for (const auto& block : blocks_) {
      if (!all_finite(block.p, int64_t{block.k} * block.k)) {
        *bad_step = 0;
        return;
      }
    }
  }

 private:
  // The block's columns of `count` rows starting at src (rows dim wide), as a GEMM operand.
  const T* operand(const float* src, int64_t count, const Block<T>& b, T* scratch, int* ld) {
    if constexpr (std::is_same<T, float>::value) {
      *ld = static_cast<int>(job_.dim);
      return src + b.off;
    } else {
      for (int64_t r = 0; r < count; ++r) {
        const float* from = src + r * job_.dim + b.off;
        double* to = scratch + r * b.k;
        for (int i = 0; i < b.k; ++i) to[i] = from[i];
      }
      *ld = b.k;
      return scratch;
    }
  }

  // Step s on one block; false (and P left as it was) when E came out non-finite.
  bool step(int64_t s, const Block<T>& b) {
    const int64_t dim = job_.dim;
    const int k = b.k;
    T* const P = b.p;
    const double eta = job_.lr[s];
    const T c = static_cast<T>(job_.decay[s]);

    // E = diag(η w) G Pᵀ, written where G's rows sit.
    const int64_t r0 = job_.step_rows[s];
    const int m = job_.step_rows[s + 1] - job_.step_rows[s];
    const T* G = nullptr;
    const T* E = nullptr;
    int ldg = 0, lde = 0;
    if (m > 0) {
      G = operand(job_.rows + r0 * dim, m, b, g_.get(), &ldg);
      float* const out = job_.embeddings + r0 * dim + b.off;
      T* e;
      if constexpr (std::is_same<T, float>::value) {
        e = out;
        lde = static_cast<int>(dim);
      } else {
        e = e_.get();
        lde = k;
      }
      gemm(CblasNoTrans, CblasTrans, m, k, k, T{1}, G, ldg, P, k, T{0}, e, lde);
      bool finite = true;
      for (int i = 0; i < m; ++i) {
        const T a = static_cast<T>(eta * job_.weights[r0 + i]);
        finite &= scale_row(e + int64_t{i} * lde, k, a, out + i * dim);
      }
      if (!finite) return false;
      E = e;
    }

    if (!job_.curvature) {
      // Empirical Fisher: P ← c P − Eᵀ G, one GEMM.
      if (m > 0) {
        gemm(CblasTrans, CblasNoTrans, k, k, m, T{-1}, E, lde, G, ldg, c, P, k);
      } else {
        scale(P, int64_t{k} * k, c);
      }
      return true;
    }

    // F = C Pᵀ (P before the update), then P ← c P − η (diag(w_C) F)ᵀ C.
    const int64_t q0 = job_.step_curvature[s];
    const int mc = job_.step_curvature[s + 1] - job_.step_curvature[s];
    if (mc == 0) {
      scale(P, int64_t{k} * k, c);
      return true;
    }
    int ldc = 0;
    const T* C = operand(job_.curvature + q0 * dim, mc, b, c_.get(), &ldc);
    T* const F = f_.get();
    gemm(CblasNoTrans, CblasTrans, mc, k, k, T{1}, C, ldc, P, k, T{0}, F, k);
    for (int i = 0; i < mc; ++i) {
      const T a = static_cast<T>(eta * job_.curvature_weights[q0 + i]);
      T* row = F + int64_t{i} * k;
      for (int j = 0; j < k; ++j) row[j] *= a;
    }
    gemm(CblasTrans, CblasNoTrans, k, k, mc, T{-1}, F, k, C, ldc, c, P, k);
    return true;
  }

  static void scale(T* x, int64_t count, T a) {
    if (a == T{1}) return;
    for (int64_t i = 0; i < count; ++i) x[i] *= a;
  }

  const PropagateJob& job_;
  std::vector<Block<T>> blocks_;
  int64_t max_k_ = 0, max_rows_ = 0, max_curv_ = 0;
  std::unique_ptr<T[]> g_, e_, c_, f_;
};

template <typename T>
Error run(const PropagateJob& job, T* propagators, int64_t* bad_step) {
  Walk<T> walk(job, propagators);
  if (Error e = walk.allocate_scratch(); !e.empty()) return e;
  walk.run(bad_step);
  return {};
}

}  // namespace

Error propagate(const PropagateJob& job, int64_t* bad_step) {
  *bad_step = -1;
  return job.fp64 ? run(job, job.propagators64, bad_step)
                  : run(job, job.propagators32, bad_step);
}

}  // namespace dvemb
