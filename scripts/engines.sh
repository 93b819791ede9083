#!/usr/bin/env bash
# engines.sh — start, stop and check pichat's local engines (installed by
# scripts/setup-local-engines.sh), on loopback, on the ports the default
# config (config/pichat.toml) uses:
#
#   llama-server (SmolLM2-135M, OpenAI chat + SSE)   http://127.0.0.1:8081/v1   engine "home"
#   wyoming-faster-whisper (Whisper tiny.en)         tcp://127.0.0.1:10300      engine "whisper"
#   wyoming-piper (Piper en_US-joe-medium)           tcp://127.0.0.1:10200      engine "piper"
#   faster-whisper-server (OpenAI transcriptions)    http://127.0.0.1:18000/v1  (optional, WITH_OPENAI=1)
#   local-tts-studio (OpenAI speech)                 http://127.0.0.1:17878/v1  (optional, WITH_OPENAI=1)
#   wyoming-openwakeword (wake words, ok_nabu...)     tcp://127.0.0.1:10400      (optional, WITH_WAKE=1)
#
# Usage: scripts/engines.sh start|stop|status|restart
# Env: ENGINES_DIR (as for setup-local-engines.sh), LLM_THREADS (default 1:
# llama.cpp threads spin, so with 2 cores leave one to the rest).
set -euo pipefail

if [[ $(id -u) -eq 0 ]]; then E="${ENGINES_DIR:-/var/cache/pichat-engines}"; else E="${ENGINES_DIR:-$HOME/.cache/pichat-engines}"; fi
V="$E/venv/bin"
RUN="$E/run"
LOGS="$E/logs"
mkdir -p "$RUN" "$LOGS"

# name port health-check command...
services() {
  echo "llama 8081"
  echo "whisper 10300"
  echo "piper 10200"
  if [[ "${WITH_OPENAI:-0}" == 1 ]]; then
    echo "fws 18000"
    echo "localtts 17878"
  fi
  if [[ "${WITH_WAKE:-0}" == 1 ]]; then
    echo "oww 10400"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() {
  local pid
  [[ -f "$RUN/$1.pid" ]] && pid=$(cat "$RUN/$1.pid") && kill -0 "$pid" 2>/dev/null
}

launch() {
  local name=$1 port=$2
  case $name in
    llama)
      [[ -x "$E/bin/llama-server" ]] || { echo "engines.sh: $E/bin/llama-server is missing; run scripts/setup-local-engines.sh" >&2; return 1; }
      "$E/bin/llama-server" -m "$E/models/SmolLM2-135M-Instruct.Q4_1.gguf" --host 127.0.0.1 --port "$port" \
        -t "${LLM_THREADS:-1}" -c 2048 -np 1 -a smollm2 --offline ;;
    whisper)
      HF_HUB_OFFLINE=1 "$V/wyoming-faster-whisper" --uri "tcp://127.0.0.1:$port" \
        --model "$E/models/whisper-tiny.en-ct2" --language en --local-files-only \
        --data-dir "$E/data/wyoming-fw" --download-dir "$E/data/wyoming-fw" ;;
    piper)
      "$V/wyoming-piper" --uri "tcp://127.0.0.1:$port" --voice en_US-joe-medium \
        --data-dir "$E/models/piper" --download-dir "$E/data/wyoming-piper" ;;
    fws)
      HF_HUB_OFFLINE=1 "$V/faster-whisper-server" "$E/models/whisper-tiny.en-ct2" --host 127.0.0.1 --port "$port" ;;
    localtts)
      LOCAL_TTS_DATA_DIR="$E/data/local-tts" "$V/local-tts" --host 127.0.0.1 --port "$port" ;;
    oww)
      [[ -x "$E/venv-oww/bin/python" ]] || { echo "engines.sh: $E/venv-oww is missing; run scripts/setup-local-engines.sh" >&2; return 1; }
      exec "$E/venv-oww/bin/python" -m wyoming_openwakeword --uri "tcp://127.0.0.1:$port" --preload-model ok_nabu ;;
  esac
}

start() {
  [[ -x "$V/python" ]] || { echo "engines.sh: no engines in $E; run scripts/setup-local-engines.sh first" >&2; exit 1; }
  local name port
  while read -r name port; do
    if running "$name" || port_open "$port"; then
      echo "  $name: already running on 127.0.0.1:$port"
      continue
    fi
    launch "$name" "$port" >"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
    echo "  $name: starting on 127.0.0.1:$port (log $LOGS/$name.log)"
  done < <(services)
  # Wait until every port answers (models load in a few seconds).
  local t0=$SECONDS
  while read -r name port; do
    until port_open "$port"; do
      if ! running "$name"; then
        echo "engines.sh: $name exited; see $LOGS/$name.log:" >&2
        tail -5 "$LOGS/$name.log" >&2
        exit 1
      fi
      if (( SECONDS - t0 > 120 )); then
        echo "engines.sh: $name is not ready after 120 s; see $LOGS/$name.log" >&2
        exit 1
      fi
      sleep 0.2
    done
    echo "  $name: ready"
  done < <(services)
}

stop() {
  local name port pid
  while read -r name port; do
    if running "$name"; then
      pid=$(cat "$RUN/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      echo "  $name: stopped"
    fi
    rm -f "$RUN/$name.pid"
  done < <(WITH_OPENAI=1 WITH_WAKE=1 services)
}

status() {
  local name port bad=0
  while read -r name port; do
    if port_open "$port"; then echo "  $name: up on 127.0.0.1:$port"; else echo "  $name: down"; bad=1; fi
  done < <(services)
  return $bad
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: scripts/engines.sh start|stop|status|restart" >&2; exit 2 ;;
esac
