#!/usr/bin/env bash
# Real Krita 5 for tests/test_krita_e2e.py (Debian 12 package; see ../shared/HOSTS.md).
# Idempotent: returns at once when everything is installed. Needs root (or sudo) to install.
# python3-pyqt5 is only a Recommends of krita, so it is named; xvfb + xauth give xvfb-run.
set -euo pipefail
PKGS="krita python3-pyqt5 python3-sip xvfb xauth"
start=$(date +%s)
say() { echo "setup_krita: $* ($(( $(date +%s) - start ))s)"; }

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ] && command -v krita >/dev/null && command -v xvfb-run >/dev/null; then
    say "already installed: $(dpkg-query -W -f='${Version}' krita 2>/dev/null)"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
say "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $PKGS
command -v krita >/dev/null && command -v xvfb-run >/dev/null
say "installed krita $(dpkg-query -W -f='${Version}' krita)"
