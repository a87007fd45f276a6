// Small helpers shared by the core. The core never throws: it may be built with
// -fno-exceptions (node-gyp's default), so large buffers come from nothrow new and every entry
// point reports failure as an Error value.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace dvemb {

// Empty on success, otherwise a message for the caller.
using Error = std::string;

// Uninitialised array, or null when the memory is not there.
template <typename T>
std::unique_ptr<T[]> allocate(size_t count) {
  return std::unique_ptr<T[]>(new (std::nothrow) T[count > 0 ? count : 1]);
}

inline Error out_of_memory(const char* what, size_t bytes) {
  return std::string("out of memory allocating ") + std::to_string(bytes) + " bytes for " + what;
}

// Calls body(begin, end) on disjoint parts of [0, count), using up to `threads` threads
// (the calling thread does the first part).
template <typename Body>
void parallel_for(int64_t count, int threads, const Body& body) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, count));
  if (parts == 1) {
    body(int64_t{0}, count);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(parts - 1);
  for (int64_t p = 1; p < parts; ++p) {
    pool.emplace_back([&body, p, parts, count] { body(count * p / parts, count * (p + 1) / parts); });
  }
  body(int64_t{0}, count / parts);
  for (auto& t : pool) t.join();
}

}  // namespace dvemb
