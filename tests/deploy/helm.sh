#!/usr/bin/env bash
# Lints and renders the Helm chart deploy/k8s/obleth with its default values,
# with values-production.yaml and with every optional feature
# (tests/deploy/helm-all-features.yaml), and validates what it renders:
# Kubernetes kinds strictly against the schemas of the oldest Kubernetes the
# chart supports and of the newest kubernetes-validate knows, Prometheus
# Operator kinds with the operator's validators (crds.mjs), the alert rules
# with promtool and, when OBLETH_BIN names a built obleth, the configuration
# file and environment the pods get with `obleth check`. Then checks that a
# render is refused when the drain cannot end before the pod is killed.
# One line per check; exits 1 if any failed. Tools: scripts/deploy-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

chart=deploy/k8s/obleth
node_modules=/usr/local/lib/obleth-deploy-tools/node_modules

missing() { echo "FAIL: $1 is missing: run scripts/deploy-tools.sh"; exit 1; }
for tool in helm node promtool; do
  command -v "$tool" >/dev/null 2>&1 || missing "$tool"
done
python3 -c 'import kubernetes_validate' 2>/dev/null || missing kubernetes-validate
[ -d "$node_modules/@kubernetes-models/prometheus-operator" ] ||
  missing @kubernetes-models/prometheus-operator

oldest=$(sed -n 's/^kubeVersion: ">=\([0-9.]*\).*/\1/p' "$chart/Chart.yaml")
newest=$(python3 -c 'import kubernetes_validate as k; print(k.latest_version())')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failed=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failed=1; }

# Runs helm with its standard error kept in $tmp/helm.err, less the note it
# prints each time it follows files/alerts.yml's link.
helm_run() {
  local status=0
  helm "$@" 2>"$tmp/helm.err.raw" || status=$?
  grep -v 'found symbolic link in path' "$tmp/helm.err.raw" >"$tmp/helm.err" || true
  return "$status"
}
show_err() { sed 's/^/  /' "$tmp/helm.err"; }

# Prefixes the verdict lines of a helper with the name of the values set.
label() { sed -E "s/^(ok|FAIL): /\1: $1: /"; }

check_values() { # name, then helm's values arguments
  local name=$1 out="$tmp/$1"
  shift
  mkdir -p "$out"

  if helm_run lint --strict "$chart" "$@" >"$out/lint"; then
    ok "$name: helm lint"
  else
    fail "$name: helm lint"
    sed 's/^/  /' "$out/lint"
    show_err
  fi

  if ! helm_run template obleth "$chart" --namespace obleth "$@" >"$out/rendered.yaml"; then
    fail "$name: helm template"
    show_err
    return
  fi
  ok "$name: helm template ($(grep -c '^kind:' "$out/rendered.yaml") documents)"

  python3 tests/deploy/manifests.py "$out/rendered.yaml" "$out" "$oldest" "$newest" |
    label "$name" || failed=1
  node tests/deploy/crds.mjs "$out/operator.json" "$node_modules" | label "$name" || failed=1

  if [ -f "$out/rules.yml" ]; then
    if promtool check rules "$out/rules.yml" >"$out/promtool" 2>&1; then
      ok "$name: promtool check rules on the PrometheusRule"
    else
      fail "$name: promtool check rules on the PrometheusRule"
      sed 's/^/  /' "$out/promtool"
    fi
  fi

  if [ -n "${OBLETH_BIN:-}" ] && [ -f "$out/obleth.yaml" ]; then
    # Cluster DNS names resolve only inside a cluster, and obleth resolves
    # server names as it loads the file: a loopback address of its own
    # stands in for each name (servers of a pool must stay distinct), so
    # that everything else in the file is checked.
    perl -pe 's/([A-Za-z0-9.-]+\.svc\.cluster\.local)/$seen{$1} ||= "127.0.0." . ++$n/ge' \
      "$out/obleth.yaml" >"$out/check.yaml"
    local env=()
    mapfile -t env <"$out/env"
    if env -i PATH="$PATH" "${env[@]}" "$OBLETH_BIN" check -c "$out/check.yaml" >"$out/check" 2>&1; then
      ok "$name: obleth check on the rendered configuration and environment"
    else
      fail "$name: obleth check on the rendered configuration and environment"
      sed 's/^/  /' "$out/check"
    fi
  fi
}

# A render that must fail, with a message naming what is wrong.
check_refused() { # what, expected message, then helm's values arguments
  local what=$1 message=$2
  shift 2
  if helm_run template obleth "$chart" "$@" >/dev/null; then
    fail "render refuses $what (it rendered)"
  elif grep -qF -- "$message" "$tmp/helm.err"; then
    ok "render refuses $what"
  else
    fail "render refuses $what, saying \"$message\""
    show_err
  fi
}

check_values default
check_values production -f "$chart/values-production.yaml"
check_values all-features -f tests/deploy/helm-all-features.yaml

# The default values drain for 30s after a 5s preStop sleep, in a 45s period.
check_refused "server.grace + preStop sleep = terminationGracePeriodSeconds" \
  "terminationGracePeriodSeconds (45s) must be longer than preStopSleepSeconds (5s) plus config.server.grace (40s)" \
  --set config.server.grace=40s
check_refused "server.grace longer than terminationGracePeriodSeconds" \
  "must be longer than preStopSleepSeconds" \
  --set terminationGracePeriodSeconds=20
if helm_run template obleth "$chart" --set config.server.grace=39s >/dev/null; then
  ok "render accepts server.grace + preStop sleep just under terminationGracePeriodSeconds"
else
  fail "render accepts server.grace + preStop sleep just under terminationGracePeriodSeconds"
  show_err
fi
check_refused "a duration it cannot read" "write a duration the chart can read" \
  --set config.server.grace=30
check_refused "a key the chart owns (store.migrate)" "config.store.migrate is set by the chart" \
  --set config.store.migrate=true

exit "$failed"
