# shellcheck shell=bash
# Shared helpers for scripts/services/{up,down,status,restart}.
# Sourced, never executed. Callers run with `set -euo pipefail`.

ZS_STATE=${ZS_STATE:-/var/lib/zbatch-services}
ZS_LOG=${ZS_LOG:-/var/log/zbatch-services}
# Seconds to wait for one service to become usable.
ZS_TIMEOUT=${ZS_TIMEOUT:-60}
ZS_ALL_SERVICES=(slurm sge sshd rabbitmq activemq)

# Grid Engine client environment (also handed to ssh sessions by our sshd).
# shellcheck disable=SC2034  # used by sge.sh and sshd.sh
ZS_SGE_ROOT=/var/lib/gridengine
# shellcheck disable=SC2034
ZS_SGE_CELL=default
# shellcheck disable=SC2034
ZS_DRMAA_LIB=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0
# Without this, dlopen of libdrmaa fails: "cannot allocate memory in static TLS block".
# shellcheck disable=SC2034
ZS_GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384

export DEBIAN_FRONTEND=noninteractive
# Daemons and Debian tools live in sbin; make sure we find them even when the
# caller has a minimal PATH.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH ;;
esac

zs_log() {
    printf '[services] %s\n' "$*" >&2
}

# zs_fail SERVICE MESSAGE [LOGFILE...]
# Prints one clear line naming the service, then the tail of each log given.
# Always returns 1 so callers can `zs_fail ...; return` or `|| return`.
zs_fail() {
    local svc=$1 msg=$2 f
    shift 2
    printf 'services: FAILED %s: %s\n' "$svc" "$msg" >&2
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf -- '--- last lines of %s ---\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
    return 1
}

zs_require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "services: must run as root" >&2
        exit 2
    fi
}

zs_init_dirs() {
    mkdir -p "$ZS_STATE" "$ZS_LOG"
    chmod 755 "$ZS_STATE"
}

# Serialise concurrent invocations (tests may call `up` from several processes).
# Call as `zs_lock "$@"` from an entry script: it re-executes the script under
# `flock -o`, so the lock is held by the flock process and is NOT inherited by
# the daemons we start (they would otherwise keep it forever).
zs_lock() {
    if [[ ${ZS_LOCKED_BY:-} == "$PPID" ]]; then
        return 0
    fi
    zs_init_dirs
    local lock=$ZS_STATE/.lock
    if ! flock -n "$lock" true; then
        zs_log "waiting for another scripts/services run to finish (lock $lock, up to ${ZS_LOCK_WAIT:-900}s, then exit 75)"
    fi
    export ZS_LOCKED_BY=$$
    exec flock -o -w "${ZS_LOCK_WAIT:-900}" -E 75 "$lock" "$0" "$@"
}

# Expand service arguments ("all" or none = every service); validates names.
# Result in the global array ZS_SELECTED.
zs_select_services() {
    ZS_SELECTED=()
    local a s known seen
    if [[ $# -eq 0 ]]; then
        set -- all
    fi
    for a in "$@"; do
        if [[ $a == all ]]; then
            set -- "${ZS_ALL_SERVICES[@]}"
            ZS_SELECTED=()
            for s in "$@"; do ZS_SELECTED+=("$s"); done
            return 0
        fi
        known=0
        for s in "${ZS_ALL_SERVICES[@]}"; do
            [[ $s == "$a" ]] && known=1
        done
        if [[ $known -eq 0 ]]; then
            echo "services: unknown service '$a' (known: ${ZS_ALL_SERVICES[*]} all)" >&2
            exit 2
        fi
        seen=0
        for s in "${ZS_SELECTED[@]}"; do
            [[ $s == "$a" ]] && seen=1
        done
        [[ $seen -eq 1 ]] || ZS_SELECTED+=("$a")
    done
}

# ---------------------------------------------------------------- packages

# zs_missing_packages PKG... : prints the ones not installed, one per line.
zs_missing_packages() {
    local p installed
    # One dpkg-query for all packages (unknown ones are reported on stderr).
    installed=" $(dpkg-query -W -f='${Package}:${db:Status-Status} ' "$@" 2>/dev/null || true) "
    for p in "$@"; do
        [[ $installed == *" $p:installed "* ]] || echo "$p"
    done
}

ZS_APT_UPDATED=0
# zs_install_packages PKG... : apt-get install (apt-get update at most once per
# invocation).
zs_install_packages() {
    local missing=("$@")
    [[ ${#missing[@]} -eq 0 ]] && return 0
    zs_log "installing: ${missing[*]}"
    local log=$ZS_LOG/apt.log
    if [[ $ZS_APT_UPDATED -eq 0 ]]; then
        if ! apt-get update -q >>"$log" 2>&1; then
            zs_fail apt "apt-get update failed" "$log"
            return 1
        fi
        ZS_APT_UPDATED=1
    fi
    if ! apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >>"$log" 2>&1; then
        zs_fail apt "apt-get install ${missing[*]} failed" "$log"
        return 1
    fi
}

# ---------------------------------------------------------------- host

# Slurm and Grid Engine need this host's name to resolve (Debian images
# normally map it in /etc/hosts; add it if missing).
zs_ensure_hostname_resolves() {
    local h
    h=$(hostname)
    if ! getent hosts "$h" >/dev/null 2>&1; then
        zs_log "adding '127.0.0.1 $h' to /etc/hosts"
        printf '127.0.0.1 %s\n' "$h" >>/etc/hosts
    fi
}

# ---------------------------------------------------------------- files

# zs_write_if_changed FILE MODE < content
# Returns 0 if the file was (re)written, 1 if it already had that content.
zs_write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "${file}.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

# ---------------------------------------------------------------- processes

# zs_alive PID : process exists and is not a zombie (PID 1 here may not reap
# the daemons we orphan).
zs_alive() {
    local st
    st=$(sed -n 's/^.*) \([A-Za-z]\).*$/\1/p' "/proc/$1/stat" 2>/dev/null || true)
    [[ -n $st && $st != Z && $st != X ]]
}

# zs_pid_from_file PIDFILE -> prints pid if the file holds a live pid.
zs_pid_from_file() {
    local f=$1 pid
    [[ -r $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f" 2>/dev/null || true)
    [[ -n $pid ]] || return 1
    zs_alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# zs_pid_is PID EXE_BASENAME : true if /proc/PID runs an executable of that name
# (guards against a recycled pid in a stale pid file).
zs_pid_is() {
    local pid=$1 want=$2 comm
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$want"* ]]
}

# zs_running PIDFILE EXE : pid file points at a live process named EXE.
zs_running() {
    local pid
    pid=$(zs_pid_from_file "$1") || return 1
    zs_pid_is "$pid" "$2"
}

# zs_stop_pid PID [TIMEOUT]: SIGTERM, wait, then SIGKILL.
zs_stop_pid() {
    local pid=$1 t=${2:-20} i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < t * 10; i++)); do
        zs_alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

# zs_stop_pidfile PIDFILE EXE [TIMEOUT]
zs_stop_pidfile() {
    local pid
    if pid=$(zs_pid_from_file "$1") && zs_pid_is "$pid" "$2"; then
        zs_stop_pid "$pid" "${3:-20}"
    fi
    rm -f "$1"
}

# zs_wait TIMEOUT CMD... : polls CMD every 0.2 s until it succeeds.
zs_wait() {
    local timeout=$1 end
    shift
    end=$((SECONDS + timeout))
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if ((SECONDS >= end)); then
            return 1
        fi
        sleep 0.2
    done
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
zs_port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Seconds since $1 (an $EPOCHREALTIME value), one decimal.
zs_elapsed() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

# zs_up_services NAME... : install missing packages, then bring each service up.
# Prints "services: NAME up (Ns)" per service; returns 1 if any failed.
zs_up_services() {
    local s t0 pkgs=() missing=() failed=()
    for s in "$@"; do
        # shellcheck disable=SC2207
        pkgs+=($("${s}_packages"))
    done
    mapfile -t missing < <(zs_missing_packages "${pkgs[@]}")
    if [[ ${#missing[@]} -gt 0 ]]; then
        for s in "$@"; do
            "${s}_preinstall"
        done
        zs_install_packages "${missing[@]}" || return 1
    fi
    for s in "$@"; do
        t0=$EPOCHREALTIME
        if "${s}_up"; then
            echo "services: $s up ($(zs_elapsed "$t0")s)"
        else
            failed+=("$s")
        fi
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "services: FAILED to bring up: ${failed[*]}" >&2
        return 1
    fi
}

# zs_down_services NAME... : stop each (reverse order); never fails.
zs_down_services() {
    local i s
    for ((i = $# ; i >= 1; i--)); do
        s=${!i}
        "${s}_down" || true
        echo "services: $s down"
    done
}
