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

With --compare_batching=RUNS it runs only part 3, RUNS times against an
attnd with --decode_batching=true and RUNS times against one with
--decode_batching=false (the same binary, both started once), alternating,
and prints each run, the medians and the load average around each run.

Usage: PYTHONPATH=build/python bench/decode_load.py [build] [--steps=N] [--sessions=64]
       [--compare_batching=RUNS]
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


def start_attnd(build, extra=()):
    tmp = tempfile.mkdtemp(prefix="decode_load_")
    port_file, metrics_file = os.path.join(tmp, "port"), os.path.join(tmp, "metrics")
    proc = subprocess.Popen(
        [os.path.join(build, "bin", "attnd"), "--address=127.0.0.1:0", f"--port_file={port_file}",
         "--metrics_address=127.0.0.1:0", f"--metrics_port_file={metrics_file}",
         "--lame_duck_s=0", "--threads=2", "--session_memory_bytes=2000000000", *extra],
        stderr=subprocess.DEVNULL)
    for _ in range(400):
        if os.path.exists(port_file):
            with open(port_file) as f, open(metrics_file) as g:
                return proc, int(f.read()), int(g.read())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("attnd did not start")


def metric(metrics_port, series):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def decode_bytes(metrics_port):
    return metric(metrics_port, 'attnserve_request_bytes_total{rpc="Decode"}')


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


async def concurrent(address, rng, sessions, steps, cached=1024, h=8, d=64, pid=None):
    """Steps/s, p50 and p99 (ms) and attnd's CPU seconds (of process `pid`,
    None without one) while the sessions step."""
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

        cpu = cpu_seconds(pid) if pid else 0.0
        start = time.perf_counter()
        await asyncio.gather(*(run(s) for s in opened))
        wall = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu if pid else None
        for s in opened:
            await s.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e3
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    return len(latencies) / wall, p50, p99, cpu


def cpu_seconds(pid):
    """User + system CPU time of process `pid` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare_batching(build, rng, sessions, steps, runs):
    """Part 3 alternating between attnd with and without --decode_batching."""
    servers = {}
    try:
        for batching in (True, False):
            servers[batching] = start_attnd(
                build, [f"--decode_batching={'true' if batching else 'false'}"])
        results = {True: [], False: []}
        for run in range(runs):
            for batching in (True, False) if run % 2 == 0 else (False, True):
                proc, port, metrics_port = servers[batching]
                passes = metric(metrics_port, "attnserve_decode_batch_size_count")
                batched = metric(metrics_port, "attnserve_decode_batch_size_sum")
                load_before = os.getloadavg()[0]
                rate, p50, p99, cpu = asyncio.run(
                    concurrent(f"127.0.0.1:{port}", rng, sessions, steps, pid=proc.pid))
                cpu_per_step = cpu / (sessions * steps) * 1e6
                load_after = os.getloadavg()[0]
                passes = metric(metrics_port, "attnserve_decode_batch_size_count") - passes
                batched = metric(metrics_port, "attnserve_decode_batch_size_sum") - batched
                results[batching].append((rate, p50, p99, cpu_per_step))
                print(f"   run {run + 1} batching={'on ' if batching else 'off'}: {rate:6.0f} "
                      f"steps/s, p50 {p50:6.2f} ms, p99 {p99:6.2f} ms; {batched / passes:5.2f} "
                      f"steps per kernel pass (prefills included), attnd CPU {cpu_per_step:.0f} "
                      f"us a step; load {load_before:.1f} -> {load_after:.1f}", flush=True)
        for batching in (True, False):
            rows = results[batching]
            print(f"3. {sessions} sessions x 1024 cached, {steps} steps each, batching "
                  f"{'on ' if batching else 'off'}: median of {len(rows)}: "
                  f"{statistics.median(r[0] for r in rows):.0f} steps/s, "
                  f"p50 {statistics.median(r[1] for r in rows):.2f} ms, "
                  f"p99 {statistics.median(r[2] for r in rows):.2f} ms, "
                  f"attnd CPU {statistics.median(r[3] for r in rows):.0f} us a step")
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=20)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    build = args[0] if args else "build"
    steps = int(flags.get("steps", 40))
    sessions = int(flags.get("sessions", 64))
    if "compare_batching" in flags:
        compare_batching(build, np.random.default_rng(15), sessions, max(4, steps // 4),
                         int(flags["compare_batching"]))
        return
    proc, port, metrics_port = start_attnd(build)
    try:
        rng = np.random.default_rng(15)
        address = f"127.0.0.1:{port}"
        with attnserve.Client(address, timeout=600) as client:
            step_vs_attend(client, rng, steps)
            bytes_per_step(client, metrics_port, rng)
        rate, p50, p99, _ = asyncio.run(concurrent(address, rng, sessions, max(4, steps // 4)))
        print(f"3. {sessions} concurrent sessions of 1024 cached tokens, {max(4, steps // 4)} "
              f"steps each: {rate:.0f} steps/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"(attnd's default --decode_batching)")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
