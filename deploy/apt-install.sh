#!/usr/bin/env bash
# apt-get install the Debian packages named as arguments, as root or through sudo (the install-*-tools
# scripts call it for what they find missing).
set -euo pipefail
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "apt-install: need root (or sudo) to apt-get install $*" >&2; exit 1; }
  sudo="sudo"
fi
echo "apt-install: apt-get install $* (once)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
