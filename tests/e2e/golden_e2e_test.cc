// Every golden vector through a real attnd over loopback, via the C++ SDK:
// as `data` and as `raw_data`, unary and on one AttendStream. Error cases
// must come back with their status code.
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "kernels/isa.h"
#include "tests/testing/golden.h"
#include "tests/testing/golden_kernels.h"
#include "tests/testing/golden_proto.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

using client::Client;

const char* EncodingName(WireEncoding encoding) {
  return encoding == WireEncoding::kData ? "data" : "raw_data";
}

// One attnd for the whole binary: starting one per case would dominate.
class Server : public ::testing::Environment {
 public:
  void SetUp() override {
    auto server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Create(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
  }
  static Client& client() { return *client_; }

 private:
  static std::unique_ptr<ServerProcess> server_;
  static std::unique_ptr<Client> client_;
};

std::unique_ptr<ServerProcess> Server::server_;
std::unique_ptr<Client> Server::client_;

class GoldenUnaryTest
    : public ::testing::TestWithParam<std::tuple<std::string, WireEncoding>> {};

TEST_P(GoldenUnaryTest, MatchesWithinTolerance) {
  const auto& [path, encoding] = GetParam();
  auto c = LoadGoldenCase(path);
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::StatusCode expected_code = ExpectedCode(*c);
  if (c->op == "attend") {
    auto request = ToAttendRequest(*c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    auto response = Server::client().Attend(*request);
    ASSERT_EQ(response.status().code(), expected_code) << response.status();
    if (response.ok()) {
      EXPECT_EQ(CheckAttendResponse(*c, *response, encoding), "");
    }
  } else {
    auto request = ToEncodeRequest(*c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    auto response = Server::client().Encode(*request);
    ASSERT_EQ(response.status().code(), expected_code) << response.status();
    if (response.ok()) {
      EXPECT_EQ(CheckEncodeResponse(*c, *response, encoding), "");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, GoldenUnaryTest,
    ::testing::Combine(::testing::ValuesIn(GoldenCaseFiles(GoldenDir())),
                       ::testing::Values(WireEncoding::kData, WireEncoding::kRawData)),
    [](const ::testing::TestParamInfo<std::tuple<std::string, WireEncoding>>& param) {
      return GoldenTestName(std::get<0>(param.param)) + "_" +
             EncodingName(std::get<1>(param.param));
    });

// The format-2 attend and encode cases (tests/golden-variants/,
// tests/golden-generated/; decode cases: decode_golden_e2e_test.cc) through
// attnd with both transports: 16-bit inputs as raw_data with Tensor.dtype,
// 16-bit outputs with one ulp (golden_proto.h), and every error with its
// code and one of expect_field in the message, wire rules included.
std::vector<std::string> AttendAndEncodeVariantFiles() {
  std::vector<std::string> files;
  for (const std::string& path : VariantCaseFiles()) {
    auto c = LoadGoldenCase(path);
    if (!c.ok() || c->op != "decode") files.push_back(path);  // A load error fails the test.
  }
  return files;
}

class VariantUnaryTest : public ::testing::TestWithParam<std::tuple<std::string, WireEncoding>> {};

TEST_P(VariantUnaryTest, MatchesWithinToleranceOrFailsNamingTheField) {
  const auto& [path, encoding] = GetParam();
  auto c = LoadGoldenCase(path);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status status;
  std::string mismatch;
  if (c->op == "attend") {
    auto request = ToAttendRequest(*c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    auto response = Server::client().Attend(*request);
    status = response.status();
    if (response.ok()) mismatch = CheckAttendResponse(*c, *response, encoding);
  } else {
    auto request = ToEncodeRequest(*c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    auto response = Server::client().Encode(*request);
    status = response.status();
    if (response.ok()) mismatch = CheckEncodeResponse(*c, *response, encoding);
  }
  EXPECT_EQ(CheckExpectedError(*c, status.code(), status.message()), "");
  EXPECT_EQ(mismatch, "");
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, VariantUnaryTest,
    ::testing::Combine(::testing::ValuesIn(AttendAndEncodeVariantFiles()),
                       ::testing::Values(WireEncoding::kData, WireEncoding::kRawData)),
    [](const ::testing::TestParamInfo<std::tuple<std::string, WireEncoding>>& param) {
      return GoldenTestName(std::get<0>(param.param)) + "_" +
             EncodingName(std::get<1>(param.param));
    });

// The attnd under test runs on the ISA this process would choose: the
// CPU's best under the same ATTN_MAX_ISA (CTest runs this binary once per
// ISA), so the golden cases above ran on that ISA's kernels.
TEST(GoldenServerTest, ServesOnTheIsaTheEnvironmentCaps) {
  auto response = Server::client().ListMethods();
  ASSERT_TRUE(response.ok()) << response.status();
  const std::string isa(kernels::IsaName(kernels::ActiveIsa()));
  EXPECT_EQ(response->isa(), isa);
  EXPECT_NE(response->server().find("(isa " + isa + ")"), std::string::npos)
      << response->server();
}

// The attend cases of `files` (default: the version-1 ones) that expect an
// error, or that do not.
std::vector<GoldenCase> AttendCases(bool errors,
                                    const std::vector<std::string>& files = GoldenCaseFiles(
                                        GoldenDir())) {
  std::vector<GoldenCase> cases;
  for (const std::string& path : files) {
    auto c = LoadGoldenCase(path);
    if (c.ok() && c->op == "attend" && c->expect_error.empty() != errors) {
      cases.push_back(*std::move(c));
    }
  }
  return cases;
}

class GoldenStreamTest : public ::testing::TestWithParam<WireEncoding> {};

// Every successful attend case on one stream: responses arrive in order.
TEST_P(GoldenStreamTest, AllAttendCasesOnOneStreamInOrder) {
  const WireEncoding encoding = GetParam();
  const std::vector<GoldenCase> cases = AttendCases(/*errors=*/false);
  ASSERT_GT(cases.size(), 30u);
  std::vector<v1::AttendRequest> requests;
  for (const GoldenCase& c : cases) {
    auto request = ToAttendRequest(c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    requests.push_back(*std::move(request));
  }
  const Client::StreamResult result = Server::client().AttendStream(requests);
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.responses.size(), cases.size());
  for (size_t n = 0; n < cases.size(); ++n) {
    EXPECT_EQ(CheckAttendResponse(cases[n], result.responses[n], encoding), "") << cases[n].name;
  }
}

// An error case after two good ones: both responses, then the case's status.
TEST_P(GoldenStreamTest, ErrorCaseEndsTheStreamAfterEarlierResponses) {
  const WireEncoding encoding = GetParam();
  const std::vector<GoldenCase> good = AttendCases(/*errors=*/false);
  const std::vector<GoldenCase> bad = AttendCases(/*errors=*/true);
  ASSERT_GE(bad.size(), 2u);
  for (const GoldenCase& error_case : bad) {
    std::vector<v1::AttendRequest> requests;
    for (const GoldenCase* c : {&good[0], &good[1], &error_case, &good[2]}) {
      auto request = ToAttendRequest(*c, encoding);
      ASSERT_TRUE(request.ok()) << request.status();
      requests.push_back(*std::move(request));
    }
    const Client::StreamResult result = Server::client().AttendStream(requests);
    EXPECT_EQ(result.status.code(), ExpectedCode(error_case)) << error_case.name << ": "
                                                              << result.status;
    ASSERT_EQ(result.responses.size(), 2u) << error_case.name;
    EXPECT_EQ(CheckAttendResponse(good[0], result.responses[0], encoding), "");
    EXPECT_EQ(CheckAttendResponse(good[1], result.responses[1], encoding), "");
  }
}

// The format-2 attend cases on one stream: GQA, windows, softcap, 16-bit
// inputs and outputs interleaved with each other, each response in order.
TEST_P(GoldenStreamTest, AllVariantAttendCasesOnOneStreamInOrder) {
  const WireEncoding encoding = GetParam();
  const std::vector<GoldenCase> cases = AttendCases(/*errors=*/false, VariantCaseFiles());
  ASSERT_GT(cases.size(), 80u);
  std::vector<v1::AttendRequest> requests;
  for (const GoldenCase& c : cases) {
    auto request = ToAttendRequest(c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    requests.push_back(*std::move(request));
  }
  const Client::StreamResult result = Server::client().AttendStream(requests);
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.responses.size(), cases.size());
  for (size_t n = 0; n < cases.size(); ++n) {
    EXPECT_EQ(CheckAttendResponse(cases[n], result.responses[n], encoding), "") << cases[n].name;
  }
}

// A format-2 error case after two good ones ends the stream with its code,
// the message naming one of expect_field.
TEST_P(GoldenStreamTest, VariantErrorCaseEndsTheStreamNamingTheField) {
  const WireEncoding encoding = GetParam();
  const std::vector<GoldenCase> good = AttendCases(/*errors=*/false, VariantCaseFiles());
  const std::vector<GoldenCase> bad = AttendCases(/*errors=*/true, VariantCaseFiles());
  ASSERT_GE(bad.size(), 20u);
  for (const GoldenCase& error_case : bad) {
    std::vector<v1::AttendRequest> requests;
    for (const GoldenCase* c : {&good[0], &good[1], &error_case, &good[2]}) {
      auto request = ToAttendRequest(*c, encoding);
      ASSERT_TRUE(request.ok()) << request.status();
      requests.push_back(*std::move(request));
    }
    const Client::StreamResult result = Server::client().AttendStream(requests);
    EXPECT_EQ(CheckExpectedError(error_case, result.status.code(), result.status.message()), "")
        << error_case.name;
    ASSERT_EQ(result.responses.size(), 2u) << error_case.name;
    EXPECT_EQ(CheckAttendResponse(good[0], result.responses[0], encoding), "");
    EXPECT_EQ(CheckAttendResponse(good[1], result.responses[1], encoding), "");
  }
}

INSTANTIATE_TEST_SUITE_P(BothEncodings, GoldenStreamTest,
                         ::testing::Values(WireEncoding::kData, WireEncoding::kRawData),
                         [](const ::testing::TestParamInfo<WireEncoding>& param) {
                           return std::string(EncodingName(param.param));
                         });

}  // namespace
}  // namespace attnserve::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new attnserve::testing::Server());
  return RUN_ALL_TESTS();
}
