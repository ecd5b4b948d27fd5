// The plain attention engine: one query row at a time, exact two-pass softmax,
// dot products and sums in double. It is the obviously-correct path that
// every faster engine is tested against, and it needs O(Sk + Dv) scratch per
// thread: no [Sq, Sk] matrix exists unless the caller asked for probs.
//
// Thread-safety: reentrant; parallel over (batch, head, query row).
#ifndef ATTNSERVE_KERNELS_PLAIN_ATTENTION_H_
#define ATTNSERVE_KERNELS_PLAIN_ATTENTION_H_

#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/positional/method.h"

namespace attnserve::kernels {

// Runs softmax(score) @ v (+ the modifier's value term) for `prepared`.
// probs [B,H,Sq,Sk] is filled only when return_probs. CANCELLED when
// options.cancelled becomes true mid-way.
absl::StatusOr<AttendResult> RunPlainAttention(const PreparedAttention& prepared,
                                               bool return_probs,
                                               const ComputeOptions& options);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_PLAIN_ATTENTION_H_
