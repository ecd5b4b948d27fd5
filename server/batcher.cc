#include "server/batcher.h"

#include <algorithm>
#include <cstring>
#include <limits>
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

// The inputs with a leading batch dimension B (positional-methods.md 1.1);
// every other input is a parameter shared by the whole batch, equal in every
// request of a batch because it is part of the merge key.
constexpr const char* kBatchedInputs[] = {"q", "k", "v", "x_q", "x_kv"};

bool IsBatched(const std::string& name) {
  for (const char* batched : kBatchedInputs) {
    if (name == batched) return true;
  }
  return false;
}

// True when `b` can be concatenated with `a` along B: the same inputs, the
// batched ones of equal shape but for dimension 0 and all with one B, the
// shared ones of equal shape.
bool Compatible(const kernels::AttendArgs& a, const kernels::AttendArgs& b) {
  if (a.inputs.size() != b.inputs.size()) return false;
  int64_t batch = -1;
  for (const auto& [name, tensor] : b.inputs) {
    auto it = a.inputs.find(name);
    if (it == a.inputs.end() || it->second.rank() != tensor.rank() || tensor.rank() == 0) {
      return false;
    }
    if (!IsBatched(name)) {
      if (it->second.shape() != tensor.shape()) return false;
      continue;
    }
    if (!std::equal(tensor.shape().begin() + 1, tensor.shape().end(),
                    it->second.shape().begin() + 1)) {
      return false;
    }
    if (batch >= 0 && tensor.dim(0) != batch) return false;
    batch = tensor.dim(0);
  }
  return true;
}

// The B of prepared arguments (their first batched input's dimension 0).
int64_t BatchOf(const kernels::AttendArgs& args) {
  for (const char* name : kBatchedInputs) {
    auto it = args.inputs.find(name);
    if (it != args.inputs.end() && it->second.rank() > 0) return it->second.dim(0);
  }
  return 1;
}

// One call's arguments from `parts` (Compatible with parts[0]): batched
// inputs concatenated along B, everything else taken from parts[0].
kernels::AttendArgs Merge(std::vector<kernels::AttendArgs>& parts) {
  kernels::AttendArgs merged = std::move(parts[0]);
  for (auto& [name, tensor] : merged.inputs) {
    if (!IsBatched(name)) continue;
    std::vector<int64_t> shape = tensor.shape();
    size_t total = tensor.values().size();
    for (size_t i = 1; i < parts.size(); ++i) {
      const kernels::Tensor& part = parts[i].inputs.at(name);
      shape[0] += part.dim(0);
      total += part.values().size();
    }
    // One allocation and one copy per part (growing the first part's vector
    // would copy it again at every reallocation; sizing it would zero it).
    std::vector<float> values;
    values.reserve(total);
    values.insert(values.end(), tensor.values().begin(), tensor.values().end());
    for (size_t i = 1; i < parts.size(); ++i) {
      const std::vector<float>& part = parts[i].inputs.at(name).values();
      values.insert(values.end(), part.begin(), part.end());
    }
    tensor = kernels::Tensor(std::move(shape), std::move(values));
  }
  return merged;
}

// The per-request limit scaled to a batch: the kernels' outputs and
// intermediates grow linearly with B, so the batch passes exactly when each
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
  return absl::OkStatus();
}

Batcher::Batcher(const BatcherOptions& options, Metrics* metrics)
    : options_(options), metrics_(metrics), free_threads_(options.compute_threads) {
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
    const absl::Time ready_at = group.requests.front()->enqueued_ + options_.max_queue_delay;
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
        // All free threads when nothing else waits (one large request gets
        // the machine), else one each.
        formed.threads = queue_.empty() ? free_threads_ : 1;
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
    absl::Status status = request->Prepare(options_.max_elements);
    if (!status.ok()) {
      Answer(request, status);
      return;
    }
  }
  kernels::ComputeOptions options;
  options.threads = threads;
  options.max_elements = options_.max_elements;
  options.cancelled = &request->cancelled_;
  const absl::Time start = absl::Now();
  absl::Status status = request->Compute(options);
  metrics_->RecordBatch(request->method_, 1, request->items_, absl::Now() - start);
  Answer(request, status);
}

void Batcher::Run(Formed& formed) {
  if (formed.requests.size() == 1) {
    RunAlone(formed.requests.front(), formed.threads, /*prepared=*/false);
    return;
  }
  RunMerged(formed.requests, *formed.state, formed.threads);
}

void Batcher::RunMerged(std::vector<BatchRequest*>& requests, BatchRequest::BatchState& state,
                        int threads) {
  // Conversion is per request (a bad request fails alone), on all of the
  // batch's threads: it is as much work as the kernels for small requests.
  std::vector<absl::Status> prepared(requests.size());
  kernels::ParallelFor(static_cast<int64_t>(requests.size()), threads, 1,
                       [&](int64_t begin, int64_t end) {
                         for (int64_t i = begin; i < end; ++i) {
                           prepared[i] = requests[i]->Prepare(options_.max_elements);
                         }
                       });
  std::vector<BatchRequest*> members;
  std::vector<kernels::AttendArgs> parts;
  std::vector<BatchRequest*> misfits;
  for (size_t i = 0; i < requests.size(); ++i) {
    BatchRequest* request = requests[i];
    const absl::Status& status = prepared[i];
    if (!status.ok()) {
      {
        absl::MutexLock lock(&mu_);
        if (--state.live == 0) state.all_cancelled.store(true, std::memory_order_relaxed);
      }
      Answer(request, status);
      continue;
    }
    kernels::AttendArgs args = request->TakeAttendArgs();
    // Equal keys make this rare (refs can hide shapes); such a request runs alone.
    if (!parts.empty() && !Compatible(parts.front(), args)) {
      misfits.push_back(request);
      continue;
    }
    members.push_back(request);
    parts.push_back(std::move(args));
  }
  std::vector<int64_t> batch_of;
  int64_t total_b = 0;
  int64_t max_b = 1;
  for (const kernels::AttendArgs& args : parts) {
    batch_of.push_back(BatchOf(args));
    total_b += batch_of.back();
    max_b = std::max(max_b, batch_of.back());
  }
  if (members.size() == 1) {
    // Give the arguments back by preparing again (cheap next to a kernel call).
    misfits.insert(misfits.begin(), members.front());
    members.clear();
  }
  if (!members.empty()) {
    kernels::ComputeOptions options;
    options.threads = threads;
    options.max_elements = BatchElementLimit(options_.max_elements, total_b, max_b);
    options.cancelled = &state.all_cancelled;
    const int method = members.front()->method_;
    const absl::Time start = absl::Now();
    absl::StatusOr<kernels::AttendResult> result = kernels::Attend(Merge(parts), options);
    metrics_->RecordBatch(method, static_cast<int64_t>(members.size()), total_b,
                          absl::Now() - start);
    if (result.ok()) {
      std::vector<int64_t> begin_of(members.size(), 0);
      for (size_t i = 1; i < members.size(); ++i) begin_of[i] = begin_of[i - 1] + batch_of[i - 1];
      // Filling and sending the responses is per-request work too.
      kernels::ParallelFor(static_cast<int64_t>(members.size()), threads, 1,
                           [&](int64_t begin, int64_t end) {
                             for (int64_t i = begin; i < end; ++i) {
                               members[i]->Fill(*result, begin_of[i], batch_of[i]);
                               Answer(members[i], absl::OkStatus());
                             }
                           });
    } else if (absl::IsCancelled(result.status()) &&
               state.all_cancelled.load(std::memory_order_relaxed)) {
      for (BatchRequest* request : members) Answer(request, result.status());
    } else {
      // One request's inputs (or the batch's size) made the call fail: each
      // request gets its own answer.
      misfits.insert(misfits.end(), members.begin(), members.end());
    }
  }
  for (BatchRequest* request : misfits) RunAlone(request, threads, /*prepared=*/false);
}

}  // namespace attnserve::server
