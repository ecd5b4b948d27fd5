// The Decode RPC (decode-sessions.md): one bidirectional stream is one
// session. The first message opens it (the cache is reserved against the
// SessionRegistry's budget and allocated), then steps and truncates follow,
// each answered by exactly one DecodeResponse, in order. Any error ends the
// stream with its status; however the stream ends (closed, cancelled,
// failed, idle, shut down), the session's cache is freed and its
// reservation given back as it ends.
//
// Like AttendStream (server/attention_service.cc), a stream keeps one
// message in flight: opens and steps run on the Batcher's threads (never
// merged), truncates are answered on gRPC's; nothing touches the session
// concurrently. Messages count in attnserve_requests_total{rpc="Decode"}.
//
// Thread-safety: gRPC and the Batcher call the reactor; it guards its own
// state.
#ifndef ATTNSERVE_SERVER_DECODE_CALL_H_
#define ATTNSERVE_SERVER_DECODE_CALL_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>

#include "server/attention_service.h"
#include "server/batcher.h"
#include "server/metrics.h"
#include "server/pending_responses.h"
#include "server/sessions.h"
#include "server/tensor_store.h"

namespace attnserve::server {

// What a Decode stream uses; none owned, all outliving the stream.
struct DecodeContext {
  Batcher* batcher = nullptr;
  Metrics* metrics = nullptr;
  DrainGate* gate = nullptr;
  PendingResponses* pending = nullptr;
  SessionRegistry* sessions = nullptr;
  const TensorStore* tensors = nullptr;
  int64_t max_elements = int64_t{1} << 28;
};

// A new reactor for one Decode call; it deletes itself when the call is done.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewDecodeReactor(
    grpc::CallbackServerContext* context, const DecodeContext& decode);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_DECODE_CALL_H_
