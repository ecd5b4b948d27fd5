"""Scale-out across hosts that loses no call: three attnd replicas, each in its
own network namespace (a test "host" with its own address), behind
(a) client-side load balancing: the attnserve Python package given only the
    target ipv4:A:50051,B:50051,C:50051, so that its defaults (round_robin,
    retries of UNAVAILABLE for the idempotent RPCs, client-side health
    checking, keepalive, a per-call deadline) are what is tested;
(b) HAProxy with deploy/haproxy/haproxy.cfg (backends from ATTND_1..3), the
    same package given only HAProxy's address.
Under a bounded load (tests/netns/load_driver.py, in a fourth, client
namespace), one replica is killed with SIGKILL and restarted, then all three
are restarted one by one (SIGTERM, wait for the exit, start, wait for
SERVING). The client must see zero failed calls, and with all three up each
replica serves at least 15 % of the calls (from each attnd's /metrics,
attnserve_requests_total).

The network: namespaces <prefix>c (client: a bridge, 10.231.0.254/24) and
<prefix>h1..h3 (10.231.0.1..3/24, a veth pair each onto the bridge). The
addresses exist only inside these namespaces, so parallel runs (each with its
own pid in the prefix) do not collide, and nothing is configured in the root
namespace. Everything is deleted at the end, on failure too; a run killed
before that is cleaned up by the next run (its pid is gone).

Needs root (ip netns); skipped with a message otherwise. Run by CTest (label
netns) with ATTN_PYTHON, PYTHONPATH=<build>/python, ATTND_PATH and
ATTN_SOURCE_DIR."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE_DIR = os.environ.get(
    "ATTN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
HAPROXY_CONFIG = os.path.join(SOURCE_DIR, "deploy", "haproxy", "haproxy.cfg")
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_driver.py")
PREFIX_BASE = "attnso"
SUBNET = "10.231.0"
PORT = 50051
METRICS_PORT = 9464
# As the deployments (Compose, Kubernetes): long enough for HAProxy's check to take a
# lame duck out, about 1.25 s plus two check durations (deploy/haproxy/haproxy.cfg); with
# 3 s a loaded run once sent a call into a replica's drain (CANCELLED). Client-side health
# checking needs milliseconds.
LAME_DUCK_S = 5
GRACE_S = 10
WAIT_S = 60.0
MIN_SHARE = 0.15
LOAD_THREADS = 4
# Calls the share measurement spans (every replica's requests_total delta).
SHARE_CALLS = 600


def run(*command, check=True):
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(name):
    """Kills what runs in namespace `name` (only processes this test started
    there, by pid) and deletes it."""
    pids = run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    run("ip", "netns", "del", name, check=False)


def clean_stale_namespaces():
    """Namespaces of earlier runs whose process is gone (killed by a timeout)."""
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        match = re.match(rf"({PREFIX_BASE}(\d+)[a-z]\d?)\b", line)
        if match and not pid_alive(int(match.group(2))):
            delete_namespace(match.group(1))


class Lab:
    """The four namespaces and the bridge between them."""

    def __init__(self):
        self.prefix = f"{PREFIX_BASE}{os.getpid()}"
        self.client_ns = f"{self.prefix}c"
        self.host_ns = [f"{self.prefix}h{i}" for i in (1, 2, 3)]
        self.addresses = [f"{SUBNET}.{i}" for i in (1, 2, 3)]
        self.created = []

    def create(self):
        for name in [self.client_ns, *self.host_ns]:
            run("ip", "netns", "add", name)
            self.created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        c = self.client_ns
        run("ip", "-n", c, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", c, "addr", "add", f"{SUBNET}.254/24", "dev", "br0")
        run("ip", "-n", c, "link", "set", "br0", "up")
        for i, (host, address) in enumerate(zip(self.host_ns, self.addresses), start=1):
            run("ip", "-n", c, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", host)
            run("ip", "-n", c, "link", "set", f"v{i}", "master", "br0", "up")
            run("ip", "-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", host, "link", "set", "eth0", "up")

    def destroy(self):
        for name in reversed(self.created):
            delete_namespace(name)
        self.created = []

    def exec_prefix(self, namespace):
        return ["ip", "netns", "exec", namespace]

    def scrape(self, address):
        """attnd's /metrics at address:METRICS_PORT, fetched from the client namespace."""
        code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                f"'http://{address}:{METRICS_PORT}/metrics', timeout=10).read().decode())")
        return subprocess.run([*self.exec_prefix(self.client_ns), sys.executable, "-c", code],
                              capture_output=True, text=True, check=True, timeout=60).stdout


class Replica:
    """One attnd in a host namespace, on <address>:50051 (metrics :9464)."""

    def __init__(self, lab, index, work):
        self.lab = lab
        self.index = index
        self.namespace = lab.host_ns[index]
        self.address = lab.addresses[index]
        self.work = work
        self.process = None
        self.log = None
        self.starts = 0

    def start(self):
        self.starts += 1
        port_file = os.path.join(self.work, f"attnd{self.index + 1}.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        self.log = open(os.path.join(self.work, f"attnd{self.index + 1}.{self.starts}.log"), "wb")
        command = [*self.lab.exec_prefix(self.namespace), os.environ["ATTND_PATH"],
                   f"--address={self.address}:{PORT}", f"--port_file={port_file}",
                   f"--metrics_address={self.address}:{METRICS_PORT}",
                   # Plaintext off loopback must be asked for; the test network is private.
                   "--insecure", "--threads=1",
                   "--batch_threads=1", "--warmup_iterations=1", f"--lame_duck_s={LAME_DUCK_S}",
                   f"--shutdown_grace_s={GRACE_S}"]
        # `ip netns exec` execs attnd: the pid is attnd's.
        self.process = subprocess.Popen(command, stderr=self.log, stdout=self.log)
        deadline = time.monotonic() + WAIT_S
        # The port file is written once attnd reports SERVING.
        while not self._ready(port_file):
            if self.process.poll() is not None:
                raise AssertionError(f"attnd {self.index + 1} exited {self.process.returncode} at "
                                     f"start-up; log {self.log.name}")
            if time.monotonic() > deadline:
                raise AssertionError(f"attnd {self.index + 1} not SERVING in {WAIT_S} s")
            time.sleep(0.02)

    @staticmethod
    def _ready(port_file):
        try:
            with open(port_file, encoding="ascii") as f:
                return f.read().endswith("\n")
        except OSError:
            return False

    def terminate(self):
        """SIGTERM; waits for the exit (lame duck + drain), which must be 0."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=LAME_DUCK_S + GRACE_S + WAIT_S)
        self.log.close()
        if code != 0:
            raise AssertionError(f"attnd {self.index + 1} exited {code} after SIGTERM")

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=WAIT_S)
        self.log.close()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.log is not None:
            self.log.close()

    def served(self):
        """Calls this attnd answered OK (any RPC), from its /metrics."""
        total = 0.0
        for line in self.lab.scrape(self.address).splitlines():
            if line.startswith("attnserve_requests_total{") and 'code="OK"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


class LoadRun:
    """load_driver.py in the client namespace, against `target`."""

    def __init__(self, lab, target, work, name):
        self.progress = os.path.join(work, f"{name}.progress")
        self.stop_file = os.path.join(work, f"{name}.stop")
        self.out = os.path.join(work, f"{name}.json")
        self.log = open(os.path.join(work, f"{name}.log"), "wb")
        self.process = subprocess.Popen(
            [*lab.exec_prefix(lab.client_ns), sys.executable, DRIVER, f"--target={target}",
             f"--threads={LOAD_THREADS}", "--max_calls=400000", "--max_seconds=400",
             f"--progress={self.progress}", f"--stop={self.stop_file}", f"--out={self.out}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def counts(self):
        try:
            with open(self.progress, encoding="ascii") as f:
                ok, failed = f.read().split()
            return int(ok), int(failed)
        except (OSError, ValueError):
            return 0, 0

    def wait_calls(self, more, what):
        """Waits until `more` further calls have succeeded."""
        target = self.counts()[0] + more
        deadline = time.monotonic() + WAIT_S
        while self.counts()[0] < target:
            if self.process.poll() is not None:
                raise AssertionError(f"the load ended early ({what}); log {self.log.name}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {more} calls within {WAIT_S} s ({what}): "
                                     f"{self.counts()}")
            time.sleep(0.05)

    def finish(self):
        with open(self.stop_file, "w", encoding="ascii"):
            pass
        self.process.wait(timeout=WAIT_S)
        self.log.close()
        with open(self.out, encoding="utf-8") as f:
            return json.load(f)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@unittest.skipUnless(os.geteuid() == 0,
                     "needs root to create network namespaces (ip netns); CI runs as root")
class ScaleOutTest(unittest.TestCase):

    def setUp(self):
        if shutil.which("ip") is None:
            self.fail("the `ip` command (iproute2) is missing; scripts/install-deps.sh installs it")
        clean_stale_namespaces()
        self.started = time.monotonic()
        self.work = tempfile.mkdtemp(prefix="attnd_netns_")
        self.lab = Lab()
        self.addCleanup(shutil.rmtree, self.work, ignore_errors=True)
        self.addCleanup(self.lab.destroy)
        self.lab.create()
        self.replicas = [Replica(self.lab, i, self.work) for i in range(3)]
        for replica in self.replicas:
            self.addCleanup(replica.stop)
        for replica in self.replicas:
            replica.start()

    def tearDown(self):
        print(f"{self.id()}: {time.monotonic() - self.started:.1f} s", file=sys.stderr)
        if not getattr(self, "passed", False):
            for name in sorted(os.listdir(self.work)):
                if name.endswith(".log"):
                    with open(os.path.join(self.work, name), errors="replace") as f:
                        print(f"--- {name}\n{f.read()[-3000:]}", file=sys.stderr)

    def assert_shares(self, load, phase):
        """Every replica serves >= MIN_SHARE of the next SHARE_CALLS calls."""
        before = [r.served() for r in self.replicas]
        load.wait_calls(SHARE_CALLS, phase)
        after = [r.served() for r in self.replicas]
        deltas = [b - a for a, b in zip(before, after)]
        total = sum(deltas)
        shares = [d / total for d in deltas]
        print(f"{phase}: per-replica calls {deltas} shares "
              f"{[round(s, 3) for s in shares]}", file=sys.stderr)
        for i, share in enumerate(shares):
            self.assertGreaterEqual(share, MIN_SHARE, f"{phase}: replica {i + 1} served "
                                    f"{deltas[i]:.0f} of {total:.0f} calls")

    def wait_all_serve(self, load, phase):
        """Until each replica has served calls again (clients reconnect with
        backoff after a restart)."""
        deadline = time.monotonic() + WAIT_S
        before = [r.served() for r in self.replicas]
        while True:
            load.wait_calls(50, phase)
            now = [r.served() for r in self.replicas]
            if all(b > a for a, b in zip(before, now)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{phase}: not every replica serves again: {before} {now}")

    def run_faults(self, target, name):
        load = LoadRun(self.lab, target, self.work, name)
        self.addCleanup(load.kill)
        load.wait_calls(100, "start")
        self.assert_shares(load, f"{name}, all up")

        # SIGKILL of one replica under load, then it comes back.
        victim = self.replicas[1]
        victim.kill()
        load.wait_calls(200, "one replica killed")
        victim.start()
        load.wait_calls(100, "killed replica restarted")

        # Rolling restart: one at a time, SERVING before the next.
        for replica in self.replicas:
            replica.terminate()
            replica.start()
            load.wait_calls(50, f"replica {replica.index + 1} restarted")

        self.wait_all_serve(load, f"{name}, after the rolling restart")
        self.assert_shares(load, f"{name}, all up after the restarts")
        summary = load.finish()
        print(f"{name}: {summary['ok']} calls OK, {summary['failed']} failed in "
              f"{summary['seconds']} s", file=sys.stderr)
        self.assertEqual(summary["failed"], 0, json.dumps(summary["failures"], indent=1))
        self.assertGreater(summary["ok"], 2 * SHARE_CALLS)
        self.passed = True

    def test_client_side_round_robin_loses_no_call(self):
        target = "ipv4:" + ",".join(f"{a}:{PORT}" for a in self.lab.addresses)
        self.run_faults(target, "round_robin")

    def test_haproxy_loses_no_call(self):
        if shutil.which("haproxy") is None:
            self.fail("haproxy is missing; scripts/install-deps.sh installs it")
        env = dict(os.environ)
        for i, address in enumerate(self.lab.addresses, start=1):
            env[f"ATTND_{i}"] = f"{address}:{PORT}"
        env.update(ATTN_LB_ADDRESS="127.0.0.1", ATTN_LB_PORT=str(PORT),
                   ATTN_LB_STATS_ADDRESS="127.0.0.1", ATTN_LB_STATS_PORT="8404")
        log = open(os.path.join(self.work, "haproxy.log"), "wb")
        self.addCleanup(log.close)
        haproxy = subprocess.Popen(
            [*self.lab.exec_prefix(self.lab.client_ns), "haproxy", "-db", "-f", HAPROXY_CONFIG],
            env=env, stdout=log, stderr=subprocess.STDOUT)

        def stop_haproxy():
            if haproxy.poll() is None:
                haproxy.kill()
                haproxy.wait()
        self.addCleanup(stop_haproxy)
        self.run_faults(f"127.0.0.1:{PORT}", "haproxy")


if __name__ == "__main__":
    unittest.main()
