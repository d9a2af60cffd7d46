#!/usr/bin/env bash
# Install the PostgreSQL server binaries and PostGIS (Debian packages) that the
# tests use to start a throwaway server of their own (tests/pg.py). Idempotent:
# does nothing when the binaries and the PostGIS extension are already there.
# No system service is started (and a packaged one is stopped).
set -euo pipefail

have_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null \
        && compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null
}
# PostGIS for every installed server major version (the extension's control file)
have_postgis() {
    local d ver
    for d in /usr/lib/postgresql/*/bin; do
        ver=$(basename "$(dirname "$d")")
        compgen -G "/usr/share/postgresql/$ver/extension/postgis.control" > /dev/null || return 1
    done
}

if have_server && have_postgis; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600)

# refresh the package lists only when they are missing or do not know the packages
if ! apt-cache show postgresql > /dev/null 2>&1 \
        || ! apt-cache show postgis > /dev/null 2>&1; then
    $SUDO apt-get update -q
fi
# the Debian package would start a cluster as a service; tests start their own
if ! have_server; then
    $SUDO "${APT[@]}" postgresql
fi

# PostGIS built for the installed server's major version (postgresql-NN-postgis-3)
for d in /usr/lib/postgresql/*/bin; do
    ver=$(basename "$(dirname "$d")")
    if [ ! -e "/usr/share/postgresql/$ver/extension/postgis.control" ]; then
        $SUDO "${APT[@]}" "postgresql-$ver-postgis-3"
    fi
done

# keep the packaged service from running where a service manager started it
if command -v pg_lsclusters > /dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
        $SUDO pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
fi
