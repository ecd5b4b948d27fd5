#include "client/load_tool.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/channel.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/alarm.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/slice.h"
#include "grpcpp/support/status.h"
#include "nlohmann/json.hpp"

namespace attnserve::client {

const char kLoadUsage[] =
    R"(usage: attn bench --call=METHOD [flags] HOST:PORT

A load generator with ghz's flags, run model and report (https://ghz.sh).
Unary methods of attnserve.v1.AttentionService and grpc.health.v1.Health;
requests as proto-JSON. As ghz, it uses TLS unless --insecure is given.

  --config=PATH           a ghz JSON config file; command-line flags override it
  --call=METHOD           package.Service.Method or package.Service/Method,
                          e.g. attnserve.v1.AttentionService/Attend
  -d, --data=JSON         the request (an object), or requests sent in turn (an
                          array); "@" reads it from stdin
  -D, --data-file=PATH    the same, from a file
  -m, --metadata=JSON     metadata of every call, a JSON object of strings,
                          e.g. '{"authorization":"Bearer TOKEN"}'
  -M, --metadata-file=PATH  the same, from a file
  -c, --concurrency=N     workers, one call in flight each (default 50)
      --connections=N     channels the workers share (default 1)
  -n, --total=N           calls in the run (default 200)
  -z, --duration=D        run for D (e.g. 10s, 1m); -n is then ignored
  -x, --max-duration=D    stop at D even if -n calls are not done
  -r, --rps=N             at most N call starts per second (default unpaced)
  -t, --timeout=D         deadline of each call (default 20s; 0 = none)
      --connect-timeout=D wait for the first connection (default 10s)
      --skipFirst=N       leave the first N calls out of the report
  -O, --format=F          summary (default), json or pretty (ghz's JSON report)
  -o, --output=PATH       write the report there instead of stdout
      --name=NAME         the report's name
      --tags=JSON         the report's tags, a JSON object of strings
      --proto=PATH, -i    accepted and unused: the messages are compiled in
      --cpus=N            accepted and unused

transport (ghz's meanings; TLS is the default):
      --insecure          plaintext, no TLS (--insecure=false undoes a config's
                          "insecure": true)
      --cacert=PATH       PEM root certificates that verify the server (default:
                          the system's)
      --cert=PATH         client certificate (PEM) for mutual TLS; needs --key
      --key=PATH          the client certificate's private key (PEM)
      --cname=NAME        the server name its certificate must carry (default:
                          HOST's host), e.g. localhost for 127.0.0.1:50051
      --skipTLS           TLS without verifying the server's certificate
  ATTN_TOKEN=TOKEN        environment: sent as "authorization: Bearer TOKEN"
                          unless the metadata has an authorization key
--insecure together with a TLS flag is a usage error (ghz ignores the TLS
flag instead).

Not supported (exit 2 if given): --authority, binary data (-b -B),
--reflect-metadata, load and concurrency schedules, --async, streaming
calls, --duration-stop (calls in flight at the end of -z are left out, as
"ignore"), --keepalive, -e, --debug, -O csv/html/influx/prometheus, and
ghz's template variables in the data and metadata.

Ctrl-C ends the run and prints its report so far (endReason "cancel").

exit codes: 0 the run finished (failed calls are in the report), 1 no
connection, 2 usage error
)";

namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------
// Options.

enum class Kind { kString, kInt, kDuration, kBool, kJson };

struct OptionSpec {
  const char* key;  // ghz's long flag and config key
  char short_flag;  // 0 = none
  Kind kind;
};

constexpr OptionSpec kOptions[] = {
    {"host", 0, Kind::kString},
    {"call", 0, Kind::kString},
    {"proto", 0, Kind::kString},
    {"import-paths", 'i', Kind::kString},
    {"insecure", 0, Kind::kBool},
    {"cacert", 0, Kind::kString},
    {"cert", 0, Kind::kString},
    {"key", 0, Kind::kString},
    {"cname", 0, Kind::kString},
    {"skipTLS", 0, Kind::kBool},
    {"metadata", 'm', Kind::kJson},
    {"metadata-file", 'M', Kind::kString},
    {"data", 'd', Kind::kJson},
    {"data-file", 'D', Kind::kString},
    {"concurrency", 'c', Kind::kInt},
    {"connections", 0, Kind::kInt},
    {"total", 'n', Kind::kInt},
    {"duration", 'z', Kind::kDuration},
    {"max-duration", 'x', Kind::kDuration},
    {"rps", 'r', Kind::kInt},
    {"timeout", 't', Kind::kDuration},
    {"connect-timeout", 0, Kind::kDuration},
    {"skipFirst", 0, Kind::kInt},
    {"format", 'O', Kind::kString},
    {"output", 'o', Kind::kString},
    {"name", 0, Kind::kString},
    {"tags", 0, Kind::kJson},
    // Go's GOMAXPROCS for ghz; nothing to set here, and ghz's own reports
    // carry it, so configs copied from them do too.
    {"cpus", 0, Kind::kInt},
};

// ghz's flags (and config keys) this tool does not implement: named in the
// error rather than reported as unknown.
// clang-format off
constexpr const char* kUnsupported[] = {
    "protoset", "authority", "async",
    "load-schedule", "load-start", "load-step", "load-end", "load-step-duration",
    "load-max-duration", "concurrency-schedule", "concurrency-start", "concurrency-end",
    "concurrency-step", "concurrency-step-duration", "concurrency-max-duration", "duration-stop",
    "binary", "binary-file", "stream-interval",
    "stream-call-duration", "stream-call-count", "stream-dynamic-messages", "reflect-metadata",
    "keepalive", "debug", "enable-compression", "lb-strategy", "count-errors",
    "max-recv-message-size", "max-send-message-size", "disable-template-functions",
    "disable-template-data", "dial-timeout"};
// clang-format on
constexpr char kUnsupportedShort[] = "bBe";

const OptionSpec* FindOption(absl::string_view key) {
  for (const OptionSpec& spec : kOptions) {
    if (key == spec.key) return &spec;
  }
  return nullptr;
}

const OptionSpec* FindShortOption(char c) {
  for (const OptionSpec& spec : kOptions) {
    if (spec.short_flag == c) return &spec;
  }
  return nullptr;
}

bool IsUnsupported(absl::string_view key) {
  return std::any_of(std::begin(kUnsupported), std::end(kUnsupported),
                     [key](const char* name) { return key == name; });
}

absl::StatusOr<absl::Duration> ParseGoDuration(absl::string_view where, absl::string_view text) {
  absl::Duration duration;
  // A bare number is seconds for ghz's integer flags of old; "0" is common.
  double seconds;
  if (absl::SimpleAtod(text, &seconds) && std::isfinite(seconds)) {
    duration = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &duration)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": expected a duration such as 500ms, 10s or 1m30s, got \"", text, "\""));
  }
  if (duration < absl::ZeroDuration() || duration == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": must be a finite duration >= 0, got \"", text, "\""));
  }
  return duration;
}

// Where a value came from, for messages: "--total" or "config key \"total\"".
std::string Where(absl::string_view key, bool from_config) {
  return from_config ? absl::StrCat("config key \"", key, "\"") : absl::StrCat("--", key);
}

// A config value that leaves an unsupported ghz setting at its default, which
// a config written for ghz may well spell out.
bool IsDefaultValue(const Json& value) {
  if (value.is_null()) return true;
  if (value.is_boolean()) return !value.get<bool>();
  if (value.is_number()) return value.get<double>() == 0;
  if (value.is_string()) {
    const std::string text = value.get<std::string>();
    return text.empty() || text == "0" || text == "const" || text == "close";
  }
  return value.empty();
}

// ghz's metadata: a JSON object of strings. Keys are lowercased (grpc-go
// does so; gRPC C++ refuses upper case) and must be valid gRPC metadata keys
// that are not gRPC's own; values of "-bin" keys are bytes, others printable
// ASCII. Values are never quoted in messages: they may be tokens.
absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const std::string& where,
                                                                 const Json& value) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object of strings"));
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [name, item] : value.items()) {
    std::string key = absl::AsciiStrToLower(name);
    const std::string shown = absl::StrCat("\"", key.substr(0, 64), "\"");
    if (!item.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the value of ", shown, " must be a string"));
    }
    const bool key_ok =
        !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
          return absl::ascii_isdigit(c) || absl::ascii_islower(c) || c == '-' || c == '_' ||
                 c == '.';
        });
    if (!key_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": key ", shown, " is not a gRPC metadata key (letters, digits, - _ .)"));
    }
    if (absl::StartsWith(key, "grpc-") || key == "te" || key == "content-type" ||
        key == "user-agent") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": key ", shown, " is reserved by gRPC"));
    }
    const std::string text = item.get<std::string>();
    if (!absl::EndsWith(key, "-bin") &&
        !std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c <= 0x7e; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the value of ", shown,
          " must be printable ASCII (binary values need a key ending in -bin)"));
    }
    if (absl::StrContains(text, "{{")) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the value of ", shown, " holds a ghz template, which attn bench does not support"));
    }
    metadata[std::move(key)] = text;
  }
  return metadata;
}

// The transport flags together: --insecure against any TLS flag (ghz would
// silently ignore the TLS flag; a usage error is kinder), --cert without
// --key. The files are read by RunLoad; here only checked for presence.
absl::Status CheckTransport(const LoadOptions& options) {
  std::vector<std::string> tls_flags;
  if (!options.cacert.empty()) tls_flags.push_back("--cacert");
  if (!options.cert.empty()) tls_flags.push_back("--cert");
  if (!options.key.empty()) tls_flags.push_back("--key");
  if (!options.cname.empty()) tls_flags.push_back("--cname");
  if (options.skip_tls) tls_flags.push_back("--skipTLS");
  if (options.insecure && !tls_flags.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--insecure: plaintext, but ", absl::StrJoin(tls_flags, " "),
        " asks for TLS; give one or the other (--insecure=false overrides a config's "
        "\"insecure\": true)"));
  }
  if (options.cert.empty() != options.key.empty()) {
    return absl::InvalidArgumentError("--cert, --key: give both (mutual TLS) or neither");
  }
  return absl::OkStatus();
}

// The channel security of a run: TLS unless insecure, as ghz; ATTN_TOKEN
// unless the metadata carries its own authorization. Messages use the flags'
// names.
absl::StatusOr<ChannelSecurity> LoadSecurity(const LoadOptions& options) {
  SecurityOptions security;
  security.tls = !options.insecure;
  security.ca_file = options.cacert;
  security.cert_file = options.cert;
  security.key_file = options.key;
  security.server_name = options.cname;
  security.skip_verify = options.skip_tls;
  security.token_from_env = options.metadata.count("authorization") == 0;
  absl::StatusOr<ChannelSecurity> loaded = LoadChannelSecurity(security);
  if (!loaded.ok()) {
    return RenameOptionFields(loaded.status(), {{"ca_file", "--cacert"},
                                                {"cert_file", "--cert"},
                                                {"key_file", "--key"},
                                                {"server_name", "--cname"},
                                                {"skip_verify", "--skipTLS"}});
  }
  return loaded;
}

class OptionParser {
 public:
  // Applies `value` (typed as the config file has it) to `key`.
  absl::Status Apply(absl::string_view key, const Json& value, bool from_config) {
    const std::string where = Where(key, from_config);
    const OptionSpec* spec = FindOption(key);
    if (spec == nullptr) {
      if (IsUnsupported(key)) {
        if (from_config && IsDefaultValue(value)) return absl::OkStatus();
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": a ghz setting that attn bench does not support"));
      }
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown"));
    }
    switch (spec->kind) {
      case Kind::kString: {
        if (!value.is_string()) {
          if (spec->key == std::string("import-paths") && value.is_array()) return absl::OkStatus();
          return absl::InvalidArgumentError(absl::StrCat(where, ": expected a string"));
        }
        return SetString(*spec, where, value.get<std::string>());
      }
      case Kind::kInt: {
        int64_t number;
        if (value.is_number_integer() || value.is_number_unsigned()) {
          number = value.get<int64_t>();
        } else if (!value.is_string() || !absl::SimpleAtoi(value.get<std::string>(), &number)) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": expected an integer, got ", value.dump()));
        }
        return SetInt(*spec, where, number);
      }
      case Kind::kDuration: {
        absl::StatusOr<absl::Duration> duration =
            value.is_number() ? ParseGoDuration(where, value.dump())
            : value.is_string()
                ? ParseGoDuration(where, value.get<std::string>())
                : absl::InvalidArgumentError(absl::StrCat(where, ": expected a duration string"));
        if (!duration.ok()) return duration.status();
        return SetDuration(*spec, *duration);
      }
      case Kind::kBool: {
        bool flag = false;
        if (value.is_boolean()) {
          flag = value.get<bool>();
        } else if (!value.is_string() || !absl::SimpleAtob(value.get<std::string>(), &flag)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": expected true or false"));
        }
        if (spec->key == std::string("insecure")) {
          options_.insecure = flag;
        } else {
          options_.skip_tls = flag;
        }
        return absl::OkStatus();
      }
      case Kind::kJson:
        return SetJson(*spec, where, value, from_config);
    }
    return absl::InternalError("unreachable");
  }

  // Parses a command-line value of `spec` into the JSON type Apply expects.
  absl::Status ApplyFlag(const OptionSpec& spec, const std::string& text) {
    if (spec.kind == Kind::kJson) {
      if (spec.key == std::string("data") && text == "@") {
        data_from_stdin_ = true;
        return absl::OkStatus();
      }
      Json value = Json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (value.is_discarded()) {
        return absl::InvalidArgumentError(absl::StrCat("--", spec.key, ": not valid JSON"));
      }
      return Apply(spec.key, value, /*from_config=*/false);
    }
    return Apply(spec.key, Json(text), /*from_config=*/false);
  }

  absl::StatusOr<LoadOptions> Finish() {
    if (data_from_stdin_) {
      std::string text((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
      data_json_ = text;
    } else if (!data_file_.empty()) {
      absl::StatusOr<std::string> text = ReadOptionFile(data_file_, "--data-file");
      if (!text.ok()) return text.status();
      data_json_ = *text;
    }
    options_.data_json = data_json_.empty() ? "{}" : data_json_;
    if (!metadata_file_.empty()) {
      absl::StatusOr<std::string> text = ReadOptionFile(metadata_file_, "--metadata-file");
      if (!text.ok()) return text.status();
      Json value = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
      const std::string where = absl::StrCat(metadata_file_where_, " ", metadata_file_);
      if (value.is_discarded()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON"));
      }
      absl::StatusOr<std::map<std::string, std::string>> metadata = ParseMetadata(where, value);
      if (!metadata.ok()) return metadata.status();
      options_.metadata = *std::move(metadata);
    }
    absl::Status transport = CheckTransport(options_);
    if (!transport.ok()) return transport;
    if (options_.call.empty()) return absl::InvalidArgumentError("--call: required");
    if (options_.host.empty()) {
      return absl::InvalidArgumentError("HOST: required (the server, e.g. 127.0.0.1:50051)");
    }
    if (options_.connections > options_.concurrency) {
      return absl::InvalidArgumentError(absl::StrCat("--connections: must be <= --concurrency (",
                                                     options_.concurrency, "), got ",
                                                     options_.connections));
    }
    if (options_.duration == absl::ZeroDuration() && options_.total < 1) {
      return absl::InvalidArgumentError("--total: must be >= 1 unless --duration is set");
    }
    return options_;
  }

 private:
  absl::Status SetString(const OptionSpec& spec, const std::string& where,
                         const std::string& text) {
    const absl::string_view key = spec.key;
    if (key == "host") {
      options_.host = text;
    } else if (key == "call") {
      options_.call = text;
    } else if (key == "proto") {
      options_.proto = text;
    } else if (key == "import-paths") {
      // Accepted with --proto; nothing to import.
    } else if (key == "data-file") {
      data_file_ = text;
    } else if (key == "metadata-file") {
      metadata_file_ = text;
      metadata_file_where_ = where;
    } else if (key == "cacert") {
      options_.cacert = text;
    } else if (key == "cert") {
      options_.cert = text;
    } else if (key == "key") {
      options_.key = text;
    } else if (key == "cname") {
      options_.cname = text;
    } else if (key == "format") {
      if (text != "summary" && text != "json" && text != "pretty") {
        const bool ghz_format = text == "csv" || text == "html" || text == "influx-summary" ||
                                text == "influx-details" || text == "prometheus";
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": one of summary, json, pretty; got \"", text, "\"",
                         ghz_format ? " (a ghz format that attn bench does not support)" : ""));
      }
      options_.format = text;
    } else if (key == "output") {
      options_.output = text;
    } else if (key == "name") {
      options_.name = text;
    }
    return absl::OkStatus();
  }

  absl::Status SetInt(const OptionSpec& spec, const std::string& where, int64_t number) {
    const absl::string_view key = spec.key;
    // Bounds keep the arithmetic (per-call schedule, thread-free workers)
    // far from overflow and the run on one machine.
    constexpr int64_t kMaxWorkers = 100000;
    constexpr int64_t kMaxTotal = int64_t{1} << 40;
    const auto check = [&](int64_t low, int64_t high) -> absl::Status {
      if (number < low || number > high) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": must be in [", low, ", ", high, "], got ", number));
      }
      return absl::OkStatus();
    };
    absl::Status status;
    if (key == "concurrency") {
      status = check(1, kMaxWorkers);
      options_.concurrency = static_cast<int>(number);
    } else if (key == "connections") {
      status = check(1, kMaxWorkers);
      options_.connections = static_cast<int>(number);
    } else if (key == "total") {
      // ghz's config may say 0 alongside a duration.
      status = check(0, kMaxTotal);
      options_.total = number;
    } else if (key == "rps") {
      status = check(0, 1000000000);
      options_.rps = number;
    } else if (key == "cpus") {
      status = check(0, kMaxWorkers);
    } else if (key == "skipFirst") {
      status = check(0, kMaxTotal);
      options_.skip_first = number;
    }
    return status;
  }

  absl::Status SetDuration(const OptionSpec& spec, absl::Duration duration) {
    const absl::string_view key = spec.key;
    if (key == "duration") {
      options_.duration = duration;
    } else if (key == "max-duration") {
      options_.max_duration = duration;
    } else if (key == "timeout") {
      options_.timeout = duration;
    } else if (key == "connect-timeout") {
      options_.connect_timeout = duration;
    }
    return absl::OkStatus();
  }

  absl::Status SetJson(const OptionSpec& spec, const std::string& where, const Json& value,
                       bool from_config) {
    if (spec.key == std::string("tags")) {
      if (!value.is_object())
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
      options_.tags.clear();
      for (const auto& [name, tag] : value.items()) {
        if (!tag.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": tag \"", name, "\" must be a string"));
        }
        options_.tags[name] = tag.get<std::string>();
      }
      return absl::OkStatus();
    }
    if (spec.key == std::string("metadata")) {
      absl::StatusOr<std::map<std::string, std::string>> metadata = ParseMetadata(where, value);
      if (!metadata.ok()) return metadata.status();
      options_.metadata = *std::move(metadata);
      // A later --metadata overrides a config's metadata-file, as --data does.
      if (!from_config) metadata_file_.clear();
      return absl::OkStatus();
    }
    if (value.is_string() && value.get<std::string>() == "@" && !from_config) {
      data_from_stdin_ = true;
      return absl::OkStatus();
    }
    if (!value.is_object() && !value.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected a JSON object or an array of objects"));
    }
    data_json_ = value.dump();
    // A later --data overrides a config's data-file, as in ghz's merge.
    if (!from_config) data_file_.clear();
    return absl::OkStatus();
  }

  LoadOptions options_;
  std::string data_json_;
  std::string data_file_;
  std::string metadata_file_;
  std::string metadata_file_where_;
  bool data_from_stdin_ = false;
};

// Splits "--key=value", "--key value", "-k value", "-k=value", "-kvalue".
absl::Status ParseCommandLine(absl::Span<const std::string> args, OptionParser& parser,
                              std::string& host) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg[0] != '-') {
      if (!host.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("one HOST expected, got \"", host, "\" and \"", arg, "\""));
      }
      host = arg;
      continue;
    }
    const OptionSpec* spec = nullptr;
    std::string name;
    std::optional<std::string> value;
    if (absl::StartsWith(arg, "--")) {
      const size_t eq = arg.find('=');
      name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      if (eq != std::string::npos) value = arg.substr(eq + 1);
      if (name == "config") continue;  // read before the other flags
      spec = FindOption(name);
      if (spec == nullptr) {
        if (IsUnsupported(name)) {
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, ": a ghz flag that attn bench does not support"));
        }
        return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
      }
    } else {
      const char c = arg[1];
      spec = FindShortOption(c);
      if (spec == nullptr) {
        if (std::strchr(kUnsupportedShort, c) != nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              "-", std::string(1, c), ": a ghz flag that attn bench does not support"));
        }
        return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
      }
      name = spec->key;
      if (arg.size() > 2) value = arg.substr(arg[2] == '=' ? 3 : 2);
    }
    if (!value.has_value()) {
      if (spec->kind == Kind::kBool) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
    }
    absl::Status status = parser.ApplyFlag(*spec, *value);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The run.

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The method named by ghz's --call, among the services compiled in.
absl::StatusOr<const google::protobuf::MethodDescriptor*> FindMethod(const std::string& call) {
  std::string service_name, method_name;
  const size_t slash = call.rfind('/');
  const size_t dot = call.rfind('.');
  const size_t split = slash != std::string::npos ? slash : dot;
  if (split == std::string::npos || split == 0 || split + 1 == call.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--call: expected package.Service.Method or "
                     "package.Service/Method, got \"",
                     call, "\""));
  }
  service_name = call.substr(0, split);
  method_name = call.substr(split + 1);
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service_name);
  if (service == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--call: unknown service \"", service_name,
                     "\" (known: attnserve.v1.AttentionService, grpc.health.v1.Health)"));
  }
  const google::protobuf::MethodDescriptor* method = service->FindMethodByName(method_name);
  if (method == nullptr) {
    std::vector<std::string> names;
    for (int i = 0; i < service->method_count(); ++i) names.push_back(service->method(i)->name());
    return absl::InvalidArgumentError(absl::StrCat("--call: ", service_name, " has no method \"",
                                                   method_name, "\" (it has ",
                                                   absl::StrJoin(names, ", "), ")"));
  }
  if (method->client_streaming() || method->server_streaming()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--call: ", method->full_name(), " is a streaming method; attn bench runs unary calls"));
  }
  return method;
}

// The data as serialized requests of `type`, each ready to send.
absl::StatusOr<std::vector<grpc::ByteBuffer>> SerializeRequests(
    const google::protobuf::Descriptor* type, const std::string& data_json) {
  Json data = Json::parse(data_json, nullptr, /*allow_exceptions=*/false);
  if (data.is_discarded()) return absl::InvalidArgumentError("data: not valid JSON");
  std::vector<Json> elements;
  if (data.is_array()) {
    if (data.empty()) return absl::InvalidArgumentError("data: the array is empty");
    elements.assign(data.begin(), data.end());
  } else {
    elements.push_back(std::move(data));
  }
  const google::protobuf::Message* prototype =
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type);
  std::vector<grpc::ByteBuffer> requests;
  for (size_t i = 0; i < elements.size(); ++i) {
    const std::string where =
        elements.size() > 1 ? absl::StrCat("data[", i, "]") : std::string("data");
    if (!elements[i].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
    }
    std::unique_ptr<google::protobuf::Message> message(prototype->New());
    google::protobuf::util::JsonParseOptions parse_options;
    parse_options.ignore_unknown_fields = false;
    const auto status = google::protobuf::util::JsonStringToMessage(elements[i].dump(),
                                                                    message.get(), parse_options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " as ", type->full_name(), ": ", std::string(status.message())));
    }
    const std::string bytes = message->SerializeAsString();
    grpc::Slice slice(bytes);
    requests.emplace_back(&slice, 1);
  }
  return requests;
}

// The workers of one run and their shared schedule. Each worker is a chain
// of callbacks: a call's completion records it and starts the worker's next
// call, so no thread waits per worker.
class LoadRun {
 public:
  LoadRun(const LoadOptions& options, ChannelSecurity security, std::string method_path,
          std::vector<grpc::ByteBuffer> requests,
          std::vector<std::unique_ptr<grpc::GenericStub>> stubs)
      : options_(options),
        security_(std::move(security)),
        method_path_(std::move(method_path)),
        requests_(std::move(requests)),
        stubs_(std::move(stubs)),
        by_total_(options.duration == absl::ZeroDuration()) {
    const int64_t workers =
        by_total_ ? std::min<int64_t>(options.concurrency, options.total) : options.concurrency;
    for (int64_t i = 0; i < workers; ++i) {
      auto worker = std::make_unique<Worker>();
      worker->stub = stubs_[static_cast<size_t>(i) % stubs_.size()].get();
      if (by_total_) worker->records.reserve(options.total / workers + 1);
      workers_.push_back(std::move(worker));
    }
  }

  // Runs every worker to the end; the records in start order, the run's
  // wall time and why it ended.
  void Run(const std::atomic<bool>* cancel, std::vector<CallRecord>& records, int64_t& total_ns,
           std::string& end_reason) {
    const absl::Duration stop =
        options_.duration > absl::ZeroDuration() ? options_.duration : options_.max_duration;
    start_ns_ = NowNs();
    stop_ns_ = stop > absl::ZeroDuration() ? start_ns_ + absl::ToInt64Nanoseconds(stop) : 0;
    active_.store(static_cast<int>(workers_.size()));
    for (const auto& worker : workers_) StartNext(*worker);
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Polled: `cancel` is set from a signal handler, which cannot notify.
      while (!done_cv_.wait_for(lock, std::chrono::milliseconds(20), [this] { return done_; })) {
        if (cancel != nullptr && cancel->load() && !cancelled_.load()) {
          lock.unlock();
          CancelAll();
          lock.lock();
        }
      }
    }
    const int64_t end_ns = NowNs();
    const bool timed_out = timed_out_.load();
    // A run cut by its duration lasted exactly that long; the calls the cut
    // ended were left out. So did a cancelled run, until the cancellation.
    if (cancelled_.load()) {
      total_ns = cancel_ns_ - start_ns_;
      end_reason = "cancel";
    } else {
      total_ns = (timed_out ? stop_ns_ : end_ns) - start_ns_;
      end_reason = timed_out ? "timeout" : "normal";
    }
    size_t count = 0;
    for (const auto& worker : workers_) count += worker->records.size();
    records.reserve(count);
    for (const auto& worker : workers_) {
      std::move(worker->records.begin(), worker->records.end(), std::back_inserter(records));
    }
    std::sort(records.begin(), records.end(),
              [](const CallRecord& a, const CallRecord& b) { return a.start_ns < b.start_ns; });
  }

 private:
  // One worker's state. Only its own call chain touches it, one step at a
  // time, except that CancelAll reaches `context` and `alarm` under `mu`.
  struct Worker {
    grpc::GenericStub* stub = nullptr;
    std::mutex mu;
    std::unique_ptr<grpc::ClientContext> context;  // guarded by mu
    grpc::Alarm alarm;                             // Set and Cancel under mu
    bool alarm_pending = false;                    // guarded by mu
    grpc::ByteBuffer response;
    int64_t call_start_ns = 0;
    bool deadline_is_stop = false;  // the call's deadline is the end of the run
    std::vector<CallRecord> records;
  };

  bool Stopped(int64_t now_ns) const {
    return cancelled_.load(std::memory_order_relaxed) || (stop_ns_ != 0 && now_ns >= stop_ns_);
  }

  // Ends the run now: no call starts any more, the calls in flight are
  // cancelled and left out of the report, as are waits for --rps.
  void CancelAll() {
    cancel_ns_ = NowNs();
    cancelled_.store(true);
    for (const auto& worker : workers_) {
      std::lock_guard<std::mutex> lock(worker->mu);
      if (worker->context != nullptr) worker->context->TryCancel();
      if (worker->alarm_pending) worker->alarm.Cancel();
    }
  }

  // A worker found the run over; a duration, unless it was cancelled.
  void EndedByStop() {
    if (!cancelled_.load()) timed_out_.store(true);
    WorkerDone();
  }

  // Takes the next call number and starts it now, or when --rps allows.
  void StartNext(Worker& worker) {
    const int64_t call = issued_.fetch_add(1, std::memory_order_relaxed);
    const int64_t now_ns = NowNs();
    if (by_total_ && call >= options_.total) {
      WorkerDone();
      return;
    }
    if (Stopped(now_ns)) {
      EndedByStop();
      return;
    }
    if (options_.rps > 0) {
      // Call i may start at i/rps seconds into the run.
      const int64_t due_ns =
          start_ns_ + static_cast<int64_t>(static_cast<double>(call) * 1e9 / options_.rps);
      if (due_ns > now_ns) {
        const int64_t wake_ns = stop_ns_ != 0 ? std::min(due_ns, stop_ns_) : due_ns;
        std::lock_guard<std::mutex> lock(worker.mu);
        if (cancelled_.load()) {
          EndedByStop();
          return;
        }
        worker.alarm_pending = true;
        worker.alarm.Set(
            std::chrono::system_clock::now() + std::chrono::nanoseconds(wake_ns - now_ns),
            [this, &worker, call](bool fired) {
              {
                std::lock_guard<std::mutex> alarm_lock(worker.mu);
                worker.alarm_pending = false;
              }
              if (!fired || Stopped(NowNs())) {
                EndedByStop();
              } else {
                Issue(worker, call);
              }
            });
        return;
      }
    }
    Issue(worker, call);
  }

  void Issue(Worker& worker, int64_t call) {
    const int64_t now_ns = NowNs();
    int64_t budget_ns = options_.timeout > absl::ZeroDuration()
                            ? absl::ToInt64Nanoseconds(options_.timeout)
                            : std::numeric_limits<int64_t>::max();
    worker.deadline_is_stop = stop_ns_ != 0 && stop_ns_ - now_ns <= budget_ns;
    if (worker.deadline_is_stop) budget_ns = stop_ns_ - now_ns;
    grpc::ClientContext* context;
    {
      std::lock_guard<std::mutex> lock(worker.mu);
      // Checked under the lock CancelAll takes: a context made after it has
      // cancelled the worker's last one would run on.
      if (cancelled_.load()) {
        EndedByStop();
        return;
      }
      worker.context = std::make_unique<grpc::ClientContext>();
      context = worker.context.get();
    }
    // Not under the lock: gRPC may run the completion (and with it this
    // worker's next Issue) inline. A TryCancel that comes before the call
    // starts still cancels it.
    if (budget_ns != std::numeric_limits<int64_t>::max()) {
      context->set_deadline(std::chrono::system_clock::now() + std::chrono::nanoseconds(budget_ns));
    }
    security_.Apply(*context);
    for (const auto& [key, value] : options_.metadata) context->AddMetadata(key, value);
    worker.response.Clear();
    const grpc::ByteBuffer& request = requests_[static_cast<size_t>(call) % requests_.size()];
    worker.call_start_ns = NowNs();
    worker.stub->UnaryCall(context, method_path_, grpc::StubOptions(), &request, &worker.response,
                           [this, &worker](const grpc::Status& status) { Done(worker, status); });
  }

  void Done(Worker& worker, const grpc::Status& status) {
    const int64_t end_ns = NowNs();
    const bool cut =
        worker.deadline_is_stop && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    const bool cancelled = status.error_code() == grpc::StatusCode::CANCELLED && cancelled_.load();
    if (cut) {
      timed_out_.store(true);
    } else if (!cancelled) {
      CallRecord record;
      record.start_ns = worker.call_start_ns - start_ns_;
      record.latency_ns = end_ns - worker.call_start_ns;
      record.code = static_cast<int>(status.error_code());
      if (!status.ok()) {
        // grpc-go's text of a status error, which ghz reports.
        record.error = absl::StrCat("rpc error: code = ", GhzStatusName(record.code),
                                    " desc = ", status.error_message());
      }
      worker.records.push_back(std::move(record));
    }
    StartNext(worker);
  }

  void WorkerDone() {
    if (active_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      done_cv_.notify_all();
    }
  }

  const LoadOptions& options_;
  const ChannelSecurity security_;
  const std::string method_path_;
  const std::vector<grpc::ByteBuffer> requests_;
  const std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  const bool by_total_;
  std::vector<std::unique_ptr<Worker>> workers_;
  int64_t start_ns_ = 0;
  int64_t stop_ns_ = 0;    // 0 = no duration bound
  int64_t cancel_ns_ = 0;  // written before cancelled_ is set
  std::atomic<int64_t> issued_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> timed_out_{false};  // a duration ended the run
  std::atomic<bool> cancelled_{false};  // CancelAll ended the run
  std::mutex mu_;
  std::condition_variable done_cv_;
  bool done_ = false;  // guarded by mu_
};

// ---------------------------------------------------------------------------
// Formatting.

// ghz's duration text: "850 ns" below 10 us, then ms, then s.
std::string FormatNanoUnit(int64_t ns) {
  if (ns < 10000) return absl::StrCat(ns, " ns");
  const double ms = static_cast<double>(ns) / 1e6;
  if (ms < 1000) return absl::StrFormat("%4.2f ms", ms);
  return absl::StrFormat("%4.2f s", ms / 1000);
}

// Rows "cells..." padded into columns three spaces apart (Go's tabwriter as
// ghz uses it).
std::string Columns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&out, row[i], std::string(widths[i] - row[i].size() + 3, ' '));
    }
    out += "\n";
  }
  return out;
}

std::string Rfc3339(absl::Time time, bool nanos) {
  // UTC, written "Z" as Go's time.RFC3339 does.
  return absl::FormatTime(nanos ? "%Y-%m-%dT%H:%M:%E*SZ" : "%Y-%m-%dT%H:%M:%SZ", time,
                          absl::UTCTimeZone());
}

}  // namespace

absl::StatusOr<LoadOptions> ParseLoadOptions(absl::Span<const std::string> args) {
  OptionParser parser;
  // The config file first, so that flags override it wherever they stand.
  for (size_t i = 0; i < args.size(); ++i) {
    std::string path;
    if (args[i] == "--config") {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError("--config needs a value");
      path = args[i + 1];
    } else if (absl::StartsWith(args[i], "--config=")) {
      path = args[i].substr(9);
    } else {
      continue;
    }
    absl::StatusOr<std::string> text = ReadOptionFile(path, "--config");
    if (!text.ok()) return text.status();
    Json config = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--config ", path, ": not a JSON object (TOML and YAML are not supported)"));
    }
    for (const auto& [key, value] : config.items()) {
      absl::Status status = parser.Apply(key, value, /*from_config=*/true);
      if (!status.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.message()));
      }
    }
  }
  std::string host;
  // The --config value itself is a positional-looking argument: skip it.
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config") {
      ++i;
      continue;
    }
    rest.push_back(args[i]);
  }
  absl::Status status = ParseCommandLine(rest, parser, host);
  if (!status.ok()) return status;
  if (!host.empty()) {
    status = parser.Apply("host", Json(host), /*from_config=*/false);
    if (!status.ok()) return status;
  }
  return parser.Finish();
}

std::string GhzStatusName(int code) {
  switch (static_cast<grpc::StatusCode>(code)) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "Canceled";
    case grpc::StatusCode::UNKNOWN:
      return "Unknown";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "InvalidArgument";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DeadlineExceeded";
    case grpc::StatusCode::NOT_FOUND:
      return "NotFound";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "AlreadyExists";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PermissionDenied";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "ResourceExhausted";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FailedPrecondition";
    case grpc::StatusCode::ABORTED:
      return "Aborted";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OutOfRange";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "Unimplemented";
    case grpc::StatusCode::INTERNAL:
      return "Internal";
    case grpc::StatusCode::UNAVAILABLE:
      return "Unavailable";
    case grpc::StatusCode::DATA_LOSS:
      return "DataLoss";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "Unauthenticated";
    case grpc::StatusCode::DO_NOT_USE:
      break;
  }
  return absl::StrCat("Code(", code, ")");
}

LoadReport BuildReport(const LoadOptions& options, std::vector<CallRecord> records,
                       int64_t total_ns, std::string end_reason, absl::Time date) {
  LoadReport report;
  report.options = options;
  report.end_reason = std::move(end_reason);
  report.date = date;
  report.total_ns = total_ns;
  if (options.skip_first > 0) {
    const size_t skip = std::min(records.size(), static_cast<size_t>(options.skip_first));
    records.erase(records.begin(), records.begin() + static_cast<std::ptrdiff_t>(skip));
  }
  report.count = static_cast<int64_t>(records.size());
  if (records.empty()) return report;

  double latency_sum_ns = 0;
  std::vector<int64_t> ok;
  ok.reserve(records.size());
  for (const CallRecord& record : records) {
    latency_sum_ns += static_cast<double>(record.latency_ns);
    ++report.status_code_distribution[GhzStatusName(record.code)];
    if (record.code == 0) {
      ok.push_back(record.latency_ns);
    } else {
      ++report.error_distribution[record.error];
    }
  }
  report.average_ns = static_cast<int64_t>(latency_sum_ns / static_cast<double>(records.size()));
  report.rps = total_ns > 0 ? static_cast<double>(report.count) / (total_ns / 1e9) : 0;
  report.details = std::move(records);
  if (ok.empty()) return report;

  // Percentiles, fastest, slowest and the histogram are over successful
  // calls only, as in ghz; the percentile is the nearest rank.
  std::sort(ok.begin(), ok.end());
  report.fastest_ns = ok.front();
  report.slowest_ns = ok.back();
  const size_t n = ok.size();
  for (int percentage : {10, 25, 50, 75, 90, 95, 99}) {
    const size_t rank = static_cast<size_t>(std::ceil(percentage * static_cast<double>(n) / 100));
    report.latency_distribution.push_back({percentage, ok[rank == 0 ? 0 : rank - 1]});
  }
  // Ten equal-width buckets from the fastest call up, plus the slowest as
  // the last mark; a call counts in the first bucket whose mark is >= it.
  constexpr int kBuckets = 10;
  const double fastest_s = static_cast<double>(report.fastest_ns) / 1e9;
  const double slowest_s = static_cast<double>(report.slowest_ns) / 1e9;
  const double width_s = (slowest_s - fastest_s) / kBuckets;
  for (int i = 0; i <= kBuckets; ++i) {
    report.histogram.push_back({i == kBuckets ? slowest_s : fastest_s + width_s * i, 0, 0});
  }
  size_t bucket = 0;
  for (int64_t latency_ns : ok) {
    const double latency_s = static_cast<double>(latency_ns) / 1e9;
    while (bucket < kBuckets && latency_s > report.histogram[bucket].mark_s) ++bucket;
    ++report.histogram[bucket].count;
  }
  for (HistogramBucket& b : report.histogram) {
    b.frequency = static_cast<double>(b.count) / static_cast<double>(n);
  }
  return report;
}

absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options, const std::atomic<bool>* cancel) {
  absl::StatusOr<const google::protobuf::MethodDescriptor*> method = FindMethod(options.call);
  if (!method.ok()) return method.status();
  absl::StatusOr<std::vector<grpc::ByteBuffer>> requests =
      SerializeRequests((*method)->input_type(), options.data_json);
  if (!requests.ok()) return requests.status();

  absl::StatusOr<ChannelSecurity> security = LoadSecurity(options);
  if (!security.ok()) return security.status();

  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  const absl::Time connect_deadline = absl::Now() + options.connect_timeout;
  for (int i = 0; i < options.connections; ++i) {
    grpc::ChannelArguments args = DefaultChannelArguments(256 << 20);
    // Channels with equal arguments share one connection through gRPC's
    // global subchannel pool; a local pool gives each its own.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        CreateChannel(options.host, *security, args, "HOST");
    if (!channel.ok()) return channel.status();
    // ghz connects before the clock starts, so that the run times calls,
    // not the handshake.
    if (!(*channel)->WaitForConnected(absl::ToChronoTime(connect_deadline))) {
      return absl::UnavailableError(absl::StrCat(
          "no connection to ", options.host, " within ",
          absl::FormatDuration(options.connect_timeout),
          security->tls()
              ? " over TLS (the default, as in ghz; --insecure for a plaintext server; a "
                "certificate not signed by --cacert's CA or not naming the host fails too)"
              : " over plaintext (--insecure; a TLS server needs TLS)"));
    }
    stubs.push_back(std::make_unique<grpc::GenericStub>(*std::move(channel)));
  }

  const std::string method_path =
      absl::StrCat("/", (*method)->service()->full_name(), "/", (*method)->name());
  LoadRun run(options, *security, method_path, *std::move(requests), std::move(stubs));
  std::vector<CallRecord> records;
  int64_t total_ns = 0;
  std::string end_reason;
  run.Run(cancel, records, total_ns, end_reason);
  return BuildReport(options, std::move(records), total_ns, std::move(end_reason), absl::Now());
}

std::string FormatSummary(const LoadReport& report) {
  std::string out = "\nSummary:\n";
  if (!report.options.name.empty()) absl::StrAppend(&out, "  Name:\t\t", report.options.name, "\n");
  absl::StrAppend(&out, "  Count:\t", report.count, "\n");
  absl::StrAppend(&out, "  Total:\t", FormatNanoUnit(report.total_ns), "\n");
  absl::StrAppend(&out, "  Slowest:\t", FormatNanoUnit(report.slowest_ns), "\n");
  absl::StrAppend(&out, "  Fastest:\t", FormatNanoUnit(report.fastest_ns), "\n");
  absl::StrAppend(&out, "  Average:\t", FormatNanoUnit(report.average_ns), "\n");
  absl::StrAppend(&out, "  Requests/sec:\t", absl::StrFormat("%4.2f", report.rps), "\n\n");

  out += "Response time histogram:\n";
  int64_t max_count = 0;
  size_t mark_width = 0, count_width = 0;
  for (const HistogramBucket& b : report.histogram) {
    max_count = std::max(max_count, b.count);
    mark_width = std::max(mark_width, absl::StrFormat("%.3f", b.mark_s * 1000).size());
    count_width = std::max(count_width, absl::StrCat(b.count).size());
  }
  for (const HistogramBucket& b : report.histogram) {
    const std::string mark = absl::StrFormat("%.3f", b.mark_s * 1000);
    const std::string count = absl::StrCat(b.count);
    const int64_t bar = max_count > 0 ? (b.count * 40 + max_count / 2) / max_count : 0;
    std::string bars;
    for (int64_t i = 0; i < bar; ++i) bars += "\xe2\x88\x8e";  // U+220E, ghz's bar
    absl::StrAppend(&out, "  ", mark, std::string(mark_width - mark.size(), ' '), " [", count, "]",
                    std::string(count_width - count.size(), ' '), " |", bars, "\n");
  }
  out += "\nLatency distribution:";
  for (const LatencyPoint& point : report.latency_distribution) {
    absl::StrAppend(&out, "\n  ", point.percentage, " % in ", FormatNanoUnit(point.latency_ns),
                    " ");
  }
  out += "\n\n";
  if (!report.status_code_distribution.empty()) {
    out += "Status code distribution:\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& [status, count] : report.status_code_distribution) {
      rows.push_back({absl::StrCat("  [", status, "]"), absl::StrCat(count, " responses")});
    }
    out += Columns(rows);
  }
  out += "\n";
  if (!report.error_distribution.empty()) {
    out += "Error distribution:\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& [error, count] : report.error_distribution) {
      rows.push_back({absl::StrCat("  [", count, "]"), error});
    }
    out += Columns(rows);
  }
  return out;
}

std::string FormatJson(const LoadReport& report, bool pretty) {
  const LoadOptions& o = report.options;
  OrderedJson options;
  options["call"] = o.call;
  options["host"] = o.host;
  if (!o.proto.empty()) options["proto"] = o.proto;
  if (!o.cacert.empty()) options["cacert"] = o.cacert;
  if (!o.cert.empty()) options["cert"] = o.cert;
  if (!o.key.empty()) options["key"] = o.key;
  if (!o.cname.empty()) options["cname"] = o.cname;
  if (o.skip_tls) options["skipTLS"] = true;
  options["insecure"] = o.insecure;
  if (o.rps > 0) options["rps"] = o.rps;
  options["load-schedule"] = "const";
  options["load-start"] = 0;
  options["load-end"] = 0;
  options["load-step"] = 0;
  options["load-step-duration"] = 0;
  options["load-max-duration"] = 0;
  options["concurrency"] = o.concurrency;
  options["concurrency-schedule"] = "const";
  options["concurrency-start"] = 0;
  options["concurrency-end"] = 0;
  options["concurrency-step"] = 0;
  options["concurrency-step-duration"] = 0;
  options["concurrency-max-duration"] = 0;
  if (o.duration == absl::ZeroDuration()) options["total"] = o.total;
  options["connections"] = o.connections;
  if (o.duration > absl::ZeroDuration()) {
    options["duration"] = absl::ToInt64Nanoseconds(o.duration);
  }
  if (o.timeout > absl::ZeroDuration()) options["timeout"] = absl::ToInt64Nanoseconds(o.timeout);
  options["dial-timeout"] = absl::ToInt64Nanoseconds(o.connect_timeout);
  Json data = Json::parse(o.data_json, nullptr, /*allow_exceptions=*/false);
  if (!data.is_discarded()) options["data"] = OrderedJson::parse(data.dump());
  if (!o.metadata.empty()) {
    // ghz copies the metadata into the report; a token does not belong in a
    // file that gets shared, so authorization's value is left out.
    options["metadata"] = OrderedJson::object();
    for (const auto& [key, value] : o.metadata) {
      options["metadata"][key] = key == "authorization" ? "<redacted>" : value;
    }
  }
  options["binary"] = false;
  options["CPUs"] = static_cast<int>(std::thread::hardware_concurrency());
  if (!o.name.empty()) options["name"] = o.name;
  if (o.skip_first > 0) options["skipFirst"] = o.skip_first;

  OrderedJson json;
  json["date"] = Rfc3339(report.date, /*nanos=*/false);
  if (!o.name.empty()) json["name"] = o.name;
  json["endReason"] = report.end_reason;
  json["options"] = std::move(options);
  json["count"] = report.count;
  json["total"] = report.total_ns;
  json["average"] = report.average_ns;
  json["fastest"] = report.fastest_ns;
  json["slowest"] = report.slowest_ns;
  json["rps"] = report.rps;
  json["errorDistribution"] = OrderedJson::object();
  for (const auto& [error, count] : report.error_distribution) {
    json["errorDistribution"][error] = count;
  }
  json["statusCodeDistribution"] = OrderedJson::object();
  for (const auto& [status, count] : report.status_code_distribution) {
    json["statusCodeDistribution"][status] = count;
  }
  // Go marshals the empty slices of a run without successful calls as null.
  json["latencyDistribution"] = nullptr;
  for (const LatencyPoint& point : report.latency_distribution) {
    json["latencyDistribution"].push_back(
        {{"percentage", point.percentage}, {"latency", point.latency_ns}});
  }
  json["histogram"] = nullptr;
  for (const HistogramBucket& b : report.histogram) {
    json["histogram"].push_back(
        {{"mark", b.mark_s}, {"count", b.count}, {"frequency", b.frequency}});
  }
  json["details"] = nullptr;
  const absl::Time start = report.date - absl::Nanoseconds(report.total_ns);
  for (const CallRecord& record : report.details) {
    json["details"].push_back(
        {{"timestamp", Rfc3339(start + absl::Nanoseconds(record.start_ns), /*nanos=*/true)},
         {"latency", record.latency_ns},
         {"error", record.error},
         {"status", GhzStatusName(record.code)}});
  }
  if (!o.tags.empty()) json["tags"] = o.tags;
  return json.dump(pretty ? 2 : -1);
}

}  // namespace attnserve::client
