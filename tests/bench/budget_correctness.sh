#!/usr/bin/env bash
# Budget correctness under contention: two obleth processes sharing one
# Redis and one Postgres, CLIENTS concurrent clients hammering one tenant
# that has a small term budget and a tokens-per-minute limit, the upstream
# reporting real usage. Prints the budget, the committed spend, the usage the
# upstream reported for admitted requests, the overshoot and the refusals.
#
#   tests/bench/budget_correctness.sh          # 200 clients for 25 s
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-200}
SECONDS_OF_LOAD=${SECONDS_OF_LOAD:-25}
BUDGET=${BUDGET:-80000}
TPM=${TPM:-60000}
KEY=obk_budget_correctness_000000000

scripts/setup.sh
scripts/services.sh
cargo build --release --quiet -p obleth -p obleth-mock-upstream
LOAD_CORE=0 DURATION=1 CONNECTIONS=1 WARMUP=1
source tests/bench/lib.sh

db=obleth_bench_$$
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
drop_db() { psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap 'cleanup; drop_db' EXIT INT TERM

UP=$(port)
target/release/obleth-mock-upstream --listen "127.0.0.1:$UP" --threads 1 >/dev/null &
pids+=($!)
wait_port "$UP"

prefix="obleth-correctness-$$:"
start() { # name -> sets STARTED_PORT STARTED_ADMIN
  local p a
  p=$(port); a=$(port)
  cat >"$work/$1.yaml" <<YAML
server: { threads: 1, grace: 1s }
listeners: [{ address: "127.0.0.1:$p" }]
admin: { address: "127.0.0.1:$a" }
metrics: { address: "127.0.0.1:$(port)" }
access_log: { format: "off" }
store: { database_url: "postgres://postgres@127.0.0.1:5432/$db" }
redis: { url: "redis://127.0.0.1:6379", prefix: "$prefix" }
pools: [{ name: p, servers: [{ address: "127.0.0.1:$UP" }] }]
seed:
  tenants: [{ name: acme, budget_tokens: $BUDGET, tokens_per_minute: $TPM }]
  models: [{ name: m, pool: p, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }]
  keys: [{ tenant: acme, name: k, secret: $KEY }]
routes: [{ name: llm, match: { path: { prefix: /v1/ } }, llm: {} }]
YAML
  OBLETH_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 target/release/obleth run -c "$work/$1.yaml" >/dev/null 2>"$work/$1.err" &
  pids+=($!)
  wait_port "$p"
  STARTED_PORT=$p STARTED_ADMIN=$a
}
start a; A=$STARTED_PORT; ADMIN=$STARTED_ADMIN
start b; B=$STARTED_PORT

load=$(python3 tests/bench/budget_correctness.py "http://127.0.0.1:$A,http://127.0.0.1:$B" "$KEY" "$CLIENTS" "$SECONDS_OF_LOAD")
standing=$(curl -fsS -H "authorization: Bearer bench-admin-token-0123456789abcdef0123" "http://127.0.0.1:$ADMIN/api/v1/tenants/acme/budget")

python3 - "$load" "$standing" "$BUDGET" "$CLIENTS" "$SECONDS_OF_LOAD" "$TPM" <<'PY'
import json, sys
load, standing = json.loads(sys.argv[1]), json.loads(sys.argv[2])
budget, clients, seconds, tpm = int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
committed = standing["standing"]["committed_tokens"]
reported = load["reported"]
s = load["statuses"]
print(f"budget correctness: 2 obleth processes, 1 Redis, {clients} concurrent clients for {seconds} s, tokens_per_minute {tpm}")
print(f"| budget (tokens) | committed | reported by upstream (admitted) | overshoot | committed - reported | admitted | 403 budget | 429 rate | other |")
print(f"| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
other = sum(v for k, v in s.items() if k not in ("200", "403", "429"))
print(f"| {budget} | {committed} | {reported} | {committed - budget} | {committed - reported} | {s.get('200', 0)} | {s.get('403', 0)} | {s.get('429', 0)} | {other} |")
ok = committed <= budget and committed == reported and standing["standing"]["reserved_tokens"] == 0
print("result:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
