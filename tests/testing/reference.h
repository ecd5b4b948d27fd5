// A naive, double-precision reference of every positional method of
// positional-methods.md, with every variant of attention-variants.md (GQA,
// kv_lengths, sliding windows, rows that see no key, softcap, the yarn,
// llama3 and dynamic_ntk RoPE scalings, ALiBi's custom slopes) and the decode
// sessions of decode-sessions.md, written from the specs alone: it shares no code with
// kernels/ (only the argument structs, as plain data), so the two
// implementations check each other. Every table, projection, dot product and
// exp is computed in double from the float32 inputs; the full [Sq, Sk] score
// matrix is materialised. It is meant for small and medium test shapes (it is
// O(B*H*Sq*Sk*D) with no blocking), not for speed.
//
// It also validates the spec's main rules (shapes, missing or extra inputs,
// parameter values, query_offset, learned-table positions, and the variants'
// rules) with the spec's status codes and field names: INVALID_ARGUMENT, and
// OUT_OF_RANGE only for learned-table positions, checked last (and for a
// decode step past max_len). It has no size limits and no cancellation.
// 16-bit transport is not its concern: it takes float32 values (widening is
// exact) and returns doubles.
//
// Also here: the comparison helpers of the differential tests and the
// FlashAttention error rule for faster engines (STYLE.md, "Tests").
//
// Thread-safety: every function is pure and reentrant.
#ifndef ATTNSERVE_TESTS_TESTING_REFERENCE_H_
#define ATTNSERVE_TESTS_TESTING_REFERENCE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/attention.h"
#include "kernels/tensor.h"

namespace attnserve::testing {

// A dense row-major array of doubles with its shape.
struct RefTensor {
  std::vector<int64_t> shape;
  std::vector<double> data;
};

using RefOutputs = std::map<std::string, RefTensor>;

// Multi-head attention of positional-methods.md section 2 for args.method,
// with args' variants (num_kv_heads, kv_lengths, window, softcap; k and v may
// have H_kv heads). Outputs "out" [B,H,Sq,Dv] and "probs" [B,H,Sq,Sk]
// (always, whatever args.return_probs says; a row that sees no key is zeros
// in both). args.inputs is only read.
absl::StatusOr<RefOutputs> ReferenceAttend(const kernels::AttendArgs& args);

// The encode form of args.method; outputs named as in section 3.2 (y, table,
// rel_table, rel_proj, rel_index, rel_k_gathered, slopes, bias, coeff).
// RoPE's y includes YaRN's attention_factor; ALiBi's slopes are the custom
// ones when given. INVALID_ARGUMENT for none (no encode form).
absl::StatusOr<RefOutputs> ReferenceEncode(const kernels::EncodeArgs& args);

// A decode session's open (decode-sessions.md 1): the scalar fields of
// DecodeOpen and its tensors (w_q, w_k, w_v for the absolute methods, and the
// method's: table, pos_bias_u, ..., slopes), by their spec names.
struct RefDecodeOpen {
  kernels::MethodKind method = kernels::MethodKind::kNone;
  kernels::MethodParams params;
  kernels::TensorMap tensors;
  int64_t batch = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, value_dim = 0;
  int64_t max_len = 0;
  std::optional<double> scale;
  std::optional<int64_t> window;
  std::optional<double> softcap;
};

// The session of decode-sessions.md 2, in double: it keeps the steps' raw
// inputs (k and v, or x) and evaluates each step as the Attend it equals:
// causal, query_offset = t, the kept history followed by the new tokens
// (so RoPE keys are rotated at their own positions, and sinusoidal and
// learned project each token at its position). Not thread-safe.
class ReferenceDecodeSession {
 public:
  // The open's rules: INVALID_ARGUMENT naming batch, num_heads,
  // num_kv_heads, head_dim, value_dim, max_len, window, softcap, scaling
  // (dynamic_ntk is refused) or the tensor; OUT_OF_RANGE naming max_len for
  // a learned table of fewer than max_len rows.
  static absl::StatusOr<ReferenceDecodeSession> Open(RefDecodeOpen open);

  // One step with `inputs` q [B,H,n,D], k [B,H_kv,n,D], v [B,H_kv,n,Dv]
  // (or x [B,n,d_model]): "out" [B,H,n,Dv] and "probs" [B,H,n,t+n]; the new
  // tokens are appended only on success. OUT_OF_RANGE naming max_len past
  // the capacity; shape and value errors as Attend's.
  absl::StatusOr<RefOutputs> Step(const kernels::TensorMap& inputs);
  // Keeps the first `length` tokens (INVALID_ARGUMENT naming
  // truncate.length unless 0 <= length <= Length()).
  absl::Status Truncate(int64_t length);
  int64_t Length() const { return length_; }

 private:
  explicit ReferenceDecodeSession(RefDecodeOpen open) : open_(std::move(open)) {}
  bool Absolute() const;

  RefDecodeOpen open_;
  int64_t length_ = 0;
  std::map<std::string, RefTensor> history_;  // k, v [B,H_kv,t,*] or x [B,t,d_model]
};

// The spec's position tables on their own, in double, for the unit tests.
// 2.2: P[position, 0 .. d_model-1], interleaved sin/cos.
std::vector<double> ReferenceSinusoid(double position, int64_t d_model, double base);
// 2.5: R(r), d_rel entries, all sines then all cosines.
std::vector<double> ReferenceRelativeSinusoid(double r, int64_t d_rel, double base);
// 2.7: m_1 .. m_H, derived as the public get_slopes does (a geometric series;
// non-powers of two take every other slope of 2P).
std::vector<double> ReferenceAlibiSlopes(int64_t heads);
// 2.8: Rhat = (1 + exp(v)) / (1 + exp(v - w * distance)), in log space.
double ReferenceDaCoefficient(double w, double v, double distance);

// max_n |got[n] - ref[n]|; +infinity when the shapes differ or a value of
// `got` is not finite. The FlashAttention rule's error measure.
double MaxAbsError(const kernels::Tensor& got, const RefTensor& ref);

// Empty when got matches ref (same shape, finite, and
// |got - ref| <= atol + rtol * |ref| everywhere), else a description of the
// first mismatches naming `name`.
std::string CompareToReference(absl::string_view name, const kernels::Tensor& got,
                               const RefTensor& ref, double rtol, double atol);

// The FlashAttention test rule (tests/test_flash_attn.py): a faster engine's
// error against the double reference must be at most `factor` times the plain
// engine's error on the same inputs, plus `slack` (an absolute floor for when
// the plain engine is exact to the last float bit). OK, or INTERNAL with both
// errors in the message.
absl::Status CheckErrorRule(const kernels::Tensor& fast, const kernels::Tensor& plain,
                            const RefTensor& ref, double factor = 2.0, double slack = 0.0);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_REFERENCE_H_
