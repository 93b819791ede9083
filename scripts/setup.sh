#!/usr/bin/env bash
# setup.sh — the README's first command: installs the build dependencies,
# builds and installs pichat, installs and starts the local engines
# (speech-to-text, LLM, text-to-speech, all offline), and runs one real
# voice turn: a spoken question from a WAV file, the reply spoken to
# reply.wav (or to the speaker with SPEAK=1).
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

echo "==> local engines (first time: downloads ~1 GB of wheels and compiles llama-server, 5-15 min)"
scripts/setup-local-engines.sh
scripts/engines.sh start

echo "==> a real voice turn: pichat ask --wav tests/data/question.wav"
if [[ "${SPEAK:-0}" == 1 ]]; then
  "$PREFIX/bin/pichat" ask --wav tests/data/question.wav
else
  "$PREFIX/bin/pichat" ask --wav tests/data/question.wav --out reply.wav
  echo "==> what the reply says, heard again: $("$PREFIX/bin/pichat" transcribe reply.wav)"
fi
echo "==> the turn is in the history:"
"$PREFIX/bin/pichat" history list --limit 3
