// MetricsListener: the HTTP(S) listener serving /metrics (Prometheus text
// format) from a prometheus::Registry, on GNU libmicrohttpd (built with
// GnuTLS in Debian 12) rather than prometheus::Exposer, which offers neither
// a bearer-token check, timeouts nor TLS.
//
// Hardening (finding 7 of issue 12: 8 connections that send half their
// headers held both of the Exposer's 2 threads for about a minute): one
// epoll thread serves every connection without blocking on any, at most
// kMetricsConnectionLimit connections (kMetricsConnectionsPerIp from one
// address), and a connection whose request has not arrived complete within
// kMetricsRequestTimeoutMs of its accept is cut (trickling bytes does not
// extend it; idle connections are also closed after that long).
//
// Optional, both off by default: bearer tokens for scrapes
// (--metrics_token_file, same format as --auth_tokens_file, re-read on
// SIGHUP; other requests get 401), and HTTPS (--metrics_tls_cert_file,
// --metrics_tls_key_file: PEM, read and checked once at start; unlike
// gRPC's TLS they are not rotated without a restart).
//
// Thread-safety: port() is immutable after Start; ReloadTokens may be called
// from any thread; libmicrohttpd's thread serves requests.
#ifndef ATTNSERVE_SERVER_METRICS_HTTP_H_
#define ATTNSERVE_SERVER_METRICS_HTTP_H_

#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct MHD_Daemon;

namespace attnserve::server {

class TokenAuthenticator;

inline constexpr int kMetricsConnectionLimit = 512;
inline constexpr int kMetricsConnectionsPerIp = 64;
inline constexpr int kMetricsRequestTimeoutMs = 3000;

struct MetricsListenerOptions {
  // host:port; port 0 picks a free port. The host is an IPv4 or bracketed
  // IPv6 address or a name (its first IPv4 address, else its first IPv6).
  std::string address;
  // Tokens a scrape must send as "Authorization: Bearer <token>"; empty: none.
  std::string token_file;
  // PEM certificate chain (leaf first) and its private key: serve HTTPS.
  // Both or neither; empty: plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
};

class MetricsListener {
 public:
  // Reads the token file (errors name --metrics_token_file) and the TLS files
  // (errors name --metrics_tls_cert_file or --metrics_tls_key_file and the
  // file), then listens. UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsListener>> Start(
      const MetricsListenerOptions& options, std::shared_ptr<prometheus::Registry> registry);

  // Stops listening and closes every connection (promptly: libmicrohttpd's
  // thread is woken through its own pipe).
  ~MetricsListener();

  MetricsListener(const MetricsListener&) = delete;
  MetricsListener& operator=(const MetricsListener&) = delete;

  int port() const { return port_; }
  bool has_tokens() const { return tokens_ != nullptr; }
  bool has_tls() const { return !tls_key_.empty(); }
  // Re-reads --metrics_token_file (a no-op without one); the previous set
  // stays on error.
  absl::Status ReloadTokens();

  // The state libmicrohttpd's callbacks (in the .cc) use.
  struct Callbacks;

 private:
  class Deadlines;

  MetricsListener();

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<TokenAuthenticator> tokens_;
  // What libmicrohttpd's callbacks use; outlives the daemon.
  std::unique_ptr<Callbacks> callbacks_;
  // PEM text handed to libmicrohttpd (kept for the daemon's lifetime).
  std::string tls_cert_;
  std::string tls_key_;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_METRICS_HTTP_H_
