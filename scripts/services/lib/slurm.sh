# shellcheck shell=bash
# Single-node Slurm (Debian 12: Slurm 22.05) + munge. Sourced by the entry scripts.

SLURM_CONF=/etc/slurm/slurm.conf
SLURM_STATE_DIR=/var/lib/slurm/slurmctld
SLURM_SPOOL_DIR=/var/lib/slurm/slurmd
SLURM_LOG_DIR=/var/log/slurm
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
SLURMCTLD_LOG=$SLURM_LOG_DIR/slurmctld.log
SLURMD_LOG=$SLURM_LOG_DIR/slurmd.log
MUNGE_KEY=/etc/munge/munge.key
MUNGED_PID=/run/munge/munged.pid
MUNGED_LOG=/var/log/munge/munged.log

slurm_packages() {
    echo slurm-wlm munge
}

slurm_preinstall() { :; }

# ---------------------------------------------------------------- munge

munge_ok() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

munge_up() {
    if [[ ! -s $MUNGE_KEY ]]; then
        zs_log "slurm: creating munge key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge "$MUNGE_KEY"
    chmod 0700 /etc/munge
    chmod 0400 "$MUNGE_KEY"
    munge_ok && return 0
    zs_stop_pidfile "$MUNGED_PID" munged 10
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    # --force: start even if a stale socket/lock was left by an unclean stop.
    if ! runuser -u munge -- /usr/sbin/munged --force >>"$ZS_LOG/munged.start.log" 2>&1; then
        zs_fail slurm "munged did not start" "$ZS_LOG/munged.start.log" "$MUNGED_LOG"
        return 1
    fi
    if ! zs_wait "$ZS_TIMEOUT" munge_ok; then
        zs_fail slurm "munge -n | unmunge does not work after starting munged" "$MUNGED_LOG"
        return 1
    fi
}

# ---------------------------------------------------------------- config

slurm_nodename() {
    hostname -s
}

# NodeName line from `slurmd -C`, RealMemory lowered to 95 %.
slurm_node_line() {
    local line mem
    line=$(slurmd -C 2>/dev/null | head -n 1)
    if [[ $line != NodeName=* ]]; then
        return 1
    fi
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$((mem * 95 / 100))
    line=$(sed -E 's/ ?RealMemory=[0-9]+//' <<<"$line")
    printf '%s RealMemory=%s NodeAddr=127.0.0.1 State=UNKNOWN\n' "$line" "$mem"
}

slurm_write_conf() {
    local node_line host
    host=$(slurm_nodename)
    node_line=$(slurm_node_line) || {
        zs_fail slurm "'slurmd -C' did not print a NodeName line"
        return 2
    }
    mkdir -p /etc/slurm
    zs_write_if_changed "$SLURM_CONF" 0644 <<EOF
# Written by zbatch scripts/services/lib/slurm.sh: single-node test cluster.
# Local edits are overwritten by scripts/services/up.
ClusterName=zbatch
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_STATE_DIR
SlurmdSpoolDir=$SLURM_SPOOL_DIR
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$SLURMCTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MinJobAge=300
# Benchmarks submit thousands of trivial jobs within MinJobAge: room for their records.
MaxJobCount=100000
ReturnToService=2
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_LOG_DIR/jobcomp.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node_line
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:10
PartitionName=short Nodes=ALL Default=NO MaxTime=00:05:00 State=UP OverSubscribe=FORCE:10
EOF
}

# ---------------------------------------------------------------- checks

slurmctld_ok() {
    scontrol ping 2>/dev/null | grep -q 'is UP'
}

slurm_node_state() {
    sinfo -h -N -n "$(slurm_nodename)" -o %t 2>/dev/null | head -n 1
}

# slurm_node_ready check|fix: with "fix", resume a node left down/drained.
slurm_node_ready() {
    local st
    st=$(slurm_node_state)
    case $st in
        idle | mix | alloc | comp) return 0 ;;
        down | drain | drng | fail | failg)
            # Not "not responding" (no '*'): an admin/automatic down. Put it back.
            if [[ $1 == fix ]]; then
                scontrol update NodeName="$(slurm_nodename)" State=RESUME >/dev/null 2>&1 || true
            fi
            return 1
            ;;
        *) return 1 ;;
    esac
}

slurm_status() {
    munge_ok && zs_running "$SLURMCTLD_PID" slurmctld && zs_running "$SLURMD_PID" slurmd &&
        slurmctld_ok && slurm_node_ready check
}

# ---------------------------------------------------------------- up/down

slurm_start_daemons() {
    mkdir -p "$SLURM_STATE_DIR" "$SLURM_SPOOL_DIR" "$SLURM_LOG_DIR"
    if ! slurmctld_ok; then
        zs_stop_pidfile "$SLURMCTLD_PID" slurmctld 20
        if ! slurmctld >>"$ZS_LOG/slurmctld.start.log" 2>&1; then
            zs_fail slurm "slurmctld did not start" "$ZS_LOG/slurmctld.start.log" "$SLURMCTLD_LOG"
            return 1
        fi
        if ! zs_wait "$ZS_TIMEOUT" slurmctld_ok; then
            zs_fail slurm "slurmctld not answering 'scontrol ping' after ${ZS_TIMEOUT}s" "$SLURMCTLD_LOG"
            return 1
        fi
    fi
    if ! zs_running "$SLURMD_PID" slurmd; then
        if ! slurmd >>"$ZS_LOG/slurmd.start.log" 2>&1; then
            zs_fail slurm "slurmd did not start" "$ZS_LOG/slurmd.start.log" "$SLURMD_LOG"
            return 1
        fi
    fi
    if ! zs_wait "$ZS_TIMEOUT" slurm_node_ready fix; then
        zs_fail slurm "node $(slurm_nodename) not idle/mixed after ${ZS_TIMEOUT}s (state: '$(slurm_node_state)')" "$SLURMD_LOG" "$SLURMCTLD_LOG"
        return 1
    fi
}

slurm_probe() {
    local out
    if ! out=$(sbatch --parsable -J zbatch-services-probe -p debug -t 1 -o /dev/null -e /dev/null \
        -D /tmp --wrap true 2>&1); then
        zs_fail slurm "probe 'sbatch --wrap true' was refused: $out" "$SLURMCTLD_LOG"
        return 1
    fi
    if [[ ! $out =~ ^[0-9]+ ]]; then
        zs_fail slurm "probe sbatch printed no job id: $out" "$SLURMCTLD_LOG"
        return 1
    fi
}

slurm_up() {
    local rc=0
    zs_ensure_hostname_resolves
    munge_up || return 1
    slurm_write_conf || rc=$?
    if [[ $rc -eq 0 ]]; then
        # Config changed: restart running daemons so they pick it up.
        if zs_running "$SLURMCTLD_PID" slurmctld || zs_running "$SLURMD_PID" slurmd; then
            zs_log "slurm: slurm.conf changed, restarting slurmctld/slurmd"
            slurm_stop_daemons
        fi
    elif [[ $rc -ne 1 ]]; then
        return 1
    fi
    slurm_start_daemons || return 1
    slurm_probe
}

slurm_stop_daemons() {
    zs_stop_pidfile "$SLURMD_PID" slurmd 20
    zs_stop_pidfile "$SLURMCTLD_PID" slurmctld 30
}

slurm_down() {
    slurm_stop_daemons
    zs_stop_pidfile "$MUNGED_PID" munged 10
}
