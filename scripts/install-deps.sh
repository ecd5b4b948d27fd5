#!/usr/bin/env bash
# Installs the Debian 12 packages attnserve builds, tests and runs with.
# Idempotent and quiet when everything is present; the one list of packages
# that the Makefile, CI and the Dockerfile all use, split by who needs it.
#
#   scripts/install-deps.sh                 build + test dependencies (make build, make test)
#   scripts/install-deps.sh --sanitizers    also the sanitizer and fuzz builds
#                                           (make test-asan, test-tsan, fuzz)
#   scripts/install-deps.sh --build         only what compiles attnd and attn (the image's
#                                           build stage)
#   scripts/install-deps.sh --runtime       only the shared libraries attnd and attn load
#                                           (the image's runtime stage)
#   scripts/install-deps.sh --image         only what builds and runs the image (make image,
#                                           make test-image)
#   scripts/install-deps.sh --check [...]   exit 1 (listing them) if any is missing
set -euo pipefail

# Compiles attnd and attn.
BUILD_PACKAGES=(
  # toolchain
  build-essential cmake make pkg-config
  # RPC and serialisation
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # kernels (Debian's dnnl-config.cmake calls find_package(OpenCL REQUIRED);
  # libdnnl-dev only recommends the OpenCL headers, and we skip recommends)
  libdnnl-dev ocl-icd-opencl-dev
  # utilities
  libabsl-dev nlohmann-json3-dev prometheus-cpp-dev
  # the /metrics listener, HTTP and HTTPS (GnuTLS)
  libmicrohttpd-dev
  # attn plot: Cairo (PNG and SVG)
  libcairo2-dev
  # TLS checks and token digests (libcrypto)
  libssl-dev
)

# The tests and benchmarks, on top of BUILD_PACKAGES.
TEST_PACKAGES=(
  # the openssl CLI makes test certificates; a font for attn plot's text
  openssl fonts-dejavu-core
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # attnd under emulated older CPUs (scripts/qemu-isa-check.sh: Nehalem, Haswell)
  qemu-user
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
  TEST_PACKAGES+=(kubernetes-client)
fi

# What `ldd build/bin/attnd build/bin/attn` resolves to, by package (libc6 and
# libgcc-s1 are in every Debian base; libcairo2 brings its own X11 and font
# libraries). The -dev packages above depend on these; the image's runtime
# stage installs only these. A new library linked into attnd or attn goes here,
# or the image breaks (tests/deploy/image_test.py runs both binaries in it).
RUNTIME_PACKAGES=(
  libabsl20220623 libc-ares2 libcairo2 libdnnl2 libgomp1 libgrpc++1.51
  libgrpc29 libmicrohttpd12 libprometheus-cpp-core1.0 libprotobuf32 libre2-9
  libssl3 libstdc++6 ocl-icd-libopencl1 zlib1g
)

# The sanitizer and fuzz builds (CMakePresets.json): Clang 14 with its
# runtimes (ASan, UBSan, TSan and libFuzzer are all in libclang-rt-14-dev),
# and LLVM's OpenMP, whose Archer tool (libarcher.so) tells TSan about the
# kernels' OpenMP synchronisation.
SANITIZER_PACKAGES=(clang-14 libclang-rt-14-dev libomp-14-dev)

# Builds and runs the container image without a Docker engine (scripts/image.sh):
# buildah and podman with runc, and debootstrap for the local debian:12 bases.
IMAGE_PACKAGES=(buildah podman runc debootstrap)

check_only=false
only=()      # --build, --runtime, --image: these lists instead of the default
extra=()     # --sanitizers: on top of the default
for arg in "$@"; do
  case "$arg" in
    --check) check_only=true ;;
    --sanitizers) extra+=("${SANITIZER_PACKAGES[@]}") ;;
    --build) only+=("${BUILD_PACKAGES[@]}") ;;
    --runtime) only+=("${RUNTIME_PACKAGES[@]}") ;;
    --image) only+=("${IMAGE_PACKAGES[@]}") ;;
    *) echo "install-deps: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if [ ${#only[@]} -gt 0 ]; then
  PACKAGES=("${only[@]}")
else
  PACKAGES=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}")
fi
PACKAGES+=(${extra[@]+"${extra[@]}"})

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
