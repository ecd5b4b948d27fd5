// GoldenCase -> kernels::AttendArgs / EncodeArgs, and running a case through
// the kernels with the golden comparison. Both golden formats (golden.h);
// decode cases run by equivalence (DecodeStepAsAttendCase), step by step.
#ifndef ATTNSERVE_TESTS_TESTING_GOLDEN_KERNELS_H_
#define ATTNSERVE_TESTS_TESTING_GOLDEN_KERNELS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "tests/testing/golden.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {

absl::StatusOr<kernels::MethodParams> ToMethodParams(const GoldenCase& c);
// Format 2 adds num_kv_heads, kv_lengths, window, softcap and the RoPE keys;
// ALiBi's "slopes" is an input tensor like the others. 16-bit inputs become
// their exact float32 values (the server's widening); output_dtype is a
// wire concern and ignored here (the kernels return float32).
absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const GoldenCase& c);
absl::StatusOr<kernels::EncodeArgs> ToEncodeArgs(const GoldenCase& c);

// A decode case's open (params and inputs) for ReferenceDecodeSession; a
// step's inputs are ToTensors(step.inputs).
absl::StatusOr<RefDecodeOpen> ToRefDecodeOpen(const GoldenCase& c);
kernels::TensorMap ToTensors(const GoldenTensors& tensors);

// Non-empty (the reason) when the case tests a rule of the wire that the
// kernels' argument structs cannot express, so a kernel-level run must skip
// it: a 16-bit dtype on `data`, a raw_data length that does not fit the
// dtype, 16-bit raw_data (its decoding and NaN check are the server's),
// or output_dtype without raw_output. (A decode case whose error is a
// session rule is not skipped: RunGoldenThroughKernels runs its other steps.)
std::string KernelSkipReason(const GoldenCase& c);

// Runs the case through kernels::Attend or kernels::Encode and compares:
// an empty string when it passes, else what went wrong. Errors: the status
// code and, for format 2, one of expect_field in the message. Decode cases:
// every step by equivalence (DecodeStepAsAttendCase); an error step whose
// rule is a session's (max_len, truncate.length) is not run.
std::string RunGoldenThroughKernels(const GoldenCase& c, const kernels::ComputeOptions& options);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_GOLDEN_KERNELS_H_
