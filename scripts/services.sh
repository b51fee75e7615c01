#!/usr/bin/env bash
# Makes sure the servers the tests talk to are up: PostgreSQL, RabbitMQ and a
# Kafka-protocol broker (tansu). Starts what is down, installs what is missing,
# and fails loudly when it cannot.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Returns 0 when something accepts TCP connections on host:port.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local host=$1 port=$2 what=$3 secs=$4
  for _ in $(seq "$secs"); do
    port_open "$host" "$port" && return 0
    sleep 1
  done
  die "$what did not answer on $host:$port within ${secs}s"
}

apt_install() {
  command -v apt-get >/dev/null || die "cannot install $* (no apt-get); install it by hand"
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

postgres() {
  if ! port_open 127.0.0.1 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_port 127.0.0.1 5432 PostgreSQL 60
  fi
  # The tests connect as postgres without a password over TCP to database test.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    die "PostgreSQL on 127.0.0.1:5432 refuses user postgres without a password (trust auth expected)"
  fi
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1 from pg_database where datname = 'test'")" != 1 ]; then
    log "creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
  fi
  log "PostgreSQL is up"
}

rabbitmq() {
  if ! port_open 127.0.0.1 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    log "starting RabbitMQ"
    rabbitmq-server -detached
    wait_port 127.0.0.1 5672 RabbitMQ 120
  fi
  timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1 \
    || die "RabbitMQ listens on 5672 but rabbitmqctl cannot reach the node"
  log "RabbitMQ is up"
}

postgres
rabbitmq
"$here/kafka.sh"
