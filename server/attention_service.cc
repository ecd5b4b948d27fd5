#include "server/attention_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/attention.h"
#include "kernels/isa.h"
#include "server/convert.h"
#include "server/decode_call.h"
#include "server/status_util.h"
#include "server/tsan_annotations.h"
#include "server/wire.h"

#ifndef ATTN_VERSION
#define ATTN_VERSION "0.0.0"
#endif

namespace attnserve::server {
namespace {

constexpr char kServerName[] = "attnd " ATTN_VERSION;

// The items along the batch dimension B of a request (its leading dimension
// of q or x_q; 1 when neither has a shape).
int64_t BatchItems(const v1::Tensor& tensor) {
  return tensor.shape_size() > 0 && tensor.shape(0) > 0 ? tensor.shape(0) : 1;
}
int64_t BatchItems(const v1::AttendRequest& request) {
  return BatchItems(request.has_x_q() ? request.x_q() : request.q());
}
int64_t BatchItems(const v1::EncodeRequest& request) { return BatchItems(request.x()); }

// The keys a query row sees at most: Sk, or fewer under a sliding window
// (the engine skips the blocks it hides: attention-variants.md 3).
double VisibleKeys(const v1::AttendRequest& request, double sk) {
  if (!request.has_window() || request.window() < 1) return sk;
  const double window = static_cast<double>(request.window());
  return std::min(sk, request.causal() ? window : 2 * window - 1);
}

// The estimated multiply-adds of an Attend request's kernel call, from the
// shapes in the message (Batcher::Traits::work): the scores and the
// weighted sum, B*H*Sq*Sk*(D+Dv), plus the projections of the absolute
// methods. 0 (unknown) when a shape is left out (a ref) or malformed.
int64_t EstimatedWork(const v1::AttendRequest& request) {
  const auto dims = [](const v1::Tensor& tensor, int rank) -> std::vector<double> {
    if (tensor.shape_size() != rank) return {};
    std::vector<double> d(tensor.shape().begin(), tensor.shape().end());
    for (double x : d) {
      if (x < 1) return {};
    }
    return d;
  };
  double work = 0;
  if (request.has_x_q()) {
    // x_q [B,Sq,dm], x_kv [B,Sk,dm], w_q and w_k [dm,H*D], w_v [dm,H*Dv].
    const std::vector<double> x_q = dims(request.x_q(), 3), x_kv = dims(request.x_kv(), 3),
                              w_q = dims(request.w_q(), 2), w_v = dims(request.w_v(), 2);
    if (x_q.empty() || x_kv.empty() || w_q.empty() || w_v.empty()) return 0;
    // With GQA w_k and w_v have H_kv heads (w_k [dm,H_kv*D], w_v [dm,H_kv*Dv]).
    const std::vector<double> w_k = dims(request.w_k(), 2);
    if (w_k.empty()) return 0;
    const double b = x_q[0], sq = x_q[1], sk = x_kv[1], dm = x_q[2], hd = w_q[1], hdv = w_v[1];
    const double hdv_q = hd * hdv / std::max(w_k[1], 1.0);  // H*Dv
    work = b *
           (sq * dm * hd + sk * dm * (w_k[1] + hdv) + sq * VisibleKeys(request, sk) * (hd + hdv_q));
  } else {
    // q [B,H,Sq,D], k [B,H_kv,Sk,D], v [B,H_kv,Sk,Dv].
    const std::vector<double> q = dims(request.q(), 4), k = dims(request.k(), 4),
                              v = dims(request.v(), 4);
    if (q.empty() || k.empty() || v.empty()) return 0;
    work = q[0] * q[1] * q[2] * VisibleKeys(request, k[2]) * (q[3] + v[3]);
  }
  return work >= 9e18 ? int64_t{9000000000000000000} : static_cast<int64_t>(work);
}

// What the metrics record about one request from arrival to answer; counts
// it in attnserve_inflight_requests while it lives, which is until its
// response has been sent (or the call is gone), not only until it is
// answered: a response a client does not read still holds memory.
class RequestRecord {
 public:
  // `request` as parsed (empty when its body did not parse); `request_bytes`
  // its size on the wire; `start` when the server began on it (before
  // parsing its body: the parse is the server's time too).
  template <typename Request>
  RequestRecord(Metrics* metrics, Rpc rpc, const Request& request, int64_t request_bytes,
                absl::Time start)
      : metrics_(metrics),
        rpc_(rpc),
        method_(MethodLabelIndex(MethodKindOf(request.method()))),
        items_(BatchItems(request)),
        request_bytes_(request_bytes),
        start_(start) {
    metrics_->inflight_requests().Increment();
    metrics_->CountArrival();
  }
  ~RequestRecord() { metrics_->inflight_requests().Decrement(); }
  RequestRecord(const RequestRecord&) = delete;
  RequestRecord& operator=(const RequestRecord&) = delete;

  int method() const { return method_; }
  int64_t items() const { return items_; }
  absl::Time start() const { return start_; }

  // Once, with the request's final status and its response's size.
  void Done(const absl::Status& status, int64_t response_bytes) {
    metrics_->RecordRequest(rpc_, method_, status.code(), absl::Now() - start_, request_bytes_,
                            status.ok() ? response_bytes : 0);
  }

 private:
  Metrics* const metrics_;
  const Rpc rpc_;
  const int method_;
  const int64_t items_;
  const int64_t request_bytes_;
  const absl::Time start_;
};

// The merge key of an Attend request (Batcher::Traits::key): everything
// that must be equal for requests to run as one kernel call: the method with
// its parameters and shared tensors (byte for byte), the projection weights,
// the scalar options (num_kv_heads, window and softcap among them), and the
// shapes (but for B) and refs of the batched tensors. Left out: the values
// of the batched tensors and their dtype (each request's are widened into
// its own rows of the merged inputs), kv_lengths (per batch item: the merged
// call concatenates them along B), and the output encoding (each request's
// rows are written in its own raw_output and output_dtype).
std::string BatchKey(const v1::AttendRequest& request) {
  v1::AttendRequest skeleton;
  *skeleton.mutable_method() = request.method();
  if (request.has_w_q()) *skeleton.mutable_w_q() = request.w_q();
  if (request.has_w_k()) *skeleton.mutable_w_k() = request.w_k();
  if (request.has_w_v()) *skeleton.mutable_w_v() = request.w_v();
  skeleton.set_num_heads(request.num_heads());
  skeleton.set_causal(request.causal());
  if (request.has_scale()) skeleton.set_scale(request.scale());
  if (request.has_query_offset()) skeleton.set_query_offset(request.query_offset());
  skeleton.set_return_probs(request.return_probs());
  skeleton.set_num_kv_heads(request.num_kv_heads());
  if (request.has_window()) skeleton.set_window(request.window());
  if (request.has_softcap()) skeleton.set_softcap(request.softcap());
  const auto batched = [](const v1::Tensor& from, v1::Tensor* to) {
    if (from.shape_size() > 1) to->mutable_shape()->Add(from.shape().begin() + 1, from.shape().end());
    to->set_ref(from.ref());
    // Distinguishes "no dimensions after B" from a missing tensor.
    to->add_shape(-1);
  };
  if (request.has_q()) batched(request.q(), skeleton.mutable_q());
  if (request.has_k()) batched(request.k(), skeleton.mutable_k());
  if (request.has_v()) batched(request.v(), skeleton.mutable_v());
  if (request.has_x_q()) batched(request.x_q(), skeleton.mutable_x_q());
  if (request.has_x_kv()) batched(request.x_kv(), skeleton.mutable_x_kv());
  // No map fields: the serialization is deterministic.
  return "attend:" + skeleton.SerializeAsString();
}

absl::Status Draining() {
  return absl::UnavailableError(
      "server: draining (shutting down); not accepting new calls, retry on another replica");
}

absl::Time Deadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  return deadline == std::chrono::system_clock::time_point::max() ? absl::InfiniteFuture()
                                                                   : absl::FromChrono(deadline);
}

// Attend as a BatchRequest; shared by the unary call and the stream.
class AttendJob : public BatchRequest {
 public:
  explicit AttendJob(const TensorStore* tensors) : tensors_(tensors) {}

  absl::Status Prepare(int64_t max_elements, bool defer_batched) override {
    // Alone, the kernels read the request's values where they arrived (the
    // message outlives Compute: the call owns it until gRPC is done with
    // the call, a stream until the response is written). Merged, each
    // request's batched values are copied into the merged call's rows, and
    // the shared ones decoded into copies (DecodeShared): the first request
    // may be answered, and its message freed, before the last chunk runs.
    absl::StatusOr<kernels::AttendArgs> args =
        defer_batched
            ? ToAttendArgs(*request_, ConvertLimits{max_elements}, tensors_, &deferred_)
            : ToAttendArgs(*request_, ConvertLimits{max_elements, /*in_place=*/true}, tensors_);
    if (!args.ok()) return args.status();
    args_ = std::move(*args);
    // Checked by ToAttendArgs.
    output_ = ToOutputEncoding(request_->raw_output(), request_->output_dtype()).value();
    return absl::OkStatus();
  }
  absl::Status Compute(const kernels::ComputeOptions& options) override {
    // A float32 raw_data out is written by the engine into the response.
    kernels::ComputeOptions in_response = options;
    in_response.out_storage = AttendOutStorage(output_, response_);
    absl::StatusOr<kernels::AttendResult> result = kernels::Attend(TakeAttendArgs(), in_response);
    if (!result.ok()) return result.status();
    FillAttendResponse(std::move(*result), output_, response_);
    return absl::OkStatus();
  }
  kernels::AttendArgs TakeAttendArgs() override {
    kernels::AttendArgs args = std::move(*args_);
    args_.reset();
    return args;
  }
  const std::vector<int64_t>* BatchedShape(absl::string_view name) const override {
    auto it = deferred_.find(name);
    return it == deferred_.end() ? nullptr : &it->second.shape;
  }
  absl::Status AppendBatched(absl::string_view name, std::vector<float>& out) const override {
    auto it = deferred_.find(name);
    return it == deferred_.end() ? absl::OkStatus() : it->second.AppendTo(out);
  }
  absl::Status DecodeShared(kernels::TensorMap& inputs) const override {
    for (const auto& [name, tensor] : deferred_) {
      if (std::find(std::begin(kBatchedInputs), std::end(kBatchedInputs), name) !=
          std::end(kBatchedInputs)) {
        continue;
      }
      absl::StatusOr<kernels::Tensor> decoded = tensor.Decode();
      if (!decoded.ok()) return decoded.status();
      inputs.insert_or_assign(name, std::move(*decoded));
    }
    return absl::OkStatus();
  }
  void Fill(const kernels::AttendResult& batch, int64_t begin, int64_t count) override {
    FillAttendResponseRows(batch, begin, count, output_, response_);
  }

 protected:
  void SetMessages(const v1::AttendRequest* request, v1::AttendResponse* response) {
    request_ = request;
    response_ = response;
  }
  Batcher::Traits TraitsOf(const grpc::CallbackServerContext& context, int method) const {
    return Batcher::Traits{BatchKey(*request_), BatchItems(*request_), method, Deadline(context),
                           EstimatedWork(*request_)};
  }

 private:
  const TensorStore* const tensors_;
  const v1::AttendRequest* request_ = nullptr;
  v1::AttendResponse* response_ = nullptr;
  std::optional<kernels::AttendArgs> args_;
  OutputEncoding output_;
  // The inputs of a merged call, checked, not decoded (they point into request_).
  DeferredTensors deferred_;
};

// Encode as a BatchRequest: never merged (an empty key).
class EncodeJob : public BatchRequest {
 public:
  explicit EncodeJob(const TensorStore* tensors) : tensors_(tensors) {}

  absl::Status Prepare(int64_t max_elements, bool /*defer_batched*/) override {
    // Read in place, as Attend's (the call owns the message until done).
    absl::StatusOr<kernels::EncodeArgs> args =
        ToEncodeArgs(*request_, ConvertLimits{max_elements, /*in_place=*/true}, tensors_);
    if (!args.ok()) return args.status();
    args_ = std::move(*args);
    // Checked by ToEncodeArgs.
    output_ = ToOutputEncoding(request_->raw_output(), request_->output_dtype()).value();
    return absl::OkStatus();
  }
  absl::Status Compute(const kernels::ComputeOptions& options) override {
    absl::StatusOr<kernels::EncodeResult> result = kernels::Encode(std::move(*args_), options);
    args_.reset();
    if (!result.ok()) return result.status();
    FillEncodeResponse(std::move(*result), output_, response_);
    return absl::OkStatus();
  }
  // Never called: an empty key is never merged.
  kernels::AttendArgs TakeAttendArgs() override { return {}; }
  const std::vector<int64_t>* BatchedShape(absl::string_view /*name*/) const override {
    return nullptr;
  }
  absl::Status AppendBatched(absl::string_view /*name*/, std::vector<float>& /*out*/) const override {
    return absl::OkStatus();
  }
  absl::Status DecodeShared(kernels::TensorMap& /*inputs*/) const override {
    return absl::OkStatus();
  }
  void Fill(const kernels::AttendResult& /*batch*/, int64_t /*begin*/,
            int64_t /*count*/) override {}

 protected:
  void SetMessages(const v1::EncodeRequest* request, v1::EncodeResponse* response) {
    request_ = request;
    response_ = response;
  }
  Batcher::Traits TraitsOf(const grpc::CallbackServerContext& context, int method) const {
    return Batcher::Traits{"", BatchItems(*request_), method, Deadline(context)};
  }

 private:
  const TensorStore* const tensors_;
  const v1::EncodeRequest* request_ = nullptr;
  v1::EncodeResponse* response_ = nullptr;
  std::optional<kernels::EncodeArgs> args_;
  OutputEncoding output_;
};

// Serializes `*response` into `*reply` when the pending responses have room
// for it (then `*reserved` holds its size, to release once sent), and frees
// the message either way: the bytes on the wire are the only copy kept.
template <typename Response>
absl::Status SerializeResponse(Response* response, PendingResponses* pending,
                               grpc::ByteBuffer* reply, int64_t* reserved) {
  const int64_t size = static_cast<int64_t>(response->ByteSizeLong());
  absl::Status status = pending->Reserve(size);
  if (status.ok()) {
    *reserved = size;
    status = SerializeBody(*response, reply);
  }
  // Clear would keep the repeated fields' capacity.
  Response().Swap(response);
  return status;
}

// A unary call (Job: AttendJob or EncodeJob) on the message bytes. Owns
// itself: deleted in OnDone, which gRPC calls only after Finish and once the
// response is sent (or the call is gone), so the batcher may use it until
// Done, and its response counts as in flight and pending until sent.
template <typename Job, typename Request, typename Response>
class UnaryCall final : public grpc::ServerUnaryReactor, public Job {
 public:
  UnaryCall(grpc::CallbackServerContext* context, Batcher* batcher, Metrics* metrics,
            DrainGate* gate, PendingResponses* pending, Rpc rpc, const TensorStore* tensors,
            const grpc::ByteBuffer* body, grpc::ByteBuffer* reply)
      : Job(tensors),
        batcher_(batcher),
        metrics_(metrics),
        gate_(gate),
        pending_(pending),
        reply_(reply),
        arrival_(absl::Now()),
        parsed_(ParseBody(*body, &request_)),
        record_(metrics, rpc, request_, static_cast<int64_t>(body->Length()), arrival_) {
    this->SetMessages(&request_, &response_);
    if (!parsed_.ok()) {
      Answer(parsed_);
      return;
    }
    if (!gate_->Enter(/*new_call=*/true)) {
      metrics_->RecordDrop(DropReason::kShutdown);
      Answer(Draining());
      return;
    }
    absl::Status queued = batcher_->Enqueue(this, this->TraitsOf(*context, record_.method()));
    // On success `this` may already be answered and deleted.
    if (!queued.ok()) Done(queued);
  }

  void Done(const absl::Status& status) override {
    // Leave last (Drain may return once it is out), through a copy: after
    // Finish, OnDone may already have deleted `this`.
    DrainGate* const gate = gate_;
    Answer(status);
    gate->Leave();
  }
  void OnCancel() override { batcher_->Cancel(this); }
  void OnDone() override {
    TakeOverFromGrpc(this);
    if (reserved_ > 0) pending_->Release(reserved_);
    delete this;
  }

 private:
  void Answer(absl::Status status) {
    int64_t sent = 0;
    if (status.ok()) {
      status = SerializeResponse(&response_, pending_, reply_, &reserved_);
      sent = reserved_;
    }
    record_.Done(status, sent);
    HandOverToGrpc(this);
    Finish(ToGrpcStatus(status));
  }

  Batcher* const batcher_;
  Metrics* const metrics_;
  DrainGate* const gate_;
  PendingResponses* const pending_;
  grpc::ByteBuffer* const reply_;
  // Before the body is parsed: the start of the request's time.
  const absl::Time arrival_;
  Request request_;
  Response response_;
  // Declared after request_: initialised by parsing into it.
  const absl::Status parsed_;
  RequestRecord record_;
  int64_t reserved_ = 0;  // of pending_, until OnDone
};

// AttendStream: read one request, queue it for the batcher (where it batches
// with other streams' and unary calls' requests), write its response, then
// read the next. Owns itself (deleted in OnDone). At most one of a read, a
// queued or computing request and a write is outstanding at any time (one
// message in flight per stream: a client that does not read its responses
// stops the stream at one pending response), so request_ and response_ are
// never touched concurrently, responses come in request order, and nothing
// touches the reactor after Finish. A message that does not parse ends the
// stream with INVALID_ARGUMENT after the responses before it.
class AttendStreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                                  public AttendJob {
 public:
  AttendStreamReactor(grpc::CallbackServerContext* context, Batcher* batcher, Metrics* metrics,
                      DrainGate* gate, PendingResponses* pending, const TensorStore* tensors)
      : AttendJob(tensors),
        context_(context),
        batcher_(batcher),
        metrics_(metrics),
        gate_(gate),
        pending_(pending) {
    SetMessages(&request_, &response_);
    // A new stream while draining is refused; its later messages are not.
    if (!gate_->Enter(/*new_call=*/true)) {
      metrics_->RecordDrop(DropReason::kShutdown);
      HandOverToGrpc(this);
      Finish(ToGrpcStatus(Draining()));
      return;
    }
    gate_->Leave();
    gate_->StreamOpened();
    opened_ = true;
    HandOverToGrpc(this);
    StartRead(&body_);
  }

  void OnReadDone(bool ok) override {
    TakeOverFromGrpc(this);
    // Not ok: the client half-closed (every earlier response is written) or
    // the call is gone; either way the stream ends here.
    if (!ok) {
      HandOverToGrpc(this);
      Finish(grpc::Status::OK);
      return;
    }
    const absl::Time arrival = absl::Now();
    const absl::Status parsed = ParseBody(body_, &request_);
    record_.emplace(metrics_, Rpc::kAttendStream, request_, static_cast<int64_t>(body_.Length()),
                    arrival);
    body_.Clear();
    if (!parsed.ok()) {
      record_->Done(parsed, 0);
      HandOverToGrpc(this);
      Finish(ToGrpcStatus(parsed));
      return;
    }
    gate_->Enter(/*new_call=*/false);
    absl::Status queued = batcher_->Enqueue(this, TraitsOf(*context_, record_->method()));
    if (!queued.ok()) Done(queued);
  }

  // The current message's answer: its response is written, or its error
  // ends the stream.
  void Done(const absl::Status& status) override {
    absl::Status answer = status;
    int64_t sent = 0;
    if (answer.ok()) {
      answer = SerializeResponse(&response_, pending_, &reply_, &reserved_);
      sent = reserved_;
    }
    record_->Done(answer, sent);
    // After Finish (or a write that fails), OnDone may delete `this`.
    DrainGate* const gate = gate_;
    if (answer.ok()) {
      HandOverToGrpc(this);
      StartWrite(&reply_);
    } else {
      HandOverToGrpc(this);
      Finish(ToGrpcStatus(answer));
    }
    gate->Leave();
  }

  void OnWriteDone(bool ok) override {
    TakeOverFromGrpc(this);
    // Sent (or never to be): no longer pending, no longer in flight.
    ReleaseReply();
    record_.reset();
    if (!ok) {
      HandOverToGrpc(this);
      Finish(ToGrpcStatus(
          absl::CancelledError("AttendStream: writing a response failed; the stream is broken")));
      return;
    }
    request_.Clear();
    HandOverToGrpc(this);
    StartRead(&body_);
  }

  void OnCancel() override { batcher_->Cancel(this); }
  void OnDone() override {
    TakeOverFromGrpc(this);
    ReleaseReply();
    if (opened_) gate_->StreamClosed();
    delete this;
  }

 private:
  void ReleaseReply() {
    if (reserved_ > 0) pending_->Release(reserved_);
    reserved_ = 0;
    reply_.Clear();
  }

  bool opened_ = false;
  grpc::CallbackServerContext* const context_;
  Batcher* const batcher_;
  Metrics* const metrics_;
  DrainGate* const gate_;
  PendingResponses* const pending_;
  grpc::ByteBuffer body_;
  grpc::ByteBuffer reply_;
  int64_t reserved_ = 0;  // of pending_, for reply_
  v1::AttendRequest request_;
  v1::AttendResponse response_;
  // The message being served: arrival, label and sizes for the metrics.
  std::optional<RequestRecord> record_;
};

v1::ListMethodsResponse BuildListMethods(const ServiceOptions& options) {
  v1::ListMethodsResponse response;
  const absl::string_view isa = kernels::IsaName(kernels::ActiveIsa());
  FillListMethodsResponse(kernels::DescribeMethods(), options.max_message_bytes,
                          options.max_elements, absl::StrCat(kServerName, " (isa ", isa, ")"),
                          &response);
  response.set_isa(std::string(isa));
  if (options.tensors != nullptr) AddLoadedTensors(*options.tensors, &response);
  return response;
}

}  // namespace

void DrainGate::Drain(absl::Time deadline) {
  // Calls refused this recently may have followers on the wire; gRPC's own
  // shutdown would fail those with CANCELLED rather than UNAVAILABLE.
  constexpr absl::Duration kQuiet = absl::Milliseconds(100);
  Refuse();
  // Polled: it runs once per process, and a millisecond is far below any grace.
  for (absl::Time now = absl::Now(); now < deadline; now = absl::Now()) {
    const bool quiet = now - absl::FromUnixNanos(last_refusal_ns_.load()) >= kQuiet;
    if (inflight_.load() == 0 && quiet) return;
    absl::SleepFor(absl::Milliseconds(1));
  }
}

AttentionServiceImpl::AttentionServiceImpl(Batcher* batcher, Metrics* metrics,
                                           const ServiceOptions& options,
                                           SessionRegistry* sessions)
    : batcher_(batcher),
      metrics_(metrics),
      sessions_(sessions),
      options_(options),
      pending_(options.max_pending_response_bytes),
      methods_(BuildListMethods(options)) {}

grpc::ServerUnaryReactor* AttentionServiceImpl::Encode(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return new UnaryCall<EncodeJob, v1::EncodeRequest, v1::EncodeResponse>(
      context, batcher_, metrics_, &gate_, &pending_, Rpc::kEncode, options_.tensors, request,
      response);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::Attend(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return new UnaryCall<AttendJob, v1::AttendRequest, v1::AttendResponse>(
      context, batcher_, metrics_, &gate_, &pending_, Rpc::kAttend, options_.tensors, request,
      response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::AttendStream(
    grpc::CallbackServerContext* context) {
  return new AttendStreamReactor(context, batcher_, metrics_, &gate_, &pending_,
                                 options_.tensors);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::Decode(
    grpc::CallbackServerContext* context) {
  return NewDecodeReactor(context, DecodeContext{batcher_, metrics_, &gate_, &pending_, sessions_,
                                                 options_.tensors, options_.max_elements});
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListMethods(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  const absl::Time arrival = absl::Now();
  v1::ListMethodsRequest parsed;
  absl::Status status = ParseBody(*request, &parsed);
  RequestRecord record(metrics_, Rpc::kListMethods, v1::AttendRequest(),
                       static_cast<int64_t>(request->Length()), arrival);
  if (status.ok()) status = SerializeBody(methods_, response);
  record.Done(status, static_cast<int64_t>(methods_.ByteSizeLong()));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace attnserve::server
