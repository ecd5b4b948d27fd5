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

16-bit transport (docs/attention-variants.md 6): a NumPy float16 array goes
as DTYPE_FLOAT16 raw_data (2 bytes an element, half the bytes), an
ml_dtypes.bfloat16 array (when ml_dtypes is installed) as DTYPE_BFLOAT16;
`input_dtype="float16"` or `"bfloat16"` sends every tensor argument so
(float arrays rounded to nearest, ties to even, after the usual float32
conversion; uint16 arrays taken as the bit patterns of that type, which is
how bfloat16 goes without ml_dtypes). to_tensor(value, dtype=...) does the
same for one tensor. 16-bit tensors always travel as raw_data, also with
raw=False. `output_dtype="float16"` returns np.float16 arrays (exactly what
the server rounded); `"bfloat16"` returns ml_dtypes.bfloat16 arrays when
ml_dtypes is importable, else np.uint16 arrays of the bfloat16 bit patterns
(bfloat16_bits_to_float32 widens them). Both need raw=True (the default).

    client.attend(method="none", q=q16, k=k16, v=v16, output_dtype="float16").out  # np.float16
    client.attend(method="rope", q=q, k=k, v=v, input_dtype="bfloat16", ...)

Grouped-query attention, padding, windows and soft-capping
(attention-variants.md 1-5) are attend's keyword arguments num_kv_heads,
kv_lengths, window and softcap; RoPE's scalings (scaling="yarn", "llama3",
"dynamic_ntk" with original_max_position, beta_fast, beta_slow,
attention_factor, low_freq_factor, high_freq_factor) and ALiBi's custom
`slopes` tensor are method parameters like the others.
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

try:  # optional: NumPy's bfloat16 dtype
    import ml_dtypes as _ml_dtypes
    BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:
    BFLOAT16 = None

__all__ = [
    "AttendResult",
    "AttnError",
    "BFLOAT16",
    "Client",
    "attend_request",
    "bfloat16_bits_to_float32",
    "encode_request",
    "float32_to_bfloat16_bits",
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


_DTYPE_NAMES = {attention_pb2.DTYPE_UNSPECIFIED: "float32", attention_pb2.DTYPE_FLOAT32: "float32",
                attention_pb2.DTYPE_FLOAT16: "float16", attention_pb2.DTYPE_BFLOAT16: "bfloat16"}


def _data_type(value, field):
    """A DataType number from "float16", "DTYPE_BFLOAT16", 2, np.float16,
    ml_dtypes.bfloat16 ...; None stays None."""
    if value is None:
        return None
    if not isinstance(value, (str, int, np.integer)):
        try:
            value = np.dtype(value).name  # np.float16 -> "float16", bfloat16 -> "bfloat16"
        except TypeError:
            pass
    return _enum_number(attention_pb2.DataType.DESCRIPTOR, field, value)


def float32_to_bfloat16_bits(values):
    """The bfloat16 bit patterns (np.uint16, same shape) of `values` as
    float32, rounded to nearest, ties to even; beyond bfloat16's range
    infinity, NaN a quiet NaN (as the C++ SDK's client/dtype.h)."""
    array = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    bits = array.view(np.uint32)
    with np.errstate(over="ignore"):  # NaN's bits may wrap; they are replaced below
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    rounded = np.where(np.isnan(array), (bits >> 16) | np.uint32(0x40), rounded)
    return np.asarray(rounded, dtype=np.uint16).reshape(array.shape)


def bfloat16_bits_to_float32(bits):
    """The float32 values (exact) of bfloat16 bit patterns (uint16 array)."""
    array = np.ascontiguousarray(np.asarray(bits, dtype=np.uint16))
    return (array.astype(np.uint32) << 16).view(np.float32)


def _float32(value):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(np.asarray(value, dtype=np.float32))


def _bits16(array, dtype):
    """The uint16 bit patterns of `array` in DataType `dtype` (16-bit)."""
    if array.dtype == np.uint16:
        return array  # already bit patterns of `dtype`
    if dtype == attention_pb2.DTYPE_FLOAT16:
        if array.dtype != np.float16:
            # NumPy's float32 -> float16 rounds to nearest even and overflows
            # to inf (which the server then refuses by element).
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                array = _float32(array).astype(np.float16)
        return array.view(np.uint16)
    if BFLOAT16 is not None and array.dtype == BFLOAT16:
        return array.view(np.uint16)
    return float32_to_bfloat16_bits(_float32(array))


def to_tensor(value, raw=True, dtype=None):
    """An attention_pb2.Tensor from an array-like, a Tensor (copied) or a str
    (a ref). `dtype` (None, "float32", "float16", "bfloat16", a DataType or a
    NumPy dtype) is the wire type; None means the array's own: float16 and
    ml_dtypes.bfloat16 arrays go as those, anything else as float32. 16-bit
    tensors are raw_data with Tensor.dtype set (a uint16 array then holds the
    bit patterns); float32 ones are raw_data when `raw`, else data."""
    if isinstance(value, attention_pb2.Tensor):
        tensor = attention_pb2.Tensor()
        tensor.CopyFrom(value)
        return tensor
    if isinstance(value, str):
        return attention_pb2.Tensor(ref=value)
    array = np.asarray(value)
    wire = _data_type(dtype, "dtype")
    if wire is None:
        if array.dtype == np.float16:
            wire = attention_pb2.DTYPE_FLOAT16
        elif BFLOAT16 is not None and array.dtype == BFLOAT16:
            wire = attention_pb2.DTYPE_BFLOAT16
    if wire in (attention_pb2.DTYPE_FLOAT16, attention_pb2.DTYPE_BFLOAT16):
        bits = np.ascontiguousarray(_bits16(array, wire))
        return attention_pb2.Tensor(shape=list(array.shape), dtype=wire,
                                    raw_data=bits.astype("<u2", copy=False).tobytes(order="C"))
    array = _float32(array)
    tensor = attention_pb2.Tensor(shape=list(array.shape))
    if raw:
        tensor.raw_data = array.astype("<f4", copy=False).tobytes(order="C")
    else:
        tensor.data.extend(array.ravel().tolist())
    return tensor


def from_tensor(tensor):
    """The ndarray (shape restored) of a Tensor given as data or raw_data:
    np.float32; for DTYPE_FLOAT16 raw_data np.float16; for DTYPE_BFLOAT16
    ml_dtypes.bfloat16 (BFLOAT16) when ml_dtypes is importable, else np.uint16
    bit patterns (bfloat16_bits_to_float32 widens them). ValueError for a
    ref, a 16-bit dtype on data, or a count that does not match the shape."""
    if tensor.ref:
        raise ValueError(f"tensor.ref: a ref ({tensor.ref!r}) holds no values on the client")
    name = _DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise ValueError(f"tensor.dtype: unknown DataType {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if tensor.raw_data:
        if len(tensor.data):
            raise ValueError("tensor: exactly one of data and raw_data may be set")
        size = 4 if name == "float32" else 2
        if len(tensor.raw_data) != size * count:
            raise ValueError(f"tensor.raw_data: expected {size} * product(shape {list(shape)}) = "
                             f"{size * count} bytes ({name}), got {len(tensor.raw_data)}")
        if name == "float32":
            values = np.frombuffer(tensor.raw_data, dtype="<f4").astype(np.float32)
        elif name == "float16":
            values = np.frombuffer(tensor.raw_data, dtype="<f2").astype(np.float16)
        else:
            values = np.frombuffer(tensor.raw_data, dtype="<u2").astype(np.uint16)
            if BFLOAT16 is not None:
                values = values.view(BFLOAT16)
    else:
        if name != "float32":
            raise ValueError(f"tensor.dtype: {attention_pb2.DataType.Name(tensor.dtype)} "
                             "describes raw_data only; data is always float32")
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


def _set_method(method, name, params, raw, dtype=None):
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
            getattr(sub, key).CopyFrom(to_tensor(value, raw, dtype))
        elif field.enum_type is not None:
            setattr(sub, key, _enum_number(field.enum_type, f"{name}.{key}", value))
        else:
            setattr(sub, key, _scalar(field, f"{name}.{key}", value))


def _integer(name, value):
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def attend_request(method="none", q=None, k=None, v=None, *, x_q=None, x_kv=None, w_q=None,
                   w_k=None, w_v=None, num_heads=None, causal=False, scale=None,
                   query_offset=None, return_probs=False, raw=True, num_kv_heads=None,
                   kv_lengths=None, window=None, softcap=None, input_dtype=None,
                   output_dtype=None, **method_params):
    """The AttendRequest that Client.attend sends (see there)."""
    request = attention_pb2.AttendRequest(causal=bool(causal), return_probs=bool(return_probs),
                                          raw_output=bool(raw))
    dtype = _data_type(input_dtype, "input_dtype")
    _set_method(request.method, method, method_params, raw, dtype)
    tensors = {"q": q, "k": k, "v": v, "x_q": x_q, "x_kv": x_kv, "w_q": w_q, "w_k": w_k,
               "w_v": w_v}
    for name, value in tensors.items():
        if value is not None:
            getattr(request, name).CopyFrom(to_tensor(value, raw, dtype))
    if num_heads is not None:
        request.num_heads = _integer("num_heads", num_heads)
    if scale is not None:
        request.scale = float(scale)
    if query_offset is not None:
        request.query_offset = _integer("query_offset", query_offset)
    if num_kv_heads is not None:
        request.num_kv_heads = _integer("num_kv_heads", num_kv_heads)
    if kv_lengths is not None:
        request.kv_lengths.extend(_integer("kv_lengths", n) for n in np.ravel(kv_lengths))
    if window is not None:
        request.window = _integer("window", window)
    if softcap is not None:
        request.softcap = float(softcap)
    if output_dtype is not None:
        request.output_dtype = _data_type(output_dtype, "output_dtype")
    return request


def encode_request(method, x=None, *, offset=None, distances=None, sq=None, sk=None,
                   query_offset=None, num_heads=None, raw=True, input_dtype=None,
                   output_dtype=None, **method_params):
    """The EncodeRequest that Client.encode sends (see there)."""
    request = attention_pb2.EncodeRequest(raw_output=bool(raw))
    dtype = _data_type(input_dtype, "input_dtype")
    _set_method(request.method, method, method_params, raw, dtype)
    if x is not None:
        request.x.CopyFrom(to_tensor(x, raw, dtype))
    if distances is not None:
        request.distances.CopyFrom(to_tensor(distances, raw, dtype))
    if output_dtype is not None:
        request.output_dtype = _data_type(output_dtype, "output_dtype")
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
               num_kv_heads: Optional[int] = None, kv_lengths=None,
               window: Optional[int] = None, softcap: Optional[float] = None,
               input_dtype=None, output_dtype=None, timeout: Optional[float] = None,
               **method_params) -> AttendResult:
        """Multi-head attention: q [B,H,Sq,D], k [B,H_kv,Sk,D], v [B,H_kv,Sk,Dv]
        with H % H_kv == 0 (grouped-query; or x_q, x_kv, w_q, w_k, w_v,
        num_heads and num_kv_heads for sinusoidal and learned).
        None leaves scale (1/sqrt(D)), query_offset (Sk - Sq), num_heads,
        num_kv_heads, window and softcap unset. kv_lengths: B valid key counts
        (right padding); window: a sliding window W >= 1 (causal: the W most
        recent keys; else |p - j| < W); softcap: logits become c*tanh(l/c).
        raw: send and receive raw_data (else repeated float). input_dtype,
        output_dtype: 16-bit transport (see the module's doc).
        Returns AttendResult(out [B,H,Sq,Dv], probs [B,H,Sq,Sk] or None)."""
        request = attend_request(method, q, k, v, x_q=x_q, x_kv=x_kv, w_q=w_q, w_k=w_k, w_v=w_v,
                                 num_heads=num_heads, causal=causal, scale=scale,
                                 query_offset=query_offset, return_probs=return_probs, raw=raw,
                                 num_kv_heads=num_kv_heads, kv_lengths=kv_lengths, window=window,
                                 softcap=softcap, input_dtype=input_dtype,
                                 output_dtype=output_dtype, **method_params)
        return _attend_result(self._call(self._stub.Attend, request, timeout))

    def encode(self, method: str, x=None, *, offset: Optional[int] = None, distances=None,
               sq: Optional[int] = None, sk: Optional[int] = None,
               query_offset: Optional[int] = None, num_heads: Optional[int] = None,
               raw: bool = True, input_dtype=None, output_dtype=None,
               timeout: Optional[float] = None, **method_params) -> Dict[str, np.ndarray]:
        """A positional encoding on its own. Returns {output name: ndarray}
        with the names of positional-methods.md 3.2 (y, table, bias, ...);
        input_dtype, output_dtype as attend's."""
        request = encode_request(method, x, offset=offset, distances=distances, sq=sq, sk=sk,
                                 query_offset=query_offset, num_heads=num_heads, raw=raw,
                                 input_dtype=input_dtype, output_dtype=output_dtype,
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

    def decode(self, method: str = "none", *, batch: int, num_heads: int, head_dim: int,
               max_len: int, num_kv_heads: Optional[int] = None, value_dim: Optional[int] = None,
               scale: Optional[float] = None, window: Optional[int] = None,
               softcap: Optional[float] = None, w_q=None, w_k=None, w_v=None, raw: bool = True,
               input_dtype=None, output_dtype=None, timeout: Optional[float] = None,
               **method_params):
        """Opens a decode session (attnserve.session.DecodeSession, a context
        manager): the server reserves a key/value cache of max_len tokens, and
        each s.step(q, k, v) (or x= for sinusoidal and learned, with w_q,
        w_k, w_v given here) sends only its new tokens. `timeout` is the
        deadline of the whole session (default: none, whatever the Client's
        timeout); the server also ends sessions idle for its
        --session_idle_timeout_s. Raises AttnError when the open is refused
        (RESOURCE_EXHAUSTED: over the server's session budget)."""
        from attnserve import session  # pylint: disable=import-outside-toplevel
        call_args = self._call_args(timeout)
        call_args["timeout"] = timeout
        return session.open_session(
            self._stub, call_args, method, raw=raw, batch=batch, num_heads=num_heads,
            head_dim=head_dim, max_len=max_len, num_kv_heads=num_kv_heads, value_dim=value_dim,
            scale=scale, window=window, softcap=softcap, w_q=w_q, w_k=w_k, w_v=w_v,
            input_dtype=input_dtype, output_dtype=output_dtype, **method_params)
