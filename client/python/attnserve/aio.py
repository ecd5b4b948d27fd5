"""The asyncio client of attnd: attnserve.Client's methods as coroutines, on
grpc.aio.

    import attnserve.aio

    async with attnserve.aio.Client("127.0.0.1:50051", ca_file="ca.pem",
                                    token_file="token") as client:
        result = await client.attend(method="alibi", q=q, k=k, v=v, causal=True)
        result.out                               # np.float32 [B,H,Sq,Dv]
        (await client.encode(method="rope", x=x, layout="half"))["y"]
        await client.health()                    # True when SERVING

Every method has the name, arguments, result and errors (AttnError) of
attnserve.Client's (see there); the constructor takes the same options,
security included, and the channel gets the same defaults (attnserve.channel).
The requests are built and the responses decoded by the same functions as
the sync client's (attnserve.client), so the two cannot drift apart.

Thread-safety: as grpc.aio's: use a Client from the event loop it was first
used on. Ownership: a Client owns its channels; `await close()` it or use it
as an async context manager.
"""

from typing import Dict, List, Optional

import grpc
import numpy as np

from attnserve.client import (AttendResult, AttnError, _attend_result, _ClientBase,
                              _encode_result, _health_pb2, _is_serving, _rpc_error,
                              _stream_requests, attend_request, encode_request)
from attnserve.v1 import attention_pb2

__all__ = ["AttendResult", "AttnError", "Client"]


class Client(_ClientBase):
    """attnserve.Client on grpc.aio: the same constructor, and coroutine
    methods of the same names and arguments."""

    _AIO = True

    async def close(self) -> None:
        for chan in self._channels():
            await chan.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> bool:
        await self.close()
        return False

    async def _call(self, rpc, request, timeout):
        try:
            return await rpc(request, **self._call_args(timeout))
        except grpc.RpcError as error:
            raise _rpc_error(error) from None

    async def attend(self, method: str = "none", q=None, k=None, v=None, *, x_q=None, x_kv=None,
                     w_q=None, w_k=None, w_v=None, num_heads: Optional[int] = None,
                     causal: bool = False, scale: Optional[float] = None,
                     query_offset: Optional[int] = None, return_probs: bool = False,
                     raw: bool = True, num_kv_heads: Optional[int] = None, kv_lengths=None,
                     window: Optional[int] = None, softcap: Optional[float] = None,
                     input_dtype=None, output_dtype=None, timeout: Optional[float] = None,
                     **method_params) -> AttendResult:
        """attnserve.Client.attend, awaited."""
        request = attend_request(method, q, k, v, x_q=x_q, x_kv=x_kv, w_q=w_q, w_k=w_k, w_v=w_v,
                                 num_heads=num_heads, causal=causal, scale=scale,
                                 query_offset=query_offset, return_probs=return_probs, raw=raw,
                                 num_kv_heads=num_kv_heads, kv_lengths=kv_lengths, window=window,
                                 softcap=softcap, input_dtype=input_dtype,
                                 output_dtype=output_dtype, **method_params)
        return _attend_result(await self._call(self._stub.Attend, request, timeout))

    async def encode(self, method: str, x=None, *, offset: Optional[int] = None, distances=None,
                     sq: Optional[int] = None, sk: Optional[int] = None,
                     query_offset: Optional[int] = None, num_heads: Optional[int] = None,
                     raw: bool = True, input_dtype=None, output_dtype=None,
                     timeout: Optional[float] = None, **method_params) -> Dict[str, np.ndarray]:
        """attnserve.Client.encode, awaited."""
        request = encode_request(method, x, offset=offset, distances=distances, sq=sq, sk=sk,
                                 query_offset=query_offset, num_heads=num_heads, raw=raw,
                                 input_dtype=input_dtype, output_dtype=output_dtype,
                                 **method_params)
        return _encode_result(await self._call(self._stub.Encode, request, timeout))

    async def list_methods(self,
                           timeout: Optional[float] = None) -> attention_pb2.ListMethodsResponse:
        """attnserve.Client.list_methods, awaited."""
        return await self._call(self._stub.ListMethods, attention_pb2.ListMethodsRequest(),
                                timeout)

    async def health(self, service: str = "", timeout: Optional[float] = None) -> bool:
        """attnserve.Client.health, awaited."""
        request = _health_pb2().HealthCheckRequest(service=service)
        return _is_serving(await self._call(self._health_rpc(), request, timeout))

    async def attend_stream(self, requests,
                            timeout: Optional[float] = None) -> List[AttendResult]:
        """attnserve.Client.attend_stream, awaited: the requests are written
        while the responses are read, on one AttendStream."""
        messages = _stream_requests(requests)
        results = []
        try:
            call = self._stub.AttendStream(iter(messages), **self._call_args(timeout))
            async for response in call:
                results.append(_attend_result(response))
        except grpc.RpcError as error:
            raise _rpc_error(error, responses=results) from None
        return results

    async def decode(self, method: str = "none", *, batch: int, num_heads: int, head_dim: int,
                     max_len: int, num_kv_heads: Optional[int] = None,
                     value_dim: Optional[int] = None, scale: Optional[float] = None,
                     window: Optional[int] = None, softcap: Optional[float] = None, w_q=None,
                     w_k=None, w_v=None, raw: bool = True, input_dtype=None, output_dtype=None,
                     timeout: Optional[float] = None, **method_params):
        """attnserve.Client.decode, awaited: an attnserve.session.AioDecodeSession
        (async with; await s.step(...), await s.truncate(n))."""
        from attnserve import session  # pylint: disable=import-outside-toplevel
        call_args = self._call_args(timeout)
        call_args["timeout"] = timeout
        return await session.open_aio_session(
            self._stub, call_args, method, raw=raw, batch=batch, num_heads=num_heads,
            head_dim=head_dim, max_len=max_len, num_kv_heads=num_kv_heads, value_dim=value_dim,
            scale=scale, window=window, softcap=softcap, w_q=w_q, w_k=w_k, w_v=w_v,
            input_dtype=input_dtype, output_dtype=output_dtype, **method_params)
