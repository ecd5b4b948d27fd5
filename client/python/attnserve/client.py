"""The attnserve Python client: NumPy arrays in, NumPy arrays out.

Thread-safety: a Client may be shared by threads (gRPC channels and stubs are
thread-safe). Ownership: a Client owns its channel; close() it or use it as a
context manager. Errors: every RPC failure raises AttnError carrying the gRPC
status code and the server's message; a malformed call on the client side
(unknown method or parameter, a ref read back as values) raises ValueError or
TypeError before anything is sent.

Method parameters and method tensors are keyword arguments that travel in the
method's own sub-message of PositionalMethod, named as in the .proto:

    client.attend(method="rope", q=q, k=k, v=v, layout="half", rotary_dim=8)
    client.attend(method="shaw", q=q, k=k, v=v, max_relative_position=2,
                  rel_k=rel_k, rel_v=rel_v)
    client.encode(method="alibi", sq=4, sk=4, num_heads=8)["bias"]

Enum parameters take the short name ("half", "ntk"), the full name
("ROPE_LAYOUT_HALF") or the number. A parameter given as None is left unset
(the server's default). A tensor argument may be anything np.asarray accepts
(converted to float32, C order), an attention_pb2.Tensor, or a str naming a
tensor the server loaded at start-up (a ref).
"""

import collections
import threading
from typing import Dict, List, Optional

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor

from attnserve import channel
from attnserve.v1 import attention_pb2
from attnserve.v1 import attention_pb2_grpc

__all__ = [
    "AttendResult",
    "AttnError",
    "Client",
    "attend_request",
    "encode_request",
    "from_tensor",
    "to_tensor",
]

# The outputs of one Attend: out [B,H,Sq,Dv]; probs [B,H,Sq,Sk] or None
# when return_probs was False.
AttendResult = collections.namedtuple("AttendResult", ["out", "probs"])

_METHOD_ALIASES = {"txl": "transformer_xl", "da": "da_transformer"}


class AttnError(Exception):
    """An RPC failed: `code` is a grpc.StatusCode, `message` the server's text.

    For attend_stream, `responses` holds the AttendResults received before the
    error (empty otherwise).
    """

    def __init__(self, code, message, responses=None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.responses = list(responses or [])


def to_tensor(value, raw=True):
    """An attention_pb2.Tensor from an array-like (float32, C order; raw_data
    when `raw`, else data), a Tensor (copied) or a str (a ref)."""
    if isinstance(value, attention_pb2.Tensor):
        tensor = attention_pb2.Tensor()
        tensor.CopyFrom(value)
        return tensor
    if isinstance(value, str):
        return attention_pb2.Tensor(ref=value)
    array = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    tensor = attention_pb2.Tensor(shape=list(array.shape))
    if raw:
        tensor.raw_data = array.astype("<f4", copy=False).tobytes(order="C")
    else:
        tensor.data.extend(array.ravel().tolist())
    return tensor


def from_tensor(tensor):
    """The float32 ndarray (shape restored) of a Tensor given as data or
    raw_data. ValueError for a ref or a count that does not match the shape."""
    if tensor.ref:
        raise ValueError(f"tensor.ref: a ref ({tensor.ref!r}) holds no values on the client")
    shape = tuple(int(d) for d in tensor.shape)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if tensor.raw_data:
        if len(tensor.data):
            raise ValueError("tensor: exactly one of data and raw_data may be set")
        if len(tensor.raw_data) != 4 * count:
            raise ValueError(f"tensor.raw_data: expected 4 * product(shape {list(shape)}) = "
                             f"{4 * count} bytes, got {len(tensor.raw_data)}")
        values = np.frombuffer(tensor.raw_data, dtype="<f4").astype(np.float32)
    else:
        if len(tensor.data) != count:
            raise ValueError(f"tensor.data: expected product(shape {list(shape)}) = {count} "
                             f"values, got {len(tensor.data)}")
        values = np.array(tensor.data, dtype=np.float32)
    return values.reshape(shape)


def _enum_number(enum_type, field, value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
        if enum_type.values_by_number.get(number) is None:
            raise ValueError(f"{field}: {number} is not a {enum_type.name} value")
        return number
    if isinstance(value, str):
        wanted = value.upper()
        for candidate in enum_type.values:
            if candidate.name == wanted or candidate.name.endswith("_" + wanted):
                return candidate.number
    names = ", ".join(v.name for v in enum_type.values)
    raise ValueError(f"{field}: {value!r} is not a {enum_type.name} value ({names})")


def _scalar(field, name, value):
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return bool(value)
    if cpp in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
               FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        if isinstance(value, (float, np.floating)) and not float(value).is_integer():
            raise TypeError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return float(value)
    return value


def _set_method(method, name, params, raw):
    """Fills PositionalMethod `method` with kind `name` and its `params`."""
    name = _METHOD_ALIASES.get(name, name)
    oneof = method.DESCRIPTOR.oneofs_by_name["kind"]
    kinds = [f.name for f in oneof.fields]
    if name not in kinds:
        raise ValueError(f"method: unknown method {name!r}; expected one of {', '.join(kinds)}")
    sub = getattr(method, name)
    sub.SetInParent()
    fields = sub.DESCRIPTOR.fields_by_name
    for key, value in params.items():
        if value is None:
            continue
        field = fields.get(key)
        if field is None:
            accepted = ", ".join(fields) or "none"
            raise TypeError(f"method {name!r} has no parameter {key!r} (it takes: {accepted})")
        if field.message_type is not None:
            getattr(sub, key).CopyFrom(to_tensor(value, raw))
        elif field.enum_type is not None:
            setattr(sub, key, _enum_number(field.enum_type, f"{name}.{key}", value))
        else:
            setattr(sub, key, _scalar(field, f"{name}.{key}", value))


def attend_request(method="none", q=None, k=None, v=None, *, x_q=None, x_kv=None, w_q=None,
                   w_k=None, w_v=None, num_heads=None, causal=False, scale=None,
                   query_offset=None, return_probs=False, raw=True, **method_params):
    """The AttendRequest that Client.attend sends (see there)."""
    request = attention_pb2.AttendRequest(causal=bool(causal), return_probs=bool(return_probs),
                                          raw_output=bool(raw))
    _set_method(request.method, method, method_params, raw)
    tensors = {"q": q, "k": k, "v": v, "x_q": x_q, "x_kv": x_kv, "w_q": w_q, "w_k": w_k,
               "w_v": w_v}
    for name, value in tensors.items():
        if value is not None:
            getattr(request, name).CopyFrom(to_tensor(value, raw))
    if num_heads is not None:
        request.num_heads = int(num_heads)
    if scale is not None:
        request.scale = float(scale)
    if query_offset is not None:
        request.query_offset = int(query_offset)
    return request


def encode_request(method, x=None, *, offset=None, distances=None, sq=None, sk=None,
                   query_offset=None, num_heads=None, raw=True, **method_params):
    """The EncodeRequest that Client.encode sends (see there)."""
    request = attention_pb2.EncodeRequest(raw_output=bool(raw))
    _set_method(request.method, method, method_params, raw)
    if x is not None:
        request.x.CopyFrom(to_tensor(x, raw))
    if distances is not None:
        request.distances.CopyFrom(to_tensor(distances, raw))
    for name, value in (("offset", offset), ("sq", sq), ("sk", sk), ("num_heads", num_heads)):
        if value is not None:
            setattr(request, name, int(value))
    if query_offset is not None:
        request.query_offset = int(query_offset)
    return request


def _attend_result(response) -> AttendResult:
    probs = from_tensor(response.probs) if response.HasField("probs") else None
    return AttendResult(out=from_tensor(response.out), probs=probs)


def _encode_result(response) -> Dict[str, np.ndarray]:
    return {name: from_tensor(tensor) for name, tensor in response.outputs.items()}


def _stream_requests(requests) -> List[attention_pb2.AttendRequest]:
    return [r if isinstance(r, attention_pb2.AttendRequest) else attend_request(**r)
            for r in requests]


def _health_pb2():
    """grpc.health.v1's messages: grpcio-health-checking's copy when it is
    installed, else attnserve's own (_health_pb2, generated next to this file
    by the build or the wheel; grpcio owns the top-level `grpc` package, so
    they cannot live under grpc/). Never both: each registers
    grpc/health/v1/health.proto in the default descriptor pool."""
    try:
        from grpc_health.v1 import health_pb2 as module  # pylint: disable=import-outside-toplevel
    except ImportError:
        from attnserve import _health_pb2 as module  # pylint: disable=import-outside-toplevel
    return module


def _is_serving(response) -> bool:
    return response.status == _health_pb2().HealthCheckResponse.SERVING


def _rpc_error(error, responses=None) -> AttnError:
    return AttnError(error.code(), error.details(), responses=responses)


class _ClientBase:
    """What Client and attnserve.aio.Client share: the options, the channels
    (built by attnserve.channel, sync or grpc.aio as _AIO says), the stubs,
    and the arguments of every call (deadline, token). The request building
    and response decoding are the module's functions above; the subclasses
    only make the calls."""

    _AIO = False

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 30.0,
                 max_message_bytes: int = 256 << 20, *, service_config=None, options=None,
                 tls: bool = False, ca_file: Optional[str] = None,
                 cert_file: Optional[str] = None, key_file: Optional[str] = None,
                 server_name: Optional[str] = None, token: Optional[str] = None,
                 token_file: Optional[str] = None):
        self.target = target
        self.timeout = timeout
        self._security = channel.load_security(
            tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
            server_name=server_name, token=token, token_file=token_file)
        self._channel_args = {"max_message_bytes": max_message_bytes,
                              "service_config": service_config, "options": options,
                              "security": self._security}
        self._channel = channel.create_channel(target, aio=self._AIO, **self._channel_args)
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)
        self._health_channel = None
        self._health_check = None
        self._health_lock = threading.Lock()

    def _call_args(self, timeout):
        """The keyword arguments of one call: its deadline and the token."""
        return {"timeout": self.timeout if timeout is None else timeout,
                "metadata": self._security.metadata or None}

    def _health_rpc(self):
        """grpc.health.v1.Health/Check on its own channel without client-side
        health checking: the main one sends calls only to SERVING replicas,
        so it could not ask one that is not (the answer would be UNAVAILABLE
        instead of NOT_SERVING)."""
        with self._health_lock:
            if self._health_check is None:
                health_pb2 = _health_pb2()
                args = dict(self._channel_args)
                if args["service_config"] is None:
                    args["service_config"] = channel.default_service_config(
                        health_checking=False)
                self._health_channel = channel.create_channel(self.target, aio=self._AIO, **args)
                self._health_check = self._health_channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
            return self._health_check

    def _channels(self):
        return [c for c in (self._channel, self._health_channel) if c is not None]


class Client(_ClientBase):
    """A client of attnd at `target` (connects lazily); attnserve.aio.Client
    is its asyncio twin.

    `target` is any gRPC target ("host:port", "dns:///host:port",
    "ipv4:a:p,b:p", ...); the channel applies attnserve's defaults
    (attnserve.channel: round_robin over the target's addresses, retries of
    UNAVAILABLE for the idempotent calls, client-side health checking,
    keepalive) unless `service_config` (a dict or JSON; {} for none) or
    `options` (gRPC channel options, winning key by key) say otherwise.
    `timeout` is the deadline of each call in seconds (of the whole stream for
    attend_stream); every method also takes timeout= to override it.

    Security (attnserve.channel.load_security): plaintext unless `tls` (the
    system's roots), `ca_file` (PEM roots that verify the server),
    `cert_file` + `key_file` (mutual TLS) or `server_name` (the name the
    server's certificate carries, e.g. "localhost" for "127.0.0.1:50051");
    `token`, `token_file` or the environment variable ATTN_TOKEN is sent as
    "authorization: Bearer <token>" on every call. A failed handshake is
    AttnError UNAVAILABLE, a missing or wrong token UNAUTHENTICATED; a bad
    option raises ValueError (FileNotFoundError for a file) here.
    """

    def close(self) -> None:
        for chan in self._channels():
            chan.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _call(self, rpc, request, timeout):
        try:
            return rpc(request, **self._call_args(timeout))
        except grpc.RpcError as error:
            raise _rpc_error(error) from None

    def attend(self, method: str = "none", q=None, k=None, v=None, *, x_q=None, x_kv=None,
               w_q=None, w_k=None, w_v=None, num_heads: Optional[int] = None,
               causal: bool = False, scale: Optional[float] = None,
               query_offset: Optional[int] = None, return_probs: bool = False, raw: bool = True,
               timeout: Optional[float] = None, **method_params) -> AttendResult:
        """Multi-head attention: q [B,H,Sq,D], k [B,H,Sk,D], v [B,H,Sk,Dv] (or
        x_q, x_kv, w_q, w_k, w_v and num_heads for sinusoidal and learned).
        None leaves scale (1/sqrt(D)), query_offset (Sk - Sq) and num_heads
        unset. raw: send and receive raw_data (else repeated float).
        Returns AttendResult(out [B,H,Sq,Dv], probs [B,H,Sq,Sk] or None)."""
        request = attend_request(method, q, k, v, x_q=x_q, x_kv=x_kv, w_q=w_q, w_k=w_k, w_v=w_v,
                                 num_heads=num_heads, causal=causal, scale=scale,
                                 query_offset=query_offset, return_probs=return_probs, raw=raw,
                                 **method_params)
        return _attend_result(self._call(self._stub.Attend, request, timeout))

    def encode(self, method: str, x=None, *, offset: Optional[int] = None, distances=None,
               sq: Optional[int] = None, sk: Optional[int] = None,
               query_offset: Optional[int] = None, num_heads: Optional[int] = None,
               raw: bool = True, timeout: Optional[float] = None,
               **method_params) -> Dict[str, np.ndarray]:
        """A positional encoding on its own. Returns {output name: ndarray}
        with the names of positional-methods.md 3.2 (y, table, bias, ...)."""
        request = encode_request(method, x, offset=offset, distances=distances, sq=sq, sk=sk,
                                 query_offset=query_offset, num_heads=num_heads, raw=raw,
                                 **method_params)
        return _encode_result(self._call(self._stub.Encode, request, timeout))

    def list_methods(self, timeout: Optional[float] = None) -> attention_pb2.ListMethodsResponse:
        """The server's ListMethodsResponse (methods, parameters, limits)."""
        return self._call(self._stub.ListMethods, attention_pb2.ListMethodsRequest(), timeout)

    def health(self, service: str = "", timeout: Optional[float] = None) -> bool:
        """grpc.health.v1 Check of `service`: True when SERVING."""
        request = _health_pb2().HealthCheckRequest(service=service)
        return _is_serving(self._call(self._health_rpc(), request, timeout))

    def attend_stream(self, requests, timeout: Optional[float] = None) -> List[AttendResult]:
        """Sends every request (each a dict of attend() keyword arguments, or
        an AttendRequest) on one AttendStream; returns the AttendResults in
        order. On an error raises AttnError whose .responses holds the
        results received before it."""
        messages = _stream_requests(requests)
        results = []
        try:
            for response in self._stub.AttendStream(iter(messages), **self._call_args(timeout)):
                results.append(_attend_result(response))
        except grpc.RpcError as error:
            raise _rpc_error(error, responses=results) from None
        return results
