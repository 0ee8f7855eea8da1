#!/usr/bin/env bash
# The LLM chain against its references, in one run: the same small chat
# completion (JSON and streaming, at 1 and 32 connections) sent
#   direct        to the mock upstream itself;
#   haproxy       through HAProxy (one thread) in front of it;
#   plain         through an obleth `proxy` route;
#   llm           through an obleth `llm` route, tenant without limits;
#   full-chain    through a second obleth with the whole chain: cached key,
#                 a per-minute and a term budget in Redis (leases), fair
#                 admission, the usage WAL and the access log to a file;
#   full-process  the same, with `telemetry.durability: process`: an
#                 intent waits for its write, not its fdatasync;
#   litellm       through the LiteLLM proxy (one worker, master key, no
#                 database), installed into a throwaway venv; its rows are
#                 left out when the install fails.
# Proxies get core 0 alone (one thread or worker); wrk and the upstream
# share core 1. Prints req/s, p50, p99, the latency added over direct, CPU
# per request, and the ratios the targets are set in (docs/benchmarks.md).
#
#   tests/bench/llm_chain.sh                 # 3 rounds of 10 s per row
#   DURATION=3 ROUNDS=1 tests/bench/llm_chain.sh
#   LITELLM=0 tests/bench/llm_chain.sh       # without LiteLLM
set -euo pipefail
cd "$(dirname "$0")/../.."

scripts/setup.sh bench
scripts/services.sh
cargo build --release --quiet -p obleth -p obleth-mock-upstream

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
source tests/bench/lib.sh

start_upstream

# obleth for the plain and llm rows, access log off.
OB=$(port)
{
  obleth_head "$OB" "$(port)" "sqlite://$work/obleth.db" bench
  llm_bench_sections "obleth-chain-$$:"
} >"$work/obleth.yaml"
start_obleth_release obleth "$OB"
OB_PID=$OBLETH_PID

# full_chain_config PORT NAME [TELEMETRY_EXTRA]: an obleth with the whole
# chain, the access log written to a file.
full_chain_config() {
  obleth_head "$1" "$(port)" "sqlite://$work/$2.db" bench |
    sed "s#^access_log: .*#access_log: { format: httplog, path: \"$work/$2-access.log\" }#"
  echo "telemetry: { wal_path: \"$work/$2-wal\"${3:+, $3} }"
  llm_bench_sections "obleth-chain-$2-$$:"
}

FULL=$(port)
full_chain_config "$FULL" full >"$work/full.yaml"
start_obleth_release full "$FULL"
FULL_PID=$OBLETH_PID

FULLP=$(port)
full_chain_config "$FULLP" process "durability: process" >"$work/process.yaml"
start_obleth_release process "$FULLP"
FULLP_PID=$OBLETH_PID

HP=$(port)
haproxy_config "$work/haproxy.cfg" "$HP" "$UP"
taskset -c "$PROXY_CORE" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
HP_PID=$!
pids+=("$HP_PID")
wait_port "$HP"

# LiteLLM in a venv of its own (outside the repository), one worker.
LL=""
if [[ ${LITELLM:-1} != 0 ]]; then
  venv=${LITELLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/obleth-bench/litellm-venv}
  if [[ ! -x $venv/bin/litellm ]]; then
    echo "llm_chain: installing litellm[proxy] into $venv" >&2
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'litellm[proxy]'; } >"$work/litellm-install.log" 2>&1 ||
      { echo "llm_chain: litellm install failed; its rows are left out" >&2; tail -5 "$work/litellm-install.log" >&2; }
  fi
  if [[ -x $venv/bin/litellm ]]; then
    LL=$(port)
    cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:$UP/v1
      api_key: upstream-key
general_settings:
  master_key: sk-bench-master-key
litellm_settings:
  telemetry: false
YAML
    LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
      taskset -c "$PROXY_CORE" "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$LL" --num_workers 1 \
      >"$work/litellm.log" 2>&1 &
    LL_PID=$!
    pids+=("$LL_PID")
    wait_port "$LL" 120 || { tail -20 "$work/litellm.log" >&2; LL=""; }
  fi
fi

chat_scripts
sed 's/"max_tokens":2}/"max_tokens":2,"stream":true}/' "$work/chat.lua" >"$work/stream.lua"
sed 's/"max_tokens":2}/"max_tokens":2,"stream":true}/' "$work/chat-budget.lua" >"$work/stream-budget.lua"
sed "s/Bearer $KEY/Bearer sk-bench-master-key/" "$work/chat.lua" >"$work/chat-litellm.lua"
sed "s/Bearer $KEY/Bearer sk-bench-master-key/" "$work/stream.lua" >"$work/stream-litellm.lua"
llm_prime "$OB"
llm_prime "$FULL"
llm_prime "$FULLP"
if [[ -n $LL ]]; then
  curl -fsS -o /dev/null "http://127.0.0.1:$LL/v1/chat/completions" -H "authorization: Bearer sk-bench-master-key" \
    -H 'content-type: application/json' -d '{"model":"bench-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1}' ||
    { echo "llm_chain: litellm does not answer; its rows are left out" >&2; LL=""; }
fi

for mode in chat stream; do
  for c in 1 32; do
    CONNECTIONS=$c
    suffix="$mode@$c"
    for _ in $(seq "$ROUNDS"); do
      run "direct/$suffix" "http://127.0.0.1:$UP/v1/chat/completions" "$UP_PID" -s "$work/$mode.lua"
      run "haproxy/$suffix" "http://127.0.0.1:$HP/v1/chat/completions" "$HP_PID" -s "$work/$mode.lua"
      run "plain/$suffix" "http://127.0.0.1:$OB/plain/v1/chat/completions" "$OB_PID" -s "$work/$mode.lua"
      run "llm/$suffix" "http://127.0.0.1:$OB/v1/chat/completions" "$OB_PID" -s "$work/$mode.lua"
      run "full-chain/$suffix" "http://127.0.0.1:$FULL/v1/chat/completions" "$FULL_PID" -s "$work/$mode-budget.lua"
      run "full-process/$suffix" "http://127.0.0.1:$FULLP/v1/chat/completions" "$FULLP_PID" -s "$work/$mode-budget.lua"
      [[ -z $LL ]] || run "litellm/$suffix" "http://127.0.0.1:$LL/v1/chat/completions" "$LL_PID" -s "$work/$mode-litellm.lua"
    done
  done
done

echo
echo "LLM chain benchmark: wrk -t1 -d${DURATION}s POST /v1/chat/completions (max_tokens 2), JSON (chat) and SSE (stream),"
echo "at 1 and 32 connections, median of $ROUNDS rounds; proxies on core $PROXY_CORE, wrk and the upstream on core $LOAD_CORE"
echo
table "$ROUNDS" "direct/chat@1" >"$work/table.md"
cat "$work/table.md"

# Added latency over direct and the target ratios, per mode and connections.
echo
awk '
  /^\| [a-z-]+\/[a-z]+@[0-9]+ / {
    split($2, t, "/"); who = t[1]; at = t[2]
    rps[who, at] = $4; p50[who, at] = $6; p99[who, at] = $8; cpu[who, at] = $10
    seen[at] = 1; if (!(who in known)) { known[who] = 1; order[++n] = who }
  }
  END {
    printf "| row | added p50 (us) | added p99 (us) | CPU us/req |\n| --- | ---: | ---: | ---: |\n"
    for (at in seen) for (i = 1; i <= n; i++) {
      w = order[i]; if (w == "direct" || !((w, at) in rps)) continue
      printf "| %s/%s | %.0f | %.0f | %.1f |\n", w, at, p50[w, at] - p50["direct", at], p99[w, at] - p99["direct", at], cpu[w, at]
    }
    print ""
    print "| ratio | value | target |"
    print "| --- | ---: | --- |"
    for (m = 1; m <= 2; m++) for (f = 1; f <= 2; f++) {
      mode = m == 1 ? "chat" : "stream"; one = mode "@1"; many = mode "@32"
      fc = f == 1 ? "full-chain" : "full-process"; name = f == 1 ? "full chain" : "full chain (durability: process)"
      if (!((fc, one) in p50)) continue
      ha50 = p50["haproxy", one] - p50["direct", one]; ha99 = p99["haproxy", one] - p99["direct", one]
      fc50 = p50[fc, one] - p50["direct", one]; fc99 = p99[fc, one] - p99["direct", one]
      if (ha50 > 0) printf "| %s: %s added p50 / HAProxy added p50, 1 connection | %.2fx | <= 1.5x |\n", mode, name, fc50 / ha50
      if (ha99 > 0) printf "| %s: %s added p99 / HAProxy added p99, 1 connection | %.2fx | <= 2x |\n", mode, name, fc99 / ha99
      if (rps["plain", many] > 0) printf "| %s: %s req/s / plain route req/s, 32 connections | %.2fx | >= 0.8x |\n", mode, name, rps[fc, many] / rps["plain", many]
      if (("litellm", many) in rps && rps["litellm", many] > 0) {
        printf "| %s: %s req/s / LiteLLM req/s, 32 connections | %.0fx | >= 100x |\n", mode, name, rps[fc, many] / rps["litellm", many]
        ll50 = p50["litellm", one] - p50["direct", one]
        if (fc50 > 0) printf "| %s: LiteLLM added p50 / %s added p50, 1 connection | %.0fx | >= 30x |\n", mode, name, ll50 / fc50
      }
    }
  }' "$work/table.md"
echo
echo "full chain: $(wc -l <"$work/full-access.log") access log lines written; budgets: $(curl -s "http://127.0.0.1:$(awk -F'"' '/^metrics:/ {split($2, a, ":"); print a[2]}' "$work/full.yaml")/metrics" | awk '/^obleth_budget_admissions_total/ {printf "%s ", $0}')"
