// The C++ SDK: tensor helpers and status mapping on their own, then every RPC
// against the real attnd (tests/testing/server_process.h).
#include "client/client.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/attnd_client_test.h"
#include "tests/testing/server_process.h"

namespace attnserve::client {
namespace {

using ::attnserve::testing::ServerProcess;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

std::vector<int64_t> Shape(const v1::Tensor& tensor) {
  return std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end());
}

// --- Tensor helpers -------------------------------------------------------

TEST(MakeTensorTest, RefTensorCarriesTheNameAndAnOptionalShape) {
  const v1::Tensor bare = MakeRefTensor("shaw/rel_k");
  EXPECT_EQ(bare.ref(), "shaw/rel_k");
  EXPECT_EQ(bare.shape_size(), 0);
  EXPECT_EQ(bare.data_size(), 0);
  EXPECT_TRUE(bare.raw_data().empty());
  const v1::Tensor shaped = MakeRefTensor("gpt/wpe.weight", {1024, 768});
  EXPECT_THAT(shaped.shape(), ::testing::ElementsAre(1024, 768));
  EXPECT_EQ(TensorValues(shaped).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MakeTensorTest, DataRoundTrip) {
  const std::vector<float> values = {1.5f, -2.25f, 0.0f, 3e-8f, -1e30f, 7.0f};
  const v1::Tensor tensor = MakeTensor({2, 3}, values);
  EXPECT_THAT(Shape(tensor), ElementsAre(2, 3));
  EXPECT_EQ(tensor.data_size(), 6);
  EXPECT_TRUE(tensor.raw_data().empty());
  absl::StatusOr<std::vector<float>> back = TensorValues(tensor);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, values);
}

TEST(MakeTensorTest, RawRoundTrip) {
  const std::vector<float> values = {1.5f, -2.25f, 0.0f, 3e-8f, -1e30f, 7.0f};
  const v1::Tensor tensor = MakeTensor({3, 2}, values, TensorEncoding::kRawData);
  EXPECT_THAT(Shape(tensor), ElementsAre(3, 2));
  EXPECT_EQ(tensor.data_size(), 0);
  EXPECT_EQ(tensor.raw_data().size(), 24u);
  absl::StatusOr<std::vector<float>> back = TensorValues(tensor);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, values);
}

TEST(MakeTensorTest, RawDataIsLittleEndianFloat32) {
  // 1.0f = 0x3f800000, -2.0f = 0xc0000000.
  const v1::Tensor tensor = MakeTensor({2}, {1.0f, -2.0f}, TensorEncoding::kRawData);
  EXPECT_EQ(tensor.raw_data(), std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8));
}

TEST(TensorValuesTest, BadRawLengthIsInvalidArgument) {
  v1::Tensor tensor = MakeTensor({2, 2}, {1, 2, 3, 4}, TensorEncoding::kRawData);
  tensor.mutable_raw_data()->pop_back();  // 15 bytes
  absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
  EXPECT_EQ(values.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(values.status().message()), HasSubstr("raw_data"));
  EXPECT_THAT(std::string(values.status().message()), HasSubstr("16"));

  // A whole number of floats, but not product(shape) of them.
  tensor = MakeTensor({2, 2}, {1, 2, 3}, TensorEncoding::kRawData);
  EXPECT_EQ(TensorValues(tensor).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorValuesTest, DataCountMismatchIsInvalidArgument) {
  const v1::Tensor tensor = MakeTensor({2, 3}, {1, 2, 3, 4, 5});
  absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
  EXPECT_EQ(values.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(values.status().message()), HasSubstr("tensor.data"));
}

TEST(TensorValuesTest, RefBothEncodingsAndBadDimensionsAreInvalidArgument) {
  v1::Tensor ref;
  ref.add_shape(2);
  ref.set_ref("weights");
  EXPECT_EQ(TensorValues(ref).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(TensorValues(ref).status().message()), HasSubstr("ref"));

  v1::Tensor both = MakeTensor({1}, {1.0f}, TensorEncoding::kRawData);
  both.add_data(1.0f);
  EXPECT_EQ(TensorValues(both).status().code(), absl::StatusCode::kInvalidArgument);

  const v1::Tensor zero_dim = MakeTensor({2, 0}, {});
  EXPECT_EQ(TensorValues(zero_dim).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(TensorValues(zero_dim).status().message()), HasSubstr("shape"));
}

// --- Status mapping ---------------------------------------------------------

TEST(FromGrpcStatusTest, KeepsTheCodeNumberAndTheMessage) {
  // gRPC and Abseil number their canonical codes alike; the mapping must
  // preserve every one of them by name.
  const std::vector<std::pair<grpc::StatusCode, absl::StatusCode>> pairs = {
      {grpc::StatusCode::CANCELLED, absl::StatusCode::kCancelled},
      {grpc::StatusCode::UNKNOWN, absl::StatusCode::kUnknown},
      {grpc::StatusCode::INVALID_ARGUMENT, absl::StatusCode::kInvalidArgument},
      {grpc::StatusCode::DEADLINE_EXCEEDED, absl::StatusCode::kDeadlineExceeded},
      {grpc::StatusCode::NOT_FOUND, absl::StatusCode::kNotFound},
      {grpc::StatusCode::ALREADY_EXISTS, absl::StatusCode::kAlreadyExists},
      {grpc::StatusCode::PERMISSION_DENIED, absl::StatusCode::kPermissionDenied},
      {grpc::StatusCode::RESOURCE_EXHAUSTED, absl::StatusCode::kResourceExhausted},
      {grpc::StatusCode::FAILED_PRECONDITION, absl::StatusCode::kFailedPrecondition},
      {grpc::StatusCode::ABORTED, absl::StatusCode::kAborted},
      {grpc::StatusCode::OUT_OF_RANGE, absl::StatusCode::kOutOfRange},
      {grpc::StatusCode::UNIMPLEMENTED, absl::StatusCode::kUnimplemented},
      {grpc::StatusCode::INTERNAL, absl::StatusCode::kInternal},
      {grpc::StatusCode::UNAVAILABLE, absl::StatusCode::kUnavailable},
      {grpc::StatusCode::DATA_LOSS, absl::StatusCode::kDataLoss},
      {grpc::StatusCode::UNAUTHENTICATED, absl::StatusCode::kUnauthenticated},
  };
  for (const auto& [grpc_code, absl_code] : pairs) {
    const absl::Status status = FromGrpcStatus(grpc::Status(grpc_code, "q.shape: bad"));
    EXPECT_EQ(status.code(), absl_code) << grpc_code;
    EXPECT_EQ(status.message(), "q.shape: bad");
  }
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

// --- Client without a server ---------------------------------------------

TEST(ClientCreateTest, MalformedTargetFails) {
  EXPECT_EQ(Client::Create("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Client::Create("127.0.0.1: 5").status().code(), absl::StatusCode::kInvalidArgument);
  // gRPC itself turns this one into a "lame" channel that fails every call.
  EXPECT_EQ(Client::Create("ipv4:notanip").status().code(), absl::StatusCode::kInvalidArgument);
  // Well-formed targets are accepted without connecting.
  EXPECT_TRUE(Client::Create("dns:///localhost:50051").ok());
  EXPECT_TRUE(Client::Create("unix:/nonexistent/attnd.sock").ok());
  ClientOptions bad_deadline;
  bad_deadline.default_deadline = absl::ZeroDuration();
  EXPECT_EQ(Client::Create("127.0.0.1:1", bad_deadline).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ClientCreateTest, ConnectsLazilySoADownServerFailsOnlyTheCall) {
  // Port 1 on loopback: nothing listens there, the connection is refused.
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create("127.0.0.1:1");
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<bool> health = (*client)->Health();
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable) << health.status();
}

// --- Client against attnd --------------------------------------------------

class ClientServerTest : public AttndClientTest {};

// The example of api.md: ALiBi, causal, B=H=1, Sq=Sk=2, D=Dv=2,
// q = k = [[1,0],[0,1]], v = [[1,2],[3,4]].
v1::AttendRequest AlibiExample(TensorEncoding encoding) {
  v1::AttendRequest request;
  request.mutable_method()->mutable_alibi();
  request.set_causal(true);
  request.set_return_probs(true);
  request.set_raw_output(encoding == TensorEncoding::kRawData);
  *request.mutable_q() = MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1}, encoding);
  *request.mutable_k() = MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1}, encoding);
  *request.mutable_v() = MakeTensor({1, 1, 2, 2}, {1, 2, 3, 4}, encoding);
  return request;
}

// By hand: H = 1 gives the slope m = 2^-8; scale = 1/sqrt(2); the query
// position i is its row (query_offset = Sk - Sq = 0).
//   row 0: only key 0 is visible -> probs [1, 0], out = v0 = [1, 2].
//   row 1: scores (q1.k0) / sqrt(2) - m * 1 = -1/256 and (q1.k1) / sqrt(2) = 0.7071068;
//          p1 = 1 / (1 + exp(-(0.7071068 + 0.0039063))) = 0.6706250, p0 = 0.3293750;
//          out = p0 * [1, 2] + p1 * [3, 4] = [2.3412499, 3.3412499].
constexpr float kP1 = 0.67062496f;
const std::vector<float> kExampleOut = {1.0f, 2.0f, 1.0f + 2.0f * kP1, 2.0f + 2.0f * kP1};
const std::vector<float> kExampleProbs = {1.0f, 0.0f, 1.0f - kP1, kP1};

TEST_F(ClientServerTest, AttendComputesTheApiExample) {
  for (TensorEncoding encoding : {TensorEncoding::kData, TensorEncoding::kRawData}) {
    SCOPED_TRACE(encoding == TensorEncoding::kData ? "data" : "raw_data");
    absl::StatusOr<v1::AttendResponse> response = client_->Attend(AlibiExample(encoding));
    ASSERT_TRUE(response.ok()) << response.status();
    // The response uses the encoding the request asked for.
    EXPECT_EQ(response->out().raw_data().empty(), encoding == TensorEncoding::kData);
    EXPECT_THAT(Shape(response->out()), ElementsAre(1, 1, 2, 2));
    EXPECT_THAT(Shape(response->probs()), ElementsAre(1, 1, 2, 2));
    absl::StatusOr<std::vector<float>> out = TensorValues(response->out());
    absl::StatusOr<std::vector<float>> probs = TensorValues(response->probs());
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(probs.ok()) << probs.status();
    EXPECT_THAT(*out, Pointwise(FloatNear(1e-5f), kExampleOut));
    EXPECT_THAT(*probs, Pointwise(FloatNear(1e-6f), kExampleProbs));
  }
}

TEST_F(ClientServerTest, AttendErrorKeepsTheServersCodeAndMessage) {
  v1::AttendRequest request = AlibiExample(TensorEncoding::kData);
  *request.mutable_k() = MakeTensor({1, 1, 2, 3}, {1, 0, 0, 0, 1, 0});
  absl::StatusOr<v1::AttendResponse> response = client_->Attend(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("k.shape"));
}

TEST_F(ClientServerTest, EncodeReturnsAlibiSlopesAndBias) {
  v1::EncodeRequest request;
  request.mutable_method()->mutable_alibi();
  request.set_num_heads(3);
  request.set_sq(2);
  request.set_sk(2);
  absl::StatusOr<v1::EncodeResponse> response = client_->Encode(request);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_TRUE(response->outputs().contains("slopes"));
  ASSERT_TRUE(response->outputs().contains("bias"));
  absl::StatusOr<std::vector<float>> slopes = TensorValues(response->outputs().at("slopes"));
  ASSERT_TRUE(slopes.ok()) << slopes.status();
  // positional-methods.md 2.7: H = 3 -> 2^-4, 2^-8, 2^-2.
  EXPECT_THAT(*slopes, ElementsAre(0.0625f, 0.00390625f, 0.25f));
  EXPECT_THAT(Shape(response->outputs().at("bias")), ElementsAre(3, 2, 2));
  absl::StatusOr<std::vector<float>> bias = TensorValues(response->outputs().at("bias"));
  ASSERT_TRUE(bias.ok()) << bias.status();
  // bias[h, i, j] = -m_h * |i - j|.
  EXPECT_THAT(*bias, ElementsAreArray<float>({0, -0.0625f, -0.0625f, 0, 0, -0.00390625f,
                                              -0.00390625f, 0, 0, -0.25f, -0.25f, 0}));
}

TEST_F(ClientServerTest, ListMethodsHasTheEightMethods) {
  absl::StatusOr<v1::ListMethodsResponse> response = client_->ListMethods();
  ASSERT_TRUE(response.ok()) << response.status();
  std::set<std::string> names;
  for (const v1::MethodInfo& method : response->methods()) names.insert(method.name());
  EXPECT_EQ(names, (std::set<std::string>{"none", "sinusoidal", "learned", "rope", "transformer_xl",
                                          "shaw", "alibi", "da_transformer"}));
  EXPECT_EQ(response->methods_size(), 8);
}

TEST_F(ClientServerTest, HealthIsServing) {
  absl::StatusOr<bool> health = client_->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(*health);
}

TEST_F(ClientServerTest, HealthOfAnUnknownServiceIsNotFound) {
  absl::StatusOr<bool> health = client_->Health("attnserve.v1.NoSuchService");
  EXPECT_EQ(health.status().code(), absl::StatusCode::kNotFound) << health.status();
}

TEST_F(ClientServerTest, TinyDeadlineIsDeadlineExceeded) {
  ClientOptions options;
  options.default_deadline = absl::Nanoseconds(1);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(server_->address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  // gRPC keeps deadlines in whole milliseconds (rounded up), so a 1 ns
  // deadline gives the call up to 1 ms, in which attnd can answer a tiny
  // request. This one needs far longer (6 MiB in, about 10 ms of
  // attention), so only DEADLINE_EXCEEDED can come back.
  const int64_t heads = 8, seq = 1024, dim = 64;
  const std::vector<float> values(static_cast<size_t>(heads * seq * dim), 0.5f);
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  for (v1::Tensor* tensor : {request.mutable_q(), request.mutable_k(), request.mutable_v()}) {
    *tensor = MakeTensor({1, heads, seq, dim}, values, TensorEncoding::kRawData);
  }
  absl::StatusOr<v1::AttendResponse> response = (*client)->Attend(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded) << response.status();
}

// Requests whose answers differ, so that order is visible: v scaled by i + 1.
std::vector<v1::AttendRequest> StreamRequests(int n) {
  std::vector<v1::AttendRequest> requests;
  for (int i = 0; i < n; ++i) {
    v1::AttendRequest request = AlibiExample(TensorEncoding::kData);
    const float f = static_cast<float>(i + 1);
    *request.mutable_v() = MakeTensor({1, 1, 2, 2}, {f, 2 * f, 3 * f, 4 * f});
    requests.push_back(request);
  }
  return requests;
}

TEST_F(ClientServerTest, AttendStreamAnswersEveryRequestInOrder) {
  const int n = 20;
  Client::StreamResult result = client_->AttendStream(StreamRequests(n));
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.responses.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<std::vector<float>> out = TensorValues(result.responses[i].out());
    ASSERT_TRUE(out.ok()) << out.status();
    const float f = static_cast<float>(i + 1);
    EXPECT_THAT(*out, Pointwise(FloatNear(1e-5f * f), {kExampleOut[0] * f, kExampleOut[1] * f,
                                                       kExampleOut[2] * f, kExampleOut[3] * f}))
        << "response " << i;
  }
}

TEST_F(ClientServerTest, AttendStreamStopsAtABadMessageAfterAnsweringThoseBefore) {
  std::vector<v1::AttendRequest> requests = StreamRequests(5);
  // Message 2 of 5: k's head size does not match q's.
  *requests[2].mutable_k() = MakeTensor({1, 1, 2, 3}, {1, 0, 0, 0, 1, 0});
  Client::StreamResult result = client_->AttendStream(requests);
  EXPECT_EQ(result.status.code(), absl::StatusCode::kInvalidArgument) << result.status;
  EXPECT_THAT(std::string(result.status.message()), HasSubstr("k.shape"));
  ASSERT_EQ(result.responses.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::vector<float>> out = TensorValues(result.responses[i].out());
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_NEAR((*out)[3], kExampleOut[3] * static_cast<float>(i + 1), 1e-5) << i;
  }
}

TEST_F(ClientServerTest, EmptyStreamEndsOk) {
  Client::StreamResult result = client_->AttendStream({});
  EXPECT_TRUE(result.status.ok()) << result.status;
  EXPECT_TRUE(result.responses.empty());
}

TEST_F(ClientServerTest, OneClientServesManyThreads) {
  constexpr int kThreads = 4;
  constexpr int kCalls = 10;
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t, &failures] {
      for (int i = 0; i < kCalls; ++i) {
        absl::StatusOr<v1::AttendResponse> response =
            client_->Attend(AlibiExample(TensorEncoding::kRawData));
        if (!response.ok()) {
          ++failures[t];
          continue;
        }
        absl::StatusOr<std::vector<float>> out = TensorValues(response->out());
        if (!out.ok() || std::fabs((*out)[2] - kExampleOut[2]) > 1e-5f) ++failures[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(failures, ::testing::Each(0));
}

}  // namespace
}  // namespace attnserve::client
