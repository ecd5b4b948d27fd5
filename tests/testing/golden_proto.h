// GoldenCase -> attnserve.v1 requests, and checking a response against the
// case: the wire-level twin of golden_kernels.h, for tests that go through a
// real attnd.
#ifndef ATTNSERVE_TESTS_TESTING_GOLDEN_PROTO_H_
#define ATTNSERVE_TESTS_TESTING_GOLDEN_PROTO_H_

#include <string>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"
#include "tests/testing/golden.h"

namespace attnserve::testing {

// How request tensors travel; responses are asked for in the same encoding.
enum class WireEncoding { kData, kRawData };

absl::StatusOr<v1::AttendRequest> ToAttendRequest(const GoldenCase& c, WireEncoding encoding);
absl::StatusOr<v1::EncodeRequest> ToEncodeRequest(const GoldenCase& c, WireEncoding encoding);

// Empty when every expected tensor is present in the right encoding, with
// the right shape, within tolerance; else what went wrong.
std::string CheckAttendResponse(const GoldenCase& c, const v1::AttendResponse& response,
                                WireEncoding encoding);
std::string CheckEncodeResponse(const GoldenCase& c, const v1::EncodeResponse& response,
                                WireEncoding encoding);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_GOLDEN_PROTO_H_
