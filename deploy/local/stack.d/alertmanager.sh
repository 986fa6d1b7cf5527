# deploy/local/stack.d/alertmanager.sh: the `alertmanager` component of
# deploy/local/stack, a Prometheus Alertmanager (Debian's package, installed
# with apt-get when absent) that stores alerts and notifies nobody.
# Defines am_up, am_down, am_status and am_purge.
# Sourced by deploy/local/stack after common.sh; not run on its own.
# shellcheck shell=bash

ALERTMANAGER_PORT=${ALERTMANAGER_PORT:-9095}
ALERTMANAGER_BIN=${ALERTMANAGER_BIN:-}
ALERTMANAGER_START_TIMEOUT=${ALERTMANAGER_START_TIMEOUT:-30}

AM_DIR="$STACK_DIR/alertmanager"        # alertmanager.yml, log, pid file
AM_DATA="$AM_DIR/data"                  # --storage.path (silences, notification log)
AM_CONFIG="$AM_DIR/alertmanager.yml"
AM_PID_FILE="$AM_DIR/alertmanager.pid"
AM_PORT_FILE="$AM_DIR/alertmanager.port"
AM_LOG="$AM_DIR/alertmanager.log"

# The Alertmanager binary: ALERTMANAGER_BIN, Debian's, or `alertmanager` on PATH.
find_am_bin() {
    if [[ -n $ALERTMANAGER_BIN ]]; then
        [[ -x $ALERTMANAGER_BIN ]] || die "ALERTMANAGER_BIN=$ALERTMANAGER_BIN is not executable"
        printf '%s' "$ALERTMANAGER_BIN"
        return 0
    fi
    if [[ -x /usr/bin/prometheus-alertmanager ]]; then
        printf '%s' /usr/bin/prometheus-alertmanager
        return 0
    fi
    command -v alertmanager
}

# Debian's Alertmanager service would bind 9093 (Kafka's controller port) and 9094.
am_stop_system_service() { stop_system_service prometheus-alertmanager alertmanager; }

am_bin() {
    local b
    if b=$(find_am_bin); then printf '%s' "$b"; return 0; fi
    apt_install prometheus-alertmanager
    am_stop_system_service
    b=$(find_am_bin) || die "alertmanager: installed prometheus-alertmanager but found no binary"
    printf '%s' "$b"
}

# An Alertmanager (not just any HTTP server) is ready on 127.0.0.1:$1.
am_answers() { http_ok "$1" /-/ready && http_ok "$1" /api/v2/status; }

# PID recorded by `up` if that process is still our Alertmanager.
am_our_pid() {
    [[ -f $AM_PID_FILE ]] || return 1
    local pid
    pid=$(<"$AM_PID_FILE")
    pid_alive "$pid" || return 1
    [[ $(proc_cmdline "$pid") == *"--config.file=$AM_CONFIG"* ]] || return 1
    printf '%s' "$pid"
}

write_am_config() {
    cat >"$AM_CONFIG" <<'YAML'
# Written by deploy/local/stack on every start; edits are overwritten.
# One receiver with no integrations: alerts are stored, grouped and served by
# the API (GET /api/v2/alerts), and notify nobody.
route:
  receiver: default
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 4h
receivers:
  - name: default
YAML
}

am_fail() {
    say "alertmanager: $1"
    if [[ -s $AM_LOG ]]; then
        printf 'stack: --- last lines of %s ---\n' "$AM_LOG" >&2
        tail -n 30 "$AM_LOG" >&2
    fi
    exit 1
}

am_up() {
    local where="127.0.0.1:$ALERTMANAGER_PORT" t0 pid bin deadline
    t0=$(now_us)

    if pid=$(am_our_pid); then
        local was_port
        was_port=$(cat "$AM_PORT_FILE" 2>/dev/null || echo "?")
        [[ $was_port == "$ALERTMANAGER_PORT" ]] ||
            die "alertmanager: the one started from $STACK_DIR (pid $pid) listens on $was_port, not $ALERTMANAGER_PORT; 'down alertmanager' it first"
        am_answers "$ALERTMANAGER_PORT" ||
            am_fail "pid $pid (started by stack) is running but not ready on $where"
        say "alertmanager: already running on $where (pid $pid, started by stack)"
        return 0
    fi
    rm -f "$AM_PID_FILE"

    if am_answers "$ALERTMANAGER_PORT"; then
        may_reuse alertmanager "$where"
        say "alertmanager: reusing the one already on $where (not started by stack; down leaves it alone)"
        return 0
    fi
    port_open "$ALERTMANAGER_PORT" && die "alertmanager: $where is taken by something that is not a ready Alertmanager; set ALERTMANAGER_PORT"

    bin=$(am_bin)
    mkdir -p "$AM_DATA"
    write_am_config
    printf '%s\n' "$ALERTMANAGER_PORT" >"$AM_PORT_FILE"
    say "alertmanager: starting $("$bin" --version 2>&1 9>&- | head -n 1 | sed 's/ *(.*//') on $where (state $AM_DIR)"
    : >"$AM_LOG"
    spawn_detached "$AM_PID_FILE" "$AM_LOG" \
        "$bin" --config.file="$AM_CONFIG" --storage.path="$AM_DATA" \
        --web.listen-address="$where" --cluster.listen-address=

    deadline=$(( $(now_us) + ALERTMANAGER_START_TIMEOUT * 1000000 ))
    pid=""
    while :; do
        if [[ -z $pid ]]; then pid=$(cat "$AM_PID_FILE" 2>/dev/null || true); fi
        if [[ -n $pid ]] && ! pid_alive "$pid"; then
            rm -f "$AM_PID_FILE"
            am_fail "exited during startup"
        fi
        if am_answers "$ALERTMANAGER_PORT"; then
            break
        fi
        if (( $(now_us) > deadline )); then
            am_fail "not ready on $where after ${ALERTMANAGER_START_TIMEOUT}s (pid ${pid:-?} left running; 'down alertmanager' stops it)"
        fi
        sleep 0.1
    done
    say "alertmanager ready on $where in $(elapsed "$t0")s (pid $pid, log $AM_LOG)"
}

am_down() {
    local pid t0
    if ! pid=$(am_our_pid); then
        rm -f "$AM_PID_FILE"
        if am_answers "$ALERTMANAGER_PORT"; then
            say "alertmanager: the one on 127.0.0.1:$ALERTMANAGER_PORT was not started by stack from $STACK_DIR; leaving it alone"
        else
            say "alertmanager: not running (nothing started by stack)"
        fi
        return 0
    fi
    t0=$(now_us)
    say "alertmanager: stopping pid $pid (SIGTERM)"
    stop_pid alertmanager "$pid" 10
    rm -f "$AM_PID_FILE"
    say "alertmanager: stopped ($(elapsed "$t0")s)"
}

am_status() {
    local where="127.0.0.1:$ALERTMANAGER_PORT" pid
    if pid=$(am_our_pid); then
        local port
        port=$(cat "$AM_PORT_FILE" 2>/dev/null || echo "$ALERTMANAGER_PORT")
        where="127.0.0.1:$port"
        if am_answers "$port"; then
            printf '%-12s %-5s %-16s %s\n' alertmanager up "$where" "started by stack (pid $pid, $AM_DIR)"
            return 0
        fi
        printf '%-12s %-5s %-16s %s\n' alertmanager down "$where" "started by stack (pid $pid) but not ready"
        return 1
    fi
    if am_answers "$ALERTMANAGER_PORT"; then
        printf '%-12s %-5s %-16s %s\n' alertmanager up "$where" "not started by stack (reused; down leaves it alone)"
        return 0
    fi
    printf '%-12s %-5s %-16s %s\n' alertmanager down "$where" "-"
    return 1
}

am_purge() {
    say "alertmanager: deleting $AM_DIR"
    rm -rf "$AM_DIR"
}
