# deploy/local/stack.d/kafka.sh: the `kafka` component of deploy/local/stack, a
# single-node Apache Kafka broker (KRaft, broker and controller in one JVM) from
# jars resolved once from Maven Central (deploy/local/kafka/pom.xml).
# Defines kafka_up, kafka_down, kafka_status and kafka_purge.
# Sourced by deploy/local/stack after common.sh; not run on its own.
# shellcheck shell=bash

KAFKA_SRC="$SCRIPT_DIR/kafka"           # pom.xml, KafkaProbe.java, log4j2.properties
CACHE_DIR=${HOOKSTREAM_CACHE_DIR:-$REPO/.cache/kafka-jars}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${KAFKA_HEAP:--Xms1g -Xmx1g}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:-}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}

KAFKA_DIR="$STACK_DIR/kafka"            # server.properties, logs, pid file
KAFKA_DATA="$KAFKA_DIR/data"            # log.dirs (meta.properties lives here)
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
KAFKA_PORT_FILE="$KAFKA_DIR/kafka.port"

# A Kafka broker answers on 127.0.0.1:$1: send an ApiVersions v0 request
# (correlation id 0x4853544b, "HSTK") and check the response echoes it.
# Pure bash, no JVM: ~ms. Any Kafka version answers ApiVersions.
kafka_answers() {
    local reply
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    reply=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x00\x00\x00\x0f\x00\x12\x00\x00HSTK\x00\x05stack" >&3
        head -c 8 <&3 | od -An -tx1 | tr -d " \n"
    ' _ "$1" 2>/dev/null) || return 1
    [[ $reply =~ ^[0-9a-f]{8}4853544b$ ]]
}

java_bin() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
        printf '%s' "$JAVA_HOME/bin/java"
    else
        command -v java || die "java not found: install a JDK 17+ (apt-get install default-jdk-headless) or set JAVA_HOME"
    fi
}

# A fresh machine: install a JDK (java for the broker, javac for its readiness
# probe) and Maven (unless the jar cache is filled), in one apt-get run, as the
# other components install their servers. Debian's default JDK is 17 on
# bookworm, 21 on trixie; Kafka 4 needs 17 or later.
kafka_install_tools() {
    local -a pkgs=()
    if ! [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]] && ! command -v java >/dev/null; then
        pkgs+=(default-jdk-headless)
    fi
    if ! command -v mvn >/dev/null && ! kafka_jars_cached; then
        pkgs+=(maven)
    fi
    (( ${#pkgs[@]} == 0 )) || apt_install --no-install-recommends "${pkgs[@]}"
}

javac_bin() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/javac ]]; then
        printf '%s' "$JAVA_HOME/bin/javac"
    else
        command -v javac || true
    fi
}

# Content hash of what the cache is built from; a mismatch re-resolves.
cache_key() {
    cat "$KAFKA_SRC/pom.xml" "$KAFKA_SRC/KafkaProbe.java" | sha256sum | cut -d' ' -f1
}

kafka_jars_cached() {
    local marker="$CACHE_DIR/.hookstream-cache"
    [[ -f $marker && $(<"$marker") == "$(cache_key)" ]]
}

# Fill the jar cache from Maven Central once; compile the readiness probe.
ensure_kafka_jars() {
    local marker="$CACHE_DIR/.hookstream-cache" key
    key=$(cache_key)
    if [[ -f $marker && $(<"$marker") == "$key" ]]; then
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    # The cache may be shared by several state dirs: lock it separately.
    exec 8>"$CACHE_DIR/.lock"
    flock -w 600 8 || die "timed out waiting for another run to fill $CACHE_DIR"
    if [[ -f $marker && $(<"$marker") == "$key" ]]; then
        exec 8>&-
        return 0
    fi
    command -v mvn >/dev/null || apt_install --no-install-recommends maven
    command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) to resolve the Kafka jars"
    say "kafka: resolving jars from Maven Central (first run only)..."
    local t0 mvn_log="$CACHE_DIR/.mvn.log"
    t0=$(now_us)
    rm -f "$marker" "$CACHE_DIR"/*.jar
    rm -rf "$CACHE_DIR/probe"
    if ! mvn -q -B -f "$KAFKA_SRC/pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$CACHE_DIR" >"$mvn_log" 2>&1 </dev/null 8>&- 9>&-; then
        tail -n 30 "$mvn_log" >&2
        die "kafka: Maven could not resolve deploy/local/kafka/pom.xml (log: $mvn_log)"
    fi
    local javac
    javac=$(javac_bin)
    if [[ -n $javac ]]; then
        mkdir -p "$CACHE_DIR/probe"
        "$javac" -nowarn -d "$CACHE_DIR/probe" -cp "$CACHE_DIR/*" "$KAFKA_SRC/KafkaProbe.java" \
            >>"$mvn_log" 2>&1 8>&- 9>&- || { tail -n 20 "$mvn_log" >&2; die "kafka: could not compile KafkaProbe.java"; }
    else
        say "kafka: warning: no javac; readiness will rely on the ApiVersions handshake only"
    fi
    printf '%s\n' "$key" >"$marker"
    exec 8>&-
    say "kafka: $(find "$CACHE_DIR" -maxdepth 1 -name '*.jar' | wc -l) jars cached in $CACHE_DIR ($(elapsed "$t0")s)"
}

kafka_cp() { printf '%s' "$CACHE_DIR/*"; }

# Ask a real client whether the broker serves requests (describe + list topics).
kafka_probe() { # bootstrap timeout_ms
    if [[ -f $CACHE_DIR/probe/KafkaProbe.class ]]; then
        "$(java_bin)" -Xshare:auto -XX:TieredStopAtLevel=1 -Xms32m -Xmx128m \
            -cp "$(kafka_cp):$CACHE_DIR/probe" KafkaProbe "$1" "$2" 9>&-
    else
        kafka_answers "${1##*:}"
    fi
}

# PID recorded by `up` if that process is still our broker (guards against
# a stale pid file whose number was reused by an unrelated process).
kafka_our_pid() {
    [[ -f $KAFKA_PID_FILE ]] || return 1
    local pid
    pid=$(<"$KAFKA_PID_FILE")
    pid_alive "$pid" || return 1
    [[ $(proc_cmdline "$pid") == *"kafka.Kafka $KAFKA_DIR/server.properties"* ]] || return 1
    printf '%s' "$pid"
}

write_kafka_config() {
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by deploy/local/stack on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

# Format log.dirs once (meta.properties marks a formatted dir).
format_kafka_storage() {
    local formatted_for="$KAFKA_DIR/formatted-controller-port"
    if [[ -f $KAFKA_DATA/meta.properties ]]; then
        if [[ -f $formatted_for && $(<"$formatted_for") != "$KAFKA_CONTROLLER_PORT" ]]; then
            die "kafka: $KAFKA_DATA was formatted with controller port $(<"$formatted_for"), not $KAFKA_CONTROLLER_PORT; use that port or run 'down --purge kafka' first"
        fi
        return 0
    fi
    local cluster_id
    cluster_id=$("$(java_bin)" -cp "$(kafka_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null 9>&- | tail -n 1 || true)
    [[ $cluster_id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka: StorageTool random-uuid printed '$cluster_id'"
    say "kafka: formatting $KAFKA_DATA (cluster id $cluster_id)"
    if ! "$(java_bin)" -cp "$(kafka_cp)" kafka.tools.StorageTool format --standalone \
            -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 9>&-; then
        cat "$KAFKA_DIR/format.log" >&2
        die "kafka: formatting $KAFKA_DATA failed"
    fi
    printf '%s\n' "$KAFKA_CONTROLLER_PORT" >"$formatted_for"
}

kafka_fail() {
    say "kafka: $1"
    local f
    for f in "$KAFKA_DIR/server.log" "$KAFKA_DIR/stdout.log"; do
        if [[ -s $f ]]; then
            printf 'stack: --- last lines of %s ---\n' "$f" >&2
            tail -n 40 "$f" >&2
        fi
    done
    exit 1
}

kafka_up() {
    local bootstrap="127.0.0.1:$KAFKA_PORT" t0 pid deadline
    t0=$(now_us)

    # 1. Our broker from an earlier `up` is still running.
    if pid=$(kafka_our_pid); then
        local was_port
        was_port=$(cat "$KAFKA_PORT_FILE" 2>/dev/null || echo "?")
        [[ $was_port == "$KAFKA_PORT" ]] ||
            die "kafka: the broker started from $STACK_DIR (pid $pid) listens on $was_port, not $KAFKA_PORT; 'down kafka' it first"
        ensure_kafka_jars
        kafka_probe "$bootstrap" 30000 >/dev/null ||
            kafka_fail "broker pid $pid (started by stack) is running but does not serve clients on $bootstrap"
        say "kafka: already running on $bootstrap (pid $pid, started by stack)"
        return 0
    fi
    rm -f "$KAFKA_PID_FILE"

    # 2. Someone else's broker: reuse it, never stop it.
    if kafka_answers "$KAFKA_PORT"; then
        # Probe with a real client if the jars are cached; never run Maven
        # just to look at someone else's broker (ApiVersions already answered).
        kafka_probe "$bootstrap" 30000 >/dev/null ||
            die "kafka: a broker answers on $bootstrap but does not serve clients (not started by stack; left alone)"
        may_reuse kafka "$bootstrap"
        say "kafka: reusing the broker already on $bootstrap (not started by stack; down leaves it alone)"
        return 0
    fi
    port_open "$KAFKA_PORT" && die "kafka: 127.0.0.1:$KAFKA_PORT is taken by something that is not Kafka; set KAFKA_PORT"
    port_open "$KAFKA_CONTROLLER_PORT" && die "kafka: controller port 127.0.0.1:$KAFKA_CONTROLLER_PORT is taken; set KAFKA_CONTROLLER_PORT"

    # 3. Start our own.
    local java
    kafka_install_tools
    java=$(java_bin)
    ensure_kafka_jars
    mkdir -p "$KAFKA_DATA"
    write_kafka_config
    format_kafka_storage

    say "kafka: starting broker on $bootstrap (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT, state $KAFKA_DIR)"
    local -a heap opts
    read -r -a heap <<<"$KAFKA_HEAP"
    read -r -a opts <<<"$KAFKA_JVM_OPTS"
    printf '%s\n' "$KAFKA_PORT" >"$KAFKA_PORT_FILE"
    : >"$KAFKA_DIR/stdout.log"
    spawn_detached "$KAFKA_PID_FILE" "$KAFKA_DIR/stdout.log" \
        "$java" "${heap[@]}" \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        ${opts[@]+"${opts[@]}"} \
        -Dkafka.logs.dir="$KAFKA_DIR" \
        -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
        -cp "$(kafka_cp)" kafka.Kafka "$KAFKA_DIR/server.properties"

    # Wait: cheap ApiVersions handshake first, then a real client.
    deadline=$(( $(now_us) + KAFKA_START_TIMEOUT * 1000000 ))
    pid=""
    while :; do
        if [[ -z $pid ]]; then pid=$(cat "$KAFKA_PID_FILE" 2>/dev/null || true); fi
        if [[ -n $pid ]] && ! pid_alive "$pid"; then
            rm -f "$KAFKA_PID_FILE"
            kafka_fail "broker exited during startup"
        fi
        if kafka_answers "$KAFKA_PORT"; then
            local left=$(( (deadline - $(now_us)) / 1000 ))
            (( left > 1000 )) || left=1000
            (( left < 15000 )) || left=15000   # re-check the pid between attempts
            if kafka_probe "$bootstrap" "$left" >/dev/null; then
                break
            fi
        fi
        if (( $(now_us) > deadline )); then
            kafka_fail "broker not ready on $bootstrap after ${KAFKA_START_TIMEOUT}s (pid ${pid:-?} left running; 'down kafka' stops it)"
        fi
        sleep 0.2
    done
    say "kafka ready on $bootstrap in $(elapsed "$t0")s (pid $pid, log $KAFKA_DIR/server.log)"
}

kafka_down() {
    local pid
    if ! pid=$(kafka_our_pid); then
        rm -f "$KAFKA_PID_FILE"
        if kafka_answers "$KAFKA_PORT"; then
            say "kafka: the broker on 127.0.0.1:$KAFKA_PORT was not started by stack from $STACK_DIR; leaving it alone"
        else
            say "kafka: not running (nothing started by stack)"
        fi
        return 0
    fi
    local t0
    t0=$(now_us)
    say "kafka: stopping broker pid $pid (SIGTERM)"
    stop_pid kafka "$pid" "$KAFKA_STOP_TIMEOUT"
    rm -f "$KAFKA_PID_FILE"
    say "kafka: stopped ($(elapsed "$t0")s)"
}

kafka_status() {
    local where="127.0.0.1:$KAFKA_PORT" pid
    if pid=$(kafka_our_pid); then
        local port
        port=$(cat "$KAFKA_PORT_FILE" 2>/dev/null || echo "$KAFKA_PORT")
        where="127.0.0.1:$port"
        if kafka_answers "$port"; then
            printf '%-12s %-5s %-16s %s\n' kafka up "$where" "started by stack (pid $pid, $KAFKA_DIR)"
            return 0
        fi
        printf '%-12s %-5s %-16s %s\n' kafka down "$where" "started by stack (pid $pid) but not answering yet"
        return 1
    fi
    if kafka_answers "$KAFKA_PORT"; then
        printf '%-12s %-5s %-16s %s\n' kafka up "$where" "not started by stack (reused; down leaves it alone)"
        return 0
    fi
    printf '%-12s %-5s %-16s %s\n' kafka down "$where" "-"
    return 1
}

kafka_purge() {
    say "kafka: deleting $KAFKA_DIR"
    rm -rf "$KAFKA_DIR"
}
