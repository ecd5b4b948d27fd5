// The C++ SDK of attnserve: a client of attnserve.v1.AttentionService and of
// grpc.health.v1.Health that hides channels, stubs and ClientContext, and
// returns absl::Status instead of grpc::Status.
//
// Thread-safety: a Client is thread-safe; any number of threads may call any
// of its methods at once (each call has its own ClientContext). MakeTensor,
// TensorValues and the other tensor helpers are pure functions.
//
// Errors: every RPC returns the server's status with the same-named
// absl::StatusCode and the server's message (see FromGrpcStatus); a call that
// does not finish within ClientOptions::default_deadline is DEADLINE_EXCEEDED,
// and an unreachable server is UNAVAILABLE (so is a failed TLS handshake); a
// missing or wrong token is the server's UNAUTHENTICATED.
//
// Security (channel.h): plaintext by default; ClientOptions::security asks for
// TLS (ca_file, server_name), mutual TLS (cert_file + key_file) and a bearer
// token (token, token_file, or the environment variable ATTN_TOKEN).
//
// Example:
//   auto client = attnserve::client::Client::Create("127.0.0.1:50051");
//   attnserve::v1::AttendRequest request;
//   request.mutable_method()->mutable_alibi();
//   *request.mutable_q() = MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1});
//   ...
//   absl::StatusOr<attnserve::v1::AttendResponse> response = (*client)->Attend(request);
//
//   // Grouped-query attention (32 query heads over 8 key/value heads), a
//   // sliding window, float16 in and out (attention-variants.md): the new
//   // parameters are the request's fields.
//   *request.mutable_q() = MakeTensor({1, 32, s, 64}, q, TensorEncoding::kRawFloat16);
//   *request.mutable_k() = MakeTensor({1, 8, s, 64}, k, TensorEncoding::kRawFloat16);
//   *request.mutable_v() = MakeTensor({1, 8, s, 64}, v, TensorEncoding::kRawFloat16);
//   request.set_causal(true);
//   request.set_window(512);                                // also kv_lengths, softcap
//   request.set_raw_output(true);                           // 16-bit output needs raw_output
//   request.set_output_dtype(attnserve::v1::DTYPE_FLOAT16);
//   std::vector<float> out = *TensorValues((*client)->Attend(request)->out());
//
//   ClientOptions options;                       // TLS, mutual TLS and a token
//   options.security.ca_file = "ca.pem";
//   options.security.cert_file = "client.pem";
//   options.security.key_file = "client.key";
//   options.security.token_file = "/run/secrets/attn-token";
//   auto secure = attnserve::client::Client::Create("attnd.example:50051", options);
#ifndef ATTNSERVE_CLIENT_CLIENT_H_
#define ATTNSERVE_CLIENT_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "attnserve/v1/attention.pb.h"
#include "client/channel.h"
#include "client/decode_session.h"
#include "client/dtype.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/status.h"

namespace attnserve::client {

struct ClientOptions {
  // The deadline of every call, counted from its start (for AttendStream: of
  // the whole stream).
  absl::Duration default_deadline = absl::Seconds(30);
  // The channel's send and receive message size limits, in bytes.
  int max_message_bytes = 256 << 20;
  // Transport security and the bearer token (channel.h); plaintext and, unless
  // ATTN_TOKEN is set, no token by default.
  SecurityOptions security;
  // The channel's service config (JSON): unset = DefaultServiceConfig()
  // (channel.h: round_robin, retries of UNAVAILABLE for the idempotent RPCs,
  // client-side health checking); "" = none (gRPC's pick_first, no retries).
  std::optional<std::string> service_config;
};

// How a request tensor travels (attention-variants.md 6). The 16-bit ones
// halve the bytes of a call; the server widens them exactly to float32, so
// the result is that of the rounded values (all computation stays float32).
enum class TensorEncoding {
  kData,         // Tensor.data: repeated float (JSON-friendly).
  kRawData,      // Tensor.raw_data: little-endian float32 bytes (fast path).
  kRawFloat16,   // raw_data of IEEE binary16 (dtype DTYPE_FLOAT16), 2 bytes an element.
  kRawBfloat16,  // raw_data of bfloat16 (dtype DTYPE_BFLOAT16), 2 bytes an element.
};

// A request tensor of `shape` holding `values` (row-major, C order), in
// `encoding`; the 16-bit encodings round each value to nearest, ties to even
// (dtype.h: beyond the format's range it becomes infinity, which the server
// refuses as INVALID_ARGUMENT naming the element). Does not check that
// values.size() == product(shape): the server rejects a mismatch with
// INVALID_ARGUMENT naming the field.
attnserve::v1::Tensor MakeTensor(absl::Span<const int64_t> shape, absl::Span<const float> values,
                                 TensorEncoding encoding = TensorEncoding::kData);

// A request tensor of 16-bit values given as their bit patterns (row-major;
// dtype.h converts), sent as they are: `dtype` is DTYPE_FLOAT16 or
// DTYPE_BFLOAT16 (any other is INVALID_ARGUMENT naming dtype).
absl::StatusOr<attnserve::v1::Tensor> MakeTensor16(absl::Span<const int64_t> shape,
                                                   absl::Span<const uint16_t> bits,
                                                   attnserve::v1::DataType dtype);

// The same values in `encoding` (e.g. a response's float32 tensor re-sent as
// float16, or a proto-JSON request's data tensors as 16-bit raw_data);
// errors as TensorValues'. A ref is returned unchanged.
absl::StatusOr<attnserve::v1::Tensor> RecodeTensor(const attnserve::v1::Tensor& tensor,
                                                   TensorEncoding encoding);

// A request tensor naming one the server loaded at start-up (attnd
// --tensor_dir): `ref` is "<file stem>/<tensor name>", as ListMethods lists
// them. `shape` may stay empty (the stored shape is used) or state the
// expected one, which the server then checks. An unknown ref is NOT_FOUND.
attnserve::v1::Tensor MakeRefTensor(absl::string_view ref, absl::Span<const int64_t> shape = {});

// The values (row-major) of a tensor given as data or raw_data, float32 or
// 16-bit (Tensor.dtype; widened exactly, so a response with output_dtype
// float16 reads back as the float16 values). INVALID_ARGUMENT if it holds a
// ref, sets both data and raw_data, has a 16-bit dtype on data (or an
// unknown dtype), has a dimension < 1, or the count (for raw_data: the byte
// length / the element size) does not match product(shape).
absl::StatusOr<std::vector<float>> TensorValues(const attnserve::v1::Tensor& tensor);

// The bit patterns (row-major) of a tensor whose raw_data holds 16-bit
// values (dtype DTYPE_FLOAT16 or DTYPE_BFLOAT16): the response's values
// exactly as sent. INVALID_ARGUMENT for any other tensor, and as TensorValues.
absl::StatusOr<std::vector<uint16_t>> TensorBits16(const attnserve::v1::Tensor& tensor);

// The absl::Status with the same-named code and the same message as `status`.
absl::Status FromGrpcStatus(const grpc::Status& status);

class Client {
 public:
  // A client of the server at `target` (a gRPC target: "host:port",
  // "dns:///host:port", "ipv4:10.0.0.1:50051,10.0.0.2:50051", "unix:/path",
  // ...) with options.security (plaintext by default) and, unless
  // options.service_config says otherwise, the defaults of channel.h
  // (round_robin over the target's addresses, retries of UNAVAILABLE for the
  // idempotent RPCs, client-side health checking, keepalive). Connects lazily, on the first call;
  // so fails only on a malformed target or option (INVALID_ARGUMENT) or a certificate or token file
  // that cannot be read (NOT_FOUND), never because the server is down.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const std::string& target,
                                                        ClientOptions options = {});

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Multi-head attention under one positional method (api.md "Attend").
  absl::StatusOr<attnserve::v1::AttendResponse> Attend(const attnserve::v1::AttendRequest& request);

  // A positional encoding on its own (api.md "Encode").
  absl::StatusOr<attnserve::v1::EncodeResponse> Encode(const attnserve::v1::EncodeRequest& request);

  // The server's methods, their parameters and defaults, and its limits.
  absl::StatusOr<attnserve::v1::ListMethodsResponse> ListMethods();

  // grpc.health.v1.Health/Check of `service` ("" = the server as a whole):
  // true when SERVING, false for any other serving status. An unknown
  // service is NOT_FOUND (the server's status).
  absl::StatusOr<bool> Health(const std::string& service = "");

  // Sends every request on one AttendStream and reads the responses in
  // order. Requests are written from a second thread while this one reads,
  // so large batches pipeline without deadlock.
  struct StreamResult {
    std::vector<attnserve::v1::AttendResponse> responses;  // those received before any error
    absl::Status status;                                   // the stream's final status
  };
  StreamResult AttendStream(const std::vector<attnserve::v1::AttendRequest>& requests);

  // Opens a decode session (decode_session.h, docs/decode-sessions.md): a
  // Decode stream whose first message is `open` (method with its parameters
  // and tensors, batch, num_heads, num_kv_heads, head_dim, value_dim,
  // max_len, scale, window, softcap, w_q/w_k/w_v, raw_output, output_dtype),
  // returned once the server has accepted it. `deadline` bounds the whole
  // session; unset (the default) = none, since a session lives as long as
  // its caller steps (ClientOptions::default_deadline does not apply; the
  // server ends sessions idle for --session_idle_timeout_s). Errors: the
  // server's (INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED over
  // --max_sessions or --session_memory_bytes, UNAVAILABLE when draining).
  absl::StatusOr<std::unique_ptr<DecodeSession>> Decode(
      const attnserve::v1::DecodeOpen& open,
      std::optional<absl::Duration> deadline = std::nullopt);

 private:
  Client(ClientOptions options, ChannelSecurity security, std::shared_ptr<grpc::Channel> channel,
         std::shared_ptr<grpc::Channel> health_channel);

  // A fresh context for one call, with the default deadline and the token set.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  const ClientOptions options_;
  const ChannelSecurity security_;
  const std::shared_ptr<grpc::Channel> channel_;
  // Health checks go on a channel without client-side health checking (see
  // DefaultServiceConfig), so that a NOT_SERVING server is reported as such.
  const std::shared_ptr<grpc::Channel> health_channel_;
  // Generated stubs are thread-safe.
  const std::unique_ptr<attnserve::v1::AttentionService::Stub> stub_;
  const std::unique_ptr<grpc::health::v1::Health::Stub> health_stub_;
};

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_CLIENT_H_
