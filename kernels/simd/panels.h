// The packed-panel layout the engine's micro-kernels read, the same on every
// ISA (kernels/isa.h): a [K x N] right-hand matrix is stored as
// ceil(N / 16) contiguous panels of K rows x 16 floats (columns past N
// zero), so a micro-kernel streams one contiguous 64-byte row per k step (no
// cache-set conflicts at power-of-two leading dimensions). 16 floats are one
// zmm, two ymm or four xmm registers.
//
// Pure constants and arithmetic; thread-safe.
#ifndef ATTNSERVE_KERNELS_SIMD_PANELS_H_
#define ATTNSERVE_KERNELS_SIMD_PANELS_H_

#include <cstdint>

namespace attnserve::kernels::simd {

inline constexpr int64_t kPanel = 16;  // Columns per panel.

inline int64_t RoundUpToPanel(int64_t n) { return (n + kPanel - 1) / kPanel * kPanel; }

}  // namespace attnserve::kernels::simd

#endif  // ATTNSERVE_KERNELS_SIMD_PANELS_H_
