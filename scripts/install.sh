#!/usr/bin/env bash
# install.sh — install pichat as a system service on the Pi (run as root).
#
# Usage: scripts/install.sh [--no-start] [--root DIR] [BINARY]
#   BINARY       the pichat binary to install as /usr/bin/pichat; default: the
#                first of target/aarch64-unknown-linux-gnu/release/pichat and
#                target/release/pichat that runs here; none: keep /usr/bin/pichat
#   --no-start   install and enable, but do not start or restart anything
#   --root DIR   install into another root (a mounted SD card, an image, the
#                tests): no binary is run, and systemctl only enables (offline)
#
# What it does, each step only if needed (running it twice changes nothing):
#   - group pichat and system user pichat (home /var/lib/pichat, no login),
#     member of audio and gpio (gpio is created if missing; the Pi's udev
#     rules give it /dev/gpiomem and /dev/gpiochip*)
#   - /usr/bin/pichat, /usr/share/doc/pichat/README.md
#   - /etc/pichat/pichat.toml from config/pichat.toml, only if absent
#   - /etc/systemd/system/pichat.service and pichat-server.service
#   - systemctl daemon-reload; enable pichat.service; start it (restart it if
#     its binary or unit changed). pichat-server.service is installed, not enabled.
# Files come from the tree this script is in (scripts/.., as deploy.sh copies it).
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
args="$*"
ROOT=""
start=1
bin=""
while (($#)); do
  case "$1" in
    --no-start) start=0 ;;
    --root) ROOT="${2:?--root needs a directory}"; shift ;;
    --root=*) ROOT="${1#--root=}" ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) [[ -z "$bin" ]] || { echo "install.sh: only one BINARY, got '$bin' and '$1'" >&2; exit 2; }
       bin="$1" ;;
  esac
  shift
done
if [[ -n "$ROOT" ]]; then
  [[ -d "$ROOT" ]] || { echo "install.sh: --root $ROOT is not a directory" >&2; exit 2; }
  ROOT="$(cd "$ROOT" && pwd)"
  [[ "$ROOT" != / ]] || ROOT=""
fi

log() { printf '==> %s\n' "$*"; }
ok() { printf '    (ok) %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: sudo $0 $args"
for f in systemd/pichat.service systemd/pichat-server.service config/pichat.toml; do
  [[ -f "$SRC/$f" ]] || die "$SRC/$f is missing: run this script from a pichat checkout (or the tree deploy.sh copies)"
done

# Accounts: in $ROOT's files with --prefix, or the system's.
prefix=()
[[ -z "$ROOT" ]] || prefix=(--prefix "$ROOT")
group_exists() {
  if [[ -n "$ROOT" ]]; then grep -q "^$1:" "$ROOT/etc/group" 2>/dev/null; else getent group "$1" >/dev/null; fi
}
user_exists() {
  if [[ -n "$ROOT" ]]; then grep -q "^$1:" "$ROOT/etc/passwd" 2>/dev/null; else getent passwd "$1" >/dev/null; fi
}
in_group() { # USER GROUP: listed as a member (primary groups do not count here)
  local line
  if [[ -n "$ROOT" ]]; then line="$(grep "^$2:" "$ROOT/etc/group" || true)"; else line="$(getent group "$2" || true)"; fi
  [[ ",${line##*:}," == *",$1,"* ]]
}

# ---------------------------------------------------------------- user and groups
for g in audio gpio pichat; do
  if group_exists "$g"; then
    ok "group $g exists"
  else
    log "groupadd --system $g"
    groupadd "${prefix[@]}" --system "$g"
  fi
done
if user_exists pichat; then
  ok "user pichat exists"
else
  log "useradd --system pichat (groups audio,gpio; home /var/lib/pichat; no login)"
  useradd "${prefix[@]}" --system --gid pichat --groups audio,gpio --home-dir /var/lib/pichat \
    --no-create-home --shell /usr/sbin/nologin --comment "pichat voice assistant" pichat
fi
for g in audio gpio; do
  if in_group pichat "$g"; then
    ok "pichat is in group $g"
  else
    log "usermod -a -G $g pichat"
    usermod "${prefix[@]}" -a -G "$g" pichat
  fi
done

# ---------------------------------------------------------------- files
changed=0
# install_file MODE SRC DEST: copies SRC over DEST (atomically: a running
# binary is replaced, not overwritten) unless they are already equal; sets
# installed=1 if it copied.
installed=0
install_file() {
  local mode=$1 from=$2 to="$ROOT$3"
  installed=0
  if [[ -f "$to" ]] && cmp -s "$from" "$to"; then
    ok "$3 is up to date"
    return 0
  fi
  log "installing $3"
  install -d -m 0755 "$(dirname "$to")"
  install -m "$mode" "$from" "$to.new"
  mv -f "$to.new" "$to"
  installed=1
}

if [[ -z "$bin" ]]; then
  for c in "$SRC/target/aarch64-unknown-linux-gnu/release/pichat" "$SRC/target/release/pichat"; do
    [[ -x "$c" ]] || continue
    if [[ -n "$ROOT" ]] || "$c" --version >/dev/null 2>&1; then bin="$c"; break; fi
    echo "    (skip) $c does not run on this machine ($(uname -m))"
  done
fi
if [[ -n "$bin" ]]; then
  [[ -f "$bin" && -x "$bin" ]] || die "$bin is not an executable file"
  if [[ -z "$ROOT" ]]; then
    v="$("$bin" --version 2>&1)" ||
      die "$bin does not run on this $(uname -m) machine ($v); build it for this machine (scripts/build-arm64.sh makes an aarch64 one)"
    log "binary: $bin ($v)"
  fi
  install_file 0755 "$bin" /usr/bin/pichat
  if ((installed)); then changed=1; fi
elif [[ -x "$ROOT/usr/bin/pichat" ]]; then
  ok "no new binary given or built; keeping /usr/bin/pichat"
else
  die "no pichat binary: pass its path (e.g. target/release/pichat), or build one first (cargo build --release, or scripts/build-arm64.sh)"
fi
if [[ -f "$SRC/README.md" ]]; then
  install_file 0644 "$SRC/README.md" /usr/share/doc/pichat/README.md
fi

conf=/etc/pichat/pichat.toml
if [[ -e "$ROOT$conf" ]]; then
  ok "$conf exists; kept as it is"
  cmp -s "$SRC/config/pichat.toml" "$ROOT$conf" ||
    echo "    (the shipped example differs: diff $SRC/config/pichat.toml $conf)"
else
  install_file 0644 "$SRC/config/pichat.toml" "$conf"
fi
if [[ -z "$ROOT" ]]; then
  /usr/bin/pichat config check "$conf" ||
    die "$conf has the problems above: fix them (pichat config check $conf), then run this script again"
fi

unit_changed=0
for u in pichat.service pichat-server.service; do
  install_file 0644 "$SRC/systemd/$u" "/etc/systemd/system/$u"
  if ((installed)); then unit_changed=1; changed=1; fi
done

# ---------------------------------------------------------------- systemd
if [[ -n "$ROOT" ]]; then
  if [[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/pichat.service" ]]; then
    ok "pichat.service is enabled in $ROOT"
  else
    log "systemctl --root=$ROOT enable pichat.service"
    systemctl --root="$ROOT" enable pichat.service
  fi
  log "installed into $ROOT (nothing started)"
  exit 0
fi
if [[ ! -d /run/systemd/system ]]; then
  if command -v systemctl >/dev/null; then
    systemctl enable pichat.service # works offline: only symlinks
    echo "install.sh: systemd is not running here (a chroot?): files installed and pichat.service enabled, nothing started" >&2
  else
    echo "install.sh: no systemd here: files installed, nothing enabled or started" >&2
  fi
  exit 0
fi
if ((unit_changed)); then
  log "systemctl daemon-reload"
  systemctl daemon-reload
fi
if systemctl is-enabled --quiet pichat.service; then
  ok "pichat.service is enabled"
else
  log "systemctl enable pichat.service"
  systemctl enable pichat.service
fi
if ((start == 0)); then
  log "done (--no-start: start it with 'systemctl start pichat')"
  exit 0
fi
if systemctl is-active --quiet pichat.service; then
  if ((changed)); then
    log "systemctl restart pichat.service (its binary or unit changed)"
    systemctl restart pichat.service || true
  else
    ok "pichat.service is running"
  fi
else
  log "systemctl start pichat.service"
  systemctl start pichat.service || true
fi
if ! systemctl is-active --quiet pichat.service; then
  systemctl status --no-pager --lines=0 pichat.service || true
  journalctl -u pichat.service -n 20 --no-pager || true
  die "pichat.service did not start; the log is above (journalctl -u pichat -e for more)"
fi
log "pichat.service is running. Logs: journalctl -u pichat -f; after editing $conf: systemctl reload pichat"
echo "    The chat server is installed, not enabled: systemctl enable --now pichat-server"
