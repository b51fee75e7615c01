#!/usr/bin/env bash
# The whole test suite: starts the servers the tests need, then runs formatting,
# lints, docs, every test against the real servers, and the dependency policy.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$1"; shift; "$@"; }

step "servers" scripts/services.sh
step "tools" scripts/tools.sh
step "format" cargo fmt --all -- --check
step "clippy" cargo clippy --workspace --all-targets --all-features -- -D warnings
step "docs" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps
step "tests" cargo test --workspace --all-features
# The main example end to end: on the embedded default (SQLite, in-memory
# transport) as the README runs it, then on each server.
example() { env -u DATABASE_URL -u AMQP_URL -u KAFKA_BROKERS "$@" cargo run -q -p postoffice-examples --all-features --example orders; }
step "example, embedded default" example
step "example, Postgres and RabbitMQ" example DATABASE_URL="$DATABASE_URL" AMQP_URL="$AMQP_URL"
step "example, Kafka" example KAFKA_BROKERS="$KAFKA_BROKERS"
step "dependency policy" cargo deny --all-features check bans licenses sources
