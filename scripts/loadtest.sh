#!/usr/bin/env bash
# A bounded load run of every call in deploy/ghz/ against a local attnd, with
# the project's own ghz-compatible tool (`attn bench`): starts BUILD/bin/attnd
# on a free loopback port, runs each config with -n TOTAL, prints ghz's
# summary of each, stops attnd. Fails if attnd does not start or any call
# fails. Run from the repository root (the configs' paths are relative to it).
#
#   scripts/loadtest.sh [BUILD_DIR] [TOTAL]        (make loadtest: build, 2000)
set -euo pipefail
build_dir=${1:-build}
total=${2:-2000}
attnd=$build_dir/bin/attnd
attn=$build_dir/bin/attn
for binary in "$attnd" "$attn"; do
  [ -x "$binary" ] || { echo "loadtest: $binary is missing; run make build" >&2; exit 1; }
done

work=$(mktemp -d)
# shellcheck source=scripts/attnd.sh
source "$(dirname "$0")/attnd.sh"
cleanup() {
  stop_attnds
  rm -rf "$work"
}
trap cleanup EXIT

start_attnd "$attnd" "$work" attnd
address=$attnd_address
echo "loadtest: attnd on $address, $total calls per config"

failed=0
for config in deploy/ghz/*.json; do
  echo
  echo "=== $config"
  "$attn" bench --config "$config" -n "$total" "$address" | tee "$work/summary"
  if grep -q "^Error distribution:" "$work/summary"; then
    echo "loadtest: $config: some calls failed" >&2
    failed=1
  fi
done
exit $failed
