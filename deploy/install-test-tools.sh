#!/usr/bin/env bash
# What the test suite needs beyond .venv, from Debian's packages: Chromium for the ranking page's
# browser tests (driven by Playwright from PyPI, which cannot download its own browser here) and
# Prometheus with promtool for the monitoring tests. Idempotent: installs only what is missing.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && { echo "install-test-tools: chromium and prometheus present"; exit 0; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-test-tools: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-test-tools: apt-get install ${missing[*]} (once)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-test-tools: $(chromium --version 2>/dev/null | head -1); $(promtool --version 2>&1 | head -1)"
