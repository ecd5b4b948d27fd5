#include "server/sessions.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/attention.h"

namespace attnserve::server {
namespace {

absl::string_view EndName(SessionEnd reason) {
  switch (reason) {
    case SessionEnd::kClosed: return "closed";
    case SessionEnd::kCancelled: return "cancelled";
    case SessionEnd::kIdle: return "idle";
    case SessionEnd::kError: return "error";
    case SessionEnd::kShutdown: return "shutdown";
  }
  return "";
}

std::string MethodOfLabel(int method) {
  if (method <= 0 || method >= kNumMethodLabels) return "";
  return std::string(kernels::MethodName(kernels::kAllMethods[method - 1]));
}

}  // namespace

absl::Status ValidateSessionOptions(const SessionOptions& options) {
  if (options.max_sessions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_sessions: must be >= 1, got ", options.max_sessions));
  }
  if (options.memory_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--session_memory_bytes: must be >= 1, got ", options.memory_bytes));
  }
  if (options.idle_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--session_idle_timeout_s: must be >= 0 (0: never)");
  }
  return absl::OkStatus();
}

SessionRegistry::SessionRegistry(const SessionOptions& options, prometheus::Registry& registry)
    : options_(options),
      sessions_gauge_(prometheus::BuildGauge()
                          .Name("attnserve_sessions")
                          .Help("Decode sessions open (one per Decode stream after its open)")
                          .Register(registry)
                          .Add({})),
      bytes_gauge_(prometheus::BuildGauge()
                       .Name("attnserve_session_cache_bytes")
                       .Help("Key/value cache bytes reserved by the open decode sessions "
                             "(max_len * B * H_kv * (D + Dv) * 4 each)")
                       .Register(registry)
                       .Add({})),
      steps_(prometheus::BuildCounter()
                 .Name("attnserve_session_steps_total")
                 .Help("Decode steps served, by positional method")
                 .Register(registry)),
      tokens_(prometheus::BuildCounter()
                  .Name("attnserve_session_tokens_total")
                  .Help("Tokens appended to decode caches by steps, by positional method")
                  .Register(registry)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("attnserve_decode_batch_size")
                      .Help("Decode steps (of different sessions) per pass of the decode kernel; "
                            "1: a step alone")
                      .Register(registry)
                      .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64,
                                                                       128, 256, 512, 1024})) {
  auto& ended = prometheus::BuildCounter()
                    .Name("attnserve_sessions_ended_total")
                    .Help("Decode sessions ended, by reason (closed, cancelled, idle, error, "
                          "shutdown)")
                    .Register(registry);
  for (int reason = 0; reason < kNumSessionEnds; ++reason) {
    ended_[reason] =
        &ended.Add({{"reason", std::string(EndName(static_cast<SessionEnd>(reason)))}});
  }
  if (options_.idle_timeout > absl::ZeroDuration()) {
    idle_thread_ = std::thread([this] { IdleLoop(); });
  }
}

SessionRegistry::~SessionRegistry() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cv_.SignalAll();
  }
  if (idle_thread_.joinable()) idle_thread_.join();
}

absl::StatusOr<int64_t> SessionRegistry::Open(int64_t cache_bytes,
                                              std::function<void()> on_idle) {
  absl::MutexLock lock(&mu_);
  if (refusing_) {
    return absl::UnavailableError(
        "open: the server is draining (shutting down); open the session on another replica");
  }
  if (static_cast<int64_t>(sessions_.size()) >= options_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "open: --max_sessions=", options_.max_sessions, " sessions are open already"));
  }
  if (cache_bytes > options_.memory_bytes - reserved_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "open: the cache of max_len * B * H_kv * (D + Dv) * 4 = ", cache_bytes,
        " bytes does not fit --session_memory_bytes=", options_.memory_bytes, " (",
        options_.memory_bytes - reserved_, " bytes free); lower max_len or retry later"));
  }
  const int64_t id = next_id_++;
  Session& session = sessions_[id];
  session.bytes = cache_bytes;
  session.since = absl::Now();
  session.on_idle = std::move(on_idle);
  reserved_ += cache_bytes;
  sessions_gauge_.Set(static_cast<double>(sessions_.size()));
  bytes_gauge_.Set(static_cast<double>(reserved_));
  return id;
}

void SessionRegistry::SetWaiting(int64_t id, bool waiting) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  it->second.waiting = waiting;
  it->second.since = absl::Now();
}

void SessionRegistry::RecordDecodeBatch(int64_t steps) {
  batch_size_.Observe(static_cast<double>(steps));
}

void SessionRegistry::RecordStep(int method, int64_t tokens) {
  if (method < 0 || method >= kNumMethodLabels) method = 0;
  prometheus::Counter* steps = nullptr;
  prometheus::Counter* added = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (steps_by_[method] == nullptr) {
      steps_by_[method] = &steps_.Add({{"method", MethodOfLabel(method)}});
      tokens_by_[method] = &tokens_.Add({{"method", MethodOfLabel(method)}});
    }
    steps = steps_by_[method];
    added = tokens_by_[method];
  }
  steps->Increment();
  added->Increment(static_cast<double>(tokens));
}

void SessionRegistry::End(int64_t id, SessionEnd reason) {
  absl::MutexLock lock(&mu_);
  // Its idle callback may be running: the caller is about to go away.
  while (firing_ == id && firing_thread_ != std::this_thread::get_id()) cv_.Wait(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  reserved_ -= it->second.bytes;
  sessions_.erase(it);
  sessions_gauge_.Set(static_cast<double>(sessions_.size()));
  bytes_gauge_.Set(static_cast<double>(reserved_));
  ended_[static_cast<int>(reason)]->Increment();
}

void SessionRegistry::Refuse() {
  absl::MutexLock lock(&mu_);
  refusing_ = true;
}

bool SessionRegistry::refusing() const {
  absl::MutexLock lock(&mu_);
  return refusing_;
}

int64_t SessionRegistry::open_sessions() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

int64_t SessionRegistry::reserved_bytes() const {
  absl::MutexLock lock(&mu_);
  return reserved_;
}

void SessionRegistry::IdleLoop() {
  // Checked this often: a tenth of the timeout, within 10 ms .. 1 s.
  const absl::Duration tick =
      std::clamp(options_.idle_timeout / 10, absl::Milliseconds(10), absl::Seconds(1));
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = absl::Now();
    auto expired = std::find_if(sessions_.begin(), sessions_.end(), [&](const auto& entry) {
      return entry.second.waiting && now - entry.second.since >= options_.idle_timeout;
    });
    if (expired == sessions_.end()) {
      cv_.WaitWithTimeout(&mu_, tick);
      continue;
    }
    expired->second.waiting = false;
    std::function<void()> on_idle = expired->second.on_idle;
    firing_ = expired->first;
    firing_thread_ = std::this_thread::get_id();
    mu_.Unlock();
    on_idle();
    mu_.Lock();
    firing_ = 0;
    cv_.SignalAll();
  }
}

}  // namespace attnserve::server
