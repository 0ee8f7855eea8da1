#!/usr/bin/env bash
# What key auth, LLM routing and budgets cost in instructions per request,
# counted by valgrind's callgrind: tests/bench/llm_auth.sh's chat completion
# request sent through a plain `proxy` route, through an `llm` route for a
# tenant without limits and for a tenant with a token budget and a
# per-minute limit (reserve and settle in Redis on loopback), in the same
# run. Counting instructions instead of timing them gives figures that do
# not move with a noisy machine, so builds compare well; they cover user
# space only (obleth's own threads, not Redis or the kernel).
#
#   tests/bench/llm_instructions.sh         # 8 s of load per target
#   OBLETH_BASELINE=path/to/obleth tests/bench/llm_instructions.sh
#                                           # plus that binary's llm rows
#   OBLETH_BIN=path/to/obleth ...           # counts that binary instead of
#                                           # target/release/obleth
#   SKIP_BUILD=1 ...                        # uses the binaries already built
#   PROFILE=40 ...                          # also each target's 40 costliest
#                                           # functions (inclusive, per request)
set -euo pipefail
cd "$(dirname "$0")/../.."

# This harness's own defaults (lib.sh's are the wrk comparisons').
DURATION=${DURATION:-8} CONNECTIONS=${CONNECTIONS:-8} WARMUP=${WARMUP:-3}
PROFILE=${PROFILE:-0}
OBLETH_BIN=${OBLETH_BIN:-target/release/obleth}
BASE=${OBLETH_BASELINE:-}

scripts/setup.sh bench
scripts/services.sh
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --quiet -p obleth -p obleth-mock-upstream

source tests/bench/lib.sh

start_upstream
chat_scripts

# count_llm NAME BINARY PREFIX: BINARY under callgrind with the LLM
# comparisons' configuration on its own ports, database, WAL directory and
# Redis key prefix (all named after NAME); counts the rows PREFIXllm-route
# and PREFIXllm-route+budget, and proxy-route when PREFIX is empty.
count_llm() {
  local name=$1 bin=$2 prefix=$3 p
  p=$(port)
  {
    obleth_head "$p" "$(port)" "sqlite://$work/$name.db" bench
    echo "telemetry: { wal_path: \"$work/$name-wal\" }"
    llm_bench_sections "obleth-bench-$name-$$:"
  } >"$work/$name.yaml"
  OBLETH_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 \
    callgrind_start "$name" "$p" "$bin" run -c "$work/$name.yaml"
  llm_prime "$p"
  [[ -n $prefix ]] ||
    callgrind_count "$CG_PID" proxy-route "http://127.0.0.1:$p/plain/v1/chat/completions" -s "$work/chat.lua"
  callgrind_count "$CG_PID" "${prefix}llm-route" "http://127.0.0.1:$p/v1/chat/completions" -s "$work/chat.lua"
  callgrind_count "$CG_PID" "${prefix}llm-route+budget" "http://127.0.0.1:$p/v1/chat/completions" -s "$work/chat-budget.lua"
  callgrind_stop "$CG_PID"
}

count_llm obleth "$OBLETH_BIN" ""
# The same rows served by another build (an earlier commit's), to compare
# before and after in one run.
[[ -z $BASE ]] || count_llm baseline "$BASE" baseline:

echo
echo "user-space instructions per request (callgrind), wrk -t1 -c$CONNECTIONS -d${DURATION}s POST /v1/chat/completions (max_tokens 2) after a ${WARMUP}s warm-up"
echo "proxy-route: plain proxy, no auth; llm-route: key auth (cached), body parse, model + credential rewrite;"
echo "llm-route+budget: the same for a tenant with limits: Lua reserve before and settle after, Redis on loopback"
if [[ $OBLETH_BIN == target/release/obleth && ${SKIP_BUILD:-0} != 1 ]]; then
  echo "obleth: $OBLETH_BIN, built from the checkout at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
else
  echo "obleth: $OBLETH_BIN"
fi
[[ -z $BASE ]] || echo "baseline:*: the same rows served by $BASE"
echo
count_table proxy-route
