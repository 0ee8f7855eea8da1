#!/usr/bin/env bash
# Runs obleth on its embedded default (conf/obleth.yaml) in front of the mock
# OpenAI-compatible upstream, sends requests through it, and keeps serving
# until Ctrl-C. `--once` stops after the demo requests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --quiet -p obleth -p obleth-mock-upstream

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/debug/obleth-mock-upstream --listen 127.0.0.1:8000 --name mock-vllm --tokens-per-second 50 &
pids+=($!)
target/debug/obleth run -c conf/obleth.yaml &
pids+=($!)

for _ in $(seq 100); do
  curl -fs http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

echo
echo "== GET / (a fixed response route)"
curl -fsS http://127.0.0.1:8080/
echo
KEY=obk_demo_0000000000000000000000000000   # the demo key seeded by conf/obleth.yaml
echo "== GET /v1/models with the demo tenant's key"
curl -fsS http://127.0.0.1:8080/v1/models -H "authorization: Bearer $KEY"
echo
echo "== without a key: 401 in the OpenAI error shape"
curl -sS http://127.0.0.1:8080/v1/models
echo
echo "== POST /v1/chat/completions through obleth to the mock upstream"
curl -fsS http://127.0.0.1:8080/v1/chat/completions \
  -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":5}'
echo
echo
echo "== the same, streamed"
curl -fsSN http://127.0.0.1:8080/v1/chat/completions \
  -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":5,"stream":true}'
echo "== metrics (excerpt)"
curl -fsS http://127.0.0.1:9091/metrics | grep '^obleth_http_requests_total' | grep -v ' 0$'

if [ "${1:-}" = --once ]; then
  exit 0
fi
echo
echo "obleth serves on http://127.0.0.1:8080 (admin :9090, metrics :9091); Ctrl-C stops it."
wait
