// AttentionServiceImpl: the attnserve.v1.AttentionService RPC handlers, on
// gRPC's callback API, as raw methods: each handler gets the message bytes
// and parses them itself (server/wire.h), so a body that is not the
// method's message is answered INVALID_ARGUMENT and counted like any other
// request (gRPC's generated handler answered it with an empty status and
// nothing counted), and each response is serialized here, its size known
// before it is handed to gRPC.
//
// Handlers never compute on gRPC's threads: each Attend or Encode request
// (and each message of an AttendStream) is queued on the Batcher
// (server/batcher.h), which converts it (server/convert.h), runs the kernels
// (merging Attend requests that can run as one call) and answers it. Attend
// requests carry a merge key built from their method, parameters and
// per-item shapes; Encode requests are never merged. A call's cancellation
// (client cancel, deadline, server shutdown) removes a queued request
// unanswered by compute, or stops a computing one once nothing else needs
// its kernels. AttendStream keeps one message in flight, so its responses
// come in request order and every response before a failing message is
// written before the stream ends with that message's status (a message
// that does not parse included).
//
// A response counts in attnserve_inflight_requests until gRPC has sent it,
// and its bytes count against --max_pending_response_bytes meanwhile
// (server/pending_responses.h): a client that does not read cannot pin more.
//
// Thread-safety: the handlers are called concurrently by gRPC; the service
// holds only immutable state after construction.
#ifndef ATTNSERVE_SERVER_ATTENTION_SERVICE_H_
#define ATTNSERVE_SERVER_ATTENTION_SERVICE_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "attnserve/v1/attention.pb.h"
#include "server/batcher.h"
#include "server/tensor_store.h"
#include "server/metrics.h"
#include "server/pending_responses.h"
#include "server/sessions.h"

namespace attnserve::server {

struct ServiceOptions {
  // Per request: the largest input tensor, the sum of all input tensors, and
  // the largest output or intermediate tensor, in float32 elements.
  int64_t max_elements = int64_t{1} << 28;
  // Reported by ListMethods; the limit itself is applied by the server builder.
  int64_t max_message_bytes = int64_t{256} << 20;
  // The tensors requests may name in `ref` (--tensor_dir); null: none. Not
  // owned; must outlive the service.
  const TensorStore* tensors = nullptr;
  // Bytes of responses handed to gRPC but not yet taken by their clients
  // above which a new response is refused (server/pending_responses.h).
  int64_t max_pending_response_bytes = int64_t{512} << 20;
};

// Admission of requests, for draining: counts the requests being served and,
// once Drain has begun, refuses new calls.
class DrainGate {
 public:
  // Counts one request in; false (and not counted) when draining and
  // `new_call` (messages of an already accepted stream are still taken).
  bool Enter(bool new_call) {
    inflight_.fetch_add(1);
    if (new_call && draining_.load()) {
      last_refusal_ns_.store(absl::GetCurrentTimeNanos());
      Leave();
      return false;
    }
    return true;
  }
  void Leave() { inflight_.fetch_sub(1); }
  // AttendStream calls open now (their messages come and go).
  void StreamOpened() { open_streams_.fetch_add(1); }
  void StreamClosed() { open_streams_.fetch_sub(1); }
  int64_t open_streams() const { return open_streams_.load(); }
  // Refuses new calls from now on (the lame duck's first step); accepted
  // requests and further messages of open streams are still served.
  void Refuse() { draining_.store(true); }
  // Refuses new calls from now on and waits until no request is being
  // served and no call was refused for a short quiet period (clients have
  // seen UNAVAILABLE and gone elsewhere), or `deadline` passes.
  void Drain(absl::Time deadline);

 private:
  std::atomic<int64_t> inflight_{0};
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> last_refusal_ns_{0};
  std::atomic<int64_t> open_streams_{0};
};

// Every method of the service as a raw callback method (ByteBuffer in and out).
using RawAttentionService = v1::AttentionService::WithRawCallbackMethod_Attend<
    v1::AttentionService::WithRawCallbackMethod_Encode<
        v1::AttentionService::WithRawCallbackMethod_AttendStream<
            v1::AttentionService::WithRawCallbackMethod_ListMethods<
                v1::AttentionService::WithRawCallbackMethod_Decode<
                    v1::AttentionService::Service>>>>>;

class AttentionServiceImpl final : public RawAttentionService {
 public:
  // `batcher` and `metrics` are not owned; the batcher must keep running
  // until every call has finished (shut the grpc::Server down first, then
  // stop the batcher), and both must outlive the service.
  // `sessions` (not owned, outliving the service) serves Decode.
  AttentionServiceImpl(Batcher* batcher, Metrics* metrics, const ServiceOptions& options,
                       SessionRegistry* sessions);

  // The generated bases also declare the synchronous overloads; keep them
  // visible (-Woverloaded-virtual). gRPC calls only the raw ones below.
  using RawAttentionService::Attend;
  using RawAttentionService::AttendStream;
  using RawAttentionService::Decode;
  using RawAttentionService::Encode;
  using RawAttentionService::ListMethods;

  // `request`: the body of an EncodeRequest; `response`: an EncodeResponse's.
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  // AttendRequest in, AttendResponse out.
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  // AttendRequest messages in, AttendResponse messages out.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttendStream(
      grpc::CallbackServerContext* context) override;
  // DecodeRequest messages in, DecodeResponse messages out: one decode
  // session per stream (server/decode_call.h).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Decode(
      grpc::CallbackServerContext* context) override;
  // Answered inline (no compute): the methods, their parameters, the limits
  // and the server's name and version.
  grpc::ServerUnaryReactor* ListMethods(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;

  // Shutdown's first step: new Attend, Encode and AttendStream calls are
  // answered UNAVAILABLE ("draining") from now on, while accepted requests
  // (and further messages of open streams) are served; returns once none is
  // being served or at `deadline`.
  // Decode sessions already open go on; new opens are refused too.
  void Drain(absl::Time deadline) {
    sessions_->Refuse();
    gate_.Drain(deadline);
  }
  // The lame duck (AttnServer::EnterLameDuck): new calls are refused as in
  // Drain from now on, without waiting for anything.
  void RefuseNewCalls() {
    sessions_->Refuse();
    gate_.Refuse();
  }
  // AttendStream and Decode calls still open (after Drain: idle ones, between messages).
  int64_t open_streams() const { return gate_.open_streams(); }

 private:
  Batcher* const batcher_;
  Metrics* const metrics_;
  SessionRegistry* const sessions_;
  DrainGate gate_;
  const ServiceOptions options_;
  PendingResponses pending_;
  // Built once: DescribeMethods does not change while the process runs.
  const v1::ListMethodsResponse methods_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_ATTENTION_SERVICE_H_
