"""What 16-bit transport saves (attention-variants.md 6, issue 14): the same
Attend at S=2048 (B=1, H=8, D=64, alibi, causal) with q, k, v sent as float32
raw_data, as float16 raw_data (float32 out), and as float16 in and out.

Starts the real attnd on 127.0.0.1 (port 0), alternates the three forms call
by call (so load on the machine hits them alike), and prints for each the
request size, the median client latency and the median server time, read per
call as the growth of attnserve_request_duration_seconds_sum{rpc="Attend"}
(from arrival to the response sent). Usage (from the repository root, after
`make build`):

  PYTHONPATH=build/python ATTND_PATH=build/bin/attnd /usr/bin/python3 \\
      bench/fp16_transport.py [--calls 20] [--seq 2048] [--threads 1]
"""

import argparse
import os
import re
import statistics
import sys
import time
import urllib.request

import grpc
import numpy as np

from attnserve.v1 import attention_pb2 as pb
from attnserve.v1 import attention_pb2_grpc as pb_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "client"))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position

SERVER_SUM = re.compile(r'^attnserve_request_duration_seconds_sum\{[^}]*rpc="Attend"[^}]*\} (\S+)$',
                        re.M)


def server_seconds(metrics_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in SERVER_SUM.findall(text))


def tensor(values, dtype):
    t = pb.Tensor(shape=list(values.shape))
    if dtype == "float32":
        t.raw_data = values.astype("<f4").tobytes()
    else:
        t.raw_data = values.astype("<f2").tobytes()
        t.dtype = pb.DTYPE_FLOAT16
    return t


def request(q, k, v, in_dtype, out_dtype):
    r = pb.AttendRequest(causal=True, raw_output=True)
    r.method.alibi.SetInParent()
    r.q.CopyFrom(tensor(q, in_dtype))
    r.k.CopyFrom(tensor(k, in_dtype))
    r.v.CopyFrom(tensor(v, in_dtype))
    if out_dtype == "float16":
        r.output_dtype = pb.DTYPE_FLOAT16
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--calls", type=int, default=20, help="calls of each form")
    parser.add_argument("--seq", type=int, default=2048, help="Sq = Sk")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="attnd --threads")
    args = parser.parse_args()

    rng = np.random.default_rng(14)
    shape = (1, args.heads, args.seq, args.dim)
    # Values exact in float16, so every form computes on the same inputs.
    q, k, v = (rng.standard_normal(shape).astype(np.float16).astype(np.float32) for _ in range(3))
    forms = {
        "float32 in, float32 out": request(q, k, v, "float32", "float32"),
        "float16 in, float32 out": request(q, k, v, "float16", "float32"),
        "float16 in, float16 out": request(q, k, v, "float16", "float16"),
    }
    options = [("grpc.max_send_message_length", 256 << 20),
               ("grpc.max_receive_message_length", 256 << 20)]
    with AttndProcess([f"--threads={args.threads}", "--batch_threads=1"]) as attnd:
        stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(attnd.address, options=options))
        latency = {name: [] for name in forms}
        server = {name: [] for name in forms}
        response_bytes = {}
        for name, req in forms.items():  # warm-up, one each
            response_bytes[name] = stub.Attend(req, timeout=120).ByteSize()
        for _ in range(args.calls):
            for name, req in forms.items():
                before = server_seconds(attnd.metrics_port)
                start = time.perf_counter()
                stub.Attend(req, timeout=120)
                latency[name].append(time.perf_counter() - start)
                server[name].append(server_seconds(attnd.metrics_port) - before)
    base = statistics.median(server["float32 in, float32 out"])
    print(f"Attend alibi causal B=1 H={args.heads} S={args.seq} D={args.dim}, attnd "
          f"--threads={args.threads}, {args.calls} calls of each form, alternating")
    print("| form | request bytes | response bytes | median latency | median server time "
          "| server time / float32's |")
    print("|---|---|---|---|---|---|")
    for name, req in forms.items():
        server_ms = statistics.median(server[name]) * 1e3
        print(f"| {name} | {req.ByteSize():,} | {response_bytes[name]:,} "
              f"| {statistics.median(latency[name]) * 1e3:.1f} ms | {server_ms:.1f} ms "
              f"| {statistics.median(server[name]) / base:.2f} |")


if __name__ == "__main__":
    main()
