#!/usr/bin/python3
"""Decode sessions under load against a local attnd (issue 15's service-level
rows; bounded in steps and time). Starts attnd from the build tree itself on
127.0.0.1 port 0 and prints, in one run:

  1. a client-observed decode step at cached length 4096 (B=1, H=8, D=64)
     next to the stateless Attend that resends the whole history;
  2. the request bytes of a step (attnd's attnserve_request_bytes_total
     {rpc="Decode"}) at cached lengths 256, 4096 and 32768, next to the
     bytes of the equivalent Attend;
  3. 64 concurrent sessions of 1024 cached tokens (asyncio, one channel):
     steps/s and p50/p99 step latency.

Usage: PYTHONPATH=build/python bench/decode_load.py [build] [--steps=N] [--sessions=64]
"""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

import attnserve
import attnserve.aio
from attnserve.session import decode_step_request
from attnserve.client import attend_request


def start_attnd(build):
    tmp = tempfile.mkdtemp(prefix="decode_load_")
    port_file, metrics_file = os.path.join(tmp, "port"), os.path.join(tmp, "metrics")
    proc = subprocess.Popen(
        [os.path.join(build, "bin", "attnd"), "--address=127.0.0.1:0", f"--port_file={port_file}",
         "--metrics_address=127.0.0.1:0", f"--metrics_port_file={metrics_file}",
         "--lame_duck_s=0", "--threads=2", "--session_memory_bytes=2000000000"],
        stderr=subprocess.DEVNULL)
    for _ in range(400):
        if os.path.exists(port_file):
            with open(port_file) as f, open(metrics_file) as g:
                return proc, int(f.read()), int(g.read())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("attnd did not start")


def decode_bytes(metrics_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith('attnserve_request_bytes_total{rpc="Decode"}'):
            return float(line.split()[-1])
    return 0.0


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def prefill(session, rng, tokens, h, d, chunk=4096):
    done = 0
    while done < tokens:
        n = min(chunk, tokens - done)
        session.step(rand(rng, 1, h, n, d), rand(rng, 1, h, n, d), rand(rng, 1, h, n, d))
        done += n


def step_vs_attend(client, rng, steps, cached=4096, h=8, d=64):
    with client.decode("none", batch=1, num_heads=h, head_dim=d, max_len=cached + steps) as s:
        prefill(s, rng, cached, h, d)
        q, k, v = rand(rng, 1, h, 1, d), rand(rng, 1, h, 1, d), rand(rng, 1, h, 1, d)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            s.step(q, k, v)
            times.append(time.perf_counter() - start)
    k_all, v_all = rand(rng, 1, h, cached, d), rand(rng, 1, h, cached, d)
    attend_times = []
    for _ in range(max(5, steps // 4)):
        start = time.perf_counter()
        client.attend("none", q, k_all, v_all, causal=True)
        attend_times.append(time.perf_counter() - start)
    step_ms = statistics.median(times) * 1e3
    attend_ms = statistics.median(attend_times) * 1e3
    print(f"1. cached length {cached}, B=1 H={h} D={d}: session step {step_ms:.3f} ms "
          f"(median of {steps}), stateless Attend resending the history {attend_ms:.3f} ms "
          f"(median of {len(attend_times)}): {attend_ms / step_ms:.1f}x")


def bytes_per_step(client, metrics_port, rng, h=8, d=64, steps=4):
    print("2. request bytes per decode step (server-side attnserve_request_bytes_total)")
    for cached in (256, 4096, 32768):
        with client.decode("none", batch=1, num_heads=h, head_dim=d,
                           max_len=cached + steps) as s:
            prefill(s, rng, cached, h, d)
            q, k, v = rand(rng, 1, h, 1, d), rand(rng, 1, h, 1, d), rand(rng, 1, h, 1, d)
            before = decode_bytes(metrics_port)
            for _ in range(steps):
                s.step(q, k, v)
            per_step = (decode_bytes(metrics_port) - before) / steps
        attend = attend_request("none", q, rand(rng, 1, h, cached + 1, d),
                                rand(rng, 1, h, cached + 1, d), causal=True).ByteSize()
        local = decode_step_request(q, k, v).ByteSize()
        print(f"   cached {cached:6d}: {per_step:8.0f} bytes a step (message {local}), "
              f"equivalent Attend {attend:10d} bytes")


async def concurrent(address, rng, sessions, steps, cached=1024, h=8, d=64):
    latencies = []
    async with attnserve.aio.Client(address, timeout=600) as client:
        opened = []
        for _ in range(sessions):
            s = await client.decode("none", batch=1, num_heads=h, head_dim=d,
                                    max_len=cached + steps)
            await s.step(rand(rng, 1, h, cached, d), rand(rng, 1, h, cached, d),
                         rand(rng, 1, h, cached, d))
            opened.append(s)
        q, k, v = rand(rng, 1, h, 1, d), rand(rng, 1, h, 1, d), rand(rng, 1, h, 1, d)

        async def run(s):
            for _ in range(steps):
                start = time.perf_counter()
                await s.step(q, k, v)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(run(s) for s in opened))
        wall = time.perf_counter() - start
        for s in opened:
            await s.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e3
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    print(f"3. {sessions} concurrent sessions of {cached} cached tokens, {steps} steps each: "
          f"{len(latencies) / wall:.0f} steps/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms "
          f"(no cross-session batching)")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    build = args[0] if args else "build"
    steps = int(flags.get("steps", 40))
    sessions = int(flags.get("sessions", 64))
    proc, port, metrics_port = start_attnd(build)
    try:
        rng = np.random.default_rng(15)
        address = f"127.0.0.1:{port}"
        with attnserve.Client(address, timeout=600) as client:
            step_vs_attend(client, rng, steps)
            bytes_per_step(client, metrics_port, rng)
        asyncio.run(concurrent(address, rng, sessions, max(4, steps // 4)))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
