#!/usr/bin/env bash
# podman with this machine's settings (scripts/container-env.sh): use it as
# podman, e.g. `scripts/podman.sh run --rm --network host attnserve`. `run`
# and `create` also get the ulimits.
set -euo pipefail
source "$(dirname "$0")/container-env.sh"
case "${1:-}" in
  run | create)
    command=$1
    shift
    set -- "$command" "${CONTAINER_ULIMIT_FLAGS[@]}" "$@"
    ;;
esac
exec podman "${PODMAN_GLOBAL_FLAGS[@]}" "$@"
