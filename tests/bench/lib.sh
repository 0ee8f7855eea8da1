# shellcheck shell=bash
# Shared by the benchmark harnesses: a work directory and the processes to
# stop on exit, ports, waiting, wrk runs and tables, the LLM routes'
# configuration and instruction counts under callgrind. DURATION,
# CONNECTIONS, WARMUP, LOAD_CORE, PROXY_CORE and ROUNDS default to what the
# wrk comparisons use; a harness that wants others sets them before sourcing.
# Add every started process's pid to `pids`.

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT [SECONDS]: until PORT opens (10 s at most by default).
wait_port() {
  for _ in $(seq $((${2:-10} * 20))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}

# build_edge_targets: the tools and release binaries the edge comparisons
# run: obleth, the mock upstream and bare Pingora (examples/bare_pingora.rs).
build_edge_targets() {
  scripts/setup.sh bench
  cargo build --release --quiet -p obleth-mock-upstream
  cargo build --release --quiet -p obleth --bins --example bare_pingora
}

# start_upstream: the fixed-response mock upstream (one thread) on
# LOAD_CORE; sets UP (its port) and UP_PID.
start_upstream() {
  UP=$(port)
  taskset -c "$LOAD_CORE" target/release/obleth-mock-upstream --listen "127.0.0.1:$UP" --name bench --threads 1 >/dev/null &
  UP_PID=$!
  pids+=("$UP_PID")
  wait_port "$UP"
}

# start_obleth_release NAME PORT [BINARY]: the release obleth (or BINARY)
# with $work/NAME.yaml on PROXY_CORE (stderr to $work/NAME.err), waited for
# until PORT opens; sets OBLETH_PID.
start_obleth_release() {
  OBLETH_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 \
    taskset -c "$PROXY_CORE" "${3:-target/release/obleth}" run -c "$work/$1.yaml" >/dev/null 2>"$work/$1.err" &
  OBLETH_PID=$!
  pids+=("$OBLETH_PID")
  wait_port "$2"
}

# obleth_head PORT ADMIN_PORT DATABASE_URL [LISTENER_NAME]: the first
# sections of a one-thread obleth configuration with the access log off, for
# harnesses that write the pools, seed and routes themselves.
obleth_head() {
  local name=${4:+"name: $4, "}
  cat <<YAML
server: { threads: 1, grace: 1s }
listeners: [{ ${name}address: "127.0.0.1:$1" }]
admin: { address: "127.0.0.1:$2" }
metrics: { address: "127.0.0.1:$(port)" }
access_log: { format: "off" }
store: { database_url: "$3" }
YAML
}

# bench_proxy_sections: the pool `bench` on the upstream UP, without
# retries, and the catch-all route to it that the edge comparisons proxy.
bench_proxy_sections() {
  cat <<YAML
pools:
  - name: bench
    retries: 0
    servers: [{ address: "127.0.0.1:$UP" }]
routes:
  - name: all
    proxy: { pool: bench }
YAML
  # An extra key of the route, e.g. a rate limit.
  [[ -z ${1:-} ]] || echo "    $1"
}

# haproxy_config FILE PORT UPSTREAM_PORT: HAProxy as the edge comparisons run
# it: one thread, keep-alive both sides, connection reuse, and the same
# forwarding headers obleth adds (X-Forwarded-For, X-Request-Id).
haproxy_config() {
  cat >"$1" <<EOF
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
  bind 127.0.0.1:$2
  unique-id-format %{+X}o%ci%cp%fp%Ts%rt%pid
  unique-id-header X-Request-Id
  default_backend be
backend be
  server s1 127.0.0.1:$3
EOF
}

# wrk prints latency with units; normalise to microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") print n; else if (u == "ms") print n * 1000; else if (u == "s") print n * 1000000; else print n
  }'
}

# User and system CPU time a process has used, in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# run LABEL URL PID [wrk args...]: one warm-up and one measured wrk run;
# appends "label req/s p50 p99 cpu user system errors" to $work/results,
# the last three in µs of PID's CPU time per request (user + system, then
# each alone), which varies far less between runs than req/s on a shared VM.
run() {
  local label=$1 url=$2 pid=$3 out before after
  shift 3
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$@" "$url" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url")
  after=$(cpu_ticks "$pid")
  local rps p50 p99 errors requests cpu_us
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu_us=$(awk -v b="$before" -v a="$after" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {
    split(b, x, " "); split(a, y, " "); u = (y[1] - x[1]) / hz * 1e6 / n; s = (y[2] - x[2]) / hz * 1e6 / n
    printf "%.1f %.1f %.1f", u + s, u, s }')
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$label $rps $p50 $p99 $cpu_us ${errors:-}" >>"$work/results"
}

# table ROUNDS BASELINE-LABEL: the median round of each target (by req/s),
# in first-seen order, with ratios against BASELINE-LABEL.
table() {
  local rounds=$1 base=$2
  sort -s -k1,1 -k2,2n "$work/results" | awk -v rounds="$rounds" '
    { n[$1]++; if (n[$1] == int((rounds + 1) / 2)) print }' >"$work/median"
  awk 'NR == FNR { row[$1] = $0; next } !seen[$1]++ { print row[$1] }' "$work/median" "$work/results" >"$work/table"
  awk -v base="$base" '
    { label[NR] = $1; rps[NR] = $2; p50[NR] = $3; p99[NR] = $4; cpu[NR] = $5; usr[NR] = $6; sys[NR] = $7
      err = ""; for (i = 8; i <= NF; i++) err = err " " $i; errs[NR] = err
      if ($1 == base) { hr = $2; h99 = $4; hcpu = $5 } }
    END {
      printf "| target | req/s | p50 (us) | p99 (us) | CPU us/req | user us/req | system us/req | req/s vs %s | p99 vs %s | CPU/req vs %s |\n", base, base, base
      printf "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
      for (i = 1; i <= NR; i++)
        printf "| %s | %.0f | %.0f | %.0f | %.1f | %.1f | %.1f | %.2fx | %.2fx | %.2fx |%s\n", label[i], rps[i], p50[i], p99[i], cpu[i], usr[i], sys[i], rps[i] / hr, p99[i] / h99, cpu[i] / hcpu, errs[i]
    }' "$work/table"
}

# The LLM comparisons' keys: tenant `bench` has no limits, `limited` a token
# budget and a per-minute limit.
KEY=obk_bench_000000000000000000000000
BUDGET_KEY=obk_bench_budget_0000000000000000

# llm_bench_sections REDIS_PREFIX: Redis on loopback under REDIS_PREFIX, the
# pool `p` on the upstream UP, the two tenants and their keys, the model
# `bench-model`, an `llm` route on /v1/ and a plain `proxy` route on
# /plain/ to the same upstream.
llm_bench_sections() {
  cat <<YAML
redis: { url: "redis://127.0.0.1:6379", prefix: "$1" }
pools:
  - name: p
    retries: 0
    servers: [{ address: "127.0.0.1:$UP" }]
seed:
  tenants: [{ name: bench }, { name: limited, budget_tokens: 100000000000, tokens_per_minute: 1000000000 }]
  models: [{ name: bench-model, pool: p, upstream_model: mock-model }]
  keys: [{ tenant: bench, name: k, secret: $KEY }, { tenant: limited, name: k, secret: $BUDGET_KEY }]
routes:
  - name: llm
    match: { path: { prefix: /v1/ } }
    llm: {}
  - name: plain
    match: { path: { prefix: /plain/ } }
    proxy: { pool: p, rewrite_prefix: { from: /plain, to: / } }
YAML
}

# chat_scripts: $work/chat.lua and $work/chat-budget.lua, wrk sending the
# same small chat completion (max_tokens 2) with KEY and with BUDGET_KEY.
chat_scripts() {
  cat >"$work/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":2}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
  sed "s/$KEY/$BUDGET_KEY/" "$work/chat.lua" >"$work/chat-budget.lua"
}

# llm_prime PORT: one chat completion with each key through the llm route on
# PORT, which fails the harness unless both are answered with success.
llm_prime() {
  for k in "$KEY" "$BUDGET_KEY"; do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/v1/chat/completions" -H "authorization: Bearer $k" \
      -H 'content-type: application/json' -d '{"model":"bench-model","messages":[],"max_tokens":1}'
  done
}

# callgrind_start LABEL PORT COMMAND...: COMMAND under valgrind's callgrind
# (its log in $work/LABEL.valgrind.log), waited for until PORT opens, which
# takes a while: valgrind runs it some 50 times slower. Sets CG_PID.
callgrind_start() {
  local label=$1 p=$2
  shift 2
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$work/cg.%p" \
    "$@" >/dev/null 2>"$work/$label.valgrind.log" &
  CG_PID=$!
  pids+=("$CG_PID")
  wait_port "$p" 120 || { tail -20 "$work/$label.valgrind.log" >&2; return 1; }
}

# callgrind_count PID LABEL URL [wrk args...]: WARMUP seconds of wrk on URL,
# then the instructions PID runs in DURATION seconds more; appends
# "LABEL requests instructions errors" to $work/counts. With PROFILE > 0 also
# prints LABEL's PROFILE costliest functions (inclusive, per request); with
# PROFILE_DIR set, keeps its callgrind output there as LABEL.cg.
callgrind_count() {
  local pid=$1 label=$2 url=$3 out requests total errors
  shift 3
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$@" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$@" "$url")
  callgrind_control -d "$pid" >/dev/null 2>&1
  # Each dump is a new numbered file; name it after its row.
  mv "$work/cg.$pid".* "$work/$label.cg"
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  total=$(callgrind_annotate "$work/$label.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$label $requests $total ${errors:-}" >>"$work/counts"
  # PROFILE_DIR keeps each row's callgrind output, for callgrind_annotate.
  [ -z "${PROFILE_DIR:-}" ] || { mkdir -p "$PROFILE_DIR" && cp "$work/$label.cg" "$PROFILE_DIR/"; }
  if [ "${PROFILE:-0}" -gt 0 ]; then
    echo "== $label: $PROFILE costliest functions, inclusive instructions per request"
    callgrind_annotate --inclusive=yes "$work/$label.cg" 2>/dev/null |
      awk -v n="$requests" -v top="$PROFILE" '
        /^ *[0-9,]+ / && !/PROGRAM TOTALS/ && shown < top {
          ir = $1; gsub(",", "", ir); $1 = ""; printf "%10.0f%s\n", ir / n, $0; shown++ }'
  fi
}

# callgrind_stop PID: ends a process callgrind_start started; its counts are
# dumped already.
callgrind_stop() {
  kill -KILL "$1"
  wait "$1" 2>/dev/null || true
}

# count_table BASELINE-LABEL: $work/counts as a table of instructions per
# request, in the order counted, with ratios against BASELINE-LABEL.
count_table() {
  awk -v base="$1" '
    { label[NR] = $1; req[NR] = $2; per[NR] = $3 / $2; if ($1 == base) b = per[NR]
      err = ""; for (i = 4; i <= NF; i++) err = err " " $i; errs[NR] = err }
    END {
      printf "| target | requests counted | instructions/request | vs %s |\n", base
      print "| --- | ---: | ---: | ---: |"
      for (i = 1; i <= NR; i++) printf "| %s | %d | %.0f | %.2fx |%s\n", label[i], req[i], per[i], per[i] / b, errs[i]
    }' "$work/counts"
}
