"""The Python package's channel defaults (attnserve.channel) are really
applied to a client given only a target, against real attnd processes on
127.0.0.1: round_robin over the target's addresses, a dead address skipped,
UNAVAILABLE retried on another replica for the idempotent calls, a
NOT_SERVING replica left alone (client-side health checking) while health()
still reports it, and a caller's service config overriding the default.

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python and ATTND_PATH."""

import json
import os
import signal
import socket
import sys
import time
import unittest
import urllib.request

import numpy as np

import attnserve
from attnserve import channel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

SEED = 777
CALLS = 30


def served(server, code="OK", rpc="Attend"):
    """attnserve_requests_total of method none for `rpc` with `code`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=10) as response:
        text = response.read().decode()
    value = sample_value(text, "attnserve_requests_total",
                         {"code": code, "method": "none", "rpc": rpc})
    return 0 if value is None else int(value)


def free_port():
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class ChannelDefaultsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        print(f"seed {SEED}")
        rng = np.random.default_rng(SEED)
        cls.qkv = [rng.standard_normal((1, 1, 2, 4)).astype(np.float32) for _ in range(3)]

    def setUp(self):
        self.servers = []
        self.lame_ducks = []

    def tearDown(self):
        for server in self.lame_ducks:
            # Not worth waiting out its lame duck.
            os.kill(server.pid, signal.SIGKILL)
        for server in self.servers:
            server.stop()

    def start(self, *flags):
        server = AttndProcess(flags)
        self.servers.append(server)
        return server

    def attend_all(self, client, calls=CALLS):
        for _ in range(calls):
            client.attend("none", *self.qkv)

    def test_the_default_service_config(self):
        config = json.loads(dict(channel.channel_options())["grpc.service_config"])
        self.assertEqual(config["loadBalancingConfig"], [{"round_robin": {}}])
        self.assertEqual(config["healthCheckConfig"], {"serviceName": ""})
        (method_config,) = config["methodConfig"]
        self.assertEqual(
            sorted((n["service"], n["method"]) for n in method_config["name"]),
            [("attnserve.v1.AttentionService", "Attend"),
             ("attnserve.v1.AttentionService", "Encode"),
             ("attnserve.v1.AttentionService", "ListMethods"),
             ("grpc.health.v1.Health", "Check")])
        self.assertEqual(method_config["retryPolicy"]["retryableStatusCodes"], ["UNAVAILABLE"])
        self.assertEqual(method_config["retryPolicy"]["maxAttempts"], 5)
        # A caller's options win key by key; {} means no service config.
        options = dict(channel.channel_options(service_config={},
                                               options={"grpc.keepalive_time_ms": 60000}))
        self.assertNotIn("grpc.service_config", options)
        self.assertEqual(options["grpc.keepalive_time_ms"], 60000)

    def test_round_robin_given_only_the_target(self):
        a, b = self.start(), self.start()
        with attnserve.Client(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}") as client:
            self.attend_all(client)
        # round_robin alternates; gRPC's pick_first would send all to one.
        self.assertEqual(served(a) + served(b), CALLS)
        self.assertGreaterEqual(served(a), CALLS // 3)
        self.assertGreaterEqual(served(b), CALLS // 3)

    def test_a_dead_address_is_skipped(self):
        live = self.start()
        target = f"ipv4:127.0.0.1:{free_port()},127.0.0.1:{live.port}"
        with attnserve.Client(target, timeout=20.0) as client:
            self.attend_all(client)
        self.assertEqual(served(live), CALLS)

    def lame_duck_and_live(self):
        """Replica a in lame duck (NOT_SERVING, refusing new calls), b serving."""
        a, b = self.start("--lame_duck_s=60"), self.start()
        os.kill(a.pid, signal.SIGTERM)
        self.lame_ducks.append(a)
        with attnserve.Client(a.address, service_config={}) as probe:
            wait_for(lambda: not probe.health(), "replica a NOT_SERVING")
        return a, b

    def test_unavailable_is_retried_on_another_replica(self):
        a, b = self.lame_duck_and_live()
        # The default retry policy without client-side health checking, so
        # that calls do reach the lame duck and are refused there.
        config = channel.default_service_config(health_checking=False)
        with attnserve.Client(f"ipv4:{a.address},{b.address}", service_config=config) as client:
            self.attend_all(client)
            self.assertEqual(client.list_methods().limits.max_elements, 1 << 28)
            self.assertIn("bias", client.encode("alibi", sq=2, sk=2, num_heads=1))
        refused = served(a, code="UNAVAILABLE")
        self.assertGreater(refused, 0, "no call reached the lame duck: nothing was retried")
        self.assertEqual(served(b), CALLS)

    def test_without_retries_the_refusal_reaches_the_caller(self):
        a, _ = self.lame_duck_and_live()
        with attnserve.Client(a.address, service_config={}) as client:
            with self.assertRaises(attnserve.AttnError) as refused:
                client.attend("none", *self.qkv)
        self.assertIn("draining", refused.exception.message)

    def test_a_not_serving_replica_gets_no_calls_but_health_reports_it(self):
        a, b = self.lame_duck_and_live()
        with attnserve.Client(f"ipv4:{a.address},{b.address}") as client:
            self.attend_all(client)
            self.assertEqual(served(b), CALLS)
            self.assertEqual(served(a, code="UNAVAILABLE"), 0)
        with attnserve.Client(a.address) as client:
            # Its own channel without health checking: NOT_SERVING, not UNAVAILABLE.
            self.assertFalse(client.health())


if __name__ == "__main__":
    unittest.main()
