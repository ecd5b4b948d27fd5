// The fast attention engine: tiled, fused, FlashAttention-style (Dao et al.
// 2022, "FlashAttention", Algorithm 1), built once per ISA (AVX-512, AVX2 +
// FMA, a portable baseline: kernels/isa.h chooses at start-up; the body is
// kernels/simd/engine.h).
//
// Work is split over (batch, head, block of 96 query rows), handed to the
// threads in runs of consecutive blocks. Each block streams over tiles of
// 256 keys: scores = Q_blk K_tile^T on the register-tiled micro-kernels
// of kernels/simd/micro_kernels.h (12x32 on AVX-512, 6x16 on AVX2) (K and V packed once per head and thread), the method's
// ScoreModifier on the tile (scale-only methods instead get queries scaled
// once per block; Shaw prepares per-block products in BeginQueryBlock;
// Transformer-XL's position term rides in the same product as query and key
// features, [scale q | a] . [k | b]; RoPE's rows are turned as the keys are
// packed and as a block's queries are copied), then an online softmax
// (running max and sum per row, the accumulator rescaled when the max grows) and
// acc += P V_tile. Under causal masking, tiles wholly after a block's last
// position are never computed, and on the diagonal tiles each row group
// stops at its own last position. Memory beyond the inputs and output: the
// packed head per thread (Sk x (D + features + Dv) floats) plus O(block)
// tiles; no [Sq, Sk] matrix exists unless probs are requested, in which
// case the logits go straight into the probs output and are normalised
// exactly there (two passes per block).
// The variants of attention-variants.md 1-5: under grouped-query attention
// the workspace packs one key/value head and the query heads of its group,
// consecutive work items, reuse it (no copy per query head); the causal
// mask, kv_lengths and a window give each query row a key interval, and a
// block computes only the key tiles between its rows' first and last
// visible key, whole tiles where every row sees them and per row group at
// the edges (cost ~ Sq * min(Sk, W)); the softcap bends each row's visible
// logits before its softmax (a vectorised tanh); a row that sees no key
// gets zeros.
//
// Thread-safety: reentrant; the calls share no state (each OpenMP thread
// keeps up to 4 MiB of workspace between calls, thread-locally).
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
// blocks). With check_qkv it also checks that q, k and v are finite as it
// packs them, INVALID_ARGUMENT naming the first value that is not. Its
// output is checked as it is written: OutputOverflowError
// (kernels/positional/common.h) when a value of out is not finite.
absl::StatusOr<AttendResult> RunFastAttention(const PreparedAttention& prepared,
                                              bool return_probs, const ComputeOptions& options,
                                              bool check_qkv = false);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_FAST_ATTENTION_H_
