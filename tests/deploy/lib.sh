# shellcheck shell=bash disable=SC2034
# Shared by the deployment checks: `check NAME COMMAND...` runs COMMAND and
# prints one `ok`/`FAIL` line (with the output of a failure, indented);
# `failed` is 1 once any check failed (read by the scripts that source this).
failed=0
check() {
  local name="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    echo "ok    $name"
  else
    echo "FAIL  $name"
    printf '%s\n' "$out" | sed 's/^/      /'
    failed=1
  fi
}
