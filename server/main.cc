// attnd: the attnserve gRPC server. Parses flags, starts an AttnServer (see
// server/server.h) and, on SIGTERM or SIGINT, makes it a lame duck for
// --lame_duck_s, then drains it.
#include <pthread.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage_config.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/isa.h"
#include "kernels/onednn_isa.h"
#include "server/malloc_settings.h"
#include "server/memory_trim.h"
#include "server/server.h"

namespace {

int32_t DefaultThreads() {
  const unsigned hardware = std::thread::hardware_concurrency();
  return hardware == 0 ? 1 : static_cast<int32_t>(hardware);
}

}  // namespace

ABSL_FLAG(std::string, address, "127.0.0.1:50051",
          "host:port to listen on; port 0 picks a free port (see --port_file)");
ABSL_FLAG(std::string, port_file, "",
          "if set, the bound port and a newline are written here (atomically) once serving");
ABSL_FLAG(int32_t, threads, DefaultThreads(), "compute threads (>= 1)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{256} << 20,
          "largest request or response message in bytes");
ABSL_FLAG(int64_t, max_elements, int64_t{1} << 28,
          "per request: largest tensor, and sum of input tensors, in float32 elements");
ABSL_FLAG(std::string, tensor_dir, "",
          "directory of *.safetensors files (F32/F16/BF16) loaded at start-up; requests name "
          "a tensor as ref \"<file stem>/<tensor name>\"");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9464",
          "host:port of the Prometheus /metrics HTTP listener; port 0 picks a free port (see "
          "--metrics_port_file); empty: no metrics listener");
ABSL_FLAG(std::string, metrics_port_file, "",
          "if set, the bound metrics port and a newline are written here (atomically) once "
          "serving");
ABSL_FLAG(int64_t, max_batch_size, 64,
          "largest batch, in items along the batch dimension B (Triton's max_batch_size); 1 "
          "turns batching off; a request with a larger B runs alone");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "microseconds the oldest request of a batch that is not full may wait for more; 0 "
          "batches only what is already queued when a batch thread is free");
ABSL_FLAG(std::vector<std::string>, preferred_batch_sizes, std::vector<std::string>{},
          "comma-separated ascending batch sizes at which a batch is cut without waiting");
ABSL_FLAG(int64_t, max_queue_size, 1024,
          "requests waiting for a batch above which new ones get RESOURCE_EXHAUSTED; 0: unbounded");
ABSL_FLAG(int32_t, batch_threads, DefaultThreads(),
          "batches computing at once (default: cores); they share the --threads compute threads");
ABSL_FLAG(int32_t, warmup_iterations, 3,
          "kernel runs at start-up before the health service reports SERVING");
ABSL_FLAG(double, lame_duck_s, 5,
          "on SIGTERM/SIGINT: seconds of lame duck first (health NOT_SERVING, new calls "
          "UNAVAILABLE, accepted calls go on) so that clients and load balancers move away before "
          "the drain; 0: none");
ABSL_FLAG(int64_t, max_pending_response_bytes, int64_t{512} << 20,
          "bytes of responses sent but not yet read by their clients above which a new "
          "response is refused with RESOURCE_EXHAUSTED (slow readers cannot pin more memory)");
ABSL_FLAG(int32_t, max_concurrent_streams, 128, "calls one client connection may have open");
ABSL_FLAG(double, keepalive_time_s, 60,
          "ping a connection idle this long; close it when the ping goes unanswered for "
          "--keepalive_timeout_s");
ABSL_FLAG(double, keepalive_timeout_s, 20, "see --keepalive_time_s");
ABSL_FLAG(double, max_connection_idle_s, 300,
          "close (GOAWAY) a connection without calls for this long");
ABSL_FLAG(int64_t, transport_memory_bytes, int64_t{1} << 30,
          "memory gRPC's transport may use for all connections (a resource quota); 0: none");
ABSL_FLAG(std::string, max_isa, "",
          "cap on the instruction set: avx512, avx2 or baseline (a cap above the CPU's best "
          "gives its best); caps oneDNN's too unless ONEDNN_MAX_CPU_ISA is set; empty: the "
          "environment's ATTN_MAX_ISA, else the CPU's best");
ABSL_FLAG(double, shutdown_grace_s, 30,
          "on SIGTERM/SIGINT, after the lame duck: seconds to let accepted calls finish before "
          "cancelling them (>= 0)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain (leaf first) to serve gRPC over TLS; needs --tls_key_file");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(int32_t, tls_reload_interval_s, 60,
          "seconds between checks of the TLS files; a changed, matching key and certificate "
          "serve new connections from then on (mismatched ones are skipped)");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens required of every call but health: one per line, or sha256:<64 hex> "
          "of one; # comments; re-read on SIGHUP");
ABSL_FLAG(bool, reflection, true, "serve gRPC server reflection (needs a token when tokens are on)");
ABSL_FLAG(std::string, metrics_token_file, "",
          "bearer tokens a scrape must send (format of --auth_tokens_file; re-read on SIGHUP)");
ABSL_FLAG(std::string, metrics_tls_cert_file, "",
          "PEM certificate chain (leaf first): the metrics listener serves HTTPS; needs "
          "--metrics_tls_key_file; read once at start (not rotated: restart for a new one)");
ABSL_FLAG(std::string, metrics_tls_key_file, "",
          "PEM private key of --metrics_tls_cert_file; read once at start");
ABSL_FLAG(int64_t, max_sessions, 1024, "decode sessions (Decode streams) open at once at most");
ABSL_FLAG(int64_t, session_memory_bytes, int64_t{1} << 30,
          "key/value cache bytes of all decode sessions together; an open reserves max_len * B * "
          "H_kv * (D + Dv) * 4 bytes or is refused with RESOURCE_EXHAUSTED");
ABSL_FLAG(double, session_idle_timeout_s, 300,
          "a decode session waiting this long for its next message is ended with ABORTED; 0: "
          "never");
ABSL_FLAG(bool, decode_batching, true,
          "concurrent decode steps of different sessions with the same method (at most 16 new "
          "tokens, no probs) run as one pass of the decode kernel; false: each step alone");
ABSL_FLAG(bool, insecure, false,
          "allow plaintext gRPC on an --address that is not loopback (else attnd refuses)");

int main(int argc, char** argv) {
  // Before any thread allocates (server/malloc_settings.h says why each).
  attnserve::server::UseAttndMallocSettings();
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage("attnd: multi-head attention with positional encodings over gRPC");
  absl::FlagsUsageConfig usage_config;
  usage_config.version_string = [] {  // --version: after the flags are parsed
    auto isa = attnserve::kernels::ChooseIsa(absl::GetFlag(FLAGS_max_isa));
    return "attnd " ATTN_VERSION " (isa " +
           (isa.ok() ? std::string(attnserve::kernels::IsaName(*isa))
                     : std::string(isa.status().message())) +
           ")\n";
  };
  absl::SetFlagsUsageConfig(usage_config);
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() > 1) {
    std::fprintf(stderr, "attnd: unexpected argument '%s' (every setting is a --flag)\n", args[1]);
    return 1;
  }

  // Blocked before any thread starts, so that every thread inherits the mask
  // and the signals reach only the sigwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Fixed before any kernel runs (the warm-up is the first).
  const absl::StatusOr<attnserve::kernels::Isa> isa =
      attnserve::kernels::ChooseIsa(absl::GetFlag(FLAGS_max_isa));
  if (!isa.ok()) {
    std::fprintf(stderr, "attnd: %s\n", std::string(isa.status().message()).c_str());
    return 1;
  }
  // An explicit cap holds for the whole server: oneDNN's projections too
  // run no instruction above it (--max_isa=avx2 on an AVX-512 host behaves
  // as on an AVX2 one). ONEDNN_MAX_CPU_ISA, when set, still decides oneDNN.
  const auto cap_from_environment = attnserve::kernels::MaxIsaFromEnvironment();
  if (!absl::GetFlag(FLAGS_max_isa).empty() ||
      (cap_from_environment.ok() && cap_from_environment->has_value())) {
    const absl::Status capped = attnserve::kernels::CapOneDnnIsa(*isa);
    if (!capped.ok()) {
      std::fprintf(stderr, "attnd: %s\n", std::string(capped.message()).c_str());
      return 1;
    }
  }

  attnserve::server::ServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_elements = absl::GetFlag(FLAGS_max_elements);
  options.tensor_dir = absl::GetFlag(FLAGS_tensor_dir);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.tls.reload_interval_s = absl::GetFlag(FLAGS_tls_reload_interval_s);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.metrics_token_file = absl::GetFlag(FLAGS_metrics_token_file);
  options.metrics_tls_cert_file = absl::GetFlag(FLAGS_metrics_tls_cert_file);
  options.metrics_tls_key_file = absl::GetFlag(FLAGS_metrics_tls_key_file);
  options.reflection = absl::GetFlag(FLAGS_reflection);
  options.batching.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  const int64_t delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  options.batching.max_queue_delay = absl::Microseconds(delay_us);
  for (const std::string& size : absl::GetFlag(FLAGS_preferred_batch_sizes)) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(size, &value)) {
      std::fprintf(stderr, "attnd: --preferred_batch_sizes: '%s' is not an integer\n",
                   size.c_str());
      return 1;
    }
    options.batching.preferred_batch_sizes.push_back(value);
  }
  const int64_t max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  if (max_queue_size < 0 || delay_us < 0) {
    std::fprintf(stderr, "attnd: --max_queue_size and --max_queue_delay_us must be >= 0\n");
    return 1;
  }
  options.batching.max_queue_size = static_cast<size_t>(max_queue_size);
  options.batching.batch_threads = absl::GetFlag(FLAGS_batch_threads);
  options.warmup_iterations = absl::GetFlag(FLAGS_warmup_iterations);
  options.max_pending_response_bytes = absl::GetFlag(FLAGS_max_pending_response_bytes);
  options.connection.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  options.connection.keepalive_time = absl::Seconds(absl::GetFlag(FLAGS_keepalive_time_s));
  options.connection.keepalive_timeout = absl::Seconds(absl::GetFlag(FLAGS_keepalive_timeout_s));
  options.connection.max_connection_idle =
      absl::Seconds(absl::GetFlag(FLAGS_max_connection_idle_s));
  options.connection.transport_memory_bytes = absl::GetFlag(FLAGS_transport_memory_bytes);
  options.sessions.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.sessions.memory_bytes = absl::GetFlag(FLAGS_session_memory_bytes);
  const double idle_s = absl::GetFlag(FLAGS_session_idle_timeout_s);
  if (!(idle_s >= 0) || idle_s > 1e9) {
    std::fprintf(stderr, "attnd: --session_idle_timeout_s: must be in 0..1e9 seconds, got %g\n",
                 idle_s);
    return 1;
  }
  options.sessions.idle_timeout = absl::Seconds(idle_s);
  options.sessions.batching = absl::GetFlag(FLAGS_decode_batching);
  const double grace_s = absl::GetFlag(FLAGS_shutdown_grace_s);
  if (!(grace_s >= 0) || grace_s > 1e6) {
    std::fprintf(stderr, "attnd: --shutdown_grace_s: must be in 0..1e6 seconds, got %g\n", grace_s);
    return 1;
  }
  const absl::Duration grace = absl::Seconds(grace_s);
  const double lame_duck_s = absl::GetFlag(FLAGS_lame_duck_s);
  if (!(lame_duck_s >= 0) || lame_duck_s > 1e6) {
    std::fprintf(stderr, "attnd: --lame_duck_s: must be in 0..1e6 seconds, got %g\n",
                 lame_duck_s);
    return 1;
  }
  const absl::Duration lame_duck = absl::Seconds(lame_duck_s);
  absl::StatusOr<std::unique_ptr<attnserve::server::AttnServer>> server =
      attnserve::server::AttnServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "attnd: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  // Listening already, NOT_SERVING to health probes until the kernels are
  // warm; the port files then announce a ready server.
  (*server)->WarmUp();
  // The metrics port first: a reader of --port_file may expect both.
  const std::string metrics_port_file = absl::GetFlag(FLAGS_metrics_port_file);
  if (!metrics_port_file.empty()) {
    absl::Status written = attnserve::server::WritePortFile(
        metrics_port_file, (*server)->metrics_port(), "--metrics_port_file");
    if (!written.ok()) {
      std::fprintf(stderr, "attnd: %s\n", std::string(written.message()).c_str());
      return 1;
    }
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    absl::Status written = attnserve::server::WritePortFile(port_file, (*server)->port());
    if (!written.ok()) {
      std::fprintf(stderr, "attnd: %s\n", std::string(written.message()).c_str());
      return 1;
    }
  }
  if (!options.tensor_dir.empty()) {
    std::fprintf(stderr, "attnd: loaded %zu tensors from --tensor_dir=%s\n",
                 (*server)->tensors().tensors().size(), options.tensor_dir.c_str());
  }
  if (!options.tls.enabled() && options.insecure) {
    std::fprintf(stderr, "attnd: --insecure: plaintext gRPC, readable by anyone on the path\n");
  }
  std::fprintf(stderr, "attnd listening on %s (%s), metrics on %s, isa %s (oneDNN %s)\n",
               (*server)->address().c_str(),
               !options.tls.enabled()                ? "plaintext"
               : options.tls.client_ca_file.empty() ? "TLS"
                                                     : "mutual TLS",
               options.metrics_address.empty()
                   ? "(none)"
                   : ("port " + std::to_string((*server)->metrics_port()) +
                      (options.metrics_tls_cert_file.empty() ? "" : " (HTTPS)"))
                         .c_str(),
               std::string(attnserve::kernels::IsaName(*isa)).c_str(),
               attnserve::kernels::OneDnnIsaName().c_str());

  // Memory back to the kernel after bursts (server/memory_trim.h). Busy: a
  // request in flight at the look, or one that arrived since the last look.
  // The gaps of a client calling one after another fall between looks; a
  // trim there made its next call page the memory of its tensors in again
  // (at S=2048, H=8 about 3000 page faults, 45-65 ms of CPU on this
  // project's VMs: more than the attention; docs/PERFORMANCE.md).
  attnserve::server::IdleTrimmer trimmer([&server, seen = int64_t{-1}]() mutable {
    const int64_t arrivals = (*server)->metrics().arrivals();
    const bool arrived = arrivals != seen;
    seen = arrivals;
    return (*server)->metrics().inflight_requests().Value() + (arrived ? 1.0 : 0.0);
  });
  std::thread signal_thread([&server, &signals, grace, lame_duck] {
    int signal_number = 0;
    // SIGHUP re-reads --auth_tokens_file; SIGTERM and SIGINT stop.
    while (sigwait(&signals, &signal_number) == 0 && signal_number == SIGHUP) {
      (*server)->ReloadAuthTokens();
    }
    if (lame_duck > absl::ZeroDuration()) {
      // Clients and load balancers see NOT_SERVING (or an UNAVAILABLE they
      // retry elsewhere) and move away while this server still answers, so
      // that no call meets gRPC's shutdown on the wire.
      (*server)->EnterLameDuck();
      std::fprintf(stderr,
                   "attnd: signal %d, lame duck for %s (health NOT_SERVING, new calls "
                   "UNAVAILABLE, accepted calls go on)\n",
                   signal_number, absl::FormatDuration(lame_duck).c_str());
      absl::SleepFor(lame_duck);
      std::fprintf(stderr, "attnd: lame duck over, draining (up to %s)\n",
                   absl::FormatDuration(grace).c_str());
    } else {
      std::fprintf(stderr, "attnd: signal %d, draining (up to %s)\n", signal_number,
                   absl::FormatDuration(grace).c_str());
    }
    const absl::Time start = absl::Now();
    (*server)->Shutdown(grace);
    std::fprintf(stderr, "attnd: drained in %s\n",
                 absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Milliseconds(1)))
                     .c_str());
  });
  (*server)->Wait();
  signal_thread.join();
  std::fprintf(stderr, "attnd: stopped\n");
  return 0;
}
