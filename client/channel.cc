#include "client/channel.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace attnserve::client {
namespace {

// A PEM file of the kind `label` names ("CERTIFICATE", or "PRIVATE KEY" for
// any of PKCS#8, RSA and EC keys). Checked here because gRPC reports a bad
// file only as a failed handshake (UNAVAILABLE) on the first call.
absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what,
                                    absl::string_view label) {
  absl::StatusOr<std::string> text = ReadOptionFile(path, what);
  if (!text.ok()) return text.status();
  const bool found = label == "CERTIFICATE"
                         ? absl::StrContains(*text, "-----BEGIN CERTIFICATE-----")
                         : absl::StrContains(*text, "PRIVATE KEY-----");
  if (!found) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", path, " holds no PEM ", label, " block"));
  }
  return text;
}

// A token may be any visible ASCII text (RFC 6750's b64token is a subset);
// anything else could not travel in a metadata value or was not meant as
// one. The message names where the token came from, never the token.
absl::Status CheckToken(absl::string_view token, absl::string_view source) {
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": the token is empty"));
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": the token must be visible ASCII (no spaces or control characters)"));
    }
  }
  return absl::OkStatus();
}

// The token `options` asks for ("" = none).
absl::StatusOr<std::string> LoadToken(const SecurityOptions& options) {
  if (!options.token.empty() && !options.token_file.empty()) {
    return absl::InvalidArgumentError("token, token_file: give at most one");
  }
  if (!options.token.empty()) {
    absl::Status status = CheckToken(options.token, "token");
    if (!status.ok()) return status;
    return options.token;
  }
  if (!options.token_file.empty()) {
    absl::StatusOr<std::string> text = ReadOptionFile(options.token_file, "token_file");
    if (!text.ok()) return text.status();
    const std::string token(absl::StripAsciiWhitespace(*text));
    absl::Status status = CheckToken(token, absl::StrCat("token_file ", options.token_file));
    if (!status.ok()) return status;
    return token;
  }
  if (options.token_from_env) {
    const char* env = std::getenv(kTokenEnvVariable);
    if (env != nullptr && *env != '\0') {
      const std::string token(absl::StripAsciiWhitespace(env));
      absl::Status status = CheckToken(token, kTokenEnvVariable);
      if (!status.ok()) return status;
      return token;
    }
  }
  return std::string();
}

}  // namespace

absl::StatusOr<std::string> ReadOptionFile(const std::string& path, absl::string_view what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat(what, ": cannot open ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return absl::NotFoundError(absl::StrCat(what, ": cannot read ", path));
  return text.str();
}

ChannelSecurity::ChannelSecurity() : credentials_(grpc::InsecureChannelCredentials()) {}

void ChannelSecurity::Apply(grpc::ClientContext& context) const {
  if (!authorization_.empty()) context.AddMetadata("authorization", authorization_);
}

absl::StatusOr<ChannelSecurity> LoadChannelSecurity(const SecurityOptions& options) {
  ChannelSecurity security;
  absl::StatusOr<std::string> token = LoadToken(options);
  if (!token.ok()) return token.status();
  if (!token->empty()) security.authorization_ = absl::StrCat("Bearer ", *token);

  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "cert_file, key_file: give both (mutual TLS) or neither");
  }
  security.tls_ = options.tls || options.skip_verify || !options.ca_file.empty() ||
                  !options.cert_file.empty() || !options.server_name.empty();
  if (!security.tls_) return security;

  std::string roots, cert, key;
  if (!options.ca_file.empty()) {
    absl::StatusOr<std::string> pem = ReadPem(options.ca_file, "ca_file", "CERTIFICATE");
    if (!pem.ok()) return pem.status();
    roots = *std::move(pem);
  }
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> pem = ReadPem(options.cert_file, "cert_file", "CERTIFICATE");
    if (!pem.ok()) return pem.status();
    cert = *std::move(pem);
    pem = ReadPem(options.key_file, "key_file", "PRIVATE KEY");
    if (!pem.ok()) return pem.status();
    key = *std::move(pem);
  }
  for (char c : options.server_name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_' &&
        c != ':') {
      return absl::InvalidArgumentError(absl::StrCat(
          "server_name: expected a host name, got \"", options.server_name.substr(0, 64), "\""));
    }
  }
  security.server_name_ = options.server_name;

  if (!options.skip_verify) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = std::move(roots);
    ssl.pem_cert_chain = std::move(cert);
    ssl.pem_private_key = std::move(key);
    security.credentials_ = grpc::SslCredentials(ssl);
    return security;
  }
  // SslCredentials always verifies; gRPC's (experimental) TLS credentials can
  // be told not to, with a verifier that accepts any chain and no host check.
  grpc::experimental::TlsChannelCredentialsOptions tls;
  std::vector<grpc::experimental::IdentityKeyCertPair> identity;
  if (!cert.empty()) identity.push_back({std::move(key), std::move(cert)});
  const bool has_identity = !identity.empty();
  if (!roots.empty() || has_identity) {
    tls.set_certificate_provider(
        std::make_shared<grpc::experimental::StaticDataCertificateProvider>(roots, identity));
  }
  if (!roots.empty()) tls.watch_root_certs();
  if (has_identity) tls.watch_identity_key_cert_pairs();
  tls.set_verify_server_certs(false);
  tls.set_check_call_host(false);
  tls.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  security.credentials_ = grpc::experimental::TlsCredentials(tls);
  if (security.credentials_ == nullptr) {
    return absl::InvalidArgumentError("skip_verify: gRPC refused the TLS options");
  }
  return security;
}

std::string DefaultServiceConfig(bool health_checking) {
  // gRFC A6 (retries) and A17 (client-side health checking). Only UNAVAILABLE
  // is retried: it says nothing was computed; any other code is the answer.
  constexpr absl::string_view kConfig = R"json({
  "loadBalancingConfig": [{"round_robin": {}}],%s
  "methodConfig": [{
    "name": [
      {"service": "attnserve.v1.AttentionService", "method": "Attend"},
      {"service": "attnserve.v1.AttentionService", "method": "Encode"},
      {"service": "attnserve.v1.AttentionService", "method": "ListMethods"},
      {"service": "grpc.health.v1.Health", "method": "Check"}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]}}]})json";
  const size_t at = kConfig.find("%s");
  return absl::StrCat(kConfig.substr(0, at),
                      health_checking ? "\n  \"healthCheckConfig\": {\"serviceName\": \"\"}," : "",
                      kConfig.substr(at + 2));
}

grpc::ChannelArguments DefaultChannelArguments(int max_message_bytes,
                                               const std::string& service_config) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(max_message_bytes);
  args.SetMaxReceiveMessageSize(max_message_bytes);
  // A connection that died without a FIN (a replica's host gone) is noticed
  // within 40 s instead of at the next call's deadline.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
  if (!service_config.empty()) args.SetServiceConfigJSON(service_config);
  return args;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                             const ChannelSecurity& security,
                                                             grpc::ChannelArguments args,
                                                             const std::string& what) {
  if (target.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": must not be empty"));
  for (char c : target) {
    if (std::isspace(static_cast<unsigned char>(c)) ||
        std::iscntrl(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": must not contain spaces or control characters, got \"", target, "\""));
    }
  }
  if (!security.server_name().empty()) args.SetSslTargetNameOverride(security.server_name());
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(target, security.credentials(), args);
  // gRPC does not fail on a target it cannot parse; it returns a "lame"
  // channel that fails every call. A fresh real channel is IDLE, a lame one
  // is not.
  if (channel == nullptr || channel->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_IDLE) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": \"", target, "\" is not a valid gRPC target"));
  }
  return channel;
}

absl::Status RenameOptionFields(const absl::Status& status,
                                const std::map<std::string, std::string>& names) {
  const absl::string_view message = status.message();
  std::string renamed;
  size_t i = 0;
  while (true) {
    size_t end = i;
    while (end < message.size() &&
           (std::isalnum(static_cast<unsigned char>(message[end])) || message[end] == '_')) {
      ++end;
    }
    const auto name = names.find(std::string(message.substr(i, end - i)));
    if (name == names.end()) break;
    renamed += name->second;
    i = end;
    if (message.substr(i, 2) != ", ") break;
    renamed += ", ";
    i += 2;
  }
  absl::StrAppend(&renamed, message.substr(i));
  return absl::Status(status.code(), renamed);
}

}  // namespace attnserve::client
