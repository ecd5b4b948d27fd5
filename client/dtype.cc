#include "client/dtype.h"

#include <cstring>

namespace attnserve::client {
namespace {

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float BitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// float32 layout: exponent bias 127, 23 fraction bits; binary16: bias 15,
// 10 fraction bits. Rebiasing a normal number's exponent is a subtraction of
// (127 - 15) << 23 from the float32 bits.
constexpr uint32_t kFloat32Infinity = 0x7f800000u;
constexpr uint32_t kRebias = (127u - 15u) << 23;
// The smallest normal binary16, 2^-14, as float32 bits.
constexpr uint32_t kFloat16MinNormal = 0x38800000u;
// 65520 = 65504 (the largest binary16) + half its unit in the last place: a
// tie that rounds to the even neighbour, 2^16, i.e. infinity.
constexpr uint32_t kFloat16Overflow = 0x477ff000u;
// 2^-25, half the smallest binary16 subnormal: up to it (a tie with 0, which
// is even) everything rounds to zero.
constexpr uint32_t kFloat16HalfMinSubnormal = 0x33000000u;

// `value >> shift` rounded to nearest, ties to even (1 <= shift <= 31).
uint32_t ShiftRightRoundingToEven(uint32_t value, int shift) {
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rest = value & ((1u << shift) - 1);
  uint32_t result = value >> shift;
  if (rest > half || (rest == half && (result & 1u))) ++result;
  return result;
}

}  // namespace

uint16_t Float32ToFloat16Bits(float value) {
  const uint32_t bits = FloatBits(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > kFloat32Infinity) {
    // NaN: keep the payload's high bits and set the quiet bit, which also
    // keeps a payload that lives only in the low 13 bits from becoming inf.
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  if (magnitude >= kFloat16Overflow) return static_cast<uint16_t>(sign | 0x7c00u);
  if (magnitude >= kFloat16MinNormal) {
    // A carry out of the fraction moves into the exponent, which is right:
    // it is the next binade's first value (kFloat16Overflow excludes inf).
    return static_cast<uint16_t>(sign | ShiftRightRoundingToEven(magnitude - kRebias, 13));
  }
  if (magnitude <= kFloat16HalfMinSubnormal) return sign;
  // A subnormal result: the value in units of 2^-24. The float32 is normal
  // here (>= 2^-25), value = significand * 2^(exponent - 150), so the count
  // of units is significand >> (126 - exponent), with 14 <= shift <= 24.
  // Rounding up to 0x400 gives the smallest normal's encoding, as it should.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  return static_cast<uint16_t>(
      sign | ShiftRightRoundingToEven(significand, static_cast<int>(126u - exponent)));
}

float Float16BitsToFloat32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  int exponent = (bits >> 10) & 0x1f;
  uint32_t fraction = bits & 0x3ffu;
  if (exponent == 0x1f) return BitsFloat(sign | kFloat32Infinity | (fraction << 13));
  if (exponent == 0) {
    if (fraction == 0) return BitsFloat(sign);
    // Subnormal: fraction * 2^-24 is a normal float32; shift the fraction up
    // to an implicit leading 1, one exponent step down per shift.
    exponent = 1;
    while ((fraction & 0x400u) == 0) {
      fraction <<= 1;
      --exponent;
    }
    fraction &= 0x3ffu;
  }
  // Rebiased: exponent - 15 + 127 (>= 103 for the smallest subnormal).
  return BitsFloat(sign | (static_cast<uint32_t>(exponent + 112) << 23) | (fraction << 13));
}

uint16_t Float32ToBfloat16Bits(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7fffffffu) > kFloat32Infinity) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  }
  // The largest finite float32 rounds up to infinity's bits (0x7f80), as an
  // IEEE conversion does; subnormals round like everything else.
  return static_cast<uint16_t>(ShiftRightRoundingToEven(bits & 0x7fffffffu, 16) |
                               ((bits >> 16) & 0x8000u));
}

float Bfloat16BitsToFloat32(uint16_t bits) { return BitsFloat(static_cast<uint32_t>(bits) << 16); }

}  // namespace attnserve::client
