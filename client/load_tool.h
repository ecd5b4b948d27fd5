// The load tool behind `attn bench`: ghz's command line, run model and
// report (https://ghz.sh), for the unary methods of the services compiled
// into the client (attnserve.v1.AttentionService, grpc.health.v1.Health).
//
//   LoadOptions options = *ParseLoadOptions(args);   // ghz flags, --config
//   file LoadReport report = *RunLoad(options); std::cout <<
//   FormatSummary(report);               // or FormatJson(report, pretty)
//
// Run model (as ghz): `concurrency` workers, each with one call in flight at a
// time, share `connections` channels (worker i uses channel i % connections).
// The run ends after `total` calls, or at `duration` (then `total` is
// ignored), or at `max_duration` with `total` still the bound, whichever comes
// first. `rps` > 0 paces call starts at one every 1/rps seconds across all
// workers. Each call is timed client-side with a monotonic clock, from just
// before it is started to its completion callback. Requests are serialized
// once, before the run, and the same bytes are sent on every call; responses
// are received as bytes and not parsed, so the client spends its CPU on gRPC
// alone.
//
// Calls still in flight when a duration ends are given that moment as their
// deadline and left out of the report (ghz's --duration-stop=ignore).
//
// Thread-safety: the functions are safe to call from any thread; RunLoad
// blocks its caller and runs the calls on gRPC's callback threads.
#ifndef ATTNSERVE_CLIENT_LOAD_TOOL_H_
#define ATTNSERVE_CLIENT_LOAD_TOOL_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace attnserve::client {

// The options of one run, named after ghz's flags (and its config file keys).
struct LoadOptions {
  std::string host;  // gRPC target, e.g. "127.0.0.1:50051" (ghz: positional host)
  std::string call;  // "package.Service.Method" or "package.Service/Method"
  // The request(s) as proto-JSON: one object, or an array of objects sent in
  // turn (call i sends element i % size).
  std::string data_json;
  int concurrency = 50;  // workers; for a run bounded by total, at most total
  int connections = 1;   // channels; 1 <= connections <= concurrency
  int64_t total = 200;   // calls (ignored when duration > 0)
  absl::Duration duration = absl::ZeroDuration();      // 0 = none
  absl::Duration max_duration = absl::ZeroDuration();  // 0 = none
  int64_t rps = 0;                                     // 0 = unpaced
  absl::Duration timeout = absl::Seconds(20);          // per call; 0 = no deadline
  absl::Duration connect_timeout = absl::Seconds(10);  // for the first connection
  int64_t skip_first = 0;          // calls left out of the tally, from the start
  std::string format = "summary";  // summary | json | pretty
  std::string output;              // file for the report; "" = stdout
  std::string name;                // the report's "name"
  std::map<std::string, std::string> tags;
  std::string proto;  // accepted for ghz compatibility; the messages are compiled in
  // The transport, with ghz's meanings: TLS (the system's root certificates,
  // or cacert's) unless `insecure`, which asks for plaintext.
  bool insecure = false;
  std::string cacert;     // PEM roots that verify the server
  std::string cert, key;  // the client's certificate and key (mutual TLS); both or neither
  std::string cname;      // the server name checked against its certificate
  bool skip_tls = false;  // ghz --skipTLS: do not verify the server's certificate
  // Metadata sent on every call (-m / -M; keys lowercased as grpc-go does).
  // Unless it has "authorization", ATTN_TOKEN (if set) is sent as
  // "authorization: Bearer <token>".
  std::map<std::string, std::string> metadata;
};

// Parses the arguments after `attn bench` (ghz flags: --flag=value, --flag
// value, -f value; a --config JSON file first, command-line flags over it;
// the positional host). INVALID_ARGUMENT naming the flag or key and the rule
// for anything malformed, unknown, or one of ghz's flags this tool does not
// implement (see kLoadUsage); NOT_FOUND for an unreadable --config or
// --data-file.
absl::StatusOr<LoadOptions> ParseLoadOptions(absl::Span<const std::string> args);

// The usage text of `attn bench`.
extern const char kLoadUsage[];

// One call's outcome.
struct CallRecord {
  int64_t start_ns = 0;    // since the run's start, monotonic
  int64_t latency_ns = 0;  // monotonic
  int code = 0;            // grpc::StatusCode
  std::string error;       // ghz's text of the error ("" for OK)
};

struct LatencyPoint {
  int percentage = 0;
  int64_t latency_ns = 0;
};

struct HistogramBucket {
  double mark_s = 0;  // upper edge, in seconds (ghz's unit here)
  int64_t count = 0;
  double frequency = 0;  // count / number of OK calls
};

// A finished run, with ghz's Report fields.
struct LoadReport {
  LoadOptions options;
  std::string end_reason;  // "normal" (total reached), "timeout" (a duration ended), "cancel"
  absl::Time date;         // when the run finished
  int64_t count = 0;
  int64_t total_ns = 0;    // wall time of the run
  int64_t average_ns = 0;  // over every call, as ghz
  int64_t fastest_ns = 0;  // over OK calls, as ghz (0 if none)
  int64_t slowest_ns = 0;
  double rps = 0;                                           // count / total
  std::map<std::string, int64_t> error_distribution;        // ghz's error text -> count
  std::map<std::string, int64_t> status_code_distribution;  // "OK", "InvalidArgument", ...
  std::vector<LatencyPoint> latency_distribution;  // 10 25 50 75 90 95 99 (empty if no OK call)
  std::vector<HistogramBucket> histogram;          // 11 marks (empty if no OK call)
  std::vector<CallRecord> details;                 // in start order, after skip_first
};

// Runs the load described by `options` (as returned by ParseLoadOptions).
// INVALID_ARGUMENT for an unknown or streaming method or data that is not a
// valid request of the method (the message names the element and field), or
// a certificate file that holds no PEM; NOT_FOUND for a certificate file
// that cannot be read; UNAVAILABLE if no connection is up within
// connect_timeout (a failed TLS handshake too). Failed calls
// are not an error of the run: they are counted in the report.
//
// Once `*cancel` (if given; e.g. set by a SIGINT handler) is true, the run
// ends within about 20 ms: no call starts, the calls in flight are cancelled
// and left out, and the report covers the run until then (endReason
// "cancel"), as ghz does on Ctrl-C.
absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options,
                                   const std::atomic<bool>* cancel = nullptr);

// Builds the report's statistics from the calls of a run that took
// `total_ns` (pure; RunLoad's last step, exposed for tests).
LoadReport BuildReport(const LoadOptions& options, std::vector<CallRecord> records,
                       int64_t total_ns, std::string end_reason, absl::Time date);

// ghz's grpc-go name of a gRPC status code: "OK", "Canceled",
// "InvalidArgument", ...
std::string GhzStatusName(int code);

// ghz's summary text ("Summary:", histogram, latency and status distributions).
std::string FormatSummary(const LoadReport& report);

// ghz's JSON report (-O json; `pretty` for -O pretty): durations in
// nanoseconds, histogram marks in seconds, RFC 3339 date.
std::string FormatJson(const LoadReport& report, bool pretty);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_LOAD_TOOL_H_
