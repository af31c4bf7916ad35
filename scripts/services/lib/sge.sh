# shellcheck shell=bash
# Single-node Son of Grid Engine 8.1.9 (Debian 12 gridengine-*). Sourced by the entry scripts.

SGE_ROOT_DIR=$ZS_SGE_ROOT
SGE_CELL_NAME=$ZS_SGE_CELL
SGE_COMMON=$SGE_ROOT_DIR/$SGE_CELL_NAME/common
SGE_SPOOL=/var/spool/gridengine
SGE_QMASTER_PIDFILE=$SGE_SPOOL/qmaster/qmaster.pid
SGE_QMASTER_LOG=$SGE_SPOOL/qmaster/messages
# sge_execd names its spool folder "localhost" because of host_aliases.
SGE_EXECD_PIDFILE=$SGE_SPOOL/execd/localhost/execd.pid
SGE_EXECD_LOG=$SGE_SPOOL/execd/localhost/messages
SGE_ENV_FILE=$ZS_STATE/sge.env
SGE_QUEUE=all.q
SGE_PE=smp
SGE_SLOTS=16

export SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME

# Client commands: call the binaries directly. Debian's /usr/bin wrappers run
# util/arch each time (~60 ms per call instead of ~8 ms).
sge_cmd() {
    local b=$1
    shift
    if [[ -x /usr/lib/gridengine/$b ]]; then
        /usr/lib/gridengine/"$b" "$@"
    else
        command "$b" "$@"
    fi
}

sge_packages() {
    echo gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0
}

sge_host() {
    hostname
}

sge_preinstall() {
    local host p
    host=$(sge_host)
    for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
        debconf-set-selections <<EOF
$p shared/gridengineconfig boolean true
$p shared/gridenginecell string $SGE_CELL_NAME
$p shared/gridenginemaster string $host
EOF
    done
}

# ---------------------------------------------------------------- helpers

# sge_edit_fields KEY VALUE [KEY VALUE ...] < qconf-show-output > new-file
# Rewrites "key value" lines (joining SGE's backslash continuation lines).
# Exit status 0 if something changed, 1 if every key already had its value.
sge_edit_fields() {
    local args=() k v
    while [[ $# -ge 2 ]]; do
        k=$1 v=$2
        shift 2
        args+=("$k=$v")
    done
    awk -v pairs="$(printf '%s\n' "${args[@]}")" '
        BEGIN {
            n = split(pairs, arr, "\n")
            for (i = 1; i <= n; i++) {
                if (arr[i] == "") continue
                eq = index(arr[i], "=")
                want[substr(arr[i], 1, eq - 1)] = substr(arr[i], eq + 1)
            }
            changed = 0
            buf = ""
        }
        function flush(line,   key, val) {
            if (line == "") return
            key = line; sub(/[ \t].*$/, "", key)
            val = line; sub(/^[^ \t]+[ \t]*/, "", val)
            gsub(/[ \t]+/, " ", val); sub(/ $/, "", val)
            if (key in want) {
                if (val != want[key]) changed = 1
                val = want[key]
                seen[key] = 1
            }
            if (key ~ /^#/) { print line; return }
            printf "%-30s %s\n", key, val
        }
        {
            line = $0
            if (buf != "") { sub(/^[ \t]+/, "", line); line = buf " " line }
            if (line ~ /\\$/) { sub(/[ \t]*\\$/, "", line); buf = line; next }
            buf = ""
            flush(line)
        }
        END {
            flush(buf)
            for (k in want) if (!(k in seen)) { printf "%-30s %s\n", k, want[k]; changed = 1 }
            exit(changed ? 0 : 1)
        }'
}

sge_qmaster_ok() {
    zs_running "$SGE_QMASTER_PIDFILE" sge_qmaster && sge_cmd qstat >/dev/null 2>&1
}

# State column of our queue instance ("" when healthy); fails if no such line.
sge_queue_state() {
    local line
    line=$(sge_cmd qstat -f -q "$SGE_QUEUE" 2>/dev/null | awk -v q="$SGE_QUEUE@" 'index($1, q) == 1 {print; exit}')
    [[ -n $line ]] || return 1
    awk '{print $6}' <<<"$line"
}

# sge_queue_ready check|fix: with "fix", clear error/disabled/suspended states.
sge_queue_ready() {
    local st
    st=$(sge_queue_state) || return 1
    case $st in
        "") return 0 ;;
        *u*) return 1 ;; # execd has not reported yet
        *)
            if [[ $1 == fix ]]; then
                sge_cmd qmod -c "$SGE_QUEUE" >/dev/null 2>&1 || true
                sge_cmd qmod -e "$SGE_QUEUE" >/dev/null 2>&1 || true
                sge_cmd qmod -usq "$SGE_QUEUE" >/dev/null 2>&1 || true
            fi
            return 1
            ;;
    esac
}

sge_status() {
    sge_qmaster_ok && zs_running "$SGE_EXECD_PIDFILE" sge_execd && sge_queue_ready check
}

# ---------------------------------------------------------------- configuration

sge_write_files() {
    local host
    host=$(sge_host)
    # Cluster initialisation normally happens in gridengine-master's postinst when
    # debconf was preseeded; redo it if the packages were installed without that.
    if [[ ! -e $SGE_SPOOL/spooldb/sge ]]; then
        zs_log "sge: initialising cluster spool"
        mkdir -p "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_COMMON" "$SGE_SPOOL/execd"
        chown sgeadmin:sgeadmin "$SGE_SPOOL/qmaster" "$SGE_SPOOL/qmaster/job_scripts" \
            "$SGE_SPOOL/spooldb" "$SGE_SPOOL/execd" "$SGE_ROOT_DIR" "$SGE_ROOT_DIR/$SGE_CELL_NAME" "$SGE_COMMON"
        [[ -e $SGE_COMMON/bootstrap ]] ||
            install -m0644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$SGE_COMMON/bootstrap"
        if ! su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT_DIR $SGE_CELL_NAME $SGE_SPOOL/spooldb sgeadmin" \
            sgeadmin >>"$ZS_LOG/sge-init.log" 2>&1; then
            zs_fail sge "init_cluster failed" "$ZS_LOG/sge-init.log"
            return 1
        fi
    fi
    if [[ $(cat "$SGE_COMMON/act_qmaster" 2>/dev/null || true) != "$host" ]]; then
        echo "$host" >"$SGE_COMMON/act_qmaster"
        chown sgeadmin:sgeadmin "$SGE_COMMON/act_qmaster"
    fi
    # commlib refuses hosts whose reverse lookup does not match: alias localhost.
    if zs_write_if_changed "$SGE_COMMON/host_aliases" 0644 <<<"$host localhost"; then
        chown sgeadmin:sgeadmin "$SGE_COMMON/host_aliases"
    fi
    zs_write_if_changed "$SGE_ENV_FILE" 0644 <<EOF || true
# Grid Engine environment for zbatch tests (written by scripts/services/up).
# Source it BEFORE starting Python when using DRMAA.
export SGE_ROOT=$SGE_ROOT_DIR
export SGE_CELL=$SGE_CELL_NAME
export DRMAA_LIBRARY_PATH=$ZS_DRMAA_LIB
export GLIBC_TUNABLES=$ZS_GLIBC_TUNABLES
EOF
}

# Global configuration. Returns 0 if it changed, 1 if not, 2 on error.
sge_configure_global() {
    local dir rc=0
    dir=$(mktemp -d)
    sge_cmd qconf -sconf global >"$dir/cur" 2>"$dir/err" || {
        zs_fail sge "qconf -sconf failed: $(cat "$dir/err")"
        rm -rf "$dir"
        return 2
    }
    sge_edit_fields \
        min_uid 0 min_gid 0 mailer /bin/true \
        reporting_params "accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00" \
        <"$dir/cur" >"$dir/global" || rc=$?
    if [[ $rc -eq 0 ]]; then
        if ! (cd "$dir" && sge_cmd qconf -Mconf global) >"$dir/err" 2>&1; then
            zs_fail sge "qconf -Mconf global failed: $(cat "$dir/err")"
            rm -rf "$dir"
            return 2
        fi
    fi
    rm -rf "$dir"
    return "$rc"
}

sge_configure_cluster() {
    local host dir rc out
    host=$(sge_host)
    dir=$(mktemp -d)
    # Scheduler: run every second instead of every 15 s.
    sge_cmd qconf -ssconf >"$dir/cur"
    rc=0
    sge_edit_fields schedule_interval 0:0:1 flush_submit_sec 1 flush_finish_sec 1 \
        <"$dir/cur" >"$dir/sched" || rc=$?
    if [[ $rc -eq 0 ]] && ! out=$(sge_cmd qconf -Msconf "$dir/sched" 2>&1); then
        zs_fail sge "qconf -Msconf failed: $out"
        rm -rf "$dir"
        return 1
    fi
    # This host as submit and execution host (qmaster host is an admin host already).
    if ! sge_cmd qconf -ss 2>/dev/null | grep -qx "$host"; then
        sge_cmd qconf -as "$host" >/dev/null 2>&1 || {
            zs_fail sge "qconf -as $host failed"
            rm -rf "$dir"
            return 1
        }
    fi
    if ! sge_cmd qconf -sel 2>/dev/null | grep -qx "$host"; then
        cat >"$dir/exechost" <<EOF
hostname              $host
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
        if ! out=$(sge_cmd qconf -Ae "$dir/exechost" 2>&1); then
            zs_fail sge "qconf -Ae failed: $out"
            rm -rf "$dir"
            return 1
        fi
    fi
    # Parallel environment smp.
    if ! sge_cmd qconf -sp "$SGE_PE" >/dev/null 2>&1; then
        cat >"$dir/pe" <<EOF
pe_name            $SGE_PE
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
        if ! out=$(sge_cmd qconf -Ap "$dir/pe" 2>&1); then
            zs_fail sge "qconf -Ap (pe $SGE_PE) failed: $out"
            rm -rf "$dir"
            return 1
        fi
    fi
    # Queue all.q on this host.
    local add=0
    if ! sge_cmd qconf -sq "$SGE_QUEUE" >"$dir/cur" 2>/dev/null; then
        sge_cmd qconf -sq >"$dir/cur"
        add=1
    fi
    rc=0
    sge_edit_fields qname "$SGE_QUEUE" hostlist "$host" slots "$SGE_SLOTS" pe_list "$SGE_PE" \
        load_thresholds NONE shell /bin/bash \
        <"$dir/cur" >"$dir/queue" || rc=$?
    if [[ $add -eq 1 ]]; then
        if ! out=$(sge_cmd qconf -Aq "$dir/queue" 2>&1); then
            zs_fail sge "qconf -Aq $SGE_QUEUE failed: $out"
            rm -rf "$dir"
            return 1
        fi
    elif [[ $rc -eq 0 ]]; then
        if ! out=$(sge_cmd qconf -Mq "$dir/queue" 2>&1); then
            zs_fail sge "qconf -Mq $SGE_QUEUE failed: $out"
            rm -rf "$dir"
            return 1
        fi
    fi
    rm -rf "$dir"
}

# ---------------------------------------------------------------- up/down

sge_start_qmaster() {
    sge_qmaster_ok && return 0
    zs_stop_pidfile "$SGE_QMASTER_PIDFILE" sge_qmaster 30
    if ! /usr/sbin/sge_qmaster >>"$ZS_LOG/sge_qmaster.start.log" 2>&1; then
        zs_fail sge "sge_qmaster did not start" "$ZS_LOG/sge_qmaster.start.log" "$SGE_QMASTER_LOG"
        return 1
    fi
    if ! zs_wait "$ZS_TIMEOUT" sge_qmaster_ok; then
        zs_fail sge "sge_qmaster not answering qstat after ${ZS_TIMEOUT}s" "$SGE_QMASTER_LOG"
        return 1
    fi
}

sge_start_execd() {
    zs_running "$SGE_EXECD_PIDFILE" sge_execd && return 0
    if ! /usr/sbin/sge_execd >>"$ZS_LOG/sge_execd.start.log" 2>&1; then
        zs_fail sge "sge_execd did not start" "$ZS_LOG/sge_execd.start.log" "$SGE_EXECD_LOG"
        return 1
    fi
}

sge_probe() {
    local out
    if ! out=$(cd /tmp && sge_cmd qsub -terse -b y -sync n -o /dev/null -e /dev/null -N zbatch-services-probe /bin/true 2>&1); then
        zs_fail sge "probe qsub was refused: $out" "$SGE_QMASTER_LOG"
        return 1
    fi
    if [[ ! $out =~ ^[0-9]+$ ]]; then
        zs_fail sge "probe qsub printed no job id: $out" "$SGE_QMASTER_LOG"
        return 1
    fi
    if ! sge_cmd qstat >/dev/null 2>&1; then
        zs_fail sge "qstat fails after probe submission" "$SGE_QMASTER_LOG"
        return 1
    fi
}

sge_up() {
    local rc=0
    zs_ensure_hostname_resolves
    sge_write_files || return 1
    sge_start_qmaster || return 1
    sge_configure_global || rc=$?
    [[ $rc -le 1 ]] || return 1
    if [[ $rc -eq 0 ]] && zs_running "$SGE_EXECD_PIDFILE" sge_execd; then
        zs_log "sge: global configuration changed, restarting sge_execd"
        zs_stop_pidfile "$SGE_EXECD_PIDFILE" sge_execd 20
    fi
    sge_configure_cluster || return 1
    sge_start_execd || return 1
    if ! zs_wait "$ZS_TIMEOUT" sge_queue_ready fix; then
        zs_fail sge "queue instance $SGE_QUEUE@$(sge_host) not usable after ${ZS_TIMEOUT}s (state: '$(sge_queue_state || echo missing)')" \
            "$SGE_EXECD_LOG" "$SGE_QMASTER_LOG"
        return 1
    fi
    sge_probe
}

sge_down() {
    zs_stop_pidfile "$SGE_EXECD_PIDFILE" sge_execd 20
    zs_stop_pidfile "$SGE_QMASTER_PIDFILE" sge_qmaster 30
}
