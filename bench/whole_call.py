"""Issue 13's whole-call row: an Attend at S=2048 (B=1, H=8, D=64, method none,
q, k, v as float32 raw_data, raw_output) against the real attnd, the request's
server time (attnserve_request_duration_seconds: arrival, before the body is
parsed, to the response handed to gRPC) next to its compute time
(attnserve_compute_duration_seconds: the kernels and the response's fill),
both read per call as the growth of the histograms' _sum from /metrics.

Give --attnd several times (e.g. a copy of the attnd before a change, then
the new one): each runs as its own process, all started at once, and the
calls alternate between them one at a time (so the machine's load hits them
alike; only one computes at any moment). attnd runs with its defaults
(2 compute threads, batching on). Prints per binary the median client
latency, median server and compute time, and the median of the per-call
ratios server / compute. Usage (from the repository root, after `make build`):

  PYTHONPATH=build/python /usr/bin/python3 bench/whole_call.py \\
      --attnd /tmp/attnd-before --attnd build/bin/attnd [--calls 20] [--seq 2048]
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


def metric_sum(text, name, label):
    pattern = re.compile(r"^" + name + r"_sum\{[^}]*" + label + r"[^}]*\} (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def sums(metrics_port):
    """(request seconds of Attend, compute seconds of method none) so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return (metric_sum(text, "attnserve_request_duration_seconds", 'rpc="Attend"'),
            metric_sum(text, "attnserve_compute_duration_seconds", 'method="none"'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--attnd", action="append", required=True, help="an attnd binary")
    parser.add_argument("--calls", type=int, default=20, help="calls per binary")
    parser.add_argument("--seq", type=int, default=2048, help="Sq = Sk")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(13)
    shape = (1, args.heads, args.seq, args.dim)
    req = pb.AttendRequest(raw_output=True)
    req.method.none.SetInParent()
    for field in (req.q, req.k, req.v):
        field.shape.extend(shape)
        field.raw_data = rng.standard_normal(shape).astype("<f4").tobytes()
    options = [("grpc.max_send_message_length", 256 << 20),
               ("grpc.max_receive_message_length", 256 << 20)]
    servers = []
    try:
        for path in args.attnd:
            os.environ["ATTND_PATH"] = path
            servers.append(AttndProcess())
        stubs = [pb_grpc.AttentionServiceStub(grpc.insecure_channel(s.address, options=options))
                 for s in servers]
        for stub in stubs:  # warm-up: two each
            stub.Attend(req, timeout=120)
            stub.Attend(req, timeout=120)
        latency = [[] for _ in servers]
        server = [[] for _ in servers]
        compute = [[] for _ in servers]
        for _ in range(args.calls):
            for i, (attnd, stub) in enumerate(zip(servers, stubs)):
                before = sums(attnd.metrics_port)
                start = time.perf_counter()
                stub.Attend(req, timeout=120)
                latency[i].append(time.perf_counter() - start)
                # The metrics are recorded before the response goes out.
                after = sums(attnd.metrics_port)
                server[i].append(after[0] - before[0])
                compute[i].append(after[1] - before[1])
    finally:
        for attnd in servers:
            attnd.stop()
    print(f"Attend none B=1 H={args.heads} S={args.seq} D={args.dim}, float32 raw_data in and "
          f"out ({req.ByteSize():,} bytes in), attnd defaults, {args.calls} calls each, "
          f"alternating; load average {os.getloadavg()[0]:.1f}")
    print("| attnd | median latency | median server (request) | median compute "
          "| median server / compute | range of server / compute |")
    print("|---|---|---|---|---|---|")
    for i, path in enumerate(args.attnd):
        ratios = [s / c for s, c in zip(server[i], compute[i])]
        print(f"| {path} | {statistics.median(latency[i]) * 1e3:.1f} ms "
              f"| {statistics.median(server[i]) * 1e3:.1f} ms "
              f"| {statistics.median(compute[i]) * 1e3:.1f} ms "
              f"| {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |")


if __name__ == "__main__":
    main()
