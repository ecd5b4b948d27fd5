// MetricsListener: the HTTP listener serving /metrics (Prometheus text
// format) from a prometheus::Registry, on CivetWeb directly rather than
// through prometheus::Exposer, which offers neither a bearer-token check nor
// CivetWeb's timeouts.
//
// Hardening (finding 7 of issue 12: 8 connections that send half their
// headers held both of the Exposer's 2 threads for about a minute):
// kWorkerThreads threads, and a request whose headers are not complete
// within kRequestTimeoutMs is dropped, so a few stalled connections never
// block a scrape. Optional, off by default: bearer tokens for scrapes
// (--metrics_token_file, same format as --auth_tokens_file, re-read on
// SIGHUP; other requests get 401).
//
// No HTTPS: Debian 12's CivetWeb 1.15 is built with TLS, but it looks up
// SSL_get_peer_certificate in libssl at run time, which OpenSSL 3 no longer
// exports (it is a macro now), and its worker calls the null pointer on the
// first HTTPS request (SIGSEGV, tried). docs/OPERATIONS.md shows how to put
// TLS in front of the listener instead.
//
// Thread-safety: port() is immutable after Start; ReloadTokens may be called
// from any thread; CivetWeb's threads serve requests.
#ifndef ATTNSERVE_SERVER_METRICS_HTTP_H_
#define ATTNSERVE_SERVER_METRICS_HTTP_H_

#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

class CivetServer;

namespace attnserve::server {

class TokenAuthenticator;

inline constexpr int kMetricsWorkerThreads = 16;
inline constexpr int kMetricsRequestTimeoutMs = 3000;

struct MetricsListenerOptions {
  // host:port; port 0 picks a free port.
  std::string address;
  // Tokens a scrape must send as "Authorization: Bearer <token>"; empty: none.
  std::string token_file;
};

class MetricsListener {
 public:
  // Reads the token file (errors name --metrics_token_file), then listens. UNAVAILABLE when the
  // address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsListener>> Start(
      const MetricsListenerOptions& options, std::shared_ptr<prometheus::Registry> registry);

  // Stops listening (promptly: see the .cc).
  ~MetricsListener();

  MetricsListener(const MetricsListener&) = delete;
  MetricsListener& operator=(const MetricsListener&) = delete;

  int port() const { return port_; }
  bool has_tokens() const { return tokens_ != nullptr; }
  // Re-reads --metrics_token_file (a no-op without one); the previous set
  // stays on error.
  absl::Status ReloadTokens();

 private:
  class Handler;
  class BearerAuth;

  MetricsListener() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<TokenAuthenticator> tokens_;
  std::unique_ptr<Handler> handler_;
  std::unique_ptr<BearerAuth> auth_;
  std::unique_ptr<CivetServer> server_;
  std::string host_;
  int port_ = 0;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_METRICS_HTTP_H_
