"""attnd --auth_tokens_file end to end, with the real attnd and Python gRPC:
no token, a wrong one, a plain one and one given by its sha256 form; SIGHUP
reload (the new set applies within 1 s; a file that cannot be read or holds no
token keeps the previous set and logs one line); health stays open;
reflection needs a token, --reflection=false turns it off; rejected calls are
counted in attnserve_requests_total{code="UNAUTHENTICATED"}; no token text in
the log; tokens over TLS; start-up refusals.

Run by CTest with PYTHONPATH=<build>/python and ATTND_PATH."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import grpc

from attnserve.v1 import attention_pb2, attention_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess, attnd_path  # pylint: disable=wrong-import-position
from pki import Pki, read  # pylint: disable=wrong-import-position
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

RPC_TIMEOUT_S = 10
PLAIN = "plain-token-6f1c9a"
HASHED = "hashed-token-2b7e44"
ROTATED = "rotated-token-93d0aa"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.{}.ServerReflection/ServerReflectionInfo"
# ServerReflectionRequest{list_services: ""} (field 7, length-delimited).
LIST_SERVICES = b"\x3a\x00"


def identity(data):
    return data


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def bearer(token):
    return [("authorization", f"Bearer {token}")] if token is not None else None


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="attnd_auth_test_")
        cls.tokens = os.path.join(cls.tmp, "tokens")
        digest = hashlib.sha256(HASHED.encode()).hexdigest().upper()  # either case is valid
        write(cls.tokens, f"# tokens for the test\n\n  {PLAIN}  \nsha256:{digest}\n")
        cls.log_path = os.path.join(cls.tmp, "attnd.log")
        cls.server = AttndProcess([f"--auth_tokens_file={cls.tokens}", "--warmup_iterations=0"],
                                  log_path=cls.log_path)
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.stub = attention_pb2_grpc.AttentionServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        with open(cls.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        for token in (PLAIN, HASHED, ROTATED):
            assert token not in log, f"token text in attnd's log:\n{log}"

    def list_methods(self, token):
        return self.stub.ListMethods(attention_pb2.ListMethodsRequest(), metadata=bearer(token),
                                     timeout=RPC_TIMEOUT_S)

    def assert_unauthenticated(self, call):
        with self.assertRaises(grpc.RpcError) as refused:
            call()
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("authorization: Bearer", refused.exception.details())

    def unauthenticated_count(self):
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as response:
            text = response.read().decode()
        return sample_value(text, "attnserve_requests_total",
                            {"rpc": "ListMethods", "method": "", "code": "UNAUTHENTICATED"}) or 0

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def test_1_tokens(self):
        before = self.unauthenticated_count()
        self.assert_unauthenticated(lambda: self.list_methods(None))
        self.assert_unauthenticated(lambda: self.list_methods("not-a-token"))
        self.assert_unauthenticated(lambda: self.list_methods(PLAIN[:-1]))
        # The digest itself is not a token.
        self.assert_unauthenticated(
            lambda: self.list_methods(hashlib.sha256(HASHED.encode()).hexdigest()))
        self.assert_unauthenticated(lambda: self.stub.ListMethods(
            attention_pb2.ListMethodsRequest(), metadata=[("authorization", PLAIN)],
            timeout=RPC_TIMEOUT_S))  # no scheme
        self.assertGreater(len(self.list_methods(PLAIN).methods), 0)
        self.assertGreater(len(self.list_methods(HASHED).methods), 0)
        lower = self.stub.ListMethods(attention_pb2.ListMethodsRequest(),
                                      metadata=[("authorization", f"bearer {PLAIN}")],
                                      timeout=RPC_TIMEOUT_S)
        self.assertGreater(len(lower.methods), 0)
        self.assertEqual(self.unauthenticated_count(), before + 5)

    def test_2_health_is_open(self):
        check = self.channel.unary_unary(HEALTH_CHECK, request_serializer=identity,
                                         response_deserializer=identity)
        self.assertEqual(check(b"", timeout=RPC_TIMEOUT_S), b"\x08\x01")  # SERVING

    def test_3_reflection_needs_a_token(self):
        tried = 0
        for version in ("v1alpha", "v1"):
            info = self.channel.stream_stream(REFLECTION.format(version),
                                              request_serializer=identity,
                                              response_deserializer=identity)
            with self.subTest(version=version):
                self.assert_unauthenticated(
                    lambda info=info: list(info(iter([LIST_SERVICES]), timeout=RPC_TIMEOUT_S)))
                try:
                    answer = list(info(iter([LIST_SERVICES]), metadata=bearer(PLAIN),
                                       timeout=RPC_TIMEOUT_S))
                except grpc.RpcError as error:
                    # gRPC 1.51 serves v1alpha only; v1 is refused only for want of a token.
                    self.assertEqual(error.code(), grpc.StatusCode.UNIMPLEMENTED, version)
                    continue
                tried += 1
                self.assertIn(b"attnserve.v1.AttentionService", answer[0])
        self.assertGreaterEqual(tried, 1)

    def test_4_sighup_reload(self):
        write(self.tokens, f"{ROTATED}\n")
        lines_before = self.log().count("SIGHUP")
        start = time.monotonic()
        os.kill(self.server.pid, signal.SIGHUP)
        while self.log().count("SIGHUP") == lines_before:
            self.assertLess(time.monotonic() - start, 1.0, "SIGHUP not handled within 1 s")
            time.sleep(0.01)
        self.assertLess(time.monotonic() - start, 1.0)
        self.assertGreater(len(self.list_methods(ROTATED).methods), 0)
        self.assert_unauthenticated(lambda: self.list_methods(PLAIN))
        self.assert_unauthenticated(lambda: self.list_methods(HASHED))

        # Files that cannot serve keep the previous set, one log line each.
        bad_files = (("holds no token", "# nothing but a comment\n\n"),
                     ("line 2", f"{PLAIN}\nsha256:abc\n"))
        for what, text in bad_files:
            with self.subTest(bad=what):
                write(self.tokens, text)
                self.reload_and_expect_error(what)
        os.remove(self.tokens)
        self.reload_and_expect_error("cannot read")
        self.assertGreater(len(self.list_methods(ROTATED).methods), 0)

    def reload_and_expect_error(self, what):
        before = self.log()
        os.kill(self.server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.log() == before:
            self.assertLess(time.monotonic(), deadline, "no log line after SIGHUP")
            time.sleep(0.01)
        time.sleep(0.05)  # the whole line
        new = self.log()[len(before):]
        self.assertEqual(new.count("\n"), 1, new)
        self.assertIn("keeping the previous 1 tokens", new)
        self.assertIn(what, new)
        self.assertGreater(len(self.list_methods(ROTATED).methods), 0)
        self.assert_unauthenticated(lambda: self.list_methods(PLAIN))


class AuthOptionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="attnd_auth_options_")
        cls.tokens = os.path.join(cls.tmp, "tokens")
        write(cls.tokens, f"{PLAIN}\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_reflection_false_turns_reflection_off(self):
        with AttndProcess([f"--auth_tokens_file={self.tokens}", "--reflection=false",
                           "--warmup_iterations=0"]) as server, \
                grpc.insecure_channel(server.address) as channel:
            info = channel.stream_stream(REFLECTION.format("v1alpha"),
                                         request_serializer=identity,
                                         response_deserializer=identity)
            with self.assertRaises(grpc.RpcError) as off:
                list(info(iter([LIST_SERVICES]), metadata=bearer(PLAIN), timeout=RPC_TIMEOUT_S))
            self.assertEqual(off.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_tokens_over_mutual_tls(self):
        ca = Pki(self.tmp).ca("ca")
        cert, key = ca.issue("server", serial=11)
        client = ca.issue("client", serial=12, client=True)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(ca.cert), private_key=read(client[1]),
            certificate_chain=read(client[0]))
        with AttndProcess([f"--auth_tokens_file={self.tokens}", f"--tls_cert_file={cert}",
                           f"--tls_key_file={key}", f"--tls_client_ca_file={ca.cert}",
                           "--warmup_iterations=0"]) as server, \
                grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            stub = attention_pb2_grpc.AttentionServiceStub(channel)
            with self.assertRaises(grpc.RpcError) as refused:
                stub.ListMethods(attention_pb2.ListMethodsRequest(), timeout=RPC_TIMEOUT_S)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            ok = stub.ListMethods(attention_pb2.ListMethodsRequest(), metadata=bearer(PLAIN),
                                  timeout=RPC_TIMEOUT_S)
            self.assertGreater(len(ok.methods), 0)

    def run_attnd(self, *flags):
        return subprocess.run([attnd_path(), "--metrics_address=", "--warmup_iterations=0",
                               *flags], capture_output=True, text=True, timeout=30, check=False)

    def test_startup_refusals(self):
        bad = os.path.join(self.tmp, "bad_tokens")
        write(bad, f"{PLAIN}\nsha256:{'g' * 64}\n")
        empty = os.path.join(self.tmp, "empty_tokens")
        write(empty, "# none\n")
        cases = (
            ("missing file", ["--address=127.0.0.1:0",
                              f"--auth_tokens_file={self.tmp}/absent"], "cannot read"),
            ("bad sha256 line", ["--address=127.0.0.1:0", f"--auth_tokens_file={bad}"],
             "line 2"),
            ("no token", ["--address=127.0.0.1:0", f"--auth_tokens_file={empty}"],
             "holds no token"),
            ("plaintext off loopback", ["--address=0.0.0.0:0", "--insecure",
                                        f"--auth_tokens_file={self.tokens}"], "TLS"),
        )
        for name, flags, message in cases:
            with self.subTest(case=name):
                result = self.run_attnd(*flags)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("--auth_tokens_file", result.stderr)
                self.assertIn(message, result.stderr)
                self.assertNotIn(PLAIN, result.stderr)


if __name__ == "__main__":
    unittest.main()
