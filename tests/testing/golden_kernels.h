// GoldenCase -> kernels::AttendArgs / EncodeArgs, and running a case through
// the kernels with the golden comparison.
#ifndef ATTNSERVE_TESTS_TESTING_GOLDEN_KERNELS_H_
#define ATTNSERVE_TESTS_TESTING_GOLDEN_KERNELS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "tests/testing/golden.h"

namespace attnserve::testing {

// The status code a case's expect_error names (OK when it expects none).
absl::StatusCode ExpectedCode(const GoldenCase& c);

absl::StatusOr<kernels::MethodParams> ToMethodParams(const GoldenCase& c);
absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const GoldenCase& c);
absl::StatusOr<kernels::EncodeArgs> ToEncodeArgs(const GoldenCase& c);

// Runs the case through kernels::Attend or kernels::Encode and compares:
// an empty string when it passes, else what went wrong.
std::string RunGoldenThroughKernels(const GoldenCase& c, const kernels::ComputeOptions& options);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_GOLDEN_KERNELS_H_
