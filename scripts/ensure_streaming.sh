#!/usr/bin/env bash
# Make sure what live streaming runs on is present (docs/streaming.md): nginx with the RTMP
# module (Debian's nginx and libnginx-mod-rtmp) takes the publishers' RTMP and serves the
# HLS files; ffmpeg makes the ladder, ffprobe reads it back in the tests. Installs the
# Debian packages when missing and running as root (without starting Debian's own nginx
# service: the platform runs nginx with a config of its own under var/); otherwise says
# what to install and fails.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
ls /usr/lib/nginx/modules/ngx_rtmp_module.so >/dev/null 2>&1 || missing+=(libnginx-mod-rtmp)
{ command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; } || missing+=(ffmpeg)
if [ ${#missing[@]} -eq 0 ]; then
  echo "streaming: using $(command -v nginx) with the RTMP module and $(command -v ffmpeg)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "streaming: missing ${missing[*]}; install the Debian packages (sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "streaming: installing the Debian packages ${missing[*]} (apt-get install)"
export DEBIAN_FRONTEND=noninteractive
# Debian's package would start its own nginx on port 80; nothing of ours wants that.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
echo "streaming: installed $(command -v nginx) and $(command -v ffmpeg)"
