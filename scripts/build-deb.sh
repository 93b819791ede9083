#!/usr/bin/env bash
# build-deb.sh — build the pichat .deb (cargo-deb metadata in Cargo.toml) and
# check what is in it: the binary for the right machine, both systemd units,
# the example config as a conffile, maintainer scripts with the systemd
# snippets filled in and valid shell.
#
# Usage: scripts/build-deb.sh [--arch arm64|amd64] [--no-build]
#   --arch arm64  the Pi (default); the binary comes from scripts/build-arm64.sh
#   --arch amd64  this machine; cargo build --release
#   --no-build    package the binary already built
#
# Result: target/debian/pichat_<version>-1_<arch>.deb; its path is the last
# line printed. Install on the Pi with: sudo apt install ./pichat_*_arm64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

arch=arm64
build=1
while (($#)); do
  case "$1" in
    --arch) arch="${2:-}"; shift 2 ;;
    --arch=*) arch="${1#--arch=}"; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option '$1' (usage: scripts/build-deb.sh [--arch arm64|amd64] [--no-build])" >&2; exit 2 ;;
  esac
done

log() { printf '==> %s\n' "$*"; }
die() { printf 'build-deb.sh: %s\n' "$*" >&2; exit 1; }

case "$arch" in
  arm64) target=(--target aarch64-unknown-linux-gnu); bin=target/aarch64-unknown-linux-gnu/release/pichat; machine=AArch64 ;;
  amd64) target=(); bin=target/release/pichat; machine=X86-64 ;;
  *) die "--arch must be arm64 or amd64, not '$arch'" ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked --quiet
fi

if ((build)); then
  if [[ "$arch" == arm64 ]]; then
    scripts/build-arm64.sh --no-tests
  else
    log "cargo build --release"
    cargo build --release
  fi
fi
[[ -x "$bin" ]] || die "$bin is missing: build it first (drop --no-build)"

log "cargo deb ${target[*]} --no-build"
deb=$(cargo deb "${target[@]}" --no-build --no-strip 2>/dev/null | tail -n 1)
[[ -f "$deb" ]] || die "cargo deb did not produce a package (got '$deb')"

log "checking $deb"
fail() { printf 'build-deb.sh: %s: %s\n' "$deb" "$*" >&2; exit 1; }
[[ "$(dpkg-deb -f "$deb" Architecture)" == "$arch" ]] || fail "Architecture is $(dpkg-deb -f "$deb" Architecture), not $arch"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/pichat ./etc/pichat/pichat.toml \
         ./usr/lib/systemd/system/pichat.service ./usr/lib/systemd/system/pichat-server.service; do
  grep -q " $f\$" <<<"$contents" || fail "does not contain $f"
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/control"
grep -qx /etc/pichat/pichat.toml "$work/control/conffiles" || fail "/etc/pichat/pichat.toml is not a conffile"
for s in postinst postrm prerm; do
  [[ -f "$work/control/$s" ]] || fail "has no $s"
  sh -n "$work/control/$s" || fail "$s is not valid shell"
  ! grep -q '#DEBHELPER#' "$work/control/$s" || fail "$s still has the #DEBHELPER# marker"
done
grep -q 'useradd --system' "$work/control/postinst" || fail "postinst does not create the pichat user"
grep -q 'deb-systemd-helper enable pichat.service' "$work/control/postinst" || fail "postinst does not enable pichat.service"
grep -q 'deb-systemd-invoke $_dh_action pichat.service' "$work/control/postinst" || fail "postinst does not start pichat.service"
! grep -q 'deb-systemd-invoke $_dh_action pichat-server.service' "$work/control/postinst" || fail "postinst starts pichat-server.service (it is installed only)"
dpkg-deb -x "$deb" "$work/root"
file_out=$(readelf -h "$work/root/usr/bin/pichat" | sed -n 's/^ *Machine: *//p')
[[ "$file_out" == *"$machine"* ]] || fail "usr/bin/pichat is built for '$file_out', not $machine"
cmp -s "$work/root/etc/pichat/pichat.toml" config/pichat.toml || fail "etc/pichat/pichat.toml differs from config/pichat.toml"
log "OK: $deb ($(stat -c %s "$deb") bytes; $arch; units, conffile, maintainer scripts checked)"
echo "$deb"
