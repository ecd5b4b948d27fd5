#include "server/pending_responses.h"

#include "absl/strings/str_cat.h"

namespace attnserve::server {

absl::Status PendingResponses::Reserve(int64_t bytes) {
  const int64_t limit =
      max_bytes_ + (bytes <= kSmallResponseBytes ? kSmallReserveBytes : int64_t{0});
  int64_t held = held_.load(std::memory_order_relaxed);
  // A response larger than the whole budget is still sent when nothing else
  // is pending (the budget may be set below --max_message_bytes).
  while (held == 0 || held + bytes <= limit) {
    if (held_.compare_exchange_weak(held, held + bytes, std::memory_order_relaxed)) {
      return absl::OkStatus();
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "server: ", held, " bytes of responses are waiting for their clients to read them; this ",
      bytes, "-byte response would pass --max_pending_response_bytes=", max_bytes_,
      " (it was computed and dropped); retry with backoff"));
}

}  // namespace attnserve::server
