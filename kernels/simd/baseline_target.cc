// The fast engine and the SIMD kernels for any CPU: GCC's portable vector
// extensions (4 floats: SSE2 on x86-64, the target's own elsewhere), no FMA,
// built with the project's default flags (kernels/isa.h).
#include "kernels/simd/target_prelude.h"

#define ATTN_ISA_LEVEL 0
#define ATTN_ISA_NAMESPACE baseline
#include "kernels/simd/target_body.h"

namespace attnserve::kernels::simd {

const IsaKernels& BaselineKernels() { return baseline::kKernels; }

}  // namespace attnserve::kernels::simd
