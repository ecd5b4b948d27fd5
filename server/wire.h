// The service's messages on the wire: request bodies parsed from the
// ByteBuffers gRPC hands the (raw) callback handlers, and responses
// serialized into ByteBuffers, so that the service, not gRPC's generated
// code, answers a body that does not parse (INVALID_ARGUMENT, counted in the
// metrics) and knows the size of what it sends.
//
// Thread-safety: pure functions of their arguments.
#ifndef ATTNSERVE_SERVER_WIRE_H_
#define ATTNSERVE_SERVER_WIRE_H_

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"

namespace attnserve::server {

// Parses `body` (left as it is) into `message` (cleared first).
// INVALID_ARGUMENT "request: the message body is not a valid
// attnserve.v1.AttendRequest ..." (the message's full type name) when the
// bytes are not that message's wire format.
absl::Status ParseBody(const grpc::ByteBuffer& body, google::protobuf::MessageLite* message);

// Serializes `message` into `out` (replaced). INTERNAL if protobuf fails
// (a message above 2 GiB; the output budget keeps responses far below).
absl::Status SerializeBody(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_WIRE_H_
