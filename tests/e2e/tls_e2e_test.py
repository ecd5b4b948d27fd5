"""attnd's gRPC listener over TLS and mutual TLS, end to end: certificates made
here with the openssl CLI (tests/e2e/pki.py), the real attnd, Python gRPC and
Python's ssl module as clients (the latter to read which certificate the
server presents: its serial number).

Covers: TLS serves and a plaintext client fails; mutual TLS rejects a client
without a certificate and one whose certificate another CA signed; rotation in
place and by a Kubernetes-style symlink swap reaches new connections within
the reload interval (1 s here, plus gRPC's 1 s staging refresh); a key and
certificate that do not match are skipped and the previous pair kept; start-up
refuses one of cert/key without the other, a mismatched pair, and a non-loopback
address without TLS unless --insecure (checked before binding).

Run by CTest with PYTHONPATH=<build>/python and ATTND_PATH."""

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

from attnserve.v1 import attention_pb2, attention_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess, attnd_path  # pylint: disable=wrong-import-position
from pki import Pki, read  # pylint: disable=wrong-import-position

RPC_TIMEOUT_S = 10
# Rotation must show within the interval (1 s) plus gRPC's staging refresh
# (1 s); the bound is generous for a busy 2-core machine, the time is printed.
ROTATION_DEADLINE_S = 15


def list_methods(address, credentials=None):
    """ListMethods over a fresh channel (secure when `credentials`); returns
    the method names or raises grpc.RpcError."""
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    with channel:
        stub = attention_pb2_grpc.AttentionServiceStub(channel)
        response = stub.ListMethods(attention_pb2.ListMethodsRequest(), timeout=RPC_TIMEOUT_S)
        return [m.name for m in response.methods]


def served_serial(port, ca, client_cert=None):
    """The serial number of the certificate attnd presents to a new TLS
    connection (verified against `ca` for the name localhost)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.set_alpn_protocols(["h2"])
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    with socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT_S) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def replace_in_place(path, data):
    """Rewrites `path` (same inode), as an editor or `cp` would."""
    with open(path, "wb") as f:
        f.write(data)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="attnd_tls_test_")
        pki = Pki(cls.tmp)
        cls.ca = pki.ca("ca")
        cls.other_ca = pki.ca("other_ca")
        cls.server_cert, cls.server_key = cls.ca.issue("server", serial=100)
        cls.client_cert = cls.ca.issue("client", serial=7, client=True)
        cls.stranger_cert = cls.other_ca.issue("stranger", serial=8, client=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def credentials(self, client=None):
        cert_chain, key = (read(client[0]), read(client[1])) if client else (None, None)
        return grpc.ssl_channel_credentials(root_certificates=read(self.ca.cert),
                                            private_key=key, certificate_chain=cert_chain)

    def test_tls_serves_and_a_plaintext_client_fails(self):
        flags = [f"--tls_cert_file={self.server_cert}", f"--tls_key_file={self.server_key}"]
        with AttndProcess(flags) as server:
            self.assertIn("rope", list_methods(f"localhost:{server.port}", self.credentials()))
            self.assertEqual(served_serial(server.port, self.ca.cert), 100)
            with self.assertRaises(grpc.RpcError) as plaintext:
                list_methods(server.address)
            self.assertEqual(plaintext.exception.code(), grpc.StatusCode.UNAVAILABLE)
            # A client that trusts another CA refuses the server.
            other = grpc.ssl_channel_credentials(root_certificates=read(self.other_ca.cert))
            with self.assertRaises(grpc.RpcError) as untrusted:
                list_methods(f"localhost:{server.port}", other)
            self.assertEqual(untrusted.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_mutual_tls_requires_a_client_certificate_from_the_ca(self):
        flags = [f"--tls_cert_file={self.server_cert}", f"--tls_key_file={self.server_key}",
                 f"--tls_client_ca_file={self.ca.cert}"]
        with AttndProcess(flags) as server:
            target = f"localhost:{server.port}"
            self.assertIn("none", list_methods(target, self.credentials(self.client_cert)))
            for name, client in (("no certificate", None), ("another CA", self.stranger_cert)):
                with self.subTest(client=name):
                    with self.assertRaises(grpc.RpcError) as refused:
                        list_methods(target, self.credentials(client))
                    self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
            with self.assertRaises(grpc.RpcError) as plaintext:
                list_methods(server.address)
            self.assertEqual(plaintext.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def wait_for_serial(self, port, serial, client=None):
        """Seconds until a new connection presents `serial`; fails after
        ROTATION_DEADLINE_S."""
        start = time.monotonic()
        while True:
            seen = served_serial(port, self.ca.cert, client)
            if seen == serial:
                return time.monotonic() - start
            if time.monotonic() - start > ROTATION_DEADLINE_S:
                self.fail(f"still serving serial {seen} {ROTATION_DEADLINE_S} s after the files "
                          f"changed to serial {serial}")
            time.sleep(0.1)

    def test_rotation_in_place_skips_a_mismatched_pair(self):
        directory = tempfile.mkdtemp(dir=self.tmp)
        cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
        shutil.copy(self.server_cert, cert)
        shutil.copy(self.server_key, key)
        new_cert, new_key = self.ca.issue("rotated", serial=200)
        log_path = os.path.join(directory, "attnd.log")
        with AttndProcess([f"--tls_cert_file={cert}", f"--tls_key_file={key}",
                           f"--tls_client_ca_file={self.ca.cert}", "--tls_reload_interval_s=1"],
                          log_path=log_path) as server:
            self.assertEqual(served_serial(server.port, self.ca.cert, self.client_cert), 100)
            # Certificate first, key a moment later, as a careless update does:
            # the half-updated pair does not match and must not be served.
            replace_in_place(cert, read(new_cert))
            time.sleep(2.5)  # more than interval + staging refresh: the bad pair was seen
            self.assertEqual(served_serial(server.port, self.ca.cert, self.client_cert), 100)
            self.assertIn("none", list_methods(f"localhost:{server.port}",
                                               self.credentials(self.client_cert)))
            replace_in_place(key, read(new_key))
            took = self.wait_for_serial(server.port, 200, self.client_cert)
            print(f"in-place rotation served after {took:.2f} s", file=sys.stderr)
            self.assertIn("none", list_methods(f"localhost:{server.port}",
                                               self.credentials(self.client_cert)))
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.assertIn("--tls_key_file", text)
        self.assertIn("is not the private key", text)
        self.assertEqual(text.count("is not the private key"), 1, text)  # logged once
        self.assertNotIn("PRIVATE KEY", text)  # no file contents in the log

    def test_client_ca_rotation(self):
        directory = tempfile.mkdtemp(dir=self.tmp)
        client_ca = os.path.join(directory, "client_ca.pem")
        shutil.copy(self.ca.cert, client_ca)
        with AttndProcess([f"--tls_cert_file={self.server_cert}",
                           f"--tls_key_file={self.server_key}",
                           f"--tls_client_ca_file={client_ca}",
                           "--tls_reload_interval_s=1"]) as server:
            target = f"localhost:{server.port}"
            self.assertIn("none", list_methods(target, self.credentials(self.client_cert)))
            with self.assertRaises(grpc.RpcError):
                list_methods(target, self.credentials(self.stranger_cert))
            # Trust the other CA from now on (a bundle of both, as in a CA rotation).
            replace_in_place(client_ca, read(self.ca.cert) + read(self.other_ca.cert))
            deadline = time.monotonic() + ROTATION_DEADLINE_S
            while True:
                try:
                    self.assertIn("none",
                                  list_methods(target, self.credentials(self.stranger_cert)))
                    break
                except grpc.RpcError:
                    self.assertLess(time.monotonic(), deadline,
                                    "a client of the added CA is still refused")
                    time.sleep(0.2)
            self.assertIn("none", list_methods(target, self.credentials(self.client_cert)))

    def test_rotation_by_symlink_swap(self):
        # The layout of a Kubernetes Secret volume: tls.crt -> ..data/tls.crt,
        # ..data -> ..<timestamp>/, and an update swaps ..data atomically.
        volume = tempfile.mkdtemp(dir=self.tmp)

        def publish(name, cert, key):
            os.mkdir(os.path.join(volume, name))
            shutil.copy(cert, os.path.join(volume, name, "tls.crt"))
            shutil.copy(key, os.path.join(volume, name, "tls.key"))
            os.symlink(name, os.path.join(volume, "..data_tmp"))
            os.rename(os.path.join(volume, "..data_tmp"), os.path.join(volume, "..data"))

        publish("..v1", self.server_cert, self.server_key)
        for name in ("tls.crt", "tls.key"):
            os.symlink(os.path.join("..data", name), os.path.join(volume, name))
        new_cert, new_key = self.ca.issue("swapped", serial=300)
        with AttndProcess([f"--tls_cert_file={volume}/tls.crt",
                           f"--tls_key_file={volume}/tls.key",
                           "--tls_reload_interval_s=1"]) as server:
            self.assertEqual(served_serial(server.port, self.ca.cert), 100)
            publish("..v2", new_cert, new_key)
            took = self.wait_for_serial(server.port, 300)
            print(f"symlink-swap rotation served after {took:.2f} s", file=sys.stderr)
            self.assertIn("none", list_methods(f"localhost:{server.port}", self.credentials()))


class StartupTest(unittest.TestCase):
    """Settings attnd refuses: it exits non-zero, naming the flags."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="attnd_tls_startup_")
        cls.ca = Pki(cls.tmp).ca("ca")
        cls.cert, cls.key = cls.ca.issue("server", serial=1)
        cls.other_cert, _ = cls.ca.issue("other", serial=2)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_attnd(self, *flags):
        return subprocess.run([attnd_path(), "--metrics_address=", "--warmup_iterations=0",
                               *flags], capture_output=True, text=True, timeout=30, check=False)

    def test_cert_without_key_and_key_without_cert(self):
        for flags in ([f"--tls_cert_file={self.cert}"], [f"--tls_key_file={self.key}"]):
            with self.subTest(flags=flags):
                result = self.run_attnd("--address=127.0.0.1:0", *flags)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("--tls_cert_file", result.stderr)
                self.assertIn("--tls_key_file", result.stderr)

    def test_client_ca_without_tls(self):
        result = self.run_attnd("--address=127.0.0.1:0", f"--tls_client_ca_file={self.ca.cert}")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--tls_client_ca_file", result.stderr)

    def test_mismatched_pair_at_start(self):
        result = self.run_attnd("--address=127.0.0.1:0", f"--tls_cert_file={self.other_cert}",
                                f"--tls_key_file={self.key}")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--tls_key_file", result.stderr)
        self.assertIn("is not the private key", result.stderr)
        self.assertNotIn("PRIVATE KEY", result.stderr)

    def test_non_loopback_plaintext_is_refused_before_binding(self):
        # The port is taken: had attnd tried to bind first, it would report
        # that instead of naming --insecure.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("0.0.0.0", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            for address in (f"0.0.0.0:{port}", f"[::]:{port}"):
                with self.subTest(address=address):
                    result = self.run_attnd(f"--address={address}")
                    self.assertNotEqual(result.returncode, 0)
                    self.assertIn("--insecure", result.stderr)
                    self.assertNotIn("could not listen", result.stderr)

    def test_insecure_allows_plaintext_on_a_wildcard_address_and_says_so(self):
        # In a network namespace of its own (no interface but a down
        # loopback), so the wildcard address reaches no real network.
        if subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                          check=False).returncode != 0:
            self.skipTest("unshare -rn (a user + network namespace) is not permitted here")
        log_path = os.path.join(self.tmp, "insecure.log")
        with AttndProcess(["--insecure", "--warmup_iterations=0"], log_path=log_path,
                          wrapper=["unshare", "-rn"], address="0.0.0.0:0") as server:
            self.assertGreater(server.port, 0)
        with open(log_path, encoding="utf-8") as f:
            self.assertIn("--insecure: plaintext", f.read())


if __name__ == "__main__":
    unittest.main()
