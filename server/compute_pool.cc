#include "server/compute_pool.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace attnserve::server {

ComputePool::ComputePool(int threads, size_t max_queue)
    : num_threads_(threads < 1 ? 1 : threads), max_queue_(max_queue) {
  absl::MutexLock lock(&stop_mu_);
  workers_.reserve(static_cast<size_t>(num_threads_));
  for (int i = 0; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ComputePool::~ComputePool() { Stop(); }

absl::Status ComputePool::Submit(Task task) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return absl::UnavailableError("server: shutting down; not accepting new work");
    }
    if (max_queue_ != 0 && queue_.size() >= max_queue_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("server: compute queue is full (", max_queue_, " requests waiting)"));
    }
    queue_.push_back(std::move(task));
  }
  work_available_.Signal();
  return absl::OkStatus();
}

void ComputePool::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  work_available_.SignalAll();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

size_t ComputePool::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

int ComputePool::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

void ComputePool::WorkerLoop() {
  while (true) {
    Task task;
    int task_threads = 1;
    {
      absl::MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) work_available_.Wait(&mu_);
      // Stop drains the queue: only an empty queue ends a worker.
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
      // Decided at start and not revised: a task that began alone keeps its
      // threads even if others arrive meanwhile (they run with 1 each).
      if (running_ == 1 && queue_.empty()) task_threads = num_threads_;
    }
    std::move(task)(task_threads);
    task = nullptr;  // Destroy captures outside the lock, before the next wait.
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

}  // namespace attnserve::server
