"""The .deb installed as an operator would: `apt-get install ./attnserve*.deb`
into the clean debian:12-slim base of the image test (scripts/base-images.sh
makes it when missing; apt reaches Debian's mirror to pull the Depends), and
the installed /usr/bin/attnd then serves an Attend on the host's loopback.

Needs root (podman's system store). Run by CTest (label `image`) with
ATTN_PYTHON, PYTHONPATH=<build>/python, ATTN_BUILD_DIR, ATTN_SOURCE_DIR."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from checked_run import run

import numpy as np

import attnserve

BUILD_DIR = os.environ["ATTN_BUILD_DIR"]
SOURCE_DIR = os.environ["ATTN_SOURCE_DIR"]
PODMAN = os.path.join(SOURCE_DIR, "scripts", "podman.sh")
BASE = "docker.io/library/debian:12-slim"
INSTALL_TIMEOUT_S = 900


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




class DebInImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        run([os.path.join(SOURCE_DIR, "scripts", "base-images.sh")], timeout=1200)
        cls.work = tempfile.mkdtemp(prefix="attn_deb_image_")
        run(["cpack", "-G", "DEB", "--config", os.path.join(BUILD_DIR, "CPackConfig.cmake"),
             "-B", cls.work])
        debs = [n for n in os.listdir(cls.work) if n.endswith(".deb")]
        if len(debs) != 1:
            raise AssertionError(f"expected one .deb, got {debs}")
        cls.deb = os.path.join(cls.work, debs[0])
        cls.name = f"attn-deb-test-{os.getpid()}"

    @classmethod
    def tearDownClass(cls):
        subprocess.run([PODMAN, "rm", "-f", "-t", "0", cls.name], capture_output=True,
                       check=False)
        shutil.rmtree(cls.work, ignore_errors=True)

    def test_apt_installs_the_package_and_its_attnd_serves(self):
        port = free_port()
        # apt resolves Depends from the mirror; then the packaged binary runs
        # with the packaged flags file's stop budget.
        script = (
            "set -e; apt-get update -qq; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
            "/tmp/attnserve.deb >/dev/null; "
            "dpkg-query -W -f='${Status}\\n' attnserve; test -f /lib/systemd/system/attnd.service; "
            ". /etc/default/attnd; echo INSTALLED; "
            f"exec attnd $ATTND_FLAGS --address=127.0.0.1:{port} --metrics_address=")
        run([PODMAN, "run", "-d", "--name", self.name, "--network", "host",
             "-v", f"{self.deb}:/tmp/attnserve.deb:ro", BASE, "sh", "-c", script])
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        client = attnserve.Client(f"127.0.0.1:{port}")
        try:
            while True:
                state = run([PODMAN, "inspect", "-f", "{{.State.Running}}", self.name]).strip()
                logs = subprocess.run([PODMAN, "logs", self.name], capture_output=True,
                                      text=True, check=False)
                if state != "true":
                    self.fail(f"the container stopped:\n{logs.stdout}{logs.stderr}")
                if "INSTALLED" in logs.stdout:
                    try:
                        if client.health(timeout=2):
                            break
                    except attnserve.AttnError:
                        pass
                if time.monotonic() > deadline:
                    self.fail(f"attnd did not serve within {INSTALL_TIMEOUT_S} s:\n"
                              f"{logs.stdout}{logs.stderr}")
                time.sleep(1)
            self.assertIn("install ok installed", logs.stdout)
            q = k = np.array([[[[1, 0], [0, 1]]]], dtype=np.float32)
            v = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
            out = client.attend("alibi", q=q, k=k, v=v, causal=True).out
            np.testing.assert_array_equal(out[0, 0, 0], [1.0, 2.0])
            self.assertGreater(out[0, 0, 1, 0], 2.0)
        finally:
            client.close()
        stopped = subprocess.run([PODMAN, "stop", "-t", "60", self.name], capture_output=True,
                                 text=True, timeout=120, check=False)
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        code = run([PODMAN, "inspect", "-f", "{{.State.ExitCode}}", self.name]).strip()
        self.assertEqual(code, "0")


if __name__ == "__main__":
    unittest.main()
