// attn: a command-line client of attnd, built on the C++ SDK (client.h).
//
//   attn health  [--service=NAME]
//   attn methods
//   attn encode  [FILE|-]            request as proto-JSON, response pretty-printed
//   attn attend  [FILE|-]
//   attn attend  --stream [FILE|-]   a JSON array of requests, or one object per
//                                    line; one JSON response per line
//   attn decode  [FILE|-] [--values] replays a decode session: JSON lines of
//                                    DecodeRequests (an open, then steps and
//                                    truncates); one JSON line per response
//   attn bench   [ghz flags] HOST    a load run with ghz's flags and report
//                                    (load_tool.h); "bench" must come first
//   attn plot encode|attend|curve [FILE|-] --output=PATH.png|PATH.svg [--data=PATH.json]
//                                    a picture of a response (plot_command.h)
//
// Request flags of attend, encode and plot (attention-variants.md) set fields
// over the JSON's: --num_kv_heads, --kv_lengths, --window, --softcap (attend),
// --input_dtype (every value tensor sent as float16/bfloat16 raw_data) and
// --output_dtype (the response's type; 16-bit sets raw_output). A 16-bit
// response tensor is printed with its values, widened exactly, in data and
// its dtype kept.
//
// Common flags: --address=TARGET (default 127.0.0.1:50051), --timeout=SECONDS
// (default 30), and the transport's security (channel.h): plaintext unless
// --tls, --cacert, --cert/--key or --cname; a token from --token, --token_file
// or ATTN_TOKEN. Flags may come before or after the subcommand, as
// --flag=value or --flag value.
//
// Exit codes: 0 success; 1 an RPC failed (or health is not SERVING); 2 a usage
// error (unknown flag or subcommand, unreadable file, malformed JSON). Errors
// go to stderr as "attn: <CODE>: <message>".
#include <signal.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "attnserve/v1/attention.pb.h"
#include "client/channel.h"
#include "client/client.h"
#include "client/load_tool.h"
#include "client/plot.h"
#include "client/plot_command.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"

namespace attnserve::client {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitRpcError = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] =
    R"(usage: attn [--address=HOST:PORT] [--timeout=SECONDS] <command> [args]

commands:
  health [--service=NAME]     grpc.health.v1 Check; prints SERVING or NOT_SERVING
                              (exit 1 unless SERVING)
  methods                     ListMethods; prints the response as JSON
  encode [FILE|-]             Encode; the request is proto-JSON read from FILE or
                              stdin ("-" or no FILE); prints the response as JSON
  attend [FILE|-]             Attend; as encode
  attend --stream [FILE|-]    AttendStream; FILE holds a JSON array of requests or
                              one request object per line; prints one JSON response
                              per line
  decode [FILE|-] [--values]  Decode: replays one session from FILE or stdin,
                              JSON lines of proto-JSON DecodeRequests: the first
                              {"open": {...}}, then {"step": {...}} and
                              {"truncate": {"length": N}} lines; prints one JSON
                              line per response: message index, kind, length,
                              out/probs shapes (--values: and their values);
                              --timeout bounds the whole session
  bench [ghz flags] HOST      a load run with ghz's flags and report; 'bench' comes
                              first, see 'attn bench --help'
  plot encode|attend|curve [FILE|-] --output=PATH.png|PATH.svg [--data=PATH.json]
                              draws a response with axes, title and colour bar:
                              encode: the method's matrix per head (ALiBi bias,
                                DA coefficients, Shaw buckets, Transformer-XL's
                                relative table, sinusoidal table, RoPE/learned y)
                              attend: attention probabilities per head (batch 0)
                              curve: score against distance (RoPE's long-range
                                decay of q.k for one constant vector, ALiBi's
                                penalty and DA's coefficients per head, Shaw's
                                clipped bucket, sinusoid dimensions)
                              FILE is the request as encode/attend read it (a
                              curve takes an Encode request); --data writes the
                              plotted numbers as JSON

request flags (attend, encode, plot, decode; over the request JSON's fields):
  --num_kv_heads=N            attend, decode's open: key/value heads (grouped-query
                              attention)
  --kv_lengths=L1,L2,...      attend: valid keys per batch element (right padding)
  --window=W                  attend, decode's open: sliding window, W >= 1
  --softcap=C                 attend, decode's open: logits become C * tanh(logit / C)
  --input_dtype=TYPE          float32, float16 or bfloat16: send every value
                              tensor of the request as this type (rounded to
                              nearest, ties to even)
  --output_dtype=TYPE         float32, float16 or bfloat16: the response's type
                              (16-bit sets raw_output); 16-bit tensors are
                              printed as their values in data, with dtype

flags:
  --address=TARGET            server: a gRPC target, host:port (default
                              127.0.0.1:50051), dns:///host:port or
                              ipv4:A:PORT,B:PORT (several replicas)
  --timeout=SECONDS           deadline of each call (default 30)
  --service_config=JSON       the channel's gRPC service config instead of the
                              default (round_robin, retries of UNAVAILABLE for
                              the idempotent calls, client-side health checking;
                              docs/api.md); "" for none (pick_first, no retries)
  --help                      this text

security (plaintext unless one of the TLS flags is given):
  --tls                       TLS, verifying the server with the system's roots
  --cacert=PATH               TLS, verifying the server with these PEM roots
  --cert=PATH --key=PATH      mutual TLS: this client's PEM certificate and key
  --cname=NAME                TLS: the name the server's certificate must carry
                              instead of the address's host (--server_name too)
  --token=TOKEN               sent as "authorization: Bearer TOKEN" on every call
                              (visible in `ps`; prefer --token_file or ATTN_TOKEN)
  --token_file=PATH           the token, read from a file
  environment ATTN_TOKEN      the token, when neither flag gives one

exit codes: 0 ok, 1 RPC error, 2 usage error
)";

struct Args {
  std::string address = "127.0.0.1:50051";
  double timeout_seconds = 30;
  SecurityOptions security;
  std::optional<std::string> service_config;  // unset: the SDK's default
  std::string service;
  std::string output;  // plot: the picture
  std::string data;    // plot: the plotted numbers
  // Request flags, as given (checked by RequestFlags).
  std::map<std::string, std::string> request_flags;
  bool stream = false;
  bool values = false;  // decode: print the tensors' values
  bool help = false;
  std::vector<std::string> positional;  // command, then its arguments
};

void PrintError(absl::string_view code, absl::string_view message) {
  std::cerr << "attn: " << code << ": " << message << "\n";
}

// Usage errors use the status-code vocabulary too, so that stderr always reads
// "attn: <CODE>: <message>"; the exit code tells them apart from RPC errors.
int UsageError(absl::string_view message, absl::string_view help = "attn --help") {
  PrintError(absl::StatusCodeToString(absl::StatusCode::kInvalidArgument), message);
  std::cerr << "run '" << help << "' for usage\n";
  return kExitUsage;
}

int RpcError(const absl::Status& status) {
  PrintError(absl::StatusCodeToString(status.code()), status.message());
  return kExitRpcError;
}

// The request flags and whether they apply to attend only.
const std::map<std::string, bool> kRequestFlags = {{"num_kv_heads", true}, {"kv_lengths", true},
                                                   {"window", true},       {"softcap", true},
                                                   {"input_dtype", false}, {"output_dtype", false}};

// Parses argv into `args`; an error message on failure.
std::optional<std::string> ParseArgs(int argc, char** argv, Args& args) {
  // Flags that take a value, as --name=value or --name value.
  const auto take_value = [&](int& i, absl::string_view arg, absl::string_view name,
                              std::string& value) -> std::optional<bool> {
    const std::string prefix = absl::StrCat("--", name);
    if (arg == prefix) {
      if (i + 1 >= argc) return std::nullopt;
      value = argv[++i];
      return true;
    }
    if (absl::StartsWith(arg, prefix + "=")) {
      value = std::string(arg.substr(prefix.size() + 1));
      return true;
    }
    return false;
  };
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (only_positional || arg == "-" || !absl::StartsWith(arg, "-")) {
      args.positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      args.help = true;
      continue;
    }
    if (arg == "--stream") {
      args.stream = true;
      continue;
    }
    if (arg == "--values") {
      args.values = true;
      continue;
    }
    if (arg == "--tls") {
      args.security.tls = true;
      continue;
    }
    std::string value;
    bool matched = false;
    for (absl::string_view name :
         {"address", "timeout", "service", "output", "data", "service_config", "cacert", "cert",
          "key", "cname", "server_name", "token", "token_file", "num_kv_heads", "kv_lengths",
          "window", "softcap", "input_dtype", "output_dtype"}) {
      std::optional<bool> taken = take_value(i, arg, name, value);
      if (!taken.has_value()) return absl::StrCat("--", name, " needs a value");
      if (!*taken) continue;
      matched = true;
      if (name == "address") {
        if (value.empty()) return "--address must not be empty";
        args.address = value;
      } else if (name == "timeout") {
        if (!absl::SimpleAtod(value, &args.timeout_seconds) || !(args.timeout_seconds > 0) ||
            args.timeout_seconds > 1e9) {
          return absl::StrCat("--timeout must be a number of seconds > 0, got \"", value, "\"");
        }
      } else if (name == "output") {
        args.output = value;
      } else if (name == "data") {
        args.data = value;
      } else if (name == "service") {
        args.service = value;
      } else if (name == "service_config") {
        args.service_config = value;
      } else if (kRequestFlags.count(std::string(name)) > 0) {
        args.request_flags[std::string(name)] = value;
      } else if (value.empty()) {
        return absl::StrCat("--", name, " must not be empty");
      } else if (name == "cacert") {
        args.security.ca_file = value;
      } else if (name == "cert") {
        args.security.cert_file = value;
      } else if (name == "key") {
        args.security.key_file = value;
      } else if (name == "cname" || name == "server_name") {
        args.security.server_name = value;
      } else if (name == "token") {
        args.security.token = value;
      } else {
        args.security.token_file = value;
      }
      break;
    }
    if (!matched) return absl::StrCat("unknown flag ", arg);
  }
  return std::nullopt;
}

// The contents of `path`, or of stdin for "-" or "".
absl::StatusOr<std::string> ReadInput(const std::string& path) {
  if (path.empty() || path == "-") {
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (std::cin.bad()) return absl::InvalidArgumentError("cannot read stdin");
    return text;
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  return text.str();
}

// Splits `text` into its top-level JSON values: the elements of one JSON
// array, or a sequence of objects (one per line, or simply concatenated).
// Only brackets and strings are tracked; each piece is parsed by protobuf
// afterwards, which reports any other syntax error.
absl::StatusOr<std::vector<std::string>> SplitJsonValues(absl::string_view text) {
  size_t start = 0;
  while (start < text.size() && std::isspace(static_cast<unsigned char>(text[start]))) ++start;
  if (start == text.size()) return absl::InvalidArgumentError("no requests in the input");
  const bool array = text[start] == '[';
  if (array) ++start;
  const int base_depth = array ? 1 : 0;
  std::vector<std::string> values;
  int depth = base_depth;
  bool in_string = false, escaped = false, closed = false;
  size_t value_start = std::string::npos;
  for (size_t i = start; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (closed) return absl::InvalidArgumentError("unexpected text after the closing ']'");
    if (depth == base_depth) {
      if (array && c == ']') {
        closed = true;
        continue;
      }
      if (array && c == ',') {
        if (value_start != std::string::npos || values.empty()) {
          return absl::InvalidArgumentError("expected a request object before ','");
        }
        continue;
      }
      if (c != '{') {
        return absl::InvalidArgumentError(
            absl::StrCat("expected a request object, got '", std::string(1, c), "' at byte ", i));
      }
      value_start = i;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth < base_depth) return absl::InvalidArgumentError("unbalanced brackets");
      if (depth == base_depth) {
        values.emplace_back(text.substr(value_start, i + 1 - value_start));
        value_start = std::string::npos;
      }
    }
  }
  if (in_string || depth != base_depth || (array && !closed)) {
    return absl::InvalidArgumentError("unexpected end of input (unterminated JSON)");
  }
  if (values.empty()) return absl::InvalidArgumentError("no requests in the input");
  return values;
}

template <typename Message>
absl::Status ParseJson(const std::string& json, Message& message) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &message, options);
  if (!status.ok()) return absl::InvalidArgumentError(std::string(status.message()));
  return absl::OkStatus();
}

template <typename Message>
std::string ToJson(const Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  std::string json;
  // Printing a valid message cannot fail.
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!pretty) return json;
  // add_whitespace already ends with a newline.
  while (!json.empty() && json.back() == '\n') json.pop_back();
  return json;
}

// The request flags, parsed and checked (usage errors name the flag).
struct RequestFlags {
  std::optional<int32_t> num_kv_heads;
  std::optional<std::vector<int64_t>> kv_lengths;
  std::optional<int64_t> window;
  std::optional<double> softcap;
  std::optional<TensorEncoding> input_encoding;
  std::optional<attnserve::v1::DataType> output_dtype;
};

absl::StatusOr<attnserve::v1::DataType> ParseDataType(absl::string_view flag,
                                                      absl::string_view text) {
  if (text == "float32") return attnserve::v1::DTYPE_FLOAT32;
  if (text == "float16") return attnserve::v1::DTYPE_FLOAT16;
  if (text == "bfloat16") return attnserve::v1::DTYPE_BFLOAT16;
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, " must be float32, float16 or bfloat16, got \"", text, "\""));
}

absl::StatusOr<RequestFlags> ParseRequestFlags(const Args& args) {
  RequestFlags flags;
  const std::string& command = args.positional.empty() ? "" : args.positional[0];
  for (const auto& [name, text] : args.request_flags) {
    // `command` is the kind of a plot's request ("curve": an Encode) when
    // called from ReadRequest, and "plot" from Main's early check.
    if (command != "attend" && command != "encode" && command != "plot" && command != "curve" &&
        command != "decode") {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " applies to attend, encode, plot and decode only"));
    }
    if (kRequestFlags.at(name) && (command == "encode" || command == "curve")) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " applies to attend only"));
    }
    if (name == "kv_lengths" && command == "decode") {
      return absl::InvalidArgumentError("--kv_lengths applies to attend only");
    }
    const auto bad = [&name = name, &text = text](absl::string_view rule) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " must be ", rule, ", got \"", text, "\""));
    };
    if (name == "num_kv_heads") {
      int32_t value = 0;
      if (!absl::SimpleAtoi(text, &value) || value < 0) return bad("an integer >= 0");
      flags.num_kv_heads = value;
    } else if (name == "kv_lengths") {
      std::vector<int64_t> lengths;
      for (absl::string_view piece : absl::StrSplit(text, ',')) {
        int64_t value = 0;
        if (!absl::SimpleAtoi(piece, &value)) return bad("comma-separated integers");
        lengths.push_back(value);
      }
      flags.kv_lengths = std::move(lengths);
    } else if (name == "window") {
      int64_t value = 0;
      if (!absl::SimpleAtoi(text, &value)) return bad("an integer");
      flags.window = value;
    } else if (name == "softcap") {
      double value = 0;
      if (!absl::SimpleAtod(text, &value)) return bad("a number");
      flags.softcap = value;
    } else {
      absl::StatusOr<attnserve::v1::DataType> dtype = ParseDataType(name, text);
      if (!dtype.ok()) return dtype.status();
      if (name == "output_dtype") {
        flags.output_dtype = *dtype;
      } else {
        flags.input_encoding = *dtype == attnserve::v1::DTYPE_FLOAT16 ? TensorEncoding::kRawFloat16
                               : *dtype == attnserve::v1::DTYPE_BFLOAT16
                                   ? TensorEncoding::kRawBfloat16
                                   : TensorEncoding::kRawData;
      }
    }
  }
  return flags;
}

// Calls `visit` on every Tensor in `message`, nested messages and map values
// included (the method's tensors, an EncodeResponse's outputs).
absl::Status ForEachTensor(google::protobuf::Message& message,
                           const std::function<absl::Status(attnserve::v1::Tensor&)>& visit) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const google::protobuf::FieldDescriptor* field : fields) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const int count = field->is_repeated() ? reflection->FieldSize(message, field) : 1;
    for (int i = 0; i < count; ++i) {
      google::protobuf::Message* child =
          field->is_repeated() ? reflection->MutableRepeatedMessage(&message, field, i)
                               : reflection->MutableMessage(&message, field);
      auto* tensor = dynamic_cast<attnserve::v1::Tensor*>(child);
      absl::Status status = tensor != nullptr ? visit(*tensor) : ForEachTensor(*child, visit);
      if (!status.ok()) {
        return absl::Status(status.code(), absl::StrCat(field->name(), ".", status.message()));
      }
    }
  }
  return absl::OkStatus();
}

// The flags' fields over `request`'s (AttendRequest or EncodeRequest).
template <typename Request>
absl::Status ApplyRequestFlags(const RequestFlags& flags, Request& request) {
  if constexpr (std::is_same_v<Request, attnserve::v1::AttendRequest> ||
                std::is_same_v<Request, attnserve::v1::DecodeOpen>) {
    if (flags.num_kv_heads) request.set_num_kv_heads(*flags.num_kv_heads);
    if constexpr (std::is_same_v<Request, attnserve::v1::AttendRequest>) {
      if (flags.kv_lengths) {
        request.mutable_kv_lengths()->Assign(flags.kv_lengths->begin(), flags.kv_lengths->end());
      }
    }
    if (flags.window) request.set_window(*flags.window);
    if (flags.softcap) request.set_softcap(*flags.softcap);
  }
  if constexpr (!std::is_same_v<Request, attnserve::v1::DecodeStep>) {
    if (flags.output_dtype) {
      request.set_output_dtype(*flags.output_dtype);
      if (*flags.output_dtype != attnserve::v1::DTYPE_FLOAT32) request.set_raw_output(true);
    }
  }
  if (!flags.input_encoding) return absl::OkStatus();
  // A tensor's errors read as the server's would: "q.raw_data: ...".
  return ForEachTensor(request, [&flags](attnserve::v1::Tensor& tensor) -> absl::Status {
    absl::StatusOr<attnserve::v1::Tensor> recoded = RecodeTensor(tensor, *flags.input_encoding);
    if (!recoded.ok()) {
      absl::string_view message = recoded.status().message();
      absl::ConsumePrefix(&message, "tensor.");
      return absl::InvalidArgumentError(message);
    }
    tensor = *std::move(recoded);
    return absl::OkStatus();
  });
}

// A response's 16-bit tensors as data (their values widened, exactly) with
// dtype kept, so that the printed JSON shows numbers instead of base64.
template <typename Response>
Response Printable(Response response) {
  (void)ForEachTensor(response, [](attnserve::v1::Tensor& tensor) {
    if (tensor.dtype() != attnserve::v1::DTYPE_FLOAT16 &&
        tensor.dtype() != attnserve::v1::DTYPE_BFLOAT16) {
      return absl::OkStatus();
    }
    absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
    if (!values.ok()) return absl::OkStatus();  // printed as received
    tensor.clear_raw_data();
    tensor.mutable_data()->Assign(values->begin(), values->end());
    return absl::OkStatus();
  });
  return response;
}

// The single FILE argument of encode/attend ("" = stdin).
absl::StatusOr<std::string> InputPath(const Args& args) {
  if (args.positional.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        args.positional[0], " takes at most one FILE, got ", args.positional.size() - 1));
  }
  return args.positional.size() == 2 ? args.positional[1] : std::string();
}

template <typename Request>
absl::StatusOr<Request> ReadRequest(const Args& args) {
  absl::StatusOr<std::string> path = InputPath(args);
  if (!path.ok()) return path.status();
  absl::StatusOr<std::string> text = ReadInput(*path);
  if (!text.ok()) return text.status();
  Request request;
  absl::Status status = ParseJson(*text, request);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request JSON (", path->empty() ? "-" : *path, "): ", status.message()));
  }
  absl::StatusOr<RequestFlags> flags = ParseRequestFlags(args);
  if (!flags.ok()) return flags.status();
  status = ApplyRequestFlags(*flags, request);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request (", path->empty() ? "-" : *path, "): ", status.message()));
  }
  return request;
}

int RunHealth(Client& client, const Args& args) {
  if (args.positional.size() > 1) return UsageError("health takes no arguments");
  absl::StatusOr<bool> serving = client.Health(args.service);
  if (!serving.ok()) return RpcError(serving.status());
  std::cout << (*serving ? "SERVING" : "NOT_SERVING") << std::endl;
  return *serving ? kExitOk : kExitRpcError;
}

int RunMethods(Client& client, const Args& args) {
  if (args.positional.size() > 1) return UsageError("methods takes no arguments");
  absl::StatusOr<attnserve::v1::ListMethodsResponse> response = client.ListMethods();
  if (!response.ok()) return RpcError(response.status());
  std::cout << ToJson(*response, /*pretty=*/true) << std::endl;
  return kExitOk;
}

int RunEncode(Client& client, const Args& args) {
  absl::StatusOr<attnserve::v1::EncodeRequest> request =
      ReadRequest<attnserve::v1::EncodeRequest>(args);
  if (!request.ok()) return UsageError(request.status().message());
  absl::StatusOr<attnserve::v1::EncodeResponse> response = client.Encode(*request);
  if (!response.ok()) return RpcError(response.status());
  std::cout << ToJson(Printable(*std::move(response)), /*pretty=*/true) << std::endl;
  return kExitOk;
}

int RunAttend(Client& client, const Args& args) {
  absl::StatusOr<attnserve::v1::AttendRequest> request =
      ReadRequest<attnserve::v1::AttendRequest>(args);
  if (!request.ok()) return UsageError(request.status().message());
  absl::StatusOr<attnserve::v1::AttendResponse> response = client.Attend(*request);
  if (!response.ok()) return RpcError(response.status());
  std::cout << ToJson(Printable(*std::move(response)), /*pretty=*/true) << std::endl;
  return kExitOk;
}

// The JSON values of the FILE argument (attend --stream, decode), split by
// SplitJsonValues; `source` is set to the FILE ("-" for stdin). Errors are
// the user's (usage) and name `what` and the source.
absl::StatusOr<std::vector<std::string>> ReadJsonValues(const Args& args, absl::string_view what,
                                                        std::string& source) {
  absl::StatusOr<std::string> path = InputPath(args);
  if (!path.ok()) return path.status();
  absl::StatusOr<std::string> text = ReadInput(*path);
  if (!text.ok()) return text.status();
  source = path->empty() ? "-" : *path;
  absl::StatusOr<std::vector<std::string>> pieces = SplitJsonValues(*text);
  if (!pieces.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " JSON (", source, "): ", pieces.status().message()));
  }
  return pieces;
}

int RunAttendStream(Client& client, const Args& args) {
  std::string source;
  absl::StatusOr<std::vector<std::string>> pieces = ReadJsonValues(args, "requests", source);
  if (!pieces.ok()) return UsageError(pieces.status().message());
  absl::StatusOr<RequestFlags> flags = ParseRequestFlags(args);
  if (!flags.ok()) return UsageError(flags.status().message());
  std::vector<attnserve::v1::AttendRequest> requests(pieces->size());
  for (size_t i = 0; i < pieces->size(); ++i) {
    absl::Status status = ParseJson((*pieces)[i], requests[i]);
    if (status.ok()) status = ApplyRequestFlags(*flags, requests[i]);
    if (!status.ok()) {
      return UsageError(
          absl::StrCat("requests JSON (", source, ") request ", i, ": ", status.message()));
    }
  }
  Client::StreamResult result = client.AttendStream(requests);
  for (attnserve::v1::AttendResponse& response : result.responses) {
    std::cout << ToJson(Printable(std::move(response)), /*pretty=*/false) << "\n";
  }
  std::cout.flush();
  if (!result.status.ok()) return RpcError(result.status);
  return kExitOk;
}

// `attn plot KIND [FILE|-]`: the request as encode/attend read it, the
// response drawn to --output, its numbers to --data.
int RunPlot(Client& client, const Args& args) {
  if (args.positional.size() < 2 || args.positional.size() > 3) {
    return UsageError("plot takes a kind (encode, attend or curve) and at most one FILE");
  }
  const std::string& kind = args.positional[1];
  if (kind != "encode" && kind != "attend" && kind != "curve") {
    return UsageError(
        absl::StrCat("plot: unknown kind \"", kind, "\" (expected encode, attend or curve)"));
  }
  if (args.output.empty()) return UsageError("plot needs --output=PATH.png or PATH.svg");
  Args request_args = args;
  request_args.positional.erase(request_args.positional.begin());
  absl::StatusOr<plot::Figure> figure;
  if (kind == "attend") {
    absl::StatusOr<attnserve::v1::AttendRequest> request =
        ReadRequest<attnserve::v1::AttendRequest>(request_args);
    if (!request.ok()) return UsageError(request.status().message());
    figure = PlotAttend(client, *request);
  } else {
    absl::StatusOr<attnserve::v1::EncodeRequest> request =
        ReadRequest<attnserve::v1::EncodeRequest>(request_args);
    if (!request.ok()) return UsageError(request.status().message());
    figure = kind == "encode" ? PlotEncode(client, *request) : PlotCurve(client, *request);
  }
  if (!figure.ok()) return RpcError(figure.status());
  if (absl::Status drawn = plot::Render(*figure, args.output); !drawn.ok()) {
    return drawn.code() == absl::StatusCode::kInvalidArgument ? UsageError(drawn.message())
                                                              : RpcError(drawn);
  }
  if (!args.data.empty()) {
    std::ofstream file(args.data, std::ios::binary | std::ios::trunc);
    file << plot::FigureJson(*figure);
    file.close();
    if (!file) {
      return UsageError(
          absl::StrCat("--data: cannot write ", args.data, ": ", std::strerror(errno)));
    }
  }
  std::cout << "wrote " << args.output << (args.data.empty() ? "" : " and " + args.data) << "\n";
  return kExitOk;
}

// A response tensor as JSON: its shape, its dtype when 16-bit, and with
// `values` its values (16-bit ones widened exactly; %.9g prints every float32
// so that it reads back to the same value).
std::string TensorJson(const attnserve::v1::Tensor& tensor, bool values) {
  std::string json = absl::StrCat("{\"shape\":[", absl::StrJoin(tensor.shape(), ","), "]");
  if (tensor.dtype() == attnserve::v1::DTYPE_FLOAT16 ||
      tensor.dtype() == attnserve::v1::DTYPE_BFLOAT16) {
    absl::StrAppend(&json, ",\"dtype\":\"", attnserve::v1::DataType_Name(tensor.dtype()), "\"");
  }
  if (values) {
    absl::StatusOr<std::vector<float>> data = TensorValues(tensor);
    if (data.ok()) {
      absl::StrAppend(&json, ",\"data\":[",
                      absl::StrJoin(*data, ",",
                                    [](std::string* out, float value) {
                                      absl::StrAppend(out, absl::StrFormat("%.9g", value));
                                    }),
                      "]");
    } else {
      absl::StrAppend(&json, ",\"error\":\"", data.status().message(), "\"");
    }
  }
  return json + "}";
}

// `attn decode [FILE|-]`: one Decode stream replaying FILE's messages, each
// waiting for its response, which is printed as one JSON line:
//   {"message":I,"kind":"open|step|truncate","length":N[,"out":T][,"probs":T]}
// The first message must be the open (a usage error otherwise), so that a
// file's mistake is not sent; every other rule is the server's.
int RunDecode(Client& client, const Args& args) {
  std::string source;
  absl::StatusOr<std::vector<std::string>> pieces = ReadJsonValues(args, "decode", source);
  if (!pieces.ok()) return UsageError(pieces.status().message());
  absl::StatusOr<RequestFlags> flags = ParseRequestFlags(args);
  if (!flags.ok()) return UsageError(flags.status().message());
  std::vector<attnserve::v1::DecodeRequest> messages(pieces->size());
  for (size_t i = 0; i < pieces->size(); ++i) {
    attnserve::v1::DecodeRequest& message = messages[i];
    absl::Status status = ParseJson((*pieces)[i], message);
    if (status.ok() && (i == 0) != message.has_open()) {
      status = absl::InvalidArgumentError(
          i == 0 ? "the first message must be {\"open\": {...}}"
                 : "open may only be the first message (one session per stream)");
    }
    if (status.ok() && message.has_open()) {
      status = ApplyRequestFlags(*flags, *message.mutable_open());
    } else if (status.ok() && message.has_step()) {
      status = ApplyRequestFlags(*flags, *message.mutable_step());
    }
    if (!status.ok()) {
      return UsageError(
          absl::StrCat("decode JSON (", source, ") message ", i, ": ", status.message()));
    }
  }
  const auto print = [&args](size_t index, absl::string_view kind,
                             const attnserve::v1::DecodeResponse& response) {
    std::string line = absl::StrCat("{\"message\":", index, ",\"kind\":\"", kind,
                                    "\",\"length\":", response.length());
    if (response.has_out()) absl::StrAppend(&line, ",\"out\":", TensorJson(response.out(), args.values));
    if (response.has_probs()) {
      absl::StrAppend(&line, ",\"probs\":", TensorJson(response.probs(), args.values));
    }
    std::cout << line << "}" << std::endl;
  };
  absl::StatusOr<std::unique_ptr<DecodeSession>> session =
      client.Decode(messages[0].open(), absl::Seconds(args.timeout_seconds));
  if (!session.ok()) return RpcError(session.status());
  print(0, "open", attnserve::v1::DecodeResponse());
  for (size_t i = 1; i < messages.size(); ++i) {
    const attnserve::v1::DecodeRequest& message = messages[i];
    absl::StatusOr<attnserve::v1::DecodeResponse> response;
    if (message.has_truncate()) {
      absl::StatusOr<int64_t> length = (*session)->Truncate(message.truncate().length());
      if (length.ok()) response.emplace().set_length(*length);
      else response = length.status();
    } else {
      // A message with neither step nor truncate goes as an empty step;
      // the server names what is missing.
      response = (*session)->Step(message.step());
    }
    if (!response.ok()) return RpcError(response.status());
    print(i, message.has_truncate() ? "truncate" : "step", *response);
  }
  if (absl::Status closed = (*session)->Close(); !closed.ok()) return RpcError(closed);
  return kExitOk;
}

// Set by SIGINT during `attn bench`: the run stops and reports what it has.
std::atomic<bool> bench_interrupted{false};

extern "C" void OnBenchInterrupt(int /*signal*/) { bench_interrupted.store(true); }

// `attn bench`: its own flags (ghz's), so argv goes to the load tool as is.
int RunBench(const std::vector<std::string>& args) {
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::cout << kLoadUsage;
      return kExitOk;
    }
  }
  absl::StatusOr<LoadOptions> options = ParseLoadOptions(args);
  if (!options.ok()) return UsageError(options.status().message(), "attn bench --help");
  // The first Ctrl-C ends the run with a report (as ghz); SA_RESETHAND makes
  // a second one kill the process.
  struct sigaction action = {};
  action.sa_handler = OnBenchInterrupt;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  absl::StatusOr<LoadReport> report = RunLoad(*options, &bench_interrupted);
  if (!report.ok()) {
    // A call, data or certificate file the tool cannot use is the user's to
    // fix; no connection is the server's state.
    if (report.status().code() == absl::StatusCode::kInvalidArgument ||
        report.status().code() == absl::StatusCode::kNotFound) {
      return UsageError(report.status().message(), "attn bench --help");
    }
    return RpcError(report.status());
  }
  const std::string text = options->format == "summary"
                               ? FormatSummary(*report)
                               : FormatJson(*report, options->format == "pretty") + "\n";
  if (options->output.empty()) {
    std::cout << text << std::flush;
    return kExitOk;
  }
  std::ofstream file(options->output, std::ios::binary | std::ios::trunc);
  file << text;
  file.close();
  if (!file) {
    return UsageError(
        absl::StrCat("--output: cannot write ", options->output, ": ", std::strerror(errno)));
  }
  return kExitOk;
}

int Main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "bench") == 0) {
    return RunBench(std::vector<std::string>(argv + 2, argv + argc));
  }
  Args args;
  if (std::optional<std::string> error = ParseArgs(argc, argv, args)) return UsageError(*error);
  if (args.help || args.positional.empty()) {
    (args.help ? std::cout : std::cerr) << kUsage;
    return args.help ? kExitOk : kExitUsage;
  }
  const std::string& command = args.positional[0];
  if (command == "bench") return UsageError("'bench' must be the first argument: attn bench ...");
  if (command != "health" && command != "methods" && command != "encode" && command != "attend" &&
      command != "plot" && command != "decode") {
    return UsageError(absl::StrCat("unknown command \"", command, "\""));
  }
  if (args.stream && command != "attend") return UsageError("--stream applies to attend only");
  if (args.values && command != "decode") return UsageError("--values applies to decode only");
  if (!args.service.empty() && command != "health") {
    return UsageError("--service applies to health only");
  }
  if ((!args.output.empty() || !args.data.empty()) && command != "plot") {
    return UsageError("--output and --data apply to plot only");
  }
  if (absl::StatusOr<RequestFlags> flags = ParseRequestFlags(args); !flags.ok()) {
    return UsageError(flags.status().message());
  }
  ClientOptions options;
  options.default_deadline = absl::Seconds(args.timeout_seconds);
  options.security = args.security;
  options.service_config = args.service_config;
  // Checked here too, so that errors name the flags rather than the SDK's fields.
  absl::StatusOr<ChannelSecurity> security = LoadChannelSecurity(args.security);
  if (!security.ok()) {
    return UsageError(RenameOptionFields(security.status(), {{"ca_file", "--cacert"},
                                                            {"cert_file", "--cert"},
                                                            {"key_file", "--key"},
                                                            {"server_name", "--cname"},
                                                            {"token", "--token"},
                                                            {"token_file", "--token_file"}})
                          .message());
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(args.address, options);
  if (!client.ok()) {
    absl::string_view message = client.status().message();
    return absl::ConsumePrefix(&message, "options.service_config")
               ? UsageError(absl::StrCat("--service_config", message))
               : UsageError(message);
  }
  if (command == "health") return RunHealth(**client, args);
  if (command == "methods") return RunMethods(**client, args);
  if (command == "encode") return RunEncode(**client, args);
  if (command == "plot") return RunPlot(**client, args);
  if (command == "decode") return RunDecode(**client, args);
  return args.stream ? RunAttendStream(**client, args) : RunAttend(**client, args);
}

}  // namespace
}  // namespace attnserve::client

int main(int argc, char** argv) { return attnserve::client::Main(argc, argv); }
