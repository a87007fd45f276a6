// Checks of the native core with no Node and no test framework: each check prints what failed
// and the exit status counts the failures. Reference results are computed plainly, in double.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/blas.h"
#include "../core/philox.h"
#include "../core/projection.h"
#include "../core/propagator.h"
#include "../core/scoring.h"

using namespace dvemb;

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// Largest |a − b| / (1 + |b|).
template <typename A, typename B>
double max_error(const A& a, const B& b) {
  double worst = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (1.0 + std::abs(double(b[i]))));
  }
  return worst;
}

void check_close(double error, double tolerance, const char* what) {
  if (!(error <= tolerance)) {
    std::printf("FAIL: %s (error %.3g > %.3g)\n", what, error, tolerance);
    ++failures;
  }
}

std::vector<float> random_floats(size_t count, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(count);
  for (auto& x : v) x = normal(rng);
  return v;
}

std::vector<float> matrix(const ProjectionKey& key, int64_t rows, int64_t cols) {
  std::vector<float> m(rows * cols);
  fill_projection(key, rows, 0, cols, m.data(), cols, 1);
  return m;
}

void test_philox() {
  struct Case {
    uint32_t ctr[4], key[2], expect[4];
  } cases[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const auto& c : cases) {
    uint32_t out[4];
    Philox4x32::run(c.ctr[0], c.ctr[1], c.ctr[2], c.ctr[3], c.key[0], c.key[1], out);
    check(out[0] == c.expect[0] && out[1] == c.expect[1] && out[2] == c.expect[2] &&
              out[3] == c.expect[3],
          "Philox4x32-10 known answer");
  }
}

void test_projection_matrix() {
  const ProjectionKey rad{(uint64_t{7} << 32) + 12345, 3, kFactorIn, Distribution::Rademacher};
  const auto r = matrix(rad, 16, 300);
  const float s = static_cast<float>(1.0 / std::sqrt(16.0));
  bool signs = true;
  int positive = 0;
  for (float x : r) {
    signs &= x == s || x == -s;
    positive += x > 0;
  }
  check(signs, "rademacher entries are ±1/sqrt(rows)");
  check(positive > 2000 && positive < 2800, "rademacher signs are balanced");

  // A column tile, and the parallel fill, give the same entries as the whole matrix.
  const ProjectionKey gauss{42, 1, kFactorDense, Distribution::Gaussian};
  const auto whole = matrix(gauss, 40, 3000);
  std::vector<float> tile(40 * 100), parallel(40 * 3000);
  fill_projection(gauss, 40, 1234, 100, tile.data(), 100, 1);
  fill_projection(gauss, 40, 0, 3000, parallel.data(), 3000, 4);
  bool same = true;
  for (int rr = 0; rr < 40; ++rr)
    for (int c = 0; c < 100; ++c) same &= tile[rr * 100 + c] == whole[rr * 3000 + 1234 + c];
  check(same, "projection tile equals the columns of the whole matrix");
  check(parallel == whole, "parallel projection fill equals the serial one");

  double sum = 0, sum2 = 0;
  for (float x : whole) {
    sum += x;
    sum2 += double(x) * x;
  }
  const double n = double(whole.size());
  check(std::abs(sum / n) < 0.01 && std::abs(sum2 / n * 40 - 1) < 0.02,
        "gaussian entries have mean 0 and variance 1/rows");

  // Entry (r, c) straight from the formula.
  uint32_t w[4];
  Philox4x32::run(5, 7, 1, kFactorDense, 42, 0, w);
  const double u1 = (double(w[0]) + 1) * 2.3283064365386963e-10;
  const double u2 = double(w[1]) * 2.3283064365386963e-10;
  const float expect = static_cast<float>(std::sqrt(-2 * std::log(u1)) *
                                          std::cos(6.283185307179586 * u2) / std::sqrt(40.0));
  check(whole[7 * 3000 + 5] == expect, "gaussian entry follows the formula");

  ProjectionCache cache(40 * 3000 * 4 + 1);
  const auto a = cache.get(gauss, 40, 3000, 2);
  const auto b = cache.get(gauss, 40, 3000, 2);
  check(a && a == b, "cache returns the same matrix for the same key");
  const auto other = cache.get(rad, 16, 300, 2);  // over budget: evicts the first
  const auto c = cache.get(gauss, 40, 3000, 2);
  check(other && c && c != a && std::equal(c.get(), c.get() + 40 * 3000, whole.begin()),
        "cache evicts past its budget and regenerates the same entries");
}

void test_kronecker(bool bias, int64_t tokens, Distribution dist, bool use_cache) {
  std::mt19937 rng(11);
  const int64_t n = 5, d_in = 13, d_out = 9, k_in = 6, k_out = 4, ld_out = 40, offset = 7;
  const int64_t D = d_in + bias;
  const auto inputs = random_floats(n * tokens * d_in, rng);
  const auto deltas = random_floats(n * tokens * d_out, rng);
  const auto r_in = matrix({99, 4, kFactorIn, dist}, k_in, D);
  const auto r_out = matrix({99, 4, kFactorOut, dist}, k_out, d_out);

  // Materialise each example's full gradient, then project it plainly.
  std::vector<float> grads(n * d_out * D);
  std::vector<double> expect(n * k_out * k_in);
  for (int64_t e = 0; e < n; ++e) {
    for (int64_t o = 0; o < d_out; ++o) {
      for (int64_t i = 0; i < D; ++i) {
        double g = 0;
        for (int64_t t = 0; t < tokens; ++t) {
          const double a = i < d_in ? inputs[(e * tokens + t) * d_in + i] : 1.0;
          g += deltas[(e * tokens + t) * d_out + o] * a;
        }
        grads[(e * d_out + o) * D + i] = static_cast<float>(g);
      }
    }
    for (int64_t p = 0; p < k_out; ++p) {
      for (int64_t q = 0; q < k_in; ++q) {
        double sum = 0;
        for (int64_t o = 0; o < d_out; ++o)
          for (int64_t i = 0; i < D; ++i)
            sum += r_out[p * d_out + o] * double(grads[(e * d_out + o) * D + i]) * r_in[q * D + i];
        expect[(e * k_out + p) * k_in + q] = sum;
      }
    }
  }

  ProjectionCache cache;
  for (auto form : {KroneckerJob::Form::Factors, KroneckerJob::Form::Gradient}) {
    std::vector<float> out((n - 1) * ld_out + offset + k_in * k_out + 3, -7.0f);
    KroneckerJob job;
    job.seed = 99;
    job.block = 4;
    job.distribution = dist;
    job.form = form;
    job.n = n;
    job.tokens = tokens;
    job.d_in = d_in;
    job.d_out = d_out;
    job.bias = bias;
    job.k_in = k_in;
    job.k_out = k_out;
    job.inputs = form == KroneckerJob::Form::Factors ? inputs.data() : grads.data();
    job.output_grads = deltas.data();
    job.out = out.data();
    job.ld_out = ld_out;
    job.offset = offset;
    job.cache = use_cache ? &cache : nullptr;
    job.threads = 2;
    check(project_kronecker(job).empty(), "project_kronecker succeeds");

    std::vector<float> got;
    bool untouched = true;
    for (int64_t e = 0; e < n; ++e) {
      for (int64_t j = 0; j < ld_out && e * ld_out + j < int64_t(out.size()); ++j) {
        const float x = out[e * ld_out + j];
        if (j >= offset && j < offset + k_in * k_out) got.push_back(x);
        else untouched &= x == -7.0f;
      }
    }
    const char* name = form == KroneckerJob::Form::Factors ? "kronecker (factors) vs naive"
                                                            : "kronecker (gradient) vs naive";
    check_close(max_error(got, expect), 1e-5, name);
    check(untouched, "kronecker leaves other columns of out untouched");
  }
}

void test_dense() {
  std::mt19937 rng(5);
  const int64_t n = 3, d = 2500, k = 17, ld_out = 20, offset = 2;
  const auto grads = random_floats(n * d, rng);
  const ProjectionKey key{123456789012345ull, 2, kFactorDense, Distribution::Gaussian};
  const auto r = matrix(key, k, d);
  std::vector<double> expect(n * k);
  for (int64_t e = 0; e < n; ++e)
    for (int64_t j = 0; j < k; ++j) {
      double sum = 0;
      for (int64_t c = 0; c < d; ++c) sum += double(r[j * d + c]) * grads[e * d + c];
      expect[e * k + j] = sum;
    }
  std::vector<float> out(n * ld_out, -7.0f);
  DenseJob job;
  job.seed = key.seed;
  job.block = key.block;
  job.distribution = key.distribution;
  job.n = n;
  job.d = d;
  job.k = k;
  job.grads = grads.data();
  job.out = out.data();
  job.ld_out = ld_out;
  job.offset = offset;
  job.threads = 2;
  check(project_dense(job).empty(), "project_dense succeeds");
  std::vector<float> got;
  bool untouched = true;
  for (int64_t e = 0; e < n; ++e)
    for (int64_t j = 0; j < ld_out; ++j) {
      if (j >= offset && j < offset + k) got.push_back(out[e * ld_out + j]);
      else untouched &= out[e * ld_out + j] == -7.0f;
    }
  check_close(max_error(got, expect), 1e-5, "dense projection vs naive");
  check(untouched, "dense projection leaves other columns of out untouched");
}

// The recursion exactly as PropagateArgs documents it, in double, one block at a time.
struct Chunk {
  int64_t dim, steps;
  std::vector<int32_t> blocks, step_rows, step_curv;
  std::vector<float> rows, curv;
  std::vector<double> weights, curv_weights, lr, decay;
  std::vector<double> p0;  // initial propagators
};

void naive_propagate(const Chunk& ch, bool curvature, std::vector<double>& P,
                     std::vector<double>& E) {
  P = ch.p0;
  E.assign(ch.rows.size(), 0.0);
  for (int64_t s = ch.steps - 1; s >= 0; --s) {
    int64_t at = 0;
    for (size_t b = 0; b < ch.blocks.size(); b += 2) {
      const int64_t off = ch.blocks[b], k = ch.blocks[b + 1];
      double* p = P.data() + at;
      at += k * k;
      const double eta = ch.lr[s], c = ch.decay[s];
      auto G = [&](int64_t r, int64_t i) { return double(ch.rows[r * ch.dim + off + i]); };
      auto C = [&](int64_t r, int64_t i) {
        return curvature ? double(ch.curv[r * ch.dim + off + i]) : G(r, i);
      };
      for (int64_t r = ch.step_rows[s]; r < ch.step_rows[s + 1]; ++r)
        for (int64_t j = 0; j < k; ++j) {
          double sum = 0;
          for (int64_t i = 0; i < k; ++i) sum += G(r, i) * p[j * k + i];
          E[r * ch.dim + off + j] = eta * ch.weights[r] * sum;
        }
      const int64_t c0 = curvature ? ch.step_curv[s] : ch.step_rows[s];
      const int64_t c1 = curvature ? ch.step_curv[s + 1] : ch.step_rows[s + 1];
      const auto& w = curvature ? ch.curv_weights : ch.weights;
      std::vector<double> F((c1 - c0) * k);
      for (int64_t r = c0; r < c1; ++r)
        for (int64_t j = 0; j < k; ++j) {
          double sum = 0;
          for (int64_t i = 0; i < k; ++i) sum += C(r, i) * p[j * k + i];
          F[(r - c0) * k + j] = w[r] * sum;
        }
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          double sum = 0;
          for (int64_t r = c0; r < c1; ++r) sum += F[(r - c0) * k + i] * C(r, j);
          p[i * k + j] = c * p[i * k + j] - eta * sum;
        }
    }
  }
}

Chunk make_chunk(std::vector<int32_t> blocks, int64_t dim, std::mt19937& rng) {
  Chunk ch;
  ch.dim = dim;
  ch.steps = 6;
  ch.blocks = blocks;
  const int32_t sizes[] = {3, 0, 5, 2, 4, 3};  // a step with no rows included
  const int32_t curv_sizes[] = {2, 3, 0, 4, 1, 2};
  ch.step_rows = {0};
  ch.step_curv = {0};
  for (int s = 0; s < 6; ++s) {
    ch.step_rows.push_back(ch.step_rows.back() + sizes[s]);
    ch.step_curv.push_back(ch.step_curv.back() + curv_sizes[s]);
  }
  const int64_t n = ch.step_rows.back(), nc = ch.step_curv.back();
  ch.rows = random_floats(n * dim, rng, 0.5f);
  ch.curv = random_floats(nc * dim, rng, 0.5f);
  std::uniform_real_distribution<double> u(0.5, 1.5);
  for (int64_t r = 0; r < n; ++r) ch.weights.push_back(u(rng));
  for (int64_t r = 0; r < nc; ++r) ch.curv_weights.push_back(u(rng));
  for (int s = 0; s < 6; ++s) {
    ch.lr.push_back(0.05 * u(rng));
    ch.decay.push_back(1 - 0.01 * u(rng));
  }
  ch.decay[2] = 1.0;
  for (size_t b = 0; b < blocks.size(); b += 2) {
    const int k = blocks[b + 1];
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) ch.p0.push_back((i == j) + 0.05 * (u(rng) - 1));
  }
  return ch;
}

PropagateJob make_job(Chunk& ch, bool curvature, std::vector<float>& embeddings) {
  PropagateJob job;
  job.dim = ch.dim;
  job.blocks = ch.blocks.data();
  job.block_count = int64_t(ch.blocks.size() / 2);
  job.steps = ch.steps;
  job.rows = ch.rows.data();
  job.step_rows = ch.step_rows.data();
  job.weights = ch.weights.data();
  if (curvature) {
    job.curvature = ch.curv.data();
    job.step_curvature = ch.step_curv.data();
    job.curvature_weights = ch.curv_weights.data();
  }
  job.lr = ch.lr.data();
  job.decay = ch.decay.data();
  job.embeddings = embeddings.data();
  return job;
}

void test_propagate(const char* layout, std::vector<int32_t> blocks, int64_t dim) {
  std::mt19937 rng(3);
  Chunk ch = make_chunk(blocks, dim, rng);
  for (bool curvature : {false, true}) {
    std::vector<double> P, E;
    naive_propagate(ch, curvature, P, E);
    for (bool fp64 : {false, true}) {
      std::vector<float> emb(ch.rows.size(), 0.0f);
      std::vector<float> p32(ch.p0.begin(), ch.p0.end());
      std::vector<double> p64 = ch.p0;
      PropagateJob job = make_job(ch, curvature, emb);
      job.fp64 = fp64;
      job.propagators32 = p32.data();
      job.propagators64 = p64.data();
      int64_t bad = 7;
      const bool ok = propagate(job, &bad).empty();
      char name[160];
      std::snprintf(name, sizeof name, "propagate %s, %s, %s curvature", layout,
                    fp64 ? "fp64" : "fp32", curvature ? "with" : "without");
      check(ok && bad == -1, name);
      const double tol = fp64 ? 1e-12 : 2e-6;
      check_close(max_error(emb, E), fp64 ? 1e-6 : 2e-6, name);  // E is float either way
      if (fp64) check_close(max_error(p64, P), tol, name);
      else check_close(max_error(p32, P), tol, name);
    }
  }
}

void test_propagate_nonfinite() {
  std::mt19937 rng(8);
  const std::vector<int32_t> blocks{0, 4, 5, 3};
  for (bool fp64 : {false, true}) {
    // A NaN in the rows of step 3 shows in that step's E.
    Chunk ch = make_chunk(blocks, 9, rng);
    ch.rows[ch.step_rows[3] * 9 + 6] = NAN;
    std::vector<float> emb(ch.rows.size());
    std::vector<float> p32(ch.p0.begin(), ch.p0.end());
    std::vector<double> p64 = ch.p0;
    PropagateJob job = make_job(ch, false, emb);
    job.fp64 = fp64;
    job.propagators32 = p32.data();
    job.propagators64 = p64.data();
    int64_t bad = 0;
    check(propagate(job, &bad).empty() && bad == 3, "propagate reports the step of bad rows");

    // A NaN in the curvature rows of step 4 spoils P only; step 3's E reveals it and step 4
    // is named.
    Chunk ch2 = make_chunk(blocks, 9, rng);
    ch2.curv[ch2.step_curv[4] * 9 + 1] = NAN;
    std::vector<float> q32(ch2.p0.begin(), ch2.p0.end());
    std::vector<double> q64 = ch2.p0;
    std::vector<float> emb2(ch2.rows.size());
    job = make_job(ch2, true, emb2);
    job.fp64 = fp64;
    job.propagators32 = q32.data();
    job.propagators64 = q64.data();
    check(propagate(job, &bad).empty() && bad == 4, "propagate reports the step that spoilt P");

    // Spoilt at step 0, the last walked: found by the check at the end of the chunk.
    Chunk ch3 = make_chunk(blocks, 9, rng);
    ch3.decay[0] = INFINITY;
    std::vector<float> r32(ch3.p0.begin(), ch3.p0.end());
    std::vector<double> r64 = ch3.p0;
    std::vector<float> emb3(ch3.rows.size());
    job = make_job(ch3, false, emb3);
    job.fp64 = fp64;
    job.propagators32 = r32.data();
    job.propagators64 = r64.data();
    check(propagate(job, &bad).empty() && bad == 0, "propagate checks P at the end of the chunk");
  }
}

void test_score() {
  std::mt19937 rng(2);
  const int64_t n = 7, m = 3, dim = 11;
  const auto e = random_floats(n * dim, rng), t = random_floats(m * dim, rng);
  std::vector<double> expect(n * m);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double sum = 0;
      for (int64_t c = 0; c < dim; ++c) sum += double(e[i * dim + c]) * t[j * dim + c];
      expect[i * m + j] = sum;
    }
  std::vector<float> out(n * m);
  check(score({n, m, dim, e.data(), t.data(), out.data()}).empty(), "score succeeds");
  check_close(max_error(out, expect), 1e-5, "score vs naive");
}

}  // namespace

int main() {
  std::printf("BLAS: %s, %d threads\n", blas_config(), blas_threads());
  test_philox();
  test_projection_matrix();
  for (bool bias : {false, true})
    for (int64_t tokens : {1, 4})
      for (auto dist : {Distribution::Gaussian, Distribution::Rademacher})
        test_kronecker(bias, tokens, dist, tokens == 4);
  test_dense();
  test_propagate("per-layer", {0, 4, 5, 3, 9, 6}, 17);  // column 4, 8 and 15, 16 in no block
  test_propagate("global", {0, 12}, 12);
  test_propagate_nonfinite();
  test_score();
  if (failures == 0) std::printf("all core checks passed\n");
  return failures == 0 ? 0 : 1;
}
