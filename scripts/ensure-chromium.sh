#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium: the e2e tests open the
# services' pages in it over the DevTools protocol (tests/cdp.py) and fail (never skip) without it.
# Present: used as it is. Absent: installed from the Debian archive (`apt-get install chromium`, as
# root; no browser download of its own). Idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
die() {
  echo "ensure-chromium: $*; install Debian's chromium package (/usr/bin/chromium) by hand and re-run (scripts/ensure-chromium.sh)" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 || die "no apt-get on this machine"
sudo=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo"
  sudo="sudo"
fi
echo "ensure-chromium: installing Debian's chromium (apt-get install chromium)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
  || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
  || die "apt-get install chromium failed"
[ -x /usr/bin/chromium ] || die "chromium installed but /usr/bin/chromium is missing"
/usr/bin/chromium --version
