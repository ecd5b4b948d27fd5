"""attnd's metrics listener under attack and with its own security, end to end:
slow and half-open connections (finding 7: 8 connections sending half their
headers blocked scrapes for about a minute) no longer block a scrape, and a
connection trickling its headers is cut at the request timeout;
--metrics_token_file (401 without the bearer token, SIGHUP reload); HTTPS of
attnd's own (--metrics_tls_cert_file, --metrics_tls_key_file: a scrape trusting
the test CA, plain HTTP refused, with a token, beside half-open connections);
start-up refusals naming the flag; an IPv6 listener; HTTPS through
deploy/haproxy/metrics-tls.cfg (the alternative to attnd's own).

Run by CTest with PYTHONPATH=<build>/python and ATTND_PATH."""

import http.client
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
# The metrics listener's request timeout in attnd (kMetricsRequestTimeoutMs).
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


def half_open(port, count, context=None):
    """`count` connections that each sent half a request's headers and stall
    (with `context`: over TLS, after the handshake)."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
        sockets.append(sock)
    return sockets


def read_until_closed(sock, timeout):
    """What the server sent before it closed `sock` (b"" for a reset)."""
    sock.settimeout(timeout)
    answer = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return answer
            answer += chunk
    except ConnectionResetError:
        return answer


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

    def test_forty_stalled_connections_neither_block_a_scrape_nor_stay_open(self):
        # libmicrohttpd's one epoll thread waits on none of them (CivetWeb's
        # 16 threads had to wait out the timeout of the first 16).
        sockets = half_open(self.server.metrics_port, 40)
        try:
            took = self.timed_scrape()
            print(f"scrape beside 40 half-open connections: {took:.3f} s", file=sys.stderr)
            self.assertLess(took, REQUEST_TIMEOUT_S)
            # The server closes each stalled connection at the timeout, unanswered.
            start = time.monotonic()
            for sock in sockets:
                self.assertNotIn(b"200 OK", read_until_closed(sock, REQUEST_TIMEOUT_S + 10))
            took = time.monotonic() - start
            print(f"40 stalled connections closed by attnd within {took:.2f} s", file=sys.stderr)
            self.assertLess(took, REQUEST_TIMEOUT_S + 10)
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

        ca = Pki(self.tmp).ca("refusal-ca")
        cert, key = ca.issue("refusal", serial=41)
        _, other_key = ca.issue("refusal-other", serial=42)
        for flags in ([f"--metrics_tls_cert_file={cert}"], [f"--metrics_tls_key_file={key}"]):
            with self.subTest(flags=flags):
                result = run(*flags)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("--metrics_tls_cert_file", result.stderr)
                self.assertIn("--metrics_tls_key_file", result.stderr)
        cases = [
            ([f"--metrics_tls_cert_file={self.tmp}/absent.pem", f"--metrics_tls_key_file={key}"],
             ["--metrics_tls_cert_file", f"{self.tmp}/absent.pem", "cannot read"]),
            ([f"--metrics_tls_cert_file={cert}", f"--metrics_tls_key_file={self.tmp}/absent.key"],
             ["--metrics_tls_key_file", f"{self.tmp}/absent.key", "cannot read"]),
            ([f"--metrics_tls_cert_file={key}", f"--metrics_tls_key_file={key}"],
             ["--metrics_tls_cert_file", key, "no PEM certificate"]),
            ([f"--metrics_tls_cert_file={cert}", f"--metrics_tls_key_file={other_key}"],
             ["--metrics_tls_key_file", other_key, "not the private key"]),
        ]
        for flags, expected in cases:
            with self.subTest(flags=flags):
                result = run(*flags)
                self.assertNotEqual(result.returncode, 0)
                for text in expected:
                    self.assertIn(text, result.stderr)
                # The key's contents are never quoted.
                self.assertNotIn("PRIVATE KEY", result.stderr)

    def test_ipv6_listener(self):
        try:
            with socket.socket(socket.AF_INET6) as sock:
                sock.bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback")
        with AttndProcess(["--metrics_address=[::1]:0", "--warmup_iterations=0"]) as server:
            self.assertGreater(server.metrics_port, 0)
            status, body = scrape(f"http://[::1]:{server.metrics_port}/metrics")
            self.assertEqual(status, 200)
            self.assertIn("attnserve_build_info", body)


class MetricsTlsTest(unittest.TestCase):
    """attnd's own HTTPS on the metrics listener, with a token."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="attnd_metrics_tls_")
        tokens = os.path.join(cls.tmp, "metrics_tokens")
        with open(tokens, "w", encoding="ascii") as f:
            f.write(f"{TOKEN}\n")
        cls.ca = Pki(cls.tmp).ca("ca")
        cert, key = cls.ca.issue("metrics", serial=51)
        cls.server = AttndProcess([f"--metrics_tls_cert_file={cert}",
                                   f"--metrics_tls_key_file={key}",
                                   f"--metrics_token_file={tokens}", "--warmup_iterations=0"])
        cls.url = f"https://localhost:{cls.server.metrics_port}/metrics"
        cls.context = ssl.create_default_context(cafile=cls.ca.cert)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_https_scrape_with_the_ca_and_the_token(self):
        status, body = scrape(self.url, TOKEN, context=self.context)
        self.assertEqual(status, 200)
        self.assertIn("attnserve_build_info", body)
        self.assertIn("# TYPE attnserve_batch_size histogram", body)
        # The certificate is the one given (serial 51), over TLS 1.2 or 1.3.
        with socket.create_connection(("127.0.0.1", self.server.metrics_port), timeout=10) as raw:
            with self.context.wrap_socket(raw, server_hostname="localhost") as tls:
                self.assertIn(tls.version(), ("TLSv1.2", "TLSv1.3"))
                der = tls.getpeercert(binary_form=True)
        serial = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                                input=der, capture_output=True, check=True).stdout
        self.assertEqual(serial.strip(), b"serial=33")  # 51 in hex

    def test_token_still_required_over_https(self):
        for token in (None, "wrong"):
            with self.subTest(token=token):
                status, body = scrape(self.url, token, context=self.context)
                self.assertEqual(status, 401)
                self.assertNotIn("attnserve_", body)

    def test_a_client_not_trusting_the_ca_fails_the_handshake(self):
        with self.assertRaises(urllib.error.URLError) as caught:
            scrape(self.url, TOKEN, context=ssl.create_default_context())
        self.assertIsInstance(caught.exception.reason, ssl.SSLCertVerificationError)

    def test_plain_http_to_the_tls_port_fails(self):
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with self.assertRaises((OSError, http.client.HTTPException)):
            scrape(url, TOKEN)
        # The listener still serves HTTPS afterwards.
        self.assertEqual(scrape(self.url, TOKEN, context=self.context)[0], 200)

    def test_tls_below_1_2_is_refused(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.ca.cert)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises((ssl.SSLError, OSError, urllib.error.URLError)):
            scrape(self.url, TOKEN, context=context)

    def test_finding7_eight_half_open_connections_do_not_block_an_https_scrape(self):
        # Four stalled before the handshake, four after it.
        raw = [socket.create_connection(("127.0.0.1", self.server.metrics_port), timeout=5)
               for _ in range(4)]
        sockets = raw + half_open(self.server.metrics_port, 4, context=self.context)
        try:
            start = time.monotonic()
            status, body = scrape(self.url, TOKEN, timeout=30, context=self.context)
            took = time.monotonic() - start
            print(f"HTTPS scrape beside 8 half-open connections: {took:.3f} s", file=sys.stderr)
            self.assertEqual(status, 200)
            self.assertIn("attnserve_build_info", body)
            self.assertLess(took, 2.0)
        finally:
            for sock in sockets:
                sock.close()


if __name__ == "__main__":
    unittest.main()
