#!/usr/bin/env bash
# Runs obleth on its embedded default (conf/obleth.yaml) in front of the mock
# OpenAI-compatible upstream, sends requests through it, and keeps serving
# until Ctrl-C. `--once` stops after the demo requests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --quiet -p obleth -p obleth-mock-upstream

# A process already on one of the demo's ports would answer in obleth's
# place: refuse to start rather than show another process's answers.
for port in 8000 8080 9090 9091; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is already in use; stop what listens there first" >&2
    exit 1
  fi
done

fail() { echo "demo: $*" >&2; exit 1; }

# A token of this run only: the admin API answering it proves the obleth on
# :9090 is the one started here.
export OBLETH_ADMIN_TOKEN="demo-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/debug/obleth-mock-upstream --listen 127.0.0.1:8000 --name mock-vllm --tokens-per-second 50 &
pids+=($!)
target/debug/obleth run -c conf/obleth.yaml &
obleth=$!
pids+=("$obleth")

ready=""
for _ in $(seq 200); do
  kill -0 "$obleth" 2>/dev/null || fail "obleth exited during start-up"
  if curl -fs http://127.0.0.1:9090/readyz >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || fail "obleth was not ready within 20 s"
curl -fs -o /dev/null -H "authorization: Bearer $OBLETH_ADMIN_TOKEN" http://127.0.0.1:9090/api/v1/groups \
  || fail "the admin API on :9090 does not know this run's token: another process answers there"

echo
echo "== GET / (a fixed response route)"
curl -fsS http://127.0.0.1:8080/
echo
KEY=obk_demo_0000000000000000000000000000   # the demo key seeded by conf/obleth.yaml
echo "== GET /v1/models with the demo tenant's key"
curl -fsS http://127.0.0.1:8080/v1/models -H "authorization: Bearer $KEY"
echo
echo "== without a key: 401 in the OpenAI error shape"
body=$(curl -sS -w '\n%{http_code}' http://127.0.0.1:8080/v1/models)
echo "${body%$'\n'*}"
[ "${body##*$'\n'}" = 401 ] || fail "expected 401 without a key, got ${body##*$'\n'}"
grep -q '"type":"authentication_error"' <<<"$body" || fail "the 401 is not in the OpenAI error shape"
echo "== POST /v1/chat/completions through obleth to the mock upstream"
reply=$(curl -fsS http://127.0.0.1:8080/v1/chat/completions \
  -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":5}')
echo "$reply"
grep -q '"completion_tokens":5' <<<"$reply" || fail "the completion did not come back with its usage"
echo
echo "== the same, streamed"
stream=$(curl -fsSN http://127.0.0.1:8080/v1/chat/completions \
  -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":5,"stream":true}')
echo "$stream"
grep -q '^data: \[DONE\]' <<<"$stream" || fail "the stream did not end with [DONE]"
echo "== metrics (excerpt)"
curl -fsS http://127.0.0.1:9091/metrics | grep '^obleth_http_requests_total' | grep -v ' 0$'

echo
echo "== the dashboard on the admin listener"
curl -fsS http://127.0.0.1:9090/ui/ | grep -q '/ui/assets/' || fail "the dashboard is not served on :9090/ui/"
echo "http://127.0.0.1:9090/ui/ (sign in with the development dashboard password obleth printed above)"

if [ "${1:-}" = --once ]; then
  exit 0
fi
echo
echo "obleth serves on http://127.0.0.1:8080 (admin :9090 with the dashboard on /ui/, metrics :9091); Ctrl-C stops it."
wait
