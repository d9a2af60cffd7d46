#!/usr/bin/env bash
# Install the Ceph radosgw binaries (Debian packages) that the S3 tests use to
# start a throwaway single-node Ceph + radosgw of their own (tests/s3.py).
# Idempotent: does nothing when the binaries are already there. No service is
# started here, and none is left running by the packages (no systemd).
set -euo pipefail

have() { command -v radosgw >/dev/null 2>&1 && command -v ceph-mon >/dev/null 2>&1 \
         && command -v ceph-osd >/dev/null 2>&1 && command -v radosgw-admin >/dev/null 2>&1 \
         && command -v monmaptool >/dev/null 2>&1; }
if have; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# refresh the package lists only when they are missing or do not know radosgw
if ! apt-cache show radosgw > /dev/null 2>&1; then
    $SUDO apt-get update -q
fi
# ~61 MB download; ceph-mon brings monmaptool and ceph-authtool, ceph-common the `ceph` CLI
$SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends \
    radosgw ceph-mon ceph-osd ceph-common
have
