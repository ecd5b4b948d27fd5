// Limits that hold under abuse: what a response may cost, derived from what
// one message can carry, and the per-connection settings of the gRPC
// listener (concurrent streams, keepalive, idle connections, the transport's
// memory quota).
//
// Thread-safety: pure functions and plain option structs.
#ifndef ATTNSERVE_SERVER_LIMITS_H_
#define ATTNSERVE_SERVER_LIMITS_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace attnserve::server {

// Bytes a response message spends besides its tensors' values: per tensor
// its field tag and length, its shape (packed varints, at most 10 bytes a
// dimension) and its values' tag and length; for Encode each map entry's
// tag, length and key. A few hundred bytes for the largest response; this
// leaves room to spare.
inline constexpr int64_t kResponseFramingBytes = 4096;

// The bytes of result tensors (float32 values) one response of at most
// `max_message_bytes` can carry: 4 bytes a value whether the caller asked
// for raw_data (little-endian float32 bytes) or data (proto3 packs repeated
// float: 4 bytes a value, no per-value tag), less kResponseFramingBytes; 0
// when that leaves nothing. Every request whose result is larger is refused
// with RESOURCE_EXHAUSTED before compute (kernels::ComputeOptions::
// max_result_bytes), instead of being computed and then failing to send.
int64_t ResultBudgetBytes(int64_t max_message_bytes);

// The gRPC listener's per-connection settings (channel arguments).
struct ConnectionLimits {
  // Streams (calls) one HTTP/2 connection may have open at once
  // (GRPC_ARG_MAX_CONCURRENT_STREAMS); more wait in the client.
  int max_concurrent_streams = 128;
  // The server pings a connection idle this long (GRPC_ARG_KEEPALIVE_TIME_MS)
  // and closes it if the answer takes longer than keepalive_timeout: a peer
  // that vanished (no FIN, no RST) does not hold its calls and buffers.
  absl::Duration keepalive_time = absl::Seconds(60);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // A connection without calls for this long is closed with GOAWAY
  // (GRPC_ARG_MAX_CONNECTION_IDLE_MS); clients reconnect when they need to.
  absl::Duration max_connection_idle = absl::Seconds(300);
  // The shortest interval at which clients may send keepalive pings (also
  // without calls); faster pings are strikes, and two close the connection.
  absl::Duration min_client_ping_interval = absl::Seconds(10);
  // Memory gRPC's transport may use for all connections together (a
  // grpc::ResourceQuota: read buffers, incoming messages); under pressure it
  // shrinks buffers and then refuses work. 0: no quota.
  int64_t transport_memory_bytes = int64_t{1} << 30;
};

// INVALID_ARGUMENT naming the flag (--max_concurrent_streams, ...) and its
// rule when `limits` cannot be used.
absl::Status ValidateConnectionLimits(const ConnectionLimits& limits);

// Sets `limits` on `builder` (before BuildAndStart).
void ApplyConnectionLimits(const ConnectionLimits& limits, grpc::ServerBuilder* builder);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_LIMITS_H_
