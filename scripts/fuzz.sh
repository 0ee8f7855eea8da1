#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every parser obleth
# exposes to outside input: the YAML configuration, LLM request bodies
# (JSON and multipart), usage in upstream responses (JSON and SSE), the
# usage write-ahead log's frames and the PROXY protocol header. Each target
# runs SECONDS_PER_TARGET (default 60) from its seeds in
# fuzz/corpus/<target>; what it learns goes to fuzz/out/<target>, a crash
# input to fuzz/artifacts/<target>/ and the script fails naming it. Replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
#
# cargo fuzz needs nightly rustc flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them, AddressSanitizer included (its runtime
# ships with stable's rust-std). Targets build with debug assertions and
# overflow checks, so an arithmetic overflow is a crash too.
#
# The fuzz crate is a workspace of its own with its own target directory
# (fuzz/target, or $CARGO_TARGET_DIR), so a fuzz build never waits for the
# lock of the main one.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi
targets=(config llm_request usage wal_frames proxy_header)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
target_dir=${CARGO_TARGET_DIR:-fuzz/target}
fuzz=(cargo fuzz)
build=(--sanitizer address --target-dir "$target_dir")

echo "fuzz: building ${targets[*]}"
"${fuzz[@]}" build "${build[@]}"

# The configuration loader resolves the host names it is given; without
# a network (a namespace of its own, when unshare is allowed) every lookup
# fails at once instead of asking the resolver thousands of times a second.
isolate=()
if unshare -rn true >/dev/null 2>&1; then
  isolate=(unshare -rn)
fi

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/out/$t" "fuzz/artifacts/$t"
  log="fuzz/out/$t.log"
  echo "fuzz: $t for ${seconds}s"
  runner=()
  [ "$t" = config ] && runner=("${isolate[@]}")
  # -timeout: an input taking this long is a hang, reported like a crash.
  if "${runner[@]}" "${fuzz[@]}" run "${build[@]}" "$t" "fuzz/out/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1; then
    # The last status line: executions so far, and per second.
    grep -E '^#[0-9]+' "$log" | tail -n 1 | sed "s/^/fuzz: $t: /"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" | sed "s/^/fuzz: $t: /"
  else
    failed+=("$t")
    echo "fuzz: $t FAILED (log: $log)" >&2
    # The panic (or sanitizer report) and where libFuzzer wrote the input.
    grep -E -A 3 '(panicked at|^==[0-9]+==ERROR)' "$log" | head -n 20 >&2 || true
    grep -E '(^SUMMARY|Test unit written to)' "$log" >&2 || tail -n 30 "$log" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs in fuzz/artifacts/<target>/" >&2
  exit 1
fi
echo "fuzz: no crashes"
