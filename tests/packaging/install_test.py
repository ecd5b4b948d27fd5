"""The C++ SDK as another project uses it: `cmake --install` into a temporary
prefix, the prefix moved elsewhere (nothing may point back at it), then the
separate project tests/consumer built twice -- with find_package(attnserve) and
with pkg-config -- and run against the INSTALLED attnd on 127.0.0.1."""

import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from checked_run import run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client"))
from attnd_process import AttndProcess  # noqa: E402

BUILD_DIR = os.environ["ATTN_BUILD_DIR"]
SOURCE_DIR = os.environ["ATTN_SOURCE_DIR"]
# The build's own compile and link flags (empty in `make build`): an SDK built
# with -fsanitize=... links only into a program built with it too.
CXX_FLAGS = os.environ.get("ATTN_CONSUMER_CXX_FLAGS", "").strip()
LINKER_FLAGS = os.environ.get("ATTN_CONSUMER_LINKER_FLAGS", "").strip()


def expected_alibi_row():
    """The README's ALiBi call (H=1: slope 2^-8), causal: row 1 sees both keys."""
    s0 = 0.0 - 2.0 ** -8          # q1.k0 = 0, distance 1
    s1 = 1.0 / math.sqrt(2.0)     # q1.k1 = 1, scale 1/sqrt(2)
    p1 = 1.0 / (1.0 + math.exp(s0 - s1))
    return [1.0, 2.0, (1 - p1) * 1 + p1 * 3, (1 - p1) * 2 + p1 * 4]


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="attn_install_")
        staged = os.path.join(cls.work, "staged")
        run(["cmake", "--install", BUILD_DIR, "--prefix", staged])
        # Relocated after installing: the config and .pc files must find
        # everything relative to themselves.
        cls.prefix = os.path.join(cls.work, "moved", "prefix")
        os.makedirs(os.path.dirname(cls.prefix))
        shutil.move(staged, cls.prefix)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def find(self, *parts):
        for libdir in ("lib", "lib64", os.path.join("lib", "x86_64-linux-gnu")):
            path = os.path.join(self.prefix, libdir, *parts)
            if os.path.exists(path):
                return path
        self.fail(f"{os.path.join(*parts)} not installed under {self.prefix}")

    def test_installs_binaries_headers_libraries_and_configs(self):
        for path in ("bin/attnd", "bin/attn", "include/attnserve/client/client.h",
                     "include/attnserve/v1/attention.pb.h",
                     "include/attnserve/v1/attention.grpc.pb.h"):
            self.assertTrue(os.path.isfile(os.path.join(self.prefix, path)), path)
        for name in ("attnserveConfig.cmake", "attnserveConfigVersion.cmake",
                     "attnserveTargets.cmake"):
            config = self.find("cmake", "attnserve", name)
            with open(config, encoding="utf-8") as f:
                self.assertNotIn(self.work, f.read(), f"{name} names the staging prefix")
        with open(self.find("pkgconfig", "attnserve.pc"), encoding="utf-8") as f:
            self.assertNotIn(self.work, f.read())
        self.find("libattn_client.a")
        self.find("libattn_proto.a")

    def run_consumer(self, binary):
        # The installed attnd, not the build tree's.
        os.environ["ATTND_PATH"] = os.path.join(self.prefix, "bin", "attnd")
        server = AttndProcess()
        try:
            output = run([binary, server.address])
        finally:
            server.stop()
        lines = dict(line.split(" ", 1) for line in output.strip().splitlines())
        out = [float(x) for x in lines["out"].split()]
        for got, want in zip(out, expected_alibi_row(), strict=True):
            self.assertAlmostEqual(got, want, delta=1e-6)
        self.assertEqual(lines["methods"], "8")
        self.assertEqual(lines["health"], "SERVING")

    def test_find_package_consumer_builds_and_calls_attnd(self):
        build = os.path.join(self.work, "consumer-cmake")
        run(["cmake", "-S", os.path.join(SOURCE_DIR, "tests", "consumer"), "-B", build,
             "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={self.prefix}",
             f"-DCMAKE_CXX_FLAGS={CXX_FLAGS}", f"-DCMAKE_EXE_LINKER_FLAGS={LINKER_FLAGS}"])
        run(["cmake", "--build", build])
        self.run_consumer(os.path.join(build, "consumer"))

    def test_pkg_config_consumer_builds_and_calls_attnd(self):
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(self.find("pkgconfig",
                                                                          "attnserve.pc")))
        flags = run(["pkg-config", "--cflags", "--libs", "attnserve"], env=env).split()
        binary = os.path.join(self.work, "consumer-pc")
        run(["g++", "-std=c++17", "-O1", *CXX_FLAGS.split(), "-o", binary,
             os.path.join(SOURCE_DIR, "tests", "consumer", "consumer.cc"), *flags,
             *LINKER_FLAGS.split()])
        self.run_consumer(binary)


if __name__ == "__main__":
    unittest.main()
