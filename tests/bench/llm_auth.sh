#!/usr/bin/env bash
# What key auth, LLM routing and budgets cost: the same chat completion
# request sent through a plain `proxy` route, through an `llm` route (key
# auth from the in-process cache, body parsed, model and credential
# rewritten) for a tenant without limits, and for a tenant with a token
# budget and a per-minute limit (reserve and settle in Redis on loopback),
# in the same run, plus the upstream directly. obleth gets
# core 0 alone (one thread); wrk and the mock upstream share core 1.
#
#   tests/bench/llm_auth.sh             # 3 rounds of 10 s per target
#   OBLETH_BASELINE=path/to/obleth tests/bench/llm_auth.sh
#                                       # plus that binary's llm rows, same run
set -euo pipefail
cd "$(dirname "$0")/../.."

scripts/setup.sh bench
scripts/services.sh
cargo build --release --quiet -p obleth -p obleth-mock-upstream

source tests/bench/lib.sh

start_upstream

OB=$(port)
{
  obleth_head "$OB" "$(port)" "sqlite://$work/obleth.db" bench
  llm_bench_sections "obleth-bench-$$:"
} >"$work/obleth.yaml"
start_obleth_release obleth "$OB"
OB_PID=$OBLETH_PID

# The same configuration served by another build (an earlier commit's), to
# compare before and after in one run.
BASE=${OBLETH_BASELINE:-}
if [[ -n $BASE ]]; then
  BASE_OB=$(port)
  sed -e "s/127.0.0.1:$OB\"/127.0.0.1:$BASE_OB\"/" \
    -e "s/^admin: .*/admin: { address: \"127.0.0.1:$(port)\" }/" \
    -e "s/^metrics: .*/metrics: { address: \"127.0.0.1:$(port)\" }/" \
    -e "s#$work/obleth.db#$work/baseline.db#" \
    -e "s/obleth-bench-$$:/obleth-bench-base-$$:/" "$work/obleth.yaml" >"$work/baseline.yaml"
  OBLETH_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 OBLETH_WAL_PATH="$work/baseline-wal" \
    taskset -c "$PROXY_CORE" "$BASE" run -c "$work/baseline.yaml" >/dev/null 2>"$work/baseline.err" &
  BASE_PID=$!
  pids+=("$BASE_PID")
  wait_port "$BASE_OB"
fi

chat_scripts
for port in "$OB" ${BASE_OB:-}; do llm_prime "$port"; done

for _ in $(seq "$ROUNDS"); do
  run direct "http://127.0.0.1:$UP/v1/chat/completions" "$UP_PID" -s "$work/chat.lua"
  run proxy-route "http://127.0.0.1:$OB/plain/v1/chat/completions" "$OB_PID" -s "$work/chat.lua"
  run llm-route "http://127.0.0.1:$OB/v1/chat/completions" "$OB_PID" -s "$work/chat.lua"
  run llm-route+budget "http://127.0.0.1:$OB/v1/chat/completions" "$OB_PID" -s "$work/chat-budget.lua"
  if [[ -n $BASE ]]; then
    run baseline:llm-route "http://127.0.0.1:$BASE_OB/v1/chat/completions" "$BASE_PID" -s "$work/chat.lua"
    run baseline:llm-route+budget "http://127.0.0.1:$BASE_OB/v1/chat/completions" "$BASE_PID" -s "$work/chat-budget.lua"
  fi
done

echo
echo "LLM route benchmark: wrk -t1 -c$CONNECTIONS -d${DURATION}s POST /v1/chat/completions (max_tokens 2), median of $ROUNDS rounds"
echo "proxy-route: plain proxy, no auth; llm-route: key auth (cached), body parse, model + credential rewrite;"
echo "llm-route+budget: the same for a tenant with limits: Lua reserve before and settle after, Redis on loopback"
[[ -z $BASE ]] || echo "baseline:*: the same rows served by $BASE"
echo
table "$ROUNDS" proxy-route
