# shellcheck shell=bash
# ActiveMQ Classic 5.17 (Debian activemq) with STOMP on 127.0.0.1:61613 only,
# user zbatch/zbatch. Sourced by the entry scripts.
#
# Runs its own instance "zbatch" directly (java -jar, as user activemq), not via
# /etc/init.d/activemq: the instance is NOT put in instances-enabled, so the
# Debian init script never starts a second copy with its 512 MB heap.
#   config: /etc/activemq/instances-available/zbatch/{activemq.xml,log4j.properties}
#   data:   /var/lib/activemq/zbatch/data (KahaDB, scheduler store, activemq.log)
# Broker: schedulerSupport (AMQ_SCHEDULED_DELAY), statisticsBrokerPlugin,
# per-queue dead-letter queues DLQ.<queue>, and a redeliveryPlugin: a message
# poison-acked (STOMP NACK) is redelivered after 1 s up to 3 times, then goes
# to DLQ.<queue>.

ACTIVEMQ_STOMP_PORT=61613
ACTIVEMQ_USER=zbatch
ACTIVEMQ_PASSWORD=zbatch
ACTIVEMQ_MAX_REDELIVERIES=3
ACTIVEMQ_HEAP=${ZS_ACTIVEMQ_HEAP:-256m}
ACTIVEMQ_HOME=/usr/share/activemq
ACTIVEMQ_CONF=/etc/activemq/instances-available/zbatch
ACTIVEMQ_BASE=/var/lib/activemq/zbatch
ACTIVEMQ_DATA=$ACTIVEMQ_BASE/data
ACTIVEMQ_PIDFILE=$ZS_STATE/activemq.pid
ACTIVEMQ_START_LOG=$ZS_LOG/activemq.start.log
ACTIVEMQ_STOMP_INI=$ZS_STATE/stomp.ini

# XStream + Jettison: STOMP "transformation: jms-map-json" (and jms-object-json,
# jms-*-xml) needs them; Debian's activemq does not depend on them.
activemq_packages() {
    echo activemq libxstream-java libjettison-java
}

activemq_preinstall() { :; }

activemq_logs() {
    echo "$ACTIVEMQ_START_LOG"
    echo "$ACTIVEMQ_DATA/activemq.log"
}

# A real STOMP 1.2 CONNECT as zbatch; the broker must answer CONNECTED.
activemq_stomp_ok() {
    # shellcheck disable=SC2016
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "CONNECT\naccept-version:1.2\nhost:localhost\nlogin:%s\npasscode:%s\n\n\0" "$2" "$3" >&3
        IFS= read -r line <&3 || exit 1
        printf "DISCONNECT\n\n\0" >&3 || true
        [[ $line == CONNECTED ]]' _ "$ACTIVEMQ_STOMP_PORT" "$ACTIVEMQ_USER" "$ACTIVEMQ_PASSWORD" 2>/dev/null
}

# Our broker: the pid file points at a java running our activemq.base; failing
# that (pid file lost), the java process whose command line names our base.
activemq_pid() {
    local pid f
    if pid=$(zs_pid_from_file "$ACTIVEMQ_PIDFILE") && zs_pid_is "$pid" java &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Dactivemq.base=$ACTIVEMQ_BASE "; then
        printf '%s\n' "$pid"
        return 0
    fi
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        zs_pid_is "$pid" java || continue
        if tr '\0' ' ' <"$f" 2>/dev/null | grep -qF -- "-Dactivemq.base=$ACTIVEMQ_BASE "; then
            zs_alive "$pid" || continue
            printf '%s\n' "$pid"
            return 0
        fi
    done
    return 1
}

activemq_status() {
    activemq_stomp_ok
}

# Returns 0 if any config file changed.
activemq_write_files() {
    local changed=1
    local jar
    mkdir -p "$ACTIVEMQ_CONF" "$ACTIVEMQ_DATA" "$ACTIVEMQ_BASE/lib"
    chown activemq: "$ACTIVEMQ_BASE" "$ACTIVEMQ_DATA"
    # $ACTIVEMQ_BASE/lib is on the broker's extension classpath.
    for jar in xstream jettison; do
        if [[ ! -e $ACTIVEMQ_BASE/lib/$jar.jar ]]; then
            ln -sfn "/usr/share/java/$jar.jar" "$ACTIVEMQ_BASE/lib/$jar.jar"
            changed=0
        fi
    done
    zs_write_if_changed "$ACTIVEMQ_CONF/activemq.xml" 0644 <<EOF && changed=0
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by zbatch scripts/services/lib/activemq.sh: edits are overwritten. -->
<beans
  xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">

  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>

  <broker xmlns="http://activemq.apache.org/schema/core"
          brokerName="zbatch"
          useJmx="false"
          schedulerSupport="true"
          schedulePeriodForDestinationPurge="10000"
          dataDirectory="\${activemq.data}">

    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- Queues: a dead letter from queue X goes to queue DLQ.X. Empty, unused
               queues are removed after 60 s (tests create many uuid-named ones). -->
          <policyEntry queue=">" gcInactiveDestinations="true" inactiveTimoutBeforeGC="60000">
            <deadLetterStrategy>
              <individualDeadLetterStrategy queuePrefix="DLQ." useQueueForQueueMessages="true"
                                            processNonPersistent="true" processExpired="false"/>
            </deadLetterStrategy>
          </policyEntry>
          <policyEntry topic=">">
            <deadLetterStrategy>
              <sharedDeadLetterStrategy processExpired="false"/>
            </deadLetterStrategy>
          </policyEntry>
        </policyEntries>
      </policyMap>
    </destinationPolicy>

    <managementContext>
      <managementContext createConnector="false"/>
    </managementContext>

    <persistenceAdapter>
      <kahaDB directory="\${activemq.data}/kahadb"/>
    </persistenceAdapter>

    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users>
          <authenticationUser username="$ACTIVEMQ_USER" password="$ACTIVEMQ_PASSWORD" groups="admins,users"/>
        </users>
      </simpleAuthenticationPlugin>
      <!-- SEND to ActiveMQ.Statistics.Destination.<name> with reply-to: a MapMessage
           with the queue's size / enqueueCount / dequeueCount ... -->
      <statisticsBrokerPlugin/>
      <!-- A poison ack (STOMP NACK) is redelivered after 1 s, at most
           $ACTIVEMQ_MAX_REDELIVERIES times; then the message goes to DLQ.<queue>. -->
      <redeliveryPlugin fallbackToDeadLetter="true" sendToDlqIfMaxRetriesExceeded="true">
        <redeliveryPolicyMap>
          <redeliveryPolicyMap>
            <defaultEntry>
              <redeliveryPolicy maximumRedeliveries="$ACTIVEMQ_MAX_REDELIVERIES"
                                initialRedeliveryDelay="1000" redeliveryDelay="1000"/>
            </defaultEntry>
          </redeliveryPolicyMap>
        </redeliveryPolicyMap>
      </redeliveryPlugin>
    </plugins>

    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage percentOfJvmHeap="60"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="1 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>

    <!-- STOMP on loopback only; no OpenWire, AMQP, MQTT or web console. -->
    <transportConnectors>
      <transportConnector name="stomp"
        uri="stomp://127.0.0.1:$ACTIVEMQ_STOMP_PORT?maximumConnections=1000&amp;wireFormat.maxFrameSize=104857600&amp;transport.tcpNoDelay=true"/>
    </transportConnectors>
  </broker>
</beans>
EOF
    # Debian's ActiveMQ logs through log4j 1.2 (slf4j-log4j12), not log4j2.
    zs_write_if_changed "$ACTIVEMQ_CONF/log4j.properties" 0644 <<'EOF' && changed=0
# Written by zbatch scripts/services/lib/activemq.sh.
log4j.rootLogger=INFO, logfile
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.logfile=org.apache.log4j.RollingFileAppender
log4j.appender.logfile.file=${activemq.data}/activemq.log
log4j.appender.logfile.maxFileSize=1024KB
log4j.appender.logfile.maxBackupIndex=3
log4j.appender.logfile.append=true
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
EOF
    # Only so that a new ZS_ACTIVEMQ_HEAP restarts a running broker.
    zs_write_if_changed "$ACTIVEMQ_CONF/heap" 0644 <<<"$ACTIVEMQ_HEAP" && changed=0
    # workflows' StompTransport reads this format (--stomp-conf).
    zs_write_if_changed "$ACTIVEMQ_STOMP_INI" 0644 <<EOF || true
[stomp]
host = 127.0.0.1
port = $ACTIVEMQ_STOMP_PORT
username = $ACTIVEMQ_USER
password = $ACTIVEMQ_PASSWORD
prefix = zocalo
EOF
    return "$changed"
}

activemq_start() {
    local java pid
    java=$(command -v java) || {
        zs_fail activemq "no java on PATH"
        return 1
    }
    printf '=== %s starting\n' "$(date -Is)" >>"$ACTIVEMQ_START_LOG"
    # setsid: own session, so a ^C on the caller's terminal does not reach it.
    # In a background job bash is not a group leader, so setsid execs (no fork)
    # and $! is the java pid.
    (
        cd "$ACTIVEMQ_BASE" || exit 1
        exec setsid setpriv --reuid=activemq --regid=activemq --init-groups -- \
            "$java" -Xms64m "-Xmx$ACTIVEMQ_HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
            -Djava.awt.headless=true \
            -Dorg.apache.activemq.UseDedicatedTaskRunner=false \
            -Dlog4j.configuration="file:$ACTIVEMQ_CONF/log4j.properties" \
            --add-reads=java.xml=java.logging \
            --add-opens java.base/java.security=ALL-UNNAMED \
            --add-opens java.base/java.net=ALL-UNNAMED \
            --add-opens java.base/java.lang=ALL-UNNAMED \
            --add-opens java.base/java.util=ALL-UNNAMED \
            --add-opens java.naming/javax.naming.spi=ALL-UNNAMED \
            --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED \
            --add-opens java.base/java.util.concurrent=ALL-UNNAMED \
            --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED \
            -Dactivemq.classpath="$ACTIVEMQ_CONF:/var/lib/activemq/lib/" \
            -Dactivemq.home="$ACTIVEMQ_HOME" \
            -Dactivemq.base="$ACTIVEMQ_BASE" \
            -Dactivemq.conf="$ACTIVEMQ_CONF" \
            -Dactivemq.data="$ACTIVEMQ_DATA" \
            -Djava.io.tmpdir="$ACTIVEMQ_DATA/tmp" \
            -jar "$ACTIVEMQ_HOME/bin/activemq.jar" start "xbean:file:$ACTIVEMQ_CONF/activemq.xml"
    ) </dev/null >>"$ACTIVEMQ_START_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$ACTIVEMQ_PIDFILE"
}

activemq_up() {
    local logs config_changed=0 pid
    activemq_write_files && config_changed=1
    if activemq_stomp_ok; then
        if [[ $config_changed -eq 0 ]]; then
            return 0
        fi
        zs_log "activemq: configuration changed, restarting"
        activemq_down
    fi
    # A broker that runs but does not answer STOMP (stuck start): stop it first.
    if activemq_pid >/dev/null; then
        activemq_down
    fi
    mkdir -p "$ACTIVEMQ_DATA/tmp"
    chown activemq: "$ACTIVEMQ_DATA/tmp"
    activemq_start || return 1
    mapfile -t logs < <(activemq_logs)
    zs_wait "$ZS_TIMEOUT" activemq_ready_or_gone || true
    if activemq_stomp_ok; then
        return 0
    fi
    if pid=$(activemq_pid); then
        zs_fail activemq "port $ACTIVEMQ_STOMP_PORT does not answer STOMP CONNECT after ${ZS_TIMEOUT}s (java pid $pid)" "${logs[@]}"
    else
        zs_fail activemq "the broker exited during start" "${logs[@]}"
    fi
}

# For zs_wait: stop waiting as soon as the broker answers or its JVM is gone.
activemq_ready_or_gone() {
    activemq_stomp_ok || ! zs_pid_from_file "$ACTIVEMQ_PIDFILE" >/dev/null
}

activemq_down() {
    local pid
    if pid=$(activemq_pid); then
        # SIGTERM runs the broker's shutdown hook (clean KahaDB close, ~1-2 s).
        zs_stop_pid "$pid" 60
    fi
    rm -f "$ACTIVEMQ_PIDFILE"
    return 0
}
