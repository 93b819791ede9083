#!/usr/bin/env bash
# check-units-nspawn.sh — run the real units under a real systemd, on a
# machine without systemd as PID 1: boots a Debian bookworm container
# (debootstrap + systemd-nspawn), installs pichat there with install.sh and
# checks what `systemd-analyze` cannot: the hardened pichat.service starts,
# its socket is 0660 in a 0750 /run/pichat, a member of group pichat can use
# it and others cannot, `systemctl reload` keeps the same process, stop
# removes /run/pichat; pichat-server.service starts, reloads in place and
# stops. Not part of CI (needs root, namespaces and ~150 MB of Debian
# packages); run it after changing the units or the sd_notify/SIGHUP code.
#
# Usage: scripts/check-units-nspawn.sh [BINARY]   (default target/release/pichat)
# Env:   NSPAWN_ROOTFS=/var/cache/pichat-nspawn/bookworm  the container's root (reused)
# The container has no sound card or GPIO: the config uses wav: devices and
# ptt.source = "none", and the device ACL (DeviceAllow=) is not exercised.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-target/release/pichat}"
ROOTFS="${NSPAWN_ROOTFS:-/var/cache/pichat-nspawn/bookworm}"
MACHINE=pichat-check

die() { printf 'check-units-nspawn.sh: %s\n' "$*" >&2; exit 1; }
log() { printf '==> %s\n' "$*"; }
fails=0
check() { # DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then echo "  PASS $what"; else echo "  FAIL $what"; fails=$((fails + 1)); fi
}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, systemd-nspawn)"
[[ -x "$bin" ]] || die "$bin is missing: cargo build --release first, or pass a binary"
missing=()
for p in debootstrap systemd-container; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ ! -x "$ROOTFS/lib/systemd/systemd" ]]; then
  log "debootstrap bookworm into $ROOTFS (once, ~1 min)"
  mirror="$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,libasound2,passwd,ca-certificates,procps \
    bookworm "$ROOTFS" "${mirror:-http://deb.debian.org/debian}" >/dev/null
fi

log "installing pichat into the container with scripts/install.sh"
stage="$ROOTFS/root/pichat-src"
rm -rf "$stage"
mkdir -p "$stage/scripts" "$stage/systemd" "$stage/config"
cp scripts/install.sh "$stage/scripts/"
cp systemd/pichat.service systemd/pichat-server.service "$stage/systemd/"
cp config/pichat.toml "$stage/config/"
cp README.md "$stage/"
cp "$bin" "$stage/pichat"
chroot "$ROOTFS" /root/pichat-src/scripts/install.sh /root/pichat-src/pichat
# No hardware in the container: WAV files for microphone and speaker.
cp tests/data/question.wav "$ROOTFS/etc/pichat/in.wav"
sed -e 's|^input = "default"|input = "wav:/etc/pichat/in.wav"|' \
    -e 's|^output = "default"|output = "wav:/var/lib/pichat/out.wav"|' \
    -e 's|^source = "gpio"|source = "none"|' \
    config/pichat.toml > "$ROOTFS/etc/pichat/pichat.toml"
for u in pichat pichat-server; do rm -rf "$ROOTFS/etc/systemd/system/$u.service.d"; done
if ! grep -q 'READY=1' "$ROOTFS/usr/bin/pichat"; then
  echo "  NOTE this pichat sends no sd_notify READY=1 yet: testing with Type=simple, no watchdog"
  for u in pichat pichat-server; do
    mkdir -p "$ROOTFS/etc/systemd/system/$u.service.d"
    printf '[Service]\nType=simple\nWatchdogSec=0\n' > "$ROOTFS/etc/systemd/system/$u.service.d/no-notify.conf"
  done
fi
chroot "$ROOTFS" sh -c 'id alice >/dev/null 2>&1 || useradd -m -G pichat alice; id bob >/dev/null 2>&1 || useradd -m bob'
printf '[ptt]\nsocket = "/run/pichat/pichat.sock"\n' > "$ROOTFS/etc/pichat/socket.toml"

log "booting the container (systemd-nspawn --boot)"
nspawn_log="$(mktemp)"
systemd-nspawn -D "$ROOTFS" --boot --console=pipe --register=no --keep-unit \
  --machine="$MACHINE" >"$nspawn_log" 2>&1 &
nspawn=$!
cleanup() {
  [[ -n "${pid1:-}" ]] && nsenter -t "$pid1" -a systemctl poweroff >/dev/null 2>&1
  for _ in $(seq 30); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.5; done
  kill "$nspawn" 2>/dev/null || true
  rm -f "$nspawn_log"
}
trap cleanup EXIT
pid1=""
for _ in $(seq 60); do
  pid1="$(pgrep -P "$nspawn" -x systemd || true)"
  [[ -n "$pid1" ]] && break
  sleep 0.5
done
[[ -n "$pid1" ]] || { cat "$nspawn_log" >&2; die "the container did not boot (log above)"; }
in_ct() { nsenter -t "$pid1" -a "$@"; }
for _ in $(seq 60); do
  state="$(in_ct systemctl is-system-running 2>/dev/null || true)"
  [[ "$state" == running || "$state" == degraded ]] && break
  sleep 0.5
done

log "pichat.service"
active() { in_ct systemctl is-active --quiet "$1"; }
wait_active() { for _ in $(seq 40); do active "$1" && return 0; sleep 0.5; done; return 1; }
check "pichat.service is active" wait_active pichat.service
check "/run/pichat is 0750 pichat:pichat" \
  test "$(in_ct stat -c '%a %U:%G' /run/pichat)" = "750 pichat:pichat"
check "the control socket is 0660 pichat:pichat" \
  test "$(in_ct stat -c '%a %U:%G' /run/pichat/pichat.sock)" = "660 pichat:pichat"
check "a member of group pichat can push to talk" \
  in_ct runuser -u alice -- pichat -c /etc/pichat/socket.toml ptt status
check "another user cannot" \
  bash -c "! nsenter -t $pid1 -a runuser -u bob -- pichat -c /etc/pichat/socket.toml ptt status 2>/dev/null"
main_pid() { in_ct systemctl show -P MainPID pichat.service; }
before="$(main_pid)"
in_ct systemctl reload pichat.service || true
sleep 2
check "systemctl reload keeps the same process ($before)" \
  bash -c "[[ \"\$(nsenter -t $pid1 -a systemctl show -P MainPID pichat.service)\" == $before ]] && nsenter -t $pid1 -a systemctl is-active --quiet pichat.service"
in_ct systemctl stop pichat.service
check "stop: inactive, /run/pichat removed" \
  bash -c "! nsenter -t $pid1 -a systemctl is-active --quiet pichat.service && ! nsenter -t $pid1 -a test -e /run/pichat"
check "the journal has pichat's lines with their priority" \
  bash -c "nsenter -t $pid1 -a journalctl -u pichat.service -o verbose --no-pager | grep -q 'PRIORITY=6'"

log "pichat-server.service"
if in_ct pichat serve --help >/dev/null 2>&1; then
  in_ct systemctl start pichat-server.service || true
  check "pichat-server.service is active" wait_active pichat-server.service
  before="$(in_ct systemctl show -P MainPID pichat-server.service)"
  in_ct systemctl reload pichat-server.service || true
  sleep 1
  check "systemctl reload pichat-server keeps the same process ($before)" \
    bash -c "[[ \"\$(nsenter -t $pid1 -a systemctl show -P MainPID pichat-server.service)\" == $before ]] && nsenter -t $pid1 -a systemctl is-active --quiet pichat-server.service"
  in_ct systemctl stop pichat-server.service || true
  check "pichat-server stop: inactive" \
    bash -c "! nsenter -t $pid1 -a systemctl is-active --quiet pichat-server.service"
else
  echo "  SKIP this pichat has no 'serve' command yet"
fi

if ((fails)); then
  in_ct journalctl -u pichat.service -u pichat-server.service -n 30 --no-pager -o cat || true
  die "$fails check(s) failed; the units' log is above"
fi
log "all checks passed"
