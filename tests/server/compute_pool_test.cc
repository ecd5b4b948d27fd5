#include "server/compute_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace attnserve::server {
namespace {

TEST(ComputePoolTest, RunsEveryTaskOnce) {
  ComputePool pool(3);
  EXPECT_EQ(pool.threads(), 3);
  std::atomic<int> sum{0};
  for (int i = 1; i <= 100; ++i) {
    ASSERT_TRUE(pool.Submit([&sum, i](int) { sum += i; }).ok());
  }
  pool.Stop();
  EXPECT_EQ(sum.load(), 5050);
}

TEST(ComputePoolTest, SingleWorkerRunsInSubmissionOrder) {
  ComputePool pool(1);
  absl::Mutex mu;
  std::vector<int> order;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(pool.Submit([&, i](int) {
                      absl::MutexLock lock(&mu);
                      order.push_back(i);
                    })
                    .ok());
  }
  pool.Stop();
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i);
}

TEST(ComputePoolTest, LoneTaskGetsEveryThreadOthersGetOne) {
  ComputePool pool(4);
  absl::Notification alone_done;
  int alone_threads = 0;
  ASSERT_TRUE(pool.Submit([&](int threads) {
                    alone_threads = threads;
                    alone_done.Notify();
                  })
                  .ok());
  alone_done.WaitForNotification();
  EXPECT_EQ(alone_threads, 4);

  // Hold one task running; every task started meanwhile is told 1 thread.
  absl::Notification release;
  absl::Notification blocker_started;
  ASSERT_TRUE(pool.Submit([&](int) {
                    blocker_started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  blocker_started.WaitForNotification();
  std::atomic<int> seen_threads{0};
  absl::Notification second_done;
  ASSERT_TRUE(pool.Submit([&](int threads) {
                    seen_threads = threads;
                    second_done.Notify();
                  })
                  .ok());
  second_done.WaitForNotification();
  EXPECT_EQ(seen_threads.load(), 1);
  release.Notify();
  pool.Stop();
}

TEST(ComputePoolTest, StopFinishesQueuedWorkThenRefusesNewWork) {
  ComputePool pool(1);
  absl::Notification release;
  std::atomic<int> ran{0};
  ASSERT_TRUE(pool.Submit([&](int) {
                    release.WaitForNotification();
                    ++ran;
                  })
                  .ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(pool.Submit([&](int) { ++ran; }).ok());
  release.Notify();
  pool.Stop();
  EXPECT_EQ(ran.load(), 6);
  EXPECT_EQ(pool.queued(), 0u);
  EXPECT_EQ(pool.running(), 0);

  const absl::Status refused = pool.Submit([&](int) { ++ran; });
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ran.load(), 6);
  pool.Stop();  // Idempotent.
}

TEST(ComputePoolTest, FullQueueIsResourceExhaustedAndDropsTheTask) {
  ComputePool pool(1, /*max_queue=*/2);
  absl::Notification release;
  absl::Notification started;
  ASSERT_TRUE(pool.Submit([&](int) {
                    started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  started.WaitForNotification();
  ASSERT_TRUE(pool.Submit([](int) {}).ok());
  ASSERT_TRUE(pool.Submit([](int) {}).ok());
  EXPECT_EQ(pool.queued(), 2u);
  EXPECT_EQ(pool.running(), 1);

  auto owned = std::make_shared<int>(7);
  std::weak_ptr<int> watch = owned;
  const absl::Status full = pool.Submit([owned = std::move(owned)](int) {});
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("queue is full"), absl::string_view::npos);
  EXPECT_TRUE(watch.expired());  // The refused task was destroyed, not kept.
  release.Notify();
}

TEST(ComputePoolTest, MoveOnlyTasks) {
  ComputePool pool(2);
  auto value = std::make_unique<int>(41);
  std::atomic<int> seen{0};
  ASSERT_TRUE(pool.Submit([&seen, value = std::move(value)](int) { seen = *value + 1; }).ok());
  pool.Stop();
  EXPECT_EQ(seen.load(), 42);
}

TEST(ComputePoolTest, ThreadsBelowOneBecomeOne) {
  ComputePool pool(0);
  EXPECT_EQ(pool.threads(), 1);
}

}  // namespace
}  // namespace attnserve::server
