#!/usr/bin/env bash
# A real single-node (Son of) Grid Engine 8.1.9 for the job tests (Debian 12
# gridengine-master/-exec/-client), as root, without systemd. Idempotent:
# installs packages only if missing, starts sge_qmaster/sge_execd only if not
# running, fixes the settings a non-interactive install gets wrong, and waits
# until a probe job runs. Afterwards: . /var/lib/gridengine/default/common/settings.sh
# Queue: all.q with one slot per core on this host.
set -euo pipefail
t0=$(date +%s)
HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts
if ! dpkg -s gridengine-master gridengine-exec gridengine-client >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-cache show gridengine-master >/dev/null 2>&1 || apt-get update -qq
  # the postinst sets up the spool (SGE_ROOT=/var/lib/gridengine, cell default) but
  # leaves act_qmaster empty when non-interactive; policy-rc.d keeps exim4 from starting
  install_pkgs() { apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >/dev/null; }
  # stale package lists (404s): refresh once and retry
  install_pkgs gridengine-master gridengine-exec gridengine-client \
    || { apt-get update -qq; install_pkgs gridengine-master gridengine-exec gridengine-client; }
fi
COMMON=/var/lib/gridengine/default/common
echo "$HOST" > $COMMON/act_qmaster
# 127.0.0.1 reverse-resolves to "localhost" while the client calls itself "$HOST":
# "access denied (client IP resolved to host name localhost)" without host_aliases
echo "$HOST localhost $(hostname -f 2>/dev/null || true)" > $COMMON/host_aliases
chown sgeadmin: $COMMON/act_qmaster $COMMON/host_aliases
# shellcheck disable=SC1091
. $COMMON/settings.sh

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive /var/spool/gridengine/qmaster/qmaster.pid || /etc/init.d/gridengine-master start >/dev/null
for _ in $(seq 60); do qconf -sh >/dev/null 2>&1 && break; sleep 0.5; done
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# root jobs go to Eqw unless min_uid/min_gid are 0; -Mconf names the object after the FILE
# finished jobs are read back with qacct: write the accounting file at once (default 15 s)
if ! qconf -sconf global | grep -Eq '^min_uid +0$' || ! qconf -sconf global | grep -q 'accounting_flush_time=00:00:00'; then
  qconf -sconf global | sed -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
    -e 's/sharelog=00:00:00$/sharelog=00:00:00 accounting_flush_time=00:00:00/' > "$W/global"
  grep -q 'accounting_flush_time=00:00:00' "$W/global" || { echo "sge: could not set accounting_flush_time" >&2; exit 1; }
  qconf -Mconf "$W/global" >/dev/null
fi
# schedule every second (default 15 s)
if ! qconf -ssconf | grep -Eq '^schedule_interval +0:0:1$'; then
  qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
    -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' > "$W/sched"
  qconf -Msconf "$W/sched" >/dev/null
fi
alive /run/gridengine/execd.pid || /etc/init.d/gridengine-exec start >/dev/null
for _ in $(seq 60); do qconf -sel 2>/dev/null | grep -qx "$HOST" && break; sleep 0.5; done
if ! qconf -sql 2>/dev/null | grep -qx all.q; then
  # the template's pe_list names PEs that do not exist: -Aq would fail
  qconf -sq | sed -e 's/^qname .*/qname all.q/' -e "s/^hostlist .*/hostlist $HOST/" \
    -e "s/^slots .*/slots $(nproc)/" -e 's/^pe_list .*/pe_list NONE/' > "$W/all.q"
  qconf -Aq "$W/all.q" >/dev/null
fi
# a busy 2-core box is "overloaded" at the default np_load_avg=1.75
qconf -rattr queue load_thresholds NONE all.q >/dev/null 2>&1 || true

# probe: a job must run
printf '#!/bin/sh\nhostname\n' > "$W/probe.sh"
out=$(timeout 90 qsub -sync y -j y -o "$W/probe.out" "$W/probe.sh" >/dev/null && cat "$W/probe.out")
[ "$out" = "$HOST" ] || { echo "sge: probe job failed: $out" >&2; qstat -f >&2 || true; exit 1; }
echo "sge ready in $(( $(date +%s) - t0 )) s"
