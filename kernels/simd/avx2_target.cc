// The fast engine and the SIMD kernels for AVX2 + FMA (256-bit vectors, 16
// registers): the only code built for it (kernels/isa.h).
#include "kernels/simd/target_prelude.h"

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define ATTN_ISA_LEVEL 1
#define ATTN_ISA_NAMESPACE avx2
#include "kernels/simd/target_body.h"
#pragma GCC pop_options
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
