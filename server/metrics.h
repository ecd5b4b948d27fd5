// Metrics: attnd's Prometheus metrics, declared once and built from an
// injected prometheus::Registry (the Envoy pattern: tests build their own
// registry and read the real counters back).
//
// Names follow Prometheus conventions (base units, `_total` counters,
// `_seconds` histograms) and every label has a small fixed set of values:
//   rpc     Attend, AttendStream, Encode, ListMethods, Decode (one per message)
//   method  none, sinusoidal, ..., da_transformer; "" when the request named
//           no method the server knows
//   code    the gRPC status code name (OK, INVALID_ARGUMENT, ...)
//   reason  why a request was dropped before compute (see DropReason)
// docs/OPERATIONS.md describes each metric and how to read batching from them.
//
// Thread-safety: every member function may be called from any thread; the
// per-label series are created once (under a mutex) and then cached.
#ifndef ATTNSERVE_SERVER_METRICS_H_
#define ATTNSERVE_SERVER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/attention.h"

namespace attnserve::server {

enum class Rpc { kAttend, kAttendStream, kEncode, kListMethods, kDecode };
inline constexpr int kNumRpcs = 5;
absl::string_view RpcName(Rpc rpc);

// Why a request never reached a kernel.
enum class DropReason {
  kDeadline,   // its deadline passed while it waited
  kCancelled,  // the client cancelled it (or the server shut down) while it waited
  kQueueFull,  // --max_queue_size requests were already waiting
  kShutdown,   // it arrived while the server was draining
};
inline constexpr int kNumDropReasons = 4;
absl::string_view DropReasonName(DropReason reason);

// The positional method of a request as a label index: 0 for unknown or
// unset, 1 + static_cast<int>(kind) otherwise.
inline constexpr int kNumMethodLabels = 1 + static_cast<int>(std::size(kernels::kAllMethods));
int MethodLabelIndex(std::optional<kernels::MethodKind> kind);

class Metrics {
 public:
  // Registers every family on `registry`, which must outlive this object.
  // `version` becomes the version label of attnserve_build_info, the
  // kernels' ISA (kernels/isa.h: fixed by now) its isa label.
  Metrics(prometheus::Registry& registry, absl::string_view version);

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // A finished request (for AttendStream: one message): its final status,
  // wall time from arrival to completion and the sizes of its messages
  // (response_bytes is 0 when it failed).
  void RecordRequest(Rpc rpc, int method, absl::StatusCode code, absl::Duration duration,
                     int64_t request_bytes, int64_t response_bytes);
  // A call refused before its handler ran (UNAUTHENTICATED by
  // server/auth.h): counted in attnserve_requests_total with method "" and
  // nothing else (no duration, no bytes: nothing was read).
  void RecordRejected(Rpc rpc, absl::StatusCode code);
  // A request dropped before compute (it is also counted by RecordRequest).
  void RecordDrop(DropReason reason);
  // A batch that reached a kernel: the requests in it, their items along B
  // (the batch size, Triton's meaning), the time the kernel call took.
  void RecordBatch(int method, int64_t requests, int64_t items, absl::Duration compute);
  // Time a request waited in the queue before its batch started.
  void RecordQueueWait(absl::Duration wait);

  // A request (or stream message) arrived: counted for arrivals(), the
  // idle trimmer's sign of activity between its looks (server/main.cc).
  void CountArrival() { arrivals_.fetch_add(1, std::memory_order_relaxed); }
  int64_t arrivals() const { return arrivals_.load(std::memory_order_relaxed); }

  prometheus::Gauge& queue_depth() { return *queue_depth_; }
  prometheus::Gauge& inflight_requests() { return *inflight_requests_; }
  // Set once by the Batcher, so alerts can compare queue_depth with it.
  prometheus::Gauge& queue_capacity() { return *queue_capacity_; }

 private:
  prometheus::Counter& RequestCounter(Rpc rpc, int method, absl::StatusCode code);
  prometheus::Histogram& RequestDuration(Rpc rpc, int method);
  prometheus::Counter& BatchCounter(int method);
  prometheus::Counter& BatchedRequestCounter(int method);
  prometheus::Histogram& ComputeDuration(int method);

  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& request_duration_;
  prometheus::Family<prometheus::Counter>& request_bytes_;
  prometheus::Family<prometheus::Counter>& response_bytes_;
  prometheus::Family<prometheus::Counter>& dropped_;
  prometheus::Family<prometheus::Histogram>& compute_duration_;
  prometheus::Family<prometheus::Counter>& batches_;
  prometheus::Family<prometheus::Counter>& batched_requests_;
  prometheus::Histogram* queue_duration_;
  prometheus::Histogram* batch_size_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* inflight_requests_;
  prometheus::Gauge* queue_capacity_;
  std::atomic<int64_t> arrivals_{0};

  // Lazily created series: Family::Add locks and hashes the labels on every
  // call, so each series is looked up once and its pointer kept.
  static constexpr int kNumCodes = 17;
  absl::Mutex mu_;
  std::array<std::atomic<prometheus::Counter*>, kNumRpcs * kNumMethodLabels * kNumCodes>
      requests_by_{};
  std::array<std::atomic<prometheus::Histogram*>, kNumRpcs * kNumMethodLabels> duration_by_{};
  std::array<prometheus::Counter*, kNumRpcs> request_bytes_by_{};
  std::array<prometheus::Counter*, kNumRpcs> response_bytes_by_{};
  std::array<prometheus::Counter*, kNumDropReasons> dropped_by_{};
  std::array<std::atomic<prometheus::Histogram*>, kNumMethodLabels> compute_by_{};
  std::array<std::atomic<prometheus::Counter*>, kNumMethodLabels> batches_by_{};
  std::array<std::atomic<prometheus::Counter*>, kNumMethodLabels> batched_requests_by_{};
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_METRICS_H_
