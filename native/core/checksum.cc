#include "checksum.h"

#include <libdeflate.h>

namespace dvemb {

uint32_t crc32(uint32_t previous, const void* data, size_t bytes) {
  return libdeflate_crc32(previous, data, bytes);
}

}  // namespace dvemb
