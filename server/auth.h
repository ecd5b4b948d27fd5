// Bearer-token authentication for attnd's gRPC listener (--auth_tokens_file).
//
// The tokens file holds one token per line, or "sha256:" and the 64 hex
// digits (either case) of SHA-256 over a token's bytes, so that the file need
// not hold the secret itself. Lines are trimmed; blank lines and lines
// starting with '#' are ignored. Only SHA-256 digests are kept in memory: a
// presented token is hashed and compared with every digest in constant time
// (CRYPTO_memcmp, no early exit), so neither the comparison's timing nor a
// memory dump gives a token away.
//
// Clients send "authorization: Bearer <token>". A call without a known token
// gets UNAUTHENTICATED before any handler runs (gRPC's AuthMetadataProcessor),
// counted in attnserve_requests_total{code="UNAUTHENTICATED"} for the
// attention service's RPCs. The standard health service stays open
// (Kubernetes probes carry no token); everything else, reflection included,
// needs a token. No token text is ever logged.
//
// Thread-safety: every member function may be called from any thread; the
// token set is swapped under a mutex by Reload (SIGHUP).
#ifndef ATTNSERVE_SERVER_AUTH_H_
#define ATTNSERVE_SERVER_AUTH_H_

#include <grpcpp/security/auth_metadata_processor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics.h"

namespace attnserve::server {

using TokenDigest = std::array<uint8_t, 32>;

// SHA-256 of `token`'s bytes.
TokenDigest DigestOfToken(absl::string_view token);

// The digests a tokens file's text describes (see above). Errors:
// INVALID_ARGUMENT naming the line number of a "sha256:" line without 64 hex
// digits (the line's text is not quoted), or when the file holds no token.
absl::StatusOr<std::vector<TokenDigest>> ParseTokensFile(absl::string_view text);

// The token of an "authorization" header value "Bearer <token>" (scheme
// case-insensitive, surrounding spaces trimmed); empty when it is not one.
absl::string_view BearerToken(absl::string_view authorization);

class TokenAuthenticator : public grpc::AuthMetadataProcessor {
 public:
  // Reads `path` (errors as ParseTokensFile, and INVALID_ARGUMENT naming
  // --auth_tokens_file when it cannot be read). `metrics` (may be null)
  // counts rejected calls; it must outlive this object.
  // `flag` names the file in errors.
  static absl::StatusOr<std::shared_ptr<TokenAuthenticator>> Create(
      const std::string& path, Metrics* metrics, std::string flag = "--auth_tokens_file");

  // Re-reads the file. On success the new set applies to every later call;
  // on failure the previous set stays and the error (which names the file
  // and line, never a token) is returned.
  absl::Status Reload();

  // True when `token` is one of the set.
  bool Accepts(absl::string_view token) const;

  // The number of tokens in the current set.
  size_t size() const;

  // grpc::AuthMetadataProcessor: runs on gRPC's thread (cheap: one SHA-256).
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  TokenAuthenticator(std::string path, Metrics* metrics, std::string flag)
      : path_(std::move(path)), flag_(std::move(flag)), metrics_(metrics) {}

  absl::StatusOr<std::vector<TokenDigest>> Read() const;

  const std::string path_;
  const std::string flag_;
  Metrics* const metrics_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<TokenDigest>> digests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_AUTH_H_
