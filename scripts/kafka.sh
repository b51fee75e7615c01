#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker answers for the tests.
#
#   scripts/kafka.sh          start tansu on 127.0.0.1:9092 unless something already
#                             listens on the KAFKA_BROKERS address
#   scripts/kafka.sh --pid    print the pid of the broker this script started
#   scripts/kafka.sh --stop   stop the broker this script started
#   scripts/kafka.sh --bin    install tansu if missing and print the binary's path
#                             (the fault suite starts a second, SQLite-backed broker)
#
# The broker is tansu (https://github.com/tansu-io/tansu) with memory storage. It
# is installed with `cargo install` into a cache directory kept between runs; the
# first install compiles for about 12 minutes.
#
# Before that, the Debian packages that the bundled librdkafka build needs are
# installed when missing (a C compiler and make; everything else is compiled from
# the crates).
#
# Environment:
#   KAFKA_BROKERS        broker address the tests use (default 127.0.0.1:9092); when
#                        something listens there, nothing is started
#   POSTOFFICE_CACHE     cache directory (default /root/.cache/postoffice, or
#                        $XDG_CACHE_HOME/postoffice / $HOME/.cache/postoffice)
#   TANSU_PID_FILE       where the broker's pid is written (default $POSTOFFICE_CACHE/tansu.pid)
set -euo pipefail

cache_default="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/postoffice"
cache="${POSTOFFICE_CACHE:-$cache_default}"
# The directory names the version and features, so a change rebuilds.
root="$cache/tansu-0.6.0-libsql"
target_dir="$cache/tansu-target"
tansu="$root/bin/tansu"
pid_file="${TANSU_PID_FILE:-$cache/tansu.pid}"
log_file="$cache/tansu.log"
brokers="${KAFKA_BROKERS:-127.0.0.1:9092}"

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The first address of the broker list, split into host and port.
first="${brokers%%,*}"
first="${first#*://}"
host="${first%:*}"
port="${first##*:}"
[ "$host" != "$first" ] || port=9092

# Returns 0 when something accepts TCP connections on host:port.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

running_pid() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

apt_install() {
  command -v apt-get >/dev/null || die "missing $*; install it by hand (no apt-get here)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# rdkafka builds its bundled librdkafka 2.12 with ./configure and make (its
# configure requires a C++ compiler too) and zlib from source (feature
# libz-static); tansu's dependencies need a C compiler. No OpenSSL, SASL, curl,
# zstd or zlib headers and no cmake are needed.
build_deps() {
  local missing=()
  command -v cc >/dev/null || missing+=(gcc)
  command -v c++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

install_tansu() {
  [ -x "$tansu" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to install tansu"
  log "installing tansu 0.6.0 into $root (compiles for about 12 minutes, once)"
  mkdir -p "$cache"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql,postgres \
    --root "$root" --target-dir "$target_dir"
}

start() {
  build_deps
  if port_open "$host" "$port"; then
    if pid=$(running_pid); then
      log "tansu (pid $pid) is up on $host:$port"
    else
      log "a broker already listens on $host:$port, using it"
    fi
    return 0
  fi
  case "$host" in
    127.0.0.1 | localhost) ;;
    *) die "nothing answers on $host:$port (KAFKA_BROKERS=$brokers) and only a local broker can be started" ;;
  esac
  [ "$port" = 9092 ] || die "nothing answers on $host:$port; this script starts tansu on 127.0.0.1:9092 only"

  install_tansu
  mkdir -p "$cache"
  log "starting tansu on 127.0.0.1:9092 with memory storage (log: $log_file)"
  setsid nohup "$tansu" broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ \
    >"$log_file" 2>&1 </dev/null &
  local pid=$!
  printf '%s\n' "$pid" >"$pid_file"

  for _ in $(seq 60); do
    if port_open 127.0.0.1 9092; then
      log "tansu is up on 127.0.0.1:9092, pid $pid (pid file: $pid_file)"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "tansu exited at start; see $log_file"
    sleep 1
  done
  die "tansu did not answer on 127.0.0.1:9092 within 60s; see $log_file"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    log "no broker started by this script is running"
    rm -f "$pid_file"
    return 0
  fi
  # A frozen broker (SIGSTOP from a test) must run again to handle SIGTERM.
  kill -CONT "$pid" 2>/dev/null || true
  kill "$pid"
  for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
  fi
  rm -f "$pid_file"
  log "stopped tansu (pid $pid)"
}

case "${1:-}" in
  "") start ;;
  --pid) running_pid || die "no broker started by this script is running (pid file: $pid_file)" ;;
  --stop) stop ;;
  --bin) install_tansu >&2 && echo "$tansu" ;;
  -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown argument: $1 (use --pid, --stop, --bin or nothing)" ;;
esac
