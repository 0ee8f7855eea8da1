#!/usr/bin/env python3
"""Validates one `helm template` output of the obleth chart and lays out its
parts for the tools that check them further.

usage: manifests.py RENDERED OUTDIR KUBERNETES_VERSION...

Each document is either a kind of the Kubernetes API, validated strictly
(an unknown field is an error) against the schemas of every version given,
or a Prometheus Operator kind, which is written to OUTDIR/operator.json for
crds.mjs. Any other kind is an error. The PrometheusRule's groups go to
OUTDIR/rules.yml for promtool, the configuration file the ConfigMaps carry
to OUTDIR/obleth.yaml (the pods' copy and the migrations Job's must be the
same file), and the obleth container's literal environment to OUTDIR/env
(NAME=value lines), so that `obleth check` sees what a pod sees. Prints one
line, and the problems; exits 1 on any problem.
"""

import json
import os
import sys

import kubernetes_validate
import yaml

OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def kubernetes_problems(doc, versions):
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            yield f"{name_of(doc)}: Kubernetes {version}: {path}: {e.message}"
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{name_of(doc)}: no schema for {doc.get('apiVersion')} in Kubernetes {version}"


def main():
    rendered, outdir, *versions = sys.argv[1:]
    with open(rendered) as f:
        docs = [doc for doc in yaml.safe_load_all(f) if doc]

    problems, operator, configs, env = [], [], {}, []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in OPERATOR_KINDS:
            operator.append(doc)
            continue
        problems.extend(kubernetes_problems(doc, versions))
        if doc.get("kind") == "ConfigMap" and "obleth.yaml" in doc.get("data", {}):
            configs[name_of(doc)] = doc["data"]["obleth.yaml"]
        if doc.get("kind") == "StatefulSet":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "obleth":
                    env += [f"{e['name']}={e['value']}" for e in container.get("env", []) if "value" in e]

    if len(set(configs.values())) != 1:
        problems.append(f"expected one obleth.yaml in the ConfigMaps, found {len(set(configs.values()))} different ({', '.join(configs)})")
    else:
        with open(os.path.join(outdir, "obleth.yaml"), "w") as f:
            f.write(next(iter(configs.values())))

    with open(os.path.join(outdir, "env"), "w") as f:
        f.writelines(f"{line}\n" for line in env)
    with open(os.path.join(outdir, "operator.json"), "w") as f:
        json.dump(operator, f)
    rules = [doc["spec"] for doc in operator if doc["kind"] == "PrometheusRule"]
    if rules:
        with open(os.path.join(outdir, "rules.yml"), "w") as f:
            yaml.safe_dump({"groups": [g for spec in rules for g in spec.get("groups", [])]}, f)

    for problem in problems:
        print(f"  {problem}")
    core = len(docs) - len(operator)
    verdict = "FAIL" if problems else "ok"
    print(f"{verdict}: {core} Kubernetes manifests against {', '.join(versions)} (strict)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
