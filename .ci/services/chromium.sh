#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser tests (driven by Playwright from
# pip, the test extra; no browser is ever downloaded by Playwright). Idempotent: does
# nothing when /usr/bin/chromium exists.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
apt-cache show chromium > /dev/null 2>&1 || $SUDO apt-get update -q
$SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends chromium fonts-dejavu-core
