#!/usr/bin/env bash
# Installs the cargo tools the test suite uses when they are missing.
set -euo pipefail

if ! cargo deny --version >/dev/null 2>&1; then
  echo "==> installing cargo-deny (a few minutes, once)"
  cargo install cargo-deny --locked
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
