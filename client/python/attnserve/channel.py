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

Security (load_security, the twin of client/channel.h's SecurityOptions):
plaintext unless `tls` or any of ca_file, cert_file + key_file, server_name
is given; a bearer token from `token`, `token_file` or the environment
variable ATTN_TOKEN travels as call metadata "authorization: Bearer <token>"
(Security.metadata, which the clients pass on every call), so it also works
over loopback plaintext. Files are read once, when the Security is loaded.

Thread-safety: the functions are pure (load_security reads files and the
environment); a channel and a Security are thread-safe."""

import json
import os
from typing import NamedTuple, Optional, Tuple

import grpc

# The environment variable a token is read from when none is given.
TOKEN_ENV = "ATTN_TOKEN"


class Security(NamedTuple):
    """A channel's transport security and the metadata of every call."""
    credentials: Optional[grpc.ChannelCredentials]  # None: plaintext
    server_name: Optional[str]  # checked against the server's certificate instead of the host
    metadata: Tuple[Tuple[str, str], ...]  # (("authorization", "Bearer <token>"),) or ()

    @property
    def tls(self) -> bool:
        return self.credentials is not None


PLAINTEXT = Security(None, None, ())


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise FileNotFoundError(f"{what}: cannot open {path}: {error.strerror}") from None


def _read_pem(path, what, label):
    """The file's bytes if it holds a PEM block of `label`'s kind; checked here
    because gRPC reports a bad file only as a failed handshake (UNAVAILABLE)."""
    data = _read(path, what)
    marker = b"-----BEGIN CERTIFICATE-----" if label == "CERTIFICATE" else b"PRIVATE KEY-----"
    if marker not in data:
        raise ValueError(f"{what}: {path} holds no PEM {label} block")
    return data


def _check_token(token, source):
    """A token is visible ASCII (RFC 6750's b64token is a subset); the message
    names where it came from, never the token."""
    if not token:
        raise ValueError(f"{source}: the token is empty")
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise ValueError(f"{source}: the token must be visible ASCII "
                         "(no spaces or control characters)")
    return token


def _load_token(token, token_file, token_from_env):
    if token and token_file:
        raise ValueError("token, token_file: give at most one")
    if token:
        return _check_token(token, "token")
    if token_file:
        text = _read(token_file, "token_file").decode("ascii", errors="replace").strip()
        return _check_token(text, f"token_file {token_file}")
    if token_from_env and os.environ.get(TOKEN_ENV):
        return _check_token(os.environ[TOKEN_ENV].strip(), TOKEN_ENV)
    return None


def load_security(*, tls: bool = False, ca_file: Optional[str] = None,
                  cert_file: Optional[str] = None, key_file: Optional[str] = None,
                  server_name: Optional[str] = None, token: Optional[str] = None,
                  token_file: Optional[str] = None, token_from_env: bool = True) -> Security:
    """The Security these options ask for: TLS when `tls` or any of ca_file
    (PEM roots that verify the server; default the system's), cert_file +
    key_file (the client's certificate and key: mutual TLS) or server_name
    is given; a token from `token`, else `token_file`, else ATTN_TOKEN (when
    `token_from_env`). FileNotFoundError for a file that cannot be read;
    ValueError naming the option for a file without the right PEM block, a
    certificate without its key, both token and token_file, or a token that
    is empty or not visible ASCII."""
    token = _load_token(token, token_file, token_from_env)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    if bool(cert_file) != bool(key_file):
        raise ValueError("cert_file, key_file: give both (mutual TLS) or neither")
    if not (tls or ca_file or cert_file or server_name):
        return Security(None, None, metadata)
    if server_name is not None and (not server_name or any(
            not (c.isascii() and (c.isalnum() or c in "-._:")) for c in server_name)):
        raise ValueError(f"server_name: expected a host name, got {server_name[:64]!r}")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca_file, "ca_file", "CERTIFICATE") if ca_file else None,
        private_key=_read_pem(key_file, "key_file", "PRIVATE KEY") if key_file else None,
        certificate_chain=_read_pem(cert_file, "cert_file", "CERTIFICATE") if cert_file else None)
    return Security(credentials, server_name or None, metadata)

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
                   security=PLAINTEXT, aio=False):
    """A channel to `target` with the defaults above (see channel_options) and
    `security`'s credentials (load_security; plaintext by default); a grpc.aio
    channel when `aio`. Connects lazily. The calls on it must carry
    security.metadata themselves."""
    if security.server_name:
        options = [("grpc.ssl_target_name_override", security.server_name),
                   *dict(options or {}).items()]
    args = channel_options(max_message_bytes, service_config, options)
    module = grpc.aio if aio else grpc
    if security.credentials is None:
        return module.insecure_channel(target, options=args)
    return module.secure_channel(target, security.credentials, options=args)
