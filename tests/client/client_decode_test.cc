// The C++ SDK's decode session (client/decode_session.h) against the real
// attnd: a RoPE GQA session stepped in a prefill and single tokens, and after
// a truncate, gives attnd's own causal Attend at query_offset = the cached
// length over the history (decode-sessions.md 2); the absolute methods step
// with x; errors end the session with the server's status and later calls
// are refused; and the session's destructor and Cancel() give the cache back
// (attnserve_session_cache_bytes, and the budget admits the next open).
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/decode_session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/server_process.h"

namespace attnserve::client {
namespace {

using ::attnserve::testing::ServerProcess;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr double kRtol = 1e-4, kAtol = 1e-5;

std::vector<float> Random(size_t count, uint32_t seed) {
  std::mt19937 random(seed);  // fixed seeds: every run sends the same values
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) value = normal(random);
  return values;
}

std::vector<float> Values(const v1::Tensor& tensor) {
  absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
  EXPECT_TRUE(values.ok()) << values.status();
  return values.ok() ? *values : std::vector<float>();
}

void ExpectNear(const std::vector<float>& actual, const std::vector<float>& expected,
                const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], kAtol + kRtol * std::abs(expected[i]))
        << what << " element " << i;
  }
}

// The rows [0, n) of a [1, heads, len, d] tensor as [1, heads, n, d].
std::vector<float> FirstRows(const std::vector<float>& x, int64_t heads, int64_t len, int64_t n,
                             int64_t d) {
  std::vector<float> out;
  for (int64_t h = 0; h < heads; ++h) {
    const auto begin = x.begin() + h * len * d;
    out.insert(out.end(), begin, begin + n * d);
  }
  return out;
}

// [1, heads, a + b, d] from [1, heads, a, d] and [1, heads, b, d].
std::vector<float> Concat(const std::vector<float>& x, int64_t a, const std::vector<float>& y,
                          int64_t b, int64_t heads, int64_t d) {
  std::vector<float> out;
  for (int64_t h = 0; h < heads; ++h) {
    out.insert(out.end(), x.begin() + h * a * d, x.begin() + (h + 1) * a * d);
    out.insert(out.end(), y.begin() + h * b * d, y.begin() + (h + 1) * b * d);
  }
  return out;
}

class ClientDecodeTest : public ::testing::Test {
 protected:
  static constexpr int64_t kHeads = 4, kKvHeads = 2, kD = 8, kMaxLen = 12;

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
        {"--session_memory_bytes=" + std::to_string(kSessionBytes)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  static v1::DecodeOpen RopeOpen() {
    v1::DecodeOpen open;
    open.mutable_method()->mutable_rope()->set_layout(v1::ROPE_LAYOUT_HALF);
    open.set_batch(1);
    open.set_num_heads(kHeads);
    open.set_num_kv_heads(kKvHeads);
    open.set_head_dim(kD);
    open.set_max_len(kMaxLen);
    open.set_raw_output(true);
    return open;
  }

  // attnd's Attend for the step: causal, query_offset = cached, over `k`/`v`
  // holding the history and the new tokens.
  std::vector<float> AttendOut(const std::vector<float>& q, int64_t n,
                               const std::vector<float>& k, const std::vector<float>& v,
                               int64_t total) {
    v1::AttendRequest request;
    request.mutable_method()->mutable_rope()->set_layout(v1::ROPE_LAYOUT_HALF);
    *request.mutable_q() = MakeTensor({1, kHeads, n, kD}, q);
    *request.mutable_k() = MakeTensor({1, kKvHeads, total, kD}, k);
    *request.mutable_v() = MakeTensor({1, kKvHeads, total, kD}, v);
    request.set_num_kv_heads(kKvHeads);
    request.set_causal(true);
    request.set_query_offset(total - n);
    absl::StatusOr<v1::AttendResponse> response = client_->Attend(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? Values(response->out()) : std::vector<float>();
  }

  double CacheBytes() const {
    absl::StatusOr<std::string> text = testing::HttpGet(server_->metrics_port());
    return text.ok() ? testing::MetricValue(*text, "attnserve_session_cache_bytes").value_or(-1)
                     : -1;
  }

  // The server frees the cache as it sees the stream end, which may be just
  // after the client's Finish returned: poll, bounded.
  bool CacheBecomesZero() const {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      if (CacheBytes() == 0) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  // One RoPE session's reservation: max_len * B * H_kv * (D + Dv) * 4.
  static constexpr int64_t kSessionBytes = kMaxLen * 1 * kKvHeads * (kD + kD) * 4;

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientDecodeTest, PrefillStepsAndTruncateEqualAttend) {
  absl::StatusOr<std::unique_ptr<DecodeSession>> session = client_->Decode(RopeOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->length(), 0);
  std::vector<float> keys, values;  // the history, [1, H_kv, t, D]
  int64_t t = 0;
  uint32_t seed = 100;
  for (int64_t n : {3, 1, 1, 2}) {
    const std::vector<float> q = Random(kHeads * n * kD, ++seed);
    const std::vector<float> k = Random(kKvHeads * n * kD, ++seed);
    const std::vector<float> v = Random(kKvHeads * n * kD, ++seed);
    const bool probs = n == 2;
    absl::StatusOr<v1::DecodeResponse> response =
        (*session)->Step(MakeTensor({1, kHeads, n, kD}, q, TensorEncoding::kRawData),
                         MakeTensor({1, kKvHeads, n, kD}, k, TensorEncoding::kRawData),
                         MakeTensor({1, kKvHeads, n, kD}, v, TensorEncoding::kRawData), probs);
    ASSERT_TRUE(response.ok()) << response.status();
    keys = Concat(keys, t, k, n, kKvHeads, kD);
    values = Concat(values, t, v, n, kKvHeads, kD);
    t += n;
    EXPECT_EQ(response->length(), t);
    EXPECT_EQ((*session)->length(), t);
    EXPECT_THAT(response->out().shape(), ElementsAre(1, kHeads, n, kD));
    ExpectNear(Values(response->out()), AttendOut(q, n, keys, values, t),
               absl::StrCat("step of ", n, " at ", t - n));
    if (probs) {
      EXPECT_THAT(response->probs().shape(), ElementsAre(1, kHeads, n, t));
    } else {
      EXPECT_FALSE(response->has_probs());
    }
  }
  // Truncate-then-step: the same as the history cut to 3 tokens.
  absl::StatusOr<int64_t> kept = (*session)->Truncate(3);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, 3);
  keys = FirstRows(keys, kKvHeads, t, 3, kD);
  values = FirstRows(values, kKvHeads, t, 3, kD);
  const std::vector<float> q = Random(kHeads * kD, 7), k = Random(kKvHeads * kD, 8),
                           v = Random(kKvHeads * kD, 9);
  absl::StatusOr<v1::DecodeResponse> response = (*session)->Step(
      MakeTensor({1, kHeads, 1, kD}, q), MakeTensor({1, kKvHeads, 1, kD}, k),
      MakeTensor({1, kKvHeads, 1, kD}, v));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->length(), 4);
  ExpectNear(Values(response->out()),
             AttendOut(q, 1, Concat(keys, 3, k, 1, kKvHeads, kD),
                       Concat(values, 3, v, 1, kKvHeads, kD), 4),
             "step after truncate");
  EXPECT_TRUE((*session)->Close().ok());
  EXPECT_TRUE((*session)->closed());
  EXPECT_TRUE(CacheBecomesZero());
}

TEST_F(ClientDecodeTest, SinusoidalStepsWithXEqualAttend) {
  constexpr int64_t kModel = 6, kH = 2, kDh = 4;
  const std::vector<float> w_q = Random(kModel * kH * kDh, 1), w_k = Random(kModel * kH * kDh, 2),
                           w_v = Random(kModel * kH * kDh, 3);
  v1::DecodeOpen open;
  open.mutable_method()->mutable_sinusoidal();
  open.set_batch(1);
  open.set_num_heads(kH);
  open.set_head_dim(kDh);
  open.set_max_len(4);
  *open.mutable_w_q() = MakeTensor({kModel, kH * kDh}, w_q);
  *open.mutable_w_k() = MakeTensor({kModel, kH * kDh}, w_k);
  *open.mutable_w_v() = MakeTensor({kModel, kH * kDh}, w_v);
  absl::StatusOr<std::unique_ptr<DecodeSession>> session = client_->Decode(open);
  ASSERT_TRUE(session.ok()) << session.status();
  const std::vector<float> x = Random(3 * kModel, 4);
  std::vector<float> first(x.begin(), x.begin() + 2 * kModel), last(x.begin() + 2 * kModel, x.end());
  absl::StatusOr<v1::DecodeResponse> prefill = (*session)->StepX(MakeTensor({1, 2, kModel}, first));
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  absl::StatusOr<v1::DecodeResponse> step = (*session)->StepX(MakeTensor({1, 1, kModel}, last));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->length(), 3);
  EXPECT_THAT(step->out().shape(), ElementsAre(1, kH, 1, kDh));

  v1::AttendRequest request;
  request.mutable_method()->mutable_sinusoidal();
  *request.mutable_x_q() = MakeTensor({1, 1, kModel}, last);
  *request.mutable_x_kv() = MakeTensor({1, 3, kModel}, x);
  *request.mutable_w_q() = open.w_q();
  *request.mutable_w_k() = open.w_k();
  *request.mutable_w_v() = open.w_v();
  request.set_num_heads(kH);
  request.set_causal(true);
  request.set_query_offset(2);
  absl::StatusOr<v1::AttendResponse> attend = client_->Attend(request);
  ASSERT_TRUE(attend.ok()) << attend.status();
  ExpectNear(Values(step->out()), Values(attend->out()), "sinusoidal step");
}

TEST_F(ClientDecodeTest, ErrorsEndTheSessionWithTheServersStatus) {
  absl::StatusOr<std::unique_ptr<DecodeSession>> session = client_->Decode(RopeOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  const auto tensors = [](int64_t n) {
    return std::vector<v1::Tensor>{MakeTensor({1, kHeads, n, kD}, Random(kHeads * n * kD, 1)),
                                   MakeTensor({1, kKvHeads, n, kD}, Random(kKvHeads * n * kD, 2)),
                                   MakeTensor({1, kKvHeads, n, kD}, Random(kKvHeads * n * kD, 3))};
  };
  std::vector<v1::Tensor> two = tensors(2);
  ASSERT_TRUE((*session)->Step(two[0], two[1], two[2]).ok());
  absl::StatusOr<int64_t> bad = (*session)->Truncate(5);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_THAT(bad.status().message(), HasSubstr("truncate.length"));
  EXPECT_TRUE((*session)->closed());
  absl::StatusOr<int64_t> after = (*session)->Truncate(0);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition) << after.status();
  EXPECT_EQ((*session)->Close().code(), absl::StatusCode::kInvalidArgument);

  // Past max_len: OUT_OF_RANGE naming it.
  absl::StatusOr<std::unique_ptr<DecodeSession>> second = client_->Decode(RopeOpen());
  ASSERT_TRUE(second.ok()) << second.status();
  std::vector<v1::Tensor> many = tensors(kMaxLen + 1);
  absl::StatusOr<v1::DecodeResponse> over = (*second)->Step(many[0], many[1], many[2]);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kOutOfRange) << over.status();
  EXPECT_THAT(over.status().message(), HasSubstr("max_len"));

  // An invalid open: the server's INVALID_ARGUMENT naming the field.
  v1::DecodeOpen open = RopeOpen();
  open.set_num_kv_heads(3);
  absl::StatusOr<std::unique_ptr<DecodeSession>> refused = client_->Decode(open);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("num_kv_heads"));
  EXPECT_EQ(client_->Decode(RopeOpen(), absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientDecodeTest, DestructorAndCancelGiveTheBudgetBack) {
  // --session_memory_bytes holds exactly one session.
  {
    absl::StatusOr<std::unique_ptr<DecodeSession>> first = client_->Decode(RopeOpen());
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_EQ(CacheBytes(), kSessionBytes);
    absl::StatusOr<std::unique_ptr<DecodeSession>> second = client_->Decode(RopeOpen());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  }  // ~DecodeSession closes the stream
  ASSERT_TRUE(CacheBecomesZero());
  absl::StatusOr<std::unique_ptr<DecodeSession>> again = client_->Decode(RopeOpen());
  ASSERT_TRUE(again.ok()) << again.status();
  (*again)->Cancel();
  EXPECT_TRUE((*again)->closed());
  EXPECT_EQ((*again)->Step(v1::DecodeStep()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(CacheBecomesZero());
  EXPECT_TRUE(client_->Decode(RopeOpen()).ok());
}

}  // namespace
}  // namespace attnserve::client
