"""attnd's /metrics as Prometheus itself sees it.

PromtoolTest: `promtool check metrics` (Debian's prometheus package) reports
nothing on attnd's /metrics after traffic of every outcome, and the counters
in the text are exactly the calls made.

PrometheusScrapeTest: a real Prometheus server on 127.0.0.1 (a picked free
port, a temporary TSDB) scrapes attnd with the configuration from
deploy/prometheus/prometheus.yml (its attnd target, rule paths and intervals
swapped for the test's, so the deploy rules load too), and the series read
back through /api/v1/query hold the numbers of calls this test made.

Both run attnd and Prometheus on loopback only, wait at most tens of seconds
for anything, and kill both at the end. Run by CTest with ATTN_PYTHON,
PYTHONPATH=<build>/python, ATTND_PATH, PROMETHEUS_PATH, PROMTOOL_PATH and
ATTN_SOURCE_DIR; pass the test class to run on the command line."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import yaml

from attnserve import AttnError, Client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

SOURCE_DIR = os.environ.get(
    "ATTN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROMETHEUS = os.environ.get("PROMETHEUS_PATH", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("PROMTOOL_PATH", "/usr/bin/promtool")
DEPLOY_CONFIG = os.path.join(SOURCE_DIR, "deploy", "prometheus", "prometheus.yml")
WAIT_S = 30.0
SEED = 4242

OK_CALLS = 7          # Attend, method none, status OK
INVALID_CALLS = 3     # Attend, method none, INVALID_ARGUMENT (v missing)
NOT_FOUND_CALLS = 2   # Attend, method shaw, NOT_FOUND (a ref the server does not hold)
ENCODE_CALLS = 4      # Encode, method alibi, OK

# The families the issue names (histograms appear as _bucket/_sum/_count).
EXPECTED_FAMILIES = [
    "attnserve_requests_total", "attnserve_request_duration_seconds",
    "attnserve_queue_duration_seconds", "attnserve_compute_duration_seconds",
    "attnserve_batch_size", "attnserve_batches_total", "attnserve_queue_depth",
    "attnserve_inflight_requests", "attnserve_build_info",
]


def send_traffic(client):
    """The calls every test counts on: OK_CALLS, INVALID_CALLS, NOT_FOUND_CALLS
    Attends and ENCODE_CALLS Encodes."""
    rng = np.random.default_rng(SEED)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    for _ in range(OK_CALLS):
        client.attend("none", q=q, k=k, v=v)
    for _ in range(INVALID_CALLS):
        try:
            client.attend("none", q=q, k=k)
        except AttnError as error:
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        else:
            raise AssertionError("an Attend without v succeeded")
    for _ in range(NOT_FOUND_CALLS):
        try:
            client.attend("shaw", q=q, k=k, v=v, max_relative_position=1, rel_k="no/such",
                          rel_v="no/such")
        except AttnError as error:
            assert error.code == grpc.StatusCode.NOT_FOUND, error
        else:
            raise AssertionError("a ref to nothing succeeded")
    for _ in range(ENCODE_CALLS):
        client.encode("alibi", sq=3, sk=5, num_heads=2)


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def derive_config(metrics_port):
    """deploy/prometheus/prometheus.yml with attnd's picked metrics port as the
    only target of the attnd job (the other jobs dropped), its rule files by
    absolute path (so Prometheus loads the deploy rules) and every interval at
    1 s."""
    with open(DEPLOY_CONFIG, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "attnd"]
    if len(jobs) != 1 or len(jobs[0]["static_configs"]) != 1:
        raise AssertionError(f"{DEPLOY_CONFIG}: expected one attnd job with one static_config")
    config["scrape_configs"] = jobs
    jobs[0]["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    config["rule_files"] = [os.path.join(os.path.dirname(DEPLOY_CONFIG), rule)
                            for rule in config.get("rule_files", [])]
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    jobs[0]["scrape_interval"] = jobs[0]["scrape_timeout"] = "1s"
    return yaml.safe_dump(config)


class AttndTestCase(unittest.TestCase):
    """An attnd with its metrics listener on a picked port, and a client."""

    def setUp(self):
        self.attnd = AttndProcess()
        self.addCleanup(self.attnd.stop)
        self.assertGreater(self.attnd.metrics_port, 0)
        self.client = Client(self.attnd.address, timeout=30)
        self.addCleanup(self.client.close)
        self.metrics_url = f"http://127.0.0.1:{self.attnd.metrics_port}/metrics"


class PromtoolTest(AttndTestCase):

    def test_promtool_check_metrics_reports_nothing_and_counters_match(self):
        send_traffic(self.client)
        status, text = http_get(self.metrics_url)
        self.assertEqual(status, 200)
        for family in EXPECTED_FAMILIES:
            self.assertIn(f"# TYPE {family} ", text)
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                               text=True, timeout=WAIT_S, check=False)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertEqual(check.stdout.strip() + check.stderr.strip(), "")

        def value(name, **labels):
            return sample_value(text, name, labels)

        self.assertEqual(value("attnserve_requests_total", rpc="Attend", method="none",
                               code="OK"), OK_CALLS)
        self.assertEqual(value("attnserve_requests_total", rpc="Attend", method="none",
                               code="INVALID_ARGUMENT"), INVALID_CALLS)
        self.assertEqual(value("attnserve_requests_total", rpc="Attend", method="shaw",
                               code="NOT_FOUND"), NOT_FOUND_CALLS)
        self.assertEqual(value("attnserve_requests_total", rpc="Encode", method="alibi",
                               code="OK"), ENCODE_CALLS)
        self.assertEqual(value("attnserve_request_duration_seconds_count", rpc="Encode",
                               method="alibi"), ENCODE_CALLS)


class PrometheusScrapeTest(AttndTestCase):

    def start_prometheus(self, tmp):
        """Starts Prometheus on a free loopback port with the derived config;
        returns its base URL once /-/ready answers."""
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(derive_config(self.attnd.metrics_port))
        checked = subprocess.run([PROMTOOL, "check", "config", config], capture_output=True,
                                 text=True, timeout=WAIT_S, check=False)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        for attempt in range(3):  # the picked port may be taken before Prometheus binds it
            port = free_port()
            log = open(os.path.join(tmp, f"prometheus{attempt}.log"), "w+", encoding="utf-8")
            self.addCleanup(log.close)
            process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={os.path.join(tmp, f'data{attempt}')}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
            self.addCleanup(self.stop, process)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if http_get(base + "/-/ready", timeout=1.0)[0] == 200:
                        return base
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.1)
            log.seek(0)
            output = log.read()
            if process.poll() is None:
                self.fail(f"Prometheus not ready within {WAIT_S} s:\n{output}")
            if "address already in use" not in output:
                self.fail(f"Prometheus exited with {process.returncode}:\n{output}")
        self.fail("Prometheus could not bind a free port in 3 attempts")
        return None

    @staticmethod
    def stop(process):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def query(self, base, expression):
        """The value of the single sample `expression` returns now, or None."""
        url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        status, body = http_get(url)
        self.assertEqual(status, 200)
        answer = json.loads(body)
        self.assertEqual(answer["status"], "success", body)
        result = answer["data"]["result"]
        if not result:
            return None
        self.assertEqual(len(result), 1, body)
        return float(result[0]["value"][1])

    def wait_for(self, base, expression, expected):
        """Polls until `expression` equals `expected` (bounded); fails with the
        last value seen otherwise."""
        deadline = time.monotonic() + WAIT_S
        last = None
        while time.monotonic() < deadline:
            last = self.query(base, expression)
            if last == expected:
                return
            time.sleep(0.25)
        self.fail(f"{expression} = {last} after {WAIT_S} s, expected {expected}")

    def test_prometheus_scrapes_the_calls_made(self):
        tmp = tempfile.mkdtemp(prefix="prometheus_e2e_")
        self.addCleanup(shutil.rmtree, tmp, True)
        base = self.start_prometheus(tmp)
        send_traffic(self.client)

        self.wait_for(base, 'up{job="attnd",service="attnserve"}', 1)
        self.wait_for(base, 'attnserve_requests_total{rpc="Attend",method="none",code="OK"}',
                      OK_CALLS)
        self.wait_for(base, 'attnserve_requests_total{rpc="Attend",method="none",'
                            'code="INVALID_ARGUMENT"}', INVALID_CALLS)
        self.wait_for(base, 'attnserve_requests_total{rpc="Attend",method="shaw",'
                            'code="NOT_FOUND"}', NOT_FOUND_CALLS)
        self.wait_for(base, 'sum(attnserve_requests_total{rpc="Encode"})', ENCODE_CALLS)
        self.wait_for(base, 'sum(attnserve_request_duration_seconds_count{rpc="Attend"})',
                      OK_CALLS + INVALID_CALLS + NOT_FOUND_CALLS)
        # A PromQL function over a histogram works: the median of 4 Encodes is
        # a positive duration below the largest bucket.
        median = self.query(base, 'histogram_quantile(0.5, sum by (le) '
                                  '(attnserve_request_duration_seconds_bucket{rpc="Encode"}))')
        self.assertIsNotNone(median)
        self.assertGreater(median, 0)
        self.assertLess(median, 10)


if __name__ == "__main__":
    unittest.main()
