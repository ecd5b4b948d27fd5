#!/usr/bin/env bash
# Installs the Debian 12 packages attnserve builds, tests and runs with.
# Idempotent and quiet when everything is present; the one list of packages
# that the Makefile, CI and the Dockerfile all use.
#
#   scripts/install-deps.sh                 build + test dependencies
#   scripts/install-deps.sh --sanitizers    also the sanitizer and fuzz builds
#                                           (make test-asan, test-tsan, fuzz)
#   scripts/install-deps.sh --check [--sanitizers]
#                                           exit 1 (listing them) if any is missing
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake make pkg-config
  # RPC and serialisation
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # kernels (Debian's dnnl-config.cmake calls find_package(OpenCL REQUIRED);
  # libdnnl-dev only recommends the OpenCL headers, and we skip recommends)
  libdnnl-dev ocl-icd-opencl-dev
  # utilities
  libabsl-dev nlohmann-json3-dev prometheus-cpp-dev libcivetweb-dev
  # attn plot: Cairo (PNG and SVG) and a font for its text
  libcairo2-dev fonts-dejavu-core
  # TLS checks and token digests (libcrypto); the openssl CLI makes test certificates
  libssl-dev openssl
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # metrics tests: promtool and a real Prometheus server (loopback only)
  prometheus
  # deploy/ tests: the load balancer of deploy/haproxy/haproxy.cfg (loopback only);
  # the Kubernetes API models and YAML for deploy/k8s and the other deploy/ files
  haproxy python3-kubernetes python3-yaml
  # the netns scale-out test (make test-netns): `ip netns`, veth and bridges
  iproute2
  # Python SDK and its tests (Debian's interpreter: /usr/bin/python3)
  python3 python3-grpcio python3-protobuf python3-numpy
  # the wheel of client/python, built offline and installed into a venv by its test
  python3-pip python3-venv python3-setuptools python3-wheel
)

# kubectl (for `kubectl kustomize deploy/k8s`): Debian's kubernetes-client, unless a
# kubectl is already installed (another package's /usr/bin/kubectl, such as the Google
# Cloud SDK's, conflicts with it).
if ! command -v kubectl >/dev/null; then
  PACKAGES+=(kubernetes-client)
fi

# The sanitizer and fuzz builds (CMakePresets.json): Clang 14 with its
# runtimes (ASan, UBSan, TSan and libFuzzer are all in libclang-rt-14-dev),
# and LLVM's OpenMP, whose Archer tool (libarcher.so) tells TSan about the
# kernels' OpenMP synchronisation.
SANITIZER_PACKAGES=(clang-14 libclang-rt-14-dev libomp-14-dev)

check_only=false
for arg in "$@"; do
  case "$arg" in
    --check) check_only=true ;;
    --sanitizers) PACKAGES+=("${SANITIZER_PACKAGES[@]}") ;;
    *) echo "install-deps: unknown argument $arg" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if $check_only; then
  echo "missing packages: ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
