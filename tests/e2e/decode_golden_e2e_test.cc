// The decode golden cases (decode-sessions.md 4; tests/golden-variants/dec_*
// and any generated ones) through a real attnd: each case is one Decode
// stream, every response checked against the float64 reference's expected
// values, as data and as raw_data; error cases must end the stream with
// their status after answering every earlier message.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/testing/golden.h"
#include "tests/testing/golden_proto.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

// One attnd for the whole binary.
class Server : public ::testing::Environment {
 public:
  void SetUp() override {
    auto server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::AttentionService::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    stub_.reset();
    server_.reset();
  }
  static v1::AttentionService::Stub& stub() { return *stub_; }

 private:
  static std::unique_ptr<ServerProcess> server_;
  static std::unique_ptr<v1::AttentionService::Stub> stub_;
};
std::unique_ptr<ServerProcess> Server::server_;
std::unique_ptr<v1::AttentionService::Stub> Server::stub_;

std::vector<std::string> DecodeCaseFiles() {
  std::vector<std::string> files;
  for (const std::string& path : VariantCaseFiles()) {
    auto c = LoadGoldenCase(path);
    if (c.ok() && c->op == "decode") files.push_back(path);
  }
  return files;
}

class DecodeGoldenTest
    : public ::testing::TestWithParam<std::tuple<std::string, WireEncoding>> {};

TEST_P(DecodeGoldenTest, EveryResponseMatchesTheReference) {
  const auto& [path, encoding] = GetParam();
  auto c = LoadGoldenCase(path);
  ASSERT_TRUE(c.ok()) << c.status();
  auto messages = ToDecodeRequests(*c, encoding);
  ASSERT_TRUE(messages.ok()) << messages.status();
  grpc::ClientContext context;
  auto stream = Server::stub().Decode(&context);
  const bool expects_error = ExpectedCode(*c) != absl::StatusCode::kOk;
  for (size_t i = 0; i < messages->size(); ++i) {
    ASSERT_TRUE(stream->Write((*messages)[i])) << "message " << i;
    v1::DecodeResponse response;
    if (!stream->Read(&response)) {
      // Only the last message of an error case may end the stream.
      const grpc::Status status = stream->Finish();
      EXPECT_TRUE(expects_error && i + 1 == messages->size())
          << "message " << i << " of " << messages->size() << " ended the stream: "
          << status.error_code() << " " << status.error_message();
      EXPECT_EQ(CheckExpectedError(*c, static_cast<absl::StatusCode>(status.error_code()),
                                   status.error_message()),
                "");
      return;
    }
    EXPECT_EQ(CheckDecodeResponse(*c, i, response, encoding), "") << "message " << i;
  }
  EXPECT_FALSE(expects_error) << "every message answered, expected " << c->expect_error;
  stream->WritesDone();
  v1::DecodeResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DecodeGoldenTest,
    ::testing::Combine(::testing::ValuesIn(DecodeCaseFiles()),
                       ::testing::Values(WireEncoding::kData, WireEncoding::kRawData)),
    [](const ::testing::TestParamInfo<std::tuple<std::string, WireEncoding>>& param) {
      return GoldenTestName(std::get<0>(param.param)) +
             (std::get<1>(param.param) == WireEncoding::kData ? "_data" : "_raw_data");
    });

}  // namespace
}  // namespace attnserve::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new attnserve::testing::Server);
  return RUN_ALL_TESTS();
}
