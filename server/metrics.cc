#include "server/metrics.h"

#include <string>
#include <utility>

#include "kernels/isa.h"

namespace attnserve::server {
namespace {

using prometheus::Histogram;

// Request and compute latencies: 50 us .. ~26 s, doubling.
Histogram::BucketBoundaries LatencyBuckets() {
  Histogram::BucketBoundaries buckets;
  for (double b = 50e-6; b < 30.0; b *= 2) buckets.push_back(b);
  return buckets;
}

// Items per batch: 1, 2, 4, ..., 1024 (Triton's batch sizes are usually powers of two).
Histogram::BucketBoundaries BatchSizeBuckets() {
  Histogram::BucketBoundaries buckets;
  for (double b = 1; b <= 1024; b *= 2) buckets.push_back(b);
  return buckets;
}

std::string MethodLabel(int method) {
  if (method <= 0 || method >= kNumMethodLabels) return "";
  return std::string(kernels::MethodName(kernels::kAllMethods[method - 1]));
}

int CodeIndex(absl::StatusCode code) {
  const int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? index : static_cast<int>(absl::StatusCode::kUnknown);
}

template <typename T, typename Make>
T& Cached(absl::Mutex& mu, std::atomic<T*>& slot, Make make) {
  if (T* metric = slot.load(std::memory_order_acquire)) return *metric;
  absl::MutexLock lock(&mu);
  T* metric = slot.load(std::memory_order_relaxed);
  if (metric == nullptr) {
    metric = &make();
    slot.store(metric, std::memory_order_release);
  }
  return *metric;
}

}  // namespace

absl::string_view RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kAttend: return "Attend";
    case Rpc::kAttendStream: return "AttendStream";
    case Rpc::kEncode: return "Encode";
    case Rpc::kListMethods: return "ListMethods";
    case Rpc::kDecode: return "Decode";
  }
  return "";
}

absl::string_view DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kDeadline: return "deadline";
    case DropReason::kCancelled: return "cancelled";
    case DropReason::kQueueFull: return "queue_full";
    case DropReason::kShutdown: return "shutdown";
  }
  return "";
}

int MethodLabelIndex(std::optional<kernels::MethodKind> kind) {
  return kind.has_value() ? 1 + static_cast<int>(*kind) : 0;
}

Metrics::Metrics(prometheus::Registry& registry, absl::string_view version)
    : requests_(prometheus::BuildCounter()
                    .Name("attnserve_requests_total")
                    .Help("Finished requests (AttendStream: messages) by RPC, positional method "
                          "and gRPC status code")
                    .Register(registry)),
      request_duration_(prometheus::BuildHistogram()
                            .Name("attnserve_request_duration_seconds")
                            .Help("Time from a request's arrival to its response, queueing and "
                                  "compute included")
                            .Register(registry)),
      request_bytes_(prometheus::BuildCounter()
                         .Name("attnserve_request_bytes_total")
                         .Help("Serialized size of the request messages received")
                         .Register(registry)),
      response_bytes_(prometheus::BuildCounter()
                          .Name("attnserve_response_bytes_total")
                          .Help("Serialized size of the response messages sent")
                          .Register(registry)),
      dropped_(prometheus::BuildCounter()
                   .Name("attnserve_dropped_requests_total")
                   .Help("Requests that never reached a kernel, by reason")
                   .Register(registry)),
      compute_duration_(prometheus::BuildHistogram()
                            .Name("attnserve_compute_duration_seconds")
                            .Help("Time of the kernel calls of one batch (its chunks together)")
                            .Register(registry)),
      batches_(prometheus::BuildCounter()
                   .Name("attnserve_batches_total")
                   .Help("Batches run (formed batches, however many chunks), by positional method")
                   .Register(registry)),
      batched_requests_(prometheus::BuildCounter()
                            .Name("attnserve_batched_requests_total")
                            .Help("Requests that reached a kernel as part of a batch")
                            .Register(registry)) {
  queue_duration_ = &prometheus::BuildHistogram()
                         .Name("attnserve_queue_duration_seconds")
                         .Help("Time a request waited in the batch queue before its batch started")
                         .Register(registry)
                         .Add({}, LatencyBuckets());
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("attnserve_batch_size")
                     .Help("Items (along the batch dimension B) per batch formed")
                     .Register(registry)
                     .Add({}, BatchSizeBuckets());
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("attnserve_queue_depth")
                      .Help("Requests waiting in the batch queue")
                      .Register(registry)
                      .Add({});
  inflight_requests_ = &prometheus::BuildGauge()
                            .Name("attnserve_inflight_requests")
                            .Help("Requests accepted and not yet answered (queued or computing)")
                            .Register(registry)
                            .Add({});
  queue_capacity_ = &prometheus::BuildGauge()
                         .Name("attnserve_queue_capacity")
                         .Help("--max_queue_size: queued requests above which new ones get "
                               "RESOURCE_EXHAUSTED (0: unbounded)")
                         .Register(registry)
                         .Add({});
  prometheus::BuildGauge()
      .Name("attnserve_build_info")
      .Help("Always 1; the labels say which attnd this is")
      .Register(registry)
      .Add({{"version", std::string(version)},
            {"isa", std::string(kernels::IsaName(kernels::ActiveIsa()))}})
      .Set(1);
  for (int rpc = 0; rpc < kNumRpcs; ++rpc) {
    const std::string name(RpcName(static_cast<Rpc>(rpc)));
    request_bytes_by_[rpc] = &request_bytes_.Add({{"rpc", name}});
    response_bytes_by_[rpc] = &response_bytes_.Add({{"rpc", name}});
  }
  for (int reason = 0; reason < kNumDropReasons; ++reason) {
    dropped_by_[reason] =
        &dropped_.Add({{"reason", std::string(DropReasonName(static_cast<DropReason>(reason)))}});
  }
}

prometheus::Counter& Metrics::RequestCounter(Rpc rpc, int method, absl::StatusCode code) {
  const int index =
      (static_cast<int>(rpc) * kNumMethodLabels + method) * kNumCodes + CodeIndex(code);
  return Cached(mu_, requests_by_[index], [&]() -> prometheus::Counter& {
    return requests_.Add(
        {{"rpc", std::string(RpcName(rpc))},
         {"method", MethodLabel(method)},
         {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(CodeIndex(code)))}});
  });
}

prometheus::Histogram& Metrics::RequestDuration(Rpc rpc, int method) {
  return Cached(mu_, duration_by_[static_cast<int>(rpc) * kNumMethodLabels + method],
                [&]() -> prometheus::Histogram& {
                  return request_duration_.Add(
                      {{"rpc", std::string(RpcName(rpc))}, {"method", MethodLabel(method)}},
                      LatencyBuckets());
                });
}

prometheus::Counter& Metrics::BatchCounter(int method) {
  return Cached(mu_, batches_by_[method], [&]() -> prometheus::Counter& {
    return batches_.Add({{"method", MethodLabel(method)}});
  });
}

prometheus::Counter& Metrics::BatchedRequestCounter(int method) {
  return Cached(mu_, batched_requests_by_[method], [&]() -> prometheus::Counter& {
    return batched_requests_.Add({{"method", MethodLabel(method)}});
  });
}

prometheus::Histogram& Metrics::ComputeDuration(int method) {
  return Cached(mu_, compute_by_[method], [&]() -> prometheus::Histogram& {
    return compute_duration_.Add({{"method", MethodLabel(method)}}, LatencyBuckets());
  });
}

void Metrics::RecordRequest(Rpc rpc, int method, absl::StatusCode code, absl::Duration duration,
                            int64_t request_bytes, int64_t response_bytes) {
  if (method < 0 || method >= kNumMethodLabels) method = 0;
  RequestCounter(rpc, method, code).Increment();
  RequestDuration(rpc, method).Observe(absl::ToDoubleSeconds(duration));
  request_bytes_by_[static_cast<int>(rpc)]->Increment(static_cast<double>(request_bytes));
  response_bytes_by_[static_cast<int>(rpc)]->Increment(static_cast<double>(response_bytes));
}

void Metrics::RecordRejected(Rpc rpc, absl::StatusCode code) {
  RequestCounter(rpc, 0, code).Increment();
}

void Metrics::RecordDrop(DropReason reason) { dropped_by_[static_cast<int>(reason)]->Increment(); }

void Metrics::RecordBatch(int method, int64_t requests, int64_t items, absl::Duration compute) {
  if (method < 0 || method >= kNumMethodLabels) method = 0;
  BatchCounter(method).Increment();
  BatchedRequestCounter(method).Increment(static_cast<double>(requests));
  batch_size_->Observe(static_cast<double>(items));
  ComputeDuration(method).Observe(absl::ToDoubleSeconds(compute));
}

void Metrics::RecordQueueWait(absl::Duration wait) {
  queue_duration_->Observe(absl::ToDoubleSeconds(wait));
}

}  // namespace attnserve::server
