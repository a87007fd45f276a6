// Device query: which GPU, which driver, and whether this build's kernels run on it.
#include <cstdio>
#include <string>

#include "runtime.cuh"

namespace dvemb::cuda {

namespace {

__global__ void probe_kernel(int* out) { *out = 42; }

std::string gib(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", static_cast<double>(bytes) / (1u << 30));
  return text;
}

DeviceInfo query() {
  DeviceInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  // 0 when libcuda (the driver) cannot be loaded at all.
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  cudaGetLastError();
  if (info.driver_version == 0) {
    info.reason = "no NVIDIA driver found (libcuda.so.1 could not be loaded)";
    return info;
  }
  // Within one major version an older driver may still run the runtime (minor version
  // compatibility): the probe kernel below decides.
  if (info.driver_version / 1000 < info.runtime_version / 1000) {
    info.reason = "the NVIDIA driver supports CUDA " + cuda_version_text(info.driver_version) +
                  ", older than the CUDA " + cuda_version_text(info.runtime_version) +
                  " runtime this addon was built with: update the driver";
    return info;
  }
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    info.reason = e == cudaSuccess || e == cudaErrorNoDevice
                      ? "no CUDA device found (check CUDA_VISIBLE_DEVICES and nvidia-smi)"
                      : std::string("CUDA cannot list devices: ") + cudaGetErrorString(e);
    cudaGetLastError();
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, info.ordinal); e != cudaSuccess) {
    info.reason = std::string("cannot read the device's properties: ") + cudaGetErrorString(e);
    cudaGetLastError();
    return info;
  }
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_bytes = prop.totalGlobalMem;

  // A kernel launch tells whether this build has code for the device (SASS for sm_80 and sm_90,
  // PTX the driver can compile for newer ones) and whether a context can be made at all.
  int* flag = nullptr;
  int value = 0;
  cudaError_t e = cudaMalloc(&flag, sizeof(int));
  if (e == cudaSuccess) {
    probe_kernel<<<1, 1>>>(flag);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpy(&value, flag, sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(flag);
  }
  if (e != cudaSuccess || value != 42) {
    info.reason = e == cudaErrorNoKernelImageForDevice
                      ? "the GPU (" + info.name + ", sm_" + std::to_string(info.major) +
                            std::to_string(info.minor) +
                            ") is older than this build's architectures: rebuild with "
                            "-DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(info.major) +
                            std::to_string(info.minor)
                      : std::string("a test kernel failed on ") + info.name + ": " +
                            cudaGetErrorString(e);
    cudaGetLastError();
    return info;
  }
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) == cudaSuccess) info.free_bytes = free;
  info.usable = true;
  return info;
}

}  // namespace

std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

std::string DeviceInfo::describe() const {
  if (!usable) return "no device: " + reason;
  return name + " (sm_" + std::to_string(major) + std::to_string(minor) + ", " +
         std::to_string(multiprocessors) + " SMs, " + gib(total_bytes) + "; driver CUDA " +
         cuda_version_text(driver_version) + ", runtime " + cuda_version_text(runtime_version) +
         ")";
}

const DeviceInfo& device_info() {
  static const DeviceInfo info = query();
  return info;
}

}  // namespace dvemb::cuda
