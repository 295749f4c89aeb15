#!/usr/bin/env bash
# Make sure PostgreSQL+PostGIS, Redis and Mosquitto are reachable at the configured addresses.
# Where one is missing on this machine, install it from Debian's packages and start it.
# Idempotent: on a machine where everything runs, it only checks (a second or two).
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}; PGPORT=${PGPORT:-5432}; PGUSER=${PGUSER:-postgres}
REDIS_PORT=${REDIS_PORT:-6379}; MQTT_PORT=${CCS_MQTT_PORT:-1884}
DB_NAME=${CCS_DB_NAME:-ccs}
APT_UPDATED=0

say() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_install() {
  if [ "$(id -u)" != 0 ]; then say "need root to install $*"; exit 1; fi
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  say "$2 did not come up on port $1"; exit 1
}

# PostgreSQL
if ! port_open "$PGPORT"; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing PostgreSQL"; apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  say "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_port "$PGPORT" PostgreSQL
fi
pgver=$(psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -Atc "SHOW server_version_num" | cut -c1-2)
# PostGIS for that server version
if ! ls "/usr/share/postgresql/$pgver/extension/postgis.control" >/dev/null 2>&1; then
  say "installing PostGIS for PostgreSQL $pgver"
  apt_install "postgresql-$pgver-postgis-3"
fi
# pg_partman keeps the positions table's daily partitions (store/partitions.py)
if ! ls "/usr/share/postgresql/$pgver/extension/pg_partman.control" >/dev/null 2>&1; then
  say "installing pg_partman for PostgreSQL $pgver"
  apt_install "postgresql-$pgver-partman"
fi
# Compliance report PDFs (alerts/report_docs.py): WeasyPrint lays text out with Pango, and the
# Chinese text needs a CJK font (Noto CJK, embedded in each PDF as a subset). The tests read the
# PDFs' text back with poppler's pdftotext and pdffonts.
pdf_pkgs=()
ldconfig -p | grep -q 'libpangoft2-1.0.so.0' || pdf_pkgs+=(libpango-1.0-0 libpangoft2-1.0-0)
fc-list 2>/dev/null | grep -i 'Noto Sans CJK' >/dev/null || pdf_pkgs+=(fonts-noto-cjk)  # not -q (pipefail)
command -v pdftotext >/dev/null && command -v pdffonts >/dev/null || pdf_pkgs+=(poppler-utils)
if [ ${#pdf_pkgs[@]} -gt 0 ]; then
  say "installing ${pdf_pkgs[*]} (report PDFs)"; apt_install "${pdf_pkgs[@]}"
fi
if [ -z "$(psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -Atc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]; then
  say "creating database $DB_NAME"
  psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE $DB_NAME"
fi
psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB_NAME" -qc "CREATE EXTENSION IF NOT EXISTS postgis" >/dev/null

# Redis, with an append-only file (fsync every second) as the second line of defence: the
# engine states and silence deadlines it holds are rebuilt from PostgreSQL when lost, but a
# restart that keeps them recovers at once. A Redis this machine started before is left running;
# if its AOF is off and its data directory is writable, AOF is switched on at runtime
# (CONFIG SET appendonly yes: Redis writes the file in the background and keeps serving). That
# setting lasts until that Redis restarts: make it permanent in its own configuration.
redis_cfg() { redis-cli -p "$REDIS_PORT" config get "$1" 2>/dev/null | sed -n '2p' | tr -d '"'; }
if ! port_open "$REDIS_PORT"; then
  command -v redis-server >/dev/null || { say "installing Redis"; apt_install redis-server; }
  say "starting Redis (AOF, fsync every second)"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly yes --appendfsync everysec --dir /var/lib/redis --logfile /var/log/redis/ccs.log \
    --auto-aof-rewrite-percentage 400 --auto-aof-rewrite-min-size 1gb
  wait_port "$REDIS_PORT" Redis
elif command -v redis-cli >/dev/null && [ "$(redis_cfg appendonly)" != yes ]; then
  dir=$(redis_cfg dir)
  if [ -n "$dir" ] && [ -w "$dir" ] \
      && redis-cli -p "$REDIS_PORT" config set appendfsync everysec >/dev/null \
      && redis-cli -p "$REDIS_PORT" config set appendonly yes | grep -q OK; then
    say "Redis was running without AOF: switched on at runtime (dir $dir, until it restarts)"
  else
    say "WARNING: Redis on :$REDIS_PORT runs without AOF and it could not be switched on" \
        "(dir '${dir:-?}'); state is rebuilt from PostgreSQL after a restart, more slowly"
  fi
fi
# The append-only file's rewrite thresholds (deploy/redis/redis.conf says why), set at runtime on
# a Redis this machine started before (until it restarts).
if command -v redis-cli >/dev/null && { [ "$(redis_cfg auto-aof-rewrite-percentage)" != 400 ] \
    || [ "$(redis_cfg auto-aof-rewrite-min-size)" != 1073741824 ]; }; then
  redis-cli -p "$REDIS_PORT" config set auto-aof-rewrite-percentage 400 >/dev/null
  redis-cli -p "$REDIS_PORT" config set auto-aof-rewrite-min-size 1gb >/dev/null
  say "Redis: append-only file rewritten at 400 % growth and 1 GB (at runtime, until it restarts)"
fi
# Sentinel, for the Redis failover test and bench (tests/test_redis_failover.py, simulators/
# redis_failover.py): they start their own master, replica and sentinels on free ports; the
# package's own service (port 26379) is not needed and is left as Debian sets it up.
command -v redis-sentinel >/dev/null || { say "installing Redis Sentinel"; apt_install redis-sentinel; }

# Mosquitto: the project's own instance with deploy/mosquitto/mosquitto.conf (see that file for
# why the distribution's defaults will not do). With CCS_MQTT_SECURE=1, the secured one instead
# (deploy/mosquitto/secure.conf: phones on 1885, services on 127.0.0.1:1886, no anonymous access);
# its password and ACL files start empty and are filled from the database by
# `python -m store.broker_sync`, which `make run` runs before anything connects.
if [ "${CCS_MQTT_SECURE:-0}" = 1 ]; then
  MQTT_PORT=1886
  if ! port_open "$MQTT_PORT"; then
    command -v mosquitto >/dev/null || { say "installing Mosquitto"; apt_install mosquitto; }
    say "starting the secured Mosquitto (phones :1885, services :1886) with deploy/mosquitto/secure.conf"
    mkdir -p /var/lib/ccs-mosquitto-secure/auth /var/log/ccs-mosquitto
    for f in devices.passwd devices.acl services.passwd services.acl; do
      [ -e "/var/lib/ccs-mosquitto-secure/auth/$f" ] || install -m 640 /dev/null "/var/lib/ccs-mosquitto-secure/auth/$f"
    done
    if id mosquitto >/dev/null 2>&1; then
      chown mosquitto /var/lib/ccs-mosquitto-secure /var/lib/ccs-mosquitto-secure/auth /var/log/ccs-mosquitto
      chgrp mosquitto /var/lib/ccs-mosquitto-secure/auth/*
    fi
    mosquitto -d -c "$(cd "$(dirname "$0")" && pwd)/mosquitto/secure.conf"
    wait_port "$MQTT_PORT" Mosquitto
  fi
else
  MQTT_CONF="$(cd "$(dirname "$0")" && pwd)/mosquitto/mosquitto.conf"
  MQTT_SUM=/var/lib/ccs-mosquitto/conf.sha256
  if port_open "$MQTT_PORT" && [ -f "$MQTT_SUM" ] && ! sha256sum -c --status "$MQTT_SUM" 2>/dev/null; then
    # Started with an older deploy/mosquitto/mosquitto.conf: restart it (SIGTERM saves its
    # sessions and queued messages; they are read back on start).
    say "deploy/mosquitto/mosquitto.conf changed: restarting Mosquitto on :$MQTT_PORT"
    pkill -TERM -f "mosquitto -d -c .*deploy/mosquitto/mosquitto.conf" || true
    for _ in $(seq 1 100); do port_open "$MQTT_PORT" || break; sleep 0.1; done
  fi
  if ! port_open "$MQTT_PORT"; then
    command -v mosquitto >/dev/null || { say "installing Mosquitto"; apt_install mosquitto; }
    say "starting Mosquitto on :$MQTT_PORT with deploy/mosquitto/mosquitto.conf"
    mkdir -p /var/lib/ccs-mosquitto /var/log/ccs-mosquitto
    if id mosquitto >/dev/null 2>&1; then
      chown mosquitto /var/lib/ccs-mosquitto /var/log/ccs-mosquitto
    fi
    mosquitto -d -c "$MQTT_CONF"
    sha256sum "$MQTT_CONF" > "$MQTT_SUM"
    wait_port "$MQTT_PORT" Mosquitto
  fi
fi
command -v mosquitto_pub >/dev/null || { say "installing mosquitto-clients"; apt_install mosquitto-clients; }
say "PostgreSQL+PostGIS :$PGPORT, Redis :$REDIS_PORT, Mosquitto :$MQTT_PORT ready"
