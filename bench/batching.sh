#!/usr/bin/env bash
# Dynamic batching, side by side: two attnd on loopback, one batching (its
# defaults) and one with --max_batch_size=1, each driven in turn by
# `attn bench -c 64 -z DURATION` with small Attend requests (B=1, H=8, S=32,
# D=64, method none, fixed seed) for ROUNDS rounds; prints the median
# throughput and latencies of each and their ratio as a markdown table, and
# the attnserve_batch_size histogram each server exported.
#
#   bench/batching.sh [BUILD_DIR] [DURATION] [ROUNDS]     (build 10s 5)
#   BATCH_FLAGS / NOBATCH_FLAGS: the two servers' extra flags; CONCURRENCY
#   (64) and CONNECTIONS (1): attn bench's -c and --connections; ENCODING:
#   data (repeated float, the default) or raw (raw_data in, raw_output out:
#   the api's fast path), the same values either way.
set -euo pipefail
build_dir=${1:-build}
duration=${2:-10s}
rounds=${3:-5}
concurrency=${CONCURRENCY:-64}
connections=${CONNECTIONS:-1}
encoding=${ENCODING:-data}
case $encoding in data|raw) ;; *) echo "batching: ENCODING must be data or raw, got $encoding" >&2; exit 2;; esac
batch_flags=${BATCH_FLAGS:-}
nobatch_flags=${NOBATCH_FLAGS:---max_batch_size=1}
python=/usr/bin/python3
# shellcheck source=scripts/attnd.sh
source "$(dirname "$0")/../scripts/attnd.sh"
attnd_setup batching "$build_dir"

# The request: q, k, v [1, 8, 32, 64] from a fixed seed (raw: the same
# float32 values as little-endian bytes, base64 in proto-JSON).
"$python" - "$work/request.json" "$encoding" <<'PY'
import base64, json, random, struct, sys
rng = random.Random(20260401)
raw = sys.argv[2] == "raw"
def tensor():
    values = [round(rng.gauss(0, 1), 4) for _ in range(8 * 32 * 64)]
    if raw:
        data = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        return {"shape": [1, 8, 32, 64], "rawData": data}
    return {"shape": [1, 8, 32, 64], "data": values}
request = {"method": {"none": {}}, "q": tensor(), "k": tensor(), "v": tensor()}
if raw:
    request["rawOutput"] = True
with open(sys.argv[1], "w") as f:
    json.dump(request, f)
PY

# shellcheck disable=SC2086  # the flag lists are word lists
start_attnd "$attnd" "$work" batching $batch_flags
# shellcheck disable=SC2086
start_attnd "$attnd" "$work" unbatched $nobatch_flags

cpu_ticks() {  # cpu_ticks PID: user + system clock ticks so far
  awk '{print $14 + $15}' "/proc/$1/stat"
}
run() {  # run NAME ROUND: the report, and the server's and client's CPU seconds
  local name=$1 round=$2 address_var="${1}_address" pid_var="${1}_pid" before after
  before=$(cpu_ticks "${!pid_var}")
  /usr/bin/time -f "%U %S" -o "$work/$name.$round.client_cpu" \
    "$attn" bench --insecure --call attnserve.v1.AttentionService/Attend -D "$work/request.json" \
    -c "$concurrency" --connections "$connections" -z "$duration" -O json -o "$work/$name.$round.json" "${!address_var}"
  after=$(cpu_ticks "${!pid_var}")
  echo "$(( after - before )) $(getconf CLK_TCK)" >"$work/$name.$round.server_cpu"
}
# Warm-up (connections, thread pools, allocator), not reported.
run batching warmup >/dev/null
run unbatched warmup >/dev/null
for round in $(seq "$rounds"); do
  # Alternating, so that drift of the machine falls on both alike.
  run batching "$round"
  run unbatched "$round"
done
curl -fsS "http://$batching_metrics/metrics" >"$work/batching.metrics" || true
curl -fsS "http://$unbatched_metrics/metrics" >"$work/unbatched.metrics" || true

"$python" - "$work" "$rounds" "$concurrency" "$connections" "$duration" "$batch_flags" \
  "$nobatch_flags" "$encoding" <<'PY'
import json, statistics, sys
work, rounds, concurrency, connections, duration, batch_flags, nobatch_flags, encoding = sys.argv[1:]
rounds = int(rounds)

def runs(name):
    return [json.load(open(f"{work}/{name}.{r}.json")) for r in range(1, rounds + 1)]

def percentile(report, p):
    return next(x["latency"] for x in report["latencyDistribution"] if x["percentage"] == p)

def histogram(name):
    """attnserve_batch_size buckets (le -> cumulative count), sum and count."""
    buckets, total, count = {}, None, None
    try:
        lines = open(f"{work}/{name}.metrics").read().splitlines()
    except OSError:
        return buckets, total, count
    for line in lines:
        if line.startswith("attnserve_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("attnserve_batch_size_sum"):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("attnserve_batch_size_count"):
            count = (count or 0) + float(line.rsplit(" ", 1)[1])
    return buckets, total, count

rows = {}
for name in ("batching", "unbatched"):
    reports = runs(name)
    errors = sum(r["count"] - r["statusCodeDistribution"].get("OK", 0) for r in reports)
    server_ms, client_ms = [], []
    for r, report in enumerate(reports, 1):
        ticks, hz = map(float, open(f"{work}/{name}.{r}.server_cpu").read().split())
        user, system = map(float, open(f"{work}/{name}.{r}.client_cpu").read().split()[-2:])
        server_ms.append(ticks / hz * 1e3 / report["count"])
        client_ms.append((user + system) * 1e3 / report["count"])
    rows[name] = {
        "server_ms": statistics.median(server_ms),
        "client_ms": statistics.median(client_ms),
        "rps": [r["rps"] for r in reports],
        "p50": statistics.median(percentile(r, 50) for r in reports) / 1e6,
        "p99": statistics.median(percentile(r, 99) for r in reports) / 1e6,
        "errors": errors,
    }
ratio = statistics.median(rows["batching"]["rps"]) / statistics.median(rows["unbatched"]["rps"])
encoding_text = "raw_data + raw_output" if encoding == "raw" else "data (repeated float)"
print(f"Attend B=1 H=8 S=32 D=64 (method none, {encoding_text}), {concurrency} callers on "
      f"{connections} connection(s), "
      f"{rounds} alternating rounds of {duration} each; medians.\n")
print("| server | flags | requests/s (median) | per round | p50 ms | p99 ms | "
      "server CPU ms/request | client CPU ms/request | failed calls |")
print("|---|---|---|---|---|---|---|---|---|")
for name, flags in (("batching", batch_flags or "(defaults)"), ("unbatched", nobatch_flags)):
    row = rows[name]
    per_round = " / ".join(f"{x:.0f}" for x in row["rps"])
    print(f"| {name} | `{flags}` | {statistics.median(row['rps']):.0f} | {per_round} | "
          f"{row['p50']:.2f} | {row['p99']:.2f} | {row['server_ms']:.3f} | "
          f"{row['client_ms']:.3f} | {row['errors']} |")
print(f"\nthroughput ratio batching / unbatched: **{ratio:.2f}x**\n")
for name in ("batching", "unbatched"):
    buckets, total, count = histogram(name)
    if not count:
        print(f"{name}: no attnserve_batch_size histogram scraped")
        continue
    previous, parts = 0.0, []
    for le, cumulative in sorted(buckets.items(), key=lambda kv: float(kv[0].replace("+Inf", "inf"))):
        if cumulative > previous:
            parts.append(f"<={le}: {cumulative - previous:.0f}")
        previous = cumulative
    print(f"{name}: attnserve_batch_size {count:.0f} batches, mean {total / count:.2f} "
          f"requests per batch; batches per bucket: {', '.join(parts)}")
PY
