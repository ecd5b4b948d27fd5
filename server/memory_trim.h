// IdleTrimmer: gives the heap's free memory back to the kernel once attnd is
// quiet after a burst.
//
// main.cc keeps freed memory in glibc's heap (M_TRIM_THRESHOLD of 1 GiB, an
// mmap threshold of 256 MiB): batches allocate and free megabyte tensors at
// a high rate, and returning each to the kernel cost a fifth of the server's
// CPU under load in page faults. But then RSS never came down after a burst
// (0.4-1.6 GB; issue 12, finding 8), hiding real use from memory alerts and
// inviting an eviction. So the thresholds stay (no cost under load) and this
// thread calls malloc_trim(0), which also releases free pages in the middle
// of every arena, once nothing has been in flight for two consecutive looks
// (`period` apart) after activity, and again while quiet whenever 16 MiB
// more of the heap have been freed since the last trim.
//
// Thread-safety: the constructor starts the thread, the destructor stops and
// joins it; trims() may be called from any thread.
#ifndef ATTNSERVE_SERVER_MEMORY_TRIM_H_
#define ATTNSERVE_SERVER_MEMORY_TRIM_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace attnserve::server {

class IdleTrimmer {
 public:
  // `in_flight` returns the requests in flight now (attnserve_inflight_requests:
  // queued, computing or waiting for their client to read the response);
  // called on the trimmer's thread every `period`.
  explicit IdleTrimmer(std::function<double()> in_flight,
                       absl::Duration period = absl::Seconds(1));
  ~IdleTrimmer();

  IdleTrimmer(const IdleTrimmer&) = delete;
  IdleTrimmer& operator=(const IdleTrimmer&) = delete;

  // malloc_trim calls so far.
  int64_t trims() const { return trims_.load(std::memory_order_relaxed); }

 private:
  void Loop();

  const std::function<double()> in_flight_;
  const absl::Duration period_;
  std::atomic<int64_t> trims_{0};
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_MEMORY_TRIM_H_
