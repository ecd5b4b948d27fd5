// The fast engine and the SIMD kernels for AVX-512 (F, BW, DQ, VL; 512-bit
// vectors, 32 registers): the only code built for it (kernels/isa.h).
//
// GCC 12's AVX-512 intrinsics (max, min, permute, convert, ...) start from
// _mm512_undefined_*(), a self-initialised variable that -Wuninitialized
// reports at every inlined use when the target comes from a pragma. The
// warnings are off for this file only; the same code is built with them on
// in the AVX2 and baseline files.
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/simd/target_prelude.h"

#if defined(__x86_64__)
// GCC takes the target from push_options/target; Clang ignores those and
// applies it to every function declared up to the pop instead.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c")
#endif
#define ATTN_ISA_LEVEL 2
#define ATTN_ISA_NAMESPACE avx512
#include "kernels/simd/target_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace attnserve::kernels::simd {

const IsaKernels* Avx512Kernels() {
#if defined(__x86_64__)
  return &avx512::kKernels;
#else
  return nullptr;
#endif
}

}  // namespace attnserve::kernels::simd
