// GoldenCase -> attnserve.v1 requests, and checking a response against the
// case: the wire-level twin of golden_kernels.h, for tests that go through a
// real attnd. Both golden formats (golden.h), decode cases included.
//
// Format 2 on the wire (attention-variants.md 9.1, 9.3): a 16-bit input
// tensor always travels as raw_data of its type with Tensor.dtype set,
// whatever `encoding` says for the float32 ones ("wire": "data" and
// "raw_hex" send exactly what the case says); a 16-bit output_dtype sets
// raw_output (unless the case has "raw_output": false), and the response's
// tensors must then be raw_data of that type with their dtype set, compared
// with one extra unit in the last place of that type.
#ifndef ATTNSERVE_TESTS_TESTING_GOLDEN_PROTO_H_
#define ATTNSERVE_TESTS_TESTING_GOLDEN_PROTO_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"
#include "tests/testing/golden.h"

namespace attnserve::testing {

// How request tensors travel; responses are asked for in the same encoding
// (except a 16-bit output_dtype, which always asks for raw_data).
enum class WireEncoding { kData, kRawData };

// The raw_output a request of the case sets under `encoding`.
bool RequestsRawOutput(const GoldenCase& c, WireEncoding encoding);

// `t` as a wire tensor (shape, values by `encoding` or the case's dtype/wire
// keys, Tensor.dtype).
void FillTensor(const GoldenTensor& t, WireEncoding encoding, v1::Tensor* out);

absl::StatusOr<v1::AttendRequest> ToAttendRequest(const GoldenCase& c, WireEncoding encoding);
absl::StatusOr<v1::EncodeRequest> ToEncodeRequest(const GoldenCase& c, WireEncoding encoding);

// Empty when every expected tensor is present in the right encoding, with
// the right shape, within tolerance; else what went wrong.
std::string CheckAttendResponse(const GoldenCase& c, const v1::AttendResponse& response,
                                WireEncoding encoding);
std::string CheckEncodeResponse(const GoldenCase& c, const v1::EncodeResponse& response,
                                WireEncoding encoding);

// Decode cases (decode-sessions.md 4): the stream's messages in order, the
// open first (messages[0]) and then one per steps[i] (messages[i + 1]).
absl::StatusOr<std::vector<v1::DecodeRequest>> ToDecodeRequests(const GoldenCase& c,
                                                                WireEncoding encoding);
// Checks the response to messages[message]: the open's (message 0) must have
// length 0 and no tensors; a step's or truncate's must have the step's
// expected_length and expected tensors (probs only when requested).
std::string CheckDecodeResponse(const GoldenCase& c, size_t message,
                                const v1::DecodeResponse& response, WireEncoding encoding);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_GOLDEN_PROTO_H_
