// The test side's own float32 <-> float16 / bfloat16 conversions
// (attention-variants.md 6): bit-exact, round to nearest, ties to even,
// magnitudes beyond the format's range to infinity, NaN kept NaN. Written
// independently of the server's converter so the two check each other.
//
// Thread-safety: pure functions.
#ifndef ATTNSERVE_TESTS_TESTING_HALF_FLOAT_H_
#define ATTNSERVE_TESTS_TESTING_HALF_FLOAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace attnserve::testing {

// The element types of the golden format's "dtype" keys.
enum class GoldenDtype { kFloat32, kFloat16, kBfloat16 };

// "float32", "float16", "bfloat16".
const char* GoldenDtypeName(GoldenDtype dtype);
// Bytes per element on the wire: 4 or 2.
int GoldenDtypeSize(GoldenDtype dtype);

// IEEE 754 binary16.
uint16_t FloatToHalfBits(float value);
float HalfBitsToFloat(uint16_t bits);
// bfloat16: the top 16 bits of a float32, rounded.
uint16_t FloatToBfloat16Bits(float value);
float Bfloat16BitsToFloat(uint16_t bits);

// `value` rounded to `dtype` and widened back (identity for float32).
float RoundTo(GoldenDtype dtype, float value);

// Little-endian raw_data bytes of `values` in `dtype` (each value rounded).
std::string EncodeRaw(const std::vector<float>& values, GoldenDtype dtype);
// The inverse: size / GoldenDtypeSize(dtype) values (a trailing partial
// element is ignored).
std::vector<float> DecodeRaw(absl::string_view bytes, GoldenDtype dtype);

// One unit in the last place of `dtype` at |x| (attention-variants.md 9.3):
// 2^(floor(log2 |x|) - m), and the subnormal spacing 2^(e_min - m) below the
// smallest normal value. 0 for float32 (no extra allowance).
double UlpOf(double x, GoldenDtype dtype);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_HALF_FLOAT_H_
