// AttnServer in-process on 127.0.0.1 port 0, called through the generated
// stubs: the RPC edge of attention_service.cc and server.cc.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "kernels/isa.h"
#include "server/server.h"
#include "tests/server/proto_tensors.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

// The api.md example: alibi, causal, one head, q = k = I, v = [[1,2],[3,4]].
v1::AttendRequest AlibiExample(std::vector<float> v = {1, 2, 3, 4}) {
  v1::AttendRequest request;
  request.mutable_method()->mutable_alibi();
  request.set_causal(true);
  *request.mutable_q() = DataTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_k() = DataTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_v() = DataTensor({1, 1, 2, 2}, std::move(v));
  return request;
}

// By hand: row 0 sees key 0 only; row 1 has scores (0 - 1/256, 1/sqrt(2))
// (H = 1: slope 2^-8; bias -slope*|i-j|; scale 1/sqrt(D)).
std::vector<float> AlibiExampleOut(const std::vector<float>& v) {
  const double s0 = -1.0 / 256.0;
  const double s1 = 1.0 / std::sqrt(2.0);
  const double p1 = 1.0 / (1.0 + std::exp(s0 - s1));
  const double p0 = 1.0 - p1;
  return {v[0], v[1], static_cast<float>(p0 * v[0] + p1 * v[2]),
          static_cast<float>(p0 * v[1] + p1 * v[3])};
}

class AttentionServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.address = "127.0.0.1:0";
    options.metrics_address = "127.0.0.1:0";
    options.threads = 2;
    options.max_elements = 1000;
    options.max_message_bytes = 1 << 20;
    absl::StatusOr<std::unique_ptr<AttnServer>> server = AttnServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->WarmUp();
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::AttentionService::NewStub(channel_);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
  }

  std::unique_ptr<AttnServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttentionService::Stub> stub_;
};

TEST_F(AttentionServiceTest, ListensOnThePickedPort) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), absl::StrCat("127.0.0.1:", server_->port()));
}

TEST_F(AttentionServiceTest, AttendAlibiExample) {
  grpc::ClientContext context;
  v1::AttendResponse response;
  v1::AttendRequest request = AlibiExample();
  request.set_return_probs(true);
  const grpc::Status status = stub_->Attend(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.out().shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_THAT(response.out().data(), Pointwise(FloatNear(1e-6), AlibiExampleOut({1, 2, 3, 4})));
  EXPECT_THAT(response.probs().shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_FLOAT_EQ(response.probs().data(0), 1.0f);
  EXPECT_FLOAT_EQ(response.probs().data(1), 0.0f);  // Masked: key 1 is after query 0.
}

TEST_F(AttentionServiceTest, AttendRawOutputCarriesTheSameValues) {
  grpc::ClientContext context;
  v1::AttendResponse response;
  v1::AttendRequest request = AlibiExample();
  request.set_raw_output(true);
  ASSERT_TRUE(stub_->Attend(&context, request, &response).ok());
  EXPECT_EQ(response.out().data_size(), 0);
  ASSERT_EQ(response.out().raw_data().size(), 16u);
  std::vector<float> out(4);
  std::memcpy(out.data(), response.out().raw_data().data(), 16);  // The test host is LE.
  EXPECT_THAT(out, Pointwise(FloatNear(1e-6), AlibiExampleOut({1, 2, 3, 4})));
  EXPECT_FALSE(response.has_probs());
}

TEST_F(AttentionServiceTest, AttendErrorsKeepCodeAndMessage) {
  {
    grpc::ClientContext context;
    v1::AttendResponse response;
    v1::AttendRequest request = AlibiExample();
    request.clear_method();
    const grpc::Status status = stub_->Attend(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("method: not set"));
  }
  {
    grpc::ClientContext context;
    v1::AttendResponse response;
    v1::AttendRequest request = AlibiExample();
    request.mutable_k()->Clear();
    request.mutable_k()->set_ref("cache");
    const grpc::Status status = stub_->Attend(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(status.error_message(), "k.ref: no tensor named 'cache' is loaded on this server");
  }
  {
    grpc::ClientContext context;
    v1::AttendResponse response;
    v1::AttendRequest request = AlibiExample();
    *request.mutable_v() = DataTensor({1, 1, 2, 600}, std::vector<float>(1200, 1.0f));
    const grpc::Status status = stub_->Attend(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(status.error_message(), "v: 1200 elements exceed --max_elements=1000");
  }
  {
    // The kernels' own rule, through the same edge.
    grpc::ClientContext context;
    v1::AttendResponse response;
    v1::AttendRequest request = AlibiExample();
    *request.mutable_x_q() = DataTensor({1, 2, 2}, {1, 2, 3, 4});
    const grpc::Status status = stub_->Attend(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("x_q"));
  }
}

TEST_F(AttentionServiceTest, EncodeAlibiSlopes) {
  grpc::ClientContext context;
  v1::EncodeRequest request;
  request.mutable_method()->mutable_alibi();
  request.set_sq(2);
  request.set_sk(2);
  request.set_num_heads(2);
  v1::EncodeResponse response;
  const grpc::Status status = stub_->Encode(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.outputs().count("slopes"), 1u);
  // H = 2: m_h = 2^(-8h/2) = 1/16, 1/256.
  EXPECT_THAT(response.outputs().at("slopes").data(), ElementsAre(0.0625f, 0.00390625f));
  ASSERT_EQ(response.outputs().count("bias"), 1u);
  EXPECT_FALSE(response.outputs().at("bias").shape().empty());
}

TEST_F(AttentionServiceTest, EncodeNoneIsInvalid) {
  grpc::ClientContext context;
  v1::EncodeRequest request;
  request.mutable_method()->mutable_none();
  v1::EncodeResponse response;
  const grpc::Status status = stub_->Encode(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("none has no encode form"));
}

TEST_F(AttentionServiceTest, AttendStreamAnswersInOrder) {
  grpc::ClientContext context;
  auto stream = stub_->AttendStream(&context);
  const std::vector<std::vector<float>> vs = {{1, 2, 3, 4}, {5, 6, 7, 8}, {-1, 0, 1, 0}};
  for (const auto& v : vs) ASSERT_TRUE(stream->Write(AlibiExample(v)));
  ASSERT_TRUE(stream->WritesDone());
  v1::AttendResponse response;
  for (const auto& v : vs) {
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_THAT(response.out().data(), Pointwise(FloatNear(1e-5), AlibiExampleOut(v)));
  }
  EXPECT_FALSE(stream->Read(&response));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(AttentionServiceTest, AttendStreamEndsWithTheFirstError) {
  grpc::ClientContext context;
  auto stream = stub_->AttendStream(&context);
  v1::AttendRequest bad = AlibiExample();
  bad.mutable_q()->mutable_data()->RemoveLast();
  ASSERT_TRUE(stream->Write(AlibiExample()));
  stream->Write(bad);
  stream->Write(AlibiExample());  // May fail: the server may have ended the stream.
  stream->WritesDone();
  v1::AttendResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_THAT(response.out().data(), Pointwise(FloatNear(1e-6), AlibiExampleOut({1, 2, 3, 4})));
  EXPECT_FALSE(stream->Read(&response));
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "q.data: shape [1,1,2,2] needs 4 values, got 3");
}

TEST_F(AttentionServiceTest, EmptyStreamFinishesOk) {
  grpc::ClientContext context;
  auto stream = stub_->AttendStream(&context);
  ASSERT_TRUE(stream->WritesDone());
  v1::AttendResponse response;
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(AttentionServiceTest, ListMethods) {
  grpc::ClientContext context;
  v1::ListMethodsResponse response;
  ASSERT_TRUE(stub_->ListMethods(&context, v1::ListMethodsRequest(), &response).ok());
  ASSERT_EQ(response.methods_size(), 8);
  std::vector<std::string> names;
  for (const v1::MethodInfo& method : response.methods()) {
    names.push_back(method.name());
    EXPECT_FALSE(method.description().empty()) << method.name();
  }
  EXPECT_THAT(names, ElementsAre("none", "sinusoidal", "learned", "rope", "transformer_xl", "shaw",
                                 "alibi", "da_transformer"));
  EXPECT_EQ(response.limits().max_message_bytes(), 1 << 20);
  EXPECT_EQ(response.limits().max_elements(), 1000);
  const std::string isa(kernels::IsaName(kernels::ActiveIsa()));
  EXPECT_EQ(response.server(), "attnd 0.1.0 (isa " + isa + ")");
  EXPECT_EQ(response.isa(), isa);
}

TEST_F(AttentionServiceTest, HealthIsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = health->Check(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(AttnServerTest, HealthIsNotServingUntilWarmUp) {
  ServerOptions options;
  options.address = "127.0.0.1:0";
  options.metrics_address = "";
  absl::StatusOr<std::unique_ptr<AttnServer>> server = AttnServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  const auto check = [&health] {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.status();
  };
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  (*server)->WarmUp();
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::SERVING);
  (*server)->Shutdown(absl::Seconds(1));
}

TEST_F(AttentionServiceTest, ShutdownIsIdempotentAndRefusesNewCalls) {
  server_->Shutdown(absl::Seconds(1));
  server_->Shutdown(absl::Seconds(1));
  server_->Wait();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::AttendResponse response;
  const grpc::Status status = stub_->Attend(&context, AlibiExample(), &response);
  EXPECT_FALSE(status.ok());
}

TEST(AttnServerTest, InvalidOptionsNameTheFlag) {
  ServerOptions options;
  options.threads = 0;
  EXPECT_EQ(AttnServer::Start(options).status().message(), "--threads: must be >= 1, got 0");
  options = ServerOptions();
  options.address = "localhost";
  EXPECT_THAT(std::string(ValidateServerOptions(options).message()), HasSubstr("--address"));
  options.address = "127.0.0.1:70000";
  EXPECT_EQ(ValidateServerOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options = ServerOptions();
  options.max_message_bytes = int64_t{1} << 32;
  EXPECT_THAT(std::string(ValidateServerOptions(options).message()),
              HasSubstr("--max_message_bytes"));
  options = ServerOptions();
  options.max_elements = 0;
  EXPECT_THAT(std::string(ValidateServerOptions(options).message()), HasSubstr("--max_elements"));
  options = ServerOptions();
  options.metrics_address = "9464";
  EXPECT_THAT(std::string(ValidateServerOptions(options).message()),
              HasSubstr("--metrics_address"));
  options.metrics_address = "";
  EXPECT_TRUE(ValidateServerOptions(options).ok());
  EXPECT_TRUE(ValidateServerOptions(ServerOptions()).ok());
}

TEST(AttnServerTest, UnbindableAddressIsUnavailable) {
  ServerOptions options;
  options.address = "192.0.2.1:0";  // TEST-NET-1: not an address of this host.
  options.metrics_address = "127.0.0.1:0";
  // Past the plaintext-on-loopback rule, so that binding itself is tried.
  options.insecure = true;
  absl::StatusOr<std::unique_ptr<AttnServer>> server = AttnServer::Start(options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("--address=192.0.2.1:0"));
}

TEST_F(AttentionServiceTest, PortInUseIsUnavailable) {
  ServerOptions options;
  options.address = server_->address();
  options.metrics_address = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<AttnServer>> second = AttnServer::Start(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(AttentionServiceTest, MetricsPortInUseIsUnavailable) {
  ServerOptions options;
  options.address = "127.0.0.1:0";
  options.metrics_address = absl::StrCat("127.0.0.1:", server_->metrics_port());
  absl::StatusOr<std::unique_ptr<AttnServer>> second = AttnServer::Start(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("--metrics_address"));
}

TEST(AttnServerTest, WritePortFileIsAtomicAndComplete) {
  const char* tmpdir = std::getenv("TEST_TMPDIR");
  const std::string dir = tmpdir != nullptr ? tmpdir : "/tmp";
  const std::string path = absl::StrCat(dir, "/attnd_port_test_", ::getpid());
  ASSERT_TRUE(WritePortFile(path, 43210).ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), "43210\n");
  EXPECT_FALSE(std::ifstream(path + ".tmp").good());
  std::remove(path.c_str());

  const absl::Status failed = WritePortFile("/nonexistent-dir/port", 1);
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(failed.message()), HasSubstr("/nonexistent-dir/port.tmp"));
}

}  // namespace
}  // namespace attnserve::server
