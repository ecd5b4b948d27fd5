#include "server/server.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.pb.h"
#include "kernels/attention.h"
#include "kernels/status_macros.h"
#include "server/limits.h"

#ifndef ATTN_VERSION
#define ATTN_VERSION "0.0.0"
#endif

namespace attnserve::server {
namespace {

// The host and port of "host:port" ("[::1]:0" keeps its brackets in host).
struct HostPort {
  std::string host;
  int port = 0;
};

absl::StatusOr<HostPort> SplitAddress(absl::string_view address) {
  const size_t colon = address.rfind(':');
  const absl::string_view port_text =
      colon == absl::string_view::npos ? absl::string_view() : address.substr(colon + 1);
  int port = -1;
  if (colon == absl::string_view::npos || colon == 0 || port_text.empty() ||
      !std::all_of(port_text.begin(), port_text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--address: expected host:port with port 0..65535 (0 picks a free port), got '", address,
        "'"));
  }
  return HostPort{std::string(address.substr(0, colon)), port};
}

std::string ErrnoText(int error) { return std::strerror(error); }

// --reflection=false: linking gRPC's reflection library registers its
// plugin with every ServerBuilder (a static initializer), so it is taken out
// of this builder's plugins instead of never being added.
class WithoutReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
                                    return absl::StartsWith(plugin->name(),
                                                            "proto_server_reflection");
                                  }),
                   plugins->end());
  }
};

BatcherOptions BatcherOf(const ServerOptions& options) {
  BatcherOptions batching = options.batching;
  batching.compute_threads = options.threads;
  batching.max_elements = options.max_elements;
  batching.max_result_bytes = ResultBudgetBytes(options.max_message_bytes);
  return batching;
}

// The warm-up request: `none` at a typical serving shape (B=1, H=8, S=32, D=64).
kernels::AttendArgs WarmUpArgs() {
  kernels::AttendArgs args;
  args.method = kernels::MethodKind::kNone;
  const std::vector<int64_t> shape = {1, 8, 32, 64};
  std::vector<float> values(static_cast<size_t>(8 * 32 * 64));
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 17) / 17.0f - 0.5f;
  for (const char* name : {"q", "k", "v"}) args.inputs[name] = kernels::Tensor(shape, values);
  return args;
}

}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& options) {
  ATTN_RETURN_IF_ERROR(SplitAddress(options.address).status());
  if (!options.metrics_address.empty()) {
    absl::Status metrics = SplitAddress(options.metrics_address).status();
    if (!metrics.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--metrics_address: expected host:port with port 0..65535 (0 picks a free port) or "
          "empty (no metrics listener), got '",
          options.metrics_address, "'"));
    }
  }
  if (options.metrics_tls_cert_file.empty() != options.metrics_tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--metrics_tls_cert_file and --metrics_tls_key_file: give both (HTTPS metrics) or "
        "neither (plain HTTP)");
  }
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads: must be >= 1, got ", options.threads));
  }
  if (options.max_message_bytes < 1 ||
      options.max_message_bytes > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_message_bytes: must be in 1..", std::numeric_limits<int32_t>::max(),
                     " (gRPC's limit is an int), got ", options.max_message_bytes));
  }
  if (options.max_elements < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_elements: must be >= 1, got ", options.max_elements));
  }
  ATTN_RETURN_IF_ERROR(ValidateBatcherOptions(BatcherOf(options)));
  ATTN_RETURN_IF_ERROR(ValidateTlsOptions(options.tls));
  if (!options.tls.enabled() && !options.insecure &&
      !IsLoopbackHost(SplitAddress(options.address)->host)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--address=", options.address,
        " is not a loopback address: serve it with TLS (--tls_cert_file, --tls_key_file) or "
        "pass --insecure to accept plaintext that anyone on the network can read"));
  }
  if (!options.auth_tokens_file.empty() && !options.tls.enabled() &&
      !IsLoopbackHost(SplitAddress(options.address)->host)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--auth_tokens_file: bearer tokens in plaintext on --address=", options.address,
        " (not loopback) could be read off the network: add TLS (--tls_cert_file, "
        "--tls_key_file) or bind loopback behind a TLS-terminating proxy"));
  }
  ATTN_RETURN_IF_ERROR(ValidateConnectionLimits(options.connection));
  ATTN_RETURN_IF_ERROR(ValidateSessionOptions(options.sessions));
  if (options.max_pending_response_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_pending_response_bytes: must be >= 1, got ", options.max_pending_response_bytes));
  }
  if (options.warmup_iterations < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_iterations: must be >= 0, got ", options.warmup_iterations));
  }
  return absl::OkStatus();
}

AttnServer::AttnServer(const ServerOptions& options, std::unique_ptr<TensorStore> tensors)
    : tensors_(std::move(tensors)),
      registry_(std::make_shared<prometheus::Registry>()),
      metrics_(std::make_unique<Metrics>(*registry_, ATTN_VERSION)),
      batcher_(std::make_unique<Batcher>(BatcherOf(options), metrics_.get())),
      sessions_(std::make_unique<SessionRegistry>(options.sessions, *registry_)),
      service_(std::make_unique<AttentionServiceImpl>(
          batcher_.get(), metrics_.get(),
          ServiceOptions{options.max_elements, options.max_message_bytes, tensors_.get(),
                         options.max_pending_response_bytes},
          sessions_.get())),
      warmup_iterations_(options.warmup_iterations),
      compute_threads_(options.threads) {}

absl::StatusOr<std::unique_ptr<AttnServer>> AttnServer::Start(const ServerOptions& options) {
  ATTN_RETURN_IF_ERROR(ValidateServerOptions(options));
  ATTN_ASSIGN_OR_RETURN(HostPort host_port, SplitAddress(options.address));

  // Both are process-wide switches read when a ServerBuilder is created.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // gRPC's default health service is built on its own (upb) messages and puts
  // no descriptor into protobuf's generated pool, where reflection looks: it
  // would list grpc.health.v1.Health but not resolve it (ghz without --proto:
  // "Symbol not found"). Using our generated health.pb.cc links it in, and its
  // static initializer registers the file.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();

  // Before listening: a client never sees a server whose refs are not loaded.
  std::unique_ptr<TensorStore> tensors = std::make_unique<TensorStore>();
  if (!options.tensor_dir.empty()) {
    ATTN_ASSIGN_OR_RETURN(tensors, TensorStore::Load(options.tensor_dir, options.max_elements));
  }
  std::unique_ptr<AttnServer> server(new AttnServer(options, std::move(tensors)));
  if (!options.metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsListener>> listener = MetricsListener::Start(
        MetricsListenerOptions{options.metrics_address, options.metrics_token_file,
                               options.metrics_tls_cert_file, options.metrics_tls_key_file},
        server->registry_);
    if (!listener.ok()) {
      // Nothing ran yet; the destructor has only the batcher to stop.
      absl::MutexLock lock(&server->shutdown_mu_);
      server->shut_down_ = true;
      return listener.status();
    }
    server->metrics_listener_ = *std::move(listener);
    server->metrics_port_ = server->metrics_listener_->port();
  }
  if (!options.auth_tokens_file.empty()) {
    absl::StatusOr<std::shared_ptr<TokenAuthenticator>> authenticator =
        TokenAuthenticator::Create(options.auth_tokens_file, server->metrics_.get());
    if (!authenticator.ok()) {
      absl::MutexLock lock(&server->shutdown_mu_);
      server->shut_down_ = true;
      return authenticator.status();
    }
    server->authenticator_ = *std::move(authenticator);
  }
  // gRPC's insecure credentials take no AuthMetadataProcessor; local
  // credentials are the same plaintext on the wire (any client's insecure
  // channel connects) and do, for loopback peers (Validate allows tokens in
  // plaintext only on a loopback address).
  std::shared_ptr<grpc::ServerCredentials> credentials =
      server->authenticator_ != nullptr ? grpc::experimental::LocalServerCredentials(LOCAL_TCP)
                                        : grpc::InsecureServerCredentials();
  if (options.tls.enabled()) {
    absl::StatusOr<std::unique_ptr<CertificateReloader>> certificates =
        CertificateReloader::Create(options.tls);
    if (!certificates.ok()) {
      absl::MutexLock lock(&server->shutdown_mu_);
      server->shut_down_ = true;
      return certificates.status();
    }
    server->certificates_ = *std::move(certificates);
    credentials = server->certificates_->credentials();
  }
  if (server->authenticator_ != nullptr) {
    credentials->SetAuthMetadataProcessor(server->authenticator_);
  }
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(options.address, credentials, &selected_port);
  // gRPC sets SO_REUSEPORT by default: a second attnd on the same port would
  // then start and silently share the traffic instead of failing to bind.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  ApplyConnectionLimits(options.connection, &builder);
  builder.RegisterService(server->service_.get());
  if (!options.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || selected_port == 0) {
    if (server->server_ != nullptr) server->server_->Shutdown();
    // Nothing ran yet; the destructor has only the batcher to stop.
    server->server_.reset();
    {
      absl::MutexLock lock(&server->shutdown_mu_);
      server->shut_down_ = true;
    }
    return absl::UnavailableError(
        absl::StrCat("--address=", options.address,
                     ": could not listen (port in use, or not an address of this host)"));
  }
  server->port_ = selected_port;
  server->address_ = absl::StrCat(host_port.host, ":", selected_port);
  if (grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  return server;
}

void AttnServer::ReloadAuthTokens() {
  if (metrics_listener_ != nullptr && metrics_listener_->has_tokens()) {
    const absl::Status reloaded = metrics_listener_->ReloadTokens();
    std::fprintf(
        stderr, "attnd: SIGHUP: %s\n",
        reloaded.ok()
            ? "--metrics_token_file reloaded"
            : absl::StrCat("keeping the previous metrics tokens: ", reloaded.message()).c_str());
  }
  if (authenticator_ == nullptr) {
    std::fprintf(stderr, "attnd: SIGHUP: no --auth_tokens_file to reload\n");
    return;
  }
  const absl::Status reloaded = authenticator_->Reload();
  if (reloaded.ok()) {
    std::fprintf(stderr, "attnd: SIGHUP: %zu tokens from --auth_tokens_file\n",
                 authenticator_->size());
  } else {
    std::fprintf(stderr, "attnd: SIGHUP: keeping the previous %zu tokens: %s\n",
                 authenticator_->size(), std::string(reloaded.message()).c_str());
  }
}

void AttnServer::WarmUp() {
  kernels::ComputeOptions options;
  options.threads = compute_threads_;
  for (int i = 0; i < warmup_iterations_; ++i) {
    // Fixed, valid arguments: a failure here is a broken build, not a request.
    absl::StatusOr<kernels::AttendResult> result = kernels::Attend(WarmUpArgs(), options);
    if (!result.ok()) {
      std::fprintf(stderr, "attnd: warm-up failed: %s\n",
                   std::string(result.status().message()).c_str());
      std::abort();
    }
  }
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_ || lame_duck_) return;
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
  }
}

void AttnServer::EnterLameDuck() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_ || lame_duck_) return;
  lame_duck_ = true;
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  service_->RefuseNewCalls();
}

AttnServer::~AttnServer() {
  Shutdown(absl::ZeroDuration());
  batcher_->Stop();
  metrics_listener_.reset();
}

void AttnServer::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  const absl::Time deadline = absl::Now() + grace;
  // New calls get UNAVAILABLE from the service while the accepted ones
  // finish; only then does gRPC's shutdown start (which, racing with calls
  // in flight on the wire, may fail them with CANCELLED instead).
  service_->Drain(deadline);
  // Nothing accepted is unanswered now but what open streams will still
  // send: only they get the rest of the grace. (Without open calls, gRPC's
  // Shutdown can still take seconds after a busy period, so it is not left
  // the whole grace for nothing.) The batcher keeps running meanwhile.
  const absl::Time streams_deadline = service_->open_streams() > 0 ? deadline : absl::Now();
  server_->Shutdown(absl::ToChronoTime(streams_deadline));
  batcher_->Stop();
}

void AttnServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

absl::Status WritePortFile(const std::string& path, int port, absl::string_view flag) {
  const std::string tmp = path + ".tmp";
  std::FILE* file = std::fopen(tmp.c_str(), "w");
  if (file == nullptr) {
    return absl::InternalError(
        absl::StrCat(flag, ": cannot create '", tmp, "': ", ErrnoText(errno)));
  }
  const std::string text = absl::StrCat(port, "\n");
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  const int write_errno = errno;
  if (std::fclose(file) != 0 || !written) {
    const int error = written ? errno : write_errno;
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(flag, ": cannot write '", tmp, "': ", ErrnoText(error)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(flag, ": cannot rename '", tmp, "' to '", path, "': ", ErrnoText(error)));
  }
  return absl::OkStatus();
}

}  // namespace attnserve::server
