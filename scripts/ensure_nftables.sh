#!/usr/bin/env bash
# Make sure nft (Debian's nftables) is present: bench/rtc_loss.py drops packets at random in a
# network namespace of its own with it where the kernel has no netem (tc qdisc netem), as
# the kernels of some hosts do not. Installs it when missing and running as root; otherwise
# says what to install and fails.
set -euo pipefail

if command -v nft >/dev/null 2>&1; then
  echo "nftables: using $(command -v nft)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "nftables: nft is missing; install the Debian package 'nftables' (sudo apt-get install nftables)" >&2
  exit 1
fi
echo "nftables: installing the Debian package (apt-get install nftables)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq nftables >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nftables >/dev/null; }
echo "nftables: installed $(command -v nft)"
