#include "tests/testing/half_float.h"

#include <cmath>
#include <cstring>

namespace attnserve::testing {
namespace {

uint32_t Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float FromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// `value >> shift` rounded to nearest, ties to even (1 <= shift <= 31).
uint32_t ShiftRoundEven(uint32_t value, int shift) {
  const uint32_t kept = value >> shift;
  const uint32_t rest = value & ((uint32_t{1} << shift) - 1);
  const uint32_t half = uint32_t{1} << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1u) != 0)) ? 1u : 0u);
}

}  // namespace

const char* GoldenDtypeName(GoldenDtype dtype) {
  switch (dtype) {
    case GoldenDtype::kFloat32:
      return "float32";
    case GoldenDtype::kFloat16:
      return "float16";
    case GoldenDtype::kBfloat16:
      return "bfloat16";
  }
  return "?";
}

int GoldenDtypeSize(GoldenDtype dtype) { return dtype == GoldenDtype::kFloat32 ? 4 : 2; }

uint16_t FloatToHalfBits(float value) {
  const uint32_t bits = Bits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  // 65520 = 65504 + half an ulp: from there RNE rounds to infinity (65504's
  // mantissa is odd).
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  const int exponent = static_cast<int>(magnitude >> 23);  // biased by 127
  const uint32_t mantissa = magnitude & 0x7fffffu;
  if (exponent < 113) {
    // Below 2^-14: a binary16 subnormal, a multiple of 2^-24. The float is
    // (mantissa | 2^23) * 2^(exponent - 150), i.e. that >> (126 - exponent)
    // units of 2^-24. Float subnormals (exponent 0) are far below 2^-25.
    if (exponent < 102) return sign;  // < 2^-25: rounds to zero
    const uint32_t units = ShiftRoundEven(mantissa | 0x800000u, 126 - exponent);
    return static_cast<uint16_t>(sign | units);  // 0x400 (carry) is the smallest normal
  }
  const uint32_t half = (static_cast<uint32_t>(exponent - 112) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  const uint32_t rounded = half + ((rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ? 1u : 0u);
  return static_cast<uint16_t>(sign | rounded);  // a carry into the exponent is right
}

float HalfBitsToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return FromBits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // exact
    return sign != 0 ? -magnitude : magnitude;
  }
  return FromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t FloatToBfloat16Bits(float value) {
  const uint32_t bits = Bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  // Adding 0x7fff plus the kept lowest bit rounds to nearest even; a carry
  // out of the mantissa moves the exponent up, to infinity at the top.
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

float Bfloat16BitsToFloat(uint16_t bits) { return FromBits(static_cast<uint32_t>(bits) << 16); }

float RoundTo(GoldenDtype dtype, float value) {
  switch (dtype) {
    case GoldenDtype::kFloat32:
      return value;
    case GoldenDtype::kFloat16:
      return HalfBitsToFloat(FloatToHalfBits(value));
    case GoldenDtype::kBfloat16:
      return Bfloat16BitsToFloat(FloatToBfloat16Bits(value));
  }
  return value;
}

std::string EncodeRaw(const std::vector<float>& values, GoldenDtype dtype) {
  std::string bytes;
  bytes.reserve(values.size() * static_cast<size_t>(GoldenDtypeSize(dtype)));
  for (float value : values) {
    uint32_t bits = 0;
    int size = 4;
    switch (dtype) {
      case GoldenDtype::kFloat32:
        bits = Bits(value);
        break;
      case GoldenDtype::kFloat16:
        bits = FloatToHalfBits(value), size = 2;
        break;
      case GoldenDtype::kBfloat16:
        bits = FloatToBfloat16Bits(value), size = 2;
        break;
    }
    for (int b = 0; b < size; ++b) bytes.push_back(static_cast<char>((bits >> (8 * b)) & 0xffu));
  }
  return bytes;
}

std::vector<float> DecodeRaw(absl::string_view bytes, GoldenDtype dtype) {
  const size_t size = static_cast<size_t>(GoldenDtypeSize(dtype));
  std::vector<float> values;
  values.reserve(bytes.size() / size);
  for (size_t at = 0; at + size <= bytes.size(); at += size) {
    uint32_t bits = 0;
    for (size_t b = 0; b < size; ++b) {
      bits |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + b])) << (8 * b);
    }
    switch (dtype) {
      case GoldenDtype::kFloat32:
        values.push_back(FromBits(bits));
        break;
      case GoldenDtype::kFloat16:
        values.push_back(HalfBitsToFloat(static_cast<uint16_t>(bits)));
        break;
      case GoldenDtype::kBfloat16:
        values.push_back(Bfloat16BitsToFloat(static_cast<uint16_t>(bits)));
        break;
    }
  }
  return values;
}

double UlpOf(double x, GoldenDtype dtype) {
  int mantissa_bits = 0, min_exponent = 0;
  switch (dtype) {
    case GoldenDtype::kFloat32:
      return 0;
    case GoldenDtype::kFloat16:
      mantissa_bits = 10, min_exponent = -14;
      break;
    case GoldenDtype::kBfloat16:
      mantissa_bits = 7, min_exponent = -126;
      break;
  }
  const double magnitude = std::abs(x);
  if (!(magnitude >= std::ldexp(1.0, min_exponent))) {
    return std::ldexp(1.0, min_exponent - mantissa_bits);
  }
  return std::ldexp(1.0, std::ilogb(magnitude) - mantissa_bits);
}

}  // namespace attnserve::testing
