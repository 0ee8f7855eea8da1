#!/usr/bin/env bash
# Edge benchmark: the same fixed-response upstream reached directly, through
# HAProxy and through obleth, driven by the same wrk run (same duration,
# connections, request). The proxy under test gets core 0 alone (one
# thread); wrk and the upstream share core 1. Prints one table.
#
#   tests/bench/edge.sh                 # 10 s per target, 64 connections
#   DURATION=20 CONNECTIONS=128 tests/bench/edge.sh
#   EXTRA=1 tests/bench/edge.sh         # also obleth with its access log on
# Targets are run in turn, ROUNDS times (default 3); the table shows the
# median round of each, so a noisy moment on a shared machine moves no row.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}

scripts/setup.sh bench
cargo build --release --quiet -p obleth -p obleth-mock-upstream

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}

UP=$(port)
taskset -c "$LOAD_CORE" target/release/obleth-mock-upstream --listen "127.0.0.1:$UP" --name bench --threads 1 >/dev/null &
pids+=($!)
UP_PID=$!
wait_port "$UP"

HA=$(port)
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$HA
  unique-id-format %{+X}o%ci%cp%fp%Ts%rt%pid
  unique-id-header X-Request-Id
  default_backend be
backend be
  server s1 127.0.0.1:$UP
EOF
haproxy -c -q -f "$work/haproxy.cfg"
taskset -c "$PROXY_CORE" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
pids+=($!)
HA_PID=$!
wait_port "$HA"

start_obleth() { # name access_log_format -> prints "port pid"
  local name=$1 format=$2 p a m
  p=$(port); a=$(port); m=$(port)
  cat >"$work/$name.yaml" <<EOF
server: { threads: 1, grace: 1s }
listeners: [{ name: bench, address: "127.0.0.1:$p" }]
admin: { address: "127.0.0.1:$a" }
metrics: { address: "127.0.0.1:$m" }
access_log: { format: $format, path: "$work/$name-access.log" }
pools:
  - name: bench
    retries: 0
    servers: [{ address: "127.0.0.1:$UP" }]
routes:
  - name: all
    proxy: { pool: bench }
EOF
  taskset -c "$PROXY_CORE" target/release/obleth run -c "$work/$name.yaml" >/dev/null 2>"$work/$name.err" &
  pids+=($!)
  wait_port "$p"
  echo "$p $!"
}

read -r OB OB_PID < <(start_obleth obleth off)
if [ "${EXTRA:-}" = 1 ]; then read -r OBLOG OBLOG_PID < <(start_obleth obleth-log httplog); fi

# The CPU column counts the proxy's (for `direct`: the upstream's) CPU time
# per request, which varies far less between runs than req/s on a shared VM.

# wrk prints latency with units; normalise to microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") print n; else if (u == "ms") print n * 1000; else if (u == "s") print n * 1000000; else print n
  }'
}

# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # label port pid-whose-CPU-is-counted
  local label=$1 p=$2 pid=$3 out before after
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$p/bench" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$p/bench")
  after=$(cpu_ticks "$pid")
  local rps p50 p99 errors requests cpu_us
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu_us=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$label $rps $p50 $p99 $cpu_us ${errors:-}" >>"$work/results"
}

for _ in $(seq "$ROUNDS"); do
  run direct "$UP" "$UP_PID"
  run haproxy "$HA" "$HA_PID"
  run obleth "$OB" "$OB_PID"
  if [ -n "${OBLOG:-}" ]; then run obleth+accesslog "$OBLOG" "$OBLOG_PID"; fi
done

echo
echo "edge benchmark: wrk -t1 -c$CONNECTIONS -d${DURATION}s GET /bench (3-byte body), median of $ROUNDS rounds; proxy on core $PROXY_CORE, wrk + upstream on core $LOAD_CORE"
echo "$(nproc) cores, $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), obleth $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
# Median round per target (by req/s), in first-seen order.
sort -s -k1,1 -k2,2n "$work/results" | awk -v rounds="$ROUNDS" '
  { n[$1]++; if (n[$1] == int((rounds + 1) / 2)) print }' >"$work/median"
awk 'NR == FNR { row[$1] = $0; next } !seen[$1]++ { print row[$1] }' "$work/median" "$work/results" >"$work/table"
awk '
  { label[NR] = $1; rps[NR] = $2; p50[NR] = $3; p99[NR] = $4; cpu[NR] = $5; err = ""; for (i = 6; i <= NF; i++) err = err " " $i; errs[NR] = err
    if ($1 == "haproxy") { hr = $2; h99 = $4; hcpu = $5 } }
  END {
    printf "| target | req/s | p50 (us) | p99 (us) | CPU us/req | req/s vs HAProxy | p99 vs HAProxy | CPU/req vs HAProxy |\n"
    printf "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    for (i = 1; i <= NR; i++)
      printf "| %s | %.0f | %.0f | %.0f | %.1f | %.2fx | %.2fx | %.2fx |%s\n", label[i], rps[i], p50[i], p99[i], cpu[i], rps[i] / hr, p99[i] / h99, cpu[i] / hcpu, errs[i]
  }' "$work/table"
