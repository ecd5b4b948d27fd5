#include "server/metrics_http.h"

#include <CivetServer.h>
#include <civetweb.h>
#include <netdb.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/status_macros.h"
#include "server/auth.h"

namespace attnserve::server {
namespace {

// Connects to host:port and hangs up at once; a wildcard host means loopback.
void Knock(std::string host, int port) {
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const bool connected = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    close(fd);
    if (connected) break;
  }
  freeaddrinfo(found);
}

void Respond(mg_connection* conn, int code, const char* reason, const std::string& content_type,
             const std::string& body, const char* extra_headers = "") {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: "
            "close\r\n\r\n",
            code, reason, content_type.c_str(), body.size(), extra_headers);
  mg_write(conn, body.data(), body.size());
}

}  // namespace

class MetricsListener::Handler : public CivetHandler {
 public:
  explicit Handler(std::shared_ptr<prometheus::Registry> registry)
      : registry_(std::move(registry)) {}

  bool handleGet(CivetServer* /*server*/, mg_connection* conn) override {
    const std::string body = prometheus::TextSerializer().Serialize(registry_->Collect());
    Respond(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
    return true;
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
};

// Admits a request with a known "Authorization: Bearer <token>"; answers
// any other with 401 (and no hint of which tokens exist).
class MetricsListener::BearerAuth : public CivetAuthHandler {
 public:
  explicit BearerAuth(std::shared_ptr<TokenAuthenticator> tokens) : tokens_(std::move(tokens)) {}

  bool authorize(CivetServer* /*server*/, mg_connection* conn) override {
    const char* header = mg_get_header(conn, "Authorization");
    if (header != nullptr && tokens_->Accepts(BearerToken(header))) return true;
    Respond(conn, 401, "Unauthorized", "text/plain; charset=utf-8",
            "401 Unauthorized: send \"Authorization: Bearer <token>\" with a token of "
            "--metrics_token_file\n",
            "WWW-Authenticate: Bearer realm=\"attnd metrics\"\r\n");
    return false;
  }

 private:
  std::shared_ptr<TokenAuthenticator> tokens_;
};

absl::StatusOr<std::unique_ptr<MetricsListener>> MetricsListener::Start(
    const MetricsListenerOptions& options, std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsListener> listener(new MetricsListener());
  listener->registry_ = std::move(registry);
  listener->host_ = options.address.substr(0, options.address.rfind(':'));
  if (!options.token_file.empty()) {
    ATTN_ASSIGN_OR_RETURN(listener->tokens_,
                          TokenAuthenticator::Create(options.token_file, /*metrics=*/nullptr,
                                                     "--metrics_token_file"));
  }
  const std::vector<std::string> civet_options = {
      "listening_ports",
      options.address,
      "num_threads",
      std::to_string(kMetricsWorkerThreads),
      // A connection whose request headers are not complete by then is
      // dropped (CivetWeb measures from the request's start, so trickling
      // bytes does not extend it).
      "request_timeout_ms",
      std::to_string(kMetricsRequestTimeoutMs),
      "enable_keep_alive",
      "no",
  };
  try {
    listener->server_ = std::make_unique<CivetServer>(civet_options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("--metrics_address=", options.address, ": could not listen (", e.what(), ")"));
  }
  listener->handler_ = std::make_unique<Handler>(listener->registry_);
  if (listener->tokens_ != nullptr) {
    listener->auth_ = std::make_unique<BearerAuth>(listener->tokens_);
    // Every path, so nothing is reachable without a token.
    listener->server_->addAuthHandler("/", listener->auth_.get());
  }
  listener->server_->addHandler("/metrics", listener->handler_.get());
  const std::vector<int> ports = listener->server_->getListeningPorts();
  listener->port_ = ports.empty() ? 0 : ports.front();
  return listener;
}

absl::Status MetricsListener::ReloadTokens() {
  if (tokens_ == nullptr) return absl::OkStatus();
  return tokens_->Reload();
}

// CivetWeb's listening thread sees the stop only when its poll() returns,
// which with no scrape coming takes up to SOCKET_TIMEOUT_QUANTUM (2 s in
// civetweb 1.15; about 1 s added to every exit). A connection to the port
// wakes the poll at once, so knock until the stop has gone through.
MetricsListener::~MetricsListener() {
  if (server_ == nullptr) return;
  std::atomic<bool> stopped{false};
  std::thread stopper([this, &stopped] {
    server_->close();
    stopped.store(true);
  });
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (!stopped.load() && absl::Now() < give_up) {
    Knock(host_, port_);
    absl::SleepFor(absl::Milliseconds(5));
  }
  stopper.join();
  server_.reset();
}

}  // namespace attnserve::server
