// Runtime instruction-set dispatch for the hand-vectorised kernels.
//
// The fast engine and the SIMD pieces the positional methods share (the
// finite scan, the panel micro-kernels, packing, RoPE's row turn) exist once
// per instruction set, in kernels/simd/ (one translation unit per ISA, the
// target enabled by pragma inside that unit only: no other code is built
// for more than x86-64's SSE2, and non-x86 builds get only the portable
// path). The ISA is chosen once: the best the CPU supports (CPUID, with the
// OS's register-state support), capped by the environment variable
// ATTN_MAX_ISA or by SetMaxIsa (attnd's --max_isa) before the first call.
//
// Thread-safety: Kernels() and ActiveIsa() are safe from any thread; the
// choice is fixed at the first of them (SetMaxIsa must come before).
#ifndef ATTNSERVE_KERNELS_ISA_H_
#define ATTNSERVE_KERNELS_ISA_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnserve::kernels {

struct AttendResult;
struct ComputeOptions;
struct PreparedAttention;

// Ordered: a higher value can run everything a lower one can.
enum class Isa {
  kBaseline = 0,  // x86-64's SSE2 (or the portable vector code off x86)
  kAvx2 = 1,      // AVX2 + FMA (Haswell, Zen 1 and later)
  kAvx512 = 2,    // AVX-512 F, BW, DQ, VL (Skylake-SP, Zen 4 and later)
};

// "avx512", "avx2", "baseline": the values of ATTN_MAX_ISA, --max_isa and the
// isa label of attnserve_build_info.
absl::string_view IsaName(Isa isa);

// One of IsaName's values; INVALID_ARGUMENT naming `source` (the flag or the
// variable the value came from) otherwise.
absl::StatusOr<Isa> ParseIsa(absl::string_view value, absl::string_view source);

// The best ISA this CPU (and this build) supports.
Isa CpuIsa();

// The cap from ATTN_MAX_ISA: nullopt when unset or empty, an error naming
// the variable for an unknown value.
absl::StatusOr<std::optional<Isa>> MaxIsaFromEnvironment();

// Fixes the choice to min(cap, CpuIsa()) (a cap above the CPU's best falls
// back to its best). FAILED_PRECONDITION once the choice is fixed to a
// different ISA (the first Kernels() or ActiveIsa() call fixes it).
absl::Status SetMaxIsa(Isa cap);

// Start-up for a program with a --max_isa flag (attnd): the cap is the
// flag's value when set (non-empty), else ATTN_MAX_ISA's; fixes the choice
// and returns it. INVALID_ARGUMENT naming the flag or the variable for an
// unknown value.
absl::StatusOr<Isa> ChooseIsa(absl::string_view max_isa_flag);

// The ISA in use. Fixes the choice if nothing has yet: from ATTN_MAX_ISA,
// exiting the process with a message naming it when its value is unknown
// (attnd validates it at start-up first, as a flag error).
Isa ActiveIsa();

// The entry points of one ISA's code. Every pointer is set.
struct IsaKernels {
  Isa isa;
  // kernels/fast_attention.h's RunFastAttention.
  absl::StatusOr<AttendResult> (*run_fast_attention)(const PreparedAttention& prepared,
                                                     bool return_probs,
                                                     const ComputeOptions& options,
                                                     bool check_qkv);
  // Whether x[0..n) are all finite.
  bool (*all_finite)(const float* x, int64_t n);
  // sum of x[0..n) accumulated in double.
  double (*sum_in_double)(const float* x, int64_t n);
  // C[m x n_pad] = A[m x k] * B[k x n_pad] (kernels/simd/panels.h's layout:
  // panel t of B at b + t * panel_stride), or += with accumulate.
  void (*gemm)(bool accumulate, int64_t m, int64_t n_pad, int64_t k, const float* a,
               int64_t lda, const float* b, int64_t panel_stride, float* c, int64_t ldc);
  // A [rows x cols] matrix (row r at src + r * ld) as panels at dst.
  void (*pack_column_panels)(const float* src, int64_t ld, int64_t rows, int64_t cols,
                             float* dst);
  // panel[e * 16 + r] = scale * src[r * lds + e] for r < 16, e < width.
  void (*transpose_into_panel)(const float* src, int64_t lds, int64_t width, float* panel,
                               float scale);
  // RoPE's row turn (kernels/positional/rope.cc): out[e] = in[e] * c[e] +
  // in[partner(e)] * s[e] with one rounding order (the product with s, then
  // a fused multiply-add where the ISA has one).
  void (*turn_row)(const float* c, const float* s, int64_t half, bool half_layout,
                   const float* in, float* out);
  // The positional methods' score rows (kernels/simd/score_rows.h), each
  // rounding as the scalar loop it replaced (the same logits on every ISA).
  // ALiBi: row[c] = scale * row[c] - slope * |delta - c| for c < n, |delta|
  // + n < 2^24; writes whole vectors up to n rounded up to 16.
  void (*alibi_row)(float* row, int64_t n, float scale, float slope, float delta);
  // DA-Transformer: row[c] = max(row[c], 0) * factors[c] for c < n.
  void (*relu_times_row)(float* row, const float* factors, int64_t n);
  // Shaw: row[c] = scale * (row[c] + terms[c]) for c < n, or with `term`
  // for every c when terms is null.
  void (*add_then_scale_row)(float* row, int64_t n, const float* terms, float term, float scale);
  // The decode kernel's (kernels/decode_attention.cc) per-key work, for one
  // query row against `count` cached rows: out[j] = q . k_j with k_j at
  // k + j * d.
  void (*decode_dot_rows)(const float* q, const float* k, int64_t d, int64_t count, float* out);
  // s[j] = exp(s[j] - max) for j < count, acc[0..dv) += sum_j s[j] * v_j with
  // v_j at v + j * dv; returns sum_j s[j].
  float (*decode_exp_accumulate)(float* s, int64_t count, float max, const float* v, int64_t dv,
                                 float* acc);
  // dst[i] = the IEEE binary16 value whose little-endian bytes are src[2i]
  // and src[2i + 1], exactly (F16C's vcvtph2ps; a NaN comes out quiet): the
  // server's widening of float16 raw_data (attention-variants.md 6). Null on
  // the baseline, which has no such instruction (the caller's scalar loop).
  void (*widen_float16)(const char* src, int64_t n, float* dst);
  // The reverse for responses: dst[2i], dst[2i + 1] = the little-endian
  // binary16 nearest src[i], ties to even, beyond 65504 infinity (F16C's
  // vcvtps2ph); null on the baseline.
  void (*narrow_float16)(const float* src, int64_t n, char* dst);
};

// The active ISA's kernels.
const IsaKernels& Kernels();

// Another ISA's kernels (tests, benchmarks): null when the CPU cannot run
// them.
const IsaKernels* KernelsFor(Isa isa);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_ISA_H_
