#include "server/memory_trim.h"

#include <malloc.h>

#include <utility>

#include "absl/time/clock.h"

namespace attnserve::server {
namespace {

// Heap bytes freed since the last trim that are worth another while idle.
constexpr size_t kNewlyFreeBytes = size_t{16} << 20;

}  // namespace

IdleTrimmer::IdleTrimmer(std::function<double()> in_flight, absl::Duration period)
    : in_flight_(std::move(in_flight)), period_(period), thread_([this] { Loop(); }) {}

IdleTrimmer::~IdleTrimmer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void IdleTrimmer::Loop() {
  bool quiet_before = false;
  bool busy_since_trim = false;
  size_t free_after_trim = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      const auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), period_)) return;
    }
    const bool quiet = in_flight_() <= 0;
    if (!quiet) busy_since_trim = true;
    // Two quiet looks in a row: the burst is over, not between two calls.
    const bool settled = quiet && quiet_before;
    quiet_before = quiet;
    if (!settled) continue;
    // mallinfo2 takes every arena's lock: only when quiet. Memory freed
    // after the last trim (a connection's buffers, a response sent late)
    // shows as more free heap bytes (a trim leaves free chunks free).
    const size_t free_now = mallinfo2().fordblks;
    if (!busy_since_trim && free_now < free_after_trim + kNewlyFreeBytes) continue;
    malloc_trim(0);
    trims_.fetch_add(1, std::memory_order_relaxed);
    busy_since_trim = false;
    free_after_trim = mallinfo2().fordblks;
  }
}

}  // namespace attnserve::server
