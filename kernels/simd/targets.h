// The per-ISA translation units' entry tables (kernels/isa.h's IsaKernels),
// for kernels/isa.cc only.
//
// Thread-safety: the tables are immutable.
#ifndef ATTNSERVE_KERNELS_SIMD_TARGETS_H_
#define ATTNSERVE_KERNELS_SIMD_TARGETS_H_

#include "kernels/isa.h"

namespace attnserve::kernels::simd {

// Null when this build has no code for the ISA (a non-x86 build).
const IsaKernels* Avx512Kernels();
const IsaKernels* Avx2Kernels();
const IsaKernels& BaselineKernels();

}  // namespace attnserve::kernels::simd

#endif  // ATTNSERVE_KERNELS_SIMD_TARGETS_H_
