#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every unit and
# integration test (against real sockets and the mock upstream), the
# deployment files (alert rules, dashboard, Helm chart, compose and HAProxy
# configs), the bounded property run against the admin API, a short chaos run (the full
# one is `tests/chaos/run.sh`), then the README's demo command end to end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/services.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
tests/deploy/rules.sh
OBLETH_BIN=target/debug/obleth tests/deploy/helm.sh
OBLETH_BIN=target/debug/obleth tests/deploy/compose.sh
tests/schemathesis.sh
CHAOS_SECONDS=45 python3 tests/chaos/chaos.py
scripts/demo.sh --once
