#include "kernels/fast_attention.h"

#include "kernels/isa.h"

namespace attnserve::kernels {

// The engine itself is kernels/simd/engine.h, built once per ISA.
absl::StatusOr<AttendResult> RunFastAttention(const PreparedAttention& prepared,
                                              bool return_probs, const ComputeOptions& options,
                                              bool check_qkv) {
  return Kernels().run_fast_attention(prepared, return_probs, options, check_qkv);
}

}  // namespace attnserve::kernels
