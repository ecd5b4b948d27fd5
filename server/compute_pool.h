// ComputePool: a fixed set of worker threads that run the kernels, so that
// gRPC's callback threads never block on compute.
//
// Tasks run in submission order (FIFO), each on one worker. A task is told
// how many threads its own parallel loops may use: all of the pool's threads
// when it is the only task running and none is queued, else 1, so that one
// large request uses the whole machine and many small ones do not
// oversubscribe it.
//
// Thread-safety: Submit, Stop and the accessors may be called from any
// thread. Stop must not be called from inside a task (it joins the workers).
#ifndef ATTNSERVE_SERVER_COMPUTE_POOL_H_
#define ATTNSERVE_SERVER_COMPUTE_POOL_H_

#include <cstddef>
#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace attnserve::server {

class ComputePool {
 public:
  // A unit of work; `threads` (>= 1) is how many threads it may use.
  using Task = absl::AnyInvocable<void(int threads) &&>;

  // Starts `threads` workers (must be >= 1). `max_queue` bounds the tasks
  // waiting for a worker (0: unbounded).
  explicit ComputePool(int threads, size_t max_queue = 0);
  // Stops the pool (see Stop).
  ~ComputePool();

  ComputePool(const ComputePool&) = delete;
  ComputePool& operator=(const ComputePool&) = delete;

  // Queues `task`. Errors: UNAVAILABLE once Stop has begun; RESOURCE_EXHAUSTED
  // when max_queue tasks are already waiting. On error the task is destroyed
  // without running.
  absl::Status Submit(Task task);

  // Refuses new tasks, lets the workers finish every task already queued,
  // then joins them. Idempotent; later calls return at once.
  void Stop();

  int threads() const { return num_threads_; }
  // Tasks waiting for a worker / being run now (a snapshot, for tests and stats).
  size_t queued() const;
  int running() const;

 private:
  void WorkerLoop();

  const int num_threads_;
  const size_t max_queue_;

  mutable absl::Mutex mu_;
  absl::CondVar work_available_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Serialises Stop so that a second caller waits for the first to join.
  absl::Mutex stop_mu_;
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(stop_mu_);
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_COMPUTE_POOL_H_
