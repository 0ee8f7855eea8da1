#!/bin/sh
# Gives each obleth replica of `docker compose --scale obleth=N` its own
# usage log on the one volume they share: the first free slot-K under
# $OBLETH_WAL_ROOT becomes OBLETH_WAL_PATH, and the slot names the replica
# (OBLETH_REPLICA, in usage records and batch ids), then the command is
# exec'd.
#
# A slot is claimed with flock(1) on slot-K.claim through a descriptor the
# command inherits, so the claim lasts exactly as long as the replica's
# process and is released by the kernel however it ends. Slots are stable:
# a replica that is restarted or recreated takes a free slot back and ships
# what its predecessor left there, instead of orphaning it in a directory
# named after a container id. (obleth also locks the directory itself and
# refuses a second writer; the claim only picks a free one.)
set -eu

root=${OBLETH_WAL_ROOT:-/var/lib/obleth/wal}
# HAProxy's server-template in deploy/docker/haproxy.cfg allows 10 replicas.
slots=${OBLETH_WAL_SLOTS:-10}

mkdir -p "$root"
slot=1
while [ "$slot" -le "$slots" ]; do
  exec 9>>"$root/slot-$slot.claim"
  if flock --nonblock 9; then
    OBLETH_WAL_PATH="$root/slot-$slot"
    # A replica that takes a slot over ships its batches under the same
    # name, so ClickHouse recognises one already inserted before a crash.
    OBLETH_REPLICA="${OBLETH_REPLICA_PREFIX:-obleth}-slot-$slot"
    export OBLETH_WAL_PATH OBLETH_REPLICA
    echo "wal-slot: usage log $OBLETH_WAL_PATH" >&2
    exec "$@"
  fi
  exec 9>&-
  slot=$((slot + 1))
done
echo "wal-slot: all $slots slots under $root are held by running replicas" >&2
exit 1
