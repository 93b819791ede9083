#!/usr/bin/env bash
# test.sh — the test command of the README. Installs what the tests need
# (apt packages, the local engines), then runs the format check, clippy,
# every test (unit and integration: real SQLite files, real cpal on virtual
# ALSA devices and a private PulseAudio, the real binary, fake engines for
# fault injection), the end-to-end tests on the real local engines and the
# hands-free ones on real audio (wake word models, a leaking speaker), the
# server's tests once more on a private PostgreSQL cluster;
# last, the aarch64 cross build with its unit tests under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> local engines (Whisper, SmolLM2 on llama-server, Piper)"
scripts/setup-local-engines.sh
WITH_OPENAI=1 WITH_WAKE=1 scripts/engines.sh start
trap 'echo "==> stopping the local engines"; WITH_OPENAI=1 WITH_WAKE=1 scripts/engines.sh stop || true' EXIT
if [[ $(id -u) -eq 0 ]]; then E="${ENGINES_DIR:-/var/cache/pichat-engines}"; else E="${ENGINES_DIR:-$HOME/.cache/pichat-engines}"; fi
export PICHAT_WAKE_MODELS="$E/wake"

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "==> cargo test"
cargo test --all-targets
echo "==> the server's tests again on PostgreSQL (a private cluster)"
PICHAT_TEST_STORE=postgres cargo test --test server_actions --test server_robustness --test sync \
  --test web_app --test web_http
echo "==> end-to-end on the real engines"
WITH_OPENAI=1 WITH_WAKE=1 scripts/engines.sh status   # each still up, or why not
cargo test --test e2e_engines -- --ignored --test-threads=1
echo "==> hands-free on real audio (wake word models, echo cancellation, the real engines)"
cargo test --lib wake:: -- --ignored
cargo test --test hands_free -- --ignored --test-threads=1
echo "==> aarch64 (the Pi): cross build, pichat --version and the unit tests under qemu"
scripts/build-arm64.sh
echo "==> the arm64 .deb: packaged and its contents checked"
scripts/build-deb.sh --arch arm64 --no-build
