#!/usr/bin/env bash
# Serves the golden cases from attnd running under qemu-user's emulation of
# older CPUs: Nehalem (SSE4.2, no AVX at all: the baseline path) and Haswell
# (AVX2 + FMA, no AVX-512). The test binary runs natively with ATTN_MAX_ISA
# set to the ISA the emulated CPU should give, and checks ListMethods.isa
# too. Needs qemu-user (scripts/install-deps.sh installs it) and a build.
#
#   scripts/qemu-isa-check.sh [build-dir]      (default: build)
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pair in Nehalem:baseline Haswell:avx2; do
  cpu=${pair%%:*} isa=${pair##*:}
  wrapper="$work/attnd-$cpu"
  printf '#!/bin/sh\nexec qemu-x86_64 -cpu %s "%s/bin/attnd" "$@"\n' "$cpu" "$build" > "$wrapper"
  chmod +x "$wrapper"
  echo "== attnd under qemu-x86_64 -cpu $cpu: $("$wrapper" --version 2>/dev/null)"
  # The unary cases (data and raw_data) and the ISA check; TCG's warnings
  # about CPUID bits it cannot emulate go to attnd's stderr, harmlessly.
  ATTND_PATH="$wrapper" ATTN_MAX_ISA="$isa" "$build/bin/golden_e2e_test" \
    --gtest_filter='AllCases/GoldenUnaryTest.*:GoldenServerTest.*' --gtest_brief=1
done
echo "qemu ISA check: passed"
