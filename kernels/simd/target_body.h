// The per-ISA code and its entry table, for the ISA of the including
// translation unit: ATTN_ISA_LEVEL (2 AVX-512, 1 AVX2 + FMA, 0 baseline) and
// ATTN_ISA_NAMESPACE (its namespace) are defined, the target region is open
// and kernels/simd/target_prelude.h is included. Defines
// attnserve::kernels::ATTN_ISA_NAMESPACE::kKernels.
#if !defined(ATTN_ISA_LEVEL) || !defined(ATTN_ISA_NAMESPACE)
#error "kernels/simd/target_body.h is for the per-ISA translation units only"
#endif

namespace attnserve::kernels::ATTN_ISA_NAMESPACE {
// Internal linkage: each ISA's inline functions and templates stay its own
// (a shared name would let the linker keep one ISA's copy for all).
namespace {

#include "kernels/simd/micro_kernels.h"
#include "kernels/simd/engine.h"
#include "kernels/simd/score_rows.h"
#include "kernels/simd/decode_rows.h"

bool AllFinite(const float* x, int64_t n) { return simd::AllFinite(x, n); }

double SumInDouble(const float* x, int64_t n) { return simd::SumInDouble(x, n); }

void Gemm(bool accumulate, int64_t m, int64_t n_pad, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t panel_stride, float* c, int64_t ldc) {
  if (accumulate) {
    simd::Gemm<true>(m, n_pad, k, a, lda, b, panel_stride, c, ldc);
  } else {
    simd::Gemm<false>(m, n_pad, k, a, lda, b, panel_stride, c, ldc);
  }
}

void PackColumnPanels(const float* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
  simd::PackColumnPanels(src, ld, rows, cols, dst);
}

void TransposeIntoPanel(const float* src, int64_t lds, int64_t width, float* panel,
                        float scale) {
  simd::TransposeIntoPanel(src, lds, width, panel, scale);
}

void TurnRow(const float* c, const float* s, int64_t half, bool half_layout, const float* in,
             float* out) {
  simd::TurnRow(c, s, half, half_layout, in, out);
}

void AlibiRow(float* row, int64_t n, float scale, float slope, float delta) {
  simd::AlibiRow(row, n, scale, slope, delta);
}

void ReluTimesRow(float* row, const float* factors, int64_t n) {
  simd::ReluTimesRow(row, factors, n);
}

void AddThenScaleRow(float* row, int64_t n, const float* terms, float term, float scale) {
  simd::AddThenScaleRow(row, n, terms, term, scale);
}

void DecodeDotRows(const float* q, const float* k, int64_t d, int64_t count, float* out) {
  simd::DotRows(q, k, d, count, out);
}

float DecodeExpAccumulate(float* s, int64_t count, float max, const float* v, int64_t dv,
                          float* acc) {
  return simd::ExpAccumulate(s, count, max, v, dv, acc);
}

#if ATTN_ISA_LEVEL >= 1
void WidenFloat16(const char* src, int64_t n, float* dst) { simd::WidenFloat16(src, n, dst); }
void NarrowFloat16(const float* src, int64_t n, char* dst) { simd::NarrowFloat16(src, n, dst); }
#endif

}  // namespace

extern const IsaKernels kKernels;
const IsaKernels kKernels = {static_cast<Isa>(ATTN_ISA_LEVEL),
                             RunFastAttention,
                             AllFinite,
                             SumInDouble,
                             Gemm,
                             PackColumnPanels,
                             TransposeIntoPanel,
                             TurnRow,
                             AlibiRow,
                             ReluTimesRow,
                             AddThenScaleRow,
                             DecodeDotRows,
                             DecodeExpAccumulate,
#if ATTN_ISA_LEVEL >= 1
                             WidenFloat16,
                             NarrowFloat16};
#else
                             nullptr,
                             nullptr};
#endif

}  // namespace attnserve::kernels::ATTN_ISA_NAMESPACE
