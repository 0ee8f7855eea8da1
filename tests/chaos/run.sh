#!/usr/bin/env bash
# The chaos harness, one command: two obleth replicas under closed-loop load
# through a replica SIGKILL, ClickHouse frozen then stopped, Redis killed and
# restarted empty, and PostgreSQL restarted; then one table of sent,
# completed, rows, missing, duplicates and budget overshoot. Exits non-zero
# when missing, duplicates or overshoot are above 0.
#
#   tests/chaos/run.sh                    # 180 s of load, everything local
#   CHAOS_SECONDS=90 tests/chaos/run.sh   # shorter
#   tests/chaos/run.sh --target http://replica-1:8080 --target http://replica-2:8080 \
#       --admin http://obleth-admin:9090 --clickhouse http://clickhouse:8123
#                                         # against a running deployment
#                                         # (faults from CHAOS_* commands)
set -euo pipefail
cd "$(dirname "$0")/../.."

scripts/setup.sh
if [[ " $* " != *" --target "* ]]; then
  scripts/services.sh
  cargo build --quiet -p obleth -p obleth-mock-upstream
fi
exec python3 tests/chaos/chaos.py "$@"
