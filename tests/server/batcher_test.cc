// Batcher with in-memory requests on the real kernels: batches form by
// Triton's rules, each request gets exactly its own slice, and dropped
// requests never reach a kernel (read from the real metrics).
#include "server/batcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/types/span.h"
#include "server/metrics.h"
#include "tests/testing/sanitizers.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// The value of the counter or gauge `name` with `labels` (or the histogram's
// sample count or sum), 0 when absent.
double Value(prometheus::Registry& registry, const std::string& name,
             const std::map<std::string, std::string>& labels = {}, bool sum = false) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& label : metric.label) have[label.name] = label.value;
      if (have != labels) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter: return metric.counter.value;
        case prometheus::MetricType::Gauge: return metric.gauge.value;
        case prometheus::MetricType::Histogram:
          return sum ? metric.histogram.sample_sum
                     : static_cast<double>(metric.histogram.sample_count);
        default: return 0;
      }
    }
  }
  return 0;
}

// `none` attention on q = k = v: B items of H=2, S=3, D=4 whose values start
// at `seed`, so every request's output is distinct.
kernels::AttendArgs NoneArgs(int64_t b, float seed) {
  kernels::AttendArgs args;
  args.method = kernels::MethodKind::kNone;
  std::vector<float> values(static_cast<size_t>(b * 24));
  for (size_t i = 0; i < values.size(); ++i) values[i] = seed + 0.01f * static_cast<float>(i % 7);
  for (const char* name : {"q", "k", "v"})
    args.inputs[name] = kernels::Tensor({b, 2, 3, 4}, values);
  return args;
}

class FakeRequest final : public BatchRequest {
 public:
  // `poisoned`: v holds a NaN, which AppendBatched reports as the server's
  // conversion does (Prepare alone reports it too).
  FakeRequest(int64_t b, float seed, bool poisoned = false)
      : b_(b), seed_(seed), poisoned_(poisoned) {}

  absl::Status Prepare(int64_t /*max_elements*/, bool defer_batched) override {
    args_ = NoneArgs(b_, seed_);
    if (poisoned_) args_.inputs["v"].values()[5] = std::numeric_limits<float>::quiet_NaN();
    batched_.clear();
    if (defer_batched) {
      for (const char* name : {"q", "k", "v"}) {
        batched_[name] = std::move(args_.inputs[name]);
        args_.inputs.erase(name);
      }
      return absl::OkStatus();
    }
    return poisoned_ ? absl::InvalidArgumentError("v.data[5]: must be finite, got nan")
                     : absl::OkStatus();
  }
  absl::Status Compute(const kernels::ComputeOptions& options) override {
    absl::StatusOr<kernels::AttendResult> result = kernels::Attend(std::move(args_), options);
    if (!result.ok()) return result.status();
    out_ = std::move(result->out);
    return absl::OkStatus();
  }
  kernels::AttendArgs TakeAttendArgs() override { return std::move(args_); }
  const std::vector<int64_t>* BatchedShape(absl::string_view name) const override {
    auto it = batched_.find(name);
    return it == batched_.end() ? nullptr : &it->second.shape();
  }
  absl::Status AppendBatched(absl::string_view name, std::vector<float>& out) const override {
    const absl::Span<const float> values = batched_.find(name)->second.values();
    out.insert(out.end(), values.begin(), values.end());
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return absl::InvalidArgumentError(absl::StrCat(name, ".data[", i, "]: must be finite"));
      }
    }
    return absl::OkStatus();
  }
  // NoneArgs has no shared inputs.
  absl::Status DecodeShared(kernels::TensorMap& /*inputs*/) const override {
    return absl::OkStatus();
  }
  void Fill(const kernels::AttendResult& batch, int64_t begin, int64_t count) override {
    const int64_t row = batch.out.size() / batch.out.dim(0);
    std::vector<int64_t> shape = batch.out.shape();
    shape[0] = count;
    out_ = kernels::Tensor(std::move(shape),
                           std::vector<float>(batch.out.values().begin() + begin * row,
                                              batch.out.values().begin() + (begin + count) * row));
  }
  void Done(const absl::Status& status) override {
    status_ = status;
    done_.Notify();
  }

  Batcher::Traits Traits(absl::Time deadline = absl::InfiniteFuture()) const {
    return Batcher::Traits{"none:2x3x4", b_, MethodLabelIndex(kernels::MethodKind::kNone),
                           deadline};
  }
  bool WaitDone(absl::Duration timeout = absl::Seconds(10)) {
    return done_.WaitForNotificationWithTimeout(timeout);
  }
  const absl::Status& status() const { return status_; }
  const kernels::Tensor& out() const { return out_; }
  // What this request alone computes.
  std::vector<float> Expected() const {
    return kernels::Attend(NoneArgs(b_, seed_), kernels::ComputeOptions())->out.TakeValues();
  }

 private:
  const int64_t b_;
  const float seed_;
  const bool poisoned_;
  kernels::AttendArgs args_;
  kernels::TensorMap batched_;  // the deferred inputs of a merged call
  kernels::Tensor out_;
  absl::Status status_;
  absl::Notification done_;
};

class BatcherTest : public ::testing::Test {
 public:
  std::unique_ptr<Batcher> Make(BatcherOptions options) {
    return std::make_unique<Batcher>(options, &metrics_);
  }
  double Batches() { return Value(registry_, "attnserve_batches_total", {{"method", "none"}}); }
  double Reached() {
    return Value(registry_, "attnserve_batched_requests_total", {{"method", "none"}});
  }
  double Dropped(const std::string& reason) {
    return Value(registry_, "attnserve_dropped_requests_total", {{"reason", reason}});
  }

  prometheus::Registry registry_;
  Metrics metrics_{registry_, "test"};
};

// Requests of B = 1, 2, 3 (in the order of `items`) fill a batch of 6
// under `chunk_bytes`: each gets exactly its own slice, and the metrics
// show one batch of all of them.
void ExpectOneFullBatch(BatcherTest& test, size_t chunk_bytes, std::vector<int64_t> items) {
  BatcherOptions options;
  options.max_batch_size = 6;
  options.max_queue_delay = absl::Seconds(30);  // only a full batch may run
  options.merge_chunk_bytes = chunk_bytes;
  auto batcher = test.Make(options);
  std::vector<std::unique_ptr<FakeRequest>> requests;
  for (int64_t b : items) {
    requests.push_back(std::make_unique<FakeRequest>(b, 0.5f * static_cast<float>(b)));
    ASSERT_TRUE(batcher->Enqueue(requests.back().get(), requests.back()->Traits()).ok());
  }
  for (auto& request : requests) {
    ASSERT_TRUE(request->WaitDone());
    ASSERT_TRUE(request->status().ok()) << request->status();
    EXPECT_THAT(request->out().values(), ElementsAreArray(request->Expected()));
  }
  EXPECT_EQ(test.Batches(), 1);
  EXPECT_EQ(test.Reached(), 3);
  EXPECT_EQ(Value(test.registry_, "attnserve_batch_size", {}, /*sum=*/true), 6);
}

TEST_F(BatcherTest, FullBatchRunsAsOneCallAndEachGetsItsOwnSlice) {
  ExpectOneFullBatch(*this, /*chunk_bytes=*/0, {1, 2, 3});
}

// A merged batch runs as kernel calls over cache-sized chunks: with a chunk
// of one request each, the same holds.
TEST_F(BatcherTest, ChunkedBatchGivesEachItsOwnSliceAndCountsOneBatch) {
  ExpectOneFullBatch(*this, /*chunk_bytes=*/1, {2, 1, 3});
}

// Each request's batched inputs are written straight into the merged ones;
// one whose values are not finite is answered alone and its rows taken out
// again, and the others still run as one call with their own rows.
TEST_F(BatcherTest, NonFiniteRequestFailsAloneAndTheRestRunMerged) {
  BatcherOptions options;
  options.max_batch_size = 4;
  options.max_queue_delay = absl::Seconds(30);
  auto batcher = Make(options);
  FakeRequest a(1, 0.1f), bad(2, 0.2f, /*poisoned=*/true), c(1, 0.3f);
  for (FakeRequest* request : {&a, &bad, &c}) {
    ASSERT_TRUE(batcher->Enqueue(request, request->Traits()).ok());
  }
  ASSERT_TRUE(a.WaitDone() && bad.WaitDone() && c.WaitDone());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("v.data[5]"));
  for (FakeRequest* request : {&a, &c}) {
    ASSERT_TRUE(request->status().ok()) << request->status();
    EXPECT_THAT(request->out().values(), ElementsAreArray(request->Expected()));
  }
  EXPECT_EQ(Batches(), 1);
  EXPECT_EQ(Reached(), 2);
  EXPECT_EQ(Value(registry_, "attnserve_batch_size", {}, /*sum=*/true), 2);
}

TEST_F(BatcherTest, PreferredSizeCutsTheBatchAndStopRunsTheRest) {
  BatcherOptions options;
  options.max_batch_size = 8;
  options.preferred_batch_sizes = {2};
  options.max_queue_delay = absl::Seconds(30);
  auto batcher = Make(options);
  FakeRequest a(1, 0.1f), b(1, 0.2f), c(1, 0.3f);
  ASSERT_TRUE(batcher->Enqueue(&a, a.Traits()).ok());
  ASSERT_TRUE(batcher->Enqueue(&b, b.Traits()).ok());
  ASSERT_TRUE(a.WaitDone());
  ASSERT_TRUE(b.WaitDone());
  ASSERT_TRUE(batcher->Enqueue(&c, c.Traits()).ok());
  EXPECT_FALSE(c.WaitDone(absl::Milliseconds(100)));  // 1 is neither full nor preferred
  batcher->Stop();                                    // stopping runs what waits
  ASSERT_TRUE(c.WaitDone());
  EXPECT_TRUE(c.status().ok());
  EXPECT_EQ(Batches(), 2);
  EXPECT_EQ(Value(registry_, "attnserve_batch_size", {}, /*sum=*/true), 3);
  EXPECT_EQ(batcher->Enqueue(&c, c.Traits()).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Dropped("shutdown"), 1);
}

TEST_F(BatcherTest, FullQueueIsResourceExhausted) {
  BatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_size = 2;
  options.max_queue_delay = absl::Seconds(30);
  auto batcher = Make(options);
  FakeRequest a(1, 0.1f), b(1, 0.2f), c(1, 0.3f);
  ASSERT_TRUE(batcher->Enqueue(&a, a.Traits()).ok());
  ASSERT_TRUE(batcher->Enqueue(&b, b.Traits()).ok());
  const absl::Status full = batcher->Enqueue(&c, c.Traits());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), HasSubstr("queue is full"));
  EXPECT_THAT(std::string(full.message()), HasSubstr("--max_queue_size"));
  EXPECT_EQ(Dropped("queue_full"), 1);
  EXPECT_EQ(Value(registry_, "attnserve_queue_depth"), 2);
  EXPECT_EQ(Value(registry_, "attnserve_queue_capacity"), 2);  // what alerts compare with
  batcher->Stop();
  EXPECT_TRUE(a.WaitDone() && b.WaitDone());
}

TEST_F(BatcherTest, CancelledAndExpiredRequestsNeverReachAKernel) {
  BatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Seconds(30);
  auto batcher = Make(options);
  FakeRequest cancelled(1, 0.1f), expired(1, 0.2f);
  ASSERT_TRUE(batcher->Enqueue(&cancelled, cancelled.Traits()).ok());
  ASSERT_TRUE(
      batcher->Enqueue(&expired, expired.Traits(absl::Now() + absl::Milliseconds(50))).ok());
  batcher->Cancel(&cancelled);
  ASSERT_TRUE(cancelled.WaitDone());
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(expired.WaitDone());
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kDeadlineExceeded);
  batcher->Cancel(&cancelled);  // already answered: nothing happens
  batcher->Stop();
  EXPECT_EQ(Dropped("cancelled"), 1);
  EXPECT_EQ(Dropped("deadline"), 1);
  EXPECT_EQ(Batches(), 0);
  EXPECT_EQ(Reached(), 0);
}

// A request that is never merged along B: the merge hooks do nothing.
class UnmergedRequest : public BatchRequest {
 public:
  kernels::AttendArgs TakeAttendArgs() override { return {}; }
  const std::vector<int64_t>* BatchedShape(absl::string_view) const override { return nullptr; }
  absl::Status AppendBatched(absl::string_view, std::vector<float>&) const override {
    return absl::OkStatus();
  }
  absl::Status DecodeShared(kernels::TensorMap&) const override { return absl::OkStatus(); }
  void Fill(const kernels::AttendResult&, int64_t, int64_t) override {}
};

// A request that computes alone stops between rows once cancelled instead
// of finishing a long kernel call nobody wants.
TEST_F(BatcherTest, CancelStopsARunningKernel) {
  class LongRequest final : public UnmergedRequest {
   public:
    absl::Status Prepare(int64_t /*max_elements*/, bool /*defer_batched*/) override {
      args_.method = kernels::MethodKind::kNone;
      // ~4 GFLOP: seconds on one thread, far longer than the test waits.
      std::vector<float> values(static_cast<size_t>(8 * 2048 * 64), 0.01f);
      for (const char* name : {"q", "k", "v"}) {
        args_.inputs[name] = kernels::Tensor({1, 8, 2048, 64}, values);
      }
      started_.Notify();
      return absl::OkStatus();
    }
    absl::Status Compute(const kernels::ComputeOptions& options) override {
      return kernels::Attend(std::move(args_), options).status();
    }
    kernels::AttendArgs TakeAttendArgs() override { return std::move(args_); }
    void Done(const absl::Status& status) override {
      status_ = status;
      done_.Notify();
    }
    kernels::AttendArgs args_;
    absl::Status status_;
    absl::Notification started_, done_;
  };
  auto batcher = Make(BatcherOptions());
  LongRequest request;
  ASSERT_TRUE(batcher->Enqueue(&request, Batcher::Traits{"", 1, 1, absl::InfiniteFuture()}).ok());
  ASSERT_TRUE(request.started_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(20));  // into the kernel
  const absl::Time cancelled_at = absl::Now();
  batcher->Cancel(&request);
  ASSERT_TRUE(request.done_.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(request.status_.code(), absl::StatusCode::kCancelled) << request.status_;
  // Within a few rows (a sanitizer's instrumented rows are slower), far
  // short of the whole kernel's seconds.
  EXPECT_LT(absl::Now() - cancelled_at,
            absl::Seconds(1) * attnserve::testing::kSanitizerTimeFactor);
}

TEST_F(BatcherTest, DifferentKeysAndLargeRequestsRunApart) {
  BatcherOptions options;
  options.max_batch_size = 4;
  auto batcher = Make(options);
  FakeRequest big(4, 0.1f), other(1, 0.2f);
  Batcher::Traits other_traits = other.Traits();
  other_traits.key = "another";
  ASSERT_TRUE(batcher->Enqueue(&big, big.Traits()).ok());
  ASSERT_TRUE(batcher->Enqueue(&other, other_traits).ok());
  ASSERT_TRUE(big.WaitDone() && other.WaitDone());
  EXPECT_THAT(big.out().values(), ElementsAreArray(big.Expected()));
  EXPECT_THAT(other.out().values(), ElementsAreArray(other.Expected()));
  EXPECT_EQ(Batches(), 2);
}

// A request of a BatchGroup (what a Decode step is): no kernel, its answer
// is its seed doubled, or an error chosen by the test.
class GroupedRequest final : public UnmergedRequest {
 public:
  enum class Fault { kNone, kPrepare, kCompute };
  explicit GroupedRequest(float seed, Fault fault = Fault::kNone) : seed_(seed), fault_(fault) {}

  absl::Status Prepare(int64_t /*max_elements*/, bool defer_batched) override {
    EXPECT_FALSE(defer_batched) << "a group's request is prepared in full";
    return fault_ == Fault::kPrepare ? absl::InvalidArgumentError("q: bad shape")
                                     : absl::OkStatus();
  }
  // Alone.
  absl::Status Compute(const kernels::ComputeOptions& /*options*/) override {
    alone_ = true;
    return Answer();
  }
  absl::Status Answer() {
    if (fault_ == Fault::kCompute) return absl::InvalidArgumentError("q, k: scores overflow");
    out_ = 2 * seed_;
    return absl::OkStatus();
  }
  kernels::AttendArgs TakeAttendArgs() override {
    ADD_FAILURE() << "a group's request is never merged along B";
    return {};
  }
  void Done(const absl::Status& status) override {
    status_ = status;
    done_.Notify();
  }

  bool WaitDone() { return done_.WaitForNotificationWithTimeout(absl::Seconds(10)); }
  float seed_;
  Fault fault_;
  bool alone_ = false;
  float out_ = 0;
  absl::Status status_;
  absl::Notification done_;
};

// Records each batch; `vanishing` is cancelled (its client gone) while the
// batch computes.
class TestGroup final : public BatchGroup {
 public:
  std::vector<absl::Status> ComputeTogether(absl::Span<BatchRequest* const> requests,
                                            absl::Span<const std::atomic<bool>* const> cancelled,
                                            const kernels::ComputeOptions& options) override {
    EXPECT_EQ(requests.size(), cancelled.size());
    EXPECT_NE(options.cancelled, nullptr);
    std::vector<absl::Status> statuses;
    std::vector<float> seeds;
    for (size_t i = 0; i < requests.size(); ++i) {
      auto* request = static_cast<GroupedRequest*>(requests[i]);
      seeds.push_back(request->seed_);
      if (request == vanishing) {
        batcher->Cancel(request);
        // What the kernels poll for this request alone.
        saw_cancelled = cancelled[i]->load();
      }
      statuses.push_back(request->Answer());
    }
    batches.push_back(seeds);
    return statuses;
  }
  Batcher* batcher = nullptr;
  GroupedRequest* vanishing = nullptr;
  bool saw_cancelled = false;
  std::vector<std::vector<float>> batches;
};

// Requests queued behind a running one form one batch of their group at
// once (no queue delay for a group), each with its own answer: a bad one is
// answered from Prepare and left out, one failing in the group gets its own
// error, one cancelled mid-batch gets CANCELLED, the rest their results.
TEST_F(BatcherTest, AGroupRunsWhatIsQueuedTogetherEachWithItsOwnAnswer) {
  BatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Seconds(30);  // for merged calls; a group never waits
  options.batch_threads = 1;
  auto batcher = Make(options);
  TestGroup group;
  group.batcher = batcher.get();
  absl::Notification release;
  GroupedRequest good(2), bad(3, GroupedRequest::Fault::kPrepare),
      failing(4, GroupedRequest::Fault::kCompute), vanishing(5), last(6);
  group.vanishing = &vanishing;
  // The single batch thread is busy with this one while the others queue.
  class Holder final : public UnmergedRequest {
   public:
    explicit Holder(absl::Notification* release) : release_(release) {}
    absl::Status Prepare(int64_t, bool) override { return absl::OkStatus(); }
    absl::Status Compute(const kernels::ComputeOptions&) override {
      started_.Notify();
      release_->WaitForNotification();
      return absl::OkStatus();
    }
    void Done(const absl::Status&) override { done_.Notify(); }
    absl::Notification* release_;
    absl::Notification started_, done_;
  };
  Holder holder(&release);
  const int none = MethodLabelIndex(kernels::MethodKind::kNone);
  ASSERT_TRUE(batcher->Enqueue(&holder, Batcher::Traits{"", 1, none}).ok());
  ASSERT_TRUE(holder.started_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  Batcher::Traits traits{"decode step/none", 1, none};
  traits.group = &group;
  for (GroupedRequest* request : {&good, &bad, &failing, &vanishing, &last}) {
    ASSERT_TRUE(batcher->Enqueue(request, traits).ok());
  }
  EXPECT_EQ(batcher->queued(), 5);
  release.Notify();
  for (GroupedRequest* request : {&good, &bad, &failing, &vanishing, &last}) {
    ASSERT_TRUE(request->WaitDone());
    EXPECT_FALSE(request->alone_);
  }
  ASSERT_TRUE(holder.done_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_EQ(group.batches.size(), 1u);
  EXPECT_THAT(group.batches[0], ElementsAreArray({2.0f, 4.0f, 5.0f, 6.0f}));
  EXPECT_TRUE(good.status_.ok()) << good.status_;
  EXPECT_EQ(good.out_, 4);
  EXPECT_TRUE(last.status_.ok()) << last.status_;
  EXPECT_EQ(last.out_, 12);
  EXPECT_EQ(bad.status_.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status_.message()), HasSubstr("q: bad shape"));
  EXPECT_EQ(failing.status_.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(failing.status_.message()), HasSubstr("overflow"));
  EXPECT_TRUE(group.saw_cancelled);
  EXPECT_EQ(vanishing.status_.code(), absl::StatusCode::kCancelled) << vanishing.status_;
  // The holder's batch and the group's (of the four that reached it).
  EXPECT_EQ(Batches(), 2);
  EXPECT_EQ(Reached(), 5);

  // A group request queued alone runs alone, through Compute.
  GroupedRequest single(7);
  ASSERT_TRUE(batcher->Enqueue(&single, traits).ok());
  ASSERT_TRUE(single.WaitDone());
  EXPECT_TRUE(single.alone_);
  EXPECT_TRUE(single.status_.ok());
  EXPECT_EQ(single.out_, 14);
  EXPECT_EQ(group.batches.size(), 1u);
}

TEST(BatcherOptionsTest, InvalidOptionsNameTheFlag) {
  BatcherOptions options;
  options.max_batch_size = 0;
  EXPECT_THAT(std::string(ValidateBatcherOptions(options).message()),
              HasSubstr("--max_batch_size"));
  options = BatcherOptions();
  options.preferred_batch_sizes = {4, 2};
  EXPECT_THAT(std::string(ValidateBatcherOptions(options).message()),
              HasSubstr("--preferred_batch_sizes"));
  options.preferred_batch_sizes = {2, 128};
  EXPECT_FALSE(ValidateBatcherOptions(options).ok());
  options = BatcherOptions();
  options.batch_threads = 0;
  EXPECT_THAT(std::string(ValidateBatcherOptions(options).message()), HasSubstr("--batch_threads"));
  EXPECT_TRUE(ValidateBatcherOptions(BatcherOptions()).ok());
}

}  // namespace
}  // namespace attnserve::server
