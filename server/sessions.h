// SessionRegistry: the decode sessions of one attnd (decode-sessions.md 3):
// their count (--max_sessions) and cache budget (--session_memory_bytes),
// reserved at open and given back when the stream ends; the idle timeout
// (--session_idle_timeout_s), on a thread of its own; refusal of new opens
// once the server drains; and the session metrics:
//   attnserve_sessions                     gauge, open sessions
//   attnserve_session_cache_bytes          gauge, bytes reserved by them
//   attnserve_session_steps_total{method}  steps served
//   attnserve_session_tokens_total{method} tokens those steps appended
//   attnserve_sessions_ended_total{reason} closed, cancelled, idle, error, shutdown
//   attnserve_decode_batch_size            histogram, decode steps per kernel pass
//                                          (above 1: steps of different sessions
//                                          batched, --decode_batching)
//
// The sessions themselves (kernels::DecodeSession) belong to their streams
// (server/decode_call.h); the registry holds only their reservations and
// idle watches.
//
// Thread-safety: every member function may be called from any thread. An
// idle callback runs on the registry's thread, never while End for its
// session runs on another thread (End waits for it), so a stream that
// calls End before deleting itself is never called back after.
#ifndef ATTNSERVE_SERVER_SESSIONS_H_
#define ATTNSERVE_SERVER_SESSIONS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/metrics.h"

namespace attnserve::server {

struct SessionOptions {
  // Open sessions at most (--max_sessions); >= 1.
  int64_t max_sessions = 1024;
  // Cache bytes of all open sessions at most (--session_memory_bytes); >= 1.
  int64_t memory_bytes = int64_t{1} << 30;
  // A session waiting this long for its next message is ended with
  // ABORTED (--session_idle_timeout_s); zero: never.
  absl::Duration idle_timeout = absl::Minutes(5);
  // Concurrent decode steps of different sessions (same method, at most 16
  // new tokens, no probs) run as one pass of the decode kernel
  // (--decode_batching; on by default: it won the 64-session measurement of
  // docs/PERFORMANCE.md); false: each step alone.
  bool batching = true;
};

// INVALID_ARGUMENT naming the flag when `options` cannot be used.
absl::Status ValidateSessionOptions(const SessionOptions& options);

// Why a session ended (the reason label).
enum class SessionEnd { kClosed, kCancelled, kIdle, kError, kShutdown };
inline constexpr int kNumSessionEnds = 5;

class SessionRegistry {
 public:
  // Registers the metrics on `registry` (which must outlive this) and starts
  // the idle thread when options.idle_timeout is set.
  SessionRegistry(const SessionOptions& options, prometheus::Registry& registry);
  // Stops the idle thread. Every session must have ended.
  ~SessionRegistry();
  SessionRegistry(const SessionRegistry&) = delete;
  SessionRegistry& operator=(const SessionRegistry&) = delete;

  // Reserves a session of `cache_bytes` and returns its id. `on_idle` is
  // called (on the registry's thread) once the session has been waiting
  // (SetWaiting) for the idle timeout. UNAVAILABLE once Refuse has been
  // called; RESOURCE_EXHAUSTED naming --max_sessions or
  // --session_memory_bytes (with the numbers) when over either.
  absl::StatusOr<int64_t> Open(int64_t cache_bytes, std::function<void()> on_idle);
  // Whether session `id` is waiting for its client's next message (idle
  // time counts only then, from the call that set it).
  void SetWaiting(int64_t id, bool waiting);
  // A step of `tokens` new tokens served by session `id` (method: a
  // MethodLabelIndex).
  void RecordStep(int method, int64_t tokens);
  // One pass of the decode kernel over `steps` steps (1: a step alone).
  void RecordDecodeBatch(int64_t steps);
  // Ends session `id`: its reservation is released and the reason counted.
  // Waits while its idle callback runs on another thread.
  void End(int64_t id, SessionEnd reason);

  // New opens are refused (UNAVAILABLE) from now on: the server drains.
  void Refuse();
  bool refusing() const;
  int64_t open_sessions() const;
  int64_t reserved_bytes() const;
  const SessionOptions& options() const { return options_; }

 private:
  struct Session {
    int64_t bytes = 0;
    bool waiting = false;
    absl::Time since;
    std::function<void()> on_idle;
  };

  void IdleLoop();

  const SessionOptions options_;
  prometheus::Gauge& sessions_gauge_;
  prometheus::Gauge& bytes_gauge_;
  prometheus::Family<prometheus::Counter>& steps_;
  prometheus::Family<prometheus::Counter>& tokens_;
  std::array<prometheus::Counter*, kNumSessionEnds> ended_{};
  prometheus::Histogram& batch_size_;

  mutable absl::Mutex mu_;
  // Signalled when an idle callback returns and when stopping.
  absl::CondVar cv_;
  std::map<int64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  bool refusing_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The session whose idle callback is running, and on which thread.
  int64_t firing_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread::id firing_thread_ ABSL_GUARDED_BY(mu_);
  std::array<prometheus::Counter*, kNumMethodLabels> steps_by_ ABSL_GUARDED_BY(mu_){};
  std::array<prometheus::Counter*, kNumMethodLabels> tokens_by_ ABSL_GUARDED_BY(mu_){};
  std::thread idle_thread_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SESSIONS_H_
