#!/usr/bin/env bash
# Edge benchmark: the same fixed-response upstream reached directly, through
# HAProxy, through Pingora with nothing on top (examples/bare_pingora.rs, the
# floor obleth is built on) and through obleth, driven by the same wrk run
# (same duration, connections, request). The proxy under test gets core 0 alone (one
# thread); wrk and the upstream share core 1. Prints one table.
#
#   tests/bench/edge.sh                 # 10 s per target, 64 connections
#   DURATION=20 CONNECTIONS=128 tests/bench/edge.sh
#   EXTRA=1 tests/bench/edge.sh         # also obleth with its access log on
#   OBLETH_BASELINE=path/to/obleth tests/bench/edge.sh
#                                       # also another obleth build (a row
#                                       # "obleth-baseline") in the same run
# Targets are run in turn, ROUNDS times (default 3); the table shows the
# median round of each, so a noisy moment on a shared machine moves no row.
set -euo pipefail
cd "$(dirname "$0")/../.."

source tests/bench/lib.sh
build_edge_targets

start_upstream

HA=$(port)
haproxy_config "$work/haproxy.cfg" "$HA" "$UP"
haproxy -c -q -f "$work/haproxy.cfg"
taskset -c "$PROXY_CORE" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
pids+=($!)
HA_PID=$!
wait_port "$HA"

BARE=$(port)
taskset -c "$PROXY_CORE" target/release/examples/bare_pingora "127.0.0.1:$BARE" "127.0.0.1:$UP" >/dev/null 2>&1 &
pids+=($!)
BARE_PID=$!
wait_port "$BARE"

start_obleth() { # name access_log_format [binary] -> sets STARTED_PORT and STARTED_PID
  local name=$1 format=$2 p a m
  p=$(port); a=$(port); m=$(port)
  cat >"$work/$name.yaml" <<EOF
server: { threads: 1, grace: 1s, work_stealing: ${WORK_STEALING:-true} }
listeners: [{ name: bench, address: "127.0.0.1:$p" }]
admin: { address: "127.0.0.1:$a" }
metrics: { address: "127.0.0.1:$m" }
access_log: { format: $format, path: "$work/$name-access.log" }
store: { database_url: "sqlite://$work/$name.db" }
EOF
  bench_proxy_sections >>"$work/$name.yaml"
  start_obleth_release "$name" "$p" "${3:-}"
  STARTED_PID=$OBLETH_PID
  STARTED_PORT=$p
}

start_obleth obleth off
OB=$STARTED_PORT OB_PID=$STARTED_PID
if [ -n "${OBLETH_BASELINE:-}" ]; then
  start_obleth obleth-baseline off "$OBLETH_BASELINE"
  OBBASE=$STARTED_PORT OBBASE_PID=$STARTED_PID
fi
if [ "${EXTRA:-}" = 1 ]; then
  start_obleth obleth-log httplog
  OBLOG=$STARTED_PORT OBLOG_PID=$STARTED_PID
fi

for _ in $(seq "$ROUNDS"); do
  run direct "http://127.0.0.1:$UP/bench" "$UP_PID"
  run haproxy "http://127.0.0.1:$HA/bench" "$HA_PID"
  run pingora-bare "http://127.0.0.1:$BARE/bench" "$BARE_PID"
  run obleth "http://127.0.0.1:$OB/bench" "$OB_PID"
  if [ -n "${OBBASE:-}" ]; then run obleth-baseline "http://127.0.0.1:$OBBASE/bench" "$OBBASE_PID"; fi
  if [ -n "${OBLOG:-}" ]; then run obleth+accesslog "http://127.0.0.1:$OBLOG/bench" "$OBLOG_PID"; fi
done

echo
echo "edge benchmark: wrk -t1 -c$CONNECTIONS -d${DURATION}s GET /bench (3-byte body), median of $ROUNDS rounds; proxy on core $PROXY_CORE, wrk + upstream on core $LOAD_CORE"
echo "$(nproc) cores, $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), obleth $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
table "$ROUNDS" haproxy
