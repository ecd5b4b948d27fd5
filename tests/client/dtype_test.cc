// client/dtype.h: float32 <-> float16/bfloat16 bit conversions, checked
// exhaustively where the space is small (every 16-bit pattern widens and
// narrows back to itself) and against an independent reference -- the
// double-precision rounding of the exact value to the format's grid -- on
// every rounding case the formats have: ties to even, overflow to infinity,
// subnormals, signed zeros, NaN. Plus MakeTensor/TensorValues/TensorBits16 of
// client.h for 16-bit tensors.
#include "client/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnserve::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// std::bit_cast of C++20.
template <typename To, typename From>
To BitCast(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

uint32_t Bits(float value) { return BitCast<uint32_t>(value); }
float FromBits(uint32_t bits) { return BitCast<float>(bits); }

// The reference: the format's value nearest to `x` (ties to the even
// significand), computed in double from the format's parameters alone
// (`fraction_bits`, `min_exponent` of the normal range, `max_finite`), then
// encoded by searching the widening function's image. Independent of the
// bit tricks of dtype.cc.
double RoundToFormat(double x, int fraction_bits, int min_exponent, double max_finite) {
  if (x == 0) return x;
  const double magnitude = std::fabs(x);
  int exponent = std::ilogb(magnitude);
  if (exponent < min_exponent) exponent = min_exponent;  // subnormal spacing
  const double unit = std::ldexp(1.0, exponent - fraction_bits);
  const double units = magnitude / unit;  // exact: a power-of-two scaling
  double rounded = std::floor(units);
  const double rest = units - rounded;
  if (rest > 0.5 || (rest == 0.5 && std::fmod(rounded, 2.0) == 1.0)) rounded += 1;
  double result = rounded * unit;
  // Beyond the largest finite value by half a unit or more: infinity (the
  // rounding above reaches 2^(emax+1) exactly in that case).
  if (result > max_finite) result = std::numeric_limits<double>::infinity();
  return std::copysign(result, x);
}

double RoundToFloat16(float x) { return RoundToFormat(x, 10, -14, 65504.0); }
double RoundToBfloat16(float x) {
  return RoundToFormat(x, 7, -126, static_cast<double>(FromBits(0x7f7f0000u)));
}

TEST(Float16Test, EveryBitPatternWidensAndNarrowsBackToItself) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float value = Float16BitsToFloat32(h);
    const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
    if (nan) {
      EXPECT_TRUE(std::isnan(value)) << std::hex << bits;
      // The quiet bit is set on narrowing; the rest of the payload and the sign stay.
      EXPECT_EQ(Float32ToFloat16Bits(value), h | 0x200) << std::hex << bits;
      continue;
    }
    EXPECT_EQ(Float32ToFloat16Bits(value), h) << std::hex << bits;
  }
}

TEST(Float16Test, WideningIsExact) {
  EXPECT_EQ(Float16BitsToFloat32(0x3c00), 1.0f);
  EXPECT_EQ(Float16BitsToFloat32(0xc000), -2.0f);
  EXPECT_EQ(Float16BitsToFloat32(0x7bff), 65504.0f);
  EXPECT_EQ(Float16BitsToFloat32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(Float16BitsToFloat32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(Float16BitsToFloat32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(Float16BitsToFloat32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(Float16BitsToFloat32(0x2e66), 0.0999755859375f);
  EXPECT_EQ(Float16BitsToFloat32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Float16BitsToFloat32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bits(Float16BitsToFloat32(0x8000)), 0x80000000u);  // -0 keeps its sign
  // Every value is the format's formula (-1)^s * 2^(e-15) * (1 + f/1024), or
  // 2^-14 * f/1024 for e = 0.
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    const int e = static_cast<int>(bits >> 10);
    const int f = static_cast<int>(bits & 0x3ff);
    const double expected = e == 0 ? std::ldexp(f, -24) : std::ldexp(1024 + f, e - 25);
    ASSERT_EQ(static_cast<double>(Float16BitsToFloat32(static_cast<uint16_t>(bits))), expected)
        << bits;
  }
}

TEST(Float16Test, TiesRoundToEven) {
  // 1 + 2^-11 lies halfway between 1 (even) and 1 + 2^-10 (odd): down.
  EXPECT_EQ(Float32ToFloat16Bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3 * 2^-11 lies halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even): up.
  EXPECT_EQ(Float32ToFloat16Bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Just above a tie goes up, just below goes down.
  EXPECT_EQ(Float32ToFloat16Bits(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  EXPECT_EQ(Float32ToFloat16Bits(std::nextafter(1.0f + 3 * std::ldexp(1.0f, -11), 0.0f)), 0x3c01);
  // A tie whose rounding carries into the exponent: 2 - 2^-11 -> 2.
  EXPECT_EQ(Float32ToFloat16Bits(2.0f - std::ldexp(1.0f, -11)), 0x4000);
  // Ties among subnormals: 2.5 and 3.5 units of 2^-24.
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(2.5f, -24)), 0x0002);
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(3.5f, -24)), 0x0004);
  EXPECT_EQ(Float32ToFloat16Bits(-std::ldexp(3.5f, -24)), 0x8004);
}

TEST(Float16Test, OverflowBecomesInfinity) {
  EXPECT_EQ(Float32ToFloat16Bits(65504.0f), 0x7bff);
  // Below 65520 (= 65504 + half a unit): 65504; at it, a tie that rounds to
  // the even neighbour 2^16, i.e. infinity.
  EXPECT_EQ(Float32ToFloat16Bits(65519.996f), 0x7bff);
  EXPECT_EQ(Float32ToFloat16Bits(65520.0f), 0x7c00);
  EXPECT_EQ(Float32ToFloat16Bits(-65520.0f), 0xfc00);
  EXPECT_EQ(Float32ToFloat16Bits(1e6f), 0x7c00);
  EXPECT_EQ(Float32ToFloat16Bits(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(Float32ToFloat16Bits(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(Float32ToFloat16Bits(-std::numeric_limits<float>::infinity()), 0xfc00);
}

TEST(Float16Test, SubnormalsAndUnderflowToSignedZero) {
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(1.0f, -15)), 0x0200);
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(1.0f, -24)), 0x0001);
  // Half the smallest subnormal is a tie with 0 (even): zero; above it: 2^-24.
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(Float32ToFloat16Bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(Float32ToFloat16Bits(-std::ldexp(1.0f, -26)), 0x8000);
  EXPECT_EQ(Float32ToFloat16Bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(Float32ToFloat16Bits(-0.0f), 0x8000);
  // The largest subnormal rounding up into the smallest normal.
  EXPECT_EQ(Float32ToFloat16Bits(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);
}

TEST(Float16Test, NanStaysNanWithItsSign) {
  const float quiet = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(Float32ToFloat16Bits(quiet) & 0x7e00, 0x7e00);
  EXPECT_EQ(Float32ToFloat16Bits(-quiet) & 0x8000, 0x8000);
  // A payload only in the low 13 bits would truncate to infinity's pattern.
  const uint16_t low_payload = Float32ToFloat16Bits(FromBits(0x7f800001u));
  EXPECT_TRUE(std::isnan(Float16BitsToFloat32(low_payload))) << std::hex << low_payload;
  EXPECT_TRUE(std::isnan(Float16BitsToFloat32(0x7c01)));
  EXPECT_TRUE(std::isnan(Float16BitsToFloat32(0xfe00)));
}

// Every float32 with these high bits against the double-precision reference:
// sign and exponent ranges around float16's normal, subnormal and overflow
// boundaries, every fraction near ties (low 13 bits all patterns for some).
TEST(Float16Test, MatchesTheReferenceAcrossTheRange) {
  std::mt19937 random(20261205);  // fixed seed
  std::uniform_int_distribution<uint32_t> any;
  int64_t checked = 0;
  auto check = [&](uint32_t bits) {
    const float value = FromBits(bits);
    if (std::isnan(value)) return;
    const double expected = RoundToFloat16(value);
    const float got = Float16BitsToFloat32(Float32ToFloat16Bits(value));
    ASSERT_EQ(static_cast<double>(got), expected) << std::hex << bits << " " << value;
    ASSERT_EQ(std::signbit(got), std::signbit(value)) << std::hex << bits;
    ++checked;
  };
  for (uint32_t exponent = 100; exponent <= 145; ++exponent) {  // 2^-27 .. 2^18
    for (uint32_t low = 0; low < (1u << 13); ++low) {
      const uint32_t fraction = (random() & 0x7fe000u) | low;
      check((exponent << 23) | fraction);
      check(0x80000000u | (exponent << 23) | fraction);
    }
  }
  for (int i = 0; i < 1000000; ++i) check(any(random));
  EXPECT_GT(checked, 1000000);
}

TEST(Bfloat16Test, EveryBitPatternWidensAndNarrowsBackToItself) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto b = static_cast<uint16_t>(bits);
    const float value = Bfloat16BitsToFloat32(b);
    EXPECT_EQ(Bits(value), bits << 16);  // the top half of a float32, exactly
    const bool nan = (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0;
    EXPECT_EQ(Float32ToBfloat16Bits(value), nan ? (b | 0x40) : b) << std::hex << bits;
  }
}

TEST(Bfloat16Test, TiesOverflowSubnormalsAndNan) {
  // 1 + 2^-8: halfway between 1 (even) and 1 + 2^-7: down; 1 + 3 * 2^-8: up.
  EXPECT_EQ(Float32ToBfloat16Bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(Float32ToBfloat16Bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(Float32ToBfloat16Bits(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81);
  EXPECT_EQ(Float32ToBfloat16Bits(0.1f), 0x3dcd);  // 0x3dcccccd rounds up
  // The largest bfloat16 is 0x7f7f; from half a unit above it: infinity.
  EXPECT_EQ(Float32ToBfloat16Bits(FromBits(0x7f7f7fffu)), 0x7f7f);
  EXPECT_EQ(Float32ToBfloat16Bits(FromBits(0x7f7f8000u)), 0x7f80);
  EXPECT_EQ(Float32ToBfloat16Bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(Float32ToBfloat16Bits(-std::numeric_limits<float>::max()), 0xff80);
  EXPECT_EQ(Float32ToBfloat16Bits(std::numeric_limits<float>::infinity()), 0x7f80);
  // Subnormals keep their top bits, rounded: 0x00008000 is a tie to 0 (even),
  // 0x00018000 a tie to 2, the largest subnormal rounds up to the smallest normal.
  EXPECT_EQ(Float32ToBfloat16Bits(FromBits(0x00008000u)), 0x0000);
  EXPECT_EQ(Float32ToBfloat16Bits(FromBits(0x00018000u)), 0x0002);
  EXPECT_EQ(Float32ToBfloat16Bits(FromBits(0x007fffffu)), 0x0080);
  EXPECT_EQ(Float32ToBfloat16Bits(-0.0f), 0x8000);
  EXPECT_EQ(Float32ToBfloat16Bits(FromBits(0x80008001u)), 0x8001);
  // NaN: a payload only in the low half would truncate to infinity's pattern.
  EXPECT_TRUE(std::isnan(Bfloat16BitsToFloat32(Float32ToBfloat16Bits(FromBits(0x7f800001u)))));
  EXPECT_EQ(Float32ToBfloat16Bits(-std::numeric_limits<float>::quiet_NaN()) & 0xffc0, 0xffc0);
}

TEST(Bfloat16Test, MatchesTheReferenceAcrossTheRange) {
  std::mt19937 random(20261205);  // fixed seed
  std::uniform_int_distribution<uint32_t> any;
  auto check = [](uint32_t bits) {
    const float value = FromBits(bits);
    if (std::isnan(value)) return;
    const double expected = RoundToBfloat16(value);
    ASSERT_EQ(static_cast<double>(Bfloat16BitsToFloat32(Float32ToBfloat16Bits(value))), expected)
        << std::hex << bits;
  };
  for (uint32_t exponent : {0u, 1u, 2u, 126u, 127u, 128u, 253u, 254u}) {
    for (uint32_t low = 0; low < (1u << 16); ++low) {
      check((exponent << 23) | (random() & 0x7f0000u) | low);
      check(0x80000000u | (exponent << 23) | (random() & 0x7f0000u) | low);
    }
  }
  for (int i = 0; i < 1000000; ++i) check(any(random));
}

// --- 16-bit tensors (client.h) --------------------------------------------

TEST(Tensor16Test, MakeTensorRoundsAndSetsTheDtype) {
  const std::vector<float> values = {1.0f, 0.1f, -65520.0f, std::ldexp(3.5f, -24)};
  const v1::Tensor half = MakeTensor({2, 2}, values, TensorEncoding::kRawFloat16);
  EXPECT_EQ(half.dtype(), v1::DTYPE_FLOAT16);
  EXPECT_EQ(half.data_size(), 0);
  // Little-endian 16-bit: 0x3c00, 0x2e66, 0xfc00, 0x0004.
  EXPECT_EQ(half.raw_data(), std::string("\x00\x3c\x66\x2e\x00\xfc\x04\x00", 8));
  absl::StatusOr<std::vector<float>> back = TensorValues(half);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_THAT(*back, ElementsAre(1.0f, 0.0999755859375f, -std::numeric_limits<float>::infinity(),
                                 std::ldexp(4.0f, -24)));
  absl::StatusOr<std::vector<uint16_t>> bits = TensorBits16(half);
  ASSERT_TRUE(bits.ok()) << bits.status();
  EXPECT_THAT(*bits, ElementsAre(0x3c00, 0x2e66, 0xfc00, 0x0004));

  const v1::Tensor brain = MakeTensor({3}, {1.0f, 0.1f, -3.0f}, TensorEncoding::kRawBfloat16);
  EXPECT_EQ(brain.dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_EQ(brain.raw_data(), std::string("\x80\x3f\xcd\x3d\x40\xc0", 6));
  back = TensorValues(brain);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_THAT(*back, ElementsAre(1.0f, FromBits(0x3dcd0000u), -3.0f));
}

TEST(Tensor16Test, BitsGoAsGivenAndComeBack) {
  const std::vector<uint16_t> bits = {0x0001, 0x7bff, 0x8000, 0x3555};
  absl::StatusOr<v1::Tensor> tensor = MakeTensor16({4}, bits, v1::DTYPE_FLOAT16);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->raw_data().size(), 8u);
  absl::StatusOr<std::vector<uint16_t>> back = TensorBits16(*tensor);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, bits);
  absl::StatusOr<v1::Tensor> float32 = MakeTensor16({4}, bits, v1::DTYPE_FLOAT32);
  EXPECT_EQ(float32.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(float32.status().message()), HasSubstr("dtype"));
}

TEST(Tensor16Test, RecodeTensorChangesOnlyTheEncoding) {
  const v1::Tensor data = MakeTensor({2}, {0.5f, 1e5f});
  absl::StatusOr<v1::Tensor> half = RecodeTensor(data, TensorEncoding::kRawFloat16);
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_THAT(half->shape(), ElementsAre(2));
  EXPECT_THAT(*TensorBits16(*half), ElementsAre(0x3800, 0x7c00));
  absl::StatusOr<v1::Tensor> wide = RecodeTensor(*half, TensorEncoding::kData);
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->dtype(), v1::DTYPE_UNSPECIFIED);
  EXPECT_THAT(wide->data(), ElementsAre(0.5f, std::numeric_limits<float>::infinity()));
  const v1::Tensor ref = MakeRefTensor("gpt/wpe.weight");
  EXPECT_EQ(RecodeTensor(ref, TensorEncoding::kRawBfloat16)->ref(), "gpt/wpe.weight");
}

TEST(Tensor16Test, MalformedTensorsAreInvalidArgumentNamingTheField) {
  v1::Tensor on_data = MakeTensor({2}, {1.0f, 2.0f});
  on_data.set_dtype(v1::DTYPE_FLOAT16);
  EXPECT_EQ(TensorValues(on_data).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(TensorValues(on_data).status().message()), HasSubstr("tensor.dtype"));

  v1::Tensor short_raw = MakeTensor({3}, {1.0f, 2.0f, 3.0f}, TensorEncoding::kRawBfloat16);
  short_raw.mutable_raw_data()->pop_back();
  const absl::Status status = TensorValues(short_raw).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor.raw_data"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("expected 2 * product(shape [3]) = 6"));

  // float32 bytes labelled float16: twice the count.
  v1::Tensor mislabelled = MakeTensor({2}, {1.0f, 2.0f}, TensorEncoding::kRawData);
  mislabelled.set_dtype(v1::DTYPE_FLOAT16);
  EXPECT_EQ(TensorValues(mislabelled).status().code(), absl::StatusCode::kInvalidArgument);

  v1::Tensor unknown = MakeTensor({1}, {1.0f}, TensorEncoding::kRawData);
  unknown.set_dtype(static_cast<v1::DataType>(9));
  EXPECT_THAT(std::string(TensorValues(unknown).status().message()), HasSubstr("tensor.dtype"));

  const v1::Tensor float32 = MakeTensor({1}, {1.0f}, TensorEncoding::kRawData);
  EXPECT_EQ(TensorBits16(float32).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve::client
