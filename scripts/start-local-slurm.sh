#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (Debian 12, as root, no systemd), for the Slurm tests:
# munge, slurmctld and slurmd with a partition `debug` holding this host. Idempotent: exits early
# when `sinfo` already answers. Packages: slurmctld slurmd slurm-client munge (install-test-deps.sh).
set -euo pipefail
if sinfo -h >/dev/null 2>&1; then
    echo "slurm is up"; exit 0
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=localci
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
# A requeued or cancelled task gets SIGTERM, then SIGKILL after KillWait: room for a slow chunk to commit.
KillWait=120
NodeName=localhost NodeHostname=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
chown -R slurm: /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge: /run/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                 chown munge: /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || runuser -u munge -- munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    if sinfo -h -o "%T" 2>/dev/null | grep -q -E "idle|mixed|alloc"; then
        echo "slurm is up: $(sinfo -h -o '%P %D %T')"; exit 0
    fi
    sleep 1
done
echo "slurm did not come up; logs in /var/log/slurm" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
