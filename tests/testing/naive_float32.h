// The textbook float32 attention of every positional method: the baseline
// whose error the FlashAttention test rule scales (STYLE.md, "Tests"). A fast
// engine's max error against the double reference (reference.h) must be at
// most 2x this path's error on the same inputs.
//
// Everything is float: projections, the full [Sq, Sk] score matrix per head,
// the positional terms exactly as positional-methods.md writes them (ALiBi's
// -m_h * |delta| added after scaling, Shaw's q . (k + rel_k), DA's
// (1 + exp(v)) * sigmoid(x - v), ...), a max-subtracted float softmax and
// float P.V, every sum accumulated left to right. The position tables
// (sinusoid, RoPE cos/sin, Transformer-XL R, ALiBi slopes) are formed in
// double and rounded to float, because the spec (1.6) requires exactly that
// of every engine; they are the float computation's inputs. Shares no code
// with kernels/.
//
// The variants of attention-variants.md too: k and v with H_kv heads
// (num_kv_heads for the absolute methods), kv_lengths, windows, softcap (in
// float, on the final logit) and rows that see no key (zeros).
//
// Thread-safety: NaiveFloat32Attend is pure and reentrant.
#ifndef ATTNSERVE_TESTS_TESTING_NAIVE_FLOAT32_H_
#define ATTNSERVE_TESTS_TESTING_NAIVE_FLOAT32_H_

#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/tensor.h"

namespace attnserve::testing {

struct NaiveOutputs {
  kernels::Tensor out;    // [B, H, Sq, Dv]
  kernels::Tensor probs;  // [B, H, Sq, Sk]
};

// Attention of args.method in float32. args must be a valid request (one
// ReferenceAttend accepts): only the presence of the method's inputs is
// checked (INVALID_ARGUMENT naming the missing one), not the spec's rules.
// args.return_probs is ignored (probs are always computed).
absl::StatusOr<NaiveOutputs> NaiveFloat32Attend(const kernels::AttendArgs& args);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_NAIVE_FLOAT32_H_
