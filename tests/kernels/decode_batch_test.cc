// DecodeSession::StepBatch (cross-session batching of decode steps): steps
// of sessions of every method, with GQA, windows, softcap and different
// cached lengths, run as one pass of the decode kernel give the outputs of
// the same steps run alone by Step on twin sessions, bit for bit with one
// thread (the kernel's arithmetic order is the same) and within float
// rounding with two (the batch may split a long cache where a step alone
// would not); a bad, an overflowing or a cancelled step among good ones gets
// its own error, caches nothing, and leaves the others exact.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/decode.h"
#include "tests/kernels/random_args.h"

namespace attnserve::testing {
namespace {

using kernels::AttendResult;
using kernels::DecodeOptions;
using kernels::DecodeSession;
using kernels::MethodKind;
using kernels::SessionStep;
using kernels::Tensor;
using kernels::TensorMap;

// One session of the batch: its method and shape, and how many tokens it
// caches before the batched steps.
struct Spec {
  MethodKind method = MethodKind::kNone;
  int64_t heads = 4, kv_heads = 4, d = 8, dv = 8, prefill = 20;
  std::optional<int64_t> window;
  std::optional<double> softcap;
};

constexpr int64_t kDModel = 12, kMaxLen = 1400;

bool Absolute(MethodKind method) {
  return method == MethodKind::kSinusoidal || method == MethodKind::kLearned;
}

DecodeOptions OptionsOf(const Spec& s, uint32_t seed) {
  std::mt19937 rng(seed);
  DecodeOptions o;
  o.method = s.method;
  o.batch = 1;
  o.num_heads = s.heads;
  o.num_kv_heads = s.kv_heads;
  o.head_dim = s.d;
  o.value_dim = s.dv;
  o.max_len = kMaxLen;
  o.window = s.window;
  o.softcap = s.softcap;
  switch (s.method) {
    case MethodKind::kRope:
      o.params.rope_layout = kernels::RopeLayout::kHalf;
      break;
    case MethodKind::kShaw:
      o.params.max_relative_position = 3;
      o.tensors["rel_k"] = RandomTensor({7, s.d}, rng, -0.3, 0.3);
      o.tensors["rel_v"] = RandomTensor({7, s.dv}, rng, -0.3, 0.3);
      break;
    case MethodKind::kTransformerXL:
      o.params.d_rel = 4;
      o.tensors["pos_bias_u"] = RandomTensor({s.heads, s.d}, rng, -0.3, 0.3);
      o.tensors["pos_bias_v"] = RandomTensor({s.heads, s.d}, rng, -0.3, 0.3);
      o.tensors["w_r"] = RandomTensor({s.heads, 4, s.d}, rng, -0.3, 0.3);
      break;
    case MethodKind::kDaTransformer:
      o.tensors["dist_w"] = RandomTensor({s.heads}, rng, -0.5, 0.5);
      o.tensors["dist_v"] = RandomTensor({s.heads}, rng, -0.5, 0.5);
      break;
    case MethodKind::kLearned:
      o.tensors["table"] = RandomTensor({kMaxLen, kDModel}, rng, -0.5, 0.5);
      break;
    default:
      break;
  }
  if (Absolute(s.method)) {
    const double w = 1 / std::sqrt(static_cast<double>(kDModel));
    o.tensors["w_q"] = RandomTensor({kDModel, s.heads * s.d}, rng, -w, w);
    o.tensors["w_k"] = RandomTensor({kDModel, s.kv_heads * s.d}, rng, -w, w);
    o.tensors["w_v"] = RandomTensor({kDModel, s.kv_heads * s.dv}, rng, -w, w);
  }
  return o;
}

std::unique_ptr<DecodeSession> OpenSession(const Spec& s, uint32_t seed) {
  DecodeOptions o = OptionsOf(s, seed);
  const absl::StatusOr<int64_t> bytes = kernels::ValidateDecodeOpen(o);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<std::unique_ptr<DecodeSession>> session = DecodeSession::Open(std::move(o));
  EXPECT_TRUE(session.ok()) << session.status();
  return *std::move(session);
}

// A step of n tokens for `s`, values uniform in [-1, 1).
TensorMap StepInputs(const Spec& s, int64_t n, std::mt19937& rng) {
  const double magnitude = 1;
  TensorMap inputs;
  if (Absolute(s.method)) {
    inputs["x"] = RandomTensor({1, n, kDModel}, rng, -magnitude, magnitude);
  } else {
    inputs["q"] = RandomTensor({1, s.heads, n, s.d}, rng, -magnitude, magnitude);
    inputs["k"] = RandomTensor({1, s.kv_heads, n, s.d}, rng, -magnitude, magnitude);
    inputs["v"] = RandomTensor({1, s.kv_heads, n, s.dv}, rng, -magnitude, magnitude);
  }
  return inputs;
}

kernels::ComputeOptions Threads(int threads) {
  kernels::ComputeOptions options;
  options.threads = threads;
  return options;
}

// Every method, GQA and MQA, windows, softcap, D != Dv, and cached lengths
// from a few tokens to above the kernel's split size (1024).
std::vector<Spec> MixedSpecs() {
  std::vector<Spec> specs;
  int64_t prefill = 3;
  for (MethodKind method : kernels::kAllMethods) {
    Spec s;
    s.method = method;
    s.prefill = prefill;
    prefill = prefill * 3 + 1;
    if (prefill > 1300) prefill = 7;
    specs.push_back(s);
  }
  Spec gqa;
  gqa.heads = 8;
  gqa.kv_heads = 2;
  gqa.dv = 5;
  gqa.prefill = 1200;
  specs.push_back(gqa);
  Spec window = gqa;
  window.method = MethodKind::kRope;
  window.kv_heads = 1;
  window.window = 33;
  window.softcap = 2.5;
  window.prefill = 150;
  specs.push_back(window);
  Spec alibi;
  alibi.method = MethodKind::kAlibi;
  alibi.softcap = 1.5;
  alibi.prefill = 1;
  specs.push_back(alibi);
  return specs;
}

// Twin sessions: `batched` and `alone` hold the same caches.
struct Twins {
  std::vector<std::unique_ptr<DecodeSession>> batched, alone;
};

Twins OpenTwins(const std::vector<Spec>& specs, std::mt19937& rng) {
  Twins twins;
  for (size_t i = 0; i < specs.size(); ++i) {
    twins.batched.push_back(OpenSession(specs[i], 100 + static_cast<uint32_t>(i)));
    twins.alone.push_back(OpenSession(specs[i], 100 + static_cast<uint32_t>(i)));
    // Prefill in chunks of up to 300 (the tiled engine above 16 tokens).
    for (int64_t done = 0; done < specs[i].prefill;) {
      const int64_t n = std::min<int64_t>(300, specs[i].prefill - done);
      const TensorMap inputs = StepInputs(specs[i], n, rng);
      EXPECT_TRUE(twins.batched[i]->Step(inputs, false, Threads(1)).ok());
      EXPECT_TRUE(twins.alone[i]->Step(inputs, false, Threads(1)).ok());
      done += n;
    }
  }
  return twins;
}

void ExpectSame(const Tensor& got, const Tensor& want, bool bitwise, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  for (int64_t e = 0; e < got.size(); ++e) {
    if (bitwise) {
      ASSERT_EQ(got.data()[e], want.data()[e]) << what << " element " << e;
    } else {
      ASSERT_NEAR(got.data()[e], want.data()[e], 1e-5 + 1e-4 * std::fabs(want.data()[e]))
          << what << " element " << e;
    }
  }
}

class StepBatchTest : public ::testing::TestWithParam<int> {};

TEST_P(StepBatchTest, EqualsTheSameStepsAlone) {
  const int threads = GetParam();
  std::mt19937 rng(15);
  const std::vector<Spec> specs = MixedSpecs();
  Twins twins = OpenTwins(specs, rng);
  // Rounds of one step per session, n = 1 mostly, some of 3 and 16 (the
  // largest in place) and one prefill chunk of 17 (the tiled engine, run
  // alone inside the batch).
  for (int round = 0; round < 4; ++round) {
    std::vector<SessionStep> steps(specs.size());
    std::vector<TensorMap> inputs;
    for (size_t i = 0; i < specs.size(); ++i) {
      const int64_t n = (i + round) % 5 == 0 ? 3 : (i + round) % 7 == 0 ? 16 : 1;
      inputs.push_back(StepInputs(specs[i], round == 2 && i == 1 ? 17 : n, rng));
      steps[i].session = twins.batched[i].get();
      steps[i].inputs = inputs.back();
    }
    DecodeSession::StepBatch(absl::MakeSpan(steps), Threads(threads));
    for (size_t i = 0; i < specs.size(); ++i) {
      const std::string what = absl::StrCat("session ", i, " (", kernels::MethodName(specs[i].method),
                                            ") round ", round, " threads ", threads);
      const absl::StatusOr<AttendResult> want =
          twins.alone[i]->Step(inputs[i], false, Threads(threads));
      ASSERT_TRUE(want.ok()) << what << ": " << want.status();
      ASSERT_TRUE(steps[i].result.ok()) << what << ": " << steps[i].result.status();
      ExpectSame(steps[i].result->out, want->out, threads == 1, what);
      EXPECT_EQ(twins.batched[i]->length(), twins.alone[i]->length()) << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OneAndTwoThreads, StepBatchTest, ::testing::Values(1, 2));

TEST(StepBatchErrorsTest, BadOverflowingAndCancelledStepsFailAloneAndCacheNothing) {
  std::mt19937 rng(16);
  const std::vector<Spec> specs = MixedSpecs();
  Twins twins = OpenTwins(specs, rng);
  std::vector<SessionStep> steps(specs.size());
  std::vector<TensorMap> inputs;
  for (size_t i = 0; i < specs.size(); ++i) {
    inputs.push_back(StepInputs(specs[i], 1, rng));
    steps[i].session = twins.batched[i].get();
    steps[i].inputs = inputs.back();
  }
  // Session 0 (none): q with the wrong head size. Session 3 (rope): values
  // whose scores overflow float32. Session 4 (transformer_xl): its caller
  // is gone.
  ASSERT_EQ(specs[0].method, MethodKind::kNone);
  ASSERT_EQ(specs[3].method, MethodKind::kRope);
  steps[0].inputs["q"] = RandomTensor({1, specs[0].heads, 1, specs[0].d + 1}, rng);
  // q = k = 1e30 everywhere: q.k of the new key is above float32's range
  // (RoPE turns both alike, so it keeps the dot product).
  for (const char* name : {"q", "k"}) {
    Tensor& t = steps[3].inputs[name];
    t = Tensor(t.shape(), std::vector<float>(static_cast<size_t>(t.size()), 1e30f));
  }
  std::atomic<bool> gone{true};
  steps[4].cancelled = &gone;
  std::vector<int64_t> before;
  for (const auto& session : twins.batched) before.push_back(session->length());
  DecodeSession::StepBatch(absl::MakeSpan(steps), Threads(1));

  EXPECT_EQ(steps[0].result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(steps[0].result.status().message().find("q.shape"), std::string::npos)
      << steps[0].result.status();
  EXPECT_EQ(steps[3].result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(steps[3].result.status().message().find("overflow"), std::string::npos)
      << steps[3].result.status();
  EXPECT_EQ(steps[4].result.status().code(), absl::StatusCode::kCancelled);
  for (size_t i : {0, 3, 4}) {
    EXPECT_EQ(twins.batched[i]->length(), before[i]) << "session " << i << " cached its step";
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    if (i == 0 || i == 3 || i == 4) continue;
    const absl::StatusOr<AttendResult> want = twins.alone[i]->Step(inputs[i], false, Threads(1));
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(steps[i].result.ok()) << "session " << i << ": " << steps[i].result.status();
    ExpectSame(steps[i].result->out, want->out, true, absl::StrCat("session ", i));
  }
  // The failed ones go on as if their step had never been sent.
  std::vector<SessionStep> again(3);
  std::vector<TensorMap> next;
  const size_t failed[] = {0, 3, 4};
  for (size_t k = 0; k < 3; ++k) {
    next.push_back(StepInputs(specs[failed[k]], 1, rng));
    again[k].session = twins.batched[failed[k]].get();
    again[k].inputs = next.back();
  }
  DecodeSession::StepBatch(absl::MakeSpan(again), Threads(1));
  for (size_t k = 0; k < 3; ++k) {
    const absl::StatusOr<AttendResult> want =
        twins.alone[failed[k]]->Step(next[k], false, Threads(1));
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(again[k].result.ok()) << again[k].result.status();
    ExpectSame(again[k].result->out, want->out, true, absl::StrCat("session ", failed[k]));
  }
}

TEST(StepBatchErrorsTest, ABatchCancelledAsAWholeCachesNothing) {
  std::mt19937 rng(17);
  std::vector<Spec> specs = MixedSpecs();
  Twins twins = OpenTwins(specs, rng);
  std::vector<SessionStep> steps(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    steps[i].session = twins.batched[i].get();
    steps[i].inputs = StepInputs(specs[i], 1, rng);
  }
  std::atomic<bool> all{true};
  kernels::ComputeOptions options = Threads(2);
  options.cancelled = &all;
  DecodeSession::StepBatch(absl::MakeSpan(steps), options);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(steps[i].result.status().code(), absl::StatusCode::kCancelled) << "session " << i;
    EXPECT_EQ(twins.batched[i]->length(), twins.alone[i]->length()) << "session " << i;
  }
}

}  // namespace
}  // namespace attnserve::testing

namespace attnserve {
namespace {

// The fuzzer's out-of-memory input (tests/fuzz/regressions/decode_request/
// crash-6e99...): an open whose one-token check would have allocated tens
// of GiB. It is refused before anything is allocated, naming the field.
TEST(ValidateDecodeOpenTest, AStepTooLargeToSendIsRefusedBeforeAnyAllocation) {
  kernels::DecodeOptions o;
  o.method = kernels::MethodKind::kNone;
  o.batch = int64_t{1} << 20;
  o.num_heads = 1024;
  o.head_dim = 64;
  o.max_len = 1;
  absl::StatusOr<int64_t> bytes = kernels::ValidateDecodeOpen(o);
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kResourceExhausted) << bytes.status();
  const std::string message(bytes.status().message());
  EXPECT_EQ(message.rfind("batch: ", 0), 0u) << message;
  EXPECT_NE(message.find("--max_elements=268435456"), std::string::npos) << message;

  // Just under the bound it is accepted (the cache's own size is the
  // session budget's to refuse).
  const auto small = [](int64_t max_step_elements) {
    kernels::DecodeOptions open;
    open.method = kernels::MethodKind::kNone;
    open.batch = 1;
    open.num_heads = 8;
    open.head_dim = 64;
    open.max_len = 16;
    open.max_step_elements = max_step_elements;
    return kernels::ValidateDecodeOpen(open).status();
  };
  EXPECT_TRUE(small(8 * 64).ok()) << small(8 * 64);
  EXPECT_EQ(small(8 * 64 - 1).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace attnserve
