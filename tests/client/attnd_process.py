"""The real attnd as a child process of a Python test (the Python twin of
tests/testing/server_process.h): 127.0.0.1 port 0, the bound port read back
from --port_file, SIGTERM then SIGKILL on stop."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


# The attn CLI under test (set by CTest).
ATTN = os.environ.get("ATTN_PATH", "")


def attnd_path():
    path = os.environ.get("ATTND_PATH")
    if not path:
        raise RuntimeError("ATTND_PATH is not set (CTest sets it to the attnd binary)")
    return path


class AttndProcess:
    """Starts attnd with `extra_flags`; .port, .address and .metrics_port once it
    serves. The metrics listener is on a picked port too (never the default
    9464, which parallel tests would fight over); --lame_duck_s=0 unless
    extra_flags say otherwise. wrapper: a command prefix (e.g. unshare);
    address: --address (default 127.0.0.1:0)."""

    def __init__(self, extra_flags=(), log_path=None, wrapper=(), address="127.0.0.1:0"):
        self._dir = tempfile.mkdtemp(prefix="attnd_pytest_")
        port_file = os.path.join(self._dir, "port")
        metrics_port_file = os.path.join(self._dir, "metrics_port")
        self.command = [*wrapper, attnd_path(), f"--address={address}", f"--port_file={port_file}",
                        "--metrics_address=127.0.0.1:0",
                        f"--metrics_port_file={metrics_port_file}",
                        # No lame duck unless extra_flags set one: tests stop at once.
                        "--lame_duck_s=0", *extra_flags]
        # attnd's log goes to `log_path` when given (else the test's stderr).
        self._log = open(log_path, "wb") if log_path else None  # pylint: disable=consider-using-with
        self._process = subprocess.Popen(self.command, stderr=self._log)
        self.pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT_S
        previous = None
        while True:
            port = self._read_port(port_file, previous)
            if isinstance(port, int):
                self.port = port
                self.address = f"127.0.0.1:{port}"
                # attnd writes the metrics port file first; 0 if disabled by extra_flags.
                metrics = self._read_port(metrics_port_file, None)
                self.metrics_port = metrics if isinstance(metrics, int) else 0
                return
            previous = port
            code = self._process.poll()
            if code is not None:
                self._close_log()
                shutil.rmtree(self._dir, ignore_errors=True)
                raise RuntimeError(f"attnd exited with status {code} before writing its port "
                                   f"file; command: {' '.join(self.command)}")
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                self._close_log()
                shutil.rmtree(self._dir, ignore_errors=True)
                raise RuntimeError(f"attnd did not write its port within {START_TIMEOUT_S} s; "
                                   f"command: {' '.join(self.command)}")
            time.sleep(0.01)

    @staticmethod
    def _read_port(path, previous):
        """The port (int) once completely written (newline-terminated, or the
        same text twice in a row); else the text read so far (str or None)."""
        try:
            with open(path, encoding="ascii") as f:
                text = f.read()
        except OSError:
            return None
        if text and (text.endswith("\n") or text == previous) and text.strip().isdigit():
            port = int(text.strip())
            if 0 < port < 65536:
                return port
        return text

    def running(self):
        return self._process.poll() is None

    def wait(self, timeout):
        """attnd's exit status once it exits (subprocess.TimeoutExpired after `timeout` s)."""
        return self._process.wait(timeout=timeout)

    def stop(self):
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close_log()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class AttnCliTestCase(unittest.TestCase):
    """A test case with one attnd for the whole class, a temp dir, and the attn
    binary from ATTN_PATH (checked once, before the server starts)."""

    TMP_PREFIX = "attn_test_"

    @classmethod
    def setUpClass(cls):
        if not ATTN or not os.access(ATTN, os.X_OK):
            raise RuntimeError(f"ATTN_PATH ({ATTN!r}) is not an executable attn binary")
        cls.server = AttndProcess()
        cls.tmp = tempfile.TemporaryDirectory(prefix=cls.TMP_PREFIX)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()
