// client/channel.h on its own: which options give TLS, where the token comes
// from, and the errors for bad files and tokens (the handshakes themselves are
// in security_test.py, against a real attnd).
#include "client/channel.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnserve::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A file holding `text`, named after this process (tests run in parallel).
std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "channel_test_", getpid(), "_", name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  return path;
}

// Unsets ATTN_TOKEN for a test and restores it afterwards.
class ChannelSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* value = std::getenv(kTokenEnvVariable)) saved_ = value;
    unsetenv(kTokenEnvVariable);
  }
  void TearDown() override {
    if (saved_.empty()) {
      unsetenv(kTokenEnvVariable);
    } else {
      setenv(kTokenEnvVariable, saved_.c_str(), 1);
    }
  }
  std::string saved_;
};

TEST_F(ChannelSecurityTest, PlaintextWithoutTokenByDefault) {
  absl::StatusOr<ChannelSecurity> security = LoadChannelSecurity({});
  ASSERT_TRUE(security.ok()) << security.status();
  EXPECT_FALSE(security->tls());
  EXPECT_FALSE(security->has_token());
}

TEST_F(ChannelSecurityTest, AnyTlsOptionTurnsTlsOn) {
  SecurityOptions tls;
  tls.tls = true;
  SecurityOptions name;
  name.server_name = "localhost";
  SecurityOptions skip;
  skip.skip_verify = true;
  for (const SecurityOptions& options : {tls, name, skip}) {
    absl::StatusOr<ChannelSecurity> security = LoadChannelSecurity(options);
    ASSERT_TRUE(security.ok()) << security.status();
    EXPECT_TRUE(security->tls());
  }
}

TEST_F(ChannelSecurityTest, TokenFromOptionFileOrEnvironment) {
  SecurityOptions direct;
  direct.token = "abc.DEF-123";
  EXPECT_TRUE(LoadChannelSecurity(direct)->has_token());

  SecurityOptions file;
  file.token_file = WriteFile("token", "  s3cret-token\n\n");
  absl::StatusOr<ChannelSecurity> from_file = LoadChannelSecurity(file);
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_TRUE(from_file->has_token());

  setenv(kTokenEnvVariable, "env-token", 1);
  EXPECT_TRUE(LoadChannelSecurity({})->has_token());
  SecurityOptions no_env;
  no_env.token_from_env = false;
  EXPECT_FALSE(LoadChannelSecurity(no_env)->has_token());
}

TEST_F(ChannelSecurityTest, BadTokensAreRefusedWithoutQuotingThem) {
  SecurityOptions spaced;
  spaced.token = "two words";
  absl::Status status = LoadChannelSecurity(spaced).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("token: the token must be visible ASCII"));
  EXPECT_THAT(status.message(), Not(HasSubstr("two words")));

  SecurityOptions empty_file;
  empty_file.token_file = WriteFile("empty_token", " \n");
  status = LoadChannelSecurity(empty_file).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("the token is empty"));

  SecurityOptions both;
  both.token = "a";
  both.token_file = empty_file.token_file;
  EXPECT_THAT(LoadChannelSecurity(both).status().message(),
              HasSubstr("token, token_file: give at most one"));

  SecurityOptions missing;
  missing.token_file = "/nonexistent/token";
  EXPECT_EQ(LoadChannelSecurity(missing).status().code(), absl::StatusCode::kNotFound);

  setenv(kTokenEnvVariable, "bad\x01token", 1);
  status = LoadChannelSecurity({}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("ATTN_TOKEN: the token must be visible ASCII"));
}

TEST_F(ChannelSecurityTest, CertificateFilesAreCheckedBeforeAnyCall) {
  SecurityOptions missing;
  missing.ca_file = "/nonexistent/ca.pem";
  absl::Status status = LoadChannelSecurity(missing).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("ca_file: cannot open /nonexistent/ca.pem"));

  SecurityOptions not_pem;
  not_pem.ca_file = WriteFile("not_pem", "hello");
  status = LoadChannelSecurity(not_pem).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("holds no PEM CERTIFICATE block"));

  SecurityOptions half;
  half.cert_file = not_pem.ca_file;
  EXPECT_THAT(LoadChannelSecurity(half).status().message(),
              HasSubstr("cert_file, key_file: give both (mutual TLS) or neither"));

  SecurityOptions bad_name;
  bad_name.server_name = "a b";
  EXPECT_THAT(LoadChannelSecurity(bad_name).status().message(),
              HasSubstr("server_name: expected a host name"));
}

TEST(RenameOptionFieldsTest, RenamesLeadingFieldNamesOnly) {
  const std::map<std::string, std::string> names = {{"cert_file", "--cert"},
                                                    {"key_file", "--key"}};
  EXPECT_EQ(RenameOptionFields(absl::InvalidArgumentError("cert_file, key_file: give both"), names)
                .message(),
            "--cert, --key: give both");
  const absl::Status kept =
      RenameOptionFields(absl::NotFoundError("ca_file: cannot open key_file"), names);
  EXPECT_EQ(kept.message(), "ca_file: cannot open key_file");
  EXPECT_EQ(kept.code(), absl::StatusCode::kNotFound);
}

TEST(CreateChannelTest, NamesTheFieldOfABadTarget) {
  absl::Status status =
      CreateChannel("bad target", ChannelSecurity(), DefaultChannelArguments(1 << 20), "HOST")
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("HOST: must not contain spaces"));
  EXPECT_TRUE(CreateChannel("127.0.0.1:1", ChannelSecurity(), DefaultChannelArguments(1 << 20)).ok());
}

}  // namespace
}  // namespace attnserve::client
