"""Builds the attnserve wheel: the package in attnserve/ plus the gRPC stubs,
generated from the repository's proto/ at build time (the same protoc and
grpc_python_plugin as the CMake build; bookworm's grpcio-tools ships protoc 3.5,
which rejects the proto's `optional` fields). Metadata is in pyproject.toml.

ATTN_PROTO_DIR overrides where the .proto files are (default: ../../proto);
PROTOC and GRPC_PYTHON_PLUGIN override the tools."""

import os
import shutil
import subprocess
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ("attnserve/v1/attention.proto", "grpc/health/v1/health.proto")


class BuildPyWithStubs(build_py):
    """build_py, then protoc into the build tree: attnserve/v1/attention_pb2*.py,
    and grpc.health.v1's messages as attnserve/_health_pb2.py (grpcio owns the
    top-level `grpc` package, so they cannot live under grpc/ there)."""

    def run(self):
        super().run()
        proto_dir = os.environ.get("ATTN_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
        protoc = os.environ.get("PROTOC") or shutil.which("protoc")
        plugin = os.environ.get("GRPC_PYTHON_PLUGIN") or shutil.which("grpc_python_plugin")
        if not protoc or not plugin:
            raise RuntimeError("protoc and grpc_python_plugin are needed to build attnserve "
                               "(Debian: apt-get install protobuf-compiler protobuf-compiler-grpc)")
        for proto in PROTOS:
            if not os.path.isfile(os.path.join(proto_dir, proto)):
                raise RuntimeError(f"{proto} not found under {proto_dir} (set ATTN_PROTO_DIR)")
        package_dir = os.path.join(self.build_lib, "attnserve")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([protoc, f"--proto_path={proto_dir}", f"--python_out={out}",
                            f"--grpc_out={out}", f"--plugin=protoc-gen-grpc={plugin}", *PROTOS],
                           check=True)
            os.makedirs(os.path.join(package_dir, "v1"), exist_ok=True)
            for name in ("attention_pb2.py", "attention_pb2_grpc.py"):
                shutil.copy(os.path.join(out, "attnserve", "v1", name),
                            os.path.join(package_dir, "v1", name))
            with open(os.path.join(package_dir, "v1", "__init__.py"), "w", encoding="utf-8"):
                pass
            shutil.copy(os.path.join(out, "grpc", "health", "v1", "health_pb2.py"),
                        os.path.join(package_dir, "_health_pb2.py"))


setup(cmdclass={"build_py": BuildPyWithStubs})
