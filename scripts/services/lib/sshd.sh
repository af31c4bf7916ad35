# shellcheck shell=bash
# A throwaway OpenSSH server on 127.0.0.1:2222 with its own config, host key and
# authorized_keys. Never touches any other sshd. Sourced by the entry scripts.

SSHD_PORT=2222
SSHD_DIR=$ZS_STATE/sshd
SSHD_CONFIG=$SSHD_DIR/sshd_config
SSHD_PIDFILE=$SSHD_DIR/sshd.pid
SSHD_HOSTKEY=$SSHD_DIR/ssh_host_ed25519_key
SSHD_AUTHKEYS=$SSHD_DIR/authorized_keys
SSHD_LOG=$ZS_LOG/sshd.log
SSH_CLIENT_DIR=$ZS_STATE/ssh
SSH_CLIENT_KEY=$SSH_CLIENT_DIR/id_ed25519
SSH_KNOWN_HOSTS=$SSH_CLIENT_DIR/known_hosts
SSH_KNOWN_HOSTS_WRONG=$SSH_CLIENT_DIR/known_hosts.wrong
SSH_WRONG_HOSTKEY=$SSH_CLIENT_DIR/wrong_host_ed25519_key
SSH_CLIENT_CONFIG=$SSH_CLIENT_DIR/config

sshd_packages() {
    echo openssh-server
}

sshd_preinstall() { :; }

sshd_ssh() {
    ssh -F /dev/null -i "$SSH_CLIENT_KEY" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o UserKnownHostsFile="$SSH_KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null \
        -o StrictHostKeyChecking=yes -o ConnectTimeout=5 -p "$SSHD_PORT" root@127.0.0.1 "$@"
}

# Our sshd: the pid in our pid file is an sshd started with our config.
sshd_pid() {
    local pid
    pid=$(zs_pid_from_file "$SSHD_PIDFILE") || return 1
    zs_pid_is "$pid" sshd || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$SSHD_CONFIG" || return 1
    printf '%s\n' "$pid"
}

sshd_status() {
    sshd_pid >/dev/null && sshd_ssh true </dev/null >/dev/null 2>&1
}

sshd_write_files() {
    local changed=1
    mkdir -p "$SSHD_DIR" "$SSH_CLIENT_DIR" /run/sshd
    chmod 0755 "$SSHD_DIR"
    chmod 0700 "$SSH_CLIENT_DIR"
    chmod 0755 /run/sshd
    if [[ ! -s $SSHD_HOSTKEY ]]; then
        rm -f "$SSHD_HOSTKEY" "$SSHD_HOSTKEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "zbatch-test-sshd" -f "$SSHD_HOSTKEY"
    fi
    if [[ ! -s $SSH_CLIENT_KEY ]]; then
        rm -f "$SSH_CLIENT_KEY" "$SSH_CLIENT_KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "zbatch-test-client" -f "$SSH_CLIENT_KEY"
    fi
    if [[ ! -s $SSH_WRONG_HOSTKEY ]]; then
        rm -f "$SSH_WRONG_HOSTKEY" "$SSH_WRONG_HOSTKEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "zbatch-test-wrong-hostkey" -f "$SSH_WRONG_HOSTKEY"
    fi
    local hostkey wrongkey
    hostkey=$(cut -d' ' -f1,2 "$SSHD_HOSTKEY.pub")
    wrongkey=$(cut -d' ' -f1,2 "$SSH_WRONG_HOSTKEY.pub")
    zs_write_if_changed "$SSHD_AUTHKEYS" 0600 <"$SSH_CLIENT_KEY.pub" || true
    zs_write_if_changed "$SSH_KNOWN_HOSTS" 0644 <<EOF || true
[127.0.0.1]:$SSHD_PORT $hostkey
[localhost]:$SSHD_PORT $hostkey
EOF
    zs_write_if_changed "$SSH_KNOWN_HOSTS_WRONG" 0644 <<EOF || true
[127.0.0.1]:$SSHD_PORT $wrongkey
[localhost]:$SSHD_PORT $wrongkey
EOF
    zs_write_if_changed "$SSH_CLIENT_CONFIG" 0644 <<EOF || true
# ssh -F $SSH_CLIENT_CONFIG zbatch-sshd CMD
Host zbatch-sshd
    HostName 127.0.0.1
    Port $SSHD_PORT
    User root
    IdentityFile $SSH_CLIENT_KEY
    IdentitiesOnly yes
    UserKnownHostsFile $SSH_KNOWN_HOSTS
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
EOF
    # SetEnv gives every session (exec, shell, subsystem) the Grid Engine
    # environment, whatever the login shell's startup files do.
    zs_write_if_changed "$SSHD_CONFIG" 0644 <<EOF || changed=0
# Written by zbatch scripts/services/lib/sshd.sh: test sshd, loopback only.
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $SSHD_HOSTKEY
PidFile $SSHD_PIDFILE
AuthorizedKeysFile $SSHD_AUTHKEYS
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
StrictModes yes
MaxStartups 200:30:400
MaxSessions 200
LoginGraceTime 30
LogLevel INFO
SetEnv SGE_ROOT=$ZS_SGE_ROOT SGE_CELL=$ZS_SGE_CELL DRMAA_LIBRARY_PATH=$ZS_DRMAA_LIB GLIBC_TUNABLES=$ZS_GLIBC_TUNABLES
Subsystem sftp internal-sftp
EOF
    # Returns 0 when sshd_config changed.
    [[ $changed -eq 1 ]]
}

sshd_start() {
    mkdir -p /run/sshd
    local out
    if ! out=$(/usr/sbin/sshd -t -f "$SSHD_CONFIG" 2>&1); then
        zs_fail sshd "config test failed: $out"
        return 1
    fi
    if ! /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG" >>"$ZS_LOG/sshd.start.log" 2>&1; then
        zs_fail sshd "sshd -f $SSHD_CONFIG did not start" "$ZS_LOG/sshd.start.log" "$SSHD_LOG"
        return 1
    fi
}

sshd_up() {
    local conf_changed=0
    sshd_write_files && conf_changed=1
    if sshd_pid >/dev/null; then
        if [[ $conf_changed -eq 1 ]]; then
            zs_log "sshd: config changed, restarting"
            sshd_down
        elif sshd_ssh true </dev/null >/dev/null 2>&1; then
            return 0
        else
            sshd_down
        fi
    fi
    if zs_port_open "$SSHD_PORT"; then
        zs_fail sshd "port 127.0.0.1:$SSHD_PORT is taken by a process that is not our sshd"
        return 1
    fi
    sshd_start || return 1
    if ! zs_wait "$ZS_TIMEOUT" sshd_status; then
        local err
        err=$(sshd_ssh true </dev/null 2>&1 | tail -n 1 || true)
        zs_fail sshd "ssh -p $SSHD_PORT root@127.0.0.1 true does not work after ${ZS_TIMEOUT}s: $err" "$SSHD_LOG"
        return 1
    fi
}

sshd_down() {
    local pid kids
    pid=$(sshd_pid) || {
        rm -f "$SSHD_PIDFILE"
        return 0
    }
    # Per-connection sshd processes are children of the listener: end them too,
    # so a restart really drops existing connections.
    kids=$(pgrep -P "$pid" || true)
    local k
    for k in $kids; do
        zs_pid_is "$k" sshd && kill -TERM "$k" 2>/dev/null
    done
    zs_stop_pid "$pid" 10
    for k in $kids; do
        zs_pid_is "$k" sshd && zs_stop_pid "$k" 5
    done
    rm -f "$SSHD_PIDFILE"
}
