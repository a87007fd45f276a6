// The GPU this process uses, and how CUDA calls report failure. Plain C++: no CUDA header, so
// the Node binding (native/addon-cuda/) can include it.
#pragma once
#include <cstdint>
#include <string>
#include <utility>

namespace dvemb::cuda {

// How a CUDA call ended. NoDevice and OutOfMemory leave the caller's outputs as they were (or
// only partly written, and rewritten whole by a retry), so the CPU core may take the call over.
enum class Status { Ok, NoDevice, OutOfMemory, Failed };

struct Result {
  Status status = Status::Ok;
  std::string message;

  bool ok() const { return status == Status::Ok; }
  bool cpu_can_take_over() const {
    return status == Status::NoDevice || status == Status::OutOfMemory;
  }
};

inline Result failed(Status status, std::string message) { return {status, std::move(message)}; }

struct DeviceInfo {
  bool usable = false;
  std::string reason;  // why not, when !usable: says what to fix
  int ordinal = 0;
  std::string name;
  int major = 0, minor = 0;                      // compute capability
  int driver_version = 0, runtime_version = 0;  // 1000 * major + 10 * minor, 0 when absent
  int multiprocessors = 0;
  uint64_t total_bytes = 0, free_bytes = 0;     // free at query time

  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB; driver CUDA 13.0, runtime 13.0)", or
  // "no device: <reason>".
  std::string describe() const;
};

// Device 0 (after CUDA_VISIBLE_DEVICES), queried once per process: its name, capability and
// memory, and whether a kernel of this build runs on it. Never throws, never aborts.
const DeviceInfo& device_info();

// "13.0" from 13000.
std::string cuda_version_text(int version);

}  // namespace dvemb::cuda
