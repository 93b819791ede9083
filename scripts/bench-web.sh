#!/usr/bin/env bash
# bench-web.sh — the web app's figures (issue 13): navigation to the
# conversation list with 10,000 conversations, opening a 10,000-message
# conversation, the app's bytes gzipped, and the server's RSS with 100 open
# browser sessions. Real headless chromium against the real server; needs
# scripts/deps.sh --test. Sizes: BENCH_CONVERSATIONS, BENCH_MESSAGES,
# BENCH_SESSIONS, BENCH_LOADS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo test --profile bench-fast --test web_bench -- --ignored --nocapture --test-threads=1
