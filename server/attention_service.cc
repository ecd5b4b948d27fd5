#include "server/attention_service.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/attention.h"
#include "kernels/status_macros.h"
#include "server/convert.h"
#include "server/status_util.h"

#ifndef ATTN_VERSION
#define ATTN_VERSION "0.0.0"
#endif

namespace attnserve::server {
namespace {

constexpr char kServerName[] = "attnd " ATTN_VERSION;

absl::Status CancelledBeforeCompute() {
  return absl::CancelledError(
      "request: cancelled (by the client, its deadline or server shutdown) before compute "
      "started");
}

// The items along the batch dimension B of a request (its leading dimension
// of q or x_q; 1 when neither has a shape).
int64_t BatchItems(const v1::Tensor& tensor) {
  return tensor.shape_size() > 0 && tensor.shape(0) > 0 ? tensor.shape(0) : 1;
}
int64_t BatchItems(const v1::AttendRequest& request) {
  return BatchItems(request.has_x_q() ? request.x_q() : request.q());
}
int64_t BatchItems(const v1::EncodeRequest& request) { return BatchItems(request.x()); }

// What the metrics record about one request from arrival to answer; counts
// it in attnserve_inflight_requests while it lives.
class RequestRecord {
 public:
  template <typename Request>
  RequestRecord(Metrics* metrics, Rpc rpc, const Request& request)
      : metrics_(metrics),
        rpc_(rpc),
        method_(MethodLabelIndex(MethodKindOf(request.method()))),
        items_(BatchItems(request)),
        request_bytes_(static_cast<int64_t>(request.ByteSizeLong())),
        start_(absl::Now()) {
    metrics_->inflight_requests().Increment();
  }
  RequestRecord(const RequestRecord&) = delete;
  RequestRecord& operator=(const RequestRecord&) = delete;

  int method() const { return method_; }
  int64_t items() const { return items_; }
  absl::Time start() const { return start_; }

  // Once, with the request's final status and its response's size.
  void Done(const absl::Status& status, int64_t response_bytes) {
    metrics_->RecordRequest(rpc_, method_, status.code(), absl::Now() - start_, request_bytes_,
                            status.ok() ? response_bytes : 0);
    metrics_->inflight_requests().Decrement();
  }

 private:
  Metrics* const metrics_;
  const Rpc rpc_;
  const int method_;
  const int64_t items_;
  const int64_t request_bytes_;
  const absl::Time start_;
};

// The drop reason of a call found cancelled before compute.
DropReason CancelReason(const grpc::CallbackServerContext& context) {
  return context.deadline() <= std::chrono::system_clock::now() ? DropReason::kDeadline
                                                                : DropReason::kCancelled;
}

absl::Status RunAttend(const v1::AttendRequest& request, const TensorStore* tensors,
                       const kernels::ComputeOptions& options, v1::AttendResponse* response) {
  ATTN_ASSIGN_OR_RETURN(kernels::AttendArgs args,
                        ToAttendArgs(request, ConvertLimits{options.max_elements}, tensors));
  ATTN_ASSIGN_OR_RETURN(kernels::AttendResult result, kernels::Attend(std::move(args), options));
  FillAttendResponse(std::move(result), request.raw_output(), response);
  return absl::OkStatus();
}

absl::Status RunEncode(const v1::EncodeRequest& request, const TensorStore* tensors,
                       const kernels::ComputeOptions& options, v1::EncodeResponse* response) {
  ATTN_ASSIGN_OR_RETURN(kernels::EncodeArgs args,
                        ToEncodeArgs(request, ConvertLimits{options.max_elements}, tensors));
  ATTN_ASSIGN_OR_RETURN(kernels::EncodeResult result, kernels::Encode(std::move(args), options));
  FillEncodeResponse(std::move(result), request.raw_output(), response);
  return absl::OkStatus();
}

// A unary call. Owns itself: deleted in OnDone, which gRPC calls only after
// Finish, so the pool task may use it (and the request and response, which
// gRPC keeps alive as long) until it calls Finish.
template <typename Response>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  template <typename Request>
  UnaryCall(grpc::CallbackServerContext* context, Metrics* metrics, Rpc rpc,
            const Request& request, const Response* response)
      : context_(context), metrics_(metrics), record_(metrics, rpc, request), response_(response) {}

  // Runs `work` on `pool` and finishes the call with its status.
  template <typename Work>
  void Run(ComputePool* pool, int64_t max_elements, Work work) {
    const absl::Time queued = absl::Now();
    metrics_->queue_depth().Increment();
    absl::Status submitted =
        pool->Submit([this, max_elements, queued, work = std::move(work)](int threads) mutable {
          metrics_->queue_depth().Decrement();
          metrics_->RecordQueueWait(absl::Now() - queued);
          if (cancelled_.load(std::memory_order_relaxed) || context_->IsCancelled()) {
            metrics_->RecordDrop(CancelReason(*context_));
            Complete(CancelledBeforeCompute());
            return;
          }
          kernels::ComputeOptions options;
          options.threads = threads;
          options.max_elements = max_elements;
          options.cancelled = &cancelled_;
          const absl::Time start = absl::Now();
          absl::Status status = work(options);
          // Without a known method the request failed before any kernel ran.
          if (record_.method() != 0) {
            metrics_->RecordBatch(record_.method(), 1, record_.items(), absl::Now() - start);
          }
          Complete(status);
        });
    if (!submitted.ok()) {
      metrics_->queue_depth().Decrement();
      metrics_->RecordDrop(absl::IsResourceExhausted(submitted) ? DropReason::kQueueFull
                                                                : DropReason::kShutdown);
      Complete(submitted);
    }
  }

  void OnCancel() override { cancelled_.store(true, std::memory_order_relaxed); }
  void OnDone() override { delete this; }

 private:
  void Complete(const absl::Status& status) {
    record_.Done(status, status.ok() ? static_cast<int64_t>(response_->ByteSizeLong()) : 0);
    Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  Metrics* const metrics_;
  RequestRecord record_;
  const Response* const response_;
  std::atomic<bool> cancelled_{false};
};

// AttendStream: read one request, compute it on the pool, write its response,
// then read the next. Owns itself (deleted in OnDone). At most one of a read,
// a compute task and a write is outstanding at any time, so request_ and
// response_ are never touched concurrently and nothing touches the reactor
// after Finish.
class AttendStreamReactor final
    : public grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  AttendStreamReactor(grpc::CallbackServerContext* context, ComputePool* pool, Metrics* metrics,
                      int64_t max_elements, const TensorStore* tensors)
      : context_(context),
        pool_(pool),
        metrics_(metrics),
        max_elements_(max_elements),
        tensors_(tensors) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    // Not ok: the client half-closed (every earlier response is written) or
    // the call is gone; either way the stream ends here.
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    record_.emplace(metrics_, Rpc::kAttendStream, request_);
    queued_ = absl::Now();
    metrics_->queue_depth().Increment();
    absl::Status submitted = pool_->Submit([this](int threads) { Compute(threads); });
    if (!submitted.ok()) {
      metrics_->queue_depth().Decrement();
      metrics_->RecordDrop(absl::IsResourceExhausted(submitted) ? DropReason::kQueueFull
                                                                : DropReason::kShutdown);
      Fail(submitted);
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(ToGrpcStatus(
          absl::CancelledError("AttendStream: writing a response failed; the stream is broken")));
      return;
    }
    request_.Clear();
    StartRead(&request_);
  }

  void OnCancel() override { cancelled_.store(true, std::memory_order_relaxed); }
  void OnDone() override { delete this; }

 private:
  // On a pool worker.
  void Compute(int threads) {
    metrics_->queue_depth().Decrement();
    metrics_->RecordQueueWait(absl::Now() - queued_);
    if (cancelled_.load(std::memory_order_relaxed) || context_->IsCancelled()) {
      metrics_->RecordDrop(CancelReason(*context_));
      Fail(CancelledBeforeCompute());
      return;
    }
    kernels::ComputeOptions options;
    options.threads = threads;
    options.max_elements = max_elements_;
    options.cancelled = &cancelled_;
    const absl::Time start = absl::Now();
    absl::Status status = RunAttend(request_, tensors_, options, &response_);
    metrics_->RecordBatch(record_->method(), 1, record_->items(), absl::Now() - start);
    if (!status.ok()) {
      Fail(status);
      return;
    }
    record_->Done(status, static_cast<int64_t>(response_.ByteSizeLong()));
    StartWrite(&response_);
  }

  // Ends the stream with the current message's status.
  void Fail(const absl::Status& status) {
    record_->Done(status, 0);
    Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  ComputePool* const pool_;
  Metrics* const metrics_;
  const int64_t max_elements_;
  const TensorStore* const tensors_;
  std::atomic<bool> cancelled_{false};
  v1::AttendRequest request_;
  v1::AttendResponse response_;
  // The message being served: arrival, label and sizes for the metrics.
  std::optional<RequestRecord> record_;
  absl::Time queued_;
};

v1::ListMethodsResponse BuildListMethods(const ServiceOptions& options) {
  v1::ListMethodsResponse response;
  FillListMethodsResponse(kernels::DescribeMethods(), options.max_message_bytes,
                          options.max_elements, kServerName, &response);
  if (options.tensors != nullptr) AddLoadedTensors(*options.tensors, &response);
  return response;
}

}  // namespace

AttentionServiceImpl::AttentionServiceImpl(ComputePool* pool, Metrics* metrics,
                                           const ServiceOptions& options)
    : pool_(pool), metrics_(metrics), options_(options), methods_(BuildListMethods(options)) {}

grpc::ServerUnaryReactor* AttentionServiceImpl::Encode(grpc::CallbackServerContext* context,
                                                       const v1::EncodeRequest* request,
                                                       v1::EncodeResponse* response) {
  auto* call = new UnaryCall<v1::EncodeResponse>(context, metrics_, Rpc::kEncode, *request, response);
  call->Run(pool_, options_.max_elements,
            [request, response, tensors = options_.tensors](const kernels::ComputeOptions& o) {
              return RunEncode(*request, tensors, o, response);
            });
  return call;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::Attend(grpc::CallbackServerContext* context,
                                                       const v1::AttendRequest* request,
                                                       v1::AttendResponse* response) {
  auto* call = new UnaryCall<v1::AttendResponse>(context, metrics_, Rpc::kAttend, *request, response);
  call->Run(pool_, options_.max_elements,
            [request, response, tensors = options_.tensors](const kernels::ComputeOptions& o) {
              return RunAttend(*request, tensors, o, response);
            });
  return call;
}

grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttentionServiceImpl::AttendStream(
    grpc::CallbackServerContext* context) {
  return new AttendStreamReactor(context, pool_, metrics_, options_.max_elements,
                                 options_.tensors);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListMethods(
    grpc::CallbackServerContext* context, const v1::ListMethodsRequest* /*request*/,
    v1::ListMethodsResponse* response) {
  RequestRecord record(metrics_, Rpc::kListMethods, v1::AttendRequest());
  *response = methods_;
  record.Done(absl::OkStatus(), static_cast<int64_t>(response->ByteSizeLong()));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attnserve::server
