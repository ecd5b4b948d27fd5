"""Every client against a real attnd with TLS, mutual TLS and tokens: the
Python package (attnserve.Client and attnserve.aio.Client), `attn` and
`attn bench` succeed with the right CA, certificate and token, and fail with
the right status without them (UNAVAILABLE for a failed handshake,
UNAUTHENTICATED for a missing or wrong token). The C++ SDK has the same
checks in client_security_test.cc.

Certificates are made by the openssl CLI (tests/e2e/pki.py) in a temporary
directory: a CA that signs attnd's certificate (localhost, 127.0.0.1) and a
client certificate, and a second CA with a client certificate of its own.
Two servers: `tls` (TLS + --auth_tokens_file) and `mtls` (TLS +
--tls_client_ca_file, no tokens).

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python, ATTN_PATH and
ATTND_PATH."""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import unittest

import grpc
import numpy as np

import attnserve
import attnserve.aio

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from attnd_process import ATTN, AttndProcess  # pylint: disable=wrong-import-position
from pki import Pki  # pylint: disable=wrong-import-position

TOKEN = "client-test-token-5d2e9f"
# Long enough for a call refused by the handshake to be retried by the
# default service config (about 1.5 s of backoff) and still fail in time on
# a busy machine.
TIMEOUT_S = 15
Q = np.array([[[[1, 0], [0, 1]]]], dtype=np.float32)
ATTEND_JSON = json.dumps({"method": {"alibi": {}}, "causal": True,
                          "q": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]},
                          "k": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]},
                          "v": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]}})
LIST_METHODS = "attnserve.v1.AttentionService/ListMethods"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


class SecurityTestCase(unittest.TestCase):
    """The certificates, the token files and the two servers, once per class."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="attn_security_test_")
        tmp = cls._tmp.name
        ca = Pki(tmp).ca("ca")
        server_cert, server_key = ca.issue("server", serial=100)
        cls.client_cert, cls.client_key = ca.issue("client", serial=7, client=True)
        other = Pki(tmp).ca("other")
        cls.rogue_cert, cls.rogue_key = other.issue("rogue", serial=9, client=True)
        cls.ca, cls.other_ca = ca.cert, other.cert
        tokens = os.path.join(tmp, "tokens")
        cls.token_file = os.path.join(tmp, "token")
        cls.wrong_token_file = os.path.join(tmp, "wrong_token")
        for path, text in ((tokens, f"{TOKEN}\n"), (cls.token_file, f"  {TOKEN}\n"),
                           (cls.wrong_token_file, "not-the-token\n")):
            with open(path, "w", encoding="ascii") as f:
                f.write(text)
        tls = [f"--tls_cert_file={server_cert}", f"--tls_key_file={server_key}",
               "--warmup_iterations=0"]
        cls.tls = AttndProcess([*tls, f"--auth_tokens_file={tokens}"])
        try:
            cls.mtls = AttndProcess([*tls, f"--tls_client_ca_file={ca.cert}"])
        except Exception:
            cls.tls.stop()
            raise
        # No token from the test's own environment unless a test sets one.
        cls._saved_env = os.environ.pop("ATTN_TOKEN", None)

    @classmethod
    def tearDownClass(cls):
        if cls._saved_env is not None:
            os.environ["ATTN_TOKEN"] = cls._saved_env
        cls.mtls.stop()
        cls.tls.stop()
        cls._tmp.cleanup()

    def setUp(self):
        os.environ.pop("ATTN_TOKEN", None)


class PythonClientTest(SecurityTestCase):
    """attnserve.Client and attnserve.aio.Client: each case runs both."""

    def refused(self, server, **options):
        """call() for a handshake that must fail: without the default retries,
        which would only try the same handshake again for about 1.5 s."""
        return self.call(server, service_config={}, **options)

    def call(self, server, **options):
        """ListMethods and an Attend through both clients; the status code
        (OK: grpc.StatusCode.OK) each ended with, after checking the values."""
        codes = []
        with attnserve.Client(server.address, timeout=TIMEOUT_S, **options) as client:
            codes.append(self._sync_call(client))

        async def run():
            async with attnserve.aio.Client(server.address, timeout=TIMEOUT_S,
                                            **options) as client:
                try:
                    methods = await client.list_methods()
                    result = await client.attend("alibi", q=Q, k=Q, v=Q, causal=True)
                except attnserve.AttnError as error:
                    return error.code
                self.assertGreaterEqual(len(methods.methods), 8)
                self.assertEqual(result.out.shape, (1, 1, 2, 2))
                return grpc.StatusCode.OK
        codes.append(asyncio.run(run()))
        return codes

    def _sync_call(self, client):
        try:
            methods = client.list_methods()
            result = client.attend("alibi", q=Q, k=Q, v=Q, causal=True)
        except attnserve.AttnError as error:
            return error.code
        self.assertGreaterEqual(len(methods.methods), 8)
        self.assertEqual(result.out.shape, (1, 1, 2, 2))
        return grpc.StatusCode.OK

    def test_tls_with_the_ca_and_the_token(self):
        self.assertEqual(self.call(self.tls, ca_file=self.ca, token=TOKEN), [grpc.StatusCode.OK] * 2)
        self.assertEqual(self.call(self.tls, ca_file=self.ca, token_file=self.token_file),
                         [grpc.StatusCode.OK] * 2)
        os.environ["ATTN_TOKEN"] = TOKEN
        self.assertEqual(self.call(self.tls, ca_file=self.ca), [grpc.StatusCode.OK] * 2)

    def test_the_server_name_override(self):
        self.assertEqual(self.call(self.tls, ca_file=self.ca, token=TOKEN, server_name="localhost"),
                         [grpc.StatusCode.OK] * 2)
        self.assertEqual(self.refused(self.tls, ca_file=self.ca, token=TOKEN,
                                   server_name="elsewhere.example"), [UNAVAILABLE] * 2)

    def test_a_missing_or_wrong_token_is_unauthenticated(self):
        self.assertEqual(self.call(self.tls, ca_file=self.ca), [UNAUTHENTICATED] * 2)
        self.assertEqual(self.call(self.tls, ca_file=self.ca, token_file=self.wrong_token_file),
                         [UNAUTHENTICATED] * 2)
        os.environ["ATTN_TOKEN"] = "not-the-token"
        self.assertEqual(self.call(self.tls, ca_file=self.ca), [UNAUTHENTICATED] * 2)

    def test_health_needs_no_token(self):
        with attnserve.Client(self.tls.address, timeout=TIMEOUT_S, ca_file=self.ca) as client:
            self.assertTrue(client.health())

        async def run():
            async with attnserve.aio.Client(self.tls.address, timeout=TIMEOUT_S,
                                            ca_file=self.ca) as client:
                return await client.health()
        self.assertTrue(asyncio.run(run()))

    def test_plaintext_or_another_ca_fails_the_handshake(self):
        self.assertEqual(self.refused(self.tls, token=TOKEN), [UNAVAILABLE] * 2)
        self.assertEqual(self.refused(self.tls, ca_file=self.other_ca, token=TOKEN),
                         [UNAVAILABLE] * 2)

    def test_mutual_tls_needs_a_certificate_from_the_servers_ca(self):
        self.assertEqual(self.call(self.mtls, ca_file=self.ca, cert_file=self.client_cert,
                                   key_file=self.client_key), [grpc.StatusCode.OK] * 2)
        self.assertEqual(self.refused(self.mtls, ca_file=self.ca), [UNAVAILABLE] * 2)
        self.assertEqual(self.refused(self.mtls, ca_file=self.ca, cert_file=self.rogue_cert,
                                   key_file=self.rogue_key), [UNAVAILABLE] * 2)

    def test_bad_options_are_refused_before_any_call(self):
        cases = [
            (dict(cert_file=self.client_cert), ValueError, "cert_file, key_file: give both"),
            (dict(ca_file="/nonexistent/ca.pem"), FileNotFoundError,
             "ca_file: cannot open /nonexistent/ca.pem"),
            (dict(ca_file=self.token_file), ValueError, "holds no PEM CERTIFICATE block"),
            (dict(token="two words"), ValueError, "token: the token must be visible ASCII"),
            (dict(token="a", token_file=self.token_file), ValueError,
             "token, token_file: give at most one"),
            (dict(server_name="a b"), ValueError, "server_name: expected a host name"),
        ]
        for options, error, message in cases:
            for client_class in (attnserve.Client, attnserve.aio.Client):
                with self.subTest(options=options, client=client_class.__module__):
                    with self.assertRaises(error) as raised:
                        client_class(self.tls.address, **options)
                    self.assertIn(message, str(raised.exception))
                    self.assertNotIn("two words", str(raised.exception))


class AttnCliTest(SecurityTestCase):
    """`attn`: --tls --cacert --cert --key --cname --token --token_file, ATTN_TOKEN."""

    def attn(self, server, *flags, env=None):
        return subprocess.run([ATTN, f"--address={server.address}", f"--timeout={TIMEOUT_S}",
                               *flags, "methods"], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, **(env or {})})

    def assert_ok(self, result):
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertGreaterEqual(len(json.loads(result.stdout)["methods"]), 8)

    def assert_fails(self, result, code):
        self.assertEqual(result.returncode, 1, result.stderr)
        # gRPC logs the failed handshake on stderr before attn's own line.
        self.assertIn(f"\nattn: {code}: ", "\n" + result.stderr)

    def test_tls_and_tokens(self):
        self.assert_ok(self.attn(self.tls, f"--cacert={self.ca}", f"--token={TOKEN}"))
        self.assert_ok(self.attn(self.tls, f"--cacert={self.ca}", f"--token_file={self.token_file}",
                                 "--cname=localhost"))
        self.assert_ok(self.attn(self.tls, f"--cacert={self.ca}", env={"ATTN_TOKEN": TOKEN}))
        self.assert_fails(self.attn(self.tls, f"--cacert={self.ca}"), "UNAUTHENTICATED")
        self.assert_fails(self.attn(self.tls, f"--cacert={self.ca}",
                                    f"--token_file={self.wrong_token_file}"), "UNAUTHENTICATED")
        self.assert_fails(self.attn(self.tls, f"--token={TOKEN}"), "UNAVAILABLE")
        self.assert_fails(self.attn(self.tls, f"--cacert={self.other_ca}", f"--token={TOKEN}"),
                          "UNAVAILABLE")
        self.assert_fails(self.attn(self.tls, f"--cacert={self.ca}", f"--token={TOKEN}",
                                    "--cname=elsewhere.example"), "UNAVAILABLE")
        # --tls verifies with the system's roots, which do not hold the test CA.
        self.assert_fails(self.attn(self.tls, "--tls", f"--token={TOKEN}"), "UNAVAILABLE")

    def test_decode_with_tls_and_a_token(self):
        q = {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]}
        session = "\n".join(json.dumps(m) for m in (
            {"open": {"method": {"alibi": {}}, "batch": 1, "num_heads": 1, "head_dim": 2,
                      "max_len": 2}},
            {"step": {"q": q, "k": q, "v": q}}))
        def decode(*flags):
            return subprocess.run([ATTN, f"--address={self.tls.address}",
                                   f"--timeout={TIMEOUT_S}", *flags, "decode"], input=session,
                                  capture_output=True, text=True, timeout=60, check=False)
        result = decode(f"--cacert={self.ca}", f"--token={TOKEN}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout.splitlines()[-1])["length"], 2)
        self.assert_fails(decode(f"--cacert={self.ca}"), "UNAUTHENTICATED")

    def test_mutual_tls(self):
        self.assert_ok(self.attn(self.mtls, f"--cacert={self.ca}", f"--cert={self.client_cert}",
                                 f"--key={self.client_key}"))
        self.assert_fails(self.attn(self.mtls, f"--cacert={self.ca}"), "UNAVAILABLE")
        self.assert_fails(self.attn(self.mtls, f"--cacert={self.ca}", f"--cert={self.rogue_cert}",
                                    f"--key={self.rogue_key}"), "UNAVAILABLE")

    def test_bad_flags_are_usage_errors_naming_the_flag(self):
        cases = [
            ([f"--cert={self.client_cert}"], "--cert, --key: give both"),
            (["--cacert=/nonexistent/ca.pem"], "--cacert: cannot open /nonexistent/ca.pem"),
            ([f"--cacert={self.token_file}"], "--cacert: "),
            (["--token=a", f"--token_file={self.token_file}"], "--token, --token_file: give at most"),
            (["--token_file=/nonexistent/token"], "--token_file: cannot open"),
            (["--cacert="], "--cacert must not be empty"),
        ]
        for flags, message in cases:
            with self.subTest(flags=flags):
                result = self.attn(self.tls, *flags)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(message, result.stderr)
        result = self.attn(self.tls, env={"ATTN_TOKEN": "bad token"})
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("ATTN_TOKEN: the token must be visible ASCII", result.stderr)
        self.assertNotIn("bad token", result.stderr)


class HelpTextTest(unittest.TestCase):
    """attn --help and attn bench --help list the security flags they take."""

    def help_text(self, *command):
        result = subprocess.run([ATTN, *command, "--help"], capture_output=True, text=True,
                                timeout=30, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_attn_help(self):
        text = self.help_text()
        for flag in ("--tls", "--cacert=PATH", "--cert=PATH --key=PATH", "--cname=NAME",
                     "--server_name", "--token=TOKEN", "--token_file=PATH", "ATTN_TOKEN"):
            self.assertIn(flag, text)

    def test_attn_bench_help(self):
        text = self.help_text("bench")
        for flag in ("--insecure", "--cacert=PATH", "--cert=PATH", "--key=PATH", "--cname=NAME",
                     "--skipTLS", "-m, --metadata=JSON", "-M, --metadata-file=PATH", "ATTN_TOKEN",
                     "uses TLS unless --insecure"):
            self.assertIn(flag, text)
        self.assertNotIn("plaintext is the only transport", text)


class AttnBenchTest(SecurityTestCase):
    """`attn bench` with ghz's --cacert --cert --key --cname --skipTLS
    --insecure -m/-M, and ATTN_TOKEN."""

    def bench(self, server, *flags, env=None, calls=4, connect_timeout="10s"):
        return subprocess.run(
            [ATTN, "bench", "--call", LIST_METHODS, "-n", str(calls), "-c", "2", "-O", "json",
             "--connect-timeout", connect_timeout, *flags, server.address],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **(env or {})})

    def statuses(self, result):
        """The run's statusCodeDistribution (the run itself must have finished)."""
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)["statusCodeDistribution"]

    def assert_no_connection(self, result):
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("attn: UNAVAILABLE: no connection to", result.stderr)

    def test_tls_is_the_default_and_tokens_ride_in_metadata(self):
        bearer = json.dumps({"authorization": f"Bearer {TOKEN}"})
        self.assertEqual(self.statuses(self.bench(self.tls, "--cacert", self.ca, "-m", bearer)),
                         {"OK": 4})
        metadata_file = os.path.join(self._tmp.name, "metadata.json")
        with open(metadata_file, "w", encoding="ascii") as f:
            f.write(bearer)
        self.assertEqual(self.statuses(self.bench(self.tls, "--cacert", self.ca, "-M",
                                                  metadata_file, "--cname", "localhost")),
                         {"OK": 4})
        self.assertEqual(self.statuses(self.bench(self.tls, "--cacert", self.ca,
                                                  env={"ATTN_TOKEN": TOKEN})), {"OK": 4})
        # -m's authorization wins over ATTN_TOKEN.
        self.assertEqual(self.statuses(self.bench(self.tls, "--cacert", self.ca, "-m", bearer,
                                                  env={"ATTN_TOKEN": "not-the-token"})),
                         {"OK": 4})
        # Encrypted but unverified: no CA needed.
        self.assertEqual(self.statuses(self.bench(self.tls, "--skipTLS", "-m", bearer)),
                         {"OK": 4})

    def test_a_missing_or_wrong_token_is_counted_unauthenticated(self):
        self.assertEqual(self.statuses(self.bench(self.tls, "--cacert", self.ca)),
                         {"Unauthenticated": 4})
        result = self.bench(self.tls, "--cacert", self.ca, "-m",
                            json.dumps({"authorization": "Bearer not-the-token"}))
        self.assertEqual(self.statuses(result), {"Unauthenticated": 4})
        self.assertNotIn("not-the-token", result.stdout)

    def refused(self, server, *flags):
        """bench() for a handshake that must fail: a short wait for it."""
        return self.bench(server, *flags, connect_timeout="1s")

    def test_handshake_failures_are_no_connection(self):
        self.assert_no_connection(self.refused(self.tls, "--insecure"))
        self.assert_no_connection(self.refused(self.tls, "--cacert", self.other_ca))
        self.assert_no_connection(self.refused(self.tls, "--cacert", self.ca, "--cname",
                                               "elsewhere.example"))
        self.assert_no_connection(self.refused(self.tls))  # the system's roots

    def test_mutual_tls(self):
        self.assertEqual(self.statuses(self.bench(self.mtls, "--cacert", self.ca, "--cert",
                                                  self.client_cert, "--key", self.client_key)),
                         {"OK": 4})
        self.assertEqual(self.statuses(self.bench(self.mtls, "--skipTLS", "--cert",
                                                  self.client_cert, "--key", self.client_key)),
                         {"OK": 4})
        # Without a client certificate the server ends the handshake; gRPC
        # may see the connection up before it does, so the run either finds
        # no connection or counts every call Unavailable: never OK.
        for flags in (["--cacert", self.ca],
                      ["--cacert", self.ca, "--cert", self.rogue_cert, "--key", self.rogue_key]):
            with self.subTest(flags=flags):
                result = self.refused(self.mtls, *flags)
                if result.returncode == 0:
                    self.assertEqual(self.statuses(result), {"Unavailable": 4})
                else:
                    self.assert_no_connection(result)


if __name__ == "__main__":
    unittest.main()
