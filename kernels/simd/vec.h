// The vector operations the per-ISA kernels are written in, for the ISA of
// the translation unit that includes this (ATTN_ISA_LEVEL: 2 AVX-512, 1
// AVX2 + FMA, 0 the portable baseline in GCC vector extensions: SSE2 on
// x86-64, whatever the target has elsewhere). Included only inside a target
// region of kernels/simd/*_target.cc, after namespace attnserve::kernels::
// ATTN_ISA_NAMESPACE::simd has been opened.
//
// V holds kLanes floats. MulAdd is fused where the ISA has FMA, a*b + c
// otherwise. All functions are pure.
#if !defined(ATTN_ISA_LEVEL)
#error "kernels/simd/vec.h is for the per-ISA translation units only"
#endif

#if ATTN_ISA_LEVEL == 2

using V = __m512;
inline constexpr int kLanes = 16;
inline V Load(const float* p) { return _mm512_loadu_ps(p); }
inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V Set1(float x) { return _mm512_set1_ps(x); }
inline V Zero() { return _mm512_setzero_ps(); }
inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V Div(V a, V b) { return _mm512_div_ps(a, b); }
inline V MulAdd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V NegMulAdd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline V Max(V a, V b) { return _mm512_max_ps(a, b); }
inline V Min(V a, V b) { return _mm512_min_ps(a, b); }
// |x|: the sign bit cleared (as std::fabs).
inline V Abs(V x) { return _mm512_andnot_ps(Set1(-0.0f), x); }
inline V Floor(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
// 2^n for integral n in [-127, 128) held as floats.
inline V Pow2(V n) {
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_castsi512_ps(bits);
}
// y where x > bound, else 0 (NaN x gives 0).
inline V ZeroUnlessAbove(V x, float bound, V y) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, Set1(bound), _CMP_GT_OQ), y);
}
// a where x < bound, else b.
inline V SelectBelow(V x, float bound, V a, V b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, Set1(bound), _CMP_LT_OQ), b, a);
}
inline __mmask16 FirstLanesMask(int64_t count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}
// Lanes from `count` (0..kLanes) on replaced by `fill`.
inline V KeepFirst(V v, int64_t count, float fill) {
  return _mm512_mask_mov_ps(Set1(fill), FirstLanesMask(count), v);
}
// The first `count` lanes from p (nothing past them is read), the rest `fill`.
inline V LoadFirst(const float* p, int64_t count, float fill) {
  return _mm512_mask_loadu_ps(Set1(fill), FirstLanesMask(count), p);
}
inline void StoreFirst(float* p, int64_t count, V v) {
  _mm512_mask_storeu_ps(p, FirstLanesMask(count), v);
}
// Lanes (0 1)(2 3)... swapped within each pair.
inline V SwapPairs(V x) { return _mm512_permute_ps(x, 0xB1); }
inline float ReduceMax(V v) { return _mm512_reduce_max_ps(v); }
inline float ReduceSum(V v) { return _mm512_reduce_add_ps(v); }

#elif ATTN_ISA_LEVEL == 1

using V = __m256;
inline constexpr int kLanes = 8;
inline V Load(const float* p) { return _mm256_loadu_ps(p); }
inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V Set1(float x) { return _mm256_set1_ps(x); }
inline V Zero() { return _mm256_setzero_ps(); }
inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V Div(V a, V b) { return _mm256_div_ps(a, b); }
inline V MulAdd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V NegMulAdd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
inline V Max(V a, V b) { return _mm256_max_ps(a, b); }
inline V Min(V a, V b) { return _mm256_min_ps(a, b); }
inline V Abs(V x) { return _mm256_andnot_ps(Set1(-0.0f), x); }
inline V Floor(V x) { return _mm256_floor_ps(x); }
inline V Pow2(V n) {
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_castsi256_ps(bits);
}
inline V ZeroUnlessAbove(V x, float bound, V y) {
  return _mm256_and_ps(y, _mm256_cmp_ps(x, Set1(bound), _CMP_GT_OQ));
}
inline V SelectBelow(V x, float bound, V a, V b) {
  return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, Set1(bound), _CMP_LT_OQ));
}
inline __m256i FirstLanesMask(int64_t count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), index);
}
inline V KeepFirst(V v, int64_t count, float fill) {
  return _mm256_blendv_ps(Set1(fill), v, _mm256_castsi256_ps(FirstLanesMask(count)));
}
inline V LoadFirst(const float* p, int64_t count, float fill) {
  return KeepFirst(_mm256_maskload_ps(p, FirstLanesMask(count)), count, fill);
}
inline void StoreFirst(float* p, int64_t count, V v) {
  _mm256_maskstore_ps(p, FirstLanesMask(count), v);
}
inline V SwapPairs(V x) { return _mm256_permute_ps(x, 0xB1); }
inline float ReduceMax(V v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
inline float ReduceSum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

#else  // The portable baseline.

typedef float V __attribute__((vector_size(16)));
typedef int32_t VInt __attribute__((vector_size(16)));
inline constexpr int kLanes = 4;
inline V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline V Set1(float x) { return V{x, x, x, x}; }
inline V Zero() { return V{0, 0, 0, 0}; }
inline V Add(V a, V b) { return a + b; }
inline V Sub(V a, V b) { return a - b; }
inline V Mul(V a, V b) { return a * b; }
inline V Div(V a, V b) { return a / b; }
inline V MulAdd(V a, V b, V c) { return a * b + c; }
inline V NegMulAdd(V a, V b, V c) { return c - a * b; }
// As the x86 instructions: the second operand when either is NaN.
inline V Max(V a, V b) { return a > b ? a : b; }
inline V Min(V a, V b) { return a < b ? a : b; }
inline V Abs(V x) {
  const VInt magnitude = __builtin_bit_cast(VInt, x) & 0x7fffffff;
  return __builtin_bit_cast(V, magnitude);
}
inline V Floor(V x) {  // |x| < 2^31 here
  const V truncated = __builtin_convertvector(__builtin_convertvector(x, VInt), V);
  // -1 (true) where truncation went up, i.e. for negative non-integers.
  return truncated + __builtin_convertvector(truncated > x, V);
}
inline V Pow2(V n) {
  const VInt bits = (__builtin_convertvector(n, VInt) + 127) << 23;
  return __builtin_bit_cast(V, bits);
}
inline V ZeroUnlessAbove(V x, float bound, V y) {
  const VInt keep = x > Set1(bound);
  const VInt bits = __builtin_bit_cast(VInt, y) & keep;
  return __builtin_bit_cast(V, bits);
}
inline V SelectBelow(V x, float bound, V a, V b) { return x < Set1(bound) ? a : b; }
inline V KeepFirst(V v, int64_t count, float fill) {
  const VInt index = {0, 1, 2, 3};
  return index < static_cast<int32_t>(count) ? v : Set1(fill);
}
inline V LoadFirst(const float* p, int64_t count, float fill) {
  V v = Set1(fill);
  for (int64_t i = 0; i < count; ++i) v[i] = p[i];
  return v;
}
inline void StoreFirst(float* p, int64_t count, V v) {
  for (int64_t i = 0; i < count; ++i) p[i] = v[i];
}
#if defined(__clang__)
inline V SwapPairs(V x) { return __builtin_shufflevector(x, x, 1, 0, 3, 2); }
#else
inline V SwapPairs(V x) { return __builtin_shuffle(x, VInt{1, 0, 3, 2}); }
#endif
inline float ReduceMax(V v) {
  const float a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
  return a > b ? a : b;
}
inline float ReduceSum(V v) { return (v[0] + v[2]) + (v[1] + v[3]); }

#endif
