// Malformed requests against a real attnd: each gets the right status code
// and a message naming the field, and none disturbs the server or the good
// requests running beside it.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

using client::Client;
using client::MakeTensor;
using client::TensorEncoding;
using ::testing::HasSubstr;

std::vector<float> Iota(int64_t n, float scale = 0.1f) {
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[i] = scale * static_cast<float>((i * 7) % 13 - 6);
  return values;
}

// A valid `none` request: B=1, H=2, Sq=Sk=3, D=4, Dv=5.
v1::AttendRequest GoodRequest(TensorEncoding encoding = TensorEncoding::kData) {
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = MakeTensor({1, 2, 3, 4}, Iota(24), encoding);
  *request.mutable_k() = MakeTensor({1, 2, 3, 4}, Iota(24, 0.2f), encoding);
  *request.mutable_v() = MakeTensor({1, 2, 3, 5}, Iota(30, 0.3f), encoding);
  return request;
}

class ErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Small limits so the limit paths are cheap to reach.
    auto server = ServerProcess::Start({"--max_elements=100000", "--max_message_bytes=1048576"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    auto client = Client::Create(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  void TearDown() override {
    // Whatever the test sent, the server still answers a good request.
    auto health = client_->Health();
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_TRUE(*health);
    EXPECT_TRUE(client_->Attend(GoodRequest()).ok());
  }

  void ExpectAttendError(const v1::AttendRequest& request, absl::StatusCode code,
                         const std::string& field) {
    auto response = client_->Attend(request);
    EXPECT_EQ(response.status().code(), code) << response.status();
    EXPECT_THAT(std::string(response.status().message()), HasSubstr(field));
  }
  void ExpectEncodeError(const v1::EncodeRequest& request, absl::StatusCode code,
                         const std::string& field) {
    auto response = client_->Encode(request);
    EXPECT_EQ(response.status().code(), code) << response.status();
    EXPECT_THAT(std::string(response.status().message()), HasSubstr(field));
  }

  static ServerProcess* server_;
  std::unique_ptr<Client> client_;
};

ServerProcess* ErrorsTest::server_ = nullptr;

TEST_F(ErrorsTest, GoodRequestSucceedsInBothEncodings) {
  auto data = client_->Attend(GoodRequest(TensorEncoding::kData));
  auto raw = client_->Attend(GoodRequest(TensorEncoding::kRawData));
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_TRUE(raw.ok()) << raw.status();
  auto a = client::TensorValues(data->out());
  auto b = client::TensorValues(raw->out());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_THAT(std::vector<int64_t>(data->out().shape().begin(), data->out().shape().end()),
              ::testing::ElementsAre(1, 2, 3, 5));
}

TEST_F(ErrorsTest, KeyShapeMismatchNamesK) {
  v1::AttendRequest request = GoodRequest();
  *request.mutable_k() = MakeTensor({1, 2, 3, 3}, Iota(18));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "k.shape");
}

TEST_F(ErrorsTest, ValueLengthMismatchNamesV) {
  v1::AttendRequest request = GoodRequest();
  *request.mutable_v() = MakeTensor({1, 2, 4, 5}, Iota(40));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "v.shape");
}

TEST_F(ErrorsTest, WrongRawDataLengthNamesTheField) {
  v1::AttendRequest request = GoodRequest(TensorEncoding::kRawData);
  request.mutable_q()->mutable_raw_data()->resize(24 * 4 - 3);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "q.raw_data");
}

TEST_F(ErrorsTest, DataCountNotMatchingShapeNamesTheField) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_k()->add_data(1.0f);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "k.data");
}

TEST_F(ErrorsTest, BothDataAndRawDataIsRejected) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_q()->set_raw_data(std::string(24 * 4, '\0'));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "q");
}

TEST_F(ErrorsTest, EmptyTensorIsRejected) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_v()->Clear();
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "v");
}

TEST_F(ErrorsTest, UnknownRefIsNotFound) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_k()->Clear();
  request.mutable_k()->add_shape(1);
  request.mutable_k()->set_ref("weights/k");
  ExpectAttendError(request, absl::StatusCode::kNotFound, "k.ref");
}

TEST_F(ErrorsTest, MissingInputIsNamed) {
  v1::AttendRequest request = GoodRequest();
  request.clear_v();
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "v");
}

TEST_F(ErrorsTest, InputTheMethodDoesNotTakeIsNamed) {
  v1::AttendRequest request = GoodRequest();
  *request.mutable_x_q() = MakeTensor({1, 3, 4}, Iota(12));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "x_q");
  v1::AttendRequest shaw = GoodRequest();
  shaw.mutable_method()->mutable_shaw()->set_max_relative_position(1);
  *shaw.mutable_method()->mutable_shaw()->mutable_rel_k() = MakeTensor({3, 4}, Iota(12));
  ExpectAttendError(shaw, absl::StatusCode::kInvalidArgument, "rel_v");
}

TEST_F(ErrorsTest, MethodNotSetIsRejected) {
  v1::AttendRequest request = GoodRequest();
  request.clear_method();
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "method");
}

TEST_F(ErrorsTest, UnknownEnumValuesAreRejected) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_method()->mutable_rope()->set_layout(static_cast<v1::RopeLayout>(7));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "layout");
  request.mutable_method()->mutable_rope()->set_layout(v1::ROPE_LAYOUT_HALF);
  request.mutable_method()->mutable_rope()->set_scaling(static_cast<v1::RopeScaling>(-2));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "scaling");
}

TEST_F(ErrorsTest, NonFiniteParametersAreRejected) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  v1::AttendRequest request = GoodRequest();
  request.set_scale(nan);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "scale");
  request = GoodRequest();
  request.mutable_method()->mutable_rope()->set_base(nan);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "base");
  request = GoodRequest();
  request.mutable_method()->mutable_rope()->set_scaling_factor(-1);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "scaling_factor");
  request = GoodRequest();
  request.mutable_method()->mutable_rope()->set_base(std::numeric_limits<double>::infinity());
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "base");
}

TEST_F(ErrorsTest, NonFiniteTensorValuesAreRejected) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_q()->set_data(5, std::numeric_limits<float>::quiet_NaN());
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "q.data[5]");
}

TEST_F(ErrorsTest, OverflowingShapeIsInvalidNotACrash) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_q()->clear_shape();
  for (int64_t d : {int64_t{1} << 40, int64_t{1} << 40, int64_t{1}, int64_t{4}}) {
    request.mutable_q()->add_shape(d);
  }
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "q.shape");
}

TEST_F(ErrorsTest, NonPositiveDimensionIsRejected) {
  v1::AttendRequest request = GoodRequest();
  request.mutable_q()->set_shape(2, 0);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "q.shape");
  request = GoodRequest();
  request.mutable_q()->set_shape(2, -3);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "q.shape");
}

TEST_F(ErrorsTest, NegativeQueryOffsetIsInvalid) {
  v1::AttendRequest request = GoodRequest();
  request.set_query_offset(-1);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "query_offset");
}

TEST_F(ErrorsTest, NumHeadsMustMatchForQkvMethods) {
  v1::AttendRequest request = GoodRequest();
  request.set_num_heads(3);
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "num_heads");
}

TEST_F(ErrorsTest, RequiredMethodParametersAreRequired) {
  v1::AttendRequest shaw = GoodRequest();
  auto* s = shaw.mutable_method()->mutable_shaw();
  *s->mutable_rel_k() = MakeTensor({3, 4}, Iota(12));
  *s->mutable_rel_v() = MakeTensor({3, 5}, Iota(15));
  ExpectAttendError(shaw, absl::StatusCode::kInvalidArgument, "max_relative_position");
  s->set_max_relative_position(2);  // Tables are for K=1.
  ExpectAttendError(shaw, absl::StatusCode::kInvalidArgument, "rel_k.shape");

  v1::AttendRequest txl = GoodRequest();
  auto* t = txl.mutable_method()->mutable_transformer_xl();
  *t->mutable_pos_bias_u() = MakeTensor({2, 4}, Iota(8));
  *t->mutable_pos_bias_v() = MakeTensor({2, 4}, Iota(8));
  *t->mutable_w_r() = MakeTensor({2, 6, 4}, Iota(48));
  ExpectAttendError(txl, absl::StatusCode::kInvalidArgument, "d_rel");
  t->set_d_rel(6);
  EXPECT_TRUE(client_->Attend(txl).ok());
}

TEST_F(ErrorsTest, LearnedPositionsOutsideTheTableAreOutOfRange) {
  v1::AttendRequest request;
  auto* table = request.mutable_method()->mutable_learned()->mutable_table();
  *table = MakeTensor({4, 6}, Iota(24));
  *request.mutable_x_q() = MakeTensor({1, 3, 6}, Iota(18));
  *request.mutable_x_kv() = MakeTensor({1, 3, 6}, Iota(18));
  *request.mutable_w_q() = MakeTensor({6, 4}, Iota(24));
  *request.mutable_w_k() = MakeTensor({6, 4}, Iota(24));
  *request.mutable_w_v() = MakeTensor({6, 4}, Iota(24));
  request.set_num_heads(2);
  EXPECT_TRUE(client_->Attend(request).ok());
  request.set_query_offset(2);  // Queries at 2, 3, 4; the table has rows 0..3.
  ExpectAttendError(request, absl::StatusCode::kOutOfRange, "query_offset");
  // A shape error as well: INVALID_ARGUMENT wins.
  *request.mutable_w_v() = MakeTensor({5, 4}, Iota(20));
  ExpectAttendError(request, absl::StatusCode::kInvalidArgument, "w_v.shape");
}

TEST_F(ErrorsTest, EncodeErrors) {
  v1::EncodeRequest none;
  none.mutable_method()->mutable_none();
  ExpectEncodeError(none, absl::StatusCode::kInvalidArgument, "encode");

  v1::EncodeRequest sinusoidal;
  sinusoidal.mutable_method()->mutable_sinusoidal();
  *sinusoidal.mutable_x() = MakeTensor({1, 2, 4}, Iota(8));
  sinusoidal.set_offset(-1);
  ExpectEncodeError(sinusoidal, absl::StatusCode::kInvalidArgument, "offset");

  v1::EncodeRequest learned;
  *learned.mutable_method()->mutable_learned()->mutable_table() = MakeTensor({4, 4}, Iota(16));
  *learned.mutable_x() = MakeTensor({1, 2, 4}, Iota(8));
  learned.set_offset(-1);
  ExpectEncodeError(learned, absl::StatusCode::kOutOfRange, "offset");

  v1::EncodeRequest alibi;
  alibi.mutable_method()->mutable_alibi();
  alibi.set_sq(3);
  alibi.set_sk(3);
  ExpectEncodeError(alibi, absl::StatusCode::kInvalidArgument, "num_heads");
  alibi.set_num_heads(2);
  alibi.set_sq(0);
  ExpectEncodeError(alibi, absl::StatusCode::kInvalidArgument, "sq");

  v1::EncodeRequest shaw;
  auto* s = shaw.mutable_method()->mutable_shaw();
  s->set_max_relative_position(1);
  *s->mutable_rel_k() = MakeTensor({3, 2}, Iota(6));
  *s->mutable_rel_v() = MakeTensor({3, 2}, Iota(6));
  shaw.set_sq(2);
  shaw.set_sk(2);
  ExpectEncodeError(shaw, absl::StatusCode::kInvalidArgument, "rel_v");

  v1::EncodeRequest rope;
  rope.mutable_method()->mutable_rope();
  *rope.mutable_x() = MakeTensor({1, 1, 2, 3}, Iota(6));
  ExpectEncodeError(rope, absl::StatusCode::kInvalidArgument, "rotary_dim");
}

TEST_F(ErrorsTest, OutputAboveMaxElementsIsResourceExhausted) {
  // 1 x 1 x 400 x 400 probabilities = 160000 elements > --max_elements=100000.
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = MakeTensor({1, 1, 400, 2}, Iota(800));
  *request.mutable_k() = MakeTensor({1, 1, 400, 2}, Iota(800));
  *request.mutable_v() = MakeTensor({1, 1, 400, 2}, Iota(800));
  EXPECT_TRUE(client_->Attend(request).ok());
  request.set_return_probs(true);
  ExpectAttendError(request, absl::StatusCode::kResourceExhausted, "probs");

  v1::EncodeRequest alibi;
  alibi.mutable_method()->mutable_alibi();
  alibi.set_num_heads(8);
  alibi.set_sq(1000000);
  alibi.set_sk(1000000);
  ExpectEncodeError(alibi, absl::StatusCode::kResourceExhausted, "bias");
}

TEST_F(ErrorsTest, MessageAboveMaxMessageBytesIsResourceExhausted) {
  v1::AttendRequest request = GoodRequest(TensorEncoding::kRawData);
  request.mutable_q()->mutable_raw_data()->resize(2 << 20);  // 2 MiB > 1 MiB.
  auto response = client_->Attend(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted) << response.status();
}

// Bad requests interleaved with good ones from many threads: every good one
// gets exactly the answer it gets alone.
TEST_F(ErrorsTest, BadRequestsDoNotDisturbConcurrentGoodOnes) {
  auto alone = client_->Attend(GoodRequest());
  ASSERT_TRUE(alone.ok());
  const auto expected = client::TensorValues(alone->out());
  ASSERT_TRUE(expected.ok());
  std::vector<std::thread> threads;
  std::vector<int> mismatches(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < 20; ++n) {
        v1::AttendRequest bad = GoodRequest();
        bad.mutable_k()->set_shape(3, 7 + n);
        if (client_->Attend(bad).ok()) ++mismatches[t];
        auto good = client_->Attend(GoodRequest(t % 2 ? TensorEncoding::kRawData
                                                       : TensorEncoding::kData));
        if (!good.ok() || client::TensorValues(good->out()).value_or(std::vector<float>{}) !=
                              *expected) {
          ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

}  // namespace
}  // namespace attnserve::testing
