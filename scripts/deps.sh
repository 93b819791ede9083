#!/usr/bin/env bash
# deps.sh — install what building and testing pichat needs on Debian or
# Raspberry Pi OS (bookworm or later). Idempotent; runs apt only for what is
# missing. Usage: scripts/deps.sh [--build|--test]
#   --build  compilers and libraries to build pichat (default)
#   --test   also what the tests use (python3, sqlite3, util-linux's setpriv,
#            systemd-analyze, Debian's chromium + chromium-driver for the web app,
#            PostgreSQL for the server's second store)
set -euo pipefail

mode="${1:---build}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "deps.sh: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

pkgs=(build-essential pkg-config libasound2-dev curl ca-certificates)
if [[ "$mode" == "--test" ]]; then
  # python3/sqlite3: lock and schema tests; pulseaudio + the ALSA pulse plugin:
  # real-time virtual microphone and speaker for audio tests; systemd:
  # systemd-analyze for tests/systemd_units.rs (works without systemd running).
  # libspeexdsp1: the echo canceller pichat loads at run time (tests/hands_free.rs, audio::aec).
  # chromium + chromium-driver: the web app's tests drive Debian's browser
  # headless over WebDriver (tests/web_app.rs); never a browser download.
  # postgresql: initdb/pg_ctl for the private clusters the server tests run
  # on (serverdb::postgres::cluster; no system cluster is used).
  pkgs+=(python3 sqlite3 util-linux pulseaudio pulseaudio-utils libasound2-plugins alsa-utils systemd chromium chromium-driver libspeexdsp1 espeak-ng postgresql)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust: the toolchain from rustup (Debian's cargo is too old for edition 2024).
if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "==> installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if [[ "$mode" == "--test" ]]; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
