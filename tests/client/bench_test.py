"""`attn bench` (<build>/bin/attn bench) against the real attnd: ghz's JSON
report fields and their consistency, errors in the distributions, -z and
--rps bounds, usage errors (exit 2), and every deploy/ghz config accepted
by attnd and keyed as ghz reads it.

Run by CTest with ATTN_PYTHON and the environment ATTN_PATH, ATTND_PATH,
ATTN_SOURCE_DIR."""

import base64
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import ATTN, AttnCliTestCase  # pylint: disable=wrong-import-position

SOURCE_DIR = os.environ.get(
    "ATTN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

ATTEND = "attnserve.v1.AttentionService/Attend"
GOOD = {"method": {"alibi": {}}, "causal": True,
        "q": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]},
        "k": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]},
        "v": {"shape": [1, 1, 2, 2], "data": [1, 2, 3, 4]}}
# `none` takes k: the server rejects this one with INVALID_ARGUMENT.
BAD = {"method": {"none": {}}, "q": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]}}

# The keys of ghz's config file (bojand/ghz runner/config.go, Config's json
# tags): a deploy/ghz config may use only these.
GHZ_CONFIG_KEYS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "skipFirst", "cname",
    "authority", "insecure", "total", "async", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "connections", "rps", "duration", "duration-stop",
    "max-duration", "timeout", "data", "data-file", "binary-file", "metadata", "metadata-file",
    "stream-interval", "output", "format", "connect-timeout", "keepalive", "cpus",
    "import-paths", "name", "tags", "reflect-metadata", "debug", "host", "enable-compression",
    "load-schedule", "load-start", "load-end", "load-step", "load-step-duration",
    "load-max-duration"}
PERCENTAGES = [10, 25, 50, 75, 90, 95, 99]


class BenchTest(AttnCliTestCase):

    TMP_PREFIX = "attn_bench_test_"

    def bench(self, *args, address=None, timeout=60, insecure=True):
        """attn bench ARGS HOST; address="" leaves HOST out. attnd serves
        plaintext here, and attn bench uses TLS unless --insecure (as ghz)."""
        host = [self.server.address if address is None else address] if address != "" else []
        plaintext = ["--insecure"] if insecure else []
        return subprocess.run([ATTN, "bench", *plaintext, *args, *host],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=SOURCE_DIR)

    def bench_json(self, *args):
        result = self.bench("-O", "json", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)

    def assert_consistent(self, report):
        """The relations every ghz report holds."""
        count = report["count"]
        self.assertEqual(sum(report["statusCodeDistribution"].values()), count)
        ok = report["statusCodeDistribution"].get("OK", 0)
        self.assertEqual(sum(report["errorDistribution"].values()), count - ok)
        self.assertEqual(len(report["details"]), count)
        self.assertGreater(report["total"], 0)
        self.assertAlmostEqual(report["rps"], count / (report["total"] / 1e9), delta=1e-6 * count)
        if ok == 0:
            return
        self.assertLessEqual(report["fastest"], report["slowest"])
        latencies = [d["latency"] for d in report["details"] if d["status"] == "OK"]
        self.assertEqual(report["fastest"], min(latencies))
        self.assertEqual(report["slowest"], max(latencies))
        distribution = report["latencyDistribution"]
        self.assertEqual([p["percentage"] for p in distribution], PERCENTAGES)
        values = [p["latency"] for p in distribution]
        self.assertEqual(values, sorted(values))
        self.assertGreaterEqual(values[0], report["fastest"])
        self.assertLessEqual(values[-1], report["slowest"])
        histogram = report["histogram"]
        self.assertEqual(len(histogram), 11)
        self.assertEqual(sum(b["count"] for b in histogram), ok)
        self.assertAlmostEqual(sum(b["frequency"] for b in histogram), 1.0, places=9)
        marks = [b["mark"] for b in histogram]
        self.assertEqual(marks, sorted(marks))
        self.assertAlmostEqual(marks[0], report["fastest"] / 1e9, places=12)
        self.assertAlmostEqual(marks[-1], report["slowest"] / 1e9, places=12)

    def test_json_report_has_ghz_fields_with_consistent_values(self):
        report = self.bench_json("--call", ATTEND, "-d", json.dumps(GOOD), "-n", "300", "-c", "8")
        for field in ("date", "endReason", "options", "count", "total", "average", "fastest",
                      "slowest", "rps", "errorDistribution", "statusCodeDistribution",
                      "latencyDistribution", "histogram", "details"):
            self.assertIn(field, report)
        self.assertEqual(report["count"], 300)
        self.assertEqual(report["endReason"], "normal")
        self.assertEqual(report["statusCodeDistribution"], {"OK": 300})
        self.assertEqual(report["errorDistribution"], {})
        self.assertLessEqual(report["fastest"], report["average"])
        self.assertLessEqual(report["average"], report["slowest"])
        self.assertRegex(report["date"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        options = report["options"]
        self.assertEqual(options["call"], ATTEND)
        self.assertEqual(options["host"], self.server.address)
        self.assertEqual((options["total"], options["concurrency"], options["connections"]),
                         (300, 8, 1))
        self.assertEqual(options["data"], GOOD)
        self.assert_consistent(report)

    def test_any_grpc_target_with_the_default_service_config(self):
        # ipv4:<nothing listens>,<attnd>: the clients' round_robin skips the
        # dead address (gRPC's own pick_first would try it first).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        result = self.bench("-O", "json", "--call", ATTEND, "-d", json.dumps(GOOD), "-n", "40",
                            "-c", "4", address=f"ipv4:{dead},{self.server.address}")
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout)
        self.assertEqual(report["statusCodeDistribution"], {"OK": 40})

    def test_failed_calls_are_counted_by_grpc_go_code_name_and_message(self):
        # An array of requests is sent in turn: half of the calls fail.
        report = self.bench_json("--call", ATTEND, "-d", json.dumps([GOOD, BAD]),
                                 "-n", "20", "-c", "2", "--connections", "2")
        self.assertEqual(report["statusCodeDistribution"], {"OK": 10, "InvalidArgument": 10})
        (error, count), = report["errorDistribution"].items()
        self.assertEqual(count, 10)
        self.assertTrue(error.startswith("rpc error: code = InvalidArgument desc = k"), error)
        self.assert_consistent(report)

    def test_summary_has_ghz_sections(self):
        result = self.bench("--call", ATTEND, "-d", json.dumps([GOOD, BAD]), "-n", "20", "-c", "2",
                            "--name", "summary-test")
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        for line in ("Summary:", "  Name:\t\tsummary-test", "  Count:\t20", "  Requests/sec:\t",
                     "Response time histogram:", "Latency distribution:",
                     "Status code distribution:", "Error distribution:"):
            self.assertIn(line, out)
        self.assertRegex(out, r"\[OK\]\s+10 responses")
        self.assertRegex(out, r"\[InvalidArgument\]\s+10 responses")
        self.assertRegex(out, r"\[10\]\s+rpc error: code = InvalidArgument")
        histogram = out.split("Response time histogram:\n")[1].split("\n\n")[0].splitlines()
        self.assertEqual(len(histogram), 11)
        self.assertEqual(sum(int(line.split("[")[1].split("]")[0]) for line in histogram), 10)

    def test_duration_stops_the_run_in_time(self):
        started = time.monotonic()
        report = self.bench_json("--call", ATTEND, "-d", json.dumps(GOOD), "-z", "1s", "-c", "4")
        elapsed = time.monotonic() - started
        self.assertEqual(report["endReason"], "timeout")
        self.assertEqual(report["total"], 1_000_000_000)
        self.assertGreater(report["count"], 0)
        # The process also starts, connects and prints (slowly on a loaded CI
        # machine, slower still in a sanitizer build: 5.9 s under ASan at load
        # 14); the run itself is 1 s, and one that ignored -z would not end
        # before bench()'s 60 s timeout.
        self.assertLess(elapsed, 20.0)
        self.assert_consistent(report)

    def test_sigint_ends_the_run_with_a_cancel_report(self):
        process = subprocess.Popen(
            [ATTN, "bench", "--insecure", "--call", ATTEND, "-d", json.dumps(GOOD), "-z", "60s",
             "-c", "4",
             "-O", "json", self.server.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=SOURCE_DIR)
        # SIGINT only once attn has its handler (bit 2 of SigCgt in /proc): a
        # slow start (a sanitizer build, a loaded machine) would otherwise
        # die of the signal's default action. Then a second of calls.
        deadline = time.monotonic() + 60
        while not self.catches_sigint(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
        self.assertEqual(process.returncode, 0, stderr)
        report = json.loads(stdout)
        self.assertEqual(report["endReason"], "cancel")
        self.assertGreater(report["count"], 0)
        self.assertLess(report["total"], 10_000_000_000)
        self.assertNotIn("Canceled", report["statusCodeDistribution"])
        self.assert_consistent(report)

    @staticmethod
    def catches_sigint(pid):
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)) != 0
        return False

    def test_rps_paces_call_starts(self):
        # Call i starts no earlier than i/rps: 40 calls at 100/s take >= 0.39 s.
        report = self.bench_json("--call", ATTEND, "-d", json.dumps(GOOD), "-n", "40",
                                 "--rps", "100", "-c", "4")
        self.assertEqual(report["count"], 40)
        self.assertGreaterEqual(report["total"], 390_000_000)
        self.assertLessEqual(report["rps"], 103)
        starts = sorted(d["timestamp"] for d in report["details"])
        self.assertEqual(len(starts), 40)
        self.assert_consistent(report)

    def test_output_file_and_pretty_format(self):
        path = os.path.join(self.tmp.name, "report.json")
        result = self.bench("--call", "attnserve.v1.AttentionService.ListMethods", "-n", "5",
                            "-c", "1", "-O", "pretty", "-o", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn('\n  "count": 5,', text)
        self.assertEqual(json.loads(text)["statusCodeDistribution"], {"OK": 5})

    def test_usage_errors_are_exit_2_with_a_message(self):
        good = ["--call", ATTEND, "-d", json.dumps(GOOD)]
        cases = [
            (["-n", "5"], "--call: required"),
            ([*good, "--authority", "a"], "--authority: a ghz flag that attn bench does not support"),
            ([*good, "-b"], "-b: a ghz flag that attn bench does not support"),
            ([*good, "--cacert", "ca.pem"], "--insecure: plaintext, but --cacert asks for TLS"),
            ([*good, "--skipTLS"], "--insecure: plaintext, but --skipTLS asks for TLS"),
            ([*good, "--insecure=false", "--cert", "c.pem"], "--cert, --key: give both"),
            ([*good, "--insecure=false", "--cacert", "/nonexistent/ca.pem"],
             "--cacert: cannot open /nonexistent/ca.pem"),
            ([*good, "-m", "[]"], "--metadata: expected a JSON object of strings"),
            ([*good, "-m", '{"a": 1}'], 'the value of "a" must be a string'),
            ([*good, "-m", '{"a b": "c"}'], 'key "a b" is not a gRPC metadata key'),
            ([*good, "-m", '{"grpc-timeout": "1S"}'], 'key "grpc-timeout" is reserved'),
            ([*good, "-m", '{"x": "line\\nbreak"}'], 'the value of "x" must be printable ASCII'),
            ([*good, "-M", "/nonexistent/md.json"], "--metadata-file: cannot open"),
            ([*good, "--frobnicate"], "unknown flag --frobnicate"),
            ([*good, "-c", "0"], "--concurrency: must be in [1,"),
            ([*good, "-c", "2", "--connections", "3"], "--connections: must be <= --concurrency"),
            ([*good, "-n", "many"], "--total: expected an integer"),
            ([*good, "-z", "soon"], "--duration: expected a duration"),
            ([*good, "-O", "html"], "a ghz format that attn bench does not support"),
            (["--call", "attnserve.v1.AttentionService/AttendStream"], "streaming method"),
            (["--call", "attnserve.v1.AttentionService/Nope"], "has no method \"Nope\""),
            (["--call", ATTEND, "-d", '{"q": {"shap": [1]}}'], "data as attnserve.v1.AttendRequest"),
            (["--call", ATTEND, "-d", "{not json"], "--data: not valid JSON"),
            (["--call", ATTEND, "-D", "/nonexistent/data.json"], "cannot open /nonexistent"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                result = self.bench(*args)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(message, result.stderr)
                self.assertEqual(result.stdout, "")
        result = self.bench("--call", ATTEND, address="")
        self.assertEqual(result.returncode, 2)
        self.assertIn("HOST: required", result.stderr)

    def test_metadata_rides_along_and_is_reported_without_the_token(self):
        metadata = {"X-Request-Tag": "bench", "authorization": "Bearer not-checked-here"}
        report = self.bench_json("--call", ATTEND, "-d", json.dumps(GOOD), "-n", "4", "-c", "2",
                                 "-m", json.dumps(metadata))
        self.assertEqual(report["statusCodeDistribution"], {"OK": 4})
        self.assertEqual(report["options"]["metadata"],
                         {"x-request-tag": "bench", "authorization": "<redacted>"})
        self.assertTrue(report["options"]["insecure"])

    def test_tls_is_the_default_as_in_ghz(self):
        # attnd is plaintext here: without --insecure the TLS handshake fails,
        # and the message says how to ask for plaintext.
        result = self.bench("--call", ATTEND, "-d", json.dumps(GOOD), "-n", "2",
                            "--connect-timeout", "1s", insecure=False)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("UNAVAILABLE: no connection to", result.stderr)
        self.assertIn("over TLS (the default, as in ghz; --insecure for a plaintext server",
                      result.stderr)

    def test_no_server_is_exit_1_unavailable(self):
        result = self.bench("--call", ATTEND, "-d", json.dumps(GOOD), "-n", "5",
                            "--connect-timeout", "300ms", address="127.0.0.1:1")
        self.assertEqual(result.returncode, 1)
        self.assertIn("UNAVAILABLE: no connection to 127.0.0.1:1", result.stderr)

    def test_16_bit_tensors_and_variant_fields_reach_attnd(self):
        # float16 raw_data (base64 in proto-JSON, as ghz sends bytes) for q,
        # bfloat16 for k and v: 1.0 = 0x3c00 / 0x3f80, 0.0 = 0x0000, little-endian.
        def raw(words):
            return base64.b64encode(b"".join(w.to_bytes(2, "little") for w in words)).decode()
        request = {"method": {"none": {}}, "causal": True, "window": 1, "num_kv_heads": 1,
                   "kv_lengths": [2], "softcap": 5.0, "raw_output": True,
                   "output_dtype": "DTYPE_FLOAT16",
                   "q": {"shape": [1, 2, 2, 2], "dtype": "DTYPE_FLOAT16",
                         "raw_data": raw([0x3C00, 0, 0, 0x3C00] * 2)},
                   "k": {"shape": [1, 1, 2, 2], "dtype": "DTYPE_BFLOAT16",
                         "raw_data": raw([0x3F80, 0, 0, 0x3F80])},
                   "v": {"shape": [1, 1, 2, 2], "dtype": "DTYPE_BFLOAT16",
                         "raw_data": raw([0x3F80, 0, 0, 0x3F80])}}
        report = self.bench_json("--call", ATTEND, "-d", json.dumps(request), "-n", "4")
        self.assertEqual(report["statusCodeDistribution"], {"OK": 4}, report["errorDistribution"])
        # The fields are read, not dropped: each invalid value is refused by name.
        for change, field in (({"window": 0}, "window"), ({"num_kv_heads": 3}, "num_kv_heads"),
                              ({"kv_lengths": [3]}, "kv_lengths"), ({"softcap": -1}, "softcap"),
                              ({"raw_output": False}, "output_dtype")):
            with self.subTest(field=field):
                report = self.bench_json("--call", ATTEND, "-d", json.dumps(dict(request, **change)),
                                         "-n", "2")
                self.assertEqual(report["statusCodeDistribution"], {"InvalidArgument": 2})
                self.assertIn(field, next(iter(report["errorDistribution"])))

    def test_every_deploy_ghz_config_is_ghz_keyed_and_accepted_by_attnd(self):
        configs = sorted(glob.glob(os.path.join(SOURCE_DIR, "deploy", "ghz", "*.json")))
        calls = set()
        for path in configs:
            with self.subTest(config=os.path.basename(path)):
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
                self.assertLessEqual(set(config), GHZ_CONFIG_KEYS)
                for key in ("proto", "call", "host", "insecure", "data-file"):
                    self.assertIn(key, config)
                self.assertTrue(os.path.isfile(os.path.join(SOURCE_DIR, config["proto"])))
                with open(os.path.join(SOURCE_DIR, config["data-file"]), encoding="utf-8") as f:
                    data = json.load(f)
                method = next(iter(data.get("method", {"-": None})))
                calls.add((config["call"].rsplit(".", 1)[1], method))
                # The config's own host is a fixed port; the server's comes last.
                report = self.bench_json("--config", os.path.relpath(path, SOURCE_DIR),
                                         "-n", "5", "-c", "2")
                self.assertEqual(report["statusCodeDistribution"], {"OK": 5},
                                 report["errorDistribution"])
        methods = {"none", "sinusoidal", "learned", "rope", "transformer_xl", "shaw", "alibi",
                   "da_transformer"}
        self.assertEqual({m for rpc, m in calls if rpc == "Attend"}, methods)
        self.assertEqual({m for rpc, m in calls if rpc == "Encode"}, methods - {"none"})
        self.assertIn(("ListMethods", "-"), calls)
        self.assertIn(("Check", "-"), calls)


if __name__ == "__main__":
    unittest.main()
