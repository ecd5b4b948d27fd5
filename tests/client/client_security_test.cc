// The C++ SDK against a real attnd with TLS, mutual TLS and tokens
// (ClientOptions::security): the right CA, certificate and token succeed; a
// failed handshake is UNAVAILABLE, a missing or wrong token UNAUTHENTICATED.
// The Python package, attn and attn bench have the same checks in
// security_test.py.
//
// Certificates are made by the openssl CLI through tests/e2e/pki.py (run with
// $ATTN_PYTHON, both set by CTest) in a temporary directory.
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"

namespace attnserve::client {
namespace {

using ::attnserve::testing::ServerProcess;

constexpr char kToken[] = "cpp-client-test-token-81c3";

// Two servers for the whole suite: `tls` (TLS + tokens) and `mtls` (TLS +
// client certificates from the test CA, no tokens).
class ClientSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/attn_client_security_XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = new std::string(pattern);
    const char* python = std::getenv("ATTN_PYTHON");
    const std::string command =
        absl::StrCat(python != nullptr ? python : "/usr/bin/python3", " ", ATTN_SOURCE_DIR,
                     "/tests/e2e/pki.py ", *dir_, " >/dev/null");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
    std::ofstream(Path("tokens")) << kToken << "\n";
    std::ofstream(Path("token")) << "  " << kToken << "\n";
    const std::vector<std::string> tls = {absl::StrCat("--tls_cert_file=", Path("server.pem")),
                                          absl::StrCat("--tls_key_file=", Path("server.key")),
                                          "--warmup_iterations=0"};
    std::vector<std::string> flags = tls;
    flags.push_back(absl::StrCat("--auth_tokens_file=", Path("tokens")));
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(flags);
    ASSERT_TRUE(server.ok()) << server.status();
    tls_ = server->release();
    flags = tls;
    flags.push_back(absl::StrCat("--tls_client_ca_file=", Path("ca.pem")));
    server = ServerProcess::Start(flags);
    ASSERT_TRUE(server.ok()) << server.status();
    mtls_ = server->release();
  }

  static void TearDownTestSuite() {
    delete tls_;
    delete mtls_;
    if (dir_ != nullptr) {
      const std::string command = absl::StrCat("rm -rf '", *dir_, "'");
      (void)std::system(command.c_str());
      delete dir_;
    }
  }

  void SetUp() override { unsetenv(kTokenEnvVariable); }
  void TearDown() override { unsetenv(kTokenEnvVariable); }

  static std::string Path(const std::string& name) { return absl::StrCat(*dir_, "/", name); }

  // ListMethods through a client with `security` (deadline 15 s: a refused
  // handshake may be retried by the channel's defaults first).
  static absl::Status Call(const ServerProcess& server, const SecurityOptions& security) {
    ClientOptions options;
    options.default_deadline = absl::Seconds(15);
    options.security = security;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(server.address(), options);
    if (!client.ok()) return client.status();
    absl::StatusOr<v1::ListMethodsResponse> methods = (*client)->ListMethods();
    if (!methods.ok()) return methods.status();
    EXPECT_GE(methods->methods_size(), 8);
    return absl::OkStatus();
  }

  static SecurityOptions WithCa() {
    SecurityOptions security;
    security.ca_file = Path("ca.pem");
    return security;
  }

  static std::string* dir_;
  static ServerProcess* tls_;
  static ServerProcess* mtls_;
};

std::string* ClientSecurityTest::dir_ = nullptr;
ServerProcess* ClientSecurityTest::tls_ = nullptr;
ServerProcess* ClientSecurityTest::mtls_ = nullptr;

TEST_F(ClientSecurityTest, TlsWithTheCaAndATokenFromAnySource) {
  SecurityOptions direct = WithCa();
  direct.token = kToken;
  EXPECT_TRUE(Call(*tls_, direct).ok()) << Call(*tls_, direct);
  SecurityOptions file = WithCa();
  file.token_file = Path("token");
  EXPECT_TRUE(Call(*tls_, file).ok());
  setenv(kTokenEnvVariable, kToken, 1);
  EXPECT_TRUE(Call(*tls_, WithCa()).ok());

  // An Attend as well, with values.
  ClientOptions options;
  options.security = direct;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(tls_->address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = MakeTensor({1, 1, 1, 2}, {1, 0});
  *request.mutable_k() = MakeTensor({1, 1, 1, 2}, {1, 0});
  *request.mutable_v() = MakeTensor({1, 1, 1, 2}, {3, 4});
  absl::StatusOr<v1::AttendResponse> response = (*client)->Attend(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*TensorValues(response->out()), ::testing::ElementsAre(3, 4));
}

TEST_F(ClientSecurityTest, AMissingOrWrongTokenIsUnauthenticated) {
  EXPECT_EQ(Call(*tls_, WithCa()).code(), absl::StatusCode::kUnauthenticated);
  SecurityOptions wrong = WithCa();
  wrong.token = "not-the-token";
  EXPECT_EQ(Call(*tls_, wrong).code(), absl::StatusCode::kUnauthenticated);
  setenv(kTokenEnvVariable, "not-the-token", 1);
  EXPECT_EQ(Call(*tls_, WithCa()).code(), absl::StatusCode::kUnauthenticated);
  // token_from_env = false: ATTN_TOKEN (here the right one) is not sent.
  setenv(kTokenEnvVariable, kToken, 1);
  SecurityOptions no_env = WithCa();
  no_env.token_from_env = false;
  EXPECT_EQ(Call(*tls_, no_env).code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(ClientSecurityTest, HealthNeedsNoToken) {
  ClientOptions options;
  options.security = WithCa();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(tls_->address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<bool> serving = (*client)->Health();
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
}

TEST_F(ClientSecurityTest, PlaintextAnotherCaOrTheSystemRootsFailTheHandshake) {
  SecurityOptions plaintext;
  plaintext.token = kToken;
  EXPECT_EQ(Call(*tls_, plaintext).code(), absl::StatusCode::kUnavailable);
  SecurityOptions other = plaintext;
  other.ca_file = Path("other.pem");
  EXPECT_EQ(Call(*tls_, other).code(), absl::StatusCode::kUnavailable);
  SecurityOptions system_roots = plaintext;
  system_roots.tls = true;
  EXPECT_EQ(Call(*tls_, system_roots).code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientSecurityTest, TheServerNameOverrideIsChecked) {
  SecurityOptions localhost = WithCa();
  localhost.token = kToken;
  localhost.server_name = "localhost";
  EXPECT_TRUE(Call(*tls_, localhost).ok());
  SecurityOptions elsewhere = localhost;
  elsewhere.server_name = "elsewhere.example";
  EXPECT_EQ(Call(*tls_, elsewhere).code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientSecurityTest, SkipVerifyEncryptsWithoutACa) {
  SecurityOptions skip;
  skip.skip_verify = true;
  skip.token = kToken;
  EXPECT_TRUE(Call(*tls_, skip).ok());
  // And presents a client certificate when given one.
  SecurityOptions skip_mtls;
  skip_mtls.skip_verify = true;
  skip_mtls.cert_file = Path("client.pem");
  skip_mtls.key_file = Path("client.key");
  EXPECT_TRUE(Call(*mtls_, skip_mtls).ok());
}

TEST_F(ClientSecurityTest, MutualTlsNeedsACertificateFromTheServersCa) {
  SecurityOptions client = WithCa();
  client.cert_file = Path("client.pem");
  client.key_file = Path("client.key");
  EXPECT_TRUE(Call(*mtls_, client).ok());
  EXPECT_EQ(Call(*mtls_, WithCa()).code(), absl::StatusCode::kUnavailable);
  SecurityOptions rogue = WithCa();
  rogue.cert_file = Path("rogue.pem");
  rogue.key_file = Path("rogue.key");
  EXPECT_EQ(Call(*mtls_, rogue).code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientSecurityTest, BadFilesAreRefusedByCreateNamingTheOption) {
  SecurityOptions missing;
  missing.ca_file = "/nonexistent/ca.pem";
  absl::Status status = Call(*tls_, missing);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("options.security.ca_file: cannot open"));
  SecurityOptions half;
  half.cert_file = Path("client.pem");
  status = Call(*tls_, half);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              ::testing::HasSubstr("options.security.cert_file, options.security.key_file"));
}

}  // namespace
}  // namespace attnserve::client
