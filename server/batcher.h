// Batcher: the dynamic batcher between the RPC handlers and the kernels, with
// Triton's knobs (max batch size, preferred batch sizes, max queue delay,
// max queue size) and its own compute threads, so that gRPC's threads never
// run kernels.
//
// Requests wait in one FIFO queue. A batcher thread takes the oldest
// request's merge key and gathers the queued requests with the same key, in
// arrival order, while their items along the batch dimension B add up to at
// most max_batch_size. It runs them merged along B (each request's batched
// inputs decoded straight into its rows of the merged inputs, and its
// kv_lengths into the merged call's, kernel::Attend
// over cache-sized chunks of the batch, each request's rows of the output
// copied straight into its response) once the batch is full, or reaches a preferred size, or its oldest request
// has waited max_queue_delay, or the batcher is stopping. Requests with
// different keys never share a batch (no padding); a request with an empty
// key (Encode) or with B >= max_batch_size runs alone.
//
// Every request ends with exactly one BatchRequest::Done call. A request
// whose deadline passes or that is cancelled while it waits is removed and
// answered DEADLINE_EXCEEDED or CANCELLED without reaching a kernel. A
// running batch stops between rows once every request in it is cancelled;
// one cancelled while the others still need the batch is answered
// CANCELLED once it ends, without a copy of its rows.
// If a merged kernel call fails, each of its requests is run again alone, so
// that every caller gets its own status. Requests of a BatchGroup (Decode
// steps) are not merged along B: their group computes a batch of them by its
// own code, each request getting its own status, and such a batch never
// waits for more (max_queue_delay is for merged Attend calls).
//
// Thread-safety: Enqueue, Cancel and Stop may be called from any thread.
// Stop must not be called from a batcher thread.
#ifndef ATTNSERVE_SERVER_BATCHER_H_
#define ATTNSERVE_SERVER_BATCHER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "absl/time/time.h"
#include "kernels/attention.h"
#include "server/metrics.h"

namespace attnserve::server {

struct BatcherOptions {
  // Largest batch, in items along B (Triton's max_batch_size); 1 turns merging off.
  int64_t max_batch_size = 64;
  // Batch sizes to cut a batch at as soon as they are reached (ascending).
  std::vector<int64_t> preferred_batch_sizes;
  // How long the oldest request of a batch that is not yet full may wait for
  // more; zero batches only what is already queued when a thread is free.
  absl::Duration max_queue_delay = absl::ZeroDuration();
  // Requests waiting (not yet in a running batch) above which Enqueue fails
  // with RESOURCE_EXHAUSTED; 0 = unbounded.
  size_t max_queue_size = 1024;
  // Batches that compute at once (batcher threads); >= 1.
  int batch_threads = 1;
  // OpenMP threads shared by the running batches (--threads); >= 1. They
  // are a budget: a batch takes one, or when nothing else waits as many free
  // ones as its work can use (below), and no batch starts while none is free.
  int compute_threads = 1;
  // Estimated multiply-adds per compute thread of a batch (Traits::work):
  // below it a team costs more than it saves (waking and joining OpenMP
  // threads, their spinning while the cores are wanted for the RPCs).
  int64_t work_per_thread = int64_t{1} << 25;
  // Bytes of batched inputs (q, k, v, x_q, x_kv) per kernel call of a merged
  // batch, which runs as calls over chunks of this size (at least one
  // request each) so that each chunk stays in cache from its inputs' copy to
  // its outputs' copy; 0: three quarters of the L2 cache (768 KiB if the
  // system does not say).
  size_t merge_chunk_bytes = 0;
  // Per request, in float32 elements (the --max_elements flag).
  int64_t max_elements = int64_t{1} << 28;
  // Per request: the bytes of result tensors one response can carry
  // (server/limits.h ResultBudgetBytes of --max_message_bytes). A request
  // whose result would be larger is refused before compute, and no
  // intermediate tensor may be larger either (kernels::ComputeOptions).
  int64_t max_result_bytes = std::numeric_limits<int64_t>::max();
};

// INVALID_ARGUMENT naming the flag and its rule when `options` cannot be used.
absl::Status ValidateBatcherOptions(const BatcherOptions& options);

// The inputs with a leading batch dimension B (positional-methods.md 1.1),
// which a merged call concatenates along B; every other input is a
// parameter shared by the whole batch (equal in every request of a batch,
// since it is part of the merge key).
inline constexpr absl::string_view kBatchedInputs[] = {"q", "k", "v", "x_q", "x_kv"};

class BatchRequest;

// How a batch of requests that merge by their own code runs, instead of
// along B into one Attend: Decode steps of different sessions share one pass
// of the decode kernel over all their caches (server/decode_call.cc).
class BatchGroup {
 public:
  virtual ~BatchGroup() = default;
  // Computes `requests` (two or more with this group and one key, each
  // Prepared without defer_batched) together and returns each one's answer,
  // in order; their responses are written as by BatchRequest::Compute.
  // `cancelled[i]` is requests[i]'s own cancellation (polled by the kernels:
  // a cancelled request must not stop the others); `options` as for Compute,
  // its `cancelled` set once every request is.
  virtual std::vector<absl::Status> ComputeTogether(
      absl::Span<BatchRequest* const> requests,
      absl::Span<const std::atomic<bool>* const> cancelled,
      const kernels::ComputeOptions& options) = 0;
};

// One request as the batcher sees it; implemented by the RPC handlers. The
// batcher calls the virtual functions on its own threads, except Done, which
// it may also call from Enqueue's or Cancel's caller.
class BatchRequest {
 public:
  virtual ~BatchRequest() = default;

  // Converts the request into kernel arguments kept inside, checking the
  // per-request limit `max_elements` and that every input value is finite
  // (so the kernels may skip that scan: ComputeOptions::inputs_checked). With
  // `defer_batched` the inputs are checked but not decoded: TakeAttendArgs
  // leaves them out, AppendBatched writes those of kBatchedInputs straight
  // into a merged call's inputs, and DecodeShared decodes the others once
  // per merged call. An error is the request's answer.
  virtual absl::Status Prepare(int64_t max_elements, bool defer_batched) = 0;
  // After Prepare (without defer_batched): runs the kernels on the prepared
  // arguments alone and writes the response.
  virtual absl::Status Compute(const kernels::ComputeOptions& options) = 0;
  // After Prepare, for requests with a non-empty key: gives up the prepared
  // Attend arguments (without the deferred inputs) to a merged call...
  virtual kernels::AttendArgs TakeAttendArgs() = 0;
  // ...the shape of the deferred input `name`, or null when the request has
  // no such input...
  virtual const std::vector<int64_t>* BatchedShape(absl::string_view name) const = 0;
  // ...appends its values to `out` (the merged input), checking that each
  // is finite (an error is the request's answer; `out` may then hold part of
  // them)...
  virtual absl::Status AppendBatched(absl::string_view name, std::vector<float>& out) const = 0;
  // ...decodes its deferred inputs that are not batched (the parameters the
  // batch shares: equal keys mean equal values) into `inputs`, an error
  // being every member's answer...
  virtual absl::Status DecodeShared(kernels::TensorMap& inputs) const = 0;
  // ...and receives its own rows [begin, begin + count) along B of the
  // merged call's result.
  virtual void Fill(const kernels::AttendResult& batch, int64_t begin, int64_t count) = 0;
  // The request's answer, exactly once per Enqueue; afterwards the batcher
  // does not touch the request again.
  virtual void Done(const absl::Status& status) = 0;

 private:
  friend class Batcher;
  enum class State { kIdle, kQueued, kRunning };
  struct BatchState;

  // All guarded by Batcher::mu_ (not expressible across classes).
  State state_ = State::kIdle;
  std::string key_;
  int64_t items_ = 1;
  int method_ = 0;
  int64_t work_ = 0;
  BatchGroup* group_ = nullptr;
  absl::Time enqueued_;
  absl::Time deadline_;
  std::list<BatchRequest*>::iterator position_;
  BatchState* batch_ = nullptr;
  // Read by the kernels of a request computing alone.
  std::atomic<bool> cancelled_{false};
};

class Batcher {
 public:
  // How a request takes part in batching.
  struct Traits {
    // Requests with equal non-empty keys can run as one kernel call; empty:
    // never merged.
    std::string key;
    // Items along the batch dimension B (>= 1).
    int64_t items = 1;
    // Metric label (MethodLabelIndex).
    int method = 0;
    // When the caller stops waiting.
    absl::Time deadline = absl::InfiniteFuture();
    // Estimated multiply-adds of its kernel call; 0: unknown (it may use
    // every free compute thread).
    int64_t work = 0;
    // Not null: a batch of requests with this key runs through this group
    // (not owned, outliving the request), never merged along B; equal keys
    // must have equal groups.
    BatchGroup* group = nullptr;
  };

  // Starts options.batch_threads threads. `metrics` is not owned and must
  // outlive the batcher. The options must be valid (ValidateBatcherOptions).
  Batcher(const BatcherOptions& options, Metrics* metrics);
  // Stops (see Stop).
  ~Batcher();

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `request` (not owned; it must stay alive until its Done). Errors,
  // after which Done is not called: UNAVAILABLE once Stop has begun;
  // RESOURCE_EXHAUSTED when max_queue_size requests are already waiting.
  absl::Status Enqueue(BatchRequest* request, Traits traits);

  // The request's call was cancelled (by its client, its deadline or server
  // shutdown): if it is still queued it is removed and answered
  // DEADLINE_EXCEEDED (deadline passed) or CANCELLED; if it is computing,
  // its kernels stop at the next row once nothing else needs them. Does
  // nothing once the request has been answered.
  void Cancel(BatchRequest* request);

  // Refuses new requests, lets the threads run every queued request (without
  // waiting for batches to fill), then joins them. Idempotent.
  void Stop();

  // Requests waiting (a snapshot, for tests).
  size_t queued() const;

 private:
  struct Formed {
    std::vector<BatchRequest*> requests;
    std::unique_ptr<BatchRequest::BatchState> state;
    int threads = 1;
  };

  void WorkerLoop();
  // Picks the next batch to run. False (and `wake`, when to look again) if
  // none is ready yet.
  bool FormBatch(absl::Time now, Formed& formed, absl::Time& wake)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Remove(BatchRequest* request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The compute threads a batch of `requests` can use (1..free_threads_).
  int ThreadsFor(const std::vector<BatchRequest*>& requests) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Formed& formed);
  void RunMerged(std::vector<BatchRequest*>& requests, BatchRequest::BatchState& state,
                 int threads);
  void RunGroup(std::vector<BatchRequest*>& requests, BatchRequest::BatchState& state,
                int threads);
  void RunAlone(BatchRequest* request, int threads, bool prepared);
  // Answers `request`, a member of a running batch, before the batch ends.
  void Leave(BatchRequest::BatchState& state, BatchRequest* request, const absl::Status& status);
  void Answer(BatchRequest* request, const absl::Status& status);

  const BatcherOptions options_;
  Metrics* const metrics_;
  const size_t chunk_bytes_;  // options_.merge_chunk_bytes, resolved

  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  std::list<BatchRequest*> queue_ ABSL_GUARDED_BY(mu_);
  // Compute threads not taken by a running batch.
  int free_threads_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex stop_mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(stop_mu_);
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_BATCHER_H_
