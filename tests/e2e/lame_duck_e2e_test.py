"""attnd's lame duck (--lame_duck_s) as a client sees it, on loopback.

After SIGTERM, for --lame_duck_s seconds: grpc.health.v1 Check says
NOT_SERVING, a new Attend or Encode gets UNAVAILABLE with a message that
says why and what to do, while the calls accepted before the signal (a unary
Attend held in the batch queue, an open AttendStream) go on and end OK; then
the drain runs and attnd exits 0 no earlier than the lame duck's end, having
logged its start and its end.

The calls here go through plain gRPC stubs without a service config (no
retries, no client-side health checking), so that what is asserted is the
server's own answer. Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python
and ATTND_PATH."""

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import grpc
import numpy as np

from attnserve.client import _health_pb2, attend_request, from_tensor
from attnserve.v1 import attention_pb2, attention_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess, attnd_path  # pylint: disable=wrong-import-position
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

SEED = 1111
LAME_DUCK_S = 4.0
# A lone request waits this long in the batch queue for company: it is still
# in flight (accepted, not answered) when the test sends SIGTERM.
QUEUE_DELAY_S = 1.5
WAIT_S = 20.0


def reference_attend(q, k, v):
    """Softmax(q k^T / sqrt(D)) v in float64 (method none, not causal)."""
    scores = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64))
    scores /= np.sqrt(q.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v.astype(np.float64))


def random_qkv(rng):
    return [rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3)]


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def wait_for(predicate, what, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class LameDuckTest(unittest.TestCase):

    def setUp(self):
        print(f"seed {SEED}")
        self.rng = np.random.default_rng(SEED)
        self.tmp = tempfile.TemporaryDirectory(prefix="attnd_lame_duck_")
        self.log_path = os.path.join(self.tmp.name, "attnd.log")
        self.server = AttndProcess(
            [f"--lame_duck_s={LAME_DUCK_S:g}", "--shutdown_grace_s=10", "--max_batch_size=8",
             f"--max_queue_delay_us={int(QUEUE_DELAY_S * 1e6)}"],
            log_path=self.log_path)
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = attention_pb2_grpc.AttentionServiceStub(self.channel)
        health = _health_pb2()
        self.check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health.HealthCheckRequest.SerializeToString,
            response_deserializer=health.HealthCheckResponse.FromString)
        self.serving = health.HealthCheckResponse.SERVING

    def tearDown(self):
        self.channel.close()
        self.server.stop()
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            print(log.read(), file=sys.stderr)
        self.tmp.cleanup()

    def health_status(self):
        return self.check(_health_pb2().HealthCheckRequest(), timeout=5).status

    def assert_served(self, response, q, k, v):
        np.testing.assert_allclose(from_tensor(response.out), reference_attend(q, k, v),
                                   rtol=1e-4, atol=1e-5)

    def test_refuses_new_calls_and_finishes_accepted_ones(self):
        self.assertEqual(self.health_status(), self.serving)

        # An AttendStream opened (and used) before the signal.
        stream_requests = queue.Queue()
        stream_inputs = [random_qkv(self.rng) for _ in range(2)]

        def stream_messages():
            while True:
                message = stream_requests.get()
                if message is None:
                    return
                yield message

        stream = self.stub.AttendStream(stream_messages(), timeout=60)
        stream_requests.put(attend_request("none", *stream_inputs[0]))
        self.assert_served(next(stream), *stream_inputs[0])

        # A unary Attend accepted before the signal, held in the batch queue.
        queued_inputs = random_qkv(self.rng)
        queued = self.stub.Attend.future(attend_request("none", *queued_inputs), timeout=60)
        wait_for(lambda: sample_value(scrape(self.server.metrics_port), "attnserve_queue_depth",
                                      {}) == 1.0,
                 "the Attend to be queued")

        signalled = time.monotonic()
        os.kill(self.server.pid, signal.SIGTERM)
        wait_for(lambda: self.health_status() != self.serving, "health NOT_SERVING")

        # New calls are refused while the lame duck lasts.
        for rpc, request in (
                (self.stub.Attend, attend_request("none", *random_qkv(self.rng))),
                (self.stub.Encode, attention_pb2.EncodeRequest(
                    method=attention_pb2.PositionalMethod(alibi={}), sq=2, sk=2, num_heads=1))):
            with self.assertRaises(grpc.RpcError) as refused:
                rpc(request, timeout=10)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertIn("draining", refused.exception.details())
            self.assertIn("retry on another replica", refused.exception.details())
        self.assertLess(time.monotonic() - signalled, LAME_DUCK_S,
                        "the refusals came after the lame duck (machine too slow to tell)")
        self.assertTrue(self.server.running(), "attnd exited during its lame duck")

        # The accepted calls go on: the queued Attend ends OK, and the open
        # stream takes and answers another message.
        self.assert_served(queued.result(timeout=WAIT_S), *queued_inputs)
        stream_requests.put(attend_request("none", *stream_inputs[1]))
        self.assert_served(next(stream), *stream_inputs[1])
        stream_requests.put(None)
        self.assertEqual(list(stream), [])
        self.assertEqual(stream.code(), grpc.StatusCode.OK)

        # Then the drain, and a clean exit no earlier than the lame duck's end.
        self.assertEqual(self.server.wait(timeout=LAME_DUCK_S + WAIT_S), 0)
        self.assertGreaterEqual(time.monotonic() - signalled, LAME_DUCK_S - 0.05)
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            text = log.read()
        self.assertIn(f"lame duck for {LAME_DUCK_S:g}s", text)
        self.assertIn("lame duck over, draining", text)
        self.assertLess(text.index("lame duck for"), text.index("lame duck over"))
        self.assertLess(text.index("lame duck over"), text.index("drained in"))

class LameDuckFlagTest(unittest.TestCase):

    def test_zero_means_no_lame_duck(self):
        with tempfile.TemporaryDirectory(prefix="attnd_lame_duck_") as tmp:
            log_path = os.path.join(tmp, "attnd.log")
            # AttndProcess's own default, stated anyway (later flags win).
            server = AttndProcess(["--lame_duck_s=0"], log_path=log_path)
            started = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            self.assertEqual(server.wait(timeout=WAIT_S), 0)
            elapsed = time.monotonic() - started
            server.stop()
            with open(log_path, encoding="utf-8") as log:
                text = log.read()
            self.assertNotIn("lame duck", text)
            self.assertIn("draining", text)
            self.assertLess(elapsed, 3.0)

    def test_negative_is_refused_naming_the_flag(self):
        done = subprocess.run([attnd_path(), "--address=127.0.0.1:0", "--metrics_address=",
                               "--lame_duck_s=-1"], capture_output=True, text=True, timeout=20,
                              check=False)
        self.assertEqual(done.returncode, 1)
        self.assertIn("--lame_duck_s: must be in 0..1e6 seconds, got -1", done.stderr)


if __name__ == "__main__":
    unittest.main()
