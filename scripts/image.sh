#!/usr/bin/env bash
# `make image`: builds the Dockerfile as $IMAGE (default attnserve:latest, also
# tagged attnserve:<version>) with Docker when a Docker engine answers, else
# with buildah on local base images (scripts/base-images.sh). buildah builds
# with --format docker: its default OCI format drops HEALTHCHECK and STOPSIGNAL
# is not all that survives; --layers caches each step as Docker does.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-attnserve:latest}
VERSION=$(sed -n 's/^project(attnserve VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE=$(git remote get-url origin 2>/dev/null || echo unknown)
# The revision labels go on the command line too: buildah's layer cache does
# not key the Dockerfile's LABEL step on the ARG values, so a commit that
# changes no copied file got the previous commit's revision label.
args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
      --build-arg "SOURCE=$SOURCE"
      --label "org.opencontainers.image.version=$VERSION"
      --label "org.opencontainers.image.revision=$REVISION"
      --label "org.opencontainers.image.source=$SOURCE"
      -t "$IMAGE" -t "${IMAGE%%:*}:$VERSION" .)

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  echo "image: docker build" >&2
  exec docker build "${args[@]}"
fi

scripts/install-deps.sh --image
scripts/base-images.sh
source scripts/container-env.sh
echo "image: buildah build --format docker" >&2
# --network host: the RUN steps' apt reaches the mirror as this machine does.
# --pull=false: the bases are local (a registry is only asked for a missing one).
exec buildah build --format docker --layers --pull=false --network host --runtime runc \
  "${CONTAINER_ULIMIT_FLAGS[@]}" "${args[@]}"
