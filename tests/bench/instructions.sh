#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: HAProxy,
# Pingora with nothing on top (examples/bare_pingora.rs) and obleth (also
# with a per-client rate limit on its route), each
# proxying the same fixed-response upstream. Counting instructions instead of
# timing them gives figures that do not move with a noisy machine; they cover
# user space only (the kernel's share is in tests/bench/edge.sh).
#
#   tests/bench/instructions.sh              # 8 s of load per target
#   DURATION=15 tests/bench/instructions.sh
#   PROFILE=40 tests/bench/instructions.sh   # also each target's 40 costliest
#                                            # functions (inclusive, per request)
#   OBLETH_BASELINE=path/to/obleth tests/bench/instructions.sh
#                                            # also another obleth build, as
#                                            # the row "obleth-baseline"
set -euo pipefail
cd "$(dirname "$0")/../.."

# This harness's own defaults (lib.sh's are the wrk comparisons').
DURATION=${DURATION:-8} CONNECTIONS=${CONNECTIONS:-8} WARMUP=${WARMUP:-3}
PROFILE=${PROFILE:-0}

source tests/bench/lib.sh
build_edge_targets

start_upstream

# count LABEL PORT COMMAND...: starts COMMAND under callgrind, warms it up,
# then counts the instructions of DURATION seconds of load.
count() {
  local label=$1 p=$2
  shift 2
  callgrind_start "$label" "$p" "$@"
  callgrind_count "$CG_PID" "$label" "http://127.0.0.1:$p/bench"
  callgrind_stop "$CG_PID"
}

HA=$(port)
haproxy_config "$work/haproxy.cfg" "$HA" "$UP"
count haproxy "$HA" haproxy -f "$work/haproxy.cfg" -db

BARE=$(port)
count pingora-bare "$BARE" target/release/examples/bare_pingora "127.0.0.1:$BARE" "127.0.0.1:$UP"

# count_obleth LABEL [ROUTE_KEY] [BINARY]: obleth (or BINARY) on the proxy
# route, with ROUTE_KEY added to it, on its own port, database and WAL
# directory.
count_obleth() {
  local label=$1 p
  p=$(port)
  {
    obleth_head "$p" "$(port)" "sqlite://$work/$label.db" bench
    echo "telemetry: { wal_path: \"$work/$label-wal\" }"
    bench_proxy_sections "${2:-}"
  } >"$work/$label.yaml"
  OBLETH_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 \
    count "$label" "$p" "${3:-target/release/obleth}" run -c "$work/$label.yaml"
}
count_obleth obleth
if [ -n "${OBLETH_BASELINE:-}" ]; then
  count_obleth obleth-baseline "" "$OBLETH_BASELINE"
fi
# The same route with a per-client rate limit that never refuses: what
# counting each request costs.
count_obleth obleth+rate_limit "rate_limit: { by: client_ip, requests_per_second: 1000000000 }"

echo
echo "user-space instructions per proxied request (callgrind), wrk -t1 -c$CONNECTIONS -d${DURATION}s GET /bench after a ${WARMUP}s warm-up"
echo "$(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), obleth $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
count_table haproxy
