"""How attnserve's Python clients build their gRPC channels: the one place for
the defaults every client applies to a target unless the caller overrides
them (the C++ twin is client/channel.cc).

A target is any gRPC target: "host:port", "dns:///host:port" (every address
the name resolves to), "ipv4:10.0.0.1:50051,10.0.0.2:50051" (a fixed list),
"unix:/path". The defaults, for a service run as several replicas:

- DEFAULT_SERVICE_CONFIG: `round_robin` over every address of the target;
  retries of UNAVAILABLE (a replica draining or in lame duck, a connection
  lost before the call was answered) for the idempotent RPCs Attend, Encode,
  ListMethods and Health/Check (docs/api.md), at most 5 attempts with
  exponential backoff (0.1 s, x2, at most 1 s); AttendStream is not retried;
  and client-side health checking: a replica whose grpc.health.v1 status is
  NOT_SERVING (attnd's lame duck, warm-up) gets no new calls. A server or
  proxy whose Watch answers UNIMPLEMENTED is taken as healthy (HAProxy does,
  deploy/haproxy/haproxy.cfg: it checks the replicas itself).
- keepalive pings every 30 s on a connection with calls open, failing it
  after 10 s without an answer (attnd accepts pings every >= 10 s).
- The per-call deadline is the Client's (timeout=30 s by default).

Requests larger than gRPC's retry buffer (256 KiB per call) are not retried
once sent.

Thread-safety: the functions are pure; a channel is thread-safe."""

import json

import grpc

SERVICE = "attnserve.v1.AttentionService"
HEALTH_SERVICE = "grpc.health.v1.Health"
# docs/api.md: the RPCs that may be sent again without changing the outcome.
IDEMPOTENT_METHODS = ((SERVICE, "Attend"), (SERVICE, "Encode"), (SERVICE, "ListMethods"),
                      (HEALTH_SERVICE, "Check"))
MAX_ATTEMPTS = 5
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


def default_service_config(health_checking=True):
    """attnserve's default service config (a dict, as JSON would hold it).
    `health_checking` False leaves out client-side health checking (for the
    health check calls themselves: a channel that picks only SERVING
    replicas cannot ask one that is not)."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": service, "method": method}
                     for service, method in IDEMPOTENT_METHODS],
            "retryPolicy": {
                "maxAttempts": MAX_ATTEMPTS,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    }
    if health_checking:
        config["healthCheckConfig"] = {"serviceName": ""}
    return config


DEFAULT_SERVICE_CONFIG = default_service_config()


def channel_options(max_message_bytes=256 << 20, service_config=None, options=None):
    """The channel options of create_channel: message limits, keepalive and
    the service config (None: DEFAULT_SERVICE_CONFIG; a dict or a JSON str
    replaces it; {} or "" sets none, i.e. gRPC's own defaults: pick_first,
    no retries), then `options` ((key, value) pairs or a dict), which win
    over the defaults key by key."""
    if service_config is None:
        service_config = DEFAULT_SERVICE_CONFIG
    if not isinstance(service_config, str):
        service_config = json.dumps(service_config) if service_config else ""
    merged = {
        "grpc.max_send_message_length": max_message_bytes,
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
        "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
        "grpc.enable_retries": 1,
    }
    if service_config:
        merged["grpc.service_config"] = service_config
    merged.update(dict(options or {}))
    return list(merged.items())


def create_channel(target, *, max_message_bytes=256 << 20, service_config=None, options=None,
                   aio=False):
    """A channel to `target` with the defaults above (see channel_options);
    a grpc.aio channel when `aio`. Connects lazily."""
    args = channel_options(max_message_bytes, service_config, options)
    if aio:
        return grpc.aio.insecure_channel(target, options=args)
    return grpc.insecure_channel(target, options=args)
