# Sourced by scripts/podman.sh and scripts/image.sh: the podman and buildah
# settings that work on our machines, in one place.
#   - runc as the OCI runtime: crun refuses the hybrid cgroup v1/v2 layout.
#   - cgroupfs and a file events log: there is no systemd to ask.
#   - explicit ulimits: podman's default nofile (1048576) is above the hard
#     limit and a container cannot raise one. nproc at most 32768 (buildah's
#     own default): on our machines runc fails to set 65536 or the full hard
#     limit (96367) with EPERM although `ulimit -Hu` allows it.
# shellcheck shell=bash

PODMAN_GLOBAL_FLAGS=(--runtime runc --cgroup-manager=cgroupfs --events-backend=file)

limit_at_most() {  # LETTER CAP: min(`ulimit -H<LETTER>`, CAP)
  local value
  value=$(ulimit -H"$1")
  if [ "$value" = unlimited ] || [ "$value" -gt "$2" ]; then value=$2; fi
  echo "$value"
}
nofile_limit=$(limit_at_most n 1048576)
nproc_limit=$(limit_at_most u 32768)
CONTAINER_ULIMIT_FLAGS=(--ulimit "nofile=$nofile_limit:$nofile_limit"
                        --ulimit "nproc=$nproc_limit:$nproc_limit")
