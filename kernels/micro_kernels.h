// AVX2 + FMA building blocks of the fast attention engine: a register-tiled
// GEMM micro-kernel on packed 16-column panels, a vectorised exp, and the
// row reductions of the online softmax.
//
// Panels: a [K x N] right-hand matrix is stored as ceil(N / 16) contiguous
// panels of K rows x 16 floats (columns past N zero), so each micro-kernel
// call streams one contiguous 64-byte row per k step (no cache-set conflicts
// at power-of-two leading dimensions).
//
// Everything here is header-only and inline (the kernels are templates over
// the row count); the library is compiled with -mavx2 -mfma
// (kernels/CMakeLists.txt). All functions are pure and thread-safe.
#ifndef ATTNSERVE_KERNELS_MICRO_KERNELS_H_
#define ATTNSERVE_KERNELS_MICRO_KERNELS_H_

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace attnserve::kernels::simd {

inline constexpr int64_t kPanel = 16;  // Columns per panel: two ymm registers.
inline constexpr int kRows = 6;        // Rows per micro-kernel call: 12 accumulators.

inline int64_t RoundUpToPanel(int64_t n) { return (n + kPanel - 1) / kPanel * kPanel; }

// c[r * ldc + 0..8V) (+)= sum_p a[r * lda + p] * panel[p * 16 + 0..8V) for
// r < R, p < k: V = 2 is a whole panel, V = 1 its first 8 columns (for a
// causal diagonal whose visible keys end in the first half of a panel).
template <int R, bool kAccumulate, int V = 2>
inline void MicroKernel(int64_t k, const float* a, int64_t lda, const float* panel, float* c,
                        int64_t ldc) {
  static_assert(V == 1 || V == 2);
  __m256 c0[R], c1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    if constexpr (kAccumulate) {
      c0[r] = _mm256_loadu_ps(c + r * ldc);
      if constexpr (V == 2) c1[r] = _mm256_loadu_ps(c + r * ldc + 8);
    } else {
      c0[r] = _mm256_setzero_ps();
      c1[r] = _mm256_setzero_ps();
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    const __m256 b0 = _mm256_loadu_ps(panel + p * kPanel);
    const __m256 b1 = V == 2 ? _mm256_loadu_ps(panel + p * kPanel + 8) : b0;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r * lda + p);
      c0[r] = _mm256_fmadd_ps(ar, b0, c0[r]);
      if constexpr (V == 2) c1[r] = _mm256_fmadd_ps(ar, b1, c1[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(c + r * ldc, c0[r]);
    if constexpr (V == 2) _mm256_storeu_ps(c + r * ldc + 8, c1[r]);
  }
}

template <bool kAccumulate, int V = 2>
inline void MicroKernelRows(int rows, int64_t k, const float* a, int64_t lda,
                            const float* panel, float* c, int64_t ldc) {
  switch (rows) {
    case 6: MicroKernel<6, kAccumulate, V>(k, a, lda, panel, c, ldc); break;
    case 5: MicroKernel<5, kAccumulate, V>(k, a, lda, panel, c, ldc); break;
    case 4: MicroKernel<4, kAccumulate, V>(k, a, lda, panel, c, ldc); break;
    case 3: MicroKernel<3, kAccumulate, V>(k, a, lda, panel, c, ldc); break;
    case 2: MicroKernel<2, kAccumulate, V>(k, a, lda, panel, c, ldc); break;
    case 1: MicroKernel<1, kAccumulate, V>(k, a, lda, panel, c, ldc); break;
    default: break;
  }
}

// C[m x n_pad] (+)= A[m x k] * B[k x n_pad], B as n_pad / 16 panels of
// `panel_stride` floats each (the panel for columns 16t.. starts at
// b + t * panel_stride). C's leading dimension ldc >= n_pad.
template <bool kAccumulate>
inline void Gemm(int64_t m, int64_t n_pad, int64_t k, const float* a, int64_t lda,
                 const float* b, int64_t panel_stride, float* c, int64_t ldc) {
  for (int64_t t = 0; t < n_pad / kPanel; ++t) {
    const float* panel = b + t * panel_stride;
    for (int64_t r = 0; r < m; r += kRows) {
      MicroKernelRows<kAccumulate>(static_cast<int>(std::min<int64_t>(kRows, m - r)), k,
                                   a + r * lda, lda, panel, c + r * ldc + t * kPanel, ldc);
    }
  }
}

// A [rows x cols] matrix (row r at src + r * ld) as the right-hand side of
// Gemm: ceil(cols / 16) panels of [rows x 16], panel t at dst + t * rows * 16
// (columns past cols zero).
inline void PackColumnPanels(const float* src, int64_t ld, int64_t rows, int64_t cols,
                             float* dst) {
  for (int64_t t = 0; t < RoundUpToPanel(cols) / kPanel; ++t) {
    float* panel = dst + t * rows * kPanel;
    const int64_t width = std::min<int64_t>(kPanel, cols - t * kPanel);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = src + r * ld + t * kPanel;
      float* out = panel + r * kPanel;
      if (width == kPanel) {  // Two registers, not a call to memmove per row.
        _mm256_storeu_ps(out, _mm256_loadu_ps(row));
        _mm256_storeu_ps(out + 8, _mm256_loadu_ps(row + 8));
        continue;
      }
      std::copy_n(row, width, out);
      std::fill(out + width, out + kPanel, 0.0f);
    }
  }
}

// dst[c * ldd + r] = scale * src[r * lds + c] for r, c < 8: an 8x8 block
// transposed in registers.
inline void Transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd,
                         float scale = 1.0f) {
  const __m256 factor = _mm256_set1_ps(scale);
  __m256 r[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_mul_ps(_mm256_loadu_ps(src + i * lds), factor);
  // Pairs of rows interleaved, then quadruples, then the 128-bit halves.
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
    _mm256_storeu_ps(dst + (4 + i) * ldd, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
  }
}

// Columns [0, width) of 16 rows (row r at src + r * lds) as rows of a
// panel: panel[e * 16 + r] = scale * src[r * lds + e] (the packed form of
// 16 keys, 8x8 blocks at a time instead of one scattered store per value).
inline void TransposeIntoPanel(const float* src, int64_t lds, int64_t width, float* panel,
                               float scale = 1.0f) {
  int64_t e = 0;
  for (; e + 8 <= width; e += 8) {
    Transpose8x8(src + e, lds, panel + e * kPanel, kPanel, scale);
    Transpose8x8(src + 8 * lds + e, lds, panel + e * kPanel + 8, kPanel, scale);
  }
  for (; e < width; ++e) {
    for (int64_t r = 0; r < kPanel; ++r) panel[e * kPanel + r] = scale * src[r * lds + e];
  }
}

// exp(x) for 8 lanes, Cephes' expf polynomial (about 1 ulp). Lanes below
// -87 (including -inf and NaN) give exactly 0: masked scores contribute
// nothing.
inline __m256 Exp(__m256 x) {
  const __m256 zero_below = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
  return _mm256_and_ps(y, zero_below);
}

inline float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Lane mask for the first `count` (0..8) lanes.
inline __m256i FirstLanes(int64_t count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), index);
}

// The row reductions of the softmax, in two forms. Tail::kExact reads and
// writes nothing past x[n - 1] (a masked load and store for the last
// partial vector). Tail::kPadded is for rows with room up to the multiple
// of 8 at or after n (the engine's scores rows): the last vector is a plain
// load and store with the lanes past n masked in registers. Every causal
// row has its own length, and masked stores (vmaskmovps) are microcoded and
// slow on AMD.
enum class Tail { kExact, kPadded };

// The maximum of x[0..n) (n >= 1).
inline float Max(const float* x, int64_t n, Tail tail = Tail::kExact) {
  const __m256 minus_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m = minus_inf;
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + c));
  if (c < n) {
    const __m256i mask = FirstLanes(n - c);
    const __m256 last =
        tail == Tail::kPadded ? _mm256_loadu_ps(x + c) : _mm256_maskload_ps(x + c, mask);
    m = _mm256_max_ps(m, _mm256_blendv_ps(minus_inf, last, _mm256_castsi256_ps(mask)));
  }
  return HorizontalMax(m);
}

// x[c] = exp(x[c] - shift) for c < n; returns their sum. A padded row also
// gets 0 from n up to the multiple of 8.
inline float ExpAndSum(float* x, int64_t n, float shift, Tail tail = Tail::kExact) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(x + c), s));
    _mm256_storeu_ps(x + c, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (c == n) return HorizontalSum(sum);
  const __m256i mask = FirstLanes(n - c);
  const __m256 keep = _mm256_castsi256_ps(mask);
  if (tail == Tail::kPadded) {
    const __m256 e = _mm256_and_ps(Exp(_mm256_sub_ps(_mm256_loadu_ps(x + c), s)), keep);
    _mm256_storeu_ps(x + c, e);
    return HorizontalSum(_mm256_add_ps(sum, e));
  }
  const __m256 e = _mm256_and_ps(Exp(_mm256_sub_ps(_mm256_maskload_ps(x + c, mask), s)), keep);
  _mm256_maskstore_ps(x + c, mask, e);
  return HorizontalSum(_mm256_add_ps(sum, e));
}

// sum of x[0..n) accumulated in double (8 lanes, so no long dependency
// chain): for masses where a float running sum would lose digits.
inline double SumInDouble(const float* x, int64_t n) {
  __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    low = _mm256_add_pd(low, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    high = _mm256_add_pd(high, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(low, high));
  double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; c < n; ++c) sum += x[c];
  return sum;
}

// Whether x[0..n) are all finite. x * 0 is 0 for a finite x and NaN for an
// infinity or NaN, and a NaN stays in a sum: one FMA per 8 values, four
// independent sums, no compare or mask (the scan runs over every input and
// the output of a call).
inline bool AllFinite(const float* x, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 s0 = zero, s1 = zero, s2 = zero, s3 = zero;
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), zero, s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 8), zero, s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 16), zero, s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 24), zero, s3);
  }
  for (; c + 8 <= n; c += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), zero, s0);
  float tail = 0;
  for (; c < n; ++c) tail += x[c] * 0.0f;
  const __m256 sum = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  // NaN compares unordered: the sum is 0 exactly when every value is finite.
  return HorizontalSum(sum) + tail == 0.0f;
}

// x[c] *= factor for c < n.
inline void Scale(float* x, int64_t n, float factor) {
  const __m256 f = _mm256_set1_ps(factor);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(x + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), f));
  for (; c < n; ++c) x[c] *= factor;
}

}  // namespace attnserve::kernels::simd

#endif  // ATTNSERVE_KERNELS_MICRO_KERNELS_H_
