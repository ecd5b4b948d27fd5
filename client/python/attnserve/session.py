"""Decode sessions (docs/decode-sessions.md): the key/value cache lives in
attnd, so a generation step sends only its new tokens.

    with client.decode("rope", batch=1, num_heads=8, head_dim=64,
                       max_len=4096) as s:
        out = s.step(q, k, v).out      # q [B,H,n,D], k/v [B,H_kv,n,D|Dv]
        s.truncate(n)                  # keep the first n cached tokens

One session is one Decode stream: every step or truncate is one message
and waits for its one response, in order. A session is not thread-safe (one
caller at a time); a model with L layers opens L sessions (they may share
the Client's channel). Any error ends the session: the call raises
AttnError and the session is closed.
"""

import queue

import grpc

from attnserve.client import (AttendResult, AttnError, _attend_result, _data_type, _integer,
                              _rpc_error, _set_method, to_tensor)
from attnserve.v1 import attention_pb2


def decode_open_request(method="none", *, batch, num_heads, head_dim, max_len,
                        num_kv_heads=None, value_dim=None, scale=None, window=None,
                        softcap=None, w_q=None, w_k=None, w_v=None, raw=True,
                        input_dtype=None, output_dtype=None,
                        **method_params) -> attention_pb2.DecodeRequest:
    """The DecodeRequest holding the DecodeOpen that Client.decode sends."""
    dtype = _data_type(input_dtype, "input_dtype")
    request = attention_pb2.DecodeRequest()
    open_ = request.open
    _set_method(open_.method, method, method_params, raw, dtype)
    open_.batch = _integer("batch", batch)
    open_.num_heads = _integer("num_heads", num_heads)
    open_.head_dim = _integer("head_dim", head_dim)
    open_.max_len = _integer("max_len", max_len)
    open_.raw_output = bool(raw)
    if num_kv_heads is not None:
        open_.num_kv_heads = _integer("num_kv_heads", num_kv_heads)
    if value_dim is not None:
        open_.value_dim = _integer("value_dim", value_dim)
    if scale is not None:
        open_.scale = float(scale)
    if window is not None:
        open_.window = _integer("window", window)
    if softcap is not None:
        open_.softcap = float(softcap)
    for name, value in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        if value is not None:
            getattr(open_, name).CopyFrom(to_tensor(value, raw, dtype))
    if output_dtype is not None:
        open_.output_dtype = _data_type(output_dtype, "output_dtype")
    return request


def decode_step_request(q=None, k=None, v=None, *, x=None, return_probs=False, raw=True,
                        input_dtype=None) -> attention_pb2.DecodeRequest:
    """The DecodeRequest holding one DecodeStep."""
    dtype = _data_type(input_dtype, "input_dtype")
    request = attention_pb2.DecodeRequest()
    request.step.return_probs = bool(return_probs)
    for name, value in (("q", q), ("k", k), ("v", v), ("x", x)):
        if value is not None:
            getattr(request.step, name).CopyFrom(to_tensor(value, raw, dtype))
    return request


class DecodeSession:
    """An open decode session (made by Client.decode). `length` is the number
    of cached tokens after the last response."""

    def __init__(self, stub, open_request, call_args, raw=True):
        self._raw = raw
        self._requests = queue.Queue()
        self._closed = False
        self.length = 0
        # gRPC reads the requests on its own thread; None ends them.
        self._responses = stub.Decode(iter(self._requests.get, None), **call_args)
        self._send(open_request)

    def _send(self, request):
        if self._closed:
            raise AttnError(grpc.StatusCode.FAILED_PRECONDITION, "the session is closed")
        self._requests.put(request)
        try:
            response = next(self._responses)
        except grpc.RpcError as error:
            self._closed = True
            raise _rpc_error(error) from None
        except StopIteration:
            self._closed = True
            raise AttnError(grpc.StatusCode.UNKNOWN,
                            "the Decode stream ended without a response") from None
        self.length = int(response.length)
        return response

    def step(self, q=None, k=None, v=None, *, x=None, return_probs: bool = False,
             input_dtype=None) -> AttendResult:
        """Appends n new tokens and returns their attention: q [B,H,n,D],
        k [B,H_kv,n,D], v [B,H_kv,n,Dv] (x [B,n,d_model] for sinusoidal and
        learned). Returns AttendResult(out [B,H,n,Dv], probs [B,H,n,length]
        or None); exactly the causal Attend at query_offset = the tokens cached
        before, over the cache followed by the new tokens."""
        request = decode_step_request(q, k, v, x=x, return_probs=return_probs, raw=self._raw,
                                      input_dtype=input_dtype)
        return _attend_result(self._send(request))

    def truncate(self, length: int) -> int:
        """Keeps the first `length` cached tokens (0 <= length <= self.length);
        returns the new length."""
        request = attention_pb2.DecodeRequest()
        request.truncate.length = _integer("length", length)
        self._send(request)
        return self.length

    def close(self) -> None:
        """Ends the session (the server frees its cache); idempotent. Raises
        AttnError if the stream ended with an error meanwhile."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(None)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError as error:
            raise _rpc_error(error) from None

    def cancel(self) -> None:
        """Ends the session at once, without waiting (the server frees its
        cache as it sees the cancellation)."""
        self._closed = True
        self._responses.cancel()
        self._requests.put(None)

    def __enter__(self) -> "DecodeSession":
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.cancel()
        return False


def open_session(stub, call_args, method, raw=True, **kwargs) -> DecodeSession:
    return DecodeSession(stub, decode_open_request(method, raw=raw, **kwargs), call_args, raw)


class AioDecodeSession:
    """DecodeSession on grpc.aio (made by attnserve.aio.Client.decode): the
    same methods as coroutines, an async context manager."""

    def __init__(self, call, raw=True):
        self._call = call
        self._raw = raw
        self._closed = False
        self.length = 0

    async def _send(self, request):
        if self._closed:
            raise AttnError(grpc.StatusCode.FAILED_PRECONDITION, "the session is closed")
        try:
            await self._call.write(request)
            response = await self._call.read()
        except grpc.RpcError as error:
            self._closed = True
            raise _rpc_error(error) from None
        if response is grpc.aio.EOF:
            self._closed = True
            code = await self._call.code()
            raise AttnError(code, await self._call.details())
        self.length = int(response.length)
        return response

    async def step(self, q=None, k=None, v=None, *, x=None, return_probs: bool = False,
                   input_dtype=None) -> AttendResult:
        """DecodeSession.step, awaited."""
        request = decode_step_request(q, k, v, x=x, return_probs=return_probs, raw=self._raw,
                                      input_dtype=input_dtype)
        return _attend_result(await self._send(request))

    async def truncate(self, length: int) -> int:
        """DecodeSession.truncate, awaited."""
        request = attention_pb2.DecodeRequest()
        request.truncate.length = _integer("length", length)
        await self._send(request)
        return self.length

    async def close(self) -> None:
        """DecodeSession.close, awaited."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._call.done_writing()
            while await self._call.read() is not grpc.aio.EOF:
                pass
            code = await self._call.code()
        except grpc.RpcError as error:
            raise _rpc_error(error) from None
        if code != grpc.StatusCode.OK:
            raise AttnError(code, await self._call.details())

    def cancel(self) -> None:
        """DecodeSession.cancel."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> "AioDecodeSession":
        return self

    async def __aexit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            await self.close()
        else:
            self.cancel()
        return False


async def open_aio_session(stub, call_args, method, raw=True, **kwargs) -> AioDecodeSession:
    session = AioDecodeSession(stub.Decode(**call_args), raw)
    await session._send(decode_open_request(method, raw=raw, **kwargs))  # pylint: disable=protected-access
    return session


__all__ = ["AioDecodeSession", "DecodeSession", "decode_open_request", "decode_step_request"]
