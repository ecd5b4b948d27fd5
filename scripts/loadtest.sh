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
# shellcheck source=scripts/attnd.sh
source "$(dirname "$0")/attnd.sh"
attnd_setup loadtest "$build_dir"

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
