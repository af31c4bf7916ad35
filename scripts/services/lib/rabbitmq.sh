# shellcheck shell=bash
# RabbitMQ 3.10 (Debian rabbitmq-server), guest/guest on localhost. Sourced by the entry scripts.

RABBITMQ_AMQP_PORT=5672
RABBITMQ_MGMT_PORT=15672
RABBITMQ_LOG_DIR=/var/log/rabbitmq
RABBITMQ_START_LOG=$ZS_LOG/rabbitmq.start.log
RABBITMQ_PLUGINS_FILE=/etc/rabbitmq/enabled_plugins
# ZS_RABBITMQ_MANAGEMENT=1 enables the management plugin (HTTP API on 15672,
# guest/guest). Off by default: it adds ~3 s to start and ~5 s to every stop.
ZS_RABBITMQ_MANAGEMENT=${ZS_RABBITMQ_MANAGEMENT:-0}

rabbitmq_packages() {
    echo rabbitmq-server
}

rabbitmq_preinstall() { :; }

rabbitmq_node() {
    echo "rabbit@$(hostname -s)"
}

rabbitmq_pidfile() {
    echo "/var/lib/rabbitmq/mnesia/$(rabbitmq_node).pid"
}

# AMQP 0-9-1 handshake: send the protocol header, expect a method frame (0x01)
# carrying Connection.Start. Proves the broker is accepting clients, in ~10 ms.
rabbitmq_amqp_ok() {
    # shellcheck disable=SC2016
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c 1 <&3 | od -An -tx1' _ "$RABBITMQ_AMQP_PORT" 2>/dev/null | grep -q 01
}

rabbitmq_status() {
    rabbitmq_amqp_ok
}

rabbitmq_logs() {
    local f
    echo "$RABBITMQ_START_LOG"
    for f in "$RABBITMQ_LOG_DIR/$(rabbitmq_node).log" "$RABBITMQ_LOG_DIR"/startup_err; do
        echo "$f"
    done
}

# Writes enabled_plugins (an Erlang term). Returns 0 if it changed.
rabbitmq_write_plugins() {
    local want='[].'
    [[ $ZS_RABBITMQ_MANAGEMENT == 1 ]] && want='[rabbitmq_management].'
    mkdir -p "$(dirname "$RABBITMQ_PLUGINS_FILE")"
    zs_write_if_changed "$RABBITMQ_PLUGINS_FILE" 0644 <<<"$want"
}

rabbitmq_up() {
    local logs plugins_changed=0
    rabbitmq_write_plugins && plugins_changed=1
    if rabbitmq_amqp_ok; then
        if [[ $plugins_changed -eq 0 ]]; then
            return 0
        fi
        zs_log "rabbitmq: plugin list changed, restarting"
        rabbitmq_down
    fi
    mkdir -p "$RABBITMQ_LOG_DIR"
    chown rabbitmq:rabbitmq "$RABBITMQ_LOG_DIR"
    # A node that is up but not serving AMQP (e.g. stuck boot): stop it first.
    if zs_running "$(rabbitmq_pidfile)" beam.smp; then
        rabbitmq_down
    fi
    if ! rabbitmq-server -detached >>"$RABBITMQ_START_LOG" 2>&1; then
        mapfile -t logs < <(rabbitmq_logs)
        zs_fail rabbitmq "rabbitmq-server -detached failed" "${logs[@]}"
        return 1
    fi
    if ! zs_wait "$ZS_TIMEOUT" rabbitmq_amqp_ok; then
        mapfile -t logs < <(rabbitmq_logs)
        zs_fail rabbitmq "port $RABBITMQ_AMQP_PORT does not answer AMQP after ${ZS_TIMEOUT}s" "${logs[@]}"
        return 1
    fi
    if [[ $ZS_RABBITMQ_MANAGEMENT == 1 ]] && ! zs_wait "$ZS_TIMEOUT" zs_port_open "$RABBITMQ_MGMT_PORT"; then
        mapfile -t logs < <(rabbitmq_logs)
        zs_fail rabbitmq "management plugin not listening on $RABBITMQ_MGMT_PORT after ${ZS_TIMEOUT}s" "${logs[@]}"
        return 1
    fi
    if ! rabbitmqctl -q --timeout "$ZS_TIMEOUT" await_startup >>"$RABBITMQ_START_LOG" 2>&1; then
        mapfile -t logs < <(rabbitmq_logs)
        zs_fail rabbitmq "rabbitmqctl await_startup failed" "${logs[@]}"
        return 1
    fi
}

rabbitmq_down() {
    local pid
    if pid=$(zs_pid_from_file "$(rabbitmq_pidfile)") && zs_pid_is "$pid" beam.smp; then
        # The node shuts down cleanly on SIGTERM (~1 s; `rabbitmqctl shutdown`
        # does the same but first boots an Erlang CLI).
        zs_stop_pid "$pid" 60
    elif rabbitmq_amqp_ok; then
        # Running, but the pid file is gone: ask the node itself.
        timeout 60 rabbitmqctl -q shutdown >>"$RABBITMQ_START_LOG" 2>&1 || true
    fi
    # epmd (Erlang port mapper) was started by the node; it refuses to die while
    # other Erlang nodes are registered with it.
    if command -v epmd >/dev/null 2>&1; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    return 0
}
