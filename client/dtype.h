// The 16-bit float formats of attnserve's wire (attention-variants.md 6):
// exact conversions between float32 and the bit patterns of IEEE 754 binary16
// ("float16") and bfloat16 (the top half of a float32), as the SDK's
// MakeTensor and TensorValues use them and callers may, to prepare or read
// 16-bit tensors themselves.
//
//   uint16_t h = Float32ToFloat16Bits(0.1f);   // 0x2e66 (0.0999755859375)
//   float back = Float16BitsToFloat32(h);      // exactly 0.0999755859375f
//
// Narrowing rounds to nearest, ties to even; a magnitude beyond the format's
// range becomes infinity (float16: |x| >= 65520, i.e. above 65504 by half a
// unit in the last place or more; bfloat16: likewise above 3.3895e38), as
// IEEE conversion does; results below the smallest normal value are
// subnormals (float16: multiples of 2^-24), and what rounds below half the
// smallest subnormal is a signed zero. NaN stays NaN (quiet; sign and the
// payload's high bits kept). Widening is exact (every 16-bit value is a
// float32).
//
// Thread-safety: pure functions. Independent of the host's byte order and
// floating-point rounding mode (integer arithmetic on the bits).
#ifndef ATTNSERVE_CLIENT_DTYPE_H_
#define ATTNSERVE_CLIENT_DTYPE_H_

#include <cstdint>

namespace attnserve::client {

// float32 -> IEEE 754 binary16 bits (1 sign, 5 exponent, 10 fraction bits).
uint16_t Float32ToFloat16Bits(float value);

// IEEE 754 binary16 bits -> the same value as float32 (exact).
float Float16BitsToFloat32(uint16_t bits);

// float32 -> bfloat16 bits (1 sign, 8 exponent, 7 fraction bits).
uint16_t Float32ToBfloat16Bits(float value);

// bfloat16 bits -> the same value as float32 (exact).
float Bfloat16BitsToFloat32(uint16_t bits);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_DTYPE_H_
