#include "server/attention_service.h"

#include <atomic>
#include <utility>

#include "absl/status/status.h"
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
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryCall(grpc::CallbackServerContext* context) : context_(context) {}

  // Runs `work` on `pool` and finishes the call with its status.
  template <typename Work>
  void Run(ComputePool* pool, int64_t max_elements, Work work) {
    absl::Status submitted =
        pool->Submit([this, max_elements, work = std::move(work)](int threads) mutable {
          if (cancelled_.load(std::memory_order_relaxed) || context_->IsCancelled()) {
            Finish(ToGrpcStatus(CancelledBeforeCompute()));
            return;
          }
          kernels::ComputeOptions options;
          options.threads = threads;
          options.max_elements = max_elements;
          options.cancelled = &cancelled_;
          Finish(ToGrpcStatus(work(options)));
        });
    if (!submitted.ok()) Finish(ToGrpcStatus(submitted));
  }

  void OnCancel() override { cancelled_.store(true, std::memory_order_relaxed); }
  void OnDone() override { delete this; }

 private:
  grpc::CallbackServerContext* const context_;
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
  AttendStreamReactor(grpc::CallbackServerContext* context, ComputePool* pool, int64_t max_elements,
                      const TensorStore* tensors)
      : context_(context), pool_(pool), max_elements_(max_elements), tensors_(tensors) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    // Not ok: the client half-closed (every earlier response is written) or
    // the call is gone; either way the stream ends here.
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    absl::Status submitted = pool_->Submit([this](int threads) { Compute(threads); });
    if (!submitted.ok()) Finish(ToGrpcStatus(submitted));
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
    if (cancelled_.load(std::memory_order_relaxed) || context_->IsCancelled()) {
      Finish(ToGrpcStatus(CancelledBeforeCompute()));
      return;
    }
    kernels::ComputeOptions options;
    options.threads = threads;
    options.max_elements = max_elements_;
    options.cancelled = &cancelled_;
    absl::Status status = RunAttend(request_, tensors_, options, &response_);
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartWrite(&response_);
  }

  grpc::CallbackServerContext* const context_;
  ComputePool* const pool_;
  const int64_t max_elements_;
  const TensorStore* const tensors_;
  std::atomic<bool> cancelled_{false};
  v1::AttendRequest request_;
  v1::AttendResponse response_;
};

v1::ListMethodsResponse BuildListMethods(const ServiceOptions& options) {
  v1::ListMethodsResponse response;
  FillListMethodsResponse(kernels::DescribeMethods(), options.max_message_bytes,
                          options.max_elements, kServerName, &response);
  if (options.tensors != nullptr) AddLoadedTensors(*options.tensors, &response);
  return response;
}

}  // namespace

AttentionServiceImpl::AttentionServiceImpl(ComputePool* pool, const ServiceOptions& options)
    : pool_(pool), options_(options), methods_(BuildListMethods(options)) {}

grpc::ServerUnaryReactor* AttentionServiceImpl::Encode(grpc::CallbackServerContext* context,
                                                       const v1::EncodeRequest* request,
                                                       v1::EncodeResponse* response) {
  auto* call = new UnaryCall(context);
  call->Run(pool_, options_.max_elements,
            [request, response, tensors = options_.tensors](const kernels::ComputeOptions& o) {
              return RunEncode(*request, tensors, o, response);
            });
  return call;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::Attend(grpc::CallbackServerContext* context,
                                                       const v1::AttendRequest* request,
                                                       v1::AttendResponse* response) {
  auto* call = new UnaryCall(context);
  call->Run(pool_, options_.max_elements,
            [request, response, tensors = options_.tensors](const kernels::ComputeOptions& o) {
              return RunAttend(*request, tensors, o, response);
            });
  return call;
}

grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttentionServiceImpl::AttendStream(
    grpc::CallbackServerContext* context) {
  return new AttendStreamReactor(context, pool_, options_.max_elements, options_.tensors);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListMethods(
    grpc::CallbackServerContext* context, const v1::ListMethodsRequest* /*request*/,
    v1::ListMethodsResponse* response) {
  *response = methods_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attnserve::server
