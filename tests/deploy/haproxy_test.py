"""deploy/haproxy/haproxy.cfg with Debian's haproxy in front of real attnd
replicas, all on 127.0.0.1.

HealthCheckFramesTest: the HTTP/2 frames the config's tcp-check sends are
exactly a grpc.health.v1.Health/Check call built here from the HPACK and
HTTP/2 rules, a real attnd answers them with the pattern the config expects,
and a NOT_SERVING health service does not.

HaproxyTest: three attnd behind HAProxy; calls through one client connection
are spread over all three (per-replica attnserve_requests_total), a replica
killed with SIGKILL costs no call, and a replica whose health says NOT_SERVING
is marked DOWN and gets no call, a replica in lame duck after SIGTERM is
marked DOWN while it still runs, and a health Watch through HAProxy gets
UNIMPLEMENTED (the balancer answers it, so clients do not pin their
health stream to one replica).

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python, ATTND_PATH,
HAPROXY_PATH and ATTN_SOURCE_DIR. Everything waits at most tens of seconds
and is stopped at the end."""

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error

import grpc

from attnserve import Client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client"))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position
from prometheus_e2e_test import free_port, http_get, send_traffic  # pylint: disable=wrong-import-position
from prometheus_e2e_test import (ENCODE_CALLS, INVALID_CALLS, NOT_FOUND_CALLS,  # pylint: disable=wrong-import-position
                                 OK_CALLS)
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

SOURCE_DIR = os.environ.get("ATTN_SOURCE_DIR", os.path.join(HERE, "..", ".."))
HAPROXY = os.environ.get("HAPROXY_PATH", "/usr/sbin/haproxy")
CONFIG = os.path.join(SOURCE_DIR, "deploy", "haproxy", "haproxy.cfg")
WAIT_S = 30.0
TRAFFIC_CALLS = OK_CALLS + INVALID_CALLS + NOT_FOUND_CALLS + ENCODE_CALLS
HEALTH_PATH = "/grpc.health.v1.Health/Check"


def _hpack_literal(index, value):
    """HPACK literal header field without indexing, name from the static table
    (RFC 7541 6.2.2, 4-bit prefix), value as a raw (non-Huffman) string."""
    prefix = bytes([index]) if index < 15 else bytes([15, index - 15])
    return prefix + bytes([len(value)]) + value


def _hpack_literal_new_name(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _frame(frame_type, flags, stream_id, payload):
    """An HTTP/2 frame (RFC 7540 4.1)."""
    return (len(payload).to_bytes(3, "big") + bytes([frame_type, flags]) +
            stream_id.to_bytes(4, "big") + payload)


def health_check_frames():
    """A gRPC health Check call on a fresh HTTP/2 connection, as the list of
    pieces the config sends: preface, SETTINGS, HEADERS, DATA."""
    headers = (b"\x83"                                       # :method POST (static 3)
               b"\x86"                                       # :scheme http (static 6)
               + _hpack_literal(4, HEALTH_PATH.encode())     # :path
               + _hpack_literal(1, b"attnd")                 # :authority
               + _hpack_literal(31, b"application/grpc")     # content-type
               + _hpack_literal_new_name(b"te", b"trailers"))
    empty_request = b"\x00" + (0).to_bytes(4, "big")         # uncompressed, 0 bytes
    return [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            _frame(0x4, 0x0, 0, b""),                        # SETTINGS
            _frame(0x1, 0x4, 1, headers),                    # HEADERS, END_HEADERS
            _frame(0x0, 0x1, 1, empty_request)]              # DATA, END_STREAM


def response_message(status):
    """A gRPC-framed HealthCheckResponse{status} (SERVING = 1, NOT_SERVING = 2)."""
    body = bytes([0x08, status])
    return b"\x00" + len(body).to_bytes(4, "big") + body


def config_check():
    """(the send-binary pieces, the expect-binary pattern) of haproxy.cfg."""
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read()
    sent = [bytes.fromhex(h) for h in re.findall(r"^\s*tcp-check send-binary (\S+)", text, re.M)]
    expected = re.findall(r"^\s*tcp-check expect binary (\S+)", text, re.M)
    if len(expected) != 1:
        raise AssertionError(f"{CONFIG}: expected one 'tcp-check expect binary', got {expected}")
    return sent, bytes.fromhex(expected[0])


def exchange(port, pieces, want, timeout=10.0):
    """Sends `pieces` to 127.0.0.1:port and reads until `want` is in the
    answer, the peer closes or `timeout` passes; returns what was read."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for piece in pieces:
            s.sendall(piece)
        deadline = time.monotonic() + timeout
        while want not in answer and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            answer += chunk
    return answer


class NotServingHealth:
    """A real gRPC server (grpcio) whose health service answers NOT_SERVING and
    which counts every call of any other method (answering UNAVAILABLE)."""

    def __init__(self):
        self.other_calls = 0
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                lambda request, context: response_message(2)[5:])})
        self._server.add_generic_rpc_handlers([health, self])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def service(self, handler_call_details):  # grpc.GenericRpcHandler
        if handler_call_details.method == HEALTH_PATH:
            return None
        self.other_calls += 1
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: context.abort(grpc.StatusCode.UNAVAILABLE, "not serving"))

    def stop(self):
        self._server.stop(None)


class HealthCheckFramesTest(unittest.TestCase):

    def test_config_sends_a_health_check_call_and_expects_serving(self):
        sent, expected = config_check()
        self.assertEqual(sent, health_check_frames())
        self.assertEqual(expected, response_message(1))

    def test_attnd_answers_serving(self):
        sent, expected = config_check()
        with AttndProcess() as attnd:
            answer = exchange(attnd.port, sent, expected)
        self.assertIn(expected, answer, answer.hex())

    def test_not_serving_does_not_match(self):
        sent, expected = config_check()
        server = NotServingHealth()
        self.addCleanup(server.stop)
        answer = exchange(server.port, sent, response_message(2))
        self.assertIn(response_message(2), answer, answer.hex())
        self.assertNotIn(expected, answer)


class Haproxy:
    """haproxy -f deploy/haproxy/haproxy.cfg with ATTND_1..3 = `backends`, its
    gRPC and stats listeners on picked loopback ports."""

    def __init__(self, backends, tmp):
        self.log_path = os.path.join(tmp, "haproxy.log")
        for _ in range(3):  # a picked port may be taken before HAProxy binds it
            self.port, self.stats_port = free_port(), free_port()
            env = dict(os.environ, ATTN_LB_ADDRESS="127.0.0.1", ATTN_LB_PORT=str(self.port),
                       ATTN_LB_STATS_ADDRESS="127.0.0.1", ATTN_LB_STATS_PORT=str(self.stats_port))
            env.update({f"ATTND_{i + 1}": backend for i, backend in enumerate(backends)})
            with open(self.log_path, "w", encoding="utf-8") as log:
                self.process = subprocess.Popen([HAPROXY, "-f", CONFIG, "-db"], env=env,
                                                stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if http_get(self.stats_url(), timeout=1.0)[0] == 200:
                        return
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.1)
            if self.process.poll() is None:
                self.stop()
                raise AssertionError(f"HAProxy not answering within {WAIT_S} s:\n{self.log()}")
            if "Address already in use" not in self.log():
                raise AssertionError(f"HAProxy exited with {self.process.returncode}:\n"
                                     f"{self.log()}")
        raise AssertionError("HAProxy could not bind free ports in 3 attempts")

    def stats_url(self):
        return f"http://127.0.0.1:{self.stats_port}/metrics"

    def log(self):
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()

    def states(self):
        """{server name: state} from HAProxy's own Prometheus exporter."""
        text = http_get(self.stats_url())[1]
        states = {}
        for server in ("attnd1", "attnd2", "attnd3"):
            for state in ("UP", "DOWN", "MAINT", "DRAIN", "NOLB"):
                if sample_value(text, "haproxy_server_status",
                                {"proxy": "attnd", "server": server, "state": state}) == 1:
                    states[server] = state
        return states

    def wait_for_states(self, wanted):
        deadline = time.monotonic() + WAIT_S
        states = None
        while time.monotonic() < deadline:
            states = self.states()
            if states == wanted:
                return
            time.sleep(0.1)
        raise AssertionError(f"HAProxy states {states} after {WAIT_S} s, wanted {wanted}:\n"
                             f"{self.log()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def served(attnd):
    """How many requests this attnd answered, all RPCs and codes together."""
    text = http_get(f"http://127.0.0.1:{attnd.metrics_port}/metrics")[1]
    return sum(float(m) for m in re.findall(r"^attnserve_requests_total\{[^}]*\} (\S+)$", text,
                                             re.M))


class HaproxyTest(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.mkdtemp(prefix="haproxy_test_")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.tmp = tmp

    def start_attnd(self, count):
        replicas = []
        for _ in range(count):
            attnd = AttndProcess()
            self.addCleanup(attnd.stop)
            replicas.append(attnd)
        return replicas

    def start_haproxy(self, backends):
        haproxy = Haproxy(backends, self.tmp)
        self.addCleanup(haproxy.stop)
        # No service config: no client retries nor client health checking, so what
        # these tests see is HAProxy's own doing.
        client = Client(f"127.0.0.1:{haproxy.port}", timeout=30, service_config={})
        self.addCleanup(client.close)
        return haproxy, client

    def test_calls_on_one_connection_spread_over_every_replica(self):
        replicas = self.start_attnd(3)
        haproxy, client = self.start_haproxy([a.address for a in replicas])
        haproxy.wait_for_states({"attnd1": "UP", "attnd2": "UP", "attnd3": "UP"})

        rounds = 3
        for _ in range(rounds):
            send_traffic(client)  # asserts each call's own status
        counts = [served(a) for a in replicas]
        self.assertEqual(sum(counts), rounds * TRAFFIC_CALLS, counts)
        for count in counts:  # round robin per request: a third each, give or take
            self.assertGreaterEqual(count, rounds * TRAFFIC_CALLS // 5, counts)

    def test_a_killed_replica_costs_no_call(self):
        replicas = self.start_attnd(3)
        haproxy, client = self.start_haproxy([a.address for a in replicas])
        haproxy.wait_for_states({"attnd1": "UP", "attnd2": "UP", "attnd3": "UP"})
        client.list_methods()

        victim = replicas[0]
        victim._process.send_signal(signal.SIGKILL)  # pylint: disable=protected-access
        victim._process.wait()  # pylint: disable=protected-access
        before = [served(a) for a in replicas[1:]]
        calls = 30
        for _ in range(calls):  # at once, before any health check saw it: retried elsewhere
            client.list_methods()
        after = [served(a) for a in replicas[1:]]
        self.assertEqual(sum(after) - sum(before), calls, (before, after))
        haproxy.wait_for_states({"attnd1": "DOWN", "attnd2": "UP", "attnd3": "UP"})

    def test_a_lame_duck_replica_leaves_the_rotation_before_it_exits(self):
        replicas = self.start_attnd(2)
        victim = AttndProcess(extra_flags=["--lame_duck_s=20"])  # the last flag wins
        self.addCleanup(victim.stop)
        haproxy, client = self.start_haproxy([replicas[0].address, victim.address,
                                              replicas[1].address])
        haproxy.wait_for_states({"attnd1": "UP", "attnd2": "UP", "attnd3": "UP"})

        victim._process.send_signal(signal.SIGTERM)  # pylint: disable=protected-access
        haproxy.wait_for_states({"attnd1": "UP", "attnd2": "DOWN", "attnd3": "UP"})
        self.assertIsNone(victim._process.poll(), "it exited: the lame duck was not seen")  # pylint: disable=protected-access
        before = served(victim)
        send_traffic(client)
        self.assertEqual(served(victim), before)
        self.assertEqual(sum(served(a) for a in replicas), TRAFFIC_CALLS)
        self.assertIsNone(victim._process.poll())  # pylint: disable=protected-access
        victim._process.kill()  # pylint: disable=protected-access

    def test_health_watch_is_answered_by_haproxy(self):
        replicas = self.start_attnd(3)
        haproxy, client = self.start_haproxy([a.address for a in replicas])
        haproxy.wait_for_states({"attnd1": "UP", "attnd2": "UP", "attnd3": "UP"})
        self.assertTrue(client.health())  # Check goes through to a replica
        with grpc.insecure_channel(f"127.0.0.1:{haproxy.port}") as channel:
            watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
            with self.assertRaises(grpc.RpcError) as raised:
                list(watch(b"", timeout=10))
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("load balancer", raised.exception.details())

    def test_a_not_serving_replica_is_down_and_gets_no_call(self):
        replicas = self.start_attnd(2)
        not_serving = NotServingHealth()
        self.addCleanup(not_serving.stop)
        haproxy, client = self.start_haproxy(
            [replicas[0].address, f"127.0.0.1:{not_serving.port}", replicas[1].address])
        haproxy.wait_for_states({"attnd1": "UP", "attnd2": "DOWN", "attnd3": "UP"})
        self.assertIn("grpc.health.v1 status SERVING", haproxy.log())

        send_traffic(client)
        self.assertEqual(not_serving.other_calls, 0)
        counts = [served(a) for a in replicas]
        self.assertEqual(sum(counts), TRAFFIC_CALLS, counts)
        self.assertGreater(min(counts), 0, counts)


if __name__ == "__main__":
    unittest.main()
