#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests, and CJK fonts so Chinese renders (also in
# screenshots). Idempotent: where both are present it only checks.
set -euo pipefail
say() { printf '[browser] %s\n' "$*"; }
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
fc-list 2>/dev/null | grep -i "Noto Sans CJK" >/dev/null || need+=(fonts-noto-cjk)  # not -q: an early exit makes fc-list fail under pipefail
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then say "need root to install ${need[*]}"; exit 1; fi
  say "installing ${need[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
