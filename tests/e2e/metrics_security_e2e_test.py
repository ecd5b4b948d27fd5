"""attnd's metrics listener under attack and with its own security, end to end:
slow and half-open connections (finding 7: 8 connections sending half their
headers blocked scrapes for about a minute) no longer block a scrape, and a
connection trickling its headers is cut at the request timeout;
--metrics_token_file (401 without the bearer token, SIGHUP reload); start-up
refusal of a token file that cannot be read; HTTPS through
deploy/haproxy/metrics-tls.cfg (attnd's CivetWeb cannot serve HTTPS: see
server/metrics_http.h).

Run by CTest with PYTHONPATH=<build>/python and ATTND_PATH."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess, attnd_path  # pylint: disable=wrong-import-position
from pki import Pki  # pylint: disable=wrong-import-position

HAPROXY = os.environ.get("HAPROXY_PATH", "/usr/sbin/haproxy")
SOURCE_DIR = os.environ.get("ATTN_SOURCE_DIR",
                            os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

TOKEN = "scrape-token-55d1e0"
NEW_TOKEN = "scrape-token-rotated-0c4f"
# CivetWeb's request timeout in attnd (kMetricsRequestTimeoutMs).
REQUEST_TIMEOUT_S = 3.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url, token=None, timeout=10, context=None):
    """(status, body) of GET url."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def half_open(port, count):
    """`count` connections that each sent half a request's headers and stall."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
        sockets.append(sock)
    return sockets


class SlowClientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = AttndProcess(["--warmup_iterations=0"])
        cls.url = f"http://127.0.0.1:{cls.server.metrics_port}/metrics"

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def timed_scrape(self):
        start = time.monotonic()
        status, body = scrape(self.url, timeout=30)
        took = time.monotonic() - start
        self.assertEqual(status, 200)
        self.assertIn("attnserve_build_info", body)
        return took

    def test_finding7_eight_half_open_connections_do_not_block_a_scrape(self):
        sockets = half_open(self.server.metrics_port, 8)
        try:
            took = self.timed_scrape()
            print(f"scrape beside 8 half-open connections: {took:.3f} s", file=sys.stderr)
            self.assertLess(took, 2.0)
        finally:
            for sock in sockets:
                sock.close()

    def test_more_stalled_connections_than_threads_are_dropped_by_the_timeout(self):
        # 40 > the 16 worker threads: the first 16 hold every thread until
        # the request timeout drops them, then the rest, then the scrape.
        sockets = half_open(self.server.metrics_port, 40)
        try:
            took = self.timed_scrape()
            print(f"scrape beside 40 half-open connections: {took:.3f} s", file=sys.stderr)
            # 40 stalled / 16 threads = 3 rounds of the timeout at most.
            self.assertLess(took, 3 * REQUEST_TIMEOUT_S + 5)
            # The stalled connections were answered 400 and closed by the server.
            sockets[0].settimeout(10)
            answer = b""
            while True:
                chunk = sockets[0].recv(4096)
                if not chunk:
                    break
                answer += chunk
            self.assertTrue(answer.startswith(b"HTTP/1.0 400"), answer[:100])
        finally:
            for sock in sockets:
                sock.close()


    def test_trickled_headers_are_cut_at_the_request_timeout(self):
        with socket.create_connection(("127.0.0.1", self.server.metrics_port)) as sock:
            sock.settimeout(0.2)
            start = time.monotonic()
            request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
            answer = None
            for byte in request:
                try:
                    sock.sendall(bytes([byte]))
                    answer = sock.recv(100)
                    break
                except socket.timeout:
                    continue
                except OSError:
                    answer = b""
                    break
            took = time.monotonic() - start
            print(f"trickling connection cut after {took:.2f} s", file=sys.stderr)
            self.assertIsNotNone(answer, "the server let a trickling request go on")
            self.assertNotIn(b"200 OK", answer)
            self.assertLess(took, REQUEST_TIMEOUT_S + 10)


class MetricsSecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="attnd_metrics_security_")
        cls.tokens = os.path.join(cls.tmp, "metrics_tokens")
        with open(cls.tokens, "w", encoding="ascii") as f:
            f.write(f"# Prometheus' bearer token\n{TOKEN}\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_token_required_and_reloaded_on_sighup(self):
        log_path = os.path.join(self.tmp, "token.log")
        with AttndProcess([f"--metrics_token_file={self.tokens}", "--warmup_iterations=0"],
                          log_path=log_path) as server:
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            for token in (None, "wrong", TOKEN[:-1]):
                with self.subTest(token=token):
                    status, body = scrape(url, token)
                    self.assertEqual(status, 401)
                    self.assertNotIn("attnserve_", body)
            self.assertEqual(scrape(f"http://127.0.0.1:{server.metrics_port}/other")[0], 401)
            status, body = scrape(url, TOKEN)
            self.assertEqual(status, 200)
            self.assertIn("attnserve_build_info", body)
            # gRPC needs no token: the metrics token is the listener's alone.
            with open(self.tokens, "w", encoding="ascii") as f:
                f.write(f"{NEW_TOKEN}\n")
            os.kill(server.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while scrape(url, NEW_TOKEN)[0] != 200:
                self.assertLess(time.monotonic(), deadline, "new metrics token not accepted")
                time.sleep(0.05)
            self.assertEqual(scrape(url, TOKEN)[0], 401)
        with open(log_path, encoding="utf-8") as f:
            log = f.read()
        self.assertNotIn(TOKEN, log)
        self.assertNotIn(NEW_TOKEN, log)

    def test_https_through_the_haproxy_config(self):
        if not os.access(HAPROXY, os.X_OK):
            self.skipTest(f"no haproxy at {HAPROXY}")
        ca = Pki(self.tmp).ca("ca")
        cert, key = ca.issue("metrics", serial=31)
        pem = os.path.join(self.tmp, "metrics_cert_and_key.pem")
        with open(pem, "wb") as out:
            for path in (cert, key):
                with open(path, "rb") as f:
                    out.write(f.read())
        with AttndProcess([f"--metrics_token_file={self.tokens}",
                           "--warmup_iterations=0"]) as server:
            port = free_port()
            env = dict(os.environ, METRICS_TLS_BIND=f"127.0.0.1:{port}", METRICS_TLS_PEM=pem,
                       ATTND_METRICS=f"127.0.0.1:{server.metrics_port}")
            config = os.path.join(SOURCE_DIR, "deploy", "haproxy", "metrics-tls.cfg")
            with subprocess.Popen([HAPROXY, "-f", config, "-db"], env=env) as proxy:
                try:
                    context = ssl.create_default_context(cafile=ca.cert)
                    url = f"https://localhost:{port}/metrics"
                    deadline = time.monotonic() + 20
                    while True:
                        try:
                            status, body = scrape(url, TOKEN, context=context)
                            break
                        except (urllib.error.URLError, ConnectionError) as error:
                            self.assertIsNone(proxy.poll(), "haproxy exited")
                            self.assertLess(time.monotonic(), deadline, str(error))
                            time.sleep(0.1)
                    self.assertEqual(status, 200)
                    self.assertIn("attnserve_build_info", body)
                    # attnd's token check still applies behind the proxy.
                    self.assertEqual(scrape(url, None, context=context)[0], 401)
                finally:
                    proxy.terminate()
                    proxy.wait(timeout=10)

    def test_startup_refusals(self):
        def run(*flags):
            return subprocess.run([attnd_path(), "--address=127.0.0.1:0",
                                   "--metrics_address=127.0.0.1:0", "--warmup_iterations=0",
                                   *flags], capture_output=True, text=True, timeout=30,
                                  check=False)

        result = run(f"--metrics_token_file={self.tmp}/absent")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--metrics_token_file", result.stderr)
        self.assertIn("cannot read", result.stderr)


if __name__ == "__main__":
    unittest.main()
