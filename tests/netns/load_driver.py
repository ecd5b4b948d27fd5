"""A bounded load through the attnserve Python package, for the scale-out test
(tests/netns/scale_out_test.py runs it inside the test's client network
namespace).

    load_driver.py --target=T --threads=N --max_calls=M --max_seconds=S \
                   --progress=FILE --stop=FILE --out=FILE

Each thread calls, in turn, Attend (method none, checked against a NumPy
reference), Attend again, Encode (alibi, checked) and ListMethods, all on
ONE attnserve.Client(T) built from the target alone: whatever the client
does about load balancing, retries, keepalive and deadlines is its default.
Every failed call is recorded with its code and message. The run ends when
FILE --stop exists, after --max_calls calls or after --max_seconds, whichever
comes first; --progress holds "<ok calls> <failed calls>" (rewritten about
every 50 ms) and --out the summary as JSON:
{"ok": n, "failed": n, "failures": [{"code", "message", "rpc", "t"}], "seconds": s}.
"""

import argparse
import json
import os
import threading
import time

import numpy as np

import attnserve
from attnserve import AttnError

SEED = 20260
MAX_FAILURES_KEPT = 50


def reference_attend(q, k, v):
    scores = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64))
    scores /= np.sqrt(q.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v.astype(np.float64))


def alibi_bias(sq, sk, heads):
    # Press et al. (2022): slope_h = 2^(-8h/H), bias = -slope * |i - j| for H a power of 2.
    slopes = 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)
    distance = np.arange(sk)[None, :] - (np.arange(sq)[:, None] + (sk - sq))
    return slopes[:, None, None] * -np.abs(distance)[None, :, :]


class Load:
    def __init__(self, args):
        self.args = args
        rng = np.random.default_rng(SEED)
        print(f"load_driver: seed {SEED}", flush=True)
        self.q, self.k, self.v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
                                  for _ in range(3))
        self.expected = reference_attend(self.q, self.k, self.v)
        self.client = attnserve.Client(args.target)
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.failures = []
        self.calls = 0
        self.done = threading.Event()
        self.start = time.monotonic()

    def one_call(self, n):
        kind = n % 4
        if kind in (0, 1):
            result = self.client.attend("none", self.q, self.k, self.v)
            np.testing.assert_allclose(result.out, self.expected, rtol=1e-4, atol=1e-5)
            return "Attend"
        if kind == 2:
            bias = self.client.encode("alibi", sq=3, sk=5, num_heads=4)["bias"]
            np.testing.assert_allclose(bias.reshape(4, 3, 5), alibi_bias(3, 5, 4), rtol=1e-5,
                                       atol=1e-6)
            return "Encode"
        methods = self.client.list_methods()
        assert len(methods.methods) == 8, methods
        return "ListMethods"

    def worker(self, index):
        n = index
        while not self.done.is_set():
            with self.lock:
                if self.calls >= self.args.max_calls:
                    self.done.set()
                    return
                self.calls += 1
            failure = None
            try:
                self.one_call(n)
            except AttnError as error:
                failure = {"code": error.code.name, "message": error.message}
            except AssertionError as error:
                failure = {"code": "WRONG_RESULT", "message": str(error)[:500]}
            with self.lock:
                if failure is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.failures) < MAX_FAILURES_KEPT:
                        failure["rpc"] = ("Attend", "Attend", "Encode", "ListMethods")[n % 4]
                        failure["t"] = round(time.monotonic() - self.start, 3)
                        self.failures.append(failure)
                        print(f"load_driver: failed call: {failure}", flush=True)
            n += 1

    def write_progress(self):
        tmp = self.args.progress + ".tmp"
        with self.lock:
            text = f"{self.ok} {self.failed}\n"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, self.args.progress)

    def run(self):
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.args.threads)]
        for thread in threads:
            thread.start()
        end = self.start + self.args.max_seconds
        while not self.done.is_set():
            self.write_progress()
            if os.path.exists(self.args.stop) or time.monotonic() > end:
                self.done.set()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        self.write_progress()
        self.client.close()
        summary = {"ok": self.ok, "failed": self.failed, "failures": self.failures,
                   "seconds": round(time.monotonic() - self.start, 3)}
        with open(self.args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max_calls", type=int, default=200_000)
    parser.add_argument("--max_seconds", type=float, default=300)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--stop", required=True)
    parser.add_argument("--out", required=True)
    Load(parser.parse_args()).run()


if __name__ == "__main__":
    main()
