#!/usr/bin/env bash
# Install the OpenSSH server and client binaries (Debian packages) that the job
# tests use: the tests start a private sshd of their own on 127.0.0.1 (a free
# port, its own host key, an authorized_keys made by the fixture), so no system
# service is started here. Idempotent: does nothing when both are installed.
set -euo pipefail

if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show openssh-server >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
# without systemd the postinst cannot start the service ("policy-rc.d denied"): fine
install_pkgs() {
  $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >/dev/null
}
# stale package lists (404s): refresh once and retry
install_pkgs openssh-server openssh-client || { $SUDO apt-get update -qq; install_pkgs openssh-server openssh-client; }
echo "sshd installed: $(/usr/sbin/sshd -V 2>&1 | head -1 || true)"
