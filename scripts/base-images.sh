#!/usr/bin/env bash
# The Dockerfile's base images, debian:12 and debian:12-slim, made locally for
# machines that reach no registry: `debootstrap --variant=minbase bookworm`
# from this machine's own Debian mirror (read from its apt sources), imported
# into podman's store (which buildah shares). Does nothing when both exist;
# about two minutes when not.
#
#   debian:12       the minbase system, apt lists removed
#   debian:12-slim  the same without docs, man pages and locales, and a dpkg
#                   config that keeps later installs from adding them back
#                   (as Docker's official slim image does)
# Both are also tagged docker.io/library/debian:*, the name `FROM debian:12`
# stands for, so no tool goes looking for a registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PODMAN=(scripts/podman.sh)

exists() { "${PODMAN[@]}" image exists "docker.io/library/$1"; }
if exists debian:12 && exists debian:12-slim; then
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "base-images: debootstrap needs root" >&2; exit 1; }

# "SUITE URI" for every Debian entry of the apt sources, one-line or deb822.
apt_entries() {
  local files=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  awk '
    function flush(   n, s, i) {
      if (uri != "" && types ~ /(^| )deb( |$)/) {
        n = split(suites, s, " ")
        for (i = 1; i <= n; i++) print s[i], uri
      }
      uri = ""; suites = ""; types = ""
    }
    FNR == 1 { flush() }
    /^[[:space:]]*deb[[:space:]]/ {
      i = 2
      if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      print $(i + 1), $i
      next
    }
    /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
    /^[[:space:]]*$/ { flush() }
    END { flush() }
  ' "${files[@]}"
}
mirror=$(apt_entries | awk '$1 == "bookworm" { print $2; exit }')
security=$(apt_entries | awk '$1 == "bookworm-security" { print $2; exit }')
mirror=${mirror:-http://deb.debian.org/debian}
security=${security:-http://deb.debian.org/debian-security}

work=$(mktemp -d /var/tmp/attnserve-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
echo "base-images: debootstrap --variant=minbase bookworm from $mirror" >&2
if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  echo "base-images: debootstrap failed (log above)" >&2
  exit 1
fi

# The image's apt: this machine's mirrors, and its view of Release file
# dates (a mirror frozen at a snapshot has Release files past Valid-Until).
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
if apt-config dump | grep -q '^Acquire::Check-Valid-Until "false";'; then
  echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99mirror-snapshot"
fi
# As in Docker's debian images: no .deb kept after an install.
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* "$root"/tmp/*

import() {  # TAG: imports $root as TAG and docker.io/library/TAG
  tar --numeric-owner -C "$root" -c . |
    "${PODMAN[@]}" import --quiet \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "localhost/$1" >/dev/null
  "${PODMAN[@]}" tag "localhost/$1" "docker.io/library/$1"
  echo "base-images: $1 ($("${PODMAN[@]}" image inspect --format '{{.Size}}' "localhost/$1") bytes)" >&2
}
import debian:12

cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/groff/* "$root"/usr/share/info/* \
  "$root"/usr/share/lintian/* "$root"/usr/share/linda/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
import debian:12-slim
