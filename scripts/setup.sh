#!/usr/bin/env bash
# setup.sh — the README's first command: installs build dependencies, builds
# pichat, installs it, and shows it working on the sample history.
#   PREFIX=/usr/local (root) or ~/.local (user): where bin/pichat goes.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --build
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> cargo build --release"
cargo build --release --locked
if [[ $(id -u) -eq 0 ]]; then PREFIX="${PREFIX:-/usr/local}"; else PREFIX="${PREFIX:-$HOME/.local}"; fi
install -D -m 0755 target/release/pichat "$PREFIX/bin/pichat"
echo "==> installed $PREFIX/bin/pichat ($("$PREFIX/bin/pichat" --version))"

demo="$(mktemp -d)/demo-history.db"
echo "==> demo on a sample history: $demo"
"$PREFIX/bin/pichat" history --db "$demo" import config/sample-history.json
echo "\$ pichat history list"
"$PREFIX/bin/pichat" history --db "$demo" list
echo "\$ pichat history search \"capital France\""
"$PREFIX/bin/pichat" history --db "$demo" search "capital France"
echo "\$ pichat history stats"
"$PREFIX/bin/pichat" history --db "$demo" stats
