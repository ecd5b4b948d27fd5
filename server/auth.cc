#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/file_text.h"

namespace attnserve::server {
namespace {

constexpr absl::string_view kSha256Prefix = "sha256:";
constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";
constexpr absl::string_view kServicePrefix = "/attnserve.v1.AttentionService/";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The attention service's RPC that `path` names, for the metrics label.
std::optional<Rpc> RpcOfPath(absl::string_view path) {
  if (!absl::ConsumePrefix(&path, kServicePrefix)) return std::nullopt;
  for (Rpc rpc : {Rpc::kAttend, Rpc::kAttendStream, Rpc::kEncode, Rpc::kListMethods,
                  Rpc::kDecode}) {
    if (path == RpcName(rpc)) return rpc;
  }
  return std::nullopt;
}

absl::string_view Find(const grpc::AuthMetadataProcessor::InputMetadata& metadata,
                       absl::string_view key) {
  const auto found = metadata.find(grpc::string_ref(key.data(), key.size()));
  if (found == metadata.end()) return {};
  return absl::string_view(found->second.data(), found->second.size());
}

}  // namespace

TokenDigest DigestOfToken(absl::string_view token) {
  TokenDigest digest;
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest.data());
  return digest;
}

absl::StatusOr<std::vector<TokenDigest>> ParseTokensFile(absl::string_view text) {
  std::vector<TokenDigest> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    if (absl::ConsumePrefix(&line, kSha256Prefix)) {
      TokenDigest digest;
      bool hex = line.size() == 2 * digest.size();
      for (size_t i = 0; hex && i < digest.size(); ++i) {
        const int high = HexValue(line[2 * i]);
        const int low = HexValue(line[2 * i + 1]);
        hex = high >= 0 && low >= 0;
        digest[i] = static_cast<uint8_t>(high * 16 + low);
      }
      if (!hex) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_number,
                         ": \"sha256:\" must be followed by the 64 hex "
                         "digits of a token's SHA-256"));
      }
      digests.push_back(digest);
    } else {
      digests.push_back(DigestOfToken(line));
    }
  }
  if (digests.empty()) return absl::InvalidArgumentError("holds no token");
  return digests;
}

absl::string_view BearerToken(absl::string_view authorization) {
  authorization = absl::StripAsciiWhitespace(authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return {};
  }
  return absl::StripAsciiWhitespace(authorization.substr(kScheme.size()));
}

absl::StatusOr<std::shared_ptr<TokenAuthenticator>> TokenAuthenticator::Create(
    const std::string& path, Metrics* metrics, std::string flag) {
  std::shared_ptr<TokenAuthenticator> authenticator(
      new TokenAuthenticator(path, metrics, std::move(flag)));
  absl::StatusOr<std::vector<TokenDigest>> digests = authenticator->Read();
  if (!digests.ok()) return digests.status();
  absl::MutexLock lock(&authenticator->mu_);
  authenticator->digests_ = std::make_shared<const std::vector<TokenDigest>>(*std::move(digests));
  return authenticator;
}

absl::StatusOr<std::vector<TokenDigest>> TokenAuthenticator::Read() const {
  absl::StatusOr<std::string> text = ReadFileText(path_, flag_);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<TokenDigest>> digests = ParseTokensFile(*text);
  if (!digests.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag_, ": '", path_, "' ", digests.status().message()));
  }
  return digests;
}

absl::Status TokenAuthenticator::Reload() {
  absl::StatusOr<std::vector<TokenDigest>> digests = Read();
  if (!digests.ok()) return digests.status();
  auto fresh = std::make_shared<const std::vector<TokenDigest>>(*std::move(digests));
  absl::MutexLock lock(&mu_);
  digests_ = std::move(fresh);
  return absl::OkStatus();
}

size_t TokenAuthenticator::size() const {
  absl::MutexLock lock(&mu_);
  return digests_->size();
}

bool TokenAuthenticator::Accepts(absl::string_view token) const {
  if (token.empty()) return false;
  std::shared_ptr<const std::vector<TokenDigest>> digests;
  {
    absl::MutexLock lock(&mu_);
    digests = digests_;
  }
  const TokenDigest presented = DigestOfToken(token);
  // Every digest is compared, whatever matched before: the time taken says
  // nothing about which bytes or which token came close.
  bool found = false;
  for (const TokenDigest& digest : *digests) {
    found |= CRYPTO_memcmp(digest.data(), presented.data(), digest.size()) == 0;
  }
  return found;
}

grpc::Status TokenAuthenticator::Process(const InputMetadata& auth_metadata,
                                         grpc::AuthContext* /*context*/,
                                         OutputMetadata* /*consumed_auth_metadata*/,
                                         OutputMetadata* /*response_metadata*/) {
  const absl::string_view path = Find(auth_metadata, ":path");
  // Kubernetes probes and load balancers check health without a token.
  if (absl::StartsWith(path, kHealthPrefix)) return grpc::Status::OK;
  if (Accepts(BearerToken(Find(auth_metadata, "authorization")))) return grpc::Status::OK;
  if (metrics_ != nullptr) {
    if (std::optional<Rpc> rpc = RpcOfPath(path)) {
      metrics_->RecordRejected(*rpc, absl::StatusCode::kUnauthenticated);
    }
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "missing or unknown bearer token: send metadata "
                      "\"authorization: Bearer <token>\" with a token of --auth_tokens_file");
}

}  // namespace attnserve::server
