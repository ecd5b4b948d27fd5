#include "server/decode_call.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "attnserve/v1/attention.pb.h"
#include "kernels/decode.h"
#include "kernels/status_macros.h"
#include "server/convert.h"
#include "server/status_util.h"
#include "server/tsan_annotations.h"
#include "server/wire.h"

namespace attnserve::server {
namespace {

absl::Time Deadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  return deadline == std::chrono::system_clock::time_point::max() ? absl::InfiniteFuture()
                                                                  : absl::FromChrono(deadline);
}

}  // namespace

// The method and the projection weights go through Attend's conversion (so
// their fields get Attend's names and rules), the scalars as they are.
absl::StatusOr<kernels::DecodeOptions> ToDecodeOptions(const v1::DecodeOpen& open,
                                                       const ConvertLimits& limits,
                                                       const TensorStore* tensors,
                                                       OutputEncoding* encoding) {
  ATTN_ASSIGN_OR_RETURN(*encoding, ToOutputEncoding(open.raw_output(), open.output_dtype()));
  v1::AttendRequest attend;
  *attend.mutable_method() = open.method();
  if (open.has_w_q()) *attend.mutable_w_q() = open.w_q();
  if (open.has_w_k()) *attend.mutable_w_k() = open.w_k();
  if (open.has_w_v()) *attend.mutable_w_v() = open.w_v();
  ATTN_ASSIGN_OR_RETURN(kernels::AttendArgs args, ToAttendArgs(attend, limits, tensors));
  kernels::DecodeOptions options;
  options.method = args.method;
  options.params = std::move(args.params);
  options.tensors = std::move(args.inputs);
  options.batch = open.batch();
  options.num_heads = open.num_heads();
  options.num_kv_heads = open.num_kv_heads();
  options.head_dim = open.head_dim();
  options.value_dim = open.value_dim();
  options.max_len = open.max_len();
  options.max_step_elements = limits.max_elements;
  if (open.has_scale()) options.scale = open.scale();
  if (open.has_window()) options.window = open.window();
  if (open.has_softcap()) options.softcap = open.softcap();
  return options;
}

absl::StatusOr<kernels::TensorMap> ToStepInputs(const v1::DecodeStep& step,
                                                const ConvertLimits& limits,
                                                const TensorStore* tensors) {
  kernels::TensorMap inputs;
  const std::pair<const char*, const v1::Tensor*> fields[] = {
      {"q", step.has_q() ? &step.q() : nullptr},
      {"k", step.has_k() ? &step.k() : nullptr},
      {"v", step.has_v() ? &step.v() : nullptr},
      {"x", step.has_x() ? &step.x() : nullptr}};
  int64_t total = 0;
  for (const auto& [name, tensor] : fields) {
    if (tensor == nullptr) continue;
    ATTN_ASSIGN_OR_RETURN(kernels::Tensor converted,
                          ToKernelTensor(*tensor, name, limits, tensors));
    total += converted.size();
    inputs[name] = std::move(converted);
  }
  if (total > limits.max_elements) {
    return absl::ResourceExhaustedError(
        absl::StrCat("step: its tensors hold ", total,
                     " values together, above --max_elements=", limits.max_elements));
  }
  return inputs;
}

namespace {

// Decode steps of different sessions that run as one pass of the decode
// kernel (--decode_batching): the Batcher forms the batch from the steps
// queued with one key (method, in place, no probs), and this runs it, each
// step on its own session and cache.
class StepGroup final : public BatchGroup {
 public:
  std::vector<absl::Status> ComputeTogether(absl::Span<BatchRequest* const> requests,
                                            absl::Span<const std::atomic<bool>* const> cancelled,
                                            const kernels::ComputeOptions& options) override;
};

StepGroup& TheStepGroup() {
  static StepGroup* const group = new StepGroup();
  return *group;
}

class DecodeReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                            public BatchRequest {
 public:
  DecodeReactor(grpc::CallbackServerContext* context, const DecodeContext& decode)
      : context_(context), c_(decode) {
    if (!c_.gate->Enter(/*new_call=*/true)) {
      c_.metrics->RecordDrop(DropReason::kShutdown);
      FinishOnce(absl::UnavailableError("server: draining (shutting down); not accepting new "
                                        "calls, open the session on another replica"),
                 SessionEnd::kError);
      return;
    }
    c_.gate->Leave();
    c_.gate->StreamOpened();
    opened_ = true;
    Read();
  }

  void OnReadDone(bool ok) override {
    TakeOverFromGrpc(this);
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;  // ended while idle
    }
    if (session_id_ != 0) c_.sessions->SetWaiting(session_id_, false);
    // Not ok: the client half-closed (every response is written) or the call
    // is gone; OnDone tells which.
    if (!ok) {
      FinishOnce(absl::OkStatus(), SessionEnd::kClosed);
      return;
    }
    start_ = absl::Now();
    request_bytes_ = static_cast<int64_t>(body_.Length());
    c_.metrics->inflight_requests().Increment();
    in_flight_ = true;
    const absl::Status parsed = ParseBody(body_, &request_);
    body_.Clear();
    if (!parsed.ok()) {
      Done(parsed);
      return;
    }
    switch (request_.kind_case()) {
      case v1::DecodeRequest::kOpen:
        if (session_id_ != 0) {
          Done(absl::FailedPreconditionError(
              "open: this stream's session is open already (one session per stream; a second "
              "session needs a stream of its own)"));
          return;
        }
        method_ = MethodLabelIndex(MethodKindOf(request_.open().method()));
        Queue(request_.open().batch(), 0, "");
        return;
      case v1::DecodeRequest::kStep:
        if (session_ == nullptr) {
          Done(absl::FailedPreconditionError(
              "step: before open (the first message of a Decode stream must be open)"));
          return;
        }
        Queue(session_->options().batch, StepWork(), StepKey());
        return;
      case v1::DecodeRequest::kTruncate:
        if (session_ == nullptr) {
          Done(absl::FailedPreconditionError(
              "truncate: before open (the first message of a Decode stream must be open)"));
          return;
        }
        {
          const absl::Status truncated = session_->Truncate(request_.truncate().length());
          response_.set_length(session_->length());
          Done(truncated);
        }
        return;
      case v1::DecodeRequest::KIND_NOT_SET:
        Done(session_ == nullptr
                 ? absl::FailedPreconditionError(
                       "open: the first message of a Decode stream must be open, got a "
                       "DecodeRequest with none of open, step, truncate")
                 : absl::InvalidArgumentError(
                       "kind: a DecodeRequest must hold one of open, step, truncate"));
        return;
    }
  }

  absl::Status Prepare(int64_t max_elements, bool /*defer_batched*/) override {
    const ConvertLimits limits{max_elements};
    if (request_.has_open()) {
      ATTN_ASSIGN_OR_RETURN(open_,
                            ToDecodeOptions(request_.open(), limits, c_.tensors, &encoding_));
    } else {
      ATTN_ASSIGN_OR_RETURN(step_inputs_, ToStepInputs(request_.step(), limits, c_.tensors));
    }
    return absl::OkStatus();
  }

  absl::Status Compute(const kernels::ComputeOptions& options) override {
    if (request_.has_open()) return OpenSession();
    const int64_t before = session_->length();
    kernels::ComputeOptions checked = options;
    checked.inputs_checked = true;
    absl::StatusOr<kernels::AttendResult> result =
        session_->Step(std::move(step_inputs_), request_.step().return_probs(), checked);
    step_inputs_.clear();
    c_.sessions->RecordDecodeBatch(1);
    return EndStep(std::move(result), before);
  }

  // For StepGroup, on the Batcher's thread after Prepare: the step as one
  // of a batch (its inputs moved in)...
  kernels::SessionStep TakeStep(const std::atomic<bool>* cancelled) {
    kernels::SessionStep step;
    step.session = session_.get();
    step.inputs = std::move(step_inputs_);
    step_inputs_.clear();
    step.return_probs = request_.step().return_probs();
    step.cancelled = cancelled;
    return step;
  }
  // ...and its result or error (the session had `before` tokens) as the
  // response to write.
  absl::Status EndStep(absl::StatusOr<kernels::AttendResult> result, int64_t before) {
    if (!result.ok()) return result.status();
    FillTensor(result->out, encoding_, response_.mutable_out());
    if (result->probs.has_value()) {
      FillTensor(*result->probs, encoding_, response_.mutable_probs());
    }
    response_.set_length(session_->length());
    c_.sessions->RecordStep(method_, session_->length() - before);
    return absl::OkStatus();
  }
  SessionRegistry* sessions() const { return c_.sessions; }

  // Never merged (empty key): the merge interface is unused.
  kernels::AttendArgs TakeAttendArgs() override { return {}; }
  const std::vector<int64_t>* BatchedShape(absl::string_view /*name*/) const override {
    return nullptr;
  }
  absl::Status AppendBatched(absl::string_view /*name*/,
                             std::vector<float>& /*out*/) const override {
    return absl::OkStatus();
  }
  absl::Status DecodeShared(kernels::TensorMap& /*inputs*/) const override {
    return absl::OkStatus();
  }
  void Fill(const kernels::AttendResult& /*batch*/, int64_t /*begin*/, int64_t /*count*/) override {
  }

  // The current message's answer: its response is written, or its error
  // ends the stream.
  void Done(const absl::Status& status) override {
    absl::Status answer = status;
    int64_t sent = 0;
    if (answer.ok()) {
      const int64_t size = static_cast<int64_t>(response_.ByteSizeLong());
      answer = c_.pending->Reserve(size);
      if (answer.ok()) {
        reserved_ = size;
        sent = size;
        answer = SerializeBody(response_, &reply_);
      }
    }
    v1::DecodeResponse().Swap(&response_);
    request_.Clear();
    c_.metrics->RecordRequest(Rpc::kDecode, method_, answer.code(), absl::Now() - start_,
                              request_bytes_, sent);
    c_.metrics->inflight_requests().Decrement();
    in_flight_ = false;
    DrainGate* const gate = queued_ ? c_.gate : nullptr;
    queued_ = false;
    if (answer.ok()) {
      HandOverToGrpc(this);
      StartWrite(&reply_);
    } else {
      FinishOnce(answer, SessionEnd::kError);
    }
    // Last: after Finish, OnDone may delete `this`.
    if (gate != nullptr) gate->Leave();
  }

  void OnWriteDone(bool ok) override {
    TakeOverFromGrpc(this);
    ReleaseReply();
    if (!ok) {
      FinishOnce(absl::CancelledError("Decode: writing a response failed; the stream is broken"),
                 SessionEnd::kCancelled);
      return;
    }
    Read();
  }

  void OnCancel() override { c_.batcher->Cancel(this); }

  void OnDone() override {
    TakeOverFromGrpc(this);
    ReleaseReply();
    if (in_flight_) c_.metrics->inflight_requests().Decrement();
    if (opened_) c_.gate->StreamClosed();
    if (session_id_ != 0) {
      SessionEnd reason = end_;
      if (reason == SessionEnd::kClosed && context_->IsCancelled()) {
        reason = c_.sessions->refusing() ? SessionEnd::kShutdown : SessionEnd::kCancelled;
      }
      EndSession(reason);
    }
    delete this;
  }

 private:
  void Read() {
    {
      absl::MutexLock lock(&mu_);
      reading_ = true;
    }
    if (session_id_ != 0) c_.sessions->SetWaiting(session_id_, true);
    HandOverToGrpc(this);
    StartRead(&body_);
  }

  // `work`: the estimated multiply-adds (Batcher::Traits::work), so that a
  // decode step, a memory-bound pass over the cache that threads barely
  // speed up, gets one compute thread unless it is large.
  // `key`: steps with equal non-empty keys run together (StepGroup).
  void Queue(int64_t items, int64_t work, std::string key) {
    c_.gate->Enter(/*new_call=*/false);
    queued_ = true;
    Batcher::Traits traits{std::move(key), items < 1 ? 1 : items, method_, Deadline(*context_),
                           work};
    if (!traits.key.empty()) traits.group = &TheStepGroup();
    const absl::Status queued = c_.batcher->Enqueue(this, std::move(traits));
    if (!queued.ok()) Done(queued);
  }

  // The current step's token count n (from its q or x; 1 when unreadable:
  // the kernels name the error).
  int64_t StepTokens() const {
    const v1::DecodeStep& step = request_.step();
    const v1::Tensor& rows = step.has_q() ? step.q() : step.x();
    const int axis = step.has_q() ? 2 : 1;
    return rows.shape_size() > axis && rows.shape(axis) > 0 ? rows.shape(axis) : 1;
  }

  // The batching key of the current step: empty (alone) unless
  // --decode_batching and the decode kernel runs it in place without probs
  // (a prefill chunk or a step with probs gains nothing from a shared
  // pass); the method, so that a batch is one method's in the metrics.
  std::string StepKey() const {
    if (!c_.sessions->options().batching || request_.step().return_probs() ||
        !session_->RunsInPlace(StepTokens())) {
      return "";
    }
    return absl::StrCat("decode step/", method_);
  }

  // B * H * n * (t + n) * (D + Dv) for the current step (n from its q or x).
  int64_t StepWork() const {
    const double n = static_cast<double>(StepTokens());
    const kernels::DecodeOptions& o = session_->options();
    const double work = static_cast<double>(o.batch) * o.num_heads * n *
                        (static_cast<double>(session_->length()) + n) *
                        static_cast<double>(o.head_dim + o.value_dim);
    return work >= 9e18 ? int64_t{9000000000000000000} : static_cast<int64_t>(work);
  }

  absl::Status OpenSession() {
    ATTN_ASSIGN_OR_RETURN(const int64_t bytes, kernels::ValidateDecodeOpen(open_));
    ATTN_ASSIGN_OR_RETURN(session_id_, c_.sessions->Open(bytes, [this] { OnIdle(); }));
    ATTN_ASSIGN_OR_RETURN(session_, kernels::DecodeSession::Open(std::move(open_)));
    response_.set_length(0);
    return absl::OkStatus();
  }

  // On the registry's thread: the stream has waited too long for a message.
  void OnIdle() {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || !reading_) return;
      finished_ = true;
      end_ = SessionEnd::kIdle;
    }
    const absl::Duration timeout = c_.sessions->options().idle_timeout;
    EndSession(SessionEnd::kIdle);  // waiting for a message: no step in flight
    HandOverToGrpc(this);
    Finish(ToGrpcStatus(absl::AbortedError(absl::StrCat(
        "session: no message for --session_idle_timeout_s=", absl::ToDoubleSeconds(timeout),
        " s; the session and its cache are gone (open a new stream to start again)"))));
  }

  // Every caller has no message in flight (nothing uses the session).
  void FinishOnce(const absl::Status& status, SessionEnd reason) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      end_ = reason;
    }
    // A read that failed on a cancelled call is a cancellation (OnDone
    // tells it from a shutdown); any other end is known now.
    if (reason != SessionEnd::kClosed || !context_->IsCancelled()) EndSession(reason);
    HandOverToGrpc(this);
    Finish(ToGrpcStatus(status));
  }

  // The cache, then its reservation, go back before the stream's end is
  // sent, so that a client that sees the end and reopens at once finds its
  // budget back (OnDone does it for a stream that ends otherwise: the
  // client cancelled or vanished). Only while no message is in flight.
  void EndSession(SessionEnd reason) {
    if (session_id_ == 0) return;
    session_.reset();
    c_.sessions->End(session_id_, reason);
    session_id_ = 0;
  }

  void ReleaseReply() {
    if (reserved_ > 0) c_.pending->Release(reserved_);
    reserved_ = 0;
    reply_.Clear();
  }

  grpc::CallbackServerContext* const context_;
  const DecodeContext c_;

  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Why the session ends (set with finished_; read in OnDone).
  SessionEnd end_ = SessionEnd::kClosed;

  bool opened_ = false;
  bool queued_ = false;
  bool in_flight_ = false;
  int method_ = 0;
  OutputEncoding encoding_;  // the open's raw_output and output_dtype
  int64_t session_id_ = 0;
  std::unique_ptr<kernels::DecodeSession> session_;
  kernels::DecodeOptions open_;
  kernels::TensorMap step_inputs_;

  grpc::ByteBuffer body_;
  grpc::ByteBuffer reply_;
  int64_t reserved_ = 0;  // of c_.pending, for reply_
  v1::DecodeRequest request_;
  v1::DecodeResponse response_;
  absl::Time start_;
  int64_t request_bytes_ = 0;
};

std::vector<absl::Status> StepGroup::ComputeTogether(
    absl::Span<BatchRequest* const> requests, absl::Span<const std::atomic<bool>* const> cancelled,
    const kernels::ComputeOptions& options) {
  // Only Decode steps carry this group.
  std::vector<DecodeReactor*> reactors;
  std::vector<kernels::SessionStep> steps;
  std::vector<int64_t> before;
  for (size_t i = 0; i < requests.size(); ++i) {
    reactors.push_back(static_cast<DecodeReactor*>(requests[i]));
    steps.push_back(reactors.back()->TakeStep(cancelled[i]));
    before.push_back(steps.back().session->length());
  }
  kernels::DecodeSession::StepBatch(absl::MakeSpan(steps), options);
  reactors.front()->sessions()->RecordDecodeBatch(static_cast<int64_t>(steps.size()));
  std::vector<absl::Status> statuses;
  for (size_t i = 0; i < steps.size(); ++i) {
    statuses.push_back(reactors[i]->EndStep(std::move(steps[i].result), before[i]));
  }
  return statuses;
}

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewDecodeReactor(
    grpc::CallbackServerContext* context, const DecodeContext& decode) {
  return new DecodeReactor(context, decode);
}

}  // namespace attnserve::server
