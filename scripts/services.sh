#!/usr/bin/env bash
# Makes sure the services the integration tests talk to are up on their
# standard local ports: PostgreSQL (127.0.0.1:5432, trust auth for local
# connections) and Redis (127.0.0.1:6379). Installs them from Debian's
# packages and starts them when missing; leaves running ones alone.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
install() {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || install redis-server
  echo "services: starting redis"
  $sudo mkdir -p /var/lib/redis /var/log/redis
  $sudo redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/obleth-tests.log
fi

if ! port_open 5432; then
  command -v pg_ctlcluster >/dev/null 2>&1 || install postgresql
  echo "services: starting postgresql"
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  # Tests connect as postgres over TCP without a password.
  if ! $sudo grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
    $sudo sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

for _ in $(seq 100); do
  port_open 5432 && port_open 6379 && exit 0
  sleep 0.1
done
echo "services: postgresql or redis did not come up" >&2
exit 1
