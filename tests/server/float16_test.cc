// server/float16.h against references written the slow, obvious way (frexp,
// ldexp, long double rounding): every float16 and bfloat16 bit pattern
// widened, and a sweep of float32 values (plus every tie) narrowed.
#include "server/float16.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/isa.h"

namespace attnserve::server {
namespace {

float Bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

// binary16 by its definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m.
double ReferenceHalfValue(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  if (exponent == 0x1F) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Nearest float16 (ties to even) by searching the finite values around x:
// x is compared, in double (exact for these), with the midpoints.
uint16_t ReferenceFloatToHalf(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isnan(x)) return 0x7E00 | sign;
  const double a = std::fabs(static_cast<double>(x));
  // 65520 = 65504 + half an ulp: from there on ties and above go to infinity.
  if (a >= 65520.0) return 0x7C00 | sign;
  // Binary search over the magnitudes 0..0x7BFF (monotone in value).
  uint16_t lo = 0, hi = 0x7BFF;
  while (lo < hi) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (ReferenceHalfValue(mid) <= a) {
      lo = mid;
    } else {
      hi = static_cast<uint16_t>(mid - 1);
    }
  }
  uint16_t best = lo;  // the largest value <= a; between 65504 and 65520 it stays
  if (ReferenceHalfValue(best) != a && best < 0x7BFF) {
    const double below = ReferenceHalfValue(best);
    const double above = ReferenceHalfValue(static_cast<uint16_t>(best + 1));
    const double middle = (below + above) / 2;
    if (a > middle || (a == middle && (best & 1))) ++best;
  }
  return static_cast<uint16_t>(best | sign);
}

uint16_t ReferenceFloatToBFloat16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t low = bits & 0xFFFF;
  uint32_t high = bits >> 16;
  if (low > 0x8000 || (low == 0x8000 && (high & 1))) ++high;
  return static_cast<uint16_t>(high);
}

TEST(Float16Test, WideningIsExactForEveryHalfValue) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    const double want = ReferenceHalfValue(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
    ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;  // -0 too
    // And back: every half value narrows to itself.
    ASSERT_EQ(FloatToHalf(got), h) << std::hex << h;
  }
}

// The kernel tables of the ISAs with F16C that this CPU runs (AVX-512,
// AVX2; the baseline has no widen_float16 or narrow_float16).
std::vector<const kernels::IsaKernels*> F16cKernels() {
  std::vector<const kernels::IsaKernels*> found;
  for (kernels::Isa isa : {kernels::Isa::kAvx512, kernels::Isa::kAvx2}) {
    if (const kernels::IsaKernels* k = kernels::KernelsFor(isa)) found.push_back(k);
  }
  return found;
}

// The ISAs' conversion instruction (kernels' IsaKernels::widen_float16,
// which the server's convert uses) gives HalfToFloat's value for every bit
// pattern, read from unaligned little-endian bytes, at every length's tail.
TEST(Float16Test, EveryIsaWidensEveryHalfValueAsHalfToFloat) {
  std::string bytes(1 + 2 * 65536, '\0');  // at an odd offset: unaligned
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    bytes[1 + 2 * h] = static_cast<char>(h & 0xFF);
    bytes[2 + 2 * h] = static_cast<char>(h >> 8);
  }
  if (F16cKernels().empty()) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
  for (const kernels::IsaKernels* k : F16cKernels()) {
    ASSERT_NE(k->widen_float16, nullptr);
    std::vector<float> out(65536 + 1, -7.0f);
    k->widen_float16(bytes.data() + 1, 65536, out.data());
    for (uint32_t h = 0; h <= 0xFFFF; ++h) {
      const float want = HalfToFloat(static_cast<uint16_t>(h));
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(out[h])) << std::hex << h;
      } else {
        ASSERT_EQ(FloatBits(out[h]), FloatBits(want)) << std::hex << h;
      }
    }
    EXPECT_EQ(out[65536], -7.0f) << "wrote past n";
    // Every tail length (n % 16 from 0 to 15), nothing written past n.
    for (int64_t n = 1; n <= 33; ++n) {
      std::vector<float> tail(static_cast<size_t>(n) + 1, -7.0f);
      k->widen_float16(bytes.data() + 1 + 2 * 0x3C00, n, tail.data());
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(tail[static_cast<size_t>(i)], HalfToFloat(static_cast<uint16_t>(0x3C00 + i)))
            << "n " << n << " i " << i;
      }
      ASSERT_EQ(tail[static_cast<size_t>(n)], -7.0f) << "n " << n;
    }
  }
}

// The ISAs' narrowing instruction (IsaKernels::narrow_float16, which
// NarrowToHalf uses) gives FloatToHalf's bits over a sweep of finite floats
// plus the midpoint above every normal half (a tie to even), to unaligned
// bytes, at every tail length.
TEST(Float16Test, EveryIsaNarrowsAsFloatToHalf) {
  std::vector<float> values;
  for (uint32_t bits = 0; bits < 0x7F800000u; bits += 0x1F3u) {  // finite, both signs
    values.push_back(Bits(bits));
    values.push_back(-Bits(bits));
  }
  for (uint32_t h = 0x0400u; h < 0x7C00u; ++h) {  // midpoints above the normal halves
    values.push_back(Bits(FloatBits(HalfToFloat(static_cast<uint16_t>(h))) + 0x1000u));
  }
  values.push_back(std::numeric_limits<float>::infinity());
  values.push_back(-std::numeric_limits<float>::infinity());
  if (F16cKernels().empty()) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
  for (const kernels::IsaKernels* k : F16cKernels()) {
    ASSERT_NE(k->narrow_float16, nullptr);
    std::string bytes(1 + 2 * values.size() + 2, '\x5A');
    k->narrow_float16(values.data(), static_cast<int64_t>(values.size()), bytes.data() + 1);
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(LoadLittleEndian16(bytes.data() + 1 + 2 * i), FloatToHalf(values[i]))
          << std::hexfloat << values[i];
    }
    EXPECT_EQ(bytes[0], '\x5A');
    EXPECT_EQ(bytes[1 + 2 * values.size()], '\x5A') << "wrote past n";
    for (int64_t n = 1; n <= 33; ++n) {
      std::string tail(2 * static_cast<size_t>(n) + 2, '\x5A');
      k->narrow_float16(values.data() + 1000, n, tail.data());
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(LoadLittleEndian16(tail.data() + 2 * i), FloatToHalf(values[1000 + i]));
      }
      ASSERT_EQ(tail[2 * static_cast<size_t>(n)], '\x5A') << "n " << n;
    }
  }
}

TEST(Float16Test, WideningIsExactForEveryBFloat16Value) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float got = BFloat16ToFloat(static_cast<uint16_t>(b));
    uint32_t bits;
    std::memcpy(&bits, &got, 4);
    ASSERT_EQ(bits, b << 16);
    if (!std::isnan(got)) {
      ASSERT_EQ(FloatToBFloat16(got), b) << std::hex << b;
    }
  }
}

TEST(Float16Test, NarrowingToHalfRoundsToNearestEvenOverASweep) {
  // Every 997th float32 bit pattern (both signs, all exponents)...
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFu; bits += 997) {
    const float x = Bits(static_cast<uint32_t>(bits));
    const uint16_t got = FloatToHalf(x);
    if (std::isnan(x)) {
      ASSERT_EQ(got & 0x7C00, 0x7C00);
      ASSERT_NE(got & 0x03FF, 0);
      continue;
    }
    ASSERT_EQ(got, ReferenceFloatToHalf(x)) << x << " bits " << std::hex << bits;
  }
  // ...and every tie and its neighbours: the midpoints between consecutive
  // half values (exact in float32), including 65520 (to infinity).
  for (uint32_t h = 0; h < 0x7BFF + 1; ++h) {
    const double below = ReferenceHalfValue(static_cast<uint16_t>(h));
    const double above = h == 0x7BFF ? 65536.0 : ReferenceHalfValue(static_cast<uint16_t>(h + 1));
    const float middle = static_cast<float>((below + above) / 2);
    ASSERT_EQ(static_cast<double>(middle), (below + above) / 2);
    for (float x : {middle, std::nextafter(middle, 0.0f), std::nextafter(middle, 1e30f)}) {
      ASSERT_EQ(FloatToHalf(x), ReferenceFloatToHalf(x)) << x;
      ASSERT_EQ(FloatToHalf(-x), ReferenceFloatToHalf(-x)) << -x;
    }
  }
}

TEST(Float16Test, NarrowingEdgeValues) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // the tie goes to even: infinity
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // its half: tie to even (0)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp: tie to even (2)
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);           // tie to even
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(3.0f, -11)), 0x3C02);           // tie to even
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7F80);  // overflow: inf
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);        // tie to even
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);
}

TEST(Float16Test, NarrowingToBFloat16OverASweep) {
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFu; bits += 991) {
    const float x = Bits(static_cast<uint32_t>(bits));
    ASSERT_EQ(FloatToBFloat16(x), ReferenceFloatToBFloat16(x)) << std::hex << bits;
  }
}

TEST(Float16Test, BulkNarrowingWritesLittleEndianPairs) {
  const std::vector<float> values = {1.0f, -2.0f, 65504.0f, 1e9f, 0.0f};
  std::string half(values.size() * 2, '\0');
  NarrowToHalf(values.data(), values.size(), half.data());
  EXPECT_EQ(half, std::string("\x00\x3c\x00\xc0\xff\x7b\x00\x7c\x00\x00", 10));
  std::string bf16(values.size() * 2, '\0');
  NarrowToBFloat16(values.data(), values.size(), bf16.data());
  EXPECT_EQ(bf16, std::string("\x80\x3f\x00\xc0\x80\x47\x6e\x4e\x00\x00", 10));
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(LoadLittleEndian16(half.data() + 2 * i), FloatToHalf(values[i]));
  }
}

}  // namespace
}  // namespace attnserve::server
