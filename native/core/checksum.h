// CRC-32 (the zlib/gzip polynomial) of trajectory chunks, through libdeflate's carry-less-multiply
// kernels: several times faster than zlib's table code, which matters because every chunk is
// checked while the backward pass computes on the same two cores.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dvemb {

uint32_t crc32(uint32_t previous, const void* data, size_t bytes);

}  // namespace dvemb
