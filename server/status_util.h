// The one mapping from absl::Status (used everywhere below the RPC handlers)
// to grpc::Status (used only at the RPC edge, in attention_service.cc).
//
// Thread-safety: a pure function; safe from any thread.
#ifndef ATTNSERVE_SERVER_STATUS_UTIL_H_
#define ATTNSERVE_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace attnserve::server {

// Caller-supplied text (a ref, ...) as an error message quotes it: in single
// quotes, at most kMaxQuotedBytes bytes of it with non-printable bytes
// escaped, and when longer "... (N bytes)" after the quote. Every message
// that echoes a caller's string goes through this, so that an attacker's
// megabyte never comes back as a megabyte grpc-message (beyond what clients
// accept, which then hides the real error).
inline constexpr size_t kMaxQuotedBytes = 64;
std::string QuoteCallerText(absl::string_view text);

// Longest grpc-message ToGrpcStatus sends; a longer message is cut there
// with "... (message truncated)" (a last guard behind QuoteCallerText).
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// The grpc::Status with the code of the same name as status.code() and the
// same message (cut at kMaxStatusMessageBytes). Codes outside absl's canonical set map to UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_STATUS_UTIL_H_
