#!/usr/bin/env bash
# The whole vmpath test suite: installs what the tests need, then checks formatting, lints and
# runs every test of the workspace. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features --no-fail-fast 2>&1 | tee /tmp/vmpath-test.log
