#!/usr/bin/env bash
# Install Open MPI (Debian) for the MPI engine tests; mpi4py comes from pip
# (the test extra). Idempotent: does nothing when mpiexec and the headers exist.
set -euo pipefail
if command -v mpiexec > /dev/null 2>&1 && dpkg -s libopenmpi-dev > /dev/null 2>&1; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
apt-cache show openmpi-bin > /dev/null 2>&1 || $SUDO apt-get update -q
$SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends openmpi-bin libopenmpi-dev
