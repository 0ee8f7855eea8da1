#!/usr/bin/env bash
# Fairness of admission: tenants A and B (weights 3:1) flood a model pool of
# 4 slots, a light tenant C joins later; the upstream (the mock) serves at a
# fixed token rate. Runs C alone, then all three with fair queuing, then with
# FIFO as the baseline, and prints per tenant the completed requests and
# tokens, the service ratio against the weights, Jain's index over
# weight-normalised service, the largest service gap seen between A and B,
# and C's queue wait p50/p99 against its solo run.
#
#   tests/bench/fairness.sh            # 30 s per shared run
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_OF_LOAD=${SECONDS_OF_LOAD:-30}
TOKEN=bench-admin-token-0123456789abcdef0123
KEYS=obk_fairness_a_0000000000000000000,obk_fairness_b_0000000000000000000,obk_fairness_c_0000000000000000000

scripts/setup.sh
cargo build --release --quiet -p obleth -p obleth-mock-upstream
LOAD_CORE=0 DURATION=1 CONNECTIONS=1 WARMUP=1
source tests/bench/lib.sh

UP=$(port)
target/release/obleth-mock-upstream --listen "127.0.0.1:$UP" --threads 1 >/dev/null &
pids+=($!)
wait_port "$UP"

# run ORDER [solo] -> JSON line of fairness.py
run_once() {
  local p a pid out
  p=$(port); a=$(port)
  IFS=, read -r ka kb kc <<<"$KEYS"
  {
    obleth_head "$p" "$a" "sqlite://$work/obleth-$1.db"
    cat <<YAML
admission: { order: $1, brownout_wait: 0, timeout: 120s }
pools: [{ name: p, servers: [{ address: "127.0.0.1:$UP" }] }]
seed:
  tenants: [{ name: a, weight: 300 }, { name: b, weight: 100 }, { name: c, weight: 100 }]
  models: [{ name: m, pool: p, max_in_flight: 4 }]
  keys: [{ tenant: a, name: k, secret: $ka }, { tenant: b, name: k, secret: $kb }, { tenant: c, name: k, secret: $kc }]
routes: [{ name: llm, match: { path: { prefix: /v1/ } }, llm: {} }]
YAML
  } >"$work/obleth.yaml"
  OBLETH_ADMIN_TOKEN=$TOKEN target/release/obleth run -c "$work/obleth.yaml" >/dev/null 2>"$work/obleth.err" &
  pid=$!
  wait_port "$p"
  local secs=$SECONDS_OF_LOAD
  [ "${2:-}" = solo ] && secs=10
  out=$(python3 tests/bench/fairness.py "http://127.0.0.1:$p" "$KEYS" "$secs" "${2:-}")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$out"
}

solo=$(run_once fair solo)
fair=$(run_once fair)
fifo=$(run_once fifo)

python3 - "$solo" "$fair" "$fifo" "$SECONDS_OF_LOAD" <<'PY'
import json, sys
solo, fair, fifo = (json.loads(a) for a in sys.argv[1:4])
seconds = sys.argv[4]
W = {"A": 3, "B": 1, "C": 1}
print(f"fairness: model pool of 4 slots, upstream at 2000 tokens/s per request, A and B 12 clients each "
      f"for {seconds} s (first 3 s not counted), C one request every 0.3 s from 5 s on")
print()
print("| order | tenant | weight | requests | tokens | A:B tokens (target 3.00) | Jain's index (A, B, weight-normalised) | final imbalance A/3 - B (tokens) | largest gap, any window | largest gap, 1 s windows |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
verdict = []
for name, run in (("fair", fair), ("fifo", fifo)):
    d = run["done"]
    ratio = d["A"][1] / max(1, d["B"][1])
    x = [d["A"][1] / W["A"], d["B"][1] / W["B"]]
    jain = sum(x) ** 2 / (len(x) * sum(v * v for v in x))
    for t in "ABC":
        g = run["gap"]
        extra = (f"{ratio:.2f} | {jain:.3f} | {g['final']:.0f} | {g['any_window']:.0f} | {g['window_1s']:.0f}"
                 if t == "A" else " | | | | ")
        print(f"| {name} | {t} | {W[t]} | {d[t][0]} | {d[t][1]} | {extra} |")
    if name == "fair":
        verdict.append(("A:B within 5 % of 3:1", abs(ratio - 3) / 3 <= 0.05))
print()
print("| C's queue wait | requests | p50 ms | p99 ms |")
print("| --- | ---: | ---: | ---: |")
for name, run in (("alone", solo), ("with A and B, fair", fair), ("with A and B, fifo", fifo)):
    print(f"| {name} | {run['c_n']} | {run['c_p50_ms']:.1f} | {run['c_p99_ms']:.1f} |")
# One request's service time: the largest request (150 tokens) at 2000 tokens/s.
verdict.append(("C p99 within one service time (75 ms) of solo", fair["c_p99_ms"] <= solo["c_p99_ms"] + 75))
errors = {k: r["errors"] for k, r in (("solo", solo), ("fair", fair), ("fifo", fifo)) if r["errors"]}
if errors:
    print("errors:", errors)
print()
for what, ok in verdict:
    print(f"{what}: {'ok' if ok else 'MISSED'}")
sys.exit(0 if all(ok for _, ok in verdict) and not errors else 1)
PY
