// PendingResponses: the bytes of serialized responses handed to gRPC but not
// yet taken by their clients. A client that never reads its response keeps
// it in the server's memory (HTTP/2 flow control stops the send) for as long
// as the call lives; without a bound, 16 such clients of 64 MiB responses
// pinned 1.7 GB (issue 12, finding 5). A response is reserved here before it
// is serialized and released once gRPC reports it sent (or the call gone);
// one that does not fit is answered RESOURCE_EXHAUSTED instead.
//
// Small responses may go past the budget by a reserve, so that clients with
// small calls are still served while large responses wait for slow readers.
//
// Thread-safety: every member may be called from any thread (atomics).
#ifndef ATTNSERVE_SERVER_PENDING_RESPONSES_H_
#define ATTNSERVE_SERVER_PENDING_RESPONSES_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"

namespace attnserve::server {

class PendingResponses {
 public:
  // Responses up to this size may use the reserve.
  static constexpr int64_t kSmallResponseBytes = int64_t{1} << 20;
  // How far small responses may go past the budget.
  static constexpr int64_t kSmallReserveBytes = int64_t{64} << 20;

  // `max_bytes` >= 1: the budget (--max_pending_response_bytes).
  explicit PendingResponses(int64_t max_bytes) : max_bytes_(max_bytes) {}

  PendingResponses(const PendingResponses&) = delete;
  PendingResponses& operator=(const PendingResponses&) = delete;

  // Reserves `bytes` for a response about to be sent; OK, or
  // RESOURCE_EXHAUSTED (saying how much waits for slow clients) when the
  // pending responses would then exceed the budget (plus the reserve for a
  // small one). Pair every OK with one Release(bytes).
  absl::Status Reserve(int64_t bytes);
  void Release(int64_t bytes) { held_.fetch_sub(bytes, std::memory_order_relaxed); }

  // Bytes reserved now (a snapshot).
  int64_t held() const { return held_.load(std::memory_order_relaxed); }
  int64_t max_bytes() const { return max_bytes_; }

 private:
  const int64_t max_bytes_;
  std::atomic<int64_t> held_{0};
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_PENDING_RESPONSES_H_
