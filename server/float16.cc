#include "server/float16.h"

#include <cstdint>

#include "kernels/isa.h"

namespace attnserve::server {
namespace {

constexpr bool kLittleEndianHost = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// One loop per type, the conversion inlined, so that it vectorises.
template <uint16_t (*Narrow)(float)>
void NarrowTo(const float* values, size_t n, char* bytes) {
  for (size_t i = 0; i < n; ++i) {
    const uint16_t bits = Narrow(values[i]);
    if constexpr (kLittleEndianHost) {
      std::memcpy(bytes + 2 * i, &bits, 2);
    } else {
      bytes[2 * i] = static_cast<char>(bits & 0xFFu);
      bytes[2 * i + 1] = static_cast<char>(bits >> 8);
    }
  }
}

}  // namespace

void NarrowToHalf(const float* values, size_t n, char* bytes) {
  // F16C's conversion where the ISA has it (the same values: RNE, overflow
  // to infinity; a NaN keeps more of its payload, and outputs are finite).
  const auto narrow = kLittleEndianHost ? kernels::Kernels().narrow_float16 : nullptr;
  if (narrow != nullptr) {
    narrow(values, static_cast<int64_t>(n), bytes);
    return;
  }
  NarrowTo<FloatToHalf>(values, n, bytes);
}

void NarrowToBFloat16(const float* values, size_t n, char* bytes) {
  NarrowTo<FloatToBFloat16>(values, n, bytes);
}

}  // namespace attnserve::server
