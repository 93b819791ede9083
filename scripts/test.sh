#!/usr/bin/env bash
# test.sh — the test command of the README: installs what the tests need,
# then runs the format check, clippy and every test (unit and integration,
# against real SQLite files and the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "==> cargo test"
cargo test --all-targets
