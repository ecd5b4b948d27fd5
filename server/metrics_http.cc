#include "server/metrics_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/status_macros.h"
#include "server/auth.h"
#include "server/tls.h"

namespace attnserve::server {

// libmicrohttpd's connection timeout counts idle time only, so a client that
// trickles a byte a second would hold its connection forever. This cuts
// (shutdown(2), which libmicrohttpd then sees as the peer's hang-up) every
// connection whose request has not arrived complete kMetricsRequestTimeoutMs
// after it was accepted. libmicrohttpd reports a connection's close before it
// closes the socket, and both run under mu_, so a cut never hits a reused fd.
class MetricsListener::Deadlines {
 public:
  Deadlines() : thread_([this] { Run(); }) {}

  ~Deadlines() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

  void Started(MHD_Connection* connection, int fd) {
    absl::MutexLock lock(&mu_);
    pending_[connection] = Pending{fd, absl::Now() + absl::Milliseconds(kMetricsRequestTimeoutMs)};
    ++started_;
  }
  // The request arrived complete: no deadline from now on (the idle timeout
  // still applies).
  void Answered(MHD_Connection* connection) {
    absl::MutexLock lock(&mu_);
    pending_.erase(connection);
  }
  void Closed(MHD_Connection* connection) { Answered(connection); }

 private:
  struct Pending {
    int fd;
    absl::Time deadline;
  };

  void Run() {
    absl::MutexLock lock(&mu_);
    while (!stop_) {
      absl::Time next = absl::InfiniteFuture();
      const absl::Time now = absl::Now();
      for (auto& [connection, pending] : pending_) {
        if (pending.deadline <= now) {
          shutdown(pending.fd, SHUT_RDWR);
          pending.deadline = absl::InfiniteFuture();  // once; the close erases it
        }
        next = std::min(next, pending.deadline);
      }
      // Wakes at the next deadline, or when a connection starts or we stop.
      const uint64_t seen = started_;
      auto changed = [this, seen]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || started_ != seen; };
      mu_.AwaitWithDeadline(absl::Condition(&changed), next);
    }
  }

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t started_ ABSL_GUARDED_BY(mu_) = 0;  // connections ever started
  absl::flat_hash_map<MHD_Connection*, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// What libmicrohttpd's callbacks need.
struct MetricsListener::Callbacks {
  prometheus::Registry* registry = nullptr;
  TokenAuthenticator* tokens = nullptr;  // null: no token check
  Deadlines deadlines;
  // libmicrohttpd's errors while it starts (why a bind or the TLS set-up
  // failed); dropped afterwards, when they are about clients (plain HTTP on
  // the TLS port, a reset connection) and would let any client fill the log.
  absl::Mutex log_mu;
  bool starting ABSL_GUARDED_BY(log_mu) = true;
  std::string start_log ABSL_GUARDED_BY(log_mu);
};

namespace {

MHD_Result Respond(MHD_Connection* connection, unsigned int code, const std::string& content_type,
                   const std::string& body,
                   std::initializer_list<std::pair<const char*, const char*>> headers = {}) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type.c_str());
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
  for (const auto& [name, value] : headers) MHD_add_response_header(response, name, value);
  const MHD_Result queued = MHD_queue_response(connection, code, response);
  MHD_destroy_response(response);
  return queued;
}

MHD_Result Serve(void* cls, MHD_Connection* connection, const char* url, const char* method,
                 const char* /*version*/, const char* /*upload_data*/, size_t* /*upload_data_size*/,
                 void** /*request_context*/) {
  auto* callbacks = static_cast<MetricsListener::Callbacks*>(cls);
  // The request arrived complete: its deadline is met.
  callbacks->deadlines.Answered(connection);
  if (callbacks->tokens != nullptr) {
    // Every path, so nothing is reachable without a token; no hint of which
    // tokens exist.
    const char* header =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (header == nullptr || !callbacks->tokens->Accepts(BearerToken(header))) {
      return Respond(connection, MHD_HTTP_UNAUTHORIZED, "text/plain; charset=utf-8",
                     "401 Unauthorized: send \"Authorization: Bearer <token>\" with a token of "
                     "--metrics_token_file\n",
                     {{MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"attnd metrics\""}});
    }
  }
  const absl::string_view path(url);
  if (path != "/metrics" && !absl::StartsWith(path, "/metrics/")) {
    return Respond(connection, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
                   "404 Not Found: attnd serves /metrics\n");
  }
  if (std::strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
      std::strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    return Respond(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                   "405 Method Not Allowed\n", {{MHD_HTTP_HEADER_ALLOW, "GET, HEAD"}});
  }
  return Respond(connection, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                 prometheus::TextSerializer().Serialize(callbacks->registry->Collect()));
}

void Log(void* cls, const char* format, va_list args) {
  auto* callbacks = static_cast<MetricsListener::Callbacks*>(cls);
  char line[512];
  std::vsnprintf(line, sizeof(line), format, args);
  absl::MutexLock lock(&callbacks->log_mu);
  if (callbacks->starting) {
    absl::StrAppend(&callbacks->start_log, absl::StripTrailingAsciiWhitespace(line), "; ");
  }
}

void Notify(void* cls, MHD_Connection* connection, void** /*socket_context*/,
            MHD_ConnectionNotificationCode code) {
  auto* callbacks = static_cast<MetricsListener::Callbacks*>(cls);
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const MHD_ConnectionInfo* info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info != nullptr) callbacks->deadlines.Started(connection, info->connect_fd);
  } else {
    callbacks->deadlines.Closed(connection);
  }
}

// The socket address to bind for "host:port": a numeric IPv4 or bracketed
// IPv6 host, or a name (its first IPv4 address, else its first IPv6).
absl::StatusOr<sockaddr_storage> Resolve(const std::string& address) {
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int error = getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  if (error != 0) {
    return absl::UnavailableError(absl::StrCat("--metrics_address=", address,
                                               ": could not listen (", gai_strerror(error), ")"));
  }
  const addrinfo* chosen = found;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      chosen = a;
      break;
    }
  }
  sockaddr_storage bound{};
  std::memcpy(&bound, chosen->ai_addr, chosen->ai_addrlen);
  freeaddrinfo(found);
  return bound;
}

}  // namespace

MetricsListener::MetricsListener() = default;

absl::StatusOr<std::unique_ptr<MetricsListener>> MetricsListener::Start(
    const MetricsListenerOptions& options, std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsListener> listener(new MetricsListener());
  listener->registry_ = std::move(registry);
  if (!options.token_file.empty()) {
    ATTN_ASSIGN_OR_RETURN(listener->tokens_,
                          TokenAuthenticator::Create(options.token_file, /*metrics=*/nullptr,
                                                     "--metrics_token_file"));
  }
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    TlsOptions tls;
    tls.cert_file = options.tls_cert_file;
    tls.key_file = options.tls_key_file;
    ATTN_ASSIGN_OR_RETURN(
        CertificateSet set,
        ReadCertificateSet(tls, {"--metrics_tls_cert_file", "--metrics_tls_key_file", ""}));
    if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
      return absl::UnimplementedError(
          "--metrics_tls_cert_file: this libmicrohttpd is built without TLS");
    }
    listener->tls_cert_ = std::move(set.cert_chain);
    listener->tls_key_ = std::move(set.private_key);
  }
  ATTN_ASSIGN_OR_RETURN(const sockaddr_storage bind_address, Resolve(options.address));

  listener->callbacks_ = std::make_unique<Callbacks>();
  Callbacks* callbacks = listener->callbacks_.get();
  callbacks->registry = listener->registry_.get();
  callbacks->tokens = listener->tokens_.get();
  unsigned int flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
  if (bind_address.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  if (listener->has_tls()) flags |= MHD_USE_TLS;
  const MHD_OptionItem tls_options[] = {
      {MHD_OPTION_HTTPS_MEM_CERT, 0, const_cast<char*>(listener->tls_cert_.c_str())},
      {MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(listener->tls_key_.c_str())},
      // TLS 1.2 and 1.3 only, as gRPC's listener.
      {MHD_OPTION_HTTPS_PRIORITIES, 0,
       const_cast<char*>("NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2")},
      {MHD_OPTION_END, 0, nullptr},
  };
  const MHD_OptionItem no_options[] = {{MHD_OPTION_END, 0, nullptr}};
  listener->daemon_ = MHD_start_daemon(
      flags, /*port=*/0, /*apc=*/nullptr, nullptr, &Serve, callbacks, MHD_OPTION_SOCK_ADDR,
      reinterpret_cast<const sockaddr*>(&bind_address),
      // Idle connections (kept alive, or stalled after the request) close.
      MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned int>((kMetricsRequestTimeoutMs + 999) / 1000),
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned int>(kMetricsConnectionLimit),
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, static_cast<unsigned int>(kMetricsConnectionsPerIp),
      MHD_OPTION_NOTIFY_CONNECTION, &Notify, callbacks, MHD_OPTION_EXTERNAL_LOGGER, &Log, callbacks,
      MHD_OPTION_ARRAY, listener->has_tls() ? tls_options : no_options, MHD_OPTION_END);
  std::string start_log;
  {
    absl::MutexLock lock(&callbacks->log_mu);
    callbacks->starting = false;
    start_log = std::move(callbacks->start_log);
  }
  if (listener->daemon_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("--metrics_address=", options.address,
                                               ": could not listen (",
                                               absl::StripSuffix(start_log, "; "), ")"));
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(listener->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  listener->port_ = info == nullptr ? 0 : info->port;
  return listener;
}

absl::Status MetricsListener::ReloadTokens() {
  if (tokens_ == nullptr) return absl::OkStatus();
  return tokens_->Reload();
}

// libmicrohttpd wakes its thread through its pipe (MHD_USE_ITC), closes every
// connection and joins the thread; then nothing calls back any more.
MetricsListener::~MetricsListener() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

}  // namespace attnserve::server
