#!/usr/bin/env bash
# Make sure Debian's headless Chromium is present for the browser tests (Playwright drives
# /usr/bin/chromium; it never downloads a browser of its own). Installs it when missing and
# running as root; otherwise says what to install and fails.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium: using /usr/bin/chromium"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium: /usr/bin/chromium is missing; install the Debian package 'chromium' (sudo apt-get install chromium)" >&2
  exit 1
fi
echo "chromium: installing the Debian package (apt-get install chromium)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "chromium: installed /usr/bin/chromium"
