// The SIMD building blocks of the fast attention engine, for the ISA of the
// including translation unit (kernels/simd/vec.h): a register-tiled GEMM
// micro-kernel on packed panels (kernels/simd/panels.h), a vectorised exp,
// the row reductions of the online softmax, packing and the finite scan.
//
// Register tiles: AVX-512 12 rows x 32 columns (two panels: 24 of the 32 zmm
// registers accumulate), AVX2 6 x 16 (12 of 16 ymm), the baseline 3 x 16
// (12 of 16 xmm).
//
// Included only inside a target region of kernels/simd/*_target.cc, in
// namespace attnserve::kernels::ATTN_ISA_NAMESPACE. All functions are pure
// and thread-safe.
#if !defined(ATTN_ISA_LEVEL)
#error "kernels/simd/micro_kernels.h is for the per-ISA translation units only"
#endif

namespace simd {

#include "kernels/simd/vec.h"

using ::attnserve::kernels::simd::kPanel;
using ::attnserve::kernels::simd::RoundUpToPanel;

#if ATTN_ISA_LEVEL == 2
inline constexpr int kRows = 12;      // Rows per micro-kernel call.
inline constexpr int kTileCols = 32;  // Columns of the widest tile: two panels.
#elif ATTN_ISA_LEVEL == 1
inline constexpr int kRows = 6;
inline constexpr int kTileCols = 16;
#else
inline constexpr int kRows = 3;
inline constexpr int kTileCols = 16;
#endif

// c[r * ldc + 0..kCols) (+)= sum_p a[r * lda + p] * B[p][0..kCols) for r < R,
// p < k, where columns 16t.. of B are the panel at panel + t * panel_stride
// (kCols 32: two panels; 16: one; 8: the first half of one, which AVX-512
// computes whole: the caller leaves room for a whole panel).
template <int R, bool kAccumulate, int kCols>
inline void MicroKernel(int64_t k, const float* a, int64_t lda, const float* panel,
                        int64_t panel_stride, float* c, int64_t ldc) {
  constexpr int kVecs = (kCols + kLanes - 1) / kLanes;
  const float* b_at[kVecs];
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) {
    b_at[j] = panel + (j * kLanes / kPanel) * panel_stride + (j * kLanes) % kPanel;
  }
  V acc[R][kVecs];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) {
      acc[r][j] = kAccumulate ? Load(c + r * ldc + j * kLanes) : Zero();
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    V b[kVecs];
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) b[j] = Load(b_at[j] + p * kPanel);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V ar = Set1(a[r * lda + p]);
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; ++j) acc[r][j] = MulAdd(ar, b[j], acc[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) Store(c + r * ldc + j * kLanes, acc[r][j]);
  }
}

template <bool kAccumulate, int kCols, int R = kRows>
inline void MicroKernelRows(int rows, int64_t k, const float* a, int64_t lda, const float* panel,
                            int64_t panel_stride, float* c, int64_t ldc) {
  if constexpr (R > 0) {
    if (rows == R) {
      MicroKernel<R, kAccumulate, kCols>(k, a, lda, panel, panel_stride, c, ldc);
    } else {
      MicroKernelRows<kAccumulate, kCols, R - 1>(rows, k, a, lda, panel, panel_stride, c, ldc);
    }
  }
}

// One panel (16 columns), or its first 8 with kCols 8.
template <bool kAccumulate, int kCols = 16>
inline void PanelRows(int rows, int64_t k, const float* a, int64_t lda, const float* panel,
                      float* c, int64_t ldc) {
  MicroKernelRows<kAccumulate, kCols>(rows, k, a, lda, panel, 0, c, ldc);
}

// C[m x n_pad] (+)= A[m x k] * B[k x n_pad], B as n_pad / 16 panels, the
// one for columns 16t.. at b + t * panel_stride. C's leading dimension
// ldc >= n_pad. A panel pair (or panel) stays in L1 while the row groups
// stream past it.
template <bool kAccumulate>
inline void Gemm(int64_t m, int64_t n_pad, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t panel_stride, float* c, int64_t ldc) {
  const int64_t panels = n_pad / kPanel;
  constexpr int64_t kStep = kTileCols / kPanel;
  int64_t t = 0;
  for (; t + kStep <= panels; t += kStep) {
    for (int64_t r = 0; r < m; r += kRows) {
      MicroKernelRows<kAccumulate, kTileCols>(static_cast<int>(std::min<int64_t>(kRows, m - r)),
                                              k, a + r * lda, lda, b + t * panel_stride,
                                              panel_stride, c + r * ldc + t * kPanel, ldc);
    }
  }
  for (; t < panels; ++t) {
    for (int64_t r = 0; r < m; r += kRows) {
      PanelRows<kAccumulate>(static_cast<int>(std::min<int64_t>(kRows, m - r)), k, a + r * lda,
                             lda, b + t * panel_stride, c + r * ldc + t * kPanel, ldc);
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
      if (width == kPanel) {  // Whole registers, not a call to memmove per row.
#pragma GCC unroll 4
        for (int j = 0; j < kPanel / kLanes; ++j) Store(out + j * kLanes, Load(row + j * kLanes));
        continue;
      }
      std::copy_n(row, width, out);
      std::fill(out + width, out + kPanel, 0.0f);
    }
  }
}

#if ATTN_ISA_LEVEL >= 1
// dst[c * ldd + r] = scale * src[r * lds + c] for r, c < 8: an 8x8 block
// transposed in ymm registers (AVX-512 too: its 16x16 form would need 16
// rows of one panel's keys at once for no gain in this memory-bound pass).
inline void Transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd, float scale) {
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
#endif

// Columns [0, width) of 16 rows (row r at src + r * lds) as rows of a
// panel: panel[e * 16 + r] = scale * src[r * lds + e] (the packed form of
// 16 keys).
inline void TransposeIntoPanel(const float* src, int64_t lds, int64_t width, float* panel,
                               float scale = 1.0f) {
  int64_t e = 0;
#if ATTN_ISA_LEVEL >= 1
  for (; e + 8 <= width; e += 8) {
    Transpose8x8(src + e, lds, panel + e * kPanel, kPanel, scale);
    Transpose8x8(src + 8 * lds + e, lds, panel + e * kPanel + 8, kPanel, scale);
  }
#endif
  for (; e < width; ++e) {
    for (int64_t r = 0; r < kPanel; ++r) panel[e * kPanel + r] = scale * src[r * lds + e];
  }
}

// exp(x) lane by lane, Cephes' expf polynomial (about 1 ulp). Lanes below
// -87 (including -inf and NaN) give exactly 0: masked scores contribute
// nothing.
inline V Exp(V x) {
  const V original = x;
  x = Min(x, Set1(88.3762626647949f));
  x = Max(x, Set1(-87.0f));
  const V fx = Floor(MulAdd(x, Set1(1.44269504088896341f), Set1(0.5f)));
  x = NegMulAdd(fx, Set1(0.693359375f), x);
  x = NegMulAdd(fx, Set1(-2.12194440e-4f), x);
  V y = Set1(1.9875691500E-4f);
  y = MulAdd(y, x, Set1(1.3981999507E-3f));
  y = MulAdd(y, x, Set1(8.3334519073E-3f));
  y = MulAdd(y, x, Set1(4.1665795894E-2f));
  y = MulAdd(y, x, Set1(1.6666665459E-1f));
  y = MulAdd(y, x, Set1(5.0000001201E-1f));
  y = MulAdd(y, Mul(x, x), Add(x, Set1(1.0f)));
  return ZeroUnlessAbove(original, -87.0f, Mul(y, Pow2(fx)));
}

// tanh(x) lane by lane, within a few float32 ulp: for |x| < 0.25 its odd
// Taylor polynomial to x^9 (the next term is below 1e-8 relative), else
// 1 - 2 / (exp(2|x|) + 1) with x's sign (Exp's large-argument clamp gives
// exactly 1 from |x| ~ 44 on).
inline V Tanh(V x) {
  const V minus_x = Sub(Zero(), x);
  const V ax = Max(x, minus_x);
  const V x2 = Mul(x, x);
  V poly = Set1(62.0f / 2835.0f);
  poly = MulAdd(poly, x2, Set1(-17.0f / 315.0f));
  poly = MulAdd(poly, x2, Set1(2.0f / 15.0f));
  poly = MulAdd(poly, x2, Set1(-1.0f / 3.0f));
  poly = MulAdd(Mul(poly, x2), x, x);
  const V e = Exp(Add(ax, ax));
  const V big = Sub(Set1(1.0f), Div(Set1(2.0f), Add(e, Set1(1.0f))));
  const V signed_big = SelectBelow(x, 0.0f, Sub(Zero(), big), big);
  return SelectBelow(ax, 0.25f, poly, signed_big);
}

// x[c] = cap * tanh(x[c] / cap) for c < n (attention-variants.md 5, Gemma
// 2's logit soft-capping); nothing past x[n - 1] is read or written.
inline void SoftCap(float* x, int64_t n, float cap) {
  const V c = Set1(cap);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) Store(x + i, Mul(c, Tanh(Div(Load(x + i), c))));
  if (i < n) StoreFirst(x + i, n - i, Mul(c, Tanh(Div(LoadFirst(x + i, n - i, 0.0f), c))));
}

// The row reductions of the softmax, in two forms. Tail::kExact reads and
// writes nothing past x[n - 1] (masked loads and stores for the last
// partial vector). Tail::kPadded is for rows with room up to the multiple
// of kLanes at or after n (the engine's scores rows): the last vector is a
// plain load and store with the lanes past n replaced in registers (every
// causal row has its own length, and AVX2's masked stores are microcoded
// and slow on AMD).
enum class Tail { kExact, kPadded };

// The maximum of x[0..n) (n >= 1).
inline float Max(const float* x, int64_t n, Tail tail = Tail::kExact) {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  V m = Set1(kMinusInf);
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) m = Max(m, Load(x + c));
  if (c < n) {
    const V last = tail == Tail::kPadded ? KeepFirst(Load(x + c), n - c, kMinusInf)
                                         : LoadFirst(x + c, n - c, kMinusInf);
    m = Max(m, last);
  }
  return ReduceMax(m);
}

// x[c] = exp(x[c] - shift) for c < n; returns their sum. A padded row also
// gets 0 from n up to the multiple of kLanes.
inline float ExpAndSum(float* x, int64_t n, float shift, Tail tail = Tail::kExact) {
  const V s = Set1(shift);
  V sum = Zero();
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    const V e = Exp(Sub(Load(x + c), s));
    Store(x + c, e);
    sum = Add(sum, e);
  }
  if (c == n) return ReduceSum(sum);
  if (tail == Tail::kPadded) {
    const V e = KeepFirst(Exp(Sub(Load(x + c), s)), n - c, 0.0f);
    Store(x + c, e);
    return ReduceSum(Add(sum, e));
  }
  const V e = KeepFirst(Exp(Sub(LoadFirst(x + c, n - c, 0.0f), s)), n - c, 0.0f);
  StoreFirst(x + c, n - c, e);
  return ReduceSum(Add(sum, e));
}

// sum of x[0..n) accumulated in double (8 lanes, so no long dependency
// chain): for masses where a float running sum would lose digits.
inline double SumInDouble(const float* x, int64_t n) {
  int64_t c = 0;
  double sum = 0;
#if ATTN_ISA_LEVEL >= 1
  __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    low = _mm256_add_pd(low, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    high = _mm256_add_pd(high, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(low, high));
  sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#else
  double lanes[8] = {};
  for (; c + 8 <= n; c += 8) {
    for (int i = 0; i < 8; ++i) lanes[i] += x[c + i];
  }
  sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
        ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
#endif
  for (; c < n; ++c) sum += x[c];
  return sum;
}

// Whether x[0..n) are all finite. x * 0 is 0 for a finite x and NaN for an
// infinity or NaN, and a NaN stays in a sum: one multiply-add per vector,
// four independent sums, no compare or mask (the scan runs over every input
// and the output of a call).
inline bool AllFinite(const float* x, int64_t n) {
  const V zero = Zero();
  V s0 = zero, s1 = zero, s2 = zero, s3 = zero;
  int64_t c = 0;
  for (; c + 4 * kLanes <= n; c += 4 * kLanes) {
    s0 = MulAdd(Load(x + c), zero, s0);
    s1 = MulAdd(Load(x + c + kLanes), zero, s1);
    s2 = MulAdd(Load(x + c + 2 * kLanes), zero, s2);
    s3 = MulAdd(Load(x + c + 3 * kLanes), zero, s3);
  }
  for (; c + kLanes <= n; c += kLanes) s0 = MulAdd(Load(x + c), zero, s0);
  float tail = 0;
  for (; c < n; ++c) tail += x[c] * 0.0f;
  // NaN compares unordered: the sum is 0 exactly when every value is finite.
  return ReduceSum(Add(Add(s0, s1), Add(s2, s3))) + tail == 0.0f;
}

#if ATTN_ISA_LEVEL >= 1
// dst[i] = the float16 whose little-endian bits are at src + 2i, exactly
// (IsaKernels::widen_float16). Unaligned loads: raw_data is a byte string.
inline void WidenFloat16(const char* src, int64_t n, float* dst) {
  int64_t i = 0;
#if ATTN_ISA_LEVEL >= 2
  for (; i + 16 <= n; i += 16) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(bits));
  }
#endif
  for (; i + 8 <= n; i += 8) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(bits));
  }
  if (i < n) {  // The last 1-7 through buffers, not past either end.
    alignas(16) uint16_t tail_bits[8] = {};
    alignas(32) float tail[8];
    std::memcpy(tail_bits, src + 2 * i, static_cast<size_t>(2 * (n - i)));
    _mm256_store_ps(tail, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tail_bits))));
    std::memcpy(dst + i, tail, static_cast<size_t>(4 * (n - i)));
  }
}

// dst = src[0..n) as little-endian float16, nearest, ties to even
// (IsaKernels::narrow_float16).
inline void NarrowFloat16(const float* src, int64_t n, char* dst) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
#if ATTN_ISA_LEVEL >= 2
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kNearest));
  }
#endif
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kNearest));
  }
  if (i < n) {
    alignas(32) float tail[8] = {};
    alignas(16) uint16_t tail_bits[8];
    std::memcpy(tail, src + i, static_cast<size_t>(4 * (n - i)));
    _mm_store_si128(reinterpret_cast<__m128i*>(tail_bits),
                    _mm256_cvtps_ph(_mm256_load_ps(tail), kNearest));
    std::memcpy(dst + 2 * i, tail_bits, static_cast<size_t>(2 * (n - i)));
  }
}
#endif

// x[c] *= factor for c < n.
inline void Scale(float* x, int64_t n, float factor) {
  const V f = Set1(factor);
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) Store(x + c, Mul(Load(x + c), f));
  for (; c < n; ++c) x[c] *= factor;
}

// x[c] = 0 for c in [begin, end), in whole vectors from begin (a multiple of
// kLanes): the row has room up to end rounded up to kLanes.
inline void ZeroVectors(float* x, int64_t begin, int64_t end) {
  for (int64_t c = begin; c < end; c += kLanes) Store(x + c, Zero());
}

// RoPE's row turn (kernels/isa.h's IsaKernels::turn_row).
inline float TurnValue(float x, float c, float partner, float s) {
  return std::fma(x, c, partner * s);
}

inline void TurnRow(const float* c, const float* s, int64_t half, bool half_layout,
                    const float* in, float* out) {
  int64_t n = 0;
  if (half_layout) {
    // Both halves of a chunk are read before either is written.
    for (; n + kLanes <= half; n += kLanes) {
      const V xa = Load(in + n), xb = Load(in + half + n);
      Store(out + n, MulAdd(xa, Load(c + n), Mul(xb, Load(s + n))));
      Store(out + half + n, MulAdd(xb, Load(c + half + n), Mul(xa, Load(s + half + n))));
    }
    for (; n < half; ++n) {
      const float xa = in[n], xb = in[half + n];
      out[n] = TurnValue(xa, c[n], xb, s[n]);
      out[half + n] = TurnValue(xb, c[half + n], xa, s[half + n]);
    }
    return;
  }
  // kLanes / 2 pairs a vector; a pair's partner is the next lane (or the one before).
  for (; 2 * n + kLanes <= 2 * half; n += kLanes / 2) {
    const V x = Load(in + 2 * n);
    Store(out + 2 * n, MulAdd(x, Load(c + 2 * n), Mul(SwapPairs(x), Load(s + 2 * n))));
  }
  for (; n < half; ++n) {
    const float xa = in[2 * n], xb = in[2 * n + 1];
    out[2 * n] = TurnValue(xa, c[2 * n], xb, s[2 * n]);
    out[2 * n + 1] = TurnValue(xb, c[2 * n + 1], xa, s[2 * n + 1]);
  }
}

}  // namespace simd
