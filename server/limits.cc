#include "server/limits.h"

#include <grpc/grpc.h>
#include <grpcpp/resource_quota.h>

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

// A duration as the int milliseconds of a channel argument.
int Millis(absl::Duration d) {
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d),
                                            std::numeric_limits<int>::max()));
}

absl::Status ExpectSeconds(absl::Duration d, absl::Duration min, absl::string_view flag) {
  if (d < min || d > absl::Hours(24 * 24)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": must be in ",
                                                   absl::ToDoubleSeconds(min),
                                                   " .. 2073600 seconds (24 days), got ",
                                                   absl::ToDoubleSeconds(d)));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ResultBudgetBytes(int64_t max_message_bytes) {
  return std::max<int64_t>(0, max_message_bytes - kResponseFramingBytes);
}

absl::Status ValidateConnectionLimits(const ConnectionLimits& limits) {
  if (limits.max_concurrent_streams < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_concurrent_streams: must be >= 1, got ", limits.max_concurrent_streams));
  }
  if (absl::Status s = ExpectSeconds(limits.keepalive_time, absl::Seconds(1), "--keepalive_time_s");
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ExpectSeconds(limits.keepalive_timeout, absl::Seconds(1), "--keepalive_timeout_s");
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ExpectSeconds(limits.max_connection_idle, absl::Seconds(1), "--max_connection_idle_s");
      !s.ok()) {
    return s;
  }
  if (limits.transport_memory_bytes != 0 && limits.transport_memory_bytes < (int64_t{64} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--transport_memory_bytes: must be 0 (no quota) or >= 67108864 (64 MiB), got ",
        limits.transport_memory_bytes));
  }
  return absl::OkStatus();
}

void ApplyConnectionLimits(const ConnectionLimits& limits, grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, Millis(limits.keepalive_time));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Millis(limits.keepalive_timeout));
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                              Millis(limits.max_connection_idle));
  // Clients' keepalive pings, also between calls, at most this often.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              Millis(limits.min_client_ping_interval));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  if (limits.transport_memory_bytes > 0) {
    grpc::ResourceQuota quota("attnd");
    quota.Resize(static_cast<size_t>(limits.transport_memory_bytes));
    builder->SetResourceQuota(quota);
  }
}

}  // namespace attnserve::server
