// The positional methods' per-row score loops, for the ISA of the including
// translation unit (kernels/simd/vec.h): ALiBi's bias, DA-Transformer's
// re-scaling and Shaw's relative term (kernels/positional/alibi.cc,
// da_transformer.cc, shaw.cc), which run once per score of every tile, so
// at the ISA's full width rather than at the 4 lanes of the code built for
// any x86-64.
//
// Each computes what the scalar loop it replaces computed, operation for
// operation: the same logits bit for bit on every ISA. Included only inside
// a target region of kernels/simd/*_target.cc, after
// kernels/simd/micro_kernels.h, in namespace
// attnserve::kernels::ATTN_ISA_NAMESPACE. All functions are pure and
// thread-safe.
#if !defined(ATTN_ISA_LEVEL)
#error "kernels/simd/score_rows.h is for the per-ISA translation units only"
#endif

namespace simd {

// v, as a value the compiler may not fuse into the operation that reads it.
// GCC's default -ffp-contract=fast turns a * b - c * d into a fused
// multiply-add wherever the target has FMA: one rounding where the scalar
// loops these replace (built for x86-64's SSE2, which has none) round each
// product, so the logits would differ between ISAs in the last bit.
inline V Rounded(V v) {
#if ATTN_ISA_LEVEL >= 1
  __asm__("" : "+v"(v));
#endif
  return v;
}

// ALiBi: row[c] = scale * row[c] - slope * |delta - c| for c < n (|delta| +
// n < 2^24: every value exact in float). Writes whole vectors: the row has
// room up to n rounded up to kLanes (ScoreModifier::ModifyScores' rows
// have it up to 16), and the lanes past n hold anything.
inline void AlibiRow(float* row, int64_t n, float scale, float slope, float delta) {
  const V s = Set1(scale), m = Set1(slope);
  alignas(64) float lanes[kLanes];
  for (int i = 0; i < kLanes; ++i) lanes[i] = static_cast<float>(i);
  // delta - c, stepped by kLanes (exact: integers below 2^24).
  V distance = Sub(Set1(delta), Load(lanes));
  const V step = Set1(static_cast<float>(kLanes));
  for (int64_t c = 0; c < n; c += kLanes) {
    const V scaled = Rounded(Mul(s, Load(row + c)));
    Store(row + c, Sub(scaled, Rounded(Mul(m, Abs(distance)))));
    distance = Sub(distance, step);
  }
}

// DA-Transformer: row[c] = max(row[c], 0) * factors[c] for c < n (a NaN
// score stays NaN, -0 stays -0, as std::max(x, 0.0f) leaves them). Reads
// and writes nothing past n.
inline void ReluTimesRow(float* row, const float* factors, int64_t n) {
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    // Max returns its second operand when either is NaN or both are zero.
    Store(row + c, Mul(Max(Zero(), Load(row + c)), Load(factors + c)));
  }
  for (; c < n; ++c) row[c] = std::max(row[c], 0.0f) * factors[c];
}

// Shaw: row[c] = scale * (row[c] + t_c) for c < n, t_c = terms[c], or
// `term` for every c when terms is null. Reads and writes nothing past n.
inline void AddThenScaleRow(float* row, int64_t n, const float* terms, float term,
                            float scale) {
  const V s = Set1(scale);
  int64_t c = 0;
  if (terms == nullptr) {
    const V t = Set1(term);
    for (; c + kLanes <= n; c += kLanes) Store(row + c, Mul(s, Add(Load(row + c), t)));
    for (; c < n; ++c) row[c] = scale * (row[c] + term);
    return;
  }
  for (; c + kLanes <= n; c += kLanes) {
    Store(row + c, Mul(s, Add(Load(row + c), Load(terms + c))));
  }
  for (; c < n; ++c) row[c] = scale * (row[c] + terms[c]);
}

}  // namespace simd
