#!/usr/bin/env bash
# setup-wake.sh — put the wake word models and TensorFlow Lite's C library where
# `[engines.micro]` finds them, from the PyPI wheel pymicro-wakeword (Apache-2.0:
# microWakeWord models okay_nabu, hey_jarvis, hey_mycroft, alexa as NAME.tflite +
# NAME.json, and libtensorflowlite_c.so), and openWakeWord's models for the second
# opinion into DEST/openwakeword from the wheel pyopen-wakeword (melspectrogram and
# embedding models, Apache-2.0; the word models okay_nabu, hey_jarvis, hey_mycroft,
# alexa, hey_rhasspy are CC BY-NC-SA 4.0: non-commercial use only; NO_OWW=1 skips
# them). Only pip's download is used: nothing is installed into Python, and pichat
# needs no Python at run time. No model hub.
#
# Idempotent (a stamp records the version). Usage:
#   scripts/setup-wake.sh [DEST]
# DEST: default $WAKE_DIR, else /var/lib/pichat/wake as root, else
#       ~/.local/share/pichat/wake (the defaults of engines.micro.models).
# ARCH=aarch64 fetches the Raspberry Pi's build (default: this machine's).
set -euo pipefail

VER=2.5.0
OWW_VER=1.1.0
if [[ $# -ge 1 ]]; then
  DEST="$1"
elif [[ -n "${WAKE_DIR:-}" ]]; then
  DEST="$WAKE_DIR"
elif [[ $(id -u) -eq 0 ]]; then
  DEST=/var/lib/pichat/wake
else
  DEST="${XDG_DATA_HOME:-$HOME/.local/share}/pichat/wake"
fi
ARCH="${ARCH:-$(uname -m)}"
case "$ARCH" in
  x86_64|amd64) PLAT=manylinux_2_35_x86_64 ;;
  aarch64|arm64) PLAT=manylinux_2_35_aarch64 ;;
  *) echo "setup-wake.sh: no pymicro-wakeword build for $ARCH" >&2; exit 1 ;;
esac
stamp="$DEST/.pymicro-wakeword-$VER-$PLAT"
oww_stamp="$DEST/openwakeword/.pyopen-wakeword-$OWW_VER"
if [[ -f "$stamp" && -f "$DEST/libtensorflowlite_c.so" && -f "$DEST/okay_nabu.tflite" ]] \
   && { [[ -n "${NO_OWW:-}" ]] || [[ -f "$oww_stamp" && -f "$DEST/openwakeword/melspectrogram.tflite" ]]; }; then
  echo "    (skip) wake models present: $DEST"
  exit 0
fi
PIP="${PIP:-}"
if [[ -z "$PIP" ]]; then
  for p in pip3 pip "python3 -m pip"; do
    if $p --version >/dev/null 2>&1; then PIP="$p"; break; fi
  done
fi
[[ -n "$PIP" ]] || { echo "setup-wake.sh: needs pip (apt-get install python3-pip)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "==> pymicro-wakeword $VER ($PLAT) -> $DEST"
$PIP download -q --no-deps --only-binary=:all: --platform "$PLAT" -d "$tmp" "pymicro-wakeword==$VER"
whl=("$tmp"/pymicro_wakeword-*.whl)
python3 - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
mkdir -p "$DEST"
install -m 0644 "$tmp"/x/pymicro_wakeword/models/*.tflite "$tmp"/x/pymicro_wakeword/models/*.json "$DEST/"
install -m 0644 "$tmp"/x/pymicro_wakeword/lib/libtensorflowlite_c.so "$DEST/"
rm -f "$DEST"/.pymicro-wakeword-*
touch "$stamp"
if [[ -z "${NO_OWW:-}" ]]; then
  echo "==> pyopen-wakeword $OWW_VER (openWakeWord's models, the second opinion) -> $DEST/openwakeword"
  $PIP download -q --no-deps --only-binary=:all: --platform "$PLAT" -d "$tmp/oww" "pyopen-wakeword==$OWW_VER"
  owhl=("$tmp"/oww/pyopen_wakeword-*.whl)
  python3 - "$owhl" "$tmp/ox" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  mkdir -p "$DEST/openwakeword"
  install -m 0644 "$tmp"/ox/pyopen_wakeword/models/*.tflite "$DEST/openwakeword/"
  rm -f "$DEST"/openwakeword/.pyopen-wakeword-*
  touch "$oww_stamp"
fi
ls "$DEST"
