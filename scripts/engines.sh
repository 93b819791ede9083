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
# llama.cpp threads spin, so with 2 cores leave one to the rest), STT_THREADS
# (Whisper's threads, default: the cores there are; its own default of 4 on
# 2 cores made end of speech -> first audio 1.76 s instead of 1.52 s in
# `pichat bench wake`);
# LLAMA_PORT, WHISPER_PORT, PIPER_PORT, FWS_PORT, LOCALTTS_PORT, OWW_PORT move an engine
# off its default port (the tests use spare ports).
#
# Each engine runs as its own process group whose leader's pid is in
# $ENGINES_DIR/run/NAME.pid; `stop` ends the whole group. An engine is "ours"
# when its command line names $ENGINES_DIR: `stop` also ends one of ours that
# holds an engine's port without a pid file (an older engines.sh lost track of
# them), and leaves any other program on that port alone.
set -euo pipefail

if [[ $(id -u) -eq 0 ]]; then E="${ENGINES_DIR:-/var/cache/pichat-engines}"; else E="${ENGINES_DIR:-$HOME/.cache/pichat-engines}"; fi
E="${E%/}"
V="$E/venv/bin"
RUN="$E/run"
LOGS="$E/logs"
mkdir -p "$RUN" "$LOGS"

# name port
services() {
  echo "llama ${LLAMA_PORT:-8081}"
  echo "whisper ${WHISPER_PORT:-10300}"
  echo "piper ${PIPER_PORT:-10200}"
  if [[ "${WITH_OPENAI:-0}" == 1 ]]; then
    echo "fws ${FWS_PORT:-18000}"
    echo "localtts ${LOCALTTS_PORT:-17878}"
  fi
  if [[ "${WITH_WAKE:-0}" == 1 ]]; then
    echo "oww ${OWW_PORT:-10400}"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid of the process listening on 127.0.0.1 (or any address) at TCP port
# $1, from /proc (no ss/lsof needed); empty when none is visible to us.
port_pid() {
  local hex inode fd
  hex=$(printf '%04X' "$1")
  # /proc/net/tcp{,6}: local_address is ADDR:PORT in hex, st 0A is LISTEN, field 10 the inode.
  inode=$(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
  [[ -n "$inode" && "$inode" != 0 ]] || return 0
  fd=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\\[$inode\\]" -print -quit 2>/dev/null || true)
  [[ -n "$fd" ]] && { fd=${fd#/proc/}; echo "${fd%%/*}"; }
  return 0
}

# True when engine $1 on port $2 answers: llama-server once its /health says
# 200 (it opens its port before the model is loaded and answers 503 until
# then, so a crash in the first decode shows as an exit here, not as ready),
# the Wyoming and OpenAI ones when their port accepts.
ready() {
  case $1 in
    llama) curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$2/health" 2>/dev/null ;;
    *) port_open "$2" ;;
  esac
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# True when pid $1 is alive and one of our engines (its command names $E).
ours() { [[ -n "$1" ]] && living "$1" && [[ "$(cmdline "$1")" == *"$E/"* ]]; }

# The pid in NAME's pid file when that process is alive and ours.
pid_of() {
  local pid
  [[ -f "$RUN/$1.pid" ]] && pid=$(<"$RUN/$1.pid") && ours "$pid" && echo "$pid"
  return 0
}

# The process group of pid $1 (from /proc/PID/stat: the fields after "(comm) "
# are state, ppid, pgrp).
pgid_of() {
  local stat rest pgrp
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  rest=${stat##*) }
  read -r _ _ pgrp _ <<<"$rest"
  echo "$pgrp"
}

# Ends pid $1 with its process group when the group is one of ours (an engine
# started by launch leads its own group, so its children go with it):
# SIGTERM, up to 5 s, then SIGKILL.
stop_pid() {
  local pid=$1 target=$1 pgid
  pgid=$(pgid_of "$pid")
  if [[ "$pgid" == "$pid" ]] || ours "$pgid"; then target="-$pgid"; fi
  kill -TERM -- "$target" 2>/dev/null || true
  for _ in $(seq 50); do living "$target" || return 0; sleep 0.1; done
  kill -KILL -- "$target" 2>/dev/null || true
  for _ in $(seq 20); do living "$target" || return 0; sleep 0.1; done
  return 1
}

# True while pid $1 (or, for -N, any process of group N) has not exited: some
# thread of it is not a zombie. (A process's first thread turns zombie while
# the others still run; and where nothing reaps orphans at once, a zombie
# lingers.)
living() {
  local g=${1#-} files
  if [[ "$1" == -* ]]; then files=(/proc/[0-9]*/task/*/stat); else files=(/proc/"$g"/task/*/stat); fi
  # (awk reads to the end: an early exit would fail cat with SIGPIPE, and so the pipeline.)
  cat "${files[@]}" 2>/dev/null |
    awk -v g="$g" -v grp="${1:0:1}" '{
      sub(/.*\) /, "")
      if ($1 != "Z" && (grp != "-" || $3 == g)) found = 1
    } END { exit !found }'
}

# Runs engine $1 on port $2 in place of this (sub)shell, in a session and
# process group of its own, so the pid that start records is the engine's.
launch() {
  local name=$1 port=$2
  case $name in
    llama)
      [[ -x "$E/bin/llama-server" ]] || { echo "engines.sh: $E/bin/llama-server is missing; run scripts/setup-local-engines.sh" >&2; return 1; }
      exec setsid "$E/bin/llama-server" -m "$E/models/SmolLM2-135M-Instruct.Q4_1.gguf" --host 127.0.0.1 --port "$port" \
        -t "${LLM_THREADS:-1}" -c 2048 -np 1 -a smollm2 --offline ;;
    whisper)
      HF_HUB_OFFLINE=1 exec setsid "$V/wyoming-faster-whisper" --uri "tcp://127.0.0.1:$port" \
        --model "$E/models/whisper-tiny.en-ct2" --language en --local-files-only \
        --cpu-threads "${STT_THREADS:-$(nproc)}" \
        --data-dir "$E/data/wyoming-fw" --download-dir "$E/data/wyoming-fw" ;;
    piper)
      exec setsid "$V/wyoming-piper" --uri "tcp://127.0.0.1:$port" --voice en_US-joe-medium \
        --data-dir "$E/models/piper" --download-dir "$E/data/wyoming-piper" ;;
    fws)
      HF_HUB_OFFLINE=1 exec setsid "$V/faster-whisper-server" "$E/models/whisper-tiny.en-ct2" --host 127.0.0.1 --port "$port" ;;
    localtts)
      LOCAL_TTS_DATA_DIR="$E/data/local-tts" exec setsid "$V/local-tts" --host 127.0.0.1 --port "$port" ;;
    oww)
      [[ -x "$E/venv-oww/bin/python" ]] || { echo "engines.sh: $E/venv-oww is missing; run scripts/setup-local-engines.sh" >&2; return 1; }
      exec setsid "$E/venv-oww/bin/python" -m wyoming_openwakeword --uri "tcp://127.0.0.1:$port" --preload-model ok_nabu ;;
  esac
}

start() {
  [[ -x "$V/python" ]] || { echo "engines.sh: no engines in $E; run scripts/setup-local-engines.sh first" >&2; exit 1; }
  local name port pid rc how started=()
  while read -r name port; do
    pid=$(pid_of "$name")
    if [[ -n "$pid" ]]; then
      echo "  $name: already running on 127.0.0.1:$port (pid $pid)"
      continue
    fi
    if port_open "$port"; then
      pid=$(port_pid "$port")
      if ours "$pid"; then
        echo "$pid" >"$RUN/$name.pid"
        echo "  $name: already running on 127.0.0.1:$port (pid $pid, found on its port)"
      else
        echo "  $name: port $port is in use by ${pid:+pid $pid: }$( [[ -n "$pid" ]] && cmdline "$pid" || echo "another program"); using it as it is"
      fi
      continue
    fi
    launch "$name" "$port" >"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
    started+=("$name")
    echo "  $name: starting on 127.0.0.1:$port (pid $!, log $LOGS/$name.log)"
  done < <(services)
  # Wait until every engine answers (models load in a few seconds).
  local t0=$SECONDS
  while read -r name port; do
    until ready "$name" "$port"; do
      if [[ -z "$(pid_of "$name")" ]]; then
        # Its exit status, when this shell started it (wait says 127 otherwise).
        how=""
        wait "$(<"$RUN/$name.pid")" 2>/dev/null && rc=0 || rc=$?
        if ((rc > 128)); then how=" (killed by signal $((rc - 128))$( ((rc == 139)) && echo ": a segmentation fault"))"
        elif ((rc != 127)); then how=" (exit status $rc)"; fi
        echo "engines.sh: $name exited$how before it was ready; see $LOGS/$name.log:" >&2
        tail -5 "$LOGS/$name.log" >&2
        rm -f "$RUN/$name.pid"
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
  local name port pid failed=0
  while read -r name port; do
    pid=$(pid_of "$name")
    if [[ -n "$pid" ]]; then
      if stop_pid "$pid"; then echo "  $name: stopped (pid $pid)"; else echo "  $name: pid $pid did not stop" >&2; failed=1; fi
    elif [[ -f "$RUN/$name.pid" ]]; then
      echo "  $name: its pid file named a process that is gone; removed it"
    fi
    rm -f "$RUN/$name.pid"
    # Whatever still holds the port: one of ours without a pid file, or not ours.
    pid=$(port_pid "$port")
    if ours "$pid"; then
      if stop_pid "$pid"; then
        echo "  $name: stopped pid $pid, found on port $port without a pid file"
      else
        echo "  $name: pid $pid on port $port did not stop" >&2; failed=1
      fi
    elif [[ -n "$pid" ]]; then
      echo "  $name: port $port is held by pid $pid ($(cmdline "$pid")), not an engine of ours; left alone"
    elif port_open "$port"; then
      echo "  $name: port $port is held by a process we cannot see; left alone"
    fi
  done < <(WITH_OPENAI=1 WITH_WAKE=1 services)
  return $failed
}

status() {
  local name port pid bad=0
  while read -r name port; do
    pid=$(pid_of "$name")
    if port_open "$port"; then
      [[ -n "$pid" ]] || pid=$(port_pid "$port")
      if ours "$pid"; then echo "  $name: up on 127.0.0.1:$port (pid $pid)"
      else echo "  $name: up on 127.0.0.1:$port (${pid:+pid $pid, }not started by engines.sh)"; fi
    elif [[ -n "$pid" ]]; then
      echo "  $name: starting (pid $pid, port $port not open yet)"; bad=1
    elif [[ -f "$RUN/$name.pid" ]]; then
      # Started and gone since: say why, if its log knows.
      echo "  $name: down: it exited after it started; the end of $LOGS/$name.log:"
      tail -5 "$LOGS/$name.log" 2>/dev/null | sed 's/^/    /'
      bad=1
    else
      echo "  $name: down"; bad=1
    fi
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
