// The SIMD pieces of the decode kernel (kernels/decode_attention.cc), for the
// ISA of the including translation unit: one query row against a block of
// cached keys and values read where they lie, row-major ([j][e]).
//
// A decode step does about one multiply-add per cached value read, so what
// matters is that each key and value row is read once, whole vectors at a
// time, and that the exp is vectorised: per key, a scalar dot product and a
// scalar std::exp cost more than reading the row.
//
// Included only inside a target region of kernels/simd/*_target.cc, after
// kernels/simd/micro_kernels.h (ExpAndSum). All functions are pure and thread-safe.
#if !defined(ATTN_ISA_LEVEL)
#error "kernels/simd/decode_rows.h is for the per-ISA translation units only"
#endif

namespace simd {

// q . row over d floats, lanes summed pairwise at the end; every row of one
// call shares the order.
inline V DotVector(const float* q, const float* row, int64_t d) {
  V acc = Zero();
  int64_t e = 0;
  for (; e + kLanes <= d; e += kLanes) acc = MulAdd(Load(q + e), Load(row + e), acc);
  if (e < d) acc = MulAdd(LoadFirst(q + e, d - e, 0.0f), LoadFirst(row + e, d - e, 0.0f), acc);
  return acc;
}

// out[j] = q . k_j for j < count, k_j at k + j * d. Four keys at a time:
// four independent accumulation chains.
inline void DotRows(const float* q, const float* k, int64_t d, int64_t count, float* out) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const V a0 = DotVector(q, k + j * d, d), a1 = DotVector(q, k + (j + 1) * d, d);
    const V a2 = DotVector(q, k + (j + 2) * d, d), a3 = DotVector(q, k + (j + 3) * d, d);
    out[j] = ReduceSum(a0);
    out[j + 1] = ReduceSum(a1);
    out[j + 2] = ReduceSum(a2);
    out[j + 3] = ReduceSum(a3);
  }
  for (; j < count; ++j) out[j] = ReduceSum(DotVector(q, k + j * d, d));
}

// s[j] = exp(s[j] - max) for j < count (the softmax weights, written back
// for callers that add more per key), acc[0..dv) += sum_j s[j] * v_j with v_j
// at v + j * dv; returns sum_j s[j]. The accumulator stays in registers over
// the block, a register group (4 vectors) of columns at a time.
inline float ExpAccumulate(float* s, int64_t count, float max, const float* v, int64_t dv,
                           float* acc) {
  const float sum = ExpAndSum(s, count, max);
  constexpr int64_t kGroup = 4 * kLanes;
  int64_t e = 0;
  for (; e + kGroup <= dv; e += kGroup) {
    V a0 = Load(acc + e), a1 = Load(acc + e + kLanes);
    V a2 = Load(acc + e + 2 * kLanes), a3 = Load(acc + e + 3 * kLanes);
    for (int64_t i = 0; i < count; ++i) {
      const V w = Set1(s[i]);
      const float* row = v + i * dv + e;
      a0 = MulAdd(w, Load(row), a0);
      a1 = MulAdd(w, Load(row + kLanes), a1);
      a2 = MulAdd(w, Load(row + 2 * kLanes), a2);
      a3 = MulAdd(w, Load(row + 3 * kLanes), a3);
    }
    Store(acc + e, a0);
    Store(acc + e + kLanes, a1);
    Store(acc + e + 2 * kLanes, a2);
    Store(acc + e + 3 * kLanes, a3);
  }
  for (; e < dv; e += kLanes) {
    const int64_t width = std::min<int64_t>(kLanes, dv - e);
    V a = LoadFirst(acc + e, width, 0.0f);
    for (int64_t i = 0; i < count; ++i) {
      a = MulAdd(Set1(s[i]), LoadFirst(v + i * dv + e, width, 0.0f), a);
    }
    StoreFirst(acc + e, width, a);
  }
  return sum;
}

}  // namespace simd
