// The fast attention engine: tiled, fused, FlashAttention-style (Dao et al.
// 2022, "FlashAttention", Algorithm 1) on AVX2 + FMA.
//
// Work is split over (batch, head, block of query rows). Each block streams
// over blocks of keys: scores tile = Q_blk K_blk^T (micro-kernels of
// micro_kernels.h on K and V packed once per head and thread), the method's
// ScoreModifier on the tile, then an online softmax (running max and sum per
// row, the accumulator rescaled when the max grows) and acc += P V_blk. Under
// causal masking, key blocks wholly after a query block's last position are
// never computed. Memory beyond the inputs and output is O(Sk * (D + Dv)) per
// thread (the packed head) plus O(block) tiles; no [Sq, Sk] matrix exists
// unless probs are requested, in which case the scores go straight into the
// probs output and are normalised exactly there (two passes per block).
//
// Thread-safety: reentrant; the calls share no state.
#ifndef ATTNSERVE_KERNELS_FAST_ATTENTION_H_
#define ATTNSERVE_KERNELS_FAST_ATTENTION_H_

#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/positional/method.h"

namespace attnserve::kernels {

// Runs softmax(score) @ v (+ the modifier's value term) for `prepared`, as
// RunPlainAttention does, in float32 with the tiling above. probs
// [B,H,Sq,Sk] is filled only when return_probs (the caller has checked its
// size). CANCELLED when options.cancelled becomes true (polled between query
// blocks).
absl::StatusOr<AttendResult> RunFastAttention(const PreparedAttention& prepared,
                                              bool return_probs, const ComputeOptions& options);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_FAST_ATTENTION_H_
