// How attnserve's C++ clients (the SDK's Client, `attn`, `attn bench`) build
// their gRPC channels: the one place for the transport's security (plaintext,
// TLS, mutual TLS), the bearer token every call carries, and the channel
// arguments the clients share.
//
//   absl::StatusOr<ChannelSecurity> security = LoadChannelSecurity(options);
//   absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
//       CreateChannel("127.0.0.1:50051", *security, DefaultChannelArguments(256 << 20));
//   grpc::ClientContext context;
//   security->Apply(context);   // before every call: "authorization: Bearer <token>"
//
// The defaults every client applies to a target unless its caller overrides
// them (docs/api.md "Idempotency and retries"; the Python twin is
// client/python/attnserve/channel.py): DefaultServiceConfig's round_robin,
// retries of UNAVAILABLE for the idempotent RPCs and client-side health
// checking, and keepalive (DefaultChannelArguments); the per-call deadline is
// the caller's (ClientOptions::default_deadline, attn --timeout).
//
// The token is sent as call metadata, so it also travels over plaintext (attnd
// allows plaintext only on loopback unless started with --insecure); over a
// network, use TLS so that it is not readable on the wire.
//
// Thread-safety: the functions are pure (they read files and the environment);
// a ChannelSecurity is immutable once loaded and may be shared by threads.
#ifndef ATTNSERVE_CLIENT_CHANNEL_H_
#define ATTNSERVE_CLIENT_CHANNEL_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace attnserve::client {

// The environment variable a token is read from when none is given.
inline constexpr char kTokenEnvVariable[] = "ATTN_TOKEN";

// What a client was asked for. Plaintext unless `tls` is set or any of the
// TLS fields (ca_file, cert_file, key_file, server_name, skip_verify) is.
struct SecurityOptions {
  // TLS with the system's root certificates (or ca_file's).
  bool tls = false;
  // PEM root certificates that verify the server; "" = the system's roots.
  std::string ca_file;
  // The client's PEM certificate (chain) and private key, for mutual TLS;
  // both or neither.
  std::string cert_file;
  std::string key_file;
  // The name checked against the server's certificate instead of the
  // target's host (and sent as SNI), e.g. "localhost" for "127.0.0.1:50051".
  std::string server_name;
  // Do not verify the server's certificate chain nor its name (ghz's
  // --skipTLS): the connection is encrypted but not authenticated. Testing only.
  bool skip_verify = false;
  // The bearer token sent as "authorization: Bearer <token>" on every call.
  // At most one of token and token_file; when both are empty and
  // token_from_env is set, ATTN_TOKEN (if set and not empty) is used.
  std::string token;
  std::string token_file;  // a file holding the token (surrounding whitespace trimmed)
  bool token_from_env = true;
};

// The security of a channel, loaded from SecurityOptions: credentials for the
// channel and the metadata of every call.
class ChannelSecurity {
 public:
  // Plaintext, no token.
  ChannelSecurity();

  bool tls() const { return tls_; }
  bool has_token() const { return !authorization_.empty(); }
  const std::shared_ptr<grpc::ChannelCredentials>& credentials() const { return credentials_; }
  const std::string& server_name() const { return server_name_; }

  // Adds this security's call metadata (the token, if any) to `context`; call
  // it on every context before its call starts.
  void Apply(grpc::ClientContext& context) const;

 private:
  friend absl::StatusOr<ChannelSecurity> LoadChannelSecurity(const SecurityOptions& options);

  bool tls_ = false;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::string server_name_;    // "" = the target's host
  std::string authorization_;  // "Bearer <token>", or "" for none
};

// Reads the files and the token `options` name. NOT_FOUND for a file that
// cannot be read; INVALID_ARGUMENT naming the option for a file that holds no
// PEM of the right kind, a cert_file without key_file (or the reverse), both
// token and token_file, or a token that is empty or not visible ASCII (the
// message never quotes the token).
absl::StatusOr<ChannelSecurity> LoadChannelSecurity(const SecurityOptions& options);

// attnserve's default service config, as JSON: `round_robin` over every
// address of the target; retries of UNAVAILABLE (a replica in lame duck or
// draining, a connection lost before the answer) for the idempotent Attend,
// Encode, ListMethods and grpc.health.v1.Health/Check, at most 5 attempts
// with backoff from 0.1 s doubling to 1 s (AttendStream is not retried); and,
// when `health_checking`, client-side health checking: a replica whose
// grpc.health.v1 status is not SERVING gets no new calls (one whose Watch
// answers UNIMPLEMENTED, such as HAProxy with deploy/haproxy/haproxy.cfg, is
// taken as healthy). Without it for health checks themselves: a channel that
// picks only SERVING replicas cannot ask one that is not.
std::string DefaultServiceConfig(bool health_checking = true);

// The channel arguments every attnserve client starts from: send and receive
// limits of `max_message_bytes`; keepalive pings every 30 s while calls are
// open, the connection failed after 10 s without an answer (attnd accepts
// pings every >= 10 s); retries on; and `service_config` ("" = none, i.e.
// gRPC's own pick_first without retries).
grpc::ChannelArguments DefaultChannelArguments(
    int max_message_bytes, const std::string& service_config = DefaultServiceConfig());

// A channel to `target` (a gRPC target: "host:port", "dns:///host:port",
// "unix:/path", ...) with `security` and `args` (plus the TLS name override,
// if any). Connects lazily, so it fails only on a malformed target:
// INVALID_ARGUMENT naming `what` (e.g. "target" or "HOST").
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                             const ChannelSecurity& security,
                                                             grpc::ChannelArguments args,
                                                             const std::string& what = "target");

// The contents of the file at `path`, which option `what` names; NOT_FOUND
// (naming `what`, the path and errno's text) when it cannot be read. The
// clients read every file an option names through it.
absl::StatusOr<std::string> ReadOptionFile(const std::string& path, absl::string_view what);

// `status` with the option names its message starts with (LoadChannelSecurity's
// "ca_file: ...", "cert_file, key_file: ...") replaced by `names` (e.g. a
// command line's "--cacert"); names not in the map stay.
absl::Status RenameOptionFields(const absl::Status& status,
                                const std::map<std::string, std::string>& names);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_CHANNEL_H_
