// Checks of the CUDA backend that need no GPU, run by ctest wherever nvcc is found:
//  - the projection entries as the kernels compute them (native/core/philox.h under nvcc, and
//    the tile mapping of philox.cuh), run here as host code, against the CPU core's
//    fill_projection: Rademacher bit for bit, Gaussian within one float32 ulp;
//  - the planning of the GPU backward pass (block layouts, chunks of steps);
//  - the device query, which must explain itself when there is no GPU.
// Built with cuBLAS (DVEMB_CUDA_TEST_GPU) and run where a GPU works, it also compares each GPU
// operation with the CPU core.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../core/philox.h"
#include "../../core/projection.h"
#include "../../core/propagator.h"
#include "../../core/scoring.h"
#include "../backend.h"
#include "../philox.cuh"
#include "../plan.h"

using namespace dvemb;

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// Distance in float32 ulps (same-sign values; entries of opposite sign are far apart anyway).
int64_t ulps(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return std::llabs(int64_t{ia} - int64_t{ib});
}

void test_philox_known_answers() {
  // Salmon et al.'s known answers, through the __host__ __device__ build of the generator.
  uint32_t out[4];
  Philox4x32::run(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, out);
  check(out[0] == 0xd16cfe09 && out[1] == 0x94fdcceb && out[2] == 0x5001e420 &&
            out[3] == 0x24126ea1,
        "Philox4x32-10 known answer under nvcc");
  Philox4x32::run(0, 0, 0, 0, 0, 0, out);
  check(out[0] == 0x6627e8d5 && out[3] == 0x9b00dbd8, "Philox4x32-10 zero known answer");
}

// The kernels' entries against the CPU core for many keys, shapes and column tiles.
void test_entries_match_cpu() {
  const uint64_t seeds[] = {0, 1, 42, 0xffffffffull, (uint64_t{1} << 32) + 5,
                            (uint64_t{1} << 53) - 1, 123456789012345ull};
  const uint32_t blocks[] = {0, 1, 7, 65535, 4000000000u};
  const int64_t shapes[][3] = {{1, 0, 1}, {3, 0, 17}, {17, 5, 64}, {64, 1000, 33}, {5, 4096, 7}};
  int64_t entries = 0, gaussian_exact = 0, worst = 0;
  bool rademacher_exact = true;
  for (uint64_t seed : seeds) {
    for (uint32_t block : blocks) {
      for (uint32_t factor : {kFactorDense, kFactorIn, kFactorOut}) {
        for (auto dist : {Distribution::Rademacher, Distribution::Gaussian}) {
          for (const auto& shape : shapes) {
            const int64_t rows = shape[0], col_start = shape[1], cols = shape[2];
            const ProjectionKey key{seed, block, factor, dist};
            std::vector<float> cpu(rows * cols);
            fill_projection(key, rows, col_start, cols, cpu.data(), cols, 1);
            const cuda::TileParams p = cuda::tile_params(key, rows, col_start);
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t c = 0; c < cols; ++c) {
                const float gpu = cuda::tile_entry(p, r, c);
                const float want = cpu[r * cols + c];
                ++entries;
                if (dist == Distribution::Rademacher) {
                  rademacher_exact &= std::memcmp(&gpu, &want, 4) == 0;
                } else {
                  const int64_t d = ulps(gpu, want);
                  worst = std::max(worst, d);
                  gaussian_exact += d == 0;
                }
              }
            }
          }
        }
      }
    }
  }
  std::printf("projection entries: %lld compared, Gaussian worst %lld ulp (%lld exact)\n",
              static_cast<long long>(entries), static_cast<long long>(worst),
              static_cast<long long>(gaussian_exact));
  check(rademacher_exact, "Rademacher entries of the kernels equal the CPU's bit for bit");
  check(worst <= 1, "Gaussian entries of the kernels are within one float32 ulp of the CPU's");
}

void test_plan_blocks() {
  const int32_t uniform[] = {0, 8, 8, 8, 16, 8};
  auto a = cuda::plan_blocks(uniform, 3);
  check(a.strided && a.stride == 8 && a.width == 24 && a.p_size == 192,
        "uniform contiguous blocks are strided");
  const int32_t gapped[] = {0, 8, 10, 8, 20, 8};
  auto b = cuda::plan_blocks(gapped, 3);
  check(b.strided && b.stride == 10, "evenly spaced blocks with gaps are strided");
  const int32_t irregular[] = {0, 8, 8, 8, 20, 8};
  auto c = cuda::plan_blocks(irregular, 3);
  check(!c.strided && c.groups.size() == 1 && c.groups[0].count == 3,
        "unevenly spaced blocks of one k are one pointer-array group");
  const int32_t mixed[] = {0, 16, 16, 24, 40, 8, 48, 16};
  auto d = cuda::plan_blocks(mixed, 4);
  check(!d.strided && d.groups.size() == 3, "blocks of three sizes are three groups");
  check(d.order.size() == 4 && d.order[0] == 2 && d.order[1] == 0 && d.order[2] == 3 &&
            d.order[3] == 1,
        "pointer-array slots are grouped by k, in block order within a group");
  check(d.blocks[3].p_offset == 16 * 16 + 24 * 24 + 8 * 8, "P offsets follow block order");
  const int32_t single[] = {0, 48};
  check(cuda::plan_blocks(single, 1).strided, "one block is strided (a batch of one)");
  const int32_t descending[] = {8, 8, 0, 8};
  check(!cuda::plan_blocks(descending, 2).strided, "blocks listed right to left use pointers");
}

void test_plan_chunks() {
  std::vector<int32_t> step_rows{0}, step_curv{0};
  std::mt19937 rng(4);
  const int steps = 40;
  for (int s = 0; s < steps; ++s) {
    step_rows.push_back(step_rows.back() + static_cast<int>(rng() % 5));  // some steps empty
    step_curv.push_back(step_curv.back() + static_cast<int>(rng() % 3));
  }
  PropagateJob job;
  job.steps = steps;
  job.step_rows = step_rows.data();
  const float dummy = 0;
  job.curvature = &dummy;
  job.step_curvature = step_curv.data();
  const cuda::ChunkCost cost{100, 60, 8};
  for (uint64_t budget : {uint64_t{0}, uint64_t{150}, uint64_t{700}, uint64_t{1} << 40}) {
    const auto chunks = cuda::plan_chunks(job, cost, budget);
    bool ok = !chunks.empty() && chunks.front().end == steps && chunks.back().first == 0;
    for (size_t j = 0; j < chunks.size(); ++j) {
      const auto& c = chunks[j];
      ok &= c.first < c.end;
      ok &= c.row_begin == step_rows[c.first] && c.row_end == step_rows[c.end];
      ok &= c.curv_begin == step_curv[c.first] && c.curv_end == step_curv[c.end];
      ok &= c.end - c.first == 1 || cuda::chunk_bytes(c, cost) <= budget;
      if (j > 0) ok &= c.end == chunks[j - 1].first;
    }
    char name[96];
    std::snprintf(name, sizeof name, "chunks of budget %llu cover the steps in walking order",
                  static_cast<unsigned long long>(budget));
    check(ok, name);
    if (budget == 0) check(chunks.size() == steps, "a budget of 0 gives one step a chunk");
    if (budget == uint64_t{1} << 40) check(chunks.size() == 1, "a large budget gives one chunk");
  }
}

void test_device_query() {
  const cuda::DeviceInfo& info = cuda::device_info();
  std::printf("device: %s\n", info.describe().c_str());
  if (info.usable) {
    check(!info.name.empty() && info.major >= 1 && info.total_bytes > 0,
          "a usable device has a name, a capability and memory");
  } else {
    check(!info.reason.empty() && info.describe().rfind("no device: ", 0) == 0,
          "an unusable device says why");
  }
  check(&info == &cuda::device_info(), "the device is queried once");
  check(cuda::cuda_version_text(13000) == "13.0" && cuda::cuda_version_text(12080) == "12.8",
        "CUDA versions print as major.minor");
}

#ifdef DVEMB_CUDA_TEST_GPU
// GPU vs CPU core, where a GPU works. The Node tests (test/cuda.test.ts) check the same through
// the addon; this one needs neither Node nor the binding.

template <typename T>
double rel_err(const std::vector<T>& a, const std::vector<T>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

std::vector<float> random_floats(size_t count, std::mt19937& rng, float sd) {
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(count);
  for (auto& x : v) x = normal(rng);
  return v;
}

void gpu_projection_matrix() {
  for (auto dist : {Distribution::Rademacher, Distribution::Gaussian}) {
    const ProjectionKey key{(uint64_t{3} << 32) + 9, 5, kFactorOut, dist};
    std::vector<float> cpu(70 * 300), gpu(70 * 300);
    fill_projection(key, 70, 0, 300, cpu.data(), 300, 1);
    const cuda::Result r = cuda::projection_matrix(key, 70, 300, gpu.data());
    int64_t worst = 0;
    for (size_t i = 0; i < cpu.size(); ++i) worst = std::max(worst, ulps(cpu[i], gpu[i]));
    std::printf("GPU projection matrix (%s): worst %lld ulp\n",
                dist == Distribution::Gaussian ? "gaussian" : "rademacher",
                static_cast<long long>(worst));
    check(r.ok() && worst <= (dist == Distribution::Gaussian ? 1 : 0),
          "GPU projection matrix equals the CPU's");
  }
}

void gpu_propagate(const std::vector<int32_t>& blocks, int64_t dim, bool fp64, bool curvature,
                   uint64_t chunk_bytes) {
  std::mt19937 rng(21);
  const int64_t steps = 12;
  std::vector<int32_t> step_rows{0}, step_curv{0};
  for (int s = 0; s < steps; ++s) {
    step_rows.push_back(step_rows.back() + (s == 4 ? 0 : 3 + s % 4));
    step_curv.push_back(step_curv.back() + (s == 7 ? 0 : 1 + s % 3));
  }
  const int64_t n = step_rows.back(), nc = step_curv.back();
  const auto rows = random_floats(n * dim, rng, 0.3f);
  const auto curv = random_floats(nc * dim, rng, 0.3f);
  std::uniform_real_distribution<double> u(0.1, 0.3);
  std::vector<double> w(n), cw(nc), lr(steps), decay(steps);
  for (auto& x : w) x = u(rng);
  for (auto& x : cw) x = u(rng);
  for (auto& x : lr) x = u(rng) / 2;
  for (auto& x : decay) x = 1 - u(rng) / 10;
  int64_t p_size = 0;
  for (size_t b = 1; b < blocks.size(); b += 2) p_size += int64_t{blocks[b]} * blocks[b];
  std::vector<double> p0(p_size, 0.0);
  for (size_t b = 1, at = 0; b < blocks.size(); at += size_t(blocks[b]) * blocks[b], b += 2) {
    for (int i = 0; i < blocks[b]; ++i) p0[at + i * blocks[b] + i] = 1;
  }
  auto make = [&](std::vector<float>& emb, std::vector<float>& p32, std::vector<double>& p64) {
    PropagateJob job;
    job.fp64 = fp64;
    job.dim = dim;
    job.blocks = blocks.data();
    job.block_count = int64_t(blocks.size() / 2);
    job.propagators32 = p32.data();
    job.propagators64 = p64.data();
    job.steps = steps;
    job.rows = rows.data();
    job.step_rows = step_rows.data();
    job.weights = w.data();
    if (curvature) {
      job.curvature = curv.data();
      job.step_curvature = step_curv.data();
      job.curvature_weights = cw.data();
    }
    job.lr = lr.data();
    job.decay = decay.data();
    job.embeddings = emb.data();
    return job;
  };
  std::vector<float> emb_c(n * dim, -3.0f), emb_g(n * dim, -3.0f);
  std::vector<float> p32_c(p0.begin(), p0.end()), p32_g = p32_c;
  std::vector<double> p64_c = p0, p64_g = p0;
  int64_t bad_c = 0, bad_g = 0;
  const bool ok_c = propagate(make(emb_c, p32_c, p64_c), &bad_c).empty();
  cuda::Options options;
  options.chunk_bytes = chunk_bytes;
  const cuda::Result r = cuda::propagate(make(emb_g, p32_g, p64_g), options, &bad_g);
  const double e_err = rel_err(emb_g, emb_c);
  const double p_err = fp64 ? rel_err(p64_g, p64_c) : rel_err(p32_g, p32_c);
  std::printf("GPU propagate (%zu blocks, %s, %s, chunk %llu B): E %.2g, P %.2g %s\n",
              blocks.size() / 2, fp64 ? "fp64" : "fp32", curvature ? "curvature" : "fisher",
              static_cast<unsigned long long>(chunk_bytes), e_err, p_err, r.message.c_str());
  check(ok_c && r.ok() && bad_c == -1 && bad_g == -1, "GPU propagate runs");
  check(e_err < (fp64 ? 1e-7 : 1e-5) && p_err < (fp64 ? 1e-12 : 1e-5),
        "GPU propagate equals the CPU core");
}

void gpu_tests() {
  if (!cuda::device_info().usable) {
    std::printf("GPU comparisons skipped: %s\n", cuda::device_info().reason.c_str());
    return;
  }
  gpu_projection_matrix();
  const std::vector<int32_t> strided{0, 32, 32, 32, 64, 32};
  const std::vector<int32_t> pointers{0, 32, 40, 32, 72, 32};
  const std::vector<int32_t> mixed{0, 16, 16, 24, 40, 8};
  const std::vector<int32_t> global{0, 48};
  for (bool fp64 : {false, true}) {
    for (bool curvature : {false, true}) {
      gpu_propagate(strided, 96, fp64, curvature, 0);
      gpu_propagate(pointers, 104, fp64, curvature, 0);
      gpu_propagate(mixed, 48, fp64, curvature, 0);
      gpu_propagate(global, 48, fp64, curvature, 0);
      gpu_propagate(mixed, 48, fp64, curvature, 4096);  // many chunks: the streaming path
    }
  }
}
#endif

}  // namespace

int main() {
  test_philox_known_answers();
  test_entries_match_cpu();
  test_plan_blocks();
  test_plan_chunks();
  test_device_query();
#ifdef DVEMB_CUDA_TEST_GPU
  gpu_tests();
#endif
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all CUDA host checks passed\n");
  return 0;
}
