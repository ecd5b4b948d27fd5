// Unit tests of the tokens file format and bearer parsing (server/auth.h) and
// of the loopback rule behind --insecure (server/tls.h). End to end, with the
// real attnd: tests/e2e/auth_e2e_test.py and tls_e2e_test.py.
#include "server/auth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/ascii.h"
#include "server/tls.h"

namespace attnserve::server {
namespace {

using ::testing::HasSubstr;

// SHA-256("abc"), FIPS 180-2 appendix B.1.
constexpr char kAbcSha256[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(AuthTest, DigestOfTokenIsSha256) {
  const TokenDigest digest = DigestOfToken("abc");
  std::string hex;
  for (uint8_t byte : digest) {
    hex += "0123456789abcdef"[byte >> 4];
    hex += "0123456789abcdef"[byte & 15];
  }
  EXPECT_EQ(hex, kAbcSha256);
}

TEST(AuthTest, TokensFileTrimsSkipsCommentsAndTakesSha256EitherCase) {
  const std::string upper = absl::AsciiStrToUpper(kAbcSha256);
  absl::StatusOr<std::vector<TokenDigest>> digests =
      ParseTokensFile(std::string("# comment\n\n  plain \t\r\nsha256:") + kAbcSha256 +
                      "\n  sha256:" + upper + "  \n");
  ASSERT_TRUE(digests.ok()) << digests.status();
  ASSERT_EQ(digests->size(), 3u);
  EXPECT_EQ((*digests)[0], DigestOfToken("plain"));
  EXPECT_EQ((*digests)[1], DigestOfToken("abc"));
  EXPECT_EQ((*digests)[2], DigestOfToken("abc"));
}

TEST(AuthTest, TokensFileErrorsNameTheLineNotItsText) {
  for (const std::string& bad :
       {std::string("sha256:abc"), std::string("sha256:") + std::string(64, 'g'),
        std::string("sha256:") + kAbcSha256 + "0"}) {
    absl::StatusOr<std::vector<TokenDigest>> digests = ParseTokensFile("ok\n" + bad + "\n");
    ASSERT_FALSE(digests.ok()) << bad;
    EXPECT_EQ(digests.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(digests.status().message(), HasSubstr("line 2"));
    EXPECT_THAT(digests.status().message(), ::testing::Not(HasSubstr(bad)));
  }
  EXPECT_THAT(ParseTokensFile("# only\n\n   \n").status().message(), HasSubstr("holds no token"));
  EXPECT_FALSE(ParseTokensFile("").ok());
}

TEST(AuthTest, BearerToken) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("bearer  abc "), "abc");
  EXPECT_EQ(BearerToken("BEARER abc"), "abc");
  EXPECT_EQ(BearerToken("abc"), "");
  EXPECT_EQ(BearerToken("Basic abc"), "");
  EXPECT_EQ(BearerToken("Bearer "), "");
  EXPECT_EQ(BearerToken(""), "");
}

TEST(TlsTest, LoopbackHosts) {
  for (const char* host :
       {"127.0.0.1", "127.1.2.3", "[::1]", "::1", "localhost", "LOCALHOST", "[::ffff:127.0.0.1]"}) {
    EXPECT_TRUE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "[::]", "10.0.0.1", "192.168.1.2", "[fe80::1]", "example.com",
                           "128.0.0.1", ""}) {
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
  }
}

TEST(TlsTest, OptionsNeedCertAndKeyTogether) {
  TlsOptions options;
  EXPECT_TRUE(ValidateTlsOptions(options).ok());
  options.cert_file = "c.pem";
  EXPECT_THAT(ValidateTlsOptions(options).message(), HasSubstr("--tls_key_file"));
  options.key_file = "k.pem";
  EXPECT_TRUE(ValidateTlsOptions(options).ok());
  options.reload_interval_s = 0;
  EXPECT_THAT(ValidateTlsOptions(options).message(), HasSubstr("--tls_reload_interval_s"));
  TlsOptions ca_only;
  ca_only.client_ca_file = "ca.pem";
  EXPECT_THAT(ValidateTlsOptions(ca_only).message(), HasSubstr("--tls_client_ca_file"));
}

}  // namespace
}  // namespace attnserve::server
