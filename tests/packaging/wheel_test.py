"""The Python package as users install it: `pip wheel ./client/python` offline
(--no-build-isolation, Debian's setuptools and wheel; stubs generated from
proto/ by protoc), the wheel installed into a fresh virtual environment
(--system-site-packages for Debian's grpcio and NumPy), and both clients --
attnserve.Client and attnserve.aio.Client -- calling a real attnd from it."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from checked_run import run
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client"))
from attnd_process import AttndProcess  # noqa: E402

SOURCE_DIR = os.environ["ATTN_SOURCE_DIR"]
PYTHON = "/usr/bin/python3"  # Debian's, which has pip, venv, setuptools and wheel

# Run inside the virtual environment: the installed package, not a checkout's.
CLIENT_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    import attnserve, attnserve.aio
    assert "site-packages" in attnserve.__file__, attnserve.__file__
    q = k = np.array([[[[1, 0], [0, 1]]]], dtype=np.float32)
    v = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
    with attnserve.Client(sys.argv[1]) as client:
        sync_out = client.attend("alibi", q=q, k=k, v=v, causal=True).out
        assert client.health()
    async def main():
        async with attnserve.aio.Client(sys.argv[1]) as client:
            out = (await client.attend("alibi", q=q, k=k, v=v, causal=True)).out
            assert await client.health()
            return out
    aio_out = asyncio.run(main())
    print(" ".join(repr(float(x)) for x in sync_out.ravel()))
    print(" ".join(repr(float(x)) for x in aio_out.ravel()))
""")




class WheelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="attn_wheel_")
        # A copy of the two folders the build reads, so that setuptools' build/
        # and egg-info land here and not in the checkout.
        source = os.path.join(cls.work, "src")
        shutil.copytree(os.path.join(SOURCE_DIR, "client", "python"),
                        os.path.join(source, "client", "python"),
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        shutil.copytree(os.path.join(SOURCE_DIR, "proto"), os.path.join(source, "proto"))
        wheels = os.path.join(cls.work, "wheels")
        run([PYTHON, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
             "-w", wheels, os.path.join(source, "client", "python")])
        names = os.listdir(wheels)
        if len(names) != 1:
            raise AssertionError(f"expected one wheel, got {names}")
        cls.wheel = os.path.join(wheels, names[0])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def test_wheel_holds_the_package_stubs_and_type_marker(self):
        self.assertRegex(os.path.basename(self.wheel), r"^attnserve-0\.1\.0-py3-none-any\.whl$")
        with zipfile.ZipFile(self.wheel) as wheel:
            names = set(wheel.namelist())
            metadata = wheel.read("attnserve-0.1.0.dist-info/METADATA").decode()
        for name in ("attnserve/__init__.py", "attnserve/client.py", "attnserve/aio.py",
                     "attnserve/py.typed", "attnserve/_health_pb2.py",
                     "attnserve/v1/attention_pb2.py", "attnserve/v1/attention_pb2_grpc.py"):
            self.assertIn(name, names)
        self.assertFalse([n for n in names if n.startswith("grpc/")], "must not shadow grpcio")
        for requirement in ("grpcio", "protobuf", "numpy"):
            self.assertIn(f"Requires-Dist: {requirement}", metadata)

    def test_installed_into_a_fresh_venv_both_clients_call_attnd(self):
        venv = os.path.join(self.work, "venv")
        run([PYTHON, "-m", "venv", "--system-site-packages", venv])
        python = os.path.join(venv, "bin", "python")
        run([python, "-m", "pip", "install", "--no-index", self.wheel])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with AttndProcess() as server:
            output = run([python, "-c", CLIENT_SCRIPT, server.address], env=env,
                         cwd=self.work).split("\n")
        sync_out = [float(x) for x in output[0].split()]
        aio_out = [float(x) for x in output[1].split()]
        self.assertEqual(sync_out[:2], [1.0, 2.0])  # row 0 sees key 0 only (causal)
        self.assertGreater(sync_out[2], 2.0)          # row 1 leans to key 1 (higher score)
        self.assertEqual(sync_out, aio_out)


if __name__ == "__main__":
    unittest.main()
