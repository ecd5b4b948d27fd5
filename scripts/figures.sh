#!/usr/bin/env bash
# `make figures`: starts BUILD/bin/attnd on a free loopback port and draws
# every picture of docs/methods.md into docs/figures/ with `attn plot`
# (scripts/figures.py has the requests), then stops attnd.
#
#   scripts/figures.sh [BUILD_DIR] [OUT_DIR]
set -euo pipefail
build_dir=${1:-build}
out_dir=${2:-docs/figures}
# shellcheck source=scripts/attnd.sh
source "$(dirname "$0")/attnd.sh"
attnd_setup figures "$build_dir"
start_attnd "$attnd" "$work" attnd
/usr/bin/python3 "$(dirname "$0")/figures.py" "$attn" "$attnd_address" "$out_dir"
