// The Decode RPC (decode-sessions.md): one bidirectional stream is one
// session. The first message opens it (the cache is reserved against the
// SessionRegistry's budget and allocated), then steps and truncates follow,
// each answered by exactly one DecodeResponse, in order. Any error ends the
// stream with its status; however the stream ends (closed, cancelled,
// failed, idle, shut down), the session's cache is freed and its
// reservation given back as it ends.
//
// Like AttendStream (server/attention_service.cc), a stream keeps one
// message in flight: opens and steps run on the Batcher's threads,
// truncates are answered on gRPC's; nothing touches the session
// concurrently. With --decode_batching (SessionOptions::batching), steps of
// different sessions queued together with the same method (in place: at
// most 16 new tokens, no probs) run as one pass of the decode kernel over
// all their caches (kernels::DecodeSession::StepBatch), each with its own
// answer; a step that arrives while a batch computes joins the next one.
// Messages count in attnserve_requests_total{rpc="Decode"}.
//
// Thread-safety: gRPC and the Batcher call the reactor; it guards its own
// state.
#ifndef ATTNSERVE_SERVER_DECODE_CALL_H_
#define ATTNSERVE_SERVER_DECODE_CALL_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"
#include "kernels/decode.h"
#include "server/attention_service.h"
#include "server/batcher.h"
#include "server/convert.h"
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

// The decode-and-validate path of the stream's messages, apart from the
// reactor so that the DecodeRequest fuzz target (tests/fuzz) drives the same
// code. Both are reentrant.
//
// DecodeOpen as the kernels' session options (still to be checked by
// kernels::ValidateDecodeOpen); `*encoding` gets how the session's responses
// carry their tensors. INVALID_ARGUMENT/NOT_FOUND/RESOURCE_EXHAUSTED naming
// the field, as Attend's conversion does.
absl::StatusOr<kernels::DecodeOptions> ToDecodeOptions(const v1::DecodeOpen& open,
                                                       const ConvertLimits& limits,
                                                       const TensorStore* tensors,
                                                       OutputEncoding* encoding);
// A DecodeStep's tensors (q, k, v or x, those present) as the step's
// inputs; RESOURCE_EXHAUSTED when together they hold more than
// limits.max_elements values.
absl::StatusOr<kernels::TensorMap> ToStepInputs(const v1::DecodeStep& step,
                                                const ConvertLimits& limits,
                                                const TensorStore* tensors);

// A new reactor for one Decode call; it deletes itself when the call is done.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewDecodeReactor(
    grpc::CallbackServerContext* context, const DecodeContext& decode);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_DECODE_CALL_H_
