"""The container image, built and run as an operator would, with no Docker
engine: scripts/image.sh (what `make image` runs: buildah, on local
debian:12 bases made by scripts/base-images.sh when missing), then the image
run by podman (scripts/podman.sh: this machine's runtime settings) on the
host's network, on loopback ports picked free.

ImageMetadataTest: size <= 300,000,000 bytes, user 10001, both ports
exposed, SIGTERM as stop signal, a health check, the OCI labels, and the
default command (metrics on all interfaces, a stop budget inside podman's
10 s).
RunningImageTest: one container for the class: health SERVING by gRPC and
by `podman healthcheck run`, one Attend of every method (deploy/ghz's
requests) answered as the host's attnd answers it, /metrics counting them,
attnd running as uid 10001.
StopTest: `podman stop` (SIGTERM) drains and the container exits 0 before
podman's 10 s timeout; in the lame duck after SIGTERM the image's health check
fails (attn health: NOT_SERVING, exit 1).
BadConfigurationTest: a port already taken and an unreadable --tensor_dir
each stop the container with a non-zero status and a message naming the flag.

Needs root (podman's and buildah's system store). Run by CTest (label
`image`) with ATTN_PYTHON, PYTHONPATH=<build>/python, ATTND_PATH and
ATTN_SOURCE_DIR; the first build on a machine without base images or cached
layers takes minutes (README, "Tests")."""

import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import grpc
import numpy as np
from google.protobuf import json_format

from attnserve import Client, from_tensor
from attnserve.v1 import attention_pb2
from attnserve.v1 import attention_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client"))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position
from prometheus_e2e_test import free_port, http_get  # pylint: disable=wrong-import-position
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

SOURCE_DIR = os.path.abspath(os.environ.get("ATTN_SOURCE_DIR", os.path.join(HERE, "..", "..")))
PODMAN = [os.path.join(SOURCE_DIR, "scripts", "podman.sh")]
IMAGE = os.environ.get("ATTN_IMAGE", "localhost/attnserve:latest")
BUILD_LOG = os.path.join(os.environ.get("ATTN_BUILD_DIR", tempfile.gettempdir()),
                         "image_build.log")
BUILD_TIMEOUT_S = 3000
START_TIMEOUT_S = 60.0
# podman stop's default: SIGKILL after 10 s.
STOP_TIMEOUT_S = 10
MAX_IMAGE_BYTES = 300_000_000
UID = 10001
METHODS = ("none", "sinusoidal", "learned", "rope", "transformer_xl", "shaw", "alibi",
           "da_transformer")


def podman(*args, timeout=120, check=True):
    """`scripts/podman.sh args`; the CompletedProcess (text)."""
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}{result.stderr}")
    return result


def build_image():
    """Builds IMAGE with scripts/image.sh (once per run), its output in
    BUILD_LOG; prints its time."""
    start = time.monotonic()
    env = dict(os.environ, IMAGE=IMAGE)
    with open(BUILD_LOG, "w", encoding="utf-8") as log:
        result = subprocess.run([os.path.join(SOURCE_DIR, "scripts", "image.sh")], env=env,
                                stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
                                check=False)
    if result.returncode != 0:
        with open(BUILD_LOG, encoding="utf-8", errors="replace") as log:
            raise AssertionError(f"scripts/image.sh exited {result.returncode}:\n"
                                 f"{log.read()[-8000:]}")
    print(f"image_test: scripts/image.sh took {time.monotonic() - start:.0f} s "
          f"(log: {BUILD_LOG})", file=sys.stderr)


def setUpModule():  # pylint: disable=invalid-name
    if os.geteuid() != 0:
        raise RuntimeError("image_test needs root: podman and buildah use the system store")
    build_image()


class Container:
    """IMAGE run detached on the host network with `args` (attnd's flags, the
    image's CMD replaced) and `run_flags` before the image name; removed by
    remove(). The name carries the test's pid, so parallel runs never meet."""

    _count = 0

    def __init__(self, args, run_flags=()):
        Container._count += 1
        self.name = f"attnserve-image-test-{os.getpid()}-{Container._count}"
        podman("run", "-d", "--name", self.name, "--network", "host", *run_flags, IMAGE, *args)

    def state(self):
        """The container's inspect State (Status, ExitCode, Pid, ...)."""
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self):
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_exit(self, timeout):
        """The exit code once the container has exited (AssertionError after
        `timeout` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state["Status"] in ("exited", "stopped"):
                return state["ExitCode"]
            time.sleep(0.2)
        raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.logs()}")

    def remove(self):
        podman("rm", "-f", "-t", "0", self.name, check=False)


def serving_container(run_flags=(), extra_args=()):
    """A container of attnd on 127.0.0.1 (free gRPC and metrics ports), once
    its health says SERVING: (container, grpc port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    container = Container([f"--address=127.0.0.1:{port}",
                           f"--metrics_address=127.0.0.1:{metrics_port}", *extra_args],
                          run_flags=["-e", f"ATTND_HEALTH_ADDRESS=127.0.0.1:{port}", *run_flags])
    deadline = time.monotonic() + START_TIMEOUT_S
    with Client(f"127.0.0.1:{port}", timeout=2.0) as client:
        while True:
            try:
                if client.health():
                    return container, port, metrics_port
            except Exception:  # pylint: disable=broad-except
                pass  # not listening yet
            if container.state()["Status"] != "running" or time.monotonic() > deadline:
                logs = container.logs()
                container.remove()
                raise AssertionError(f"attnd in {IMAGE} not SERVING on 127.0.0.1:{port} within "
                                     f"{START_TIMEOUT_S} s:\n{logs}")
            time.sleep(0.2)


class ImageMetadataTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]

    def test_size_at_most_300_mb(self):
        size = self.image["Size"]
        print(f"image_test: {IMAGE} Size {size} bytes", file=sys.stderr)
        self.assertLessEqual(size, MAX_IMAGE_BYTES)

    def test_runs_as_fixed_non_root_uid(self):
        self.assertEqual(self.image["Config"]["User"], f"{UID}:{UID}")

    def test_exposes_grpc_and_metrics_ports(self):
        self.assertEqual(set(self.image["Config"]["ExposedPorts"]), {"50051/tcp", "9464/tcp"})

    def test_stop_signal_is_sigterm(self):
        self.assertEqual(self.image["Config"]["StopSignal"], "SIGTERM")

    def test_health_check_asks_the_grpc_health_service(self):
        # Kept only in the docker format; an OCI-format build drops it.
        check = self.image.get("Healthcheck") or self.image["Config"].get("Healthcheck")
        self.assertIsNotNone(check, "no HEALTHCHECK: built without --format docker?")
        command = " ".join(check["Test"])
        self.assertIn("attn", command)
        self.assertIn("health", command)

    def test_oci_labels(self):
        labels = self.image["Labels"]
        for key in ("title", "description", "version", "revision", "source", "licenses"):
            self.assertIn(f"org.opencontainers.image.{key}", labels)
        with open(os.path.join(SOURCE_DIR, "CMakeLists.txt"), encoding="utf-8") as f:
            version = re.search(r"project\(attnserve VERSION ([0-9.]+)", f.read()).group(1)
        self.assertEqual(labels["org.opencontainers.image.version"], version)
        head = subprocess.run(["git", "-C", SOURCE_DIR, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=False)
        if head.returncode == 0:
            self.assertEqual(labels["org.opencontainers.image.revision"], head.stdout.strip())

    def test_default_command_listens_on_all_interfaces_within_the_stop_timeout(self):
        self.assertEqual(self.image["Config"]["Entrypoint"], ["/usr/local/bin/attnd"])
        flags = dict((arg.lstrip("-") + "=").split("=")[:2] for arg in self.image["Config"]["Cmd"])
        self.assertEqual(flags["address"], "0.0.0.0:50051")
        self.assertIn("insecure", flags)  # plaintext on a non-loopback address
        self.assertEqual(flags["metrics_address"], "0.0.0.0:9464")
        # Lame duck + drain, plus a second for the drain's own start and end.
        self.assertLessEqual(float(flags["lame_duck_s"]) + float(flags["shutdown_grace_s"]) + 1,
                             STOP_TIMEOUT_S)


class RunningImageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.container, cls.port, cls.metrics_port = serving_container()
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.port}")
        cls.stub = attention_pb2_grpc.AttentionServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.container.remove()

    def test_health_serving_by_grpc(self):
        with Client(f"127.0.0.1:{self.port}", timeout=5.0) as client:
            self.assertTrue(client.health())

    def test_health_check_of_the_image_passes(self):
        result = podman("healthcheck", "run", self.container.name, check=False)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        health = json.loads(podman("inspect", "--format", "{{json .State.Health}}",
                                   self.container.name).stdout)
        self.assertEqual(health["Status"], "healthy", health)
        self.assertEqual(health["Log"][-1]["ExitCode"], 0, health)

    def test_every_attend_config_answers_as_the_host_attnd(self):
        # deploy/ghz/data/attend_<method>.json for each method, plus variant
        # configs (attend_fp16, attend_gqa_window, attend_yarn, ...).
        paths = sorted(glob.glob(os.path.join(SOURCE_DIR, "deploy", "ghz", "data",
                                              "attend_*.json")))
        requests = {}
        for path in paths:
            with open(path, encoding="utf-8") as f:
                requests[os.path.basename(path)] = json_format.Parse(
                    f.read(), attention_pb2.AttendRequest())
        self.assertEqual(sorted({r.method.WhichOneof("kind") for r in requests.values()}),
                         sorted(METHODS))
        with AttndProcess() as host:
            with grpc.insecure_channel(host.address) as host_channel:
                host_stub = attention_pb2_grpc.AttentionServiceStub(host_channel)
                for name, request in requests.items():
                    with self.subTest(config=name):
                        got = from_tensor(self.stub.Attend(request, timeout=30).out)
                        want = from_tensor(host_stub.Attend(request, timeout=30).out)
                        self.assertEqual(got.shape, want.shape)
                        self.assertTrue(np.all(np.isfinite(got)))
                        self.assertGreater(np.abs(got).max(), 0.0)
                        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def test_metrics_count_a_call(self):
        labels = {"rpc": "Attend", "method": "alibi", "code": "OK"}
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        status, before = http_get(url)
        self.assertEqual(status, 200)
        with open(os.path.join(SOURCE_DIR, "deploy", "ghz", "data", "attend_alibi.json"),
                  encoding="utf-8") as f:
            request = json_format.Parse(f.read(), attention_pb2.AttendRequest())
        self.stub.Attend(request, timeout=30)
        status, after = http_get(url)
        self.assertEqual(status, 200)
        count_before = sample_value(before, "attnserve_requests_total", labels) or 0.0
        self.assertEqual(sample_value(after, "attnserve_requests_total", labels),
                         count_before + 1)

    def test_attnd_runs_as_uid_10001(self):
        pid = self.container.state()["Pid"]
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            status = f.read()
        self.assertIn("attnd", re.search(r"^Name:\s*(\S+)", status, re.M).group(1))
        uids = re.search(r"^Uid:\s*(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s*(.*)$", status, re.M).group(1).split()
        self.assertEqual(uids, [str(UID)] * 4)
        self.assertEqual(gids, [str(UID)] * 4)


class StopTest(unittest.TestCase):

    def test_podman_stop_drains_and_exits_0_within_the_timeout(self):
        # The image's own stop budget (CMD's lame duck and grace).
        cmd = json.loads(podman("image", "inspect", "--format", "{{json .Config.Cmd}}",
                                IMAGE).stdout)
        budget = [arg for arg in cmd if arg.startswith(("--lame_duck_s", "--shutdown_grace_s"))]
        container, _, _ = serving_container(extra_args=budget)
        try:
            start = time.monotonic()
            podman("stop", "-t", str(STOP_TIMEOUT_S), container.name, timeout=60)
            elapsed = time.monotonic() - start
            exit_code = container.wait_exit(10)
            logs = container.logs()
            self.assertEqual(exit_code, 0, logs)
            self.assertLess(elapsed, STOP_TIMEOUT_S, logs)
            self.assertIn("attnd: signal 15", logs)
            self.assertIn("attnd: stopped", logs)
        finally:
            container.remove()

    def test_health_check_fails_in_the_lame_duck(self):
        # A long lame duck, so that the check surely runs inside it.
        container, port, _ = serving_container(extra_args=["--lame_duck_s=60"])
        try:
            podman("kill", "--signal", "TERM", container.name)
            deadline = time.monotonic() + START_TIMEOUT_S
            with Client(f"127.0.0.1:{port}", timeout=2.0) as client:
                while client.health():
                    self.assertLess(time.monotonic(), deadline, "still SERVING after SIGTERM")
                    time.sleep(0.1)
            result = podman("healthcheck", "run", container.name, check=False)
            self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)
            health = json.loads(podman("inspect", "--format", "{{json .State.Health}}",
                                       container.name).stdout)
            self.assertEqual(health["Log"][-1]["ExitCode"], 1, health)
            self.assertIn("NOT_SERVING", health["Log"][-1]["Output"], health)
        finally:
            container.remove()


class BadConfigurationTest(unittest.TestCase):
    """Each mistake ends the container at once with a non-zero status and a
    message that names the flag to fix."""

    def run_to_exit(self, args, run_flags=()):
        container = Container(args, run_flags)
        try:
            return container.wait_exit(START_TIMEOUT_S), container.logs()
        finally:
            container.remove()

    def test_grpc_port_already_taken(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, logs = self.run_to_exit([f"--address=127.0.0.1:{port}",
                                           f"--metrics_address=127.0.0.1:{free_port()}"])
        self.assertNotEqual(code, 0, logs)
        self.assertIn(f"--address=127.0.0.1:{port}: could not listen", logs)

    def test_metrics_port_already_taken(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, logs = self.run_to_exit([f"--address=127.0.0.1:{free_port()}",
                                           f"--metrics_address=127.0.0.1:{port}"])
        self.assertNotEqual(code, 0, logs)
        self.assertIn(f"--metrics_address=127.0.0.1:{port}: could not listen", logs)

    def test_unreadable_tensor_dir(self):
        # Owned by root, mode 0700: the image's user 10001 cannot list it.
        with tempfile.TemporaryDirectory(prefix="attn_image_tensors_") as tensors:
            os.chmod(tensors, 0o700)
            code, logs = self.run_to_exit(
                [f"--address=127.0.0.1:{free_port()}",
                 f"--metrics_address=127.0.0.1:{free_port()}", "--tensor_dir=/tensors"],
                run_flags=["-v", f"{tensors}:/tensors:ro"])
        self.assertNotEqual(code, 0, logs)
        self.assertIn("--tensor_dir: cannot list '/tensors': Permission denied", logs)


if __name__ == "__main__":
    unittest.main()
