// The fast engine and the SIMD kernels for AVX2 + FMA (256-bit vectors, 16
// registers): the only code built for it (kernels/isa.h).
#include "kernels/simd/target_prelude.h"

#if defined(__x86_64__)
// GCC takes the target from push_options/target; Clang ignores those and
// applies it to every function declared up to the pop instead.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#endif
#define ATTN_ISA_LEVEL 1
#define ATTN_ISA_NAMESPACE avx2
#include "kernels/simd/target_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace attnserve::kernels::simd {

const IsaKernels* Avx2Kernels() {
#if defined(__x86_64__)
  return &avx2::kKernels;
#else
  return nullptr;
#endif
}

}  // namespace attnserve::kernels::simd
