#!/usr/bin/env bash
# Real GIMP 3 for tests/test_gimp_e2e.py: a Debian trixie chroot (GIMP 3 is not in Debian 12, and
# installing trixie's packages on the host would upgrade libc), see ../shared/HOSTS.md.
#
# Idempotent: does nothing when $GIMP_CHROOT is ready; restores it from the zstd tarball
# $GIMP_CHROOT_CACHE when that exists (seconds); otherwise builds it with debootstrap (about
# 2-3 minutes, ~700 MB of downloads) and writes the tarball for next time.
# Needs root. Mounts (/proc, /sys, /dev for apt) live in a private mount namespace, so nothing
# stays mounted when the script ends, even on failure.
#
#   GIMP_CHROOT        where the chroot goes (default /work/gimp-chroot; the test reads the same)
#   GIMP_CHROOT_CACHE  tarball cache (default ${DENOISE_CI_CACHE:-/var/cache/denoise-ci}/gimp-chroot-trixie.tar.zst)
#   DEBIAN_MIRROR      default http://deb.debian.org/debian
set -euo pipefail

CHROOT=${GIMP_CHROOT:-/work/gimp-chroot}
CACHE=${GIMP_CHROOT_CACHE:-${DENOISE_CI_CACHE:-/var/cache/denoise-ci}/gimp-chroot-trixie.tar.zst}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
PKGS="gimp python3-gi gir1.2-gimp-3.0"
STAMP=.denoise-gimp-ready   # inside the chroot; written last, so a half-built tree never counts
start=$(date +%s)
say() { echo "setup_gimp: $* ($(( $(date +%s) - start ))s)"; }

ready() { [ -f "$1/$STAMP" ] && [ -x "$1/usr/bin/gimp-console-3.0" ]; }

if ready "$CHROOT"; then
    say "GIMP chroot ready at $CHROOT ($(cat "$CHROOT/$STAMP"))"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "setup_gimp: needs root (debootstrap, chroot)" >&2; exit 1; }
if [ -e "$CHROOT" ] && [ ! -f "$CHROOT/$STAMP" ] && [ -n "$(ls -A "$CHROOT" 2>/dev/null)" ]; then
    # never replace a folder this script did not make (GIMP_CHROOT pointing somewhere else)
    echo "setup_gimp: $CHROOT exists and is not a chroot made by this script; remove it or set GIMP_CHROOT" >&2
    exit 1
fi

need=""
command -v zstd >/dev/null || need="$need zstd"
if [ ! -f "$CACHE" ] && ! command -v debootstrap >/dev/null; then need="$need debootstrap"; fi
if [ -n "$need" ]; then
    say "apt-get install$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

work="$CHROOT.partial"
rm -rf "$work"
mkdir -p "$work"

if [ -f "$CACHE" ]; then
    say "restoring $CACHE"
    if tar --zstd --numeric-owner -xpf "$CACHE" -C "$work" && ready "$work"; then
        rm -rf "$CHROOT"
        mv "$work" "$CHROOT"
        say "GIMP chroot restored at $CHROOT ($(cat "$CHROOT/$STAMP"))"
        exit 0
    fi
    say "cache $CACHE is unusable; building from scratch"
    rm -rf "$work"
    mkdir -p "$work"
fi

say "debootstrap $SUITE into $work"
# debootstrap mounts /proc and /sys itself; the private namespace undoes any it leaves behind
unshare -m --propagation private \
    debootstrap --variant=minbase "$SUITE" "$work" "$MIRROR" >"$work.debootstrap.log" 2>&1 \
    || { tail -30 "$work.debootstrap.log" >&2; exit 1; }
rm -f "$work.debootstrap.log"

say "apt-get install $PKGS (in the chroot)"
unshare -m --propagation private sh -eu -c '
    W=$1; shift
    mount -t proc proc "$W/proc"
    mount -t sysfs sys "$W/sys"
    mount --rbind /dev "$W/dev"
    cp -L /etc/resolv.conf "$W/etc/resolv.conf" 2>/dev/null || true
    chroot "$W" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
        sh -euc "apt-get update -qq && apt-get install -y -qq --no-install-recommends $* >/dev/null && apt-get clean"
' sh "$work" $PKGS
rm -rf "$work"/var/lib/apt/lists/* "$work"/var/cache/apt/*.bin

version=$(chroot "$work" /usr/bin/env -i PATH=/usr/bin:/bin dpkg-query -W -f='${Version}' gimp)
echo "$SUITE gimp $version" >"$work/$STAMP"
ready "$work" || { echo "setup_gimp: gimp-console-3.0 missing after install" >&2; exit 1; }

say "writing cache $CACHE"
mkdir -p "$(dirname "$CACHE")"
tar --zstd --numeric-owner -cpf "$CACHE.tmp" -C "$work" . && mv "$CACHE.tmp" "$CACHE"

rm -rf "$CHROOT"
mv "$work" "$CHROOT"
say "GIMP chroot ready at $CHROOT ($SUITE gimp $version; cache $(du -h "$CACHE" | cut -f1))"
