// AttnServer: the attnd gRPC server assembled from its parts: the attention
// service on the dynamic batcher, the standard health service and server
// reflection, on one listening address with insecure credentials; and the
// Prometheus metrics (server/metrics.h) on a separate HTTP listener.
//
// main.cc only parses flags, starts an AttnServer and waits for a signal;
// tests start one in-process on port 0.
//
// Thread-safety: port() and address() are immutable after Start;
// EnterLameDuck, Shutdown and Wait may be called from any thread,
// EnterLameDuck and Shutdown more than once.
#ifndef ATTNSERVE_SERVER_SERVER_H_
#define ATTNSERVE_SERVER_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/attention_service.h"
#include "server/auth.h"
#include "server/batcher.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/sessions.h"
#include "server/tensor_store.h"
#include "server/tls.h"

namespace attnserve::server {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see AttnServer::port).
  std::string address = "127.0.0.1:50051";
  // Compute (OpenMP) threads shared by the running batches; >= 1.
  int threads = 1;
  // The dynamic batcher's knobs (server/batcher.h); its compute_threads and
  // max_elements are taken from `threads` and `max_elements`.
  BatcherOptions batching;
  // Kernel runs at warm-up (WarmUp), before the health service says SERVING.
  int warmup_iterations = 3;
  // Largest request and response message, in bytes; 1 .. INT32_MAX (gRPC's limit type).
  int64_t max_message_bytes = int64_t{256} << 20;
  // Per request, in float32 elements (see ServiceOptions::max_elements); >= 1.
  int64_t max_elements = int64_t{1} << 28;
  // Directory of *.safetensors files loaded at start-up for `ref` tensors
  // (server/tensor_store.h); empty: none.
  std::string tensor_dir;
  // host:port of the HTTP listener serving /metrics (Prometheus text
  // format); port 0 picks a free port (see AttnServer::metrics_port); empty
  // serves no metrics.
  std::string metrics_address = "127.0.0.1:9464";
  // Bearer tokens required of scrapes (server/metrics_http.h); empty: none.
  std::string metrics_token_file;
  // PEM certificate chain and key: the metrics listener serves HTTPS. Both
  // or neither; read once at start.
  std::string metrics_tls_cert_file;
  std::string metrics_tls_key_file;
  // TLS / mutual TLS on `address` (server/tls.h); plaintext when not enabled.
  TlsOptions tls;
  // Bearer tokens required of every call but health (server/auth.h); empty:
  // no authentication.
  std::string auth_tokens_file;
  // Serves gRPC server reflection (with a token when tokens are on).
  bool reflection = true;
  // Allows plaintext on an address that is not loopback (--insecure);
  // without it, such an address without TLS is refused before binding.
  bool insecure = false;
  // Bytes of responses sent but not yet read by their clients above which a
  // new response is refused (server/pending_responses.h); >= 1.
  int64_t max_pending_response_bytes = int64_t{512} << 20;
  // The listener's per-connection limits (server/limits.h).
  ConnectionLimits connection;
  // Decode sessions: their count, cache budget and idle timeout
  // (server/sessions.h).
  SessionOptions sessions;
};

// INVALID_ARGUMENT naming the flag (--threads, ...) and its rule when
// `options` cannot be used.
absl::Status ValidateServerOptions(const ServerOptions& options);

class AttnServer {
 public:
  // Validates `options`, loads options.tensor_dir, builds and starts the
  // server, and marks it NOT_SERVING in the health service until WarmUp
  // has run (calls are served meanwhile; readiness is the health status). Errors:
  // INVALID_ARGUMENT (see ValidateServerOptions); TensorStore::Load's errors;
  // UNAVAILABLE when the address or the metrics address cannot be bound.
  static absl::StatusOr<std::unique_ptr<AttnServer>> Start(const ServerOptions& options);

  // Shuts down with no grace period unless Shutdown already ran.
  ~AttnServer();

  AttnServer(const AttnServer&) = delete;
  AttnServer& operator=(const AttnServer&) = delete;

  // The bound port (the picked one when options.address had port 0).
  int port() const { return port_; }
  // The address actually listened on: options.address with port().
  const std::string& address() const { return address_; }
  // The tensors loaded from options.tensor_dir (empty without one).
  const TensorStore& tensors() const { return *tensors_; }
  // The bound port of the metrics listener; 0 when metrics_address is empty.
  int metrics_port() const { return metrics_port_; }
  // The registry behind /metrics (tests read counters from it).
  prometheus::Registry& registry() { return *registry_; }
  // The metrics recorded into it (attnserve_inflight_requests for the idle trimmer).
  Metrics& metrics() { return *metrics_; }

  // Runs the kernels options.warmup_iterations times on a small request
  // (OpenMP's threads, the allocator and the caches start up here rather than
  // in a client's first call), then marks the health service SERVING unless
  // the lame duck or Shutdown has begun. Call once, after Start.
  void WarmUp();

  // The lame duck, before Shutdown: marks the health service NOT_SERVING and
  // refuses new Attend, Encode and AttendStream calls with UNAVAILABLE, while
  // accepted ones go on; returns at once. The caller waits out the lame-duck
  // period (so that clients and load balancers see NOT_SERVING and go
  // elsewhere while this server still answers), then calls Shutdown.
  void EnterLameDuck();

  // Re-reads options.auth_tokens_file (SIGHUP): the new set applies to
  // every later call; a file that cannot be read or holds no token keeps the
  // previous set. Logs one line either way (never a token).
  void ReloadAuthTokens();

  // Drains: marks the health service NOT_SERVING, stops accepting calls
  // (new ones get UNAVAILABLE), lets accepted ones (queued or computing)
  // finish for up to `grace` (then cancels them), and stops the batcher.
  // Blocks until done; later calls return at once.
  void Shutdown(absl::Duration grace);

  // Blocks until Shutdown has stopped the server.
  void Wait();

 private:
  AttnServer(const ServerOptions& options, std::unique_ptr<TensorStore> tensors);

  // Declaration order is destruction order reversed: the grpc::Server goes
  // first, then the service, then the batcher the service queues on, then the
  // tensors the service reads and the metrics the others record into.
  std::unique_ptr<TensorStore> tensors_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<MetricsListener> metrics_listener_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<SessionRegistry> sessions_;
  std::unique_ptr<AttentionServiceImpl> service_;
  std::unique_ptr<CertificateReloader> certificates_;  // null without TLS
  std::shared_ptr<TokenAuthenticator> authenticator_;  // null without tokens
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
  int metrics_port_ = 0;
  const int warmup_iterations_;
  const int compute_threads_;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  bool lame_duck_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

// Writes "<port>\n" to `path` atomically: to `path`.tmp first, then renamed
// over `path`, so a reader never sees a partial file. Errors: the failing
// step and errno text (INTERNAL), naming `flag` (e.g. "--port_file").
absl::Status WritePortFile(const std::string& path, int port,
                           absl::string_view flag = "--port_file");

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SERVER_H_
