#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test obleth:
# cmake (Pingora's zlib-ng build), the OpenSSL headers (the one TLS stack),
# pkg-config, curl, the openssl tool (tests make certificates with it),
# Node.js and Chromium (the dashboard's build and browser tests) and
# clickhouse-server and zookeeper (the telemetry tests start their own),
# redis-sentinel and redis-tools (the Redis topology tests start sentinels and
# a cluster), the OTLP protos
# for the tracing tests, and the deployment checks' tools (deploy-tools.sh).
# Benchmarks additionally need haproxy, wrk and valgrind: `scripts/setup.sh bench`.
set -euo pipefail

need=()
for pair in cmake:cmake pkg-config:pkg-config curl:curl openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
# The compose check runs HAProxy in a network namespace of its own.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The Redis topology tests run their own sentinels and cluster nodes.
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# Usage telemetry tests run their own ClickHouse servers (Debian's 18.16).
[ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server)
# The replicated-ClickHouse tests run their own ZooKeeper (Debian's, on Java).
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
# The dashboard's front end is built with npm; its browser tests drive
# Debian's headless Chromium.
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ "${1:-}" = bench ]; then
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The compatibility test drives obleth with the official OpenAI client.
if ! python3 -c 'import openai' >/dev/null 2>&1; then
  echo "setup: installing the openai Python client"
  python3 -m pip install --quiet openai
fi

# The MCP gateway tests run a real MCP server and client: the official
# Python SDK.
if ! python3 -c 'import mcp.server.mcpserver' >/dev/null 2>&1; then
  echo "setup: installing the mcp Python SDK"
  python3 -m pip install --quiet 'mcp>=2.3,<3'
fi

# The tracing tests decode OTLP exports with the official protos.
if ! python3 -c 'import opentelemetry.proto' >/dev/null 2>&1; then
  echo "setup: installing opentelemetry-proto"
  python3 -m pip install --quiet opentelemetry-proto
fi

# The admin API's OpenAPI document is checked by a bounded schemathesis run
# (tests/schemathesis.sh; its CLI is version 4).
if ! python3 -c 'import schemathesis' >/dev/null 2>&1; then
  echo "setup: installing schemathesis"
  python3 -m pip install --quiet 'schemathesis>=4,<5'
fi

# The deployment checks read YAML (PyYAML) and need helm, kubectl,
# kubernetes-validate, promtool, haproxy and Docker Compose.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "setup: installing PyYAML"
  python3 -m pip install --quiet pyyaml
fi
"$(dirname "$0")/deploy-tools.sh"
"$(dirname "$0")/build-dashboard.sh"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
