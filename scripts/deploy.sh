#!/usr/bin/env bash
# deploy.sh — build pichat for the Pi and install it there over ssh.
#
# Usage: scripts/deploy.sh [--no-tests] [USER@]HOST
#   --no-tests   skip the unit tests under qemu in the build step
# Env: SSH_OPTS   extra ssh options, e.g. "-p 2222 -i ~/.ssh/pi"
#
# 1. scripts/build-arm64.sh (aarch64 binary, checked under qemu);
# 2. checks that HOST is a 64-bit ARM Linux (uname -m = aarch64);
# 3. copies the binary, systemd/*.service, config/pichat.toml, README.md and
#    scripts/install.sh to a temporary directory on HOST;
# 4. runs install.sh there with sudo (user, groups, files, enable), restarts
#    pichat.service, shows its status and the last journal lines.
# Needs on HOST: sshd, sudo for the ssh user (a password prompt is fine when
# this runs on a terminal), systemd.
# shellcheck disable=SC2029 # remote commands are built here on purpose
set -euo pipefail
cd "$(dirname "$0")/.."

build_args=()
host=""
for a in "$@"; do
  case "$a" in
    --no-tests) build_args+=(--no-tests) ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "deploy.sh: unknown option '$a' (usage: scripts/deploy.sh [--no-tests] [USER@]HOST)" >&2; exit 2 ;;
    *) [[ -z "$host" ]] || { echo "deploy.sh: one HOST only, got '$host' and '$a'" >&2; exit 2; }
       host="$a" ;;
  esac
done
[[ -n "$host" ]] || { echo "usage: scripts/deploy.sh [--no-tests] [USER@]HOST" >&2; exit 2; }

log() { printf '==> %s\n' "$*"; }
die() { printf 'deploy.sh: %s\n' "$*" >&2; exit 1; }

# shellcheck disable=SC2206 # SSH_OPTS is a list of words on purpose
ssh_opts=(-o BatchMode=no -o ConnectTimeout=15 ${SSH_OPTS:-})
tty_opt=()
[[ -t 0 ]] && tty_opt=(-t) # sudo may ask for a password
on_host() { ssh "${ssh_opts[@]}" "$host" "$@"; }

log "checking $host"
arch="$(on_host uname -m)" ||
  die "cannot ssh to $host (ssh ${ssh_opts[*]} $host): check the name, that sshd runs there and your key (ssh-copy-id $host)"
[[ "$arch" == aarch64 ]] ||
  die "$host is $arch, this deploys an aarch64 binary: install the 64-bit Raspberry Pi OS (Bookworm or later)"

scripts/build-arm64.sh "${build_args[@]}"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/scripts" "$stage/systemd" "$stage/config"
cp target/aarch64-unknown-linux-gnu/release/pichat "$stage/pichat"
cp systemd/pichat.service systemd/pichat-server.service "$stage/systemd/"
cp config/pichat.toml "$stage/config/"
cp scripts/install.sh "$stage/scripts/"
cp README.md "$stage/"

remote="$(on_host 'mktemp -d /tmp/pichat-deploy.XXXXXX')" || die "cannot create a temporary directory on $host"
log "copying to $host:$remote"
tar -C "$stage" -cf - . | on_host "tar -C '$remote' -xf -" || die "copying to $host:$remote failed"

log "installing on $host (sudo scripts/install.sh --no-start), restarting pichat.service"
status=0
ssh "${ssh_opts[@]}" "${tty_opt[@]}" "$host" "
  sudo '$remote/scripts/install.sh' --no-start '$remote/pichat' &&
  sudo systemctl restart pichat.service; rc=\$?
  rm -rf '$remote'
  echo '==> systemctl status pichat.service'
  systemctl status --no-pager --lines=0 pichat.service
  echo '==> journalctl -u pichat.service -n 30'
  sudo journalctl -u pichat.service -n 30 --no-pager
  exit \$rc" || status=$?
if ((status)); then
  die "install or restart on $host failed (exit $status); the status and log are above"
fi
on_host 'systemctl is-active --quiet pichat.service' ||
  die "pichat.service on $host is not active after the restart; see the log above (ssh $host journalctl -u pichat -e)"
log "pichat.service is running on $host ($(on_host '/usr/bin/pichat --version'))"
