// The one mapping from absl::Status (used everywhere below the RPC handlers)
// to grpc::Status (used only at the RPC edge, in attention_service.cc).
//
// Thread-safety: a pure function; safe from any thread.
#ifndef ATTNSERVE_SERVER_STATUS_UTIL_H_
#define ATTNSERVE_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace attnserve::server {

// The grpc::Status with the code of the same name as status.code() and the
// same message. Codes outside absl's canonical set map to UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_STATUS_UTIL_H_
