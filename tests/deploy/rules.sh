#!/usr/bin/env bash
# Checks the alert rules and the Grafana dashboard without a running
# Prometheus: promtool (Debian's `prometheus` package) lints the rules and
# runs their unit tests; the alerts are held to the names, severities and
# runbook anchors the operations doc promises; the dashboard must parse,
# take its data source from the `datasource` variable on every panel, and
# every query in it must be valid PromQL. One line per check; exits 1 if
# any failed. Whether each metric queried exists in obleth's /metrics is
# checked by a Rust test that scrapes a running obleth.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

# shellcheck source=tests/deploy/lib.sh
source tests/deploy/lib.sh

alerts_contract() {
  python3 - <<'EOF'
import re, sys, yaml

anchors = {
    "OblethQueueSaturated": "queue-saturation",
    "OblethTelemetryDropped": "wal-filling",
    "OblethUpstream5xxSpike": "upstream-failures",
    "OblethHighLatencyP99": "high-latency",
    "OblethPodRestarting": "pods-restarting",
    "OblethPoolNoHealthyServer": "no-healthy-server",
    "OblethBudgetStoreDown": "redis-down",
    "OblethTelemetryBacklogGrowing": "clickhouse-down",
    "OblethCertificateExpiringSoon": "certificate-expiring",
}
rules = [r for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"] for r in g["rules"]]
problems = []
names = [r.get("alert") for r in rules]
if sorted(names) != sorted(anchors):
    problems.append(f"alerts are {sorted(names)}, expected {sorted(anchors)}")
for r in rules:
    name, ann = r.get("alert"), r.get("annotations", {})
    if "for" not in r:
        problems.append(f"{name}: no for:")
    if r.get("labels", {}).get("severity") not in ("warning", "critical"):
        problems.append(f"{name}: severity must be warning or critical")
    for key in ("summary", "description"):
        if not ann.get(key):
            problems.append(f"{name}: no {key}")
    if name in anchors and ann.get("runbook_url") != f"docs/operations.md#{anchors[name]}":
        problems.append(f"{name}: runbook_url is {ann.get('runbook_url')!r}")

# Every alert is tested firing and, at some evaluation, quiet.
fires, quiet = set(), set()
for t in yaml.safe_load(open("deploy/prometheus/alerts_test.yml"))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
for name in anchors:
    if name not in fires:
        problems.append(f"{name}: no test where it fires")
    if name not in quiet:
        problems.append(f"{name}: no test where it stays quiet")

print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}

# A heading's anchor as GitHub renders it, or an explicit id/name.
runbook_anchors() {
  python3 - <<'EOF'
import re, sys, yaml

try:
    doc = open("docs/operations.md").read()
except OSError as e:
    sys.exit(f"docs/operations.md: {e.strerror}")
have = set(re.findall(r'(?:id|name)="([^"]+)"', doc))
for heading in re.findall(r"^#+\s+(.+?)\s*#*$", doc, re.M):
    have.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
want = {
    r["annotations"]["runbook_url"].split("#", 1)[1]
    for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"]
    for r in g["rules"]
}
missing = sorted(want - have)
if missing:
    sys.exit("docs/operations.md has no section for: " + ", ".join(missing))
EOF
}

dashboard_shape() {
  python3 - <<'EOF'
import json, sys

d = json.load(open("deploy/grafana/obleth.json"))
problems = []
if d.get("uid") != "obleth":
    problems.append(f"uid is {d.get('uid')!r}")
variables = {v["name"]: v for v in d["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource":
    problems.append("no datasource variable")
ids = [p["id"] for p in d["panels"]]
if len(ids) != len(set(ids)):
    problems.append("panel ids repeat")
for p in d["panels"]:
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"{p['title']}: datasource is not ${{datasource}}")
    if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
        problems.append(f"{p['title']}: no query")
for v in variables.values():
    if v["type"] == "query" and v.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"variable {v['name']}: datasource is not ${{datasource}}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}

# promtool parses PromQL only inside rule files, so each dashboard query
# becomes a recording rule, with Grafana's variables given sample values.
dashboard_promql() {
  local rules
  rules="$(mktemp --suffix=.yml)"
  python3 - "$rules" <<'EOF' || { rm -f "$rules"; return 1; }
import json, sys, yaml

d = json.load(open("deploy/grafana/obleth.json"))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
exprs += [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]
rules = []
for i, e in enumerate(exprs):
    e = e.replace("$__rate_interval", "1m")
    for name in ("job", "instance", "model", "pool"):
        e = e.replace(f"${name}", ".*")
    # label_values() is Grafana's, not PromQL: check the selector inside.
    if e.startswith("label_values("):
        e = e[len("label_values("):].rsplit(",", 1)[0]
    rules.append({"record": f"dashboard:query{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
EOF
  promtool check rules "$rules"
  local rc=$?
  rm -f "$rules"
  return $rc
}

check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts_test.yml" promtool test rules deploy/prometheus/alerts_test.yml
check "alerts: names, for, severity, annotations, runbook links, tests" alerts_contract
check "runbook anchors exist in docs/operations.md" runbook_anchors
check "deploy/grafana/obleth.json parses" python3 -m json.tool deploy/grafana/obleth.json
check "dashboard: uid, datasource variable, a query on every panel" dashboard_shape
check "dashboard: every query is valid PromQL" dashboard_promql
exit $failed
