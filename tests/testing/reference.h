// A naive, double-precision reference of every positional method of
// positional-methods.md, written from the spec alone: it shares no code with
// kernels/ (only the argument structs, as plain data), so the two
// implementations check each other. Every table, projection, dot product and
// exp is computed in double from the float32 inputs; the full [Sq, Sk] score
// matrix is materialised. It is meant for small and medium test shapes (it is
// O(B*H*Sq*Sk*D) with no blocking), not for speed.
//
// It also validates the spec's main rules (shapes, missing or extra inputs,
// parameter values, query_offset, learned-table positions) with the spec's
// status codes: INVALID_ARGUMENT, and OUT_OF_RANGE only for learned-table
// positions, checked last. It has no size limits and no cancellation.
//
// Also here: the comparison helpers of the differential tests and the
// FlashAttention error rule for faster engines (STYLE.md, "Tests").
//
// Thread-safety: every function is pure and reentrant.
#ifndef ATTNSERVE_TESTS_TESTING_REFERENCE_H_
#define ATTNSERVE_TESTS_TESTING_REFERENCE_H_

#include <cstdint>
#include <map>
#include <string>
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

// Multi-head attention of positional-methods.md section 2 for args.method.
// Outputs "out" [B,H,Sq,Dv] and "probs" [B,H,Sq,Sk] (always, whatever
// args.return_probs says). args.inputs is only read.
absl::StatusOr<RefOutputs> ReferenceAttend(const kernels::AttendArgs& args);

// The encode form of args.method; outputs named as in section 3.2 (y, table,
// rel_table, rel_proj, rel_index, rel_k_gathered, slopes, bias, coeff).
// INVALID_ARGUMENT for none (no encode form).
absl::StatusOr<RefOutputs> ReferenceEncode(const kernels::EncodeArgs& args);

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
