"""attnserve: a Python client of the attnserve.v1 AttentionService.

A thin wrapper over the generated gRPC stubs (attnserve.v1.attention_pb2 and
attention_pb2_grpc, generated next to this package in <build>/python) that
takes and returns NumPy float32 arrays:

    import numpy as np
    import attnserve

    with attnserve.Client("127.0.0.1:50051") as client:
        result = client.attend(method="alibi", q=q, k=k, v=v, causal=True,
                               return_probs=True)
        result.out, result.probs           # np.float32 arrays, shapes restored
        client.encode(method="rope", x=x, layout="half")["y"]

Errors raise attnserve.AttnError with the gRPC status code and message.
float16 arrays travel as 16-bit (bfloat16 too: ml_dtypes arrays, or uint16
bit patterns with input_dtype="bfloat16"); output_dtype="float16" or
"bfloat16" returns 16-bit arrays (see attnserve.client).
attnserve.aio.Client is the asyncio twin (the same methods, as coroutines);
both take TLS, mutual TLS and token options (attnserve.channel.load_security).
"""

from attnserve.client import (BFLOAT16, AttendResult, AttnError, Client, bfloat16_bits_to_float32,
                              float32_to_bfloat16_bits, from_tensor, to_tensor)

__all__ = ["AttendResult", "AttnError", "BFLOAT16", "Client", "bfloat16_bits_to_float32",
           "float32_to_bfloat16_bits", "from_tensor", "to_tensor"]
