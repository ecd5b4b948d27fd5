#include "server/batcher.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "kernels/parallel.h"

namespace attnserve::server {

// The cancellation of a merged batch: its kernels stop once every request in
// it is cancelled. `live` is guarded by Batcher::mu_.
struct BatchRequest::BatchState {
  int live = 0;
  std::atomic<bool> all_cancelled{false};
};

namespace {

// The element count of a shape Prepare checked.
size_t Elements(const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  return count;
}

// A request of a merged call: its arguments without the inputs, and the
// shapes of its batched inputs.
struct Part {
  BatchRequest* request = nullptr;
  kernels::AttendArgs args;
  std::vector<const std::vector<int64_t>*> batched;  // per kBatchedInputs; null: absent
  int64_t items = 1;                                 // its B
  size_t bytes = 0;                                  // of its batched inputs
};

// Sk of a part: from k [B,H_kv,Sk,D] or x_kv [B,Sk,d_model]; -1 when
// neither has that rank.
int64_t KeyLength(const Part& part) {
  static_assert(kBatchedInputs[1] == "k" && kBatchedInputs[4] == "x_kv");
  const std::vector<int64_t>* k = part.batched[1];
  const std::vector<int64_t>* x_kv = part.batched[4];
  if (k != nullptr && k->size() == 4) return (*k)[2];
  if (x_kv != nullptr && x_kv->size() == 3) return (*x_kv)[1];
  return -1;
}

// The part of `request` (prepared with defer_batched), or nullopt when its
// batched inputs disagree on B, or its kv_lengths on B or Sk's source.
std::optional<Part> PartOf(BatchRequest* request) {
  Part part;
  part.request = request;
  part.args = request->TakeAttendArgs();
  int64_t items = -1;
  for (absl::string_view name : kBatchedInputs) {
    const std::vector<int64_t>* shape = request->BatchedShape(name);
    part.batched.push_back(shape);
    if (shape == nullptr) continue;
    part.bytes += Elements(*shape) * sizeof(float);
    if (items >= 0 && (*shape)[0] != items) return std::nullopt;
    items = (*shape)[0];
  }
  part.items = std::max<int64_t>(items, 1);
  // kv_lengths are concatenated along B with the inputs: one per item.
  if (!part.args.kv_lengths.empty() &&
      (static_cast<int64_t>(part.args.kv_lengths.size()) != part.items || KeyLength(part) < 1)) {
    return std::nullopt;
  }
  return part;
}

// The kv_lengths of a merged call over `members`: empty when none has any,
// else each member's own, or Sk for every item of one without.
std::vector<int64_t> MergedKvLengths(const std::vector<Part*>& members, int64_t total_b) {
  std::vector<int64_t> merged;
  const bool any = std::any_of(members.begin(), members.end(),
                               [](const Part* part) { return !part->args.kv_lengths.empty(); });
  if (!any) return merged;
  merged.reserve(static_cast<size_t>(total_b));
  for (const Part* part : members) {
    const std::vector<int64_t>& own = part->args.kv_lengths;
    if (own.empty()) {
      merged.insert(merged.end(), static_cast<size_t>(part->items), KeyLength(*part));
    } else {
      merged.insert(merged.end(), own.begin(), own.end());
    }
  }
  return merged;
}

// True when `b` can be concatenated with `a` along B: the same batched
// inputs, of equal shape but for dimension 0. (The shared inputs are equal:
// they are part of the merge key, inline byte for byte or by ref.)
bool Compatible(const Part& a, const Part& b) {
  for (size_t i = 0; i < a.batched.size(); ++i) {
    const std::vector<int64_t>* x = a.batched[i];
    const std::vector<int64_t>* y = b.batched[i];
    if ((x == nullptr) != (y == nullptr)) return false;
    if (x == nullptr) continue;
    if (x->size() != y->size() || !std::equal(x->begin() + 1, x->end(), y->begin() + 1)) {
      return false;
    }
  }
  return true;
}

// A per-request limit (elements or result bytes) scaled to a batch: the
// kernels' outputs and intermediates grow linearly with B, so the batch passes exactly when each
// request (B <= max_b) would pass alone.
int64_t BatchElementLimit(int64_t per_request, int64_t total_b, int64_t max_b) {
  const long double scaled =
      static_cast<long double>(per_request) * static_cast<long double>(total_b) / max_b;
  const long double cap = static_cast<long double>(std::numeric_limits<int64_t>::max());
  return scaled >= cap ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(scaled);
}

absl::Status DroppedStatus(bool deadline) {
  return deadline ? absl::DeadlineExceededError(
                        "request: deadline exceeded while waiting in the batch queue; it was not "
                        "computed")
                  : absl::CancelledError(
                        "request: cancelled (by the client or server shutdown) while waiting in "
                        "the batch queue; it was not computed");
}

// Three quarters of a core's L2 cache: inputs, outputs and the kernels'
// scratch of a chunk of a merged batch fit in it.
size_t ChunkBytes() {
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return l2 > 0 ? static_cast<size_t>(l2) / 4 * 3 : size_t{768} << 10;
}

absl::Status CancelledWhileComputing() {
  return absl::CancelledError(
      "request: cancelled (by the client or server shutdown) while its batch computed; the "
      "result was dropped");
}

}  // namespace

absl::Status ValidateBatcherOptions(const BatcherOptions& options) {
  if (options.max_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_batch_size: must be >= 1, got ", options.max_batch_size));
  }
  int64_t previous = 0;
  for (int64_t size : options.preferred_batch_sizes) {
    if (size <= previous || size > options.max_batch_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--preferred_batch_sizes: must be ascending, each in 1..--max_batch_size (",
          options.max_batch_size, "), got ", absl::StrJoin(options.preferred_batch_sizes, ",")));
    }
    previous = size;
  }
  if (options.max_queue_delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--max_queue_delay_us: must be >= 0");
  }
  if (options.batch_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch_threads: must be >= 1, got ", options.batch_threads));
  }
  if (options.compute_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads: must be >= 1, got ", options.compute_threads));
  }
  if (options.work_per_thread < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("work_per_thread: must be >= 1, got ", options.work_per_thread));
  }
  return absl::OkStatus();
}

Batcher::Batcher(const BatcherOptions& options, Metrics* metrics)
    : options_(options),
      metrics_(metrics),
      chunk_bytes_(options.merge_chunk_bytes > 0 ? options.merge_chunk_bytes : ChunkBytes()),
      free_threads_(options.compute_threads) {
  metrics_->queue_capacity().Set(static_cast<double>(options_.max_queue_size));
  absl::MutexLock lock(&stop_mu_);
  for (int i = 0; i < options_.batch_threads; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

Batcher::~Batcher() { Stop(); }

absl::Status Batcher::Enqueue(BatchRequest* request, Traits traits) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      metrics_->RecordDrop(DropReason::kShutdown);
      return absl::UnavailableError("server: shutting down; not accepting new requests");
    }
    if (options_.max_queue_size != 0 && queue_.size() >= options_.max_queue_size) {
      metrics_->RecordDrop(DropReason::kQueueFull);
      return absl::ResourceExhaustedError(
          absl::StrCat("server: batch queue is full (", queue_.size(),
                       " requests waiting, --max_queue_size); retry with backoff or add capacity"));
    }
    request->state_ = BatchRequest::State::kQueued;
    request->key_ = std::move(traits.key);
    request->items_ = std::max<int64_t>(traits.items, 1);
    request->method_ = traits.method;
    request->work_ = traits.work;
    request->group_ = traits.group;
    request->enqueued_ = absl::Now();
    request->deadline_ = traits.deadline;
    request->batch_ = nullptr;
    request->cancelled_.store(false, std::memory_order_relaxed);
    request->position_ = queue_.insert(queue_.end(), request);
    metrics_->queue_depth().Set(static_cast<double>(queue_.size()));
  }
  changed_.Signal();
  return absl::OkStatus();
}

void Batcher::Cancel(BatchRequest* request) {
  bool deadline = false;
  {
    absl::MutexLock lock(&mu_);
    switch (request->state_) {
      case BatchRequest::State::kIdle: return;
      case BatchRequest::State::kRunning:
        request->cancelled_.store(true, std::memory_order_relaxed);
        if (request->batch_ != nullptr && --request->batch_->live == 0) {
          request->batch_->all_cancelled.store(true, std::memory_order_relaxed);
        }
        return;
      case BatchRequest::State::kQueued: break;
    }
    Remove(request);
    // gRPC's deadline timer may fire a little before our clock reaches the
    // deadline it reported.
    deadline = absl::Now() + absl::Milliseconds(5) >= request->deadline_;
  }
  metrics_->RecordDrop(deadline ? DropReason::kDeadline : DropReason::kCancelled);
  request->Done(DroppedStatus(deadline));
}

void Batcher::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  changed_.SignalAll();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

size_t Batcher::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void Batcher::Remove(BatchRequest* request) {
  queue_.erase(request->position_);
  request->state_ = BatchRequest::State::kIdle;
  metrics_->queue_depth().Set(static_cast<double>(queue_.size()));
}

bool Batcher::FormBatch(absl::Time now, Formed& formed, absl::Time& wake) {
  // Groups of equal keys in order of their oldest request.
  struct Group {
    std::vector<BatchRequest*> requests;
    int64_t items = 0;
    size_t preferred_end = 0;  // requests in the longest prefix of a preferred size
  };
  std::vector<Group> groups;
  absl::flat_hash_map<absl::string_view, size_t> group_of;
  BatchRequest* first_alone = nullptr;
  for (BatchRequest* request : queue_) {
    if (request->key_.empty() || request->items_ >= options_.max_batch_size) {
      // Nothing to wait for: it runs as soon as no older group is ready.
      if (groups.empty()) {
        formed.requests = {request};
        return true;
      }
      if (first_alone == nullptr) first_alone = request;
      continue;
    }
    auto [it, inserted] = group_of.try_emplace(request->key_, groups.size());
    if (inserted) groups.emplace_back();
    Group& group = groups[it->second];
    if (group.items + request->items_ > options_.max_batch_size) continue;
    group.requests.push_back(request);
    group.items += request->items_;
    if (std::binary_search(options_.preferred_batch_sizes.begin(),
                           options_.preferred_batch_sizes.end(), group.items)) {
      group.preferred_end = group.requests.size();
    }
  }
  for (Group& group : groups) {
    // A group's batch (Decode steps) takes what is queued and never waits.
    const BatchRequest* oldest = group.requests.front();
    const absl::Time ready_at =
        oldest->enqueued_ + (oldest->group_ != nullptr ? absl::ZeroDuration()
                                                       : options_.max_queue_delay);
    if (group.items == options_.max_batch_size || now >= ready_at || stopping_) {
      formed.requests = std::move(group.requests);
      return true;
    }
    if (group.preferred_end > 0) {
      group.requests.resize(group.preferred_end);
      formed.requests = std::move(group.requests);
      return true;
    }
    wake = std::min(wake, ready_at);
  }
  if (first_alone != nullptr) {
    formed.requests = {first_alone};
    return true;
  }
  return false;
}

void Batcher::WorkerLoop() {
  for (;;) {
    Formed formed;
    std::vector<BatchRequest*> expired;
    {
      absl::MutexLock lock(&mu_);
      for (;;) {
        if (queue_.empty()) {
          if (stopping_) return;
          changed_.Wait(&mu_);
          continue;
        }
        const absl::Time now = absl::Now();
        // Expired requests leave first: gRPC cancels them too, but its
        // notification may not have arrived yet, and they must not compute.
        absl::Time wake = absl::InfiniteFuture();
        for (auto it = queue_.begin(); it != queue_.end();) {
          BatchRequest* request = *it++;
          if (now >= request->deadline_) {
            Remove(request);
            expired.push_back(request);
          } else {
            wake = std::min(wake, request->deadline_);
          }
        }
        if (!expired.empty()) break;
        // Compute threads are a budget: with none free, forming a batch now
        // would oversubscribe the cores (and an OpenMP team stalls at every
        // barrier when one of its threads is descheduled); the queue grows
        // into a larger batch meanwhile.
        if (free_threads_ == 0) {
          changed_.WaitWithDeadline(&mu_, wake);
          continue;
        }
        if (FormBatch(now, formed, wake)) break;
        changed_.WaitWithDeadline(&mu_, wake);
      }
      if (!formed.requests.empty()) {
        const absl::Time now = absl::Now();
        formed.state = std::make_unique<BatchRequest::BatchState>();
        for (BatchRequest* request : formed.requests) {
          Remove(request);
          request->state_ = BatchRequest::State::kRunning;
          request->batch_ = formed.state.get();
          metrics_->RecordQueueWait(now - request->enqueued_);
        }
        formed.state->live = static_cast<int>(formed.requests.size());
        // When nothing else waits, as many free threads as the batch's work
        // can use (one large request gets the machine), else one each.
        formed.threads = queue_.empty() ? ThreadsFor(formed.requests) : 1;
        free_threads_ -= formed.threads;
      }
    }
    for (BatchRequest* request : expired) {
      metrics_->RecordDrop(DropReason::kDeadline);
      request->Done(DroppedStatus(/*deadline=*/true));
    }
    if (formed.requests.empty()) continue;
    Run(formed);
    {
      absl::MutexLock lock(&mu_);
      free_threads_ += formed.threads;
    }
    // All: a single Signal could wake a thread that only waits for work.
    changed_.SignalAll();
  }
}

int Batcher::ThreadsFor(const std::vector<BatchRequest*>& requests) const {
  int64_t work = 0;
  for (const BatchRequest* request : requests) {
    if (request->work_ <= 0) return free_threads_;
    work = request->work_ > std::numeric_limits<int64_t>::max() - work
               ? std::numeric_limits<int64_t>::max()
               : work + request->work_;
  }
  const int64_t wanted = 1 + (work - 1) / options_.work_per_thread;
  return static_cast<int>(std::min<int64_t>(wanted, free_threads_));
}

void Batcher::Answer(BatchRequest* request, const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    request->state_ = BatchRequest::State::kIdle;
    request->batch_ = nullptr;
  }
  request->Done(status);
}

void Batcher::RunAlone(BatchRequest* request, int threads, bool prepared) {
  if (!prepared) {
    absl::Status status = request->Prepare(options_.max_elements, /*defer_batched=*/false);
    if (!status.ok()) {
      Answer(request, status);
      return;
    }
  }
  kernels::ComputeOptions options;
  options.threads = threads;
  options.max_elements = std::min(options_.max_elements, options_.max_result_bytes / 4);
  options.max_result_bytes = options_.max_result_bytes;
  options.cancelled = &request->cancelled_;
  options.inputs_checked = true;  // by Prepare
  const absl::Time start = absl::Now();
  absl::Status status = request->Compute(options);
  metrics_->RecordBatch(request->method_, 1, request->items_, absl::Now() - start);
  // Cancelled after the kernels' last look: the caller is gone either way.
  if (status.ok() && request->cancelled_.load(std::memory_order_relaxed)) {
    status = CancelledWhileComputing();
  }
  Answer(request, status);
}

void Batcher::Run(Formed& formed) {
  if (formed.requests.size() == 1) {
    RunAlone(formed.requests.front(), formed.threads, /*prepared=*/false);
    return;
  }
  if (formed.requests.front()->group_ != nullptr) {
    RunGroup(formed.requests, *formed.state, formed.threads);
    return;
  }
  RunMerged(formed.requests, *formed.state, formed.threads);
}

void Batcher::Leave(BatchRequest::BatchState& state, BatchRequest* request,
                    const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (--state.live == 0) state.all_cancelled.store(true, std::memory_order_relaxed);
  }
  Answer(request, status);
}

void Batcher::RunGroup(std::vector<BatchRequest*>& requests, BatchRequest::BatchState& state,
                       int threads) {
  // A request that fails its checks is answered alone; the others go on.
  std::vector<BatchRequest*> members;
  std::vector<const std::atomic<bool>*> cancelled;
  int64_t items = 0;
  for (BatchRequest* request : requests) {
    const absl::Status status = request->Prepare(options_.max_elements, /*defer_batched=*/false);
    if (!status.ok()) {
      Leave(state, request, status);
      continue;
    }
    members.push_back(request);
    cancelled.push_back(&request->cancelled_);
    items += request->items_;
  }
  if (members.size() <= 1) {
    if (!members.empty()) RunAlone(members.front(), threads, /*prepared=*/true);
    return;
  }
  kernels::ComputeOptions options;
  options.threads = threads;
  options.max_elements = std::min(options_.max_elements, options_.max_result_bytes / 4);
  options.max_result_bytes = options_.max_result_bytes;
  options.cancelled = &state.all_cancelled;
  options.inputs_checked = true;  // by Prepare
  const absl::Time start = absl::Now();
  const std::vector<absl::Status> statuses =
      members.front()->group_->ComputeTogether(members, cancelled, options);
  metrics_->RecordBatch(members.front()->method_, static_cast<int64_t>(members.size()), items,
                        absl::Now() - start);
  for (size_t i = 0; i < members.size(); ++i) {
    absl::Status status = statuses[i];
    // Cancelled after the kernels' last look: the caller is gone either way.
    if (status.ok() && members[i]->cancelled_.load(std::memory_order_relaxed)) {
      status = CancelledWhileComputing();
    }
    Answer(members[i], status);
  }
}

void Batcher::RunMerged(std::vector<BatchRequest*>& requests, BatchRequest::BatchState& state,
                        int threads) {
  // Checking is per request (a bad request fails alone); nothing is decoded
  // yet, so it is cheap enough to run inline.
  std::vector<absl::Status> prepared(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    prepared[i] = requests[i]->Prepare(options_.max_elements, /*defer_batched=*/true);
  }
  const auto fail = [&](BatchRequest* request, const absl::Status& status) {
    Leave(state, request, status);
  };
  std::vector<Part> parts;
  std::vector<BatchRequest*> misfits;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!prepared[i].ok()) {
      fail(requests[i], prepared[i]);
      continue;
    }
    std::optional<Part> part = PartOf(requests[i]);
    // Equal keys make this rare (refs can hide shapes); such a request runs
    // alone, where the kernels name what is wrong.
    if (!part.has_value() || (!parts.empty() && !Compatible(parts.front(), *part))) {
      misfits.push_back(requests[i]);
      continue;
    }
    parts.push_back(std::move(*part));
  }
  if (parts.size() == 1) {
    // Alone after all: prepared again, in full (cheap next to a kernel call).
    misfits.insert(misfits.begin(), parts.front().request);
    parts.clear();
  }
  // The parameters the batch shares, decoded once for all of it.
  kernels::TensorMap shared;
  if (!parts.empty()) {
    const absl::Status status = parts.front().request->DecodeShared(shared);
    if (!status.ok()) {
      for (const Part& part : parts) fail(part.request, status);
      parts.clear();
    }
  }
  // The batch runs as kernel calls over chunks of consecutive requests whose
  // batched inputs fit in the cache budget: each chunk's inputs are written,
  // computed on and its outputs copied out while they are still in cache. (A
  // merged call over the whole batch streamed every tensor through memory
  // three times and cost more per request than running requests alone; a
  // call's own overhead is about a microsecond, nothing to save by one call.)
  int64_t reached = 0;
  int64_t reached_items = 0;
  absl::Duration compute;
  const int method = parts.empty() ? 0 : parts.front().request->method_;
  // One batch in the metrics, as formed (Triton's batch size), however many
  // chunks it ran in.
  bool recorded = false;
  const auto record = [&] {
    if (recorded || reached == 0) return;
    recorded = true;
    metrics_->RecordBatch(method, reached, reached_items, compute);
  };
  for (size_t begin = 0; begin < parts.size();) {
    size_t end = begin + 1;
    for (size_t bytes = parts[begin].bytes;
         end < parts.size() && bytes + parts[end].bytes <= chunk_bytes_; ++end) {
      bytes += parts[end].bytes;
    }
    // Each request's batched values are copied once, from its message
    // straight into its rows (no concatenation pass, no zero-fill first). A
    // request with a non-finite value is answered and its rows taken out.
    std::vector<std::vector<float>> merged(std::size(kBatchedInputs));
    for (size_t n = 0; n < merged.size(); ++n) {
      if (parts[begin].batched[n] == nullptr) continue;
      size_t total = 0;
      for (size_t i = begin; i < end; ++i) total += Elements(*parts[i].batched[n]);
      merged[n].reserve(total);
    }
    std::vector<Part*> members;
    std::vector<size_t> sizes(merged.size());
    for (size_t i = begin; i < end; ++i) {
      // Cancelled while an earlier chunk computed: it never reaches a kernel.
      if (parts[i].request->cancelled_.load(std::memory_order_relaxed)) {
        metrics_->RecordDrop(DropReason::kCancelled);
        Answer(parts[i].request,
               absl::CancelledError("request: cancelled (by the client or server shutdown) "
                                    "while its batch computed, before its turn; it was not "
                                    "computed"));
        continue;
      }
      for (size_t n = 0; n < merged.size(); ++n) sizes[n] = merged[n].size();
      absl::Status status;
      for (size_t n = 0; n < merged.size() && status.ok(); ++n) {
        if (parts[i].batched[n] != nullptr) {
          status = parts[i].request->AppendBatched(kBatchedInputs[n], merged[n]);
        }
      }
      if (status.ok()) {
        members.push_back(&parts[i]);
        continue;
      }
      for (size_t n = 0; n < merged.size(); ++n) merged[n].resize(sizes[n]);
      fail(parts[i].request, status);
    }
    const bool last = end == parts.size();
    begin = end;
    if (members.empty()) continue;
    int64_t total_b = 0;
    int64_t max_b = 1;
    for (const Part* part : members) {
      total_b += part->items;
      max_b = std::max(max_b, part->items);
    }
    // Before the first member's args are moved from.
    std::vector<int64_t> kv_lengths = MergedKvLengths(members, total_b);
    kernels::AttendArgs args = std::move(members.front()->args);
    args.kv_lengths = std::move(kv_lengths);
    // The kernels may work on their inputs in place: each call its own copy.
    args.inputs = last ? std::move(shared) : shared;
    for (size_t n = 0; n < merged.size(); ++n) {
      if (members.front()->batched[n] == nullptr) continue;
      std::vector<int64_t> shape = *members.front()->batched[n];
      shape[0] = total_b;
      args.inputs.insert_or_assign(std::string(kBatchedInputs[n]),
                                   kernels::Tensor(std::move(shape), std::move(merged[n])));
    }
    // The chunk's own share of the batch's threads: a team woken for a
    // chunk too small to use it costs more than it saves.
    int64_t work = 0;
    for (const Part* part : members) {
      work = part->request->work_ <= 0 ? std::numeric_limits<int64_t>::max() / 2
                                       : std::min(work + part->request->work_,
                                                  std::numeric_limits<int64_t>::max() / 2);
    }
    const int chunk_threads =
        static_cast<int>(std::min<int64_t>(threads, 1 + (work - 1) / options_.work_per_thread));
    kernels::ComputeOptions options;
    options.threads = chunk_threads;
    options.max_elements = BatchElementLimit(
        std::min(options_.max_elements, options_.max_result_bytes / 4), total_b, max_b);
    options.max_result_bytes = BatchElementLimit(options_.max_result_bytes, total_b, max_b);
    // A chunk of one stops as soon as its caller cancels.
    options.cancelled = members.size() == 1 ? &members.front()->request->cancelled_
                                            : &state.all_cancelled;
    options.inputs_checked = true;  // by Prepare, DecodeShared and AppendBatched
    const absl::Time start = absl::Now();
    absl::StatusOr<kernels::AttendResult> result = kernels::Attend(std::move(args), options);
    compute += absl::Now() - start;
    reached += static_cast<int64_t>(members.size());
    reached_items += total_b;
    // Recorded before the last answers go out, so that a caller who has its
    // answer sees its batch in the metrics.
    if (last) record();
    if (result.ok()) {
      std::vector<int64_t> begin_of(members.size(), 0);
      for (size_t i = 1; i < members.size(); ++i) {
        begin_of[i] = begin_of[i - 1] + members[i - 1]->items;
      }
      // Filling and sending the responses is per-request work too. A caller
      // that cancelled while the batch computed gets no copy of its rows.
      kernels::ParallelFor(static_cast<int64_t>(members.size()), chunk_threads, 1,
                           [&](int64_t from, int64_t to) {
                             for (int64_t i = from; i < to; ++i) {
                               BatchRequest* request = members[i]->request;
                               if (request->cancelled_.load(std::memory_order_relaxed)) {
                                 Answer(request, CancelledWhileComputing());
                                 continue;
                               }
                               request->Fill(*result, begin_of[i], members[i]->items);
                               Answer(request, absl::OkStatus());
                             }
                           });
    } else if (absl::IsCancelled(result.status()) &&
               options.cancelled->load(std::memory_order_relaxed)) {
      for (const Part* part : members) Answer(part->request, result.status());
    } else {
      // One request's inputs (or the chunk's size) made the call fail: each
      // request gets its own answer.
      for (const Part* part : members) misfits.push_back(part->request);
    }
  }
  record();
  for (BatchRequest* request : misfits) RunAlone(request, threads, /*prepared=*/false);
}

}  // namespace attnserve::server
