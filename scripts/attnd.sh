# Shell helpers for scripts that run a local attnd (sourced, not executed):
# bench/batching.sh and scripts/loadtest.sh.
#
#   source scripts/attnd.sh
#   attnd_setup SCRIPT BUILD_DIR
#       Sets attnd and attn (BUILD_DIR/bin/...; exits 1 naming SCRIPT when
#       one is missing) and work (a fresh temporary directory), and installs an
#       EXIT trap that stops the attnds started here and removes work.
#   start_attnd ATTND WORK NAME [FLAGS...]
#       Starts ATTND on free loopback ports (gRPC and /metrics), its stderr in
#       WORK/NAME.log, and waits (at most 10 s) for its port file. Sets
#       NAME_pid, NAME_address (127.0.0.1:PORT) and NAME_metrics, and adds the
#       pid to attnd_pids. On failure prints why (and attnd's log) and exits 1.
#   stop_attnds
#       SIGTERM to every attnd started here that still runs, then waits for it
#       (for the caller's EXIT trap).

attnd_pids=()

attnd_setup() {
  local script=$1 build_dir=$2 binary
  attnd=$build_dir/bin/attnd
  attn=$build_dir/bin/attn
  for binary in "$attnd" "$attn"; do
    [ -x "$binary" ] || { echo "$script: $binary is missing; run make build" >&2; exit 1; }
  done
  work=$(mktemp -d)
  trap 'stop_attnds; rm -rf "$work"' EXIT
}

start_attnd() {
  local attnd=$1 work=$2 name=$3
  shift 3
  "$attnd" --address=127.0.0.1:0 --port_file="$work/$name.port" \
    --metrics_address=127.0.0.1:0 --metrics_port_file="$work/$name.metrics_port" \
    --lame_duck_s=0 "$@" \
    2>"$work/$name.log" &
  local pid=$!
  attnd_pids+=("$pid")
  for _ in $(seq 200); do
    [ -s "$work/$name.port" ] && [ -s "$work/$name.metrics_port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  [ -s "$work/$name.port" ] || { echo "$name: attnd did not report its port" >&2; exit 1; }
  printf -v "${name}_pid" '%s' "$pid"
  printf -v "${name}_address" '127.0.0.1:%s' "$(tr -d '\n' <"$work/$name.port")"
  printf -v "${name}_metrics" '127.0.0.1:%s' "$(tr -d '\n' <"$work/$name.metrics_port")"
}

stop_attnds() {
  local pid
  for pid in "${attnd_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  done
}
