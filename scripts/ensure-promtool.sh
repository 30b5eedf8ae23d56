#!/usr/bin/env bash
# Make sure `promtool` (Prometheus' checker for metrics and rule files) is available to the tests.
# It comes from Debian's `prometheus` package: the package is downloaded and only promtool is
# unpacked into .venv/bin, so no Prometheus server is installed or started. Idempotent.
set -euo pipefail
dest="${1:-.venv/bin}"
if command -v promtool >/dev/null 2>&1 || [ -x "$dest/promtool" ]; then
  exit 0
fi
echo "ensure-promtool: fetching promtool from Debian's prometheus package"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export DEBIAN_FRONTEND=noninteractive
( cd "$work" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; } )
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
install -m 0755 "$work/root/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version | head -n 1
