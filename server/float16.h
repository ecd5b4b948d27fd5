// The 16-bit tensor types of the wire (attention-variants.md 6): IEEE 754
// binary16 ("float16") and bfloat16, as little-endian raw_data, to and from
// the kernels' float32.
//
// Widening is exact (every float16 and bfloat16 value is a float32 value).
// Narrowing rounds to nearest, ties to even; magnitudes beyond the type's
// range become infinity and NaN stays NaN, as IEEE conversion does. The
// element functions are branch-free integer and float arithmetic (plain
// C++, no intrinsics: this file is built for the baseline ISA, see
// kernels/simd/ for the per-ISA code) so that the compiler vectorises the
// loops that call them; they need round-to-nearest and no flush-to-zero,
// the default floating-point environment.
//
// Thread-safety: pure functions.
#ifndef ATTNSERVE_SERVER_FLOAT16_H_
#define ATTNSERVE_SERVER_FLOAT16_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

namespace attnserve::server {

static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4,
              "the 16-bit conversions assume IEEE-754 binary32 floats");

inline uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}
inline float BitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

// float16 bits -> float32, exactly.
inline float HalfToFloat(uint16_t half) {
  const uint32_t h = half;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7FFFu;
  // Normal numbers: the exponent rebiased by 127 - 15 = 112; infinity and
  // NaN (exponent 31) by 112 more, to float32's exponent 255.
  const uint32_t normal = (magnitude << 13) + (magnitude >= 0x7C00u ? 0x70000000u : 0x38000000u);
  // Subnormals (and zero), m * 2^-24: 0.5f has an ulp of 2^-24, so the
  // bits of 0.5f plus m are 0.5 + m * 2^-24, and subtracting 0.5 is exact.
  const uint32_t subnormal = FloatBits(BitsFloat(0x3F000000u + magnitude) - 0.5f);
  return BitsFloat(sign | (magnitude < 0x0400u ? subnormal : normal));
}

// float32 -> float16 bits: nearest, ties to even; overflow to infinity.
inline uint16_t FloatToHalf(float value) {
  const uint32_t bits = FloatBits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  // Normal results: rebias the exponent (-112 << 23) and drop 13 mantissa
  // bits, rounding half to even (a carry into the exponent is right).
  const uint32_t normal = (magnitude - 0x38000000u + 0x0FFFu + ((magnitude >> 13) & 1u)) >> 13;
  // Below 2^-14 the result is a subnormal m * 2^-24: adding 0.5f (ulp 2^-24)
  // makes the FPU round |value| to a multiple of 2^-24, half to even.
  const uint32_t subnormal = FloatBits(BitsFloat(magnitude) + 0.5f) - 0x3F000000u;
  // 65520 (0x477FF000) is halfway between 65504 and 65536: ties to even
  // makes it infinity, and everything above.
  const uint32_t special = magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u;
  const uint32_t result = magnitude < 0x38800000u    ? subnormal
                          : magnitude >= 0x477FF000u ? special
                                                     : normal;
  return static_cast<uint16_t>(sign | result);
}

// bfloat16 bits -> float32, exactly: they are its top 16 bits.
inline float BFloat16ToFloat(uint16_t value) { return BitsFloat(uint32_t{value} << 16); }

// float32 -> bfloat16 bits: nearest, ties to even (the carry into the
// exponent gives infinity above the largest bfloat16); NaN stays a quiet NaN.
inline uint16_t FloatToBFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? ((bits >> 16) | 0x0040u) : rounded);
}

// The 16-bit value at `bytes` (little-endian).
inline uint16_t LoadLittleEndian16(const char* bytes) {
  return static_cast<uint16_t>(static_cast<uint8_t>(bytes[0]) |
                               (static_cast<uint16_t>(static_cast<uint8_t>(bytes[1])) << 8));
}

// Writes `n` values as little-endian float16 / bfloat16 to `bytes` (2n bytes).
void NarrowToHalf(const float* values, size_t n, char* bytes);
void NarrowToBFloat16(const float* values, size_t n, char* bytes);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_FLOAT16_H_
