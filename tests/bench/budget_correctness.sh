#!/usr/bin/env bash
# Budget correctness under contention: two obleth processes sharing one
# Redis and one Postgres, CLIENTS concurrent clients hammering one tenant
# that has a small term budget and a tokens-per-minute limit. A third of
# the requests are plain completions, a third full streams (half asking for
# usage), a third streams the client leaves after a few tokens. A relay in
# front of the mock upstream (tests/bench/usage_relay.py) records what the
# upstream itself reported for every request it served, or, for a stream
# cut off without usage, how many tokens it had generated; the check is
# against that, not against what clients saw. Prints the budget, the
# committed spend, the upstream's account, the bounds the left streams put
# on the charge, the overshoot and the refusals.
#
#   tests/bench/budget_correctness.sh          # 200 clients for 25 s
#   PROFILE=debug CLIENTS=20 SECONDS_OF_LOAD=5 tests/bench/budget_correctness.sh
#
# Committed spend must be at most the budget and equal the upstream's
# reported usage plus, for each left stream, obleth's prompt estimate and
# between the tokens its client saw and the tokens the upstream generated.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-200}
SECONDS_OF_LOAD=${SECONDS_OF_LOAD:-25}
BUDGET=${BUDGET:-80000}
TPM=${TPM:-60000}
KEY=obk_budget_correctness_000000000

PROFILE=${PROFILE:-release}
scripts/setup.sh
scripts/services.sh
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet -p obleth -p obleth-mock-upstream
else
  cargo build --quiet -p obleth -p obleth-mock-upstream
fi
bin=target/$PROFILE
LOAD_CORE=0 DURATION=1 CONNECTIONS=1 WARMUP=1
source tests/bench/lib.sh

db=obleth_bench_$$
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
drop_db() { psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap 'cleanup; drop_db' EXIT INT TERM

MOCK=$(port)
$bin/obleth-mock-upstream --listen "127.0.0.1:$MOCK" --threads 1 >/dev/null &
pids+=($!)
wait_port "$MOCK"
# obleth's upstream is the relay, which records the mock's answers.
UP=$(port)
python3 tests/bench/usage_relay.py "$UP" "$MOCK" &
pids+=($!)
wait_port "$UP"

prefix="obleth-correctness-$$:"
start() { # name -> sets STARTED_PORT STARTED_ADMIN
  local p a
  p=$(port); a=$(port)
  {
    obleth_head "$p" "$a" "postgres://postgres@127.0.0.1:5432/$db"
    cat <<YAML
redis: { url: "redis://127.0.0.1:6379", prefix: "$prefix" }
telemetry: { wal_path: "$work/$1-wal" }
pools: [{ name: p, servers: [{ address: "127.0.0.1:$UP" }] }]
seed:
  tenants: [{ name: acme, budget_tokens: $BUDGET, tokens_per_minute: $TPM }]
  models: [{ name: m, pool: p, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }]
  keys: [{ tenant: acme, name: k, secret: $KEY }]
routes: [{ name: llm, match: { path: { prefix: /v1/ } }, llm: {} }]
YAML
  } >"$work/$1.yaml"
  OBLETH_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 $bin/obleth run -c "$work/$1.yaml" >/dev/null 2>"$work/$1.err" &
  pids+=($!)
  wait_port "$p"
  STARTED_PORT=$p STARTED_ADMIN=$a
}
start a; A=$STARTED_PORT; ADMIN=$STARTED_ADMIN
start b; B=$STARTED_PORT

load=$(python3 tests/bench/budget_correctness.py "http://127.0.0.1:$A,http://127.0.0.1:$B" "$KEY" "$CLIENTS" "$SECONDS_OF_LOAD")
# Settlement happens after the response: wait until nothing is reserved.
budget_url="http://127.0.0.1:$ADMIN/api/v1/tenants/acme/budget"
for _ in $(seq 300); do
  standing=$(curl -fsS -H "authorization: Bearer bench-admin-token-0123456789abcdef0123" "$budget_url")
  python3 -c 'import json,sys; s=json.loads(sys.argv[1])["standing"]; sys.exit(0 if s["reserved_tokens"] == 0 else 1)' "$standing" && break
  sleep 0.1
done
upstream=$(curl -fsS "http://127.0.0.1:$UP/__usage")

python3 - "$load" "$standing" "$upstream" "$BUDGET" "$CLIENTS" "$SECONDS_OF_LOAD" "$TPM" <<'PY'
import json, sys
load, standing, upstream = (json.loads(a) for a in sys.argv[1:4])
budget, clients, seconds, tpm = int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
committed = standing["standing"]["committed_tokens"]
reported = sum(r["usage"] for r in upstream.values() if "usage" in r)
cut = {i: r["generated"] for i, r in upstream.items() if "usage" not in r}
left = load["left"]
# A stream cut off without usage is charged obleth's prompt estimate plus
# the tokens it metered: at least what its client saw, at most what the
# upstream generated.
unexplained = sorted(i for i in cut if i not in left)
low = reported + sum(left[i]["prompt_estimate"] + left[i]["seen"] for i in cut if i in left)
high = reported + sum(left[i]["prompt_estimate"] + g for i, g in cut.items() if i in left)
s = load["statuses"]
other = sum(v for k, v in s.items() if k not in ("200", "403", "429"))
print(f"budget correctness: 2 obleth processes, 1 Redis, {clients} concurrent clients for {seconds} s, tokens_per_minute {tpm}")
print("| budget (tokens) | committed | reported by upstream | streams cut (upstream-generated tokens) | allowed committed | clients saw usage of | overshoot | admitted | 403 budget | 429 rate | other |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| {budget} | {committed} | {reported} | {len(cut)} ({sum(cut.values())}) | {low}..{high} | {load['client_reported']} | {committed - budget} | {s.get('200', 0)} | {s.get('403', 0)} | {s.get('429', 0)} | {other} |")
if unexplained:
    print(f"upstream answers without usage that no client left: {unexplained[:10]}")
ok = (committed <= budget and low <= committed <= high and not unexplained
      and standing["standing"]["reserved_tokens"] == 0)
print("result:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
