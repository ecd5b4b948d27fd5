"""The Debian package (`make package`, cmake/packaging.cmake): built with cpack
into a temporary directory, then checked as apt and systemd would see it --
its files, its conffile, a Depends that names the package of every shared
library attnd and attn load, a unit that `systemd-analyze verify` accepts
without a warning, and a stop timeout longer than the lame duck plus drain that
/etc/default/attnd configures."""

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

from checked_run import run

BUILD_DIR = os.environ["ATTN_BUILD_DIR"]
VERSION = os.environ["ATTN_VERSION"]




class DebTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="attn_deb_")
        run(["cpack", "-G", "DEB", "--config", os.path.join(BUILD_DIR, "CPackConfig.cmake"),
             "-B", cls.work])
        arch = run(["dpkg", "--print-architecture"]).strip()
        cls.deb = os.path.join(cls.work, f"attnserve_{VERSION}_{arch}.deb")
        cls.root = os.path.join(cls.work, "root")
        run(["dpkg-deb", "-x", cls.deb, cls.root])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def default_flags(self):
        """ATTND_FLAGS of the packaged /etc/default/attnd, as systemd expands
        $ATTND_FLAGS: the assignment's value, split at white space."""
        with open(os.path.join(self.root, "etc/default/attnd"), encoding="utf-8") as f:
            line = [l for l in f if l.startswith("ATTND_FLAGS=")][0]
        return shlex.split(shlex.split(line.split("=", 1)[1])[0])

    def field(self, name):
        return run(["dpkg-deb", "-f", self.deb, name]).strip()

    def test_control_fields(self):
        self.assertEqual(self.field("Package"), "attnserve")
        self.assertEqual(self.field("Version"), VERSION)
        self.assertEqual(self.field("Architecture"), run(["dpkg", "--print-architecture"]).strip())
        control = os.path.join(self.work, "control")
        run(["dpkg-deb", "-e", self.deb, control])
        with open(os.path.join(control, "conffiles"), encoding="utf-8") as f:
            self.assertEqual(f.read().split(), ["/etc/default/attnd"])

    def test_contents_are_the_binaries_unit_and_flags_file(self):
        listing = run(["dpkg-deb", "-c", self.deb])
        files = sorted(line.split()[-1] for line in listing.splitlines()
                       if not line.startswith("d"))
        self.assertEqual(files, ["./etc/default/attnd", "./usr/bin/attn", "./usr/bin/attnd",
                                 "./usr/lib/systemd/system/attnd.service"])

    def test_depends_names_the_package_of_every_linked_library(self):
        depends = {re.split(r"[ (]", d.strip())[0] for d in self.field("Depends").split(",")}
        for binary in ("attnd", "attn"):
            path = os.path.join(self.root, "usr", "bin", binary)
            # The binary's own DT_NEEDED entries (their dependencies are
            # their packages' business), located where the loader finds them.
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                                run(["readelf", "-d", path]))
            self.assertGreater(len(needed), 5)
            located = dict(re.findall(r"^\s*(\S+) => (/\S+)", run(["ldd", path]), re.M))
            for name in needed:
                library = os.path.realpath(located[name])
                owner = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True)
                owner = owner.stdout if owner.returncode == 0 else run(
                    ["dpkg", "-S", library.replace("/usr/lib/", "/lib/", 1)])  # usrmerge
                package = owner.split(":")[0]
                self.assertIn(package, depends, f"{binary} loads {library} from {package}")

    def unit_root(self):
        """The package's files plus what `systemd-analyze verify` resolves
        against (/bin/kill for ExecReload, the system's targets)."""
        root = os.path.join(self.work, "verify-root")
        if not os.path.isdir(root):
            shutil.copytree(self.root, root, symlinks=True)
            os.symlink("usr/bin", os.path.join(root, "bin"))
            os.symlink("usr/lib", os.path.join(root, "lib"))
            shutil.copy("/usr/bin/kill", os.path.join(root, "usr", "bin", "kill"))
            units = "/usr/lib/systemd/system"
            for name in os.listdir(units):
                if name.endswith(".target"):
                    shutil.copy(os.path.join(units, name),
                                os.path.join(root, "usr", "lib", "systemd", "system", name))
        return root

    def test_systemd_accepts_the_unit_without_a_warning(self):
        result = subprocess.run(["systemd-analyze", "verify", f"--root={self.unit_root()}",
                                 "attnd.service"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.strip(), "")

    def test_unit_is_hardened_and_stops_after_the_drain(self):
        with open(os.path.join(self.root, "usr/lib/systemd/system/attnd.service"),
                  encoding="utf-8") as f:
            unit = dict(line.strip().split("=", 1) for line in f
                        if "=" in line and not line.startswith("#"))
        for key, value in {"DynamicUser": "yes", "NoNewPrivileges": "yes",
                           "ProtectSystem": "strict", "Restart": "on-failure",
                           "EnvironmentFile": "-/etc/default/attnd",
                           "ExecReload": "/bin/kill -HUP $MAINPID"}.items():
            self.assertEqual(unit.get(key), value, key)
        self.assertEqual(unit["ExecStart"], "/usr/bin/attnd $ATTND_FLAGS")
        flags = dict(flag.lstrip("-").split("=", 1) for flag in self.default_flags())
        budget = float(flags["lame_duck_s"]) + float(flags["shutdown_grace_s"])
        self.assertGreater(float(unit["TimeoutStopSec"]), budget)

    def test_packaged_attnd_accepts_the_default_flags(self):
        flags = [flag for flag in self.default_flags()
                 if not flag.startswith(("--address=", "--metrics_address="))]
        port_file = os.path.join(self.work, "port")
        attnd = subprocess.Popen([os.path.join(self.root, "usr", "bin", "attnd"), *flags,
                                  "--address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                                  f"--port_file={port_file}"], stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(400):
                if os.path.exists(port_file) or attnd.poll() is not None:
                    break
                subprocess.run(["sleep", "0.05"], check=True)
            self.assertIsNone(attnd.poll(), attnd.stderr.read() if attnd.poll() is not None else "")
            self.assertTrue(os.path.exists(port_file))
        finally:
            attnd.terminate()
            attnd.communicate(timeout=60)


if __name__ == "__main__":
    unittest.main()
