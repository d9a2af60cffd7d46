#!/usr/bin/env bash
# Install the PostgreSQL server binaries (Debian package) that the tests use to
# start a throwaway server of their own (tests/pg.py). Idempotent: does nothing
# when the binaries are already there. No system service is started.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null \
        && compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# refresh the package lists only when they are missing or do not know postgresql
if ! apt-cache show postgresql > /dev/null 2>&1; then
    $SUDO apt-get update -q
fi
# the Debian package would start a cluster as a service; tests start their own
$SUDO apt-get install -y -q --no-install-recommends postgresql

# keep the packaged service from running where a service manager started it
if command -v pg_lsclusters > /dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
        $SUDO pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
fi
